/* log: one line per call to stderr, written with a single write(2) of at
 * most SP_LOG_LINE_MAX (< PIPE_BUF) bytes, so lines from the supervisor and
 * every shard never interleave: a pipe takes such a write whole or not at
 * all. */
#ifndef SP_LOG_H
#define SP_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The levels, in the order "log.level" names them (conf/ stores this type). */
typedef enum { SP_LOG_DEBUG, SP_LOG_INFO, SP_LOG_WARN, SP_LOG_ERROR } sp_log_level_t;

#define SP_LOG_LINE_MAX 2048

/* Who is talking ("shardproxy" or "shardproxy[shard 1]") and from what level. */
void sp_log_setup(const char *who, sp_log_level_t level);
/* From now on never wait for stderr's reader (an event loop calls this): a
 * pipe or terminal is reopened as this process's own non-blocking
 * description (so the flag does not reach the processes sharing it), a
 * socket is written with MSG_DONTWAIT. A line the reader has no room for
 * is dropped whole and counted; the next line that goes out says how many
 * were lost. A regular file is written as before (it does not block).
 * Returns 0 or -errno (stderr stays as it was). */
int sp_log_nonblocking(void);
/* Lines dropped so far because stderr was full. */
uint64_t sp_log_dropped(void);
void sp_log(sp_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Write a pre-formatted block (e.g. buffered access-log lines) as is. */
void sp_log_raw(const char *buf, size_t len);

#define sp_debug(...) sp_log(SP_LOG_DEBUG, __VA_ARGS__)
#define sp_info(...) sp_log(SP_LOG_INFO, __VA_ARGS__)
#define sp_warn(...) sp_log(SP_LOG_WARN, __VA_ARGS__)
#define sp_error(...) sp_log(SP_LOG_ERROR, __VA_ARGS__)

#endif
