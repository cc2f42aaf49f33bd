SELECT jsonb_build_object('data', coalesce(jsonb_agg(to_jsonb(o.*)), '[]'), 'has_more', count(*) > 20)
  FROM (SELECT * FROM bench_orders ORDER BY created_at DESC, id DESC OFFSET 199980 LIMIT 21) o;
