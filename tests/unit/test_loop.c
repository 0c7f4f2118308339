/* loop: the same operations give the same completions on both backends.
 * Every test runs twice, on io_uring (SKIPPED where it is blocked or too
 * old) and on epoll: multishot accept and recv, send, connect (refused and
 * timed out), one-shot poll, cancel by op and by fd, timers, the generation
 * check, an empty buffer pool, and no completion delivered from inside the
 * call that started its op. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "runtime/loop.h"

enum { OP_A = 1, OP_B, OP_C };

typedef struct {
	unsigned op;
	uint32_t slot;
	sp_completion_t c;
	char data[64];
} call_t;

static call_t calls[256];
static unsigned ncalls;
static int ctx_token;
static sp_loop_t *cur; /* the loop under test, for handlers that read buffers */
static bool put_bufs;  /* handlers give buffers back at once */

static void record(void *ctx, unsigned op, uint32_t slot, const sp_completion_t *c)
{
	assert_ptr_equal(ctx, &ctx_token);
	if (ncalls < sizeof(calls) / sizeof(calls[0])) {
		call_t *k = &calls[ncalls];
		k->op = op;
		k->slot = slot;
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
	if (c->has_buf && put_bufs)
		sp_loop_buf_put(cur, c->bid);
}

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A loop on the backend the test was registered with (its state), or
 * SKIPPED when that backend is io_uring and io_uring cannot run here. */
static sp_loop_t *open_loop(void **state)
{
	sp_loop_backend_t be = (sp_loop_backend_t)(uintptr_t)*state;
	char err[512] = "";
	if (be == SP_LOOP_URING && sp_loop_probe_uring(err, sizeof(err)) < 0) {
		print_message("[  SKIP    ] %s\n", err);
		skip();
	}
	sp_loop_config_t cfg = {.backend = be, .entries = 64, .timers = 8, .ctx = &ctx_token};
	sp_loop_t *l;
	int ret = sp_loop_new(&l, &cfg, err, sizeof(err));
	if (ret < 0)
		fail_msg("sp_loop_new(%s): %d: %s", sp_loop_backend_name(be), ret, err);
	assert_int_equal(sp_loop_backend(l), be);
	for (unsigned op = OP_A; op <= OP_C; op++)
		sp_loop_on(l, op, record, false);
	memset(calls, 0, sizeof(calls));
	ncalls = 0;
	put_bufs = true;
	cur = l;
	return l;
}

/* Turn the loop until `want` handler calls were seen, or ms passed. */
static void run_until(sp_loop_t *l, unsigned want, unsigned ms)
{
	uint64_t deadline = mono_ms() + ms;
	while (ncalls < want && mono_ms() < deadline)
		assert_true(sp_loop_run_once(l, 20) >= 0);
}

static int tcp_listener(struct sockaddr_in *addr, int backlog)
{
	socklen_t len = sizeof(*addr);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	memset(addr, 0, sizeof(*addr));
	addr->sin_family = AF_INET;
	addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)addr, sizeof(*addr)), 0);
	assert_int_equal(listen(fd, backlog), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)addr, &len), 0);
	return fd;
}

static int tcp_client(const struct sockaddr_in *addr)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(connect(fd, (const struct sockaddr *)addr, sizeof(*addr)), 0);
	return fd;
}

static void stream_pair(int sv[2])
{
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
}

static void test_loop_accept_is_multishot_and_gives_nonblocking_fds(void **state)
{
	sp_loop_t *l = open_loop(state);
	struct sockaddr_in a;
	int lfd = tcp_listener(&a, 16);
	assert_int_equal(sp_loop_accept(l, sp_loop_tag(OP_A, 5, 0), lfd, true), 0);
	int c1 = tcp_client(&a), c2 = tcp_client(&a);
	run_until(l, 2, 2000);
	assert_int_equal(ncalls, 2);
	for (unsigned i = 0; i < 2; i++) {
		assert_int_equal(calls[i].op, OP_A);
		assert_int_equal(calls[i].slot, 5);
		assert_true(calls[i].c.res >= 0);
		assert_true(calls[i].c.more);
		assert_true(fcntl(calls[i].c.res, F_GETFL) & O_NONBLOCK);
		assert_true(fcntl(calls[i].c.res, F_GETFD) & FD_CLOEXEC);
		sp_loop_close(l, calls[i].c.res);
	}
	/* still armed: a third connection is accepted without re-arming */
	int c3 = tcp_client(&a);
	run_until(l, 3, 2000);
	assert_int_equal(ncalls, 3);
	sp_loop_close(l, calls[2].c.res);
	close(c1), close(c2), close(c3);
	sp_loop_cancel_fd(l, lfd);
	run_until(l, 4, 2000);
	assert_int_equal(calls[3].c.res, -ECANCELED);
	assert_false(calls[3].c.more);
	sp_loop_close(l, lfd);
	sp_loop_free(l);
}

