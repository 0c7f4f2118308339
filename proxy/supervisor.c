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
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bpf/steer.h"
#include "proxy/admin.h"
#include "proxy/health.h"
#include "proxy/listen.h"
#include "runtime/log.h"
#include "runtime/sdnotify.h"
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
	int access_fd; /* log.access_log's file, opened for this generation; -1: stderr */
	int group_of[SP_SHARD_MAX_LISTENERS]; /* conf listener -> group index */
	sp_proc_t procs[SP_MAX_SLOTS];
} sp_gen_t;

/* A shard slot's summed counters (the gauge "active" is not one). */
typedef struct {
	uint64_t accepted, refused, no_route, connect_failed, bytes_in, bytes_out, log_dropped;
	uint64_t closed[SP_STATS_NEND];
} slot_totals_t;

/* Counters of shards that are gone, so the totals never go backwards: a
 * dead shard's slot is folded in here (by slot index, and by listener and
 * server name, which outlive the index a reload may change) and zeroed. */
typedef struct {
	char name[SP_CONF_NAME_MAX];
	sp_listener_stats_t st;
} lrow_t;

typedef struct {
	char upstream[SP_CONF_NAME_MAX];
	char server[sizeof(((sp_addr_t *)0)->text)];
	sp_server_stats_t st;
} srow_t;

typedef struct {
	lrow_t *l;
	size_t nl, capl;
	srow_t *s;
	size_t ns, caps;
} stat_table_t;

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
	bool reloading; /* RELOADING=1 was sent; READY=1 is due when it is done */
	uint64_t reloads_ok, reloads_failed, restarts;
	slot_totals_t retired_slot[SP_MAX_SLOTS];
	stat_table_t retired;
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
	unsigned per = sp_shard_fds_per_session(conf);
	uint64_t reserve = sp_shard_fds_reserve(conf);
	uint64_t need = share * per + reserve;
	char why[160] = "";
	if (need <= sup->nofile)
		return (uint32_t)share;
	if (warn) {
		/* Above the hard limit: root (or CAP_SYS_RESOURCE) may raise it, up
		 * to fs.nr_open; shards forked from now on inherit it. */
		struct rlimit rl = {.rlim_cur = need, .rlim_max = need};
		struct rlimit old;
		getrlimit(RLIMIT_NOFILE, &old);
		if (old.rlim_max > need)
			rl.rlim_max = old.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) == 0) {
			sp_info("limits.max_connections %u needs %llu descriptors per shard (%u per "
				"connection, %u shards): RLIMIT_NOFILE raised from %llu to %llu",
				conf->limits.max_connections, (unsigned long long)need, per, nslots,
				(unsigned long long)sup->nofile, (unsigned long long)need);
			sup->nofile = need;
			return (uint32_t)share;
		}
		snprintf(why, sizeof(why), "; raising it failed: %s%s", strerror(errno),
			 errno == EPERM ? " (no CAP_SYS_RESOURCE)"
			 : errno == EINVAL ? " (above fs.nr_open?)" : "");
	}
	uint64_t fit = sup->nofile > reserve ? (sup->nofile - reserve) / per : 1;
	if (warn)
		sp_warn("limits.max_connections %u needs %llu descriptors per shard (%u per "
			"connection, %u shards) but RLIMIT_NOFILE is %llu%s: each shard will hold "
			"at most %llu connections (raise LimitNOFILE or ulimit -n)",
			conf->limits.max_connections, (unsigned long long)need, per, nslots,
			(unsigned long long)sup->nofile, why, (unsigned long long)fit);
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
	long page = sysconf(_SC_PAGESIZE);
	unsigned long per_pipe = SP_PIPE_SIZE / (unsigned long)(page > 0 ? page : 4096);
	if (fscanf(f, "%lu", &soft) == 1 && soft)
		sp_info("relay splice: fs.pipe-user-pages-soft is %lu pages, about %lu full-size "
			"pipes for this user; a session holds a pipe only while bytes are in it",
			soft, soft / per_pipe);
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

/* A reload that changes `steering`: switch the loaded program's policy, or
 * load it now if the old file had none. "none" cannot unload a program
 * that reuseport groups hold; it steers by hash over the live shards
 * until a restart. */
