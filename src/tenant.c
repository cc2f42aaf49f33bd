/*
 * tenant.c — the tenant a session acts for, in the two ways an application's
 * own SQL (or SQL injected through it) cannot switch.
 *
 * Owns:
 *  - tenant tokens: apicore.tenant_key (random 256-bit keys, readable by
 *    their owner only, read here as that owner), apicore.tenant_token()
 *    (for apicore_tenant_issuer) which signs (tenant, expiry) with
 *    crypto_auth (HMAC-SHA-512-256), apicore.tenant_rotate_key(), and
 *    apicore.tenant_set(), which verifies a token and records its tenant;
 *  - setting apicore.tenant: where tenant_set records the verified tenant.
 *    It is PGC_SUSET, so only a superuser (or apicore itself) sets it: SET,
 *    set_config and RESET fail for the application; RESET ALL and DISCARD
 *    ALL clear it, and a transaction-local one ends with its transaction.
 *    apicore.current_tenant() reads it;
 *  - tenants of roles: apicore.tenant_role (login role -> tenant, written by
 *    apicore.tenant_role_set() for apicore_tenant_issuer) and
 *    apicore.session_tenant(), the tenant of the session's login role,
 *    cached per backend and dropped on any change of the table.
 * tenant_isolation_enable (soft_delete.c) makes the policies that compare a
 * table's tenant column with current_tenant() or session_tenant().
 */
#include "postgres.h"

#include <sodium.h>

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "apicore.h"

#define TOKEN_VERSION		1
#define TOKEN_HEADER		(1 + 4 + 8)		/* version, key id, expiry (Unix s) */
#define TOKEN_MIN_BYTES		(TOKEN_HEADER + 1 + crypto_auth_BYTES)
#define TENANT_MAX_BYTES	256
#define TOKEN_MAX_CHARS		512
#define TOKEN_MAX_TTL_DAYS	366
#define B64_VARIANT			sodium_base64_VARIANT_URLSAFE_NO_PADDING

/* Setting apicore.tenant: the tenant tenant_set verified, or empty. */
static char *verified_tenant = NULL;

/* The session role's tenant, from apicore.tenant_role. */
static struct
{
	bool		valid;
	Oid			table;
	Oid			role;
	char	   *tenant;			/* TopMemoryContext; NULL: none */
} role_cache;

PG_FUNCTION_INFO_V1(apicore_tenant_token);
PG_FUNCTION_INFO_V1(apicore_tenant_set);
PG_FUNCTION_INFO_V1(apicore_current_tenant);
PG_FUNCTION_INFO_V1(apicore_tenant_rotate_key);
PG_FUNCTION_INFO_V1(apicore_tenant_role_set);
PG_FUNCTION_INFO_V1(apicore_session_tenant);

static void KeyTableInvalidated(Datum arg, Oid relid);

static void
RoleTableInvalidated(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == role_cache.table)
		role_cache.valid = false;
}

void
TenantInit(void)
{
	DefineCustomStringVariable("apicore.tenant",
							   "The tenant verified by apicore.tenant_set() in this session or transaction.",
							   "Set by apicore.tenant_set(); only a superuser can SET it directly.",
							   &verified_tenant, "", PGC_SUSET,
							   GUC_DISALLOW_IN_FILE | GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);
	CacheRegisterRelcacheCallback(RoleTableInvalidated, (Datum) 0);
	CacheRegisterRelcacheCallback(KeyTableInvalidated, (Datum) 0);
}

/* ---------- helpers ---------- */

/* Run one query as the owner of apicore table `table` (SPI connected). */
static void
RunAsTableOwner(const char *table, const char *sql, int nargs, Oid *types, Datum *values)
{
	ApicoreIdentity id;
	int			rc;

	ApicoreBecome(&id, ApicoreRelationOwner(ApicoreTableOid(table)), 0);
	rc = SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0);
	ApicoreRestore(&id);
	if (rc < 0)
		elog(ERROR, "apicore: query on apicore.%s failed: %s", table, SPI_result_code_string(rc));
}

