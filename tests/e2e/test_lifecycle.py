"""Process life and limits: graceful stop, shard crash and restart, load
through wrk, no descriptor leak, limits.max_connections."""

import ctypes
import os
import re
import signal
import socket
import threading
import time

import lib
from lib import MiB, check


def _sigterm_inflight(t, whole_group):
    up, port, p = t.echo_proxy(limits={"drain_timeout_ms": 20000})
    data = lib.payload(16 * MiB, seed=51)
    res = {}

    def transfer():
        # paced at 8 MiB/s: about 2 s, so SIGTERM lands mid-transfer
        res["r"] = lib.echo_transfer(port, data, rate=8 * MiB, chunk=65536, timeout_s=30)
        res["t"] = time.monotonic()

    th = threading.Thread(target=transfer, daemon=True)
    th.start()
    check(lib.wait_until(lambda: up.received > 0, 5), "transfer did not start")
    time.sleep(0.3)
    pgid = p.pid
    if whole_group:  # Ctrl-C in a terminal, kill -- -PGID, systemd's control-group kill
        os.killpg(pgid, signal.SIGTERM)
    else:
        p.signal(signal.SIGTERM)
    t_term = time.monotonic()
    th.join(40)
    check("r" in res, "transfer still running 40 s after SIGTERM")
    r = res["r"]
    check(res["t"] - t_term > 0.3, "transfer ended %.2f s after SIGTERM: it was not in flight (test too fast?)"
          % (res["t"] - t_term))
    check(r["end"] == "eof" and r["received"] == len(data) and r["sha"] == lib.sha(data),
          "in-flight transfer after SIGTERM: got back %d of %d bytes (end=%s %s)%s; log:\n%s"
          % (r["received"], len(data), r["end"], r["error"],
             "" if r["sha"] == lib.sha(data) else " sha mismatch", p.tail()))
    check(up.has_record(lib.sha(data)), "upstream did not receive the in-flight transfer intact")
    rc = p.wait_exit(15)
    check(rc is not None, "supervisor still running 15 s after the last session ended; log:\n%s" % p.tail())
    check(rc == 0, "supervisor exited %s after SIGTERM, want 0; log:\n%s" % (rc, p.tail()))
    left = lib.wait_until(lambda: not lib.pgid_members(pgid), 3)
    check(left, "processes left behind after the supervisor exited: %s" % lib.pgid_members(pgid))


@lib.timeout(60)
def test_sigterm_lets_inflight_transfer_finish_then_exits_0(t):
    _sigterm_inflight(t, whole_group=False)


@lib.timeout(60)
def test_sigterm_to_whole_process_group_still_drains_inflight_transfer(t):
    _sigterm_inflight(t, whole_group=True)


def test_sigterm_idle_proxy_exits_0_promptly(t):
    _, _, p = t.echo_proxy()
    pgid = p.pid
    t0 = time.monotonic()
    rc = p.stop(timeout_s=10)
    check(rc == 0, "exit status %s after SIGTERM on an idle proxy, want 0; log:\n%s" % (rc, p.tail()))
    check(time.monotonic() - t0 < 3, "idle proxy took %.1f s to stop" % (time.monotonic() - t0))
    check(lib.wait_until(lambda: not lib.pgid_members(pgid), 3),
          "processes left behind: %s" % lib.pgid_members(pgid))


def test_sigterm_to_whole_process_group_idle_proxy_exits_0_promptly(t):
    """The group's SIGTERM and the supervisor's order to its shards must not
    merge into one pending signal that the shards then ignore."""
    up, port, p = t.echo_proxy()
    pgid = p.pid
    p.wait_shards(2)
    socks = [lib.connect(port) for _ in range(50)]
    for s in socks:
        lib.roundtrip(s)
        s.close()
    check(lib.wait_until(lambda: up.active() == 0, 5), "sessions did not end")
    for attempt in range(3):  # the merge is a race: give it a few chances
        if attempt:
            p = t.proxy(p.conf)
            pgid = p.pid
            p.wait_shards(2)
        t0 = time.monotonic()
        os.killpg(pgid, signal.SIGTERM)
        rc = p.wait_exit(10)
        check(rc == 0, "exit status %s after SIGTERM to the process group, want 0; log:\n%s" % (rc, p.tail()))
        check(time.monotonic() - t0 < 3, "idle proxy took %.1f s to stop on a group SIGTERM"
              % (time.monotonic() - t0))


