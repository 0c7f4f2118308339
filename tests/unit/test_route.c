/* route: the first route whose source CIDRs and TLS server names both match
 * wins; a route with sni never matches an unknown server name. The listeners
 * and routes come from a real configuration, loaded from a buffer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <errno.h>
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"
#include "tests/unit/conf_text.h"
#include "shard/route.h"

/* Test JSON is written with ' for " so it reads without escapes. Upstreams
 * are named after what the tests expect to reach. */
#define UPSTREAMS                                                                                  \
	"'upstreams': ["                                                                           \
	"{'name': 'a', 'servers': [{'address': '127.0.0.1:9001'}]},"                               \
	"{'name': 'b', 'servers': [{'address': '127.0.0.1:9002'}]},"                               \
	"{'name': 'c', 'servers': [{'address': '127.0.0.1:9003'}]}]"
#define CONF_WITH_ROUTES(routes)                                                                   \
	"{" UPSTREAMS                                                                              \
	", 'listeners': [{'name': 'l', 'listen': '127.0.0.1:8080', 'routes': [" routes "]}]}"

static sp_conf_t *load(const char *text)
{
	return conf_text_load_ok("route.json", text);
}

/* A client address: "a.b.c.d" or an IPv6 address (v4-mapped included). */
static const struct sockaddr *addr(const char *text)
{
	static struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, text, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons(40000);
	} else {
		assert_int_equal(inet_pton(AF_INET6, text, &a6->sin6_addr), 1);
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons(40000);
	}
	return (const struct sockaddr *)&ss;
}

/* Name of the upstream the picked route goes to, or "none". */
static const char *pick(const sp_conf_t *c, const char *client, const char *sni)
{
	const sp_listener_t *l = &c->listeners[0];
	int r = sp_route_pick(l, addr(client), sni);
	if (r < 0)
		return "none";
	assert_true((size_t)r < l->nroutes);
	return c->upstreams[l->routes[r].upstream].name;
}

static void test_route_without_match_takes_every_client(void **state)
{
	(void)state;
	sp_conf_t *c = load(CONF_WITH_ROUTES("{'upstream': 'b'}"));
	assert_int_equal(sp_route_pick(&c->listeners[0], addr("192.0.2.1"), NULL), 0);
	assert_string_equal(pick(c, "192.0.2.1", NULL), "b");
	assert_string_equal(pick(c, "2001:db8::1", "any.example.com"), "b");
	sp_conf_free(c);
}

static void test_route_first_match_wins_over_a_narrower_later_one(void **state)
{
	(void)state;
	sp_conf_t *c =
	    load(CONF_WITH_ROUTES("{'match': {'source': ['10.0.0.0/8']}, 'upstream': 'a'},"
				  "{'match': {'source': ['10.1.0.0/16']}, 'upstream': 'b'},"
				  "{'upstream': 'c'}"));
	assert_string_equal(pick(c, "10.1.2.3", NULL), "a");
	assert_string_equal(pick(c, "10.255.0.1", NULL), "a");
	assert_string_equal(pick(c, "11.0.0.1", NULL), "c");
	assert_string_equal(pick(c, "192.0.2.1", NULL), "c");
	sp_conf_free(c);
}

static void test_route_none_matching_returns_enoent(void **state)
{
	(void)state;
	sp_conf_t *c =
	    load(CONF_WITH_ROUTES("{'match': {'source': ['10.0.0.0/8']}, 'upstream': 'a'},"
				  "{'match': {'sni': ['api.example.com']}, 'upstream': 'b'}"));
	assert_int_equal(sp_route_pick(&c->listeners[0], addr("192.0.2.1"), NULL), -ENOENT);
	assert_int_equal(sp_route_pick(&c->listeners[0], addr("192.0.2.1"), "www.example.com"),
			 -ENOENT);
	assert_int_equal(sp_route_pick(&c->listeners[0], addr("192.0.2.1"), "api.example.com"), 1);
	sp_conf_free(c);
}

static void test_route_source_prefix_boundaries(void **state)
{
	(void)state;
	sp_conf_t *c =
	    load(CONF_WITH_ROUTES("{'match': {'source': ['192.0.2.64/26']}, 'upstream': 'a'},"
				  "{'match': {'source': ['198.51.100.7']}, 'upstream': 'b'},"
				  "{'upstream': 'c'}"));
	assert_string_equal(pick(c, "192.0.2.63", NULL), "c");
	assert_string_equal(pick(c, "192.0.2.64", NULL), "a");
	assert_string_equal(pick(c, "192.0.2.127", NULL), "a");
	assert_string_equal(pick(c, "192.0.2.128", NULL), "c");
	/* a bare address is a /32 */
	assert_string_equal(pick(c, "198.51.100.7", NULL), "b");
	assert_string_equal(pick(c, "198.51.100.6", NULL), "c");
	assert_string_equal(pick(c, "198.51.100.8", NULL), "c");
	sp_conf_free(c);
}

