-- apicore 0.1.0 -> 0.2.0: run by ALTER EXTENSION apicore UPDATE.
--
-- Every change to sql/install/*.sql since 0.1.0 (commit 25c637a) must be
-- repeated here as ALTER / CREATE OR REPLACE / DROP / GRANT / COMMENT ...:
-- when you change sql/install, add the matching statements to this file in
-- the same commit.  test/t/090_upgrade.pl compares a database updated with
-- this script with a fresh CREATE EXTENSION and fails on any difference.
--
-- Mind what the install script does in order that an update does not:
--   - 99_end.sql turns apicore.maintenance_task.builtin's default to false,
--     so a task apicore adds here must be inserted with builtin = true;
--   - a new table that holds user data needs pg_extension_config_dump here too;
--   - CREATE OR REPLACE FUNCTION cannot change a function's result type or
--     argument names: DROP and CREATE it (and whatever depends on it) instead.
--

\echo Use "ALTER EXTENSION apicore UPDATE" to load this file. \quit

-- ---------- core (maintenance, idempotency, cursors): least privilege ----------
-- Tasks are written by apicore's owner only and run as their function's owner;
-- the worker view and the stats view are for monitoring; maintenance-only
-- functions are not for PUBLIC; SQL run as another role names its operators.
REVOKE ALL ON apicore.maintenance_task FROM PUBLIC;
REVOKE ALL ON FUNCTION apicore.maintenance_workers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apicore.maintenance_workers() TO pg_monitor;
GRANT SELECT ON apicore.maintenance_workers TO pg_monitor;
CREATE OR REPLACE VIEW apicore.idempotency_stats AS
    SELECT c.proceed, c.replay, c.conflict, c.mismatch, c.takeover,
           (SELECT count(*) FROM apicore.idempotency_key) AS rows,
           (SELECT count(*) FROM pg_catalog.pg_inherits
             WHERE inhparent OPERATOR(pg_catalog.=) 'apicore.idempotency_key'::pg_catalog.regclass) AS partitions
      FROM apicore._idempotency_counters() c;
GRANT SELECT ON apicore.idempotency_stats TO pg_monitor;
CREATE OR REPLACE FUNCTION apicore._idempotency_partitions()
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
CREATE OR REPLACE FUNCTION apicore._idempotency_maintain()
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
REVOKE ALL ON FUNCTION apicore._idempotency_create_partition(timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION apicore._idempotency_maintain() FROM PUBLIC;
-- The page's rows as the table's own row type, for drivers that would round
-- jsonb numbers through a double (JavaScript: bigint and numeric beyond
-- 2^53).  One implementation: keyset_page builds the page; the rows come back
-- through jsonb_populate_recordset, which converts jsonb's exact numbers and
-- every other column by the column type's input function.  Runs as the
-- caller, like keyset_page.  extra_float_digits = 1 makes to_jsonb write
-- float4/float8 in their shortest exact form whatever the session's setting.
CREATE FUNCTION apicore.keyset_page_rows(relation anyelement, order_by text,
                                         cursor text DEFAULT NULL, page_size int DEFAULT NULL,
                                         filter jsonb DEFAULT NULL,
                                         OUT item anyelement, OUT has_more bool,
                                         OUT next_cursor text, OUT prev_cursor text)
    RETURNS SETOF record
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    SET extra_float_digits = 1
    AS $$
DECLARE
    rel  regclass;
    page jsonb;
BEGIN
    SELECT t.typrelid INTO rel FROM pg_catalog.pg_type t
     WHERE t.oid = pg_catalog.pg_typeof(relation) AND t.typrelid <> 0;
    IF rel IS NULL THEN
        RAISE EXCEPTION 'keyset_page_rows: relation must be a table''s row type, got %',
                        pg_catalog.pg_typeof(relation)
              USING ERRCODE = 'wrong_object_type',
                    HINT = 'Pass NULL cast to the table''s row type, as in apicore.keyset_page_rows(NULL::orders, ''id'').';
    END IF;
    page := apicore.keyset_page(rel, order_by, cursor, page_size, filter);
    RETURN QUERY
        -- in the select list, not FROM: a FROM alias would lose to a column of that name
        SELECT pg_catalog.jsonb_populate_recordset(relation, page OPERATOR(pg_catalog.->) 'data'),
               (page OPERATOR(pg_catalog.->>) 'has_more')::bool,
               page OPERATOR(pg_catalog.->>) 'next_cursor', page OPERATOR(pg_catalog.->>) 'prev_cursor';
END
$$;
COMMENT ON FUNCTION apicore.keyset_page_rows(anyelement, text, text, int, jsonb) IS
    'keyset_page''s rows as the table''s row type (pass NULL::table), each with the page''s has_more, next_cursor and prev_cursor; no row for an empty page';

-- ---------- end core ----------

-- ---------- sagas: a claim is logged with the run's next transition ----------
-- Steps claimed before the update keep the claim row 0.1.0 wrote: their
-- claim_id stays NULL, so their end is not shown with a second claim.
ALTER TABLE apicore.saga_step
    ADD COLUMN claim_id bigint,
    ADD COLUMN claimed_at timestamptz;
ALTER TABLE apicore.saga_transition
    ADD COLUMN claim_id bigint,
    ADD COLUMN claimed_at timestamptz,
    ADD COLUMN claimed_by text;
CREATE OR REPLACE VIEW apicore.saga_log AS
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

-- ---------- soft delete and tenant isolation: least privilege (issue 13) ----------
-- tenant_isolation_enable gains mode ('setting', 'token', 'role'); tenant
-- tokens and tenants of roles are new.  The C code now maintains each table
-- as its owner, so an archive another role made (enable ran as a superuser
-- in 0.1.0) is given to the table's owner.
DROP FUNCTION apicore.tenant_isolation_enable(regclass, name, text);
CREATE FUNCTION apicore.tenant_isolation_enable(
        tbl regclass, column_name name DEFAULT 'tenant_id',
        setting text DEFAULT 'app.current_tenant', mode text DEFAULT 'setting')
    RETURNS void LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_tenant_isolation_enable';
COMMENT ON FUNCTION apicore.tenant_isolation_enable(regclass, name, text, text) IS
    'restrictive policy column_name = the tenant: current_setting(setting) (mode setting), apicore.current_tenant() (token) or apicore.session_tenant() (role)';

-- Tenants an application's SQL cannot switch (src/tenant.c).
-- Members of apicore_tenant_issuer mint tenant tokens and map login roles to tenants.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'apicore_tenant_issuer') THEN
        CREATE ROLE apicore_tenant_issuer NOLOGIN;
    END IF;
END
$$;

-- Keys that sign tenant tokens: readable by their owner only; apicore's C
-- code reads them as that owner, and nothing SQL-callable returns one.
CREATE TABLE apicore.tenant_key (
    key_id     int PRIMARY KEY CHECK (key_id > 0),
    key        bytea NOT NULL CHECK (octet_length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE apicore.tenant_key IS
    'tenant token keys (owner only): the highest key_id signs new tokens, every row verifies old ones';
REVOKE ALL ON apicore.tenant_key FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('apicore.tenant_key', '');
-- Every backend caches the keys; any change to the table tells them to reload.
CREATE FUNCTION apicore._tenant_key_changed() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'apicore_tenant_key_changed';
REVOKE ALL ON FUNCTION apicore._tenant_key_changed() FROM PUBLIC;
CREATE TRIGGER tenant_key_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON apicore.tenant_key
    FOR EACH STATEMENT EXECUTE FUNCTION apicore._tenant_key_changed();

-- Login roles whose sessions act for a tenant (mode 'role').
CREATE TABLE apicore.tenant_role (
    role   regrole PRIMARY KEY,
    tenant text NOT NULL CHECK (octet_length(tenant) BETWEEN 1 AND 256)
);
COMMENT ON TABLE apicore.tenant_role IS
    'login role -> tenant for apicore.session_tenant() (written by apicore.tenant_role_set)';
REVOKE ALL ON apicore.tenant_role FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('apicore.tenant_role', '');

CREATE FUNCTION apicore.tenant_token(tenant text, ttl interval DEFAULT '1 hour')
    RETURNS text LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_tenant_token';
COMMENT ON FUNCTION apicore.tenant_token(text, interval) IS
    'a signed token that lets its holder act for tenant until now() + ttl (apicore_tenant_issuer)';
REVOKE ALL ON FUNCTION apicore.tenant_token(text, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apicore.tenant_token(text, interval) TO apicore_tenant_issuer;

CREATE FUNCTION apicore.tenant_set(token text, is_local boolean DEFAULT true)
    RETURNS text LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_tenant_set';
COMMENT ON FUNCTION apicore.tenant_set(text, boolean) IS
    'verify a tenant token and act for its tenant until the transaction ends (is_local) or for the session; returns the tenant';

CREATE FUNCTION apicore.current_tenant()
    RETURNS text LANGUAGE c STABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'apicore_current_tenant';
COMMENT ON FUNCTION apicore.current_tenant() IS
    'the tenant apicore.tenant_set() verified, or NULL';

CREATE FUNCTION apicore.tenant_rotate_key()
    RETURNS int LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_tenant_rotate_key';
COMMENT ON FUNCTION apicore.tenant_rotate_key() IS
    'make a new key that signs tenant tokens from now on; older keys still verify theirs';
REVOKE ALL ON FUNCTION apicore.tenant_rotate_key() FROM PUBLIC;

CREATE FUNCTION apicore.tenant_role_set(role regrole, tenant text)
    RETURNS void LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_tenant_role_set';
COMMENT ON FUNCTION apicore.tenant_role_set(regrole, text) IS
    'sessions that log in as role act for tenant (NULL: for none) under mode ''role'' (apicore_tenant_issuer)';
REVOKE ALL ON FUNCTION apicore.tenant_role_set(regrole, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apicore.tenant_role_set(regrole, text) TO apicore_tenant_issuer;

CREATE FUNCTION apicore.session_tenant()
    RETURNS text LANGUAGE c STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'apicore_session_tenant';
COMMENT ON FUNCTION apicore.session_tenant() IS
    'the tenant of the session''s login role (apicore.tenant_role), or NULL';

DO $$
DECLARE
    s record;
BEGIN
    FOR s IN SELECT a.oid::regclass AS archive, t.relowner::regrole AS owner
               FROM apicore.soft_delete_settings d
               JOIN pg_catalog.pg_class t ON t.oid OPERATOR(pg_catalog.=) d.tbl::pg_catalog.oid
               JOIN pg_catalog.pg_class a ON a.oid OPERATOR(pg_catalog.=) d.archive_table::pg_catalog.oid
              WHERE a.relowner OPERATOR(pg_catalog.<>) t.relowner
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s OWNER TO %s', s.archive, s.owner);
    END LOOP;
END
$$;
-- ---------- sagas: least privilege (issue 13) ----------
-- A definition records the role whose rights its local steps run with.
-- Definitions written by 0.1.0 did not: each gets the owner of its first
-- local step's function (the role whose code it is), or apicore's owner
-- when it has no local step.
ALTER TABLE apicore.saga_definition ADD COLUMN definer regrole;
UPDATE apicore.saga_definition d
   SET definer = coalesce(
       (SELECT p.proowner FROM apicore.saga_definition_step s
          JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) coalesce(s.function, s.compensate_function)
         WHERE s.definition OPERATOR(pg_catalog.=) d.name AND s.version OPERATOR(pg_catalog.=) d.version
         ORDER BY s.position LIMIT 1),
       (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname OPERATOR(pg_catalog.=) 'apicore'))::pg_catalog.regrole;
ALTER TABLE apicore.saga_definition ALTER COLUMN definer SET NOT NULL;
-- 0.1.0 could store a retry time past the end of timestamptz (a huge
-- backoff), after which reading the row failed: such steps are due now.
UPDATE apicore.saga_step SET run_after = pg_catalog.now()
 WHERE run_after OPERATOR(pg_catalog.>) '294276-12-31 23:59:59.999999+00'::pg_catalog.timestamptz;
-- The audit log is append-only for its owner too (only retention deletes).
CREATE OR REPLACE FUNCTION apicore._saga_transition_append_only() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'apicore_saga_transition_append_only';
-- The tables are written only through apicore's functions.
REVOKE INSERT, UPDATE ON apicore.saga, apicore.saga_step FROM apicore_saga_worker;
REVOKE INSERT ON apicore.saga_transition FROM apicore_saga_worker;
REVOKE INSERT ON apicore.saga_definition, apicore.saga_definition_step FROM apicore_saga_admin;
REVOKE USAGE ON SEQUENCE apicore.saga_transition_id_seq FROM apicore_saga_worker;
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
GRANT EXECUTE ON FUNCTION apicore.saga_define(text, jsonb),
    apicore.saga_retry(uuid, text, text),
    apicore.saga_resolve(uuid, text, text, text),
    apicore._saga_reclaim_leases(), apicore._saga_fire_deadlines(),
    apicore._saga_run_local_steps(), apicore._saga_retention() TO apicore_saga_admin;
-- ---------- rate limits: least privilege (issue 13) ----------
-- Policies are read by C with the table API (no privileges needed), written
-- only by rate_limit_policy_set/_drop as apicore's owner, for members of
-- apicore_rate_limit_admin; stats for pg_monitor; headers in C, checked.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'apicore_rate_limit_admin') THEN
        CREATE ROLE apicore_rate_limit_admin NOLOGIN;
    END IF;
END
$$;
REVOKE ALL ON apicore.rate_limit_policy FROM PUBLIC;
GRANT SELECT ON apicore.rate_limit_policy TO apicore_rate_limit_admin, pg_monitor;
REVOKE ALL ON FUNCTION apicore._rate_limit_policy_changed() FROM PUBLIC;
CREATE OR REPLACE FUNCTION apicore.rate_limit_policy_drop(name text) RETURNS bool
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_rate_limit_policy_drop';
REVOKE ALL ON FUNCTION apicore.rate_limit_policy_set(text, int, interval, int, text, text),
                       apicore.rate_limit_policy_drop(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apicore.rate_limit_policy_set(text, int, interval, int, text, text),
                          apicore.rate_limit_policy_drop(text) TO apicore_rate_limit_admin;
-- A check names the policy that decided it, and the headers use it.
ALTER TYPE apicore.rate_limit_result ADD ATTRIBUTE policy text;
COMMENT ON TYPE apicore.rate_limit_result IS
    'verdict of a rate-limit check: retry_after is -1 when allowed; seconds, exact to the microsecond; policy is the named policy that decided (NULL for an ad hoc limit)';
CREATE OR REPLACE FUNCTION apicore.rate_limit_headers(r apicore.rate_limit_result, policy text DEFAULT NULL,
                                                      period interval DEFAULT NULL)
    RETURNS jsonb
    LANGUAGE c STABLE
    AS 'MODULE_PATHNAME', 'apicore_rate_limit_headers';
COMMENT ON FUNCTION apicore.rate_limit_headers(apicore.rate_limit_result, text, interval) IS
    'RateLimit-Policy, RateLimit and (when rejected) Retry-After header values, for policy or else the policy that decided r';
REVOKE ALL ON FUNCTION apicore._rate_limit_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apicore._rate_limit_stats() TO pg_monitor, apicore_rate_limit_admin;
GRANT SELECT ON apicore.rate_limit_stats TO pg_monitor, apicore_rate_limit_admin;
REVOKE ALL ON FUNCTION apicore._rate_limit_maintain() FROM PUBLIC;
REVOKE ALL ON FUNCTION apicore.rate_limit_reset(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apicore.rate_limit_reset(text, text) TO apicore_rate_limit_admin;

-- ---------- soft delete: upserts (issue 15) ----------
-- ON CONFLICT ON CONSTRAINT <a unique constraint soft_delete_enable replaced>
-- resolves through a constraint trigger that holds the name (src/soft_delete_upsert.c);
-- tables enabled by 0.1.0 get theirs here.
CREATE FUNCTION apicore._soft_delete_constraint_name()
    RETURNS trigger LANGUAGE c
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_constraint_name';
CREATE FUNCTION apicore._soft_delete_conflict(tbl regclass, target text, pk jsonb)
    RETURNS boolean LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_soft_delete_conflict';
DO $$
DECLARE
    k record;
BEGIN
    FOR k IN SELECT s.tbl::pg_catalog.regclass AS tbl,
                    (pg_catalog.parse_ident(e OPERATOR(pg_catalog.->>) 'index'))[2] AS name
               FROM apicore.soft_delete_settings s,
                    pg_catalog.jsonb_array_elements(s.converted_unique) e
              WHERE pg_catalog.starts_with(e OPERATOR(pg_catalog.->>) 'restore', 'ALTER TABLE ')
                AND pg_catalog.to_regclass(e OPERATOR(pg_catalog.->>) 'index') IS NOT NULL
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                        WHERE tgrelid OPERATOR(pg_catalog.=) k.tbl
                          AND tgname OPERATOR(pg_catalog.=) k.name) THEN
            EXECUTE pg_catalog.format('CREATE CONSTRAINT TRIGGER %I AFTER INSERT ON %s NOT DEFERRABLE '
                                      'FOR EACH ROW WHEN (false) '
                                      'EXECUTE FUNCTION apicore._soft_delete_constraint_name()',
                                      k.name, k.tbl);
        END IF;
    END LOOP;
END
$$;
