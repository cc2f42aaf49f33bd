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

/*
 * Run one key query as the key table's owner, through ApicoreBecome:
 * security-restricted with search_path = pg_catalog, pg_temp, so nothing the
 * caller set up or created runs as the owner.  The queries name pg_catalog's
 * functions and operators explicitly all the same.  An error unwinds the
 * switch with the (sub)transaction.
 */
static void
RunAsKeyOwner(const char *sql, int nargs, Oid *argtypes, Datum *args)
{
	ApicoreIdentity id;
	int			rc;

	ApicoreBecome(&id, ApicoreRelationOwner(key_cache.table), 0);
	rc = SPI_execute_with_args(sql, nargs, argtypes, args, NULL, false, 0);
	ApicoreRestore(&id);
	if (rc < 0)
		elog(ERROR, "apicore: key query failed: %s", SPI_result_code_string(rc));
}

/* A key row apicore could not have written: refuse it, never use it. */
static void
DamagedKey(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("apicore: apicore.cursor_key holds a damaged row: %s", what),
			 errhint("Keys are made by apicore; delete the row as a superuser (its cursors become invalid).")));
}

/* key_id and key of one row, checked: no NULL, key_id > 0, a 32-byte key. */
static int32
KeyFromRow(HeapTuple tup, TupleDesc desc, bytea **key)
{
	bool		id_null,
				key_null;
	Datum		id = SPI_getbinval(tup, desc, 1, &id_null);
	Datum		value = SPI_getbinval(tup, desc, 2, &key_null);

	if (id_null || key_null)
		DamagedKey(id_null ? "key_id is NULL" : "key is NULL");
	if (DatumGetInt32(id) <= 0)
		DamagedKey(psprintf("key_id %d is not positive", DatumGetInt32(id)));
	*key = DatumGetByteaPP(value);
	if (VARSIZE_ANY_EXHDR(*key) != CURSOR_KEY_BYTES)
		DamagedKey(psprintf("key %d has %d bytes, not %d", DatumGetInt32(id),
							(int) VARSIZE_ANY_EXHDR(*key), CURSOR_KEY_BYTES));
	return DatumGetInt32(id);
}

static void
LoadKeys(void)
{
	MemoryContext oldcxt;

	ForgetKeys();
	key_cache.table = ApicoreTableOid("cursor_key");
	SPI_connect();
	RunAsKeyOwner("SELECT key_id, key FROM apicore.cursor_key ORDER BY key_id",
				  0, NULL, NULL);
	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	key_cache.keys = palloc0(sizeof(CursorKey) * Max(SPI_processed, 1));
	MemoryContextSwitchTo(oldcxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bytea	   *key;
		int32		key_id = KeyFromRow(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &key);

		if (i > 0 && (uint32) key_id <= key_cache.keys[i - 1].key_id)
			DamagedKey(psprintf("key_id %d appears twice", key_id));
		key_cache.keys[i].key_id = (uint32) key_id;
		memcpy(key_cache.keys[i].key, VARDATA_ANY(key), CURSOR_KEY_BYTES);
		sodium_memzero(VARDATA_ANY(key), CURSOR_KEY_BYTES);
		key_cache.nkeys = (int) i + 1;	/* ForgetKeys wipes these on error too */
	}
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

	key_cache.table = ApicoreTableOid("cursor_key");
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
	key_cache.table = ApicoreTableOid("cursor_key");
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
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("apicore: _cursor_key_changed() was not called by the trigger manager"),
				 errhint("It is the trigger of apicore.cursor_key; do not call it directly.")));
	if (RelationGetRelid(trigger->tg_relation) != ApicoreTableOid("cursor_key"))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("apicore: _cursor_key_changed() fired on \"%s\", not on apicore.cursor_key",
						RelationGetRelationName(trigger->tg_relation)),
				 errhint("Drop that trigger; only apicore.cursor_key uses this function.")));
	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigger->tg_relation));
	return PointerGetDatum(NULL);
}
