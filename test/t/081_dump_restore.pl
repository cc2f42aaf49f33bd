# A database that uses every capability survives pg_dump -Fc / pg_restore
# into a new database, and the maintenance worker picks the restored
# database up.  011 covers idempotency partitions alone; this file checks
# that everything comes back together and keeps working:
#   idempotency keys (completed: replayed byte for byte; in flight: still
#   held), cursors (a value cursor and a page cursor minted before the dump
#   decode after it), rate-limit policies (exist, enforce, shadow mode),
#   sagas in every state (running ones continue to completion, their local
#   step run by the worker exactly once, a dead-letter one stays for the
#   operator), soft delete (deleted rows hidden, DELETE
#   still marks, the archive and its settings are back) and tenant isolation.
# Then the DBA's next steps: clone the served database, drop it.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use ApicoreNode;
use Test::More;

my $node = apicore_node('dump_restore', database => 'restored');
$node->safe_psql('postgres', q{
CREATE DATABASE source;
CREATE DATABASE restored;
CREATE ROLE app LOGIN;
});

# ---- the source database: every capability in use
$node->safe_psql('source', q{
CREATE EXTENSION apicore;
GRANT USAGE ON SCHEMA apicore TO app;

-- idempotency: a completed key and one in flight with a checkpoint
SELECT apicore.idempotency_begin('shop', 'paid', '{"method": "POST", "path": "/pay"}');
SELECT apicore.idempotency_complete('shop', 'paid', 1, 201, E'{"id": 7}\n', '{"Location": "/pay/7"}');
SELECT apicore.idempotency_begin('shop', 'inflight', lease => '1 hour');
SELECT apicore.idempotency_checkpoint('shop', 'inflight', 1, 'charged');

-- rate limits: an enforcing and a shadow policy
SELECT apicore.rate_limit_policy_set('api', 3, '1 hour');
SELECT apicore.rate_limit_policy_set('observe', 1, '1 hour', mode => 'shadow');

-- sagas: running, running past its first step, completed, dead letter; the
-- last step of checkout is local: apicore runs record_order itself
CREATE TABLE recorded (n text PRIMARY KEY);
CREATE FUNCTION record_order(payload jsonb) RETURNS jsonb LANGUAGE sql
    AS $$ INSERT INTO public.recorded VALUES (payload->>'n') RETURNING jsonb_build_object('recorded', n) $$;
SELECT apicore.saga_define('checkout', '[{"name": "reserve", "compensate": "release"},
                                         {"name": "charge", "compensate": "refund"},
                                         {"name": "record", "function": "record_order"}]');
SELECT apicore.saga_define('fragile', '[{"name": "a", "compensate": "undo_a", "max_attempts": 1},
                                        {"name": "b", "max_attempts": 1}]');
});
# start and drive one saga at a time, so each claim is for the saga at hand
# (a3 runs to the end before a2 leaves a runnable step behind; d1 has its own
# definition); a1 is started last and left untouched
my %claims = (
	'a2' => [ [ 'reserve', 'succeeded' ] ],
	'a3' => [ [ 'reserve', 'succeeded' ], [ 'charge', 'succeeded' ] ],
	'd1' => [ [ 'a', 'succeeded' ], [ 'b', 'failed' ], [ 'a', 'failed' ] ]);
for my $id ('a3', 'a2', 'd1')
{
	my $uuid = "00000000-0000-0000-0000-0000000000$id";
	my $definition = $id eq 'd1' ? 'fragile' : 'checkout';
	$node->safe_psql('source', qq{SELECT apicore.saga_start('$definition', '{"n": "$id"}', '$uuid')});
	for my $c (@{ $claims{$id} })
	{
		my ($step, $outcome) = @$c;
		my $claimed = $node->safe_psql('source', qq{
			SELECT step || ' ' || attempt FROM apicore.saga_claim('w', ARRAY['$definition'])});
		die "expected $step of $id, claimed '$claimed'" unless $claimed eq "$step 1";
		$node->safe_psql('source', $outcome eq 'succeeded'
			? qq{SELECT apicore.saga_step_succeeded('$uuid', '$step', 1, '{"by": "$id"}')}
			: qq{SELECT apicore.saga_step_failed('$uuid', '$step', 1, 'declined', false)});
	}
}
$node->safe_psql('source',
	q{SELECT apicore.saga_start('checkout', '{"n": "a1"}', '00000000-0000-0000-0000-0000000000a1')});
