/* conf: the JSON configuration file (SPEC §4) turned into one immutable,
 * validated C structure. Nothing here refers to jansson: the parser is the
 * only place that sees JSON, and no shard ever parses anything. */
#ifndef SP_CONF_H
#define SP_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "runtime/log.h" /* sp_log_level_t */

/* Hard caps, so every array a shard sizes from the conf is bounded. */
#define SP_CONF_MAX_WORKERS 256
#define SP_CONF_NAME_MAX 64
/* Servers are numbered across upstreams for the health verdicts and the
 * counters shards share with the supervisor; those arrays hold this many. */
#define SP_CONF_MAX_SERVERS 65536
/* Servers per upstream, host names' slots included (shard/balance.h's
 * server sets are this wide). */
#define SP_CONF_MAX_UPSTREAM_SERVERS 256
/* A server written with a host name takes this many consecutive entries of
 * its upstream's servers, one per address the name may have: shards index
 * servers (balancer state, counters, health) by position, so the positions
 * are fixed for a generation while the addresses behind them change. */
#define SP_CONF_DNS_SLOTS 8
#define SP_CONF_MAX_RESOLVERS 8
/* Connect attempts after the first, per session (upstreams[].retries). */
#define SP_CONF_MAX_RETRIES 16
/* Entries of the top-level arrays and of a listener's routes. */
#define SP_CONF_MAX_LISTENERS 65536
#define SP_CONF_MAX_UPSTREAMS 65536
#define SP_CONF_MAX_ROUTES 65536

typedef enum { SP_STEER_HASH, SP_STEER_CPU, SP_STEER_LEAST_CONN, SP_STEER_NONE } sp_steering_t;
typedef enum { SP_RELAY_AUTO, SP_RELAY_COPY, SP_RELAY_SPLICE } sp_relay_t;
/* "pin": shard n on the n-th allowed CPU; "none": the scheduler places shards. */
typedef enum { SP_AFFINITY_PIN, SP_AFFINITY_NONE } sp_affinity_t;
/* The shards' event loop: io_uring if a start-up probe finds all it needs, or as forced. */
typedef enum { SP_IO_AUTO, SP_IO_URING, SP_IO_EPOLL } sp_io_t;
typedef enum { SP_LOG_TEXT, SP_LOG_JSON } sp_log_format_t;
typedef enum {
	SP_BALANCE_ROUND_ROBIN,
	SP_BALANCE_LEAST_CONN,
	SP_BALANCE_SOURCE_HASH,
	SP_BALANCE_RANDOM_TWO,
} sp_balance_t;
typedef enum { SP_PROXY_PROTO_NONE, SP_PROXY_PROTO_V1, SP_PROXY_PROTO_V2 } sp_proxy_proto_t;

/* A socket address as written in the file plus what it resolved to. */
typedef struct {
	char text[128]; /* as written, e.g. "localhost:9002" or "[::1]:9001" */
	struct sockaddr_storage ss;
	socklen_t len;
} sp_addr_t;

typedef struct {
	int family;       /* AF_INET or AF_INET6 */
	uint8_t addr[16]; /* network order, already masked to prefix */
	uint8_t prefix;   /* 0..32 or 0..128 */
} sp_cidr_t;

typedef struct {
	bool enabled; /* false when "health_check" is absent or null */
	uint32_t interval_ms;
	uint32_t timeout_ms;
	uint32_t fall;
	uint32_t rise;
} sp_health_check_t;

typedef struct {
	sp_addr_t addr;  /* text as written; ss/len resolved here for an IP address */
	uint32_t weight; /* 1..256, default 1 */
	bool backup;
	/* A host name: not resolved by the parser (that would block) but by the
	 * supervisor's asynchronous resolver (proxy/resolver.c), which writes
	 * the addresses into shared memory; addr.len stays 0 here. */
	bool dns;
	uint8_t dns_slot; /* 0..SP_CONF_DNS_SLOTS-1: which address of the name */
	uint16_t port;
	uint16_t origin;  /* index of the server in the file's "servers" array */
	char host[sizeof(((sp_addr_t *)0)->text)];
	char where[192];  /* "file:line:col: upstreams[0].servers[1].address", for errors */
} sp_server_t;

