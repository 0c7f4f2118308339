/* supervisor: process life of shardproxy. Hooks read in order:
 *   init (limits, sockets, steering, signals) -> start generation ->
 *   loop { signals: SIGCHLD restart, SIGHUP reload, SIGTERM drain } -> exit.
 * A generation is a conf plus the shards running it; at most two exist: the
 * current one and, during a reload, the old one draining. */
#include "proxy/supervisor.h"

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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bpf/steer.h"
#include "proxy/admin.h"
#include "proxy/health.h"
#include "proxy/listen.h"
#include "runtime/log.h"
#include "shard/shard.h"

#define READY_TIMEOUT_MS 10000
#define RESTART_BACKOFF_MIN_MS 100
#define RESTART_BACKOFF_MAX_MS 5000
#define STABLE_AFTER_MS 10000
#define KILL_GRACE_MS 2000

typedef enum { PROC_NONE = 0, PROC_STARTING, PROC_READY, PROC_DRAINING } sp_proc_state_t;

typedef struct {
	pid_t pid;
	sp_proc_state_t state;
	uint64_t started_ms;
	uint32_t crashes;    /* quick deaths in a row, for backoff */
	uint64_t restart_at; /* a restart is due at this time (0: none) */
	bool restarted;      /* announce "restarted" once ready */
} sp_proc_t;

typedef struct {
	sp_conf_t *conf;
	uint32_t id;
	uint32_t nslots;
	bool live;
	uint64_t kill_at; /* draining: SIGKILL what is left at this time */
	sp_health_t *health;
	int group_of[SP_SHARD_MAX_LISTENERS]; /* conf listener -> group index */
	sp_proc_t procs[SP_MAX_SLOTS];
} sp_gen_t;

typedef struct {
	const sp_supervisor_opts_t *opts;
	sp_lgroup_t groups[SP_MAX_GROUPS];
	unsigned ngroups;
	sp_gen_t gens[2];
	sp_gen_t *cur, *old;
	sp_gen_t *starting; /* being started by start_gen(), not yet cur */
	uint32_t next_gen;
	int cpus[SP_MAX_SLOTS];
	unsigned ncpus;
	uint64_t nofile;
	int sigfd, notify_r, notify_w;
	sp_steer_t *steer;
	sp_shard_stats_t *stats; /* [2][SP_MAX_SLOTS], shared with the shards */
	uint8_t *server_down;    /* [2][SP_HEALTH_MAX_SERVERS], shared */
	uint32_t *server_fails;  /* [2][SP_HEALTH_MAX_SERVERS], shared */
	bool stopping;
	uint64_t stop_kill_at;
	bool reload_pending;
	uint64_t reloads_ok, reloads_failed;
	time_t started, last_reload;
	bool last_reload_ok;
	char last_reload_error[512];
	sp_admin_t *admin;
} sp_sup_t;

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

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

/* Each shard is its own process with its own descriptor table, so the limit
 * applies per shard: its share of max_connections times the fds per session,
 * plus the listening sockets and the ring's own. */
static uint32_t shard_sessions(sp_sup_t *sup, const sp_conf_t *conf, unsigned nslots, bool warn)
{
	uint64_t share = (conf->limits.max_connections + nslots - 1) / nslots;
	unsigned per = conf->relay == SP_RELAY_SPLICE ? 4 : 2;
	uint64_t reserve = 64 + (uint64_t)conf->nlisteners * SP_SHARD_MAX_FDS_PER_LISTENER;
	uint64_t need = share * per + reserve;
	if (need <= sup->nofile)
		return (uint32_t)share;
	uint64_t fit = sup->nofile > reserve ? (sup->nofile - reserve) / per : 1;
	if (warn)
		sp_warn("limits.max_connections %u needs %llu descriptors per shard (%u per "
			"connection, %u shards) but RLIMIT_NOFILE is %llu: each shard will hold "
			"at most %llu connections (raise LimitNOFILE or ulimit -n)",
			conf->limits.max_connections, (unsigned long long)need, per, nslots,
			(unsigned long long)sup->nofile, (unsigned long long)fit);
	return (uint32_t)(fit ? fit : 1);
}

static void check_pipe_limits(const sp_conf_t *conf)
{
	unsigned long soft = 0;
	FILE *f;
	if (conf->relay != SP_RELAY_SPLICE)
		return;
	f = fopen("/proc/sys/fs/pipe-user-pages-soft", "r");
	if (!f)
		return;
	if (fscanf(f, "%lu", &soft) == 1 && soft)
		sp_info("relay splice: fs.pipe-user-pages-soft is %lu pages, about %lu full-size "
			"pipes for this user; a session holds a pipe only while bytes are in it",
			soft, soft / 16);
	fclose(f);
}

