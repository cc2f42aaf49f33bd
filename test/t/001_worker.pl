# The maintenance worker: runs every interval, skips a database without the
# extension and one that does not exist without stopping the others, reloads
# on SIGHUP, comes back after kill -9, and stops cleanly.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use ApicoreNode;
use Test::More;

my $node = apicore_node('worker', database => 'postgres, noext, missing_db', interval => '500ms');
$node->safe_psql('postgres', 'CREATE DATABASE noext');
$node->safe_psql('postgres', q{
CREATE EXTENSION apicore;
CREATE TABLE ticks (at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION tick() RETURNS text LANGUAGE sql
  AS $$ INSERT INTO public.ticks DEFAULT VALUES; SELECT 'ticked' $$;
INSERT INTO apicore.maintenance_task VALUES ('tick', 'tick', 1);
});

ok($node->poll_query_until('postgres', 'SELECT count(*) >= 3 FROM ticks'),
	'the worker runs registered tasks every interval');

ok($node->poll_query_until('postgres', q{
	SELECT last_error LIKE '%not installed%' FROM apicore.maintenance_workers WHERE database = 'noext'}),
	'a database without the extension is reported, not fatal');
ok($node->wait_for_log(qr/database "missing_db" in apicore.database does not exist; looking again every 500 ms/),
	'a database that does not exist is logged with the setting to change');
my $rounds = $node->safe_psql('postgres',
	"SELECT rounds FROM apicore.maintenance_workers WHERE database = 'postgres'");
ok($node->poll_query_until('postgres',
	"SELECT rounds > $rounds + 3 FROM apicore.maintenance_workers WHERE database = 'postgres'"),
	'the postgres worker keeps running while missing_db is missing');
# four more rounds elsewhere: the missing database was looked for each time, said once, never FATAL
my $log = slurp_file($node->logfile);
my @said = ($log =~ /database "missing_db" in apicore.database does not exist/g);
is(scalar @said, 1, 'the missing database is logged once, not every round');
unlike($log, qr/FATAL:.*missing_db/, 'no worker dies FATAL for the missing database');
# the database appears: its maintenance starts without a reload
$node->safe_psql('postgres', 'CREATE DATABASE missing_db');
ok($node->wait_for_log(qr/database "missing_db" now exists; its maintenance starts/),
	'a database created later is noticed');
ok($node->poll_query_until('postgres', q{
	SELECT last_error LIKE '%not installed%' FROM apicore.maintenance_workers WHERE database = 'missing_db'}),
	'and gets a worker (which reports the extension missing)');

# the extension arrives in noext: the worker picks it up without a restart
$node->safe_psql('noext', 'CREATE EXTENSION apicore');
ok($node->poll_query_until('postgres', q{
	SELECT last_error IS NULL FROM apicore.maintenance_workers WHERE database = 'noext'}),
	'a database gets maintenance once the extension is created');

# a failing task is logged; the others keep running
$node->safe_psql('postgres', q{
CREATE FUNCTION broken() RETURNS text LANGUAGE plpgsql
  AS $$ BEGIN RAISE EXCEPTION 'broken task'; END $$;
INSERT INTO apicore.maintenance_task VALUES ('broken', 'broken', 0);
});
ok($node->wait_for_log(qr/maintenance task broken failed in database "postgres": broken task/),
	'a failing task is logged');
my $ticks = $node->safe_psql('postgres', 'SELECT count(*) FROM ticks');
ok($node->poll_query_until('postgres', "SELECT count(*) > $ticks FROM ticks"),
	'tasks after a failing task still run');
$node->safe_psql('postgres', "DELETE FROM apicore.maintenance_task WHERE task = 'broken'");

# SIGHUP: a longer interval is picked up
$node->append_conf('postgresql.conf', "apicore.maintenance_interval = '1h'");
$node->reload;
sleep 2;    # let the reload reach the worker and finish the round in flight
$ticks = $node->safe_psql('postgres', 'SELECT count(*) FROM ticks');
sleep 3;
is($node->safe_psql('postgres', 'SELECT count(*) FROM ticks'), $ticks,
	'after reload with a 1h interval no further round runs');
$node->append_conf('postgresql.conf', "apicore.maintenance_interval = '500ms'");
$node->reload;

# Between rounds nothing is connected: the database can be cloned and dropped
# without FORCE.
$node->safe_psql('postgres', q{
CREATE FUNCTION pause() RETURNS text LANGUAGE sql AS $$ SELECT pg_sleep(3); SELECT 'paused' $$;
});
$node->safe_psql('noext', 'CREATE TABLE kept (x int)');
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = 'noext'}),
	'between rounds no process is connected to a served database');
