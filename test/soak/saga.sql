\set n random(1, 1000000)
SELECT soak_saga(:n);
