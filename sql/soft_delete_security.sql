-- Attacks on soft delete and tenant isolation (issue 13).  An ordinary role
-- that owns a schema puts operators and functions of its own first in
-- search_path, each recording who ran it, and calls every entry point that
-- runs as another role; the worker's task runs with such operators in a
-- writable public schema.  Afterwards no one but the attacker ran them.
\set VERBOSITY default
-- err(sql): the SQLSTATE, message and hint a statement raises
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $f$ DECLARE h text; BEGIN EXECUTE q; RETURN 'no error'; EXCEPTION WHEN OTHERS THEN GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT; RETURN SQLSTATE || ': ' || SQLERRM || coalesce(E'\n  HINT: ' || nullif(h, ''), ''); END $f$;
-- base64url <-> bytea, to take tokens apart
CREATE FUNCTION pg_temp.unb64(t text) RETURNS bytea LANGUAGE sql AS $f$ SELECT decode(translate(t, '-_', '+/') || repeat('=', (4 - length(t) % 4) % 4), 'base64') $f$;
CREATE FUNCTION pg_temp.b64(b bytea) RETURNS text LANGUAGE sql AS $f$ SELECT rtrim(translate(replace(encode(b, 'base64'), E'\n', ''), '+/', '-_'), '=') $f$;

CREATE ROLE sds_attacker;
CREATE ROLE sds_victim;
CREATE ROLE sds_app;
CREATE ROLE sds_issuer IN ROLE apicore_tenant_issuer;
CREATE ROLE sds_tenant_a;
CREATE ROLE sds_tenant_b;
-- the attacker works support: it may restore and purge anyone's rows, and
-- it runs the authentication service: it mints tenant tokens and maps roles
GRANT apicore_soft_delete_admin, apicore_tenant_issuer TO sds_attacker;
-- a database whose public schema is writable by everyone, as before PostgreSQL 15
GRANT CREATE ON SCHEMA public TO sds_attacker;
CREATE SCHEMA sds_att AUTHORIZATION sds_attacker;
CREATE SCHEMA sds_vic AUTHORIZATION sds_victim;
GRANT USAGE ON SCHEMA sds_vic TO sds_attacker, sds_app, sds_tenant_a, sds_tenant_b;
-- what the roles were before the attacks
CREATE TEMP TABLE roles_before AS
SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls
  FROM pg_roles WHERE rolname LIKE 'sds\_%';
CREATE TEMP TABLE members_before AS
SELECT roleid::regrole::text AS role, member::regrole::text AS member FROM pg_auth_members
 WHERE member::regrole::text LIKE 'sds\_%';

-- ---------- the victim: soft-delete tables with triggers of its own ----------
SET ROLE sds_victim;
CREATE TABLE sds_vic.trigger_log (tbl text, op text, who name);
GRANT INSERT ON sds_vic.trigger_log TO PUBLIC;
CREATE FUNCTION sds_vic.note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sds_vic.trigger_log VALUES (TG_TABLE_NAME, TG_OP, current_user);
    RETURN coalesce(NEW, OLD);
END $$;
CREATE TABLE sds_vic.parent (id int PRIMARY KEY, name text UNIQUE);
CREATE TABLE sds_vic.child (id int PRIMARY KEY,
                            parent_id int REFERENCES sds_vic.parent ON DELETE CASCADE);
INSERT INTO sds_vic.parent VALUES (1, 'one'), (2, 'two'), (3, 'three'), (4, 'four');
INSERT INTO sds_vic.child VALUES (10, 1), (20, 2), (30, 3), (40, 4);
SELECT apicore.soft_delete_enable('sds_vic.parent', archive_after => '1 hour', purge_after => '1 day');
SELECT apicore.soft_delete_enable('sds_vic.child');
CREATE TRIGGER note AFTER INSERT OR UPDATE OR DELETE ON sds_vic.parent FOR EACH ROW EXECUTE FUNCTION sds_vic.note();
CREATE TRIGGER note AFTER INSERT OR UPDATE OR DELETE ON sds_vic.child FOR EACH ROW EXECUTE FUNCTION sds_vic.note();
CREATE TRIGGER note AFTER INSERT OR UPDATE OR DELETE ON sds_vic.parent_archive FOR EACH ROW EXECUTE FUNCTION sds_vic.note();
GRANT SELECT, DELETE ON sds_vic.parent TO sds_attacker;
RESET ROLE;

-- ---------- the worker runs user triggers as the table's owner ----------
-- (backdating stands in for time passing; the superuser runs maintenance as the worker does)
ALTER TABLE sds_vic.parent DISABLE TRIGGER note;
UPDATE sds_vic.parent SET deleted_at = now() - interval '2 days' WHERE id = 4;
UPDATE sds_vic.parent SET deleted_at = now() - interval '2 hours' WHERE id = 3;
ALTER TABLE sds_vic.parent ENABLE TRIGGER note;
SELECT detail FROM apicore.run_maintenance() WHERE task = 'soft_delete_archive_purge';
SELECT tbl, op, who, count(*) FROM sds_vic.trigger_log GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;
SELECT id FROM sds_vic.parent_archive;
TRUNCATE sds_vic.trigger_log;

