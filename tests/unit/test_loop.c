/* loop: the same operations give the same completions on both backends.
 * Every test runs twice, on io_uring (SKIPPED where it is blocked or too
 * old) and on epoll: multishot accept and recv, send, connect (refused and
 * timed out), one-shot poll, cancel by op and by fd, timers, the generation
 * check, an empty buffer pool, no completion delivered from inside the
 * call that started its op, and an accept that another waiter on its socket
 * cannot starve. Lent buffers (io_uring only; absent on epoll) at the
 * end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "runtime/loop.h"
#include "tests/unit/helpers.h"

enum { OP_A = 1, OP_B, OP_C };

typedef struct {
	unsigned op;
	uint32_t slot;
	sp_completion_t c;
	char data[64];
} call_t;

static call_t calls[1024];
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

/* What a test runs on: a loop on the backend the test was registered with
 * and, if it asks, a connected stream pair (sv[0] is the loop's side). The
 * teardown closes and frees them even when an assertion ended the test. */
typedef struct {
	sp_loop_backend_t backend;
	sp_loop_t *l;
	int sv[2];
	int fds[8]; /* more descriptors the teardown closes (own()) */
	unsigned nfds;
} fx_t;

static fx_t fx;

static int fx_setup(void **state)
{
	fx = (fx_t){.backend = (sp_loop_backend_t)(uintptr_t)*state, .sv = {-1, -1}};
	*state = &fx;
	return 0;
}

static int fx_teardown(void **state)
{
	fx_t *f = *state;
	for (unsigned i = 0; i < 2; i++)
		if (f->sv[i] >= 0 && f->l)
			sp_loop_close(f->l, f->sv[i]);
		else if (f->sv[i] >= 0)
			close(f->sv[i]); /* the test freed the loop */
	for (unsigned i = 0; i < f->nfds; i++)
		sp_loop_close(f->l, f->fds[i]);
	sp_loop_free(f->l);
	return 0;
}

/* The fixture's loop, or SKIPPED when its backend is io_uring and io_uring
 * cannot run here. With sv, also the stream pair. */
static sp_loop_t *open_loop(void **state, int **sv)
{
	fx_t *f = *state;
	char err[512] = "";
	/* the teardown closes through the loop, so nothing is opened before it */
	if (f->backend == SP_LOOP_URING && sp_loop_probe_uring(err, sizeof(err)) < 0)
		th_skip("%s", err);
	sp_loop_config_t cfg = {
	    .backend = f->backend, .entries = 64, .timers = 8, .ctx = &ctx_token};
	int ret = sp_loop_new(&f->l, &cfg, err, sizeof(err));
	if (ret < 0)
		fail_msg("sp_loop_new(%s): %d: %s", sp_loop_backend_name(f->backend), ret, err);
	assert_int_equal(sp_loop_backend(f->l), f->backend);
	for (unsigned op = OP_A; op <= OP_C; op++)
		sp_loop_on(f->l, op, record, false);
	memset(calls, 0, sizeof(calls));
	ncalls = 0;
	put_bufs = true;
	cur = f->l;
	if (sv) {
		assert_int_equal(
		    socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, f->sv), 0);
		*sv = f->sv;
	}
	return f->l;
}

/* fd, closed by the teardown. */
static int own(int fd)
{
	assert_true(fd >= 0);
	assert_true(fx.nfds < sizeof(fx.fds) / sizeof(fx.fds[0]));
	fx.fds[fx.nfds++] = fd;
	return fd;
}

/* Turn the loop until `want` handler calls were seen, or ms passed. */
static void run_until(sp_loop_t *l, unsigned want, unsigned ms)
{
	uint64_t deadline = th_mono_ms() + ms;
	while (ncalls < want && th_mono_ms() < deadline)
		assert_true(sp_loop_run_once(l, 20) >= 0);
}

/* Turn the loop for ms whatever arrives: time for a completion that must
 * not come to show up. */
static void run_for(sp_loop_t *l, unsigned ms)
{
	uint64_t deadline = th_mono_ms() + ms;
	while (th_mono_ms() < deadline)
		assert_true(sp_loop_run_once(l, 20) >= 0);
}

/* Send into fd until its buffers take nothing more. */
static void fill(int fd)
{
	static char big[1 << 16];
	while (send(fd, big, sizeof(big), MSG_DONTWAIT) > 0)
		;
}

/* Connect a new socket (the fixture's) to a through the loop with this
 * timeout and wait for the one completion; its result. */