static void test_route_any_of_several_sources_matches(void **state)
{
	(void)state;
	sp_conf_t *c = load(
	    CONF_WITH_ROUTES("{'match': {'source': ['10.0.0.0/8', '172.16.0.0/12', 'fd00::/8']},"
			     " 'upstream': 'a'},"
			     "{'upstream': 'b'}"));
	assert_string_equal(pick(c, "10.9.9.9", NULL), "a");
	assert_string_equal(pick(c, "172.31.255.255", NULL), "a");
	assert_string_equal(pick(c, "fd12:3456::1", NULL), "a");
	assert_string_equal(pick(c, "172.32.0.0", NULL), "b");
	assert_string_equal(pick(c, "fe80::1", NULL), "b");
	sp_conf_free(c);
}

static void test_route_v4_mapped_client_matches_v4_cidr_not_v6(void **state)
{
	(void)state;
	sp_conf_t *c =
	    load(CONF_WITH_ROUTES("{'match': {'source': ['::/0']}, 'upstream': 'a'},"
				  "{'match': {'source': ['10.0.0.0/8']}, 'upstream': 'b'},"
				  "{'upstream': 'c'}"));
	/* an IPv4 client on an IPv6 socket is an IPv4 client */
	assert_string_equal(pick(c, "::ffff:10.1.2.3", NULL), "b");
	assert_string_equal(pick(c, "10.1.2.3", NULL), "b");
	assert_string_equal(pick(c, "::ffff:192.0.2.1", NULL), "c");
	assert_string_equal(pick(c, "2001:db8::1", NULL), "a");
	sp_conf_free(c);
}

static void test_route_v4_zero_prefix_matches_only_v4(void **state)
{
	(void)state;
	sp_conf_t *c =
	    load(CONF_WITH_ROUTES("{'match': {'source': ['0.0.0.0/0']}, 'upstream': 'a'},"
				  "{'upstream': 'b'}"));
	assert_string_equal(pick(c, "203.0.113.9", NULL), "a");
	assert_string_equal(pick(c, "::ffff:203.0.113.9", NULL), "a");
	assert_string_equal(pick(c, "2001:db8::1", NULL), "b");
	sp_conf_free(c);
}

static void test_route_sni_never_matches_an_unknown_server_name(void **state)
{
	(void)state;
	sp_conf_t *c =
	    load(CONF_WITH_ROUTES("{'match': {'sni': ['api.example.com']}, 'upstream': 'a'},"
				  "{'upstream': 'b'}"));
	assert_string_equal(pick(c, "192.0.2.1", NULL), "b");
	assert_string_equal(pick(c, "192.0.2.1", "api.example.com"), "a");
	sp_conf_free(c);
}

static void test_route_sni_exact_is_case_insensitive_and_exact(void **state)
{
	(void)state;
	sp_conf_t *c =
	    load(CONF_WITH_ROUTES("{'match': {'sni': ['API.Example.com']}, 'upstream': 'a'},"
				  "{'upstream': 'b'}"));
	assert_string_equal(pick(c, "192.0.2.1", "api.example.com"), "a");
	assert_string_equal(pick(c, "192.0.2.1", "API.EXAMPLE.COM"), "a");
	assert_string_equal(pick(c, "192.0.2.1", "api.example.com."), "a"); /* fully qualified */
	assert_string_equal(pick(c, "192.0.2.1", "x.api.example.com"), "b");
	assert_string_equal(pick(c, "192.0.2.1", "api.example.co"), "b");
	assert_string_equal(pick(c, "192.0.2.1", "api.example.comx"), "b");
	assert_string_equal(pick(c, "192.0.2.1", ""), "b");
	sp_conf_free(c);
}

