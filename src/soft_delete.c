/*
 * soft_delete.c — soft delete enforced by row-level security, and tenant
 * isolation.
 *
 * Owns:
 *  - the planner hook that turns a DELETE on a soft-delete table into an
 *    UPDATE of its deleted-at column, after the rewriter has applied the
 *    DELETE's row-level security policies.  The PlannedStmt keeps commandType
 *    CMD_DELETE (so the command tag says DELETE n, SPI says SPI_OK_DELETE and
 *    the required permission stays DELETE) while its ModifyTable updates;
 *  - the guard trigger (refuses a DELETE that reached the table unconverted:
 *    this library was not loaded, or a foreign key cascades from a table
 *    without soft delete; and TRUNCATE) and the cascade trigger (soft delete
 *    and restore of ON DELETE CASCADE children that have soft delete on);
 *  - apicore.soft_delete_enable/configure/disable/restore/purge,
 *    apicore.tenant_isolation_enable and the archive/purge maintenance task;
 *  - settings apicore.allow_truncate and apicore.soft_delete_batch_size.
 *
 * State lives in the catalogs, so the relcache carries it to every backend:
 * a soft-delete table is one with the trigger "apicore_soft_delete", whose
 * argument names the column.  Creating or dropping that trigger invalidates
 * the table's relcache entry, and with it every cached plan that touches it.
 * apicore.soft_delete_settings records what enable changed, for disable and
 * for the maintenance task; every value read back from it is checked against
 * its table before use.
 *
 * Identities (all switches through ApicoreBecome, so SQL run under them
 * resolves nothing the caller controls, and that SQL still qualifies its
 * operators): DDL on a table runs as its owner, the cascade trigger on a
 * parent is made and dropped as the parent's owner, restore/purge and the
 * cascade run as the (child) table's owner past row-level security, settings
 * rows are written as the settings table's owner, and the maintenance task
 * archives and purges each table as its owner, never as the worker's
 * superuser.  The tenant a policy compares with in modes 'token' and 'role'
 * comes from tenant.c.
 */
#include "postgres.h"

#include <ctype.h>

#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_index.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "optimizer/planner.h"
#include "parser/parser.h"
#include "parser/parsetree.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "apicore.h"

/* Names of what enable creates on a table; the guard trigger is the marker. */
#define GUARD_TRIGGER		"apicore_soft_delete"
#define TRUNCATE_TRIGGER	"apicore_soft_delete_truncate"
#define CASCADE_TRIGGER_FMT "apicore_soft_delete_cascade_%u"
#define HIDE_POLICY			SOFT_DELETE_HIDE_POLICY
#define PERMIT_POLICY		"apicore_permit_all"
#define TENANT_POLICY		"apicore_tenant_isolation"
#define ADMIN_ROLE			"apicore_soft_delete_admin"
#define DEFAULT_TENANT_SETTING "app.current_tenant"
#define ARCHIVE_SUFFIX		"_archive"
/* holds a replaced unique constraint's name (soft_delete_upsert.c) */
#define NAME_KEEPER			"apicore._soft_delete_constraint_name()"

/* SQL: c is a cascading foreign key of another table that references $1 */
#define CHILD_FK_FILTER \
	"c.contype OPERATOR(pg_catalog.=) 'f'::pg_catalog.\"char\" " \
	"AND c.confrelid OPERATOR(pg_catalog.=) $1 " \
	"AND c.confdeltype OPERATOR(pg_catalog.=) 'c'::pg_catalog.\"char\" " \
	"AND c.conrelid OPERATOR(pg_catalog.<>) $1 "

/* Settings */
static bool allow_truncate = false;
static int	soft_delete_batch_size = 1000;

static planner_hook_type prev_planner_hook = NULL;

/*
 * > 0 while apicore itself hard-deletes (purge, archival): the planner hook
 * leaves DELETEs alone and the guard trigger lets them through, so the
 * foreign keys' own ON DELETE CASCADE removes children for real.
 */
static int	hard_delete_depth = 0;

/*
 * > 0 while the cascade trigger soft-deletes children.  It runs past RLS as
 * the child's owner, as foreign keys' own actions do; any other DELETE
 * planned in such a "no force RLS" context is a foreign key's ON DELETE
 * CASCADE from a parent without soft delete, which must not soft-mark rows
 * whose parent is gone: it is left unconverted, for the guard to refuse.
 */
static int	cascade_depth = 0;

/* The table a SQL function works on, resolved and checked once. */
typedef struct SoftDeleteTable
{
	Oid			relid;
	Oid			owner;
	char	   *qualname;		/* schema.table, quoted */
	char	   *relname;
	char	   *nspname;
} SoftDeleteTable;

/* The primary key of a table, for matching the pk jsonb argument. */
typedef struct PrimaryKey
{
	int			ncolumns;
	char	   *names[INDEX_MAX_KEYS];
	char	   *types[INDEX_MAX_KEYS];	/* the type, schema-qualified, with typmod */
	char	   *equals[INDEX_MAX_KEYS]; /* its equality, OPERATOR(schema.=) */
} PrimaryKey;

PG_FUNCTION_INFO_V1(apicore_soft_delete_enable);
PG_FUNCTION_INFO_V1(apicore_soft_delete_configure);
PG_FUNCTION_INFO_V1(apicore_soft_delete_disable);
PG_FUNCTION_INFO_V1(apicore_soft_delete_restore);
PG_FUNCTION_INFO_V1(apicore_soft_delete_purge);
PG_FUNCTION_INFO_V1(apicore_soft_delete_maintain);
PG_FUNCTION_INFO_V1(apicore_soft_delete_guard);
PG_FUNCTION_INFO_V1(apicore_soft_delete_cascade);
PG_FUNCTION_INFO_V1(apicore_soft_delete_constraint_name);
PG_FUNCTION_INFO_V1(apicore_tenant_isolation_enable);

/* used before their definitions */
static Oid ArchiveOf(Oid relid);
static Oid CheckArchive(Oid relid, Oid archive);

/* ---------- the planner hook ---------- */

/*
 * `attnum` if it is a column a soft delete can mark: the guard trigger is
 * only a marker any table owner could forge, and the planner would build an
 * UPDATE of a timestamptz into whatever column it names.
 */
static AttrNumber
UsableColumn(Relation rel, AttrNumber attnum)
{
	Form_pg_attribute att;

	if (attnum <= 0 || attnum > RelationGetNumberOfAttributes(rel))
		return InvalidAttrNumber;
	att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
	if (att->attisdropped || att->atttypid != TIMESTAMPTZOID || att->attgenerated)
		return InvalidAttrNumber;
	return attnum;
}

/*
 * The deleted-at column of a soft-delete table, or InvalidAttrNumber.  Read
 * from the relcache's trigger list, so it costs no catalog access per query.
 */
AttrNumber
SoftDeleteColumnOf(Oid relid)
{
	Relation	rel = RelationIdGetRelation(relid);
	AttrNumber	attnum = InvalidAttrNumber;

	if (!RelationIsValid(rel))
		return InvalidAttrNumber;
	if (rel->trigdesc != NULL)
	{
		for (int i = 0; i < rel->trigdesc->numtriggers; i++)
		{
			Trigger    *trigger = &rel->trigdesc->triggers[i];

			if (trigger->tgnargs == 1 && strcmp(trigger->tgname, GUARD_TRIGGER) == 0)
			{
				attnum = UsableColumn(rel, get_attnum(relid, trigger->tgargs[0]));
				break;
			}
		}
	}
	RelationClose(rel);
	return attnum;
}

/*
 * MERGE ... WHEN MATCHED THEN DELETE is not a DELETE query: its delete
 * action would remove rows for real, so refuse it on a soft-delete table.
 */
static void
RefuseMergeDelete(Query *query)
{
	RangeTblEntry *rte = rt_fetch(query->resultRelation, query->rtable);
	ListCell   *lc;

	if (SoftDeleteColumnOf(rte->relid) == InvalidAttrNumber)
		return;
	foreach(lc, query->mergeActionList)
	{
		MergeAction *action = lfirst(lc);

		if (action->commandType == CMD_DELETE)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("apicore: MERGE ... THEN DELETE is not supported on soft-delete table \"%s\"",
							get_rel_name(rte->relid)),
					 errhint("Run a DELETE for the matched rows; apicore turns it into a soft delete.")));
	}
}

/*
 * Turn DELETE into "UPDATE SET col = now() WHERE ... AND col IS NULL".  The
 * rewriter already added the DELETE's RLS quals, so no UPDATE policy or
 * new-row check applies; requiredPerms stays ACL_DELETE.
 */
static bool
ConvertDeleteToMark(Query *query)
{
	RangeTblEntry *rte = rt_fetch(query->resultRelation, query->rtable);
	AttrNumber	attnum = SoftDeleteColumnOf(rte->relid);
	Expr	   *marked_at;
	NullTest   *still_live;

	if (attnum == InvalidAttrNumber)
		return false;

	marked_at = (Expr *) makeFuncExpr(F_NOW, TIMESTAMPTZOID, NIL, InvalidOid,
									  InvalidOid, COERCE_EXPLICIT_CALL);
	still_live = makeNode(NullTest);
	still_live->arg = (Expr *) makeVar(query->resultRelation, attnum,
									   TIMESTAMPTZOID, -1, InvalidOid, 0);
	still_live->nulltesttype = IS_NULL;
	still_live->argisrow = false;
	still_live->location = -1;

	query->commandType = CMD_UPDATE;
	query->targetList = list_make1(makeTargetEntry(marked_at, attnum,
												   get_attname(rte->relid, attnum, false),
												   false));
	/* the hiding policy already says so, unless RLS does not apply (BYPASSRLS) */
	if (!list_member(rte->securityQuals, still_live))
		query->jointree->quals = make_and_qual(query->jointree->quals, (Node *) still_live);
	ApicoreSetUpdatedCols(query, rte, bms_make_singleton(attnum - FirstLowInvalidHeapAttributeNumber));
	return true;
}

/* Convert soft deletes in `query` and its WITH queries; true if the top level was. */
static bool
ConvertSoftDeletes(Query *query)
{
	ListCell   *lc;

	foreach(lc, query->cteList)
	{
		CommonTableExpr *cte = lfirst(lc);

		if (IsA(cte->ctequery, Query))
			(void) ConvertSoftDeletes((Query *) cte->ctequery);
	}
	if (query->commandType == CMD_MERGE)
		RefuseMergeDelete(query);
	if (query->commandType == CMD_INSERT)
		SoftDeletePrepareUpsert(query);
	if (query->commandType != CMD_DELETE)
		return false;
	return ConvertDeleteToMark(query);
}

static PlannedStmt *
SoftDeletePlanner(Query *parse, const char *query_string, int cursorOptions,
				  ParamListInfo boundParams)
{
	bool		converted = false;
	PlannedStmt *stmt;

	if (hard_delete_depth == 0 && (cascade_depth > 0 || !InNoForceRLSOperation()))
		converted = ConvertSoftDeletes(parse);
	if (prev_planner_hook)
		stmt = prev_planner_hook(parse, query_string, cursorOptions, boundParams);
	else
		stmt = standard_planner(parse, query_string, cursorOptions, boundParams);
	/* the client asked for a DELETE: tag, SPI result and ROW_COUNT say so */
	if (converted)
		stmt->commandType = CMD_DELETE;
	return stmt;
}

