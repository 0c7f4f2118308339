/* loop, lent buffers (loop.h): a multishot recv on a group takes the
 * buffers lent to it and no other, oldest first, and ends with -ENOBUFS
 * once they are all in use, however much the peer sends; lent buffers stay
 * counted as out; unlending gives them back to the pool. That is what keeps
 * the copy relay's per-direction bound (SP_COPY_QMAX) exact with its recv
 * armed across messages. io_uring only (SKIPPED where io_uring cannot
 * run); on epoll lending is absent and says so. Beside test_loop.c, which
 * runs the operations every backend has. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "runtime/loop.h"
#include "tests/unit/helpers.h"

enum { OP_RECV = 1 };

typedef struct {
	sp_completion_t c;
	char data[32];
} call_t;

static call_t calls[64];
static unsigned ncalls;
static sp_loop_t *cur;

/* Records each completion and keeps its buffer (a reader that does not
 * send on: the slow peer's case). */
static void record(void *ctx, unsigned op, uint32_t slot, const sp_completion_t *c)
{
	(void)ctx;
	(void)op;
	(void)slot;
	if (ncalls < sizeof(calls) / sizeof(calls[0])) {
		call_t *k = &calls[ncalls];
		k->c = *c;
		k->data[0] = 0;
		if (c->has_buf && c->res > 0) {
			size_t n = (size_t)c->res < sizeof(k->data) - 1 ? (size_t)c->res
									: sizeof(k->data) - 1;
			memcpy(k->data, sp_loop_buf(cur, c->bid), n);
			k->data[n] = 0;
		}
	}
	ncalls++;
}

typedef struct {
	sp_loop_t *l;
	int sv[2];
} fx_t;

static fx_t fx;

static int fx_setup(void **state)
{
	fx = (fx_t){.sv = {-1, -1}};
	*state = &fx;
	return 0;
}

static int fx_teardown(void **state)
{
	fx_t *f = *state;
	for (unsigned i = 0; i < 2; i++)
		if (f->sv[i] >= 0)
			sp_loop_close(f->l, f->sv[i]);
	sp_loop_free(f->l);
	return 0;
}

/* A loop on backend with a pool of nbufs buffers of bufsz bytes and a
 * stream pair (sv[0] is the loop's side); SKIPPED where io_uring cannot
 * run. */
static sp_loop_t *open_loop(sp_loop_backend_t backend, uint32_t nbufs, uint32_t bufsz)
{
	char err[512] = "";
	if (backend == SP_LOOP_URING && sp_loop_probe_uring(err, sizeof(err)) < 0)
		th_skip("%s", err);
	sp_loop_config_t cfg = {.backend = backend, .entries = 64, .timers = 8};
	int ret = sp_loop_new(&fx.l, &cfg, err, sizeof(err));
	if (ret < 0)
		fail_msg("sp_loop_new(%s): %d: %s", sp_loop_backend_name(backend), ret, err);
	sp_loop_on(fx.l, OP_RECV, record, false);
	assert_int_equal(sp_loop_bufs_init(fx.l, nbufs, bufsz), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fx.sv), 0);
	memset(calls, 0, sizeof(calls));
	ncalls = 0;
	cur = fx.l;
	return fx.l;
}

static void run_until(sp_loop_t *l, unsigned want, unsigned ms)
{
	uint64_t deadline = th_mono_ms() + ms;
	while (ncalls < want && th_mono_ms() < deadline)
		assert_true(sp_loop_run_once(l, 20) >= 0);
}

static void run_for(sp_loop_t *l, unsigned ms)
{
	uint64_t deadline = th_mono_ms() + ms;
	while (th_mono_ms() < deadline)
		assert_true(sp_loop_run_once(l, 20) >= 0);
}

