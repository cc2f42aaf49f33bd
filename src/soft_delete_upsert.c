/*
 * soft_delete_upsert.c — ON CONFLICT on soft-delete tables, as ORMs write it.
 *
 * soft_delete_enable turns each unique constraint into a partial unique
 * index on live rows ("WHERE deleted_at IS NULL"), so a deleted row's value
 * can be used again.  PostgreSQL infers an ON CONFLICT arbiter from a partial
 * index only when the statement repeats the index's predicate, which no ORM
 * does: `INSERT .. ON CONFLICT (email) DO UPDATE` would fail with 42P10.
 * The planner hook (soft_delete.c) calls SoftDeletePrepareUpsert first, which
 * adds the live-rows predicate to the conflict target when, and only when,
 * the named columns are exactly those of such a partial index and the
 * statement gave no WHERE of its own.  Inference itself stays PostgreSQL's
 * (infer_arbiter_indexes), so it still picks every matching index.
 *
 * `ON CONFLICT ON CONSTRAINT users_email_key` names the constraint that the
 * index replaced.  Parse analysis looks that name up in pg_constraint and
 * fails (42704) before any hook runs, so the name must stay in pg_constraint.
 * It cannot stay as a unique constraint: a unique constraint cannot be
 * partial, and one forged over the partial index would be dumped by pg_dump
 * as a plain UNIQUE (pg_get_constraintdef has no WHERE), which the restore
 * would enforce over deleted rows too.  An exclusion constraint can be
 * partial, but ON CONFLICT DO UPDATE refuses exclusion constraints and
 * inference by columns ignores them.  So enable leaves a constraint trigger
 * under the name (AFTER INSERT ... WHEN (false): it never fires, and
 * information_schema.table_constraints does not list constraint triggers,
 * so schema tools do not see a constraint that is not one).  The hook turns
 * `ON CONSTRAINT <a constraint trigger>` into the inference form of the
 * live-rows partial unique index of the same name on the same table, which
 * is the name enable gave it (the constraint's index had the constraint's
 * name).  Both names are ordinary catalog rows: pg_dump/restore and
 * pg_upgrade carry them, and soft_delete_disable drops the trigger before it
 * adds the constraint back under its name.
 *
 * An upsert whose conflicting row is soft-deleted (its primary key, or a
 * unique key kept over every row, is still taken) fails the row-level
 * security check PostgreSQL makes on the existing row of ON CONFLICT DO
 * UPDATE, with a message about a "USING expression".  The hook gives that
 * very check, the hiding policy's, a clear error instead (23505, see
 * GuardDeletedConflict), so the statement fails exactly where and when it failed
 * before: under the same policies, after any policy checked first, and not
 * at all for roles row-level security does not apply to (they see and
 * update deleted rows, as they read them).  DO NOTHING is left as
 * PostgreSQL does it: the key is taken, so nothing is inserted and no row is
 * returned, as for a live conflict, which is what bulk "skip duplicates"
 * calls (Rails insert_all, Django bulk_create(ignore_conflicts=True),
 * Sequelize bulkCreate({ignoreDuplicates: true})) are documented to do with
 * a row that violates a unique constraint.
 */
#include "postgres.h"

#include "access/relation.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_type.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "nodes/primnodes.h"
#include "optimizer/optimizer.h"
#include "parser/parsetree.h"
#include "rewrite/rewriteManip.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/syscache.h"

#include "apicore.h"

/* The attribute numbers an ON CONFLICT (cols) names, or NULL if it names anything else. */
static Bitmapset *
PlainTargetColumns(List *elems)
{
	Bitmapset  *columns = NULL;
	ListCell   *lc;

	foreach(lc, elems)
	{
		InferenceElem *elem = lfirst_node(InferenceElem, lc);

		/* an expression, a collation or an opclass: leave inference as written */
		if (!IsA(elem->expr, Var) || OidIsValid(elem->infercollid) || OidIsValid(elem->inferopclass))
			return NULL;
		columns = bms_add_member(columns, ((Var *) elem->expr)->varattno);
	}
	return columns;
}