void
SoftDeleteInit(void)
{
	DefineCustomBoolVariable("apicore.allow_truncate",
							 "Allows TRUNCATE on soft-delete tables.",
							 "TRUNCATE removes every row for real, deleted or not.",
							 &allow_truncate, false, PGC_USERSET, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("apicore.soft_delete_batch_size",
							"Rows archived or purged per table per maintenance run.",
							NULL, &soft_delete_batch_size, 1000, 1, 1000000,
							PGC_USERSET, 0, NULL, NULL, NULL);

	prev_planner_hook = planner_hook;
	planner_hook = SoftDeletePlanner;
}

/* ---------- helpers for the SQL functions ---------- */

/* Run one statement (SPI connected); returns the rows it processed. */
static uint64
RunSql(const char *sql, int nargs, Oid *types, Datum *values)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0);

	if (rc < 0)
		elog(ERROR, "apicore: SPI error %d running: %s", rc, sql);
	return SPI_processed;
}

static uint64
RunSqlf(const char *fmt,...) pg_attribute_printf(1, 2);

static uint64
RunSqlf(const char *fmt,...)
{
	StringInfoData sql;

	initStringInfo(&sql);
	for (;;)
	{
		va_list		args;
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(&sql, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&sql, needed);
	}
	return RunSql(sql.data, 0, NULL, NULL);
}

/* First column of the first row of a query, or NULL. */
static char *
QueryText(const char *sql, int nargs, Oid *types, Datum *values)
{
	RunSql(sql, nargs, types, values);
	if (SPI_processed == 0)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/* Run a query whose only parameter, $1, is the table's OID. */
static uint64
RunSqlForTable(const char *sql, Oid relid)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(relid)};

	return RunSql(sql, 1, types, values);
}

/*
 * Run `query` ($1 = the table's OID, $2 = `other`), whose rows are SQL
 * statements built with format() so that the server quotes the names, then
 * run each of them in order.
 */
static void
RunGeneratedStatements(const char *query, Oid relid, Oid other)
{
	Oid			types[2] = {OIDOID, OIDOID};
	Datum		values[2] = {ObjectIdGetDatum(relid), ObjectIdGetDatum(other)};
	List	   *statements = NIL;
	ListCell   *lc;

	RunSql(query, OidIsValid(other) ? 2 : 1, types, values);
	for (uint64 i = 0; i < SPI_processed; i++)
		statements = lappend(statements, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
	foreach(lc, statements)
		RunSql((char *) lfirst(lc), 0, NULL, NULL);
}

static void
RequireArgument(FunctionCallInfo fcinfo, int argno, const char *name, const char *hint)
{
	ApicoreRequireArg(fcinfo, argno, "apicore: ", name, hint);
}

static char *
QualifiedName(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
									  get_rel_name(relid));
}

/*
 * A type as SQL spells it, with its typmod, schema-qualified whatever the
 * search_path: the name is resolved later as another role.
 */
static char *
TypeSql(Oid type, int32 typmod)
{
	return format_type_extended(type, typmod,
								FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY);
}

static char *
ColumnType(Oid relid, AttrNumber attnum)
{
	Oid			type;
	int32		typmod;
	Oid			collation;

	get_atttypetypmodcoll(relid, attnum, &type, &typmod, &collation);
	return TypeSql(type, typmod);
}

/* "OPERATOR(schema.name)": operator `opno` spelled so no search_path can change it. */
static char *
OperatorSql(Oid opno)
{
	HeapTuple	tuple = SearchSysCache1(OPEROID, ObjectIdGetDatum(opno));
	Form_pg_operator op;
	char	   *sql;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "apicore: cache lookup failed for operator %u", opno);
	op = (Form_pg_operator) GETSTRUCT(tuple);
	sql = psprintf("OPERATOR(%s.%s)", quote_identifier(get_namespace_name(op->oprnamespace)),
				   NameStr(op->oprname));
	ReleaseSysCache(tuple);
	return sql;
}

/* The equality of `type`'s default btree or hash opclass, as OperatorSql. */
static char *
EqualitySql(Oid type, const char *column)
{
	TypeCacheEntry *entry = lookup_type_cache(type, TYPECACHE_EQ_OPR);

	if (!OidIsValid(entry->eq_opr))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("apicore: column \"%s\" is of type %s, which has no default equality operator",
						column, format_type_be(type)),
				 errhint("Use a key column type with a default btree or hash operator class.")));
	return OperatorSql(entry->eq_opr);
}

/* The table a foreign key references. */
static Oid
ConstraintParent(Oid conoid)
{
	HeapTuple	tuple = SearchSysCache1(CONSTROID, ObjectIdGetDatum(conoid));
	Oid			parent;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "apicore: cache lookup failed for constraint %u", conoid);
	parent = ((Form_pg_constraint) GETSTRUCT(tuple))->confrelid;
	ReleaseSysCache(tuple);
	return parent;
}

/* apicore.soft_delete_settings, owned by whoever installed the extension. */
static Oid
SettingsOwner(void)
{
	return ApicoreRelationOwner(RangeVarGetRelid(makeRangeVar("apicore", "soft_delete_settings", -1),
												 NoLock, false));
}

/*
 * Resolve `tbl`: a plain table (not partitioned, not in an inheritance
 * tree), locked in `lockmode`.
 */
static SoftDeleteTable
OpenTarget(Oid relid, LOCKMODE lockmode)
{
	SoftDeleteTable t;
	char		relkind;

	LockRelationOid(relid, lockmode);
	relkind = get_rel_relkind(relid);
	if (relkind == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("apicore: tbl: table with OID %u does not exist", relid)));
	if (relkind == RELKIND_PARTITIONED_TABLE || get_rel_relispartition(relid) ||
		has_superclass(relid) || has_subclass(relid))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("apicore: tbl: \"%s\" is partitioned or in an inheritance tree, which soft delete does not support",
						get_rel_name(relid)),
				 errhint("Use a plain table.")));
	if (relkind != RELKIND_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("apicore: tbl: \"%s\" is not a table", get_rel_name(relid)),
				 errhint("Pass the table a view or foreign table reads from.")));

	t.relid = relid;
	t.owner = ApicoreRelationOwner(relid);
	t.relname = get_rel_name(relid);
	t.nspname = get_namespace_name(get_rel_namespace(relid));
	t.qualname = quote_qualified_identifier(t.nspname, t.relname);
	return t;
}

static void
RequireOwner(SoftDeleteTable *t)
{
	if (!ApicoreRelationOwnercheck(t->relid, GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("apicore: tbl: must be owner of table \"%s\"", t->relname),
				 errhint("Run this as the table's owner.")));
}

/* restore and purge: the table's owner or a member of apicore_soft_delete_admin */
static void
RequireAdmin(SoftDeleteTable *t)
{
	Oid			admin = get_role_oid(ADMIN_ROLE, true);

	if (ApicoreRelationOwnercheck(t->relid, GetUserId()))
		return;
	if (OidIsValid(admin) && has_privs_of_role(GetUserId(), admin))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("apicore: permission denied to restore or purge rows of \"%s\"", t->relname),
			 errhint("GRANT %s TO the role, or run this as the table's owner.", ADMIN_ROLE)));
}

static void
RequireSoftDelete(SoftDeleteTable *t, AttrNumber attnum)
{
	if (attnum == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("apicore: tbl: soft delete is not enabled on table \"%s\"", t->relname),
				 errhint("Call apicore.soft_delete_enable('%s') first.", t->qualname)));
}

static PrimaryKey
PrimaryKeyOf(SoftDeleteTable *t)
{
	Relation	rel = table_open(t->relid, NoLock);
	Oid			pkindex = ApicorePrimaryKeyIndex(rel);
	PrimaryKey	pk;
	HeapTuple	tuple;
	Form_pg_index index;

	if (!OidIsValid(pkindex))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apicore: tbl: table \"%s\" has no primary key", t->relname),
				 errhint("ALTER TABLE %s ADD PRIMARY KEY (...) first.", t->qualname)));
	tuple = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(pkindex));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "apicore: cache lookup failed for index %u", pkindex);
	index = (Form_pg_index) GETSTRUCT(tuple);
	pk.ncolumns = index->indnkeyatts;
	for (int i = 0; i < pk.ncolumns; i++)
	{
		Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel),
											  index->indkey.values[i] - 1);

		pk.names[i] = pstrdup(NameStr(att->attname));
		pk.types[i] = TypeSql(att->atttypid, att->atttypmod);
		pk.equals[i] = EqualitySql(att->atttypid, pk.names[i]);
	}
	ReleaseSysCache(tuple);
	table_close(rel, NoLock);
	return pk;
}

/* The primary key columns, quoted and comma separated. */
static char *
PrimaryKeyList(PrimaryKey *pk)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < pk->ncolumns; i++)
		appendStringInfo(&buf, "%s%s", i ? ", " : "", quote_identifier(pk->names[i]));
	return buf.data;
}

static char *
PrimaryKeyExample(PrimaryKey *pk)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (int i = 0; i < pk->ncolumns; i++)
		appendStringInfo(&buf, "%s\"%s\": ...", i ? ", " : "", pk->names[i]);
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/*
 * Check that `key` names exactly the primary key's columns, none null, and
 * return "col = ($1->>'col')::type AND ..." to find the row with it.
 */
static char *
PrimaryKeyMatch(PrimaryKey *pk, Jsonb *key, const char *relname)
{
	StringInfoData where;
	bool		fits = JB_ROOT_IS_OBJECT(key) && !JB_ROOT_IS_SCALAR(key) &&
		JB_ROOT_COUNT(key) == (uint32) pk->ncolumns;

	initStringInfo(&where);
	for (int i = 0; fits && i < pk->ncolumns; i++)
	{
		JsonbValue	name;
		JsonbValue *value;

		name.type = jbvString;
		name.val.string.val = pk->names[i];
		name.val.string.len = strlen(pk->names[i]);
		value = findJsonbValueFromContainer(&key->root, JB_FOBJECT, &name);
		if (value == NULL || value->type == jbvNull)
			fits = false;
		appendStringInfo(&where, "%s%s %s ($1 OPERATOR(pg_catalog.->>) %s)::%s",
						 i ? " AND " : "", quote_identifier(pk->names[i]), pk->equals[i],
						 quote_literal_cstr(pk->names[i]), pk->types[i]);
	}
	if (!fits)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("apicore: pk must be an object holding exactly the primary key of \"%s\" (%s), none of it null",
						relname, PrimaryKeyList(pk)),
				 errhint("Pass %s.", PrimaryKeyExample(pk))));
	return where.data;
}

/*
 * Columns of `relid` (not dropped; generated ones only if asked) that
 * `other` also has, as a column list; *select_list gets the same list with
 * `nulled` replaced by NULL.
 */
static char *
SharedColumns(Oid relid, Oid other, bool with_generated, const char *nulled,
			  char **select_list)
{
	Relation	rel = table_open(relid, NoLock);
	TupleDesc	desc = RelationGetDescr(rel);
	StringInfoData columns;
	StringInfoData selected;

	initStringInfo(&columns);
	initStringInfo(&selected);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *name = NameStr(att->attname);
		const char *sep = columns.len ? ", " : "";

		if (att->attisdropped || (att->attgenerated && !with_generated))
			continue;
		if (get_attnum(other, name) == InvalidAttrNumber)
			continue;
		appendStringInfo(&columns, "%s%s", sep, quote_identifier(name));
		appendStringInfo(&selected, "%s%s", sep,
						 nulled && strcmp(name, nulled) == 0 ? "NULL" : quote_identifier(name));
	}
	table_close(rel, NoLock);
	if (select_list)
		*select_list = selected.data;
	return columns.data;
}

