/* render: the admin endpoint's pages. /stats (JSON) and /metrics
 * (Prometheus text exposition 0.0.4) are written from the same tables of
 * metrics below: a counter is declared once, with its JSON key and its
 * Prometheus family, so the two pages cannot disagree on what exists.
 * Rendering walks a view built beforehand (stats.h): it looks rows up, it
 * never inserts one, and it allocates nothing but the page itself. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "proxy/json_out.h"
#include "proxy/control.h"
#include "proxy/sup_internal.h"
#include "proxy/version.h"

/* One counter or gauge of a row (a slot, a listener, a server). */
typedef struct {
	const char *json;  /* key in /stats */
	const char *prom;  /* family in /metrics, after "shardproxy_" */
	const char *type;  /* "counter" or "gauge" */
	const char *help;  /* NULL: another sample of the family of the entry before */
	const char *label; /* this entry's own label in /metrics ("direction=..."), or NULL */
	size_t off;	   /* of the uint64_t in the row */
	bool by_end;	   /* an array by session end reason (sp_shard_end_name) */
} metric_t;

#define DIR_IN "direction=\"client_to_upstream\""
#define DIR_OUT "direction=\"upstream_to_client\""

/* An entry for the uint64_t field f of a row of type row_t. */
#define METRIC(row_t, j, p, t, h, l, f)                                                            \
	{                                                                                          \
		j, p, t, h, l, offsetof(row_t, f), false                                           \
	}

#define SLOT(...) METRIC(sp_slot_totals_t, __VA_ARGS__)
static const metric_t slot_metrics[] = {
    SLOT("accepted", "connections_accepted_total", "counter", "Client connections accepted.", NULL,
	 accepted),
    SLOT("active", "connections_active", "gauge", "Client connections open now.", NULL, active),
    SLOT("refused", "connections_refused_total", "counter",
	 "Client connections closed at once because the shard was at its connection limit.", NULL,
	 refused),
    SLOT("no_route", "connections_unrouted_total", "counter",
	 "Client connections closed because no route matched.", NULL, no_route),
    SLOT("connect_failed", "connections_connect_failed_total", "counter",
	 "Client connections closed because no upstream server could be connected.", NULL,
	 connect_failed),
    SLOT("bytes_in", "bytes_total", "counter",
	 "Bytes relayed, by direction (client_to_upstream, upstream_to_client).", DIR_IN, bytes_in),
    SLOT("bytes_out", "bytes_total", "counter", NULL, DIR_OUT, bytes_out),
    SLOT("log_dropped", "access_log_dropped_total", "counter",
	 "Access log lines lost because the log could not keep up.", NULL, log_dropped),
    {"closed", "sessions_closed_total", "counter", "Finished sessions, by how they ended.", NULL,
     offsetof(sp_slot_totals_t, closed), true},
};

#define LST(...) METRIC(sp_listener_stats_t, __VA_ARGS__)
static const metric_t listener_metrics[] = {
    LST("accepted", "listener_connections_accepted_total", "counter",
	"Client connections accepted, by listener.", NULL, accepted),
    LST("active", "listener_connections_active", "gauge",
	"Client connections open now, by listener.", NULL, active),
    LST("refused", "listener_connections_refused_total", "counter",
	"Client connections refused at the connection limit, by listener.", NULL, refused),
    LST("no_route", "listener_connections_unrouted_total", "counter",
	"Client connections no route matched, by listener.", NULL, no_route),
    LST("bytes_in", "listener_bytes_total", "counter",
	"Bytes relayed by finished sessions, by listener and direction.", DIR_IN, bytes_in),
    LST("bytes_out", "listener_bytes_total", "counter", NULL, DIR_OUT, bytes_out),
};

