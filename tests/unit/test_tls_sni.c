/* TLS SNI: real ClientHellos (tests/unit/vectors/clienthello.h) give their
 * server name whole, in pieces or spread over records; anything else, from
 * plain HTTP to one corrupted length byte, is refused without a crash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <string.h>

#include "shard/tls_sni.h"
#include "tests/unit/vectors/clienthello.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define BIG 140000 /* room for any hello re-framed in 1-byte records */

static const struct vector {
	const uint8_t *bytes;
	size_t len;
	const char *name;
} vectors[] = {
    {ch_tls13_sni, sizeof(ch_tls13_sni), ch_tls13_sni_name},
    {ch_tls12_sni, sizeof(ch_tls12_sni), ch_tls12_sni_name},
    {ch_no_sni, sizeof(ch_no_sni), ch_no_sni_name},
    {ch_upper_sni, sizeof(ch_upper_sni), ch_upper_sni_name},
    {ch_long_sni, sizeof(ch_long_sni), ch_long_sni_name},
};

static uint8_t work[BIG], work2[BIG];

static sp_parse_t parse(const uint8_t *buf, size_t len, char *sni)
{
	return sp_tls_sni_parse(buf, len, sni, 256);
}

static void assert_sni(const uint8_t *buf, size_t len, const char *want)
{
	char sni[256];
	memset(sni, 'x', sizeof(sni));
	assert_int_equal(parse(buf, len, sni), SP_PARSE_OK);
	assert_string_equal(sni, want);
}

static void assert_invalid(const uint8_t *buf, size_t len)
{
	char sni[256];
	memset(sni, 'x', sizeof(sni));
	assert_int_equal(parse(buf, len, sni), SP_PARSE_INVALID);
	assert_string_equal(sni, "");
}

/* The handshake message of a one-record vector. */
static const uint8_t *hs_of(const struct vector *v, size_t *len)
{
	assert_int_equal(v->bytes[0], 22);
	assert_int_equal((size_t)v->bytes[3] << 8 | v->bytes[4], v->len - 5);
	*len = v->len - 5;
	return v->bytes + 5;
}

/* Wrap a handshake message into records of the given payload sizes; the last
 * record takes what is left. Returns the bytes written to out. */
static size_t reframe(const uint8_t *hs, size_t len, const size_t *sizes, size_t nsizes,
		      uint8_t *out)
{
	size_t o = 0, i = 0;
	while (len) {
		size_t n = i < nsizes && sizes[i] < len ? sizes[i] : len;
		out[o++] = 22;
		out[o++] = 3;
		out[o++] = i ? 3 : 1;
		out[o++] = (uint8_t)(n >> 8);
		out[o++] = (uint8_t)n;
		memcpy(out + o, hs, n);
		o += n;
		hs += n;
		len -= n;
		i++;
	}
	return o;
}

/* Offsets in a one-record vector of every length field, with its width. */
struct field {
	size_t off, width;
};

static size_t be(const uint8_t *p, size_t width)
{
	size_t v = 0;
	for (size_t i = 0; i < width; i++)
		v = v << 8 | p[i];
	return v;
}

static size_t length_fields(const uint8_t *b, size_t len, struct field *f)
{
	size_t n = 0, p = 5;
	f[n++] = (struct field){3, 2}; /* record */
	f[n++] = (struct field){6, 3}; /* handshake */
	p = 5 + 4 + 2 + 32;
	f[n++] = (struct field){p, 1}; /* session id */
	p += 1 + b[p];
	f[n++] = (struct field){p, 2}; /* cipher suites */
	p += 2 + be(b + p, 2);
	f[n++] = (struct field){p, 1}; /* compression */
	p += 1 + b[p];
	f[n++] = (struct field){p, 2}; /* extensions */
	p += 2;
	while (p < len) {
		size_t type = be(b + p, 2), elen = be(b + p + 2, 2);
		f[n++] = (struct field){p + 2, 2};
		if (type == 0) {
			f[n++] = (struct field){p + 4, 2}; /* server name list */
			f[n++] = (struct field){p + 7, 2}; /* host_name */
		}
		p += 4 + elen;
	}
	assert_int_equal(p, len);
	return n;
}