/* Whether the table has a policy with this name. */
static bool
HasPolicy(Oid relid, const char *name)
{
	Oid			types[2] = {OIDOID, TEXTOID};
	Datum		values[2] = {ObjectIdGetDatum(relid), CStringGetTextDatum(name)};

	return RunSql("SELECT 1 FROM pg_catalog.pg_policy WHERE polrelid OPERATOR(pg_catalog.=) $1 "
				  "AND polname::pg_catalog.text OPERATOR(pg_catalog.=) $2",
				  2, types, values) > 0;
}

/*
 * Enable and force row-level security, so that the table's owner is subject
 * to it too.  With RLS on and no permissive policy nobody sees anything, so
 * a table that had no policy at all gets a permissive USING (true) one: the
 * restrictive policies apicore adds then decide.
 */
static void
ForceRowSecurity(SoftDeleteTable *t)
{
	if (RunSqlForTable("SELECT 1 FROM pg_catalog.pg_policy WHERE polrelid OPERATOR(pg_catalog.=) $1",
					   t->relid) == 0)
		RunSqlf("CREATE POLICY %s ON %s AS PERMISSIVE FOR ALL TO PUBLIC USING (true) WITH CHECK (true)",
				PERMIT_POLICY, t->qualname);
	RunSqlf("ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY", t->qualname);
}

/* ---------- soft_delete_enable ---------- */

/*
 * Archival and purge look for rows deleted before a point in time: an index
 * on the column over deleted rows only (live rows, NULL, stay out of it).
 */
static void
EnsureDeletedIndex(SoftDeleteTable *t, const char *column)
{
	Oid			types[3] = {OIDOID, TEXTOID, TEXTOID};
	Datum		values[3] = {ObjectIdGetDatum(t->relid), CStringGetTextDatum(column),
	CStringGetTextDatum(psprintf("(%s IS NOT NULL)", quote_identifier(column)))};

	if (RunSql("SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a "
			   "  ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid "
			   " AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0] "
			   "WHERE i.indrelid OPERATOR(pg_catalog.=) $1 "
			   "  AND a.attname::pg_catalog.text OPERATOR(pg_catalog.=) $2 "
			   "  AND pg_catalog.pg_get_expr(i.indpred, i.indrelid) OPERATOR(pg_catalog.=) $3",
			   3, types, values) > 0)
		return;
	RunSqlf("CREATE INDEX ON %s (%s) WHERE %s IS NOT NULL", t->qualname,
			quote_identifier(column), quote_identifier(column));
}

/*
 * A soft-delete table whose ON DELETE CASCADE parent lacks soft delete would
 * be soft-marked when the parent row is hard-deleted, leaving a live-looking
 * orphan: refuse it.  Returns the cascading foreign keys (to add triggers).
 */
static List *
CascadeParents(SoftDeleteTable *t)
{
	List	   *constraints = NIL;

	RunSqlForTable("SELECT c.oid, c.confrelid::pg_catalog.regclass::pg_catalog.text, "
				   "EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g "
				   "        WHERE g.tgrelid OPERATOR(pg_catalog.=) c.confrelid "
				   "        AND g.tgname OPERATOR(pg_catalog.=) '" GUARD_TRIGGER "'::pg_catalog.name) "
				   "FROM pg_catalog.pg_constraint c "
				   "WHERE c.contype OPERATOR(pg_catalog.=) 'f'::pg_catalog.\"char\" "
				   "  AND c.conrelid OPERATOR(pg_catalog.=) $1 "
				   "  AND c.confdeltype OPERATOR(pg_catalog.=) 'c'::pg_catalog.\"char\" "
				   "  AND c.confrelid OPERATOR(pg_catalog.<>) $1",
				   t->relid);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		if (!DatumGetBool(SPI_getbinval(row, desc, 3, &isnull)))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("apicore: tbl: \"%s\" has an ON DELETE CASCADE foreign key to %s, which does not have soft delete",
							t->relname, SPI_getvalue(row, desc, 2)),
					 errhint("Enable soft delete on %s first, or make the foreign key ON DELETE RESTRICT.",
							 SPI_getvalue(row, desc, 2))));
		constraints = lappend_oid(constraints, DatumGetObjectId(SPI_getbinval(row, desc, 1, &isnull)));
	}
	return constraints;
}

/* The parent's AFTER UPDATE trigger that soft-deletes this child's rows. */
static void
CreateCascadeTriggers(SoftDeleteTable *t, List *constraints)
{
	ListCell   *lc;

	foreach(lc, constraints)
	{
		Oid			conoid = lfirst_oid(lc);
		Oid			parent = ConstraintParent(conoid);
		AttrNumber	parent_column = SoftDeleteColumnOf(parent);
		const char *column = quote_identifier(get_attname(parent, parent_column, false));
		char		name[NAMEDATALEN];

		ApicoreIdentity id;

		/* as the parent's owner, as PostgreSQL makes a foreign key's triggers */
		snprintf(name, sizeof(name), CASCADE_TRIGGER_FMT, conoid);
		ApicoreBecome(&id, ApicoreRelationOwner(parent), 0);
		RunSqlf("CREATE TRIGGER %s AFTER UPDATE OF %s ON %s FOR EACH ROW "
				"WHEN ((OLD.%s IS NULL) OPERATOR(pg_catalog.<>) (NEW.%s IS NULL)) "
				"EXECUTE FUNCTION apicore._soft_delete_cascade('%u')",
				name, column, QualifiedName(parent), column, column, conoid);
		ApicoreRestore(&id);
	}
}

/*
 * A live row has NULL in the column: a NOT NULL column or a default would
 * make every new row a deleted one.
 */
static void
RequireNullableWithoutDefault(SoftDeleteTable *t, const char *column, AttrNumber attnum)
{
	Relation	rel = table_open(t->relid, NoLock);
	Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
	bool		unusable = att->attnotnull || att->atthasdef || att->attgenerated;

	table_close(rel, NoLock);
	if (unusable)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_COLUMN_DEFINITION),
				 errmsg("apicore: column_name: column \"%s\" of \"%s\" must be nullable, without a default",
						column, t->relname),
				 errhint("NULL marks a live row: ALTER the column DROP NOT NULL / DROP DEFAULT, or pass another column_name.")));
}

/* Add the deleted-at column, or check the one that is there. */
static void
PrepareColumn(SoftDeleteTable *t, const char *column)
{
	AttrNumber	attnum = get_attnum(t->relid, column);
	Oid			type;

	if (attnum == InvalidAttrNumber)
	{
		RunSqlf("ALTER TABLE %s ADD COLUMN %s timestamptz", t->qualname, quote_identifier(column));
		return;
	}
	type = get_atttype(t->relid, attnum);
	if (type != TIMESTAMPTZOID || attnum < 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("apicore: column_name: column \"%s\" of \"%s\" is %s, not timestamptz",
						column, t->relname, format_type_be(type)),
				 errhint("ALTER the column to timestamptz, or pass another column_name (apicore adds it).")));
	RequireNullableWithoutDefault(t, column, attnum);
}

/*
 * A window is positive and at most MAX_WINDOW_YEARS in each of its fields,
 * so now() minus it is always a valid timestamp.  Checked when a window is
 * set and again when a stored one is used.
 */
#define MAX_WINDOW_YEARS 1000

static void
CheckWindow(const Interval *window, const char *name, const char *relname)
{
	Interval	zero = {0};
	int64		max_days = (int64) MAX_WINDOW_YEARS * 366;

	if (DatumGetBool(DirectFunctionCall2(interval_le, IntervalPGetDatum(window),
										 IntervalPGetDatum(&zero))))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("apicore: %s%s%s must be a positive interval", name,
						relname ? " of " : "", relname ? relname : ""),
				 errhint("Pass e.g. '30 days', or NULL to keep deleted rows in the table.")));
	if (window->month > MAX_WINDOW_YEARS * MONTHS_PER_YEAR ||
		window->month < -MAX_WINDOW_YEARS * MONTHS_PER_YEAR ||
		window->day > max_days || window->day < -max_days ||
		window->time > max_days * USECS_PER_DAY || window->time < -max_days * USECS_PER_DAY)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_FIELD_OVERFLOW),
				 errmsg("apicore: %s%s%s is out of range", name,
						relname ? " of " : "", relname ? relname : ""),
				 errdetail("Each field of a window is at most %d years.", MAX_WINDOW_YEARS),
				 errhint("Pass a shorter interval, e.g. '10 years'.")));
}

/* archive_after and purge_after are arguments `first` and `first` + 1. */
static void
CheckIntervals(FunctionCallInfo fcinfo, int first)
{
	Interval   *archive_after = PG_ARGISNULL(first) ? NULL : PG_GETARG_INTERVAL_P(first);
	Interval   *purge_after = PG_ARGISNULL(first + 1) ? NULL : PG_GETARG_INTERVAL_P(first + 1);

	if (archive_after)
		CheckWindow(archive_after, "archive_after", NULL);
	if (purge_after)
		CheckWindow(purge_after, "purge_after", NULL);
	if (archive_after && purge_after &&
		DatumGetBool(DirectFunctionCall2(interval_le, IntervalPGetDatum(purge_after),
										 IntervalPGetDatum(archive_after))))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("apicore: purge_after must be longer than archive_after"),
				 errhint("Rows are archived first and purged later; pass NULL for archive_after to purge straight from the table.")));
}

/*
 * <table>_archive: the same columns, the same primary key, and forced RLS
 * without a policy, so that nobody but apicore and BYPASSRLS roles reads it.
 */
static Oid
CreateArchive(SoftDeleteTable *t, PrimaryKey *pk, const char *column)
{
	char		name[NAMEDATALEN];
	char	   *qualname;

	if (strlen(t->relname) + strlen(ARCHIVE_SUFFIX) >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("apicore: tbl: \"%s%s\" would be too long a name for the archive table",
						t->relname, ARCHIVE_SUFFIX),
				 errhint("Rename the table, or pass archive_after NULL.")));
	snprintf(name, sizeof(name), "%s%s", t->relname, ARCHIVE_SUFFIX);
	if (OidIsValid(get_relname_relid(name, get_rel_namespace(t->relid))))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_TABLE),
				 errmsg("apicore: archive table \"%s\" already exists", name),
				 errhint("Drop or rename it, or pass archive_after NULL.")));
	qualname = quote_qualified_identifier(t->nspname, name);
	RunSqlf("CREATE TABLE %s (LIKE %s)", qualname, t->qualname);
	RunSqlf("ALTER TABLE %s ADD PRIMARY KEY (%s)", qualname, PrimaryKeyList(pk));
	RunSqlf("CREATE INDEX ON %s (%s)", qualname, quote_identifier(column));
	RunSqlf("ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY", qualname);
	RunSqlf("REVOKE ALL ON %s FROM PUBLIC", qualname);
	return get_relname_relid(name, get_rel_namespace(t->relid));
}

/*
 * Turn each unique constraint and unique index into a partial unique index
 * on live rows, so a deleted row's value can be used again.  One a foreign
 * key depends on must stay: it is kept and reported.  A constraint's name
 * stays too, held by a constraint trigger that never fires, for
 * ON CONFLICT ON CONSTRAINT (soft_delete_upsert.c says why); under the SQL
 * of 0.1.0, which lacks the trigger's function, the update adds it later.  Returns the jsonb
 * array [{"index": name, "restore": sql}] that disable runs; *kept gets a
 * jsonb array of the kept constraints' names.
 */