/* ---- sockets and steering ------------------------------------------------------ */

/* Map every listener of conf to a group with sockets for nslots slots.
 * Groups the conf no longer names are marked retiring (closed once no shard
 * can still be using them). */
static int bind_listeners(sp_sup_t *sup, sp_gen_t *g, char *err, size_t errlen)
{
	const sp_conf_t *conf = g->conf;
	bool used[SP_MAX_GROUPS] = {false};

	for (size_t l = 0; l < conf->nlisteners; l++) {
		const sp_listener_t *L = &conf->listeners[l];
		char where[192];
		snprintf(where, sizeof(where), "listeners[%zu].listen %s", l, L->listen.text);
		sp_lgroup_t *grp = sp_lgroup_find(sup->groups, sup->ngroups, &L->listen);
		if (!grp) {
			unsigned i;
			for (i = 0; i < sup->ngroups && sup->groups[i].nfds; i++)
				;
			if (i == SP_MAX_GROUPS) {
				snprintf(err, errlen, "%s: more than %d listen addresses", where,
					 SP_MAX_GROUPS);
				return -ENOSPC;
			}
			if (i == sup->ngroups)
				sup->ngroups++;
			grp = &sup->groups[i];
			memset(grp, 0, sizeof(*grp));
			grp->addr = L->listen;
		}
		int ret = sp_lgroup_grow(grp, g->nslots, where, err, errlen);
		if (ret < 0)
			return ret;
		g->group_of[l] = (int)(grp - sup->groups);
		used[grp - sup->groups] = true;
	}
	for (unsigned i = 0; i < sup->ngroups; i++) {
		sp_lgroup_t *grp = &sup->groups[i];
		if (!grp->nfds)
			continue;
		grp->retiring = !used[i];
		grp->in_use = used[i];
	}
	return 0;
}

static void close_retired(sp_sup_t *sup)
{
	for (unsigned i = 0; i < sup->ngroups; i++)
		if (sup->groups[i].retiring) {
			sp_info("listener %s closed", sup->groups[i].addr.text);
			sp_lgroup_close(&sup->groups[i]);
		}
}

static int steer_policy(sp_steering_t s)
{
	switch (s) {
	case SP_STEER_CPU:
		return SP_STEER_POL_CPU;
	case SP_STEER_LEAST_CONN:
		return SP_STEER_POL_LEAST_CONN;
	default:
		return SP_STEER_POL_HASH;
	}
}

static void steer_setup(sp_sup_t *sup, const sp_conf_t *conf)
{
	char why[256] = "";
	if (conf->steering == SP_STEER_NONE) {
		sp_info("steering: none (kernel SO_REUSEPORT hash, as configured)");
		return;
	}
	int ret = sp_steer_open(&sup->steer, steer_policy(conf->steering), SP_MAX_SLOTS, why,
				sizeof(why));
	if (ret < 0) {
		sup->steer = NULL;
		sp_warn("BPF steering unavailable (%s): falling back to plain SO_REUSEPORT", why);
		return;
	}
	sp_info("steering: %s (bpf%s)", sp_conf_steering_name(conf->steering),
		sp_steer_migrate_supported(sup->steer) ? ", select_or_migrate" : "");
}

/* Point the steering program at the current generation's sockets. */
static void steer_apply(sp_sup_t *sup, sp_gen_t *g)
{
	int cpu_of_slot[SP_MAX_SLOTS];
	if (!sup->steer)
		return;
	for (unsigned i = 0; i < g->nslots; i++)
		cpu_of_slot[i] = sup->cpus[i % sup->ncpus];
	if (sp_steer_set_slots(sup->steer, g->nslots, cpu_of_slot) < 0)
		sp_warn("steering: cannot set %u slots", g->nslots);
	for (size_t l = 0; l < g->conf->nlisteners; l++) {
		sp_lgroup_t *grp = &sup->groups[g->group_of[l]];
		int ret = sp_steer_attach_group(sup->steer, (unsigned)g->group_of[l], grp->fds,
						g->nslots);
		if (ret < 0)
			sp_warn("steering: listener %s: attach: %s (kernel hash applies)",
				grp->addr.text, strerror(-ret));
		else
			grp->attached = true;
	}
}

static void steer_live(sp_sup_t *sup, unsigned slot, bool live)
{
	if (sup->steer)
		sp_steer_set_live(sup->steer, slot, live);
}

/* ---- shards ------------------------------------------------------------------- */

static sp_shard_stats_t *stats_of(sp_sup_t *sup, const sp_gen_t *g, unsigned slot)
{
	return &sup->stats[(g->id % 2) * SP_MAX_SLOTS + slot];
}

