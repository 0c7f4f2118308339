/* control: the operator's run-time server control (SPEC §6, admin.socket):
 * drain, disable, enable and set the weight of a server, written into the
 * generation's shared sp_server_ctl_t array that every shard's balancer
 * reads at each pick. HTTP API (Unix socket only; docs/operations.md):
 *
 *   POST /servers/<upstream>/<server>/drain
 *   POST /servers/<upstream>/<server>/disable
 *   POST /servers/<upstream>/<server>/enable
 *   POST /servers/<upstream>/<server>/weight/<1..256>
 *
 * <server> is the server's index in the file's "servers" array (0, 1...),
 * its address as written ("10.0.0.5:80", "db.internal:5432": a name means
 * all its addresses) or one resolved address of a name ("10.0.0.7:5432"). */
#ifndef SP_CONTROL_H
#define SP_CONTROL_H

#include <stdio.h>

#include "conf/conf.h"
#include "shard/balance.h"

/* A new generation's control: every server enabled at its configured
 * weight; IP addresses present, host names' slots empty until resolved. */
void sp_control_init(const sp_conf_t *conf, sp_server_ctl_t *ctl);
/* Serve one write: apply it and print the servers it changed as JSON to
 * out, or print the reason it was refused (nothing changed). Returns the
 * HTTP status: 200, 400 (malformed), 404 (no such upstream or server), 405. */
int sp_control_request(const sp_conf_t *conf, sp_server_ctl_t *ctl, const char *method,
		       const char *path, FILE *out);
const char *sp_control_admin_name(unsigned admin);
/* "10.0.0.7:5432" / "[fd00::7]:5432" for a resolved address. */
void sp_control_addr_text(const struct sockaddr_storage *ss, char *buf, size_t len);

#endif