static char *
ConvertUniqueConstraints(SoftDeleteTable *t, const char *column, char **kept)
{
	Oid			types[3] = {OIDOID, TEXTOID, TEXTOID};
	Datum		values[3] = {ObjectIdGetDatum(t->relid), CStringGetTextDatum(column),
	CStringGetTextDatum(t->qualname)};
	StringInfoData converted;
	StringInfoData kept_names;
	List	   *statements = NIL;
	ListCell   *lc;

	RunSql("SELECT coalesce(c.conname, r.relname), "
		   "       EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f "
		   "               WHERE f.contype OPERATOR(pg_catalog.=) 'f'::pg_catalog.\"char\" "
		   "                 AND f.conindid OPERATOR(pg_catalog.=) i.indexrelid), "
		   "       CASE WHEN c.oid IS NULL "
		   "            THEN pg_catalog.format('DROP INDEX %s', i.indexrelid::pg_catalog.regclass) "
		   "            ELSE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', $3, c.conname) END, "
		   "       pg_catalog.format('%s WHERE %I IS NULL', pg_catalog.pg_get_indexdef(i.indexrelid), $2), "
		   "       pg_catalog.jsonb_build_object('index', pg_catalog.format('%I.%I', n.nspname, r.relname), 'restore', "
		   "         CASE WHEN c.oid IS NULL THEN pg_catalog.pg_get_indexdef(i.indexrelid) "
		   "              ELSE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s', $3, "
		   "                     c.conname, pg_catalog.pg_get_constraintdef(c.oid)) END)::pg_catalog.text, "
		   "       pg_catalog.to_jsonb(coalesce(c.conname, r.relname)::pg_catalog.text)::pg_catalog.text, "
		   "       CASE WHEN c.oid IS NOT NULL "
		   "             AND pg_catalog.to_regprocedure('" NAME_KEEPER "') IS NOT NULL "
		   "       THEN pg_catalog.format("
		   "         'CREATE CONSTRAINT TRIGGER %I AFTER INSERT ON %s NOT DEFERRABLE "
		   "          FOR EACH ROW WHEN (false) EXECUTE FUNCTION " NAME_KEEPER "', c.conname, $3) END "
		   "FROM pg_catalog.pg_index i "
		   "JOIN pg_catalog.pg_class r ON r.oid OPERATOR(pg_catalog.=) i.indexrelid "
		   "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) r.relnamespace "
		   "LEFT JOIN pg_catalog.pg_constraint c ON c.conindid OPERATOR(pg_catalog.=) i.indexrelid "
		   "     AND c.conrelid OPERATOR(pg_catalog.=) i.indrelid "
		   "     AND c.contype OPERATOR(pg_catalog.=) 'u'::pg_catalog.\"char\" "
		   "WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND i.indisunique AND NOT i.indisprimary "
		   "  AND i.indpred IS NULL "
		   "ORDER BY 1",
		   3, types, values);
	initStringInfo(&converted);
	initStringInfo(&kept_names);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		StringInfo	record = &converted;

		if (DatumGetBool(SPI_getbinval(row, desc, 2, &isnull)))
		{
			ereport(WARNING,
					(errmsg("apicore: unique constraint \"%s\" of \"%s\" is kept: a foreign key depends on it",
							SPI_getvalue(row, desc, 1), t->relname),
					 errdetail("A deleted row's value in it cannot be used again until the row is purged."),
					 errhint("apicore.soft_delete_tables lists it under kept_unique.")));
			appendStringInfo(&kept_names, "%s%s", kept_names.len ? ", " : "", SPI_getvalue(row, desc, 6));
			continue;
		}
		statements = lappend(statements, SPI_getvalue(row, desc, 3));
		statements = lappend(statements, SPI_getvalue(row, desc, 4));
		if (SPI_getvalue(row, desc, 7) != NULL)
			statements = lappend(statements, SPI_getvalue(row, desc, 7));
		appendStringInfo(record, "%s%s", record->len ? ", " : "", SPI_getvalue(row, desc, 5));
	}
	foreach(lc, statements)
		RunSql((char *) lfirst(lc), 0, NULL, NULL);
	*kept = psprintf("[%s]", kept_names.data);
	return psprintf("[%s]", converted.data);
}

/* WARNING about ON DELETE CASCADE children without soft delete: they stay. */
static void
ReportPlainChildren(SoftDeleteTable *t)
{
	RunSqlForTable("SELECT c.conrelid::pg_catalog.regclass::pg_catalog.text "
				   "FROM pg_catalog.pg_constraint c "
				   "WHERE " CHILD_FK_FILTER
				   "  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g "
				   "                  WHERE g.tgrelid OPERATOR(pg_catalog.=) c.conrelid "
				   "                  AND g.tgname OPERATOR(pg_catalog.=) '" GUARD_TRIGGER "'::pg_catalog.name)",
				   t->relid);
	for (uint64 i = 0; i < SPI_processed; i++)
		ereport(NOTICE,
				(errmsg("apicore: rows of %s that reference a soft-deleted row of \"%s\" stay as they are",
						SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1), t->relname),
				 errdetail("They are removed by their ON DELETE CASCADE when the row is purged or archived."),
				 errhint("Enable soft delete on that table too to soft-delete them with their parent.")));
}

static void
RecordSettings(SoftDeleteTable *t, FunctionCallInfo fcinfo, Oid archive,
			   const char *converted, const char *kept, bool rls_was_enabled, bool rls_was_forced)
{
	Oid			types[9] = {OIDOID, NAMEOID, INTERVALOID, INTERVALOID, OIDOID, JSONBOID,
	JSONBOID, BOOLOID, BOOLOID};
	Datum		values[9];
	char		nulls[9] = "         ";
	ApicoreIdentity id;

	values[0] = ObjectIdGetDatum(t->relid);
	values[1] = PG_GETARG_DATUM(1);
	values[2] = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
	values[3] = PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3);
	values[4] = ObjectIdGetDatum(archive);
	values[5] = DirectFunctionCall1(jsonb_in, CStringGetDatum(converted));
	values[6] = DirectFunctionCall1(jsonb_in, CStringGetDatum(kept));
	values[7] = BoolGetDatum(!rls_was_enabled);
	values[8] = BoolGetDatum(!rls_was_forced);
	nulls[2] = PG_ARGISNULL(2) ? 'n' : ' ';
	nulls[3] = PG_ARGISNULL(3) ? 'n' : ' ';
	nulls[4] = OidIsValid(archive) ? ' ' : 'n';

	/* the settings table belongs to the extension, not to the table's owner */
	ApicoreBecome(&id, SettingsOwner(), 0);
	if (SPI_execute_with_args("INSERT INTO apicore.soft_delete_settings "
							  "(tbl, column_name, archive_after, purge_after, archive_table, "
							  " converted_unique, kept_unique, rls_enabled_by_apicore, rls_forced_by_apicore) "
							  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
							  9, types, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "apicore: could not record soft delete settings");
	ApicoreRestore(&id);
}

/*
 * apicore.soft_delete_enable(tbl, column_name, archive_after, purge_after)
 */
Datum
apicore_soft_delete_enable(PG_FUNCTION_ARGS)
{
	SoftDeleteTable t;
	const char *column;
	PrimaryKey	pk;
	List	   *cascade_fks;
	Oid			archive = InvalidOid;
	char	   *converted;
	char	   *kept;
	Relation	rel;
	bool		rls_was_enabled;
	bool		rls_was_forced;
	ApicoreIdentity id;

	RequireArgument(fcinfo, 0, "tbl", "Pass the table, e.g. 'users'.");
	RequireArgument(fcinfo, 1, "column_name", "Pass the deleted-at column, e.g. 'deleted_at'.");
	t = OpenTarget(PG_GETARG_OID(0), AccessExclusiveLock);
	column = NameStr(*PG_GETARG_NAME(1));
	RequireOwner(&t);
	if (SoftDeleteColumnOf(t.relid) != InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("apicore: tbl: soft delete is already enabled on table \"%s\"", t.relname),
				 errhint("Change its windows with apicore.soft_delete_configure('%s', ...); to change the column, disable first.", t.qualname)));
	if (column[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("apicore: column_name must not be empty"),
				 errhint("Pass the deleted-at column, e.g. 'deleted_at'.")));
	CheckIntervals(fcinfo, 2);
	pk = PrimaryKeyOf(&t);

	rel = table_open(t.relid, NoLock);
	rls_was_enabled = rel->rd_rel->relrowsecurity;
	rls_was_forced = rel->rd_rel->relforcerowsecurity;
	table_close(rel, NoLock);

	/* the table's owner makes what enable adds: it owns the archive too */
	SPI_connect();
	ApicoreBecome(&id, t.owner, 0);
	cascade_fks = CascadeParents(&t);
	PrepareColumn(&t, column);
	if (!PG_ARGISNULL(2))
		archive = CreateArchive(&t, &pk, column);
	if (!PG_ARGISNULL(2) || !PG_ARGISNULL(3))
		EnsureDeletedIndex(&t, column);
	converted = ConvertUniqueConstraints(&t, column, &kept);
	ForceRowSecurity(&t);
	RunSqlf("CREATE POLICY %s ON %s AS RESTRICTIVE FOR ALL TO PUBLIC USING (%s IS NULL)",
			HIDE_POLICY, t.qualname, quote_identifier(column));
	RunSqlf("CREATE TRIGGER %s BEFORE DELETE ON %s FOR EACH ROW "
			"EXECUTE FUNCTION apicore._soft_delete_guard(%s)",
			GUARD_TRIGGER, t.qualname, quote_literal_cstr(column));
	RunSqlf("CREATE TRIGGER %s BEFORE TRUNCATE ON %s FOR EACH STATEMENT "
			"EXECUTE FUNCTION apicore._soft_delete_guard()",
			TRUNCATE_TRIGGER, t.qualname);
	CreateCascadeTriggers(&t, cascade_fks);
	ReportPlainChildren(&t);
	RecordSettings(&t, fcinfo, archive, converted, kept, rls_was_enabled, rls_was_forced);
	ApicoreRestore(&id);
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * apicore.soft_delete_configure(tbl, archive_after, purge_after): change the
 * archive and purge windows of a soft-delete table (NULL turns one off).
 * The archive table is created the first time it is needed.
 */
