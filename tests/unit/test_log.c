/* log: a line is one write of at most PIPE_BUF bytes, so it reaches a pipe
 * whole; after sp_log_nonblocking a full stderr pipe costs lines (counted,
 * then reported) and never blocks the caller. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "runtime/log.h"
#include "tests/unit/helpers.h"

static int saved_stderr = -1;
static int pipefd[2];

/* stderr becomes the write end of a fresh one-page pipe. */
static int redirect(void **state)
{
	(void)state;
	saved_stderr = dup(STDERR_FILENO);
	assert_int_equal(pipe(pipefd), 0);
	(void)fcntl(pipefd[1], F_SETPIPE_SZ, 4096);
	assert_int_equal(dup2(pipefd[1], STDERR_FILENO), STDERR_FILENO);
	return 0;
}

static int restore(void **state)
{
	(void)state;
	dup2(saved_stderr, STDERR_FILENO);
	close(saved_stderr);
	close(pipefd[0]);
	close(pipefd[1]);
	return 0;
}

static void test_log_full_pipe_drops_lines_instead_of_blocking_then_says_so(void **state)
{
	(void)state;
	char buf[65536];
	sp_log_setup("test", SP_LOG_INFO);
	assert_int_equal(sp_log_nonblocking(), 0);
	/* the pipe descriptor itself stays blocking for whoever shares it */
	assert_false(fcntl(STDERR_FILENO, F_GETFL) & O_NONBLOCK);

	uint64_t t0 = th_mono_ms();
	for (int i = 0; i < 200; i++)
		sp_warn("line %03d %s", i, "padding padding padding padding padding padding");
	assert_true(th_mono_ms() - t0 < 1000); /* a blocking write would hang here */
	uint64_t dropped = sp_log_dropped();
	assert_true(dropped > 0 && dropped < 200);

	/* what got in is whole lines (a line, or a note of lines lost) */
	ssize_t n = read(pipefd[0], buf, sizeof(buf) - 1);
	assert_true(n > 0);
	buf[n] = '\0';
	assert_int_equal(buf[n - 1], '\n');
	for (char *l = buf, *nl; (nl = strchr(l, '\n')); l = nl + 1) {
		*nl = '\0';
		assert_true(strncmp(l, "test: warning: line ", 20) == 0 ||
			    (strncmp(l, "test: warning: ", 15) == 0 &&
			     strstr(l, " log lines dropped: stderr was not being read") != NULL));
	}

	/* the reader is back: the next line first says how many were lost */
	sp_warn("after");
	n = read(pipefd[0], buf, sizeof(buf) - 1);
	assert_true(n > 0);
	buf[n] = '\0';
	unsigned long long lost = 0;
	char tail[64] = "";
	assert_int_equal(sscanf(buf, "test: warning: %llu log lines dropped: stderr was not being "
				     "read\ntest: warning: %63[^\n]",
				&lost, tail),
			 2);
	assert_true(lost > 0 && lost <= dropped);
	assert_string_equal(tail, "after");
}

static void test_log_long_line_is_cut_to_one_atomic_write(void **state)
{
	(void)state;
	char big[3 * PIPE_BUF], buf[2 * PIPE_BUF];
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	sp_log_setup("test", SP_LOG_INFO);
	sp_warn("%s", big);
	ssize_t n = read(pipefd[0], buf, sizeof(buf));
	assert_true(n > 0 && n <= PIPE_BUF);
	assert_int_equal(n, SP_LOG_LINE_MAX - 1);
	assert_int_equal(buf[n - 1], '\n');
}

static void test_log_below_level_writes_nothing(void **state)
{
	(void)state;
	char buf[64];
	sp_log_setup("test", SP_LOG_WARN);
	sp_info("quiet");
	fcntl(pipefd[0], F_SETFL, O_NONBLOCK);
	assert_int_equal(read(pipefd[0], buf, sizeof(buf)), -1);
	fcntl(pipefd[0], F_SETFL, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_log_long_line_is_cut_to_one_atomic_write, redirect,
					    restore),
	    cmocka_unit_test_setup_teardown(test_log_below_level_writes_nothing, redirect, restore),
	    cmocka_unit_test_setup_teardown(
		test_log_full_pipe_drops_lines_instead_of_blocking_then_says_so, redirect, restore),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
