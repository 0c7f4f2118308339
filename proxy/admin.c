/* admin: non-blocking HTTP for /stats, /metrics and /healthz (see admin.h).
 * One request per connection (Connection: close): enough for curl,
 * Prometheus and health probes, and impossible to wedge the supervisor:
 * every client has a fixed request buffer (a bigger request gets 400), a
 * deadline to send its request (2 s) and one to take the answer (10 s), and
 * the answer is written as the socket takes it, never waited for. When every
 * slot is taken, a new client takes the oldest one's (victim()), so idle
 * connections cannot keep a health probe out.
 *
 *   curl -s http://127.0.0.1:9901/stats | jq .totals
 *   curl -s http://127.0.0.1:9901/metrics | promtool check metrics */
#include "proxy/admin.h"
#include "runtime/clock.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CLIENT_DEADLINE_MS 2000 /* to send the request */
#define WRITE_DEADLINE_MS 10000 /* to read the answer */

typedef struct {
	int fd;
	size_t len;
	uint64_t since; /* accepted at; the oldest goes first when all slots are taken */
	uint64_t deadline;
	char *out; /* the response being written, or NULL while reading */
	size_t outlen, outoff;
	bool lingering; /* answer sent: read and discard until the client closes */
	char buf[4096];
} client_t;

struct sp_admin {
	int lfd;
	bool writable;	 /* admin.socket */
	pid_t owner;	 /* the process that created path */
	ino_t ino;	 /* path's inode then */
	char path[108];
	client_t clients[SP_ADMIN_MAX_CLIENTS];
};

int sp_admin_open(sp_admin_t **out, const sp_addr_t *addr, char *err, size_t errlen)
{
	int one = 1;
	const char *step = "socket";
	sp_admin_t *a = calloc(1, sizeof(*a));
	if (!a) {
		snprintf(err, errlen, "admin.listen %s: out of memory", addr->text);
		return -ENOMEM;
	}
	for (int i = 0; i < SP_ADMIN_MAX_CLIENTS; i++)
		a->clients[i].fd = -1;
	a->lfd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (a->lfd < 0)
		goto err;
	step = "setsockopt";
	if (setsockopt(a->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		goto err;
	step = "bind";
	if (bind(a->lfd, (const struct sockaddr *)&addr->ss, addr->len) < 0)
		goto err;
	step = "listen";
	if (listen(a->lfd, 64) < 0)
		goto err;
	*out = a;
	return 0;
err:;
	int e = errno;
	snprintf(err, errlen, "admin.listen %s: %s: %s", addr->text, step, strerror(e));
	if (a->lfd >= 0)
		close(a->lfd);
	free(a);
	return -e;
}

/* The socket is made at "<path>.<pid>" and renamed over path: the file
 * never exists wider than 0600 (the mode is set before bind), and a socket
 * file left at path is replaced atomically, whether its process died (a
 * stale file) or still runs (a binary upgrade: the old supervisor keeps
 * serving its clients until it exits, new clients reach the new one). */
int sp_admin_open_unix(sp_admin_t **out, const char *path, char *err, size_t errlen)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	const char *step = "socket";
	char tmp[sizeof(sun.sun_path)];
	struct stat st;
	sp_admin_t *a = calloc(1, sizeof(*a));
	if (!a) {
		snprintf(err, errlen, "admin.socket %s: out of memory", path);
		return -ENOMEM;
	}
	if (snprintf(tmp, sizeof(tmp), "%s.%d", path, (int)getpid()) >= (int)sizeof(tmp)) {
		free(a);
		snprintf(err, errlen, "admin.socket %s: path too long (at most %zu bytes)", path,
			 sizeof(tmp) - 12);
		return -ENAMETOOLONG;
	}
	if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
		free(a);
		snprintf(err, errlen, "admin.socket %s: exists and is not a socket", path);
		return -EEXIST;
	}
	for (int i = 0; i < SP_ADMIN_MAX_CLIENTS; i++)
		a->clients[i].fd = -1;
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", tmp);
	snprintf(a->path, sizeof(a->path), "%s", path);
	a->writable = true;
	a->owner = getpid();
	a->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (a->lfd < 0)
		goto err;
	unlink(tmp); /* ours from an earlier process with the same pid */
	step = "fchmod";
	if (fchmod(a->lfd, 0600) < 0)
		goto err;
	step = "bind";
	if (bind(a->lfd, (struct sockaddr *)&sun, sizeof(sun)) < 0)
		goto err;
	step = "chmod";
	if (chmod(tmp, 0600) < 0)
		goto err_unlink;
	step = "listen";
	if (listen(a->lfd, 64) < 0)
		goto err_unlink;
	step = "rename";
	if (rename(tmp, path) < 0)
		goto err_unlink;
	if (lstat(path, &st) == 0)
		a->ino = st.st_ino;
	*out = a;
	return 0;
err_unlink:;
	int e0 = errno;
	unlink(tmp);
	errno = e0;
err:;
	int e = errno;
	snprintf(err, errlen, "admin.socket %s: %s: %s", path, step, strerror(e));
	if (a->lfd >= 0)
		close(a->lfd);
	free(a);
	return -e;
}

