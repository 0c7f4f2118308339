/* ring: completions reach the handler of the op packed in their user_data
 * with slot, result and flags intact; completions of a slot reused since
 * submission are dropped (and give back their buffer); a turn with nothing to
 * do returns 0 after its timeout; on_wake runs before any dispatch. Tests
 * that need io_uring report SKIPPED where it is blocked (seccomp, sysctl). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "runtime/bufring.h"
#include "runtime/ring.h"

typedef struct {
	void *ctx;
	unsigned op;
	uint32_t slot;
	int res;
	uint32_t flags;
} call_t;

/* What the handlers and hooks saw, in order; 'W' in events is an on_wake,
 * 'H' a handler call. */
static call_t calls[64];
static unsigned ncalls;
static char events[128];
static unsigned nevents;
static unsigned nwakes;
static int dropped_bids[8];
static unsigned ndropped;
static int ctx_token; /* the ring's ctx: its address */

static void reset_log(void)
{
	memset(calls, 0, sizeof(calls));
	ncalls = nevents = nwakes = ndropped = 0;
}

static void record(void *ctx, unsigned op, uint32_t slot, int res, uint32_t flags)
{
	if (ncalls < sizeof(calls) / sizeof(calls[0]))
		calls[ncalls] = (call_t){ctx, op, slot, res, flags};
	ncalls++;
	if (nevents < sizeof(events))
		events[nevents++] = 'H';
}

static void wake(void *ctx)
{
	assert_ptr_equal(ctx, &ctx_token);
	nwakes++;
	if (nevents < sizeof(events))
		events[nevents++] = 'W';
}

static void drop_buffer(void *ctx, uint16_t bid)
{
	assert_ptr_equal(ctx, &ctx_token);
	if (ndropped < sizeof(dropped_bids) / sizeof(dropped_bids[0]))
		dropped_bids[ndropped] = bid;
	ndropped++;
}

/* Linux older than 6.0 cannot run the proxy at all: sp_ring_init refuses it. */
static bool kernel_older_than_6_0(void)
{
	struct utsname u;
	int major = 0, minor = 0;
	if (uname(&u) != 0 || sscanf(u.release, "%d.%d", &major, &minor) != 2)
		return false;
	return major < 6;
}

/* A ring, or SKIPPED when io_uring is not allowed or too old here. */
static void open_ring(sp_ring_t *r, unsigned entries)
{
	char err[256] = "";
	int ret = sp_ring_init(r, entries, &ctx_token, err, sizeof(err));
	if (ret == -EPERM || ret == -ENOSYS || (ret == -ENOTSUP && kernel_older_than_6_0())) {
		print_message("[  SKIP    ] %s\n", err);
		skip();
	}
	if (ret < 0)
		fail_msg("sp_ring_init: %d: %s", ret, err);
	reset_log();
}

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Turn the loop until want completions were reaped (or 1 s passed); returns
 * how many were. */
static unsigned run_for(sp_ring_t *r, unsigned want)
{
	unsigned got = 0;
	uint64_t deadline = mono_ms() + 1000;
	while (got < want && mono_ms() < deadline) {
		int n = sp_ring_run_once(r, 100);
		assert_true(n >= 0);
		got += (unsigned)n;
	}
	return got;
}

static void queue_nop(sp_ring_t *r, unsigned op, uint32_t slot, uint32_t gen)
{
	struct io_uring_sqe *sqe = sp_ring_sqe(r, op, slot, gen);
	assert_non_null(sqe);
	io_uring_prep_nop(sqe);
	/* the prep helpers must leave the packed user_data alone */
	assert_int_equal(sqe->user_data, sp_udata_pack(op, slot, gen));
}

static void test_ring_init_has_what_the_proxy_needs(void **state)
{
	(void)state;
	sp_ring_t r;
	open_ring(&r, 8);
	assert_ptr_equal(r.ctx, &ctx_token);
	assert_true(r.feat.multishot_accept);
	assert_true(r.feat.recv_multishot);
	assert_true(r.feat.buf_ring);
	assert_true(r.feat.setup_flags & IORING_SETUP_CQSIZE);
	/* the CQ is four times the SQ, for multishot's many completions */
	assert_int_equal(r.uring.cq.ring_entries, 4 * r.uring.sq.ring_entries);
	assert_int_equal(r.uring.sq.ring_entries, 8);
	sp_ring_exit(&r);
}

