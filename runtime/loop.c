/* loop: the backend-neutral half of the event loop (see loop.h): handler
 * table, generation check, timers, clock and buffer memory; every operation
 * is forwarded to the backend chosen at sp_loop_new. */
#include "runtime/loop_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

uint64_t sp_loop__clock_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

const char *sp_loop_backend_name(sp_loop_backend_t b)
{
	switch (b) {
	case SP_LOOP_URING:
		return "io_uring";
	case SP_LOOP_EPOLL:
		return "epoll";
	}
	return "?";
}

int sp_loop_new(sp_loop_t **out, const sp_loop_config_t *cfg, char *err, size_t errlen)
{
	sp_loop_t *l = calloc(1, sizeof(*l));
	int ret;

	*out = NULL;
	if (!l) {
		snprintf(err, errlen, "event loop: %s", strerror(ENOMEM));
		return -ENOMEM;
	}
	switch (cfg->backend) {
	case SP_LOOP_URING:
		l->be = &sp_loop_uring_ops;
		break;
	case SP_LOOP_EPOLL:
		l->be = &sp_loop_epoll_ops;
		break;
	default:
		free(l);
		snprintf(err, errlen, "event loop: unknown backend %d", (int)cfg->backend);
		return -EINVAL;
	}
	l->ctx = cfg->ctx;
	l->entries = cfg->entries ? cfg->entries : 64;
	l->now_ms = sp_loop__clock_ms();
	/* The backend's own timeouts (epoll connects) share the heap. */
	ret = sp_timers_init(&l->timers, cfg->timers + l->entries);
	if (ret < 0) {
		snprintf(err, errlen, "event loop: timer heap of %u: %s", cfg->timers + l->entries,
			 strerror(-ret));
		goto err;
	}
	ret = l->be->init(l, err, errlen);
	if (ret < 0)
		goto err;
	*out = l;
	return 0;
err:
	sp_timers_free(&l->timers);
	free(l);
	return ret;
}

void sp_loop_free(sp_loop_t *l)
{
	if (!l)
		return;
	l->be->fini(l);
	if (l->buf_base)
		munmap(l->buf_base, (size_t)l->nbufs * l->bufsz);
	sp_timers_free(&l->timers);
	free(l);
}

sp_loop_backend_t sp_loop_backend(const sp_loop_t *l) { return l->be->id; }

void sp_loop_describe(const sp_loop_t *l, char *buf, size_t len) { l->be->describe(l, buf, len); }

void sp_loop_on(sp_loop_t *l, unsigned op, sp_loop_fn fn, bool check_gen)
{
	if (op == 0 || op >= SP_LOOP_MAX_OPS)
		return;
	l->handlers[op].fn = fn;
	l->handlers[op].check_gen = check_gen;
}

void sp_loop_set_gens(sp_loop_t *l, const uint32_t *gens, uint32_t n)
{
	l->gens = gens;
	l->ngens = n;
}

