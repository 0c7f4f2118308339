/* health: servers are numbered across upstreams in file order; a new
 * generation starts with every server up, except that a reload keeps the
 * state (down, and the streak of failed checks) of each server the previous
 * generation checked under the same upstream name and address, wherever it
 * now sits in the list, and of no other. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "conf/conf.h"
#include "tests/unit/conf_text.h"
#include "proxy/control.h"
#include "proxy/health.h"
#include "runtime/log.h"
#include "tests/unit/helpers.h"

#define HC "'health_check': {'interval_ms': 100, 'timeout_ms': 100, 'fall': 2, 'rise': 2}"
#define LISTENER                                                                                   \
	"'listeners': [{'name': 'l', 'listen': '127.0.0.1:8080', 'routes': [{'upstream': 'a'}]}]"

/* The shared-memory arrays one generation writes its verdicts to. */
typedef struct {
	uint8_t *down;
	uint32_t *fails;
} shm_t;

static shm_t shm_new(void)
{
	shm_t s = {calloc(SP_HEALTH_MAX_SERVERS, 1),
		   calloc(SP_HEALTH_MAX_SERVERS, sizeof(uint32_t))};
	assert_non_null(s.down);
	assert_non_null(s.fails);
	return s;
}

static void shm_free(shm_t *s)
{
	free(s->down);
	free(s->fails);
}

/* A configuration from JSON written with ' for ". */
static sp_conf_t *load(const char *text)
{
	return conf_text_load_ok("health.json", text);
}

/* Index of server k of the upstream named name. */
static uint32_t idx(const sp_conf_t *c, const char *name, size_t k)
{
	int u = sp_conf_upstream_index(c, name);
	assert_true(u >= 0);
	assert_true(k < c->upstreams[u].nservers);
	return c->upstreams[u].first_server + (uint32_t)k;
}

/* A reload from old to neu: each generation's configuration, shared memory
 * and health checker. */
typedef struct {
	sp_conf_t *old, *neu;
	shm_t s1, s2;
	sp_health_t *prev, *h;
} reload_t;

/* The old generation, running: the test sets its verdicts in r->s1. */
static void reload_begin(reload_t *r, const char *old_text, const char *new_text)
{
	r->old = load(old_text);
	r->neu = load(new_text);
	r->s1 = shm_new();
	r->s2 = shm_new();
	assert_int_equal(sp_health_new(&r->prev, r->old, r->s1.down, r->s1.fails, NULL, 0), 0);
	assert_non_null(r->prev);
	r->h = NULL;
}

/* The new generation's checker, taking over the old one's verdicts. */
static void reload_inherit(reload_t *r)
{
	assert_int_equal(sp_health_new(&r->h, r->neu, r->s2.down, r->s2.fails, NULL, 0), 0);
	assert_non_null(r->h);
	sp_health_inherit(r->h, r->prev);
}

static void reload_end(reload_t *r)
{
	sp_health_free(r->h);
	sp_health_free(r->prev);
	shm_free(&r->s1);
	shm_free(&r->s2);
	sp_conf_free(r->old);
	sp_conf_free(r->neu);
}

static int setup(void **state)
{
	(void)state;
	sp_log_setup("test_health", SP_LOG_ERROR); /* "is down" warnings are expected */
	return 0;
}

static void test_health_index_numbers_servers_across_upstreams_in_order(void **state)
{
	(void)state;
	sp_conf_t *c = load("{" LISTENER ", 'upstreams': ["
			    "{'name': 'a', 'servers': [{'address': '127.0.0.1:9001'},"
			    " {'address': '127.0.0.1:9002'}]},"
			    "{'name': 'b', 'servers': [{'address': '127.0.0.1:9003'},"
			    " {'address': '127.0.0.1:9004'}, {'address': '127.0.0.1:9005'}]},"
			    "{'name': 'c', 'servers': [{'address': '127.0.0.1:9006'}]}]}");
	assert_int_equal(c->upstreams[0].first_server, 0);
	assert_int_equal(c->upstreams[1].first_server, 2);
	assert_int_equal(c->upstreams[2].first_server, 5);
	assert_int_equal(c->nservers, 6); /* where the numbering ends: the shards' srv_addr */
	assert_int_equal(idx(c, "b", 2), 4);
	sp_conf_free(c);
}