static void test_ring_nop_round_trip_reaches_handler_with_op_slot_and_ctx(void **state)
{
	(void)state;
	sp_ring_t r;
	open_ring(&r, 8);
	sp_ring_on(&r, 7, record, false);
	queue_nop(&r, 7, 123456, 9);
	assert_int_equal(run_for(&r, 1), 1);
	assert_int_equal(ncalls, 1);
	assert_ptr_equal(calls[0].ctx, &ctx_token);
	assert_int_equal(calls[0].op, 7);
	assert_int_equal(calls[0].slot, 123456);
	assert_int_equal(calls[0].res, 0);
	sp_ring_exit(&r);
}

static void test_ring_handler_gets_the_result_of_the_operation(void **state)
{
	(void)state;
	sp_ring_t r;
	int p[2];
	char buf[8] = {0};
	assert_int_equal(pipe(p), 0);
	open_ring(&r, 8);
	sp_ring_on(&r, 3, record, false);
	io_uring_prep_write(sp_ring_sqe(&r, 3, 1, 0), p[1], "hello", 5, 0);
	io_uring_prep_write(sp_ring_sqe(&r, 3, 2, 0), -1, "x", 1, 0);
	assert_int_equal(run_for(&r, 2), 2);
	assert_int_equal(ncalls, 2);
	for (unsigned i = 0; i < 2; i++) {
		if (calls[i].slot == 1)
			assert_int_equal(calls[i].res, 5);
		else if (calls[i].slot == 2)
			assert_int_equal(calls[i].res, -EBADF);
		else
			fail_msg("unexpected slot %u", calls[i].slot);
	}
	assert_int_equal(read(p[0], buf, sizeof(buf)), 5);
	assert_memory_equal(buf, "hello", 5);
	sp_ring_exit(&r);
	close(p[0]);
	close(p[1]);
}

static unsigned calls_a, calls_b;
static void handler_a(void *ctx, unsigned op, uint32_t slot, int res, uint32_t flags)
{
	(void)ctx, (void)slot, (void)res, (void)flags;
	assert_int_equal(op, 1);
	calls_a++;
}
static void handler_b(void *ctx, unsigned op, uint32_t slot, int res, uint32_t flags)
{
	(void)ctx, (void)slot, (void)res, (void)flags;
	assert_true(op == 2 || op == 4);
	calls_b++;
}

static void test_ring_each_op_reaches_its_handler_and_unhandled_ops_are_consumed(void **state)
{
	(void)state;
	sp_ring_t r;
	open_ring(&r, 8);
	calls_a = calls_b = 0;
	sp_ring_on(&r, 1, handler_a, false);
	sp_ring_on(&r, 2, handler_b, false);
	sp_ring_on(&r, 4, handler_b, false); /* one handler may serve several ops */
	queue_nop(&r, 1, 0, 0);
	queue_nop(&r, 2, 0, 0);
	queue_nop(&r, 3, 0, 0); /* nobody's: reaped, not dispatched */
	queue_nop(&r, 4, 0, 0);
	queue_nop(&r, SP_UDATA_MAX_OPS - 1, 0, 0);
	assert_int_equal(run_for(&r, 5), 5);
	assert_int_equal(calls_a, 1);
	assert_int_equal(calls_b, 2);
	/* the CQ is empty: nothing is left over for the next turn */
	assert_int_equal(io_uring_cq_ready(&r.uring), 0);
	assert_int_equal(sp_ring_run_once(&r, 0), 0);
	sp_ring_exit(&r);
}

static void test_ring_stale_generation_is_dropped(void **state)
{
	(void)state;
	sp_ring_t r;
	/* slot 2's counter went past 24 bits: only its low 24 bits are packed;
	 * gens[3] lies past the table the ring is given, so it is never read */
	uint32_t gens[4] = {0, 5, (1u << SP_UDATA_GEN_BITS) | 7, 0};
	open_ring(&r, 16);
	r.drop_buffer = drop_buffer;
	sp_ring_set_gens(&r, gens, 3);
	sp_ring_on(&r, 1, record, true);
	queue_nop(&r, 1, 1, 5); /* current */
	queue_nop(&r, 1, 1, 4); /* an older generation of slot 1 */
	queue_nop(&r, 1, 2, 7); /* current, after the wrap */
	queue_nop(&r, 1, 3, 0); /* past the table: dropped though gens[3] == 0 */
	assert_int_equal(run_for(&r, 4), 4);
	assert_int_equal(r.stale_drops, 2);
	assert_int_equal(ncalls, 2);
	assert_true(calls[0].slot == 1 || calls[0].slot == 2);
	assert_true(calls[1].slot == 1 || calls[1].slot == 2);
	assert_int_not_equal(calls[0].slot, calls[1].slot);
	assert_int_equal(ndropped, 0); /* no buffer to give back */
	sp_ring_exit(&r);
}

