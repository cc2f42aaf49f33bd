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

-- ---------- sagas: least privilege (issue 13) ----------
-- A definition records the role whose rights its local steps run with.
-- Definitions written by 0.1.0 did not: each gets the owner of its first
-- local step's function (the role whose code it is), or apicore's owner
-- when it has no local step.
ALTER TABLE apicore.saga_definition ADD COLUMN definer regrole;
UPDATE apicore.saga_definition d
   SET definer = coalesce(
       (SELECT p.proowner FROM apicore.saga_definition_step s
          JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) coalesce(s.function, s.compensate_function)
         WHERE s.definition OPERATOR(pg_catalog.=) d.name AND s.version OPERATOR(pg_catalog.=) d.version
         ORDER BY s.position LIMIT 1),
       (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname OPERATOR(pg_catalog.=) 'apicore'))::pg_catalog.regrole;
ALTER TABLE apicore.saga_definition ALTER COLUMN definer SET NOT NULL;
-- 0.1.0 could store a retry time past the end of timestamptz (a huge
-- backoff), after which reading the row failed: such steps are due now.
UPDATE apicore.saga_step SET run_after = pg_catalog.now()
 WHERE run_after OPERATOR(pg_catalog.>) '294276-12-31 23:59:59.999999+00'::pg_catalog.timestamptz;
-- The audit log is append-only for its owner too (only retention deletes).
CREATE OR REPLACE FUNCTION apicore._saga_transition_append_only() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'apicore_saga_transition_append_only';
-- The tables are written only through apicore's functions.
REVOKE INSERT, UPDATE ON apicore.saga, apicore.saga_step FROM apicore_saga_worker;
REVOKE INSERT ON apicore.saga_transition FROM apicore_saga_worker;
REVOKE INSERT ON apicore.saga_definition, apicore.saga_definition_step FROM apicore_saga_admin;
REVOKE USAGE ON SEQUENCE apicore.saga_transition_id_seq FROM apicore_saga_worker;
REVOKE ALL ON FUNCTION apicore.saga_define(text, jsonb),
    apicore.saga_start(text, jsonb, uuid, interval),
    apicore.saga_claim(text, text[], int),
    apicore.saga_step_succeeded(uuid, text, int, jsonb),
    apicore.saga_step_failed(uuid, text, int, text, bool),
    apicore.saga_heartbeat(uuid, text, int),
    apicore.saga_cancel(uuid, text),
    apicore.saga_retry(uuid, text, text),
    apicore.saga_resolve(uuid, text, text, text),
    apicore.saga_get(uuid),
    apicore._saga_reclaim_leases(), apicore._saga_fire_deadlines(),
    apicore._saga_run_local_steps(), apicore._saga_retention(),
    apicore._saga_transition_append_only() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apicore.saga_start(text, jsonb, uuid, interval),
    apicore.saga_claim(text, text[], int),
    apicore.saga_step_succeeded(uuid, text, int, jsonb),
    apicore.saga_step_failed(uuid, text, int, text, bool),
    apicore.saga_heartbeat(uuid, text, int),
    apicore.saga_cancel(uuid, text),
    apicore.saga_get(uuid) TO apicore_saga_worker;
GRANT EXECUTE ON FUNCTION apicore.saga_define(text, jsonb),
    apicore.saga_retry(uuid, text, text),
    apicore.saga_resolve(uuid, text, text, text),
    apicore._saga_reclaim_leases(), apicore._saga_fire_deadlines(),
    apicore._saga_run_local_steps(), apicore._saga_retention() TO apicore_saga_admin;
