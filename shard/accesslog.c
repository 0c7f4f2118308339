/* accesslog: a finished session's line, formatted into the shard's buffer
 * at once (the session is about to be reused) and written once per loop
 * turn, or dropped and counted when the log cannot keep up. */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "shard/accesslog.h"
#include "shard/session.h"

/* Room a line may take at most before formatting it: below this, flush. */
#define LINE_ROOM 1024

static void count_dropped(const sp_accesslog_t *log, uint64_t n)
{
	sp_stat_add(log->dropped, (int64_t)n);
}

void sp_accesslog_init(sp_accesslog_t *log, int fd, bool sock, uint64_t *dropped)
{
	log->fd = fd;
	log->sock = sock;
	log->dropped = dropped;
	log->len = 0;
}

/* Write what the log takes now; keep the rest for the next loop turn. The
 * descriptor is non-blocking where it can be (shard_child gives each shard
 * its own), so a stalled reader costs lines, counted in log_dropped, never
 * the relay's time. Lines are never cut and never interleave with other
 * shards' lines: each write carries whole lines, at most PIPE_BUF bytes,
 * which a pipe takes whole or not at all (a file opened O_APPEND appends
 * each write whole), and a line that does not fit is dropped whole. */
void sp_accesslog_flush(sp_accesslog_t *log)
{
	size_t off = 0;

	while (off < log->len) {
		size_t len = log->len - off;
		if (len > PIPE_BUF) {
			const char *nl = memrchr(log->buf + off, '\n', PIPE_BUF);
			len = (size_t)(nl - (log->buf + off)) + 1; /* lines are <= PIPE_BUF */
		}
		ssize_t n = log->sock ? send(log->fd, log->buf + off, len, MSG_DONTWAIT | MSG_NOSIGNAL)
				      : write(log->fd, log->buf + off, len);
		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		/* Broken (a closed pipe, a full disk): what is left is lost. */
		uint64_t lost = 0;
		for (size_t i = off; i < log->len; i++)
			lost += log->buf[i] == '\n';
		count_dropped(log, lost);
		off = log->len;
	}
	memmove(log->buf, log->buf + off, log->len - off);
	log->len -= off;
}

/* "2025-01-31T12:00:00.123Z": wall-clock time, UTC, for log lines. */
static void format_time(char *buf, size_t len)
{
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf + n, len - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

static void format_addr(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN] = "?";
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *a = (const void *)ss;
		inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(a->sin_port));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const void *)ss;
		inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(a->sin6_port));
	} else {
		snprintf(buf, len, "-");
	}
}

void sp_accesslog_session(sp_shard_t *sh, const sp_session_t *s)
{
	const sp_conf_t *c = sh->conf;
	sp_accesslog_t *log = &sh->log;
	char client[64], when[40];
	size_t room;
	int n;

	if (!c->log.access_log)
		return;
	if (sizeof(log->buf) - log->len < LINE_ROOM)
		sp_accesslog_flush(log);
	format_addr(&s->client, client, sizeof(client));
	format_time(when, sizeof(when));
	bool routed = s->route != SP_SESSION_NO_ROUTE;
	const char *up = routed ? c->upstreams[s->upstream].name : "-";
	const char *srv = routed && s->server >= 0
				  ? c->upstreams[s->upstream].servers[s->server].addr.text
				  : "-";
	char route[16];
	if (routed)
		snprintf(route, sizeof(route), "%u", s->route);
	else
		snprintf(route, sizeof(route), c->log.format == SP_LOG_JSON ? "null" : "-");
	room = sizeof(log->buf) - log->len;
	const char *fmt = c->log.format == SP_LOG_JSON
				  ? "{\"time\":\"%s\",\"listener\":\"%s\",\"client\":\"%s\",\"route\":%s,"
				    "\"upstream\":\"%s\",\"server\":\"%s\",\"shard\":%u,\"gen\":%u,"
				    "\"bytes_in\":%llu,\"bytes_out\":%llu,\"duration_ms\":%llu,"
				    "\"end\":\"%s\"}\n"
				  : "%s access listener=%s client=%s route=%s upstream=%s server=%s "
				    "shard=%u gen=%u bytes_in=%llu bytes_out=%llu duration_ms=%llu "
				    "end=%s\n";
	n = snprintf(log->buf + log->len, room, fmt, when, c->listeners[s->listener].name, client,
		     route, up, srv, sh->args->slot, sh->args->gen,
		     (unsigned long long)s->dir[SP_UP].bytes,
		     (unsigned long long)s->dir[SP_DOWN].bytes,
		     (unsigned long long)(sp_shard_now(sh) - s->start_ms),
		     sp_shard_end_name(s->end));
	if (n > 0 && (size_t)n < room && n <= PIPE_BUF) /* flush writes whole lines */
		log->len += (size_t)n;
	else /* the log is not keeping up: count the line rather than wait */
		count_dropped(log, 1);
}
