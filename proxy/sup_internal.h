/* The supervisor's parts, private to proxy/: the state they share and what
 * each file offers the others.
 *
 *   supervisor.c  set-up, the poll loop, signal -> action, reload
 *   generation.c  prepare / start / drain / reap one generation of shards
 *   steering.c    config -> steering policy, the BPF program's slots
 *   stats.c       counter aggregation (pure, see stats.h)
 *   render.c      /stats, /metrics and /healthz from one table of metrics
 */
#ifndef SP_SUP_INTERNAL_H
#define SP_SUP_INTERNAL_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "runtime/loop.h"
#include "bpf/steer.h"
#include "proxy/admin.h"
#include "proxy/backoff.h"
#include "proxy/health.h"
#include "proxy/listen.h"
#include "proxy/names.h"
#include "proxy/stats.h"
#include "proxy/supervisor.h"
#include "proxy/upgrade.h"
#include "runtime/clock.h"
#include "shard/shard.h"

#define READY_TIMEOUT_MS 10000
#define STABLE_AFTER_MS 10000
#define KILL_GRACE_MS 2000
#define HANDOVER_TIMEOUT_MS 5000 /* old shards' word that they stopped accepting */
/* A new binary's wait for the old supervisor's "done": longer than the old
 * one's own wait for its shards, which it tells when it gives up on. */
#define TAKEOVER_TIMEOUT_MS (HANDOVER_TIMEOUT_MS + KILL_GRACE_MS)

typedef enum { PROC_NONE = 0, PROC_STARTING, PROC_READY, PROC_DRAINING } sp_proc_state_t;

typedef enum {
	SP_HANDOVER_NONE = 0,
	SP_HANDOVER_RELOAD,   /* our old generation's shards to a reload's new one */
	SP_HANDOVER_UPGRADE,  /* every shard of ours to a new binary's */
	SP_HANDOVER_TAKEOVER, /* a new binary (us): the old supervisor's shards to ours */
} sp_handover_t;

typedef struct {
	pid_t pid;
	sp_proc_state_t state;
	uint64_t started_ms;
	uint32_t crashes;    /* quick deaths in a row, for backoff */
	uint64_t restart_at; /* a restart is due at this time (0: none) */
	bool restarted;	     /* announce "restarted" once ready */
	bool closed;	     /* draining: it said it closed its listening sockets */
} sp_proc_t;

/* A generation is a conf plus the shards running it; at most two exist: the
 * current one and, during a reload, the old one draining. */
typedef struct {
	sp_conf_t *conf;
	uint32_t id;
	uint32_t nslots;
	uint64_t kill_at;  /* draining: SIGKILL what is left at this time */
	uint64_t ready_by; /* starting: not all ready by then is a failed start */
	bool start_failed; /* starting: a shard failed or died before it was ready */
	sp_health_t *health;
	sp_names_t *names; /* its servers' host names (re-resolved while it is current) */
	int access_fd; /* log.access_log's file, opened for this generation; -1: stderr */
	int group_of[SP_SHARD_MAX_LISTENERS]; /* conf listener -> group index */
	/* The group's sockets when this generation was prepared: its shards
	 * accept on these only, not on slots a later reload adds (and may close
	 * again if it fails). */
	unsigned nfds_of[SP_SHARD_MAX_LISTENERS];
	/* Sockets per group before this generation was prepared: what
	 * abandoning it closes again (groups from ngroups_before on are new). */
	unsigned nfds_before[SP_MAX_GROUPS];
	unsigned ngroups_before;
	sp_proc_t procs[SP_MAX_SLOTS];
	sp_loop_backend_t io; /* the shards' event loop (proxy/io.c) */
} sp_gen_t;

