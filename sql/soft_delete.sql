-- Soft delete enforced by row-level security: DELETE marks rows, reports them
-- like a real DELETE, and no ordinary role (owner included) sees them again.
-- Everything runs as ordinary roles (the table owner sd_owner, the
-- application sd_app, support sd_support in apicore_soft_delete_admin, a
-- BYPASSRLS reader sd_bypass); the superuser only creates them, backdates
-- deletions (time passing) and runs maintenance (as the worker does).
\set VERBOSITY default
-- err(sql): the SQLSTATE, message and hint a statement raises
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $f$ DECLARE h text; BEGIN EXECUTE q; RETURN 'no error'; EXCEPTION WHEN OTHERS THEN GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT; RETURN SQLSTATE || ': ' || SQLERRM || coalesce(E'\n  HINT: ' || nullif(h, ''), ''); END $f$;
CREATE ROLE sd_owner;
CREATE ROLE sd_app;
CREATE ROLE sd_support;
GRANT apicore_soft_delete_admin TO sd_support;
CREATE ROLE sd_bypass BYPASSRLS;
CREATE SCHEMA sd AUTHORIZATION sd_owner;
GRANT USAGE ON SCHEMA sd TO sd_app, sd_support, sd_bypass;

SET ROLE sd_owner;
CREATE TABLE sd.users (
    id int PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text
);
CREATE INDEX users_name_idx ON sd.users (name);
GRANT SELECT, INSERT, UPDATE, DELETE ON sd.users TO sd_app, sd_support, sd_bypass;
INSERT INTO sd.users SELECT g, 'u' || g || '@example.com', 'user ' || g FROM generate_series(1, 10) g;
INSERT INTO sd.users VALUES (13, 'early@example.com', 'early');
-- a plan cached before enable notices it (the trigger invalidates the relcache);
-- generic plans, so that a cached plan is really reused
SET plan_cache_mode = force_generic_plan;
PREPARE early(int) AS DELETE FROM sd.users WHERE id = $1;
EXECUTE early(404);

SELECT apicore.soft_delete_enable('sd.users');
-- the column was added; the unique constraint became a partial unique index
\d sd.users
SELECT "table", "column", archive_table, kept_unique, partial_unique_indexes
  FROM apicore.soft_delete_tables;

EXECUTE early(13);
\echo deleted :ROW_COUNT
SELECT count(*) AS early_still_visible FROM sd.users WHERE id = 13;

-- ORM-style checks as the owner (FORCE ROW LEVEL SECURITY applies to it)
DELETE FROM sd.users WHERE id IN (1, 2, 3);
\echo deleted :ROW_COUNT
DELETE FROM sd.users WHERE id = 4 RETURNING id, email, deleted_at IS NOT NULL AS marked;
-- deleting again reports nothing: the row is gone for the application
DELETE FROM sd.users WHERE id = 4;
\echo deleted :ROW_COUNT
SELECT count(*) AS visible FROM sd.users;
SELECT id FROM sd.users WHERE id <= 4;
-- writing a deleted row or inserting one already deleted is refused
UPDATE sd.users SET name = 'x' WHERE id = 1;
\echo updated :ROW_COUNT
INSERT INTO sd.users VALUES (99, 'z@example.com', 'z', now());
-- nor can the application mark a row by hand: DELETE is the way
UPDATE sd.users SET deleted_at = now() WHERE id = 5;

-- PL/pgSQL: ROW_COUNT, RETURNING INTO, dynamic EXECUTE
CREATE FUNCTION sd.delete_user(uid int) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    got text;
BEGIN
    DELETE FROM sd.users WHERE id = uid RETURNING email INTO got;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN format('deleted %s (%s)', n, got);
END $$;
SELECT sd.delete_user(5);
SELECT sd.delete_user(5);
DO $$
DECLARE n bigint;
BEGIN
    EXECUTE 'DELETE FROM sd.users WHERE id = $1' USING 6;
    GET DIAGNOSTICS n = ROW_COUNT;
    RAISE NOTICE 'dynamic delete: %', n;
END $$;

