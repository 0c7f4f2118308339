/* Balancers: weights hold over many picks, backups wait their turn, tried
 * servers are skipped, source_hash is sticky and consistent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <string.h>

#include "shard/balance.h"

static sp_server_t servers[8];
static sp_upstream_t up;

static void make_upstream(sp_balance_t bal, unsigned n, const unsigned *weights,
			  const bool *backup)
{
	memset(&up, 0, sizeof(up));
	memset(servers, 0, sizeof(servers));
	for (unsigned i = 0; i < n; i++) {
		servers[i].weight = weights ? weights[i] : 1;
		servers[i].backup = backup ? backup[i] : false;
	}
	up.balance = bal;
	up.servers = servers;
	up.nservers = n;
}

static void test_round_robin_respects_weights_over_10000_picks(void **state)
{
	(void)state;
	unsigned w[3] = {5, 3, 2}, count[3] = {0};
	sp_balancer_t b;
	sp_server_set_t none = {0};
	make_upstream(SP_BALANCE_ROUND_ROBIN, 3, w, NULL);
	assert_int_equal(sp_balancer_init(&b, &up, 1), 0);
	for (int i = 0; i < 10000; i++)
		count[sp_balancer_pick(&b, 0, &none)]++;
	assert_int_equal(count[0], 5000);
	assert_int_equal(count[1], 3000);
	assert_int_equal(count[2], 2000);
	sp_balancer_free(&b);
}

static void test_round_robin_is_smooth_not_bursty(void **state)
{
	(void)state;
	unsigned w[2] = {2, 1};
	sp_balancer_t b;
	sp_server_set_t none = {0};
	make_upstream(SP_BALANCE_ROUND_ROBIN, 2, w, NULL);
	sp_balancer_init(&b, &up, 1);
	/* nginx's smooth WRR with weights 2:1 gives a, b, a, a, b, a ... */
	int seq[6];
	for (int i = 0; i < 6; i++)
		seq[i] = sp_balancer_pick(&b, 0, &none);
	int run = 0, maxrun = 0;
	for (int i = 0; i < 6; i++) {
		run = (i && seq[i] == seq[i - 1]) ? run + 1 : 1;
		if (run > maxrun)
			maxrun = run;
	}
	assert_true(maxrun <= 2);
	sp_balancer_free(&b);
}

static void test_pick_skips_tried_servers_and_fails_when_all_tried(void **state)
{
	(void)state;
	sp_balancer_t b;
	sp_server_set_t tried = {0};
	make_upstream(SP_BALANCE_ROUND_ROBIN, 3, NULL, NULL);
	sp_balancer_init(&b, &up, 1);
	for (int i = 0; i < 3; i++) {
		int s = sp_balancer_pick(&b, 0, &tried);
		assert_true(s >= 0);
		assert_false(sp_server_set_has(&tried, (unsigned)s));
		sp_server_set_add(&tried, (unsigned)s);
	}
	assert_int_equal(sp_balancer_pick(&b, 0, &tried), -1);
	sp_balancer_free(&b);
}

static void test_backup_used_only_when_no_primary_is_eligible(void **state)
{
	(void)state;
	bool backup[3] = {false, false, true};
	sp_balancer_t b;
	sp_server_set_t tried = {0};
	make_upstream(SP_BALANCE_ROUND_ROBIN, 3, NULL, backup);
	sp_balancer_init(&b, &up, 1);
	for (int i = 0; i < 100; i++)
		assert_int_not_equal(sp_balancer_pick(&b, 0, &tried), 2);
	sp_server_set_add(&tried, 0);
	sp_server_set_add(&tried, 1);
	assert_int_equal(sp_balancer_pick(&b, 0, &tried), 2);
	sp_balancer_free(&b);
}

static void test_least_conn_picks_the_least_loaded_by_weight(void **state)
{
	(void)state;
	unsigned w[3] = {1, 1, 4};
	sp_balancer_t b;
	sp_server_set_t none = {0};
	make_upstream(SP_BALANCE_LEAST_CONN, 3, w, NULL);
	sp_balancer_init(&b, &up, 1);
	for (int i = 0; i < 3; i++)
		sp_balancer_connected(&b, 0);
	for (int i = 0; i < 2; i++)
		sp_balancer_connected(&b, 1);
	for (int i = 0; i < 4; i++)
		sp_balancer_connected(&b, 2); /* 4/4 = 1 per weight: lightest */
	assert_int_equal(sp_balancer_pick(&b, 0, &none), 2);
	sp_balancer_released(&b, 0);
	sp_balancer_released(&b, 0);
	sp_balancer_released(&b, 0); /* server 0 now idle */
	assert_int_equal(sp_balancer_pick(&b, 0, &none), 0);
	sp_balancer_free(&b);
}