/* n buffers the caller holds: one-shot pool recvs of one byte each. */
static void take(sp_loop_t *l, uint16_t *bids, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		unsigned before = ncalls;
		assert_int_equal(write(fx.sv[1], "x", 1), 1);
		assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_RECV, 9, 0), fx.sv[0], false), 0);
		run_until(l, before + 1, 2000);
		assert_int_equal(ncalls, before + 1);
		assert_true(calls[before].c.has_buf);
		bids[i] = calls[before].c.bid;
	}
	ncalls = 0;
}

/* The slow peer: the sender keeps sending, the reader keeps every buffer.
 * A pool multishot recv takes buffer after buffer; a recv on two lent
 * buffers takes exactly those two, in the order lent, then ends. */
static void test_lent_recv_takes_only_the_lent_buffers_however_much_the_peer_sends(void **state)
{
	(void)state;
	sp_loop_t *l = open_loop(SP_LOOP_URING, 16, 8);
	if (!sp_loop_can_lend(l))
		th_skip("io_uring here has no provided-buffer groups (IORING_OP_PROVIDE_BUFFERS)");
	uint16_t bids[2];
	take(l, bids, 2);
	assert_int_equal(sp_loop_bufs_out(l), 2);
	assert_int_equal(sp_loop_buf_lend(l, 7, bids[0]), 0);
	assert_int_equal(sp_loop_buf_lend(l, 7, bids[1]), 0);
	assert_int_equal(sp_loop_bufs_out(l), 2); /* lent is still out */
	assert_int_equal(sp_loop_recv_lent(l, sp_loop_tag(OP_RECV, 1, 0), fx.sv[0], 7), 0);
	/* one message per turn, so each is its own recv */
	for (int i = 0; i < 6; i++) {
		char m[8];
		snprintf(m, sizeof(m), "msg%d", i);
		assert_int_equal(write(fx.sv[1], m, 4), 4);
		run_for(l, 30);
	}
	run_until(l, 3, 2000);
	run_for(l, 100);
	assert_int_equal(ncalls, 3);
	assert_true(calls[0].c.more && calls[0].c.has_buf);
	assert_int_equal(calls[0].c.bid, bids[0]);
	assert_string_equal(calls[0].data, "msg0");
	assert_true(calls[1].c.more && calls[1].c.has_buf);
	assert_int_equal(calls[1].c.bid, bids[1]);
	assert_string_equal(calls[1].data, "msg1");
	assert_int_equal(calls[2].c.res, -ENOBUFS);
	assert_false(calls[2].c.more);
	assert_false(calls[2].c.has_buf);
	/* exactly the two it was lent: the pool's other 14 are untouched */
	assert_int_equal(sp_loop_bufs_out(l), 2);

	/* The same peer on a pool multishot recv: it takes more than two. */
	sp_loop_buf_put(l, bids[0]);
	sp_loop_buf_put(l, bids[1]);
	ncalls = 0;
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_RECV, 1, 0), fx.sv[0], true), 0);
	for (int i = 0; i < 6; i++) {
		assert_int_equal(write(fx.sv[1], "more", 4), 4);
		run_for(l, 30);
	}
	assert_true(sp_loop_bufs_out(l) > 2);
	sp_loop_cancel_fd(l, fx.sv[0]);
	run_for(l, 50);
}

/* A buffer a lent recv handed back can be lent again and is taken again:
 * the recv stays armed across messages as long as the reader keeps up. */
