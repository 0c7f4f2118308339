/* relay_copy: the copy engine. Each direction keeps one recv in flight on
 * its source; the kernel lands data in a buffer of the loop's buffer
 * pool (a provided-buffer ring under io_uring), and the session sends the buffers on in order, one send in flight
 * per socket. A direction holds at most SP_COPY_QMAX buffers (queued, lent,
 * plus the one a pool recv may take), exactly: a recv from the pool is
 * one-shot, and where the loop can lend (io_uring) a direction that keeps
 * talking lends the buffers it has sent to its own group and keeps one
 * multishot recv armed on them, which takes nothing else (see "lending").
 * Directions that hold buffers while the ring runs low, or find it empty,
 * wait in a FIFO and are resumed in turn as buffers come back; one that
 * holds none never waits: it receives into a spare of its own instead (see
 * "spares"). */
#include <errno.h>
#include <stdlib.h>

#include "shard/session.h"

/* ---- lending ----------------------------------------------------------------
 *
 * A one-shot recv per message costs, after each message, a re-arm whose
 * first recv finds nothing (EAGAIN) and a poll set up and torn down around
 * the wait. A multishot recv from the pool would keep its poll but take as
 * many buffers as the peer sends, however slow the reader. So a direction
 * that has carried SP_COPY_LEND_AFTER messages lends each buffer it has
 * sent (up to SP_COPY_LEND) to a group of its own instead of putting it
 * back, and its recv is multishot on that group: it takes those buffers
 * and no other, and ends with -ENOBUFS when they are all in use, after
 * which the direction falls back to one-shot pool recvs. Lent buffers count
 * as held (qn + nlent + a pool recv <= SP_COPY_QMAX), and go back to the
 * pool when the session ends or the direction moves to splice. */

/* A direction's number, never 0: its starved-FIFO key and its lent group. */
static uint32_t dir_key(const sp_session_t *s, int d)
{
	return s->idx * 2 + (uint32_t)d + 1;
}

/* Append buffer bid to a direction's list (queue or lent) of n buffers. */
static void buf_append(sp_shard_t *sh, uint16_t *head, uint16_t *tail, unsigned n, uint16_t bid)
{
	if (n)
		sh->bufq_next[*tail] = bid;
	else
		*head = bid;
	*tail = bid;
}

/* The direction's group: one per (session slot, direction); 0 when the
 * loop cannot lend or the slot is past what group ids reach. */
static uint16_t lend_group(const sp_shard_t *sh, const sp_session_t *s, int d)
{
	uint32_t g = dir_key(s, d);
	if (g > SP_LOOP_MAX_GROUP || !sp_loop_can_lend(sh->loop))
		return 0;
	return (uint16_t)g;
}

/* Buffers in the ring now, for any recv to take. */
static uint32_t pool_free(const sp_shard_t *sh)
{
	return sp_loop_bufs_total(sh->loop) - sp_loop_bufs_out(sh->loop);
}

/* A buffer the direction has sent: lend it to its group, or put it back. */
static void give_back(sp_shard_t *sh, sp_session_t *s, int d, uint16_t bid)
{
	sp_dir_t *dir = &s->dir[d];
	uint16_t g;

	if (dir->nlent < SP_COPY_LEND && dir->nrecv >= SP_COPY_LEND_AFTER &&
	    s->state == SP_SESSION_RELAY && !dir->eof && !dir->dead && !dir->to_splice &&
	    dir->qn + dir->nlent + (dir->recv_armed && !dir->recv_lent) < SP_COPY_QMAX &&
	    (g = lend_group(sh, s, d)) != 0) {
		/* more than half the pool out: lent buffers would crowd out others */
		if (pool_free(sh) >= sp_loop_bufs_total(sh->loop) / 2 &&
		    sp_loop_buf_lend(sh->loop, g, bid) == 0) {
			buf_append(sh, &dir->lhead, &dir->ltail, dir->nlent++, bid);
			return;
		}
	}
	sp_loop_buf_put(sh->loop, bid);
}

