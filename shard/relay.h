/* relay: what moves a session's bytes once both sockets are connected. One
 * small interface (sp_relay_engine_t), one file per engine: relay_copy.c
 * (copy, and auto's copy side), relay_splice.c (splice). relay.c maps the
 * relay ops to kind and direction and the configured "relay" to an engine. */
#ifndef SP_SHARD_RELAY_H
#define SP_SHARD_RELAY_H

#include <stdbool.h>
#include <stdint.h>

#include "conf/conf.h"
#include "runtime/loop.h"
#include "shard/context.h"

/* A session's two directions, the index into sp_session_t.dir. */
enum { SP_UP = 0, SP_DOWN = 1 };

/* What a relay op does, whichever direction it serves. */
typedef enum {
	SP_RELAY_RECV = 1, /* copy: one-shot pool recv, or multishot on lent buffers */
	SP_RELAY_SEND,     /* copy: send the head of the direction's queue */
	SP_RELAY_POLL_IN,  /* splice: the source is readable */
	SP_RELAY_POLL_OUT, /* splice: the destination is writable */
	SP_RELAY_RECV_SPARE, /* copy: a recv into the direction's spare (not the pool) */
	SP_RELAY_SEND_SPARE, /* copy: send what the spare holds */
} sp_relay_kind_t;

typedef struct {
	uint8_t kind; /* sp_relay_kind_t; 0: not a relay op */
	uint8_t dir;  /* SP_UP or SP_DOWN */
} sp_relay_op_t;

/* Indexed by op code: kind 0 for the ops that are not relay ops. */
extern const sp_relay_op_t sp_relay_ops[SP_OP_MAX];
/* The op code of kind for direction d. */
unsigned sp_relay_op(sp_relay_kind_t kind, int d);

#define SP_COPY_BUF_SIZE (16 * 1024)
#define SP_COPY_NBUFS_MIN 256
#define SP_COPY_NBUFS_MAX 1024
/* The pool is the loop's (sp_loop_bufs_init), and the copy engine keeps
 * buffer ids and lengths in 16 bits (bufq_next, bufq_len, sp_dir_t). */
_Static_assert(SP_COPY_BUF_SIZE <= SP_LOOP_MAX_BUF_SIZE && SP_COPY_BUF_SIZE <= UINT16_MAX,
	       "a copy buffer's length must fit the loop's pool and 16 bits");
_Static_assert(SP_COPY_NBUFS_MAX <= SP_LOOP_MAX_BUFS && SP_COPY_NBUFS_MAX - 1 <= UINT16_MAX,
	       "copy buffer ids must fit the loop's pool and 16 bits");
/* Buffers a copy direction holds at most, queued, lent, being received or
 * its spare (below): the per-session memory bound is exactly 2 *
 * SP_COPY_QMAX * SP_COPY_BUF_SIZE (256 KiB). It holds because a recv from
 * the pool is one-shot and takes one buffer (a multishot round there would
 * land as many as the socket had, ~21 seen), a multishot recv takes only
 * buffers the direction lent to its own group (sp_loop_buf_lend), counted
 * as held, and a spare is taken only by a direction that holds nothing
 * else, which then takes nothing more until it is sent. */
#define SP_COPY_QMAX 8
/* Where the loop can lend (io_uring), a direction that has carried two
 * messages keeps up to SP_COPY_LEND of the buffers it sent lent to its own
 * group instead of putting them back, so its recv stays armed across
 * messages; while more than half the pool is out, buffers go back instead
 * (lent buffers of idle sessions must not crowd out fresh ones). */
#define SP_COPY_LEND 2
#define SP_COPY_LEND_AFTER 2
/* Sessions holding pool buffers, however many and for however long
 * (readers that stopped, buffers lent by quiet sessions), must not stall
 * the others. While fewer than nbufs / SP_COPY_LOW_DIV buffers are free
 * (not counting those the recvs of directions already holding buffers may
 * still take), a direction holding SP_COPY_LOW_HOLD or more waits in line
 * for the pool; under half that, every direction holding pool buffers
 * waits. A direction that holds none never waits: while the pool has a
 * buffer it arms a pool recv (no memory held until data comes), and with
 * the pool empty it receives into a spare of its own (SP_COPY_BUF_SIZE
 * from the heap, freed once sent), one message at a time. So a fresh session moves at once even with every pool buffer held,
 * and the spare counts within SP_COPY_QMAX: the per-session bound stays
 * exact, and the shard's copy memory is the pool plus at most one spare
 * per direction that holds no pool buffer. */