static int connect_and_wait(sp_loop_t *l, const struct sockaddr_in *a, unsigned timeout_ms)
{
	int fd = own(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
	assert_int_equal(sp_loop_connect(l, sp_loop_tag(OP_A, 2, 0), fd, (const struct sockaddr *)a,
					 sizeof(*a), timeout_ms),
			 0);
	run_until(l, 1, timeout_ms + 2000);
	assert_int_equal(ncalls, 1);
	assert_false(calls[0].c.more);
	return calls[0].c.res;
}

static void test_loop_accept_is_multishot_and_gives_nonblocking_fds(void **state)
{
	sp_loop_t *l = open_loop(state, NULL);
	struct sockaddr_in a;
	int lfd = own(th_tcp_listener(&a, 16));
	assert_int_equal(sp_loop_accept(l, sp_loop_tag(OP_A, 5, 0), lfd, true), 0);
	own(th_tcp_client(&a));
	own(th_tcp_client(&a));
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
	own(th_tcp_client(&a));
	run_until(l, 3, 2000);
	assert_int_equal(ncalls, 3);
	sp_loop_close(l, calls[2].c.res);
	sp_loop_cancel_fd(l, lfd);
	run_until(l, 4, 2000);
	assert_int_equal(calls[3].c.res, -ECANCELED);
	assert_false(calls[3].c.more);
}

/* Sits in epoll_wait on a set that holds a listening socket with
 * EPOLLEXCLUSIVE: a waiter that takes a connection's wake-up and never
 * accepts it, as a dead shard's accept does until the kernel has torn its
 * ring down. */
typedef struct {
	int ep;
	volatile pid_t tid;
} swallower_t;

static void *swallow(void *arg)
{
	swallower_t *sw = arg;
	struct epoll_event ev;
	sw->tid = (pid_t)syscall(SYS_gettid);
	(void)epoll_wait(sw->ep, &ev, 1, 5000);
	return NULL;
}

/* Is thread tid asleep (in the only place it sleeps)? */
static bool thread_sleeping(pid_t tid)
{
	char path[64], buf[256];
	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int)tid);
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	const char *p = strrchr(buf, ')');
	return p && p[1] == ' ' && p[2] == 'S';
}

static void test_loop_accept_is_woken_past_an_exclusive_waiter_that_never_accepts(void **state)
{
	sp_loop_t *l = open_loop(state, NULL);
	struct sockaddr_in a;
	int lfd = own(th_tcp_listener(&a, 16));
	swallower_t sw = {.ep = own(epoll_create1(EPOLL_CLOEXEC))};
	struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE};
	pthread_t th;

	assert_int_equal(epoll_ctl(sw.ep, EPOLL_CTL_ADD, lfd, &ev), 0);
	assert_int_equal(pthread_create(&th, NULL, swallow, &sw), 0);
	uint64_t deadline = th_mono_ms() + 2000;
	while (!(sw.tid && thread_sleeping(sw.tid)) && th_mono_ms() < deadline)
		usleep(1000);
	assert_true(sw.tid && thread_sleeping(sw.tid));

	/* Queued on the socket after the swallower, as a restarted shard's
	 * accept is after its dead predecessor's. */
	assert_int_equal(sp_loop_accept(l, sp_loop_tag(OP_A, 1, 0), lfd, true), 0);
	run_for(l, 50);
	assert_int_equal(ncalls, 0);
	own(th_tcp_client(&a));
	run_until(l, 1, 2000);
	pthread_join(th, NULL);
	assert_int_equal(ncalls, 1);
	assert_true(calls[0].c.res >= 0);
	assert_true(calls[0].c.more);
	sp_loop_close(l, calls[0].c.res);
	sp_loop_cancel_fd(l, lfd);
	run_until(l, 2, 2000);
	assert_int_equal(calls[1].c.res, -ECANCELED);
	assert_false(calls[1].c.more);
}

static void test_loop_recv_lands_data_in_pool_buffers_until_eof(void **state)
{
	int *sv;
	sp_loop_t *l = open_loop(state, &sv);
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
}

static void test_loop_recv_ends_with_enobufs_when_the_pool_is_empty(void **state)
{
	int *sv;
	sp_loop_t *l = open_loop(state, &sv);
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
}

/* A recv into the caller's own memory (the copy engine's spare) waits for
 * data and lands it there whatever the pool holds, even with the pool
 * empty: it takes no pool buffer, and ends after one result. */