/* A lent recv completed with buffer bid: the group's oldest. */
static void lent_taken(sp_shard_t *sh, sp_dir_t *dir, uint16_t bid)
{
	if (dir->nlent && dir->lhead == bid) {
		dir->lhead = sh->bufq_next[bid];
		dir->nlent--;
		return;
	}
	/* Not the oldest: only after the loop lost a lend (it stops lending
	 * then); unlink it wherever it is. */
	for (uint16_t prev = dir->lhead, i = 1; i < dir->nlent; i++) {
		uint16_t cur = sh->bufq_next[prev];
		if (cur == bid) {
			sh->bufq_next[prev] = sh->bufq_next[cur];
			if (dir->ltail == cur)
				dir->ltail = prev;
			dir->nlent--;
			return;
		}
		prev = cur;
	}
}

/* Everything still lent goes back to the pool (no recv is armed on it). */
static void unlend_all(sp_shard_t *sh, sp_session_t *s, int d)
{
	sp_dir_t *dir = &s->dir[d];
	uint16_t g = (uint16_t)dir_key(s, d);
	while (dir->nlent) {
		sp_loop_buf_unlend(sh->loop, g, dir->lhead);
		dir->lhead = sh->bufq_next[dir->lhead];
		dir->nlent--;
	}
}

static void arm_recv(sp_shard_t *sh, sp_session_t *s, int d)
{
	sp_dir_t *dir = &s->dir[d];
	uint64_t tag = sp_session_tag(sh, s, sp_relay_op(SP_RELAY_RECV, d));
	uint16_t g = dir->nlent ? lend_group(sh, s, d) : 0;
	int ret = g ? sp_loop_recv_lent(sh->loop, tag, dir->src, g)
		    : sp_loop_recv(sh->loop, tag, dir->src, false);
	if (!sp_session_started(sh, s, ret))
		return;
	dir->recv_armed = true;
	dir->recv_lent = g != 0;
	dir->recv_paused = false;
	dir->recv_held = !g && dir->qn != 0;
	sh->recv_held += dir->recv_held;
}

/* ---- the FIFO of starved directions --------------------------------------- */

static sp_dir_t *key_dir(sp_shard_t *sh, uint32_t key)
{
	return &sh->sessions[(key - 1) / 2].dir[(key - 1) % 2];
}

static void starve_push(sp_shard_t *sh, sp_session_t *s, int d)
{
	sp_dir_t *dir = &s->dir[d];
	uint32_t key = dir_key(s, d);
	if (dir->starved)
		return;
	dir->starved = true;
	dir->starve_next = 0;
	dir->starve_prev = sh->starve_tail;
	if (sh->starve_tail)
		key_dir(sh, sh->starve_tail)->starve_next = key;
	else
		sh->starve_head = key;
	sh->starve_tail = key;
	sh->nstarved++;
}

static void starve_remove(sp_shard_t *sh, sp_session_t *s, int d)
{
	sp_dir_t *dir = &s->dir[d];
	if (!dir->starved)
		return;
	if (dir->starve_prev)
		key_dir(sh, dir->starve_prev)->starve_next = dir->starve_next;
	else
		sh->starve_head = dir->starve_next;
	if (dir->starve_next)
		key_dir(sh, dir->starve_next)->starve_prev = dir->starve_prev;
	else
		sh->starve_tail = dir->starve_prev;
	dir->starve_prev = dir->starve_next = 0;
	dir->starved = false;
	sh->nstarved--;
}

/* Few buffers left for directions that hold none. A recv armed by a
 * direction that holds buffers will likely take one more (its source is
 * busy), so those count as taken already. */
static bool ring_low(const sp_shard_t *sh, uint32_t div)
{
	return pool_free(sh) < sh->recv_held + sp_loop_bufs_total(sh->loop) / div;
}

/* May this direction take one more buffer from the ring now? Near empty,
 * none may: the last buffers are for directions waiting in line, and one
 * that holds none arms a pool recv, or takes its spare once the ring is
 * empty (maybe_resume). */
static bool may_take(const sp_shard_t *sh, const sp_dir_t *dir)
{
	if (!ring_low(sh, SP_COPY_LOW_DIV))
		return true;
	return dir->qn < SP_COPY_LOW_HOLD && !ring_low(sh, 2 * SP_COPY_LOW_DIV);
}

/* ---- spares -----------------------------------------------------------------
 *
 * Buffers held by slow sessions come back only when their readers read:
 * with enough of them (more stopped readers than the pool has buffers, or
 * fewer plus buffers lent by quiet sessions) the pool stays empty for as
 * long as they like. A direction that holds nothing therefore never waits
 * for it: when the pool is empty it receives one message into a
 * spare of its own, a buffer from the heap, and takes nothing more until
 * that is sent and the spare freed. It then holds one buffer, as with a
 * pool recv, so SP_COPY_QMAX bounds it as before, and a fresh session moves
 * whatever the others hold. Spares are taken only off the fast path: the
 * ring is empty, or a recv found it empty; their completions have op
 * kinds of their own, so on_recv and on_send do not test for them. */