Datum
apicore_soft_delete_configure(PG_FUNCTION_ARGS)
{
	SoftDeleteTable t;
	AttrNumber	attnum;
	char	   *column;
	Oid			archive;
	Oid			types[4] = {OIDOID, INTERVALOID, INTERVALOID, OIDOID};
	Datum		values[4];
	char		nulls[4] = "    ";
	ApicoreIdentity owner;
	ApicoreIdentity id;

	RequireArgument(fcinfo, 0, "tbl", "Pass the table, e.g. 'users'.");
	t = OpenTarget(PG_GETARG_OID(0), AccessExclusiveLock);
	RequireOwner(&t);
	attnum = SoftDeleteColumnOf(t.relid);
	RequireSoftDelete(&t, attnum);
	column = get_attname(t.relid, attnum, false);
	CheckIntervals(fcinfo, 1);

	SPI_connect();
	ApicoreBecome(&owner, t.owner, 0);
	archive = ArchiveOf(t.relid);
	if (!PG_ARGISNULL(1) && !OidIsValid(archive))
	{
		PrimaryKey	pk = PrimaryKeyOf(&t);

		archive = CreateArchive(&t, &pk, column);
	}
	if (!PG_ARGISNULL(1) || !PG_ARGISNULL(2))
		EnsureDeletedIndex(&t, column);

	values[0] = ObjectIdGetDatum(t.relid);
	values[1] = PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1);
	values[2] = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
	values[3] = ObjectIdGetDatum(archive);
	nulls[1] = PG_ARGISNULL(1) ? 'n' : ' ';
	nulls[2] = PG_ARGISNULL(2) ? 'n' : ' ';
	nulls[3] = OidIsValid(archive) ? ' ' : 'n';
	ApicoreBecome(&id, SettingsOwner(), 0);
	if (SPI_execute_with_args("UPDATE apicore.soft_delete_settings SET archive_after = $2, "
							  "purge_after = $3, archive_table = $4 "
							  "WHERE tbl::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
							  4, types, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "apicore: could not record soft delete settings");
	ApicoreRestore(&id);
	ApicoreRestore(&owner);
	SPI_finish();
	PG_RETURN_VOID();
}

/* ---------- soft_delete_disable ---------- */

/* Disabling a parent under soft-delete children would orphan their cascade. */
static void
RefuseIfSoftDeleteChildren(SoftDeleteTable *t)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(t->relid)};
	char	   *child;

	child = QueryText("SELECT c.conrelid::pg_catalog.regclass::pg_catalog.text "
					  "FROM pg_catalog.pg_constraint c "
					  "WHERE " CHILD_FK_FILTER
					  "  AND EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g "
					  "              WHERE g.tgrelid OPERATOR(pg_catalog.=) c.conrelid "
					  "              AND g.tgname OPERATOR(pg_catalog.=) '" GUARD_TRIGGER "'::pg_catalog.name) "
					  "LIMIT 1",
					  1, types, values);
	if (child)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apicore: tbl: %s cascades its deletes from \"%s\" and has soft delete enabled",
						child, t->relname),
				 errhint("Call apicore.soft_delete_disable('%s') first.", child)));
}

/* Drop the cascade triggers this table's foreign keys put on their parents. */
static void
DropCascadeTriggers(SoftDeleteTable *t)
{
	List	   *statements = NIL;
	List	   *parents = NIL;
	ListCell   *ls;
	ListCell   *lp;

	RunSqlForTable("SELECT pg_catalog.format('DROP TRIGGER %I ON %s', g.tgname, "
				   "       g.tgrelid::pg_catalog.regclass), g.tgrelid "
				   "FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_trigger g "
				   "  ON g.tgrelid OPERATOR(pg_catalog.=) c.confrelid "
				   " AND g.tgname::pg_catalog.text OPERATOR(pg_catalog.=) "
				   "     pg_catalog.format('apicore_soft_delete_cascade_%s', c.oid) "
				   "WHERE c.contype OPERATOR(pg_catalog.=) 'f'::pg_catalog.\"char\" "
				   "  AND c.conrelid OPERATOR(pg_catalog.=) $1",
				   t->relid);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		statements = lappend(statements, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
		parents = lappend_oid(parents, DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
																	  SPI_tuptable->tupdesc, 2, &isnull)));
	}
	/* as the parent's owner, who owns the trigger enable made */
	forboth(ls, statements, lp, parents)
	{
		ApicoreIdentity id;

		ApicoreBecome(&id, ApicoreRelationOwner(lfirst_oid(lp)), 0);
		RunSql((char *) lfirst(ls), 0, NULL, NULL);
		ApicoreRestore(&id);
	}
}

/* A stored converted_unique entry that is not what enable writes. */
static void
RefuseStoredDdl(SoftDeleteTable *t, const char *what, const char *value)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("apicore: apicore.soft_delete_settings.converted_unique of \"%s\" holds %s: %s",
					t->relname, what, value ? value : "NULL"),
			 errhint("Restore the row from a backup, or remove the entry and recreate the unique constraint by hand.")));
}

/* The "index" of a converted_unique entry: a partial unique index on the table. */
static char *
ConvertedIndex(SoftDeleteTable *t, const char *name)
{
	List	   *names = name ? ApicoreQualifiedNameList(name) : NIL;
	Oid			index = list_length(names) == 2 ?
		RangeVarGetRelid(makeRangeVarFromNameList(names), NoLock, true) : InvalidOid;

	if (!OidIsValid(index) || get_rel_relkind(index) != RELKIND_INDEX ||
		IndexGetRelation(index, false) != t->relid)
		RefuseStoredDdl(t, "an index that is not one of the table's", name);
	return QualifiedName(index);
}

/*
 * The relation a restore statement names, schema-qualified: 0.1.0 stored
 * pg_get_indexdef under the caller's search_path, which may leave the table
 * unqualified, and these statements now run with search_path = pg_catalog.
 */
static char *
QualifyRestoreTarget(SoftDeleteTable *t, const char *sql, RangeVar *rv)
{
	const char *quoted = quote_identifier(t->relname);

	if (rv->schemaname != NULL || rv->catalogname != NULL)
		return pstrdup(sql);
	if (strcmp(rv->relname, t->relname) != 0 || rv->location < 0 ||
		strncmp(sql + rv->location, quoted, strlen(quoted)) != 0)
		RefuseStoredDdl(t, "a statement on another table", sql);
	return psprintf("%.*s%s%s", rv->location, sql, t->qualname,
					sql + rv->location + strlen(quoted));
}

/*
 * The "restore" of a converted_unique entry is run as DDL: accept exactly
 * what enable writes there, CREATE UNIQUE INDEX ... ON the table (no
 * predicate) or ALTER TABLE the table ADD CONSTRAINT ... UNIQUE.
 */
static char *
CheckedRestoreStatement(SoftDeleteTable *t, const char *sql)
{
	List	   *parsed = sql ? raw_parser(sql, RAW_PARSE_DEFAULT) : NIL;
	Node	   *stmt = list_length(parsed) == 1 ? linitial_node(RawStmt, parsed)->stmt : NULL;
	RangeVar   *rv = NULL;
	char	   *qualified;

	if (stmt && IsA(stmt, IndexStmt) && ((IndexStmt *) stmt)->unique &&
		((IndexStmt *) stmt)->whereClause == NULL && !((IndexStmt *) stmt)->concurrent)
		rv = ((IndexStmt *) stmt)->relation;
	else if (stmt && IsA(stmt, AlterTableStmt) &&
			 list_length(((AlterTableStmt *) stmt)->cmds) == 1)
	{
		AlterTableCmd *cmd = linitial(((AlterTableStmt *) stmt)->cmds);

		if (cmd->subtype == AT_AddConstraint && IsA(cmd->def, Constraint) &&
			((Constraint *) cmd->def)->contype == CONSTR_UNIQUE)
			rv = ((AlterTableStmt *) stmt)->relation;
	}
	if (rv == NULL)
		RefuseStoredDdl(t, "a statement that does not restore a unique constraint", sql);
	qualified = QualifyRestoreTarget(t, sql, rv);
	if (RangeVarGetRelid(rv->schemaname ? rv : makeRangeVar(t->nspname, rv->relname, -1),
						 NoLock, true) != t->relid)
		RefuseStoredDdl(t, "a statement on another table", sql);
	return qualified;
}

/* The triggers that held the constraints' names: the constraints take them back. */
static void
DropNameKeepers(SoftDeleteTable *t)
{
	RunGeneratedStatements("SELECT pg_catalog.format('DROP TRIGGER %I ON %s', g.tgname, "
						   "       g.tgrelid::pg_catalog.regclass) "
						   "FROM pg_catalog.pg_trigger g "
						   "WHERE g.tgrelid OPERATOR(pg_catalog.=) $1 "
						   "  AND g.tgfoid OPERATOR(pg_catalog.=) "
						   "      pg_catalog.to_regprocedure('" NAME_KEEPER "')::pg_catalog.oid",
						   t->relid, InvalidOid);
}

/*
 * Put the unique constraints back as they were.  Deleted rows that share a
 * value with another row make that fail with unique_violation, and the
 * whole disable rolls back.
 */
static void
RestoreUniqueConstraints(SoftDeleteTable *t, const char *converted)
{
	Oid			types[1] = {JSONBOID};
	Datum		values[1] = {DirectFunctionCall1(jsonb_in, CStringGetDatum(converted))};
	List	   *statements = NIL;
	ListCell   *lc;

	RunSql("SELECT e OPERATOR(pg_catalog.->>) 'index', e OPERATOR(pg_catalog.->>) 'restore' "
		   "FROM pg_catalog.jsonb_array_elements($1) e",
		   1, types, values);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		char	   *index = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		char	   *restore = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);

		/* stored text becomes DDL: only what enable itself would have written */
		statements = lappend(statements, psprintf("DROP INDEX %s", ConvertedIndex(t, index)));
		statements = lappend(statements, CheckedRestoreStatement(t, restore));
	}
	PG_TRY();
	{
		foreach(lc, statements)
			RunSql((char *) lfirst(lc), 0, NULL, NULL);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		if (geterrcode() != ERRCODE_UNIQUE_VIOLATION)
			PG_RE_THROW();
		edata = CopyErrorData();
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("apicore: cannot disable soft delete on \"%s\": deleted rows share unique values with other rows",
						t->relname),
				 errdetail("%s", edata->detail ? edata->detail : edata->message),
				 errhint("Purge those deleted rows with apicore.soft_delete_purge() first.")));
	}
	PG_END_TRY();
}

/*
 * Remove apicore's policies and give back the RLS flags it set, unless tenant
 * isolation still needs them.
 */
static void
RelaxRowSecurity(SoftDeleteTable *t, bool enabled_by_apicore, bool forced_by_apicore)
{
	RunSqlf("DROP POLICY IF EXISTS %s ON %s", HIDE_POLICY, t->qualname);
	if (HasPolicy(t->relid, TENANT_POLICY))
		return;
	RunSqlf("DROP POLICY IF EXISTS %s ON %s", PERMIT_POLICY, t->qualname);
	if (forced_by_apicore)
		RunSqlf("ALTER TABLE %s NO FORCE ROW LEVEL SECURITY", t->qualname);
	if (enabled_by_apicore)
		RunSqlf("ALTER TABLE %s DISABLE ROW LEVEL SECURITY", t->qualname);
}

Datum
apicore_soft_delete_disable(PG_FUNCTION_ARGS)
{
	SoftDeleteTable t;
	Oid			types[1] = {OIDOID};
	Datum		values[1];
	bool		isnull;
	char	   *converted;
	bool		enabled_by_apicore;
	bool		forced_by_apicore;
	ApicoreIdentity owner;
	ApicoreIdentity id;

	RequireArgument(fcinfo, 0, "tbl", "Pass the table, e.g. 'users'.");
	t = OpenTarget(PG_GETARG_OID(0), AccessExclusiveLock);
	RequireOwner(&t);
	RequireSoftDelete(&t, SoftDeleteColumnOf(t.relid));
	values[0] = ObjectIdGetDatum(t.relid);

	SPI_connect();
	ApicoreBecome(&owner, t.owner, 0);
	RefuseIfSoftDeleteChildren(&t);
	RunSql("SELECT converted_unique::pg_catalog.text, rls_enabled_by_apicore, rls_forced_by_apicore "
		   "FROM apicore.soft_delete_settings WHERE tbl::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
		   1, types, values);
	if (SPI_processed == 1)
	{
		converted = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		enabled_by_apicore = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		forced_by_apicore = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	}
	else
	{
		/* settings lost (e.g. restored without them): undo what is visible */
		converted = "[]";
		enabled_by_apicore = forced_by_apicore = false;
	}
	RunSqlf("DROP TRIGGER %s ON %s", GUARD_TRIGGER, t.qualname);
	RunSqlf("DROP TRIGGER IF EXISTS %s ON %s", TRUNCATE_TRIGGER, t.qualname);
	DropCascadeTriggers(&t);
	RelaxRowSecurity(&t, enabled_by_apicore, forced_by_apicore);
	DropNameKeepers(&t);
	RestoreUniqueConstraints(&t, converted);

	ApicoreBecome(&id, SettingsOwner(), 0);
	RunSql("DELETE FROM apicore.soft_delete_settings "
		   "WHERE tbl::pg_catalog.oid OPERATOR(pg_catalog.=) $1", 1, types, values);
	ApicoreRestore(&id);
	ApicoreRestore(&owner);
	SPI_finish();
	PG_RETURN_VOID();
}