static void test_loop_recv_into_lands_data_in_the_callers_buffer_with_the_pool_empty(void **state)
{
	int *sv;
	static char mine[64];
	sp_loop_t *l = open_loop(state, &sv);
	put_bufs = false; /* the handler keeps every buffer */
	assert_int_equal(sp_loop_bufs_init(l, 1, 16), 0);
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_B, 1, 0), sv[0], false), 0);
	assert_int_equal(write(sv[1], "0123456789abcdef", 16), 16);
	run_until(l, 1, 2000);
	assert_int_equal(sp_loop_bufs_out(l), 1); /* the pool is empty */
	assert_int_equal(sp_loop_recv_into(l, sp_loop_tag(OP_A, 1, 0), sv[0], mine, sizeof(mine)), 0);
	run_until(l, 2, 50);
	assert_int_equal(ncalls, 1); /* no data yet: it waits */
	assert_int_equal(write(sv[1], "hello", 5), 5);
	run_until(l, 2, 2000);
	assert_int_equal(ncalls, 2);
	assert_int_equal(calls[1].op, OP_A);
	assert_int_equal(calls[1].c.res, 5);
	assert_false(calls[1].c.has_buf);
	assert_false(calls[1].c.more);
	assert_memory_equal(mine, "hello", 5);
	assert_int_equal(sp_loop_bufs_out(l), 1);
	/* data already there, then the end of file */
	assert_int_equal(write(sv[1], "again", 5), 5);
	assert_int_equal(sp_loop_recv_into(l, sp_loop_tag(OP_A, 1, 0), sv[0], mine, sizeof(mine)), 0);
	run_until(l, 3, 2000);
	assert_int_equal(calls[2].c.res, 5);
	assert_memory_equal(mine, "again", 5);
	shutdown(sv[1], SHUT_WR);
	assert_int_equal(sp_loop_recv_into(l, sp_loop_tag(OP_A, 1, 0), sv[0], mine, sizeof(mine)), 0);
	run_until(l, 4, 2000);
	assert_int_equal(calls[3].c.res, 0);
	assert_int_equal(sp_loop_bufs_out(l), 1);
	sp_loop_buf_put(l, calls[0].c.bid);
}

static void test_loop_one_shot_recv_takes_one_buffer_and_ends(void **state)
{
	int *sv;
	sp_loop_t *l = open_loop(state, &sv);
	put_bufs = false;
	assert_int_equal(sp_loop_bufs_init(l, 4, 8), 0);
	/* more than one buffer's worth waits on the socket */
	assert_int_equal(write(sv[1], "0123456789abcdef0123", 20), 20);
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_B, 1, 0), sv[0], false), 0);
	run_until(l, 1, 2000);
	run_for(l, 100);
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
}

static void test_loop_send_completes_with_bytes_taken_never_inside_the_call(void **state)
{
	int *sv;
	sp_loop_t *l = open_loop(state, &sv);
	char buf[16] = {0};
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
}

static void test_loop_send_waits_for_room_when_the_peer_is_full(void **state)
{
	int *sv;
	sp_loop_t *l = open_loop(state, &sv);
	static char sink[1 << 16];
	fill(sv[0]);
	assert_int_equal(sp_loop_send(l, sp_loop_tag(OP_C, 1, 0), sv[0], "x", 1), 0);
	run_until(l, 1, 200);
	assert_int_equal(ncalls, 0);
	while (read(sv[1], sink, sizeof(sink)) > 0)
		;
	run_until(l, 1, 2000);
	assert_int_equal(ncalls, 1);
	assert_int_equal(calls[0].c.res, 1);
}

static void test_loop_connect_reports_refused(void **state)
{
	sp_loop_t *l = open_loop(state, NULL);
	struct sockaddr_in a;
	close(th_tcp_listener(&a, 1)); /* nothing listens on a now */
	assert_int_equal(connect_and_wait(l, &a, 1000), -ECONNREFUSED);
}

static void test_loop_connect_succeeds(void **state)
{
	sp_loop_t *l = open_loop(state, NULL);
	struct sockaddr_in a;
	own(th_tcp_listener(&a, 4));
	assert_int_equal(connect_and_wait(l, &a, 1000), 0);
	/* the connect timeout does not fire later */
	run_until(l, 2, 1200);
	assert_int_equal(ncalls, 1);
}

/* A listener whose accept queue is full drops further SYNs, so a connect
 * to it hangs until its timeout. */
