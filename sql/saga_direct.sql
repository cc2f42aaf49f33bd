-- The one-step claim and the common report take the direct path (table and
-- index access methods, no executor) on every PostgreSQL version apicore
-- builds for, instead of silently falling back to SQL: each says so at DEBUG1.
-- A BEFORE ROW trigger on a saga table sends both back to SQL (no message).
CREATE ROLE sd_app;
GRANT apicore_saga_admin TO sd_app;
SET ROLE sd_app;
SELECT apicore.saga_define('sd_direct', '[{"name": "a"}, {"name": "b"}]') AS version;
SELECT apicore.saga_start('sd_direct', '{}', '00000000-0000-0000-0000-0000000000d1') IS NOT NULL AS started;
SET client_min_messages = debug1;
SELECT step, attempt FROM apicore.saga_claim('sd-worker');
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-0000000000d1', 'a', 1);
RESET client_min_messages;
RESET ROLE;
-- a trigger apicore must honour: both calls go through SQL, which fires it
CREATE TABLE sd_seen (n int);
GRANT INSERT ON sd_seen TO PUBLIC;
CREATE FUNCTION public.sd_note() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN INSERT INTO public.sd_seen VALUES (1); RETURN NEW; END $$;
CREATE TRIGGER sd_note BEFORE UPDATE ON apicore.saga_step FOR EACH ROW EXECUTE FUNCTION public.sd_note();
SET ROLE sd_app;
SET client_min_messages = debug1;
SELECT step, attempt FROM apicore.saga_claim('sd-worker');
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-0000000000d1', 'b', 1);
RESET client_min_messages;
RESET ROLE;
SELECT count(*) > 0 AS trigger_fired FROM sd_seen;
DROP TRIGGER sd_note ON apicore.saga_step;
DROP FUNCTION public.sd_note();
DROP TABLE sd_seen;
SELECT state FROM apicore.sagas WHERE id = '00000000-0000-0000-0000-0000000000d1';
SET apicore.saga_retention = '1s';
UPDATE apicore.saga SET finished_at = finished_at - interval '1 hour' WHERE definition = 'sd_direct';
SELECT apicore._saga_retention() IS NOT NULL AS retention_ran;
RESET apicore.saga_retention;
DELETE FROM apicore.saga_definition_step WHERE definition = 'sd_direct';
DELETE FROM apicore.saga_definition WHERE name = 'sd_direct';
DROP ROLE sd_app;