static void test_loop_recv_lands_data_in_pool_buffers_until_eof(void **state)
{
	sp_loop_t *l = open_loop(state);
	int sv[2];
	stream_pair(sv);
	assert_int_equal(sp_loop_bufs_init(l, 4, 4096), 0);
	assert_int_equal(sp_loop_bufs_total(l), 4);
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_B, 1, 0), sv[0], true), 0);
	assert_int_equal(write(sv[1], "hello", 5), 5);
	run_until(l, 1, 2000);
	assert_int_equal(ncalls, 1);
	assert_int_equal(calls[0].c.res, 5);
	assert_true(calls[0].c.has_buf);
	assert_true(calls[0].c.more);
	assert_string_equal(calls[0].data, "hello");
	assert_int_equal(write(sv[1], "again", 5), 5);
	run_until(l, 2, 2000);
	assert_string_equal(calls[1].data, "again");
	shutdown(sv[1], SHUT_WR);
	run_until(l, 3, 2000);
	assert_int_equal(ncalls, 3);
	assert_int_equal(calls[2].c.res, 0);
	assert_false(calls[2].c.more);
	assert_false(calls[2].c.has_buf);
	assert_int_equal(sp_loop_bufs_out(l), 0);
	sp_loop_close(l, sv[0]);
	close(sv[1]);
	sp_loop_free(l);
}

static void test_loop_recv_ends_with_enobufs_when_the_pool_is_empty(void **state)
{
	sp_loop_t *l = open_loop(state);
	int sv[2];
	stream_pair(sv);
	put_bufs = false; /* the handler keeps every buffer */
	assert_int_equal(sp_loop_bufs_init(l, 1, 16), 0);
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_B, 1, 0), sv[0], true), 0);
	assert_int_equal(write(sv[1], "0123456789abcdef", 16), 16);
	run_until(l, 1, 2000);
	assert_int_equal(write(sv[1], "more", 4), 4);
	run_until(l, 2, 2000);
	assert_int_equal(ncalls, 2);
	assert_int_equal(calls[0].c.res, 16);
	assert_int_equal(calls[1].c.res, -ENOBUFS);
	assert_false(calls[1].c.more);
	assert_int_equal(sp_loop_bufs_out(l), 1);
	sp_loop_buf_put(l, calls[0].c.bid);
	/* re-armed once the buffer is back, the waiting bytes arrive */
	put_bufs = true;
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_B, 1, 0), sv[0], true), 0);
	run_until(l, 3, 2000);
	assert_string_equal(calls[2].data, "more");
	sp_loop_cancel_fd(l, sv[0]);
	run_until(l, 4, 2000);
	sp_loop_close(l, sv[0]);
	close(sv[1]);
	sp_loop_free(l);
}

static void test_loop_one_shot_recv_takes_one_buffer_and_ends(void **state)
{
	sp_loop_t *l = open_loop(state);
	int sv[2];
	stream_pair(sv);
	put_bufs = false;
	assert_int_equal(sp_loop_bufs_init(l, 4, 8), 0);
	/* more than one buffer's worth waits on the socket */
	assert_int_equal(write(sv[1], "0123456789abcdef0123", 20), 20);
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_B, 1, 0), sv[0], false), 0);
	run_until(l, 1, 2000);
	uint64_t deadline = mono_ms() + 100;
	while (mono_ms() < deadline)
		assert_true(sp_loop_run_once(l, 20) >= 0);
	assert_int_equal(ncalls, 1);
	assert_int_equal(calls[0].c.res, 8);
	assert_true(calls[0].c.has_buf);
	assert_false(calls[0].c.more);
	assert_string_equal(calls[0].data, "01234567");
	assert_int_equal(sp_loop_bufs_out(l), 1);
	sp_loop_buf_put(l, calls[0].c.bid);
	/* the next one-shot gets the next bytes */
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_B, 1, 0), sv[0], false), 0);
	run_until(l, 2, 2000);
	assert_string_equal(calls[1].data, "89abcdef");
	sp_loop_buf_put(l, calls[1].c.bid);
	sp_loop_close(l, sv[0]);
	close(sv[1]);
	sp_loop_free(l);
}

