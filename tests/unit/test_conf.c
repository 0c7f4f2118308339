/* conf: the JSON file -> sp_conf_t contract (SPEC §4): every error class with
 * its "file:line:col: path: message", the defaults, the SPEC example read back
 * field by field, and the CIDR / SNI matchers the router uses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf/conf.h"
#include "tests/unit/conf_text.h"

/* Test JSON is written with ' for " so it reads without escapes. */
static sp_conf_t *load(const char *text, sp_conf_errors_t *e)
{
	return conf_text_load("conf.json", text, e);
}

/* The text must fail with exactly one error, equal to want. */
static void expect_error(const char *text, const char *want)
{
	sp_conf_errors_t e = {0};
	sp_conf_t *c = load(text, &e);
	if (e.n != 1 || strcmp(e.msgs[0], want) != 0)
		sp_conf_errors_print(&e, stderr);
	assert_null(c);
	assert_int_equal(e.n, 1);
	assert_string_equal(e.msgs[0], want);
	sp_conf_errors_free(&e);
}

/* The text must fail with exactly one error, containing part. */
static void expect_error_part(const char *text, const char *part)
{
	sp_conf_errors_t e = {0};
	sp_conf_t *c = load(text, &e);
	if (e.n != 1 || !strstr(e.msgs[0], part))
		sp_conf_errors_print(&e, stderr);
	assert_null(c);
	assert_int_equal(e.n, 1);
	assert_non_null(strstr(e.msgs[0], part));
	sp_conf_errors_free(&e);
}

static sp_conf_t *expect_ok(const char *text)
{
	sp_conf_errors_t e = {0};
	sp_conf_t *c = load(text, &e);
	sp_conf_errors_print(&e, stderr);
	assert_int_equal(e.n, 0);
	assert_non_null(c);
	return c;
}

#define UPS "'upstreams': [{'name': 'u', 'servers': [{'address': '127.0.0.1:9000'}]}]"
#define LIS                                                                                        \
	"'listeners': [{'name': 'l', 'listen': '127.0.0.1:8080', 'routes': [{'upstream': 'u'}]}]"
/* A valid file with one listener and one upstream, extra root keys in X. */
#define FILE_WITH(x) "{" x UPS ", " LIS "}"
#define UPSTREAM_WITH(x)                                                                           \
	"{" LIS ", 'upstreams': [{'name': 'u', 'servers': [{'address': '127.0.0.1:9000'}]" x "}]}"
#define LISTENER_WITH(x) "{" UPS ", 'listeners': [{'name': 'l', 'listen': '127.0.0.1:8080'" x "}]}"
#define ROUTE_WITH(x) LISTENER_WITH(", 'routes': [{'upstream': 'u'" x "}]")
#define MATCH(x) ROUTE_WITH(", 'match': " x)
#define LISTEN_AT(a)                                                                               \
	"{" UPS ", 'listeners': [{'name': 'l', 'listen': '" a "', 'routes': [{'upstream': "        \
							      "'u'}]}]}"
#define SERVER_AT(a) "{" LIS ", 'upstreams': [{'name': 'u', 'servers': [{'address': '" a "'}]}]}"

/* ---- errors ---- */

static void test_syntax_error_reports_jansson_position_and_stops(void **state)
{
	(void)state;
	expect_error("{\n  'workers': 'auto',\n  'relay': bogus\n}",
		     "conf.json:3:16: syntax error: invalid token near 'bogus'");
}

static void test_duplicate_key_is_a_syntax_error(void **state)
{
	(void)state;
	expect_error("{\n  'relay': 'copy',\n  'relay': 'splice'\n}",
		     "conf.json:3:9: syntax error: duplicate object key near '\"relay\"'");
}

static void test_top_level_must_be_an_object(void **state)
{
	(void)state;
	expect_error("[1, 2]", "conf.json:1:1: expected an object, got an array");
}

static void test_unknown_key_points_at_the_key(void **state)
{
	(void)state;
	expect_error(
	    "{\n"
	    "  " UPS ",\n"
	    "  'listeners': [\n"
	    "    {'name': 'l', 'listen': '127.0.0.1:8080', 'routes': [{'upstream': 'u'}],\n"
	    "     'lisen': '127.0.0.1:8081'}\n"
	    "  ]\n"
	    "}\n",
	    "conf.json:5:6: listeners[0].lisen: unknown key; expected one of: name, listen, "
	    "accept_proxy_protocol, peek_timeout_ms, routes");
}

static void test_unknown_key_in_nested_object_has_full_path(void **state)
{
	(void)state;
	expect_error_part(UPSTREAM_WITH(", 'health_check': {'interval': 5}"),
			  "upstreams[0].health_check.interval: unknown key");
}

static void test_wrong_type_is_reported(void **state)
{
	(void)state;
	expect_error_part(UPSTREAM_WITH(", 'retries': '2'"),
			  "upstreams[0].retries: expected an integer, got a string");
	expect_error_part(
	    LISTENER_WITH(", 'routes': [{'upstream': 'u'}], 'accept_proxy_protocol': 1"),
	    "listeners[0].accept_proxy_protocol: expected a boolean, got an integer");
	expect_error_part(FILE_WITH("'log': {'access_log': 1}, "),
			  "log.access_log: expected a boolean or a file path, got an integer");
	expect_error_part(FILE_WITH("'limits': [], "), "limits: expected an object, got an array");
}

static void test_real_number_rejected_for_integer_field(void **state)
{
	(void)state;
	expect_error_part(FILE_WITH("'limits': {'max_connections': 100.0}, "),
			  "limits.max_connections: expected an integer, got a real number");
}

static void test_out_of_range_value_is_reported(void **state)
{
	(void)state;
	expect_error("{\n  'workers': 300,\n  " UPS ",\n  " LIS "\n}",
		     "conf.json:2:14: workers: must be between 1 and 256, got 300");
	expect_error_part(UPSTREAM_WITH(", 'retries': 17"),
			  "upstreams[0].retries: must be between 0 and 16, got 17");
	expect_error_part(FILE_WITH("'limits': {'drain_timeout_ms': -1}, "),
			  "limits.drain_timeout_ms: must be between 0 and 3600000, got -1");
}

