\set id random(1, 500000)
UPDATE sdb.plain SET deleted_at = now() WHERE id = :id AND deleted_at IS NULL;
