"""Stop refuses, never strands (issue 11, item 1): after SIGTERM no process,
supervisor or shard of any generation, holds a listening socket for more
than 1 s, so a new client is refused at once (and retries elsewhere) instead
of completing its handshake into a backlog nobody accepts from; open
sessions still finish. The same once the supervisor is SIGKILLed: its
shards let go of the listeners at once and, idle, exit within 1 s."""

import errno
import signal
import socket
import subprocess
import time

import lib
from lib import check


def refused(port):
    """True if a connect to the port is refused now."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect((lib.LOOPBACK, port))
    except ConnectionRefusedError:
        return True
    except OSError as e:
        return e.errno == errno.ECONNREFUSED
    finally:
        s.close()
    return False


def listening(port):
    """Listening sockets on the port, as `ss -ltn` shows them (one line each)."""
    r = subprocess.run(["ss", "-ltnH", "sport = :%d" % port], capture_output=True, text=True,
                       timeout=10)
    if r.returncode != 0:
        raise lib.Skip("ss -ltn failed: %s" % r.stderr.strip())
    return [l for l in r.stdout.splitlines() if l.strip()]


def _proxy(t, workers=2, drain_ms=20000):
    return t.echo_proxy(workers=workers, limits={"drain_timeout_ms": drain_ms})


def _check_released_within_1s(p, port, what):
    t0 = time.monotonic()
    ok = lib.wait_until(lambda: refused(port) and not listening(port), 1.0, 0.02)
    dt = time.monotonic() - t0
    check(ok, "%s: after %.2f s a new connection is %s and ss -ltn shows %s; log:\n%s"
          % (what, dt, "refused" if refused(port) else "NOT refused (it waits in a backlog)",
             listening(port), p.tail()))


def test_sigterm_refuses_new_connections_within_1s_while_open_session_finishes(t):
    up, port, p = _proxy(t)
    s = lib.connect(port)
    lib.roundtrip(s, b"before")
    p.signal(signal.SIGTERM)
    _check_released_within_1s(p, port, "SIGTERM with a session open")
    lib.roundtrip(s, b"during the drain")
    check(p.alive(), "supervisor gone while a session was still open")
    s.close()
    rc = p.wait_exit(10)
    check(rc == 0, "exit status %s after the last session ended; log:\n%s" % (rc, p.tail()))


def test_sigterm_during_a_reload_drain_refuses_new_connections_within_1s(t):
    """Both generations: the draining old one and the current one."""
    up, port, p = _proxy(t)
    old = lib.connect(port)
    lib.roundtrip(old, b"old generation")
    m = p.reload(p.conf)
    p.expect_log(r"reload: generation 2 ready", after=m)
    new = lib.connect(port)
    lib.roundtrip(new, b"new generation")
    p.signal(signal.SIGTERM)
    _check_released_within_1s(p, port, "SIGTERM during a reload's drain")
    # (new may have been taken by an old shard just before its accept was
    # cancelled; a stop closes the old generation's sessions at once.)
    new.close()
    old.close()
    check(p.wait_exit(10) == 0, "exit status %s; log:\n%s" % (p.returncode, p.tail()))


def test_second_sigterm_during_drain_stops_at_once_and_nothing_listens(t):
    up, port, p = _proxy(t)
    s = lib.connect(port)
    lib.roundtrip(s)
    p.signal(signal.SIGTERM)
    _check_released_within_1s(p, port, "first SIGTERM")
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    rc = p.wait_exit(3)
    check(rc == 0, "second SIGTERM: exit status %s after %.1f s, want 0 at once; log:\n%s"
          % (rc, time.monotonic() - t0, p.tail()))
    s.close()


@lib.timeout(60)
def test_supervisor_sigkill_idle_shards_exit_within_1s_and_release_listeners(t):
    _, port, p = _proxy(t, drain_ms=30000)
    shards = p.wait_shards(2)
    pgid = p.pid
    p.signal(signal.SIGKILL)
    t0 = time.monotonic()
    gone = lib.wait_until(lambda: not lib.pgid_members(pgid), 1.0, 0.02)
    check(gone, "shards %s still running %.2f s after the supervisor's SIGKILL"
          % (lib.pgid_members(pgid), time.monotonic() - t0))
    check(refused(port) and not listening(port),
          "listener still held after the supervisor's SIGKILL: %s" % listening(port))
    check(shards, "no shards")


@lib.timeout(60)
def test_supervisor_sigkill_open_session_finishes_and_listeners_released_within_1s(t):
    up, port, p = _proxy(t, drain_ms=30000)
    p.wait_shards(2)
    pgid = p.pid
    s = lib.connect(port)
    lib.roundtrip(s, b"before")
    p.signal(signal.SIGKILL)
    _check_released_within_1s(p, port, "supervisor SIGKILLed with a session open")
    lib.roundtrip(s, b"orphaned")
    s.close()
    gone = lib.wait_until(lambda: not lib.pgid_members(pgid), 3.0, 0.02)
    check(gone, "shards %s still running after their last session ended" % lib.pgid_members(pgid))
