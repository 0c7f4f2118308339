/* tls_sni: the server_name of a TLS ClientHello, read in place through the
 * handshake records that carry it (RFC 8446 4.1.2, 5.1; RFC 6066 3). Every
 * length is checked against the one that encloses it, so a prefix of a valid
 * hello is INCOMPLETE and an inconsistency INVALID as soon as its bytes show. */
#include <stdbool.h>
#include <string.h>

#include "shard/tls_sni.h"

#define TLS_HANDSHAKE 22
#define TLS_RECORD_MAX 16384 /* 2^14 plaintext bytes */
#define HS_CLIENT_HELLO 1
#define EXT_SERVER_NAME 0
#define NAME_HOST_NAME 0
#define DNS_NAME_MAX 253
#define DNS_LABEL_MAX 63

/* The longest ClientHello body its own length fields allow: version, random,
 * session id <0..32>, cipher suites <2..2^16-2>, compression <1..2^8-1>,
 * extensions <0..2^16-1>. */
#define CLIENT_HELLO_MAX (2 + 32 + 1 + 32 + 2 + 65534 + 1 + 255 + 2 + 65535)

#define TRY(expr)                                                                                  \
	do {                                                                                       \
		sp_parse_t try_st_ = (expr);                                                       \
		if (try_st_ != SP_PARSE_OK)                                                        \
			return try_st_;                                                            \
	} while (0)

/* The handshake byte stream, stitched from the records' payloads. */
struct hs_reader {
	const uint8_t *buf;
	size_t len;
	size_t pos;	 /* next unread byte of buf */
	size_t rec_left; /* payload bytes of the current record not read yet */
	size_t msg_left; /* bytes of the ClientHello not read yet */
};

/* A record header: handshake, TLS 1.0..1.3 on the wire, a legal length that
 * does not run past the ClientHello (nothing else may share its records). */
static sp_parse_t rd_record(struct hs_reader *r)
{
	const uint8_t *h = r->buf + r->pos;
	size_t avail = r->len - r->pos;

	if (avail >= 1 && h[0] != TLS_HANDSHAKE)
		return SP_PARSE_INVALID;
	if (avail >= 2 && h[1] != 3)
		return SP_PARSE_INVALID;
	if (avail >= 3 && (h[2] < 1 || h[2] > 4))
		return SP_PARSE_INVALID;
	if (avail < 5)
		return SP_PARSE_INCOMPLETE;
	size_t l = (size_t)h[3] << 8 | h[4];
	if (l == 0 || l > TLS_RECORD_MAX || l > r->msg_left)
		return SP_PARSE_INVALID;
	r->pos += 5;
	r->rec_left = l;
	return SP_PARSE_OK;
}

/* Consume n bytes of the message, copied to out unless it is NULL. */
static sp_parse_t rd(struct hs_reader *r, uint8_t *out, size_t n)
{
	if (n > r->msg_left)
		return SP_PARSE_INVALID;
	while (n) {
		if (r->rec_left == 0)
			TRY(rd_record(r));
		size_t k = r->len - r->pos;
		if (k > r->rec_left)
			k = r->rec_left;
		if (k > n)
			k = n;
		if (k == 0)
			return SP_PARSE_INCOMPLETE;
		if (out) {
			memcpy(out, r->buf + r->pos, k);
			out += k;
		}
		r->pos += k;
		r->rec_left -= k;
		r->msg_left -= k;
		n -= k;
	}
	return SP_PARSE_OK;
}

/* A big-endian integer of n (1..3) bytes. */
static sp_parse_t rd_int(struct hs_reader *r, size_t n, size_t *v)
{
	uint8_t b[3];
	TRY(rd(r, b, n));
	*v = 0;
	for (size_t i = 0; i < n; i++)
		*v = *v << 8 | b[i];
	return SP_PARSE_OK;
}

/* A host_name of len bytes into sni, lower-cased, each byte checked as it
 * arrives: letters, digits, '-', '_', labels of 1..63 split by single dots,
 * and at most one dot at the end, which is not stored: a fully qualified
 * "example.com." names the same host as "example.com" (RFC 6066 says
 * clients send it without the dot; some do not), and route patterns drop
 * the dot the same way. So a name of len == cap fits only if it ends with
 * that dot, which is known when its last byte arrives. */
