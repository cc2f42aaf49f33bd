# Sagas survive crashes: a worker backend killed with -9 mid-step loses its
# lease, the maintenance worker reclaims the step and the saga finishes; an
# immediate server stop loses no committed transition.  Every saga ends
# completed, compensated or in the dead letter, never stuck running.
use strict;
use warnings;
use ApicoreNode;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $node = apicore_node('saga');

# a: a worker step with a 2 s lease; b: local, undone by unb; c: a worker
# step that fails for good when the payload says so.
$node->safe_psql('postgres', q{
CREATE EXTENSION apicore;
CREATE TABLE effects (saga uuid PRIMARY KEY);
CREATE FUNCTION do_b(payload jsonb) RETURNS jsonb LANGUAGE sql
  AS $$ INSERT INTO public.effects VALUES ((payload->>'id')::uuid) RETURNING jsonb_build_object('b', saga) $$;
CREATE FUNCTION undo_b(payload jsonb) RETURNS jsonb LANGUAGE sql
  AS $$ DELETE FROM public.effects WHERE saga = (payload->>'id')::uuid RETURNING jsonb_build_object('unb', saga) $$;
SELECT apicore.saga_define('crash', '[
  {"name": "a", "compensate": "undo_a", "timeout": "2 seconds", "max_attempts": 5,
   "backoff": "100 milliseconds", "max_backoff": "200 milliseconds"},
  {"name": "b", "function": "do_b", "compensate_function": "undo_b"},
  {"name": "c", "timeout": "2 seconds", "max_attempts": 3,
   "backoff": "100 milliseconds", "max_backoff": "200 milliseconds"}]');
});

# One pass of an application worker: claim up to 10 steps and report them.
my $drive = q{
SELECT count(CASE WHEN step = 'c' AND direction = 'forward' AND (payload->>'fail')::bool
                  THEN apicore.saga_step_failed(saga_id, step, attempt, 'declined', false)
                  ELSE apicore.saga_step_succeeded(saga_id, step, attempt, jsonb_build_object('by', 'tap'))
             END)
  FROM apicore.saga_claim('tap-worker', ARRAY['crash'], 10)};

sub start_saga
{
	my ($n, $fail) = @_;
	my $id = sprintf('00000000-0000-0000-0000-%012d', $n);
	return $node->safe_psql('postgres',
		"SELECT apicore.saga_start('crash', jsonb_build_object('id', '$id'::text, 'fail', $fail), '$id')");
}

sub drive_until_settled
{
	for (1 .. 480)
	{
		$node->safe_psql('postgres', $drive);
		return 1 if $node->safe_psql('postgres',
			"SELECT count(*) FROM apicore.saga WHERE state IN ('running', 'compensating')") == 0;
		usleep(250_000);
	}
	return 0;
}

# ---------- kill -9 of a worker backend mid-step ----------
my $victim_id = start_saga(1, 'false');
my $bg = $node->background_psql('postgres');
my $claimed = $bg->query_safe(
	"SELECT step || ':' || attempt FROM apicore.saga_claim('doomed-worker', ARRAY['crash'])");
is($claimed, 'a:1', 'the doomed worker claimed step a, attempt 1');
my $pid = $bg->query_safe('SELECT pg_backend_pid()');
# it is in the middle of reporting: a transaction that will never commit
$bg->query_safe('BEGIN');
$bg->query_safe("SELECT apicore.saga_heartbeat('$victim_id', 'a', 1)");
kill 'KILL', $pid;
eval { $bg->quit };

# the postmaster restarts all backends after a backend's kill -9
ok($node->poll_query_until('postgres', 'SELECT true'), 'the server accepts connections again');
is($node->safe_psql('postgres', "SELECT count(*) FROM apicore.saga_log WHERE saga = '$victim_id' AND to_state = 'claimed' AND actor = 'doomed-worker' AND attempt = 1"),
	'1', 'the committed claim survived the crash');
