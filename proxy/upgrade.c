/* upgrade: binary upgrade on SIGUSR2 (see upgrade.h).
 *
 *   cp shardproxy-new /usr/local/sbin/shardproxy.tmp
 *   mv /usr/local/sbin/shardproxy.tmp /usr/local/sbin/shardproxy
 *   kill -USR2 $(cat /run/shardproxy.pid)
 */
#include "proxy/upgrade.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

int sp_upgrade_exe_path(const char *argv0, char *out, size_t outlen, char *err, size_t errlen)
{
	char cwd[PATH_MAX];
	int n;

	if (!argv0 || !argv0[0]) {
		snprintf(err, errlen, "argv[0] is empty");
		return -EINVAL;
	}
	if (argv0[0] == '/') {
		n = snprintf(out, outlen, "%s", argv0);
	} else if (strchr(argv0, '/')) {
		if (!getcwd(cwd, sizeof(cwd))) {
			int e = errno;
			snprintf(err, errlen, "%s: getcwd: %s", argv0, strerror(e));
			return -e;
		}
		n = snprintf(out, outlen, "%s/%s", cwd, argv0);
	} else {
		/* Found through PATH, as execvp found it. */
		const char *path = getenv("PATH");
		const char *p = path ? path : "/usr/local/bin:/usr/bin:/bin";
		while (*p) {
			const char *end = strchr(p, ':');
			size_t dl = end ? (size_t)(end - p) : strlen(p);
			n = snprintf(out, outlen, "%.*s/%s", (int)dl, dl ? p : ".", argv0);
			if (n > 0 && (size_t)n < outlen && access(out, X_OK) == 0) {
				char rel[PATH_MAX];
				if (out[0] == '/')
					return 0;
				snprintf(rel, sizeof(rel), "%s", out); /* a relative PATH entry */
				return sp_upgrade_exe_path(rel, out, outlen, err, errlen);
			}
			p += dl + (end ? 1 : 0);
		}
		snprintf(err, errlen, "%s: not found in PATH", argv0);
		return -ENOENT;
	}
	if (n < 0 || (size_t)n >= outlen) {
		snprintf(err, errlen, "%s: path too long", argv0);
		return -ENAMETOOLONG;
	}
	return 0;
}

/* ---- the old supervisor's side ------------------------------------------------ */

static int keep_on_exec(int fd)
{
	int fl = fcntl(fd, F_GETFD);
	return fl < 0 ? -1 : fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC);
}

/* "0:3,4;1:5,6": the sockets of each listen address, in slot order. */
static char *listen_env(const sp_lgroup_t *groups, unsigned ngroups)
{
	size_t cap = 1, len = 0;
	for (unsigned i = 0; i < ngroups; i++)
		cap += (size_t)groups[i].nfds * 12 + 16;
	char *s = malloc(cap);
	if (!s)
		return NULL;
	s[0] = '\0';
	for (unsigned i = 0; i < ngroups; i++) {
		if (!groups[i].nfds)
			continue;
		if (len)
			s[len++] = ';';
		len += (size_t)snprintf(s + len, cap - len, "%u:", i);
		for (unsigned k = 0; k < groups[i].nfds; k++)
			len += (size_t)snprintf(s + len, cap - len, "%s%d", k ? "," : "",
						groups[i].fds[k]);
	}
	s[len] = '\0';
	return s;
}

/* "cfg=9,load=10,0=11": the maps, each group's array by group index. */
static void steer_env(const sp_steer_maps_t *m, char *s, size_t cap)
{
	size_t len = (size_t)snprintf(s, cap, "cfg=%d,load=%d", m->cfg_fd, m->load_fd);
	for (unsigned g = 0; g < SP_STEER_MAX_GROUPS && len < cap; g++)
		if (m->socks_fd[g] >= 0)
			len += (size_t)snprintf(s + len, cap - len, ",%u=%d", g, m->socks_fd[g]);
}

/* In the child, before exec: every descriptor but the ones handed over is
 * close-on-exec, so the new binary starts with what the environment names
 * and nothing else. Ours are all close-on-exec already; this is for the
 * ones we did not open (a launcher's stray redirection, a library's), which
 * would otherwise stay open in every later binary for its whole life. */
