/* stats: the totals the admin endpoint reports never go backwards, whatever
 * happens to the shards behind them: a shard dies and its slot is reused, a
 * reload renumbers listeners and servers, a generation drains and goes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/stats.h"
#include "tests/unit/conf_text.h"

static const char *const conf_a =
    "{'listeners': ["
    "  {'name': 'web', 'listen': '127.0.0.1:18080', 'routes': [{'upstream': 'app'}]},"
    "  {'name': 'db', 'listen': '127.0.0.1:18081', 'routes': [{'upstream': 'pg'}]}],"
    " 'upstreams': ["
    "  {'name': 'app', 'servers': [{'address': '127.0.0.1:19001'}, {'address': "
    "'127.0.0.1:19002'}]},"
    "  {'name': 'pg', 'servers': [{'address': '127.0.0.1:19003'}]}]}";

/* The reload: listener db is gone, upstream pg comes first (so every app
 * server has another index), app gains a server. */
static const char *const conf_b =
    "{'listeners': ["
    "  {'name': 'web', 'listen': '127.0.0.1:18080', 'routes': [{'upstream': 'app'}]}],"
    " 'upstreams': ["
    "  {'name': 'pg', 'servers': [{'address': '127.0.0.1:19003'}]},"
    "  {'name': 'app', 'servers': [{'address': '127.0.0.1:19002'}, {'address': '127.0.0.1:19001'},"
    "                              {'address': '127.0.0.1:19004'}]}]}";

static sp_shard_stats_t *slots_new(unsigned n)
{
	sp_shard_stats_t *s = aligned_alloc(64, n * sizeof(*s));
	assert_non_null(s);
	memset(s, 0, n * sizeof(*s));
	return s;
}

/* Traffic in one slot: every counter moves, the gauges too. */
static void traffic(sp_shard_stats_t *st, const sp_conf_t *conf, uint64_t n)
{
	st->accepted += n;
	st->active = n; /* gauge */
	st->refused += 1;
	st->no_route += 1;
	st->connect_failed += 1;
	st->bytes_in += 100 * n;
	st->bytes_out += 200 * n;
	st->log_dropped += 1;
	st->closed[0] += n;
	for (size_t l = 0; l < conf->nlisteners; l++) {
		st->listeners[l].accepted += n;
		st->listeners[l].active = 1;
		st->listeners[l].bytes_in += 10 * n;
		st->listeners[l].bytes_out += 20 * n;
	}
	for (size_t u = 0; u < conf->nupstreams; u++)
		for (size_t k = 0; k < conf->upstreams[u].nservers; k++) {
			sp_server_stats_t *x = &st->servers[conf->upstreams[u].first_server + k];
			x->attempts += n;
			x->connected += n;
			x->active = 1;
			x->bytes_in += 3 * n;
			x->bytes_out += 5 * n;
		}
}

static void assert_totals_ge(const sp_slot_totals_t *now, const sp_slot_totals_t *before)
{
	assert_true(now->accepted >= before->accepted);
	assert_true(now->refused >= before->refused);
	assert_true(now->no_route >= before->no_route);
	assert_true(now->connect_failed >= before->connect_failed);
	assert_true(now->bytes_in >= before->bytes_in);
	assert_true(now->bytes_out >= before->bytes_out);
	assert_true(now->log_dropped >= before->log_dropped);
	for (unsigned r = 0; r < SP_STATS_NEND; r++)
		assert_true(now->closed[r] >= before->closed[r]);
}

/* Every total, slot and row of before is in now, none smaller. */
static void assert_view_ge(const sp_stats_view_t *now, const sp_stats_view_t *before)
{
	assert_totals_ge(&now->total, &before->total);
	assert_true(now->nslots >= before->nslots);
	for (unsigned i = 0; i < before->nslots; i++)
		assert_totals_ge(&now->per_slot[i], &before->per_slot[i]);
	for (size_t i = 0; i < before->t.nl; i++) {
		const sp_lrow_t *b = &before->t.l[i];
		const sp_lrow_t *n = sp_stats_find_listener(&now->t, b->name);
		assert_non_null(n);
		assert_true(n->st.accepted >= b->st.accepted);
		assert_true(n->st.bytes_in >= b->st.bytes_in);
		assert_true(n->st.bytes_out >= b->st.bytes_out);
	}
	for (size_t i = 0; i < before->t.ns; i++) {
		const sp_srow_t *b = &before->t.s[i];
		const sp_srow_t *n = sp_stats_find_server(&now->t, b->upstream, b->server);
		assert_non_null(n);
		assert_true(n->st.attempts >= b->st.attempts);
		assert_true(n->st.connected >= b->st.connected);
		assert_true(n->st.bytes_in >= b->st.bytes_in);
		assert_true(n->st.bytes_out >= b->st.bytes_out);
	}
}

