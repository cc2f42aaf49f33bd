-- Idempotency keys (API.md section 1): every outcome, both usage modes,
-- leases and takeover, stale attempts, scopes, fingerprints, replay, errors,
-- partitions and stats.

-- Keep timestamps out of the output; compare them instead.
\set VERBOSITY default

-- The suite runs as an application role with only what the README lists:
-- USAGE on schema apicore and EXECUTE on the idempotency functions (PUBLIC
-- has both by default; granted here all the same), nothing on apicore's
-- tables.  The stats are read by a pg_monitor member; the superuser steps
-- (settings, maintenance, clean-up) say so.
CREATE ROLE idem_app;
CREATE ROLE idem_monitor IN ROLE pg_monitor;
CREATE SCHEMA idem_app AUTHORIZATION idem_app;
GRANT USAGE ON SCHEMA apicore TO idem_app;
GRANT EXECUTE ON FUNCTION apicore.idempotency_begin(text, text, jsonb, interval, interval),
  apicore.idempotency_checkpoint(text, text, int, text),
  apicore.idempotency_complete(text, text, int, int, text, jsonb),
  apicore.idempotency_release(text, text, int), apicore.idempotency_get(text, text) TO idem_app;
-- the test's window on the key table: rows stored for a key, counted as the superuser
CREATE FUNCTION public.idem_stored_rows(k text) RETURNS bigint LANGUAGE sql
  SECURITY DEFINER SET search_path = pg_catalog
  AS $$ SELECT count(*) FROM apicore.idempotency_key WHERE key OPERATOR(pg_catalog.=) k $$;

SET ROLE idem_monitor;

SELECT proceed AS proceed_before, replay AS replay_before, conflict AS conflict_before,
       mismatch AS mismatch_before, takeover AS takeover_before
  FROM apicore.idempotency_stats \gset
RESET ROLE;
SET ROLE idem_app;
SET search_path = idem_app, public;

-- ---------- one transaction: begin, business write, complete, COMMIT ----------
CREATE TABLE orders (id int PRIMARY KEY, amount int);
BEGIN;
SELECT outcome, attempt, recovery_point, response_code, response_body, response_headers,
       expires_at > now() + interval '23 hours' AS expires_in_a_day
  FROM apicore.idempotency_begin('acct_1', 'key-1', '{"method": "POST", "path": "/orders", "body": {"amount": 10}}');
-- nothing is written before complete: the key lives in this backend until commit
SELECT idem_stored_rows('key-1') AS rows_before_complete;
INSERT INTO orders VALUES (1, 10);
SELECT apicore.idempotency_complete('acct_1', 'key-1', 1, 201, '{"id": 1, "amount": 10}',
                                    '{"Content-Type": "application/json", "Location": "/orders/1"}');
COMMIT;

-- the retry replays the stored response byte for byte
SELECT outcome, attempt, response_code, response_body, response_headers
  FROM apicore.idempotency_begin('acct_1', 'key-1', '{"method": "POST", "path": "/orders", "body": {"amount": 10}}');
-- the same request written differently (key order, 10 vs 10.0) is the same request
SELECT outcome FROM apicore.idempotency_begin('acct_1', 'key-1', '{"body": {"amount": 10.0}, "path": "/orders", "method": "POST"}');
-- a different body under the same key is a mismatch
SELECT outcome, attempt, response_code, response_body
  FROM apicore.idempotency_begin('acct_1', 'key-1', '{"method": "POST", "path": "/orders", "body": {"amount": 11}}');