static void test_bad_enum_lists_allowed_values(void **state)
{
	(void)state;
	expect_error("{\n  'steering': 'fast',\n  " UPS ",\n  " LIS "\n}",
		     "conf.json:2:15: steering: invalid value \"fast\"; expected one of: "
		     "\"hash\", \"cpu\", \"least_conn\", \"none\"");
	expect_error("{\n  'cpu_affinity': 'soft',\n  " UPS ",\n  " LIS "\n}",
		     "conf.json:2:19: cpu_affinity: invalid value \"soft\"; expected one of: "
		     "\"pin\", \"none\"");
	expect_error("{\n  'cpu_affinity': true,\n  " UPS ",\n  " LIS "\n}",
		     "conf.json:2:19: cpu_affinity: expected one of: \"pin\", \"none\"; got a boolean");
	expect_error_part(UPSTREAM_WITH(", 'send_proxy_protocol': 'v3'"),
			  "expected one of: null, \"v1\", \"v2\"");
}

static void test_duplicate_listener_names_rejected(void **state)
{
	(void)state;
	expect_error_part(
	    "{" UPS ", 'listeners': ["
	    "{'name': 'l', 'listen': '127.0.0.1:8080', 'routes': [{'upstream': 'u'}]},"
	    "{'name': 'l', 'listen': '127.0.0.1:8081', 'routes': [{'upstream': 'u'}]}]}",
	    "listeners[1].name: duplicate listener name \"l\": already used by "
	    "listeners[0]");
}

static void test_duplicate_upstream_names_rejected(void **state)
{
	(void)state;
	expect_error_part("{" LIS ", 'upstreams': ["
			  "{'name': 'u', 'servers': [{'address': '127.0.0.1:9000'}]},"
			  "{'name': 'u', 'servers': [{'address': '127.0.0.1:9001'}]}]}",
			  "upstreams[1].name: duplicate upstream name \"u\": already used by "
			  "upstreams[0]");
}

static void test_two_listeners_on_one_address_rejected(void **state)
{
	(void)state;
	expect_error_part(
	    "{" UPS ", 'listeners': ["
	    "{'name': 'a', 'listen': '*:8080', 'routes': [{'upstream': 'u'}]},"
	    "{'name': 'b', 'listen': '0.0.0.0:8080', 'routes': [{'upstream': 'u'}]}]}",
	    "listeners[1].listen: address already used by listeners[0] (\"a\")");
}

static void test_route_to_unknown_upstream_rejected(void **state)
{
	(void)state;
	expect_error(
	    "{\n"
	    "  'upstreams': [{'name': 'api', 'servers': [{'address': '127.0.0.1:9000'}]}],\n"
	    "  'listeners': [{'name': 'l', 'listen': '127.0.0.1:8080', 'routes': [\n"
	    "    {'upstream': 'api'},\n"
	    "    {'upstream': 'apx'}\n"
	    "  ]}]\n"
	    "}\n",
	    "conf.json:5:18: listeners[0].routes[1].upstream: unknown upstream \"apx\"");
}

static void test_unparsable_addresses_rejected(void **state)
{
	(void)state;
	expect_error_part(LISTEN_AT("127.0.0.1"), "invalid address \"127.0.0.1\": expected");
	expect_error_part(LISTEN_AT(":8080"), "invalid address \":8080\"");
	expect_error_part(LISTEN_AT("[::1]8080"), "invalid address \"[::1]8080\"");
	expect_error_part(SERVER_AT("127.0.0.1:http"), "invalid port in \"127.0.0.1:http\"");
	expect_error_part(SERVER_AT("127.0.0.1:65536"), "must be 1 to 65535");
	expect_error_part(SERVER_AT("[localhost]:80"), "\"localhost\" is not an IPv6 address");
	expect_error_part(SERVER_AT("bad_host!:80"), "neither an IP address nor a host name");
}

static void test_port_zero_rejected(void **state)
{
	(void)state;
	expect_error_part(
	    LISTEN_AT("127.0.0.1:0"),
	    "listeners[0].listen: invalid port in \"127.0.0.1:0\": must be 1 to 65535");
}

static void test_unbracketed_ipv6_rejected(void **state)
{
	(void)state;
	expect_error_part(SERVER_AT("::1:9000"),
			  "put IPv6 addresses in brackets, as in \"[::1]:9000\"");
}

static void test_wildcard_rejected_for_server_address(void **state)
{
	(void)state;
	expect_error_part(SERVER_AT("*:9000"), "\"*\" is only valid in a listen address");
}

static void test_bad_cidr_rejected(void **state)
{
	(void)state;
	expect_error_part(MATCH("{'source': ['10.0.0.0/33']}"), "invalid CIDR \"10.0.0.0/33\"");
	expect_error_part(MATCH("{'source': ['fd00::/129']}"), "invalid CIDR \"fd00::/129\"");
	expect_error_part(MATCH("{'source': ['10.0.0/8']}"), "invalid CIDR \"10.0.0/8\"");
	expect_error_part(MATCH("{'source': ['10.0.0.0/']}"), "invalid CIDR \"10.0.0.0/\"");
	expect_error_part(
	    MATCH("{'source': [10]}"),
	    "listeners[0].routes[0].match.source[0]: expected a string, got an integer");
}

static void test_cidr_with_host_bits_set_suggests_network(void **state)
{
	(void)state;
	expect_error_part(
	    MATCH("{'source': ['10.1.2.3/8']}"),
	    "match.source[0]: invalid CIDR \"10.1.2.3/8\": host bits are set beyond /8; "
	    "did you mean \"10.0.0.0/8\"?");
}

static void test_bad_sni_rejected(void **state)
{
	(void)state;
	expect_error_part(MATCH("{'sni': ['a..example.com']}"), "invalid server name");
	expect_error_part(MATCH("{'sni': ['api.*.com']}"), "invalid server name");
	expect_error_part(MATCH("{'sni': ['*']}"), "invalid server name");
	expect_error_part(MATCH("{'sni': []}"), "match.sni: must not be empty");
}

