-- rate_limit: GCRA as redis-cell CL.THROTTLE, windows, policies, shadow mode,
-- all-or-nothing checks, headers, concurrency leases, stats and bad input.
-- apicore.rate_limit_test_clock pins the clock (seconds since 1970) so every
-- number below is exact.
--
-- It runs as the roles the README lists, never as a superuser but for setup
-- and housekeeping: regress_rl_app has only what PUBLIC has (USAGE on the
-- schema, EXECUTE on the functions) and a schema of its own, regress_rl_admin
-- is a member of apicore_rate_limit_admin (defines policies), and
-- regress_rl_monitor of pg_monitor (reads the stats).  The test clock is
-- granted to them for this test only.
\pset null '(null)'
CREATE ROLE regress_rl_app;
CREATE SCHEMA regress_rl AUTHORIZATION regress_rl_app;
CREATE ROLE regress_rl_admin IN ROLE apicore_rate_limit_admin;
CREATE ROLE regress_rl_monitor IN ROLE pg_monitor;
GRANT SET ON PARAMETER apicore.rate_limit_test_clock TO regress_rl_app, regress_rl_admin;
\set app 'RESET ROLE; SET ROLE regress_rl_app;'
\set admin 'RESET ROLE; SET ROLE regress_rl_admin;'
\set monitor 'RESET ROLE; SET ROLE regress_rl_monitor;'
:app
SET apicore.rate_limit_test_clock = 1000;

-- redis-cell's own test table: capacity 5 (burst), one unit refilled per second
SELECT 1 AS case, * FROM apicore.rate_limit('cell', 1, '1 second', 5);
SELECT 2 AS case, * FROM apicore.rate_limit('cell', 1, '1 second', 5);
SELECT 3 AS case, * FROM apicore.rate_limit('cell', 1, '1 second', 5);
SELECT 4 AS case, * FROM apicore.rate_limit('cell', 1, '1 second', 5);
SELECT 5 AS case, * FROM apicore.rate_limit('cell', 1, '1 second', 5);
SELECT 6 AS case, * FROM apicore.rate_limit('cell', 1, '1 second', 5);
SET apicore.rate_limit_test_clock = 1003;
SELECT 7 AS case, * FROM apicore.rate_limit('cell', 1, '1 second', 5);
SET apicore.rate_limit_test_clock = 1003.1;
SELECT 8 AS case, * FROM apicore.rate_limit('cell', 1, '1 second', 5);
SET apicore.rate_limit_test_clock = 1004;
SELECT 9 AS case, * FROM apicore.rate_limit('cell', 1, '1 second', 5);
SET apicore.rate_limit_test_clock = 1008;
SELECT 10 AS case, * FROM apicore.rate_limit('cell', 1, '1 second', 5);
SET apicore.rate_limit_test_clock = 1009.5;
SELECT 11 AS case, * FROM apicore.rate_limit('cell', 1, '1 second', 5);
-- cost 0 peeks: nothing consumed
SELECT 12 AS case, * FROM apicore.rate_limit('cell', 1, '1 second', 5, 0);
SELECT 12 AS case, * FROM apicore.rate_limit('cell', 1, '1 second', 5, 0);
-- cost > 1 consumes more
SELECT 13 AS case, * FROM apicore.rate_limit('cell', 1, '1 second', 5, 2);
SELECT 14 AS case, * FROM apicore.rate_limit('cell', 1, '1 second', 5, 5);
-- waiting exactly retry_after (3 s) is enough; a microsecond less is not
SET apicore.rate_limit_test_clock = 1012.499999;
SELECT (apicore.rate_limit('cell', 1, '1 second', 5, 5)).allowed AS one_us_early;
SET apicore.rate_limit_test_clock = 1012.5;
SELECT * FROM apicore.rate_limit('cell', 1, '1 second', 5, 5);

