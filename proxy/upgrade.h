/* upgrade: binary upgrade on SIGUSR2, as nginx's USR2 and HAProxy's -x do
 * it. The running supervisor forks and execs the binary at the path it was
 * started from, handing it the listening sockets (and the admin listener)
 * as inherited descriptors named in the environment, plus one end of a
 * socketpair. The new supervisor adopts those sockets instead of binding
 * new ones (so no accept queue is ever closed), validates its
 * configuration, starts its shards, and only then writes "ready" on the
 * pair; the old one then drains its shards, and once none of them accepts
 * any more (the upgrade is complete) writes "done" back, and exits when
 * they are gone. A new binary that
 * exits, closes the pair or stays silent past SP_UPGRADE_TIMEOUT_MS changes
 * nothing: the old one kills it if need be and keeps serving.
 *
 * Steering: a socket sits in one REUSEPORT_SOCKARRAY only, so the new
 * supervisor gets the old one's BPF maps (socket arrays, configuration,
 * load counters), loads its own program on them and attaches it, which
 * replaces the old program in each reuseport group at once. If the new one
 * fails after that, the old one attaches its own program again.
 *
 * admin.socket: the new supervisor serves on the same Unix socket when its
 * file names the same path (and that path is still this socket), so the
 * path never points at a socket nobody serves, also when the new binary
 * fails; the file is the new supervisor's from then on. A path it does not
 * serve any more it removes once it is ready.
 *
 * Environment from the old supervisor to the new one (the new one removes
 * it once read, so its own children never see it):
 *   SHARDPROXY_LISTEN_FDS=0:3,4;1:5,6  listening sockets: per listen address
 *                                   (';'), its group index, then its sockets in
 *                                   slot order
 *   SHARDPROXY_STEER_FDS=cfg=9,load=10,0=11,1=12  the steering maps, with
 *                                   each group's socket array by group index
 *   SHARDPROXY_ADMIN_FD=7           the admin endpoint's listener (optional)
 *   SHARDPROXY_ADMIN_SOCKET=13:2411:/run/shardproxy/admin.sock
 *                                   admin.socket's listener, the inode of
 *                                   its file, its path (optional)
 *   SHARDPROXY_UPGRADE_FD=8         the pair: write "ready\n" once serving,
 *                                   then read "done\n" (or its end closing)
 */
#ifndef SP_UPGRADE_H
#define SP_UPGRADE_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "bpf/steer.h"
#include "proxy/listen.h"

#define SP_UPGRADE_TIMEOUT_MS 30000

#define SP_UPGRADE_ENV_LISTEN "SHARDPROXY_LISTEN_FDS"
#define SP_UPGRADE_ENV_ADMIN "SHARDPROXY_ADMIN_FD"
#define SP_UPGRADE_ENV_REPORT "SHARDPROXY_UPGRADE_FD"
#define SP_UPGRADE_ENV_STEER "SHARDPROXY_STEER_FDS"
#define SP_UPGRADE_ENV_ADMIN_UNIX "SHARDPROXY_ADMIN_SOCKET"

/* The binary's path as it was started, made absolute against the working
 * directory (or looked up in PATH when argv0 has no '/'), without resolving
 * symbolic links: a package upgrade replaces the file at that path (and may
 * move a symlink to a new version), while /proc/self/exe stays the old
 * inode. 0, or -errno with err saying why. */
int sp_upgrade_exe_path(const char *argv0, char *out, size_t outlen, char *err, size_t errlen);

/* ---- the old supervisor's side ---- */

typedef struct {
	pid_t pid;	   /* the new supervisor; 0: no upgrade under way */
	int fd;		   /* our end of the pair; -1 when closed */
	uint64_t deadline; /* monotonic ms */
	char buf[256];	   /* what it wrote so far */
	size_t len;
} sp_upgrade_t;

/* What the old supervisor hands over. */
typedef struct {
	const sp_lgroup_t *groups;
	unsigned ngroups;
	int admin_fd;		     /* admin.listen's socket; -1: none */
	int unix_fd;		     /* admin.socket's; -1: none */
	const char *unix_path;	     /* the file it serves at */
	unsigned long unix_ino;	     /* that file's inode */
	const sp_steer_maps_t *maps; /* NULL: no steering program */
} sp_upgrade_give_t;

/* Fork and exec exe with argv, handing it what give names (and no other
 * descriptor). 0 with u filled, or -errno with err saying why. */
int sp_upgrade_start(sp_upgrade_t *u, const char *exe, char *const argv[],
		     const sp_upgrade_give_t *give, uint64_t now_ms, char *err, size_t errlen);