#define SRV(...) METRIC(sp_server_stats_t, __VA_ARGS__)
static const metric_t server_metrics[] = {
    SRV("connect_attempts", "server_connect_attempts_total", "counter",
	"Connects started to an upstream server.", NULL, attempts),
    SRV("connect_failures", "server_connect_failures_total", "counter",
	"Connects to an upstream server that failed (refused, unreachable, reset).", NULL,
	failures),
    SRV("connect_timeouts", "server_connect_timeouts_total", "counter",
	"Connects to an upstream server that took longer than connect_timeout_ms.", NULL, timeouts),
    SRV("connected", "server_sessions_total", "counter", "Sessions relayed to an upstream server.",
	NULL, connected),
    SRV("active", "server_connections_active", "gauge",
	"Relayed sessions open now to an upstream server.", NULL, active),
    SRV("bytes_in", "server_bytes_total", "counter",
	"Bytes relayed by finished sessions, by upstream server and direction.", DIR_IN, bytes_in),
    SRV("bytes_out", "server_bytes_total", "counter", NULL, DIR_OUT, bytes_out),
};

/* An upstream's host-name look-ups (upstreams with names only). */
#define DNS(...) METRIC(sp_names_stats_t, __VA_ARGS__)
static const metric_t dns_metrics[] = {
    DNS("lookups", "dns_lookups_total", "counter",
	"Look-ups of an upstream's server host names, failed ones included.", NULL, lookups),
    DNS("failures", "dns_failures_total", "counter",
	"Failed look-ups of an upstream's server host names (the last good addresses stayed in "
	"force).",
	NULL, failures),
};

#define NMETRICS(t) (sizeof(t) / sizeof((t)[0]))

static uint64_t metric_value(const void *row, const metric_t *m, unsigned idx)
{
	return ((const uint64_t *)((const char *)row + m->off))[idx];
}

/* ---- JSON ------------------------------------------------------------------------ */

/* A row's metrics as JSON members, each preceded by a comma unless first. */
static void json_metrics(FILE *f, const metric_t *ms, size_t n, const void *row, bool first)
{
	for (size_t m = 0; m < n; m++) {
		fprintf(f, "%s\"%s\":", first && m == 0 ? "" : ",", ms[m].json);
		if (!ms[m].by_end) {
			fprintf(f, "%llu", (unsigned long long)metric_value(row, &ms[m], 0));
			continue;
		}
		fputc('{', f);
		for (unsigned r = 0; sp_shard_end_name(r); r++)
			fprintf(f, "%s\"%s\":%llu", r ? "," : "", sp_shard_end_name(r),
				(unsigned long long)metric_value(row, &ms[m], r));
		fputc('}', f);
	}
}

const char *sp_relay_engine(const sp_conf_t *conf)
{
	/* auto is a policy over the two engines (shard.c, relay_copy.c). */
	if (conf->relay == SP_RELAY_AUTO)
		return "auto (copy, splice for bulk)";
	return sp_conf_relay_name(conf->relay);
}

/* Health verdict of server k of upstream u in the current generation. */
static const char *server_state(const sp_sup_t *sup, size_t u, size_t k, uint32_t *fails)
{
	const sp_conf_t *conf = sup->cur->conf;
	uint32_t hi = conf->upstreams[u].first_server + (uint32_t)k;
	size_t hoff = sp_gen_half(sup, sup->cur) * SP_HEALTH_MAX_SERVERS;
	*fails = hi < SP_HEALTH_MAX_SERVERS ? sup->server_fails[hoff + hi] : 0;
	if (!conf->upstreams[u].health_check.enabled)
		return "unchecked";
	return hi < SP_HEALTH_MAX_SERVERS && sup->server_down[hoff + hi] ? "down" : "up";
}

static const char *const proc_state_names[] = {"down", "starting", "ready", "draining"};