static void test_ring_slot_reused_while_in_flight_drops_the_old_completion(void **state)
{
	(void)state;
	sp_ring_t r;
	uint32_t gens[1] = {10};
	open_ring(&r, 8);
	sp_ring_set_gens(&r, gens, 1);
	sp_ring_on(&r, 1, record, true);
	queue_nop(&r, 1, 0, 10);
	gens[0]++; /* the slot is freed and reused before the completion is seen */
	queue_nop(&r, 1, 0, 11);
	assert_int_equal(run_for(&r, 2), 2);
	assert_int_equal(ncalls, 1);
	assert_int_equal(r.stale_drops, 1);
	sp_ring_exit(&r);
}

static void test_ring_generation_is_ignored_without_check_or_table(void **state)
{
	(void)state;
	sp_ring_t r;
	uint32_t gens[1] = {10};
	open_ring(&r, 8);
	sp_ring_on(&r, 1, record, true);
	sp_ring_on(&r, 2, record, false);
	queue_nop(&r, 1, 0, 3); /* checked, but no table yet */
	assert_int_equal(run_for(&r, 1), 1);
	assert_int_equal(ncalls, 1);
	sp_ring_set_gens(&r, gens, 1);
	queue_nop(&r, 2, 0, 3); /* table, but this op is not checked */
	queue_nop(&r, 2, 99, 3);
	assert_int_equal(run_for(&r, 2), 2);
	assert_int_equal(ncalls, 3);
	assert_int_equal(r.stale_drops, 0);
	sp_ring_exit(&r);
}

static void test_ring_run_once_times_out_idle_with_zero(void **state)
{
	(void)state;
	sp_ring_t r;
	open_ring(&r, 8);
	r.on_wake = wake;
	uint64_t t0 = mono_ms();
	assert_int_equal(sp_ring_run_once(&r, 30), 0);
	uint64_t took = mono_ms() - t0;
	if (took < 25 || took > 900)
		fail_msg("an idle turn with a 30 ms timeout took %llu ms",
			 (unsigned long long)took);
	assert_int_equal(ncalls, 0);
	assert_int_equal(nwakes, 1); /* a turn is a turn, even an idle one */
	/* a zero timeout only polls */
	t0 = mono_ms();
	assert_int_equal(sp_ring_run_once(&r, 0), 0);
	assert_true(mono_ms() - t0 < 20);
	sp_ring_exit(&r);
}

static void test_ring_on_wake_runs_once_per_turn_before_any_dispatch(void **state)
{
	(void)state;
	sp_ring_t r;
	open_ring(&r, 8);
	r.on_wake = wake;
	sp_ring_on(&r, 1, record, false);
	for (uint32_t i = 0; i < 3; i++)
		queue_nop(&r, 1, i, 0);
	/* nops complete at submission, so one turn reaps all three */
	assert_int_equal(sp_ring_run_once(&r, 1000), 3);
	assert_int_equal(nevents, 4);
	assert_memory_equal(events, "WHHH", 4);
	sp_ring_exit(&r);
}

static void test_ring_sqe_is_never_null_when_the_sq_is_full(void **state)
{
	(void)state;
	enum { N = 20 };
	sp_ring_t r;
	bool seen[N] = {false};
	open_ring(&r, 8); /* 8 SQEs, 32 CQEs */
	sp_ring_on(&r, 1, record, false);
	for (uint32_t i = 0; i < N; i++)
		queue_nop(&r, 1, i, 0);
	assert_int_equal(run_for(&r, N), N);
	assert_int_equal(ncalls, N);
	for (unsigned i = 0; i < N; i++) {
		assert_true(calls[i].slot < N);
		assert_false(seen[calls[i].slot]);
		seen[calls[i].slot] = true;
	}
	assert_int_equal(r.cq_overflows, 0);
	sp_ring_exit(&r);
}

