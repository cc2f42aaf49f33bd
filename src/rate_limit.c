/*
 * rate_limit.c — rate limits in shared memory (API.md section 3).
 *
 * Owns the shared table of limiter states (GCRA, fixed window, sliding
 * window, concurrency leases), its partition locks, the apicore.rate_limit_*
 * settings, the per-backend policy cache, saving the table at clean shutdown
 * and restoring it at start, and every SQL function named rate_limit_* or
 * concurrency_*.
 *
 * Layout: one entry pool and one lease-slot pool shared by all partitions (a
 * spinlock guards only their free lists, touched when a key is created or
 * dropped), and RL_PARTITIONS chained hash indexes, each under its own
 * LWLock of the "apicore_rate_limit" tranche.  A call on an existing key
 * takes one partition lock and nothing else; no SPI, no table, no WAL.
 *
 * Keys are identified by a 128-bit keyed SipHash (libsodium
 * crypto_shorthash_siphashx24) of (namespace, policy, parameters, key).  The
 * hash key is random per cluster and saved with the state, so distinct keys
 * never share state and clients cannot aim collisions at one partition.  An
 * ad hoc limit's parameters are part of its identity: a caller who passes a
 * stricter limit for someone else's key gets a bucket of its own instead of
 * changing theirs.  A 64-bit keyed hash of the bare key (the "group") is
 * kept beside it so that rate_limit_reset(key) finds every variant.
 *
 * Policies are read from apicore.rate_limit_policy with the heap API, not
 * SQL, so any role with EXECUTE can use them without privileges on the table
 * and no name is resolved; the per-backend cache is dropped by a relcache
 * callback, fired by the table's statement trigger (CacheInvalidateRelcache)
 * here at once and in other backends, and on hot standbys, at commit.  They
 * are written only by rate_limit_policy_set/_drop, as apicore's owner
 * (ApicoreBecome) with qualified SQL.
 *
 * Every period is bounded by apicore.rate_limit_max_period, so every key
 * comes to rest (and can be reclaimed) within that time of its last use.
 * Concurrency tokens are random 63-bit numbers bound to the role that took
 * the lease.
 */
#include "postgres.h"

#include <math.h>
#include <sodium.h>
#include <unistd.h>

#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "apicore.h"

#define RL_PARTITIONS		32	/* power of two */
#define RL_TRANCHE			"apicore_rate_limit"
#define RL_MAX_STATS		256 /* policies with their own counters */
#define RL_MAX_LIMITS		32	/* limits in one all-or-nothing check */
#define RL_FILE				"pg_stat/apicore_rate_limit.stat"
#define RL_FILE_MAGIC		0x41434c32	/* "ACL2": keys with a group hash */
#define RL_NONE				(-1)
#define RL_MAX_PERIOD_S		(3660 * 86400)	/* 10 years: GCRA's ns stay in int64 */
#define RL_MAX_HEADER_NAME	255 /* bytes of a policy name in a header */
#define RL_FULL_RETRY		USECS_PER_SEC	/* Retry-After when the table is full */
#define RL_LEASES_FULL		(-1)	/* no lease slot free (tokens are > 0) */

/* Namespaces of the keyed hash: ad hoc limits, policies, concurrency. */
#define RL_NS_ADHOC			'a'
#define RL_NS_POLICY		'p'
#define RL_NS_CONCURRENCY	'c'
#define RL_NS_GROUP			'g'	/* the bare key, for rate_limit_reset(key) */

typedef enum RlKind
{
	RL_FRESH = 0,
	RL_GCRA,
	RL_FIXED_WINDOW,
	RL_SLIDING_WINDOW,
	RL_CONCURRENCY
} RlKind;

typedef enum RlWhenFull
{
	RL_FULL_ALLOW,
	RL_FULL_DENY
} RlWhenFull;

typedef struct RlKey
{
	uint64		h[2];			/* identity: keyed hash of everything */
	uint64		group;			/* keyed hash of (database, key) alone */
} RlKey;

/* A limiter's state; what the fields hold depends on kind. */
typedef struct RlState
{
	int32		kind;			/* RlKind */
	int32		count;			/* windows: uses in the current window;
								 * concurrency: leases in flight */
	int32		other;			/* sliding: uses in the previous window;
								 * concurrency: first lease slot */
	int64		when;			/* gcra: theoretical arrival time (ns);
								 * windows: start of the current window (us) */
	int64		rest_at;		/* from then on (us) the state equals a fresh
								 * one, and the entry may be reclaimed */
} RlState;

typedef struct RlEntry
{
	RlKey		key;
	int32		next;			/* bucket chain or free list */
	bool		pinned;			/* in use by a multi-limit call: not reclaimable */
	RlState		state;
} RlEntry;

/* One concurrency lease. */
typedef struct RlSlot
{
	int64		token;
	int64		expires_at;		/* us */
	int32		next;
	int32		pid;
	Oid			holder;			/* the role that took it: only it may release it */
} RlSlot;

typedef struct RlStat
{
	char		name[NAMEDATALEN];	/* "" = ad hoc rate_limit() calls */
	pg_atomic_uint64 allowed;
	pg_atomic_uint64 rejected;
	pg_atomic_uint64 shadow_rejected;
} RlStat;

/* A free list of pool indexes, linked through the items' `next` fields. */
typedef struct RlFreeList
{
	int32		head;
	int64		used;			/* items handed out */
} RlFreeList;

typedef struct RlShared
{
	uint8		hash_key[crypto_shorthash_siphashx24_KEYBYTES];
	int32		max_keys;
	int32		buckets_per_partition;	/* power of two */
	slock_t		pool_lock;		/* the two free lists */
	RlFreeList	entry_pool;
	RlFreeList	slot_pool;
	pg_atomic_uint64 evictions;
	pg_atomic_uint64 full_events;
	slock_t		stats_lock;		/* nstats and stats[].name */
	int32		nstats;
	RlStat		stats[RL_MAX_STATS];
} RlShared;

/* What a limit allows, ready to run. */
typedef struct RlParams
{
	RlKind		kind;
	int32		limit;
	int32		burst;			/* gcra capacity */
	int64		period;			/* us */
	int64		interval_ns;	/* gcra emission interval: period / limit */
	int64		tolerance_ns;	/* gcra: interval * burst */
} RlParams;

typedef struct RlResult
{
	bool		allowed;
	int32		limit;
	int32		remaining;
	int64		retry_after;	/* us; -1 when allowed */
	int64		reset_after;	/* us */
	const char *policy;			/* the deciding policy's name; NULL: ad hoc */
} RlResult;

/* One limit taking part in a call. */
typedef struct RlCall
{
	RlKey		key;
	RlParams	params;
	bool		shadow;
	RlStat	   *stat;
	RlEntry    *entry;			/* NULL: peek of an unknown key, or table full */
	RlState		next;
	RlResult	result;
	/* a copy: the policy cache may be rebuilt while later policies are looked up */
	char		policy[NAMEDATALEN];	/* "": an ad hoc limit */
} RlCall;

/*
 * A policy as cached by this backend: the stored row as read, checked on
 * first use (a row tampered with past the table's constraints fails then,
 * alone, with a clean error).
 */
typedef struct RlPolicy
{
	char		name[NAMEDATALEN];	/* hash key */
	bool		checked;		/* row validated, params/shadow/stat set */
	bool		has_null;		/* a NOT NULL column is NULL */
	int32		limit;
	Interval	period;
	bool		burst_given;
	int32		burst;
	char	   *algorithm;
	char	   *mode;
	RlParams	params;
	bool		shadow;
	RlStat	   *stat;
} RlPolicy;

/* A lease this backend holds, released when the backend exits. */
typedef struct RlHeldLease
{
	RlKey		key;
	int64		token;
} RlHeldLease;

/* Settings */
static int	rl_max_keys = 100000;
static int	rl_max_period = 86400;	/* seconds */
static int	rl_when_full = RL_FULL_ALLOW;
static double rl_test_clock = 0;

static const struct config_enum_entry when_full_options[] = {
	{"allow", RL_FULL_ALLOW, false},
	{"deny", RL_FULL_DENY, false},
	{NULL, 0, false}
};

/* Shared state, attached at startup */
static RlShared *rl = NULL;
static LWLockPadded *rl_locks = NULL;
static int32 *rl_buckets = NULL;
static RlEntry *rl_entries = NULL;
static RlSlot *rl_slots = NULL;

/* Backend-local state */
static HTAB *policy_cache = NULL;
static MemoryContext policy_cache_cxt = NULL;
static bool policy_cache_valid = false;
static uint64 policy_invalidations = 0;
static Oid	policy_relid = InvalidOid;
static bool policy_callback_registered = false;
static List *held_leases = NIL;
static bool lease_exit_callback_registered = false;

PG_FUNCTION_INFO_V1(apicore_rate_limit);
PG_FUNCTION_INFO_V1(apicore_rate_limit_check);
PG_FUNCTION_INFO_V1(apicore_rate_limit_check_many);
PG_FUNCTION_INFO_V1(apicore_rate_limit_reset);
PG_FUNCTION_INFO_V1(apicore_rate_limit_policy_set);
PG_FUNCTION_INFO_V1(apicore_rate_limit_policy_drop);
PG_FUNCTION_INFO_V1(apicore_rate_limit_headers);
PG_FUNCTION_INFO_V1(apicore_rate_limit_policy_changed);
PG_FUNCTION_INFO_V1(apicore_concurrency_acquire);
PG_FUNCTION_INFO_V1(apicore_concurrency_release);
PG_FUNCTION_INFO_V1(apicore_rate_limit_stats);
PG_FUNCTION_INFO_V1(apicore_rate_limit_maintain);

/* ---------- settings and shared memory ---------- */

/* A new bound applies to cached policies too: check them again. */
static void
RlMaxPeriodAssign(int newval, void *extra)
{
	policy_cache_valid = false;
}

