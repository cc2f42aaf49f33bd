SELECT bench_table_rate_limit('hot', 100, 1.0);
