-- A tour of apicore.  Run by scripts/demo against a throwaway server.
\pset footer off
CREATE EXTENSION apicore;
SELECT apicore.version();

-- The maintenance worker keeps everything tidy; run a round by hand:
SELECT * FROM apicore.run_maintenance();