void
RateLimitInit(void)
{
	/* a PGC_POSTMASTER setting can only be defined while preloading */
	if (apicore_preloaded)
		DefineCustomIntVariable("apicore.rate_limit_max_keys",
								"Rate-limit keys (and concurrency leases) kept in shared memory.",
								NULL, &rl_max_keys, 100000, 16, 100000000,
								PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomEnumVariable("apicore.rate_limit_when_full",
							 "What a new rate-limit key gets when the table is full of busy keys: allow (fail open) or deny (fail closed).",
							 NULL, &rl_when_full, RL_FULL_ALLOW, when_full_options,
							 PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("apicore.rate_limit_max_period",
							"Longest period, lease or GCRA refill time a rate limit may use; every key comes to rest within it.",
							NULL, &rl_max_period, 86400, 1, RL_MAX_PERIOD_S,
							PGC_SUSET, GUC_UNIT_S, NULL, RlMaxPeriodAssign, NULL);
	DefineCustomRealVariable("apicore.rate_limit_test_clock",
							 "For tests only: the rate limiter's clock in seconds since 1970-01-01 UTC; 0 uses the server's clock.",
							 NULL, &rl_test_clock, 0, 0, 5e9,	/* year 2128: GCRA's ns stay in int64 */
							 PGC_SUSET, GUC_NOT_IN_SAMPLE, NULL, NULL, NULL);
}

static int32
RlBucketsPerPartition(int max_keys)
{
	int32		per = 1;

	while ((int64) per * RL_PARTITIONS < max_keys)
		per <<= 1;
	return per;
}

static Size
RlShmemSize(int max_keys)
{
	Size		size = MAXALIGN(sizeof(RlShared));

	size = add_size(size, MAXALIGN(mul_size(sizeof(int32),
											mul_size(RL_PARTITIONS, RlBucketsPerPartition(max_keys)))));
	size = add_size(size, MAXALIGN(mul_size(sizeof(RlEntry), max_keys)));
	size = add_size(size, MAXALIGN(mul_size(sizeof(RlSlot), max_keys)));
	return size;
}

void
RateLimitShmemRequest(void)
{
	RequestAddinShmemSpace(RlShmemSize(rl_max_keys));
	RequestNamedLWLockTranche(RL_TRANCHE, RL_PARTITIONS);
}

static void
RlAttach(void)
{
	char	   *p = (char *) rl + MAXALIGN(sizeof(RlShared));
	int			nbuckets = RL_PARTITIONS * rl->buckets_per_partition;

	rl_buckets = (int32 *) p;
	p += MAXALIGN(sizeof(int32) * nbuckets);
	rl_entries = (RlEntry *) p;
	p += MAXALIGN(sizeof(RlEntry) * rl->max_keys);
	rl_slots = (RlSlot *) p;
	rl_locks = GetNamedLWLockTranche(RL_TRANCHE);
}

/* Empty table: every bucket empty, every entry and slot on its free list. */
static void
RlInitShared(void)
{
	int			nbuckets;

	memset(rl, 0, sizeof(RlShared));
	rl->max_keys = rl_max_keys;
	rl->buckets_per_partition = RlBucketsPerPartition(rl_max_keys);
	randombytes_buf(rl->hash_key, sizeof(rl->hash_key));
	SpinLockInit(&rl->pool_lock);
	SpinLockInit(&rl->stats_lock);
	pg_atomic_init_u64(&rl->evictions, 0);
	pg_atomic_init_u64(&rl->full_events, 0);
	for (int i = 0; i < RL_MAX_STATS; i++)
	{
		pg_atomic_init_u64(&rl->stats[i].allowed, 0);
		pg_atomic_init_u64(&rl->stats[i].rejected, 0);
		pg_atomic_init_u64(&rl->stats[i].shadow_rejected, 0);
	}
	rl->nstats = 1;				/* slot 0: ad hoc calls */
	RlAttach();
	nbuckets = RL_PARTITIONS * rl->buckets_per_partition;
	for (int i = 0; i < nbuckets; i++)
		rl_buckets[i] = RL_NONE;
	for (int i = 0; i < rl->max_keys; i++)
	{
		rl_entries[i].next = (i + 1 < rl->max_keys) ? i + 1 : RL_NONE;
		rl_slots[i].next = (i + 1 < rl->max_keys) ? i + 1 : RL_NONE;
	}
	rl->entry_pool.head = 0;
	rl->slot_pool.head = 0;
}

static void RlRestore(void);
static void RlSaveAtShutdown(int code, Datum arg);

void
RateLimitShmemStartup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	rl = ShmemInitStruct("apicore rate limits", RlShmemSize(rl_max_keys), &found);
	if (!found)
	{
		RlInitShared();
		RlRestore();
	}
	else
		RlAttach();
	LWLockRelease(AddinShmemInitLock);

	/* the postmaster saves the table when it shuts down cleanly */
	if (!IsUnderPostmaster)
		on_shmem_exit(RlSaveAtShutdown, (Datum) 0);
}

/* ---------- time, keys, argument checks ---------- */

/* The limiter's clock in microseconds since the PostgreSQL epoch. */
static int64
RlNow(void)
{
	if (rl_test_clock > 0)
		return (int64) llround(rl_test_clock * USECS_PER_SEC) -
			(int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY;
	return GetCurrentTimestamp();
}

/* What an ad hoc limit's parameters add to its identity (fixed size). */
typedef struct RlParamsId
{
	int32		limit;
	int32		burst;
	int64		period;
} RlParamsId;

/*
 * Hash (namespace, prefix, params, key) into out->h and (key) into
 * out->group.  Database first: each database has its own limits (policies
 * are per database too); a text prefix holds no NUL and the params block has
 * a fixed size given by the namespace, so the encoding is unambiguous.
 */
static void
RlHashKey(char ns, const char *prefix, const RlParams *params, const text *key, RlKey *out)
{
	size_t		prefix_len = prefix ? strlen(prefix) : 0;
	size_t		key_len = VARSIZE_ANY_EXHDR(key);
	size_t		len = sizeof(Oid) + 2 + prefix_len + sizeof(RlParamsId) + key_len;
	unsigned char stackbuf[256];
	unsigned char *buf = len <= sizeof(stackbuf) ? stackbuf : palloc(len);
	unsigned char *p = buf;

	memcpy(p, &MyDatabaseId, sizeof(Oid));
	p += sizeof(Oid);
	*p++ = (unsigned char) ns;
	if (prefix_len)
		memcpy(p, prefix, prefix_len);
	p += prefix_len;
	*p++ = '\0';
	if (params)
	{
		RlParamsId	id;

		memset(&id, 0, sizeof(id));
		id.limit = params->limit;
		id.burst = params->burst;
		id.period = params->period;
		memcpy(p, &id, sizeof(id));
		p += sizeof(id);
	}
	memcpy(p, VARDATA_ANY(key), key_len);
	p += key_len;
	crypto_shorthash_siphashx24((unsigned char *) out->h, buf, p - buf, rl->hash_key);

	/* the group: database, 'g', key */
	buf[sizeof(Oid)] = RL_NS_GROUP;
	memcpy(buf + sizeof(Oid) + 1, VARDATA_ANY(key), key_len);
	crypto_shorthash_siphash24((unsigned char *) &out->group, buf, sizeof(Oid) + 1 + key_len,
							   rl->hash_key);
	if (buf != stackbuf)
		pfree(buf);
}

static void
RlRequireArg(FunctionCallInfo fcinfo, int argno, const char *name)
{
	ApicoreRequireArg(fcinfo, argno, "rate limit ", name, NULL);
}

/* The key argument: not NULL, not empty. */
static text *
RlKeyArg(FunctionCallInfo fcinfo, int argno)
{
	text	   *key;

	RlRequireArg(fcinfo, argno, "key");
	key = PG_GETARG_TEXT_PP(argno);
	if (VARSIZE_ANY_EXHDR(key) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate limit key must not be empty"),
				 errhint("Use what identifies the caller, e.g. the API key or user id.")));
	return key;
}

/* apicore.rate_limit_max_period for messages: "1 day", "90 seconds" */
static char *
RlMaxPeriodText(void)
{
	static const struct
	{
		int			secs;
		const char *unit;
	}			units[] = {{86400, "day"}, {3600, "hour"}, {60, "minute"}, {1, "second"}};

	for (int i = 0;; i++)
		if (rl_max_period % units[i].secs == 0)
		{
			int			n = rl_max_period / units[i].secs;

			return psprintf("%d %s%s", n, units[i].unit, n == 1 ? "" : "s");
		}
}

static int64
RlMaxPeriodUs(void)
{
	return (int64) rl_max_period * USECS_PER_SEC;
}

/*
 * A duration in microseconds: more than zero, at most
 * apicore.rate_limit_max_period, so every key comes to rest within it.
 */
static int64
RlDurationArg(const Interval *span, const char *name)
{
	int128		us = (int128) span->time +
		(int128) span->day * USECS_PER_DAY +
		(int128) span->month * DAYS_PER_MONTH * USECS_PER_DAY;

	if (us <= 0 || us > RlMaxPeriodUs())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate limit %s must be more than 0 and at most %s", name, RlMaxPeriodText()),
				 errhint("The longest is set by apicore.rate_limit_max_period (a superuser may raise it); "
						 "pass an interval such as '1 second', '1 minute' or '1 hour'.")));
	return (int64) us;
}

static RlKind
RlAlgorithm(const char *name)
{
	if (strcmp(name, "gcra") == 0)
		return RL_GCRA;
	if (strcmp(name, "fixed_window") == 0)
		return RL_FIXED_WINDOW;
	if (strcmp(name, "sliding_window") == 0)
		return RL_SLIDING_WINDOW;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown rate limit algorithm \"%s\"", name),
			 errhint("Use 'gcra', 'fixed_window' or 'sliding_window'.")));
	return RL_FRESH;			/* keep the compiler quiet */
}

static bool
RlModeIsShadow(const char *mode)
{
	if (strcmp(mode, "enforce") == 0)
		return false;
	if (strcmp(mode, "shadow") == 0)
		return true;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown rate limit mode \"%s\"", mode),
			 errhint("Use 'enforce' or 'shadow'.")));
	return false;
}

