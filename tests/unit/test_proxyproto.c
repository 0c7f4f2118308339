/* PROXY protocol: the spec's examples parse, every prefix of a valid header
 * waits for more, every deviation is refused (early when the bytes allow),
 * and what we build parses back to the same endpoints. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "shard/proxyproto.h"

#define V2_SIG 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A

/* src 192.168.0.1:56324 -> dst 192.168.0.11:443, the spec's v1 example */
static const uint8_t v2_tcp4[] = {V2_SIG, 0x21, 0x11, 0x00, 0x0C, 192,	168,  0,   1,
				  192,	  168,	0,    11,   0xDC, 0x04, 0x01, 0xBB};

/* src [2001:db8::1]:56324 -> dst [2001:db8::2]:443 */
static const uint8_t v2_tcp6[] = {V2_SIG, 0x21, 0x21, 0x00, 0x24, 0x20, 0x01, 0x0d, 0xb8, 0, 0,
				  0,	  0,	0,    0,    0,	  0,	0,    0,    0,	  1, 0x20,
				  0x01,	  0x0d, 0xb8, 0,    0,	  0,	0,    0,    0,	  0, 0,
				  0,	  0,	0,    2,    0xDC, 0x04, 0x01, 0xBB};

static const uint8_t v2_local[] = {V2_SIG, 0x20, 0x00, 0x00, 0x00};

/* TCP4 as above, then ALPN "h2", AUTHORITY "example.com", an empty NOOP */
static const uint8_t v2_tcp4_tlvs[] = {V2_SIG, 0x21, 0x11, 0x00, 0x22, 192,  168,  0,	 1,    192,
				       168,    0,    11,   0xDC, 0x04, 0x01, 0xBB, 0x01, 0x00, 0x02,
				       'h',    '2',  0x02, 0x00, 0x0b, 'e',  'x',  'a',	 'm',  'p',
				       'l',    'e',  '.',  'c',	 'o',  'm',  0x04, 0x00, 0x00};

/* LOCAL (a health check) that still carries an address block and a TLV */
static const uint8_t v2_local_with_addrs[] = {V2_SIG, 0x20, 0x11, 0x00, 0x10, 10, 0, 0, 1, 10, 0,
					      0,      2,    0,	  80,	0,    81, 4, 0, 1, 0};

static const char v1_tcp4[] = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
static const char v1_tcp6[] = "PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n";
static const char v1_tcp6_longest[] =
    "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
    "65535 65535\r\n";
static const char v1_unknown[] = "PROXY UNKNOWN\r\n";
static const char v1_unknown_longest[] =
    "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
    "65535 65535\r\n";

static sp_parse_t parse(const void *buf, size_t len)
{
	struct sockaddr_storage src, dst;
	size_t hlen;
	bool local;
	return sp_proxyproto_parse(buf, len, &hlen, &src, &dst, &local);
}

static sp_parse_t parse_str(const char *s)
{
	return parse(s, strlen(s));
}

/* Every proper prefix is INCOMPLETE; the whole is OK and consumes exactly
 * itself, even with payload behind it. */
static void assert_header(const uint8_t *h, size_t len)
{
	uint8_t buf[SP_PROXYPROTO_V2_MAX + 64];
	struct sockaddr_storage src, dst;
	size_t hlen;
	bool local;

	assert_true(len + 18 <= sizeof(buf));
	for (size_t k = 0; k < len; k++)
		assert_int_equal(parse(h, k), SP_PARSE_INCOMPLETE);
	memcpy(buf, h, len);
	memcpy(buf + len, "GET / HTTP/1.1\r\n\r\n", 18);
	for (size_t extra = 0; extra <= 18; extra += 18) {
		hlen = 0;
		assert_int_equal(sp_proxyproto_parse(buf, len + extra, &hlen, &src, &dst, &local),
				 SP_PARSE_OK);
		assert_int_equal(hlen, len);
	}
}

static void assert_inet(const struct sockaddr_storage *ss, int family, const char *addr,
			uint16_t port)
{
	char text[INET6_ADDRSTRLEN];
	assert_int_equal(ss->ss_family, family);
	if (family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
		assert_non_null(inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text)));
		assert_int_equal(ntohs(sin->sin_port), port);
	} else {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
		assert_non_null(inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof(text)));
		assert_int_equal(ntohs(sin6->sin6_port), port);
	}
	assert_string_equal(text, addr);
}

