/* shard: one worker's event loop (runtime/loop.h, io_uring or epoll as the
 * supervisor chose). It arms a multishot accept per listening socket,
 * turns each accepted connection into a session, and on the supervisor's
 * drain order (SP_SIG_DRAIN) stops accepting, lets its sessions finish (up to drain_timeout_ms) and returns.
 * Lifecycle hooks read in order: shard_init -> arm -> loop -> drain -> exit. */
#include <arpa/inet.h>
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "runtime/log.h"
#include "shard/accesslog.h"
#include "shard/context.h"
#include "shard/peek.h"
#include "shard/relay.h"
#include "shard/session.h"

#define LOOP_ENTRIES 4096 /* io_uring SQ entries; epoll sizes its op pool per session */
#define SP_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- accepting ---------------------------------------------------------- */

/* Free session slots, counting one for each one-shot accept in flight. */
static uint32_t accept_room(const sp_shard_t *sh)
{
	uint64_t used = (uint64_t)sh->active + sh->accept_pending;
	return used < sh->args->max_sessions ? sh->args->max_sessions - (uint32_t)used : 0;
}

/* Far from the limit, a multishot accept (one SQE, a completion per
 * connection). Near it, a one-shot accept per socket: a multishot round
 * drains the socket's whole backlog in the kernel before we see any of it,
 * so at the limit it would take connections that do not fit and have to
 * close (reset) them. A one-shot accept brings at most one, counted in
 * accept_pending, so sessions never exceed max_sessions. */
static void arm_accept(sp_shard_t *sh, unsigned i, bool multishot)
{
	int ret = sp_loop_accept(sh->loop, sp_loop_tag(SP_OP_ACCEPT, i, 0), sh->accepts[i].fd,
				 multishot);
	if (ret < 0) {
		sp_warn("listener %s: accept: %s", sh->conf->listeners[sh->accepts[i].listener].name,
			strerror(-ret));
		return;
	}
	if (!multishot)
		sh->accept_pending++;
	sh->accepts[i].armed = true;
	sh->accepts[i].multishot = multishot;
	sh->accepts[i].cancelling = false;
}

static void cancel_accept(sp_shard_t *sh, unsigned i)
{
	if (!sh->accepts[i].armed || sh->accepts[i].cancelling)
		return;
	sp_loop_cancel(sh->loop, sh->accepts[i].fd, sp_loop_tag(SP_OP_ACCEPT, i, 0));
	sh->accepts[i].cancelling = true;
}

static void rearm_accepts(sp_shard_t *sh)
{
	if (sh->draining || sh->accept_paused)
		return;
	for (unsigned i = 0; i < sh->naccepts; i++) {
		if (sh->accepts[i].armed)
			continue;
		uint32_t room = accept_room(sh);
		if (room == 0)
			return; /* at the limit: clients wait in the backlog */
		arm_accept(sh, i, room > sh->accept_burst);
	}
}

static void stop_accepts(sp_shard_t *sh)
{
	for (unsigned i = 0; i < sh->naccepts; i++)
		cancel_accept(sh, i);
}

/* Close to the limit: multishot accepts give way to one-shot ones (the
 * cancel's completion re-arms them as one-shot, rearm_accepts). */
static void narrow_accepts(sp_shard_t *sh)
{
	if (accept_room(sh) > sh->accept_burst)
		return;
	for (unsigned i = 0; i < sh->naccepts; i++)
		if (sh->accepts[i].multishot)
			cancel_accept(sh, i);
}

static void on_accept_timer(sp_timer_t *t, void *arg)
{
	sp_shard_t *sh = arg;
	(void)t;
	sh->accept_paused = false;
	rearm_accepts(sh);
}

/* Out of descriptors or memory (what: the call that failed): stop taking
 * connections for a moment rather than spin on an accept that fails at
 * once, or take sessions that cannot get their upstream socket or pipe.
 * Connections wait in the listen backlog meanwhile; none is refused.
 * While paused, a shortage met by another call is still said, once: the
 * accept is often short first (a multishot accept fails with EMFILE right
 * after delivering the connection whose session is then short too), and
 * would otherwise hide that session's socket(2) or pipe2(2) behind it. */
