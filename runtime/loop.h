/* loop: one event loop per shard, the whole face of runtime/ to the layers
 * above. It owns its backend (io_uring, or epoll where io_uring is blocked),
 * the handler table, the generation check on every completion, the timer heap
 * and the clock. Operations go in tagged with (op, slot, generation); neutral
 * completions come out (result, "more to come", buffer id). Nothing here
 * names an io_uring or epoll type, so the shard reads the same on both
 * (monoio's io_uring and "legacy" drivers are the model).
 *
 * Contract both backends keep:
 * - a completion is never delivered from inside the call that started the
 *   op, only from sp_loop_run_once;
 * - a buffer given to send stays the caller's until the send completes;
 * - multishot ops (accept, recv) complete with more=true while they stay
 *   armed and end with exactly one completion with more=false;
 * - per descriptor, at most one reading op (accept, recv, poll in) and one
 *   writing op (send, connect, poll out) are in flight (epoll keeps one
 *   waiter per direction; a second gets -EBUSY);
 * - an accept waits for readiness, never as the socket's exclusive waiter:
 *   no other waiter on a shared listening socket (another process's, a dead
 *   one's) can take the wake-up for a connection and leave it unaccepted. */
#ifndef SP_LOOP_H
#define SP_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "runtime/timer.h"
#include "runtime/udata.h"

typedef struct sp_loop sp_loop_t;

typedef enum {
	SP_LOOP_URING = 1,
	SP_LOOP_EPOLL = 2,
} sp_loop_backend_t;

/* Op codes the owner may use: [1, SP_LOOP_MAX_OPS). The loop keeps the last
 * code for its own bookkeeping (cancels, connect timeouts). */
#define SP_LOOP_MAX_OPS (SP_UDATA_MAX_OPS - 1)

typedef struct {
	int res;      /* >= 0: bytes, a descriptor, a poll mask; < 0: -errno */
	bool more;    /* multishot: the op stays armed, more completions follow */
	bool has_buf; /* res bytes landed in buffer `bid` of the loop's pool */
	uint16_t bid;
} sp_completion_t;

/* One handler may serve several ops; op and slot come from the tag. */
typedef void (*sp_loop_fn)(void *ctx, unsigned op, uint32_t slot, const sp_completion_t *c);

typedef struct {
	sp_loop_backend_t backend;
	unsigned entries; /* ops in flight at once (io_uring SQ size, epoll op pool) */
	unsigned timers;  /* timers the owner keeps armed at most */
	void *ctx;        /* passed to every handler */
} sp_loop_config_t;

/* Set up a loop. On failure returns -errno and writes into err a sentence an
 * operator can act on (io_uring blocked by seccomp or sysctl, memlock...). */
int sp_loop_new(sp_loop_t **out, const sp_loop_config_t *cfg, char *err, size_t errlen);
void sp_loop_free(sp_loop_t *l);
sp_loop_backend_t sp_loop_backend(const sp_loop_t *l);
const char *sp_loop_backend_name(sp_loop_backend_t b);
/* The backend and what it runs with, one line (for logs). */
void sp_loop_describe(const sp_loop_t *l, char *buf, size_t len);

/* Handlers. With check_gen, a completion whose generation differs from
 * gens[slot] (the slot was freed and reused since) is dropped, and a buffer
 * it carried goes back to the pool. */
void sp_loop_on(sp_loop_t *l, unsigned op, sp_loop_fn fn, bool check_gen);
void sp_loop_set_gens(sp_loop_t *l, const uint32_t *gens, uint32_t n);

static inline uint64_t sp_loop_tag(unsigned op, uint32_t slot, uint32_t gen)
{
	return sp_udata_pack(op, slot, gen);
}

/* The buffer pool multishot recv lands data in: nbufs (a power of two, at
 * most SP_LOOP_MAX_BUFS) buffers of bufsz bytes (at most
 * SP_LOOP_MAX_BUF_SIZE). io_uring lends it to the kernel as a
 * provided-buffer ring; epoll hands buffers out itself. A recv that finds it
 * empty ends with -ENOBUFS. */
