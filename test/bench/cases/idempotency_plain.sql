\set k random(1, 2000000000)
BEGIN;
INSERT INTO idem_plain (scope, key, fingerprint, state, attempt, locked_until, created_at, expires_at)
  VALUES ('bench', :client_id || '-' || :k, sha256('{"method": "POST", "path": "/orders", "body": {"amount": 10}}'::jsonb::text::bytea),
          'running', 1, now() + interval '1 minute', now(), now() + interval '24 hours')
  ON CONFLICT (scope, key) DO NOTHING;
SELECT state, attempt, fingerprint, locked_until, response_code, response_body, response_headers
  FROM idem_plain WHERE scope = 'bench' AND key = :client_id || '-' || :k FOR UPDATE;
UPDATE idem_plain SET state = 'completed', response_code = 201, response_body = '{"id": 1, "amount": 10}',
       response_headers = '{"Content-Type": "application/json"}', locked_until = NULL
 WHERE scope = 'bench' AND key = :client_id || '-' || :k AND attempt = 1;
COMMIT;