static void assert_parsed(const void *h, size_t len, int family, const char *saddr, uint16_t sport,
			  const char *daddr, uint16_t dport)
{
	struct sockaddr_storage src, dst;
	size_t hlen = 0;
	bool local = true;
	assert_int_equal(sp_proxyproto_parse(h, len, &hlen, &src, &dst, &local), SP_PARSE_OK);
	assert_int_equal(hlen, len);
	assert_false(local);
	assert_inet(&src, family, saddr, sport);
	assert_inet(&dst, family, daddr, dport);
}

static void assert_local(const void *h, size_t len)
{
	static const struct sockaddr_storage zero;
	struct sockaddr_storage src, dst;
	size_t hlen = 0;
	bool local = false;
	memset(&src, 0xa5, sizeof(src));
	memset(&dst, 0xa5, sizeof(dst));
	assert_int_equal(sp_proxyproto_parse(h, len, &hlen, &src, &dst, &local), SP_PARSE_OK);
	assert_int_equal(hlen, len);
	assert_true(local);
	assert_memory_equal(&src, &zero, sizeof(zero));
	assert_memory_equal(&dst, &zero, sizeof(zero));
}

/* ---- version 1 ---- */

static void test_v1_tcp4_spec_example_parses(void **state)
{
	(void)state;
	assert_parsed(v1_tcp4, strlen(v1_tcp4), AF_INET, "192.168.0.1", 56324, "192.168.0.11", 443);
}

static void test_v1_tcp6_parses(void **state)
{
	(void)state;
	assert_parsed(v1_tcp6, strlen(v1_tcp6), AF_INET6, "2001:db8::1", 56324, "2001:db8::2", 443);
}

static void test_v1_tcp6_longest_line_of_104_bytes_parses(void **state)
{
	(void)state;
	assert_int_equal(strlen(v1_tcp6_longest), 104);
	assert_parsed(v1_tcp6_longest, strlen(v1_tcp6_longest), AF_INET6,
		      "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535,
		      "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535);
}

static void test_v1_tcp6_v4_mapped_dotted_form_parses(void **state)
{
	(void)state;
	const char *h = "PROXY TCP6 ::ffff:10.0.0.1 ::1 0 65535\r\n";
	assert_parsed(h, strlen(h), AF_INET6, "::ffff:10.0.0.1", 0, "::1", 65535);
}

static void test_v1_unknown_is_local(void **state)
{
	(void)state;
	assert_local(v1_unknown, strlen(v1_unknown));
}

static void test_v1_unknown_longest_line_of_107_bytes_is_local(void **state)
{
	(void)state;
	assert_int_equal(strlen(v1_unknown_longest), SP_PROXYPROTO_V1_MAX);
	assert_local(v1_unknown_longest, strlen(v1_unknown_longest));
}

static void test_v1_every_truncation_is_incomplete(void **state)
{
	(void)state;
	const char *vectors[] = {v1_tcp4,
				 v1_tcp6,
				 v1_tcp6_longest,
				 v1_unknown,
				 v1_unknown_longest,
				 "PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
				 "PROXY TCP6 ::ffff:255.255.255.255 1:2:3:4:5:6:7:8 1 2\r\n",
				 "PROXY TCP6 :: fe80::1:0:0:1 10 20\r\n"};
	for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++)
		assert_header((const uint8_t *)vectors[i], strlen(vectors[i]));
}

static void test_v1_partial_address_is_incomplete(void **state)
{
	(void)state;
	assert_int_equal(parse_str("PRO"), SP_PARSE_INCOMPLETE);
	assert_int_equal(parse_str("PROXY TCP4 1.2"), SP_PARSE_INCOMPLETE);
	assert_int_equal(parse_str("PROXY TCP6 2001:db8:"), SP_PARSE_INCOMPLETE);
	assert_int_equal(parse_str("PROXY TCP6 ::ffff:1.2."), SP_PARSE_INCOMPLETE);
	assert_int_equal(parse_str("PROXY UNKNOWN whatever"), SP_PARSE_INCOMPLETE);
}

static void test_v1_port_65536_is_invalid(void **state)
{
	(void)state;
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 65536 443\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 443 65536\r\n"), SP_PARSE_INVALID);
	/* and as soon as the sixth digit shows */
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 65536"), SP_PARSE_INVALID);
}