/* A tenant id: 1 to TENANT_MAX_BYTES bytes of valid text. */
static void
CheckTenant(const char *tenant, size_t len, const char *argname)
{
	if (len == 0 || len > TENANT_MAX_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("apicore: %s must be 1 to %d bytes, got %zu", argname, TENANT_MAX_BYTES, len),
				 errhint("Pass the tenant's id as text, e.g. '42'.")));
	for (size_t i = 0; i < len; i++)
		if ((unsigned char) tenant[i] < 0x20 || tenant[i] == 0x7f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("apicore: %s must not contain control characters", argname),
					 errhint("Pass the tenant's id as text, e.g. '42'.")));
}

static int64
UnixSeconds(TimestampTz ts)
{
	return ts / USECS_PER_SEC + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY;
}

static void
PutBigEndian(uint8 *out, uint64 value, int bytes)
{
	for (int i = bytes - 1; i >= 0; i--, value >>= 8)
		out[i] = (uint8) (value & 0xff);
}

static uint64
GetBigEndian(const uint8 *in, int bytes)
{
	uint64		value = 0;

	for (int i = 0; i < bytes; i++)
		value = (value << 8) | in[i];
	return value;
}

/* ---------- keys ---------- */

/*
 * The backend's copy of apicore.tenant_key, so that verifying a token costs
 * no query.  Dropped on any relcache invalidation of the table, which its
 * statement trigger sends on every change (a new key, a retired one).
 */
typedef struct TenantKey
{
	int32		key_id;
	uint8		key[crypto_auth_KEYBYTES];
} TenantKey;

static struct
{
	bool		valid;
	Oid			table;
	int			nkeys;
	TenantKey  *keys;			/* TopMemoryContext, ascending key_id */
} key_cache;

static void
ForgetTenantKeys(void)
{
	if (key_cache.keys)
	{
		sodium_memzero(key_cache.keys, sizeof(TenantKey) * key_cache.nkeys);
		pfree(key_cache.keys);
	}
	key_cache.keys = NULL;
	key_cache.nkeys = 0;
	key_cache.valid = false;
}

static void
KeyTableInvalidated(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == key_cache.table)
		ForgetTenantKeys();
}

static void
LoadTenantKeys(void)
{
	ForgetTenantKeys();
	key_cache.table = ApicoreTableOid("tenant_key");
	SPI_connect();
	RunAsTableOwner("tenant_key", "SELECT key_id, key FROM apicore.tenant_key ORDER BY key_id",
					0, NULL, NULL);
	key_cache.keys = MemoryContextAllocZero(TopMemoryContext,
											sizeof(TenantKey) * Max(SPI_processed, 1));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int32		key_id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		bytea	   *stored = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[i],
														   SPI_tuptable->tupdesc, 2, &isnull));

		if (VARSIZE_ANY_EXHDR(stored) != crypto_auth_KEYBYTES)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("apicore: tenant key %d is not %d bytes", key_id, crypto_auth_KEYBYTES),
					 errhint("Delete that row of apicore.tenant_key and call apicore.tenant_rotate_key().")));
		key_cache.keys[i].key_id = key_id;
		memcpy(key_cache.keys[i].key, VARDATA_ANY(stored), crypto_auth_KEYBYTES);
		sodium_memzero(VARDATA_ANY(stored), crypto_auth_KEYBYTES);
		key_cache.nkeys = (int) i + 1;
	}
	SPI_finish();
	key_cache.valid = true;
}

/*
 * The key with id `key_id`, or the newest when key_id is 0, into `key`;
 * returns its id, or 0 when there is none.
 */
