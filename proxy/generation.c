/* generation: one generation of shards from its conf to its last reaped
 * process. prepare (sockets, access log, limits, steering) -> start (fork
 * every shard, wait until all accept) -> drain (stop accepting, finish
 * sessions) -> reap (fold counters into the history, restart crashed shards
 * with backoff). Start-up and reload both go through sp_gen_prepare and
 * sp_gen_start; only what they do around it differs (supervisor.c). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proxy/io.h"
#include "proxy/sup_internal.h"
#include "runtime/log.h"

/* ---- sizing ------------------------------------------------------------------- */

/* Each shard is its own process with its own descriptor table, so the limit
 * applies per shard: its share of max_connections times the fds per session,
 * plus the listening sockets and the ring's own. */
uint32_t sp_gen_shard_sessions(sp_sup_t *sup, const sp_conf_t *conf, unsigned nslots, bool warn)
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
			sp_info(
			    "limits.max_connections %u needs %llu descriptors per shard (%u per "
			    "connection, %u shards): RLIMIT_NOFILE raised from %llu to %llu",
			    conf->limits.max_connections, (unsigned long long)need, per, nslots,
			    (unsigned long long)sup->nofile, (unsigned long long)need);
			sup->nofile = need;
			return (uint32_t)share;
		}
		snprintf(why, sizeof(why), "; raising it failed: %s%s", strerror(errno),
			 errno == EPERM	   ? " (no CAP_SYS_RESOURCE)"
			 : errno == EINVAL ? " (above fs.nr_open?)"
					   : "");
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

/* ---- sockets ------------------------------------------------------------------- */

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
		g->nfds_of[l] = grp->nfds;
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

void sp_gen_close_retired(sp_sup_t *sup)
{
	for (unsigned i = 0; i < sup->ngroups; i++)
		if (sup->groups[i].retiring) {
			sp_info("listener %s closed", sup->groups[i].addr.text);
			sp_lgroup_close(&sup->groups[i]);
		}
}

/* log.access_log's file, opened anew by each generation: a reload is also
 * how a rotated log is reopened. */
static int open_access_log(sp_gen_t *g, char *err, size_t errlen)
{
	const char *path = g->conf->log.access_log_path;
	g->access_fd = -1;
	if (!path || !g->conf->log.access_log)
		return 0;
	/* Never through a symbolic link: a log directory writable by others
	 * (or a service account) must not let anyone point the proxy at a file
	 * of their choosing. */
	g->access_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0640);
	if (g->access_fd < 0) {
		int e = errno;
		if (e == ELOOP)
			snprintf(err, errlen,
				 "log.access_log %s: is a symbolic link; refusing to follow it (name "
				 "the file itself)",
				 path);
		else
			snprintf(err, errlen, "log.access_log %s: open: %s", path, strerror(e));
		return -e;
	}
	return 0;
}

/* ---- prepare ------------------------------------------------------------------- */

/* The generation's event loop: logged with its reason, and an error when
 * "io": "io_uring" is configured where io_uring cannot run. */
static int choose_io(sp_gen_t *g, char *err, size_t errlen)
{
	char why[768];
	int ret = sp_io_choose(g->conf->io, &g->io, why, sizeof(why));
	if (ret < 0) {
		snprintf(err, errlen, "io: io_uring configured but unavailable: %.440s", why);
		return ret;
	}
	if (g->conf->io == SP_IO_AUTO && g->io == SP_LOOP_EPOLL)
		sp_warn("io: %s", why);
	else
		sp_info("io: %s", why);
	return 0;
}

static sp_gen_t *free_gen_slot(sp_sup_t *sup)
{
	return sup->cur == &sup->gens[0] ? &sup->gens[1] : &sup->gens[0];
}

