-- setup.sql — the soak test's schema and workload functions (test/t/085_soak.pl).
-- Each pgbench script calls one function, so a transaction is one realistic
-- API request.  Outcomes that are normal under contention (a lost lease, a
-- step taken over) are caught by their documented SQLSTATE and counted in a
-- sequence; anything else aborts the pgbench client and fails the test.
CREATE ROLE soak_app;
GRANT USAGE ON SCHEMA apicore TO soak_app;

-- counters: sequences, so counting adds no row locks to the workload
CREATE SEQUENCE soak_idem_proceed;
CREATE SEQUENCE soak_idem_stale;      -- 55P03: complete after the lease was taken over
CREATE SEQUENCE soak_saga_started;
CREATE SEQUENCE soak_saga_stale;      -- 55006 / 55000: a report for a step taken over or no longer claimed
CREATE SEQUENCE soak_sd_inserted;
CREATE SEQUENCE soak_slots_abandoned; -- concurrency slots left to expire on purpose

-- soft delete + tenant isolation
CREATE TABLE soak_note (id bigint PRIMARY KEY DEFAULT nextval('soak_sd_inserted'),
                        tenant_id text NOT NULL, body text NOT NULL);
SELECT apicore.soft_delete_enable('soak_note', archive_after => '2 seconds', purge_after => '6 seconds');
SELECT apicore.tenant_isolation_enable('soak_note');
GRANT SELECT, INSERT, DELETE ON soak_note TO soak_app;
GRANT USAGE ON SEQUENCE soak_sd_inserted TO soak_app;

-- keyset pages over a static table
CREATE TABLE soak_feed (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, body text);
INSERT INTO soak_feed SELECT g, '2026-01-01'::timestamptz + g * interval '1 second', 'row ' || g
  FROM generate_series(1, 2000) g;
CREATE INDEX ON soak_feed (created_at, id);

-- rate limits
SELECT apicore.rate_limit_policy_set('soak_api', 50, '1 second');
SELECT apicore.rate_limit_policy_set('soak_daily', 100000, '1 day');

-- sagas: an external step with a short lease, then a local step the worker runs
CREATE FUNCTION soak_local_step(payload jsonb) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT jsonb_build_object('n', payload->'n') $$;
SELECT apicore.saga_define('soak', '[
  {"name": "reserve", "compensate": "release", "timeout": "1 second", "max_attempts": 3,
   "backoff": "100 milliseconds", "max_backoff": "200 milliseconds"},
  {"name": "record", "function": "soak_local_step"},
  {"name": "charge", "compensate": "refund", "timeout": "1 second", "max_attempts": 2,
   "backoff": "100 milliseconds", "max_backoff": "200 milliseconds"}]');

-- One API request with an Idempotency-Key: 1 in 20 attempts dies before
-- completing (its 1-second lease is then taken over); keys live 10 seconds.
CREATE FUNCTION soak_idempotency(k int) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    SELECT * INTO r FROM apicore.idempotency_begin('soak', 'key-' || k,
        jsonb_build_object('method', 'POST', 'path', '/soak', 'body', k), '10 seconds', '1 second');
    IF r.outcome <> 'proceed' THEN
        RETURN r.outcome;
    END IF;
    PERFORM nextval('soak_idem_proceed');
    IF random() < 0.05 THEN
        RETURN 'abandoned';
    END IF;
    BEGIN
        PERFORM apicore.idempotency_complete('soak', 'key-' || k, r.attempt, 201, 'created ' || k);
    EXCEPTION WHEN lock_not_available THEN
        PERFORM nextval('soak_idem_stale');
        RETURN 'stale';
    END;
    RETURN 'completed';
END $$;

-- Cursors: a value cursor round trip, then two keyset pages from a random point.
CREATE FUNCTION soak_cursor(n int) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    c text;
    back record;
    page jsonb;
