"""Relay semantics (SPEC §5): every byte arrives intact both ways, for both
engines, large and small, many at once; half-close in each direction;
the access log accounts for the bytes."""

import json
import random
import re
import shutil
import socket
import subprocess
import threading

import lib
from lib import MiB, check

SIZES = [1, 1000, 65536, MiB + 7, 64 * MiB]


def _payload_sizes(t, relay):
    up, port, _ = t.echo_proxy(relay=relay)
    for i, n in enumerate(SIZES):
        data = lib.payload(n, seed=1000 + i)
        lib.check_echo(port, data, up, what="%s, %d bytes:" % (relay, n), timeout_s=60)


@lib.timeout(90)
def test_relay_copy_random_payloads_sha256_both_ways(t):
    _payload_sizes(t, "copy")


@lib.timeout(90)
def test_relay_splice_random_payloads_sha256_both_ways(t):
    _payload_sizes(t, "splice")


@lib.timeout(90)
def test_relay_auto_random_payloads_sha256_both_ways(t):
    _payload_sizes(t, "auto")


def test_relay_auto_moves_bulk_to_splice_and_keeps_small_on_copy(t):
    """auto: small messages never make a pipe; a bulk transfer does (the
    direction moved to splice), and its bytes still arrive intact."""
    up, port, p = t.echo_proxy(relay="auto", workers=1)
    shard = p.wait_shards(1)[0]
    base = lib.fd_count(shard, "pipe")  # the shard's notify pipe to the supervisor
    s = lib.connect(port)
    for i in range(50):
        lib.roundtrip(s, b"small message %d" % i)
    check(lib.fd_count(shard, "pipe") == base,
          "auto: small messages made %d pipe descriptors" % (lib.fd_count(shard, "pipe") - base))
    s.close()
    data = lib.payload(64 * MiB, seed=77)
    out = {}

    def bulk():
        try:
            out["r"] = lib.echo_transfer(port, data, timeout_s=60)
        except BaseException as e:  # noqa: B902 - reported below
            out["r"] = e

    th = threading.Thread(target=bulk, daemon=True)
    th.start()
    seen = []
    while th.is_alive():
        seen.append(lib.fd_count(shard, "pipe") or 0)
        th.join(0.01)
    r = out.get("r")
    check(isinstance(r, dict) and r["sha"] == lib.sha(data) and r["received"] == len(data),
          "auto: 64 MiB transfer broken: %r" % (r if not isinstance(r, dict) else
                                                 {k: r[k] for k in ("received", "end", "error")},))
    check(max(seen, default=0) > base, "auto: a 64 MiB transfer never moved to splice (no pipe seen)")


def _send_buffers(port):
    """{client port: SO_SNDBUF as the kernel keeps it (ss's tb)} of the
    proxy's accepted sockets on port."""
    out = subprocess.run(["ss", "-tmnH", "state", "established", "( sport = :%d )" % port],
                         capture_output=True, text=True, timeout=10).stdout
    bufs = {}
    peer = None
    for line in out.splitlines():
        m = re.search(r"127\.0\.0\.1:%d\s+127\.0\.0\.1:(\d+)" % port, line)
        if m:
            peer = int(m.group(1))
        m = re.search(r"\btb(\d+)", line)
        if m and peer is not None:
            bufs[peer] = int(m.group(1))
            peer = None
    return bufs


