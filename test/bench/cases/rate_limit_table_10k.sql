\set k random(1, 10000)
SELECT bench_table_rate_limit('user:' || :k, 100, 1.0);
