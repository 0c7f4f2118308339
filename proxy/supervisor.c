/* supervisor: process life of shardproxy. Read in order:
 *   set-up (limits, signals, shared memory) -> prepare and start the first
 *   generation (generation.c) -> loop { signal -> action: SIGCHLD reap and
 *   restart, SIGHUP reload, SIGTERM/SIGINT drain } -> exit.
 * At most two generations exist: the current one and, during a reload, the
 * old one draining. */
#include "proxy/supervisor.h"
#include "proxy/control.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "proxy/pidfile.h"
#include "proxy/sup_internal.h"
#include "runtime/log.h"
#include "runtime/sdnotify.h"

/* ---- sizing ----------------------------------------------------------------- */

static unsigned allowed_cpus(int *cpus, unsigned max)
{
	cpu_set_t set;
	unsigned n = 0;
	if (sched_getaffinity(0, sizeof(set), &set) == 0)
		for (int c = 0; c < CPU_SETSIZE && n < max; c++)
			if (CPU_ISSET(c, &set))
				cpus[n++] = c;
	if (n == 0) {
		long online = sysconf(_SC_NPROCESSORS_ONLN);
		for (long c = 0; c < online && n < max; c++)
			cpus[n++] = (int)c;
	}
	return n ? n : 1;
}

unsigned sp_supervisor_workers(const sp_conf_t *conf, int override)
{
	int cpus[SP_MAX_SLOTS];
	if (override > 0)
		return (unsigned)override;
	if (conf->workers > 0)
		return conf->workers;
	return allowed_cpus(cpus, SP_MAX_SLOTS);
}

/* Raise the soft descriptor limit to the hard one: every session needs two
 * descriptors (client and upstream) and a splice relay up to two more. */
static uint64_t raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 1024;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	return rl.rlim_cur;
}

/* ---- reload -------------------------------------------------------------------- */

/* systemd (Type=notify): READY=1 once serving, RELOADING=1 while a reload
 * is under way, READY=1 when it is over (whatever its result). */
static void notify_reloading(sp_sup_t *sup)
{
	if (sup->reloading)
		return;
	sup->reloading = true;
	sp_sdnotifyf("RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading %s",
		     sp_sdnotify_monotonic_usec(), sup->opts->conf_path);
}

static void notify_ready(sp_sup_t *sup)
{
	bool failed = sup->last_reload && !sup->last_reload_ok;
	sup->reloading = false;
	sp_sdnotifyf("READY=1\nSTATUS=serving: generation %u, %u shards%s%s", sup->cur->id,
		     sup->cur->nslots, failed ? "; last reload failed: " : "",
		     failed ? sup->last_reload_error : "");
}

/* g: the prepared generation to give up, or NULL (the reload failed before). */
static void reload_failed(sp_sup_t *sup, sp_gen_t *g, const char *err)
{
	sup->reloads_failed++;
	sup->last_reload_ok = false;
	snprintf(sup->last_reload_error, sizeof(sup->last_reload_error), "%s", err);
	sp_error("reload failed: %s; generation %u keeps serving", err, sup->cur->id);
	if (g)
		sp_gen_abandon(sup, g);
	notify_ready(sup);
}

/* Every shard of g is ready: it accepts; the old generation stops and drains. */
static void reload_commit(sp_sup_t *sup, sp_gen_t *g)
{
	sup->old = sup->cur;
	sup->cur = g;
	sp_gen_drain(sup->old);
	for (unsigned i = 0; i < g->nslots; i++)
		sp_steering_live(sup, i, true);
	for (unsigned i = g->nslots; i < sup->old->nslots; i++)
		sp_steering_live(sup, i, false);
	sup->reloads_ok++;
	sup->last_reload_ok = true;
	sup->last_reload_error[0] = '\0';
	if (sup->admin && memcmp(&g->conf->admin.listen.ss, &sup->old->conf->admin.listen.ss,
				 sizeof(g->conf->admin.listen.ss)) != 0)
		sp_warn("admin.listen changed: the admin endpoint moves only on a restart");
	if (strcmp(g->conf->admin.socket, sup->old->conf->admin.socket) != 0)
		sp_warn("admin.socket changed: the socket moves only on a restart");
	sp_info("reload: generation %u ready, %u shards; generation %u draining", g->id, g->nslots,
		sup->old->id);
	notify_ready(sup);
}

