/* peek: wait for a client's first bytes and read them without taking them
 * off the socket (MSG_PEEK): a PROXY header (consumed once parsed), then a
 * TLS ClientHello's server name (left for the upstream), then hand the
 * session to routing (sp_session_route). */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>

#include "shard/peek.h"
#include "shard/proxyproto.h"
#include "shard/route.h"
#include "shard/session.h"
#include "shard/tls_sni.h"

/* When the bytes a route needs arrived only in part, the socket stays
 * readable, so a plain poll would spin: SO_RCVLOWAT makes it readable only
 * once more bytes (or the FIN) arrive. Should that option fail, look again
 * every PEEK_RETRY_MS instead. */
#define PEEK_RETRY_MS 5
/* The most a peek looks at: a whole PROXY header always fits. */
#define PEEK_MAX 16384
_Static_assert(SP_PROXYPROTO_V2_MAX <= PEEK_MAX && SP_PROXYPROTO_V1_MAX <= PEEK_MAX,
	       "a peek must hold the longest PROXY header");

bool sp_peek_needed(const sp_listener_t *l)
{
	return l->accept_proxy_protocol || sp_route_needs_sni(l);
}

static void arm_peek(sp_shard_t *sh, sp_session_t *s)
{
	sp_session_started(sh, s,
			   sp_loop_poll(sh->loop, sp_session_tag(sh, s, SP_OP_PEEK), s->cfd, false));
}

void sp_peek_start(sp_shard_t *sh, sp_session_t *s)
{
	const sp_listener_t *l = &sh->conf->listeners[s->listener];

	s->state = SP_SESSION_PEEK;
	s->peek_deadline = sp_shard_now(sh) + l->peek_timeout_ms;
	sp_loop_timer_arm(sh->loop, &s->timer, s->peek_deadline);
	arm_peek(sh, s);
}

/* Wait until more than the `have` bytes peeked so far can be read. */
static void peek_wait_more(sp_shard_t *sh, sp_session_t *s, size_t have)
{
	int lowat = (int)have + 1;
	if (setsockopt(s->cfd, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof(lowat)) == 0) {
		arm_peek(sh, s);
		return;
	}
	uint64_t at = sp_shard_now(sh) + PEEK_RETRY_MS;
	sp_loop_timer_arm(sh->loop, &s->timer, at < s->peek_deadline ? at : s->peek_deadline);
}

/* Has the client sent its FIN? Then what it sent is all there will be: a
 * PROXY header or ClientHello still incomplete is truncated for good. */
static bool client_finished(int fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
		return false;
	return ti.tcpi_state == TCP_CLOSE_WAIT || ti.tcpi_state == TCP_LAST_ACK ||
	       ti.tcpi_state == TCP_CLOSING || ti.tcpi_state == TCP_CLOSE;
}

/* Look at what the client sent so far without taking it off the socket
 * (MSG_PEEK): only a PROXY header is consumed; a ClientHello travels on. */
static void do_peek(sp_shard_t *sh, sp_session_t *s)
{
	const sp_listener_t *l = &sh->conf->listeners[s->listener];
	uint8_t buf[PEEK_MAX];
	char sni[256];
	bool have_sni = false;

	ssize_t n = recv(s->cfd, buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
		arm_peek(sh, s);
		return;
	}
	if (n <= 0) {
		sp_session_fail(sh, s, SP_END_CLIENT_RESET);
		return;
	}
	if (l->accept_proxy_protocol && !s->proxy_done) {
		struct sockaddr_storage src, dst;
		bool local = false;
		size_t hlen = 0;
		switch (sp_proxyproto_parse(buf, (size_t)n, &hlen, &src, &dst, &local)) {
		case SP_PARSE_INCOMPLETE:
			if ((size_t)n < sizeof(buf) && !client_finished(s->cfd)) {
				peek_wait_more(sh, s, (size_t)n);
				return;
			}
			/* a full peek buffer and still no header end, or truncated */
			__attribute__((fallthrough));
		case SP_PARSE_INVALID:
			sp_session_fail(sh, s, SP_END_BAD_HEADER);
			return;
		case SP_PARSE_OK:
			break;
		}
		if (recv(s->cfd, buf, hlen, MSG_DONTWAIT) != (ssize_t)hlen) {
			sp_session_fail(sh, s, SP_END_CLIENT_RESET);
			return;
		}
		s->proxy_done = true;
		if (!local) {
			s->client = src;
			s->local = dst;
		}
		n -= (ssize_t)hlen;
		memmove(buf, buf + hlen, (size_t)n);
		if (n == 0 && sp_route_needs_sni(l)) {
			peek_wait_more(sh, s, 0); /* nothing more yet */
			return;
		}
	}
	if (sp_route_needs_sni(l)) {
		switch (sp_tls_sni_parse(buf, (size_t)n, sni, sizeof(sni))) {
		case SP_PARSE_OK:
			have_sni = sni[0] != '\0';
			break;
		case SP_PARSE_INCOMPLETE:
			if ((size_t)n < sizeof(buf) && !client_finished(s->cfd)) {
				peek_wait_more(sh, s, (size_t)n);
				return;
			}
			break; /* oversized or truncated: route as if there were no name */
		case SP_PARSE_INVALID:
			break; /* not TLS: only routes without sni can match */
		}
	}
	sp_loop_timer_disarm(sh->loop, &s->timer);
	int one = 1; /* the relay reads whatever arrives */
	(void)setsockopt(s->cfd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
	sp_session_route(sh, s, have_sni ? sni : NULL);
}

void sp_peek_on_ready(void *ctx, unsigned op, uint32_t slot, const sp_completion_t *c)
{
	sp_shard_t *sh = ctx;
	sp_session_t *s = &sh->sessions[slot];
	int res = c->res;
	(void)op;

	s->inflight--;
	if (s->state != SP_SESSION_PEEK) {
		sp_session_op_done(sh, s);
		return;
	}
	if (res < 0) {
		sp_session_fail(sh, s, SP_END_CLIENT_RESET);
		return;
	}
	do_peek(sh, s);
}

/* Either the deadline or a look-again (peek_wait_more without SO_RCVLOWAT). */
void sp_peek_on_timer(sp_shard_t *sh, sp_session_t *s)
{
	if (sp_shard_now(sh) >= s->peek_deadline) {
		sp_session_fail(sh, s, SP_END_PEEK_TIMEOUT);
		return;
	}
	if (s->inflight == 0)
		do_peek(sh, s);
	else
		sp_loop_timer_arm(sh->loop, &s->timer, s->peek_deadline);
}
