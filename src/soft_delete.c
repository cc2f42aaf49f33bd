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
 * for the maintenance task.
 */
#include "postgres.h"

#include <ctype.h>

#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_index.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "optimizer/planner.h"
#include "parser/parsetree.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "apicore.h"

/* Names of what enable creates on a table; the guard trigger is the marker. */
#define GUARD_TRIGGER		"apicore_soft_delete"
#define TRUNCATE_TRIGGER	"apicore_soft_delete_truncate"
#define CASCADE_TRIGGER_FMT "apicore_soft_delete_cascade_%u"
#define HIDE_POLICY			"apicore_soft_delete"
#define PERMIT_POLICY		"apicore_permit_all"
#define TENANT_POLICY		"apicore_tenant_isolation"
#define ADMIN_ROLE			"apicore_soft_delete_admin"
#define ARCHIVE_SUFFIX		"_archive"

#if PG_VERSION_NUM >= 160000
#define OwnsRelation(relid, role) object_ownercheck(RelationRelationId, relid, role)
#else
#define OwnsRelation(relid, role) pg_class_ownercheck(relid, role)
#endif

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
	char	   *types[INDEX_MAX_KEYS];	/* format_type with typmod */
} PrimaryKey;

/* Saves the caller's identity while apicore acts as a table's owner. */
typedef struct RoleSwitch
{
	Oid			saved_user;
	int			saved_sec;
} RoleSwitch;

PG_FUNCTION_INFO_V1(apicore_soft_delete_enable);
PG_FUNCTION_INFO_V1(apicore_soft_delete_configure);
PG_FUNCTION_INFO_V1(apicore_soft_delete_disable);
PG_FUNCTION_INFO_V1(apicore_soft_delete_restore);
PG_FUNCTION_INFO_V1(apicore_soft_delete_purge);
PG_FUNCTION_INFO_V1(apicore_soft_delete_maintain);
PG_FUNCTION_INFO_V1(apicore_soft_delete_guard);
PG_FUNCTION_INFO_V1(apicore_soft_delete_cascade);
PG_FUNCTION_INFO_V1(apicore_tenant_isolation_enable);

/* used before their definitions */
static Oid RelationOwner(Oid relid);
static Oid ArchiveOf(Oid relid);

/* ---------- the planner hook ---------- */

/*
 * The deleted-at column of a soft-delete table, or InvalidAttrNumber.  Read
 * from the relcache's trigger list, so it costs no catalog access per query.
 */
static AttrNumber
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
				attnum = get_attnum(relid, trigger->tgargs[0]);
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
	rte->updatedCols = bms_make_singleton(attnum - FirstLowInvalidHeapAttributeNumber);
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

static void
BecomeRole(RoleSwitch *rs, Oid role)
{
	GetUserIdAndSecContext(&rs->saved_user, &rs->saved_sec);
	SetUserIdAndSecContext(role, rs->saved_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_NOFORCE_RLS);
}

static void
RestoreRole(RoleSwitch *rs)
{
	SetUserIdAndSecContext(rs->saved_user, rs->saved_sec);
}

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
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("apicore: %s must not be NULL", name),
				 errhint("%s", hint)));
}

static char *
QualifiedName(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
									  get_rel_name(relid));
}

/* The column's type as SQL spells it, with its typmod. */
static char *
ColumnType(Oid relid, AttrNumber attnum)
{
	Oid			type;
	int32		typmod;
	Oid			collation;

	get_atttypetypmodcoll(relid, attnum, &type, &typmod, &collation);
	return format_type_with_typemod(type, typmod);
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
	return RelationOwner(RangeVarGetRelid(makeRangeVar("apicore", "soft_delete_settings", -1),
										  NoLock, false));
}

static Oid
RelationOwner(Oid relid)
{
	HeapTuple	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tuple))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("apicore: table with OID %u does not exist", relid)));
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
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
	t.owner = RelationOwner(relid);
	t.relname = get_rel_name(relid);
	t.nspname = get_namespace_name(get_rel_namespace(relid));
	t.qualname = quote_qualified_identifier(t.nspname, t.relname);
	return t;
}