static void pause_accepts(sp_shard_t *sh, const char *what, int err)
{
	if (sh->accept_paused && strcmp(what, sh->paused_by) == 0)
		return;
	sp_warn("%s: %s: pausing accepts for %d ms (%u sessions open)", what, strerror(err),
		SP_SHORTAGE_RETRY_MS, sh->active);
	snprintf(sh->paused_by, sizeof(sh->paused_by), "%s", what);
	if (sh->accept_paused)
		return; /* the pause under way goes on: accept_timer ends it */
	sh->accept_paused = true;
	stop_accepts(sh);
	sp_loop_timer_arm(sh->loop, &sh->accept_timer, sp_shard_now(sh) + SP_SHORTAGE_RETRY_MS);
}

static void last_accepts(sp_shard_t *sh, unsigned i);

static void on_accept(void *ctx, unsigned op, uint32_t i, const sp_completion_t *c)
{
	sp_shard_t *sh = ctx;
	int res = c->res;
	(void)op;

	if (!c->more) {
		if (sh->accepts[i].armed && !sh->accepts[i].multishot)
			sh->accept_pending--;
		sh->accepts[i].armed = false;
		sh->accepts[i].multishot = false;
	}
	if (res >= 0) {
		sp_session_accepted(sh, i, res);
		narrow_accepts(sh);
	} else if (sp_fd_shortage(-res)) {
		pause_accepts(sh, "accept", -res);
	} else if (res != -ECANCELED) {
		/* An error accept(2) may return again at once: wait a moment
		 * too, and say so in one line. */
		char what[SP_CONF_NAME_MAX + 32];
		snprintf(what, sizeof(what), "listener %s: accept",
			 sh->conf->listeners[sh->accepts[i].listener].name);
		pause_accepts(sh, what, -res);
	}
	if (!sh->accepts[i].armed && sh->draining)
		last_accepts(sh, i);
	else if (!sh->accepts[i].armed)
		rearm_accepts(sh);
}

/* ---- signals and draining ----------------------------------------------- */

static void arm_signal(sp_shard_t *sh)
{
	int ret = sp_loop_poll(sh->loop, sp_loop_tag(SP_OP_SIGNAL, 0, 0), sh->sigfd, false);
	if (ret < 0)
		sp_error("signalfd: poll: %s", strerror(-ret));
}

static void on_drain_timer(sp_timer_t *t, void *arg)
{
	sp_shard_t *sh = arg;
	(void)t;
	if (sh->active)
		sp_info("drain timeout: closing %u sessions", sh->active);
	sp_session_close_all(sh, SP_END_DRAIN_TIMEOUT);
}

/* Stop accepting and close this shard's copies of the listening sockets at
 * once (an armed accept's, when its cancel completes: last_accepts): once
 * the supervisor and every other shard have closed theirs too, the socket
 * is gone and a new client is refused (retries elsewhere) instead of
 * waiting in a backlog nobody accepts from. On a reload the new generation
 * and the supervisor still hold the sockets, so nothing queued is lost. */
/* A draining shard's last look at a listening socket, once no accept of its
 * own is in flight there, then its close. Whatever is queued now is this
 * shard's to serve: on a stop its copy may be the socket's last, and the
 * queue would be reset with it. On a reload anything later wakes the new
 * generation's shard as well (accepts wait for readiness, never as the
 * socket's exclusive waiter: runtime/loop.h). */
static void notify(const sp_shard_args_t *a, uint32_t event, int err);

static void last_accepts(sp_shard_t *sh, unsigned i)
{
	int lfd = sh->accepts[i].fd;
	if (lfd < 0)
		return;
	for (unsigned n = 0; n < SP_SESSION_SLACK; n++) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			break;
		sp_session_accepted(sh, i, fd);
	}
	sp_loop_close(sh->loop, lfd);
	sh->accepts[i].fd = -1;
	for (unsigned k = 0; k < sh->naccepts; k++)
		if (sh->accepts[k].fd >= 0)
			return;
	/* The last one: from now on every new connection is the new
	 * generation's, which the supervisor waits for before it says a
	 * reload is done. An orphan has no one to tell. */
	if (getppid() == sh->sup_pid)
		notify(sh->args, SP_SHARD_EV_CLOSED, 0);
}

