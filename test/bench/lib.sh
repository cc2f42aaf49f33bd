# Helpers for test/bench/cases/*.sh.  A case file is sourced by test/bench/run
# with a scratch server running (apicore preloaded, database "bench") and
# calls:
#   bench_sql "SQL"                       run setup SQL (psql -v ON_ERROR_STOP=1)
#   bench_compare NAME APICORE.sql BASELINE.sql [CLIENTS...]
#       pgbench -M prepared both scripts at each client count (default
#       $BENCH_CLIENTS), apicore then baseline, and print one row each:
#       case | clients | apicore tps | baseline tps | ratio (apicore/baseline)
#   bench_tps SCRIPT CLIENTS              tps of one pgbench script
#   bench_row NAME CLIENTS A B            print a row from your own figures
# Scripts are pgbench files (\set, :vars) kept next to the case as
# cases/<capability>_*.sql.  Extra pgbench flags: BENCH_PGBENCH_FLAGS.

BENCH_SECONDS="${BENCH_SECONDS:-10}"
[ -z "$BENCH_SECONDS" ] && BENCH_SECONDS=10
BENCH_CLIENTS="${BENCH_CLIENTS:-1 8 32}"
[ -z "$BENCH_CLIENTS" ] && BENCH_CLIENTS="1 8 32"
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH_ROOT="$(cd "$BENCH_DIR/../.." && pwd)"
BENCH_BIN="$BENCH_ROOT/tmp_check/sandbox$("${PG_CONFIG:-pg_config}" --bindir)"
BENCH_OUT="$BENCH_ROOT/tmp_check/bench"
BENCH_PORT="${BENCH_PORT:-55432}"
export PGHOST="$BENCH_OUT" PGPORT="$BENCH_PORT" PGDATABASE=bench

bench_start_server() {
    rm -rf "$BENCH_OUT" && mkdir -p "$BENCH_OUT"
    "$BENCH_BIN/initdb" -D "$BENCH_OUT/data" -A trust --no-sync >"$BENCH_OUT/initdb.log"
    cat >>"$BENCH_OUT/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$BENCH_OUT'
port = $BENCH_PORT
shared_preload_libraries = 'apicore'
apicore.database = 'bench'
max_connections = 100
shared_buffers = '512MB'
synchronous_commit = on
fsync = on
CONF
    "$BENCH_BIN/pg_ctl" -D "$BENCH_OUT/data" -l "$BENCH_OUT/server.log" -w start >/dev/null
    "$BENCH_BIN/createdb" bench
    bench_sql "CREATE EXTENSION apicore"
}

bench_stop_server() {
    "$BENCH_BIN/pg_ctl" -D "$BENCH_OUT/data" -m fast -w stop >/dev/null 2>&1 || true
}

bench_sql() {
    "$BENCH_BIN/psql" -X -q -v ON_ERROR_STOP=1 -c "$1" >/dev/null
}

bench_tps() {
    local script="$1" clients="$2" jobs
    jobs=$(( clients < 2 ? 1 : 2 ))
    "$BENCH_BIN/pgbench" -n -M prepared -c "$clients" -j "$jobs" -T "$BENCH_SECONDS" \
        ${BENCH_PGBENCH_FLAGS:-} -f "$script" 2>"$BENCH_OUT/pgbench.err" \
        | sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}

bench_header() {
    printf '%-40s %7s %14s %14s %7s\n' case clients apicore baseline ratio
    printf 'case\tclients\tapicore\tbaseline\tratio\n' >"$BENCH_OUT/results.tsv"
}

bench_row() {
    local name="$1" clients="$2" a="$3" b="$4" ratio
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
    printf '%-40s %7s %14s %14s %7s\n' "$name" "$clients" "$a" "$b" "$ratio"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$clients" "$a" "$b" "$ratio" >>"$BENCH_OUT/results.tsv"
}

bench_compare() {
    local name="$1" a="$2" b="$3"; shift 3
    local clients=("$@") c ta tb
    [ ${#clients[@]} -eq 0 ] && clients=($BENCH_CLIENTS)
    for c in "${clients[@]}"; do
        ta=$(bench_tps "$a" "$c"); [ -n "$ta" ] || { cat "$BENCH_OUT/pgbench.err"; return 1; }
        tb=$(bench_tps "$b" "$c"); [ -n "$tb" ] || { cat "$BENCH_OUT/pgbench.err"; return 1; }
        bench_row "$name" "$c" "$ta" "$tb"
    done
}
