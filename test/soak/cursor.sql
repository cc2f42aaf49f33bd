\set n random(1, 1900)
SELECT soak_cursor(:n);