static void test_loop_send_completes_with_bytes_taken_never_inside_the_call(void **state)
{
	sp_loop_t *l = open_loop(state);
	int sv[2];
	char buf[16] = {0};
	stream_pair(sv);
	assert_int_equal(sp_loop_send(l, sp_loop_tag(OP_C, 9, 0), sv[0], "payload", 7), 0);
	assert_int_equal(ncalls, 0);
	run_until(l, 1, 2000);
	assert_int_equal(ncalls, 1);
	assert_int_equal(calls[0].op, OP_C);
	assert_int_equal(calls[0].slot, 9);
	assert_int_equal(calls[0].c.res, 7);
	assert_false(calls[0].c.more);
	assert_int_equal(read(sv[1], buf, sizeof(buf)), 7);
	assert_memory_equal(buf, "payload", 7);
	sp_loop_close(l, sv[0]);
	close(sv[1]);
	sp_loop_free(l);
}

static void test_loop_send_waits_for_room_when_the_peer_is_full(void **state)
{
	sp_loop_t *l = open_loop(state);
	int sv[2];
	static char big[1 << 16], sink[1 << 16];
	stream_pair(sv);
	/* fill the socket until it takes nothing more */
	while (send(sv[0], big, sizeof(big), MSG_DONTWAIT) > 0)
		;
	assert_int_equal(sp_loop_send(l, sp_loop_tag(OP_C, 1, 0), sv[0], "x", 1), 0);
	run_until(l, 1, 200);
	assert_int_equal(ncalls, 0);
	while (read(sv[1], sink, sizeof(sink)) > 0)
		;
	run_until(l, 1, 2000);
	assert_int_equal(ncalls, 1);
	assert_int_equal(calls[0].c.res, 1);
	sp_loop_close(l, sv[0]);
	close(sv[1]);
	sp_loop_free(l);
}

static void test_loop_connect_reports_refused(void **state)
{
	sp_loop_t *l = open_loop(state);
	struct sockaddr_in a;
	int lfd = tcp_listener(&a, 1);
	close(lfd); /* nothing listens on a now */
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	assert_int_equal(sp_loop_connect(l, sp_loop_tag(OP_A, 2, 0), fd, (struct sockaddr *)&a,
					 sizeof(a), 1000),
			 0);
	run_until(l, 1, 2000);
	assert_int_equal(ncalls, 1);
	assert_int_equal(calls[0].c.res, -ECONNREFUSED);
	sp_loop_close(l, fd);
	sp_loop_free(l);
}

static void test_loop_connect_succeeds(void **state)
{
	sp_loop_t *l = open_loop(state);
	struct sockaddr_in a;
	int lfd = tcp_listener(&a, 4);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	assert_int_equal(sp_loop_connect(l, sp_loop_tag(OP_A, 2, 0), fd, (struct sockaddr *)&a,
					 sizeof(a), 1000),
			 0);
	run_until(l, 1, 2000);
	assert_int_equal(ncalls, 1);
	assert_int_equal(calls[0].c.res, 0);
	/* the connect timeout does not fire later */
	run_until(l, 2, 1200);
	assert_int_equal(ncalls, 1);
	sp_loop_close(l, fd);
	close(lfd);
	sp_loop_free(l);
}

/* A listener whose accept queue is full drops further SYNs, so a connect
 * to it hangs until its timeout. */
static void test_loop_connect_times_out_with_etimedout(void **state)
{
	sp_loop_t *l = open_loop(state);
	struct sockaddr_in a;
	int lfd = tcp_listener(&a, 0);
	int fill[4], nfill = 0;
	for (; nfill < 4; nfill++) {
		fill[nfill] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		connect(fill[nfill], (struct sockaddr *)&a, sizeof(a));
	}
	usleep(50 * 1000);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	uint64_t t0 = mono_ms();
	assert_int_equal(sp_loop_connect(l, sp_loop_tag(OP_A, 3, 0), fd, (struct sockaddr *)&a,
					 sizeof(a), 150),
			 0);
	run_until(l, 1, 3000);
	uint64_t took = mono_ms() - t0;
	assert_int_equal(ncalls, 1);
	assert_int_equal(calls[0].c.res, -ETIMEDOUT);
	assert_true(took >= 140 && took < 1000);
	sp_loop_close(l, fd);
	for (int i = 0; i < nfill; i++)
		close(fill[i]);
	close(lfd);
	sp_loop_free(l);
}

