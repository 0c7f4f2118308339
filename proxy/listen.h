/* listen: listener groups. For each listen address the supervisor holds one
 * SO_REUSEPORT socket per shard slot, for its whole life: a restarted shard
 * or a new generation inherits the same sockets, so nothing queued in an
 * accept backlog is ever reset by a restart or a reload. */
#ifndef SP_LISTEN_H
#define SP_LISTEN_H

#include <stdbool.h>
#include <stddef.h>

#include "conf/conf.h"

#define SP_MAX_SLOTS SP_CONF_MAX_WORKERS
#define SP_MAX_GROUPS 64

typedef struct {
	sp_addr_t addr;
	int fds[SP_MAX_SLOTS];
	unsigned nfds;   /* sockets opened: slots 0..nfds-1 */
	bool in_use;     /* by the current generation's conf */
	bool retiring;   /* gone from the conf: close once the old generation is gone */
	bool attached;   /* steering program attached */
} sp_lgroup_t;

/* Find the group for addr, or NULL. */
sp_lgroup_t *sp_lgroup_find(sp_lgroup_t *groups, unsigned n, const sp_addr_t *addr);
/* Make sure g has sockets for slots 0..nslots-1, opening what is missing.
 * `where` names the listener in errors ("listeners[1].listen 0.0.0.0:80").
 * On failure, err holds the whole line, e.g.
 * "listeners[1].listen 0.0.0.0:80: bind: Permission denied". */
int sp_lgroup_grow(sp_lgroup_t *g, unsigned nslots, const char *where, char *err, size_t errlen);
void sp_lgroup_close(sp_lgroup_t *g);
/* Close the sockets of slots nfds.. again: a reload that failed after
 * opening them must leave nothing bound that no shard accepts on (a
 * listening socket in a reuseport group takes its share of new connections
 * whether or not anyone accepts). nfds 0 closes the group. */
void sp_lgroup_shrink(sp_lgroup_t *g, unsigned nfds);

#endif
