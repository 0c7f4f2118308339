/* log: single-write log lines to stderr (see log.h). */
#include "runtime/log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char log_who[64] = "shardproxy";
static int log_level = SP_LL_INFO;
static const char *const level_names[] = {"debug", "info", "warning", "error"};

void sp_log_setup(const char *who, int level)
{
	snprintf(log_who, sizeof(log_who), "%s", who);
	log_level = level;
}

void sp_log_raw(const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(STDERR_FILENO, buf, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		buf += n;
		len -= (size_t)n;
	}
}

void sp_log(int level, const char *fmt, ...)
{
	char line[2048];
	va_list ap;
	int n;

	if (level < log_level)
		return;
	n = snprintf(line, sizeof(line), "%s: %s: ", log_who, level_names[level]);
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	sp_log_raw(line, (size_t)n);
}
