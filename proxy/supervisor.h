/* supervisor: the parent process. It owns the listening sockets and the
 * steering program, forks one shard per slot, restarts shards that die,
 * reloads the configuration on SIGHUP as a new generation of shards, and
 * drains everything on SIGTERM. */
#ifndef SP_SUPERVISOR_H
#define SP_SUPERVISOR_H

#include "conf/conf.h"

#include <limits.h>

typedef struct {
	const char *conf_path;
	int workers_override; /* 0: use the file's */
	const char *pidfile;
	/* For a binary upgrade (SIGUSR2): the command line to run again, and
	 * the binary's path as started (empty: exe_err says why there is none). */
	char **argv;
	char exe[PATH_MAX];
	char exe_err[256];
} sp_supervisor_opts_t;

/* Takes ownership of conf. Returns the process exit code: 0 after a clean
 * stop, 2 when start-up fails (the reason is logged in one line). */
int sp_supervisor_run(const sp_supervisor_opts_t *opts, sp_conf_t *conf);

/* The number of shards a conf asks for, with "auto" resolved to the CPUs this
 * process may run on. */
unsigned sp_supervisor_workers(const sp_conf_t *conf, int override);

#endif
