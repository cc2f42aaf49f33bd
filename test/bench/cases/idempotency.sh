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

# The same comparison interleaved: one pgbench run draws each transaction
# from either script, so both see the same machine load (this machine is
# shared and the sequential runs above swing by tens of percent).  Figures
# are per-script mean latencies turned into tps: clients * 1000 / latency_ms.
idem_interleaved() {
    local name="$1" a="$2" b="$3" c out la lb
    for c in $BENCH_CLIENTS; do
        out=$("$BENCH_BIN/pgbench" -n -M prepared -c "$c" -j $(( c < 2 ? 1 : 2 )) -T "$BENCH_SECONDS" \
                  ${BENCH_PGBENCH_FLAGS:-} -f "$a@1" -f "$b@1" 2>"$BENCH_OUT/pgbench.err") \
            || { cat "$BENCH_OUT/pgbench.err"; return 1; }
        la=$(echo "$out" | sed -n '/^SQL script 1/,/^SQL script 2/s/^ - latency average = \([0-9.]*\) ms/\1/p')
        lb=$(echo "$out" | sed -n '/^SQL script 2/,$s/^ - latency average = \([0-9.]*\) ms/\1/p')
        bench_row "$name" "$c" "$(awk -v c="$c" -v l="$la" 'BEGIN { printf "%.1f", c * 1000 / l }')" \
            "$(awk -v c="$c" -v l="$lb" 'BEGIN { printf "%.1f", c * 1000 / l }')"
    done
}
idem_interleaved "idempotency: begin+complete vs plain, interleaved" \
    "$BENCH_DIR/cases/idempotency_apicore.sql" "$BENCH_DIR/cases/idempotency_plain.sql"
idem_interleaved "idempotency: vs INSERT floor, interleaved" \
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
# vacuumed now, so that autovacuum does not pick them up during the timing
# (an autovacuum on the partition would make the drop wait out its lock_timeout)
bench_sql "VACUUM ANALYZE apicore.idempotency_key_p20010101_000000"
bench_sql "VACUUM ANALYZE idem_plain"
bench_sql "CHECKPOINT"
drop_ms=$(idem_ms "SELECT apicore._idempotency_maintain()")
"$BENCH_BIN/psql" -X -A -t -c "SELECT '  partitions left for 2001: ' || count(*) FROM apicore._idempotency_partitions() WHERE upper_bound < '2002-01-01'"
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