static void test_loop_connect_times_out_with_etimedout(void **state)
{
	sp_loop_t *l = open_loop(state, NULL);
	struct sockaddr_in a;
	own(th_tcp_listener(&a, 0));
	for (unsigned i = 0; i < 4; i++) {
		int fd = own(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
		connect(fd, (struct sockaddr *)&a, sizeof(a));
	}
	usleep(50 * 1000);
	uint64_t t0 = th_mono_ms();
	assert_int_equal(connect_and_wait(l, &a, 150), -ETIMEDOUT);
	uint64_t took = th_mono_ms() - t0;
	assert_true(took >= 140 && took < 1000);
}

static void test_loop_poll_completes_once_readable(void **state)
{
	int *sv;
	sp_loop_t *l = open_loop(state, &sv);
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
}

static void test_loop_cancel_ends_only_the_named_op(void **state)
{
	int *sv;
	sp_loop_t *l = open_loop(state, &sv);
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
}

static void test_loop_cancel_fd_ends_every_op_on_it(void **state)
{
	int *sv;
	sp_loop_t *l = open_loop(state, &sv);
	fill(sv[0]);
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
}

static void test_loop_drops_completions_of_a_reused_slot_and_returns_their_buffer(void **state)
{
	int *sv;
	sp_loop_t *l = open_loop(state, &sv);
	static uint32_t gens[4]; /* outlives the test: the teardown frees the loop */
	sp_loop_stats_t st;
	memset(gens, 0, sizeof(gens));
	sp_loop_on(l, OP_A, record, true);
	sp_loop_set_gens(l, gens, 4);
	assert_int_equal(sp_loop_bufs_init(l, 4, 64), 0);
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_A, 2, 0), sv[0], true), 0);
	run_until(l, 1, 50);
	gens[2] = 1; /* slot 2 freed and reused */
	assert_int_equal(write(sv[1], "stale", 5), 5);
	run_for(l, 300);
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
	sp_loop_t *l = open_loop(state, NULL);
	sp_timer_t t, never;
	sp_timer_setup(&t, on_timer, l);
	sp_timer_setup(&never, on_timer, l);
	fired = 0;
	uint64_t start = sp_loop_now(l);
	assert_int_equal(sp_loop_timer_arm(l, &t, start + 80), 0);
	assert_int_equal(sp_loop_timer_arm(l, &never, start + 60), 0);
	sp_loop_timer_disarm(l, &never);
	/* run_once(-1) sleeps only until the timer is due */
	uint64_t t0 = th_mono_ms();
	while (!fired)
		assert_true(sp_loop_run_once(l, -1) >= 0);
	assert_int_equal(fired, 1);
	assert_true(fired_at >= start + 80);
	assert_true(th_mono_ms() - t0 < 1000);
	assert_true(sp_loop_now(l) >= start + 80);
	assert_int_equal(sp_loop_run_once(l, 30), 0);
	assert_int_equal(fired, 1);
}

static void test_loop_second_reader_on_one_fd_is_refused_on_epoll(void **state)
{
	int *sv;
	sp_loop_t *l = open_loop(state, &sv);
	assert_int_equal(sp_loop_poll(l, sp_loop_tag(OP_A, 1, 0), sv[0], false), 0);
	int ret = sp_loop_poll(l, sp_loop_tag(OP_B, 1, 0), sv[0], false);
	if (sp_loop_backend(l) == SP_LOOP_EPOLL)
		assert_int_equal(ret, -EBUSY);
	/* a writer beside the reader is fine on both */
	assert_int_equal(sp_loop_poll(l, sp_loop_tag(OP_C, 1, 0), sv[0], true), 0);
	sp_loop_cancel_fd(l, sv[0]);
	run_until(l, ret == 0 ? 3 : 2, 2000);
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

/* ---- readiness and turns (perf) ------------------------------------------ */

/* Turn the loop n times without sleeping. */
static void spin(sp_loop_t *l, int n)
{
	while (n-- > 0)
		assert_true(sp_loop_run_once(l, 0) >= 0);
}

/* The copy engine re-arms a one-shot recv after every message; on epoll the
 * recv that emptied the socket is remembered, so the re-armed one waits for
 * the next edge instead of paying a recv(2) that says EAGAIN. */
static void test_loop_epoll_rearmed_recv_after_a_short_read_issues_no_empty_recv(void **state)
{
	int *sv;
	sp_loop_t *l = open_loop(state, &sv);
	sp_loop_stats_t st;
	assert_int_equal(sp_loop_bufs_init(l, 4, 64), 0);
	assert_int_equal(write(sv[1], "abc", 3), 3);
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_B, 1, 0), sv[0], false), 0);
	run_until(l, 1, 2000);
	assert_string_equal(calls[0].data, "abc");
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_B, 1, 0), sv[0], false), 0);
	spin(l, 5);
	assert_int_equal(ncalls, 1);
	sp_loop_stats(l, &st);
	assert_int_equal(st.recv_calls, 1);
	assert_int_equal(st.recv_empty, 0);
	/* the next edge starts it */
	assert_int_equal(write(sv[1], "def", 3), 3);
	run_until(l, 2, 2000);
	assert_string_equal(calls[1].data, "def");
	sp_loop_stats(l, &st);
	assert_int_equal(st.recv_calls, 2);
	assert_int_equal(st.recv_empty, 0);
}

/* Edge-triggered readiness is reported once: data that arrived while no
 * recv waited, and an end of file that came in the same edge as the last
 * data, must still reach the recv armed afterwards. */