static void test_route_sni_wildcard_matches_subdomain_not_the_suffix_itself(void **state)
{
	(void)state;
	sp_conf_t *c =
	    load(CONF_WITH_ROUTES("{'match': {'sni': ['*.internal.example.com']}, 'upstream': 'a'},"
				  "{'upstream': 'b'}"));
	assert_string_equal(pick(c, "192.0.2.1", "db.internal.example.com"), "a");
	assert_string_equal(pick(c, "192.0.2.1", "a.b.internal.example.com"), "a");
	assert_string_equal(pick(c, "192.0.2.1", "DB.Internal.Example.COM"), "a");
	assert_string_equal(pick(c, "192.0.2.1", "internal.example.com"), "b");
	assert_string_equal(pick(c, "192.0.2.1", "xinternal.example.com"), "b");
	assert_string_equal(pick(c, "192.0.2.1", "db.internal.example.org"), "b");
	sp_conf_free(c);
}

static void test_route_sni_list_matches_any_of_its_names(void **state)
{
	(void)state;
	sp_conf_t *c = load(CONF_WITH_ROUTES(
	    "{'match': {'sni': ['a.example.com', '*.b.example.com']}, 'upstream': 'a'},"
	    "{'match': {'sni': ['c.example.com']}, 'upstream': 'c'},"
	    "{'upstream': 'b'}"));
	assert_string_equal(pick(c, "192.0.2.1", "a.example.com"), "a");
	assert_string_equal(pick(c, "192.0.2.1", "x.b.example.com"), "a");
	assert_string_equal(pick(c, "192.0.2.1", "c.example.com"), "c");
	assert_string_equal(pick(c, "192.0.2.1", "d.example.com"), "b");
	sp_conf_free(c);
}

static void test_route_with_sni_and_source_needs_both(void **state)
{
	(void)state;
	sp_conf_t *c = load(CONF_WITH_ROUTES(
	    "{'match': {'sni': ['api.example.com'], 'source': ['10.0.0.0/8']}, 'upstream': 'a'},"
	    "{'upstream': 'b'}"));
	assert_string_equal(pick(c, "10.0.0.1", "api.example.com"), "a");
	assert_string_equal(pick(c, "10.0.0.1", "www.example.com"), "b");
	assert_string_equal(pick(c, "10.0.0.1", NULL), "b");
	assert_string_equal(pick(c, "192.0.2.1", "api.example.com"), "b");
	sp_conf_free(c);
}

static void test_route_needs_sni_only_when_some_route_has_sni(void **state)
{
	(void)state;
	sp_conf_t *none =
	    load(CONF_WITH_ROUTES("{'match': {'source': ['10.0.0.0/8']}, 'upstream': 'a'},"
				  "{'upstream': 'b'}"));
	assert_false(sp_route_needs_sni(&none->listeners[0]));
	sp_conf_free(none);

	/* the only sni route is the last one: still needed */
	sp_conf_t *last =
	    load(CONF_WITH_ROUTES("{'match': {'source': ['10.0.0.0/8']}, 'upstream': 'a'},"
				  "{'match': {'sni': ['x.example.com']}, 'upstream': 'b'}"));
	assert_true(sp_route_needs_sni(&last->listeners[0]));
	sp_conf_free(last);

	sp_conf_t *first =
	    load(CONF_WITH_ROUTES("{'match': {'sni': ['x.example.com']}, 'upstream': 'a'},"
				  "{'upstream': 'b'}"));
	assert_true(sp_route_needs_sni(&first->listeners[0]));
	sp_conf_free(first);
}

static void test_route_each_listener_has_its_own_routes(void **state)
{
	(void)state;
	sp_conf_t *c =
	    load("{" UPSTREAMS ", 'listeners': ["
		 "{'name': 'tls', 'listen': '127.0.0.1:8443', 'routes': ["
		 "{'match': {'sni': ['api.example.com']}, 'upstream': 'a'}, {'upstream': 'c'}]},"
		 "{'name': 'plain', 'listen': '127.0.0.1:8080', 'routes': [{'upstream': 'b'}]}]}");
	int tls = sp_conf_listener_index(c, "tls"), plain = sp_conf_listener_index(c, "plain");
	assert_true(tls >= 0 && plain >= 0);
	assert_true(sp_route_needs_sni(&c->listeners[tls]));
	assert_false(sp_route_needs_sni(&c->listeners[plain]));
	assert_int_equal(sp_route_pick(&c->listeners[tls], addr("192.0.2.1"), "api.example.com"),
			 0);
	assert_int_equal(sp_route_pick(&c->listeners[tls], addr("192.0.2.1"), NULL), 1);
	assert_int_equal(sp_route_pick(&c->listeners[plain], addr("192.0.2.1"), "api.example.com"),
			 0);
	assert_string_equal(c->upstreams[c->listeners[plain].routes[0].upstream].name, "b");
	sp_conf_free(c);
}

/* ---- the matchers on their own ---- */

