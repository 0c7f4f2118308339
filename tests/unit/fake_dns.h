/* Unit-test helper: a fake nameserver on 127.0.0.1 that a test polls in
 * its own loop (no thread). It answers A queries from a list the test
 * changes, answers NXDOMAIN, or stays silent; AAAA gets an empty answer.
 * Include after <cmocka.h>. */
#ifndef SP_TEST_FAKE_DNS_H
#define SP_TEST_FAKE_DNS_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef enum { DNS_ANSWER, DNS_NXDOMAIN, DNS_SILENT } dns_mode_t;

typedef struct {
	int fd;
	uint16_t port;
	dns_mode_t mode;
	const char *addrs[8]; /* IPv4 answers to A; AAAA gets an empty answer */
	unsigned queries;
} fake_dns_t;

static inline void dns_start(fake_dns_t *d)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(sa);
	memset(d, 0, sizeof(*d));
	d->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	assert_true(d->fd >= 0);
	assert_int_equal(bind(d->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(getsockname(d->fd, (struct sockaddr *)&sa, &len), 0);
	d->port = ntohs(sa.sin_port);
}

/* Answer one query: the header and question echoed, then the A records. */
static inline void dns_serve(fake_dns_t *d)
{
	uint8_t q[512], r[1024];
	struct sockaddr_storage from;
	socklen_t flen = sizeof(from);
	ssize_t n;
	while ((n = recvfrom(d->fd, q, sizeof(q), 0, (struct sockaddr *)&from, &flen)) > 0) {
		d->queries++;
		if (d->mode == DNS_SILENT || n < 12)
			continue;
		size_t p = 12;
		while (p < (size_t)n && q[p])
			p += q[p] + 1u;
		p++; /* the root label */
		if (p + 4 > (size_t)n)
			continue;
		uint16_t qtype = (uint16_t)(q[p] << 8 | q[p + 1]);
		size_t qend = p + 4, len = qend;
		memcpy(r, q, qend);
		r[2] = 0x81; /* QR, RD */
		r[3] = d->mode == DNS_NXDOMAIN ? 0x83 : 0x80; /* RA, rcode */
		r[6] = r[7] = r[8] = r[9] = r[10] = r[11] = 0;
		unsigned an = 0;
		for (int i = 0; d->mode == DNS_ANSWER && qtype == 1 && i < 8 && d->addrs[i]; i++) {
			static const uint8_t rr[] = {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4};
			memcpy(r + len, rr, sizeof(rr));
			len += sizeof(rr);
			inet_pton(AF_INET, d->addrs[i], r + len);
			len += 4;
			an++;
		}
		r[7] = (uint8_t)an;
		sendto(d->fd, r, len, 0, (struct sockaddr *)&from, flen);
	}
}

/* An sp_addr_t naming the fake nameserver, for sp_resolver_new / conf. */
static inline sp_addr_t dns_addr(const fake_dns_t *d)
{
	sp_addr_t ns;
	memset(&ns, 0, sizeof(ns));
	struct sockaddr_in *sa = (struct sockaddr_in *)&ns.ss;
	sa->sin_family = AF_INET;
	sa->sin_port = htons(d->port);
	sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ns.len = sizeof(*sa);
	snprintf(ns.text, sizeof(ns.text), "127.0.0.1:%u", d->port);
	return ns;
}

#endif