static void render_stats(const sp_sup_t *sup, FILE *f, const sp_stats_view_t *v)
{
	const sp_conf_t *conf = sup->cur->conf;
	bool first = true;

	fprintf(
	    f, "{\"pid\":%d,\"version\":\"%s\",\"generation\":%u,\"state\":\"%s\",\"started\":%lld,\"uptime_s\":%lld,",
	    (int)getpid(), sp_version, sup->serving_gen, sp_sup_draining(sup) ? "draining" : "serving",
	    (long long)sup->started, (long long)(time(NULL) - sup->started));
	fprintf(f, "\"io\":{\"configured\":\"%s\",\"backend\":\"%s\"},",
		sp_conf_io_name(conf->io), sp_loop_backend_name(sup->cur->io));
	fprintf(f, "\"relay\":{\"configured\":\"%s\",\"engine\":\"%s\"},",
		sp_conf_relay_name(conf->relay), sp_relay_engine(conf));
	fprintf(f, "\"steering\":{\"configured\":\"%s\",\"in_force\":\"%s\",\"bpf\":%s},",
		sp_conf_steering_name(conf->steering), sp_steering_in_force(sup),
		sup->steer ? "true" : "false");
	fprintf(f, "\"user\":");
	if (conf->user.set)
		sp_json_string(f, conf->user.name);
	else
		fputs("null", f);
	fprintf(f, ",\"shard_restarts\":%llu,\"shards\":[", (unsigned long long)sup->restarts);
	for (int k = 0; k < 2; k++) {
		const sp_gen_t *g = k == 0 ? sup->cur : sup->old;
		for (unsigned i = 0; g && i < g->nslots; i++) {
			sp_slot_totals_t one = {0};
			sp_stats_totals_add(&one, &sp_gen_stats(sup, g)[i], true);
			fprintf(f, "%s{\"slot\":%u,\"generation\":%u,\"pid\":%d,\"state\":\"%s\",",
				first ? "" : ",", i, g->id, (int)g->procs[i].pid,
				proc_state_names[g->procs[i].state]);
			json_metrics(f, slot_metrics, NMETRICS(slot_metrics), &one, true);
			fputc('}', f);
			first = false;
		}
	}
	fprintf(f, "],\"slots\":[");
	for (unsigned i = 0; i < v->nslots; i++) {
		fprintf(f, "%s{\"slot\":%u,", i ? "," : "", i);
		json_metrics(f, slot_metrics, NMETRICS(slot_metrics), &v->per_slot[i], true);
		fputc('}', f);
	}
	fprintf(f, "],\"totals\":{");
	json_metrics(f, slot_metrics, NMETRICS(slot_metrics), &v->total, true);
	fprintf(f, "},\"reloads\":{\"count\":%llu,\"ok\":%llu,\"failed\":%llu,\"last\":",
		(unsigned long long)(sup->reloads_ok + sup->reloads_failed),
		(unsigned long long)sup->reloads_ok, (unsigned long long)sup->reloads_failed);
	if (!sup->last_reload) {
		fprintf(f, "null");
	} else {
		fprintf(f,
			"{\"time\":%lld,\"result\":\"%s\",\"error\":", (long long)sup->last_reload,
			sup->last_reload_ok ? "ok" : "failed");
		if (sup->last_reload_ok)
			fputs("null", f);
		else
			sp_json_string(f, sup->last_reload_error);
		fputc('}', f);
	}
	fprintf(f, "},\"listeners\":[");
	for (size_t i = 0; i < v->t.nl; i++) {
		const sp_lrow_t *r = &v->t.l[i];
		int l = sp_conf_listener_index(conf, r->name);
		fprintf(f, "%s{\"name\":", i ? "," : "");
		sp_json_string(f, r->name);
		fprintf(f, ",\"listen\":");
		if (l >= 0)
			sp_json_string(f, conf->listeners[l].listen.text);
		else
			fputs("null", f); /* removed by a reload; its counts stay */
		json_metrics(f, listener_metrics, NMETRICS(listener_metrics), &r->st, false);
		fputc('}', f);
	}
	fprintf(f, "],\"upstreams\":[");
	for (size_t u = 0; u < conf->nupstreams; u++) {
		const sp_upstream_t *up = &conf->upstreams[u];
		fprintf(f, "%s{\"name\":", u ? "," : "");
		sp_json_string(f, up->name);
		fprintf(f, ",\"balance\":\"%s\",", sp_conf_balance_name(up->balance));
		sp_names_stats_t ns;
		if (sp_names_stats(sup->cur->names, u, &ns)) {
			fprintf(f, "\"dns\":{\"resolve_interval_ms\":%u", up->resolve_interval_ms);
			json_metrics(f, dns_metrics, NMETRICS(dns_metrics), &ns, false);
			fputs(",\"last_error\":", f);
			if (ns.last_error)
				sp_json_string(f, ns.last_error);
			else
				fputs("null", f);
			fputs("},", f);
		}
		fputs("\"servers\":[", f);
		const sp_server_ctl_t *uctl = sp_gen_ctl(sup, sup->cur) + up->first_server;
		for (size_t k = 0; k < up->nservers; k++) {
			const sp_server_t *srv = &up->servers[k];
			uint32_t fails;
			if (srv->dns && srv->dns_slot)
				continue; /* a name is one entry; its addresses are listed in it */
			const char *state = server_state(sup, u, k, &fails);
			const sp_srow_t *r = sp_stats_find_server(&v->t, up->name, srv->addr.text);
			fprintf(f, "%s{\"address\":", k ? "," : "");
			sp_json_string(f, srv->addr.text);
			fprintf(f,
				",\"weight\":%u,\"configured_weight\":%u,\"admin\":\"%s\",\"backup\":%s,"
				"\"state\":\"%s\",\"failures\":%u",
				uctl[k].weight, srv->weight, sp_control_admin_name(uctl[k].admin),
				srv->backup ? "true" : "false", state, fails);
			if (srv->dns) {
				/* One server per address: each with its own control and health. */
				fputs(",\"resolved\":[", f);
				bool first_addr = true;
				for (size_t j = k; j < up->nservers && up->servers[j].origin == srv->origin;
				     j++) {
					char text[64];
					uint32_t jf = 0;
					if (!uctl[j].present)
						continue;
					sp_control_addr_text(&uctl[j].ss, text, sizeof(text));
					fprintf(f, "%s{\"address\":\"%s\",\"weight\":%u,\"admin\":\"%s\","
						   "\"state\":\"%s\",\"failures\":%u}",
						first_addr ? "" : ",", text, uctl[j].weight,
						sp_control_admin_name(uctl[j].admin),
						server_state(sup, u, j, &jf), jf);
					first_addr = false;
				}
				fputc(']', f);
			}
			if (r) {
				json_metrics(f, server_metrics, NMETRICS(server_metrics), &r->st,
					     false);
				fputs(",\"last_failure\":", f);
				if (r->st.last_fail)
					fprintf(f, "{\"time\":%llu,\"error\":\"%s\"}",
						(unsigned long long)(r->st.last_fail >> 16),
						strerror((int)(r->st.last_fail & 0xffff)));
				else
					fputs("null", f);
			}
			fputc('}', f);
		}
		fprintf(f, "]}");
	}
	fprintf(f, "]}\n");
}

