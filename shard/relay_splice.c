/* relay_splice: the splice engine (the HAProxy model). The loop only reports
 * readiness (a poll, on either backend); the bytes move with non-blocking splice(2) calls
 * socket -> pipe -> socket inside the shard, never through user memory and
 * never parking a kernel thread (IORING_OP_SPLICE would: it always runs in
 * io-wq). A direction holds a pipe only while bytes sit in it. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include "shard/session.h"

/* Splice calls per readiness event before yielding to other sessions. */
#define PUMP_BUDGET 16

/* A bulk direction (one splice read of BULK_READ bytes or more) whose
 * destination path has a smoothed round trip under SHORT_PATH_RTT_US gets a
 * fixed send buffer of SHORT_PATH_SNDBUF (the kernel doubles it for its
 * bookkeeping). Autotuning grows a fast sender's buffer towards tcp_wmem's
 * maximum (4 MiB) although the receiver's window, not the buffer, limits
 * it: megabytes sit unsent ("rwnd_limited" in ss -ti) and the receiver's
 * window updates, or the pacing timer, send them from the receiver's CPU
 * time. 512 KiB still covers the bandwidth-delay product of 4 Gbit/s at
 * 1 ms and of 40 Gbit/s at 100 us; longer paths keep autotuning. Numbers
 * in docs/BENCHMARKS.md. */
#define BULK_READ (64 * 1024)
#define SHORT_PATH_RTT_US 1000u
#define SHORT_PATH_SNDBUF (256 * 1024)

/* Once per direction, at its first bulk read: is the path short? */
static void size_sndbuf(sp_dir_t *dir)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	int v = SHORT_PATH_SNDBUF;

	dir->sized = true;
	if (getsockopt(dir->dst, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 || ti.tcpi_rtt == 0 ||
	    ti.tcpi_rtt >= SHORT_PATH_RTT_US)
		return;
	(void)setsockopt(dir->dst, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
}

static void arm_poll(sp_shard_t *sh, sp_session_t *s, int d, bool out)
{
	sp_dir_t *dir = &s->dir[d];
	uint64_t tag = sp_session_tag(sh, s, sp_relay_op(out ? SP_RELAY_POLL_OUT : SP_RELAY_POLL_IN, d));
	if (!sp_session_started(sh, s, sp_loop_poll(sh->loop, tag, out ? dir->dst : dir->src, out)))
		return;
	if (out)
		dir->poll_out = true;
	else
		dir->poll_in = true;
}

static void put_pipe(sp_shard_t *sh, sp_dir_t *dir)
{
	if (dir->pipe[0] >= 0)
		sp_pipepool_put(&sh->pipes, dir->pipe, dir->in_pipe == 0);
	dir->in_pipe = 0;
}

/* Move what can move now without blocking, then wait for the one readiness
 * that would let it go on. */
static void pump(sp_shard_t *sh, sp_session_t *s, int d)
{
	sp_dir_t *dir = &s->dir[d];
	uint64_t *ctr = d == SP_UP ? &sh->args->stats->bytes_in : &sh->args->stats->bytes_out;

	if (dir->dead)
		return;
	for (int i = 0; i < PUMP_BUDGET && s->state == SP_SESSION_RELAY; i++) {
		if (dir->in_pipe) {
			ssize_t n = splice(dir->pipe[0], NULL, dir->dst, NULL, dir->in_pipe,
					   SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
			if (n > 0) {
				dir->in_pipe -= (uint32_t)n;
				dir->bytes += (uint64_t)n;
				sp_stat_add(ctr, n);
				sp_session_touch(sh, s);
				continue;
			}
			if (n < 0 && errno == EAGAIN) {
				arm_poll(sh, s, d, true);
				return;
			}
			sp_session_peer_reset(sh, s, d, false);
			return;
		}
		if (dir->eof) {
			put_pipe(sh, dir);
			sp_dir_eof_flushed(sh, s, d);
			return;
		}
		int err;
		if (dir->pipe[0] < 0 && (err = sp_pipepool_get(&sh->pipes, dir->pipe)) < 0) {
			if (!sp_fd_shortage(-err)) {
				sp_session_fail(sh, s, SP_END_ERROR);
				return;
			}
			/* Out of descriptors or pipe memory: the shard stops
			 * accepting, and this direction tries again from the
			 * session timer (polling the readable socket would
			 * spin) until sessions closing free some. */
			sp_shard_note_shortage(sh, "pipe2", -err);
			dir->pipe_wait = true;
			sp_loop_timer_arm(sh->loop, &s->timer, sp_shard_now(sh) + SP_SHORTAGE_RETRY_MS);
			return;
		}
		ssize_t n = splice(dir->src, NULL, dir->pipe[1], NULL, SP_SPLICE_CHUNK,
				   SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
		if (n > 0) {
			dir->in_pipe += (uint32_t)n;
			if (!dir->sized && n >= BULK_READ)
				size_sndbuf(dir);
			continue;
		}
		if (n == 0) {
			dir->eof = true;
			continue;
		}
		if (errno == EAGAIN) {
			put_pipe(sh, dir);
			arm_poll(sh, s, d, false);
			return;
		}
		/* The source reset: what it sent before still goes on. */
		sp_session_peer_reset(sh, s, d, true);
	}
	if (s->state == SP_SESSION_RELAY && !dir->shut) /* budget spent: yield, come back when ready */
		arm_poll(sh, s, d, dir->in_pipe != 0);
}

/* The auto engine hands a direction over from copy: its copy queue is
 * empty and its recv has ended, so the socket is all splice's. */
void sp_splice_take_dir(sp_shard_t *sh, sp_session_t *s, int d)
{
	pump(sh, s, d);
}

static void splice_start(sp_shard_t *sh, sp_session_t *s)
{
	arm_poll(sh, s, SP_UP, false);
	if (s->state == SP_SESSION_RELAY)
		arm_poll(sh, s, SP_DOWN, false);
}

static void splice_on_completion(sp_shard_t *sh, sp_session_t *s, sp_relay_kind_t kind, int d,
				 const sp_completion_t *c)
{
	sp_dir_t *dir = &s->dir[d];
	int res = c->res;

	if (kind == SP_RELAY_POLL_IN)
		dir->poll_in = false;
	else if (kind == SP_RELAY_POLL_OUT)
		dir->poll_out = false;
	else
		return;
	if (s->state != SP_SESSION_RELAY || dir->dead)
		return;
	if (res < 0 && res != -ECANCELED) {
		sp_session_fail(sh, s, SP_END_ERROR);
		return;
	}
	/* POLLERR/POLLHUP come back as ready; the splice call reports them. */
	pump(sh, s, d);
}

static void splice_release(sp_shard_t *sh, sp_session_t *s)
{
	for (int d = 0; d < 2; d++)
		put_pipe(sh, &s->dir[d]);
}

const sp_relay_engine_t sp_relay_splice = {
	.needs_pipes = true,
	.start = splice_start,
	.on_completion = splice_on_completion,
	.release = splice_release,
	.resume = NULL, /* never waits for shard-wide resources */
};
