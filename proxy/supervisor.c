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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proxy/pidfile.h"
#include "proxy/sup_internal.h"
#include "proxy/version.h"
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

/* The reload is done: said once no shard of the old generation can take a
 * new connection, so whoever sees it (this line, READY=1, /stats
 * generation) finds every new connection served by the new one. */
static void reload_announce(sp_sup_t *sup)
{
	sp_gen_t *g = sup->handover_gen;
	sup->handover = SP_HANDOVER_NONE;
	sup->handover_gen = NULL;
	sup->serving_gen = g->id;
	sup->reloads_ok++;
	sup->last_reload_ok = true;
	sup->last_reload_error[0] = '\0';
	if (sup->old)
		sp_info("reload: generation %u ready, %u shards; generation %u draining", g->id,
			g->nslots, sup->old->id);
	else
		sp_info("reload: generation %u ready, %u shards", g->id, g->nslots);
	notify_ready(sup);
}

static void upgrade_announce(sp_sup_t *sup);
static void takeover_announce(sp_sup_t *sup, const char *late);

/* The shards a hand-over waits for that may still accept: on a reload the
 * old generation's, on an upgrade every one of ours (the new binary's are
 * another supervisor's). Their pids, for the warning, in pids. */
static unsigned handover_open(const sp_sup_t *sup, char *pids, size_t len)
{
	unsigned n = 0;
	pids[0] = '\0';
	for (int k = 0; k < 2; k++)
		if (sup->gens[k].conf && &sup->gens[k] != sup->handover_gen)
			n += sp_gen_accepting(&sup->gens[k], pids, len);
	return n;
}

/* Between a hand-over's start and its announcement: can none of the shards
 * that had the new connections accept one any more? Ours have closed their
 * listening sockets (SP_SHARD_EV_CLOSED) or are gone; a new binary's
 * predecessor has said "done" or closed the pair. One that does not within
 * handover_by (stopped, stuck) does not hold it up for ever: it is named
 * and the hand-over announced. */
static void handover_progress(sp_sup_t *sup)
{
	char pids[256], who[32];
	if (!sup->handover)
		return;
	bool takeover = sup->handover == SP_HANDOVER_TAKEOVER;
	unsigned open = takeover ? sup->handover_fd >= 0 : handover_open(sup, pids, sizeof(pids));
	if (open && sp_clock_ms() < sup->handover_by)
		return;
	if (takeover) {
		char late[96];
		snprintf(late, sizeof(late), "did not say its shards stopped accepting within %d ms",
			 TAKEOVER_TIMEOUT_MS);
		takeover_announce(sup, open ? late : NULL);
		return;
	}
	bool reload = sup->handover == SP_HANDOVER_RELOAD;
	if (reload)
		snprintf(who, sizeof(who), "generation %u", sup->old ? sup->old->id : 0);
	else
		snprintf(who, sizeof(who), "pid %d", (int)getpid());
	if (open)
		sp_warn("%s: %u shard(s) of %s did not say they stopped accepting within %d ms "
			"(pid %s); new connections may still reach them until they do",
			reload ? "reload" : "upgrade", open, who, HANDOVER_TIMEOUT_MS, pids);
	if (reload)
		reload_announce(sup);
	else
		upgrade_announce(sup);
}

/* Every shard of g is ready: it accepts; the old generation stops accepting
 * and drains. Both accept on the same sockets until each old shard has
 * taken in its drain order, so the reload is announced only then
 * (handover_progress). */
