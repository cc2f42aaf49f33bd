-- 40_saga.sql — saga state tracking: definitions, sagas, their steps, the
-- append-only transition log, the views and the functions (all in C, saga.c).

-- A definition is immutable once written: saga_define adds a new version,
-- and a running saga keeps the version it started with.  Its local steps
-- run as definer, the role that called saga_define.
CREATE TABLE apicore.saga_definition (
    name       text NOT NULL,
    version    int NOT NULL,
    steps      jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    definer    regrole NOT NULL,
    PRIMARY KEY (name, version)
);
COMMENT ON TABLE apicore.saga_definition IS
    'saga definitions, one row per version; written by apicore.saga_define';

-- The validated steps of a definition, one row each, so that the state
-- machine reads a step with an index lookup instead of parsing jsonb.
CREATE TABLE apicore.saga_definition_step (
    definition          text NOT NULL,
    version             int NOT NULL,
    position            int NOT NULL,
    name                text NOT NULL,
    compensate          text,
    function            regprocedure,
    compensate_function regprocedure,
    timeout             interval NOT NULL,
    max_attempts        int NOT NULL,
    backoff             interval NOT NULL,
    max_backoff         interval NOT NULL,
    PRIMARY KEY (definition, version, position),
    -- a report names its step: found by this index, not by reading every step
    UNIQUE (definition, version, name),
    FOREIGN KEY (definition, version) REFERENCES apicore.saga_definition ON DELETE CASCADE
);

CREATE TABLE apicore.saga (
    id            uuid PRIMARY KEY,
    definition    text NOT NULL,
    version       int NOT NULL,
    -- running | compensating | completed | compensated | failed | cancelled.
    -- No CHECK constraints on the saga tables: PostgreSQL parses them again
    -- for every statement that writes a row, and only saga.c writes here.
    state         text NOT NULL DEFAULT 'running',
    position      int NOT NULL DEFAULT 1,          -- the step the saga is at
    direction     text NOT NULL DEFAULT 'forward',  -- of that step
    payload       jsonb NOT NULL,
    deadline      timestamptz,
    cancel_reason text,                              -- set by saga_cancel / a deadline
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,                       -- completed, compensated or cancelled: retention counts from here
    FOREIGN KEY (definition, version) REFERENCES apicore.saga_definition
) WITH (fillfactor = 80);
-- No index covers the columns a step report changes (position, direction,
-- updated_at), so those updates stay HOT; fillfactor leaves them room.
-- Outputs are not stored here: each is in its step row (saga_step.output).
CREATE INDEX saga_deadline ON apicore.saga (deadline) WHERE state = 'running' AND deadline IS NOT NULL;
CREATE INDEX saga_finished ON apicore.saga (finished_at) WHERE finished_at IS NOT NULL;
COMMENT ON TABLE apicore.saga IS 'one row per saga; use the views apicore.sagas and apicore.saga_dead_letter';

-- One row per step run (forward or compensate) once it has become runnable.
-- The run's settings are copied from the definition so a claim reads one row.
CREATE TABLE apicore.saga_step (
    saga             uuid NOT NULL,   -- apicore.saga(id); no foreign key: its check would cost a query per step, and only retention deletes sagas
    position         int NOT NULL,
    direction        text NOT NULL,   -- forward | compensate
    step             text NOT NULL,
    action           text NOT NULL,   -- what a worker runs: the step, or its compensate name
    definition       text NOT NULL,   -- copied for saga_claim's filter
    function         regprocedure,    -- set: a local step, run by apicore
    state            text NOT NULL DEFAULT 'runnable',  -- runnable | claimed | succeeded | failed | cancelled
    attempt          int NOT NULL DEFAULT 0,
    max_attempts     int NOT NULL,
    timeout          interval NOT NULL,
    backoff          interval NOT NULL,
    max_backoff      interval NOT NULL,
    run_after        timestamptz NOT NULL DEFAULT now(),
    lease_expires_at timestamptz,
    worker           text,
    last_error       text,
    output           jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- The claim of the current (or last) run: its saga_log id, drawn from
    -- saga_transition's sequence when claimed, and its time.  The claim is
    -- written to saga_transition with the run's next transition (see there).
    claim_id         bigint,
    claimed_at       timestamptz,
    PRIMARY KEY (saga, position, direction)
);
CREATE INDEX saga_step_runnable ON apicore.saga_step (run_after) WHERE state = 'runnable' AND function IS NULL;
CREATE INDEX saga_step_local_due ON apicore.saga_step (run_after) WHERE state = 'runnable' AND function IS NOT NULL;
-- lease_expires_at is set exactly while a run is claimed.  The predicate does
-- not mention state, so lookups of one saga's claimed step use the primary key.
CREATE INDEX saga_step_leased ON apicore.saga_step (lease_expires_at) WHERE lease_expires_at IS NOT NULL;