-- ---------- the attacker's operators and functions ----------
SET ROLE sds_attacker;
CREATE TABLE sds_att.log (who name, sess name, what text);
GRANT USAGE ON SCHEMA sds_att TO PUBLIC;
GRANT INSERT ON sds_att.log TO PUBLIC;
CREATE FUNCTION sds_att.rec(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sds_att.log VALUES (current_user, session_user, what);
END $$;
GRANT EXECUTE ON FUNCTION sds_att.rec(text) TO PUBLIC;
-- one recording operator per (operator, left, right), in sds_att and in public;
-- each returns what the real one would
DO $$
DECLARE
    o record;
    nsp text;
    n int := 0;
BEGIN
    FOREACH nsp IN ARRAY ARRAY['sds_att', 'public'] LOOP
        FOR o IN SELECT * FROM (VALUES
            ('=', 'oid', 'oid', 'oid', 'bool'), ('=', 'regclass', 'oid', 'oid', 'bool'),
            ('=', 'oid', 'regclass', 'oid', 'bool'), ('=', 'regclass', 'regclass', 'oid', 'bool'),
            ('=', 'regrole', 'oid', 'oid', 'bool'), ('=', 'name', 'name', 'name', 'bool'),
            ('=', 'name', 'text', 'text', 'bool'), ('=', 'text', 'text', 'text', 'bool'),
            ('=', 'int4', 'int4', 'int4', 'bool'), ('=', 'int2', 'int2', 'int2', 'bool'),
            ('=', 'int8', 'int8', 'int8', 'bool'), ('=', 'uuid', 'uuid', 'uuid', 'bool'),
            ('=', '"char"', '"char"', '"char"', 'bool'), ('=', 'tid', 'tid', 'tid', 'bool'),
            ('=', 'timestamptz', 'timestamptz', 'timestamptz', 'bool'), ('=', 'bool', 'bool', 'bool', 'bool'),
            ('<>', 'oid', 'oid', 'oid', 'bool'), ('<>', 'bool', 'bool', 'bool', 'bool'),
            ('<>', '"char"', '"char"', '"char"', 'bool'), ('<>', 'text', 'text', 'text', 'bool'),
            ('<', 'timestamptz', 'timestamptz', 'timestamptz', 'bool'), ('<', 'int4', 'int4', 'int4', 'bool'),
            ('>', 'int2', 'int4', 'int4', 'bool'), ('>', 'int4', 'int4', 'int4', 'bool'))
            AS v(op, l, r, real, ret)
        LOOP
            n := n + 1;
            EXECUTE format('CREATE FUNCTION %I.op%s(a %s, b %s) RETURNS %s LANGUAGE plpgsql AS '
                           '$f$ BEGIN PERFORM sds_att.rec(%L); RETURN a::%s OPERATOR(pg_catalog.%s) b::%s; END $f$',
                           nsp, n, o.l, o.r, o.ret, o.l || ' ' || o.op || ' ' || o.r, o.real, o.op, o.real);
            EXECUTE format('CREATE OPERATOR %I.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = %I.op%s)',
                           nsp, o.op, o.l, o.r, nsp, n);
        END LOOP;
        EXECUTE format('CREATE FUNCTION %I.op_jsonb_text(a jsonb, b text) RETURNS text LANGUAGE plpgsql AS '
                       '$f$ BEGIN PERFORM sds_att.rec(''jsonb ->> text''); RETURN a OPERATOR(pg_catalog.->>) b; END $f$', nsp);
        EXECUTE format('CREATE OPERATOR %I.->> (LEFTARG = jsonb, RIGHTARG = text, FUNCTION = %I.op_jsonb_text)', nsp, nsp);
        EXECUTE format('CREATE FUNCTION %I.op_cat(a text, b text) RETURNS text LANGUAGE plpgsql AS '
                       '$f$ BEGIN PERFORM sds_att.rec(''text || text''); RETURN a OPERATOR(pg_catalog.||) b; END $f$', nsp);
        EXECUTE format('CREATE OPERATOR %I.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = %I.op_cat)', nsp, nsp);
        EXECUTE format('CREATE FUNCTION %I.op_plus(a int4, b int4) RETURNS int4 LANGUAGE plpgsql AS '
                       '$f$ BEGIN PERFORM sds_att.rec(''int4 + int4''); RETURN a OPERATOR(pg_catalog.+) b; END $f$', nsp);
        EXECUTE format('CREATE OPERATOR %I.+ (LEFTARG = int4, RIGHTARG = int4, FUNCTION = %I.op_plus)', nsp, nsp);
        -- functions with the names apicore calls
        EXECUTE format('CREATE FUNCTION %I.now() RETURNS timestamptz LANGUAGE plpgsql AS '
                       '$f$ BEGIN PERFORM sds_att.rec(''now()''); RETURN pg_catalog.now(); END $f$', nsp);
        EXECUTE format('CREATE FUNCTION %I.current_setting(s text, m boolean) RETURNS text LANGUAGE plpgsql AS '
                       '$f$ BEGIN PERFORM sds_att.rec(''current_setting''); RETURN pg_catalog.current_setting(s, m); END $f$', nsp);
        EXECUTE format('CREATE FUNCTION %I.format(f text, a text) RETURNS text LANGUAGE plpgsql AS '
                       '$f$ BEGIN PERFORM sds_att.rec(''format''); RETURN pg_catalog.format(f, a); END $f$', nsp);
        EXECUTE format('CREATE FUNCTION %I.pg_get_indexdef(i oid) RETURNS text LANGUAGE plpgsql AS '
                       '$f$ BEGIN PERFORM sds_att.rec(''pg_get_indexdef''); RETURN pg_catalog.pg_get_indexdef(i); END $f$', nsp);
        EXECUTE format('CREATE FUNCTION %I.format_type(t oid, m int4) RETURNS text LANGUAGE plpgsql AS '
                       '$f$ BEGIN PERFORM sds_att.rec(''format_type''); RETURN pg_catalog.format_type(t, m); END $f$', nsp);
        EXECUTE format('CREATE FUNCTION %I.jsonb_array_elements(j jsonb) RETURNS SETOF jsonb LANGUAGE plpgsql AS '
                       '$f$ BEGIN PERFORM sds_att.rec(''jsonb_array_elements''); RETURN QUERY SELECT pg_catalog.jsonb_array_elements(j); END $f$', nsp);
    END LOOP;
END $$;
SET search_path = sds_att, pg_catalog, public;
-- the recorders work: the attacker's own comparison is hijacked
SELECT 1::oid = 1::oid AS hijacked_eq, (SELECT count(*) FROM sds_att.log) > 0 AS recorded;

-- ---------- every entry point, with the hijack in place ----------
-- its own table: enable, configure, tenant isolation, delete, restore, purge, disable
CREATE TABLE sds_att.mine (id int PRIMARY KEY, email text UNIQUE, tenant_id int);
INSERT INTO sds_att.mine VALUES (1, 'a', 1), (2, 'b', 1), (3, 'c', 2);
SELECT apicore.soft_delete_enable('sds_att.mine', archive_after => '1 hour', purge_after => '1 day');
SELECT apicore.soft_delete_configure('sds_att.mine', archive_after => '2 hours', purge_after => '2 days');
SELECT apicore.tenant_isolation_enable('sds_att.mine');
SET app.current_tenant = '1';
DELETE FROM sds_att.mine WHERE id = 1;
SELECT apicore.soft_delete_restore('sds_att.mine', '{"id": 1}') AS restored;
SELECT apicore.soft_delete_purge('sds_att.mine', '{"id": 2}') AS purged;
SELECT apicore.soft_delete_disable('sds_att.mine');
RESET app.current_tenant;
-- the victim's table, as support staff: restore and purge run as its owner
DELETE FROM sds_vic.parent WHERE id = 1;
SELECT apicore.soft_delete_restore('sds_vic.parent', '{"id": 1}') AS restored;
SELECT apicore.soft_delete_restore('sds_vic.parent', '{"id": 3}') AS restored_from_archive;
SELECT apicore.soft_delete_purge('sds_vic.parent', '{"id": 3}') AS purged;
-- the cascade trigger: the attacker's DELETE on the victim's parent reaches
-- the child, whose owner the cascade runs as
DELETE FROM sds_vic.parent WHERE id = 2;
-- tenant tokens and role tenants: keys and the role map are read and
-- written as their table's owner
SELECT apicore.tenant_token('1', '1 hour') AS token1 \gset
SELECT apicore.tenant_role_set('sds_tenant_a', 'x');
SELECT apicore.tenant_role_set('sds_tenant_a', NULL);
BEGIN;
SELECT apicore.tenant_set(:'token1') AS tenant;
SELECT apicore.current_tenant();
COMMIT;
SELECT pg_temp.err($$SELECT apicore.tenant_set('garbage')$$);
SELECT apicore.session_tenant();
RESET search_path;
RESET ROLE;
-- the worker's task, as the superuser with the default search_path ("$user",
-- public), where the attacker's operators are
SHOW search_path;
ALTER TABLE sds_vic.parent DISABLE TRIGGER note;
UPDATE sds_vic.parent SET deleted_at = now() - interval '2 hours' WHERE id = 2;
ALTER TABLE sds_vic.parent ENABLE TRIGGER note;
SELECT apicore._soft_delete_maintain();
SELECT apicore.tenant_rotate_key() AS rotated_key;
-- user triggers ran as the victim, or as the attacker for the attacker's own DELETE
SELECT tbl, op, who, count(*) FROM sds_vic.trigger_log GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;

