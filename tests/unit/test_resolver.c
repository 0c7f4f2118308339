/* resolver: look-ups answered by a fake nameserver on 127.0.0.1 that this
 * test runs in its own poll loop, next to the resolver's sockets (so nothing
 * here needs a thread, and the test proves the resolver never blocks: every
 * answer arrives through poll). The nameserver answers A queries from a
 * list the test changes, answers NXDOMAIN, or stays silent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/resolver.h"
#include "tests/unit/fake_dns.h"
#include "tests/unit/helpers.h"

typedef struct {
	bool done;
	int err;
	char why[128];
	struct sockaddr_storage addrs[SP_RESOLVER_MAX_ADDRS];
	size_t n;
} answer_t;

static void on_answer(void *arg, int err, const char *why, const struct sockaddr_storage *addrs,
		      size_t n)
{
	answer_t *a = arg;
	a->done = true;
	a->err = err;
	snprintf(a->why, sizeof(a->why), "%s", why ? why : "");
	if (n)
		memcpy(a->addrs, addrs, n * sizeof(*addrs));
	a->n = n;
}

/* What each test runs on: a fake nameserver and a resolver that asks it;
 * the teardown frees both, also when an assertion ended the test. */
typedef struct {
	fake_dns_t d;
	sp_resolver_t *r;
} fx_t;

static fx_t fx;

static int fx_setup(void **state)
{
	char err[128];
	dns_start(&fx.d);
	sp_addr_t ns = dns_addr(&fx.d);
	fx.r = NULL;
	assert_int_equal(sp_resolver_new(&fx.r, &ns, 1, err, sizeof(err)), 0);
	*state = &fx;
	return 0;
}

static int fx_teardown(void **state)
{
	fx_t *f = *state;
	sp_resolver_free(f->r);
	close(f->d.fd);
	return 0;
}

/* The supervisor's loop in small: poll the resolver and the nameserver,
 * never waiting longer than either asks. Fails if no answer in limit_ms. */
static void run_until(fx_t *f, answer_t *a, unsigned limit_ms)
{
	uint64_t deadline = th_mono_ms() + limit_ms;
	while (!a->done) {
		struct pollfd pfd[1 + 16];
		pfd[0] = (struct pollfd){.fd = f->d.fd, .events = POLLIN};
		int n = sp_resolver_pollfds(f->r, pfd + 1, 16);
		int t = sp_resolver_timeout(f->r);
		assert_true(t <= (int)SP_RESOLVER_TIMEOUT_MS * 8);
		assert_true(th_mono_ms() < deadline);
		poll(pfd, (nfds_t)(1 + n), t < 0 || t > 50 ? 50 : t);
		if (pfd[0].revents & POLLIN)
			dns_serve(&f->d);
		sp_resolver_process(f->r, pfd + 1, n);
	}
}

/* Look name up and wait (at most limit_ms) for the answer in *a. */
static void lookup(fx_t *f, const char *name, uint16_t port, answer_t *a, unsigned limit_ms)
{
	*a = (answer_t){0};
	assert_int_equal(sp_resolver_lookup(f->r, name, port, on_answer, a), 0);
	run_until(f, a, limit_ms);
}

static const char *ntop(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
	assert_int_equal(ss->ss_family, AF_INET);
	inet_ntop(AF_INET, &s4->sin_addr, buf, (socklen_t)len);
	snprintf(buf + strlen(buf), len - strlen(buf), ":%u", ntohs(s4->sin_port));
	return buf;
}

static void test_resolver_name_with_several_addresses_gives_each_sorted_with_port(void **state)
{
	fx_t *f = *state;
	answer_t a;
	char buf[64];
	f->d.addrs[0] = "127.0.0.3";
	f->d.addrs[1] = "127.0.0.2";
	f->d.addrs[2] = "127.0.0.3"; /* a duplicate counts once */
	a = (answer_t){0};
	assert_int_equal(sp_resolver_lookup(f->r, "svc.shardproxy.test", 9000, on_answer, &a), 0);
	assert_int_equal(sp_resolver_pending(f->r), 1);
	run_until(f, &a, 3000);
	assert_int_equal(a.err, 0);
	assert_int_equal(a.n, 2);
	assert_string_equal(ntop(&a.addrs[0], buf, sizeof(buf)), "127.0.0.2:9000");
	assert_string_equal(ntop(&a.addrs[1], buf, sizeof(buf)), "127.0.0.3:9000");
	assert_int_equal(sp_resolver_pending(f->r), 0);
	assert_int_equal(sp_resolver_timeout(f->r), -1);
}