int sp_gen_prepare(sp_sup_t *sup, sp_conf_t *conf, const sp_conf_t *prev, sp_gen_t **out, char *err,
		   size_t errlen)
{
	sp_gen_t *g = free_gen_slot(sup);
	int ret;

	memset(g, 0, sizeof(*g));
	g->access_fd = -1;
	g->conf = conf;
	g->id = sup->next_gen++;
	g->nslots = sp_supervisor_workers(conf, sup->opts->workers_override);
	if (g->nslots > SP_MAX_SLOTS)
		g->nslots = SP_MAX_SLOTS;
	g->ngroups_before = sup->ngroups;
	for (unsigned i = 0; i < sup->ngroups; i++)
		g->nfds_before[i] = sup->groups[i].nfds;
	*out = g;
	if (conf->nlisteners > SP_SHARD_MAX_LISTENERS) {
		snprintf(err, errlen, "listeners: more than %d listeners", SP_SHARD_MAX_LISTENERS);
		return -E2BIG;
	}
	if ((ret = choose_io(g, err, errlen)) < 0)
		return ret;
	if ((ret = bind_listeners(sup, g, err, errlen)) < 0)
		return ret;
	if ((ret = open_access_log(g, err, errlen)) < 0)
		return ret;
	sp_gen_shard_sessions(sup, conf, g->nslots, true);
	check_pipe_limits(conf);
	sp_steering_configure(sup, conf, prev);
	sp_steering_apply(sup, g);
	return 0;
}

void sp_gen_free(sp_gen_t *g)
{
	sp_names_free(g->names);
	sp_health_free(g->health);
	sp_conf_free(g->conf);
	if (g->access_fd >= 0)
		close(g->access_fd);
	memset(g, 0, sizeof(*g));
	g->access_fd = -1;
}

void sp_gen_abandon(sp_sup_t *sup, sp_gen_t *g)
{
	/* Close every socket g opened (slots it added, listen addresses it
	 * bound, also when a later bind failed): left open, each would sit in
	 * its reuseport group and take a share of new connections that no shard
	 * accepts. Then give the current conf its listener marks back. */
	for (unsigned i = 0; i < sup->ngroups; i++) {
		sp_lgroup_shrink(&sup->groups[i], i < g->ngroups_before ? g->nfds_before[i] : 0);
		sup->groups[i].retiring = false;
		sup->groups[i].in_use = false;
	}
	sup->ngroups = g->ngroups_before;
	for (size_t l = 0; l < sup->cur->conf->nlisteners; l++)
		sup->groups[sup->cur->group_of[l]].in_use = true;
	sp_steering_configure(sup, sup->cur->conf, g->conf);
	sp_gen_free(g);
	sp_steering_reclaim(sup);
}

/* ---- shards ------------------------------------------------------------------- */

static sp_stats_gen_t stats_gen(const sp_sup_t *sup, const sp_gen_t *g)
{
	return (sp_stats_gen_t){
	    .conf = g->conf, .slots = sp_gen_stats(sup, g), .nslots = g->nslots};
}

/* A shard of g in this slot is gone for good (it was reaped): keep its
 * counters in the history and zero the slot for the next one. */
