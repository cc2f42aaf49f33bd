\set id random(1, 500000)
SELECT id, email, payload FROM sdb.plain WHERE id = :id AND deleted_at IS NULL;
