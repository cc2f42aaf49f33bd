# Partition maintenance never waits on application locks: a partition that a
# long transaction is reading is skipped (lock_timeout) and dropped on a
# later round; the application's lookups go on meanwhile.
use strict;
use warnings;
use ApicoreNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = apicore_node('idempotency_maintenance',
	# the worker runs elsewhere: this test decides when maintenance runs
	database => 'template1', interval => '1min');
$node->safe_psql('postgres', q{
	CREATE EXTENSION apicore;
	SELECT * FROM apicore.run_maintenance();
	SELECT apicore._idempotency_create_partition('2001-01-01 00:00+00', '2001-01-02 00:00+00');
	SELECT apicore.idempotency_begin('shop', 'live');
	SELECT apicore.idempotency_complete('shop', 'live', 1, 200, 'kept');
});

sub maintain
{
	return $node->safe_psql('postgres',
		"SELECT detail FROM apicore.run_maintenance() WHERE task = 'idempotency_partitions'");
}

$node->safe_psql('postgres', q{
	INSERT INTO apicore.idempotency_key
	SELECT 'old', 'k' || i, 'completed', 1, NULL, NULL, '1 minute', '2001-01-01', 200, 'x', NULL,
	       '2000-12-31 12:00+00', '2000-12-31 12:00+00', '2001-01-01 12:00+00'
	  FROM generate_series(1, 1000) i});

# An application transaction that looked a key up holds the parent table, so
# the DROP (ACCESS EXCLUSIVE on the parent) gives up at once; the expired
# partition, which lookups skip, is truncated instead: its space is free now.
my $app = $node->background_psql('postgres');
$app->query_safe('BEGIN');
is($app->query_safe("SELECT outcome FROM apicore.idempotency_begin('shop', 'live')"), 'replay',
	'the application replays a live key');
like(maintain(), qr/created 0, dropped 0, truncated 1, skipped \(locked\) 0;/,
	'an open application transaction: the expired partition is truncated, not waited for');
is($node->safe_psql('postgres', 'SELECT pg_relation_size(\'apicore.idempotency_key_p20010101_000000\')'),
	'0', 'its space is released');
$app->query_safe('COMMIT');
like(maintain(), qr/created 0, dropped 1, truncated 0, skipped \(locked\) 0;/,
	'once the transaction ends, the empty partition is dropped');

# A transaction that does read the expired partition holds it: maintenance
# skips it at once (lock_timeout) instead of queueing every lookup behind it.
$node->safe_psql('postgres',
	"SELECT apicore._idempotency_create_partition('2001-01-01 00:00+00', '2001-01-02 00:00+00')");
$app->query_safe('BEGIN');
$app->query_safe('SELECT count(*) FROM apicore.idempotency_key_p20010101_000000');
like(maintain(), qr/created 0, dropped 0, truncated 0, skipped \(locked\) 1;/,
	'the expired partition a transaction holds is skipped, not waited for');
is($node->safe_psql('postgres', "SELECT outcome FROM apicore.idempotency_begin('shop', 'live')"), 'replay',
	'lookups go on while maintenance skips');
$app->query_safe('COMMIT');
$app->quit;

like(maintain(), qr/created 0, dropped 1, truncated 0, skipped \(locked\) 0;/,
	'the next round drops it');
is($node->safe_psql('postgres',
	"SELECT count(*) FROM apicore._idempotency_partitions() WHERE upper_bound < '2002-01-01'"),
	'0', 'the expired partition is gone');
is($node->safe_psql('postgres',
	"SELECT response_body FROM apicore.idempotency_begin('shop', 'live')"), 'kept',
	'live keys are untouched');

# A long gap in maintenance: all partitions gone stale.  The next round makes
# partitions from the current interval on, none for the past.
$node->safe_psql('postgres', q{
	DO $$
	DECLARE p regclass;
	BEGIN
	  FOR p IN SELECT partition FROM apicore._idempotency_partitions() LOOP
	    EXECUTE format('DROP TABLE %s', p);
	  END LOOP;
	END $$;
	SELECT apicore._idempotency_create_partition('2001-01-01 00:00+00', '2001-01-02 00:00+00');
});
like(maintain(), qr/^partitions created 11, dropped 1,/,
	'after a gap: the stale partition is dropped and exactly max_ttl + premake + 1 days are made');
is($node->safe_psql('postgres',
	"SELECT count(*) FROM apicore._idempotency_partitions() WHERE upper_bound <= now()"),
	'0', 'no partition is made for the past');

$node->stop;
done_testing();