/*
 * Check limit, period and burst and derive the GCRA constants.  Without a
 * burst the capacity is the limit.
 */
static void
RlMakeParams(RlKind kind, int32 limit, const Interval *period,
			 bool burst_given, int32 burst, RlParams *p)
{
	int128		tolerance;

	if (limit <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate limit \"limit\" must be 1 or more, got %d", limit),
				 errhint("Pass how many requests each period allows.")));
	p->kind = kind;
	p->limit = limit;
	p->period = RlDurationArg(period, "period");
	if (burst_given && burst < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate limit burst must be 1 or more, got %d", burst),
				 errhint("Leave burst NULL to allow bursts of up to \"limit\" requests.")));
	if (burst_given && kind != RL_GCRA)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate limit burst applies only to algorithm gcra"),
				 errhint("Leave burst NULL for fixed_window and sliding_window: they allow \"limit\" per window.")));
	p->burst = burst_given ? burst : limit;
	/* period <= max_period <= 10 years: period in ns fits int64 */
	p->interval_ns = p->period * 1000 / limit;
	if (p->interval_ns < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate limit \"limit\" %d is more than one per nanosecond of the period", limit),
				 errhint("Use a longer period or a smaller limit.")));
	/* an emptied GCRA bucket comes to rest after interval * burst */
	tolerance = (int128) p->interval_ns * p->burst;
	if (tolerance > (int128) RlMaxPeriodUs() * 1000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate limit burst %d takes more than %s to refill at this rate",
						p->burst, RlMaxPeriodText()),
				 errhint("Use a smaller burst or a higher limit; apicore.rate_limit_max_period bounds the refill time.")));
	p->tolerance_ns = (int64) tolerance;
}

/* The cost argument: 0 (peek) up to the capacity of every limit it is charged to. */
static int32
RlCostArg(FunctionCallInfo fcinfo, int argno, const RlCall *calls, int n)
{
	int32		cost;

	RlRequireArg(fcinfo, argno, "cost");
	cost = PG_GETARG_INT32(argno);
	if (cost < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate limit cost must be 0 or more, got %d", cost),
				 errhint("Use 1 per request, more for expensive requests, 0 to peek.")));
	for (int i = 0; i < n; i++)
	{
		int32		capacity = calls[i].params.kind == RL_GCRA ?
			calls[i].params.burst : calls[i].params.limit;

		if (cost > capacity)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("rate limit cost %d is above the burst %d, so it could never be allowed", cost, capacity),
					 errhint("Split the request, or raise burst (or limit).")));
	}
	return cost;
}

/* ---------- the algorithms: pure functions of (params, state, cost, now) ---------- */

/* x / d rounded up, for d > 0 and any sign of x */
static inline int64
CeilDiv(int128 x, int64 d)
{
	int128		q = x / d;

	return (int64) (q + ((x % d) > 0 ? 1 : 0));
}

static inline int64
WindowStart(int64 now, int64 period)
{
	int64		m = now % period;

	return now - (m < 0 ? m + period : m);
}

/*
 * GCRA as redis-cell's CL.THROTTLE: capacity `burst` (redis-cell's
 * max_burst + 1), one unit refilled every interval.  Times are kept in
 * nanoseconds like redis-cell and reported rounded up to microseconds, so a
 * client that waits retry_after is allowed.  Unlike redis-cell, which
 * truncates the comparison to whole seconds, a request is allowed only when
 * its allow time has really come.
 */
static bool
GcraStep(const RlParams *p, const RlState *in, int32 cost, int64 now_us,
		 RlState *out, RlResult *r)
{
	int64		now = now_us * 1000;
	int64		tat = (in->kind == RL_GCRA && in->when > now) ? in->when : now;
	int64		new_tat = tat + p->interval_ns * cost;
	int64		allow_at = new_tat - p->tolerance_ns;
	int64		ttl;
	int64		spare;

	*out = *in;
	r->limit = p->burst;
	r->allowed = now >= allow_at;
	if (r->allowed)
	{
		ttl = new_tat - now;
		r->retry_after = -1;
		out->kind = RL_GCRA;
		out->when = new_tat;
		out->rest_at = CeilDiv(new_tat, 1000);
	}
	else
	{
		ttl = tat - now;
		r->retry_after = CeilDiv(allow_at - now, 1000);
	}
	spare = p->tolerance_ns - ttl;
	r->remaining = spare > -p->interval_ns ? (int32) (spare / p->interval_ns) : 0;
	r->reset_after = CeilDiv(ttl, 1000);
	return r->allowed;
}

/* Fixed window: at most `limit` units per aligned window of `period`. */
static bool
FixedWindowStep(const RlParams *p, const RlState *in, int32 cost, int64 now,
				RlState *out, RlResult *r)
{
	int64		start = WindowStart(now, p->period);
	int64		end = start + p->period;
	int32		used = (in->kind == RL_FIXED_WINDOW && in->when == start) ? in->count : 0;

	*out = *in;
	r->limit = p->limit;
	r->allowed = (int64) used + cost <= p->limit;
	if (r->allowed)
	{
		used += cost;
		out->kind = RL_FIXED_WINDOW;
		out->when = start;
		out->count = used;
		out->rest_at = end;
		r->retry_after = -1;
	}
	else
		r->retry_after = end - now;
	r->remaining = Max(p->limit - used, 0);	/* the limit may have been lowered */
	r->reset_after = used > 0 ? end - now : 0;
	return r->allowed;
}

/*
 * When a sliding-window call rejected now first fits: the earliest moment
 * the weighted count plus cost is within the limit, to the microsecond.
 */
static int64
SlidingRetryAt(const RlParams *p, int64 start, int64 curr, int64 prev, int32 cost)
{
	int64		period = p->period;
	int64		spare = p->limit - curr - cost;

	/* fits in this window once enough of the previous one has slid out */
	if (spare >= 0)
		return start + CeilDiv((int128) period * (prev - spare), prev);
	/* fits in the next window, where this window's count slides out */
	return start + period + CeilDiv((int128) period * (curr - (p->limit - cost)), curr);
}

/*
 * Sliding window counter (the weighted two-window approximation used by
 * Cloudflare and nginx): count = previous * (1 - elapsed/period) + current.
 * Kept exact by comparing in integer microsecond-units.
 */
static bool
SlidingWindowStep(const RlParams *p, const RlState *in, int32 cost, int64 now,
				  RlState *out, RlResult *r)
{
	int64		period = p->period;
	int64		start = WindowStart(now, period);
	int64		curr = 0;
	int64		prev = 0;
	int128		capacity = (int128) p->limit * period;
	int128		weight;

	if (in->kind == RL_SLIDING_WINDOW && in->when == start)
	{
		curr = in->count;
		prev = in->other;
	}
	else if (in->kind == RL_SLIDING_WINDOW && in->when == start - period)
		prev = in->count;

	weight = (int128) prev * (period - (now - start)) + (int128) curr * period;
	*out = *in;
	r->limit = p->limit;
	r->allowed = weight + (int128) cost * period <= capacity;
	if (r->allowed)
	{
		curr += cost;
		weight += (int128) cost * period;
		out->kind = RL_SLIDING_WINDOW;
		out->when = start;
		out->count = (int32) curr;
		out->other = (int32) prev;
		out->rest_at = start + (curr > 0 ? 2 * period : period);
		r->retry_after = -1;
	}
	else
		r->retry_after = SlidingRetryAt(p, start, curr, prev, cost) - now;
	r->remaining = weight >= capacity ? 0 : (int32) ((capacity - weight) / period);
	r->reset_after = curr > 0 ? start + 2 * period - now :
		(prev > 0 ? start + period - now : 0);
	return r->allowed;
}

static bool
RlStep(const RlParams *p, const RlState *in, int32 cost, int64 now,
	   RlState *out, RlResult *r)
{
	switch (p->kind)
	{
		case RL_FIXED_WINDOW:
			return FixedWindowStep(p, in, cost, now, out, r);
		case RL_SLIDING_WINDOW:
			return SlidingWindowStep(p, in, cost, now, out, r);
		default:
			return GcraStep(p, in, cost, now, out, r);
	}
}

/* ---------- the shared table (callers hold the partition lock) ---------- */

static inline int
RlPartitionOf(const RlKey *key)
{
	return (int) (key->h[0] & (RL_PARTITIONS - 1));
}

static inline LWLock *
RlLock(int partition)
{
	return &rl_locks[partition].lock;
}

static inline int32 *
RlBucketOf(const RlKey *key)
{
	uint64		b = (key->h[0] >> 8) & (rl->buckets_per_partition - 1);

	return &rl_buckets[RlPartitionOf(key) * rl->buckets_per_partition + b];
}

static RlEntry *
RlLookup(const RlKey *key)
{
	for (int32 i = *RlBucketOf(key); i != RL_NONE; i = rl_entries[i].next)
		if (rl_entries[i].key.h[0] == key->h[0] && rl_entries[i].key.h[1] == key->h[1])
			return &rl_entries[i];
	return NULL;
}

/* The `next` link of item i of a pool whose items are `stride` bytes apart. */
#define RL_LINK(links, stride, i) (*(int32 *) ((char *) (links) + (Size) (i) * (stride)))
#define RL_ENTRY_LINKS	&rl_entries[0].next, sizeof(RlEntry)
#define RL_SLOT_LINKS	&rl_slots[0].next, sizeof(RlSlot)

/* One item off a free list; RL_NONE when the pool is empty. */
static int32
RlPoolTake(RlFreeList *list, int32 *links, Size stride)
{
	int32		i;

	SpinLockAcquire(&rl->pool_lock);
	i = list->head;
	if (i != RL_NONE)
	{
		list->head = RL_LINK(links, stride, i);
		list->used++;
	}
	SpinLockRelease(&rl->pool_lock);
	return i;
}

