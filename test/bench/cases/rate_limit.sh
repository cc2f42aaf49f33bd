# rate_limit: apicore.rate_limit() on 10,000 keys and on one hot key, against
# SELECT 1 (the floor), rate_limit_check() of a named policy likewise, a PL/pgSQL token bucket in a table (INSERT .. ON
# CONFLICT DO UPDATE), and a Redis + Lua token bucket.
#
# pgbench rows are transactions/s.  The Redis rows compare apicore's pgbench
# tps with redis-benchmark requests/s (EVALSHA of the Lua bucket, one request
# per round trip, over a Unix socket like pgbench's), measured in the same
# run; Redis is started on a private socket and stopped afterwards.
#
# This machine is shared and noisy, so every row alternates the two sides
# RL_ROUNDS times (default 3, each BENCH_SECONDS long) and prints the median
# of each side.

bench_sql "CREATE TABLE bench_bucket (key text PRIMARY KEY, tokens float8 NOT NULL,
                                      updated_at timestamptz NOT NULL, allowed bool NOT NULL)"
bench_sql "CREATE FUNCTION bench_table_rate_limit(k text, lim int, per float8) RETURNS bool
LANGUAGE plpgsql AS \$\$
DECLARE
    ok bool;
BEGIN
    INSERT INTO bench_bucket AS b VALUES (k, lim - 1, clock_timestamp(), true)
    ON CONFLICT (key) DO UPDATE SET
        tokens = CASE WHEN least(lim, b.tokens + extract(epoch FROM clock_timestamp() - b.updated_at) * lim / per) >= 1
                      THEN least(lim, b.tokens + extract(epoch FROM clock_timestamp() - b.updated_at) * lim / per) - 1
                      ELSE least(lim, b.tokens + extract(epoch FROM clock_timestamp() - b.updated_at) * lim / per) END,
        allowed = least(lim, b.tokens + extract(epoch FROM clock_timestamp() - b.updated_at) * lim / per) >= 1,
        updated_at = clock_timestamp()
    RETURNING allowed INTO ok;
    RETURN ok;
END \$\$"

bench_sql "SELECT apicore.rate_limit_policy_set('bench', 100, '1 second')"

rl_cases="$BENCH_DIR/cases"
RL_ROUNDS="${RL_ROUNDS:-3}"

rl_median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# rl_row NAME CLIENTS CMD_A CMD_B: alternate A and B, print the medians
rl_row() {
    local name="$1" c="$2" a="$3" b="$4" ra="" rb="" i
    for i in $(seq "$RL_ROUNDS"); do
        ra="$ra $($a "$c")"
        rb="$rb $($b "$c")"
    done
    bench_row "$name" "$c" "$(echo $ra | tr ' ' '\n' | rl_median)" "$(echo $rb | tr ' ' '\n' | rl_median)"
}

rl_select1() { bench_tps "$rl_cases/floor_select1.sql" "$1"; }
rl_10k() { bench_tps "$rl_cases/rate_limit_10k.sql" "$1"; }
rl_hot() { bench_tps "$rl_cases/rate_limit_hot.sql" "$1"; }
rl_check_10k() { bench_tps "$rl_cases/rate_limit_check_10k.sql" "$1"; }
rl_check_hot() { bench_tps "$rl_cases/rate_limit_check_hot.sql" "$1"; }
rl_keyed() { bench_tps "$rl_cases/rate_limit_keyed_select.sql" "$1"; }
rl_table_10k() { bench_tps "$rl_cases/rate_limit_table_10k.sql" "$1"; }
rl_table_hot() { bench_tps "$rl_cases/rate_limit_table_hot.sql" "$1"; }

for c in $BENCH_CLIENTS; do
    rl_row "rate_limit 10k keys vs SELECT 1" "$c" rl_10k rl_select1
    rl_row "rate_limit hot key vs SELECT 1" "$c" rl_hot rl_select1
    rl_row "rate_limit_check 10k keys vs SELECT 1" "$c" rl_check_10k rl_select1
    rl_row "rate_limit_check hot key vs SELECT 1" "$c" rl_check_hot rl_select1
    rl_row "rate_limit 10k keys vs table bucket" "$c" rl_10k rl_table_10k
    rl_row "rate_limit hot key vs table bucket" "$c" rl_hot rl_table_hot
    rl_row "rate_limit hot key vs 10k keys" "$c" rl_hot rl_10k
    # the ceilings of the table comparison: no call made once per round trip
    # can beat the table bucket by more than SELECT 1 does, and none keyed on
    # 10,000 random keys by more than the same query without the call
    rl_row "floor: SELECT 1 vs table bucket 10k" "$c" rl_select1 rl_table_10k
    rl_row "floor: keyed SELECT, no call, vs table bucket 10k" "$c" rl_keyed rl_table_10k
done

# Redis 7 + Lua on a private Unix socket
rl_redis_sock="$BENCH_OUT/redis.sock"
if command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null; then
    redis-server --port 0 --unixsocket "$rl_redis_sock" --save '' --appendonly no \
        --daemonize yes --pidfile "$BENCH_OUT/redis.pid" --logfile "$BENCH_OUT/redis.log"
    for _ in 1 2 3 4 5 6 7 8 9 10; do [ -S "$rl_redis_sock" ] && break; sleep 0.2; done
    rl_sha=$(redis-cli -s "$rl_redis_sock" SCRIPT LOAD "$(cat "$rl_cases/rate_limit_token_bucket.lua")")
    rl_redis() {    # clients, key ("user:__rand_int__" or "hot"): requests/s
        local n=$(( $1 == 1 ? 30000 : 100000 ))
        redis-benchmark -s "$rl_redis_sock" -c "$1" -n "$n" -r 10000 --csv \
            EVALSHA "$rl_sha" 1 "$2" 100 1 2>/dev/null | tail -1 | cut -d, -f2 | tr -d '"'
    }
    rl_redis_10k() { rl_redis "$1" 'user:__rand_int__'; }
    rl_redis_hot() { rl_redis "$1" 'hot'; }
    for c in $BENCH_CLIENTS; do
        rl_row "rate_limit 10k keys vs Redis+Lua (rps)" "$c" rl_10k rl_redis_10k
        rl_row "rate_limit hot key vs Redis+Lua (rps)" "$c" rl_hot rl_redis_hot
    done
    redis-cli -s "$rl_redis_sock" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
else
    echo "rate_limit: redis-server/redis-benchmark not installed; Redis rows skipped"
fi
