/* Steering: sp_steer_pick() as a pure function (the code the BPF program
 * runs), then the real program on loopback listeners. The BPF tests need
 * root or CAP_BPF+CAP_NET_ADMIN and report SKIPPED without it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bpf/steer.h"
#include "bpf/steer_pick.h"
#include "tests/unit/helpers.h"

#define NHASH 10000

/* Stand-in for reuse_md->hash: a well-mixed 32-bit value per flow. */
static __u32 flow_hash(__u32 i)
{
	i ^= i >> 16;
	i *= 0x7feb352du;
	i ^= i >> 15;
	i *= 0x846ca68bu;
	i ^= i >> 16;
	return i;
}

struct pick_fixture {
	struct sp_steer_cfg cfg;
	__u32 load[SP_STEER_MAX_SLOTS];
	struct sp_steer_state st;
};

static struct pick_fixture *fixture(struct pick_fixture *f, __u32 policy, unsigned nslots,
				    const bool *live, const int *cpu_of_slot)
{
	memset(f, 0, sizeof(*f));
	sp_steer_cfg_build(&f->cfg, policy, nslots, live, cpu_of_slot);
	f->st.cfg = &f->cfg;
	f->st.load = f->load;
	return f;
}

/* Count picks per slot over NHASH flows; fails on a -1 or out-of-range slot. */
static void tally(const struct pick_fixture *f, __u32 policy, __u32 cpu, unsigned *count)
{
	memset(count, 0, SP_STEER_MAX_SLOTS * sizeof(*count));
	for (__u32 i = 0; i < NHASH; i++) {
		int s = sp_steer_pick(policy, flow_hash(i), cpu, &f->st);
		assert_in_range(s, 0, SP_STEER_MAX_SLOTS - 1);
		count[s]++;
	}
}

/* ---- sp_steer_pick ---------------------------------------------------------- */

static void test_pick_hash_only_returns_live_slots(void **state)
{
	(void)state;
	struct pick_fixture f;
	unsigned count[SP_STEER_MAX_SLOTS];
	bool live[8] = {false, true, false, true, false, false, true, false};
	fixture(&f, SP_STEER_POL_HASH, 8, live, NULL);
	tally(&f, SP_STEER_POL_HASH, 0, count);
	for (unsigned s = 0; s < 8; s++)
		if (!live[s])
			assert_int_equal(count[s], 0);
		else
			assert_true(count[s] > 0);
}

/* With n live slots and no load, pol gives each slot an even share of
 * NHASH flows, give or take a tenth. */
static void assert_spreads_evenly(__u32 pol, unsigned n)
{
	struct pick_fixture f;
	unsigned count[SP_STEER_MAX_SLOTS];
	bool live[SP_STEER_MAX_SLOTS];
	for (unsigned s = 0; s < n; s++)
		live[s] = true;
	fixture(&f, pol, n, live, NULL);
	tally(&f, pol, 0, count);
	for (unsigned s = 0; s < n; s++)
		assert_in_range(count[s], NHASH / n - NHASH / n / 10, NHASH / n + NHASH / n / 10);
}

static void test_pick_hash_spreads_evenly_over_two_live_slots(void **state)
{
	(void)state;
	assert_spreads_evenly(SP_STEER_POL_HASH, 2);
}

static void test_pick_hash_spreads_evenly_over_four_live_slots(void **state)
{
	(void)state;
	assert_spreads_evenly(SP_STEER_POL_HASH, 4);
}

static void test_pick_never_returns_a_dead_slot_under_any_policy(void **state)
{
	(void)state;
	struct pick_fixture f;
	unsigned count[SP_STEER_MAX_SLOTS];
	bool live[4] = {true, true, false, true};
	int cpu_of_slot[4] = {0, 1, 2, 3};
	for (__u32 pol = SP_STEER_POL_HASH; pol <= SP_STEER_POL_LEAST_CONN; pol++) {
		fixture(&f, pol, 4, live, cpu_of_slot);
		for (__u32 cpu = 0; cpu < 4; cpu++) {
			tally(&f, pol, cpu, count);
			assert_int_equal(count[2], 0);
		}
	}
}

