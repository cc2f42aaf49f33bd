# Soak: many clients mix every capability for SOAK_SECONDS (default 120)
# while the maintenance worker runs every second, over unix sockets only,
# and a streaming replica replays the WAL.
# Afterwards: no client failed, the log has no error or crash, no
# concurrency slot leaked, no saga is stuck once the workers stop, the
# tables apicore writes are bounded by what the workload wrote, amcheck finds
# every heap and btree index sound (apicore writes some rows and index
# entries directly, not through the executor), and the replica holds the
# same rows as the primary, found through the same indexes.
# Last, a short load again and kill -9 of one backend: every idempotency key
# whose commit was acknowledged replays after crash recovery, no slot
# survives, no saga sticks, and the same soundness checks pass.
#
# The workload lives in test/soak/ (setup.sql: functions; one pgbench script
# per capability).  Outcomes that are normal under contention are caught
# there by their documented SQLSTATE and counted, never hidden in the log:
#   55P03 idempotency_complete by an attempt whose lease was taken over;
#   55006 / 55000 saga report for a step whose lease ran out / no longer claimed.
use strict;
use warnings;
use File::Basename qw(dirname);
use Cwd qw(abs_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use ApicoreNode;
use Test::More;

my $seconds = $ENV{SOAK_SECONDS} // 120;
my $clients = $ENV{SOAK_CLIENTS} // 8;
my $soak_dir = abs_path(dirname(__FILE__) . '/../soak');

# unix sockets only: listen_addresses is empty
my $node = apicore_node('soak', streaming => 1, conf => "max_connections = 40\n");
$node->safe_psql('postgres', 'CREATE EXTENSION apicore; CREATE EXTENSION amcheck');
# a DBA's extra indexes on the tables apicore writes around the executor
# (src/direct.c): amcheck with heapallindexed below proves they stay whole
$node->safe_psql('postgres', q{
CREATE INDEX soak_extra_key_created ON apicore.idempotency_key (created_at);
CREATE INDEX soak_extra_step_state ON apicore.saga_step (state, updated_at);
CREATE INDEX soak_extra_saga_updated ON apicore.saga (updated_at);
});
$node->safe_psql('postgres', slurp_file("$soak_dir/setup.sql"));
$node->backup('base');
my $replica = PostgreSQL::Test::Cluster->new('soak_replica');
$replica->init_from_backup($node, 'base', has_streaming => 1);
$replica->start;
my $log_start = -s $node->logfile;
ok($node->poll_query_until('postgres', 'SELECT count(*) > 0 FROM apicore._idempotency_partitions()'),
	'the worker has made the idempotency partitions');
my $partitions_before = $node->safe_psql('postgres', 'SELECT count(*) FROM apicore._idempotency_partitions()');
my $rounds_before = $node->safe_psql('postgres',
	q{SELECT coalesce(max(rounds), 0) FROM apicore.maintenance_workers WHERE database = 'postgres'});

# ---- the load: every capability at once
my @scripts = map { ('-f', "$soak_dir/$_") }
  ('idempotency.sql@3', 'cursor.sql@2', 'rate_limit.sql@3', 'saga.sql@3', 'soft_delete.sql@3');
my ($stdout, $stderr);
my $ok = IPC::Run::run(
	[ 'pgbench', '-n', '-c', $clients, '-j', 2, '-T', $seconds, '-h', $node->host, '-p', $node->port,
	  @scripts, 'postgres' ],
	'>', \$stdout, '2>', \$stderr);
ok($ok, "pgbench ran $clients clients for ${seconds}s") or diag $stderr;
my ($processed) = $stdout =~ /number of transactions actually processed: (\d+)/;
my ($failed) = $stdout =~ /number of failed transactions: (\d+)/;
ok(defined $processed && $processed > 0, "transactions processed: " . ($processed // 'none'));
is($failed // 0, 0, 'no transaction failed');
unlike($stderr, qr/aborted|error/i, 'no client aborted') or diag $stderr;
note $stdout;

my %count = map {
	$_ => $node->safe_psql('postgres', "SELECT last_value * is_called::int FROM $_")
} qw(soak_idem_proceed soak_idem_stale soak_saga_started soak_saga_stale soak_sd_inserted soak_slots_abandoned);
note join ', ', map { "$_=$count{$_}" } sort keys %count;
ok($count{soak_idem_proceed} > 0 && $count{soak_saga_started} > 0 && $count{soak_sd_inserted} > 0,
	'every capability did work');

# ---- idempotency right after the load, while its 10 s keys live
my ($stat_proceed, $stat_takeover) = split / /, $node->safe_psql('postgres',
	q{SELECT proceed || ' ' || takeover FROM apicore.idempotency_stats});
is($stat_proceed, $count{soak_idem_proceed}, 'idempotency_stats counted every proceed exactly');
note "idempotency takeovers of abandoned attempts: $stat_takeover";
is($node->safe_psql('postgres', q{
SELECT count(*) FILTER (WHERE response_body <> 'created ' || substr(key, 5)) || ' of ' || (count(*) > 0)
  FROM apicore.idempotency_key WHERE scope = 'soak' AND response_code IS NOT NULL}),
	'0 of true', 'every stored response belongs to its own key');
is($node->safe_psql('postgres', q{
WITH k AS (SELECT key FROM apicore.idempotency_key
            WHERE scope = 'soak' AND response_code IS NOT NULL AND expires_at > now() + interval '1 second'
            ORDER BY expires_at DESC LIMIT 1)
SELECT r.outcome || ' ' || (r.response_body = 'created ' || substr(k.key, 5))
  FROM k, apicore.idempotency_begin('soak', k.key,
          jsonb_build_object('method', 'POST', 'path', '/soak', 'body', substr(k.key, 5)::int)) r}),
	'replay true', 'a key completed under load replays its own response');

# ---- no concurrency slot leaked: abandoned ones expire with their 2 s lease
ok($node->poll_query_until('postgres', q{
SELECT in_flight = 1 FROM apicore.concurrency_acquire('soak_pool', 4, '1 second')}),
	"no concurrency slot leaked ($count{soak_slots_abandoned} abandoned ones expired)");

# ---- no saga stuck: the workers are gone; leases run out, the maintenance
# worker reclaims steps and runs local ones, a last worker drains the queue
# first, with no worker left: once the 1 s leases have run out, maintenance
# returns every abandoned claim to the queue (nothing stays claimed)
ok($node->poll_query_until('postgres', q{
SELECT count(*) = 0 FROM apicore.saga_step WHERE state = 'claimed'}),
	'maintenance returns every abandoned claim to the queue: no step stays claimed');
# maintenance, then a last worker drains the queue, until no saga is left
# running or compensating (true) or a minute passes (false)
sub sagas_settle
{
	for (1 .. 60)
	{
		my @out = split /\n/, $node->safe_psql('postgres', q{
SELECT count(*) FROM apicore.run_maintenance();
SELECT soak_drain();
SELECT count(*) = 0 FROM apicore.sagas WHERE state IN ('running', 'compensating')});
		return 1 if $out[-1] eq 't';
		sleep 1;
	}
	diag $node->safe_psql('postgres',
		q{SELECT state, current_step, direction, step_state, attempt, last_error FROM apicore.sagas
		   WHERE state IN ('running', 'compensating') LIMIT 5});
	return 0;
}
ok(sagas_settle(), 'every saga reaches an end state once the workers stop');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM apicore.sagas WHERE state NOT IN ('completed', 'compensated', 'failed')}),
	'0', 'each saga is completed, compensated or failed');
is($node->safe_psql('postgres', 'SELECT count(*) FROM apicore.sagas'),
	$count{soak_saga_started}, 'exactly the sagas started exist');
note $node->safe_psql('postgres', q{SELECT string_agg(state || '=' || n, ', ') FROM
	(SELECT state, count(*) n FROM apicore.sagas GROUP BY state) s});
ok($node->safe_psql('postgres', q{
SELECT count(*) FROM apicore.saga_step s WHERE NOT EXISTS (SELECT 1 FROM apicore.saga WHERE id = s.saga)}) == 0
	&& $node->safe_psql('postgres', 'SELECT count(*) <= 6 * (SELECT count(*) FROM apicore.saga) FROM apicore.saga_step') eq 't',
	'saga steps are bounded by the sagas (at most one forward and one compensate row per step)');

# ---- bounded tables
# the audit trail: a saga of three steps, each tried at most 3 times forward
# and compensated at most twice, writes a bounded number of transitions
ok($node->safe_psql('postgres', q{
SELECT count(*) <= 30 * (SELECT count(*) FROM apicore.saga) FROM apicore.saga_transition}) eq 't',
	'the saga log is bounded by the sagas');
my $partitions = $node->safe_psql('postgres', 'SELECT count(*) FROM apicore._idempotency_partitions()');
# max_ttl + premake intervals ahead; crossing midnight during the soak may add one
ok($partitions > 0 && $partitions <= $partitions_before + 1,
	"idempotency partitions do not grow with the load ($partitions_before -> $partitions)");
ok($node->safe_psql('postgres', qq{
SELECT count(*) <= $count{soak_idem_proceed} FROM apicore.idempotency_key}) eq 't',
	'idempotency rows never exceed the attempts that proceeded');
ok($node->safe_psql('postgres', q{SELECT count(*) <= 3000 FROM apicore.idempotency_key
	WHERE expires_at > now()}) eq 't', 'live idempotency keys are bounded by the key space (3000)');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM (SELECT id FROM soak_note UNION ALL SELECT id FROM soak_note_archive) r
 GROUP BY id HAVING count(*) > 1}), '', 'no row is both in the table and the archive');
