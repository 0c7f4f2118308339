/* loop_impl: what loop.c shares with its two backends (loop_uring.c,
 * loop_epoll.c) and nobody else. A backend is a table of functions with the
 * same signatures (Redis ae.c's ae_epoll.c / ae_kqueue.c split); loop.c keeps
 * everything that does not depend on it: handlers, generations, timers,
 * clock, buffer memory. */
#ifndef SP_LOOP_IMPL_H
#define SP_LOOP_IMPL_H

#include "runtime/loop.h"

/* The op code the loop keeps for itself: completions of cancels and connect
 * timeouts carry it and are never dispatched. */
#define SP_LOOP_OP_SELF (SP_UDATA_MAX_OPS - 1)

typedef struct {
	sp_loop_fn fn;
	bool check_gen;
} sp_loop_handler_t;

typedef struct sp_loop_backend_ops {
	sp_loop_backend_t id;
	int (*init)(sp_loop_t *l, char *err, size_t errlen);
	void (*fini)(sp_loop_t *l);
	/* The pool's memory exists (l->buf_base); lend it to the backend. */
	int (*bufs_init)(sp_loop_t *l);
	void (*buf_put)(sp_loop_t *l, uint16_t bid);
	int (*accept)(sp_loop_t *l, uint64_t tag, int fd, bool multishot);
	int (*recv)(sp_loop_t *l, uint64_t tag, int fd, bool multishot);
	int (*recv_into)(sp_loop_t *l, uint64_t tag, int fd, void *buf, size_t len);
	int (*send)(sp_loop_t *l, uint64_t tag, int fd, const void *buf, size_t len);
	/* Lent buffers (loop.h); NULL where the backend has none. */
	bool (*can_lend)(const sp_loop_t *l);
	int (*lend)(sp_loop_t *l, uint16_t group, uint16_t bid);
	int (*unlend)(sp_loop_t *l, uint16_t group, uint16_t bid);
	int (*recv_lent)(sp_loop_t *l, uint64_t tag, int fd, uint16_t group);
	int (*connect)(sp_loop_t *l, uint64_t tag, int fd, const struct sockaddr *addr,
		       socklen_t alen, unsigned timeout_ms);
	/* Socket + connect in the ring (loop.h); NULL where the backend has none. */
	bool (*can_socket_connect)(const sp_loop_t *l);
	int (*socket_connect)(sp_loop_t *l, uint64_t tag, const struct sockaddr *addr,
			      socklen_t alen, unsigned timeout_ms);
	int (*poll)(sp_loop_t *l, uint64_t tag, int fd, bool out);
	int (*cancel)(sp_loop_t *l, int fd, uint64_t tag);
	int (*cancel_fd)(sp_loop_t *l, int fd);
	void (*close)(sp_loop_t *l, int fd);
	void (*close_later)(sp_loop_t *l, int fd); /* NULL: close */
	/* Start what is queued, wait up to timeout_ms (-1: forever), refresh
	 * the clock (sp_loop__tick), dispatch. Returns completions or -errno. */
	int (*wait)(sp_loop_t *l, int timeout_ms);
	void (*describe)(const sp_loop_t *l, char *buf, size_t len);
} sp_loop_backend_ops_t;

extern const sp_loop_backend_ops_t sp_loop_uring_ops;
extern const sp_loop_backend_ops_t sp_loop_epoll_ops;

struct sp_loop {
	const sp_loop_backend_ops_t *be;
	void *be_state;
	void *ctx;
	unsigned entries;
	sp_loop_handler_t handlers[SP_UDATA_MAX_OPS];
	const uint32_t *gens;
	uint32_t ngens;
	sp_timers_t timers;
	uint64_t now_ms;
	/* buffer pool */
	uint8_t *buf_base;
	uint32_t nbufs, bufsz;
	uint32_t bufs_out; /* counted by the backend the moment a buffer is taken */
	sp_loop_stats_t stats;
};

/* Deliver one completion: generation check, buffer accounting, handler. */
void sp_loop__dispatch(sp_loop_t *l, uint64_t tag, const sp_completion_t *c);
void sp_loop__tick(sp_loop_t *l);
uint64_t sp_loop__clock_ms(void);

#endif