-- PREPARE/EXECUTE: the cached plan keeps converting, and notices disable
PREPARE del(int) AS DELETE FROM sd.users WHERE id = $1;
EXECUTE del(7);
\echo deleted :ROW_COUNT
EXECUTE del(7);
\echo deleted :ROW_COUNT
-- DELETE in WITH
WITH d AS (DELETE FROM sd.users WHERE id = 8 RETURNING id) SELECT count(*) AS deleted_in_cte FROM d;
-- EXPLAIN shows the UPDATE that marks
EXPLAIN (COSTS OFF) DELETE FROM sd.users WHERE id = 9;
SELECT id FROM sd.users ORDER BY id;

-- the unique value of a deleted row can be used again
INSERT INTO sd.users (id, email, name) VALUES (11, 'u1@example.com', 'new user 1');
INSERT INTO sd.users (id, email, name) VALUES (12, 'u1@example.com', 'dup');

-- an ordinary role: the same
RESET ROLE;
SET ROLE sd_app;
SELECT id FROM sd.users ORDER BY id;
DELETE FROM sd.users WHERE id = 11 RETURNING id;
SELECT count(*) FROM sd.users WHERE id = 11;
-- asking for deleted rows outright finds none either
SELECT count(*) AS deleted_seen FROM sd.users WHERE deleted_at IS NOT NULL;
SELECT count(*) AS deleted_seen FROM sd.users u1 JOIN sd.users u2 USING (email) WHERE u1.id <> u2.id;
-- restore is not for ordinary roles
SELECT apicore.soft_delete_restore('sd.users', '{"id": 11}');
RESET ROLE;

-- the privileged paths: a BYPASSRLS role reads deleted rows ...
SET ROLE sd_bypass;
SELECT id, email, deleted_at IS NOT NULL AS deleted FROM sd.users ORDER BY id;
-- without RLS too, a deleted row is not marked again
DELETE FROM sd.users WHERE id = 4;
\echo deleted :ROW_COUNT
RESET ROLE;
-- ... and a member of apicore_soft_delete_admin restores them
SET ROLE sd_support;
SELECT apicore.soft_delete_restore('sd.users', '{"id": 2}') AS restored;
SELECT apicore.soft_delete_restore('sd.users', '{"id": 2}') AS restored_again;
SELECT apicore.soft_delete_restore('sd.users', '{"id": 404}') AS unknown;
SELECT apicore.soft_delete_restore('sd.users', '{"id": 1}') AS restored;
-- restoring into a unique value taken meanwhile fails clearly: 11 took
-- u1@example.com while 1 was deleted, and 1 has it again now
SELECT apicore.soft_delete_restore('sd.users', '{"id": 11}');
RESET ROLE;
SET ROLE sd_app;
SELECT id, email FROM sd.users WHERE id IN (1, 2, 11) ORDER BY id;
RESET ROLE;

-- live-row queries keep using indexes, partial ones included
SET ROLE sd_owner;
CREATE INDEX users_live_name_idx ON sd.users (name) WHERE deleted_at IS NULL;
DROP INDEX sd.users_name_idx;
ANALYZE sd.users;
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT * FROM sd.users WHERE name = 'user 10';
EXPLAIN (COSTS OFF) SELECT * FROM sd.users WHERE email = 'u10@example.com';
RESET enable_seqscan;

-- TRUNCATE is refused unless apicore.allow_truncate
TRUNCATE sd.users;
-- MERGE ... DELETE is refused; MERGE that updates still works
MERGE INTO sd.users u USING (VALUES (10)) v(id) ON u.id = v.id WHEN MATCHED THEN DELETE;
MERGE INTO sd.users u USING (VALUES (10)) v(id) ON u.id = v.id
  WHEN MATCHED THEN UPDATE SET name = 'merged';