/* `predicate` (an index's, implicit AND) is exactly "<column> IS NULL". */
static bool
IsLiveRowsPredicate(List *predicate, AttrNumber column)
{
	NullTest   *test;

	if (list_length(predicate) != 1 || !IsA(linitial(predicate), NullTest))
		return false;
	test = linitial(predicate);
	return test->nulltesttype == IS_NULL && IsA(test->arg, Var) &&
		((Var *) test->arg)->varattno == column;
}

/* The key columns of `index`, or NULL if it has expressions. */
static Bitmapset *
IndexKeyColumns(Relation index)
{
	Bitmapset  *columns = NULL;

	for (int i = 0; i < index->rd_index->indnkeyatts; i++)
	{
		if (index->rd_index->indkey.values[i] == 0)
			return NULL;
		columns = bms_add_member(columns, index->rd_index->indkey.values[i]);
	}
	return columns;
}

/* `index` is a partial unique index on live rows, as enable makes them. */
static bool
IsLiveRowsIndex(Relation index, AttrNumber deleted_at)
{
	return index->rd_index->indisunique && index->rd_index->indimmediate &&
		IsLiveRowsPredicate(RelationGetIndexPredicate(index), deleted_at);
}

/* The predicate of a partial unique index on live rows over exactly `columns`, or NIL. */
static List *
LiveRowsIndexPredicate(Relation rel, AttrNumber deleted_at, Bitmapset *columns)
{
	List	   *indexes = RelationGetIndexList(rel);
	List	   *predicate = NIL;
	ListCell   *lc;

	foreach(lc, indexes)
	{
		Relation	index = index_open(lfirst_oid(lc), AccessShareLock);

		if (IsLiveRowsIndex(index, deleted_at) && bms_equal(IndexKeyColumns(index), columns))
			predicate = copyObject(RelationGetIndexPredicate(index));
		index_close(index, AccessShareLock);
		if (predicate != NIL)
			break;
	}
	list_free(indexes);
	return predicate;
}

/* `predicate` (an index's, implicit AND) as the conflict target's WHERE. */
static void
TargetPredicate(Query *query, List *predicate)
{
	ChangeVarNodes((Node *) predicate, 1, query->resultRelation, 0);
	query->onConflict->arbiterWhere = (Node *) make_ands_explicit(predicate);
}

/* ON CONFLICT (cols): the live-rows partial unique index over exactly cols. */
static void
TargetLiveRows(Query *query, Relation rel, AttrNumber deleted_at)
{
	Bitmapset  *columns = PlainTargetColumns(query->onConflict->arbiterElems);
	List	   *predicate;

	if (columns == NULL)
		return;
	predicate = LiveRowsIndexPredicate(rel, deleted_at, columns);
	if (predicate != NIL)
		TargetPredicate(query, predicate);
}

/*
 * The live-rows partial unique index that constraint `conoid` stands for:
 * `conoid` is a constraint trigger of the table and the index has its name
 * (see the head comment).  InvalidOid for any other constraint.
 */