/* ---- Prometheus ------------------------------------------------------------------ */

static void prom_family(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP shardproxy_%s %s\n# TYPE shardproxy_%s %s\n", name, help, name, type);
}

static void prom_label(FILE *f, const char *k, const char *v, bool more)
{
	fprintf(f, "%s=\"", k);
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			fprintf(f, "\\%c", *v);
		else if (*v == '\n')
			fputs("\\n", f);
		else
			fputc(*v, f);
	}
	fprintf(f, "\"%s", more ? "," : "");
}

/* Where a row computed while rendering is kept (no allocation). */
typedef union {
	sp_names_stats_t names;
} row_scratch_t;

/* The labels naming row i of a table (without braces), and the row itself:
 * NULL for a row with nothing to show. ctx is what the table is read from
 * (the view, or the supervisor). */
typedef void (*row_labels_fn)(FILE *f, const void *ctx, size_t i);
typedef const void *(*row_fn)(const void *ctx, size_t i, row_scratch_t *scratch);

static void slot_labels(FILE *f, const void *ctx, size_t i)
{
	(void)ctx;
	fprintf(f, "shard=\"%zu\"", i);
}
static const void *slot_row(const void *ctx, size_t i, row_scratch_t *scratch)
{
	(void)scratch;
	return &((const sp_stats_view_t *)ctx)->per_slot[i];
}
static void listener_labels(FILE *f, const void *ctx, size_t i)
{
	prom_label(f, "listener", ((const sp_stats_view_t *)ctx)->t.l[i].name, false);
}
static const void *listener_row(const void *ctx, size_t i, row_scratch_t *scratch)
{
	(void)scratch;
	return &((const sp_stats_view_t *)ctx)->t.l[i].st;
}
static void server_labels(FILE *f, const void *ctx, size_t i)
{
	const sp_stats_view_t *v = ctx;
	prom_label(f, "upstream", v->t.s[i].upstream, true);
	prom_label(f, "server", v->t.s[i].server, false);
}
static const void *server_row(const void *ctx, size_t i, row_scratch_t *scratch)
{
	(void)scratch;
	return &((const sp_stats_view_t *)ctx)->t.s[i].st;
}
static void dns_labels(FILE *f, const void *ctx, size_t u)
{
	prom_label(f, "upstream", ((const sp_sup_t *)ctx)->cur->conf->upstreams[u].name, false);
}
static const void *dns_row(const void *ctx, size_t u, row_scratch_t *scratch)
{
	const sp_sup_t *sup = ctx;
	return sp_names_stats(sup->cur->names, u, &scratch->names) ? &scratch->names : NULL;
}

