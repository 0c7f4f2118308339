/* listen: a listener group grows to one SO_REUSEPORT socket per slot, and a
 * failed reload shrinks it back: the sockets it opened are closed, so none
 * is left in the reuseport group taking connections nobody accepts. */
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
#include <unistd.h>

#include "proxy/listen.h"
#include "tests/unit/helpers.h"

/* A loopback address with a port free right now. */
static void free_addr(sp_addr_t *a)
{
	struct sockaddr_in *in = (struct sockaddr_in *)&a->ss;
	memset(a, 0, sizeof(*a));
	close(th_loopback_bound(SOCK_STREAM, in));
	a->len = sizeof(*in);
	snprintf(a->text, sizeof(a->text), "127.0.0.1:%u", ntohs(in->sin_port));
}

static bool is_open(int fd)
{
	return fcntl(fd, F_GETFD) >= 0;
}

static void test_lgroup_shrink_closes_only_the_sockets_past_the_mark(void **state)
{
	(void)state;
	sp_lgroup_t g;
	char err[256];
	memset(&g, 0, sizeof(g));
	free_addr(&g.addr);
	assert_int_equal(sp_lgroup_grow(&g, 2, "l", err, sizeof(err)), 0);
	int kept[2] = {g.fds[0], g.fds[1]};
	assert_int_equal(sp_lgroup_grow(&g, 4, "l", err, sizeof(err)), 0);
	int added[2] = {g.fds[2], g.fds[3]};
	sp_lgroup_shrink(&g, 2);
	assert_int_equal(g.nfds, 2);
	assert_true(is_open(kept[0]) && is_open(kept[1]));
	assert_false(is_open(added[0]));
	assert_false(is_open(added[1]));
	sp_lgroup_shrink(&g, 0);
	assert_int_equal(g.nfds, 0);
	assert_false(is_open(kept[0]));
	/* nothing of ours is bound there any more */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&g.addr.ss, g.addr.len), 0);
	close(fd);
}

static void test_lgroup_grow_reports_the_failing_step_and_where(void **state)
{
	(void)state;
	sp_lgroup_t g;
	char err[256];
	memset(&g, 0, sizeof(g));
	free_addr(&g.addr);
	/* a plain (no SO_REUSEPORT) listener holds the port */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&g.addr.ss, g.addr.len), 0);
	assert_int_equal(listen(fd, 1), 0);
	assert_int_equal(sp_lgroup_grow(&g, 2, "listeners[1].listen x", err, sizeof(err)),
			 -EADDRINUSE);
	assert_int_equal(g.nfds, 0);
	assert_non_null(strstr(err, "listeners[1].listen x: bind: "));
	close(fd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_lgroup_shrink_closes_only_the_sockets_past_the_mark),
	    cmocka_unit_test(test_lgroup_grow_reports_the_failing_step_and_where),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