-- NULL request skips the fingerprint check
SELECT outcome FROM apicore.idempotency_begin('acct_1', 'key-1');
-- the fingerprint follows jsonb equality: 1e2 = 100.0 = 100, but order in arrays,
-- null members and scalar-vs-array all count
SELECT outcome FROM apicore.idempotency_begin('fp', 'k', '{"n": 100, "list": [1, 2], "s": "x"}');
SELECT apicore.idempotency_complete('fp', 'k', 1, 200, 'ok');
SELECT outcome FROM apicore.idempotency_begin('fp', 'k', '{"s": "x", "list": [1, 2], "n": 1e2}');
SELECT outcome FROM apicore.idempotency_begin('fp', 'k', '{"n": 100.000, "list": [1, 2], "s": "x"}');
SELECT outcome FROM apicore.idempotency_begin('fp', 'k', '{"n": 100, "list": [2, 1], "s": "x"}');
SELECT outcome FROM apicore.idempotency_begin('fp', 'k', '{"n": 100, "list": [1, 2], "s": "x", "extra": null}');
SELECT outcome FROM apicore.idempotency_begin('fp', 'k', '{"n": "100", "list": [1, 2], "s": "x"}');
SELECT outcome FROM apicore.idempotency_begin('fp', 'k2', '"x"');
SELECT apicore.idempotency_complete('fp', 'k2', 1, 200, 'ok');
SELECT outcome FROM apicore.idempotency_begin('fp', 'k2', '["x"]');
SELECT outcome FROM apicore.idempotency_begin('fp', 'k2', '"x"');
-- the same key in another scope is another key
SELECT outcome, attempt FROM apicore.idempotency_begin('acct_2', 'key-1', '{"method": "POST"}');
SELECT apicore.idempotency_release('acct_2', 'key-1', 1);

-- ROLLBACK leaves no trace: the retry proceeds as attempt 1
BEGIN;
SELECT outcome, attempt FROM apicore.idempotency_begin('acct_1', 'key-2');
INSERT INTO orders VALUES (2, 20);
SELECT apicore.idempotency_complete('acct_1', 'key-2', 1, 201, 'created');
ROLLBACK;
SELECT idem_stored_rows('key-2') AS rows_after_rollback;
SELECT outcome, attempt FROM apicore.idempotency_begin('acct_1', 'key-2');
SELECT apicore.idempotency_complete('acct_1', 'key-2', 1, 500, NULL);
-- a stored error response is replayed too, NULL body included
SELECT outcome, response_code, response_body IS NULL AS body_is_null, response_headers
  FROM apicore.idempotency_begin('acct_1', 'key-2');

-- a duplicate inside the transaction that holds the key is a conflict
BEGIN;
SELECT outcome, attempt FROM apicore.idempotency_begin('acct_1', 'key-3');
SELECT outcome, attempt FROM apicore.idempotency_begin('acct_1', 'key-3');
-- a savepoint rolled back undoes a complete, the key is pending again
SAVEPOINT s;
SELECT apicore.idempotency_complete('acct_1', 'key-3', 1, 200, 'in savepoint');
ROLLBACK TO SAVEPOINT s;
SELECT state, attempt FROM apicore.idempotency_get('acct_1', 'key-3');
COMMIT;
-- committed without complete: the in-flight row was written at commit
SELECT state, attempt, response_code FROM apicore.idempotency_get('acct_1', 'key-3');
SELECT outcome, attempt FROM apicore.idempotency_begin('acct_1', 'key-3');

-- a begin in a rolled-back savepoint is forgotten
BEGIN;
SAVEPOINT s;
SELECT outcome FROM apicore.idempotency_begin('acct_1', 'key-4');
ROLLBACK TO SAVEPOINT s;
SELECT count(*) AS pending_after_savepoint_rollback FROM apicore.idempotency_get('acct_1', 'key-4');
COMMIT;
SELECT idem_stored_rows('key-4') AS rows_key_4;