-- The audit trail.  Rows are only ever inserted; the trigger below refuses
-- UPDATE, DELETE and TRUNCATE to every role, the table's owner included,
-- except the DELETE of apicore's retention task, which removes a deleted
-- saga's rows with it.
CREATE TABLE apicore.saga_transition (
    id         bigint GENERATED ALWAYS AS IDENTITY,  -- order of the log; the index below serves it
    saga       uuid NOT NULL,
    step       text,            -- NULL: a transition of the saga itself
    direction  text,
    attempt    int,
    from_state text,
    to_state   text NOT NULL,
    actor      text NOT NULL,
    reason     text,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Set: a second transition in the same row, by the same actor at the
    -- same time: this step run (forward) became runnable.  The common report
    -- (a step succeeded, the next one is runnable) writes one row, not two;
    -- apicore.saga_log shows it as two.
    next_step  text,
    -- Set on a row leaving 'claimed': that run's claim (runnable -> claimed
    -- by claimed_by at claimed_at), whose log id claim_id was drawn from this
    -- table's sequence when the step was claimed.  A claim is the hot path
    -- (every step run has one), so it costs no row of its own: until the run
    -- ends, apicore.saga_log shows it from saga_step.
    claim_id   bigint,
    claimed_at timestamptz,
    claimed_by text
);
CREATE INDEX saga_transition_saga ON apicore.saga_transition (saga, id);

CREATE FUNCTION apicore._saga_transition_append_only() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'apicore_saga_transition_append_only';
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON apicore.saga_transition
    FOR EACH ROW EXECUTE FUNCTION apicore._saga_transition_append_only();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON apicore.saga_transition
    FOR EACH STATEMENT EXECUTE FUNCTION apicore._saga_transition_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON apicore.saga_transition FROM PUBLIC;
REVOKE ALL ON SEQUENCE apicore.saga_transition_id_seq FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('apicore.saga_definition', '');
SELECT pg_catalog.pg_extension_config_dump('apicore.saga_definition_step', '');
SELECT pg_catalog.pg_extension_config_dump('apicore.saga', '');
SELECT pg_catalog.pg_extension_config_dump('apicore.saga_step', '');
SELECT pg_catalog.pg_extension_config_dump('apicore.saga_transition', '');
SELECT pg_catalog.pg_extension_config_dump('apicore.saga_transition_id_seq', '');

-- ---------- views ----------

CREATE VIEW apicore.sagas AS
SELECT g.id, g.definition, g.version, g.state,
       s.step AS current_step, g.direction, s.state AS step_state, s.attempt,
       s.run_after, s.lease_expires_at, s.worker, s.last_error,
       g.deadline, g.cancel_reason, g.created_at, g.updated_at,
       now() - g.created_at AS age
  FROM apicore.saga g
  LEFT JOIN apicore.saga_step s
    ON s.saga = g.id AND s.position = g.position AND s.direction = g.direction;
COMMENT ON VIEW apicore.sagas IS 'one row per saga: state, current step, attempts, age';

CREATE VIEW apicore.saga_dead_letter AS
SELECT id, definition, version, current_step, direction, attempt, last_error,
       created_at, updated_at, age
  FROM apicore.sagas
 WHERE state = 'failed';
COMMENT ON VIEW apicore.saga_dead_letter IS
    'sagas that need an operator: apicore.saga_retry(id, actor, reason) or apicore.saga_resolve(id, outcome, actor, reason)';

-- A row's id is twice its saga_transition id, plus one for the transition
-- folded into it (next_step), so that ORDER BY id is the order of events.  A
-- claim's id is twice the sequence value it drew when claimed: it is shown
-- from the row that ended the run, or from saga_step while the run is claimed.
CREATE VIEW apicore.saga_log AS
SELECT id * 2 AS id, saga, step, direction, attempt, from_state, to_state, actor, reason, at
  FROM apicore.saga_transition
UNION ALL
SELECT id * 2 + 1, saga, next_step, 'forward', NULL, NULL, 'runnable', actor, NULL, at
  FROM apicore.saga_transition
 WHERE next_step IS NOT NULL
UNION ALL
SELECT claim_id * 2, saga, step, direction, attempt, 'runnable', 'claimed', claimed_by, NULL, claimed_at
  FROM apicore.saga_transition
 WHERE claim_id IS NOT NULL
UNION ALL
SELECT claim_id * 2, saga, step, direction, attempt, 'runnable', 'claimed', worker, NULL, claimed_at
  FROM apicore.saga_step
 WHERE state = 'claimed' AND claim_id IS NOT NULL;
COMMENT ON VIEW apicore.saga_log IS 'append-only audit trail of every saga and step transition';

-- ---------- functions ----------

CREATE FUNCTION apicore.saga_define(name text, steps jsonb) RETURNS int
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'apicore_saga_define';
COMMENT ON FUNCTION apicore.saga_define(text, jsonb) IS
    'validate steps and store them as the next version of the definition; returns that version (the latest one when steps are unchanged)';

CREATE FUNCTION apicore.saga_start(definition text, payload jsonb DEFAULT '{}',
        saga_id uuid DEFAULT NULL, deadline interval DEFAULT NULL) RETURNS uuid
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'apicore_saga_start';

