"""Reloads at the edges (issue 11, items 4 and 7): a reload that fails after
opening sockets closes every one of them, so nothing is left bound that no
shard accepts on; and the supervisor never blocks while a new generation
comes up: /healthz answers and a shard that dies is restarted meanwhile."""

import os
import signal
import socket
import time

import lib
from lib import check
from test_stop import listening


def _healthz(aport, timeout_s):
    """(status, seconds) of GET /healthz; status None if no answer in time."""
    t0 = time.monotonic()
    st, _ = lib.admin_status(aport, "/healthz", timeout_s)
    return st, time.monotonic() - t0


@lib.timeout(90)
def test_failed_reload_closes_every_socket_it_opened_and_40_new_connections_are_served(t):
    up = t.echo()
    a, c = lib.free_port(), lib.free_port()
    # A plain listener (no SO_REUSEPORT) holds port b: binding it must fail.
    blocker = socket.socket()
    blocker.bind((lib.LOOPBACK, 0))
    blocker.listen(1)
    t.defer(blocker.close)
    b = blocker.getsockname()[1]
    ups = [lib.upstream("echo", [up.address])]
    # steering none: the kernel hashes over every socket in the group, so a
    # socket left behind by the failed reload would take its share.
    conf = lib.config([lib.listener("l1", a, "echo"), lib.listener("l2", c, "echo")], ups,
                      workers=2, steering="none")
    p = t.proxy(conf)
    check(len(listening(a)) == 2 and len(listening(c)) == 2,
          "before: %s %s" % (listening(a), listening(c)))
    # More workers (l1 grows from 2 to 4 sockets) and l2 moved to a port in use.
    bad = lib.config([lib.listener("l1", a, "echo"), lib.listener("l2", b, "echo")], ups,
                     workers=4, steering="none")
    m = p.reload(bad)
    p.expect_log(r"reload failed: listeners\[1\]\.listen 127\.0\.0\.1:%d: bind: Address already in use" % b,
                 after=m)
    time.sleep(0.2)
    check(len(listening(a)) == 2,
          "after the failed reload, %d sockets listen on the old port (want the 2 the running "
          "generation accepts on): %s" % (len(listening(a)), listening(a)))
    check(len(listening(b)) == 1, "the port in use: %s (only the test's own listener)" % listening(b))
    check(len(listening(c)) == 2, "the moved listener's old port: %s" % listening(c))
    served, hung = 0, []
    for i in range(40):
        s = socket.create_connection((lib.LOOPBACK, a), timeout=2)
        try:
            s.settimeout(2)
            s.sendall(b"n%02d" % i)
            got = lib.recv_exact(s, 3)
            served += got == b"n%02d" % i
        except OSError as e:
            hung.append("%d: %r" % (i, e))
        finally:
            s.close()
    check(served == 40, "after the failed reload %d of 40 new connections were served; %s"
          % (served, hung[:5]))
    lib.check_echo(c, b"the other listener too", up)


@lib.timeout(90)
def test_reload_with_slow_new_generation_healthz_answers_and_killed_shard_restarts_within_2s(t):
    if lib.IO == "epoll":
        raise lib.Skip("the slow start is a delayed io_uring_setup; shards on epoll never call it")
    delay = 4.0
    t.binary = lib.strace_delay_wrapper(t, "io_uring_setup", delay)
    up = t.echo()
    port, aport = lib.free_port(), lib.free_port()
    conf = lib.echo_config(up, port, workers=2, admin={"listen": "127.0.0.1:%d" % aport})
    p = t.proxy(conf, probe=False)
    p.wait_ready(timeout_s=30)
    old = p.wait_shards(2)
    m = p.reload(conf)
    time.sleep(0.3)  # the new generation's shards are in their slow start
    st, dt = _healthz(aport, 1.0)
    check(st == 200, "/healthz during a slow reload: %s after %.2f s, want 200 within 1 s; log:\n%s"
          % (st, dt, p.tail()))
    os.kill(old[0], signal.SIGKILL)
    t0 = time.monotonic()
    line = p.wait_log(r"killed by signal 9 .*restarting in 0 ms", timeout_s=2.0, after=m)
    check(line is not None, "the killed shard was not noticed within 2 s during a slow reload; "
          "log:\n%s" % p.tail())
    new = lib.wait_until(lambda: len(set(p.shards()) - set(old)) >= 3, 2.0 - (time.monotonic() - t0))
    check(new, "no shard restarted within 2 s of the kill during a slow reload: children %s, "
          "before %s" % (p.shards(), old))
    p.expect_log(r"reload: generation 2 ready", timeout_s=delay + 10, after=m)
    lib.check_echo(port, b"served after the slow reload", up)


@lib.timeout(120)
def test_first_connections_after_each_of_15_reloads_are_served_at_once(t):
    """A draining shard's accept that was woken for a connection and then
    cancelled must not leave that connection waiting in the backlog for the
    next one to come (the new generation's shard was not woken for it)."""
    up = t.echo()
    port = lib.free_port()
    conf = lib.echo_config(up, port, workers=2)
    p = t.proxy(conf)
    for gen in range(2, 17):
        for i in range(3):
            lib.check_echo(port, b"a" * 1000, up, timeout_s=3)
        m = p.reload()
        p.expect_log(r"reload: generation %d ready" % gen, timeout_s=10, after=m)
        for i in range(3):
            t0 = time.monotonic()
            lib.check_echo(port, b"b" * 1003, up, timeout_s=2,
                           what="reload %d, connection %d after it:" % (gen - 1, i))
            dt = time.monotonic() - t0
            check(dt < 1.5, "reload %d, connection %d after it took %.2f s" % (gen - 1, i, dt))