def _bulk_sizes_send_buffer(t, relay):
    """A bulk direction on a short path (loopback: microseconds) gets a fixed
    256 KiB send buffer on its destination (the kernel keeps twice that)
    instead of autotuning towards tcp_wmem's 4 MiB; bytes still arrive
    intact. Here: a client sends 16 MiB to an echo server and reads nothing
    at first, so the proxy's socket back to it fills up; ss shows that
    socket's buffer while it is full."""
    if not shutil.which("ss"):
        raise lib.Skip("ss (iproute2) is not installed")
    up, port, _ = t.echo_proxy(relay=relay, workers=1)
    with open("/proc/sys/net/core/wmem_max") as f:
        want = 2 * min(256 * 1024, int(f.read()))
    s = lib.connect(port)
    me = s.getsockname()[1]
    lib.roundtrip(s, b"small first")
    before = _send_buffers(port).get(me)
    check(before is not None and before != want,
          "%s: before any bulk the send buffer is %r, want autotuning's" % (relay, before))
    data = lib.payload(16 * MiB, seed=5)
    sender = threading.Thread(target=lib.send_all, args=(s, data), daemon=True)
    sender.start()
    seen = []
    lib.wait_until(lambda: seen.append(_send_buffers(port).get(me)) or seen[-1] == want, 10)
    s.settimeout(60)
    back = bytearray()
    while len(back) < len(data):
        d = s.recv(262144)
        if not d:
            break
        back += d
    sender.join(10)
    s.close()
    check(bytes(back) == bytes(data),
          "%s: 16 MiB echo: %d bytes came back, %s" % (
              relay, len(back), "intact" if bytes(back) == bytes(data) else "corrupted"))
    check(seen and seen[-1] == want,
          "%s: under bulk, the proxy's socket to the client kept send buffers %r, want %d "
          "(ss -tm tb)" % (relay, sorted(set(x for x in seen if x)), want))


def test_relay_splice_bulk_on_short_path_fixes_send_buffer(t):
    _bulk_sizes_send_buffer(t, "splice")


def test_relay_auto_bulk_on_short_path_fixes_send_buffer(t):
    _bulk_sizes_send_buffer(t, "auto")


def _concurrent(t, relay, sessions=200):
    up, port, _ = t.echo_proxy(relay=relay)
    rnd = random.Random(7)
    datas = [lib.payload(rnd.randint(1, 256 * 1024), seed=5000 + i) for i in range(sessions)]
    # connect all first, so the sessions really overlap
    socks = [lib.connect(port) for _ in range(sessions)]

    def one(i):
        return lib.echo_transfer(port, datas[i], sock=socks[i], timeout_s=60)

    results = lib.run_threads(one, [(i,) for i in range(sessions)], timeout_s=90)
    bad = []
    for i, r in enumerate(results):
        if isinstance(r, BaseException):
            bad.append("session %d: %r" % (i, r))
        elif r["sha"] != lib.sha(datas[i]) or r["received"] != len(datas[i]):
            bad.append("session %d: sent %d got %d back (end=%s %s)"
                       % (i, len(datas[i]), r["received"], r["end"], r["error"]))
        elif not up.has_record(lib.sha(datas[i]), timeout_s=5):
            bad.append("session %d: upstream never received its %d bytes intact" % (i, len(datas[i])))
    check(not bad, "%s: %d of %d sessions broken: %s" % (relay, len(bad), sessions, "; ".join(bad[:5])))


@lib.timeout(120)
def test_relay_copy_200_concurrent_sessions_sha256_both_ways(t):
    _concurrent(t, "copy")


@lib.timeout(120)
def test_relay_splice_200_concurrent_sessions_sha256_both_ways(t):
    _concurrent(t, "splice")


@lib.timeout(120)
def test_relay_auto_200_concurrent_sessions_sha256_both_ways(t):
    _concurrent(t, "auto")


def _half_close_client_first(t, relay):
    extra = lib.payload(2 * MiB, seed=11)
    up = t.server(lib.ReplyAfterEofServer, extra=extra, name="reply-after-eof")
    port = lib.free_port()
    t.proxy(lib.config([lib.listener("l", port, "u")], [lib.upstream("u", [up.address])], relay=relay))
    data = lib.payload(3 * MiB + 5, seed=12)
    s = lib.connect(port)
    s.settimeout(30)
    lib.send_all(s, data)
    s.shutdown(socket.SHUT_WR)  # client is done sending; upstream only answers after our FIN
    got, how = lib.recv_all(s)
    s.close()
    want = lib.sha(data).encode() + extra
    check(how == "eof", "%s: session was reset after the client's half-close (got %d bytes)" % (relay, len(got)))
    check(got[:64] == want[:64], "%s: upstream did not receive the client's bytes intact before its FIN "
          "(upstream saw sha %r)" % (relay, got[:64]))
    check(len(got) == len(want) and got == want,
          "%s: reply after half-close: got %d of %d bytes%s" % (relay, len(got), len(want),
                                                              "" if len(got) != len(want) else " (corrupt)"))


def test_half_close_client_to_upstream_copy_reply_still_delivered(t):
    _half_close_client_first(t, "copy")