$node->safe_psql('source', 'SELECT count(*) FROM apicore.run_maintenance()');    # a3's local step
is($node->safe_psql('source', q{
SELECT string_agg(right(id::text, 2) || '=' || state, ',' ORDER BY id) FROM apicore.sagas}),
	'a1=running,a2=running,a3=completed,d1=failed', 'sagas in several states before the dump');

# soft delete with an archive, and tenant isolation, on one table
$node->safe_psql('source', q{
CREATE TABLE notes (id int PRIMARY KEY, tenant_id text NOT NULL,
                    created_at timestamptz NOT NULL, body text, handle text UNIQUE);
INSERT INTO notes SELECT g, CASE WHEN g <= 30 THEN 't1' ELSE 't2' END,
       '2026-01-01'::timestamptz + g * interval '1 hour', 'note ' || g, 'h' || g
  FROM generate_series(1, 60) g;
SELECT apicore.soft_delete_enable('notes', archive_after => '1 hour', purge_after => '30 days');
SELECT apicore.tenant_isolation_enable('notes');
GRANT SELECT, INSERT, DELETE ON notes TO app;
SET ROLE app;
SET app.current_tenant = 't1';
DELETE FROM notes WHERE id <= 10;
RESET ROLE;
-- 1..5 were deleted long ago: maintenance moves them to the archive
UPDATE notes SET deleted_at = now() - interval '2 hours' WHERE id <= 5;
SELECT apicore.run_maintenance();
});
is($node->safe_psql('source', q{
SELECT (SELECT count(*) FROM notes_archive) || ' archived, ' ||
       (SELECT count(*) FROM notes WHERE deleted_at IS NOT NULL) || ' marked'}),
	'5 archived, 5 marked', 'the source has archived and marked rows');

my $value_cursor = $node->safe_psql('source', q{
SELECT apicore.cursor_encode(row('2026-01-01 00:00:00.000001+00'::timestamptz, 9007199254740993::bigint), 'notes')});
my $page_cursor = $node->safe_psql('source', q{
SET ROLE app; SET app.current_tenant = 't1';
SELECT apicore.keyset_page('notes', 'created_at, id', NULL, 5)->>'next_cursor'});

# a maintenance task of the application's own: dumped, unlike apicore's
$node->safe_psql('source', q{
CREATE FUNCTION public.app_task() RETURNS text LANGUAGE sql AS $$ SELECT 'app task ran' $$;
INSERT INTO apicore.maintenance_task (task, function, run_order) VALUES ('app_task', 'public.app_task', 90);
});

# ---- dump, restore
my $dump = $node->basedir . '/everything.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-d', $node->connstr('source'), '-f', $dump ], 'pg_dump -Fc');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('restored'), $dump ],
	'pg_restore into a new database, without errors');

is($node->safe_psql('restored', q{
SELECT string_agg(task || ':' || builtin, ',' ORDER BY task) FROM apicore.maintenance_task
 WHERE task = 'app_task' OR NOT builtin}),
	'app_task:false', 'the application\'s maintenance task comes back, once, and apicore\'s are not doubled');
is($node->safe_psql('restored', q{
SELECT count(*) = (SELECT count(*) FROM apicore.maintenance_task) FROM apicore.run_maintenance()
 WHERE detail NOT LIKE 'failed:%'}),
	't', 'every task, apicore\'s and the application\'s, runs in the restored database');

# a role that is not a superuser dumps too when it may read all data and
# bypass row-level security (soft delete forces RLS on its tables), the
# usual set-up on managed services; a plain database owner can read neither
# apicore's tables (keys, stored responses) nor the deleted rows
$node->safe_psql('postgres', q{
CREATE ROLE dumper LOGIN BYPASSRLS IN ROLE pg_read_all_data;
CREATE DATABASE restored_by_dumper;
});
my $dump2 = $node->basedir . '/by_dumper.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-U', 'dumper', '-d', $node->connstr('source'), '-f', $dump2 ],
	'pg_dump by a role with pg_read_all_data and BYPASSRLS');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('restored_by_dumper'), $dump2 ],
	'and its dump restores');
