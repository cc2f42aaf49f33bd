-- Sagas: definitions, the state machine (forward, retries, compensation in
-- reverse order, dead letter, operator retry/resolve, cancel, deadlines,
-- lease reclaim), local steps, the audit log and retention.
-- Time is controlled by moving run_after / lease_expires_at / deadline back.
--
-- Everything runs as two ordinary roles with the grants the README lists:
-- saga_deployer (apicore_saga_admin: defines sagas, owns the local step
-- functions, retries, resolves, runs maintenance) and saga_app
-- (apicore_saga_worker: starts, claims, reports, cancels).  The superuser
-- only creates them and the test's time machine below.

CREATE ROLE saga_deployer;
CREATE ROLE saga_app;
CREATE ROLE saga_rival;     -- another admin
GRANT apicore_saga_admin TO saga_deployer, saga_rival;
GRANT apicore_saga_worker TO saga_app;
-- Test-only: moving time means writing apicore's tables, which no role
-- but apicore's owner may do; these definer functions do it for the test.
CREATE SCHEMA saga_time;
GRANT USAGE ON SCHEMA saga_time TO saga_deployer, saga_app;
CREATE FUNCTION saga_time.due(saga_id uuid) RETURNS void LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog AS $$
    UPDATE apicore.saga_step SET run_after = now() - interval '1 second'
     WHERE saga = saga_id AND state = 'runnable' $$;
CREATE FUNCTION saga_time.lease_lost(saga_id uuid) RETURNS void LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog AS $$
    UPDATE apicore.saga_step SET lease_expires_at = now() - interval '1 second'
     WHERE saga = saga_id AND lease_expires_at IS NOT NULL $$;
CREATE FUNCTION saga_time.deadline_passed(saga_id uuid) RETURNS void LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog AS $$
    UPDATE apicore.saga SET deadline = now() - interval '1 second' WHERE id = saga_id $$;
CREATE FUNCTION saga_time.finished_ago(age interval) RETURNS void LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog AS $$
    UPDATE apicore.saga SET finished_at = finished_at - age $$;