# windows: archive after 2 s, purge after 6 s; give maintenance a few rounds
my $caught_up = 0;
for (1 .. 30)
{
	$node->safe_psql('postgres', 'SELECT count(*) FROM apicore.run_maintenance()');
	$caught_up = $node->safe_psql('postgres', q{
SELECT NOT EXISTS (SELECT 1 FROM soak_note WHERE deleted_at < now() - interval '4 seconds')
   AND NOT EXISTS (SELECT 1 FROM soak_note_archive WHERE deleted_at < now() - interval '8 seconds')}) eq 't';
	last if $caught_up;
	sleep 1;
}
ok($caught_up, 'archival and purge keep up: no row is left past its window');
ok($node->safe_psql('postgres', qq{
SELECT (SELECT count(*) FROM soak_note) + (SELECT count(*) FROM soak_note_archive) <= $count{soak_sd_inserted}}) eq 't',
	'soft-delete table and archive hold no more rows than were inserted');
# 500 clients x (two policies + one ad hoc key) + the pool
my $keys = $node->safe_psql('postgres', 'SELECT max(keys_in_use) FROM apicore.rate_limit_stats');
ok($keys <= 1501, "rate-limit keys in use are bounded by the key space ($keys <= 1501)");

# ---- physical soundness: amcheck on the primary and on the replica, and
# the replica holds the primary's rows, also when read through indexes
my $amcheck = q{
SELECT (SELECT count(*) FROM pg_class c, verify_heapam(c.oid)
         WHERE c.relnamespace IN ('apicore'::regnamespace, 'public'::regnamespace) AND c.relkind = 'r')
       || ' corrupt heap tuples, ' ||
       (SELECT count(bt_index_check(c.oid, true)) FROM pg_class c JOIN pg_am a ON a.oid = c.relam
         WHERE c.relnamespace IN ('apicore'::regnamespace, 'public'::regnamespace)
           AND c.relkind = 'i' AND a.amname = 'btree')
       || ' btree indexes checked' ||
       (SELECT CASE WHEN count(*) = 3 THEN '' ELSE ', extra indexes missing' END
          FROM pg_class WHERE relname LIKE 'soak\_extra\_%')};
