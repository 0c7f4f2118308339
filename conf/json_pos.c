/* json_pos: a second, tolerant pass over JSON text that jansson has already
 * validated, recording the line:col of every value and key as a tree of nodes
 * (first child / next sibling) that conf.c walks in step with jansson's. */
#include "conf/json_pos.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
	char *key; /* decoded member name; NULL for array elements and the root */
	sp_jpos_t pos, key_pos;
	size_t first, next; /* first child, next sibling */
} sp_jnode_t;

struct sp_jmap {
	sp_jnode_t *v;
	size_t n, cap;
};

typedef struct {
	const char *p, *end;
	sp_jpos_t at; /* position of *p */
	sp_jmap_t *m;
	int err;
} sp_jscan_t;

static int peek(const sp_jscan_t *s)
{
	return s->p < s->end ? (unsigned char)*s->p : -1;
}

/* UTF-8 continuation bytes do not start a column: jansson counts characters. */
static void adv(sp_jscan_t *s)
{
	unsigned char ch = (unsigned char)*s->p++;

	if (ch == '\n') {
		s->at.line++;
		s->at.col = 1;
	} else if ((ch & 0xC0) != 0x80) {
		s->at.col++;
	}
}

static void skip_ws(sp_jscan_t *s)
{
	int ch;

	while ((ch = peek(s)) == ' ' || ch == '\t' || ch == '\n' || ch == '\r')
		adv(s);
}

static size_t new_node(sp_jscan_t *s)
{
	sp_jmap_t *m = s->m;

	if (m->n == m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 64;
		sp_jnode_t *v = realloc(m->v, cap * sizeof(*v));
		if (!v) {
			s->err = -ENOMEM;
			return SP_JNONE;
		}
		m->v = v;
		m->cap = cap;
	}
	m->v[m->n] = (sp_jnode_t){.pos = s->at, .first = SP_JNONE, .next = SP_JNONE};
	return m->n++;
}