-- bad input: each a documented SQLSTATE
SELECT pg_temp.err($$SELECT apicore.soft_delete_enable('sd.users')$$);
SELECT pg_temp.err($$SELECT apicore.soft_delete_enable(NULL)$$);
SELECT pg_temp.err($$SELECT apicore.soft_delete_enable('sd.users', NULL)$$);
CREATE TABLE sd.nopk (a int);
SELECT pg_temp.err($$SELECT apicore.soft_delete_enable('sd.nopk')$$);
CREATE TABLE sd.wrongtype (id int PRIMARY KEY, deleted_at date);
SELECT pg_temp.err($$SELECT apicore.soft_delete_enable('sd.wrongtype')$$);
CREATE TABLE sd.notnull (id int PRIMARY KEY, deleted_at timestamptz NOT NULL DEFAULT now());
SELECT pg_temp.err($$SELECT apicore.soft_delete_enable('sd.notnull')$$);
CREATE VIEW sd.v AS SELECT * FROM sd.nopk;
SELECT pg_temp.err($$SELECT apicore.soft_delete_enable('sd.v')$$);
CREATE TABLE sd.parted (id int PRIMARY KEY) PARTITION BY RANGE (id);
SELECT pg_temp.err($$SELECT apicore.soft_delete_enable('sd.parted')$$);
SELECT pg_temp.err($$SELECT apicore.soft_delete_enable('sd.wrongtype', 'gone_at', '-1 day')$$);
SELECT pg_temp.err($$SELECT apicore.soft_delete_enable('sd.wrongtype', 'gone_at', '30 days', '1 day')$$);
SELECT pg_temp.err($$SELECT apicore.soft_delete_disable('sd.wrongtype')$$);
SELECT pg_temp.err($$SELECT apicore.soft_delete_restore('sd.users', '{"uid": 1}')$$);
SELECT pg_temp.err($$SELECT apicore.soft_delete_restore('sd.users', '{"id": 1, "extra": 2}')$$);
SELECT pg_temp.err($$SELECT apicore.soft_delete_restore('sd.users', '[1]')$$);
SELECT pg_temp.err($$SELECT apicore.soft_delete_restore('sd.users', '{"id": null}')$$);
SELECT pg_temp.err($$SELECT apicore.soft_delete_restore('sd.users', NULL)$$);
SELECT pg_temp.err($$SELECT apicore.soft_delete_restore('sd.users', '{"id": "abc"}')$$);
SELECT pg_temp.err($$SELECT apicore.soft_delete_purge('sd.wrongtype', '{"id": 1}')$$);
SELECT pg_temp.err($$SELECT apicore._soft_delete_guard()$$);
RESET ROLE;
SET ROLE sd_app;
SELECT pg_temp.err($$SELECT apicore.soft_delete_disable('sd.users')$$);
RESET ROLE;

-- DELETE ... USING and WHERE CURRENT OF mark rows too
SET ROLE sd_owner;
INSERT INTO sd.users (id, email, name) VALUES (30, 'u30@example.com', 'join'), (31, 'u31@example.com', 'cursor');
CREATE TABLE sd.banned (email text);
INSERT INTO sd.banned VALUES ('u30@example.com');
DELETE FROM sd.users u USING sd.banned b WHERE u.email = b.email RETURNING u.id;
BEGIN;
DECLARE c CURSOR FOR SELECT id FROM sd.users WHERE id = 31 FOR UPDATE;
FETCH c;
DELETE FROM sd.users WHERE CURRENT OF c;
\echo deleted :ROW_COUNT
COMMIT;
-- and through an updatable view
INSERT INTO sd.users (id, email, name) VALUES (32, 'u32@example.com', 'view');
CREATE VIEW sd.user_list AS SELECT id, email FROM sd.users;
DELETE FROM sd.user_list WHERE id = 32 RETURNING id;
SELECT count(*) AS still_visible FROM sd.users WHERE id IN (30, 31, 32);
RESET ROLE;
SET ROLE sd_bypass;
SELECT count(*) AS marked FROM sd.users WHERE id IN (30, 31, 32) AND deleted_at IS NOT NULL;
RESET ROLE;

-- erasure: purge removes a row for real, live or deleted
SET ROLE sd_owner;
SELECT apicore.soft_delete_purge('sd.users', '{"id": 3}') AS purged_deleted;
SELECT apicore.soft_delete_purge('sd.users', '{"id": 10}') AS purged_live;
SELECT apicore.soft_delete_purge('sd.users', '{"id": 10}') AS purged_again;
RESET ROLE;
SET ROLE sd_bypass;
SELECT id FROM sd.users WHERE id IN (3, 10);
RESET ROLE;