#define SP_LOOP_MAX_BUFS 32768     /* a power of two io_uring's buffer ring takes; ids fit 16 bits */
#define SP_LOOP_MAX_BUF_SIZE 65535 /* a buffer's length fits 16 bits */
int sp_loop_bufs_init(sp_loop_t *l, uint32_t nbufs, uint32_t bufsz);
uint8_t *sp_loop_buf(const sp_loop_t *l, uint16_t bid);
/* Give a buffer a completion carried back to the pool. */
void sp_loop_buf_put(sp_loop_t *l, uint16_t bid);
uint32_t sp_loop_bufs_total(const sp_loop_t *l);
uint32_t sp_loop_bufs_out(const sp_loop_t *l); /* held by completions not yet put back */

/* Operations. Each returns 0 or -errno (-EBUSY: that direction of fd is
 * taken; -ENOBUFS: too many ops in flight). */
/* Each completion's res is a new non-blocking, close-on-exec fd. Multishot
 * stays armed; one-shot ends after one connection (or error). */
int sp_loop_accept(sp_loop_t *l, uint64_t tag, int fd, bool multishot);
/* Into the buffer pool: res bytes in buffer bid; 0 at end of file.
 * Multishot stays armed; one-shot takes exactly one buffer and ends, which
 * bounds what a direction holds exactly (a multishot round lands as many
 * buffers as the socket has before a cancel can stop it). */
int sp_loop_recv(sp_loop_t *l, uint64_t tag, int fd, bool multishot);
/* One recv into the caller's own memory, not the pool: res bytes in buf, 0
 * at end of file; one-shot. For a reader that must not wait for the pool
 * (the copy engine's spare, relay.h). buf must stay valid until the
 * completion. */
int sp_loop_recv_into(sp_loop_t *l, uint64_t tag, int fd, void *buf, size_t len);
/* Lent buffers: a multishot recv whose buffers are counted exactly.
 * A pool recv (sp_loop_recv) takes as many buffers as its socket has data
 * for; a reader that must hold at most N buffers then has to re-arm a
 * one-shot recv after every message. Instead the caller lends buffers it
 * holds (ones a completion gave it) to a group of its own, and a multishot
 * recv on that group takes only those: one per completion, oldest first,
 * and it ends with -ENOBUFS when it finds the group empty. So what a reader
 * holds is exactly what it received plus what it lent, and its recv stays
 * armed across messages (no re-arm, no failed recv, no new poll).
 * Capability: io_uring with provided-buffer groups; elsewhere the calls
 * return -EOPNOTSUPP. Groups are 1..SP_LOOP_MAX_GROUP, one per socket
 * direction the caller names; the pool's own ring is not one of them. */
#define SP_LOOP_MAX_GROUP 65535
bool sp_loop_can_lend(const sp_loop_t *l);
/* Lend buffer bid (the caller's: from a completion, not yet put back) to
 * group; it stays counted in sp_loop_bufs_out until a recv hands it back
 * in a completion or sp_loop_buf_unlend returns it to the pool. */
int sp_loop_buf_lend(sp_loop_t *l, uint16_t group, uint16_t bid);
/* Return the oldest buffer still lent to group to the pool; bid must be
 * that buffer (lent buffers are taken and returned oldest first), and no
 * recv may be armed on group. It is back in the pool from the next turn
 * (once the kernel has let it go). */
int sp_loop_buf_unlend(sp_loop_t *l, uint16_t group, uint16_t bid);
/* Multishot recv on fd into buffers lent to group (completions as
 * sp_loop_recv's; the group must hold at least one buffer when armed). */
int sp_loop_recv_lent(sp_loop_t *l, uint64_t tag, int fd, uint16_t group);

/* One send (MSG_NOSIGNAL); res is the bytes taken, possibly fewer than len. */
int sp_loop_send(sp_loop_t *l, uint64_t tag, int fd, const void *buf, size_t len);
/* Connect a non-blocking socket; res 0, -errno, or -ETIMEDOUT once
 * timeout_ms passed. addr must stay valid until the next sp_loop_run_once
 * (io_uring reads it when the batch is submitted). Under io_uring,
 * a connect the caller cancels may also report -ETIMEDOUT: the kernel
 * reports a cancel and the linked timeout alike. */
