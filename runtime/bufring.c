/* bufring: provided-buffer ring set-up and recycling (see bufring.h). */
#include "runtime/bufring.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

int sp_bufring_init(sp_bufring_t *b, struct io_uring *u, uint16_t bgid, uint32_t nbufs,
		    uint32_t bufsz)
{
	struct io_uring_buf_reg reg;
	int ret;

	memset(b, 0, sizeof(*b));
	if (nbufs == 0 || (nbufs & (nbufs - 1)) || nbufs > 32768)
		return -EINVAL;
	b->ring_bytes = (size_t)nbufs * sizeof(struct io_uring_buf);
	b->br = mmap(NULL, b->ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		     0);
	if (b->br == MAP_FAILED) {
		b->br = NULL;
		return -errno;
	}
	/* Buffers are touched only when data lands in them, so a large pool
	 * costs address space, not resident memory, until it is used. */
	b->base = mmap(NULL, (size_t)nbufs * bufsz, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (b->base == MAP_FAILED) {
		b->base = NULL;
		ret = -errno;
		goto err;
	}
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (unsigned long)b->br;
	reg.ring_entries = nbufs;
	reg.bgid = bgid;
	ret = io_uring_register_buf_ring(u, &reg, 0);
	if (ret < 0)
		goto err;

	b->nbufs = nbufs;
	b->bufsz = bufsz;
	b->mask = io_uring_buf_ring_mask(nbufs);
	b->bgid = bgid;
	io_uring_buf_ring_init(b->br);
	for (uint32_t i = 0; i < nbufs; i++)
		io_uring_buf_ring_add(b->br, sp_bufring_addr(b, (uint16_t)i), bufsz, (uint16_t)i,
				      b->mask, (int)i);
	io_uring_buf_ring_advance(b->br, (int)nbufs);
	return 0;
err:
	if (b->base)
		munmap(b->base, (size_t)nbufs * bufsz);
	munmap(b->br, b->ring_bytes);
	memset(b, 0, sizeof(*b));
	return ret;
}

void sp_bufring_free(sp_bufring_t *b, struct io_uring *u)
{
	if (!b->br)
		return;
	io_uring_unregister_buf_ring(u, b->bgid);
	munmap(b->base, (size_t)b->nbufs * b->bufsz);
	munmap(b->br, b->ring_bytes);
	memset(b, 0, sizeof(*b));
}

void sp_bufring_put(sp_bufring_t *b, uint16_t bid)
{
	io_uring_buf_ring_add(b->br, sp_bufring_addr(b, bid), b->bufsz, bid, b->mask, 0);
	io_uring_buf_ring_advance(b->br, 1);
	b->out--;
}
