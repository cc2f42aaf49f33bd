# rate_limit: apicore.rate_limit() on 10,000 keys and on one hot key, against
# SELECT 1 (the floor), a PL/pgSQL token bucket in a table (INSERT .. ON
# CONFLICT DO UPDATE), and a Redis + Lua token bucket.
#
# pgbench rows are transactions/s.  The Redis rows compare apicore's pgbench
# tps with redis-benchmark requests/s (EVALSHA of the Lua bucket, one request
# per round trip, over a Unix socket like pgbench's), measured in the same
# run; Redis is started on a private socket and stopped afterwards.

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

rl_cases="$BENCH_DIR/cases"
bench_compare "rate_limit 10k keys vs SELECT 1" "$rl_cases/rate_limit_10k.sql" "$rl_cases/floor_select1.sql"
bench_compare "rate_limit hot key vs SELECT 1" "$rl_cases/rate_limit_hot.sql" "$rl_cases/floor_select1.sql"
bench_compare "rate_limit 10k keys vs table bucket" "$rl_cases/rate_limit_10k.sql" "$rl_cases/rate_limit_table_10k.sql"
bench_compare "rate_limit hot key vs table bucket" "$rl_cases/rate_limit_hot.sql" "$rl_cases/rate_limit_table_hot.sql"
bench_compare "rate_limit hot key vs 10k keys" "$rl_cases/rate_limit_hot.sql" "$rl_cases/rate_limit_10k.sql"

# Redis 7 + Lua on a private Unix socket
rl_redis_sock="$BENCH_OUT/redis.sock"
if command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null; then
    redis-server --port 0 --unixsocket "$rl_redis_sock" --save '' --appendonly no \
        --daemonize yes --pidfile "$BENCH_OUT/redis.pid" --logfile "$BENCH_OUT/redis.log"
    for _ in 1 2 3 4 5 6 7 8 9 10; do [ -S "$rl_redis_sock" ] && break; sleep 0.2; done
    rl_sha=$(redis-cli -s "$rl_redis_sock" SCRIPT LOAD "$(cat "$rl_cases/rate_limit_token_bucket.lua")")
    rl_redis_rps() {    # clients, key ("user:__rand_int__" or "hot")
        local n=$(( $1 == 1 ? 40000 : 150000 ))
        redis-benchmark -s "$rl_redis_sock" -c "$1" -n "$n" -r 10000 --csv \
            EVALSHA "$rl_sha" 1 "$2" 100 1 2>/dev/null | tail -1 | cut -d, -f2 | tr -d '"'
    }
    for c in $BENCH_CLIENTS; do
        bench_row "rate_limit 10k keys vs Redis+Lua (rps)" "$c" \
            "$(bench_tps "$rl_cases/rate_limit_10k.sql" "$c")" "$(rl_redis_rps "$c" 'user:__rand_int__')"
        bench_row "rate_limit hot key vs Redis+Lua (rps)" "$c" \
            "$(bench_tps "$rl_cases/rate_limit_hot.sql" "$c")" "$(rl_redis_rps "$c" 'hot')"
    done
    redis-cli -s "$rl_redis_sock" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
else
    echo "rate_limit: redis-server/redis-benchmark not installed; Redis rows skipped"
fi