-- nobody but the attacker ran the attacker's code, and it gained nothing
SELECT who, count(*) > 0 AS ran FROM sds_att.log GROUP BY who ORDER BY who;
-- (the attacker's objects leave public before the superuser's next queries)
SET client_min_messages = warning;
DO $$
DECLARE o record;
BEGIN
    FOR o IN SELECT p.oid::regprocedure AS f FROM pg_proc p
              WHERE p.pronamespace = 'public'::regnamespace AND p.proowner = 'sds_attacker'::regrole
    LOOP
        EXECUTE format('DROP FUNCTION %s CASCADE', o.f);
    END LOOP;
END $$;
REVOKE CREATE ON SCHEMA public FROM sds_attacker;
RESET client_min_messages;
SELECT r.rolname FROM pg_roles r JOIN roles_before b USING (rolname)
 WHERE (r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls)
    IS DISTINCT FROM (b.rolsuper, b.rolinherit, b.rolcreaterole, b.rolcreatedb, b.rolreplication, b.rolbypassrls);
SELECT roleid::regrole::text AS role, member::regrole::text AS member FROM pg_auth_members
 WHERE member::regrole::text LIKE 'sds\_%'
EXCEPT SELECT role, member FROM members_before;
-- the victim's rows the attacker did not delete are live
SELECT id, deleted_at IS NULL AS live FROM sds_vic.parent ORDER BY id;
SELECT id, deleted_at IS NULL AS live FROM sds_vic.child ORDER BY id;
DROP TABLE sds_att.mine_archive;