static int32
LoadKey(int32 key_id, uint8 key[crypto_auth_KEYBYTES])
{
	const TenantKey *found = NULL;

	if (!key_cache.valid)
		LoadTenantKeys();
	if (key_id == 0 && key_cache.nkeys > 0)
		found = &key_cache.keys[key_cache.nkeys - 1];
	for (int i = 0; key_id != 0 && i < key_cache.nkeys && found == NULL; i++)
		if (key_cache.keys[i].key_id == key_id)
			found = &key_cache.keys[i];
	if (found == NULL)
		return 0;
	memcpy(key, found->key, crypto_auth_KEYBYTES);
	return found->key_id;
}

/*
 * Statement trigger on apicore.tenant_key: any change sends a relcache
 * invalidation at commit, so every backend (and hot standby) reloads its keys.
 */
PG_FUNCTION_INFO_V1(apicore_tenant_key_changed);

Datum
apicore_tenant_key_changed(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("apicore: _tenant_key_changed() is a trigger function"),
				 errhint("It belongs to the trigger on apicore.tenant_key.")));
	CacheInvalidateRelcacheByRelid(ApicoreTableOid("tenant_key"));
	return PointerGetDatum(NULL);
}

/* Store a new random key with the next id; returns the id. */
static int32
AddKey(void)
{
	bytea	   *value = palloc(VARHDRSZ + crypto_auth_KEYBYTES);
	Oid			types[1] = {BYTEAOID};
	Datum		values[1] = {PointerGetDatum(value)};
	bool		isnull;
	int32		key_id;

	SET_VARSIZE(value, VARHDRSZ + crypto_auth_KEYBYTES);
	crypto_auth_keygen((uint8 *) VARDATA(value));
	SPI_connect();
	/* the lock orders concurrent first uses and rotations */
	RunAsTableOwner("tenant_key", "LOCK TABLE apicore.tenant_key IN SHARE ROW EXCLUSIVE MODE",
					0, NULL, NULL);
	RunAsTableOwner("tenant_key",
					"INSERT INTO apicore.tenant_key (key_id, key) "
					"SELECT coalesce(pg_catalog.max(key_id), 0) OPERATOR(pg_catalog.+) 1, $1 "
					"FROM apicore.tenant_key RETURNING key_id", 1, types, values);
	key_id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	sodium_memzero(VARDATA(value), crypto_auth_KEYBYTES);
	/* runs the trigger's invalidation here now, so this backend sees the key */
	CommandCounterIncrement();
	ForgetTenantKeys();
	return key_id;
}

/* apicore.tenant_rotate_key(): a new key signs from now on; old ones still verify. */
Datum
apicore_tenant_rotate_key(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(AddKey());
}

/* ---------- tokens ---------- */

static TimestampTz
TokenExpiry(Interval *ttl)
{
	Interval	zero = {0};
	Interval	longest = {.day = TOKEN_MAX_TTL_DAYS};

	if (DatumGetBool(DirectFunctionCall2(interval_le, IntervalPGetDatum(ttl), IntervalPGetDatum(&zero))) ||
		DatumGetBool(DirectFunctionCall2(interval_gt, IntervalPGetDatum(ttl), IntervalPGetDatum(&longest))))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("apicore: ttl must be positive and at most %d days", TOKEN_MAX_TTL_DAYS),
				 errhint("Pass e.g. '15 minutes': the application asks for a new token when it expires.")));
	return DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
												   TimestampTzGetDatum(GetCurrentTimestamp()),
												   IntervalPGetDatum(ttl)));
}

/*
 * apicore.tenant_token(tenant, ttl): a token that lets whoever holds it act
 * for `tenant` until now + ttl: base64url(version, key id, expiry, tenant,
 * HMAC-SHA-512-256 of all of it).
 */