CREATE SCHEMA shop AUTHORIZATION saga_deployer;
SET ROLE saga_deployer;
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
CREATE AGGREGATE shop.sum_agg(jsonb) (sfunc = jsonb_concat, stype = jsonb);
-- the application reads the orders the local step wrote
GRANT USAGE ON SCHEMA shop TO saga_app;
GRANT SELECT ON shop.orders TO saga_app;
RESET ROLE;
-- a function the deployer may not execute
CREATE FUNCTION shop.private(payload jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT payload';
REVOKE EXECUTE ON FUNCTION shop.private(jsonb) FROM PUBLIC;

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
GRANT SELECT ON saga_trail TO saga_deployer, saga_app;

SET ROLE saga_deployer;

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
-- the role whose rights its local steps run with
SELECT definer FROM apicore.saga_definition WHERE name = 'checkout';

SET ROLE saga_app;

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
SELECT saga_time.due('00000000-0000-0000-0000-00000000000b');
SELECT step, attempt FROM apicore.saga_claim('w');
-- the second failure exhausts max_attempts (2): compensate reserve_stock
SELECT apicore.saga_step_failed('00000000-0000-0000-0000-00000000000b', 'charge_card', 2, 'card declined');
SELECT step, direction, attempt, action, idempotency_key FROM apicore.saga_claim('w');
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-00000000000b', 'reserve_stock', 1);
SELECT what, attempt, from_state, to_state, actor, reason FROM saga_trail
 WHERE saga = '00000000-0000-0000-0000-00000000000b';

-- backoff doubles per attempt up to max_backoff, and a random half of it is waited
SET ROLE saga_deployer;
SELECT apicore.saga_define('slow', '[{"name": "s", "max_attempts": 4, "backoff": "1 hour", "max_backoff": "90 minutes"}]');
SELECT apicore.saga_start('slow', '{}', '00000000-0000-0000-0000-0000000000b0');
CREATE TEMP TABLE backoffs (attempt int, delay interval);
DO $$
DECLARE r record;
BEGIN
    FOR i IN 1..3 LOOP
        PERFORM saga_time.due('00000000-0000-0000-0000-0000000000b0');
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
SET ROLE saga_app;
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
SET ROLE saga_deployer;
SELECT apicore.saga_retry('00000000-0000-0000-0000-00000000000d', 'alice', 'hotel API is back');
SET ROLE saga_app;
SELECT step, direction, attempt FROM apicore.saga_claim('w', ARRAY['trip']);
SELECT apicore.saga_step_failed('00000000-0000-0000-0000-00000000000d', 'book_hotel', 2, 'still down', false);
-- ... and finally resolves it by hand
SET ROLE saga_deployer;
SELECT apicore.saga_resolve('00000000-0000-0000-0000-00000000000d', 'compensated', 'alice', 'refunded by phone');
SET ROLE saga_app;
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
SET ROLE saga_deployer;
SELECT apicore._saga_fire_deadlines();
SELECT state FROM apicore.saga WHERE id = '00000000-0000-0000-0000-000000000010';
SELECT saga_time.deadline_passed('00000000-0000-0000-0000-000000000010');
SELECT apicore._saga_fire_deadlines();
SELECT state, cancel_reason FROM apicore.saga WHERE id = '00000000-0000-0000-0000-000000000010';
SET ROLE saga_app;
SELECT step, direction FROM apicore.saga_claim('w', ARRAY['trip']);
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-000000000010', 'book_hotel', 1);

-- ---------- expired leases: reclaimed, and the stale worker is refused ----------
SELECT apicore.saga_start('trip', '{}', '00000000-0000-0000-0000-000000000011');
SELECT step, attempt FROM apicore.saga_claim('slow-worker', ARRAY['trip']);
SET ROLE saga_deployer;
SELECT apicore._saga_reclaim_leases();
SELECT saga_time.lease_lost('00000000-0000-0000-0000-000000000011');
SELECT apicore._saga_reclaim_leases();
SET ROLE saga_app;
SELECT state, attempt, last_error FROM apicore.saga_step WHERE saga = '00000000-0000-0000-0000-000000000011';
SELECT saga_time.due('00000000-0000-0000-0000-000000000011');
SELECT step, attempt FROM apicore.saga_claim('fast-worker', ARRAY['trip']);
SELECT error_of($$SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-000000000011', 'book_hotel', 1)$$);
SELECT error_of($$SELECT apicore.saga_step_failed('00000000-0000-0000-0000-000000000011', 'book_hotel', 1, 'late')$$);
SELECT error_of($$SELECT apicore.saga_heartbeat('00000000-0000-0000-0000-000000000011', 'book_hotel', 1)$$);
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-000000000011', 'book_hotel', 2);
SET ROLE saga_deployer;
SELECT apicore.saga_resolve('00000000-0000-0000-0000-000000000011', 'completed', 'bob', 'test over');

-- ---------- local steps: a failure is recorded, its writes undone, then retried ----------
SELECT apicore.saga_define('restock', '[{"name": "flaky", "function": "shop.flaky", "backoff": "1 hour"},
                                        {"name": "notify"}]');
-- started by the application, the local step runs as the role that defined the saga
SET ROLE saga_app;
SELECT apicore.saga_start('restock', '{}', '00000000-0000-0000-0000-000000000012');
SELECT step, state, attempt, last_error FROM apicore.saga_step WHERE saga = '00000000-0000-0000-0000-000000000012';
SET ROLE saga_deployer;
SELECT count(*) AS flaky_writes_kept FROM shop.audit;
-- not due yet; once due, the maintenance task runs it (never a worker)
SELECT apicore._saga_run_local_steps();
SELECT saga_time.due('00000000-0000-0000-0000-000000000012');
SET ROLE saga_app;
SELECT count(*) AS handed_to_a_worker FROM apicore.saga_claim('w', ARRAY['restock']);
SET ROLE saga_deployer;
SELECT apicore._saga_run_local_steps();
SELECT step, state, attempt, output FROM apicore.saga_step WHERE saga = '00000000-0000-0000-0000-000000000012' ORDER BY position;
SELECT count(*) AS flaky_writes_kept FROM shop.audit;
SET ROLE saga_app;
SELECT apicore.saga_step_succeeded(saga_id, step, attempt) FROM apicore.saga_claim('w', ARRAY['restock']);

-- ---------- a running saga keeps its definition version ----------
SELECT apicore.saga_start('restock', '{}', '00000000-0000-0000-0000-000000000013');
SET ROLE saga_deployer;
SELECT apicore.saga_define('restock', '[{"name": "flaky", "function": "shop.flaky"},
                                        {"name": "notify_v2"}]') AS new_version;
SET ROLE saga_app;
SELECT step, version FROM apicore.saga_claim('w', ARRAY['restock']);
SELECT apicore.saga_start('restock', '{}', '00000000-0000-0000-0000-000000000014');
SELECT step, version FROM apicore.saga_claim('w', ARRAY['restock']);

-- ---------- claim order: oldest first, also after claims rolled back ----------
-- A claim resumes its index scan after the step it last took (the entries
-- before it are dead versions).  A step that becomes claimable again below
-- that point is still handed out: by a scan from the start when nothing
-- later is runnable, and by the scan from the start that runs at least
-- once a second.
SET ROLE saga_deployer;
SELECT apicore.saga_define('order', '[{"name": "only"}]');
SET ROLE saga_app;
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
SET ROLE saga_deployer;
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
-- intervals are bounded: none can move a timestamp past the end of timestamptz
SELECT error_of($$SELECT apicore.saga_define('x', '[{"name": "a", "backoff": "300000 years"}]')$$);
SELECT error_of($$SELECT apicore.saga_define('x', '[{"name": "a", "max_backoff": "100 years 1 day"}]')$$);
SELECT error_of($$SELECT apicore.saga_define('x', '[{"name": "a", "timeout": "2147483647 days"}]')$$);
SELECT error_of($$SELECT apicore.saga_start('trip', '{}', NULL, '300000 years')$$);
-- a local step function is one the defining role may run: not a superuser's
-- own use of someone else's code, not one they may not execute
SELECT error_of($$SELECT apicore.saga_define('x', '[{"name": "a", "function": "shop.private"}]')$$);
SELECT error_of($$SELECT apicore.saga_define('x', '[{"name": "a", "function": "shop.sum_agg"}]')$$);
RESET ROLE;
SELECT error_of($$SELECT apicore.saga_define('x', '[{"name": "a", "function": "shop.flaky"}]')$$);
-- a new version of a definition comes from a role acting for its definer
SET ROLE saga_rival;
SELECT error_of($$SELECT apicore.saga_define('trip', '[{"name": "a"}]')$$);
SET ROLE saga_deployer;
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
-- the log is append-only, for its owner too
RESET ROLE;
SELECT error_of($$UPDATE apicore.saga_transition SET reason = 'rewritten'$$);
SELECT error_of($$DELETE FROM apicore.saga_transition$$);
SELECT error_of($$TRUNCATE apicore.saga_transition$$);
SET ROLE saga_deployer;
-- one log position per transition, also where a report stored two in one row
SELECT count(*) > 0 AND count(*) = count(DISTINCT id) AS log_ids_unique FROM apicore.saga_log;

-- ---------- retention: finished sagas go with their steps and log rows ----------
SELECT apicore._saga_retention();
SELECT apicore.saga_resolve('00000000-0000-0000-0000-000000000013', 'failed', 'alice', 'kept for the test');
SELECT saga_time.finished_ago('8 days');
SELECT apicore._saga_retention();
SELECT id, state FROM apicore.saga ORDER BY id;
SELECT count(*) AS log_rows_of_deleted_sagas FROM apicore.saga_log l
 WHERE NOT EXISTS (SELECT 1 FROM apicore.saga g WHERE g.id = l.saga);
-- (the setting is a superuser's; the failed sagas are ended by hand here)
RESET ROLE;
SET apicore.saga_retention = '1h';
UPDATE apicore.saga SET state = 'compensated', finished_at = now() - interval '2 hours';
SET ROLE saga_deployer;
SELECT apicore._saga_retention();
RESET ROLE;
RESET apicore.saga_retention;

-- ---------- privileges: the packaged roles are all an application needs ----------
SET ROLE saga_app;
SELECT error_of($$SELECT apicore.saga_define('roles', '[{"name": "one"}]')$$);
SELECT error_of($$SELECT apicore.saga_retry('00000000-0000-0000-0000-0000000000f1', 'app', 'not mine')$$);
SELECT error_of($$SELECT apicore._saga_retention()$$);
SET ROLE saga_deployer;
SELECT apicore.saga_define('roles', '[{"name": "one"}]');
SET ROLE saga_app;
SELECT apicore.saga_start('roles', '{}', '00000000-0000-0000-0000-0000000000f1');
SELECT step, attempt FROM apicore.saga_claim('app-worker', ARRAY['roles']);
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-0000000000f1', 'one', 1);
SELECT state FROM apicore.sagas WHERE id = '00000000-0000-0000-0000-0000000000f1';
-- the tables are written only through the functions
SELECT error_of($$DELETE FROM apicore.saga_transition$$);
SELECT error_of($$UPDATE apicore.saga SET state = 'completed'$$);
RESET ROLE;
-- a role with USAGE on the schema but no grant may call no saga function
CREATE ROLE saga_stranger;
SELECT apicore.saga_start('roles', '{}', '00000000-0000-0000-0000-0000000000f2');
SET ROLE saga_stranger;
SELECT error_of($$SELECT * FROM apicore.saga_claim('stranger', ARRAY['roles'])$$);
SELECT error_of($$SELECT apicore.saga_get('00000000-0000-0000-0000-0000000000f2')$$);
RESET ROLE;
SELECT state, attempt FROM apicore.saga_step WHERE saga = '00000000-0000-0000-0000-0000000000f2';
-- a BEFORE ROW trigger the superuser adds to a saga table fires for claims
-- and reports as for any statement (the direct paths step aside for it)
CREATE FUNCTION saga_time.stamp_worker() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.worker := NEW.worker || ' (stamped)'; RETURN NEW; END $$;
CREATE TRIGGER stamp_worker BEFORE UPDATE ON apicore.saga_step
  FOR EACH ROW WHEN (NEW.state = 'claimed') EXECUTE FUNCTION saga_time.stamp_worker();
SET ROLE saga_deployer;
SELECT apicore.saga_define('guarded', '[{"name": "one"}, {"name": "two"}]');
SET ROLE saga_app;
SELECT apicore.saga_start('guarded', '{}', '00000000-0000-0000-0000-0000000000e2');
SELECT saga_id, step FROM apicore.saga_claim('app-worker', ARRAY['guarded']);
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-0000000000e2', 'one', 1);
SELECT saga, step, state, worker FROM apicore.saga_step
 WHERE definition = 'guarded' ORDER BY saga, position;
RESET ROLE;
DROP TRIGGER stamp_worker ON apicore.saga_step;

-- clean up: the sagas leave through retention, with their log rows
UPDATE apicore.saga SET state = 'completed', finished_at = now() - interval '30 days';
SELECT apicore._saga_retention();
SELECT count(*) AS log_rows_left FROM apicore.saga_transition;
DELETE FROM apicore.saga_definition;
DROP VIEW saga_trail;
DROP FUNCTION error_of(text);
DROP SCHEMA shop CASCADE;
DROP SCHEMA saga_time CASCADE;
DROP ROLE saga_app, saga_deployer, saga_rival, saga_stranger;
