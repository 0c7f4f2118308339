/* health: non-blocking connect checks with rise/fall hysteresis (see health.h).
 * A server goes down after `fall` failed checks in a row, or `fall`
 * connection failures in a row reported by shards from live traffic; it comes
 * back after `rise` successful checks in a row. Servers start up. */
#include "proxy/health.h"
#include "runtime/clock.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "runtime/log.h"

/* Shards report connect failures from live traffic in shared memory; the
 * supervisor looks at them at least this often, so a server failing live
 * connections is marked down within this much of its `fall`-th failure, not
 * at its next active check (which may be interval_ms away). */
#define PASSIVE_LOOK_MS 100

typedef struct {
	const sp_upstream_t *up;
	const sp_server_t *srv;
	uint32_t idx; /* global server index */
	int fd;       /* check in flight, or -1 */
	uint64_t due; /* next check start, or timeout of the one in flight */
	uint32_t ok_streak, fail_streak;
} check_t;

/* Checks in flight wait in an epoll set, not in the caller's poll array:
 * any number of servers, one descriptor to poll, and O(ready) to find the
 * finished ones (a poll array of SP_ADMIN_MAX_CLIENTS + 256 entries used to
 * leave checks past the 256th unwatched, so they always timed out). */
struct sp_health {
	check_t *checks;
	size_t n;
	int epfd;
	size_t inflight;
	const sp_server_ctl_t *ctl;
	uint8_t *down;
	uint32_t *fails;
};

/* conf numbers the servers once (first_server); past the last upstream,
 * the total. */
uint32_t sp_health_index(const sp_conf_t *conf, size_t upstream)
{
	if (upstream < conf->nupstreams)
		return conf->upstreams[upstream].first_server;
	if (!conf->nupstreams)
		return 0;
	const sp_upstream_t *last = &conf->upstreams[conf->nupstreams - 1];
	return last->first_server + (uint32_t)last->nservers;
}

int sp_health_new(sp_health_t **out, const sp_conf_t *conf, uint8_t *down, uint32_t *fails,
		  char *err, size_t errlen)
{
	sp_health_t *h = calloc(1, sizeof(*h));
	size_t total = 0;
	if (!h)
		goto nomem;
	h->down = down;
	h->fails = fails;
	h->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (h->epfd < 0) {
		int e = errno;
		free(h);
		snprintf(err, errlen, "health checks: epoll_create1: %s", strerror(e));
		return -e;
	}
	for (size_t u = 0; u < conf->nupstreams; u++)
		total += conf->upstreams[u].nservers;
	if (total > SP_HEALTH_MAX_SERVERS)
		total = SP_HEALTH_MAX_SERVERS;
	memset(down, 0, total);
	memset(fails, 0, total * sizeof(*fails));
	h->checks = calloc(total ? total : 1, sizeof(*h->checks));
	if (!h->checks) {
		close(h->epfd);
		free(h);
		goto nomem;
	}
	uint64_t now = sp_clock_ms();
	for (size_t u = 0; u < conf->nupstreams; u++) {
		const sp_upstream_t *up = &conf->upstreams[u];
		uint32_t base = conf->upstreams[u].first_server;
		for (size_t k = 0; k < up->nservers && base + k < total; k++) {
			if (!up->health_check.enabled)
				continue;
			check_t *c = &h->checks[h->n++];
			c->up = up;
			c->srv = &up->servers[k];
			c->idx = base + (uint32_t)k;
			c->fd = -1;
			/* Spread first checks over one interval, not all at once. */
			c->due = now + (up->health_check.interval_ms * k) / up->nservers;
		}
	}
	*out = h;
	return 0;
nomem:
	snprintf(err, errlen, "health checks: out of memory");
	return -ENOMEM;
}

/* A host name's slot is not the same server from one generation to the
 * next (its address comes from a fresh look-up): it starts up. */
static bool same_server(const check_t *a, const check_t *b)
{
	if (a->srv->dns || b->srv->dns)
		return false;
	return strcmp(a->up->name, b->up->name) == 0 && a->srv->addr.len == b->srv->addr.len &&
	       memcmp(&a->srv->addr.ss, &b->srv->addr.ss, a->srv->addr.len) == 0;
}

void sp_health_inherit(sp_health_t *h, const sp_health_t *prev)
{
	if (!h || !prev)
		return;
	for (size_t i = 0; i < h->n; i++) {
		check_t *c = &h->checks[i];
		for (size_t j = 0; j < prev->n; j++) {
			const check_t *o = &prev->checks[j];
			if (!same_server(c, o))
				continue;
			c->ok_streak = o->ok_streak;
			c->fail_streak = o->fail_streak;
			h->down[c->idx] = __atomic_load_n(&prev->down[o->idx], __ATOMIC_RELAXED);
			break;
		}
	}
}

void sp_health_set_ctl(sp_health_t *h, const sp_server_ctl_t *ctl)
{
	h->ctl = ctl;
}

void sp_health_reset(sp_health_t *h, uint32_t idx)
{
	for (size_t i = 0; i < h->n; i++) {
		check_t *c = &h->checks[i];
		if (c->idx != idx)
			continue;
		if (c->fd >= 0) {
			if (epoll_ctl(h->epfd, EPOLL_CTL_DEL, c->fd, NULL) == 0)
				h->inflight--;
			close(c->fd);
		}
		c->fd = -1;
		c->ok_streak = c->fail_streak = 0;
		c->due = sp_clock_ms();
		__atomic_store_n(&h->down[idx], 0, __ATOMIC_RELAXED);
		__atomic_store_n(&h->fails[idx], 0, __ATOMIC_RELAXED);
	}
}