Datum
apicore_tenant_token(PG_FUNCTION_ARGS)
{
	text	   *tenant;
	size_t		len;
	int64		expires;
	uint8		key[crypto_auth_KEYBYTES];
	int32		key_id;
	uint8	   *token;
	size_t		b64len;
	char	   *out;

	ApicoreRequireArg(fcinfo, 0, "apicore: ", "tenant", NULL);
	ApicoreRequireArg(fcinfo, 1, "apicore: ", "ttl", "Pass how long the token is good for, e.g. '15 minutes'.");
	tenant = PG_GETARG_TEXT_PP(0);
	len = VARSIZE_ANY_EXHDR(tenant);
	CheckTenant(VARDATA_ANY(tenant), len, "tenant");
	expires = UnixSeconds(TokenExpiry(PG_GETARG_INTERVAL_P(1)));

	key_id = LoadKey(0, key);
	if (key_id == 0)
		key_id = LoadKey(AddKey(), key);
	token = palloc(TOKEN_HEADER + len + crypto_auth_BYTES);
	token[0] = TOKEN_VERSION;
	PutBigEndian(token + 1, (uint32) key_id, 4);
	PutBigEndian(token + 5, (uint64) expires, 8);
	memcpy(token + TOKEN_HEADER, VARDATA_ANY(tenant), len);
	crypto_auth(token + TOKEN_HEADER + len, token, TOKEN_HEADER + len, key);
	sodium_memzero(key, sizeof(key));

	b64len = sodium_base64_ENCODED_LEN(TOKEN_HEADER + len + crypto_auth_BYTES, B64_VARIANT);
	out = palloc(b64len);
	sodium_bin2base64(out, b64len, token, TOKEN_HEADER + len + crypto_auth_BYTES, B64_VARIANT);
	PG_RETURN_TEXT_P(cstring_to_text(out));
}

static void
RefuseToken(const char *why, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("apicore: token %s", why),
			 errhint("%s", hint)));
}

#define HINT_UNCHANGED "Pass the token apicore.tenant_token() issued, unchanged."
#define HINT_NEW_TOKEN "Ask the issuer for a new token (apicore.tenant_token)."

/* Decode and authenticate a token; returns its tenant (length in *len). */
static char *
OpenToken(text *token, size_t *len)
{
	size_t		chars = VARSIZE_ANY_EXHDR(token);
	uint8	   *bin = palloc(chars + 1);
	size_t		binlen = 0;
	uint8		key[crypto_auth_KEYBYTES];
	int32		key_id;
	bool		authentic;

	if (chars > TOKEN_MAX_CHARS)
		RefuseToken(psprintf("is too long to be a tenant token (%zu characters)", chars), HINT_UNCHANGED);
	if (sodium_base642bin(bin, chars + 1, VARDATA_ANY(token), chars, NULL, &binlen,
						  NULL, B64_VARIANT) != 0)
		RefuseToken("is not a tenant token (not base64url)", HINT_UNCHANGED);
	if (binlen < TOKEN_MIN_BYTES)
		RefuseToken(psprintf("is too short to be a tenant token (%zu bytes)", binlen), HINT_UNCHANGED);
	if (bin[0] != TOKEN_VERSION)
		RefuseToken(psprintf("has unknown version %d", bin[0]), HINT_UNCHANGED);
	key_id = (int32) GetBigEndian(bin + 1, 4);
	authentic = key_id > 0 && LoadKey(key_id, key) == key_id &&
		crypto_auth_verify(bin + binlen - crypto_auth_BYTES, bin,
						   binlen - crypto_auth_BYTES, key) == 0;
	sodium_memzero(key, sizeof(key));
	if (!authentic)
		RefuseToken("does not verify: it was altered, forged or signed with a retired key",
					HINT_NEW_TOKEN);
	if ((int64) GetBigEndian(bin + 5, 8) <= UnixSeconds(GetCurrentTimestamp()))
		RefuseToken("has expired", HINT_NEW_TOKEN);
	*len = binlen - crypto_auth_BYTES - TOKEN_HEADER;
	return pnstrdup((char *) bin + TOKEN_HEADER, *len);
}

/*
 * apicore.tenant_set(token, is_local): verify a token and act for its tenant
 * until the transaction ends (is_local, the default) or for the session.
 * Returns the tenant.
 */
