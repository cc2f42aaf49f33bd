# Idempotency keys across crashes: kill -9 of a backend between begin and
# complete, and a crash of the whole server.  Committed keys and responses
# survive; a transaction that never committed leaves no trace; an attempt
# that died after committing its begin is taken over once its lease runs
# out, with its last recovery point.
use strict;
use warnings;
use ApicoreNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = apicore_node('idempotency',
	# the worker runs elsewhere, so no maintenance round moves keys mid-test
	database => 'template1', interval => '1min');
$node->safe_psql('postgres', 'CREATE EXTENSION apicore; CREATE TABLE charges (key text PRIMARY KEY)');

sub begin_key
{
	my ($key, $extra) = @_;
	$extra = defined $extra ? ", $extra" : '';
	return $node->safe_psql('postgres',
		"SELECT outcome || ' ' || coalesce(attempt::text, '-') || ' ' || coalesce(recovery_point, '-')
		   FROM apicore.idempotency_begin('shop', '$key'$extra)");
}

# A completed key, committed before the crash.
is(begin_key('done'), 'proceed 1 -', 'a new key proceeds');
$node->safe_psql('postgres', q{
	SELECT apicore.idempotency_complete('shop', 'done', 1, 201, E'{"id": 7,\n "note": "bytes \\u00e9 kept"}',
	                                    '{"Location": "/charges/7"}')});
my $stored = $node->safe_psql('postgres',
	"SELECT md5(response_body) FROM apicore.idempotency_get('shop', 'done')");

# The cross-transaction mode: begin commits, a checkpoint records the first
# phase, then the backend doing the second phase dies with an open transaction.
# (a long lease, ended by hand below: a short one could run out on a loaded
# machine before the test looks, and the conflict it expects would be gone)
is(begin_key('phased', "lease => '1 hour'"), 'proceed 1 -', 'the phased request proceeds');
$node->safe_psql('postgres', "SELECT apicore.idempotency_checkpoint('shop', 'phased', 1, 'charge_created')");

# The one-transaction mode: begin and a business write, never committed.
my $victim = $node->background_psql('postgres');
$victim->query_safe('BEGIN');
$victim->query_safe("SELECT outcome FROM apicore.idempotency_begin('shop', 'in-tx')");
$victim->query_safe("INSERT INTO charges VALUES ('in-tx')");
$victim->query_safe("SELECT apicore.idempotency_checkpoint('shop', 'phased', 1, 'refund_created')");
my $pid = $victim->query_safe('SELECT pg_backend_pid()');
chomp $pid;

is(begin_key('in-tx'), 'conflict - -', 'a duplicate of the open transaction gets conflict');

kill 'KILL', $pid;
eval { $victim->quit };    # psql exits with an error: its backend is gone
ok($node->poll_query_until('postgres', 'SELECT 1', '1'), 'the server is back after kill -9 of a backend');

is(begin_key('in-tx'), 'proceed 1 -', 'the uncommitted key left no trace: the retry proceeds as attempt 1');
$node->safe_psql('postgres', "SELECT apicore.idempotency_release('shop', 'in-tx', 1)");
is($node->safe_psql('postgres', 'SELECT count(*) FROM charges'), '0', 'nor did its business write');

# The phased attempt is still leased (its begin committed) ...
like(begin_key('phased'), qr/^conflict 1/, 'the dead attempt keeps the key until its lease runs out');
# ... and once the lease has run out the retry takes over from the last committed checkpoint.
$node->safe_psql('postgres', q{
	UPDATE apicore.idempotency_key SET lease_expires_at = clock_timestamp() - interval '1 second'
	 WHERE scope = 'shop' AND key = 'phased'});
ok($node->poll_query_until('postgres',
	"SELECT lease_expires_at < clock_timestamp() FROM apicore.idempotency_get('shop', 'phased')"),
	'the lease runs out');
is(begin_key('phased'), 'proceed 2 charge_created',
	'the retry takes over as attempt 2 with the last committed recovery point');
$node->safe_psql('postgres', "SELECT apicore.idempotency_complete('shop', 'phased', 2, 200, 'refunded')");

# A crash of the whole server keeps every committed response, byte for byte.
$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres',
	"SELECT outcome || ' ' || response_code || ' ' || md5(response_body) || ' ' || response_headers::text
	   FROM apicore.idempotency_begin('shop', 'done')"),
	"replay 201 $stored {\"Location\": \"/charges/7\"}", 'a committed response survives a crash, byte for byte');
is($node->safe_psql('postgres',
	"SELECT outcome || ' ' || attempt || ' ' || response_body FROM apicore.idempotency_begin('shop', 'phased')"),
	'replay 2 refunded', 'the taken-over attempt\'s response survives a crash');

$node->stop;
done_testing();
