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

-- ---------- rate limits: least privilege (issue 13) ----------
-- Policies are read by C with the table API (no privileges needed), written
-- only by rate_limit_policy_set/_drop as apicore's owner, for members of
-- apicore_rate_limit_admin; stats for pg_monitor; headers in C, checked.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'apicore_rate_limit_admin') THEN
        CREATE ROLE apicore_rate_limit_admin NOLOGIN;
    END IF;
END
$$;
REVOKE ALL ON apicore.rate_limit_policy FROM PUBLIC;
GRANT SELECT ON apicore.rate_limit_policy TO apicore_rate_limit_admin, pg_monitor;
REVOKE ALL ON FUNCTION apicore._rate_limit_policy_changed() FROM PUBLIC;
CREATE OR REPLACE FUNCTION apicore.rate_limit_policy_drop(name text) RETURNS bool
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_rate_limit_policy_drop';
REVOKE ALL ON FUNCTION apicore.rate_limit_policy_set(text, int, interval, int, text, text),
                       apicore.rate_limit_policy_drop(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apicore.rate_limit_policy_set(text, int, interval, int, text, text),
                          apicore.rate_limit_policy_drop(text) TO apicore_rate_limit_admin;
CREATE OR REPLACE FUNCTION apicore.rate_limit_headers(r apicore.rate_limit_result, policy text DEFAULT NULL,
                                                      period interval DEFAULT NULL)
    RETURNS jsonb
    LANGUAGE c STABLE
    AS 'MODULE_PATHNAME', 'apicore_rate_limit_headers';
REVOKE ALL ON FUNCTION apicore._rate_limit_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apicore._rate_limit_stats() TO pg_monitor, apicore_rate_limit_admin;
GRANT SELECT ON apicore.rate_limit_stats TO pg_monitor, apicore_rate_limit_admin;
REVOKE ALL ON FUNCTION apicore._rate_limit_maintain() FROM PUBLIC;
REVOKE ALL ON FUNCTION apicore.rate_limit_reset(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apicore.rate_limit_reset(text, text) TO apicore_rate_limit_admin;
