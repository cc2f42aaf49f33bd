# Rate limits across restarts, crashes, backend exits, a full table, many
# clients on one hot key, and a hot standby.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use ApicoreNode;
use Test::More;

my ($ret, $out, $err);
my $node = apicore_node('rate_limit', streaming => 1, interval => '1h',
	conf => "apicore.rate_limit_max_keys = 16\n");
$node->safe_psql('postgres', q{
CREATE EXTENSION apicore;
SELECT apicore.rate_limit_policy_set('hourly', 2, '1 hour');
});

sub remaining
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', "SELECT allowed || ',' || remaining FROM $sql");
}

# ---- a clean restart keeps the state; a crash forgets it
$node->safe_psql('postgres', q{
SELECT apicore.rate_limit('persist', 3, '1 hour') FROM generate_series(1, 2);
SELECT apicore.rate_limit_check('hourly', 'persist');
});
$node->restart;    # fast shutdown: clean
is(remaining("apicore.rate_limit('persist', 3, '1 hour')"), 'true,0',
	'an ad hoc limit keeps its state across a clean restart');
is(remaining("apicore.rate_limit_check('hourly', 'persist')"), 'true,0',
	'a policy limit keeps its state across a clean restart');
is(remaining("apicore.rate_limit('persist', 3, '1 hour')"), 'false,0',
	'and the restored limit still rejects');
ok($node->log_contains(qr/apicore: restored 2 rate-limit keys/), 'the restore is logged');

# kill -9 of a backend makes the postmaster reinitialise shared memory
my $victim = $node->background_psql('postgres');
my $victim_pid = $victim->query_safe('SELECT pg_backend_pid()');
kill 'KILL', $victim_pid;
eval { $victim->quit; };
$node->poll_query_until('postgres', 'SELECT true') or die 'server did not come back';
ok($node->log_contains(qr/all server processes terminated; reinitializing/), 'the server went through crash recovery');
is(remaining("apicore.rate_limit('persist', 3, '1 hour')"), 'true,2',
	'after a crash the limits start empty (reset, never stuck)');

# ---- a backend that goes away gives its concurrency slots back
my $holder = $node->background_psql('postgres');
$holder->query_safe(q{SELECT apicore.concurrency_acquire('slots', 2, '1 hour') FROM generate_series(1, 2)});
my $holder_pid = $holder->query_safe('SELECT pg_backend_pid()');
is($node->safe_psql('postgres', q{SELECT acquired FROM apicore.concurrency_acquire('slots', 2, '1 hour')}),
	'f', 'both slots are held by the other backend');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($holder_pid)");
eval { $holder->quit; };
ok($node->poll_query_until('postgres', q{
	SELECT in_flight = 0 FROM apicore.concurrency_acquire('slots', 2, '1 hour') a
	  JOIN LATERAL (SELECT apicore.concurrency_release('slots', a.token)) r ON true}, 'f'),
	'a terminated backend releases its slots (none left in flight)');

# ---- full table: keys at rest are reclaimed first, then when_full decides
$node->safe_psql('postgres', q{
SELECT apicore.rate_limit_reset(k) FROM (VALUES ('persist'), ('slots')) v(k);
SELECT apicore._rate_limit_maintain();
});
my $fill = q{SET apicore.rate_limit_test_clock = 1000;
  SELECT count(*) FILTER (WHERE (r).allowed) FROM (
    SELECT apicore.rate_limit('busy' || i, 1, '1 hour') AS r FROM generate_series(1, 16) i) s};
is($node->safe_psql('postgres', $fill), '16', '16 busy keys fill the table');
is($node->safe_psql('postgres', q{SET apicore.rate_limit_test_clock = 1000;
	SELECT (apicore.rate_limit('newcomer', 1, '1 hour')).allowed}), 't',
	'when_full = allow: a new key is allowed (fail open)');