int sp_admin_adopt(sp_admin_t **out, int fd, const char *path, unsigned long ino)
{
	sp_admin_t *a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	for (int i = 0; i < SP_ADMIN_MAX_CLIENTS; i++)
		a->clients[i].fd = -1;
	a->lfd = fd;
	if (path) {
		snprintf(a->path, sizeof(a->path), "%s", path);
		a->writable = true;
		a->owner = getpid();
		a->ino = (ino_t)ino;
	}
	*out = a;
	return 0;
}

void sp_admin_handover(const sp_admin_t *a, int *fd, const char **path, unsigned long *ino)
{
	*fd = a ? a->lfd : -1;
	*path = a && a->path[0] ? a->path : NULL;
	*ino = a ? (unsigned long)a->ino : 0;
}

void sp_admin_disown(sp_admin_t *a)
{
	if (a)
		a->owner = 0;
}

void sp_admin_close(sp_admin_t *a)
{
	if (!a)
		return;
	/* Only the file this process made: a shard closing its inherited copy,
	 * or an old supervisor whose path a new one has taken over, leaves it. */
	struct stat st;
	if (a->path[0] && a->owner == getpid() && lstat(a->path, &st) == 0 && st.st_ino == a->ino)
		unlink(a->path);
	for (int i = 0; i < SP_ADMIN_MAX_CLIENTS; i++)
		if (a->clients[i].fd >= 0)
			close(a->clients[i].fd);
	close(a->lfd);
	free(a);
}

int sp_admin_pollfds(const sp_admin_t *a, struct pollfd *pfds, int max)
{
	int n = 0;
	if (max < 1)
		return 0;
	pfds[n++] = (struct pollfd){.fd = a->lfd, .events = POLLIN};
	for (int i = 0; i < SP_ADMIN_MAX_CLIENTS && n < max; i++)
		if (a->clients[i].fd >= 0)
			pfds[n++] = (struct pollfd){.fd = a->clients[i].fd,
						    .events = a->clients[i].out && !a->clients[i].lingering
								      ? POLLOUT
								      : POLLIN};
	return n;
}

static void drop(client_t *c)
{
	close(c->fd);
	c->fd = -1;
	c->len = 0;
	free(c->out);
	c->out = NULL;
	c->outlen = c->outoff = 0;
	c->lingering = false;
}

/* The answer is out. Closing now, with request bytes still unread (an
 * oversized request, a body), would send an RST that can destroy the answer
 * in flight: half-close, then drain what the client still sends until it
 * closes or the deadline passes (nginx's lingering close). */
static void linger(client_t *c)
{
	shutdown(c->fd, SHUT_WR);
	c->lingering = true;
	c->deadline = sp_clock_ms() + CLIENT_DEADLINE_MS;
}

