/* session: one client connection's life as a state machine (session.c),
 * and what it offers the parts that drive it: the shard hands it accepted
 * connections, peek.c hands it back a routed client, relay engines report
 * the ends of their directions. A session never calls up into the shard:
 * it counts itself out of sh->active when it closes and notes a shortage of
 * descriptors (sp_shard_note_shortage); the loop acts on both once a turn. */
#ifndef SP_SHARD_SESSION_H
#define SP_SHARD_SESSION_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>

#include "runtime/loop.h"
#include "runtime/timer.h"
#include "shard/balance.h"
#include "shard/context.h"
#include "shard/relay.h"

typedef enum {
	SP_SESSION_FREE = 0,
	SP_SESSION_PEEK,       /* waiting for a PROXY header or TLS ClientHello to route on */
	SP_SESSION_CONNECTING, /* route and server chosen, connect in flight */
	SP_SESSION_RELAY,      /* both sockets open, bytes flowing */
	SP_SESSION_CLOSING,    /* waiting for in-flight ops before closing the fds */
} sp_session_state_t;

/* How a session ended: the access log's "end" and the index into
 * sp_shard_stats_t.closed (names: sp_shard_end_name). */
typedef enum {
	SP_END_DONE = 0,
	SP_END_CLIENT_RESET,
	SP_END_UPSTREAM_RESET,
	SP_END_IDLE_TIMEOUT,
	SP_END_CONNECT_FAILED,
	SP_END_NO_ROUTE,
	SP_END_PEEK_TIMEOUT,
	SP_END_BAD_HEADER, /* accept_proxy_protocol and no valid PROXY header */
	SP_END_DRAIN_TIMEOUT,
	SP_END_ERROR,
	SP_END_COUNT,
} sp_end_t;
_Static_assert(SP_END_COUNT <= SP_STATS_NEND, "sp_shard_stats_t.closed too small");

/* Not routed (yet): the access log says "-". */
#define SP_SESSION_NO_ROUTE UINT32_MAX
/* Session slots beyond the shard's max_sessions: room for what arrives
 * between reaching the limit and the accept cancel landing, and for a
 * draining shard's last look at its listening sockets. */
#define SP_SESSION_SLACK 64

/* The session's narrow fields hold every index conf allows. */
_Static_assert(SP_CONF_MAX_ROUTES < SP_SESSION_NO_ROUTE, "sp_session_t.route");
_Static_assert(SP_CONF_MAX_UPSTREAMS - 1 <= UINT16_MAX, "sp_session_t.upstream");
_Static_assert(SP_SHARD_MAX_LISTENERS - 1 <= UINT16_MAX, "sp_session_t.listener");
_Static_assert(SP_CONF_MAX_UPSTREAM_SERVERS - 1 <= INT16_MAX, "sp_session_t.server");
_Static_assert(SP_CONF_MAX_RETRIES + 1 <= UINT8_MAX, "sp_session_t.attempts");

struct sp_session {
	uint32_t idx;
	sp_session_state_t state;
	sp_end_t end;
	int cfd, ufd;
	uint32_t inflight; /* ops whose final completion has not arrived */
	uint32_t route;    /* index into the listener's routes; SP_SESSION_NO_ROUTE */
	uint16_t listener, upstream;
	int16_t server;    /* -1 until chosen */
	uint8_t attempts;
	bool counted;      /* holds an active count in stats / balancer */
	bool proxy_done;   /* the client's PROXY header has been consumed */
	sp_server_set_t tried;
	struct sockaddr_storage client; /* peer, or the source a PROXY header gave */
	struct sockaddr_storage local;  /* address the client connected to */
	uint64_t peek_deadline;
	/* Out of descriptors for the upstream socket: the session timer retries
	 * the connect until this deadline (connect_timeout_ms); 0: not waiting. */
	uint64_t fd_wait_until;
	int sock_err; /* why the ring made no upstream socket (sp_loop_socket_connect) */
	/* A peer reset: the end to log and pass on once the direction out of
	 * it (reset_dir) has delivered what the proxy acknowledged; ack_wait:
	 * waiting for the other side to acknowledge it (SIOCOUTQ, ack_outq). */
	sp_end_t reset_end;
	int8_t reset_dir;
	bool ack_wait;
	uint32_t ack_outq;
	uint64_t start_ms, last_active_ms;
	sp_timer_t timer;
	sp_dir_t dir[2];
	struct sp_session *next_free;
};

/* The pool of session slots, sized once (slots are touched on first use). */
int sp_sessions_init(sp_shard_t *sh, uint32_t n);
void sp_sessions_free(sp_shard_t *sh);

/* The shard accepted fd on its accept accept_idx. */
void sp_session_accepted(sp_shard_t *sh, unsigned accept_idx, int fd);
/* peek.c is done with s: route it (sni: the ClientHello's server name, or
 * NULL) and connect to a server. */
void sp_session_route(sp_shard_t *sh, sp_session_t *s, const char *sni);
void sp_session_fail(sp_shard_t *sh, sp_session_t *s, sp_end_t why);
/* End every open session (drain timeout). */
void sp_session_close_all(sp_shard_t *sh, sp_end_t why);

/* For the relay engines. */
void sp_dir_eof_flushed(sp_shard_t *sh, sp_session_t *s, int dir);
/* Direction d failed reading its source (at_src) or writing its
 * destination: that peer reset the connection. The engine then finishes
 * the direction out of that peer as if it had sent a FIN (its
 * sp_dir_eof_flushed passes the reset on once delivered) and stops the
 * direction into it (marked dead). */
void sp_session_peer_reset(sp_shard_t *sh, sp_session_t *s, int d, bool at_src);
void sp_session_touch(sp_shard_t *sh, sp_session_t *s);
/* An op of s completed for the last time: a closing session may finish. */
void sp_session_op_done(sp_shard_t *sh, sp_session_t *s);

/* Loop handlers (registered by the shard). */
void sp_session_on_connect(void *ctx, unsigned op, uint32_t slot, const sp_completion_t *c);
void sp_session_on_relay(void *ctx, unsigned op, uint32_t slot, const sp_completion_t *c);

/* The loop tag of a session op (current generation of its slot). */
static inline uint64_t sp_session_tag(const sp_shard_t *sh, const sp_session_t *s, unsigned op)
{
	return sp_loop_tag(op, s->idx, sh->gens[s->idx]);
}

/* After starting a session op whose last completion is still to come:
 * count it in flight, or, when the loop refused it, end the session. */
static inline bool sp_session_started(sp_shard_t *sh, sp_session_t *s, int ret)
{
	if (ret == 0) {
		s->inflight++;
		return true;
	}
	sp_session_fail(sh, s, SP_END_ERROR);
	return false;
}

#endif