static void __attribute__((noreturn)) shard_child(sp_sup_t *sup, sp_gen_t *g, unsigned slot)
{
	static sp_shard_args_t a; /* static: too big for a comfortable stack */
	const sp_conf_t *conf = g->conf;

	/* The supervisor's signals stay blocked; a shard answers SIGTERM from
	 * its supervisor only, so a terminal's Ctrl-C (sent to the whole
	 * process group) is the supervisor's to handle, once. */
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	close(sup->sigfd);
	close(sup->notify_r);
	sp_admin_close(sup->admin);
	sup->admin = NULL;

	memset(&a, 0, sizeof(a));
	a.conf = conf;
	a.slot = slot;
	a.nslots = g->nslots;
	a.gen = g->id;
	a.cpu = sup->cpus[slot % sup->ncpus];
	a.max_sessions = shard_sessions(sup, conf, g->nslots, false);
	a.notify_fd = sup->notify_w;
	a.stats = stats_of(sup, g, slot);
	memset(a.stats, 0, sizeof(*a.stats));
	a.stats->pid = (uint64_t)getpid();
	a.stats->gen = g->id;
	a.steer_load = sup->steer ? sp_steer_counters(sup->steer) : NULL;
	a.server_down = sup->server_down + (size_t)(g->id % 2) * SP_HEALTH_MAX_SERVERS;
	a.server_fails = sup->server_fails + (size_t)(g->id % 2) * SP_HEALTH_MAX_SERVERS;
	for (size_t l = 0; l < conf->nlisteners; l++) {
		sp_lgroup_t *grp = &sup->groups[g->group_of[l]];
		/* Its own slot, plus slots left over when the shard count shrank. */
		for (unsigned s = slot; s < grp->nfds; s += g->nslots)
			if (a.nlisten_fds[l] < SP_SHARD_MAX_FDS_PER_LISTENER)
				a.listen_fds[l][a.nlisten_fds[l]++] = grp->fds[s];
	}
	/* A listener removed by the reload that made this generation must be
	 * closed once the old generation has drained: no copy of it here. */
	for (unsigned i = 0; i < sup->ngroups; i++)
		if (sup->groups[i].retiring)
			for (unsigned s = 0; s < sup->groups[i].nfds; s++)
				close(sup->groups[i].fds[s]);
	exit(sp_shard_main(&a));
}

static int spawn(sp_sup_t *sup, sp_gen_t *g, unsigned slot)
{
	sp_proc_t *p = &g->procs[slot];
	pid_t pid = fork();
	if (pid < 0) {
		sp_error("shard %u: fork: %s", slot, strerror(errno));
		return -errno;
	}
	if (pid == 0)
		shard_child(sup, g, slot);
	p->pid = pid;
	p->state = PROC_STARTING;
	p->started_ms = now_ms();
	p->restart_at = 0;
	return 0;
}

static sp_gen_t *gen_by_id(sp_sup_t *sup, uint32_t id)
{
	if (sup->cur && sup->cur->id == id)
		return sup->cur;
	if (sup->old && sup->old->id == id)
		return sup->old;
	if (sup->starting && sup->starting->id == id)
		return sup->starting;
	return NULL;
}

/* A shard reported in on the notify pipe. */
static void on_shard_msg(sp_sup_t *sup, const sp_shard_msg_t *m)
{
	sp_gen_t *g = gen_by_id(sup, m->gen);
	if (!g || m->slot >= g->nslots)
		return;
	sp_proc_t *p = &g->procs[m->slot];
	if (m->event == SP_SHARD_EV_READY && p->state == PROC_STARTING) {
		p->state = PROC_READY;
		if (g == sup->cur)
			steer_live(sup, m->slot, true);
		if (p->restarted) {
			sp_info("shard %u restarted (pid %d)", m->slot, (int)p->pid);
			p->restarted = false;
		}
	} else if (m->event == SP_SHARD_EV_FAILED) {
		sp_error("shard %u (generation %u) failed to start: %s", m->slot, m->gen,
			 strerror(-m->err));
	}
}

static void read_notify(sp_sup_t *sup)
{
	sp_shard_msg_t m;
	while (read(sup->notify_r, &m, sizeof(m)) == (ssize_t)sizeof(m))
		on_shard_msg(sup, &m);
}

static unsigned count_state(const sp_gen_t *g, sp_proc_state_t st)
{
	unsigned n = 0;
	for (unsigned i = 0; i < g->nslots; i++)
		n += g->procs[i].state == st;
	return n;
}

static unsigned count_alive(const sp_gen_t *g)
{
	unsigned n = 0;
	for (unsigned i = 0; i < g->nslots; i++)
		n += g->procs[i].state != PROC_NONE;
	return n;
}

