/* bufring: a provided-buffer ring (IORING_REGISTER_PBUF_RING). The kernel
 * picks a free buffer at the moment data arrives, so an idle connection holds
 * no memory; the owner gives each buffer back once its bytes are sent. */
#ifndef SP_BUFRING_H
#define SP_BUFRING_H

#include <liburing.h>
#include <stdint.h>

typedef struct {
	struct io_uring_buf_ring *br;
	uint8_t *base;
	size_t ring_bytes;
	uint32_t nbufs; /* power of two */
	uint32_t bufsz;
	uint32_t mask;
	uint32_t out; /* buffers currently handed out by the kernel */
	uint16_t bgid;
} sp_bufring_t;

int sp_bufring_init(sp_bufring_t *b, struct io_uring *u, uint16_t bgid, uint32_t nbufs,
		    uint32_t bufsz);
void sp_bufring_free(sp_bufring_t *b, struct io_uring *u);
static inline uint8_t *sp_bufring_addr(const sp_bufring_t *b, uint16_t bid)
{
	return b->base + (size_t)bid * b->bufsz;
}
/* The kernel consumed bid (a completion carried IORING_CQE_F_BUFFER). */
static inline void sp_bufring_took(sp_bufring_t *b) { b->out++; }
/* Give bid back to the kernel. */
void sp_bufring_put(sp_bufring_t *b, uint16_t bid);

#endif
