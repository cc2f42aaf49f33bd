/*
 * cursor.c — opaque cursors: cursor_encode, cursor_decode, cursor_rotate_key.
 *
 * Owns the step between typed SQL values and the wire format of
 * cursor_codec.h: each value is serialised with its type's binary send
 * function and read back with its receive function, under a checksum of the
 * column types so that decoding into other types fails clearly.  Keys come
 * from crypto.c.  Errors: an unreadable, tampered, truncated, foreign-key or
 * other-context cursor is SQLSTATE 34000; an expired one (checked only once
 * it authenticated) is 24000; a column list that does not fit is 42804.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "libpq/pqformat.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/typcache.h"

#include "apicore.h"
#include "cursor.h"

PG_FUNCTION_INFO_V1(apicore_cursor_encode);
PG_FUNCTION_INFO_V1(apicore_cursor_decode);
PG_FUNCTION_INFO_V1(apicore_cursor_rotate_key);

/* A type's binary I/O functions, looked up once per backend. */
typedef struct TypeIO
{
	Oid			type;			/* hash key */
	int16		typlen;
	FmgrInfo	send;
	FmgrInfo	recv;
	Oid			recv_ioparam;
} TypeIO;

static HTAB *type_io = NULL;

static TypeIO *
LookupTypeIO(Oid type)
{
	TypeIO	   *io;
	bool		found;

	if (type_io == NULL)
		type_io = ApicoreBackendHash("apicore cursor type I/O", sizeof(Oid), sizeof(TypeIO));
	io = hash_search(type_io, &type, HASH_ENTER, &found);
	if (!found)
	{
		Oid			send_fn,
					recv_fn;
		bool		isvarlena;

		/* these raise a clear error for a type without binary I/O */
		getTypeBinaryOutputInfo(type, &send_fn, &isvarlena);
		getTypeBinaryInputInfo(type, &recv_fn, &io->recv_ioparam);
		io->typlen = get_typlen(type);
		fmgr_info_cxt(send_fn, &io->send, TopMemoryContext);
		fmgr_info_cxt(recv_fn, &io->recv, TopMemoryContext);
	}
	return io;
}

/*
 * A checksum of the column types, sealed into the payload.  A call site
 * encodes and decodes the same types over and over: remember the last list.
 */
static uint16
TypeHint(int nvalues, const Oid *types)
{
	static Oid	last_types[64];
	static int	last_n = -1;
	static uint16 last_hint;
	uint8		digest[crypto_generichash_BYTES_MIN];

	if (nvalues == last_n && memcmp(types, last_types, sizeof(Oid) * nvalues) == 0)
		return last_hint;
	crypto_generichash(digest, sizeof(digest), (const unsigned char *) types,
					   sizeof(Oid) * nvalues, NULL, 0);
	last_hint = (uint16) ((digest[0] << 8) | digest[1]);
	last_n = -1;
	if (nvalues <= lengthof(last_types))
	{
		memcpy(last_types, types, sizeof(Oid) * nvalues);
		last_n = nvalues;
	}
	return last_hint;
}

/* The context's digest; the last context is remembered, as with types. */
static const CursorContext *
ContextDigest(const char *context, size_t context_len)
{
	static CursorContext digest;
	static char last[256];
	static ssize_t last_len = -2;	/* -1: no context */
	ssize_t		len = context ? (ssize_t) context_len : -1;

	if (len == last_len && (len <= 0 || memcmp(context, last, len) == 0))
		return &digest;
	cursor_context_init(&digest, context, context_len);
	last_len = -2;
	if (len < (ssize_t) sizeof(last))
	{
		if (len > 0)
			memcpy(last, context, len);
		last_len = len;
	}
	return &digest;
}

/*
 * A fresh random nonce.  Taken from a per-process buffer of OS randomness,
 * refilled when empty, so that encoding does not pay a getrandom() call per
 * cursor; a forked process never reuses its parent's buffer.
 */
static void
NextNonce(uint8 nonce[CURSOR_NONCE_BYTES])
{
	static uint8 pool[CURSOR_NONCE_BYTES * 128];
	static size_t used = sizeof(pool);
	static int	owner = 0;

	if (used == sizeof(pool) || owner != MyProcPid)
	{
		randombytes_buf(pool, sizeof(pool));
		used = 0;
		owner = MyProcPid;
	}
	memcpy(nonce, pool + used, CURSOR_NONCE_BYTES);
	sodium_memzero(pool + used, CURSOR_NONCE_BYTES);
	used += CURSOR_NONCE_BYTES;
}

