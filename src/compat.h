/*
 * compat.h — the PostgreSQL APIs that changed between 15 and 18, behind one
 * name each, so capability files carry no version guards of their own.
 * Each guard sits at the version whose source made the change.
 */
#ifndef APICORE_COMPAT_H
#define APICORE_COMPAT_H

#include "postgres.h"

#include "access/genam.h"
#include "storage/proc.h"
#include "catalog/pg_class.h"
#include "catalog/pg_proc.h"
#include "utils/acl.h"
#include "utils/rel.h"

#if PG_VERSION_NUM >= 160000
#include "varatt.h"				/* 16 moved VARDATA_ANY & co. out of postgres.h */
#endif

/* 18 replaced pg_attribute_noreturn() after a declaration with pg_noreturn before it */
#ifndef pg_noreturn
#define pg_noreturn _Noreturn
#endif

/* 17 numbers backends by ProcNumber (from 0) instead of BackendId (from 1) */
#if PG_VERSION_NUM >= 170000
#define ApicoreMyBackend		MyProcNumber
#define ApicoreInvalidBackend	INVALID_PROC_NUMBER
#else
#define ApicoreMyBackend		MyBackendId
#define ApicoreInvalidBackend	InvalidBackendId
#endif

/* 16 folded pg_proc_aclcheck into object_aclcheck */
#if PG_VERSION_NUM >= 160000
#define ApicoreProcAclcheck(fn, role, mode) \
	object_aclcheck(ProcedureRelationId, (fn), (role), (mode))
#else
#define ApicoreProcAclcheck(fn, role, mode) pg_proc_aclcheck((fn), (role), (mode))
#endif

/* 16 folded pg_class_ownercheck into object_ownercheck */
#if PG_VERSION_NUM >= 160000
#define ApicoreRelationOwnercheck(relid, role) \
	object_ownercheck(RelationRelationId, (relid), (role))
#else
#define ApicoreRelationOwnercheck(relid, role) pg_class_ownercheck((relid), (role))
#endif

/* 16 gave stringToQualifiedNameList a soft-error context (NULL: throw) */
#if PG_VERSION_NUM >= 160000
#define ApicoreQualifiedNameList(s) stringToQualifiedNameList((s), NULL)
#else
#define ApicoreQualifiedNameList(s) stringToQualifiedNameList(s)
#endif

/* 18 added scan instrumentation to index_beginscan (NULL: none) */
#if PG_VERSION_NUM >= 180000
#define ApicoreIndexBeginscan(heap, index, snapshot, nkeys, norderbys) \
	index_beginscan((heap), (index), (snapshot), NULL, (nkeys), (norderbys))
#else
#define ApicoreIndexBeginscan(heap, index, snapshot, nkeys, norderbys) \
	index_beginscan((heap), (index), (snapshot), (nkeys), (norderbys))
#endif

/* 18 asks whether a deferrable primary key will do; apicore needs an immediate one */
#if PG_VERSION_NUM >= 180000
#define ApicorePrimaryKeyIndex(rel) RelationGetPrimaryKeyIndex((rel), false)
#else
#define ApicorePrimaryKeyIndex(rel) RelationGetPrimaryKeyIndex(rel)
#endif

/*
 * Two changes need code, in compat.c: 16 moved a relation's permissions
 * (and its updated columns) from RangeTblEntry to RTEPermissionInfo, and 18
 * asks ExecInitRangeTable which entries survived pruning.
 */
struct EState;
struct Query;
struct RangeTblEntry;
extern void ApicoreInitRangeTable(struct EState *estate, List *range_table);
extern void ApicoreSetUpdatedCols(struct Query *query, struct RangeTblEntry *rte,
								  Bitmapset *cols);
extern void ApicoreAddSelectedCols(struct Query *query, struct RangeTblEntry *rte,
								   Bitmapset *cols);

#endif							/* APICORE_COMPAT_H */
