/* control: the operator's writes (admin.socket) change exactly the servers
 * they name, in the generation's shared control array; a malformed or
 * unknown request is refused with a 4xx and a reason, and changes nothing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"
#include "tests/unit/conf_text.h"
#include "proxy/control.h"
#include "proxy/health.h"

#define CONF                                                                                       \
	"{'listeners': [{'name': 'l', 'listen': '127.0.0.1:8080', 'routes': [{'upstream': 'web'}]}],"  \
	" 'upstreams': [{'name': 'api', 'servers': [{'address': '127.0.0.1:7000'}]},"              \
	"  {'name': 'web', 'servers': [{'address': '127.0.0.1:9000', 'weight': 3},"                \
	"   {'address': '[::1]:9001'}, {'address': 'svc.test:9002'}]}]}"

static sp_conf_t *conf;
static sp_server_ctl_t *ctl;
static char *out;
static size_t outlen;

static int setup(void **state)
{
	(void)state;
	conf = conf_text_load_ok("control.json", CONF);
	ctl = calloc(SP_HEALTH_MAX_SERVERS, sizeof(*ctl));
	assert_non_null(ctl);
	sp_control_init(conf, ctl);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	sp_conf_free(conf);
	free(ctl);
	free(out);
	out = NULL;
	return 0;
}

static int request(const char *method, const char *path)
{
	free(out);
	out = NULL;
	FILE *f = open_memstream(&out, &outlen);
	assert_non_null(f);
	int status = sp_control_request(conf, ctl, method, path, f);
	fclose(f);
	return status;
}

/* web's server k (file index), as numbered in the shared arrays. */
static sp_server_ctl_t *web(size_t k)
{
	return &ctl[sp_health_index(conf, 1) + k];
}

static void test_init_enables_every_server_at_its_weight_and_leaves_names_empty(void **state)
{
	(void)state;
	assert_int_equal(web(0)->admin, SP_SRV_ENABLED);
	assert_int_equal(web(0)->weight, 3);
	assert_true(web(0)->present);
	assert_true(web(1)->present);
	for (unsigned k = 0; k < SP_CONF_DNS_SLOTS; k++) {
		assert_false(web(2 + k)->present);
		assert_int_equal(web(2 + k)->weight, 1);
	}
}

static void test_drain_by_address_changes_that_server_only(void **state)
{
	(void)state;
	assert_int_equal(request("POST", "/servers/web/127.0.0.1:9000/drain"), 200);
	assert_int_equal(web(0)->admin, SP_SRV_DRAINING);
	assert_int_equal(web(1)->admin, SP_SRV_ENABLED);
	assert_int_equal(ctl[0].admin, SP_SRV_ENABLED); /* api's server */
	assert_non_null(strstr(out, "\"admin\":\"draining\""));
	assert_non_null(strstr(out, "\"address\":\"127.0.0.1:9000\""));
}

static void test_disable_and_enable_by_index(void **state)
{
	(void)state;
	assert_int_equal(request("POST", "/servers/web/1/disable"), 200);
	assert_int_equal(web(1)->admin, SP_SRV_DISABLED);
	assert_int_equal(request("POST", "/servers/web/1/enable"), 200);
	assert_int_equal(web(1)->admin, SP_SRV_ENABLED);
}

static void test_percent_encoded_ipv6_address_names_the_server(void **state)
{
	(void)state;
	assert_int_equal(request("POST", "/servers/web/%5B::1%5D:9001/drain"), 200);
	assert_int_equal(web(1)->admin, SP_SRV_DRAINING);
}

static void test_weight_is_set_and_shown(void **state)
{
	(void)state;
	assert_int_equal(request("POST", "/servers/web/0/weight/7"), 200);
	assert_int_equal(web(0)->weight, 7);
	assert_non_null(strstr(out, "\"weight\":7"));
}

/* A name stands for all its addresses; one resolved address for itself. */
static void test_name_selects_all_its_slots_and_a_resolved_address_one(void **state)
{
	(void)state;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(9002)};
	a.sin_addr.s_addr = htonl(0x7f000002);
	sp_server_ctl_set_addr(web(2), (struct sockaddr_storage *)&a, sizeof(a));
	a.sin_addr.s_addr = htonl(0x7f000003);
	sp_server_ctl_set_addr(web(3), (struct sockaddr_storage *)&a, sizeof(a));
	assert_int_equal(request("POST", "/servers/web/127.0.0.3:9002/drain"), 200);
	assert_int_equal(web(2)->admin, SP_SRV_ENABLED);
	assert_int_equal(web(3)->admin, SP_SRV_DRAINING);
	assert_int_equal(request("POST", "/servers/web/svc.test:9002/disable"), 200);
	for (unsigned k = 0; k < SP_CONF_DNS_SLOTS; k++)
		assert_int_equal(web(2 + k)->admin, SP_SRV_DISABLED);
	assert_non_null(strstr(out, "\"resolved\":\"127.0.0.2:9002\""));
}

static void test_malformed_requests_get_4xx_with_a_reason_and_change_nothing(void **state)
{
	(void)state;
	static const struct {
		const char *method, *path, *reason;
		int status;
	} cases[] = {
		{"POST", "/servers/web/0/pause", "unknown action \"pause\"", 400},
		{"POST", "/servers/web/0/weight/0", "invalid weight \"0\"", 400},
		{"POST", "/servers/web/0/weight/257", "invalid weight \"257\"", 400},
		{"POST", "/servers/web/0/weight/x", "invalid weight \"x\"", 400},
		{"POST", "/servers/web/0/weight", "expected /weight/<1..256>", 400},
		{"POST", "/servers/web/0/drain/now", "unexpected \"now\"", 400},
		{"POST", "/servers/web/0", "expected /servers/<upstream>/<server>/<action>", 400},
		{"POST", "/servers/web//drain", "expected /servers/", 400},
		{"POST", "/servers/web/%zz/drain", "expected /servers/", 400},
		{"POST", "/servers/nope/0/drain", "no upstream \"nope\"", 404},
		{"POST", "/servers/web/9/drain", "no such server", 404},
		{"POST", "/servers/web/10.9.9.9:1/drain", "no such server", 404},
		{"GET", "/servers/web/0/drain", "use POST", 405},
		{"POST", "/stats", "not found", 404},
	};
	sp_server_ctl_t *before = malloc(SP_HEALTH_MAX_SERVERS * sizeof(*ctl));
	assert_non_null(before);
	memcpy(before, ctl, SP_HEALTH_MAX_SERVERS * sizeof(*ctl));
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int st = request(cases[i].method, cases[i].path);
		if (st != cases[i].status || !strstr(out, cases[i].reason))
			fail_msg("%s %s: got %d \"%s\", want %d with \"%s\"", cases[i].method,
				 cases[i].path, st, out, cases[i].status, cases[i].reason);
	}
	assert_memory_equal(before, ctl, SP_HEALTH_MAX_SERVERS * sizeof(*ctl));
	free(before);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(
		    test_init_enables_every_server_at_its_weight_and_leaves_names_empty, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_drain_by_address_changes_that_server_only,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_disable_and_enable_by_index, setup, teardown),
		cmocka_unit_test_setup_teardown(test_percent_encoded_ipv6_address_names_the_server,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_weight_is_set_and_shown, setup, teardown),
		cmocka_unit_test_setup_teardown(
		    test_name_selects_all_its_slots_and_a_resolved_address_one, setup, teardown),
		cmocka_unit_test_setup_teardown(
		    test_malformed_requests_get_4xx_with_a_reason_and_change_nothing, setup,
		    teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
