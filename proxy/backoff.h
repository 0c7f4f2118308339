/* backoff: how long the supervisor waits before restarting a shard that
 * keeps dying: the first restart at once, then 100 ms doubling per quick
 * death in a row, capped at 5 s. */
#ifndef SP_BACKOFF_H
#define SP_BACKOFF_H

#include <stdint.h>

#define SP_BACKOFF_MIN_MS 100
#define SP_BACKOFF_MAX_MS 5000

/* The delay before the restart that follows `crashes` quick deaths in a row
 * (0: the first death, restarted at once). Defined for every value: the
 * shift stops at the cap, so no count of crashes overflows it. */
uint64_t sp_backoff_ms(uint32_t crashes);

#endif
