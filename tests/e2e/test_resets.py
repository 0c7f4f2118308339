"""Resets (issue 11): when one side resets, what the proxy already
acknowledged to it still reaches the other side before the reset is passed
on, for every relay engine; a session that failed before routing logs no
route, upstream or server."""

import fcntl
import socket
import struct
import termios
import time

import lib
from lib import check

KiB = 1024

SIZE = 1024 * KiB
SMALL_BUF = 16 * KiB
READ_AFTER_S = 1.0


def _outq(sock):
    """Bytes in sock's send queue not yet acknowledged by the peer (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def _send_then_reset(sock, data, settle_s=0.5):
    """Send what the peer takes within settle_s, wait for it to be
    acknowledged, then reset. Returns how many bytes the peer acknowledged."""
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + settle_s
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sent += sock.send(data[sent:sent + 65536])
        except BlockingIOError:
            time.sleep(0.005)
    lib.wait_until(lambda: _outq(sock) == 0, settle_s)
    acked = sent - _outq(sock)
    lib.reset_close(sock)
    return acked


class LateReader(lib.TcpServer):
    """Starts reading READ_AFTER_S after accepting, through a small receive
    buffer, so the proxy is holding the client's bytes when the client resets."""

    def __init__(self, **kw):
        super().__init__(name="late", **kw)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUF)
        self.got = []

    def handle(self, conn):
        time.sleep(READ_AFTER_S)
        self.got.append(lib.recv_all(conn, timeout_s=20))


class SendThenReset(lib.TcpServer):
    """Sends what the proxy takes of SIZE bytes, waits for the ack, resets."""

    def __init__(self, data, **kw):
        self.data = data
        self.acked = []
        super().__init__(name="resetter", **kw)

    def handle(self, conn):
        self.acked.append(_send_then_reset(conn, self.data))


def _reset_proxy(t, up, relay):
    port = lib.free_port()
    p = t.proxy(lib.config([lib.listener("l", port, "r")], [lib.upstream("r", [up.address])],
                           workers=1, relay=relay), probe=False)
    return port, p


def _check_acked_then_reset(p, relay, data, acked, got, end, who, to, want_end):
    """who reset after the proxy acknowledged `acked` of its bytes; `to`, the
    other side, got `got` and then saw `end`: at least the acknowledged
    bytes, intact, then the reset, and the access log says want_end."""
    lib.log("%s: %s sent, proxy acknowledged %d bytes; %s got %d, then %s"
            % (relay, who, acked, to, len(got), end))
    check(acked > 0, "%s: the proxy acknowledged nothing" % relay)
    check(len(got) >= acked and got == data[:len(got)],
          "%s: the proxy acknowledged %d bytes of the %s's, then the %s reset: the %s got %d (%s)"
          % (relay, acked, who, who, to, len(got), "intact" if got == data[:len(got)] else "CORRUPT"))
    check(end == "reset", "%s: the %s's reset was not passed on (%s saw %s)" % (relay, who, to, end))
    lib.wait_until(lambda: want_end in [d.get("end") for d in p.access()], 5.0)
    ends = [d.get("end") for d in p.access()]
    check(want_end in ends, "%s: access log ends %s, want %s" % (relay, ends, want_end))


def _client_reset_delivers_acked_bytes(t, relay):
    up = t.server(LateReader)
    port, p = _reset_proxy(t, up, relay)
    data = lib.payload(SIZE, seed=11)
    c = lib.connect(port)
    acked = _send_then_reset(c, data)
    check(lib.wait_until(lambda: up.got, 20), "%s: the upstream never finished reading" % relay)
    got, end = up.got[0]
    _check_acked_then_reset(p, relay, data, acked, got, end, "client", "upstream", "client_reset")


def _upstream_reset_delivers_acked_bytes(t, relay):
    data = lib.payload(SIZE, seed=12)
    up = t.server(SendThenReset, data=data)
    port, p = _reset_proxy(t, up, relay)
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUF)
    c.connect((lib.LOOPBACK, port))
    check(lib.wait_until(lambda: up.acked, 10), "%s: the upstream never sent" % relay)
    time.sleep(READ_AFTER_S)
    got, end = lib.recv_all(c, timeout_s=20)
    _check_acked_then_reset(p, relay, data, up.acked[0], got, end, "upstream", "client",
                            "upstream_reset")


@lib.timeout(60)
def test_client_reset_after_acked_bytes_copy_delivers_them_upstream_then_resets(t):
    _client_reset_delivers_acked_bytes(t, "copy")


@lib.timeout(60)
def test_client_reset_after_acked_bytes_splice_delivers_them_upstream_then_resets(t):
    _client_reset_delivers_acked_bytes(t, "splice")


@lib.timeout(60)
def test_client_reset_after_acked_bytes_auto_delivers_them_upstream_then_resets(t):
    _client_reset_delivers_acked_bytes(t, "auto")


@lib.timeout(60)
def test_upstream_reset_after_acked_bytes_copy_delivers_them_to_client_then_resets(t):
    _upstream_reset_delivers_acked_bytes(t, "copy")


@lib.timeout(60)
def test_upstream_reset_after_acked_bytes_splice_delivers_them_to_client_then_resets(t):
    _upstream_reset_delivers_acked_bytes(t, "splice")


@lib.timeout(60)
def test_upstream_reset_after_acked_bytes_auto_delivers_them_to_client_then_resets(t):
    _upstream_reset_delivers_acked_bytes(t, "auto")


@lib.timeout(30)
def test_peek_phase_failures_log_no_route_upstream_or_server(t):
    """Sessions that end before routing (a bad PROXY header, a peek timeout,
    a client that resets while the proxy waits for its header) never had a
    route, an upstream or a server: the access log says '-'."""
    up = t.echo()
    port = lib.free_port()
    p = t.proxy(lib.config([lib.listener("pp", port, "echo", accept_proxy_protocol=True,
                                         peek_timeout_ms=300)],
                           [lib.upstream("echo", [up.address])], workers=1), probe=False)
    ports = []
    bad = lib.connect(port)
    bad.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not a PROXY header
    ports.append(bad.getsockname()[1])
    slow = lib.connect(port)
    slow.sendall(b"PROXY TCP4 ")  # never finished: peek timeout
    ports.append(slow.getsockname()[1])
    gone = lib.connect(port)
    gone.sendall(b"PROXY ")
    ports.append(gone.getsockname()[1])
    time.sleep(0.05)
    lib.reset_close(gone)
    entries = p.access_for_ports(ports, timeout_s=5)
    ends = sorted(e.get("end") for e in entries)
    # the reset one: a truncated header (bad_proxy_header) or client_reset
    check("bad_proxy_header" in ends and "peek_timeout" in ends and len(ends) == 3,
          "access log ends %s, want bad_proxy_header, peek_timeout and a third" % ends)
    for e in entries:
        check(e.get("route") == "-" and e.get("upstream") == "-" and e.get("server") == "-",
              "end=%s before routing logs route=%s upstream=%s server=%s, want '-' for each"
              % (e.get("end"), e.get("route"), e.get("upstream"), e.get("server")))
    bad.close()
    slow.close()
