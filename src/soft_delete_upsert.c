/*
 * soft_delete_upsert.c — ON CONFLICT on soft-delete tables, as ORMs write it.
 *
 * soft_delete_enable turns each unique constraint into a partial unique
 * index on live rows ("WHERE deleted_at IS NULL"), so a deleted row's value
 * can be used again.  PostgreSQL infers an ON CONFLICT arbiter from a partial
 * index only when the statement repeats the index's predicate, which no ORM
 * does: `INSERT .. ON CONFLICT (email) DO UPDATE` would fail with 42P10.
 * The planner hook (soft_delete.c) calls SoftDeleteInferArbiter first, which
 * adds the live-rows predicate to the conflict target when, and only when,
 * the named columns are exactly those of such a partial index and the
 * statement gave no WHERE of its own.  Inference itself stays PostgreSQL's
 * (infer_arbiter_indexes), so it still picks every matching index.
 */
#include "postgres.h"

#include "access/relation.h"
#include "access/table.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "nodes/primnodes.h"
#include "optimizer/optimizer.h"
#include "parser/parsetree.h"
#include "rewrite/rewriteManip.h"
#include "utils/rel.h"
#include "utils/relcache.h"

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
		List	   *pred = RelationGetIndexPredicate(index);

		if (index->rd_index->indisunique && index->rd_index->indimmediate &&
			IsLiveRowsPredicate(pred, deleted_at) &&
			bms_equal(IndexKeyColumns(index), columns))
			predicate = copyObject(pred);
		index_close(index, AccessShareLock);
		if (predicate != NIL)
			break;
	}
	list_free(indexes);
	return predicate;
}

void
SoftDeleteInferArbiter(Query *query)
{
	OnConflictExpr *conflict = query->onConflict;
	RangeTblEntry *rte;
	AttrNumber	deleted_at;
	Bitmapset  *columns;
	Relation	rel;
	List	   *predicate;

	if (conflict == NULL || conflict->arbiterElems == NIL || conflict->arbiterWhere != NULL ||
		OidIsValid(conflict->constraint))
		return;
	rte = rt_fetch(query->resultRelation, query->rtable);
	deleted_at = SoftDeleteColumnOf(rte->relid);
	if (deleted_at == InvalidAttrNumber)
		return;
	columns = PlainTargetColumns(conflict->arbiterElems);
	if (columns == NULL)
		return;
	rel = table_open(rte->relid, NoLock);	/* locked by parse analysis */
	predicate = LiveRowsIndexPredicate(rel, deleted_at, columns);
	table_close(rel, NoLock);
	if (predicate == NIL)
		return;
	ChangeVarNodes((Node *) predicate, 1, query->resultRelation, 0);
	conflict->arbiterWhere = (Node *) make_ands_explicit(predicate);
}
