-- Soft delete across foreign keys, archival and purge.
-- Runs as the tables' owner (a superuser bypasses row-level security) and a
-- BYPASSRLS reader sdc_reader; the superuser only creates the roles,
-- backdates deletions (time passing) and runs maintenance (as the worker does).
\set VERBOSITY default
-- err(sql): the SQLSTATE, message and hint a statement raises
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $f$ DECLARE h text; BEGIN EXECUTE q; RETURN 'no error'; EXCEPTION WHEN OTHERS THEN GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT; RETURN SQLSTATE || ': ' || SQLERRM || coalesce(E'\n  HINT: ' || nullif(h, ''), ''); END $f$;
CREATE ROLE sdc_owner;
CREATE ROLE sdc_reader BYPASSRLS;
CREATE SCHEMA sdc AUTHORIZATION sdc_owner;
GRANT USAGE ON SCHEMA sdc TO sdc_reader;
SET ROLE sdc_owner;
CREATE TABLE sdc.accounts (id int PRIMARY KEY, handle text UNIQUE, name text);
CREATE TABLE sdc.projects (
    id int PRIMARY KEY,
    account_id int NOT NULL REFERENCES sdc.accounts ON DELETE CASCADE,
    title text);
CREATE TABLE sdc.tasks (
    id int PRIMARY KEY,
    project_id int NOT NULL REFERENCES sdc.projects ON DELETE CASCADE,
    title text);
-- a child without soft delete
CREATE TABLE sdc.audit (
    id int PRIMARY KEY,
    account_id int REFERENCES sdc.accounts ON DELETE CASCADE);
-- a foreign key that depends on a unique constraint other than the key
CREATE TABLE sdc.handles (handle text REFERENCES sdc.accounts (handle));
INSERT INTO sdc.accounts VALUES (1, 'ann', 'Ann'), (2, 'bob', 'Bob');
INSERT INTO sdc.projects VALUES (10, 1, 'a1'), (11, 1, 'a2'), (20, 2, 'b1');
INSERT INTO sdc.tasks VALUES (100, 10, 't'), (101, 11, 't'), (200, 20, 't');
INSERT INTO sdc.audit VALUES (1, 1), (2, 2);

-- a child cannot go first: its parent's hard delete would orphan soft rows
SELECT pg_temp.err($$SELECT apicore.soft_delete_enable('sdc.projects')$$);
-- the parent first: the kept unique constraint and the plain child are reported
SELECT apicore.soft_delete_enable('sdc.accounts', archive_after => '1 hour', purge_after => '30 days');
SELECT apicore.soft_delete_enable('sdc.projects');
SELECT apicore.soft_delete_enable('sdc.tasks');
SELECT "table", kept_unique, partial_unique_indexes, archive_table::text, archive_after, purge_after
  FROM apicore.soft_delete_tables ORDER BY "table"::text;

-- one DELETE soft-deletes the account, its projects and their tasks
DELETE FROM sdc.accounts WHERE id = 1;
\echo deleted :ROW_COUNT
SELECT 'accounts' AS t, count(*) FROM sdc.accounts
UNION ALL SELECT 'projects', count(*) FROM sdc.projects
UNION ALL SELECT 'tasks', count(*) FROM sdc.tasks
UNION ALL SELECT 'audit', count(*) FROM sdc.audit;
-- children are marked with the parent's timestamp (same transaction)
GRANT SELECT ON ALL TABLES IN SCHEMA sdc TO sdc_reader;
RESET ROLE;
SET ROLE sdc_reader;
SELECT count(DISTINCT deleted_at) AS timestamps, count(*) AS marked_rows
  FROM (SELECT deleted_at FROM sdc.accounts WHERE deleted_at IS NOT NULL
        UNION ALL SELECT deleted_at FROM sdc.projects WHERE deleted_at IS NOT NULL
        UNION ALL SELECT deleted_at FROM sdc.tasks WHERE deleted_at IS NOT NULL) d;
RESET ROLE;
SET ROLE sdc_owner;
-- the kept unique constraint still holds for deleted rows
INSERT INTO sdc.accounts VALUES (3, 'ann', 'Ann again');

