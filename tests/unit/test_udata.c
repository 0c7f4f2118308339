/* user_data packing: op, slot and generation survive the round trip, and a
 * stale generation is distinguishable. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "runtime/udata.h"

static void test_udata_round_trips_op_slot_gen(void **state)
{
	(void)state;
	uint64_t ud = sp_udata_pack(7, 123456, 0xabcdef);
	assert_int_equal(sp_udata_op(ud), 7);
	assert_int_equal(sp_udata_slot(ud), 123456);
	assert_int_equal(sp_udata_gen(ud), 0xabcdef);
}

static void test_udata_extremes_do_not_bleed_into_each_other(void **state)
{
	(void)state;
	uint64_t ud = sp_udata_pack(255, UINT32_MAX, SP_UDATA_GEN_MASK);
	assert_int_equal(sp_udata_op(ud), 255);
	assert_int_equal(sp_udata_slot(ud), UINT32_MAX);
	assert_int_equal(sp_udata_gen(ud), SP_UDATA_GEN_MASK);
	ud = sp_udata_pack(0, 0, 0);
	assert_int_equal(ud, 0);
}

static void test_udata_generation_wraps_at_24_bits(void **state)
{
	(void)state;
	uint64_t ud = sp_udata_pack(1, 5, SP_UDATA_GEN_MASK + 1u);
	assert_int_equal(sp_udata_gen(ud), 0);
	assert_int_equal(sp_udata_slot(ud), 5);
	assert_int_equal(sp_udata_op(ud), 1);
}

static void test_udata_next_generation_differs(void **state)
{
	(void)state;
	for (uint32_t g = 0; g < 1000; g++)
		assert_int_not_equal(sp_udata_pack(3, 9, g), sp_udata_pack(3, 9, g + 1));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_udata_round_trips_op_slot_gen),
		cmocka_unit_test(test_udata_extremes_do_not_bleed_into_each_other),
		cmocka_unit_test(test_udata_generation_wraps_at_24_bits),
		cmocka_unit_test(test_udata_next_generation_differs),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
