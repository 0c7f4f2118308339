/* demo-upstream: the HTTP/1.1 backend behind `make run`, the e2e tests and the
 * benchmark. One nonblocking epoll loop per process; -w N forks N of them,
 * each accepting from its own SO_REUSEPORT socket of every listener.
 *
 *   build/demo-upstream -l 127.0.0.1:8081 -l [::1]:8081 -w 2
 *   curl http://127.0.0.1:8081/                        # 200, names the port
 *   curl -s http://127.0.0.1:8081/bytes/100000000 | wc -c
 *   wrk -t2 -c50 -d3s http://127.0.0.1:8081/
 *   wrk -t1 -c10 -d3s -H 'Connection: close' http://127.0.0.1:8081/
 *
 * Routes: GET / -> 200 "hello from demo-upstream (port P)"; GET /bytes/N
 * (N <= 1 GiB) -> 200 with N bytes of 'x', streamed from one shared 64 KiB
 * buffer; any other GET -> 404; another method or a malformed request -> 400
 * and close. Every response has a Content-Length. Keep-alive is the HTTP/1.1
 * default; "Connection: close" (or HTTP/1.0 without "keep-alive") is answered
 * with "Connection: close", then our side is shut down and whatever the
 * client still sends is read and dropped for up to LINGER_MS before the
 * close (a lingering close), so unread input never turns the close into an
 * RST that could destroy the response. Pipelined requests are answered in
 * order; a connection that gets more than BUDGET syscalls in one turn yields
 * to the others and resumes after the next epoll_wait.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_LISTENERS 16
#define MAX_WORKERS 256
#define IN_CAP 8192  /* read buffer; also the limit on a request head */
#define OUT_CAP 4096 /* queued response heads and small bodies */
#define RESP_MAX 512 /* room one response (head + small body) may need */
#define XBUF_SIZE 65536
#define XIOV 16 /* one writev sends up to XIOV * XBUF_SIZE of body */
#define BYTES_MAX (1ull << 30)
#define BUDGET 32 /* syscalls per connection per turn before it yields */
#define LINGER_MS 2000
#define LINGER_BYTES (1u << 20) /* more than this while lingering: just close */
#define ACCEPT_BATCH 64
#define ACCEPT_PAUSE_MS 100
#define MAX_EVENTS 512
#define FREE_KEEP 1024 /* closed connections kept for reuse */

/* What an epoll_event's data.ptr points at: every such struct starts with it. */
enum kind { K_LISTENER, K_SIGNAL, K_CONN };

struct link {
	struct link *prev, *next;
};

struct listener {
	enum kind kind;
	int fd;
	char name[64]; /* "127.0.0.1:8081", "[::1]:8081" */
	char hello[64];
	size_t hello_len;
};

struct conn {
	enum kind kind;
	int fd;
	bool queued;	/* on loop.ready: has work left from its last turn */
	bool lingering; /* on loop.linger: response sent, our side shut */
	bool closing;	/* close once the queued output is written */
	bool rd_eof;
	const struct listener *l;
	struct link all;  /* loop.live, or loop.free once closed */
	struct link q;	  /* loop.ready or loop.linger */
	int64_t deadline; /* lingering: close at this time */
	size_t linger_bytes;
	uint64_t body_left; /* streamed body still to send, after out[] */
	uint64_t skip_left; /* request body bytes still to drop */
	size_t in_off, in_len, out_off, out_len;
	char in[IN_CAP];
	char out[OUT_CAP];
};

struct loop {
	int ep;
	struct listener *ls;
	int nls;
	struct link live, free, ready, linger;
	int nfree;
	int64_t paused_until; /* accepting paused (out of fds) until then; 0: not */
	int64_t last_pause_log;
};

static char xbuf[XBUF_SIZE];

#define container_of(p, type, member) ((type *)(void *)((char *)(p)-offsetof(type, member)))

static void list_init(struct link *l)
{
	l->prev = l->next = l;
}

static bool list_empty(const struct link *l)
{
	return l->next == l;
}

static void list_add_tail(struct link *head, struct link *n)
{
	n->prev = head->prev;
	n->next = head;
	head->prev->next = n;
	head->prev = n;
}