static void signal_gen(sp_gen_t *g, int sig)
{
	for (unsigned i = 0; i < g->nslots; i++)
		if (g->procs[i].state != PROC_NONE && g->procs[i].pid > 0)
			kill(g->procs[i].pid, sig);
}

static void reap_now(sp_gen_t *g)
{
	for (unsigned i = 0; i < g->nslots; i++)
		if (g->procs[i].state != PROC_NONE) {
			waitpid(g->procs[i].pid, NULL, 0);
			g->procs[i].state = PROC_NONE;
		}
}

/* Fork every shard of g and wait until all have armed their accepts. */
static int start_gen(sp_sup_t *sup, sp_gen_t *g)
{
	size_t hoff = (size_t)(g->id % 2) * SP_HEALTH_MAX_SERVERS;
	g->health = sp_health_new(g->conf, sup->server_down + hoff, sup->server_fails + hoff);
	if (!g->health) {
		sp_error("generation %u: health checks: out of memory", g->id);
		return -1;
	}
	sup->starting = g;
	for (unsigned i = 0; i < g->nslots; i++)
		if (spawn(sup, g, i) < 0)
			goto fail;
	uint64_t deadline = now_ms() + READY_TIMEOUT_MS;
	while (count_state(g, PROC_READY) < g->nslots) {
		struct pollfd pfd = {.fd = sup->notify_r, .events = POLLIN};
		uint64_t t = now_ms();
		if (t >= deadline) {
			sp_error("generation %u: shards not ready after %d ms", g->id,
				 READY_TIMEOUT_MS);
			goto fail;
		}
		poll(&pfd, 1, (int)(deadline - t));
		sp_shard_msg_t m;
		while (read(sup->notify_r, &m, sizeof(m)) == (ssize_t)sizeof(m)) {
			on_shard_msg(sup, &m);
			if (m.gen == g->id && m.event == SP_SHARD_EV_FAILED)
				goto fail;
		}
		/* A shard that died before reporting never will. */
		for (unsigned i = 0; i < g->nslots; i++) {
			int status;
			if (g->procs[i].state == PROC_STARTING &&
			    waitpid(g->procs[i].pid, &status, WNOHANG) == g->procs[i].pid) {
				g->procs[i].state = PROC_NONE;
				sp_error("shard %u (generation %u) exited during start-up", i, g->id);
				goto fail;
			}
		}
	}
	sup->starting = NULL;
	return 0;
fail:
	sup->starting = NULL;
	signal_gen(g, SIGKILL);
	reap_now(g);
	sp_health_free(g->health);
	g->health = NULL;
	return -1;
}

/* ---- reload -------------------------------------------------------------------- */

static void gen_free(sp_gen_t *g)
{
	sp_health_free(g->health);
	sp_conf_free(g->conf);
	memset(g, 0, sizeof(*g));
}

static sp_gen_t *free_gen_slot(sp_sup_t *sup)
{
	return sup->cur == &sup->gens[0] ? &sup->gens[1] : &sup->gens[0];
}

static void begin_drain(sp_gen_t *g)
{
	for (unsigned i = 0; i < g->nslots; i++) {
		sp_proc_t *p = &g->procs[i];
		if (p->state == PROC_NONE) {
			p->restart_at = 0; /* a dead shard of an old generation stays dead */
			continue;
		}
		p->state = PROC_DRAINING;
		kill(p->pid, SIGTERM);
	}
	g->kill_at = now_ms() + g->conf->limits.drain_timeout_ms + KILL_GRACE_MS;
	sp_health_free(g->health); /* its servers are the new generation's to check */
	g->health = NULL;
}

