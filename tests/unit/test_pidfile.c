/* pidfile: written without following a symbolic link (a link planted where
 * the pidfile goes must not make the supervisor overwrite its target), and
 * removed at exit only while it still holds our pid. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proxy/pidfile.h"

typedef struct {
	char dir[64], pid[96], target[96];
} paths_t;

static int setup(void **state)
{
	paths_t *p = calloc(1, sizeof(*p));
	snprintf(p->dir, sizeof(p->dir), "/tmp/sp-pidfile-XXXXXX");
	if (!mkdtemp(p->dir))
		return -1;
	snprintf(p->pid, sizeof(p->pid), "%s/x.pid", p->dir);
	snprintf(p->target, sizeof(p->target), "%s/target", p->dir);
	*state = p;
	return 0;
}

static int teardown(void **state)
{
	paths_t *p = *state;
	unlink(p->pid);
	unlink(p->target);
	rmdir(p->dir);
	free(p);
	return 0;
}

static void put(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static void get(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	size_t n = fread(buf, 1, len - 1, f);
	buf[n] = '\0';
	fclose(f);
}

static void test_pidfile_write_then_remove_own_pid(void **state)
{
	paths_t *p = *state;
	char err[256], buf[64];
	put(p->pid, "99999999999 old and longer\n");
	assert_int_equal(sp_pidfile_write(p->pid, 1234, err, sizeof(err)), 0);
	get(p->pid, buf, sizeof(buf));
	assert_string_equal(buf, "1234\n");
	assert_int_equal(sp_pidfile_remove(p->pid, 1234), 0);
	assert_int_equal(access(p->pid, F_OK), -1);
}

static void test_pidfile_write_refuses_a_symbolic_link_and_leaves_its_target(void **state)
{
	paths_t *p = *state;
	char err[256], buf[64];
	put(p->target, "precious\n");
	assert_int_equal(symlink(p->target, p->pid), 0);
	assert_int_equal(sp_pidfile_write(p->pid, 1234, err, sizeof(err)), -ELOOP);
	assert_non_null(strstr(err, "symbolic link"));
	assert_non_null(strstr(err, p->pid));
	get(p->target, buf, sizeof(buf));
	assert_string_equal(buf, "precious\n");
}

static void test_pidfile_remove_keeps_a_file_holding_another_pid(void **state)
{
	paths_t *p = *state;
	put(p->pid, "4321\n");
	assert_int_equal(sp_pidfile_remove(p->pid, 1234), -ESTALE);
	assert_int_equal(access(p->pid, F_OK), 0);
	put(p->pid, "12345\n"); /* a prefix of ours is not ours */
	assert_int_equal(sp_pidfile_remove(p->pid, 1234), -ESTALE);
	assert_int_equal(access(p->pid, F_OK), 0);
}

static void test_pidfile_remove_does_not_follow_a_symbolic_link(void **state)
{
	paths_t *p = *state;
	put(p->target, "1234\n");
	assert_int_equal(symlink(p->target, p->pid), 0);
	assert_int_not_equal(sp_pidfile_remove(p->pid, 1234), 0);
	assert_int_equal(access(p->target, F_OK), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_pidfile_write_then_remove_own_pid, setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_pidfile_write_refuses_a_symbolic_link_and_leaves_its_target, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pidfile_remove_keeps_a_file_holding_another_pid,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pidfile_remove_does_not_follow_a_symbolic_link,
					    setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
