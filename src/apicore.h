/*
 * apicore.h — what the capability files share, and nothing else.
 *
 * Each capability lives in one C file (idempotency.c, cursor.c, keyset.c,
 * rate_limit.c, saga.c, soft_delete.c, worker.c; crypto.c owns libsodium and
 * the cursor keys).  A capability may expose an Init function, called from
 * _PG_init to define its settings, and a pair of shared-memory functions.  apicore.c lists them in one table; nothing else is wired by hand.
 *
 * Maintenance tasks are registered in SQL, not C: a capability's install
 * fragment inserts a row into apicore.maintenance_task naming a function
 * `RETURNS text`.  The worker and apicore.run_maintenance() call every row.
 */
#ifndef APICORE_H
#define APICORE_H

#include "postgres.h"

#include "fmgr.h"
#include "nodes/parsenodes.h"
#include "utils/hsearch.h"

#include "compat.h"

#ifndef APICORE_VERSION
#define APICORE_VERSION "unknown"
#endif

/* A capability's hooks into library load and shared-memory setup. */
typedef struct ApicoreCapability
{
	const char *name;
	void		(*init) (void);			/* define settings; always called (NULL: none) */
	void		(*shmem_request) (void);	/* RequestAddinShmemSpace etc.; preload only */
	void		(*shmem_startup) (void);	/* ShmemInitStruct etc.; preload only */
} ApicoreCapability;

/* true when loaded through shared_preload_libraries */
extern bool apicore_preloaded;

/*
 * Raise SQLSTATE 55000 naming `feature` unless apicore was preloaded; the
 * hint names the setting to change.
 */
extern void ApicoreRequirePreload(const char *feature);

/*
 * Raise 22004 unless argument `argno` is non-NULL: "<prefix><name> must not
 * be NULL", with `hint` (NULL: "Pass a value for <name>.").
 */
extern void ApicoreRequireArg(FunctionCallInfo fcinfo, int argno, const char *prefix,
							  const char *name, const char *hint);

/*
 * Run body(arg) in a subtransaction.  On success returns NULL and keeps its
 * work; on error rolls the subtransaction back and returns the error (in the
 * caller's memory context), so the caller can record it and go on.  Query
 * cancel is never swallowed: it is rethrown.
 */
extern ErrorData *ApicoreTrySubtransaction(void (*body) (void *arg), void *arg);

/*
 * A backend-lifetime hash table (in TopMemoryContext) whose keys are
 * keysize bytes compared as binary: a cache kept until the backend exits.
 */
extern HTAB *ApicoreBackendHash(const char *name, Size keysize, Size entrysize);

/*
 * Two texts are equal under a deterministic collation (every column and
 * argument apicore compares): the same bytes.
 */
extern bool ApicoreTextEqual(const text *a, const text *b);

/*
 * Switching identity (identity.c): the only way apicore runs code as another
 * role.  ApicoreBecome switches to `role` under SECURITY_RESTRICTED_OPERATION
 * (plus extra_sec_context, e.g. SECURITY_NOFORCE_RLS) with search_path =
 * pg_catalog, pg_temp in a new GUC nest level; ApicoreRestore undoes both.
 * An error between the two is unwound by the (sub)transaction abort.
 */
typedef struct ApicoreIdentity
{
	Oid			saved_user;
	int			saved_sec;
	int			guc_nest;
} ApicoreIdentity;

extern void ApicoreBecome(ApicoreIdentity *id, Oid role, int extra_sec_context);
extern void ApicoreRestore(ApicoreIdentity *id);
extern Oid	ApicoreRelationOwner(Oid relid);
extern Oid	ApicoreOwner(void);
extern Oid	ApicoreTableOid(const char *name);

/* Capability entry points (one per file). */
extern void WorkerInit(void);
extern void WorkerShmemRequest(void);
extern void WorkerShmemStartup(void);
extern void CryptoInit(void);
extern void IdempotencyInit(void);
extern void IdempotencyShmemRequest(void);
extern void IdempotencyShmemStartup(void);
extern void KeysetInit(void);
extern void RateLimitInit(void);
extern void RateLimitShmemRequest(void);
extern void RateLimitShmemStartup(void);
extern void SagaInit(void);
extern void SagaShmemRequest(void);
extern void SagaShmemStartup(void);
extern void SoftDeleteInit(void);
extern AttrNumber SoftDeleteColumnOf(Oid relid);
/* the policy that hides deleted rows (soft_delete.c makes it, soft_delete_upsert.c reads its checks) */
#define SOFT_DELETE_HIDE_POLICY "apicore_soft_delete"
extern void SoftDeletePrepareUpsert(Query *query);
extern void TenantInit(void);

#endif							/* APICORE_H */
