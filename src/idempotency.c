/*
 * idempotency.c — idempotency keys (API.md section 1).
 *
 * Owns apicore.idempotency_begin/checkpoint/complete/release/get, the
 * outcome counters behind apicore.idempotency_stats, the request fingerprint
 * and the apicore.idempotency_* settings.  Partition maintenance is SQL, in
 * sql/install/10_idempotency.sql.
 *
 * How it stays correct without a unique index (the key table is partitioned
 * by expires_at, and a unique index would have to include it):
 *   - every call first takes a transaction-level advisory lock on a 64-bit
 *     hash of (scope, key).  begin only *tries* it, so a concurrent duplicate
 *     gets 'conflict' at once instead of waiting; a hash collision between two
 *     keys can only cause such a spurious conflict, because the row itself is
 *     always compared on the full scope and key.
 *   - holding the lock, it reads the key's unexpired row across all
 *     partitions with the latest snapshot (RI-trigger style), so a row
 *     committed just before we got the lock is seen even in REPEATABLE READ.
 *
 * Why it is fast: a brand-new key is not written by begin.  It is remembered
 * in backend memory ("pending") while the advisory lock keeps duplicates out;
 * complete writes the finished row once, and a transaction that commits
 * without complete (the cross-transaction mode) writes the in-flight row from
 * a pre-commit callback.  A ROLLBACK or crash leaves nothing behind.
 */
#include "postgres.h"

#include <sodium.h>

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/index.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "partitioning/partbounds.h"
#include "partitioning/partdesc.h"
#include "port/atomics.h"
#include "storage/bufmgr.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/partcache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "apicore.h"
#include "direct.h"

#define KEY_MAX_CHARS 255
#define FINGERPRINT_LEN 32		/* BLAKE2b-256 */
#define LOCKTAG_IDEMPOTENCY 0x4944	/* field4 of our advisory locks ("ID") */

/* Settings */
static int	partition_interval_s = 86400;
static int	premake = 3;
static int	max_ttl_s = 7 * 86400;

typedef enum KeyState
{
	KEY_RUNNING,
	KEY_COMPLETED,
	KEY_RELEASED
} KeyState;

static const char *const key_state_names[] = {"running", "completed", "released"};

typedef enum Outcome
{
	OUTCOME_PROCEED,
	OUTCOME_REPLAY,
	OUTCOME_CONFLICT,
	OUTCOME_MISMATCH,
	OUTCOME_TAKEOVER,			/* counted in addition to proceed */
	NUM_OUTCOMES
} Outcome;

static const char *const outcome_names[] = {"proceed", "replay", "conflict", "mismatch"};

/* One key's row, as stored in apicore.idempotency_key. */
typedef struct KeyRow
{
	KeyState	state;
	int32		attempt;
	bool		has_fingerprint;
	uint8		fingerprint[FINGERPRINT_LEN];
	text	   *recovery_point;		/* NULL: none */
	Interval	lease;
	TimestampTz lease_expires_at;
	bool		has_response;
	int32		response_code;
	text	   *response_body;		/* NULL: SQL NULL */
	Jsonb	   *response_headers;	/* NULL: SQL NULL */
	TimestampTz created_at;
	TimestampTz updated_at;
	TimestampTz expires_at;
} KeyRow;

/*
 * A new key begun in this transaction and not yet in the table.  `done_subid`
 * is the subtransaction that completed (row inserted) or released it; if that
 * subtransaction aborts, the key is pending again.
 */
typedef struct PendingKey
{
	text	   *scope;
	text	   *key;
	KeyRow		row;
	SubTransactionId created_subid;
	SubTransactionId done_subid;
	KeyState	done_as;
} PendingKey;

static List *pending_keys = NIL;	/* in TopTransactionContext */
static bool callbacks_registered = false;

/* Outcome counters in shared memory; NULL without shared_preload_libraries. */
typedef struct IdempotencyCounters
{
	pg_atomic_uint64 n[NUM_OUTCOMES];
} IdempotencyCounters;

static IdempotencyCounters *counters = NULL;

/* SPI plans, prepared once per backend. */
static SPIPlanPtr update_plan = NULL;
static SPIPlanPtr insert_plan = NULL;

PG_FUNCTION_INFO_V1(apicore_idempotency_begin);
PG_FUNCTION_INFO_V1(apicore_idempotency_checkpoint);
PG_FUNCTION_INFO_V1(apicore_idempotency_complete);
PG_FUNCTION_INFO_V1(apicore_idempotency_release);
PG_FUNCTION_INFO_V1(apicore_idempotency_get);
PG_FUNCTION_INFO_V1(apicore_idempotency_counters);
PG_FUNCTION_INFO_V1(apicore_idempotency_settings);

/* ---------- settings and shared memory ---------- */

void
IdempotencyInit(void)
{
	DefineCustomIntVariable("apicore.idempotency_partition_interval",
							"Time range covered by one partition of apicore.idempotency_key.",
							"Partitions are aligned to multiples of this interval since the Unix epoch.",
							&partition_interval_s, 86400, 60, 366 * 86400,
							PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("apicore.idempotency_premake",
							"Partitions of apicore.idempotency_key created ahead of the longest ttl.",
							NULL, &premake, 3, 0, 1000,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("apicore.idempotency_max_ttl",
							"Largest ttl apicore.idempotency_begin accepts.",
							NULL, &max_ttl_s, 7 * 86400, 1, INT_MAX,
							PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
}

void
IdempotencyShmemRequest(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(IdempotencyCounters)));
}

void
IdempotencyShmemStartup(void)
{
	bool		found;
	IdempotencyCounters *shared;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("apicore idempotency counters",
							 sizeof(IdempotencyCounters), &found);
	if (!found)
		for (int i = 0; i < NUM_OUTCOMES; i++)
			pg_atomic_init_u64(&shared->n[i], 0);
	LWLockRelease(AddinShmemInitLock);
	counters = shared;
}

static void
Count(Outcome outcome)
{
	if (counters)
		pg_atomic_fetch_add_u64(&counters->n[outcome], 1);
}

/* ---------- argument checks ---------- */

static void
RequireArg(FunctionCallInfo fcinfo, int argno, const char *name, const char *hint)
{
	ApicoreRequireArg(fcinfo, argno, "idempotency ", name, hint);
}

static text *
ScopeOrKeyArg(FunctionCallInfo fcinfo, int argno, const char *name, const char *hint)
{
	text	   *value;
	int			chars;

	RequireArg(fcinfo, argno, name, hint);
	value = PG_GETARG_TEXT_PP(argno);
	chars = pg_mbstrlen_with_len(VARDATA_ANY(value), VARSIZE_ANY_EXHDR(value));
	if (chars < 1 || chars > KEY_MAX_CHARS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency %s must be 1 to %d characters, got %d",
						name, KEY_MAX_CHARS, chars),
				 errhint("%s", hint)));
	return value;
}

static text *
ScopeArg(FunctionCallInfo fcinfo)
{
	return ScopeOrKeyArg(fcinfo, 0, "scope",
						 "Pass who owns the key, e.g. the API key id or account id.");
}

