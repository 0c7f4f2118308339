/* loop_epoll: the epoll backend of the loop (see loop.h), for where io_uring
 * is blocked (container seccomp profiles, kernel.io_uring_disabled). The same
 * operations with the same completions, by readiness:
 * - every descriptor is registered once, edge-triggered, for both
 *   directions; an op first tries its system call and waits for an edge
 *   only after EAGAIN, so no readiness is ever lost and no epoll_ctl is paid
 *   per op (nothing to batch or skip: interest never changes);
 * - the read side of every descriptor remembers whether it may have data:
 *   a recv that came back short or with EAGAIN emptied the socket, and only
 *   a new edge makes it readable again, so a recv armed meanwhile (the
 *   copy engine re-arms its one-shot recv after every message) waits for
 *   that edge instead of paying a recv that would say EAGAIN;
 * - multishot accept and recv are emulated by draining to EAGAIN (a recv
 *   that fills less than a buffer has drained the socket), a budget per
 *   turn keeping one busy socket from starving the rest;
 * - recv takes buffers from the loop's pool, as the provided-buffer ring
 *   does under io_uring, and ends with -ENOBUFS when it is empty: at once,
 *   as io_uring's does, whether or not the socket has data, so a recv never
 *   waits for an edge while the pool is empty (see try_recv);
 * - connect timeouts are timers in the loop's heap;
 * - completions found while starting an op wait on a pending list until the
 *   next turn, so no handler runs inside the call that started its op. */
#include "runtime/loop_impl.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#define NEVENTS 256
#define ACCEPT_BUDGET 64 /* connections taken per listening socket per turn */
#define RECV_BUDGET 16   /* buffers filled per socket per turn */
#define NONE UINT32_MAX

enum { K_ACCEPT, K_RECV, K_RECV_INTO, K_SEND, K_CONNECT, K_POLL };

typedef struct {
	uint64_t tag;
	int fd;
	uint8_t kind;
	bool out;    /* waits in its fd's writing slot */
	bool live;   /* allocated */
	bool done;   /* finished: res is final, dispatched from the pending list */
	bool queued; /* on the pending list */
	bool once;   /* accept, recv: one result, then done */
	bool has_buf; /* the final result carries buffer bid */
	uint16_t bid;
	short events; /* poll */
	int res;
	const void *buf; /* send, recv_into */
	size_t len;
	sp_timer_t timer; /* connect timeout */
	uint32_t next;    /* pending list, or free list */
} eop_t;

typedef struct {
	uint32_t in, out; /* waiting op index, NONE for none */
	bool reg;         /* registered with epoll */
	/* A read may find something: data, end of file or an error. Cleared
	 * only by a recv of ours that emptied the socket, set by every read
	 * edge; false at registration, since registering an edge-triggered
	 * descriptor that is readable already reports it at the next wait. */
	bool rd_ready;
	bool rd_hup; /* end of file or error seen: readable for good */
	/* Registrations of this fd number so far: an event carries the one it
	 * was registered under, so an event collected for a file that was
	 * closed meanwhile (its number reused within one batch) is dropped
	 * instead of being taken for the new socket's. */
	uint32_t gen;
} fdent_t;

typedef struct {
	int epfd;
	eop_t *ops;
	uint32_t nops;
	uint32_t nfresh;    /* ops [0, nfresh) have been used at least once */
	uint32_t free_head; /* then they are recycled through this list */
	fdent_t *fds;
	uint32_t nfds;
	uint32_t phead, ptail; /* pending list (FIFO) */
	uint16_t *bfree;       /* buffer pool: a stack of free ids */
	uint32_t nbfree;
	struct epoll_event events[NEVENTS];
} ep_t;

static int ep_init(sp_loop_t *l, char *err, size_t errlen)
{
	ep_t *e = calloc(1, sizeof(*e));
	if (!e)
		goto nomem;
	e->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (e->epfd < 0) {
		int ret = -errno;
		snprintf(err, errlen, "epoll_create1: %s", strerror(errno));
		free(e);
		return ret;
	}
	e->nops = l->entries;
	e->ops = calloc(e->nops, sizeof(*e->ops));
	if (!e->ops) {
		close(e->epfd);
		free(e);
		goto nomem;
	}
	/* Records are handed out in order the first time, then recycled, so
	 * a pool sized for the worst case costs memory only as it is used. */
	e->free_head = NONE;
	e->phead = e->ptail = NONE;
	l->be_state = e;
	return 0;
nomem:
	snprintf(err, errlen, "epoll: %s", strerror(ENOMEM));
	return -ENOMEM;
}