BEGIN
    c := apicore.cursor_encode(row('2026-01-01'::timestamptz + n * interval '1 second', n::bigint), 'soak');
    SELECT * INTO back FROM apicore.cursor_decode(c, 'soak') AS d(at timestamptz, id bigint);
    IF back.id <> n THEN
        RAISE EXCEPTION 'soak: cursor round trip returned % for %', back.id, n;
    END IF;
    page := apicore.keyset_page('soak_feed', 'created_at, id', NULL, 10, jsonb_build_object('id', ARRAY[n, n + 1, n + 2]));
    page := apicore.keyset_page('soak_feed', 'created_at DESC, id DESC', NULL, 20);
    page := apicore.keyset_page('soak_feed', 'created_at DESC, id DESC', page->>'next_cursor', 20);
    IF jsonb_array_length(page->'data') <> 20 THEN
        RAISE EXCEPTION 'soak: second page has % rows', jsonb_array_length(page->'data');
    END IF;
    RETURN n;
END $$;

-- Rate limits and a concurrency pool of 4: 1 in 50 holders "crashes" and
-- leaves its slot to the 2-second lease.
CREATE FUNCTION soak_rate_limit(k int) RETURNS bool LANGUAGE plpgsql AS $$
DECLARE
    slot record;
BEGIN
    PERFORM apicore.rate_limit_check(ARRAY['soak_api', 'soak_daily'], ARRAY['client-' || k, 'client-' || k]);
    PERFORM apicore.rate_limit('raw-' || k, 10, '1 second');
    SELECT * INTO slot FROM apicore.concurrency_acquire('soak_pool', 4, '2 seconds');
    IF NOT slot.acquired THEN
        RETURN false;
    END IF;
    IF random() < 0.02 THEN
        PERFORM nextval('soak_slots_abandoned');
        RETURN true;
    END IF;
    IF NOT apicore.concurrency_release('soak_pool', slot.token) THEN
        RAISE EXCEPTION 'soak: release of a held slot returned false';
    END IF;
    RETURN true;
END $$;

-- Report one claimed step: succeed (85%), fail retryably (10%), or walk away
-- (5%: the lease runs out and the worker reclaims the step).
CREATE FUNCTION soak_report(s record) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    dice float8 := random();
BEGIN
    IF dice < 0.05 THEN
        RETURN 'abandoned';
    END IF;
    BEGIN
        IF dice < 0.15 AND s.direction = 'forward' THEN
            RETURN apicore.saga_step_failed(s.saga_id, s.step, s.attempt, 'soak: declined');
        END IF;
        RETURN apicore.saga_step_succeeded(s.saga_id, s.step, s.attempt, '{"ok": true}');
    EXCEPTION WHEN object_in_use OR object_not_in_prerequisite_state THEN
        PERFORM nextval('soak_saga_stale');
        RETURN 'stale';
    END;
END $$;

-- A request that starts a saga, and a worker turn that claims and reports.
CREATE FUNCTION soak_saga(n int) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    s record;
    reported int := 0;
BEGIN
    IF random() < 0.5 THEN
        PERFORM apicore.saga_start('soak', jsonb_build_object('n', n));
        PERFORM nextval('soak_saga_started');
    END IF;
    FOR s IN SELECT * FROM apicore.saga_claim('soak-worker-' || pg_backend_pid(), ARRAY['soak'], 2) LOOP
        PERFORM soak_report(s);
        reported := reported + 1;
    END LOOP;
    RETURN reported;
END $$;

-- After the load: claim and succeed whatever is left, as the last worker would.
CREATE FUNCTION soak_drain() RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    s record;
    reported int := 0;
BEGIN
    FOR s IN SELECT * FROM apicore.saga_claim('soak-drain', ARRAY['soak'], 100) LOOP
        BEGIN
            PERFORM apicore.saga_step_succeeded(s.saga_id, s.step, s.attempt, '{"drained": true}');
        EXCEPTION WHEN object_in_use OR object_not_in_prerequisite_state THEN
            NULL;
        END;
        reported := reported + 1;
    END LOOP;
    RETURN reported;
END $$;
