/*
 * cursor_codec.h — the cursor wire format, free of PostgreSQL.
 *
 * Owns everything that touches a cursor's untrusted bytes: URL-safe base64
 * without padding, the cleartext header, XChaCha20-Poly1305 sealing and
 * opening, and the framing of the values inside.  It includes no PostgreSQL
 * header so that test/fuzz/cursor_fuzz.c can run it under libFuzzer; cursor.c
 * is the only other includer.  All functions are static: each includer gets
 * its own copy, and nothing allocates.
 *
 * A cursor, before base64:
 *
 *   header   1 byte: version (bits 7-6), has-expiry flag (bit 5), key id
 *            (bits 4-0; 31 = "a varint key id follows")
 *   nonce    24 random bytes (XChaCha20: random nonces are safe for any
 *            realistic number of cursors per key)
 *   sealed   ciphertext of the payload + 16-byte Poly1305 tag
 *
 * The associated data is the header followed by a marker and BLAKE2b-256 of
 * the context, so a cursor only opens under the context it
 * was minted for, and the header cannot be altered.
 *
 * The payload, once opened:
 *
 *   type hint  2 bytes: a checksum of the column types, checked on decode
 *   expiry     varint seconds since 2000-01-01, only with the expiry flag
 *   values     one varint tag each, then its bytes:
 *                0          NULL
 *                2*(n+1)    n raw bytes (the type's send output)
 *                2*k+1      a fixed-width value with its sign-extension
 *                           bytes dropped, k bytes kept; the decoder widens
 *                           it back to the type's length
 *
 * Dropping sign-extension bytes is what keeps a (timestamptz, bigint) cursor
 * within 80 characters: microseconds since 2000 need 7 of their 8 bytes, and
 * typical ids need 1 to 4.
 */
#ifndef APICORE_CURSOR_CODEC_H
#define APICORE_CURSOR_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <sodium.h>

#define CURSOR_VERSION			1
#define CURSOR_KEY_BYTES		crypto_aead_xchacha20poly1305_ietf_KEYBYTES
#define CURSOR_NONCE_BYTES		crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define CURSOR_TAG_BYTES		crypto_aead_xchacha20poly1305_ietf_ABYTES
#define CURSOR_MAX_HEADER		6	/* 1 byte + a 32-bit varint */
#define CURSOR_HINT_BYTES		2

/* Longer input is rejected before any decoding work. */
#define CURSOR_MAX_CHARS		4096
#define CURSOR_MAX_BIN			(CURSOR_MAX_CHARS / 4 * 3)
#define CURSOR_MAX_PAYLOAD		(CURSOR_MAX_BIN - CURSOR_MAX_HEADER - \
								 CURSOR_NONCE_BYTES - CURSOR_TAG_BYTES)
/* room for the varint tag in front of one value */
#define CURSOR_VALUE_OVERHEAD	10

#define CURSOR_KEY_INLINE_MAX	30
#define CURSOR_KEY_ESCAPE		31

typedef enum CursorStatus
{
	CURSOR_OK = 0,
	CURSOR_BAD_ENCODING,		/* empty, too long, not URL-safe base64 */
	CURSOR_BAD_HEADER,			/* too short or unknown version */
	CURSOR_BAD_SEAL,			/* authentication failed */
	CURSOR_BAD_PAYLOAD			/* opened, but the framing is wrong */
} CursorStatus;

typedef struct CursorHeader
{
	int			version;
	bool		has_expiry;
	uint32_t	key_id;
	size_t		len;			/* bytes the header takes */
} CursorHeader;

/* One value as framed in the payload; points into the opened payload. */
typedef struct CursorValue
{
	bool		isnull;
	bool		packed;			/* sign-extension dropped: widen before use */
	const uint8_t *data;
	size_t		len;
} CursorValue;

typedef struct CursorPayload
{
	uint16_t	type_hint;
	bool		has_expiry;
	uint64_t	expiry;			/* seconds since 2000-01-01 UTC */
	int			nvalues;
} CursorPayload;

