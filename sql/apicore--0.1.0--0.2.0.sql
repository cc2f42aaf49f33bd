-- apicore 0.1.0 -> 0.2.0: run by ALTER EXTENSION apicore UPDATE.
--
-- Every change to sql/install/*.sql since 0.1.0 (commit 25c637a) must be
-- repeated here as ALTER / CREATE OR REPLACE / DROP / GRANT / COMMENT ...:
-- when you change sql/install, add the matching statements to this file in
-- the same commit.  test/t/090_upgrade.pl compares a database updated with
-- this script with a fresh CREATE EXTENSION and fails on any difference.
--
-- Mind what the install script does in order that an update does not:
--   - 99_end.sql turns apicore.maintenance_task.builtin's default to false,
--     so a task apicore adds here must be inserted with builtin = true;
--   - a new table that holds user data needs pg_extension_config_dump here too;
--   - CREATE OR REPLACE FUNCTION cannot change a function's result type or
--     argument names: DROP and CREATE it (and whatever depends on it) instead.
--

\echo Use "ALTER EXTENSION apicore UPDATE" to load this file. \quit

-- ---------- sagas: a claim is logged with the run's next transition ----------
-- Steps claimed before the update keep the claim row 0.1.0 wrote: their
-- claim_id stays NULL, so their end is not shown with a second claim.
ALTER TABLE apicore.saga_step
    ADD COLUMN claim_id bigint,
    ADD COLUMN claimed_at timestamptz;
ALTER TABLE apicore.saga_transition
    ADD COLUMN claim_id bigint,
    ADD COLUMN claimed_at timestamptz,
    ADD COLUMN claimed_by text;
CREATE OR REPLACE VIEW apicore.saga_log AS
SELECT id * 2 AS id, saga, step, direction, attempt, from_state, to_state, actor, reason, at
  FROM apicore.saga_transition
UNION ALL
SELECT id * 2 + 1, saga, next_step, 'forward', NULL, NULL, 'runnable', actor, NULL, at
  FROM apicore.saga_transition
 WHERE next_step IS NOT NULL
UNION ALL
SELECT claim_id * 2, saga, step, direction, attempt, 'runnable', 'claimed', claimed_by, NULL, claimed_at
  FROM apicore.saga_transition
 WHERE claim_id IS NOT NULL
UNION ALL
SELECT claim_id * 2, saga, step, direction, attempt, 'runnable', 'claimed', worker, NULL, claimed_at
  FROM apicore.saga_step
 WHERE state = 'claimed' AND claim_id IS NOT NULL;
