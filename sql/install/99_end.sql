-- 99_end.sql — runs after every capability fragment.

-- Every task inserted so far is apicore's own; tasks users add from now on are
-- not, and pg_dump keeps exactly those (the extension script recreates the rest).
ALTER TABLE apicore.maintenance_task ALTER COLUMN builtin SET DEFAULT false;
SELECT pg_catalog.pg_extension_config_dump('apicore.maintenance_task', 'WHERE NOT builtin');