static void put_spare(sp_dir_t *dir)
{
	free(dir->spare);
	dir->spare = NULL;
	dir->spare_len = 0;
	dir->qoff = 0;
}

/* Receive into the direction's spare; false when none could be had (out
 * of memory), and the direction waits in line for the pool instead. */
static bool arm_spare(sp_shard_t *sh, sp_session_t *s, int d)
{
	sp_dir_t *dir = &s->dir[d];
	if (!dir->spare && !(dir->spare = malloc(SP_COPY_BUF_SIZE)))
		return false;
	uint64_t tag = sp_session_tag(sh, s, sp_relay_op(SP_RELAY_RECV_SPARE, d));
	if (sp_session_started(sh, s, sp_loop_recv_into(sh->loop, tag, dir->src, dir->spare,
							SP_COPY_BUF_SIZE)))
		dir->recv_armed = true;
	return true;
}

static void send_spare(sp_shard_t *sh, sp_session_t *s, int d)
{
	sp_dir_t *dir = &s->dir[d];
	uint64_t tag = sp_session_tag(sh, s, sp_relay_op(SP_RELAY_SEND_SPARE, d));
	if (sp_session_started(sh, s,
			       sp_loop_send(sh->loop, tag, dir->dst, dir->spare + dir->qoff,
					    dir->spare_len - dir->qoff)))
		dir->send_busy = true;
}

static void send_head(sp_shard_t *sh, sp_session_t *s, int d)
{
	sp_dir_t *dir = &s->dir[d];
	uint8_t *p = sp_loop_buf(sh->loop, dir->qhead) + dir->qoff;
	uint64_t tag = sp_session_tag(sh, s, sp_relay_op(SP_RELAY_SEND, d));
	if (sp_session_started(sh, s,
			       sp_loop_send(sh->loop, tag, dir->dst, p,
					    sh->bufq_len[dir->qhead] - dir->qoff)))
		dir->send_busy = true;
}

static void pause_recv(sp_shard_t *sh, sp_session_t *s, int d)
{
	sp_relay_kind_t kind = s->dir[d].spare ? SP_RELAY_RECV_SPARE : SP_RELAY_RECV;
	sp_loop_cancel(sh->loop, s->dir[d].src, sp_session_tag(sh, s, sp_relay_op(kind, d)));
	s->dir[d].recv_paused = true;
}