static void test_pick_ignores_live_marks_beyond_nslots(void **state)
{
	(void)state;
	struct pick_fixture f;
	unsigned count[SP_STEER_MAX_SLOTS];
	bool live[4] = {true, true, true, true};
	fixture(&f, SP_STEER_POL_HASH, 2, live, NULL);
	tally(&f, SP_STEER_POL_HASH, 0, count);
	assert_int_equal(count[2] + count[3], 0);
	assert_int_equal(count[0] + count[1], NHASH);
}

static void test_pick_no_live_slot_lets_the_kernel_choose(void **state)
{
	(void)state;
	struct pick_fixture f;
	bool live[4] = {false, false, false, false};
	int cpu_of_slot[4] = {0, 1, 0, 1};
	for (__u32 pol = SP_STEER_POL_HASH; pol <= SP_STEER_POL_LEAST_CONN; pol++) {
		fixture(&f, pol, 4, live, cpu_of_slot);
		for (__u32 i = 0; i < 100; i++)
			assert_int_equal(sp_steer_pick(pol, flow_hash(i), i % 2, &f.st), -1);
	}
	fixture(&f, SP_STEER_POL_HASH, 0, live, NULL);
	assert_int_equal(sp_steer_pick(SP_STEER_POL_HASH, 1234, 0, &f.st), -1);
}

static void test_pick_cpu_returns_the_slot_pinned_to_that_cpu(void **state)
{
	(void)state;
	struct pick_fixture f;
	bool live[4] = {true, true, true, true};
	int cpu_of_slot[4] = {3, 2, 1, 0};
	fixture(&f, SP_STEER_POL_CPU, 4, live, cpu_of_slot);
	for (__u32 i = 0; i < 1000; i++)
		for (__u32 cpu = 0; cpu < 4; cpu++)
			assert_int_equal(sp_steer_pick(SP_STEER_POL_CPU, flow_hash(i), cpu, &f.st),
					 3 - (int)cpu);
}

static void test_pick_cpu_falls_back_to_hash_when_pinned_slot_dead(void **state)
{
	(void)state;
	struct pick_fixture f;
	unsigned count[SP_STEER_MAX_SLOTS];
	bool live[3] = {true, false, true};
	int cpu_of_slot[3] = {0, 1, 2};
	fixture(&f, SP_STEER_POL_CPU, 3, live, cpu_of_slot);
	tally(&f, SP_STEER_POL_CPU, 1, count);
	assert_int_equal(count[1], 0);
	assert_in_range(count[0], NHASH / 2 - NHASH / 20, NHASH / 2 + NHASH / 20);
	assert_in_range(count[2], NHASH / 2 - NHASH / 20, NHASH / 2 + NHASH / 20);
}

static void test_pick_cpu_falls_back_to_hash_for_a_cpu_without_slot(void **state)
{
	(void)state;
	struct pick_fixture f;
	unsigned count[SP_STEER_MAX_SLOTS];
	bool live[2] = {true, true};
	int cpu_of_slot[2] = {0, 1};
	fixture(&f, SP_STEER_POL_CPU, 2, live, cpu_of_slot);
	tally(&f, SP_STEER_POL_CPU, 5, count);
	assert_true(count[0] > NHASH / 3 && count[1] > NHASH / 3);
	tally(&f, SP_STEER_POL_CPU, SP_STEER_MAX_CPUS + 7, count);
	assert_true(count[0] > NHASH / 3 && count[1] > NHASH / 3);
}

static void test_pick_cpu_spreads_over_shards_sharing_a_cpu(void **state)
{
	(void)state;
	struct pick_fixture f;
	unsigned count[SP_STEER_MAX_SLOTS];
	/* 4 workers on 2 CPUs, as the supervisor pins slot i to cpus[i % 2]. */
	bool live[4] = {true, true, true, true};
	int cpu_of_slot[4] = {0, 1, 0, 1};
	fixture(&f, SP_STEER_POL_CPU, 4, live, cpu_of_slot);
	tally(&f, SP_STEER_POL_CPU, 1, count);
	assert_int_equal(count[0] + count[2], 0);
	assert_in_range(count[1], NHASH / 2 - NHASH / 20, NHASH / 2 + NHASH / 20);
	assert_in_range(count[3], NHASH / 2 - NHASH / 20, NHASH / 2 + NHASH / 20);
}