static int hex4(sp_jscan_t *s, unsigned *out)
{
	unsigned v = 0;

	for (int i = 0; i < 4; i++) {
		int ch = peek(s);
		if (ch >= '0' && ch <= '9')
			v = v * 16 + (unsigned)(ch - '0');
		else if ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f')
			v = v * 16 + (unsigned)((ch | 0x20) - 'a' + 10);
		else
			return -EINVAL;
		adv(s);
	}
	*out = v;
	return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xC0 | cp >> 6);
		o[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xE0 | cp >> 12);
		o[1] = (char)(0x80 | (cp >> 6 & 0x3F));
		o[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	o[0] = (char)(0xF0 | cp >> 18);
	o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
	o[2] = (char)(0x80 | (cp >> 6 & 0x3F));
	o[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* Skip a string at s->p; if out, decode it the way jansson does so member
 * look-ups compare equal to jansson's keys. A decoded string is never longer
 * than its escaped form, so the raw length bounds the buffer. */
static int scan_string(sp_jscan_t *s, char **out)
{
	const char *start = s->p;
	char *buf = NULL;
	size_t n = 0;
	int ch;

	adv(s); /* opening quote */
	if (out) {
		const char *q = start + 1;
		while (q < s->end && *q != '"')
			q += (*q == '\\' && q + 1 < s->end) ? 2 : 1;
		buf = malloc((size_t)(q - start));
		if (!buf)
			return s->err = -ENOMEM;
	}
	while ((ch = peek(s)) != '"') {
		if (ch < 0)
			goto err;
		adv(s);
		if (ch != '\\') {
			if (buf)
				buf[n++] = (char)ch;
			continue;
		}
		ch = peek(s);
		if (ch < 0)
			goto err;
		adv(s);
		unsigned cp = (unsigned)ch;
		switch (ch) {
		case 'b':
			cp = '\b';
			break;
		case 'f':
			cp = '\f';
			break;
		case 'n':
			cp = '\n';
			break;
		case 'r':
			cp = '\r';
			break;
		case 't':
			cp = '\t';
			break;
		case 'u':
			if (hex4(s, &cp) < 0)
				goto err;
			if (cp >= 0xD800 && cp < 0xDC00 && peek(s) == '\\') {
				unsigned lo;
				adv(s);
				if (peek(s) != 'u')
					goto err;
				adv(s);
				if (hex4(s, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF)
					goto err;
				cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
			}
			break;
		}
		if (buf)
			n += put_utf8(buf + n, cp);
	}
	adv(s); /* closing quote */
	if (out) {
		buf[n] = '\0';
		*out = buf;
	}
	return 0;
err:
	free(buf);
	return s->err = s->err ? s->err : -EINVAL;
}

static size_t scan_value(sp_jscan_t *s)
{
	skip_ws(s);
	size_t id = new_node(s);
	int ch = peek(s);

	if (id == SP_JNONE || ch < 0)
		return SP_JNONE;
	if (ch == '"')
		return scan_string(s, NULL) < 0 ? SP_JNONE : id;
	if (ch != '{' && ch != '[') { /* number, true, false, null */
		while ((ch = peek(s)) >= 0 && !strchr(" \t\r\n,]}", ch))
			adv(s);
		return id;
	}

	bool obj = ch == '{';
	int close = obj ? '}' : ']';
	size_t last = SP_JNONE;

	adv(s);
	skip_ws(s);
	if (peek(s) == close) {
		adv(s);
		return id;
	}
	for (;;) {
		char *key = NULL;
		sp_jpos_t kpos = {0, 0};

		if (obj) {
			skip_ws(s);
			kpos = s->at;
			if (peek(s) != '"' || scan_string(s, &key) < 0)
				return SP_JNONE;
			skip_ws(s);
			if (peek(s) != ':') {
				free(key);
				return SP_JNONE;
			}
			adv(s);
		}
		size_t kid = scan_value(s);
		if (kid == SP_JNONE) {
			free(key);
			return SP_JNONE;
		}
		s->m->v[kid].key = key;
		s->m->v[kid].key_pos = kpos;
		if (last == SP_JNONE)
			s->m->v[id].first = kid;
		else
			s->m->v[last].next = kid;
		last = kid;
		skip_ws(s);
		ch = peek(s);
		if (ch < 0)
			return SP_JNONE;
		adv(s);
		if (ch == close)
			return id;
		if (ch != ',')
			return SP_JNONE;
	}
}

int sp_jmap_build(sp_jmap_t **out, const char *text, size_t len)
{
	sp_jmap_t *m = calloc(1, sizeof(*m));
	sp_jscan_t s = {.p = text, .end = text + len, .at = {1, 1}, .m = m};

	*out = NULL;
	if (!m)
		return -ENOMEM;
	if (scan_value(&s) == SP_JNONE)
		goto err;
	*out = m;
	return 0;
err:
	sp_jmap_free(m);
	return s.err ? s.err : -EINVAL;
}

void sp_jmap_free(sp_jmap_t *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->n; i++)
		free(m->v[i].key);
	free(m->v);
	free(m);
}

size_t sp_jmap_root(const sp_jmap_t *m)
{
	return m && m->n ? 0 : SP_JNONE;
}

size_t sp_jmap_member(const sp_jmap_t *m, size_t obj, const char *key)
{
	if (!m || obj == SP_JNONE)
		return SP_JNONE;
	for (size_t i = m->v[obj].first; i != SP_JNONE; i = m->v[i].next)
		if (m->v[i].key && strcmp(m->v[i].key, key) == 0)
			return i;
	return SP_JNONE;
}

size_t sp_jmap_elem(const sp_jmap_t *m, size_t arr, size_t i)
{
	if (!m || arr == SP_JNONE)
		return SP_JNONE;
	size_t k = m->v[arr].first;
	while (k != SP_JNONE && i--)
		k = m->v[k].next;
	return k;
}

sp_jpos_t sp_jmap_pos(const sp_jmap_t *m, size_t node)
{
	return m && node != SP_JNONE ? m->v[node].pos : (sp_jpos_t){0, 0};
}

sp_jpos_t sp_jmap_key_pos(const sp_jmap_t *m, size_t node)
{
	return m && node != SP_JNONE ? m->v[node].key_pos : (sp_jpos_t){0, 0};
}
