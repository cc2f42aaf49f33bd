/*
 * cursor_fuzz.c — libFuzzer harness for the cursor wire format
 * (src/cursor_codec.h): everything apicore does with a client's cursor
 * before PostgreSQL sees a value.
 *
 * Each input is used four ways: as base64 text, decoded by our decoder and
 * by libsodium's (they must agree), as cursor text (base64, header, opening
 * under a fixed key and a fixed context), as an opened payload (the framing
 * a forged-but-authentic cursor would reach), and as a payload sealed and
 * opened again, which must round-trip byte for byte.
 */
#include <stdio.h>
#include <stdlib.h>

#include "cursor_codec.h"

#define MAX_VALUES 64

static uint8_t fuzz_key[CURSOR_KEY_BYTES];
static CursorContext context;
static CursorContext no_context;

int			LLVMFuzzerInitialize(int *argc, char ***argv);
int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	if (sodium_init() < 0)
		abort();
	memset(fuzz_key, 0x42, sizeof(fuzz_key));
	cursor_context_init(&context, "orders", 6);
	cursor_context_init(&no_context, NULL, 0);
	return 0;
}

/* Frame a payload and widen every packed value, as cursor.c would. */
static void
ParsePayload(const uint8_t *payload, size_t len, bool has_expiry)
{
	CursorPayload p;
	CursorValue values[MAX_VALUES];
	uint8_t		wide[16];

	if (cursor_payload_parse(payload, len, has_expiry, &p, values, MAX_VALUES) != CURSOR_OK)
		return;
	for (int i = 0; i < p.nvalues && i < MAX_VALUES; i++)
	{
		if (values[i].data + values[i].len > payload + len)
			abort();			/* a value must stay inside the payload */
		(void) cursor_value_widen(&values[i], wide, 8);
		(void) cursor_value_widen(&values[i], wide, sizeof(wide));
	}
}

static bool
IsAscii(const uint8_t *data, size_t size)
{
	for (size_t i = 0; i < size; i++)
		if (data[i] >= 0x80)
			return false;
	return true;
}

/* Our strict base64url decoder must agree with libsodium's. */
static void
CompareBase64(const uint8_t *data, size_t size)
{
	static uint8_t ours[CURSOR_MAX_BIN];
	static uint8_t theirs[CURSOR_MAX_BIN];
	size_t		ours_len,
				theirs_len;
	const char *end;
	bool		ours_ok,
				theirs_ok;

	if (size == 0 || size > CURSOR_MAX_CHARS)
		return;
	ours_ok = cursor_unwrap((const char *) data, size, ours, sizeof(ours), &ours_len) == CURSOR_OK;
	theirs_ok = sodium_base642bin(theirs, sizeof(theirs), (const char *) data, size, NULL,
								  &theirs_len, &end,
								  sodium_base64_VARIANT_URLSAFE_NO_PADDING) == 0 &&
		end == (const char *) data + size;
	if (ours_ok && (!theirs_ok || ours_len != theirs_len || memcmp(ours, theirs, ours_len) != 0))
		abort();
	/* libsodium 1.0.18 also takes some bytes >= 0x80; we never do */
	if (theirs_ok && !ours_ok && IsAscii(data, size))
		abort();
}

static void
DecodeText(const uint8_t *data, size_t size)
{
	static uint8_t bin[CURSOR_MAX_BIN];
	static uint8_t payload[CURSOR_MAX_BIN];
	size_t		bin_len;
	size_t		payload_len;
	CursorHeader h;

	if (cursor_unwrap((const char *) data, size, bin, sizeof(bin), &bin_len) != CURSOR_OK)
		return;
	if (cursor_header_parse(bin, bin_len, &h) != CURSOR_OK)
		return;
	if (cursor_open(fuzz_key, &h, bin, bin_len, &context, payload, &payload_len) != CURSOR_OK)
		return;
	ParsePayload(payload, payload_len, h.has_expiry);
}

/* Seal the input as a payload, open it again: it must come back unchanged. */
static void
RoundTrip(const uint8_t *data, size_t size)
{
	static uint8_t bin[CURSOR_MAX_BIN];
	static uint8_t opened[CURSOR_MAX_BIN];
	static char text[CURSOR_MAX_CHARS + 8];
	uint32_t	key_id = size > 0 ? 1 + data[0] * 97u : 1;
	size_t		chars,
				bin_len,
				opened_len;
	CursorHeader h;
	uint8_t		nonce[CURSOR_NONCE_BYTES];

	if (size > CURSOR_MAX_PAYLOAD)
		return;
	chars = cursor_sealed_chars(key_id, size);
	if (chars > CURSOR_MAX_CHARS)
		abort();			/* every payload we accept must fit a cursor */
	randombytes_buf(nonce, sizeof(nonce));
	cursor_seal(fuzz_key, key_id, false, &context, nonce, data, size,
				bin, text, sizeof(text));
	if (strlen(text) != chars ||
		cursor_unwrap(text, chars, bin, sizeof(bin), &bin_len) != CURSOR_OK ||
		cursor_header_parse(bin, bin_len, &h) != CURSOR_OK ||
		h.key_id != key_id ||
		cursor_open(fuzz_key, &h, bin, bin_len, &context, opened, &opened_len) != CURSOR_OK ||
		opened_len != size || memcmp(opened, data, size) != 0)
		abort();
	/* another context must not open it */
	if (cursor_open(fuzz_key, &h, bin, bin_len, &no_context, opened, &opened_len) == CURSOR_OK)
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	CompareBase64(data, size);
	DecodeText(data, size);
	ParsePayload(data, size, false);
	ParsePayload(data, size, true);
	RoundTrip(data, size);
	return 0;
}
