/* log: one line per call to stderr, written with a single write(2) so lines
 * from the supervisor and every shard never interleave. */
#ifndef SP_LOG_H
#define SP_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum { SP_LL_DEBUG, SP_LL_INFO, SP_LL_WARN, SP_LL_ERROR };

/* Who is talking ("shardproxy" or "shardproxy[shard 1]") and from what level. */
void sp_log_setup(const char *who, int level);
void sp_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Write a pre-formatted block (e.g. buffered access-log lines) as is. */
void sp_log_raw(const char *buf, size_t len);

#define sp_debug(...) sp_log(SP_LL_DEBUG, __VA_ARGS__)
#define sp_info(...) sp_log(SP_LL_INFO, __VA_ARGS__)
#define sp_warn(...) sp_log(SP_LL_WARN, __VA_ARGS__)
#define sp_error(...) sp_log(SP_LL_ERROR, __VA_ARGS__)

#endif
