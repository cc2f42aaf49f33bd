/*
 * direct.c — the one module for writes that bypass the executor's planning.
 *
 * Owns the decision whether a hot path may write one of apicore's tables
 * through the table and index access methods (DirectApplies), and the write
 * itself.  It is the way logical replication applies a change
 * (execReplication.c): an executor state with the table's every index open
 * (ExecOpenIndices), then ExecSimpleRelationInsert/Update, which check
 * CHECK/NOT NULL and partition constraints, insert into every index (a DBA's
 * extra btree, partial or expression index included, unique and exclusion
 * checks included) and queue AFTER ROW triggers (foreign keys), fired when
 * the write ends.  Used by idempotency.c (a key's row) and saga_direct.c
 * (claims and reports).
 *
 * What it does not do is what a statement adds on top: statement triggers,
 * BEFORE triggers' changes seen by the caller, row-level security policies,
 * privilege checks, columns filled from defaults.  So a direct write applies
 * only where none of these matters; anywhere else the caller runs its SQL,
 * which raises the error or applies the policy.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"

#include "apicore.h"
#include "direct.h"

/* ---------- shapes: the columns a direct path relies on ---------- */

typedef struct ShapeKey
{
	Oid			relid;
	const DirectShape *shape;
} ShapeKey;

typedef struct ShapeEntry
{
	ShapeKey	key;
	bool		matches;
	int			offsets[DIRECT_MAX_COLUMNS];
} ShapeEntry;

static HTAB *shapes = NULL;

/* Forget what was found for a relation whose definition may have changed. */
static void
ShapesInvalidate(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	ShapeEntry *entry;

	hash_seq_init(&status, shapes);
	while ((entry = hash_seq_search(&status)) != NULL)
		if (!OidIsValid(relid) || entry->key.relid == relid)
			(void) hash_search(shapes, &entry->key, HASH_REMOVE, NULL);
}

static bool
FindShape(Relation rel, const DirectShape *shape, int *offsets)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			live = 0;

	Assert(shape->ncolumns <= DIRECT_MAX_COLUMNS);
	for (int i = 0; i < desc->natts; i++)
		live += TupleDescAttr(desc, i)->attisdropped ? 0 : 1;
	if (shape->complete && live != shape->ncolumns)
		return false;
	for (int c = 0; c < shape->ncolumns; c++)
	{
		offsets[c] = -1;
		for (int i = 0; i < desc->natts && offsets[c] < 0; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);

			if (!att->attisdropped && strcmp(NameStr(att->attname), shape->columns[c].name) == 0)
			{
				if (att->atttypid != shape->columns[c].type)
					return false;
				offsets[c] = i;
			}
		}
		if (offsets[c] < 0)
			return false;
	}
	return true;
}

const int *
DirectColumns(Relation rel, const DirectShape *shape)
{
	ShapeKey	key = {RelationGetRelid(rel), shape};
	ShapeEntry *entry;
	bool		found;

	if (shapes == NULL)
	{
		shapes = ApicoreBackendHash("apicore direct shapes", sizeof(ShapeKey), sizeof(ShapeEntry));
		CacheRegisterRelcacheCallback(ShapesInvalidate, (Datum) 0);
	}
	entry = hash_search(shapes, &key, HASH_ENTER, &found);
	if (!found)
		entry->matches = FindShape(rel, shape, entry->offsets);
	return entry->matches ? entry->offsets : NULL;
}

/* ---------- the decision ---------- */

bool
DirectMay(Oid relid, Oid role, AclMode mode)
{
	return pg_class_aclmask(relid, role, mode, ACLMASK_ALL) == mode &&
		check_enable_rls(relid, role, true) != RLS_ENABLED;
}

/*
 * No trigger but an immediate foreign-key one fires for `events`.  A
 * deferred one is refused too: a write made at pre-commit (idempotency)
 * comes after deferred triggers have run.
 */