static void reload_commit(sp_sup_t *sup, sp_gen_t *g)
{
	sup->old = sup->cur;
	sup->cur = g;
	sp_gen_drain(sup->old);
	for (unsigned i = 0; i < g->nslots; i++)
		sp_steering_live(sup, i, true);
	for (unsigned i = g->nslots; i < sup->old->nslots; i++)
		sp_steering_live(sup, i, false);
	if (sup->admin && memcmp(&g->conf->admin.listen.ss, &sup->old->conf->admin.listen.ss,
				 sizeof(g->conf->admin.listen.ss)) != 0)
		sp_warn("admin.listen changed: the admin endpoint moves only on a restart or a binary upgrade");
	if (strcmp(g->conf->admin.socket, sup->old->conf->admin.socket) != 0)
		sp_warn("admin.socket changed: the socket moves only on a restart or a binary upgrade");
	sup->handover = SP_HANDOVER_RELOAD;
	sup->handover_gen = g;
	sup->handover_by = sp_clock_ms() + HANDOVER_TIMEOUT_MS;
	handover_progress(sup);
}

static void reload(sp_sup_t *sup);

/* The wait for a reload's new generation is part of the loop: each turn
 * looks at how its start stands, so signals, shard restarts, health checks
 * and the admin endpoint go on meanwhile. */
