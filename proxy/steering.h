/* steering: what the configuration's "steering" asks of the BPF program.
 * The one map from sp_steering_t to a program policy, for the supervisor
 * and for `shardproxy -V`. */
#ifndef SP_STEERING_H
#define SP_STEERING_H

#include "conf/conf.h"

/* SP_STEER_POL_* for a steering other than SP_STEER_NONE (which loads no
 * program; asked anyway, it maps to hash, what "none" falls back to when a
 * program is already attached). */
int sp_steering_policy(sp_steering_t s);

#endif