static void retire_slot(sp_sup_t *sup, const sp_gen_t *g, unsigned slot)
{
	sp_stats_gen_t sg = stats_gen(sup, g);
	if (sp_stats_retire(&sup->retired, &sg, slot) < 0)
		sp_warn("shard %u: out of memory: its per-listener and per-server counts are lost",
			slot);
	memset(&sp_gen_stats(sup, g)[slot], 0, sizeof(sp_shard_stats_t));
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

static int cmp_int(const void *x, const void *y)
{
	int a = *(const int *)x, b = *(const int *)y;
	return (a > b) - (a < b);
}

/* Close every descriptor but keep[0..n) (sorted here). A forked shard
 * inherits all of the supervisor's: other slots' and removed listeners'
 * sockets (a socket stays listening while any copy is open, so a stop could
 * not refuse new clients until every shard had exited), health-check
 * sockets and their epoll set, the BPF program and maps, earlier
 * generations' access logs. O_CLOEXEC does not help, there is no exec.
 * Closing by what to keep also covers whatever is added later. */
static void close_all_but(int *keep, size_t n)
{
	unsigned from = 0;
	qsort(keep, n, sizeof(*keep), cmp_int);
	for (size_t i = 0; i < n; i++) {
		if (keep[i] < 0 || (unsigned)keep[i] < from)
			continue;
		if ((unsigned)keep[i] > from)
			close_range(from, (unsigned)keep[i] - 1, 0);
		from = (unsigned)keep[i] + 1;
	}
	close_range(from, ~0U, 0);
}

static void __attribute__((noreturn)) shard_child(sp_sup_t *sup, sp_gen_t *g, unsigned slot,
						  pid_t sup_pid)
{
	int keep[4 + SP_SHARD_MAX_LISTENERS * SP_SHARD_MAX_FDS_PER_LISTENER];
	size_t nkeep = 0;

	static sp_shard_args_t a; /* static: too big for a comfortable stack */
	const sp_conf_t *conf = g->conf;

	/* The supervisor's signals stay blocked; a shard drains on the
	 * supervisor's SP_SIG_DRAIN only, so a terminal's Ctrl-C or a SIGTERM
	 * to the whole process group is the supervisor's to handle, once. */
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGUSR2, SIG_IGN); /* a binary upgrade is the supervisor's */
	signal(SIGPIPE, SIG_IGN);
	close(sup->sigfd);
	close(sup->notify_r);
	sp_admin_close(sup->admin);
	sup->admin = NULL;
	sp_admin_close(sup->admin_unix);
	sup->admin_unix = NULL;

	memset(&a, 0, sizeof(a));
	a.conf = conf;
	a.slot = slot;
	a.nslots = g->nslots;
	a.gen = g->id;
	a.cpu = sup->cpus[slot % sup->ncpus];
	a.max_sessions = sp_gen_shard_sessions(sup, conf, g->nslots, false);
	a.io = g->io;
	a.notify_fd = sup->notify_w;
	a.sup_pid = sup_pid;
	/* The slot was zeroed when its previous shard was retired. */
	a.stats = &sp_gen_stats(sup, g)[slot];
	a.stats->pid = (uint64_t)getpid();
	a.stats->gen = g->id;
	a.drop_user = conf->user.set;
	a.drop_group = conf->user.set || conf->group.set;
	a.uid = conf->user.uid;
	a.gid = conf->group.set ? conf->group.gid : conf->user.gid;
	access_log_fd(g, &a.access_fd, &a.access_sock);
	a.steer_load = sup->steer ? sp_steer_counters(sup->steer) : NULL;
	a.server_down = sup->server_down + sp_gen_half(sup, g) * SP_HEALTH_MAX_SERVERS;
	a.server_fails = sup->server_fails + sp_gen_half(sup, g) * SP_HEALTH_MAX_SERVERS;
	a.server_ctl = sp_gen_ctl(sup, g);
	for (size_t l = 0; l < conf->nlisteners; l++) {
		sp_lgroup_t *grp = &sup->groups[g->group_of[l]];
		/* Its own slot, plus slots left over when the shard count shrank. */
		for (unsigned s = slot; s < g->nfds_of[l] && s < grp->nfds; s += g->nslots)
			if (a.nlisten_fds[l] < SP_SHARD_MAX_FDS_PER_LISTENER)
				a.listen_fds[l][a.nlisten_fds[l]++] = grp->fds[s];
	}
	keep[nkeep++] = STDIN_FILENO;
	keep[nkeep++] = STDOUT_FILENO;
	keep[nkeep++] = STDERR_FILENO;
	keep[nkeep++] = a.notify_fd;
	if (a.access_fd != STDERR_FILENO)
		keep[nkeep++] = a.access_fd;
	for (size_t l = 0; l < conf->nlisteners; l++)
		for (unsigned k = 0; k < a.nlisten_fds[l]; k++)
			if (nkeep < sizeof(keep) / sizeof(keep[0]))
				keep[nkeep++] = a.listen_fds[l][k];
	close_all_but(keep, nkeep);
	exit(sp_shard_main(&a));
}

static int spawn(sp_sup_t *sup, sp_gen_t *g, unsigned slot, char *err, size_t errlen)
{
	sp_proc_t *p = &g->procs[slot];
	pid_t parent = getpid(); /* the child's getppid() may already be another */
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		snprintf(err, errlen, "shard %u: fork: %s", slot, strerror(e));
		return -e;
	}
	if (pid == 0)
		shard_child(sup, g, slot, parent);
	p->pid = pid;
	p->state = PROC_STARTING;
	p->started_ms = sp_clock_ms();
	p->restart_at = 0;
	p->closed = false;
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
			sp_steering_live(sup, m->slot, true);
		if (p->restarted) {
			sp_info("shard %u restarted (pid %d)", m->slot, (int)p->pid);
			p->restarted = false;
		}
	} else if (m->event == SP_SHARD_EV_CLOSED) {
		p->closed = true;
	} else if (m->event == SP_SHARD_EV_FAILED) {
		sp_error("shard %u (generation %u) failed to start: %s", m->slot, m->gen,
			 strerror(-m->err));
		if (g == sup->starting)
			g->start_failed = true;
	}
}

