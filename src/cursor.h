/*
 * cursor.h — what crypto.c, cursor.c and keyset.c share about cursors.
 *
 * crypto.c keeps the keys; cursor.c turns typed values into sealed cursor
 * text and back; keyset.c mints and reads its page cursors through cursor.c.
 * The wire format itself is in cursor_codec.h (no PostgreSQL headers).
 */
#ifndef APICORE_CURSOR_H
#define APICORE_CURSOR_H

#include "postgres.h"

#include "utils/timestamp.h"

#include "cursor_codec.h"

/* SQLSTATEs of the cursor capability (listed in docs/cursor.md) */
#define ERRCODE_APICORE_INVALID_CURSOR	ERRCODE_INVALID_CURSOR_NAME		/* 34000 */
#define ERRCODE_APICORE_CURSOR_EXPIRED	ERRCODE_INVALID_CURSOR_STATE	/* 24000 */

/* crypto.c: the current key (created on first use) and lookup by id */
extern uint32 CryptoCurrentCursorKey(uint8 key[CURSOR_KEY_BYTES]);
extern bool CryptoFindCursorKey(uint32 key_id, uint8 key[CURSOR_KEY_BYTES]);
extern uint32 CryptoRotateCursorKey(void);

/* cursor.c: typed values to cursor text and back; expiry 0 = never */
extern text *CursorEncodeValues(int nvalues, const Oid *types,
								const Datum *values, const bool *nulls,
								const char *context, size_t context_len,
								TimestampTz expiry);
extern void CursorDecodeValues(const char *cursor, size_t cursor_len,
							   const char *context, size_t context_len,
							   int nvalues, const Oid *types, const int32 *typmods,
							   Datum *values, bool *nulls);

#endif							/* APICORE_CURSOR_H */