/* Give back a chain of `n` items, first..last, already linked through next. */
static void
RlPoolGive(RlFreeList *list, int32 *links, Size stride, int32 first, int32 last, int n)
{
	SpinLockAcquire(&rl->pool_lock);
	RL_LINK(links, stride, last) = list->head;
	list->head = first;
	list->used -= n;
	SpinLockRelease(&rl->pool_lock);
}

static int64
RlPoolUsed(RlFreeList *list)
{
	int64		used;

	SpinLockAcquire(&rl->pool_lock);
	used = list->used;
	SpinLockRelease(&rl->pool_lock);
	return used;
}

/* Drop the leases of a concurrency entry that expired by `now`; returns how many. */
static int
RlPurgeLeases(RlEntry *e, int64 now)
{
	int32	   *link = &e->state.other;
	int64		latest = PG_INT64_MIN;
	int			freed = 0;

	while (*link != RL_NONE)
	{
		RlSlot	   *s = &rl_slots[*link];
		int32		i = *link;

		if (s->expires_at > now)
		{
			latest = Max(latest, s->expires_at);
			link = &s->next;
			continue;
		}
		*link = s->next;
		RlPoolGive(&rl->slot_pool, RL_SLOT_LINKS, i, i, 1);
		freed++;
	}
	e->state.count -= freed;
	e->state.rest_at = latest;
	return freed;
}

/* Unlink entries at rest from one partition and return them to the pool. */
static int
RlReclaimPartition(int partition, int64 now, int *leases)
{
	int32		freed_first = RL_NONE;
	int32		freed_last = RL_NONE;
	int			freed = 0;

	for (int b = 0; b < rl->buckets_per_partition; b++)
	{
		int32	   *link = &rl_buckets[partition * rl->buckets_per_partition + b];

		while (*link != RL_NONE)
		{
			RlEntry    *e = &rl_entries[*link];
			int32		i = *link;

			if (e->state.kind == RL_CONCURRENCY)
			{
				int			purged = RlPurgeLeases(e, now);

				if (leases)
					*leases += purged;
			}
			if (e->pinned || e->state.rest_at > now ||
				(e->state.kind == RL_CONCURRENCY && e->state.count > 0))
			{
				link = &e->next;
				continue;
			}
			*link = e->next;
			e->next = freed_first;
			freed_first = i;
			if (freed_last == RL_NONE)
				freed_last = i;
			freed++;
		}
	}
	if (freed > 0)
		RlPoolGive(&rl->entry_pool, RL_ENTRY_LINKS, freed_first, freed_last, freed);
	return freed;
}

/*
 * Free entries when the pool is empty: keys at rest in our own partition
 * first, then in any other partition whose lock is free right now (never
 * waiting, so no lock-order deadlock with partitions we hold).
 */
static void
RlMakeRoom(int partition, uint32 held, int64 now)
{
	int			freed = RlReclaimPartition(partition, now, NULL);

	for (int i = 1; freed == 0 && i < RL_PARTITIONS; i++)
	{
		int			other = (partition + i) & (RL_PARTITIONS - 1);

		if ((held & (1U << other)) || !LWLockConditionalAcquire(RlLock(other), LW_EXCLUSIVE))
			continue;
		freed = RlReclaimPartition(other, now, NULL);
		LWLockRelease(RlLock(other));
	}
	if (freed > 0)
		pg_atomic_fetch_add_u64(&rl->evictions, freed);
}

static RlEntry *RlLinkNew(int32 i, const RlKey *key);

/* A new, fresh entry for key; NULL when the table is full of busy keys. */
static RlEntry *
RlInsert(const RlKey *key, uint32 held, int64 now)
{
	int32		i = RlPoolTake(&rl->entry_pool, RL_ENTRY_LINKS);

	if (i == RL_NONE)
	{
		RlMakeRoom(RlPartitionOf(key), held, now);
		i = RlPoolTake(&rl->entry_pool, RL_ENTRY_LINKS);
		if (i == RL_NONE)
		{
			pg_atomic_fetch_add_u64(&rl->full_events, 1);
			return NULL;
		}
	}
	return RlLinkNew(i, key);
}

/* Put pool entry i, fresh, at the head of key's bucket. */
static RlEntry *
RlLinkNew(int32 i, const RlKey *key)
{
	RlEntry    *e = &rl_entries[i];
	int32	   *bucket = RlBucketOf(key);

	e->key = *key;
	e->pinned = false;
	memset(&e->state, 0, sizeof(RlState));
	e->state.other = RL_NONE;
	e->state.rest_at = PG_INT64_MIN;	/* a fresh state is at rest */
	e->next = *bucket;
	*bucket = i;
	return e;
}

/* Remove key's entry, if any, returning its lease slots too. */
static bool
RlRemove(const RlKey *key)
{
	int32	   *link = RlBucketOf(key);

	for (; *link != RL_NONE; link = &rl_entries[*link].next)
	{
		RlEntry    *e = &rl_entries[*link];
		int32		i = *link;

		if (e->key.h[0] != key->h[0] || e->key.h[1] != key->h[1])
			continue;
		if (e->state.kind == RL_CONCURRENCY)
			RlPurgeLeases(e, PG_INT64_MAX);
		*link = e->next;
		RlPoolGive(&rl->entry_pool, RL_ENTRY_LINKS, i, i, 1);
		return true;
	}
	return false;
}

/* ---------- applying limits ---------- */

static uint32
RlLockPartitions(const RlCall *calls, int n)
{
	uint32		held = 0;

	for (int i = 0; i < n; i++)
		held |= 1U << RlPartitionOf(&calls[i].key);
	/* ascending order: two multi-limit calls never wait on each other in a cycle */
	for (int part = 0; part < RL_PARTITIONS; part++)
		if (held & (1U << part))
			LWLockAcquire(RlLock(part), LW_EXCLUSIVE);
	return held;
}

static void
RlUnlockPartitions(uint32 held)
{
	for (int part = 0; part < RL_PARTITIONS; part++)
		if (held & (1U << part))
			LWLockRelease(RlLock(part));
}

/* Find (or, unless peeking, create) every call's entry; false when full and denying. */
static bool
RlFindEntries(RlCall *calls, int n, int32 cost, uint32 held, int64 now)
{
	for (int i = 0; i < n; i++)
		calls[i].entry = NULL;
	for (int i = 0; i < n; i++)
	{
		RlEntry    *e = RlLookup(&calls[i].key);

		if (e == NULL && cost > 0)
		{
			e = RlInsert(&calls[i].key, held, now);
			if (e == NULL && rl_when_full == RL_FULL_DENY)
				return false;
		}
		if (e)
			e->pinned = true;
		calls[i].entry = e;
	}
	return true;
}

/* The one result a multi-limit call reports: the limit that decided it. */
static void
RlCombineResults(const RlCall *calls, int n, bool allowed, RlResult *out)
{
	const RlResult *pick = NULL;

	for (int i = 0; i < n; i++)
	{
		const RlResult *r = &calls[i].result;

		if (!allowed)
		{
			/* the enforced rejection that lasts longest */
			if (!r->allowed && !calls[i].shadow &&
				(pick == NULL || r->retry_after > pick->retry_after))
				pick = r;
		}
		else if (pick == NULL || r->remaining < pick->remaining)
			pick = r;
	}
	*out = *pick;
	out->allowed = allowed;
	if (allowed)
		out->retry_after = -1;
}

static void
RlCount(const RlCall *calls, int n, int32 cost, bool allowed)
{
	if (cost == 0)
		return;					/* peeks are not traffic */
	for (int i = 0; i < n; i++)
	{
		RlStat	   *s = calls[i].stat;

		if (!calls[i].result.allowed)
			pg_atomic_fetch_add_u64(calls[i].shadow ? &s->shadow_rejected : &s->rejected, 1);
		else if (allowed)
			pg_atomic_fetch_add_u64(&s->allowed, 1);
	}
}

/* The name a result reports for call: its policy, or NULL for an ad hoc limit. */
static const char *
RlCallPolicy(const RlCall *call)
{
	return call->policy[0] != '\0' ? call->policy : NULL;
}

static void
RlFullDenied(const RlCall *calls, int n, RlResult *out)
{
	out->allowed = false;
	out->limit = calls[0].params.kind == RL_GCRA ? calls[0].params.burst : calls[0].params.limit;
	out->remaining = 0;
	out->retry_after = RL_FULL_RETRY;
	out->reset_after = 0;
	out->policy = RlCallPolicy(&calls[0]);
	for (int i = 0; i < n; i++)
		pg_atomic_fetch_add_u64(&calls[i].stat->rejected, 1);
}

/*
 * Apply every limit, all or nothing: under the partition locks, compute each
 * limit's verdict on its current state, and store the new states only when
 * every enforced limit allows.  Shadow limits never reject, and consume only
 * when they would have allowed.
 */
static void
RlApply(RlCall *calls, int n, int32 cost, RlResult *out)
{
	int64		now = RlNow();
	uint32		held = RlLockPartitions(calls, n);
	bool		allowed = true;
	static const RlState fresh = {RL_FRESH, 0, RL_NONE, 0, PG_INT64_MIN};

	if (!RlFindEntries(calls, n, cost, held, now))
	{
		for (int i = 0; i < n; i++)
			if (calls[i].entry)
				calls[i].entry->pinned = false;
		RlUnlockPartitions(held);
		RlFullDenied(calls, n, out);
		return;
	}
	for (int i = 0; i < n; i++)
	{
		const RlState *in = calls[i].entry ? &calls[i].entry->state : &fresh;

		if (!RlStep(&calls[i].params, in, cost, now, &calls[i].next, &calls[i].result) &&
			!calls[i].shadow)
			allowed = false;
		calls[i].result.policy = RlCallPolicy(&calls[i]);
	}
	for (int i = 0; i < n; i++)
	{
		RlEntry    *e = calls[i].entry;

		if (e == NULL)
			continue;
		if (allowed && cost > 0 && calls[i].result.allowed)
			e->state = calls[i].next;
		e->pinned = false;
	}
	RlUnlockPartitions(held);
	RlCount(calls, n, cost, allowed);
	RlCombineResults(calls, n, allowed, out);
}

