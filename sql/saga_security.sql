-- Sagas under attack (issue 13).  An ordinary role that holds the strongest
-- packaged role (apicore_saga_admin) creates, in a schema it owns and puts
-- first in search_path, operators and functions with the names apicore's
-- SQL uses, each recording current_user into a table; then it drives every
-- saga entry point, by the direct paths and by the SQL paths, and leaves
-- work for the maintenance tasks, which a superuser runs.  Afterwards: the
-- recording table holds no row of another role, the attacker gained no
-- attribute or membership, no packaged role (nor PUBLIC) can write a saga
-- table, and rows tampered with by a superuser raise clean errors.

-- SQLSTATE and message of the error a statement raises
CREATE FUNCTION sec_error(statement text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    state text; message text;
BEGIN
    EXECUTE statement;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
    RETURN state || ': ' || message;
END $$;

CREATE ROLE saga_attacker;
CREATE ROLE saga_sec_worker;
CREATE ROLE saga_sec_admin;
CREATE ROLE saga_sec_nobody;
GRANT apicore_saga_admin TO saga_attacker, saga_sec_admin;
GRANT apicore_saga_worker TO saga_sec_worker;
CREATE SCHEMA evil AUTHORIZATION saga_attacker;

-- ---------- the attacker's kit ----------
SET ROLE saga_attacker;
CREATE TABLE evil.log (who name, sess name, what text);
GRANT USAGE ON SCHEMA evil TO PUBLIC;
GRANT INSERT ON evil.log TO PUBLIC;
CREATE FUNCTION evil.rec(what text) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO evil.log VALUES (current_user, session_user, what) $$;
-- operators apicore's statements use, for the types they compare, and the
-- cross-type regclass = oid that has no exact match in pg_catalog
DO $$
DECLARE
    o record;
    n int := 0;
BEGIN
    FOR o IN
        SELECT op, l, r FROM
            (VALUES ('='), ('<>'), ('<'), ('>'), ('<='), ('>=')) ops(op),
            (VALUES ('text'), ('uuid'), ('int4'), ('int8'), ('oid'), ('jsonb'), ('timestamptz'),
                    ('interval'), ('name'), ('bool'), ('regrole')) t(l),
            LATERAL (SELECT t.l AS r) same
        UNION ALL VALUES ('=', 'regclass', 'oid'), ('=', 'oid', 'regclass'), ('=', 'text', 'name'),
            ('+', 'int4', 'int4'), ('-', 'int4', 'int4'), ('+', 'timestamptz', 'interval'),
            ('-', 'timestamptz', 'interval'), ('||', 'text', 'text'), ('||', 'uuid', 'text'),
            ('||', 'text', 'uuid')
    LOOP
        n := n + 1;
        EXECUTE format($f$CREATE FUNCTION evil.op_%s(a %s, b %s) RETURNS %s LANGUAGE plpgsql AS
            $b$ BEGIN PERFORM evil.rec(%L); RETURN a OPERATOR(pg_catalog.%s) b; END $b$ $f$,
            n, o.l, o.r,
            CASE WHEN o.op IN ('+', '-') THEN o.l WHEN o.op = '||' THEN 'text' ELSE 'bool' END,
            format('%s %s %s', o.l, o.op, o.r), o.op);
        EXECUTE format('CREATE OPERATOR evil.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = evil.op_%s)',
                       o.op, o.l, o.r, n);
    END LOOP;
END $$;
CREATE FUNCTION evil.neg(a int4) RETURNS int4 LANGUAGE plpgsql
    AS 'BEGIN PERFORM evil.rec(''- int4''); RETURN OPERATOR(pg_catalog.-) a; END';
CREATE OPERATOR evil.- (RIGHTARG = int4, FUNCTION = evil.neg);
-- functions and aggregates with the names apicore's statements call
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql
    AS 'BEGIN PERFORM evil.rec(''now()''); RETURN pg_catalog.now(); END';
CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql
    AS 'BEGIN PERFORM evil.rec(''clock_timestamp()''); RETURN pg_catalog.clock_timestamp(); END';
CREATE FUNCTION evil.nextval(s regclass) RETURNS bigint LANGUAGE plpgsql
    AS 'BEGIN PERFORM evil.rec(''nextval()''); RETURN pg_catalog.nextval(s); END';
CREATE FUNCTION evil.hashtext(t text) RETURNS int4 LANGUAGE plpgsql
    AS 'BEGIN PERFORM evil.rec(''hashtext()''); RETURN pg_catalog.hashtext(t); END';
CREATE FUNCTION evil.pg_advisory_xact_lock(a int4, b int4) RETURNS void LANGUAGE plpgsql
    AS 'BEGIN PERFORM evil.rec(''pg_advisory_xact_lock()''); PERFORM pg_catalog.pg_advisory_xact_lock(a, b); END';
CREATE FUNCTION evil.make_interval(secs double precision) RETURNS interval LANGUAGE plpgsql
    AS 'BEGIN PERFORM evil.rec(''make_interval()''); RETURN pg_catalog.make_interval(secs => secs); END';
CREATE FUNCTION evil.jsonb_build_object(VARIADIC a text[]) RETURNS jsonb LANGUAGE plpgsql
    AS 'BEGIN PERFORM evil.rec(''jsonb_build_object()''); RETURN ''{}''; END';
CREATE FUNCTION evil.agg_step(s jsonb, v jsonb) RETURNS jsonb LANGUAGE plpgsql
    AS 'BEGIN PERFORM evil.rec(''aggregate''); RETURN v; END';
CREATE FUNCTION evil.agg_step2(s jsonb, k text, v jsonb) RETURNS jsonb LANGUAGE plpgsql
    AS 'BEGIN PERFORM evil.rec(''aggregate''); RETURN v; END';
CREATE FUNCTION evil.agg_uuid(s uuid[], v uuid) RETURNS uuid[] LANGUAGE plpgsql
    AS 'BEGIN PERFORM evil.rec(''aggregate''); RETURN s; END';
CREATE FUNCTION evil.agg_count(s int8) RETURNS int8 LANGUAGE plpgsql
    AS 'BEGIN PERFORM evil.rec(''count(*)''); RETURN s OPERATOR(pg_catalog.+) 1; END';
CREATE AGGREGATE evil.jsonb_agg(jsonb) (sfunc = evil.agg_step, stype = jsonb);
CREATE AGGREGATE evil.jsonb_object_agg(text, jsonb) (sfunc = evil.agg_step2, stype = jsonb);
CREATE AGGREGATE evil.array_agg(uuid) (sfunc = evil.agg_uuid, stype = uuid[]);
CREATE AGGREGATE evil.count(*) (sfunc = evil.agg_count, stype = int8, initcond = '0');
-- local step functions: each records, then tries to take back the session's
-- identity (the maintenance worker's is a superuser's)
CREATE SEQUENCE evil.flaky_runs;
CREATE FUNCTION evil.step(payload jsonb, outputs jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM evil.rec('local step');
    BEGIN
        RESET ROLE;
    EXCEPTION WHEN OTHERS THEN
        PERFORM evil.rec('RESET ROLE: ' OPERATOR(pg_catalog.||) SQLSTATE);
    END;
    BEGIN
        SET SESSION AUTHORIZATION DEFAULT;
    EXCEPTION WHEN OTHERS THEN
        PERFORM evil.rec('SET SESSION AUTHORIZATION: ' OPERATOR(pg_catalog.||) SQLSTATE);
    END;
    BEGIN
        PERFORM pg_catalog.set_config('role', 'none', false);
    EXCEPTION WHEN OTHERS THEN
        PERFORM evil.rec('set_config(role): ' OPERATOR(pg_catalog.||) SQLSTATE);
    END;
    PERFORM evil.rec('local step, after');
    RETURN '{"stolen": false}';
END $$;
CREATE FUNCTION evil.flaky(payload jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM evil.step(payload, '{}');
    IF pg_catalog.nextval('evil.flaky_runs') OPERATOR(pg_catalog.=) 1 THEN
        RAISE EXCEPTION 'first run fails';
    END IF;
    RETURN '{"flaky": "ok"}';
END $$;
CREATE SEQUENCE evil.fixed_runs;
CREATE FUNCTION evil.fixed(payload jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM evil.rec('fixed');
    IF pg_catalog.nextval('evil.fixed_runs') OPERATOR(pg_catalog.=) 1 THEN
        RAISE EXCEPTION 'first run fails';
    END IF;
    RETURN '{"fixed": "ok"}';
END $$;
-- a function of another signature, dropped and recreated under its name later
CREATE FUNCTION evil.morph(payload jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT payload';

SET search_path = evil, public, pg_catalog;

-- ---------- every entry point, by the direct paths ----------
SELECT apicore.saga_define('evil_local', '[
  {"name": "l1", "function": "evil.step", "compensate_function": "evil.step"},
  {"name": "w1", "compensate": "undo_w1"},
  {"name": "w2"}]');
SELECT apicore.saga_define('evil_flaky', '[{"name": "f", "function": "evil.flaky",
  "backoff": "1 microsecond", "max_backoff": "1 microsecond"}]');
SELECT apicore.saga_define('evil_plain', '[{"name": "p1", "compensate": "undo_p1", "timeout": "1 microsecond",
  "backoff": "1 hour"},
  {"name": "p2", "compensate": "undo_p2", "max_attempts": 1}]');
-- start: the local step l1 runs at once, as the attacker (its definer)
SELECT apicore.saga_start('evil_local', '{}', '00000000-0000-0000-0000-0000000005a1');
SELECT step, attempt FROM apicore.saga_claim('evil-worker', ARRAY['evil_local']);
SELECT apicore.saga_heartbeat('00000000-0000-0000-0000-0000000005a1', 'w1', 1) > now() AS heartbeat;
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-0000000005a1', 'w1', 1, '{"w1": 1}');
SELECT step, attempt FROM apicore.saga_claim('evil-worker', ARRAY['evil_local']);
SELECT apicore.saga_step_failed('00000000-0000-0000-0000-0000000005a1', 'w2', 1, 'declined', false);
SELECT step, direction FROM apicore.saga_claim('evil-worker', ARRAY['evil_local']);
-- the compensation of w1 succeeds; l1's local compensation runs as the attacker
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-0000000005a1', 'w1', 1);
SELECT apicore.saga_get('00000000-0000-0000-0000-0000000005a1')->>'state' AS state;
-- a dead letter: retried and resolved by the operator
SELECT apicore.saga_start('evil_plain', '{}', '00000000-0000-0000-0000-0000000005a2');
SELECT step FROM apicore.saga_claim('evil-worker', ARRAY['evil_plain']);
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-0000000005a2', 'p1', 1);
SELECT apicore.saga_step_failed(saga_id, step, attempt, 'no', false) FROM apicore.saga_claim('evil-worker', ARRAY['evil_plain']);
SELECT apicore.saga_step_failed(saga_id, step, attempt, 'no', false) FROM apicore.saga_claim('evil-worker', ARRAY['evil_plain']);
SELECT apicore.saga_retry('00000000-0000-0000-0000-0000000005a2', 'mallory', 'again');
SELECT apicore.saga_resolve('00000000-0000-0000-0000-0000000005a2', 'compensated', 'mallory', 'done');
-- cancel
SELECT apicore.saga_start('evil_plain', '{}', '00000000-0000-0000-0000-0000000005a3');
SELECT apicore.saga_cancel('00000000-0000-0000-0000-0000000005a3', 'never mind');
-- left for maintenance: a local retry due, a lost lease (1 microsecond), a
-- deadline passed (1 microsecond), a cancelled saga for retention
SELECT apicore.saga_start('evil_flaky', '{}', '00000000-0000-0000-0000-0000000005b1');
SELECT apicore.saga_start('evil_plain', '{}', '00000000-0000-0000-0000-0000000005b2');
SELECT step FROM apicore.saga_claim('evil-worker', ARRAY['evil_plain']);
SELECT apicore.saga_start('evil_plain', '{}', '00000000-0000-0000-0000-0000000005b3', '1 microsecond');
SELECT count(*) > 0 AS views_readable FROM (SELECT FROM apicore.sagas UNION ALL SELECT FROM apicore.saga_log
                                        UNION ALL SELECT FROM apicore.saga_dead_letter) v;

-- ---------- again by the SQL paths: a BEFORE ROW trigger makes the direct paths step aside ----------
RESET ROLE;
RESET search_path;
CREATE FUNCTION public.sec_keep() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
CREATE TRIGGER sec_keep BEFORE INSERT OR UPDATE ON apicore.saga_step
    FOR EACH ROW EXECUTE FUNCTION public.sec_keep();
SET ROLE saga_attacker;
SET search_path = evil, public, pg_catalog;
SELECT apicore.saga_start('evil_local', '{}', '00000000-0000-0000-0000-0000000005c1');
SELECT apicore.saga_start('evil_local', '{}', '00000000-0000-0000-0000-0000000005c2');
SELECT count(*) AS claimed FROM apicore.saga_claim('evil-worker', ARRAY['evil_local'], 2);
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-0000000005c1', 'w1', 1);
SELECT apicore.saga_step_failed('00000000-0000-0000-0000-0000000005c2', 'w1', 1, 'retry me');
SELECT step, attempt FROM apicore.saga_claim('evil-worker', ARRAY['evil_local']);
SELECT apicore.saga_heartbeat('00000000-0000-0000-0000-0000000005c1', 'w2', 1) > now() AS heartbeat;
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-0000000005c1', 'w2', 1);
SELECT apicore.saga_cancel('00000000-0000-0000-0000-0000000005c2', 'stop');
RESET ROLE;
RESET search_path;
DROP TRIGGER sec_keep ON apicore.saga_step;
DROP FUNCTION public.sec_keep();

-- ---------- the maintenance tasks, run by a superuser whose search_path holds the kit ----------
UPDATE apicore.saga SET finished_at = now() - interval '30 days'
 WHERE id = '00000000-0000-0000-0000-0000000005a3';
SELECT count(*) AS local_runs_before FROM evil.log WHERE what = 'local step';
SET search_path = evil, public, pg_catalog;
CREATE TEMP TABLE sec_round AS SELECT * FROM apicore.run_maintenance();
RESET search_path;
SELECT count(*) AS local_runs_after FROM evil.log WHERE what = 'local step';
SELECT task, detail FROM sec_round WHERE task LIKE 'saga%' ORDER BY task;
SELECT id, state FROM apicore.saga WHERE id::text LIKE '%5b_' OR id::text LIKE '%5a3' ORDER BY id;

-- ---------- what ran as whom ----------
-- nothing of the attacker's ran as another role, nor under another session user's identity
SELECT who, count(*) > 0 AS ran FROM evil.log GROUP BY who ORDER BY who;
SELECT DISTINCT what FROM evil.log WHERE what LIKE '%:%' OR what LIKE 'local%' ORDER BY what;
-- and the attacker gained nothing
SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolinherit
  FROM pg_roles WHERE rolname = 'saga_attacker';
SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
 WHERE m.member = 'saga_attacker'::regrole ORDER BY 1;

-- ---------- direct writes to the saga tables: refused to every packaged role and PUBLIC ----------
CREATE TABLE sec_writes (who text, tbl text, cmd text, outcome text);
DO $$
DECLARE
    r text;
    t text;
    c text;
    outcome text;
BEGIN
    FOREACH r IN ARRAY ARRAY['saga_sec_worker', 'saga_sec_admin', 'saga_attacker', 'saga_sec_nobody'] LOOP
        FOREACH t IN ARRAY ARRAY['saga_definition', 'saga_definition_step', 'saga', 'saga_step', 'saga_transition'] LOOP
            FOREACH c IN ARRAY ARRAY[
                CASE WHEN t = 'saga_transition'
                     THEN 'INSERT INTO apicore.saga_transition (saga, to_state, actor) '
                          'VALUES (''00000000-0000-0000-0000-0000000005a1'', ''completed'', ''apicore'')'
                     ELSE format('INSERT INTO apicore.%I SELECT * FROM apicore.%I LIMIT 1', t, t) END,
                format('UPDATE apicore.%I SET created_at = created_at', t),
                format('DELETE FROM apicore.%I', t),
                format('TRUNCATE apicore.%I', t)] LOOP
                IF t = 'saga_transition' AND c LIKE 'UPDATE%' THEN
                    c := 'UPDATE apicore.saga_transition SET reason = NULL';
                ELSIF t IN ('saga_definition_step') AND c LIKE 'UPDATE%' THEN
                    c := 'UPDATE apicore.saga_definition_step SET function = NULL';
                END IF;
                EXECUTE format('SET LOCAL ROLE %I', r);
                outcome := sec_error(c);
                RESET ROLE;
                INSERT INTO sec_writes VALUES (r, t, split_part(c, ' ', 1), outcome);
            END LOOP;
        END LOOP;
    END LOOP;
END $$;
SELECT tbl, cmd, string_agg(DISTINCT split_part(outcome, ':', 1), ',') AS sqlstates, count(*) AS tries
  FROM sec_writes GROUP BY tbl, cmd ORDER BY tbl, cmd;
SELECT DISTINCT outcome FROM sec_writes ORDER BY 1;
-- and in the catalog: no packaged role and not PUBLIC holds a write privilege
SELECT r.role, t.tbl FROM
    (VALUES ('apicore_saga_worker'), ('apicore_saga_admin'), ('public')) r(role),
    (VALUES ('apicore.saga_definition'), ('apicore.saga_definition_step'), ('apicore.saga'),
            ('apicore.saga_step'), ('apicore.saga_transition')) t(tbl)
 WHERE has_table_privilege(r.role, t.tbl, 'INSERT, UPDATE, DELETE, TRUNCATE')
    OR has_sequence_privilege(r.role, 'apicore.saga_transition_id_seq', 'USAGE, UPDATE');
-- a forged audit row through the sequence is refused too
SET ROLE saga_sec_worker;
SELECT sec_error($$SELECT nextval('apicore.saga_transition_id_seq')$$);
-- and neither the worker nor PUBLIC may call what an operator may
SELECT sec_error($$SELECT apicore.saga_resolve('00000000-0000-0000-0000-0000000005b1', 'completed', 'w', 'erase')$$);
SELECT sec_error($$SELECT apicore.saga_define('w', '[{"name": "a"}]')$$);
SET ROLE saga_sec_nobody;
SELECT sec_error($$SELECT apicore.saga_start('evil_plain', '{}')$$);
SELECT sec_error($$SELECT * FROM apicore.saga_claim('nobody')$$);
SELECT sec_error($$SELECT apicore.saga_get('00000000-0000-0000-0000-0000000005b1')$$);
SELECT sec_error($$SELECT * FROM apicore.sagas$$);
RESET ROLE;
-- the audit log is append-only for its owner (here a superuser) too
SELECT sec_error($$DELETE FROM apicore.saga_transition$$);
SELECT sec_error($$UPDATE apicore.saga_transition SET actor = 'nobody'$$);
SELECT sec_error($$TRUNCATE apicore.saga_transition$$);
SELECT sec_error($$SELECT apicore._saga_transition_append_only()$$);

-- ---------- a local step's function is fixed by the definition, and checked before every call ----------
SET ROLE saga_attacker;
SELECT apicore.saga_define('evil_morph', '[{"name": "m", "function": "evil.morph"}, {"name": "after"}]');
-- recreated with another signature: the stored OID names no function now
DROP FUNCTION evil.morph(jsonb);
CREATE FUNCTION evil.morph(payload jsonb, outputs jsonb, extra jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT payload';
SELECT apicore.saga_start('evil_morph', '{}', '00000000-0000-0000-0000-0000000005d1');
SELECT state, regexp_replace(last_error, '[0-9]{4,}', 'N') AS last_error
  FROM apicore.saga_step WHERE saga = '00000000-0000-0000-0000-0000000005d1';
SELECT state FROM apicore.saga WHERE id = '00000000-0000-0000-0000-0000000005d1';
-- the step row pointed (by a superuser) at a function of three arguments:
-- the run still calls the definition's function, as its definer
SELECT apicore.saga_define('evil_fixed', '[{"name": "loc", "function": "evil.fixed",
  "backoff": "1 microsecond", "max_backoff": "1 microsecond"}]');
SELECT apicore.saga_start('evil_fixed', '{}', '00000000-0000-0000-0000-0000000005e1');
RESET ROLE;
CREATE FUNCTION public.sec_three(a jsonb, b jsonb, c jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT a';
UPDATE apicore.saga_step SET function = 'public.sec_three(jsonb,jsonb,jsonb)'::regprocedure
 WHERE saga = '00000000-0000-0000-0000-0000000005e1';
SELECT apicore._saga_run_local_steps();
SELECT s.state, s.output, g.state AS saga_state FROM apicore.saga_step s JOIN apicore.saga g ON g.id = s.saga
 WHERE s.saga = '00000000-0000-0000-0000-0000000005e1';
-- (the failed first run's own record was rolled back with it)
SELECT who, count(*) AS runs FROM evil.log WHERE what = 'fixed' GROUP BY who;
-- the definition pointed (by a superuser) at functions of other shapes:
-- three arguments, another argument type, a set, an aggregate; a definer
-- that no longer exists; a superuser definer of the attacker's function
CREATE FUNCTION public.sec_set(a jsonb) RETURNS SETOF jsonb LANGUAGE sql AS 'SELECT a';
CREATE TABLE sec_bad (what text, fn text, definer text);
INSERT INTO sec_bad VALUES
    ('three arguments', 'public.sec_three(jsonb,jsonb,jsonb)', 'saga_attacker'),
    ('int argument', 'pg_catalog.abs(integer)', 'saga_attacker'),
    ('set returning', 'public.sec_set(jsonb)', 'saga_attacker'),
    ('aggregate', 'pg_catalog.jsonb_agg(anyelement)', 'saga_attacker'),
    ('dropped definer', 'evil.step(jsonb,jsonb)', '4000000000'),
    ('superuser definer', 'evil.step(jsonb,jsonb)', current_user);
GRANT SELECT ON sec_bad TO saga_attacker;
DO $$
DECLARE
    b record;
    i int := 0;
BEGIN
    FOR b IN SELECT * FROM sec_bad LOOP
        i := i + 1;
        INSERT INTO apicore.saga_definition VALUES ('tampered_' || i, 1, '[]', now(), b.definer::regrole);
        INSERT INTO apicore.saga_definition_step VALUES ('tampered_' || i, 1, 1, 'x', NULL,
            b.fn::regprocedure, NULL, '1 minute', 1, '1 second', '1 second');
    END LOOP;
END $$;
SET ROLE saga_attacker;
SELECT b.what, apicore.saga_start('tampered_' || n, '{}', ('00000000-0000-0000-0000-0000000006' || lpad(n::text, 2, '0'))::uuid) IS NOT NULL AS started
  FROM (SELECT row_number() OVER () AS n, * FROM sec_bad) b ORDER BY n;
SELECT s.definition, s.state, s.last_error FROM apicore.saga_step s
 WHERE s.definition LIKE 'tampered_%' ORDER BY s.definition;
RESET ROLE;

-- ---------- tampered rows: clean errors, never a crash ----------
SET ROLE saga_attacker;
SELECT apicore.saga_start('evil_plain', '{}', '00000000-0000-0000-0000-0000000007a1');
SELECT apicore.saga_start('evil_plain', '{}', '00000000-0000-0000-0000-0000000007a2');
SELECT apicore.saga_start('evil_plain', '{}', '00000000-0000-0000-0000-0000000007a3');
SELECT apicore.saga_start('evil_plain', '{}', '00000000-0000-0000-0000-0000000007a4');
SELECT apicore.saga_start('evil_plain', '{}', '00000000-0000-0000-0000-0000000007a5');
SELECT count(*) FROM apicore.saga_claim('evil-worker', ARRAY['evil_plain'], 5);
RESET ROLE;
UPDATE apicore.saga SET state = 'bogus' WHERE id = '00000000-0000-0000-0000-0000000007a1';
UPDATE apicore.saga SET position = -5, direction = 'sideways' WHERE id = '00000000-0000-0000-0000-0000000007a2';
UPDATE apicore.saga_step SET worker = NULL WHERE saga = '00000000-0000-0000-0000-0000000007a3';
-- a few hundred thousand years of backoff, written by hand
UPDATE apicore.saga_step SET backoff = '300000 years', max_backoff = '300000 years'
 WHERE saga = '00000000-0000-0000-0000-0000000007a4';
SET ROLE saga_attacker;
SELECT sec_error($$SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-0000000007a1', 'p1', 1)$$);
SELECT sec_error($$SELECT apicore.saga_step_failed('00000000-0000-0000-0000-0000000007a2', 'p1', 1, 'x')$$);
SELECT sec_error($$SELECT apicore.saga_cancel('00000000-0000-0000-0000-0000000007a2', 'x')$$);
SELECT sec_error($$SELECT apicore.saga_retry('00000000-0000-0000-0000-0000000007a1', 'op', 'x')$$);
-- a claimed run whose worker was erased is reported under '(unknown)'
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-0000000007a3', 'p1', 1);
SELECT sec_error($$SELECT apicore.saga_step_failed('00000000-0000-0000-0000-0000000007a4', 'p1', 1, 'x')$$);
RESET ROLE;
-- a NULL where apicore never writes one (the constraint dropped first)
ALTER TABLE apicore.saga_step ALTER COLUMN backoff DROP NOT NULL;
UPDATE apicore.saga_step SET backoff = NULL WHERE saga = '00000000-0000-0000-0000-0000000007a5';
SELECT sec_error($$SELECT apicore.saga_step_failed('00000000-0000-0000-0000-0000000007a5', 'p1', 1, 'x')$$);
UPDATE apicore.saga_step SET backoff = '1 hour' WHERE saga = '00000000-0000-0000-0000-0000000007a5';
ALTER TABLE apicore.saga_step ALTER COLUMN backoff SET NOT NULL;
-- maintenance skips the damaged sagas with a warning and handles the rest
UPDATE apicore.saga_step SET lease_expires_at = now() - interval '3 seconds'
 WHERE saga = '00000000-0000-0000-0000-0000000007a1';
UPDATE apicore.saga_step SET lease_expires_at = now() - interval '2 seconds'
 WHERE saga = '00000000-0000-0000-0000-0000000007a2';
UPDATE apicore.saga_step SET lease_expires_at = now() - interval '1 second'
 WHERE saga = '00000000-0000-0000-0000-0000000007a4';
SELECT apicore._saga_reclaim_leases();
SELECT id, state, position, direction FROM apicore.saga WHERE id::text LIKE '%7a_' ORDER BY id;
-- every read still works: no stored timestamp is out of range
SELECT count(*) > 0 AS sagas_readable FROM apicore.sagas;
SELECT apicore.saga_get('00000000-0000-0000-0000-0000000007a4')->'steps'->0->>'state' AS state;
SELECT count(*) AS out_of_range FROM apicore.saga_step
 WHERE run_after > '10000-01-01' OR lease_expires_at > '10000-01-01';
-- an operator ends a damaged saga
SET ROLE saga_attacker;
SELECT apicore.saga_resolve('00000000-0000-0000-0000-0000000007a1', 'failed', 'op', 'repaired');
SELECT apicore.saga_resolve('00000000-0000-0000-0000-0000000007a2', 'failed', 'op', 'repaired');
SELECT apicore.saga_resolve('00000000-0000-0000-0000-0000000007a4', 'failed', 'op', 'repaired');
RESET ROLE;

-- ---------- still nothing ran as another role ----------
SELECT who, count(*) > 0 AS ran FROM evil.log GROUP BY who ORDER BY who;

-- ---------- clean up ----------
UPDATE apicore.saga SET state = 'completed', finished_at = now() - interval '30 days';
SELECT apicore._saga_retention();
SELECT count(*) AS log_rows_left FROM apicore.saga_transition;
DELETE FROM apicore.saga_definition;
DROP TABLE sec_writes, sec_bad, sec_round;
DROP FUNCTION public.sec_three(jsonb, jsonb, jsonb), public.sec_set(jsonb), sec_error(text);
SET client_min_messages = warning;
DROP SCHEMA evil CASCADE;
RESET client_min_messages;
DROP ROLE saga_attacker, saga_sec_worker, saga_sec_admin, saga_sec_nobody;
