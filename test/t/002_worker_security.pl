# The maintenance worker never runs user code as superuser (issue 13).  An
# ordinary role plants operators and functions in public and in a schema of
# its own that the database's search_path puts first (the worker's session
# gets that setting too); its task function is registered by apicore's owner.
# Every round must run the attacker's task as the attacker, never find the
# planted objects, refuse tampered task rows with a clean logged error, and
# keep going: no crash, no crash loop.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use ApicoreNode;
use Test::More;

my $node = apicore_node('worker_security', interval => '200ms');

# The test's own sessions use search_path = public; only the worker (and any
# session without PGOPTIONS) gets the database's attacker-first setting.
$ENV{PGOPTIONS} = '-c search_path=public';

$node->safe_psql('postgres', q{
CREATE EXTENSION apicore;
CREATE ROLE attacker;
GRANT CREATE ON SCHEMA public TO attacker;
CREATE SCHEMA evil AUTHORIZATION attacker;
ALTER DATABASE postgres SET search_path = evil, pg_catalog, public;
});

$node->safe_psql('postgres', q{
SET ROLE attacker;
CREATE TABLE evil.seen (who name, what text);
GRANT USAGE ON SCHEMA evil TO PUBLIC;
GRANT INSERT ON evil.seen TO PUBLIC;
CREATE FUNCTION evil.note(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN INSERT INTO evil.seen VALUES (current_user, what); END $$;
DO $do$
DECLARE
  o record;
  nsp text;
  result_type text;
  n int := 0;
BEGIN
  FOR o IN SELECT * FROM (VALUES
      ('=', 'text', 'text'), ('<', 'text', 'text'), ('=', 'regclass', 'oid'), ('=', 'oid', 'regclass'),
      ('=', 'oid', 'oid'), ('=', 'regproc', 'oid'), ('=', 'name', 'name'), ('=', 'integer', 'integer'),
      ('<', 'integer', 'integer'), ('+', 'integer', 'integer'), ('=', 'bigint', 'integer'),
      ('>', 'bigint', 'integer'), ('=', 'timestamptz', 'timestamptz'), ('<', 'timestamptz', 'timestamptz'),
      ('<=', 'timestamptz', 'timestamptz'), ('+', 'timestamptz', 'interval'),
      ('/', 'numeric', 'double precision'), ('*', 'integer', 'interval')) v(op, l, r)
  LOOP
    EXECUTE pg_catalog.format('SELECT pg_catalog.pg_typeof(NULL::%s OPERATOR(pg_catalog.%s) NULL::%s)::text',
                              o.l, o.op, o.r) INTO result_type;
    FOREACH nsp IN ARRAY ARRAY['evil', 'public'] LOOP
      n := n + 1;
      EXECUTE pg_catalog.format($f$CREATE FUNCTION %I.trap_%s(a %s, b %s) RETURNS %s LANGUAGE plpgsql AS $b$
          BEGIN PERFORM evil.note(%L); RETURN a OPERATOR(pg_catalog.%s) b; END $b$$f$,
          nsp, n, o.l, o.r, result_type, pg_catalog.format('%s %s %s', o.l, o.op, o.r), o.op);
      EXECUTE pg_catalog.format('CREATE OPERATOR %I.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = %I.trap_%s)',
                                nsp, o.op, o.l, o.r, nsp, n);
    END LOOP;
  END LOOP;
  FOREACH nsp IN ARRAY ARRAY['evil', 'public'] LOOP
    EXECUTE pg_catalog.format($f$CREATE FUNCTION %I.now() RETURNS timestamptz LANGUAGE plpgsql AS $b$
        BEGIN PERFORM evil.note('now()'); RETURN pg_catalog.now(); END $b$$f$, nsp);
  END LOOP;
END $do$;
CREATE FUNCTION evil.attacker_task() RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.note('attacker task'); RETURN 'ran as ' || current_user; END $$;
});

# The planted objects work: a session with the database's search_path finds them.
{
	local $ENV{PGOPTIONS} = '';
	is($node->safe_psql('postgres', q{SET ROLE attacker; SELECT 'x'::text = 'x'::text}),
		't', 'the traps answer correctly');
}
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM evil.seen WHERE what OPERATOR(pg_catalog.=) 'text = text'}),
	'1', 'a session with the database search_path runs the planted operator');

