/* resolver: c-ares driven from the supervisor's poll loop (see resolver.h).
 * c-ares owns its UDP/TCP sockets; we only ask which ones to poll
 * (ares_getsock), how long to wait (ares_timeout) and hand back readiness
 * (ares_process_fd). Answers are normalised here (sorted, deduplicated,
 * port set) so callers can compare two address sets with memcmp. */
#include "proxy/resolver.h"

#include <ares.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

struct sp_resolver {
	ares_channel ch;
	unsigned pending;
};

typedef struct {
	sp_resolver_t *r;
	uint16_t port;
	sp_resolve_fn fn;
	void *arg;
} query_t;

static int ares_to_errno(int status)
{
	switch (status) {
	case ARES_ENOTFOUND:
	case ARES_ENODATA:
		return -ENOENT;
	case ARES_ETIMEOUT:
		return -ETIMEDOUT;
	case ARES_ENOMEM:
		return -ENOMEM;
	case ARES_ECANCELLED:
	case ARES_EDESTRUCTION:
		return -ECANCELED;
	case ARES_ECONNREFUSED:
		return -ECONNREFUSED;
	default:
		return -EIO;
	}
}

/* IPv4 before IPv6, then by address bytes: a stable order whatever the
 * nameserver's rotation, so an unchanged set compares equal. */
static int addr_cmp(const void *a, const void *b)
{
	const struct sockaddr_storage *x = a, *y = b;
	if (x->ss_family != y->ss_family)
		return x->ss_family == AF_INET ? -1 : 1;
	if (x->ss_family == AF_INET)
		return memcmp(&((const struct sockaddr_in *)x)->sin_addr,
			      &((const struct sockaddr_in *)y)->sin_addr, 4);
	return memcmp(&((const struct sockaddr_in6 *)x)->sin6_addr,
		      &((const struct sockaddr_in6 *)y)->sin6_addr, 16);
}

static void on_answer(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
	query_t *q = arg;
	struct sockaddr_storage addrs[SP_RESOLVER_MAX_ADDRS] = {{0}};
	size_t n = 0;
	(void)timeouts;

	q->r->pending--;
	if (status == ARES_SUCCESS && res) {
		for (struct ares_addrinfo_node *ai = res->nodes; ai && n < SP_RESOLVER_MAX_ADDRS;
		     ai = ai->ai_next) {
			struct sockaddr_storage ss;
			memset(&ss, 0, sizeof(ss));
			if (ai->ai_family == AF_INET && ai->ai_addrlen >= sizeof(struct sockaddr_in)) {
				memcpy(&ss, ai->ai_addr, sizeof(struct sockaddr_in));
				((struct sockaddr_in *)&ss)->sin_port = htons(q->port);
			} else if (ai->ai_family == AF_INET6 &&
				   ai->ai_addrlen >= sizeof(struct sockaddr_in6)) {
				memcpy(&ss, ai->ai_addr, sizeof(struct sockaddr_in6));
				struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
				s6->sin6_port = htons(q->port);
				s6->sin6_flowinfo = 0;
			} else {
				continue;
			}
			bool dup = false;
			for (size_t k = 0; k < n && !dup; k++)
				dup = addr_cmp(&addrs[k], &ss) == 0;
			if (!dup)
				addrs[n++] = ss;
		}
		if (n > 1)
			qsort(addrs, n, sizeof(addrs[0]), addr_cmp);
	}
	if (res)
		ares_freeaddrinfo(res);
	if (status == ARES_SUCCESS && n == 0)
		q->fn(q->arg, -ENOENT, "no IPv4 or IPv6 address", NULL, 0);
	else if (status != ARES_SUCCESS)
		q->fn(q->arg, ares_to_errno(status), ares_strerror(status), NULL, 0);
	else
		q->fn(q->arg, 0, NULL, addrs, n);
	free(q);
}

