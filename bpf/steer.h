/* sk_reuseport steering: the structs the kernel program and its loader share,
 * and (user space only) the loader's API the supervisor calls.
 * See docs/steering.md for the policies, the fallback and migration. */
#ifndef SP_BPF_STEER_H
#define SP_BPF_STEER_H

#include <linux/types.h>

/* Compile-time sizes of the maps. Powers of two: the program masks indexes
 * with SIZE-1, which the verifier understands without extra bounds checks.
 * MAX_SLOTS matches SP_CONF_MAX_WORKERS, MAX_GROUPS matches SP_MAX_GROUPS. */
#define SP_STEER_MAX_SLOTS 256
#define SP_STEER_MAX_GROUPS 64
#define SP_STEER_MAX_CPUS 1024

enum { SP_STEER_POL_HASH = 0, SP_STEER_POL_CPU = 1, SP_STEER_POL_LEAST_CONN = 2 };

/* One consistent picture of the slots, precomputed by the supervisor so the
 * program does O(1) work per SYN: no scan over a live bitmap, no search. */
struct sp_steer_cfg {
	__u32 policy;
	__u32 nslots; /* slots configured (informational) */
	__u32 nlive;  /* live_slot[0..nlive) is valid */
	__u32 pad;
	__u16 live_slot[SP_STEER_MAX_SLOTS]; /* live slots < nslots, ascending */
	__u16 cpu_slot[SP_STEER_MAX_SLOTS];  /* the same live slots, grouped by CPU */
	__u16 cpu_first[SP_STEER_MAX_CPUS];  /* CPU c's slots: cpu_slot[first .. first+n) */
	__u16 cpu_n[SP_STEER_MAX_CPUS];
};

/* Value of the single entry of the sp_cfg map (BPF_F_MMAPABLE). Double
 * buffered: the supervisor rewrites the spare copy through its mmap and then
 * flips `cur`, so a SYN never reads a half-written picture. */
struct sp_steer_cfg_map {
	__u32 cur; /* index of the copy in force, 0 or 1 */
	__u32 pad;
	struct sp_steer_cfg cfg[2];
};

/* Value of the single entry of the sp_load map (BPF_F_MMAPABLE): per-slot
 * active sessions. One entry holding the whole array, not one entry per
 * slot, because array map elements are padded to 8 bytes and shards index a
 * dense uint32_t array. */
struct sp_steer_load {
	__u32 n[SP_STEER_MAX_SLOTS];
};

#ifndef __bpf__
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sp_steer sp_steer_t;

/* Load the program for up to max_slots slots (<= SP_STEER_MAX_SLOTS). On
 * failure returns -errno and writes a one-line reason into why; the caller
 * logs it once and falls back to plain SO_REUSEPORT. libbpf's own printing
 * is silenced unless SP_STEER_DEBUG is set in the environment. */
int sp_steer_open(sp_steer_t **out, int policy, unsigned max_slots, char *why, size_t whylen);

/* The maps two supervisors share across a binary upgrade (proxy/upgrade.h):
 * the configuration, the load counters and each group's socket array. A
 * socket sits in one REUSEPORT_SOCKARRAY only, so the new supervisor loads
 * its programs on the old one's maps and attaches them (replacing the old
 * one's program in each reuseport group); if it fails, the old one attaches
 * its own again. The descriptors stay their owner's. */
typedef struct {
	int cfg_fd, load_fd;
	int socks_fd[SP_STEER_MAX_GROUPS]; /* -1: no array for that group */
} sp_steer_maps_t;
void sp_steer_maps(const sp_steer_t *st, sp_steer_maps_t *out);
/* sp_steer_open on those maps (NULL: new ones). */
int sp_steer_open_on(sp_steer_t **out, int policy, unsigned max_slots, const sp_steer_maps_t *maps,
		     char *why, size_t whylen);
/* Change the policy in force (a reload may change "steering"); no reload of
 * the program. */
int sp_steer_set_policy(sp_steer_t *st, int policy);
/* nslots active slots; cpu_of_slot[i] is the CPU shard i is pinned to (-1 or
 * a NULL table: not pinned). Live marks survive; slots >= nslots are never
 * picked. Callable again on reload. */
int sp_steer_set_slots(sp_steer_t *st, unsigned nslots, const int *cpu_of_slot);
/* Listener group g (< SP_STEER_MAX_GROUPS): slot i -> fds[i]. The sockets
 * must already be listening. Fills the group's socket array and attaches the
 * program to the reuseport group through fds[0]. Callable again for the same
 * group (new or replaced sockets) and for new groups. */
int sp_steer_attach_group(sp_steer_t *st, unsigned g, const int *fds, unsigned nfds);
/* A slot is picked only while live: mark it when its shard is ready to
 * accept, unmark it when the shard dies. All slots start dead. */
int sp_steer_set_live(sp_steer_t *st, unsigned slot, bool live);
/* Shared per-slot active-session counters (MAP_SHARED mmap, inherited across
 * fork; valid in this process until sp_steer_close). Shards do
 * __atomic_fetch_add(&c[slot], 1, __ATOMIC_RELAXED) on accept, sub on close. */
uint32_t *sp_steer_counters(sp_steer_t *st);
/* True when the kernel took the sk_reuseport/migrate program, so connections
 * queued on a closing listener move to a live one instead of being reset. */
bool sp_steer_migrate_supported(const sp_steer_t *st);
const char *sp_steer_policy_name(int policy);
/* Frees the loader's handles. Programs stay attached to their reuseport
 * groups (the kernel holds them) and keep the last configuration until those
 * sockets close. */
void sp_steer_close(sp_steer_t *st);
#endif /* !__bpf__ */

#endif
