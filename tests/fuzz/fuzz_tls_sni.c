/* libFuzzer target for sp_tls_sni_parse. Beyond "no crash" it checks the
 * incremental contract (over growing prefixes: INCOMPLETE, then INVALID for
 * good or OK for good with the same name), that a name is a lower-case DNS
 * name that fits cap, and that cap is honoured to the byte.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I. \
 *       shard/tls_sni.c tests/fuzz/fuzz_tls_sni.c -o /tmp/fuzz_sni
 *   /tmp/fuzz_sni -max_total_time=60 tests/fuzz/corpus/tls_sni
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "shard/tls_sni.h"

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond))                                                                       \
			__builtin_trap();                                                          \
	} while (0)

#define CAP 256

static bool dns_name_ok(const char *s)
{
	size_t label = 0;
	for (; *s; s++) {
		if (*s == '.') {
			if (!label)
				return false;
			label = 0;
		} else if ((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-' ||
			   *s == '_') {
			if (++label > 63)
				return false;
		} else {
			return false;
		}
	}
	return label > 0;
}

/* Parse from an exactly-sized copy, so ASan sees any over-read. */
static sp_parse_t parse(const uint8_t *data, size_t size, char *sni, size_t cap)
{
	uint8_t *copy = malloc(size ? size : 1);
	CHECK(copy);
	memcpy(copy, data, size);
	sp_parse_t st = sp_tls_sni_parse(copy, size, sni, cap);
	free(copy);
	return st;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char sni[CAP], other[CAP];

	memset(sni, 0x5a, sizeof(sni));
	sp_parse_t st = parse(data, size, sni, sizeof(sni));
	CHECK(st == SP_PARSE_OK || st == SP_PARSE_INVALID || st == SP_PARSE_INCOMPLETE);
	CHECK(memchr(sni, '\0', sizeof(sni)));
	if (st != SP_PARSE_OK)
		CHECK(sni[0] == '\0');
	if (size && data[0] != 22)
		CHECK(st == SP_PARSE_INVALID);

	if (st == SP_PARSE_OK && sni[0]) {
		size_t n = strlen(sni);
		CHECK(n <= 253 && dns_name_ok(sni));
		/* exactly n + 1 bytes of cap are enough, and needed */
		memset(other, 0x5a, sizeof(other));
		CHECK(parse(data, size, other, n + 1) == SP_PARSE_OK && !strcmp(other, sni));
		CHECK(other[n + 1] == 0x5a);
		CHECK(parse(data, size, other, n) == SP_PARSE_INVALID);
	}

	size_t step = size <= 256 ? 1 : size / 64;
	for (size_t k = 0; k < size; k += step) {
		sp_parse_t p = parse(data, k, other, sizeof(other));
		if (p == SP_PARSE_OK)
			CHECK(st == SP_PARSE_OK && !strcmp(other, sni));
		else if (p == SP_PARSE_INVALID)
			CHECK(st == SP_PARSE_INVALID);
	}
	return 0;
}
