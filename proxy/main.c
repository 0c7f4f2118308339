/* shardproxy: command line (SPEC §2). Parses options, loads and checks the
 * configuration, and hands over to the supervisor.
 *
 *   shardproxy -c conf/shardproxy.json          run in the foreground
 *   shardproxy -t -c conf/shardproxy.json       check the file, print "ok" or the errors
 *   shardproxy -V                               version and kernel features
 *   kill -HUP $(cat run.pid)                    reload without dropping a connection
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "bpf/steer.h"
#include "conf/conf.h"
#include "proxy/control.h"
#include "proxy/health.h"
#include "proxy/names.h"
#include "proxy/steering.h"
#include "proxy/supervisor.h"
#include "proxy/io.h"
#include "proxy/upgrade.h"
#include "proxy/version.h"

#define DEFAULT_CONF "conf/shardproxy.json"

static void usage(FILE *out)
{
	fprintf(out,
		"usage: shardproxy [-c FILE] [-t] [-w N] [--pidfile FILE] [-V] [-h]\n"
		"  -c, --config FILE   configuration file (default: %s)\n"
		"  -t, --check         validate the configuration, print \"ok\" or the errors\n"
		"  -w, --workers N     number of shards (overrides \"workers\" in the file)\n"
		"      --pidfile FILE  write the supervisor's pid there\n"
		"  -V, --version       print the version and the kernel features found\n"
		"  -h, --help          this text\n",
		DEFAULT_CONF);
}

/* -V: what this kernel offers, and what steering the configuration would get. */
static int version(const char *conf_path)
{
	struct utsname u;
	char buf[768];

	printf("shardproxy %s\n", sp_version);
	if (uname(&u) == 0)
		printf("kernel: %s %s %s\n", u.sysname, u.release, u.machine);
	if (sp_loop_probe_uring(buf, sizeof(buf)) == 0)
		printf("%s\n", buf);
	else
		printf("io_uring: unavailable: %s\n", buf);

	sp_conf_errors_t errs = {0};
	sp_conf_t *conf = sp_conf_load(conf_path, &errs);
	sp_steering_t want = conf ? conf->steering : SP_STEER_HASH;
	const char *src = conf ? conf_path : "default";
	sp_conf_errors_free(&errs);
	sp_loop_backend_t io;
	if (sp_io_choose(conf ? conf->io : SP_IO_AUTO, &io, buf, sizeof(buf)) == 0)
		printf("io: %s; from %s\n", buf, src);
	else
		printf("io: none: io_uring configured in %s but unavailable\n", src);
	if (want == SP_STEER_NONE) {
		printf("steering: none (as configured in %s)\n", src);
	} else {
		sp_steer_t *st = NULL;
		if (sp_steer_open(&st, sp_steering_policy(want), 2, buf, sizeof(buf)) == 0) {
			printf("steering: %s (bpf%s; from %s)\n", sp_conf_steering_name(want),
			       sp_steer_migrate_supported(st) ? ", select_or_migrate" : "", src);
			sp_steer_close(st);
		} else {
			printf("steering: none (BPF unavailable: %s; %s requested in %s)\n", buf,
			       sp_conf_steering_name(want), src);
		}
	}
	sp_conf_free(conf);
	return 0;
}

/* -t: look up every upstream host name (on the file's resolvers). */
static int check_names(const sp_conf_t *conf, sp_conf_errors_t *errs)
{
	size_t total = conf->nupstreams ? sp_health_index(conf, conf->nupstreams - 1) +
						  conf->upstreams[conf->nupstreams - 1].nservers
					: 0;
	sp_server_ctl_t *ctl = calloc(total ? total : 1, sizeof(*ctl));
	sp_names_t *n = NULL;
	char err[256];
	if (!ctl) {
		fprintf(stderr, "shardproxy: out of memory\n");
		return 1;
	}
	sp_control_init(conf, ctl);
	if (sp_names_new(&n, conf, ctl, err, sizeof(err)) < 0) {
		fprintf(stdout, "%s: %s\n", conf->path, err);
		free(ctl);
		return 1;
	}
	size_t fatal = sp_names_resolve_now(n, errs);
	sp_names_free(n);
	free(ctl);
	return fatal ? 1 : 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'}, {"check", no_argument, NULL, 't'},
		{"workers", required_argument, NULL, 'w'}, {"pidfile", required_argument, NULL, 'p'},
		{"version", no_argument, NULL, 'V'},      {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	static sp_supervisor_opts_t so = {.conf_path = DEFAULT_CONF};
	bool check = false, show_version = false;
	int c;

	while ((c = getopt_long(argc, argv, "c:tw:Vh", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			so.conf_path = optarg;
			break;
		case 't':
			check = true;
			break;
		case 'w': {
			char *end;
			long n = strtol(optarg, &end, 10);
			if (*optarg == '\0' || *end != '\0' || n < 1 || n > SP_CONF_MAX_WORKERS) {
				fprintf(stderr, "shardproxy: -w %s: expected a number of shards "
						"from 1 to %d\n",
					optarg, SP_CONF_MAX_WORKERS);
				return 1;
			}
			so.workers_override = (int)n;
			break;
		}
		case 'p':
			so.pidfile = optarg;
			break;
		case 'V':
			show_version = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "shardproxy: unexpected argument \"%s\"\n", argv[optind]);
		usage(stderr);
		return 1;
	}
	if (show_version)
		return version(so.conf_path);

	sp_conf_errors_t errs = {0};
	sp_conf_t *conf = sp_conf_load(so.conf_path, &errs);
	if (!conf) {
		sp_conf_errors_print(&errs, check ? stdout : stderr);
		sp_conf_errors_free(&errs);
		return 1;
	}
	if (check) {
		/* Host names are resolved as a start would resolve them, so "ok"
		 * means the file would start. */
		int rc = check_names(conf, &errs);
		if (rc == 0)
			printf("ok\n");
		sp_conf_errors_print(&errs, stdout);
		sp_conf_errors_free(&errs);
		sp_conf_free(conf);
		return rc;
	}
	/* Where SIGUSR2 finds the new binary: resolved now, against the
	 * working directory and PATH this process was started with. */
	so.argv = argv;
	if (sp_upgrade_exe_path(argv[0], so.exe, sizeof(so.exe), so.exe_err, sizeof(so.exe_err)) < 0)
		so.exe[0] = '\0';
	return sp_supervisor_run(&so, conf);
}
