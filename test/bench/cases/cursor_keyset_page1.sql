SELECT apicore.keyset_page('bench_orders', 'created_at DESC', NULL, 20);