static text *
KeyArg(FunctionCallInfo fcinfo)
{
	return ScopeOrKeyArg(fcinfo, 1, "key",
						 "Send the client's Idempotency-Key header value.");
}

static int32
AttemptArg(FunctionCallInfo fcinfo)
{
	RequireArg(fcinfo, 2, "attempt",
			   "Pass the attempt number idempotency_begin returned with 'proceed'.");
	return PG_GETARG_INT32(2);
}

static bool
IntervalIsPositive(Interval *span)
{
	Interval	zero = {0};

	return DatumGetBool(DirectFunctionCall2(interval_gt, IntervalPGetDatum(span),
											IntervalPGetDatum(&zero)));
}

static bool
IntervalExceeds(Interval *span, Interval *limit)
{
	return DatumGetBool(DirectFunctionCall2(interval_gt, IntervalPGetDatum(span),
											IntervalPGetDatum(limit)));
}

/* ttl and lease: positive, ttl <= apicore.idempotency_max_ttl, lease <= ttl */
static void
CheckDurations(Interval *ttl, Interval *lease)
{
	Interval	max_ttl = {0};

	max_ttl.time = (int64) max_ttl_s * USECS_PER_SEC;
	if (!IntervalIsPositive(ttl))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency ttl must be positive"),
				 errhint("Pass how long a finished response is replayed, e.g. '24 hours'.")));
	if (IntervalExceeds(ttl, &max_ttl))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency ttl must be at most apicore.idempotency_max_ttl (%d seconds)",
						max_ttl_s),
				 errhint("Pass a shorter ttl, or raise apicore.idempotency_max_ttl.")));
	if (!IntervalIsPositive(lease))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency lease must be positive"),
				 errhint("Pass how long an unfinished attempt owns the key, e.g. '1 minute'.")));
	if (IntervalExceeds(lease, ttl))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency lease must not be longer than ttl"),
				 errhint("The key is forgotten after ttl; pass a shorter lease or a longer ttl.")));
}

static TimestampTz
AddInterval(TimestampTz t, Interval *span)
{
	return DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
												   TimestampTzGetDatum(t),
												   IntervalPGetDatum(span)));
}

/* ---------- fingerprint ---------- */

static void
HashBytes(crypto_generichash_state *state, const void *data, uint32 len)
{
	crypto_generichash_update(state, (const unsigned char *) &len, sizeof(len));
	crypto_generichash_update(state, data, len);
}

static void
HashScalar(crypto_generichash_state *state, JsonbValue *v)
{
	uint8		type = (uint8) v->type;

	crypto_generichash_update(state, &type, 1);
	switch (v->type)
	{
		case jbvString:
			HashBytes(state, v->val.string.val, v->val.string.len);
			break;
		case jbvNumeric:
			{
				/* 1.0 and 1 are equal as jsonb, so they must hash alike */
				char	   *digits = numeric_normalize(v->val.numeric);

				HashBytes(state, digits, strlen(digits));
				pfree(digits);
				break;
			}
		case jbvBool:
			{
				uint8		b = v->val.boolean ? 1 : 0;

				crypto_generichash_update(state, &b, 1);
				break;
			}
		default:
			break;
	}
}

/*
 * BLAKE2b over the jsonb token stream.  jsonb already sorts and de-duplicates
 * object keys, so two jsonb values that compare equal give one fingerprint.
 */
static void
Fingerprint(Jsonb *request, uint8 *out)
{
	crypto_generichash_state state;
	JsonbIterator *it = JsonbIteratorInit(&request->root);
	JsonbIteratorToken token;
	JsonbValue	v;

	crypto_generichash_init(&state, NULL, 0, FINGERPRINT_LEN);
	while ((token = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		uint8		tag = (uint8) token;

		crypto_generichash_update(&state, &tag, 1);
		if (token == WJB_KEY || token == WJB_VALUE || token == WJB_ELEM)
			HashScalar(&state, &v);
		else if (token == WJB_BEGIN_ARRAY)
		{
			uint8		raw = v.val.array.rawScalar ? 1 : 0;

			crypto_generichash_update(&state, &raw, 1);
		}
	}
	crypto_generichash_final(&state, out, FINGERPRINT_LEN);
}

/* NULL on either side means "do not check" */
static bool
FingerprintMismatch(KeyRow *row, bool has_fingerprint, uint8 *fingerprint)
{
	return row->has_fingerprint && has_fingerprint &&
		memcmp(row->fingerprint, fingerprint, FINGERPRINT_LEN) != 0;
}

/* ---------- the per-key advisory lock ---------- */

static void
KeyLockTag(LOCKTAG *tag, text *scope, text *key)
{
	uint64		h;

	h = hash_bytes_extended((const unsigned char *) VARDATA_ANY(scope),
							VARSIZE_ANY_EXHDR(scope), 0);
	h = hash_bytes_extended((const unsigned char *) VARDATA_ANY(key),
							VARSIZE_ANY_EXHDR(key), h);
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h,
						 LOCKTAG_IDEMPOTENCY);
}

/* ---------- pending keys and transaction callbacks ---------- */

static PendingKey *
FindPending(text *scope, text *key)
{
	ListCell   *lc;

	foreach(lc, pending_keys)
	{
		PendingKey *p = lfirst(lc);

		if (ApicoreTextEqual(p->scope, scope) && ApicoreTextEqual(p->key, key))
			return p;
	}
	return NULL;
}

static text *
CopyText(text *t)
{
	return t ? (text *) PG_DETOAST_DATUM_COPY(PointerGetDatum(t)) : NULL;
}

static void InsertRow(text *scope, text *key, KeyRow *row);

static void
FlushPendingKeys(void)
{
	ListCell   *lc;

	foreach(lc, pending_keys)
	{
		PendingKey *p = lfirst(lc);

		if (p->done_subid == InvalidSubTransactionId)
			InsertRow(p->scope, p->key, &p->row);
	}
	pending_keys = NIL;
}

static void
IdempotencyXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			if (pending_keys != NIL)
				FlushPendingKeys();
			break;
		default:
			/* commit, abort, prepare: the list died with TopTransactionContext */
			pending_keys = NIL;
			break;
	}
}

static void
IdempotencySubXactCallback(SubXactEvent event, SubTransactionId mySubid,
						   SubTransactionId parentSubid, void *arg)
{
	ListCell   *lc;

	foreach(lc, pending_keys)
	{
		PendingKey *p = lfirst(lc);

		if (event == SUBXACT_EVENT_COMMIT_SUB)
		{
			if (p->created_subid == mySubid)
				p->created_subid = parentSubid;
			if (p->done_subid == mySubid)
				p->done_subid = parentSubid;
		}
		else if (event == SUBXACT_EVENT_ABORT_SUB)
		{
			if (p->created_subid == mySubid)
				pending_keys = foreach_delete_current(pending_keys, lc);
			else if (p->done_subid == mySubid)
				p->done_subid = InvalidSubTransactionId;
		}
	}
}

