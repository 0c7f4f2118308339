/* health: active TCP connect checks of upstream servers, run by the
 * supervisor (never by shards), plus the passive signal shards give: their
 * consecutive connect failures. The verdict lives in shared memory that the
 * shards' balancers read: one byte per server, 1 = down. */
#ifndef SP_HEALTH_H
#define SP_HEALTH_H

#include <poll.h>
#include <stdint.h>

#include "conf/conf.h"
#include "shard/balance.h"

/* Servers are numbered across upstreams: upstream u's server k is
 * conf->upstreams[u].first_server + k. */
#define SP_HEALTH_MAX_SERVERS SP_CONF_MAX_SERVERS

typedef struct sp_health sp_health_t;

/* down and fails are shared-memory arrays of SP_HEALTH_MAX_SERVERS entries.
 * 0 with *out, or -errno with err saying why ("health checks: epoll_create1:
 * Too many open files"); nothing is logged. */
int sp_health_new(sp_health_t **out, const sp_conf_t *conf, uint8_t *down, uint32_t *fails,
		  char *err, size_t errlen);
void sp_health_free(sp_health_t *h);
/* A reload: servers of h that prev also checks (same upstream name, same
 * address) keep their state, so a server known to be down stays down
 * instead of taking traffic again until `fall` new checks fail. */
void sp_health_inherit(sp_health_t *h, const sp_health_t *prev);
uint32_t sp_health_index(const sp_conf_t *conf, size_t upstream);
/* Check the addresses in ctl (the generation's run-time control, indexed
 * as above) instead of the file's: a host name's slots are checked at the
 * address the resolver gave them, empty slots and disabled servers not at
 * all. */
void sp_health_set_ctl(sp_health_t *h, const sp_server_ctl_t *ctl);
/* Server idx got another address (or none): forget what was learnt about
 * the old one; it starts up, as a new server does. */
void sp_health_reset(sp_health_t *h, uint32_t idx);
/* The descriptor to poll while checks are in flight (one, however many
 * servers are checked); returns how many were written (0 or 1). */
int sp_health_pollfds(const sp_health_t *h, struct pollfd *pfds, int max);
/* Milliseconds until sp_health_run should run again: the next check due or
 * timing out, or sooner to look at the shards' passive reports; -1 if no
 * server is checked. */
int sp_health_timeout(const sp_health_t *h);
/* Finish checks that completed or timed out, start due ones. pfds/n are
 * what sp_health_pollfds gave (the checks' own set says which ended). */
void sp_health_run(sp_health_t *h, const struct pollfd *pfds, int n);

#endif
