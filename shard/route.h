/* route: first-match routing of a new connection (SPEC §4 routes). */
#ifndef SP_ROUTE_H
#define SP_ROUTE_H

#include <stdbool.h>
#include <sys/socket.h>

#include "conf/conf.h"

/* Index of the first route of l that matches the client address and (when
 * known) the TLS server name, or -ENOENT if none does. A route with an sni
 * list never matches a connection whose server name is unknown (sni == NULL). */
int sp_route_pick(const sp_listener_t *l, const struct sockaddr *client, const char *sni);
/* Does any route of l need the TLS ClientHello to decide? */
bool sp_route_needs_sni(const sp_listener_t *l);

/* Does addr (AF_INET/AF_INET6 sockaddr, v4-mapped v6 treated as v4) fall in cidr? */
bool sp_cidr_match(const sp_cidr_t *cidr, const struct sockaddr *addr);
/* Does host name (any case) match pattern (exact, or "*.suffix" = any subdomain)? */
bool sp_sni_match(const char *pattern, const char *host);

#endif
