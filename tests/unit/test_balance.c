/* Balancers: weights hold over many picks, backups wait their turn, tried
 * servers are skipped, source_hash is sticky and consistent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <errno.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shard/balance.h"

#define PICKS 100000

static sp_server_t servers[16];
static sp_upstream_t up;

static void make_upstream(sp_balance_t bal, unsigned n, const unsigned *weights,
			  const bool *backup)
{
	memset(&up, 0, sizeof(up));
	memset(servers, 0, sizeof(servers));
	for (unsigned i = 0; i < n; i++) {
		servers[i].weight = weights ? weights[i] : 1;
		servers[i].backup = backup ? backup[i] : false;
		snprintf(servers[i].addr.text, sizeof(servers[i].addr.text), "192.0.2.%u:80", i + 1);
	}
	up.balance = bal;
	up.servers = servers;
	up.nservers = n;
}

static uint64_t client(unsigned i)
{
	struct sockaddr_in a = {.sin_family = AF_INET};
	a.sin_addr.s_addr = htonl(0x0a000000u + i);
	return sp_hash_addr((struct sockaddr *)&a);
}

/* PICKS picks from 4 servers weighted 5:3:2:1. `hold`: sessions stay open
 * (a server's load grows with its share); otherwise each closes before the
 * next pick, so every pick sees idle servers. Returns the count per server. */
static const unsigned W4[4] = {5, 3, 2, 1};

static void distribution(sp_balance_t bal, bool hold, unsigned count[4])
{
	sp_balancer_t b;
	sp_server_set_t none = {0};
	make_upstream(bal, 4, W4, NULL);
	assert_int_equal(sp_balancer_init(&b, &up, 12345), 0);
	memset(count, 0, 4 * sizeof(*count));
	for (unsigned i = 0; i < PICKS; i++) {
		int s = sp_balancer_pick(&b, client(i), &none);
		assert_true(s >= 0 && s < 4);
		count[s]++;
		sp_balancer_connected(&b, (unsigned)s);
		if (!hold)
			sp_balancer_released(&b, (unsigned)s);
	}
	sp_balancer_free(&b);
}

/* Each count within tol (a fraction of PICKS) of its weight's share. */
static void assert_shares(const char *what, const unsigned count[4], double tol)
{
	for (unsigned i = 0; i < 4; i++) {
		double want = (double)PICKS * W4[i] / 11.0;
		if (count[i] < want - tol * PICKS || count[i] > want + tol * PICKS)
			fail_msg("%s: server %u (weight %u) got %u of %u picks, want %.0f +- %.0f", what,
				 i, W4[i], count[i], PICKS, want, tol * PICKS);
	}
}

static void test_round_robin_respects_weights_over_100000_picks(void **state)
{
	(void)state;
	unsigned count[4];
	distribution(SP_BALANCE_ROUND_ROBIN, false, count);
	assert_shares("round_robin", count, 0.00002); /* exact but for the last cycle */
	distribution(SP_BALANCE_ROUND_ROBIN, true, count);
	assert_shares("round_robin, held", count, 0.00002);
}

static void test_least_conn_respects_weights_over_100000_picks(void **state)
{
	(void)state;
	unsigned count[4];
	/* idle servers at every pick: ties go by smooth weighted round robin */
	distribution(SP_BALANCE_LEAST_CONN, false, count);
	assert_shares("least_conn, short sessions", count, 0.00002);
	/* sessions held: load per weight stays level */
	distribution(SP_BALANCE_LEAST_CONN, true, count);
	assert_shares("least_conn, held sessions", count, 0.00002);
}

static void test_random_two_respects_weights_over_100000_picks(void **state)
{
	(void)state;
	unsigned count[4];
	distribution(SP_BALANCE_RANDOM_TWO, false, count);
	assert_shares("random_two, short sessions", count, 0.01);
	distribution(SP_BALANCE_RANDOM_TWO, true, count);
	assert_shares("random_two, held sessions", count, 0.002);
}