/* Every family of a table: its HELP and TYPE once, then for each row the
 * samples of the family's entries (a family spans an entry and the ones
 * after it without help, e.g. both directions of bytes). */
static void prom_table(FILE *f, const metric_t *ms, size_t n, const void *ctx, size_t nrows,
		       row_labels_fn labels, row_fn row)
{
	row_scratch_t scratch;
	for (size_t m = 0; m < n;) {
		size_t end = m + 1;
		while (end < n && !ms[end].help)
			end++;
		prom_family(f, ms[m].prom, ms[m].type, ms[m].help);
		for (size_t i = 0; i < nrows; i++) {
			const void *r = row(ctx, i, &scratch);
			for (size_t e = m; r && e < end; e++) {
				unsigned nval = 1;
				if (ms[e].by_end)
					while (sp_shard_end_name(nval))
						nval++;
				for (unsigned k = 0; k < nval; k++) {
					fprintf(f, "shardproxy_%s{", ms[e].prom);
					labels(f, ctx, i);
					if (ms[e].label)
						fprintf(f, ",%s", ms[e].label);
					if (ms[e].by_end)
						fprintf(f, ",reason=\"%s\"", sp_shard_end_name(k));
					fprintf(f, "} %llu\n",
						(unsigned long long)metric_value(r, &ms[e], k));
				}
			}
		}
		m = end;
	}
}

static const sp_server_ctl_t *ctl_of(const sp_sup_t *sup, size_t u, size_t k)
{
	return &sp_gen_ctl(sup, sup->cur)[sup->cur->conf->upstreams[u].first_server + k];
}

/* "shardproxy_NAME{upstream=...,server=..." for server k of upstream u, plus
 * address=... for a host name's address; false (nothing written) for a
 * name's empty slot. The caller closes the braces. */
static bool server_labels_k(const sp_sup_t *sup, FILE *f, const char *name, size_t u, size_t k)
{
	const sp_upstream_t *up = &sup->cur->conf->upstreams[u];
	const sp_server_ctl_t *c = ctl_of(sup, u, k);
	if (up->servers[k].dns && !c->present)
		return false;
	fprintf(f, "shardproxy_%s{", name);
	prom_label(f, "upstream", up->name, true);
	prom_label(f, "server", up->servers[k].addr.text, up->servers[k].dns);
	if (up->servers[k].dns) {
		char text[64];
		sp_control_addr_text(&c->ss, text, sizeof(text));
		prom_label(f, "address", text, false);
	}
	return true;
}