static void start_drain(sp_shard_t *sh)
{
	sh->draining = true;
	stop_accepts(sh);
	for (unsigned i = 0; i < sh->naccepts; i++)
		if (!sh->accepts[i].armed)
			last_accepts(sh, i);
	sp_loop_timer_arm(sh->loop, &sh->drain_timer, sp_shard_now(sh) + sh->conf->limits.drain_timeout_ms);
}

/* The signalfd is readable: take every signal queued. */
static void on_signal(void *ctx, unsigned op, uint32_t slot, const sp_completion_t *c)
{
	sp_shard_t *sh = ctx;
	(void)op;
	(void)slot;
	(void)c;

	for (;;) {
		ssize_t n = read(sh->sigfd, &sh->siginfo, sizeof(sh->siginfo));
		if (n != (ssize_t)sizeof(sh->siginfo)) {
			if (n < 0 && errno == EINTR)
				continue;
			break; /* EAGAIN: all taken */
		}
		/* The supervisor's drain order counts; SIGTERM (or SIGINT) only
		 * once the supervisor is gone. A signal to the whole process
		 * group (Ctrl-C in a terminal, kill -- -PGID, systemd's
		 * control-group kill) reaches the supervisor too, and it orders
		 * every shard to drain in turn. */
		bool order = (int)sh->siginfo.ssi_signo == SP_SIG_DRAIN || getppid() != sh->sup_pid;
		if (!order) {
			sp_debug("%s from pid %u ignored: the supervisor decides",
				 strsignal((int)sh->siginfo.ssi_signo), (unsigned)sh->siginfo.ssi_pid);
		} else if (!sh->draining) {
			start_drain(sh);
		} else {
			sh->stopping = true; /* a second signal: stop at once */
		}
	}
	if (!sh->stopping)
		arm_signal(sh);
}

/* ---- descriptor budget ------------------------------------------------------ */

/* From what the engine declares it needs, not from its name: a pipe is two
 * descriptors, and an engine with pipes may hold one per direction. */
unsigned sp_shard_fds_per_session(const sp_conf_t *conf)
{
	return 2 + (sp_relay_engine_for(conf->relay)->needs_pipes ? 2 * 2 : 0);
}

unsigned sp_shard_fds_reserve(const sp_conf_t *conf)
{
	unsigned pool = sp_relay_engine_for(conf->relay)->needs_pipes ? 2 * SP_SHARD_IDLE_PIPES : 0;
	return 64 + pool + (unsigned)conf->nlisteners * SP_SHARD_MAX_FDS_PER_LISTENER;
}

/* ---- lifecycle -------------------------------------------------------------- */

static void notify(const sp_shard_args_t *a, uint32_t event, int err)
{
	sp_shard_msg_t m = {.slot = a->slot, .gen = a->gen, .event = event, .err = err};
	if (a->notify_fd >= 0 && write(a->notify_fd, &m, sizeof(m)) != (ssize_t)sizeof(m))
		sp_warn("notify supervisor: %s", strerror(errno));
}

static uint32_t pow2_clamp(uint64_t v, uint32_t lo, uint32_t hi)
{
	uint32_t p = lo;
	while (p < v && p < hi)
		p <<= 1;
	return p;
}

/* Does anything look at the client's address? If not, accepting skips the
 * getpeername(2). */
static bool needs_peer_address(const sp_conf_t *c)
{
	if (c->log.access_log)
		return true;
	for (size_t u = 0; u < c->nupstreams; u++)
		if (c->upstreams[u].balance == SP_BALANCE_SOURCE_HASH ||
		    c->upstreams[u].send_proxy_protocol != SP_PROXY_PROTO_NONE)
			return true;
	for (size_t l = 0; l < c->nlisteners; l++)
		for (size_t r = 0; r < c->listeners[l].nroutes; r++)
			if (c->listeners[l].routes[r].nsource)
				return true;
	return false;
}

