/* names: a host name's answer lands in its slots of the shared control
 * array (one address per slot, the rest empty); a changed answer rewrites
 * them; a failed look-up keeps them and is counted; at start a name that
 * cannot be resolved is fatal unless its upstream re-resolves, and then a
 * reload takes the running generation's addresses for it. A fake
 * nameserver (fake_dns.h) answers in the test's own poll loop. */
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

#include "conf/conf.h"
#include "tests/unit/conf_text.h"
#include "tests/unit/fake_dns.h"
#include "proxy/control.h"
#include "proxy/health.h"
#include "proxy/names.h"
#include "proxy/resolver.h"
#include "tests/unit/helpers.h"

static sp_conf_t *conf_for(const fake_dns_t *d, const char *upstream_extra)
{
	char text[2048];
	snprintf(text, sizeof(text),
		 "{'resolvers': ['127.0.0.1:%u'],"
		 " 'listeners': [{'name': 'l', 'listen': '127.0.0.1:8080', 'routes': [{'upstream': 'u'}]}],"
		 " 'upstreams': [{'name': 'u', 'servers': [{'address': '127.0.0.1:1'},"
		 " {'address': 'svc.test:9000'}]%s}]}",
		 d->port, upstream_extra);
	return conf_text_load_ok("names.json", text);
}

/* The supervisor's loop in small, until done(arg) or limit_ms. */
static void run_until(sp_names_t *n, fake_dns_t *d, bool (*done)(void *), void *arg,
		      unsigned limit_ms)
{
	uint64_t deadline = th_mono_ms() + limit_ms;
	while (!done(arg)) {
		struct pollfd pfd[1 + 16];
		pfd[0] = (struct pollfd){.fd = d->fd, .events = POLLIN};
		int np = sp_names_pollfds(n, pfd + 1, 16);
		int t = sp_names_timeout(n);
		assert_true(th_mono_ms() < deadline);
		poll(pfd, (nfds_t)(1 + np), t < 0 || t > 20 ? 20 : t);
		if (pfd[0].revents & POLLIN)
			dns_serve(d);
		sp_names_run(n, pfd + 1, np);
	}
}

static bool settled(void *arg)
{
	return sp_names_settled(arg);
}

/* The name's slots: the upstream's servers 1..8. */
static const char *slot_addr(const sp_server_ctl_t *ctl, unsigned j, char *buf, size_t len)
{
	if (!ctl[1 + j].present)
		return "none";
	sp_control_addr_text(&ctl[1 + j].ss, buf, len);
	return buf;
}

typedef struct {
	sp_server_ctl_t *ctl;
	const char *want0;
} want_t;

static bool slot0_is(void *arg)
{
	want_t *w = arg;
	char buf[64];
	return strcmp(slot_addr(w->ctl, 0, buf, sizeof(buf)), w->want0) == 0;
}

typedef struct {
	sp_names_t *n;
	uint64_t failures;
} fail_t;

static bool failed_once(void *arg)
{
	fail_t *f = arg;
	sp_names_stats_t st;
	sp_names_stats(f->n, 0, &st);
	return st.failures > f->failures;
}

static void test_names_answer_fills_one_slot_per_address_and_empties_the_rest(void **state)
{
	(void)state;
	fake_dns_t d;
	char buf[64];
	dns_start(&d);
	d.addrs[0] = "127.0.0.3";
	d.addrs[1] = "127.0.0.2";
	sp_conf_t *c = conf_for(&d, "");
	sp_server_ctl_t ctl[16];
	sp_control_init(c, ctl);
	assert_true(ctl[0].present); /* the IP address is there from the start */
	sp_names_t *n = NULL;
	char err[128];
	assert_int_equal(sp_names_new(&n, c, ctl, err, sizeof(err)), 0);
	sp_names_start(n);
	run_until(n, &d, settled, n, 3000);
	assert_int_equal(sp_names_first_errors(n, NULL, NULL), 0);
	assert_string_equal(slot_addr(ctl, 0, buf, sizeof(buf)), "127.0.0.2:9000");
	assert_string_equal(slot_addr(ctl, 1, buf, sizeof(buf)), "127.0.0.3:9000");
	for (unsigned j = 2; j < SP_CONF_DNS_SLOTS; j++)
		assert_string_equal(slot_addr(ctl, j, buf, sizeof(buf)), "none");
	sp_names_stats_t st;
	assert_true(sp_names_stats(n, 0, &st));
	assert_int_equal(st.lookups, 1);
	assert_int_equal(st.failures, 0);
	sp_names_free(n);
	sp_conf_free(c);
	close(d.fd);
}