static void test_loop_recv_armed_after_the_edge_still_gets_the_data_and_the_eof(void **state)
{
	int *sv;
	sp_loop_t *l = open_loop(state, &sv);
	assert_int_equal(sp_loop_bufs_init(l, 4, 64), 0);
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_B, 1, 0), sv[0], false), 0);
	assert_int_equal(write(sv[1], "one", 3), 3);
	run_until(l, 1, 2000);
	assert_string_equal(calls[0].data, "one");
	/* no recv armed: the edge for "two" is seen and must be remembered */
	assert_int_equal(write(sv[1], "two", 3), 3);
	spin(l, 3);
	assert_int_equal(ncalls, 1);
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_B, 1, 0), sv[0], false), 0);
	run_until(l, 2, 2000);
	assert_int_equal(ncalls, 2);
	assert_string_equal(calls[1].data, "two");
	/* data and end of file in one edge: the short read must not hide it */
	assert_int_equal(write(sv[1], "end", 3), 3);
	assert_int_equal(shutdown(sv[1], SHUT_WR), 0);
	spin(l, 3);
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_B, 1, 0), sv[0], false), 0);
	run_until(l, 3, 2000);
	assert_string_equal(calls[2].data, "end");
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_B, 1, 0), sv[0], false), 0);
	run_until(l, 4, 2000);
	assert_int_equal(ncalls, 4);
	assert_int_equal(calls[3].c.res, 0);
	assert_false(calls[3].c.has_buf);
}

/* A recv armed while the pool is empty ends with -ENOBUFS at once, as
 * io_uring's buffer select does, even on a socket with nothing to read: on
 * epoll it must not wait for the next edge (readiness memory says the
 * socket is empty) and then take whatever buffer was given back meanwhile,
 * ahead of the owner's queue of starved readers (docs/BENCHMARKS.md,
 * finding 12). */
static void test_loop_recv_armed_with_the_pool_empty_ends_with_enobufs_without_waiting_for_data(
    void **state)
{
	int *sv;
	sp_loop_t *l = open_loop(state, &sv);
	put_bufs = false; /* the handler keeps every buffer */
	assert_int_equal(sp_loop_bufs_init(l, 1, 16), 0);
	assert_int_equal(write(sv[1], "abc", 3), 3);
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_B, 1, 0), sv[0], false), 0);
	run_until(l, 1, 2000);
	assert_string_equal(calls[0].data, "abc");
	assert_int_equal(sp_loop_bufs_out(l), 1);
	/* drained socket, empty pool: no data will come */
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_B, 1, 0), sv[0], false), 0);
	run_until(l, 2, 500);
	assert_int_equal(ncalls, 2);
	assert_int_equal(calls[1].c.res, -ENOBUFS);
	assert_false(calls[1].c.has_buf);
	/* the buffer back and data later: a recv armed then still gets it */
	sp_loop_buf_put(l, calls[0].c.bid);
	put_bufs = true;
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_B, 1, 0), sv[0], false), 0);
	run_for(l, 50);
	assert_int_equal(ncalls, 2);
	assert_int_equal(write(sv[1], "def", 3), 3);
	run_until(l, 3, 2000);
	assert_string_equal(calls[2].data, "def");
	assert_int_equal(sp_loop_bufs_out(l), 0);
}

/* A handler may close a descriptor and get its number back for a new
 * socket while the events of the same wait are still being handed out; an
 * event collected for the old file must not complete the new socket's
 * connect (epoll takes "writable, no error" as connected without asking
 * the socket). */
static struct {
	int old_fd, new_fd;
	struct sockaddr_in to;
} reuse;

