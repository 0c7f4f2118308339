/* stats: aggregation of shard counters across slots, retired shards and
 * generations. See stats.h. */
#include "proxy/stats.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Per-server detail covers the first servers of the shared numbering. */
_Static_assert(SP_STATS_MAX_SERVERS <= SP_CONF_MAX_SERVERS, "stats rows past the numbering");
_Static_assert(SP_STATS_MAX_LISTENERS <= SP_SHARD_MAX_LISTENERS, "stats rows past the listeners");

/* Shards write their slots while we read: relaxed loads, one per counter. */
static uint64_t ld(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

void sp_stats_totals_add(sp_slot_totals_t *t, const sp_shard_stats_t *st, bool live)
{
	t->accepted += ld(&st->accepted);
	if (live)
		t->active += ld(&st->active);
	t->refused += ld(&st->refused);
	t->no_route += ld(&st->no_route);
	t->connect_failed += ld(&st->connect_failed);
	t->bytes_in += ld(&st->bytes_in);
	t->bytes_out += ld(&st->bytes_out);
	t->log_dropped += ld(&st->log_dropped);
	for (unsigned r = 0; r < SP_STATS_NEND; r++)
		t->closed[r] += ld(&st->closed[r]);
}

static void slot_totals_sum(sp_slot_totals_t *t, const sp_slot_totals_t *x)
{
	t->accepted += x->accepted;
	t->active += x->active;
	t->refused += x->refused;
	t->no_route += x->no_route;
	t->connect_failed += x->connect_failed;
	t->bytes_in += x->bytes_in;
	t->bytes_out += x->bytes_out;
	t->log_dropped += x->log_dropped;
	for (unsigned r = 0; r < SP_STATS_NEND; r++)
		t->closed[r] += x->closed[r];
}

const sp_lrow_t *sp_stats_find_listener(const sp_stat_table_t *t, const char *name)
{
	for (size_t i = 0; i < t->nl; i++)
		if (strcmp(t->l[i].name, name) == 0)
			return &t->l[i];
	return NULL;
}

const sp_srow_t *sp_stats_find_server(const sp_stat_table_t *t, const char *upstream,
				      const char *server)
{
	for (size_t i = 0; i < t->ns; i++)
		if (strcmp(t->s[i].upstream, upstream) == 0 && strcmp(t->s[i].server, server) == 0)
			return &t->s[i];
	return NULL;
}

/* arr (n used of *cap elements of `size`) with room for one more: doubled
 * when full, from 16. NULL when out of memory (arr and *cap unchanged). */
static void *grow(void *arr, size_t n, size_t *cap, size_t size)
{
	if (n < *cap)
		return arr;
	size_t ncap = *cap ? *cap * 2 : 16;
	void *p = realloc(arr, ncap * size);
	if (p)
		*cap = ncap;
	return p;
}

/* The row for name, added (zeroed) if absent; NULL when out of memory. */
static sp_lrow_t *lrow(sp_stat_table_t *t, const char *name)
{
	sp_lrow_t *r = (sp_lrow_t *)sp_stats_find_listener(t, name);
	if (r)
		return r;
	sp_lrow_t *l = grow(t->l, t->nl, &t->capl, sizeof(*l));
	if (!l)
		return NULL;
	t->l = l;
	r = &t->l[t->nl++];
	memset(r, 0, sizeof(*r));
	snprintf(r->name, sizeof(r->name), "%s", name);
	return r;
}

static sp_srow_t *srow(sp_stat_table_t *t, const char *upstream, const char *server)
{
	sp_srow_t *r = (sp_srow_t *)sp_stats_find_server(t, upstream, server);
	if (r)
		return r;
	sp_srow_t *sv = grow(t->s, t->ns, &t->caps, sizeof(*sv));
	if (!sv)
		return NULL;
	t->s = sv;
	r = &t->s[t->ns++];
	memset(r, 0, sizeof(*r));
	snprintf(r->upstream, sizeof(r->upstream), "%s", upstream);
	snprintf(r->server, sizeof(r->server), "%s", server);
	return r;
}

static void table_free(sp_stat_table_t *t)
{
	free(t->l);
	free(t->s);
	memset(t, 0, sizeof(*t));
}

static int table_copy(sp_stat_table_t *dst, const sp_stat_table_t *src)
{
	memset(dst, 0, sizeof(*dst));
	dst->l = malloc((src->nl ? src->nl : 1) * sizeof(*dst->l));
	dst->s = malloc((src->ns ? src->ns : 1) * sizeof(*dst->s));
	if (!dst->l || !dst->s) {
		table_free(dst);
		return -ENOMEM;
	}
	if (src->nl)
		memcpy(dst->l, src->l, src->nl * sizeof(*dst->l));
	if (src->ns)
		memcpy(dst->s, src->s, src->ns * sizeof(*dst->s));
	dst->capl = src->nl ? src->nl : 1;
	dst->nl = src->nl;
	dst->caps = src->ns ? src->ns : 1;
	dst->ns = src->ns;
	return 0;
}

/* Add the per-listener and per-server detail of slots [from, to) of g into
 * t, by name; gauges too when live. Rows are made first for every name, so
 * a row exists for each of g's listeners and servers even at zero. */
static int table_add_gen(sp_stat_table_t *t, const sp_stats_gen_t *g, unsigned from, unsigned to,
			 bool live)
{
	const sp_conf_t *conf = g->conf;
	size_t nl =
	    conf->nlisteners < SP_STATS_MAX_LISTENERS ? conf->nlisteners : SP_STATS_MAX_LISTENERS;
	for (size_t l = 0; l < nl; l++) {
		sp_lrow_t *r = lrow(t, conf->listeners[l].name);
		if (!r)
			return -ENOMEM;
		for (unsigned i = from; i < to; i++) {
			const sp_listener_stats_t *x = &g->slots[i].listeners[l];
			r->st.accepted += ld(&x->accepted);
			r->st.refused += ld(&x->refused);
			r->st.no_route += ld(&x->no_route);
			r->st.bytes_in += ld(&x->bytes_in);
			r->st.bytes_out += ld(&x->bytes_out);
			if (live)
				r->st.active += ld(&x->active);
		}
	}
	for (size_t u = 0; u < conf->nupstreams; u++) {
		const sp_upstream_t *up = &conf->upstreams[u];
		uint32_t idx = up->first_server;
		for (size_t k = 0; k < up->nservers && idx < SP_STATS_MAX_SERVERS; k++, idx++) {
			sp_srow_t *r = srow(t, up->name, up->servers[k].addr.text);
			if (!r)
				return -ENOMEM;
			for (unsigned i = from; i < to; i++) {
				const sp_server_stats_t *x = &g->slots[i].servers[idx];
				r->st.attempts += ld(&x->attempts);
				r->st.failures += ld(&x->failures);
				r->st.timeouts += ld(&x->timeouts);
				r->st.connected += ld(&x->connected);
				r->st.bytes_in += ld(&x->bytes_in);
				r->st.bytes_out += ld(&x->bytes_out);
				if (live)
					r->st.active += ld(&x->active);
				if (ld(&x->last_fail) > r->st.last_fail)
					r->st.last_fail = ld(&x->last_fail);
			}
		}
	}
	return 0;
}

int sp_stats_retire(sp_stats_history_t *h, const sp_stats_gen_t *g, unsigned slot)
{
	sp_stats_totals_add(&h->slot[slot], &g->slots[slot], false);
	return table_add_gen(&h->t, g, slot, slot + 1, false);
}

void sp_stats_history_free(sp_stats_history_t *h)
{
	table_free(&h->t);
}

static bool has_history(const sp_slot_totals_t *x)
{
	return x->accepted || x->bytes_in || x->refused;
}

int sp_stats_view(sp_stats_view_t *v, const sp_stats_history_t *h, const sp_stats_gen_t *gens,
		  unsigned n)
{
	int ret;
	memset(v, 0, sizeof(*v));
	if ((ret = table_copy(&v->t, &h->t)) < 0)
		return ret;
	for (unsigned i = 0; i < SP_MAX_SLOTS; i++)
		v->per_slot[i] = h->slot[i];
	for (unsigned k = 0; k < n; k++) {
		const sp_stats_gen_t *g = &gens[k];
		for (unsigned i = 0; i < g->nslots; i++)
			sp_stats_totals_add(&v->per_slot[i], &g->slots[i], true);
		if ((ret = table_add_gen(&v->t, g, 0, g->nslots, true)) < 0) {
			table_free(&v->t);
			return ret;
		}
		if (g->nslots > v->nslots)
			v->nslots = g->nslots;
	}
	/* Slots a shrinking reload left behind still hold history. */
	for (unsigned i = 0; i < SP_MAX_SLOTS; i++)
		if (has_history(&h->slot[i]) && i + 1 > v->nslots)
			v->nslots = i + 1;
	for (unsigned i = 0; i < SP_MAX_SLOTS; i++)
		slot_totals_sum(&v->total, &v->per_slot[i]);
	return 0;
}

void sp_stats_view_free(sp_stats_view_t *v)
{
	table_free(&v->t);
}
