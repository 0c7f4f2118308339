/* resolver: asynchronous host-name look-ups for the supervisor's poll loop,
 * on c-ares (the library curl and Node use). The supervisor never blocks on
 * a name: a look-up is started, its sockets join the loop's poll set, and
 * the answer arrives as a callback from sp_resolver_process().
 *
 *   sp_resolver_new(&r, NULL, 0, err, sizeof(err));       resolv.conf's nameservers
 *   sp_resolver_lookup(r, "db.internal", 5432, on_addrs, ctx);
 *   loop: n = sp_resolver_pollfds(r, pfd, max); t = sp_resolver_timeout(r);
 *         poll(...); sp_resolver_process(r, pfd, n); */
#ifndef SP_RESOLVER_H
#define SP_RESOLVER_H

#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "conf/conf.h"

/* At most this many addresses are kept from one answer (sorted, deduped). */
#define SP_RESOLVER_MAX_ADDRS 16
/* Per-query timeout and attempts per nameserver: a nameserver that never
 * answers fails a look-up after about 1 + 2 s (c-ares doubles the timeout
 * at each try), so a dead resolver delays a reload by 3 s at most. */
#define SP_RESOLVER_TIMEOUT_MS 1000
#define SP_RESOLVER_TRIES 2

typedef struct sp_resolver sp_resolver_t;

/* The answer to one look-up. err is 0 with n >= 1 addresses (port filled
 * in, IPv4 first, then IPv6, each in ascending order), or a negative errno
 * with why naming the cause (c-ares' own text: "Domain name not found",
 * "Timeout while contacting DNS servers"...) and n == 0. -ECANCELED when
 * the resolver is freed with the look-up in flight. */
typedef void (*sp_resolve_fn)(void *arg, int err, const char *why,
			      const struct sockaddr_storage *addrs, size_t n);

/* servers: the nameservers to ask (numeric host:port); n == 0 takes
 * /etc/resolv.conf's. Search domains are not applied: a name in the
 * configuration is meant as written. */
int sp_resolver_new(sp_resolver_t **out, const sp_addr_t *servers, size_t n, char *err,
		    size_t errlen);
/* Every look-up in flight gets its callback with -ECANCELED first. */
void sp_resolver_free(sp_resolver_t *r);
int sp_resolver_lookup(sp_resolver_t *r, const char *host, uint16_t port, sp_resolve_fn fn,
		       void *arg);
/* Look-ups in flight. */
unsigned sp_resolver_pending(const sp_resolver_t *r);
/* The sockets to poll; returns how many were written (at most max). */
int sp_resolver_pollfds(const sp_resolver_t *r, struct pollfd *pfds, int max);
/* Milliseconds until c-ares must look at its timeouts; -1: nothing pending. */
int sp_resolver_timeout(const sp_resolver_t *r);
/* Read what the poll found ready and run timeouts; callbacks fire here. */
void sp_resolver_process(sp_resolver_t *r, const struct pollfd *pfds, int n);

#endif