/* Safe on a node that is on no list (self-linked). */
static void list_del(struct link *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	list_init(n);
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- connections ------------------------------------------------------------ */

static struct conn *conn_new(struct loop *lp, int fd, const struct listener *l)
{
	struct conn *c;
	if (!list_empty(&lp->free)) {
		c = container_of(lp->free.next, struct conn, all);
		list_del(&c->all);
		lp->nfree--;
	} else {
		c = malloc(sizeof(*c));
		if (!c)
			return NULL;
		list_init(&c->all);
	}
	c->kind = K_CONN;
	c->fd = fd;
	c->queued = c->lingering = c->closing = c->rd_eof = false;
	c->l = l;
	list_init(&c->q);
	c->deadline = 0;
	c->linger_bytes = 0;
	c->body_left = c->skip_left = 0;
	c->in_off = c->in_len = c->out_off = c->out_len = 0;
	list_add_tail(&lp->live, &c->all);
	return c;
}

static void conn_close(struct loop *lp, struct conn *c)
{
	list_del(&c->q);
	list_del(&c->all);
	close(c->fd); /* also removes it from the epoll set */
	c->fd = -1;
	if (lp->nfree < FREE_KEEP) {
		list_add_tail(&lp->free, &c->all);
		lp->nfree++;
	} else {
		free(c);
	}
}

/* Append one response to out[]; the caller made sure RESP_MAX bytes are free.
 * body is copied when given; otherwise a body of clen bytes of 'x' follows,
 * copied too when it fits, else streamed from xbuf after out[]. */
static void respond(struct conn *c, const char *status, const char *ctype, const char *body,
		    uint64_t clen, const char *connhdr)
{
	char *p = c->out + c->out_len;
	size_t room = OUT_CAP - c->out_len;
	int n = snprintf(p, room,
			 "HTTP/1.1 %s\r\nServer: demo-upstream\r\nContent-Type: "
			 "%s\r\nContent-Length: %llu\r\n%s\r\n",
			 status, ctype, (unsigned long long)clen, connhdr);
	if (n < 0 || (size_t)n >= room) /* cannot happen: heads are < 200 bytes */
		abort();
	c->out_len += (size_t)n;
	room -= (size_t)n;
	if (body) {
		memcpy(c->out + c->out_len, body, clen);
		c->out_len += clen;
	} else if (clen <= room) {
		memset(c->out + c->out_len, 'x', clen);
		c->out_len += clen;
	} else {
		c->body_left = clen;
	}
}

static void respond_error(struct conn *c, const char *status, const char *body)
{
	respond(c, status, "text/plain", body, strlen(body), "Connection: close\r\n");
	c->closing = true;
}

struct request {
	const char *method, *target;
	size_t method_len, target_len;
	bool v10, conn_close, conn_keepalive, has_te, has_clen;
	uint64_t clen;
};

static bool is_tchar(unsigned char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static bool all_tchars(const char *s, size_t n)
{
	if (!n)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!is_tchar((unsigned char)s[i]))
			return false;
	return true;
}

static bool parse_request_line(const char *s, const char *end, struct request *r)
{
	const char *sp1 = memchr(s, ' ', (size_t)(end - s));
	if (!sp1)
		return false;
	const char *t = sp1 + 1;
	const char *sp2 = memchr(t, ' ', (size_t)(end - t));
	if (!sp2)
		return false;
	r->method = s;
	r->method_len = (size_t)(sp1 - s);
	r->target = t;
	r->target_len = (size_t)(sp2 - t);
	if (!all_tchars(r->method, r->method_len) || r->target_len == 0)
		return false;
	for (size_t i = 0; i < r->target_len; i++)
		if ((unsigned char)t[i] <= ' ' || t[i] == 0x7f)
			return false;
	const char *v = sp2 + 1;
	size_t vlen = (size_t)(end - v);
	if (vlen == 8 && !memcmp(v, "HTTP/1.1", 8))
		r->v10 = false;
	else if (vlen == 8 && !memcmp(v, "HTTP/1.0", 8))
		r->v10 = true;
	else
		return false;
	return true;
}

/* "Connection: keep-alive, Upgrade" -> flags, one comma-separated token at a time. */
static void parse_connection(const char *v, const char *end, struct request *r)
{
	while (v < end) {
		while (v < end && (*v == ' ' || *v == '\t' || *v == ','))
			v++;
		const char *tok = v;
		while (v < end && *v != ',' && *v != ' ' && *v != '\t')
			v++;
		size_t n = (size_t)(v - tok);
		if (n == 5 && !strncasecmp(tok, "close", 5))
			r->conn_close = true;
		else if (n == 10 && !strncasecmp(tok, "keep-alive", 10))
			r->conn_keepalive = true;
	}
}

static bool parse_header(const char *s, const char *end, struct request *r)
{
	const char *colon = memchr(s, ':', (size_t)(end - s));
	if (!colon || !all_tchars(s, (size_t)(colon - s))) /* also rejects obs-fold */
		return false;
	size_t nlen = (size_t)(colon - s);
	const char *v = colon + 1;
	while (v < end && (*v == ' ' || *v == '\t'))
		v++;
	const char *ve = end;
	while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
		ve--;
	if (nlen == 10 && !strncasecmp(s, "connection", 10)) {
		parse_connection(v, ve, r);
	} else if (nlen == 17 && !strncasecmp(s, "transfer-encoding", 17)) {
		r->has_te = true;
	} else if (nlen == 14 && !strncasecmp(s, "content-length", 14)) {
		uint64_t n = 0;
		if (v == ve || ve - v > 18)
			return false;
		for (const char *q = v; q < ve; q++) {
			if (*q < '0' || *q > '9')
				return false;
			n = n * 10 + (uint64_t)(*q - '0');
		}
		if (r->has_clen && r->clen != n)
			return false;
		r->has_clen = true;
		r->clen = n;
	}
	return true;
}

/* Offset just past the empty line ending the head in p[0..n), or 0 if absent. */
static size_t head_end(const char *p, size_t n)
{
	const char *q = memchr(p, '\n', n);
	while (q) {
		size_t i = (size_t)(q - p) + 1;
		if (i < n && p[i] == '\n')
			return i + 1;
		if (i + 1 < n && p[i] == '\r' && p[i + 1] == '\n')
			return i + 2;
		q = i < n ? memchr(p + i, '\n', n - i) : NULL;
	}
	return 0;
}

static bool parse_head(const char *p, size_t len, struct request *r)
{
	const char *end = p + len;
	memset(r, 0, sizeof(*r));
	for (const char *line = p; line < end;) {
		const char *nl = memchr(line, '\n', (size_t)(end - line));
		const char *le = nl;
		if (le > line && le[-1] == '\r')
			le--;
		if (le == line)
			break; /* the empty line */
		if (line == p ? !parse_request_line(line, le, r) : !parse_header(line, le, r))
			return false;
		line = nl + 1;
	}
	return true;
}

/* Answer the next complete request in in[], consuming it. Returns false when
 * more input is needed first. */
static bool handle_request(struct conn *c)
{
	if (c->skip_left) {
		size_t k = c->in_len - c->in_off;
		if (k > c->skip_left)
			k = c->skip_left;
		c->in_off += k;
		c->skip_left -= k;
		if (c->skip_left)
			return false;
	}
	/* RFC 9112 2.2: ignore empty lines before a request line */
	while (c->in_off < c->in_len && (c->in[c->in_off] == '\r' || c->in[c->in_off] == '\n'))
		c->in_off++;
	if (c->in_off == c->in_len) {
		c->in_off = c->in_len = 0;
		return false;
	}
	const char *p = c->in + c->in_off;
	size_t hlen = head_end(p, c->in_len - c->in_off);
	if (!hlen)
		return false;
	c->in_off += hlen;

	struct request r;
	if (!parse_head(p, hlen, &r) || r.has_te || r.method_len != 3 ||
	    memcmp(r.method, "GET", 3)) {
		respond_error(c, "400 Bad Request", "bad request\n");
		return true;
	}
	c->skip_left = r.clen; /* a GET body means nothing here; drop it */

	bool keep = r.v10 ? r.conn_keepalive && !r.conn_close : !r.conn_close;
	const char *connhdr = !keep   ? "Connection: close\r\n"
			      : r.v10 ? "Connection: keep-alive\r\n"
				      : "";
	c->closing = !keep;

	size_t plen = r.target_len;
	const char *query = memchr(r.target, '?', plen);
	if (query)
		plen = (size_t)(query - r.target);
	if (plen == 1 && r.target[0] == '/') {
		respond(c, "200 OK", "text/plain", c->l->hello, c->l->hello_len, connhdr);
		return true;
	}
	if (plen > 7 && plen <= 7 + 19 && !memcmp(r.target, "/bytes/", 7)) {
		uint64_t n = 0;
		size_t i;
		for (i = 7; i < plen && r.target[i] >= '0' && r.target[i] <= '9'; i++)
			n = n * 10 + (uint64_t)(r.target[i] - '0');
		if (i == plen) {
			if (n > BYTES_MAX) {
				respond_error(c, "400 Bad Request",
					      "bad request: at most /bytes/1073741824\n");
				return true;
			}
			respond(c, "200 OK", "application/octet-stream", NULL, n, connhdr);
			return true;
		}
	}
	respond(c, "404 Not Found", "text/plain", "not found\n", 10, connhdr);
	return true;
}

enum io { IO_DONE, IO_AGAIN, IO_ERR };

static enum io conn_write(struct conn *c)
{
	struct iovec iov[1 + XIOV];
	int n = 0;
	size_t pend = c->out_len - c->out_off;
	if (pend)
		iov[n++] = (struct iovec){c->out + c->out_off, pend};
	for (uint64_t b = c->body_left; b && n < 1 + XIOV;) {
		size_t k = b < XBUF_SIZE ? (size_t)b : XBUF_SIZE;
		iov[n++] = (struct iovec){xbuf, k};
		b -= k;
	}
	ssize_t w = writev(c->fd, iov, n);
	if (w < 0)
		return errno == EINTR ? IO_DONE : errno == EAGAIN ? IO_AGAIN : IO_ERR;
	if ((size_t)w >= pend) {
		c->out_off = c->out_len = 0;
		c->body_left -= (size_t)w - pend;
	} else {
		c->out_off += (size_t)w;
	}
	return IO_DONE;
}

static enum io conn_read(struct conn *c)
{
	if (c->in_off) {
		memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
		c->in_len -= c->in_off;
		c->in_off = 0;
	}
	ssize_t r = read(c->fd, c->in + c->in_len, IN_CAP - c->in_len);
	if (r > 0)
		c->in_len += (size_t)r;
	else if (r == 0)
		c->rd_eof = true;
	else
		return errno == EINTR ? IO_DONE : errno == EAGAIN ? IO_AGAIN : IO_ERR;
	return IO_DONE;
}

/* Lingering: drop input until EOF, an error, LINGER_BYTES or the deadline. */
static void conn_linger_read(struct loop *lp, struct conn *c)
{
	for (;;) {
		ssize_t r = read(c->fd, c->in, IN_CAP);
		if (r > 0) {
			c->linger_bytes += (size_t)r;
			if (c->linger_bytes <= LINGER_BYTES)
				continue;
		} else if (r < 0 && errno == EINTR) {
			continue;
		} else if (r < 0 && errno == EAGAIN) {
			return;
		}
		conn_close(lp, c);
		return;
	}
}

static void conn_start_linger(struct loop *lp, struct conn *c)
{
	if (c->rd_eof || shutdown(c->fd, SHUT_WR) < 0) {
		conn_close(lp, c);
		return;
	}
	c->lingering = true;
	c->deadline = now_ms() + LINGER_MS;
	list_add_tail(&lp->linger, &c->q); /* deadlines only grow: the list stays sorted */
	conn_linger_read(lp, c);
}

/* Make all the progress the socket allows. Edge-triggered: return to the
 * loop only after a read or write said EAGAIN (the next edge will come), or
 * with the connection queued on loop.ready when its budget ran out. */
static void conn_run(struct loop *lp, struct conn *c)
{
	if (c->lingering) {
		conn_linger_read(lp, c);
		return;
	}
	if (c->queued) {
		list_del(&c->q);
		c->queued = false;
	}
	for (int budget = BUDGET; budget > 0; budget--) {
		while (!c->closing && c->body_left == 0 && OUT_CAP - c->out_len >= RESP_MAX &&
		       handle_request(c))
			;
		enum io st;
		if (c->out_len > c->out_off || c->body_left) {
			st = conn_write(c);
		} else if (c->closing) {
			conn_start_linger(lp, c);
			return;
		} else if (c->rd_eof) {
			conn_close(lp, c); /* everything asked has been answered */
			return;
		} else if (c->in_len - c->in_off == IN_CAP) {
			c->in_off = c->in_len = 0;
			respond_error(c, "431 Request Header Fields Too Large",
				      "request head too large\n");
			continue;
		} else {
			st = conn_read(c);
		}
		if (st == IO_AGAIN)
			return;
		if (st == IO_ERR) {
			conn_close(lp, c);
			return;
		}
	}
	c->queued = true;
	list_add_tail(&lp->ready, &c->q);
}

/* ---- accepting ------------------------------------------------------------ */

static void listeners_arm(struct loop *lp, uint32_t events)
{
	for (int i = 0; i < lp->nls; i++) {
		struct epoll_event ev = {.events = events, .data.ptr = &lp->ls[i]};
		epoll_ctl(lp->ep, EPOLL_CTL_MOD, lp->ls[i].fd, &ev);
	}
}

/* Out of descriptors or memory: stop accepting for a moment instead of
 * spinning on a listener that stays readable. */
static void accept_pause(struct loop *lp, int err)
{
	int64_t now = now_ms();
	if (now - lp->last_pause_log >= 1000) {
		fprintf(stderr, "demo-upstream: accept: %s; pausing accepts for %d ms\n",
			strerror(err), ACCEPT_PAUSE_MS);
		lp->last_pause_log = now;
	}
	lp->paused_until = now + ACCEPT_PAUSE_MS;
	listeners_arm(lp, 0);
}

static void on_accept(struct loop *lp, struct listener *l)
{
	for (int i = 0; i < ACCEPT_BATCH; i++) {
		int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM)
				accept_pause(lp, errno);
			else if (errno != EAGAIN)
				fprintf(stderr, "demo-upstream: %s: accept: %s\n", l->name,
					strerror(errno));
			return;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		struct conn *c = conn_new(lp, fd, l);
		if (!c) {
			close(fd);
			accept_pause(lp, ENOMEM);
			return;
		}
		/* if the request is already here, adding the fd reports it at once */
		struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
					 .data.ptr = c};
		if (epoll_ctl(lp->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
			int err = errno;
			conn_close(lp, c);
			accept_pause(lp, err);
			return;
		}
	}
}