/* Offset of the host_name bytes in a one-record vector. */
static size_t name_offset(const uint8_t *b, size_t len)
{
	struct field f[64];
	size_t n = length_fields(b, len, f);
	for (size_t i = 0; i + 1 < n; i++)
		if (f[i].width == 2 && f[i + 1].off == f[i].off + 3 && b[f[i].off + 2] == 0)
			return f[i + 1].off + 2;
	fail_msg("no server_name in vector");
	return 0;
}

/* A synthetic hello: TLS 1.2 body, a session id of sid bytes, one suite,
 * null compression, then the given extension bytes (no block if exts is
 * NULL). */
static size_t make_hello_sid(size_t sid, const uint8_t *exts, size_t elen, uint8_t *out)
{
	uint8_t hs[70000];
	size_t n = 4;
	hs[n++] = 3;
	hs[n++] = 3;
	memset(hs + n, 0x42, 32);
	n += 32;
	hs[n++] = (uint8_t)sid;
	memset(hs + n, 0x17, sid);
	n += sid;
	memcpy(hs + n, "\x00\x02\x13\x01\x01\x00", 6);
	n += 6;
	if (exts) {
		hs[n++] = (uint8_t)(elen >> 8);
		hs[n++] = (uint8_t)elen;
		memcpy(hs + n, exts, elen);
		n += elen;
	}
	hs[0] = 1;
	hs[1] = (uint8_t)((n - 4) >> 16);
	hs[2] = (uint8_t)((n - 4) >> 8);
	hs[3] = (uint8_t)(n - 4);
	return reframe(hs, n, NULL, 0, out);
}

static size_t make_hello(const uint8_t *exts, size_t elen, uint8_t *out)
{
	return make_hello_sid(0, exts, elen, out);
}

/* A server_name extension with one entry of the given type. */
static size_t sni_ext(uint8_t *p, uint8_t type, const char *name)
{
	size_t l = strlen(name);
	p[0] = 0;
	p[1] = 0;
	p[2] = (uint8_t)((l + 5) >> 8);
	p[3] = (uint8_t)(l + 5);
	p[4] = (uint8_t)((l + 3) >> 8);
	p[5] = (uint8_t)(l + 3);
	p[6] = type;
	p[7] = (uint8_t)(l >> 8);
	p[8] = (uint8_t)l;
	memcpy(p + 9, name, l);
	return 9 + l;
}

/* ---- real hellos ---- */

static void test_real_hellos_yield_their_server_name(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(vectors); i++)
		assert_sni(vectors[i].bytes, vectors[i].len, vectors[i].name);
}

static void test_hello_without_sni_extension_yields_empty_name(void **state)
{
	(void)state;
	assert_sni(ch_no_sni, sizeof(ch_no_sni), "");
}

static void test_uppercase_name_is_lower_cased(void **state)
{
	(void)state;
	size_t off = name_offset(ch_upper_sni, sizeof(ch_upper_sni));
	assert_memory_equal(ch_upper_sni + off, "WWW.Example.COM", 15);
	assert_sni(ch_upper_sni, sizeof(ch_upper_sni), "www.example.com");
}

static void test_every_truncation_is_incomplete(void **state)
{
	(void)state;
	char sni[256];
	for (size_t i = 0; i < ARRAY_LEN(vectors); i++) {
		for (size_t k = 0; k < vectors[i].len; k++) {
			/* a copy of exactly k bytes, so ASan sees any over-read */
			uint8_t *p = work + BIG - k;
			memcpy(p, vectors[i].bytes, k);
			memset(sni, 'x', sizeof(sni));
			assert_int_equal(parse(p, k, sni), SP_PARSE_INCOMPLETE);
			assert_string_equal(sni, "");
		}
	}
}

static void test_bytes_after_the_hello_are_left_alone(void **state)
{
	(void)state;
	static const uint8_t more[] = {20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 2, 'h', 'i'};
	memcpy(work, ch_tls13_sni, sizeof(ch_tls13_sni));
	memcpy(work + sizeof(ch_tls13_sni), more, sizeof(more));
	assert_sni(work, sizeof(ch_tls13_sni) + sizeof(more), "www.example.com");
}