static Oid
ReplacedConstraintIndex(Relation rel, Oid conoid, AttrNumber deleted_at)
{
	HeapTuple	tuple = SearchSysCache1(CONSTROID, ObjectIdGetDatum(conoid));
	char	   *name = NULL;
	List	   *indexes;
	ListCell   *lc;
	Oid			found = InvalidOid;

	if (!HeapTupleIsValid(tuple))
		return InvalidOid;
	if (((Form_pg_constraint) GETSTRUCT(tuple))->contype == CONSTRAINT_TRIGGER &&
		((Form_pg_constraint) GETSTRUCT(tuple))->conrelid == RelationGetRelid(rel))
		name = pstrdup(NameStr(((Form_pg_constraint) GETSTRUCT(tuple))->conname));
	ReleaseSysCache(tuple);
	if (name == NULL)
		return InvalidOid;
	indexes = RelationGetIndexList(rel);
	foreach(lc, indexes)
	{
		Relation	index = index_open(lfirst_oid(lc), AccessShareLock);

		if (strcmp(RelationGetRelationName(index), name) == 0 &&
			IsLiveRowsIndex(index, deleted_at) && IndexKeyColumns(index) != NULL)
			found = RelationGetRelid(index);
		index_close(index, AccessShareLock);
		if (OidIsValid(found))
			break;
	}
	list_free(indexes);
	return found;
}

/*
 * ON CONFLICT ON CONSTRAINT <a replaced unique constraint>: written as
 * ON CONFLICT (its columns) WHERE <its index's predicate>, with SELECT on
 * those columns required, as parse analysis requires it for a constraint.
 */
static void
TargetReplacedConstraint(Query *query, Relation rel, AttrNumber deleted_at)
{
	OnConflictExpr *conflict = query->onConflict;
	Oid			indexoid = ReplacedConstraintIndex(rel, conflict->constraint, deleted_at);
	Relation	index;
	Bitmapset  *selected = NULL;

	if (!OidIsValid(indexoid))
		return;
	index = index_open(indexoid, AccessShareLock);
	conflict->arbiterElems = NIL;
	for (int i = 0; i < index->rd_index->indnkeyatts; i++)
	{
		AttrNumber	attno = index->rd_index->indkey.values[i];
		Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attno - 1);
		InferenceElem *elem = makeNode(InferenceElem);

		elem->expr = (Node *) makeVar(query->resultRelation, attno, att->atttypid,
									  att->atttypmod, att->attcollation, 0);
		elem->infercollid = InvalidOid;
		elem->inferopclass = InvalidOid;
		conflict->arbiterElems = lappend(conflict->arbiterElems, elem);
		selected = bms_add_member(selected, attno - FirstLowInvalidHeapAttributeNumber);
	}
	conflict->constraint = InvalidOid;
	TargetPredicate(query, copyObject(RelationGetIndexPredicate(index)));
	index_close(index, AccessShareLock);
	ApicoreAddSelectedCols(query, rt_fetch(query->resultRelation, query->rtable), selected);
}

/* ---------- DO UPDATE meeting a soft-deleted row ---------- */

/* apicore._soft_delete_conflict(regclass, text, jsonb), or InvalidOid before the update that adds it. */
static Oid
ConflictFunction(void)
{
	Oid			nsp = get_namespace_oid("apicore", true);
	Oid			argtypes[3] = {REGCLASSOID, TEXTOID, JSONBOID};

	if (!OidIsValid(nsp))
		return InvalidOid;
	return GetSysCacheOid3(PROCNAMEARGSNSP, Anum_pg_proc_oid,
						   CStringGetDatum("_soft_delete_conflict"),
						   PointerGetDatum(buildoidvector(argtypes, 3)),
						   ObjectIdGetDatum(nsp));
}

/* The columns the conflict target names (after TargetReplacedConstraint), or NULL. */
static Bitmapset *
TargetColumns(OnConflictExpr *conflict)
{
	Oid			indexoid;
	Relation	index;
	Bitmapset  *columns;

	if (!OidIsValid(conflict->constraint))
		return PlainTargetColumns(conflict->arbiterElems);
	indexoid = get_constraint_index(conflict->constraint);
	if (!OidIsValid(indexoid))
		return NULL;
	index = index_open(indexoid, AccessShareLock);
	columns = IndexKeyColumns(index);
	index_close(index, AccessShareLock);
	return columns;
}