static void reload(sp_sup_t *sup);

/* The wait for a reload's new generation is part of the loop: each turn
 * looks at how its start stands, so signals, shard restarts, health checks
 * and the admin endpoint go on meanwhile. */
static void reload_progress(sp_sup_t *sup)
{
	sp_gen_t *g = sup->starting;
	char err[128];
	if (!g || g == sup->cur)
		return;
	int st = sp_gen_start_poll(sup, g);
	if (st > 0) {
		reload_commit(sup, g);
	} else if (st < 0) {
		sp_gen_kill(sup, g);
		snprintf(err, sizeof(err), "generation %u did not start", g->id);
		reload_failed(sup, g, err);
		if (sup->reload_pending && !sup->stopping)
			reload(sup);
	}
}

/* The free half of server_ctl: the one the next generation will use (the
 * entry of gens sp_gen_prepare takes). */
static sp_server_ctl_t *next_ctl(sp_sup_t *sup)
{
	size_t half = sup->cur == &sup->gens[0] ? 1 : 0;
	return sup->server_ctl + half * SP_HEALTH_MAX_SERVERS;
}

static void drop_pending(sp_sup_t *sup)
{
	sp_names_free(sup->pending_names);
	sp_conf_free(sup->pending_conf);
	sup->pending_names = NULL;
	sup->pending_conf = NULL;
}

/* The new file's host names are answered: start its generation. */
static void reload_finish(sp_sup_t *sup)
{
	sp_conf_t *conf = sup->pending_conf;
	sp_names_t *names = sup->pending_names;
	sp_conf_errors_t errs = {0};
	char err[512];

	sup->pending_conf = NULL;
	sup->pending_names = NULL;
	if (sp_names_first_errors(names, sup->cur->names, &errs) > 0) {
		for (size_t i = 1; i < errs.n; i++)
			sp_error("%s", errs.msgs[i]);
		snprintf(err, sizeof(err), "%s", errs.n ? errs.msgs[0] : "cannot resolve a server name");
		sp_conf_errors_free(&errs);
		sp_names_free(names);
		sp_conf_free(conf);
		reload_failed(sup, NULL, err);
		return;
	}
	sp_gen_t *g;
	int ret = sp_gen_prepare(sup, conf, sup->cur->conf, &g, err, sizeof(err));
	g->names = names; /* freed with g from here on */
	if (ret < 0) {
		reload_failed(sup, g, err);
		return;
	}
	if (sp_gen_spawn(sup, g) < 0) {
		snprintf(err, sizeof(err), "generation %u did not start", g->id);
		reload_failed(sup, g, err);
	}
	/* else reload_progress finishes it, from the loop */
}

