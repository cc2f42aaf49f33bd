# The floor: SELECT 1 through pgbench.  No SQL call from a client can beat
# it; every later case is read against it.  Compared with itself, so the
# ratio column shows the run-to-run noise of this machine.
bench_compare "floor: SELECT 1 (vs itself: noise)" "$BENCH_DIR/cases/floor_select1.sql" "$BENCH_DIR/cases/floor_select1.sql"
