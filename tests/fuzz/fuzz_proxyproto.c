/* libFuzzer target for sp_proxyproto_parse/build. Beyond "no crash" it checks
 * the incremental contract: over growing prefixes the result is INCOMPLETE,
 * then stays INVALID, or stays OK with the same header; and whatever parses
 * builds back to the same endpoints.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I. \
 *       shard/proxyproto.c tests/fuzz/fuzz_proxyproto.c -o /tmp/fuzz_pp
 *   /tmp/fuzz_pp -dict=tests/fuzz/proxyproto.dict -max_total_time=60 \
 *       tests/fuzz/corpus/proxyproto
 */
#include <stdlib.h>
#include <string.h>

#include "shard/proxyproto.h"

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond))                                                                       \
			__builtin_trap();                                                          \
	} while (0)

struct result {
	sp_parse_t st;
	size_t hlen;
	struct sockaddr_storage src, dst;
	bool local;
};

static void parse(const uint8_t *data, size_t size, struct result *r)
{
	memset(r, 0xa5, sizeof(*r));
	r->st = sp_proxyproto_parse(data, size, &r->hlen, &r->src, &r->dst, &r->local);
}

static bool same(const struct result *a, const struct result *b)
{
	return a->st == b->st && a->hlen == b->hlen && a->local == b->local &&
	       !memcmp(&a->src, &b->src, sizeof(a->src)) &&
	       !memcmp(&a->dst, &b->dst, sizeof(a->dst));
}

/* A prefix result must agree with the whole: an OK header is OK in any
 * longer buffer, an INVALID prefix cannot become anything else. */
static void check_prefix(const uint8_t *data, size_t k, const struct result *whole)
{
	struct result p;
	uint8_t *copy = malloc(k ? k : 1); /* exact size: ASan sees over-reads */
	CHECK(copy);
	memcpy(copy, data, k);
	parse(copy, k, &p);
	free(copy);
	if (p.st == SP_PARSE_OK)
		CHECK(same(&p, whole));
	else if (p.st == SP_PARSE_INVALID)
		CHECK(whole->st == SP_PARSE_INVALID);
	else
		CHECK(whole->st != SP_PARSE_OK || k < whole->hlen);
}

static void check_round_trip(const struct result *r)
{
	for (int version = 1; version <= 2; version++) {
		uint8_t out[SP_PROXYPROTO_V2_MAX];
		struct result back;
		size_t n = sp_proxyproto_build(version, (const struct sockaddr *)&r->src,
					       (const struct sockaddr *)&r->dst, out, sizeof(out));
		CHECK(n > 0);
		parse(out, n, &back);
		CHECK(back.st == SP_PARSE_OK && back.hlen == n && !back.local);
		CHECK(!memcmp(&back.src, &r->src, sizeof(r->src)));
		CHECK(!memcmp(&back.dst, &r->dst, sizeof(r->dst)));
		CHECK(sp_proxyproto_build(version, (const struct sockaddr *)&r->src,
					  (const struct sockaddr *)&r->dst, out, n - 1) == 0);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct sockaddr_storage zero;
	struct result r;

	parse(data, size, &r);
	CHECK(r.st == SP_PARSE_OK || r.st == SP_PARSE_INVALID || r.st == SP_PARSE_INCOMPLETE);
	if (r.st == SP_PARSE_OK) {
		CHECK(r.hlen > 0 && r.hlen <= size);
		CHECK(r.hlen <= (data[0] == 'P' ? SP_PROXYPROTO_V1_MAX : SP_PROXYPROTO_V2_MAX));
		if (r.local) {
			CHECK(!memcmp(&r.src, &zero, sizeof(zero)));
			CHECK(!memcmp(&r.dst, &zero, sizeof(zero)));
		} else {
			CHECK(r.src.ss_family == r.dst.ss_family);
			CHECK(r.src.ss_family == AF_INET || r.src.ss_family == AF_INET6);
			check_round_trip(&r);
		}
	} else {
		CHECK(r.hlen == 0 && !r.local);
		CHECK(!memcmp(&r.src, &zero, sizeof(zero)) && !memcmp(&r.dst, &zero, sizeof(zero)));
	}
	/* a buffer that holds the longest header cannot still be waiting */
	if (r.st == SP_PARSE_INCOMPLETE)
		CHECK(size < (data[0] == 'P' ? SP_PROXYPROTO_V1_MAX : SP_PROXYPROTO_V2_MAX));

	/* every prefix when short, a spread of them otherwise */
	size_t step = size <= 256 ? 1 : size / 64;
	for (size_t k = 0; k < size; k += step)
		check_prefix(data, k, &r);
	if (size)
		check_prefix(data, size - 1, &r);
	return 0;
}
