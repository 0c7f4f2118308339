/* io: the event-loop backend choice (see io.h). */
#include "proxy/io.h"

#include <stdbool.h>
#include <stdio.h>

static struct {
	bool done;
	int ret;
	char why[512];
} probe;

/* One probe per process: a reload or a restarted shard never sees another
 * answer than the one the proxy started with. */
static int probe_once(const char **why)
{
	if (!probe.done) {
		probe.ret = sp_loop_probe_uring(probe.why, sizeof(probe.why));
		probe.done = true;
	}
	*why = probe.why;
	return probe.ret;
}

int sp_io_choose(sp_io_t want, sp_loop_backend_t *out, char *why, size_t len)
{
	const char *found;
	int ret;

	if (want == SP_IO_EPOLL) {
		*out = SP_LOOP_EPOLL;
		snprintf(why, len, "epoll (as configured)");
		return 0;
	}
	ret = probe_once(&found);
	if (ret == 0) {
		*out = SP_LOOP_URING;
		snprintf(why, len, "io_uring (%s: the probe found every operation the loop uses)",
			 want == SP_IO_URING ? "as configured" : "auto");
		return 0;
	}
	if (want == SP_IO_URING) {
		snprintf(why, len, "%s", found);
		return ret;
	}
	*out = SP_LOOP_EPOLL;
	snprintf(why, len, "epoll (auto: io_uring unavailable: %s)", found);
	return 0;
}