/* ---------- restore and purge ---------- */

/* The archive table recorded for `relid`, or InvalidOid. */
static Oid
ArchiveOf(Oid relid)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(relid)};
	char	   *archive = QueryText("SELECT s.archive_table::pg_catalog.oid "
									"FROM apicore.soft_delete_settings s JOIN pg_catalog.pg_class c "
									"  ON c.oid OPERATOR(pg_catalog.=) s.archive_table::pg_catalog.oid "
									"WHERE s.tbl::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
									1, types, values);

	return archive ? CheckArchive(relid, atooid(archive)) : InvalidOid;
}

/*
 * A stored archive_table is used only if it is what enable made: a plain
 * table <tbl>_archive beside tbl, with tbl's owner.  Rows are moved into it
 * and deleted from it as that owner.
 */
static Oid
CheckArchive(Oid relid, Oid archive)
{
	char	   *relname = get_rel_name(relid);
	char	   *expected = psprintf("%s%s", relname, ARCHIVE_SUFFIX);
	char	   *name = get_rel_name(archive);

	if (archive == relid || get_rel_relkind(archive) != RELKIND_RELATION || name == NULL ||
		strcmp(name, expected) != 0 ||
		get_rel_namespace(archive) != get_rel_namespace(relid) ||
		ApicoreRelationOwner(archive) != ApicoreRelationOwner(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apicore: the archive table recorded for \"%s\" is not its archive", relname),
				 errdetail("apicore.soft_delete_settings names %s; the archive is a table \"%s\" in the same schema with the same owner.",
						   name ? QualifiedName(archive) : "a dropped table", expected),
				 errhint("ALTER TABLE %s OWNER TO the table's owner, or fix archive_table.",
						 name ? QualifiedName(archive) : expected)));
	return archive;
}

/* Raise a restore's unique violation again, saying what to do about it. */
static void
ReportRestoreConflict(SoftDeleteTable *t)
{
	ErrorData  *edata = CopyErrorData();

	FlushErrorState();
	ereport(ERROR,
			(errcode(ERRCODE_UNIQUE_VIOLATION),
			 errmsg("apicore: cannot restore the row of \"%s\": a live row has taken its unique value",
					t->relname),
			 errdetail("%s", edata->detail ? edata->detail : edata->message),
			 errhint("Change or delete the live row that holds the value, then restore again.")));
}

/* One row of a soft-delete table, named by the pk argument. */
typedef struct RowChange
{
	SoftDeleteTable t;
	char	   *column;			/* the deleted-at column */
	char	   *match;			/* WHERE clause on the key; $1 is the pk jsonb */
	Datum		key;
} RowChange;

/* Resolve tbl and pk for restore and purge, and check who is asking. */
static RowChange
OpenForRowChange(FunctionCallInfo fcinfo)
{
	RowChange	rc;
	AttrNumber	attnum;
	PrimaryKey	pk;

	RequireArgument(fcinfo, 0, "tbl", "Pass the table, e.g. 'users'.");
	RequireArgument(fcinfo, 1, "pk", "Pass the row's primary key as jsonb, e.g. '{\"id\": 42}'.");
	rc.t = OpenTarget(PG_GETARG_OID(0), RowExclusiveLock);
	attnum = SoftDeleteColumnOf(rc.t.relid);
	RequireSoftDelete(&rc.t, attnum);
	RequireAdmin(&rc.t);
	pk = PrimaryKeyOf(&rc.t);
	rc.match = PrimaryKeyMatch(&pk, PG_GETARG_JSONB_P(1), rc.t.relname);
	rc.column = get_attname(rc.t.relid, attnum, false);
	rc.key = PG_GETARG_DATUM(1);
	return rc;
}

/* Run a statement on the row: $1 is the pk jsonb. */
static uint64
RunForRow(RowChange *rc, const char *sql)
{
	Oid			types[1] = {JSONBOID};
	Datum		values[1] = {rc->key};

	return RunSql(sql, 1, types, values);
}

/* Bring one row back from the archive, live; returns the rows moved (0 or 1). */
static uint64
RestoreFromArchive(RowChange *rc, Oid archive)
{
	char	   *select_list;
	char	   *columns = SharedColumns(rc->t.relid, archive, false, rc->column, &select_list);

	return RunForRow(rc, psprintf("WITH moved AS (DELETE FROM %s WHERE %s RETURNING *) "
								  "INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM moved",
								  QualifiedName(archive), rc->match,
								  rc->t.qualname, columns, select_list));
}

/*
 * apicore.soft_delete_restore(tbl, pk): make a deleted row live again, from
 * the table or from its archive.  Returns the rows restored (0 or 1).  Runs
 * as the table's owner, past row-level security.
 */
Datum
apicore_soft_delete_restore(PG_FUNCTION_ARGS)
{
	RowChange	rc = OpenForRowChange(fcinfo);
	MemoryContext cxt = CurrentMemoryContext;
	volatile uint64 restored = 0;
	ApicoreIdentity id;

	/* as the owner past row-level security: deleted rows are hidden from it */
	SPI_connect();
	ApicoreBecome(&id, rc.t.owner, SECURITY_NOFORCE_RLS);
	PG_TRY();
	{
		Oid			archive;

		restored = RunForRow(&rc, psprintf("UPDATE ONLY %s SET %s = NULL WHERE %s IS NOT NULL AND %s",
										   rc.t.qualname, quote_identifier(rc.column),
										   quote_identifier(rc.column), rc.match));
		if (restored == 0 && OidIsValid(archive = ArchiveOf(rc.t.relid)))
			restored = RestoreFromArchive(&rc, archive);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		if (geterrcode() == ERRCODE_UNIQUE_VIOLATION)
			ReportRestoreConflict(&rc.t);
		PG_RE_THROW();
	}
	PG_END_TRY();
	ApicoreRestore(&id);
	SPI_finish();
	PG_RETURN_INT64((int64) restored);
}

/*
 * apicore.soft_delete_purge(tbl, pk): erase a row now, live or deleted, from
 * the table and its archive (right to erasure).  Foreign keys' ON DELETE
 * CASCADE erase the children too.  Returns the rows erased.
 */
Datum
apicore_soft_delete_purge(PG_FUNCTION_ARGS)
{
	RowChange	rc = OpenForRowChange(fcinfo);
	volatile uint64 purged = 0;
	ApicoreIdentity id;

	SPI_connect();
	ApicoreBecome(&id, rc.t.owner, SECURITY_NOFORCE_RLS);
	hard_delete_depth++;
	PG_TRY();
	{
		Oid			archive = ArchiveOf(rc.t.relid);

		purged = RunForRow(&rc, psprintf("DELETE FROM ONLY %s WHERE %s", rc.t.qualname, rc.match));
		if (OidIsValid(archive))
			purged += RunForRow(&rc, psprintf("DELETE FROM %s WHERE %s",
											  QualifiedName(archive), rc.match));
	}
	PG_FINALLY();
	{
		hard_delete_depth--;
	}
	PG_END_TRY();
	ApicoreRestore(&id);
	SPI_finish();
	PG_RETURN_INT64((int64) purged);
}

/* ---------- triggers ---------- */

static void
RefuseTrigger(const char *name, const char *relname)
{
	ereport(ERROR,
			(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
			 errmsg("apicore: %s() was called by a trigger on \"%s\" that apicore did not make",
					name, relname),
			 errhint("Only the triggers apicore.soft_delete_enable() creates may call it.")));
}

static TriggerData *
RequireTrigger(FunctionCallInfo fcinfo, const char *name)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("apicore: %s() is a trigger function", name),
				 errhint("apicore.soft_delete_enable() creates the triggers that use it.")));
	return (TriggerData *) fcinfo->context;
}

/*
 * AFTER INSERT ... WHEN (false), named after a unique constraint enable
 * replaced: the trigger only holds the name, and never fires.
 */
Datum
apicore_soft_delete_constraint_name(PG_FUNCTION_ARGS)
{
	(void) RequireTrigger(fcinfo, "_soft_delete_constraint_name");
	return PointerGetDatum(NULL);
}

/*
 * The guard is attached twice by enable: BEFORE DELETE FOR EACH ROW with the
 * column as argument, and BEFORE TRUNCATE FOR EACH STATEMENT.  Anything else
 * is a trigger someone made by hand.
 */
static void
RequireGuardTrigger(TriggerData *trigdata)
{
	Trigger    *trigger = trigdata->tg_trigger;
	TriggerEvent event = trigdata->tg_event;
	bool		row_guard = TRIGGER_FIRED_BY_DELETE(event) && TRIGGER_FIRED_FOR_ROW(event) &&
		trigger->tgnargs == 1 && strcmp(trigger->tgname, GUARD_TRIGGER) == 0;
	bool		truncate_guard = TRIGGER_FIRED_BY_TRUNCATE(event) &&
		trigger->tgnargs == 0 && strcmp(trigger->tgname, TRUNCATE_TRIGGER) == 0;

	if (!TRIGGER_FIRED_BEFORE(event) || !(row_guard || truncate_guard))
		RefuseTrigger("_soft_delete_guard", RelationGetRelationName(trigdata->tg_relation));
}

/*
 * BEFORE DELETE (row) and BEFORE TRUNCATE on a soft-delete table.  With the
 * planner hook in place a soft delete is an UPDATE, so a DELETE only reaches
 * here when the hook was absent (apicore not preloaded in this backend), when
 * a foreign key cascades from a table without soft delete, or when apicore
 * itself erases rows.  Calling this function loads the library.
 */
Datum
apicore_soft_delete_guard(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = RequireTrigger(fcinfo, "_soft_delete_guard");
	const char *relname = RelationGetRelationName(trigdata->tg_relation);

	RequireGuardTrigger(trigdata);
	if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
	{
		if (!allow_truncate)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("apicore: TRUNCATE of soft-delete table \"%s\" is refused", relname),
					 errhint("DELETE soft-deletes rows; SET apicore.allow_truncate = on to remove every row for real.")));
		return PointerGetDatum(NULL);
	}
	if (hard_delete_depth > 0)
		return PointerGetDatum(trigdata->tg_trigtuple);
	if (InNoForceRLSOperation())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apicore: an ON DELETE CASCADE would remove rows of soft-delete table \"%s\" for real",
						relname),
				 errdetail("The referenced table does not have soft delete."),
				 errhint("Enable soft delete on the referenced table, or make the foreign key ON DELETE RESTRICT; apicore.soft_delete_purge() erases rows.")));
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("apicore: DELETE on soft-delete table \"%s\" would remove rows for real", relname),
			 errdetail("apicore was not loaded when this statement was planned."),
			 errhint("Add apicore to shared_preload_libraries (or session_preload_libraries); use apicore.soft_delete_purge() to erase a row.")));
	PG_RETURN_NULL();
}