static void reload(sp_sup_t *sup)
{
	sp_conf_errors_t errs = {0};
	char err[512];

	if (sup->old || sup->starting) {
		/* At most two generations: the newest file is applied as soon as
		 * the draining one is gone (or the starting one has started or
		 * failed); repeated SIGHUPs meanwhile coalesce. */
		if (!sup->reload_pending)
			sp_info("reload queued: generation %u is still %s",
				sup->old ? sup->old->id : sup->starting->id,
				sup->old ? "draining" : "starting");
		sup->reload_pending = true;
		return;
	}
	if (sup->pending_conf) {
		/* Look-ups of an earlier SIGHUP still out: the newest file wins. */
		sp_info("reload: starting over with the file as it is now");
		drop_pending(sup);
	}
	sup->reload_pending = false;
	notify_reloading(sup);
	sp_conf_t *conf = sp_conf_load(sup->opts->conf_path, &errs);
	sup->last_reload = time(NULL);
	if (!conf) {
		sup->reloads_failed++;
		sup->last_reload_ok = false;
		snprintf(sup->last_reload_error, sizeof(sup->last_reload_error), "%s",
			 errs.n ? errs.msgs[0] : "invalid configuration");
		sp_error("reload failed: %zu error(s) in %s; generation %u keeps serving", errs.n,
			 sup->opts->conf_path, sup->cur->id);
		for (size_t i = 0; i < errs.n; i++)
			sp_error("%s", errs.msgs[i]);
		sp_conf_errors_free(&errs);
		notify_ready(sup);
		return;
	}
	/* Host names are looked up without blocking: the loop goes on serving
	 * and reload_finish runs when the last answer (or timeout) is in. */
	sp_control_init(conf, next_ctl(sup));
	if (sp_names_new(&sup->pending_names, conf, next_ctl(sup), err, sizeof(err)) < 0) {
		sp_conf_free(conf);
		reload_failed(sup, NULL, err);
		return;
	}
	sup->pending_conf = conf;
	sp_names_start(sup->pending_names);
	if (sp_names_settled(sup->pending_names))
		reload_finish(sup);
}

/* ---- children --------------------------------------------------------------------- */

static void reap(sp_sup_t *sup)
{
	sp_gen_reap(sup);
	if (sup->old && sp_gen_alive(sup->old) == 0) {
		sp_info("generation %u drained", sup->old->id);
		sp_gen_free(sup->old);
		sup->old = NULL;
		sp_gen_close_retired(sup);
		if (sup->reload_pending && !sup->stopping)
			reload(sup);
	}
}

static void run_timers(sp_sup_t *sup)
{
	uint64_t t = sp_clock_ms();
	sp_gen_restart_due(sup, t);
	if (sup->old && sup->old->kill_at && t >= sup->old->kill_at) {
		sp_warn("generation %u still has shards after drain_timeout_ms; killing them",
			sup->old->id);
		sp_gen_signal(sup->old, SIGKILL);
		sup->old->kill_at = 0;
	}
	if (sup->stopping && sup->stop_kill_at && t >= sup->stop_kill_at) {
		for (int k = 0; k < 2; k++)
			if (sup->gens[k].conf)
				sp_gen_signal(&sup->gens[k], SIGKILL);
		sup->stop_kill_at = 0;
	}
}

static int next_timeout(const sp_sup_t *sup)
{
	uint64_t next = UINT64_MAX, t = sp_clock_ms();
	if (sup->cur)
		for (unsigned i = 0; i < sup->cur->nslots; i++)
			if (sup->cur->procs[i].state == PROC_NONE && sup->cur->procs[i].restart_at &&
			    sup->cur->procs[i].restart_at < next)
				next = sup->cur->procs[i].restart_at;
	if (sup->old && sup->old->kill_at && sup->old->kill_at < next)
		next = sup->old->kill_at;
	if (sup->stop_kill_at && sup->stop_kill_at < next)
		next = sup->stop_kill_at;
	if (sup->starting && sup->starting->ready_by < next)
		next = sup->starting->ready_by;
	if (next == UINT64_MAX)
		return -1;
	return next <= t ? 0 : (int)(next - t);
}

