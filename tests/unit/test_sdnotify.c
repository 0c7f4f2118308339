/* sdnotify: the sd_notify(3) datagram protocol without libsystemd: one
 * datagram per call to $NOTIFY_SOCKET, a path or an abstract "@name". */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "runtime/sdnotify.h"

/* A datagram socket bound to name ("@..." abstract); returns the fd. */
static int listen_at(const char *name)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	size_t n = strlen(name);
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	memcpy(sa.sun_path, name, n);
	if (name[0] == '@')
		sa.sun_path[0] = '\0';
	assert_int_equal(bind(fd, (struct sockaddr *)&sa,
			      (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)),
			 0);
	return fd;
}

static void expect_datagram(int fd, const char *want)
{
	char buf[1024];
	ssize_t n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
	assert_true(n > 0);
	buf[n] = '\0';
	assert_string_equal(buf, want);
}

static void test_sdnotify_without_socket_is_a_noop(void **state)
{
	(void)state;
	unsetenv("NOTIFY_SOCKET");
	assert_int_equal(sp_sdnotify("READY=1"), 0);
}

static void test_sdnotify_sends_one_datagram_to_a_path(void **state)
{
	char path[64];
	(void)state;
	snprintf(path, sizeof(path), "/tmp/sp-sdnotify-%d.sock", (int)getpid());
	unlink(path);
	int fd = listen_at(path);
	setenv("NOTIFY_SOCKET", path, 1);
	assert_int_equal(sp_sdnotify("READY=1\nSTATUS=serving"), 0);
	expect_datagram(fd, "READY=1\nSTATUS=serving");
	assert_int_equal(sp_sdnotifyf("RELOADING=1\nMONOTONIC_USEC=%llu", 42ULL), 0);
	expect_datagram(fd, "RELOADING=1\nMONOTONIC_USEC=42");
	close(fd);
	unlink(path);
	unsetenv("NOTIFY_SOCKET");
}

static void test_sdnotify_abstract_name_with_at_sign(void **state)
{
	char name[64];
	(void)state;
	snprintf(name, sizeof(name), "@sp-sdnotify-test-%d", (int)getpid());
	int fd = listen_at(name);
	setenv("NOTIFY_SOCKET", name, 1);
	assert_int_equal(sp_sdnotify("STOPPING=1"), 0);
	expect_datagram(fd, "STOPPING=1");
	close(fd);
	unsetenv("NOTIFY_SOCKET");
}

static void test_sdnotify_relative_path_is_rejected(void **state)
{
	(void)state;
	setenv("NOTIFY_SOCKET", "relative.sock", 1);
	assert_int_equal(sp_sdnotify("READY=1"), -EINVAL);
	unsetenv("NOTIFY_SOCKET");
}

static void test_sdnotify_missing_socket_reports_error_without_blocking(void **state)
{
	(void)state;
	setenv("NOTIFY_SOCKET", "/nonexistent-dir-sp/notify.sock", 1);
	assert_true(sp_sdnotify("READY=1") < 0);
	unsetenv("NOTIFY_SOCKET");
}

static void test_monotonic_usec_advances(void **state)
{
	(void)state;
	unsigned long long a = sp_sdnotify_monotonic_usec();
	usleep(2000);
	assert_true(sp_sdnotify_monotonic_usec() >= a + 2000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_sdnotify_without_socket_is_a_noop),
	    cmocka_unit_test(test_sdnotify_sends_one_datagram_to_a_path),
	    cmocka_unit_test(test_sdnotify_abstract_name_with_at_sign),
	    cmocka_unit_test(test_sdnotify_relative_path_is_rejected),
	    cmocka_unit_test(test_sdnotify_missing_socket_reports_error_without_blocking),
	    cmocka_unit_test(test_monotonic_usec_advances),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
