\set id random(1, 1000000000)
SELECT * FROM apicore.cursor_decode(apicore.cursor_encode(ROW(now(), :id::bigint), 'orders'), 'orders') AS c(created_at timestamptz, id bigint);
