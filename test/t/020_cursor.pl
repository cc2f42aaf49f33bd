# Cursor keys outside one server's lifetime: cursors survive a restart and a
# crash, a streaming replica built with pg_basebackup decodes the primary's
# cursors (and page cursors), a standby without a key says so clearly, a key
# rotated on the primary reaches the standby, and pg_dump/pg_restore carry
# the keys to a new database.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use ApicoreNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = apicore_node('primary', streaming => 1, interval => '1min');
$primary->safe_psql('postgres', q{
CREATE EXTENSION apicore;
CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL);
INSERT INTO orders SELECT i, '2026-01-01'::timestamptz + i * interval '1 minute'
  FROM generate_series(1, 100) i;
});

# a standby made before any key exists
$primary->backup('before_key');
my $early = PostgreSQL::Test::Cluster->new('early_standby');
$early->init_from_backup($primary, 'before_key', has_streaming => 1);
$early->start;
$primary->wait_for_catchup($early);
my ($rc, $out, $err) = $early->psql('postgres',
	"SELECT apicore.cursor_encode(ROW(1::bigint), 'orders')");
isnt($rc, 0, 'a standby without a key cannot encode');
like($err, qr/no cursor key exists yet and a standby cannot create one/,
	'... and says why, with a hint');

my $decode = "SELECT c.created_at || ' ' || c.id FROM apicore.cursor_decode('%s', 'orders') "
  . "AS c(created_at timestamptz, id bigint)";
my $cursor = $primary->safe_psql('postgres',
	"SELECT apicore.cursor_encode(ROW('2026-11-27 18:00:00.123456+00'::timestamptz, 42::bigint), 'orders')");
my $expected = $primary->safe_psql('postgres',
	"SELECT '2026-11-27 18:00:00.123456+00'::timestamptz || ' 42'");
is($primary->safe_psql('postgres', sprintf($decode, $cursor)), $expected,
	'the primary decodes its cursor');

$primary->restart;
is($primary->safe_psql('postgres', sprintf($decode, $cursor)), $expected,
	'the cursor decodes after a restart');
$primary->stop('immediate');
$primary->start;
is($primary->safe_psql('postgres', sprintf($decode, $cursor)), $expected,
	'the cursor decodes after a crash (immediate stop) and recovery');
is($primary->safe_psql('postgres', 'SELECT count(*) FROM apicore.cursor_key'), '1',
	'the restart kept the one key');

$primary->wait_for_catchup($early);
is($early->safe_psql('postgres', sprintf($decode, $cursor)), $expected,
	'the early standby decodes once the key has replicated');

# a replica built with pg_basebackup after the key exists
$primary->backup('with_key');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'with_key', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', sprintf($decode, $cursor)), $expected,
	'a pg_basebackup replica decodes the primary\'s cursor');
my $from_standby = $standby->safe_psql('postgres',
	"SELECT apicore.cursor_encode(ROW('2026-11-27 18:00:00.123456+00'::timestamptz, 42::bigint), 'orders')");
is($primary->safe_psql('postgres', sprintf($decode, $from_standby)), $expected,
	'the primary decodes a cursor the replica made');
($rc, $out, $err) = $standby->psql('postgres',
	sprintf("SELECT * FROM apicore.cursor_decode('%s', 'invoices') AS c(t timestamptz, i bigint)", $cursor));
like($err, qr/invalid cursor/, 'the replica still rejects another context');

# page cursors travel too: page 2 on the replica from the primary's page 1
my $next = $primary->safe_psql('postgres',
	"SELECT apicore.keyset_page('orders', 'created_at DESC', NULL, 10)->>'next_cursor'");
is($standby->safe_psql('postgres',
	"SELECT apicore.keyset_page('orders', 'created_at DESC', '$next', 10)->'data'->0->>'id'"),
	'90', 'the replica serves page 2 from the primary\'s page 1 cursor');

# a rotation on the primary reaches the standby
my $key_id = $primary->safe_psql('postgres', 'SELECT apicore.cursor_rotate_key()');
is($key_id, '2', 'rotation makes key 2');
my $rotated = $primary->safe_psql('postgres',
	"SELECT apicore.cursor_encode(ROW('2026-11-27 18:00:00.123456+00'::timestamptz, 42::bigint), 'orders')");
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', sprintf($decode, $rotated)), $expected,
	'the replica decodes a cursor sealed with the rotated key');
is($standby->safe_psql('postgres', sprintf($decode, $cursor)), $expected,
	'... and still the old key\'s cursors');

# pg_dump carries the keys: a restored database decodes the old cursors
my $dump = $primary->basedir . '/keys.dump';
$primary->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $primary->connstr('postgres') ],
	'pg_dump of a database with cursor keys');
$primary->safe_psql('postgres', 'CREATE DATABASE restored');
$primary->command_ok([ 'pg_restore', '-d', $primary->connstr('restored'), $dump ],
	'pg_restore into a new database');
is($primary->safe_psql('restored', 'SELECT count(*) FROM apicore.cursor_key'), '2',
	'the restored database has both keys');
is($primary->safe_psql('restored', sprintf($decode, $cursor)), $expected,
	'the restored database decodes a cursor of the original');

# another database has its own key 1: the cursor is foreign there
$primary->safe_psql('postgres', 'CREATE DATABASE elsewhere');
$primary->safe_psql('elsewhere', "CREATE EXTENSION apicore; SELECT apicore.cursor_encode(ROW(1))");
($rc, $out, $err) = $primary->psql('elsewhere', sprintf($decode, $cursor));
like($err, qr/ERROR:  invalid cursor/, 'another database rejects the cursor as invalid');

# non-superusers cannot read keys on the replica either
$primary->safe_psql('postgres', 'CREATE ROLE app LOGIN');
$primary->wait_for_catchup($standby);
($rc, $out, $err) = $standby->psql('postgres', 'SELECT key FROM apicore.cursor_key',
	extra_params => [ '-U', 'app' ]);
like($err, qr/permission denied/, 'an ordinary role cannot read keys on the replica');

$early->stop;
$standby->stop;
$primary->stop;
done_testing();