-- disable: DELETE removes rows again, constraints and RLS come back
SET ROLE sd_owner;
DELETE FROM sd.users WHERE id = 1;
SELECT apicore.soft_delete_disable('sd.users');
SELECT apicore.soft_delete_purge('sd.users', '{"id": 11}') AS purged_duplicate;
SELECT apicore.soft_delete_disable('sd.users');
EXECUTE del(9);
\echo deleted :ROW_COUNT
SELECT id FROM sd.users WHERE id = 9;
SELECT count(*) AS deleted_rows_now_visible FROM sd.users WHERE deleted_at IS NOT NULL;
\d sd.users
SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'sd.users'::regclass;
SELECT count(*) AS settings_rows FROM apicore.soft_delete_settings;
RESET ROLE;

-- a composite primary key: pk names every key column
SET ROLE sd_owner;
CREATE TABLE sd.members (org int, uid int, PRIMARY KEY (org, uid));
INSERT INTO sd.members VALUES (1, 1), (1, 2);
SELECT apicore.soft_delete_enable('sd.members');
DELETE FROM sd.members WHERE org = 1;
\echo deleted :ROW_COUNT
RESET ROLE;
SET ROLE sd_support;
SELECT apicore.soft_delete_restore('sd.members', '{"uid": 2, "org": 1}') AS restored;
SELECT pg_temp.err($$SELECT apicore.soft_delete_restore('sd.members', '{"org": 1}')$$);
RESET ROLE;
SET ROLE sd_owner;
SELECT org, uid FROM sd.members WHERE deleted_at IS NULL;
SELECT apicore.soft_delete_disable('sd.members');

-- names that need quoting, everywhere apicore builds SQL
SET ROLE sd_owner;
CREATE TABLE sd."Odd Table" ("Key" int PRIMARY KEY, "E-mail" text UNIQUE);
INSERT INTO sd."Odd Table" VALUES (1, 'a'), (2, 'b');
SELECT apicore.soft_delete_enable('sd."Odd Table"', 'Gone At', archive_after => '1 hour', purge_after => '1 day');
DELETE FROM sd."Odd Table" WHERE "Key" = 1;
\echo deleted :ROW_COUNT
INSERT INTO sd."Odd Table" VALUES (3, 'a');
GRANT SELECT ON sd."Odd Table_archive" TO sd_bypass;
RESET ROLE;
UPDATE sd."Odd Table" SET "Gone At" = now() - interval '2 hours' WHERE "Key" = 1;
SELECT detail FROM apicore.run_maintenance() WHERE task = 'soft_delete_archive_purge';
SET ROLE sd_bypass;
SELECT "Key", "E-mail" FROM sd."Odd Table_archive";
RESET ROLE;
SET ROLE sd_owner;
DELETE FROM sd."Odd Table" WHERE "Key" = 3;
SELECT apicore.soft_delete_restore('sd."Odd Table"', '{"Key": 1}') AS restored;
SELECT "Key", "E-mail" FROM sd."Odd Table" ORDER BY 1;
SELECT apicore.soft_delete_purge('sd."Odd Table"', '{"Key": 3}') AS purged;
SELECT apicore.soft_delete_disable('sd."Odd Table"');
\d sd."Odd Table"
RESET ROLE;

-- apicore.allow_truncate lets TRUNCATE through, removing rows for real
SET ROLE sd_owner;
CREATE TABLE sd.scratch (id int PRIMARY KEY);
INSERT INTO sd.scratch VALUES (1), (2);
SELECT apicore.soft_delete_enable('sd.scratch');
DELETE FROM sd.scratch WHERE id = 1;
SET apicore.allow_truncate = on;
TRUNCATE sd.scratch;
RESET apicore.allow_truncate;
SELECT count(*) AS rows_left_after_truncate FROM sd.scratch;
SELECT apicore.soft_delete_disable('sd.scratch');
DROP TABLE sd.scratch;

-- maintenance forgets the settings of dropped tables
CREATE TABLE sd.gone (id int PRIMARY KEY);
SELECT apicore.soft_delete_enable('sd.gone');
DROP TABLE sd.gone;
RESET ROLE;
SELECT detail FROM apicore.run_maintenance() WHERE task = 'soft_delete_archive_purge';
SELECT count(*) AS settings_rows FROM apicore.soft_delete_settings;
DROP SCHEMA sd CASCADE;
RESET plan_cache_mode;
DROP ROLE sd_owner, sd_app, sd_support, sd_bypass;
