\set k random(1, 500)
SELECT soak_rate_limit(:k);
