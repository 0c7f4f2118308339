/* balance: choose a server of an upstream for a new session. State is per
 * shard (share nothing): each shard balances its own connections, which over
 * many connections and a flow-hash spread adds up to the intended weights. */
#ifndef SP_BALANCE_H
#define SP_BALANCE_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include "conf/conf.h"

#define SP_MAX_SERVERS SP_CONF_MAX_UPSTREAM_SERVERS

/* What the operator (admin.socket) made of a server: in rotation, draining
 * (no new sessions; open ones finish; still health-checked) or disabled
 * (no new sessions, open ones finish, not health-checked: maintenance). */
typedef enum { SP_SRV_ENABLED = 0, SP_SRV_DRAINING = 1, SP_SRV_DISABLED = 2 } sp_srv_admin_t;

/* One server's run-time control, in shared memory the supervisor writes and
 * every shard of a generation reads at each pick (so a change is in force
 * for the next connection of every shard, with no message to send). It
 * lives as long as the generation: a shard restarted after a crash reads
 * the same; a reload starts from the file again. Admin state and weight are
 * single aligned words, read relaxed; the address is a multi-word value
 * guarded by a sequence counter (seqlock: odd while being written). */
typedef struct {
	uint32_t seq;
	uint8_t present; /* holds an address (a host name's slot may be empty) */
	uint8_t admin;   /* sp_srv_admin_t */
	uint16_t weight; /* in force: the file's, or the operator's */
	socklen_t len;
	struct sockaddr_storage ss;
} sp_server_ctl_t;

/* Writer side (the supervisor only). */
static inline void sp_server_ctl_set_addr(sp_server_ctl_t *c, const struct sockaddr_storage *ss,
					  socklen_t len)
{
	__atomic_store_n(&c->seq, c->seq + 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	if (ss) {
		if (len > sizeof(c->ss))
			len = sizeof(c->ss);
		memset(&c->ss, 0, sizeof(c->ss));
		memcpy(&c->ss, ss, len);
	}
	c->len = ss ? len : 0;
	__atomic_store_n(&c->present, ss ? 1 : 0, __ATOMIC_RELAXED);
	__atomic_store_n(&c->seq, c->seq + 1, __ATOMIC_RELEASE);
}

/* Reader side: a consistent copy of the address; false if there is none.
 * A write takes a few stores, so a reader retries; the bound only matters
 * if the supervisor died mid-write (the shard then treats the entry as
 * empty instead of spinning until its own end). */
static inline bool sp_server_ctl_addr(const sp_server_ctl_t *c, struct sockaddr_storage *ss,
				      socklen_t *len)
{
	for (unsigned tries = 0; tries < 100000; tries++) {
		uint32_t s1 = __atomic_load_n(&c->seq, __ATOMIC_ACQUIRE);
		if (s1 & 1)
			continue;
		bool present = __atomic_load_n(&c->present, __ATOMIC_RELAXED);
		*len = c->len;
		memcpy(ss, &c->ss, sizeof(*ss));
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&c->seq, __ATOMIC_RELAXED) == s1)
			return present && *len > 0;
	}
	return false;
}

/* A set of servers to leave out (those already tried by this session). */
typedef struct {
	uint64_t bits[SP_MAX_SERVERS / 64];
} sp_server_set_t;

static inline void sp_server_set_add(sp_server_set_t *s, unsigned i) { s->bits[i / 64] |= 1ull << (i % 64); }
static inline bool sp_server_set_has(const sp_server_set_t *s, unsigned i)
{
	return s->bits[i / 64] >> (i % 64) & 1;
}

typedef struct {
	const sp_upstream_t *up;
	int64_t *current; /* smooth weighted round robin (round_robin, least_conn ties) */
	uint32_t *active; /* open sessions per server (least_conn, random_two) */
	uint64_t *key;    /* per server: source_hash identity, from its address text */
	uint64_t rng;     /* xorshift state for random_two */
	/* Run-time control of up's servers (shared memory), or NULL: every
	 * server in rotation with its configured weight. */
	const sp_server_ctl_t *ctl;
} sp_balancer_t;

int sp_balancer_init(sp_balancer_t *b, const sp_upstream_t *up, uint64_t seed);
void sp_balancer_free(sp_balancer_t *b);
/* Pick a server not in `exclude` and in rotation (b->ctl: present and
 * enabled; draining and disabled servers never get a new session), by the
 * weights in force; non-backup servers first, backups only when
 * no non-backup server is eligible. client_hash feeds source_hash. Returns
 * the server index, or -ENOENT when every server is excluded. */
int sp_balancer_pick(sp_balancer_t *b, uint64_t client_hash, const sp_server_set_t *exclude);
void sp_balancer_connected(sp_balancer_t *b, unsigned server);
void sp_balancer_released(sp_balancer_t *b, unsigned server);

/* A 64-bit hash of a client address (its IP only, not the port), for
 * source_hash and routing decisions. */
uint64_t sp_hash_addr(const struct sockaddr *sa);

#endif