static void ep_fini(sp_loop_t *l)
{
	ep_t *e = l->be_state;
	if (!e)
		return;
	close(e->epfd);
	free(e->ops);
	free(e->fds);
	free(e->bfree);
	free(e);
	l->be_state = NULL;
}

static int ep_bufs_init(sp_loop_t *l)
{
	ep_t *e = l->be_state;
	e->bfree = malloc(l->nbufs * sizeof(*e->bfree));
	if (!e->bfree)
		return -ENOMEM;
	/* Lowest ids on top: the buffers used first are the same few. */
	for (uint32_t i = 0; i < l->nbufs; i++)
		e->bfree[i] = (uint16_t)(l->nbufs - 1 - i);
	e->nbfree = l->nbufs;
	return 0;
}

static void ep_buf_put(sp_loop_t *l, uint16_t bid)
{
	ep_t *e = l->be_state;
	e->bfree[e->nbfree++] = bid;
}

/* The descriptor table grows by doubling, up to the largest fd seen: it is
 * indexed by fd, so lookups on every event cost nothing. */
static fdent_t *fd_entry(ep_t *e, int fd)
{
	if (fd < 0)
		return NULL;
	if ((uint32_t)fd >= e->nfds) {
		uint32_t n = e->nfds ? e->nfds : 1024;
		while (n <= (uint32_t)fd)
			n *= 2;
		fdent_t *t = realloc(e->fds, n * sizeof(*t));
		if (!t)
			return NULL;
		for (uint32_t i = e->nfds; i < n; i++)
			t[i] = (fdent_t){.in = NONE, .out = NONE};
		e->fds = t;
		e->nfds = n;
	}
	return &e->fds[fd];
}

static void enqueue(ep_t *e, eop_t *op)
{
	uint32_t i = (uint32_t)(op - e->ops);
	if (op->queued)
		return;
	op->queued = true;
	op->next = NONE;
	if (e->ptail == NONE)
		e->phead = i;
	else
		e->ops[e->ptail].next = i;
	e->ptail = i;
}

/* The op has its last result: off its fd, its timer stopped, and on the
 * pending list for delivery. */
static void finish(sp_loop_t *l, eop_t *op, int res)
{
	ep_t *e = l->be_state;
	uint32_t i = (uint32_t)(op - e->ops);
	fdent_t *f = &e->fds[op->fd];

	if (op->done)
		return;
	op->done = true;
	op->res = res;
	if (f->in == i)
		f->in = NONE;
	if (f->out == i)
		f->out = NONE;
	sp_timer_disarm(&l->timers, &op->timer);
	enqueue(e, op);
}

/* A one-shot recv's last result is its data. */
static void finish_buf(sp_loop_t *l, eop_t *op, int res, uint16_t bid)
{
	finish(l, op, res);
	op->has_buf = true;
	op->bid = bid;
}

static void on_connect_timeout(sp_timer_t *t, void *arg)
{
	eop_t *op = (eop_t *)((char *)t - offsetof(eop_t, timer));
	finish(arg, op, -ETIMEDOUT);
}

static int op_new(sp_loop_t *l, uint64_t tag, int fd, int kind, bool out, eop_t **opp)
{
	ep_t *e = l->be_state;
	fdent_t *f = fd_entry(e, fd);

	if (!f)
		return fd < 0 ? -EBADF : -ENOMEM;
	if ((out ? f->out : f->in) != NONE)
		return -EBUSY;
	if (e->free_head == NONE && e->nfresh == e->nops)
		return -ENOBUFS;
	if (!f->reg) {
		f->gen++;
		struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
					 .data.u64 = (uint64_t)f->gen << 32 | (uint32_t)fd};
		if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 &&
		    (errno != EEXIST || epoll_ctl(e->epfd, EPOLL_CTL_MOD, fd, &ev) < 0))
			return -errno;
		f->reg = true;
		f->rd_ready = f->rd_hup = false;
	}
	uint32_t i;
	if (e->free_head != NONE) {
		i = e->free_head;
		e->free_head = e->ops[i].next;
	} else {
		i = e->nfresh++;
	}
	eop_t *op = &e->ops[i];
	*op = (eop_t){.tag = tag, .fd = fd, .kind = (uint8_t)kind, .out = out, .live = true,
		      .next = NONE};
	sp_timer_setup(&op->timer, on_connect_timeout, l);
	if (out)
		f->out = i;
	else
		f->in = i;
	*opp = op;
	return 0;
}