void sp_health_free(sp_health_t *h)
{
	if (!h)
		return;
	for (size_t i = 0; i < h->n; i++)
		if (h->checks[i].fd >= 0)
			close(h->checks[i].fd);
	close(h->epfd);
	free(h->checks);
	free(h);
}

static void verdict(sp_health_t *h, check_t *c, bool ok, const char *why)
{
	const sp_health_check_t *hc = &c->up->health_check;
	if (ok) {
		c->fail_streak = 0;
		c->ok_streak++;
		if (h->down[c->idx] && c->ok_streak >= hc->rise) {
			__atomic_store_n(&h->down[c->idx], 0, __ATOMIC_RELAXED);
			__atomic_store_n(&h->fails[c->idx], 0, __ATOMIC_RELAXED);
			sp_info("upstream %s server %s is up (%u checks passed)", c->up->name,
				c->srv->addr.text, c->ok_streak);
		}
		return;
	}
	c->ok_streak = 0;
	c->fail_streak++;
	if (!h->down[c->idx] && c->fail_streak >= hc->fall) {
		__atomic_store_n(&h->down[c->idx], 1, __ATOMIC_RELAXED);
		sp_warn("upstream %s server %s is down (%u checks failed: %s)", c->up->name,
			c->srv->addr.text, c->fail_streak, why);
	}
}

static void finish(sp_health_t *h, check_t *c, bool ok, const char *why, uint64_t now)
{
	/* Out of the set before the close: a forked shard that still held a
	 * copy of the socket would keep the registration alive. */
	if (epoll_ctl(h->epfd, EPOLL_CTL_DEL, c->fd, NULL) == 0)
		h->inflight--;
	close(c->fd);
	c->fd = -1;
	c->due = now + c->up->health_check.interval_ms;
	verdict(h, c, ok, why);
}

static void start(sp_health_t *h, check_t *c, uint64_t now)
{
	struct sockaddr_storage ss = c->srv->addr.ss;
	socklen_t len = c->srv->addr.len;
	if (h->ctl) {
		const sp_server_ctl_t *x = &h->ctl[c->idx];
		/* Nothing to check (an empty slot), or the operator took it out. */
		if (__atomic_load_n(&x->admin, __ATOMIC_RELAXED) == SP_SRV_DISABLED ||
		    !sp_server_ctl_addr(x, &ss, &len)) {
			c->due = now + c->up->health_check.interval_ms;
			return;
		}
	} else if (!len) {
		c->due = now + c->up->health_check.interval_ms;
		return;
	}
	c->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		/* Our own problem (descriptors), not the server's: try later. */
		c->due = now + c->up->health_check.interval_ms;
		return;
	}
	c->due = now + c->up->health_check.timeout_ms;
	if (connect(c->fd, (const struct sockaddr *)&ss, len) == 0) {
		finish(h, c, true, NULL, now);
	} else if (errno != EINPROGRESS) {
		finish(h, c, false, strerror(errno), now);
	} else {
		struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
		if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, c->fd, &ev) == 0)
			h->inflight++;
		/* else it times out: a failed check, logged as one */
	}
}

int sp_health_pollfds(const sp_health_t *h, struct pollfd *pfds, int max)
{
	if (!h->inflight || max < 1)
		return 0;
	pfds[0] = (struct pollfd){.fd = h->epfd, .events = POLLIN};
	return 1;
}

int sp_health_timeout(const sp_health_t *h)
{
	uint64_t now = sp_clock_ms(), next = UINT64_MAX;
	for (size_t i = 0; i < h->n; i++)
		if (h->checks[i].due < next)
			next = h->checks[i].due;
	if (next == UINT64_MAX)
		return -1;
	if (next > now + PASSIVE_LOOK_MS)
		next = now + PASSIVE_LOOK_MS;
	return next <= now ? 0 : (int)(next - now);
}

void sp_health_run(sp_health_t *h, const struct pollfd *pfds, int n)
{
	struct epoll_event evs[64];
	uint64_t now = sp_clock_ms();
	int ready;
	(void)pfds;
	(void)n;
	/* Whatever the caller's poll saw, the set knows which checks ended. */
	do {
		ready = h->inflight ? epoll_wait(h->epfd, evs, 64, 0) : 0;
		for (int k = 0; k < ready; k++) {
			check_t *c = evs[k].data.ptr;
			int err = 0;
			socklen_t len = sizeof(err);
			if (c->fd < 0)
				continue;
			getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
			finish(h, c, err == 0, err ? strerror(err) : NULL, now);
		}
	} while (ready == 64);
	for (size_t i = 0; i < h->n; i++) {
		check_t *c = &h->checks[i];
		const sp_health_check_t *hc = &c->up->health_check;
		/* Passive: shards count connect failures from live traffic. */
		uint32_t passive = __atomic_load_n(&h->fails[c->idx], __ATOMIC_RELAXED);
		if (!h->down[c->idx] && passive >= hc->fall) {
			__atomic_store_n(&h->down[c->idx], 1, __ATOMIC_RELAXED);
			c->ok_streak = 0;
			sp_warn("upstream %s server %s is down (%u connection failures from traffic)",
				c->up->name, c->srv->addr.text, passive);
		}
		if (c->due > now)
			continue;
		if (c->fd >= 0)
			finish(h, c, false, "timed out", now);
		else
			start(h, c, now);
	}
}
