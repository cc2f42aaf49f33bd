-- ON CONFLICT on soft-delete tables, as ORMs write it (src/soft_delete_upsert.c).
-- soft_delete_enable turned UNIQUE (email) into a partial unique index on live
-- rows; `ON CONFLICT (email)` without a WHERE infers it all the same.  The table
-- owner su_owner and the application su_app are ordinary roles.
\set VERBOSITY default
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $f$ DECLARE h text; BEGIN EXECUTE q; RETURN 'no error'; EXCEPTION WHEN OTHERS THEN GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT; RETURN SQLSTATE || ': ' || SQLERRM || coalesce(E'\n  HINT: ' || nullif(h, ''), ''); END $f$;
CREATE ROLE su_owner;
CREATE ROLE su_app;
CREATE SCHEMA su AUTHORIZATION su_owner;
GRANT USAGE ON SCHEMA su TO su_app;

SET ROLE su_owner;
CREATE TABLE su.users (
    id int PRIMARY KEY,
    email text NOT NULL UNIQUE,
    org int NOT NULL,
    handle text NOT NULL,
    name text,
    UNIQUE (org, handle)
);
-- an ordinary partial unique index of the table's own: left alone
CREATE UNIQUE INDEX users_vip_name ON su.users (name) WHERE org = 0;
GRANT SELECT, INSERT, UPDATE, DELETE ON su.users TO su_app;
SELECT apicore.soft_delete_enable('su.users');
SET ROLE su_app;
INSERT INTO su.users VALUES (1, 'ann@example.com', 1, 'ann', 'Ann'), (2, 'bob@example.com', 1, 'bob', 'Bob');

-- the ORMs' default upserts: a new key inserts, an existing one updates
INSERT INTO su.users VALUES (3, 'cy@example.com', 1, 'cy', 'Cy')
    ON CONFLICT (email) DO UPDATE SET name = excluded.name RETURNING id, name;
INSERT INTO su.users VALUES (9, 'ann@example.com', 1, 'ann2', 'Ann B.')
    ON CONFLICT (email) DO UPDATE SET name = excluded.name RETURNING id, name;
INSERT INTO su.users VALUES (9, 'bob@example.com', 1, 'bob2', 'Robert')
    ON CONFLICT (email) DO NOTHING RETURNING id;
-- several columns, in any order
INSERT INTO su.users VALUES (9, 'x@example.com', 1, 'bob', 'Bobby')
    ON CONFLICT (handle, org) DO UPDATE SET name = excluded.name RETURNING id, name;
-- an explicit WHERE stays as written
INSERT INTO su.users VALUES (9, 'cy@example.com', 1, 'cy9', 'Cyrus')
    ON CONFLICT (email) WHERE deleted_at IS NULL DO UPDATE SET name = excluded.name RETURNING id, name;
-- prepared, generic plan (the extended protocol drivers use)
SET plan_cache_mode = force_generic_plan;
PREPARE up(int, text, text) AS INSERT INTO su.users VALUES ($1, $2, 1, $2, $3)
    ON CONFLICT (email) DO UPDATE SET name = excluded.name RETURNING id, name;
EXECUTE up(4, 'dee@example.com', 'Dee');
EXECUTE up(5, 'dee@example.com', 'Deirdre');
RESET plan_cache_mode;

-- a deleted row's unique value is free again, and an upsert on it inserts
DELETE FROM su.users WHERE id = 2;
INSERT INTO su.users VALUES (6, 'bob@example.com', 1, 'bob', 'New Bob')
    ON CONFLICT (email) DO UPDATE SET name = excluded.name RETURNING id, name;
INSERT INTO su.users VALUES (7, 'bob@example.com', 1, 'bob', 'Newer Bob')
    ON CONFLICT (email) DO UPDATE SET name = excluded.name RETURNING id, name;
SELECT id, email, name FROM su.users ORDER BY id;

-- columns of no unique index: PostgreSQL's own error, as without apicore
SELECT pg_temp.err($$INSERT INTO su.users VALUES (8, 'e@example.com', 1, 'e', 'E') ON CONFLICT (name) DO NOTHING$$);
-- the table's own partial index is inferred only with its own predicate
SELECT pg_temp.err($$INSERT INTO su.users VALUES (8, 'e@example.com', 0, 'e', 'Cy') ON CONFLICT (name) WHERE org = 0 DO NOTHING$$);

