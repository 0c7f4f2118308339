/* balance: round_robin (smooth weighted, as nginx), least_conn (weighted,
 * ties broken by smooth weighted round robin, as nginx), source_hash (weighted
 * rendezvous hashing keyed on each server's address as written) and
 * random_two (two weighted random candidates, the less loaded wins). */
#include "shard/balance.h"

#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

/* source_hash's identity of a server: its address as written, not its place
 * in the list, so a reload that removes or inserts a server moves only the
 * clients of that server. The same address listed twice counts as two. */
static uint64_t server_key(const sp_upstream_t *up, size_t i)
{
	const char *text = up->servers[i].addr.text;
	uint64_t dup = 0;
	for (size_t k = 0; k < i; k++)
		dup += strcmp(up->servers[k].addr.text, text) == 0;
	return mix64(fnv1a((const uint8_t *)text, strlen(text)) + dup * 0x9e3779b97f4a7c15ULL);
}

int sp_balancer_init(sp_balancer_t *b, const sp_upstream_t *up, uint64_t seed)
{
	memset(b, 0, sizeof(*b));
	b->up = up;
	b->current = calloc(up->nservers, sizeof(*b->current));
	b->active = calloc(up->nservers, sizeof(*b->active));
	b->key = calloc(up->nservers, sizeof(*b->key));
	if (!b->current || !b->active || !b->key) {
		sp_balancer_free(b);
		return -ENOMEM;
	}
	b->rng = seed | 1;
	for (size_t i = 0; i < up->nservers; i++)
		b->key[i] = server_key(up, i);
	return 0;
}

void sp_balancer_free(sp_balancer_t *b)
{
	free(b->current);
	free(b->active);
	free(b->key);
	memset(b, 0, sizeof(*b));
}

static uint64_t next_rand(sp_balancer_t *b)
{
	b->rng ^= b->rng << 13;
	b->rng ^= b->rng >> 7;
	b->rng ^= b->rng << 17;
	return b->rng;
}

uint64_t sp_hash_addr(const struct sockaddr *sa)
{
	const uint8_t *p;
	size_t n;

	if (sa->sa_family == AF_INET) {
		p = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
		n = 4;
	} else if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		p = a6->s6_addr;
		n = 16;
		if (IN6_IS_ADDR_V4MAPPED(a6)) { /* same client, same hash */
			p += 12;
			n = 4;
		}
	} else {
		return 0;
	}
	return mix64(fnv1a(p, n));
}

/* The weight in force: the operator's (admin.socket) or the file's. */
static uint32_t weight(const sp_balancer_t *b, unsigned i)
{
	if (b->ctl) {
		uint16_t w = __atomic_load_n(&b->ctl[i].weight, __ATOMIC_RELAXED);
		if (w)
			return w;
	}
	return b->up->servers[i].weight;
}

/* Eligible servers: in rotation, not excluded, and of the preferred class
 * (non-backup while any non-backup server is eligible). */
static bool eligible(const sp_balancer_t *b, unsigned i, const sp_server_set_t *ex, bool backup)
{
	if (sp_server_set_has(ex, i) || b->up->servers[i].backup != backup)
		return false;
	if (!b->ctl)
		return !b->up->servers[i].dns; /* an unresolved name has no address */
	return __atomic_load_n(&b->ctl[i].present, __ATOMIC_RELAXED) &&
	       __atomic_load_n(&b->ctl[i].admin, __ATOMIC_RELAXED) == SP_SRV_ENABLED;
}

static int pick_rr(sp_balancer_t *b, const sp_server_set_t *ex, bool backup)
{
	int best = -1;
	int64_t total = 0;
	for (unsigned i = 0; i < b->up->nservers; i++) {
		if (!eligible(b, i, ex, backup))
			continue;
		uint32_t w = weight(b, i);
		b->current[i] += w;
		total += w;
		if (best < 0 || b->current[i] > b->current[best])
			best = (int)i;
	}
	if (best >= 0)
		b->current[best] -= total;
	return best;
}

/* Lower load wins: active/weight compared without division. */
static bool lighter(const sp_balancer_t *b, unsigned x, unsigned y)
{
	return (uint64_t)b->active[x] * weight(b, y) < (uint64_t)b->active[y] * weight(b, x);
}

