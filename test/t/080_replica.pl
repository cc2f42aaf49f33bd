# Reliability on a streaming replica, across capabilities.  The capability
# tests already show a replica decoding the primary's cursors (020) and
# rate-limiting (030); this file adds what they leave out:
#   - keyset pages on the replica over a table with soft delete and tenant
#     isolation, read by an ordinary role with a cursor the primary minted;
#   - rate-limit policies enforced on the replica (several policies at once,
#     headers) and concurrency slots acquired and released there, including
#     by a backend that exits without releasing;
#   - every function that must write fails on the replica with a clear
#     error (SQLSTATE, message), never a crash, and the same connection
#     keeps answering;
#   - the same writes in a read-only transaction on the primary;
#   - kill -9 of a replica backend holding a concurrency slot: the replica
#     reinitializes, frees the slot, resumes streaming, still decodes;
#   - after promotion, the former replica writes: keys, sagas, soft delete,
#     and the old primary's cursors still decode.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use ApicoreNode;
use Test::More;

my $primary = apicore_node('primary', streaming => 1);

# Data for every capability, written on the primary.
$primary->safe_psql('postgres', q{
CREATE EXTENSION apicore;
CREATE ROLE app LOGIN;
GRANT USAGE ON SCHEMA apicore TO app;
CREATE TABLE orders (id bigint PRIMARY KEY, tenant_id text NOT NULL,
                     created_at timestamptz NOT NULL, item text);
INSERT INTO orders SELECT i, CASE WHEN i % 2 = 0 THEN 'a' ELSE 'b' END,
       '2026-01-01'::timestamptz + i * interval '1 minute', 'item ' || i
  FROM generate_series(1, 60) i;
SELECT apicore.soft_delete_enable('orders');
SELECT apicore.tenant_isolation_enable('orders');
GRANT SELECT, INSERT, DELETE ON orders TO app;
SELECT apicore.rate_limit_policy_set('per_second', 2, '1 hour');
SELECT apicore.rate_limit_policy_set('per_hour', 100, '1 hour');
SELECT apicore.saga_define('checkout', '[{"name": "charge", "compensate": "refund"}, {"name": "ship"}]');
SELECT apicore.idempotency_begin('shop', 'done');
SELECT apicore.idempotency_complete('shop', 'done', 1, 201, 'created');
SELECT apicore.idempotency_begin('shop', 'running', lease => '1 hour');
CREATE TABLE probe (id int PRIMARY KEY, tenant text);
});
# deleted on the primary by the application role: rows 1..10
$primary->safe_psql('postgres', q{
SET ROLE app;
SET app.current_tenant = 'a';
DELETE FROM orders WHERE id <= 10;
SET app.current_tenant = 'b';
DELETE FROM orders WHERE id <= 10;
});
my $saga = $primary->safe_psql('postgres',
	q{SELECT apicore.saga_start('checkout', '{"total": 5}', '00000000-0000-0000-0000-000000000080')});
my $first_page = $primary->safe_psql('postgres', q{
SET ROLE app; SET app.current_tenant = 'a';
SELECT apicore.keyset_page('orders', 'created_at DESC', NULL, 5)::text});
my $cursor = $primary->safe_psql('postgres',
	q{SELECT apicore.cursor_encode(row('2026-01-01 00:00:00.123456+00'::timestamptz, 42::bigint), 'orders')});

$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);

# ---- cursors and keyset pages on the replica, under soft delete and tenant RLS
my $next = $primary->safe_psql('postgres',
	qq{SELECT '$first_page'::jsonb->>'next_cursor'});
is($standby->safe_psql('postgres', q{
SET ROLE app; SET app.current_tenant = 'a';
SELECT string_agg(r->>'id', ',') FROM jsonb_array_elements(
  apicore.keyset_page('orders', 'created_at DESC', NULL, 5)->'data') r}),
	'60,58,56,54,52', 'the replica serves the first page of tenant a, as the primary does');