static PendingKey *
AddPending(text *scope, text *key, KeyRow *row)
{
	MemoryContext old;
	PendingKey *p;

	if (!callbacks_registered)
	{
		RegisterXactCallback(IdempotencyXactCallback, NULL);
		RegisterSubXactCallback(IdempotencySubXactCallback, NULL);
		callbacks_registered = true;
	}
	old = MemoryContextSwitchTo(TopTransactionContext);
	p = palloc0(sizeof(PendingKey));
	p->scope = CopyText(scope);
	p->key = CopyText(key);
	p->row = *row;
	p->created_subid = GetCurrentSubTransactionId();
	p->done_subid = InvalidSubTransactionId;
	pending_keys = lappend(pending_keys, p);
	MemoryContextSwitchTo(old);
	return p;
}

/* ---------- the key table: direct reads and inserts, SPI updates ---------- */

/*
 * The key table (ApicoreTableOid("idempotency_key")).  Reads and inserts go
 * straight to the heap with the caller's identity (no privilege check applies
 * there); the SPI update runs as the table's owner through ApicoreBecome, so
 * applications need EXECUTE on the functions only, never rights on the table.
 *
 * Generic plans only: a custom plan would be planned again over every
 * partition on each call; the generic plan prunes to the row's partition
 * (expires_at = $14) at executor start.
 */
static SPIPlanPtr
PreparePlan(const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, types, CURSOR_OPT_GENERIC_PLAN);

	if (plan == NULL)
		elog(ERROR, "apicore: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/* the parameters are the table's columns, in order (see RowToValues) */
static Oid	row_types[] = {
	TEXTOID, TEXTOID, TEXTOID, INT4OID, BYTEAOID, TEXTOID, INTERVALOID,
	TIMESTAMPTZOID, INT4OID, TEXTOID, JSONBOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
	TIMESTAMPTZOID
};

/* A row never moves: expires_at is fixed, so it names the partition. */
static SPIPlanPtr
UpdatePlan(void)
{
	if (update_plan == NULL)
		update_plan = PreparePlan(
								  "UPDATE apicore.idempotency_key SET state = $3, attempt = $4, fingerprint = $5,"
								  " recovery_point = $6, lease = $7, lease_expires_at = $8, response_code = $9,"
								  " response_body = $10, response_headers = $11, updated_at = $13"
								  " WHERE scope OPERATOR(pg_catalog.=) $1 AND key OPERATOR(pg_catalog.=) $2"
								  " AND expires_at OPERATOR(pg_catalog.=) $14"
								  " AND created_at OPERATOR(pg_catalog.=) $12",
								  lengthof(row_types), row_types);
	return update_plan;
}

/* Column numbers of apicore.idempotency_key, as created by the install script. */
enum KeyColumn
{
	COL_SCOPE = 1,
	COL_KEY,
	COL_STATE,
	COL_ATTEMPT,
	COL_FINGERPRINT,
	COL_RECOVERY_POINT,
	COL_LEASE,
	COL_LEASE_EXPIRES_AT,
	COL_RESPONSE_CODE,
	COL_RESPONSE_BODY,
	COL_RESPONSE_HEADERS,
	COL_CREATED_AT,
	COL_UPDATED_AT,
	COL_EXPIRES_AT,
	NUM_KEY_COLUMNS = COL_EXPIRES_AT
};

#define COLUMN(values, col) ((values)[(col) - 1])

/* a private copy: the row outlives the scan that found it */
static void *
NullableVarlena(Datum *values, bool *nulls, int col)
{
	return COLUMN(nulls, col) ? NULL : PG_DETOAST_DATUM_COPY(COLUMN(values, col));
}

/*
 * A stored row apicore could not have written (the table was edited by
 * hand): refuse it clearly rather than act on it.
 */
static void
DamagedRow(text *scope, text *key, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("apicore: the stored row of idempotency key \"%s\" in scope \"%s\" is damaged: %s",
					text_to_cstring(key), text_to_cstring(scope), what),
			 errhint("apicore.idempotency_key is written only by apicore; delete the row as its owner to let the key proceed afresh.")));
}

static KeyState
KeyStateFromText(text *scope, text *key, const char *s)
{
	for (int i = 0; i <= KEY_RELEASED; i++)
		if (strcmp(s, key_state_names[i]) == 0)
			return (KeyState) i;
	DamagedRow(scope, key, psprintf("unknown state \"%s\"", s));
	return KEY_RUNNING;
}

/* Columns apicore always writes; NOT NULL in the install script but checked anyway. */
static const int required_columns[] = {
	COL_STATE, COL_ATTEMPT, COL_LEASE, COL_LEASE_EXPIRES_AT, COL_CREATED_AT,
	COL_UPDATED_AT, COL_EXPIRES_AT
};

static const char *const column_names[] = {
	"scope", "key", "state", "attempt", "fingerprint", "recovery_point", "lease",
	"lease_expires_at", "response_code", "response_body", "response_headers",
	"created_at", "updated_at", "expires_at"
};

/* Nothing read back is trusted: NULLs, states, lengths and ranges are checked. */
static void
CheckStoredRow(text *scope, text *key, Datum *values, bool *nulls)
{
	int32		attempt;
	bytea	   *fp;
	Interval   *lease;
	Interval	longest = {0};

	for (int i = 0; i < lengthof(required_columns); i++)
		if (COLUMN(nulls, required_columns[i]))
			DamagedRow(scope, key, psprintf("%s is NULL", column_names[required_columns[i] - 1]));
	attempt = DatumGetInt32(COLUMN(values, COL_ATTEMPT));
	if (attempt < 1 || attempt == PG_INT32_MAX)
		DamagedRow(scope, key, psprintf("attempt %d is out of range", attempt));
	/* a lease is at most the largest apicore.idempotency_max_ttl: renewing it cannot overflow */
	lease = DatumGetIntervalP(COLUMN(values, COL_LEASE));
	longest.time = (int64) INT_MAX * USECS_PER_SEC;
	if (!IntervalIsPositive(lease) || IntervalExceeds(lease, &longest))
		DamagedRow(scope, key, "the lease is not between 0 and the largest apicore.idempotency_max_ttl");
	if (!COLUMN(nulls, COL_FINGERPRINT))
	{
		fp = DatumGetByteaPP(COLUMN(values, COL_FINGERPRINT));
		if (VARSIZE_ANY_EXHDR(fp) != FINGERPRINT_LEN)
			DamagedRow(scope, key, psprintf("the fingerprint has %d bytes, not %d",
											(int) VARSIZE_ANY_EXHDR(fp), FINGERPRINT_LEN));
	}
	if (COLUMN(nulls, COL_RESPONSE_CODE) &&
		KeyStateFromText(scope, key, TextDatumGetCString(COLUMN(values, COL_STATE))) == KEY_COMPLETED)
		DamagedRow(scope, key, "a completed key has no response_code");
}