static void
AppendValue(StringInfo payload, TypeIO *io, Datum value)
{
	bytea	   *sent = SendFunctionCall(&io->send, value);
	size_t		len = VARSIZE(sent) - VARHDRSZ;
	bool		fixed = io->typlen > 0 && len == (size_t) io->typlen;

	enlargeStringInfo(payload, len + CURSOR_VALUE_OVERHEAD);
	payload->len += cursor_payload_put((uint8 *) payload->data + payload->len,
									   (const uint8 *) VARDATA(sent), len, fixed);
	pfree(sent);
}

/* Seconds since 2000-01-01, rounded up so a cursor never expires early. */
static uint64
ExpirySeconds(TimestampTz expiry)
{
	if (expiry <= 0)
		return 0;
	return (uint64) ((expiry + USECS_PER_SEC - 1) / USECS_PER_SEC);
}

text *
CursorEncodeValues(int nvalues, const Oid *types, const Datum *values,
				   const bool *nulls, const char *context, size_t context_len,
				   TimestampTz expiry)
{
	StringInfoData payload;
	uint8		key[CURSOR_KEY_BYTES];
	uint8	   *bin;
	uint8		nonce[CURSOR_NONCE_BYTES];
	uint32		key_id;
	size_t		chars;
	text	   *result;

	initStringInfo(&payload);
	enlargeStringInfo(&payload, CURSOR_HINT_BYTES + CURSOR_VALUE_OVERHEAD);
	payload.len = cursor_payload_start((uint8 *) payload.data, TypeHint(nvalues, types),
									   expiry != 0, ExpirySeconds(expiry));
	for (int i = 0; i < nvalues; i++)
	{
		if (nulls[i])
		{
			enlargeStringInfo(&payload, 1);
			payload.len += cursor_payload_put_null((uint8 *) payload.data + payload.len);
		}
		else
			AppendValue(&payload, LookupTypeIO(types[i]), values[i]);
	}
	if (payload.len > CURSOR_MAX_PAYLOAD)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("cursor position takes %d bytes, more than the %d a cursor can hold",
						payload.len, (int) CURSOR_MAX_PAYLOAD),
				 errhint("Put only the sort key columns in the position, not whole rows.")));

	key_id = CryptoCurrentCursorKey(key);
	chars = cursor_sealed_chars(key_id, payload.len);
	result = palloc(VARHDRSZ + chars + 1);
	bin = palloc(chars);		/* more than the binary form needs */
	NextNonce(nonce);
	cursor_seal(key, key_id, expiry != 0, ContextDigest(context, context_len), nonce,
				(const uint8 *) payload.data, payload.len, bin,
				VARDATA(result), chars + 1);
	sodium_memzero(key, sizeof(key));
	SET_VARSIZE(result, VARHDRSZ + chars);
	pfree(bin);
	pfree(payload.data);
	return result;
}

static void
InvalidCursor(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_APICORE_INVALID_CURSOR),
			 errmsg("invalid cursor"),
			 errdetail("%s", detail),
			 errhint("Send a cursor exactly as an earlier page returned it, to the same endpoint; start again from the first page if it is lost.")));
}

/*
 * Base64, header, key and seal: everything before the payload is trusted.
 * Returns the opened payload (palloc'd) and its header.
 */
static uint8 *
OpenCursor(const char *cursor, size_t cursor_len, const char *context,
		   size_t context_len, CursorHeader *header, size_t *payload_len)
{
	/* the binary form is shorter than its base64 text */
	uint8	   *bin = palloc(Min(cursor_len, CURSOR_MAX_BIN) + 1);
	uint8	   *payload = palloc(Min(cursor_len, CURSOR_MAX_BIN) + 1);
	uint8		key[CURSOR_KEY_BYTES];
	size_t		bin_len;
	CursorStatus status;

	if (cursor_unwrap(cursor, cursor_len, bin, Min(cursor_len, CURSOR_MAX_BIN) + 1, &bin_len) != CURSOR_OK)
		InvalidCursor(cursor_len == 0 ? "The cursor is empty." :
					  cursor_len > CURSOR_MAX_CHARS ? "The cursor is longer than any apicore cursor." :
					  "The cursor is not URL-safe base64.");
	if (cursor_header_parse(bin, bin_len, header) != CURSOR_OK)
		InvalidCursor("The cursor is truncated or not an apicore cursor.");
	if (!CryptoFindCursorKey(header->key_id, key))
		InvalidCursor("The cursor was sealed with a key this database does not have.");
	status = cursor_open(key, header, bin, bin_len, ContextDigest(context, context_len),
						 payload, payload_len);
	sodium_memzero(key, sizeof(key));
	pfree(bin);
	if (status != CURSOR_OK)
		InvalidCursor("The cursor failed authentication: it was altered, or minted for another context.");
	return payload;
}