is($standby->safe_psql('postgres', qq{
SET ROLE app; SET app.current_tenant = 'a';
SELECT string_agg(r->>'id', ',') FROM jsonb_array_elements(
  apicore.keyset_page('orders', 'created_at DESC', '$next', 5)->'data') r}),
	'50,48,46,44,42', 'page 2 on the replica from the primary\'s page-1 cursor');
is($standby->safe_psql('postgres', q{
SET ROLE app; SET app.current_tenant = 'b';
WITH RECURSIVE pages(n, page) AS (
  SELECT 1, apicore.keyset_page('orders', 'created_at DESC', NULL, 7)
  UNION ALL
  SELECT n + 1, apicore.keyset_page('orders', 'created_at DESC', page->>'next_cursor', 7)
    FROM pages WHERE (page->>'has_more')::bool)
SELECT count(*) || ' rows, min ' || min((r->>'id')::int) || ', other tenant ' ||
       count(*) FILTER (WHERE r->>'tenant_id' <> 'b')
  FROM pages, jsonb_array_elements(page->'data') r}),
	'25 rows, min 11, other tenant 0',
	'walking every page on the replica: only live rows of the tenant, no deleted row');
is($standby->safe_psql('postgres', q{SET ROLE app; SELECT count(*) FROM orders}),
	'0', 'on the replica an unset tenant sees no rows (fail closed)');
my ($rc, $out, $err) = $standby->psql('postgres', q{
SET ROLE app; SET app.current_tenant = 'b';
SELECT apicore.keyset_page('orders', 'created_at ASC', '} . $next . q{', 5)});
like($err, qr/invalid cursor/, 'the replica rejects a page cursor used for another sort');
is($standby->safe_psql('postgres', qq{
SELECT c.at || ' ' || c.id FROM apicore.cursor_decode('$cursor', 'orders') AS c(at timestamptz, id bigint)}),
	'2026-01-01 00:00:00.123456+00 42', 'a value cursor decodes on the replica to the microsecond');

# ---- rate limits on the replica, policies defined on the primary
ok($standby->poll_query_until('postgres',
	q{SELECT (apicore.rate_limit_check('per_second', 'warm', 0)).limit = 2}),
	'the primary\'s policies reach the replica');
is($standby->safe_psql('postgres', q{
SELECT string_agg((apicore.rate_limit_check(ARRAY['per_second', 'per_hour'], ARRAY['k', 'k'])).allowed::text, ',')
  FROM generate_series(1, 4)}),
	'true,true,false,false', 'two policies at once enforce on the replica');
is($standby->safe_psql('postgres', q{
SELECT (apicore.rate_limit_check('per_hour', 'k', 0)).remaining}),
	'98', 'a call rejected by one policy consumed nothing from the other');
like($standby->safe_psql('postgres', q{
SELECT apicore.rate_limit_headers(apicore.rate_limit_check('per_second', 'k'), 'per_second')::text}),
	qr/"Retry-After"/, 'a rejected call on the replica carries Retry-After');

# a policy change on the primary is enforced on the replica
$primary->safe_psql('postgres', q{SELECT apicore.rate_limit_policy_set('per_second', 5, '1 hour')});
$primary->wait_for_catchup($standby);
ok($standby->poll_query_until('postgres',
	q{SELECT (apicore.rate_limit_check('per_second', 'k2', 0)).limit = 5}),
	'a policy changed on the primary is enforced by the replica');

# concurrency slots: acquire/release, and a backend that exits without releasing
is($standby->safe_psql('postgres', q{
SELECT string_agg(a.acquired::text, ',' ORDER BY g)
  FROM generate_series(1, 3) g,
       LATERAL apicore.concurrency_acquire('replica_jobs' || repeat('', g), 2) a}),
	'true,true,false', 'the replica grants at most max_in_flight slots');