-- ON CONFLICT ON CONSTRAINT <the original name>.  The name is held by a
-- constraint trigger that never fires; information_schema does not list it.
SELECT conname, contype FROM pg_constraint
 WHERE conrelid = 'su.users'::regclass AND contype <> 'n' ORDER BY 1;
SELECT constraint_name, constraint_type FROM information_schema.table_constraints
 WHERE table_schema = 'su' AND table_name = 'users' AND constraint_type <> 'CHECK' ORDER BY 1;
INSERT INTO su.users VALUES (9, 'ann@example.com', 1, 'ann9', 'Ann C.')
    ON CONFLICT ON CONSTRAINT users_email_key DO UPDATE SET name = excluded.name RETURNING id, name;
INSERT INTO su.users VALUES (9, 'ann@example.com', 1, 'ann9', 'Ann D.')
    ON CONFLICT ON CONSTRAINT users_email_key DO NOTHING RETURNING id;
INSERT INTO su.users VALUES (9, 'new@example.com', 1, 'cy', 'Cy 2')
    ON CONFLICT ON CONSTRAINT users_org_handle_key DO UPDATE SET name = excluded.name RETURNING id, name;
EXPLAIN (COSTS OFF) INSERT INTO su.users VALUES (9, 'ann@example.com', 1, 'ann9', 'x')
    ON CONFLICT ON CONSTRAINT users_email_key DO NOTHING;
SET plan_cache_mode = force_generic_plan;
PREPARE upc(int, text, text) AS INSERT INTO su.users VALUES ($1, $2, 1, $2, $3)
    ON CONFLICT ON CONSTRAINT users_email_key DO UPDATE SET name = excluded.name RETURNING id, name;
EXECUTE upc(11, 'gil@example.com', 'Gil');
EXECUTE upc(12, 'gil@example.com', 'Gilbert');
RESET plan_cache_mode;
-- a deleted row's value is free again under the constraint's name too
DELETE FROM su.users WHERE id = 6;
INSERT INTO su.users VALUES (10, 'bob@example.com', 1, 'bob10', 'Bob 10')
    ON CONFLICT ON CONSTRAINT users_email_key DO UPDATE SET name = excluded.name RETURNING id, name;
-- a name that is not a replaced constraint: PostgreSQL's own error
SELECT pg_temp.err($$INSERT INTO su.users VALUES (20, 'x@example.com', 0, 'x', 'X') ON CONFLICT ON CONSTRAINT users_vip_name DO NOTHING$$);

-- The primary key stays unique over deleted rows: a deleted row's id is taken.
DELETE FROM su.users WHERE id = 3;
-- DO UPDATE on it: apicore's error, not a row-level security one
SELECT pg_temp.err($$INSERT INTO su.users VALUES (3, 'c3@example.com', 1, 'c3', 'C3') ON CONFLICT (id) DO UPDATE SET name = excluded.name RETURNING *$$);
SELECT pg_temp.err($$INSERT INTO su.users VALUES (3, 'c3@example.com', 1, 'c3', 'C3') ON CONFLICT ON CONSTRAINT users_pkey DO UPDATE SET name = excluded.name$$);
-- nor does an upsert restore the row
SELECT pg_temp.err($$INSERT INTO su.users VALUES (3, 'c3@example.com', 1, 'c3', 'C3') ON CONFLICT (id) DO UPDATE SET deleted_at = NULL$$);
-- DO NOTHING: the key is taken, nothing is inserted, as for a live row
INSERT INTO su.users VALUES (3, 'c3@example.com', 1, 'c3', 'C3') ON CONFLICT (id) DO NOTHING RETURNING id;
INSERT INTO su.users VALUES (3, 'c3@example.com', 1, 'c3', 'C3') ON CONFLICT DO NOTHING RETURNING id;
-- a batch ("skip duplicates"): the new row goes in, the taken key is skipped
INSERT INTO su.users VALUES (3, 'c3@example.com', 1, 'c3', 'C3'), (13, 'h@example.com', 1, 'h', 'H')
    ON CONFLICT (id) DO NOTHING RETURNING id;