/* ---- one worker's loop -------------------------------------------------------- */

static int worker_run(struct listener *ls, int nls, const sigset_t *sigs)
{
	struct loop lp = {.ls = ls, .nls = nls};
	struct {
		enum kind kind;
	} sigtag = {K_SIGNAL};
	struct epoll_event evs[MAX_EVENTS];
	int rc = 0, sfd = -1;

	list_init(&lp.live);
	list_init(&lp.free);
	list_init(&lp.ready);
	list_init(&lp.linger);
	lp.ep = epoll_create1(EPOLL_CLOEXEC);
	if (lp.ep < 0) {
		perror("demo-upstream: epoll_create1");
		return 1;
	}
	sfd = signalfd(-1, sigs, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sfd < 0) {
		perror("demo-upstream: signalfd");
		rc = 1;
		goto out;
	}
	struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &sigtag};
	if (epoll_ctl(lp.ep, EPOLL_CTL_ADD, sfd, &sev) < 0) {
		perror("demo-upstream: epoll_ctl");
		rc = 1;
		goto out;
	}
	for (int i = 0; i < nls; i++) {
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &ls[i]};
		if (epoll_ctl(lp.ep, EPOLL_CTL_ADD, ls[i].fd, &ev) < 0) {
			perror("demo-upstream: epoll_ctl");
			rc = 1;
			goto out;
		}
	}

	for (bool stop = false; !stop;) {
		int timeout = -1;
		int64_t now = now_ms();
		if (!list_empty(&lp.ready)) {
			timeout = 0;
		} else {
			int64_t next = INT64_MAX;
			if (!list_empty(&lp.linger))
				next = container_of(lp.linger.next, struct conn, q)->deadline;
			if (lp.paused_until && lp.paused_until < next)
				next = lp.paused_until;
			if (next != INT64_MAX)
				timeout = next <= now ? 0 : (int)(next - now);
		}
		int n = epoll_wait(lp.ep, evs, MAX_EVENTS, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("demo-upstream: epoll_wait");
			rc = 1;
			break;
		}
		for (int i = 0; i < n; i++) {
			enum kind k = *(enum kind *)evs[i].data.ptr;
			if (k == K_CONN)
				conn_run(&lp, evs[i].data.ptr);
			else if (k == K_LISTENER)
				on_accept(&lp, evs[i].data.ptr);
			else
				stop = true; /* SIGTERM or SIGINT */
		}
		/* connections that used up their budget: one more turn each, in the
		 * order they queued; those that queue again wait for the next poll */
		struct link batch;
		list_init(&batch);
		if (!list_empty(&lp.ready)) {
			batch = lp.ready;
			batch.next->prev = &batch;
			batch.prev->next = &batch;
			list_init(&lp.ready);
		}
		while (!list_empty(&batch))
			conn_run(&lp, container_of(batch.next, struct conn, q));
		now = now_ms();
		while (!list_empty(&lp.linger)) {
			struct conn *c = container_of(lp.linger.next, struct conn, q);
			if (c->deadline > now)
				break;
			conn_close(&lp, c);
		}
		if (lp.paused_until && lp.paused_until <= now) {
			lp.paused_until = 0;
			listeners_arm(&lp, EPOLLIN);
		}
	}