is($node->safe_psql('restored_by_dumper', qq{
SELECT (SELECT outcome FROM apicore.idempotency_begin('shop', 'paid', '{"path": "/pay", "method": "POST"}')) || ' ' ||
       (SELECT c.id FROM apicore.cursor_decode('$value_cursor', 'notes') AS c(at timestamptz, id bigint))}),
	'replay 9007199254740993', 'with its keys and cursor key');

# ---- idempotency
is($node->safe_psql('restored', q{
SELECT outcome || ' ' || response_code || ' ' || response_body || response_headers::text
  FROM apicore.idempotency_begin('shop', 'paid', '{"path": "/pay", "method": "POST"}')}),
	qq{replay 201 {"id": 7}\n{"Location": "/pay/7"}}, 'a completed key replays its response byte for byte');
is($node->safe_psql('restored', q{
SELECT outcome FROM apicore.idempotency_begin('shop', 'paid', '{"path": "/pay", "method": "PUT"}')}),
	'mismatch', 'the request fingerprint came back with the key');
is($node->safe_psql('restored', q{
SELECT outcome || ' ' || attempt FROM apicore.idempotency_begin('shop', 'inflight')}),
	'conflict 1', 'a key in flight is still held by its attempt');
$node->safe_psql('restored', q{SELECT apicore.idempotency_complete('shop', 'inflight', 1, 200, 'done')});
is($node->safe_psql('restored', q{
SELECT outcome || ' ' || response_body FROM apicore.idempotency_begin('shop', 'inflight')}),
	'replay done', 'the attempt in flight completes after the restore');

# ---- cursors
is($node->safe_psql('restored', qq{
SELECT c.at || ' ' || c.id FROM apicore.cursor_decode('$value_cursor', 'notes') AS c(at timestamptz, id bigint)}),
	'2026-01-01 00:00:00.000001+00 9007199254740993', 'a cursor minted before the dump decodes after it');
# keyset_page binds its cursors to names, not OIDs, so they survive a restore
my ($page_rc, $page_out) = $node->psql('restored', qq{
SET ROLE app; SET app.current_tenant = 't1';
SELECT string_agg(r->>'id', ',') FROM jsonb_array_elements(
  apicore.keyset_page('notes', 'created_at, id', '$page_cursor', 5)->'data') r});
is($page_out, '16,17,18,19,20',
	'a page cursor from before the dump continues the listing (deleted rows skipped)');
is($node->safe_psql('restored', qq{
SET ROLE app; SET app.current_tenant = 't1';
SELECT string_agg(r->>'id', ',') FROM jsonb_array_elements(
  apicore.keyset_page('notes', 'created_at, id', NULL, 15)->'data') r}),
	'11,12,13,14,15,16,17,18,19,20,21,22,23,24,25', 'the first page after the restore skips deleted rows');
my ($rc, $out, $err) = $node->psql('restored', qq{
SELECT * FROM apicore.cursor_decode('$value_cursor', 'other') AS c(at timestamptz, id bigint)});
like($err, qr/invalid cursor/, 'context binding still holds after the restore');
ok($node->safe_psql('restored', 'SELECT apicore.cursor_rotate_key()') > 1,
	'the restored key set can rotate');
is($node->safe_psql('restored', qq{
SELECT c.id FROM apicore.cursor_decode('$value_cursor', 'notes') AS c(at timestamptz, id bigint)}),
	'9007199254740993', 'and the old cursor still decodes after the rotation');

# ---- rate limits
is($node->safe_psql('restored', q{
SELECT string_agg(name || ':' || "limit" || ':' || mode, ',' ORDER BY name) FROM apicore.rate_limit_policy}),
	'api:3:enforce,observe:1:shadow', 'both policies are back');
is($node->safe_psql('restored', q{
SELECT string_agg((apicore.rate_limit_check('api', 'client')).allowed::text, ',') FROM generate_series(1, 4)}),
	'true,true,true,false', 'the enforcing policy enforces in the restored database');
is($node->safe_psql('restored', q{
SELECT string_agg((apicore.rate_limit_check('observe', 'client')).allowed::text, ',') FROM generate_series(1, 2)}),
	'true,true', 'the shadow policy still only observes');

