-- apicore 0.1.0: generated from sql/install/*.sql by make; edit those files
\echo Use "CREATE EXTENSION apicore" to load this file. \quit
-- 00_core.sql — the schema-wide pieces: version, maintenance task registry and worker.

CREATE FUNCTION apicore.version() RETURNS text
    LANGUAGE c IMMUTABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'apicore_version';
COMMENT ON FUNCTION apicore.version() IS 'version of the loaded apicore library';

-- Maintenance tasks: each capability's fragment inserts its own rows.  A task
-- is a function with no arguments returning text (what it did, for the report).
CREATE TABLE apicore.maintenance_task (
    task      text PRIMARY KEY,
    function  regproc NOT NULL,
    run_order int NOT NULL DEFAULT 100,
    builtin   bool NOT NULL DEFAULT true   -- 99_end.sql turns the default to false for rows users add
);
COMMENT ON TABLE apicore.maintenance_task IS
    'maintenance tasks run by the apicore worker and apicore.run_maintenance(), in run_order';

CREATE FUNCTION apicore.run_maintenance()
    RETURNS TABLE (task text, detail text)
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_run_maintenance';
COMMENT ON FUNCTION apicore.run_maintenance() IS
    'run every maintenance task now, each in a subtransaction; one row per task';
REVOKE ALL ON FUNCTION apicore.run_maintenance() FROM PUBLIC;

CREATE FUNCTION apicore.maintenance_workers()
    RETURNS TABLE (database text, pid int, rounds bigint, tasks_failed bigint,
                   started_at timestamptz, last_round_at timestamptz, last_error text)
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_maintenance_workers';
CREATE VIEW apicore.maintenance_workers AS SELECT * FROM apicore.maintenance_workers();
COMMENT ON VIEW apicore.maintenance_workers IS
    'one row per database worker: rounds run, failures, last error (needs shared_preload_libraries)';

GRANT USAGE ON SCHEMA apicore TO PUBLIC;
-- 10_idempotency.sql — idempotency keys: the key table (range-partitioned by
-- expires_at), the SQL functions (C, src/idempotency.c), the stats view and
-- the partition maintenance task.

-- One row per (scope, key) attempt history.  Rows are partitioned by
-- expires_at, which is fixed when the key is first begun, so a row never
-- moves and a partition can be dropped as soon as its upper bound has passed:
-- every key in it has expired by then.  Uniqueness of (scope, key) across
-- partitions is enforced by src/idempotency.c (advisory lock + lookup), not by
-- an index, because a unique index must include the partition key.
CREATE TABLE apicore.idempotency_key (
    scope            text        NOT NULL,
    key              text        NOT NULL,
    state            text        NOT NULL
        CHECK (state IN ('running', 'completed', 'released')),
    attempt          int         NOT NULL,
    fingerprint      bytea,
    recovery_point   text,
    lease            interval,
    lease_expires_at timestamptz,
    response_code    int,
    response_body    text,
    response_headers jsonb,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL
) PARTITION BY RANGE (expires_at);
COMMENT ON TABLE apicore.idempotency_key IS
    'idempotency keys; read them with apicore.idempotency_get(), never write them directly';

-- Safety net: rows whose expires_at lies beyond the premade partitions (the
-- worker did not run for a while) land here; maintenance moves them into the
-- dated partition when it creates it.
CREATE TABLE apicore.idempotency_key_default
    PARTITION OF apicore.idempotency_key DEFAULT;

-- Each partition has its own (scope, key) index, made with the partition, and
-- the parent has none: a partitioned index would make ATTACH create the
-- child's index itself, and pg_restore, which creates the child's index from
-- the dump, would then fail on the name.
CREATE INDEX ON apicore.idempotency_key_default (scope, key);

-- pg_dump: the default partition is an extension member, so its rows are
-- dumped only through config_dump.  Dated partitions are created later by
-- maintenance, are not extension members, and pg_dump dumps them (DDL and
-- rows) like any table.
SELECT pg_catalog.pg_extension_config_dump('apicore.idempotency_key_default', '');

CREATE FUNCTION apicore.idempotency_begin(
    scope   text,
    key     text,
    request jsonb    DEFAULT NULL,
    ttl     interval DEFAULT '24 hours',
    lease   interval DEFAULT '1 minute')
    RETURNS TABLE (outcome text, attempt int, recovery_point text, response_code int,
                   response_body text, response_headers jsonb, expires_at timestamptz)
    LANGUAGE c VOLATILE ROWS 1
    AS 'MODULE_PATHNAME', 'apicore_idempotency_begin';
COMMENT ON FUNCTION apicore.idempotency_begin(text, text, jsonb, interval, interval) IS
    'claim an idempotency key: proceed | replay | conflict | mismatch';

CREATE FUNCTION apicore.idempotency_checkpoint(scope text, key text, attempt int,
        recovery_point text)
    RETURNS void LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_idempotency_checkpoint';
COMMENT ON FUNCTION apicore.idempotency_checkpoint(text, text, int, text) IS
    'record the last finished phase of an attempt and renew its lease';

CREATE FUNCTION apicore.idempotency_complete(scope text, key text, attempt int,
        response_code int, response_body text, response_headers jsonb DEFAULT NULL)
    RETURNS void LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_idempotency_complete';
COMMENT ON FUNCTION apicore.idempotency_complete(text, text, int, int, text, jsonb) IS
    'store the response of an attempt; later requests with the key replay it';

CREATE FUNCTION apicore.idempotency_release(scope text, key text, attempt int)
    RETURNS void LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_idempotency_release';
COMMENT ON FUNCTION apicore.idempotency_release(text, text, int) IS
    'give a key up without a response: the next request proceeds afresh';

CREATE FUNCTION apicore.idempotency_get(scope text, key text)
    RETURNS TABLE (scope text, key text, state text, attempt int, recovery_point text,
                   lease_expires_at timestamptz, response_code int, response_body text,
                   response_headers jsonb, created_at timestamptz, expires_at timestamptz)
    LANGUAGE c VOLATILE ROWS 1
    AS 'MODULE_PATHNAME', 'apicore_idempotency_get';
COMMENT ON FUNCTION apicore.idempotency_get(text, text) IS
    'inspect one unexpired key; no row when the key is absent or expired';

CREATE FUNCTION apicore._idempotency_counters(
        OUT proceed bigint, OUT replay bigint, OUT conflict bigint,
        OUT mismatch bigint, OUT takeover bigint)
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_idempotency_counters';

CREATE VIEW apicore.idempotency_stats AS
    SELECT c.proceed, c.replay, c.conflict, c.mismatch, c.takeover,
           (SELECT count(*) FROM apicore.idempotency_key) AS rows,
           (SELECT count(*) FROM pg_catalog.pg_inherits
             WHERE inhparent = 'apicore.idempotency_key'::regclass) AS partitions
      FROM apicore._idempotency_counters() c;
COMMENT ON VIEW apicore.idempotency_stats IS
    'idempotency outcomes since server start (needs shared_preload_libraries), stored rows, partitions';

-- Settings as typed values; a C function, so the settings exist even in a
-- session that has not loaded the library yet.
CREATE FUNCTION apicore._idempotency_settings(
        OUT partition_interval interval, OUT premake int, OUT max_ttl interval)
    LANGUAGE c STABLE
    AS 'MODULE_PATHNAME', 'apicore_idempotency_settings';

-- The dated partitions with their bounds (the default partition excluded).
CREATE FUNCTION apicore._idempotency_partitions()
    RETURNS TABLE (partition regclass, lower_bound timestamptz, upper_bound timestamptz)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog
AS $$
    SELECT c.oid::regclass, b[1]::timestamptz, b[2]::timestamptz
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid,
           regexp_match(pg_get_expr(c.relpartbound, c.oid),
                        $re$FROM \('([^']*)'\) TO \('([^']*)'\)$re$) AS b
     WHERE i.inhparent = 'apicore.idempotency_key'::regclass
       AND b IS NOT NULL
     ORDER BY 2
$$;

-- Create one dated partition [lower_bound, upper_bound).  Built detached and
-- attached afterwards: ATTACH takes only SHARE UPDATE EXCLUSIVE on the parent,
-- where CREATE TABLE .. PARTITION OF would block every lookup.  Rows that
-- landed in the default partition for this range are moved in first.
CREATE FUNCTION apicore._idempotency_create_partition(lower_bound timestamptz,
        upper_bound timestamptz)
    RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog
AS $$
DECLARE
    name  text := format('apicore.%I', 'idempotency_key_p'
                   || to_char(lower_bound AT TIME ZONE 'UTC', 'YYYYMMDD"_"HH24MISS'));
    moved bigint;
BEGIN
    EXECUTE format('CREATE TABLE %s (LIKE apicore.idempotency_key INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
    -- lets ATTACH skip scanning the new table
    EXECUTE format('ALTER TABLE %s ADD CONSTRAINT bounds CHECK (expires_at >= %L AND expires_at < %L)',
                   name, lower_bound, upper_bound);
    EXECUTE format('WITH moved AS (DELETE FROM apicore.idempotency_key_default
                                    WHERE expires_at >= %L AND expires_at < %L RETURNING *)
                    INSERT INTO %s SELECT * FROM moved', lower_bound, upper_bound, name);
    GET DIAGNOSTICS moved = ROW_COUNT;
    EXECUTE format('CREATE INDEX ON %s (scope, key)', name);
    EXECUTE format('ALTER TABLE apicore.idempotency_key ATTACH PARTITION %s FOR VALUES FROM (%L) TO (%L)',
                   name, lower_bound, upper_bound);
    RETURN moved;
END
$$;

-- The maintenance task.  Drops every dated partition whose upper bound has
-- passed (all its keys have expired), then makes sure partitions cover
-- [now, now + max_ttl + premake * interval): enough for the longest ttl plus
-- `premake` intervals of slack for a stalled worker.  Creation starts at the
-- current interval, so a long gap never creates partitions for the past.
-- Each DDL runs under a short lock_timeout in its own subtransaction: a
-- partition that cannot be locked at once is left for the next round, so
-- application queries never wait behind maintenance for more than a moment.
CREATE FUNCTION apicore._idempotency_maintain()
    RETURNS text
    LANGUAGE plpgsql
    SET search_path = pg_catalog
    SET lock_timeout = '200ms'
AS $$
DECLARE
    s        record;
    p        record;
    step     double precision;
    lo       timestamptz;
    hi       timestamptz;
    horizon  timestamptz;
    edge     timestamptz;
    lows     timestamptz[];
    highs    timestamptz[];
    created  int := 0;
    dropped  int := 0;
    truncated int := 0;
    skipped  int := 0;
    moved    bigint := 0;
    purged   bigint := 0;
BEGIN
    SELECT * INTO s FROM apicore._idempotency_settings();
    step := extract(epoch FROM s.partition_interval);

    -- Dropping a partition needs ACCESS EXCLUSIVE on the parent, which every
    -- open transaction that looked a key up holds in ACCESS SHARE: try briefly,
    -- as lookups queue behind the waiting DROP.  Failing that, TRUNCATE frees
    -- the space at once (it locks only the partition, which lookups skip once
    -- it has ended) and the empty table is dropped in a later round.
    PERFORM set_config('lock_timeout', '50ms', true);
    FOR p IN SELECT * FROM apicore._idempotency_partitions() WHERE upper_bound <= now() LOOP
        BEGIN
            EXECUTE format('DROP TABLE %s', p.partition);
            dropped := dropped + 1;
        EXCEPTION WHEN lock_not_available THEN
            BEGIN
                IF pg_relation_size(p.partition) > 0 THEN
                    EXECUTE format('TRUNCATE %s', p.partition);
                    truncated := truncated + 1;
                ELSE
                    skipped := skipped + 1;
                END IF;
            EXCEPTION WHEN lock_not_available THEN
                skipped := skipped + 1;
            END;
        END;
    END LOOP;
    PERFORM set_config('lock_timeout', '200ms', true);

    BEGIN
        DELETE FROM apicore.idempotency_key_default WHERE expires_at <= now();
        GET DIAGNOSTICS purged = ROW_COUNT;
    EXCEPTION WHEN lock_not_available THEN
        skipped := skipped + 1;
    END;

    -- the bounds are read once: the catalog query behind them is the slow part
    SELECT coalesce(array_agg(lower_bound), '{}'), coalesce(array_agg(upper_bound), '{}')
      INTO lows, highs FROM apicore._idempotency_partitions();
    lo := to_timestamp(floor(extract(epoch FROM now()) / step) * step);
    horizon := now() + s.max_ttl + s.premake * s.partition_interval;
    WHILE lo < horizon LOOP
        hi := lo + s.partition_interval;
        -- skip past partitions made with another interval; stop short of the next one
        SELECT max(h) INTO edge FROM unnest(lows, highs) AS b(l, h) WHERE l <= lo AND h > lo;
        IF edge IS NOT NULL THEN
            lo := edge;
            CONTINUE;
        END IF;
        SELECT min(l) INTO edge FROM unnest(lows) AS b(l) WHERE l > lo AND l < hi;
        hi := coalesce(edge, hi);
        BEGIN
            moved := moved + apicore._idempotency_create_partition(lo, hi);
            created := created + 1;
        EXCEPTION WHEN lock_not_available THEN
            skipped := skipped + 1;
            EXIT;
        END;
        lo := hi;
    END LOOP;

    RETURN format('partitions created %s, dropped %s, truncated %s, skipped (locked) %s; rows moved from default %s, expired rows purged from default %s',
                  created, dropped, truncated, skipped, moved, purged);
END
$$;

INSERT INTO apicore.maintenance_task VALUES
    ('idempotency_partitions', 'apicore._idempotency_maintain', 10);
-- 20_cursor.sql — opaque cursors and keyset pages (API.md section 2).

-- Cursor keys: random 256-bit keys, readable by superusers only.  apicore's
-- C code reads them as this table's owner; nothing SQL-callable returns one.
-- WAL-logged (replicas and pg_basebackup copies decode the primary's
-- cursors) and dumped by pg_dump.  The highest key_id seals new cursors;
-- every row still opens old ones.  Delete a row to retire its cursors.
CREATE TABLE apicore.cursor_key (
    key_id     int PRIMARY KEY CHECK (key_id > 0),
    key        bytea NOT NULL CHECK (octet_length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE apicore.cursor_key IS
    'cursor keys (superuser only): the highest key_id seals new cursors, every row opens old ones';
REVOKE ALL ON apicore.cursor_key FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('apicore.cursor_key', '');

-- Every backend caches the keys; any change to the table tells them to reload.
CREATE FUNCTION apicore._cursor_key_changed() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'apicore_cursor_key_changed';
REVOKE ALL ON FUNCTION apicore._cursor_key_changed() FROM PUBLIC;
CREATE TRIGGER cursor_key_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON apicore.cursor_key
    FOR EACH STATEMENT EXECUTE FUNCTION apicore._cursor_key_changed();

CREATE FUNCTION apicore.cursor_encode("position" record, context text DEFAULT NULL,
                                      ttl interval DEFAULT NULL)
    RETURNS text
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_cursor_encode';
COMMENT ON FUNCTION apicore.cursor_encode(record, text, interval) IS
    'seal a position (the sort key of a row) into an opaque, URL-safe cursor bound to context';

CREATE FUNCTION apicore.cursor_decode(cursor text, context text DEFAULT NULL)
    RETURNS record
    LANGUAGE c STABLE
    AS 'MODULE_PATHNAME', 'apicore_cursor_decode';
COMMENT ON FUNCTION apicore.cursor_decode(text, text) IS
    'open a cursor made by cursor_encode with the same context: SELECT * FROM apicore.cursor_decode($1, ctx) AS c(col type, ...)';

CREATE FUNCTION apicore.cursor_rotate_key() RETURNS int
    LANGUAGE c VOLATILE STRICT
    AS 'MODULE_PATHNAME', 'apicore_cursor_rotate_key';
COMMENT ON FUNCTION apicore.cursor_rotate_key() IS
    'make a new current cursor key; older keys keep decoding their cursors';
REVOKE ALL ON FUNCTION apicore.cursor_rotate_key() FROM PUBLIC;

CREATE FUNCTION apicore.keyset_page(relation regclass, order_by text,
                                    cursor text DEFAULT NULL, page_size int DEFAULT NULL,
                                    filter jsonb DEFAULT NULL)
    RETURNS jsonb
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_keyset_page';
COMMENT ON FUNCTION apicore.keyset_page(regclass, text, text, int, jsonb) IS
    'one page of relation in order_by order after (or before) cursor: {"data", "has_more", "next_cursor", "prev_cursor"}';

CREATE FUNCTION apicore.keyset_page_explain(relation regclass, order_by text,
                                            cursor text DEFAULT NULL, page_size int DEFAULT NULL,
                                            filter jsonb DEFAULT NULL)
    RETURNS text[]
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_keyset_page_explain';
COMMENT ON FUNCTION apicore.keyset_page_explain(regclass, text, text, int, jsonb) IS
    'the plan (EXPLAIN, costs off) of the query keyset_page runs for these arguments: check that an index is used';
-- 30_rate_limit.sql — rate limits (API.md section 3): the result type, the
-- policy table, the C functions over shared memory, stats and housekeeping.

CREATE TYPE apicore.rate_limit_result AS (
    allowed     bool,
    "limit"     int,
    remaining   int,
    retry_after float8,
    reset_after float8
);
COMMENT ON TYPE apicore.rate_limit_result IS
    'verdict of a rate-limit check: retry_after is -1 when allowed; seconds, exact to the microsecond';

CREATE FUNCTION apicore.rate_limit(key text, "limit" int, period interval,
                                   burst int DEFAULT NULL, cost int DEFAULT 1)
    RETURNS apicore.rate_limit_result
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_rate_limit';
COMMENT ON FUNCTION apicore.rate_limit(text, int, interval, int, int) IS
    'GCRA as redis-cell CL.THROTTLE: "limit" per period, bursts of up to burst (default "limit"); cost 0 peeks';

-- Named policies: dumped with the database, cached by each backend.
CREATE TABLE apicore.rate_limit_policy (
    name       text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.:-]{1,63}$'),
    "limit"    int NOT NULL CHECK ("limit" > 0),
    period     interval NOT NULL CHECK (period > '0'::interval AND period <= '3660 days'::interval),
    burst      int CHECK (burst > 0),
    algorithm  text NOT NULL DEFAULT 'gcra'
               CHECK (algorithm IN ('gcra', 'fixed_window', 'sliding_window')),
    mode       text NOT NULL DEFAULT 'enforce' CHECK (mode IN ('enforce', 'shadow')),
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE apicore.rate_limit_policy IS
    'named rate limits for apicore.rate_limit_check(); change with rate_limit_policy_set/_drop';
SELECT pg_catalog.pg_extension_config_dump('apicore.rate_limit_policy', '');

CREATE FUNCTION apicore._rate_limit_policy_changed() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'apicore_rate_limit_policy_changed';
CREATE TRIGGER rate_limit_policy_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON apicore.rate_limit_policy
    FOR EACH STATEMENT EXECUTE FUNCTION apicore._rate_limit_policy_changed();

CREATE FUNCTION apicore.rate_limit_policy_set(name text, "limit" int, period interval,
                                              burst int DEFAULT NULL,
                                              algorithm text DEFAULT 'gcra',
                                              mode text DEFAULT 'enforce')
    RETURNS void
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_rate_limit_policy_set';
COMMENT ON FUNCTION apicore.rate_limit_policy_set(text, int, interval, int, text, text) IS
    'create or replace a named policy; algorithm gcra | fixed_window | sliding_window, mode enforce | shadow';

CREATE FUNCTION apicore.rate_limit_policy_drop(name text) RETURNS bool
    LANGUAGE sql VOLATILE
    AS $$ WITH gone AS (DELETE FROM apicore.rate_limit_policy p WHERE p.name = $1 RETURNING 1)
          SELECT count(*) > 0 FROM gone $$;
COMMENT ON FUNCTION apicore.rate_limit_policy_drop(text) IS
    'drop a named policy; false if there was none';

CREATE FUNCTION apicore.rate_limit_check(policy text, key text, cost int DEFAULT 1)
    RETURNS apicore.rate_limit_result
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_rate_limit_check';
COMMENT ON FUNCTION apicore.rate_limit_check(text, text, int) IS
    'check and consume from a named policy for key; shadow policies never reject';

CREATE FUNCTION apicore.rate_limit_check(policies text[], keys text[], cost int DEFAULT 1)
    RETURNS apicore.rate_limit_result
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_rate_limit_check_many';
COMMENT ON FUNCTION apicore.rate_limit_check(text[], text[], int) IS
    'all or nothing: allowed only if every enforced limit allows; a rejected call consumes from none';

CREATE FUNCTION apicore.rate_limit_reset(key text, policy text DEFAULT NULL) RETURNS bool
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_rate_limit_reset';
COMMENT ON FUNCTION apicore.rate_limit_reset(text, text) IS
    'forget key (ad hoc and under every policy, or under one policy); true if it had state';

-- IETF draft-ietf-httpapi-ratelimit-headers-09 fields, ready to send.
CREATE FUNCTION apicore.rate_limit_headers(r apicore.rate_limit_result, policy text DEFAULT NULL,
                                           period interval DEFAULT NULL)
    RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
    quota  int := r."limit";
    win    interval := period;
    name   text := coalesce(policy, 'default');
    item   text;
    result jsonb;
BEGIN
    IF r IS NULL OR r.allowed IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004',
            MESSAGE = 'rate_limit_headers: r must not be NULL',
            HINT = 'Pass the result of apicore.rate_limit() or apicore.rate_limit_check().';
    END IF;
    IF policy IS NOT NULL THEN
        SELECT p."limit", p.period INTO quota, win
          FROM apicore.rate_limit_policy p WHERE p.name = policy;
        quota := coalesce(quota, r."limit");
        win := coalesce(win, period);
    END IF;
    -- a structured-field string: escape backslash and double quote
    item := '"' || replace(replace(name, '\', '\\'), '"', '\"') || '"';
    result := jsonb_build_object(
        'RateLimit-Policy', item || ';q=' || quota
            || coalesce(';w=' || ceil(extract(epoch FROM win))::bigint, ''),
        'RateLimit', item || ';r=' || greatest(r.remaining, 0)
            || ';t=' || ceil(greatest(r.reset_after, 0))::bigint);
    IF NOT r.allowed THEN
        -- delay-seconds, rounded up: a client that waits this long is allowed
        result := result || jsonb_build_object('Retry-After',
            greatest(ceil(r.retry_after), 1)::bigint::text);
    END IF;
    RETURN result;
END
$$;
COMMENT ON FUNCTION apicore.rate_limit_headers(apicore.rate_limit_result, text, interval) IS
    'RateLimit-Policy, RateLimit and (when rejected) Retry-After header values';

CREATE FUNCTION apicore.concurrency_acquire(key text, max_in_flight int,
                                            lease interval DEFAULT '1 minute')
    RETURNS TABLE (acquired bool, token bigint, in_flight int)
    LANGUAGE c VOLATILE ROWS 1
    AS 'MODULE_PATHNAME', 'apicore_concurrency_acquire';
COMMENT ON FUNCTION apicore.concurrency_acquire(text, int, interval) IS
    'take one of max_in_flight slots for key; freed by release, lease expiry or the backend exiting';

CREATE FUNCTION apicore.concurrency_release(key text, token bigint) RETURNS bool
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_concurrency_release';
COMMENT ON FUNCTION apicore.concurrency_release(text, bigint) IS
    'give back a slot; false if the token is unknown or its lease already ran out';

CREATE FUNCTION apicore._rate_limit_stats()
    RETURNS TABLE (policy text, allowed bigint, rejected bigint, shadow_rejected bigint,
                   keys_in_use bigint, capacity bigint, evictions bigint, full_events bigint,
                   leases_in_flight bigint)
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_rate_limit_stats';
CREATE VIEW apicore.rate_limit_stats AS SELECT * FROM apicore._rate_limit_stats();
COMMENT ON VIEW apicore.rate_limit_stats IS
    'per policy (NULL: ad hoc rate_limit calls) allowed, rejected, shadow_rejected; table-wide keys in use, capacity, evictions, full events, leases';

CREATE FUNCTION apicore._rate_limit_maintain() RETURNS text
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_rate_limit_maintain';
INSERT INTO apicore.maintenance_task VALUES ('rate_limit_housekeeping', 'apicore._rate_limit_maintain', 40);
-- 40_saga.sql — saga state tracking: definitions, sagas, their steps, the
-- append-only transition log, the views and the functions (all in C, saga.c).

-- A definition is immutable once written: saga_define adds a new version,
-- and a running saga keeps the version it started with.
CREATE TABLE apicore.saga_definition (
    name       text NOT NULL,
    version    int NOT NULL,
    steps      jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
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
    PRIMARY KEY (saga, position, direction)
);
CREATE INDEX saga_step_runnable ON apicore.saga_step (run_after) WHERE state = 'runnable' AND function IS NULL;
CREATE INDEX saga_step_local_due ON apicore.saga_step (run_after) WHERE state = 'runnable' AND function IS NOT NULL;
-- lease_expires_at is set exactly while a run is claimed.  The predicate does
-- not mention state, so lookups of one saga's claimed step use the primary key.
CREATE INDEX saga_step_leased ON apicore.saga_step (lease_expires_at) WHERE lease_expires_at IS NOT NULL;

-- The audit trail.  Rows are only ever inserted; the trigger below refuses
-- UPDATE and TRUNCATE, and DELETE of a row whose saga still exists (the
-- retention task removes a deleted saga's rows with it).
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
    next_step  text
);
CREATE INDEX saga_transition_saga ON apicore.saga_transition (saga, id);

CREATE FUNCTION apicore._saga_transition_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND NOT EXISTS (SELECT 1 FROM apicore.saga WHERE id = OLD.saga) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'apicore.saga_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = '42501',
              HINT = 'Audit rows leave only with their saga, through apicore.saga_retention.';
END $$;
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON apicore.saga_transition
    FOR EACH ROW EXECUTE FUNCTION apicore._saga_transition_append_only();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON apicore.saga_transition
    FOR EACH STATEMENT EXECUTE FUNCTION apicore._saga_transition_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON apicore.saga_transition FROM PUBLIC;

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
-- folded into it (next_step), so that ORDER BY id is the order of events.
CREATE VIEW apicore.saga_log AS
SELECT id * 2 AS id, saga, step, direction, attempt, from_state, to_state, actor, reason, at
  FROM apicore.saga_transition
UNION ALL
SELECT id * 2 + 1, saga, next_step, 'forward', NULL, NULL, 'runnable', actor, NULL, at
  FROM apicore.saga_transition
 WHERE next_step IS NOT NULL;
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

-- Roles to grant instead of table privileges.  Saga functions run with the
-- caller's rights (a local step's function runs as the session that makes it
-- runnable), so the caller needs these; the roles bundle them.
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
-- start, claim, heartbeat, report, cancel, and read the views
GRANT SELECT, INSERT, UPDATE ON apicore.saga, apicore.saga_step TO apicore_saga_worker;
GRANT SELECT ON apicore.saga_definition, apicore.saga_definition_step TO apicore_saga_worker;
GRANT SELECT, INSERT ON apicore.saga_transition TO apicore_saga_worker;
GRANT SELECT ON apicore.sagas, apicore.saga_dead_letter, apicore.saga_log TO apicore_saga_worker;
GRANT USAGE ON SEQUENCE apicore.saga_transition_id_seq TO apicore_saga_worker;
-- and also define sagas, retry and resolve (operators, deploy scripts)
GRANT apicore_saga_worker TO apicore_saga_admin;
GRANT INSERT ON apicore.saga_definition, apicore.saga_definition_step TO apicore_saga_admin;
-- 50_soft_delete.sql — soft delete enforced by row-level security, and tenant isolation.
-- The C side (src/soft_delete.c) turns DELETE into a soft delete in the planner;
-- this fragment declares its functions, its settings table and its view.

-- Members may restore and purge rows of any soft-delete table (owners always may).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'apicore_soft_delete_admin') THEN
        CREATE ROLE apicore_soft_delete_admin NOLOGIN;
    END IF;
END
$$;

-- What soft_delete_enable changed on each table, for disable and for maintenance.
-- Dumped with the database (pg_extension_config_dump), like the tables' policies.
CREATE TABLE apicore.soft_delete_settings (
    tbl                    regclass PRIMARY KEY,
    column_name            name NOT NULL,
    archive_after          interval,
    purge_after            interval,
    archive_table          regclass,
    converted_unique       jsonb NOT NULL DEFAULT '[]',  -- [{"index": ..., "restore": <DDL disable runs>}]
    kept_unique            jsonb NOT NULL DEFAULT '[]',  -- unique constraints a foreign key needs
    rls_enabled_by_apicore boolean NOT NULL,
    rls_forced_by_apicore  boolean NOT NULL,
    enabled_at             timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_maintenance_at    timestamptz,
    last_maintenance       text
);
COMMENT ON TABLE apicore.soft_delete_settings IS
    'soft-delete tables: column, archive/purge windows and what enable changed (written by apicore functions)';
SELECT pg_catalog.pg_extension_config_dump('apicore.soft_delete_settings', '');
REVOKE ALL ON apicore.soft_delete_settings FROM PUBLIC;
GRANT SELECT ON apicore.soft_delete_settings TO PUBLIC;

CREATE FUNCTION apicore.soft_delete_enable(
        tbl regclass, column_name name DEFAULT 'deleted_at',
        archive_after interval DEFAULT NULL, purge_after interval DEFAULT NULL)
    RETURNS void LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_enable';
COMMENT ON FUNCTION apicore.soft_delete_enable(regclass, name, interval, interval) IS
    'DELETE on tbl marks rows (column_name = now()) and RLS hides them; optional archival and purge windows';

CREATE FUNCTION apicore.soft_delete_configure(
        tbl regclass, archive_after interval DEFAULT NULL, purge_after interval DEFAULT NULL)
    RETURNS void LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_configure';
COMMENT ON FUNCTION apicore.soft_delete_configure(regclass, interval, interval) IS
    'change the archive and purge windows of a soft-delete table (NULL turns one off)';

CREATE FUNCTION apicore.soft_delete_disable(tbl regclass)
    RETURNS void LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_disable';
COMMENT ON FUNCTION apicore.soft_delete_disable(regclass) IS
    'undo soft_delete_enable: DELETE removes rows again, deleted rows become visible, unique constraints return';

CREATE FUNCTION apicore.soft_delete_restore(tbl regclass, pk jsonb)
    RETURNS bigint LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_restore';
COMMENT ON FUNCTION apicore.soft_delete_restore(regclass, jsonb) IS
    'make the deleted row with primary key pk ({"id": 42}) live again, from the table or its archive; rows restored';

CREATE FUNCTION apicore.soft_delete_purge(tbl regclass, pk jsonb)
    RETURNS bigint LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_purge';
COMMENT ON FUNCTION apicore.soft_delete_purge(regclass, jsonb) IS
    'erase the row with primary key pk now, live or deleted, from the table and its archive; rows erased';

CREATE FUNCTION apicore.tenant_isolation_enable(
        tbl regclass, column_name name DEFAULT 'tenant_id',
        setting text DEFAULT 'app.current_tenant')
    RETURNS void LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_tenant_isolation_enable';
COMMENT ON FUNCTION apicore.tenant_isolation_enable(regclass, name, text) IS
    'restrictive policy column_name = current_setting(setting): other tenants'' rows are invisible and unwritable';

-- Trigger functions soft_delete_enable attaches to tables.
CREATE FUNCTION apicore._soft_delete_guard()
    RETURNS trigger LANGUAGE c
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_guard';
CREATE FUNCTION apicore._soft_delete_cascade()
    RETURNS trigger LANGUAGE c
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_cascade';

CREATE FUNCTION apicore._soft_delete_maintain()
    RETURNS text LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_maintain';
REVOKE ALL ON FUNCTION apicore._soft_delete_maintain() FROM PUBLIC;
INSERT INTO apicore.maintenance_task VALUES ('soft_delete_archive_purge', 'apicore._soft_delete_maintain', 50);

CREATE VIEW apicore.soft_delete_tables AS
SELECT s.tbl AS "table",
       s.column_name AS "column",
       round(c.reltuples * coalesce(st.null_frac, 1))::bigint AS live_rows_estimate,
       round(c.reltuples * (1 - coalesce(st.null_frac, 1)))::bigint AS deleted_rows_estimate,
       s.archive_table,
       a.reltuples::bigint AS archived_rows_estimate,
       s.archive_after,
       s.purge_after,
       ARRAY(SELECT pg_catalog.jsonb_array_elements_text(s.kept_unique)) AS kept_unique,
       ARRAY(SELECT e OPERATOR(pg_catalog.->>) 'index'
               FROM pg_catalog.jsonb_array_elements(s.converted_unique) e) AS partial_unique_indexes,
       s.enabled_at,
       s.last_maintenance_at AS last_archive_run,
       s.last_maintenance AS last_archive_result
  FROM apicore.soft_delete_settings s
  JOIN pg_catalog.pg_class c ON c.oid = s.tbl
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_class a ON a.oid = s.archive_table
  LEFT JOIN pg_catalog.pg_stats st
         ON st.schemaname = n.nspname AND st.tablename = c.relname
        AND st.attname = s.column_name AND NOT st.inherited;
COMMENT ON VIEW apicore.soft_delete_tables IS
    'one row per soft-delete table: column, live/deleted/archived row estimates (as of ANALYZE), windows, kept unique constraints, last archive run';
GRANT SELECT ON apicore.soft_delete_tables TO PUBLIC;
-- 99_end.sql — runs after every capability fragment.

-- Every task inserted so far is apicore's own; tasks users add from now on are
-- not, and pg_dump keeps exactly those (the extension script recreates the rest).
ALTER TABLE apicore.maintenance_task ALTER COLUMN builtin SET DEFAULT false;
SELECT pg_catalog.pg_extension_config_dump('apicore.maintenance_task', 'WHERE NOT builtin');
