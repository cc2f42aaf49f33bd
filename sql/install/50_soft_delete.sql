-- 50_soft_delete.sql — soft delete enforced by row-level security, and tenant isolation.
-- The C side (src/soft_delete.c) turns DELETE into a soft delete in the planner;
-- this fragment declares its functions, its settings table and its view.

-- Members may restore and purge rows of any soft-delete table (owners always may).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'apicore_soft_delete_admin') THEN
        CREATE ROLE apicore_soft_delete_admin NOLOGIN;
    END IF;
END
$$;

-- What soft_delete_enable changed on each table, for disable and for maintenance.
-- Dumped with the database (pg_extension_config_dump), like the tables' policies.
CREATE TABLE apicore.soft_delete_settings (
    tbl                    regclass PRIMARY KEY,
    column_name            name NOT NULL,
    archive_after          interval,
    purge_after            interval,
    archive_table          regclass,
    converted_unique       jsonb NOT NULL DEFAULT '[]',  -- [{"index": ..., "restore": <DDL disable runs>}]
    kept_unique            jsonb NOT NULL DEFAULT '[]',  -- unique constraints a foreign key needs
    rls_enabled_by_apicore boolean NOT NULL,
    rls_forced_by_apicore  boolean NOT NULL,
    enabled_at             timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_maintenance_at    timestamptz,
    last_maintenance       text
);
COMMENT ON TABLE apicore.soft_delete_settings IS
    'soft-delete tables: column, archive/purge windows and what enable changed (written by apicore functions)';
SELECT pg_catalog.pg_extension_config_dump('apicore.soft_delete_settings', '');
REVOKE ALL ON apicore.soft_delete_settings FROM PUBLIC;
GRANT SELECT ON apicore.soft_delete_settings TO PUBLIC;

CREATE FUNCTION apicore.soft_delete_enable(
        tbl regclass, column_name name DEFAULT 'deleted_at',
        archive_after interval DEFAULT NULL, purge_after interval DEFAULT NULL)
    RETURNS void LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_enable';
COMMENT ON FUNCTION apicore.soft_delete_enable(regclass, name, interval, interval) IS
    'DELETE on tbl marks rows (column_name = now()) and RLS hides them; optional archival and purge windows';

CREATE FUNCTION apicore.soft_delete_configure(
        tbl regclass, archive_after interval DEFAULT NULL, purge_after interval DEFAULT NULL)
    RETURNS void LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_configure';
COMMENT ON FUNCTION apicore.soft_delete_configure(regclass, interval, interval) IS
    'change the archive and purge windows of a soft-delete table (NULL turns one off)';

CREATE FUNCTION apicore.soft_delete_disable(tbl regclass)
    RETURNS void LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_disable';
COMMENT ON FUNCTION apicore.soft_delete_disable(regclass) IS
    'undo soft_delete_enable: DELETE removes rows again, deleted rows become visible, unique constraints return';

CREATE FUNCTION apicore.soft_delete_restore(tbl regclass, pk jsonb)
    RETURNS bigint LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_restore';
COMMENT ON FUNCTION apicore.soft_delete_restore(regclass, jsonb) IS
    'make the deleted row with primary key pk ({"id": 42}) live again, from the table or its archive; rows restored';

CREATE FUNCTION apicore.soft_delete_purge(tbl regclass, pk jsonb)
    RETURNS bigint LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_purge';
COMMENT ON FUNCTION apicore.soft_delete_purge(regclass, jsonb) IS
    'erase the row with primary key pk now, live or deleted, from the table and its archive; rows erased';

CREATE FUNCTION apicore.tenant_isolation_enable(
        tbl regclass, column_name name DEFAULT 'tenant_id',
        setting text DEFAULT 'app.current_tenant', mode text DEFAULT 'setting')
    RETURNS void LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_tenant_isolation_enable';
COMMENT ON FUNCTION apicore.tenant_isolation_enable(regclass, name, text, text) IS
    'restrictive policy column_name = the tenant: current_setting(setting) (mode setting), apicore.current_tenant() (token) or apicore.session_tenant() (role)';

-- Tenants an application's SQL cannot switch (src/tenant.c).
-- Members of apicore_tenant_issuer mint tenant tokens and map login roles to tenants.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'apicore_tenant_issuer') THEN
        CREATE ROLE apicore_tenant_issuer NOLOGIN;
    END IF;
END
$$;

