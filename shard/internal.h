/* Shard internals shared by its files: the shard context, the session state
 * machine, the op codes packed into user_data, and the relay engine
 * interface. Nothing outside shard/ includes this. */
#ifndef SP_SHARD_INTERNAL_H
#define SP_SHARD_INTERNAL_H

#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/signalfd.h>

#include "runtime/loop.h"
#include "runtime/pipepool.h"
#include "runtime/timer.h"
#include "shard/balance.h"
#include "shard/shard.h"

/* Ops in a loop tag. Relay ops exist once per direction (client ->
 * upstream, upstream -> client); sp_relay_ops maps each to its kind and
 * direction and sp_relay_op back, so nothing depends on the enum's order. */
enum {
	SP_OP_NONE = 0,
	SP_OP_ACCEPT,  /* slot = index into sh->accepts */
	SP_OP_SIGNAL,  /* the signalfd is readable */
	SP_OP_CONNECT, /* slot = session */
	SP_OP_PEEK,    /* readiness of a client whose first bytes we need */
	SP_OP_RECV_UP,
	SP_OP_RECV_DOWN,
	SP_OP_SEND_UP,
	SP_OP_SEND_DOWN,
	SP_OP_POLL_IN_UP,
	SP_OP_POLL_IN_DOWN,
	SP_OP_POLL_OUT_UP,
	SP_OP_POLL_OUT_DOWN,
	SP_OP_MAX,
};
_Static_assert(SP_OP_MAX <= SP_LOOP_MAX_OPS, "op codes must fit the loop's tag");

enum { SP_UP = 0, SP_DOWN = 1 };

/* What a relay op does, whichever direction it serves. */
typedef enum {
	SP_RELAY_RECV = 1, /* copy: one-shot recv into the loop's buffer pool */
	SP_RELAY_SEND,     /* copy: send the head of the direction's queue */
	SP_RELAY_POLL_IN,  /* splice: the source is readable */
	SP_RELAY_POLL_OUT, /* splice: the destination is writable */
} sp_relay_kind_t;

typedef struct {
	uint8_t kind; /* sp_relay_kind_t; 0: not a relay op */
	uint8_t dir;  /* SP_UP or SP_DOWN */
} sp_relay_op_t;

extern const sp_relay_op_t sp_relay_ops[SP_OP_MAX];
/* The op code of kind for direction d. */
unsigned sp_relay_op(sp_relay_kind_t kind, int d);

typedef enum {
	SP_SESSION_FREE = 0,
	SP_SESSION_PEEK,       /* waiting for a PROXY header or TLS ClientHello to route on */
	SP_SESSION_CONNECTING, /* route and server chosen, connect in flight */
	SP_SESSION_RELAY,      /* both sockets open, bytes flowing */
	SP_SESSION_CLOSING,    /* waiting for in-flight ops before closing the fds */
} sp_session_state_t;

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
} sp_end_t;

#define SP_COPY_BUF_SIZE (16 * 1024) /* < 64 KiB: lengths are kept in 16 bits */
#define SP_COPY_NBUFS_MIN 256
#define SP_COPY_NBUFS_MAX 1024
/* Buffers a copy direction holds at most, queued or being received: the
 * per-session memory bound is exactly 2 * SP_COPY_QMAX * SP_COPY_BUF_SIZE
 * (256 KiB). It holds because each recv is one-shot and takes one buffer:
 * a multishot round would land as many as the socket had (~21 seen). */
#define SP_COPY_QMAX 8
/* Slow readers must not pin the whole ring and starve fresh sessions.
 * While fewer than nbufs / SP_COPY_LOW_DIV buffers are free (not counting
 * those the recvs of directions already holding buffers may still take), a
 * direction holding SP_COPY_LOW_HOLD or more waits; under half that, only a
 * direction that holds none and whose destination can take more (POLLOUT)
 * may receive: one whose reader stopped would pin its buffer for good. */
#define SP_COPY_LOW_DIV 8
#define SP_COPY_LOW_HOLD 2
#define SP_SPLICE_CHUNK SP_PIPE_SIZE