static void test_empty_match_rejected(void **state)
{
	(void)state;
	expect_error_part(MATCH("{}"), "listeners[0].routes[0].match: must have sni or source");
}

static void test_missing_required_key_points_at_enclosing_brace(void **state)
{
	(void)state;
	expect_error("{\n"
		     "  " UPS ",\n"
		     "  'listeners': [{'name': 'l', 'listen': '127.0.0.1:8080'}]\n"
		     "}\n",
		     "conf.json:3:17: listeners[0].routes: missing required key");
	expect_error("{" UPS "}", "conf.json:1:1: listeners: missing required key");
}

static void test_empty_required_array_rejected(void **state)
{
	(void)state;
	expect_error_part("{" LIS ", 'upstreams': []}", "upstreams: must not be empty");
	expect_error_part("{" LIS ", 'upstreams': [{'name': 'u', 'servers': []}]}",
			  "upstreams[0].servers: must not be empty");
}

static void test_invalid_names_rejected(void **state)
{
	(void)state;
	expect_error_part("{" LIS ", 'upstreams': [{'name': 'a b', 'servers': "
			  "[{'address': '127.0.0.1:9000'}]}]}",
			  "upstreams[0].name: invalid name \"a b\": use 1 to 63 characters");
	expect_error_part("{" UPS ", 'listeners': [{'name': '', 'listen': '127.0.0.1:8080', "
			  "'routes': [{'upstream': 'u'}]}]}",
			  "listeners[0].name: invalid name \"\"");
}

static void test_upstream_of_only_backups_rejected(void **state)
{
	(void)state;
	expect_error_part(
	    "{" LIS ", 'upstreams': [{'name': 'u', 'servers': ["
	    "{'address': '127.0.0.1:9000', 'backup': true}]}]}",
	    "upstreams[0].servers: every server is a backup; at least one must not be");
}

static void test_too_many_servers_rejected(void **state)
{
	(void)state;
	char buf[16384], *p = buf;
	p += sprintf(p, "{" LIS ", 'upstreams': [{'name': 'u', 'servers': [");
	for (int i = 0; i < 257; i++)
		p += sprintf(p, "%s{'address': '127.0.0.1:%d'}", i ? "," : "", 9000 + i);
	sprintf(p, "]}]}");
	expect_error_part(buf, "upstreams[0].servers: has 257 elements; at most 256 are allowed");
}

static void test_health_check_timeout_above_interval_rejected(void **state)
{
	(void)state;
	expect_error_part(
	    UPSTREAM_WITH(", 'health_check': {'interval_ms': 500, 'timeout_ms': 600}"),
	    "upstreams[0].health_check.timeout_ms: timeout_ms (600) must not exceed "
	    "interval_ms (500)");
}

static void test_workers_rejects_other_strings(void **state)
{
	(void)state;
	expect_error_part(FILE_WITH("'workers': 'all', "),
			  "workers: expected \"auto\" or an integer, got a string");
	expect_error_part(FILE_WITH("'workers': 0, "), "workers: must be between 1 and 256, got 0");
}

static void test_all_errors_of_a_file_are_reported_in_file_order(void **state)
{
	(void)state;
	sp_conf_errors_t e = {0};
	sp_conf_t *c =
	    load("{\n"
		 "  'listeners': [{'name': 'l', 'listen': '127.0.0.1:99999',\n"
		 "                 'routes': [{'upstream': 'nope'}]}],\n"
		 "  'upstreams': [{'name': 'u', 'retries': -1,\n"
		 "                 'servers': [{'address': '127.0.0.1:9000', 'weight': 0}]}],\n"
		 "  'relay': 'zerocopy',\n"
		 "  'extra': true\n"
		 "}\n",
		 &e);
	assert_null(c);
	assert_int_equal(e.n, 6);
	assert_non_null(strstr(e.msgs[0], "conf.json:2:41: listeners[0].listen: invalid port"));
	assert_non_null(
	    strstr(e.msgs[1], "conf.json:3:42: listeners[0].routes[0].upstream: unknown"));
	assert_non_null(strstr(e.msgs[2], "conf.json:4:42: upstreams[0].retries: must be between"));
	assert_non_null(
	    strstr(e.msgs[3], "conf.json:5:70: upstreams[0].servers[0].weight: must be"));
	assert_non_null(strstr(e.msgs[4], "conf.json:6:12: relay: invalid value \"zerocopy\""));
	assert_non_null(strstr(e.msgs[5], "conf.json:7:3: extra: unknown key"));
	sp_conf_errors_free(&e);
	assert_int_equal(e.n, 0);
}

static void test_missing_file_is_one_error_naming_it(void **state)
{
	(void)state;
	sp_conf_errors_t e = {0};
	assert_null(sp_conf_load("/nonexistent/shardproxy.json", &e));
	assert_int_equal(e.n, 1);
	assert_string_equal(e.msgs[0],
			    "/nonexistent/shardproxy.json: cannot read: No such file or directory");
	sp_conf_errors_free(&e);
}

/* ---- accepted files ---- */

static void test_defaults_applied_on_minimal_file(void **state)
{
	(void)state;
	sp_conf_t *c = expect_ok("{" UPS ", " LIS "}");
	assert_string_equal(c->path, "conf.json");
	assert_int_equal(c->workers, 0);
	assert_int_equal(c->steering, SP_STEER_HASH);
	assert_int_equal(c->relay, SP_RELAY_AUTO);
	assert_int_equal(c->cpu_affinity, SP_AFFINITY_NONE);
	assert_int_equal(c->io, SP_IO_AUTO);
	assert_int_equal(c->log.level, SP_LOG_INFO);
	assert_true(c->log.access_log);
	assert_int_equal(c->log.format, SP_LOG_TEXT);
	assert_false(c->admin.enabled);
	assert_int_equal(c->limits.max_connections, 10000);
	assert_int_equal(c->limits.drain_timeout_ms, 30000);
	const sp_listener_t *l = &c->listeners[0];
	assert_false(l->accept_proxy_protocol);
	assert_int_equal(l->peek_timeout_ms, 5000);
	assert_int_equal(l->routes[0].nsni + l->routes[0].nsource, 0);
	const sp_upstream_t *u = &c->upstreams[0];
	assert_int_equal(u->balance, SP_BALANCE_ROUND_ROBIN);
	assert_int_equal(u->connect_timeout_ms, 2000);
	assert_int_equal(u->idle_timeout_ms, 300000);
	assert_int_equal(u->retries, 2);
	assert_int_equal(u->send_proxy_protocol, SP_PROXY_PROTO_NONE);
	assert_false(u->health_check.enabled);
	assert_int_equal(u->servers[0].weight, 1);
	assert_false(u->servers[0].backup);
	sp_conf_free(c);
}

