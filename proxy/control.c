/* control: parse an operator's write, check all of it, then apply it (see
 * control.h). A request is either applied whole or refused with a reason
 * and nothing changed: every check happens before the first store.
 *
 *   curl --unix-socket /run/shardproxy/admin.sock -X POST \
 *        http://localhost/servers/web/127.0.0.1:9000/drain */
#include "proxy/json_out.h"
#include "proxy/control.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/health.h"

static const char *const admin_names[] = {"enabled", "draining", "disabled"};

const char *sp_control_admin_name(unsigned admin)
{
	return admin < sizeof(admin_names) / sizeof(admin_names[0]) ? admin_names[admin] : "?";
}

void sp_control_addr_text(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN] = "?";
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(s4->sin_port));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(s6->sin6_port));
	} else {
		snprintf(buf, len, "none");
	}
}

void sp_control_init(const sp_conf_t *conf, sp_server_ctl_t *ctl)
{
	for (size_t u = 0; u < conf->nupstreams; u++) {
		const sp_upstream_t *up = &conf->upstreams[u];
		uint32_t base = sp_health_index(conf, u);
		for (size_t k = 0; k < up->nservers; k++) {
			sp_server_ctl_t *c = &ctl[base + k];
			memset(c, 0, sizeof(*c));
			c->admin = SP_SRV_ENABLED;
			c->weight = (uint16_t)up->servers[k].weight;
			if (!up->servers[k].dns)
				sp_server_ctl_set_addr(c, &up->servers[k].addr.ss, up->servers[k].addr.len);
		}
	}
}

/* One path segment, %XX decoded ("[::1]:80" may come as "%5B::1%5D:80"). */
static int segment(const char **p, char *out, size_t len)
{
	size_t n = 0;
	const char *s = *p;
	while (*s && *s != '/') {
		char ch = *s++;
		if (ch == '%') {
			char hex[3] = {s[0], s[0] ? s[1] : 0, 0};
			char *end;
			long v = strtol(hex, &end, 16);
			if (!hex[0] || !hex[1] || *end || v <= 0)
				return -EINVAL;
			ch = (char)v;
			s += 2;
		}
		if (n + 1 >= len)
			return -ENAMETOOLONG;
		out[n++] = ch;
	}
	out[n] = '\0';
	*p = *s == '/' ? s + 1 : s;
	return n ? 0 : -EINVAL;
}

/* Which servers of up the operator named; true if any. */
static bool select_servers(const sp_upstream_t *up, const sp_server_ctl_t *ctl, const char *name,
			   bool *sel)
{
	bool any = false;
	size_t digits = strspn(name, "0123456789");
	long index = digits && !name[digits] && digits < 6 ? atol(name) : -1;
	for (size_t k = 0; k < up->nservers; k++) {
		const sp_server_t *srv = &up->servers[k];
		char resolved[64];
		bool match = (long)srv->origin == index || strcmp(srv->addr.text, name) == 0;
		if (!match && srv->dns && ctl[k].present) {
			sp_control_addr_text(&ctl[k].ss, resolved, sizeof(resolved));
			match = strcmp(resolved, name) == 0;
		}
		sel[k] = match;
		any |= match;
	}
	return any;
}


static int refuse(FILE *out, int status, const char *fmt, const char *arg)
{
	fprintf(out, fmt, arg ? arg : "");
	fputc('\n', out);
	return status;
}

int sp_control_request(const sp_conf_t *conf, sp_server_ctl_t *ctl, const char *method,
		       const char *path, FILE *out)
{
	char upname[SP_CONF_NAME_MAX + 1], srvname[160], action[16], arg[16];
	const char *p = path;
	static bool sel[SP_CONF_MAX_UPSTREAM_SERVERS];

	if (strncmp(p, "/servers/", 9) != 0)
		return refuse(out, 404, "not found; writes are POST /servers/<upstream>/<server>/"
					"{drain,disable,enable,weight/<n>}%s", NULL);
	p += 9;
	if (strcmp(method, "POST") != 0)
		return refuse(out, 405, "use POST for /servers/...%s", NULL);
	if (segment(&p, upname, sizeof(upname)) < 0 || segment(&p, srvname, sizeof(srvname)) < 0 ||
	    segment(&p, action, sizeof(action)) < 0)
		return refuse(out, 400, "expected /servers/<upstream>/<server>/<action>%s", NULL);
	unsigned weight = 0;
	uint8_t admin = SP_SRV_ENABLED;
	if (strcmp(action, "weight") == 0) {
		if (segment(&p, arg, sizeof(arg)) < 0)
			return refuse(out, 400, "expected /weight/<1..256>%s", NULL);
		size_t d = strspn(arg, "0123456789");
		long w = d && !arg[d] && d <= 3 ? atol(arg) : -1;
		if (w < 1 || w > 256)
			return refuse(out, 400,
				      "invalid weight \"%s\": expected 1 to 256 (to stop new "
				      "connections, drain the server)",
				      arg);
		weight = (unsigned)w;
	} else if (strcmp(action, "drain") == 0) {
		admin = SP_SRV_DRAINING;
	} else if (strcmp(action, "disable") == 0) {
		admin = SP_SRV_DISABLED;
	} else if (strcmp(action, "enable") != 0) {
		return refuse(out, 400,
			      "unknown action \"%s\": expected drain, disable, enable or weight/<n>",
			      action);
	}
	if (*p)
		return refuse(out, 400, "unexpected \"%s\" after the action", p);
	int u = sp_conf_upstream_index(conf, upname);
	if (u < 0)
		return refuse(out, 404, "no upstream \"%s\"", upname);
	const sp_upstream_t *up = &conf->upstreams[u];
	sp_server_ctl_t *uc = ctl + sp_health_index(conf, (size_t)u);
	if (!select_servers(up, uc, srvname, sel))
		return refuse(out, 404,
			      "no such server in this upstream: \"%s\" (use its index in "
			      "\"servers\", its address as written, or a resolved address)",
			      srvname);

	/* Checked; now applied. */
	fprintf(out, "{\"upstream\":");
	sp_json_string(out, up->name);
	fprintf(out, ",\"servers\":[");
	bool first = true;
	for (size_t k = 0; k < up->nservers; k++) {
		if (!sel[k])
			continue;
		if (weight)
			__atomic_store_n(&uc[k].weight, (uint16_t)weight, __ATOMIC_RELAXED);
		else
			__atomic_store_n(&uc[k].admin, admin, __ATOMIC_RELAXED);
		if (up->servers[k].dns && !uc[k].present)
			continue; /* an empty slot of a name: nothing to show */
		fprintf(out, "%s{\"index\":%u,\"address\":", first ? "" : ",", up->servers[k].origin);
		sp_json_string(out, up->servers[k].addr.text);
		if (up->servers[k].dns) {
			char resolved[64];
			sp_control_addr_text(&uc[k].ss, resolved, sizeof(resolved));
			fprintf(out, ",\"resolved\":");
			sp_json_string(out, resolved);
		}
		fprintf(out, ",\"admin\":\"%s\",\"weight\":%u}", sp_control_admin_name(uc[k].admin),
			uc[k].weight);
		first = false;
	}
	fprintf(out, "]}\n");
	return 200;
}
