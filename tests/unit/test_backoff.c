/* backoff: a shard that keeps dying is restarted at once, then after 100 ms
 * doubling per quick death in a row, never more than 5 s, for any number of
 * deaths (the old `100 << (crashes - 1)` overflowed after 57 and was
 * undefined from 65 on). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdint.h>

#include "proxy/backoff.h"

static void test_backoff_first_restart_is_immediate(void **state)
{
	(void)state;
	assert_int_equal(sp_backoff_ms(0), 0);
}

static void test_backoff_doubles_from_100ms(void **state)
{
	(void)state;
	assert_int_equal(sp_backoff_ms(1), 100);
	assert_int_equal(sp_backoff_ms(2), 200);
	assert_int_equal(sp_backoff_ms(3), 400);
	assert_int_equal(sp_backoff_ms(6), 3200);
}

static void test_backoff_is_capped_at_5s_for_every_crash_count(void **state)
{
	(void)state;
	uint64_t prev = 0;
	/* Past 64 a shift by crashes - 1 is undefined (UBSan stops here). */
	for (uint32_t c = 0; c < 300; c++) {
		uint64_t d = sp_backoff_ms(c);
		assert_true(d <= SP_BACKOFF_MAX_MS);
		assert_true(d >= prev);
		prev = d;
	}
	assert_int_equal(sp_backoff_ms(7), SP_BACKOFF_MAX_MS);
	assert_int_equal(sp_backoff_ms(58), SP_BACKOFF_MAX_MS);
	assert_int_equal(sp_backoff_ms(65), SP_BACKOFF_MAX_MS);
	assert_int_equal(sp_backoff_ms(UINT32_MAX), SP_BACKOFF_MAX_MS);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_backoff_first_restart_is_immediate),
	    cmocka_unit_test(test_backoff_doubles_from_100ms),
	    cmocka_unit_test(test_backoff_is_capped_at_5s_for_every_crash_count),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
