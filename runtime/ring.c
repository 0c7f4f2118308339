/* ring: io_uring set-up, feature probing, batched submission and completion
 * dispatch (see ring.h). */
#include "runtime/ring.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* Ring flags, best first. Each attempt drops the newest flag the kernel may
 * not know:
 * - SINGLE_ISSUER: only this thread submits, so the kernel skips the locking
 *   that cross-thread submission needs.
 * - DEFER_TASKRUN: completion work runs when we call io_uring_enter to wait,
 *   not on an interrupt-driven task_work at random points, so a shard works
 *   in big batches and is never preempted mid-loop for bookkeeping.
 * - COOP_TASKRUN (fallback): no IPI to force task work; we enter the kernel
 *   every loop turn anyway, so nothing is delayed.
 * - SUBMIT_ALL: one bad SQE does not stop the rest of a batch.
 * - CQSIZE: the CQ is four times the SQ, since multishot accept and recv post
 *   many completions per submission; overflow would stall the loop. */
static const unsigned setup_attempts[] = {
	IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL,
	IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL,
	IORING_SETUP_SUBMIT_ALL,
	0,
};

static void explain(int err, char *buf, size_t len)
{
	struct rlimit rl = {0};
	FILE *f;
	int disabled = -1;

	switch (err) {
	case EPERM:
		f = fopen("/proc/sys/kernel/io_uring_disabled", "r");
		if (f) {
			if (fscanf(f, "%d", &disabled) != 1)
				disabled = -1;
			fclose(f);
		}
		if (disabled > 0)
			snprintf(buf, len,
				 "io_uring_setup: Operation not permitted: io_uring is disabled by "
				 "kernel.io_uring_disabled=%d (set it to 0, or to 1 and run as a member "
				 "of kernel.io_uring_group)",
				 disabled);
		else
			snprintf(buf, len,
				 "io_uring_setup: Operation not permitted: io_uring is blocked by a "
				 "seccomp profile (e.g. Docker's default: run with a profile that "
				 "allows io_uring_setup, io_uring_enter, io_uring_register)");
		break;
	case ENOMEM:
		getrlimit(RLIMIT_MEMLOCK, &rl);
		snprintf(buf, len,
			 "io_uring_setup: Cannot allocate memory: locked-memory limit too low "
			 "(RLIMIT_MEMLOCK soft %llu, hard %llu bytes; raise LimitMEMLOCK or ulimit -l)",
			 (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max);
		break;
	case ENOSYS:
		snprintf(buf, len,
			 "io_uring_setup: ENOSYS: this kernel has no io_uring system call "
			 "(shardproxy needs Linux 6.0 or newer with CONFIG_IO_URING)");
		break;
	default:
		snprintf(buf, len, "io_uring_setup: %s", strerror(err));
	}
}

static int setup(struct io_uring *u, unsigned entries, unsigned *flags_out)
{
	int ret = -EINVAL;
	for (size_t i = 0; i < sizeof(setup_attempts) / sizeof(setup_attempts[0]); i++) {
		struct io_uring_params p;
		memset(&p, 0, sizeof(p));
		p.flags = setup_attempts[i] | IORING_SETUP_CQSIZE;
		p.cq_entries = entries * 4;
		ret = io_uring_queue_init_params(entries, u, &p);
		if (ret == 0) {
			*flags_out = p.flags;
			return 0;
		}
		/* Only an unknown flag is worth another try. */
		if (ret != -EINVAL)
			return ret;
	}
	return ret;
}

static void probe_ops(struct io_uring *u, sp_ring_features_t *f)
{
	struct io_uring_probe *p = io_uring_get_probe_ring(u);
	f->ext_arg = u->features & IORING_FEAT_EXT_ARG;
	if (!p)
		return;
	f->op_splice = io_uring_opcode_supported(p, IORING_OP_SPLICE);
	f->op_socket = io_uring_opcode_supported(p, IORING_OP_SOCKET);
	/* Multishot accept, buffer rings and fd cancel arrived together in
	 * 5.19, multishot recv in 6.0; the SOCKET op (5.19) and SEND_ZC (6.0)
	 * are the opcode markers for those releases. */
	bool k519 = io_uring_opcode_supported(p, IORING_OP_SOCKET);
	bool k60 = io_uring_opcode_supported(p, IORING_OP_SEND_ZC);
	f->multishot_accept = k519;
	f->buf_ring = k519;
	f->cancel_fd = k519;
	f->recv_multishot = k60;
	io_uring_free_probe(p);
}

int sp_ring_probe(sp_ring_features_t *feat, char *err, size_t errlen)
{
	struct io_uring u;
	unsigned flags = 0;
	int ret = setup(&u, 8, &flags);
	if (ret < 0) {
		explain(-ret, err, errlen);
		return ret;
	}
	memset(feat, 0, sizeof(*feat));
	feat->setup_flags = flags;
	probe_ops(&u, feat);
	io_uring_queue_exit(&u);
	return 0;
}

int sp_ring_init(sp_ring_t *r, unsigned entries, void *ctx, char *err, size_t errlen)
{
	memset(r, 0, sizeof(*r));
	int ret = setup(&r->uring, entries, &r->feat.setup_flags);
	if (ret < 0) {
		explain(-ret, err, errlen);
		return ret;
	}
	probe_ops(&r->uring, &r->feat);
	if (!r->feat.multishot_accept || !r->feat.buf_ring || !r->feat.recv_multishot) {
		snprintf(err, errlen,
			 "io_uring: this kernel lacks multishot accept/recv or buffer rings "
			 "(Linux 6.0 or newer is required)");
		io_uring_queue_exit(&r->uring);
		return -ENOTSUP;
	}
	r->ctx = ctx;
	return 0;
}

void sp_ring_exit(sp_ring_t *r)
{
	io_uring_queue_exit(&r->uring);
}

void sp_ring_on(sp_ring_t *r, unsigned op, sp_ring_fn fn, bool check_gen)
{
	r->handlers[op].fn = fn;
	r->handlers[op].check_gen = check_gen;
}

void sp_ring_set_gens(sp_ring_t *r, const uint32_t *gens, uint32_t n)
{
	r->gens = gens;
	r->ngens = n;
}

struct io_uring_sqe *sp_ring_sqe(sp_ring_t *r, unsigned op, uint32_t slot, uint32_t gen)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->uring);
	while (!sqe) {
		/* SQ full: flush this batch early rather than fail the caller. */
		io_uring_submit(&r->uring);
		sqe = io_uring_get_sqe(&r->uring);
	}
	io_uring_sqe_set_data64(sqe, sp_udata_pack(op, slot, gen));
	return sqe;
}

