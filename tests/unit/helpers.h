/* Unit-test helpers more than one test file needs: the clock, skipping a
 * test that cannot run here, and loopback sockets. One home for each, so a
 * fix (say, to how a skip is reported) reaches every test. Include after
 * <cmocka.h>. */
#ifndef SP_TEST_HELPERS_H
#define SP_TEST_HELPERS_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "runtime/clock.h"

/* Milliseconds on CLOCK_MONOTONIC: the product's own clock, so a test's
 * deadline and the code's timers count the same time. */
static inline uint64_t th_mono_ms(void)
{
	return sp_clock_ms();
}

/* Report why, then mark the running test SKIPPED (never PASSED): the
 * kernel, the privileges or the CPUs it needs are not here. */
static inline void th_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void th_skip(const char *fmt, ...)
{
	char why[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	print_message("[  SKIP    ] %s\n", why);
	skip();
}

/* A socket of `type` (SOCK_STREAM | flags, ...) bound to 127.0.0.1 on a
 * port the kernel picks; *a gets the address. Not listening: a TCP connect
 * to it is refused while the socket lives. */
static inline int th_loopback_bound(int type, struct sockaddr_in *a)
{
	socklen_t len = sizeof(*a);
	int fd = socket(AF_INET, type, 0);
	assert_true(fd >= 0);
	memset(a, 0, sizeof(*a));
	a->sin_family = AF_INET;
	a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)a, sizeof(*a)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)a, &len), 0);
	return fd;
}

/* A non-blocking TCP listener on 127.0.0.1 with this backlog; *a gets its
 * address. With backlog 0 and one connection queued, further SYNs are
 * dropped, so a connect to it stays in flight. */
static inline int th_tcp_listener(struct sockaddr_in *a, int backlog)
{
	int fd = th_loopback_bound(SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, a);
	assert_int_equal(listen(fd, backlog), 0);
	return fd;
}

/* A blocking client connected to a. */
static inline int th_tcp_client(const struct sockaddr_in *a)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(connect(fd, (const struct sockaddr *)a, sizeof(*a)), 0);
	return fd;
}

#endif