static void
CheckExpiry(const CursorPayload *p)
{
	TimestampTz now = GetCurrentTimestamp();

	if (p->has_expiry && (uint64) ExpirySeconds(now) > p->expiry)
		ereport(ERROR,
				(errcode(ERRCODE_APICORE_CURSOR_EXPIRED),
				 errmsg("cursor expired"),
				 errhint("Start again from the first page.")));
}

static void
TypeMismatch(const char *detail, int nvalues, const Oid *types)
{
	StringInfoData list;

	initStringInfo(&list);
	for (int i = 0; i < nvalues; i++)
		appendStringInfo(&list, "%s%s", i ? ", " : "", format_type_be(types[i]));
	ereport(ERROR,
			(errcode(ERRCODE_DATATYPE_MISMATCH),
			 errmsg("cursor does not hold values of types (%s)", list.data),
			 errdetail("%s", detail),
			 errhint("Decode with the same column types, in the same order, as the cursor was encoded with.")));
}

/* One value's bytes through its type's receive function. */
static Datum
ReceiveValue(const CursorValue *v, Oid type, int32 typmod)
{
	TypeIO	   *io = LookupTypeIO(type);
	StringInfoData buf;
	Datum		result;

	initStringInfo(&buf);
	if (v->packed)
	{
		if (io->typlen <= 0)
			TypeMismatch("A fixed-width value is decoded into a variable-width type.", 1, &type);
		enlargeStringInfo(&buf, io->typlen);
		if (!cursor_value_widen(v, (uint8 *) buf.data, io->typlen))
			TypeMismatch("A value is wider than its column type.", 1, &type);
		buf.len = io->typlen;
	}
	else
		appendBinaryStringInfo(&buf, (const char *) v->data, v->len);
	buf.data[buf.len] = '\0';
	result = ReceiveFunctionCall(&io->recv, &buf, io->recv_ioparam, typmod);
	if (buf.cursor != buf.len)
		TypeMismatch("A value has bytes left over after decoding.", 1, &type);
	pfree(buf.data);
	return result;
}

void
CursorDecodeValues(const char *cursor, size_t cursor_len,
				   const char *context, size_t context_len,
				   int nvalues, const Oid *types, const int32 *typmods,
				   Datum *values, bool *nulls)
{
	CursorHeader header;
	CursorPayload p;
	CursorValue *framed = palloc(sizeof(CursorValue) * Max(nvalues, 1));
	size_t		payload_len;
	uint8	   *payload = OpenCursor(cursor, cursor_len, context, context_len,
									 &header, &payload_len);

	if (cursor_payload_parse(payload, payload_len, header.has_expiry,
							 &p, framed, nvalues) != CURSOR_OK)
		InvalidCursor("The cursor's contents are malformed.");
	CheckExpiry(&p);
	if (p.nvalues != nvalues)
		TypeMismatch(psprintf("The cursor holds %d values, the column list has %d.",
							  p.nvalues, nvalues), nvalues, types);
	if (p.type_hint != TypeHint(nvalues, types))
		TypeMismatch("The cursor was encoded from columns of other types.", nvalues, types);
	for (int i = 0; i < nvalues; i++)
	{
		nulls[i] = framed[i].isnull;
		values[i] = nulls[i] ? (Datum) 0 :
			ReceiveValue(&framed[i], types[i], typmods ? typmods[i] : -1);
	}
	pfree(framed);
	pfree(payload);
}

