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
        setting text DEFAULT 'app.current_tenant')
    RETURNS void LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_tenant_isolation_enable';
COMMENT ON FUNCTION apicore.tenant_isolation_enable(regclass, name, text) IS
    'restrictive policy column_name = current_setting(setting): other tenants'' rows are invisible and unwritable';

-- Trigger functions soft_delete_enable attaches to tables.
CREATE FUNCTION apicore._soft_delete_guard()
    RETURNS trigger LANGUAGE c
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_guard';
CREATE FUNCTION apicore._soft_delete_cascade()
    RETURNS trigger LANGUAGE c
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_cascade';

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