static void reload(sp_sup_t *sup)
{
	sp_conf_errors_t errs = {0};
	char err[512];

	if (sup->old) {
		/* At most two generations: the newest file is applied as soon as
		 * the draining one is gone; repeated SIGHUPs meanwhile coalesce. */
		if (!sup->reload_pending)
			sp_info("reload queued: generation %u is still draining", sup->old->id);
		sup->reload_pending = true;
		return;
	}
	sup->reload_pending = false;
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
		return;
	}
	sp_gen_t *g = free_gen_slot(sup);
	memset(g, 0, sizeof(*g));
	g->conf = conf;
	g->id = sup->next_gen++;
	g->nslots = sp_supervisor_workers(conf, sup->opts->workers_override);
	if (g->nslots > SP_MAX_SLOTS)
		g->nslots = SP_MAX_SLOTS;
	if (conf->nlisteners > SP_SHARD_MAX_LISTENERS) {
		snprintf(err, sizeof(err), "more than %d listeners", SP_SHARD_MAX_LISTENERS);
		goto fail;
	}
	if (bind_listeners(sup, g, err, sizeof(err)) < 0)
		goto fail;
	shard_sessions(sup, conf, g->nslots, true);
	check_pipe_limits(conf);
	steer_apply(sup, g);
	if (start_gen(sup, g) < 0) {
		snprintf(err, sizeof(err), "generation %u did not start", g->id);
		goto fail;
	}
	/* The new generation accepts; the old one stops and drains. */
	sup->old = sup->cur;
	sup->cur = g;
	begin_drain(sup->old);
	for (unsigned i = 0; i < g->nslots; i++)
		steer_live(sup, i, true);
	for (unsigned i = g->nslots; i < sup->old->nslots; i++)
		steer_live(sup, i, false);
	sup->reloads_ok++;
	sup->last_reload_ok = true;
	sup->last_reload_error[0] = '\0';
	if (sup->admin && memcmp(&g->conf->admin.listen.ss, &sup->old->conf->admin.listen.ss,
				 sizeof(g->conf->admin.listen.ss)) != 0)
		sp_warn("admin.listen changed: the admin endpoint moves only on a restart");
	sp_info("reload: generation %u ready, %u shards; generation %u draining", g->id, g->nslots,
		sup->old->id);
	return;
fail:
	sup->reloads_failed++;
	sup->last_reload_ok = false;
	snprintf(sup->last_reload_error, sizeof(sup->last_reload_error), "%s", err);
	sp_error("reload failed: %s; generation %u keeps serving", err, sup->cur->id);
	/* Give the current conf its listener marks back. */
	for (unsigned i = 0; i < sup->ngroups; i++)
		sup->groups[i].retiring = false;
	gen_free(g);
	if (sup->cur)
		steer_apply(sup, sup->cur);
}

/* ---- children --------------------------------------------------------------------- */

/* A shard that exited (crash, SIGKILL, drain timeout) took its sessions
 * with it: take them out of least_conn's shared load counter too, or its
 * slot would look busy for ever. */
static void forget_sessions(sp_sup_t *sup, const sp_gen_t *g, unsigned slot)
{
	sp_shard_stats_t *st = stats_of(sup, g, slot);
	uint64_t gone = __atomic_exchange_n(&st->active, 0, __ATOMIC_RELAXED);
	if (!sup->steer || !gone)
		return;
	uint32_t *load = &sp_steer_counters(sup->steer)[slot];
	uint32_t cur = __atomic_load_n(load, __ATOMIC_RELAXED);
	uint32_t next;
	do
		next = cur > gone ? cur - (uint32_t)gone : 0;
	while (!__atomic_compare_exchange_n(load, &cur, next, false, __ATOMIC_RELAXED,
					    __ATOMIC_RELAXED));
}

static void describe_status(int status, char *buf, size_t len)
{
	if (WIFSIGNALED(status))
		snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(status),
			 strsignal(WTERMSIG(status)));
	else
		snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
}

static void on_child_exit(sp_sup_t *sup, pid_t pid, int status)
{
	for (int k = 0; k < 2; k++) {
		sp_gen_t *g = k == 0 ? sup->cur : sup->old;
		if (!g)
			continue;
		for (unsigned i = 0; i < g->nslots; i++) {
			sp_proc_t *p = &g->procs[i];
			if (p->pid != pid || p->state == PROC_NONE)
				continue;
			bool expected = p->state == PROC_DRAINING || sup->stopping;
			p->state = PROC_NONE;
			forget_sessions(sup, g, i);
			if (expected)
				return;
			char how[96];
			describe_status(status, how, sizeof(how));
			steer_live(sup, i, false);
			uint64_t t = now_ms();
			if (t - p->started_ms > STABLE_AFTER_MS)
				p->crashes = 0;
			uint64_t delay = 0;
			if (p->crashes > 0) {
				delay = (uint64_t)RESTART_BACKOFF_MIN_MS << (p->crashes - 1);
				if (delay > RESTART_BACKOFF_MAX_MS)
					delay = RESTART_BACKOFF_MAX_MS;
			}
			p->crashes++;
			sp_warn("shard %u (pid %d, generation %u) %s; restarting in %llu ms", i,
				(int)pid, g->id, how, (unsigned long long)delay);
			p->restart_at = t + delay;
			return;
		}
	}
}

static void reap(sp_sup_t *sup)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
		on_child_exit(sup, pid, status);
	if (sup->old && count_alive(sup->old) == 0) {
		sp_info("generation %u drained", sup->old->id);
		gen_free(sup->old);
		sup->old = NULL;
		close_retired(sup);
		if (sup->reload_pending && !sup->stopping)
			reload(sup);
	}
}