static bool
OnlyImmediateForeignKeys(Relation rel, int events)
{
	TriggerDesc *triggers = rel->trigdesc;

	for (int i = 0; triggers != NULL && i < triggers->numtriggers; i++)
	{
		Trigger    *t = &triggers->triggers[i];
		bool		fires = ((events & DIRECT_INSERT) && TRIGGER_FOR_INSERT(t->tgtype)) ||
			((events & DIRECT_UPDATE) && TRIGGER_FOR_UPDATE(t->tgtype));

		if (fires && t->tgenabled != TRIGGER_DISABLED && (!t->tgisinternal || t->tginitdeferred))
			return false;
	}
	return true;
}

bool
DirectApplies(Relation rel, const DirectShape *shape, Oid role, AclMode mode, int events)
{
	/* read-only transactions and standbys: the executor raises 25006 */
	if (XactReadOnly || IsInParallelMode())
		return false;
	return DirectColumns(rel, shape) != NULL &&
		DirectMay(RelationGetRelid(rel), role, mode) &&
		OnlyImmediateForeignKeys(rel, events);
}

/* ---------- the write ---------- */

Snapshot
DirectBeginStatement(void)
{
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());
	return GetActiveSnapshot();
}

void
DirectEndStatement(void)
{
	PopActiveSnapshot();
	CommandCounterIncrement();
}

void
DirectBeginWrite(DirectWrite *w, Relation *rels, int n, Snapshot snapshot)
{
	List	   *range_table = NIL;

	Assert(n <= lengthof(w->rris));
	w->estate = CreateExecutorState();
	w->nrels = n;
	for (int i = 0; i < n; i++)
	{
		RangeTblEntry *rte = makeNode(RangeTblEntry);

		rte->rtekind = RTE_RELATION;
		rte->relid = RelationGetRelid(rels[i]);
		rte->relkind = RELKIND_RELATION;
		rte->rellockmode = RowExclusiveLock;
		range_table = lappend(range_table, rte);
	}
	ApicoreInitRangeTable(w->estate, range_table);
	for (int i = 0; i < n; i++)
	{
		w->rris[i] = makeNode(ResultRelInfo);
		InitResultRelInfo(w->rris[i], rels[i], i + 1, NULL, 0);
		ExecOpenIndices(w->rris[i], false);
		/* so that AFTER triggers (foreign keys) find it rather than open it again */
		w->estate->es_opened_result_relations =
			lappend(w->estate->es_opened_result_relations, w->rris[i]);
	}
	w->estate->es_output_cid = GetCurrentCommandId(true);
	w->estate->es_snapshot = snapshot;
	AfterTriggerBeginQuery();
}

void
DirectEndWrite(DirectWrite *w)
{
	AfterTriggerEndQuery(w->estate);
	/* our indexes, and any table a trigger had to open (as ExecEndPlan) */
	ExecCloseResultRelations(w->estate);
	ExecResetTupleTable(w->estate->es_tupleTable, false);
	FreeExecutorState(w->estate);
	w->estate = NULL;
}

/* A virtual slot for a row of relation `rel` of the write, freed with it. */
TupleTableSlot *
DirectSlot(DirectWrite *w, int rel)
{
	return ExecInitExtraTupleSlot(w->estate, RelationGetDescr(w->rris[rel]->ri_RelationDesc),
								  &TTSOpsVirtual);
}

void
DirectInsert(DirectWrite *w, int rel, TupleTableSlot *slot)
{
	ExecSimpleRelationInsert(w->rris[rel], w->estate, slot);
}

void
DirectUpdate(DirectWrite *w, int rel, TupleTableSlot *old, TupleTableSlot *new_row)
{
	ExecSimpleRelationUpdate(w->rris[rel], w->estate, NULL, old, new_row);
}

void
DirectInsertValues(Relation rel, const int *offsets, int ncolumns, const Datum *values,
				   const bool *nulls)
{
	bool		pushed = !ActiveSnapshotSet();
	DirectWrite w;
	TupleTableSlot *slot;

	/* at pre-commit no statement is running: index expressions may need a snapshot */
	if (pushed)
		PushActiveSnapshot(GetLatestSnapshot());
	DirectBeginWrite(&w, &rel, 1, GetActiveSnapshot());
	slot = DirectSlot(&w, 0);
	ExecClearTuple(slot);
	for (int i = 0; i < slot->tts_tupleDescriptor->natts; i++)
		DirectSetValue(slot, i, (Datum) 0, true);
	for (int c = 0; c < ncolumns; c++)
		DirectSetValue(slot, offsets[c], values[c], nulls[c]);
	ExecStoreVirtualTuple(slot);
	DirectInsert(&w, 0, slot);
	DirectEndWrite(&w);
	if (pushed)
		PopActiveSnapshot();
}