-- the parent cannot be disabled under soft-delete children
SELECT pg_temp.err($$SELECT apicore.soft_delete_disable('sdc.accounts')$$);

-- archival: rows deleted longer ago than archive_after move to accounts_archive
-- (the superuser backdates the deletion and runs maintenance)
DELETE FROM sdc.accounts WHERE id = 2;    -- deleted just now: stays
RESET ROLE;
UPDATE sdc.accounts SET deleted_at = now() - interval '2 hours' WHERE id = 1;
SELECT task, detail FROM apicore.run_maintenance() WHERE task = 'soft_delete_archive_purge';
SET ROLE sdc_owner;
GRANT SELECT ON sdc.accounts_archive TO sdc_reader;
RESET ROLE;
SET ROLE sdc_reader;
SELECT id, handle, deleted_at IS NOT NULL AS deleted FROM sdc.accounts_archive;
SELECT id, deleted_at IS NOT NULL AS deleted FROM sdc.accounts ORDER BY id;
-- the archive is hidden from everyone but apicore and BYPASSRLS roles,
-- its owner included
RESET ROLE;
SET ROLE sdc_owner;
SELECT count(*) AS owner_sees FROM sdc.accounts_archive;
-- a column added to the table reaches the archive on the next run
ALTER TABLE sdc.accounts ADD COLUMN plan text;
RESET ROLE;
UPDATE sdc.accounts SET deleted_at = now() - interval '2 hours' WHERE id = 2;
SELECT task, detail FROM apicore.run_maintenance() WHERE task = 'soft_delete_archive_purge';
SET ROLE sdc_reader;
SELECT id, plan FROM sdc.accounts_archive ORDER BY id;
-- archiving the parent removed the children it cascades to, soft or not
SELECT (SELECT count(*) FROM sdc.projects) AS projects, (SELECT count(*) FROM sdc.audit) AS audit;
RESET ROLE;

-- restore from the archive, as the owner
SET ROLE sdc_owner;
SELECT apicore.soft_delete_restore('sdc.accounts', '{"id": 1}') AS restored;
SELECT id, handle, deleted_at FROM sdc.accounts WHERE id = 1;
RESET ROLE;
SET ROLE sdc_reader;
SELECT count(*) AS still_archived FROM sdc.accounts_archive;
RESET ROLE;

-- purge: rows deleted longer ago than purge_after go, from table and archive
SET ROLE sdc_owner;
DELETE FROM sdc.accounts WHERE id = 1;
RESET ROLE;
UPDATE sdc.accounts_archive SET deleted_at = now() - interval '31 days';
SELECT task, detail FROM apicore.run_maintenance() WHERE task = 'soft_delete_archive_purge';
SET ROLE sdc_reader;
SELECT (SELECT count(*) FROM sdc.accounts_archive) AS archived,
       (SELECT count(*) FROM apicore.soft_delete_settings WHERE last_maintenance IS NOT NULL) AS recorded;
RESET ROLE;

-- batches: apicore.soft_delete_batch_size rows per table per run
SET ROLE sdc_owner;
INSERT INTO sdc.accounts (id, handle) SELECT g, 'h' || g FROM generate_series(1000, 1024) g;
DELETE FROM sdc.accounts WHERE id >= 1000;
RESET ROLE;
UPDATE sdc.accounts SET deleted_at = now() - interval '2 hours' WHERE id >= 1000;
SET apicore.soft_delete_batch_size = 10;
SELECT detail FROM apicore.run_maintenance() WHERE task = 'soft_delete_archive_purge';
SELECT detail FROM apicore.run_maintenance() WHERE task = 'soft_delete_archive_purge';
SELECT detail FROM apicore.run_maintenance() WHERE task = 'soft_delete_archive_purge';
SELECT detail FROM apicore.run_maintenance() WHERE task = 'soft_delete_archive_purge';
RESET apicore.soft_delete_batch_size;
SET ROLE sdc_reader;
SELECT count(*) AS archived FROM sdc.accounts_archive WHERE id >= 1000;
RESET ROLE;

