/* conf: JSON file -> one immutable sp_conf_t. A table per object kind (the
 * nginx model) drives parsing, defaults, range checks and error messages;
 * json_pos.c supplies the line:col each error points at. */
#include "conf/conf.h"
#include "conf/json_pos.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#ifndef SP_CONF_NUMERIC_ONLY
#include <ares.h>
#endif
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Enums are stored through an int pointer by the generic enum setter. */
_Static_assert(sizeof(sp_steering_t) == sizeof(int), "enum size");
_Static_assert(sizeof(sp_affinity_t) == sizeof(int), "enum size");
_Static_assert(sizeof(sp_proxy_proto_t) == sizeof(int), "enum size");
_Static_assert(sizeof(sp_io_t) == sizeof(int), "enum size");

static const char *const steering_names[] = {"hash", "cpu", "least_conn", "none"};
static const char *const relay_names[] = {"auto", "copy", "splice"};
static const char *const affinity_names[] = {"pin", "none"};
static const char *const io_names[] = {"auto", "io_uring", "epoll"};
static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char *const format_names[] = {"text", "json"};
static const char *const balance_names[] = {"round_robin", "least_conn", "source_hash",
					    "random_two"};
/* SP_PROXY_PROTO_NONE is spelled null, never as a string: "" is never accepted. */
static const char *const proxy_proto_names[] = {"", "v1", "v2"};

/* One error, kept with its position so the list can be sorted into file order. */
typedef struct {
	sp_jpos_t at;
	size_t seq;
	char *msg;
} conf_err_t;

typedef struct {
	const char *file;
	sp_jmap_t *map;
	sp_conf_t *conf;
	conf_err_t *errs;
	size_t nerr, cap;
	bool oom;
	char path[512]; /* JSON path of the value being parsed, "listeners[0].name" */
	size_t plen;
} ctx_t;

typedef enum { F_INT, F_BOOL, F_ENUM, F_NAME, F_ADDR, F_OBJECT, F_ARRAY, F_LIST, F_CUSTOM } ftype_t;

typedef struct conf_field conf_field_t;
typedef struct conf_schema conf_schema_t;
typedef int (*setter_fn)(ctx_t *c, const conf_field_t *f, json_t *v, size_t node, void *base);
typedef int (*elem_fn)(ctx_t *c, const char *s, size_t node, void *slot);

/* One key of one object kind. Offsets are relative to the C struct of the
 * enclosing array element (or sp_conf_t): embedded sub-objects such as "log"
 * or "health_check" share their parent's base, so one offsetof reaches them. */
struct conf_field {
	const char *key;
	ftype_t type;
	bool required;
	bool nullable;		  /* null is accepted and means "use the default" */
	bool passive;		  /* F_ADDR: a listen address ("*" allowed, AI_PASSIVE) */
	bool names_later;	  /* F_ADDR: an upstream server's; names go to the resolver */
	long long def, min, max;  /* default (INT/BOOL/ENUM); range (INT) or element count */
	const char *const *names; /* F_ENUM */
	size_t nnames;
	size_t off;   /* the field, or the array pointer */
	size_t off_n; /* F_ARRAY/F_LIST: the size_t element count */
	bool has_on;  /* set the bool at off_on when the key is present and not null */
	size_t off_on;
	const conf_schema_t *sub; /* F_OBJECT, F_ARRAY */
	setter_fn set;		  /* F_CUSTOM; its default is the zeroed field */
	elem_fn elem;		  /* F_LIST: parse one string into a slot */
	size_t elem_size;
};

struct conf_schema {
	size_t size; /* C element size when used in an array */
	const conf_field_t *fields;
	size_t nfields;
	/* Cross-field rules; run only when the object's own fields had no error,
	 * since comparing a rejected value would only add a confusing error. */
	void (*check)(ctx_t *c, void *base, size_t node);
	/* Rules across the elements of an array (unique names); always run. */
	void (*check_all)(ctx_t *c, void *arr, size_t n, size_t node);
};

/* ---- errors and paths ---- */

static void verr_at(ctx_t *c, sp_jpos_t at, const char *fmt, va_list ap)
{
	char *body = NULL, *msg = NULL;

	if (vasprintf(&body, fmt, ap) < 0)
		goto oom;
	int r = at.line ? asprintf(&msg, "%s:%u:%u: %s%s%s", c->file, at.line, at.col, c->path,
				   c->plen ? ": " : "", body)
			: asprintf(&msg, "%s: %s%s%s", c->file, c->path, c->plen ? ": " : "", body);
	free(body);
	if (r < 0)
		goto oom;
	if (c->nerr == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 8;
		conf_err_t *e = realloc(c->errs, cap * sizeof(*e));
		if (!e) {
			free(msg);
			goto oom;
		}
		c->errs = e;
		c->cap = cap;
	}
	c->errs[c->nerr] = (conf_err_t){at, c->nerr, msg};
	c->nerr++;
	return;
oom:
	c->oom = true;
}

/* Returns -EINVAL so that setters can end with "return err_at(...)". */
static int __attribute__((format(printf, 3, 4))) err_at(ctx_t *c, size_t node, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	verr_at(c, sp_jmap_pos(c->map, node), fmt, ap);
	va_end(ap);
	return -EINVAL;
}

static void __attribute__((format(printf, 3, 4)))
err_pos(ctx_t *c, sp_jpos_t at, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	verr_at(c, at, fmt, ap);
	va_end(ap);
}

/* Paths are pushed as the walk descends and popped back to the saved length. */
static size_t __attribute__((format(printf, 2, 3))) path_push(ctx_t *c, const char *fmt, ...)
{
	size_t old = c->plen;
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(c->path + c->plen, sizeof(c->path) - c->plen, fmt, ap);
	va_end(ap);
	if (n > 0)
		c->plen += (size_t)n < sizeof(c->path) - c->plen ? (size_t)n
								 : sizeof(c->path) - c->plen - 1;
	return old;
}

/* Keys come from the file: control characters would break the one-line format. */
static size_t path_key(ctx_t *c, const char *key)
{
	size_t old = path_push(c, "%s%s", c->plen ? "." : "", key);

	for (size_t i = old; i < c->plen; i++)
		if ((unsigned char)c->path[i] < 0x20 || c->path[i] == 0x7f)
			c->path[i] = '?';
	return old;
}

static void path_pop(ctx_t *c, size_t old)
{
	c->plen = old;
	c->path[old] = '\0';
}