static inline size_t
cursor_varint_put(uint8_t *out, uint64_t v)
{
	size_t		n = 0;

	while (v >= 0x80)
	{
		out[n++] = (uint8_t) (v | 0x80);
		v >>= 7;
	}
	out[n++] = (uint8_t) v;
	return n;
}

/* Bytes consumed, or 0 when truncated or longer than 64 bits. */
static inline size_t
cursor_varint_get(const uint8_t *in, size_t len, uint64_t *v)
{
	uint64_t	result = 0;

	for (size_t i = 0; i < len && i < 10; i++)
	{
		uint64_t	bits = in[i] & 0x7F;

		if (i == 9 && bits > 1)
			return 0;
		result |= bits << (7 * i);
		if ((in[i] & 0x80) == 0)
		{
			*v = result;
			return i + 1;
		}
	}
	return 0;
}

static inline size_t
cursor_header_put(uint8_t *out, uint32_t key_id, bool has_expiry)
{
	uint8_t		first = (uint8_t) (CURSOR_VERSION << 6) | (has_expiry ? 0x20 : 0);

	if (key_id <= CURSOR_KEY_INLINE_MAX)
	{
		out[0] = first | (uint8_t) key_id;
		return 1;
	}
	out[0] = first | CURSOR_KEY_ESCAPE;
	return 1 + cursor_varint_put(out + 1, key_id);
}

static inline CursorStatus
cursor_header_parse(const uint8_t *bin, size_t len, CursorHeader *h)
{
	uint64_t	key_id;

	if (len < 1)
		return CURSOR_BAD_HEADER;
	h->version = bin[0] >> 6;
	h->has_expiry = (bin[0] & 0x20) != 0;
	h->key_id = bin[0] & 0x1F;
	h->len = 1;
	if (h->version != CURSOR_VERSION)
		return CURSOR_BAD_HEADER;
	if (h->key_id == CURSOR_KEY_ESCAPE)
	{
		size_t		n = cursor_varint_get(bin + 1, len - 1, &key_id);

		/*
		 * A 32-bit key id takes at most 5 varint bytes; a longer (padded)
		 * encoding would overrun the associated-data buffer sized for
		 * CURSOR_MAX_HEADER (found by cursor_fuzz).
		 */
		if (n == 0 || n > CURSOR_MAX_HEADER - 1 ||
			key_id > UINT32_MAX || key_id <= CURSOR_KEY_INLINE_MAX)
			return CURSOR_BAD_HEADER;
		h->key_id = (uint32_t) key_id;
		h->len += n;
	}
	if (len < h->len + CURSOR_NONCE_BYTES + CURSOR_TAG_BYTES)
		return CURSOR_BAD_HEADER;
	return CURSOR_OK;
}

/*
 * What a cursor is bound to: BLAKE2b-256 of the context, or "no context"
 * (NULL), which differs from the empty string.  Hashing keeps the associated
 * data small whatever the context's length, and lets callers reuse it.
 */
typedef struct CursorContext
{
	bool		present;
	uint8_t		digest[crypto_generichash_BYTES];
} CursorContext;

static inline void
cursor_context_init(CursorContext *c, const char *context, size_t context_len)
{
	c->present = (context != NULL);
	memset(c->digest, 0, sizeof(c->digest));
	if (c->present)
		crypto_generichash(c->digest, sizeof(c->digest),
						   (const unsigned char *) context, context_len, NULL, 0);
}

/* Associated data: the header, then the context's marker and digest. */
static inline size_t
cursor_ad_build(uint8_t *ad, const uint8_t *header, size_t header_len,
				const CursorContext *context)
{
	memcpy(ad, header, header_len);
	ad[header_len] = context->present ? 1 : 0;
	if (!context->present)
		return header_len + 1;
	memcpy(ad + header_len + 1, context->digest, sizeof(context->digest));
	return header_len + 1 + sizeof(context->digest);
}

#define CURSOR_AD_MAX (CURSOR_MAX_HEADER + 1 + crypto_generichash_BYTES)

