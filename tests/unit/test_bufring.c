/* bufring: a recv that selects a buffer lands its bytes in sp_bufring_addr of
 * the bid its completion names, never more than bufsz; buffers not put back
 * are not reused, and an empty ring fails a recv with ENOBUFS until one is.
 * Real recvs on a socketpair through a real ring; SKIPPED where io_uring is
 * blocked. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "runtime/bufring.h"
#include "runtime/ring.h"

enum { OP_RECV = 1, BGID = 5 };

typedef struct {
	sp_ring_t ring;
	int sv[2]; /* sv[1] writes, sv[0] is read by the ring */
	int res;
	uint32_t flags;
	unsigned ncqes;
} fixture_t;

static void on_recv(void *ctx, unsigned op, uint32_t slot, int res, uint32_t flags)
{
	fixture_t *f = ctx;
	(void)slot;
	assert_int_equal(op, OP_RECV);
	f->res = res;
	f->flags = flags;
	f->ncqes++;
}

static bool kernel_older_than_6_0(void)
{
	struct utsname u;
	int major = 0, minor = 0;
	if (uname(&u) != 0 || sscanf(u.release, "%d.%d", &major, &minor) != 2)
		return false;
	return major < 6;
}

/* A ring and a socketpair, or SKIPPED when io_uring is not allowed here. */
static void open_fixture(fixture_t *f)
{
	char err[256] = "";
	memset(f, 0, sizeof(*f));
	int ret = sp_ring_init(&f->ring, 8, f, err, sizeof(err));
	if (ret == -EPERM || ret == -ENOSYS || (ret == -ENOTSUP && kernel_older_than_6_0())) {
		print_message("[  SKIP    ] %s\n", err);
		skip();
	}
	if (ret < 0)
		fail_msg("sp_ring_init: %d: %s", ret, err);
	sp_ring_on(&f->ring, OP_RECV, on_recv, false);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, f->sv), 0);
}

static void close_fixture(fixture_t *f)
{
	sp_ring_exit(&f->ring);
	close(f->sv[0]);
	close(f->sv[1]);
}

/* One recv from group bgid, run to its completion; returns res. */
static int recv_select(fixture_t *f, uint16_t bgid)
{
	struct io_uring_sqe *sqe = sp_ring_sqe(&f->ring, OP_RECV, 0, 0);
	io_uring_prep_recv(sqe, f->sv[0], NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT; /* after prep, which clears flags */
	sqe->buf_group = bgid;
	unsigned before = f->ncqes;
	for (int turns = 0; f->ncqes == before && turns < 10; turns++)
		assert_true(sp_ring_run_once(&f->ring, 100) >= 0);
	assert_int_equal(f->ncqes, before + 1);
	return f->res;
}

static uint16_t bid_of(const fixture_t *f)
{
	assert_true(f->flags & IORING_CQE_F_BUFFER);
	return (uint16_t)(f->flags >> IORING_CQE_BUFFER_SHIFT);
}

static void send_text(fixture_t *f, const char *s)
{
	assert_int_equal(write(f->sv[1], s, strlen(s)), (ssize_t)strlen(s));
}

static void test_bufring_init_rejects_counts_that_are_not_a_power_of_two(void **state)
{
	(void)state;
	fixture_t f;
	sp_bufring_t b;
	const uint32_t bad[] = {0, 3, 6, 100, 65536};
	open_fixture(&f);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&b, 0x5a, sizeof(b));
		assert_int_equal(sp_bufring_init(&b, &f.ring.uring, BGID, bad[i], 64), -EINVAL);
		assert_null(b.br);
		assert_null(b.base);
	}
	/* 1 and the maximum, 32768, are fine */
	assert_int_equal(sp_bufring_init(&b, &f.ring.uring, BGID, 1, 64), 0);
	sp_bufring_free(&b, &f.ring.uring);
	assert_int_equal(sp_bufring_init(&b, &f.ring.uring, BGID, 32768, 16), 0);
	assert_int_equal(b.nbufs, 32768);
	assert_int_equal(b.mask, 32767);
	sp_bufring_free(&b, &f.ring.uring);
	close_fixture(&f);
}