/* A user string made safe for one line of log: quoted, escaped, truncated. */
static const char *quote(const char *s, char *buf, size_t len)
{
	size_t n = 0;

	buf[n++] = '"';
	/* Room is kept for one escape (4), "..." (3), the quote and the NUL. */
	for (; *s && n + 9 < len; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			n += (size_t)snprintf(buf + n, len - n, "\\%c", ch);
		else if (ch < 0x20 || ch == 0x7f)
			n += (size_t)snprintf(buf + n, len - n, "\\x%02x", ch);
		else
			buf[n++] = (char)ch;
	}
	if (*s)
		n += (size_t)snprintf(buf + n, len - n, "...");
	snprintf(buf + n, len - n, "\"");
	return buf;
}

static const char *type_name(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:
		return "an object";
	case JSON_ARRAY:
		return "an array";
	case JSON_STRING:
		return "a string";
	case JSON_INTEGER:
		return "an integer";
	case JSON_REAL:
		return "a real number";
	case JSON_TRUE:
	case JSON_FALSE:
		return "a boolean";
	default:
		return "null";
	}
}

static int type_err(ctx_t *c, size_t node, const char *want, const json_t *v)
{
	return err_at(c, node, "expected %s, got %s", want, type_name(v));
}

/* ---- generic setters ---- */

static int get_int(ctx_t *c, json_t *v, size_t node, long long min, long long max, long long *out)
{
	if (!json_is_integer(v)) {
		type_err(c, node, "an integer", v);
		return -EINVAL;
	}
	long long x = json_integer_value(v);
	if (x < min || x > max) {
		err_at(c, node, "must be between %lld and %lld, got %lld", min, max, x);
		return -ERANGE;
	}
	*out = x;
	return 0;
}

static int set_enum(ctx_t *c, const conf_field_t *f, json_t *v, size_t node, int *dst)
{
	char allowed[256], q[80];
	size_t n = (size_t)snprintf(allowed, sizeof(allowed), "%s", f->nullable ? "null" : "");

	for (size_t i = 0; i < f->nnames; i++) {
		if (json_is_string(v) && f->names[i][0] &&
		    strcmp(json_string_value(v), f->names[i]) == 0) {
			*dst = (int)i;
			return 0;
		}
		if (f->names[i][0] && n < sizeof(allowed))
			n += (size_t)snprintf(allowed + n, sizeof(allowed) - n, "%s\"%s\"",
					      n ? ", " : "", f->names[i]);
	}
	if (json_is_string(v))
		return err_at(c, node, "invalid value %s; expected one of: %s",
			      quote(json_string_value(v), q, sizeof(q)), allowed);
	return err_at(c, node, "expected one of: %s; got %s", allowed, type_name(v));
}