static void run_timers(sp_sup_t *sup)
{
	uint64_t t = now_ms();
	sp_gen_t *g = sup->cur;
	for (unsigned i = 0; g && !sup->stopping && i < g->nslots; i++) {
		sp_proc_t *p = &g->procs[i];
		if (p->state == PROC_NONE && p->restart_at && p->restart_at <= t) {
			p->restarted = true;
			if (spawn(sup, g, i) < 0)
				p->restart_at = t + RESTART_BACKOFF_MAX_MS;
		}
	}
	if (sup->old && sup->old->kill_at && t >= sup->old->kill_at) {
		sp_warn("generation %u still has shards after drain_timeout_ms; killing them",
			sup->old->id);
		signal_gen(sup->old, SIGKILL);
		sup->old->kill_at = 0;
	}
	if (sup->stopping && sup->stop_kill_at && t >= sup->stop_kill_at) {
		for (int k = 0; k < 2; k++)
			if (sup->gens[k].conf)
				signal_gen(&sup->gens[k], SIGKILL);
		sup->stop_kill_at = 0;
	}
}

static int next_timeout(const sp_sup_t *sup)
{
	uint64_t next = UINT64_MAX, t = now_ms();
	if (sup->cur)
		for (unsigned i = 0; i < sup->cur->nslots; i++)
			if (sup->cur->procs[i].state == PROC_NONE && sup->cur->procs[i].restart_at &&
			    sup->cur->procs[i].restart_at < next)
				next = sup->cur->procs[i].restart_at;
	if (sup->old && sup->old->kill_at && sup->old->kill_at < next)
		next = sup->old->kill_at;
	if (sup->stop_kill_at && sup->stop_kill_at < next)
		next = sup->stop_kill_at;
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
				signal_gen(&sup->gens[k], SIGKILL);
		return;
	}
	sup->stopping = true;
	sp_info("%s: draining (up to %u ms)", strsignal(sig), sup->cur->conf->limits.drain_timeout_ms);
	uint32_t drain = sup->cur->conf->limits.drain_timeout_ms;
	for (int k = 0; k < 2; k++)
		if (sup->gens[k].conf) {
			signal_gen(&sup->gens[k], SIGTERM);
			if (sup->gens[k].conf->limits.drain_timeout_ms > drain)
				drain = sup->gens[k].conf->limits.drain_timeout_ms;
		}
	sup->stop_kill_at = now_ms() + drain + KILL_GRACE_MS;
}

static bool all_gone(const sp_sup_t *sup)
{
	for (int k = 0; k < 2; k++)
		if (sup->gens[k].conf && count_alive(&sup->gens[k]))
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
		if (!sup->stopping)
			reload(sup);
		break;
	case SIGTERM:
	case SIGINT:
		begin_stop(sup, (int)si->ssi_signo);
		break;
	}
}

/* ---- admin: /stats, /metrics, /healthz ------------------------------------------ */

static const char *const proc_state_names[] = {"down", "starting", "ready", "draining"};

typedef struct {
	const char *name;
	size_t off;
} counter_t;

#define COUNTER(f) {#f, offsetof(sp_shard_stats_t, f)}
static const counter_t counters[] = {
	COUNTER(accepted), COUNTER(active),	    COUNTER(refused),	COUNTER(no_route),
	COUNTER(connect_failed), COUNTER(bytes_in), COUNTER(bytes_out),
};
#define NCOUNTERS (sizeof(counters) / sizeof(counters[0]))

static uint64_t counter(const sp_shard_stats_t *st, size_t i)
{
	return __atomic_load_n((const uint64_t *)((const char *)st + counters[i].off),
			       __ATOMIC_RELAXED);
}

static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fprintf(f, "\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			fprintf(f, "\\u%04x", *s);
		else
			fputc(*s, f);
	}
	fputc('"', f);
}