# each database has its own rate-limit state
$node->safe_psql('source', q{SELECT apicore.rate_limit_check('api', 'same-name', 3)});
is($node->safe_psql('restored', q{SELECT (apicore.rate_limit_check('api', 'same-name')).allowed}),
	't', 'the source database using up a key leaves the restored database\'s key alone');

# ---- sagas
is($node->safe_psql('restored', q{
SELECT string_agg(right(id::text, 2) || '=' || state, ',' ORDER BY id) FROM apicore.sagas}),
	'a1=running,a2=running,a3=completed,d1=failed', 'every saga is back in its state');
is($node->safe_psql('restored', q{SELECT string_agg(right(id::text, 2), ',') FROM apicore.saga_dead_letter}),
	'd1', 'the dead-letter saga still waits for an operator');
my $steps = 0;
for (1 .. 6)
{
	my $c = $node->safe_psql('restored', q{
		SELECT saga_id || ' ' || step || ' ' || attempt FROM apicore.saga_claim('after-restore')});
	last if $c eq '';
	my ($id, $step, $attempt) = split / /, $c;
	$node->safe_psql('restored', qq{SELECT apicore.saga_step_succeeded('$id', '$step', $attempt)});
	$steps++;
}
is($steps, 3, 'the running sagas\' remaining three external steps are claimed and succeed');
ok($node->poll_query_until('restored', q{
SELECT string_agg(right(id::text, 2) || '=' || state, ',' ORDER BY id) FROM apicore.sagas},
	'a1=completed,a2=completed,a3=completed,d1=failed'),
	'the worker runs the local steps: the running sagas complete after the restore');
is($node->safe_psql('restored', 'SELECT string_agg(n, \',\' ORDER BY n) FROM recorded'),
	'a1,a2,a3', 'each local step ran exactly once, a3\'s before the dump');
is($node->safe_psql('restored', q{
SELECT apicore.saga_get('00000000-0000-0000-0000-0000000000a2')->'outputs'->'reserve'->>'by'}),
	'a2', 'a step output recorded before the dump is still there');
is($node->safe_psql('restored', q{
SELECT apicore.saga_resolve('00000000-0000-0000-0000-0000000000d1', 'compensated', 'ops', 'refunded by hand')}),
	'compensated', 'the operator resolves the dead-letter saga in the restored database');

# ---- soft delete and tenant isolation
is($node->safe_psql('restored', q{
SET ROLE app; SET app.current_tenant = 't1'; SELECT count(*) FROM notes}),
	'20', 'the application sees only the live rows of its tenant');
is($node->safe_psql('restored', q{
SET ROLE app; SET app.current_tenant = 't1'; SELECT count(*) FROM notes WHERE id <= 10}),
	'0', 'deleted rows stay hidden after the restore');
is($node->safe_psql('restored', q{SET ROLE app; SELECT count(*) FROM notes}),
	'0', 'an unset tenant sees nothing');
is($node->safe_psql('restored', q{
SET ROLE app; SET app.current_tenant = 't1'; DELETE FROM notes WHERE id = 11 RETURNING id}),
	'11', 'DELETE reports the row it deleted');
is($node->safe_psql('restored', q{SELECT deleted_at IS NOT NULL FROM notes WHERE id = 11}),
	't', 'and only marked it');
is($node->safe_psql('restored', q{
SET ROLE app; SET app.current_tenant = 't1'; DELETE FROM notes WHERE id = 45}),
	'', 'a DELETE of another tenant\'s row touches nothing');
is($node->safe_psql('restored', q{SELECT deleted_at IS NULL FROM notes WHERE id = 45}),
	't', 'the other tenant\'s row is untouched');
($rc, $out, $err) = $node->psql('restored', q{
SET ROLE app; SET app.current_tenant = 't1'; INSERT INTO notes VALUES (100, 't2', now(), 'x')});
like($err, qr/row-level security/, 'writing into another tenant is still refused');
is($node->safe_psql('restored', q{
SELECT archive_table::text || ' ' || archive_after || ' ' || purge_after FROM apicore.soft_delete_tables}),
	'notes_archive 01:00:00 30 days', 'the soft-delete settings and archive are back');
is($node->safe_psql('restored', 'SELECT string_agg(id::text, \',\' ORDER BY id) FROM notes_archive'),
	'1,2,3,4,5', 'the archived rows are back');