static void test_source_hash_respects_weights_over_100000_clients(void **state)
{
	(void)state;
	unsigned count[4];
	distribution(SP_BALANCE_SOURCE_HASH, false, count);
	assert_shares("source_hash", count, 0.01);
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
	assert_int_equal(sp_balancer_pick(&b, 0, &tried), -ENOENT);
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

/* Server i of an upstream built from addrs (each "192.0.2.<addr>:80"), for
 * the client; clients that move when the list changes are counted. */
static int hash_pick(const unsigned *addrs, unsigned n, uint64_t h)
{
	sp_server_t srv[16];
	sp_upstream_t u = {.balance = SP_BALANCE_SOURCE_HASH, .servers = srv, .nservers = n};
	sp_balancer_t b;
	sp_server_set_t none = {0};
	memset(srv, 0, sizeof(srv));
	for (unsigned i = 0; i < n; i++) {
		srv[i].weight = 1;
		snprintf(srv[i].addr.text, sizeof(srv[i].addr.text), "192.0.2.%u:80", addrs[i]);
	}
	assert_int_equal(sp_balancer_init(&b, &u, 1), 0);
	int i = sp_balancer_pick(&b, h, &none);
	sp_balancer_free(&b);
	return (int)addrs[i];
}

#define CLIENTS 20000

static void test_source_hash_server_removed_from_the_list_moves_only_its_share(void **state)
{
	(void)state;
	/* a reload drops the middle one of five servers: the others shift places
	 * in the list, yet keep their clients */
	const unsigned five[5] = {1, 2, 3, 4, 5}, four[4] = {1, 2, 4, 5};
	unsigned moved = 0;
	for (unsigned c = 0; c < CLIENTS; c++) {
		int before = hash_pick(five, 5, client(c)), after = hash_pick(four, 4, client(c));
		if (before != 3)
			assert_int_equal(after, before);
		moved += after != before;
	}
	/* about 1/N of the clients, those of the removed server */
	assert_true(moved > CLIENTS / 5 - CLIENTS / 50 && moved < CLIENTS / 5 + CLIENTS / 50);
}

static void test_source_hash_server_added_takes_only_its_share(void **state)
{
	(void)state;
	const unsigned four[4] = {1, 2, 4, 5}, five[5] = {1, 2, 3, 4, 5};
	unsigned moved = 0;
	for (unsigned c = 0; c < CLIENTS; c++) {
		int before = hash_pick(four, 4, client(c)), after = hash_pick(five, 5, client(c));
		if (after != before) {
			assert_int_equal(after, 3); /* moves only to the new server */
			moved++;
		}
	}
	assert_true(moved > CLIENTS / 5 - CLIENTS / 50 && moved < CLIENTS / 5 + CLIENTS / 50);
}

static void test_backups_wait_for_every_primary_in_each_balancer(void **state)
{
	(void)state;
	const sp_balance_t algos[4] = {SP_BALANCE_ROUND_ROBIN, SP_BALANCE_LEAST_CONN,
				       SP_BALANCE_SOURCE_HASH, SP_BALANCE_RANDOM_TWO};
	unsigned w[4] = {1, 1, 3, 1};
	bool backup[4] = {false, false, true, true};
	for (unsigned a = 0; a < 4; a++) {
		sp_balancer_t b;
		sp_server_set_t none = {0}, one_down = {0}, all_down = {0};
		unsigned count[4] = {0};
		make_upstream(algos[a], 4, w, backup);
		assert_int_equal(sp_balancer_init(&b, &up, 99), 0);
		sp_server_set_add(&one_down, 0);
		sp_server_set_add(&all_down, 0);
		sp_server_set_add(&all_down, 1);
		for (unsigned i = 0; i < 1000; i++) {
			int s = sp_balancer_pick(&b, client(i), &none);
			assert_true(s == 0 || s == 1);
			assert_int_equal(sp_balancer_pick(&b, client(i), &one_down), 1);
		}
		/* no primary left: the backups, by their weights (3:1) */
		for (unsigned i = 0; i < 20000; i++)
			count[sp_balancer_pick(&b, client(i), &all_down)]++;
		if (count[0] || count[1] || count[2] < 14000 || count[2] > 16000)
			fail_msg("%s: backups got %u:%u, primaries %u:%u", sp_conf_balance_name(algos[a]),
				 count[2], count[3], count[0], count[1]);
		sp_balancer_free(&b);
	}
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


/* Run-time control (admin.socket, resolver): every balancer honours it. */
static sp_server_ctl_t ctl[16];

static void ctl_init(unsigned n)
{
	memset(ctl, 0, sizeof(ctl));
	for (unsigned i = 0; i < n; i++) {
		ctl[i].present = 1;
		ctl[i].len = sizeof(struct sockaddr_in);
		ctl[i].weight = (uint16_t)servers[i].weight;
	}
}

static const sp_balance_t ALL[] = {SP_BALANCE_ROUND_ROBIN, SP_BALANCE_LEAST_CONN,
				   SP_BALANCE_SOURCE_HASH, SP_BALANCE_RANDOM_TWO};

static void test_drained_and_disabled_servers_never_get_a_pick_in_any_balancer(void **state)
{
	(void)state;
	sp_server_set_t none = {0};
	for (size_t a = 0; a < sizeof(ALL) / sizeof(ALL[0]); a++) {
		sp_balancer_t b;
		make_upstream(ALL[a], 4, W4, NULL);
		assert_int_equal(sp_balancer_init(&b, &up, 7), 0);
		ctl_init(4);
		b.ctl = ctl;
		ctl[0].admin = SP_SRV_DRAINING;
		ctl[2].admin = SP_SRV_DISABLED;
		for (unsigned i = 0; i < 10000; i++) {
			int s = sp_balancer_pick(&b, client(i), &none);
			assert_true(s == 1 || s == 3);
		}
		/* Enabled again: back in rotation at once. */
		ctl[0].admin = SP_SRV_ENABLED;
		unsigned got0 = 0;
		for (unsigned i = 0; i < 10000; i++)
			got0 += sp_balancer_pick(&b, client(i), &none) == 0;
		assert_true(got0 > 0);
		sp_balancer_free(&b);
	}
}

static void test_every_server_drained_means_no_pick_not_a_drained_one(void **state)
{
	(void)state;
	sp_server_set_t none = {0};
	bool backup[2] = {false, true};
	for (size_t a = 0; a < sizeof(ALL) / sizeof(ALL[0]); a++) {
		sp_balancer_t b;
		make_upstream(ALL[a], 2, NULL, backup);
		assert_int_equal(sp_balancer_init(&b, &up, 7), 0);
		ctl_init(2);
		b.ctl = ctl;
		ctl[0].admin = SP_SRV_DRAINING;
		assert_int_equal(sp_balancer_pick(&b, client(1), &none), 1); /* the backup */
		ctl[1].admin = SP_SRV_DISABLED;
		assert_int_equal(sp_balancer_pick(&b, client(1), &none), -ENOENT);
		sp_balancer_free(&b);
	}
}

static void test_weight_set_at_run_time_replaces_the_configured_one(void **state)
{
	(void)state;
	sp_server_set_t none = {0};
	for (size_t a = 0; a < sizeof(ALL) / sizeof(ALL[0]); a++) {
		sp_balancer_t b;
		unsigned count[4] = {0};
		make_upstream(ALL[a], 4, W4, NULL); /* 5:3:2:1 in the file */
		assert_int_equal(sp_balancer_init(&b, &up, 7), 0);
		ctl_init(4);
		b.ctl = ctl;
		ctl[0].weight = 1;
		ctl[3].weight = 5; /* now 1:3:2:5 */
		for (unsigned i = 0; i < PICKS; i++) {
			int s = sp_balancer_pick(&b, client(i), &none);
			count[s]++;
			sp_balancer_connected(&b, (unsigned)s);
			sp_balancer_released(&b, (unsigned)s);
		}
		double want3 = PICKS * 5.0 / 11, want0 = PICKS * 1.0 / 11;
		if (count[3] < want3 * 0.9 || count[3] > want3 * 1.1 || count[0] < want0 * 0.85 ||
		    count[0] > want0 * 1.15)
			fail_msg("%s: server 0 got %u (want %.0f), server 3 got %u (want %.0f)",
				 sp_conf_balance_name(ALL[a]), count[0], want0, count[3], want3);
		sp_balancer_free(&b);
	}
}

/* A host name's empty slot (no address yet, or fewer addresses than slots)
 * is never picked; without run-time control an unresolved name is not either. */
static void test_empty_slot_of_a_name_is_never_picked(void **state)
{
	(void)state;
	sp_server_set_t none = {0};
	sp_balancer_t b;
	make_upstream(SP_BALANCE_ROUND_ROBIN, 3, NULL, NULL);
	servers[1].dns = servers[2].dns = true;
	assert_int_equal(sp_balancer_init(&b, &up, 7), 0);
	for (unsigned i = 0; i < 100; i++)
		assert_int_equal(sp_balancer_pick(&b, client(i), &none), 0);
	ctl_init(3);
	ctl[2].present = 0;
	b.ctl = ctl;
	for (unsigned i = 0; i < 100; i++)
		assert_true(sp_balancer_pick(&b, client(i), &none) != 2);
	sp_balancer_free(&b);
}

/* The seqlock reader always sees a whole address. */
static void test_ctl_address_written_then_read_back_whole(void **state)
{
	(void)state;
	sp_server_ctl_t c = {0};
	struct sockaddr_storage ss = {0}, out;
	socklen_t len;
	struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
	assert_false(sp_server_ctl_addr(&c, &out, &len));
	s4->sin_family = AF_INET;
	s4->sin_port = htons(80);
	s4->sin_addr.s_addr = htonl(0x7f000002);
	sp_server_ctl_set_addr(&c, &ss, sizeof(*s4));
	assert_int_equal(c.seq % 2, 0);
	assert_true(sp_server_ctl_addr(&c, &out, &len));
	assert_int_equal(len, sizeof(*s4));
	assert_memory_equal(&out, &ss, sizeof(*s4));
	sp_server_ctl_set_addr(&c, NULL, 0);
	assert_false(sp_server_ctl_addr(&c, &out, &len));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_robin_respects_weights_over_100000_picks),
		cmocka_unit_test(test_least_conn_respects_weights_over_100000_picks),
		cmocka_unit_test(test_random_two_respects_weights_over_100000_picks),
		cmocka_unit_test(test_source_hash_respects_weights_over_100000_clients),
		cmocka_unit_test(test_source_hash_server_removed_from_the_list_moves_only_its_share),
		cmocka_unit_test(test_source_hash_server_added_takes_only_its_share),
		cmocka_unit_test(test_backups_wait_for_every_primary_in_each_balancer),
		cmocka_unit_test(test_round_robin_is_smooth_not_bursty),
		cmocka_unit_test(test_pick_skips_tried_servers_and_fails_when_all_tried),
		cmocka_unit_test(test_backup_used_only_when_no_primary_is_eligible),
		cmocka_unit_test(test_least_conn_picks_the_least_loaded_by_weight),
		cmocka_unit_test(test_source_hash_is_sticky_per_client),
		cmocka_unit_test(test_source_hash_removing_a_server_moves_only_its_clients),
		cmocka_unit_test(test_source_hash_respects_weights),
		cmocka_unit_test(test_random_two_avoids_the_loaded_server),
		cmocka_unit_test(test_hash_addr_treats_v4_mapped_v6_as_v4),
		cmocka_unit_test(test_drained_and_disabled_servers_never_get_a_pick_in_any_balancer),
		cmocka_unit_test(test_every_server_drained_means_no_pick_not_a_drained_one),
		cmocka_unit_test(test_weight_set_at_run_time_replaces_the_configured_one),
		cmocka_unit_test(test_empty_slot_of_a_name_is_never_picked),
		cmocka_unit_test(test_ctl_address_written_then_read_back_whole),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
