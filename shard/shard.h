/* shard: one worker process. It runs one io_uring loop over the listening
 * sockets of its slot, and relays every connection it accepts. The
 * supervisor (proxy/) forks it with everything it needs in sp_shard_args_t. */
#ifndef SP_SHARD_H
#define SP_SHARD_H

#include <stdint.h>

#include "conf/conf.h"

#define SP_SHARD_MAX_FDS_PER_LISTENER 8
#define SP_SHARD_MAX_LISTENERS 64

/* Counters a shard publishes in shared memory; the supervisor only reads
 * them. One writer per struct, so plain stores suffice (aligned 64-bit
 * stores are atomic on every target we build for). */
typedef struct {
	uint64_t accepted;
	uint64_t active;
	uint64_t refused;  /* closed at once: over max_connections or no route */
	uint64_t no_route;
	uint64_t connect_failed;
	uint64_t bytes_in;  /* client -> upstream */
	uint64_t bytes_out; /* upstream -> client */
	uint64_t pid;
	uint64_t gen;
} sp_shard_stats_t;

/* Messages a shard writes to the supervisor's notify pipe (atomic: small). */
typedef struct {
	uint32_t slot;
	uint32_t gen;
	uint32_t event; /* SP_SHARD_EV_* */
	int32_t err;    /* negative errno for SP_SHARD_EV_FAILED */
} sp_shard_msg_t;

enum { SP_SHARD_EV_READY = 1, SP_SHARD_EV_FAILED = 2 };

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
	int notify_fd;         /* write end of the supervisor's notify pipe */
	sp_shard_stats_t *stats;
	uint32_t *steer_load; /* shared active-session counters for least_conn, or NULL */
	/* Health verdicts from the supervisor (1 = down) and the shards' passive
	 * report (consecutive connect failures), per server, numbered across
	 * upstreams in order. */
	const uint8_t *server_down;
	uint32_t *server_fails;
} sp_shard_args_t;

/* Run the shard until it has drained after SIGTERM; returns the exit code. */
int sp_shard_main(const sp_shard_args_t *args);

#endif
