-- 20_cursor.sql — opaque cursors and keyset pages (API.md section 2).

-- Cursor keys: random 256-bit keys, readable by superusers only.  apicore's
-- C code reads them as this table's owner; nothing SQL-callable returns one.
-- WAL-logged (replicas and pg_basebackup copies decode the primary's
-- cursors) and dumped by pg_dump.  The highest key_id seals new cursors;
-- every row still opens old ones.  Delete a row to retire its cursors.
CREATE TABLE apicore.cursor_key (
    key_id     int PRIMARY KEY CHECK (key_id > 0),
    key        bytea NOT NULL CHECK (octet_length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE apicore.cursor_key IS
    'cursor keys (superuser only): the highest key_id seals new cursors, every row opens old ones';
REVOKE ALL ON apicore.cursor_key FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('apicore.cursor_key', '');

-- Every backend caches the keys; any change to the table tells them to reload.
CREATE FUNCTION apicore._cursor_key_changed() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'apicore_cursor_key_changed';
REVOKE ALL ON FUNCTION apicore._cursor_key_changed() FROM PUBLIC;
CREATE TRIGGER cursor_key_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON apicore.cursor_key
    FOR EACH STATEMENT EXECUTE FUNCTION apicore._cursor_key_changed();

CREATE FUNCTION apicore.cursor_encode("position" record, context text DEFAULT NULL,
                                      ttl interval DEFAULT NULL)
    RETURNS text
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_cursor_encode';
COMMENT ON FUNCTION apicore.cursor_encode(record, text, interval) IS
    'seal a position (the sort key of a row) into an opaque, URL-safe cursor bound to context';

CREATE FUNCTION apicore.cursor_decode(cursor text, context text DEFAULT NULL)
    RETURNS record
    LANGUAGE c STABLE
    AS 'MODULE_PATHNAME', 'apicore_cursor_decode';
COMMENT ON FUNCTION apicore.cursor_decode(text, text) IS
    'open a cursor made by cursor_encode with the same context: SELECT * FROM apicore.cursor_decode($1, ctx) AS c(col type, ...)';

CREATE FUNCTION apicore.cursor_rotate_key() RETURNS int
    LANGUAGE c VOLATILE STRICT
    AS 'MODULE_PATHNAME', 'apicore_cursor_rotate_key';
COMMENT ON FUNCTION apicore.cursor_rotate_key() IS
    'make a new current cursor key; older keys keep decoding their cursors';
REVOKE ALL ON FUNCTION apicore.cursor_rotate_key() FROM PUBLIC;

CREATE FUNCTION apicore.keyset_page(relation regclass, order_by text,
                                    cursor text DEFAULT NULL, page_size int DEFAULT NULL,
                                    filter jsonb DEFAULT NULL)
    RETURNS jsonb
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_keyset_page';
COMMENT ON FUNCTION apicore.keyset_page(regclass, text, text, int, jsonb) IS
    'one page of relation in order_by order after (or before) cursor: {"data", "has_more", "next_cursor", "prev_cursor"}';

-- The page's rows as the table's own row type, for drivers that would round
-- jsonb numbers through a double (JavaScript: bigint and numeric beyond
-- 2^53).  One implementation: keyset_page builds the page; the rows come back
-- through jsonb_populate_recordset, which converts jsonb's exact numbers and
-- every other column by the column type's input function.  Runs as the
-- caller, like keyset_page.  extra_float_digits = 1 makes to_jsonb write
-- float4/float8 in their shortest exact form whatever the session's setting.
CREATE FUNCTION apicore.keyset_page_rows(relation anyelement, order_by text,
                                         cursor text DEFAULT NULL, page_size int DEFAULT NULL,
                                         filter jsonb DEFAULT NULL,
                                         OUT item anyelement, OUT has_more bool,
                                         OUT next_cursor text, OUT prev_cursor text)
    RETURNS SETOF record
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    SET extra_float_digits = 1
    AS $$
DECLARE
    rel  regclass;
    page jsonb;
BEGIN
    SELECT t.typrelid INTO rel FROM pg_catalog.pg_type t
     WHERE t.oid = pg_catalog.pg_typeof(relation) AND t.typrelid <> 0;
    IF rel IS NULL THEN
        RAISE EXCEPTION 'keyset_page_rows: relation must be a table''s row type, got %',
                        pg_catalog.pg_typeof(relation)
              USING ERRCODE = 'wrong_object_type',
                    HINT = 'Pass NULL cast to the table''s row type, as in apicore.keyset_page_rows(NULL::orders, ''id'').';
    END IF;
    page := apicore.keyset_page(rel, order_by, cursor, page_size, filter);
    RETURN QUERY
        -- in the select list, not FROM: a FROM alias would lose to a column of that name
        SELECT pg_catalog.jsonb_populate_recordset(relation, page OPERATOR(pg_catalog.->) 'data'),
               (page OPERATOR(pg_catalog.->>) 'has_more')::bool,
               page OPERATOR(pg_catalog.->>) 'next_cursor', page OPERATOR(pg_catalog.->>) 'prev_cursor';
END
$$;
COMMENT ON FUNCTION apicore.keyset_page_rows(anyelement, text, text, int, jsonb) IS
    'keyset_page''s rows as the table''s row type (pass NULL::table), each with the page''s has_more, next_cursor and prev_cursor; no row for an empty page';

CREATE FUNCTION apicore.keyset_page_explain(relation regclass, order_by text,
                                            cursor text DEFAULT NULL, page_size int DEFAULT NULL,
                                            filter jsonb DEFAULT NULL)
    RETURNS text[]
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_keyset_page_explain';
COMMENT ON FUNCTION apicore.keyset_page_explain(regclass, text, text, int, jsonb) IS
    'the plan (EXPLAIN, costs off) of the query keyset_page runs for these arguments: check that an index is used';