/* Bytes of base64 text (without the NUL) for a payload of payload_len. */
static inline size_t
cursor_sealed_chars(uint32_t key_id, size_t payload_len)
{
	uint8_t		header[CURSOR_MAX_HEADER];
	size_t		bin = cursor_header_put(header, key_id, false) +
		CURSOR_NONCE_BYTES + payload_len + CURSOR_TAG_BYTES;

	return sodium_base64_ENCODED_LEN(bin, sodium_base64_VARIANT_URLSAFE_NO_PADDING) - 1;
}

/*
 * Seal a payload into NUL-terminated base64 text under a fresh random
 * `nonce`.  `out` must hold cursor_sealed_chars() + 1 bytes; `bin` is scratch
 * of CURSOR_MAX_BIN bytes.
 */
static inline void
cursor_seal(const uint8_t key[CURSOR_KEY_BYTES], uint32_t key_id, bool has_expiry,
			const CursorContext *context, const uint8_t nonce_in[CURSOR_NONCE_BYTES],
			const uint8_t *payload, size_t payload_len,
			uint8_t *bin, char *out, size_t out_size)
{
	uint8_t		ad[CURSOR_AD_MAX];
	size_t		hlen = cursor_header_put(bin, key_id, has_expiry);
	size_t		adlen = cursor_ad_build(ad, bin, hlen, context);
	uint8_t    *nonce = bin + hlen;
	unsigned long long sealed_len;

	memcpy(nonce, nonce_in, CURSOR_NONCE_BYTES);
	crypto_aead_xchacha20poly1305_ietf_encrypt(nonce + CURSOR_NONCE_BYTES, &sealed_len,
											   payload, payload_len, ad, adlen,
											   NULL, nonce, key);
	sodium_bin2base64(out, out_size, bin, hlen + CURSOR_NONCE_BYTES + sealed_len,
					  sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

/* 6-bit value of each URL-safe base64 character; -1 for every other byte. */
static const int8_t cursor_b64_values[256] = {
	-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
	-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
	-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 62, -1, -1,
	52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -1, -1, -1,
	-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
	15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, -1, -1, -1, -1, 63,
	-1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
	41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, -1, -1, -1, -1, -1,
	-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
	-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
	-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
	-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
	-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
	-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
	-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
	-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
};

/*
 * URL-safe base64 without padding to bytes; bin holds bin_size bytes
 * (text_len is enough).  Strict: only the 64 characters, no padding, no
 * impossible length, no stray bits in the last character.  Not constant
 * time, which base64 of ciphertext does not need; libsodium's decoder is,
 * and cost an eighth of a decode.
 */
static inline CursorStatus
cursor_unwrap(const char *text, size_t text_len, uint8_t *bin, size_t bin_size,
			  size_t *bin_len)
{
	uint32_t	acc = 0;
	int			bits = 0;
	size_t		n = 0;

	if (text_len == 0 || text_len > CURSOR_MAX_CHARS || text_len % 4 == 1)
		return CURSOR_BAD_ENCODING;
	for (size_t i = 0; i < text_len; i++)
	{
		int			v = cursor_b64_values[(unsigned char) text[i]];

		if (v < 0)
			return CURSOR_BAD_ENCODING;
		acc = (acc << 6) | (uint32_t) v;
		bits += 6;
		if (bits >= 8)
		{
			bits -= 8;
			if (n >= bin_size)
				return CURSOR_BAD_ENCODING;
			bin[n++] = (uint8_t) (acc >> bits);
		}
	}
	if ((acc & ((1u << bits) - 1)) != 0)
		return CURSOR_BAD_ENCODING;
	*bin_len = n;
	return CURSOR_OK;
}

/*
 * Open a parsed cursor with its key.  The payload goes to `payload`, which
 * must hold bin_len bytes; its length to *payload_len.
 */
static inline CursorStatus
cursor_open(const uint8_t key[CURSOR_KEY_BYTES], const CursorHeader *h,
			const uint8_t *bin, size_t bin_len, const CursorContext *context,
			uint8_t *payload, size_t *payload_len)
{
	uint8_t		ad[CURSOR_AD_MAX];
	size_t		adlen = cursor_ad_build(ad, bin, h->len, context);
	const uint8_t *nonce = bin + h->len;
	const uint8_t *sealed = nonce + CURSOR_NONCE_BYTES;
	unsigned long long opened_len;

	if (crypto_aead_xchacha20poly1305_ietf_decrypt(payload, &opened_len, NULL,
												   sealed, bin_len - h->len - CURSOR_NONCE_BYTES,
												   ad, adlen, nonce, key) != 0)
		return CURSOR_BAD_SEAL;
	*payload_len = (size_t) opened_len;
	return CURSOR_OK;
}

/* Payload writing: the prefix, then one call per value. */
static inline size_t
cursor_payload_start(uint8_t *out, uint16_t type_hint, bool has_expiry, uint64_t expiry)
{
	out[0] = (uint8_t) (type_hint >> 8);
	out[1] = (uint8_t) type_hint;
	if (!has_expiry)
		return CURSOR_HINT_BYTES;
	return CURSOR_HINT_BYTES + cursor_varint_put(out + CURSOR_HINT_BYTES, expiry);
}

static inline size_t
cursor_payload_put_null(uint8_t *out)
{
	out[0] = 0;
	return 1;
}

/*
 * Append one value.  With `fixed`, the bytes are a fixed-width value whose
 * leading sign-extension bytes are dropped (reversible given the width).
 */
static inline size_t
cursor_payload_put(uint8_t *out, const uint8_t *data, size_t len, bool fixed)
{
	size_t		n;

	if (fixed)
	{
		while (len > 1 &&
			   ((data[0] == 0x00 && (data[1] & 0x80) == 0) ||
				(data[0] == 0xFF && (data[1] & 0x80) != 0)))
		{
			data++;
			len--;
		}
		if (len == 1 && data[0] == 0x00)
			len = 0;
		n = cursor_varint_put(out, 2 * (uint64_t) len + 1);
	}
	else
		n = cursor_varint_put(out, 2 * ((uint64_t) len + 1));
	memcpy(out + n, data, len);
	return n + len;
}

/*
 * Parse an opened payload.  Fills up to max_values entries of `values`;
 * p->nvalues is the number present (which may exceed max_values, so the
 * caller can report a count mismatch).
 */
static inline CursorStatus
cursor_payload_parse(const uint8_t *in, size_t len, bool has_expiry,
					 CursorPayload *p, CursorValue *values, int max_values)
{
	size_t		pos = CURSOR_HINT_BYTES;

	if (len < CURSOR_HINT_BYTES)
		return CURSOR_BAD_PAYLOAD;
	p->type_hint = (uint16_t) ((in[0] << 8) | in[1]);
	p->has_expiry = has_expiry;
	p->expiry = 0;
	p->nvalues = 0;
	if (has_expiry)
	{
		size_t		n = cursor_varint_get(in + pos, len - pos, &p->expiry);

		if (n == 0)
			return CURSOR_BAD_PAYLOAD;
		pos += n;
	}
	while (pos < len)
	{
		uint64_t	tag;
		size_t		n = cursor_varint_get(in + pos, len - pos, &tag);
		CursorValue v = {0};

		if (n == 0)
			return CURSOR_BAD_PAYLOAD;
		pos += n;
		v.isnull = (tag == 0);
		v.packed = (tag & 1) != 0;
		v.len = v.isnull ? 0 : (v.packed ? tag / 2 : tag / 2 - 1);
		if (v.len > len - pos)
			return CURSOR_BAD_PAYLOAD;
		v.data = in + pos;
		pos += v.len;
		if (p->nvalues < max_values)
			values[p->nvalues] = v;
		p->nvalues++;
	}
	return CURSOR_OK;
}

/* Widen a packed value back to `width` bytes; false if it cannot be. */
static inline bool
cursor_value_widen(const CursorValue *v, uint8_t *out, size_t width)
{
	uint8_t		fill;

	if (!v->packed || v->len > width)
		return false;
	fill = (v->len > 0 && (v->data[0] & 0x80)) ? 0xFF : 0x00;
	memset(out, fill, width - v->len);
	memcpy(out + width - v->len, v->data, v->len);
	return true;
}

#endif							/* APICORE_CURSOR_CODEC_H */