/* A linked pair (an op and its LINK_TIMEOUT) must reach the kernel in one
 * submit: split across two, the op runs with no timeout and the lone
 * timeout fails with -EINVAL. sp_ring_reserve makes room for the pair
 * first. Here, on a ring of 4 SQEs with 3 already queued, a read on an empty
 * pipe linked to a 20 ms timeout must end -ECANCELED by that timeout. */
static void test_ring_reserve_keeps_a_linked_pair_in_one_submit(void **state)
{
	(void)state;
	sp_ring_t r;
	int p[2];
	char buf[8];
	struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 20 * 1000000};
	assert_int_equal(pipe(p), 0);
	open_ring(&r, 4);
	assert_int_equal(r.uring.sq.ring_entries, 4);
	sp_ring_on(&r, 1, record, false);
	sp_ring_on(&r, 2, record, false);
	sp_ring_on(&r, 3, record, false);
	for (uint32_t i = 0; i < 3; i++)
		queue_nop(&r, 1, i, 0);
	sp_ring_reserve(&r, 2);
	assert_true(io_uring_sq_space_left(&r.uring) >= 2);
	struct io_uring_sqe *sqe = sp_ring_sqe(&r, 2, 0, 0);
	io_uring_prep_read(sqe, p[0], buf, sizeof(buf), 0);
	sqe->flags |= IOSQE_IO_LINK;
	io_uring_prep_link_timeout(sp_ring_sqe(&r, 3, 0, 0), &ts, 0);
	assert_int_equal(run_for(&r, 5), 5);
	int read_res = 1, timeout_res = 1;
	for (unsigned i = 0; i < ncalls && i < 5; i++) {
		if (calls[i].op == 2)
			read_res = calls[i].res;
		else if (calls[i].op == 3)
			timeout_res = calls[i].res;
	}
	assert_int_equal(read_res, -ECANCELED); /* the timeout fired on it */
	assert_int_equal(timeout_res, -ETIME);
	sp_ring_exit(&r);
	close(p[0]);
	close(p[1]);
}

/* Asking for more room than the ring has is clamped, never a hang. */
static void test_ring_reserve_more_than_the_ring_holds_empties_it(void **state)
{
	(void)state;
	sp_ring_t r;
	open_ring(&r, 4);
	sp_ring_on(&r, 1, record, false);
	queue_nop(&r, 1, 0, 0);
	sp_ring_reserve(&r, 64);
	assert_int_equal(io_uring_sq_space_left(&r.uring), 4);
	assert_int_equal(run_for(&r, 1), 1);
	sp_ring_exit(&r);
}