is($standby->safe_psql('postgres', q{
SELECT acquired::text || ' ' || in_flight FROM apicore.concurrency_acquire('replica_jobs', 2)}),
	'true 1', 'slots held by a backend that exited are freed on the replica');
is($standby->safe_psql('postgres', q{
SELECT apicore.concurrency_release('replica_jobs', token)::text || ' ' ||
       (SELECT in_flight FROM apicore.concurrency_acquire('replica_jobs', 1))
  FROM apicore.concurrency_acquire('replica_jobs', 2)}),
	'true 1', 'a released slot can be taken again on the replica');

# ---- every function that must write: a clear error on the replica, not a
# crash; the same in a read-only transaction on the primary
# [ name, statement, kind ]
# kind: 'read' works read-only; 'ddl' hits PostgreSQL's own lock check on a
# replica (55000 "... while recovery is in progress") before apicore runs;
# otherwise 25006.
my @writes = (
	[ 'idempotency_begin (replay)', q{SELECT apicore.idempotency_begin('shop', 'done')}, 'read' ],
	[ 'idempotency_begin (new key)', q{SELECT apicore.idempotency_begin('shop', 'new-key')}, 'write' ],
	[ 'idempotency_checkpoint', q{SELECT apicore.idempotency_checkpoint('shop', 'running', 1, 'charged')},
	  'write' ],
	[ 'idempotency_complete', q{SELECT apicore.idempotency_complete('shop', 'running', 1, 200, 'x')},
	  'write' ],
	[ 'idempotency_release',      q{SELECT apicore.idempotency_release('shop', 'running', 1)},
	  'write' ],
	[ 'saga_define',              q{SELECT apicore.saga_define('other', '[{"name": "a"}]')} ],
	[ 'saga_start',               q{SELECT apicore.saga_start('checkout', '{}')} ],
	[ 'saga_claim',               q{SELECT * FROM apicore.saga_claim('replica-worker')} ],
	[ 'saga_step_succeeded',      qq{SELECT apicore.saga_step_succeeded('$saga', 'charge', 1)} ],
	[ 'saga_cancel',              qq{SELECT apicore.saga_cancel('$saga', 'from the replica')} ],
	[ 'saga_get',                 qq{SELECT apicore.saga_get('$saga')}, 'read' ],
	[ 'idempotency_get',          q{SELECT * FROM apicore.idempotency_get('shop', 'done')}, 'read' ],
	[ 'every view',              q{SELECT (SELECT count(*) FROM apicore.idempotency_stats), (SELECT count(*) FROM apicore.sagas),
	    (SELECT count(*) FROM apicore.saga_dead_letter), (SELECT count(*) FROM apicore.saga_log),
	    (SELECT count(*) FROM apicore.rate_limit_stats), (SELECT count(*) FROM apicore.soft_delete_tables),
	    (SELECT count(*) FROM apicore.maintenance_workers)}, 'read' ],
	[ 'rate_limit_reset',         q{SELECT apicore.rate_limit_reset('k', 'per_second')}, 'read' ],
	[ 'soft_delete_enable',       q{SELECT apicore.soft_delete_enable('probe')}, 'ddl' ],
	[ 'soft_delete_restore',      q{SELECT apicore.soft_delete_restore('orders', '{"id": 2}')} ],
	[ 'tenant_isolation_enable',  q{SELECT apicore.tenant_isolation_enable('probe', 'tenant')}, 'ddl' ],
	[ 'DELETE on a soft-delete table', q{DELETE FROM orders WHERE id = 20} ],
	[ 'cursor_rotate_key',        q{SELECT apicore.cursor_rotate_key()} ],
	[ 'rate_limit_policy_set',    q{SELECT apicore.rate_limit_policy_set('new', 1, '1 minute')} ],
	[ 'rate_limit_policy_drop',   q{SELECT apicore.rate_limit_policy_drop('per_hour')} ],
	[ 'run_maintenance',          q{SELECT * FROM apicore.run_maintenance()}, 'write' ],
);