# CREATE DATABASE .. TEMPLATE needs no other session in the template; a
# round may just be starting, so allow a retry.
my $cloned = 0;
for (1 .. 20)
{
	my ($rc) = $node->psql('postgres', 'CREATE DATABASE noext_copy TEMPLATE noext');
	if ($rc == 0) { $cloned = 1; last; }
	sleep 0.2;
}
ok($cloned, 'a served database can be used as a template');
$node->safe_psql('postgres', 'DROP DATABASE noext_copy');

# kill -9 of a worker in the middle of a round: the server recovers and
# rounds go on.
$node->safe_psql('postgres', "INSERT INTO apicore.maintenance_task VALUES ('pause', 'pause', 2)");
# (the worker shows the task it runs in pg_stat_activity; a round already
# under way when the task was added may end without it)
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 1 FROM pg_stat_activity WHERE query = 'pause' AND state = 'active'}),
	'a round is in progress');
my $pid = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE query = 'pause' AND state = 'active'");
$node->safe_psql('postgres', "DELETE FROM apicore.maintenance_task WHERE task = 'pause'");
kill 'KILL', $pid;
ok($node->wait_for_log(qr/\(PID $pid\) was terminated by signal 9/), 'worker was killed');
# the postmaster restarts every backend after a crash: wait until it accepts
# connections again before asking anything (poll_query_until retries)
ok($node->poll_query_until('postgres', 'SELECT true'), 'the server accepts connections after the crash');
my $ticks_before = $node->safe_psql('postgres', 'SELECT count(*) FROM ticks');
ok($node->poll_query_until('postgres', "SELECT count(*) > $ticks_before FROM ticks"),
	'rounds run again after the worker was killed');

# kill -9 of the launcher: it comes back and rounds go on
my $launcher = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'apicore launcher'");
ok($launcher > 0, 'launcher pid is known');
kill 'KILL', $launcher;
ok($node->wait_for_log(qr/\(PID $launcher\) was terminated by signal 9/), 'launcher was killed');
ok($node->poll_query_until('postgres', qq{
	SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'apicore launcher' AND pid <> $launcher}),
	'the launcher comes back');
$ticks = $node->safe_psql('postgres', 'SELECT count(*) FROM ticks');
ok($node->poll_query_until('postgres', "SELECT count(*) > $ticks FROM ticks"),
	'tasks run again after the launcher crash');

# clean shutdown: no errors other than the ones provoked above
my $log_offset = -s $node->logfile;
$node->stop('fast');
my $tail = slurp_file($node->logfile, $log_offset);
unlike($tail, qr/PANIC|server process .* was terminated by signal/, 'clean stop');
like($tail, qr/database system is shut down/, 'server shut down');

# Without shared_preload_libraries: the extension works, the worker view says what to change.
my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init;
$plain->start;
$plain->safe_psql('postgres', 'CREATE EXTENSION apicore');
is($plain->safe_psql('postgres', 'SELECT apicore.version() IS NOT NULL'), 't',
	'version() works without preload');
my ($ret, $out, $err) = $plain->psql('postgres', 'SELECT * FROM apicore.maintenance_workers');
isnt($ret, 0, 'maintenance_workers fails without preload');
like($err, qr/needs apicore loaded at server start/, 'error says why');
like($err, qr/shared_preload_libraries/, 'hint names the setting');
is($plain->safe_psql('postgres', q{
	SELECT count(*) = (SELECT count(*) FROM apicore.maintenance_task)
	  FROM apicore.run_maintenance() WHERE detail NOT LIKE 'failed:%'}), 't',
	'run_maintenance runs every task without preload');
$plain->stop;

done_testing();
