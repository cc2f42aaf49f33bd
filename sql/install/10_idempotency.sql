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
             WHERE inhparent OPERATOR(pg_catalog.=) 'apicore.idempotency_key'::pg_catalog.regclass) AS partitions
      FROM apicore._idempotency_counters() c;
COMMENT ON VIEW apicore.idempotency_stats IS
    'idempotency outcomes since server start (needs shared_preload_libraries), stored rows, partitions';
-- monitoring reads it without any right on the key table (the view reads it as its owner)
GRANT SELECT ON apicore.idempotency_stats TO pg_monitor;

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
     WHERE i.inhparent OPERATOR(pg_catalog.=) 'apicore.idempotency_key'::pg_catalog.regclass
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
                IF pg_relation_size(p.partition) OPERATOR(pg_catalog.>) 0 THEN
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
    -- cross-type operators are named with their schema: with no exact match in
    -- pg_catalog, another schema could supply one (OPERATOR() binds more
    -- loosely than + and *, hence the parentheses)
    lo := to_timestamp(floor(extract(epoch FROM now()) OPERATOR(pg_catalog./) step)
                       OPERATOR(pg_catalog.*) step);
    horizon := now() + s.max_ttl + (s.premake OPERATOR(pg_catalog.*) s.partition_interval);
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

-- maintenance only: run by the worker and run_maintenance() as their owner
REVOKE ALL ON FUNCTION apicore._idempotency_create_partition(timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION apicore._idempotency_maintain() FROM PUBLIC;

INSERT INTO apicore.maintenance_task VALUES
    ('idempotency_partitions', 'apicore._idempotency_maintain', 10);
