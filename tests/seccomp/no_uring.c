/* no_uring: run a command with the io_uring system calls denied, the way
 * container runtimes' default seccomp profiles deny them (Docker Engine 25+,
 * containerd 2.0, Podman: io_uring_setup, io_uring_enter and
 * io_uring_register fail with EPERM). A hand-written classic-BPF filter, so
 * the e2e tests need no libseccomp and no container engine.
 *
 *   no_uring build/shardproxy -c conf/shardproxy.json
 *   no_uring --errno ENOSYS build/shardproxy -V     (as gVisor-like sandboxes answer)
 *
 * The filter is inherited across fork and exec, so the proxy's shards run
 * under it too. */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#else
#error "no_uring: add this architecture's AUDIT_ARCH_*"
#endif

int main(int argc, char **argv)
{
	int err = EPERM, first = 1;

	if (argc > 2 && strcmp(argv[1], "--errno") == 0) {
		err = strcmp(argv[2], "ENOSYS") == 0 ? ENOSYS : EPERM;
		first = 3;
	}
	if (first >= argc) {
		fprintf(stderr, "usage: no_uring [--errno EPERM|ENOSYS] COMMAND [ARG...]\n");
		return 2;
	}
	/* A foreign architecture's numbers would not mean what we test: kill.
	 * Then each io_uring call gets err; everything else is allowed. */
	struct sock_filter code[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 3, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_enter, 2, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_register, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA)),
	};
	struct sock_fprog prog = {.len = sizeof(code) / sizeof(code[0]), .filter = code};

	/* Without privileges a filter needs no_new_privs; runtimes set it too. */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		perror("no_uring: PR_SET_NO_NEW_PRIVS");
		return 2;
	}
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0) {
		perror("no_uring: PR_SET_SECCOMP");
		return 2;
	}
	execvp(argv[first], argv + first);
	fprintf(stderr, "no_uring: %s: %s\n", argv[first], strerror(errno));
	return 127;
}