-- ---------- forged triggers ----------
SET ROLE sds_attacker;
RESET search_path;
CREATE TABLE sds_att.a (id int PRIMARY KEY);
INSERT INTO sds_att.a VALUES (1), (3), (4);
SELECT apicore.soft_delete_enable('sds_att.a');
-- the cascade trigger pointed at the victim's foreign key, named as enable names it
CREATE FUNCTION pg_temp.victim_fk() RETURNS oid LANGUAGE sql AS
    $f$ SELECT oid FROM pg_catalog.pg_constraint WHERE conrelid = 'sds_vic.child'::regclass AND contype = 'f' $f$;
DO $$ BEGIN
    EXECUTE format('CREATE TRIGGER apicore_soft_delete_cascade_%s AFTER UPDATE ON sds_att.a FOR EACH ROW '
                   'EXECUTE FUNCTION apicore._soft_delete_cascade(%L)', pg_temp.victim_fk(), pg_temp.victim_fk());
END $$;
SELECT pg_temp.err($$DELETE FROM sds_att.a WHERE id = 1$$);
DO $$ BEGIN
    EXECUTE format('DROP TRIGGER apicore_soft_delete_cascade_%s ON sds_att.a', pg_temp.victim_fk());
END $$;
-- wrongly named, with a bad argument, without one, BEFORE, per statement
CREATE TRIGGER forged AFTER UPDATE ON sds_att.a FOR EACH ROW EXECUTE FUNCTION apicore._soft_delete_cascade('1');
SELECT pg_temp.err($$DELETE FROM sds_att.a WHERE id = 3$$);
DROP TRIGGER forged ON sds_att.a;
CREATE TRIGGER apicore_soft_delete_cascade_1 AFTER UPDATE ON sds_att.a FOR EACH ROW EXECUTE FUNCTION apicore._soft_delete_cascade('1x');
SELECT pg_temp.err($$DELETE FROM sds_att.a WHERE id = 3$$);
DROP TRIGGER apicore_soft_delete_cascade_1 ON sds_att.a;
CREATE TRIGGER forged AFTER UPDATE ON sds_att.a FOR EACH ROW EXECUTE FUNCTION apicore._soft_delete_cascade();
SELECT pg_temp.err($$DELETE FROM sds_att.a WHERE id = 3$$);
DROP TRIGGER forged ON sds_att.a;
CREATE TRIGGER forged BEFORE UPDATE ON sds_att.a FOR EACH STATEMENT EXECUTE FUNCTION apicore._soft_delete_cascade('1');
SELECT pg_temp.err($$DELETE FROM sds_att.a WHERE id = 3$$);
DROP TRIGGER forged ON sds_att.a;
-- the guard on an INSERT, and a guard trigger that names an int column
CREATE TRIGGER forged BEFORE INSERT ON sds_att.a FOR EACH ROW EXECUTE FUNCTION apicore._soft_delete_guard('id');
SELECT pg_temp.err($$INSERT INTO sds_att.a VALUES (5)$$);
DROP TRIGGER forged ON sds_att.a;
CREATE TABLE sds_att.b (id int PRIMARY KEY);
INSERT INTO sds_att.b VALUES (1);
CREATE TRIGGER apicore_soft_delete BEFORE DELETE ON sds_att.b FOR EACH ROW EXECUTE FUNCTION apicore._soft_delete_guard('id');
SELECT pg_temp.err($$DELETE FROM sds_att.b WHERE id = 1$$);
SELECT pg_temp.err($$SELECT apicore._soft_delete_guard()$$);
SELECT pg_temp.err($$SELECT apicore._soft_delete_cascade()$$);
RESET ROLE;
SELECT id, deleted_at IS NULL AS live FROM sds_vic.child ORDER BY id;

