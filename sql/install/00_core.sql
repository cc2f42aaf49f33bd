-- 00_core.sql — the schema-wide pieces: version, maintenance task registry and worker.

CREATE FUNCTION apicore.version() RETURNS text
    LANGUAGE c IMMUTABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'apicore_version';
COMMENT ON FUNCTION apicore.version() IS 'version of the loaded apicore library';

-- Maintenance tasks: each capability's fragment inserts its own rows.  A task
-- is a function with no arguments returning text (what it did, for the report).
CREATE TABLE apicore.maintenance_task (
    task      text PRIMARY KEY,
    function  regproc NOT NULL,
    run_order int NOT NULL DEFAULT 100,
    builtin   bool NOT NULL DEFAULT true   -- 99_end.sql turns the default to false for rows users add
);
COMMENT ON TABLE apicore.maintenance_task IS
    'maintenance tasks run by the apicore worker and apicore.run_maintenance(), in run_order';
-- Only apicore's owner writes it: each task runs as its function's owner,
-- and whoever names a function here chooses what the worker runs.
REVOKE ALL ON apicore.maintenance_task FROM PUBLIC;

CREATE FUNCTION apicore.run_maintenance()
    RETURNS TABLE (task text, detail text)
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_run_maintenance';
COMMENT ON FUNCTION apicore.run_maintenance() IS
    'run every maintenance task now, each in a subtransaction; one row per task';
REVOKE ALL ON FUNCTION apicore.run_maintenance() FROM PUBLIC;

CREATE FUNCTION apicore.maintenance_workers()
    RETURNS TABLE (database text, pid int, rounds bigint, tasks_failed bigint,
                   started_at timestamptz, last_round_at timestamptz, last_error text)
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_maintenance_workers';
CREATE VIEW apicore.maintenance_workers AS SELECT * FROM apicore.maintenance_workers();
COMMENT ON VIEW apicore.maintenance_workers IS
    'one row per database worker: rounds run, failures, last error (needs shared_preload_libraries)';
-- last_error may quote data a task saw: monitoring only
REVOKE ALL ON FUNCTION apicore.maintenance_workers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apicore.maintenance_workers() TO pg_monitor;
GRANT SELECT ON apicore.maintenance_workers TO pg_monitor;

GRANT USAGE ON SCHEMA apicore TO PUBLIC;
