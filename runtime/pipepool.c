/* pipepool: pooled pipes for the splice engine (see pipepool.h). */
#include "runtime/pipepool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

int sp_pipepool_init(sp_pipepool_t *p, unsigned cap, int pipe_size)
{
	p->fds = calloc(cap ? cap : 1, sizeof(*p->fds));
	if (!p->fds)
		return -ENOMEM;
	p->n = 0;
	p->cap = cap;
	p->pipe_size = pipe_size;
	p->live = 0;
	return 0;
}

void sp_pipepool_free(sp_pipepool_t *p)
{
	for (unsigned i = 0; i < p->n; i++) {
		close(p->fds[i][0]);
		close(p->fds[i][1]);
	}
	free(p->fds);
	p->fds = NULL;
	p->n = 0;
}

int sp_pipepool_get(sp_pipepool_t *p, int fds[2])
{
	if (p->n) {
		p->n--;
		fds[0] = p->fds[p->n][0];
		fds[1] = p->fds[p->n][1];
		p->live++;
		return 0;
	}
	if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
		return -errno;
	/* Best effort: past fs.pipe-user-pages-soft the kernel refuses bigger
	 * pipes and the default size still works. */
	if (p->pipe_size > 0)
		(void)fcntl(fds[1], F_SETPIPE_SZ, p->pipe_size);
	p->live++;
	return 0;
}

void sp_pipepool_put(sp_pipepool_t *p, int fds[2], int empty)
{
	p->live--;
	if (empty && p->n < p->cap) {
		p->fds[p->n][0] = fds[0];
		p->fds[p->n][1] = fds[1];
		p->n++;
	} else {
		close(fds[0]);
		close(fds[1]);
	}
	fds[0] = fds[1] = -1;
}
