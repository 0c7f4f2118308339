/* stats: the supervisor's view of the counters shards publish. Pure
 * functions over plain data (no process state, no I/O), so the one promise
 * they keep - totals never go backwards across a shard's death, a restart or
 * a reload - is unit tested (tests/unit/test_stats.c).
 *
 * A shard's slot of sp_shard_stats_t lives as long as the shard. When the
 * shard is gone, its counters are folded into a history (by slot index, and
 * by listener and server name, which outlive the index a reload may change)
 * and the slot is zeroed for the next shard. A view adds the live slots of
 * the generations still running to that history. */
#ifndef SP_STATS_H
#define SP_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf/conf.h"
#include "proxy/listen.h"
#include "shard/shard.h"

/* A slot's counters, summed; `active` is a gauge, added for live shards only. */
typedef struct {
	uint64_t accepted, active, refused, no_route, connect_failed, bytes_in, bytes_out,
	    log_dropped;
	uint64_t closed[SP_STATS_NEND];
} sp_slot_totals_t;

typedef struct {
	char name[SP_CONF_NAME_MAX];
	sp_listener_stats_t st;
} sp_lrow_t;

typedef struct {
	char upstream[SP_CONF_NAME_MAX];
	char server[sizeof(((sp_addr_t *)0)->text)];
	sp_server_stats_t st;
} sp_srow_t;

/* Per-listener and per-server rows, by name, in first-seen order. */
typedef struct {
	sp_lrow_t *l;
	size_t nl, capl;
	sp_srow_t *s;
	size_t ns, caps;
} sp_stat_table_t;

/* What shards that are gone left behind. */
typedef struct {
	sp_slot_totals_t slot[SP_MAX_SLOTS];
	sp_stat_table_t t;
} sp_stats_history_t;

/* One running generation as the aggregation sees it: its conf (for the
 * listener and server names behind each index) and its slots' counters. */
typedef struct {
	const sp_conf_t *conf;
	const sp_shard_stats_t *slots; /* [nslots] */
	unsigned nslots;
} sp_stats_gen_t;

/* History plus the live generations: every number the admin endpoint reports. */
typedef struct {
	sp_slot_totals_t per_slot[SP_MAX_SLOTS]; /* by slot index, across generations */
	unsigned nslots;			 /* slots with a shard or history */
	sp_slot_totals_t total;
	sp_stat_table_t t;
} sp_stats_view_t;

/* Add a shard's counters to t (its `active` gauge too when live). */
void sp_stats_totals_add(sp_slot_totals_t *t, const sp_shard_stats_t *st, bool live);
/* Fold slot `slot` of g into the history. The caller zeroes the slot after.
 * 0, or -ENOMEM (the slot's per-name detail is then lost; its totals are not). */
int sp_stats_retire(sp_stats_history_t *h, const sp_stats_gen_t *g, unsigned slot);
void sp_stats_history_free(sp_stats_history_t *h);

/* Build v from the history and the live generations gens[0..n) (rows of
 * earlier generations lead). Allocates v->t: free it with sp_stats_view_free.
 * 0 or -ENOMEM. After this, reading v never inserts or allocates. */
int sp_stats_view(sp_stats_view_t *v, const sp_stats_history_t *h, const sp_stats_gen_t *gens,
		  unsigned n);
void sp_stats_view_free(sp_stats_view_t *v);

/* Look a row up, without inserting: NULL if absent. */
const sp_lrow_t *sp_stats_find_listener(const sp_stat_table_t *t, const char *name);
const sp_srow_t *sp_stats_find_server(const sp_stat_table_t *t, const char *upstream,
				      const char *server);

#endif
