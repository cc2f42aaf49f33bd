# ALTER EXTENSION apicore UPDATE from every released version.
#
# The released versions are read from sql/: every frozen install script
# sql/apicore--X.Y.Z.sql (other than the default version's, which make
# generates) and every source of an upgrade script sql/apicore--X.Y.Z--*.sql,
# so a new release is tested without touching this file.  For each one:
#   - a database creates the extension at that version (its script's C
#     functions must still exist in the new apicore.so), uses every capability
#     with it, then runs ALTER EXTENSION apicore UPDATE;
#   - its extension objects are compared with those of a fresh CREATE
#     EXTENSION apicore: member objects, function definitions, columns,
#     indexes, constraints, triggers, policies, views, types, comments, ACLs,
#     initial privileges, reloptions, config tables and apicore's own
#     maintenance tasks.  Any change to sql/install/*.sql that the upgrade
#     script lacks fails here, with a diff;
#   - the data written before the update still works, and the maintenance
#     worker serves the database before and after the update.
use strict;
use warnings;
use FindBin;
use File::Temp qw(tempdir);
use PostgreSQL::Test::Utils;
use ApicoreNode;
use Test::More;

my $top = "$FindBin::RealBin/../..";
my ($default) = slurp_file("$top/apicore.control") =~ /^default_version = '(.*)'/m
  or die "no default_version in apicore.control";
my %released;
opendir(my $dh, "$top/sql") or die "sql/: $!";
for (readdir $dh)
{
	next unless /^apicore--(\d+\.\d+\.\d+)(--\d+\.\d+\.\d+)?\.sql$/;
	$released{$1} = 1 if $2 || $1 ne $default;
}
closedir $dh;
my @released = sort keys %released;
ok(@released >= 1, "released versions found in sql/: @released (default $default)");
my %db = map { my $v = $_; (my $name = "v$v") =~ tr/./_/; ($v => $name) } @released;

my $node = apicore_node('upgrade', database => join(', ', map { $db{$_} } @released));
$node->safe_psql('postgres', 'CREATE ROLE app LOGIN');

is($node->safe_psql('postgres', q{SELECT default_version FROM pg_available_extensions WHERE name = 'apicore'}),
	$default, 'the installed default version is apicore.control\'s');