-- a plain INSERT: PostgreSQL's unique violation
SELECT pg_temp.err($$INSERT INTO su.users VALUES (3, 'c3@example.com', 1, 'c3', 'C3')$$);
-- another target kept over every row (the table's own partial index): the
-- error names its columns, not the hidden row's key
INSERT INTO su.users VALUES (14, 'vip@example.com', 0, 'vip', 'VIP');
DELETE FROM su.users WHERE id = 14;
SELECT pg_temp.err($$INSERT INTO su.users VALUES (15, 'vip2@example.com', 0, 'vip2', 'VIP') ON CONFLICT (name) WHERE org = 0 DO UPDATE SET email = excluded.email RETURNING *$$);
-- as the hint says: the owner restores the row, and the upsert then updates it
RESET ROLE;
SET ROLE su_owner;
SELECT apicore.soft_delete_restore('su.users', '{"id": 3}') AS restored;
SET ROLE su_app;
INSERT INTO su.users VALUES (3, 'c3@example.com', 1, 'c3', 'C3')
    ON CONFLICT (id) DO UPDATE SET name = excluded.name RETURNING id, email, name;

-- Attacks.  A role without privileges on the table, and one that may insert
-- and read only the id: the constraint's name resolves to the index's
-- columns, which must be readable, as a constraint's are.
RESET ROLE;
CREATE ROLE su_other;
CREATE ROLE su_reader;
GRANT USAGE ON SCHEMA su TO su_other, su_reader;
GRANT INSERT, SELECT (id) ON su.users TO su_reader;
SET ROLE su_other;
SELECT pg_temp.err($$INSERT INTO su.users VALUES (20, 'ann@example.com', 1, 'x', 'X') ON CONFLICT ON CONSTRAINT users_email_key DO UPDATE SET name = 'taken'$$);
SELECT pg_temp.err($$INSERT INTO su.users VALUES (20, 'ann@example.com', 1, 'x', 'X') ON CONFLICT ON CONSTRAINT users_email_key DO NOTHING$$);
RESET ROLE;
SET ROLE su_reader;
SELECT pg_temp.err($$INSERT INTO su.users VALUES (20, 'ann@example.com', 1, 'x', 'X') ON CONFLICT ON CONSTRAINT users_email_key DO NOTHING$$);
SELECT pg_temp.err($$INSERT INTO su.users VALUES (20, 'ann@example.com', 1, 'x', 'X') ON CONFLICT (email) DO NOTHING$$);
SELECT pg_temp.err($$INSERT INTO su.users VALUES (3, 'ann@example.com', 1, 'x', 'X') ON CONFLICT (id) DO UPDATE SET name = 'taken'$$);
INSERT INTO su.users VALUES (1, 'a1@example.com', 1, 'a1', 'A1') ON CONFLICT (id) DO NOTHING RETURNING id;
RESET ROLE;
SET ROLE su_app;
-- nothing above changed a row, and deleted rows stay hidden
SELECT id, email, name FROM su.users ORDER BY id;

-- after soft_delete_disable, the constraints are back under their names
RESET ROLE;
SET ROLE su_owner;
SELECT apicore.soft_delete_purge('su.users', '{"id": 2}') + apicore.soft_delete_purge('su.users', '{"id": 6}') AS purged;
SELECT apicore.soft_delete_disable('su.users');
SELECT conname, contype FROM pg_constraint
 WHERE conrelid = 'su.users'::regclass AND contype <> 'n' ORDER BY 1;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'su.users'::regclass;
SET ROLE su_app;
INSERT INTO su.users VALUES (9, 'ann@example.com', 1, 'ann', 'Annie')
    ON CONFLICT (email) DO UPDATE SET name = excluded.name RETURNING id, name;
INSERT INTO su.users VALUES (9, 'ann@example.com', 1, 'ann', 'Annie')
    ON CONFLICT ON CONSTRAINT users_email_key DO NOTHING RETURNING id;
INSERT INTO su.users VALUES (9, 'ann@example.com', 1, 'ann', 'Ann')
    ON CONFLICT ON CONSTRAINT users_email_key DO UPDATE SET name = excluded.name RETURNING id, name;
SELECT id, email, name FROM su.users ORDER BY id;

RESET ROLE;
DROP SCHEMA su CASCADE;
DROP ROLE su_owner, su_app, su_other, su_reader;
