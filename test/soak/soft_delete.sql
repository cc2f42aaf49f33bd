-- the application role, one tenant per request: insert, delete, list
\set t random(1, 4)
\set victim random(1, 100)
BEGIN;
SET LOCAL ROLE soak_app;
SELECT set_config('app.current_tenant', 't' || :t, true);
INSERT INTO soak_note (tenant_id, body) VALUES ('t' || :t, 'note');
DELETE FROM soak_note WHERE id IN (SELECT id FROM soak_note ORDER BY id DESC OFFSET :victim LIMIT 1);
SELECT count(*) FROM soak_note WHERE id > currval('soak_sd_inserted') - 50;
COMMIT;
