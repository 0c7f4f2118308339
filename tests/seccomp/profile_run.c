/* profile_run: run a command under a Docker-format seccomp profile, the way
 * a container runtime applies it (no_new_privs, then the filter, then exec),
 * so the e2e tests can check that shardproxy starts and serves under the
 * profile we ship (dist/seccomp.json) and under profiles like the runtimes'
 * defaults, which deny the io_uring calls. No container engine is needed.
 *
 *   profile_run dist/seccomp.json -- build/shardproxy -c conf/shardproxy.json
 *   profile_run --deny io_uring_setup,io_uring_enter,io_uring_register \
 *               dist/seccomp.json -- build/shardproxy -V
 *
 * Supported: defaultAction and each rule's action among SCMP_ACT_ALLOW,
 * SCMP_ACT_ERRNO (with defaultErrnoRet / errnoRet, EPERM when absent),
 * SCMP_ACT_KILL(_PROCESS), SCMP_ACT_KILL_THREAD, SCMP_ACT_TRAP, SCMP_ACT_LOG;
 * rules with "args" or "includes"/"excludes" conditions are refused (a test
 * must not believe a profile is enforced when part of it is not). A name this
 * architecture does not know is skipped with a note, as runc does. --deny
 * NAMES makes the listed calls fail with EPERM whatever the profile says:
 * Docker Engine 25+, containerd 2.0 and Podman deny the io_uring calls in
 * their defaults exactly like that. */
#include <errno.h>
#include <stdbool.h>
#include <jansson.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static int parse_action(const char *name, json_t *errno_ret, uint32_t *action)
{
	int e = EPERM;

	if (errno_ret) {
		if (!json_is_integer(errno_ret))
			return -EINVAL;
		e = (int)json_integer_value(errno_ret);
	}
	if (!strcmp(name, "SCMP_ACT_ALLOW"))
		*action = SCMP_ACT_ALLOW;
	else if (!strcmp(name, "SCMP_ACT_ERRNO"))
		*action = SCMP_ACT_ERRNO(e);
	else if (!strcmp(name, "SCMP_ACT_KILL") || !strcmp(name, "SCMP_ACT_KILL_PROCESS"))
		*action = SCMP_ACT_KILL_PROCESS;
	else if (!strcmp(name, "SCMP_ACT_KILL_THREAD"))
		*action = SCMP_ACT_KILL_THREAD;
	else if (!strcmp(name, "SCMP_ACT_TRAP"))
		*action = SCMP_ACT_TRAP;
	else if (!strcmp(name, "SCMP_ACT_LOG"))
		*action = SCMP_ACT_LOG;
	else
		return -EINVAL;
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: profile_run [--deny NAME,NAME...] PROFILE.json -- COMMAND [ARG...]\n");
	exit(2);
}

/* Every syscall name of the rule gets the action; unknown names are skipped. */
static const char *deny_list; /* --deny: comma-separated names */

static bool denied(const char *name)
{
	size_t n = strlen(name);

	for (const char *p = deny_list; p && *p;) {
		const char *end = strchrnul(p, ',');
		if ((size_t)(end - p) == n && !strncmp(p, name, n))
			return true;
		p = *end ? end + 1 : end;
	}
	return false;
}

static int add_rule(scmp_filter_ctx ctx, json_t *rule, size_t i, uint32_t def)
{
	json_t *names = json_object_get(rule, "names");
	json_t *act = json_object_get(rule, "action");
	uint32_t action;
	size_t k;
	json_t *n;

	if (json_object_get(rule, "args") && json_array_size(json_object_get(rule, "args"))) {
		fprintf(stderr, "profile_run: syscalls[%zu]: argument conditions are not supported\n", i);
		return -1;
	}
	if (json_object_get(rule, "includes") || json_object_get(rule, "excludes")) {
		fprintf(stderr, "profile_run: syscalls[%zu]: includes/excludes are not supported\n", i);
		return -1;
	}
	if (!json_is_array(names) || !json_is_string(act) ||
	    parse_action(json_string_value(act), json_object_get(rule, "errnoRet"), &action) < 0) {
		fprintf(stderr, "profile_run: syscalls[%zu]: needs \"names\" and a known \"action\"\n", i);
		return -1;
	}
	if (action == def)
		return 0; /* libseccomp refuses a rule that repeats the default */
	json_array_foreach(names, k, n) {
		int nr = json_is_string(n) ? seccomp_syscall_resolve_name(json_string_value(n))
					   : __NR_SCMP_ERROR;
		if (nr == __NR_SCMP_ERROR) {
			fprintf(stderr, "profile_run: note: syscalls[%zu].names[%zu]: %s unknown here, skipped\n",
				i, k, json_is_string(n) ? json_string_value(n) : "(not a string)");
			continue;
		}
		if (denied(json_string_value(n)))
			continue; /* --deny wins over the profile */
		int rc = seccomp_rule_add(ctx, action, nr, 0);
		if (rc < 0) {
			fprintf(stderr, "profile_run: %s: %s\n", json_string_value(n), strerror(-rc));
			return -1;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *deny = NULL;
	int a = 1;

	if (a + 1 < argc && !strcmp(argv[a], "--deny")) {
		deny = deny_list = argv[a + 1];
		a += 2;
	}
	if (a + 2 >= argc || strcmp(argv[a + 1], "--"))
		usage();

	json_error_t jerr;
	json_t *prof = json_load_file(argv[a], 0, &jerr);
	if (!prof) {
		fprintf(stderr, "profile_run: %s:%d:%d: %s\n", argv[a], jerr.line, jerr.column, jerr.text);
		return 2;
	}
	json_t *defact = json_object_get(prof, "defaultAction");
	uint32_t def;
	if (!json_is_string(defact) ||
	    parse_action(json_string_value(defact), json_object_get(prof, "defaultErrnoRet"), &def) < 0) {
		fprintf(stderr, "profile_run: %s: needs a known \"defaultAction\"\n", argv[a]);
		return 2;
	}
	scmp_filter_ctx ctx = seccomp_init(def);
	if (!ctx) {
		fprintf(stderr, "profile_run: seccomp_init failed\n");
		return 2;
	}
	json_t *rules = json_object_get(prof, "syscalls");
	size_t i;
	json_t *rule;
	json_array_foreach(rules, i, rule) {
		if (add_rule(ctx, rule, i, def) < 0)
			return 2;
	}
	if (deny && def != SCMP_ACT_ERRNO(EPERM)) {
		char *list = strdup(deny), *save = NULL;
		for (char *nm = strtok_r(list, ",", &save); nm; nm = strtok_r(NULL, ",", &save)) {
			int nr = seccomp_syscall_resolve_name(nm);
			if (nr == __NR_SCMP_ERROR) {
				fprintf(stderr, "profile_run: --deny %s: unknown system call\n", nm);
				return 2;
			}
			int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0);
			if (rc < 0) {
				fprintf(stderr, "profile_run: --deny %s: %s\n", nm, strerror(-rc));
				return 2;
			}
		}
		free(list);
	}
	json_decref(prof);

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		perror("profile_run: PR_SET_NO_NEW_PRIVS");
		return 2;
	}
	int rc = seccomp_load(ctx);
	if (rc < 0) {
		fprintf(stderr, "profile_run: seccomp_load: %s\n", strerror(-rc));
		return 2;
	}
	seccomp_release(ctx);
	execvp(argv[a + 2], &argv[a + 2]);
	fprintf(stderr, "profile_run: %s: %s\n", argv[a + 2], strerror(errno));
	return 127;
}