/*
 * The statement that carries a parent row's soft delete or restore to the
 * child of foreign key `contup`: $1..$n are the key, and for a restore $n+1
 * is the deleted-at time the rows share with their parent.  NULL when the
 * row's key is NULL or the child no longer has soft delete.
 */
static char *
CascadeStatement(HeapTuple contup, HeapTuple parent_row, TupleDesc desc, bool restore,
				 int *nargs, Oid *types, Datum *values)
{
	Oid			child = ((Form_pg_constraint) GETSTRUCT(contup))->conrelid;
	AttrNumber	child_column = SoftDeleteColumnOf(child);
	int			nkeys;
	AttrNumber	conkey[INDEX_MAX_KEYS];
	AttrNumber	confkey[INDEX_MAX_KEYS];
	Oid			pf_eq[INDEX_MAX_KEYS],
				pp_eq[INDEX_MAX_KEYS],
				ff_eq[INDEX_MAX_KEYS];
	int			nsetcols;
	AttrNumber	setcols[INDEX_MAX_KEYS];
	StringInfoData sql;
	const char *column;

	if (child_column == InvalidAttrNumber)
		return NULL;
	column = quote_identifier(get_attname(child, child_column, false));
	DeconstructFkConstraintRow(contup, &nkeys, conkey, confkey, pf_eq, pp_eq, ff_eq,
							   &nsetcols, setcols);
	initStringInfo(&sql);
	if (restore)
		appendStringInfo(&sql, "UPDATE ONLY %s SET %s = NULL WHERE %s OPERATOR(pg_catalog.=) $%d",
						 QualifiedName(child), column, column, nkeys + 1);
	else
		appendStringInfo(&sql, "DELETE FROM ONLY %s WHERE true", QualifiedName(child));
	for (int i = 0; i < nkeys; i++)
	{
		bool		isnull;

		values[i] = heap_getattr(parent_row, confkey[i], desc, &isnull);
		if (isnull)
			return NULL;		/* a NULL key references nothing */
		types[i] = TupleDescAttr(desc, confkey[i] - 1)->atttypid;
		/* the foreign key's own "referenced = referencing" operator */
		appendStringInfo(&sql, " AND $%d %s %s", i + 1, OperatorSql(pf_eq[i]),
						 quote_identifier(get_attname(child, conkey[i], false)));
	}
	*nargs = nkeys;
	return sql.data;
}

/*
 * The foreign key a cascade trigger names, or NULL when it was dropped.  Any
 * table owner can attach the function to a trigger of their own with any
 * argument: it must be enable's trigger (AFTER UPDATE FOR EACH ROW, named
 * for the key, on a soft-delete table) and the key must cascade from the
 * trigger's own table, so only rows that reference that table are touched.
 */
static HeapTuple
CascadeConstraint(TriggerData *trigdata)
{
	Trigger    *trigger = trigdata->tg_trigger;
	TriggerEvent event = trigdata->tg_event;
	Oid			relid = RelationGetRelid(trigdata->tg_relation);
	const char *relname = RelationGetRelationName(trigdata->tg_relation);
	char		expected[NAMEDATALEN];
	char	   *end = NULL;
	unsigned long conoid = 0;
	HeapTuple	contup;
	Form_pg_constraint con;

	if (trigger->tgnargs == 1)
	{
		errno = 0;
		conoid = strtoul(trigger->tgargs[0], &end, 10);
	}
	if (trigger->tgnargs != 1 || errno != 0 || end == trigger->tgargs[0] || *end != '\0' ||
		conoid == 0 || conoid > PG_UINT32_MAX ||
		!TRIGGER_FIRED_BY_UPDATE(event) || !TRIGGER_FIRED_AFTER(event) ||
		!TRIGGER_FIRED_FOR_ROW(event) || SoftDeleteColumnOf(relid) == InvalidAttrNumber)
		RefuseTrigger("_soft_delete_cascade", relname);
	snprintf(expected, sizeof(expected), CASCADE_TRIGGER_FMT, (Oid) conoid);
	if (strcmp(trigger->tgname, expected) != 0)
		RefuseTrigger("_soft_delete_cascade", relname);
	contup = SearchSysCache1(CONSTROID, ObjectIdGetDatum((Oid) conoid));
	if (!HeapTupleIsValid(contup))
		return NULL;
	con = (Form_pg_constraint) GETSTRUCT(contup);
	if (con->contype != CONSTRAINT_FOREIGN || con->confrelid != relid ||
		con->confdeltype != FKCONSTR_ACTION_CASCADE)
	{
		char	   *conname = pstrdup(NameStr(con->conname));
		char	   *conrel = get_rel_name(con->conrelid);

		ReleaseSysCache(contup);
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("apicore: a cascade trigger on \"%s\" names constraint \"%s\" of \"%s\", which is not an ON DELETE CASCADE foreign key referencing \"%s\"",
						relname, conname, conrel ? conrel : "?", relname),
				 errhint("Drop the trigger; apicore.soft_delete_enable() on the referencing table makes the right one.")));
	}
	return contup;
}

/*
 * AFTER UPDATE OF the deleted-at column on a parent, for the foreign key in
 * tgargs[0].  A row just soft-deleted: DELETE its children, which the
 * planner hook turns into soft deletes (recursively).  A row just restored:
 * restore the children deleted with it (same deleted-at time), not those
 * deleted on their own before.  Runs as the child's owner past row-level
 * security, as the foreign key's own actions do.
 */
Datum
apicore_soft_delete_cascade(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = RequireTrigger(fcinfo, "_soft_delete_cascade");
	TupleDesc	desc = RelationGetDescr(trigdata->tg_relation);
	AttrNumber	parent_column = SoftDeleteColumnOf(RelationGetRelid(trigdata->tg_relation));
	HeapTuple	contup;
	Oid			child;
	bool		restore;
	bool		isnull;
	int			nargs = 0;
	Oid			types[INDEX_MAX_KEYS + 1];
	Datum		values[INDEX_MAX_KEYS + 1];
	char	   *sql;
	ApicoreIdentity id;

	contup = CascadeConstraint(trigdata);
	if (contup == NULL)
		return PointerGetDatum(NULL);	/* the foreign key is gone */
	child = ((Form_pg_constraint) GETSTRUCT(contup))->conrelid;
	restore = heap_attisnull(trigdata->tg_newtuple, parent_column, desc);
	sql = CascadeStatement(contup, trigdata->tg_trigtuple, desc, restore, &nargs, types, values);
	ReleaseSysCache(contup);
	if (sql == NULL)
		return PointerGetDatum(NULL);
	if (restore)
	{
		types[nargs] = TIMESTAMPTZOID;
		values[nargs] = heap_getattr(trigdata->tg_trigtuple, parent_column, desc, &isnull);
		nargs++;
	}

	SPI_connect();
	ApicoreBecome(&id, ApicoreRelationOwner(child), SECURITY_NOFORCE_RLS);
	cascade_depth++;
	PG_TRY();
	{
		RunSql(sql, nargs, types, values);
	}
	PG_FINALLY();
	{
		cascade_depth--;
	}
	PG_END_TRY();
	ApicoreRestore(&id);
	SPI_finish();
	return PointerGetDatum(NULL);
}

/* ---------- tenant isolation ---------- */

/* A custom setting name: "prefix.name", letters, digits, _ and $. */
static void
CheckSettingName(const char *setting)
{
	bool		valid = strlen(setting) > 0 && strlen(setting) < NAMEDATALEN &&
		strchr(setting, '.') != NULL && setting[0] != '.' &&
		setting[strlen(setting) - 1] != '.' && !isdigit((unsigned char) setting[0]);

	for (const char *c = setting; valid && *c; c++)
		valid = isalnum((unsigned char) *c) || *c == '_' || *c == '$' || *c == '.';
	if (!valid)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("apicore: setting \"%s\" is not a custom setting name", setting),
				 errhint("Pass a name with a prefix, e.g. 'app.current_tenant', and SET it per session or transaction.")));
}

/*
 * Where a policy finds the tenant.  'setting': a setting the application
 * SETs (any SQL it runs can SET it too); 'token': apicore.current_tenant(),
 * set only by apicore.tenant_set() from a signed token; 'role':
 * apicore.session_tenant(), the tenant of the session's login role.
 */
static char *
TenantSource(const char *mode, const char *setting)
{
	if (strcmp(mode, "setting") == 0)
	{
		CheckSettingName(setting);
		/* NULLIF's = is found under search_path = pg_catalog: texteq */
		return psprintf("NULLIF(pg_catalog.current_setting(%s, true), '')",
						quote_literal_cstr(setting));
	}
	if (strcmp(setting, DEFAULT_TENANT_SETTING) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("apicore: setting applies to mode 'setting' only, not to mode '%s'", mode),
				 errhint("Leave setting out with mode '%s'.", mode)));
	if (strcmp(mode, "token") == 0)
		return pstrdup("apicore.current_tenant()");
	if (strcmp(mode, "role") == 0)
		return pstrdup("apicore.session_tenant()");
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("apicore: mode must be 'setting', 'token' or 'role', got '%s'", mode),
			 errhint("'token' and 'role' hold against SQL injection; 'setting' does not.")));
	return NULL;
}

/*
 * apicore.tenant_isolation_enable(tbl, column_name, setting, mode): a
 * restrictive policy "column = <the tenant>" for reads and writes, made as
 * the table's owner.  No tenant (unset, empty, NULL) matches nothing: fail
 * closed.
 */
Datum
apicore_tenant_isolation_enable(PG_FUNCTION_ARGS)
{
	SoftDeleteTable t;
	const char *column;
	AttrNumber	attnum;
	char	   *source;
	char	   *tenant;
	ApicoreIdentity id;

	RequireArgument(fcinfo, 0, "tbl", "Pass the table, e.g. 'orders'.");
	RequireArgument(fcinfo, 1, "column_name", "Pass the tenant column, e.g. 'tenant_id'.");
	RequireArgument(fcinfo, 2, "setting", "Pass the setting that holds the tenant, e.g. 'app.current_tenant'.");
	RequireArgument(fcinfo, 3, "mode", "Pass 'token', 'role' or 'setting'.");
	t = OpenTarget(PG_GETARG_OID(0), AccessExclusiveLock);
	column = NameStr(*PG_GETARG_NAME(1));
	RequireOwner(&t);
	attnum = get_attnum(t.relid, column);
	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("apicore: column_name: column \"%s\" of \"%s\" does not exist", column, t.relname),
				 errhint("Add the tenant column to the table first, or pass its name.")));
	source = TenantSource(text_to_cstring(PG_GETARG_TEXT_PP(3)),
						  text_to_cstring(PG_GETARG_TEXT_PP(2)));

	SPI_connect();
	ApicoreBecome(&id, t.owner, 0);
	if (HasPolicy(t.relid, TENANT_POLICY))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("apicore: tbl: tenant isolation is already enabled on table \"%s\"", t.relname),
				 errhint("DROP POLICY %s ON %s to change it.", TENANT_POLICY, t.qualname)));
	tenant = psprintf("%s %s %s::%s", quote_identifier(column),
					  EqualitySql(get_atttype(t.relid, attnum), column), source,
					  ColumnType(t.relid, attnum));
	ForceRowSecurity(&t);
	RunSqlf("CREATE POLICY %s ON %s AS RESTRICTIVE FOR ALL TO PUBLIC USING (%s) WITH CHECK (%s)",
			TENANT_POLICY, t.qualname, tenant, tenant);
	ApicoreRestore(&id);
	SPI_finish();
	PG_RETURN_VOID();
}

