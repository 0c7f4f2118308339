/* admin: the supervisor's small HTTP/1.0 endpoint (SPEC §6): GET /stats
 * (JSON), /metrics (Prometheus text), /healthz. It runs inside the
 * supervisor's poll loop, non-blocking, never on the data path. */
#ifndef SP_ADMIN_H
#define SP_ADMIN_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>

#include "conf/conf.h"

#define SP_ADMIN_MAX_CLIENTS 16

/* Fill *body (malloc'd, caller frees) for method and path; return the HTTP
 * status. writable: the request came on admin.socket, the only place that
 * takes writes (on the TCP port a write never reaches this: 403). */
typedef int (*sp_admin_render_fn)(void *ctx, const char *method, const char *path, bool writable,
				  char **body, size_t *len, const char **content_type);

typedef struct sp_admin sp_admin_t;

int sp_admin_open(sp_admin_t **out, const sp_addr_t *addr, char *err, size_t errlen);
/* admin.socket: a Unix socket at path, mode 0600 (whoever can reach it can
 * take servers out of rotation), serving the same GETs plus writes. A
 * socket file already at path is replaced atomically (stale, or an old
 * supervisor's during a binary upgrade); any other file is an error. */
int sp_admin_open_unix(sp_admin_t **out, const char *path, char *err, size_t errlen);
/* Serve on a listening socket a binary upgrade handed over; takes fd.
 * path NULL: the admin.listen socket; else admin.socket's socket, bound to
 * the file path with inode ino: it takes writes, and this process now owns
 * the file (removes it when it closes, as if it had made it). 0 or
 * -ENOMEM. */
int sp_admin_adopt(sp_admin_t **out, int fd, const char *path, unsigned long ino);
/* What a binary upgrade hands over: the listening socket, and for
 * admin.socket the file it serves at and that file's inode (*path NULL for
 * admin.listen). a NULL: *fd = -1. */
void sp_admin_handover(const sp_admin_t *a, int *fd, const char **path, unsigned long *ino);
/* A new binary took the socket over: closing no longer removes the file. */
void sp_admin_disown(sp_admin_t *a);
/* Closes; the Unix socket's file is removed by the process that made it,
 * if it is still the one it made (a forked shard closing its copy, or an
 * old supervisor replaced by a new one, leaves it). */
void sp_admin_close(sp_admin_t *a);
/* The descriptors to poll (listener first); returns how many were written. */
int sp_admin_pollfds(const sp_admin_t *a, struct pollfd *pfds, int max);
/* Serve whatever the poll found ready; drop clients past their deadline. */
void sp_admin_serve(sp_admin_t *a, const struct pollfd *pfds, int n, sp_admin_render_fn render,
		    void *ctx);

#endif