typedef struct {
	char name[SP_CONF_NAME_MAX];
	sp_balance_t balance;
	sp_server_t *servers; /* host names expanded to SP_CONF_DNS_SLOTS entries each */
	size_t nservers;      /* >= 1 */
	size_t nnames;        /* servers written with a host name */
	uint32_t resolve_interval_ms; /* 0: names resolved at load and reload only */
	/* Servers are numbered across upstreams in file order (health verdicts,
	 * per-server counters): this upstream's server k is first_server + k.
	 * Computed once by the loader. */
	uint32_t first_server;
	uint32_t connect_timeout_ms;
	uint32_t idle_timeout_ms;
	uint32_t retries;
	sp_proxy_proto_t send_proxy_protocol;
	sp_health_check_t health_check;
} sp_upstream_t;

typedef struct {
	char **sni; /* exact names or "*.suffix", lower-cased */
	size_t nsni;
	sp_cidr_t *source;
	size_t nsource;
	size_t upstream; /* index into sp_conf_t.upstreams */
} sp_route_t;

typedef struct {
	char name[SP_CONF_NAME_MAX];
	sp_addr_t listen;
	bool accept_proxy_protocol;
	uint32_t peek_timeout_ms;
	sp_route_t *routes;
	size_t nroutes; /* >= 1 */
} sp_listener_t;

typedef struct sp_conf {
	char *path;
	uint32_t workers; /* 0 means "auto": one per online CPU */
	sp_steering_t steering;
	sp_relay_t relay;
	sp_affinity_t cpu_affinity;
	sp_io_t io;
	struct {
		sp_log_level_t level;
		bool access_log;
		char *access_log_path; /* NULL: stderr */
		sp_log_format_t format;
	} log;
	/* Account the shards run as once their sockets and ring are set up. */
	struct {
		bool set;
		char name[SP_CONF_NAME_MAX];
		uid_t uid;
		gid_t gid; /* the user's primary group, unless "group" says otherwise */
	} user;
	struct {
		bool set;
		char name[SP_CONF_NAME_MAX];
		gid_t gid;
	} group;
	struct {
		bool enabled; /* false when "admin" is absent or its listen is null */
		sp_addr_t listen;
		char socket[108]; /* admin.socket: Unix socket path for writes; "" if none */
	} admin;
	/* Nameservers for upstream host names; none: /etc/resolv.conf's. */
	sp_addr_t *resolvers;
	size_t nresolvers;
	struct {
		uint32_t max_connections;
		uint32_t drain_timeout_ms;
	} limits;
	sp_listener_t *listeners;
	size_t nlisteners; /* >= 1 */
	sp_upstream_t *upstreams;
	size_t nupstreams; /* >= 1 */
	/* Servers across all upstreams: first_server's numbering runs to here. */
	uint32_t nservers;
} sp_conf_t;

/* Error sink: every error of a file is collected, each already formatted as
 * "file:line:col: json.path: message". */
typedef struct {
	char **msgs;
	size_t n;
} sp_conf_errors_t;

/* Parse and validate the file at path. Returns a conf on success, NULL on
 * failure with every error in errs (which the caller frees with
 * sp_conf_errors_free). IP addresses are filled in here; a listen address
 * may also be a name from /etc/hosts (never asked of DNS: nothing here
 * blocks); upstream servers' host names are left for the supervisor's
 * resolver (sp_server_t.dns). */
sp_conf_t *sp_conf_load(const char *path, sp_conf_errors_t *errs);
/* Same, from a buffer; name is what error messages call the file. */
sp_conf_t *sp_conf_load_buffer(const char *name, const char *text, size_t len,
			       sp_conf_errors_t *errs);
void sp_conf_free(sp_conf_t *conf);
void sp_conf_errors_print(const sp_conf_errors_t *errs, FILE *out);
void sp_conf_errors_free(sp_conf_errors_t *errs);

/* Names of enum values as they are written in the file ("hash", "splice"...). */
const char *sp_conf_steering_name(sp_steering_t s);
const char *sp_conf_relay_name(sp_relay_t r);
const char *sp_conf_affinity_name(sp_affinity_t a);
const char *sp_conf_io_name(sp_io_t io);
const char *sp_conf_balance_name(sp_balance_t b);

/* Look-ups used by the supervisor and shards. */
int sp_conf_listener_index(const sp_conf_t *conf, const char *name);
int sp_conf_upstream_index(const sp_conf_t *conf, const char *name);

#endif