/* Re-arm a recv that ended once the direction may hold one more buffer. */
static void maybe_resume(sp_shard_t *sh, sp_session_t *s, int d)
{
	sp_dir_t *dir = &s->dir[d];
	if (dir->to_splice) {
		/* auto: bulk seen. Once the recv has ended and every byte it
		 * took is sent, the direction is splice's from here on. */
		if (s->state != SP_SESSION_RELAY || dir->recv_armed || dir->qn || dir->send_busy || dir->eof)
			return;
		starve_remove(sh, s, d);
		unlend_all(sh, s, d);
		dir->to_splice = false;
		dir->spliced = true;
		sp_splice_take_dir(sh, s, d);
		return;
	}
	if (s->state != SP_SESSION_RELAY || dir->recv_armed || dir->eof || dir->dead)
		return;
	if (dir->nlent && lend_group(sh, s, d)) {
		/* its own buffers: nothing taken from the pool, no line */
		starve_remove(sh, s, d);
		arm_recv(sh, s, d);
		return;
	}
	if (dir->starved) {
		if (dir->qn)
			return; /* waits its turn: copy_resume calls again */
		starve_remove(sh, s, d); /* holds none now: it does not wait */
	}
	if (dir->qn + dir->nlent >= SP_COPY_QMAX)
		return;
	if (!may_take(sh, dir)) {
		/* Holding none, it never waits in line. While the pool has a
		 * buffer left it arms a pool recv: that holds no memory until
		 * data comes (an idle session must cost nothing), and ends
		 * with -ENOBUFS if the pool is empty by then. Only with the
		 * pool empty does it take its spare: no number of sessions
		 * holding the pool's buffers can stall it. */
		if (dir->qn + dir->nlent == 0) {
			if (pool_free(sh) > 0) {
				arm_recv(sh, s, d);
				return;
			}
			if (arm_spare(sh, s, d))
				return;
		}
		starve_push(sh, s, d); /* others first: copy_resume calls again */
		return;
	}
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

static void on_recv(sp_shard_t *sh, sp_session_t *s, int d, const sp_completion_t *c)
{
	sp_dir_t *dir = &s->dir[d];
	bool more = c->more;
	bool lent = dir->recv_lent;
	int res = c->res;

	if (!more) {
		dir->recv_armed = false;
		dir->recv_lent = false;
		sh->recv_held -= dir->recv_held;
		dir->recv_held = false;
	}
	if (c->has_buf) {
		uint16_t bid = c->bid;
		if (lent)
			lent_taken(sh, dir, bid);
		if (res <= 0 || s->state != SP_SESSION_RELAY || dir->dead) {
			sp_loop_buf_put(sh->loop, bid);
		} else {
			sh->bufq_len[bid] = (uint16_t)res;
			buf_append(sh, &dir->qhead, &dir->qtail, dir->qn++, bid);
		}
	}
	if (s->state != SP_SESSION_RELAY || dir->dead)
		return;

	if (res > 0) {
		if (dir->nrecv < SP_COPY_LEND_AFTER)
			dir->nrecv++;
		sp_session_touch(sh, s);
		if (!dir->send_busy)
			send_head(sh, s, d);
		if (sh->engine->bulk_to_splice)
			watch_bulk(sh, s, d, res);
		if (!more)
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
		if (lent) {
			/* Its group is empty: every lent buffer is in use. A
			 * buffer sent meanwhile is lent again (give_back), or
			 * the next recv is a one-shot from the pool. */
			maybe_resume(sh, s, d);
			return;
		}
		/* The loop's buffer pool ran dry: wait in line for a buffer
		 * (copy_resume). */
		starve_push(sh, s, d);
		maybe_resume(sh, s, d); /* auto: a bulk direction may go now */
		return;
	case ECANCELED:
		maybe_resume(sh, s, d);
		return;
	default:
		/* The source reset: what it sent before still goes on. */
		sp_session_peer_reset(sh, s, d, true);
		if (s->state == SP_SESSION_RELAY && !dir->send_busy && dir->qn == 0)
			sp_dir_eof_flushed(sh, s, d);
	}
}

/* A send from a pool buffer or the spare completed: count its bytes and
 * move the direction's offset on. False when there is nothing more to do
 * (the session is ending, or the peer reset and the session was told). */
static bool sent(sp_shard_t *sh, sp_session_t *s, int d, int res)
{
	sp_dir_t *dir = &s->dir[d];

	dir->send_busy = false;
	if (s->state != SP_SESSION_RELAY || dir->dead)
		return false;
	if (res < 0) {
		sp_session_peer_reset(sh, s, d, false);
		return false;
	}
	dir->bytes += (uint64_t)res;
	uint64_t *ctr = d == SP_UP ? &sh->args->stats->bytes_in : &sh->args->stats->bytes_out;
	sp_stat_add(ctr, res);
	sp_session_touch(sh, s);
	dir->qoff += (uint32_t)res;
	return true;
}

static void on_send(sp_shard_t *sh, sp_session_t *s, int d, int res)
{
	sp_dir_t *dir = &s->dir[d];

	if (!sent(sh, s, d, res))
		return;
	if (dir->qoff == sh->bufq_len[dir->qhead]) {
		uint16_t done = dir->qhead;
		dir->qhead = sh->bufq_next[done];
		dir->qn--;
		dir->qoff = 0;
		give_back(sh, s, d, done);
	}
	if (dir->qn)
		send_head(sh, s, d);
	else if (dir->eof)
		sp_dir_eof_flushed(sh, s, d);
	maybe_resume(sh, s, d);
}

/* A recv into the spare completed: its bytes go on from there. */
static void on_spare_recv(sp_shard_t *sh, sp_session_t *s, int d, const sp_completion_t *c)
{
	sp_dir_t *dir = &s->dir[d];
	int res = c->res;

	if (res <= 0 || s->state != SP_SESSION_RELAY || dir->dead) {
		/* end of file, a reset, a cancel: as for a pool recv */
		put_spare(dir);
		on_recv(sh, s, d, c);
		return;
	}
	dir->recv_armed = false;
	dir->recv_paused = false;
	dir->spare_len = (uint16_t)res;
	dir->qoff = 0;
	if (dir->nrecv < SP_COPY_LEND_AFTER)
		dir->nrecv++;
	sp_session_touch(sh, s);
	/* nothing else is queued (it held no buffer), so no send is busy */
	send_spare(sh, s, d);
	if (sh->engine->bulk_to_splice)
		watch_bulk(sh, s, d, res);
}

static void on_spare_send(sp_shard_t *sh, sp_session_t *s, int d, int res)
{
	sp_dir_t *dir = &s->dir[d];

	if (!sent(sh, s, d, res))
		return; /* the spare goes at release */
	if (dir->qoff < dir->spare_len) {
		send_spare(sh, s, d);
		return;
	}
	/* Sent: freed, not kept, so a spare is memory only while it holds
	 * bytes or waits for them. */
	put_spare(dir);
	if (dir->eof)
		sp_dir_eof_flushed(sh, s, d);
	maybe_resume(sh, s, d);
}

static void copy_start(sp_shard_t *sh, sp_session_t *s)
{
	arm_recv(sh, s, SP_UP);
	if (s->state == SP_SESSION_RELAY)
		arm_recv(sh, s, SP_DOWN);
}

static void copy_on_completion(sp_shard_t *sh, sp_session_t *s, sp_relay_kind_t kind, int d,
			       const sp_completion_t *c)
{
	if (kind == SP_RELAY_RECV)
		on_recv(sh, s, d, c);
	else if (kind == SP_RELAY_SEND)
		on_send(sh, s, d, c->res);
	else if (kind == SP_RELAY_RECV_SPARE)
		on_spare_recv(sh, s, d, c);
	else if (kind == SP_RELAY_SEND_SPARE)
		on_spare_send(sh, s, d, c->res);
}

static void copy_release(sp_shard_t *sh, sp_session_t *s)
{
	for (int d = 0; d < 2; d++) {
		sp_dir_t *dir = &s->dir[d];
		while (dir->qn) {
			uint16_t bid = dir->qhead;
			dir->qhead = sh->bufq_next[bid];
			sp_loop_buf_put(sh->loop, bid);
			dir->qn--;
		}
		unlend_all(sh, s, d); /* no recv is in flight: the session is done */
		starve_remove(sh, s, d);
		put_spare(dir);
	}
}

/* Every loop turn: hand the free buffers to starved directions, oldest
 * first, one each (a recv takes one buffer). A direction that still cannot
 * go (the ring ran dry again, or it holds buffers while the ring is low)
 * goes back to the end of the line, so each waits at most one round. */
static void copy_resume(sp_shard_t *sh)
{
	uint32_t budget = pool_free(sh);
	/* While the ring is low, directions that hold buffers go round the
	 * line without a buffer: bound the walk per turn. */
	uint32_t visits = sh->nstarved < 256 ? sh->nstarved : 256;

	while (budget && visits-- && sh->starve_head) {
		uint32_t key = sh->starve_head;
		sp_session_t *s = &sh->sessions[(key - 1) / 2];
		int d = (int)((key - 1) % 2);
		starve_remove(sh, s, d);
		bool armed = s->dir[d].recv_armed;
		maybe_resume(sh, s, d);
		if (!armed && s->dir[d].recv_armed)
			budget--;
	}
}

const sp_relay_engine_t sp_relay_copy = {
	.needs_bufs = true,
	.start = copy_start,
	.on_completion = copy_on_completion,
	.release = copy_release,
	.resume = copy_resume,
};

/* auto: copy and splice side by side, per direction (see relay.h). */
static void auto_on_completion(sp_shard_t *sh, sp_session_t *s, sp_relay_kind_t kind, int d,
			       const sp_completion_t *c)
{
	if (kind == SP_RELAY_POLL_IN || kind == SP_RELAY_POLL_OUT)
		sp_relay_splice.on_completion(sh, s, kind, d, c);
	else
		copy_on_completion(sh, s, kind, d, c);
}

static void auto_release(sp_shard_t *sh, sp_session_t *s)
{
	copy_release(sh, s);
	sp_relay_splice.release(sh, s);
}

const sp_relay_engine_t sp_relay_auto = {
	.needs_bufs = true,
	.needs_pipes = true,
	.bulk_to_splice = true,
	.start = copy_start,
	.on_completion = auto_on_completion,
	.release = auto_release,
	.resume = copy_resume,
};