static sp_parse_t rd_host_name(struct hs_reader *r, size_t len, char *sni, size_t cap)
{
	size_t label = 0;

	if (len == 0 || len > DNS_NAME_MAX || len > cap)
		return SP_PARSE_INVALID;
	for (size_t i = 0; i < len; i++) {
		uint8_t c;
		TRY(rd(r, &c, 1));
		if (c >= 'A' && c <= 'Z')
			c = (uint8_t)(c - 'A' + 'a');
		if (c == '.') {
			if (label == 0)
				return SP_PARSE_INVALID;
			label = 0;
			if (i == len - 1)
				return SP_PARSE_OK; /* the trailing dot */
		} else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
			   c == '_') {
			if (++label > DNS_LABEL_MAX)
				return SP_PARSE_INVALID;
		} else {
			return SP_PARSE_INVALID;
		}
		if (i + 1 >= cap) /* no room for this byte and the terminating NUL */
			return SP_PARSE_INVALID;
		sni[i] = (char)c;
		sni[i + 1] = '\0';
	}
	return SP_PARSE_OK;
}

/* The server_name extension body: a ServerNameList filling it exactly, at
 * most one host_name; entries of other types are skipped. */
static sp_parse_t rd_server_name(struct hs_reader *r, size_t ext_len, char *sni, size_t cap)
{
	size_t list, type, len;
	bool host = false;

	if (ext_len < 2)
		return SP_PARSE_INVALID;
	TRY(rd_int(r, 2, &list));
	if (list == 0 || list != ext_len - 2)
		return SP_PARSE_INVALID;
	while (list) {
		if (list < 3)
			return SP_PARSE_INVALID;
		TRY(rd_int(r, 1, &type));
		TRY(rd_int(r, 2, &len));
		list -= 3;
		if (len > list)
			return SP_PARSE_INVALID;
		if (type == NAME_HOST_NAME) {
			if (host)
				return SP_PARSE_INVALID;
			host = true;
			TRY(rd_host_name(r, len, sni, cap));
		} else {
			TRY(rd(r, NULL, len));
		}
		list -= len;
	}
	return SP_PARSE_OK;
}

static sp_parse_t rd_client_hello(struct hs_reader *r, char *sni, size_t cap)
{
	size_t v, type, len;
	bool seen_sni = false;

	TRY(rd_int(r, 1, &v));
	if (v != HS_CLIENT_HELLO)
		return SP_PARSE_INVALID;
	TRY(rd_int(r, 3, &v));
	if (v > CLIENT_HELLO_MAX || r->rec_left > v)
		return SP_PARSE_INVALID;
	r->msg_left = v;

	TRY(rd_int(r, 2, &v)); /* legacy_version */
	if (v >> 8 != 3)
		return SP_PARSE_INVALID;
	TRY(rd(r, NULL, 32));  /* random */
	TRY(rd_int(r, 1, &v)); /* legacy_session_id */
	if (v > 32)
		return SP_PARSE_INVALID;
	TRY(rd(r, NULL, v));
	TRY(rd_int(r, 2, &v)); /* cipher_suites */
	if (v < 2 || v % 2)
		return SP_PARSE_INVALID;
	TRY(rd(r, NULL, v));
	TRY(rd_int(r, 1, &v)); /* legacy_compression_methods */
	if (v < 1)
		return SP_PARSE_INVALID;
	TRY(rd(r, NULL, v));
	if (r->msg_left == 0)
		return SP_PARSE_OK; /* no extensions at all: allowed up to TLS 1.2 */

	TRY(rd_int(r, 2, &v));
	if (v != r->msg_left)
		return SP_PARSE_INVALID;
	while (r->msg_left) {
		TRY(rd_int(r, 2, &type));
		TRY(rd_int(r, 2, &len));
		if (len > r->msg_left)
			return SP_PARSE_INVALID;
		if (type != EXT_SERVER_NAME) {
			TRY(rd(r, NULL, len));
			continue;
		}
		if (seen_sni)
			return SP_PARSE_INVALID; /* one extension of a type */
		seen_sni = true;
		TRY(rd_server_name(r, len, sni, cap));
	}
	return SP_PARSE_OK;
}

sp_parse_t sp_tls_sni_parse(const uint8_t *buf, size_t len, char *sni, size_t cap)
{
	/* until its header says otherwise, the message may be as long as any */
	struct hs_reader r = {.buf = buf, .len = len, .msg_left = 4 + CLIENT_HELLO_MAX};
	sp_parse_t st;

	if (!sni || cap == 0)
		return SP_PARSE_INVALID;
	sni[0] = '\0';
	if (len == 0)
		return SP_PARSE_INCOMPLETE;
	st = rd_client_hello(&r, sni, cap);
	if (st != SP_PARSE_OK)
		sni[0] = '\0';
	return st;
}
