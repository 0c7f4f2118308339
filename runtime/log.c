/* log: single-write log lines to stderr (see log.h). */
#include "runtime/log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(SP_LOG_LINE_MAX <= PIPE_BUF, "a log line must be one atomic pipe write");

static char log_who[64] = "shardproxy";
static sp_log_level_t log_level = SP_LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warning", "error"};

/* Where lines go: stderr itself, or (sp_log_nonblocking) a non-blocking
 * description of it; log_sock: send with MSG_DONTWAIT. */
static int log_fd = STDERR_FILENO;
static bool log_nonblock, log_sock;
static uint64_t log_dropped, log_dropped_told;

void sp_log_setup(const char *who, sp_log_level_t level)
{
	snprintf(log_who, sizeof(log_who), "%s", who);
	log_level = level;
}

int sp_log_nonblocking(void)
{
	struct stat st;
	char path[64];

	if (log_nonblock)
		return 0;
	if (fstat(STDERR_FILENO, &st) < 0)
		return -errno;
	if (S_ISSOCK(st.st_mode)) {
		log_sock = true;
	} else if (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode)) {
		/* Setting O_NONBLOCK on fd 2 itself would change the file
		 * description every process sharing it writes through. */
		snprintf(path, sizeof(path), "/proc/self/fd/%d", STDERR_FILENO);
		int fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
		if (fd < 0)
			return -errno;
		log_fd = fd;
	} else {
		return 0; /* a regular file: writes do not wait for a reader */
	}
	log_nonblock = true;
	return 0;
}

uint64_t sp_log_dropped(void)
{
	return log_dropped;
}

/* One write of a whole line; false if it could not go out now. A pipe
 * takes a write of at most PIPE_BUF whole or not at all, and a Unix stream
 * socket (journald) one this small in a single buffer, so a line is never
 * cut. */
static bool write_line(const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = log_sock ? send(log_fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL)
				     : write(log_fd, buf, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return false;
		}
		buf += n;
		len -= (size_t)n;
	}
	return true;
}

void sp_log_raw(const char *buf, size_t len)
{
	if (!write_line(buf, len))
		log_dropped++;
}

void sp_log(sp_log_level_t level, const char *fmt, ...)
{
	char line[SP_LOG_LINE_MAX];
	va_list ap;
	int n;

	if (level < log_level)
		return;
	if (log_dropped != log_dropped_told) {
		/* The reader is back: say what it missed, before the new line. */
		n = snprintf(line, sizeof(line), "%s: warning: %llu log lines dropped: stderr was "
			     "not being read\n", log_who,
			     (unsigned long long)(log_dropped - log_dropped_told));
		if (write_line(line, (size_t)n))
			log_dropped_told = log_dropped;
	}
	n = snprintf(line, sizeof(line), "%s: %s: ", log_who, level_names[level]);
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	sp_log_raw(line, (size_t)n);
}
