/* balance: choose a server of an upstream for a new session. State is per
 * shard (share nothing): each shard balances its own connections, which over
 * many connections and a flow-hash spread adds up to the intended weights. */
#ifndef SP_BALANCE_H
#define SP_BALANCE_H

#include <stdbool.h>
#include <stdint.h>

#include "conf/conf.h"

#define SP_MAX_SERVERS 256

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
} sp_balancer_t;

int sp_balancer_init(sp_balancer_t *b, const sp_upstream_t *up, uint64_t seed);
void sp_balancer_free(sp_balancer_t *b);
/* Pick a server not in `exclude`; non-backup servers first, backups only when
 * no non-backup server is eligible. client_hash feeds source_hash. Returns
 * the server index or -1 when every server is excluded. */
int sp_balancer_pick(sp_balancer_t *b, uint64_t client_hash, const sp_server_set_t *exclude);
void sp_balancer_connected(sp_balancer_t *b, unsigned server);
void sp_balancer_released(sp_balancer_t *b, unsigned server);

/* A 64-bit hash of a client address (its IP only, not the port), for
 * source_hash and routing decisions. */
uint64_t sp_hash_addr(const struct sockaddr *sa);

#endif