/* ---------- reading and locking ---------- */

/*
 * Lock the row in `slot` (found by `snapshot`) as UPDATE or FOR UPDATE
 * would, following it to its latest version in READ COMMITTED.  TM_Ok with
 * the latest version in `slot`, or the failure (never TM_Updated in READ
 * COMMITTED; an error in REPEATABLE READ, as the executor raises).
 */
TM_Result
DirectLockRow(Relation rel, Snapshot snapshot, TupleTableSlot *slot, LockTupleMode mode,
			  LockWaitPolicy wait, bool *traversed)
{
	TM_FailureData tmfd;
	TM_Result	result;
	int			flags = TUPLE_LOCK_FLAG_LOCK_UPDATE_IN_PROGRESS |
		(IsolationUsesXactSnapshot() ? 0 : TUPLE_LOCK_FLAG_FIND_LAST_VERSION);

	result = table_tuple_lock(rel, &slot->tts_tid, snapshot, slot, GetCurrentCommandId(false),
							  mode, wait, flags, &tmfd);
	if (result == TM_Updated && IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not serialize access due to concurrent update"),
				 errhint("Retry the transaction.")));
	if (result == TM_Invisible)
		elog(ERROR, "apicore: attempted to lock an invisible row of apicore.%s",
			 RelationGetRelationName(rel));
	*traversed = tmfd.traversed;
	if (result == TM_Ok)
		slot_getallattrs(slot);	/* the lock stored the row afresh */
	return result;
}

/* Scan `index` of `rel` for rows whose leading key columns equal `values`. */
IndexScanDesc
DirectKeyScan(Relation rel, Relation index, Snapshot snapshot, int nkeys, const Oid *procs,
			  const Datum *values, ScanKeyData *keys)
{
	IndexScanDesc scan = ApicoreIndexBeginscan(rel, index, snapshot, nkeys, 0);

	for (int k = 0; k < nkeys; k++)
	{
		ScanKeyInit(&keys[k], k + 1, BTEqualStrategyNumber, procs[k], values[k]);
		keys[k].sk_collation = index->rd_indcollation[k];
	}
	index_rescan(scan, keys, nkeys, NULL, 0);
	return scan;
}

/* The row of `rel` whose primary key `index` is `values`, into `slot`. */
bool
DirectFetchByKey(Relation rel, Oid index_oid, Snapshot snapshot, int nkeys, const Oid *procs,
				 const Datum *values, TupleTableSlot *slot)
{
	Relation	index = index_open(index_oid, AccessShareLock);
	ScanKeyData keys[3];
	IndexScanDesc scan;
	bool		found;

	Assert(nkeys <= lengthof(keys));
	scan = DirectKeyScan(rel, index, snapshot, nkeys, procs, values, keys);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	if (found)
		slot_getallattrs(slot);
	index_endscan(scan);
	index_close(index, NoLock);
	return found;
}

/* A copy of `from` in the virtual slot `to`, to be changed and written. */
void
DirectCopyValues(TupleTableSlot *to, TupleTableSlot *from)
{
	int			natts = from->tts_tupleDescriptor->natts;

	ExecClearTuple(to);
	memcpy(to->tts_values, from->tts_values, sizeof(Datum) * natts);
	memcpy(to->tts_isnull, from->tts_isnull, sizeof(bool) * natts);
}

void
DirectSetValue(TupleTableSlot *slot, int offset, Datum value, bool isnull)
{
	slot->tts_values[offset] = value;
	slot->tts_isnull[offset] = isnull;
}

bool
DirectTextEquals(Datum value, const char *expected)
{
	text	   *t = DatumGetTextPP(value);

	return VARSIZE_ANY_EXHDR(t) == strlen(expected) &&
		memcmp(VARDATA_ANY(t), expected, VARSIZE_ANY_EXHDR(t)) == 0;
}