static int set_name(ctx_t *c, json_t *v, size_t node, char *dst)
{
	char q[80];

	if (!json_is_string(v))
		return type_err(c, node, "a string", v);
	const char *s = json_string_value(v);
	size_t n = json_string_length(v), i = 0;
	while (i < n && (((s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'z') ||
			 (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '.' || s[i] == '-'))
		i++;
	if (n == 0 || n >= SP_CONF_NAME_MAX || i < n)
		return err_at(c, node,
			      "invalid name %s: use 1 to %d characters of A-Z a-z 0-9 _ . -",
			      quote(s, q, sizeof(q)), SP_CONF_NAME_MAX - 1);
	memcpy(dst, s, n + 1);
	return 0;
}

static bool valid_hostname(const char *s);

/* A listen address's host name comes from /etc/hosts only: a socket binds
 * a local address, which DNS does not know, and asking it would block. A
 * name with both families takes its IPv4 address ("localhost" is then
 * 127.0.0.1 whatever the file's order). */
static int hosts_lookup(const char *host, const char *port, struct sockaddr_storage *ss,
			socklen_t *len)
{
#ifdef SP_CONF_NUMERIC_ONLY /* the fuzzer: no file access */
	(void)host, (void)port, (void)ss, (void)len;
	return -ENOENT;
#else
	static const int fams[] = {AF_INET, AF_INET6};
	ares_channel ch;
	/* c-ares 1.18 reads the hosts file only through a channel (creating one
	 * reads resolv.conf, and sends nothing). */
	if (ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS || ares_init(&ch) != ARES_SUCCESS)
		return -ENOMEM;
	for (size_t i = 0; i < ARRAY_SIZE(fams); i++) {
		struct hostent *he = NULL;
		if (ares_gethostbyname_file(ch, host, fams[i], &he) != ARES_SUCCESS || !he)
			continue;
		memset(ss, 0, sizeof(*ss));
		if (fams[i] == AF_INET) {
			struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
			s4->sin_family = AF_INET;
			s4->sin_port = htons((uint16_t)atoi(port));
			memcpy(&s4->sin_addr, he->h_addr_list[0], 4);
			*len = sizeof(*s4);
		} else {
			struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
			s6->sin6_family = AF_INET6;
			s6->sin6_port = htons((uint16_t)atoi(port));
			memcpy(&s6->sin6_addr, he->h_addr_list[0], 16);
			*len = sizeof(*s6);
		}
		ares_free_hostent(he);
		ares_destroy(ch);
		return 0;
	}
	ares_destroy(ch);
	return -ENOENT;
#endif
}

/* "host:port", "[v6]:port", or for listen addresses "*:port" (0.0.0.0).
 * An IP address is filled in at once. A host name is, for a listen address,
 * looked up in /etc/hosts; for an upstream server (f->names_later), left to
 * the supervisor's resolver, with the server marked dns. */
static int set_addr(ctx_t *c, const conf_field_t *f, json_t *v, size_t node, void *base)
{
	sp_addr_t *a = (sp_addr_t *)((char *)base + f->off);
	char host[sizeof(a->text)], q[160], qh[80];
	const char *port, *sep;
	bool v6 = false;

	if (!json_is_string(v))
		return type_err(c, node, f->nullable ? "a string or null" : "a string", v);
	const char *s = json_string_value(v);
	size_t n = json_string_length(v);
	if (n >= sizeof(a->text))
		return err_at(c, node, "address is too long (at most %zu characters)",
			      sizeof(a->text) - 1);
	if (s[0] == '[') {
		v6 = true;
		sep = strchr(s, ']');
		if (!sep || sep[1] != ':')
			goto form;
		memcpy(host, s + 1, (size_t)(sep - s - 1));
		host[sep - s - 1] = '\0';
		port = sep + 2;
	} else {
		sep = strrchr(s, ':');
		if (!sep)
			goto form;
		memcpy(host, s, (size_t)(sep - s));
		host[sep - s] = '\0';
		port = sep + 1;
		if (strchr(host, ':'))
			return err_at(c, node,
				      "invalid address %s: put IPv6 addresses in brackets, as in "
				      "\"[::1]:%s\"",
				      quote(s, q, sizeof(q)), port);
	}
	if (!host[0])
		goto form;
	if (strcmp(host, "*") == 0) {
		if (!f->passive)
			return err_at(c, node,
				      "invalid address %s: \"*\" is only valid in a listen address",
				      quote(s, q, sizeof(q)));
		strcpy(host, "0.0.0.0");
	}
	size_t pl = strspn(port, "0123456789");
	if (pl == 0 || pl > 5 || port[pl] || atoi(port) < 1 || atoi(port) > 65535)
		return err_at(c, node, "invalid port in %s: must be 1 to 65535",
			      quote(s, q, sizeof(q)));

	/* Numeric only: this never asks a resolver. */
	struct addrinfo hints = {.ai_family = v6 ? AF_INET6 : AF_UNSPEC,
				 .ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_NUMERICSERV | AI_NUMERICHOST |
					     (f->passive ? AI_PASSIVE : 0)};
	struct addrinfo *res = NULL;
	int rc = getaddrinfo(host, port, &hints, &res);
	if (rc == 0 && res->ai_addrlen <= sizeof(a->ss)) {
		memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
		a->len = res->ai_addrlen;
	} else if (v6) {
		if (res)
			freeaddrinfo(res);
		return err_at(c, node, "invalid address %s: %s is not an IPv6 address",
			      quote(s, q, sizeof(q)), quote(host, qh, sizeof(qh)));
	} else {
		for (char *p = host; *p; p++)
			if (*p >= 'A' && *p <= 'Z')
				*p = (char)(*p + 32);
		if (!valid_hostname(host)) {
			if (res)
				freeaddrinfo(res);
			return err_at(c, node, "invalid address %s: %s is neither an IP address "
					       "nor a host name",
				      quote(s, q, sizeof(q)), quote(host, qh, sizeof(qh)));
		}
		if (f->names_later) {
			sp_server_t *srv = base;
			sp_jpos_t at = sp_jmap_pos(c->map, node);
			srv->dns = true;
			srv->port = (uint16_t)atoi(port);
			snprintf(srv->host, sizeof(srv->host), "%s", host);
			int w = at.line ? snprintf(srv->where, sizeof(srv->where), "%s:%u:%u: %s",
						   c->file, at.line, at.col, c->path)
					: snprintf(srv->where, sizeof(srv->where), "%s: %s", c->file,
						   c->path);
			if (w >= (int)sizeof(srv->where)) /* a very long path: keep its end */
				memcpy(srv->where + sizeof(srv->where) - 4, "...", 4);
			a->len = 0;
		} else if (hosts_lookup(host, port, &a->ss, &a->len) < 0) {
			if (res)
				freeaddrinfo(res);
			return err_at(c, node,
				      "cannot resolve %s: not an IP address and not in /etc/hosts "
				      "(a listen address is never looked up in DNS)",
				      quote(host, q, sizeof(q)));
		}
	}
	if (res)
		freeaddrinfo(res);
	memcpy(a->text, s, n + 1);
	if (f->has_on)
		*(bool *)((char *)base + f->off_on) = true;
	return 0;
form:
	return err_at(c, node, "invalid address %s: expected %s", quote(s, q, sizeof(q)),
		      f->passive ? "\"host:port\", \"[v6]:port\" or \"*:port\""
				 : "\"host:port\" or \"[v6]:port\"");
}

static int parse_object(ctx_t *c, const conf_schema_t *s, json_t *j, size_t node, void *base);
static void apply_defaults(const conf_schema_t *s, void *base);

static int set_array(ctx_t *c, const conf_field_t *f, json_t *v, size_t node, void *base)
{
	bool objects = f->type == F_ARRAY;
	size_t size = objects ? f->sub->size : f->elem_size;

	if (!json_is_array(v))
		return type_err(c, node, "an array", v);
	size_t n = json_array_size(v);
	if ((long long)n < f->min)
		return err_at(c, node, "must not be empty");
	if ((long long)n > f->max)
		return err_at(c, node, "has %zu elements; at most %lld are allowed", n, f->max);
	if (n == 0)
		return 0;
	char *arr = calloc(n, size);
	if (!arr) {
		c->oom = true;
		return -ENOMEM;
	}
	/* Stored before the elements are filled so sp_conf_free sees them all. */
	*(void **)((char *)base + f->off) = arr;
	*(size_t *)((char *)base + f->off_n) = n;
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_array_get(v, i);
		size_t en = sp_jmap_elem(c->map, node, i);
		size_t old = path_push(c, "[%zu]", i);
		if (objects) {
			apply_defaults(f->sub, arr + i * size);
			parse_object(c, f->sub, e, en, arr + i * size);
		} else if (!json_is_string(e)) {
			type_err(c, en, "a string", e);
		} else {
			f->elem(c, json_string_value(e), en, arr + i * size);
		}
		path_pop(c, old);
	}
	if (objects && f->sub->check_all)
		f->sub->check_all(c, arr, n, node);
	return 0;
}

static int set_field(ctx_t *c, const conf_field_t *f, json_t *v, size_t node, void *base)
{
	char *dst = (char *)base + f->off;
	long long x;
	int rc;

	switch (f->type) {
	case F_INT:
		if ((rc = get_int(c, v, node, f->min, f->max, &x)) == 0)
			*(uint32_t *)dst = (uint32_t)x;
		return rc;
	case F_BOOL:
		if (!json_is_boolean(v))
			return type_err(c, node, "a boolean", v);
		*(bool *)dst = json_is_true(v);
		return 0;
	case F_ENUM:
		return set_enum(c, f, v, node, (int *)dst);
	case F_NAME:
		return set_name(c, v, node, dst);
	case F_ADDR:
		return set_addr(c, f, v, node, base);
	case F_OBJECT:
		if (!json_is_object(v))
			return type_err(c, node, f->nullable ? "an object or null" : "an object",
					v);
		if (f->has_on)
			*(bool *)((char *)base + f->off_on) = true;
		return parse_object(c, f->sub, v, node, base);
	case F_ARRAY:
	case F_LIST:
		return set_array(c, f, v, node, base);
	case F_CUSTOM:
		return f->set(c, f, v, node, base);
	}
	return -EINVAL;
}

/* Defaults go in first, so a field whose value is rejected keeps a sane one. */
static void apply_defaults(const conf_schema_t *s, void *base)
{
	for (size_t i = 0; i < s->nfields; i++) {
		const conf_field_t *f = &s->fields[i];
		char *dst = (char *)base + f->off;
		switch (f->type) {
		case F_INT:
			*(uint32_t *)dst = (uint32_t)f->def;
			break;
		case F_BOOL:
			*(bool *)dst = f->def;
			break;
		case F_ENUM:
			*(int *)dst = (int)f->def;
			break;
		case F_OBJECT:
			apply_defaults(f->sub, base);
			break;
		case F_CUSTOM:
			/* Custom fields default to zero, except a bool one may say true
			 * (log.access_log: a boolean or a file name). */
			if (f->def)
				*(bool *)dst = true;
			break;
		default:
			break;
		}
	}
}

static int parse_object(ctx_t *c, const conf_schema_t *s, json_t *j, size_t node, void *base)
{
	size_t before = c->nerr, old;
	const char *key;
	json_t *v;

	if (!json_is_object(j))
		return type_err(c, node, "an object", j);
	for (size_t i = 0; i < s->nfields; i++) {
		const conf_field_t *f = &s->fields[i];
		v = json_object_get(j, f->key);
		old = path_key(c, f->key);
		if (!v && f->required)
			err_at(c, node, "missing required key");
		else if (v && !(json_is_null(v) && f->nullable))
			set_field(c, f, v, sp_jmap_member(c->map, node, f->key), base);
		path_pop(c, old);
	}
	json_object_foreach(j, key, v)
	{
		size_t i = 0;
		while (i < s->nfields && strcmp(s->fields[i].key, key) != 0)
			i++;
		if (i < s->nfields)
			continue;
		char allowed[512];
		size_t n = 0;
		for (i = 0; i < s->nfields && n < sizeof(allowed); i++)
			n += (size_t)snprintf(allowed + n, sizeof(allowed) - n, "%s%s",
					      i ? ", " : "", s->fields[i].key);
		old = path_key(c, key);
		err_pos(c, sp_jmap_key_pos(c->map, sp_jmap_member(c->map, node, key)),
			"unknown key; expected one of: %s", allowed);
		path_pop(c, old);
	}
	if (c->nerr != before)
		return -EINVAL;
	if (s->check)
		s->check(c, base, node);
	return c->nerr == before ? 0 : -EINVAL;
}

/* An error about member key of the object at node: at its value if present. */
static void __attribute__((format(printf, 4, 5)))
member_err(ctx_t *c, size_t node, const char *key, const char *fmt, ...)
{
	size_t m = sp_jmap_member(c->map, node, key), old = path_key(c, key);
	va_list ap;

	va_start(ap, fmt);
	verr_at(c, sp_jmap_pos(c->map, m != SP_JNONE ? m : node), fmt, ap);
	va_end(ap);
	path_pop(c, old);
}

/* ---- custom fields and checks ---- */

static int set_workers(ctx_t *c, const conf_field_t *f, json_t *v, size_t node, void *base)
{
	long long x;

	if (json_is_string(v) && strcmp(json_string_value(v), "auto") == 0)
		x = 0;
	else if (!json_is_integer(v))
		return err_at(c, node, "expected \"auto\" or an integer, got %s", type_name(v));
	else if (get_int(c, v, node, 1, SP_CONF_MAX_WORKERS, &x) < 0)
		return -ERANGE;
	*(uint32_t *)((char *)base + f->off) = (uint32_t)x;
	return 0;
}

/* log.access_log: true (stderr), false (off) or a file name to append to. */
static int set_access_log(ctx_t *c, const conf_field_t *f, json_t *v, size_t node, void *base)
{
	sp_conf_t *conf = base;
	char q[80];
	(void)f;

	if (json_is_boolean(v)) {
		conf->log.access_log = json_is_true(v);
		return 0;
	}
	if (!json_is_string(v))
		return err_at(c, node, "expected a boolean or a file path, got %s", type_name(v));
	/* A path has a '/': "yes" or "stderr" is a mistake, not a file to create. */
	if (!strchr(json_string_value(v), '/') || json_string_length(v) >= 4096 ||
	    strlen(json_string_value(v)) != json_string_length(v))
		return err_at(c, node,
			      "expected a boolean or a file path, got %s; write a path with a "
			      "'/', as in \"/var/log/shardproxy/access.log\" or \"./access.log\"",
			      quote(json_string_value(v), q, sizeof(q)));
	free(conf->log.access_log_path);
	if (!(conf->log.access_log_path = strdup(json_string_value(v)))) {
		c->oom = true;
		return -ENOMEM;
	}
	conf->log.access_log = true;
	return 0;
}

/* An account name as POSIX spells them, or a number. */
static int account_name(ctx_t *c, json_t *v, size_t node, char *dst, bool *numeric, long *id)
{
	char q[80];

	if (!json_is_string(v))
		return type_err(c, node, "a string", v);
	const char *s = json_string_value(v);
	size_t n = json_string_length(v), i = 0;
	while (i < n && (((s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'z') ||
			 (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '.' || s[i] == '-'))
		i++;
	if (n == 0 || n >= SP_CONF_NAME_MAX || i < n || s[0] == '-')
		return err_at(c, node, "invalid name %s: expected a user or group name or id",
			      quote(s, q, sizeof(q)));
	memcpy(dst, s, n + 1);
	*numeric = strspn(s, "0123456789") == n;
	*id = *numeric && n <= 9 ? atol(s) : -1;
	return 0;
}

static int set_user(ctx_t *c, const conf_field_t *f, json_t *v, size_t node, void *base)
{
	sp_conf_t *conf = base;
	char q[80], buf[16384];
	struct passwd pw, *res = NULL;
	bool numeric;
	long id;
	(void)f;

	if (account_name(c, v, node, conf->user.name, &numeric, &id) < 0)
		return -EINVAL;
	int rc = numeric ? getpwuid_r((uid_t)id, &pw, buf, sizeof(buf), &res)
			 : getpwnam_r(conf->user.name, &pw, buf, sizeof(buf), &res);
	if (!res && !(numeric && id >= 0))
		return err_at(c, node, "unknown user %s%s%s", quote(conf->user.name, q, sizeof(q)),
			      rc ? ": " : "", rc ? strerror(rc) : "");
	/* A numeric id need not be in the password database: its group is the same number. */
	conf->user.uid = res ? pw.pw_uid : (uid_t)id;
	conf->user.gid = res ? pw.pw_gid : (gid_t)id;
	if (res)
		snprintf(conf->user.name, sizeof(conf->user.name), "%s", pw.pw_name);
	conf->user.set = true;
	return 0;
}

static int set_group(ctx_t *c, const conf_field_t *f, json_t *v, size_t node, void *base)
{
	sp_conf_t *conf = base;
	char q[80], buf[16384];
	struct group gr, *res = NULL;
	bool numeric;
	long id;
	(void)f;

	if (account_name(c, v, node, conf->group.name, &numeric, &id) < 0)
		return -EINVAL;
	int rc = numeric ? getgrgid_r((gid_t)id, &gr, buf, sizeof(buf), &res)
			 : getgrnam_r(conf->group.name, &gr, buf, sizeof(buf), &res);
	if (!res && !(numeric && id >= 0))
		return err_at(c, node, "unknown group %s%s%s",
			      quote(conf->group.name, q, sizeof(q)), rc ? ": " : "",
			      rc ? strerror(rc) : "");
	conf->group.gid = res ? gr.gr_gid : (gid_t)id;
	if (res)
		snprintf(conf->group.name, sizeof(conf->group.name), "%s", gr.gr_name);
	conf->group.set = true;
	return 0;
}

static int set_route_upstream(ctx_t *c, const conf_field_t *f, json_t *v, size_t node, void *base)
{
	char q[80];

	if (!json_is_string(v))
		return type_err(c, node, "a string", v);
	/* The root table parses upstreams first. Without any, or with one whose
	 * name was rejected, that is the error to report, not this reference. */
	if (!c->conf->nupstreams)
		return 0;
	for (size_t i = 0; i < c->conf->nupstreams; i++)
		if (!c->conf->upstreams[i].name[0])
			return 0;
	int i = sp_conf_upstream_index(c->conf, json_string_value(v));
	if (i < 0)
		return err_at(c, node, "unknown upstream %s",
			      quote(json_string_value(v), q, sizeof(q)));
	*(size_t *)((char *)base + f->off) = (size_t)i;
	return 0;
}

static bool valid_hostname(const char *s)
{
	size_t n = strlen(s), label = 0;

	if (n == 0 || n > 253)
		return false;
	for (; *s; s++) {
		if (*s == '.') {
			if (label == 0)
				return false;
			label = 0;
		} else if ((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-' ||
			   *s == '_') {
			if (++label > 63)
				return false;
		} else {
			return false;
		}
	}
	return label > 0;
}

static int sni_elem(ctx_t *c, const char *s, size_t node, void *slot)
{
	char q[80], *low = strdup(s);

	if (!low) {
		c->oom = true;
		return -ENOMEM;
	}
	for (char *p = low; *p; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p + 32);
	if (!valid_hostname(strncmp(low, "*.", 2) == 0 ? low + 2 : low)) {
		err_at(c, node, "invalid server name %s: expected a host name or \"*.suffix\"",
		       quote(s, q, sizeof(q)));
		free(low);
		return -EINVAL;
	}
	*(char **)slot = low;
	return 0;
}

static int source_elem(ctx_t *c, const char *s, size_t node, void *slot)
{
	sp_cidr_t *cidr = slot;
	char buf[64], q[80], fix[INET6_ADDRSTRLEN];
	const char *slash = strchr(s, '/');
	size_t alen = slash ? (size_t)(slash - s) : strlen(s);
	long prefix = -1;

	if (alen >= sizeof(buf))
		goto bad;
	memcpy(buf, s, alen);
	buf[alen] = '\0';
	if (inet_pton(AF_INET, buf, cidr->addr) == 1)
		cidr->family = AF_INET;
	else if (inet_pton(AF_INET6, buf, cidr->addr) == 1)
		cidr->family = AF_INET6;
	else
		goto bad;
	int bits = cidr->family == AF_INET ? 32 : 128;
	if (slash) {
		size_t pl = strspn(slash + 1, "0123456789");
		if (pl == 0 || pl > 3 || slash[1 + pl] || (prefix = atol(slash + 1)) > bits)
			goto bad;
	}
	cidr->prefix = (uint8_t)(prefix < 0 ? bits : prefix);

	uint8_t masked[16] = {0};
	for (int i = 0; i < bits / 8; i++) {
		int keep = cidr->prefix - i * 8;
		masked[i] = keep >= 8	? cidr->addr[i]
			    : keep <= 0 ? 0
					: cidr->addr[i] & (0xFF << (8 - keep));
	}
	if (memcmp(masked, cidr->addr, (size_t)bits / 8) != 0) {
		inet_ntop(cidr->family, masked, fix, sizeof(fix));
		err_at(c, node,
		       "invalid CIDR %s: host bits are set beyond /%u; did you mean \"%s/%u\"?",
		       quote(s, q, sizeof(q)), cidr->prefix, fix, cidr->prefix);
		return -EINVAL;
	}
	/* "::ffff:10.0.0.0/104" is 10.0.0.0/8: clients are matched as IPv4 then. */
	if (cidr->family == AF_INET6 && cidr->prefix >= 96 &&
	    IN6_IS_ADDR_V4MAPPED((struct in6_addr *)cidr->addr)) {
		memmove(cidr->addr, cidr->addr + 12, 4);
		memset(cidr->addr + 4, 0, 12);
		cidr->family = AF_INET;
		cidr->prefix -= 96;
	}
	return 0;
bad:
	err_at(c, node,
	       "invalid CIDR %s: expected an address, optionally with /prefix, as in "
	       "\"10.0.0.0/8\" or \"fd00::/8\"",
	       quote(s, q, sizeof(q)));
	return -EINVAL;
}

static void check_match(ctx_t *c, void *base, size_t node)
{
	const sp_route_t *r = base;

	if (!r->nsni && !r->nsource)
		err_at(c, node, "must have sni or source");
}

static void check_health(ctx_t *c, void *base, size_t node)
{
	const sp_health_check_t *h = &((sp_upstream_t *)base)->health_check;

	if (h->timeout_ms > h->interval_ms)
		member_err(c, node, "timeout_ms",
			   "timeout_ms (%u) must not exceed interval_ms (%u)", h->timeout_ms,
			   h->interval_ms);
}

/* Each server written with a host name becomes SP_CONF_DNS_SLOTS entries
 * in place (see conf.h), so the positions shards index by stay fixed while
 * the resolver changes the addresses behind them. */
static void expand_names(ctx_t *c, void *base, size_t node)
{
	sp_upstream_t *up = base;
	size_t names = 0;

	for (size_t i = 0; i < up->nservers; i++) {
		up->servers[i].origin = (uint16_t)i;
		names += up->servers[i].dns;
	}
	up->nnames = names;
	if (!names)
		return;
	size_t total = up->nservers - names + names * SP_CONF_DNS_SLOTS;
	if (total > SP_CONF_MAX_UPSTREAM_SERVERS) {
		member_err(c, node, "servers",
			   "%zu host names take %d entries each (one per address they may have): "
			   "%zu in all, at most %d per upstream",
			   names, SP_CONF_DNS_SLOTS, total, SP_CONF_MAX_UPSTREAM_SERVERS);
		return;
	}
	sp_server_t *x = calloc(total, sizeof(*x));
	if (!x) {
		c->oom = true;
		return;
	}
	size_t k = 0;
	for (size_t i = 0; i < up->nservers; i++) {
		unsigned slots = up->servers[i].dns ? SP_CONF_DNS_SLOTS : 1;
		for (unsigned j = 0; j < slots; j++) {
			x[k] = up->servers[i];
			x[k++].dns_slot = (uint8_t)j;
		}
	}
	free(up->servers);
	up->servers = x;
	up->nservers = total;
}

/* resolvers[]: nameservers are addresses (a name would need a nameserver). */
static int resolver_elem(ctx_t *c, const char *s, size_t node, void *slot)
{
	/* Parsed as a server address is (a name is then only marked), so that
	 * a name is refused instead of looked up. */
	static const conf_field_t f = {.key = "resolvers", .names_later = true};
	static sp_server_t tmp;
	json_t *v = json_string(s);
	sp_addr_t *a = slot;
	char q[80];
	if (!v) {
		c->oom = true;
		return -ENOMEM;
	}
	memset(&tmp, 0, sizeof(tmp));
	int rc = set_addr(c, &f, v, node, &tmp);
	json_decref(v);
	*a = tmp.addr;
	if (rc == 0 && tmp.dns)
		return err_at(c, node, "invalid nameserver %s: expected an IP address and port, "
				       "as in \"127.0.0.53:53\" or \"[::1]:53\"",
			      quote(s, q, sizeof(q)));
	return rc;
}

/* admin.socket: a path for an AF_UNIX socket (sun_path holds 107 bytes). */
static int set_admin_socket(ctx_t *c, const conf_field_t *f, json_t *v, size_t node, void *base)
{
	sp_conf_t *conf = base;
	char q[80];
	(void)f;
	if (!json_is_string(v))
		return type_err(c, node, "a string or null", v);
	const char *s = json_string_value(v);
	size_t n = json_string_length(v);
	/* 12 bytes of sun_path are kept for the ".<pid>" of the temporary name
	 * the socket is made at before it is renamed into place (admin.c). */
	size_t max = sizeof(conf->admin.socket) - 12;
	if (n == 0 || strlen(s) != n || n > max)
		return err_at(c, node, "invalid socket path %s: expected 1 to %zu bytes, as in "
				       "\"/run/shardproxy/admin.sock\"",
			      quote(s, q, sizeof(q)), max);
	memcpy(conf->admin.socket, s, n + 1);
	return 0;
}

static void check_servers(ctx_t *c, void *arr, size_t n, size_t node)
{
	const sp_server_t *s = arr;
	size_t nbackup = 0;

	for (size_t i = 0; i < n; i++)
		nbackup += s[i].backup;
	if (nbackup == n)
		err_at(c, node, "every server is a backup; at least one must not be");
}

/* O(n^2), fine for the tens of listeners and upstreams a file holds. */
static void check_unique_names(ctx_t *c, void *arr, size_t n, size_t node, size_t size,
			       const char *what)
{
	char q[80];

	for (size_t i = 1; i < n; i++) {
		const char *name = (const char *)arr + i * size; /* name is the first member */
		for (size_t k = 0; name[0] && k < i; k++) {
			if (strcmp(name, (const char *)arr + k * size) != 0)
				continue;
			size_t old = path_push(c, "[%zu]", i);
			member_err(c, sp_jmap_elem(c->map, node, i), "name",
				   "duplicate %s name %s: already used by %ss[%zu]", what,
				   quote(name, q, sizeof(q)), what, k);
			path_pop(c, old);
			break;
		}
	}
}

static void check_listeners(ctx_t *c, void *arr, size_t n, size_t node)
{
	const sp_listener_t *l = arr;

	check_unique_names(c, arr, n, node, sizeof(*l), "listener");
	for (size_t i = 1; i < n; i++) {
		for (size_t k = 0; l[i].listen.len && k < i; k++) {
			if (l[i].listen.len != l[k].listen.len ||
			    memcmp(&l[i].listen.ss, &l[k].listen.ss, l[i].listen.len) != 0)
				continue;
			size_t old = path_push(c, "[%zu]", i);
			member_err(c, sp_jmap_elem(c->map, node, i), "listen",
				   "address already used by listeners[%zu] (\"%s\")", k, l[k].name);
			path_pop(c, old);
			break;
		}
	}
}

static void check_upstreams(ctx_t *c, void *arr, size_t n, size_t node)
{
	const sp_upstream_t *up = arr;
	size_t total = 0;

	check_unique_names(c, arr, n, node, sizeof(sp_upstream_t), "upstream");
	for (size_t i = 0; i < n; i++)
		total += up[i].nservers;
	if (total > SP_CONF_MAX_SERVERS)
		err_at(c, node, "%zu servers in all; at most %d across all upstreams", total,
		       SP_CONF_MAX_SERVERS);
}

_Static_assert(offsetof(sp_listener_t, name) == 0, "check_unique_names needs name first");
_Static_assert(offsetof(sp_upstream_t, name) == 0, "check_unique_names needs name first");

/* ---- the schema (SPEC §4); docs/configuration.md mirrors these tables ---- */

#define AT(T, m) .off = offsetof(T, m)
#define INT(k, T, m, d, lo, hi) .key = k, .type = F_INT, AT(T, m), .def = d, .min = lo, .max = hi
#define BOOL(k, T, m, d) .key = k, .type = F_BOOL, AT(T, m), .def = d
#define ENUM(k, T, m, d, tab)                                                                      \
	.key = k, .type = F_ENUM, AT(T, m), .def = d, .names = tab, .nnames = ARRAY_SIZE(tab)
#define NAME(k, T, m) .key = k, .type = F_NAME, AT(T, m)
#define ADDR(k, T, m) .key = k, .type = F_ADDR, AT(T, m)
#define OBJECT(k, s) .key = k, .type = F_OBJECT, .sub = &s
#define ARRAY(k, T, m, s, lo, hi)                                                                  \
	.key = k, .type = F_ARRAY, AT(T, m), .off_n = offsetof(T, n##m), .sub = &s, .min = lo,     \
	.max = hi
#define LISTN(k, T, m, fn, et, hi)                                                                 \
	.key = k, .type = F_LIST, AT(T, m), .off_n = offsetof(T, n##m), .elem = fn,                \
	.elem_size = sizeof(et), .min = 1, .max = hi
#define LIST(k, T, m, fn, et) LISTN(k, T, m, fn, et, 65536)
#define CUSTOM(k, T, m, fn) .key = k, .type = F_CUSTOM, AT(T, m), .set = fn
#define ON(T, m) .has_on = true, .off_on = offsetof(T, m)
#define SCHEMA(T, tab) .size = sizeof(T), .fields = tab, .nfields = ARRAY_SIZE(tab)

static const conf_field_t server_fields[] = {
    {ADDR("address", sp_server_t, addr), .required = true, .names_later = true},
    {INT("weight", sp_server_t, weight, 1, 1, 256)},
    {BOOL("backup", sp_server_t, backup, false)},
};
static const conf_schema_t server_schema = {SCHEMA(sp_server_t, server_fields),
					    .check_all = check_servers};

static const conf_field_t health_fields[] = {
    {INT("interval_ms", sp_upstream_t, health_check.interval_ms, 2000, 100, 3600000)},
    {INT("timeout_ms", sp_upstream_t, health_check.timeout_ms, 1000, 10, 600000)},
    {INT("fall", sp_upstream_t, health_check.fall, 3, 1, 100)},
    {INT("rise", sp_upstream_t, health_check.rise, 2, 1, 100)},
};
static const conf_schema_t health_schema = {SCHEMA(sp_upstream_t, health_fields),
					    .check = check_health};

static const conf_field_t upstream_fields[] = {
    {NAME("name", sp_upstream_t, name), .required = true},
    {ENUM("balance", sp_upstream_t, balance, SP_BALANCE_ROUND_ROBIN, balance_names)},
    {ARRAY("servers", sp_upstream_t, servers, server_schema, 1, 256), .required = true},
    {INT("connect_timeout_ms", sp_upstream_t, connect_timeout_ms, 2000, 1, 600000)},
    {INT("idle_timeout_ms", sp_upstream_t, idle_timeout_ms, 300000, 1, 86400000)},
    {INT("retries", sp_upstream_t, retries, 2, 0, SP_CONF_MAX_RETRIES)},
    {INT("resolve_interval_ms", sp_upstream_t, resolve_interval_ms, 0, 100, 86400000)},
    {ENUM("send_proxy_protocol", sp_upstream_t, send_proxy_protocol, SP_PROXY_PROTO_NONE,
	  proxy_proto_names),
     .nullable = true},
    {OBJECT("health_check", health_schema), .nullable = true,
     ON(sp_upstream_t, health_check.enabled)},
};
static const conf_schema_t upstream_schema = {SCHEMA(sp_upstream_t, upstream_fields),
					      .check = expand_names, .check_all = check_upstreams};

static const conf_field_t match_fields[] = {
    {LIST("sni", sp_route_t, sni, sni_elem, char *)},
    {LIST("source", sp_route_t, source, source_elem, sp_cidr_t)},
};
static const conf_schema_t match_schema = {SCHEMA(sp_route_t, match_fields), .check = check_match};

static const conf_field_t route_fields[] = {
    {OBJECT("match", match_schema)},
    {CUSTOM("upstream", sp_route_t, upstream, set_route_upstream), .required = true},
};
static const conf_schema_t route_schema = {SCHEMA(sp_route_t, route_fields)};

static const conf_field_t listener_fields[] = {
    {NAME("name", sp_listener_t, name), .required = true},
    {ADDR("listen", sp_listener_t, listen), .required = true, .passive = true},
    {BOOL("accept_proxy_protocol", sp_listener_t, accept_proxy_protocol, false)},
    {INT("peek_timeout_ms", sp_listener_t, peek_timeout_ms, 5000, 1, 600000)},
    {ARRAY("routes", sp_listener_t, routes, route_schema, 1, SP_CONF_MAX_ROUTES), .required = true},
};
static const conf_schema_t listener_schema = {SCHEMA(sp_listener_t, listener_fields),
					      .check_all = check_listeners};

static const conf_field_t log_fields[] = {
    {ENUM("level", sp_conf_t, log.level, SP_LOG_INFO, level_names)},
    {CUSTOM("access_log", sp_conf_t, log.access_log, set_access_log), .def = true},
    {ENUM("format", sp_conf_t, log.format, SP_LOG_TEXT, format_names)},
};
static const conf_schema_t log_schema = {SCHEMA(sp_conf_t, log_fields)};

static const conf_field_t admin_fields[] = {
    {ADDR("listen", sp_conf_t, admin.listen), .nullable = true, .passive = true,
     ON(sp_conf_t, admin.enabled)},
    {CUSTOM("socket", sp_conf_t, admin.socket, set_admin_socket), .nullable = true},
};
static const conf_schema_t admin_schema = {SCHEMA(sp_conf_t, admin_fields)};

static const conf_field_t limits_fields[] = {
    {INT("max_connections", sp_conf_t, limits.max_connections, 10000, 1, 1000000)},
    {INT("drain_timeout_ms", sp_conf_t, limits.drain_timeout_ms, 30000, 0, 3600000)},
};
static const conf_schema_t limits_schema = {SCHEMA(sp_conf_t, limits_fields)};

/* upstreams before listeners: routes resolve upstream names as they are parsed. */
static const conf_field_t root_fields[] = {
    {CUSTOM("workers", sp_conf_t, workers, set_workers)},
    {ENUM("steering", sp_conf_t, steering, SP_STEER_HASH, steering_names)},
    {ENUM("relay", sp_conf_t, relay, SP_RELAY_AUTO, relay_names)},
    /* "none" by default: on a box shared with a busy backend or client, pinned
     * shards wait for their CPU while the other idles (docs/BENCHMARKS.md,
     * Findings: CPU placement). */
    {ENUM("cpu_affinity", sp_conf_t, cpu_affinity, SP_AFFINITY_NONE, affinity_names)},
    {ENUM("io", sp_conf_t, io, SP_IO_AUTO, io_names)},
    {OBJECT("log", log_schema)},
    {OBJECT("admin", admin_schema), .nullable = true},
    {OBJECT("limits", limits_schema)},
    {CUSTOM("user", sp_conf_t, user, set_user)},
    {CUSTOM("group", sp_conf_t, group, set_group)},
    {LISTN("resolvers", sp_conf_t, resolvers, resolver_elem, sp_addr_t, SP_CONF_MAX_RESOLVERS)},
    {ARRAY("upstreams", sp_conf_t, upstreams, upstream_schema, 1, SP_CONF_MAX_UPSTREAMS), .required = true},
    {ARRAY("listeners", sp_conf_t, listeners, listener_schema, 1, SP_CONF_MAX_LISTENERS), .required = true},
};
static const conf_schema_t root_schema = {SCHEMA(sp_conf_t, root_fields)};

/* ---- public API ---- */

static int err_cmp(const void *a, const void *b)
{
	const conf_err_t *x = a, *y = b;

	if (x->at.line != y->at.line)
		return x->at.line < y->at.line ? -1 : 1;
	if (x->at.col != y->at.col)
		return x->at.col < y->at.col ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Hand the errors over in file order; the walk finds them in table order. */
static void flush_errors(ctx_t *c, sp_conf_errors_t *errs)
{
	if (c->oom)
		err_pos(c, (sp_jpos_t){0, 0}, "out of memory");
	if (!c->nerr)
		return; /* nothing allocated: a caller may skip sp_conf_errors_free on success */
	qsort(c->errs, c->nerr, sizeof(*c->errs), err_cmp);
	char **msgs = errs ? realloc(errs->msgs, (errs->n + c->nerr) * sizeof(char *)) : NULL;
	for (size_t i = 0; i < c->nerr; i++) {
		if (msgs)
			msgs[errs->n++] = c->errs[i].msg;
		else
			free(c->errs[i].msg);
	}
	if (msgs)
		errs->msgs = msgs;
	free(c->errs);
}

/* Number servers across upstreams once, for everyone who indexes them. */
static void number_servers(sp_conf_t *conf)
{
	uint32_t idx = 0;
	for (size_t u = 0; u < conf->nupstreams; u++) {
		conf->upstreams[u].first_server = idx;
		idx += (uint32_t)conf->upstreams[u].nservers;
	}
	conf->nservers = idx;
}

sp_conf_t *sp_conf_load_buffer(const char *name, const char *text, size_t len,
			       sp_conf_errors_t *errs)
{
	ctx_t c = {.file = name};
	json_error_t je;
	sp_conf_t *conf = NULL;
	json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);

	if (!root) {
		err_pos(&c, (sp_jpos_t){je.line > 0 ? (unsigned)je.line : 0, (unsigned)je.column},
			"syntax error: %s", je.text);
		goto out;
	}
	/* A scan failure only costs positions (they print as 0:0), not the load. */
	if (sp_jmap_build(&c.map, text, len) == -ENOMEM)
		goto oom;
	conf = calloc(1, sizeof(*conf));
	if (!conf || !(conf->path = strdup(name)))
		goto oom;
	c.conf = conf;
	apply_defaults(&root_schema, conf);
	parse_object(&c, &root_schema, root, sp_jmap_root(c.map), conf);
	number_servers(conf);
	goto out;
oom:
	c.oom = true;
out:
	json_decref(root);
	sp_jmap_free(c.map);
	if (c.nerr || c.oom) {
		sp_conf_free(conf);
		conf = NULL;
	}
	flush_errors(&c, errs);
	return conf;
}

sp_conf_t *sp_conf_load(const char *path, sp_conf_errors_t *errs)
{
	ctx_t c = {.file = path};
	char *text = NULL;
	size_t len = 0;
	FILE *f = fopen(path, "r");
	sp_conf_t *conf = NULL;

	if (!f)
		goto err;
	/* A configuration is small; reading it whole keeps the scanner simple. */
	for (size_t cap = 0;;) {
		if (len == cap) {
			char *t = realloc(text, cap = cap ? cap * 2 : 16384);
			if (!t) {
				errno = ENOMEM;
				goto err;
			}
			text = t;
		}
		size_t n = fread(text + len, 1, cap - len, f);
		len += n;
		if (n == 0)
			break;
	}
	if (ferror(f))
		goto err;
	fclose(f);
	conf = sp_conf_load_buffer(path, text, len, errs);
	free(text);
	return conf;
err:
	err_pos(&c, (sp_jpos_t){0, 0}, "cannot read: %s", strerror(errno));
	if (f)
		fclose(f);
	free(text);
	flush_errors(&c, errs);
	return NULL;
}

void sp_conf_free(sp_conf_t *conf)
{
	if (!conf)
		return;
	for (size_t i = 0; i < conf->nlisteners; i++) {
		sp_listener_t *l = &conf->listeners[i];
		for (size_t r = 0; r < l->nroutes; r++) {
			for (size_t k = 0; k < l->routes[r].nsni; k++)
				free(l->routes[r].sni[k]);
			free(l->routes[r].sni);
			free(l->routes[r].source);
		}
		free(l->routes);
	}
	for (size_t i = 0; i < conf->nupstreams; i++)
		free(conf->upstreams[i].servers);
	free(conf->listeners);
	free(conf->upstreams);
	free(conf->resolvers);
	free(conf->log.access_log_path);
	free(conf->path);
	free(conf);
}

void sp_conf_errors_print(const sp_conf_errors_t *errs, FILE *out)
{
	for (size_t i = 0; i < errs->n; i++)
		fprintf(out, "%s\n", errs->msgs[i]);
}

void sp_conf_errors_free(sp_conf_errors_t *errs)
{
	for (size_t i = 0; i < errs->n; i++)
		free(errs->msgs[i]);
	free(errs->msgs);
	errs->msgs = NULL;
	errs->n = 0;
}

static const char *enum_name(const char *const *names, size_t n, unsigned v)
{
	return v < n ? names[v] : "?";
}

const char *sp_conf_steering_name(sp_steering_t s)
{
	return enum_name(steering_names, ARRAY_SIZE(steering_names), s);
}

const char *sp_conf_relay_name(sp_relay_t r)
{
	return enum_name(relay_names, ARRAY_SIZE(relay_names), r);
}

const char *sp_conf_affinity_name(sp_affinity_t a)
{
	return enum_name(affinity_names, ARRAY_SIZE(affinity_names), a);
}

const char *sp_conf_io_name(sp_io_t io)
{
	return enum_name(io_names, ARRAY_SIZE(io_names), io);
}

const char *sp_conf_balance_name(sp_balance_t b)
{
	return enum_name(balance_names, ARRAY_SIZE(balance_names), b);
}

int sp_conf_listener_index(const sp_conf_t *conf, const char *name)
{
	for (size_t i = 0; i < conf->nlisteners; i++)
		if (strcmp(conf->listeners[i].name, name) == 0)
			return (int)i;
	return -ENOENT;
}

int sp_conf_upstream_index(const sp_conf_t *conf, const char *name)
{
	for (size_t i = 0; i < conf->nupstreams; i++)
		if (strcmp(conf->upstreams[i].name, name) == 0)
			return (int)i;
	return -ENOENT;
}