static void test_pick_least_conn_prefers_the_idle_of_two_slots(void **state)
{
	(void)state;
	struct pick_fixture f;
	unsigned count[SP_STEER_MAX_SLOTS];
	bool live[2] = {true, true};
	fixture(&f, SP_STEER_POL_LEAST_CONN, 2, live, NULL);
	f.load[0] = 100;
	tally(&f, SP_STEER_POL_LEAST_CONN, 0, count);
	assert_int_equal(count[1], NHASH);
}

static void test_pick_least_conn_picks_the_less_loaded_candidate(void **state)
{
	(void)state;
	struct pick_fixture f;
	unsigned count[SP_STEER_MAX_SLOTS];
	bool live[4] = {true, true, true, true};
	fixture(&f, SP_STEER_POL_LEAST_CONN, 4, live, NULL);
	/* Two candidates are always distinct, so the busiest slot never wins
	 * and the idlest always does when it is a candidate (half the time). */
	f.load[0] = 50, f.load[1] = 10, f.load[2] = 0, f.load[3] = 20;
	tally(&f, SP_STEER_POL_LEAST_CONN, 0, count);
	assert_int_equal(count[0], 0);
	assert_true(count[2] > count[1] && count[1] > count[3]);
	assert_in_range(count[2], NHASH / 2 - NHASH / 10, NHASH / 2 + NHASH / 10);
}

static void test_pick_least_conn_ties_spread_by_hash(void **state)
{
	(void)state;
	assert_spreads_evenly(SP_STEER_POL_LEAST_CONN, 4);
}

static void test_pick_least_conn_reads_a_wrapped_counter_as_negative(void **state)
{
	(void)state;
	struct pick_fixture f;
	unsigned count[SP_STEER_MAX_SLOTS];
	bool live[2] = {true, true};
	fixture(&f, SP_STEER_POL_LEAST_CONN, 2, live, NULL);
	f.load[0] = (__u32)-1; /* a reset raced by a late decrement */
	f.load[1] = 3;
	tally(&f, SP_STEER_POL_LEAST_CONN, 0, count);
	assert_int_equal(count[0], NHASH);
}

static void test_pick_least_conn_with_one_live_slot_returns_it(void **state)
{
	(void)state;
	struct pick_fixture f;
	unsigned count[SP_STEER_MAX_SLOTS];
	bool live[3] = {false, false, true};
	fixture(&f, SP_STEER_POL_LEAST_CONN, 3, live, NULL);
	f.load[2] = 1000;
	tally(&f, SP_STEER_POL_LEAST_CONN, 0, count);
	assert_int_equal(count[2], NHASH);
}

/* ---- the real program on loopback ------------------------------------------- */

#define NCONN 400

/* Open steering or skip the test when BPF is not allowed here. */
static sp_steer_t *open_or_skip(int policy)
{
	char why[256];
	sp_steer_t *st = NULL;
	int ret = sp_steer_open(&st, policy, 4, why, sizeof(why));
	if (ret == -EPERM || ret == -EACCES) {
		th_skip("%s", why);
	}
	if (ret < 0)
		fail_msg("sp_steer_open: %s", why);
	return st;
}

/* n SO_REUSEPORT listeners on one 127.0.0.1 port (0: pick a free one). */
static in_port_t listen_group(int *fds, unsigned n, in_port_t port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int one = 1;
	a.sin_port = port;
	for (unsigned i = 0; i < n; i++) {
		fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		assert_true(fds[i] >= 0);
		assert_int_equal(setsockopt(fds[i], SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)),
				 0);
		assert_int_equal(bind(fds[i], (struct sockaddr *)&a, sizeof(a)), 0);
		if (i == 0)
			assert_int_equal(getsockname(fds[0], (struct sockaddr *)&a, &len), 0);
		assert_int_equal(listen(fds[i], 1024), 0);
	}
	return a.sin_port;
}

/* Two SO_REUSEPORT listeners on one port (fds), steered by st as slots 0
 * and 1 of group 0 (cpu_of_slot for the cpu policy, or NULL), the first
 * nlive slots live. Returns the port. */
static in_port_t steered_pair(sp_steer_t *st, int fds[2], const int *cpu_of_slot, unsigned nlive)
{
	in_port_t port = listen_group(fds, 2, 0);
	assert_int_equal(sp_steer_set_slots(st, 2, cpu_of_slot), 0);
	assert_int_equal(sp_steer_attach_group(st, 0, fds, 2), 0);
	for (unsigned s = 0; s < nlive; s++)
		assert_int_equal(sp_steer_set_live(st, s, true), 0);
	return port;
}