/* One direction of a session: bytes read from src are written to dst. */
typedef struct {
	int src, dst;
	uint64_t bytes;
	bool eof;  /* src sent FIN */
	bool shut; /* the FIN has been passed on to dst */
	/* copy engine */
	bool recv_armed;   /* a recv is in flight */
	bool recv_paused;  /* auto: the recv is being cancelled for the hand-over */
	bool recv_held;    /* the recv in flight was armed while holding buffers */
	bool starved;      /* waits in the shard's starved list for a buffer */
	bool send_busy;    /* one send in flight keeps bytes in order */
	bool to_splice;    /* auto: bulk seen; hand over to splice once drained */
	bool spliced;      /* auto: this direction now belongs to splice */
	uint8_t full_run;  /* auto: consecutive recvs that filled a whole buffer */
	/* Buffers received and not yet sent, oldest first: a list linked
	 * through the shard's per-buffer arrays (bufq_next, bufq_len), so a
	 * session carries no queue storage of its own. */
	uint16_t qhead, qtail, qn;
	uint32_t qoff; /* bytes of the head buffer already sent */
	/* Links in the shard's FIFO of starved directions: key + 1 of the
	 * neighbours (key = session index * 2 + direction), 0 for none. */
	uint32_t starve_prev, starve_next;
	/* splice engine */
	int pipe[2];
	uint32_t in_pipe;
	bool poll_in, poll_out;
	bool sized; /* the dst send buffer has been sized for bulk (relay_splice.c) */
	bool pipe_wait; /* out of descriptors for a pipe: the session timer retries */
	bool dead;      /* dst reset the connection: what is left for it goes nowhere */
} sp_dir_t;


typedef struct sp_session {
	uint32_t idx;
	sp_session_state_t state;
	sp_end_t end;
	int cfd, ufd;
	uint32_t inflight; /* ops whose final completion has not arrived */
	uint16_t listener, route, upstream;
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
} sp_session_t;

struct sp_shard;

/* A relay engine: moves bytes both ways once both sockets are connected.
 * Engines report through sp_dir_eof_flushed / sp_session_fail, and must
 * release whatever buffers or pipes they hold in release(). They declare
 * what the shard must set up for them instead of the shard knowing them. */
typedef struct {
	const char *name;
	bool needs_bufs;     /* the loop's buffer pool (copy) */
	bool needs_pipes;    /* the shard's pipe pool (splice) */
	bool bulk_to_splice; /* a direction carrying bulk moves from copy to splice */
	void (*start)(struct sp_shard *sh, sp_session_t *s);
	void (*on_completion)(struct sp_shard *sh, sp_session_t *s, sp_relay_kind_t kind, int dir,
			      const sp_completion_t *c);
	void (*release)(struct sp_shard *sh, sp_session_t *s);
	/* Buffers came back to the pool: resume sessions that starved. */
	void (*resume)(struct sp_shard *sh);
} sp_relay_engine_t;

extern const sp_relay_engine_t sp_relay_copy;
extern const sp_relay_engine_t sp_relay_splice;
/* auto: each direction starts on copy (cheapest for small messages) and
 * moves to splice once it carries bulk (SP_AUTO_SPLICE_AFTER full buffers in
 * a row), where splice moves bytes for a third of copy's CPU. */
extern const sp_relay_engine_t sp_relay_auto;
#define SP_AUTO_SPLICE_AFTER 4
void sp_splice_take_dir(struct sp_shard *sh, sp_session_t *s, int d);

typedef struct {
	int fd;
	uint16_t listener;
	bool armed;
	bool multishot;  /* armed as multishot (else one connection per arm) */
	bool cancelling; /* a cancel is on its way to this accept */
} sp_accept_t;