-- ---------- across transactions, with checkpoints (Brandur's atomic phases) ----------
SELECT outcome, attempt, recovery_point
  FROM apicore.idempotency_begin('acct_1', 'ride-1', '{"method": "POST", "path": "/rides"}',
                                 lease => '1 minute');
SELECT state, attempt, recovery_point, lease_expires_at > now() AS leased
  FROM apicore.idempotency_get('acct_1', 'ride-1');
SELECT apicore.idempotency_checkpoint('acct_1', 'ride-1', 1, 'ride_created');
-- while the lease runs, a retry is a conflict
SELECT outcome, attempt FROM apicore.idempotency_begin('acct_1', 'ride-1', '{"method": "POST", "path": "/rides"}');
SELECT apicore.idempotency_checkpoint('acct_1', 'ride-1', 1, 'charge_created');
SELECT apicore.idempotency_complete('acct_1', 'ride-1', 1, 201, '{"ride": 1}');
SELECT outcome, attempt, response_code, response_body
  FROM apicore.idempotency_begin('acct_1', 'ride-1', '{"method": "POST", "path": "/rides"}');

-- ---------- lease expiry: takeover with attempt + 1 and the recovery point ----------
SELECT outcome, attempt FROM apicore.idempotency_begin('acct_1', 'ride-2', lease => '10 milliseconds');
SELECT apicore.idempotency_checkpoint('acct_1', 'ride-2', 1, 'ride_created');
SELECT pg_sleep(0.05);
SELECT outcome, attempt, recovery_point FROM apicore.idempotency_begin('acct_1', 'ride-2');
-- the stale attempt is refused everywhere and changes nothing
SELECT apicore.idempotency_checkpoint('acct_1', 'ride-2', 1, 'charge_created');
SELECT apicore.idempotency_complete('acct_1', 'ride-2', 1, 201, 'from the stale attempt');
SELECT apicore.idempotency_release('acct_1', 'ride-2', 1);
SELECT state, attempt, recovery_point FROM apicore.idempotency_get('acct_1', 'ride-2');
-- an attempt whose lease ran out without a takeover is refused as well
SELECT outcome, attempt FROM apicore.idempotency_begin('acct_1', 'ride-3', lease => '10 milliseconds');
SELECT pg_sleep(0.05);
SELECT apicore.idempotency_complete('acct_1', 'ride-3', 1, 201, 'too late');
-- the new owner finishes
SELECT apicore.idempotency_complete('acct_1', 'ride-2', 2, 201, 'from attempt 2');
SELECT outcome, attempt, response_body FROM apicore.idempotency_begin('acct_1', 'ride-2');

-- ---------- release: nothing stored, the retry proceeds afresh ----------
SELECT outcome, attempt FROM apicore.idempotency_begin('acct_1', 'rel-1', '{"a": 1}');
SELECT apicore.idempotency_checkpoint('acct_1', 'rel-1', 1, 'validated');
SELECT apicore.idempotency_release('acct_1', 'rel-1', 1);
-- afresh: no recovery point, and a changed request is accepted
SELECT outcome, attempt, recovery_point FROM apicore.idempotency_begin('acct_1', 'rel-1', '{"a": 2}');
SELECT apicore.idempotency_complete('acct_1', 'rel-1', 1, 200, 'stale');
SELECT apicore.idempotency_complete('acct_1', 'rel-1', 2, 200, 'fresh');
-- release inside the transaction that began the key writes nothing
BEGIN;
SELECT outcome, attempt FROM apicore.idempotency_begin('acct_1', 'rel-2');
SELECT apicore.idempotency_release('acct_1', 'rel-2', 1);
SELECT apicore.idempotency_complete('acct_1', 'rel-2', 1, 200, 'after release');
ROLLBACK;
BEGIN;
SELECT outcome, attempt FROM apicore.idempotency_begin('acct_1', 'rel-2');
SELECT apicore.idempotency_release('acct_1', 'rel-2', 1);
COMMIT;
SELECT idem_stored_rows('rel-2') AS rows_rel_2;
-- begun again after a release in the same transaction: attempt 2, attempt 1 stays stale
BEGIN;
SELECT outcome, attempt FROM apicore.idempotency_begin('acct_1', 'rel-3');
SELECT apicore.idempotency_release('acct_1', 'rel-3', 1);
SELECT outcome, attempt FROM apicore.idempotency_begin('acct_1', 'rel-3');
SELECT apicore.idempotency_complete('acct_1', 'rel-3', 1, 200, 'stale');
ROLLBACK;
BEGIN;
SELECT outcome, attempt FROM apicore.idempotency_begin('acct_1', 'rel-3');
SELECT apicore.idempotency_release('acct_1', 'rel-3', 1);
SELECT outcome, attempt FROM apicore.idempotency_begin('acct_1', 'rel-3');
SELECT apicore.idempotency_complete('acct_1', 'rel-3', 2, 200, 'second');
COMMIT;
SELECT outcome, attempt, response_body FROM apicore.idempotency_begin('acct_1', 'rel-3');

-- ---------- ttl: after it the key is absent, whether or not its row exists ----------
SELECT outcome, attempt FROM apicore.idempotency_begin('acct_1', 'short', ttl => '20 milliseconds', lease => '10 milliseconds');
SELECT apicore.idempotency_complete('acct_1', 'short', 1, 200, 'short-lived');
SELECT pg_sleep(0.05);
SELECT count(*) AS get_rows_after_ttl FROM apicore.idempotency_get('acct_1', 'short');
SELECT outcome, attempt FROM apicore.idempotency_begin('acct_1', 'short');
SELECT apicore.idempotency_release('acct_1', 'short', 1);

-- ---------- errors ----------
SELECT * FROM apicore.idempotency_begin(NULL, 'k');
SELECT * FROM apicore.idempotency_begin('s', NULL);
SELECT * FROM apicore.idempotency_begin('', 'k');
SELECT * FROM apicore.idempotency_begin('s', '');
SELECT * FROM apicore.idempotency_begin('s', repeat('k', 256));
SELECT outcome FROM apicore.idempotency_begin('s', repeat('é', 255));
SELECT apicore.idempotency_release('s', repeat('é', 255), 1);
SELECT * FROM apicore.idempotency_begin('s', 'k', ttl => '0 seconds');
SELECT * FROM apicore.idempotency_begin('s', 'k', ttl => '-1 hour');
SELECT * FROM apicore.idempotency_begin('s', 'k', ttl => '8 days');
SELECT * FROM apicore.idempotency_begin('s', 'k', ttl => NULL);
SELECT * FROM apicore.idempotency_begin('s', 'k', lease => '0 seconds');
SELECT * FROM apicore.idempotency_begin('s', 'k', lease => '-1 minute');
SELECT * FROM apicore.idempotency_begin('s', 'k', ttl => '1 minute', lease => '1 hour');
SELECT * FROM apicore.idempotency_begin('s', 'k', lease => NULL);
-- (a superuser setting)
RESET ROLE;
SET apicore.idempotency_max_ttl = '30d';
SET ROLE idem_app;
SELECT outcome FROM apicore.idempotency_begin('s', 'long', ttl => '8 days');
SELECT apicore.idempotency_release('s', 'long', 1);
RESET ROLE;
RESET apicore.idempotency_max_ttl;
SET ROLE idem_app;
-- complete without begin
SELECT apicore.idempotency_complete('s', 'never-begun', 1, 200, 'x');
SELECT apicore.idempotency_checkpoint('s', 'never-begun', 1, 'x');
SELECT apicore.idempotency_release('s', 'never-begun', 1);
-- complete twice
SELECT apicore.idempotency_complete('acct_1', 'key-1', 1, 201, 'again');
-- response code outside 100..599, NULL code, headers that are not an object
SELECT outcome FROM apicore.idempotency_begin('s', 'codes');
SELECT apicore.idempotency_complete('s', 'codes', 1, 99, 'x');
SELECT apicore.idempotency_complete('s', 'codes', 1, 600, 'x');
SELECT apicore.idempotency_complete('s', 'codes', 1, NULL, 'x');
SELECT apicore.idempotency_complete('s', 'codes', 1, 200, 'x', '["not", "an", "object"]');
SELECT apicore.idempotency_complete('s', 'codes', NULL, 200, 'x');
SELECT apicore.idempotency_checkpoint('s', 'codes', 1, NULL);
SELECT apicore.idempotency_complete('s', 'codes', 1, 599, 'edge');
SELECT apicore.idempotency_get(NULL, 'k');
SELECT apicore.idempotency_get('s', '');

-- a large body (toasted) is replayed byte for byte, in both modes
BEGIN;
SELECT outcome FROM apicore.idempotency_begin('big', 'one-tx');
SELECT apicore.idempotency_complete('big', 'one-tx', 1, 200, repeat('0123456789abcdef', 262144) || E'\n\u00e9');
COMMIT;
SELECT outcome FROM apicore.idempotency_begin('big', 'two-tx');
SELECT apicore.idempotency_complete('big', 'two-tx', 1, 200, repeat('0123456789abcdef', 262144) || E'\n\u00e9');
SELECT key, length(response_body), md5(response_body) = md5(repeat('0123456789abcdef', 262144) || E'\n\u00e9') AS same_bytes
  FROM apicore.idempotency_begin('big', 'one-tx'), (VALUES ('one-tx')) k(key)
UNION ALL
SELECT key, length(response_body), md5(response_body) = md5(repeat('0123456789abcdef', 262144) || E'\n\u00e9')
  FROM apicore.idempotency_begin('big', 'two-tx'), (VALUES ('two-tx')) k(key);

-- a read-only transaction (or a hot standby) replays, but cannot claim a key
BEGIN READ ONLY;
SELECT outcome, response_body FROM apicore.idempotency_begin('acct_1', 'key-1');
SELECT outcome FROM apicore.idempotency_begin('acct_1', 'read-only');
ROLLBACK;

-- ---------- privileges: EXECUTE is enough, the table stays closed ----------
-- (everything above ran as idem_app)
SELECT outcome, attempt FROM apicore.idempotency_begin('app', 'k1');
SELECT apicore.idempotency_complete('app', 'k1', 1, 200, 'ok');
SELECT count(*) FROM apicore.idempotency_key;
RESET ROLE;

-- ---------- partitions (maintenance: as the superuser) ----------
-- (the worker may have run a round already, so only the outcome is shown)
SELECT detail LIKE 'partitions created %' AS maintained
  FROM apicore.run_maintenance() WHERE task = 'idempotency_partitions';
-- every key that sat in the default partition was moved to a dated one
SELECT count(*) AS rows_in_default FROM apicore.idempotency_key_default;
-- partitions cover now .. now + max_ttl + premake days, contiguous
SELECT min(lower_bound) <= now() AS covers_now,
       max(upper_bound) >= now() + interval '10 days' AS covers_max_ttl_plus_premake,
       bool_and(upper_bound - lower_bound = interval '1 day') AS one_day_each,
       count(*) = count(DISTINCT lower_bound) AS no_overlap
  FROM apicore._idempotency_partitions();
-- keys are still found after the move
SELECT outcome, response_body FROM apicore.idempotency_begin('acct_1', 'ride-1');
-- a second round has nothing to do
SELECT detail FROM apicore.run_maintenance() WHERE task = 'idempotency_partitions';
-- an expired partition is dropped, a live one is kept
SELECT apicore._idempotency_create_partition('2001-01-01 00:00+00', '2001-01-02 00:00+00');
SELECT detail FROM apicore.run_maintenance() WHERE task = 'idempotency_partitions';
SELECT count(*) AS ancient_partitions FROM apicore._idempotency_partitions()
 WHERE upper_bound < '2002-01-01';

-- ---------- stats ----------
SET ROLE idem_monitor;
SELECT proceed - :proceed_before AS proceed, replay - :replay_before AS replay,
       conflict - :conflict_before AS conflict, mismatch - :mismatch_before AS mismatch,
       takeover - :takeover_before AS takeover, rows > 0 AS has_rows, partitions > 10 AS has_partitions
  FROM apicore.idempotency_stats;

RESET ROLE;

-- clean up
TRUNCATE apicore.idempotency_key;
DROP FUNCTION public.idem_stored_rows(text);
DROP OWNED BY idem_app, idem_monitor;
DROP ROLE idem_app, idem_monitor;
