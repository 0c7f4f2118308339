/* route: first-match routing of a new connection (SPEC §4 routes). */
#ifndef SP_ROUTE_H
#define SP_ROUTE_H

#include <stdbool.h>
#include <sys/socket.h>

#include "conf/conf.h"

/* Index of the first route of l that matches the client address and (when
 * known) the TLS server name, or -1. A route with an sni list never matches a
 * connection whose server name is unknown (sni == NULL). */
int sp_route_pick(const sp_listener_t *l, const struct sockaddr *client, const char *sni);
/* Does any route of l need the TLS ClientHello to decide? */
bool sp_route_needs_sni(const sp_listener_t *l);

#endif
