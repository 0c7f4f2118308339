/* PROXY protocol v1/v2 (HAProxy doc/proxy-protocol.txt): a strict parser that
 * calls any prefix of a valid header INCOMPLETE and anything else INVALID as
 * early as the bytes allow, and the matching encoder. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "shard/proxyproto.h"

static const uint8_t v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
				   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

#define V2_HDR 16 /* signature, ver_cmd, fam, len */
#define V2_VERSION 0x20
#define V2_CMD_LOCAL 0x0
#define V2_CMD_PROXY 0x1
#define V2_UNSPEC 0x00
#define V2_TCP4 0x11
#define V2_TCP6 0x21
#define V2_LEN4 12 /* 2 * 4 + 2 * 2 */
#define V2_LEN6 36 /* 2 * 16 + 2 * 2 */

/* Longest text inet_pton(AF_INET6) takes: six groups and a dotted quad. */
#define V1_ADDR_MAX 45

/* What a successful parse hands back; copied out only on SP_PARSE_OK. */
struct pp_hdr {
	size_t hlen;
	bool local;
	struct sockaddr_storage src, dst;
};

static void set_inet(struct sockaddr_storage *ss, int family, const void *addr, uint16_t nport)
{
	memset(ss, 0, sizeof(*ss));
	if (family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;
		sin->sin_family = AF_INET;
		sin->sin_port = nport;
		memcpy(&sin->sin_addr, addr, 4);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = nport;
		memcpy(&sin6->sin6_addr, addr, 16);
	}
}

/* ---- version 1 ----
 *
 * The line is read left to right. When the bytes run out, the element being
 * read tells how many bytes at least would complete it (need), and the
 * grammar how many at least must follow it (tail); the prefix is INCOMPLETE
 * only if a valid line of at most 107 bytes can still start with it. */

struct v1_cur {
	const char *s;
	size_t n; /* bytes readable: at most SP_PROXYPROTO_V1_MAX */
	size_t pos;
};

static sp_parse_t v1_more(const struct v1_cur *c, size_t need, size_t tail)
{
	return c->n + need + tail <= SP_PROXYPROTO_V1_MAX ? SP_PARSE_INCOMPLETE : SP_PARSE_INVALID;
}