-- burst defaults to limit: 3 per second, refilled every 1/3 s; retry_after is
-- rounded up to the microsecond, never down
SET apicore.rate_limit_test_clock = 2000;
SELECT apicore.rate_limit('third', 3, '1 second') FROM generate_series(1, 3);
SELECT * FROM apicore.rate_limit('third', 3, '1 second');
SET apicore.rate_limit_test_clock = 2000.333333;
SELECT allowed, retry_after FROM apicore.rate_limit('third', 3, '1 second');
SET apicore.rate_limit_test_clock = 2000.333334;
SELECT allowed, remaining FROM apicore.rate_limit('third', 3, '1 second');
-- a new key peeked is not stored
SELECT * FROM apicore.rate_limit('never-charged', 10, '1 minute', cost => 0);
-- (rate_limit_reset is the admin's, or granted to the application)
:admin
SELECT apicore.rate_limit_reset('never-charged') AS had_state;
SELECT apicore.rate_limit_reset('third') AS had_state, apicore.rate_limit_reset('third') AS again;
:app
SELECT remaining FROM apicore.rate_limit('third', 3, '1 second');

-- fixed window: 3 per aligned 10 s window
:admin
SELECT apicore.rate_limit_policy_set('fixed', 3, '10 seconds', algorithm => 'fixed_window');
:app
SET apicore.rate_limit_test_clock = 3004;
SELECT * FROM apicore.rate_limit_check('fixed', 'u1', 2);
SELECT * FROM apicore.rate_limit_check('fixed', 'u1');
SELECT * FROM apicore.rate_limit_check('fixed', 'u1');
SET apicore.rate_limit_test_clock = 3009.999999;
SELECT allowed FROM apicore.rate_limit_check('fixed', 'u1');
SET apicore.rate_limit_test_clock = 3010;
SELECT * FROM apicore.rate_limit_check('fixed', 'u1', 3);
-- a limit lowered below what the window already used: nothing remains, nothing negative
:admin
SELECT apicore.rate_limit_policy_set('fixed', 2, '10 seconds', algorithm => 'fixed_window');
:app
SELECT * FROM apicore.rate_limit_check('fixed', 'u1');

-- sliding window: 10 per 10 s, previous window weighted by what is left of it
:admin
SELECT apicore.rate_limit_policy_set('sliding', 10, '10 seconds', algorithm => 'sliding_window');
:app
SET apicore.rate_limit_test_clock = 4005;
SELECT * FROM apicore.rate_limit_check('sliding', 'u1', 8);
-- 2.5 s into the next window: 8 * 0.75 = 6 still count, 4 left
SET apicore.rate_limit_test_clock = 4012.5;
SELECT * FROM apicore.rate_limit_check('sliding', 'u1', 4);
SELECT * FROM apicore.rate_limit_check('sliding', 'u1', 1);
-- 8 * (1 - e/10) + 4 + 1 <= 10 once e >= 3.75 s
SET apicore.rate_limit_test_clock = 4013.749999;
SELECT allowed FROM apicore.rate_limit_check('sliding', 'u1', 1);
SET apicore.rate_limit_test_clock = 4013.75;
SELECT * FROM apicore.rate_limit_check('sliding', 'u1', 1);
-- a cost that only fits in the next window: 5 this window, 8 more wanted
SET apicore.rate_limit_test_clock = 4021;
SELECT * FROM apicore.rate_limit_check('sliding', 'u1', 8);
SELECT allowed FROM apicore.rate_limit_check('sliding', 'u1', 3);

-- tiers: policies per plan, keys per customer
:admin
SELECT apicore.rate_limit_policy_set('free', 2, '1 minute');
SELECT apicore.rate_limit_policy_set('pro', 100, '1 minute', burst => 20);
:app
SET apicore.rate_limit_test_clock = 5000;
SELECT apicore.rate_limit_check('free', 'acme') FROM generate_series(1, 3);
SELECT allowed, "limit", remaining FROM apicore.rate_limit_check('pro', 'acme');
-- a policy changed in place takes effect at once
:admin
SELECT apicore.rate_limit_policy_set('free', 4, '1 minute');
:app
SELECT allowed, "limit", remaining FROM apicore.rate_limit_check('free', 'acme');
:admin
SELECT name, "limit", period, burst, algorithm, mode FROM apicore.rate_limit_policy ORDER BY name;
:app

-- shadow mode: would-be rejections are counted, nothing is rejected
:admin
SELECT apicore.rate_limit_policy_set('trial', 1, '1 hour', mode => 'shadow');
:app
SELECT apicore.rate_limit_check('trial', 'acme') FROM generate_series(1, 3);
:monitor
SELECT policy, allowed, rejected, shadow_rejected FROM apicore.rate_limit_stats
 WHERE policy IN ('trial', 'free') ORDER BY policy;
:app

-- several limits at once, all or nothing: per-second and per-minute
:admin
SELECT apicore.rate_limit_policy_set('per_second', 2, '1 second');
SELECT apicore.rate_limit_policy_set('per_minute', 3, '1 minute');
:app
SET apicore.rate_limit_test_clock = 6000;
SELECT * FROM apicore.rate_limit_check(ARRAY['per_second', 'per_minute'], ARRAY['k', 'k']);
SELECT * FROM apicore.rate_limit_check(ARRAY['per_second', 'per_minute'], ARRAY['k', 'k']);
-- per_second rejects: per_minute is not charged
SELECT * FROM apicore.rate_limit_check(ARRAY['per_second', 'per_minute'], ARRAY['k', 'k']);
SELECT remaining FROM apicore.rate_limit_check('per_minute', 'k', 0);
SET apicore.rate_limit_test_clock = 6001;
SELECT * FROM apicore.rate_limit_check(ARRAY['per_second', 'per_minute'], ARRAY['k', 'k']);
-- now per_minute rejects, and the longest wait is reported
SELECT * FROM apicore.rate_limit_check(ARRAY['per_second', 'per_minute'], ARRAY['k', 'k']);
-- the result names the policy that decided (above: the one with the fewest
-- left while allowed, the longest wait when rejected), and the headers name
-- it with its own quota and window when no policy is passed
SELECT apicore.rate_limit_headers(apicore.rate_limit_check(ARRAY['per_second', 'per_minute'], ARRAY['k', 'k']));
SELECT remaining FROM apicore.rate_limit_check('per_second', 'k', 0);
-- a shadow policy in the set never blocks the call
SELECT allowed FROM apicore.rate_limit_check(ARRAY['per_second', 'trial'], ARRAY['other', 'acme']);
-- reset one policy's key, or a key everywhere
:admin
SELECT apicore.rate_limit_reset('k', 'per_minute');
:app
SELECT remaining FROM apicore.rate_limit_check('per_minute', 'k', 0);
:admin
SELECT apicore.rate_limit_reset('k') AS reset_everywhere;
:app
SELECT remaining FROM apicore.rate_limit_check('per_second', 'k', 0);

-- headers as draft-ietf-httpapi-ratelimit-headers-09 spells them
SET apicore.rate_limit_test_clock = 7000;
SELECT apicore.rate_limit_headers(apicore.rate_limit_check('free', 'hdr'), 'free');
SELECT apicore.rate_limit_headers(r, 'free')
  FROM (SELECT apicore.rate_limit_check('free', 'hdr', 3) AS r) s;
SELECT apicore.rate_limit_headers(apicore.rate_limit('hdr', 10, '1 minute'), period => '1 minute');
SELECT apicore.rate_limit_headers(apicore.rate_limit('hdr2', 10, '1 minute'));
-- Retry-After is whole seconds rounded up: 0.333334 s becomes 1
SELECT (apicore.rate_limit('hdr3', 3, '1 second', cost => 3)).allowed;
SELECT apicore.rate_limit_headers(r) ->> 'Retry-After' AS retry_after_header, (r).retry_after
  FROM (SELECT apicore.rate_limit('hdr3', 3, '1 second') AS r) s;

-- the HTTP handler shape: check, then 200 or 429 with headers
CREATE FUNCTION regress_rl.handle_request(api_key text, OUT status int, OUT headers jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    r apicore.rate_limit_result := apicore.rate_limit_check('free', api_key);
BEGIN
    status := CASE WHEN r.allowed THEN 200 ELSE 429 END;
    headers := apicore.rate_limit_headers(r, 'free');
END $$;
SET apicore.rate_limit_test_clock = 8000;
SELECT (h).status, (h).headers
  FROM (SELECT regress_rl.handle_request('client-7') AS h FROM generate_series(1, 5)) s;
DROP FUNCTION regress_rl.handle_request(text);

-- concurrency: at most 2 in flight per key; a release frees a slot
SELECT acquired, token IS NOT NULL AS has_token, in_flight FROM apicore.concurrency_acquire('jobs', 2);
SELECT acquired, token IS NOT NULL AS has_token, in_flight FROM apicore.concurrency_acquire('jobs', 2);
SELECT acquired, token, in_flight FROM apicore.concurrency_acquire('jobs', 2);
SELECT token AS t1 FROM apicore.concurrency_acquire('lease-test', 1, '10 seconds') \gset
SELECT apicore.concurrency_release('lease-test', :t1) AS released,
       apicore.concurrency_release('lease-test', :t1) AS released_twice;
-- an expired lease frees its slot by itself
SELECT acquired FROM apicore.concurrency_acquire('lease-test', 1, '10 seconds');
SELECT acquired FROM apicore.concurrency_acquire('lease-test', 1, '10 seconds');
SET apicore.rate_limit_test_clock = 8010;
SELECT acquired, in_flight FROM apicore.concurrency_acquire('lease-test', 1, '10 seconds');
:monitor
SELECT leases_in_flight FROM apicore.rate_limit_stats WHERE policy IS NULL;
:app

-- housekeeping: keys at rest and expired leases are reclaimed
-- (a maintenance task: the worker runs it, as a superuser here)
SET apicore.rate_limit_test_clock = 100000;
RESET ROLE;
SELECT apicore._rate_limit_maintain();
SELECT apicore._rate_limit_maintain() AS nothing_left;
SELECT task FROM apicore.maintenance_task WHERE task = 'rate_limit_housekeeping';
:monitor
SELECT keys_in_use, capacity, evictions, full_events, leases_in_flight FROM apicore.rate_limit_stats WHERE policy IS NULL;
:app

-- bad input: each a precise SQLSTATE
\set VERBOSITY sqlstate
\set ON_ERROR_STOP 0
SELECT apicore.rate_limit(NULL, 10, '1 minute');
SELECT apicore.rate_limit('', 10, '1 minute');
SELECT apicore.rate_limit('k', NULL, '1 minute');
SELECT apicore.rate_limit('k', 0, '1 minute');
SELECT apicore.rate_limit('k', -5, '1 minute');
SELECT apicore.rate_limit('k', 10, NULL);
SELECT apicore.rate_limit('k', 10, '0 seconds');
SELECT apicore.rate_limit('k', 10, '-1 minute');
SELECT apicore.rate_limit('k', 10, '11 years');
SELECT apicore.rate_limit('k', 10, '1000000 years');
SELECT apicore.rate_limit('k', 2000000000, '1 second');
SELECT apicore.rate_limit('k', 10, '1 minute', -1);
SELECT apicore.rate_limit('k', 10, '1 minute', 0);
SELECT apicore.rate_limit('k', 1, '10 years', 2000000000);
SELECT apicore.rate_limit('k', 10, '1 minute', NULL, -1);
SELECT apicore.rate_limit('k', 10, '1 minute', NULL, 11);
SELECT apicore.rate_limit('k', 10, '1 minute', 5, 6);
SELECT apicore.rate_limit('k', 10, '1 minute', NULL, NULL);
SELECT apicore.rate_limit_check('no_such_policy', 'k');
SELECT apicore.rate_limit_check(NULL, 'k');
SELECT apicore.rate_limit_check('free', NULL);
SELECT apicore.rate_limit_check('free', '');
SELECT apicore.rate_limit_check('free', 'k', 5);
SELECT apicore.rate_limit_check(ARRAY['free', 'pro'], ARRAY['k']);
SELECT apicore.rate_limit_check(ARRAY[]::text[], ARRAY[]::text[]);
SELECT apicore.rate_limit_check(ARRAY[['free']], ARRAY[['k']]);
SELECT apicore.rate_limit_check(ARRAY['free', NULL], ARRAY['k', 'k']);
SELECT apicore.rate_limit_check(ARRAY['free', 'free'], ARRAY['k', 'k']);
SELECT apicore.rate_limit_check(ARRAY['free', 'nope'], ARRAY['k', 'k']);
SELECT apicore.rate_limit_check(NULL::text[], ARRAY['k']);
:admin
SELECT apicore.rate_limit_policy_set('bad', 10, '1 minute', algorithm => 'leaky');
SELECT apicore.rate_limit_policy_set('bad', 10, '1 minute', mode => 'dry-run');
SELECT apicore.rate_limit_policy_set('bad', 10, '1 minute', burst => 5, algorithm => 'fixed_window');
SELECT apicore.rate_limit_policy_set('bad name!', 10, '1 minute');
SELECT apicore.rate_limit_policy_set('', 10, '1 minute');
SELECT apicore.rate_limit_policy_set(NULL, 10, '1 minute');
SELECT apicore.rate_limit_policy_set('bad', 0, '1 minute');
:app
SELECT apicore.rate_limit_headers(NULL);
SELECT apicore.concurrency_acquire('jobs', 0);
SELECT apicore.concurrency_acquire('jobs', 1, '0 seconds');
SELECT apicore.concurrency_acquire(NULL, 1);
SELECT apicore.concurrency_release('jobs', NULL);
SET apicore.rate_limit_test_clock = -1;
SET apicore.rate_limit_test_clock = 1e10;
-- the test clock is for superusers (tests) only
RESET ROLE;
CREATE ROLE regress_rate_limit_app;
SET ROLE regress_rate_limit_app;
SET apicore.rate_limit_test_clock = 1;
RESET ROLE;
DROP ROLE regress_rate_limit_app;
:app
\set ON_ERROR_STOP 1
\set VERBOSITY default
-- the message names the argument and the hint says how to fix it
\set ON_ERROR_STOP 0
SELECT apicore.rate_limit('k', 10, '1 minute', NULL, 11);
SELECT apicore.rate_limit_check('no_such_policy', 'k');
\set ON_ERROR_STOP 1

-- clean up
:admin
SELECT apicore.rate_limit_policy_drop(name) FROM apicore.rate_limit_policy ORDER BY name;
SELECT apicore.rate_limit_policy_drop('free') AS dropped_twice;
RESET apicore.rate_limit_test_clock;
RESET ROLE;
REVOKE SET ON PARAMETER apicore.rate_limit_test_clock FROM regress_rl_app, regress_rl_admin;
DROP SCHEMA regress_rl;
DROP ROLE regress_rl_app, regress_rl_admin, regress_rl_monitor;
