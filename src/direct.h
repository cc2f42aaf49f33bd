/*
 * direct.h — writes that bypass the executor's planning (src/direct.c).
 *
 * idempotency.c and the saga files write apicore's tables through the table
 * and index access methods on their hot paths.  This header is the one way
 * they do it: direct.c decides whether such a write behaves exactly as the
 * SQL statement it replaces (DirectApplies), and performs it through
 * ExecSimpleRelationInsert/Update with every index of the table open, so a
 * DBA's extra index, CHECK constraint or foreign key is maintained as SQL
 * would maintain it.  When DirectApplies says no, the caller runs its SQL.
 */
#ifndef APICORE_DIRECT_H
#define APICORE_DIRECT_H

#include "postgres.h"

#include "access/tableam.h"
#include "executor/executor.h"
#include "nodes/execnodes.h"
#include "utils/rel.h"

/* The most columns a shape names (saga_step has 22). */
#define DIRECT_MAX_COLUMNS 32

/* One column a direct path reads or writes: its name and exact type. */
typedef struct DirectColumn
{
	const char *name;
	Oid			type;
} DirectColumn;

/*
 * The columns a direct path relies on in one of apicore's tables, as the
 * install script creates them.  `complete`: the table has no other column
 * (a direct insert fills every column, so a column a DBA added, with its
 * default, must send the write to SQL).
 */
typedef struct DirectShape
{
	const char *table;			/* apicore.<table>, for messages */
	const DirectColumn *columns;
	int			ncolumns;
	bool		complete;
} DirectShape;

/* What a direct write does to a table (for the trigger check). */
#define DIRECT_INSERT	0x01
#define DIRECT_UPDATE	0x02

/*
 * The 0-based attribute offsets in `rel` of `shape`'s columns, in shape
 * order, or NULL when `rel` does not have the shape (a column missing, of
 * another type, or, for a complete shape, one more).  Cached per relation
 * until its relcache entry is invalidated.
 */
extern const int *DirectColumns(Relation rel, const DirectShape *shape);

/*
 * The one decision: a direct write of `events` to `rel` by `role` (needing
 * privileges `mode`) behaves as the SQL statement would.  True only when
 *   - the transaction can write (not read only, not parallel: the executor
 *     raises the error there),
 *   - `rel` has `shape`,
 *   - `role` holds `mode` on `rel` and no row-level security applies to it,
 *   - no trigger but an immediate foreign-key one fires for `events` (row or
 *     statement level: the direct path fires neither BEFORE triggers'
 *     changes back into its result nor statement triggers).
 * CHECK and NOT NULL constraints, the partition constraint, unique and
 * exclusion indexes and foreign keys are then enforced by the write itself.
 */
extern bool DirectApplies(Relation rel, const DirectShape *shape, Oid role,
						  AclMode mode, int events);

/* `role` may do `mode` on `relid` as SQL would, with no row-level security. */
extern bool DirectMay(Oid relid, Oid role, AclMode mode);

/* ---- doing the write ---- */

/* A statement of its own: sees this transaction's earlier work. */
extern Snapshot DirectBeginStatement(void);
extern void DirectEndStatement(void);

/* Executor state for writing `rels` (every index open, AFTER triggers collected). */
typedef struct DirectWrite
{
	EState	   *estate;
	int			nrels;
	ResultRelInfo *rris[4];
} DirectWrite;

extern void DirectBeginWrite(DirectWrite *w, Relation *rels, int n, Snapshot snapshot);
extern void DirectEndWrite(DirectWrite *w);
extern TupleTableSlot *DirectSlot(DirectWrite *w, int rel);
extern void DirectInsert(DirectWrite *w, int rel, TupleTableSlot *slot);
extern void DirectUpdate(DirectWrite *w, int rel, TupleTableSlot *old, TupleTableSlot *new_row);

/* Insert one row given in `shape` order (values/nulls) into `rel`. */
extern void DirectInsertValues(Relation rel, const int *offsets, int ncolumns,
							   const Datum *values, const bool *nulls);

/* ---- reading and locking ---- */

extern TM_Result DirectLockRow(Relation rel, Snapshot snapshot, TupleTableSlot *slot,
							   LockTupleMode mode, LockWaitPolicy wait, bool *traversed);
extern IndexScanDesc DirectKeyScan(Relation rel, Relation index, Snapshot snapshot, int nkeys,
								   const Oid *procs, const Datum *values, ScanKeyData *keys);
extern bool DirectFetchByKey(Relation rel, Oid index_oid, Snapshot snapshot, int nkeys,
							 const Oid *procs, const Datum *values, TupleTableSlot *slot);
extern void DirectCopyValues(TupleTableSlot *to, TupleTableSlot *from);
extern void DirectSetValue(TupleTableSlot *slot, int offset, Datum value, bool isnull);
extern bool DirectTextEquals(Datum value, const char *expected);

#endif							/* APICORE_DIRECT_H */
