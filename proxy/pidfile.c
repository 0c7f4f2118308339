/* pidfile: write and remove --pidfile without following symbolic links
 * (see pidfile.h). */
#include "proxy/pidfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int sp_pidfile_write(const char *path, pid_t pid, char *err, size_t errlen)
{
	struct stat st;
	char line[32];
	/* No O_TRUNC here: a FIFO or device named by mistake must not be
	 * truncated or blocked on before it is recognised. */
	int fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0644);
	if (fd < 0) {
		int e = errno;
		if (e == ELOOP)
			snprintf(err, errlen,
				 "--pidfile %s: is a symbolic link; refusing to follow it (name the "
				 "file itself)",
				 path);
		else
			snprintf(err, errlen, "--pidfile %s: open: %s", path, strerror(e));
		return -e;
	}
	if (fstat(fd, &st) < 0) {
		int e = errno;
		snprintf(err, errlen, "--pidfile %s: fstat: %s", path, strerror(e));
		close(fd);
		return -e;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "--pidfile %s: not a regular file", path);
		close(fd);
		return -EINVAL;
	}
	int n = snprintf(line, sizeof(line), "%d\n", (int)pid);
	if (ftruncate(fd, 0) < 0 || write(fd, line, (size_t)n) != n) {
		int e = errno ? errno : EIO;
		snprintf(err, errlen, "--pidfile %s: write: %s", path, strerror(e));
		close(fd);
		return -e;
	}
	close(fd);
	return 0;
}

int sp_pidfile_remove(const char *path, pid_t pid)
{
	char buf[32];
	struct stat st;
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return -EINVAL;
	}
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -ESTALE;
	buf[n] = '\0';
	char *end;
	errno = 0;
	long v = strtol(buf, &end, 10);
	if (errno || end == buf || (*end != '\n' && *end != '\0') || v != (long)pid)
		return -ESTALE;
	/* Between this read and the unlink another process could write the
	 * file again; pidfiles have no lock to close that window, and it is a
	 * few microseconds at exit. */
	return unlink(path) < 0 ? -errno : 0;
}
