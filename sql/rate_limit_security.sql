-- rate_limit_security: rate limits attacked by the roles that may call them
-- (issue 13).  As a superuser it creates an ordinary role (PUBLIC's rights
-- only), members of apicore_rate_limit_admin and pg_monitor, and a victim;
-- then, as each of them, it
--   * hijacks operators and functions in a schema the attacker owns, first
--     in search_path, and calls every entry point: the hijacks record
--     current_user, and must never run as another role;
--   * writes to apicore.rate_limit_policy directly (42501 for every role);
--   * reads policies whose rows a superuser tampered with (clean errors);
--   * guesses and steals concurrency tokens, asks for huge periods, poisons a
--     victim's key with a stricter limit, and injects header text.
\pset null '(null)'
SET apicore.rate_limit_test_clock = 1000000;

CREATE ROLE regress_rls_attacker;
CREATE ROLE regress_rls_admin IN ROLE apicore_rate_limit_admin;
CREATE ROLE regress_rls_monitor IN ROLE pg_monitor;
CREATE ROLE regress_rls_victim;
CREATE SCHEMA regress_rls_evil AUTHORIZATION regress_rls_attacker;
GRANT USAGE, CREATE ON SCHEMA regress_rls_evil TO regress_rls_admin;
-- runs a statement as the current role and returns its SQLSTATE ('ok' if none)
CREATE FUNCTION public.regress_rls_try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE stmt;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END $$;

-- ---------- the attacker's schema: hijacks that record who runs them ----------
SET ROLE regress_rls_attacker;
CREATE TABLE regress_rls_evil.calls (who name, sess name, what text);
GRANT INSERT ON regress_rls_evil.calls TO PUBLIC;
CREATE FUNCTION regress_rls_evil.rec(what text) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO regress_rls_evil.calls VALUES (current_user, session_user, what) $$;
-- = <> < > for every argument type the code could compare, each answering right
DO $$
DECLARE
    t text[];
    o text[];
BEGIN
    FOREACH t SLICE 1 IN ARRAY ARRAY[['text', 'text'], ['integer', 'integer'], ['bigint', 'bigint'],
                                     ['interval', 'interval'], ['name', 'name'], ['oid', 'oid'],
                                     ['regclass', 'oid'], ['boolean', 'boolean'],
                                     ['double precision', 'double precision']] LOOP
        FOREACH o SLICE 1 IN ARRAY ARRAY[['=', 'eq'], ['<>', 'ne'], ['<', 'lt'], ['>', 'gt']] LOOP
            EXECUTE format($f$CREATE FUNCTION regress_rls_evil.%I(a %s, b %s) RETURNS bool LANGUAGE sql
                AS $b$ SELECT regress_rls_evil.rec(%L); SELECT a OPERATOR(pg_catalog.%s) b $b$ $f$,
                o[2] || '_' || replace(t[1], ' ', '_'), t[1], t[2], o[1] || ' ' || t[1], o[1]);
            EXECUTE format('CREATE OPERATOR regress_rls_evil.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = regress_rls_evil.%I)',
                o[1], t[1], t[2], o[2] || '_' || replace(t[1], ' ', '_'));
        END LOOP;
    END LOOP;
END $$;
CREATE FUNCTION regress_rls_evil.cat(a text, b text) RETURNS text LANGUAGE sql
    AS $$ SELECT regress_rls_evil.rec('|| text'); SELECT pg_catalog.textcat(a, b) $$;
CREATE OPERATOR regress_rls_evil.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_rls_evil.cat);
-- functions named like those SQL would call
CREATE FUNCTION regress_rls_evil.now() RETURNS timestamptz LANGUAGE sql
    AS $$ SELECT regress_rls_evil.rec('now()'); SELECT pg_catalog.now() $$;
CREATE FUNCTION regress_rls_evil.ceil(float8) RETURNS float8 LANGUAGE sql
    AS $$ SELECT regress_rls_evil.rec('ceil()'); SELECT pg_catalog.ceil($1) $$;
