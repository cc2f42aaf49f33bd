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
-- not yet: the original constraint's name (it became an index)
SELECT pg_temp.err($$INSERT INTO su.users VALUES (8, 'e@example.com', 1, 'e', 'E') ON CONFLICT ON CONSTRAINT users_email_key DO NOTHING$$);

-- after soft_delete_disable, the restored constraints infer as usual
RESET ROLE;
SET ROLE su_owner;
SELECT apicore.soft_delete_purge('su.users', '{"id": 2}') AS purged;
SELECT apicore.soft_delete_disable('su.users');
SET ROLE su_app;
INSERT INTO su.users VALUES (9, 'ann@example.com', 1, 'ann', 'Annie')
    ON CONFLICT (email) DO UPDATE SET name = excluded.name RETURNING id, name;
INSERT INTO su.users VALUES (9, 'ann@example.com', 1, 'ann', 'Annie')
    ON CONFLICT ON CONSTRAINT users_email_key DO NOTHING RETURNING id;
SELECT id, email, name FROM su.users ORDER BY id;

RESET ROLE;
DROP SCHEMA su CASCADE;
DROP ROLE su_owner, su_app;
