/* sdnotify: the systemd readiness protocol (sd_notify(3)) without libsystemd:
 * one datagram per state change to the unix socket named by $NOTIFY_SOCKET
 * ("/path", or "@name" for the abstract namespace). Without the variable
 * every call is a no-op, so the same binary runs under systemd, in a
 * container or in a terminal. */
#ifndef SP_SDNOTIFY_H
#define SP_SDNOTIFY_H

/* Send state (e.g. "READY=1\nSTATUS=serving"). Returns 0 when sent or when
 * there is nowhere to send, else a negative errno. Never blocks. */
int sp_sdnotify(const char *state);
/* printf-style; the text must fit in 1 KiB. */
int sp_sdnotifyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants in MONOTONIC_USEC=. */
unsigned long long sp_sdnotify_monotonic_usec(void);

#endif
