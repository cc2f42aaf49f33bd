-- The foundation: version, the maintenance task registry, run_maintenance()
-- and the validation of the worker's settings.

SELECT apicore.version() = extversion AS version_matches_extension
  FROM pg_extension WHERE extname = 'apicore';

-- Tasks are rows; run_maintenance() runs each in its own subtransaction, as
-- the owner of the task's function with search_path = pg_catalog, pg_temp
-- (so a task names its tables, or sets its own search_path).
CREATE TABLE maintenance_log (task text);
CREATE FUNCTION log_task() RETURNS text LANGUAGE sql
  AS $$ INSERT INTO public.maintenance_log VALUES ('log_task'); SELECT 'logged one row' $$;
CREATE FUNCTION failing_task() RETURNS text LANGUAGE plpgsql SET search_path = public
  AS $$ BEGIN INSERT INTO maintenance_log VALUES ('failing_task'); RAISE EXCEPTION 'disk on fire'; END $$;
INSERT INTO apicore.maintenance_task VALUES
  ('test_failing', 'failing_task', 1),
  ('test_log', 'log_task', 2);

-- the failing task is reported, the next one still runs
SELECT task, detail FROM apicore.run_maintenance() WHERE task LIKE 'test_%';
-- the failing task's write was rolled back, the other one kept
SELECT task FROM maintenance_log ORDER BY task;

-- tasks users add are theirs: pg_dump keeps them, apicore's own come from the install script
SELECT task, builtin FROM apicore.maintenance_task WHERE task LIKE 'test_%' ORDER BY task;
SELECT count(*) AS other_tasks_not_builtin FROM apicore.maintenance_task
 WHERE NOT builtin AND task NOT LIKE 'test_%';
SELECT c.extcondition[array_position(c.extconfig, 'apicore.maintenance_task'::regclass)] AS dump_condition
  FROM pg_extension c WHERE c.extname = 'apicore';

DELETE FROM apicore.maintenance_task WHERE task LIKE 'test_%';
SELECT count(*) AS test_tasks_left FROM apicore.maintenance_task WHERE task LIKE 'test_%';

-- run_maintenance is not for PUBLIC
CREATE ROLE maintenance_nobody;
SET ROLE maintenance_nobody;
SELECT * FROM apicore.run_maintenance();
RESET ROLE;
DROP ROLE maintenance_nobody;

-- The worker's settings are validated when set: a clear error, nothing written.
\set VERBOSITY default
ALTER SYSTEM SET apicore.maintenance_interval = '50ms';
ALTER SYSTEM SET apicore.maintenance_interval = '2d';
ALTER SYSTEM SET apicore.database = 'postgres,,shop';
-- only the worker reads them, at reload: a session cannot change them
SET apicore.maintenance_interval = '1s';
SHOW apicore.maintenance_interval;