static void test_bufring_recv_lands_in_the_buffer_its_completion_names(void **state)
{
	(void)state;
	fixture_t f;
	sp_bufring_t b;
	open_fixture(&f);
	assert_int_equal(sp_bufring_init(&b, &f.ring.uring, BGID, 8, 64), 0);
	assert_int_equal(b.out, 0);

	send_text(&f, "hello, ring");
	assert_int_equal(recv_select(&f, BGID), 11);
	uint16_t bid = bid_of(&f);
	assert_true(bid < 8);
	sp_bufring_took(&b);
	assert_int_equal(b.out, 1);
	assert_memory_equal(sp_bufring_addr(&b, bid), "hello, ring", 11);
	/* buffers are laid out back to back, bufsz apart */
	assert_ptr_equal(sp_bufring_addr(&b, bid), b.base + (size_t)bid * 64);

	sp_bufring_put(&b, bid);
	assert_int_equal(b.out, 0);
	sp_bufring_free(&b, &f.ring.uring);
	assert_null(b.br);
	close_fixture(&f);
}

static void test_bufring_recv_never_writes_more_than_bufsz(void **state)
{
	(void)state;
	fixture_t f;
	sp_bufring_t b;
	open_fixture(&f);
	assert_int_equal(sp_bufring_init(&b, &f.ring.uring, BGID, 4, 4), 0);
	send_text(&f, "abcdefghij");
	assert_int_equal(recv_select(&f, BGID), 4);
	uint16_t first = bid_of(&f);
	assert_memory_equal(sp_bufring_addr(&b, first), "abcd", 4);
	assert_int_equal(recv_select(&f, BGID), 4);
	uint16_t second = bid_of(&f);
	assert_int_not_equal(first, second);
	assert_memory_equal(sp_bufring_addr(&b, second), "efgh", 4);
	/* the first buffer was not touched by the second recv */
	assert_memory_equal(sp_bufring_addr(&b, first), "abcd", 4);
	sp_bufring_free(&b, &f.ring.uring);
	close_fixture(&f);
}

static void test_bufring_empty_ring_fails_with_enobufs_until_a_buffer_is_put(void **state)
{
	(void)state;
	fixture_t f;
	sp_bufring_t b;
	uint16_t bids[2];
	open_fixture(&f);
	assert_int_equal(sp_bufring_init(&b, &f.ring.uring, BGID, 2, 32), 0);
	for (int i = 0; i < 2; i++) {
		send_text(&f, i ? "two" : "one");
		assert_int_equal(recv_select(&f, BGID), 3);
		bids[i] = bid_of(&f);
		sp_bufring_took(&b);
	}
	assert_int_not_equal(bids[0], bids[1]);
	assert_int_equal(b.out, 2);

	send_text(&f, "three");
	assert_int_equal(recv_select(&f, BGID), -ENOBUFS);
	assert_false(f.flags & IORING_CQE_F_BUFFER);
	/* the data waits in the socket; the taken buffers are untouched */
	assert_memory_equal(sp_bufring_addr(&b, bids[0]), "one", 3);
	assert_memory_equal(sp_bufring_addr(&b, bids[1]), "two", 3);

	sp_bufring_put(&b, bids[1]);
	assert_int_equal(b.out, 1);
	assert_int_equal(recv_select(&f, BGID), 5);
	assert_int_equal(bid_of(&f), bids[1]); /* the only one free */
	sp_bufring_took(&b);
	assert_memory_equal(sp_bufring_addr(&b, bids[1]), "three", 5);
	assert_memory_equal(sp_bufring_addr(&b, bids[0]), "one", 3);

	sp_bufring_put(&b, bids[0]);
	sp_bufring_put(&b, bids[1]);
	assert_int_equal(b.out, 0);
	sp_bufring_free(&b, &f.ring.uring);
	close_fixture(&f);
}