CREATE FUNCTION regress_rls_evil.replace(text, text, text) RETURNS text LANGUAGE sql
    AS $$ SELECT regress_rls_evil.rec('replace()'); SELECT pg_catalog.replace($1, $2, $3) $$;
CREATE FUNCTION regress_rls_evil.texteq(text, text) RETURNS bool LANGUAGE sql
    AS $$ SELECT regress_rls_evil.rec('texteq()'); SELECT pg_catalog.texteq($1, $2) $$;
CREATE FUNCTION regress_rls_evil.date_part(text, interval) RETURNS float8 LANGUAGE sql
    AS $$ SELECT regress_rls_evil.rec('date_part()'); SELECT pg_catalog.date_part($1, $2) $$;
RESET ROLE;

-- ---------- every entry point, with the hijacks first in search_path ----------
-- the admin defines policies (written as apicore's owner)
SET ROLE regress_rls_admin;
SET search_path = regress_rls_evil, pg_catalog, public;
SELECT apicore.rate_limit_policy_set('sec', 5, '1 minute');
SELECT apicore.rate_limit_policy_set('sec', 3, '1 minute');     -- the ON CONFLICT path
SELECT apicore.rate_limit_policy_set('sec_window', 3, '1 minute', algorithm => 'fixed_window');
SELECT apicore.rate_limit_policy_set('sec_gone', 3, '1 minute');
SELECT apicore.rate_limit_policy_drop('sec_gone') AS dropped, apicore.rate_limit_policy_drop('sec_gone') AS again;
SELECT name, "limit", period FROM apicore.rate_limit_policy WHERE name LIKE 'sec%' ORDER BY name;
SELECT apicore.rate_limit_reset('atk') AS reset, apicore.rate_limit_reset('atk', 'sec') AS reset_one;
SELECT policy, allowed FROM apicore.rate_limit_stats WHERE policy LIKE 'sec%' ORDER BY policy;
RESET search_path;
RESET ROLE;

-- the ordinary role uses them
SET ROLE regress_rls_attacker;
SET search_path = regress_rls_evil, pg_catalog, public;
SELECT 'hijack' = 'hijack' AS hijacks_are_live;
SELECT * FROM apicore.rate_limit('atk', 10, '1 minute');
SELECT * FROM apicore.rate_limit_check('sec', 'atk');
SELECT * FROM apicore.rate_limit_check(ARRAY['sec', 'sec_window'], ARRAY['atk', 'atk']);
SELECT apicore.rate_limit_headers(apicore.rate_limit_check('sec', 'atk'), 'sec');
SELECT apicore.rate_limit_headers(apicore.rate_limit('atk', 10, '1 minute'), 'adhoc', '1 minute');
SELECT apicore.rate_limit_headers(apicore.rate_limit('atk', 10, '1 minute'));
SELECT acquired, in_flight FROM apicore.concurrency_acquire('atk', 1);
SELECT apicore.concurrency_release('atk-2', token) AS released
  FROM apicore.concurrency_acquire('atk-2', 1);
-- what is not the application's: each 42501
SELECT regress_rls_try($$SELECT apicore.rate_limit_policy_set('forged', 1000000, '1 second')$$) AS policy_set,
       regress_rls_try($$SELECT apicore.rate_limit_policy_drop('sec')$$) AS policy_drop,
       regress_rls_try($$SELECT apicore.rate_limit_reset('victim')$$) AS reset,
       regress_rls_try($$SELECT * FROM apicore.rate_limit_stats$$) AS stats,
       regress_rls_try($$SELECT * FROM apicore._rate_limit_stats()$$) AS stats_function,
       regress_rls_try($$SELECT apicore._rate_limit_maintain()$$) AS maintain,
       regress_rls_try($$SELECT * FROM apicore.rate_limit_policy$$) AS read_policies,
       regress_rls_try($$SET apicore.rate_limit_max_period = '3650d'$$) AS raise_max_period;
RESET search_path;
RESET ROLE;

-- the monitor reads the stats
SET ROLE regress_rls_monitor;
SET search_path = regress_rls_evil, pg_catalog, public;
SELECT policy, allowed, rejected FROM apicore.rate_limit_stats WHERE policy LIKE 'sec%' ORDER BY policy;
SELECT capacity FROM apicore.rate_limit_stats WHERE policy IS NULL;
RESET search_path;
RESET ROLE;

-- no hijack ran as anyone but the attackers themselves, and they gained nothing
SELECT count(*) FILTER (WHERE who NOT IN ('regress_rls_attacker', 'regress_rls_admin')) AS ran_as_another_role,
       count(*) FILTER (WHERE who = 'regress_rls_attacker' AND what = '= text') > 0 AS ran_as_attacker
  FROM regress_rls_evil.calls;
SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls
  FROM pg_roles WHERE rolname LIKE 'regress_rls_%' ORDER BY rolname;
SELECT r.rolname AS member, m.rolname AS of_role
  FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.member JOIN pg_roles m ON m.oid = a.roleid
 WHERE r.rolname LIKE 'regress_rls_%' ORDER BY 1, 2;

-- ---------- direct writes to the policy table: 42501 for every role ----------
CREATE TABLE regress_rls_writes (role text, stmt text, result text);
GRANT INSERT ON regress_rls_writes TO PUBLIC;
CREATE FUNCTION regress_rls_write_all(tag text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    stmt text;
BEGIN
    FOREACH stmt IN ARRAY ARRAY[
        $s$INSERT INTO apicore.rate_limit_policy (name, "limit", period) VALUES ('forged', 1000000, '1 second')$s$,
        $s$UPDATE apicore.rate_limit_policy SET "limit" = 1000000$s$,
        $s$DELETE FROM apicore.rate_limit_policy$s$,
        $s$TRUNCATE apicore.rate_limit_policy$s$,
        $s$ALTER TABLE apicore.rate_limit_policy DISABLE TRIGGER USER$s$,
        $s$CREATE TRIGGER forged AFTER INSERT ON apicore.rate_limit_policy EXECUTE FUNCTION apicore._rate_limit_policy_changed()$s$]
    LOOP
        INSERT INTO regress_rls_writes VALUES (tag, split_part(stmt, ' ', 1), regress_rls_try(stmt));
    END LOOP;
END $$;
SET ROLE regress_rls_attacker;
SELECT regress_rls_write_all('PUBLIC');
SET ROLE regress_rls_admin;
SELECT regress_rls_write_all('apicore_rate_limit_admin');
SET ROLE regress_rls_monitor;
SELECT regress_rls_write_all('pg_monitor');
RESET ROLE;
-- and every other packaged role apicore has
DO $$
DECLARE
    r name;
BEGIN
    FOR r IN SELECT rolname FROM pg_roles WHERE rolname LIKE 'apicore\_%' AND rolname <> 'apicore_rate_limit_admin' LOOP
        EXECUTE format('CREATE ROLE %I IN ROLE %I', 'regress_rls_m_' || r, r);
        EXECUTE format('SET ROLE %I', 'regress_rls_m_' || r);
        PERFORM regress_rls_write_all('other packaged role');
        RESET ROLE;
        EXECUTE format('DROP ROLE %I', 'regress_rls_m_' || r);
    END LOOP;
END $$;
SELECT role, string_agg(stmt || ' ' || result, ', ' ORDER BY stmt) AS results
  FROM regress_rls_writes WHERE role <> 'other packaged role' GROUP BY role ORDER BY role;
SELECT count(*) > 0 AS tried, bool_and(result = '42501') AS all_denied
  FROM regress_rls_writes WHERE role = 'other packaged role';
SELECT count(*) AS forged_rows FROM apicore.rate_limit_policy WHERE name = 'forged' OR "limit" = 1000000;

-- ---------- tampered rows: a superuser writes past the table's constraints ----------
BEGIN;
ALTER TABLE apicore.rate_limit_policy
    DROP CONSTRAINT rate_limit_policy_name_check, DROP CONSTRAINT rate_limit_policy_limit_check,
    DROP CONSTRAINT rate_limit_policy_period_check, DROP CONSTRAINT rate_limit_policy_burst_check,
    DROP CONSTRAINT rate_limit_policy_algorithm_check, DROP CONSTRAINT rate_limit_policy_mode_check,
    ALTER COLUMN "limit" DROP NOT NULL;
INSERT INTO apicore.rate_limit_policy (name, "limit", period, burst, algorithm, mode) VALUES
    (E'crlf\r\nX-Injected: 1', 10, '1 minute', NULL, 'gcra', 'enforce'),
    ('frée', 10, '1 minute', NULL, 'gcra', 'enforce'),
    ('huge', 10, '100 years', NULL, 'gcra', 'enforce'),
    ('zero', 10, '0 seconds', NULL, 'gcra', 'enforce'),
    ('negative', -5, '1 minute', NULL, 'gcra', 'enforce'),
    ('no_limit', NULL, '1 minute', NULL, 'gcra', 'enforce'),
    ('refill', 1, '1 day', 1000000, 'gcra', 'enforce'),
    ('leaky', 10, '1 minute', NULL, 'leaky', 'enforce'),
    ('dry', 10, '1 minute', NULL, 'gcra', 'dry-run'),
    (repeat('x', 100), 10, '1 minute', NULL, 'gcra', 'enforce');
SET ROLE regress_rls_attacker;
SELECT translate(left(name, 16), E'\r\n', '~~') AS name,
       regress_rls_try(format('SELECT apicore.rate_limit_check(%L, %L)', name, 'k')) AS check_one,
       regress_rls_try(format('SELECT apicore.rate_limit_check(ARRAY[%L, %L], ARRAY[%L, %L])', 'sec', name, 'k', 'k')) AS check_many,
       regress_rls_try(format('SELECT apicore.rate_limit_headers((true, 1, 1, -1, 0, NULL), %L)', name)) AS headers
  FROM unnest(ARRAY[E'crlf\r\nX-Injected: 1', 'frée', 'huge', 'zero', 'negative', 'no_limit', 'refill',
                    'leaky', 'dry', repeat('x', 100)]) WITH ORDINALITY AS t(name, n) ORDER BY n;
-- one bad row breaks only itself
SELECT allowed FROM apicore.rate_limit_check('sec_window', 'tamper');
-- the message names the policy and says what to do (ROLLBACK also ends SET ROLE)
SELECT apicore.rate_limit_check('huge', 'k');
ROLLBACK;
SELECT count(*) AS constraints_back FROM pg_constraint
 WHERE conrelid = 'apicore.rate_limit_policy'::regclass AND contype = 'c';

-- ---------- concurrency tokens: random, and bound to the role that took them ----------
SET ROLE regress_rls_victim;
SELECT token AS victim_token FROM apicore.concurrency_acquire('shared-slot', 1, '1 minute') \gset
SELECT count(*) AS tokens, bool_and(gap > 1000000) AS far_apart FROM (
    SELECT abs(token - lag(token) OVER (ORDER BY n)) AS gap
      FROM (SELECT n, (apicore.concurrency_acquire('many-slots', 20, '1 minute')).token
              FROM generate_series(1, 20) n) a) s;
RESET ROLE;
SET ROLE regress_rls_attacker;
-- neighbours of the victim's token and small numbers: none releases anything
SELECT count(*) FILTER (WHERE apicore.concurrency_release('shared-slot', t)) AS guessed_releases
  FROM (SELECT :victim_token + d AS t FROM generate_series(-1000, 1000) d WHERE d <> 0
        UNION ALL SELECT generate_series(-10, 1000)) s;
-- the victim's own token, leaked to another role: false, the slot stays taken
SELECT apicore.concurrency_release('shared-slot', :victim_token) AS released_by_other_role;
SELECT acquired, token, in_flight FROM apicore.concurrency_acquire('shared-slot', 1, '1 minute');
RESET ROLE;
SET ROLE regress_rls_victim;
SELECT apicore.concurrency_release('shared-slot', :victim_token) AS released_by_holder;
RESET ROLE;

-- ---------- huge periods: refused, naming the setting ----------
SET ROLE regress_rls_attacker;
SELECT apicore.rate_limit('k', 1, '10 years');
SELECT apicore.rate_limit('k', 1, '1 hour', 1000);
SELECT regress_rls_try($$SELECT apicore.rate_limit('k', 1, '1 day 1 second')$$) AS just_over,
       regress_rls_try($$SELECT apicore.rate_limit('k', 1, '1000000 years')$$) AS million_years,
       regress_rls_try($$SELECT apicore.rate_limit('k', 1, '-1 day')$$) AS negative,
       regress_rls_try($$SELECT apicore.concurrency_acquire('k', 1, '2 days')$$) AS lease,
       regress_rls_try($$SELECT apicore.rate_limit('k', 1, '1 day')$$) AS one_day;
RESET ROLE;
SET ROLE regress_rls_admin;
SELECT regress_rls_try($$SELECT apicore.rate_limit_policy_set('long', 1, '2 days')$$) AS policy_2_days,
       regress_rls_try($$SELECT apicore.rate_limit_policy_set('long', 1, '1 hour', 100)$$) AS policy_refill_100_hours;
RESET ROLE;
-- a superuser may allow longer periods; policies are judged again under the new bound
SET apicore.rate_limit_max_period = '2d';
SELECT (apicore.rate_limit('k', 1, '2 days')).allowed AS two_days_allowed;
SET ROLE regress_rls_admin;
SELECT apicore.rate_limit_policy_set('long', 1, '2 days');
RESET ROLE;
RESET apicore.rate_limit_max_period;
SELECT regress_rls_try($$SELECT apicore.rate_limit_check('long', 'k')$$) AS long_policy_now;
SET ROLE regress_rls_admin;
SELECT apicore.rate_limit_policy_drop('long');
RESET ROLE;

-- keys of the longest period come to rest after it and are reclaimed
SET apicore.rate_limit_test_clock = 2000000;
SET ROLE regress_rls_attacker;
SELECT (apicore.rate_limit('rest-a', 1, '1 day')).allowed AS a, (apicore.rate_limit('rest-b', 1, '1 day')).allowed AS b;
RESET ROLE;
SET apicore.rate_limit_test_clock = 2086399.999999;
SELECT apicore._rate_limit_maintain() IS NOT NULL AS maintained;
SELECT apicore.rate_limit_reset('rest-a') AS a_still_stored;
SET apicore.rate_limit_test_clock = 2086400;
SELECT apicore._rate_limit_maintain() IS NOT NULL AS maintained;
SELECT apicore.rate_limit_reset('rest-b') AS b_still_stored;

-- ---------- poisoning: other parameters for the victim's key make another bucket ----------
SET ROLE regress_rls_victim;
SELECT remaining FROM apicore.rate_limit('victim-key', 100, '1 minute');
RESET ROLE;
SET ROLE regress_rls_attacker;
SELECT count(*) FILTER (WHERE NOT (r).allowed) AS attacker_rejected
  FROM (SELECT apicore.rate_limit('victim-key', 1, '1 minute') AS r FROM generate_series(1, 5)) s;
SELECT (apicore.rate_limit('victim-key', 100, '1 minute', burst => 1)).allowed AS other_burst,
       (apicore.rate_limit('victim-key', 100, '1 hour')).allowed AS other_period;
RESET ROLE;
SET ROLE regress_rls_victim;
SELECT remaining AS victim_remaining FROM apicore.rate_limit('victim-key', 100, '1 minute');
RESET ROLE;
-- (the same key with the same parameters is the same bucket, whoever calls)

-- ---------- header injection ----------
SET ROLE regress_rls_attacker;
SELECT regress_rls_try($$SELECT apicore.rate_limit_headers((true, 1, 1, -1, 0, NULL), E'free\r\nX-Injected: 1')$$) AS crlf,
       regress_rls_try($$SELECT apicore.rate_limit_headers((true, 1, 1, -1, 0, NULL), E'free\nX: 1')$$) AS lf,
       regress_rls_try($$SELECT apicore.rate_limit_headers((true, 1, 1, -1, 0, NULL), E'tab\there')$$) AS tab,
       regress_rls_try($$SELECT apicore.rate_limit_headers((true, 1, 1, -1, 0, NULL), 'frée')$$) AS non_ascii,
       regress_rls_try($$SELECT apicore.rate_limit_headers((true, 1, 1, -1, 0, NULL), repeat('x', 256))$$) AS too_long,
       regress_rls_try($$SELECT apicore.rate_limit_headers((false, 1, 0, 'NaN', 0, NULL))$$) AS nan,
       regress_rls_try($$SELECT apicore.rate_limit_headers((false, 1, 0, '-Infinity', 0, NULL))$$) AS minus_infinity,
       regress_rls_try($$SELECT apicore.rate_limit_headers((true, NULL, 1, -1, 0, NULL))$$) AS null_limit,
       regress_rls_try($$SELECT apicore.rate_limit_headers((true, 1, 1, -1, 0, NULL), NULL, '-1 minute')$$) AS negative_window;
-- the policy a result names is checked as the argument is: no injection through r.policy
SELECT regress_rls_try($$SELECT apicore.rate_limit_headers((false, 1, 0, 2, 0, E'free\r\nX-Injected: 1'))$$) AS crlf_in_result,
       regress_rls_try($$SELECT apicore.rate_limit_headers((false, 1, 0, 2, 0, repeat('x', 256)))$$) AS too_long_in_result;
-- a result naming a policy that does not exist keeps its own numbers and has no window
SELECT apicore.rate_limit_headers((false, 5, 0, 2.5, 60, 'no_such_policy'));
-- quotes and backslashes are escaped as RFC 8941 sf-strings
SELECT apicore.rate_limit_headers((false, 5, 0, 2.5, 60, NULL), 'say "hi" \ bye', '1 minute');
RESET ROLE;
SET ROLE regress_rls_admin;
SELECT regress_rls_try($$SELECT apicore.rate_limit_policy_set(E'evil\r\nX-Injected: 1', 1, '1 minute')$$) AS crlf_policy,
       regress_rls_try($$SELECT apicore.rate_limit_policy_set('frée', 1, '1 minute')$$) AS non_ascii_policy,
       regress_rls_try($$SELECT apicore.rate_limit_policy_set('say "hi"', 1, '1 minute')$$) AS quoted_policy;
RESET ROLE;

-- ---------- clean up ----------
SET ROLE regress_rls_admin;
SELECT apicore.rate_limit_policy_drop('sec') AND apicore.rate_limit_policy_drop('sec_window') AS dropped;
RESET ROLE;
SELECT apicore.rate_limit_reset(k) IS NOT NULL AS reset
  FROM unnest(ARRAY['atk', 'victim-key', 'k', 'tamper']) k;
DROP TABLE regress_rls_writes;
DROP FUNCTION regress_rls_write_all(text);
DROP FUNCTION public.regress_rls_try(text);
SET client_min_messages = warning;
DROP SCHEMA regress_rls_evil CASCADE;
RESET client_min_messages;
DROP ROLE regress_rls_attacker, regress_rls_admin, regress_rls_monitor, regress_rls_victim;
RESET apicore.rate_limit_test_clock;