int sp_loop_bufs_init(sp_loop_t *l, uint32_t nbufs, uint32_t bufsz)
{
	if (l->buf_base)
		return -EALREADY;
	if (nbufs == 0 || (nbufs & (nbufs - 1)) || nbufs > SP_LOOP_MAX_BUFS || bufsz == 0 ||
	    bufsz > SP_LOOP_MAX_BUF_SIZE)
		return -EINVAL;
	/* Buffers are touched only when data lands in them, so a large pool
	 * costs address space, not resident memory, until it is used. */
	void *p = mmap(NULL, (size_t)nbufs * bufsz, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	l->buf_base = p;
	l->nbufs = nbufs;
	l->bufsz = bufsz;
	int ret = l->be->bufs_init(l);
	if (ret < 0) {
		munmap(p, (size_t)nbufs * bufsz);
		l->buf_base = NULL;
		l->nbufs = l->bufsz = 0;
	}
	return ret;
}

uint8_t *sp_loop_buf(const sp_loop_t *l, uint16_t bid)
{
	return l->buf_base + (size_t)bid * l->bufsz;
}

void sp_loop_buf_put(sp_loop_t *l, uint16_t bid)
{
	l->bufs_out--;
	l->be->buf_put(l, bid);
}

uint32_t sp_loop_bufs_total(const sp_loop_t *l) { return l->nbufs; }
uint32_t sp_loop_bufs_out(const sp_loop_t *l) { return l->bufs_out; }

int sp_loop_accept(sp_loop_t *l, uint64_t tag, int fd, bool multishot)
{
	return l->be->accept(l, tag, fd, multishot);
}

int sp_loop_recv(sp_loop_t *l, uint64_t tag, int fd, bool multishot)
{
	if (!l->buf_base)
		return -EINVAL;
	return l->be->recv(l, tag, fd, multishot);
}

int sp_loop_recv_into(sp_loop_t *l, uint64_t tag, int fd, void *buf, size_t len)
{
	if (!buf || len == 0 || len > SP_LOOP_MAX_BUF_SIZE)
		return -EINVAL;
	return l->be->recv_into(l, tag, fd, buf, len);
}

bool sp_loop_can_lend(const sp_loop_t *l)
{
	return l->buf_base && l->be->can_lend && l->be->can_lend(l);
}

int sp_loop_buf_lend(sp_loop_t *l, uint16_t group, uint16_t bid)
{
	if (!sp_loop_can_lend(l))
		return -EOPNOTSUPP;
	if (group == 0 || bid >= l->nbufs)
		return -EINVAL;
	return l->be->lend(l, group, bid);
}

int sp_loop_buf_unlend(sp_loop_t *l, uint16_t group, uint16_t bid)
{
	if (!l->buf_base || !l->be->unlend)
		return -EOPNOTSUPP;
	if (group == 0 || bid >= l->nbufs)
		return -EINVAL;
	return l->be->unlend(l, group, bid);
}

int sp_loop_recv_lent(sp_loop_t *l, uint64_t tag, int fd, uint16_t group)
{
	if (!sp_loop_can_lend(l))
		return -EOPNOTSUPP;
	if (group == 0)
		return -EINVAL;
	return l->be->recv_lent(l, tag, fd, group);
}

int sp_loop_send(sp_loop_t *l, uint64_t tag, int fd, const void *buf, size_t len)
{
	return l->be->send(l, tag, fd, buf, len);
}

int sp_loop_connect(sp_loop_t *l, uint64_t tag, int fd, const struct sockaddr *addr,
		    socklen_t alen, unsigned timeout_ms)
{
	return l->be->connect(l, tag, fd, addr, alen, timeout_ms);
}

bool sp_loop_can_socket_connect(const sp_loop_t *l)
{
	return l->be->can_socket_connect && l->be->can_socket_connect(l);
}

int sp_loop_socket_connect(sp_loop_t *l, uint64_t tag, const struct sockaddr *addr,
			   socklen_t alen, unsigned timeout_ms)
{
	if (!sp_loop_can_socket_connect(l))
		return -EOPNOTSUPP;
	return l->be->socket_connect(l, tag, addr, alen, timeout_ms);
}

int sp_loop_poll(sp_loop_t *l, uint64_t tag, int fd, bool out)
{
	return l->be->poll(l, tag, fd, out);
}

int sp_loop_cancel(sp_loop_t *l, int fd, uint64_t tag) { return l->be->cancel(l, fd, tag); }
int sp_loop_cancel_fd(sp_loop_t *l, int fd) { return l->be->cancel_fd(l, fd); }
void sp_loop_close(sp_loop_t *l, int fd) { l->be->close(l, fd); }

void sp_loop_close_later(sp_loop_t *l, int fd)
{
	if (l->be->close_later)
		l->be->close_later(l, fd);
	else
		l->be->close(l, fd);
}

uint64_t sp_loop_now(const sp_loop_t *l) { return l->now_ms; }

int sp_loop_timer_arm(sp_loop_t *l, sp_timer_t *t, uint64_t deadline)
{
	return sp_timer_arm(&l->timers, t, deadline);
}

void sp_loop_timer_disarm(sp_loop_t *l, sp_timer_t *t) { sp_timer_disarm(&l->timers, t); }

void sp_loop__tick(sp_loop_t *l) { l->now_ms = sp_loop__clock_ms(); }

void sp_loop__dispatch(sp_loop_t *l, uint64_t tag, const sp_completion_t *c)
{
	unsigned op = sp_udata_op(tag);
	uint32_t slot = sp_udata_slot(tag);
	const sp_loop_handler_t *h = &l->handlers[op];

	if (!h->fn) {
		/* An op whose result nobody needs; a buffer goes straight back. */
		if (c->has_buf)
			sp_loop_buf_put(l, c->bid);
		return;
	}
	if (h->check_gen && l->gens &&
	    (slot >= l->ngens || (l->gens[slot] & SP_UDATA_GEN_MASK) != sp_udata_gen(tag))) {
		l->stats.stale_drops++;
		if (c->has_buf)
			sp_loop_buf_put(l, c->bid);
		return;
	}
	h->fn(l->ctx, op, slot, c);
}

int sp_loop_run_once(sp_loop_t *l, int max_wait_ms)
{
	uint64_t next = sp_timers_next(&l->timers);
	int timeout = max_wait_ms;
	if (next != UINT64_MAX) {
		uint64_t now = l->now_ms;
		int t = next <= now ? 0 : next - now > 1000000 ? 1000000 : (int)(next - now);
		if (timeout < 0 || t < timeout)
			timeout = t;
	}
	int n = l->be->wait(l, timeout);
	if (n < 0)
		return n;
	return n + (int)sp_timers_run(&l->timers, l->now_ms);
}

void sp_loop_stats(const sp_loop_t *l, sp_loop_stats_t *st) { *st = l->stats; }
