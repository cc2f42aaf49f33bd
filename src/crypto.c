/*
 * crypto.c — the cursor keys.
 *
 * Owns apicore.cursor_key: a table of random 256-bit keys that only
 * superusers can read.  It is an ordinary WAL-logged table, so keys survive
 * restarts, reach streaming replicas and pg_basebackup copies, and are dumped
 * by pg_dump (pg_extension_config_dump).  The first key is created the first
 * time a cursor is encoded; cursor_rotate_key() adds a newer one and keeps
 * the older ones for decoding.
 *
 * Callers do not need to read the table themselves: key queries run as the
 * table's owner (the extension's installer), the way a SECURITY DEFINER
 * function would, but nothing SQL-callable hands a key out.  Each backend
 * keeps the keys in memory and drops them on any relcache invalidation of the
 * table, which a key insert sends on commit (and replays on standbys).
 */
#include "postgres.h"

#include <sodium.h>

#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "apicore.h"
#include "cursor.h"

typedef struct CursorKey
{
	uint32		key_id;
	uint8		key[CURSOR_KEY_BYTES];
} CursorKey;

/* The backend's copy of apicore.cursor_key; valid only while loaded. */
static struct
{
	bool		loaded;
	TimestampTz loaded_at;
	Oid			table;
	int			nkeys;
	CursorKey  *keys;			/* ascending key_id; the last is current */
} key_cache;

static void
ForgetKeys(void)
{
	if (key_cache.keys != NULL)
	{
		sodium_memzero(key_cache.keys, sizeof(CursorKey) * key_cache.nkeys);
		pfree(key_cache.keys);
	}
	key_cache.keys = NULL;
	key_cache.nkeys = 0;
	key_cache.loaded = false;
}

/* Any relcache invalidation of the key table means keys were added or removed. */
static void
KeyTableInvalidated(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == key_cache.table)
		ForgetKeys();
}

void
CryptoInit(void)
{
	CacheRegisterRelcacheCallback(KeyTableInvalidated, (Datum) 0);
}

static Oid
KeyTableOid(void)
{
	Oid			nsp = get_namespace_oid("apicore", true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid("cursor_key", nsp) : InvalidOid;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apicore: table apicore.cursor_key is missing"),
				 errhint("Run CREATE EXTENSION apicore in this database.")));
	return relid;
}

static Oid
KeyTableOwner(void)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(key_cache.table));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "apicore: cache lookup failed for relation %u", key_cache.table);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/*
 * Run one key query as the key table's owner.  Security-restricted, like a
 * SECURITY DEFINER function, so nothing the caller set up can run as the
 * owner.  The caller's search_path still applies, so the queries name
 * pg_catalog's functions and operators explicitly.  An error unwinds the user
 * switch with the (sub)transaction.
 */
static void
RunAsKeyOwner(const char *sql, int nargs, Oid *argtypes, Datum *args)
{
	Oid			save_user;
	int			save_sec;
	int			rc;

	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(KeyTableOwner(),
						   save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	rc = SPI_execute_with_args(sql, nargs, argtypes, args, NULL, false, 0);
	SetUserIdAndSecContext(save_user, save_sec);
	if (rc < 0)
		elog(ERROR, "apicore: key query failed: %s", SPI_result_code_string(rc));
}

static void
LoadKeys(void)
{
	MemoryContext oldcxt;

	ForgetKeys();
	key_cache.table = KeyTableOid();
	SPI_connect();
	RunAsKeyOwner("SELECT key_id, key FROM apicore.cursor_key ORDER BY key_id",
				  0, NULL, NULL);
	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	key_cache.keys = palloc0(sizeof(CursorKey) * Max(SPI_processed, 1));
	MemoryContextSwitchTo(oldcxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;
		int32		key_id = DatumGetInt32(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
		bytea	   *key = DatumGetByteaPP(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));

		if (VARSIZE_ANY_EXHDR(key) != CURSOR_KEY_BYTES)
			elog(ERROR, "apicore: cursor key %d is not %d bytes", key_id, CURSOR_KEY_BYTES);
		key_cache.keys[i].key_id = (uint32) key_id;
		memcpy(key_cache.keys[i].key, VARDATA_ANY(key), CURSOR_KEY_BYTES);
		sodium_memzero(VARDATA_ANY(key), CURSOR_KEY_BYTES);
	}
	key_cache.nkeys = (int) SPI_processed;
	SPI_finish();
	key_cache.loaded = true;
	key_cache.loaded_at = GetCurrentTimestamp();
}

/*
 * Insert a new random key, as the table's owner.  `sql` decides its id; the
 * table's trigger tells every backend to reload.
 */
static void
InsertKey(const char *sql)
{
	uint8		key[CURSOR_KEY_BYTES];
	bytea	   *value = palloc(VARHDRSZ + CURSOR_KEY_BYTES);
	Oid			argtypes[1] = {BYTEAOID};
	Datum		args[1];

	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apicore: no cursor key exists yet and a standby cannot create one"),
				 errhint("Encode one cursor on the primary; its key reaches this standby by replication.")));
	crypto_aead_xchacha20poly1305_ietf_keygen(key);
	SET_VARSIZE(value, VARHDRSZ + CURSOR_KEY_BYTES);
	memcpy(VARDATA(value), key, CURSOR_KEY_BYTES);
	sodium_memzero(key, sizeof(key));
	args[0] = PointerGetDatum(value);

	key_cache.table = KeyTableOid();
	SPI_connect();
	RunAsKeyOwner(sql, 1, argtypes, args);
	SPI_finish();
	sodium_memzero(VARDATA(value), CURSOR_KEY_BYTES);
	CommandCounterIncrement();	/* runs our own invalidation (trigger below) */
	ForgetKeys();
}