static sp_cidr_t cidr(const char *net, int prefix)
{
	sp_cidr_t c = {.prefix = (uint8_t)prefix};
	c.family = strchr(net, ':') ? AF_INET6 : AF_INET;
	inet_pton(c.family, net, c.addr);
	return c;
}

static bool match4(const sp_cidr_t *c, const char *ip)
{
	struct sockaddr_in sin = {.sin_family = AF_INET};
	inet_pton(AF_INET, ip, &sin.sin_addr);
	return sp_cidr_match(c, (struct sockaddr *)&sin);
}

static bool match6(const sp_cidr_t *c, const char *ip)
{
	struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6};
	inet_pton(AF_INET6, ip, &sin6.sin6_addr);
	return sp_cidr_match(c, (struct sockaddr *)&sin6);
}

static void test_cidr_match_ipv4(void **state)
{
	(void)state;
	sp_cidr_t c = cidr("10.0.0.0", 8), odd = cidr("192.168.4.0", 22), all = cidr("0.0.0.0", 0);
	assert_true(match4(&c, "10.255.1.2"));
	assert_false(match4(&c, "11.0.0.1"));
	assert_true(match4(&odd, "192.168.7.255"));
	assert_false(match4(&odd, "192.168.8.0"));
	assert_true(match4(&all, "203.0.113.9"));
	assert_false(match6(&all, "2001:db8::1"));
}

static void test_cidr_match_ipv6(void **state)
{
	(void)state;
	sp_cidr_t c = cidr("fd00::", 8), host = cidr("2001:db8::1", 128);
	assert_true(match6(&c, "fd12:3456::1"));
	assert_false(match6(&c, "fe80::1"));
	assert_true(match6(&host, "2001:db8::1"));
	assert_false(match6(&host, "2001:db8::2"));
	assert_false(match4(&c, "10.0.0.1"));
}

static void test_cidr_match_v4_mapped_client_matches_v4_cidr(void **state)
{
	(void)state;
	sp_cidr_t c = cidr("10.0.0.0", 8);
	assert_true(match6(&c, "::ffff:10.1.2.3"));
	assert_false(match6(&c, "::ffff:11.1.2.3"));
}

static void test_sni_exact_match_ignores_case(void **state)
{
	(void)state;
	assert_true(sp_sni_match("api.example.com", "API.Example.com"));
	assert_true(sp_sni_match("api.example.com", "api.example.com."));
	assert_false(sp_sni_match("api.example.com", "api.example.co"));
	assert_false(sp_sni_match("api.example.com", "xapi.example.com"));
}

static void test_sni_wildcard_matches_any_subdomain_not_apex(void **state)
{
	(void)state;
	assert_true(sp_sni_match("*.example.com", "a.example.com"));
	assert_true(sp_sni_match("*.example.com", "a.b.EXAMPLE.com"));
	assert_false(sp_sni_match("*.example.com", "example.com"));
	assert_false(sp_sni_match("*.example.com", "badexample.com"));
	assert_false(sp_sni_match("*.example.com", ".example.com"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_route_without_match_takes_every_client),
	    cmocka_unit_test(test_route_first_match_wins_over_a_narrower_later_one),
	    cmocka_unit_test(test_route_none_matching_returns_enoent),
	    cmocka_unit_test(test_route_source_prefix_boundaries),
	    cmocka_unit_test(test_route_any_of_several_sources_matches),
	    cmocka_unit_test(test_route_v4_mapped_client_matches_v4_cidr_not_v6),
	    cmocka_unit_test(test_route_v4_zero_prefix_matches_only_v4),
	    cmocka_unit_test(test_route_sni_never_matches_an_unknown_server_name),
	    cmocka_unit_test(test_route_sni_exact_is_case_insensitive_and_exact),
	    cmocka_unit_test(test_route_sni_wildcard_matches_subdomain_not_the_suffix_itself),
	    cmocka_unit_test(test_route_sni_list_matches_any_of_its_names),
	    cmocka_unit_test(test_route_with_sni_and_source_needs_both),
	    cmocka_unit_test(test_route_needs_sni_only_when_some_route_has_sni),
	    cmocka_unit_test(test_route_each_listener_has_its_own_routes),
	    cmocka_unit_test(test_cidr_match_ipv4),
	    cmocka_unit_test(test_cidr_match_ipv6),
	    cmocka_unit_test(test_cidr_match_v4_mapped_client_matches_v4_cidr),
	    cmocka_unit_test(test_sni_exact_match_ignores_case),
	    cmocka_unit_test(test_sni_wildcard_matches_any_subdomain_not_apex),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
