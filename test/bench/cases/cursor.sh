# Cursors and keyset pages (issue 4), side by side with what users write today:
#  - encode + decode of a (timestamptz, bigint) cursor against pgcrypto
#    hmac() + base64 of json in PL/pgSQL (goal >= 5x), one pair and 100
#    pairs a statement;
#  - keyset_page page 10,000 (20 rows a page) of a 1M-row table against
#    OFFSET/LIMIT (goal >= 100x) and against keyset_page page 1 (goal: within
#    1.5x, i.e. ratio >= 0.67).
bench_sql "CREATE EXTENSION IF NOT EXISTS pgcrypto"
bench_sql "ALTER DATABASE bench SET bench.cursor_secret = 'a shared secret of the application, 32+ bytes long'"
bench_sql "$(cat <<'SQL'
CREATE OR REPLACE FUNCTION bench_cursor_encode(created_at timestamptz, id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  payload text := json_build_object('created_at', created_at, 'id', id)::text;
  mac bytea := hmac(payload, current_setting('bench.cursor_secret'), 'sha256');
BEGIN
  RETURN translate(encode(convert_to(payload, 'UTF8'), 'base64') || '.' || encode(mac, 'base64'),
                   E'+/=\n', '-_');
END $$;
CREATE OR REPLACE FUNCTION bench_cursor_decode(cursor text, OUT created_at timestamptz, OUT id bigint)
LANGUAGE plpgsql AS $$
DECLARE
  parts text[] := string_to_array(translate(cursor, '-_', '+/'), '.');
  payload text;
BEGIN
  payload := convert_from(decode(rpad(parts[1], (length(parts[1]) + 3) / 4 * 4, '='), 'base64'), 'UTF8');
  IF decode(rpad(parts[2], (length(parts[2]) + 3) / 4 * 4, '='), 'base64')
     <> hmac(payload, current_setting('bench.cursor_secret'), 'sha256') THEN
    RAISE EXCEPTION 'invalid cursor' USING ERRCODE = '34000';
  END IF;
  created_at := (payload::json->>'created_at')::timestamptz;
  id := (payload::json->>'id')::bigint;
END $$;
SQL
)"
# One call a statement is bound by the round trip (see the SELECT 1 floor);
# 100 a statement shows what the functions themselves cost.
bench_compare "cursor encode+decode vs pgcrypto json" \
    "$BENCH_DIR/cases/cursor_encode_decode.sql" "$BENCH_DIR/cases/cursor_pgcrypto.sql"
bench_compare "cursor encode+decode x100 vs pgcrypto" \
    "$BENCH_DIR/cases/cursor_encode_decode_x100.sql" "$BENCH_DIR/cases/cursor_pgcrypto_x100.sql"

bench_sql "$(cat <<'SQL'
DROP TABLE IF EXISTS bench_orders;
CREATE TABLE bench_orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL,
                           status text NOT NULL, amount numeric NOT NULL);
INSERT INTO bench_orders
SELECT i, '2026-01-01'::timestamptz + i * interval '1 second', 'paid', i % 1000
  FROM generate_series(1, 1000000) i;
CREATE INDEX bench_orders_created_at_id ON bench_orders (created_at, id);
SQL
)"
bench_sql "VACUUM ANALYZE bench_orders"
# The cursor that opens page 10,000: after two pages of 99,990 rows each.
page10000=$("$BENCH_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -c "SET apicore.max_page_size = 100000" -c "
    SELECT apicore.keyset_page('bench_orders', 'created_at DESC',
             apicore.keyset_page('bench_orders', 'created_at DESC', NULL, 99990)->>'next_cursor',
             99990)->>'next_cursor'")
[ -n "$page10000" ] || { echo "cursor: could not compute the page 10,000 cursor"; return 1; }
first_id=$("$BENCH_BIN/psql" -X -A -t -c \
    "SELECT apicore.keyset_page('bench_orders', 'created_at DESC', '$page10000', 20)->'data'->0->>'id'")
[ "$first_id" = "800020" ] || { echo "cursor: page 10,000 starts at id $first_id, not 800020"; return 1; }
BENCH_PGBENCH_FLAGS="${BENCH_PGBENCH_FLAGS:-} -D page10000=$page10000" bench_compare \
    "keyset_page p10000 vs OFFSET p10000" \
    "$BENCH_DIR/cases/cursor_keyset_page10000.sql" "$BENCH_DIR/cases/cursor_offset_page10000.sql"
BENCH_PGBENCH_FLAGS="${BENCH_PGBENCH_FLAGS:-} -D page10000=$page10000" bench_compare \
    "keyset_page p10000 vs keyset_page p1" \
    "$BENCH_DIR/cases/cursor_keyset_page10000.sql" "$BENCH_DIR/cases/cursor_keyset_page1.sql"