/* The position's non-dropped columns, deformed. */
static int
DeformPosition(HeapTupleHeader rec, Oid **types, Datum **values, bool **nulls)
{
	TupleDesc	desc = lookup_rowtype_tupdesc(HeapTupleHeaderGetTypeId(rec),
											  HeapTupleHeaderGetTypMod(rec));
	HeapTupleData tuple = {.t_len = HeapTupleHeaderGetDatumLength(rec),.t_data = rec};
	Datum	   *all_values = palloc(sizeof(Datum) * Max(desc->natts, 1));
	bool	   *all_nulls = palloc(sizeof(bool) * Max(desc->natts, 1));
	int			n = 0;

	ItemPointerSetInvalid(&tuple.t_self);
	heap_deform_tuple(&tuple, desc, all_values, all_nulls);
	*types = palloc(sizeof(Oid) * Max(desc->natts, 1));
	*values = palloc(sizeof(Datum) * Max(desc->natts, 1));
	*nulls = palloc(sizeof(bool) * Max(desc->natts, 1));
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped)
			continue;
		(*types)[n] = att->atttypid;
		(*values)[n] = all_values[i];
		(*nulls)[n] = all_nulls[i];
		n++;
	}
	ReleaseTupleDesc(desc);
	return n;
}

static TimestampTz
ExpiryFromTtl(Interval *ttl)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz expiry;

	expiry = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
													 TimestampTzGetDatum(now),
													 IntervalPGetDatum(ttl)));
	if (expiry <= now)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cursor ttl must be positive"),
				 errhint("Pass a ttl such as '1 hour', or NULL for a cursor that never expires.")));
	return expiry;
}

/*
 * cursor_encode(position record, context text, ttl interval) RETURNS text.
 * STRICT in position only: NULL context and NULL ttl are meaningful.
 */
Datum
apicore_cursor_encode(PG_FUNCTION_ARGS)
{
	Oid		   *types;
	Datum	   *values;
	bool	   *nulls;
	int			n;
	text	   *context = PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1);
	TimestampTz expiry = PG_ARGISNULL(2) ? 0 : ExpiryFromTtl(PG_GETARG_INTERVAL_P(2));

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	n = DeformPosition(PG_GETARG_HEAPTUPLEHEADER(0), &types, &values, &nulls);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cursor position has no columns"),
				 errhint("Pass the sort key of the last row, e.g. ROW(created_at, id).")));
	PG_RETURN_TEXT_P(CursorEncodeValues(n, types, values, nulls,
										context ? VARDATA_ANY(context) : NULL,
										context ? VARSIZE_ANY_EXHDR(context) : 0,
										expiry));
}

/* The caller's column definition list, or a clear error without one. */
static TupleDesc
ResultColumns(FunctionCallInfo fcinfo)
{
	TupleDesc	desc;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("cursor_decode needs a column definition list"),
				 errhint("Call it as SELECT * FROM apicore.cursor_decode($1, 'orders') AS c(created_at timestamptz, id bigint).")));
	return desc;
}

/* cursor_decode(cursor text, context text) RETURNS record */
Datum
apicore_cursor_decode(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	text	   *cursor;
	text	   *context = PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1);
	Oid		   *types;
	int32	   *typmods;
	Datum	   *values;
	bool	   *nulls;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	cursor = PG_GETARG_TEXT_PP(0);
	desc = BlessTupleDesc(ResultColumns(fcinfo));
	types = palloc(sizeof(Oid) * Max(desc->natts, 1));
	typmods = palloc(sizeof(int32) * Max(desc->natts, 1));
	values = palloc(sizeof(Datum) * Max(desc->natts, 1));
	nulls = palloc(sizeof(bool) * Max(desc->natts, 1));
	for (int i = 0; i < desc->natts; i++)
	{
		types[i] = TupleDescAttr(desc, i)->atttypid;
		typmods[i] = TupleDescAttr(desc, i)->atttypmod;
	}
	CursorDecodeValues(VARDATA_ANY(cursor), VARSIZE_ANY_EXHDR(cursor),
					   context ? VARDATA_ANY(context) : NULL,
					   context ? VARSIZE_ANY_EXHDR(context) : 0,
					   desc->natts, types, typmods, values, nulls);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

/* cursor_rotate_key() RETURNS int: the new current key id */
Datum
apicore_cursor_rotate_key(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32((int32) CryptoRotateCursorKey());
}