static void render_stats(sp_sup_t *sup, FILE *f)
{
	uint64_t total[NCOUNTERS] = {0};
	bool first = true;
	fprintf(f, "{\"generation\":%u,\"uptime_s\":%lld,\"shards\":[", sup->cur->id,
		(long long)(time(NULL) - sup->started));
	for (int k = 0; k < 2; k++) {
		sp_gen_t *g = k == 0 ? sup->cur : sup->old;
		for (unsigned i = 0; g && i < g->nslots; i++) {
			const sp_shard_stats_t *st = stats_of(sup, g, i);
			fprintf(f, "%s{\"slot\":%u,\"generation\":%u,\"pid\":%d,\"state\":\"%s\"",
				first ? "" : ",", i, g->id, (int)g->procs[i].pid,
				proc_state_names[g->procs[i].state]);
			first = false;
			for (size_t c = 0; c < NCOUNTERS; c++) {
				fprintf(f, ",\"%s\":%llu", counters[c].name,
					(unsigned long long)counter(st, c));
				total[c] += counter(st, c);
			}
			fputc('}', f);
		}
	}
	fprintf(f, "],\"totals\":{");
	for (size_t c = 0; c < NCOUNTERS; c++)
		fprintf(f, "%s\"%s\":%llu", c ? "," : "", counters[c].name,
			(unsigned long long)total[c]);
	fprintf(f, "},\"reloads\":{\"ok\":%llu,\"failed\":%llu,\"last\":",
		(unsigned long long)sup->reloads_ok, (unsigned long long)sup->reloads_failed);
	if (!sup->last_reload) {
		fprintf(f, "null");
	} else {
		fprintf(f, "{\"time\":%lld,\"result\":\"%s\",\"error\":", (long long)sup->last_reload,
			sup->last_reload_ok ? "ok" : "failed");
		json_string(f, sup->last_reload_error);
		fputc('}', f);
	}
	fprintf(f, "},\"upstreams\":[");
	const sp_conf_t *conf = sup->cur->conf;
	for (size_t u = 0; u < conf->nupstreams; u++) {
		fprintf(f, "%s{\"name\":", u ? "," : "");
		json_string(f, conf->upstreams[u].name);
		fprintf(f, ",\"servers\":[");
		for (size_t k = 0; k < conf->upstreams[u].nservers; k++) {
			const sp_server_t *srv = &conf->upstreams[u].servers[k];
			fprintf(f, "%s{\"address\":", k ? "," : "");
			json_string(f, srv->addr.text);
			uint32_t hi = sp_health_index(conf, u) + (uint32_t)k;
			size_t hoff = (size_t)(sup->cur->id % 2) * SP_HEALTH_MAX_SERVERS;
			fprintf(f, ",\"weight\":%u,\"backup\":%s,\"state\":\"%s\",\"failures\":%u}",
				srv->weight, srv->backup ? "true" : "false",
				!conf->upstreams[u].health_check.enabled ? "unchecked"
				: sup->server_down[hoff + hi]		   ? "down"
									   : "up",
				sup->server_fails[hoff + hi]);
		}
		fprintf(f, "]}");
	}
	fprintf(f, "]}\n");
}

static void render_metrics(sp_sup_t *sup, FILE *f)
{
	for (size_t c = 0; c < NCOUNTERS; c++) {
		bool gauge = strcmp(counters[c].name, "active") == 0;
		fprintf(f, "# TYPE shardproxy_%s%s %s\n", counters[c].name, gauge ? "" : "_total",
			gauge ? "gauge" : "counter");
		for (int k = 0; k < 2; k++) {
			sp_gen_t *g = k == 0 ? sup->cur : sup->old;
			for (unsigned i = 0; g && i < g->nslots; i++)
				fprintf(f, "shardproxy_%s%s{shard=\"%u\",generation=\"%u\"} %llu\n",
					counters[c].name, gauge ? "" : "_total", i, g->id,
					(unsigned long long)counter(stats_of(sup, g, i), c));
		}
	}
	fprintf(f, "# TYPE shardproxy_generation gauge\nshardproxy_generation %u\n", sup->cur->id);
	fprintf(f, "# TYPE shardproxy_reloads_total counter\n"
		   "shardproxy_reloads_total{result=\"ok\"} %llu\n"
		   "shardproxy_reloads_total{result=\"failed\"} %llu\n",
		(unsigned long long)sup->reloads_ok, (unsigned long long)sup->reloads_failed);
	fprintf(f, "# TYPE shardproxy_shards_ready gauge\nshardproxy_shards_ready %u\n",
		count_state(sup->cur, PROC_READY));
}

static int render(void *ctx, const char *path, char **body, size_t *len, const char **ctype)
{
	sp_sup_t *sup = ctx;
	FILE *f = open_memstream(body, len);
	int status = 200;
	if (!f)
		return 500;
	if (strcmp(path, "/stats") == 0) {
		*ctype = "application/json";
		render_stats(sup, f);
	} else if (strcmp(path, "/metrics") == 0) {
		*ctype = "text/plain; version=0.0.4";
		render_metrics(sup, f);
	} else if (strcmp(path, "/healthz") == 0) {
		unsigned ready = count_state(sup->cur, PROC_READY);
		status = ready ? 200 : 503;
		fprintf(f, "%s: %u of %u shards ready\n", ready ? "ok" : "unavailable", ready,
			sup->cur->nslots);
	} else {
		status = 404;
		fprintf(f, "not found; try /stats, /metrics or /healthz\n");
	}
	fclose(f);
	return status;
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
	if (sup->server_down == MAP_FAILED || sup->server_fails == MAP_FAILED)
		return -ENOMEM;
	return 0;
}

