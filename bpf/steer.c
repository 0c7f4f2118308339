/* Loader for the sk_reuseport steering program: loads one instance per
 * listener group through the bpftool skeleton (sharing the config and load
 * maps), fills each group's socket array, attaches it, and publishes the
 * slots' picture through an mmap of sp_cfg. See docs/steering.md. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "bpf/steer.h"
#include "bpf/steer_pick.h"
#include "steer.skel.h"

#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif
#ifndef SO_ATTACH_REUSEPORT_EBPF
#define SO_ATTACH_REUSEPORT_EBPF 52
#endif

struct sp_steer {
	/* Loaded by sp_steer_open: owns sp_cfg and sp_load, and serves the
	 * first group attached. Later groups get their own instance. */
	struct steer_bpf *base;
	bool base_used;
	struct steer_bpf *group[SP_STEER_MAX_GROUPS];
	bool migrate;
	unsigned max_slots;

	bool shared; /* loaded on another supervisor's maps (maps below) */
	sp_steer_maps_t maps;
	int base_group; /* shared: the group whose array the base is loaded on; -1: none */

	struct sp_steer_cfg_map *cfg; /* mmap of sp_cfg's only entry */
	size_t cfg_len;
	struct sp_steer_load *load; /* mmap of sp_load's only entry */
	size_t load_len;

	/* What the picture is built from. */
	__u32 policy;
	unsigned nslots;
	bool live[SP_STEER_MAX_SLOTS];
	int cpu_of_slot[SP_STEER_MAX_SLOTS];
};

static int sp_steer_libbpf_quiet(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	(void)level;
	(void)fmt;
	(void)ap;
	return 0;
}

static int sp_steer_libbpf_debug(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	(void)level;
	return vfprintf(stderr, fmt, ap);
}

const char *sp_steer_policy_name(int policy)
{
	switch (policy) {
	case SP_STEER_POL_HASH:
		return "hash";
	case SP_STEER_POL_CPU:
		return "cpu";
	case SP_STEER_POL_LEAST_CONN:
		return "least_conn";
	default:
		return "unknown";
	}
}

static bool sp_steer_policy_ok(int policy)
{
	return policy == SP_STEER_POL_HASH || policy == SP_STEER_POL_CPU ||
	       policy == SP_STEER_POL_LEAST_CONN;
}

/* Rebuild the spare copy and flip to it. One writer (the supervisor); a
 * reader that loaded the old index finishes its SYN long before the next
 * update could rewrite that copy. */
static void sp_steer_publish(sp_steer_t *st)
{
	__u32 spare = (__atomic_load_n(&st->cfg->cur, __ATOMIC_RELAXED) & 1) ^ 1;
	sp_steer_cfg_build(&st->cfg->cfg[spare], st->policy, st->nslots, st->live, st->cpu_of_slot);
	__atomic_store_n(&st->cfg->cur, spare, __ATOMIC_RELEASE);
}

static void *sp_steer_mmap(struct bpf_map *map, size_t size, size_t *len)
{
	long page = sysconf(_SC_PAGESIZE);
	*len = (size + (size_t)page - 1) & ~((size_t)page - 1);
	void *p = mmap(NULL, *len, PROT_READ | PROT_WRITE, MAP_SHARED, bpf_map__fd(map), 0);
	return p == MAP_FAILED ? NULL : p;
}

/* Open and load one instance; with a base, reuse its shared maps. */
static int sp_steer_load_one(sp_steer_t *st, struct steer_bpf **out, int socks_fd)
{
	struct steer_bpf *s = steer_bpf__open();
	int ret;

	if (!s)
		return -errno;
	ret = bpf_program__set_autoload(s->progs.sp_steer_migrate, st->migrate);
	if (!ret)
		ret = bpf_program__set_autoload(s->progs.sp_steer_select, !st->migrate);
	if (!ret)
		ret = bpf_map__set_max_entries(s->maps.sp_socks, st->max_slots);
	if (!ret && st->base) {
		ret = bpf_map__reuse_fd(s->maps.sp_cfg, bpf_map__fd(st->base->maps.sp_cfg));
		if (!ret)
			ret =
			    bpf_map__reuse_fd(s->maps.sp_load, bpf_map__fd(st->base->maps.sp_load));
	} else if (!ret && st->shared) {
		ret = bpf_map__reuse_fd(s->maps.sp_cfg, st->maps.cfg_fd);
		if (!ret)
			ret = bpf_map__reuse_fd(s->maps.sp_load, st->maps.load_fd);
	}
	if (!ret && socks_fd >= 0)
		ret = bpf_map__reuse_fd(s->maps.sp_socks, socks_fd);
	if (!ret)
		ret = steer_bpf__load(s);
	if (ret) {
		steer_bpf__destroy(s);
		return ret < 0 ? ret : -EINVAL;
	}
	*out = s;
	return 0;
}

