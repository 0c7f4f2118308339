/* PROXY protocol v1 (text) and v2 (binary), per the HAProxy specification
 * (doc/proxy-protocol.txt): a strict parser and an encoder. */
#ifndef SP_SHARD_PROXYPROTO_H
#define SP_SHARD_PROXYPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "shard/parse.h"

/* Longest header we accept: v1 is at most 107 bytes; v2 is 16 + len, and we
 * bound len (TLVs included) so a peek buffer always holds a whole header. */
#define SP_PROXYPROTO_V1_MAX 107
#define SP_PROXYPROTO_V2_MAX (16 + 4096)

/* Parse a header at the start of buf[0..len). On SP_PARSE_OK, *hlen is the
 * header length (to consume), *src / *dst the client / proxy addresses, and
 * *local is true for v2 LOCAL or v1 "UNKNOWN" (addresses then left zeroed:
 * keep the connection's own). Any deviation from the spec is INVALID. */
sp_parse_t sp_proxyproto_parse(const uint8_t *buf, size_t len, size_t *hlen,
			       struct sockaddr_storage *src, struct sockaddr_storage *dst,
			       bool *local);

/* Encode a version 1 or 2 header for src -> dst (both AF_INET or both
 * AF_INET6; mixed families are mapped to v6, anything else is UNKNOWN/LOCAL).
 * Returns the length written, or 0 if cap is too small. */
size_t sp_proxyproto_build(int version, const struct sockaddr *src, const struct sockaddr *dst,
			   uint8_t *out, size_t cap);

#endif
