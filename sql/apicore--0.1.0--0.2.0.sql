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
-- 0.2.0 so far changes no SQL object: the update only records the new version.

\echo Use "ALTER EXTENSION apicore UPDATE" to load this file. \quit