static void test_hello_split_across_two_records_parses_at_any_split(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_LEN(vectors); i++) {
		size_t hlen;
		const uint8_t *hs = hs_of(&vectors[i], &hlen);
		for (size_t split = 1; split < hlen; split++) {
			size_t n = reframe(hs, hlen, &split, 1, work);
			assert_int_equal(n, vectors[i].len + 5);
			assert_sni(work, n, vectors[i].name);
		}
	}
}

static void test_every_truncation_of_a_split_hello_is_incomplete(void **state)
{
	(void)state;
	size_t hlen, off = name_offset(ch_tls13_sni, sizeof(ch_tls13_sni)) - 5 + 4;
	const uint8_t *hs = hs_of(&vectors[0], &hlen);
	char sni[256];
	/* split inside the host name */
	size_t n = reframe(hs, hlen, &off, 1, work2);
	for (size_t k = 0; k < n; k++) {
		uint8_t *p = work + BIG - k;
		memcpy(p, work2, k);
		assert_int_equal(parse(p, k, sni), SP_PARSE_INCOMPLETE);
	}
	assert_sni(work2, n, "www.example.com");
}

static void test_hello_in_one_byte_records_parses(void **state)
{
	(void)state;
	size_t ones[600];
	for (size_t i = 0; i < ARRAY_LEN(ones); i++)
		ones[i] = 1;
	for (size_t i = 0; i < ARRAY_LEN(vectors); i++) {
		size_t hlen;
		const uint8_t *hs = hs_of(&vectors[i], &hlen);
		assert_true(hlen <= ARRAY_LEN(ones));
		size_t n = reframe(hs, hlen, ones, ARRAY_LEN(ones), work);
		assert_int_equal(n, hlen * 6);
		assert_sni(work, n, vectors[i].name);
	}
}

static void test_name_too_long_for_cap_is_invalid(void **state)
{
	(void)state;
	char sni[256];
	assert_int_equal(sp_tls_sni_parse(ch_tls13_sni, sizeof(ch_tls13_sni), sni, 15),
			 SP_PARSE_INVALID);
	assert_int_equal(sp_tls_sni_parse(ch_tls13_sni, sizeof(ch_tls13_sni), sni, 16),
			 SP_PARSE_OK);
	assert_string_equal(sni, "www.example.com");
	assert_int_equal(sp_tls_sni_parse(ch_long_sni, sizeof(ch_long_sni), sni, 253),
			 SP_PARSE_INVALID);
	assert_int_equal(sp_tls_sni_parse(ch_long_sni, sizeof(ch_long_sni), sni, 254), SP_PARSE_OK);
	assert_int_equal(strlen(sni), 253);
	/* no room even for "" */
	assert_int_equal(sp_tls_sni_parse(ch_no_sni, sizeof(ch_no_sni), sni, 0), SP_PARSE_INVALID);
	assert_int_equal(sp_tls_sni_parse(ch_no_sni, sizeof(ch_no_sni), sni, 1), SP_PARSE_OK);
}

static void test_name_too_long_is_invalid_before_its_bytes_arrive(void **state)
{
	(void)state;
	size_t off = name_offset(ch_tls13_sni, sizeof(ch_tls13_sni));
	char sni[256];
	/* 15 bytes of name: cap 14 cannot hold it even without a trailing dot */
	assert_int_equal(sp_tls_sni_parse(ch_tls13_sni, off, sni, 14), SP_PARSE_INVALID);
	assert_int_equal(sp_tls_sni_parse(ch_tls13_sni, off, sni, 16), SP_PARSE_INCOMPLETE);
	/* cap 15 would hold "www.example.co." without its dot: decided by the
	 * last byte ('m' here) */
	assert_int_equal(sp_tls_sni_parse(ch_tls13_sni, off + 14, sni, 15), SP_PARSE_INCOMPLETE);
	assert_int_equal(sp_tls_sni_parse(ch_tls13_sni, off + 15, sni, 15), SP_PARSE_INVALID);
}

