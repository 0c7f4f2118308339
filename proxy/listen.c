/* listen: SO_REUSEPORT listening sockets, one per listener per slot. */
#include "proxy/listen.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BACKLOG 4096 /* the kernel caps it at net.core.somaxconn */

static bool same_addr(const sp_addr_t *a, const sp_addr_t *b)
{
	return a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0;
}

sp_lgroup_t *sp_lgroup_find(sp_lgroup_t *groups, unsigned n, const sp_addr_t *addr)
{
	for (unsigned i = 0; i < n; i++)
		if (groups[i].nfds && same_addr(&groups[i].addr, addr))
			return &groups[i];
	return NULL;
}

static int open_one(const sp_addr_t *addr, const char **step)
{
	int one = 1;
	int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	*step = "socket";
	if (fd < 0)
		return -errno;
	*step = "setsockopt";
	/* TCP_NODELAY here is inherited by every accepted socket: shards
	 * relay what they receive at once, and save a setsockopt per client. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		goto err;
	/* "[::]:80" means IPv6 only, as nginx does: predictable, and a v4
	 * listener on the same port can coexist. */
	if (addr->ss.ss_family == AF_INET6 &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)
		goto err;
	*step = "bind";
	if (bind(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0)
		goto err;
	*step = "listen";
	if (listen(fd, BACKLOG) < 0)
		goto err;
	return fd;
err:;
	int e = errno;
	close(fd);
	return -e;
}

int sp_lgroup_grow(sp_lgroup_t *g, unsigned nslots, const char *where, char *err, size_t errlen)
{
	while (g->nfds < nslots) {
		const char *step;
		int fd = open_one(&g->addr, &step);
		if (fd < 0) {
			snprintf(err, errlen, "%s: %s: %s", where, step, strerror(-fd));
			return fd;
		}
		g->fds[g->nfds++] = fd;
	}
	return 0;
}

void sp_lgroup_shrink(sp_lgroup_t *g, unsigned nfds)
{
	if (nfds == 0) {
		sp_lgroup_close(g);
		return;
	}
	while (g->nfds > nfds)
		close(g->fds[--g->nfds]);
}

void sp_lgroup_close(sp_lgroup_t *g)
{
	for (unsigned i = 0; i < g->nfds; i++)
		close(g->fds[i]);
	g->nfds = 0;
	g->in_use = g->retiring = g->attached = false;
}