-- Keys that sign tenant tokens: readable by their owner only; apicore's C
-- code reads them as that owner, and nothing SQL-callable returns one.
CREATE TABLE apicore.tenant_key (
    key_id     int PRIMARY KEY CHECK (key_id > 0),
    key        bytea NOT NULL CHECK (octet_length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE apicore.tenant_key IS
    'tenant token keys (owner only): the highest key_id signs new tokens, every row verifies old ones';
REVOKE ALL ON apicore.tenant_key FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('apicore.tenant_key', '');
-- Every backend caches the keys; any change to the table tells them to reload.
CREATE FUNCTION apicore._tenant_key_changed() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'apicore_tenant_key_changed';
REVOKE ALL ON FUNCTION apicore._tenant_key_changed() FROM PUBLIC;
CREATE TRIGGER tenant_key_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON apicore.tenant_key
    FOR EACH STATEMENT EXECUTE FUNCTION apicore._tenant_key_changed();

-- Login roles whose sessions act for a tenant (mode 'role').
CREATE TABLE apicore.tenant_role (
    role   regrole PRIMARY KEY,
    tenant text NOT NULL CHECK (octet_length(tenant) BETWEEN 1 AND 256)
);
COMMENT ON TABLE apicore.tenant_role IS
    'login role -> tenant for apicore.session_tenant() (written by apicore.tenant_role_set)';
REVOKE ALL ON apicore.tenant_role FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('apicore.tenant_role', '');

CREATE FUNCTION apicore.tenant_token(tenant text, ttl interval DEFAULT '1 hour')
    RETURNS text LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_tenant_token';
COMMENT ON FUNCTION apicore.tenant_token(text, interval) IS
    'a signed token that lets its holder act for tenant until now() + ttl (apicore_tenant_issuer)';
REVOKE ALL ON FUNCTION apicore.tenant_token(text, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apicore.tenant_token(text, interval) TO apicore_tenant_issuer;

CREATE FUNCTION apicore.tenant_set(token text, is_local boolean DEFAULT true)
    RETURNS text LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_tenant_set';
COMMENT ON FUNCTION apicore.tenant_set(text, boolean) IS
    'verify a tenant token and act for its tenant until the transaction ends (is_local) or for the session; returns the tenant';

CREATE FUNCTION apicore.current_tenant()
    RETURNS text LANGUAGE c STABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'apicore_current_tenant';
COMMENT ON FUNCTION apicore.current_tenant() IS
    'the tenant apicore.tenant_set() verified, or NULL';

CREATE FUNCTION apicore.tenant_rotate_key()
    RETURNS int LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_tenant_rotate_key';
COMMENT ON FUNCTION apicore.tenant_rotate_key() IS
    'make a new key that signs tenant tokens from now on; older keys still verify theirs';
REVOKE ALL ON FUNCTION apicore.tenant_rotate_key() FROM PUBLIC;

CREATE FUNCTION apicore.tenant_role_set(role regrole, tenant text)
    RETURNS void LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_tenant_role_set';
COMMENT ON FUNCTION apicore.tenant_role_set(regrole, text) IS
    'sessions that log in as role act for tenant (NULL: for none) under mode ''role'' (apicore_tenant_issuer)';
REVOKE ALL ON FUNCTION apicore.tenant_role_set(regrole, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apicore.tenant_role_set(regrole, text) TO apicore_tenant_issuer;

CREATE FUNCTION apicore.session_tenant()
    RETURNS text LANGUAGE c STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'apicore_session_tenant';
COMMENT ON FUNCTION apicore.session_tenant() IS
    'the tenant of the session''s login role (apicore.tenant_role), or NULL';

-- Trigger functions soft_delete_enable attaches to tables.
CREATE FUNCTION apicore._soft_delete_guard()
    RETURNS trigger LANGUAGE c
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_guard';
CREATE FUNCTION apicore._soft_delete_cascade()
    RETURNS trigger LANGUAGE c
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_cascade';
-- Holds the name of a unique constraint soft_delete_enable replaced with a
-- partial index, for ON CONFLICT ON CONSTRAINT (a trigger that never fires).
CREATE FUNCTION apicore._soft_delete_constraint_name()
    RETURNS trigger LANGUAGE c
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_constraint_name';
-- The error of ON CONFLICT DO UPDATE meeting a soft-deleted row (never returns).
CREATE FUNCTION apicore._soft_delete_conflict(tbl regclass, target text, pk jsonb)
    RETURNS boolean LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_conflict';

CREATE FUNCTION apicore._soft_delete_maintain()
    RETURNS text LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_maintain';
REVOKE ALL ON FUNCTION apicore._soft_delete_maintain() FROM PUBLIC;
INSERT INTO apicore.maintenance_task VALUES ('soft_delete_archive_purge', 'apicore._soft_delete_maintain', 50);

CREATE VIEW apicore.soft_delete_tables AS
SELECT s.tbl AS "table",
       s.column_name AS "column",
       round(c.reltuples * coalesce(st.null_frac, 1))::bigint AS live_rows_estimate,
       round(c.reltuples * (1 - coalesce(st.null_frac, 1)))::bigint AS deleted_rows_estimate,
       s.archive_table,
       a.reltuples::bigint AS archived_rows_estimate,
       s.archive_after,
       s.purge_after,
       ARRAY(SELECT pg_catalog.jsonb_array_elements_text(s.kept_unique)) AS kept_unique,
       ARRAY(SELECT e OPERATOR(pg_catalog.->>) 'index'
               FROM pg_catalog.jsonb_array_elements(s.converted_unique) e) AS partial_unique_indexes,
       s.enabled_at,
       s.last_maintenance_at AS last_archive_run,
       s.last_maintenance AS last_archive_result
  FROM apicore.soft_delete_settings s
  JOIN pg_catalog.pg_class c ON c.oid = s.tbl
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_class a ON a.oid = s.archive_table
  LEFT JOIN pg_catalog.pg_stats st
         ON st.schemaname = n.nspname AND st.tablename = c.relname
        AND st.attname = s.column_name AND NOT st.inherited;
COMMENT ON VIEW apicore.soft_delete_tables IS
    'one row per soft-delete table: column, live/deleted/archived row estimates (as of ANALYZE), windows, kept unique constraints, last archive run';
GRANT SELECT ON apicore.soft_delete_tables TO PUBLIC;
