"""Upstream connection handling: retries to the next server, connect
timeouts when every server is down, idle timeouts."""

import socket
import time

import lib
from lib import check


def test_first_server_down_connection_retried_on_next(t):
    down = t.down_port()
    up = t.echo()
    port = lib.free_port()
    p = t.proxy(lib.config([lib.listener("l", port, "u")],
                           [lib.upstream("u", [down.address, up.address], retries=2, connect_timeout_ms=1000)]))
    # round robin over two servers: whichever goes first, every connection
    # must end up on the live one
    ports = []
    for i in range(10):
        s = lib.connect(port)
        ports.append(s.getsockname()[1])
        lib.check_echo(port, lib.payload(1000 + i, seed=40 + i), up, what="connection %d:" % i, sock=s)
    servers = {e.get("server") for e in p.access_for_ports(ports)}
    check(servers == {up.address}, "access log names servers %s, want only %s" % (servers, up.address))


def _closed_by_proxy(port, timeout_s):
    """Connect, send a little, and time how long until the proxy closes us."""
    s = lib.connect(port)
    t0 = time.monotonic()
    try:
        s.sendall(b"hello?")
    except OSError:
        pass
    waited = lib.wait_closed(s, timeout_s)
    s.close()
    return waited, time.monotonic() - t0


def _still_serves(t, port, up):
    lib.check_echo(port, lib.payload(100000, seed=77), up, what="other listener after the failure:")


def test_all_servers_refusing_client_closed_and_proxy_keeps_serving(t):
    d1, d2 = t.down_port(), t.down_port()
    up = t.echo()
    dead, live = lib.free_port(), lib.free_port()
    p = t.proxy(lib.config(
        [lib.listener("dead", dead, "dead"), lib.listener("live", live, "live")],
        [lib.upstream("dead", [d1.address, d2.address], retries=1, connect_timeout_ms=500),
         lib.upstream("live", [up.address])]))
    ports = []
    for _ in range(3):
        s = lib.connect(dead)
        ports.append(s.getsockname()[1])
        w = lib.wait_closed(s, 3.0)
        s.close()
        check(w is not None, "client not closed 3 s after every server refused")
        check(w <= 1.5, "client closed only after %.2f s though every server refuses at once" % w)
    ends = {e.get("end") for e in p.access_for_ports(ports)}
    check(ends == {"connect_failed"}, "access log end= %s, want connect_failed" % ends)
    _still_serves(t, live, up)


def test_all_servers_down_client_closed_within_connect_timeout(t):
    bh = t.blackhole()  # SYNs dropped: only the connect timeout can end the attempt
    up = t.echo()
    dead, live = lib.free_port(), lib.free_port()
    t.proxy(lib.config(
        [lib.listener("dead", dead, "dead"), lib.listener("live", live, "live")],
        [lib.upstream("dead", [bh.address], retries=0, connect_timeout_ms=500),
         lib.upstream("live", [up.address])]), probe=False)
    waited, _ = _closed_by_proxy(dead, 5.0)
    check(waited is not None, "client still open 5 s after connecting to an upstream that never answers "
          "(connect_timeout_ms 500)")
    check(0.35 <= waited <= 1.5,
          "client closed after %.2f s, want about connect_timeout_ms 500 (0.35..1.5 s)" % waited)
    _still_serves(t, live, up)


def test_connect_timeout_applies_to_each_retry(t):
    b1, b2 = t.blackhole(), t.blackhole()
    dead = lib.free_port()
    t.proxy(lib.config([lib.listener("dead", dead, "dead")],
                       [lib.upstream("dead", [b1.address, b2.address], retries=1, connect_timeout_ms=400)]),
            probe=False)
    waited, _ = _closed_by_proxy(dead, 5.0)
    check(waited is not None, "client still open 5 s after connecting (2 tries x 400 ms)")
    check(0.7 <= waited <= 2.0, "closed after %.2f s, want two tries of 400 ms (0.7..2.0 s)" % waited)


def test_idle_timeout_closes_idle_session(t):
    up = t.echo()
    port = lib.free_port()
    p = t.proxy(lib.config([lib.listener("l", port, "u")], [lib.upstream("u", [up.address], idle_timeout_ms=500)]))
    s = lib.connect(port)
    cport = s.getsockname()[1]
    lib.roundtrip(s, b"wake")
    waited = lib.wait_closed(s, 5.0)
    s.close()
    check(waited is not None, "idle session still open after 5 s (idle_timeout_ms 500)")
    check(0.4 <= waited <= 3.0, "idle session closed after %.2f s, want 0.4..3 s" % waited)
    e = p.access_by_client_port([cport])[cport]
    check(e.get("end") == "idle_timeout", "access log end=%s, want idle_timeout" % e.get("end"))
    check(lib.wait_until(lambda: up.active() == 0, 3), "upstream side still open after the idle timeout")


def test_idle_timeout_spares_active_session(t):
    up = t.echo()
    port = lib.free_port()
    t.proxy(lib.config([lib.listener("l", port, "u")], [lib.upstream("u", [up.address], idle_timeout_ms=500)]))
    s = lib.connect(port)
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 2.0:
        try:
            lib.roundtrip(s, b"tick %d\n" % n, timeout_s=2)
        except (OSError, lib.TestFailure) as e:
            lib.fail("active session closed after %.2f s (sending every 200 ms, idle_timeout_ms 500): %r"
                     % (time.monotonic() - t0, e))
        n += 1
        time.sleep(0.2)
    lib.roundtrip(s, b"still here")
    s.close()
