/* loop_uring: the io_uring backend of the loop (see loop.h), and the only
 * file in the tree that includes liburing. Every op is one SQE whose
 * user_data is the caller's tag; submission is batched, one
 * io_uring_submit_and_wait per loop turn; recv selects buffers from a
 * provided-buffer ring laid over the loop's pool, or from a group of buffers
 * the caller lent (see "lent buffers"). Accepts are the exception: a poll,
 * then accept4(2) (see "accepting"). */
#include "runtime/loop_impl.h"

#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#define BUF_GROUP 0 /* the pool's ring; lent groups are 1..SP_LOOP_MAX_GROUP */

/* The loop's own SQEs (tag op SP_LOOP_OP_SELF) say in the generation field
 * what their completion needs; the slot field carries a buffer id. */
enum { SELF_IGNORE = 0, SELF_LEND = 1, SELF_UNLEND = 2, SELF_INSTALLED = 3, SELF_UNSLOT = 4,
       SELF_CHAIN = 5 };

/* Socket + connect in the ring (see "sockets in the ring"): the registered
 * file table's slots, one per such connect in flight. */
#define SOCK_SLOTS 256
/* Newer than liburing 2.3 and these uapi headers: filled in by hand. */
#define OP_FIXED_FD_INSTALL 54      /* IORING_OP_FIXED_FD_INSTALL, 6.8 */
#define SOCKET_URING_OP_SETSOCKOPT 3 /* IORING_OP_URING_CMD on a socket, 6.7 */

typedef struct {
	struct io_uring ring;
	unsigned setup_flags; /* IORING_SETUP_* actually in effect */
	struct io_uring_buf_ring *br;
	unsigned br_mask;
	/* Connect timeouts: the kernel copies a linked timeout's timespec when
	 * it takes the SQE, so one per SQ entry (indexed like the SQE) lives
	 * long enough without any per-op state. */
	struct __kernel_timespec *ts;
	/* Which op codes are connects: their -ECANCELED means the linked
	 * timeout fired, reported as -ETIMEDOUT. */
	bool is_connect[SP_UDATA_MAX_OPS];
	/* Accepts (see "accepting" below): which op codes, and one record per
	 * accept in flight. Few (one per listening socket), so a search. */
	bool is_accept[SP_UDATA_MAX_OPS];
	struct uacc *acc;
	unsigned nacc;
	/* Lent buffers: the kernel has the opcodes (probed at init), and which
	 * buffers are lent to a group now (by id). */
	bool can_lend;
	uint8_t *lent;
	/* Sockets in the ring: the capability (probed at init), the free
	 * slots of the registered file table, and for each slot the tag of
	 * the connect it serves. */
	bool can_sockconn;
	uint16_t slot_free[SOCK_SLOTS];
	unsigned nslot_free;
	uint64_t slot_tag[SOCK_SLOTS];
	int slot_err[SOCK_SLOTS]; /* why its SOCKET or SETSOCKOPT failed */
} uring_t;

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
 * - CQSIZE: the CQ is four times the SQ, since multishot recv posts many
 *   completions per submission; overflow would stall the loop. */
static const unsigned setup_attempts[] = {
	IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL,
	IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL,
	IORING_SETUP_SUBMIT_ALL,
	0,
};

static int read_int_file(const char *path, int *v)
{
	FILE *f = fopen(path, "r");
	int ok;
	if (!f)
		return -errno;
	ok = fscanf(f, "%d", v) == 1;
	fclose(f);
	return ok ? 0 : -EINVAL;
}

/* "Seccomp: 2" in /proc/self/status: a seccomp filter is attached to us. */
static bool seccomp_filtered(void)
{
	char line[128];
	bool on = false;
	FILE *f = fopen("/proc/self/status", "r");
	if (!f)
		return false;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, "Seccomp:", 8) == 0) {
			on = atoi(line + 8) == 2;
			break;
		}
	fclose(f);
	return on;
}

