/* admin: non-blocking HTTP for /stats, /metrics and /healthz (see admin.h).
 * One request per connection (HTTP/1.0 style, Connection: close): enough for
 * curl, Prometheus and health probes, and impossible to wedge the supervisor,
 * since every client has a 2-second deadline and a fixed buffer. */
#include "proxy/admin.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CLIENT_DEADLINE_MS 2000

typedef struct {
	int fd;
	size_t len;
	uint64_t deadline;
	char buf[2048];
} client_t;

struct sp_admin {
	int lfd;
	client_t clients[SP_ADMIN_MAX_CLIENTS];
};

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

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

void sp_admin_close(sp_admin_t *a)
{
	if (!a)
		return;
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
			pfds[n++] = (struct pollfd){.fd = a->clients[i].fd, .events = POLLIN};
	return n;
}

static void drop(client_t *c)
{
	close(c->fd);
	c->fd = -1;
	c->len = 0;
}

static void respond(client_t *c, int status, const char *ctype, const char *body, size_t len)
{
	char head[256];
	const char *reason = status == 200 ? "OK" : status == 404 ? "Not Found"
				 : status == 405 ? "Method Not Allowed" : "Bad Request";
	int h = snprintf(head, sizeof(head),
			 "HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n",
			 status, reason, ctype, len);
	/* Small responses on a fresh socket: the send buffer takes them whole;
	 * a client too slow for that loses its answer, not the supervisor's time. */
	if (send(c->fd, head, (size_t)h, MSG_NOSIGNAL | MSG_DONTWAIT) == h && len)
		(void)send(c->fd, body, len, MSG_NOSIGNAL | MSG_DONTWAIT);
	drop(c);
}

static void handle(client_t *c, sp_admin_render_fn render, void *ctx)
{
	char method[8], path[256];
	c->buf[c->len] = '\0';
	if (!strstr(c->buf, "\r\n\r\n") && !strstr(c->buf, "\n\n")) {
		if (c->len == sizeof(c->buf) - 1)
			respond(c, 400, "text/plain", "request too large\n", 18);
		return; /* wait for the rest */
	}
	if (sscanf(c->buf, "%7s %255s", method, path) != 2) {
		respond(c, 400, "text/plain", "bad request\n", 12);
		return;
	}
	if (strcmp(method, "GET") != 0) {
		respond(c, 405, "text/plain", "only GET\n", 9);
		return;
	}
	char *q = strchr(path, '?');
	if (q)
		*q = '\0';
	char *body = NULL;
	size_t len = 0;
	const char *ctype = "text/plain";
	int status = render(ctx, path, &body, &len, &ctype);
	respond(c, status, ctype, body ? body : "", body ? len : 0);
	free(body);
}

void sp_admin_serve(sp_admin_t *a, const struct pollfd *pfds, int n, sp_admin_render_fn render,
		    void *ctx)
{
	uint64_t now = mono_ms();
	for (int k = 1; k < n; k++) {
		if (!(pfds[k].revents & (POLLIN | POLLHUP | POLLERR)))
			continue;
		for (int i = 0; i < SP_ADMIN_MAX_CLIENTS; i++) {
			client_t *c = &a->clients[i];
			if (c->fd != pfds[k].fd)
				continue;
			ssize_t r = recv(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len,
					 MSG_DONTWAIT);
			if (r <= 0) {
				if (r == 0 || (errno != EAGAIN && errno != EINTR))
					drop(c);
				break;
			}
			c->len += (size_t)r;
			handle(c, render, ctx);
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
				close(fd); /* full: the client retries */
				continue;
			}
			a->clients[i].fd = fd;
			a->clients[i].len = 0;
			a->clients[i].deadline = now + CLIENT_DEADLINE_MS;
		}
	}
}