static void close_all(int *fds, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

static unsigned drain(const int *fds, unsigned n, unsigned *count)
{
	unsigned got = 0;
	for (unsigned i = 0; i < n; i++) {
		int c;
		while (fds[i] >= 0 && (c = accept4(fds[i], NULL, NULL, SOCK_CLOEXEC)) >= 0) {
			close(c);
			count[i]++;
			got++;
		}
	}
	return got;
}

/* nconn connections to port; count[i]: how many listener fds[i] accepted.
 * Clients close at once: an accept queue keeps a connection its client
 * already closed, and the test stays well under RLIMIT_NOFILE. */
static void connect_and_count(in_port_t port, unsigned nconn, const int *fds, unsigned n,
			      unsigned *count)
{
	struct sockaddr_in a = {
	    .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = port};
	unsigned got = 0;
	memset(count, 0, n * sizeof(*count));
	for (unsigned k = 0; k < nconn; k++) {
		int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		assert_true(c >= 0);
		assert_int_equal(connect(c, (struct sockaddr *)&a, sizeof(a)), 0);
		close(c);
		if (k % 32 == 31)
			got += drain(fds, n, count);
	}
	struct pollfd p[8];
	for (unsigned i = 0; i < n; i++)
		p[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
	for (int tries = 0; got < nconn && tries < 30; tries++) {
		poll(p, n, 100);
		got += drain(fds, n, count);
	}
	assert_int_equal(got, nconn);
}

static void test_bpf_hash_spreads_over_two_listeners(void **state)
{
	(void)state;
	sp_steer_t *st = open_or_skip(SP_STEER_POL_HASH);
	int fds[2];
	unsigned count[2];
	in_port_t port = steered_pair(st, fds, NULL, 2);
	connect_and_count(port, NCONN, fds, 2, count);
	print_message("  hash: %u / %u (migrate %s)\n", count[0], count[1],
		      sp_steer_migrate_supported(st) ? "yes" : "no");
	assert_in_range(count[0], NCONN * 30 / 100, NCONN * 70 / 100);
	assert_in_range(count[1], NCONN * 30 / 100, NCONN * 70 / 100);
	close_all(fds, 2);
	sp_steer_close(st);
}

static void test_bpf_only_the_live_slot_gets_connections(void **state)
{
	(void)state;
	sp_steer_t *st = open_or_skip(SP_STEER_POL_HASH);
	int fds[2];
	unsigned count[2];
	in_port_t port = steered_pair(st, fds, NULL, 1);
	connect_and_count(port, NCONN, fds, 2, count);
	assert_int_equal(count[0], NCONN);
	/* And the other way round, without touching the program. */
	assert_int_equal(sp_steer_set_live(st, 1, true), 0);
	assert_int_equal(sp_steer_set_live(st, 0, false), 0);
	connect_and_count(port, NCONN, fds, 2, count);
	assert_int_equal(count[1], NCONN);
	close_all(fds, 2);
	sp_steer_close(st);
}

static bool pin_to(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set) == 0;
}

/* On loopback the SYN is handled in softirq on the CPU that runs connect(),
 * so the client's CPU is the one bpf_get_smp_processor_id() sees. */
static void test_bpf_cpu_lands_on_the_slot_pinned_to_the_client_cpu(void **state)
{
	(void)state;
	cpu_set_t saved;
	assert_int_equal(sched_getaffinity(0, sizeof(saved), &saved), 0);
	if (!CPU_ISSET(0, &saved) || !CPU_ISSET(1, &saved))
		th_skip("needs CPUs 0 and 1");
	sp_steer_t *st = open_or_skip(SP_STEER_POL_CPU);
	int fds[2];
	unsigned count[2];
	int cpu_of_slot[2] = {0, 1};
	in_port_t port = steered_pair(st, fds, cpu_of_slot, 2);

	assert_true(pin_to(1));
	connect_and_count(port, NCONN / 4, fds, 2, count);
	print_message("  cpu: client on CPU 1 -> %u / %u\n", count[0], count[1]);
	assert_int_equal(count[1], NCONN / 4);
	assert_true(pin_to(0));
	connect_and_count(port, NCONN / 4, fds, 2, count);
	print_message("  cpu: client on CPU 0 -> %u / %u\n", count[0], count[1]);
	assert_int_equal(count[0], NCONN / 4);

	/* Slot 1 dead: CPU 1's connections fall back to the hash (slot 0). */
	assert_int_equal(sp_steer_set_live(st, 1, false), 0);
	assert_true(pin_to(1));
	connect_and_count(port, NCONN / 4, fds, 2, count);
	assert_int_equal(count[0], NCONN / 4);

	assert_int_equal(sched_setaffinity(0, sizeof(saved), &saved), 0);
	close_all(fds, 2);
	sp_steer_close(st);
}

static void test_bpf_least_conn_sends_new_connections_to_the_idle_slot(void **state)
{
	(void)state;
	sp_steer_t *st = open_or_skip(SP_STEER_POL_LEAST_CONN);
	int fds[2];
	unsigned count[2];
	in_port_t port = steered_pair(st, fds, NULL, 2);
	uint32_t *c = sp_steer_counters(st);
	assert_non_null(c);
	__atomic_store_n(&c[0], 100, __ATOMIC_RELAXED);
	__atomic_store_n(&c[1], 0, __ATOMIC_RELAXED);
	connect_and_count(port, NCONN, fds, 2, count);
	print_message("  least_conn (100 vs 0): %u / %u\n", count[0], count[1]);
	assert_true(count[1] >= NCONN * 98 / 100);
	close_all(fds, 2);
	sp_steer_close(st);
}

static void test_bpf_each_listener_group_is_steered_on_its_own(void **state)
{
	(void)state;
	sp_steer_t *st = open_or_skip(SP_STEER_POL_HASH);
	int a[2], b[2];
	unsigned count[2];
	in_port_t pa = listen_group(a, 2, 0);
	in_port_t pb = listen_group(b, 2, 0);
	assert_int_equal(sp_steer_set_slots(st, 2, NULL), 0);
	assert_int_equal(sp_steer_attach_group(st, 0, a, 2), 0);
	assert_int_equal(sp_steer_attach_group(st, 5, b, 2), 0);
	assert_int_equal(sp_steer_set_live(st, 1, true), 0);
	connect_and_count(pa, NCONN / 4, a, 2, count);
	assert_int_equal(count[1], NCONN / 4);
	connect_and_count(pb, NCONN / 4, b, 2, count);
	assert_int_equal(count[1], NCONN / 4);
	close_all(a, 2);
	close_all(b, 2);
	sp_steer_close(st);
}

static void test_bpf_attach_again_keeps_or_replaces_sockets(void **state)
{
	(void)state;
	sp_steer_t *st = open_or_skip(SP_STEER_POL_HASH);
	int fds[2], swapped[2];
	unsigned count[2];
	in_port_t port = listen_group(fds, 2, 0);
	assert_int_equal(sp_steer_set_slots(st, 2, NULL), 0);
	assert_int_equal(sp_steer_attach_group(st, 0, fds, 2), 0);
	assert_int_equal(sp_steer_attach_group(st, 0, fds, 2), 0);
	swapped[0] = fds[1], swapped[1] = fds[0];
	assert_int_equal(sp_steer_attach_group(st, 0, swapped, 2), 0);
	assert_int_equal(sp_steer_set_live(st, 0, true), 0);
	connect_and_count(port, NCONN / 4, fds, 2, count);
	assert_int_equal(count[1], NCONN / 4); /* fds[1] now serves slot 0 */
	close_all(fds, 2);
	sp_steer_close(st);
}

static void test_bpf_attach_before_listen_fails(void **state)
{
	(void)state;
	sp_steer_t *st = open_or_skip(SP_STEER_POL_HASH);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)), 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_true(sp_steer_attach_group(st, 0, &fd, 1) < 0);
	close(fd);
	sp_steer_close(st);
}

