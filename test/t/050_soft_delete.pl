# The maintenance worker archives and purges soft-deleted rows in short
# batches while the application keeps writing, and touches nothing outside
# the archive/purge windows.
use strict;
use warnings;
use ApicoreNode;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $batch = 50;
my $node = apicore_node('soft_delete', conf => "apicore.soft_delete_batch_size = $batch\n");

# Enabled before the rows are backdated, so the worker has nothing to do yet.
$node->safe_psql('postgres', q{
CREATE EXTENSION apicore;
CREATE TABLE public.notes (id int PRIMARY KEY, body text);
INSERT INTO public.notes SELECT g, 'note ' || g FROM generate_series(1, 700) g;
SELECT apicore.soft_delete_enable('public.notes', archive_after => '1 hour', purge_after => '1 day');
});

# ids 1-300 live; 301-500 deleted 2 hours ago (archive); 501-600 deleted
# 2 days ago (purge); 601-700 deleted 10 minutes ago (stay).
$node->safe_psql('postgres', q{
UPDATE public.notes SET deleted_at = now() - interval '2 hours' WHERE id BETWEEN 301 AND 500;
UPDATE public.notes SET deleted_at = now() - interval '2 days' WHERE id BETWEEN 501 AND 600;
UPDATE public.notes SET deleted_at = now() - interval '10 minutes' WHERE id BETWEEN 601 AND 700;
});

# The application keeps writing while the worker runs: inserts, and soft
# deletes of its own fresh rows (which must stay: they are inside the window).
my $done_query = q{
SELECT (SELECT count(*) FROM public.notes_archive) = 200
   AND NOT EXISTS (SELECT 1 FROM public.notes WHERE deleted_at < now() - interval '1 hour')
};
my $round = 0;
my $finished = 0;
for my $attempt (1 .. 600)
{
	$round++;
	my $id = 10000 + $round;
	my $deleted = $node->safe_psql('postgres', qq{
INSERT INTO public.notes VALUES ($id, 'written during maintenance');
DELETE FROM public.notes WHERE id = $id - 1 AND id % 2 = 0 RETURNING id;
});
	if ($node->safe_psql('postgres', $done_query) eq 't')
	{
		$finished = 1;
		last;
	}
	usleep(100_000);
}
ok($finished, 'the worker archived and purged every row outside the window');
cmp_ok($round, '>', 1, 'the application wrote while the worker ran');

is($node->safe_psql('postgres', q{
SELECT count(*) FROM public.notes WHERE id BETWEEN 1 AND 300 AND deleted_at IS NULL}),
	'300', 'live rows untouched');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM public.notes WHERE id BETWEEN 601 AND 700 AND deleted_at IS NOT NULL}),
	'100', 'rows deleted inside the archive window stay in the table');
is($node->safe_psql('postgres', q{
SELECT count(*) || ' ' || min(id) || ' ' || max(id) FROM public.notes_archive}),
	'200 301 500', 'exactly the rows deleted between the windows are archived');
is($node->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM public.notes WHERE id BETWEEN 501 AND 600)
     + (SELECT count(*) FROM public.notes_archive WHERE id BETWEEN 501 AND 600)}),
	'0', 'rows deleted before the purge window are gone from table and archive');
is($node->safe_psql('postgres', qq{
SELECT count(*) FROM public.notes WHERE id > 10000}),
	$round, 'every row the application wrote is still there');
my $app_deletes = grep { $_ % 2 == 0 } (10001 .. 10000 + $round - 1);
is($node->safe_psql('postgres', q{
SELECT count(*) FROM public.notes WHERE id > 10000 AND deleted_at IS NOT NULL}),
	$app_deletes, "the application's fresh soft deletes stayed in the table");

# Batches: every archived row was moved by a transaction that moved at most
# batch_size rows (rows written by one transaction share its xmin).
my ($largest, $transactions) = split /\|/, $node->safe_psql('postgres', q{
SELECT max(n), count(*) FROM (SELECT count(*) AS n FROM public.notes_archive GROUP BY xmin::text) b});
cmp_ok($largest, '<=', $batch, "no transaction archived more than $batch rows");
cmp_ok($transactions, '>=', 200 / $batch, 'archival took several short transactions');
like($node->safe_psql('postgres', q{
SELECT last_maintenance FROM apicore.soft_delete_settings WHERE tbl = 'public.notes'::regclass}),
	qr/^public\.notes: archived \d+, purged \d+$/, 'the last run is recorded');