static void
RowFromValues(text *scope, text *key, Datum *values, bool *nulls, KeyRow *row)
{
	bytea	   *fp;

	CheckStoredRow(scope, key, values, nulls);
	fp = NullableVarlena(values, nulls, COL_FINGERPRINT);
	row->state = KeyStateFromText(scope, key, TextDatumGetCString(COLUMN(values, COL_STATE)));
	row->attempt = DatumGetInt32(COLUMN(values, COL_ATTEMPT));
	row->has_fingerprint = fp != NULL;
	if (row->has_fingerprint)
		memcpy(row->fingerprint, VARDATA_ANY(fp), FINGERPRINT_LEN);
	row->recovery_point = NullableVarlena(values, nulls, COL_RECOVERY_POINT);
	row->lease = *DatumGetIntervalP(COLUMN(values, COL_LEASE));
	row->lease_expires_at = DatumGetTimestampTz(COLUMN(values, COL_LEASE_EXPIRES_AT));
	row->has_response = !COLUMN(nulls, COL_RESPONSE_CODE);
	row->response_code = row->has_response ? DatumGetInt32(COLUMN(values, COL_RESPONSE_CODE)) : 0;
	row->response_body = NullableVarlena(values, nulls, COL_RESPONSE_BODY);
	row->response_headers = NullableVarlena(values, nulls, COL_RESPONSE_HEADERS);
	row->created_at = DatumGetTimestampTz(COLUMN(values, COL_CREATED_AT));
	row->updated_at = DatumGetTimestampTz(COLUMN(values, COL_UPDATED_AT));
	row->expires_at = DatumGetTimestampTz(COLUMN(values, COL_EXPIRES_AT));
}

static void
DamagedPartition(Relation heap, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("apicore: partition \"%s\" of apicore.idempotency_key %s",
					RelationGetRelationName(heap), what),
			 errhint("Partitions are made by apicore.run_maintenance(); drop this one as apicore's owner.")));
}

/* The columns of apicore.idempotency_key, in table order (enum KeyColumn). */
static const DirectColumn key_columns[NUM_KEY_COLUMNS] = {
	{"scope", TEXTOID}, {"key", TEXTOID}, {"state", TEXTOID}, {"attempt", INT4OID},
	{"fingerprint", BYTEAOID}, {"recovery_point", TEXTOID}, {"lease", INTERVALOID},
	{"lease_expires_at", TIMESTAMPTZOID}, {"response_code", INT4OID},
	{"response_body", TEXTOID}, {"response_headers", JSONBOID},
	{"created_at", TIMESTAMPTZOID}, {"updated_at", TIMESTAMPTZOID},
	{"expires_at", TIMESTAMPTZOID}
};

static const DirectShape key_shape = {"idempotency_key", key_columns, NUM_KEY_COLUMNS, true};

/* A btree on exactly (scope, key), no expression, no predicate. */
static bool
IsScopeKeyIndex(Relation index)
{
	return index->rd_rel->relam == BTREE_AM_OID && index->rd_index->indnkeyatts == 2 &&
		index->rd_index->indkey.values[0] == COL_SCOPE &&
		index->rd_index->indkey.values[1] == COL_KEY &&
		RelationGetIndexExpressions(index) == NIL && RelationGetIndexPredicate(index) == NIL;
}

/*
 * The partition's (scope, key) index, opened: maintenance gives every
 * partition one, which the direct scans rely on.  Other indexes (a DBA's)
 * are allowed; inserts maintain them all (InsertRow).  A scan reads columns
 * by position, so the partition must have the key table's columns in order.
 */
static Relation
OpenScopeKeyIndex(Relation heap, LOCKMODE mode)
{
	List	   *indexes = RelationGetIndexList(heap);
	const int  *offsets = DirectColumns(heap, &key_shape);
	Relation	found = NULL;
	ListCell   *lc;

	for (int c = 0; offsets != NULL && c < NUM_KEY_COLUMNS; c++)
		if (offsets[c] != c)
			offsets = NULL;
	if (offsets == NULL)
		DamagedPartition(heap, "does not have the columns of apicore.idempotency_key");
	foreach(lc, indexes)
	{
		Relation	index = index_open(lfirst_oid(lc), mode);

		if (found == NULL && IsScopeKeyIndex(index))
			found = index;
		else
			index_close(index, mode);
	}
	list_free(indexes);
	if (found == NULL)
		DamagedPartition(heap, "has no btree index on (scope, key)");
	return found;
}

/* Look for the key's unexpired row in one partition. */
static bool
ScanPartition(Oid partition, text *scope, text *key, TimestampTz now,
			  Snapshot snapshot, KeyRow *row)
{
	Relation	heap = table_open(partition, AccessShareLock);
	Relation	index;
	TupleTableSlot *slot;
	IndexScanDesc scan;
	ScanKeyData keys[2];
	bool		found = false;

	/*
	 * Most partitions are empty (the premade ones ahead of every key).  An
	 * empty file proves absence: a row for this key could only have been
	 * written under the key's lock, which the caller holds, so one committed
	 * earlier is already in the file.
	 */
	if (RelationGetNumberOfBlocks(heap) == 0)
	{
		table_close(heap, NoLock);
		return false;
	}
	index = OpenScopeKeyIndex(heap, AccessShareLock);
	slot = table_slot_create(heap, NULL);
	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(scope));
	ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(key));
	keys[0].sk_collation = index->rd_indcollation[0];
	keys[1].sk_collation = index->rd_indcollation[1];

	scan = ApicoreIndexBeginscan(heap, index, snapshot, 2, 0);
	index_rescan(scan, keys, 2, NULL, 0);
	while (!found && index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		slot_getallattrs(slot);
		if (COLUMN(slot->tts_isnull, COL_EXPIRES_AT) ||
			DatumGetTimestampTz(COLUMN(slot->tts_values, COL_EXPIRES_AT)) > now)
		{
			RowFromValues(scope, key, slot->tts_values, slot->tts_isnull, row);
			found = true;
		}
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, NoLock);
	table_close(heap, NoLock);
	return found;
}

/*
 * Which partitions end at or before `now`: every key in them has expired, so
 * lookups skip them, and hold no lock that would delay maintenance dropping
 * them.  In range bounds, partition indexes[i] ends at datums[i].
 */
static bool *
ExpiredPartitions(PartitionDesc partitions, TimestampTz now)
{
	bool	   *expired = palloc0(sizeof(bool) * Max(partitions->nparts, 1));
	PartitionBoundInfo bounds = partitions->boundinfo;

	for (int i = 0; bounds != NULL && i < bounds->ndatums; i++)
		if (bounds->indexes[i] >= 0 &&
			bounds->kind[i][0] == PARTITION_RANGE_DATUM_VALUE &&
			DatumGetTimestampTz(bounds->datums[i][0]) <= now)
			expired[bounds->indexes[i]] = true;
	return expired;
}

/*
 * Find the key's unexpired row in any partition, by direct index probes: the
 * executor's Append over every partition costs several times the probes.
 * Runs with the latest snapshot: the caller holds the key's lock, and a row
 * committed by the previous holder must be seen whatever the isolation level.
 */
