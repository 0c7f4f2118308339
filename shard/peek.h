/* peek: the phase between accept and routing for listeners that need the
 * client's first bytes: a PROXY header (accept_proxy_protocol, consumed)
 * and a TLS ClientHello (routes on sni, left on the socket for the
 * upstream). It ends in sp_session_route, or the session fails. */
#ifndef SP_SHARD_PEEK_H
#define SP_SHARD_PEEK_H

#include <stdbool.h>
#include <stdint.h>

#include "conf/conf.h"
#include "runtime/loop.h"
#include "shard/context.h"

/* Does a connection on l wait for its first bytes before it is routed? */
bool sp_peek_needed(const sp_listener_t *l);
/* s was just accepted on such a listener: wait for its bytes, at most the
 * listener's peek_timeout_ms. */
void sp_peek_start(sp_shard_t *sh, sp_session_t *s);
/* The session timer fired while s is in SP_SESSION_PEEK. */
void sp_peek_on_timer(sp_shard_t *sh, sp_session_t *s);
/* Loop handler (SP_OP_PEEK): the client's socket is readable. */
void sp_peek_on_ready(void *ctx, unsigned op, uint32_t slot, const sp_completion_t *c);

#endif