/* The least loaded (active/weight) eligible server; among equally loaded
 * ones, smooth weighted round robin, so that short connections, which leave
 * every server idle at each pick, still follow the weights (nginx does the
 * same). */
static int pick_least(sp_balancer_t *b, const sp_server_set_t *ex, bool backup)
{
	int least = -1, best = -1;
	int64_t total = 0;
	for (unsigned i = 0; i < b->up->nservers; i++)
		if (eligible(b, i, ex, backup) && (least < 0 || lighter(b, i, (unsigned)least)))
			least = (int)i;
	if (least < 0)
		return -1;
	for (unsigned i = 0; i < b->up->nservers; i++) {
		if (!eligible(b, i, ex, backup) || lighter(b, (unsigned)least, i))
			continue;
		uint32_t w = weight(b, i);
		b->current[i] += w;
		total += w;
		if (best < 0 || b->current[i] > b->current[best])
			best = (int)i;
	}
	b->current[best] -= total;
	return best;
}

/* Weighted rendezvous hashing: each server scores -ln(u)/weight for a uniform
 * u drawn from hash(client, server); the lowest score wins. Removing a server
 * only moves the clients it had; weights hold in proportion. */
static int pick_hash(sp_balancer_t *b, uint64_t client_hash, const sp_server_set_t *ex,
		     bool backup)
{
	int best = -1;
	double best_score = 0;
	for (unsigned i = 0; i < b->up->nservers; i++) {
		if (!eligible(b, i, ex, backup))
			continue;
		uint64_t h = mix64(client_hash ^ b->key[i]);
		double u = ((double)(h >> 11) + 0.5) / 9007199254740992.0; /* (0,1) */
		double score = -log(u) / weight(b, i);
		if (best < 0 || score < best_score) {
			best = (int)i;
			best_score = score;
		}
	}
	return best;
}

/* One of the n candidates, drawn with probability weight/total; skip (a
 * candidate already drawn, or -1) is left out, its weight not in total. */
static unsigned draw(sp_balancer_t *b, const unsigned *cand, unsigned n, uint64_t total, int skip)
{
	uint64_t r = next_rand(b) % total;
	unsigned last = cand[0];
	for (unsigned k = 0; k < n; k++) {
		if ((int)cand[k] == skip)
			continue;
		last = cand[k];
		uint32_t w = weight(b, cand[k]);
		if (r < w)
			return cand[k];
		r -= w;
	}
	return last;
}

/* Power of two choices: two distinct candidates drawn by weight, the lighter
 * by active/weight wins, the first drawn on a tie (so idle servers share by
 * weight). */
static int pick_two(sp_balancer_t *b, const sp_server_set_t *ex, bool backup)
{
	unsigned cand[SP_MAX_SERVERS], n = 0;
	uint64_t total = 0;
	for (unsigned i = 0; i < b->up->nservers; i++)
		if (eligible(b, i, ex, backup)) {
			cand[n++] = i;
			total += weight(b, i);
		}
	if (n == 0)
		return -1;
	unsigned x = draw(b, cand, n, total, -1);
	if (n == 1)
		return (int)x;
	unsigned y = draw(b, cand, n, total - weight(b, x), (int)x);
	return (int)(lighter(b, y, x) ? y : x);
}

static int pick_class(sp_balancer_t *b, uint64_t client_hash, const sp_server_set_t *ex,
		      bool backup)
{
	switch (b->up->balance) {
	case SP_BALANCE_LEAST_CONN:
		return pick_least(b, ex, backup);
	case SP_BALANCE_SOURCE_HASH:
		return pick_hash(b, client_hash, ex, backup);
	case SP_BALANCE_RANDOM_TWO:
		return pick_two(b, ex, backup);
	case SP_BALANCE_ROUND_ROBIN:
	default:
		return pick_rr(b, ex, backup);
	}
}

int sp_balancer_pick(sp_balancer_t *b, uint64_t client_hash, const sp_server_set_t *exclude)
{
	int i = pick_class(b, client_hash, exclude, false);
	if (i < 0)
		i = pick_class(b, client_hash, exclude, true);
	return i >= 0 ? i : -ENOENT;
}

void sp_balancer_connected(sp_balancer_t *b, unsigned server)
{
	b->active[server]++;
}

void sp_balancer_released(sp_balancer_t *b, unsigned server)
{
	if (b->active[server])
		b->active[server]--;
}
