/* context: the one struct a shard's parts work on (no global state on the
 * data path), and the op codes they tag their loop operations with. Each
 * part says what it offers in its own header: session.h (a connection's
 * life), peek.h (PROXY header, ClientHello), relay.h (the engines moving
 * bytes), accesslog.h (the access log); shard.c runs the loop over them.
 * Nothing outside shard/ includes this. */
#ifndef SP_SHARD_CONTEXT_H
#define SP_SHARD_CONTEXT_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/signalfd.h>

#include "runtime/loop.h"
#include "runtime/pipepool.h"
#include "runtime/timer.h"
#include "shard/accesslog.h"
#include "shard/balance.h"
#include "shard/shard.h"

/* Ops in a loop tag, one enum for every part so that no two collide. Relay
 * ops exist once per direction (client -> upstream, upstream -> client);
 * sp_relay_ops (relay.h) maps each to its kind and direction and
 * sp_relay_op back, so nothing depends on the enum's order. */
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
	SP_OP_RECV_SPARE_UP,
	SP_OP_RECV_SPARE_DOWN,
	SP_OP_SEND_SPARE_UP,
	SP_OP_SEND_SPARE_DOWN,
	SP_OP_MAX,
};
_Static_assert(SP_OP_MAX <= SP_LOOP_MAX_OPS, "op codes must fit the loop's tag");

/* Defined by the parts that own them (session.h, relay.h); the context
 * only points at them. */
typedef struct sp_session sp_session_t;
typedef struct sp_relay_engine sp_relay_engine_t;

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
	/* Per server (numbered across upstreams by conf's first_server): the
	 * address a connect in this loop turn reads, copied from
	 * args->server_ctl at the pick. */
	struct sockaddr_storage *srv_addr;

	sp_session_t *sessions;
	uint32_t *gens; /* generation per session slot, read by the loop */
	uint32_t nsessions;
	/* Open sessions. A session that closes only counts down: the shard
	 * re-arms its accepts from this count once per loop turn. */
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
	char paused_by[SP_CONF_NAME_MAX + 32]; /* the last call said to be short (pause_accepts) */
	uint32_t accept_pending; /* one-shot accepts armed: each may bring a session */
	/* Room (free session slots) above which a multishot accept is safe:
	 * one multishot round takes a whole backlog, so below this the shard
	 * accepts one connection per arm and never takes more than fit. */
	uint32_t accept_burst;
	sp_timer_t accept_timer;
	/* The first shortage of descriptors or memory a session or engine met
	 * this loop turn (sp_shard_note_shortage): the loop pauses accepts
	 * for it at the end of the turn. what == NULL: none. */
	struct {
		const char *what; /* the call that failed: "socket", "pipe2" */
		int err;
	} shortage;

	int sigfd;
	pid_t sup_pid; /* the supervisor that forked us */
	struct signalfd_siginfo siginfo;
	bool draining, stopping;
	sp_timer_t drain_timer;

	sp_accesslog_t log;
} sp_shard_t;

/* Errors that mean the process or system is short of descriptors or memory,
 * which sessions closing will relieve: wait, do not fail. */
static inline bool sp_fd_shortage(int err)
{
	return err == EMFILE || err == ENFILE || err == ENOMEM || err == ENOBUFS;
}

/* How long a shortage lasts at least: accepts pause this long, and a session
 * or direction that found no descriptor tries again after it. */
#define SP_SHORTAGE_RETRY_MS 100

/* A part found the process short of descriptors or memory (what: the call
 * that failed): the shard stops accepting for SP_SHORTAGE_RETRY_MS once this
 * loop turn ends, so that open sessions can finish. The part itself retries
 * on its own timer. */
static inline void sp_shard_note_shortage(sp_shard_t *sh, const char *what, int err)
{
	if (!sh->shortage.what) {
		sh->shortage.what = what;
		sh->shortage.err = err;
	}
}

static inline uint64_t sp_shard_now(const sp_shard_t *sh) { return sp_loop_now(sh->loop); }

#endif
