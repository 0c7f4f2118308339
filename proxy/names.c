/* names: one entry per server written with a host name (see names.h). An
 * answer is applied by comparing the sorted address set with the one in
 * force: unchanged, nothing is written; changed, each slot gets its new
 * address (or none) under the slot's seqlock, and its health state starts
 * over, since it is now another server. */
#include "proxy/names.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proxy/control.h"
#include "proxy/resolver.h"
#include "runtime/log.h"

typedef struct {
	sp_names_t *owner;
	size_t upstream;
	const sp_server_t *srv; /* the first of its slots */
	uint32_t idx;           /* its first slot in the shared arrays */
	struct sockaddr_storage addrs[SP_CONF_DNS_SLOTS];
	size_t naddrs; /* the last good set (what the slots hold) */
	bool have;     /* a look-up has succeeded at least once */
	bool first_done, first_ok;
	bool inflight;
	uint64_t due; /* next re-resolution; 0: none */
	uint64_t lookups, failures;
	char last_error[96];
} name_t;

struct sp_names {
	const sp_conf_t *conf;
	sp_server_ctl_t *ctl;
	sp_resolver_t *res;
	sp_health_t *health;
	name_t *names;
	size_t n;
};

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int sp_names_new(sp_names_t **out, const sp_conf_t *conf, sp_server_ctl_t *ctl, char *err,
		 size_t errlen)
{
	sp_names_t *n = calloc(1, sizeof(*n));
	size_t total = 0;
	if (!n) {
		snprintf(err, errlen, "resolver: out of memory");
		return -ENOMEM;
	}
	n->conf = conf;
	n->ctl = ctl;
	for (size_t u = 0; u < conf->nupstreams; u++)
		total += conf->upstreams[u].nnames;
	if (total && !(n->names = calloc(total, sizeof(*n->names)))) {
		free(n);
		snprintf(err, errlen, "resolver: out of memory");
		return -ENOMEM;
	}
	for (size_t u = 0; u < conf->nupstreams; u++) {
		const sp_upstream_t *up = &conf->upstreams[u];
		uint32_t base = sp_health_index(conf, u);
		for (size_t k = 0; k < up->nservers; k++) {
			if (!up->servers[k].dns || up->servers[k].dns_slot != 0)
				continue;
			name_t *x = &n->names[n->n++];
			x->owner = n;
			x->upstream = u;
			x->srv = &up->servers[k];
			x->idx = base + (uint32_t)k;
		}
	}
	/* No names, no resolver: a file of IP addresses never reads resolv.conf. */
	if (n->n) {
		int ret = sp_resolver_new(&n->res, conf->resolvers, conf->nresolvers, err, errlen);
		if (ret < 0) {
			free(n->names);
			free(n);
			return ret;
		}
	}
	*out = n;
	return 0;
}

void sp_names_free(sp_names_t *n)
{
	if (!n)
		return;
	sp_resolver_free(n->res); /* cancels look-ups in flight: on_answer sees -ECANCELED */
	free(n->names);
	free(n);
}

static void set_text(const struct sockaddr_storage *a, size_t na, char *buf, size_t len)
{
	size_t off = 0;
	buf[0] = '\0';
	for (size_t i = 0; i < na && off < len; i++) {
		char one[64];
		sp_control_addr_text(&a[i], one, sizeof(one));
		off += (size_t)snprintf(buf + off, len - off, "%s%s", i ? ", " : "", one);
	}
	if (!na)
		snprintf(buf, len, "none");
}

