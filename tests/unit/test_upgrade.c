/* upgrade: the binary's path as started, and adopting what an upgrading
 * supervisor hands over through the environment. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include "proxy/upgrade.h"
#include "tests/unit/helpers.h"

static void test_exe_path_is_absolute_without_resolving_links(void **state)
{
	char out[PATH_MAX], err[256], cwd[PATH_MAX], want[PATH_MAX * 2];
	(void)state;
	assert_int_equal(
	    sp_upgrade_exe_path("/usr/sbin/shardproxy", out, sizeof(out), err, sizeof(err)), 0);
	assert_string_equal(out, "/usr/sbin/shardproxy");
	assert_non_null(getcwd(cwd, sizeof(cwd)));
	assert_int_equal(
	    sp_upgrade_exe_path("build/shardproxy", out, sizeof(out), err, sizeof(err)), 0);
	snprintf(want, sizeof(want), "%s/build/shardproxy", cwd);
	assert_string_equal(out, want);
}

static void test_exe_path_without_slash_is_looked_up_in_path(void **state)
{
	char out[PATH_MAX], err[256];
	(void)state;
	setenv("PATH", "/nonexistent:/bin:/usr/bin", 1);
	assert_int_equal(sp_upgrade_exe_path("sh", out, sizeof(out), err, sizeof(err)), 0);
	assert_string_equal(out, "/bin/sh");
	assert_int_equal(
	    sp_upgrade_exe_path("no-such-binary-here", out, sizeof(out), err, sizeof(err)),
	    -ENOENT);
	assert_non_null(strstr(err, "not found in PATH"));
}

/* A blocking loopback listener, inheritable (no CLOEXEC), as a parent
 * supervisor hands them over. */
static int listener(struct sockaddr_in *sa)
{
	int fd = th_loopback_bound(SOCK_STREAM, sa);
	assert_int_equal(listen(fd, 8), 0);
	return fd;
}

/* What one sp_upgrade_inherit call saw and made. */
typedef struct {
	sp_lgroup_t groups[SP_MAX_GROUPS];
	unsigned n;
	sp_upgrade_inherited_t in;
	char err[256];
} inherit_t;

/* Inherit with var set to value, as a parent supervisor would set it. */
static int inherit(inherit_t *t, const char *var, const char *value)
{
	memset(t, 0, sizeof(*t));
	setenv(var, value, 1);
	return sp_upgrade_inherit(t->groups, &t->n, SP_MAX_GROUPS, &t->in, t->err, sizeof(t->err));
}

static void test_inherit_adopts_groups_at_their_index_and_clears_the_environment(void **state)
{
	inherit_t t;
	struct sockaddr_in sa;
	char env[64];
	(void)state;
	int a = listener(&sa), b = dup(a);
	snprintf(env, sizeof(env), "2:%d,%d", a, b);
	assert_int_equal(inherit(&t, SP_UPGRADE_ENV_LISTEN, env), 0);
	assert_int_equal(t.n, 3);
	assert_int_equal(t.groups[0].nfds, 0);
	assert_int_equal(t.groups[2].nfds, 2);
	assert_int_equal(t.groups[2].fds[0], a);
	assert_int_equal(t.groups[2].fds[1], b);
	assert_int_equal(memcmp(&t.groups[2].addr.ss, &sa, sizeof(sa)), 0);
	assert_int_equal(t.in.report_fd, -1);
	assert_false(t.in.have_maps);
	assert_null(getenv(SP_UPGRADE_ENV_LISTEN));
	assert_true(sp_upgrade_same_addr(a, &t.groups[2].addr));
	close(a);
	close(b);
}

static void test_inherit_refuses_a_descriptor_that_is_not_a_listener(void **state)
{
	inherit_t t;
	char env[64];
	(void)state;
	int s = socket(AF_INET, SOCK_STREAM, 0);
	snprintf(env, sizeof(env), "0:%d", s);
	assert_int_equal(inherit(&t, SP_UPGRADE_ENV_LISTEN, env), -EINVAL);
	assert_non_null(strstr(t.err, "descriptor"));
	assert_true(inherit(&t, SP_UPGRADE_ENV_LISTEN, "0:x") < 0);
	close(s);
}

/* A listening Unix socket at path (made in a fresh temporary directory);
 * *ino: its file's inode. */
static int unix_listener(char *path, size_t len, unsigned long *ino)
{
	char dir[] = "/tmp/test_upgrade.XXXXXX";
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	struct stat st;
	assert_non_null(mkdtemp(dir));
	snprintf(path, len, "%s/admin.sock", dir);
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	assert_int_equal(listen(fd, 8), 0);
	assert_int_equal(lstat(path, &st), 0);
	*ino = (unsigned long)st.st_ino;
	return fd;
}

