-- core_security (issue 13): idempotency keys, cursors, keyset pages and
-- maintenance under attack by an ordinary role.  The attacker plants
-- operators and functions in a schema of its own and in public, puts its
-- schema first in search_path and calls every entry point; each planted
-- object records current_user into a table before it answers correctly.
-- Then: the same calls by an application role and by a superuser, direct
-- writes to apicore's tables by every role, tampered rows, huge intervals
-- and bad OIDs.  The attacker must never run as another role, never gain an
-- attribute or a membership, and the server must never crash.

\set VERBOSITY default
SET search_path = public;

-- other suites expect the cursor keys as they left them
CREATE TEMP TABLE saved_cursor_keys AS SELECT * FROM apicore.cursor_key;
DELETE FROM apicore.cursor_key;

-- the SQLSTATE a statement raises, or 'ok'
CREATE FUNCTION core_sqlstate(stmt text) RETURNS text LANGUAGE plpgsql
  SET search_path = pg_catalog AS $$
BEGIN
  EXECUTE stmt;
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE;
END $$;
-- the SQLSTATE a statement raises when run as `who`
CREATE FUNCTION core_sqlstate_as(who name, stmt text) RETURNS text LANGUAGE plpgsql
  SET search_path = pg_catalog AS $$
DECLARE
  result text;
BEGIN
  EXECUTE pg_catalog.format('SET ROLE %I', who);
  result := public.core_sqlstate(stmt);
  RESET ROLE;
  RETURN result;
END $$;

CREATE ROLE core_attacker;
CREATE ROLE core_app;
CREATE ROLE core_monitor IN ROLE pg_monitor;
-- a legacy database where anyone may create in public
GRANT CREATE ON SCHEMA public TO core_attacker;
CREATE SCHEMA core_evil AUTHORIZATION core_attacker;
CREATE SCHEMA core_app AUTHORIZATION core_app;

