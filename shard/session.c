/* session: one client connection's life, as a state machine driven by
 * completions:
 *   accept -> [PEEK: PROXY header / ClientHello, peek.c] -> route -> pick
 *   server -> CONNECTING (connect + linked timeout, retry on the next
 *   server) -> RELAY (engine moves bytes, half-close each way) -> CLOSING
 *   (cancel what is in flight, wait for it) -> closed (access log line,
 *   counters, slot back to the pool).
 * A slot is reused only when no op of its previous life can still complete;
 * the slot generation in user_data is the guard behind that rule. */
#include <errno.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime/log.h"
#include "shard/accesslog.h"
#include "shard/peek.h"
#include "shard/proxyproto.h"
#include "shard/route.h"
#include "shard/session.h"

int sp_sessions_init(sp_shard_t *sh, uint32_t n)
{
	sh->sessions = calloc(n, sizeof(*sh->sessions));
	sh->gens = calloc(n, sizeof(*sh->gens));
	if (!sh->sessions || !sh->gens)
		return -ENOMEM;
	/* Slots are handed out in order the first time (nfresh), then recycled
	 * through free_list: pages of slots never used are never touched, so
	 * a large max_connections costs no memory until it is used. */
	sh->nsessions = n;
	sh->nfresh = 0;
	sh->free_list = NULL;
	sp_loop_set_gens(sh->loop, sh->gens, n);
	return 0;
}

void sp_sessions_free(sp_shard_t *sh)
{
	free(sh->sessions);
	free(sh->gens);
	sh->sessions = NULL;
	sh->gens = NULL;
}

