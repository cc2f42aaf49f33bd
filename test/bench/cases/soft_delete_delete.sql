\set id random(1, 500000)
DELETE FROM sdb.soft WHERE id = :id;
