\set id random(1, 500000)
SELECT id, email, payload FROM sdb.soft WHERE id = :id;
