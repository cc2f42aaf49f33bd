UPDATE bench_queue SET state = 'claimed', worker = 'bench-worker', attempt = attempt + 1,
       lease_expires_at = now() + interval '10 minutes'
 WHERE id = (SELECT id FROM bench_queue WHERE state = 'ready' AND run_after <= now()
             ORDER BY run_after LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id, attempt, payload \gset
UPDATE bench_queue SET state = 'done', lease_expires_at = NULL WHERE id = :id AND state = 'claimed' AND attempt = :attempt;
