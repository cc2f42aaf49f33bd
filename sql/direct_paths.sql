-- The executor-bypassing writes (src/direct.c) against the SQL paths.
--  1. A DBA's extra indexes (btree, partial, expression) on every table a
--     direct path writes stay consistent: amcheck's bt_index_check(index,
--     true) (heapallindexed: every heap row has its index entry) passes for
--     every index of apicore's tables after every write path has run.
--  2. Every saga transition and idempotency write gives the same rows
--     through the direct paths and through SQL (forced by a trigger, which
--     src/direct.c never bypasses), compared field by field with times and
--     generated ids left out.
CREATE EXTENSION IF NOT EXISTS amcheck;
CREATE INDEX dx_key_created ON apicore.idempotency_key (created_at);
CREATE INDEX dx_key_done ON apicore.idempotency_key (updated_at) WHERE state = 'completed';
CREATE INDEX dx_key_lower ON apicore.idempotency_key (lower(key));
CREATE INDEX dx_step_updated ON apicore.saga_step (updated_at);
CREATE INDEX dx_step_claimed ON apicore.saga_step (worker) WHERE state = 'claimed';
CREATE INDEX dx_step_lower ON apicore.saga_step (lower(step));
CREATE INDEX dx_saga_updated ON apicore.saga (updated_at);
CREATE INDEX dx_saga_running ON apicore.saga (position) WHERE state = 'running';
CREATE INDEX dx_saga_lower ON apicore.saga (lower(definition));
CREATE INDEX dx_log_at ON apicore.saga_transition (at);
CREATE INDEX dx_log_claimed ON apicore.saga_transition (claimed_by) WHERE claim_id IS NOT NULL;
CREATE INDEX dx_log_lower ON apicore.saga_transition (lower(actor));

CREATE ROLE dx_app;
GRANT apicore_saga_admin TO dx_app;
CREATE FUNCTION dx_id(run int, i int) RETURNS uuid LANGUAGE sql IMMUTABLE
    AS $$ SELECT format('00000000-0000-0000-0000-%s', lpad((run * 100 + i)::text, 12, '0'))::uuid $$;

