# Sagas: claim + succeed of one step, against a hand-written queue table
# claimed with FOR UPDATE SKIP LOCKED and marked done (what teams write
# today).  Both sides commit twice per step: the claim, then the report.
# Setup creates enough work that neither side runs dry.
bench_sql "SELECT apicore.saga_define('bench', (SELECT jsonb_agg(jsonb_build_object('name', 'step_' || i, 'timeout', '10 minutes')) FROM generate_series(1, 10) i))"
bench_sql "SELECT count(apicore.saga_start('bench', jsonb_build_object('order', i))) FROM generate_series(1, 20000) i"
bench_sql "CREATE TABLE bench_queue (
    id bigserial PRIMARY KEY, state text NOT NULL DEFAULT 'ready', payload jsonb NOT NULL,
    run_after timestamptz NOT NULL DEFAULT now(), worker text, lease_expires_at timestamptz, attempt int NOT NULL DEFAULT 0);
  CREATE INDEX ON bench_queue (run_after) WHERE state = 'ready';
  INSERT INTO bench_queue (payload) SELECT jsonb_build_object('order', i) FROM generate_series(1, 200000) i"
for t in bench_queue apicore.saga apicore.saga_step apicore.saga_transition; do bench_sql "VACUUM ANALYZE $t"; done
bench_compare "saga: claim + succeed one step" "$BENCH_DIR/cases/saga_claim_succeed.sql" "$BENCH_DIR/cases/saga_baseline_queue.sql"
# apicore sends NOTIFY apicore_saga only while a session of the database
# listens; NOTIFY serialises the commits of notifying transactions (a
# per-database lock held through commit).  The same case with a worker
# LISTENing throughout, then with apicore.saga_notify = off (polling workers).
# (the listener reads its notifications every 100 ms, as a worker would)
printf 'LISTEN apicore_saga;\nSELECT 1 \\watch 0.1\n' | "$BENCH_BIN/psql" -X -q >/dev/null 2>&1 &
saga_listener=$!
bench_compare "saga: claim + succeed, a session LISTENs" "$BENCH_DIR/cases/saga_claim_succeed.sql" "$BENCH_DIR/cases/saga_baseline_queue.sql"
kill "$saga_listener" 2>/dev/null; wait "$saga_listener" 2>/dev/null || true
bench_sql "ALTER DATABASE bench SET apicore.saga_notify = off"
bench_compare "saga: claim + succeed, saga_notify off" "$BENCH_DIR/cases/saga_claim_succeed.sql" "$BENCH_DIR/cases/saga_baseline_queue.sql"
bench_sql "ALTER DATABASE bench RESET apicore.saga_notify"