static void view(sp_stats_view_t *v, const sp_stats_history_t *h, const sp_stats_gen_t *gens,
		 unsigned n)
{
	assert_int_equal(sp_stats_view(v, h, gens, n), 0);
}

static void test_totals_never_go_backwards_across_retire_and_reload(void **state)
{
	(void)state;
	sp_conf_t *a = conf_text_load_ok("a.json", conf_a);
	sp_conf_t *b = conf_text_load_ok("b.json", conf_b);
	sp_shard_stats_t *sa = slots_new(2), *sb = slots_new(3);
	sp_stats_gen_t ga = {.conf = a, .slots = sa, .nslots = 2};
	sp_stats_gen_t gb = {.conf = b, .slots = sb, .nslots = 3};
	sp_stats_history_t h;
	sp_stats_view_t v[6];
	memset(&h, 0, sizeof(h));

	traffic(&sa[0], a, 5);
	traffic(&sa[1], a, 7);
	view(&v[0], &h, &ga, 1);
	assert_int_equal(v[0].total.accepted, 12);
	assert_int_equal(v[0].total.active, 12);

	/* Shard 0 dies: folded into the history, its slot zeroed and reused. */
	assert_int_equal(sp_stats_retire(&h, &ga, 0), 0);
	memset(&sa[0], 0, sizeof(sa[0]));
	view(&v[1], &h, &ga, 1);
	assert_view_ge(&v[1], &v[0]);
	assert_int_equal(v[1].total.accepted, 12);
	assert_int_equal(v[1].total.active, 7); /* the dead shard's sessions are gone */
	traffic(&sa[0], a, 1);

	/* Reload: both generations live while the old one drains. */
	traffic(&sb[0], b, 2);
	traffic(&sb[2], b, 4);
	sp_stats_gen_t both[2] = {ga, gb};
	view(&v[2], &h, both, 2);
	assert_view_ge(&v[2], &v[1]);
	assert_int_equal(v[2].nslots, 3);

	/* The old generation drains and goes, one shard at a time. */
	assert_int_equal(sp_stats_retire(&h, &ga, 1), 0);
	memset(&sa[1], 0, sizeof(sa[1]));
	view(&v[3], &h, both, 2);
	assert_view_ge(&v[3], &v[2]);
	assert_int_equal(sp_stats_retire(&h, &ga, 0), 0);
	memset(&sa[0], 0, sizeof(sa[0]));
	view(&v[4], &h, &gb, 1);
	assert_view_ge(&v[4], &v[3]);
	assert_int_equal(v[4].total.accepted, 12 + 1 + 2 + 4);

	/* A removed listener keeps its counts; a renumbered server keeps its own. */
	const sp_lrow_t *db = sp_stats_find_listener(&v[4].t, "db");
	assert_non_null(db);
	assert_int_equal(db->st.accepted, 12 + 1);
	assert_int_equal(db->st.active, 0);
	const sp_srow_t *s1 = sp_stats_find_server(&v[4].t, "app", "127.0.0.1:19001");
	assert_non_null(s1);
	assert_int_equal(s1->st.attempts, 12 + 1 + 2 + 4);
	assert_int_equal(s1->st.bytes_out, 5 * (12 + 1 + 2 + 4));

	/* A shard of the new generation dies too. */
	assert_int_equal(sp_stats_retire(&h, &gb, 2), 0);
	memset(&sb[2], 0, sizeof(sb[2]));
	view(&v[5], &h, &gb, 1);
	assert_view_ge(&v[5], &v[4]);

	for (int i = 0; i < 6; i++)
		sp_stats_view_free(&v[i]);
	sp_stats_history_free(&h);
	free(sa);
	free(sb);
	sp_conf_free(a);
	sp_conf_free(b);
}