static void test_health_check_object_gets_its_defaults(void **state)
{
	(void)state;
	sp_conf_t *c = expect_ok(UPSTREAM_WITH(", 'health_check': {}"));
	const sp_health_check_t *h = &c->upstreams[0].health_check;
	assert_true(h->enabled);
	assert_int_equal(h->interval_ms, 2000);
	assert_int_equal(h->timeout_ms, 1000);
	assert_int_equal(h->fall, 3);
	assert_int_equal(h->rise, 2);
	sp_conf_free(c);
}

static void test_null_disables_health_check_and_admin(void **state)
{
	(void)state;
	sp_conf_t *c =
	    expect_ok("{'admin': {'listen': null}, " LIS ", 'upstreams': [{'name': 'u', "
		      "'servers': [{'address': '127.0.0.1:9000'}], 'health_check': null}]}");
	assert_false(c->admin.enabled);
	assert_false(c->upstreams[0].health_check.enabled);
	sp_conf_free(c);
	c = expect_ok(FILE_WITH("'admin': null, "));
	assert_false(c->admin.enabled);
	sp_conf_free(c);
}

static void test_send_proxy_protocol_accepts_null_v1_v2(void **state)
{
	(void)state;
	sp_conf_t *c = expect_ok(UPSTREAM_WITH(", 'send_proxy_protocol': null"));
	assert_int_equal(c->upstreams[0].send_proxy_protocol, SP_PROXY_PROTO_NONE);
	sp_conf_free(c);
	c = expect_ok(UPSTREAM_WITH(", 'send_proxy_protocol': 'v1'"));
	assert_int_equal(c->upstreams[0].send_proxy_protocol, SP_PROXY_PROTO_V1);
	sp_conf_free(c);
	c = expect_ok(UPSTREAM_WITH(", 'send_proxy_protocol': 'v2'"));
	assert_int_equal(c->upstreams[0].send_proxy_protocol, SP_PROXY_PROTO_V2);
	sp_conf_free(c);
}

static void test_workers_number_is_kept(void **state)
{
	(void)state;
	sp_conf_t *c = expect_ok(FILE_WITH("'workers': 256, "));
	assert_int_equal(c->workers, 256);
	sp_conf_free(c);
}

static void test_route_without_match_before_last_is_allowed(void **state)
{
	(void)state;
	sp_conf_t *c = expect_ok(LISTENER_WITH(
	    ", 'routes': [{'upstream': 'u'}, {'match': {'sni': ['a.com']}, 'upstream': 'u'}]"));
	assert_int_equal(c->listeners[0].nroutes, 2);
	sp_conf_free(c);
}

static void test_wildcard_listen_means_any_ipv4(void **state)
{
	(void)state;
	sp_conf_t *c = expect_ok(LISTEN_AT("*:8080"));
	const struct sockaddr_in *sin = (const struct sockaddr_in *)&c->listeners[0].listen.ss;
	assert_string_equal(c->listeners[0].listen.text, "*:8080");
	assert_int_equal(sin->sin_family, AF_INET);
	assert_int_equal(sin->sin_addr.s_addr, htonl(INADDR_ANY));
	assert_int_equal(ntohs(sin->sin_port), 8080);
	assert_int_equal(c->listeners[0].listen.len, sizeof(*sin));
	sp_conf_free(c);
}

/* Parsing never asks a resolver: a server's host name is kept, with its
 * port and position, for the supervisor's asynchronous resolver. */
static void test_server_host_name_is_left_to_the_resolver(void **state)
{
	(void)state;
	sp_conf_t *c = expect_ok(SERVER_AT("LocalHost:9002"));
	const sp_server_t *s = &c->upstreams[0].servers[0];
	assert_true(s->dns);
	assert_string_equal(s->addr.text, "LocalHost:9002");
	assert_string_equal(s->host, "localhost");
	assert_int_equal(s->port, 9002);
	assert_int_equal(s->addr.len, 0);
	assert_non_null(strstr(s->where, "conf.json:1:"));
	assert_non_null(strstr(s->where, "upstreams[0].servers[0].address"));
	sp_conf_free(c);
}

/* A name takes SP_CONF_DNS_SLOTS consecutive entries (one per address it
 * may resolve to), in its place among the others. */
static void test_server_host_name_takes_dns_slots_in_place(void **state)
{
	(void)state;
	sp_conf_t *c = expect_ok(
	    "{" LIS ", 'upstreams': [{'name': 'u', 'servers': [{'address': '127.0.0.1:1'}, "
	    "{'address': 'svc.test:2', 'weight': 5}, {'address': '127.0.0.1:3'}]}]}");
	const sp_upstream_t *u = &c->upstreams[0];
	assert_int_equal(u->nnames, 1);
	assert_int_equal(u->nservers, 2 + SP_CONF_DNS_SLOTS);
	assert_false(u->servers[0].dns);
	for (unsigned k = 0; k < SP_CONF_DNS_SLOTS; k++) {
		assert_true(u->servers[1 + k].dns);
		assert_int_equal(u->servers[1 + k].dns_slot, k);
		assert_int_equal(u->servers[1 + k].origin, 1);
		assert_int_equal(u->servers[1 + k].weight, 5);
	}
	assert_int_equal(u->servers[1 + SP_CONF_DNS_SLOTS].origin, 2);
	assert_string_equal(u->servers[1 + SP_CONF_DNS_SLOTS].addr.text, "127.0.0.1:3");
	sp_conf_free(c);
}