static void discard(client_t *c)
{
	char sink[4096];
	for (int i = 0; i < 16; i++) {
		ssize_t r = recv(c->fd, sink, sizeof(sink), MSG_DONTWAIT);
		if (r > 0)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		drop(c);
		return;
	}
}

/* Send what the socket takes; true when the whole answer is out. */
static bool flush_out(client_t *c)
{
	while (c->outoff < c->outlen) {
		ssize_t n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0) {
			c->outoff += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return false;
		return true; /* the client went away: nothing more to do */
	}
	return true;
}

static const char *reason_of(int status)
{
	switch (status) {
	case 200:
		return "OK";
	case 400:
		return "Bad Request";
	case 403:
		return "Forbidden";
	case 404:
		return "Not Found";
	case 405:
		return "Method Not Allowed";
	case 503:
		return "Service Unavailable";
	default:
		return "Internal Server Error";
	}
}

static void respond(client_t *c, int status, const char *ctype, const char *body, size_t len,
		    bool head_only)
{
	char head[256];
	int h = snprintf(head, sizeof(head),
			 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			 "Cache-Control: no-cache\r\nConnection: close\r\n\r\n",
			 status, reason_of(status), ctype, len);
	size_t blen = head_only ? 0 : len;

	c->out = malloc((size_t)h + blen);
	if (!c->out) {
		drop(c);
		return;
	}
	memcpy(c->out, head, (size_t)h);
	if (blen)
		memcpy(c->out + h, body, blen);
	c->outlen = (size_t)h + blen;
	c->outoff = 0;
	c->deadline = sp_clock_ms() + WRITE_DEADLINE_MS;
	if (flush_out(c))
		linger(c);
}

static void bad(client_t *c, int status, const char *why)
{
	respond(c, status, "text/plain; charset=utf-8", why, strlen(why), false);
}

static bool is_token(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] < 'A' || s[i] > 'Z')
			return false;
	return n > 0;
}

/* "METHOD SP /path SP HTTP/1.x CRLF": anything else is a bad request. */
static void handle(client_t *c, bool writable, sp_admin_render_fn render, void *ctx)
{
	char path[256];
	c->buf[c->len] = '\0';
	if (memchr(c->buf, '\0', c->len)) {
		bad(c, 400, "bad request: NUL byte\n");
		return;
	}
	char *end = strstr(c->buf, "\r\n\r\n");
	if (!end)
		end = strstr(c->buf, "\n\n");
	if (!end) {
		if (c->len == sizeof(c->buf) - 1)
			bad(c, 400, "bad request: request too large\n");
		return; /* wait for the rest */
	}
	char *eol = strchr(c->buf, '\n');
	size_t linelen = (size_t)(eol - c->buf);
	if (linelen && c->buf[linelen - 1] == '\r')
		linelen--;
	const char *sp1 = memchr(c->buf, ' ', linelen);
	const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', linelen - (size_t)(sp1 + 1 - c->buf)) : NULL;
	if (!sp1 || !sp2 || !is_token(c->buf, (size_t)(sp1 - c->buf)) || sp1[1] != '/' ||
	    (size_t)(c->buf + linelen - sp2 - 1) != 8 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0 ||
	    (sp2[8] != '0' && sp2[8] != '1')) {
		bad(c, 400, "bad request: expected \"GET /path HTTP/1.1\"\n");
		return;
	}
	size_t plen = (size_t)(sp2 - sp1 - 1);
	if (plen >= sizeof(path)) {
		bad(c, 400, "bad request: path too long\n");
		return;
	}
	memcpy(path, sp1 + 1, plen);
	path[plen] = '\0';
	for (size_t i = 0; i < plen; i++)
		if ((unsigned char)path[i] <= 0x20 || (unsigned char)path[i] >= 0x7f) {
			bad(c, 400, "bad request: invalid character in path\n");
			return;
		}
	char method[16];
	size_t mlen = (size_t)(sp1 - c->buf);
	if (mlen >= sizeof(method)) {
		bad(c, 405, "only GET, HEAD and POST\n");
		return;
	}
	memcpy(method, c->buf, mlen);
	method[mlen] = '\0';
	bool head = strcmp(method, "HEAD") == 0;
	if (!head && strcmp(method, "GET") != 0) {
		if (strcmp(method, "POST") != 0) {
			bad(c, 405, "only GET, HEAD and POST\n");
			return;
		}
		if (!writable) {
			bad(c, 403, "writes are accepted on admin.socket only, not on admin.listen\n");
			return;
		}
	}
	char *q = strchr(path, '?');
	if (q)
		*q = '\0';
	char *body = NULL;
	size_t len = 0;
	const char *ctype = "text/plain; charset=utf-8";
	int status = render(ctx, method, path, writable, &body, &len, &ctype);
	respond(c, status, ctype, body ? body : "", body ? len : 0, head);
	free(body);
}

