/* timer: a binary min-heap of deadlines, one per loop, so thousands of
 * sessions share one wake-up instead of each holding a kernel timer. Timers
 * are embedded in their owner; arming, re-arming and disarming are O(log n)
 * and allocate nothing after sp_timers_init. */
#ifndef SP_TIMER_H
#define SP_TIMER_H

#include <stdbool.h>
#include <stdint.h>

#define SP_TIMER_IDLE UINT32_MAX

typedef struct sp_timer {
	uint64_t deadline; /* ms on the loop's monotonic clock */
	uint32_t heap_idx; /* SP_TIMER_IDLE when not armed */
	void (*fn)(struct sp_timer *t, void *arg);
	void *arg;
} sp_timer_t;

typedef struct {
	sp_timer_t **heap;
	uint32_t n;
	uint32_t cap;
} sp_timers_t;

int sp_timers_init(sp_timers_t *ts, uint32_t cap);
void sp_timers_free(sp_timers_t *ts);
void sp_timer_setup(sp_timer_t *t, void (*fn)(sp_timer_t *, void *), void *arg);
/* Arm (or move) t to fire at deadline. Fails with -ENOSPC past cap. */
int sp_timer_arm(sp_timers_t *ts, sp_timer_t *t, uint64_t deadline);
void sp_timer_disarm(sp_timers_t *ts, sp_timer_t *t);
static inline bool sp_timer_armed(const sp_timer_t *t) { return t->heap_idx != SP_TIMER_IDLE; }
/* Earliest deadline, or UINT64_MAX when nothing is armed. */
uint64_t sp_timers_next(const sp_timers_t *ts);
/* Fire every timer whose deadline is <= now; returns how many fired. A timer
 * callback may re-arm its own timer or others. */
unsigned sp_timers_run(sp_timers_t *ts, uint64_t now);

#endif
