"""Slow peers (issue 11): sessions whose reader stopped must not starve the
others on the same shard, in every relay engine, and the proxy's memory
stays within its documented per-connection bound (docs/operations.md,
"Memory per connection")."""

import ctypes
import os
import socket
import subprocess
import threading
import time

import lib
from lib import MiB, check

UPLOADS = 20    # clients sending to an upstream that never reads
DOWNLOADS = 60  # clients that never read what an upstream keeps sending
ECHO = 16 * MiB  # long enough that one scheduling hiccup is a small part of it

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


def _echo_secs(port, seed):
    """Seconds one echo of ECHO bytes through the proxy on port takes, checked intact."""
    data = lib.payload(ECHO, seed=seed)
    t0 = time.monotonic()
    r = lib.echo_transfer(port, data, timeout_s=30)
    took = time.monotonic() - t0
    check(r["end"] == "eof" and r["received"] == ECHO and r["sha"] == lib.sha(data),
          "%d-byte echo broken: got %d bytes, end=%s %s" % (ECHO, r["received"], r["end"], r["error"]))
    return took


def _paired_rates(loaded_port, twin_port, seed, rounds=5):
    """Echo rates through the loaded proxy and its twin without slow peers,
    measured in pairs back to back (the order alternating) so both of a pair
    see the same load from the rest of the machine. Returns the median of
    the pairs' loaded/twin ratios and the rates of the median pair: one
    unlucky pair, either way, does not decide."""
    pairs = []
    for i in range(rounds):
        order = [("twin", twin_port), ("loaded", loaded_port)]
        if i % 2:
            order.reverse()
        rate = {}
        for which, port in order:
            rate[which] = ECHO / _echo_secs(port, seed + 2 * i + (which == "loaded"))
        pairs.append((rate["loaded"] / rate["twin"], rate["loaded"], rate["twin"]))
    pairs.sort()
    return pairs[len(pairs) // 2]


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


def _slow_peers_do_not_starve_a_fresh_echo(t, relay, limits=None, min_ratio=0.5):
    """The baseline is a twin proxy (same configuration, same echo server,
    no slow peers) measured in pairs with the loaded one: a bound against a
    rate taken earlier failed whenever the machine got busier in between."""
    echo = t.echo()
    sink = t.server(SinkServer, name="sink")
    source = t.server(SourceServer, name="source")

    def start(name):
        pe, ps, pd = lib.free_port(), lib.free_port(), lib.free_port()
        p = t.proxy(lib.config(
            [lib.listener("echo", pe, "echo"), lib.listener("sink", ps, "sink"),
             lib.listener("source", pd, "source")],
            [lib.upstream("echo", [echo.address]), lib.upstream("sink", [sink.address]),
             lib.upstream("source", [source.address])],
            workers=1, relay=relay, access_log=False, limits=limits), name=name)
        return p, pe, ps, pd

    p, pe, ps, pd = start("proxy")
    twin, twin_pe, _, _ = start("twin")
    shard = p.wait_shards(1)[0]
    rss0 = _rss_kib(shard)

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

    ratio, loaded, unloaded = _paired_rates(pe, twin_pe, 200)
    rss = _rss_kib(shard)
    pipes = lib.fd_count(shard, "pipe") or 0
    lib.log("%s: median pair: with the slow peers %.1f MiB/s, the twin without them %.1f MiB/s "
            "(%.2f); shard RSS %d -> %d KiB, %d pipe fds"
            % (relay, loaded / MiB, unloaded / MiB, ratio, rss0, rss, pipes))
    check(ratio >= min_ratio,
          "%s: with %d slow uploads and %d slow downloads on the shard a fresh %d MiB echo ran "
          "at %.1f MiB/s, under %.2f of the %.1f MiB/s of a twin proxy without them measured "
          "right beside it (the median of 5 pairs)"
          % (relay, UPLOADS, DOWNLOADS, ECHO // MiB, loaded / MiB, min_ratio, unloaded / MiB))
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
    session its share. Its share, not all of it: near an empty ring a
    direction that holds nothing is served first, but each of its receives
    then waits for a buffer the slow ones give back, so the fresh echo runs
    at a little over half the twin's rate (0.51-0.60 on epoll on a quiet
    2-core machine). Starving would be far below that; 0.4 also catches the
    unfairness of an epoll change that was reverted for it (0.34-0.48)."""
    _slow_peers_do_not_starve_a_fresh_echo(t, "copy", limits={"max_connections": 200},
                                           min_ratio=0.4)


@lib.timeout(120)
def test_slow_peers_do_not_starve_a_fresh_echo_with_relay_auto_and_a_small_ring(t):
    _slow_peers_do_not_starve_a_fresh_echo(t, "auto", limits={"max_connections": 200},
                                           min_ratio=0.4)


# Slow uploads to a sink that never reads, more than it takes to hold every
# buffer of the small ring (256 with max_connections 200): the first ones up
# to SP_COPY_QMAX (8) each while the ring is not low, and then, near an
# empty ring, every session that holds none and whose socket to the sink
# polls writable takes one, which it keeps once that socket is full.
PINNERS = 150
FRESH_ECHO = 256 * 1024
FRESH_S = 2.0  # generous for a shared 2-core box; without the fix it stalls for good
CLONE_NEWNET = 0x40000000


def _own_network_with_small_send_buffers():
    """Move this test (its process: each test runs in its own) into a new
    network namespace whose TCP send buffers are 16 KiB at most
    (net.ipv4.tcp_wmem is per namespace), as under TCP memory pressure: a
    socket that polls writable then has room for only part of a 16 KiB copy
    buffer, so a buffer taken for a sink that never reads stays held. With
    the default sizes (hundreds of KiB on loopback) a writable socket takes
    a whole buffer and the ring keeps its last few free."""
    if os.geteuid() != 0:
        raise lib.Skip("needs root (a network namespace)")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise lib.Skip("unshare(CLONE_NEWNET): %s" % os.strerror(ctypes.get_errno()))
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with open("/proc/sys/net/ipv4/tcp_wmem", "w") as f:
        f.write("4096 16384 16384")


def _fresh_echo_while_slow_uploads_hold_every_buffer(t, relay):
    """Before the copy engine's spares, a fresh session's first recv found
    the ring empty and waited in line for a buffer none of the slow
    sessions would give back: relay copy got 0 bytes of the echo back in
    6 s (every run on io_uring, most on epoll). relay auto did not stall
    here (its bulk uploads stop taking buffers once marked for splice), and
    must not start to."""
    _own_network_with_small_send_buffers()
    echo = t.echo()
    sink = t.server(SinkServer, name="sink")
    pe, ps = lib.free_port(), lib.free_port()
    p = t.proxy(lib.config(
        [lib.listener("echo", pe, "echo"), lib.listener("sink", ps, "sink")],
        [lib.upstream("echo", [echo.address]), lib.upstream("sink", [sink.address])],
        workers=1, relay=relay, access_log=False, limits={"max_connections": 200}))
    p.wait_shards(1)
    ups = []
    t.defer(lambda: [s.close() for s in ups])
    for _ in range(PINNERS):
        s = lib.connect(ps)
        s.setblocking(False)
        ups.append(s)
    _fill(ups, time.monotonic() + 2.0)  # every path to the sink is full by now

    data = lib.payload(FRESH_ECHO, seed=11)
    t0 = time.monotonic()
    r = lib.echo_transfer(pe, data, timeout_s=3 * FRESH_S)
    took = time.monotonic() - t0
    lib.log("%s: with %d slow uploads holding the copy buffers, a fresh %d KiB echo took %.2f s"
            % (relay, PINNERS, FRESH_ECHO // 1024, took))
    check(r["end"] == "eof" and r["received"] == FRESH_ECHO and r["sha"] == lib.sha(data),
          "%s: with %d slow uploads holding the copy buffers a fresh %d KiB echo stalled: got "
          "%d bytes back in %.1f s, end=%s %s" % (relay, PINNERS, FRESH_ECHO // 1024,
                                                 r["received"], took, r["end"], r["error"]))
    check(took <= FRESH_S, "%s: a fresh %d KiB echo took %.2f s with %d slow uploads on the shard, "
          "over %.1f s" % (relay, FRESH_ECHO // 1024, took, PINNERS, FRESH_S))


@lib.timeout(120)
def test_a_fresh_echo_is_not_stalled_by_slow_uploads_holding_every_buffer_with_relay_copy(t):
    _fresh_echo_while_slow_uploads_hold_every_buffer(t, "copy")


@lib.timeout(120)
def test_a_fresh_echo_is_not_stalled_by_slow_uploads_holding_every_buffer_with_relay_auto(t):
    _fresh_echo_while_slow_uploads_hold_every_buffer(t, "auto")