static void test_health_new_generation_starts_with_every_server_up(void **state)
{
	(void)state;
	sp_conf_t *c = load("{" LISTENER ", 'upstreams': ["
			    "{'name': 'a', " HC ", 'servers': [{'address': '127.0.0.1:9001'},"
			    " {'address': '127.0.0.1:9002'}]},"
			    "{'name': 'b', 'servers': [{'address': '127.0.0.1:9003'}]}]}");
	shm_t s = shm_new();
	/* whatever an older generation left in this half of shared memory */
	memset(s.down, 1, 3);
	for (int i = 0; i < 3; i++)
		s.fails[i] = 77;
	sp_health_t *h = NULL;
	assert_int_equal(sp_health_new(&h, c, s.down, s.fails, NULL, 0), 0);
	assert_non_null(h);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(s.down[i], 0);
		assert_int_equal(s.fails[i], 0);
	}
	sp_health_inherit(h, NULL); /* the first generation has no predecessor */
	for (int i = 0; i < 3; i++)
		assert_int_equal(s.down[i], 0);
	sp_health_free(h);
	shm_free(&s);
	sp_conf_free(c);
}

static void test_health_new_without_a_descriptor_to_spare_fails_with_errno_and_reason(void **state)
{
	(void)state;
	sp_conf_t *c = load("{" LISTENER ", 'upstreams': ["
			    "{'name': 'a', " HC ", 'servers': [{'address': '127.0.0.1:9001'}]}]}");
	shm_t s = shm_new();
	struct rlimit was, tight;
	char err[128] = "";
	sp_health_t *h = NULL;
	int next = dup(0); /* the lowest free descriptor: the limit goes just below it */
	assert_true(next >= 0);
	close(next);
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &was), 0);
	tight = was;
	tight.rlim_cur = (rlim_t)next;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &tight), 0);
	int ret = sp_health_new(&h, c, s.down, s.fails, err, sizeof(err));
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &was), 0);
	assert_int_equal(ret, -EMFILE);
	assert_null(h);
	assert_non_null(strstr(err, "health checks: epoll_create1: "));
	shm_free(&s);
	sp_conf_free(c);
}

static void test_health_inherit_keeps_down_of_the_same_server_at_its_new_index(void **state)
{
	(void)state;
	reload_t r;
	/* the reload adds a server in front of each list and an upstream in
	 * front of b: every old server moves */
	reload_begin(&r,
		     "{" LISTENER ", 'upstreams': ["
		     "{'name': 'a', " HC ", 'servers': [{'address': '127.0.0.1:9001'},"
		     " {'address': '127.0.0.1:9002'}]},"
		     "{'name': 'b', " HC ", 'servers': [{'address': '127.0.0.1:9003'}]}]}",
		     "{" LISTENER ", 'upstreams': ["
		     "{'name': 'a', " HC ", 'servers': [{'address': '127.0.0.1:9000'},"
		     " {'address': '127.0.0.1:9001'}, {'address': '127.0.0.1:9002'}]},"
		     "{'name': 'z', " HC ", 'servers': [{'address': '127.0.0.1:9100'}]},"
		     "{'name': 'b', " HC ", 'servers': [{'address': '127.0.0.1:9099'},"
		     " {'address': '127.0.0.1:9003'}]}]}");
	r.s1.down[idx(r.old, "a", 1)] = 1; /* 127.0.0.1:9002 */
	r.s1.down[idx(r.old, "b", 0)] = 1; /* 127.0.0.1:9003 */

	reload_inherit(&r);
	assert_int_equal(r.s2.down[idx(r.neu, "a", 0)], 0); /* new server */
	assert_int_equal(r.s2.down[idx(r.neu, "a", 1)], 0); /* 9001: was up */
	assert_int_equal(r.s2.down[idx(r.neu, "a", 2)], 1); /* 9002 */
	assert_int_equal(r.s2.down[idx(r.neu, "z", 0)], 0);
	assert_int_equal(r.s2.down[idx(r.neu, "b", 0)], 0);
	assert_int_equal(r.s2.down[idx(r.neu, "b", 1)], 1); /* 9003 */
	/* nothing else of the new half was touched */
	for (uint32_t i = 0; i < 7; i++)
		if (i != idx(r.neu, "a", 2) && i != idx(r.neu, "b", 1))
			assert_int_equal(r.s2.down[i], 0);
	/* the previous generation's verdicts are read, not changed */
	assert_int_equal(r.s1.down[idx(r.old, "a", 1)], 1);
	assert_int_equal(r.s1.down[idx(r.old, "b", 0)], 1);
	reload_end(&r);
}