typedef struct sp_shard {
	const sp_conf_t *conf;
	const sp_shard_args_t *args;
	sp_loop_t *loop; /* backend, handlers, timers, clock */
	sp_pipepool_t pipes;
	const sp_relay_engine_t *engine;
	sp_balancer_t *balancers; /* one per upstream */
	uint32_t *health_base;    /* per upstream: index of its first server in the health arrays */
	/* Per server (numbered as health_base does): the address a connect in
	 * this loop turn reads, copied from args->server_ctl at the pick. */
	struct sockaddr_storage *srv_addr;

	sp_session_t *sessions;
	uint32_t *gens; /* generation per session slot, read by the loop */
	uint32_t nsessions;
	uint32_t active;
	sp_session_t *free_list;
	uint32_t nfresh;       /* slots [0, nfresh) have been used at least once */
	bool need_peer;        /* something reads the client address (log, routes...) */
	uint16_t *bufq_next;   /* copy: per buffer id, the next in its queue */
	uint16_t *bufq_len;    /* copy: per buffer id, bytes received into it */
	uint32_t nstarved;     /* copy: directions waiting for buffers */
	uint32_t starve_head, starve_tail; /* copy: their FIFO (key + 1, 0: empty) */
	uint32_t recv_held;    /* copy: recvs in flight armed by directions holding buffers */

	sp_accept_t accepts[SP_SHARD_MAX_LISTENERS * SP_SHARD_MAX_FDS_PER_LISTENER];
	unsigned naccepts;
	bool accept_paused;    /* fd/memory exhaustion: resume on accept_timer */
	uint32_t accept_pending; /* one-shot accepts armed: each may bring a session */
	/* Room (free session slots) above which a multishot accept is safe:
	 * one multishot round takes a whole backlog, so below this the shard
	 * accepts one connection per arm and never takes more than fit. */
	uint32_t accept_burst;
	sp_timer_t accept_timer;

	int sigfd;
	pid_t sup_pid; /* the supervisor that forked us */
	struct signalfd_siginfo siginfo;
	bool draining, stopping;
	sp_timer_t drain_timer;

	char logbuf[16384];
	size_t loglen;
} sp_shard_t;

/* session.c */
void sp_session_accepted(sp_shard_t *sh, unsigned accept_idx, int fd);
void sp_session_fail(sp_shard_t *sh, sp_session_t *s, sp_end_t why);
void sp_dir_eof_flushed(sp_shard_t *sh, sp_session_t *s, int dir);
/* Direction d failed reading its source (at_src) or writing its
 * destination: that peer reset the connection. The engine then finishes
 * the direction out of that peer as if it had sent a FIN (its
 * sp_dir_eof_flushed passes the reset on once delivered) and stops the
 * direction into it (marked dead). */
void sp_session_peer_reset(sp_shard_t *sh, sp_session_t *s, int d, bool at_src);
void sp_session_touch(sp_shard_t *sh, sp_session_t *s);
void sp_session_op_done(sp_shard_t *sh, sp_session_t *s);
void sp_session_on_connect(void *ctx, unsigned op, uint32_t slot, const sp_completion_t *c);
void sp_session_on_relay(void *ctx, unsigned op, uint32_t slot, const sp_completion_t *c);
void sp_session_on_peek(void *ctx, unsigned op, uint32_t slot, const sp_completion_t *c);
void sp_session_close_all(sp_shard_t *sh, sp_end_t why);
int sp_sessions_init(sp_shard_t *sh, uint32_t n);
void sp_sessions_free(sp_shard_t *sh);

/* shard.c */
/* Out of descriptors or memory (what names the call that failed): stop
 * accepting for SP_ACCEPT_PAUSE_MS so open sessions can finish. */
void sp_shard_pause_accepts(sp_shard_t *sh, const char *what, int err);
#define SP_ACCEPT_PAUSE_MS 100
/* Errors that mean the process or system is short of descriptors or memory,
 * which sessions closing will relieve: wait, do not fail. */
static inline bool sp_fd_shortage(int err)
{
	return err == EMFILE || err == ENFILE || err == ENOMEM || err == ENOBUFS;
}
void sp_shard_access_log(sp_shard_t *sh, const sp_session_t *s);

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

static inline uint64_t sp_shard_now(const sp_shard_t *sh) { return sp_loop_now(sh->loop); }

#endif