/* Everything the loop needs, before any op is submitted. Returns 0, or
 * -errno with what failed in err (the caller logs it, once). */
static int shard_init(sp_shard_t *sh, const sp_shard_args_t *a, char *err, size_t errlen)
{
	char desc[256];
	sigset_t set;
	int ret;

	sh->args = a;
	sh->conf = a->conf;
	sp_accesslog_init(&sh->log, a->access_fd, a->access_sock, &a->stats->log_dropped);
	sh->need_peer = needs_peer_address(a->conf);

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SP_SIG_DRAIN);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sh->sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sh->sigfd < 0) {
		ret = -errno;
		snprintf(err, errlen, "signalfd: %s", strerror(-ret));
		return ret;
	}

	sh->engine = sp_relay_engine_for(a->conf->relay);
	uint32_t nsess = a->max_sessions + SP_SESSION_SLACK;
	/* Ops in flight: at most four per session (a reader and a writer on
	 * each socket), plus accepts and the signalfd. */
	sp_loop_config_t lc = {
		.backend = a->io,
		.entries = a->io == SP_LOOP_URING ? LOOP_ENTRIES
						    : nsess * 4 + SP_ARRAY_LEN(sh->accepts) + 8,
		.timers = nsess + 8,
		.ctx = sh,
	};
	ret = sp_loop_new(&sh->loop, &lc, err, errlen);
	if (ret < 0)
		return ret;
	sp_loop_describe(sh->loop, desc, sizeof(desc));
	sp_debug("event loop: %s", desc);
	if (sh->engine->needs_bufs) {
		/* The pool is the shard's whole copy memory: it bounds what
		 * all sessions together hold in flight (starved sessions wait
		 * for buffers, see copy_resume), and every buffer is touched as
		 * the pool cycles, so it is sized for throughput, not for the
		 * number of sessions. */
		uint32_t nbufs = pow2_clamp(a->max_sessions, SP_COPY_NBUFS_MIN, SP_COPY_NBUFS_MAX);
		sh->bufq_next = calloc(nbufs, sizeof(*sh->bufq_next));
		sh->bufq_len = calloc(nbufs, sizeof(*sh->bufq_len));
		ret = sh->bufq_next && sh->bufq_len ? sp_loop_bufs_init(sh->loop, nbufs, SP_COPY_BUF_SIZE)
						    : -ENOMEM;
		if (ret < 0) {
			snprintf(err, errlen, "%s buffer pool (%u x %u bytes): %s",
				 sp_loop_backend_name(a->io), nbufs, SP_COPY_BUF_SIZE, strerror(-ret));
			return ret;
		}
	}
	if (sh->engine->needs_pipes) {
		ret = sp_pipepool_init(&sh->pipes, SP_SHARD_IDLE_PIPES, SP_PIPE_SIZE);
		if (ret < 0) {
			snprintf(err, errlen, "pipe pool (%u pipes): %s", SP_SHARD_IDLE_PIPES,
				 strerror(-ret));
			return ret;
		}
	}

	if ((ret = sp_sessions_init(sh, nsess)) < 0) {
		snprintf(err, errlen, "session pool of %u: %s", nsess, strerror(-ret));
		return ret;
	}
	sh->balancers = calloc(a->conf->nupstreams, sizeof(*sh->balancers));
	sh->srv_addr = calloc(a->conf->nservers ? a->conf->nservers : 1, sizeof(*sh->srv_addr));
	if (!sh->balancers || !sh->srv_addr) {
		snprintf(err, errlen, "balancers for %zu upstreams: %s", a->conf->nupstreams,
			 strerror(ENOMEM));
		return -ENOMEM;
	}
	for (size_t u = 0; u < a->conf->nupstreams; u++) {
		ret = sp_balancer_init(&sh->balancers[u], &a->conf->upstreams[u],
				       ((uint64_t)getpid() << 20) ^ sp_shard_now(sh) ^ u);
		if (ret < 0) {
			snprintf(err, errlen, "upstream %s: balancer: %s", a->conf->upstreams[u].name,
				 strerror(-ret));
			return ret;
		}
		if (a->server_ctl)
			sh->balancers[u].ctl = a->server_ctl + a->conf->upstreams[u].first_server;
	}

	sp_loop_on(sh->loop, SP_OP_ACCEPT, on_accept, false);
	sp_loop_on(sh->loop, SP_OP_SIGNAL, on_signal, false);
	sp_loop_on(sh->loop, SP_OP_CONNECT, sp_session_on_connect, true);
	sp_loop_on(sh->loop, SP_OP_PEEK, sp_peek_on_ready, true);
	for (unsigned op = 0; op < SP_OP_MAX; op++)
		if (sp_relay_ops[op].kind)
			sp_loop_on(sh->loop, op, sp_session_on_relay, true);

	sp_timer_setup(&sh->accept_timer, on_accept_timer, sh);
	sp_timer_setup(&sh->drain_timer, on_drain_timer, sh);

	for (size_t l = 0; l < a->conf->nlisteners; l++)
		for (unsigned k = 0; k < a->nlisten_fds[l]; k++) {
			sh->accepts[sh->naccepts].fd = a->listen_fds[l][k];
			sh->accepts[sh->naccepts].listener = (uint16_t)l;
			sh->naccepts++;
		}
	return 0;
}

