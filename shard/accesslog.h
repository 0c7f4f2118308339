/* accesslog: one line per finished session (text or JSON, SPEC §6), kept in
 * the shard's buffer and written once per loop turn without ever blocking
 * the relay. */
#ifndef SP_SHARD_ACCESSLOG_H
#define SP_SHARD_ACCESSLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sp_shard sp_shard_t;
typedef struct sp_session sp_session_t;

typedef struct {
	int fd;             /* stderr or log.access_log's file (sp_shard_args_t) */
	bool sock;          /* fd is a socket: send(MSG_DONTWAIT) never blocks */
	uint64_t *dropped;  /* lines lost, in the shard's shared counters */
	size_t len;         /* bytes in buf not yet written */
	char buf[16384];
} sp_accesslog_t;

void sp_accesslog_init(sp_accesslog_t *log, int fd, bool sock, uint64_t *dropped);
/* The line for s, which has just ended (when log.access_log is on). */
void sp_accesslog_session(sp_shard_t *sh, const sp_session_t *s);
/* Write what the descriptor takes now; the rest waits for the next turn. */
void sp_accesslog_flush(sp_accesslog_t *log);

#endif