# apicore's owner registers the attacker's task and some broken rows.
$node->safe_psql('postgres', q{
INSERT INTO apicore.maintenance_task VALUES ('attacker_task', 'evil.attacker_task', 1);
CREATE FUNCTION public.gone() RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$;
INSERT INTO apicore.maintenance_task VALUES
  ('gone', 'public.gone', 2),
  ('wrong_type', 'pg_catalog.now', 3),
  ('args', 'pg_catalog.md5(text)'::pg_catalog.regprocedure::pg_catalog.oid::pg_catalog.regproc, 4);
DROP FUNCTION public.gone();
});

my $rounds = $node->safe_psql('postgres',
	q{SELECT coalesce(pg_catalog.max(rounds), 0) FROM apicore.maintenance_workers}) + 3;
ok($node->poll_query_until('postgres', qq{
	SELECT rounds OPERATOR(pg_catalog.>=) $rounds
	  FROM apicore.maintenance_workers WHERE database OPERATOR(pg_catalog.=) 'postgres'}),
	'the worker completes rounds with the broken tasks registered');
ok($node->poll_query_until('postgres', q{
	SELECT pg_catalog.count(*) OPERATOR(pg_catalog.>) 0 FROM evil.seen
	 WHERE what OPERATOR(pg_catalog.=) 'attacker task'}),
	'the attacker\'s task ran');

is($node->safe_psql('postgres', q{
	SELECT pg_catalog.string_agg(DISTINCT who::text, ',') FROM evil.seen
	 WHERE what OPERATOR(pg_catalog.=) 'attacker task'}),
	'attacker', 'the attacker\'s task ran as the attacker, never as the superuser');
is($node->safe_psql('postgres', q{
	SELECT pg_catalog.count(*) FROM evil.seen WHERE who OPERATOR(pg_catalog.<>) 'attacker'}),
	'0', 'no planted operator or function ran as another role');
is($node->safe_psql('postgres', q{
	SELECT pg_catalog.count(*) FROM evil.seen
	 WHERE what OPERATOR(pg_catalog.<>) 'attacker task' AND what OPERATOR(pg_catalog.<>) 'text = text'}),
	'0', 'the worker\'s rounds never resolved a planted name');

ok($node->wait_for_log(qr/maintenance task gone failed in database "postgres": apicore: maintenance task "gone" names function \d+, which does not exist/),
	'a task whose function was dropped fails cleanly');
ok($node->wait_for_log(qr/maintenance task "wrong_type" names (?:pg_catalog\.)?now\(\), which is not a function without arguments returning text/),
	'a task function of the wrong type is refused');
ok($node->wait_for_log(qr/maintenance task "args" names md5\(text\), which is not a function without arguments returning text/),
	'a task function with arguments is refused');
like($node->safe_psql('postgres',
	q{SELECT last_error FROM apicore.maintenance_workers WHERE database OPERATOR(pg_catalog.=) 'postgres'}),
	qr/^(gone|wrong_type|args): apicore: maintenance task/, 'the failure is recorded for monitoring');

# Only apicore's owner writes the task table.
my ($rc, $out, $err) = $node->psql('postgres', q{SET ROLE attacker;
	INSERT INTO apicore.maintenance_task VALUES ('forged', 'evil.attacker_task', 0)});
like($err, qr/permission denied for table maintenance_task/, 'the attacker cannot add a task');
($rc, $out, $err) = $node->psql('postgres', q{SET ROLE attacker;
	UPDATE apicore.maintenance_task SET function = 'evil.attacker_task'});
like($err, qr/permission denied for table maintenance_task/, 'nor point a task at its function');

# The attacker gained no attribute and no membership.
is($node->safe_psql('postgres', q{
	SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls
	  FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'attacker'}),
	'f', 'the attacker has no new attribute');
is($node->safe_psql('postgres', q{
	SELECT pg_catalog.count(*) FROM pg_catalog.pg_auth_members
	 WHERE member OPERATOR(pg_catalog.=) 'attacker'::pg_catalog.regrole::pg_catalog.oid}),
	'0', 'the attacker is a member of nothing');

my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal|PANIC/, 'no crash');

$node->stop('fast');
done_testing();