# What apicore's SQL objects are, as sorted text: what a fresh install
# and an update must agree on.  Rows that are data (keys, sagas, policies) are
# left out, except apicore's own maintenance tasks, which its scripts insert.
my $describe = q{
WITH member AS (
    SELECT d.classid, d.objid, d.objsubid
      FROM pg_depend d JOIN pg_extension e ON d.refobjid = e.oid
     WHERE d.refclassid = 'pg_extension'::regclass AND e.extname = 'apicore' AND d.deptype = 'e'),
rel AS (  -- member relations, and the relations behind member composite types
    SELECT c.* FROM pg_class c
     WHERE c.oid IN (SELECT objid FROM member WHERE classid = 'pg_class'::regclass)
        OR c.reltype IN (SELECT objid FROM member WHERE classid = 'pg_type'::regclass) AND c.relkind = 'c'),
line(t) AS (
    SELECT 'member ' || pg_describe_object(classid, objid, objsubid) FROM member
UNION ALL
    SELECT format('extension %s schema=%s relocatable=%s config=%s', e.extversion,
                  e.extnamespace::regnamespace, e.extrelocatable,
                  (SELECT string_agg(format('%s WHERE %L', cfg::regclass, cond), ', ' ORDER BY cfg::regclass::text)
                     FROM unnest(e.extconfig, e.extcondition) AS u(cfg, cond)))
      FROM pg_extension e WHERE e.extname = 'apicore'
UNION ALL
    SELECT format('schema %s owner=%s acl=%s comment=%s', n.nspname, pg_get_userbyid(n.nspowner),
                  n.nspacl, obj_description(n.oid, 'pg_namespace'))
      FROM pg_namespace n WHERE n.nspname = 'apicore'
UNION ALL
    SELECT format(E'function %s owner=%s acl=%s comment=%s\n%s', p.oid::regprocedure,
                  pg_get_userbyid(p.proowner), p.proacl, obj_description(p.oid, 'pg_proc'),
                  CASE WHEN p.prokind = 'a' THEN 'aggregate' ELSE pg_get_functiondef(p.oid) END)
      FROM pg_proc p WHERE p.oid IN (SELECT objid FROM member WHERE classid = 'pg_proc'::regclass)
UNION ALL
    SELECT format('type %s kind=%s owner=%s acl=%s comment=%s base=%s notnull=%s default=%s labels=%s',
                  t.oid::regtype, t.typtype, pg_get_userbyid(t.typowner), t.typacl,
                  obj_description(t.oid, 'pg_type'), format_type(t.typbasetype, t.typtypmod),
                  t.typnotnull, t.typdefault,
                  (SELECT string_agg(enumlabel::text, ',' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid))
      FROM pg_type t WHERE t.oid IN (SELECT objid FROM member WHERE classid = 'pg_type'::regclass)
UNION ALL
    SELECT format(E'relation %s kind=%s persistence=%s owner=%s acl=%s options=%s rls=%s/%s replident=%s partkey=%s partof=%s %s comment=%s\n%s',
                  c.oid::regclass, c.relkind, c.relpersistence, pg_get_userbyid(c.relowner), c.relacl,
                  c.reloptions, c.relrowsecurity, c.relforcerowsecurity, c.relreplident,
                  pg_get_partkeydef(c.oid),
                  (SELECT string_agg(inhparent::regclass::text, ',' ORDER BY inhseqno) FROM pg_inherits WHERE inhrelid = c.oid),
                  pg_get_expr(c.relpartbound, c.oid), obj_description(c.oid, 'pg_class'),
                  CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END)
      FROM rel c
UNION ALL  -- columns by their position among the live ones: an update can only append
    SELECT format('column %s #%s %I %s notnull=%s default=%s identity=%s generated=%s collation=%s acl=%s comment=%s',
                  a.attrelid::regclass, row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum),
                  a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated,
                  a.attcollation::regcollation, a.attacl, col_description(a.attrelid, a.attnum))
      FROM pg_attribute a JOIN rel c ON c.oid = a.attrelid
      LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
     WHERE a.attnum > 0 AND NOT a.attisdropped
UNION ALL
    SELECT format('sequence %s type=%s start=%s increment=%s min=%s max=%s cache=%s cycle=%s owned_by=%s',
                  s.seqrelid::regclass, s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin,
                  s.seqmax, s.seqcache, s.seqcycle,
                  (SELECT string_agg(pg_describe_object(refclassid, refobjid, refobjsubid), ',')
                     FROM pg_depend WHERE classid = 'pg_class'::regclass AND objid = s.seqrelid
                      AND deptype IN ('a', 'i') AND refclassid = 'pg_class'::regclass))
      FROM pg_sequence s JOIN rel c ON c.oid = s.seqrelid
UNION ALL
    SELECT format('index %s options=%s comment=%s', pg_get_indexdef(i.indexrelid), ic.reloptions,
                  obj_description(i.indexrelid, 'pg_class'))
      FROM pg_index i JOIN rel c ON c.oid = i.indrelid JOIN pg_class ic ON ic.oid = i.indexrelid
UNION ALL
    SELECT format('constraint %s %s %s comment=%s', coalesce(co.conrelid::regclass::text, co.contypid::regtype::text),
                  co.conname, pg_get_constraintdef(co.oid), obj_description(co.oid, 'pg_constraint'))
      FROM pg_constraint co
     WHERE co.conrelid IN (SELECT oid FROM rel)
        OR co.contypid IN (SELECT objid FROM member WHERE classid = 'pg_type'::regclass)
UNION ALL
    SELECT format('trigger %s enabled=%s comment=%s', pg_get_triggerdef(tg.oid), tg.tgenabled,
                  obj_description(tg.oid, 'pg_trigger'))
      FROM pg_trigger tg JOIN rel c ON c.oid = tg.tgrelid WHERE NOT tg.tgisinternal
UNION ALL
    SELECT format('policy %s %s cmd=%s permissive=%s roles=%s using=%s check=%s', po.polrelid::regclass,
                  po.polname, po.polcmd, po.polpermissive,
                  (SELECT string_agg(CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r)::text END, ',' ORDER BY 1)
                     FROM unnest(po.polroles) r),
                  pg_get_expr(po.polqual, po.polrelid), pg_get_expr(po.polwithcheck, po.polrelid))
      FROM pg_policy po JOIN rel c ON c.oid = po.polrelid
UNION ALL
    SELECT format('rule %s', pg_get_ruledef(ru.oid))
      FROM pg_rewrite ru JOIN rel c ON c.oid = ru.ev_class WHERE ru.rulename <> '_RETURN'
UNION ALL  -- what pg_dump takes for the extension's own privileges
    SELECT format('initprivs %s %s %s', pg_describe_object(ip.classoid, ip.objoid, ip.objsubid),
                  ip.privtype, ip.initprivs)
      FROM pg_init_privs ip
     WHERE (ip.classoid, ip.objoid) IN (SELECT classid, objid FROM member)
UNION ALL
    SELECT format('maintenance task %s %s %s', task, function, run_order)
      FROM apicore.maintenance_task WHERE builtin)