is($node->safe_psql('restored', q{SELECT apicore.soft_delete_restore('notes', '{"id": 3}')}),
	'1', 'a row restores from the restored archive');
is($node->safe_psql('restored', q{
SET ROLE app; SET app.current_tenant = 't1'; SELECT count(*) FROM notes WHERE id = 3}),
	'1', 'and is live again');
# the unique constraint became a partial unique index: live rows only
is($node->safe_psql('restored', q{
SET ROLE app; SET app.current_tenant = 't1';
INSERT INTO notes VALUES (200, 't1', now(), 'reuse', 'h7') RETURNING handle}),
	'h7', 'a deleted row\'s unique value can be reused after the restore');
($rc, $out, $err) = $node->psql('restored', q{
SET ROLE app; SET app.current_tenant = 't1';
INSERT INTO notes VALUES (201, 't1', now(), 'taken', 'h12')});
like($err, qr/duplicate key value violates unique constraint/, 'a live row\'s unique value is still unique');
# upserts: the constraint's name still resolves (the trigger that holds it
# and the partial index of the same name came back), and DO UPDATE on a
# deleted row's key still gets apicore's error
is($node->safe_psql('restored', q{
SET ROLE app; SET app.current_tenant = 't1';
INSERT INTO notes VALUES (202, 't1', now(), 'upsert', 'h12') ON CONFLICT ON CONSTRAINT notes_handle_key DO NOTHING RETURNING id;
INSERT INTO notes VALUES (202, 't1', now(), 'upsert', 'h8') ON CONFLICT ON CONSTRAINT notes_handle_key DO NOTHING RETURNING id}),
	'202', 'ON CONFLICT ON CONSTRAINT <the original name> after the restore: live rows conflict, deleted ones do not');
$node->safe_psql('restored', 'GRANT UPDATE ON notes TO app');
($rc, $out, $err) = $node->psql('restored', q{
SET ROLE app; SET app.current_tenant = 't1';
INSERT INTO notes VALUES (6, 't1', now(), 'upsert', 'h6') ON CONFLICT (id) DO UPDATE SET body = excluded.body},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/23505: apicore: cannot upsert into "notes": the row with primary key \{"id": 6\} is soft-deleted/,
	'an upsert on a deleted row\'s key after the restore: apicore\'s 23505');
($rc, $out, $err) = $node->psql('restored', 'TRUNCATE notes');
isnt($rc, 0, 'TRUNCATE is still refused on the soft-delete table');

# ---- the worker maintains the restored database
$node->safe_psql('restored', q{UPDATE notes SET deleted_at = now() - interval '2 hours' WHERE id = 11});
ok($node->poll_query_until('restored', q{SELECT EXISTS (SELECT 1 FROM notes_archive WHERE id = 11)}),
	'the worker archives a row in the restored database');
ok($node->poll_query_until('restored', q{
SELECT rounds > 1 FROM apicore.maintenance_workers WHERE database = 'restored'}),
	'the worker runs rounds in the restored database');
is($node->safe_psql('restored', q{
SELECT tasks_failed || ' ' || coalesce(last_error, '') FROM apicore.maintenance_workers WHERE database = 'restored'}),
	'0 ', 'with no task failure');
unlike(slurp_file($node->logfile), qr/terminated by signal|PANIC|maintenance task \S+ failed/,
	'no crash and no failed task in the server log');

# ---- the DBA's next steps with a served database: clone it, drop it
# the worker connects only for its rounds, so plain CREATE DATABASE ..
# TEMPLATE and DROP DATABASE work (they wait up to 5 s for a round to end)
my ($clone_rc, $clone_out, $clone_err) = $node->psql('postgres', 'CREATE DATABASE clone TEMPLATE restored');
is($clone_err, '', 'a database the worker serves can be a template (CREATE DATABASE ... TEMPLATE)');
$node->safe_psql('postgres', 'DROP DATABASE clone');
my ($drop_rc, $drop_out, $drop_err) = $node->psql('postgres', 'DROP DATABASE restored');
is($drop_err, '', 'a database the worker serves can be dropped without FORCE');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_database WHERE datname = 'restored'}),
	'0', 'the served database is gone');
ok($node->wait_for_log(qr/database "restored" in apicore.database does not exist/),
	'the worker reports the dropped database instead of failing silently');

$node->stop;
done_testing();