static int only_these_on_exec(const sp_upgrade_give_t *give, int report_fd)
{
	if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
		for (int fd = 3; fd < 4096; fd++) /* no close_range (before 5.11) */
			(void)fcntl(fd, F_SETFD, FD_CLOEXEC);
	/* Descriptor flags belong to this (the child's) table: clearing
	 * close-on-exec here leaves the supervisor's copies as they are. */
	if (keep_on_exec(report_fd) < 0 || (give->admin_fd >= 0 && keep_on_exec(give->admin_fd) < 0) ||
	    (give->unix_fd >= 0 && keep_on_exec(give->unix_fd) < 0))
		return -1;
	for (unsigned i = 0; i < give->ngroups; i++)
		for (unsigned k = 0; k < give->groups[i].nfds; k++)
			if (keep_on_exec(give->groups[i].fds[k]) < 0)
				return -1;
	if (give->maps) {
		if (keep_on_exec(give->maps->cfg_fd) < 0 || keep_on_exec(give->maps->load_fd) < 0)
			return -1;
		for (unsigned g = 0; g < SP_STEER_MAX_GROUPS; g++)
			if (give->maps->socks_fd[g] >= 0 && keep_on_exec(give->maps->socks_fd[g]) < 0)
				return -1;
	}
	return 0;
}

int sp_upgrade_start(sp_upgrade_t *u, const char *exe, char *const argv[],
		     const sp_upgrade_give_t *give, uint64_t now_ms, char *err, size_t errlen)
{
	char steer[SP_STEER_MAX_GROUPS * 16 + 64];
	char adm[PATH_MAX + 64];
	int sv[2];
	char *fds = listen_env(give->groups, give->ngroups);

	if (!fds) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	/* Our end is close-on-exec; the new supervisor's end is made
	 * inheritable in the child only. */
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		int e = errno;
		snprintf(err, errlen, "socketpair: %s", strerror(e));
		free(fds);
		return -e;
	}
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		snprintf(err, errlen, "fork: %s", strerror(e));
		close(sv[0]);
		close(sv[1]);
		free(fds);
		return -e;
	}
	if (pid == 0) {
		char num[16];
		sigset_t none;
		if (only_these_on_exec(give, sv[1]) < 0) {
			dprintf(sv[1], "failed: fcntl: %s\n", strerror(errno));
			_exit(127);
		}
		if (give->maps) {
			steer_env(give->maps, steer, sizeof(steer));
			setenv(SP_UPGRADE_ENV_STEER, steer, 1);
		} else {
			unsetenv(SP_UPGRADE_ENV_STEER);
		}
		setenv(SP_UPGRADE_ENV_LISTEN, fds, 1);
		snprintf(num, sizeof(num), "%d", sv[1]);
		setenv(SP_UPGRADE_ENV_REPORT, num, 1);
		if (give->admin_fd >= 0) {
			snprintf(num, sizeof(num), "%d", give->admin_fd);
			setenv(SP_UPGRADE_ENV_ADMIN, num, 1);
		} else {
			unsetenv(SP_UPGRADE_ENV_ADMIN);
		}
		if (give->unix_fd >= 0) {
			snprintf(adm, sizeof(adm), "%d:%lu:%s", give->unix_fd, give->unix_ino,
				 give->unix_path);
			setenv(SP_UPGRADE_ENV_ADMIN_UNIX, adm, 1);
		} else {
			unsetenv(SP_UPGRADE_ENV_ADMIN_UNIX);
		}
		/* The supervisor blocks the signals it reads from a signalfd; a
		 * fresh program starts with none blocked, as from a shell. */
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		execv(exe, argv);
		dprintf(sv[1], "failed: exec %s: %s\n", exe, strerror(errno));
		_exit(127);
	}
	free(fds);
	close(sv[1]);
	fcntl(sv[0], F_SETFL, O_NONBLOCK);
	memset(u, 0, sizeof(*u));
	u->pid = pid;
	u->fd = sv[0];
	u->deadline = now_ms + SP_UPGRADE_TIMEOUT_MS;
	return 0;
}