static void close_and_reuse_on_recv(void *ctx, unsigned op, uint32_t slot, const sp_completion_t *c)
{
	record(ctx, op, slot, c);
	if (reuse.new_fd >= 0)
		return;
	sp_loop_close(cur, reuse.old_fd);
	reuse.new_fd = own(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
	assert_int_equal(reuse.new_fd, reuse.old_fd);
	assert_int_equal(sp_loop_connect(cur, sp_loop_tag(OP_B, 7, 0), reuse.new_fd,
					 (struct sockaddr *)&reuse.to, sizeof(reuse.to), 150),
			 0);
}

static void test_loop_connect_on_a_reused_fd_number_ignores_the_old_files_events(void **state)
{
	int *sv;
	sp_loop_t *l = open_loop(state, &sv);
	int old[2];
	own(th_tcp_listener(&reuse.to, 0));
	for (int i = 0; i < 4; i++) { /* a full accept queue: the connect hangs */
		int fd = own(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
		connect(fd, (struct sockaddr *)&reuse.to, sizeof(reuse.to));
	}
	usleep(50 * 1000);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, old), 0);
	own(old[1]); /* old[0] is closed by the handler, its number then owned */
	reuse.old_fd = old[0];
	reuse.new_fd = -1;
	sp_loop_on(l, OP_A, close_and_reuse_on_recv, false);
	assert_int_equal(sp_loop_bufs_init(l, 4, 64), 0);
	/* readable first, then the writable socket whose number is reused:
	 * one wait collects both, in that order */
	assert_int_equal(write(sv[1], "go", 2), 2);
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_A, 1, 0), sv[0], true), 0);
	assert_int_equal(sp_loop_poll(l, sp_loop_tag(OP_C, 1, 0), old[0], true), 0);
	uint64_t deadline = th_mono_ms() + 1000;
	unsigned connects = 0;
	int res = 1;
	while (th_mono_ms() < deadline && !connects) {
		assert_true(sp_loop_run_once(l, 20) >= 0);
		for (unsigned i = 0; i < ncalls; i++)
			if (calls[i].op == OP_B) {
				connects++;
				res = calls[i].c.res;
			}
	}
	assert_int_equal(connects, 1);
	assert_int_equal(res, -ETIMEDOUT);
	sp_loop_cancel_fd(l, sv[0]);
	run_until(l, ncalls + 1, 500);
}

/* ---- lent buffers (loop.h) ----------------------------------------------
 *
 * A multishot recv on a group takes the buffers lent to it and no other,
 * oldest first, and ends with -ENOBUFS once they are all in use, however
 * much the peer sends; lent buffers stay counted as out; unlending gives
 * them back to the pool. That is what keeps the copy relay's per-direction
 * bound (SP_COPY_QMAX) exact with its recv armed across messages. io_uring
 * has it; on epoll lending is absent and says so. */

/* The fixture's loop and stream pair with a pool of nbufs buffers of bufsz
 * bytes, whose handler keeps every buffer (a reader that does not send on:
 * the slow peer's case). */
static sp_loop_t *lend_loop(void **state, uint32_t nbufs, uint32_t bufsz)
{
	int *sv;
	sp_loop_t *l = open_loop(state, &sv);
	put_bufs = false;
	assert_int_equal(sp_loop_bufs_init(l, nbufs, bufsz), 0);
	return l;
}

/* n buffers the caller holds: one-shot pool recvs of one byte each. */
static void take(sp_loop_t *l, uint16_t *bids, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		unsigned before = ncalls;
		assert_int_equal(write(fx.sv[1], "x", 1), 1);
		assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_A, 9, 0), fx.sv[0], false), 0);
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
	sp_loop_t *l = lend_loop(state, 16, 8);
	if (!sp_loop_can_lend(l))
		th_skip("io_uring here has no provided-buffer groups (IORING_OP_PROVIDE_BUFFERS)");
	uint16_t bids[2];
	take(l, bids, 2);
	assert_int_equal(sp_loop_bufs_out(l), 2);
	assert_int_equal(sp_loop_buf_lend(l, 7, bids[0]), 0);
	assert_int_equal(sp_loop_buf_lend(l, 7, bids[1]), 0);
	assert_int_equal(sp_loop_bufs_out(l), 2); /* lent is still out */
	assert_int_equal(sp_loop_recv_lent(l, sp_loop_tag(OP_A, 1, 0), fx.sv[0], 7), 0);
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
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_A, 1, 0), fx.sv[0], true), 0);
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
	sp_loop_t *l = lend_loop(state, 4, 16);
	if (!sp_loop_can_lend(l))
		th_skip("io_uring here has no provided-buffer groups (IORING_OP_PROVIDE_BUFFERS)");
	uint16_t bid;
	take(l, &bid, 1);
	assert_int_equal(sp_loop_buf_lend(l, 3, bid), 0);
	assert_int_equal(sp_loop_recv_lent(l, sp_loop_tag(OP_A, 1, 0), fx.sv[0], 3), 0);
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
	sp_loop_t *l = lend_loop(state, 4, 8);
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
	assert_int_equal(sp_loop_recv(l, sp_loop_tag(OP_A, 1, 0), fx.sv[0], true), 0);
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
	sp_loop_t *l = lend_loop(state, 4, 8);
	assert_false(sp_loop_can_lend(l));
	assert_int_equal(sp_loop_buf_lend(l, 1, 0), -EOPNOTSUPP);
	assert_int_equal(sp_loop_recv_lent(l, sp_loop_tag(OP_A, 1, 0), fx.sv[0], 1),
			 -EOPNOTSUPP);
}

/* ---- sockets connected in the ring (io_uring) ------------------------------ */