static void test_name_that_is_not_a_dns_name_is_invalid(void **state)
{
	(void)state;
	/* same length as www.example.com, so only the name changes */
	const char *bad[] = {
	    "www.exa ple.com",	     "www.exa/ple.com", "www.exa\0ple.com",
	    "www.exa\xc3\xa9le.com", "*.w.example.com", ".ww.example.com",
	    "www.example.c..",	     "www..xample.com", "www.exa:ple.com",
	};
	size_t off = name_offset(ch_tls13_sni, sizeof(ch_tls13_sni));
	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		memcpy(work, ch_tls13_sni, sizeof(ch_tls13_sni));
		memcpy(work + off, bad[i], 15);
		assert_invalid(work, sizeof(ch_tls13_sni));
	}
	/* known bad as soon as the byte is seen */
	memcpy(work + off, "www.exa ple.com", 15);
	assert_invalid(work, off + 8);
	assert_int_equal(parse(work, off + 7, (char[256]){0}), SP_PARSE_INCOMPLETE);
}

static void test_one_trailing_dot_is_dropped(void **state)
{
	(void)state;
	size_t off = name_offset(ch_tls13_sni, sizeof(ch_tls13_sni));
	memcpy(work, ch_tls13_sni, sizeof(ch_tls13_sni));
	memcpy(work + off, "www.Example.co.", 15);
	assert_sni(work, sizeof(ch_tls13_sni), "www.example.co");
	/* the dot is not stored, so 14 bytes and the NUL are room enough */
	char sni[256];
	memset(sni, 0x5a, sizeof(sni));
	assert_int_equal(sp_tls_sni_parse(work, sizeof(ch_tls13_sni), sni, 15), SP_PARSE_OK);
	assert_string_equal(sni, "www.example.co");
	assert_int_equal(sni[15], 0x5a);
	assert_int_equal(sp_tls_sni_parse(work, sizeof(ch_tls13_sni), sni, 14), SP_PARSE_INVALID);
}

static void test_underscore_hyphen_and_digits_are_allowed(void **state)
{
	(void)state;
	size_t off = name_offset(ch_tls13_sni, sizeof(ch_tls13_sni));
	memcpy(work, ch_tls13_sni, sizeof(ch_tls13_sni));
	memcpy(work + off, "_a-1.Example.C0", 15);
	assert_sni(work, sizeof(ch_tls13_sni), "_a-1.example.c0");
}

static void test_label_longer_than_63_is_invalid(void **state)
{
	(void)state;
	char name[80];
	uint8_t ext[128];
	memset(name, 'a', 64);
	strcpy(name + 64, ".com");
	size_t n = make_hello(ext, sni_ext(ext, 0, name), work);
	assert_invalid(work, n);
	strcpy(name + 63, ".a.com"); /* 63 is fine */
	n = make_hello(ext, sni_ext(ext, 0, name), work);
	assert_sni(work, n, name);
}

/* ---- structure ---- */

static void test_overrunning_lengths_are_invalid_as_soon_as_read(void **state)
{
	(void)state;
	/* the name is at off: its length at off - 2, the list's at off - 5,
	 * the extension's at off - 7 */
	size_t off = name_offset(ch_tls13_sni, sizeof(ch_tls13_sni));
	memcpy(work, ch_tls13_sni, sizeof(ch_tls13_sni));
	work[off - 1]++; /* name longer than the list */
	assert_invalid(work, off);
	memcpy(work, ch_tls13_sni, sizeof(ch_tls13_sni));
	work[off - 7] = 0x7f; /* extension longer than the hello */
	assert_invalid(work, off - 5);
	memcpy(work, ch_tls13_sni, sizeof(ch_tls13_sni));
	work[off - 6] = 4; /* extension of 4: a list of 2, too short for an entry */
	work[off - 4] = 2;
	assert_invalid(work, off - 3);
	memcpy(work, ch_tls13_sni, sizeof(ch_tls13_sni));
	work[off - 6] = 0; /* extension of 0: no room for a list */
	assert_invalid(work, off - 5);
	memcpy(work, ch_tls13_sni, sizeof(ch_tls13_sni));
	memset(work + 6, 0xff, 3); /* a hello longer than its fields allow */
	assert_invalid(work, 9);
}

static void test_plain_http_is_invalid_at_first_byte(void **state)
{
	(void)state;
	const char *req = "GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n";
	assert_invalid((const uint8_t *)req, 1);
	assert_invalid((const uint8_t *)req, strlen(req));
}

static void test_empty_input_is_incomplete(void **state)
{
	(void)state;
	char sni[8];
	assert_int_equal(sp_tls_sni_parse(NULL, 0, sni, sizeof(sni)), SP_PARSE_INCOMPLETE);
}