-- ---------- a soft-delete child of another owner ----------
-- enable makes the cascade trigger on the parent as the parent's owner (as a
-- foreign key's triggers are made); the cascade runs as the child's owner,
-- so the child owner's triggers never run as the parent's owner
SET ROLE sds_victim;
GRANT REFERENCES ON sds_vic.parent TO sds_attacker;
INSERT INTO sds_vic.parent VALUES (5, 'five');
RESET ROLE;
SET ROLE sds_attacker;
CREATE TABLE sds_att.kid (id int PRIMARY KEY, parent_id int REFERENCES sds_vic.parent ON DELETE CASCADE);
CREATE TABLE sds_att.kid_log (who name);
CREATE FUNCTION sds_att.kid_note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sds_att.kid_log VALUES (current_user);
    RETURN NEW;
END $$;
INSERT INTO sds_att.kid VALUES (50, 5);
SELECT apicore.soft_delete_enable('sds_att.kid');
CREATE TRIGGER note AFTER UPDATE ON sds_att.kid FOR EACH ROW EXECUTE FUNCTION sds_att.kid_note();
RESET ROLE;
SELECT count(*) AS cascade_triggers FROM pg_trigger
 WHERE tgrelid = 'sds_vic.parent'::regclass AND tgname LIKE 'apicore_soft_delete_cascade_%';
SET ROLE sds_victim;
DELETE FROM sds_vic.parent WHERE id = 5;
RESET ROLE;
SELECT who FROM sds_att.kid_log;
SELECT id, deleted_at IS NOT NULL AS soft_deleted FROM sds_att.kid;
SET ROLE sds_attacker;
SELECT apicore.soft_delete_disable('sds_att.kid');
RESET ROLE;
SELECT count(*) AS cascade_triggers_left FROM pg_trigger
 WHERE tgrelid = 'sds_vic.parent'::regclass AND tgname LIKE 'apicore_soft_delete_cascade_%';

-- ---------- apicore's tables are written only through apicore's functions ----------
CREATE TEMP TABLE writes (role text, tbl text, stmt text, result text);
DO $$
DECLARE
    r text;
    t text;
    s text;
    res text;
BEGIN
    FOREACH r IN ARRAY ARRAY['apicore_soft_delete_admin', 'apicore_tenant_issuer', 'apicore_saga_worker',
                             'apicore_saga_admin', 'sds_app'] LOOP
        FOREACH t IN ARRAY ARRAY['soft_delete_settings', 'tenant_key', 'tenant_role'] LOOP
            FOREACH s IN ARRAY ARRAY[
                'INSERT INTO apicore.%s SELECT * FROM apicore.%s LIMIT 0',
                'UPDATE apicore.%s SET %s = NULL WHERE false',
                'DELETE FROM apicore.%s WHERE false',
                'TRUNCATE apicore.%s'] LOOP
                EXECUTE format('SET ROLE %I', r);
                BEGIN
                    IF s LIKE 'UPDATE%' THEN
                        EXECUTE format(s, t, CASE t WHEN 'soft_delete_settings' THEN 'last_maintenance'
                                                    WHEN 'tenant_key' THEN 'created_at' ELSE 'tenant' END);
                    ELSE
                        EXECUTE format(s, t, t);
                    END IF;
                    res := 'allowed';
                EXCEPTION WHEN OTHERS THEN
                    res := SQLSTATE;
                END;
                RESET ROLE;
                INSERT INTO writes VALUES (r, t, split_part(s, ' ', 1), res);
            END LOOP;
        END LOOP;
    END LOOP;
END $$;
SELECT tbl, stmt, string_agg(DISTINCT result, ', ') AS results, count(*) AS roles
  FROM writes GROUP BY tbl, stmt ORDER BY tbl, stmt;
-- keys and role tenants are not readable either
SET ROLE sds_issuer;
SELECT pg_temp.err($$SELECT * FROM apicore.tenant_key$$);
SELECT pg_temp.err($$SELECT * FROM apicore.tenant_role$$);
RESET ROLE;
-- PUBLIC may not mint tokens or map roles
SET ROLE sds_app;
SELECT pg_temp.err($$SELECT apicore.tenant_token('1')$$);
SELECT pg_temp.err($$SELECT apicore.tenant_role_set('sds_app', '1')$$);
SELECT pg_temp.err($$SELECT apicore.tenant_rotate_key()$$);
SELECT pg_temp.err($$SELECT apicore._soft_delete_maintain()$$);
RESET ROLE;

