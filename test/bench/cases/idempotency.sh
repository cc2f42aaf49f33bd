# Idempotency keys: begin + complete in one transaction against the same
# semantics in plain SQL (INSERT .. ON CONFLICT, SELECT .. FOR UPDATE, UPDATE),
# the write floor (a bare one-row INSERT + COMMIT) for reference, and
# expiring 1M keys by dropping a partition against DELETE.

bench_sql "SELECT * FROM apicore.run_maintenance()"
bench_sql "CREATE TABLE idem_plain (
    scope text NOT NULL, key text NOT NULL, fingerprint bytea, state text NOT NULL,
    attempt int NOT NULL, locked_until timestamptz, recovery_point text,
    response_code int, response_body text, response_headers jsonb,
    created_at timestamptz NOT NULL, expires_at timestamptz NOT NULL,
    PRIMARY KEY (scope, key))"
bench_sql "CREATE INDEX ON idem_plain (expires_at)"
bench_sql "CREATE TABLE idem_floor (k int)"

bench_compare "idempotency: begin+complete vs plain SQL" \
    "$BENCH_DIR/cases/idempotency_apicore.sql" "$BENCH_DIR/cases/idempotency_plain.sql"
bench_compare "idempotency: begin+complete vs INSERT floor" \
    "$BENCH_DIR/cases/idempotency_apicore.sql" "$BENCH_DIR/cases/idempotency_insert_floor.sql"

# Expiring 1M keys.  Both sides hold 1M expired keys in the same layout; the
# time is psql's \timing of one statement including its commit.
idem_ms() {
    "$BENCH_BIN/psql" -X -q -v ON_ERROR_STOP=1 -c '\timing on' -c "$1" \
        | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1
}
bench_sql "SELECT apicore._idempotency_create_partition('2001-01-01 00:00+00', '2001-01-02 00:00+00')"
bench_sql "INSERT INTO apicore.idempotency_key
  SELECT 'expiry', 'k' || i, 'completed', 1, NULL, NULL, '1 minute', '2001-01-01 00:00+00', 201,
         '{\"id\": 1}', '{\"Content-Type\": \"application/json\"}', '2000-12-31 12:00+00',
         '2000-12-31 12:00+00', '2001-01-01 12:00+00'
    FROM generate_series(1, 1000000) i"
bench_sql "INSERT INTO idem_plain
  SELECT 'expiry', 'k' || i, NULL, 'completed', 1, NULL, NULL, 201, '{\"id\": 1}',
         '{\"Content-Type\": \"application/json\"}', '2000-12-31 12:00+00', '2001-01-01 12:00+00'
    FROM generate_series(1, 1000000) i"
bench_sql "CHECKPOINT"
sleep 1
drop_ms=$(idem_ms "SELECT apicore._idempotency_maintain()")
delete_ms=$(idem_ms "DELETE FROM idem_plain WHERE expires_at <= now()")
# keys expired per second: higher is better, as for tps
bench_row "idempotency: expire 1M keys (keys/s)" 1 \
    "$(awk -v ms="$drop_ms" 'BEGIN { printf "%.0f", 1000000 / (ms / 1000) }')" \
    "$(awk -v ms="$delete_ms" 'BEGIN { printf "%.0f", 1000000 / (ms / 1000) }')"
echo "  partition drop: ${drop_ms} ms; DELETE: ${delete_ms} ms"
"$BENCH_BIN/psql" -X -A -t -c "
  SELECT '  after expiry: idempotency_key ' || pg_size_pretty(sum(pg_total_relation_size(inhrelid))) ||
         ' across partitions, no dead tuples (the partition is gone); plain table ' ||
         pg_size_pretty(pg_total_relation_size('idem_plain')) || ' with ' ||
         (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'idem_plain') || ' dead tuples'
    FROM pg_inherits WHERE inhparent = 'apicore.idempotency_key'::regclass"
# The DELETE leaves its space unusable until VACUUM: the full price of expiry.
vacuum_ms=$(idem_ms "VACUUM idem_plain")
bench_row "idempotency: expire 1M keys, DELETE+VACUUM" 1 \
    "$(awk -v ms="$drop_ms" 'BEGIN { printf "%.0f", 1000000 / (ms / 1000) }')" \
    "$(awk -v a="$delete_ms" -v b="$vacuum_ms" 'BEGIN { printf "%.0f", 1000000 / ((a + b) / 1000) }')"
echo "  VACUUM after the DELETE: ${vacuum_ms} ms"
