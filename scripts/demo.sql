-- A tour of apicore.  Run by scripts/demo against a throwaway server with
-- apicore preloaded.  Every statement here is runnable as is.
\pset footer off
\set ON_ERROR_STOP 1
CREATE EXTENSION apicore;
SELECT apicore.version();

\echo
\echo '== 1. Idempotency keys: the first request proceeds, the retry replays'
CREATE TABLE orders (id bigserial PRIMARY KEY, account text, amount int,
                     created_at timestamptz NOT NULL DEFAULT now(), status text NOT NULL DEFAULT 'paid');
BEGIN;
SELECT outcome, attempt FROM apicore.idempotency_begin('acct_42', 'key-1',
       '{"method": "POST", "path": "/orders", "body": {"amount": 1000}}');
INSERT INTO orders (account, amount) VALUES ('acct_42', 1000);
SELECT apicore.idempotency_complete('acct_42', 'key-1', 1, 201, '{"id": 1}', '{"Content-Type": "application/json"}');
COMMIT;
SELECT outcome, response_code, response_body FROM apicore.idempotency_begin('acct_42', 'key-1',
       '{"method": "POST", "path": "/orders", "body": {"amount": 1000}}');
-- the same key with another body: 422
SELECT outcome FROM apicore.idempotency_begin('acct_42', 'key-1',
       '{"method": "POST", "path": "/orders", "body": {"amount": 9999}}');

\echo
\echo '== 2. Keyset pages with opaque cursors'
INSERT INTO orders (account, amount, created_at)
SELECT 'acct_' || i % 3, i, '2026-11-01'::timestamptz + i * interval '1 minute' FROM generate_series(1, 50) i;
-- GET /orders?account=acct_1&limit=3: the first page, newest first
SELECT jsonb_pretty(apicore.keyset_page('orders', 'created_at DESC', NULL, 3, '{"account": "acct_1"}'));
-- the client sends next_cursor back for the second page
SELECT apicore.keyset_page('orders', 'created_at DESC', NULL, 3, '{"account": "acct_1"}') ->> 'next_cursor' AS next \gset
SELECT e->>'id' AS id, e->>'created_at' AS created_at
  FROM jsonb_array_elements(apicore.keyset_page('orders', 'created_at DESC', :'next', 3, '{"account": "acct_1"}') -> 'data') e;
-- a cursor of your own, for a hand-written query
SELECT apicore.cursor_encode(ROW(now(), 42::bigint), 'orders') AS cursor \gset
SELECT length(:'cursor') AS cursor_length, :'cursor' AS cursor;
SELECT * FROM apicore.cursor_decode(:'cursor', 'orders') AS c(created_at timestamptz, id bigint);

\echo
\echo '== 3. Rate limits: 3 per minute, the 4th is refused with headers'
SELECT apicore.rate_limit_policy_set('demo', 3, '1 minute');
SELECT i AS request, r.allowed, r.remaining, r.retry_after, apicore.rate_limit_headers(r, 'demo') AS headers
  FROM generate_series(1, 4) i
  CROSS JOIN LATERAL apicore.rate_limit_check('demo', 'client-7', cost => 1 + 0 * i) r;

\echo
\echo '== 4. A saga: two worker steps, the second fails for good, the first is compensated'
SELECT apicore.saga_define('checkout', '[
  {"name": "reserve_stock", "compensate": "release_stock"},
  {"name": "charge_card", "max_attempts": 1}]');
SELECT apicore.saga_start('checkout', '{"order": 7}', '00000000-0000-0000-0000-000000000007');
SELECT step, direction, attempt, idempotency_key FROM apicore.saga_claim('demo-worker') \gset
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-000000000007', :'step', :attempt, '{"reservation": "r-1"}');
SELECT step, direction, attempt FROM apicore.saga_claim('demo-worker') \gset
SELECT apicore.saga_step_failed('00000000-0000-0000-0000-000000000007', :'step', :attempt, 'card declined', false);
SELECT step, direction, attempt FROM apicore.saga_claim('demo-worker') \gset
SELECT :'step' AS step, :'direction' AS direction;
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-000000000007', :'step', :attempt);
SELECT id, state FROM apicore.sagas WHERE id = '00000000-0000-0000-0000-000000000007';
SELECT step, direction, attempt, from_state, to_state, actor, reason FROM apicore.saga_log
 WHERE saga = '00000000-0000-0000-0000-000000000007' ORDER BY id;

\echo
\echo '== 5. Soft delete: DELETE reports its rows, nobody sees them, the email is reusable'
CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE);
INSERT INTO users VALUES (1, 'ada@example.com'), (2, 'bob@example.com');
SELECT apicore.soft_delete_enable('users');
CREATE ROLE app LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON users TO app;
SET ROLE app;
DELETE FROM users WHERE id = 1 RETURNING id, email;
SELECT * FROM users;
INSERT INTO users VALUES (3, 'ada@example.com');
RESET ROLE;
SELECT id, email, deleted_at IS NOT NULL AS deleted FROM users ORDER BY id;   -- superuser bypasses RLS

\echo
\echo '== The maintenance worker keeps all of it tidy; one round by hand:'
SELECT * FROM apicore.run_maintenance();