my @same_rows = (
	[ 'idempotency keys', q{SELECT count(*), sum(hashtext(key || state || coalesce(response_body, ''))) FROM apicore.idempotency_key} ],
	[ 'idempotency keys by index', q{SET enable_seqscan = off; SET enable_bitmapscan = off;
		SELECT count(*) FROM apicore.idempotency_key WHERE scope IN ('soak', 'durable') AND key > ''} ],
	[ 'sagas', q{SELECT count(*), sum(hashtext(id::text || state)) FROM apicore.saga} ],
	[ 'saga steps', q{SELECT count(*), sum(hashtext(saga::text || step || direction || state)) FROM apicore.saga_step} ],
	[ 'saga log', q{SELECT count(*) FROM apicore.saga_transition} ],
	[ 'soft-delete rows', q{SELECT count(*), count(deleted_at), (SELECT count(*) FROM soak_note_archive) FROM soak_note} ],
	[ 'soft-delete rows by index', q{SET enable_seqscan = off; SET enable_bitmapscan = off;
		SELECT count(*) FROM soak_note WHERE id > 0} ]);
sub check_sound
{
	my ($when) = @_;
	like($node->safe_psql('postgres', $amcheck), qr/^0 corrupt heap tuples, [1-9]\d* btree indexes checked$/,
		"$when: amcheck finds heaps and btree indexes (with all heap tuples) sound on the primary");
	$node->wait_for_catchup($replica);
	like($replica->safe_psql('postgres', $amcheck), qr/^0 corrupt heap tuples, [1-9]\d* btree indexes checked$/,
		"$when: and on the replica");
	for my $q (@same_rows)
	{
		is($replica->safe_psql('postgres', $q->[1]), $node->safe_psql('postgres', $q->[1]),
			"$when: the replica holds the primary's $q->[0]");
	}
}
check_sound('after the soak');
my $replica_log = slurp_file($replica->logfile);
unlike($replica_log, qr/terminated by signal|PANIC|\bERROR:/, 'the replica replayed without error or crash');