static Bitmapset *
PrimaryKeyColumns(Relation rel)
{
	Oid			indexoid = ApicorePrimaryKeyIndex(rel);
	Relation	index;
	Bitmapset  *columns;

	if (!OidIsValid(indexoid))
		return NULL;
	index = index_open(indexoid, AccessShareLock);
	columns = IndexKeyColumns(index);
	index_close(index, AccessShareLock);
	return columns;
}

/* "(a, b)": the columns, quoted. */
static char *
ColumnList(Relation rel, Bitmapset *columns)
{
	StringInfoData buf;
	int			attno = -1;

	initStringInfo(&buf);
	while ((attno = bms_next_member(columns, attno)) >= 0)
		appendStringInfo(&buf, "%s%s", buf.len ? ", " : "(",
						 quote_identifier(NameStr(TupleDescAttr(RelationGetDescr(rel), attno - 1)->attname)));
	appendStringInfoChar(&buf, ')');
	return buf.data;
}

/* jsonb_build_object('col', <the existing row's col>, ...) over `columns`. */
static Expr *
ExistingKeyJson(Relation rel, Index varno, Bitmapset *columns)
{
	List	   *args = NIL;
	int			attno = -1;

	while ((attno = bms_next_member(columns, attno)) >= 0)
	{
		Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attno - 1);

		args = lappend(args, makeConst(TEXTOID, -1, DEFAULT_COLLATION_OID, -1,
									   CStringGetTextDatum(NameStr(att->attname)), false, false));
		args = lappend(args, makeVar(varno, attno, att->atttypid, att->atttypmod,
									 att->attcollation, 0));
	}
	return (Expr *) makeFuncExpr(F_JSONB_BUILD_OBJECT_ANY, JSONBOID, args, InvalidOid,
								 InvalidOid, COERCE_EXPLICIT_CALL);
}

/*
 * apicore._soft_delete_conflict(tbl, target, pk) for the existing row.  The
 * row's key values are given only when the target is the primary key: they
 * are then the values the statement itself proposed.  For another target
 * they would show the hidden row's primary key, so only the target's
 * columns are named.
 */
static Expr *
ConflictCall(Oid function, Relation rel, Index varno, OnConflictExpr *conflict)
{
	Bitmapset  *target = TargetColumns(conflict);
	Bitmapset  *pk = PrimaryKeyColumns(rel);
	Expr	   *tbl = (Expr *) makeConst(REGCLASSOID, -1, InvalidOid, sizeof(Oid),
										 ObjectIdGetDatum(RelationGetRelid(rel)), false, true);
	Expr	   *columns = target == NULL ?
		(Expr *) makeNullConst(TEXTOID, -1, DEFAULT_COLLATION_OID) :
		(Expr *) makeConst(TEXTOID, -1, DEFAULT_COLLATION_OID, -1,
						   CStringGetTextDatum(ColumnList(rel, target)), false, false);
	Expr	   *key = pk != NULL && bms_equal(target, pk) ?
		ExistingKeyJson(rel, varno, pk) : (Expr *) makeNullConst(JSONBOID, -1, InvalidOid);

	return (Expr *) makeFuncExpr(function, BOOLOID, list_make3(tbl, columns, key), InvalidOid,
								 InvalidOid, COERCE_EXPLICIT_CALL);
}

/* CASE WHEN qual THEN true ELSE refusal END: refusal runs only when qual does not hold. */
static Node *
RefuseUnless(Node *qual, Expr *refusal)
{
	CaseWhen   *when = makeNode(CaseWhen);
	CaseExpr   *expr = makeNode(CaseExpr);

	when->expr = (Expr *) qual;
	when->result = (Expr *) makeBoolConst(true, false);
	when->location = -1;
	expr->casetype = BOOLOID;
	expr->casecollid = InvalidOid;
	expr->arg = NULL;
	expr->args = list_make1(when);
	expr->defresult = refusal;
	expr->location = -1;
	return (Node *) expr;
}

