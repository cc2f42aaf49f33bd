-- 30_rate_limit.sql — rate limits (API.md section 3): the result type, the
-- policy table, the C functions over shared memory, stats and housekeeping.
--
-- Privileges: any role with EXECUTE (PUBLIC by default) may check limits,
-- take leases and build headers; the C code reads the policy table itself,
-- so nobody needs privileges on it.  Defining policies is for members of
-- apicore_rate_limit_admin (the functions write the table as apicore's
-- owner); the stats are for pg_monitor and the admin role.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'apicore_rate_limit_admin') THEN
        CREATE ROLE apicore_rate_limit_admin NOLOGIN;
    END IF;
END
$$;

CREATE TYPE apicore.rate_limit_result AS (
    allowed     bool,
    "limit"     int,
    remaining   int,
    retry_after float8,
    reset_after float8,
    policy      text
);
COMMENT ON TYPE apicore.rate_limit_result IS
    'verdict of a rate-limit check: retry_after is -1 when allowed; seconds, exact to the microsecond; policy is the named policy that decided (NULL for an ad hoc limit)';

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
-- written only by rate_limit_policy_set/_drop (as apicore's owner); readable by the admin and monitors
REVOKE ALL ON apicore.rate_limit_policy FROM PUBLIC;
GRANT SELECT ON apicore.rate_limit_policy TO apicore_rate_limit_admin, pg_monitor;

CREATE FUNCTION apicore._rate_limit_policy_changed() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'apicore_rate_limit_policy_changed';
CREATE TRIGGER rate_limit_policy_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON apicore.rate_limit_policy
    FOR EACH STATEMENT EXECUTE FUNCTION apicore._rate_limit_policy_changed();
REVOKE ALL ON FUNCTION apicore._rate_limit_policy_changed() FROM PUBLIC;

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
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_rate_limit_policy_drop';
COMMENT ON FUNCTION apicore.rate_limit_policy_drop(text) IS
    'drop a named policy; false if there was none';
REVOKE ALL ON FUNCTION apicore.rate_limit_policy_set(text, int, interval, int, text, text),
                       apicore.rate_limit_policy_drop(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apicore.rate_limit_policy_set(text, int, interval, int, text, text),
                          apicore.rate_limit_policy_drop(text) TO apicore_rate_limit_admin;

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
-- lifting someone's limit is the admin's; GRANT EXECUTE to an application that needs it
REVOKE ALL ON FUNCTION apicore.rate_limit_reset(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apicore.rate_limit_reset(text, text) TO apicore_rate_limit_admin;

-- IETF draft-ietf-httpapi-ratelimit-headers-09 fields, ready to send.  In C:
-- it reads the policy from the backend's cache (no privileges needed) and
-- refuses any name that is not printable ASCII (no header injection).
CREATE FUNCTION apicore.rate_limit_headers(r apicore.rate_limit_result, policy text DEFAULT NULL,
                                           period interval DEFAULT NULL)
    RETURNS jsonb
    LANGUAGE c STABLE
    AS 'MODULE_PATHNAME', 'apicore_rate_limit_headers';
COMMENT ON FUNCTION apicore.rate_limit_headers(apicore.rate_limit_result, text, interval) IS
    'RateLimit-Policy, RateLimit and (when rejected) Retry-After header values, for policy or else the policy that decided r';

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
-- operational data about every application in the database: for monitors and the admin
REVOKE ALL ON FUNCTION apicore._rate_limit_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apicore._rate_limit_stats() TO pg_monitor, apicore_rate_limit_admin;
GRANT SELECT ON apicore.rate_limit_stats TO pg_monitor, apicore_rate_limit_admin;

CREATE FUNCTION apicore._rate_limit_maintain() RETURNS text
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apicore_rate_limit_maintain';
-- run by the worker and run_maintenance(); it sweeps every partition under its lock
REVOKE ALL ON FUNCTION apicore._rate_limit_maintain() FROM PUBLIC;
INSERT INTO apicore.maintenance_task VALUES ('rate_limit_housekeeping', 'apicore._rate_limit_maintain', 40);
