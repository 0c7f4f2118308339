/* backoff: capped exponential restart delay (see backoff.h). */
#include "proxy/backoff.h"

uint64_t sp_backoff_ms(uint32_t crashes)
{
	uint64_t delay = SP_BACKOFF_MIN_MS;
	if (crashes == 0)
		return 0;
	/* Double one step at a time up to the cap, rather than shift by
	 * crashes - 1: a shift by 64 or more is undefined behaviour, and
	 * 100 << 57 already wraps. */
	for (uint32_t i = 1; i < crashes && delay < SP_BACKOFF_MAX_MS; i++)
		delay *= 2;
	return delay < SP_BACKOFF_MAX_MS ? delay : SP_BACKOFF_MAX_MS;
}