/* The result as apicore.rate_limit_result, its TupleDesc cached per call site. */
static Datum
RlResultDatum(FunctionCallInfo fcinfo, const RlResult *r)
{
	TupleDesc	tupdesc = (TupleDesc) fcinfo->flinfo->fn_extra;
	Datum		values[6];
	bool		nulls[6] = {false, false, false, false, false, r->policy == NULL};

	if (tupdesc == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
		TupleDesc	found;

		if (get_call_result_type(fcinfo, NULL, &found) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "apicore: rate limit function must return a composite type");
		tupdesc = BlessTupleDesc(CreateTupleDescCopy(found));
		MemoryContextSwitchTo(old);
		fcinfo->flinfo->fn_extra = tupdesc;
	}
	values[0] = BoolGetDatum(r->allowed);
	values[1] = Int32GetDatum(r->limit);
	values[2] = Int32GetDatum(r->remaining);
	values[3] = Float8GetDatum(r->retry_after < 0 ? -1.0 : (double) r->retry_after / USECS_PER_SEC);
	values[4] = Float8GetDatum((double) r->reset_after / USECS_PER_SEC);
	values[5] = r->policy ? CStringGetTextDatum(r->policy) : (Datum) 0;
	return HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
}

/* apicore.rate_limit(key, limit, period, burst, cost): an ad hoc GCRA limit */
Datum
apicore_rate_limit(PG_FUNCTION_ARGS)
{
	RlCall		call;
	RlResult	result;
	text	   *key;
	int32		cost;

	ApicoreRequirePreload("rate_limit");
	key = RlKeyArg(fcinfo, 0);
	RlRequireArg(fcinfo, 1, "\"limit\"");
	RlRequireArg(fcinfo, 2, "period");
	RlMakeParams(RL_GCRA, PG_GETARG_INT32(1), PG_GETARG_INTERVAL_P(2),
				 !PG_ARGISNULL(3), PG_ARGISNULL(3) ? 0 : PG_GETARG_INT32(3), &call.params);
	cost = RlCostArg(fcinfo, 4, &call, 1);
	RlHashKey(RL_NS_ADHOC, NULL, &call.params, key, &call.key);
	call.shadow = false;
	call.stat = &rl->stats[0];
	call.policy[0] = '\0';
	RlApply(&call, 1, cost, &result);
	return RlResultDatum(fcinfo, &result);
}

/* ---------- policies ---------- */

/* The shared counters for a policy name, created on first use. */
static RlStat *
RlStatFor(const char *name)
{
	RlStat	   *found = NULL;

	SpinLockAcquire(&rl->stats_lock);
	for (int i = 1; i < rl->nstats && !found; i++)
		if (strcmp(rl->stats[i].name, name) == 0)
			found = &rl->stats[i];
	if (!found && rl->nstats < RL_MAX_STATS)
	{
		found = &rl->stats[rl->nstats++];
		strlcpy(found->name, name, NAMEDATALEN);
	}
	SpinLockRelease(&rl->stats_lock);
	/* past RL_MAX_STATS policies, the rest share the ad hoc counters */
	return found ? found : &rl->stats[0];
}

static bool RlValidPolicyName(const char *name);

/* The policy table's columns the cache reads, and their types. */
static const struct
{
	const char *name;
	Oid			type;
}			rl_policy_columns[6] = {
	{"name", TEXTOID}, {"limit", INT4OID}, {"period", INTERVALOID},
	{"burst", INT4OID}, {"algorithm", TEXTOID}, {"mode", TEXTOID}
};

/* Attribute numbers of rl_policy_columns in rel; the types must match. */
static void
RlPolicyAttnums(Relation rel, AttrNumber *attnums)
{
	for (int col = 0; col < 6; col++)
	{
		AttrNumber	attnum = get_attnum(RelationGetRelid(rel), rl_policy_columns[col].name);

		if (attnum == InvalidAttrNumber ||
			TupleDescAttr(RelationGetDescr(rel), attnum - 1)->atttypid != rl_policy_columns[col].type)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("apicore: column \"%s\" of apicore.rate_limit_policy is missing or has another type",
							rl_policy_columns[col].name),
					 errhint("The table was altered; reinstall the extension.")));
		attnums[col] = attnum;
	}
}

/* Copy one stored row into the cache, as it is: RlCheckPolicy judges it on use. */
static void
RlLoadPolicyRow(HTAB *cache, TupleTableSlot *slot, const AttrNumber *attnums)
{
	bool		isnull[6];
	Datum		v[6];
	char	   *name;
	RlPolicy   *policy;
	bool		found;

	for (int col = 0; col < 6; col++)
		v[col] = slot_getattr(slot, attnums[col], &isnull[col]);
	if (isnull[0])
		return;					/* no name: nobody can ask for it */
	name = TextDatumGetCString(v[0]);
	if (strlen(name) >= NAMEDATALEN)
		return;					/* longer than any name a lookup accepts */
	policy = hash_search(cache, name, HASH_ENTER, &found);
	memset((char *) policy + NAMEDATALEN, 0, sizeof(RlPolicy) - NAMEDATALEN);
	policy->has_null = isnull[1] || isnull[2] || isnull[4] || isnull[5] || found;
	if (policy->has_null)
		return;
	policy->limit = DatumGetInt32(v[1]);
	policy->period = *DatumGetIntervalP(v[2]);
	policy->burst_given = !isnull[3];
	policy->burst = isnull[3] ? 0 : DatumGetInt32(v[3]);
	policy->algorithm = TextDatumGetCString(v[4]);
	policy->mode = TextDatumGetCString(v[5]);
}

/* Drop the cache when apicore.rate_limit_policy changes (or everything is reset). */
static void
RlPolicyRelcacheCallback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == policy_relid)
	{
		policy_cache_valid = false;
		policy_invalidations++;
	}
}

static HTAB *
RlNewPolicyHash(MemoryContext cxt)
{
	HASHCTL		ctl = {0};

	ctl.keysize = NAMEDATALEN;
	ctl.entrysize = sizeof(RlPolicy);
	ctl.hcxt = cxt;
	return hash_create("apicore rate limit policies", 64, &ctl,
					   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
}

/*
 * Read apicore.rate_limit_policy into a fresh cache with the table API: no
 * SQL, no privilege check, nothing resolved by name, so it works the same
 * for every caller.  The latest snapshot, so a cache kept across
 * transactions never holds an older state than the last invalidation.
 */
static void
RlLoadPolicies(void)
{
	/* built under the caller's context: an error while loading frees it */
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "apicore rate limit policies",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	uint64		invalidations;
	HTAB	   *cache = RlNewPolicyHash(cxt);
	AttrNumber	attnums[6];
	Relation	rel;
	Snapshot	snapshot;
	TableScanDesc scan;
	TupleTableSlot *slot;

	if (!policy_callback_registered)
	{
		CacheRegisterRelcacheCallback(RlPolicyRelcacheCallback, (Datum) 0);
		policy_callback_registered = true;
	}
	policy_relid = ApicoreTableOid("rate_limit_policy");
	rel = table_open(policy_relid, AccessShareLock);
	invalidations = policy_invalidations;	/* after the lock: invals accepted */
	RlPolicyAttnums(rel, attnums);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snapshot, 0, NULL);
	slot = table_slot_create(rel, NULL);
	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
		RlLoadPolicyRow(cache, slot, attnums);
	ExecDropSingleTupleTableSlot(slot);
	table_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);
	MemoryContextSwitchTo(old);

	if (policy_cache_cxt)
		MemoryContextDelete(policy_cache_cxt);
	MemoryContextSetParent(cxt, TopMemoryContext);
	policy_cache_cxt = cxt;
	policy_cache = cache;
	/* a change that arrived while reading is read again next time */
	policy_cache_valid = invalidations == policy_invalidations;
}

static void
RlPolicyErrorContext(void *arg)
{
	errcontext("rate limit policy \"%s\" as stored in apicore.rate_limit_policy; "
			   "redefine it with apicore.rate_limit_policy_set()", (const char *) arg);
}

/*
 * Judge a stored row on its first use, as rate_limit_policy_set judges its
 * arguments: a row written past the table's constraints (by a superuser)
 * fails here with a clean error naming the policy, and only its own calls.
 */
static void
RlCheckPolicy(RlPolicy *policy)
{
	ErrorContextCallback context;

	context.callback = RlPolicyErrorContext;
	context.arg = policy->name;
	context.previous = error_context_stack;
	error_context_stack = &context;
	if (policy->has_null || !RlValidPolicyName(policy->name))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate limit policy \"%s\" is invalid: a NULL column, a duplicate or a bad name",
						policy->name),
				 errhint("Redefine it with apicore.rate_limit_policy_set() or drop it.")));
	RlMakeParams(RlAlgorithm(policy->algorithm), policy->limit, &policy->period,
				 policy->burst_given, policy->burst, &policy->params);
	policy->shadow = RlModeIsShadow(policy->mode);
	error_context_stack = context.previous;
	policy->stat = rl ? RlStatFor(policy->name) : NULL;	/* headers work without preload */
	policy->checked = true;
}

/* The cache of policies, reloaded once a change to the table was seen. */
static void
RlRefreshPolicies(void)
{
	if (!policy_cache_valid)
		RlLoadPolicies();
}

/* A policy by name, checked; NULL if there is none (missing_ok). */
static RlPolicy *
RlPolicyFind(const char *name, bool missing_ok)
{
	RlPolicy   *policy = NULL;

	if (strlen(name) < NAMEDATALEN)
	{
		RlRefreshPolicies();
		policy = hash_search(policy_cache, name, HASH_FIND, NULL);
		if (policy == NULL && !missing_ok)
		{
			/* committed by another session after this transaction's last invalidations */
			RlLoadPolicies();
			policy = hash_search(policy_cache, name, HASH_FIND, NULL);
		}
	}
	if (policy == NULL && !missing_ok)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("rate limit policy \"%s\" does not exist", name),
				 errhint("Create it with apicore.rate_limit_policy_set().")));
	if (policy && !policy->checked)
		RlCheckPolicy(policy);
	return policy;
}