static void begin_stop(sp_sup_t *sup, int sig)
{
	if (sup->stopping) {
		sp_info("%s again: stopping at once", strsignal(sig));
		for (int k = 0; k < 2; k++)
			if (sup->gens[k].conf)
				sp_gen_signal(&sup->gens[k], SIGKILL);
		return;
	}
	if (sup->starting && sup->starting != sup->cur) {
		/* A reload's generation that is not serving yet has nothing to
		 * drain: it goes, and what it opened with it. */
		sp_gen_t *g = sup->starting;
		sp_warn("reload abandoned: stopping; generation %u will not start", g->id);
		sp_gen_kill(sup, g);
		sp_gen_abandon(sup, g);
		sup->reload_pending = false;
	}
	sup->stopping = true;
	drop_pending(sup); /* a reload still looking names up will not happen */
	sp_sdnotifyf("STOPPING=1\nSTATUS=draining after %s", strsignal(sig));
	sp_info("%s: draining (up to %u ms)", strsignal(sig), sup->cur->conf->limits.drain_timeout_ms);
	uint32_t drain = sup->cur->conf->limits.drain_timeout_ms;
	for (int k = 0; k < 2; k++)
		if (sup->gens[k].conf) {
			sp_gen_signal(&sup->gens[k], SP_SIG_DRAIN);
			if (sup->gens[k].conf->limits.drain_timeout_ms > drain)
				drain = sup->gens[k].conf->limits.drain_timeout_ms;
		}
	sup->stop_kill_at = sp_clock_ms() + drain + KILL_GRACE_MS;
	/* Refuse, never strand: the shards close their copies of the listening
	 * sockets as they start draining, and these are the last ones. A new
	 * client is refused at once (and retries elsewhere) instead of
	 * completing a handshake into a backlog nobody accepts from. */
	for (unsigned i = 0; i < sup->ngroups; i++)
		if (sup->groups[i].nfds)
			sp_lgroup_close(&sup->groups[i]);
}

static bool all_gone(const sp_sup_t *sup)
{
	for (int k = 0; k < 2; k++)
		if (sup->gens[k].conf && sp_gen_alive(&sup->gens[k]))
			return false;
	return true;
}

static void on_signal(sp_sup_t *sup, const struct signalfd_siginfo *si)
{
	switch (si->ssi_signo) {
	case SIGCHLD:
		reap(sup);
		break;
	case SIGHUP:
		if (!sup->stopping) {
			notify_reloading(sup);
			reload(sup);
		}
		break;
	case SIGTERM:
	case SIGINT:
		begin_stop(sup, (int)si->ssi_signo);
		break;
	}
}

/* ---- init and loop --------------------------------------------------------------- */