/*
 * The rewriter gave ON CONFLICT DO UPDATE one check per policy of the row it
 * conflicts with (WCO_RLS_CONFLICT_CHECK), in PostgreSQL's order; the hiding
 * policy's says "deleted_at IS NULL".  Where that check fails, raise the
 * soft-delete error instead of PostgreSQL's generic one.
 */
static void
GuardDeletedConflict(Query *query, Relation rel)
{
	Oid			function = ConflictFunction();
	ListCell   *lc;

	if (!OidIsValid(function))
		return;
	foreach(lc, query->withCheckOptions)
	{
		WithCheckOption *wco = lfirst_node(WithCheckOption, lc);

		if (wco->kind == WCO_RLS_CONFLICT_CHECK && wco->polname != NULL &&
			strcmp(wco->polname, SOFT_DELETE_HIDE_POLICY) == 0)
			wco->qual = RefuseUnless(wco->qual,
									 ConflictCall(function, rel, query->resultRelation, query->onConflict));
	}
}

void
SoftDeletePrepareUpsert(Query *query)
{
	OnConflictExpr *conflict = query->onConflict;
	AttrNumber	deleted_at;
	Relation	rel;

	if (conflict == NULL)
		return;
	deleted_at = SoftDeleteColumnOf(rt_fetch(query->resultRelation, query->rtable)->relid);
	if (deleted_at == InvalidAttrNumber)
		return;
	rel = table_open(rt_fetch(query->resultRelation, query->rtable)->relid, NoLock);	/* locked by parse analysis */
	if (OidIsValid(conflict->constraint))
		TargetReplacedConstraint(query, rel, deleted_at);
	else if (conflict->arbiterElems != NIL && conflict->arbiterWhere == NULL)
		TargetLiveRows(query, rel, deleted_at);
	if (conflict->action == ONCONFLICT_UPDATE)
		GuardDeletedConflict(query, rel);
	table_close(rel, NoLock);
}

/*
 * apicore._soft_delete_conflict(tbl, target, pk): the error of an upsert
 * whose conflicting row is soft-deleted.  Never returns.  23505, as a plain
 * INSERT of that key raises and as restore raises when a row holds a unique
 * value: the key is taken, and ORMs turn 23505 into the exception
 * applications already handle for it (RecordNotUnique, IntegrityError,
 * UniqueConstraintError).
 */
PG_FUNCTION_INFO_V1(apicore_soft_delete_conflict);

Datum
apicore_soft_delete_conflict(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_ARGISNULL(0) ? InvalidOid : PG_GETARG_OID(0);
	char	   *relname = OidIsValid(relid) ? get_rel_name(relid) : NULL;
	char	   *qualname = relname ?
		quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), relname) : "?";
	char	   *target = PG_ARGISNULL(1) ? "key" : text_to_cstring(PG_GETARG_TEXT_PP(1));

	if (relname == NULL)
		relname = "?";
	if (!PG_ARGISNULL(2))
	{
		char	   *key = DatumGetCString(DirectFunctionCall1(jsonb_out, PG_GETARG_DATUM(2)));

		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("apicore: cannot upsert into \"%s\": the row with primary key %s is soft-deleted",
						relname, key),
				 errdetail("ON CONFLICT DO UPDATE does not update a soft-deleted row; its key stays taken until the row is purged."),
				 errhint("Restore it with apicore.soft_delete_restore('%s', '%s'), or insert the row with another key.",
						 qualname, key)));
	}
	ereport(ERROR,
			(errcode(ERRCODE_UNIQUE_VIOLATION),
			 errmsg("apicore: cannot upsert into \"%s\": the row that conflicts on %s is soft-deleted",
					relname, target),
			 errdetail("ON CONFLICT DO UPDATE does not update a soft-deleted row; its key stays taken until the row is purged."),
			 errhint("Restore it with apicore.soft_delete_restore('%s', <its primary key>), or insert the row with other values.",
					 qualname)));
	PG_RETURN_NULL();
}