static void test_health_inherit_keeps_nothing_of_other_servers(void **state)
{
	(void)state;
	reload_t r;
	/* same index, other addresses; and the old addresses under other
	 * upstream names */
	reload_begin(&r,
		     "{" LISTENER ", 'upstreams': ["
		     "{'name': 'a', " HC ", 'servers': [{'address': '127.0.0.1:9001'}]},"
		     "{'name': 'b', " HC ", 'servers': [{'address': '127.0.0.2:9002'}]}]}",
		     "{" LISTENER ", 'upstreams': ["
		     "{'name': 'a', " HC ", 'servers': [{'address': '127.0.0.1:9011'},"
		     " {'address': '127.0.0.2:9002'}]},"
		     "{'name': 'b', " HC ", 'servers': [{'address': '127.0.0.3:9002'},"
		     " {'address': '127.0.0.1:9001'}]},"
		     "{'name': 'c', " HC ", 'servers': [{'address': '127.0.0.1:9001'}]}]}");
	r.s1.down[idx(r.old, "a", 0)] = 1;
	r.s1.down[idx(r.old, "b", 0)] = 1;
	reload_inherit(&r);
	for (uint32_t i = 0; i < 5; i++)
		if (r.s2.down[i])
			fail_msg(
			    "server %u of the new generation inherited 'down' from another server",
			    i);
	reload_end(&r);
}

static void test_health_server_no_longer_checked_starts_up(void **state)
{
	(void)state;
	reload_t r;
	reload_begin(&r,
		     "{" LISTENER ", 'upstreams': ["
		     "{'name': 'a', " HC ", 'servers': [{'address': '127.0.0.1:9001'}]}]}",
		     "{" LISTENER ", 'upstreams': ["
		     "{'name': 'a', 'servers': [{'address': '127.0.0.1:9001'}]}]}");
	r.s1.down[0] = 1;
	reload_inherit(&r);
	/* nobody checks it any more, so nothing would ever bring it back up */
	assert_int_equal(r.s2.down[0], 0);
	assert_int_equal(sp_health_timeout(r.h), -1);
	reload_end(&r);
}

/* Run the checks that are due now to their end (at most 1 s). */
static void run_due_checks(sp_health_t *h)
{
	struct pollfd pfd[8];
	uint64_t deadline = th_mono_ms() + 1000;
	sp_health_run(h, NULL, 0);
	for (;;) {
		int n = sp_health_pollfds(h, pfd, 8);
		if (n == 0)
			return;
		if (th_mono_ms() > deadline)
			fail_msg("a health check to a refused port did not finish in 1 s");
		assert_true(poll(pfd, (nfds_t)n, 200) >= 0);
		sp_health_run(h, pfd, n);
	}
}

/* A loopback port that refuses connections while the returned socket lives:
 * bound, never listening. */
static int refusing_port(in_port_t *port)
{
	struct sockaddr_in a;
	int fd = th_loopback_bound(SOCK_STREAM | SOCK_CLOEXEC, &a);
	*port = ntohs(a.sin_port);
	return fd;
}