static void apply(name_t *x, const struct sockaddr_storage *addrs, size_t na)
{
	sp_names_t *n = x->owner;
	const sp_upstream_t *up = &n->conf->upstreams[x->upstream];
	char was[512], now[512];
	if (na > SP_CONF_DNS_SLOTS) {
		sp_warn("upstream %s server %s: %zu addresses, only the first %d are used",
			up->name, x->srv->addr.text, na, SP_CONF_DNS_SLOTS);
		na = SP_CONF_DNS_SLOTS;
	}
	if (x->have && na == x->naddrs && memcmp(addrs, x->addrs, na * sizeof(*addrs)) == 0)
		return;
	set_text(x->addrs, x->naddrs, was, sizeof(was));
	set_text(addrs, na, now, sizeof(now));
	for (size_t j = 0; j < SP_CONF_DNS_SLOTS; j++) {
		bool had = j < x->naddrs, has = j < na;
		if (had == has && (!has || memcmp(&x->addrs[j], &addrs[j], sizeof(addrs[j])) == 0))
			continue;
		socklen_t len = has ? (addrs[j].ss_family == AF_INET ? sizeof(struct sockaddr_in)
								      : sizeof(struct sockaddr_in6))
				    : 0;
		sp_server_ctl_set_addr(&n->ctl[x->idx + j], has ? &addrs[j] : NULL, len);
		if (n->health)
			sp_health_reset(n->health, x->idx + (uint32_t)j);
	}
	if (x->have)
		sp_info("upstream %s server %s: addresses now %s (were %s)", up->name,
			x->srv->addr.text, now, was);
	memcpy(x->addrs, addrs, na * sizeof(*addrs));
	x->naddrs = na;
	x->have = true;
}

static void on_answer(void *arg, int err, const char *why, const struct sockaddr_storage *addrs,
		      size_t na)
{
	name_t *x = arg;
	if (err == -ECANCELED)
		return; /* the generation is going away */
	sp_names_t *n = x->owner;
	const sp_upstream_t *up = &n->conf->upstreams[x->upstream];
	bool first = !x->first_done;
	x->inflight = false;
	x->first_done = true;
	x->lookups++;
	if (up->resolve_interval_ms)
		x->due = mono_ms() + up->resolve_interval_ms;
	if (err < 0) {
		x->failures++;
		snprintf(x->last_error, sizeof(x->last_error), "%s", why ? why : strerror(-err));
		if (!first)
			sp_warn("upstream %s server %s: look-up failed (%s); keeping %zu address%s",
				up->name, x->srv->addr.text, x->last_error, x->naddrs,
				x->naddrs == 1 ? "" : "es");
		return;
	}
	if (first)
		x->first_ok = true;
	apply(x, addrs, na);
}

static void lookup(name_t *x)
{
	x->inflight = true;
	x->due = 0;
	if (sp_resolver_lookup(x->owner->res, x->srv->host, x->srv->port, on_answer, x) < 0) {
		x->inflight = false;
		on_answer(x, -ENOMEM, "out of memory", NULL, 0);
	}
}

void sp_names_start(sp_names_t *n)
{
	for (size_t i = 0; i < n->n; i++)
		if (!n->names[i].inflight)
			lookup(&n->names[i]);
}

bool sp_names_settled(const sp_names_t *n)
{
	for (size_t i = 0; i < n->n; i++)
		if (!n->names[i].first_done)
			return false;
	return true;
}

static const name_t *find_prev(const sp_names_t *prev, const name_t *x, const char *upname)
{
	for (size_t i = 0; prev && i < prev->n; i++) {
		const name_t *o = &prev->names[i];
		if (o->have && o->srv->port == x->srv->port &&
		    strcmp(o->srv->host, x->srv->host) == 0 &&
		    strcmp(prev->conf->upstreams[o->upstream].name, upname) == 0)
			return o;
	}
	return NULL;
}