static void test_v1_port_sign_or_heading_zero_is_invalid(void **state)
{
	(void)state;
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 +1 443\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 -1 443\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 0443 443\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 0x1 443\r\n"), SP_PARSE_INVALID);
	/* an empty port is not port 0 */
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8  443\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 443 \r\n"), SP_PARSE_INVALID);
}

static void test_v1_double_or_missing_space_is_invalid(void **state)
{
	(void)state;
	assert_int_equal(parse_str("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 1\t2\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"), SP_PARSE_INVALID);
}

static void test_v1_line_end_other_than_crlf_is_invalid(void **state)
{
	(void)state;
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n\r"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY UNKNOWN\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY UNKNOWN 1.2.3.4\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY UNKNOWN\r\r\n"), SP_PARSE_INVALID);
}

static void test_v1_address_not_of_announced_family_is_invalid(void **state)
{
	(void)state;
	assert_int_equal(parse_str("PROXY TCP4 ::1 ::1 1 2\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4 ::1 1 2\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP6 ::1 5.6.7.8 1 2\r\n"), SP_PARSE_INVALID);
}

static void test_v1_malformed_address_is_invalid(void **state)
{
	(void)state;
	assert_int_equal(parse_str("PROXY TCP4 256.1.1.1 5.6.7.8 1 2\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4. 5.6.7.8 1 2\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP6 1::2::3 ::1 1 2\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP6 12345:: ::1 1 2\r\n"), SP_PARSE_INVALID);
	/* longer than any address text */
	assert_int_equal(parse_str("PROXY TCP6 0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:"
				   "0000:0000 ::1 1 2\r\n"),
			 SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1111111111111111111111111111111111111111111111111111"
				   "11111111 1.2.3.4 1 2\r\n"),
			 SP_PARSE_INVALID);
}