static RlPolicy *
RlPolicyLookup(const char *name)
{
	return RlPolicyFind(name, false);
}

static void
RlPolicyCall(const char *policy_name, const text *key, RlCall *call)
{
	RlPolicy   *policy = RlPolicyLookup(policy_name);

	call->params = policy->params;
	call->shadow = policy->shadow;
	call->stat = policy->stat;
	strlcpy(call->policy, policy->name, sizeof(call->policy));
	RlHashKey(RL_NS_POLICY, policy->name, NULL, key, &call->key);
}

/* apicore.rate_limit_check(policy, key, cost) */
Datum
apicore_rate_limit_check(PG_FUNCTION_ARGS)
{
	RlCall		call;
	RlResult	result;
	text	   *key;
	int32		cost;

	ApicoreRequirePreload("rate_limit_check");
	RlRequireArg(fcinfo, 0, "policy");
	key = RlKeyArg(fcinfo, 1);
	RlPolicyCall(text_to_cstring(PG_GETARG_TEXT_PP(0)), key, &call);
	cost = RlCostArg(fcinfo, 2, &call, 1);
	RlApply(&call, 1, cost, &result);
	return RlResultDatum(fcinfo, &result);
}

/* The elements of a one-dimensional text[] argument, none NULL. */
static int
RlTextArrayArg(FunctionCallInfo fcinfo, int argno, const char *name, Datum **elems)
{
	ArrayType  *array;
	bool	   *nulls;
	int			n;

	RlRequireArg(fcinfo, argno, name);
	array = PG_GETARG_ARRAYTYPE_P(argno);
	if (ARR_NDIM(array) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("rate limit %s must be a one-dimensional array", name),
				 errhint("Pass ARRAY['a', 'b'], one element per limit.")));
	deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("rate limit %s must not contain NULL (element %d)", name, i + 1),
					 errhint("Pass one policy name and one key per limit.")));
	return n;
}

static void
RlCheckCallCount(int npolicies, int nkeys)
{
	if (npolicies != nkeys)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("rate limit policies and keys must have the same length, got %d and %d",
						npolicies, nkeys),
				 errhint("Pass one key for each policy, in the same order.")));
	if (npolicies < 1 || npolicies > RL_MAX_LIMITS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate limit policies must name 1 to %d limits, got %d", RL_MAX_LIMITS, npolicies),
				 errhint("Check the limits that matter for this request together.")));
}

static void
RlCheckDistinct(const RlCall *calls, int n, Datum *policies, Datum *keys)
{
	for (int i = 0; i < n; i++)
		for (int j = 0; j < i; j++)
			if (calls[i].key.h[0] == calls[j].key.h[0] && calls[i].key.h[1] == calls[j].key.h[1])
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("rate limit policy \"%s\" with key \"%s\" is named twice",
								TextDatumGetCString(policies[i]), TextDatumGetCString(keys[i])),
						 errhint("Name each (policy, key) pair once; raise cost to charge more.")));
}

/* apicore.rate_limit_check(policies[], keys[], cost): all or nothing */
Datum
apicore_rate_limit_check_many(PG_FUNCTION_ARGS)
{
	RlCall		calls[RL_MAX_LIMITS];
	RlResult	result;
	Datum	   *policies;
	Datum	   *keys;
	int			n;
	int32		cost;

	ApicoreRequirePreload("rate_limit_check");
	n = RlTextArrayArg(fcinfo, 0, "policies", &policies);
	RlCheckCallCount(n, RlTextArrayArg(fcinfo, 1, "keys", &keys));
	for (int i = 0; i < n; i++)
	{
		text	   *key = DatumGetTextPP(keys[i]);

		if (VARSIZE_ANY_EXHDR(key) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("rate limit key must not be empty (element %d of keys)", i + 1),
					 errhint("Use what identifies the caller, e.g. the API key or user id.")));
		RlPolicyCall(TextDatumGetCString(policies[i]), key, &calls[i]);
	}
	RlCheckDistinct(calls, n, policies, keys);
	cost = RlCostArg(fcinfo, 2, calls, n);
	RlApply(calls, n, cost, &result);
	return RlResultDatum(fcinfo, &result);
}

/*
 * Remove every rate-limit entry of key's group (ad hoc limits with any
 * parameters, every policy), never its concurrency leases.  Entries are
 * placed by their full identity, so this visits every partition.
 */
static bool
RlRemoveGroup(const RlKey *key)
{
	bool		removed = false;

	for (int part = 0; part < RL_PARTITIONS; part++)
	{
		LWLockAcquire(RlLock(part), LW_EXCLUSIVE);
		for (int b = 0; b < rl->buckets_per_partition; b++)
		{
			int32	   *link = &rl_buckets[part * rl->buckets_per_partition + b];

			while (*link != RL_NONE)
			{
				RlEntry    *e = &rl_entries[*link];
				int32		i = *link;

				if (e->key.group != key->group || e->pinned || e->state.kind == RL_CONCURRENCY)
				{
					link = &e->next;
					continue;
				}
				*link = e->next;
				RlPoolGive(&rl->entry_pool, RL_ENTRY_LINKS, i, i, 1);
				removed = true;
			}
		}
		LWLockRelease(RlLock(part));
	}
	return removed;
}

/* apicore.rate_limit_reset(key, policy): forget a key (everywhere, or one policy's) */
Datum
apicore_rate_limit_reset(PG_FUNCTION_ARGS)
{
	text	   *key;
	RlKey		k;
	bool		removed;

	ApicoreRequirePreload("rate_limit_reset");
	key = RlKeyArg(fcinfo, 0);
	if (PG_ARGISNULL(1))
	{
		RlHashKey(RL_NS_ADHOC, NULL, NULL, key, &k);
		PG_RETURN_BOOL(RlRemoveGroup(&k));
	}
	RlHashKey(RL_NS_POLICY, RlPolicyLookup(text_to_cstring(PG_GETARG_TEXT_PP(1)))->name, NULL, key, &k);
	LWLockAcquire(RlLock(RlPartitionOf(&k)), LW_EXCLUSIVE);
	removed = RlRemove(&k);
	LWLockRelease(RlLock(RlPartitionOf(&k)));
	PG_RETURN_BOOL(removed);
}

static bool
RlValidPolicyName(const char *name)
{
	size_t		len = strlen(name);

	if (len < 1 || len >= NAMEDATALEN)
		return false;
	for (const char *c = name; *c; c++)
		if (!isalnum((unsigned char) *c) && !strchr("_-.:", *c))
			return false;
	return true;
}

/*
 * Run one statement on apicore.rate_limit_policy as apicore's owner: callers
 * need EXECUTE on the function (apicore_rate_limit_admin), never privileges
 * on the table.  Everything in the SQL is qualified; ApicoreBecome adds
 * SECURITY_RESTRICTED_OPERATION and search_path = pg_catalog, pg_temp.
 */
static uint64
RlPolicyWrite(const char *sql, int nargs, const Oid *types, Datum *args, const char *nulls,
			  int expected)
{
	ApicoreIdentity id;
	uint64		processed;

	ApicoreBecome(&id, ApicoreOwner(), 0);
	SPI_connect();
	if (SPI_execute_with_args(sql, nargs, (Oid *) types, args, nulls, false, 0) != expected)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("apicore: could not write apicore.rate_limit_policy")));
	processed = SPI_processed;
	SPI_finish();
	ApicoreRestore(&id);
	return processed;
}

/* apicore.rate_limit_policy_set(name, limit, period, burst, algorithm, mode) */
Datum
apicore_rate_limit_policy_set(PG_FUNCTION_ARGS)
{
	static const Oid types[6] = {TEXTOID, INT4OID, INTERVALOID, INT4OID, TEXTOID, TEXTOID};
	static const char *const argnames[6] = {"policy name", "\"limit\"", "period", NULL, "algorithm", "mode"};
	Datum		args[6];
	char		nulls[6];
	RlParams	params;

	for (int i = 0; i < 6; i++)
	{
		if (argnames[i])
			RlRequireArg(fcinfo, i, argnames[i]);
		args[i] = PG_GETARG_DATUM(i);
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
	}
	if (!RlValidPolicyName(TextDatumGetCString(args[0])))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate limit policy name must be 1 to 63 letters, digits, '_', '-', '.' or ':'"),
				 errhint("Use a name such as 'free', 'pro' or 'search:per_user'.")));
	RlMakeParams(RlAlgorithm(TextDatumGetCString(args[4])), PG_GETARG_INT32(1),
				 PG_GETARG_INTERVAL_P(2), !PG_ARGISNULL(3),
				 PG_ARGISNULL(3) ? 0 : PG_GETARG_INT32(3), &params);
	(void) RlModeIsShadow(TextDatumGetCString(args[5]));
	(void) RlPolicyWrite("INSERT INTO apicore.rate_limit_policy "
						 "(name, \"limit\", period, burst, algorithm, mode) "
						 "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO UPDATE SET "
						 "\"limit\" = EXCLUDED.\"limit\", period = EXCLUDED.period, "
						 "burst = EXCLUDED.burst, algorithm = EXCLUDED.algorithm, "
						 "mode = EXCLUDED.mode, updated_at = pg_catalog.now()",
						 6, types, args, nulls, SPI_OK_INSERT);
	PG_RETURN_VOID();
}

/* apicore.rate_limit_policy_drop(name): false if there was none */
Datum
apicore_rate_limit_policy_drop(PG_FUNCTION_ARGS)
{
	static const Oid types[1] = {TEXTOID};
	Datum		args[1];

	RlRequireArg(fcinfo, 0, "policy name");
	args[0] = PG_GETARG_DATUM(0);
	PG_RETURN_BOOL(RlPolicyWrite("DELETE FROM apicore.rate_limit_policy "
								 "WHERE name OPERATOR(pg_catalog.=) $1",
								 1, types, args, " ", SPI_OK_DELETE) > 0);
}

