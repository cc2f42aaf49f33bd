SELECT count(c.id) FROM generate_series(1, 100) g,
  LATERAL apicore.cursor_decode(apicore.cursor_encode(ROW(now(), g::bigint), 'orders'), 'orders') AS c(created_at timestamptz, id bigint);