CREATE FUNCTION apicore.saga_claim(worker text, definitions text[] DEFAULT NULL, max_steps int DEFAULT 1)
    RETURNS TABLE (saga_id uuid, definition text, version int, step text, direction text,
                   attempt int, payload jsonb, outputs jsonb, idempotency_key text,
                   lease_expires_at timestamptz, action text)
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'apicore_saga_claim';

CREATE FUNCTION apicore.saga_step_succeeded(saga_id uuid, step text, attempt int, output jsonb DEFAULT NULL)
    RETURNS text LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'apicore_saga_step_succeeded';

CREATE FUNCTION apicore.saga_step_failed(saga_id uuid, step text, attempt int, error text,
        retryable bool DEFAULT true)
    RETURNS text LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'apicore_saga_step_failed';

CREATE FUNCTION apicore.saga_heartbeat(saga_id uuid, step text, attempt int) RETURNS timestamptz
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'apicore_saga_heartbeat';

CREATE FUNCTION apicore.saga_cancel(saga_id uuid, reason text) RETURNS text
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'apicore_saga_cancel';

CREATE FUNCTION apicore.saga_retry(saga_id uuid, actor text, reason text) RETURNS text
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'apicore_saga_retry';

CREATE FUNCTION apicore.saga_resolve(saga_id uuid, outcome text, actor text, reason text) RETURNS text
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'apicore_saga_resolve';

CREATE FUNCTION apicore.saga_get(saga_id uuid) RETURNS jsonb
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'apicore_saga_get';

-- ---------- maintenance ----------

CREATE FUNCTION apicore._saga_reclaim_leases() RETURNS text
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'apicore_saga_reclaim_leases';
CREATE FUNCTION apicore._saga_fire_deadlines() RETURNS text
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'apicore_saga_fire_deadlines';
CREATE FUNCTION apicore._saga_run_local_steps() RETURNS text
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'apicore_saga_run_local_steps';
CREATE FUNCTION apicore._saga_retention() RETURNS text
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'apicore_saga_retention';
INSERT INTO apicore.maintenance_task VALUES
    ('saga_reclaim_leases', 'apicore._saga_reclaim_leases', 40),
    ('saga_fire_deadlines', 'apicore._saga_fire_deadlines', 41),
    ('saga_run_local_steps', 'apicore._saga_run_local_steps', 42),
    ('saga_retention', 'apicore._saga_retention', 43);

-- ---------- privileges ----------
-- apicore's saga tables are written only through the functions above, which
-- do their work as apicore's owner: no other role holds INSERT, UPDATE,
-- DELETE or TRUNCATE on them.  Who may call what is EXECUTE on the
-- functions, bundled in two roles (as a Temporal client/worker and its
-- operator, or a pg-boss application and its admin):
--   apicore_saga_worker: start, claim, heartbeat, report, cancel, get, read
--   apicore_saga_admin:  also define, retry, resolve, run the saga maintenance tasks
-- PUBLIC may call none of them.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'apicore_saga_worker') THEN
        CREATE ROLE apicore_saga_worker NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'apicore_saga_admin') THEN
        CREATE ROLE apicore_saga_admin NOLOGIN;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION apicore.saga_define(text, jsonb),
    apicore.saga_start(text, jsonb, uuid, interval),
    apicore.saga_claim(text, text[], int),
    apicore.saga_step_succeeded(uuid, text, int, jsonb),
    apicore.saga_step_failed(uuid, text, int, text, bool),
    apicore.saga_heartbeat(uuid, text, int),
    apicore.saga_cancel(uuid, text),
    apicore.saga_retry(uuid, text, text),
    apicore.saga_resolve(uuid, text, text, text),
    apicore.saga_get(uuid),
    apicore._saga_reclaim_leases(), apicore._saga_fire_deadlines(),
    apicore._saga_run_local_steps(), apicore._saga_retention(),
    apicore._saga_transition_append_only() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apicore.saga_start(text, jsonb, uuid, interval),
    apicore.saga_claim(text, text[], int),
    apicore.saga_step_succeeded(uuid, text, int, jsonb),
    apicore.saga_step_failed(uuid, text, int, text, bool),
    apicore.saga_heartbeat(uuid, text, int),
    apicore.saga_cancel(uuid, text),
    apicore.saga_get(uuid) TO apicore_saga_worker;
GRANT SELECT ON apicore.saga, apicore.saga_step, apicore.saga_definition,
    apicore.saga_definition_step, apicore.saga_transition TO apicore_saga_worker;
GRANT SELECT ON apicore.sagas, apicore.saga_dead_letter, apicore.saga_log TO apicore_saga_worker;
GRANT apicore_saga_worker TO apicore_saga_admin;
GRANT EXECUTE ON FUNCTION apicore.saga_define(text, jsonb),
    apicore.saga_retry(uuid, text, text),
    apicore.saga_resolve(uuid, text, text, text),
    apicore._saga_reclaim_leases(), apicore._saga_fire_deadlines(),
    apicore._saga_run_local_steps(), apicore._saga_retention() TO apicore_saga_admin;