/* Every slot is taken and a new client is waiting: make room by dropping the
 * oldest client, the one least likely still to be useful: one whose answer
 * is already out (lingering), else one that has not sent its request yet,
 * else one being answered. Turning the newcomer away instead would let one
 * peer that opens SP_ADMIN_MAX_CLIENTS idle connections (and reopens them at
 * each deadline) keep /healthz from everyone else; this way a probe that
 * sends its request with its connect is served on the next turn, unless
 * that many newer connections arrive in between. */
static int victim(const sp_admin_t *a)
{
	int best = 0, best_rank = 3;
	for (int i = 0; i < SP_ADMIN_MAX_CLIENTS; i++) {
		const client_t *c = &a->clients[i];
		int rank = c->lingering ? 0 : !c->out ? 1 : 2;
		if (rank < best_rank || (rank == best_rank && c->since < a->clients[best].since)) {
			best = i;
			best_rank = rank;
		}
	}
	return best;
}

void sp_admin_serve(sp_admin_t *a, const struct pollfd *pfds, int n, sp_admin_render_fn render,
		    void *ctx)
{
	uint64_t now = sp_clock_ms();
	for (int k = 1; k < n; k++) {
		if (!(pfds[k].revents & (POLLIN | POLLOUT | POLLHUP | POLLERR)))
			continue;
		for (int i = 0; i < SP_ADMIN_MAX_CLIENTS; i++) {
			client_t *c = &a->clients[i];
			if (c->fd != pfds[k].fd)
				continue;
			if (c->lingering) {
				discard(c);
				break;
			}
			if (c->out) {
				if (pfds[k].revents & (POLLHUP | POLLERR))
					drop(c);
				else if (flush_out(c))
					linger(c);
				break;
			}
			ssize_t r = recv(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len,
					 MSG_DONTWAIT);
			if (r <= 0) {
				if (r == 0 || (errno != EAGAIN && errno != EINTR))
					drop(c);
				break;
			}
			c->len += (size_t)r;
			handle(c, a->writable, render, ctx);
			break;
		}
	}
	for (int i = 0; i < SP_ADMIN_MAX_CLIENTS; i++)
		if (a->clients[i].fd >= 0 && now >= a->clients[i].deadline)
			drop(&a->clients[i]);
	if (n > 0 && (pfds[0].revents & POLLIN)) {
		for (;;) {
			int fd = accept4(a->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
			if (fd < 0)
				break;
			int i;
			for (i = 0; i < SP_ADMIN_MAX_CLIENTS && a->clients[i].fd >= 0; i++)
				;
			if (i == SP_ADMIN_MAX_CLIENTS) {
				i = victim(a);
				drop(&a->clients[i]);
			}
			a->clients[i].fd = fd;
			a->clients[i].len = 0;
			a->clients[i].since = now;
			a->clients[i].deadline = now + CLIENT_DEADLINE_MS;
		}
	}
}