static void test_too_many_host_names_for_one_upstream_is_an_error(void **state)
{
	(void)state;
	char text[16384];
	size_t n = (size_t)snprintf(text, sizeof(text), "{" LIS ", 'upstreams': [{'name': 'u', "
							  "'servers': [");
	for (int i = 0; i < 33; i++)
		n += (size_t)snprintf(text + n, sizeof(text) - n, "%s{'address': 'h%d.test:80'}",
				      i ? ", " : "", i);
	snprintf(text + n, sizeof(text) - n, "]}]}");
	expect_error_part(text, "upstreams[0].servers: 33 host names take 8 entries each");
}

/* A listen address may name a host in /etc/hosts, never one DNS knows. */
static void test_listen_host_name_comes_from_etc_hosts(void **state)
{
	(void)state;
	sp_conf_t *c = expect_ok(LISTEN_AT("localhost:8080"));
	const struct sockaddr_in *sin = (const struct sockaddr_in *)&c->listeners[0].listen.ss;
	assert_int_equal(sin->sin_family, AF_INET);
	assert_int_equal(sin->sin_addr.s_addr, htonl(INADDR_LOOPBACK));
	sp_conf_free(c);
	expect_error_part(LISTEN_AT("no-such-host.invalid:8080"), "not in /etc/hosts");
}

static void test_resolve_interval_ms_is_per_upstream_and_optional(void **state)
{
	(void)state;
	sp_conf_t *c = expect_ok(UPSTREAM_WITH(", 'resolve_interval_ms': 5000"));
	assert_int_equal(c->upstreams[0].resolve_interval_ms, 5000);
	sp_conf_free(c);
	c = expect_ok(UPSTREAM_WITH(""));
	assert_int_equal(c->upstreams[0].resolve_interval_ms, 0);
	sp_conf_free(c);
	expect_error_part(UPSTREAM_WITH(", 'resolve_interval_ms': 10"),
			  "upstreams[0].resolve_interval_ms: must be between 100 and 86400000");
	expect_error_part(UPSTREAM_WITH(", 'resolve_interval_ms': '1s'"), "expected an integer");
}

static void test_resolvers_are_ip_addresses_with_ports(void **state)
{
	(void)state;
	sp_conf_t *c = expect_ok(FILE_WITH("'resolvers': ['127.0.0.53:53', '[::1]:5353'], "));
	assert_int_equal(c->nresolvers, 2);
	const struct sockaddr_in *s4 = (const struct sockaddr_in *)&c->resolvers[0].ss;
	assert_int_equal(s4->sin_family, AF_INET);
	assert_int_equal(ntohs(s4->sin_port), 53);
	assert_int_equal(c->resolvers[1].ss.ss_family, AF_INET6);
	sp_conf_free(c);
	c = expect_ok(FILE_WITH(""));
	assert_int_equal(c->nresolvers, 0); /* /etc/resolv.conf's */
	sp_conf_free(c);
	expect_error_part(FILE_WITH("'resolvers': ['dns.example:53'], "),
			  "resolvers[0]: invalid nameserver \"dns.example:53\": expected an IP "
			  "address and port");
	expect_error_part(FILE_WITH("'resolvers': ['127.0.0.1'], "), "resolvers[0]: invalid address");
	expect_error_part(FILE_WITH("'resolvers': [], "), "resolvers: must not be empty");
	expect_error_part(FILE_WITH("'resolvers': '127.0.0.1:53', "), "expected an array");
}

static void test_admin_socket_is_a_path(void **state)
{
	(void)state;
	sp_conf_t *c = expect_ok(FILE_WITH("'admin': {'socket': '/run/sp/admin.sock'}, "));
	assert_string_equal(c->admin.socket, "/run/sp/admin.sock");
	assert_false(c->admin.enabled);
	sp_conf_free(c);
	c = expect_ok(FILE_WITH("'admin': {'listen': '127.0.0.1:9901', 'socket': null}, "));
	assert_string_equal(c->admin.socket, "");
	assert_true(c->admin.enabled);
	sp_conf_free(c);
	expect_error_part(FILE_WITH("'admin': {'socket': ''}, "), "admin.socket: invalid socket path");
	expect_error_part(FILE_WITH("'admin': {'socket': 5}, "), "admin.socket: expected a string");
	char text[1024], path[200];
	memset(path, 'a', sizeof(path) - 1);
	path[0] = '/';
	path[sizeof(path) - 1] = 0;
	snprintf(text, sizeof(text), FILE_WITH("'admin': {'socket': '%s'}, "), path);
	expect_error_part(text, "expected 1 to 96 bytes");
}

static void test_sni_is_stored_lower_case(void **state)
{
	(void)state;
	sp_conf_t *c = expect_ok(MATCH("{'sni': ['API.Example.COM', '*.Internal.example.com']}"));
	const sp_route_t *r = &c->listeners[0].routes[0];
	assert_int_equal(r->nsni, 2);
	assert_string_equal(r->sni[0], "api.example.com");
	assert_string_equal(r->sni[1], "*.internal.example.com");
	sp_conf_free(c);
}

static void test_bare_source_address_is_a_host_cidr(void **state)
{
	(void)state;
	sp_conf_t *c =
	    expect_ok(MATCH("{'source': ['192.0.2.7', '2001:db8::1', '::ffff:10.0.0.0/104']}"));
	const sp_route_t *r = &c->listeners[0].routes[0];
	assert_int_equal(r->nsource, 3);
	assert_int_equal(r->source[0].family, AF_INET);
	assert_int_equal(r->source[0].prefix, 32);
	assert_int_equal(r->source[1].family, AF_INET6);
	assert_int_equal(r->source[1].prefix, 128);
	/* a v4-mapped CIDR becomes the IPv4 CIDR it denotes */
	assert_int_equal(r->source[2].family, AF_INET);
	assert_int_equal(r->source[2].prefix, 8);
	assert_int_equal(r->source[2].addr[0], 10);
	sp_conf_free(c);
}

