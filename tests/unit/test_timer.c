/* The shard timer heap: fires in deadline order, re-arms and disarms in
 * place, and is bounded by its capacity. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <errno.h>
#include <stdlib.h>

#include "runtime/timer.h"

static uint64_t fired[64];
static unsigned nfired;

static void record(sp_timer_t *t, void *arg)
{
	(void)arg;
	fired[nfired++] = t->deadline;
}

static void test_timers_fire_in_deadline_order(void **state)
{
	(void)state;
	sp_timers_t ts;
	sp_timer_t t[8];
	uint64_t dl[8] = {50, 10, 70, 30, 20, 80, 60, 40};
	assert_int_equal(sp_timers_init(&ts, 8), 0);
	nfired = 0;
	for (int i = 0; i < 8; i++) {
		sp_timer_setup(&t[i], record, NULL);
		assert_int_equal(sp_timer_arm(&ts, &t[i], dl[i]), 0);
	}
	assert_int_equal(sp_timers_next(&ts), 10);
	assert_int_equal(sp_timers_run(&ts, 45), 4);
	assert_int_equal(sp_timers_run(&ts, 1000), 4);
	for (unsigned i = 0; i < 8; i++)
		assert_int_equal(fired[i], (i + 1) * 10);
	assert_int_equal(sp_timers_next(&ts), UINT64_MAX);
	sp_timers_free(&ts);
}

static void test_timer_disarmed_never_fires(void **state)
{
	(void)state;
	sp_timers_t ts;
	sp_timer_t a, b, c;
	assert_int_equal(sp_timers_init(&ts, 4), 0);
	nfired = 0;
	sp_timer_setup(&a, record, NULL);
	sp_timer_setup(&b, record, NULL);
	sp_timer_setup(&c, record, NULL);
	sp_timer_arm(&ts, &a, 10);
	sp_timer_arm(&ts, &b, 20);
	sp_timer_arm(&ts, &c, 30);
	sp_timer_disarm(&ts, &a);
	sp_timer_disarm(&ts, &a); /* twice is harmless */
	assert_false(sp_timer_armed(&a));
	assert_int_equal(sp_timers_run(&ts, 100), 2);
	assert_int_equal(fired[0], 20);
	assert_int_equal(fired[1], 30);
	sp_timers_free(&ts);
}

static void test_timer_rearm_moves_it_both_ways(void **state)
{
	(void)state;
	sp_timers_t ts;
	sp_timer_t a, b;
	assert_int_equal(sp_timers_init(&ts, 4), 0);
	nfired = 0;
	sp_timer_setup(&a, record, NULL);
	sp_timer_setup(&b, record, NULL);
	sp_timer_arm(&ts, &a, 10);
	sp_timer_arm(&ts, &b, 20);
	sp_timer_arm(&ts, &a, 30); /* later */
	assert_int_equal(sp_timers_next(&ts), 20);
	sp_timer_arm(&ts, &a, 5); /* earlier */
	assert_int_equal(sp_timers_next(&ts), 5);
	assert_int_equal(ts.n, 2);
	sp_timers_free(&ts);
}

static void test_timer_arm_past_capacity_fails(void **state)
{
	(void)state;
	sp_timers_t ts;
	sp_timer_t a, b;
	assert_int_equal(sp_timers_init(&ts, 1), 0);
	sp_timer_setup(&a, record, NULL);
	sp_timer_setup(&b, record, NULL);
	assert_int_equal(sp_timer_arm(&ts, &a, 1), 0);
	assert_int_equal(sp_timer_arm(&ts, &b, 2), -ENOSPC);
	sp_timers_free(&ts);
}

static sp_timers_t *self_ts;
static void rearm_self(sp_timer_t *t, void *arg)
{
	unsigned *count = arg;
	if (++*count < 3)
		sp_timer_arm(self_ts, t, t->deadline + 10);
}

static void test_timer_callback_may_rearm_itself(void **state)
{
	(void)state;
	sp_timers_t ts;
	sp_timer_t a;
	unsigned count = 0;
	assert_int_equal(sp_timers_init(&ts, 2), 0);
	self_ts = &ts;
	sp_timer_setup(&a, rearm_self, &count);
	sp_timer_arm(&ts, &a, 10);
	sp_timers_run(&ts, 15);
	assert_int_equal(count, 1);
	assert_int_equal(sp_timers_next(&ts), 20);
	sp_timers_run(&ts, 100);
	assert_int_equal(count, 3);
	assert_false(sp_timer_armed(&a));
	sp_timers_free(&ts);
}

static void test_timers_random_arm_disarm_keep_heap_order(void **state)
{
	(void)state;
	enum { N = 500 };
	sp_timers_t ts;
	static sp_timer_t t[N];
	srand(42);
	assert_int_equal(sp_timers_init(&ts, N), 0);
	for (int i = 0; i < N; i++) {
		sp_timer_setup(&t[i], record, NULL);
		sp_timer_arm(&ts, &t[i], (uint64_t)(rand() % 100000));
	}
	for (int i = 0; i < N; i += 3)
		sp_timer_disarm(&ts, &t[i]);
	for (int i = 1; i < N; i += 7)
		sp_timer_arm(&ts, &t[i], (uint64_t)(rand() % 100000));
	uint64_t last = 0;
	while (ts.n) {
		uint64_t d = sp_timers_next(&ts);
		assert_true(d >= last);
		last = d;
		sp_timer_disarm(&ts, ts.heap[0]);
	}
	sp_timers_free(&ts);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_timers_fire_in_deadline_order),
		cmocka_unit_test(test_timer_disarmed_never_fires),
		cmocka_unit_test(test_timer_rearm_moves_it_both_ways),
		cmocka_unit_test(test_timer_arm_past_capacity_fails),
		cmocka_unit_test(test_timer_callback_may_rearm_itself),
		cmocka_unit_test(test_timers_random_arm_disarm_keep_heap_order),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
