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
#include <time.h>
#include <unistd.h>

#include "proxy/resolver.h"
#include "tests/unit/fake_dns.h"

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

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The supervisor's loop in small: poll the resolver and the nameserver,
 * never waiting longer than either asks. Fails if no answer in limit_ms. */
static void run_until(sp_resolver_t *r, fake_dns_t *d, answer_t *a, unsigned limit_ms)
{
	uint64_t deadline = mono_ms() + limit_ms;
	while (!a->done) {
		struct pollfd pfd[1 + 16];
		pfd[0] = (struct pollfd){.fd = d->fd, .events = POLLIN};
		int n = sp_resolver_pollfds(r, pfd + 1, 16);
		int t = sp_resolver_timeout(r);
		assert_true(t <= (int)SP_RESOLVER_TIMEOUT_MS * 8);
		assert_true(mono_ms() < deadline);
		poll(pfd, (nfds_t)(1 + n), t < 0 || t > 50 ? 50 : t);
		if (pfd[0].revents & POLLIN)
			dns_serve(d);
		sp_resolver_process(r, pfd + 1, n);
	}
}

static sp_resolver_t *resolver_for(const fake_dns_t *d)
{
	sp_addr_t ns = dns_addr(d);
	sp_resolver_t *r = NULL;
	char err[128];
	assert_int_equal(sp_resolver_new(&r, &ns, 1, err, sizeof(err)), 0);
	return r;
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
	(void)state;
	fake_dns_t d;
	answer_t a = {0};
	char buf[64];
	dns_start(&d);
	d.addrs[0] = "127.0.0.3";
	d.addrs[1] = "127.0.0.2";
	d.addrs[2] = "127.0.0.3"; /* a duplicate counts once */
	sp_resolver_t *r = resolver_for(&d);
	assert_int_equal(sp_resolver_lookup(r, "svc.shardproxy.test", 9000, on_answer, &a), 0);
	assert_int_equal(sp_resolver_pending(r), 1);
	run_until(r, &d, &a, 3000);
	assert_int_equal(a.err, 0);
	assert_int_equal(a.n, 2);
	assert_string_equal(ntop(&a.addrs[0], buf, sizeof(buf)), "127.0.0.2:9000");
	assert_string_equal(ntop(&a.addrs[1], buf, sizeof(buf)), "127.0.0.3:9000");
	assert_int_equal(sp_resolver_pending(r), 0);
	assert_int_equal(sp_resolver_timeout(r), -1);
	sp_resolver_free(r);
	close(d.fd);
}

static void test_resolver_second_lookup_sees_the_new_answers(void **state)
{
	(void)state;
	fake_dns_t d;
	answer_t a = {0}, b = {0};
	char buf[64];
	dns_start(&d);
	d.addrs[0] = "127.0.0.2";
	sp_resolver_t *r = resolver_for(&d);
	sp_resolver_lookup(r, "svc.shardproxy.test", 80, on_answer, &a);
	run_until(r, &d, &a, 3000);
	assert_int_equal(a.n, 1);
	d.addrs[0] = "127.0.0.4";
	d.addrs[1] = "127.0.0.5";
	sp_resolver_lookup(r, "svc.shardproxy.test", 80, on_answer, &b);
	run_until(r, &d, &b, 3000);
	assert_int_equal(b.err, 0);
	assert_int_equal(b.n, 2);
	assert_string_equal(ntop(&b.addrs[0], buf, sizeof(buf)), "127.0.0.4:80");
	assert_string_equal(ntop(&b.addrs[1], buf, sizeof(buf)), "127.0.0.5:80");
	sp_resolver_free(r);
	close(d.fd);
}

static void test_resolver_nxdomain_fails_with_enoent_and_a_reason(void **state)
{
	(void)state;
	fake_dns_t d;
	answer_t a = {0};
	dns_start(&d);
	d.mode = DNS_NXDOMAIN;
	sp_resolver_t *r = resolver_for(&d);
	sp_resolver_lookup(r, "gone.shardproxy.test", 80, on_answer, &a);
	run_until(r, &d, &a, 3000);
	assert_int_equal(a.err, -ENOENT);
	assert_int_equal(a.n, 0);
	assert_true(strlen(a.why) > 0);
	sp_resolver_free(r);
	close(d.fd);
}

/* A nameserver that never answers: the look-up fails with a timeout after
 * the bounded retries, and the loop kept turning all along (run_until polls
 * at most 50 ms at a time and asserts the resolver's timeout is bounded). */
static void test_resolver_silent_nameserver_times_out_without_blocking(void **state)
{
	(void)state;
	fake_dns_t d;
	answer_t a = {0};
	dns_start(&d);
	d.mode = DNS_SILENT;
	sp_resolver_t *r = resolver_for(&d);
	uint64_t t0 = mono_ms();
	sp_resolver_lookup(r, "silent.shardproxy.test", 80, on_answer, &a);
	assert_false(a.done);
	run_until(r, &d, &a, 20000);
	assert_int_equal(a.err, -ETIMEDOUT);
	assert_true(d.queries >= SP_RESOLVER_TRIES);
	assert_true(mono_ms() - t0 >= SP_RESOLVER_TIMEOUT_MS);
	sp_resolver_free(r);
	close(d.fd);
}

static void test_resolver_free_cancels_lookups_in_flight(void **state)
{
	(void)state;
	fake_dns_t d;
	answer_t a = {0};
	dns_start(&d);
	d.mode = DNS_SILENT;
	sp_resolver_t *r = resolver_for(&d);
	sp_resolver_lookup(r, "silent.shardproxy.test", 80, on_answer, &a);
	sp_resolver_free(r);
	assert_true(a.done);
	assert_int_equal(a.err, -ECANCELED);
	close(d.fd);
}

/* /etc/hosts answers first (as the C library would), no nameserver asked. */
static void test_resolver_localhost_comes_from_the_hosts_file(void **state)
{
	(void)state;
	fake_dns_t d;
	answer_t a = {0};
	dns_start(&d);
	d.mode = DNS_SILENT;
	sp_resolver_t *r = resolver_for(&d);
	sp_resolver_lookup(r, "localhost", 9002, on_answer, &a);
	run_until(r, &d, &a, 3000);
	assert_int_equal(a.err, 0);
	assert_true(a.n >= 1);
	assert_int_equal(d.queries, 0);
	sp_resolver_free(r);
	close(d.fd);
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_resolver_name_with_several_addresses_gives_each_sorted_with_port),
		cmocka_unit_test(test_resolver_second_lookup_sees_the_new_answers),
		cmocka_unit_test(test_resolver_nxdomain_fails_with_enoent_and_a_reason),
		cmocka_unit_test(test_resolver_silent_nameserver_times_out_without_blocking),
		cmocka_unit_test(test_resolver_free_cancels_lookups_in_flight),
		cmocka_unit_test(test_resolver_localhost_comes_from_the_hosts_file),
		cmocka_unit_test(test_resolver_default_nameservers_come_from_resolv_conf),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