static void test_names_reresolution_rewrites_slots_and_failure_keeps_them(void **state)
{
	(void)state;
	fake_dns_t d;
	char buf[64];
	dns_start(&d);
	d.addrs[0] = "127.0.0.2";
	sp_conf_t *c = conf_for(&d, ", 'resolve_interval_ms': 100");
	sp_server_ctl_t ctl[16];
	sp_control_init(c, ctl);
	sp_names_t *n = NULL;
	char err[128];
	assert_int_equal(sp_names_new(&n, c, ctl, err, sizeof(err)), 0);
	sp_names_start(n);
	run_until(n, &d, settled, n, 3000);
	d.addrs[0] = "127.0.0.4";
	d.addrs[1] = "127.0.0.5";
	want_t w = {ctl, "127.0.0.4:9000"};
	run_until(n, &d, slot0_is, &w, 3000);
	assert_string_equal(slot_addr(ctl, 1, buf, sizeof(buf)), "127.0.0.5:9000");
	d.mode = DNS_SILENT;
	fail_t f = {n, 0};
	run_until(n, &d, failed_once, &f, 8000);
	assert_string_equal(slot_addr(ctl, 0, buf, sizeof(buf)), "127.0.0.4:9000");
	assert_string_equal(slot_addr(ctl, 1, buf, sizeof(buf)), "127.0.0.5:9000");
	sp_names_stats_t st;
	sp_names_stats(n, 0, &st);
	assert_non_null(st.last_error);
	sp_names_free(n);
	sp_conf_free(c);
	close(d.fd);
}

static void test_names_unresolvable_at_start_is_fatal_with_its_place(void **state)
{
	(void)state;
	fake_dns_t d;
	dns_start(&d);
	d.mode = DNS_NXDOMAIN;
	sp_conf_t *c = conf_for(&d, "");
	sp_server_ctl_t ctl[16];
	sp_control_init(c, ctl);
	sp_names_t *n = NULL;
	char err[128];
	sp_conf_errors_t errs = {0};
	assert_int_equal(sp_names_new(&n, c, ctl, err, sizeof(err)), 0);
	sp_names_start(n);
	run_until(n, &d, settled, n, 3000);
	assert_int_equal(sp_names_first_errors(n, NULL, &errs), 1);
	assert_int_equal(errs.n, 1);
	assert_non_null(strstr(errs.msgs[0], "names.json:1:"));
	assert_non_null(strstr(errs.msgs[0], "upstreams[0].servers[1].address: cannot resolve "
					     "\"svc.test\""));
	sp_conf_errors_free(&errs);
	sp_names_free(n);
	sp_conf_free(c);
	close(d.fd);
}

/* With resolve_interval_ms: not fatal; empty at start, and a reload takes
 * the running generation's last good addresses for the same name. */
static void test_names_reresolved_name_failing_takes_the_previous_addresses(void **state)
{
	(void)state;
	fake_dns_t d;
	char buf[64], err[128];
	dns_start(&d);
	d.addrs[0] = "127.0.0.2";
	sp_conf_t *c1 = conf_for(&d, ", 'resolve_interval_ms': 60000");
	sp_conf_t *c2 = conf_for(&d, ", 'resolve_interval_ms': 60000");
	sp_server_ctl_t ctl1[16], ctl2[16];
	sp_control_init(c1, ctl1);
	sp_control_init(c2, ctl2);
	sp_names_t *n1 = NULL, *n2 = NULL;
	assert_int_equal(sp_names_new(&n1, c1, ctl1, err, sizeof(err)), 0);
	sp_names_start(n1);
	run_until(n1, &d, settled, n1, 3000);
	d.mode = DNS_NXDOMAIN;
	assert_int_equal(sp_names_new(&n2, c2, ctl2, err, sizeof(err)), 0);
	sp_names_start(n2);
	run_until(n2, &d, settled, n2, 3000);
	assert_int_equal(sp_names_first_errors(n2, NULL, NULL), 0);
	assert_string_equal(slot_addr(ctl2, 0, buf, sizeof(buf)), "none");
	assert_int_equal(sp_names_first_errors(n2, n1, NULL), 0);
	assert_string_equal(slot_addr(ctl2, 0, buf, sizeof(buf)), "127.0.0.2:9000");
	sp_names_free(n1);
	sp_names_free(n2);
	sp_conf_free(c1);
	sp_conf_free(c2);
	close(d.fd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names_answer_fills_one_slot_per_address_and_empties_the_rest),
		cmocka_unit_test(test_names_reresolution_rewrites_slots_and_failure_keeps_them),
		cmocka_unit_test(test_names_unresolvable_at_start_is_fatal_with_its_place),
		cmocka_unit_test(test_names_reresolved_name_failing_takes_the_previous_addresses),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