static bool
FindRow(text *scope, text *key, TimestampTz now, KeyRow *row)
{
	Relation	parent = table_open(ApicoreTableOid("idempotency_key"), AccessShareLock);
	PartitionDesc partitions = RelationGetPartitionDesc(parent, true);
	bool	   *expired = ExpiredPartitions(partitions, now);
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	bool		found = false;

	for (int i = 0; i < partitions->nparts && !found; i++)
		if (!expired[i])
			found = ScanPartition(partitions->oids[i], scope, key, now, snapshot, row);
	UnregisterSnapshot(snapshot);
	table_close(parent, NoLock);
	return found;
}

/* The row as column values, in table order (also the plans' parameter order). */
static void
RowToValues(text *scope, text *key, KeyRow *row, Datum *values, bool *nulls)
{
	memset(nulls, 0, sizeof(bool) * NUM_KEY_COLUMNS);
	COLUMN(values, COL_SCOPE) = PointerGetDatum(scope);
	COLUMN(values, COL_KEY) = PointerGetDatum(key);
	COLUMN(values, COL_STATE) = CStringGetTextDatum(key_state_names[row->state]);
	COLUMN(values, COL_ATTEMPT) = Int32GetDatum(row->attempt);
	COLUMN(nulls, COL_FINGERPRINT) = !row->has_fingerprint;
	if (row->has_fingerprint)
	{
		bytea	   *fp = palloc(VARHDRSZ + FINGERPRINT_LEN);

		SET_VARSIZE(fp, VARHDRSZ + FINGERPRINT_LEN);
		memcpy(VARDATA(fp), row->fingerprint, FINGERPRINT_LEN);
		COLUMN(values, COL_FINGERPRINT) = PointerGetDatum(fp);
	}
	COLUMN(values, COL_RECOVERY_POINT) = PointerGetDatum(row->recovery_point);
	COLUMN(nulls, COL_RECOVERY_POINT) = row->recovery_point == NULL;
	COLUMN(values, COL_LEASE) = IntervalPGetDatum(&row->lease);
	COLUMN(values, COL_LEASE_EXPIRES_AT) = TimestampTzGetDatum(row->lease_expires_at);
	COLUMN(values, COL_RESPONSE_CODE) = Int32GetDatum(row->response_code);
	COLUMN(nulls, COL_RESPONSE_CODE) = !row->has_response;
	COLUMN(values, COL_RESPONSE_BODY) = PointerGetDatum(row->response_body);
	COLUMN(nulls, COL_RESPONSE_BODY) = row->response_body == NULL;
	COLUMN(values, COL_RESPONSE_HEADERS) = PointerGetDatum(row->response_headers);
	COLUMN(nulls, COL_RESPONSE_HEADERS) = row->response_headers == NULL;
	COLUMN(values, COL_CREATED_AT) = TimestampTzGetDatum(row->created_at);
	COLUMN(values, COL_UPDATED_AT) = TimestampTzGetDatum(row->updated_at);
	COLUMN(values, COL_EXPIRES_AT) = TimestampTzGetDatum(row->expires_at);
}

/*
 * The leaf partition for expires_at `at`, found the way the executor's tuple
 * routing finds it for one range column.
 */
static Oid
PartitionFor(Relation parent, TimestampTz at)
{
	PartitionDesc partitions = RelationGetPartitionDesc(parent, true);
	PartitionKey partkey = RelationGetPartitionKey(parent);
	PartitionBoundInfo bounds = partitions->boundinfo;
	Datum		value = TimestampTzGetDatum(at);
	bool		equal;
	int			index = -1;

	if (bounds != NULL)
	{
		int			offset = partition_range_datum_bsearch(partkey->partsupfunc,
														   partkey->partcollation,
														   bounds, 1, &value, &equal);

		index = bounds->indexes[offset + 1];
		if (index < 0)
			index = bounds->default_index;
	}
	if (index < 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no partition of apicore.idempotency_key holds expires_at %s",
						timestamptz_to_str(at)),
				 errhint("Run SELECT * FROM apicore.run_maintenance(); the default partition may have been dropped.")));
	return partitions->oids[index];
}

static SPIPlanPtr
InsertPlan(void)
{
	if (insert_plan == NULL)
		insert_plan = PreparePlan("INSERT INTO apicore.idempotency_key VALUES"
								  " ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
								  lengthof(row_types), row_types);
	return insert_plan;
}

/* The SQL insert, as the key table's owner (see UpdateRow). */
static void
InsertRowSql(Oid owner, Datum *values, bool *nulls)
{
	char		spi_nulls[NUM_KEY_COLUMNS];
	ApicoreIdentity id;
	int			rc;

	/* at pre-commit no statement is running, and SPI needs an outer snapshot */
	bool		pushed = !ActiveSnapshotSet();

	for (int i = 0; i < NUM_KEY_COLUMNS; i++)
		spi_nulls[i] = nulls[i] ? 'n' : ' ';
	if (pushed)
		PushActiveSnapshot(GetTransactionSnapshot());
	ApicoreBecome(&id, owner, 0);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "apicore: SPI_connect failed");
	rc = SPI_execute_plan(InsertPlan(), values, spi_nulls, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "apicore: idempotency key insert failed: %s", SPI_result_code_string(rc));
	SPI_finish();
	ApicoreRestore(&id);
	if (pushed)
		PopActiveSnapshot();
}

/*
 * Insert a row, the one write of a key in the one-transaction mode: straight
 * into its partition (src/direct.c: every index, constraints checked), since
 * the executor's per-statement tuple-routing set-up would cost more than the
 * write; through SQL as the table's owner when a direct write would not
 * behave as the INSERT (a trigger, row-level security, a changed table).
 * Privileges and policies of a routed INSERT are the parent's; row
 * triggers and columns are the partition's.
 */
static void
InsertRow(text *scope, text *key, KeyRow *row)
{
	Relation	parent = table_open(ApicoreTableOid("idempotency_key"), RowExclusiveLock);
	Relation	heap = table_open(PartitionFor(parent, row->expires_at), RowExclusiveLock);
	Oid			owner = ApicoreRelationOwner(RelationGetRelid(parent));
	Datum		values[NUM_KEY_COLUMNS];
	bool		nulls[NUM_KEY_COLUMNS];

	RowToValues(scope, key, row, values, nulls);
	if (DirectApplies(parent, &key_shape, owner, ACL_INSERT, DIRECT_INSERT) &&
		DirectApplies(heap, &key_shape, owner, 0, DIRECT_INSERT))
		DirectInsertValues(heap, DirectColumns(heap, &key_shape), NUM_KEY_COLUMNS, values, nulls);
	else
		InsertRowSql(owner, values, nulls);
	table_close(heap, NoLock);
	table_close(parent, NoLock);
	/* later lookups in this transaction must see the row */
	CommandCounterIncrement();
}