static void shard_exit(sp_shard_t *sh)
{
	sp_accesslog_flush(&sh->log);
	if (sh->balancers)
		for (size_t u = 0; u < sh->conf->nupstreams; u++)
			sp_balancer_free(&sh->balancers[u]);
	free(sh->balancers);
	free(sh->srv_addr);
	sp_sessions_free(sh);
	free(sh->bufq_next);
	free(sh->bufq_len);
	if (sh->pipes.fds)
		sp_pipepool_free(&sh->pipes);
	sp_loop_free(sh->loop);
	if (sh->sigfd >= 0)
		close(sh->sigfd);
}

/* user/group from the config: give up root once the loop and its buffers
 * exist (as root they are not charged to RLIMIT_MEMLOCK) and before the
 * first submission (so no io-wq worker is ever created with root's
 * credentials). No supplementary group, no way back. */
static int drop_privileges(const sp_shard_args_t *a, char *err, size_t errlen)
{
	const sp_conf_t *c = a->conf;
	gid_t gid = a->gid; /* "group", else the user's primary group */
	int ret;

	if (!a->drop_user && !a->drop_group)
		return 0;
	if (setgroups(0, NULL) < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s %s: setgroups: %s", a->drop_user ? "user" : "group",
			 a->drop_user ? c->user.name : c->group.name, strerror(-ret));
		return ret;
	}
	if (setresgid(gid, gid, gid) < 0) {
		ret = -errno;
		snprintf(err, errlen, "group %s (gid %u): setgid: %s",
			 a->drop_group ? c->group.name : c->user.name, (unsigned)gid, strerror(-ret));
		return ret;
	}
	if (a->drop_user) {
		if (setresuid(a->uid, a->uid, a->uid) < 0) {
			ret = -errno;
			snprintf(err, errlen, "user %s (uid %u): setuid: %s", c->user.name,
				 (unsigned)a->uid, strerror(-ret));
			return ret;
		}
		if (a->uid != 0 && (setuid(0) == 0 || seteuid(0) == 0)) {
			snprintf(err, errlen, "user %s: could regain root after dropping it",
				 c->user.name);
			return -EPERM;
		}
	}
	/* A change of credentials clears the parent-death signal: set it again. */
	prctl(PR_SET_PDEATHSIG, SP_SIG_DRAIN);
	return 0;
}

/* The most a multishot round can bring at once: every backlog this shard
 * accepts from, full (the listening socket's TCP_INFO gives its limit as
 * tcpi_sacked), plus a margin for connections completing while a cancel is
 * on its way. */
