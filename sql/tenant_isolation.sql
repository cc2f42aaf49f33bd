-- Tenant isolation: a restrictive policy on current_setting(setting); unset
-- sees nothing; writes into another tenant are refused; soft delete ANDs in.
-- Mode 'setting' is not injection-proof (any SQL can SET it); modes 'token'
-- and 'role' are attacked in soft_delete_security.  Runs as the table's
-- owner ti_app; the superuser only creates the role and schema.
\set VERBOSITY default
-- err(sql): the SQLSTATE, message and hint a statement raises
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $f$ DECLARE h text; BEGIN EXECUTE q; RETURN 'no error'; EXCEPTION WHEN OTHERS THEN GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT; RETURN SQLSTATE || ': ' || SQLERRM || coalesce(E'\n  HINT: ' || nullif(h, ''), ''); END $f$;
CREATE ROLE ti_app;
CREATE SCHEMA ti AUTHORIZATION ti_app;
SET ROLE ti_app;
CREATE TABLE ti.orders (id int PRIMARY KEY, tenant_id int NOT NULL, item text);
INSERT INTO ti.orders VALUES (1, 1, 'a'), (2, 1, 'b'), (3, 2, 'c'), (4, 2, 'd');
SELECT apicore.tenant_isolation_enable('ti.orders');

-- unset: nothing (fail closed), also for the owner
SELECT count(*) AS unset FROM ti.orders;
SET app.current_tenant = '';
SELECT count(*) AS empty FROM ti.orders;
SET app.current_tenant = '1';
SELECT id, item FROM ti.orders ORDER BY id;
-- writing into another tenant is refused
INSERT INTO ti.orders VALUES (5, 2, 'sneaky');
UPDATE ti.orders SET tenant_id = 2 WHERE id = 1;
-- the other tenant's rows cannot be touched
UPDATE ti.orders SET item = 'x' WHERE id = 3;
\echo updated :ROW_COUNT
DELETE FROM ti.orders WHERE id = 3;
\echo deleted :ROW_COUNT

-- with soft delete: both policies apply (AND, not OR)
SELECT apicore.soft_delete_enable('ti.orders');
DELETE FROM ti.orders WHERE id IN (1, 3) RETURNING id;
\echo deleted :ROW_COUNT
SELECT id, item FROM ti.orders ORDER BY id;
SET app.current_tenant = '2';
SELECT id, item FROM ti.orders ORDER BY id;
DELETE FROM ti.orders WHERE id = 3;
\echo deleted :ROW_COUNT
SELECT id, item FROM ti.orders ORDER BY id;
-- apicore's policies on the table: both restrictive ones AND with any permissive one
SELECT polname, polpermissive FROM pg_policy WHERE polrelid = 'ti.orders'::regclass ORDER BY polname;

-- bad input
SELECT pg_temp.err($$SELECT apicore.tenant_isolation_enable('ti.orders')$$);
SELECT pg_temp.err($$SELECT apicore.tenant_isolation_enable('ti.orders', 'org_id')$$);
SELECT pg_temp.err($$SELECT apicore.tenant_isolation_enable('ti.orders', 'tenant_id', 'no_prefix')$$);
SELECT pg_temp.err($$SELECT apicore.tenant_isolation_enable('ti.orders', 'tenant_id', 'app.x; DROP TABLE y')$$);
SELECT pg_temp.err($$SELECT apicore.tenant_isolation_enable('ti.orders', 'tenant_id', NULL)$$);
SELECT pg_temp.err($$SELECT apicore.tenant_isolation_enable(NULL)$$);
SELECT pg_temp.err($$SELECT apicore.tenant_isolation_enable('ti.orders', mode => NULL)$$);
-- the policy compares with the column type's own equality, whatever search_path says
SELECT pg_get_expr(polqual, polrelid) FROM pg_policy WHERE polname = 'apicore_tenant_isolation';

-- disabling soft delete keeps tenant isolation (and RLS) in place
SELECT apicore.soft_delete_disable('ti.orders');
SET app.current_tenant = '2';
SELECT id, deleted_at IS NOT NULL AS was_deleted FROM ti.orders ORDER BY id;
RESET app.current_tenant;
SELECT count(*) AS after_reset FROM ti.orders;
RESET ROLE;
DROP SCHEMA ti CASCADE;
DROP ROLE ti_app;
