/* steering: config -> steering policy, and the supervisor's use of the
 * sk_reuseport program (bpf/steer.h): load it, switch its policy on a
 * reload, point it at a generation's sockets, mark slots live. */
#include "proxy/steering.h"

#include <string.h>

#include "proxy/sup_internal.h"
#include "runtime/log.h"

/* The program's tables are sized for these; the supervisor's must fit. */
_Static_assert(SP_MAX_SLOTS <= SP_STEER_MAX_SLOTS, "a shard slot the steering program cannot hold");
_Static_assert(SP_MAX_GROUPS <= SP_STEER_MAX_GROUPS, "a listen address the program cannot hold");

int sp_steering_policy(sp_steering_t s)
{
	switch (s) {
	case SP_STEER_CPU:
		return SP_STEER_POL_CPU;
	case SP_STEER_LEAST_CONN:
		return SP_STEER_POL_LEAST_CONN;
	default:
		return SP_STEER_POL_HASH;
	}
}

static void steer_setup(sp_sup_t *sup, const sp_conf_t *conf)
{
	char why[256] = "";
	if (conf->steering == SP_STEER_NONE) {
		sp_info("steering: none (kernel SO_REUSEPORT hash, as configured)");
		return;
	}
	/* After a binary upgrade: on the maps the previous binary's sockets
	 * are in (a socket sits in one socket array only). */
	int ret = sp_steer_open_on(&sup->steer, sp_steering_policy(conf->steering), SP_MAX_SLOTS,
				   sup->steer_maps, why, sizeof(why));
	if (ret < 0) {
		sup->steer = NULL;
		sp_warn("BPF steering unavailable (%s): falling back to plain SO_REUSEPORT", why);
		return;
	}
	sp_info("steering: %s (bpf%s)", sp_conf_steering_name(conf->steering),
		sp_steer_migrate_supported(sup->steer) ? ", select_or_migrate" : "");
}

/* A reload that changes `steering`: switch the loaded program's policy, or
 * load it now if the old file had none. "none" cannot unload a program
 * that reuseport groups hold; it steers by hash over the live shards
 * until a restart. */
void sp_steering_configure(sp_sup_t *sup, const sp_conf_t *conf, const sp_conf_t *prev)
{
	if (!prev) {
		steer_setup(sup, conf);
		return;
	}
	if (conf->steering == prev->steering)
		return;
	if (!sup->steer) {
		if (conf->steering != SP_STEER_NONE)
			steer_setup(sup, conf);
		return;
	}
	if (conf->steering == SP_STEER_NONE) {
		sp_steer_set_policy(sup->steer, SP_STEER_POL_HASH);
		sp_info(
		    "steering: none takes effect on a restart; hash over live shards until then");
		return;
	}
	if (sp_steer_set_policy(sup->steer, sp_steering_policy(conf->steering)) < 0)
		sp_warn("steering: cannot switch to %s", sp_conf_steering_name(conf->steering));
	else
		sp_info("steering: %s", sp_conf_steering_name(conf->steering));
}

void sp_steering_apply(sp_sup_t *sup, sp_gen_t *g)
{
	int cpu_of_slot[SP_MAX_SLOTS];
	if (!sup->steer)
		return;
	for (unsigned i = 0; i < g->nslots; i++)
		cpu_of_slot[i] = sup->cpus[i % sup->ncpus];
	if (sp_steer_set_slots(sup->steer, g->nslots, cpu_of_slot) < 0)
		sp_warn("steering: cannot set %u slots", g->nslots);
	for (size_t l = 0; l < g->conf->nlisteners; l++) {
		sp_lgroup_t *grp = &sup->groups[g->group_of[l]];
		int ret = sp_steer_attach_group(sup->steer, (unsigned)g->group_of[l], grp->fds,
						g->nslots);
		if (ret < 0)
			sp_warn("steering: listener %s: attach: %s (kernel hash applies)",
				grp->addr.text, strerror(-ret));
		else
			grp->attached = true;
	}
}

void sp_steering_live(sp_sup_t *sup, unsigned slot, bool live)
{
	if (sup->steer)
		sp_steer_set_live(sup->steer, slot, live);
}

void sp_steering_reclaim(sp_sup_t *sup)
{
	sp_steering_apply(sup, sup->cur);
	for (unsigned i = 0; i < sup->cur->nslots; i++)
		if (sup->cur->procs[i].state == PROC_READY)
			sp_steering_live(sup, i, true);
}

const char *sp_steering_in_force(const sp_sup_t *sup)
{
	return sup->steer ? sp_conf_steering_name(sup->cur->conf->steering) : "none";
}
