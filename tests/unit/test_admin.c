/* admin: who removes admin.socket's file. The process that made it does,
 * when it closes it, unless a binary upgrade handed the socket to a new
 * supervisor (which then owns the file as if it had made it). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proxy/admin.h"

typedef struct {
	char dir[64];
	char path[100];
} where_t;

static int setup(void **state)
{
	where_t *w = calloc(1, sizeof(*w));
	if (!w)
		return -1;
	snprintf(w->dir, sizeof(w->dir), "/tmp/test_admin.XXXXXX");
	if (!mkdtemp(w->dir)) {
		free(w);
		return -1;
	}
	snprintf(w->path, sizeof(w->path), "%s/admin.sock", w->dir);
	*state = w;
	return 0;
}

static int teardown(void **state)
{
	where_t *w = *state;
	unlink(w->path);
	rmdir(w->dir);
	free(w);
	return 0;
}

static bool exists(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0;
}

static void test_admin_socket_is_made_mode_0600_and_removed_on_close(void **state)
{
	where_t *w = *state;
	sp_admin_t *a;
	struct stat st;
	char err[256];
	assert_int_equal(sp_admin_open_unix(&a, w->path, err, sizeof(err)), 0);
	assert_int_equal(lstat(w->path, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0600);
	sp_admin_close(a);
	assert_false(exists(w->path));
}

static void test_disowned_admin_socket_is_left_on_close(void **state)
{
	where_t *w = *state;
	sp_admin_t *a;
	char err[256];
	assert_int_equal(sp_admin_open_unix(&a, w->path, err, sizeof(err)), 0);
	sp_admin_disown(a);
	sp_admin_close(a);
	assert_true(exists(w->path));
}

static void test_adopted_admin_socket_is_handed_over_whole_and_removed_by_its_new_owner(void **state)
{
	where_t *w = *state;
	sp_admin_t *old, *adopted;
	const char *path;
	unsigned long ino;
	struct stat st;
	int fd;
	char err[256];
	assert_int_equal(sp_admin_open_unix(&old, w->path, err, sizeof(err)), 0);
	sp_admin_handover(old, &fd, &path, &ino);
	assert_true(fd >= 0);
	assert_string_equal(path, w->path);
	assert_int_equal(lstat(w->path, &st), 0);
	assert_int_equal((unsigned long)st.st_ino, ino);
	/* The new supervisor serves on a copy of the same socket. */
	int copy = dup(fd);
	assert_int_equal(sp_admin_adopt(&adopted, copy, path, ino), 0);
	sp_admin_handover(adopted, &fd, &path, &ino);
	assert_int_equal(fd, copy);
	assert_string_equal(path, w->path);
	sp_admin_disown(old);
	sp_admin_close(old);
	assert_true(exists(w->path));
	sp_admin_close(adopted);
	assert_false(exists(w->path));
}

static void test_admin_listen_handover_names_no_file(void **state)
{
	sp_admin_t *a;
	sp_addr_t addr = {0};
	struct sockaddr_in *in = (struct sockaddr_in *)&addr.ss;
	const char *path = "x";
	unsigned long ino = 1;
	int fd;
	char err[256];
	(void)state;
	in->sin_family = AF_INET;
	in->sin_addr.s_addr = htonl(0x7f000001);
	addr.len = sizeof(*in);
	snprintf(addr.text, sizeof(addr.text), "127.0.0.1:0");
	assert_int_equal(sp_admin_open(&a, &addr, err, sizeof(err)), 0);
	sp_admin_handover(a, &fd, &path, &ino);
	assert_true(fd >= 0);
	assert_null(path);
	sp_admin_close(a);
	sp_admin_handover(NULL, &fd, &path, &ino);
	assert_int_equal(fd, -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_admin_socket_is_made_mode_0600_and_removed_on_close,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_disowned_admin_socket_is_left_on_close, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(
		test_adopted_admin_socket_is_handed_over_whole_and_removed_by_its_new_owner, setup,
		teardown),
	    cmocka_unit_test(test_admin_listen_handover_names_no_file),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
