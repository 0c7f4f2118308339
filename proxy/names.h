/* names: the upstream servers written with a host name, for one
 * generation. Looks them up on the resolver (never blocking), writes each
 * answer into the generation's shared control array (one address per slot,
 * SP_CONF_DNS_SLOTS per name), re-resolves every resolve_interval_ms, keeps
 * the last good addresses when a look-up fails, and counts both.
 *
 * Shards learn a change through the shared array they already read at each
 * pick: new connections go to the new addresses at once, open sessions keep
 * theirs, and nothing is forked or reloaded (docs/operations.md explains why
 * this and not a new generation). */
#ifndef SP_NAMES_H
#define SP_NAMES_H

#include <poll.h>
#include <stdbool.h>
#include <stdint.h>

#include "conf/conf.h"
#include "proxy/health.h"
#include "shard/balance.h"

typedef struct sp_names sp_names_t;

typedef struct {
	uint64_t lookups;  /* answered look-ups, failed ones included */
	uint64_t failures; /* look-ups that failed (the last good addresses stayed) */
	const char *last_error; /* of the last failure, or NULL */
} sp_names_stats_t;

/* ctl: the generation's control array (sp_control_init'd). The resolver
 * asks conf->resolvers, or /etc/resolv.conf's nameservers. */
int sp_names_new(sp_names_t **out, const sp_conf_t *conf, sp_server_ctl_t *ctl, char *err,
		 size_t errlen);
void sp_names_free(sp_names_t *n);
/* Start the first look-up of every name (load, reload). */
void sp_names_start(sp_names_t *n);
/* Every first look-up has been answered (or failed). */
bool sp_names_settled(const sp_names_t *n);
/* Once settled: a name whose first look-up failed is fatal when its upstream
 * does not re-resolve (nginx refuses such a file); one whose upstream sets
 * resolve_interval_ms takes prev's last good addresses for the same
 * upstream and name, if prev has them, or starts empty and is retried
 * (HAProxy's init-addr last,none). Writes the fatal errors (with the
 * file's position) to errs, the others as warnings to the log; returns how
 * many were fatal. prev may be NULL. */
size_t sp_names_first_errors(sp_names_t *n, const sp_names_t *prev, sp_conf_errors_t *errs);
/* Health checks to reset when a slot's address changes. */
void sp_names_set_health(sp_names_t *n, sp_health_t *h);
int sp_names_pollfds(const sp_names_t *n, struct pollfd *pfds, int max);
/* Milliseconds until the resolver or a re-resolution needs a turn; -1: never. */
int sp_names_timeout(const sp_names_t *n);
/* Answer what the poll found, start the re-resolutions that are due. */
void sp_names_run(sp_names_t *n, const struct pollfd *pfds, int npfd);
/* Poll only the resolver until settled or timeout_ms: for -t and the first
 * start, when there is nothing else to serve. */
void sp_names_wait(sp_names_t *n, int timeout_ms);
/* -t and the first start (nothing is served yet, so waiting blocks no
 * one): start, wait up to SP_NAMES_START_WAIT_MS, then first_errors with
 * no previous generation. */
#define SP_NAMES_START_WAIT_MS 10000
size_t sp_names_resolve_now(sp_names_t *n, sp_conf_errors_t *errs);
/* Per upstream; false if the upstream has no host names. */
bool sp_names_stats(const sp_names_t *n, size_t upstream, sp_names_stats_t *st);

#endif
