"""Slow peers (issue 11): sessions whose reader stopped must not starve the
others on the same shard, in every relay engine, and the proxy's memory
stays within its documented per-connection bound (docs/operations.md,
"Memory per connection")."""

import os
import socket
import threading
import time

import lib
from lib import MiB, check

UPLOADS = 20    # clients sending to an upstream that never reads
DOWNLOADS = 60  # clients that never read what an upstream keeps sending
ECHO = 4 * MiB

# The documented bound (docs/operations.md): a copy direction queues at most
# SP_COPY_QMAX (8) buffers of 16 KiB, a splice direction one pipe of 256 KiB.
COPY_DIR_BYTES = 8 * 16 * 1024
SPLICE_DIR_BYTES = 256 * 1024


class SinkServer(lib.TcpServer):
    """Accepts and never reads."""

    def handle(self, conn):
        while not self.stopping:
            time.sleep(0.1)


class SourceServer(lib.TcpServer):
    """Sends without end until the connection breaks."""

    CHUNK = b"s" * 65536

    def handle(self, conn):
        conn.settimeout(0.5)
        while not self.stopping:
            try:
                conn.send(self.CHUNK)
            except socket.timeout:
                continue


def _rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _echo_rate(port, up, seed, tries=3):
    """Bytes/s of one 4 MiB echo through the proxy (best of tries: the
    machine running the tests may be busy with other work)."""
    best = 0.0
    for i in range(tries):
        data = lib.payload(ECHO, seed=seed + i)
        t0 = time.monotonic()
        r = lib.echo_transfer(port, data, timeout_s=20)
        took = time.monotonic() - t0
        check(r["end"] == "eof" and r["received"] == ECHO and r["sha"] == lib.sha(data),
              "4 MiB echo broken: got %d bytes, end=%s %s" % (r["received"], r["end"], r["error"]))
        best = max(best, ECHO / took)
    return best


def _fill(socks, stop_at):
    """Keep the upload clients' send buffers full until stop_at."""
    chunk = b"u" * 65536
    while time.monotonic() < stop_at:
        for s in socks:
            try:
                while True:
                    s.send(chunk)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:  # closed at teardown
                return
        time.sleep(0.05)


def _slow_peers_do_not_starve_a_fresh_echo(t, relay, limits=None):
    echo = t.echo()
    sink = t.server(SinkServer, name="sink")
    source = t.server(SourceServer, name="source")
    pe, ps, pd = lib.free_port(), lib.free_port(), lib.free_port()
    p = t.proxy(lib.config(
        [lib.listener("echo", pe, "echo"), lib.listener("sink", ps, "sink"),
         lib.listener("source", pd, "source")],
        [lib.upstream("echo", [echo.address]), lib.upstream("sink", [sink.address]),
         lib.upstream("source", [source.address])],
        workers=1, relay=relay, access_log=False, limits=limits))
    shard = p.wait_shards(1)[0]
    rss0 = _rss_kib(shard)
    base = _echo_rate(pe, echo, 100)

    ups = []
    for _ in range(UPLOADS):
        s = lib.connect(ps)
        s.setblocking(False)
        ups.append(s)
    downs = [lib.connect(pd) for _ in range(DOWNLOADS)]
    t.defer(lambda: [s.close() for s in ups + downs])
    _fill(ups, time.monotonic() + 2.0)  # every slow direction is full by now
    filler = threading.Thread(target=_fill, args=(ups, time.monotonic() + 30), daemon=True)
    filler.start()

    loaded = _echo_rate(pe, echo, 200, tries=5)
    rss = _rss_kib(shard)
    pipes = lib.fd_count(shard, "pipe") or 0
    lib.log("%s: unloaded %.1f MiB/s, loaded %.1f MiB/s; shard RSS %d -> %d KiB, %d pipe fds"
            % (relay, base / MiB, loaded / MiB, rss0, rss, pipes))
    check(loaded >= base / 2,
          "%s: with %d slow uploads and %d slow downloads on the shard a fresh 4 MiB echo ran "
          "at %.1f MiB/s, under half its unloaded %.1f MiB/s"
          % (relay, UPLOADS, DOWNLOADS, loaded / MiB, base / MiB))
    # Memory: user memory (the copy engine's buffers) plus pipe contents
    # (at most one full pipe per direction, two fds each), against the
    # documented per-connection bound for every slow session, both ways.
    nsess = UPLOADS + DOWNLOADS
    per_conn = 2 * (COPY_DIR_BYTES if relay == "copy" else
                    SPLICE_DIR_BYTES if relay == "splice" else
                    max(COPY_DIR_BYTES, SPLICE_DIR_BYTES))
    used = max(0, rss - rss0) * 1024 + (pipes // 2) * SPLICE_DIR_BYTES
    check(used <= nsess * per_conn + 2 * MiB,
          "%s: %d slow sessions hold %d KiB (RSS growth + pipes), over the bound of %d KiB "
          "per connection" % (relay, nsess, used // 1024, per_conn // 1024))


@lib.timeout(120)
def test_slow_peers_do_not_starve_a_fresh_echo_with_relay_copy(t):
    _slow_peers_do_not_starve_a_fresh_echo(t, "copy")


@lib.timeout(120)
def test_slow_peers_do_not_starve_a_fresh_echo_with_relay_splice(t):
    _slow_peers_do_not_starve_a_fresh_echo(t, "splice")


@lib.timeout(120)
def test_slow_peers_do_not_starve_a_fresh_echo_with_relay_auto(t):
    _slow_peers_do_not_starve_a_fresh_echo(t, "auto")


@lib.timeout(120)
def test_slow_peers_do_not_starve_a_fresh_echo_with_relay_copy_and_a_small_ring(t):
    """max_connections 200: the copy ring has 256 buffers, fewer than the
    slow directions may hold together (80 x 8); they still leave the fresh
    session its share."""
    _slow_peers_do_not_starve_a_fresh_echo(t, "copy", limits={"max_connections": 200})


@lib.timeout(120)
def test_slow_peers_do_not_starve_a_fresh_echo_with_relay_auto_and_a_small_ring(t):
    _slow_peers_do_not_starve_a_fresh_echo(t, "auto", limits={"max_connections": 200})
