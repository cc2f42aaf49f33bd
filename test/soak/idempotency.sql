\set k random(1, 3000)
SELECT soak_idempotency(:k);