static void reload_progress(sp_sup_t *sup)
{
	sp_gen_t *g = sup->starting;
	char err[256];
	if (!g || g == sup->cur)
		return;
	int st = sp_gen_start_poll(sup, g, err, sizeof(err));
	if (st > 0) {
		reload_commit(sup, g);
	} else if (st < 0) {
		sp_gen_kill(sup, g);
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
	if (sp_gen_spawn(sup, g, err, sizeof(err)) < 0)
		reload_failed(sup, g, err);
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

/* ---- binary upgrade (SIGUSR2) ---------------------------------------------------- */

static void upgrade_begin(sp_sup_t *sup)
{
	char err[512];
	sp_steer_maps_t maps;

	if (sup->stopping) {
		sp_info("SIGUSR2 while stopping: no upgrade");
		return;
	}
	if (sup->upgrade.pid) {
		sp_info("SIGUSR2: the upgrade to pid %d is still under way", (int)sup->upgrade.pid);
		return;
	}
	if (sup->failed_upgrade.pid) {
		sp_info("SIGUSR2: the failed upgrade's pid %d has not exited yet; send it again once "
			"it has", (int)sup->failed_upgrade.pid);
		return;
	}
	if (sup->handover == SP_HANDOVER_TAKEOVER) {
		sp_info("SIGUSR2: the upgrade from pid %d is not complete yet; send it again once it "
			"is", (int)sup->upgraded_from);
		return;
	}
	if (sup->starting || sup->pending_conf || sup->handover) {
		sp_info("SIGUSR2 while a reload is under way: send it again once it is done");
		return;
	}
	if (!sup->opts->exe[0]) {
		sp_error("upgrade refused: the binary's path is unknown (%s); pid %d keeps serving",
			 sup->opts->exe_err, (int)getpid());
		return;
	}
	sp_upgrade_give_t give = {.groups = sup->groups, .ngroups = sup->ngroups};
	const char *no_path;
	unsigned long no_ino;
	sp_admin_handover(sup->admin, &give.admin_fd, &no_path, &no_ino);
	sp_admin_handover(sup->admin_unix, &give.unix_fd, &give.unix_path, &give.unix_ino);
	if (sup->steer) {
		sp_steer_maps(sup->steer, &maps);
		give.maps = &maps;
	}
	int ret = sp_upgrade_start(&sup->upgrade, sup->opts->exe, sup->opts->argv, &give,
				   sp_clock_ms(), err, sizeof(err));
	if (ret < 0) {
		sp_error("upgrade failed: %s; pid %d keeps serving", err, (int)getpid());
		return;
	}
	sp_info("upgrade: started %s as pid %d; serving until it is ready", sup->opts->exe,
		(int)sup->upgrade.pid);
	sp_sdnotifyf("STATUS=upgrading: new binary starting as pid %d", (int)sup->upgrade.pid);
}

/* The one line a failed upgrade logs: why, and how the new binary ended. */
static void log_failed_upgrade(pid_t pid, const char *why, int status)
{
	char st[96];
	sp_gen_describe_status(status, st, sizeof(st));
	sp_error("upgrade failed: %s; the new binary (pid %d) %s; pid %d keeps serving", why,
		 (int)pid, st, (int)getpid());
}

/* The new binary will not serve: take the sockets' steering back and go on
 * serving at once. Its process is never waited for here (that would hold
 * up signals, shard restarts and the admin endpoint): unless it is gone
 * already (exited, with status), it has SP_UPGRADE_EXIT_GRACE_MS to exit on
 * its own (kill_now: none), then SIGKILL, and reap() collects it and logs
 * why with how it ended. */
static void upgrade_failed(sp_sup_t *sup, const char *why, bool exited, int status, bool kill_now)
{
	pid_t pid = sup->upgrade.pid;
	if (exited) {
		sp_upgrade_end(&sup->upgrade);
		log_failed_upgrade(pid, why, status);
	} else {
		sp_upgrade_abandon(&sup->upgrade, &sup->failed_upgrade, why, kill_now, sp_clock_ms());
	}
	sp_steering_reclaim(sup);
	sp_sdnotifyf("STATUS=serving: generation %u, %u shards; last upgrade failed: %s",
		     sup->cur->id, sup->cur->nslots, why);
	if (sup->reload_pending && !sup->old)
		reload(sup);
}

/* Every generation drains; the shards still running when the longest
 * drain_timeout_ms (plus a grace) has passed are killed. */
static void drain_generations(sp_sup_t *sup)
{
	uint32_t drain = 0;
	for (int k = 0; k < 2; k++)
		if (sup->gens[k].conf) {
			sp_gen_signal(&sup->gens[k], SP_SIG_DRAIN);
			if (sup->gens[k].conf->limits.drain_timeout_ms > drain)
				drain = sup->gens[k].conf->limits.drain_timeout_ms;
		}
	sup->stop_kill_at = sp_clock_ms() + drain + KILL_GRACE_MS;
}

/* The upgrade is complete: none of our shards can take a new connection, so
 * whoever sees this (the line, systemd's MAINPID, the new one's line and
 * its /stats once told "done") finds every new connection served by the
 * new binary. It becomes the service's main process; this one drains its
 * shards' sessions and exits. */
static void upgrade_announce(sp_sup_t *sup)
{
	pid_t pid = sup->upgraded_to;
	sup->handover = SP_HANDOVER_NONE;
	sp_info("upgrade: pid %d serves; draining this supervisor's shards, then exiting", (int)pid);
	/* NotifyAccess=main: only the main pid may move MAINPID, so the old
	 * one does it, before it exits. */
	sp_sdnotifyf("MAINPID=%d\nREADY=1\nSTATUS=upgraded: pid %d serves", (int)pid, (int)pid);
	/* The new one holds its own copies of the admin sockets and serves
	 * them once told "done"; admin.socket's file is its to remove now. */
	sp_admin_close(sup->admin);
	sup->admin = NULL;
	sp_admin_disown(sup->admin_unix);
	sp_admin_close(sup->admin_unix);
	sup->admin_unix = NULL;
	sp_upgrade_say_done(sup->handover_fd);
	sup->handover_fd = -1;
}

/* The new supervisor is ready: its shards accept. Ours stop accepting and
 * drain, leaving the sockets to it; both accept on the same sockets until
 * each of ours has taken in its drain order, so the upgrade is announced
 * only then (handover_progress). */
static void upgrade_done(sp_sup_t *sup)
{
	pid_t pid = sup->upgrade.pid;
	sup->handover_fd = sp_upgrade_keep_pair(&sup->upgrade);
	sup->upgraded_to = pid;
	sp_info("upgrade: pid %d is ready; this supervisor's shards stop accepting", (int)pid);
	sup->stopping = true;
	sup->reload_pending = false;
	drain_generations(sup);
	/* Our copies only: the new supervisor and its shards hold theirs. */
	for (unsigned i = 0; i < sup->ngroups; i++)
		sp_lgroup_close(&sup->groups[i]);
	/* The maps are the new one's to publish to from now on. */
	if (sup->steer) {
		sp_steer_close(sup->steer);
		sup->steer = NULL;
	}
	sup->handover = SP_HANDOVER_UPGRADE;
	sup->handover_by = sp_clock_ms() + HANDOVER_TIMEOUT_MS;
	handover_progress(sup);
}

/* The new binary's side: the upgrade is complete once the old supervisor
 * says none of its shards accepts any more (or closes the pair, or is not
 * heard from within handover_by: late says so). From then on every new
 * connection is ours, and our admin endpoint answers. */
static void takeover_announce(sp_sup_t *sup, const char *late)
{
	sup->handover = SP_HANDOVER_NONE;
	if (sup->handover_fd >= 0)
		close(sup->handover_fd);
	sup->handover_fd = -1;
	if (late)
		sp_warn("upgrade: pid %d %s; new connections may still reach its shards until they do",
			(int)sup->upgraded_from, late);
	sp_info("upgrade: complete; pid %d serves every new connection", (int)getpid());
	if (sup->reload_pending && !sup->stopping)
		reload(sup);
}

static void takeover_read(sp_sup_t *sup)
{
	switch (sp_upgrade_read_done(sup->handover_fd)) {
	case SP_UPGRADE_DONE:
		takeover_announce(sup, NULL);
		break;
	case SP_UPGRADE_GONE:
		/* It exited (or crashed): its shards drain on their own
		 * (PR_SET_PDEATHSIG) and close their sockets as they do. */
		takeover_announce(sup, "closed the upgrade socket before it said its shards stopped accepting");
		break;
	case SP_UPGRADE_HANDING_OVER:
		break;
	}
}

static void upgrade_read(sp_sup_t *sup)
{
	char why[256];
	switch (sp_upgrade_read(&sup->upgrade, why, sizeof(why))) {
	case SP_UPGRADE_READY:
		upgrade_done(sup);
		break;
	case SP_UPGRADE_FAILED:
		upgrade_failed(sup, why, false, 0, false);
		break;
	case SP_UPGRADE_WAITING:
		break;
	}
}

/* ---- children --------------------------------------------------------------------- */

static void reap(sp_sup_t *sup)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		if (sup->failed_upgrade.pid && pid == sup->failed_upgrade.pid) {
			log_failed_upgrade(pid, sup->failed_upgrade.why, status);
			memset(&sup->failed_upgrade, 0, sizeof(sup->failed_upgrade));
			continue;
		}
		if (sup->upgrade.pid && pid == sup->upgrade.pid) {
			char why[256] = "it exited before it was ready";
			/* What it wrote before it went says more. */
			if (sp_upgrade_read(&sup->upgrade, why, sizeof(why)) == SP_UPGRADE_READY) {
				sp_upgrade_end(&sup->upgrade);
				sp_error("upgrade: pid %d said ready, then exited; pid %d keeps serving",
					 (int)pid, (int)getpid());
				sp_steering_reclaim(sup);
				continue;
			}
			upgrade_failed(sup, why, true, status, false);
			continue;
		}
		sp_gen_child_exited(sup, pid, status);
	}
	handover_progress(sup); /* an old shard gone accepts no more either */
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
	if (sup->upgrade.pid && t >= sup->upgrade.deadline) {
		char why[96];
		snprintf(why, sizeof(why), "not ready after %d ms", SP_UPGRADE_TIMEOUT_MS);
		upgrade_failed(sup, why, false, 0, true);
	}
	sp_upgrade_kill_due(&sup->failed_upgrade, t);
	handover_progress(sup);
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
	if (sup->upgrade.pid && sup->upgrade.deadline < next)
		next = sup->upgrade.deadline;
	if (sup->failed_upgrade.kill_at && sup->failed_upgrade.kill_at < next)
		next = sup->failed_upgrade.kill_at;
	if (sup->handover && sup->handover_by < next)
		next = sup->handover_by;
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
	if (sup->handover == SP_HANDOVER_RELOAD)
		reload_announce(sup); /* it serves; the old one drains with the rest */
	if (sup->upgrade.pid) {
		/* Stopping wins: the new binary will not take over. */
		sup->reload_pending = false;
		upgrade_failed(sup, "a stop was ordered", false, 0, true);
	}
	sup->stopping = true;
	drop_pending(sup); /* a reload still looking names up will not happen */
	sp_sdnotifyf("STOPPING=1\nSTATUS=draining after %s", strsignal(sig));
	sp_info("%s: draining (up to %u ms)", strsignal(sig), sup->cur->conf->limits.drain_timeout_ms);
	drain_generations(sup);
	/* Refuse, never strand: the shards close their copies of the listening
	 * sockets as they start draining, and these are the last ones. A new
	 * client is refused at once (and retries elsewhere) instead of
	 * completing a handshake into a backlog nobody accepts from. */
	for (unsigned i = 0; i < sup->ngroups; i++)
		if (sup->groups[i].nfds)
			sp_lgroup_close(&sup->groups[i]);
}