sp_upgrade_result_t sp_upgrade_read(sp_upgrade_t *u, char *why, size_t whylen)
{
	for (;;) {
		char *nl = memchr(u->buf, '\n', u->len);
		if (nl) {
			*nl = '\0';
			if (strcmp(u->buf, "ready") == 0)
				return SP_UPGRADE_READY;
			snprintf(why, whylen, "%s",
				 strncmp(u->buf, "failed: ", 8) == 0 ? u->buf + 8 : u->buf);
			return SP_UPGRADE_FAILED;
		}
		if (u->len == sizeof(u->buf) - 1) {
			snprintf(why, whylen, "unexpected report");
			return SP_UPGRADE_FAILED;
		}
		ssize_t n = read(u->fd, u->buf + u->len, sizeof(u->buf) - 1 - u->len);
		if (n > 0) {
			u->len += (size_t)n;
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return SP_UPGRADE_WAITING;
		snprintf(why, whylen, "it closed the upgrade socket before it was ready");
		return SP_UPGRADE_FAILED;
	}
}

void sp_upgrade_end(sp_upgrade_t *u)
{
	if (u->fd >= 0)
		close(u->fd);
	memset(u, 0, sizeof(*u));
	u->fd = -1;
}

int sp_upgrade_keep_pair(sp_upgrade_t *u)
{
	int fd = u->fd;
	u->fd = -1;
	sp_upgrade_end(u);
	return fd;
}

void sp_upgrade_say_done(int fd)
{
	if (fd < 0)
		return;
	/* A new supervisor that is gone (or an older binary that closed its
	 * end) has no one to tell: EPIPE, and SIGPIPE is ignored. */
	(void)!write(fd, "done\n", 5);
	close(fd);
}

void sp_upgrade_abandon(sp_upgrade_t *u, sp_upgrade_failed_t *f, const char *why, bool kill_now,
			uint64_t now_ms)
{
	f->pid = u->pid;
	snprintf(f->why, sizeof(f->why), "%s", why);
	f->kill_at = now_ms + SP_UPGRADE_EXIT_GRACE_MS;
	sp_upgrade_end(u);
	if (kill_now)
		sp_upgrade_kill_due(f, f->kill_at);
}

bool sp_upgrade_kill_due(sp_upgrade_failed_t *f, uint64_t now_ms)
{
	if (!f->pid || !f->kill_at || now_ms < f->kill_at)
		return false;
	/* Still ours until reaped: the pid cannot have been reused. */
	kill(f->pid, SIGKILL);
	f->kill_at = 0;
	return true;
}

/* ---- the new supervisor's side ------------------------------------------------ */

static int env_fd(const char *name, int *fd)
{
	const char *v = getenv(name);
	char *end;
	*fd = -1;
	if (!v)
		return 0;
	long n = strtol(v, &end, 10);
	if (*v == '\0' || *end != '\0' || n < 0 || n > INT_MAX)
		return -EINVAL;
	*fd = (int)n;
	return 0;
}

/* A listening TCP socket: its address read back, close-on-exec again. */
static int adopt_listener(int fd, sp_addr_t *addr)
{
	struct stat st;
	int acc = 0;
	socklen_t alen = sizeof(acc);
	char host[INET6_ADDRSTRLEN];

	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISSOCK(st.st_mode))
		return -ENOTSOCK;
	if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &alen) < 0)
		return -errno;
	if (!acc)
		return -EINVAL;
	memset(addr, 0, sizeof(*addr));
	addr->len = sizeof(addr->ss);
	if (getsockname(fd, (struct sockaddr *)&addr->ss, &addr->len) < 0)
		return -errno;
	if (addr->ss.ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)&addr->ss;
		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		snprintf(addr->text, sizeof(addr->text), "%s:%u", host, ntohs(in->sin_port));
	} else if (addr->ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&addr->ss;
		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		snprintf(addr->text, sizeof(addr->text), "[%s]:%u", host, ntohs(in6->sin6_port));
	} else {
		return -EAFNOSUPPORT;
	}
	return fcntl(fd, F_SETFD, FD_CLOEXEC) < 0 ? -errno : 0;
}

/* admin.socket: "fd:ino:path", a listening Unix socket, close-on-exec
 * again. */
