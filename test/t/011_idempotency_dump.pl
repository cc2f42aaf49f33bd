# Idempotency keys survive pg_dump / pg_restore: the dated partitions are
# ordinary tables to pg_dump, the default partition is a config table.
use strict;
use warnings;
use ApicoreNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = apicore_node('idempotency_dump', interval => '1h');
$node->safe_psql('postgres', q{
	CREATE DATABASE source;
	CREATE DATABASE restored;
});
$node->safe_psql('source', q{
	CREATE EXTENSION apicore;
	-- one key written before any dated partition exists: it sits in the default partition
	SELECT apicore.idempotency_begin('shop', 'in-default', ttl => '1 hour');
	SELECT apicore.idempotency_complete('shop', 'in-default', 1, 200, 'from the default partition');
	SELECT apicore._idempotency_create_partition(now() + interval '1 day', now() + interval '3 days');
	SELECT apicore.idempotency_begin('shop', 'dated', ttl => '2 days');
	SELECT apicore.idempotency_complete('shop', 'dated', 1, 201, E'line 1\nline 2', '{"Location": "/x"}');
	SELECT apicore.idempotency_begin('shop', 'running', ttl => '2 days', lease => '1 hour');
	SELECT apicore.idempotency_checkpoint('shop', 'running', 1, 'charged');
});
is($node->safe_psql('source', q{
	SELECT string_agg(key || ':' || (tableoid = 'apicore.idempotency_key_default'::regclass), ',' ORDER BY key)
	  FROM apicore.idempotency_key}),
	'dated:false,in-default:true,running:false',
	'keys are spread over the default and a dated partition');

my $dump = $node->basedir . '/apicore.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-d', $node->connstr('source'), '-f', $dump ], 'pg_dump');
$node->command_ok([ 'pg_restore', '-d', $node->connstr('restored'), $dump ], 'pg_restore');

is($node->safe_psql('restored',
	"SELECT outcome || ' ' || response_code || ' ' || response_body FROM apicore.idempotency_begin('shop', 'in-default')"),
	'replay 200 from the default partition', 'a key from the default partition is replayed after restore');
is($node->safe_psql('restored',
	"SELECT outcome || ' ' || response_code || ' ' || response_body || ' ' || response_headers::text
	   FROM apicore.idempotency_begin('shop', 'dated')"),
	"replay 201 line 1\nline 2 {\"Location\": \"/x\"}", 'a key from a dated partition is replayed byte for byte');
is($node->safe_psql('restored',
	"SELECT outcome || ' ' || attempt FROM apicore.idempotency_begin('shop', 'running')"),
	'conflict 1', 'an attempt in flight still holds its key after restore');
is($node->safe_psql('restored', 'SELECT count(*) FROM apicore._idempotency_partitions()'),
	'1', 'the dated partition is restored as a partition');
is($node->safe_psql('restored',
	"SELECT count(*) FROM apicore.maintenance_task WHERE task = 'idempotency_partitions'"),
	'1', 'the maintenance task is registered once');
like($node->safe_psql('restored',
	"SELECT detail FROM apicore.run_maintenance() WHERE task = 'idempotency_partitions'"),
	qr/^partitions created \d+, dropped 0/, 'maintenance works on the restored table');

$node->stop;
done_testing();
