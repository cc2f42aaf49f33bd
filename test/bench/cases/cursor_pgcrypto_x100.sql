SELECT count(c.id) FROM generate_series(1, 100) g,
  LATERAL bench_cursor_decode(bench_cursor_encode(now(), g::bigint)) AS c;