int sp_resolver_new(sp_resolver_t **out, const sp_addr_t *servers, size_t n, char *err,
		    size_t errlen)
{
	struct ares_options o = {
		.flags = ARES_FLAG_NOSEARCH,
		.timeout = SP_RESOLVER_TIMEOUT_MS,
		.tries = SP_RESOLVER_TRIES,
	};
	int rc = ares_library_init(ARES_LIB_INIT_ALL);
	if (rc != ARES_SUCCESS) {
		snprintf(err, errlen, "resolver: %s", ares_strerror(rc));
		return -EIO;
	}
	sp_resolver_t *r = calloc(1, sizeof(*r));
	if (!r) {
		snprintf(err, errlen, "resolver: out of memory");
		return -ENOMEM;
	}
	rc = ares_init_options(&r->ch, &o, ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
	if (rc != ARES_SUCCESS) {
		snprintf(err, errlen, "resolver: %s", ares_strerror(rc));
		free(r);
		return -EIO;
	}
	if (n) {
		/* "1.2.3.4:53,[::1]:5353": the format c-ares takes. */
		char csv[1024];
		size_t len = 0;
		for (size_t i = 0; i < n && len < sizeof(csv); i++) {
			char host[INET6_ADDRSTRLEN];
			const struct sockaddr_storage *ss = &servers[i].ss;
			unsigned port;
			if (ss->ss_family == AF_INET) {
				inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, host,
					  sizeof(host));
				port = ntohs(((const struct sockaddr_in *)ss)->sin_port);
				len += (size_t)snprintf(csv + len, sizeof(csv) - len, "%s%s:%u",
							i ? "," : "", host, port);
			} else {
				inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr,
					  host, sizeof(host));
				port = ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
				len += (size_t)snprintf(csv + len, sizeof(csv) - len, "%s[%s]:%u",
							i ? "," : "", host, port);
			}
		}
		if (len >= sizeof(csv) || (rc = ares_set_servers_ports_csv(r->ch, csv)) != ARES_SUCCESS) {
			snprintf(err, errlen, "resolvers: %s",
				 len >= sizeof(csv) ? "too many" : ares_strerror(rc));
			ares_destroy(r->ch);
			free(r);
			return -EINVAL;
		}
	}
	*out = r;
	return 0;
}

void sp_resolver_free(sp_resolver_t *r)
{
	if (!r)
		return;
	ares_destroy(r->ch); /* runs every pending callback with ARES_EDESTRUCTION */
	free(r);
}

int sp_resolver_lookup(sp_resolver_t *r, const char *host, uint16_t port, sp_resolve_fn fn,
		       void *arg)
{
	struct ares_addrinfo_hints hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
	query_t *q = malloc(sizeof(*q));
	if (!q)
		return -ENOMEM;
	*q = (query_t){.r = r, .port = port, .fn = fn, .arg = arg};
	r->pending++;
	/* May answer at once (a numeric name, /etc/hosts): the callback runs
	 * before this returns. */
	ares_getaddrinfo(r->ch, host, NULL, &hints, on_answer, q);
	return 0;
}

unsigned sp_resolver_pending(const sp_resolver_t *r)
{
	return r->pending;
}

int sp_resolver_pollfds(const sp_resolver_t *r, struct pollfd *pfds, int max)
{
	ares_socket_t socks[ARES_GETSOCK_MAXNUM];
	/* The bitmask read unsigned: ARES_GETSOCK_WRITABLE(bits, 15) would
	 * shift a signed 1 into the sign bit. */
	unsigned bits = (unsigned)ares_getsock(r->ch, socks, ARES_GETSOCK_MAXNUM);
	int n = 0;
	for (int i = 0; i < ARES_GETSOCK_MAXNUM && n < max; i++) {
		short ev = 0;
		if (bits >> i & 1u)
			ev |= POLLIN;
		if (bits >> (i + ARES_GETSOCK_MAXNUM) & 1u)
			ev |= POLLOUT;
		if (!ev)
			continue;
		pfds[n++] = (struct pollfd){.fd = socks[i], .events = ev};
	}
	return n;
}

int sp_resolver_timeout(const sp_resolver_t *r)
{
	struct timeval tv;
	if (!r->pending || !ares_timeout(r->ch, NULL, &tv))
		return -1;
	long ms = tv.tv_sec * 1000 + (tv.tv_usec + 999) / 1000;
	return ms > 0 ? (int)ms : 0;
}

void sp_resolver_process(sp_resolver_t *r, const struct pollfd *pfds, int n)
{
	bool any = false;
	for (int i = 0; i < n; i++) {
		if (!pfds[i].revents)
			continue;
		any = true;
		ares_process_fd(r->ch,
				pfds[i].revents & (POLLIN | POLLERR | POLLHUP) ? pfds[i].fd
									       : ARES_SOCKET_BAD,
				pfds[i].revents & POLLOUT ? pfds[i].fd : ARES_SOCKET_BAD);
	}
	/* Nothing ready: let c-ares run its timeouts (retries, next server). */
	if (!any)
		ares_process_fd(r->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
}