def test_second_sigterm_stops_at_once(t):
    up, port, p = t.echo_proxy(limits={"drain_timeout_ms": 30000})
    s = lib.connect(port)
    lib.roundtrip(s)  # an open session would hold a graceful stop for 30 s
    p.signal(signal.SIGTERM)
    time.sleep(0.3)
    check(p.alive(), "proxy exited on the first SIGTERM with a session open (drain_timeout_ms 30000)")
    p.signal(signal.SIGTERM)
    rc = p.wait_exit(5)
    s.close()
    check(rc is not None, "proxy still running 5 s after a second SIGTERM")


def test_shard_sigkill_is_restarted_and_proxy_keeps_serving(t):
    up, port, p = t.echo_proxy(workers=2)
    before = p.wait_shards(2)
    victim = before[0]
    m = p.mark()
    os.kill(victim, signal.SIGKILL)
    p.expect_log(r"shard \d+.*restarted", timeout_s=5, after=m, what="after SIGKILL of shard pid %d" % victim)
    now = lib.wait_until(lambda: (lambda s: s if len(s) == 2 and victim not in s else None)(p.shards()), 5)
    check(now, "shards after the kill: %s (killed %d)" % (p.shards(), victim))

    def one(i):
        lib.check_echo(port, lib.payload(2000 + i, seed=600 + i), up, what="connection %d after restart:" % i)

    res = lib.run_threads(one, [(i,) for i in range(50)], timeout_s=60)
    bad = [repr(r) for r in res if isinstance(r, BaseException)]
    check(not bad, "%d of 50 connections failed after the restart: %s" % (len(bad), "; ".join(bad[:3])))
    check(p.alive(), "supervisor died")