is($node->safe_psql('postgres', q{SET apicore.rate_limit_test_clock = 1000;
	SET apicore.rate_limit_when_full = deny;
	SELECT apicore.rate_limit('newcomer', 1, '1 hour')}), '(f,1,0,1,0,)',
	'when_full = deny: a new key is rejected (fail closed)');
is($node->safe_psql('postgres', q{SELECT keys_in_use || ',' || full_events || ',' || evictions
	FROM apicore.rate_limit_stats WHERE policy IS NULL}), '16,2,0',
	'both full events are counted and nothing was evicted');
is($node->safe_psql('postgres', q{SET apicore.rate_limit_test_clock = 4601;
	SET apicore.rate_limit_when_full = deny;
	SELECT (apicore.rate_limit('newcomer', 1, '1 hour')).allowed}), 't',
	'once the busy keys are at rest one is reclaimed for the new key');
is($node->safe_psql('postgres', q{SELECT full_events || ',' || (evictions > 0)
	FROM apicore.rate_limit_stats WHERE policy IS NULL}), '2,true',
	'the reclaim counts as an eviction, not a full event');
$node->safe_psql('postgres', q{SET apicore.rate_limit_test_clock = 100000; SELECT apicore._rate_limit_maintain()});

# ---- the lease pool (as many slots as keys) full: counted, and when_full decides
my $leaser = $node->background_psql('postgres');
is($leaser->query_safe(q{SELECT count(*) FROM (SELECT (apicore.concurrency_acquire('many', 100, '1 hour')).acquired
	FROM generate_series(1, 16)) s WHERE acquired}),
	'16', 'one backend holds all 16 lease slots');
is($node->safe_psql('postgres', q{SET apicore.rate_limit_when_full = deny;
	SELECT acquired FROM apicore.concurrency_acquire('many', 100, '1 hour')}), 'f',
	'no slot left and when_full = deny: not acquired');
is($node->safe_psql('postgres', q{SELECT acquired::text || coalesce(token::text, '-')
	FROM apicore.concurrency_acquire('many', 100, '1 hour')}), 'true-',
	'no slot left and when_full = allow: acquired without a token');
is($node->safe_psql('postgres', q{SELECT full_events FROM apicore.rate_limit_stats WHERE policy IS NULL}),
	'4', 'both are counted as full events');
$leaser->quit;
ok($node->poll_query_until('postgres', q{SELECT leases_in_flight = 0 FROM apicore.rate_limit_stats WHERE policy IS NULL}),
	'the backend that quit gave all 16 back');

