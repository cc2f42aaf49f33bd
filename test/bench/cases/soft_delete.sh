# Soft delete: a DELETE that apicore turns into a marking UPDATE against the
# UPDATE users write by hand, and a live-row SELECT under the hiding policy
# against the same query with "AND deleted_at IS NULL" and no policy.
# Clients connect as the tables' owner (not a superuser, who would bypass
# row-level security), with FORCE ROW LEVEL SECURITY on the apicore table.
bench_sql "CREATE ROLE bench_app LOGIN;
  CREATE SCHEMA sdb AUTHORIZATION bench_app;"
bench_sql "SET ROLE bench_app;
  CREATE TABLE sdb.soft (id int PRIMARY KEY, email text NOT NULL UNIQUE, payload text);
  CREATE TABLE sdb.plain (id int PRIMARY KEY, email text NOT NULL, payload text, deleted_at timestamptz);
  CREATE UNIQUE INDEX ON sdb.plain (email) WHERE deleted_at IS NULL;
  INSERT INTO sdb.soft SELECT g, 'user' || g || '@example.com', repeat('x', 80) FROM generate_series(1, 500000) g;
  INSERT INTO sdb.plain SELECT g, 'user' || g || '@example.com', repeat('x', 80), NULL FROM generate_series(1, 500000) g;
  SELECT apicore.soft_delete_enable('sdb.soft');"
bench_sql "VACUUM ANALYZE sdb.soft"
bench_sql "VACUUM ANALYZE sdb.plain"
# The machine is shared and noisy: each row alternates apicore and baseline
# runs (BENCH_SOFT_DELETE_ROUNDS pairs, default 3) and reports their mean, so
# drift in the background load hits both sides alike.
soft_delete_compare() {
    local name="$1" a="$2" b="$3" c r ta tb sum_a sum_b
    local rounds="${BENCH_SOFT_DELETE_ROUNDS:-3}"
    for c in $BENCH_CLIENTS; do
        sum_a=0; sum_b=0
        for r in $(seq "$rounds"); do
            ta=$(bench_tps "$a" "$c"); [ -n "$ta" ] || { cat "$BENCH_OUT/pgbench.err"; return 1; }
            tb=$(bench_tps "$b" "$c"); [ -n "$tb" ] || { cat "$BENCH_OUT/pgbench.err"; return 1; }
            sum_a=$(awk -v s="$sum_a" -v t="$ta" 'BEGIN { print s + t }')
            sum_b=$(awk -v s="$sum_b" -v t="$tb" 'BEGIN { print s + t }')
        done
        bench_row "$name" "$c" "$(awk -v s="$sum_a" -v n="$rounds" 'BEGIN { printf "%.1f", s / n }')" \
            "$(awk -v s="$sum_b" -v n="$rounds" 'BEGIN { printf "%.1f", s / n }')"
    done
}

export PGUSER=bench_app
soft_delete_compare "soft_delete: DELETE one row (vs UPDATE)" \
    "$BENCH_DIR/cases/soft_delete_delete.sql" "$BENCH_DIR/cases/soft_delete_update.sql"
soft_delete_compare "soft_delete: SELECT live row (vs WHERE)" \
    "$BENCH_DIR/cases/soft_delete_select.sql" "$BENCH_DIR/cases/soft_delete_select_where.sql"
unset PGUSER
