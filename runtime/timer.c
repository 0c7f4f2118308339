/* timer: binary min-heap of embedded timers (see timer.h). */
#include "runtime/timer.h"

#include <errno.h>
#include <stdlib.h>

int sp_timers_init(sp_timers_t *ts, uint32_t cap)
{
	ts->heap = calloc(cap ? cap : 1, sizeof(*ts->heap));
	if (!ts->heap)
		return -ENOMEM;
	ts->n = 0;
	ts->cap = cap;
	return 0;
}

void sp_timers_free(sp_timers_t *ts)
{
	free(ts->heap);
	ts->heap = NULL;
	ts->n = ts->cap = 0;
}

void sp_timer_setup(sp_timer_t *t, void (*fn)(sp_timer_t *, void *), void *arg)
{
	t->deadline = 0;
	t->heap_idx = SP_TIMER_IDLE;
	t->fn = fn;
	t->arg = arg;
}

static void place(sp_timers_t *ts, uint32_t i, sp_timer_t *t)
{
	ts->heap[i] = t;
	t->heap_idx = i;
}

static void sift_up(sp_timers_t *ts, uint32_t i)
{
	sp_timer_t *t = ts->heap[i];
	while (i > 0) {
		uint32_t parent = (i - 1) / 2;
		if (ts->heap[parent]->deadline <= t->deadline)
			break;
		place(ts, i, ts->heap[parent]);
		i = parent;
	}
	place(ts, i, t);
}

static void sift_down(sp_timers_t *ts, uint32_t i)
{
	sp_timer_t *t = ts->heap[i];
	for (;;) {
		uint32_t l = 2 * i + 1, r = l + 1, m = i;
		uint64_t best = t->deadline;
		if (l < ts->n && ts->heap[l]->deadline < best) {
			m = l;
			best = ts->heap[l]->deadline;
		}
		if (r < ts->n && ts->heap[r]->deadline < best)
			m = r;
		if (m == i)
			break;
		place(ts, i, ts->heap[m]);
		i = m;
	}
	place(ts, i, t);
}

int sp_timer_arm(sp_timers_t *ts, sp_timer_t *t, uint64_t deadline)
{
	if (sp_timer_armed(t)) {
		uint64_t old = t->deadline;
		t->deadline = deadline;
		if (deadline < old)
			sift_up(ts, t->heap_idx);
		else
			sift_down(ts, t->heap_idx);
		return 0;
	}
	if (ts->n == ts->cap)
		return -ENOSPC;
	t->deadline = deadline;
	place(ts, ts->n++, t);
	sift_up(ts, t->heap_idx);
	return 0;
}

void sp_timer_disarm(sp_timers_t *ts, sp_timer_t *t)
{
	if (!sp_timer_armed(t))
		return;
	uint32_t i = t->heap_idx;
	t->heap_idx = SP_TIMER_IDLE;
	if (--ts->n == i)
		return;
	sp_timer_t *last = ts->heap[ts->n];
	place(ts, i, last);
	if (i > 0 && ts->heap[(i - 1) / 2]->deadline > last->deadline)
		sift_up(ts, i);
	else
		sift_down(ts, i);
}

uint64_t sp_timers_next(const sp_timers_t *ts)
{
	return ts->n ? ts->heap[0]->deadline : UINT64_MAX;
}

unsigned sp_timers_run(sp_timers_t *ts, uint64_t now)
{
	unsigned fired = 0;
	while (ts->n && ts->heap[0]->deadline <= now) {
		sp_timer_t *t = ts->heap[0];
		sp_timer_disarm(ts, t);
		fired++;
		t->fn(t, t->arg);
	}
	return fired;
}