def test_half_close_client_to_upstream_splice_reply_still_delivered(t):
    _half_close_client_first(t, "splice")


def test_half_close_client_to_upstream_auto_reply_still_delivered(t):
    _half_close_client_first(t, "auto")


def _half_close_upstream_first(t, relay):
    first = lib.payload(MiB + 3, seed=21)
    up = t.server(lib.HalfCloseFirstServer, first=first, name="half-close-first")
    port = lib.free_port()
    t.proxy(lib.config([lib.listener("l", port, "u")], [lib.upstream("u", [up.address])], relay=relay))
    s = lib.connect(port)
    s.settimeout(30)
    # read everything up to the upstream's FIN
    got, how = lib.recv_all(s)
    check(how == "eof" and got == first,
          "%s: upstream->client before its FIN: got %d of %d bytes (%s)%s"
          % (relay, len(got), len(first), how, ", content differs" if len(got) == len(first) else ""))
    # the other direction is still open: send after having seen the FIN
    data = lib.payload(2 * MiB + 9, seed=22)
    try:
        lib.send_all(s, data)
        s.shutdown(socket.SHUT_WR)
    except OSError as e:
        lib.fail("%s: client could not send after the upstream's half-close: %r" % (relay, e))
    rest, how = lib.recv_all(s)
    s.close()
    ok = lib.wait_until(lambda: any(r["sha"] == lib.sha(data) for r in up.records), 10)
    check(ok, "%s: upstream did not receive the %d bytes sent after its half-close (records %s)"
          % (relay, len(data), up.records))
    check(rest == b"", "%s: unexpected bytes after the upstream's FIN" % relay)


def test_half_close_upstream_to_client_copy_client_can_still_send(t):
    _half_close_upstream_first(t, "copy")


def test_half_close_upstream_to_client_splice_client_can_still_send(t):
    _half_close_upstream_first(t, "splice")


def test_half_close_upstream_to_client_auto_client_can_still_send(t):
    _half_close_upstream_first(t, "auto")


def test_access_log_text_line_per_connection_with_bytes_each_way(t):
    greeting = b"hi-there\n"
    up = t.echo(greeting=greeting)
    port = lib.free_port()
    p = t.proxy(lib.config([lib.listener("front", port, "echo")], [lib.upstream("echo", [up.address])]))
    data = lib.payload(12345, seed=31)
    s = lib.connect(port)
    cport = s.getsockname()[1]
    r = lib.echo_transfer(port, data, sock=s)
    check(r["received"] == len(data) + len(greeting), "relay broken: %r" % r)
    e = p.access_by_client_port([cport])[cport]
    want = {"listener": "front", "upstream": "echo", "server": up.address, "client": "127.0.0.1:%d" % cport,
            "bytes_in": str(len(data)), "bytes_out": str(len(data) + len(greeting)), "end": "done"}
    bad = {k: (e.get(k), v) for k, v in want.items() if e.get(k) != v}
    check(not bad, "access log fields (got, want): %s; line: %s" % (bad, e))
    for k in ("route", "shard", "gen", "duration_ms"):
        check(k in e, "access log line lacks %s=: %s" % (k, e))


def test_access_log_json_one_object_per_connection(t):
    up = t.echo()
    port = lib.free_port()
    p = t.proxy(lib.config([lib.listener("front", port, "echo")], [lib.upstream("echo", [up.address])],
                           log_format="json"))
    ports = []
    for i in range(3):
        s = lib.connect(port)
        ports.append(s.getsockname()[1])
        lib.echo_transfer(port, b"x" * (i + 1), sock=s)
    found = p.access_by_client_port(ports)
    keys = {"listener", "client", "route", "upstream", "server", "shard", "gen", "bytes_in", "bytes_out",
            "duration_ms", "end"}
    for i, cp in enumerate(ports):
        e = found[cp]
        check(keys <= set(e), "json access line lacks %s: %s" % (keys - set(e), e))
        check(e["bytes_in"] == str(i + 1) and e["bytes_out"] == str(i + 1) and e["end"] == "done",
              "json access line: %s" % e)
    # each is a whole JSON object on its own line
    lines = [l for l in p.lines() if '"listener"' in l]
    for l in lines:
        try:
            json.loads(l[l.index("{"):])
        except ValueError:
            lib.fail("access log line is not one JSON object: %r" % l)