/* A listener closing with connections in its queue: select_or_migrate moves
 * them to a live slot's socket instead of resetting them. */
static void test_bpf_closing_listener_migrates_its_queue(void **state)
{
	(void)state;
	sp_steer_t *st = open_or_skip(SP_STEER_POL_HASH);
	if (!sp_steer_migrate_supported(st)) {
		sp_steer_close(st);
		th_skip("kernel lacks sk_reuseport/migrate");
	}
	int fds[2];
	unsigned count[2] = {0, 0};
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	in_port_t port = steered_pair(st, fds, NULL, 1);
	a.sin_port = port;
	for (unsigned k = 0; k < NCONN / 4; k++) {
		int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		assert_true(c >= 0);
		assert_int_equal(connect(c, (struct sockaddr *)&a, sizeof(a)), 0);
		close(c);
	}
	/* Everything waits on fds[0]; its shard "dies" and it closes. */
	assert_int_equal(sp_steer_set_live(st, 1, true), 0);
	assert_int_equal(sp_steer_set_live(st, 0, false), 0);
	close(fds[0]);
	fds[0] = -1;
	struct pollfd p = {.fd = fds[1], .events = POLLIN};
	for (int tries = 0; count[1] < NCONN / 4 && tries < 30; tries++) {
		poll(&p, 1, 100);
		drain(fds, 2, count);
	}
	print_message("  migrate: %u of %u queued connections moved\n", count[1], NCONN / 4);
	assert_int_equal(count[1], NCONN / 4);
	close_all(fds, 2);
	sp_steer_close(st);
}

