/* shard: one worker process. It runs one io_uring loop over the listening
 * sockets of its slot, and relays every connection it accepts. The
 * supervisor (proxy/) forks it with everything it needs in sp_shard_args_t. */
#ifndef SP_SHARD_H
#define SP_SHARD_H

#include <stdbool.h>
#include <signal.h>
#include <stdint.h>
#include <sys/types.h>

#include "conf/conf.h"
#include "shard/balance.h"
#include "runtime/loop.h"

/* The supervisor's order to a shard: drain (stop accepting, finish the open
 * sessions), or, a second time, stop at once. A signal of its own, not
 * SIGTERM: a SIGTERM sent to the whole process group and the supervisor's
 * order would merge into one pending SIGTERM, and the order be lost. Nor
 * SIGUSR2, the operator's binary upgrade, which `systemctl kill -s USR2`
 * sends to every process of the service: a real-time signal nobody sends
 * by hand (and each one sent is delivered, none merged). */
#define SP_SIG_DRAIN (SIGRTMIN + 1)

#define SP_SHARD_MAX_FDS_PER_LISTENER 8
#define SP_SHARD_MAX_LISTENERS 64

/* Pipe capacity the splice engine asks with F_SETPIPE_SZ: 64 pages. A pipe
 * holds pages only while bytes sit in it, and bigger pipes mean fewer
 * splice calls and wake-ups per byte (bulk: 0.26 -> 0.20 CPU s/GiB and +9%
 * against 64 KiB, docs/BENCHMARKS.md). A user over fs.pipe-user-pages-soft
 * gets smaller pipes instead; the engine works with any size. */
#define SP_PIPE_SIZE (256 * 1024)

/* Counters a shard publishes in shared memory (SPEC §6); the supervisor
 * only reads them. One writer per slot, so updates are a relaxed load and a
 * plain store (aligned 64-bit stores are atomic on every target we build
 * for): the data path pays no lock and no locked instruction. Slots are
 * cache-line aligned so two shards never write the same line.
 *
 * A slot lives as long as one shard process: when the shard dies (crash,
 * drain, failed start) the supervisor folds its counters into retired
 * totals and zeroes the slot before it is reused, so the totals it reports
 * never go backwards across a restart or a reload. */
#define SP_STATS_MAX_LISTENERS SP_SHARD_MAX_LISTENERS
/* Per-server detail for the first servers (numbered across upstreams, as
 * for health checks); servers past it are counted only in the shard totals. */
#define SP_STATS_MAX_SERVERS 1024
#define SP_STATS_NEND 16 /* session end reasons, see sp_shard_end_name() */

/* The one way a shard updates a counter of its slot: a relaxed load and a
 * plain store, as the writer is alone (see above). */
static inline void sp_stat_add(uint64_t *c, int64_t d)
{
	__atomic_store_n(c, *c + (uint64_t)d, __ATOMIC_RELAXED);
}

typedef struct {
	uint64_t accepted;
	uint64_t active; /* gauge */
	uint64_t refused;
	uint64_t no_route;
	uint64_t bytes_in; /* of finished sessions */
	uint64_t bytes_out;
} sp_listener_stats_t;

typedef struct {
	uint64_t attempts; /* connects started */
	uint64_t failures; /* refused, unreachable, reset... */
	uint64_t timeouts; /* connect_timeout_ms elapsed */
	uint64_t connected;
	uint64_t active; /* gauge: relayed sessions open to it */
	uint64_t bytes_in; /* of finished sessions */
	uint64_t bytes_out;
	uint64_t last_fail; /* unix seconds << 16 | errno of the last failure; 0: none */
} sp_server_stats_t;