static bool v1_addr_char(int family, char ch)
{
	if ((ch >= '0' && ch <= '9') || ch == '.')
		return true;
	return family == AF_INET6 &&
	       ((ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F') || ch == ':');
}

/* Shortest suffix that makes the partial address text valid for inet_pton,
 * or -EINVAL if none can. These suffixes are enough: a valid prefix ends inside a
 * group (close it, add one, or compress), after ':' (add a group or make it
 * "::"), or inside a dotted quad (finish the quad); they go shortest first. */
static int v1_addr_completion(int family, const char *text, size_t len)
{
	static const char *const tails[] = {
	    "", "0", ":", ":0", "::", ".0", "0.0", ".0.0", "0.0.0", ".0.0.0", "0.0.0.0",
	};
	char tmp[V1_ADDR_MAX + 16];
	uint8_t bin[16];

	for (size_t i = 0; i < sizeof(tails) / sizeof(tails[0]); i++) {
		size_t tl = strlen(tails[i]);
		memcpy(tmp, text, len);
		memcpy(tmp + len, tails[i], tl + 1);
		if (inet_pton(family, tmp, bin) == 1)
			return (int)tl;
	}
	return -EINVAL;
}

/* An address, up to (not including) the next space. */
static sp_parse_t v1_addr(struct v1_cur *c, int family, uint8_t *bin, size_t *need)
{
	size_t start = c->pos;
	char tmp[V1_ADDR_MAX + 1];

	while (c->pos < c->n && v1_addr_char(family, c->s[c->pos])) {
		if (c->pos - start == V1_ADDR_MAX)
			return SP_PARSE_INVALID;
		c->pos++;
	}
	size_t len = c->pos - start;
	if (c->pos == c->n) {
		int more = len ? v1_addr_completion(family, c->s + start, len)
			       : (family == AF_INET ? 7 : 2); /* "0.0.0.0", "::" */
		if (more < 0)
			return SP_PARSE_INVALID;
		*need = (size_t)more;
		return SP_PARSE_INCOMPLETE;
	}
	memcpy(tmp, c->s + start, len);
	tmp[len] = '\0';
	return inet_pton(family, tmp, bin) == 1 ? SP_PARSE_OK : SP_PARSE_INVALID;
}

/* A port: decimal 0..65535, no sign, no heading zero. */
static sp_parse_t v1_port(struct v1_cur *c, uint16_t *port, size_t *need)
{
	size_t start = c->pos;
	unsigned long v = 0;

	while (c->pos < c->n && c->s[c->pos] >= '0' && c->s[c->pos] <= '9') {
		if (c->pos > start && v == 0)
			return SP_PARSE_INVALID; /* "0" followed by a digit */
		v = v * 10 + (unsigned long)(c->s[c->pos] - '0');
		if (v > 65535)
			return SP_PARSE_INVALID;
		c->pos++;
	}
	if (c->pos == c->n) {
		*need = c->pos == start ? 1 : 0;
		return SP_PARSE_INCOMPLETE;
	}
	if (c->pos == start)
		return SP_PARSE_INVALID;
	*port = htons((uint16_t)v);
	return SP_PARSE_OK;
}

/* The literal lit, or a prefix of it at the end of the bytes. */
static sp_parse_t v1_lit(struct v1_cur *c, const char *lit, size_t *need)
{
	size_t l = strlen(lit), avail = c->n - c->pos;
	size_t k = avail < l ? avail : l;

	if (memcmp(c->s + c->pos, lit, k) != 0)
		return SP_PARSE_INVALID;
	c->pos += k;
	*need = l - k;
	return k == l ? SP_PARSE_OK : SP_PARSE_INCOMPLETE;
}

/* After "UNKNOWN": CRLF at once, or a space and printable text up to CRLF,
 * which the spec says the receiver ignores. */
static sp_parse_t v1_unknown(struct v1_cur *c, size_t *need)
{
	if (c->pos < c->n && c->s[c->pos] == ' ') {
		c->pos++;
		while (c->pos < c->n && c->s[c->pos] != '\r') {
			if (c->s[c->pos] < 0x20 || c->s[c->pos] > 0x7e)
				return SP_PARSE_INVALID;
			c->pos++;
		}
	}
	return v1_lit(c, "\r\n", need);
}

static sp_parse_t v1_parse(const uint8_t *buf, size_t len, struct pp_hdr *h)
{
	struct v1_cur c = {(const char *)buf,
			   len < SP_PROXYPROTO_V1_MAX ? len : SP_PROXYPROTO_V1_MAX, 0};
	uint8_t sa[16], da[16];
	uint16_t sp = 0, dp = 0;
	size_t need = 0, minaddr;
	sp_parse_t st;
	int family;

	/* "PROXY UNKNOWN\r\n" is the shortest line (15): no bound on the way */
	st = v1_lit(&c, "PROXY ", &need);
	if (st != SP_PARSE_OK)
		return st;
	if (c.pos == c.n)
		return SP_PARSE_INCOMPLETE;
	if (c.s[c.pos] == 'U') {
		st = v1_lit(&c, "UNKNOWN", &need);
		if (st == SP_PARSE_OK)
			st = v1_unknown(&c, &need);
		if (st == SP_PARSE_INCOMPLETE)
			return v1_more(&c, need, 0);
		if (st == SP_PARSE_OK) {
			h->hlen = c.pos;
			h->local = true;
		}
		return st;
	}
	st = v1_lit(&c, "TCP", &need);
	if (st != SP_PARSE_OK)
		return st;
	if (c.pos == c.n)
		return SP_PARSE_INCOMPLETE;
	if (c.s[c.pos] == '4')
		family = AF_INET;
	else if (c.s[c.pos] == '6')
		family = AF_INET6;
	else
		return SP_PARSE_INVALID;
	c.pos++;
	minaddr = family == AF_INET ? 7 : 2;

	/* each step, with the fewest bytes any valid line needs after it */
#define V1_STEP(call, tail)                                                                        \
	do {                                                                                       \
		st = (call);                                                                       \
		if (st == SP_PARSE_INCOMPLETE)                                                     \
			return v1_more(&c, need, (tail));                                          \
		if (st != SP_PARSE_OK)                                                             \
			return st;                                                                 \
	} while (0)
	V1_STEP(v1_lit(&c, " ", &need), minaddr + 1 + minaddr + 6);
	V1_STEP(v1_addr(&c, family, sa, &need), 1 + minaddr + 6);
	V1_STEP(v1_lit(&c, " ", &need), minaddr + 6);
	V1_STEP(v1_addr(&c, family, da, &need), 6);
	V1_STEP(v1_lit(&c, " ", &need), 5);
	V1_STEP(v1_port(&c, &sp, &need), 4);
	V1_STEP(v1_lit(&c, " ", &need), 3);
	V1_STEP(v1_port(&c, &dp, &need), 2);
	V1_STEP(v1_lit(&c, "\r\n", &need), 0);
#undef V1_STEP

	h->hlen = c.pos;
	set_inet(&h->src, family, sa, sp);
	set_inet(&h->dst, family, da, dp);
	return SP_PARSE_OK;
}

/* ---- version 2 ---- */

/* TLVs must tile the rest of the header exactly: type, 16-bit length, value. */
static bool v2_tlvs_ok(const uint8_t *p, size_t len)
{
	while (len) {
		if (len < 3)
			return false;
		size_t l = 3 + ((size_t)p[1] << 8 | p[2]);
		if (l > len)
			return false;
		p += l;
		len -= l;
	}
	return true;
}

static sp_parse_t v2_parse(const uint8_t *buf, size_t len, struct pp_hdr *h)
{
	size_t addrlen, alen;
	uint8_t cmd, fam;

	if (memcmp(buf, v2_sig, len < sizeof(v2_sig) ? len : sizeof(v2_sig)) != 0)
		return SP_PARSE_INVALID;
	if (len <= 12)
		return SP_PARSE_INCOMPLETE;
	cmd = buf[12] & 0x0f;
	if ((buf[12] & 0xf0) != V2_VERSION || cmd > V2_CMD_PROXY)
		return SP_PARSE_INVALID;
	if (len <= 13)
		return SP_PARSE_INCOMPLETE;
	fam = buf[13];
	switch (fam) {
	case V2_UNSPEC:
		addrlen = 0;
		break;
	case V2_TCP4:
		addrlen = V2_LEN4;
		break;
	case V2_TCP6:
		addrlen = V2_LEN6;
		break;
	case 0x12: /* UDP4 */
	case 0x22: /* UDP6 */
	case 0x31: /* UNIX stream */
	case 0x32: /* UNIX dgram */
		/* a LOCAL header's family is ignored; a TCP relay has no use
		 * for the addresses of anything else */
		if (cmd == V2_CMD_LOCAL) {
			addrlen = 0;
			break;
		}
		return SP_PARSE_INVALID;
	default:
		return SP_PARSE_INVALID;
	}
	if (len < V2_HDR)
		return SP_PARSE_INCOMPLETE;
	alen = (size_t)buf[14] << 8 | buf[15];
	if (alen > SP_PROXYPROTO_V2_MAX - V2_HDR || alen < addrlen)
		return SP_PARSE_INVALID;
	if (len < V2_HDR + alen)
		return SP_PARSE_INCOMPLETE;

	h->hlen = V2_HDR + alen;
	if (cmd == V2_CMD_LOCAL || fam == V2_UNSPEC) {
		/* keep the real endpoints; whatever follows is not ours to read */
		h->local = true;
		return SP_PARSE_OK;
	}
	if (!v2_tlvs_ok(buf + V2_HDR + addrlen, alen - addrlen))
		return SP_PARSE_INVALID;
	const uint8_t *a = buf + V2_HDR;
	uint16_t sp, dp;
	if (fam == V2_TCP4) {
		memcpy(&sp, a + 8, 2);
		memcpy(&dp, a + 10, 2);
		set_inet(&h->src, AF_INET, a, sp);
		set_inet(&h->dst, AF_INET, a + 4, dp);
	} else {
		memcpy(&sp, a + 32, 2);
		memcpy(&dp, a + 34, 2);
		set_inet(&h->src, AF_INET6, a, sp);
		set_inet(&h->dst, AF_INET6, a + 16, dp);
	}
	return SP_PARSE_OK;
}

sp_parse_t sp_proxyproto_parse(const uint8_t *buf, size_t len, size_t *hlen,
			       struct sockaddr_storage *src, struct sockaddr_storage *dst,
			       bool *local)
{
	struct pp_hdr h;
	sp_parse_t st;

	memset(&h, 0, sizeof(h));
	if (len == 0)
		st = SP_PARSE_INCOMPLETE;
	else if (buf[0] == 'P')
		st = v1_parse(buf, len, &h);
	else if (buf[0] == v2_sig[0])
		st = v2_parse(buf, len, &h);
	else
		st = SP_PARSE_INVALID;
	if (st != SP_PARSE_OK)
		memset(&h, 0, sizeof(h));
	if (hlen)
		*hlen = h.hlen;
	if (src)
		*src = h.src;
	if (dst)
		*dst = h.dst;
	if (local)
		*local = h.local;
	return st;
}

/* ---- encoder ---- */

/* Both endpoints in one family: AF_INET, AF_INET6 (a lone IPv4 end mapped to
 * ::ffff:a.b.c.d), or AF_UNSPEC when either is not an inet address. */
struct pp_ends {
	int family;
	uint8_t src[16], dst[16];
	uint16_t sport, dport; /* network order */
};

static int end_of(const struct sockaddr *sa, uint8_t *addr, uint16_t *port)
{
	if (!sa)
		return AF_UNSPEC;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
		memcpy(addr, &sin->sin_addr, 4);
		*port = sin->sin_port;
		return AF_INET;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
		memcpy(addr, &sin6->sin6_addr, 16);
		*port = sin6->sin6_port;
		return AF_INET6;
	}
	return AF_UNSPEC;
}

static void map_v6(uint8_t *addr)
{
	memmove(addr + 12, addr, 4);
	memset(addr, 0, 10);
	addr[10] = addr[11] = 0xff;
}

static void ends_pair(const struct sockaddr *src, const struct sockaddr *dst, struct pp_ends *e)
{
	memset(e, 0, sizeof(*e));
	int sf = end_of(src, e->src, &e->sport);
	int df = end_of(dst, e->dst, &e->dport);

	if (sf == AF_UNSPEC || df == AF_UNSPEC) {
		e->family = AF_UNSPEC;
		return;
	}
	if (sf != df) {
		if (sf == AF_INET)
			map_v6(e->src);
		else
			map_v6(e->dst);
	}
	e->family = sf == df ? sf : AF_INET6;
}

static size_t build_v1(const struct pp_ends *e, uint8_t *out, size_t cap)
{
	char line[SP_PROXYPROTO_V1_MAX + 1], s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
	int n;

	if (e->family == AF_UNSPEC) {
		n = snprintf(line, sizeof(line), "PROXY UNKNOWN\r\n");
	} else {
		if (!inet_ntop(e->family, e->src, s, sizeof(s)) ||
		    !inet_ntop(e->family, e->dst, d, sizeof(d)))
			return 0;
		n = snprintf(line, sizeof(line), "PROXY TCP%c %s %s %u %u\r\n",
			     e->family == AF_INET ? '4' : '6', s, d, ntohs(e->sport),
			     ntohs(e->dport));
	}
	if (n < 0 || (size_t)n >= sizeof(line) || (size_t)n > cap)
		return 0;
	memcpy(out, line, (size_t)n);
	return (size_t)n;
}

static size_t build_v2(const struct pp_ends *e, uint8_t *out, size_t cap)
{
	size_t alen = e->family == AF_INET ? V2_LEN4 : e->family == AF_INET6 ? V2_LEN6 : 0;
	size_t al = e->family == AF_INET ? 4 : 16;

	if (cap < V2_HDR + alen)
		return 0;
	memcpy(out, v2_sig, sizeof(v2_sig));
	out[14] = (uint8_t)(alen >> 8);
	out[15] = (uint8_t)alen;
	if (e->family == AF_UNSPEC) {
		out[12] = V2_VERSION | V2_CMD_LOCAL;
		out[13] = V2_UNSPEC;
		return V2_HDR;
	}
	out[12] = V2_VERSION | V2_CMD_PROXY;
	out[13] = e->family == AF_INET ? V2_TCP4 : V2_TCP6;
	memcpy(out + V2_HDR, e->src, al);
	memcpy(out + V2_HDR + al, e->dst, al);
	memcpy(out + V2_HDR + 2 * al, &e->sport, 2);
	memcpy(out + V2_HDR + 2 * al + 2, &e->dport, 2);
	return V2_HDR + alen;
}

size_t sp_proxyproto_build(int version, const struct sockaddr *src, const struct sockaddr *dst,
			   uint8_t *out, size_t cap)
{
	struct pp_ends e;

	if (!out || (version != 1 && version != 2))
		return 0;
	ends_pair(src, dst, &e);
	return version == 1 ? build_v1(&e, out, cap) : build_v2(&e, out, cap);
}
