/*
 * compat.c — the version differences that take more than a renamed call
 * (the rest are macros in compat.h).
 */
#include "postgres.h"

#include "executor/executor.h"
#include "nodes/parsenodes.h"
#if PG_VERSION_NUM >= 160000
#include "parser/parse_relation.h"
#endif

#include "apicore.h"

/*
 * Open the range table of apicore's direct writes (saga.c).  From 16 each
 * relation needs an RTEPermissionInfo, or the executor's trigger and
 * column-map lookups fail with "invalid perminfoindex 0"; apicore checks the
 * privileges itself before it gets here, so none are required again.
 */
void
ApicoreInitRangeTable(EState *estate, List *range_table)
{
#if PG_VERSION_NUM >= 160000
	List	   *perminfos = NIL;
	ListCell   *lc;

	foreach(lc, range_table)
	{
		RangeTblEntry *rte = lfirst_node(RangeTblEntry, lc);
		RTEPermissionInfo *perminfo = makeNode(RTEPermissionInfo);

		perminfo->relid = rte->relid;
		perminfo->inh = false;
		perminfo->requiredPerms = 0;
		perminfo->checkAsUser = InvalidOid;
		perminfos = lappend(perminfos, perminfo);
		rte->perminfoindex = list_length(perminfos);
	}
#if PG_VERSION_NUM >= 180000
	ExecInitRangeTable(estate, range_table, perminfos,
					   bms_add_range(NULL, 1, list_length(range_table)));
#else
	ExecInitRangeTable(estate, range_table, perminfos);
#endif
#else
	ExecInitRangeTable(estate, range_table);
#endif
}

/* The columns an UPDATE made from a soft DELETE sets (what UPDATE OF triggers see). */
void
ApicoreSetUpdatedCols(Query *query, RangeTblEntry *rte, Bitmapset *cols)
{
#if PG_VERSION_NUM >= 160000
	getRTEPermissionInfo(query->rteperminfos, rte)->updatedCols = cols;
#else
	rte->updatedCols = cols;
#endif
}

/* Columns a statement reads (SELECT privilege on them is required). */
void
ApicoreAddSelectedCols(Query *query, RangeTblEntry *rte, Bitmapset *cols)
{
#if PG_VERSION_NUM >= 160000
	RTEPermissionInfo *perminfo = getRTEPermissionInfo(query->rteperminfos, rte);

	perminfo->selectedCols = bms_add_members(perminfo->selectedCols, cols);
#else
	rte->selectedCols = bms_add_members(rte->selectedCols, cols);
#endif
}