static void test_lent_recv_stays_armed_while_the_reader_lends_each_buffer_back(void **state)
{
	(void)state;
	sp_loop_t *l = open_loop(SP_LOOP_URING, 4, 16);
	if (!sp_loop_can_lend(l))
		th_skip("io_uring here has no provided-buffer groups (IORING_OP_PROVIDE_BUFFERS)");
	uint16_t bid;
	take(l, &bid, 1);
	assert_int_equal(sp_loop_buf_lend(l, 3, bid), 0);
	assert_int_equal(sp_loop_recv_lent(l, sp_loop_tag(OP_RECV, 1, 0), fx.sv[0], 3), 0);
	for (unsigned i = 0; i < 20; i++) {
		char m[16];
		snprintf(m, sizeof(m), "request %u", i);
		assert_int_equal(write(fx.sv[1], m, strlen(m)), (ssize_t)strlen(m));
		run_until(l, i + 1, 2000);
		assert_int_equal(ncalls, i + 1);
		assert_true(calls[i].c.more);
		assert_int_equal(calls[i].c.bid, bid);
		assert_string_equal(calls[i].data, m);
		assert_int_equal(sp_loop_bufs_out(l), 1);
		assert_int_equal(sp_loop_buf_lend(l, 3, bid), 0);
	}
	shutdown(fx.sv[1], SHUT_WR);
	run_until(l, 21, 2000);
	assert_int_equal(calls[20].c.res, 0);
	assert_false(calls[20].c.more);
	if (calls[20].c.has_buf) /* the end of file took the lent buffer */
		sp_loop_buf_put(l, calls[20].c.bid);
	else
		assert_int_equal(sp_loop_buf_unlend(l, 3, bid), 0);
	run_for(l, 50);
	assert_int_equal(sp_loop_bufs_out(l), 0);
}

/* Unlent buffers are back in the pool from the next turn: a pool recv can
 * take every buffer again. */
static void test_unlend_gives_lent_buffers_back_to_the_pool(void **state)
{
	(void)state;
	sp_loop_t *l = open_loop(SP_LOOP_URING, 4, 8);
	if (!sp_loop_can_lend(l))
		th_skip("io_uring here has no provided-buffer groups (IORING_OP_PROVIDE_BUFFERS)");
	uint16_t bids[3];
	take(l, bids, 3);
	for (unsigned i = 0; i < 3; i++)
		assert_int_equal(sp_loop_buf_lend(l, 11, bids[i]), 0);
	run_for(l, 30); /* the kernel has them */
	for (unsigned i = 0; i < 3; i++)
		assert_int_equal(sp_loop_buf_unlend(l, 11, bids[i]), 0);
	assert_int_equal(sp_loop_bufs_out(l), 3); /* not before the kernel let go */
	run_for(l, 30);
	assert_int_equal(sp_loop_bufs_out(l), 0);
	/* all four in the pool: a multishot pool recv fills four, then -ENOBUFS */
	ncalls = 0;
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_RECV, 1, 0), fx.sv[0], true), 0);
	for (int i = 0; i < 5; i++) {
		assert_int_equal(write(fx.sv[1], "12345678", 8), 8);
		run_for(l, 30);
	}
	run_until(l, 5, 2000);
	assert_int_equal(ncalls, 5);
	assert_int_equal(calls[4].c.res, -ENOBUFS);
	assert_int_equal(sp_loop_bufs_out(l), 4);
}

/* epoll has no groups: the relay asks, and stays on one-shot recvs. */
static void test_lending_is_absent_on_epoll_and_says_so(void **state)
{
	(void)state;
	sp_loop_t *l = open_loop(SP_LOOP_EPOLL, 4, 8);
	assert_false(sp_loop_can_lend(l));
	assert_int_equal(sp_loop_buf_lend(l, 1, 0), -EOPNOTSUPP);
	assert_int_equal(sp_loop_recv_lent(l, sp_loop_tag(OP_RECV, 1, 0), fx.sv[0], 1),
			 -EOPNOTSUPP);
}

#define T(f) cmocka_unit_test_setup_teardown(f, fx_setup, fx_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    T(test_lent_recv_takes_only_the_lent_buffers_however_much_the_peer_sends),
	    T(test_lent_recv_stays_armed_while_the_reader_lends_each_buffer_back),
	    T(test_unlend_gives_lent_buffers_back_to_the_pool),
	    T(test_lending_is_absent_on_epoll_and_says_so),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