/* Every shard, and a failed new binary (it holds the listening sockets
 * too, and its end is to be logged), reaped. */
static bool all_gone(const sp_sup_t *sup)
{
	for (int k = 0; k < 2; k++)
		if (sup->gens[k].conf && sp_gen_alive(&sup->gens[k]))
			return false;
	return !sup->failed_upgrade.pid;
}

static void on_signal(sp_sup_t *sup, const struct signalfd_siginfo *si)
{
	switch (si->ssi_signo) {
	case SIGCHLD:
		reap(sup);
		break;
	case SIGHUP:
		if (sup->stopping)
			break;
		if (sup->upgrade.pid) {
			/* The new binary reads the file itself; if it fails, the
			 * reload is applied here afterwards. */
			sp_info("reload queued: an upgrade is under way");
			sup->reload_pending = true;
			break;
		}
		if (sup->handover == SP_HANDOVER_TAKEOVER) {
			/* One hand-over at a time: applied once the upgrade
			 * that started us is complete (takeover_announce). */
			sp_info("reload queued: the upgrade from pid %d is not complete yet",
				(int)sup->upgraded_from);
			sup->reload_pending = true;
			break;
		}
		notify_reloading(sup);
		reload(sup);
		break;
	case SIGUSR2:
		upgrade_begin(sup);
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
	sigaddset(&set, SIGUSR2);
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
	sup->sigfd = sup->notify_r = sup->notify_w = sup->handover_fd = -1;
	sup->next_gen = 1;
	sup->ncpus = allowed_cpus(sup->cpus, SP_MAX_SLOTS);
	sup->nofile = raise_nofile();
	sup->started = time(NULL);
	sp_log_setup("shardproxy", conf->log.level);

	if ((ret = setup_process(sup)) < 0) {
		fprintf(stderr, "shardproxy: start-up: %s\n", strerror(-ret));
		return 2;
	}

	/* Started by a binary upgrade: the previous supervisor's sockets, admin
	 * listeners and steering maps, adopted instead of bound anew. From here
	 * on a failure is also reported to it (fail:), which keeps serving. */
	sp_upgrade_inherited_t inh;
	int rc = 2;
	bool printed = false;
	if (sp_upgrade_inherit(sup->groups, &sup->ngroups, SP_MAX_GROUPS, &inh, err, sizeof(err)) <
	    0)
		goto fail;
	if (inh.report_fd >= 0)
		sp_info("upgrade: taking over from pid %d", (int)getppid());

	/* Host names first: nothing is served yet, so this wait blocks no one.
	 * A name that does not resolve stops the start (as nginx does) unless
	 * its upstream re-resolves (resolve_interval_ms), which then starts
	 * without it and keeps trying (HAProxy's init-addr none). */
	sp_names_t *names = NULL;
	sp_conf_errors_t errs = {0};
	sp_control_init(conf, next_ctl(sup));
	if (sp_names_new(&names, conf, next_ctl(sup), err, sizeof(err)) < 0) {
		sp_conf_free(conf);
		goto fail;
	}
	if (sp_names_resolve_now(names, &errs) > 0) {
		sp_conf_errors_print(&errs, stderr);
		snprintf(err, sizeof(err), "%s", errs.n ? errs.msgs[0] : "cannot resolve a server name");
		sp_conf_errors_free(&errs);
		sp_names_free(names);
		sp_conf_free(conf);
		rc = 1;
		printed = true;
		goto fail;
	}
	if (inh.have_maps)
		sup->steer_maps = &inh.maps;
	sp_gen_t *g;
	int gret = sp_gen_prepare(sup, conf, NULL, &g, err, sizeof(err));
	g->names = names;
	sup->steer_maps = NULL;
	if (inh.have_maps) /* loaded on (libbpf holds its own descriptors), or not needed */
		for (int i = -2; i < SP_STEER_MAX_GROUPS; i++) {
			int fd = i == -2   ? inh.maps.cfg_fd
				 : i == -1 ? inh.maps.load_fd
					   : inh.maps.socks_fd[i];
			if (fd >= 0)
				close(fd);
		}
	if (gret < 0)
		goto fail;
	/* The admin endpoints a new binary was handed: served on as they are
	 * when the file still names them, so a client never finds the address
	 * or the path without a listener, also if this start fails. */
	if (conf->admin.enabled && inh.admin_fd >= 0 &&
	    sp_upgrade_same_addr(inh.admin_fd, &conf->admin.listen)) {
		if (sp_admin_adopt(&sup->admin, inh.admin_fd, NULL, 0) < 0) {
			snprintf(err, sizeof(err), "admin.listen: out of memory");
			goto fail;
		}
		inh.admin_fd = -1;
	}
	if (inh.admin_fd >= 0) { /* not ours to serve: admin moved or is off */
		close(inh.admin_fd);
		inh.admin_fd = -1;
	}
	if (conf->admin.enabled && !sup->admin &&
	    sp_admin_open(&sup->admin, &conf->admin.listen, err, sizeof(err)) < 0)
		goto fail;
	if (conf->admin.socket[0] && sp_upgrade_unix_serves(&inh, conf->admin.socket)) {
		/* The file is ours from now on; on a failed start we exit
		 * without closing it, so it stays the old supervisor's. */
		if (sp_admin_adopt(&sup->admin_unix, inh.unix_fd, conf->admin.socket, inh.unix_ino) <
		    0) {
			snprintf(err, sizeof(err), "admin.socket: out of memory");
			goto fail;
		}
		inh.unix_fd = -1;
	}
	if (conf->admin.socket[0] && !sup->admin_unix &&
	    sp_admin_open_unix(&sup->admin_unix, conf->admin.socket, err, sizeof(err)) < 0)
		goto fail;
	sup->cur = g;
	if (sp_gen_start(sup, g, err, sizeof(err)) < 0)
		goto fail;
	sup->serving_gen = g->id;
	/* Sockets handed over for addresses this file no longer has. */
	sp_gen_close_retired(sup);
	if (opts->pidfile && sp_pidfile_write(opts->pidfile, getpid(), err, sizeof(err)) < 0) {
		sp_gen_kill(sup, g);
		goto fail;
	}
	sp_info("ready: generation %u, %u shards, io %s, relay %s, pid %d, version %s%s%s", g->id,
		g->nslots, sp_loop_backend_name(g->io), sp_relay_engine(conf), (int)getpid(),
		sp_version,
		conf->user.set ? ", shards run as user " : "", conf->user.set ? conf->user.name : "");
	if (inh.report_fd >= 0) {
		/* The old one moves MAINPID here once its shards have stopped
		 * accepting, and says "done": till then our admin endpoint
		 * waits (its answers would name us while it still serves). */
		sp_upgrade_report(&inh, true, NULL);
		sup->upgraded_from = getppid();
		sup->handover = SP_HANDOVER_TAKEOVER;
		sup->handover_fd = inh.report_fd;
		sup->handover_by = sp_clock_ms() + TAKEOVER_TIMEOUT_MS;
	} else {
		sp_sdnotifyf("READY=1\nMAINPID=%d\nSTATUS=serving: generation %u, %u shards",
			     (int)getpid(), g->id, g->nslots);
	}

	while (!(sup->stopping && all_gone(sup))) {
		enum { MAXFD = 3 + 2 * (1 + SP_ADMIN_MAX_CLIENTS) + 2 * 16 + 256 };
		struct pollfd pfd[MAXFD] = {
			{.fd = sup->sigfd, .events = POLLIN},
			{.fd = sup->notify_r, .events = POLLIN},
			/* The pair to another supervisor: a new binary starting,
			 * or, if we are one, the one we take over from. */
			{.fd = sup->upgrade.pid ? sup->upgrade.fd
			       : sup->handover == SP_HANDOVER_TAKEOVER ? sup->handover_fd
								     : -1,
			 .events = POLLIN},
		};
		/* Taking over: the old supervisor answers the admin endpoint
		 * (the same sockets) until it says "done". */
		sp_admin_t *admin = sup->handover == SP_HANDOVER_TAKEOVER ? NULL : sup->admin;
		sp_admin_t *admin_unix = sup->handover == SP_HANDOVER_TAKEOVER ? NULL : sup->admin_unix;
		int nfd = 3, nadmin = 0, nunix = 0, nhealth = 0, nnames = 0, npend = 0;
		int timeout = next_timeout(sup);
		if (admin) {
			nadmin = sp_admin_pollfds(admin, pfd + nfd, MAXFD - nfd);
			nfd += nadmin;
			if (nadmin > 1 && (timeout < 0 || timeout > 500))
				timeout = 500; /* admin clients have deadlines */
		}
		if (admin_unix) {
			nunix = sp_admin_pollfds(admin_unix, pfd + nfd, MAXFD - nfd);
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
		if (pfd[1].revents & POLLIN) {
			sp_gen_read_notify(sup);
			handover_progress(sup);
		}
		if (health)
			sp_health_run(health, pfd + nfd, nhealth);
		if (admin && admin == sup->admin)
			sp_admin_serve(admin, pfd + 3, nadmin, sp_render, sup);
		if (admin_unix && admin_unix == sup->admin_unix)
			sp_admin_serve(admin_unix, pfd + 3 + nadmin, nunix, sp_render, sup);
		if (cnames)
			sp_names_run(cnames, pfd + 3 + nadmin + nunix, nnames);
		if (pend && pend == sup->pending_names) {
			sp_names_run(pend, pfd + 3 + nadmin + nunix + nnames, npend);
			if (sp_names_settled(pend))
				reload_finish(sup);
		}
		if (pfd[2].fd >= 0 && pfd[2].revents) {
			if (sup->upgrade.pid && pfd[2].fd == sup->upgrade.fd)
				upgrade_read(sup);
			else if (sup->handover == SP_HANDOVER_TAKEOVER && pfd[2].fd == sup->handover_fd)
				takeover_read(sup);
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
	if (sup->upgraded_to)
		sp_info("stopped; pid %d serves", (int)sup->upgraded_to);
	else
		sp_info("stopped");
	/* After an upgrade the file names the new supervisor: only ours goes. */
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
	if (sup->handover_fd >= 0)
		close(sup->handover_fd);
	close(sup->sigfd);
	close(sup->notify_r);
	close(sup->notify_w);
	munmap(sup->stats, sizeof(sp_shard_stats_t) * 2 * SP_MAX_SLOTS);
	munmap(sup->server_down, 2 * SP_HEALTH_MAX_SERVERS);
	munmap(sup->server_fails, 2 * SP_HEALTH_MAX_SERVERS * sizeof(uint32_t));
	munmap(sup->server_ctl, 2 * SP_HEALTH_MAX_SERVERS * sizeof(sp_server_ctl_t));
	return 0;
fail:
	if (!printed)
		fprintf(stderr, "shardproxy: %s\n", err);
	sp_upgrade_report(&inh, false, err);
	return rc;
}