#define SP_COPY_LOW_DIV 8
#define SP_COPY_LOW_HOLD 2
#define SP_SPLICE_CHUNK SP_PIPE_SIZE

/* One direction of a session: bytes read from src are written to dst. */
typedef struct {
	int src, dst;
	uint64_t bytes;
	/* copy: its spare, a buffer of its own from the heap (see
	 * SP_COPY_LOW_DIV), set only while it holds no pool buffer, from the
	 * recv armed on it until its spare_len bytes are sent (qoff: how many
	 * are) */
	uint8_t *spare;
	bool eof;  /* src sent FIN */
	bool shut; /* the FIN has been passed on to dst */
	bool dead; /* dst reset the connection: what is left for it goes nowhere */
	/* copy engine */
	bool recv_armed;   /* a recv is in flight */
	bool recv_paused;  /* auto: the recv is being cancelled for the hand-over */
	bool recv_held;    /* the recv in flight was armed while holding buffers */
	bool recv_lent;    /* the recv in flight is multishot on this direction's lent group */
	bool starved;      /* waits in the shard's starved list for a buffer */
	bool send_busy;    /* one send in flight keeps bytes in order */
	bool to_splice;    /* auto: bulk seen; hand over to splice once drained */
	bool spliced;      /* auto: this direction now belongs to splice */
	uint8_t full_run;  /* auto: consecutive recvs that filled a whole buffer */
	uint8_t nrecv;     /* recvs that brought data, counted up to SP_COPY_LEND_AFTER */
	/* Buffers lent to the direction's group, oldest first (the order the
	 * kernel takes them in), linked through the shard's bufq_next. */
	uint8_t nlent;
	uint16_t lhead, ltail;
	/* Buffers received and not yet sent, oldest first: a list linked
	 * through the shard's per-buffer arrays (bufq_next, bufq_len), so a
	 * session carries no queue storage of its own. */
	uint16_t qhead, qtail, qn, spare_len;
	uint32_t qoff; /* bytes of the head buffer (or the spare) already sent */
	/* Links in the shard's FIFO of starved directions: key + 1 of the
	 * neighbours (key = session index * 2 + direction), 0 for none. */
	uint32_t starve_prev, starve_next;
	/* splice engine */
	int pipe[2];
	uint32_t in_pipe;
	bool poll_in, poll_out;
	bool sized; /* the dst send buffer has been sized for bulk (relay_splice.c) */
	bool pipe_wait; /* out of descriptors for a pipe: the session timer retries */
} sp_dir_t;

/* A relay engine: moves bytes both ways once both sockets are connected.
 * Engines report through sp_dir_eof_flushed / sp_session_fail (session.h),
 * and must release whatever buffers or pipes they hold in release(). They
 * declare what the shard must set up for them instead of the shard knowing
 * them. Their names are conf's (sp_conf_relay_name). */
struct sp_relay_engine {
	bool needs_bufs;     /* the loop's buffer pool (copy) */
	bool needs_pipes;    /* the shard's pipe pool (splice) */
	bool bulk_to_splice; /* a direction carrying bulk moves from copy to splice */
	void (*start)(sp_shard_t *sh, sp_session_t *s);
	void (*on_completion)(sp_shard_t *sh, sp_session_t *s, sp_relay_kind_t kind, int dir,
			      const sp_completion_t *c);
	void (*release)(sp_shard_t *sh, sp_session_t *s);
	/* Buffers came back to the pool: resume sessions that starved. */
	void (*resume)(sp_shard_t *sh);
};
typedef struct sp_relay_engine sp_relay_engine_t;

extern const sp_relay_engine_t sp_relay_copy;
extern const sp_relay_engine_t sp_relay_splice;
/* auto: each direction starts on copy (cheapest for small messages) and
 * moves to splice once it carries bulk (SP_AUTO_SPLICE_AFTER full buffers in
 * a row), where splice moves bytes for a third of copy's CPU. */
extern const sp_relay_engine_t sp_relay_auto;
#define SP_AUTO_SPLICE_AFTER 4

/* The engine for the configured "relay". */
const sp_relay_engine_t *sp_relay_engine_for(sp_relay_t relay);
/* auto: direction d of s has drained its copy side; splice takes it over. */
void sp_splice_take_dir(sp_shard_t *sh, sp_session_t *s, int d);

#endif