void sp_gen_read_notify(sp_sup_t *sup)
{
	sp_shard_msg_t m;
	while (read(sup->notify_r, &m, sizeof(m)) == (ssize_t)sizeof(m))
		on_shard_msg(sup, &m);
}

unsigned sp_gen_count(const sp_gen_t *g, sp_proc_state_t st)
{
	unsigned n = 0;
	for (unsigned i = 0; i < g->nslots; i++)
		n += g->procs[i].state == st;
	return n;
}

unsigned sp_gen_alive(const sp_gen_t *g)
{
	unsigned n = 0;
	for (unsigned i = 0; i < g->nslots; i++)
		n += g->procs[i].state != PROC_NONE;
	return n;
}

unsigned sp_gen_accepting(const sp_gen_t *g, char *pids, size_t len)
{
	unsigned n = 0;
	for (unsigned i = 0; i < g->nslots; i++) {
		const sp_proc_t *p = &g->procs[i];
		if (p->state == PROC_NONE || p->closed)
			continue;
		n++;
		size_t at = strlen(pids);
		if (at < len)
			snprintf(pids + at, len - at, "%s%d", at ? ", " : "", (int)p->pid);
	}
	return n;
}

void sp_gen_signal(sp_gen_t *g, int sig)
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

/* ---- start ------------------------------------------------------------------- */

int sp_gen_spawn(sp_sup_t *sup, sp_gen_t *g, char *err, size_t errlen)
{
	size_t hoff = sp_gen_half(sup, g) * SP_HEALTH_MAX_SERVERS;
	char why[256];
	int ret = sp_health_new(&g->health, g->conf, sup->server_down + hoff,
				sup->server_fails + hoff, why, sizeof(why));
	if (ret < 0) {
		g->health = NULL;
		snprintf(err, errlen, "generation %u: %s", g->id, why);
		return ret;
	}
	sp_health_set_ctl(g->health, sp_gen_ctl(sup, g));
	if (g->names)
		sp_names_set_health(g->names, g->health);
	if (sup->cur && sup->cur != g)
		sp_health_inherit(g->health, sup->cur->health);
	sup->starting = g;
	g->start_failed = false;
	g->ready_by = sp_clock_ms() + READY_TIMEOUT_MS;
	for (unsigned i = 0; i < g->nslots; i++)
		if ((ret = spawn(sup, g, i, why, sizeof(why))) < 0) {
			sp_gen_kill(sup, g);
			snprintf(err, errlen, "generation %u: %s", g->id, why);
			return ret;
		}
	return 0;
}

int sp_gen_start_poll(sp_sup_t *sup, sp_gen_t *g, char *err, size_t errlen)
{
	if (g->start_failed) {
		/* Which shard and why is its own line, logged as it happened. */
		snprintf(err, errlen, "generation %u: a shard failed during start-up", g->id);
		return -ECHILD;
	}
	if (sp_gen_count(g, PROC_READY) == g->nslots) {
		if (sup->starting == g)
			sup->starting = NULL;
		return 1;
	}
	if (sp_clock_ms() >= g->ready_by) {
		snprintf(err, errlen, "generation %u: shards not ready after %d ms", g->id,
			 READY_TIMEOUT_MS);
		return -ETIMEDOUT;
	}
	return 0;
}

int sp_gen_start(sp_sup_t *sup, sp_gen_t *g, char *err, size_t errlen)
{
	int st;
	if ((st = sp_gen_spawn(sup, g, err, errlen)) < 0)
		return st;
	while ((st = sp_gen_start_poll(sup, g, err, errlen)) == 0) {
		struct pollfd pfd = {.fd = sup->notify_r, .events = POLLIN};
		uint64_t t = sp_clock_ms();
		poll(&pfd, 1, g->ready_by > t ? (int)(g->ready_by - t) : 0);
		sp_gen_read_notify(sup);
		/* A shard that died before reporting never will. */
		for (unsigned i = 0; i < g->nslots; i++) {
			int status;
			if (g->procs[i].state == PROC_STARTING &&
			    waitpid(g->procs[i].pid, &status, WNOHANG) == g->procs[i].pid) {
				g->procs[i].state = PROC_NONE;
				retire_slot(sup, g, i);
				sp_error("shard %u (generation %u) exited during start-up", i,
					 g->id);
				g->start_failed = true;
			}
		}
	}
	if (st < 0) {
		sp_gen_kill(sup, g);
		return st;
	}
	return 0;
}