/*
 * Rewrite an existing row (cross-transaction mode: takeover, checkpoint,
 * complete, release), as the key table's owner.  The kept plan is prepared
 * and re-planned only under the switch (search_path = pg_catalog, pg_temp)
 * and names its operators, so nothing the caller created is resolved.
 */
static void
UpdateRow(text *scope, text *key, KeyRow *row)
{
	Datum		values[NUM_KEY_COLUMNS];
	bool		nulls[NUM_KEY_COLUMNS];
	char		spi_nulls[NUM_KEY_COLUMNS];
	ApicoreIdentity id;
	int			rc;

	RowToValues(scope, key, row, values, nulls);
	for (int i = 0; i < NUM_KEY_COLUMNS; i++)
		spi_nulls[i] = nulls[i] ? 'n' : ' ';
	ApicoreBecome(&id, ApicoreRelationOwner(ApicoreTableOid("idempotency_key")), 0);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "apicore: SPI_connect failed");
	rc = SPI_execute_snapshot(UpdatePlan(), values, spi_nulls, GetLatestSnapshot(),
							  InvalidSnapshot, false, true, 0);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "apicore: idempotency key update failed: %s", SPI_result_code_string(rc));
	if (SPI_processed != 1)
		DamagedRow(scope, key, psprintf("%lu rows match it", (unsigned long) SPI_processed));
	SPI_finish();
	ApicoreRestore(&id);
}

/* ---------- idempotency_begin ---------- */

typedef struct BeginResult
{
	Outcome		outcome;
	KeyRow		row;
} BeginResult;

static void
NewKeyRow(KeyRow *row, TimestampTz now, Interval *ttl, Interval *lease,
		  bool has_fingerprint, uint8 *fingerprint)
{
	memset(row, 0, sizeof(KeyRow));
	row->state = KEY_RUNNING;
	row->attempt = 1;
	row->has_fingerprint = has_fingerprint;
	if (has_fingerprint)
		memcpy(row->fingerprint, fingerprint, FINGERPRINT_LEN);
	row->lease = *lease;
	row->lease_expires_at = AddInterval(now, lease);
	row->created_at = now;
	row->updated_at = now;
	row->expires_at = AddInterval(now, ttl);
}

/*
 * A new attempt on an existing row: after an expired lease (takeover, the
 * recovery point is kept) or after a release (afresh, fingerprint replaced).
 */
static void
RestartRow(KeyRow *row, TimestampTz now, Interval *lease,
		   bool has_fingerprint, uint8 *fingerprint)
{
	if (row->state == KEY_RELEASED)
	{
		row->recovery_point = NULL;
		row->has_fingerprint = has_fingerprint;
		if (has_fingerprint)
			memcpy(row->fingerprint, fingerprint, FINGERPRINT_LEN);
	}
	row->state = KEY_RUNNING;
	row->attempt++;
	row->lease = *lease;
	row->lease_expires_at = AddInterval(now, lease);
	row->updated_at = now;
}

/*
 * A key in flight is a conflict whatever the payload: in the one-transaction
 * mode its row is not visible yet (only its lock is), so the payload cannot
 * be compared there, and both modes must answer alike.  The IETF draft says
 * the same: a retry while the original is processed gets 409; a finished or
 * abandoned key reused with another payload gets 422 (mismatch).
 */
static Outcome
DecideOnRow(KeyRow *row, TimestampTz now, bool has_fingerprint, uint8 *fingerprint)
{
	if (row->state == KEY_RUNNING && row->lease_expires_at > now)
		return OUTCOME_CONFLICT;
	if (row->state != KEY_RELEASED && FingerprintMismatch(row, has_fingerprint, fingerprint))
		return OUTCOME_MISMATCH;
	if (row->state == KEY_COMPLETED)
		return OUTCOME_REPLAY;
	return row->state == KEY_RUNNING ? OUTCOME_TAKEOVER : OUTCOME_PROCEED;
}

/*
 * Replays work anywhere, a hot standby included; owning a key means writing
 * it (at complete or commit), so say so now rather than fail at COMMIT.
 */
static void
RequireWritable(void)
{
	if (XactReadOnly)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("idempotency key cannot be claimed in a read-only transaction"),
				 errhint("Call idempotency_begin on the primary, outside SET TRANSACTION READ ONLY; replays work anywhere.")));
}

/* What a begin call asks for. */
typedef struct Claim
{
	TimestampTz now;
	Interval   *ttl;
	Interval   *lease;
	bool		has_fingerprint;
	uint8		fingerprint[FINGERPRINT_LEN];
} Claim;

/*
 * With the key's lock held: decide the outcome, and take the key when it is
 * ours to take.  `row` is the key as the caller will see it.
 */
static Outcome
ClaimKey(text *scope, text *key, Claim *c, KeyRow *row)
{
	PendingKey *pending = FindPending(scope, key);
	Outcome		outcome;

	if (pending != NULL && pending->done_subid == InvalidSubTransactionId)
	{
		/* begun earlier in this very transaction and still open */
		*row = pending->row;
		return OUTCOME_CONFLICT;
	}
	if (pending != NULL && pending->done_as == KEY_RELEASED)
	{
		/* released earlier in this transaction: afresh, the old attempt stays stale */
		RequireWritable();
		NewKeyRow(row, c->now, c->ttl, c->lease, c->has_fingerprint, c->fingerprint);
		row->attempt = pending->row.attempt + 1;
		pending->row = *row;
		pending->created_subid = GetCurrentSubTransactionId();
		pending->done_subid = InvalidSubTransactionId;
		return OUTCOME_PROCEED;
	}
	if (!FindRow(scope, key, c->now, row))
	{
		RequireWritable();
		NewKeyRow(row, c->now, c->ttl, c->lease, c->has_fingerprint, c->fingerprint);
		AddPending(scope, key, row);
		return OUTCOME_PROCEED;
	}
	outcome = DecideOnRow(row, c->now, c->has_fingerprint, c->fingerprint);
	if (outcome == OUTCOME_TAKEOVER || outcome == OUTCOME_PROCEED)
	{
		RequireWritable();
		RestartRow(row, c->now, c->lease, c->has_fingerprint, c->fingerprint);
		UpdateRow(scope, key, row);
	}
	return outcome;
}

static void
Begin(text *scope, text *key, Jsonb *request, Interval *ttl, Interval *lease,
	  BeginResult *result)
{
	Claim		claim = {GetCurrentTimestamp(), ttl, lease, request != NULL};
	LOCKTAG		tag;
	LockAcquireResult got;

	if (claim.has_fingerprint)
		Fingerprint(request, claim.fingerprint);

	KeyLockTag(&tag, scope, key);
	got = LockAcquire(&tag, ExclusiveLock, false, true);
	if (got == LOCKACQUIRE_NOT_AVAIL)
	{
		result->outcome = OUTCOME_CONFLICT;
		return;
	}
	result->outcome = ClaimKey(scope, key, &claim, &result->row);

	/* a caller that does not own the key must not keep duplicates waiting */
	if (got == LOCKACQUIRE_OK &&
		result->outcome != OUTCOME_PROCEED && result->outcome != OUTCOME_TAKEOVER)
		LockRelease(&tag, ExclusiveLock, false);
}

