/* The sk_reuseport program: for each new connection (or one migrating off a
 * closing listener) pick the shard slot whose socket gets it, by the policy
 * in sp_cfg; anything unexpected returns SK_PASS and the kernel chooses.
 *
 * Multiple listener groups: one loaded instance of this object per group.
 * A REUSEPORT_SOCKARRAY entry only works for its own reuseport group, and a
 * socket can sit in one such array only, so each group gets its own
 * sp_socks (slot -> socket) and its own program bound to it; sp_cfg and
 * sp_load are created once and shared by every instance (bpf_map__reuse_fd).
 * The alternative, one array indexed by group*MAX_SLOTS+slot, would need
 * the group from md->sk (5.14+, the same kernels that have migrate), so the
 * plain fallback for older kernels could not use it; an instance per group
 * also costs no map lookup per SYN to find the group. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "bpf/steer.h"
#include "bpf/steer_pick.h"

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, SP_STEER_MAX_SLOTS); /* the loader sets max_slots */
	__type(key, __u32);
	__type(value, __u64); /* 8 bytes: user-space lookups return the socket cookie */
} sp_socks SEC(".maps");

/* Config in a map, not .rodata: a reload changes nslots, liveness changes
 * whenever a shard starts or dies, and none of it may need a program reload
 * (which would also mean re-attaching every group). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sp_steer_cfg_map);
} sp_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sp_steer_load);
} sp_load SEC(".maps");

static __always_inline int sp_steer(struct sk_reuseport_md *md, int migrating)
{
	__u32 zero = 0;
	struct sp_steer_cfg_map *m = bpf_map_lookup_elem(&sp_cfg, &zero);
	struct sp_steer_load *load = bpf_map_lookup_elem(&sp_load, &zero);
	if (!m || !load)
		return SK_PASS;

	/* The supervisor fills the spare copy before it flips cur (x86 keeps
	 * stores in order; a volatile read keeps clang from re-reading it). */
	__u32 cur = *(volatile __u32 *)&m->cur & 1;
	struct sp_steer_state st = {.cfg = &m->cfg[cur], .load = load->n};
	__u32 policy = st.cfg->policy;

	/* A migrating request runs on the CPU that closes the listener, which
	 * says nothing about the flow: use the hash instead of cpu. */
	if (migrating && policy == SP_STEER_POL_CPU)
		policy = SP_STEER_POL_HASH;

	int slot = sp_steer_pick(policy, md->hash, bpf_get_smp_processor_id(), &st);
	if (slot < 0)
		return SK_PASS;

	/* An empty entry (socket closing, group being rebuilt) or a socket of
	 * another group fails here: SK_PASS without a selection lets the
	 * kernel hash over the group. Never SK_DROP: that resets the client
	 * (or, when migrating, refuses the migration). */
	__u32 key = (__u32)slot;
	bpf_sk_select_reuseport(md, &sp_socks, &key, 0);
	return SK_PASS;
}

/* BPF_SK_REUSEPORT_SELECT_OR_MIGRATE (5.14+): also called for each request
 * queued on a listener that closes, with md->migrating_sk set. */
SEC("sk_reuseport/migrate")
int sp_steer_migrate(struct sk_reuseport_md *md)
{
	return sp_steer(md, md->migrating_sk != 0);
}

/* BPF_SK_REUSEPORT_SELECT: the same choice, for kernels without migrate. */
SEC("sk_reuseport")
int sp_steer_select(struct sk_reuseport_md *md)
{
	return sp_steer(md, 0);
}

char LICENSE[] SEC("license") = "GPL";
