/* io: which event loop the shards run ("io" in the configuration, SPEC §4).
 * auto takes io_uring when a probe finds every operation and feature the
 * loop uses, else epoll; the probe runs once per process and every shard
 * of every generation uses its result. */
#ifndef SP_PROXY_IO_H
#define SP_PROXY_IO_H

#include <stddef.h>

#include "conf/conf.h"
#include "runtime/loop.h"

/* The backend for `want`, with the reason in why ("io_uring: probe found
 * ...", "epoll: as configured", "epoll: io_uring unavailable: <cause>").
 * -errno when io_uring is forced and cannot run: why holds the cause. */
int sp_io_choose(sp_io_t want, sp_loop_backend_t *out, char *why, size_t len);

#endif