static void test_loop_poll_completes_once_readable(void **state)
{
	sp_loop_t *l = open_loop(state);
	int sv[2];
	stream_pair(sv);
	assert_int_equal(sp_loop_poll(l, sp_loop_tag(OP_A, 4, 0), sv[0], false), 0);
	run_until(l, 1, 100);
	assert_int_equal(ncalls, 0);
	assert_int_equal(write(sv[1], "x", 1), 1);
	run_until(l, 1, 2000);
	assert_int_equal(ncalls, 1);
	assert_true(calls[0].c.res > 0);
	assert_false(calls[0].c.more);
	/* one-shot, and readiness that is already there counts at once */
	assert_int_equal(sp_loop_poll(l, sp_loop_tag(OP_A, 4, 0), sv[0], false), 0);
	run_until(l, 2, 2000);
	assert_int_equal(ncalls, 2);
	assert_int_equal(sp_loop_poll(l, sp_loop_tag(OP_B, 4, 0), sv[0], true), 0);
	run_until(l, 3, 2000);
	assert_int_equal(calls[2].op, OP_B);
	assert_true(calls[2].c.res > 0);
	sp_loop_close(l, sv[0]);
	close(sv[1]);
	sp_loop_free(l);
}

static void test_loop_cancel_ends_only_the_named_op(void **state)
{
	sp_loop_t *l = open_loop(state);
	int sv[2];
	stream_pair(sv);
	assert_int_equal(sp_loop_bufs_init(l, 4, 64), 0);
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_A, 1, 0), sv[0], true), 0);
	assert_int_equal(sp_loop_poll(l, sp_loop_tag(OP_B, 1, 0), sv[1], false), 0);
	run_until(l, 1, 50);
	assert_int_equal(sp_loop_cancel(l, sv[0], sp_loop_tag(OP_A, 1, 0)), 0);
	run_until(l, 1, 2000);
	assert_int_equal(ncalls, 1);
	assert_int_equal(calls[0].op, OP_A);
	assert_int_equal(calls[0].c.res, -ECANCELED);
	assert_false(calls[0].c.more);
	/* the poll on the other fd is still armed */
	assert_int_equal(write(sv[0], "y", 1), 1);
	run_until(l, 2, 2000);
	assert_int_equal(calls[1].op, OP_B);
	assert_true(calls[1].c.res > 0);
	sp_loop_close(l, sv[0]);
	sp_loop_close(l, sv[1]);
	sp_loop_free(l);
}

static void test_loop_cancel_fd_ends_every_op_on_it(void **state)
{
	sp_loop_t *l = open_loop(state);
	int sv[2];
	static char big[1 << 16];
	stream_pair(sv);
	while (send(sv[0], big, sizeof(big), MSG_DONTWAIT) > 0)
		;
	assert_int_equal(sp_loop_bufs_init(l, 4, 64), 0);
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_A, 1, 0), sv[0], true), 0);
	assert_int_equal(sp_loop_send(l, sp_loop_tag(OP_B, 1, 0), sv[0], "z", 1), 0);
	run_until(l, 1, 50);
	assert_int_equal(ncalls, 0);
	assert_int_equal(sp_loop_cancel_fd(l, sv[0]), 0);
	run_until(l, 2, 2000);
	assert_int_equal(ncalls, 2);
	for (unsigned i = 0; i < 2; i++) {
		assert_int_equal(calls[i].c.res, -ECANCELED);
		assert_false(calls[i].c.more);
	}
	sp_loop_close(l, sv[0]);
	close(sv[1]);
	sp_loop_free(l);
}

static void test_loop_drops_completions_of_a_reused_slot_and_returns_their_buffer(void **state)
{
	sp_loop_t *l = open_loop(state);
	uint32_t gens[4] = {0};
	sp_loop_stats_t st;
	int sv[2];
	stream_pair(sv);
	sp_loop_on(l, OP_A, record, true);
	sp_loop_set_gens(l, gens, 4);
	assert_int_equal(sp_loop_bufs_init(l, 4, 64), 0);
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_A, 2, 0), sv[0], true), 0);
	run_until(l, 1, 50);
	gens[2] = 1; /* slot 2 freed and reused */
	assert_int_equal(write(sv[1], "stale", 5), 5);
	uint64_t deadline = mono_ms() + 300;
	while (mono_ms() < deadline)
		assert_true(sp_loop_run_once(l, 20) >= 0);
	assert_int_equal(ncalls, 0);
	sp_loop_stats(l, &st);
	assert_true(st.stale_drops >= 1);
	assert_int_equal(sp_loop_bufs_out(l), 0);
	/* a current generation gets through */
	assert_int_equal(sp_loop_poll(l, sp_loop_tag(OP_A, 3, 0), sv[0], true), 0);
	run_until(l, 1, 2000);
	assert_int_equal(ncalls, 1);
	assert_int_equal(calls[0].slot, 3);
	sp_loop_cancel_fd(l, sv[0]);
	sp_loop_close(l, sv[0]);
	close(sv[1]);
	sp_loop_free(l);
}