/* Why io_uring_setup failed, in words an operator can act on. */
static void explain(int err, char *buf, size_t len)
{
	struct rlimit rl = {0};
	int disabled = 0;
	bool have_sysctl = read_int_file("/proc/sys/kernel/io_uring_disabled", &disabled) == 0;

	/* The errno's name and what it means, not strerror's wording. */
	const char *name = err == EPERM ? "Operation not permitted (EPERM)" : "ENOSYS (no such system call)";

	switch (err) {
	case EPERM:
	case ENOSYS:
		if (have_sysctl && disabled == 2)
			snprintf(buf, len,
				 "io_uring_setup: %s: io_uring is disabled by "
				 "kernel.io_uring_disabled=2 (set it to 0 to allow it)",
				 name);
		else if (have_sysctl && disabled == 1 && err == EPERM)
			snprintf(buf, len,
				 "io_uring_setup: Operation not permitted (EPERM): kernel.io_uring_disabled=1 and this process "
				 "is not in kernel.io_uring_group (add it, or set the sysctl to 0)");
		else if (seccomp_filtered())
			snprintf(buf, len,
				 "io_uring_setup: %s: io_uring is blocked by a seccomp filter on this "
				 "process (as in Docker's, Podman's and Kubernetes' default profiles; "
				 "allow io_uring_setup, io_uring_enter and io_uring_register to use it)",
				 name);
		else if (err == ENOSYS)
			snprintf(buf, len,
				 "io_uring_setup: ENOSYS (no such system call): this kernel has no io_uring system call "
				 "(built without CONFIG_IO_URING, or a sandbox such as gVisor)");
		else
			snprintf(buf, len,
				 "io_uring_setup: Operation not permitted (EPERM): io_uring is not permitted here (no seccomp "
				 "filter on this process and kernel.io_uring_disabled=%d; a security "
				 "module may deny it)",
				 disabled);
		break;
	case ENOMEM:
		getrlimit(RLIMIT_MEMLOCK, &rl);
		snprintf(buf, len,
			 "io_uring_setup: Cannot allocate memory (ENOMEM): out of locked memory, a resource limit "
			 "(RLIMIT_MEMLOCK soft %llu, hard %llu bytes; raise LimitMEMLOCK or ulimit -l)",
			 (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max);
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

/* Every opcode the loop issues, and the features it relies on. Buffer
 * rings and cancel by fd arrived together in 5.19, multishot recv in 6.0; the SOCKET op (5.19) and SEND_ZC (6.0) are the opcode markers
 * for those releases, as the kernel offers no direct probe for them. */
static const struct {
	int op;
	const char *name;
} needed_ops[] = {
	{IORING_OP_RECV, "IORING_OP_RECV"},
	{IORING_OP_SEND, "IORING_OP_SEND"},
	{IORING_OP_CONNECT, "IORING_OP_CONNECT"},
	{IORING_OP_LINK_TIMEOUT, "IORING_OP_LINK_TIMEOUT"},
	{IORING_OP_POLL_ADD, "IORING_OP_POLL_ADD"},
	{IORING_OP_ASYNC_CANCEL, "IORING_OP_ASYNC_CANCEL"},
	{IORING_OP_SOCKET, "buffer rings and cancel by fd (IORING_OP_SOCKET, 5.19)"},
	{IORING_OP_SEND_ZC, "multishot recv (IORING_OP_SEND_ZC, 6.0)"},
};

static int check_ops(struct io_uring *u, char *why, size_t len)
{
	struct io_uring_probe *p = io_uring_get_probe_ring(u);
	if (!p) {
		snprintf(why, len, "io_uring: IORING_REGISTER_PROBE failed: cannot tell which "
				   "operations this kernel has (Linux 6.0 or newer is needed)");
		return -ENOTSUP;
	}
	for (size_t i = 0; i < sizeof(needed_ops) / sizeof(needed_ops[0]); i++)
		if (!io_uring_opcode_supported(p, needed_ops[i].op)) {
			snprintf(why, len, "io_uring: this kernel lacks %s (Linux 6.0 or newer is needed)",
				 needed_ops[i].name);
			io_uring_free_probe(p);
			return -ENOTSUP;
		}
	io_uring_free_probe(p);
	return 0;
}

/* Lent buffers are legacy provided-buffer groups (IORING_OP_PROVIDE_BUFFERS,
 * REMOVE_BUFFERS: 5.7) that a multishot recv (6.0, checked above) selects
 * from; a kernel that drops the legacy opcodes leaves lending off and the
 * caller on pool recvs. */
static bool lend_supported(struct io_uring *u)
{
	struct io_uring_probe *p = io_uring_get_probe_ring(u);
	bool ok = p && io_uring_opcode_supported(p, IORING_OP_PROVIDE_BUFFERS) &&
		  io_uring_opcode_supported(p, IORING_OP_REMOVE_BUFFERS);
	if (p)
		io_uring_free_probe(p);
	return ok;
}

/* Sockets in the ring need IORING_OP_FIXED_FD_INSTALL (6.8, which also has
 * the socket commands of 6.7) and a registered file table to create them
 * in; without either, sockets come from socket(2). */
static bool sockconn_supported(struct io_uring *r)
{
	struct io_uring_probe *p = io_uring_get_probe_ring(r);
	bool ok = p && io_uring_opcode_supported(p, IORING_OP_URING_CMD) &&
		  io_uring_opcode_supported(p, OP_FIXED_FD_INSTALL);
	if (p)
		io_uring_free_probe(p);
	return ok;
}

static bool sockconn_init(uring_t *u)
{
	if (!sockconn_supported(&u->ring) ||
	    io_uring_register_files_sparse(&u->ring, SOCK_SLOTS) < 0)
		return false;
	for (unsigned i = 0; i < SOCK_SLOTS; i++)
		u->slot_free[i] = (uint16_t)(SOCK_SLOTS - 1 - i);
	u->nslot_free = SOCK_SLOTS;
	return true;
}

static void flags_text(unsigned fl, char *buf, size_t len)
{
	snprintf(buf, len, "%s%s%s%s", (fl & IORING_SETUP_SINGLE_ISSUER) ? " SINGLE_ISSUER" : "",
		 (fl & IORING_SETUP_DEFER_TASKRUN) ? " DEFER_TASKRUN" : "",
		 (fl & IORING_SETUP_COOP_TASKRUN) ? " COOP_TASKRUN" : "",
		 (fl & IORING_SETUP_SUBMIT_ALL) ? " SUBMIT_ALL" : "");
}

/* A provided-buffer ring of n entries registered as group bgid (liburing
 * 2.3, Debian 12's, has no io_uring_setup_buf_ring). NULL and *err on failure. */
static struct io_uring_buf_ring *br_setup(struct io_uring *u, unsigned n, int *err)
{
	struct io_uring_buf_reg reg;
	size_t bytes = (size_t)n * sizeof(struct io_uring_buf);
	void *br = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (br == MAP_FAILED) {
		*err = -errno;
		return NULL;
	}
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (unsigned long)br;
	reg.ring_entries = n;
	reg.bgid = BUF_GROUP;
	*err = io_uring_register_buf_ring(u, &reg, 0);
	if (*err < 0) {
		munmap(br, bytes);
		return NULL;
	}
	io_uring_buf_ring_init(br);
	return br;
}

static void br_free(struct io_uring *u, struct io_uring_buf_ring *br, unsigned n)
{
	io_uring_unregister_buf_ring(u, BUF_GROUP);
	munmap(br, (size_t)n * sizeof(struct io_uring_buf));
}

int sp_loop_probe_uring(char *why, size_t len)
{
	struct io_uring u;
	struct io_uring_buf_ring *br;
	unsigned flags = 0;
	char fl[96];
	int ret = setup(&u, 8, &flags);

	if (ret < 0) {
		explain(-ret, why, len);
		return ret;
	}
	ret = check_ops(&u, why, len);
	if (ret < 0)
		goto out;
	/* A provided-buffer ring: registering one is the only real test. */
	br = br_setup(&u, 8, &ret);
	if (!br) {
		if (ret == -ENOMEM)
			explain(ENOMEM, why, len);
		else
			snprintf(why, len, "io_uring: provided-buffer ring: %s (Linux 6.0 or newer is needed)",
				 strerror(-ret));
		goto out;
	}
	br_free(&u, br, 8);
	flags_text(flags, fl, sizeof(fl));
	snprintf(why, len,
		 "io_uring: setup%s; multishot recv, buffer rings, cancel by fd, "
		 "linked timeouts; accept by readiness%s%s",
		 fl, lend_supported(&u) ? "; lent buffer groups" : "",
		 sockconn_supported(&u) ? "; sockets connected in the ring" : "");
	ret = 0;
out:
	io_uring_queue_exit(&u);
	return ret;
}

static int uring_init(sp_loop_t *l, char *err, size_t errlen)
{
	uring_t *u = calloc(1, sizeof(*u));
	int ret;

	if (!u) {
		snprintf(err, errlen, "io_uring: %s", strerror(ENOMEM));
		return -ENOMEM;
	}
	ret = setup(&u->ring, l->entries, &u->setup_flags);
	if (ret < 0) {
		explain(-ret, err, errlen);
		free(u);
		return ret;
	}
	ret = check_ops(&u->ring, err, errlen);
	if (ret < 0)
		goto err;
	u->can_lend = lend_supported(&u->ring);
	u->can_sockconn = sockconn_init(u);
	u->ts = calloc(u->ring.sq.ring_entries, sizeof(*u->ts));
	if (!u->ts) {
		ret = -ENOMEM;
		snprintf(err, errlen, "io_uring: %s", strerror(ENOMEM));
		goto err;
	}
	l->be_state = u;
	return 0;
err:
	io_uring_queue_exit(&u->ring);
	free(u);
	return ret;
}

static void uring_fini(sp_loop_t *l)
{
	uring_t *u = l->be_state;
	if (!u)
		return;
	if (u->br)
		br_free(&u->ring, u->br, l->nbufs);
	io_uring_submit(&u->ring); /* what sp_loop_close_later queued */
	io_uring_queue_exit(&u->ring);
	free(u->ts);
	free(u->acc);
	free(u->lent);
	free(u);
	l->be_state = NULL;
}

static int uring_bufs_init(sp_loop_t *l)
{
	uring_t *u = l->be_state;
	int ret = 0;

	u->lent = calloc(l->nbufs, sizeof(*u->lent));
	if (!u->lent)
		return -ENOMEM;
	u->br = br_setup(&u->ring, l->nbufs, &ret);
	if (!u->br) {
		free(u->lent);
		u->lent = NULL;
		return ret;
	}
	u->br_mask = (unsigned)io_uring_buf_ring_mask(l->nbufs);
	for (uint32_t i = 0; i < l->nbufs; i++)
		io_uring_buf_ring_add(u->br, sp_loop_buf(l, (uint16_t)i), l->bufsz, (uint16_t)i,
				      (int)u->br_mask, (int)i);
	io_uring_buf_ring_advance(u->br, (int)l->nbufs);
	return 0;
}

static void uring_buf_put(sp_loop_t *l, uint16_t bid)
{
	uring_t *u = l->be_state;
	io_uring_buf_ring_add(u->br, sp_loop_buf(l, bid), l->bufsz, bid, (int)u->br_mask, 0);
	io_uring_buf_ring_advance(u->br, 1);
}

/* An SQE carrying tag. Never NULL: when the SQ has fewer than `need` free
 * entries, what is queued is submitted first (submission is otherwise
 * batched per turn), so linked SQEs always go in one batch. */
static struct io_uring_sqe *sqe_for(uring_t *u, uint64_t tag, unsigned need)
{
	while (io_uring_sq_space_left(&u->ring) < need)
		io_uring_submit(&u->ring);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
	io_uring_sqe_set_data64(sqe, tag);
	return sqe;
}

/* ---- accepting ----------------------------------------------------------
 *
 * An accept is a POLL_ADD on the listening socket, then accept4(2) until
 * EAGAIN, not IORING_OP_ACCEPT. The kernel's accept waits on the socket as an
 * exclusive waiter, and a new connection wakes one exclusive waiter only. Our
 * listening sockets are shared: by the two generations' shards of a slot
 * during a reload, and by a shard that died and its replacement. A dead
 * shard's armed accept stays queued on the socket until the kernel tears its
 * ring down, asynchronously (io_ring_exit_work) and after the supervisor has
 * reaped it and started the replacement; a wake-up it takes in that time
 * goes nowhere. The connection then waits in the backlog until the next one
 * arrives: for ever, if none does. A poll without EPOLLEXCLUSIVE is woken on
 * every connection whatever else waits on the socket, as epoll is (the epoll
 * backend accepts the same way). The price: an accept4 per connection plus
 * one that says EAGAIN and a poll SQE per wake-up, where the kernel's
 * multishot accept needed no system call of its own. */

#define ACCEPT_BUDGET 64 /* connections taken per wake-up; the rest next turn */

struct uacc {
	uint64_t tag;
	int fd;
	bool live;	/* an accept op (until its last completion) */
	bool once;	/* one connection, then done */
	bool polling;	/* its POLL_ADD is in the kernel */
	bool cancelled; /* sp_loop_cancel asked: its last completion is -ECANCELED */
};

static void acc_poll(uring_t *u, unsigned i)
{
	struct io_uring_sqe *sqe = sqe_for(u, u->acc[i].tag, 1);
	io_uring_prep_poll_add(sqe, u->acc[i].fd, POLLIN);
	u->acc[i].polling = true;
}

static int acc_find(const uring_t *u, uint64_t tag)
{
	for (unsigned i = 0; i < u->nacc; i++)
		if (u->acc[i].live && u->acc[i].tag == tag)
			return (int)i;
	return -1;
}

static void acc_deliver(sp_loop_t *l, uint64_t tag, int res, bool more)
{
	sp_completion_t c = {.res = res, .more = more};
	sp_loop__dispatch(l, tag, &c);
}

/* The record is free before the handler runs: it may arm the same tag again. */
static void acc_end(sp_loop_t *l, unsigned i, int res)
{
	uring_t *u = l->be_state;
	uint64_t tag = u->acc[i].tag;
	u->acc[i].live = false;
	acc_deliver(l, tag, res, false);
}

/* Its poll completed (res: the mask, or -errno). Handlers may arm accepts,
 * which can move u->acc: only the index is kept across a delivery. */
static void acc_ready(sp_loop_t *l, unsigned i, int res)
{
	uring_t *u = l->be_state;
	uint64_t tag = u->acc[i].tag;

	u->acc[i].polling = false;
	if (res < 0 || u->acc[i].cancelled) {
		acc_end(l, i, res < 0 ? res : -ECANCELED);
		return;
	}
	for (int n = 0; n < ACCEPT_BUDGET; n++) {
		int fd = accept4(u->acc[i].fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break; /* another waiter took it, or all taken */
			acc_end(l, i, -errno); /* as the kernel's: an error ends it */
			return;
		}
		if (u->acc[i].once) {
			acc_end(l, i, fd);
			return;
		}
		acc_deliver(l, tag, fd, true);
		if (u->acc[i].cancelled) { /* by the handler, just now */
			acc_end(l, i, -ECANCELED);
			return;
		}
	}
	acc_poll(u, i); /* completes at once next turn if the budget ran out */
}

static int uring_accept(sp_loop_t *l, uint64_t tag, int fd, bool multishot)
{
	uring_t *u = l->be_state;
	unsigned i;

	for (i = 0; i < u->nacc && u->acc[i].live; i++)
		;
	if (i == u->nacc) {
		struct uacc *a = realloc(u->acc, (u->nacc + 8) * sizeof(*a));
		if (!a)
			return -ENOMEM;
		memset(a + u->nacc, 0, 8 * sizeof(*a));
		u->acc = a;
		u->nacc += 8;
	}
	u->acc[i] = (struct uacc){.tag = tag, .fd = fd, .live = true, .once = !multishot};
	u->is_accept[sp_udata_op(tag)] = true;
	acc_poll(u, i);
	return 0;
}

static int uring_recv(sp_loop_t *l, uint64_t tag, int fd, bool multishot)
{
	struct io_uring_sqe *sqe = sqe_for(l->be_state, tag, 1);
	if (multishot)
		io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
	else
		io_uring_prep_recv(sqe, fd, NULL, l->bufsz, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = BUF_GROUP;
	return 0;
}

/* ---- lent buffers (loop.h) -------------------------------------------------
 *
 * A group is a legacy provided-buffer list (IORING_OP_PROVIDE_BUFFERS): the
 * kernel keeps it in the order buffers were provided and takes from its
 * head, both for a recv and for IORING_OP_REMOVE_BUFFERS, so lending and
 * unlending oldest first keeps the caller's idea of a group's contents and
 * the kernel's the same. A lent buffer stays counted as out (l->bufs_out):
 * the caller held it and holds it again when a recv completes with it. The
 * price over the pool's ring: one PROVIDE SQE per buffer lent (no system
 * call of its own; it goes in the turn's batch). */

static bool uring_can_lend(const sp_loop_t *l)
{
	const uring_t *u = l->be_state;
	return u->can_lend && u->lent;
}

static int uring_lend(sp_loop_t *l, uint16_t group, uint16_t bid)
{
	uring_t *u = l->be_state;
	struct io_uring_sqe *sqe = sqe_for(u, sp_loop_tag(SP_LOOP_OP_SELF, bid, SELF_LEND), 1);
	io_uring_prep_provide_buffers(sqe, sp_loop_buf(l, bid), (int)l->bufsz, 1, group, bid);
	/* One per message sent: no completion unless it fails (self_done). */
	sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
	u->lent[bid] = 1;
	return 0;
}

static int uring_unlend(sp_loop_t *l, uint16_t group, uint16_t bid)
{
	uring_t *u = l->be_state;
	struct io_uring_sqe *sqe = sqe_for(u, sp_loop_tag(SP_LOOP_OP_SELF, bid, SELF_UNLEND), 1);
	io_uring_prep_remove_buffers(sqe, 1, group);
	return 0;
}

static int uring_recv_lent(sp_loop_t *l, uint64_t tag, int fd, uint16_t group)
{
	struct io_uring_sqe *sqe = sqe_for(l->be_state, tag, 1);
	io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = group;
	return 0;
}

/* ---- sockets in the ring (loop.h sp_loop_socket_connect) -------------------
 *
 * socket(2) and setsockopt(TCP_NODELAY) are two system calls per upstream
 * connection, each a full entry into the kernel on this VM's hypervisor.
 * Here they are SQEs in the turn's batch, linked so each runs once the one
 * before it succeeded: SOCKET into a free slot of the registered file
 * table, SETSOCKOPT on that slot, FIXED_FD_INSTALL (a descriptor for the
 * same socket: the relay, splice(2), shutdown(2) and ioctl(2) want one),
 * CONNECT on the slot with its LINK_TIMEOUT. The install's completion
 * carries the descriptor to the caller (more=true); the timeout's, which
 * comes whether it fired, was cancelled by the connect's end or failed
 * with the chain, means the connect is over: the slot is closed then, so
 * the socket's life is the descriptor's. Slots go back in order of those
 * completions; a connect that finds none takes the socket(2) path. */

static void sockconn_installed(sp_loop_t *l, uint16_t slot, int res)
{
	uring_t *u = l->be_state;
	/* A link after a failed one ends with -ECANCELED; the failed one's
	 * completion came first and said why. */
	if (res == -ECANCELED && u->slot_err[slot])
		res = u->slot_err[slot];
	sp_completion_t c = {.res = res, .more = true};
	sp_loop__dispatch(l, u->slot_tag[slot], &c);
}

static void sockconn_unslot(uring_t *u, uint16_t slot)
{
	struct io_uring_sqe *sqe = sqe_for(u, sp_loop_tag(SP_LOOP_OP_SELF, 0, SELF_IGNORE), 1);
	io_uring_prep_close_direct(sqe, slot);
	sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
	u->slot_free[u->nslot_free++] = slot;
}

static bool uring_can_socket_connect(const sp_loop_t *l)
{
	const uring_t *u = l->be_state;
	return u->can_sockconn;
}

static int uring_socket_connect(sp_loop_t *l, uint64_t tag, const struct sockaddr *addr,
				socklen_t alen, unsigned timeout_ms)
{
	static const int one = 1;
	uring_t *u = l->be_state;
	struct io_uring_sqe *sqe;

	if (!u->nslot_free)
		return -EBUSY;
	uint16_t slot = u->slot_free[--u->nslot_free];
	u->slot_tag[slot] = tag;
	u->slot_err[slot] = 0;
	u->is_connect[sp_udata_op(tag)] = true;

	/* five SQEs in one batch: a chain is never split across submissions */
	sqe = sqe_for(u, sp_loop_tag(SP_LOOP_OP_SELF, slot, SELF_CHAIN), 5);
	io_uring_prep_socket_direct(sqe, addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK, 0, slot, 0);
	sqe->flags |= IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS;

	/* SETSOCKOPT: cmd_op in off, level and optname in addr, optlen in
	 * file_index, optval in addr3 (the kernel's layout since 6.7). */
	sqe = sqe_for(u, sp_loop_tag(SP_LOOP_OP_SELF, slot, SELF_CHAIN), 1);
	io_uring_prep_rw(IORING_OP_URING_CMD, sqe, slot, NULL, 0, SOCKET_URING_OP_SETSOCKOPT);
	sqe->addr = (uint64_t)IPPROTO_TCP | (uint64_t)TCP_NODELAY << 32;
	sqe->file_index = sizeof(one);
	sqe->addr3 = (uint64_t)(uintptr_t)&one;
	sqe->flags |= IOSQE_FIXED_FILE | IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS;

	/* FIXED_FD_INSTALL: res is the descriptor, close-on-exec */
	sqe = sqe_for(u, sp_loop_tag(SP_LOOP_OP_SELF, slot, SELF_INSTALLED), 1);
	io_uring_prep_rw(OP_FIXED_FD_INSTALL, sqe, slot, NULL, 0, 0);
	sqe->flags |= IOSQE_FIXED_FILE | IOSQE_IO_LINK;

	sqe = sqe_for(u, tag, 1);
	io_uring_prep_connect(sqe, slot, addr, alen);
	sqe->flags |= IOSQE_FIXED_FILE | IOSQE_IO_LINK;

	sqe = sqe_for(u, sp_loop_tag(SP_LOOP_OP_SELF, slot, SELF_UNSLOT), 1);
	struct __kernel_timespec *ts = &u->ts[sqe - u->ring.sq.sqes];
	ts->tv_sec = timeout_ms / 1000;
	ts->tv_nsec = (long long)(timeout_ms % 1000) * 1000000;
	io_uring_prep_link_timeout(sqe, ts, 0);
	return 0;
}

/* The completion of one of the loop's own SQEs. */
static void self_done(sp_loop_t *l, uint64_t tag, int res)
{
	uring_t *u = l->be_state;
	uint16_t bid = (uint16_t)sp_udata_slot(tag);

	switch (sp_udata_gen(tag)) {
	case SELF_LEND:
		if (res < 0) {
			/* The kernel does not have it. Putting it back could hand
			 * it out twice if the caller's bookkeeping then unlends
			 * another buffer in its place; lose it instead, and stop
			 * lending (callers fall back to pool recvs). */
			u->lent[bid] = 0;
			u->can_lend = false;
			l->stats.lend_fails++;
		}
		break;
	case SELF_UNLEND:
		/* Removed (res 1): the kernel let go of the group's oldest,
		 * which is bid. Otherwise no recv or removal has it: lost. */
		if (res == 1 && u->lent[bid]) {
			u->lent[bid] = 0;
			sp_loop_buf_put(l, bid);
		}
		break;
	case SELF_INSTALLED:
		sockconn_installed(l, bid, res);
		break;
	case SELF_UNSLOT:
		sockconn_unslot(u, bid);
		break;
	case SELF_CHAIN:
		if (res < 0 && res != -ECANCELED)
			u->slot_err[bid] = res;
		break;
	}
}

static int uring_recv_into(sp_loop_t *l, uint64_t tag, int fd, void *buf, size_t len)
{
	struct io_uring_sqe *sqe = sqe_for(l->be_state, tag, 1);
	io_uring_prep_recv(sqe, fd, buf, len, 0);
	return 0;
}

static int uring_send(sp_loop_t *l, uint64_t tag, int fd, const void *buf, size_t len)
{
	struct io_uring_sqe *sqe = sqe_for(l->be_state, tag, 1);
	io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
	return 0;
}

/* connect + a linked timeout: the kernel cancels the connect when the
 * timeout fires first, with no timer of ours involved. The kernel reads the
 * address when the batch is submitted (loop.h: valid until the next turn). */
static int uring_connect(sp_loop_t *l, uint64_t tag, int fd, const struct sockaddr *addr,
			 socklen_t alen, unsigned timeout_ms)
{
	uring_t *u = l->be_state;
	struct io_uring_sqe *sqe = sqe_for(u, tag, 2);
	io_uring_prep_connect(sqe, fd, addr, alen);
	sqe->flags |= IOSQE_IO_LINK;
	u->is_connect[sp_udata_op(tag)] = true;

	sqe = sqe_for(u, sp_loop_tag(SP_LOOP_OP_SELF, 0, 0), 1);
	struct __kernel_timespec *ts = &u->ts[sqe - u->ring.sq.sqes];
	ts->tv_sec = timeout_ms / 1000;
	ts->tv_nsec = (long long)(timeout_ms % 1000) * 1000000;
	io_uring_prep_link_timeout(sqe, ts, 0);
	return 0;
}

static int uring_poll(sp_loop_t *l, uint64_t tag, int fd, bool out)
{
	struct io_uring_sqe *sqe = sqe_for(l->be_state, tag, 1);
	io_uring_prep_poll_add(sqe, fd, out ? POLLOUT : POLLIN);
	return 0;
}

static int uring_cancel(sp_loop_t *l, int fd, uint64_t tag)
{
	uring_t *u = l->be_state;
	(void)fd;
	if (u->is_accept[sp_udata_op(tag)]) {
		int i = acc_find(u, tag);
		if (i < 0 || u->acc[i].cancelled)
			return 0;
		u->acc[i].cancelled = true;
		if (!u->acc[i].polling)
			return 0; /* inside its delivery: acc_ready ends it */
	}
	struct io_uring_sqe *sqe = sqe_for(u, sp_loop_tag(SP_LOOP_OP_SELF, 0, 0), 1);
	io_uring_prep_cancel64(sqe, tag, 0);
	return 0;
}

static int uring_cancel_fd(sp_loop_t *l, int fd)
{
	uring_t *u = l->be_state;
	for (unsigned i = 0; i < u->nacc; i++)
		if (u->acc[i].live && u->acc[i].fd == fd)
			u->acc[i].cancelled = true;
	struct io_uring_sqe *sqe = sqe_for(u, sp_loop_tag(SP_LOOP_OP_SELF, 0, 0), 1);
	io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
	return 0;
}

static void uring_close(sp_loop_t *l, int fd)
{
	(void)l;
	close(fd);
}

/* A socket has no ->flush, so the kernel closes it inline at submission,
 * never in io-wq (IORING_OP_SHUTDOWN, by contrast, always goes there). */
static void uring_close_later(sp_loop_t *l, int fd)
{
	struct io_uring_sqe *sqe =
	    sqe_for(l->be_state, sp_loop_tag(SP_LOOP_OP_SELF, 0, SELF_IGNORE), 1);
	io_uring_prep_close(sqe, fd);
	sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
}

static int uring_wait(sp_loop_t *l, int timeout_ms)
{
	uring_t *u = l->be_state;
	struct io_uring_cqe *cqe;
	int ret;

	if (timeout_ms < 0) {
		ret = io_uring_submit_and_wait(&u->ring, 1);
	} else {
		struct __kernel_timespec ts = {
			.tv_sec = timeout_ms / 1000,
			.tv_nsec = (long long)(timeout_ms % 1000) * 1000000,
		};
		ret = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL);
	}
	if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EBUSY && ret != -EAGAIN)
		return ret;
	if (*u->ring.sq.kflags & IORING_SQ_CQ_OVERFLOW)
		l->stats.cq_overflows++;
	sp_loop__tick(l);

	unsigned n = 0, head;
	/* Handlers may queue SQEs but never reap, so iterating in place is safe;
	 * advance once for the whole batch. */
	io_uring_for_each_cqe(&u->ring, head, cqe)
	{
		uint64_t tag = cqe->user_data;
		unsigned op = sp_udata_op(tag);
		sp_completion_t c = {
			.res = cqe->res,
			.more = cqe->flags & IORING_CQE_F_MORE,
			.has_buf = cqe->flags & IORING_CQE_F_BUFFER,
			.bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT),
		};
		n++;
		if (op == SP_LOOP_OP_SELF) {
			self_done(l, tag, cqe->res);
			continue;
		}
		if (c.has_buf) {
			if (u->lent && u->lent[c.bid])
				u->lent[c.bid] = 0; /* from a group: out since it was lent */
			else
				l->bufs_out++; /* the kernel took it from the ring */
		}
		if (c.res == -ECANCELED && u->is_connect[op])
			c.res = -ETIMEDOUT;
		int ai;
		if (u->is_accept[op] && (ai = acc_find(u, tag)) >= 0 && u->acc[ai].polling) {
			acc_ready(l, (unsigned)ai, c.res);
			continue;
		}
		sp_loop__dispatch(l, tag, &c);
	}
	io_uring_cq_advance(&u->ring, n);
	return (int)n;
}

static void uring_describe(const sp_loop_t *l, char *buf, size_t len)
{
	const uring_t *u = l->be_state;
	char fl[96];
	flags_text(u->setup_flags, fl, sizeof(fl));
	snprintf(buf, len, "io_uring (setup%s)", fl);
}

const sp_loop_backend_ops_t sp_loop_uring_ops = {
	.id = SP_LOOP_URING,
	.init = uring_init,
	.fini = uring_fini,
	.bufs_init = uring_bufs_init,
	.buf_put = uring_buf_put,
	.accept = uring_accept,
	.recv = uring_recv,
	.can_lend = uring_can_lend,
	.lend = uring_lend,
	.unlend = uring_unlend,
	.recv_lent = uring_recv_lent,
	.recv_into = uring_recv_into,
	.send = uring_send,
	.connect = uring_connect,
	.can_socket_connect = uring_can_socket_connect,
	.socket_connect = uring_socket_connect,
	.poll = uring_poll,
	.cancel = uring_cancel,
	.cancel_fd = uring_cancel_fd,
	.close = uring_close,
	.close_later = uring_close_later,
	.wait = uring_wait,
	.describe = uring_describe,
};