static void test_health_inherit_keeps_the_streak_of_failed_checks(void **state)
{
	(void)state;
	char text[512];
	in_port_t port;
	int guard = refusing_port(&port);
	/* fall 2: one failed check is not enough to go down */
	snprintf(text, sizeof(text),
		 "{" LISTENER ", 'upstreams': [{'name': 'a', " HC
		 ", 'servers': [{'address': '127.0.0.1:%u'}]}]}",
		 (unsigned)port);
	sp_conf_t *c1 = load(text), *c2 = load(text), *c3 = load(text);
	shm_t s1 = shm_new(), s2 = shm_new(), s3 = shm_new();

	sp_health_t *prev = NULL;
	assert_int_equal(sp_health_new(&prev, c1, s1.down, s1.fails, NULL, 0), 0);
	assert_non_null(prev);
	assert_int_equal(sp_health_timeout(prev), 0); /* the first check is due at once */
	run_due_checks(prev);
	assert_int_equal(s1.down[0], 0);

	/* reloaded: this generation's first failure is the second in a row */
	sp_health_t *h = NULL;
	assert_int_equal(sp_health_new(&h, c2, s2.down, s2.fails, NULL, 0), 0);
	assert_non_null(h);
	sp_health_inherit(h, prev);
	assert_int_equal(s2.down[0], 0);
	run_due_checks(h);
	assert_int_equal(s2.down[0], 1);

	/* the same without the reload's memory: still up after one failure */
	sp_health_t *fresh = NULL;
	assert_int_equal(sp_health_new(&fresh, c3, s3.down, s3.fails, NULL, 0), 0);
	assert_non_null(fresh);
	run_due_checks(fresh);
	assert_int_equal(s3.down[0], 0);

	sp_health_free(fresh);
	sp_health_free(h);
	sp_health_free(prev);
	shm_free(&s1);
	shm_free(&s2);
	shm_free(&s3);
	sp_conf_free(c1);
	sp_conf_free(c2);
	sp_conf_free(c3);
	close(guard);
}

static void test_health_timeout_is_minus_one_when_nothing_is_checked(void **state)
{
	(void)state;
	sp_conf_t *c = load("{" LISTENER ", 'upstreams': ["
			    "{'name': 'a', 'servers': [{'address': '127.0.0.1:9001'}]}]}");
	shm_t s = shm_new();
	sp_health_t *h = NULL;
	assert_int_equal(sp_health_new(&h, c, s.down, s.fails, NULL, 0), 0);
	assert_non_null(h);
	assert_int_equal(sp_health_timeout(h), -1);
	struct pollfd pfd[2];
	sp_health_run(h, NULL, 0);
	assert_int_equal(sp_health_pollfds(h, pfd, 2), 0); /* no check started */
	sp_health_free(h);
	shm_free(&s);
	sp_conf_free(c);
}

/* A loopback listener whose accept queue is full: connects to it stay in
 * flight (their SYNs are dropped) until it has room again. */
