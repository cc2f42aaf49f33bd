-- Opaque cursors (API.md section 2): round trips, size, tampering, expiry,
-- type checks, keys.  Cursors are random, so outputs show lengths and
-- outcomes, never cursor text.

-- the test role may be named like the apicore schema ("$user"): be explicit
SET search_path = public;

-- a small helper: the SQLSTATE a statement raises, or 'ok'
CREATE FUNCTION sqlstate_of(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE stmt;
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE;
END $$;

-- The suite runs as an application role with only what the README lists:
-- USAGE on schema apicore and EXECUTE on cursor_encode/cursor_decode (PUBLIC
-- has both by default; granted here all the same).  Reading and rotating
-- keys is a superuser's: those steps say so.
CREATE ROLE cursor_app;
CREATE SCHEMA cursor_app AUTHORIZATION cursor_app;
GRANT USAGE ON SCHEMA apicore TO cursor_app;
GRANT EXECUTE ON FUNCTION apicore.cursor_encode(record, text, interval),
  apicore.cursor_decode(text, text) TO cursor_app;
-- the test's window on the key table, as the superuser
CREATE FUNCTION public.cursor_keys(OUT keys bigint, OUT min_key_id int) LANGUAGE sql
  SECURITY DEFINER SET search_path = pg_catalog
  AS $$ SELECT count(*), min(key_id) FROM apicore.cursor_key $$;
SET ROLE cursor_app;
SET search_path = cursor_app, public;

-- no key exists before the first cursor; the first encode creates exactly one
SELECT keys AS keys_before FROM cursor_keys();
SELECT apicore.cursor_encode(ROW(1)) IS NOT NULL AS encoded;
SELECT keys AS keys_after, min_key_id AS key_id FROM cursor_keys();

-- (timestamptz, bigint): at most 80 characters, URL-safe base64, no padding
SELECT c ~ '^[A-Za-z0-9_-]+$' AS url_safe, length(c) <= 80 AS at_most_80, length(c)
  FROM (SELECT apicore.cursor_encode(ROW('2026-11-27 18:00:00.123456+00'::timestamptz, 123456789::bigint), 'orders') AS c) s;
-- the README's length claims, at the edges of each: at most 80 characters for
-- any bigint with any timestamp from the year 859 to 3140 (7 payload bytes
-- hold +-2^55 microseconds around 2000: 0858-04-17 to 3141-09-15), at most 82
-- for any values at all, and a ttl of up to 1,000 years adds at most 7
SELECT max(length(apicore.cursor_encode(ROW(t, i), 'orders'))) AS longest_859_to_3140
  FROM unnest(ARRAY['0859-01-01 00:00:00+00', '1970-01-01 00:00:00+00', '2026-11-27 18:00:00.999999+00',
                    '3140-12-31 23:59:59.999999+00']::timestamptz[]) t,
       unnest(ARRAY['-9223372036854775808', '-1', '0', '9223372036854775807']::bigint[]) i;
SELECT max(length(apicore.cursor_encode(ROW(t, i), 'orders'))) AS longest_any
  FROM unnest(ARRAY['-infinity', '4714-11-24 00:00:00+00 BC', '0858-01-01 00:00:00+00', '3141-12-31 00:00:00+00',
                    '294276-12-31 23:59:59.999999+00', 'infinity']::timestamptz[]) t,
       unnest(ARRAY['-9223372036854775808', '9223372036854775807']::bigint[]) i;
SELECT max(length(apicore.cursor_encode(r, 'orders', ttl)) - length(apicore.cursor_encode(r, 'orders')))
       AS most_chars_a_ttl_adds
  FROM (VALUES (ROW(NULL::timestamptz, NULL::bigint)), (ROW('2026-01-01 00:00:00+00'::timestamptz, 0::bigint)),
               (ROW('2026-11-27 18:00:00.123456+00'::timestamptz, 123456789::bigint)),
               (ROW('3140-12-31 23:59:59.999999+00'::timestamptz, '9223372036854775807'::bigint)),
               (ROW('infinity'::timestamptz, '-9223372036854775808'::bigint))) v(r),
       unnest(ARRAY['1 second', '1 hour', '30 days', '1000 years']::interval[]) ttl;

-- round trips: microseconds, the bigint range, NULLs
SELECT * FROM apicore.cursor_decode(
  apicore.cursor_encode(ROW('2026-11-27 18:00:00.123456+00'::timestamptz, 123456789::bigint), 'orders'),
  'orders') AS c(created_at timestamptz, id bigint);
SELECT * FROM apicore.cursor_decode(
  apicore.cursor_encode(ROW('1999-12-31 23:59:59.999999+00'::timestamptz, '-9223372036854775808'::bigint)))
  AS c(created_at timestamptz, id bigint);
SELECT * FROM apicore.cursor_decode(apicore.cursor_encode(ROW(NULL::timestamptz, NULL::bigint)))
  AS c(created_at timestamptz, id bigint);

-- numeric keeps every digit and its scale, NaN and the infinities
SELECT n, n::text = d::text AS same_text
  FROM (VALUES ('0'::numeric), ('-0.000'), ('123456789012345678901234567890.123456789'),
               ('1e-100'), ('NaN'), ('Infinity'), ('-Infinity')) v(n),
  LATERAL apicore.cursor_decode(apicore.cursor_encode(ROW(n))) AS c(d numeric);

-- uuid, bool, float8 (incl. -0 and NaN), date, interval, bytea, jsonb, arrays
SELECT * FROM apicore.cursor_decode(apicore.cursor_encode(ROW(
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, true, false, '-0'::float8, 'NaN'::float8,
    '2026-02-28'::date, '1 year 2 mons 3 days 04:05:06.789'::interval, '\x00ff'::bytea,
    '{"b": [1, 2.5, null]}'::jsonb, ARRAY[1, NULL, 3]::int[], 32767::int2, 'x'::"char")))
  AS c(u uuid, t bool, f bool, z float8, nan float8, d date, i interval, b bytea, j jsonb,
       a int[], s int2, ch "char");

-- text with any characters: every control character but NUL, quotes,
-- backslashes, emoji, combining marks, a long string
CREATE TABLE cursor_texts (label text, value text);
INSERT INTO cursor_texts VALUES
  ('controls', (SELECT string_agg(chr(i), '') FROM generate_series(1, 31) i)),
  ('quotes', E'\'"\\`$$'),
  ('emoji', 'ok 😀👍🏽 é e' || chr(769) || ' 中文 עברית'),
  ('empty', ''),
  ('long', repeat('abc😀', 300)),
  ('null', NULL);
SELECT label, value IS NOT DISTINCT FROM d AS round_trips
  FROM cursor_texts, LATERAL apicore.cursor_decode(apicore.cursor_encode(ROW(value), label), label) AS c(d text)
  ORDER BY label;

-- several columns of mixed types at once, from a table row
CREATE TABLE cursor_rows (id bigint, created_at timestamptz, name text, score numeric, tag uuid);
INSERT INTO cursor_rows VALUES (42, '2026-11-27 18:00:00.000001+00', 'Zoë', 12.50, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
SELECT d.* FROM cursor_rows r,
  LATERAL apicore.cursor_decode(apicore.cursor_encode(r))
    AS d(id bigint, created_at timestamptz, name text, score numeric, tag uuid);
-- a dropped column is not part of the position
ALTER TABLE cursor_rows DROP COLUMN name;
SELECT d.* FROM cursor_rows r,
  LATERAL apicore.cursor_decode(apicore.cursor_encode(r)) AS d(id bigint, created_at timestamptz, score numeric, tag uuid);

-- NULL in, NULL out
SELECT apicore.cursor_encode(NULL::record) IS NULL AS encode_null,
       (SELECT x IS NULL FROM apicore.cursor_decode(NULL) AS c(x int)) AS decode_null;

-- decoding into other types or another number of columns: 42804
SELECT apicore.cursor_encode(ROW('2026-11-27 18:00:00+00'::timestamptz, 7::bigint), 'orders') AS c \gset
\set VERBOSITY default
SELECT * FROM apicore.cursor_decode(:'c', 'orders') AS c(created_at timestamptz, id int);
SELECT * FROM apicore.cursor_decode(:'c', 'orders') AS c(created_at timestamptz);
SELECT * FROM apicore.cursor_decode(:'c', 'orders') AS c(created_at timestamptz, id bigint, extra text);
SELECT * FROM apicore.cursor_decode(:'c', 'orders') AS c(id bigint, created_at timestamptz);
-- without a column definition list
SELECT apicore.cursor_decode(:'c', 'orders');

-- another context, or none: invalid cursor (34000)
SELECT * FROM apicore.cursor_decode(:'c', 'invoices') AS c(created_at timestamptz, id bigint);
SELECT * FROM apicore.cursor_decode(:'c') AS c(created_at timestamptz, id bigint);
SELECT sqlstate_of(format('SELECT * FROM apicore.cursor_decode(%L, %L) AS c(t timestamptz, i bigint)', :'c', ctx)) AS outcome,
       left(ctx, 10) AS context, length(ctx)
  FROM (VALUES ('orders'), ('Orders'), ('orders '), (''), ('orders' || repeat('x', 10000))) v(ctx);

-- every single-character change anywhere in the cursor is rejected (34000)
SELECT sqlstate_of(format('SELECT * FROM apicore.cursor_decode(%L, %L) AS c(t timestamptz, i bigint)',
                          overlay(:'c' placing (CASE WHEN substr(:'c', pos, 1) = 'A' THEN 'B' ELSE 'A' END) from pos for 1),
                          'orders')) AS outcome,
       count(*) AS positions
  FROM generate_series(1, length(:'c')) pos GROUP BY 1;
-- every truncation is rejected (34000)
SELECT sqlstate_of(format('SELECT * FROM apicore.cursor_decode(%L, %L) AS c(t timestamptz, i bigint)',
                          left(:'c', len), 'orders')) AS outcome, count(*) AS lengths
  FROM generate_series(0, length(:'c') - 1) len GROUP BY 1;
-- and so is anything appended
SELECT sqlstate_of(format('SELECT * FROM apicore.cursor_decode(%L, %L) AS c(t timestamptz, i bigint)',
                          :'c' || tail, 'orders')) AS outcome, tail
  FROM (VALUES ('A'), ('AA'), ('AAAA'), ('='), ('==')) v(tail);

-- empty, not base64, standard base64, huge: 34000 with a detail saying why
SELECT * FROM apicore.cursor_decode('', 'orders') AS c(t timestamptz, i bigint);
SELECT * FROM apicore.cursor_decode('not a cursor!', 'orders') AS c(t timestamptz, i bigint);
SELECT * FROM apicore.cursor_decode('QUJD', 'orders') AS c(t timestamptz, i bigint);
SELECT * FROM apicore.cursor_decode(repeat('A', 1000000), 'orders') AS c(t timestamptz, i bigint);
SELECT sqlstate_of(format('SELECT * FROM apicore.cursor_decode(%L) AS c(t timestamptz, i bigint)', input)) AS outcome, label
  FROM (VALUES ('plus and slash', translate(:'c', '-_', '+/')),
               ('padding', :'c' || '='),
               ('spaces', ' ' || :'c'),
               ('newline', :'c' || E'\n'),
               ('random base64url', translate(rtrim(encode(decode(md5('x') || md5('y') || md5('z'), 'hex'), 'base64'), '='), '+/', '-_')),
               ('hex', encode(decode(md5('x'), 'hex'), 'hex'))) v(label, input);
-- a key id padded to a longer varint than 32 bits need (found by cursor_fuzz:
-- it overran the associated-data buffer before the seal was checked)
SELECT sqlstate_of(format('SELECT * FROM apicore.cursor_decode(%L) AS c(t timestamptz, i bigint)',
                          'f9uuuuu' || repeat('A', 120) || 'uuuuuuAA')) AS padded_key_id;

-- expiry: a cursor with a ttl decodes until it expires, then raises 24000
SELECT apicore.cursor_encode(ROW(1), 'orders', '1 hour') AS fresh,
       apicore.cursor_encode(ROW(1), 'orders', '1 second') AS short \gset
SELECT * FROM apicore.cursor_decode(:'fresh', 'orders') AS c(i int);
SELECT length(:'fresh') - length(apicore.cursor_encode(ROW(1), 'orders')) AS extra_chars_for_expiry;
SELECT pg_sleep(2.2);
SELECT * FROM apicore.cursor_decode(:'short', 'orders') AS c(i int);
-- expiry is checked only after authentication: a tampered expired cursor is 34000
SELECT sqlstate_of(format('SELECT * FROM apicore.cursor_decode(%L, %L) AS c(i int)',
                          overlay(:'short' placing (CASE WHEN right(:'short', 1) = 'A' THEN 'Q' ELSE 'A' END) from length(:'short') for 1),
                          'orders')) AS tampered_expired,
       sqlstate_of(format('SELECT * FROM apicore.cursor_decode(%L, %L) AS c(i int)', :'short', 'other')) AS expired_other_context;
-- a ttl must be positive
SELECT apicore.cursor_encode(ROW(1), 'orders', '0 seconds');
SELECT apicore.cursor_encode(ROW(1), 'orders', '-1 hour');

-- a position too large for a cursor: 54000
SELECT apicore.cursor_encode(ROW(repeat('x', 5000)));
SELECT apicore.cursor_encode(ROW());

-- keys: rotation keeps old cursors valid and seals new ones with the new key
SELECT apicore.cursor_encode(ROW(1), 'orders') AS old_cursor \gset
-- (rotation is a superuser's)
RESET ROLE;
SELECT apicore.cursor_rotate_key() AS new_key_id;
SELECT count(*) AS keys FROM apicore.cursor_key;
SET ROLE cursor_app;
SELECT * FROM apicore.cursor_decode(:'old_cursor', 'orders') AS c(i int);
SELECT apicore.cursor_encode(ROW(2), 'orders') AS new_cursor \gset
SELECT * FROM apicore.cursor_decode(:'new_cursor', 'orders') AS c(i int);
-- retiring a key (deleting its row) invalidates its cursors at once: a foreign key id
RESET ROLE;
DELETE FROM apicore.cursor_key WHERE key_id = 2;
SET ROLE cursor_app;
SELECT * FROM apicore.cursor_decode(:'new_cursor', 'orders') AS c(i int);
SELECT * FROM apicore.cursor_decode(:'old_cursor', 'orders') AS c(i int);
-- the next rotation may reuse the id of a retired newest key, with a new
-- key: the retired key's cursors stay invalid
RESET ROLE;
SELECT apicore.cursor_rotate_key() AS next_key_id;
SET ROLE cursor_app;
SELECT * FROM apicore.cursor_decode(:'new_cursor', 'orders') AS c(i int);

-- no role but a superuser reads keys or rotates them; everyone can use cursors
RESET ROLE;
CREATE ROLE cursor_user;
SET ROLE cursor_user;
SELECT * FROM apicore.cursor_key;
SELECT apicore.cursor_rotate_key();
SELECT * FROM apicore.cursor_decode(apicore.cursor_encode(ROW(5::bigint), 'x'), 'x') AS c(i bigint);
SELECT * FROM apicore.cursor_decode(:'old_cursor', 'orders') AS c(i int);
RESET ROLE;
DROP ROLE cursor_user;

DROP TABLE cursor_texts, cursor_rows;
DROP FUNCTION sqlstate_of(text), cursor_keys();
DROP OWNED BY cursor_app;
DROP ROLE cursor_app;