void sp_gen_kill(sp_sup_t *sup, sp_gen_t *g)
{
	if (sup->starting == g)
		sup->starting = NULL;
	sp_gen_signal(g, SIGKILL);
	reap_now(sup, g);
	sp_health_free(g->health);
	g->health = NULL;
}

/* ---- drain and reap ------------------------------------------------------------ */

void sp_gen_drain(sp_gen_t *g)
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
	g->kill_at = sp_clock_ms() + g->conf->limits.drain_timeout_ms + KILL_GRACE_MS;
	sp_health_free(g->health); /* its servers are the new generation's to check */
	g->health = NULL;
	sp_names_free(g->names); /* and to re-resolve */
	g->names = NULL;
}

/* A shard that exited (crash, SIGKILL, drain timeout) took its sessions
 * with it: take them out of least_conn's shared load counter too, or its
 * slot would look busy for ever. */
static void forget_sessions(sp_sup_t *sup, const sp_gen_t *g, unsigned slot)
{
	sp_shard_stats_t *st = &sp_gen_stats(sup, g)[slot];
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

void sp_gen_describe_status(int status, char *buf, size_t len)
{
	if (WIFSIGNALED(status))
		snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(status),
			 strsignal(WTERMSIG(status)));
	else
		snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
}

bool sp_gen_child_exited(sp_sup_t *sup, pid_t pid, int status)
{
	for (int k = 0; k < 3; k++) {
		sp_gen_t *g = k == 0 ? sup->cur : k == 1 ? sup->old : sup->starting;
		if (!g || (k == 2 && g == sup->cur))
			continue;
		for (unsigned i = 0; i < g->nslots; i++) {
			sp_proc_t *p = &g->procs[i];
			if (p->pid != pid || p->state == PROC_NONE)
				continue;
			if (g == sup->starting && g != sup->cur) {
				/* A shard of a reload's new generation died before all
				 * were ready: that reload failed (reload_progress). */
				p->state = PROC_NONE;
				retire_slot(sup, g, i);
				sp_error("shard %u (generation %u) exited during start-up", i, g->id);
				g->start_failed = true;
				return true;
			}
			bool expected = p->state == PROC_DRAINING || sup->stopping;
			p->state = PROC_NONE;
			forget_sessions(sup, g, i);
			retire_slot(sup, g, i);
			if (expected)
				return true;
			sup->restarts++;
			char how[96];
			sp_gen_describe_status(status, how, sizeof(how));
			sp_steering_live(sup, i, false);
			uint64_t t = sp_clock_ms();
			if (t - p->started_ms > STABLE_AFTER_MS)
				p->crashes = 0;
			uint64_t delay = sp_backoff_ms(p->crashes);
			if (p->crashes < UINT32_MAX)
				p->crashes++;
			sp_warn("shard %u (pid %d, generation %u) %s; restarting in %llu ms", i,
				(int)pid, g->id, how, (unsigned long long)delay);
			p->restart_at = t + delay;
			return true;
		}
	}
	return false;
}

void sp_gen_restart_due(sp_sup_t *sup, uint64_t t)
{
	sp_gen_t *g = sup->cur;
	for (unsigned i = 0; g && !sup->stopping && i < g->nslots; i++) {
		sp_proc_t *p = &g->procs[i];
		if (p->state == PROC_NONE && p->restart_at && p->restart_at <= t) {
			char why[128];
			p->restarted = true;
			if (spawn(sup, g, i, why, sizeof(why)) < 0) {
				sp_error("%s (generation %u); retrying in %d ms", why, g->id,
					 SP_BACKOFF_MAX_MS);
				p->restart_at = t + SP_BACKOFF_MAX_MS;
			}
		}
	}
}