static void op_free(ep_t *e, eop_t *op)
{
	op->live = false;
	op->next = e->free_head;
	e->free_head = (uint32_t)(op - e->ops);
}

static void deliver(sp_loop_t *l, eop_t *op, int res, bool more, bool has_buf, uint16_t bid)
{
	sp_completion_t c = {.res = res, .more = more, .has_buf = has_buf, .bid = bid};
	sp_loop__dispatch(l, op->tag, &c);
}

/* Drain the listening socket; each connection is one "more" completion. */
static void try_accept(sp_loop_t *l, eop_t *op)
{
	ep_t *e = l->be_state;
	for (int i = 0; i < ACCEPT_BUDGET; i++) {
		int fd = accept4(op->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				finish(l, op, -errno); /* as io_uring: an error ends the multishot */
			return;
		}
		if (op->once) {
			finish(l, op, fd);
			return;
		}
		deliver(l, op, fd, true, false, 0);
		if (op->done)
			return; /* the handler cancelled it */
	}
	enqueue(e, op); /* budget spent: more next turn */
}

/* Recv into pool buffers while the socket has data, within the budget. */
static void try_recv(sp_loop_t *l, eop_t *op)
{
	ep_t *e = l->be_state;
	fdent_t *f = &e->fds[op->fd];
	for (int i = 0; i < RECV_BUDGET; i++) {
		/* The empty pool first, before readiness, as io_uring's
		 * buffer select does: a recv that waited for an edge through a
		 * shortage would take the first buffer given back whenever its
		 * edge came, ahead of the owner's queue of starved readers and
		 * of its rule on who may take one while few are left (the copy
		 * engine's: a reader that holds buffers waits). Ended here, it
		 * asks the owner again. */
		if (e->nbfree == 0) {
			finish(l, op, -ENOBUFS);
			return;
		}
		if (!f->rd_ready)
			return; /* emptied by our last recv: wait for the next edge */
		/* Counted as out from here, as the owner sees it: a buffer
		 * whose completion waits on the pending list is not free. */
		uint16_t bid = e->bfree[--e->nbfree];
		l->bufs_out++;
		l->stats.recv_calls++;
		ssize_t n = recv(op->fd, sp_loop_buf(l, bid), l->bufsz, MSG_DONTWAIT);
		/* A short read emptied the socket (TCP and unix stream reads
		 * stop only when the queue is empty); data after it brings a
		 * new edge. After end of file, reads keep returning at once. */
		if (n >= 0 && (size_t)n < l->bufsz && !f->rd_hup)
			f->rd_ready = false;
		if (n > 0 && op->once) {
			finish_buf(l, op, (int)n, bid);
			return;
		}
		if (n > 0) {
			deliver(l, op, (int)n, true, true, bid);
			if (op->done)
				return;
			continue;
		}
		e->bfree[e->nbfree++] = bid;
		l->bufs_out--;
		if (n == 0) {
			finish(l, op, 0);
			return;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			l->stats.recv_empty++;
			f->rd_ready = false;
			return;
		}
		finish(l, op, -errno);
		return;
	}
	enqueue(e, op);
}

/* Recv into the caller's memory (op->buf): once, when the socket may have
 * data. */
static void try_recv_into(sp_loop_t *l, eop_t *op)
{
	ep_t *e = l->be_state;
	fdent_t *f = &e->fds[op->fd];
	while (f->rd_ready) {
		l->stats.recv_calls++;
		ssize_t n = recv(op->fd, (void *)op->buf, op->len, MSG_DONTWAIT);
		if (n >= 0 && (size_t)n < op->len && !f->rd_hup)
			f->rd_ready = false; /* as try_recv: a short read emptied it */
		if (n >= 0) {
			finish(l, op, (int)n);
			return;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			l->stats.recv_empty++;
			f->rd_ready = false;
			return;
		}
		finish(l, op, -errno);
		return;
	}
}