out:
	while (!list_empty(&lp.live))
		conn_close(&lp, container_of(lp.live.next, struct conn, all));
	while (!list_empty(&lp.free)) {
		struct conn *c = container_of(lp.free.next, struct conn, all);
		list_del(&c->all);
		free(c);
	}
	if (sfd >= 0)
		close(sfd);
	close(lp.ep);
	return rc;
}

/* ---- start-up ------------------------------------------------------------------ */

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: demo-upstream -l ADDR:PORT [-l ADDR:PORT ...] [-w WORKERS]\n"
	    "  -l ADDR:PORT  listen there: 127.0.0.1:8081, [::1]:8081, 0.0.0.0:8081 (repeatable)\n"
	    "  -w WORKERS    processes sharing each address through SO_REUSEPORT (default 1)\n"
	    "routes: GET / (hello), GET /bytes/N (N bytes, N <= 1073741824), else 404\n");
}

/* "127.0.0.1:8081", "[::1]:8081", "localhost:8081" -> address; 0 or -1 */
static int parse_addr(const char *arg, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[256];
	const char *port;
	if (arg[0] == '[') {
		const char *rb = strchr(arg, ']');
		if (!rb || rb[1] != ':' || (size_t)(rb - arg - 1) >= sizeof(host))
			return -1;
		memcpy(host, arg + 1, (size_t)(rb - arg - 1));
		host[rb - arg - 1] = 0;
		port = rb + 2;
	} else {
		const char *colon = strrchr(arg, ':');
		if (!colon || (size_t)(colon - arg) >= sizeof(host))
			return -1;
		memcpy(host, arg, (size_t)(colon - arg));
		host[colon - arg] = 0;
		port = colon + 1;
	}
	char *end;
	long p = strtol(port, &end, 10);
	if (!*port || *end || p < 0 || p > 65535)
		return -1;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
	struct addrinfo *res;
	if (getaddrinfo(host[0] ? host : NULL, port, &hints, &res) != 0)
		return -1;
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	*len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

static int port_of(const struct sockaddr_storage *ss);

/* "127.0.0.1:8081" or "[::1]:8081"; size >= 64 always fits */
static void format_addr(const struct sockaddr_storage *ss, char *buf, size_t size)
{
	char host[INET6_ADDRSTRLEN] = "?";
	if (ss->ss_family == AF_INET6) {
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, host,
			  sizeof(host));
		snprintf(buf, size, "[%s]:%d", host, port_of(ss));
	} else {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, host, sizeof(host));
		snprintf(buf, size, "%s:%d", host, port_of(ss));
	}
}