/* Slots a shrinking reload leaves without a shard still show their history. */
static void test_view_keeps_slots_a_shrinking_reload_left(void **state)
{
	(void)state;
	sp_conf_t *a = conf_text_load_ok("a.json", conf_a);
	sp_shard_stats_t *s = slots_new(4);
	sp_stats_gen_t g4 = {.conf = a, .slots = s, .nslots = 4};
	sp_stats_gen_t g1 = {.conf = a, .slots = s, .nslots = 1};
	sp_stats_history_t h;
	sp_stats_view_t v;
	memset(&h, 0, sizeof(h));

	traffic(&s[3], a, 9);
	assert_int_equal(sp_stats_retire(&h, &g4, 3), 0);
	memset(&s[3], 0, sizeof(s[3]));
	view(&v, &h, &g1, 1);
	assert_int_equal(v.nslots, 4);
	assert_int_equal(v.per_slot[3].accepted, 9);
	assert_int_equal(v.per_slot[3].active, 0);
	sp_stats_view_free(&v);
	sp_stats_history_free(&h);
	free(s);
	sp_conf_free(a);
}

/* More rows than the tables start with (16): each keeps its own counts as
 * the tables grow. */
static void test_view_keeps_every_row_past_the_first_table_size(void **state)
{
	(void)state;
	enum { N = 40 };
	static char text[16384];
	size_t len = 0;
	len += (size_t)snprintf(text + len, sizeof(text) - len, "{'listeners': [");
	for (int i = 0; i < N; i++)
		len += (size_t)snprintf(text + len, sizeof(text) - len,
					"%s{'name': 'l%d', 'listen': '127.0.0.1:%d', 'routes': "
					"[{'upstream': 'u'}]}",
					i ? "," : "", i, 18000 + i);
	len += (size_t)snprintf(text + len, sizeof(text) - len,
				"], 'upstreams': [{'name': 'u', 'servers': [");
	for (int i = 0; i < N; i++)
		len += (size_t)snprintf(text + len, sizeof(text) - len, "%s{'address': '127.0.0.1:%d'}",
					i ? "," : "", 19000 + i);
	snprintf(text + len, sizeof(text) - len, "]}]}");
	sp_conf_t *c = conf_text_load_ok("many.json", text);
	sp_shard_stats_t *s = slots_new(1);
	sp_stats_gen_t g = {.conf = c, .slots = s, .nslots = 1};
	sp_stats_history_t h;
	sp_stats_view_t v;
	memset(&h, 0, sizeof(h));
	for (int i = 0; i < N; i++) {
		s[0].listeners[i].accepted = 100 + (uint64_t)i;
		s[0].servers[i].attempts = 200 + (uint64_t)i;
	}
	view(&v, &h, &g, 1);
	assert_int_equal(v.t.nl, N);
	assert_int_equal(v.t.ns, N);
	for (int i = 0; i < N; i++) {
		char name[16], addr[32];
		snprintf(name, sizeof(name), "l%d", i);
		snprintf(addr, sizeof(addr), "127.0.0.1:%d", 19000 + i);
		const sp_lrow_t *l = sp_stats_find_listener(&v.t, name);
		const sp_srow_t *r = sp_stats_find_server(&v.t, "u", addr);
		assert_non_null(l);
		assert_non_null(r);
		assert_int_equal(l->st.accepted, 100 + i);
		assert_int_equal(r->st.attempts, 200 + i);
	}
	sp_stats_view_free(&v);
	sp_stats_history_free(&h);
	free(s);
	sp_conf_free(c);
}

/* Servers are numbered across upstreams once, by the loader. */
static void test_conf_numbers_servers_across_upstreams(void **state)
{
	(void)state;
	sp_conf_t *b = conf_text_load_ok("b.json", conf_b);
	assert_int_equal(b->upstreams[0].first_server, 0);
	assert_int_equal(b->upstreams[1].first_server, 1);
	sp_conf_free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_totals_never_go_backwards_across_retire_and_reload),
	    cmocka_unit_test(test_view_keeps_slots_a_shrinking_reload_left),
	    cmocka_unit_test(test_view_keeps_every_row_past_the_first_table_size),
	    cmocka_unit_test(test_conf_numbers_servers_across_upstreams),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