static void test_garbage_never_crashes(void **state)
{
	(void)state;
	uint32_t x = 2463534242u;
	char sni[256];
	for (int round = 0; round < 20000; round++) {
		size_t len = 1 + round % 600;
		uint8_t *p = work + BIG - len;
		for (size_t i = 0; i < len; i++) {
			x ^= x << 13;
			x ^= x >> 17;
			x ^= x << 5;
			p[i] = (uint8_t)x;
		}
		if (round % 2) /* half of them look like a hello at first */
			memcpy(p, ch_tls13_sni, len < 11 ? len : 11);
		sp_parse_t st = parse(p, len, sni);
		if (p[0] != 22)
			assert_int_equal(st, SP_PARSE_INVALID);
		if (st != SP_PARSE_OK)
			assert_string_equal(sni, "");
	}
}

static void test_corrupted_length_bytes_are_invalid(void **state)
{
	(void)state;
	const int deltas[] = {1, -1, 0x80};
	for (size_t v = 0; v < ARRAY_LEN(vectors); v++) {
		struct field f[64];
		size_t n = length_fields(vectors[v].bytes, vectors[v].len, f);
		for (size_t i = 0; i < n; i++) {
			for (size_t d = 0; d < ARRAY_LEN(deltas); d++) {
				memcpy(work, vectors[v].bytes, vectors[v].len);
				/* the low byte for +-1, the high byte for 0x80 */
				size_t at = f[i].off + (deltas[d] == 0x80 ? 0 : f[i].width - 1);
				work[at] = (uint8_t)(work[at] + deltas[d]);
				assert_invalid(work, vectors[v].len);
			}
		}
	}
}

static void test_record_not_a_tls_handshake_is_invalid(void **state)
{
	(void)state;
	const uint8_t heads[][3] = {{21, 3, 1}, {20, 3, 3}, {23, 3, 3}, {0x80, 3, 1},
				    {22, 2, 0}, {22, 3, 0}, {22, 3, 5}, {22, 4, 1}};
	for (size_t i = 0; i < ARRAY_LEN(heads); i++) {
		memcpy(work, ch_tls13_sni, sizeof(ch_tls13_sni));
		memcpy(work, heads[i], 3);
		assert_invalid(work, sizeof(ch_tls13_sni));
		assert_invalid(work, 3); /* at once */
	}
}

static void test_record_length_zero_or_over_2_to_14_is_invalid(void **state)
{
	(void)state;
	const uint8_t lens[][2] = {{0, 0}, {0x40, 0x01}, {0xff, 0xff}};
	for (size_t i = 0; i < ARRAY_LEN(lens); i++) {
		memcpy(work, ch_tls13_sni, sizeof(ch_tls13_sni));
		memcpy(work + 3, lens[i], 2);
		assert_invalid(work, 5);
	}
}

static void test_not_a_client_hello_is_invalid(void **state)
{
	(void)state;
	memcpy(work, ch_tls13_sni, sizeof(ch_tls13_sni));
	work[5] = 2; /* ServerHello */
	assert_invalid(work, 6);
}

static void test_later_record_of_other_type_is_invalid(void **state)
{
	(void)state;
	size_t hlen, split = 100;
	const uint8_t *hs = hs_of(&vectors[0], &hlen);
	size_t n = reframe(hs, hlen, &split, 1, work);
	work[5 + split] = 23;
	assert_invalid(work, n);
	assert_invalid(work, 5 + split + 1);
}

static void test_record_carrying_more_than_the_hello_is_invalid(void **state)
{
	(void)state;
	/* one record holding the hello and one stray byte */
	size_t len = sizeof(ch_tls13_sni);
	memcpy(work, ch_tls13_sni, len);
	work[len] = 0;
	work[4]++;
	assert_invalid(work, len + 1);
	assert_invalid(work, 9); /* known once the handshake length is read */
}

static void test_hello_without_extensions_yields_empty_name(void **state)
{
	(void)state;
	size_t n = make_hello(NULL, 0, work);
	assert_sni(work, n, "");
	n = make_hello((const uint8_t *)"", 0, work); /* an empty block */
	assert_sni(work, n, "");
}