-- ---------- the attacker's traps ----------
SET ROLE core_attacker;
CREATE TABLE core_evil.seen (who name, session_who name, what text);
GRANT USAGE ON SCHEMA core_evil TO PUBLIC;
GRANT INSERT, SELECT ON core_evil.seen TO PUBLIC;
CREATE FUNCTION core_evil.note(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO core_evil.seen VALUES (current_user, session_user, what);
END $$;

-- operators for every argument pair apicore's SQL compares or computes, in
-- core_evil and in public; each answers as pg_catalog's would
DO $do$
DECLARE
  o record;
  nsp text;
  result_type text;
  n int := 0;
BEGIN
  FOR o IN SELECT * FROM (VALUES
      ('=', 'text', 'text'), ('<>', 'text', 'text'), ('<', 'text', 'text'), ('>', 'text', 'text'),
      ('=', 'regclass', 'oid'), ('=', 'oid', 'regclass'), ('=', 'oid', 'oid'), ('=', 'regproc', 'oid'),
      ('=', 'name', 'name'), ('=', 'bytea', 'bytea'), ('=', 'uuid', 'uuid'),
      ('=', 'integer', 'integer'), ('<', 'integer', 'integer'), ('>', 'integer', 'integer'),
      ('+', 'integer', 'integer'), ('=', 'bigint', 'bigint'), ('<', 'bigint', 'bigint'),
      ('>', 'bigint', 'bigint'), ('=', 'integer', 'bigint'), ('=', 'bigint', 'integer'),
      ('>', 'bigint', 'integer'), ('=', 'timestamptz', 'timestamptz'),
      ('<', 'timestamptz', 'timestamptz'), ('<=', 'timestamptz', 'timestamptz'),
      ('>', 'timestamptz', 'timestamptz'), ('>=', 'timestamptz', 'timestamptz'),
      ('+', 'timestamptz', 'interval'), ('=', 'interval', 'interval'), ('>', 'interval', 'interval'),
      ('/', 'numeric', 'double precision'), ('*', 'integer', 'interval'),
      ('*', 'double precision', 'double precision')) v(op, l, r)
  LOOP
    EXECUTE pg_catalog.format('SELECT pg_catalog.pg_typeof(NULL::%s OPERATOR(pg_catalog.%s) NULL::%s)::text',
                              o.l, o.op, o.r) INTO result_type;
    FOREACH nsp IN ARRAY ARRAY['core_evil', 'public'] LOOP
      n := n + 1;
      EXECUTE pg_catalog.format($f$CREATE FUNCTION %I.trap_%s(a %s, b %s) RETURNS %s LANGUAGE plpgsql AS $b$
          BEGIN PERFORM core_evil.note(%L); RETURN a OPERATOR(pg_catalog.%s) b; END $b$$f$,
          nsp, n, o.l, o.r, result_type, pg_catalog.format('%s %s %s', o.l, o.op, o.r), o.op);
      EXECUTE pg_catalog.format('CREATE OPERATOR %I.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = %I.trap_%s)',
                                nsp, o.op, o.l, o.r, nsp, n);
    END LOOP;
  END LOOP;
END $do$;

-- functions named like those apicore's SQL and PL/pgSQL call
DO $do$
DECLARE
  f record;
  nsp text;
BEGIN
  FOR f IN SELECT * FROM (VALUES
      ('now', '', 'timestamptz', 'pg_catalog.now()'),
      ('to_timestamp', 'x double precision', 'timestamptz', 'pg_catalog.to_timestamp(x)'),
      ('floor', 'x double precision', 'double precision', 'pg_catalog.floor(x)'),
      ('pg_relation_size', 'r regclass', 'bigint', 'pg_catalog.pg_relation_size(r)'),
      ('set_config', 'a text, b text, c boolean', 'text', 'pg_catalog.set_config(a, b, c)'),
      ('to_char', 'a timestamp, b text', 'text', 'pg_catalog.to_char(a, b)'),
      ('regexp_match', 'a text, b text', 'text[]', 'pg_catalog.regexp_match(a, b)'),
      ('pg_get_expr', 'a pg_node_tree, b oid', 'text', 'pg_catalog.pg_get_expr(a, b)'),
      ('octet_length', 'a bytea', 'integer', 'pg_catalog.octet_length(a)'),
      ('to_jsonb', 'a anyelement', 'jsonb', 'pg_catalog.to_jsonb(a)')) v(name, args, result, body)
  LOOP
    FOREACH nsp IN ARRAY ARRAY['core_evil', 'public'] LOOP
      EXECUTE pg_catalog.format($f$CREATE FUNCTION %I.%I(%s) RETURNS %s LANGUAGE plpgsql AS $b$
          BEGIN PERFORM core_evil.note(%L); RETURN %s; END $b$$f$,
          nsp, f.name, f.args, f.result, f.name || '()', f.body);
    END LOOP;
  END LOOP;
END $do$;
CREATE FUNCTION core_evil.max_step(s integer, v integer) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN PERFORM core_evil.note('max()'); RETURN pg_catalog.int4larger(s, v); END $$;
CREATE AGGREGATE core_evil.max(integer) (SFUNC = core_evil.max_step, STYPE = integer);
CREATE AGGREGATE public.max(integer) (SFUNC = core_evil.max_step, STYPE = integer);
-- a task function of its own, for the maintenance section below
CREATE FUNCTION core_evil.attacker_task() RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM core_evil.note('attacker task'); RETURN 'attacker task ran'; END $$;
SELECT count(*) AS traps FROM pg_operator WHERE oprnamespace = 'core_evil'::regnamespace;

-- ---------- every entry point, called by the attacker with its schema first ----------
SET search_path = core_evil, pg_catalog, public;
-- the traps work: the attacker's own unqualified SQL finds them
SELECT 'x'::text = 'x'::text AS text_eq, 'pg_class'::regclass = 1259::oid AS regclass_eq_oid,
       now() IS NOT NULL AS now;
CREATE TABLE core_evil.pages (id bigint PRIMARY KEY, name text NOT NULL, at timestamptz NOT NULL);
INSERT INTO core_evil.pages SELECT i, 'n' || i, '2026-01-01 00:00+00' FROM generate_series(1, 5) i;

-- across transactions: begin commits the key, checkpoint/complete/release update it
SELECT outcome, attempt FROM apicore.idempotency_begin('core', 'k1', '{"a": 1}');
SELECT apicore.idempotency_checkpoint('core', 'k1', 1, 'charged');
SELECT apicore.idempotency_complete('core', 'k1', 1, 201, 'created', '{"X": "y"}');
SELECT outcome, response_code, response_body FROM apicore.idempotency_begin('core', 'k1', '{"a": 1}');
SELECT outcome FROM apicore.idempotency_begin('core', 'k1', '{"a": 2}');
SELECT outcome, attempt FROM apicore.idempotency_begin('core', 'k2');
SELECT apicore.idempotency_release('core', 'k2', 1);
SELECT outcome, attempt FROM apicore.idempotency_begin('core', 'k2');
-- a lease of a microsecond has run out by the next statement: takeover
SELECT outcome, attempt FROM apicore.idempotency_begin('core', 'k3', lease => '1 microsecond');
SELECT outcome, attempt FROM apicore.idempotency_begin('core', 'k3');
SELECT state, attempt FROM apicore.idempotency_get('core', 'k3');
-- in one transaction
BEGIN;
SELECT outcome FROM apicore.idempotency_begin('core', 'k4');
SELECT apicore.idempotency_checkpoint('core', 'k4', 1, 'half');
SELECT apicore.idempotency_complete('core', 'k4', 1, 200, 'one transaction');
COMMIT;
-- the stats view is for monitoring roles
SELECT count(*) FROM apicore.idempotency_stats;
-- cursors: the first encode creates the key, as the key table's owner
SELECT apicore.cursor_encode(ROW(1, 'x'::text), 'ctx') AS c \gset
SELECT * FROM apicore.cursor_decode(:'c', 'ctx') AS c(i int, t text);
SELECT apicore.cursor_rotate_key();
-- keyset pages of its own table, with a filter and a cursor
SELECT p->'data'->0->>'id' AS first_id, p->>'has_more' AS has_more, p->>'next_cursor' AS nc
  FROM apicore.keyset_page('core_evil.pages', 'name DESC', NULL, 2, '{"id": [1, 2, 3, 4]}') p \gset
SELECT :'first_id' AS first_id, :'has_more' AS has_more;
SELECT jsonb_array_length(p->'data') AS rows
  FROM apicore.keyset_page('core_evil.pages', 'name DESC', :'nc', 2, '{"id": [1, 2, 3, 4]}') p;
-- keyset_page reads nothing the caller could not read itself
SELECT apicore.keyset_page('apicore.cursor_key', 'key_id');
SELECT apicore.keyset_page('apicore.idempotency_key', 'scope, key');
SELECT apicore.keyset_page('apicore.maintenance_task', 'task');
-- maintenance is not the attacker's
SELECT * FROM apicore.run_maintenance();
SELECT apicore._idempotency_maintain();
SELECT apicore._idempotency_create_partition('2001-01-01', '2001-01-02');
RESET ROLE;
SET search_path = public;
SELECT count(*) FILTER (WHERE who <> 'core_attacker') AS ran_as_another_role,
       count(*) FILTER (WHERE who = 'core_attacker') > 0 AS traps_work
  FROM core_evil.seen;

-- ---------- the same calls by an application role (EXECUTE only) ----------
-- its search_path has public, where the attacker's traps are
GRANT USAGE ON SCHEMA apicore TO core_app;
SET ROLE core_app;
SET search_path = core_app, public;
CREATE TABLE core_app.orders (id bigint PRIMARY KEY, status text NOT NULL, at timestamptz NOT NULL);
INSERT INTO core_app.orders SELECT i, 'paid', '2026-01-01 00:00+00' FROM generate_series(1, 5) i;
SELECT outcome, attempt FROM apicore.idempotency_begin('app', 'k1', '{"a": 1}');
SELECT apicore.idempotency_checkpoint('app', 'k1', 1, 'charged');
SELECT apicore.idempotency_complete('app', 'k1', 1, 201, 'created');
SELECT outcome, response_body FROM apicore.idempotency_begin('app', 'k1', '{"a": 1}');
SELECT outcome FROM apicore.idempotency_begin('app', 'k2', lease => '1 microsecond');
SELECT outcome, attempt FROM apicore.idempotency_begin('app', 'k2');
SELECT apicore.idempotency_release('app', 'k2', 2);
SELECT state FROM apicore.idempotency_get('app', 'k2');
SELECT * FROM apicore.cursor_decode(apicore.cursor_encode(ROW(7::bigint), 'app'), 'app') AS c(i bigint);
SELECT p->>'next_cursor' AS nc FROM apicore.keyset_page('orders', 'at, id', NULL, 2, '{"status": "paid"}') p \gset
SELECT jsonb_array_length(p->'data') AS rows FROM apicore.keyset_page('orders', 'at, id', :'nc', 2, '{"status": "paid"}') p;
RESET ROLE;
SET search_path = public;
SELECT count(*) FILTER (WHERE who <> 'core_attacker') AS ran_as_another_role FROM core_evil.seen;

-- ---------- a superuser with the attacker's schema first ----------
SET search_path = core_evil, pg_catalog, public;
SELECT outcome FROM apicore.idempotency_begin('su', 'k1', '{"a": 1}');
SELECT apicore.idempotency_checkpoint('su', 'k1', 1, 'p');
SELECT apicore.idempotency_complete('su', 'k1', 1, 200, 'ok');
SELECT outcome FROM apicore.idempotency_begin('su', 'k2', lease => '1 microsecond');
SELECT outcome, attempt FROM apicore.idempotency_begin('su', 'k2');
SELECT apicore.idempotency_release('su', 'k2', 2);
SELECT proceed IS NOT NULL AS stats FROM apicore.idempotency_stats;
SELECT * FROM apicore.cursor_decode(apicore.cursor_encode(ROW(1::bigint), 'su'), 'su') AS c(i bigint);
SELECT apicore.cursor_rotate_key() IS NOT NULL AS rotated;
SELECT jsonb_array_length(p->'data') AS rows
  FROM apicore.keyset_page('core_evil.pages', 'at DESC, name', NULL, 3, '{"id": [1, 2, 3]}') p;
-- the attacker's own task: it runs as the attacker, never as the superuser
-- (the report is filtered only once the attacker's schema is off the path)
INSERT INTO apicore.maintenance_task VALUES ('core_attacker_task', 'core_evil.attacker_task', 1);
CREATE TEMP TABLE core_run AS SELECT * FROM apicore.run_maintenance();
SET search_path = public;
SELECT task, detail FROM core_run WHERE task = 'core_attacker_task';
-- every other task still works as its function's owner, security-restricted
SELECT count(*) > 1 AS tasks, count(*) FILTER (WHERE detail LIKE 'failed:%') AS failed FROM core_run;
SELECT who, session_who = session_user AS in_this_session FROM core_evil.seen WHERE what = 'attacker task';
SELECT count(*) FILTER (WHERE who <> 'core_attacker') AS ran_as_another_role FROM core_evil.seen;
DELETE FROM apicore.maintenance_task WHERE task = 'core_attacker_task';

-- ---------- stats for monitoring roles, without table rights ----------
SET ROLE core_monitor;
SELECT rows >= 0 AS readable FROM apicore.idempotency_stats;
SELECT count(*) >= 0 AS readable FROM apicore.maintenance_workers;
SELECT count(*) FROM apicore.idempotency_key;
RESET ROLE;
SET ROLE core_app;
SELECT count(*) FROM apicore.maintenance_workers;
RESET ROLE;

-- ---------- direct writes to apicore's tables: refused for every role ----------
-- (every packaged role apicore creates is tried: their number grows with apicore)
SELECT count(DISTINCT r.rolname) >= 6 AS roles_tried,
       count(*) = 15 * count(DISTINCT r.rolname) AS every_statement_per_role,
       count(*) FILTER (WHERE core_sqlstate_as(r.rolname, s.stmt) <> '42501') AS not_refused
  FROM (SELECT rolname FROM pg_roles
         WHERE rolname IN ('core_attacker', 'core_app', 'core_monitor')
            OR (rolname LIKE 'apicore\_%' AND NOT rolsuper)) r,
       (VALUES ('INSERT INTO apicore.idempotency_key (scope, key, state, attempt, created_at, updated_at, expires_at) VALUES (''x'', ''x'', ''completed'', 1, now(), now(), now() + interval ''1 hour'')'),
               ('UPDATE apicore.idempotency_key SET response_body = ''forged''') ,
               ('DELETE FROM apicore.idempotency_key'),
               ('TRUNCATE apicore.idempotency_key'),
               ('INSERT INTO apicore.idempotency_key_default (scope, key, state, attempt, created_at, updated_at, expires_at) VALUES (''x'', ''x'', ''completed'', 1, now(), now(), now() + interval ''1 hour'')'),
               ('UPDATE apicore.idempotency_key_default SET attempt = 1'),
               ('INSERT INTO apicore.cursor_key VALUES (1000, ''\x' || repeat('00', 32) || ''')'),
               ('UPDATE apicore.cursor_key SET key = key'),
               ('DELETE FROM apicore.cursor_key'),
               ('TRUNCATE apicore.cursor_key'),
               ('SELECT key FROM apicore.cursor_key'),
               ('INSERT INTO apicore.maintenance_task VALUES (''forged'', ''pg_catalog.version'', 1)'),
               ('UPDATE apicore.maintenance_task SET function = ''pg_catalog.version'''),
               ('DELETE FROM apicore.maintenance_task'),
               ('TRUNCATE apicore.maintenance_task')) s(stmt);

-- ---------- tampered task rows: a clean failure each, the other tasks run ----------
CREATE FUNCTION core_null_task() RETURNS text LANGUAGE sql AS $$ SELECT NULL::text $$;
CREATE FUNCTION core_setof_task() RETURNS SETOF text LANGUAGE sql AS $$ SELECT 'x' $$;
CREATE PROCEDURE core_procedure_task() LANGUAGE sql AS $$ SELECT 1 $$;
CREATE FUNCTION core_dropped_task() RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$;
INSERT INTO apicore.maintenance_task VALUES
  ('core_t_args', 'pg_catalog.md5(text)'::regprocedure::oid::regproc, 1),
  ('core_t_dropped', 'core_dropped_task', 1),
  ('core_t_null_result', 'core_null_task', 1),
  ('core_t_oid', '4294967295'::regproc, 1),
  ('core_t_procedure', 'core_procedure_task', 1),
  ('core_t_result_type', 'pg_catalog.now', 1),
  ('core_t_setof', 'core_setof_task', 1);
DROP FUNCTION core_dropped_task();
ALTER TABLE apicore.maintenance_task ALTER COLUMN function DROP NOT NULL;
INSERT INTO apicore.maintenance_task VALUES ('core_t_no_function', NULL, 1);
-- (the WARNINGs repeat the details, with OIDs)
SET client_min_messages = error;
SELECT task, regexp_replace(detail, 'function [0-9]+,', 'function N,') AS detail
  FROM apicore.run_maintenance() WHERE task LIKE 'core\_t\_%' ORDER BY task;
RESET client_min_messages;
DELETE FROM apicore.maintenance_task WHERE task LIKE 'core\_t\_%';
ALTER TABLE apicore.maintenance_task ALTER COLUMN function SET NOT NULL;
DROP FUNCTION core_null_task(), core_setof_task();
DROP PROCEDURE core_procedure_task();

-- ---------- tampered key rows: clean errors, never a crash ----------
-- (in a transaction rolled back at the end, so that the constraints dropped
-- to tamper come back as they were; psql puts each statement in a savepoint)
\set ON_ERROR_ROLLBACK on
BEGIN;
ALTER TABLE apicore.idempotency_key DROP CONSTRAINT idempotency_key_state_check;
INSERT INTO apicore.idempotency_key (scope, key, state, attempt, fingerprint, lease, lease_expires_at,
                                     response_code, created_at, updated_at, expires_at) VALUES
  ('core_tamper', 'null-lease', 'running', 1, NULL, NULL, NULL, NULL, now(), now(), now() + interval '1 hour'),
  ('core_tamper', 'bad-state', 'hacked', 1, NULL, '1 minute', now(), NULL, now(), now(), now() + interval '1 hour'),
  ('core_tamper', 'short-fingerprint', 'completed', 1, '\x0102', '1 minute', now(), 200, now(), now(), now() + interval '1 hour'),
  ('core_tamper', 'last-attempt', 'running', 2147483647, NULL, '1 minute', now() - interval '1 hour', NULL, now(), now(), now() + interval '1 hour'),
  ('core_tamper', 'zero-attempt', 'running', 0, NULL, '1 minute', now() - interval '1 hour', NULL, now(), now(), now() + interval '1 hour'),
  ('core_tamper', 'no-response', 'completed', 1, NULL, '1 minute', now(), NULL, now(), now(), now() + interval '1 hour'),
  ('core_tamper', 'huge-lease', 'running', 1, NULL, '170000000 years', now() + interval '1 hour', NULL, now(), now(), now() + interval '1 hour');
INSERT INTO apicore.idempotency_key
  SELECT 'core_tamper', 'twice', 'running', 1, NULL, NULL, '1 hour', now() + interval '1 hour', NULL, NULL, NULL,
         now(), now(), now() + interval '1 hour'
    FROM generate_series(1, 2);
SELECT k AS key, core_sqlstate(format('SELECT * FROM apicore.idempotency_begin(%L, %L)', 'core_tamper', k)) AS begin,
       core_sqlstate(format('SELECT * FROM apicore.idempotency_get(%L, %L)', 'core_tamper', k)) AS get,
       core_sqlstate(format('SELECT apicore.idempotency_checkpoint(%L, %L, 1, %L)', 'core_tamper', k, 'p')) AS checkpoint
  FROM (VALUES ('null-lease'), ('bad-state'), ('short-fingerprint'), ('last-attempt'), ('zero-attempt'),
               ('no-response'), ('huge-lease'), ('twice')) v(k);
-- what the clean errors say
SELECT * FROM apicore.idempotency_begin('core_tamper', 'null-lease');
SELECT * FROM apicore.idempotency_get('core_tamper', 'bad-state');
SELECT * FROM apicore.idempotency_begin('core_tamper', 'short-fingerprint');
SELECT * FROM apicore.idempotency_begin('core_tamper', 'last-attempt');
SELECT apicore.idempotency_checkpoint('core_tamper', 'twice', 1, 'p');
SELECT apicore.idempotency_checkpoint('core_tamper', 'huge-lease', 1, 'p');

-- tampered cursor keys
ALTER TABLE apicore.cursor_key DROP CONSTRAINT cursor_key_key_check,
  DROP CONSTRAINT cursor_key_key_id_check, ALTER COLUMN key DROP NOT NULL;
INSERT INTO apicore.cursor_key VALUES (1000, '\x0102');
SELECT apicore.cursor_encode(ROW(1));
DELETE FROM apicore.cursor_key WHERE key_id = 1000;
INSERT INTO apicore.cursor_key VALUES (1000, NULL);
SELECT apicore.cursor_encode(ROW(1));
DELETE FROM apicore.cursor_key WHERE key_id = 1000;
INSERT INTO apicore.cursor_key VALUES (-5, decode(repeat('00', 32), 'hex'));
SELECT apicore.cursor_encode(ROW(1));
DELETE FROM apicore.cursor_key WHERE key_id = -5;
SELECT apicore.cursor_encode(ROW(1)) IS NOT NULL AS encodes_again;
ROLLBACK;
\set ON_ERROR_ROLLBACK off
SELECT count(*) AS tampered_rows_left FROM apicore.idempotency_key WHERE scope = 'core_tamper';
SELECT count(*) AS constraints_back FROM pg_constraint
 WHERE conrelid IN ('apicore.idempotency_key'::regclass, 'apicore.cursor_key'::regclass) AND contype = 'c';

-- the key trigger's function outside its trigger, or on another table
CREATE TABLE core_other (x int);
CREATE TRIGGER core_other_changed AFTER INSERT ON core_other
  FOR EACH STATEMENT EXECUTE FUNCTION apicore._cursor_key_changed();
INSERT INTO core_other VALUES (1);
DROP TABLE core_other;
SELECT apicore._cursor_key_changed();

-- ---------- huge intervals, bad OIDs ----------
SELECT apicore.cursor_encode(ROW(1), 'x', '170000000 years');
SELECT * FROM apicore.idempotency_begin('core', 'huge', ttl => '170000000 years');
SELECT * FROM apicore.idempotency_begin('core', 'huge', lease => '170000000 years');
SELECT apicore.keyset_page(0::oid::regclass, 'id');
SELECT apicore.keyset_page(4294967295::oid::regclass, 'id');

-- ---------- the attacker gained nothing ----------
SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolinherit
  FROM pg_roles WHERE rolname = 'core_attacker';
SELECT count(*) AS memberships FROM pg_auth_members WHERE member = 'core_attacker'::regrole;
SELECT count(*) FILTER (WHERE who <> 'core_attacker') AS ran_as_another_role FROM core_evil.seen;

-- and the traps would have caught it: an ordinary role's own cross-type
-- comparison (no exact match in pg_catalog) lands in public's trap
SET ROLE core_app;
SELECT 'pg_class'::regclass = 1259::oid AS app_regclass_eq_oid;
RESET ROLE;
SELECT who, what FROM core_evil.seen WHERE who <> 'core_attacker';

-- clean up
DELETE FROM apicore.idempotency_key WHERE scope IN ('core', 'app', 'su');
DELETE FROM apicore.cursor_key;
INSERT INTO apicore.cursor_key SELECT * FROM saved_cursor_keys;
DROP TABLE saved_cursor_keys, core_run;
DROP OWNED BY core_attacker, core_app, core_monitor;
DROP ROLE core_attacker, core_app, core_monitor;
DROP FUNCTION core_sqlstate_as(name, text), core_sqlstate(text);
