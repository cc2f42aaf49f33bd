-- A database with every capability in use, for sqlsmith: the roles an
-- application really uses, a soft-delete table with tenant isolation and a
-- cascade, saga definitions with a local step, idempotency keys, cursors,
-- rate-limit policies and concurrency slots.  sqlsmith then connects as
-- smith_app, which holds exactly the grants the README lists.
CREATE EXTENSION apicore;
CREATE ROLE smith_app LOGIN;
GRANT CREATE ON SCHEMA public TO smith_app;
GRANT apicore_saga_worker, apicore_saga_admin TO smith_app;

SET ROLE smith_app;
CREATE TABLE public.accounts (id bigint PRIMARY KEY, tenant_id text NOT NULL, email text UNIQUE,
                              created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE public.notes (id bigint PRIMARY KEY, account bigint REFERENCES public.accounts ON DELETE CASCADE,
                           body text);
INSERT INTO public.accounts SELECT g, 't' || (g % 3), 'u' || g || '@example.com' FROM generate_series(1, 200) g;
INSERT INTO public.notes SELECT g, 1 + g % 200, repeat('n', g % 50) FROM generate_series(1, 400) g;
SELECT apicore.soft_delete_enable('public.accounts');
SELECT apicore.soft_delete_enable('public.notes');
SELECT apicore.tenant_isolation_enable('public.accounts');
DELETE FROM public.accounts WHERE id % 7 = 0;

CREATE FUNCTION public.local_step(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT payload $$;
SELECT apicore.saga_define('smith', '[{"name": "a", "compensate": "undo_a"},
                                      {"name": "b", "function": "public.local_step"}]');
SELECT apicore.saga_start('smith', jsonb_build_object('n', g)) FROM generate_series(1, 20) g;
SELECT count(*) FROM apicore.saga_claim('smith-worker', NULL, 5);

SELECT apicore.idempotency_begin('acct_' || g, 'key-' || g, '{"m": "POST"}') FROM generate_series(1, 50) g;
SELECT apicore.cursor_encode(row(now(), 1::bigint));
SELECT apicore.rate_limit('ip:' || g, 100, '1 minute') FROM generate_series(1, 50) g;
SELECT apicore.concurrency_acquire('export', 3);
SELECT * FROM apicore.keyset_page('public.accounts', 'id', NULL, 10);
RESET ROLE;
SELECT apicore.rate_limit_policy_set('smith_policy', 10, '1 second');