static void sp_steer_why_load(char *why, size_t whylen, int err)
{
	if (err == -EPERM || err == -EACCES) {
		char v[16] = "?";
		FILE *f = fopen("/proc/sys/kernel/unprivileged_bpf_disabled", "r");
		if (f) {
			if (!fgets(v, sizeof(v), f))
				snprintf(v, sizeof(v), "?");
			v[strcspn(v, "\n")] = '\0';
			fclose(f);
		}
		snprintf(why, whylen,
			 "bpf(): %s (needs root or CAP_BPF+CAP_NET_ADMIN; "
			 "kernel.unprivileged_bpf_disabled=%s)",
			 strerror(-err), v);
	} else if (err == -EINVAL) {
		snprintf(why, whylen,
			 "bpf(BPF_PROG_LOAD) sk_reuseport: %s (kernel without sk_reuseport "
			 "programs, or verifier refused; SP_STEER_DEBUG=1 shows libbpf's log)",
			 strerror(-err));
	} else {
		snprintf(why, whylen, "bpf(BPF_PROG_LOAD) sk_reuseport: %s", strerror(-err));
	}
}

void sp_steer_maps(const sp_steer_t *st, sp_steer_maps_t *out)
{
	out->cfg_fd = bpf_map__fd(st->base->maps.sp_cfg);
	out->load_fd = bpf_map__fd(st->base->maps.sp_load);
	for (unsigned g = 0; g < SP_STEER_MAX_GROUPS; g++)
		out->socks_fd[g] = st->group[g] ? bpf_map__fd(st->group[g]->maps.sp_socks) : -1;
}

int sp_steer_open(sp_steer_t **out, int policy, unsigned max_slots, char *why, size_t whylen)
{
	return sp_steer_open_on(out, policy, max_slots, NULL, why, whylen);
}

int sp_steer_open_on(sp_steer_t **out, int policy, unsigned max_slots, const sp_steer_maps_t *maps,
		     char *why, size_t whylen)
{
	char dummy[1];
	sp_steer_t *st = NULL;
	int ret;

	if (!why || whylen == 0) {
		why = dummy;
		whylen = sizeof(dummy);
	}
	why[0] = '\0';
	if (!out || !sp_steer_policy_ok(policy) || max_slots == 0 ||
	    max_slots > SP_STEER_MAX_SLOTS) {
		snprintf(why, whylen, "invalid steering parameters (policy %d, %u slots, max %d)",
			 policy, max_slots, SP_STEER_MAX_SLOTS);
		return -EINVAL;
	}
	*out = NULL;
	/* libbpf's messages would duplicate (or bury) our one-line reason. */
	libbpf_set_print(getenv("SP_STEER_DEBUG") ? sp_steer_libbpf_debug : sp_steer_libbpf_quiet);

	st = calloc(1, sizeof(*st));
	if (!st) {
		ret = -ENOMEM;
		snprintf(why, whylen, "out of memory");
		goto err;
	}
	st->max_slots = max_slots;
	st->policy = (__u32)policy;
	st->base_group = -1;
	if (maps) {
		/* Each group's instance is loaded on that group's array. The
		 * base, on the shared cfg and load, takes the first handed-over
		 * group's array and serves that group, as a fresh start's base
		 * serves its first group: one instance (and its descriptors) per
		 * group either way. */
		st->shared = true;
		st->maps = *maps;
		for (unsigned g = 0; g < SP_STEER_MAX_GROUPS && st->base_group < 0; g++)
			if (maps->socks_fd[g] >= 0)
				st->base_group = (int)g;
	}
	int base_socks = st->base_group >= 0 ? st->maps.socks_fd[st->base_group] : -1;
	for (unsigned i = 0; i < SP_STEER_MAX_SLOTS; i++)
		st->cpu_of_slot[i] = -1;

	/* Try select_or_migrate first; anything but a privilege error means
	 * this kernel may just lack it (< 5.14): retry with plain select. */
	st->migrate = true;
	ret = sp_steer_load_one(st, &st->base, base_socks);
	if (ret < 0 && ret != -EPERM) {
		st->migrate = false;
		ret = sp_steer_load_one(st, &st->base, base_socks);
	}
	if (ret < 0) {
		sp_steer_why_load(why, whylen, ret);
		goto err;
	}

	st->cfg = sp_steer_mmap(st->base->maps.sp_cfg, sizeof(*st->cfg), &st->cfg_len);
	if (!st->cfg) {
		ret = -errno;
		snprintf(why, whylen, "mmap of the sp_cfg map: %s", strerror(errno));
		goto err;
	}
	st->load = sp_steer_mmap(st->base->maps.sp_load, sizeof(*st->load), &st->load_len);
	if (!st->load) {
		ret = -errno;
		snprintf(why, whylen, "mmap of the sp_load map: %s", strerror(errno));
		goto err;
	}
	sp_steer_publish(st);
	*out = st;
	return 0;
err:
	sp_steer_close(st);
	return ret;
}