static HeapTuple
BeginResultTuple(BeginResult *r, TupleDesc desc)
{
	Datum		values[7] = {0};
	bool		nulls[7] = {false, true, true, true, true, true, true};
	bool		owns = r->outcome == OUTCOME_PROCEED || r->outcome == OUTCOME_TAKEOVER;
	bool		known = r->row.attempt > 0;	/* not when the lock was busy */

	values[0] = CStringGetTextDatum(outcome_names[owns ? OUTCOME_PROCEED : r->outcome]);
	if (known && r->outcome != OUTCOME_MISMATCH)
	{
		values[1] = Int32GetDatum(r->row.attempt);
		nulls[1] = false;
		values[6] = TimestampTzGetDatum(r->row.expires_at);
		nulls[6] = false;
	}
	if (owns && r->row.recovery_point)
	{
		values[2] = PointerGetDatum(r->row.recovery_point);
		nulls[2] = false;
	}
	if (r->outcome == OUTCOME_REPLAY)
	{
		values[3] = Int32GetDatum(r->row.response_code);
		nulls[3] = false;
		values[4] = PointerGetDatum(r->row.response_body);
		nulls[4] = r->row.response_body == NULL;
		values[5] = PointerGetDatum(r->row.response_headers);
		nulls[5] = r->row.response_headers == NULL;
	}
	return heap_form_tuple(desc, values, nulls);
}

static void
CountBegin(Outcome outcome)
{
	if (outcome == OUTCOME_TAKEOVER)
		Count(OUTCOME_PROCEED);
	Count(outcome);
}

static Interval *
DurationArg(FunctionCallInfo fcinfo, int argno, const char *name, const char *hint)
{
	RequireArg(fcinfo, argno, name, hint);
	return PG_GETARG_INTERVAL_P(argno);
}

/* Built once per backend: the result type is fixed by the install script. */
static TupleDesc
BeginResultDesc(FunctionCallInfo fcinfo)
{
	static TupleDesc desc = NULL;

	if (desc == NULL)
	{
		TupleDesc	built;
		MemoryContext old;

		if (get_call_result_type(fcinfo, NULL, &built) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "apicore: idempotency_begin must return a row type");
		old = MemoryContextSwitchTo(TopMemoryContext);
		desc = BlessTupleDesc(CreateTupleDescCopy(built));
		MemoryContextSwitchTo(old);
	}
	return desc;
}

Datum
apicore_idempotency_begin(PG_FUNCTION_ARGS)
{
	FuncCallContext *funcctx;

	if (SRF_IS_FIRSTCALL())
	{
		text	   *scope = ScopeArg(fcinfo);
		text	   *key = KeyArg(fcinfo);
		Jsonb	   *request = PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2);
		Interval   *ttl = DurationArg(fcinfo, 3, "ttl",
									  "Pass how long a finished response is replayed, e.g. '24 hours'.");
		Interval   *lease = DurationArg(fcinfo, 4, "lease",
										"Pass how long an unfinished attempt owns the key, e.g. '1 minute'.");
		BeginResult result;
		TupleDesc	desc;
		MemoryContext old;

		CheckDurations(ttl, lease);
		funcctx = SRF_FIRSTCALL_INIT();
		memset(&result, 0, sizeof(result));
		Begin(scope, key, request, ttl, lease, &result);
		CountBegin(result.outcome);

		desc = BeginResultDesc(fcinfo);
		old = MemoryContextSwitchTo(funcctx->multi_call_memory_ctx);
		funcctx->user_fctx = BeginResultTuple(&result, desc);
		MemoryContextSwitchTo(old);
	}
	funcctx = SRF_PERCALL_SETUP();
	if (funcctx->user_fctx != NULL)
	{
		HeapTuple	tuple = funcctx->user_fctx;

		funcctx->user_fctx = NULL;
		SRF_RETURN_NEXT(funcctx, HeapTupleGetDatum(tuple));
	}
	SRF_RETURN_DONE(funcctx);
}

/* ---------- checkpoint, complete, release: acting as the owner ---------- */

/* Refuse an attempt that the key in the table no longer belongs to. */
static void
CheckRowOwner(text *key, int32 attempt, KeyRow *row, TimestampTz now)
{
	if (row->state == KEY_COMPLETED && row->attempt == attempt)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idempotency key \"%s\" is already completed", text_to_cstring(key)),
				 errhint("A completed key is only replayed; begin returns its response.")));
	if (row->attempt != attempt || row->state != KEY_RUNNING)
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("idempotency attempt %d lost key \"%s\"; the current attempt is %d (%s)",
						attempt, text_to_cstring(key), row->attempt, key_state_names[row->state]),
				 errhint("Stop this attempt: another request took the key over.")));
	if (row->lease_expires_at <= now)
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("idempotency attempt %d lost key \"%s\": its lease expired",
						attempt, text_to_cstring(key)),
				 errhint("Call idempotency_checkpoint more often than the lease, or begin again to take the key over.")));
}

/* Refuse an attempt that does not own the key begun in this transaction. */
static void
CheckPendingOwner(text *key, int32 attempt, PendingKey *pending)
{
	if (pending->done_subid != InvalidSubTransactionId)
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("idempotency attempt %d released key \"%s\"", attempt, text_to_cstring(key)),
				 errhint("Call idempotency_begin again to start a new attempt.")));
	if (pending->row.attempt != attempt)
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("idempotency attempt %d does not hold key \"%s\"; attempt %d does",
						attempt, text_to_cstring(key), pending->row.attempt),
				 errhint("Pass the attempt number idempotency_begin returned.")));
}

/*
 * The attempt's key, locked for the caller.  Waits for the key's lock: at
 * most a duplicate's begin, or a takeover's transaction, after which this
 * attempt is stale and refused.  Returns the pending entry when the key was
 * begun in this transaction and is not in the table yet; else fills `row`.
 */
static PendingKey *
OwnedKey(text *scope, text *key, int32 attempt, KeyRow *row)
{
	LOCKTAG		tag;
	PendingKey *pending;
	TimestampTz now = GetCurrentTimestamp();

	KeyLockTag(&tag, scope, key);
	LockAcquire(&tag, ExclusiveLock, false, false);

	/* a pending key completed here is in the table now: look there */
	pending = FindPending(scope, key);
	if (pending != NULL && !(pending->done_subid != InvalidSubTransactionId &&
							 pending->done_as == KEY_COMPLETED))
	{
		CheckPendingOwner(key, attempt, pending);
		return pending;
	}
	if (!FindRow(scope, key, now, row))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idempotency key \"%s\" has not been begun in scope \"%s\"",
						text_to_cstring(key), text_to_cstring(scope)),
				 errhint("Call idempotency_begin first; a key is forgotten after its ttl.")));
	CheckRowOwner(key, attempt, row, now);
	row->updated_at = now;
	return NULL;
}