static void test_session_id_longer_than_32_is_invalid(void **state)
{
	(void)state;
	uint8_t ext[64];
	size_t e = sni_ext(ext, 0, "www.example.com");
	assert_sni(work, make_hello_sid(32, ext, e, work), "www.example.com");
	assert_invalid(work, make_hello_sid(33, ext, e, work));
}

/* A one-record hello around a hand-written body. */
static size_t wrap_body(const uint8_t *body, size_t len, uint8_t *out)
{
	uint8_t hs[512];
	assert_true(len + 4 <= sizeof(hs));
	hs[0] = 1;
	hs[1] = 0;
	hs[2] = (uint8_t)(len >> 8);
	hs[3] = (uint8_t)len;
	memcpy(hs + 4, body, len);
	return reframe(hs, len + 4, NULL, 0, out);
}

#define ZERO8 0, 0, 0, 0, 0, 0, 0, 0
#define RANDOM ZERO8, ZERO8, ZERO8, ZERO8

static void test_body_fields_out_of_their_ranges_are_invalid(void **state)
{
	(void)state;
	/* version, random, session id, suites, compression: all consistent */
	const uint8_t ok[] = {3, 3, RANDOM, 0, 0, 2, 0x13, 0x01, 1, 0};
	const uint8_t tls10[] = {3, 1, RANDOM, 0, 0, 2, 0x00, 0x2f, 1, 0};
	const uint8_t not_tls[] = {2, 0, RANDOM, 0, 0, 2, 0x13, 0x01, 1, 0};
	const uint8_t no_suites[] = {3, 3, RANDOM, 0, 0, 0, 1, 0};
	const uint8_t odd_suites[] = {3, 3, RANDOM, 0, 0, 3, 0x13, 0x01, 0x13, 1, 0};
	const uint8_t no_compression[] = {3, 3, RANDOM, 0, 0, 2, 0x13, 0x01, 0};
	/* an extension block of 4 holding one extension that claims 9 */
	const uint8_t ext_block_short[] = {
	    3, 3, RANDOM, 0, 0, 2, 0x13, 0x01, 1, 0, 0, 4, 0, 1, 0, 9,
	};
	assert_sni(work, wrap_body(ok, sizeof(ok), work), "");
	assert_sni(work, wrap_body(tls10, sizeof(tls10), work), "");
	assert_invalid(work, wrap_body(not_tls, sizeof(not_tls), work));
	assert_invalid(work, wrap_body(no_suites, sizeof(no_suites), work));
	assert_invalid(work, wrap_body(odd_suites, sizeof(odd_suites), work));
	assert_invalid(work, wrap_body(no_compression, sizeof(no_compression), work));
	assert_invalid(work, wrap_body(ext_block_short, sizeof(ext_block_short), work));
}

static void test_name_longer_than_253_is_invalid_whatever_the_cap(void **state)
{
	(void)state;
	char name[300];
	uint8_t ext[320];
	char sni[300];
	/* four labels of 63 and one of 1: 256 bytes */
	for (size_t i = 0; i < 256; i++)
		name[i] = i % 64 == 63 ? '.' : 'a';
	name[254] = '\0';
	size_t n = make_hello(ext, sni_ext(ext, 0, name), work);
	assert_int_equal(sp_tls_sni_parse(work, n, sni, sizeof(sni)), SP_PARSE_INVALID);
	name[253] = '\0';
	n = make_hello(ext, sni_ext(ext, 0, name), work);
	assert_int_equal(sp_tls_sni_parse(work, n, sni, sizeof(sni)), SP_PARSE_OK);
	assert_string_equal(sni, name);
}

static void test_two_server_name_extensions_are_invalid(void **state)
{
	(void)state;
	uint8_t ext[128];
	size_t e = sni_ext(ext, 0, "a.example");
	e += sni_ext(ext + e, 0, "b.example");
	assert_invalid(work, make_hello(ext, e, work));
}

static void test_two_host_names_are_invalid(void **state)
{
	(void)state;
	/* server_name, list of two host_name entries */
	const uint8_t ext[] = {0, 0, 0, 12, 0, 10, 0, 0, 2, 'a', 'b', 0, 0, 2, 'c', 'd'};
	assert_invalid(work, make_hello(ext, sizeof(ext), work));
}