int sp_loop_connect(sp_loop_t *l, uint64_t tag, int fd, const struct sockaddr *addr,
		    socklen_t alen, unsigned timeout_ms);
/* A connected TCP socket without socket(2) and setsockopt(2) (io_uring):
 * one linked chain the turn's io_uring_enter carries creates the socket in
 * a slot of the ring's registered file table (IORING_OP_SOCKET), sets
 * TCP_NODELAY on it (SOCKET_URING_OP_SETSOCKOPT), gives it a descriptor
 * (IORING_OP_FIXED_FD_INSTALL) and connects it with a linked timeout, as
 * sp_loop_connect does. Completions on tag: first one with more=true whose
 * res is the new non-blocking, close-on-exec descriptor (the caller's from
 * then on, to close with sp_loop_close) or -errno (-EMFILE: out of
 * descriptors); then exactly one with more=false, the connect's result as
 * sp_loop_connect reports it (an error whenever no descriptor came). The
 * table slot is the loop's, let go once the connect has ended, so closing
 * the descriptor closes the socket. Capability: io_uring on Linux 6.8 or
 * newer (probed); -EOPNOTSUPP elsewhere, -EBUSY while every slot serves a
 * connect in flight: the caller then uses socket(2) and sp_loop_connect. */
bool sp_loop_can_socket_connect(const sp_loop_t *l);
int sp_loop_socket_connect(sp_loop_t *l, uint64_t tag, const struct sockaddr *addr,
			   socklen_t alen, unsigned timeout_ms);
/* One-shot readiness: res > 0 once fd is readable (out: writable), error
 * and hang-up included. */
int sp_loop_poll(sp_loop_t *l, uint64_t tag, int fd, bool out);
/* End the op `tag` on fd (its last completion comes with -ECANCELED, or with
 * its own result if it finished first). */
int sp_loop_cancel(sp_loop_t *l, int fd, uint64_t tag);
/* End every op on fd. */
int sp_loop_cancel_fd(sp_loop_t *l, int fd);
/* Close a descriptor the loop may have watched; use it, not close(2), for
 * every fd an op ever ran on (epoll forgets its registration here). */
void sp_loop_close(sp_loop_t *l, int fd);
/* The same, by the end of this loop turn: io_uring closes it in the turn's
 * batch (IORING_OP_CLOSE, no system call of its own; the number stays taken
 * until then), epoll at once. For descriptors nothing waits on being
 * closed at a known moment (a session's sockets, not a listening socket). */
void sp_loop_close_later(sp_loop_t *l, int fd);

/* Clock and timers: milliseconds on CLOCK_MONOTONIC, refreshed after every
 * wait, so handlers never see the time from before a long sleep. */
uint64_t sp_loop_now(const sp_loop_t *l);
int sp_loop_timer_arm(sp_loop_t *l, sp_timer_t *t, uint64_t deadline);
void sp_loop_timer_disarm(sp_loop_t *l, sp_timer_t *t);

/* One turn: start what was queued, wait for completions (at most max_wait_ms,
 * -1: until the next timer), dispatch them, fire due timers. Returns the
 * number of completions and timers handled, or -errno. */
int sp_loop_run_once(sp_loop_t *l, int max_wait_ms);

typedef struct {
	uint64_t stale_drops;  /* completions for a reused slot, dropped */
	uint64_t cq_overflows; /* io_uring: turns that found the CQ overflowed */
	uint64_t lend_fails;   /* io_uring: a lend the kernel refused (lending stops) */
	/* epoll: recv(2) calls made for recv ops, and those that found the
	 * socket empty (EAGAIN): the system calls readiness tracking saves. */
	uint64_t recv_calls;
	uint64_t recv_empty;
} sp_loop_stats_t;
void sp_loop_stats(const sp_loop_t *l, sp_loop_stats_t *st);

/* Can io_uring run this proxy here? Sets up a ring and checks every opcode
 * and feature the loop uses (multishot recv, provided-buffer
 * rings, cancel by fd, linked timeouts). 0 when it can; else -errno and a
 * specific reason in why (seccomp, kernel.io_uring_disabled, memlock, a
 * missing opcode). On success, what the kernel offers goes into why. */
int sp_loop_probe_uring(char *why, size_t len);

#endif