static void write_pidfile(const char *path)
{
	FILE *f = fopen(path, "w");
	if (!f) {
		sp_warn("--pidfile %s: %s", path, strerror(errno));
		return;
	}
	fprintf(f, "%d\n", (int)getpid());
	fclose(f);
}

int sp_supervisor_run(const sp_supervisor_opts_t *opts, sp_conf_t *conf)
{
	static sp_sup_t sup_storage;
	sp_sup_t *sup = &sup_storage;
	char err[512];
	int ret;

	memset(sup, 0, sizeof(*sup));
	sup->opts = opts;
	sup->sigfd = sup->notify_r = sup->notify_w = -1;
	sup->next_gen = 1;
	sup->ncpus = allowed_cpus(sup->cpus, SP_MAX_SLOTS);
	sup->nofile = raise_nofile();
	sup->started = time(NULL);
	sp_log_setup("shardproxy", (int)conf->log.level);

	if ((ret = setup_process(sup)) < 0) {
		fprintf(stderr, "shardproxy: start-up: %s\n", strerror(-ret));
		return 2;
	}

	sp_gen_t *g = &sup->gens[0];
	g->conf = conf;
	g->id = sup->next_gen++;
	g->nslots = sp_supervisor_workers(conf, opts->workers_override);
	if (g->nslots > SP_MAX_SLOTS)
		g->nslots = SP_MAX_SLOTS;
	if (conf->nlisteners > SP_SHARD_MAX_LISTENERS) {
		fprintf(stderr, "shardproxy: listeners: more than %d listeners\n",
			SP_SHARD_MAX_LISTENERS);
		return 2;
	}
	if (bind_listeners(sup, g, err, sizeof(err)) < 0) {
		fprintf(stderr, "shardproxy: %s\n", err);
		return 2;
	}
	if (conf->admin.enabled &&
	    sp_admin_open(&sup->admin, &conf->admin.listen, err, sizeof(err)) < 0) {
		fprintf(stderr, "shardproxy: %s\n", err);
		return 2;
	}
	shard_sessions(sup, conf, g->nslots, true);
	check_pipe_limits(conf);
	steer_setup(sup, conf);
	steer_apply(sup, g);
	sup->cur = g;
	if (start_gen(sup, g) < 0) {
		fprintf(stderr, "shardproxy: start-up failed: shards did not start (see above)\n");
		return 2;
	}
	if (opts->pidfile)
		write_pidfile(opts->pidfile);
	sp_info("ready: generation %u, %u shards, relay %s, pid %d", g->id, g->nslots,
		conf->relay == SP_RELAY_SPLICE ? "splice" : "copy", (int)getpid());

	while (!(sup->stopping && all_gone(sup))) {
		enum { MAXFD = 2 + 1 + SP_ADMIN_MAX_CLIENTS + 256 };
		struct pollfd pfd[MAXFD] = {
			{.fd = sup->sigfd, .events = POLLIN},
			{.fd = sup->notify_r, .events = POLLIN},
		};
		int nfd = 2, nadmin = 0, nhealth = 0;
		int timeout = next_timeout(sup);
		if (sup->admin) {
			nadmin = sp_admin_pollfds(sup->admin, pfd + nfd, MAXFD - nfd);
			nfd += nadmin;
			if (nadmin > 1 && (timeout < 0 || timeout > 500))
				timeout = 500; /* admin clients have deadlines */
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
			read_notify(sup);
		if (health)
			sp_health_run(health, pfd + nfd, nhealth);
		if (sup->admin)
			sp_admin_serve(sup->admin, pfd + 2, nadmin, render, sup);
		if (pfd[0].revents & POLLIN) {
			struct signalfd_siginfo si;
			while (read(sup->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
				on_signal(sup, &si);
		}
		run_timers(sup);
	}
	/* Reap whatever is left, so no shard outlives its supervisor. */
	reap(sup);
	sp_info("stopped");
	if (opts->pidfile)
		unlink(opts->pidfile);
	for (int k = 0; k < 2; k++)
		if (sup->gens[k].conf)
			gen_free(&sup->gens[k]);
	for (unsigned i = 0; i < sup->ngroups; i++)
		sp_lgroup_close(&sup->groups[i]);
	if (sup->steer)
		sp_steer_close(sup->steer);
	sp_admin_close(sup->admin);
	close(sup->sigfd);
	close(sup->notify_r);
	close(sup->notify_w);
	munmap(sup->stats, sizeof(sp_shard_stats_t) * 2 * SP_MAX_SLOTS);
	munmap(sup->server_down, 2 * SP_HEALTH_MAX_SERVERS);
	munmap(sup->server_fails, 2 * SP_HEALTH_MAX_SERVERS * sizeof(uint32_t));
	return 0;
}