static void test_bufring_buffers_recycle_many_times_around_the_ring(void **state)
{
	(void)state;
	fixture_t f;
	sp_bufring_t b;
	char msg[16];
	open_fixture(&f);
	assert_int_equal(sp_bufring_init(&b, &f.ring.uring, BGID, 2, 16), 0);
	/* far more recvs than buffers or ring entries: put must really advance
	 * the ring's tail, with wrap-around */
	for (int i = 0; i < 50; i++) {
		int n = snprintf(msg, sizeof(msg), "msg %d", i);
		send_text(&f, msg);
		assert_int_equal(recv_select(&f, BGID), n);
		uint16_t bid = bid_of(&f);
		sp_bufring_took(&b);
		assert_memory_equal(sp_bufring_addr(&b, bid), msg, (size_t)n);
		sp_bufring_put(&b, bid);
	}
	assert_int_equal(b.out, 0);
	sp_bufring_free(&b, &f.ring.uring);
	close_fixture(&f);
}

static void test_bufring_free_unregisters_the_group(void **state)
{
	(void)state;
	fixture_t f;
	sp_bufring_t b;
	open_fixture(&f);
	assert_int_equal(sp_bufring_init(&b, &f.ring.uring, BGID, 4, 32), 0);
	/* a group id is taken while registered */
	sp_bufring_t dup;
	assert_true(sp_bufring_init(&dup, &f.ring.uring, BGID, 4, 32) < 0);
	assert_null(dup.br);
	sp_bufring_free(&b, &f.ring.uring);
	assert_null(b.br);
	assert_int_equal(b.nbufs, 0);
	/* a recv from the freed group has no buffer */
	send_text(&f, "x");
	assert_int_equal(recv_select(&f, BGID), -ENOBUFS);
	/* and the id can be registered again */
	assert_int_equal(sp_bufring_init(&b, &f.ring.uring, BGID, 4, 32), 0);
	assert_int_equal(recv_select(&f, BGID), 1);
	assert_memory_equal(sp_bufring_addr(&b, bid_of(&f)), "x", 1);
	sp_bufring_free(&b, &f.ring.uring);
	sp_bufring_free(&b, &f.ring.uring); /* twice is harmless */
	close_fixture(&f);
}

static void test_bufring_groups_on_one_ring_are_separate(void **state)
{
	(void)state;
	fixture_t f;
	sp_bufring_t a, c;
	open_fixture(&f);
	assert_int_equal(sp_bufring_init(&a, &f.ring.uring, 1, 1, 16), 0);
	assert_int_equal(sp_bufring_init(&c, &f.ring.uring, 2, 1, 16), 0);
	send_text(&f, "to-a");
	assert_int_equal(recv_select(&f, 1), 4);
	assert_int_equal(bid_of(&f), 0);
	assert_memory_equal(sp_bufring_addr(&a, 0), "to-a", 4);
	/* group 1 is empty now; group 2 still has its buffer */
	send_text(&f, "to-c");
	assert_int_equal(recv_select(&f, 1), -ENOBUFS);
	assert_int_equal(recv_select(&f, 2), 4);
	assert_memory_equal(sp_bufring_addr(&c, 0), "to-c", 4);
	assert_memory_equal(sp_bufring_addr(&a, 0), "to-a", 4);
	sp_bufring_free(&a, &f.ring.uring);
	sp_bufring_free(&c, &f.ring.uring);
	close_fixture(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_bufring_init_rejects_counts_that_are_not_a_power_of_two),
	    cmocka_unit_test(test_bufring_recv_lands_in_the_buffer_its_completion_names),
	    cmocka_unit_test(test_bufring_recv_never_writes_more_than_bufsz),
	    cmocka_unit_test(test_bufring_empty_ring_fails_with_enobufs_until_a_buffer_is_put),
	    cmocka_unit_test(test_bufring_buffers_recycle_many_times_around_the_ring),
	    cmocka_unit_test(test_bufring_free_unregisters_the_group),
	    cmocka_unit_test(test_bufring_groups_on_one_ring_are_separate),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