SELECT string_agg(t, E'\n' ORDER BY t) FROM line};

# The roles the scripts create live in the cluster, not the database.
my $roles = q{
SELECT string_agg(format('role %s login=%s member_of=%s', r.rolname, r.rolcanlogin,
                         (SELECT string_agg(g.rolname, ',' ORDER BY g.rolname)
                            FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                           WHERE m.member = r.oid)), E'\n' ORDER BY r.rolname)
  FROM pg_roles r WHERE r.rolname LIKE 'apicore\_%'};

# ---- every released version: create it, use it, update it
for my $v (@released)
{
	my $db = $db{$v};
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	is($node->safe_psql($db, qq{
CREATE EXTENSION apicore VERSION '$v';
SELECT extversion FROM pg_extension WHERE extname = 'apicore'}),
		$v, "$v: CREATE EXTENSION apicore VERSION '$v' with the new library");

	# every capability used with $v's SQL (should a later release change
	# these calls, branch on $v here)
	$node->safe_psql($db, q{
SELECT apicore.idempotency_begin('shop', 'paid', '{"method": "POST", "path": "/pay"}');
SELECT apicore.idempotency_complete('shop', 'paid', 1, 201, E'{"id": 7}\n', '{"Location": "/pay/7"}');

SELECT apicore.rate_limit_policy_set('api', 3, '1 hour');

SELECT apicore.saga_define('checkout', '[{"name": "reserve", "compensate": "release"}, {"name": "charge"}]');

CREATE TABLE notes (id int PRIMARY KEY, body text, handle text UNIQUE);
INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 3) g;
SELECT apicore.soft_delete_enable('notes');
GRANT SELECT, DELETE ON notes TO app;

CREATE FUNCTION public.app_task() RETURNS text LANGUAGE sql AS $$ SELECT 'app task ran' $$;
INSERT INTO apicore.maintenance_task (task, function, run_order) VALUES ('app_task', 'public.app_task', 90);
});
	if ($v eq '0.1.0')
	{
		# 0.2.0 logs a claim with the run's next transition, in columns 0.1.0
		# lacks: until the update, the new library refuses to start or claim
		# sagas (it says so) rather than write 0.1.0's tables wrongly.
		my ($rc, $out, $err) = $node->psql($db, q{
SELECT apicore.saga_start('checkout', '{"n": 1}', '00000000-0000-0000-0000-000000000090')},
			extra_params => [ '-v', 'VERBOSITY=verbose' ]);
		like($err, qr/55000: apicore: the saga tables are older than the installed apicore library.*HINT:  Run ALTER EXTENSION apicore UPDATE/s,
			"$v: before the update, saga_start refuses with 55000 and says to update");
		# the rows 0.1.0's saga_start and saga_claim('w') leave, claim logged
		# in a row of its own
		$node->safe_psql($db, q{
INSERT INTO apicore.saga (id, definition, version, payload)
    VALUES ('00000000-0000-0000-0000-000000000090', 'checkout', 1, '{"n": 1}');
INSERT INTO apicore.saga_step (saga, position, direction, step, action, definition, state, attempt,
        max_attempts, timeout, backoff, max_backoff, lease_expires_at, worker)
    SELECT '00000000-0000-0000-0000-000000000090', position, 'forward', name, name, definition,
           'claimed', 1, max_attempts, timeout, backoff, max_backoff, now() + timeout, 'w'
      FROM apicore.saga_definition_step WHERE definition = 'checkout' AND position = 1;
INSERT INTO apicore.saga_transition (saga, step, direction, attempt, from_state, to_state, actor) VALUES
    ('00000000-0000-0000-0000-000000000090', NULL, NULL, NULL, NULL, 'running', current_user),
    ('00000000-0000-0000-0000-000000000090', 'reserve', 'forward', NULL, NULL, 'runnable', current_user),
    ('00000000-0000-0000-0000-000000000090', 'reserve', 'forward', 1, 'runnable', 'claimed', 'w');
});
	}
	else
	{
		$node->safe_psql($db, q{
SELECT apicore.saga_start('checkout', '{"n": 1}', '00000000-0000-0000-0000-000000000090')});
		is($node->safe_psql($db, q{
SELECT step || ' ' || attempt FROM apicore.saga_claim('w', ARRAY['checkout'])}),
			'reserve 1', "$v: a saga step is claimed");
	}
	is($node->safe_psql($db, q{
SELECT string_agg((apicore.rate_limit_check('api', 'client')).allowed::text, ',') FROM generate_series(1, 2)}),
		'true,true', "$v: the policy allows the first two calls");
	is($node->safe_psql($db, q{SET ROLE app; DELETE FROM notes WHERE id = 2 RETURNING id}),
		'2', "$v: a row is soft-deleted");
	my $cursor = $node->safe_psql($db, q{
SELECT apicore.cursor_encode(row(9007199254740993::bigint, 'x'::text), 'orders')});

	# the new library maintains a database whose SQL is still $v's (the
	# state between the restart and ALTER EXTENSION UPDATE)
	ok($node->poll_query_until($db, q{
SELECT rounds > 0 FROM apicore.maintenance_workers WHERE database = current_database()}),
		"$v: the worker completes rounds before the update");

	$node->safe_psql($db, 'ALTER EXTENSION apicore UPDATE');
	is($node->safe_psql($db, q{SELECT extversion FROM pg_extension WHERE extname = 'apicore'}),
		$default, "$v: ALTER EXTENSION apicore UPDATE reaches $default");

	# ---- the data written before the update still works
	is($node->safe_psql($db, q{
SELECT outcome || ' ' || response_code || ' ' || response_body || response_headers::text
  FROM apicore.idempotency_begin('shop', 'paid', '{"path": "/pay", "method": "POST"}')}),
		qq{replay 201 {"id": 7}\n{"Location": "/pay/7"}}, "$v: the idempotency key replays its stored response");
	is($node->safe_psql($db, q{
SELECT outcome FROM apicore.idempotency_begin('shop', 'paid', '{"path": "/pay", "method": "PUT"}')}),
		'mismatch', "$v: and still knows its request");
	is($node->safe_psql($db, qq{
SELECT c.id || ' ' || c.tag FROM apicore.cursor_decode('$cursor', 'orders') AS c(id bigint, tag text)}),
		'9007199254740993 x', "$v: the cursor minted before the update decodes");
	is($node->safe_psql($db, q{
SELECT string_agg((apicore.rate_limit_check('api', 'client')).allowed::text, ',') FROM generate_series(1, 2)}),
		'true,false', "$v: the policy still limits (its third call allowed, the fourth refused)");
	$node->safe_psql($db, q{
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-000000000090', 'reserve', 1)});
	is($node->safe_psql($db, q{
SELECT step || ' ' || attempt FROM apicore.saga_claim('w', ARRAY['checkout'])}),
		'charge 1', "$v: the step claimed before the update succeeds and the saga proceeds");
	is($node->safe_psql($db, q{
SELECT apicore.saga_step_succeeded('00000000-0000-0000-0000-000000000090', 'charge', 1)}),
		'completed', "$v: and completes");
	is($node->safe_psql($db, q{
SELECT string_agg(coalesce(step, '(saga)') || ':' || coalesce(from_state, '') || '>' || to_state, ' ' ORDER BY id)
  FROM apicore.saga_log WHERE saga = '00000000-0000-0000-0000-000000000090'}),
		'(saga):>running reserve:>runnable reserve:runnable>claimed reserve:claimed>succeeded '
		. 'charge:>runnable charge:runnable>claimed charge:claimed>succeeded (saga):running>completed',
		"$v: the saga log shows each transition once, in order, across the update");
	is($node->safe_psql($db, q{SET ROLE app; SELECT string_agg(id::text, ',' ORDER BY id) FROM notes}),
		'1,3', "$v: the soft-deleted row stays hidden");
	# the unique constraint soft_delete_enable replaced keeps its name for
	# ON CONFLICT ON CONSTRAINT (the update adds the trigger that holds it)
	is($node->safe_psql($db, q{
INSERT INTO notes VALUES (10, 'n', 'h') ON CONFLICT ON CONSTRAINT notes_handle_key DO NOTHING RETURNING id;
INSERT INTO notes VALUES (11, 'n', 'h') ON CONFLICT ON CONSTRAINT notes_handle_key DO NOTHING RETURNING id}),
		'10', "$v: ON CONFLICT ON CONSTRAINT <the original name> after the update");
	$node->safe_psql($db, q{SET ROLE app; DELETE FROM notes WHERE id = 3});
	is($node->safe_psql($db, q{SELECT string_agg(id::text, ',' ORDER BY id) FROM notes WHERE deleted_at IS NOT NULL}),
		'2,3', "$v: DELETE still only marks rows");
	is($node->safe_psql($db, q{
SELECT string_agg(task || ':' || builtin, ',') FROM apicore.maintenance_task WHERE NOT builtin}),
		'app_task:false', "$v: the application's maintenance task is still there");
	is($node->safe_psql($db, q{
SELECT count(*) = (SELECT count(*) FROM apicore.maintenance_task)
       AND bool_or(task = 'app_task' AND detail = 'app task ran')
  FROM apicore.run_maintenance() WHERE detail NOT LIKE 'failed:%'}),
		't', "$v: apicore.run_maintenance() runs every task, the application's too");
	my $rounds = $node->safe_psql($db, q{
SELECT rounds FROM apicore.maintenance_workers WHERE database = current_database()});
	ok($node->poll_query_until($db, qq{
SELECT rounds > $rounds + 1 FROM apicore.maintenance_workers WHERE database = current_database()}),
		"$v: the worker completes rounds after the update");
	is($node->safe_psql($db, q{
SELECT tasks_failed || ' ' || coalesce(last_error, '') FROM apicore.maintenance_workers
 WHERE database = current_database()}),
		'0 ', "$v: with no failed task, before or after the update");

	isnt($node->safe_psql($db, qq{
SELECT coalesce(path, '') FROM pg_extension_update_paths('apicore') WHERE source = '$v' AND target = '$default'}),
		'', "$v: pg_extension_update_paths has a path to $default");
}

# ---- a fresh install, made after the updates so that an update cannot lean
# on a role the fresh script created
my $roles_updated = $node->safe_psql('postgres', $roles);
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION apicore');
is($node->safe_psql('postgres', $roles), $roles_updated,
	'the updates created every role a fresh install creates');

my $fresh = $node->safe_psql('fresh', $describe);
like($fresh, qr/^column apicore\.saga_step #1 .*^function apicore\.idempotency_begin\(/ms,
	'the description covers functions and columns');
my $tmp = tempdir(CLEANUP => 1);
for my $v (@released)
{
	my $updated = $node->safe_psql($db{$v}, $describe);
	my $diff = '';
	if ($updated ne $fresh)
	{
		PostgreSQL::Test::Utils::append_to_file("$tmp/fresh", $fresh) unless -e "$tmp/fresh";
		unlink "$tmp/updated";
		PostgreSQL::Test::Utils::append_to_file("$tmp/updated", $updated);
		$diff = `diff -u $tmp/updated $tmp/fresh` || 'the texts differ';
	}
	is($diff, '', "$v: the updated extension's objects are identical to a fresh install's "
		  . '(diff: - updated, + fresh)');
}

unlike(slurp_file($node->logfile), qr/terminated by signal|PANIC|maintenance task \S+ failed/,
	'no crash and no failed task in the server log');
$node->stop;
done_testing();