-- ---------- tampered settings rows: a clean error, the other tables still run ----------
SET ROLE sds_victim;
CREATE TABLE sds_vic.t1 (id int PRIMARY KEY, email text UNIQUE);
CREATE TABLE sds_vic.t2 (id int PRIMARY KEY);
SELECT apicore.soft_delete_enable('sds_vic.t1', purge_after => '1 day');
SELECT apicore.soft_delete_enable('sds_vic.t2', purge_after => '1 day');
RESET ROLE;
CREATE TABLE public.someone_elses (id int PRIMARY KEY);
CREATE FUNCTION pg_temp.maintain() RETURNS SETOF text LANGUAGE sql AS $f$
    SELECT regexp_split_to_table(apicore._soft_delete_maintain(), '; ') ORDER BY 1 $f$;
UPDATE apicore.soft_delete_settings SET column_name = 'email' WHERE tbl = 'sds_vic.t1'::regclass;
UPDATE apicore.soft_delete_settings SET purge_after = '-1 day' WHERE tbl = 'sds_vic.t2'::regclass;
SELECT * FROM pg_temp.maintain();
UPDATE apicore.soft_delete_settings SET column_name = 'deleted_at' WHERE tbl = 'sds_vic.t1'::regclass;
UPDATE apicore.soft_delete_settings SET purge_after = '300000 years' WHERE tbl = 'sds_vic.t1'::regclass;
UPDATE apicore.soft_delete_settings SET purge_after = '1 day', archive_after = '1 hour',
       archive_table = 'public.someone_elses' WHERE tbl = 'sds_vic.t2'::regclass;
SELECT * FROM pg_temp.maintain();
UPDATE apicore.soft_delete_settings SET purge_after = '1 day' WHERE tbl = 'sds_vic.t1'::regclass;
UPDATE apicore.soft_delete_settings SET archive_table = 'pg_catalog.pg_class' WHERE tbl = 'sds_vic.t2'::regclass;
UPDATE apicore.soft_delete_settings SET tbl = 'sds_vic.trigger_log' WHERE tbl = 'sds_vic.t1'::regclass;
SELECT * FROM pg_temp.maintain();
UPDATE apicore.soft_delete_settings SET tbl = 'sds_vic.t1' WHERE tbl = 'sds_vic.trigger_log'::regclass;
UPDATE apicore.soft_delete_settings SET archive_table = 4294967295::oid WHERE tbl = 'sds_vic.t2'::regclass;
SELECT * FROM pg_temp.maintain();
-- disable runs stored DDL only if it is what enable wrote
SELECT converted_unique FROM apicore.soft_delete_settings WHERE tbl = 'sds_vic.t1'::regclass \gset
UPDATE apicore.soft_delete_settings SET converted_unique = '[{"index": "sds_vic.t1_email_key", "restore": "DROP TABLE public.someone_elses"}]'
 WHERE tbl = 'sds_vic.t1'::regclass;
SET ROLE sds_victim;
SELECT pg_temp.err($$SELECT apicore.soft_delete_disable('sds_vic.t1')$$);
RESET ROLE;
UPDATE apicore.soft_delete_settings SET converted_unique = '[{"index": "sds_vic.t1_email_key", "restore": "CREATE UNIQUE INDEX ON public.someone_elses (id)"}]'
 WHERE tbl = 'sds_vic.t1'::regclass;
SET ROLE sds_victim;
SELECT pg_temp.err($$SELECT apicore.soft_delete_disable('sds_vic.t1')$$);
RESET ROLE;
UPDATE apicore.soft_delete_settings SET converted_unique = '[{"index": "pg_catalog.pg_class_oid_index", "restore": "CREATE UNIQUE INDEX ON sds_vic.t1 (id)"}]'
 WHERE tbl = 'sds_vic.t1'::regclass;
SET ROLE sds_victim;
SELECT pg_temp.err($$SELECT apicore.soft_delete_disable('sds_vic.t1')$$);
RESET ROLE;
UPDATE apicore.soft_delete_settings SET converted_unique = '"not an array"' WHERE tbl = 'sds_vic.t1'::regclass;
SET ROLE sds_victim;
SELECT pg_temp.err($$SELECT apicore.soft_delete_disable('sds_vic.t1')$$);
RESET ROLE;
UPDATE apicore.soft_delete_settings SET converted_unique = :'converted_unique' WHERE tbl = 'sds_vic.t1'::regclass;
SET ROLE sds_victim;
SELECT apicore.soft_delete_disable('sds_vic.t1');
SELECT indexdef FROM pg_indexes WHERE tablename = 't1' ORDER BY 1;
-- huge windows are refused when set
SELECT pg_temp.err($$SELECT apicore.soft_delete_configure('sds_vic.t2', purge_after => '300000 years')$$);
SELECT pg_temp.err($$SELECT apicore.soft_delete_configure('sds_vic.t2', archive_after => '1 hour', purge_after => '1001 years')$$);
RESET ROLE;
SELECT count(*) AS someone_elses_still_there FROM public.someone_elses;