static unsigned fired;
static uint64_t fired_at;
static void on_timer(sp_timer_t *t, void *arg)
{
	(void)t;
	fired++;
	fired_at = sp_loop_now(arg);
}

static void test_loop_timers_fire_once_at_their_deadline_and_wake_the_wait(void **state)
{
	sp_loop_t *l = open_loop(state);
	sp_timer_t t, never;
	sp_timer_setup(&t, on_timer, l);
	sp_timer_setup(&never, on_timer, l);
	fired = 0;
	uint64_t start = sp_loop_now(l);
	assert_int_equal(sp_loop_timer_arm(l, &t, start + 80), 0);
	assert_int_equal(sp_loop_timer_arm(l, &never, start + 60), 0);
	sp_loop_timer_disarm(l, &never);
	/* run_once(-1) sleeps only until the timer is due */
	uint64_t t0 = mono_ms();
	while (!fired)
		assert_true(sp_loop_run_once(l, -1) >= 0);
	assert_int_equal(fired, 1);
	assert_true(fired_at >= start + 80);
	assert_true(mono_ms() - t0 < 1000);
	assert_true(sp_loop_now(l) >= start + 80);
	assert_int_equal(sp_loop_run_once(l, 30), 0);
	assert_int_equal(fired, 1);
	sp_loop_free(l);
}

static void test_loop_second_reader_on_one_fd_is_refused_on_epoll(void **state)
{
	sp_loop_t *l = open_loop(state);
	int sv[2];
	stream_pair(sv);
	assert_int_equal(sp_loop_poll(l, sp_loop_tag(OP_A, 1, 0), sv[0], false), 0);
	int ret = sp_loop_poll(l, sp_loop_tag(OP_B, 1, 0), sv[0], false);
	if (sp_loop_backend(l) == SP_LOOP_EPOLL)
		assert_int_equal(ret, -EBUSY);
	/* a writer beside the reader is fine on both */
	assert_int_equal(sp_loop_poll(l, sp_loop_tag(OP_C, 1, 0), sv[0], true), 0);
	sp_loop_cancel_fd(l, sv[0]);
	run_until(l, ret == 0 ? 3 : 2, 2000);
	sp_loop_close(l, sv[0]);
	close(sv[1]);
	sp_loop_free(l);
}

static void test_loop_probe_names_the_backend_or_the_reason(void **state)
{
	(void)state;
	char why[512] = "";
	int ret = sp_loop_probe_uring(why, sizeof(why));
	if (ret == 0)
		assert_non_null(strstr(why, "io_uring"));
	else
		assert_true(strstr(why, "io_uring") != NULL && strlen(why) > 20);
	assert_string_equal(sp_loop_backend_name(SP_LOOP_EPOLL), "epoll");
	assert_string_equal(sp_loop_backend_name(SP_LOOP_URING), "io_uring");
}

#define BOTH(f)                                                                                \
	cmocka_unit_test_prestate(f, (void *)(uintptr_t)SP_LOOP_URING),                        \
		cmocka_unit_test_prestate(f, (void *)(uintptr_t)SP_LOOP_EPOLL)

int main(void)
{
	const struct CMUnitTest tests[] = {
		BOTH(test_loop_accept_is_multishot_and_gives_nonblocking_fds),
		BOTH(test_loop_recv_lands_data_in_pool_buffers_until_eof),
		BOTH(test_loop_recv_ends_with_enobufs_when_the_pool_is_empty),
		BOTH(test_loop_one_shot_recv_takes_one_buffer_and_ends),
		BOTH(test_loop_send_completes_with_bytes_taken_never_inside_the_call),
		BOTH(test_loop_send_waits_for_room_when_the_peer_is_full),
		BOTH(test_loop_connect_reports_refused),
		BOTH(test_loop_connect_succeeds),
		BOTH(test_loop_connect_times_out_with_etimedout),
		BOTH(test_loop_poll_completes_once_readable),
		BOTH(test_loop_cancel_ends_only_the_named_op),
		BOTH(test_loop_cancel_fd_ends_every_op_on_it),
		BOTH(test_loop_drops_completions_of_a_reused_slot_and_returns_their_buffer),
		BOTH(test_loop_timers_fire_once_at_their_deadline_and_wake_the_wait),
		BOTH(test_loop_second_reader_on_one_fd_is_refused_on_epoll),
		cmocka_unit_test(test_loop_probe_names_the_backend_or_the_reason),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