/* The arguments every owner call starts with. */
typedef struct OwnerCall
{
	text	   *scope;
	text	   *key;
	int32		attempt;
	KeyRow		row;			/* the key's row, when it is in the table */
} OwnerCall;

/* Check the arguments, then take the key as its owner (see OwnedKey). */
static PendingKey *
OwnerCallStart(FunctionCallInfo fcinfo, OwnerCall *call)
{
	call->scope = ScopeArg(fcinfo);
	call->key = KeyArg(fcinfo);
	call->attempt = AttemptArg(fcinfo);
	return OwnedKey(call->scope, call->key, call->attempt, &call->row);
}

Datum
apicore_idempotency_checkpoint(PG_FUNCTION_ARGS)
{
	OwnerCall	call;
	text	   *point;
	PendingKey *pending;

	RequireArg(fcinfo, 3, "recovery_point",
			   "Name the phase that just finished, e.g. 'charge_created'.");
	point = PG_GETARG_TEXT_PP(3);
	pending = OwnerCallStart(fcinfo, &call);
	if (pending != NULL)
	{
		pending->row.recovery_point = (text *) MemoryContextAlloc(TopTransactionContext,
																   VARSIZE_ANY(point));
		memcpy(pending->row.recovery_point, point, VARSIZE_ANY(point));
		pending->row.lease_expires_at = AddInterval(GetCurrentTimestamp(), &pending->row.lease);
		PG_RETURN_VOID();
	}
	call.row.recovery_point = point;
	/* a checkpoint is progress: the lease starts again */
	call.row.lease_expires_at = AddInterval(call.row.updated_at, &call.row.lease);
	UpdateRow(call.scope, call.key, &call.row);
	PG_RETURN_VOID();
}

static void
SetResponse(KeyRow *row, FunctionCallInfo fcinfo)
{
	int32		code;

	RequireArg(fcinfo, 3, "response_code", "Pass the HTTP status code of the response.");
	code = PG_GETARG_INT32(3);
	if (code < 100 || code > 599)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency response_code must be 100 to 599, got %d", code),
				 errhint("Pass the HTTP status code of the response.")));
	row->state = KEY_COMPLETED;
	row->has_response = true;
	row->response_code = code;
	row->response_body = PG_ARGISNULL(4) ? NULL : PG_GETARG_TEXT_P(4);
	row->response_headers = PG_ARGISNULL(5) ? NULL : PG_GETARG_JSONB_P(5);
	if (row->response_headers && !JB_ROOT_IS_OBJECT(row->response_headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency response_headers must be a JSON object"),
				 errhint("Pass the headers as {\"Name\": \"value\", ...}, or NULL.")));
}

static void
FinishPending(PendingKey *pending, KeyState as)
{
	pending->done_subid = GetCurrentSubTransactionId();
	pending->done_as = as;
}

Datum
apicore_idempotency_complete(PG_FUNCTION_ARGS)
{
	OwnerCall	call;
	PendingKey *pending = OwnerCallStart(fcinfo, &call);

	if (pending != NULL)
	{
		/* the key's only write in the one-transaction mode */
		call.row = pending->row;
		call.row.updated_at = GetCurrentTimestamp();
		SetResponse(&call.row, fcinfo);
		InsertRow(call.scope, call.key, &call.row);
		FinishPending(pending, KEY_COMPLETED);
		PG_RETURN_VOID();
	}
	SetResponse(&call.row, fcinfo);
	UpdateRow(call.scope, call.key, &call.row);
	PG_RETURN_VOID();
}

Datum
apicore_idempotency_release(PG_FUNCTION_ARGS)
{
	OwnerCall	call;
	PendingKey *pending = OwnerCallStart(fcinfo, &call);

	if (pending != NULL)
	{
		FinishPending(pending, KEY_RELEASED);
		PG_RETURN_VOID();
	}
	/* keep the row so that attempt numbers go on rising: a stale owner stays stale */
	call.row.state = KEY_RELEASED;
	UpdateRow(call.scope, call.key, &call.row);
	PG_RETURN_VOID();
}

/* ---------- idempotency_get, counters, settings ---------- */

static void
PutRow(Tuplestorestate *store, TupleDesc desc, text *scope, text *key, KeyRow *row)
{
	Datum		values[11];
	bool		nulls[11] = {false};

	values[0] = PointerGetDatum(scope);
	values[1] = PointerGetDatum(key);
	values[2] = CStringGetTextDatum(key_state_names[row->state]);
	values[3] = Int32GetDatum(row->attempt);
	values[4] = PointerGetDatum(row->recovery_point);
	nulls[4] = row->recovery_point == NULL;
	values[5] = TimestampTzGetDatum(row->lease_expires_at);
	nulls[5] = row->state != KEY_RUNNING;
	values[6] = Int32GetDatum(row->response_code);
	nulls[6] = !row->has_response;
	values[7] = PointerGetDatum(row->response_body);
	nulls[7] = row->response_body == NULL;
	values[8] = PointerGetDatum(row->response_headers);
	nulls[8] = row->response_headers == NULL;
	values[9] = TimestampTzGetDatum(row->created_at);
	values[10] = TimestampTzGetDatum(row->expires_at);
	tuplestore_putvalues(store, desc, values, nulls);
}

Datum
apicore_idempotency_get(PG_FUNCTION_ARGS)
{
	text	   *scope = ScopeArg(fcinfo);
	text	   *key = KeyArg(fcinfo);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	PendingKey *pending = FindPending(scope, key);
	KeyRow		row;

	InitMaterializedSRF(fcinfo, 0);
	if (pending != NULL && pending->done_subid == InvalidSubTransactionId)
		PutRow(rsinfo->setResult, rsinfo->setDesc, scope, key, &pending->row);
	else if (FindRow(scope, key, GetCurrentTimestamp(), &row))
		PutRow(rsinfo->setResult, rsinfo->setDesc, scope, key, &row);
	return (Datum) 0;
}

Datum
apicore_idempotency_counters(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[NUM_OUTCOMES];
	bool		nulls[NUM_OUTCOMES] = {false};

	ApicoreRequirePreload("apicore.idempotency_stats");
	if (counters == NULL)
		elog(ERROR, "apicore: idempotency counters are not attached");
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "apicore: _idempotency_counters must return a row type");
	for (int i = 0; i < NUM_OUTCOMES; i++)
		values[i] = Int64GetDatum((int64) pg_atomic_read_u64(&counters->n[i]));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}

static Interval *
SecondsInterval(int seconds)
{
	Interval   *span = palloc0(sizeof(Interval));

	span->time = (int64) seconds * USECS_PER_SEC;
	return span;
}

Datum
apicore_idempotency_settings(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[3];
	bool		nulls[3] = {false};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "apicore: _idempotency_settings must return a row type");
	values[0] = IntervalPGetDatum(SecondsInterval(partition_interval_s));
	values[1] = Int32GetDatum(premake);
	values[2] = IntervalPGetDatum(SecondsInterval(max_ttl_s));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}