int sp_steer_set_policy(sp_steer_t *st, int policy)
{
	if (!st || !sp_steer_policy_ok(policy))
		return -EINVAL;
	st->policy = (__u32)policy;
	sp_steer_publish(st);
	return 0;
}

int sp_steer_set_slots(sp_steer_t *st, unsigned nslots, const int *cpu_of_slot)
{
	if (!st || nslots > st->max_slots)
		return -EINVAL;
	st->nslots = nslots;
	for (unsigned i = 0; i < SP_STEER_MAX_SLOTS; i++)
		st->cpu_of_slot[i] = cpu_of_slot && i < nslots ? cpu_of_slot[i] : -1;
	sp_steer_publish(st);
	return 0;
}

int sp_steer_set_live(sp_steer_t *st, unsigned slot, bool live)
{
	if (!st || slot >= st->max_slots)
		return -EINVAL;
	if (st->live[slot] == live)
		return 0;
	st->live[slot] = live;
	sp_steer_publish(st);
	return 0;
}

static int sp_steer_group_instance(sp_steer_t *st, unsigned g, struct steer_bpf **out)
{
	if (!st->group[g]) {
		if (!st->base_used && (st->base_group < 0 || (int)g == st->base_group)) {
			st->base_used = true;
			st->group[g] = st->base;
		} else {
			int ret = sp_steer_load_one(
			    st, &st->group[g], st->shared ? st->maps.socks_fd[g] : -1);
			if (ret < 0)
				return ret;
		}
	}
	*out = st->group[g];
	return 0;
}

int sp_steer_attach_group(sp_steer_t *st, unsigned g, const int *fds, unsigned nfds)
{
	__u64 want[SP_STEER_MAX_SLOTS];
	struct steer_bpf *s;
	int ret;

	if (!st || g >= SP_STEER_MAX_GROUPS || !fds || nfds == 0 || nfds > st->max_slots)
		return -EINVAL;
	for (unsigned i = 0; i < nfds; i++) {
		socklen_t len = sizeof(want[i]);
		if (getsockopt(fds[i], SOL_SOCKET, SO_COOKIE, &want[i], &len) < 0)
			return -errno;
	}
	ret = sp_steer_group_instance(st, g, &s);
	if (ret < 0)
		return ret;

	/* A socket can be in one REUSEPORT_SOCKARRAY slot only (the array
	 * keeps itself in sk_user_data): inserting it again, even at its own
	 * index, fails with EBUSY. So compare cookies, first clear every
	 * entry holding something else, then insert what is missing. An
	 * entry empty meanwhile only means the kernel picks for that SYN. */
	int map = bpf_map__fd(s->maps.sp_socks);
	for (__u32 i = 0; i < st->max_slots; i++) {
		__u64 have;
		if (bpf_map_lookup_elem(map, &i, &have) == 0 && (i >= nfds || have != want[i]))
			bpf_map_delete_elem(map, &i);
	}
	for (__u32 i = 0; i < nfds; i++) {
		__u64 have, fd = (__u64)fds[i];
		if (bpf_map_lookup_elem(map, &i, &have) == 0 && have == want[i])
			continue;
		if (bpf_map_update_elem(map, &i, &fd, BPF_ANY) < 0)
			return -errno; /* EINVAL: not listening yet; EBUSY: in another group */
	}

	/* Attaching to any member attaches to the whole reuseport group, and
	 * replaces the group's previous program. */
	int prog =
	    bpf_program__fd(st->migrate ? s->progs.sp_steer_migrate : s->progs.sp_steer_select);
	if (setsockopt(fds[0], SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, &prog, sizeof(prog)) < 0)
		return -errno;
	return 0;
}

uint32_t *sp_steer_counters(sp_steer_t *st)
{
	return st ? st->load->n : NULL;
}

bool sp_steer_migrate_supported(const sp_steer_t *st)
{
	return st && st->migrate;
}

void sp_steer_close(sp_steer_t *st)
{
	if (!st)
		return;
	/* Forked shards keep their own mapping of the counters; only this
	 * process's pointer dies here. */
	if (st->load)
		munmap(st->load, st->load_len);
	if (st->cfg)
		munmap(st->cfg, st->cfg_len);
	for (unsigned g = 0; g < SP_STEER_MAX_GROUPS; g++)
		if (st->group[g] && st->group[g] != st->base)
			steer_bpf__destroy(st->group[g]);
	steer_bpf__destroy(st->base);
	free(st);
}