static void test_v1_impossible_prefix_is_invalid_before_crlf(void **state)
{
	(void)state;
	assert_int_equal(parse_str("GET / HTTP/1.1\r\n"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("G"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP5"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY UNKNOWNX"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("proxy"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.4.5"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 256"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP4 1.2.3.01"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP6 1:2:3:4:5:6:7:8:"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP6 ::1::"), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY TCP6 ::1234."), SP_PARSE_INVALID);
	assert_int_equal(parse_str("PROXY UNKNOWN \x01"), SP_PARSE_INVALID);
}

static void test_v1_line_longer_than_107_bytes_is_invalid(void **state)
{
	(void)state;
	char line[256];
	/* UNKNOWN: 108 bytes before CRLF */
	memset(line, 'x', sizeof(line));
	memcpy(line, "PROXY UNKNOWN ", 14);
	memcpy(line + 106, "\r\n", 3);
	assert_int_equal(strlen(line), 108);
	assert_int_equal(parse_str(line), SP_PARSE_INVALID);
	/* and no need to wait for the CRLF to know it */
	assert_int_equal(parse(line, 106), SP_PARSE_INVALID);
	assert_int_equal(parse(line, 105), SP_PARSE_INCOMPLETE);

	/* TCP6 with two 45-byte addresses leaves no room for the ports */
	const char *addr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
	assert_int_equal(strlen(addr), 45);
	snprintf(line, sizeof(line), "PROXY TCP6 %s %s 1 2\r\n", addr, addr);
	assert_int_equal(parse_str(line), SP_PARSE_INVALID);
	assert_int_equal(parse(line, 11 + 45 + 1 + 45), SP_PARSE_INVALID);
	assert_int_equal(parse(line, 11 + 45 + 1 + 44), SP_PARSE_INCOMPLETE);
}

/* ---- version 2 ---- */

static void test_v2_tcp4_parses(void **state)
{
	(void)state;
	assert_parsed(v2_tcp4, sizeof(v2_tcp4), AF_INET, "192.168.0.1", 56324, "192.168.0.11", 443);
}

static void test_v2_tcp6_parses(void **state)
{
	(void)state;
	assert_parsed(v2_tcp6, sizeof(v2_tcp6), AF_INET6, "2001:db8::1", 56324, "2001:db8::2", 443);
}

static void test_v2_tlvs_are_skipped(void **state)
{
	(void)state;
	assert_parsed(v2_tcp4_tlvs, sizeof(v2_tcp4_tlvs), AF_INET, "192.168.0.1", 56324,
		      "192.168.0.11", 443);
}

static void test_v2_local_is_local(void **state)
{
	(void)state;
	assert_local(v2_local, sizeof(v2_local));
	assert_local(v2_local_with_addrs, sizeof(v2_local_with_addrs));
}

static void test_v2_proxy_unspec_is_local(void **state)
{
	(void)state;
	const uint8_t h[] = {V2_SIG, 0x21, 0x00, 0x00, 0x03, 0x04, 0x00, 0x00};
	assert_local(h, sizeof(h));
}

static void test_v2_every_truncation_is_incomplete(void **state)
{
	(void)state;
	assert_header(v2_tcp4, sizeof(v2_tcp4));
	assert_header(v2_tcp6, sizeof(v2_tcp6));
	assert_header(v2_local, sizeof(v2_local));
	assert_header(v2_tcp4_tlvs, sizeof(v2_tcp4_tlvs));
	assert_header(v2_local_with_addrs, sizeof(v2_local_with_addrs));
}

static void test_v2_longest_header_parses(void **state)
{
	(void)state;
	static uint8_t h[SP_PROXYPROTO_V2_MAX];
	size_t alen = SP_PROXYPROTO_V2_MAX - 16, noop = alen - 12 - 3;
	memcpy(h, v2_tcp4, sizeof(v2_tcp4));
	h[14] = (uint8_t)(alen >> 8);
	h[15] = (uint8_t)alen;
	h[28] = 0x04;
	h[29] = (uint8_t)(noop >> 8);
	h[30] = (uint8_t)noop;
	assert_header(h, sizeof(h));
	/* one more byte of length is over the bound, and known at byte 16 */
	alen++;
	h[14] = (uint8_t)(alen >> 8);
	h[15] = (uint8_t)alen;
	assert_int_equal(parse(h, 16), SP_PARSE_INVALID);
}

static void test_v2_bad_signature_is_invalid_at_first_wrong_byte(void **state)
{
	(void)state;
	uint8_t h[sizeof(v2_tcp4)];
	for (size_t i = 0; i < 12; i++) {
		memcpy(h, v2_tcp4, sizeof(h));
		h[i] ^= 0x40;
		assert_int_equal(parse(h, i + 1), SP_PARSE_INVALID);
		assert_int_equal(parse(h, sizeof(h)), SP_PARSE_INVALID);
	}
}

static void test_v2_wrong_version_or_command_is_invalid(void **state)
{
	(void)state;
	const uint8_t bytes[] = {0x11, 0x31, 0x01, 0x22, 0x2F};
	uint8_t h[sizeof(v2_tcp4)];
	for (size_t i = 0; i < sizeof(bytes); i++) {
		memcpy(h, v2_tcp4, sizeof(h));
		h[12] = bytes[i];
		assert_int_equal(parse(h, 13), SP_PARSE_INVALID);
		assert_int_equal(parse(h, sizeof(h)), SP_PARSE_INVALID);
	}
}

static void test_v2_udp_unix_and_unknown_families_are_invalid(void **state)
{
	(void)state;
	const uint8_t fams[] = {0x12, 0x22, 0x31, 0x32, 0x10, 0x01, 0x13, 0x41, 0xFF};
	uint8_t h[16 + 216];
	memset(h, 0, sizeof(h));
	memcpy(h, v2_tcp4, 16);
	h[14] = 0;
	h[15] = 216;
	for (size_t i = 0; i < sizeof(fams); i++) {
		h[13] = fams[i];
		assert_int_equal(parse(h, 14), SP_PARSE_INVALID);
		assert_int_equal(parse(h, sizeof(h)), SP_PARSE_INVALID);
	}
}

static void test_v2_length_shorter_than_address_block_is_invalid(void **state)
{
	(void)state;
	uint8_t h[sizeof(v2_tcp6)];
	memcpy(h, v2_tcp4, sizeof(v2_tcp4));
	h[15] = 11;
	assert_int_equal(parse(h, 16), SP_PARSE_INVALID);
	memcpy(h, v2_tcp6, sizeof(v2_tcp6));
	h[15] = 35;
	assert_int_equal(parse(h, 16), SP_PARSE_INVALID);
	h[15] = 12; /* an IPv4-sized block under an IPv6 family */
	assert_int_equal(parse(h, sizeof(h)), SP_PARSE_INVALID);
}

static void test_v2_malformed_tlv_is_invalid(void **state)
{
	(void)state;
	uint8_t h[sizeof(v2_tcp4_tlvs)];
	/* the last TLV claims one byte more than the header holds */
	memcpy(h, v2_tcp4_tlvs, sizeof(h));
	h[sizeof(h) - 1] = 1;
	assert_int_equal(parse(h, sizeof(h)), SP_PARSE_INVALID);
	/* two stray bytes after the address block */
	memcpy(h, v2_tcp4, sizeof(v2_tcp4));
	h[15] = 14;
	h[28] = 0x04;
	h[29] = 0x00;
	assert_int_equal(parse(h, 30), SP_PARSE_INVALID);
}

/* ---- builder ---- */

static struct sockaddr_storage inet(const char *addr, uint16_t port)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	if (strchr(addr, ':')) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		assert_int_equal(inet_pton(AF_INET6, addr, &sin6->sin6_addr), 1);
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		assert_int_equal(inet_pton(AF_INET, addr, &sin->sin_addr), 1);
	}
	return ss;
}

