\set id random(1, 1000000000)
SELECT * FROM bench_cursor_decode(bench_cursor_encode(now(), :id::bigint));
