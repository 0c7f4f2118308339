/* pipepool: a per-loop pool of empty non-blocking pipes for splice relays.
 * A session takes a pipe only while bytes sit in it and gives it back empty,
 * so pipes scale with data in flight, not with connections (the kernel caps
 * pipe memory per user: fs.pipe-user-pages-soft). */
#ifndef SP_PIPEPOOL_H
#define SP_PIPEPOOL_H

#include <stddef.h>

typedef struct {
	int (*fds)[2];
	unsigned n;   /* idle pipes in the pool */
	unsigned cap; /* idle pipes kept at most; more are closed */
	int pipe_size;
	unsigned live; /* pipes handed out */
} sp_pipepool_t;

int sp_pipepool_init(sp_pipepool_t *p, unsigned cap, int pipe_size);
void sp_pipepool_free(sp_pipepool_t *p);
/* A pipe (fds[0] read end, fds[1] write end), from the pool or new. */
int sp_pipepool_get(sp_pipepool_t *p, int fds[2]);
/* Give a pipe back; `empty` says whether it holds no data (else it is closed). */
void sp_pipepool_put(sp_pipepool_t *p, int fds[2], int empty);

#endif
