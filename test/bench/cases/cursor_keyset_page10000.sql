SELECT apicore.keyset_page('bench_orders', 'created_at DESC', :page10000, 20);