static uint32_t accept_burst(const sp_shard_t *sh)
{
	uint64_t burst = 64;
	for (unsigned i = 0; i < sh->naccepts; i++) {
		struct tcp_info ti;
		socklen_t len = sizeof(ti);
		if (getsockopt(sh->accepts[i].fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 &&
		    ti.tcpi_state == TCP_LISTEN)
			burst += ti.tcpi_sacked;
		else
			burst += 4096; /* net.core.somaxconn's default */
	}
	return burst > UINT32_MAX ? UINT32_MAX : (uint32_t)burst;
}

static bool accepts_idle(const sp_shard_t *sh)
{
	for (unsigned i = 0; i < sh->naccepts; i++)
		if (sh->accepts[i].armed)
			return false;
	return true;
}

static void pin_cpu(int cpu)
{
	cpu_set_t set;
	if (cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set) < 0)
		sp_warn("pin to CPU %d: %s", cpu, strerror(errno));
}

int sp_shard_main(const sp_shard_args_t *a)
{
	sp_shard_t *sh = calloc(1, sizeof(*sh));
	char who[64], err[256];
	int ret;

	if (!sh)
		return 2;
	sh->sigfd = -1;
	sh->sup_pid = a->sup_pid ? a->sup_pid : getppid();
	snprintf(who, sizeof(who), "shardproxy[shard %u]", a->slot);
	sp_log_setup(who, a->conf->log.level);
	/* A stalled stderr reader costs log lines (counted), never the relay. */
	int lret = sp_log_nonblocking();
	if (lret < 0)
		sp_warn("stderr: cannot write it without blocking: %s", strerror(-lret));
	/* If the supervisor dies, drain and go rather than serve unsupervised.
	 * It may already have died since the fork, before this was set: that
	 * is checked below, once the signal could no longer be missed. */
	prctl(PR_SET_PDEATHSIG, SP_SIG_DRAIN);
	/* "none": keep the supervisor's mask and let the scheduler move the shard off
	 * a CPU that a backend or client keeps busy (docs/BENCHMARKS.md). */
	if (a->conf->cpu_affinity == SP_AFFINITY_PIN)
		pin_cpu(a->cpu);

	ret = shard_init(sh, a, err, sizeof(err));
	if (ret == 0)
		ret = drop_privileges(a, err, sizeof(err));
	if (ret < 0) {
		sp_error("%s", err); /* the supervisor sees only ret: the why is told here */
		notify(a, SP_SHARD_EV_FAILED, ret);
		shard_exit(sh);
		free(sh);
		return 2;
	}
	arm_signal(sh);
	sh->accept_burst = accept_burst(sh);
	if (getppid() != sh->sup_pid) {
		/* Orphaned before PR_SET_PDEATHSIG took (or before
		 * drop_privileges set it again): no signal will come. */
		sp_info("supervisor (pid %d) is gone: draining", (int)sh->sup_pid);
		start_drain(sh);
	}
	rearm_accepts(sh);
	notify(a, SP_SHARD_EV_READY, 0);

	while (!sh->stopping) {
		ret = sp_loop_run_once(sh->loop, -1); /* until the next timer at most */
		if (ret < 0) {
			sp_error("%s: wait: %s", sp_loop_backend_name(a->io), strerror(-ret));
			break;
		}
		/* What sessions left this turn, read here rather than called up
		 * from them: a shortage one met pauses accepts; those that
		 * closed may have made room (sh->active). */
		if (sh->shortage.what) {
			pause_accepts(sh, sh->shortage.what, sh->shortage.err);
			sh->shortage.what = NULL;
		}
		rearm_accepts(sh);
		if (sh->engine->resume)
			sh->engine->resume(sh);
		sp_accesslog_flush(&sh->log);
		if (sh->draining && sh->active == 0 && accepts_idle(sh))
			break;
	}
	shard_exit(sh);
	free(sh);
	return ret < 0 ? 1 : 0;
}