typedef struct __attribute__((aligned(64))) {
	uint64_t pid;
	uint64_t gen;
	uint64_t accepted;
	uint64_t active;  /* gauge */
	uint64_t refused; /* closed at once: the session pool was full */
	uint64_t no_route;
	uint64_t connect_failed; /* sessions that ran out of servers to try */
	uint64_t bytes_in;  /* client -> upstream, as relayed */
	uint64_t bytes_out; /* upstream -> client */
	uint64_t log_dropped; /* access-log lines lost: the log could not keep up */
	uint64_t closed[SP_STATS_NEND]; /* finished sessions by end reason */
	sp_listener_stats_t listeners[SP_STATS_MAX_LISTENERS];
	sp_server_stats_t servers[SP_STATS_MAX_SERVERS];
} sp_shard_stats_t;

/* Name of a session end reason ("done", "idle_timeout"...), or NULL past the
 * last one; the index into sp_shard_stats_t.closed. */
const char *sp_shard_end_name(unsigned end);

/* Messages a shard writes to the supervisor's notify pipe (atomic: small). */
typedef struct {
	uint32_t slot;
	uint32_t gen;
	uint32_t event; /* SP_SHARD_EV_* */
	int32_t err;    /* negative errno for SP_SHARD_EV_FAILED */
} sp_shard_msg_t;

/* CLOSED: draining, this shard has closed its copies of the listening
 * sockets and accepts nothing more (a reload is complete only once every
 * old shard has said so). */
enum { SP_SHARD_EV_READY = 1, SP_SHARD_EV_FAILED = 2, SP_SHARD_EV_CLOSED = 3 };

typedef struct {
	const sp_conf_t *conf;
	uint32_t slot;
	uint32_t nslots; /* shards in this generation */
	uint32_t gen;
	int cpu;       /* CPU to pin to, -1 for none */
	/* For each conf listener, the sockets this shard accepts on: its own
	 * slot's socket, plus the sockets of slots no shard serves after the
	 * number of shards shrank (so nothing queued there is stranded). */
	int listen_fds[SP_SHARD_MAX_LISTENERS][SP_SHARD_MAX_FDS_PER_LISTENER];
	unsigned nlisten_fds[SP_SHARD_MAX_LISTENERS];
	uint32_t max_sessions; /* this shard's share of limits.max_connections */
	sp_loop_backend_t io;  /* the event loop backend the supervisor chose */
	int notify_fd;         /* write end of the supervisor's notify pipe */
	/* The supervisor's pid, read before the fork: a shard whose parent is
	 * no longer this pid was orphaned, maybe before PR_SET_PDEATHSIG was
	 * set (0: take getppid() at start, racy). */
	pid_t sup_pid;
	sp_shard_stats_t *stats;
	uint32_t *steer_load; /* shared active-session counters for least_conn, or NULL */
	/* Health verdicts from the supervisor (1 = down) and the shards' passive
	 * report (consecutive connect failures), per server, numbered across
	 * upstreams in order. */
	const uint8_t *server_down;
	uint32_t *server_fails;
	/* Run-time control per server, numbered the same way (shard/balance.h):
	 * operator state, weight and the resolved address; NULL: the file's. */
	const sp_server_ctl_t *server_ctl;
	/* The config's user/group: after its ring is set up and before it
	 * accepts anything, the shard drops to them (setgroups, setgid, setuid). */
	bool drop_user, drop_group;
	uid_t uid;
	gid_t gid;
	int access_fd;    /* where access-log lines go (stderr or log.access_log's file) */
	bool access_sock; /* access_fd is a socket: send(MSG_DONTWAIT) never blocks */
} sp_shard_args_t;

/* Descriptors a shard may hold, for the supervisor's RLIMIT_NOFILE budget:
 * per session (client and upstream sockets, plus with splice or auto a pipe
 * of two descriptors per direction while bytes sit in it: 6), and on top of
 * its sessions (the idle pipe pool, SP_SHARD_IDLE_PIPES pipes, the listening
 * sockets, the ring, signalfd, log and notify descriptors). */
#define SP_SHARD_IDLE_PIPES 256
unsigned sp_shard_fds_per_session(const sp_conf_t *conf);
unsigned sp_shard_fds_reserve(const sp_conf_t *conf);

/* Run the shard until it has drained after SIGTERM; returns the exit code. */
int sp_shard_main(const sp_shard_args_t *args);

#endif