static uint64_t client(unsigned i)
{
	struct sockaddr_in a = {.sin_family = AF_INET};
	a.sin_addr.s_addr = htonl(0x0a000000u + i);
	return sp_hash_addr((struct sockaddr *)&a);
}

static void test_source_hash_is_sticky_per_client(void **state)
{
	(void)state;
	sp_balancer_t b;
	sp_server_set_t none = {0};
	make_upstream(SP_BALANCE_SOURCE_HASH, 4, NULL, NULL);
	sp_balancer_init(&b, &up, 1);
	for (unsigned c = 0; c < 200; c++) {
		int first = sp_balancer_pick(&b, client(c), &none);
		for (int k = 0; k < 5; k++)
			assert_int_equal(sp_balancer_pick(&b, client(c), &none), first);
	}
	sp_balancer_free(&b);
}

static void test_source_hash_removing_a_server_moves_only_its_clients(void **state)
{
	(void)state;
	sp_balancer_t b;
	sp_server_set_t none = {0}, without3 = {0};
	int before[2000];
	unsigned on3 = 0;
	make_upstream(SP_BALANCE_SOURCE_HASH, 4, NULL, NULL);
	sp_balancer_init(&b, &up, 1);
	sp_server_set_add(&without3, 3);
	for (unsigned c = 0; c < 2000; c++) {
		before[c] = sp_balancer_pick(&b, client(c), &none);
		on3 += before[c] == 3;
	}
	assert_true(on3 > 350 && on3 < 650); /* ~1/4 each */
	for (unsigned c = 0; c < 2000; c++) {
		int after = sp_balancer_pick(&b, client(c), &without3);
		if (before[c] != 3)
			assert_int_equal(after, before[c]);
	}
	sp_balancer_free(&b);
}

static void test_source_hash_respects_weights(void **state)
{
	(void)state;
	unsigned w[2] = {3, 1}, count[2] = {0};
	sp_balancer_t b;
	sp_server_set_t none = {0};
	make_upstream(SP_BALANCE_SOURCE_HASH, 2, w, NULL);
	sp_balancer_init(&b, &up, 1);
	for (unsigned c = 0; c < 10000; c++)
		count[sp_balancer_pick(&b, client(c), &none)]++;
	assert_true(count[0] > 7000 && count[0] < 8000);
	sp_balancer_free(&b);
}

static void test_random_two_avoids_the_loaded_server(void **state)
{
	(void)state;
	unsigned count[2] = {0};
	sp_balancer_t b;
	sp_server_set_t none = {0};
	make_upstream(SP_BALANCE_RANDOM_TWO, 2, NULL, NULL);
	sp_balancer_init(&b, &up, 7);
	for (int i = 0; i < 10; i++)
		sp_balancer_connected(&b, 0);
	for (int i = 0; i < 100; i++)
		count[sp_balancer_pick(&b, 0, &none)]++;
	assert_int_equal(count[1], 100); /* two candidates of two: always the lighter */
	sp_balancer_free(&b);
}

static void test_hash_addr_treats_v4_mapped_v6_as_v4(void **state)
{
	(void)state;
	struct sockaddr_in a4 = {.sin_family = AF_INET};
	struct sockaddr_in6 a6 = {.sin6_family = AF_INET6};
	inet_pton(AF_INET, "192.0.2.7", &a4.sin_addr);
	inet_pton(AF_INET6, "::ffff:192.0.2.7", &a6.sin6_addr);
	assert_int_equal(sp_hash_addr((struct sockaddr *)&a4), sp_hash_addr((struct sockaddr *)&a6));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_robin_respects_weights_over_10000_picks),
		cmocka_unit_test(test_round_robin_is_smooth_not_bursty),
		cmocka_unit_test(test_pick_skips_tried_servers_and_fails_when_all_tried),
		cmocka_unit_test(test_backup_used_only_when_no_primary_is_eligible),
		cmocka_unit_test(test_least_conn_picks_the_least_loaded_by_weight),
		cmocka_unit_test(test_source_hash_is_sticky_per_client),
		cmocka_unit_test(test_source_hash_removing_a_server_moves_only_its_clients),
		cmocka_unit_test(test_source_hash_respects_weights),
		cmocka_unit_test(test_random_two_avoids_the_loaded_server),
		cmocka_unit_test(test_hash_addr_treats_v4_mapped_v6_as_v4),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