static void try_send(sp_loop_t *l, eop_t *op)
{
	for (;;) {
		ssize_t n = send(op->fd, op->buf, op->len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n >= 0) {
			finish(l, op, (int)n);
			return;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			finish(l, op, -errno);
		return;
	}
}

/* Writable after a non-blocking connect. ev: the events of this socket's
 * own registration (see fdent_t.gen). A connecting socket reports nothing
 * until the handshake ends (epoll polls it again when it hands the event
 * over), so writable without an error or hang-up is connected: no system
 * call. Otherwise SO_ERROR says how it failed. */
static void check_connect(sp_loop_t *l, eop_t *op, uint32_t ev)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if ((ev & EPOLLOUT) && !(ev & (EPOLLERR | EPOLLHUP))) {
		finish(l, op, 0);
		return;
	}
	if (getsockopt(op->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err)
		finish(l, op, -err);
	else if (ev & (EPOLLERR | EPOLLHUP))
		finish(l, op, -ECONNRESET); /* hung up, the error already taken */
}

static void check_poll(sp_loop_t *l, eop_t *op)
{
	struct pollfd p = {.fd = op->fd, .events = op->events};
	if (poll(&p, 1, 0) > 0)
		finish(l, op, p.revents);
}

static void attempt(sp_loop_t *l, eop_t *op, uint32_t ev)
{
	switch (op->kind) {
	case K_ACCEPT:
		try_accept(l, op);
		break;
	case K_RECV:
		try_recv(l, op);
		break;
	case K_RECV_INTO:
		try_recv_into(l, op);
		break;
	case K_SEND:
		try_send(l, op);
		break;
	case K_CONNECT:
		check_connect(l, op, ev);
		break;
	case K_POLL:
		check_poll(l, op);
		break;
	}
}

static int ep_accept(sp_loop_t *l, uint64_t tag, int fd, bool multishot)
{
	eop_t *op;
	int ret = op_new(l, tag, fd, K_ACCEPT, false, &op);
	if (ret == 0) {
		op->once = !multishot;
		enqueue(l->be_state, op); /* drained at the next turn */
	}
	return ret;
}

static int ep_recv(sp_loop_t *l, uint64_t tag, int fd, bool multishot)
{
	eop_t *op;
	int ret = op_new(l, tag, fd, K_RECV, false, &op);
	if (ret == 0) {
		ep_t *e = l->be_state;
		op->once = !multishot;
		/* else the next read edge starts it; with the pool empty it
		 * ends at once (see try_recv) */
		if (e->fds[fd].rd_ready || e->nbfree == 0)
			enqueue(e, op);
	}
	return ret;
}

static int ep_recv_into(sp_loop_t *l, uint64_t tag, int fd, void *buf, size_t len)
{
	eop_t *op;
	int ret = op_new(l, tag, fd, K_RECV_INTO, false, &op);
	if (ret == 0) {
		ep_t *e = l->be_state;
		op->buf = buf;
		op->len = len;
		if (e->fds[fd].rd_ready) /* else the next read edge starts it */
			enqueue(e, op);
	}
	return ret;
}

static int ep_send(sp_loop_t *l, uint64_t tag, int fd, const void *buf, size_t len)
{
	eop_t *op;
	int ret = op_new(l, tag, fd, K_SEND, true, &op);
	if (ret < 0)
		return ret;
	op->buf = buf;
	op->len = len;
	try_send(l, op);
	return 0;
}

static int ep_connect(sp_loop_t *l, uint64_t tag, int fd, const struct sockaddr *addr,
		      socklen_t alen, unsigned timeout_ms)
{
	eop_t *op;
	int ret = op_new(l, tag, fd, K_CONNECT, true, &op);
	if (ret < 0)
		return ret;
	if (connect(fd, addr, alen) == 0)
		finish(l, op, 0);
	else if (errno != EINPROGRESS && errno != EINTR)
		finish(l, op, -errno);
	else /* the clock now: the caller may not have come from a wait */
		sp_timer_arm(&l->timers, &op->timer, sp_loop__clock_ms() + timeout_ms);
	return 0;
}

/* Readiness may predate the registration, and a caller that stopped short
 * of EAGAIN gets no new edge, so a poll looks at the state once first. */
static int ep_poll(sp_loop_t *l, uint64_t tag, int fd, bool out)
{
	eop_t *op;
	int ret = op_new(l, tag, fd, K_POLL, out, &op);
	if (ret < 0)
		return ret;
	op->events = out ? POLLOUT : POLLIN;
	check_poll(l, op);
	return 0;
}

static int ep_cancel(sp_loop_t *l, int fd, uint64_t tag)
{
	ep_t *e = l->be_state;
	if (fd < 0 || (uint32_t)fd >= e->nfds)
		return -ENOENT;
	fdent_t *f = &e->fds[fd];
	uint32_t cand[2] = {f->in, f->out};
	for (int k = 0; k < 2; k++)
		if (cand[k] != NONE && e->ops[cand[k]].tag == tag) {
			finish(l, &e->ops[cand[k]], -ECANCELED);
			return 0;
		}
	return -ENOENT;
}

static int ep_cancel_fd(sp_loop_t *l, int fd)
{
	ep_t *e = l->be_state;
	if (fd < 0 || (uint32_t)fd >= e->nfds)
		return -ENOENT;
	fdent_t *f = &e->fds[fd];
	if (f->in != NONE)
		finish(l, &e->ops[f->in], -ECANCELED);
	if (f->out != NONE)
		finish(l, &e->ops[f->out], -ECANCELED);
	return 0;
}

/* Closing drops the epoll registration with the file; the entry forgets it
 * too, so the next socket given this number is registered afresh. */
static void ep_close(sp_loop_t *l, int fd)
{
	ep_t *e = l->be_state;
	if (fd >= 0 && (uint32_t)fd < e->nfds) {
		ep_cancel_fd(l, fd); /* ops must not outlive their fd */
		e->fds[fd].reg = false;
	}
	close(fd);
}

/* Deliver what finished and restart what has budget left, in FIFO order.
 * What handlers queue meanwhile (a send that completed at once, a recv armed
 * again) is taken in the same pass, so a message is received, handed over
 * and sent on in one turn; PENDING_BUDGET bounds the pass, so an op that
 * keeps completing at once (a poll on a socket nobody reads) cannot hold
 * the loop. */
#define PENDING_BUDGET 1024

static int run_pending(sp_loop_t *l)
{
	ep_t *e = l->be_state;
	int n = 0;

	for (int budget = PENDING_BUDGET; budget > 0 && e->phead != NONE; budget--) {
		uint32_t i = e->phead;
		eop_t *op = &e->ops[i];
		e->phead = op->next;
		if (e->phead == NONE)
			e->ptail = NONE;
		op->queued = false;
		if (op->done) {
			sp_completion_t c = {.res = op->res, .has_buf = op->has_buf, .bid = op->bid};
			uint64_t tag = op->tag;
			op_free(e, op); /* before the handler, which may reuse the slot */
			sp_loop__dispatch(l, tag, &c);
			n++;
		} else {
			attempt(l, op, 0);
		}
	}
	return n;
}

static int ep_wait(sp_loop_t *l, int timeout_ms)
{
	ep_t *e = l->be_state;
	int n = run_pending(l);

	/* Handlers ran or more is pending: look at readiness without sleeping,
	 * so the owner's once-per-turn work (log flush, re-arming) follows. */
	if (n > 0 || e->phead != NONE)
		timeout_ms = 0;
	int r = epoll_wait(e->epfd, e->events, NEVENTS, timeout_ms);
	if (r < 0) {
		if (errno != EINTR)
			return -errno;
		r = 0;
	}
	sp_loop__tick(l);
	for (int k = 0; k < r; k++) {
		uint32_t ev = e->events[k].events;
		uint64_t data = e->events[k].data.u64;
		int fd = (int)(uint32_t)data;
		if ((uint32_t)fd >= e->nfds)
			continue;
		fdent_t *f = &e->fds[fd];
		if (!f->reg || f->gen != (uint32_t)(data >> 32))
			continue; /* for a file closed since: not this socket's */
		if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
			/* Remembered with no op waiting too: the edge is not
			 * repeated, and the recv armed later must know. */
			f->rd_ready = true;
			if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
				f->rd_hup = true;
			if (f->in != NONE)
				attempt(l, &e->ops[f->in], ev);
		}
		uint32_t out = f->out; /* after: the reader's handler may have ended it */
		if (out != NONE && (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)))
			attempt(l, &e->ops[out], ev);
	}
	return n + r;
}

static void ep_describe(const sp_loop_t *l, char *buf, size_t len)
{
	(void)l;
	snprintf(buf, len, "epoll (edge-triggered; multishot accept and recv emulated)");
}

const sp_loop_backend_ops_t sp_loop_epoll_ops = {
	.id = SP_LOOP_EPOLL,
	.init = ep_init,
	.fini = ep_fini,
	.bufs_init = ep_bufs_init,
	.buf_put = ep_buf_put,
	.accept = ep_accept,
	.recv = ep_recv,
	.recv_into = ep_recv_into,
	.send = ep_send,
	.connect = ep_connect,
	.poll = ep_poll,
	.cancel = ep_cancel,
	.cancel_fd = ep_cancel_fd,
	.close = ep_close,
	.wait = ep_wait,
	.describe = ep_describe,
};