static void test_open_rejects_unknown_policy_and_slot_counts(void **state)
{
	(void)state;
	char why[128];
	sp_steer_t *st = NULL;
	assert_int_equal(sp_steer_open(&st, 7, 4, why, sizeof(why)), -EINVAL);
	assert_true(why[0] != '\0');
	assert_int_equal(sp_steer_open(&st, SP_STEER_POL_HASH, 0, why, sizeof(why)), -EINVAL);
	assert_int_equal(
	    sp_steer_open(&st, SP_STEER_POL_HASH, SP_STEER_MAX_SLOTS + 1, why, sizeof(why)),
	    -EINVAL);
	assert_null(st);
}

static void test_policy_names(void **state)
{
	(void)state;
	assert_string_equal(sp_steer_policy_name(SP_STEER_POL_HASH), "hash");
	assert_string_equal(sp_steer_policy_name(SP_STEER_POL_CPU), "cpu");
	assert_string_equal(sp_steer_policy_name(SP_STEER_POL_LEAST_CONN), "least_conn");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_pick_hash_only_returns_live_slots),
	    cmocka_unit_test(test_pick_hash_spreads_evenly_over_two_live_slots),
	    cmocka_unit_test(test_pick_hash_spreads_evenly_over_four_live_slots),
	    cmocka_unit_test(test_pick_never_returns_a_dead_slot_under_any_policy),
	    cmocka_unit_test(test_pick_ignores_live_marks_beyond_nslots),
	    cmocka_unit_test(test_pick_no_live_slot_lets_the_kernel_choose),
	    cmocka_unit_test(test_pick_cpu_returns_the_slot_pinned_to_that_cpu),
	    cmocka_unit_test(test_pick_cpu_falls_back_to_hash_when_pinned_slot_dead),
	    cmocka_unit_test(test_pick_cpu_falls_back_to_hash_for_a_cpu_without_slot),
	    cmocka_unit_test(test_pick_cpu_spreads_over_shards_sharing_a_cpu),
	    cmocka_unit_test(test_pick_least_conn_prefers_the_idle_of_two_slots),
	    cmocka_unit_test(test_pick_least_conn_picks_the_less_loaded_candidate),
	    cmocka_unit_test(test_pick_least_conn_ties_spread_by_hash),
	    cmocka_unit_test(test_pick_least_conn_reads_a_wrapped_counter_as_negative),
	    cmocka_unit_test(test_pick_least_conn_with_one_live_slot_returns_it),
	    cmocka_unit_test(test_open_rejects_unknown_policy_and_slot_counts),
	    cmocka_unit_test(test_policy_names),
	    cmocka_unit_test(test_bpf_hash_spreads_over_two_listeners),
	    cmocka_unit_test(test_bpf_only_the_live_slot_gets_connections),
	    cmocka_unit_test(test_bpf_cpu_lands_on_the_slot_pinned_to_the_client_cpu),
	    cmocka_unit_test(test_bpf_least_conn_sends_new_connections_to_the_idle_slot),
	    cmocka_unit_test(test_bpf_each_listener_group_is_steered_on_its_own),
	    cmocka_unit_test(test_bpf_attach_again_keeps_or_replaces_sockets),
	    cmocka_unit_test(test_bpf_attach_before_listen_fails),
	    cmocka_unit_test(test_bpf_closing_listener_migrates_its_queue),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
