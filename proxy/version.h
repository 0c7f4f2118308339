/* version: the one place the program's version is defined. A build may
 * append to it (make CFLAGS+='-DSP_VERSION_EXTRA="\"-rc1\""'). */
#ifndef SP_VERSION_H
#define SP_VERSION_H

#define SP_VERSION_BASE "0.1.0"
#ifndef SP_VERSION_EXTRA
#define SP_VERSION_EXTRA ""
#endif

/* SP_VERSION_BASE SP_VERSION_EXTRA, NUL-padded to 32 bytes: stored once in
 * the binary, so a test can make a copy that reports another version (the
 * binary-upgrade tests do). */
extern const char sp_version[32];

#endif