/* ---------- archival and purge (maintenance task) ---------- */

/* One table's archival/purge settings, copied out of SPI. */
typedef struct MaintainedTable
{
	Oid			relid;
	char	   *name;			/* schema.table, quoted, as listed */
	char	   *column;
	Interval   *archive_after;	/* NULL: no archival */
	Interval   *purge_after;	/* NULL: no purge */
	Oid			archive;
	Datum		archive_before; /* timestamptz cutoffs, from the windows */
	Datum		purge_before;
} MaintainedTable;

static Interval *
CopyInterval(HeapTuple row, TupleDesc desc, int column)
{
	bool		isnull;
	Datum		value = SPI_getbinval(row, desc, column, &isnull);

	return isnull ? NULL : DatumGetIntervalP(datumCopy(value, false, sizeof(Interval)));
}

/* Read as apicore's owner; every value is checked before use (CheckMaintained). */
static List *
MaintainedTables(void)
{
	List	   *tables = NIL;

	/* children first: their rows must reach the archive before a parent's cascade */
	RunSql("SELECT s.tbl::pg_catalog.oid, s.column_name::pg_catalog.text, s.archive_after, "
		   "       s.purge_after, a.oid, pg_catalog.format('%I.%I', n.nspname, c.relname) "
		   "FROM apicore.soft_delete_settings s "
		   "JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) s.tbl::pg_catalog.oid "
		   "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
		   "LEFT JOIN pg_catalog.pg_class a "
		   "       ON a.oid OPERATOR(pg_catalog.=) s.archive_table::pg_catalog.oid "
		   "WHERE s.archive_after IS NOT NULL OR s.purge_after IS NOT NULL "
		   "ORDER BY (SELECT pg_catalog.count(*) FROM pg_catalog.pg_constraint f "
		   "          WHERE f.contype OPERATOR(pg_catalog.=) 'f'::pg_catalog.\"char\" "
		   "            AND f.conrelid OPERATOR(pg_catalog.=) s.tbl::pg_catalog.oid) DESC, "
		   "         s.tbl::pg_catalog.oid",
		   0, NULL, NULL);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MaintainedTable *mt = palloc0(sizeof(MaintainedTable));
		bool		isnull;
		Datum		value;

		mt->relid = DatumGetObjectId(SPI_getbinval(row, desc, 1, &isnull));
		mt->column = SPI_getvalue(row, desc, 2);
		mt->archive_after = CopyInterval(row, desc, 3);
		mt->purge_after = CopyInterval(row, desc, 4);
		value = SPI_getbinval(row, desc, 5, &isnull);
		mt->archive = isnull ? InvalidOid : DatumGetObjectId(value);
		mt->name = SPI_getvalue(row, desc, 6);
		tables = lappend(tables, mt);
	}
	return tables;
}

/* now() - window: CheckWindow bounds the window, so this cannot overflow. */
static Datum
Cutoff(Interval *window)
{
	return DirectFunctionCall2(timestamptz_mi_interval,
							   TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()),
							   IntervalPGetDatum(window));
}

/*
 * A settings row is written by apicore, but only its owner's word says so:
 * the table must still be a soft-delete table on that column, the windows
 * in range, the archive what enable made.
 */
static void
CheckMaintained(MaintainedTable *mt)
{
	SoftDeleteTable t = OpenTarget(mt->relid, RowExclusiveLock);
	AttrNumber	attnum = SoftDeleteColumnOf(mt->relid);

	if (attnum == InvalidAttrNumber || mt->column == NULL ||
		strcmp(get_attname(mt->relid, attnum, false), mt->column) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apicore: apicore.soft_delete_settings names column \"%s\" of \"%s\", which is not its soft-delete column",
						mt->column ? mt->column : "NULL", t.relname),
				 errhint("Call apicore.soft_delete_disable('%s') and enable it again.", t.qualname)));
	if (mt->archive_after)
	{
		CheckWindow(mt->archive_after, "archive_after", t.relname);
		mt->archive_before = Cutoff(mt->archive_after);
	}
	if (mt->purge_after)
	{
		CheckWindow(mt->purge_after, "purge_after", t.relname);
		mt->purge_before = Cutoff(mt->purge_after);
	}
	if (OidIsValid(mt->archive))
		(void) CheckArchive(mt->relid, mt->archive);
}

/* Columns added to the table since the archive was made are added to it too. */
static void
SyncArchiveColumns(MaintainedTable *mt)
{
	RunGeneratedStatements("SELECT pg_catalog.format('ALTER TABLE %s ADD COLUMN %I %s', "
						   "       $2::pg_catalog.regclass, a.attname, "
						   "       pg_catalog.format_type(a.atttypid, a.atttypmod)) "
						   "FROM pg_catalog.pg_attribute a "
						   "WHERE a.attrelid OPERATOR(pg_catalog.=) $1 "
						   "  AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped "
						   "  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute b "
						   "                  WHERE b.attrelid OPERATOR(pg_catalog.=) $2 "
						   "                  AND b.attname OPERATOR(pg_catalog.=) a.attname "
						   "                  AND NOT b.attisdropped)",
						   mt->relid, mt->archive);
}

/*
 * The ctids of at most batch_size rows of `relname` deleted before $1,
 * locked; rows another transaction holds are left for the next run.
 */
static char *
DueRows(const char *relname, const char *column)
{
	return psprintf("ctid OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT ctid FROM ONLY %s "
					"WHERE %s OPERATOR(pg_catalog.<) $1 "
					"ORDER BY %s LIMIT $2 FOR UPDATE SKIP LOCKED))",
					relname, quote_identifier(column), quote_identifier(column));
}

static uint64
ArchiveBatch(MaintainedTable *mt)
{
	char	   *relname = QualifiedName(mt->relid);
	char	   *columns;
	Oid			types[2] = {TIMESTAMPTZOID, INT4OID};
	Datum		values[2] = {mt->archive_before, Int32GetDatum(soft_delete_batch_size)};

	SyncArchiveColumns(mt);
	columns = SharedColumns(mt->relid, mt->archive, true, NULL, NULL);
	return RunSql(psprintf("WITH moved AS (DELETE FROM ONLY %s WHERE %s RETURNING *) "
						   "INSERT INTO %s (%s) SELECT %s FROM moved",
						   relname, DueRows(relname, mt->column),
						   QualifiedName(mt->archive), columns, columns),
				  2, types, values);
}

static uint64
PurgeBatch(Oid relid, const char *column, Datum purge_before)
{
	char	   *relname = QualifiedName(relid);
	Oid			types[2] = {TIMESTAMPTZOID, INT4OID};
	Datum		values[2] = {purge_before, Int32GetDatum(soft_delete_batch_size)};

	return RunSql(psprintf("DELETE FROM ONLY %s WHERE %s", relname, DueRows(relname, column)),
				  2, types, values);
}

/* One batch of archival and one of purge for one table; what it did. */
static char *
MaintainTable(MaintainedTable *mt)
{
	volatile uint64 archived = 0;
	volatile uint64 purged = 0;

	hard_delete_depth++;
	PG_TRY();
	{
		/* purge first: rows past both windows need not visit the archive */
		if (mt->purge_after)
			purged = PurgeBatch(mt->relid, mt->column, mt->purge_before);
		if (mt->archive_after && OidIsValid(mt->archive))
			archived = ArchiveBatch(mt);
		if (mt->purge_after && OidIsValid(mt->archive))
			purged += PurgeBatch(mt->archive, mt->column, mt->purge_before);
	}
	PG_FINALLY();
	{
		hard_delete_depth--;
	}
	PG_END_TRY();
	return psprintf("%s: archived " UINT64_FORMAT ", purged " UINT64_FORMAT,
					mt->name, archived, purged);
}

/* One table's maintenance as the body of a subtransaction. */
typedef struct TableRun
{
	MaintainedTable *table;
	MemoryContext result_cxt;
	char	   *detail;
} TableRun;

/*
 * As the table's owner, as autovacuum and REFRESH MATERIALIZED VIEW run: its
 * triggers (and ON DELETE CASCADE to its children) never run as the worker's
 * superuser.  Past row-level security, which hides deleted rows from the owner.
 */
static void
MaintainTableBody(void *arg)
{
	TableRun   *run = arg;
	ApicoreIdentity id;
	char	   *detail;

	SPI_connect();
	CheckMaintained(run->table);
	ApicoreBecome(&id, ApicoreRelationOwner(run->table->relid), SECURITY_NOFORCE_RLS);
	detail = MaintainTable(run->table);
	ApicoreRestore(&id);
	run->detail = MemoryContextStrdup(run->result_cxt, detail);
	SPI_finish();
}

/* A table that fails (a trigger's error, a bad settings row) does not stop the others. */
static char *
MaintainTableSafely(MaintainedTable *mt)
{
	TableRun	run = {mt, CurrentMemoryContext, NULL};
	ErrorData  *failure = ApicoreTrySubtransaction(MaintainTableBody, &run);

	if (failure == NULL)
		return run.detail;
	ereport(WARNING,
			(errmsg("apicore: soft-delete maintenance of %s failed: %s", mt->name,
					failure->message)));
	return psprintf("%s: failed: %s", mt->name, failure->message);
}

static void
RecordMaintenance(Oid relid, const char *detail)
{
	Oid			types[2] = {OIDOID, TEXTOID};
	Datum		values[2] = {ObjectIdGetDatum(relid), CStringGetTextDatum(detail)};

	RunSql("UPDATE apicore.soft_delete_settings SET last_maintenance_at = pg_catalog.now(), "
		   "last_maintenance = $2 WHERE tbl::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
		   2, types, values);
}

/*
 * apicore._soft_delete_maintain(): the maintenance task.  Each run moves at
 * most apicore.soft_delete_batch_size rows per table to the archive and
 * purges as many, so every transaction stays short; the worker's next round
 * takes the next batch.  The settings table is read and written as its
 * owner; each table is maintained as its own owner.
 */
Datum
apicore_soft_delete_maintain(PG_FUNCTION_ARGS)
{
	StringInfoData report;
	List	   *tables;
	ListCell   *lc;
	ApicoreIdentity id;

	initStringInfo(&report);
	SPI_connect();
	ApicoreBecome(&id, SettingsOwner(), 0);
	/* settings of tables dropped since */
	RunSql("DELETE FROM apicore.soft_delete_settings s "
		   "WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c "
		   "                  WHERE c.oid OPERATOR(pg_catalog.=) s.tbl::pg_catalog.oid)",
		   0, NULL, NULL);
	tables = MaintainedTables();
	foreach(lc, tables)
	{
		MaintainedTable *mt = lfirst(lc);
		char	   *detail = MaintainTableSafely(mt);

		RecordMaintenance(mt->relid, detail);
		appendStringInfo(&report, "%s%s", report.len ? "; " : "", detail);
	}
	ApicoreRestore(&id);
	SPI_finish();
	PG_RETURN_TEXT_P(cstring_to_text(report.len ? report.data : "no table to archive or purge"));
}