typedef enum {
	SP_UPGRADE_WAITING, /* nothing decided yet */
	SP_UPGRADE_READY,   /* the new supervisor serves */
	SP_UPGRADE_FAILED,  /* it said why, or closed the pair without "ready" */
} sp_upgrade_result_t;

/* Read what the new supervisor wrote on the pair (call when it polls
 * readable). On SP_UPGRADE_FAILED, why says what it reported. */
sp_upgrade_result_t sp_upgrade_read(sp_upgrade_t *u, char *why, size_t whylen);
/* Forget the upgrade (closes the pair). */
void sp_upgrade_end(sp_upgrade_t *u);
/* The new supervisor said "ready": the upgrade is no longer under way (u
 * ends, u->pid 0), but the pair stays open, returned, to tell it when the
 * hand-over is complete (sp_upgrade_say_done). */
int sp_upgrade_keep_pair(sp_upgrade_t *u);
/* Tell the new supervisor "done": none of our shards accepts a connection
 * any more (or one was given up on), so every new one is the new binary's.
 * Closes the pair. */
void sp_upgrade_say_done(int fd);

/* A new binary that failed and has not been reaped yet. The old
 * supervisor never waits for it in place: it goes on serving, reaps it
 * from its loop like any child (SIGCHLD) and logs why it failed together
 * with how it ended, once. */
typedef struct {
	pid_t pid;	  /* 0: none */
	uint64_t kill_at; /* SIGKILL it at this time if it is still there; 0: sent */
	char why[256];	  /* what failed, for the line logged when it is reaped */
} sp_upgrade_failed_t;

/* A failed binary's time to exit on its own after it said it failed (or
 * closed the pair), so the log can say how it ended; then it is killed. */
#define SP_UPGRADE_EXIT_GRACE_MS 2000

/* The upgrade in u failed (why): end it (the pair is closed, u->pid 0, so
 * a new one may be asked for once f is clear) and remember its process in
 * f until it is reaped. kill_now: SIGKILL it at once (a stop, a timeout)
 * rather than give it SP_UPGRADE_EXIT_GRACE_MS from now_ms. */
void sp_upgrade_abandon(sp_upgrade_t *u, sp_upgrade_failed_t *f, const char *why, bool kill_now,
			uint64_t now_ms);
/* Is its SIGKILL due at now_ms? Sends it (once) when it is: true. */
bool sp_upgrade_kill_due(sp_upgrade_failed_t *f, uint64_t now_ms);

/* ---- the new supervisor's side ---- */

typedef struct {
	int report_fd; /* -1: not started by an upgrade */
	int admin_fd;  /* -1: none handed over */
	int unix_fd;   /* admin.socket's; -1: none handed over, or adopted */
	unsigned long unix_ino;
	char unix_path[108];
	bool have_maps;
	sp_steer_maps_t maps; /* the caller closes them once loaded on */
} sp_upgrade_inherited_t;

/* Does the listening socket fd have address addr? */
bool sp_upgrade_same_addr(int fd, const sp_addr_t *addr);

/* Adopt what an upgrading supervisor handed over: each listen address's
 * sockets become the group at the same index (its address read back from
 * the socket); the admin listeners, the steering maps and the pair are
 * returned in in. Without the environment, sets
 * in->report_fd = in->admin_fd = in->unix_fd = -1 and returns 0. -errno
 * with err saying which descriptor is not what the environment claims. */
int sp_upgrade_inherit(sp_lgroup_t *groups, unsigned *ngroups, unsigned maxgroups,
		       sp_upgrade_inherited_t *in, char *err, size_t errlen);
/* Is in's admin.socket the one to serve at path: the same path, and the
 * file there still that socket? */
bool sp_upgrade_unix_serves(const sp_upgrade_inherited_t *in, const char *path);
/* Tell the old supervisor: "ready", or "failed: why". A failure closes the
 * pair; on ready it stays open (in->report_fd, non-blocking) for the old
 * one's "done" (sp_upgrade_read_done). Ready, with an admin.socket handed
 * over that we do not serve (our file moved or dropped it): its file is
 * removed (if it is still that socket), as the old supervisor, which drains
 * now, leaves it to us. */
void sp_upgrade_report(sp_upgrade_inherited_t *in, bool ready, const char *why);

typedef enum {
	SP_UPGRADE_HANDING_OVER, /* nothing said yet */
	SP_UPGRADE_DONE,	 /* "done": none of its shards accepts any more */
	SP_UPGRADE_GONE,	 /* it closed the pair without saying so */
} sp_upgrade_done_t;

/* After "ready": read what the old supervisor says on the pair fd (call
 * when it polls readable). */
sp_upgrade_done_t sp_upgrade_read_done(int fd);

#endif
