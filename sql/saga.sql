-- Sagas: definitions, the state machine (forward, retries, compensation in
-- reverse order, dead letter, operator retry/resolve, cancel, deadlines,
-- lease reclaim), local steps, the audit log and retention.
-- Time is controlled by moving run_after / lease_expires_at / deadline back.

CREATE SCHEMA shop;
CREATE TABLE shop.orders (saga uuid PRIMARY KEY, total int);
CREATE FUNCTION shop.create_order(payload jsonb, outputs jsonb) RETURNS jsonb
    LANGUAGE sql AS $$
    INSERT INTO shop.orders VALUES ((outputs->'reserve_stock'->>'saga')::uuid, (payload->>'total')::int)
    RETURNING jsonb_build_object('order', saga, 'charge', outputs->'charge_card'->>'charge')
$$;
-- a local step whose first run fails (a sequence is not rolled back); the
-- failed run's own write is undone
CREATE SEQUENCE shop.flaky_runs;
CREATE TABLE shop.audit (note text);
CREATE FUNCTION shop.flaky(payload jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shop.audit VALUES ('flaky ran');
    IF nextval('shop.flaky_runs') = 1 THEN
        RAISE EXCEPTION 'warehouse offline';
    END IF;
    RETURN '{"flaky": "ok"}';
END $$;
CREATE FUNCTION shop.not_jsonb(payload jsonb) RETURNS int LANGUAGE sql AS 'SELECT 1';

-- SQLSTATE, message and hint of the error a statement raises
CREATE FUNCTION error_of(statement text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    state text; message text; hint text;
BEGIN
    EXECUTE statement;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
    RETURN state || ': ' || message || E'\n  HINT: ' || hint;
END $$;

-- actor is the database role where no worker or operator is named: shown as
-- (role) so the output does not depend on who runs the tests
CREATE VIEW saga_trail AS
SELECT saga, coalesce(step || '/' || direction, '(saga)') AS what, attempt, from_state, to_state,
       CASE WHEN actor = current_user THEN '(role)' ELSE actor END AS actor, reason
  FROM apicore.saga_log ORDER BY id;

-- ---------- definitions ----------
SELECT apicore.saga_define('checkout', '[
  {"name": "reserve_stock", "compensate": "release_stock", "timeout": "1 minute"},
  {"name": "charge_card", "compensate": "refund_card", "max_attempts": 2,
   "backoff": "10 milliseconds", "max_backoff": "20 milliseconds"},
  {"name": "create_order", "function": "shop.create_order"}]') AS version;
-- the same steps again keep the version; changed steps make a new one
SELECT apicore.saga_define('checkout', (SELECT steps FROM apicore.saga_definition WHERE name = 'checkout')) AS same_version;
SELECT name, version, jsonb_array_length(steps) AS steps FROM apicore.saga_definition ORDER BY 1, 2;
SELECT position, name, compensate, function, timeout, max_attempts, backoff, max_backoff
  FROM apicore.saga_definition_step WHERE definition = 'checkout' ORDER BY position;

-- ---------- the happy path: two worker steps, then a local step ----------
SELECT apicore.saga_start('checkout', '{"total": 42}', '00000000-0000-0000-0000-00000000000a');
-- starting it again is the same saga
SELECT apicore.saga_start('checkout', '{"total": 42}', '00000000-0000-0000-0000-00000000000a');
SELECT saga_id, definition, version, step, direction, attempt, payload, outputs, idempotency_key,
       lease_expires_at > now() AS leased, action
  FROM apicore.saga_claim('worker-1');
-- nothing else is runnable while the step is claimed
SELECT count(*) AS claimable FROM apicore.saga_claim('worker-2');
SELECT apicore.saga_heartbeat('00000000-0000-0000-0000-00000000000a', 'reserve_stock', 1) > now() AS lease_extended;
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-00000000000a', 'reserve_stock', 1,
                                   '{"saga": "00000000-0000-0000-0000-00000000000a"}');
-- the same report twice is refused: the step is no longer claimed
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-00000000000a', 'reserve_stock', 1);
SELECT step, attempt, outputs FROM apicore.saga_claim('worker-1', ARRAY['checkout']);
-- a claim in progress is in the log already (shown from the step row until
-- the run's next transition carries it), once, after what happened before it
SELECT what, attempt, from_state, to_state, actor FROM saga_trail
 WHERE saga = '00000000-0000-0000-0000-00000000000a';
-- the last report runs the local step create_order in the same transaction
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-00000000000a', 'charge_card', 1, '{"charge": "ch_1"}');
SELECT * FROM shop.orders;
SELECT state, current_step, step_state FROM apicore.sagas WHERE id = '00000000-0000-0000-0000-00000000000a';
SELECT jsonb_pretty(apicore.saga_get('00000000-0000-0000-0000-00000000000a') #- '{created_at}' #- '{updated_at}'
       #- '{steps,0,run_after}' #- '{steps,1,run_after}' #- '{steps,2,run_after}') AS saga;
SELECT what, attempt, from_state, to_state, actor, reason FROM saga_trail
 WHERE saga = '00000000-0000-0000-0000-00000000000a';

-- ---------- retries with backoff, then compensation of what succeeded ----------
SELECT apicore.saga_start('checkout', '{"total": 7}', '00000000-0000-0000-0000-00000000000b');
SELECT step, attempt FROM apicore.saga_claim('w');
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-00000000000b', 'reserve_stock', 1);
SELECT step, attempt FROM apicore.saga_claim('w');
SELECT apicore.saga_step_failed('00000000-0000-0000-0000-00000000000b', 'charge_card', 1, 'card declined (try again)');
-- backoff: 10ms * 2^0 with jitter, so run_after is 5ms to 10ms after the report
SELECT state, attempt, last_error,
       run_after - updated_at BETWEEN interval '5 milliseconds' AND interval '10 milliseconds' AS backing_off
  FROM apicore.saga_step WHERE saga = '00000000-0000-0000-0000-00000000000b' AND step = 'charge_card';
UPDATE apicore.saga_step SET run_after = now() - interval '1 second'
 WHERE saga = '00000000-0000-0000-0000-00000000000b' AND state = 'runnable';
SELECT step, attempt FROM apicore.saga_claim('w');
-- the second failure exhausts max_attempts (2): compensate reserve_stock
SELECT apicore.saga_step_failed('00000000-0000-0000-0000-00000000000b', 'charge_card', 2, 'card declined');
SELECT step, direction, attempt, action, idempotency_key FROM apicore.saga_claim('w');
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-00000000000b', 'reserve_stock', 1);
SELECT what, attempt, from_state, to_state, actor, reason FROM saga_trail
 WHERE saga = '00000000-0000-0000-0000-00000000000b';

-- backoff doubles per attempt up to max_backoff, and a random half of it is waited
SELECT apicore.saga_define('slow', '[{"name": "s", "max_attempts": 4, "backoff": "1 hour", "max_backoff": "90 minutes"}]');
SELECT apicore.saga_start('slow', '{}', '00000000-0000-0000-0000-0000000000b0');
CREATE TABLE backoffs (attempt int, delay interval);
DO $$
DECLARE r record;
BEGIN
    FOR i IN 1..3 LOOP
        UPDATE apicore.saga_step SET run_after = now() - interval '1 second' WHERE saga = '00000000-0000-0000-0000-0000000000b0';
        SELECT * INTO r FROM apicore.saga_claim('w', ARRAY['slow']);
        PERFORM apicore.saga_step_failed(r.saga_id, r.step, r.attempt, 'timeout');
        INSERT INTO backoffs SELECT r.attempt, run_after - updated_at FROM apicore.saga_step
         WHERE saga = '00000000-0000-0000-0000-0000000000b0';
    END LOOP;
END $$;
-- attempt 1: 1h -> 30..60 min; attempt 2: 2h capped at 90 min -> 45..90 min; attempt 3: capped too
SELECT attempt, CASE attempt WHEN 1 THEN delay BETWEEN '30 minutes' AND '60 minutes'
                             ELSE delay BETWEEN '45 minutes' AND '90 minutes' END AS in_range
  FROM backoffs ORDER BY attempt;
SELECT apicore.saga_resolve('00000000-0000-0000-0000-0000000000b0', 'compensated', 'test', 'done with it');
DROP TABLE backoffs;

-- ---------- compensation runs in reverse order, skipping steps without one ----------
SELECT apicore.saga_define('trip', '[
  {"name": "book_hotel", "compensate": "cancel_hotel"},
  {"name": "log_search"},
  {"name": "book_flight", "compensate": "cancel_flight"},
  {"name": "book_car", "compensate": "cancel_car"},
  {"name": "pay", "max_attempts": 3}]');
SELECT apicore.saga_start('trip', '{}', '00000000-0000-0000-0000-00000000000c');
SELECT apicore.saga_step_succeeded(saga_id, step, attempt) FROM apicore.saga_claim('w', ARRAY['trip']);
SELECT apicore.saga_step_succeeded(saga_id, step, attempt) FROM apicore.saga_claim('w', ARRAY['trip']);
SELECT apicore.saga_step_succeeded(saga_id, step, attempt) FROM apicore.saga_claim('w', ARRAY['trip']);
SELECT apicore.saga_step_succeeded(saga_id, step, attempt) FROM apicore.saga_claim('w', ARRAY['trip']);
-- not retryable: gives up at once although attempts are left
SELECT apicore.saga_step_failed(saga_id, step, attempt, 'fraud suspected', false) FROM apicore.saga_claim('w', ARRAY['trip']);
SELECT step, direction, action FROM apicore.saga_claim('w', ARRAY['trip']);
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-00000000000c', 'book_car', 1);
SELECT step, direction, action FROM apicore.saga_claim('w', ARRAY['trip']);
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-00000000000c', 'book_flight', 1);
SELECT step, direction, action FROM apicore.saga_claim('w', ARRAY['trip']);
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-00000000000c', 'book_hotel', 1);
SELECT count(*) AS claimable FROM apicore.saga_claim('w', ARRAY['trip']);
SELECT what, to_state FROM saga_trail
 WHERE saga = '00000000-0000-0000-0000-00000000000c' AND to_state IN ('succeeded', 'failed', 'compensating', 'compensated');

-- ---------- dead letter: a compensation that keeps failing ----------
SELECT apicore.saga_start('trip', '{}', '00000000-0000-0000-0000-00000000000d');
SELECT apicore.saga_step_succeeded(saga_id, step, attempt) FROM apicore.saga_claim('w', ARRAY['trip']);
SELECT apicore.saga_step_failed(saga_id, step, attempt, 'no rooms', false) FROM apicore.saga_claim('w', ARRAY['trip']);
SELECT step, direction FROM apicore.saga_claim('w', ARRAY['trip']);
SELECT apicore.saga_step_failed('00000000-0000-0000-0000-00000000000d', 'book_hotel', 1, 'hotel API down', false);
SELECT id, definition, current_step, direction, attempt, last_error FROM apicore.saga_dead_letter;
-- the operator retries it: a fresh budget of attempts, logged with actor and reason
SELECT apicore.saga_retry('00000000-0000-0000-0000-00000000000d', 'alice', 'hotel API is back');
SELECT step, direction, attempt FROM apicore.saga_claim('w', ARRAY['trip']);
SELECT apicore.saga_step_failed('00000000-0000-0000-0000-00000000000d', 'book_hotel', 2, 'still down', false);
-- ... and finally resolves it by hand
SELECT apicore.saga_resolve('00000000-0000-0000-0000-00000000000d', 'compensated', 'alice', 'refunded by phone');
SELECT count(*) AS dead_letters FROM apicore.saga_dead_letter;
SELECT what, attempt, from_state, to_state, actor, reason FROM saga_trail
 WHERE saga = '00000000-0000-0000-0000-00000000000d';

-- ---------- cancel ----------
-- nothing claimed yet: the runnable step is cancelled, nothing to compensate
SELECT apicore.saga_start('trip', '{}', '00000000-0000-0000-0000-00000000000e');
SELECT apicore.saga_cancel('00000000-0000-0000-0000-00000000000e', 'customer changed their mind');
SELECT apicore.saga_cancel('00000000-0000-0000-0000-00000000000e', 'again');
-- a step in flight: the saga waits for its report, then compensates it too
SELECT apicore.saga_start('trip', '{}', '00000000-0000-0000-0000-00000000000f');
SELECT step, attempt FROM apicore.saga_claim('w', ARRAY['trip']);
SELECT apicore.saga_cancel('00000000-0000-0000-0000-00000000000f', 'customer hung up');
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-00000000000f', 'book_hotel', 1);
SELECT step, direction FROM apicore.saga_claim('w', ARRAY['trip']);
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-00000000000f', 'book_hotel', 1);
SELECT what, from_state, to_state, actor, reason FROM saga_trail
 WHERE saga = '00000000-0000-0000-0000-00000000000f';

-- ---------- deadlines ----------
SELECT apicore.saga_start('trip', '{}', '00000000-0000-0000-0000-000000000010', '1 hour');
SELECT apicore.saga_step_succeeded(saga_id, step, attempt) FROM apicore.saga_claim('w', ARRAY['trip']);
SELECT apicore._saga_fire_deadlines();
SELECT state FROM apicore.saga WHERE id = '00000000-0000-0000-0000-000000000010';
UPDATE apicore.saga SET deadline = now() - interval '1 second' WHERE id = '00000000-0000-0000-0000-000000000010';
SELECT apicore._saga_fire_deadlines();
SELECT state, cancel_reason FROM apicore.saga WHERE id = '00000000-0000-0000-0000-000000000010';
SELECT step, direction FROM apicore.saga_claim('w', ARRAY['trip']);
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-000000000010', 'book_hotel', 1);

-- ---------- expired leases: reclaimed, and the stale worker is refused ----------
SELECT apicore.saga_start('trip', '{}', '00000000-0000-0000-0000-000000000011');
SELECT step, attempt FROM apicore.saga_claim('slow-worker', ARRAY['trip']);
SELECT apicore._saga_reclaim_leases();
UPDATE apicore.saga_step SET lease_expires_at = now() - interval '1 second'
 WHERE saga = '00000000-0000-0000-0000-000000000011';
SELECT apicore._saga_reclaim_leases();
SELECT state, attempt, last_error FROM apicore.saga_step WHERE saga = '00000000-0000-0000-0000-000000000011';
UPDATE apicore.saga_step SET run_after = now() - interval '1 second' WHERE saga = '00000000-0000-0000-0000-000000000011';
SELECT step, attempt FROM apicore.saga_claim('fast-worker', ARRAY['trip']);
SELECT error_of($$SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-000000000011', 'book_hotel', 1)$$);
SELECT error_of($$SELECT apicore.saga_step_failed('00000000-0000-0000-0000-000000000011', 'book_hotel', 1, 'late')$$);
SELECT error_of($$SELECT apicore.saga_heartbeat('00000000-0000-0000-0000-000000000011', 'book_hotel', 1)$$);
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-000000000011', 'book_hotel', 2);
SELECT apicore.saga_resolve('00000000-0000-0000-0000-000000000011', 'completed', 'bob', 'test over');

-- ---------- local steps: a failure is recorded, its writes undone, then retried ----------
SELECT apicore.saga_define('restock', '[{"name": "flaky", "function": "shop.flaky", "backoff": "1 hour"},
                                        {"name": "notify"}]');
SELECT apicore.saga_start('restock', '{}', '00000000-0000-0000-0000-000000000012');
SELECT step, state, attempt, last_error FROM apicore.saga_step WHERE saga = '00000000-0000-0000-0000-000000000012';
SELECT count(*) AS flaky_writes_kept FROM shop.audit;
-- not due yet; once due, the maintenance task runs it (never a worker)
SELECT apicore._saga_run_local_steps();
UPDATE apicore.saga_step SET run_after = now() - interval '1 second' WHERE saga = '00000000-0000-0000-0000-000000000012';
SELECT count(*) AS handed_to_a_worker FROM apicore.saga_claim('w', ARRAY['restock']);
SELECT apicore._saga_run_local_steps();
SELECT step, state, attempt, output FROM apicore.saga_step WHERE saga = '00000000-0000-0000-0000-000000000012' ORDER BY position;
SELECT count(*) AS flaky_writes_kept FROM shop.audit;
SELECT apicore.saga_step_succeeded(saga_id, step, attempt) FROM apicore.saga_claim('w', ARRAY['restock']);

-- ---------- a running saga keeps its definition version ----------
SELECT apicore.saga_start('restock', '{}', '00000000-0000-0000-0000-000000000013');
SELECT apicore.saga_define('restock', '[{"name": "flaky", "function": "shop.flaky"},
                                        {"name": "notify_v2"}]') AS new_version;
SELECT step, version FROM apicore.saga_claim('w', ARRAY['restock']);
SELECT apicore.saga_start('restock', '{}', '00000000-0000-0000-0000-000000000014');
SELECT step, version FROM apicore.saga_claim('w', ARRAY['restock']);

-- ---------- claim order: oldest first, also after claims rolled back ----------
-- A claim resumes its index scan after the step it last took (the entries
-- before it are dead versions).  A step that becomes claimable again below
-- that point is still handed out: by a scan from the start when nothing
-- later is runnable, and by the scan from the start that runs at least
-- once a second.
SELECT apicore.saga_define('order', '[{"name": "only"}]');
SELECT apicore.saga_start('order', '{}', '00000000-0000-0000-0000-0000000000d1');
SELECT apicore.saga_start('order', '{}', '00000000-0000-0000-0000-0000000000d2');
BEGIN;
SELECT saga_id FROM apicore.saga_claim('w', ARRAY['order'], 2);
ROLLBACK;
SELECT apicore.saga_cancel('00000000-0000-0000-0000-0000000000d2', 'not needed');
SELECT saga_id FROM apicore.saga_claim('w', ARRAY['order']);
SELECT apicore.saga_start('order', '{}', '00000000-0000-0000-0000-0000000000d3');
SELECT apicore.saga_start('order', '{}', '00000000-0000-0000-0000-0000000000d4');
BEGIN;
SELECT saga_id FROM apicore.saga_claim('w', ARRAY['order'], 2);
ROLLBACK;
SELECT apicore.saga_start('order', '{}', '00000000-0000-0000-0000-0000000000d5');
SELECT pg_sleep(1.1);
SELECT saga_id FROM apicore.saga_claim('w', ARRAY['order']);
-- finish them all
SELECT saga, apicore.saga_step_succeeded(saga, step, attempt) FROM apicore.saga_step
 WHERE definition = 'order' AND state = 'claimed' ORDER BY saga;
SELECT saga_id, apicore.saga_step_succeeded(saga_id, step, attempt)
  FROM apicore.saga_claim('w', ARRAY['order'], 10) ORDER BY saga_id;

-- ---------- bad input: precise SQLSTATEs, messages naming the argument, hints ----------
SELECT error_of($$SELECT apicore.saga_define(NULL, '[]')$$);
SELECT error_of($$SELECT apicore.saga_define('', '[{"name": "a"}]')$$);
SELECT error_of($$SELECT apicore.saga_define(repeat('x', 300), '[{"name": "a"}]')$$);
SELECT error_of($$SELECT apicore.saga_define('x', NULL)$$);
SELECT error_of($$SELECT apicore.saga_define('x', '{"name": "a"}')$$);
SELECT error_of($$SELECT apicore.saga_define('x', '[]')$$);
SELECT error_of($$SELECT apicore.saga_define('x', '[{"name": "a"}, {"name": "a"}]')$$);
SELECT error_of($$SELECT apicore.saga_define('x', '[{"compensate": "b"}]')$$);
SELECT error_of($$SELECT apicore.saga_define('x', '[{"name": ""}]')$$);
SELECT error_of($$SELECT apicore.saga_define('x', '[42]')$$);
SELECT error_of($$SELECT apicore.saga_define('x', '[{"name": "a", "timeout": "-5 seconds"}]')$$);
SELECT error_of($$SELECT apicore.saga_define('x', '[{"name": "a", "backoff": "soon"}]')$$);
SELECT error_of($$SELECT apicore.saga_define('x', '[{"name": "a", "max_backoff": "0"}]')$$);
SELECT error_of($$SELECT apicore.saga_define('x', '[{"name": "a", "max_attempts": 0}]')$$);
SELECT error_of($$SELECT apicore.saga_define('x', '[{"name": "a", "max_attempts": 2.5}]')$$);
SELECT error_of($$SELECT apicore.saga_define('x', '[{"name": "a", "max_attempt": 3}]')$$);
SELECT error_of($$SELECT apicore.saga_define('x', '[{"name": "a", "function": "shop.nope"}]')$$);
SELECT error_of($$SELECT apicore.saga_define('x', '[{"name": "a", "function": "shop.not_jsonb"}]')$$);
SELECT error_of($$SELECT apicore.saga_define('x', '[{"name": "a", "compensate": "b", "compensate_function": "shop.flaky"}]')$$);
SELECT error_of($$SELECT apicore.saga_start('no_such_saga')$$);
SELECT error_of($$SELECT apicore.saga_start('trip', NULL)$$);
SELECT error_of($$SELECT apicore.saga_start('trip', '{}', NULL, '-1 minute')$$);
SELECT error_of($$SELECT apicore.saga_start('trip', '{"other": true}', '00000000-0000-0000-0000-00000000000c')$$);
SELECT error_of($$SELECT * FROM apicore.saga_claim(NULL)$$);
SELECT error_of($$SELECT * FROM apicore.saga_claim('w', NULL, 0)$$);
SELECT error_of($$SELECT apicore.saga_step_succeeded(NULL, 'a', 1)$$);
SELECT error_of($$SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-0000000000ff', 'a', 1)$$);
SELECT error_of($$SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-00000000000c', 'no_such_step', 1)$$);
SELECT error_of($$SELECT apicore.saga_step_failed('00000000-0000-0000-0000-00000000000c', 'pay', 1, NULL)$$);
SELECT error_of($$SELECT apicore.saga_cancel('00000000-0000-0000-0000-00000000000c', NULL)$$);
SELECT error_of($$SELECT apicore.saga_resolve('00000000-0000-0000-0000-000000000013', 'done', 'alice', 'typo')$$);
SELECT error_of($$SELECT apicore.saga_resolve('00000000-0000-0000-0000-00000000000c', 'failed', 'alice', 'already over')$$);
SELECT error_of($$SELECT apicore.saga_retry('00000000-0000-0000-0000-00000000000a', 'alice', 'completed already')$$);
SELECT error_of($$SELECT apicore.saga_retry('00000000-0000-0000-0000-000000000013', '', 'no actor')$$);
SELECT error_of($$SELECT apicore.saga_retry('00000000-0000-0000-0000-000000000013', 'alice', 'step is claimed')$$);
SELECT error_of($$SELECT apicore.saga_step_failed('00000000-0000-0000-0000-000000000013', 'notify', 1, 'x', NULL)$$);
SELECT error_of($$SELECT apicore.saga_heartbeat('00000000-0000-0000-0000-000000000013', NULL, 1)$$);
SELECT error_of($$SELECT apicore.saga_get(NULL)$$);
SELECT apicore.saga_get('00000000-0000-0000-0000-0000000000ff');
-- the log is append-only
SELECT error_of($$UPDATE apicore.saga_transition SET reason = 'rewritten'$$);
SELECT error_of($$DELETE FROM apicore.saga_transition$$);
SELECT error_of($$TRUNCATE apicore.saga_transition$$);
-- one log position per transition, also where a report stored two in one row
SELECT count(*) > 0 AND count(*) = count(DISTINCT id) AS log_ids_unique FROM apicore.saga_log;

-- ---------- retention: finished sagas go with their steps and log rows ----------
SELECT apicore._saga_retention();
SELECT apicore.saga_resolve('00000000-0000-0000-0000-000000000013', 'failed', 'alice', 'kept for the test');
UPDATE apicore.saga SET finished_at = finished_at - interval '8 days';
SELECT apicore._saga_retention();
SELECT id, state FROM apicore.saga ORDER BY id;
SELECT count(*) AS log_rows_of_deleted_sagas FROM apicore.saga_log l
 WHERE NOT EXISTS (SELECT 1 FROM apicore.saga g WHERE g.id = l.saga);
SET apicore.saga_retention = '1h';
UPDATE apicore.saga SET state = 'compensated', finished_at = now() - interval '2 hours';
SELECT apicore._saga_retention();
RESET apicore.saga_retention;

-- ---------- privileges: the packaged roles are all an application needs ----------
CREATE ROLE saga_app LOGIN;
CREATE ROLE saga_deployer LOGIN;
GRANT apicore_saga_worker TO saga_app;
GRANT apicore_saga_admin TO saga_deployer;
SET ROLE saga_app;
SELECT error_of($$SELECT apicore.saga_define('roles', '[{"name": "one"}]')$$);
SET ROLE saga_deployer;
SELECT apicore.saga_define('roles', '[{"name": "one"}]');
SET ROLE saga_app;
SELECT apicore.saga_start('roles', '{}', '00000000-0000-0000-0000-0000000000f1');
SELECT step, attempt FROM apicore.saga_claim('app-worker', ARRAY['roles']);
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-0000000000f1', 'one', 1);
SELECT state FROM apicore.sagas WHERE id = '00000000-0000-0000-0000-0000000000f1';
-- the log stays append-only for the application
SELECT error_of($$DELETE FROM apicore.saga_transition$$);
RESET ROLE;
-- a role that may call the functions but holds no saga table privilege
-- cannot claim (nor see) a step, whichever way the claim runs
CREATE ROLE saga_stranger LOGIN;
GRANT USAGE ON SCHEMA apicore TO saga_stranger;
SELECT apicore.saga_start('roles', '{}', '00000000-0000-0000-0000-0000000000f2');
SET ROLE saga_stranger;
SELECT error_of($$SELECT * FROM apicore.saga_claim('stranger', ARRAY['roles'])$$);
RESET ROLE;
SELECT state, attempt FROM apicore.saga_step WHERE saga = '00000000-0000-0000-0000-0000000000f2';
REVOKE USAGE ON SCHEMA apicore FROM saga_stranger;
-- row-level security and BEFORE ROW triggers an operator adds to the saga
-- tables apply to claims and reports as to any statement
SELECT apicore.saga_define('guarded', '[{"name": "one"}, {"name": "two"}]');
SELECT apicore.saga_start('guarded', '{}', '00000000-0000-0000-0000-0000000000e1');
SELECT apicore.saga_start('guarded', '{}', '00000000-0000-0000-0000-0000000000e2');
ALTER TABLE apicore.saga_step ENABLE ROW LEVEL SECURITY;
CREATE POLICY not_e1 ON apicore.saga_step TO saga_app
  USING (saga <> '00000000-0000-0000-0000-0000000000e1');
CREATE FUNCTION shop.stamp_worker() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.worker := NEW.worker || ' (stamped)'; RETURN NEW; END $$;
CREATE TRIGGER stamp_worker BEFORE UPDATE ON apicore.saga_step
  FOR EACH ROW WHEN (NEW.state = 'claimed') EXECUTE FUNCTION shop.stamp_worker();
SET ROLE saga_app;
SELECT saga_id, step FROM apicore.saga_claim('app-worker', ARRAY['guarded']);
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-0000000000e2', 'one', 1);
RESET ROLE;
SELECT saga, step, state, worker FROM apicore.saga_step
 WHERE definition = 'guarded' ORDER BY saga, position;
DROP TRIGGER stamp_worker ON apicore.saga_step;
DROP POLICY not_e1 ON apicore.saga_step;
ALTER TABLE apicore.saga_step DISABLE ROW LEVEL SECURITY;
DROP ROLE saga_app, saga_deployer, saga_stranger;

-- clean up
DELETE FROM apicore.saga_step;
DELETE FROM apicore.saga;
DELETE FROM apicore.saga_transition;
DELETE FROM apicore.saga_definition;
DROP VIEW saga_trail;
DROP FUNCTION error_of(text);
DROP SCHEMA shop CASCADE;