static void test_other_name_types_are_skipped(void **state)
{
	(void)state;
	const uint8_t ext[] = {0, 0, 0, 13, 0, 11, 7, 0, 2, 'x', 'y', 0, 0, 3, 'a', '.', 'b'};
	size_t n = make_hello(ext, sizeof(ext), work);
	assert_sni(work, n, "a.b");
}

static void test_empty_server_name_extension_or_list_is_invalid(void **state)
{
	(void)state;
	const uint8_t empty_ext[] = {0, 0, 0, 0};
	const uint8_t empty_list[] = {0, 0, 0, 2, 0, 0};
	const uint8_t empty_name[] = {0, 0, 0, 5, 0, 3, 0, 0, 0};
	const uint8_t short_entry[] = {0, 0, 0, 4, 0, 2, 0, 0};
	assert_invalid(work, make_hello(empty_ext, sizeof(empty_ext), work));
	assert_invalid(work, make_hello(empty_list, sizeof(empty_list), work));
	assert_invalid(work, make_hello(empty_name, sizeof(empty_name), work));
	assert_invalid(work, make_hello(short_entry, sizeof(short_entry), work));
}

static void test_name_is_cleared_when_a_later_extension_is_bad(void **state)
{
	(void)state;
	uint8_t ext[128];
	size_t e = sni_ext(ext, 0, "www.example.com");
	memcpy(ext + e, "\x00\x2b\x00\x05\x02", 5); /* claims 5 bytes, has 1 */
	assert_invalid(work, make_hello(ext, e + 5, work));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_real_hellos_yield_their_server_name),
	    cmocka_unit_test(test_hello_without_sni_extension_yields_empty_name),
	    cmocka_unit_test(test_uppercase_name_is_lower_cased),
	    cmocka_unit_test(test_every_truncation_is_incomplete),
	    cmocka_unit_test(test_bytes_after_the_hello_are_left_alone),
	    cmocka_unit_test(test_hello_split_across_two_records_parses_at_any_split),
	    cmocka_unit_test(test_every_truncation_of_a_split_hello_is_incomplete),
	    cmocka_unit_test(test_hello_in_one_byte_records_parses),
	    cmocka_unit_test(test_name_too_long_for_cap_is_invalid),
	    cmocka_unit_test(test_name_too_long_is_invalid_before_its_bytes_arrive),
	    cmocka_unit_test(test_name_that_is_not_a_dns_name_is_invalid),
	    cmocka_unit_test(test_one_trailing_dot_is_dropped),
	    cmocka_unit_test(test_underscore_hyphen_and_digits_are_allowed),
	    cmocka_unit_test(test_label_longer_than_63_is_invalid),
	    cmocka_unit_test(test_overrunning_lengths_are_invalid_as_soon_as_read),
	    cmocka_unit_test(test_plain_http_is_invalid_at_first_byte),
	    cmocka_unit_test(test_empty_input_is_incomplete),
	    cmocka_unit_test(test_garbage_never_crashes),
	    cmocka_unit_test(test_corrupted_length_bytes_are_invalid),
	    cmocka_unit_test(test_record_not_a_tls_handshake_is_invalid),
	    cmocka_unit_test(test_record_length_zero_or_over_2_to_14_is_invalid),
	    cmocka_unit_test(test_not_a_client_hello_is_invalid),
	    cmocka_unit_test(test_later_record_of_other_type_is_invalid),
	    cmocka_unit_test(test_record_carrying_more_than_the_hello_is_invalid),
	    cmocka_unit_test(test_hello_without_extensions_yields_empty_name),
	    cmocka_unit_test(test_session_id_longer_than_32_is_invalid),
	    cmocka_unit_test(test_body_fields_out_of_their_ranges_are_invalid),
	    cmocka_unit_test(test_name_longer_than_253_is_invalid_whatever_the_cap),
	    cmocka_unit_test(test_two_server_name_extensions_are_invalid),
	    cmocka_unit_test(test_two_host_names_are_invalid),
	    cmocka_unit_test(test_other_name_types_are_skipped),
	    cmocka_unit_test(test_empty_server_name_extension_or_list_is_invalid),
	    cmocka_unit_test(test_name_is_cleared_when_a_later_extension_is_bad),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