Datum
apicore_tenant_set(PG_FUNCTION_ARGS)
{
	size_t		len;
	char	   *tenant;
	bool		is_local;

	ApicoreRequireArg(fcinfo, 0, "apicore: ", "token", "Pass the token apicore.tenant_token() issued.");
	is_local = PG_ARGISNULL(1) ? true : PG_GETARG_BOOL(1);
	tenant = OpenToken(PG_GETARG_TEXT_PP(0), &len);
	pg_verifymbstr(tenant, (int) len, false);
	CheckTenant(tenant, len, "the token's tenant");
	/* PGC_SUSET on the caller's behalf: the token is the authority */
	(void) set_config_option("apicore.tenant", tenant, PGC_SUSET, PGC_S_SESSION,
							 is_local ? GUC_ACTION_LOCAL : GUC_ACTION_SET, true, 0, false);
	PG_RETURN_TEXT_P(cstring_to_text(tenant));
}

/* apicore.current_tenant(): the tenant tenant_set verified, or NULL. */
Datum
apicore_current_tenant(PG_FUNCTION_ARGS)
{
	if (verified_tenant == NULL || verified_tenant[0] == '\0')
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(verified_tenant));
}

/* ---------- tenants of roles ---------- */

/* apicore.tenant_role_set(role, tenant): `role`'s sessions act for `tenant` (NULL: none). */
Datum
apicore_tenant_role_set(PG_FUNCTION_ARGS)
{
	Oid			types[2] = {OIDOID, TEXTOID};
	Datum		values[2];

	ApicoreRequireArg(fcinfo, 0, "apicore: ", "role", "Pass the login role, e.g. 'tenant_42'.");
	values[0] = PG_GETARG_DATUM(0);
	SPI_connect();
	if (PG_ARGISNULL(1))
		RunAsTableOwner("tenant_role",
						"DELETE FROM apicore.tenant_role "
						"WHERE role::pg_catalog.oid OPERATOR(pg_catalog.=) $1", 1, types, values);
	else
	{
		text	   *tenant = PG_GETARG_TEXT_PP(1);

		CheckTenant(VARDATA_ANY(tenant), VARSIZE_ANY_EXHDR(tenant), "tenant");
		values[1] = PointerGetDatum(tenant);
		RunAsTableOwner("tenant_role",
						"INSERT INTO apicore.tenant_role (role, tenant) VALUES ($1, $2) "
						"ON CONFLICT (role) DO UPDATE SET tenant = EXCLUDED.tenant",
						2, types, values);
	}
	SPI_finish();
	/* every backend drops its cached tenant at commit */
	CacheInvalidateRelcacheByRelid(ApicoreTableOid("tenant_role"));
	PG_RETURN_VOID();
}

static void
LoadRoleTenant(Oid role)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(role)};
	char	   *tenant;

	if (role_cache.tenant)
		pfree(role_cache.tenant);
	role_cache.tenant = NULL;
	role_cache.table = ApicoreTableOid("tenant_role");
	role_cache.role = role;
	/* valid first: an invalidation that arrives while reading marks it stale again */
	role_cache.valid = true;
	PG_TRY();
	{
		SPI_connect();
		RunAsTableOwner("tenant_role",
						"SELECT tenant FROM apicore.tenant_role "
						"WHERE role::pg_catalog.oid OPERATOR(pg_catalog.=) $1", 1, types, values);
		tenant = SPI_processed == 1 ?
			SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1) : NULL;
		if (tenant)
			role_cache.tenant = MemoryContextStrdup(TopMemoryContext, tenant);
		SPI_finish();
	}
	PG_CATCH();
	{
		/* not recovered here: the error goes on; only the cache is dropped */
		role_cache.valid = false;
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/*
 * apicore.session_tenant(): the tenant of the session's login role
 * (session_user, which only a superuser can change), or NULL.
 */
Datum
apicore_session_tenant(PG_FUNCTION_ARGS)
{
	Oid			role = GetSessionUserId();

	if (!role_cache.valid || role_cache.role != role)
		LoadRoleTenant(role);
	if (role_cache.tenant == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(role_cache.tenant));
}
