"""Limits (issue 11): a shard at its max_connections share leaves waiting
clients in the backlog and takes them one by one as sessions close, never
taking more than fit and resetting the rest; running out of descriptors
pauses accepting instead of failing sessions."""

import select
import socket
import time

import lib
from lib import check

MAX = 8
WAITERS = 100


def _held(port, n):
    """n sessions through the proxy, each proven relayed by an echo."""
    out = []
    for i in range(n):
        s = lib.connect(port)
        lib.roundtrip(s, b"held %d" % i)
        out.append(s)
    return out


def _poll_waiters(waiting, echoed, reset, timeout_s, until=None, close_echoed=False):
    """Read what the waiters got for timeout_s (or until until() is true):
    an echoed byte moves a waiter to echoed; a reset or EOF to reset."""
    deadline = time.monotonic() + timeout_s
    while waiting and time.monotonic() < deadline:
        if until and until():
            return
        r, _, _ = select.select(list(waiting), [], [], 0.05)
        for s in r:
            try:
                d = s.recv(16)
            except OSError as e:
                d = None
                reset.append(repr(e))
            if d == b"w":
                echoed.append(s)
                if close_echoed:
                    s.close()
            elif d == b"":
                reset.append("EOF")
            elif d is not None:
                reset.append("unexpected %r" % d)
            waiting.discard(s)


@lib.timeout(90)
def test_at_max_connections_waiters_are_admitted_one_per_close_and_none_is_reset(t):
    """max_connections reached on one shard, 100 more clients waiting (each
    sent a byte): closing one held session admits exactly one waiter;
    closing all admits all; none is reset."""
    up = t.echo()
    port = lib.free_port()
    p = t.proxy(lib.config([lib.listener("l", port, "echo")],
                           [lib.upstream("echo", [up.address])], workers=1,
                           limits={"max_connections": MAX}))
    held = _held(port, MAX)
    waiting = set()
    for _ in range(WAITERS):
        s = socket.create_connection((lib.LOOPBACK, port), timeout=5)
        s.sendall(b"w")
        waiting.add(s)
    echoed, reset = [], []
    _poll_waiters(waiting, echoed, reset, 1.0)
    check(not echoed and not reset,
          "at the limit: %d waiters served, %d reset before any session closed (%s)"
          % (len(echoed), len(reset), reset[:3]))

    held.pop().close()
    _poll_waiters(waiting, echoed, reset, 1.5)
    check(len(echoed) == 1 and not reset,
          "closing one held session admitted %d waiters and reset %d (%s); want exactly 1, "
          "none reset; log tail:\n%s" % (len(echoed), len(reset), reset[:3], p.tail(10)))

    for s in held + echoed:
        s.close()
    echoed.clear()
    _poll_waiters(waiting, echoed, reset, 30.0, close_echoed=True)
    check(not reset and not waiting,
          "after closing every held session: %d admitted, %d reset (%s), %d still waiting; "
          "log tail:\n%s" % (len(echoed), len(reset), reset[:3], len(waiting), p.tail(10)))
    check(len(echoed) == WAITERS - 1, "admitted %d of %d" % (len(echoed), WAITERS - 1))
