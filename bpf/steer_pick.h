/* Slot selection, as pure functions shared by the BPF program and user space
 * (so cmocka tests the exact code the kernel runs): sp_steer_pick() reads a
 * precomputed picture of the slots; sp_steer_cfg_build() (user space) makes it. */
#ifndef SP_BPF_STEER_PICK_H
#define SP_BPF_STEER_PICK_H

#include "bpf/steer.h"

#define SP_STEER_INLINE static inline __attribute__((always_inline))

/* What one decision reads. In the program both point into map values. */
struct sp_steer_state {
	const struct sp_steer_cfg *cfg;
	const __u32 *load; /* SP_STEER_MAX_SLOTS counters, or NULL */
};

/* Every index is masked with a power of two minus one: the verifier needs
 * a visible bound, and a torn or garbage picture must never read out of
 * bounds. The empty asm hides the value's range from the compiler, which
 * would otherwise prove the mask redundant (hash % n < n <= 256) and drop
 * it, leaving the verifier (which cannot follow a modulo) without a bound. */
SP_STEER_INLINE __u32 sp_steer_bound(__u32 v, __u32 mask)
{
	__asm__ volatile("" : "+r"(v));
	return v & mask;
}

SP_STEER_INLINE int sp_steer_slot_ok(__u32 slot)
{
	return slot < SP_STEER_MAX_SLOTS ? (int)slot : -1;
}

/* Returns the slot for a new connection, or -1: "let the kernel choose".
 * hash: the flow hash (reuse_md->hash); cpu: the CPU handling the SYN. */
SP_STEER_INLINE int sp_steer_pick(__u32 policy, __u32 hash, __u32 cpu,
				  const struct sp_steer_state *st)
{
	const struct sp_steer_cfg *c = st->cfg;
	__u32 n = c->nlive;

	if (n == 0 || n > SP_STEER_MAX_SLOTS)
		return -1;

	if (policy == SP_STEER_POL_CPU && cpu < SP_STEER_MAX_CPUS) {
		cpu = sp_steer_bound(cpu, SP_STEER_MAX_CPUS - 1);
		__u32 k = c->cpu_n[cpu];
		/* Several shards may share a CPU (more workers than CPUs):
		 * spread over them by hash. None live here: hash below. */
		if (k != 0) {
			__u32 i =
			    sp_steer_bound(c->cpu_first[cpu] + hash % k, SP_STEER_MAX_SLOTS - 1);
			return sp_steer_slot_ok(c->cpu_slot[i]);
		}
	}

	if (policy == SP_STEER_POL_LEAST_CONN && n >= 2 && st->load) {
		/* Power of two choices: two distinct candidates from independent
		 * bits of the hash, the less loaded wins, ties go to the first
		 * (so an idle proxy still spreads by hash). */
		__u32 a = hash % n;
		__u32 b = (hash >> 16) % (n - 1);
		if (b >= a)
			b++;
		__u32 sa = c->live_slot[sp_steer_bound(a, SP_STEER_MAX_SLOTS - 1)];
		__u32 sb = c->live_slot[sp_steer_bound(b, SP_STEER_MAX_SLOTS - 1)];
		/* Signed: a counter reset that races a late decrement reads as
		 * -1 (lightly loaded), not as 4 billion (never picked again). */
		__s32 la = (__s32)st->load[sp_steer_bound(sa, SP_STEER_MAX_SLOTS - 1)];
		__s32 lb = (__s32)st->load[sp_steer_bound(sb, SP_STEER_MAX_SLOTS - 1)];
		return sp_steer_slot_ok(lb < la ? sb : sa);
	}

	/* hash (also cpu's fallback): over the live slots only. Not a
	 * consistent hash, and it needs not be: only new connections are
	 * steered, an established flow never moves. */
	return sp_steer_slot_ok(c->live_slot[sp_steer_bound(hash % n, SP_STEER_MAX_SLOTS - 1)]);
}

#ifndef __bpf__
#include <stdbool.h>
#include <string.h>

/* Build the picture for nslots slots: live[i] says slot i accepts,
 * cpu_of_slot[i] is the CPU its shard is pinned to (< 0 or NULL: none). */
static inline void sp_steer_cfg_build(struct sp_steer_cfg *c, __u32 policy, unsigned nslots,
				      const bool *live, const int *cpu_of_slot)
{
	memset(c, 0, sizeof(*c));
	if (nslots > SP_STEER_MAX_SLOTS)
		nslots = SP_STEER_MAX_SLOTS;
	c->policy = policy;
	c->nslots = nslots;
	for (unsigned i = 0; i < nslots; i++)
		if (live[i])
			c->live_slot[c->nlive++] = (__u16)i;
	if (!cpu_of_slot)
		return;

	/* Counting sort of the live slots by CPU: count, prefix sums, place
	 * (cpu_n doubles as the placement cursor and ends as the count). */
	for (unsigned k = 0; k < c->nlive; k++) {
		int cpu = cpu_of_slot[c->live_slot[k]];
		if (cpu >= 0 && cpu < SP_STEER_MAX_CPUS)
			c->cpu_n[cpu]++;
	}
	unsigned first = 0;
	for (unsigned cpu = 0; cpu < SP_STEER_MAX_CPUS; cpu++) {
		c->cpu_first[cpu] = (__u16)first;
		first += c->cpu_n[cpu];
		c->cpu_n[cpu] = 0;
	}
	for (unsigned k = 0; k < c->nlive; k++) {
		__u16 slot = c->live_slot[k];
		int cpu = cpu_of_slot[slot];
		if (cpu >= 0 && cpu < SP_STEER_MAX_CPUS)
			c->cpu_slot[c->cpu_first[cpu] + c->cpu_n[cpu]++] = slot;
	}
}
#endif /* !__bpf__ */

#endif
