"""Process hygiene (issue 11, item 9): shards that outlive a SIGKILLed
supervisor go at once and let go of the listeners; a shard holds no
descriptor it does not use; health checks beyond one poll array; a pidfile
or access log that is a symbolic link is refused; the pidfile is removed only
while it still holds our pid; one client cannot monopolise the admin port."""

import os
import re
import signal
import socket
import time

import lib
from lib import check


def _admin_get(port, path, timeout_s=5.0):
    """(status, body) of GET path, or (None, reason) if the connection was
    turned away or timed out."""
    try:
        s = socket.create_connection((lib.LOOPBACK, port), timeout=timeout_s)
    except OSError as e:
        return None, repr(e)
    try:
        s.settimeout(timeout_s)
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
        buf = bytearray()
        while True:
            try:
                d = s.recv(65536)
            except OSError as e:
                if not buf:
                    return None, repr(e)
                break
            if not d:
                break
            buf += d
    finally:
        s.close()
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", bytes(buf))
    return (int(m.group(1)), bytes(buf)) if m else (None, bytes(buf[:100]))


def _echo_proxy(t, workers=2, **kw):
    up = t.echo()
    port = lib.free_port()
    conf = lib.config([lib.listener("l", port, "echo")], [lib.upstream("echo", [up.address])],
                      workers=workers, **kw)
    return up, port, t.proxy(conf)


# ---- admin ------------------------------------------------------------------------


def test_admin_64_idle_connections_do_not_keep_healthz_from_answering_within_1s(t):
    aport = lib.free_port()
    _, _, p = _echo_proxy(t, admin={"listen": "127.0.0.1:%d" % aport})
    st, _ = _admin_get(aport, "/healthz")
    check(st == 200, "/healthz before: %s" % st)
    idle = []
    for _ in range(64):  # connected, never a byte sent
        idle.append(socket.create_connection((lib.LOOPBACK, aport), timeout=5))
    t.defer(lambda: [s.close() for s in idle])
    time.sleep(0.2)  # the supervisor has taken them all in
    t0 = time.monotonic()
    st, body = _admin_get(aport, "/healthz", timeout_s=1.0)
    dt = time.monotonic() - t0
    check(st == 200 and dt < 1.0,
          "/healthz with 64 idle admin connections open: %s %r after %.2f s, want 200 within 1 s"
          % (st, body[:80] if isinstance(body, bytes) else body, dt))
    check(p.alive(), "supervisor died")