-- ---------- tenant isolation the application's SQL cannot switch ----------
SET ROLE sds_victim;
CREATE TABLE sds_vic.orders (id int PRIMARY KEY, tenant_id int NOT NULL, item text);
CREATE TABLE sds_vic.notes (id int PRIMARY KEY, tenant_id text NOT NULL);
INSERT INTO sds_vic.orders VALUES (1, 1, 'a'), (2, 1, 'b'), (3, 2, 'c');
INSERT INTO sds_vic.notes VALUES (1, 'tenant-a'), (2, 'tenant-b');
SELECT apicore.tenant_isolation_enable('sds_vic.orders', mode => 'token');
SELECT apicore.tenant_isolation_enable('sds_vic.notes', mode => 'role');
GRANT SELECT, INSERT, UPDATE, DELETE ON sds_vic.orders TO sds_app;
GRANT SELECT ON sds_vic.notes TO sds_app, sds_tenant_a, sds_tenant_b;
SELECT pg_temp.err($$SELECT apicore.tenant_isolation_enable('sds_vic.notes', mode => 'guess')$$);
SELECT pg_temp.err($$SELECT apicore.tenant_isolation_enable('sds_vic.notes', setting => 'app.x', mode => 'token')$$);
RESET ROLE;
SET ROLE sds_issuer;
SELECT apicore.tenant_token('1') AS t1, apicore.tenant_token('2', '10 minutes') AS t2,
       apicore.tenant_token('1', '1 second') AS short_lived \gset