static size_t build(int version, const struct sockaddr_storage *s, const struct sockaddr_storage *d,
		    uint8_t *out, size_t cap)
{
	return sp_proxyproto_build(version, (const struct sockaddr *)s, (const struct sockaddr *)d,
				   out, cap);
}

static void test_build_v1_tcp4_is_the_spec_example(void **state)
{
	(void)state;
	struct sockaddr_storage s = inet("192.168.0.1", 56324), d = inet("192.168.0.11", 443);
	uint8_t out[128];
	size_t n = build(1, &s, &d, out, sizeof(out));
	assert_int_equal(n, strlen(v1_tcp4));
	assert_memory_equal(out, v1_tcp4, n);
}

static void test_build_v2_tcp4_is_the_hand_built_vector(void **state)
{
	(void)state;
	struct sockaddr_storage s = inet("192.168.0.1", 56324), d = inet("192.168.0.11", 443);
	uint8_t out[128];
	size_t n = build(2, &s, &d, out, sizeof(out));
	assert_int_equal(n, sizeof(v2_tcp4));
	assert_memory_equal(out, v2_tcp4, n);
}

static void assert_round_trip(int version, const char *sa, uint16_t sp, const char *da, uint16_t dp,
			      int family, const char *want_sa, const char *want_da)
{
	struct sockaddr_storage s = inet(sa, sp), d = inet(da, dp);
	uint8_t out[SP_PROXYPROTO_V2_MAX];
	size_t n = build(version, &s, &d, out, sizeof(out));
	assert_true(n > 0);
	assert_header(out, n);
	assert_parsed(out, n, family, want_sa, sp, want_da, dp);
}