# ---- every key comes to rest within apicore.rate_limit_max_period (1 day):
# a table filled with keys of the longest period takes new keys a day later
sub at_clock
{
	my ($clock, $sql) = @_;
	return $node->safe_psql('postgres', "SET apicore.rate_limit_test_clock = $clock;
		SET apicore.rate_limit_when_full = deny; $sql");
}
is(at_clock(200000, q{SELECT count(*) FILTER (WHERE (r).allowed) FROM (
	SELECT apicore.rate_limit('day' || i, 1, '1 day') AS r FROM generate_series(1, 16) i) s}),
	'16', '16 keys of the longest period fill the table');
is(at_clock(286399, q{SELECT (apicore.rate_limit('late', 1, '1 minute')).allowed}), 'f',
	'a second before the day is over no key is at rest: when_full decides (deny)');
is(at_clock(286400, q{SELECT (apicore.rate_limit('late', 1, '1 minute')).allowed}), 't',
	'a day after their last use the keys are at rest and one is reclaimed for the new key');
($ret, $out, $err) = $node->psql('postgres', q{SELECT apicore.rate_limit('forever', 1, '3650 days')});
like($err, qr/22023|at most 1 day/, 'a longer period is refused');
like($err, qr/apicore\.rate_limit_max_period/, 'and the hint names the setting');
at_clock(1000000, 'SELECT apicore._rate_limit_maintain()');

# ---- many clients on one hot key: exactly the limit gets through
$node->safe_psql('postgres', q{SELECT apicore.rate_limit_policy_set('hot', 100, '1 hour')});
$node->pgbench('-n -c 8 -j 2 -t 200', 0, [qr/processed: 1600\/1600/], [qr/^$/],
	'8 clients hammer one hot key',
	{ 'hot' => q{SELECT apicore.rate_limit_check('hot', 'the-key');} });
is($node->safe_psql('postgres', q{SELECT allowed || ',' || rejected FROM apicore.rate_limit_stats WHERE policy = 'hot'}),
	'100,1500', 'of 1600 concurrent calls exactly the limit of 100 was allowed');

# ---- all or nothing under concurrency: both limits always allow the same calls
$node->safe_psql('postgres', q{
SELECT apicore.rate_limit_policy_set('pair_small', 50, '1 hour');
SELECT apicore.rate_limit_policy_set('pair_large', 1000, '1 hour');
});
$node->pgbench('-n -c 8 -j 2 -t 100', 0, [qr/processed: 800\/800/], [qr/^$/],
	'8 clients run two-limit checks',
	{ 'pair' => q{SELECT apicore.rate_limit_check(ARRAY['pair_small', 'pair_large'], ARRAY['x', 'y']);
SELECT apicore.rate_limit_check(ARRAY['pair_large', 'pair_small'], ARRAY['y', 'x']);} });
is($node->safe_psql('postgres', q{SELECT string_agg(policy || '=' || allowed, ',' ORDER BY policy)
	FROM apicore.rate_limit_stats WHERE policy LIKE 'pair%'}),
	'pair_large=50,pair_small=50',
	'a call rejected by the small limit never consumed from the large one');

# ---- a hot standby rate-limits read-only traffic
$node->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($node, 'base', has_streaming => 1);
$standby->start;
$node->safe_psql('postgres', q{SELECT apicore.rate_limit_policy_set('replica', 1, '1 hour');
CREATE ROLE regress_rl_standby_app;});
$node->wait_for_catchup($standby);
is($standby->safe_psql('postgres', q{SELECT (apicore.rate_limit('ro', 1, '1 hour')).allowed::text || ',' || (apicore.rate_limit('ro', 1, '1 hour')).allowed::text}),
	'true,false', 'rate_limit works on a hot standby');
ok($standby->poll_query_until('postgres',
	q{SELECT (apicore.rate_limit_check('replica', 'ro', 0)).limit = 1}),
	'a policy created on the primary reaches the standby cache');
is($standby->safe_psql('postgres', q{SET ROLE regress_rl_standby_app;
	SELECT (apicore.rate_limit_check('replica', 'app')).allowed}), 't',
	'an application role with only EXECUTE uses the policy on the standby');
($ret, $out, $err) = $standby->psql('postgres', q{SELECT apicore.rate_limit_policy_set('x', 1, '1 hour')});
like($err, qr/read-only transaction/, 'policies cannot be changed on a standby');

$standby->stop;
$node->stop;

# ---- without shared_preload_libraries: a clear error, and housekeeping says why it skipped
my $plain = PostgreSQL::Test::Cluster->new('no_preload');
$plain->init;
$plain->start;
$plain->safe_psql('postgres', 'CREATE EXTENSION apicore');
($ret, $out, $err) = $plain->psql('postgres', q{SELECT apicore.rate_limit('k', 1, '1 second')},
	extra_params => ['-v', 'VERBOSITY=verbose']);
like($err, qr/55000.*rate_limit needs apicore loaded at server start/s,
	'rate_limit without preload raises 55000 naming the feature');
like($err, qr/shared_preload_libraries/, 'and the hint names the setting');
like($plain->safe_psql('postgres', 'SELECT apicore._rate_limit_maintain()'),
	qr/^skipped: rate limits need apicore in shared_preload_libraries$/,
	'the housekeeping task reports a note instead of failing');
$plain->stop;
done_testing();