static int inherit_unix(sp_upgrade_inherited_t *in, char *err, size_t errlen)
{
	const char *v = getenv(SP_UPGRADE_ENV_ADMIN_UNIX);
	struct sockaddr_storage ss;
	socklen_t alen = sizeof(ss);
	struct stat st;
	int acc = 0;
	socklen_t acclen = sizeof(acc);
	char *end, *end2 = NULL;

	in->unix_fd = -1;
	in->unix_ino = 0;
	in->unix_path[0] = '\0';
	if (!v)
		return 0;
	long fd = strtol(v, &end, 10);
	unsigned long long ino = *end == ':' ? strtoull(end + 1, &end2, 10) : 0;
	if (end == v || *end != ':' || fd < 0 || fd > INT_MAX || end2 == end + 1 || *end2 != ':' ||
	    !end2[1] || strlen(end2 + 1) >= sizeof(in->unix_path)) {
		snprintf(err, errlen, "upgrade: %s: cannot parse \"%s\"", SP_UPGRADE_ENV_ADMIN_UNIX,
			 v);
		return -EINVAL;
	}
	int ret = 0;
	if (fstat((int)fd, &st) < 0)
		ret = -errno;
	else if (!S_ISSOCK(st.st_mode))
		ret = -ENOTSOCK;
	else if (getsockopt((int)fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &acclen) < 0 ||
		 getsockname((int)fd, (struct sockaddr *)&ss, &alen) < 0)
		ret = -errno;
	else if (!acc || ss.ss_family != AF_UNIX)
		ret = -EINVAL;
	else if (fcntl((int)fd, F_SETFD, FD_CLOEXEC) < 0)
		ret = -errno;
	if (ret < 0) {
		snprintf(err, errlen, "upgrade: %s: descriptor %ld: %s", SP_UPGRADE_ENV_ADMIN_UNIX, fd,
			 strerror(-ret));
		return ret;
	}
	in->unix_fd = (int)fd;
	in->unix_ino = (unsigned long)ino;
	snprintf(in->unix_path, sizeof(in->unix_path), "%s", end2 + 1);
	return 0;
}

/* Does path name the socket file with inode ino? */
static bool file_is(const char *path, unsigned long ino)
{
	struct stat st;
	return lstat(path, &st) == 0 && S_ISSOCK(st.st_mode) && (unsigned long)st.st_ino == ino;
}

bool sp_upgrade_unix_serves(const sp_upgrade_inherited_t *in, const char *path)
{
	return in->unix_fd >= 0 && strcmp(in->unix_path, path) == 0 && file_is(path, in->unix_ino);
}

/* "cfg=9,load=10,0=11" -> in->maps (close-on-exec again). */
static int inherit_maps(sp_upgrade_inherited_t *in, char *err, size_t errlen)
{
	const char *v = getenv(SP_UPGRADE_ENV_STEER);
	in->have_maps = false;
	in->maps.cfg_fd = in->maps.load_fd = -1;
	for (unsigned g = 0; g < SP_STEER_MAX_GROUPS; g++)
		in->maps.socks_fd[g] = -1;
	if (!v)
		return 0;
	for (const char *p = v; *p;) {
		const char *eq = strchr(p, '=');
		char *end;
		long fd = eq ? strtol(eq + 1, &end, 10) : -1;
		if (!eq || fd < 0 || fd > INT_MAX || end == eq + 1 || (*end && *end != ',')) {
			snprintf(err, errlen, "upgrade: %s: cannot parse \"%s\"",
				 SP_UPGRADE_ENV_STEER, v);
			return -EINVAL;
		}
		if (strncmp(p, "cfg=", 4) == 0) {
			in->maps.cfg_fd = (int)fd;
		} else if (strncmp(p, "load=", 5) == 0) {
			in->maps.load_fd = (int)fd;
		} else {
			long g = strtol(p, NULL, 10);
			if (g < 0 || g >= SP_STEER_MAX_GROUPS) {
				snprintf(err, errlen, "upgrade: %s: group %ld out of range",
					 SP_UPGRADE_ENV_STEER, g);
				return -EINVAL;
			}
			in->maps.socks_fd[g] = (int)fd;
		}
		fcntl((int)fd, F_SETFD, FD_CLOEXEC);
		p = *end ? end + 1 : end;
	}
	in->have_maps = in->maps.cfg_fd >= 0 && in->maps.load_fd >= 0;
	return 0;
}

bool sp_upgrade_same_addr(int fd, const sp_addr_t *addr)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	memset(&ss, 0, sizeof(ss));
	return getsockname(fd, (struct sockaddr *)&ss, &len) == 0 && len == addr->len &&
	       memcmp(&ss, &addr->ss, len) == 0;
}