void sp_ring_reserve(sp_ring_t *r, unsigned n)
{
	unsigned cap = r->uring.sq.ring_entries;
	if (n > cap)
		n = cap;
	/* io_uring_submit flushes every queued SQE (a short count only means
	 * the kernel completed some inline), so one call frees the whole SQ;
	 * the loop covers a submit interrupted before it consumed anything. */
	while (io_uring_sq_space_left(&r->uring) < n)
		if (io_uring_submit(&r->uring) < 0 && io_uring_sq_space_left(&r->uring) < n)
			break;
}

static void dispatch(sp_ring_t *r, const struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;
	unsigned op = sp_udata_op(ud);
	uint32_t slot = sp_udata_slot(ud);
	const sp_ring_handler_t *h = &r->handlers[op];

	if (!h->fn)
		return; /* an op whose result nobody needs (e.g. a cancel) */
	if (h->check_gen && r->gens &&
	    (slot >= r->ngens || (r->gens[slot] & SP_UDATA_GEN_MASK) != sp_udata_gen(ud))) {
		r->stale_drops++;
		if ((cqe->flags & IORING_CQE_F_BUFFER) && r->drop_buffer)
			r->drop_buffer(r->ctx, (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT));
		return;
	}
	h->fn(r->ctx, op, slot, cqe->res, cqe->flags);
}

int sp_ring_run_once(sp_ring_t *r, int timeout_ms)
{
	struct io_uring_cqe *cqe;
	int ret;

	if (timeout_ms < 0) {
		ret = io_uring_submit_and_wait(&r->uring, 1);
	} else {
		struct __kernel_timespec ts = {
			.tv_sec = timeout_ms / 1000,
			.tv_nsec = (long long)(timeout_ms % 1000) * 1000000,
		};
		ret = io_uring_submit_and_wait_timeout(&r->uring, &cqe, 1, &ts, NULL);
	}
	if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EBUSY && ret != -EAGAIN)
		return ret;
	if (*r->uring.sq.kflags & IORING_SQ_CQ_OVERFLOW)
		r->cq_overflows++;

	if (r->on_wake)
		r->on_wake(r->ctx);

	unsigned n = 0, head;
	/* Handlers may queue SQEs but never reap, so iterating in place is safe;
	 * advance once for the whole batch. */
	io_uring_for_each_cqe(&r->uring, head, cqe)
	{
		dispatch(r, cqe);
		n++;
	}
	io_uring_cq_advance(&r->uring, n);
	return (int)n;
}

void sp_ring_features_describe(const sp_ring_features_t *f, char *buf, size_t len)
{
	unsigned fl = f->setup_flags;
	snprintf(buf, len,
		 "io_uring: setup%s%s%s%s; multishot accept %s, multishot recv %s, "
		 "buffer rings %s, cancel by fd %s, splice op %s",
		 (fl & IORING_SETUP_SINGLE_ISSUER) ? " SINGLE_ISSUER" : "",
		 (fl & IORING_SETUP_DEFER_TASKRUN) ? " DEFER_TASKRUN" : "",
		 (fl & IORING_SETUP_COOP_TASKRUN) ? " COOP_TASKRUN" : "",
		 (fl & IORING_SETUP_SUBMIT_ALL) ? " SUBMIT_ALL" : "",
		 f->multishot_accept ? "yes" : "no", f->recv_multishot ? "yes" : "no",
		 f->buf_ring ? "yes" : "no", f->cancel_fd ? "yes" : "no",
		 f->op_splice ? "yes" : "no");
}