static void set_nodelay(int fd)
{
	int one = 1;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Close with RST instead of FIN: how a reset is passed on to the other side. */
static void set_abortive(int fd)
{
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	(void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

static const char *const end_names[SP_END_COUNT] = {
	[SP_END_DONE] = "done",
	[SP_END_CLIENT_RESET] = "client_reset",
	[SP_END_UPSTREAM_RESET] = "upstream_reset",
	[SP_END_IDLE_TIMEOUT] = "idle_timeout",
	[SP_END_CONNECT_FAILED] = "connect_failed",
	[SP_END_NO_ROUTE] = "no_route",
	[SP_END_PEEK_TIMEOUT] = "peek_timeout",
	[SP_END_BAD_HEADER] = "bad_proxy_header",
	[SP_END_DRAIN_TIMEOUT] = "drain_timeout",
	[SP_END_ERROR] = "error",
};

const char *sp_shard_end_name(unsigned end)
{
	return end < SP_END_COUNT ? end_names[end] : NULL;
}

/* The number of the session's upstream's server k across upstreams
 * (conf's first_server): its row in the shared health, control and counter
 * arrays, and its slot in sh->srv_addr. conf caps the numbering at
 * SP_CONF_MAX_SERVERS, the size of the shared arrays. */
static uint32_t server_number(const sp_shard_t *sh, const sp_session_t *s, unsigned k)
{
	return sh->conf->upstreams[s->upstream].first_server + k;
}

/* Per-listener and per-server detail, in the same slot (shard.h). */
static sp_listener_stats_t *listener_stats(sp_shard_t *sh, const sp_session_t *s)
{
	return &sh->args->stats->listeners[s->listener];
}

static sp_server_stats_t *server_stats(sp_shard_t *sh, const sp_session_t *s)
{
	if (s->server < 0)
		return NULL;
	uint32_t i = server_number(sh, s, (unsigned)s->server);
	return i < SP_STATS_MAX_SERVERS ? &sh->args->stats->servers[i] : NULL;
}

static void count_connect_result(sp_shard_t *sh, const sp_session_t *s, int res)
{
	sp_server_stats_t *ss = server_stats(sh, s);
	if (!ss)
		return;
	if (res == 0) {
		sp_stat_add(&ss->connected, 1);
		sp_stat_add(&ss->active, 1);
		return;
	}
	int err = -res;
	sp_stat_add(err == ETIMEDOUT ? &ss->timeouts : &ss->failures, 1);
	__atomic_store_n(&ss->last_fail, (uint64_t)time(NULL) << 16 | (uint64_t)(err & 0xffff),
			 __ATOMIC_RELAXED);
}

static void count_finished(sp_shard_t *sh, const sp_session_t *s)
{
	sp_listener_stats_t *ls = listener_stats(sh, s);
	sp_server_stats_t *ss = s->counted ? server_stats(sh, s) : NULL;
	uint64_t in = s->dir[SP_UP].bytes, out = s->dir[SP_DOWN].bytes;

	sp_stat_add(&sh->args->stats->active, -1);
	sp_stat_add(&sh->args->stats->closed[s->end], 1);
	sp_stat_add(&ls->active, -1);
	sp_stat_add(&ls->bytes_in, (int64_t)in);
	sp_stat_add(&ls->bytes_out, (int64_t)out);
	if (ss) {
		sp_stat_add(&ss->active, -1);
		sp_stat_add(&ss->bytes_in, (int64_t)in);
		sp_stat_add(&ss->bytes_out, (int64_t)out);
	}
}

static void finish(sp_shard_t *sh, sp_session_t *s)
{
	sh->engine->release(sh, s);
	if (s->end == SP_END_CLIENT_RESET && s->ufd >= 0)
		set_abortive(s->ufd);
	else if (s->end == SP_END_UPSTREAM_RESET)
		set_abortive(s->cfd);
	if (s->ufd >= 0)
		sp_loop_close_later(sh->loop, s->ufd);
	sp_loop_close_later(sh->loop, s->cfd);
	if (s->counted)
		sp_balancer_released(&sh->balancers[s->upstream], (unsigned)s->server);
	sp_accesslog_session(sh, s);

	count_finished(sh, s);
	if (sh->args->steer_load)
		__atomic_fetch_sub(&sh->args->steer_load[sh->args->slot], 1, __ATOMIC_RELAXED);

	sh->gens[s->idx]++;
	s->state = SP_SESSION_FREE;
	s->next_free = sh->free_list;
	sh->free_list = s;
	sh->active--; /* the shard re-arms its accepts once per loop turn */
}

void sp_session_op_done(sp_shard_t *sh, sp_session_t *s)
{
	if (s->state == SP_SESSION_CLOSING && s->inflight == 0)
		finish(sh, s);
}

void sp_session_fail(sp_shard_t *sh, sp_session_t *s, sp_end_t why)
{
	if (s->state == SP_SESSION_CLOSING || s->state == SP_SESSION_FREE)
		return;
	s->end = why;
	s->state = SP_SESSION_CLOSING;
	sp_loop_timer_disarm(sh->loop, &s->timer);
	if (s->inflight) {
		/* Ops keep their buffers and fds until they complete, so the fds
		 * close only when the last completion is in (sp_session_op_done). */
		sp_loop_cancel_fd(sh->loop, s->cfd);
		if (s->ufd >= 0)
			sp_loop_cancel_fd(sh->loop, s->ufd);
		return;
	}
	finish(sh, s);
}

void sp_session_touch(sp_shard_t *sh, sp_session_t *s)
{
	s->last_active_ms = sp_shard_now(sh);
}

/* Idle check from the shard's timer heap: activity only stamps
 * last_active_ms, and the timer re-arms itself for the remainder, so busy
 * sessions cost no heap operation per byte. */
static void connect_next(sp_shard_t *sh, sp_session_t *s);
static void reset_when_acked(sp_shard_t *sh, sp_session_t *s);

static void on_session_timer(sp_timer_t *t, void *arg)
{
	sp_shard_t *sh = arg;
	sp_session_t *s = (sp_session_t *)((char *)t - offsetof(sp_session_t, timer));

	if (s->state == SP_SESSION_PEEK) {
		sp_peek_on_timer(sh, s);
		return;
	}
	if (s->state == SP_SESSION_CONNECTING && s->fd_wait_until && s->ufd < 0 && !s->inflight) {
		connect_next(sh, s); /* the socket(2) that found no descriptor, again */
		return;
	}
	if (s->state != SP_SESSION_RELAY)
		return;
	if (s->ack_wait) {
		if (sp_shard_now(sh) - s->last_active_ms >=
		    sh->conf->upstreams[s->upstream].idle_timeout_ms)
			sp_session_fail(sh, s, s->reset_end);
		else
			reset_when_acked(sh, s);
		return;
	}
	/* A direction that found no descriptor for a pipe tries again. */
	bool waiting = false;
	for (int d = 0; d < 2 && s->state == SP_SESSION_RELAY; d++) {
		if (!s->dir[d].pipe_wait)
			continue;
		s->dir[d].pipe_wait = false;
		sp_splice_take_dir(sh, s, d);
		waiting |= s->dir[d].pipe_wait;
	}
	if (s->state != SP_SESSION_RELAY)
		return;
	uint64_t idle = sh->conf->upstreams[s->upstream].idle_timeout_ms;
	if (sp_shard_now(sh) - s->last_active_ms >= idle) {
		sp_session_fail(sh, s, SP_END_IDLE_TIMEOUT);
		return;
	}
	uint64_t at = s->last_active_ms + idle;
	if (waiting && sp_shard_now(sh) + SP_SHORTAGE_RETRY_MS < at)
		at = sp_shard_now(sh) + SP_SHORTAGE_RETRY_MS;
	sp_loop_timer_arm(sh->loop, t, at);
}

/* The direction out of a peer that reset has sent everything: the reset is
 * passed on once the other side's kernel has acknowledged those bytes
 * (closing with SO_LINGER 0 earlier would discard them from the send
 * queue). A reader that stops is bounded by the idle timeout. */
#define ACK_POLL_MS 5

static void reset_when_acked(sp_shard_t *sh, sp_session_t *s)
{
	int outq = 0;
	if (ioctl(s->dir[s->reset_dir].dst, SIOCOUTQ, &outq) < 0 || outq <= 0) {
		sp_session_fail(sh, s, s->reset_end);
		return;
	}
	if (!s->ack_wait || (uint32_t)outq < s->ack_outq)
		sp_session_touch(sh, s); /* the reader is reading */
	s->ack_wait = true;
	s->ack_outq = (uint32_t)outq;
	sp_loop_timer_arm(sh->loop, &s->timer, sp_shard_now(sh) + ACK_POLL_MS);
}

void sp_session_peer_reset(sp_shard_t *sh, sp_session_t *s, int d, bool at_src)
{
	int fd = at_src ? s->dir[d].src : s->dir[d].dst;
	sp_end_t why = fd == s->cfd ? SP_END_CLIENT_RESET : SP_END_UPSTREAM_RESET;
	int out = fd == s->dir[SP_UP].src ? SP_UP : SP_DOWN;

	if (s->state != SP_SESSION_RELAY)
		return;
	if (s->reset_end && s->reset_end != why) {
		sp_session_fail(sh, s, s->reset_end); /* both sides failed */
		return;
	}
	s->reset_end = why;
	s->reset_dir = (int8_t)out;
	s->dir[!out].dead = true;
	s->dir[!out].shut = true;
	if (at_src)
		s->dir[out].eof = true; /* the error ends what the peer sent */
	if (s->dir[out].shut && !s->ack_wait)
		reset_when_acked(sh, s); /* delivered already (its FIN went on) */
}

void sp_dir_eof_flushed(sp_shard_t *sh, sp_session_t *s, int dir)
{
	sp_dir_t *d = &s->dir[dir];
	if (d->shut)
		return;
	d->shut = true;
	if (s->reset_end) {
		reset_when_acked(sh, s);
		return;
	}
	/* Both ways done: dst has nothing left to read (its own FIN was read
	 * and passed on), so the close that ends the session sends this FIN;
	 * a shutdown(2) first would only cost a syscall and a state change. */
	if (s->dir[!dir].shut) {
		sp_session_fail(sh, s, SP_END_DONE);
		return;
	}
	/* The FIN travels on; the other direction may still carry data. */
	shutdown(d->dst, SHUT_WR);
}

/* The server's health slot, when its upstream is health-checked. */
static uint32_t *server_fails(sp_shard_t *sh, const sp_session_t *s, unsigned server)
{
	if (!sh->conf->upstreams[s->upstream].health_check.enabled || !sh->args->server_fails)
		return NULL;
	return &sh->args->server_fails[server_number(sh, s, server)];
}

/* Servers marked down by health checks are skipped while any other is left;
 * when every remaining one is down, they are tried anyway. */
static int pick_server(sp_shard_t *sh, sp_session_t *s)
{
	const sp_upstream_t *up = &sh->conf->upstreams[s->upstream];
	sp_balancer_t *b = &sh->balancers[s->upstream];
	uint64_t h = sp_hash_addr((struct sockaddr *)&s->client);

	if (up->health_check.enabled && sh->args->server_down) {
		const uint8_t *down = sh->args->server_down + up->first_server;
		sp_server_set_t ex = s->tried;
		for (unsigned k = 0; k < up->nservers; k++)
			if (__atomic_load_n(&down[k], __ATOMIC_RELAXED))
				sp_server_set_add(&ex, k);
		int i = sp_balancer_pick(b, h, &ex);
		if (i >= 0)
			return i;
	}
	return sp_balancer_pick(b, h, &s->tried);
}

/* No descriptor for the upstream socket. Out of descriptors is neither this
 * server's fault nor the client's: the shard takes no new clients and the
 * session tries again soon, within connect_timeout_ms (on_session_timer). */
static void socket_failed(sp_shard_t *sh, sp_session_t *s, const sp_server_t *srv, int err)
{
	const sp_upstream_t *up = &sh->conf->upstreams[s->upstream];
	if (sp_fd_shortage(err)) {
		sp_shard_note_shortage(sh, "socket", err);
		if (!s->fd_wait_until)
			s->fd_wait_until = sp_shard_now(sh) + up->connect_timeout_ms;
		if (sp_shard_now(sh) < s->fd_wait_until) {
			sp_loop_timer_arm(sh->loop, &s->timer, sp_shard_now(sh) + SP_SHORTAGE_RETRY_MS);
			return;
		}
	}
	sp_warn("upstream %s server %s: socket: %s", up->name, srv->addr.text, strerror(err));
	sp_session_fail(sh, s, SP_END_ERROR);
}

/* The upstream socket of an attempt on server i exists. */
static void attempt_counted(sp_shard_t *sh, sp_session_t *s, unsigned i)
{
	s->fd_wait_until = 0;
	sp_server_set_add(&s->tried, i);
	s->server = (int16_t)i;
	s->attempts++;
	if (server_stats(sh, s))
		sp_stat_add(&server_stats(sh, s)->attempts, 1);
}

static void connect_next(sp_shard_t *sh, sp_session_t *s)
{
	const sp_upstream_t *up = &sh->conf->upstreams[s->upstream];
	int i;

	if (s->attempts > up->retries || (i = pick_server(sh, s)) < 0) {
		sp_stat_add(&sh->args->stats->connect_failed, 1);
		sp_session_fail(sh, s, SP_END_CONNECT_FAILED);
		return;
	}
	const sp_server_t *srv = &up->servers[i];
	/* The address in force (the resolver may have changed it), copied from
	 * shared memory to this shard's own slot for the server: the kernel
	 * reads it when the ring submits the connect, later in this loop turn,
	 * and only this thread writes the slot. */
	uint32_t gi = server_number(sh, s, (unsigned)i);
	struct sockaddr_storage *dst = &sh->srv_addr[gi];
	socklen_t dlen = srv->addr.len;
	if (sh->args->server_ctl) {
		if (!sp_server_ctl_addr(&sh->args->server_ctl[gi], dst, &dlen)) {
			sp_server_set_add(&s->tried, (unsigned)i); /* emptied since the pick */
			connect_next(sh, s);
			return;
		}
	} else {
		memcpy(dst, &srv->addr.ss, sizeof(*dst));
	}
	s->state = SP_SESSION_CONNECTING;
	/* The address is this shard's own slot for the server, which only this
	 * thread writes and which outlives the loop turn (loop.h). */
	uint64_t tag = sp_session_tag(sh, s, SP_OP_CONNECT);
	if (sp_loop_can_socket_connect(sh->loop) &&
	    sp_loop_socket_connect(sh->loop, tag, (const struct sockaddr *)dst, dlen,
				   up->connect_timeout_ms) == 0) {
		/* io_uring makes the socket (two system calls fewer); its
		 * descriptor comes first (sp_session_on_connect, more=true) */
		s->server = (int16_t)i;
		s->sock_err = 0;
		sp_session_started(sh, s, 0);
		return;
	}
	s->ufd = socket(dst->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->ufd < 0) {
		socket_failed(sh, s, srv, errno);
		return;
	}
	set_nodelay(s->ufd);
	attempt_counted(sh, s, (unsigned)i);
	sp_session_started(sh, s,
			   sp_loop_connect(sh->loop, tag, s->ufd, (const struct sockaddr *)dst, dlen,
					   up->connect_timeout_ms));
}

/* send_proxy_protocol: the header goes out first, synchronously: the socket
 * was connected a moment ago, so its send buffer is empty and a header of at
 * most 108 bytes always fits. */
static int send_proxy_header(sp_shard_t *sh, sp_session_t *s)
{
	const sp_upstream_t *up = &sh->conf->upstreams[s->upstream];
	uint8_t hdr[128];
	if (up->send_proxy_protocol == SP_PROXY_PROTO_NONE)
		return 0;
	if (s->local.ss_family == AF_UNSPEC) { /* looked up only when a header needs it */
		socklen_t alen = sizeof(s->local);
		if (getsockname(s->cfd, (struct sockaddr *)&s->local, &alen) < 0)
			return -errno;
	}
	size_t len = sp_proxyproto_build(up->send_proxy_protocol == SP_PROXY_PROTO_V1 ? 1 : 2,
					 (struct sockaddr *)&s->client,
					 (struct sockaddr *)&s->local, hdr, sizeof(hdr));
	if (len == 0 || send(s->ufd, hdr, len, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)len)
		return -EIO;
	return 0;
}

void sp_session_on_connect(void *ctx, unsigned op, uint32_t slot, const sp_completion_t *c)
{
	sp_shard_t *sh = ctx;
	sp_session_t *s = &sh->sessions[slot];
	int res = c->res;
	(void)op;

	if (c->more) {
		/* sp_loop_socket_connect's descriptor, before its connect ends */
		if (res < 0) {
			s->sock_err = -res;
		} else if (s->state != SP_SESSION_CONNECTING) {
			/* the session ended meanwhile: so does the connect */
			sp_loop_cancel(sh->loop, res, sp_session_tag(sh, s, SP_OP_CONNECT));
			sp_loop_close(sh->loop, res);
		} else {
			s->ufd = res;
			attempt_counted(sh, s, (unsigned)s->server);
		}
		return;
	}
	s->inflight--;
	if (s->state != SP_SESSION_CONNECTING) {
		sp_session_op_done(sh, s);
		return;
	}
	if (s->ufd < 0) {
		/* the ring made no socket: as when socket(2) fails */
		const sp_upstream_t *up = &sh->conf->upstreams[s->upstream];
		int16_t server = s->server;
		s->server = -1;
		socket_failed(sh, s, &up->servers[server], s->sock_err ? s->sock_err : EIO);
		return;
	}
	if (res == 0) {
		uint32_t *fails = server_fails(sh, s, (unsigned)s->server);
		if (fails && __atomic_load_n(fails, __ATOMIC_RELAXED))
			__atomic_store_n(fails, 0, __ATOMIC_RELAXED);
		count_connect_result(sh, s, 0);
		s->state = SP_SESSION_RELAY;
		s->counted = true;
		sp_balancer_connected(&sh->balancers[s->upstream], (unsigned)s->server);
		s->dir[SP_UP] = (sp_dir_t){.src = s->cfd, .dst = s->ufd, .pipe = {-1, -1}};
		s->dir[SP_DOWN] = (sp_dir_t){.src = s->ufd, .dst = s->cfd, .pipe = {-1, -1}};
		if (send_proxy_header(sh, s) < 0) {
			sp_session_fail(sh, s, SP_END_UPSTREAM_RESET);
			return;
		}
		sp_session_touch(sh, s);
		sp_loop_timer_arm(sh->loop, &s->timer,
			     sp_shard_now(sh) + sh->conf->upstreams[s->upstream].idle_timeout_ms);
		sh->engine->start(sh, s);
		return;
	}
	const sp_upstream_t *up = &sh->conf->upstreams[s->upstream];
	sp_debug("upstream %s server %s: connect: %s", up->name,
		 up->servers[s->server].addr.text,
		 strerror(-res));
	uint32_t *fails = server_fails(sh, s, (unsigned)s->server);
	if (fails)
		__atomic_fetch_add(fails, 1, __ATOMIC_RELAXED);
	count_connect_result(sh, s, res);
	sp_loop_close(sh->loop, s->ufd);
	s->ufd = -1;
	connect_next(sh, s);
}

void sp_session_on_relay(void *ctx, unsigned op, uint32_t slot, const sp_completion_t *c)
{
	sp_shard_t *sh = ctx;
	sp_session_t *s = &sh->sessions[slot];
	const sp_relay_op_t *r = &sp_relay_ops[op];

	if (!c->more)
		s->inflight--;
	sh->engine->on_completion(sh, s, (sp_relay_kind_t)r->kind, r->dir, c);
	sp_session_op_done(sh, s);
}

/* Routing picks the route (route.c), and with it the upstream. */
void sp_session_route(sp_shard_t *sh, sp_session_t *s, const char *sni)
{
	const sp_listener_t *l = &sh->conf->listeners[s->listener];
	int r = sp_route_pick(l, (struct sockaddr *)&s->client, sni);
	if (r < 0) {
		s->route = SP_SESSION_NO_ROUTE;
		sp_stat_add(&sh->args->stats->no_route, 1);
		sp_stat_add(&listener_stats(sh, s)->no_route, 1);
		sp_session_fail(sh, s, SP_END_NO_ROUTE);
		return;
	}
	s->route = (uint32_t)r;
	s->upstream = (uint16_t)l->routes[r].upstream;
	connect_next(sh, s);
}

void sp_session_accepted(sp_shard_t *sh, unsigned accept_idx, int fd)
{
	sp_session_t *s = sh->free_list;
	if (!s && sh->nfresh < sh->nsessions) {
		s = &sh->sessions[sh->nfresh];
		s->idx = sh->nfresh++;
	}
	const sp_listener_t *l = &sh->conf->listeners[sh->accepts[accept_idx].listener];
	socklen_t alen = sizeof(s->client);

	if (!s) {
		/* Only reachable past the pool's SP_SESSION_SLACK: the pool has
		 * that much room for the moment between hitting the limit and
		 * the accept cancel landing. */
		sp_stat_add(&sh->args->stats->refused, 1);
		sp_stat_add(&sh->args->stats->listeners[sh->accepts[accept_idx].listener].refused, 1);
		close(fd);
		return;
	}
	if (s == sh->free_list)
		sh->free_list = s->next_free;
	uint32_t idx = s->idx;
	memset(s, 0, sizeof(*s));
	s->idx = idx;
	s->cfd = fd;
	s->ufd = -1;
	s->server = -1;
	s->route = SP_SESSION_NO_ROUTE;
	for (int d = 0; d < 2; d++)
		s->dir[d].pipe[0] = s->dir[d].pipe[1] = -1;
	s->listener = sh->accepts[accept_idx].listener;
	s->start_ms = s->last_active_ms = sp_shard_now(sh);
	sp_timer_setup(&s->timer, on_session_timer, sh);
	if (sh->need_peer && getpeername(fd, (struct sockaddr *)&s->client, &alen) < 0)
		s->client.ss_family = AF_UNSPEC;
	/* TCP_NODELAY comes from the listening socket (proxy/listen.c). */

	sh->active++;
	sp_stat_add(&sh->args->stats->accepted, 1);
	sp_stat_add(&sh->args->stats->active, 1);
	sp_stat_add(&listener_stats(sh, s)->accepted, 1);
	sp_stat_add(&listener_stats(sh, s)->active, 1);
	if (sh->args->steer_load)
		__atomic_fetch_add(&sh->args->steer_load[sh->args->slot], 1, __ATOMIC_RELAXED);

	if (sp_peek_needed(l)) {
		sp_peek_start(sh, s);
		return;
	}
	s->state = SP_SESSION_CONNECTING;
	sp_session_route(sh, s, NULL);
}

void sp_session_close_all(sp_shard_t *sh, sp_end_t why)
{
	for (uint32_t i = 0; i < sh->nfresh; i++) {
		sp_session_t *s = &sh->sessions[i];
		if (s->state == SP_SESSION_PEEK || s->state == SP_SESSION_CONNECTING || s->state == SP_SESSION_RELAY)
			sp_session_fail(sh, s, why);
	}
}