static int setup_process(sp_sup_t *sup)
{
	sigset_t set;
	int p[2];

	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	sup->sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	/* Blocked here too (not read): shards inherit the mask, so an order
	 * that arrives before a new shard has its signalfd waits for it. */
	sigemptyset(&set);
	sigaddset(&set, SP_SIG_DRAIN);
	sigprocmask(SIG_BLOCK, &set, NULL);
	if (sup->sigfd < 0)
		return -errno;
	/* Shards report readiness here; each message is smaller than PIPE_BUF,
	 * so writes from several shards never interleave. */
	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	sup->notify_r = p[0];
	sup->notify_w = p[1];
	fcntl(sup->notify_r, F_SETFL, O_NONBLOCK);
	sup->stats = mmap(NULL, sizeof(sp_shard_stats_t) * 2 * SP_MAX_SLOTS,
			  PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sup->stats == MAP_FAILED)
		return -errno;
	sup->server_down = mmap(NULL, 2 * SP_HEALTH_MAX_SERVERS, PROT_READ | PROT_WRITE,
				MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	sup->server_fails = mmap(NULL, 2 * SP_HEALTH_MAX_SERVERS * sizeof(uint32_t),
				 PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	sup->server_ctl = mmap(NULL, 2 * SP_HEALTH_MAX_SERVERS * sizeof(sp_server_ctl_t),
			       PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sup->server_down == MAP_FAILED || sup->server_fails == MAP_FAILED ||
	    sup->server_ctl == MAP_FAILED)
		return -ENOMEM;
	return 0;
}

int sp_supervisor_run(const sp_supervisor_opts_t *opts, sp_conf_t *conf)
{
	static sp_sup_t sup_storage;
	sp_sup_t *sup = &sup_storage;
	char err[512];
	int ret;

	memset(sup, 0, sizeof(*sup));
	sup->gens[0].access_fd = sup->gens[1].access_fd = -1;
	sup->opts = opts;
	sup->sigfd = sup->notify_r = sup->notify_w = -1;
	sup->next_gen = 1;
	sup->ncpus = allowed_cpus(sup->cpus, SP_MAX_SLOTS);
	sup->nofile = raise_nofile();
	sup->started = time(NULL);
	sp_log_setup("shardproxy", conf->log.level);

	if ((ret = setup_process(sup)) < 0) {
		fprintf(stderr, "shardproxy: start-up: %s\n", strerror(-ret));
		return 2;
	}

	/* Host names first: nothing is served yet, so this wait blocks no one.
	 * A name that does not resolve stops the start (as nginx does) unless
	 * its upstream re-resolves (resolve_interval_ms), which then starts
	 * without it and keeps trying (HAProxy's init-addr none). */
	sp_names_t *names = NULL;
	sp_conf_errors_t errs = {0};
	sp_control_init(conf, next_ctl(sup));
	if (sp_names_new(&names, conf, next_ctl(sup), err, sizeof(err)) < 0) {
		fprintf(stderr, "shardproxy: %s\n", err);
		sp_conf_free(conf);
		return 2;
	}
	if (sp_names_resolve_now(names, &errs) > 0) {
		sp_conf_errors_print(&errs, stderr);
		sp_conf_errors_free(&errs);
		sp_names_free(names);
		sp_conf_free(conf);
		return 1;
	}
	sp_gen_t *g;
	int gret = sp_gen_prepare(sup, conf, NULL, &g, err, sizeof(err));
	g->names = names;
	if (gret < 0) {
		fprintf(stderr, "shardproxy: %s\n", err);
		return 2;
	}
	if (conf->admin.enabled &&
	    sp_admin_open(&sup->admin, &conf->admin.listen, err, sizeof(err)) < 0) {
		fprintf(stderr, "shardproxy: %s\n", err);
		return 2;
	}
	if (conf->admin.socket[0] &&
	    sp_admin_open_unix(&sup->admin_unix, conf->admin.socket, err, sizeof(err)) < 0) {
		fprintf(stderr, "shardproxy: %s\n", err);
		return 2;
	}
	sup->cur = g;
	if (sp_gen_start(sup, g) < 0) {
		fprintf(stderr, "shardproxy: start-up failed: shards did not start (see above)\n");
		return 2;
	}
	if (opts->pidfile && sp_pidfile_write(opts->pidfile, getpid(), err, sizeof(err)) < 0) {
		fprintf(stderr, "shardproxy: %s\n", err);
		sp_gen_kill(sup, g);
		return 2;
	}
	sp_info("ready: generation %u, %u shards, io %s, relay %s, pid %d%s%s", g->id, g->nslots,
		sp_loop_backend_name(g->io), sp_relay_engine(conf), (int)getpid(),
		conf->user.set ? ", shards run as user " : "", conf->user.set ? conf->user.name : "");
	sp_sdnotifyf("READY=1\nMAINPID=%d\nSTATUS=serving: generation %u, %u shards", (int)getpid(),
		     g->id, g->nslots);

	while (!(sup->stopping && all_gone(sup))) {
		enum { MAXFD = 2 + 2 * (1 + SP_ADMIN_MAX_CLIENTS) + 2 * 16 + 256 };
		struct pollfd pfd[MAXFD] = {
			{.fd = sup->sigfd, .events = POLLIN},
			{.fd = sup->notify_r, .events = POLLIN},
		};
		int nfd = 2, nadmin = 0, nunix = 0, nhealth = 0, nnames = 0, npend = 0;
		int timeout = next_timeout(sup);
		if (sup->admin) {
			nadmin = sp_admin_pollfds(sup->admin, pfd + nfd, MAXFD - nfd);
			nfd += nadmin;
			if (nadmin > 1 && (timeout < 0 || timeout > 500))
				timeout = 500; /* admin clients have deadlines */
		}
		if (sup->admin_unix) {
			nunix = sp_admin_pollfds(sup->admin_unix, pfd + nfd, MAXFD - nfd);
			nfd += nunix;
			if (nunix > 1 && (timeout < 0 || timeout > 500))
				timeout = 500;
		}
		/* Re-resolution of the current generation's names, and the
		 * look-ups of a reload in progress: their sockets join the poll. */
		sp_names_t *cnames = sup->stopping ? NULL : sup->cur->names;
		sp_names_t *pend = sup->pending_names;
		int nt;
		if (cnames) {
			nnames = sp_names_pollfds(cnames, pfd + nfd, 16);
			nfd += nnames;
			if ((nt = sp_names_timeout(cnames)) >= 0 && (timeout < 0 || nt < timeout))
				timeout = nt;
		}
		if (pend) {
			npend = sp_names_pollfds(pend, pfd + nfd, 16);
			nfd += npend;
			if ((nt = sp_names_timeout(pend)) >= 0 && (timeout < 0 || nt < timeout))
				timeout = nt;
		}
		sp_health_t *health = sup->stopping ? NULL : sup->cur->health;
		if (health) {
			nhealth = sp_health_pollfds(health, pfd + nfd, MAXFD - nfd);
			int ht = sp_health_timeout(health);
			if (ht >= 0 && (timeout < 0 || ht < timeout))
				timeout = ht;
		}
		int n = poll(pfd, (nfds_t)(nfd + nhealth), timeout);
		if (n < 0 && errno != EINTR) {
			sp_error("poll: %s", strerror(errno));
			break;
		}
		if (pfd[1].revents & POLLIN)
			sp_gen_read_notify(sup);
		if (health)
			sp_health_run(health, pfd + nfd, nhealth);
		if (sup->admin)
			sp_admin_serve(sup->admin, pfd + 2, nadmin, sp_render, sup);
		if (sup->admin_unix)
			sp_admin_serve(sup->admin_unix, pfd + 2 + nadmin, nunix, sp_render, sup);
		if (cnames)
			sp_names_run(cnames, pfd + 2 + nadmin + nunix, nnames);
		if (pend && pend == sup->pending_names) {
			sp_names_run(pend, pfd + 2 + nadmin + nunix + nnames, npend);
			if (sp_names_settled(pend))
				reload_finish(sup);
		}
		if (pfd[0].revents & POLLIN) {
			struct signalfd_siginfo si;
			while (read(sup->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
				on_signal(sup, &si);
		}
		reload_progress(sup);
		run_timers(sup);
	}
	/* Reap whatever is left, so no shard outlives its supervisor. */
	reap(sup);
	sp_info("stopped");
	if (opts->pidfile)
		sp_pidfile_remove(opts->pidfile, getpid());
	for (int k = 0; k < 2; k++)
		if (sup->gens[k].conf)
			sp_gen_free(&sup->gens[k]);
	sp_stats_history_free(&sup->retired);
	for (unsigned i = 0; i < sup->ngroups; i++)
		sp_lgroup_close(&sup->groups[i]);
	if (sup->steer)
		sp_steer_close(sup->steer);
	sp_admin_close(sup->admin);
	sp_admin_close(sup->admin_unix);
	drop_pending(sup);
	close(sup->sigfd);
	close(sup->notify_r);
	close(sup->notify_w);
	munmap(sup->stats, sizeof(sp_shard_stats_t) * 2 * SP_MAX_SLOTS);
	munmap(sup->server_down, 2 * SP_HEALTH_MAX_SERVERS);
	munmap(sup->server_fails, 2 * SP_HEALTH_MAX_SERVERS * sizeof(uint32_t));
	munmap(sup->server_ctl, 2 * SP_HEALTH_MAX_SERVERS * sizeof(sp_server_ctl_t));
	return 0;
}