# pg_dump keeps soft delete: the table's policies, triggers and partial
# indexes go with it, and apicore.soft_delete_settings is dumped as
# extension configuration.
my $dump = $node->basedir . '/soft_delete.sql';
$node->command_ok([ 'pg_dump', '-d', $node->connstr('postgres'), '-f', $dump ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('restored'), '-f', $dump ],
	'restore');
is($node->safe_psql('restored', q{
SELECT tbl = 'public.notes'::regclass, column_name, archive_after,
       archive_table = 'public.notes_archive'::regclass
  FROM apicore.soft_delete_settings}),
	't|deleted_at|01:00:00|t', 'the settings survive dump and restore');
is($node->safe_psql('restored', q{
DELETE FROM public.notes WHERE id = 2;
SELECT count(*) FROM public.notes WHERE id = 2 AND deleted_at IS NOT NULL}),
	'1', 'DELETE soft-deletes in the restored database');

# The worker archives and purges each table as the table's owner: the
# owner's triggers record who ran them, and it is never the worker's
# superuser (issue 13).
$node->safe_psql('postgres', q{
CREATE ROLE items_owner;
CREATE SCHEMA owned AUTHORIZATION items_owner;
SET ROLE items_owner;
CREATE TABLE owned.items (id int PRIMARY KEY);
CREATE TABLE owned.who (op text, who name);
CREATE FUNCTION owned.note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO owned.who VALUES (TG_OP, current_user);
    RETURN coalesce(NEW, OLD);
END $$;
INSERT INTO owned.items SELECT generate_series(1, 10);
SELECT apicore.soft_delete_enable('owned.items', archive_after => '1 hour', purge_after => '1 day');
CREATE TRIGGER note AFTER DELETE ON owned.items FOR EACH ROW EXECUTE FUNCTION owned.note();
CREATE TRIGGER note AFTER INSERT ON owned.items_archive FOR EACH ROW EXECUTE FUNCTION owned.note();
DELETE FROM owned.items WHERE id <= 6;
RESET ROLE;
UPDATE owned.items SET deleted_at = now() - interval '2 hours' WHERE id <= 3;
UPDATE owned.items SET deleted_at = now() - interval '2 days' WHERE id BETWEEN 4 AND 6;
});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 9 FROM owned.who}),
	'the worker archived 3 rows and purged 3 of the owned table');
is($node->safe_psql('postgres', q{
SELECT string_agg(DISTINCT op || ' ' || who, ', ') FROM owned.who}),
	'DELETE items_owner, INSERT items_owner',
	"the owner's triggers ran as the owner, not as the worker's superuser");

# Without apicore preloaded, a backend that has not loaded the library has
# no planner hook: the guard trigger stops the DELETE from removing rows,
# and calling it loads the library, so the next DELETE is a soft delete.
$node->adjust_conf('postgresql.conf', 'shared_preload_libraries', "''");
$node->restart;
my ($rc, $stdout, $stderr) = $node->psql('postgres', 'DELETE FROM public.notes WHERE id = 1');
isnt($rc, 0, 'a DELETE planned without apicore loaded fails');
like($stderr, qr/would remove rows for real/, 'the guard trigger says why');
is($node->safe_psql('postgres', 'SELECT count(*) FROM public.notes WHERE id = 1 AND deleted_at IS NULL'),
	'1', 'the row was not removed');
is($node->safe_psql('postgres', q{
SELECT apicore.version() IS NOT NULL;
DELETE FROM public.notes WHERE id = 1;
SELECT count(*) FROM public.notes WHERE id = 1 AND deleted_at IS NOT NULL}),
	"t\n1", 'once the library is loaded in the session, DELETE soft-deletes');

$node->stop;
done_testing();