static const CursorKey *
FindKey(uint32 key_id)
{
	for (int i = 0; i < key_cache.nkeys; i++)
		if (key_cache.keys[i].key_id == key_id)
			return &key_cache.keys[i];
	return NULL;
}

uint32
CryptoCurrentCursorKey(uint8 key[CURSOR_KEY_BYTES])
{
	const CursorKey *current;

	if (!key_cache.loaded)
		LoadKeys();
	if (key_cache.nkeys == 0)
	{
		/* two first uses at once: the primary key keeps exactly one */
		InsertKey("INSERT INTO apicore.cursor_key (key_id, key) VALUES (1, $1) "
				  "ON CONFLICT (key_id) DO NOTHING");
		LoadKeys();
		if (key_cache.nkeys == 0)
			elog(ERROR, "apicore: the first cursor key was not stored");
	}
	current = &key_cache.keys[key_cache.nkeys - 1];
	memcpy(key, current->key, CURSOR_KEY_BYTES);
	return current->key_id;
}

bool
CryptoFindCursorKey(uint32 key_id, uint8 key[CURSOR_KEY_BYTES])
{
	const CursorKey *found;

	if (!key_cache.loaded)
		LoadKeys();
	found = FindKey(key_id);
	if (found == NULL && (key_cache.nkeys == 0 ||
						  key_id > key_cache.keys[key_cache.nkeys - 1].key_id) &&
		TimestampDifferenceExceeds(key_cache.loaded_at, GetCurrentTimestamp(), 1000))
	{
		/*
		 * A newer key whose invalidation has not reached us yet.  At most
		 * once a second, so forged key ids cannot make every request reload.
		 */
		LoadKeys();
		found = FindKey(key_id);
	}
	if (found == NULL && key_cache.nkeys == 0 && RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apicore: this standby has no cursor key yet"),
				 errhint("Encode one cursor on the primary and wait for it to replicate.")));
	if (found == NULL)
		return false;
	memcpy(key, found->key, CURSOR_KEY_BYTES);
	return true;
}

uint32
CryptoRotateCursorKey(void)
{
	/* the lock orders concurrent rotations so each gets the next id */
	key_cache.table = KeyTableOid();
	SPI_connect();
	RunAsKeyOwner("LOCK TABLE apicore.cursor_key IN SHARE ROW EXCLUSIVE MODE",
				  0, NULL, NULL);
	SPI_finish();
	InsertKey("INSERT INTO apicore.cursor_key (key_id, key) "
			  "SELECT coalesce(pg_catalog.max(key_id), 0) OPERATOR(pg_catalog.+) 1, $1 "
			  "FROM apicore.cursor_key");
	LoadKeys();
	return key_cache.keys[key_cache.nkeys - 1].key_id;
}

/*
 * Statement trigger on apicore.cursor_key: any change (a new key, a retired
 * one) sends a relcache invalidation at commit, which every backend, and
 * through WAL every hot standby, turns into a reload of its key copy.  On
 * abort it resets this backend's copy.
 */
PG_FUNCTION_INFO_V1(apicore_cursor_key_changed);

Datum
apicore_cursor_key_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigger = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "apicore: cursor_key_changed must be called as a trigger");
	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigger->tg_relation));
	return PointerGetDatum(NULL);
}