# ---- the worker and the log
my $worker = $node->safe_psql('postgres', q{
SELECT rounds || ' ' || tasks_failed FROM apicore.maintenance_workers WHERE database = 'postgres'});
my ($rounds, $tasks_failed) = split / /, $worker;
ok($rounds > $rounds_before, "the worker kept running rounds during the soak ($rounds_before -> $rounds)");
is($tasks_failed, 0, 'no maintenance task failed');

my $log = slurp_file($node->logfile, $log_start);
unlike($log, qr/terminated by signal|PANIC|server process .* was terminated/, 'no backend crashed');
my @errors = grep { !/^\s*$/ } ($log =~ /^.*\b(?:ERROR|FATAL|WARNING):.*$/mg);
is(scalar @errors, 0, 'no ERROR, FATAL or WARNING in the server log') or diag join "\n", @errors[ 0 .. ($#errors < 9 ? $#errors : 9) ];

# ---- kill -9 of a backend under load: the server recovers, every key whose
# commit was acknowledged replays, no slot leaks, no saga sticks, and the
# WAL of apicore's direct writes replays into sound heaps and indexes
my $crash_dir = $node->basedir;
open my $fh, '>', "$crash_dir/durable.sql" or die $!;
print $fh "BEGIN;\nSELECT 1 FROM apicore.idempotency_begin('durable', 'k$_', ttl => '1 hour');\n"
  . "SELECT apicore.idempotency_complete('durable', 'k$_', 1, 201, 'v$_');\nCOMMIT;\n\\echo ack $_\n"
  for 1 .. 20000;
close $fh;
my $writer = IPC::Run::start(
	[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-f', "$crash_dir/durable.sql" ],
	'>', "$crash_dir/acks.txt", '2>', "$crash_dir/writer.err");
my $load = IPC::Run::start(
	[ 'pgbench', '-n', '-c', 4, '-j', 2, '-T', 60, '-h', $node->host, '-p', $node->port, @scripts, 'postgres' ],
	'>', "$crash_dir/load.out", '2>', "$crash_dir/load.err");
ok($node->poll_query_until('postgres', q{
SELECT count(*) >= 5 FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()}),
	'crash phase: pgbench clients and the key writer are running');
sleep 2;    # let the writer commit some keys under load
my $crash_offset = -s $node->logfile;
my $victim = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
	   AND query NOT LIKE '%durable%' LIMIT 1});
kill 'KILL', $victim;
ok($node->wait_for_log(qr/all server processes terminated; reinitializing/, $crash_offset),
	'the postmaster reinitializes after the kill');
$writer->finish;    # both lose their connections: non-zero exits are expected
$load->finish;
ok($node->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()'), 'the server is back');
my ($acked) = (slurp_file("$crash_dir/acks.txt") =~ /^ack (\d+)$/mg)[-1];
ok(($acked // 0) > 0, 'keys were acknowledged before the crash (' . ($acked // 0) . ')');
$acked //= 0;
is($node->safe_psql('postgres', qq{
SELECT count(*) FROM generate_series(1, $acked) i,
       apicore.idempotency_begin('durable', 'k' || i, ttl => '1 hour') r
 WHERE r.outcome = 'replay' AND r.response_body = 'v' || i}),
	$acked, 'every acknowledged key replays its response after crash recovery');
is($node->safe_psql('postgres', q{
SELECT in_flight FROM apicore.concurrency_acquire('soak_pool', 4, '1 second')}),
	'1', 'no concurrency slot survives the crash');
ok(sagas_settle(), 'after the crash too, every saga reaches an end state');
ok($node->poll_query_until('postgres', q{
SELECT rounds > 0 AND tasks_failed = 0 FROM apicore.maintenance_workers WHERE database = 'postgres'}),
	'the worker is back after the crash and runs without failures');
check_sound('after the crash');
my @crashes = (slurp_file($node->logfile, $log_start) =~ /terminated by signal/g);
is(scalar @crashes, 1, 'the one kill is the only crash');

$replica->stop;
$node->stop;
done_testing();
