/* ring: the io_uring proactor. One ring per thread of control; it sets the
 * ring up with the best flags the kernel has, hands out SQEs, submits in one
 * batch per loop turn and dispatches each completion to the handler of the
 * op packed in its user_data. It knows nothing about proxies. */
#ifndef SP_RING_H
#define SP_RING_H

#include <liburing.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/udata.h"

/* A completion handler: op and slot from user_data, res and flags (cqe->flags)
 * from the CQE. One handler may serve several ops. */
typedef void (*sp_ring_fn)(void *ctx, unsigned op, uint32_t slot, int res, uint32_t flags);

/* What the kernel offers, found at sp_ring_init. */
typedef struct {
	unsigned setup_flags;     /* IORING_SETUP_* actually in effect */
	bool multishot_accept;    /* 5.19 */
	bool recv_multishot;      /* 6.0 */
	bool buf_ring;            /* provided-buffer rings, 5.19 */
	bool cancel_fd;           /* IORING_ASYNC_CANCEL_FD, 5.19 */
	bool ext_arg;             /* wait with a timeout without an SQE, 5.11 */
	bool op_splice;
	bool op_socket;
} sp_ring_features_t;

typedef struct {
	sp_ring_fn fn;
	bool check_gen; /* drop completions whose generation != gens[slot] */
} sp_ring_handler_t;

typedef struct sp_ring {
	struct io_uring uring;
	sp_ring_features_t feat;
	sp_ring_handler_t handlers[SP_UDATA_MAX_OPS];
	void *ctx;
	/* Generation table of the owner's slots (optional), for stale drops. */
	const uint32_t *gens;
	uint32_t ngens;
	/* A dropped completion that consumed a provided buffer must give it
	 * back; the owner of the buffer ring says how. */
	void (*drop_buffer)(void *ctx, uint16_t bid);
	/* Called once per turn after the wait, before any completion is
	 * dispatched (optional): the owner refreshes its clock there, so
	 * handlers never see the time from before a long sleep. */
	void (*on_wake)(void *ctx);
	uint64_t stale_drops;
	uint64_t cq_overflows;
} sp_ring_t;

/* Set up a ring of `entries` SQEs. On failure returns -errno and writes a
 * sentence an operator can act on into err (e.g. io_uring blocked by seccomp,
 * or the locked-memory limit). */
int sp_ring_init(sp_ring_t *r, unsigned entries, void *ctx, char *err, size_t errlen);
void sp_ring_exit(sp_ring_t *r);
/* Probe without keeping a ring (for -V): same error text as sp_ring_init. */
int sp_ring_probe(sp_ring_features_t *feat, char *err, size_t errlen);
void sp_ring_on(sp_ring_t *r, unsigned op, sp_ring_fn fn, bool check_gen);
void sp_ring_set_gens(sp_ring_t *r, const uint32_t *gens, uint32_t n);

/* An SQE for op/slot/gen. Never NULL: when the SQ is full it submits what is
 * queued to make room (submission is otherwise batched per loop turn). */
struct io_uring_sqe *sp_ring_sqe(sp_ring_t *r, unsigned op, uint32_t slot, uint32_t gen);

/* Make room for n SQEs that must reach the kernel in one submit (an op and
 * its IOSQE_IO_LINK'd LINK_TIMEOUT): sp_ring_sqe flushes a full SQ, and a
 * flush between the two would split the link, leaving the op with no
 * timeout. Submits what is queued when fewer than n entries are free; n is
 * clamped to the ring's size. */
void sp_ring_reserve(sp_ring_t *r, unsigned n);

/* One loop turn: submit everything queued, wait for at least one completion
 * or until timeout_ms (-1: no timeout), dispatch all completions. Returns the
 * number dispatched or -errno (-EINTR is returned as 0). */
int sp_ring_run_once(sp_ring_t *r, int timeout_ms);

/* Flags and op support as text, for -V. */
void sp_ring_features_describe(const sp_ring_features_t *f, char *buf, size_t len);

#endif
