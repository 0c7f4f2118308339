/* pidfile: the --pidfile the supervisor writes at start and removes at exit.
 * It lives in run directories other users may write to (or that a service
 * manager recreates), so it is never opened through a symbolic link, and it
 * is removed only while it still names this process: a second instance
 * started on the same file, or an operator's edit, keeps its pidfile. */
#ifndef SP_PIDFILE_H
#define SP_PIDFILE_H

#include <stddef.h>
#include <sys/types.h>

/* Write "pid\n" to path (created 0644, or truncated if it is a regular
 * file). Returns 0 or a negative errno, with the whole line in err, e.g.
 * "--pidfile /run/x.pid: is a symbolic link; refusing to follow it". */
int sp_pidfile_write(const char *path, pid_t pid, char *err, size_t errlen);

/* Unlink path if it is a regular file (not a link) holding exactly pid.
 * Returns 0 if removed, -ESTALE if it holds another pid, else a negative
 * errno. */
int sp_pidfile_remove(const char *path, pid_t pid);

#endif