/*
 * Statement trigger on apicore.rate_limit_policy: invalidate the table's
 * relcache entry, which runs RlPolicyRelcacheCallback in this backend at
 * the next command and, once committed, in every other backend (and on hot
 * standbys, where the commit record carries it); an abort replays it here.
 */
Datum
apicore_rate_limit_policy_changed(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("apicore: _rate_limit_policy_changed must be called as a trigger"),
				 errhint("It is the statement trigger of apicore.rate_limit_policy; do not call it.")));
	CacheInvalidateRelcache(((TriggerData *) fcinfo->context)->tg_relation);
	policy_cache_valid = false;
	return PointerGetDatum(NULL);
}

/* ---------- headers (draft-ietf-httpapi-ratelimit-headers) ---------- */

/*
 * Text that goes into an HTTP header value: printable ASCII only (RFC 8941
 * sf-string characters), so no CR/LF can start another header and nothing
 * needs an encoding the receiver may not share.
 */
static bool
RlHeaderSafe(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if ((unsigned char) s[i] < 0x20 || (unsigned char) s[i] > 0x7e)
			return false;
	return true;
}

/* The policy name as an RFC 8941 sf-string: quoted, \ and " escaped. */
static void
RlAppendSfString(StringInfo buf, const char *name)
{
	size_t		len = strlen(name);

	if (len > RL_MAX_HEADER_NAME || !RlHeaderSafe(name, len))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate_limit_headers: policy name must be at most %d printable ASCII characters (0x20 to 0x7E)",
						RL_MAX_HEADER_NAME),
				 errhint("A header value cannot carry control or non-ASCII characters; use the policy's name.")));
	appendStringInfoChar(buf, '"');
	for (const char *c = name; *c; c++)
	{
		if (*c == '"' || *c == '\\')
			appendStringInfoChar(buf, '\\');
		appendStringInfoChar(buf, *c);
	}
	appendStringInfoChar(buf, '"');
}

/* Field `attno` of r, which must not be NULL. */
static Datum
RlResultField(HeapTupleHeader r, int attno, const char *name)
{
	bool		isnull;
	Datum		value = GetAttributeByNum(r, attno, &isnull);

	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("rate_limit_headers: r.%s must not be NULL", name),
				 errhint("Pass the result of apicore.rate_limit() or apicore.rate_limit_check().")));
	return value;
}

/* Seconds of r's *_after field rounded up, at least `floor`. */
static int64
RlResultSeconds(HeapTupleHeader r, int attno, const char *name, int64 floor)
{
	double		secs = DatumGetFloat8(RlResultField(r, attno, name));

	if (isnan(secs) || secs > 1e15 || secs < -1e15)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate_limit_headers: r.%s must be a number of seconds, got %g", name, secs),
				 errhint("Pass the result of apicore.rate_limit() or apicore.rate_limit_check().")));
	return Max((int64) ceil(secs), floor);
}

/* An interval in whole seconds, rounded up, as extract(epoch) counts it. */
static int64
RlWindowSeconds(const Interval *span)
{
	int128		us = (int128) span->time + (int128) span->day * USECS_PER_DAY +
		(int128) (span->month / MONTHS_PER_YEAR) * 31557600 * USECS_PER_SEC +
		(int128) (span->month % MONTHS_PER_YEAR) * DAYS_PER_MONTH * USECS_PER_DAY;

	if (us <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate_limit_headers: period must be more than 0"),
				 errhint("Pass the period of the limit, e.g. '1 minute'.")));
	return CeilDiv(us, USECS_PER_SEC);
}

static void
RlAppendHeader(StringInfo json, const char *field, const StringInfo value)
{
	/* every value is built from checked parts; check the whole once more */
	if (!RlHeaderSafe(value->data, value->len))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate_limit_headers: %s would carry a control or non-ASCII character", field)));
	if (json->len > 1)
		appendStringInfoString(json, ", ");
	escape_json(json, field);
	appendStringInfoString(json, ": ");
	escape_json(json, value->data);
}

/*
 * The policy the headers name: the policy argument if given, else the one
 * that decided r (rate_limit_check fills r.policy; for several policies, the
 * one whose numbers r carries), else NULL: an ad hoc limit, named "default".
 * A result made before r had a policy field (0.1.0) reads as NULL.
 */
static const char *
RlHeadersPolicyName(FunctionCallInfo fcinfo, HeapTupleHeader r)
{
	bool		isnull;
	Datum		decided;

	if (!PG_ARGISNULL(1))
		return text_to_cstring(PG_GETARG_TEXT_PP(1));
	decided = GetAttributeByNum(r, 6, &isnull);
	return isnull ? NULL : TextDatumGetCString(decided);
}

/* apicore.rate_limit_headers(r, policy, period): RateLimit-Policy, RateLimit, Retry-After */
Datum
apicore_rate_limit_headers(PG_FUNCTION_ARGS)
{
	HeapTupleHeader r;
	const char *name;
	RlPolicy   *policy = NULL;
	int64		quota;
	int64		window = -1;
	bool		allowed;
	int64		until;
	StringInfoData item, value, json;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("rate_limit_headers: r must not be NULL"),
				 errhint("Pass the result of apicore.rate_limit() or apicore.rate_limit_check().")));
	r = PG_GETARG_HEAPTUPLEHEADER(0);
	name = RlHeadersPolicyName(fcinfo, r);
	if (name != NULL)
		policy = RlPolicyFind(name, true);
	else
		name = "default";
	initStringInfo(&item);
	RlAppendSfString(&item, name);
	quota = policy ? policy->params.limit : DatumGetInt32(RlResultField(r, 2, "limit"));
	if (policy)
		window = policy->params.period / USECS_PER_SEC + (policy->params.period % USECS_PER_SEC > 0);
	else if (!PG_ARGISNULL(2))
		window = RlWindowSeconds(PG_GETARG_INTERVAL_P(2));

	initStringInfo(&json);
	appendStringInfoChar(&json, '{');
	initStringInfo(&value);
	appendStringInfo(&value, "%s;q=" INT64_FORMAT, item.data, quota);
	if (window >= 0)
		appendStringInfo(&value, ";w=" INT64_FORMAT, window);
	RlAppendHeader(&json, "RateLimit-Policy", &value);
	/*
	 * Allowed: t is when the quota is whole again (reset_after).  Rejected:
	 * t is when it is available again, the same point as Retry-After (draft
	 * -09: "SHOULD be the same"; -10: Retry-After not earlier than t).  Both
	 * are delay-seconds rounded up: a client that waits this long is allowed.
	 */
	allowed = DatumGetBool(RlResultField(r, 1, "allowed"));
	until = allowed ? RlResultSeconds(r, 5, "reset_after", 0) :
		RlResultSeconds(r, 4, "retry_after", 1);
	resetStringInfo(&value);
	appendStringInfo(&value, "%s;r=%d;t=" INT64_FORMAT, item.data,
					 Max(DatumGetInt32(RlResultField(r, 3, "remaining")), 0), until);
	RlAppendHeader(&json, "RateLimit", &value);
	if (!allowed)
	{
		resetStringInfo(&value);
		appendStringInfo(&value, INT64_FORMAT, until);
		RlAppendHeader(&json, "Retry-After", &value);
	}
	appendStringInfoChar(&json, '}');
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(json.data)));
}

/* ---------- concurrency leases ---------- */

/*
 * Release one lease; false if the token is unknown, its lease ran out, or
 * (holder valid) another role took it: a token seen or guessed by another
 * role releases nothing, and looks like any unknown token.
 */
static bool
RlReleaseLease(const RlKey *key, int64 token, Oid holder)
{
	int			part = RlPartitionOf(key);
	bool		found = false;
	RlEntry    *e;

	LWLockAcquire(RlLock(part), LW_EXCLUSIVE);
	e = RlLookup(key);
	if (e && e->state.kind == RL_CONCURRENCY)
	{
		RlPurgeLeases(e, RlNow());
		for (int32 *link = &e->state.other; *link != RL_NONE; link = &rl_slots[*link].next)
		{
			int32		i = *link;

			if (rl_slots[i].token != token ||
				(OidIsValid(holder) && rl_slots[i].holder != holder))
				continue;
			*link = rl_slots[i].next;
			RlPoolGive(&rl->slot_pool, RL_SLOT_LINKS, i, i, 1);
			e->state.count--;
			found = true;
			break;
		}
		RlPurgeLeases(e, RlNow());	/* recompute rest_at */
	}
	LWLockRelease(RlLock(part));
	return found;
}

static void
RlForgetHeldLease(int64 token)
{
	ListCell   *lc;

	foreach(lc, held_leases)
	{
		RlHeldLease *held = lfirst(lc);

		if (held->token == token)
		{
			held_leases = foreach_delete_current(held_leases, lc);
			pfree(held);
			return;
		}
	}
}

/* before_shmem_exit: a backend that goes away gives its leases back. */
static void
RlReleaseHeldLeases(int code, Datum arg)
{
	ListCell   *lc;

	foreach(lc, held_leases)
	{
		RlHeldLease *held = lfirst(lc);

		RlReleaseLease(&held->key, held->token, InvalidOid);
	}
	held_leases = NIL;
}

/*
 * A token for a new lease of e: 63 random bits (libsodium), so tokens cannot
 * be guessed from one another, positive (0 and RL_LEASES_FULL mean none),
 * and distinct among e's leases.
 */
static int64
RlNewToken(const RlEntry *e)
{
	for (;;)
	{
		uint64		r;
		int64		token;
		bool		taken = false;

		randombytes_buf(&r, sizeof(r));
		token = (int64) (r & PG_INT64_MAX);
		for (int32 i = e->state.other; i != RL_NONE && !taken; i = rl_slots[i].next)
			taken = rl_slots[i].token == token;
		if (token > 0 && !taken)
			return token;
	}
}

/*
 * Take a lease on an entry under its partition lock: the token, 0 when
 * max_in_flight are already out, RL_LEASES_FULL when the slot pool is empty.
 */