static void test_ring_stale_recv_gives_its_buffer_back_through_drop_buffer(void **state)
{
	(void)state;
	enum { BGID = 3, SLOT = 0 };
	sp_ring_t r;
	sp_bufring_t b;
	uint32_t gens[1] = {1};
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	open_ring(&r, 8);
	assert_int_equal(sp_bufring_init(&b, &r.uring, BGID, 2, 64), 0);
	r.drop_buffer = drop_buffer;
	sp_ring_set_gens(&r, gens, 1);
	sp_ring_on(&r, 1, record, true);

	assert_int_equal(write(sv[1], "stale", 5), 5);
	struct io_uring_sqe *sqe = sp_ring_sqe(&r, 1, SLOT, 0); /* gen 0: stale */
	io_uring_prep_recv(sqe, sv[0], NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = BGID;
	assert_int_equal(run_for(&r, 1), 1);
	assert_int_equal(ncalls, 0);
	assert_int_equal(r.stale_drops, 1);
	assert_int_equal(ndropped, 1);
	assert_true(dropped_bids[0] == 0 || dropped_bids[0] == 1);
	assert_memory_equal(sp_bufring_addr(&b, (uint16_t)dropped_bids[0]), "stale", 5);

	/* the current generation's recv reaches its handler, flags and all */
	assert_int_equal(write(sv[1], "fresh", 5), 5);
	sqe = sp_ring_sqe(&r, 1, SLOT, 1);
	io_uring_prep_recv(sqe, sv[0], NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = BGID;
	assert_int_equal(run_for(&r, 1), 1);
	assert_int_equal(ncalls, 1);
	assert_int_equal(calls[0].res, 5);
	assert_true(calls[0].flags & IORING_CQE_F_BUFFER);
	uint16_t bid = (uint16_t)(calls[0].flags >> IORING_CQE_BUFFER_SHIFT);
	assert_int_equal(bid, 1 - dropped_bids[0]); /* the other buffer */
	assert_memory_equal(sp_bufring_addr(&b, bid), "fresh", 5);
	assert_int_equal(ndropped, 1);

	sp_bufring_free(&b, &r.uring);
	sp_ring_exit(&r);
	close(sv[0]);
	close(sv[1]);
}

static void test_ring_probe_finds_what_init_finds(void **state)
{
	(void)state;
	sp_ring_t r;
	sp_ring_features_t f;
	char err[256] = "";
	open_ring(&r, 8);
	memset(&f, 0xa5, sizeof(f));
	assert_int_equal(sp_ring_probe(&f, err, sizeof(err)), 0);
	assert_int_equal(f.setup_flags, r.feat.setup_flags);
	assert_int_equal(f.multishot_accept, r.feat.multishot_accept);
	assert_int_equal(f.recv_multishot, r.feat.recv_multishot);
	assert_int_equal(f.buf_ring, r.feat.buf_ring);
	assert_int_equal(f.cancel_fd, r.feat.cancel_fd);
	assert_int_equal(f.ext_arg, r.feat.ext_arg);
	assert_int_equal(f.op_splice, r.feat.op_splice);
	assert_int_equal(f.op_socket, r.feat.op_socket);
	sp_ring_exit(&r);
}

static void test_ring_features_describe_names_flags_and_ops(void **state)
{
	(void)state;
	char buf[512];
	sp_ring_features_t f = {
	    .setup_flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
			   IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE,
	    .multishot_accept = true,
	    .recv_multishot = true,
	    .buf_ring = true,
	    .cancel_fd = false,
	    .op_splice = true,
	};
	sp_ring_features_describe(&f, buf, sizeof(buf));
	assert_string_equal(buf,
			    "io_uring: setup SINGLE_ISSUER DEFER_TASKRUN SUBMIT_ALL; multishot "
			    "accept yes, multishot recv yes, buffer rings yes, cancel by fd no, "
			    "splice op yes");

	memset(&f, 0, sizeof(f));
	f.setup_flags = IORING_SETUP_COOP_TASKRUN;
	sp_ring_features_describe(&f, buf, sizeof(buf));
	assert_string_equal(buf,
			    "io_uring: setup COOP_TASKRUN; multishot accept no, multishot recv "
			    "no, buffer rings no, cancel by fd no, splice op no");

	/* a short buffer is cut, never overrun */
	memset(buf, 'x', sizeof(buf));
	sp_ring_features_describe(&f, buf, 10);
	assert_string_equal(buf, "io_uring:");
	assert_int_equal(buf[10], 'x');
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_ring_init_has_what_the_proxy_needs),
	    cmocka_unit_test(test_ring_nop_round_trip_reaches_handler_with_op_slot_and_ctx),
	    cmocka_unit_test(test_ring_handler_gets_the_result_of_the_operation),
	    cmocka_unit_test(test_ring_each_op_reaches_its_handler_and_unhandled_ops_are_consumed),
	    cmocka_unit_test(test_ring_stale_generation_is_dropped),
	    cmocka_unit_test(test_ring_slot_reused_while_in_flight_drops_the_old_completion),
	    cmocka_unit_test(test_ring_generation_is_ignored_without_check_or_table),
	    cmocka_unit_test(test_ring_run_once_times_out_idle_with_zero),
	    cmocka_unit_test(test_ring_on_wake_runs_once_per_turn_before_any_dispatch),
	    cmocka_unit_test(test_ring_sqe_is_never_null_when_the_sq_is_full),
	    cmocka_unit_test(test_ring_reserve_keeps_a_linked_pair_in_one_submit),
	    cmocka_unit_test(test_ring_reserve_more_than_the_ring_holds_empties_it),
	    cmocka_unit_test(test_ring_stale_recv_gives_its_buffer_back_through_drop_buffer),
	    cmocka_unit_test(test_ring_probe_finds_what_init_finds),
	    cmocka_unit_test(test_ring_features_describe_names_flags_and_ops),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