static void render_metrics(const sp_sup_t *sup, FILE *f, const sp_stats_view_t *v)
{
	const sp_conf_t *conf = sup->cur->conf;

	prom_family(f, "info", "gauge",
		    "Constant 1, labelled with the event loop, relay engine and steering in force.");
	fprintf(f,
		"shardproxy_info{io=\"%s\",relay=\"%s\",steering=\"%s\",steering_configured=\"%s\","
		"bpf=\"%s\"} 1\n",
		sp_loop_backend_name(sup->cur->io), sp_relay_engine(conf), sp_steering_in_force(sup),
		sp_conf_steering_name(conf->steering), sup->steer ? "true" : "false");
	prom_family(f, "start_time_seconds", "gauge", "Unix time the supervisor started.");
	fprintf(f, "shardproxy_start_time_seconds %lld\n", (long long)sup->started);
	prom_family(f, "generation", "gauge", "Configuration generation being served.");
	fprintf(f, "shardproxy_generation %u\n", sup->serving_gen);
	prom_family(f, "draining", "gauge", "1 while the proxy is stopping and draining.");
	fprintf(f, "shardproxy_draining %d\n", sp_sup_draining(sup) ? 1 : 0);
	prom_family(f, "shards_ready", "gauge", "Shards of the current generation ready.");
	fprintf(f, "shardproxy_shards_ready %u\n", sp_gen_count(sup->cur, PROC_READY));
	prom_family(f, "shard_restarts_total", "counter", "Shards restarted after dying.");
	fprintf(f, "shardproxy_shard_restarts_total %llu\n", (unsigned long long)sup->restarts);
	prom_family(f, "reloads_total", "counter", "Configuration reloads, by result.");
	fprintf(f,
		"shardproxy_reloads_total{result=\"ok\"} %llu\n"
		"shardproxy_reloads_total{result=\"failed\"} %llu\n",
		(unsigned long long)sup->reloads_ok, (unsigned long long)sup->reloads_failed);
	prom_family(f, "last_reload_success", "gauge",
		    "1 if the last reload succeeded (or none happened), 0 if it failed.");
	fprintf(f, "shardproxy_last_reload_success %d\n",
		!sup->last_reload || sup->last_reload_ok ? 1 : 0);
	prom_family(f, "last_reload_time_seconds", "gauge",
		    "Unix time of the last reload attempt (0: none).");
	fprintf(f, "shardproxy_last_reload_time_seconds %lld\n", (long long)sup->last_reload);

	prom_table(f, slot_metrics, NMETRICS(slot_metrics), v, v->nslots, slot_labels, slot_row);
	prom_table(f, listener_metrics, NMETRICS(listener_metrics), v, v->t.nl, listener_labels,
		   listener_row);
	prom_table(f, server_metrics, NMETRICS(server_metrics), v, v->t.ns, server_labels,
		   server_row);

	prom_family(f, "server_up", "gauge",
		    "1 if an upstream server of the current configuration is up (or not health "
		    "checked), 0 if health checks marked it down; a host name's addresses by the "
		    "address label.");
	for (size_t u = 0; u < conf->nupstreams; u++)
		for (size_t k = 0; k < conf->upstreams[u].nservers; k++) {
			uint32_t fails;
			const char *state = server_state(sup, u, k, &fails);
			if (!server_labels_k(sup, f, "server_up", u, k))
				continue;
			fprintf(f, "} %d\n", strcmp(state, "down") != 0);
		}
	prom_family(f, "server_weight", "gauge",
		    "Weight in force: the file's, or the one set on admin.socket.");
	for (size_t u = 0; u < conf->nupstreams; u++)
		for (size_t k = 0; k < conf->upstreams[u].nservers; k++)
			if (server_labels_k(sup, f, "server_weight", u, k))
				fprintf(f, "} %u\n", ctl_of(sup, u, k)->weight);
	prom_family(f, "server_admin_state", "gauge",
		    "1 for the server's state set on admin.socket (enabled, draining, disabled).");
	for (size_t u = 0; u < conf->nupstreams; u++)
		for (size_t k = 0; k < conf->upstreams[u].nservers; k++)
			for (unsigned a = SP_SRV_ENABLED; a <= SP_SRV_DISABLED; a++) {
				if (!server_labels_k(sup, f, "server_admin_state", u, k))
					break;
				fprintf(f, ",state=\"%s\"} %d\n", sp_control_admin_name(a),
					ctl_of(sup, u, k)->admin == a);
			}
	prom_table(f, dns_metrics, NMETRICS(dns_metrics), sup, conf->nupstreams, dns_labels,
		   dns_row);
}