static void steer_reconfigure(sp_sup_t *sup, const sp_conf_t *conf, const sp_conf_t *prev)
{
	if (conf->steering == prev->steering)
		return;
	if (!sup->steer) {
		if (conf->steering != SP_STEER_NONE)
			steer_setup(sup, conf);
		return;
	}
	if (conf->steering == SP_STEER_NONE) {
		sp_steer_set_policy(sup->steer, SP_STEER_POL_HASH);
		sp_info("steering: none takes effect on a restart; hash over live shards until then");
		return;
	}
	if (sp_steer_set_policy(sup->steer, steer_policy(conf->steering)) < 0)
		sp_warn("steering: cannot switch to %s", sp_conf_steering_name(conf->steering));
	else
		sp_info("steering: %s", sp_conf_steering_name(conf->steering));
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

/* Shared arrays come in two halves, one per entry of sup->gens (not per
 * generation id: a failed reload uses up an id, and the next one must still
 * not land on the running generation's half). */
static size_t gen_half(const sp_sup_t *sup, const sp_gen_t *g)
{
	return (size_t)(g - sup->gens);
}

static sp_shard_stats_t *stats_of(sp_sup_t *sup, const sp_gen_t *g, unsigned slot)
{
	return &sup->stats[gen_half(sup, g) * SP_MAX_SLOTS + slot];
}

/* ---- counters: live slots plus what retired shards left ------------------------- */

static uint64_t ld(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static void totals_add(slot_totals_t *t, const sp_shard_stats_t *st)
{
	t->accepted += ld(&st->accepted);
	t->refused += ld(&st->refused);
	t->no_route += ld(&st->no_route);
	t->connect_failed += ld(&st->connect_failed);
	t->bytes_in += ld(&st->bytes_in);
	t->bytes_out += ld(&st->bytes_out);
	t->log_dropped += ld(&st->log_dropped);
	for (unsigned r = 0; r < SP_STATS_NEND; r++)
		t->closed[r] += ld(&st->closed[r]);
}

static lrow_t *lrow(stat_table_t *t, const char *name)
{
	for (size_t i = 0; i < t->nl; i++)
		if (strcmp(t->l[i].name, name) == 0)
			return &t->l[i];
	if (t->nl == t->capl) {
		size_t cap = t->capl ? t->capl * 2 : 16;
		lrow_t *l = realloc(t->l, cap * sizeof(*l));
		if (!l)
			return NULL;
		t->l = l;
		t->capl = cap;
	}
	lrow_t *r = &t->l[t->nl++];
	memset(r, 0, sizeof(*r));
	snprintf(r->name, sizeof(r->name), "%s", name);
	return r;
}

static srow_t *srow(stat_table_t *t, const char *upstream, const char *server)
{
	for (size_t i = 0; i < t->ns; i++)
		if (strcmp(t->s[i].upstream, upstream) == 0 && strcmp(t->s[i].server, server) == 0)
			return &t->s[i];
	if (t->ns == t->caps) {
		size_t cap = t->caps ? t->caps * 2 : 16;
		srow_t *sv = realloc(t->s, cap * sizeof(*sv));
		if (!sv)
			return NULL;
		t->s = sv;
		t->caps = cap;
	}
	srow_t *r = &t->s[t->ns++];
	memset(r, 0, sizeof(*r));
	snprintf(r->upstream, sizeof(r->upstream), "%s", upstream);
	snprintf(r->server, sizeof(r->server), "%s", server);
	return r;
}

static void table_free(stat_table_t *t)
{
	free(t->l);
	free(t->s);
	memset(t, 0, sizeof(*t));
}

static bool table_copy(stat_table_t *dst, const stat_table_t *src)
{
	memset(dst, 0, sizeof(*dst));
	dst->l = malloc((src->nl ? src->nl : 1) * sizeof(*dst->l));
	dst->s = malloc((src->ns ? src->ns : 1) * sizeof(*dst->s));
	if (!dst->l || !dst->s) {
		table_free(dst);
		return false;
	}
	if (src->nl)
		memcpy(dst->l, src->l, src->nl * sizeof(*dst->l));
	if (src->ns)
		memcpy(dst->s, src->s, src->ns * sizeof(*dst->s));
	dst->capl = src->nl ? src->nl : 1;
	dst->nl = src->nl;
	dst->caps = src->ns ? src->ns : 1;
	dst->ns = src->ns;
	return true;
}

/* Add the per-listener and per-server detail of slots [from, to) of
 * generation g into t, by name; gauges too when live. */
static void table_add_gen(sp_sup_t *sup, stat_table_t *t, const sp_gen_t *g, unsigned from,
			  unsigned to, bool live)
{
	const sp_conf_t *conf = g->conf;
	size_t nl = conf->nlisteners < SP_STATS_MAX_LISTENERS ? conf->nlisteners
							       : SP_STATS_MAX_LISTENERS;
	for (size_t l = 0; l < nl; l++) {
		lrow_t *r = lrow(t, conf->listeners[l].name);
		for (unsigned i = from; r && i < to; i++) {
			const sp_listener_stats_t *x = &stats_of(sup, g, i)->listeners[l];
			r->st.accepted += ld(&x->accepted);
			r->st.refused += ld(&x->refused);
			r->st.no_route += ld(&x->no_route);
			r->st.bytes_in += ld(&x->bytes_in);
			r->st.bytes_out += ld(&x->bytes_out);
			if (live)
				r->st.active += ld(&x->active);
		}
	}
	uint32_t idx = 0;
	for (size_t u = 0; u < conf->nupstreams; u++) {
		const sp_upstream_t *up = &conf->upstreams[u];
		for (size_t k = 0; k < up->nservers && idx < SP_STATS_MAX_SERVERS; k++, idx++) {
			srow_t *r = srow(t, up->name, up->servers[k].addr.text);
			for (unsigned i = from; r && i < to; i++) {
				const sp_server_stats_t *x = &stats_of(sup, g, i)->servers[idx];
				r->st.attempts += ld(&x->attempts);
				r->st.failures += ld(&x->failures);
				r->st.timeouts += ld(&x->timeouts);
				r->st.connected += ld(&x->connected);
				r->st.bytes_in += ld(&x->bytes_in);
				r->st.bytes_out += ld(&x->bytes_out);
				if (live)
					r->st.active += ld(&x->active);
				if (ld(&x->last_fail) > r->st.last_fail)
					r->st.last_fail = ld(&x->last_fail);
			}
		}
	}
}

/* A shard of g in this slot is gone for good (it was reaped): keep its
 * counters in the retired totals and zero the slot for the next one. */
static void retire_slot(sp_sup_t *sup, const sp_gen_t *g, unsigned slot)
{
	sp_shard_stats_t *st = stats_of(sup, g, slot);
	totals_add(&sup->retired_slot[slot], st);
	table_add_gen(sup, &sup->retired, g, slot, slot + 1, false);
	memset(st, 0, sizeof(*st));
}

/* Where a shard writes its access log, without ever blocking its loop: a
 * file as it is (a regular file does not block); a pipe (stderr under a
 * terminal multiplexer, a container runtime, a log collector) reopened
 * through /proc as this shard's own non-blocking description, so O_NONBLOCK
 * does not leak to the supervisor's stderr; a socket (journald's stream)
 * written with MSG_DONTWAIT. Done before the privilege drop: a process that
 * changed its uid can no longer open its own /proc/self/fd. */
static void access_log_fd(const sp_gen_t *g, int *fd, bool *sock)
{
	struct stat st;
	char path[64];
	int base = g->access_fd >= 0 ? g->access_fd : STDERR_FILENO;

	*fd = base;
	*sock = false;
	if (fstat(base, &st) < 0)
		return;
	if (S_ISSOCK(st.st_mode)) {
		*sock = true;
	} else if (S_ISFIFO(st.st_mode)) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", base);
		int nb = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
		if (nb >= 0)
			*fd = nb;
	}
}

static void __attribute__((noreturn)) shard_child(sp_sup_t *sup, sp_gen_t *g, unsigned slot)
{
	static sp_shard_args_t a; /* static: too big for a comfortable stack */
	const sp_conf_t *conf = g->conf;

	/* The supervisor's signals stay blocked; a shard drains on the
	 * supervisor's SP_SIG_DRAIN only, so a terminal's Ctrl-C or a SIGTERM
	 * to the whole process group is the supervisor's to handle, once. */
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
	/* The slot was zeroed when its previous shard was retired. */
	a.stats = stats_of(sup, g, slot);
	a.stats->pid = (uint64_t)getpid();
	a.stats->gen = g->id;
	a.drop_user = conf->user.set;
	a.drop_group = conf->user.set || conf->group.set;
	a.uid = conf->user.uid;
	a.gid = conf->group.set ? conf->group.gid : conf->user.gid;
	access_log_fd(g, &a.access_fd, &a.access_sock);
	a.steer_load = sup->steer ? sp_steer_counters(sup->steer) : NULL;
	a.server_down = sup->server_down + gen_half(sup, g) * SP_HEALTH_MAX_SERVERS;
	a.server_fails = sup->server_fails + gen_half(sup, g) * SP_HEALTH_MAX_SERVERS;
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

static void reap_now(sp_sup_t *sup, sp_gen_t *g)
{
	for (unsigned i = 0; i < g->nslots; i++)
		if (g->procs[i].state != PROC_NONE) {
			waitpid(g->procs[i].pid, NULL, 0);
			g->procs[i].state = PROC_NONE;
			retire_slot(sup, g, i);
		}
}

/* Fork every shard of g and wait until all have armed their accepts. */
static int start_gen(sp_sup_t *sup, sp_gen_t *g)
{
	size_t hoff = gen_half(sup, g) * SP_HEALTH_MAX_SERVERS;
	g->health = sp_health_new(g->conf, sup->server_down + hoff, sup->server_fails + hoff);
	if (!g->health) {
		sp_error("generation %u: health checks: out of memory", g->id);
		return -1;
	}
	if (sup->cur && sup->cur != g)
		sp_health_inherit(g->health, sup->cur->health);
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
				retire_slot(sup, g, i);
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
	reap_now(sup, g);
	sp_health_free(g->health);
	g->health = NULL;
	return -1;
}

/* ---- reload -------------------------------------------------------------------- */

static void gen_free(sp_gen_t *g)
{
	sp_health_free(g->health);
	sp_conf_free(g->conf);
	if (g->access_fd >= 0)
		close(g->access_fd);
	memset(g, 0, sizeof(*g));
	g->access_fd = -1;
}

/* log.access_log's file, opened anew by each generation: a reload is also
 * how a rotated log is reopened. */
static int open_access_log(sp_gen_t *g, char *err, size_t errlen)
{
	const char *path = g->conf->log.access_log_path;
	g->access_fd = -1;
	if (!path || !g->conf->log.access_log)
		return 0;
	g->access_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (g->access_fd < 0) {
		snprintf(err, errlen, "log.access_log %s: open: %s", path, strerror(errno));
		return -errno;
	}
	return 0;
}

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
		kill(p->pid, SP_SIG_DRAIN);
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
	sp_gen_t *g = free_gen_slot(sup);
	memset(g, 0, sizeof(*g));
	g->access_fd = -1;
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
	if (open_access_log(g, err, sizeof(err)) < 0)
		goto fail;
	shard_sessions(sup, conf, g->nslots, true);
	check_pipe_limits(conf);
	steer_reconfigure(sup, conf, sup->cur->conf);
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
	notify_ready(sup);
	return;
fail:
	sup->reloads_failed++;
	sup->last_reload_ok = false;
	snprintf(sup->last_reload_error, sizeof(sup->last_reload_error), "%s", err);
	sp_error("reload failed: %s; generation %u keeps serving", err, sup->cur->id);
	/* Give the current conf its listener marks back. */
	for (unsigned i = 0; i < sup->ngroups; i++)
		sup->groups[i].retiring = false;
	steer_reconfigure(sup, sup->cur->conf, g->conf);
	gen_free(g);
	steer_apply(sup, sup->cur);
	for (unsigned i = 0; i < sup->cur->nslots; i++)
		if (sup->cur->procs[i].state == PROC_READY)
			steer_live(sup, i, true);
	notify_ready(sup);
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
			retire_slot(sup, g, i);
			if (expected)
				return;
			sup->restarts++;
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
	sp_sdnotifyf("STOPPING=1\nSTATUS=draining after %s", strsignal(sig));
	sp_info("%s: draining (up to %u ms)", strsignal(sig), sup->cur->conf->limits.drain_timeout_ms);
	uint32_t drain = sup->cur->conf->limits.drain_timeout_ms;
	for (int k = 0; k < 2; k++)
		if (sup->gens[k].conf) {
			signal_gen(&sup->gens[k], SP_SIG_DRAIN);
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

/* ---- admin: /stats, /metrics, /healthz ------------------------------------------ */

static const char *const proc_state_names[] = {"down", "starting", "ready", "draining"};

/* What the admin endpoint reports: the live slots of both generations plus
 * what retired shards left, so every total is monotonic. */
typedef struct {
	slot_totals_t per_slot[SP_MAX_SLOTS]; /* by slot index, across generations */
	uint64_t active[SP_MAX_SLOTS];
	unsigned nslots;
	slot_totals_t total;
	uint64_t total_active;
	stat_table_t t; /* per listener and per server, by name */
} view_t;

static bool view_build(sp_sup_t *sup, view_t *v)
{
	memset(v, 0, sizeof(*v));
	if (!table_copy(&v->t, &sup->retired))
		return false;
	v->nslots = 0;
	for (unsigned i = 0; i < SP_MAX_SLOTS; i++)
		v->per_slot[i] = sup->retired_slot[i];
	for (int k = 0; k < 2; k++) {
		sp_gen_t *g = k == 0 ? sup->old : sup->cur; /* old first: its rows lead */
		if (!g)
			continue;
		for (unsigned i = 0; i < g->nslots; i++) {
			const sp_shard_stats_t *st = stats_of(sup, g, i);
			totals_add(&v->per_slot[i], st);
			v->active[i] += ld(&st->active);
		}
		table_add_gen(sup, &v->t, g, 0, g->nslots, true);
		if (g->nslots > v->nslots)
			v->nslots = g->nslots;
	}
	/* Slots a shrinking reload left behind still hold history. */
	for (unsigned i = 0; i < SP_MAX_SLOTS; i++)
		if (sup->retired_slot[i].accepted || sup->retired_slot[i].bytes_in ||
		    sup->retired_slot[i].refused)
			if (i + 1 > v->nslots)
				v->nslots = i + 1;
	for (unsigned i = 0; i < SP_MAX_SLOTS; i++) {
		const slot_totals_t *x = &v->per_slot[i];
		v->total.accepted += x->accepted;
		v->total.refused += x->refused;
		v->total.no_route += x->no_route;
		v->total.connect_failed += x->connect_failed;
		v->total.bytes_in += x->bytes_in;
		v->total.bytes_out += x->bytes_out;
		v->total.log_dropped += x->log_dropped;
		for (unsigned r = 0; r < SP_STATS_NEND; r++)
			v->total.closed[r] += x->closed[r];
		v->total_active += v->active[i];
	}
	return true;
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

static void json_totals(FILE *f, const slot_totals_t *t, uint64_t active)
{
	fprintf(f,
		"\"accepted\":%llu,\"active\":%llu,\"refused\":%llu,\"no_route\":%llu,"
		"\"connect_failed\":%llu,\"bytes_in\":%llu,\"bytes_out\":%llu,\"log_dropped\":%llu,"
		"\"closed\":{",
		(unsigned long long)t->accepted, (unsigned long long)active,
		(unsigned long long)t->refused, (unsigned long long)t->no_route,
		(unsigned long long)t->connect_failed, (unsigned long long)t->bytes_in,
		(unsigned long long)t->bytes_out, (unsigned long long)t->log_dropped);
	for (unsigned r = 0; sp_shard_end_name(r); r++)
		fprintf(f, "%s\"%s\":%llu", r ? "," : "", sp_shard_end_name(r),
			(unsigned long long)t->closed[r]);
	fputc('}', f);
}

static const char *steering_in_force(const sp_sup_t *sup)
{
	return sup->steer ? sp_conf_steering_name(sup->cur->conf->steering) : "none";
}

static const char *relay_engine(const sp_conf_t *conf)
{
	switch (conf->relay) {
	case SP_RELAY_SPLICE:
		return "splice";
	case SP_RELAY_COPY:
		return "copy";
	default:
		return "auto (copy, splice for bulk)"; /* shard.c, relay_copy.c */
	}
}

/* Health verdict of server k of upstream u in the current generation. */
static const char *server_state(const sp_sup_t *sup, size_t u, size_t k, uint32_t *fails)
{
	const sp_conf_t *conf = sup->cur->conf;
	uint32_t hi = sp_health_index(conf, u) + (uint32_t)k;
	size_t hoff = gen_half(sup, sup->cur) * SP_HEALTH_MAX_SERVERS;
	*fails = hi < SP_HEALTH_MAX_SERVERS ? sup->server_fails[hoff + hi] : 0;
	if (!conf->upstreams[u].health_check.enabled)
		return "unchecked";
	return hi < SP_HEALTH_MAX_SERVERS && sup->server_down[hoff + hi] ? "down" : "up";
}

static void render_stats(sp_sup_t *sup, FILE *f, view_t *v)
{
	const sp_conf_t *conf = sup->cur->conf;
	bool first = true;

	fprintf(f, "{\"pid\":%d,\"generation\":%u,\"state\":\"%s\",\"started\":%lld,\"uptime_s\":%lld,",
		(int)getpid(), sup->cur->id, sup->stopping ? "draining" : "serving",
		(long long)sup->started, (long long)(time(NULL) - sup->started));
	fprintf(f, "\"relay\":{\"configured\":\"%s\",\"engine\":\"%s\"},",
		sp_conf_relay_name(conf->relay), relay_engine(conf));
	fprintf(f, "\"steering\":{\"configured\":\"%s\",\"in_force\":\"%s\",\"bpf\":%s},",
		sp_conf_steering_name(conf->steering), steering_in_force(sup),
		sup->steer ? "true" : "false");
	fprintf(f, "\"user\":");
	if (conf->user.set)
		json_string(f, conf->user.name);
	else
		fputs("null", f);
	fprintf(f, ",\"shard_restarts\":%llu,\"shards\":[", (unsigned long long)sup->restarts);
	for (int k = 0; k < 2; k++) {
		sp_gen_t *g = k == 0 ? sup->cur : sup->old;
		for (unsigned i = 0; g && i < g->nslots; i++) {
			const sp_shard_stats_t *st = stats_of(sup, g, i);
			slot_totals_t one = {0};
			totals_add(&one, st);
			fprintf(f, "%s{\"slot\":%u,\"generation\":%u,\"pid\":%d,\"state\":\"%s\",",
				first ? "" : ",", i, g->id, (int)g->procs[i].pid,
				proc_state_names[g->procs[i].state]);
			json_totals(f, &one, ld(&st->active));
			fputc('}', f);
			first = false;
		}
	}
	fprintf(f, "],\"slots\":[");
	for (unsigned i = 0; i < v->nslots; i++) {
		fprintf(f, "%s{\"slot\":%u,", i ? "," : "", i);
		json_totals(f, &v->per_slot[i], v->active[i]);
		fputc('}', f);
	}
	fprintf(f, "],\"totals\":{");
	json_totals(f, &v->total, v->total_active);
	fprintf(f, "},\"reloads\":{\"count\":%llu,\"ok\":%llu,\"failed\":%llu,\"last\":",
		(unsigned long long)(sup->reloads_ok + sup->reloads_failed),
		(unsigned long long)sup->reloads_ok, (unsigned long long)sup->reloads_failed);
	if (!sup->last_reload) {
		fprintf(f, "null");
	} else {
		fprintf(f, "{\"time\":%lld,\"result\":\"%s\",\"error\":", (long long)sup->last_reload,
			sup->last_reload_ok ? "ok" : "failed");
		if (sup->last_reload_ok)
			fputs("null", f);
		else
			json_string(f, sup->last_reload_error);
		fputc('}', f);
	}
	fprintf(f, "},\"listeners\":[");
	for (size_t i = 0; i < v->t.nl; i++) {
		const lrow_t *r = &v->t.l[i];
		int l = sp_conf_listener_index(conf, r->name);
		fprintf(f, "%s{\"name\":", i ? "," : "");
		json_string(f, r->name);
		fprintf(f, ",\"listen\":");
		if (l >= 0)
			json_string(f, conf->listeners[l].listen.text);
		else
			fputs("null", f); /* removed by a reload; its counts stay */
		fprintf(f,
			",\"accepted\":%llu,\"active\":%llu,\"refused\":%llu,\"no_route\":%llu,"
			"\"bytes_in\":%llu,\"bytes_out\":%llu}",
			(unsigned long long)r->st.accepted, (unsigned long long)r->st.active,
			(unsigned long long)r->st.refused, (unsigned long long)r->st.no_route,
			(unsigned long long)r->st.bytes_in, (unsigned long long)r->st.bytes_out);
	}
	fprintf(f, "],\"upstreams\":[");
	for (size_t u = 0; u < conf->nupstreams; u++) {
		const sp_upstream_t *up = &conf->upstreams[u];
		fprintf(f, "%s{\"name\":", u ? "," : "");
		json_string(f, up->name);
		fprintf(f, ",\"balance\":\"%s\",\"servers\":[", sp_conf_balance_name(up->balance));
		for (size_t k = 0; k < up->nservers; k++) {
			const sp_server_t *srv = &up->servers[k];
			uint32_t fails;
			const char *state = server_state(sup, u, k, &fails);
			srow_t *r = srow(&v->t, up->name, srv->addr.text);
			fprintf(f, "%s{\"address\":", k ? "," : "");
			json_string(f, srv->addr.text);
			fprintf(f, ",\"weight\":%u,\"backup\":%s,\"state\":\"%s\",\"failures\":%u",
				srv->weight, srv->backup ? "true" : "false", state, fails);
			if (r) {
				fprintf(f,
					",\"connect_attempts\":%llu,\"connect_failures\":%llu,"
					"\"connect_timeouts\":%llu,\"connected\":%llu,\"active\":%llu,"
					"\"bytes_in\":%llu,\"bytes_out\":%llu,\"last_failure\":",
					(unsigned long long)r->st.attempts,
					(unsigned long long)r->st.failures,
					(unsigned long long)r->st.timeouts,
					(unsigned long long)r->st.connected,
					(unsigned long long)r->st.active,
					(unsigned long long)r->st.bytes_in,
					(unsigned long long)r->st.bytes_out);
				if (r->st.last_fail)
					fprintf(f, "{\"time\":%llu,\"error\":\"%s\"}",
						(unsigned long long)(r->st.last_fail >> 16),
						strerror((int)(r->st.last_fail & 0xffff)));
				else
					fputs("null", f);
			}
			fputc('}', f);
		}
		fprintf(f, "]}");
	}
	fprintf(f, "]}\n");
}

/* Prometheus text exposition format 0.0.4: one HELP and one TYPE line per
 * family, then its samples; label values escaped. */
static void prom_family(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP shardproxy_%s %s\n# TYPE shardproxy_%s %s\n", name, help, name, type);
}

static void prom_label(FILE *f, const char *k, const char *v, bool more)
{
	fprintf(f, "%s=\"", k);
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			fprintf(f, "\\%c", *v);
		else if (*v == '\n')
			fputs("\\n", f);
		else
			fputc(*v, f);
	}
	fprintf(f, "\"%s", more ? "," : "");
}

typedef struct {
	const char *name, *type, *help;
	size_t off; /* in slot_totals_t; SIZE_MAX: active */
} slot_metric_t;

#define SM(n, t, h, f) {n, t, h, offsetof(slot_totals_t, f)}
static const slot_metric_t slot_metrics[] = {
	SM("connections_accepted_total", "counter", "Client connections accepted.", accepted),
	{"connections_active", "gauge", "Client connections open now.", SIZE_MAX},
	SM("connections_refused_total", "counter",
	   "Client connections closed at once because the shard was at its connection limit.",
	   refused),
	SM("connections_unrouted_total", "counter",
	   "Client connections closed because no route matched.", no_route),
	SM("connections_connect_failed_total", "counter",
	   "Client connections closed because no upstream server could be connected.",
	   connect_failed),
	SM("access_log_dropped_total", "counter",
	   "Access log lines lost because the log could not keep up.", log_dropped),
};

static uint64_t slot_value(const view_t *v, unsigned i, const slot_metric_t *m)
{
	if (m->off == SIZE_MAX)
		return v->active[i];
	return *(const uint64_t *)((const char *)&v->per_slot[i] + m->off);
}

static void render_metrics(sp_sup_t *sup, FILE *f, view_t *v)
{
	const sp_conf_t *conf = sup->cur->conf;

	prom_family(f, "info", "gauge",
		    "Constant 1, labelled with the relay engine and steering in force.");
	fprintf(f,
		"shardproxy_info{relay=\"%s\",steering=\"%s\",steering_configured=\"%s\","
		"bpf=\"%s\"} 1\n",
		relay_engine(conf), steering_in_force(sup), sp_conf_steering_name(conf->steering),
		sup->steer ? "true" : "false");
	prom_family(f, "start_time_seconds", "gauge", "Unix time the supervisor started.");
	fprintf(f, "shardproxy_start_time_seconds %lld\n", (long long)sup->started);
	prom_family(f, "generation", "gauge", "Configuration generation being served.");
	fprintf(f, "shardproxy_generation %u\n", sup->cur->id);
	prom_family(f, "draining", "gauge", "1 while the proxy is stopping and draining.");
	fprintf(f, "shardproxy_draining %d\n", sup->stopping ? 1 : 0);
	prom_family(f, "shards_ready", "gauge", "Shards of the current generation ready.");
	fprintf(f, "shardproxy_shards_ready %u\n", count_state(sup->cur, PROC_READY));
	prom_family(f, "shard_restarts_total", "counter", "Shards restarted after dying.");
	fprintf(f, "shardproxy_shard_restarts_total %llu\n", (unsigned long long)sup->restarts);
	prom_family(f, "reloads_total", "counter", "Configuration reloads, by result.");
	fprintf(f,
		"shardproxy_reloads_total{result=\"ok\"} %llu\n"
		"shardproxy_reloads_total{result=\"failed\"} %llu\n",
		(unsigned long long)sup->reloads_ok, (unsigned long long)sup->reloads_failed);
	prom_family(f, "last_reload_success", "gauge",
		    "1 if the last reload succeeded (or none happened), 0 if it failed.");
	fprintf(f, "shardproxy_last_reload_success %d\n",
		!sup->last_reload || sup->last_reload_ok ? 1 : 0);
	prom_family(f, "last_reload_time_seconds", "gauge",
		    "Unix time of the last reload attempt (0: none).");
	fprintf(f, "shardproxy_last_reload_time_seconds %lld\n", (long long)sup->last_reload);

	for (size_t m = 0; m < sizeof(slot_metrics) / sizeof(slot_metrics[0]); m++) {
		prom_family(f, slot_metrics[m].name, slot_metrics[m].type, slot_metrics[m].help);
		for (unsigned i = 0; i < v->nslots; i++)
			fprintf(f, "shardproxy_%s{shard=\"%u\"} %llu\n", slot_metrics[m].name, i,
				(unsigned long long)slot_value(v, i, &slot_metrics[m]));
	}
	prom_family(f, "bytes_total", "counter",
		    "Bytes relayed, by direction (client_to_upstream, upstream_to_client).");
	for (unsigned i = 0; i < v->nslots; i++)
		fprintf(f,
			"shardproxy_bytes_total{shard=\"%u\",direction=\"client_to_upstream\"} %llu\n"
			"shardproxy_bytes_total{shard=\"%u\",direction=\"upstream_to_client\"} %llu\n",
			i, (unsigned long long)v->per_slot[i].bytes_in, i,
			(unsigned long long)v->per_slot[i].bytes_out);
	prom_family(f, "sessions_closed_total", "counter", "Finished sessions, by how they ended.");
	for (unsigned i = 0; i < v->nslots; i++)
		for (unsigned r = 0; sp_shard_end_name(r); r++)
			fprintf(f, "shardproxy_sessions_closed_total{shard=\"%u\",reason=\"%s\"} %llu\n",
				i, sp_shard_end_name(r), (unsigned long long)v->per_slot[i].closed[r]);

	static const struct {
		const char *name, *type, *help;
		size_t off;
	} lm[] = {
		{"listener_connections_accepted_total", "counter", "Client connections accepted, by listener.",
		 offsetof(sp_listener_stats_t, accepted)},
		{"listener_connections_active", "gauge", "Client connections open now, by listener.",
		 offsetof(sp_listener_stats_t, active)},
		{"listener_connections_refused_total", "counter",
		 "Client connections refused at the connection limit, by listener.",
		 offsetof(sp_listener_stats_t, refused)},
		{"listener_connections_unrouted_total", "counter",
		 "Client connections no route matched, by listener.",
		 offsetof(sp_listener_stats_t, no_route)},
	};
	for (size_t m = 0; m < sizeof(lm) / sizeof(lm[0]); m++) {
		prom_family(f, lm[m].name, lm[m].type, lm[m].help);
		for (size_t i = 0; i < v->t.nl; i++) {
			fprintf(f, "shardproxy_%s{", lm[m].name);
			prom_label(f, "listener", v->t.l[i].name, false);
			fprintf(f, "} %llu\n",
				(unsigned long long)*(const uint64_t *)((const char *)&v->t.l[i].st +
									lm[m].off));
		}
	}
	prom_family(f, "listener_bytes_total", "counter",
		    "Bytes relayed by finished sessions, by listener and direction.");
	for (size_t i = 0; i < v->t.nl; i++)
		for (int d = 0; d < 2; d++) {
			fprintf(f, "shardproxy_listener_bytes_total{");
			prom_label(f, "listener", v->t.l[i].name, true);
			fprintf(f, "direction=\"%s\"} %llu\n",
				d ? "upstream_to_client" : "client_to_upstream",
				(unsigned long long)(d ? v->t.l[i].st.bytes_out : v->t.l[i].st.bytes_in));
		}

	static const struct {
		const char *name, *type, *help;
		size_t off;
	} sm[] = {
		{"server_connect_attempts_total", "counter", "Connects started to an upstream server.",
		 offsetof(sp_server_stats_t, attempts)},
		{"server_connect_failures_total", "counter",
		 "Connects to an upstream server that failed (refused, unreachable, reset).",
		 offsetof(sp_server_stats_t, failures)},
		{"server_connect_timeouts_total", "counter",
		 "Connects to an upstream server that took longer than connect_timeout_ms.",
		 offsetof(sp_server_stats_t, timeouts)},
		{"server_sessions_total", "counter", "Sessions relayed to an upstream server.",
		 offsetof(sp_server_stats_t, connected)},
		{"server_connections_active", "gauge", "Relayed sessions open now to an upstream server.",
		 offsetof(sp_server_stats_t, active)},
	};
	for (size_t m = 0; m < sizeof(sm) / sizeof(sm[0]); m++) {
		prom_family(f, sm[m].name, sm[m].type, sm[m].help);
		for (size_t i = 0; i < v->t.ns; i++) {
			fprintf(f, "shardproxy_%s{", sm[m].name);
			prom_label(f, "upstream", v->t.s[i].upstream, true);
			prom_label(f, "server", v->t.s[i].server, false);
			fprintf(f, "} %llu\n",
				(unsigned long long)*(const uint64_t *)((const char *)&v->t.s[i].st +
									sm[m].off));
		}
	}
	prom_family(f, "server_bytes_total", "counter",
		    "Bytes relayed by finished sessions, by upstream server and direction.");
	for (size_t i = 0; i < v->t.ns; i++)
		for (int d = 0; d < 2; d++) {
			fprintf(f, "shardproxy_server_bytes_total{");
			prom_label(f, "upstream", v->t.s[i].upstream, true);
			prom_label(f, "server", v->t.s[i].server, true);
			fprintf(f, "direction=\"%s\"} %llu\n",
				d ? "upstream_to_client" : "client_to_upstream",
				(unsigned long long)(d ? v->t.s[i].st.bytes_out : v->t.s[i].st.bytes_in));
		}
	prom_family(f, "server_up", "gauge",
		    "1 if an upstream server of the current configuration is up (or not health "
		    "checked), 0 if health checks marked it down.");
	for (size_t u = 0; u < conf->nupstreams; u++)
		for (size_t k = 0; k < conf->upstreams[u].nservers; k++) {
			uint32_t fails;
			const char *state = server_state(sup, u, k, &fails);
			fprintf(f, "shardproxy_server_up{");
			prom_label(f, "upstream", conf->upstreams[u].name, true);
			prom_label(f, "server", conf->upstreams[u].servers[k].addr.text, false);
			fprintf(f, "} %d\n", strcmp(state, "down") != 0);
		}
}

static int render(void *ctx, const char *path, char **body, size_t *len, const char **ctype)
{
	sp_sup_t *sup = ctx;
	static view_t v; /* large; the supervisor is single-threaded */
	int status = 200;
	FILE *f;

	if (strcmp(path, "/stats") != 0 && strcmp(path, "/metrics") != 0 &&
	    strcmp(path, "/healthz") != 0 && strcmp(path, "/") != 0) {
		if (!(f = open_memstream(body, len)))
			return 500;
		fprintf(f, "not found; try /stats, /metrics or /healthz\n");
		fclose(f);
		return 404;
	}
	if (!(f = open_memstream(body, len)))
		return 500;
	if (strcmp(path, "/stats") == 0 || strcmp(path, "/metrics") == 0) {
		if (!view_build(sup, &v)) {
			fprintf(f, "out of memory\n");
			fclose(f);
			return 500;
		}
		if (path[1] == 's') {
			*ctype = "application/json";
			render_stats(sup, f, &v);
		} else {
			*ctype = "text/plain; version=0.0.4; charset=utf-8";
			render_metrics(sup, f, &v);
		}
		table_free(&v.t);
	} else if (strcmp(path, "/healthz") == 0) {
		unsigned ready = count_state(sup->cur, PROC_READY);
		status = ready && !sup->stopping ? 200 : 503;
		fprintf(f, "%s: %u of %u shards ready\n",
			sup->stopping ? "draining" : ready ? "ok" : "unavailable", ready,
			sup->cur->nslots);
	} else {
		fprintf(f, "shardproxy admin: /stats (JSON), /metrics (Prometheus), /healthz\n");
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
	sup->gens[0].access_fd = sup->gens[1].access_fd = -1;
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
	if (bind_listeners(sup, g, err, sizeof(err)) < 0 ||
	    open_access_log(g, err, sizeof(err)) < 0) {
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
	sp_info("ready: generation %u, %u shards, relay %s, pid %d%s%s", g->id, g->nslots,
		relay_engine(conf), (int)getpid(),
		conf->user.set ? ", shards run as user " : "", conf->user.set ? conf->user.name : "");
	sp_sdnotifyf("READY=1\nMAINPID=%d\nSTATUS=serving: generation %u, %u shards", (int)getpid(),
		     g->id, g->nslots);

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