def _hold_rings(pid):
    """Copies (pidfd_getfd) of pid's io_uring descriptors. While one is held
    the kernel cannot tear that ring down when pid dies: its armed requests
    stay queued on the sockets they wait on, as they do for real in the
    moments before the kernel's asynchronous ring teardown (io_ring_exit_work)
    runs. None on the epoll backend."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    held = []
    try:
        for name in os.listdir("/proc/%d/fd" % pid):
            try:
                if os.readlink("/proc/%d/fd/%s" % (pid, name)) != "anon_inode:[io_uring]":
                    continue
            except OSError:
                continue
            fd = libc.syscall(438, pidfd, int(name), 0)  # SYS_pidfd_getfd
            if fd < 0:
                for h in held:
                    os.close(h)
                raise lib.Skip("pidfd_getfd: %s" % os.strerror(ctypes.get_errno()))
            held.append(fd)
    finally:
        os.close(pidfd)
    return held


@lib.timeout(60)
def test_restarted_shard_gets_every_new_connection_while_the_killed_shards_ring_lingers(t):
    # A dead shard's armed accept is not gone with the process: the kernel
    # removes it from the listening socket when it tears the ring down,
    # asynchronously. A wait that takes the socket's one exclusive wake-up
    # there would leave the restarted shard's connections unaccepted.
    up, port, p = t.echo_proxy(workers=2)
    victim = p.wait_shards(2)[0]
    held = _hold_rings(victim)
    t.defer(lambda: [os.close(h) for h in held])
    m = p.mark()
    os.kill(victim, signal.SIGKILL)
    line = p.expect_log(r"shard (\d+) restarted", timeout_s=5, after=m, what="after SIGKILL of pid %d" % victim)
    slot = re.search(r"shard (\d+) restarted", line).group(1)
    m = p.mark()
    for i in range(16):  # one at a time: no later connection wakes a stuck one
        lib.check_echo(port, lib.payload(3000 + i, seed=700 + i), up, timeout_s=3,
                       what="connection %d after the restart (%d rings of the dead shard held):" % (i, len(held)))
    shards = [e.get("shard") for e in p.access(after=m)]
    check(slot in shards, "no connection reached the restarted shard %s (access log shards: %s)" % (slot, shards))


@lib.timeout(60)
@lib.needs("wrk")
def test_wrk_64_connections_5s_zero_socket_errors(t):
    http = t.http_upstream()
    port = lib.free_port()
    t.proxy(lib.config([lib.listener("web", port, "web")], [lib.upstream("web", [http.address])]))
    r = lib.wrk(t, port, threads=2, conns=64, duration=5)
    r.check_clean("wrk -c64 -d5s through the proxy")


def _churn(port, n, batch=50):
    """n connections in batches: half of each batch relays a round trip first,
    half is reset right after connect; every one is closed with an RST."""
    for _ in range(n // batch):
        socks = [lib.connect(port) for _ in range(batch)]
        for i, s in enumerate(socks):
            if i % 2 == 0:
                lib.roundtrip(s, b"x" * 100)
        for s in socks:
            lib.reset_close(s)


PIPE_POOL_CAP = 256  # shard/shard.c: sp_pipepool_init(&sh->pipes, 256, 0)


def _fd_leak(t, relay):
    up, port, p = t.echo_proxy(workers=2, relay=relay)
    shards = p.wait_shards(2)
    pids = shards + [p.pid]
    _churn(port, 200)  # warm up the pools (buffers, pipes) first
    check(lib.wait_until(lambda: up.active() == 0, 5), "warm-up: %d upstream connections still open" % up.active())
    time.sleep(0.5)
    # Sockets must come back to the baseline exactly; the splice engine's
    # pipe pool may keep idle (empty) pipes for reuse, bounded by its cap.
    base = {pid: lib.fd_count(pid, "socket") for pid in pids}
    t0 = time.monotonic()
    _churn(port, 1000)
    lib.log("1000 connections in %.1f s" % (time.monotonic() - t0))
    check(lib.wait_until(lambda: up.active() == 0, 5),
          "%d upstream connections still open 5 s after their clients reset" % up.active())

    def settled():
        now = {pid: lib.fd_count(pid, "socket") for pid in pids}
        return now if all(now[pid] is not None and abs(now[pid] - base[pid]) <= 2 for pid in pids) else None

    ok = lib.wait_until(settled, 5, 0.1)
    now = {pid: lib.fd_count(pid, "socket") for pid in pids}
    check(ok, "%s: socket counts not back to baseline (pid: before -> after): %s"
          % (relay, ", ".join("%d: %s -> %s" % (pid, base[pid], now[pid]) for pid in pids)))
    pipes = {pid: lib.fd_count(pid, "pipe") for pid in pids}
    check(all(n is not None and n <= 2 * PIPE_POOL_CAP + 4 for n in pipes.values()),
          "%s: pipe descriptors beyond the pool's bound: %s" % (relay, pipes))
    check(p.shards() == shards, "shards changed during the churn: %s -> %s" % (shards, p.shards()))


@lib.timeout(60)
def test_no_fd_leak_after_1000_reset_connections_copy(t):
    _fd_leak(t, "copy")


@lib.timeout(60)
def test_no_fd_leak_after_1000_reset_connections_splice(t):
    _fd_leak(t, "splice")


def test_max_connections_extra_client_waits_in_backlog_not_reset(t):
    up, port, _ = t.echo_proxy(probe=False, workers=1, limits={"max_connections": 10})
    held = []
    for i in range(10):
        s = lib.connect(port)
        lib.roundtrip(s, b"held %d" % i)
        held.append(s)
    extra = lib.connect(port)  # the kernel completes the handshake: it sits in the backlog
    extra.sendall(b"eleventh")
    extra.settimeout(1.5)
    try:
        d = extra.recv(100)
        check(not d, "11th connection was served while 10 were open (max_connections 10): got %r" % d)
        lib.fail("11th connection was closed instead of waiting")
    except socket.timeout:
        pass
    except ConnectionResetError:
        lib.fail("11th connection was reset instead of waiting in the backlog")
    held[0].close()
    extra.settimeout(5)
    try:
        got = lib.recv_exact(extra, 8)
    except socket.timeout:
        lib.fail("11th connection not served within 5 s after one of the 10 closed")
    check(got == b"eleventh", "11th connection got %r" % got)
    for s in held[1:]:
        lib.roundtrip(s, b"still")
    extra.close()
    for s in held[1:]:
        s.close()


def test_max_connections_beyond_fd_limit_is_reported(t):
    up = t.echo()
    port = lib.free_port()
    # 100000 sessions need about 200000 descriptors; the hard limit here is far lower
    p = t.proxy(lib.echo_config(up, port, limits={"max_connections": 100000}), ready=False)
    ready = p.wait_log(r"ready: generation 1", 10)
    if not ready:
        check(p.wait_exit(1) is not None, "neither ready nor exited after 10 s; log:\n%s" % p.tail())
    hits = [l for l in p.lines() if "max_connections" in l]
    check(hits, "nothing in the log says max_connections 100000 needs more descriptors than the limit "
          "(%s); log:\n%s" % (open("/proc/self/limits").read().split("Max open files")[1].split("\n")[0].strip(),
                                p.tail()))
    if ready:
        lib.check_echo(port, b"still serves", up)