ok($node->poll_query_until('postgres',
	"SELECT state = 'runnable' AND last_error LIKE '%doomed-worker%' FROM apicore.saga_step WHERE saga = '$victim_id' AND step = 'a'"),
	'after the lease, the maintenance worker reclaims the step');
ok(drive_until_settled(), 'another worker finishes the saga');
is($node->safe_psql('postgres', "SELECT state FROM apicore.saga WHERE id = '$victim_id'"),
	'completed', 'the saga whose worker died completed');
is($node->safe_psql('postgres', "SELECT attempt || ':' || worker FROM apicore.saga_step WHERE saga = '$victim_id' AND step = 'a'"),
	'2:tap-worker', 'step a succeeded at attempt 2, by the worker that took it over');
is($node->safe_psql('postgres', "SELECT count(*) FROM effects WHERE saga = '$victim_id'"),
	'1', 'the local step ran exactly once');

# ---------- immediate shutdown: no committed transition is lost ----------
my @ids;
push @ids, start_saga($_, $_ % 3 == 0 ? 'true' : 'false') for 100 .. 129;
# a few rounds of work, each acknowledged (committed) before we count it
$node->safe_psql('postgres', $drive) for 1 .. 3;
my $log_before = $node->safe_psql('postgres', 'SELECT count(*) FROM apicore.saga_log');
my $sagas_before = $node->safe_psql('postgres',
	"SELECT string_agg(id || state, ',' ORDER BY id) FROM apicore.saga");
# and one claim in flight when the server dies
my $in_flight = $node->safe_psql('postgres',
	"SELECT count(*) FROM apicore.saga_claim('crashing-worker', ARRAY['crash'], 5)");
cmp_ok($in_flight, '>', 0, 'steps are claimed when the server crashes');
my $log_claimed = $node->safe_psql('postgres', 'SELECT count(*) FROM apicore.saga_log');

$node->stop('immediate');
$node->start;

is($node->safe_psql('postgres', 'SELECT count(*) FROM apicore.saga_log'), $log_claimed,
	'every committed transition is still in the log after the crash');
cmp_ok($log_claimed, '>', $log_before, 'the last claims were logged');
is($node->safe_psql('postgres', "SELECT string_agg(id || state, ',' ORDER BY id) FROM apicore.saga"),
	$sagas_before, 'every saga is in the state it had committed');
is($node->safe_psql('postgres', "SELECT count(*) FROM apicore.saga_step WHERE worker = 'crashing-worker' AND state = 'claimed'"),
	$in_flight, 'the in-flight claims survived');

ok(drive_until_settled(), 'after the crash, workers and maintenance settle every saga');
is($node->safe_psql('postgres',
	"SELECT count(*) FROM apicore.saga WHERE state NOT IN ('completed', 'compensated', 'failed')"),
	'0', 'no saga is stuck running or compensating');
is($node->safe_psql('postgres', "SELECT string_agg(DISTINCT state, ',') FROM apicore.saga WHERE (payload->>'fail')::bool"),
	'compensated', 'sagas whose step c failed were compensated');
is($node->safe_psql('postgres', "SELECT string_agg(DISTINCT state, ',') FROM apicore.saga WHERE NOT (payload->>'fail')::bool"),
	'completed', 'the others completed');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM apicore.saga g
	 WHERE (g.state = 'completed') <> EXISTS (SELECT 1 FROM effects e WHERE e.saga = g.id)}),
	'0', 'local step b took effect exactly once in completed sagas and was undone in compensated ones');
is($node->safe_psql('postgres', q{
	SELECT string_agg(step, ',' ORDER BY id) FROM apicore.saga_log
	 WHERE saga = '00000000-0000-0000-0000-000000000102' AND direction = 'compensate' AND to_state = 'succeeded'}),
	'b,a', 'compensations ran in reverse order');
is($node->safe_psql('postgres', "SELECT count(*) FROM apicore.saga_step WHERE state = 'claimed'"),
	'0', 'no step is left claimed');

$node->stop;
done_testing();