int sp_upgrade_inherit(sp_lgroup_t *groups, unsigned *ngroups, unsigned maxgroups,
		       sp_upgrade_inherited_t *in, char *err, size_t errlen)
{
	const char *list = getenv(SP_UPGRADE_ENV_LISTEN);
	int ret = 0;

	in->report_fd = in->admin_fd = in->unix_fd = -1;
	in->have_maps = false;
	if ((ret = env_fd(SP_UPGRADE_ENV_REPORT, &in->report_fd)) < 0 ||
	    (ret = env_fd(SP_UPGRADE_ENV_ADMIN, &in->admin_fd)) < 0) {
		snprintf(err, errlen, "upgrade: %s or %s: not a descriptor number",
			 SP_UPGRADE_ENV_REPORT, SP_UPGRADE_ENV_ADMIN);
		goto out;
	}
	if (in->report_fd >= 0)
		fcntl(in->report_fd, F_SETFD, FD_CLOEXEC);
	if (in->admin_fd >= 0) {
		sp_addr_t a;
		if ((ret = adopt_listener(in->admin_fd, &a)) < 0) {
			snprintf(err, errlen, "upgrade: %s=%d: %s", SP_UPGRADE_ENV_ADMIN,
				 in->admin_fd, strerror(-ret));
			goto out;
		}
	}
	for (const char *p = list; p && *p;) {
		sp_lgroup_t *g;
		char *colon;
		long gi = strtol(p, &colon, 10);
		if (colon == p || *colon != ':' || gi < 0 || gi >= (long)maxgroups ||
		    groups[gi].nfds) {
			snprintf(err, errlen, "upgrade: %s: cannot parse \"%s\"",
				 SP_UPGRADE_ENV_LISTEN, list);
			ret = -EINVAL;
			goto out;
		}
		p = colon + 1;
		g = &groups[gi];
		memset(g, 0, sizeof(*g));
		if ((unsigned)gi >= *ngroups)
			*ngroups = (unsigned)gi + 1;
		while (*p && *p != ';') {
			char *end;
			long fd = strtol(p, &end, 10);
			sp_addr_t a;
			if (end == p || fd < 0 || fd > INT_MAX ||
			    (*end && *end != ',' && *end != ';')) {
				snprintf(err, errlen, "upgrade: %s: cannot parse \"%s\"",
					 SP_UPGRADE_ENV_LISTEN, list);
				ret = -EINVAL;
				goto out;
			}
			if (g->nfds == SP_MAX_SLOTS) {
				snprintf(err, errlen,
					 "upgrade: more than %d sockets for one address",
					 SP_MAX_SLOTS);
				ret = -ENOSPC;
				goto out;
			}
			if ((ret = adopt_listener((int)fd, &a)) < 0) {
				snprintf(err, errlen, "upgrade: %s: descriptor %ld: %s",
					 SP_UPGRADE_ENV_LISTEN, fd, strerror(-ret));
				goto out;
			}
			if (g->nfds == 0) {
				g->addr = a;
			} else if (a.len != g->addr.len || memcmp(&a.ss, &g->addr.ss, a.len) != 0) {
				snprintf(err, errlen, "upgrade: descriptor %ld is %s, not %s", fd,
					 a.text, g->addr.text);
				ret = -EINVAL;
				goto out;
			}
			g->fds[g->nfds++] = (int)fd;
			p = *end == ',' ? end + 1 : end;
		}
		if (*p == ';')
			p++;
	}
	if ((ret = inherit_maps(in, err, errlen)) < 0)
		goto out;
	if ((ret = inherit_unix(in, err, errlen)) < 0)
		goto out;
out:
	/* Not for our own children, nor for the binary a later upgrade starts. */
	unsetenv(SP_UPGRADE_ENV_LISTEN);
	unsetenv(SP_UPGRADE_ENV_ADMIN);
	unsetenv(SP_UPGRADE_ENV_REPORT);
	unsetenv(SP_UPGRADE_ENV_STEER);
	unsetenv(SP_UPGRADE_ENV_ADMIN_UNIX);
	return ret;
}

void sp_upgrade_report(sp_upgrade_inherited_t *in, bool ready, const char *why)
{
	if (in->unix_fd >= 0) {
		/* Not adopted: our file names another path, or none. Once we
		 * serve, the old supervisor drains and leaves the file to us. */
		if (ready && file_is(in->unix_path, in->unix_ino))
			unlink(in->unix_path);
		close(in->unix_fd);
		in->unix_fd = -1;
	}
	if (in->report_fd < 0)
		return;
	if (ready) {
		dprintf(in->report_fd, "ready\n");
		/* Kept: the old one says "done" on it once its shards have
		 * stopped accepting. */
		fcntl(in->report_fd, F_SETFL, fcntl(in->report_fd, F_GETFL) | O_NONBLOCK);
		return;
	}
	dprintf(in->report_fd, "failed: %s\n", why);
	close(in->report_fd);
	in->report_fd = -1;
}

sp_upgrade_done_t sp_upgrade_read_done(int fd)
{
	char buf[16];
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return SP_UPGRADE_HANDING_OVER;
		/* It writes one short line and closes: all of it or nothing. */
		return n == 5 && memcmp(buf, "done\n", 5) == 0 ? SP_UPGRADE_DONE : SP_UPGRADE_GONE;
	}
}