/* The loop for the socket-connect tests, SKIPPED where the kernel lacks it. */
static sp_loop_t *sockconn_loop(void **state)
{
	sp_loop_t *l = open_loop(state, NULL);
	if (!sp_loop_can_socket_connect(l))
		th_skip("this kernel has no IORING_OP_FIXED_FD_INSTALL (Linux 6.8)");
	return l;
}

/* Wait up to ms for fd to be readable. */
static bool readable_within(int fd, int ms)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	return poll(&p, 1, ms) == 1;
}

/* sp_loop_socket_connect to a, tagged slot 2, with a 1 s timeout. */
static int sockconn_to(sp_loop_t *l, const struct sockaddr_in *a)
{
	return sp_loop_socket_connect(l, sp_loop_tag(OP_A, 2, 0), (const struct sockaddr *)a, sizeof(*a),
				      1000);
}

static void test_socket_connect_gives_a_nodelay_descriptor_then_the_connect(void **state)
{
	sp_loop_t *l = sockconn_loop(state);
	struct sockaddr_in a;
	int lfd = own(th_tcp_listener(&a, 4));
	assert_int_equal(sockconn_to(l, &a), 0);
	assert_int_equal(ncalls, 0); /* never from inside the call */
	run_until(l, 2, 2000);
	assert_int_equal(ncalls, 2);
	assert_true(calls[0].c.more);
	int fd = own(calls[0].c.res);
	assert_false(calls[1].c.more);
	assert_int_equal(calls[1].c.res, 0);
	assert_int_equal(calls[1].slot, 2);
	assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
	assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	int v = 0;
	socklen_t vl = sizeof(v);
	assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &vl), 0);
	assert_int_equal(v, 1);
	/* connected to the listener: what one end sends, the other reads */
	int afd = own(accept(lfd, NULL, NULL));
	assert_int_equal(send(fd, "x", 1, 0), 1);
	char c;
	assert_true(readable_within(afd, 1000));
	assert_int_equal(recv(afd, &c, 1, 0), 1);
	/* the timeout linked to the connect does not fire later */
	run_until(l, 3, 1200);
	assert_int_equal(ncalls, 2);
}

/* The ring's table lets go of the socket once the connect is over, so the
 * descriptor is its only reference: closing it sends the FIN. */
static void test_socket_connect_leaves_the_socket_to_its_descriptor(void **state)
{
	sp_loop_t *l = sockconn_loop(state);
	struct sockaddr_in a;
	int lfd = own(th_tcp_listener(&a, 4));
	assert_int_equal(sockconn_to(l, &a), 0);
	run_until(l, 2, 2000);
	assert_int_equal(ncalls, 2);
	int fd = calls[0].c.res;
	assert_true(fd >= 0);
	int afd = own(accept(lfd, NULL, NULL));
	run_for(l, 50); /* the turn that closes the table's slot */
	sp_loop_close(l, fd);
	run_for(l, 50);
	char c;
	assert_true(readable_within(afd, 1000));
	assert_int_equal(recv(afd, &c, 1, 0), 0);
}

static void test_socket_connect_reports_refused_after_its_descriptor(void **state)
{
	sp_loop_t *l = sockconn_loop(state);
	struct sockaddr_in a;
	close(th_tcp_listener(&a, 1)); /* nothing listens on a now */
	assert_int_equal(sockconn_to(l, &a), 0);
	run_until(l, 2, 2000);
	assert_int_equal(ncalls, 2);
	assert_true(calls[0].c.more);
	own(calls[0].c.res);
	assert_false(calls[1].c.more);
	assert_int_equal(calls[1].c.res, -ECONNREFUSED);
}

/* Every slot of the table serving a connect: -EBUSY (the caller uses
 * socket(2)); once those connects are over, the slots serve again. */
static void test_socket_connect_is_busy_while_every_slot_serves_a_connect(void **state)
{
	sp_loop_t *l = sockconn_loop(state);
	struct sockaddr_in a;
	own(th_tcp_listener(&a, 512));
	unsigned n = 0;
	int ret;
	while ((ret = sockconn_to(l, &a)) == 0)
		n++;
	assert_int_equal(ret, -EBUSY);
	assert_true(n >= 1 && n * 2 <= sizeof(calls) / sizeof(calls[0]));
	run_until(l, 2 * n, 5000);
	assert_int_equal(ncalls, 2 * n);
	for (unsigned i = 0; i < ncalls; i++)
		if (calls[i].c.more)
			sp_loop_close(l, calls[i].c.res);
		else
			assert_int_equal(calls[i].c.res, 0);
	run_for(l, 50); /* the linked timeouts' completions give the slots back */
	ncalls = 0;
	assert_int_equal(sockconn_to(l, &a), 0);
	run_until(l, 2, 2000);
	assert_int_equal(ncalls, 2);
	own(calls[0].c.res);
	assert_int_equal(calls[1].c.res, 0);
}

