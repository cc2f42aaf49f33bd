/*
 * apicore.c — library entry point.
 *
 * Owns _PG_init: libsodium start-up, the shared-memory request/startup hooks
 * (the pg_stat_statements shape) and the table of capabilities that hang off
 * them.  Capabilities define their own settings in their Init functions.
 */
#include "postgres.h"

#include <sodium.h>

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "apicore.h"

PG_MODULE_MAGIC;

bool		apicore_preloaded = false;

static const ApicoreCapability capabilities[] = {
	{"maintenance", WorkerInit, WorkerShmemRequest, WorkerShmemStartup},
	{"crypto", CryptoInit, NULL, NULL},
	{"idempotency", IdempotencyInit, IdempotencyShmemRequest, IdempotencyShmemStartup},
	{"cursor", NULL, NULL, NULL},
	{"keyset", KeysetInit, NULL, NULL},
	{"rate_limit", RateLimitInit, RateLimitShmemRequest, RateLimitShmemStartup},
	{"saga", SagaInit, SagaShmemRequest, SagaShmemStartup},
	{"soft_delete", SoftDeleteInit, NULL, NULL},
	{"tenant", TenantInit, NULL, NULL},
};

#define NUM_CAPABILITIES (sizeof(capabilities) / sizeof(capabilities[0]))

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void		_PG_init(void);
PG_FUNCTION_INFO_V1(apicore_version);

static void
ApicoreShmemRequest(void)
{
#if PG_VERSION_NUM >= 150000
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
#endif
	for (size_t i = 0; i < NUM_CAPABILITIES; i++)
		if (capabilities[i].shmem_request)
			capabilities[i].shmem_request();
}

static void
ApicoreShmemStartup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	for (size_t i = 0; i < NUM_CAPABILITIES; i++)
		if (capabilities[i].shmem_startup)
			capabilities[i].shmem_startup();
}

void
_PG_init(void)
{
	/* sodium_init is idempotent and thread-safe; < 0 means no entropy source */
	if (sodium_init() < 0)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("apicore: libsodium failed to initialise"),
				 errhint("Check that the server can read /dev/urandom.")));

	apicore_preloaded = process_shared_preload_libraries_in_progress;

	for (size_t i = 0; i < NUM_CAPABILITIES; i++)
		if (capabilities[i].init)
			capabilities[i].init();

	if (!apicore_preloaded)
		return;

#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = ApicoreShmemRequest;
#else
	ApicoreShmemRequest();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = ApicoreShmemStartup;
}

void
ApicoreRequirePreload(const char *feature)
{
	if (!apicore_preloaded)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apicore: %s needs apicore loaded at server start", feature),
				 errhint("Add apicore to shared_preload_libraries in postgresql.conf and restart the server.")));
}

void
ApicoreRequireArg(FunctionCallInfo fcinfo, int argno, const char *prefix,
				  const char *name, const char *hint)
{
	if (!PG_ARGISNULL(argno))
		return;
	if (hint)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s%s must not be NULL", prefix, name),
				 errhint("%s", hint)));
	ereport(ERROR,
			(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
			 errmsg("%s%s must not be NULL", prefix, name),
			 errhint("Pass a value for %s.", name)));
}

HTAB *
ApicoreBackendHash(const char *name, Size keysize, Size entrysize)
{
	HASHCTL		ctl = {.keysize = keysize,.entrysize = entrysize,.hcxt = TopMemoryContext};

	return hash_create(name, 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

ErrorData *
ApicoreTrySubtransaction(void (*body) (void *arg), void *arg)
{
	MemoryContext caller_cxt = CurrentMemoryContext;
	ResourceOwner caller_owner = CurrentResourceOwner;
	ErrorData  *volatile failure = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(caller_cxt);
	PG_TRY();
	{
		body(arg);
		MemoryContextSwitchTo(caller_cxt);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(caller_cxt);
		failure = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller_cxt);
	CurrentResourceOwner = caller_owner;
	if (failure && failure->sqlerrcode == ERRCODE_QUERY_CANCELED)
		ReThrowError(failure);
	return failure;
}

/* apicore.version(): the version of the loaded library */
Datum
apicore_version(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(APICORE_VERSION));
}

bool
ApicoreTextEqual(const text *a, const text *b)
{
	return VARSIZE_ANY_EXHDR(a) == VARSIZE_ANY_EXHDR(b) &&
		memcmp(VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a)) == 0;
}