/* cpu_affinity "none" leaves shard placement to the scheduler (shard.c skips the pin). */
static void test_cpu_affinity_none_and_pin_parse(void **state)
{
	(void)state;
	sp_conf_t *c = expect_ok("{'cpu_affinity': 'none', " UPS ", " LIS "}");
	assert_int_equal(c->cpu_affinity, SP_AFFINITY_NONE);
	sp_conf_free(c);
	c = expect_ok("{'cpu_affinity': 'pin', " UPS ", " LIS "}");
	assert_int_equal(c->cpu_affinity, SP_AFFINITY_PIN);
	sp_conf_free(c);
}

/* SPEC §4's example, verbatim in conf/examples/full.json, read back in full. */
static void test_spec_example_parses_every_field(void **state)
{
	(void)state;
	sp_conf_errors_t e = {0};
	sp_conf_t *c = sp_conf_load("conf/examples/full.json", &e);
	sp_conf_errors_print(&e, stderr);
	assert_non_null(c);
	assert_string_equal(c->path, "conf/examples/full.json");
	assert_int_equal(c->workers, 0);
	assert_int_equal(c->steering, SP_STEER_HASH);
	assert_int_equal(c->relay, SP_RELAY_AUTO);
	assert_int_equal(c->log.level, SP_LOG_INFO);
	assert_true(c->log.access_log);
	assert_int_equal(c->log.format, SP_LOG_TEXT);
	assert_true(c->admin.enabled);
	assert_string_equal(c->admin.listen.text, "127.0.0.1:9901");
	assert_int_equal(c->limits.max_connections, 100000);
	assert_int_equal(c->limits.drain_timeout_ms, 30000);

	assert_int_equal(c->nlisteners, 1);
	const sp_listener_t *l = &c->listeners[0];
	assert_string_equal(l->name, "edge");
	assert_string_equal(l->listen.text, "0.0.0.0:8443");
	assert_int_equal(ntohs(((const struct sockaddr_in *)&l->listen.ss)->sin_port), 8443);
	assert_false(l->accept_proxy_protocol);
	assert_int_equal(l->peek_timeout_ms, 5000);
	assert_int_equal(l->nroutes, 3);
	assert_int_equal(l->routes[0].nsni, 2);
	assert_string_equal(l->routes[0].sni[0], "api.example.com");
	assert_string_equal(l->routes[0].sni[1], "*.internal.example.com");
	assert_int_equal(l->routes[0].nsource, 0);
	assert_int_equal(l->routes[0].upstream, sp_conf_upstream_index(c, "api"));
	assert_int_equal(l->routes[1].nsni, 0);
	assert_int_equal(l->routes[1].nsource, 2);
	assert_int_equal(l->routes[1].source[0].family, AF_INET);
	assert_int_equal(l->routes[1].source[0].prefix, 8);
	assert_int_equal(l->routes[1].source[1].family, AF_INET6);
	assert_int_equal(l->routes[1].source[1].prefix, 8);
	assert_int_equal(l->routes[1].upstream, sp_conf_upstream_index(c, "internal"));
	assert_int_equal(l->routes[2].nsni + l->routes[2].nsource, 0);
	assert_int_equal(l->routes[2].upstream, sp_conf_upstream_index(c, "web"));

	assert_int_equal(c->nupstreams, 3);
	const sp_upstream_t *u = &c->upstreams[0];
	assert_string_equal(u->name, "web");
	assert_int_equal(u->balance, SP_BALANCE_ROUND_ROBIN);
	assert_int_equal(u->nservers, 2 + SP_CONF_DNS_SLOTS); /* localhost is a name */
	assert_string_equal(u->servers[0].addr.text, "127.0.0.1:9000");
	assert_int_equal(u->servers[0].weight, 3);
	assert_false(u->servers[0].backup);
	assert_string_equal(u->servers[1].addr.text, "localhost:9002");
	assert_true(u->servers[1].dns);
	assert_int_equal(u->servers[1].weight, 1);
	const sp_server_t *v6 = &u->servers[1 + SP_CONF_DNS_SLOTS];
	assert_string_equal(v6->addr.text, "[::1]:9001");
	assert_int_equal(v6->addr.ss.ss_family, AF_INET6);
	assert_int_equal(v6->addr.len, sizeof(struct sockaddr_in6));
	assert_true(v6->backup);
	assert_int_equal(u->connect_timeout_ms, 1000);
	assert_int_equal(u->idle_timeout_ms, 60000);
	assert_int_equal(u->retries, 2);
	assert_int_equal(u->send_proxy_protocol, SP_PROXY_PROTO_NONE);
	assert_true(u->health_check.enabled);
	assert_int_equal(u->health_check.interval_ms, 2000);
	assert_int_equal(u->health_check.timeout_ms, 1000);
	assert_int_equal(u->health_check.fall, 3);
	assert_int_equal(u->health_check.rise, 2);
	assert_string_equal(c->upstreams[1].name, "api");
	assert_int_equal(c->upstreams[1].balance, SP_BALANCE_LEAST_CONN);
	assert_string_equal(c->upstreams[1].servers[0].addr.text, "127.0.0.1:9100");
	assert_string_equal(c->upstreams[2].name, "internal");
	assert_int_equal(c->upstreams[2].balance, SP_BALANCE_SOURCE_HASH);
	assert_string_equal(c->upstreams[2].servers[0].addr.text, "127.0.0.1:9200");
	sp_conf_free(c);
}

static void test_shipped_configurations_load(void **state)
{
	(void)state;
	const char *files[] = {"conf/shardproxy.json", "conf/examples/full.json",
			       "conf/examples/minimal.json"};
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		sp_conf_errors_t e = {0};
		sp_conf_t *c = sp_conf_load(files[i], &e);
		sp_conf_errors_print(&e, stderr);
		assert_non_null(c);
		assert_int_equal(e.n, 0);
		sp_conf_free(c);
	}
}