static void test_build_parse_round_trips_both_versions_both_families(void **state)
{
	(void)state;
	for (int v = 1; v <= 2; v++) {
		assert_round_trip(v, "10.1.2.3", 40000, "10.9.8.7", 8443, AF_INET, "10.1.2.3",
				  "10.9.8.7");
		assert_round_trip(v, "0.0.0.0", 0, "255.255.255.255", 65535, AF_INET, "0.0.0.0",
				  "255.255.255.255");
		assert_round_trip(v, "2001:db8::dead:beef", 1, "fe80::1", 65535, AF_INET6,
				  "2001:db8::dead:beef", "fe80::1");
		assert_round_trip(v, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535, "::", 0,
				  AF_INET6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::");
	}
}

static void test_build_mixed_families_maps_ipv4_into_ipv6(void **state)
{
	(void)state;
	for (int v = 1; v <= 2; v++) {
		assert_round_trip(v, "192.0.2.1", 1234, "2001:db8::1", 443, AF_INET6,
				  "::ffff:192.0.2.1", "2001:db8::1");
		assert_round_trip(v, "2001:db8::1", 1234, "192.0.2.1", 443, AF_INET6, "2001:db8::1",
				  "::ffff:192.0.2.1");
	}
}

static void test_build_without_inet_endpoints_is_unknown_or_local(void **state)
{
	(void)state;
	struct sockaddr_storage s = inet("192.0.2.1", 1), unix_ep;
	uint8_t out[128];
	size_t n;
	memset(&unix_ep, 0, sizeof(unix_ep));
	unix_ep.ss_family = AF_UNIX;

	n = build(1, &s, &unix_ep, out, sizeof(out));
	assert_int_equal(n, strlen(v1_unknown));
	assert_memory_equal(out, v1_unknown, n);
	assert_local(out, n);
	n = sp_proxyproto_build(1, NULL, NULL, out, sizeof(out));
	assert_int_equal(n, strlen(v1_unknown));

	n = build(2, &unix_ep, &s, out, sizeof(out));
	assert_int_equal(n, sizeof(v2_local));
	assert_memory_equal(out, v2_local, n);
	assert_local(out, n);
}

static void test_build_returns_zero_when_cap_too_small(void **state)
{
	(void)state;
	struct sockaddr_storage s = inet("2001:db8::1", 1), d = inet("2001:db8::2", 2);
	uint8_t out[128];
	for (int v = 1; v <= 2; v++) {
		size_t need = build(v, &s, &d, out, sizeof(out));
		assert_true(need > 0);
		for (size_t cap = 0; cap < need; cap++) {
			memset(out, 0x5a, sizeof(out));
			assert_int_equal(build(v, &s, &d, out, cap), 0);
			assert_int_equal(out[cap], 0x5a); /* nothing past cap */
		}
		assert_int_equal(build(v, &s, &d, out, need), need);
	}
}

static void test_build_unknown_version_returns_zero(void **state)
{
	(void)state;
	struct sockaddr_storage s = inet("192.0.2.1", 1), d = inet("192.0.2.2", 2);
	uint8_t out[128];
	assert_int_equal(build(0, &s, &d, out, sizeof(out)), 0);
	assert_int_equal(build(3, &s, &d, out, sizeof(out)), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_v1_tcp4_spec_example_parses),
	    cmocka_unit_test(test_v1_tcp6_parses),
	    cmocka_unit_test(test_v1_tcp6_longest_line_of_104_bytes_parses),
	    cmocka_unit_test(test_v1_tcp6_v4_mapped_dotted_form_parses),
	    cmocka_unit_test(test_v1_unknown_is_local),
	    cmocka_unit_test(test_v1_unknown_longest_line_of_107_bytes_is_local),
	    cmocka_unit_test(test_v1_every_truncation_is_incomplete),
	    cmocka_unit_test(test_v1_partial_address_is_incomplete),
	    cmocka_unit_test(test_v1_port_65536_is_invalid),
	    cmocka_unit_test(test_v1_port_sign_or_heading_zero_is_invalid),
	    cmocka_unit_test(test_v1_double_or_missing_space_is_invalid),
	    cmocka_unit_test(test_v1_line_end_other_than_crlf_is_invalid),
	    cmocka_unit_test(test_v1_address_not_of_announced_family_is_invalid),
	    cmocka_unit_test(test_v1_malformed_address_is_invalid),
	    cmocka_unit_test(test_v1_impossible_prefix_is_invalid_before_crlf),
	    cmocka_unit_test(test_v1_line_longer_than_107_bytes_is_invalid),
	    cmocka_unit_test(test_v2_tcp4_parses),
	    cmocka_unit_test(test_v2_tcp6_parses),
	    cmocka_unit_test(test_v2_tlvs_are_skipped),
	    cmocka_unit_test(test_v2_local_is_local),
	    cmocka_unit_test(test_v2_proxy_unspec_is_local),
	    cmocka_unit_test(test_v2_every_truncation_is_incomplete),
	    cmocka_unit_test(test_v2_longest_header_parses),
	    cmocka_unit_test(test_v2_bad_signature_is_invalid_at_first_wrong_byte),
	    cmocka_unit_test(test_v2_wrong_version_or_command_is_invalid),
	    cmocka_unit_test(test_v2_udp_unix_and_unknown_families_are_invalid),
	    cmocka_unit_test(test_v2_length_shorter_than_address_block_is_invalid),
	    cmocka_unit_test(test_v2_malformed_tlv_is_invalid),
	    cmocka_unit_test(test_build_v1_tcp4_is_the_spec_example),
	    cmocka_unit_test(test_build_v2_tcp4_is_the_hand_built_vector),
	    cmocka_unit_test(test_build_parse_round_trips_both_versions_both_families),
	    cmocka_unit_test(test_build_mixed_families_maps_ipv4_into_ipv6),
	    cmocka_unit_test(test_build_without_inet_endpoints_is_unknown_or_local),
	    cmocka_unit_test(test_build_returns_zero_when_cap_too_small),
	    cmocka_unit_test(test_build_unknown_version_returns_zero),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
