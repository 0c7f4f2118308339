/* relay_copy: the copy engine. Each direction keeps one multishot recv armed
 * on its source; the kernel lands data in buffers of the shard's provided
 * ring, and the session sends them on in order, one send in flight per
 * socket. When SP_COPY_QMAX buffers wait for a slow reader, the recv is
 * cancelled (backpressure) and re-armed once the queue is half drained. */
#include <errno.h>

#include "shard/internal.h"

static void arm_recv(sp_shard_t *sh, sp_session_t *s, int d)
{
	sp_dir_t *dir = &s->dir[d];
	struct io_uring_sqe *sqe = sp_session_sqe(sh, s, SP_OP_RECV + (unsigned)d);
	io_uring_prep_recv_multishot(sqe, dir->src, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = sh->bufs.bgid;
	dir->recv_armed = true;
	dir->recv_paused = false;
}

static void send_head(sp_shard_t *sh, sp_session_t *s, int d)
{
	sp_dir_t *dir = &s->dir[d];
	uint8_t *p = sp_bufring_addr(&sh->bufs, dir->qhead) + dir->qoff;
	struct io_uring_sqe *sqe = sp_session_sqe(sh, s, SP_OP_SEND + (unsigned)d);
	io_uring_prep_send(sqe, dir->dst, p, sh->bufq_len[dir->qhead] - dir->qoff, MSG_NOSIGNAL);
	dir->send_busy = true;
}

static void pause_recv(sp_shard_t *sh, sp_session_t *s, int d)
{
	struct io_uring_sqe *sqe = sp_ring_sqe(&sh->ring, SP_OP_CANCEL, 0, 0);
	io_uring_prep_cancel64(sqe, sp_udata_pack(SP_OP_RECV + (unsigned)d, s->idx, sh->gens[s->idx]),
			       0);
	s->dir[d].recv_paused = true;
}

/* Re-arm a recv that ended (paused, starved, or stopped by the kernel) once
 * there is room again. */
static void maybe_resume(sp_shard_t *sh, sp_session_t *s, int d)
{
	sp_dir_t *dir = &s->dir[d];
	if (dir->to_splice) {
		/* auto: bulk seen. Once the recv has ended and every byte it
		 * took is sent, the direction is splice's from here on. */
		if (s->state != SS_RELAY || dir->recv_armed || dir->qn || dir->send_busy || dir->eof)
			return;
		if (dir->starved) {
			dir->starved = false;
			sh->nstarved--;
		}
		dir->to_splice = false;
		dir->spliced = true;
		sp_splice_take_dir(sh, s, d);
		return;
	}
	if (s->state != SS_RELAY || dir->recv_armed || dir->eof || dir->starved ||
	    dir->qn > SP_COPY_QMAX / 2)
		return;
	arm_recv(sh, s, d);
}

/* auto: a direction whose recvs keep filling whole buffers carries bulk;
 * stop its recv and let maybe_resume hand it to splice once drained. */
static void watch_bulk(sp_shard_t *sh, sp_session_t *s, int d, int res)
{
	sp_dir_t *dir = &s->dir[d];
	if (res < SP_COPY_BUF_SIZE) {
		dir->full_run = 0;
		return;
	}
	if (++dir->full_run < SP_AUTO_SPLICE_AFTER || dir->to_splice)
		return;
	dir->to_splice = true;
	if (dir->recv_armed && !dir->recv_paused)
		pause_recv(sh, s, d);
}

static sp_end_t reset_of(int d, bool src)
{
	/* An error reading src or writing dst names the side that failed. */
	bool client = (d == SP_UP) == src;
	return client ? SP_END_CLIENT_RESET : SP_END_UPSTREAM_RESET;
}

static void on_recv(sp_shard_t *sh, sp_session_t *s, int d, int res, uint32_t flags)
{
	sp_dir_t *dir = &s->dir[d];
	bool more = flags & IORING_CQE_F_MORE;

	if (!more)
		dir->recv_armed = false;
	if (flags & IORING_CQE_F_BUFFER) {
		uint16_t bid = (uint16_t)(flags >> IORING_CQE_BUFFER_SHIFT);
		sp_bufring_took(&sh->bufs);
		if (res <= 0 || s->state != SS_RELAY) {
			sp_bufring_put(&sh->bufs, bid);
		} else {
			sh->bufq_len[bid] = (uint16_t)res;
			if (dir->qn)
				sh->bufq_next[dir->qtail] = bid;
			else
				dir->qhead = bid;
			dir->qtail = bid;
			dir->qn++;
		}
	}
	if (s->state != SS_RELAY)
		return;

	if (res > 0) {
		sp_session_touch(sh, s);
		if (!dir->send_busy)
			send_head(sh, s, d);
		if (sh->engine == &sp_relay_auto)
			watch_bulk(sh, s, d, res);
		if (dir->qn >= SP_COPY_QMAX && dir->recv_armed && !dir->recv_paused)
			pause_recv(sh, s, d);
		else if (!more)
			maybe_resume(sh, s, d);
		return;
	}
	if (res == 0) {
		dir->eof = true;
		if (dir->qn == 0 && !dir->send_busy)
			sp_dir_eof_flushed(sh, s, d);
		return;
	}
	switch (-res) {
	case ENOBUFS:
		/* The shard's buffer ring ran dry; resume() re-arms us. */
		dir->starved = true;
		sh->nstarved++;
		maybe_resume(sh, s, d); /* auto: a bulk direction may go now */
		return;
	case ECANCELED:
		maybe_resume(sh, s, d);
		return;
	default:
		sp_session_fail(sh, s, reset_of(d, true));
	}
}

static void on_send(sp_shard_t *sh, sp_session_t *s, int d, int res)
{
	sp_dir_t *dir = &s->dir[d];

	dir->send_busy = false;
	if (s->state != SS_RELAY)
		return;
	if (res < 0) {
		sp_session_fail(sh, s, reset_of(d, false));
		return;
	}
	dir->bytes += (uint64_t)res;
	uint64_t *ctr = d == SP_UP ? &sh->args->stats->bytes_in : &sh->args->stats->bytes_out;
	__atomic_store_n(ctr, *ctr + (uint64_t)res, __ATOMIC_RELAXED);
	sp_session_touch(sh, s);
	dir->qoff += (uint32_t)res;
	if (dir->qoff == sh->bufq_len[dir->qhead]) {
		uint16_t done = dir->qhead;
		dir->qhead = sh->bufq_next[done];
		sp_bufring_put(&sh->bufs, done);
		dir->qn--;
		dir->qoff = 0;
	}
	if (dir->qn)
		send_head(sh, s, d);
	else if (dir->eof)
		sp_dir_eof_flushed(sh, s, d);
	maybe_resume(sh, s, d);
}

static void copy_start(sp_shard_t *sh, sp_session_t *s)
{
	arm_recv(sh, s, SP_UP);
	arm_recv(sh, s, SP_DOWN);
}

static void copy_on_cqe(sp_shard_t *sh, sp_session_t *s, unsigned op, int d, int res,
			uint32_t flags)
{
	if (op == SP_OP_RECV)
		on_recv(sh, s, d, res, flags);
	else if (op == SP_OP_SEND)
		on_send(sh, s, d, res);
}

static void copy_release(sp_shard_t *sh, sp_session_t *s)
{
	for (int d = 0; d < 2; d++) {
		sp_dir_t *dir = &s->dir[d];
		while (dir->qn) {
			uint16_t bid = dir->qhead;
			dir->qhead = sh->bufq_next[bid];
			sp_bufring_put(&sh->bufs, bid);
			dir->qn--;
		}
		if (dir->starved) {
			dir->starved = false;
			sh->nstarved--;
		}
	}
}

/* Sessions that hit an empty buffer ring wait for buffers to come back.
 * Known limit: this scans every slot, which is O(sessions); it runs only
 * after a starvation, when a quarter of the ring is free again. An intrusive
 * list would make it O(starved). */
static void copy_resume(sp_shard_t *sh)
{
	if (!sh->nstarved || sh->bufs.nbufs - sh->bufs.out < sh->bufs.nbufs / 4)
		return;
	for (uint32_t i = 0; i < sh->nfresh && sh->nstarved; i++) {
		sp_session_t *s = &sh->sessions[i];
		for (int d = 0; d < 2; d++) {
			if (!s->dir[d].starved || s->state == SS_FREE)
				continue;
			s->dir[d].starved = false;
			sh->nstarved--;
			maybe_resume(sh, s, d);
		}
	}
}

const sp_relay_engine_t sp_relay_copy = {
	.name = "copy",
	.start = copy_start,
	.on_cqe = copy_on_cqe,
	.release = copy_release,
	.resume = copy_resume,
};

/* auto: copy and splice side by side, per direction (see internal.h). */
static void auto_on_cqe(sp_shard_t *sh, sp_session_t *s, unsigned op, int d, int res,
			uint32_t flags)
{
	if (op == SP_OP_RECV || op == SP_OP_SEND)
		copy_on_cqe(sh, s, op, d, res, flags);
	else
		sp_relay_splice.on_cqe(sh, s, op, d, res, flags);
}

static void auto_release(sp_shard_t *sh, sp_session_t *s)
{
	copy_release(sh, s);
	sp_relay_splice.release(sh, s);
}

const sp_relay_engine_t sp_relay_auto = {
	.name = "auto",
	.start = copy_start,
	.on_cqe = auto_on_cqe,
	.release = auto_release,
	.resume = copy_resume,
};