-- Every idempotency write: the one-transaction insert, the in-flight row
-- at commit, checkpoint, release, a fresh attempt, complete, replay.
CREATE FUNCTION dx_keys(scope text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM apicore.idempotency_begin(scope, 'one', '{"n": 1}');
    PERFORM apicore.idempotency_complete(scope, 'one', 1, 201, 'created', '{"a": "b"}');
    PERFORM apicore.idempotency_begin(scope, 'two', lease => '1 hour');
    PERFORM apicore.idempotency_release(scope, 'two', 1);
    PERFORM apicore.idempotency_begin(scope, 'two');
END $$;
CREATE FUNCTION dx_keys_later(scope text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM apicore.idempotency_checkpoint(scope, 'two', 2, 'half way');
    PERFORM apicore.idempotency_complete(scope, 'two', 2, 200, 'done');
    PERFORM apicore.idempotency_begin(scope, 'two');
    PERFORM apicore.idempotency_begin(scope, 'three', lease => '1 hour');
END $$;

-- Every saga transition: claim (one, several), report success, heartbeat,
-- failure with retry, out of attempts, compensation, cancel, failure for
-- good, resolve; then (dx_saga_finish) lease reclaim, deadline, dead letter
-- and operator retry.
CREATE FUNCTION dx_saga(def text, run int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    PERFORM apicore.saga_define(def, '[{"name": "a", "compensate": "undo_a"},
        {"name": "b", "max_attempts": 2, "backoff": "1 microsecond"}, {"name": "c"}]');
    FOR i IN 1..7 LOOP
        PERFORM apicore.saga_start(def, jsonb_build_object('n', i), dx_id(run, i),
                                   CASE WHEN i = 6 THEN interval '1 hour' END);
    END LOOP;
    FOR i IN 1..3 LOOP
        SELECT * INTO r FROM apicore.saga_claim('w1', ARRAY[def]);
        PERFORM apicore.saga_step_succeeded(r.saga_id, r.step, r.attempt, jsonb_build_object('by', 'w1'));
    END LOOP;
    PERFORM apicore.saga_claim('w2', ARRAY[def], 10);
    PERFORM apicore.saga_heartbeat(saga, step, attempt) FROM apicore.saga_step
        WHERE definition = def AND state = 'claimed';
    PERFORM apicore.saga_step_failed(dx_id(run, 1), 'b', 1, 'flaky');
    SELECT * INTO r FROM apicore.saga_claim('w1', ARRAY[def]);
    PERFORM apicore.saga_step_failed(r.saga_id, r.step, r.attempt, 'flaky again');
    PERFORM apicore.saga_step_succeeded(dx_id(run, 2), 'b', 1, '{"b": 2}');
    PERFORM apicore.saga_cancel(dx_id(run, 3), 'changed their mind');
    PERFORM apicore.saga_step_failed(dx_id(run, 4), 'a', 1, 'declined', false);
    PERFORM apicore.saga_resolve(dx_id(run, 5), 'compensated', 'ops', 'by hand');
    PERFORM apicore.saga_step_succeeded(dx_id(run, 6), 'a', 1);
END $$;
-- claim and report until nothing is claimable; saga 1's compensation fails for good once
CREATE FUNCTION dx_saga_drain(def text, run int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    LOOP
        SELECT * INTO r FROM apicore.saga_claim('w3', ARRAY[def]);
        EXIT WHEN r.saga_id IS NULL;
        IF r.saga_id = dx_id(run, 1) AND r.direction = 'compensate' AND r.attempt = 1 THEN
            PERFORM apicore.saga_step_failed(r.saga_id, r.step, r.attempt, 'undo failed', false);
        ELSE
            PERFORM apicore.saga_step_succeeded(r.saga_id, r.step, r.attempt, jsonb_build_object('s', r.step));
        END IF;
    END LOOP;
END $$;
-- as the superuser: saga 7's lease and saga 6's deadline run out
CREATE FUNCTION dx_expire(run int) RETURNS void LANGUAGE sql AS $$
    UPDATE apicore.saga_step SET lease_expires_at = now() - interval '1 hour'
     WHERE saga = dx_id(run, 7) AND state = 'claimed';
    UPDATE apicore.saga SET deadline = now() - interval '1 hour' WHERE id = dx_id(run, 6);
$$;
-- as the superuser: the reclaimed step's retry backoff (1 second) is over, so
-- the drain claims it in both runs however slowly the machine runs (valgrind)
CREATE FUNCTION dx_backoff_over(run int) RETURNS void LANGUAGE sql AS $$
    UPDATE apicore.saga_step SET run_after = now() - interval '1 hour'
     WHERE saga = dx_id(run, 7) AND state = 'runnable';
$$;
CREATE FUNCTION dx_run(run int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    SET LOCAL ROLE dx_app;
    PERFORM dx_keys('dx' || run);
    PERFORM dx_saga('dx' || run, run);
    RESET ROLE;
    PERFORM dx_expire(run);
    PERFORM apicore._saga_reclaim_leases();
    PERFORM dx_backoff_over(run);
    PERFORM apicore._saga_fire_deadlines();
END $$;
CREATE FUNCTION dx_run_later(run int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    SET LOCAL ROLE dx_app;
    PERFORM dx_keys_later('dx' || run);
    PERFORM dx_saga_drain('dx' || run, run);
    PERFORM apicore.saga_retry(dx_id(run, 1), 'ops', 'try again');
    PERFORM dx_saga_drain('dx' || run, run);
END $$;

-- What each run wrote, normalised: the run's number out of ids and names,
-- times and generated ids reduced to whether they are set (a running key's
-- lease as its length; a finished key's lease end is the time of its begin).
CREATE FUNCTION dx_rows(run int) RETURNS SETOF text LANGUAGE sql AS $$
    SELECT 'key ' || row(k.key, k.state, k.attempt, k.fingerprint IS NULL, k.recovery_point,
                         k.lease, k.response_code, k.response_body, k.response_headers,
                         CASE WHEN k.state = 'running' THEN k.lease_expires_at - k.updated_at END, k.expires_at - k.created_at)::text
      FROM apicore.idempotency_key k WHERE k.scope = 'dx' || run
    UNION ALL
    SELECT 'saga ' || row(right(g.id::text, 2), g.version, g.state, g.position, g.direction,
                          g.payload, g.deadline IS NULL, g.cancel_reason, g.finished_at IS NULL)::text
      FROM apicore.saga g WHERE g.definition = 'dx' || run
    UNION ALL
    SELECT 'step ' || row(right(s.saga::text, 2), s.position, s.direction, s.step, s.action,
                          s.function, s.state, s.attempt, s.max_attempts, s.timeout, s.backoff,
                          s.max_backoff, s.lease_expires_at IS NULL, s.worker, s.last_error,
                          s.output, s.claim_id IS NULL, s.claimed_at IS NULL)::text
      FROM apicore.saga_step s WHERE s.definition = 'dx' || run
    UNION ALL
    SELECT 'log ' || row(right(l.saga::text, 2),
                         row_number() OVER (PARTITION BY l.saga ORDER BY l.id), l.step, l.direction,
                         l.attempt, l.from_state, l.to_state, l.actor, l.reason, l.next_step,
                         l.claim_id IS NULL, l.claimed_at IS NULL, l.claimed_by)::text
      FROM apicore.saga_transition l JOIN apicore.saga g ON g.id = l.saga
     WHERE g.definition = 'dx' || run
$$;

-- run 1: the direct paths
SELECT dx_run(1);
SELECT dx_run_later(1);
-- run 2: a trigger on each table sends every write to SQL
CREATE FUNCTION dx_noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER dx_sql AFTER INSERT OR UPDATE ON apicore.saga_step
    FOR EACH STATEMENT EXECUTE FUNCTION dx_noop();
CREATE TRIGGER dx_sql AFTER INSERT OR UPDATE ON apicore.idempotency_key
    FOR EACH ROW EXECUTE FUNCTION dx_noop();
SET client_min_messages = debug1;
-- no report runs without the executor now (run 1 has them: sql/saga_direct.sql)
SELECT apicore.saga_define('dx_quiet', '[{"name": "a"}, {"name": "b"}]') AS version;
SELECT apicore.saga_start('dx_quiet', '{}', dx_id(9, 1)) IS NOT NULL AS started;
SELECT apicore.saga_step_succeeded(saga_id, step, attempt) FROM apicore.saga_claim('w', ARRAY['dx_quiet']);
RESET client_min_messages;
SELECT dx_run(2);
SELECT dx_run_later(2);
DROP TRIGGER dx_sql ON apicore.saga_step;
DROP TRIGGER dx_sql ON apicore.idempotency_key;

-- the same rows, and enough of them to mean something
SELECT substr(r, 1, strpos(r, ' ') - 1) AS kind, count(*) FROM dx_rows(1) r GROUP BY 1 ORDER BY 1;
SELECT 'only direct' AS path, r FROM (SELECT replace(r, 'dx1', 'dx') FROM dx_rows(1) r EXCEPT ALL
                                      SELECT replace(r, 'dx2', 'dx') FROM dx_rows(2) r) d(r)
UNION ALL
SELECT 'only SQL', r FROM (SELECT replace(r, 'dx2', 'dx') FROM dx_rows(2) r EXCEPT ALL
                           SELECT replace(r, 'dx1', 'dx') FROM dx_rows(1) r) d(r)
ORDER BY 1, 2;
SELECT state, count(*) FROM apicore.saga WHERE definition = 'dx1' GROUP BY 1 ORDER BY 1;

-- every btree index of apicore's tables, with heapallindexed
SELECT count(*) > 12 AS indexes_checked, count(*) FILTER (WHERE c.relname LIKE 'dx\_%') AS extra
FROM pg_class c
JOIN pg_index i ON i.indexrelid = c.oid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_am am ON am.oid = c.relam
CROSS JOIN LATERAL bt_index_check(c.oid, true)
WHERE t.relnamespace = 'apicore'::regnamespace AND am.amname = 'btree' AND t.relkind = 'r';
-- the extra index on the key table finds the rows (an index scan)
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT count(*) AS keys_by_created_at FROM apicore.idempotency_key
WHERE created_at > now() - interval '1 day' AND scope IN ('dx1', 'dx2');
RESET enable_seqscan;
RESET enable_bitmapscan;

-- clean up
DROP INDEX apicore.dx_key_created, apicore.dx_key_done, apicore.dx_key_lower,
    apicore.dx_step_updated, apicore.dx_step_claimed, apicore.dx_step_lower,
    apicore.dx_saga_updated, apicore.dx_saga_running, apicore.dx_saga_lower,
    apicore.dx_log_at, apicore.dx_log_claimed, apicore.dx_log_lower;
DELETE FROM apicore.idempotency_key WHERE scope IN ('dx1', 'dx2');
SET apicore.saga_retention = '1s';
UPDATE apicore.saga SET finished_at = now() - interval '1 hour', state = 'completed'
WHERE definition IN ('dx1', 'dx2', 'dx_quiet');
SELECT apicore._saga_retention() IS NOT NULL AS retention_ran;
RESET apicore.saga_retention;
DELETE FROM apicore.saga_definition WHERE name IN ('dx1', 'dx2', 'dx_quiet');
DROP FUNCTION dx_run(int), dx_run_later(int), dx_rows(int), dx_expire(int), dx_saga(text, int),
    dx_saga_drain(text, int), dx_keys(text), dx_keys_later(text), dx_noop(), dx_id(int, int);
DROP ROLE dx_app;
DROP EXTENSION amcheck;