/* epoll has no ring to make sockets in: the shard asks and uses socket(2). */
static void test_socket_connect_is_absent_on_epoll_and_says_so(void **state)
{
	sp_loop_t *l = open_loop(state, NULL);
	struct sockaddr_in a = {.sin_family = AF_INET};
	assert_false(sp_loop_can_socket_connect(l));
	assert_int_equal(sockconn_to(l, &a), -EOPNOTSUPP);
}

/* close_later: closed by the end of the turn (io_uring: an SQE of the turn's
 * batch), so the peer sees the end of file after one turn. */
static void test_loop_close_later_closes_by_the_end_of_the_turn(void **state)
{
	int *sv;
	sp_loop_t *l = open_loop(state, &sv);
	int fd = sv[0];
	sv[0] = -1; /* the loop's to close now */
	sp_loop_close_later(l, fd);
	assert_true(sp_loop_run_once(l, 0) >= 0);
	char c;
	assert_true(readable_within(sv[1], 1000));
	assert_int_equal(recv(sv[1], &c, 1, MSG_DONTWAIT), 0);
	assert_int_equal(fcntl(fd, F_GETFD), -1);
}

/* A loop freed before its next turn still closes what it was asked to. */
static void test_loop_close_later_then_free_still_closes(void **state)
{
	int *sv;
	sp_loop_t *l = open_loop(state, &sv);
	int fd = sv[0];
	sv[0] = -1;
	sp_loop_close_later(l, fd);
	sp_loop_free(l);
	fx.l = NULL;
	char c;
	assert_true(readable_within(sv[1], 1000));
	assert_int_equal(recv(sv[1], &c, 1, MSG_DONTWAIT), 0);
	close(sv[1]);
	sv[1] = -1;
}

/* One body, run on each backend under a name that says which. */
#define ON(f, be, label)                                                                           \
	{                                                                                          \
		.name = #f " on " label, .test_func = f, .setup_func = fx_setup,                   \
		.teardown_func = fx_teardown, .initial_state = (void *)(uintptr_t)(be)             \
	}
#define BOTH(f) ON(f, SP_LOOP_URING, "io_uring"), ON(f, SP_LOOP_EPOLL, "epoll")

int main(void)
{
	const struct CMUnitTest tests[] = {
	    BOTH(test_loop_accept_is_multishot_and_gives_nonblocking_fds),
	    BOTH(test_loop_accept_is_woken_past_an_exclusive_waiter_that_never_accepts),
	    BOTH(test_loop_recv_lands_data_in_pool_buffers_until_eof),
	    BOTH(test_loop_recv_ends_with_enobufs_when_the_pool_is_empty),
	    BOTH(test_loop_recv_into_lands_data_in_the_callers_buffer_with_the_pool_empty),
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
	    ON(test_loop_epoll_rearmed_recv_after_a_short_read_issues_no_empty_recv, SP_LOOP_EPOLL,
	       "epoll"),
	    BOTH(test_loop_recv_armed_after_the_edge_still_gets_the_data_and_the_eof),
	    BOTH(test_loop_recv_armed_with_the_pool_empty_ends_with_enobufs_without_waiting_for_data),
	    BOTH(test_loop_connect_on_a_reused_fd_number_ignores_the_old_files_events),
	    ON(test_lent_recv_takes_only_the_lent_buffers_however_much_the_peer_sends, SP_LOOP_URING,
	       "io_uring"),
	    ON(test_lent_recv_stays_armed_while_the_reader_lends_each_buffer_back, SP_LOOP_URING,
	       "io_uring"),
	    ON(test_unlend_gives_lent_buffers_back_to_the_pool, SP_LOOP_URING, "io_uring"),
	    ON(test_lending_is_absent_on_epoll_and_says_so, SP_LOOP_EPOLL, "epoll"),
	    ON(test_socket_connect_gives_a_nodelay_descriptor_then_the_connect, SP_LOOP_URING,
	       "io_uring"),
	    ON(test_socket_connect_leaves_the_socket_to_its_descriptor, SP_LOOP_URING, "io_uring"),
	    ON(test_socket_connect_reports_refused_after_its_descriptor, SP_LOOP_URING, "io_uring"),
	    ON(test_socket_connect_is_busy_while_every_slot_serves_a_connect, SP_LOOP_URING,
	       "io_uring"),
	    ON(test_socket_connect_is_absent_on_epoll_and_says_so, SP_LOOP_EPOLL, "epoll"),
	    BOTH(test_loop_close_later_closes_by_the_end_of_the_turn),
	    BOTH(test_loop_close_later_then_free_still_closes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