# One psql connection runs every write in turn (psql goes on after an
# error), printing SQLSTATE and message of each; the backend pid before and
# after shows the connection survived.
sub check_writes
{
	my ($node, $where, $preamble) = @_;
	my $session = "$preamble\nSELECT pg_backend_pid();\n";
	for my $w (@writes)
	{
		$session .= "\\o /dev/null\n$w->[1];\n\\o\n";
		$session .= "\\echo :SQLSTATE '|' :LAST_ERROR_MESSAGE\n\\set LAST_ERROR_MESSAGE ''\n";
	}
	$session .= "SELECT pg_backend_pid();\n";
	my ($rc, $out, $err) = $node->psql('postgres', $session, on_error_stop => 0);
	my @lines = split /\n/, $out;
	is(scalar @lines, scalar @writes + 2, "$where: one connection tried every write and still answers");
	is($lines[-1], $lines[0], "$where: the same backend answered before and after every failed write");
	for my $i (0 .. $#writes)
	{
		my ($name, undef, $kind) = @{ $writes[$i] };
		my $result = $lines[ $i + 1 ] // '';
		$kind //= 'write';
		if ($kind eq 'read')
		{
			like($result, qr/^00000 \|/, "$where: $name works");
		}
		elsif ($kind eq 'ddl' && $where eq 'replica')
		{
			like($result, qr/^55000 \| .*while recovery is in progress/,
				"$where: $name: SQLSTATE 55000, \"... while recovery is in progress\"");
		}
		else
		{
			like($result, qr/^25006 \| .*(in a read-only transaction|during recovery|on a standby)/,
				"$where: $name: SQLSTATE 25006, read-only transaction / during recovery (got: $result)");
		}
	}
}
check_writes($standby, 'replica', '');

# the raw error a client sees, with its SQLSTATE, on a fresh connection
($rc, $out, $err) = $standby->psql('postgres',
	q{SELECT apicore.saga_start('checkout', '{}')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
isnt($rc, 0, 'saga_start fails on the replica');
like($err, qr/ERROR:  25006: /, 'the client sees SQLSTATE 25006');

# no process crashed; no maintenance worker runs on a standby (they start
# when recovery finishes), so nothing logs task failures
my $standby_log = slurp_file($standby->logfile);
unlike($standby_log, qr/terminated by signal|server process .* was terminated|PANIC/,
	'no replica process crashed');
my @worker_errors = $standby_log =~ /^.*failed in database.*$/mg;
is(scalar @worker_errors, 0, 'the replica\'s maintenance worker logs no task failures')
	or diag join "\n", @worker_errors[ 0 .. ($#worker_errors < 4 ? $#worker_errors : 4) ];

# ---- kill -9 of a replica backend holding a concurrency slot: the replica
# restarts (restart_after_crash), resumes streaming and keeps serving
my $holder = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $standby->connstr('postgres'), '-c',
	  q{SELECT apicore.concurrency_acquire('crash_pool', 1, '1 hour'); SELECT pg_sleep(300)} ],
	'>', \my $holder_out, '2>', \my $holder_err);
ok($standby->poll_query_until('postgres', q{
SELECT count(*) = 1 FROM pg_stat_activity WHERE query LIKE '%pg_sleep(300)%' AND pid <> pg_backend_pid()}),
	'a replica client holds a slot');
is($standby->safe_psql('postgres', q{SELECT acquired FROM apicore.concurrency_acquire('crash_pool', 1)}),
	'f', 'the pool of one is full');
my $log_offset = -s $standby->logfile;
my $victim = $standby->safe_psql('postgres', q{
SELECT pid FROM pg_stat_activity WHERE query LIKE '%pg_sleep(300)%' AND pid <> pg_backend_pid()});
kill 'KILL', $victim;
$holder->finish;
ok($standby->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset),
	'the replica\'s postmaster reinitializes after the kill');
ok($standby->poll_query_until('postgres', q{SELECT pg_is_in_recovery()}),
	'the replica is back after the crash of one backend');
is($standby->safe_psql('postgres', q{
SELECT acquired::text || ' ' || in_flight FROM apicore.concurrency_acquire('crash_pool', 1)}),
	'true 1', 'the killed client\'s slot is not leaked');
$primary->safe_psql('postgres', q{SELECT apicore.rate_limit_policy_set('after_crash', 7, '1 hour')});
$primary->wait_for_catchup($standby);
ok($standby->poll_query_until('postgres',
	q{SELECT (apicore.rate_limit_check('after_crash', 'k', 0)).limit = 7}),
	'streaming resumes: a policy made on the primary after the crash is enforced on the replica');
is($standby->safe_psql('postgres', qq{
SELECT c.id FROM apicore.cursor_decode('$cursor', 'orders') AS c(at timestamptz, id bigint)}),
	'42', 'the replica still decodes the primary\'s cursor after its crash restart');
my @crashes = slurp_file($standby->logfile) =~ /terminated by signal/g;
is(scalar @crashes, 1, 'the one kill is the only crash in the replica log');

# ---- a read-only transaction on the primary refuses the same writes
check_writes($primary, 'read-only primary', 'SET default_transaction_read_only = on;');

# ---- failover: the promoted replica takes writes, old cursors still decode
$primary->stop;
$standby->promote;
ok($standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()'), 'the replica is promoted');
is($standby->safe_psql('postgres', qq{
SELECT c.id FROM apicore.cursor_decode('$cursor', 'orders') AS c(at timestamptz, id bigint)}),
	'42', 'the old primary\'s cursor decodes after failover');
ok($standby->safe_psql('postgres', 'SELECT apicore.cursor_rotate_key()') > 1,
	'the promoted server rotates the cursor key');
is($standby->safe_psql('postgres', qq{
SELECT c.id FROM apicore.cursor_decode('$cursor', 'orders') AS c(at timestamptz, id bigint)}),
	'42', 'and still decodes the old cursor after the rotation');
is($standby->safe_psql('postgres', q{
SELECT outcome || ' ' || response_code || ' ' || response_body FROM apicore.idempotency_begin('shop', 'done')}),
	'replay 201 created', 'a key completed on the old primary replays after failover');
is($standby->safe_psql('postgres', q{SELECT outcome FROM apicore.idempotency_begin('shop', 'after-failover')}),
	'proceed', 'a new key proceeds on the promoted server');
is($standby->safe_psql('postgres', q{
SELECT step || ' ' || attempt FROM apicore.saga_claim('after-failover')}),
	'charge 1', 'the saga started on the old primary is claimed after failover');
is($standby->safe_psql('postgres', qq{
SELECT apicore.saga_step_succeeded('$saga', 'charge', 1)}),
	'running', 'and its step is recorded');
is($standby->safe_psql('postgres', q{
SET ROLE app; SET app.current_tenant = 'a';
DELETE FROM orders WHERE id = 20 RETURNING id}),
	'20', 'DELETE soft-deletes on the promoted server');
is($standby->safe_psql('postgres', q{
SELECT count(*) FROM orders WHERE id = 20 AND deleted_at IS NOT NULL}),
	'1', 'the row is marked, not removed');
my $rounds = $standby->safe_psql('postgres',
	q{SELECT rounds FROM apicore.maintenance_workers WHERE database = 'postgres'});
ok($standby->poll_query_until('postgres', qq{
SELECT rounds > $rounds AND tasks_failed = 0 FROM apicore.maintenance_workers WHERE database = 'postgres'}),
	'the promoted server\'s worker runs maintenance without failures');
my @all_crashes = slurp_file($standby->logfile) =~ /terminated by signal|PANIC/g;
is(scalar @all_crashes, 1, 'no process crashed but the one killed on purpose');

$standby->stop;
done_testing();
