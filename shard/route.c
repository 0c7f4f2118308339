/* route: first-match routing over source CIDRs and TLS server names. */
#include "shard/route.h"

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
	return -1;
}

bool sp_route_needs_sni(const sp_listener_t *l)
{
	for (size_t i = 0; i < l->nroutes; i++)
		if (l->routes[i].nsni)
			return true;
	return false;
}
