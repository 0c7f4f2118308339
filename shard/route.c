/* route: first-match routing over source CIDRs and TLS server names. The
 * matchers live here, not in conf/: routing is their only user. */
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <strings.h>

#include "shard/route.h"

bool sp_cidr_match(const sp_cidr_t *cidr, const struct sockaddr *addr)
{
	const uint8_t *a;
	int family = addr->sa_family;

	if (family == AF_INET) {
		a = (const uint8_t *)&((const struct sockaddr_in *)addr)->sin_addr;
	} else if (family == AF_INET6) {
		const struct in6_addr *in6 = &((const struct sockaddr_in6 *)addr)->sin6_addr;
		a = in6->s6_addr;
		if (IN6_IS_ADDR_V4MAPPED(in6)) {
			a += 12;
			family = AF_INET;
		}
	} else {
		return false;
	}
	if (family != cidr->family)
		return false;
	size_t full = cidr->prefix / 8;
	unsigned rest = cidr->prefix % 8;
	if (memcmp(a, cidr->addr, full) != 0)
		return false;
	return !rest || ((a[full] ^ cidr->addr[full]) & (0xFF << (8 - rest)) & 0xFF) == 0;
}

bool sp_sni_match(const char *pattern, const char *host)
{
	size_t hl = strlen(host);

	if (hl && host[hl - 1] == '.') /* a fully qualified name is the same host */
		hl--;
	if (strncmp(pattern, "*.", 2) != 0)
		return strlen(pattern) == hl && strncasecmp(pattern, host, hl) == 0;
	size_t sl = strlen(pattern + 1); /* ".suffix", dot included */
	return hl > sl && strncasecmp(host + hl - sl, pattern + 1, sl) == 0;
}

static bool match_source(const sp_route_t *r, const struct sockaddr *client)
{
	if (r->nsource == 0)
		return true;
	for (size_t i = 0; i < r->nsource; i++)
		if (sp_cidr_match(&r->source[i], client))
			return true;
	return false;
}

static bool match_sni(const sp_route_t *r, const char *sni)
{
	if (r->nsni == 0)
		return true;
	if (!sni)
		return false;
	for (size_t i = 0; i < r->nsni; i++)
		if (sp_sni_match(r->sni[i], sni))
			return true;
	return false;
}

int sp_route_pick(const sp_listener_t *l, const struct sockaddr *client, const char *sni)
{
	for (size_t i = 0; i < l->nroutes; i++)
		if (match_source(&l->routes[i], client) && match_sni(&l->routes[i], sni))
			return (int)i;
	return -ENOENT;
}

bool sp_route_needs_sni(const sp_listener_t *l)
{
	for (size_t i = 0; i < l->nroutes; i++)
		if (l->routes[i].nsni)
			return true;
	return false;
}