size_t sp_names_first_errors(sp_names_t *n, const sp_names_t *prev, sp_conf_errors_t *errs)
{
	size_t fatal = 0;
	for (size_t i = 0; i < n->n; i++) {
		name_t *x = &n->names[i];
		const sp_upstream_t *up = &n->conf->upstreams[x->upstream];
		if (x->first_ok)
			continue;
		if (!x->first_done)
			snprintf(x->last_error, sizeof(x->last_error), "no answer in time");
		if (!up->resolve_interval_ms) {
			char *msg = NULL;
			if (asprintf(&msg,
				     "%s: cannot resolve \"%s\": %s (set resolve_interval_ms to start "
				     "without it and keep trying)",
				     x->srv->where, x->srv->host, x->last_error) < 0)
				msg = NULL;
			char **m = errs ? realloc(errs->msgs, (errs->n + 1) * sizeof(char *)) : NULL;
			if (m && msg) {
				errs->msgs = m;
				m[errs->n++] = msg;
			} else {
				if (m)
					errs->msgs = m;
				free(msg);
			}
			fatal++;
			continue;
		}
		const name_t *o = find_prev(prev, x, up->name);
		if (o) {
			apply(x, o->addrs, o->naddrs);
			sp_warn("%s: cannot resolve \"%s\": %s; keeping the %zu address%s it had, "
				"retrying every %u ms",
				x->srv->where, x->srv->host, x->last_error, o->naddrs,
				o->naddrs == 1 ? "" : "es", up->resolve_interval_ms);
		} else {
			sp_warn("%s: cannot resolve \"%s\": %s; starting without it, retrying every "
				"%u ms",
				x->srv->where, x->srv->host, x->last_error, up->resolve_interval_ms);
		}
	}
	return fatal;
}

void sp_names_set_health(sp_names_t *n, sp_health_t *h)
{
	n->health = h;
}

int sp_names_pollfds(const sp_names_t *n, struct pollfd *pfds, int max)
{
	return n->res ? sp_resolver_pollfds(n->res, pfds, max) : 0;
}

int sp_names_timeout(const sp_names_t *n)
{
	if (!n->res)
		return -1;
	int t = sp_resolver_timeout(n->res);
	uint64_t now = mono_ms();
	for (size_t i = 0; i < n->n; i++) {
		const name_t *x = &n->names[i];
		if (x->inflight || !x->due)
			continue;
		int d = x->due <= now ? 0 : (int)(x->due - now);
		if (t < 0 || d < t)
			t = d;
	}
	return t;
}

void sp_names_run(sp_names_t *n, const struct pollfd *pfds, int npfd)
{
	if (!n->res)
		return;
	sp_resolver_process(n->res, pfds, npfd);
	uint64_t now = mono_ms();
	for (size_t i = 0; i < n->n; i++) {
		name_t *x = &n->names[i];
		if (!x->inflight && x->due && x->due <= now)
			lookup(x);
	}
}

void sp_names_wait(sp_names_t *n, int timeout_ms)
{
	uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
	while (n->res && !sp_names_settled(n) && mono_ms() < deadline) {
		struct pollfd pfd[32];
		int np = sp_resolver_pollfds(n->res, pfd, 32);
		int t = sp_resolver_timeout(n->res);
		if (t < 0 || t > 100)
			t = 100;
		poll(pfd, (nfds_t)np, t);
		sp_resolver_process(n->res, pfd, np);
	}
}

bool sp_names_stats(const sp_names_t *n, size_t upstream, sp_names_stats_t *st)
{
	bool any = false;
	memset(st, 0, sizeof(*st));
	for (size_t i = 0; n && i < n->n; i++) {
		const name_t *x = &n->names[i];
		if (x->upstream != upstream)
			continue;
		any = true;
		st->lookups += x->lookups;
		st->failures += x->failures;
		if (x->last_error[0])
			st->last_error = x->last_error;
	}
	return any;
}

size_t sp_names_resolve_now(sp_names_t *n, sp_conf_errors_t *errs)
{
	sp_names_start(n);
	/* Every name is asked at once; the resolver's own retries bound this. */
	sp_names_wait(n, SP_NAMES_START_WAIT_MS);
	return sp_names_first_errors(n, NULL, errs);
}