SELECT pg_temp.err($$SELECT apicore.tenant_token('1', '0 seconds')$$);
SELECT pg_temp.err($$SELECT apicore.tenant_token('1', '2 years')$$);
SELECT pg_temp.err($$SELECT apicore.tenant_token('')$$);
SELECT pg_temp.err($$SELECT apicore.tenant_token(E'a\nb')$$);
SELECT pg_temp.err($$SELECT apicore.tenant_token(NULL)$$);
RESET ROLE;
SET ROLE sds_app;
-- no tenant: nothing, whatever the application SETs
SELECT count(*) AS no_tenant FROM sds_vic.orders;
SET app.current_tenant = '2';
SELECT count(*) AS after_set_app FROM sds_vic.orders;
SELECT pg_temp.err($$SET apicore.tenant = '2'$$);
SELECT pg_temp.err($$SELECT set_config('apicore.tenant', '2', false)$$);
SELECT pg_temp.err($$RESET apicore.tenant$$);
SELECT pg_temp.err($$ALTER ROLE sds_app SET apicore.tenant = '2'$$);
SELECT pg_temp.err($$CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql SET apicore.tenant = '2' AS 'SELECT 1'$$);
SELECT pg_temp.err($$INSERT INTO sds_vic.orders VALUES (9, 2, 'x')$$);
-- a token: its tenant until the transaction ends
BEGIN;
SELECT apicore.tenant_set(:'t1') AS tenant;
SELECT id, item FROM sds_vic.orders ORDER BY id;
SELECT pg_temp.err($$INSERT INTO sds_vic.orders VALUES (9, 2, 'x')$$);
UPDATE sds_vic.orders SET item = 'z' WHERE id = 3;
COMMIT;
SELECT apicore.current_tenant() AS after_commit, count(*) AS rows FROM sds_vic.orders;
BEGIN;
SELECT apicore.tenant_set(:'t2') AS tenant;
ROLLBACK;
SELECT apicore.current_tenant() AS after_rollback;
-- for the session: until another token, RESET ALL or DISCARD ALL
SELECT apicore.tenant_set(:'t2', false) AS tenant;
SELECT id, item FROM sds_vic.orders ORDER BY id;
SELECT apicore.tenant_set(:'t1', false) AS tenant;
SELECT id, item FROM sds_vic.orders ORDER BY id;
RESET ALL;
SELECT apicore.current_tenant() AS after_reset_all;
-- garbage, short, long, tampered and forged tokens: 22023 with a hint
SELECT pg_temp.err($$SELECT apicore.tenant_set('not a token!')$$);
SELECT pg_temp.err($$SELECT apicore.tenant_set('AAAA')$$);
SELECT pg_temp.err($$SELECT apicore.tenant_set('')$$);
SELECT pg_temp.err(format('SELECT apicore.tenant_set(%L)', repeat('A', 600)));
SELECT pg_temp.err($$SELECT apicore.tenant_set(NULL)$$);
SELECT pg_temp.err(format('SELECT apicore.tenant_set(%L)', :'t1' || 'x'));
-- one bit of the signature, of the tenant, of the expiry, of the key id, the version
SELECT pg_temp.err(format('SELECT apicore.tenant_set(%L)',
       pg_temp.b64(set_byte(b, length(b) - 1, get_byte(b, length(b) - 1) # 1))))
  FROM pg_temp.unb64(:'t1') b;
SELECT pg_temp.err(format('SELECT apicore.tenant_set(%L)', pg_temp.b64(set_byte(b, 13, ascii('2')))))
  FROM pg_temp.unb64(:'t1') b;
SELECT pg_temp.err(format('SELECT apicore.tenant_set(%L)', pg_temp.b64(set_byte(b, 9, 255))))
  FROM pg_temp.unb64(:'t1') b;
SELECT pg_temp.err(format('SELECT apicore.tenant_set(%L)', pg_temp.b64(set_byte(b, 4, 99))))
  FROM pg_temp.unb64(:'t1') b;
SELECT pg_temp.err(format('SELECT apicore.tenant_set(%L)', pg_temp.b64(set_byte(b, 0, 2))))
  FROM pg_temp.unb64(:'t1') b;
-- the other tenant's token spliced with this signature
SELECT pg_temp.err(format('SELECT apicore.tenant_set(%L)',
       pg_temp.b64(substring(b2 FROM 1 FOR 14) || substring(b1 FROM 15))))
  FROM pg_temp.unb64(:'t1') b1, pg_temp.unb64(:'t2') b2;
-- an expired token (waits until the second it was good for has passed)
SET sds.short_lived = :'short_lived';
DO $$
BEGIN
    FOR i IN 1..200 LOOP
        BEGIN
            PERFORM apicore.tenant_set(current_setting('sds.short_lived'));
        EXCEPTION WHEN invalid_parameter_value THEN
            EXIT;
        END;
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT pg_temp.err(format('SELECT apicore.tenant_set(%L)', :'short_lived'));
SELECT count(*) AS after_failures FROM sds_vic.orders;
RESET ROLE;
-- rotation: new tokens use the new key, old ones still verify
SELECT apicore.tenant_rotate_key() AS new_key;
SET ROLE sds_issuer;
SELECT get_byte(pg_temp.unb64(apicore.tenant_token('1')), 4) AS key_id_of_new_token;
RESET ROLE;
SET ROLE sds_app;
SELECT apicore.tenant_set(:'t1') AS old_token_tenant;
RESET ROLE;
-- a retired key: its tokens stop verifying (the trigger on the key table drops every backend's copy)
DELETE FROM apicore.tenant_key WHERE key_id = get_byte(pg_temp.unb64(:'t1'), 4);
SET ROLE sds_app;
SELECT pg_temp.err(format('SELECT apicore.tenant_set(%L)', :'t1'));
RESET ROLE;
SELECT pg_temp.err($$SELECT apicore._tenant_key_changed()$$);

-- the tenant of the login role: SET ROLE and SET do not change it
SET ROLE sds_issuer;
SELECT apicore.tenant_role_set('sds_tenant_a', 'tenant-a');
SELECT apicore.tenant_role_set('sds_tenant_b', 'tenant-b');
SELECT pg_temp.err($$SELECT apicore.tenant_role_set(NULL, 'x')$$);
SELECT pg_temp.err($$SELECT apicore.tenant_role_set('sds_tenant_a', repeat('x', 300))$$);
RESET ROLE;
GRANT sds_tenant_b TO sds_tenant_a;
SET SESSION AUTHORIZATION sds_tenant_a;
SELECT session_user, apicore.session_tenant(), array_agg(id) AS ids FROM sds_vic.notes;
SET ROLE sds_tenant_b;
SELECT current_user, apicore.session_tenant(), array_agg(id) AS ids FROM sds_vic.notes;
RESET ROLE;
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION sds_app;
SELECT apicore.session_tenant(), count(*) AS unmapped FROM sds_vic.notes;
RESET SESSION AUTHORIZATION;
-- a new mapping reaches the cached one
SET SESSION AUTHORIZATION sds_tenant_a;
SELECT apicore.session_tenant();
RESET SESSION AUTHORIZATION;
SET ROLE sds_issuer;
SELECT apicore.tenant_role_set('sds_tenant_a', 'tenant-b');
RESET ROLE;
SET SESSION AUTHORIZATION sds_tenant_a;
SELECT apicore.session_tenant(), array_agg(id) AS ids FROM sds_vic.notes;
RESET SESSION AUTHORIZATION;
SET ROLE sds_issuer;
SELECT apicore.tenant_role_set('sds_tenant_a', NULL);
SELECT apicore.tenant_role_set('sds_tenant_b', NULL);
RESET ROLE;

-- DISCARD ALL clears a session tenant too (and this session's temporary objects)
SET ROLE sds_issuer;
SELECT apicore.tenant_token('2') AS t3 \gset
RESET ROLE;
SET ROLE sds_app;
SELECT apicore.tenant_set(:'t3', false) AS tenant;
DISCARD ALL;
SELECT apicore.current_tenant() AS after_discard_all;

-- clean up
SET client_min_messages = warning;
DROP SCHEMA sds_att CASCADE;
DROP TABLE public.someone_elses;
DROP SCHEMA sds_vic CASCADE;
SELECT apicore._soft_delete_maintain() AS forget_dropped_tables;
SELECT count(*) AS settings_rows FROM apicore.soft_delete_settings;
DELETE FROM apicore.tenant_key;
DROP ROLE sds_attacker, sds_victim, sds_app, sds_issuer, sds_tenant_a, sds_tenant_b;
