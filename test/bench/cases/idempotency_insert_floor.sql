\set k random(1, 2000000000)
BEGIN;
INSERT INTO idem_floor VALUES (:k);
COMMIT;