typedef struct {
	const sp_supervisor_opts_t *opts;
	sp_lgroup_t groups[SP_MAX_GROUPS];
	unsigned ngroups;
	sp_gen_t gens[2];
	sp_gen_t *cur, *old;
	sp_gen_t *starting; /* spawned by sp_gen_spawn, not all ready yet */
	/* A hand-over of new connections to other shards on the same
	 * sockets, while shards that had them still may accept: it is said
	 * to be done (log line, READY=1 or MAINPID, /stats) only once none
	 * of those can, or at handover_by. The old side of a reload or an
	 * upgrade waits for its own shards (SP_SHARD_EV_CLOSED or gone); the
	 * new supervisor of an upgrade waits for the old one's "done". */
	sp_handover_t handover;
	sp_gen_t *handover_gen; /* RELOAD: the generation taking over */
	uint64_t handover_by;
	int handover_fd; /* UPGRADE, TAKEOVER: the pair between the supervisors; -1: none */
	uint32_t serving_gen; /* the generation /stats names: the last one fully in force */
	uint32_t next_gen;
	int cpus[SP_MAX_SLOTS];
	unsigned ncpus;
	uint64_t nofile;
	int sigfd, notify_r, notify_w;
	sp_steer_t *steer;
	sp_shard_stats_t *stats; /* [2][SP_MAX_SLOTS], shared with the shards */
	uint8_t *server_down;	 /* [2][SP_HEALTH_MAX_SERVERS], shared */
	uint32_t *server_fails;	 /* [2][SP_HEALTH_MAX_SERVERS], shared */
	sp_server_ctl_t *server_ctl; /* [2][SP_HEALTH_MAX_SERVERS], shared: admin.socket, DNS */
	/* A reload whose host names are being looked up: the supervisor keeps
	 * serving (signals, restarts, /healthz) until they are answered. */
	sp_conf_t *pending_conf;
	sp_names_t *pending_names;
	bool stopping;
	uint64_t stop_kill_at;
	bool reload_pending;
	bool reloading; /* RELOADING=1 was sent; READY=1 is due when it is done */
	uint64_t reloads_ok, reloads_failed, restarts;
	sp_stats_history_t retired;
	time_t started, last_reload;
	bool last_reload_ok;
	char last_reload_error[512];
	sp_admin_t *admin;
	sp_admin_t *admin_unix; /* admin.socket: the same GETs, plus writes */
	sp_upgrade_t upgrade;   /* a new binary starting (SIGUSR2) */
	sp_upgrade_failed_t failed_upgrade; /* one that failed, until reap() collects it */
	pid_t upgraded_to;      /* it serves: this supervisor drains and exits */
	pid_t upgraded_from;    /* we are the new binary: the supervisor we took over from */
	const sp_steer_maps_t *steer_maps; /* start-up after an upgrade: load on these */
} sp_sup_t;

/* Draining, as /stats, /metrics and /healthz say it: stopping, but not while
 * an upgrade hands over: the new binary serves already, and this supervisor
 * answers the admin endpoint until the hand-over is complete. */
static inline bool sp_sup_draining(const sp_sup_t *sup)
{
	return sup->stopping && sup->handover != SP_HANDOVER_UPGRADE;
}

/* Shared arrays come in two halves, one per entry of sup->gens (not per
 * generation id: a failed reload uses up an id, and the next one must still
 * not land on the running generation's half). */
static inline size_t sp_gen_half(const sp_sup_t *sup, const sp_gen_t *g)
{
	return (size_t)(g - sup->gens);
}

static inline sp_shard_stats_t *sp_gen_stats(const sp_sup_t *sup, const sp_gen_t *g)
{
	return &sup->stats[sp_gen_half(sup, g) * SP_MAX_SLOTS];
}

/* g's run-time server control (its half of server_ctl). */
static inline sp_server_ctl_t *sp_gen_ctl(const sp_sup_t *sup, const sp_gen_t *g)
{
	return sup->server_ctl + sp_gen_half(sup, g) * SP_HEALTH_MAX_SERVERS;
}

/* generation.c */

/* Everything a generation needs before its shards start, the same for
 * start-up and reload: a free gens[] entry (*out, set even on failure), its
 * id and size, listening sockets, the access log, limits checked, steering
 * set up (prev: the conf in force, NULL at start-up) and pointed at its
 * sockets. The entry owns conf from here on. 0, or -errno with err saying
 * why; a reload then gives the entry up with sp_gen_abandon. */
int sp_gen_prepare(sp_sup_t *sup, sp_conf_t *conf, const sp_conf_t *prev, sp_gen_t **out, char *err,
		   size_t errlen);
