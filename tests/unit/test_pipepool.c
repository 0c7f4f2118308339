/* pipepool: empty pipes given back are handed out again; pipes with data in
 * them, or past the pool's cap, are closed instead; freeing the pool closes
 * what it holds. A descriptor is closed when fcntl(F_GETFD) fails with EBADF. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "runtime/pipepool.h"

static bool is_open(int fd)
{
	return fcntl(fd, F_GETFD) != -1;
}

static void assert_closed(int fd)
{
	errno = 0;
	assert_int_equal(fcntl(fd, F_GETFD), -1);
	assert_int_equal(errno, EBADF);
}

/* Bytes waiting in the pipe of read end fd. */
static int queued(int fd)
{
	int n = -1;
	assert_int_equal(ioctl(fd, FIONREAD, &n), 0);
	return n;
}

/* Descriptors this process has open. */
static unsigned open_fds(void)
{
	unsigned n = 0;
	DIR *d = opendir("/proc/self/fd");
	assert_non_null(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

/* The pipe carries bytes from fds[1] to fds[0]. */
static void assert_pipe_works(const int fds[2])
{
	char buf[8];
	assert_int_equal(write(fds[1], "ping", 4), 4);
	assert_int_equal(read(fds[0], buf, sizeof(buf)), 4);
	assert_memory_equal(buf, "ping", 4);
}

static void test_pipepool_get_gives_a_non_blocking_close_on_exec_pipe(void **state)
{
	(void)state;
	sp_pipepool_t p;
	int fds[2] = {-1, -1};
	char c;
	assert_int_equal(sp_pipepool_init(&p, 4, 0), 0);
	assert_int_equal(sp_pipepool_get(&p, fds), 0);
	assert_int_equal(p.live, 1);
	assert_int_equal(p.n, 0);
	assert_pipe_works(fds);
	for (int i = 0; i < 2; i++) {
		assert_true(fcntl(fds[i], F_GETFL) & O_NONBLOCK);
		assert_true(fcntl(fds[i], F_GETFD) & FD_CLOEXEC);
	}
	/* empty: a read would block, and does not */
	if (fcntl(fds[0], F_GETFL) & O_NONBLOCK) {
		assert_int_equal(read(fds[0], &c, 1), -1);
		assert_int_equal(errno, EAGAIN);
	}
	sp_pipepool_put(&p, fds, 1);
	sp_pipepool_free(&p);
}

static void test_pipepool_empty_pipe_put_back_is_reused(void **state)
{
	(void)state;
	sp_pipepool_t p;
	int fds[2], again[2];
	assert_int_equal(sp_pipepool_init(&p, 4, 0), 0);
	assert_int_equal(sp_pipepool_get(&p, fds), 0);
	int r = fds[0], w = fds[1];
	sp_pipepool_put(&p, fds, 1);
	assert_int_equal(fds[0], -1); /* the caller's copy is gone */
	assert_int_equal(fds[1], -1);
	assert_int_equal(p.n, 1);
	assert_int_equal(p.live, 0);
	assert_true(is_open(r) && is_open(w));

	assert_int_equal(sp_pipepool_get(&p, again), 0);
	assert_int_equal(again[0], r);
	assert_int_equal(again[1], w);
	assert_int_equal(p.n, 0);
	assert_int_equal(p.live, 1);
	assert_pipe_works(again);
	sp_pipepool_put(&p, again, 1);
	sp_pipepool_free(&p);
}

static void test_pipepool_pooled_pipes_come_back_as_the_same_pairs(void **state)
{
	(void)state;
	enum { N = 3 };
	sp_pipepool_t p;
	int fds[N][2], kept[N][2], got[N][2];
	assert_int_equal(sp_pipepool_init(&p, N, 0), 0);
	for (int i = 0; i < N; i++)
		assert_int_equal(sp_pipepool_get(&p, fds[i]), 0);
	memcpy(kept, fds, sizeof(fds));
	for (int i = 0; i < N; i++)
		sp_pipepool_put(&p, fds[i], 1);
	for (int i = 0; i < N; i++)
		assert_int_equal(sp_pipepool_get(&p, got[i]), 0);
	assert_int_equal(p.n, 0);
	/* each pipe handed out once, read end with its own write end */
	for (int i = 0; i < N; i++) {
		int match = 0;
		for (int k = 0; k < N; k++)
			match += got[i][0] == kept[k][0] && got[i][1] == kept[k][1];
		assert_int_equal(match, 1);
		for (int k = 0; k < i; k++)
			assert_int_not_equal(got[i][0], got[k][0]);
		assert_pipe_works(got[i]);
	}
	for (int i = 0; i < N; i++)
		sp_pipepool_put(&p, got[i], 1);
	sp_pipepool_free(&p);
}

static void test_pipepool_pipe_with_data_is_closed_not_pooled(void **state)
{
	(void)state;
	sp_pipepool_t p;
	int fds[2], next[2];
	assert_int_equal(sp_pipepool_init(&p, 4, 0), 0);
	assert_int_equal(sp_pipepool_get(&p, fds), 0);
	int r = fds[0], w = fds[1];
	assert_int_equal(write(w, "left", 4), 4);
	sp_pipepool_put(&p, fds, 0);
	assert_int_equal(p.n, 0);
	assert_int_equal(p.live, 0);
	assert_int_equal(fds[0], -1);
	assert_int_equal(fds[1], -1);
	assert_closed(r);
	assert_closed(w);
	/* the next pipe is a fresh one, with no stale bytes in it */
	assert_int_equal(sp_pipepool_get(&p, next), 0);
	assert_int_equal(queued(next[0]), 0);
	sp_pipepool_put(&p, next, 1);
	sp_pipepool_free(&p);
}

static void test_pipepool_keeps_at_most_cap_idle_pipes(void **state)
{
	(void)state;
	enum { CAP = 2, N = 5 };
	sp_pipepool_t p;
	int fds[N][2], kept[N][2];
	unsigned before = open_fds();
	assert_int_equal(sp_pipepool_init(&p, CAP, 0), 0);
	for (int i = 0; i < N; i++)
		assert_int_equal(sp_pipepool_get(&p, fds[i]), 0);
	assert_int_equal(p.live, N);
	assert_int_equal(open_fds(), before + 2 * N);
	memcpy(kept, fds, sizeof(fds));
	for (int i = 0; i < N; i++)
		sp_pipepool_put(&p, fds[i], 1);
	assert_int_equal(p.n, CAP);
	assert_int_equal(p.live, 0);
	/* the first CAP back were pooled, the rest closed */
	for (int i = 0; i < N; i++)
		for (int e = 0; e < 2; e++) {
			if (i < CAP)
				assert_true(is_open(kept[i][e]));
			else
				assert_closed(kept[i][e]);
		}
	assert_int_equal(open_fds(), before + 2 * CAP);
	sp_pipepool_free(&p);
	assert_int_equal(open_fds(), before);
}

static void test_pipepool_cap_zero_pools_nothing(void **state)
{
	(void)state;
	sp_pipepool_t p;
	int fds[2];
	assert_int_equal(sp_pipepool_init(&p, 0, 0), 0);
	assert_int_equal(sp_pipepool_get(&p, fds), 0);
	int r = fds[0], w = fds[1];
	assert_pipe_works(fds);
	sp_pipepool_put(&p, fds, 1);
	assert_int_equal(p.n, 0);
	assert_closed(r);
	assert_closed(w);
	sp_pipepool_free(&p);
}

static void test_pipepool_free_closes_pooled_pipes(void **state)
{
	(void)state;
	sp_pipepool_t p;
	int fds[3][2], kept[3][2];
	unsigned before = open_fds();
	assert_int_equal(sp_pipepool_init(&p, 8, 0), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(sp_pipepool_get(&p, fds[i]), 0);
	memcpy(kept, fds, sizeof(fds));
	for (int i = 0; i < 3; i++)
		sp_pipepool_put(&p, fds[i], 1);
	assert_int_equal(p.n, 3);
	sp_pipepool_free(&p);
	assert_null(p.fds);
	assert_int_equal(p.n, 0);
	for (int i = 0; i < 3; i++) {
		assert_closed(kept[i][0]);
		assert_closed(kept[i][1]);
	}
	assert_int_equal(open_fds(), before);
}

static void test_pipepool_get_put_cycles_leak_no_descriptors(void **state)
{
	(void)state;
	sp_pipepool_t p;
	int a[2], b[2];
	unsigned before = open_fds();
	assert_int_equal(sp_pipepool_init(&p, 1, 0), 0);
	for (int i = 0; i < 200; i++) {
		assert_int_equal(sp_pipepool_get(&p, a), 0);
		assert_int_equal(sp_pipepool_get(&p, b), 0);
		assert_int_equal(write(b[1], "x", 1), 1);
		sp_pipepool_put(&p, a, 1);
		sp_pipepool_put(&p, b, 0); /* holds data: closed */
	}
	assert_int_equal(p.n, 1);
	assert_int_equal(p.live, 0);
	assert_int_equal(open_fds(), before + 2);
	sp_pipepool_free(&p);
	assert_int_equal(open_fds(), before);
}

static void test_pipepool_new_pipes_get_the_configured_size(void **state)
{
	(void)state;
	enum { SIZE = 256 * 1024 };
	sp_pipepool_t p;
	int fds[2], probe[2];
	/* Resizing is best effort (fs.pipe-user-pages-soft, pipe-max-size):
	 * if this process cannot resize a pipe, neither can the pool. */
	assert_int_equal(pipe(probe), 0);
	int dflt = fcntl(probe[0], F_GETPIPE_SZ);
	int can = fcntl(probe[1], F_SETPIPE_SZ, SIZE);
	close(probe[0]);
	close(probe[1]);
	assert_true(dflt > 0 && dflt < SIZE);

	assert_int_equal(sp_pipepool_init(&p, 2, SIZE), 0);
	assert_int_equal(sp_pipepool_get(&p, fds), 0);
	if (can >= SIZE)
		assert_int_equal(fcntl(fds[0], F_GETPIPE_SZ), SIZE);
	else
		print_message("cannot resize pipes here: size not checked\n");
	int got = fcntl(fds[0], F_GETPIPE_SZ);
	sp_pipepool_put(&p, fds, 1);
	/* a reused pipe keeps its size */
	assert_int_equal(sp_pipepool_get(&p, fds), 0);
	assert_int_equal(fcntl(fds[0], F_GETPIPE_SZ), got);
	sp_pipepool_put(&p, fds, 1);
	sp_pipepool_free(&p);

	/* pipe_size 0: the kernel's default */
	assert_int_equal(sp_pipepool_init(&p, 2, 0), 0);
	assert_int_equal(sp_pipepool_get(&p, fds), 0);
	assert_int_equal(fcntl(fds[0], F_GETPIPE_SZ), dflt);
	sp_pipepool_put(&p, fds, 1);
	sp_pipepool_free(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_pipepool_get_gives_a_non_blocking_close_on_exec_pipe),
	    cmocka_unit_test(test_pipepool_empty_pipe_put_back_is_reused),
	    cmocka_unit_test(test_pipepool_pooled_pipes_come_back_as_the_same_pairs),
	    cmocka_unit_test(test_pipepool_pipe_with_data_is_closed_not_pooled),
	    cmocka_unit_test(test_pipepool_keeps_at_most_cap_idle_pipes),
	    cmocka_unit_test(test_pipepool_cap_zero_pools_nothing),
	    cmocka_unit_test(test_pipepool_free_closes_pooled_pipes),
	    cmocka_unit_test(test_pipepool_get_put_cycles_leak_no_descriptors),
	    cmocka_unit_test(test_pipepool_new_pipes_get_the_configured_size),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