static int full_listener(in_port_t *port, int *filler)
{
	int lfd = refusing_port(port);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(*port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(listen(lfd, 0), 0);
	*filler = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(connect(*filler, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return lfd;
}

/* The supervisor polls at most 256 health descriptors beside its own. With
 * 260 servers that never answer in flight, a healthy server checked after
 * them must still be seen answering, not starve until its timeout and be
 * marked down. On loopback a check normally completes inside connect(), so
 * the healthy server is a listener whose queue is full while the checks
 * start and has room again by the SYN's retransmission at 1 s. */
static void test_health_server_past_260_unanswered_checks_is_seen_answering(void **state)
{
	(void)state;
	/* One server per upstream: the first checks of an upstream's servers
	 * are spread over an interval, and these must all start at once. */
	enum { NBH = 260 };
	in_port_t bh_port, ok_port;
	int bh_fill, ok_fill;
	int bh = full_listener(&bh_port, &bh_fill), ok = full_listener(&ok_port, &ok_fill);
	size_t cap = 256 + (NBH + 1) * 200, n = 0;
	char *text = malloc(cap);
	assert_non_null(text);
	n += (size_t)snprintf(text + n, cap - n, "{" LISTENER ", 'upstreams': [");
	for (int u = 0; u <= NBH; u++)
		n += (size_t)snprintf(text + n, cap - n,
				      "%s{'name': '%c%.0d', 'health_check': {'interval_ms': 2000, "
				      "'timeout_ms': 2000, 'fall': 1, 'rise': 1}, "
				      "'servers': [{'address': '127.0.0.1:%u'}]}",
				      u ? "," : "", u ? 'u' : 'a', u,
				      (unsigned)(u < NBH ? bh_port : ok_port));
	snprintf(text + n, cap - n, "]}");
	sp_conf_t *c = load(text);
	shm_t s = shm_new();
	sp_health_t *h = NULL;
	assert_int_equal(sp_health_new(&h, c, s.down, s.fails, NULL, 0), 0);
	assert_non_null(h);
	uint64_t start = th_mono_ms();
	bool widened = false;
	while (th_mono_ms() < start + 2500) {
		struct pollfd pfd[256];
		int np = sp_health_pollfds(h, pfd, 256);
		int t = sp_health_timeout(h);
		assert_true(poll(pfd, (nfds_t)np, t < 0 || t > 50 ? 50 : t) >= 0);
		sp_health_run(h, pfd, np);
		if (!widened && th_mono_ms() > start + 300) { /* every check has started */
			assert_int_equal(listen(ok, 64), 0);
			widened = true;
		}
	}
	for (uint32_t i = 0; i < NBH; i++)
		assert_int_equal(s.down[i], 1); /* they timed out */
	if (s.down[NBH])
		fail_msg("the healthy server checked after %d unanswered ones was marked down", NBH);
	sp_health_free(h);
	shm_free(&s);
	sp_conf_free(c);
	free(text);
	close(bh_fill);
	close(ok_fill);
	close(bh);
	close(ok);
}

/* With run-time control: a disabled server is not checked (its verdict
 * stays as it was), the others are; a host name's empty slot is not
 * checked, and a reset (its address changed) brings a down server up. */
static void test_health_skips_disabled_servers_and_empty_slots_and_reset_clears(void **state)
{
	(void)state;
	in_port_t p1, p2;
	int f1 = refusing_port(&p1), f2 = refusing_port(&p2);
	char text[1024];
	snprintf(text, sizeof(text),
		 "{" LISTENER ", 'upstreams': [{'name': 'a', 'health_check': {'interval_ms': 100, "
		 "'timeout_ms': 100, 'fall': 1, 'rise': 1}, 'servers': [{'address': '127.0.0.1:%u'}, "
		 "{'address': '127.0.0.1:%u'}, {'address': 'svc.test:80'}]}]}",
		 p1, p2);
	sp_conf_t *c = load(text);
	shm_t s = shm_new();
	sp_server_ctl_t *ctl = calloc(c->upstreams[0].nservers, sizeof(*ctl));
	assert_non_null(ctl);
	sp_control_init(c, ctl);
	ctl[1].admin = SP_SRV_DISABLED;
	sp_health_t *h = NULL;
	assert_int_equal(sp_health_new(&h, c, s.down, s.fails, NULL, 0), 0);
	assert_non_null(h);
	sp_health_set_ctl(h, ctl);
	uint64_t end = th_mono_ms() + 400;
	while (th_mono_ms() < end) {
		run_due_checks(h);
		struct timespec ts = {0, 20 * 1000000};
		nanosleep(&ts, NULL);
	}
	assert_int_equal(s.down[0], 1); /* checked: refused */
	assert_int_equal(s.down[1], 0); /* disabled: never checked */
	for (unsigned k = 2; k < c->upstreams[0].nservers; k++)
		assert_int_equal(s.down[k], 0); /* empty slots */
	sp_health_reset(h, 0);
	assert_int_equal(s.down[0], 0);
	sp_health_free(h);
	free(ctl);
	shm_free(&s);
	sp_conf_free(c);
	close(f1);
	close(f2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_health_index_numbers_servers_across_upstreams_in_order),
	    cmocka_unit_test(test_health_new_generation_starts_with_every_server_up),
	    cmocka_unit_test(test_health_new_without_a_descriptor_to_spare_fails_with_errno_and_reason),
	    cmocka_unit_test(test_health_inherit_keeps_down_of_the_same_server_at_its_new_index),
	    cmocka_unit_test(test_health_inherit_keeps_nothing_of_other_servers),
	    cmocka_unit_test(test_health_server_no_longer_checked_starts_up),
	    cmocka_unit_test(test_health_inherit_keeps_the_streak_of_failed_checks),
	    cmocka_unit_test(test_health_timeout_is_minus_one_when_nothing_is_checked),
	    cmocka_unit_test(test_health_server_past_260_unanswered_checks_is_seen_answering),
	    cmocka_unit_test(test_health_skips_disabled_servers_and_empty_slots_and_reset_clears),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
