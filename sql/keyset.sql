-- keyset_page (API.md section 2): envelopes, walking a 10,000-row table
-- forward and backward with mixed directions and NULLs (also while rows are
-- inserted), filters, cursor binding, settings, privileges and RLS, index
-- use, and bad input.

-- The suite runs as an application role that owns its tables, with only
-- what the README lists for apicore: USAGE on schema apicore and EXECUTE on
-- keyset_page, keyset_page_explain, keyset_page_rows and cursor_encode (PUBLIC has both by
-- default; granted here all the same).  Creating roles is a superuser's.
CREATE ROLE ks_app;
CREATE SCHEMA ks_app AUTHORIZATION ks_app;
GRANT USAGE ON SCHEMA apicore TO ks_app;
GRANT EXECUTE ON FUNCTION apicore.keyset_page(regclass, text, text, int, jsonb),
  apicore.keyset_page_explain(regclass, text, text, int, jsonb),
  apicore.keyset_page_rows(anyelement, text, text, int, jsonb),
  apicore.cursor_encode(record, text, interval) TO ks_app;
SET ROLE ks_app;
SET search_path = ks_app;

CREATE FUNCTION sqlstate_of(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE stmt;
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE;
END $$;

-- 10,000 rows; a and b are nullable and full of ties, id is the primary key
CREATE TABLE ks_items (
  id      bigint PRIMARY KEY,
  a       int,
  b       text,
  t       timestamptz NOT NULL,
  status  text NOT NULL
);
INSERT INTO ks_items
SELECT i,
       CASE WHEN i % 11 = 0 THEN NULL ELSE i % 37 END,
       CASE WHEN i % 13 = 0 THEN NULL ELSE 'b' || (i % 7) END,
       '2026-01-01 00:00:00+00'::timestamptz + (i % 1000) * interval '1.000001 second',
       CASE WHEN i % 3 = 0 THEN 'paid' ELSE 'open' END
  FROM generate_series(1, 10000) i;
ANALYZE ks_items;

-- the envelope of a first page
SELECT jsonb_array_length(p->'data') AS rows, p->'has_more' AS has_more,
       p->>'next_cursor' IS NOT NULL AS has_next, p->'prev_cursor' AS prev_cursor,
       p->'data'->0 AS first_row
  FROM apicore.keyset_page('ks_items', 'id', NULL, 3) p;

/*
 * Walk every page forward, then back from the last page through
 * prev_cursor, and check: every row exactly once, in the order of
 * ORDER BY <order_by>, <appended> (the primary key keyset_page appends, in
 * the direction of the last column); the same rows backward in reverse.
 * With insert_every > 0, a row is inserted after every that many pages.
 */
CREATE FUNCTION ks_walk(order_by text, page_size int, insert_every int DEFAULT 0,
                        appended text DEFAULT 'id')
RETURNS TABLE (pages int, rows_forward bigint, distinct_forward bigint, in_order bool,
               rows_backward bigint, backward_is_reverse bool, all_original_rows bool,
               last_has_more bool)
LANGUAGE plpgsql AS $$
DECLARE
  page jsonb;
  cur text;
  seen bigint[] := '{}';
  back bigint[] := '{}';
  expected bigint[];
  next_id bigint := 1000000;
BEGIN
  pages := 0;
  LOOP
    page := apicore.keyset_page('ks_items', order_by, cur, page_size);
    pages := pages + 1;
    seen := seen || ARRAY(SELECT (r->>'id')::bigint FROM jsonb_array_elements(page->'data') r);
    IF insert_every > 0 AND pages % insert_every = 0 THEN
      -- new rows land before, inside and after the current position
      INSERT INTO ks_items VALUES
        (next_id, pages % 37, 'b' || (pages % 7), now(), 'open'),
        (next_id + 1, NULL, NULL, now(), 'open');
      next_id := next_id + 2;
    END IF;
    EXIT WHEN NOT (page->>'has_more')::bool;
    cur := page->>'next_cursor';
  END LOOP;
  last_has_more := (page->>'has_more')::bool;
  rows_forward := cardinality(seen);
  distinct_forward := (SELECT count(DISTINCT x) FROM unnest(seen) x);
  EXECUTE format('SELECT array_agg(id ORDER BY %s, %s) FROM ks_items WHERE id = ANY($1)', order_by, appended)
    INTO expected USING seen;
  in_order := expected = seen;
  all_original_rows := (SELECT count(*) FROM unnest(seen) x WHERE x <= 10000) = 10000;

  -- backward from the last page: its prev_cursor, then each page's
  back := ARRAY(SELECT (r->>'id')::bigint FROM jsonb_array_elements(page->'data') r);
  cur := page->>'prev_cursor';
  WHILE cur IS NOT NULL LOOP
    page := apicore.keyset_page('ks_items', order_by, cur, page_size);
    back := ARRAY(SELECT (r->>'id')::bigint FROM jsonb_array_elements(page->'data') r) || back;
    cur := CASE WHEN (page->>'has_more')::bool THEN page->>'prev_cursor' END;
  END LOOP;
  rows_backward := cardinality(back);
  EXECUTE format('SELECT array_agg(id ORDER BY %s, %s) FROM ks_items', order_by, appended) INTO expected;
  backward_is_reverse := back = expected;
  RETURN NEXT;
END $$;

-- mixed directions, NULLs first and last, ties broken by the appended id;
-- indexes for some walks (the results must not depend on the plan)
CREATE INDEX ks_walk_1 ON ks_items (a NULLS FIRST, b DESC, id DESC);
CREATE INDEX ks_walk_2 ON ks_items (b DESC, t, a, id);
SELECT * FROM ks_walk('a ASC NULLS FIRST, b DESC', 37, 0, 'id DESC');
SELECT * FROM ks_walk('a DESC NULLS LAST, b ASC NULLS FIRST', 100);
SELECT * FROM ks_walk('b DESC, t, a', 64);
SELECT * FROM ks_walk('t DESC', 99, 0, 'id DESC');
-- while rows are inserted between pages: no original row lost or repeated
SELECT * FROM ks_walk('a ASC NULLS FIRST, b DESC', 50, 3, 'id DESC');
DELETE FROM ks_items WHERE id > 10000;
SELECT * FROM ks_walk('t DESC, a', 50, 2);
DELETE FROM ks_items WHERE id > 10000;

DROP INDEX ks_walk_1, ks_walk_2;

-- the envelope of a middle page, and of the page before it
SELECT p->>'next_cursor' AS c FROM apicore.keyset_page('ks_items', 'id DESC', NULL, 2) p \gset
SELECT (SELECT array_agg(r->>'id') FROM jsonb_array_elements(p->'data') r) AS ids,
       p->'has_more' AS has_more, p->>'next_cursor' IS NOT NULL AS has_next,
       p->>'prev_cursor' IS NOT NULL AS has_prev
  FROM apicore.keyset_page('ks_items', 'id DESC', :'c', 2) p;
SELECT p->>'prev_cursor' AS c FROM apicore.keyset_page('ks_items', 'id DESC', :'c', 2) p \gset
SELECT (SELECT array_agg(r->>'id') FROM jsonb_array_elements(p->'data') r) AS ids,
       p->'has_more' AS has_more, p->>'next_cursor' IS NOT NULL AS has_next,
       p->'prev_cursor' AS prev_cursor
  FROM apicore.keyset_page('ks_items', 'id DESC', :'c', 2) p;
-- the last page: has_more false, no next_cursor
SELECT p->'has_more' AS has_more, p->'next_cursor' AS next_cursor, jsonb_array_length(p->'data') AS rows
  FROM apicore.keyset_page('ks_items', 'id', NULL, 100, '{"id": [1, 2, 3]}') p;
-- an empty relation
CREATE TABLE ks_empty (id int PRIMARY KEY);
SELECT apicore.keyset_page('ks_empty', 'id');
DROP TABLE ks_empty;

-- page sizes: NULL is apicore.default_page_size, larger ones are capped at
-- apicore.max_page_size
SELECT jsonb_array_length(apicore.keyset_page('ks_items', 'id')->'data') AS default_rows;
SELECT jsonb_array_length(apicore.keyset_page('ks_items', 'id', NULL, 1000)->'data') AS capped_rows;
SET apicore.default_page_size = 7;
SET apicore.max_page_size = 5;
SELECT jsonb_array_length(apicore.keyset_page('ks_items', 'id')->'data') AS default_over_max;
SELECT jsonb_array_length(apicore.keyset_page('ks_items', 'id', NULL, 3)->'data') AS three;
RESET apicore.default_page_size;
RESET apicore.max_page_size;
SELECT apicore.keyset_page('ks_items', 'id', NULL, 0);
SELECT apicore.keyset_page('ks_items', 'id', NULL, -5);
SET apicore.max_page_size = 0;

-- filters: equality, IN from an array, NULL, several columns
SELECT count(*) AS rows, bool_and(r->>'status' = 'paid') AS all_paid
  FROM jsonb_array_elements(apicore.keyset_page('ks_items', 'id', NULL, 100, '{"status": "paid"}')->'data') r;
SELECT array_agg((r->>'id')::int ORDER BY (r->>'id')::int) AS ids
  FROM jsonb_array_elements(apicore.keyset_page('ks_items', 'id', NULL, 100,
         '{"id": [5, 6, 7, 99999], "status": ["open", "paid"]}')->'data') r;
SELECT count(*) AS rows, bool_and(r->'a' = 'null') AS all_null
  FROM jsonb_array_elements(apicore.keyset_page('ks_items', 'id', NULL, 100, '{"a": null}')->'data') r;
SELECT array_agg((r->>'id')::int) AS ids
  FROM jsonb_array_elements(apicore.keyset_page('ks_items', 'id', NULL, 5, '{"a": 3, "b": "b3"}')->'data') r;
-- a filtered walk: every paid row once
DO $$
DECLARE page jsonb; cur text; n int := 0;
BEGIN
  LOOP
    page := apicore.keyset_page('ks_items', 'b DESC, a', cur, 100, '{"status": "paid"}');
    n := n + jsonb_array_length(page->'data');
    EXIT WHEN NOT (page->>'has_more')::bool;
    cur := page->>'next_cursor';
  END LOOP;
  RAISE NOTICE 'paid rows walked: %, paid rows: %', n, (SELECT count(*) FROM ks_items WHERE status = 'paid');
END $$;

-- cursors are bound to (relation, order_by, filter): 34000 elsewhere
SELECT p->>'next_cursor' AS c FROM apicore.keyset_page('ks_items', 'a, b', NULL, 5, '{"status": "paid"}') p \gset
SELECT jsonb_array_length(apicore.keyset_page('ks_items', 'a, b', :'c', 5, '{"status": "paid"}')->'data') AS same_binding;
-- the same sort written differently is the same binding
SELECT jsonb_array_length(apicore.keyset_page('ks_items', ' A  asc,"b" ASC NULLS LAST', :'c', 5, '{"status": "paid"}')->'data') AS same_sort;
SELECT apicore.keyset_page('ks_items', 'a, b', :'c', 5, '{"status": "open"}');
SELECT sqlstate_of(format('SELECT apicore.keyset_page(%L, %L, %L, 5, %L)', rel, ord, :'c', flt)) AS outcome, rel, ord, flt
  FROM (VALUES ('ks_items', 'a, b DESC', '{"status": "paid"}'),
               ('ks_items', 'a DESC, b', '{"status": "paid"}'),
               ('ks_items', 'a, b NULLS FIRST', '{"status": "paid"}'),
               ('ks_items', 'a, b', NULL),
               ('ks_items', 'a, b', '{"status": ["paid"]}'),
               ('ks_items', 'a, b', '{"status": "paid", "a": 1}'),
               ('ks_items', 'a, b, id DESC', '{"status": "paid"}')) v(rel, ord, flt);
-- a cursor from cursor_encode is not a page cursor
SELECT apicore.keyset_page('ks_items', 'id', apicore.cursor_encode(ROW(5::bigint)));
-- tampered and garbage cursors
SELECT apicore.keyset_page('ks_items', 'a, b', 'garbage', 5, '{"status": "paid"}');
SELECT apicore.keyset_page('ks_items', 'a, b', '', 5, '{"status": "paid"}');
SELECT sqlstate_of(format('SELECT apicore.keyset_page(%L, %L, %L, 5, %L)', 'ks_items', 'a, b', left(:'c', -1), '{"status": "paid"}')) AS truncated;

-- order_by is parsed, never interpolated: 42601 / 42703 / 42883
SELECT apicore.keyset_page('ks_items', 'id; DROP TABLE ks_items');
SELECT apicore.keyset_page('ks_items', 'id) UNION SELECT 1 --');
SELECT apicore.keyset_page('ks_items', 'id DESC, (SELECT 1)');
SELECT apicore.keyset_page('ks_items', 'id ASC DESC');
SELECT apicore.keyset_page('ks_items', 'id NULLS');
SELECT apicore.keyset_page('ks_items', 'id,');
SELECT apicore.keyset_page('ks_items', '');
SELECT apicore.keyset_page('ks_items', 'a, A');
SELECT apicore.keyset_page('ks_items', '"id');
SELECT apicore.keyset_page('ks_items', 'nope');
SELECT apicore.keyset_page('ks_items', '"ID"');
SELECT apicore.keyset_page('ks_items', 'ctid');
SELECT apicore.keyset_page('ks_items', 'pg_sleep(10)');
SELECT count(*) AS ks_items_still_there FROM ks_items;
-- identifiers that need quoting work when quoted
CREATE TABLE ks_odd ("Odd ""Name""" int PRIMARY KEY, "select" text);
INSERT INTO ks_odd VALUES (1, 'x'), (2, 'y');
SELECT p->'data' AS data, p->'has_more' AS has_more
  FROM apicore.keyset_page('ks_odd', '"Odd ""Name""" DESC', NULL, 1) p;
SELECT apicore.keyset_page('ks_odd', '"select"', NULL, 1)->'data';
-- a type without ordering
CREATE TABLE ks_json (id int PRIMARY KEY, doc json);
SELECT apicore.keyset_page('ks_json', 'doc');
DROP TABLE ks_odd, ks_json;

-- filter errors: 22023 / 42703 / 22P02
SELECT apicore.keyset_page('ks_items', 'id', NULL, 5, '[1, 2]');
SELECT apicore.keyset_page('ks_items', 'id', NULL, 5, '"paid"');
SELECT apicore.keyset_page('ks_items', 'id', NULL, 5, '{"nope": 1}');
SELECT apicore.keyset_page('ks_items', 'id', NULL, 5, '{"status": {"$ne": "paid"}}');
SELECT apicore.keyset_page('ks_items', 'id', NULL, 5, '{"status": [["paid"]]}');
SELECT apicore.keyset_page('ks_items', 'id', NULL, 5, '{"a": "1 OR 1=1"}');
SELECT apicore.keyset_page('ks_items', 'id', NULL, 5, '{"a": "2"}')->'data'->0->'a' AS string_to_int;

-- NULL arguments
SELECT apicore.keyset_page(NULL, 'id');
SELECT apicore.keyset_page('ks_items', NULL);
SELECT apicore.keyset_page('no_such_table', 'id');

-- the primary key is appended only when the sort is not unique
CREATE TABLE ks_nopk (x int, y int NOT NULL);
INSERT INTO ks_nopk SELECT i % 3, i FROM generate_series(1, 6) i;
SELECT apicore.keyset_page('ks_nopk', 'x');
CREATE UNIQUE INDEX ON ks_nopk (y);
SELECT (SELECT array_agg(r->>'y') FROM jsonb_array_elements(p->'data') r) AS ys
  FROM apicore.keyset_page('ks_nopk', 'x DESC, y') p;
CREATE VIEW ks_view AS SELECT * FROM ks_items;
SELECT apicore.keyset_page('ks_view', 'id');
DROP VIEW ks_view;
DROP TABLE ks_nopk;
CREATE SEQUENCE ks_seq;
SELECT apicore.keyset_page('ks_seq', 'last_value');
DROP SEQUENCE ks_seq;

-- the caller's privileges and row-level security
RESET ROLE;
CREATE ROLE ks_reader;
GRANT USAGE ON SCHEMA ks_app TO ks_reader;
SET ROLE ks_app;
CREATE TABLE ks_tenant (id int PRIMARY KEY, tenant text NOT NULL);
INSERT INTO ks_tenant SELECT i, CASE WHEN i % 2 = 0 THEN 'even' ELSE 'odd' END FROM generate_series(1, 10) i;
ALTER TABLE ks_tenant ENABLE ROW LEVEL SECURITY;
CREATE POLICY ks_even ON ks_tenant FOR SELECT TO ks_reader USING (tenant = 'even');
SET ROLE ks_reader;
SELECT apicore.keyset_page('ks_tenant', 'id');
SET ROLE ks_app;
GRANT SELECT ON ks_tenant TO ks_reader;
SET ROLE ks_reader;
SELECT (SELECT array_agg(r->>'id') FROM jsonb_array_elements(p->'data') r) AS visible_ids
  FROM apicore.keyset_page('ks_tenant', 'id DESC') p;
SELECT array_agg((p.item).id) AS visible_ids_as_rows FROM apicore.keyset_page_rows(NULL::ks_tenant, 'id DESC') p;
SET ROLE ks_app;
SELECT (SELECT count(*) FROM jsonb_array_elements(p->'data') r) AS owner_sees
  FROM apicore.keyset_page('ks_tenant', 'id DESC') p;
DROP TABLE ks_tenant;
RESET ROLE;
DROP OWNED BY ks_reader;
DROP ROLE ks_reader;
SET ROLE ks_app;

-- an index scan, not a full sort, when an index matches
CREATE INDEX ks_items_t_id ON ks_items (t, id);
CREATE TABLE ks_mixed (id bigint PRIMARY KEY, a int NOT NULL, t timestamptz NOT NULL);
INSERT INTO ks_mixed SELECT i, i % 50, '2026-01-01'::timestamptz + i * interval '1 minute' FROM generate_series(1, 10000) i;
CREATE INDEX ks_mixed_a_t_id ON ks_mixed (a, t DESC, id);
ANALYZE ks_items;
ANALYZE ks_mixed;
-- first page
SELECT unnest(apicore.keyset_page_explain('ks_items', 't DESC', NULL, 20)) AS plan;
-- a later page: the position is the index's start key (a row comparison)
SELECT p->>'next_cursor' AS c FROM apicore.keyset_page('ks_items', 't DESC', NULL, 20) p \gset
SELECT regexp_replace(line, '''[^'']*''', '...', 'g') AS plan
  FROM unnest(apicore.keyset_page_explain('ks_items', 't DESC', :'c', 20)) line;
-- mixed directions with a matching index: the first column bounds the scan
SELECT p->>'next_cursor' AS c FROM apicore.keyset_page('ks_mixed', 'a, t DESC, id', NULL, 20) p \gset
SELECT regexp_replace(line, '''[^'']*''', '...', 'g') AS plan
  FROM unnest(apicore.keyset_page_explain('ks_mixed', 'a, t DESC, id', :'c', 20)) line;
-- and the walk over it is still exact
DO $$
DECLARE page jsonb; cur text; seen bigint[] := '{}';
BEGIN
  LOOP
    page := apicore.keyset_page('ks_mixed', 'a, t DESC', cur, 100);
    seen := seen || ARRAY(SELECT (r->>'id')::bigint FROM jsonb_array_elements(page->'data') r);
    EXIT WHEN NOT (page->>'has_more')::bool;
    cur := page->>'next_cursor';
  END LOOP;
  RAISE NOTICE 'ks_mixed walked: % rows, in order: %', cardinality(seen),
    seen = (SELECT array_agg(id ORDER BY a, t DESC, id DESC) FROM ks_mixed);
END $$;
DROP TABLE ks_mixed;

-- keyset_page_rows: the same pages as the table's row type.  Walked to the
-- end with its own cursors, each page has exactly the rows keyset_page returns
-- for that cursor (cursors carry a random nonce, so they are compared by use)
DO $$
DECLARE cur text; pages int := 0; same bool := true; rows_seen bigint := 0;
        via_rows jsonb; more bool; next text; page jsonb;
BEGIN
  LOOP
    SELECT coalesce(jsonb_agg(to_jsonb(p.item)), '[]'), bool_and(p.has_more), max(p.next_cursor)
      INTO via_rows, more, next
      FROM apicore.keyset_page_rows(NULL::ks_items, 'a DESC, b', cur, 700) p;
    page := apicore.keyset_page('ks_items', 'a DESC, b', cur, 700);
    same := same AND via_rows = page->'data' AND more = (page->>'has_more')::bool
            AND (next IS NULL) = (page->>'next_cursor' IS NULL);
    pages := pages + 1;
    rows_seen := rows_seen + jsonb_array_length(via_rows);
    EXIT WHEN NOT more OR NOT same;
    cur := next;
  END LOOP;
  RAISE NOTICE 'keyset_page_rows: % pages, % rows, each page the same as keyset_page: %',
    pages, rows_seen, same;
END $$;
-- values a JSON number cannot carry exactly through a double come back exact
-- and typed, whatever the session's extra_float_digits
CREATE TABLE ks_exact (id bigint PRIMARY KEY, n numeric, f float8, r real, t timestamptz,
                       a int[], b bytea, j jsonb);
INSERT INTO ks_exact VALUES
  (9007199254740993, 123456789012345678901234567890.000000000000000001, 0.1 + 0.2, 1.1,
   '2026-01-01 12:00:00.000001+00', '{1,NULL,3}', '\x00ff', '{"x": 12345678901234567890}'),
  (9223372036854775807, 'NaN', 'Infinity', '-Infinity', 'infinity', '{}', '', '[]'),
  (-9223372036854775808, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
SET extra_float_digits = 0;
SELECT pg_typeof(p.item) AS row_type, (p.item).id, (p.item).n,
       (p.item).f IS NOT DISTINCT FROM e.f AS f_exact, (p.item).r IS NOT DISTINCT FROM e.r AS r_exact,
       (p.item).t IS NOT DISTINCT FROM e.t AS t_exact, (p.item).a IS NOT DISTINCT FROM e.a AS a_same,
       (p.item).b IS NOT DISTINCT FROM e.b AS b_same, (p.item).j IS NOT DISTINCT FROM e.j AS j_same,
       p.has_more
  FROM apicore.keyset_page_rows(NULL::ks_exact, 'id', NULL, 3) p JOIN ks_exact e ON e.id = (p.item).id;
RESET extra_float_digits;
-- the one thing jsonb cannot tell apart: a jsonb column holding JSON null
-- comes back as SQL NULL (keyset_page's data has the same "j": null for both)
UPDATE ks_exact SET j = 'null' WHERE id = 9223372036854775807;
SELECT (p.item).j IS NULL AS json_null_is_sql_null
  FROM apicore.keyset_page_rows(NULL::ks_exact, 'id', NULL, 1, '{"id": 9223372036854775807}') p;
-- an empty page has no row
SELECT count(*) AS rows_of_empty_page
  FROM apicore.keyset_page_rows(NULL::ks_exact, 'id', NULL, 10, '{"id": 5}') p;
DROP TABLE ks_exact;
-- bad arguments: not a table's row type, an untyped NULL, keyset_page's own checks
SELECT sqlstate_of($$SELECT * FROM apicore.keyset_page_rows(NULL::int, 'id')$$) AS scalar_type;
SELECT sqlstate_of($$SELECT * FROM apicore.keyset_page_rows(NULL, 'id')$$) AS untyped_null;
SELECT sqlstate_of($$SELECT * FROM apicore.keyset_page_rows(NULL::ks_items, 'nope')$$) AS bad_order_by;
SELECT sqlstate_of($$SELECT * FROM apicore.keyset_page_rows(NULL::ks_items, 'id', 'garbage')$$) AS bad_cursor;
SELECT * FROM apicore.keyset_page_rows(NULL::int, 'id');

DROP FUNCTION ks_walk(text, int, int, text);
DROP TABLE ks_items;
DROP FUNCTION sqlstate_of(text);
RESET ROLE;
DROP OWNED BY ks_app;
DROP ROLE ks_app;