/* Fork every shard of g and return at once: g is sup->starting until
 * sp_gen_start_poll says how it went. 0, or -errno with every shard of g
 * gone and err saying why (not logged: the caller does, once). */
int sp_gen_spawn(sp_sup_t *sup, sp_gen_t *g, char *err, size_t errlen);
/* Where g's start stands, from what the loop has read (notify pipe,
 * SIGCHLD): 1 all shards ready (g is no longer sup->starting), 0 not yet,
 * -errno failed, err saying why (-ECHILD: a shard failed or died, its own
 * line says which and why; -ETIMEDOUT: READY_TIMEOUT_MS passed). On failure
 * the caller kills g (sp_gen_kill) and logs err. */
int sp_gen_start_poll(sp_sup_t *sup, sp_gen_t *g, char *err, size_t errlen);
/* sp_gen_spawn, then wait for the result here: for start-up only, when
 * there is nothing else to serve yet. 0, or -errno with every shard of g
 * gone and err saying why. */
int sp_gen_start(sp_sup_t *sup, sp_gen_t *g, char *err, size_t errlen);
/* SIGKILL every shard of g and wait for them (a generation that failed to
 * start, or start-up that cannot go on); its health checks stop. */
void sp_gen_kill(sp_sup_t *sup, sp_gen_t *g);
/* A prepared generation that will not run: give the listener marks back to
 * the current one, restore its steering, free g. */
void sp_gen_abandon(sp_sup_t *sup, sp_gen_t *g);
/* Stop g accepting and let its sessions finish (SIGKILL after the drain timeout). */
void sp_gen_drain(sp_gen_t *g);
void sp_gen_free(sp_gen_t *g);
void sp_gen_signal(sp_gen_t *g, int sig);
unsigned sp_gen_count(const sp_gen_t *g, sp_proc_state_t st);
unsigned sp_gen_alive(const sp_gen_t *g);
/* Shards of g that are alive and have not said they closed their listening
 * sockets: ones that may still accept a connection. Their pids are appended
 * to the string pids (len bytes in all), for a warning that names them. */
unsigned sp_gen_accepting(const sp_gen_t *g, char *pids, size_t len);
/* Start shards whose restart is due. */
void sp_gen_restart_due(sp_sup_t *sup, uint64_t now);
/* A child exited: if it was a shard, fold its counters and restart it with
 * backoff if it crashed. false: not a shard of ours. */
bool sp_gen_child_exited(sp_sup_t *sup, pid_t pid, int status);
/* "exited with status 1", "killed by signal 9 (Killed)". */
void sp_gen_describe_status(int status, char *buf, size_t len);
/* Read the shards' reports on the notify pipe. */
void sp_gen_read_notify(sp_sup_t *sup);
/* Close listener groups the drained generation was the last to use. */
void sp_gen_close_retired(sp_sup_t *sup);
/* Size the shards' session pools for conf (warn: log and try to raise limits). */
uint32_t sp_gen_shard_sessions(sp_sup_t *sup, const sp_conf_t *conf, unsigned nslots, bool warn);

/* steering.c */

/* Load the steering program for conf, or switch an existing one to conf's
 * policy after a reload (prev: the conf it replaces; NULL at start-up). */
void sp_steering_configure(sp_sup_t *sup, const sp_conf_t *conf, const sp_conf_t *prev);
/* Point the program at g's sockets and slot -> CPU map. */
void sp_steering_apply(sp_sup_t *sup, sp_gen_t *g);
void sp_steering_live(sp_sup_t *sup, unsigned slot, bool live);
/* Attach our program to the sockets again and publish our slots (after a
 * new binary that attached its own failed). */
void sp_steering_reclaim(sp_sup_t *sup);
/* The steering in force: conf's when a program is loaded, else "none". */
const char *sp_steering_in_force(const sp_sup_t *sup);

/* render.c: the admin endpoint's pages (sp_admin_render_fn; ctx is sup). */
int sp_render(void *ctx, const char *method, const char *path, bool writable, char **body,
	      size_t *len, const char **ctype);
/* The relay engine conf asks for, as /stats and the start-up line name it. */
const char *sp_relay_engine(const sp_conf_t *conf);

#endif