static void remove_listener(const char *path)
{
	char dir[PATH_MAX];
	unlink(path);
	snprintf(dir, sizeof(dir), "%s", path);
	*strrchr(dir, '/') = '\0';
	rmdir(dir);
}

static void inherit_unix(const char *path, int fd, unsigned long ino, sp_upgrade_inherited_t *in)
{
	inherit_t t;
	char env[PATH_MAX + 64];
	snprintf(env, sizeof(env), "%d:%lu:%s", fd, ino, path);
	assert_int_equal(inherit(&t, SP_UPGRADE_ENV_ADMIN_UNIX, env), 0);
	assert_null(getenv(SP_UPGRADE_ENV_ADMIN_UNIX));
	*in = t.in;
}

static void test_inherited_admin_socket_serves_its_own_path_only_while_the_file_is_it(void **state)
{
	char path[100];
	unsigned long ino;
	sp_upgrade_inherited_t in;
	(void)state;
	int fd = unix_listener(path, sizeof(path), &ino);
	inherit_unix(path, fd, ino, &in);
	assert_int_equal(in.unix_fd, fd);
	assert_string_equal(in.unix_path, path);
	assert_true(sp_upgrade_unix_serves(&in, path));
	assert_false(sp_upgrade_unix_serves(&in, "/run/elsewhere.sock"));
	/* Someone put another socket at the path: not the one handed over. */
	unlink(path);
	int other = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	assert_int_equal(bind(other, (struct sockaddr *)&sun, sizeof(sun)), 0);
	assert_false(sp_upgrade_unix_serves(&in, path));
	close(other);
	close(fd);
	remove_listener(path);
}


static void test_inherit_refuses_an_admin_socket_that_is_not_a_listening_unix_socket(void **state)
{
	inherit_t t;
	struct sockaddr_in sa;
	char env[128];
	(void)state;
	int tcp = listener(&sa);
	snprintf(env, sizeof(env), "%d:1:/run/x.sock", tcp);
	assert_int_equal(inherit(&t, SP_UPGRADE_ENV_ADMIN_UNIX, env), -EINVAL);
	assert_non_null(strstr(t.err, "descriptor"));
	assert_true(inherit(&t, SP_UPGRADE_ENV_ADMIN_UNIX, "7:1:") < 0);
	assert_non_null(strstr(t.err, "cannot parse"));
	close(tcp);
}

static void test_failed_start_leaves_the_old_admin_socket_file(void **state)
{
	char path[100];
	unsigned long ino;
	sp_upgrade_inherited_t in;
	struct stat st;
	(void)state;
	int fd = unix_listener(path, sizeof(path), &ino);
	int keep = dup(fd); /* the old supervisor's copy */
	inherit_unix(path, fd, ino, &in);
	sp_upgrade_report(&in, false, "test");
	assert_int_equal(in.unix_fd, -1);
	assert_int_equal(lstat(path, &st), 0);
	close(keep);
	remove_listener(path);
}

static void test_ready_without_adopting_removes_the_old_admin_socket_file(void **state)
{
	char path[100];
	unsigned long ino;
	sp_upgrade_inherited_t in;
	struct stat st;
	(void)state;
	int fd = unix_listener(path, sizeof(path), &ino);
	int keep = dup(fd);
	inherit_unix(path, fd, ino, &in);
	sp_upgrade_report(&in, true, NULL);
	assert_int_equal(in.unix_fd, -1);
	assert_int_equal(lstat(path, &st), -1);
	close(keep);
	remove_listener(path);
}

/* The pair after "ready": the old supervisor keeps its end to say "done"
 * once its shards have stopped accepting; the new one keeps its end,
 * non-blocking, and hears nothing decided until then. */
static void test_ready_keeps_the_pair_open_until_the_old_one_says_done(void **state)
{
	int sv[2];
	char buf[16];
	sp_upgrade_inherited_t in;
	sp_upgrade_t u;
	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	memset(&in, 0, sizeof(in));
	in.report_fd = sv[1];
	in.admin_fd = in.unix_fd = -1;
	sp_upgrade_report(&in, true, NULL);
	assert_int_equal(in.report_fd, sv[1]); /* still open */
	assert_true(fcntl(sv[1], F_GETFL) & O_NONBLOCK);
	assert_int_equal(sp_upgrade_read_done(sv[1]), SP_UPGRADE_HANDING_OVER);

	memset(&u, 0, sizeof(u));
	u.pid = 4242;
	u.fd = sv[0];
	fcntl(sv[0], F_SETFL, O_NONBLOCK);
	assert_int_equal(sp_upgrade_read(&u, buf, sizeof(buf)), SP_UPGRADE_READY);
	int fd = sp_upgrade_keep_pair(&u);
	/* The upgrade is no longer under way, but its pair is open. */
	assert_int_equal(fd, sv[0]);
	assert_int_equal(u.pid, 0);
	assert_int_equal(u.fd, -1);
	assert_true(fcntl(fd, F_GETFD) >= 0);
	assert_int_equal(sp_upgrade_read_done(sv[1]), SP_UPGRADE_HANDING_OVER);

	sp_upgrade_say_done(fd);
	assert_int_equal(fcntl(fd, F_GETFD), -1); /* closed */
	assert_int_equal(sp_upgrade_read_done(sv[1]), SP_UPGRADE_DONE);
	close(sv[1]);
}