-- a purge by key erases the children through ON DELETE CASCADE
SET ROLE sdc_owner;
INSERT INTO sdc.accounts (id, handle) VALUES (5, 'eve');
INSERT INTO sdc.projects VALUES (50, 5, 'e1');
INSERT INTO sdc.tasks VALUES (500, 50, 't');
DELETE FROM sdc.projects WHERE id = 50;
SELECT apicore.soft_delete_purge('sdc.accounts', '{"id": 5}') AS purged;
RESET ROLE;
SET ROLE sdc_reader;
SELECT (SELECT count(*) FROM sdc.projects WHERE id = 50) AS project,
       (SELECT count(*) FROM sdc.tasks WHERE id = 500) AS task;
RESET ROLE;

-- restoring a row restores what its delete cascaded to, and only that
SET ROLE sdc_owner;
INSERT INTO sdc.accounts (id, handle) VALUES (8, 'hal');
INSERT INTO sdc.projects VALUES (80, 8, 'kept'), (81, 8, 'deleted on its own');
INSERT INTO sdc.tasks (id, project_id, title) VALUES (800, 80, 't'), (810, 81, 't');
DELETE FROM sdc.projects WHERE id = 81;
DELETE FROM sdc.accounts WHERE id = 8;
SELECT (SELECT count(*) FROM sdc.projects WHERE account_id = 8) AS projects,
       (SELECT count(*) FROM sdc.tasks WHERE id IN (800, 810)) AS tasks;
SELECT apicore.soft_delete_restore('sdc.accounts', '{"id": 8}') AS restored;
SELECT id, title FROM sdc.projects WHERE account_id = 8 ORDER BY id;
SELECT id FROM sdc.tasks WHERE id IN (800, 810) ORDER BY id;
RESET ROLE;

-- TRUNCATE with apicore.allow_truncate
SET ROLE sdc_owner;
SET apicore.allow_truncate = on;
TRUNCATE sdc.tasks;
RESET apicore.allow_truncate;

-- an ON DELETE CASCADE added after enable, from a table without soft delete:
-- deleting the parent row is refused rather than orphaning soft-marked rows
CREATE TABLE sdc.labels (id int PRIMARY KEY);
INSERT INTO sdc.labels VALUES (1);
ALTER TABLE sdc.tasks ADD COLUMN label_id int REFERENCES sdc.labels ON DELETE CASCADE;
INSERT INTO sdc.accounts (id, handle) VALUES (7, 'gus');
INSERT INTO sdc.projects VALUES (70, 7, 'g1');
INSERT INTO sdc.tasks (id, project_id, title, label_id) VALUES (700, 70, 'labelled', 1);
SELECT pg_temp.err($$DELETE FROM sdc.labels WHERE id = 1$$);
GRANT SELECT ON sdc.labels TO sdc_reader;
RESET ROLE;
SET ROLE sdc_reader;
SELECT count(*) AS labels, (SELECT count(*) FROM sdc.tasks WHERE id = 700 AND deleted_at IS NULL) AS task_live
  FROM sdc.labels;
RESET ROLE;
SET ROLE sdc_owner;

-- the windows can change later; the archive is made when first needed
SELECT apicore.soft_delete_configure('sdc.projects', archive_after => '1 hour');
SELECT "table", archive_table::text, archive_after, purge_after
  FROM apicore.soft_delete_tables WHERE "table" = 'sdc.projects'::regclass;
SELECT apicore.soft_delete_configure('sdc.projects', purge_after => '1 day');
SELECT "table", archive_table::text, archive_after, purge_after
  FROM apicore.soft_delete_tables WHERE "table" = 'sdc.projects'::regclass;
SELECT pg_temp.err($$SELECT apicore.soft_delete_configure('sdc.audit', '1 day')$$);
SELECT pg_temp.err($$SELECT apicore.soft_delete_configure('sdc.projects', '2 days', '1 day')$$);

-- disable children first, then the parent
SELECT apicore.soft_delete_disable('sdc.tasks');
SELECT apicore.soft_delete_disable('sdc.projects');
SELECT apicore.soft_delete_disable('sdc.accounts');
SELECT count(*) AS triggers_left FROM pg_trigger WHERE tgname LIKE 'apicore%';

RESET ROLE;
DROP SCHEMA sdc CASCADE;
DROP ROLE sdc_owner, sdc_reader;