static void test_resolver_second_lookup_sees_the_new_answers(void **state)
{
	fx_t *f = *state;
	answer_t a, b;
	char buf[64];
	f->d.addrs[0] = "127.0.0.2";
	lookup(f, "svc.shardproxy.test", 80, &a, 3000);
	assert_int_equal(a.n, 1);
	f->d.addrs[0] = "127.0.0.4";
	f->d.addrs[1] = "127.0.0.5";
	lookup(f, "svc.shardproxy.test", 80, &b, 3000);
	assert_int_equal(b.err, 0);
	assert_int_equal(b.n, 2);
	assert_string_equal(ntop(&b.addrs[0], buf, sizeof(buf)), "127.0.0.4:80");
	assert_string_equal(ntop(&b.addrs[1], buf, sizeof(buf)), "127.0.0.5:80");
}

static void test_resolver_nxdomain_fails_with_enoent_and_a_reason(void **state)
{
	fx_t *f = *state;
	answer_t a;
	f->d.mode = DNS_NXDOMAIN;
	lookup(f, "gone.shardproxy.test", 80, &a, 3000);
	assert_int_equal(a.err, -ENOENT);
	assert_int_equal(a.n, 0);
	assert_true(strlen(a.why) > 0);
}

/* A nameserver that never answers: the look-up fails with a timeout after
 * the bounded retries, and the loop kept turning all along (run_until polls
 * at most 50 ms at a time and asserts the resolver's timeout is bounded). */
static void test_resolver_silent_nameserver_times_out_without_blocking(void **state)
{
	fx_t *f = *state;
	answer_t a = {0};
	f->d.mode = DNS_SILENT;
	uint64_t t0 = th_mono_ms();
	sp_resolver_lookup(f->r, "silent.shardproxy.test", 80, on_answer, &a);
	assert_false(a.done);
	run_until(f, &a, 20000);
	assert_int_equal(a.err, -ETIMEDOUT);
	assert_true(f->d.queries >= SP_RESOLVER_TRIES);
	assert_true(th_mono_ms() - t0 >= SP_RESOLVER_TIMEOUT_MS);
}

static void test_resolver_free_cancels_lookups_in_flight(void **state)
{
	fx_t *f = *state;
	answer_t a = {0};
	f->d.mode = DNS_SILENT;
	sp_resolver_lookup(f->r, "silent.shardproxy.test", 80, on_answer, &a);
	sp_resolver_free(f->r);
	f->r = NULL;
	assert_true(a.done);
	assert_int_equal(a.err, -ECANCELED);
}

/* /etc/hosts answers first (as the C library would), no nameserver asked. */
static void test_resolver_localhost_comes_from_the_hosts_file(void **state)
{
	fx_t *f = *state;
	answer_t a;
	f->d.mode = DNS_SILENT;
	lookup(f, "localhost", 9002, &a, 3000);
	assert_int_equal(a.err, 0);
	assert_true(a.n >= 1);
	assert_int_equal(f->d.queries, 0);
}

static void test_resolver_default_nameservers_come_from_resolv_conf(void **state)
{
	(void)state;
	sp_resolver_t *r = NULL;
	char err[128];
	assert_int_equal(sp_resolver_new(&r, NULL, 0, err, sizeof(err)), 0);
	assert_int_equal(sp_resolver_timeout(r), -1);
	sp_resolver_free(r);
}

#define FX(f) cmocka_unit_test_setup_teardown(f, fx_setup, fx_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		FX(test_resolver_name_with_several_addresses_gives_each_sorted_with_port),
		FX(test_resolver_second_lookup_sees_the_new_answers),
		FX(test_resolver_nxdomain_fails_with_enoent_and_a_reason),
		FX(test_resolver_silent_nameserver_times_out_without_blocking),
		FX(test_resolver_free_cancels_lookups_in_flight),
		FX(test_resolver_localhost_comes_from_the_hosts_file),
		cmocka_unit_test(test_resolver_default_nameservers_come_from_resolv_conf),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