static void test_default_configuration_serves_demo_on_loopback(void **state)
{
	(void)state;
	sp_conf_errors_t e = {0};
	sp_conf_t *c = sp_conf_load("conf/shardproxy.json", &e);
	assert_non_null(c);
	assert_string_equal(c->listeners[0].name, "demo");
	assert_string_equal(c->listeners[0].listen.text, "127.0.0.1:8080");
	assert_string_equal(c->upstreams[c->listeners[0].routes[0].upstream].servers[0].addr.text,
			    "127.0.0.1:8081");
	assert_true(c->admin.enabled);
	assert_string_equal(c->admin.listen.text, "127.0.0.1:9901");
	sp_conf_free(c);
}

static void test_load_reads_a_file_and_names_it_in_errors(void **state)
{
	(void)state;
	char dir[] = "/tmp/test_conf.XXXXXX", path[64];
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/bad.json", dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs("{\n  \"relay\": \"fast\"\n}\n", f);
	fclose(f);
	sp_conf_errors_t e = {0};
	char want[3][160];
	snprintf(want[0], sizeof(want[0]), "%s:1:1: upstreams: missing required key", path);
	snprintf(want[1], sizeof(want[1]), "%s:1:1: listeners: missing required key", path);
	snprintf(want[2], sizeof(want[2]),
		 "%s:2:12: relay: invalid value \"fast\"; expected one of: \"auto\", \"copy\", "
		 "\"splice\"",
		 path);
	assert_null(sp_conf_load(path, &e));
	assert_int_equal(e.n, 3);
	for (int i = 0; i < 3; i++)
		assert_string_equal(e.msgs[i], want[i]);
	sp_conf_errors_free(&e);
	unlink(path);
	rmdir(dir);
}

static void test_io_takes_each_backend_by_name(void **state)
{
	(void)state;
	static const struct {
		const char *text;
		sp_io_t want;
	} cases[] = {{FILE_WITH("'io': 'auto', "), SP_IO_AUTO},
		     {FILE_WITH("'io': 'io_uring', "), SP_IO_URING},
		     {FILE_WITH("'io': 'epoll', "), SP_IO_EPOLL}};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		sp_conf_t *c = expect_ok(cases[i].text);
		assert_int_equal(c->io, cases[i].want);
		assert_string_equal(sp_conf_io_name(c->io), i == 0 ? "auto" : i == 1 ? "io_uring" : "epoll");
		sp_conf_free(c);
	}
}

static void test_io_unknown_backend_lists_the_choices(void **state)
{
	(void)state;
	expect_error(FILE_WITH("'io': 'kqueue', "),
		     "conf.json:1:8: io: invalid value \"kqueue\"; expected one of: \"auto\", "
		     "\"io_uring\", \"epoll\"");
}

/* ---- helpers and matchers ---- */

static void test_names_and_index_lookups(void **state)
{
	(void)state;
	assert_string_equal(sp_conf_steering_name(SP_STEER_LEAST_CONN), "least_conn");
	assert_string_equal(sp_conf_relay_name(SP_RELAY_SPLICE), "splice");
	assert_string_equal(sp_conf_affinity_name(SP_AFFINITY_NONE), "none");
	assert_string_equal(sp_conf_affinity_name(SP_AFFINITY_PIN), "pin");
	assert_string_equal(sp_conf_balance_name(SP_BALANCE_RANDOM_TWO), "random_two");
	sp_conf_t *c = expect_ok("{" UPS ", " LIS "}");
	assert_int_equal(sp_conf_listener_index(c, "l"), 0);
	assert_int_equal(sp_conf_upstream_index(c, "u"), 0);
	assert_int_equal(sp_conf_listener_index(c, "u"), -ENOENT);
	assert_int_equal(sp_conf_upstream_index(c, "nope"), -ENOENT);
	sp_conf_free(c);
}

/* ---- log.access_log, user, group (operations) ---- */

static void test_access_log_takes_a_file_path(void **state)
{
	(void)state;
	sp_conf_t *c = expect_ok(FILE_WITH("'log': {'access_log': '/var/log/sp/access.log'}, "));
	assert_true(c->log.access_log);
	assert_string_equal(c->log.access_log_path, "/var/log/sp/access.log");
	sp_conf_free(c);
	c = expect_ok(FILE_WITH("'log': {'access_log': false}, "));
	assert_false(c->log.access_log);
	assert_null(c->log.access_log_path);
	sp_conf_free(c);
}

static void test_access_log_string_without_slash_is_rejected(void **state)
{
	(void)state;
	expect_error_part(FILE_WITH("'log': {'access_log': 'yes'}, "),
			  "log.access_log: expected a boolean or a file path, got \"yes\"");
}

static void test_user_and_group_resolve_to_ids(void **state)
{
	(void)state;
	sp_conf_t *c = expect_ok(FILE_WITH("'user': 'root', 'group': 'root', "));
	assert_true(c->user.set);
	assert_string_equal(c->user.name, "root");
	assert_int_equal(c->user.uid, 0);
	assert_int_equal(c->user.gid, 0);
	assert_true(c->group.set);
	assert_int_equal(c->group.gid, 0);
	sp_conf_free(c);
}

static void test_user_absent_means_no_drop(void **state)
{
	(void)state;
	sp_conf_t *c = expect_ok(FILE_WITH(""));
	assert_false(c->user.set);
	assert_false(c->group.set);
	sp_conf_free(c);
}

static void test_numeric_user_id_is_accepted(void **state)
{
	(void)state;
	sp_conf_t *c = expect_ok(FILE_WITH("'user': '4242', "));
	assert_true(c->user.set);
	assert_int_equal(c->user.uid, 4242);
	assert_int_equal(c->user.gid, 4242);
	sp_conf_free(c);
}

static void test_unknown_user_is_an_error_with_position(void **state)
{
	(void)state;
	expect_error("{'user': 'no-such-user-sp'," UPS ", " LIS "}",
		     "conf.json:1:10: user: unknown user \"no-such-user-sp\"");
	expect_error("{'group': 'no-such-group-sp'," UPS ", " LIS "}",
		     "conf.json:1:11: group: unknown group \"no-such-group-sp\"");
}

static void test_bad_user_name_is_rejected(void **state)
{
	(void)state;
	expect_error_part(FILE_WITH("'user': 'a b', "), "user: invalid name \"a b\"");
	expect_error_part(FILE_WITH("'user': 0, "), "user: expected a string, got an integer");
}

