/* Read the server_name of a TLS ClientHello without terminating TLS. */
#ifndef SP_SHARD_TLS_SNI_H
#define SP_SHARD_TLS_SNI_H

#include <stddef.h>
#include <stdint.h>

#include "shard/parse.h"

/* buf[0..len) is what the client sent so far (one or more TLS records).
 * SP_PARSE_OK: a complete ClientHello was read; sni holds the host_name,
 * lower-cased and NUL-terminated, or "" if the hello carries none.
 * SP_PARSE_INCOMPLETE: valid so far, more bytes needed.
 * SP_PARSE_INVALID: not a TLS handshake, malformed, or a name longer than
 * cap-1 or not a valid DNS name. */
sp_parse_t sp_tls_sni_parse(const uint8_t *buf, size_t len, char *sni, size_t cap);

#endif