/* An old supervisor that goes without saying "done" (it crashed, or an
 * older binary that closes the pair at "ready") ends the wait too. */
static void test_pair_closed_without_done_ends_the_hand_over(void **state)
{
	int sv[2];
	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	fcntl(sv[1], F_SETFL, O_NONBLOCK);
	assert_int_equal(sp_upgrade_read_done(sv[1]), SP_UPGRADE_HANDING_OVER);
	close(sv[0]);
	assert_int_equal(sp_upgrade_read_done(sv[1]), SP_UPGRADE_GONE);
	close(sv[1]);
	/* Saying "done" to a new one that is gone is no error (SIGPIPE aside). */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	close(sv[1]);
	signal(SIGPIPE, SIG_IGN);
	sp_upgrade_say_done(sv[0]);
	assert_int_equal(fcntl(sv[0], F_GETFD), -1);
}

/* A stand-in for a new binary that failed but does not exit by itself. */
static pid_t hanging_child(sp_upgrade_t *u)
{
	int p[2];
	assert_int_equal(pipe(p), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		for (;;)
			pause();
	}
	close(p[1]);
	memset(u, 0, sizeof(*u));
	u->pid = pid;
	u->fd = p[0];
	return pid;
}

static void test_abandoned_upgrade_ends_at_once_and_its_process_is_killed_only_after_the_grace(void **state)
{
	sp_upgrade_t u;
	sp_upgrade_failed_t f = {0};
	int status;
	(void)state;
	pid_t pid = hanging_child(&u);
	int fd = u.fd;
	sp_upgrade_abandon(&u, &f, "it said no", false, 1000);
	/* The upgrade is over (a new one may start once f is clear); its pair is closed. */
	assert_int_equal(u.pid, 0);
	assert_int_equal(u.fd, -1);
	assert_int_equal(fcntl(fd, F_GETFD), -1);
	assert_int_equal(f.pid, pid);
	assert_string_equal(f.why, "it said no");
	assert_int_equal(f.kill_at, 1000 + SP_UPGRADE_EXIT_GRACE_MS);
	assert_false(sp_upgrade_kill_due(&f, 1000 + SP_UPGRADE_EXIT_GRACE_MS - 1));
	usleep(20000);
	assert_int_equal(waitpid(pid, &status, WNOHANG), 0); /* given its time to exit */
	assert_true(sp_upgrade_kill_due(&f, 1000 + SP_UPGRADE_EXIT_GRACE_MS));
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	assert_false(sp_upgrade_kill_due(&f, UINT64_MAX)); /* once */
	assert_int_equal(f.pid, pid); /* the caller's reap clears it */
}

static void test_abandoned_upgrade_killed_now_gets_no_grace(void **state)
{
	sp_upgrade_t u;
	sp_upgrade_failed_t f = {0};
	int status;
	(void)state;
	pid_t pid = hanging_child(&u);
	sp_upgrade_abandon(&u, &f, "a stop was ordered", true, 1000);
	assert_int_equal(f.kill_at, 0);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	assert_false(sp_upgrade_kill_due(&f, UINT64_MAX));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_exe_path_is_absolute_without_resolving_links),
	    cmocka_unit_test(test_exe_path_without_slash_is_looked_up_in_path),
	    cmocka_unit_test(test_inherit_adopts_groups_at_their_index_and_clears_the_environment),
	    cmocka_unit_test(test_inherit_refuses_a_descriptor_that_is_not_a_listener),
	    cmocka_unit_test(test_inherited_admin_socket_serves_its_own_path_only_while_the_file_is_it),
	    cmocka_unit_test(test_inherit_refuses_an_admin_socket_that_is_not_a_listening_unix_socket),
	    cmocka_unit_test(test_failed_start_leaves_the_old_admin_socket_file),
	    cmocka_unit_test(test_ready_without_adopting_removes_the_old_admin_socket_file),
	    cmocka_unit_test(test_ready_keeps_the_pair_open_until_the_old_one_says_done),
	    cmocka_unit_test(test_pair_closed_without_done_ends_the_hand_over),
	    cmocka_unit_test(test_abandoned_upgrade_ends_at_once_and_its_process_is_killed_only_after_the_grace),
	    cmocka_unit_test(test_abandoned_upgrade_killed_now_gets_no_grace),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