/* Health verdicts and per-server counters live in shared arrays indexed by
 * the server's number across upstreams: a file with more servers than they
 * hold is refused at load, so no shard indexes past them. */
static void test_more_servers_in_all_than_the_shared_arrays_hold_is_an_error(void **state)
{
	(void)state;
	size_t nup = SP_CONF_MAX_SERVERS / 256 + 1, cap = nup * 256 * 40 + 4096, n = 0;
	char *t = malloc(cap);
	assert_non_null(t);
	n += (size_t)snprintf(t + n, cap - n, "{'upstreams': [");
	for (size_t u = 0; u < nup; u++) {
		n += (size_t)snprintf(t + n, cap - n, "%s{'name': 'u%.0zu', 'servers': [", u ? "," : "",
				      u); /* 'u' (the route's), 'u1', 'u2', ... */
		for (unsigned k = 0; k < 256; k++)
			n += (size_t)snprintf(t + n, cap - n, "%s{'address': '127.0.0.1:%u'}",
					      k ? "," : "", 1000 + k);
		n += (size_t)snprintf(t + n, cap - n, "]}");
	}
	snprintf(t + n, cap - n, "], " LIS "}");
	expect_error_part(t, "upstreams: 65792 servers in all; at most 65536 across all upstreams");
	free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_access_log_takes_a_file_path),
	    cmocka_unit_test(test_access_log_string_without_slash_is_rejected),
	    cmocka_unit_test(test_user_and_group_resolve_to_ids),
	    cmocka_unit_test(test_user_absent_means_no_drop),
	    cmocka_unit_test(test_numeric_user_id_is_accepted),
	    cmocka_unit_test(test_unknown_user_is_an_error_with_position),
	    cmocka_unit_test(test_bad_user_name_is_rejected),
	    cmocka_unit_test(test_syntax_error_reports_jansson_position_and_stops),
	    cmocka_unit_test(test_duplicate_key_is_a_syntax_error),
	    cmocka_unit_test(test_top_level_must_be_an_object),
	    cmocka_unit_test(test_unknown_key_points_at_the_key),
	    cmocka_unit_test(test_unknown_key_in_nested_object_has_full_path),
	    cmocka_unit_test(test_wrong_type_is_reported),
	    cmocka_unit_test(test_real_number_rejected_for_integer_field),
	    cmocka_unit_test(test_out_of_range_value_is_reported),
	    cmocka_unit_test(test_bad_enum_lists_allowed_values),
	    cmocka_unit_test(test_duplicate_listener_names_rejected),
	    cmocka_unit_test(test_duplicate_upstream_names_rejected),
	    cmocka_unit_test(test_two_listeners_on_one_address_rejected),
	    cmocka_unit_test(test_route_to_unknown_upstream_rejected),
	    cmocka_unit_test(test_unparsable_addresses_rejected),
	    cmocka_unit_test(test_port_zero_rejected),
	    cmocka_unit_test(test_unbracketed_ipv6_rejected),
	    cmocka_unit_test(test_wildcard_rejected_for_server_address),
	    cmocka_unit_test(test_bad_cidr_rejected),
	    cmocka_unit_test(test_cidr_with_host_bits_set_suggests_network),
	    cmocka_unit_test(test_bad_sni_rejected),
	    cmocka_unit_test(test_empty_match_rejected),
	    cmocka_unit_test(test_missing_required_key_points_at_enclosing_brace),
	    cmocka_unit_test(test_empty_required_array_rejected),
	    cmocka_unit_test(test_invalid_names_rejected),
	    cmocka_unit_test(test_upstream_of_only_backups_rejected),
	    cmocka_unit_test(test_too_many_servers_rejected),
	    cmocka_unit_test(test_health_check_timeout_above_interval_rejected),
	    cmocka_unit_test(test_workers_rejects_other_strings),
	    cmocka_unit_test(test_all_errors_of_a_file_are_reported_in_file_order),
	    cmocka_unit_test(test_missing_file_is_one_error_naming_it),
	    cmocka_unit_test(test_defaults_applied_on_minimal_file),
	    cmocka_unit_test(test_cpu_affinity_none_and_pin_parse),
	    cmocka_unit_test(test_io_takes_each_backend_by_name),
	    cmocka_unit_test(test_io_unknown_backend_lists_the_choices),
	    cmocka_unit_test(test_health_check_object_gets_its_defaults),
	    cmocka_unit_test(test_null_disables_health_check_and_admin),
	    cmocka_unit_test(test_send_proxy_protocol_accepts_null_v1_v2),
	    cmocka_unit_test(test_workers_number_is_kept),
	    cmocka_unit_test(test_route_without_match_before_last_is_allowed),
	    cmocka_unit_test(test_wildcard_listen_means_any_ipv4),
	    cmocka_unit_test(test_server_host_name_is_left_to_the_resolver),
	    cmocka_unit_test(test_server_host_name_takes_dns_slots_in_place),
	    cmocka_unit_test(test_too_many_host_names_for_one_upstream_is_an_error),
	    cmocka_unit_test(test_listen_host_name_comes_from_etc_hosts),
	    cmocka_unit_test(test_resolve_interval_ms_is_per_upstream_and_optional),
	    cmocka_unit_test(test_resolvers_are_ip_addresses_with_ports),
	    cmocka_unit_test(test_admin_socket_is_a_path),
	    cmocka_unit_test(test_sni_is_stored_lower_case),
	    cmocka_unit_test(test_bare_source_address_is_a_host_cidr),
	    cmocka_unit_test(test_spec_example_parses_every_field),
	    cmocka_unit_test(test_shipped_configurations_load),
	    cmocka_unit_test(test_default_configuration_serves_demo_on_loopback),
	    cmocka_unit_test(test_load_reads_a_file_and_names_it_in_errors),
	    cmocka_unit_test(test_names_and_index_lookups),
	    cmocka_unit_test(test_more_servers_in_all_than_the_shared_arrays_hold_is_an_error),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
