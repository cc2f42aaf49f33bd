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
export PGUSER=bench_app
bench_compare "soft_delete: DELETE one row (vs UPDATE)" \
    "$BENCH_DIR/cases/soft_delete_delete.sql" "$BENCH_DIR/cases/soft_delete_update.sql"
bench_compare "soft_delete: SELECT live row (vs WHERE)" \
    "$BENCH_DIR/cases/soft_delete_select.sql" "$BENCH_DIR/cases/soft_delete_select_where.sql"
unset PGUSER