static int64
RlTakeLease(RlEntry *e, int32 max_in_flight, int64 expires_at, int64 now)
{
	int32		i;

	if (e->state.kind == RL_FRESH)
	{
		e->state.kind = RL_CONCURRENCY;
		e->state.count = 0;
		e->state.other = RL_NONE;
	}
	RlPurgeLeases(e, now);
	if (e->state.count >= max_in_flight)
		return 0;
	if ((i = RlPoolTake(&rl->slot_pool, RL_SLOT_LINKS)) == RL_NONE)
		return RL_LEASES_FULL;
	rl_slots[i].token = RlNewToken(e);
	rl_slots[i].expires_at = expires_at;
	rl_slots[i].pid = MyProcPid;
	rl_slots[i].holder = GetUserId();
	rl_slots[i].next = e->state.other;
	e->state.other = i;
	e->state.count++;
	e->state.rest_at = Max(e->state.rest_at, expires_at);
	return rl_slots[i].token;
}

/* apicore.concurrency_acquire(key, max_in_flight, lease) */
Datum
apicore_concurrency_acquire(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	RlHeldLease *held;
	int32		max_in_flight;
	int64		lease;
	int64		now;
	int			part;
	RlEntry    *e;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	ApicoreRequirePreload("concurrency_acquire");
	held = MemoryContextAlloc(TopMemoryContext, sizeof(RlHeldLease));
	RlHashKey(RL_NS_CONCURRENCY, NULL, NULL, RlKeyArg(fcinfo, 0), &held->key);
	RlRequireArg(fcinfo, 1, "max_in_flight");
	RlRequireArg(fcinfo, 2, "lease");
	max_in_flight = PG_GETARG_INT32(1);
	if (max_in_flight < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("concurrency max_in_flight must be 1 or more, got %d", max_in_flight),
				 errhint("Pass how many requests may run at once for this key.")));
	lease = RlDurationArg(PG_GETARG_INTERVAL_P(2), "lease");
	if (!lease_exit_callback_registered)
	{
		before_shmem_exit(RlReleaseHeldLeases, (Datum) 0);
		lease_exit_callback_registered = true;
	}
	InitMaterializedSRF(fcinfo, 0);

	now = RlNow();
	part = RlPartitionOf(&held->key);
	LWLockAcquire(RlLock(part), LW_EXCLUSIVE);
	e = RlLookup(&held->key);
	if (e == NULL)
		e = RlInsert(&held->key, 1U << part, now);
	held->token = e ? RlTakeLease(e, max_in_flight, now + lease, now) : RL_LEASES_FULL;
	values[2] = Int32GetDatum(e ? e->state.count : 0);
	LWLockRelease(RlLock(part));

	/* a full table (keys or slots) is counted, and when_full decides */
	if (held->token == RL_LEASES_FULL)
	{
		if (e)
			pg_atomic_fetch_add_u64(&rl->full_events, 1);
		held->token = 0;
		values[0] = BoolGetDatum(rl_when_full == RL_FULL_ALLOW);
	}
	else
		values[0] = BoolGetDatum(held->token != 0);
	values[1] = Int64GetDatum(held->token);
	nulls[1] = held->token == 0;
	nulls[2] = e == NULL;
	if (held->token != 0)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		held_leases = lappend(held_leases, held);
		MemoryContextSwitchTo(old);
	}
	else
		pfree(held);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}

/* apicore.concurrency_release(key, token) */
Datum
apicore_concurrency_release(PG_FUNCTION_ARGS)
{
	RlKey		key;
	int64		token;
	bool		released;

	ApicoreRequirePreload("concurrency_release");
	RlHashKey(RL_NS_CONCURRENCY, NULL, NULL, RlKeyArg(fcinfo, 0), &key);
	RlRequireArg(fcinfo, 1, "token");
	token = PG_GETARG_INT64(1);
	released = RlReleaseLease(&key, token, GetUserId());
	RlForgetHeldLease(token);
	PG_RETURN_BOOL(released);
}

/* ---------- stats, maintenance ---------- */

/* apicore._rate_limit_stats(), behind the view apicore.rate_limit_stats */
Datum
apicore_rate_limit_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	RlStat		stats[RL_MAX_STATS];
	int			nstats;
	int64		entries_used;
	int64		slots_used;

	ApicoreRequirePreload("rate_limit_stats");
	InitMaterializedSRF(fcinfo, 0);
	SpinLockAcquire(&rl->stats_lock);
	nstats = rl->nstats;
	for (int i = 0; i < nstats; i++)
		memcpy(stats[i].name, rl->stats[i].name, NAMEDATALEN);
	SpinLockRelease(&rl->stats_lock);
	entries_used = RlPoolUsed(&rl->entry_pool);
	slots_used = RlPoolUsed(&rl->slot_pool);

	for (int i = 0; i < nstats; i++)
	{
		Datum		values[9];
		bool		nulls[9] = {i == 0, false, false, false, false, false, false, false, false};

		values[0] = CStringGetTextDatum(stats[i].name);
		values[1] = Int64GetDatum((int64) pg_atomic_read_u64(&rl->stats[i].allowed));
		values[2] = Int64GetDatum((int64) pg_atomic_read_u64(&rl->stats[i].rejected));
		values[3] = Int64GetDatum((int64) pg_atomic_read_u64(&rl->stats[i].shadow_rejected));
		values[4] = Int64GetDatum(entries_used);
		values[5] = Int64GetDatum((int64) rl->max_keys);
		values[6] = Int64GetDatum((int64) pg_atomic_read_u64(&rl->evictions));
		values[7] = Int64GetDatum((int64) pg_atomic_read_u64(&rl->full_events));
		values[8] = Int64GetDatum(slots_used);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* apicore._rate_limit_maintain(): the rate-limit housekeeping task */
Datum
apicore_rate_limit_maintain(PG_FUNCTION_ARGS)
{
	int64		now;
	int			keys = 0;
	int			leases = 0;
	int64		in_use;

	if (!apicore_preloaded)
		PG_RETURN_TEXT_P(cstring_to_text("skipped: rate limits need apicore in shared_preload_libraries"));
	now = RlNow();
	for (int part = 0; part < RL_PARTITIONS; part++)
	{
		LWLockAcquire(RlLock(part), LW_EXCLUSIVE);
		keys += RlReclaimPartition(part, now, &leases);
		LWLockRelease(RlLock(part));
	}
	in_use = RlPoolUsed(&rl->entry_pool);
	PG_RETURN_TEXT_P(cstring_to_text(psprintf("reclaimed %d keys at rest and %d expired leases; %lld of %d keys in use",
											  keys, leases, (long long) in_use, rl->max_keys)));
}

/* ---------- saved at clean shutdown, restored at start ---------- */

typedef struct RlFileHeader
{
	uint32		magic;
	uint32		record_size;
	uint8		hash_key[crypto_shorthash_siphashx24_KEYBYTES];
	int64		count;
} RlFileHeader;

typedef struct RlFileRecord
{
	RlKey		key;
	RlState		state;
} RlFileRecord;

/* Rate-limit states still in effect; leases die with their backends. */
static bool
RlWorthSaving(const RlEntry *e, int64 now)
{
	return e->state.kind != RL_CONCURRENCY && e->state.kind != RL_FRESH &&
		e->state.rest_at > now;
}

static int64
RlWriteEntries(FILE *file, int64 now)
{
	int64		count = 0;
	int			nbuckets = RL_PARTITIONS * rl->buckets_per_partition;

	for (int b = 0; b < nbuckets; b++)
		for (int32 i = rl_buckets[b]; i != RL_NONE; i = rl_entries[i].next)
		{
			RlFileRecord rec;

			if (!RlWorthSaving(&rl_entries[i], now))
				continue;
			memset(&rec, 0, sizeof(rec));
			rec.key = rl_entries[i].key;
			rec.state = rl_entries[i].state;
			if (file && fwrite(&rec, sizeof(rec), 1, file) != 1)
				return -1;
			count++;
		}
	return count;
}

/* on_shmem_exit in the postmaster: after a crash (code != 0) nothing is saved */
static void
RlSaveAtShutdown(int code, Datum arg)
{
	RlFileHeader header;
	FILE	   *file;
	int64		now = GetCurrentTimestamp();

	if (code != 0 || rl == NULL)
		return;
	memset(&header, 0, sizeof(header));
	header.magic = RL_FILE_MAGIC;
	header.record_size = sizeof(RlFileRecord);
	memcpy(header.hash_key, rl->hash_key, sizeof(header.hash_key));
	header.count = RlWriteEntries(NULL, now);
	file = AllocateFile(RL_FILE ".tmp", PG_BINARY_W);
	if (file == NULL ||
		fwrite(&header, sizeof(header), 1, file) != 1 ||
		RlWriteEntries(file, now) != header.count ||
		FreeFile(file) != 0)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("apicore: could not write rate-limit state to \"%s\": %m", RL_FILE ".tmp")));
		unlink(RL_FILE ".tmp");
		return;
	}
	(void) durable_rename(RL_FILE ".tmp", RL_FILE, LOG);
}

/* At startup, before any backend: load the saved file once, then remove it. */
static void
RlRestore(void)
{
	RlFileHeader header;
	FILE	   *file = AllocateFile(RL_FILE, PG_BINARY_R);
	int64		restored = 0;

	if (file == NULL)
		return;
	if (fread(&header, sizeof(header), 1, file) == 1 &&
		header.magic == RL_FILE_MAGIC && header.record_size == sizeof(RlFileRecord))
	{
		memcpy(rl->hash_key, header.hash_key, sizeof(rl->hash_key));
		for (int64 n = 0; n < header.count; n++)
		{
			RlFileRecord rec;
			int32		i;

			if (fread(&rec, sizeof(rec), 1, file) != 1 || (i = RlPoolTake(&rl->entry_pool, RL_ENTRY_LINKS)) == RL_NONE)
				break;
			RlLinkNew(i, &rec.key)->state = rec.state;
			restored++;
		}
	}
	FreeFile(file);
	unlink(RL_FILE);
	ereport(LOG, (errmsg("apicore: restored %lld rate-limit keys from \"%s\"",
						 (long long) restored, RL_FILE)));
}
