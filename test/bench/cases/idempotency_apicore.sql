\set k random(1, 2000000000)
BEGIN;
SELECT outcome, attempt FROM apicore.idempotency_begin('bench', :client_id || '-' || :k, '{"method": "POST", "path": "/orders", "body": {"amount": 10}}');
SELECT apicore.idempotency_complete('bench', :client_id || '-' || :k, 1, 201, '{"id": 1, "amount": 10}', '{"Content-Type": "application/json"}');
COMMIT;