/* ---- the admin callback ---------------------------------------------------------- */

static int build_view(const sp_sup_t *sup, sp_stats_view_t *v)
{
	sp_stats_gen_t gens[2];
	unsigned n = 0;
	/* Old first: its rows lead. */
	const sp_gen_t *order[2] = {sup->old, sup->cur};
	for (int k = 0; k < 2; k++)
		if (order[k])
			gens[n++] = (sp_stats_gen_t){.conf = order[k]->conf,
						     .slots = sp_gen_stats(sup, order[k]),
						     .nslots = order[k]->nslots};
	return sp_stats_view(v, &sup->retired, gens, n);
}

int sp_render(void *ctx, const char *method, const char *path, bool writable, char **body,
	      size_t *len, const char **ctype)
{
	const sp_sup_t *sup = ctx;
	static sp_stats_view_t v; /* large; the supervisor is single-threaded */
	int status = 200;
	FILE *f;

	/* Operator writes (admin.c lets them through from admin.socket only). */
	if (strcmp(method, "POST") == 0 || strncmp(path, "/servers/", 9) == 0) {
		if (!(f = open_memstream(body, len)))
			return 500;
		if (!writable && strcmp(method, "POST") != 0)
			fprintf(f, "server control is on admin.socket only (POST)\n"), status = 405;
		else
			status = sp_control_request(sup->cur->conf, sp_gen_ctl(sup, sup->cur), method,
						    path, f);
		if (status == 200)
			*ctype = "application/json";
		fclose(f);
		return status;
	}

	if (strcmp(path, "/stats") != 0 && strcmp(path, "/metrics") != 0 &&
	    strcmp(path, "/healthz") != 0 && strcmp(path, "/") != 0) {
		if (!(f = open_memstream(body, len)))
			return 500;
		fprintf(f, "not found; try /stats, /metrics or /healthz\n");
		fclose(f);
		return 404;
	}
	if (!(f = open_memstream(body, len)))
		return 500;
	if (strcmp(path, "/stats") == 0 || strcmp(path, "/metrics") == 0) {
		if (build_view(sup, &v) < 0) {
			fprintf(f, "out of memory\n");
			fclose(f);
			return 500;
		}
		if (path[1] == 's') {
			*ctype = "application/json";
			render_stats(sup, f, &v);
		} else {
			*ctype = "text/plain; version=0.0.4; charset=utf-8";
			render_metrics(sup, f, &v);
		}
		sp_stats_view_free(&v);
	} else if (strcmp(path, "/healthz") == 0) {
		unsigned ready = sp_gen_count(sup->cur, PROC_READY);
		status = ready && !sp_sup_draining(sup) ? 200 : 503;
		fprintf(f, "%s: %u of %u shards ready\n",
			sp_sup_draining(sup) ? "draining"
			: ready	      ? "ok"
				      : "unavailable",
			ready, sup->cur->nslots);
	} else {
		fprintf(f, "shardproxy admin: /stats (JSON), /metrics (Prometheus), /healthz\n");
	}
	fclose(f);
	return status;
}