static void
RequireOwner(SoftDeleteTable *t)
{
	if (!OwnsRelation(t->relid, GetUserId()))
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

	if (OwnsRelation(t->relid, GetUserId()))
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
	Oid			pkindex = RelationGetPrimaryKeyIndex(rel);
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
		pk.types[i] = format_type_with_typemod(att->atttypid, att->atttypmod);
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
		appendStringInfo(&where, "%s%s = ($1 OPERATOR(pg_catalog.->>) %s)::%s",
						 i ? " AND " : "", quote_identifier(pk->names[i]),
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

	return RunSql("SELECT 1 FROM pg_catalog.pg_policy WHERE polrelid = $1 AND polname = $2",
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
	if (RunSqlForTable("SELECT 1 FROM pg_catalog.pg_policy WHERE polrelid = $1", t->relid) == 0)
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
			   "  ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
			   "WHERE i.indrelid = $1 AND a.attname = $2::name "
			   "  AND pg_catalog.pg_get_expr(i.indpred, i.indrelid) = $3",
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

	RunSqlForTable("SELECT oid, confrelid::regclass::text, "
		   "EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g WHERE g.tgrelid = c.confrelid "
		   "        AND g.tgname = '" GUARD_TRIGGER "') "
		   "FROM pg_catalog.pg_constraint c "
		   "WHERE contype = 'f' AND conrelid = $1 AND confdeltype = 'c' AND confrelid <> $1",
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

		snprintf(name, sizeof(name), CASCADE_TRIGGER_FMT, conoid);
		RunSqlf("CREATE TRIGGER %s AFTER UPDATE OF %s ON %s FOR EACH ROW "
				"WHEN ((OLD.%s IS NULL) <> (NEW.%s IS NULL)) "
				"EXECUTE FUNCTION apicore._soft_delete_cascade('%u')",
				name, column, QualifiedName(parent), column, column, conoid);
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

/* archive_after and purge_after are arguments `first` and `first` + 1. */
static void
CheckIntervals(FunctionCallInfo fcinfo, int first)
{
	Interval   *archive_after = PG_ARGISNULL(first) ? NULL : PG_GETARG_INTERVAL_P(first);
	Interval   *purge_after = PG_ARGISNULL(first + 1) ? NULL : PG_GETARG_INTERVAL_P(first + 1);
	Interval	zero = {0};
	Datum		zero_datum = IntervalPGetDatum(&zero);

	if ((archive_after && DatumGetBool(DirectFunctionCall2(interval_le, IntervalPGetDatum(archive_after), zero_datum))) ||
		(purge_after && DatumGetBool(DirectFunctionCall2(interval_le, IntervalPGetDatum(purge_after), zero_datum))))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("apicore: archive_after and purge_after must be positive intervals"),
				 errhint("Pass e.g. '30 days', or NULL to keep deleted rows in the table.")));
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
 * key depends on must stay: it is kept and reported.  Returns the jsonb
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
		   "               WHERE f.contype = 'f' AND f.conindid = i.indexrelid), "
		   "       CASE WHEN c.oid IS NULL "
		   "            THEN pg_catalog.format('DROP INDEX %s', i.indexrelid::regclass) "
		   "            ELSE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', $3, c.conname) END, "
		   "       pg_catalog.format('%s WHERE %I IS NULL', pg_catalog.pg_get_indexdef(i.indexrelid), $2), "
		   "       pg_catalog.jsonb_build_object('index', pg_catalog.format('%I.%I', n.nspname, r.relname), 'restore', "
		   "         CASE WHEN c.oid IS NULL THEN pg_catalog.pg_get_indexdef(i.indexrelid) "
		   "              ELSE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s', $3, "
		   "                     c.conname, pg_catalog.pg_get_constraintdef(c.oid)) END)::text, "
		   "       pg_catalog.to_jsonb(coalesce(c.conname, r.relname)::text)::text "
		   "FROM pg_catalog.pg_index i "
		   "JOIN pg_catalog.pg_class r ON r.oid = i.indexrelid "
		   "JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace "
		   "LEFT JOIN pg_catalog.pg_constraint c ON c.conindid = i.indexrelid "
		   "     AND c.conrelid = i.indrelid AND c.contype = 'u' "
		   "WHERE i.indrelid = $1 AND i.indisunique AND NOT i.indisprimary AND i.indpred IS NULL "
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
	RunSqlForTable("SELECT conrelid::regclass::text FROM pg_catalog.pg_constraint c "
				   "WHERE contype = 'f' AND confrelid = $1 AND confdeltype = 'c' AND conrelid <> $1 "
				   "  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g WHERE g.tgrelid = c.conrelid "
				   "                  AND g.tgname = '" GUARD_TRIGGER "')",
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
	RoleSwitch	rs;

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
	BecomeRole(&rs, SettingsOwner());
	if (SPI_execute_with_args("INSERT INTO apicore.soft_delete_settings "
							  "(tbl, column_name, archive_after, purge_after, archive_table, "
							  " converted_unique, kept_unique, rls_enabled_by_apicore, rls_forced_by_apicore) "
							  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
							  9, types, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "apicore: could not record soft delete settings");
	RestoreRole(&rs);
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

	SPI_connect();
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
	RoleSwitch	rs;

	RequireArgument(fcinfo, 0, "tbl", "Pass the table, e.g. 'users'.");
	t = OpenTarget(PG_GETARG_OID(0), AccessExclusiveLock);
	RequireOwner(&t);
	attnum = SoftDeleteColumnOf(t.relid);
	RequireSoftDelete(&t, attnum);
	column = get_attname(t.relid, attnum, false);
	CheckIntervals(fcinfo, 1);

	SPI_connect();
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
	BecomeRole(&rs, SettingsOwner());
	if (SPI_execute_with_args("UPDATE apicore.soft_delete_settings SET archive_after = $2, "
							  "purge_after = $3, archive_table = $4 WHERE tbl = $1",
							  4, types, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "apicore: could not record soft delete settings");
	RestoreRole(&rs);
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

	child = QueryText("SELECT conrelid::regclass::text FROM pg_catalog.pg_constraint c "
					  "WHERE contype = 'f' AND confrelid = $1 AND confdeltype = 'c' AND conrelid <> $1 "
					  "  AND EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g WHERE g.tgrelid = c.conrelid "
					  "              AND g.tgname = '" GUARD_TRIGGER "') LIMIT 1",
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
	RunGeneratedStatements("SELECT pg_catalog.format('DROP TRIGGER %I ON %s', g.tgname, g.tgrelid::regclass) "
						   "FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_trigger g "
						   "  ON g.tgrelid = c.confrelid AND g.tgname = 'apicore_soft_delete_cascade_' || c.oid "
						   "WHERE c.contype = 'f' AND c.conrelid = $1",
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

	RunSql("SELECT 'DROP INDEX ' || (e OPERATOR(pg_catalog.->>) 'index'), e OPERATOR(pg_catalog.->>) 'restore' "
		   "FROM pg_catalog.jsonb_array_elements($1) e",
		   1, types, values);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		statements = lappend(statements, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
		statements = lappend(statements, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2));
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
	RoleSwitch	rs;

	RequireArgument(fcinfo, 0, "tbl", "Pass the table, e.g. 'users'.");
	t = OpenTarget(PG_GETARG_OID(0), AccessExclusiveLock);
	RequireOwner(&t);
	RequireSoftDelete(&t, SoftDeleteColumnOf(t.relid));
	values[0] = ObjectIdGetDatum(t.relid);

	SPI_connect();
	RefuseIfSoftDeleteChildren(&t);
	RunSql("SELECT converted_unique::text, rls_enabled_by_apicore, rls_forced_by_apicore "
		   "FROM apicore.soft_delete_settings WHERE tbl = $1", 1, types, values);
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
	RestoreUniqueConstraints(&t, converted);

	BecomeRole(&rs, SettingsOwner());
	RunSql("DELETE FROM apicore.soft_delete_settings WHERE tbl = $1", 1, types, values);
	RestoreRole(&rs);
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
	char	   *archive = QueryText("SELECT s.archive_table::oid FROM apicore.soft_delete_settings s "
									"JOIN pg_catalog.pg_class c ON c.oid = s.archive_table WHERE s.tbl = $1",
									1, types, values);

	return archive ? atooid(archive) : InvalidOid;
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
	RoleSwitch	rs;

	SPI_connect();
	BecomeRole(&rs, rc.t.owner);
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
	RestoreRole(&rs);
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
	RoleSwitch	rs;

	SPI_connect();
	BecomeRole(&rs, rc.t.owner);
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
	RestoreRole(&rs);
	SPI_finish();
	PG_RETURN_INT64((int64) purged);
}

/* ---------- triggers ---------- */

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
		appendStringInfo(&sql, "UPDATE ONLY %s SET %s = NULL WHERE %s = $%d",
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
		appendStringInfo(&sql, " AND %s = $%d",
						 quote_identifier(get_attname(child, conkey[i], false)), i + 1);
	}
	*nargs = nkeys;
	return sql.data;
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
	RoleSwitch	rs;

	if (trigdata->tg_trigger->tgnargs != 1 || parent_column == InvalidAttrNumber ||
		!TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		elog(ERROR, "apicore: _soft_delete_cascade() belongs to soft_delete_enable's UPDATE triggers");
	contup = SearchSysCache1(CONSTROID, ObjectIdGetDatum(atooid(trigdata->tg_trigger->tgargs[0])));
	if (!HeapTupleIsValid(contup))
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

	BecomeRole(&rs, RelationOwner(child));
	SPI_connect();
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
	SPI_finish();
	RestoreRole(&rs);
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
 * apicore.tenant_isolation_enable(tbl, column_name, setting): a restrictive
 * policy "column = current_setting(setting)" for reads and writes.  An unset
 * or empty setting matches nothing (fail closed).
 */
Datum
apicore_tenant_isolation_enable(PG_FUNCTION_ARGS)
{
	SoftDeleteTable t;
	const char *column;
	char	   *setting;
	AttrNumber	attnum;
	char	   *tenant;

	RequireArgument(fcinfo, 0, "tbl", "Pass the table, e.g. 'orders'.");
	RequireArgument(fcinfo, 1, "column_name", "Pass the tenant column, e.g. 'tenant_id'.");
	RequireArgument(fcinfo, 2, "setting", "Pass the setting that holds the tenant, e.g. 'app.current_tenant'.");
	t = OpenTarget(PG_GETARG_OID(0), AccessExclusiveLock);
	column = NameStr(*PG_GETARG_NAME(1));
	setting = text_to_cstring(PG_GETARG_TEXT_PP(2));
	RequireOwner(&t);
	attnum = get_attnum(t.relid, column);
	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("apicore: column_name: column \"%s\" of \"%s\" does not exist", column, t.relname),
				 errhint("Add the tenant column to the table first, or pass its name.")));
	CheckSettingName(setting);

	SPI_connect();
	if (HasPolicy(t.relid, TENANT_POLICY))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("apicore: tbl: tenant isolation is already enabled on table \"%s\"", t.relname),
				 errhint("DROP POLICY %s ON %s to change it.", TENANT_POLICY, t.qualname)));
	tenant = psprintf("%s = NULLIF(pg_catalog.current_setting(%s, true), '')::%s",
					  quote_identifier(column), quote_literal_cstr(setting),
					  ColumnType(t.relid, attnum));
	ForceRowSecurity(&t);
	RunSqlf("CREATE POLICY %s ON %s AS RESTRICTIVE FOR ALL TO PUBLIC USING (%s) WITH CHECK (%s)",
			TENANT_POLICY, t.qualname, tenant, tenant);
	SPI_finish();
	PG_RETURN_VOID();
}

/* ---------- archival and purge (maintenance task) ---------- */

/* One table's archival/purge settings, copied out of SPI. */
typedef struct MaintainedTable
{
	Oid			relid;
	char	   *column;
	Datum		archive_after;	/* interval, 0 if NULL */
	Datum		purge_after;	/* interval, 0 if NULL */
	Oid			archive;
} MaintainedTable;

static List *
MaintainedTables(void)
{
	List	   *tables = NIL;

	/* children first: their rows must reach the archive before a parent's cascade */
	RunSql("SELECT s.tbl::oid, s.column_name::text, s.archive_after, s.purge_after, a.oid "
		   "FROM apicore.soft_delete_settings s "
		   "JOIN pg_catalog.pg_class c ON c.oid = s.tbl "
		   "LEFT JOIN pg_catalog.pg_class a ON a.oid = s.archive_table "
		   "WHERE s.archive_after IS NOT NULL OR s.purge_after IS NOT NULL "
		   "ORDER BY (SELECT count(*) FROM pg_catalog.pg_constraint f "
		   "          WHERE f.contype = 'f' AND f.conrelid = s.tbl) DESC, s.tbl::oid",
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
		value = SPI_getbinval(row, desc, 3, &isnull);
		mt->archive_after = isnull ? (Datum) 0 : datumCopy(value, false, sizeof(Interval));
		value = SPI_getbinval(row, desc, 4, &isnull);
		mt->purge_after = isnull ? (Datum) 0 : datumCopy(value, false, sizeof(Interval));
		value = SPI_getbinval(row, desc, 5, &isnull);
		mt->archive = isnull ? InvalidOid : DatumGetObjectId(value);
		tables = lappend(tables, mt);
	}
	return tables;
}

/* Columns added to the table since the archive was made are added to it too. */
static void
SyncArchiveColumns(MaintainedTable *mt)
{
	RunGeneratedStatements("SELECT pg_catalog.format('ALTER TABLE %s ADD COLUMN %I %s', $2::regclass, a.attname, "
						   "       pg_catalog.format_type(a.atttypid, a.atttypmod)) "
						   "FROM pg_catalog.pg_attribute a "
						   "WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped "
						   "  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute b WHERE b.attrelid = $2 "
						   "                  AND b.attname = a.attname AND NOT b.attisdropped)",
						   mt->relid, mt->archive);
}

/*
 * The ctids of at most batch_size rows of `relname` deleted longer ago than
 * $1, locked; rows another transaction holds are left for the next run.
 */
static char *
DueRows(const char *relname, const char *column)
{
	return psprintf("ctid = ANY (ARRAY(SELECT ctid FROM ONLY %s WHERE %s < pg_catalog.now() - $1 "
					"ORDER BY %s LIMIT $2 FOR UPDATE SKIP LOCKED))",
					relname, quote_identifier(column), quote_identifier(column));
}

static uint64
ArchiveBatch(MaintainedTable *mt)
{
	char	   *relname = QualifiedName(mt->relid);
	char	   *columns;
	Oid			types[2] = {INTERVALOID, INT4OID};
	Datum		values[2] = {mt->archive_after, Int32GetDatum(soft_delete_batch_size)};

	SyncArchiveColumns(mt);
	columns = SharedColumns(mt->relid, mt->archive, true, NULL, NULL);
	return RunSql(psprintf("WITH moved AS (DELETE FROM ONLY %s WHERE %s RETURNING *) "
						   "INSERT INTO %s (%s) SELECT %s FROM moved",
						   relname, DueRows(relname, mt->column),
						   QualifiedName(mt->archive), columns, columns),
				  2, types, values);
}

static uint64
PurgeBatch(Oid relid, const char *column, Datum purge_after)
{
	char	   *relname = QualifiedName(relid);
	Oid			types[2] = {INTERVALOID, INT4OID};
	Datum		values[2] = {purge_after, Int32GetDatum(soft_delete_batch_size)};

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
			purged = PurgeBatch(mt->relid, mt->column, mt->purge_after);
		if (mt->archive_after && OidIsValid(mt->archive))
			archived = ArchiveBatch(mt);
		if (mt->purge_after && OidIsValid(mt->archive))
			purged += PurgeBatch(mt->archive, mt->column, mt->purge_after);
	}
	PG_FINALLY();
	{
		hard_delete_depth--;
	}
	PG_END_TRY();
	return psprintf("%s: archived " UINT64_FORMAT ", purged " UINT64_FORMAT,
					QualifiedName(mt->relid), archived, purged);
}

static void
RecordMaintenance(Oid relid, const char *detail)
{
	Oid			types[2] = {OIDOID, TEXTOID};
	Datum		values[2] = {ObjectIdGetDatum(relid), CStringGetTextDatum(detail)};

	RunSql("UPDATE apicore.soft_delete_settings SET last_maintenance_at = pg_catalog.now(), "
		   "last_maintenance = $2 WHERE tbl = $1", 2, types, values);
}

/*
 * apicore._soft_delete_maintain(): the maintenance task.  Each run moves at
 * most apicore.soft_delete_batch_size rows per table to the archive and
 * purges as many, so every transaction stays short; the worker's next round
 * takes the next batch.
 */
Datum
apicore_soft_delete_maintain(PG_FUNCTION_ARGS)
{
	StringInfoData report;
	List	   *tables;
	ListCell   *lc;

	initStringInfo(&report);
	SPI_connect();
	/* settings of tables dropped since */
	RunSql("DELETE FROM apicore.soft_delete_settings s "
		   "WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = s.tbl)", 0, NULL, NULL);
	tables = MaintainedTables();
	foreach(lc, tables)
	{
		MaintainedTable *mt = lfirst(lc);
		char	   *detail = MaintainTable(mt);

		RecordMaintenance(mt->relid, detail);
		appendStringInfo(&report, "%s%s", report.len ? "; " : "", detail);
	}
	SPI_finish();
	PG_RETURN_TEXT_P(cstring_to_text(report.len ? report.data : "no table to archive or purge"));
}