static int port_of(const struct sockaddr_storage *ss)
{
	return ss->ss_family == AF_INET6 ? ntohs(((const struct sockaddr_in6 *)ss)->sin6_port)
					 : ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

static void set_port(struct sockaddr_storage *ss, int port)
{
	if (ss->ss_family == AF_INET6)
		((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
	else
		((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
}

/* A bound, listening, nonblocking socket, or -1 with the error printed. */
static int open_listener(const char *arg, const struct sockaddr_storage *ss, socklen_t len,
			 bool reuseport)
{
	int one = 1;
	int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		fprintf(stderr, "demo-upstream: %s: socket: %s\n", arg, strerror(errno));
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ss->ss_family == AF_INET6) /* so [::]:P and 0.0.0.0:P can both be given */
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
		fprintf(stderr, "demo-upstream: %s: SO_REUSEPORT: %s\n", arg, strerror(errno));
		close(fd);
		return -1;
	}
	if (bind(fd, (const struct sockaddr *)ss, len) < 0) {
		fprintf(stderr, "demo-upstream: %s: bind: %s\n", arg, strerror(errno));
		close(fd);
		return -1;
	}
	if (listen(fd, 65535) < 0) {
		fprintf(stderr, "demo-upstream: %s: listen: %s\n", arg, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			fprintf(stderr, "demo-upstream: setrlimit(RLIMIT_NOFILE): %s\n",
				strerror(errno));
	}
}

/* -w N: the parent only forwards SIGTERM/SIGINT and reaps. A worker that
 * ends on its own takes the others down, and a crash makes the exit status 1,
 * so a benchmark never runs on fewer workers than it asked for unnoticed. */
static void kill_all(const pid_t *pids, int n, int sig)
{
	for (int i = 0; i < n; i++)
		if (pids[i] > 0)
			kill(pids[i], sig);
}

static int supervise(pid_t *pids, int n)
{
	sigset_t set;
	int alive = n, rc = 0;
	bool stopping = false;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGCHLD);
	while (alive > 0) {
		struct timespec ts = {.tv_sec = 5};
		int sig = sigtimedwait(&set, NULL, stopping ? &ts : NULL);
		if (sig < 0) {
			if (errno == EAGAIN) /* a worker ignored SIGTERM for 5 s */
				kill_all(pids, n, SIGKILL);
			continue;
		}
		if (sig != SIGCHLD) {
			if (!stopping)
				kill_all(pids, n, SIGTERM);
			stopping = true;
			continue;
		}
		int st;
		pid_t pid;
		while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
			for (int i = 0; i < n; i++) {
				if (pids[i] != pid)
					continue;
				pids[i] = 0;
				alive--;
				if (WIFSIGNALED(st) && WTERMSIG(st) != SIGTERM &&
				    WTERMSIG(st) != SIGINT) {
					fprintf(stderr,
						"demo-upstream: worker %d killed by signal %d\n",
						(int)pid, WTERMSIG(st));
					rc = 1;
				} else if (WIFEXITED(st) && WEXITSTATUS(st) != 0) {
					fprintf(stderr,
						"demo-upstream: worker %d exited with status %d\n",
						(int)pid, WEXITSTATUS(st));
					rc = 1;
				}
			}
		}
		if (!stopping && alive > 0)
			kill_all(pids, n, SIGTERM);
		stopping = true;
	}
	return rc;
}

int main(int argc, char **argv)
{
	static struct listener ls[MAX_WORKERS][MAX_LISTENERS];
	static pid_t pids[MAX_WORKERS];
	const char *args[MAX_LISTENERS];
	struct sockaddr_storage addrs[MAX_LISTENERS];
	socklen_t lens[MAX_LISTENERS];
	int nls = 0, workers = 1, opt;

	while ((opt = getopt(argc, argv, "l:w:h")) != -1) {
		if (opt == 'l') {
			if (nls == MAX_LISTENERS) {
				fprintf(stderr, "demo-upstream: at most %d -l\n", MAX_LISTENERS);
				return 2;
			}
			if (parse_addr(optarg, &addrs[nls], &lens[nls]) < 0) {
				fprintf(stderr,
					"demo-upstream: -l %s: want HOST:PORT or [V6]:PORT\n",
					optarg);
				return 2;
			}
			args[nls++] = optarg;
		} else if (opt == 'w') {
			char *end;
			long w = strtol(optarg, &end, 10);
			if (!*optarg || *end || w < 1 || w > MAX_WORKERS) {
				fprintf(stderr, "demo-upstream: -w %s: want 1..%d\n", optarg,
					MAX_WORKERS);
				return 2;
			}
			workers = (int)w;
		} else if (opt == 'h') {
			usage(stdout);
			return 0;
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (nls == 0 || optind != argc) {
		usage(stderr);
		return 2;
	}

	raise_nofile();
	memset(xbuf, 'x', sizeof(xbuf));
	signal(SIGPIPE, SIG_IGN);
	signal(SIGTERM, SIG_DFL); /* a background job of a script starts with SIGINT ignored */
	signal(SIGINT, SIG_DFL);
	sigset_t sigs, all;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	all = sigs;
	sigaddset(&all, SIGCHLD);
	sigprocmask(SIG_BLOCK, &all, NULL); /* received through signalfd / sigtimedwait */

	/* Every worker's socket of every listener exists before any fork, so a
	 * bad address fails here, once. With several workers each address first
	 * takes a plain bind, so a port someone else listens on is reported
	 * instead of silently joining their SO_REUSEPORT group. */
	for (int j = 0; j < nls; j++) {
		if (workers > 1) {
			int probe = open_listener(args[j], &addrs[j], lens[j], false);
			if (probe < 0)
				return 1;
			socklen_t len = lens[j];
			getsockname(probe, (struct sockaddr *)&addrs[j],
				    &len); /* port 0 -> the real one */
			close(probe);
		}
		for (int w = 0; w < workers; w++) {
			struct listener *l = &ls[w][j];
			l->kind = K_LISTENER;
			l->fd = open_listener(args[j], &addrs[j], lens[j], workers > 1);
			if (l->fd < 0)
				return 1;
			struct sockaddr_storage bound;
			socklen_t len = sizeof(bound);
			getsockname(l->fd, (struct sockaddr *)&bound, &len);
			if (port_of(&addrs[j]) == 0)
				set_port(&addrs[j], port_of(&bound));
			format_addr(&bound, l->name, sizeof(l->name));
			int hn = snprintf(l->hello, sizeof(l->hello),
					  "hello from demo-upstream (port %d)\n", port_of(&bound));
			l->hello_len = (size_t)hn;
		}
		if (workers > 1)
			fprintf(stderr, "demo-upstream: listening on %s (%d workers)\n",
				ls[0][j].name, workers);
		else
			fprintf(stderr, "demo-upstream: listening on %s\n", ls[0][j].name);
	}

	if (workers == 1)
		return worker_run(ls[0], nls, &sigs);

	pid_t parent = getpid();
	for (int w = 0; w < workers; w++) {
		pid_t pid = fork();
		if (pid < 0) {
			perror("demo-upstream: fork");
			for (int i = 0; i < w; i++)
				kill(pids[i], SIGTERM);
			supervise(pids, w);
			return 1;
		}
		if (pid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the parent */
			if (getppid() != parent)
				_exit(0);
			for (int o = 0; o < workers; o++)
				if (o != w)
					for (int j = 0; j < nls; j++)
						close(ls[o][j].fd);
			exit(worker_run(ls[w], nls, &sigs));
		}
		pids[w] = pid;
	}
	for (int w = 0; w < workers; w++)
		for (int j = 0; j < nls; j++)
			close(ls[w][j].fd);
	return supervise(pids, workers);
}
