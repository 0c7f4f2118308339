"""Routes and upstreams (SPEC §4, issue 4): SNI routing with real TLS clients,
source routing (IPv4 and IPv6), PROXY protocol sent and accepted, the
balancing algorithms, backups, active and passive health checks.

Upstreams here say who they are: each greets a new connection with its name
and a newline, records every byte it receives until the client's FIN, then
closes; the TLS ones do the same inside TLS after the handshake."""

import os
import socket
import ssl
import struct
import subprocess
import threading
import time

import lib
from lib import check

# ---- upstreams -----------------------------------------------------------------


class Named(lib.TcpServer):
    """A threaded TCP server on host:port (0 = any) that greets with its name,
    then records what it receives until EOF. records: the non-empty byte
    strings received, one per connection (health checks send nothing)."""

    def __init__(self, name, host=lib.LOOPBACK, port=0, tls=None, echo=False):
        """tls: (certificate file, key file) to terminate TLS with; echo: send
        back what is received (always with tls)."""
        self.tls = None
        if tls:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(*tls)
            self.tls.sni_callback = self._on_sni
        self.echo = echo or tls is not None
        self.records = []
        self.snis = []
        super().__init__(name=name, host=host, port=port)

    def handle(self, conn):
        got = bytearray()
        try:
            conn.settimeout(10)
            s = conn
            if self.tls:
                s = self.tls.wrap_socket(conn, server_side=True)
            s.sendall(self.name.encode() + b"\n")
            while True:
                d = s.recv(65536)
                if not d:
                    break
                got += d
                if self.echo:
                    s.sendall(d)
        except (OSError, ssl.SSLError):
            pass
        finally:
            if got:
                with self.lock:
                    self.records.append(bytes(got))

    def _on_sni(self, sslobj, name, ctx):
        with self.lock:
            self.snis.append(name)

    def wait_records(self, n, timeout_s=5.0):
        ok = lib.wait_until(lambda: len(self.records) >= n, timeout_s)
        check(ok, "upstream %s: %d connections with data recorded, want %d" % (self.name, len(self.records), n))
        with self.lock:
            return list(self.records)


def named(t, name, **kw):
    srv = Named(name, **kw)
    t.defer(srv.close)
    return srv


def wait_listening(host, port, timeout_s=5.0):
    def ok():
        try:
            dial(port, host=host, timeout_s=0.5).close()
            return True
        except OSError:
            return False

    check(lib.wait_until(ok, timeout_s), "listener %s port %d does not accept connections" % (host, port))


def have_ipv6():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


# ---- clients -------------------------------------------------------------------


def dial(port, host=lib.LOOPBACK, source=None, timeout_s=5.0):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    if source:
        s.bind((source, 0))
    s.connect((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def who(port, **kw):
    """Connect, read the upstream's name, close. Returns the name."""
    s = dial(port, **kw)
    try:
        return lib.recv_line(s).decode()
    finally:
        s.close()


def send_and_read(port, data, chunks=None, delay=0.0, **kw):
    """Send data (in chunks of that size, pausing delay between them), half-close,
    read to EOF. Returns (reply bytes, how: "eof"/"reset", local (ip, port))."""
    s = dial(port, **kw)
    try:
        local = s.getsockname()[:2]
        step = chunks or len(data) or 1
        for off in range(0, len(data), step):
            s.sendall(data[off:off + step])
            if delay:
                time.sleep(delay)
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        reply, how = lib.recv_all(s)
        return reply, how, local
    finally:
        s.close()


def client_hello(server_hostname):
    """The ClientHello Python's ssl (OpenSSL) sends for this name, as bytes."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=server_hostname)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    check(hello[:1] == b"\x16", "not a TLS handshake record: %r" % hello[:8])
    return hello


def tls_who(port, server_hostname, payload=b"hello over tls"):
    """A real TLS client through the proxy: handshake with server_hostname (None:
    no SNI), read the upstream's name, echo a payload. Returns the name."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = dial(port)
    s = ctx.wrap_socket(raw, server_hostname=server_hostname)
    try:
        name = lib.recv_line(s).decode()
        s.sendall(payload)
        check(lib.recv_exact(s, len(payload)) == payload, "TLS echo mismatch via %s" % name)
        return name
    finally:
        s.close()


def self_signed(t):
    """(certificate, key) files for a throw-away self-signed certificate."""
    key, crt = os.path.join(t.tmpdir, "key.pem"), os.path.join(t.tmpdir, "crt.pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-subj", "/CN=x", "-days", "1", "-keyout", key, "-out", crt],
                       capture_output=True, timeout=30)
    if r.returncode != 0:
        raise lib.Skip("openssl cannot make a test certificate: %r" % r.stderr[-200:])
    return crt, key


# ---- PROXY protocol, as an upstream reads it ------------------------------------

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def parse_proxy(data):
    """(version, src (ip, port), dst (ip, port), rest) from what an upstream got."""
    if data.startswith(b"PROXY "):
        end = data.index(b"\r\n")
        parts = data[:end].decode().split(" ")
        check(len(parts) == 6 and parts[1] in ("TCP4", "TCP6"), "bad v1 line %r" % data[:end])
        return 1, (parts[2], int(parts[4])), (parts[3], int(parts[5])), data[end + 2:]
    check(data.startswith(V2_SIG), "no PROXY header at the start: %r" % data[:32])
    ver_cmd, fam, ln = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    check(ver_cmd == 0x21, "v2 version/command byte 0x%02x, want 0x21 (v2 PROXY)" % ver_cmd)
    body = data[16:16 + ln]
    if fam == 0x11:
        s, d, sp, dp = struct.unpack("!4s4sHH", body[:12])
        f = socket.AF_INET
    elif fam == 0x21:
        s, d, sp, dp = struct.unpack("!16s16sHH", body[:36])
        f = socket.AF_INET6
    else:
        lib.fail("v2 family byte 0x%02x" % fam)
    return 2, (socket.inet_ntop(f, s), sp), (socket.inet_ntop(f, d), dp), data[16 + ln:]


def proxy_v2(src, dst, sport, dport):
    f = socket.AF_INET6 if ":" in src else socket.AF_INET
    body = socket.inet_pton(f, src) + socket.inet_pton(f, dst) + struct.pack("!HH", sport, dport)
    return V2_SIG + bytes([0x21, 0x21 if f == socket.AF_INET6 else 0x11]) + struct.pack("!H", len(body)) + body


def ends(p, ports):
    return sorted({e.get("end") for e in p.access_for_ports(ports)})


# ---- SNI -------------------------------------------------------------------------

SNI_ROUTES = [
    {"match": {"sni": ["api.example.com"]}, "upstream": "api"},
    {"match": {"sni": ["*.internal.example.com"]}, "upstream": "internal"},
]


@lib.timeout(30)
def test_routing_sni_real_tls_clients_reach_the_named_upstream(t):
    cert = self_signed(t)
    ups = {n: named(t, n, tls=cert) for n in ("api", "internal", "web")}
    port = lib.free_port()
    t.proxy(lib.config([lib.listener("tls", port, routes=SNI_ROUTES + [{"upstream": "web"}])],
                       [lib.upstream(n, [u.address]) for n, u in ups.items()]))
    cases = [("api.example.com", "api"), ("API.Example.COM", "api"),
             ("db.internal.example.com", "internal"), ("a.b.INTERNAL.example.com", "internal"),
             ("internal.example.com", "web"), ("example.com", "web"), ("api.example.org", "web"),
             (None, "web")]
    for host, want in cases:
        got = tls_who(port, host)
        check(got == want, "TLS client with server_hostname %r reached %s, want %s" % (host, got, want))
    # the upstream terminated TLS on the very ClientHello the client sent
    check(ups["api"].snis == ["api.example.com", "API.Example.COM"],
          "api upstream saw server names %s" % ups["api"].snis)


def _hello_byte_by_byte(t, relay):
    ups = {n: named(t, n, echo=True) for n in ("api", "internal", "web")}
    port = lib.free_port()
    t.proxy(lib.config([lib.listener("tls", port, routes=SNI_ROUTES + [{"upstream": "web"}])],
                       [lib.upstream(n, [u.address]) for n, u in ups.items()], relay=relay))
    hello = client_hello("API.Example.COM")
    check(b"API.Example.COM" in hello, "the ClientHello does not carry the name as written")
    s = dial(port)
    for i in range(len(hello)):
        s.sendall(hello[i:i + 1])
        time.sleep(0.001)
    check(lib.recv_line(s) == b"api", "%s: ClientHello written one byte at a time did not reach api" % relay)
    check(lib.recv_exact(s, len(hello)) == hello, "%s: the hello echoed back differs" % relay)
    # the session relays small writes at once once routed (nothing left over
    # from waiting for the rest of the hello)
    for k in range(3):
        lib.roundtrip(s, b"p%d" % k, timeout_s=3)
    s.shutdown(socket.SHUT_WR)
    check(lib.recv_all(s)[0] == b"", "%s: bytes after the echo" % relay)
    s.close()
    check(ups["api"].wait_records(1) == [hello + b"p0p1p2"],
          "%s: api did not receive the ClientHello byte for byte" % relay)

    hello2 = client_hello("x.internal.example.com") + b"after the hello"
    reply, _, _ = send_and_read(port, hello2, chunks=100, delay=0.02)
    check(reply == b"internal\n" + hello2, "%s: ClientHello in 100-byte segments: reply %r" % (relay, reply[:20]))
    check(ups["internal"].wait_records(1) == [hello2], "internal did not receive the bytes unchanged")
    check(not ups["web"].records, "web got %d connections with data" % len(ups["web"].records))


def test_routing_sni_clienthello_one_byte_at_a_time_copy(t):
    _hello_byte_by_byte(t, "copy")


def test_routing_sni_clienthello_one_byte_at_a_time_splice(t):
    _hello_byte_by_byte(t, "splice")


def test_routing_sni_incomplete_hello_closed_at_peek_timeout_and_on_drain(t):
    up = named(t, "api")
    port = lib.free_port()
    p = t.proxy(lib.config([lib.listener("tls", port, routes=SNI_ROUTES[:1], peek_timeout_ms=400)],
                           [lib.upstream("api", [up.address])]))
    hello = client_hello("api.example.com")
    s = dial(port)
    cport = s.getsockname()[1]
    s.sendall(hello[:30])
    waited = lib.wait_closed(s, 3)
    s.close()
    check(waited is not None and 0.3 <= waited <= 1.5,
          "half a ClientHello: closed after %s s, want peek_timeout_ms 400" % waited)
    e = p.access_by_client_port([cport])[cport]
    check(e.get("end") == "peek_timeout", "access log end=%s, want peek_timeout" % e.get("end"))
    check(up.accepted == 0, "the upstream was connected for an incomplete hello")

    # a stop closes such a client at drain_timeout_ms, like any other session
    port2 = lib.free_port()
    q = t.proxy(lib.config([lib.listener("tls", port2, routes=SNI_ROUTES[:1], peek_timeout_ms=60000)],
                           [lib.upstream("api", [up.address])], limits={"drain_timeout_ms": 300}), name="q")
    s = dial(port2)
    s.sendall(hello[:30])
    time.sleep(0.2)
    t0 = time.monotonic()
    q.stop(timeout_s=10)
    took = time.monotonic() - t0
    s.close()
    check(q.returncode == 0 and took < 1.5,
          "stop with a client mid-hello: exit %s after %.1f s (drain_timeout_ms 300)" % (q.returncode, took))


@lib.timeout(30)
def test_routing_sni_fully_qualified_name_with_trailing_dot_matches(t):
    """A client that sends "API.example.com." (fully qualified, as Python's
    ssl and some resolvers' callers do) reaches the route for
    api.example.com and *.internal.example.com alike; "x.." is still no name."""
    ups = {n: named(t, n) for n in ("api", "internal", "web")}
    port = lib.free_port()
    t.proxy(lib.config([lib.listener("tls", port, routes=SNI_ROUTES + [{"upstream": "web"}])],
                       [lib.upstream(n, [u.address]) for n, u in ups.items()]))
    for name, want in (("API.example.com.", b"api\n"), ("db.internal.example.com.", b"internal\n")):
        hello = client_hello(name)
        check(name.encode() in hello, "the ClientHello does not carry %r as written" % name)
        reply, _, _ = send_and_read(port, hello)
        check(reply == want, "SNI %r: reply %r, want %r" % (name, reply, want))
    hello = client_hello("api.example.com.")
    bad = hello.replace(b"api.example.com.", b"api.example.c..")
    reply, _, _ = send_and_read(port, bad)
    check(reply == b"web\n", "SNI 'api.example.c..': reply %r, want web (no name)" % reply)


def test_routing_sni_not_tls_truncated_or_oversized_falls_to_route_without_sni(t):
    ups = {n: named(t, n) for n in ("api", "internal", "web")}
    port, only_sni = lib.free_port(), lib.free_port()
    p = t.proxy(lib.config(
        [lib.listener("mixed", port, routes=SNI_ROUTES + [{"upstream": "web"}]),
         lib.listener("strict", only_sni, routes=SNI_ROUTES, peek_timeout_ms=2000)],
        [lib.upstream(n, [u.address]) for n, u in ups.items()]))
    http = b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n"
    reply, _, _ = send_and_read(port, http)
    check(reply == b"web\n", "plain HTTP on an SNI listener: reply %r, want web" % reply)
    check(ups["web"].wait_records(1) == [http], "web did not receive the HTTP request unchanged")

    # a ClientHello cut short by the client's FIN: no server name will ever come
    hello = client_hello("api.example.com")
    t0 = time.monotonic()
    reply, _, _ = send_and_read(port, hello[:40])
    took = time.monotonic() - t0
    check(reply == b"web\n", "truncated ClientHello then FIN: reply %r, want web" % reply)
    check(took < 1.5, "truncated ClientHello routed only after %.1f s" % took)
    check(hello[:40] in ups["web"].wait_records(2), "web did not receive the truncated hello unchanged")

    # a handshake bigger than the peek bound: routed without a name, bytes intact
    big = bytearray(b"\x16\x03\x01\x40\x00\x01\x00\x4e\x20\x03\x03") + lib.payload(20000, seed=4)
    reply, _, _ = send_and_read(port, bytes(big))
    check(reply == b"web\n", "oversized ClientHello: reply %r, want web" % reply)
    check(bytes(big) in ups["web"].wait_records(3),
          "web did not receive the oversized hello unchanged")

    # no route without sni: closed and counted
    ports = []
    for data in (http, client_hello("nowhere.example.net")):
        reply, _, local = send_and_read(only_sni, data)
        ports.append(local[1])
        check(reply == b"", "no matching route, yet the client got %r" % reply)
    check(ends(p, ports) == ["no_route"], "access log end= %s, want no_route" % ends(p, ports))
    reply, _, _ = send_and_read(only_sni, client_hello("api.example.com"))
    check(reply == b"api\n", "strict listener, api.example.com: reply %r" % reply)


# ---- source ----------------------------------------------------------------------


def test_routing_source_127_0_0_2_and_127_0_0_1_take_different_routes(t):
    ups = {n: named(t, n) for n in ("two", "block", "one")}
    port = lib.free_port()
    routes = [{"match": {"source": ["127.0.0.2"]}, "upstream": "two"},
              {"match": {"source": ["10.0.0.0/8", "127.0.0.8/29"]}, "upstream": "block"},
              {"upstream": "one"}]
    t.proxy(lib.config([lib.listener("l", port, routes=routes)],
                       [lib.upstream(n, [u.address]) for n, u in ups.items()]))
    for src, want in [("127.0.0.1", "one"), ("127.0.0.2", "two"), ("127.0.0.3", "one"),
                      ("127.0.0.9", "block"), ("127.0.0.15", "block"), ("127.0.0.16", "one"),
                      ("127.0.0.2", "two"), ("127.0.0.1", "one")]:
        got = who(port, source=src)
        check(got == want, "client from %s reached %s, want %s" % (src, got, want))


def test_routing_source_ipv6_loopback(t):
    if not have_ipv6():
        raise lib.Skip("no ::1 on this machine")
    v6, v4 = named(t, "v6", host="::1"), named(t, "v4")
    port6, port4 = lib.free_port(), lib.free_port()
    routes = [{"match": {"source": ["127.0.0.0/8"]}, "upstream": "v4"},
              {"match": {"source": ["::1/128"]}, "upstream": "v6"}]
    p = t.proxy(lib.config([{"name": "six", "listen": "[::1]:%d" % port6, "routes": routes},
                            lib.listener("four", port4, routes=routes)],
                           [lib.upstream("v4", [v4.address]), lib.upstream("v6", [v6.address])]), probe=False)
    wait_listening("::1", port6)
    wait_listening(lib.LOOPBACK, port4)
    check(who(port6, host="::1") == "v6", "client from ::1 not routed by ::1/128")
    check(who(port4) == "v4", "client from 127.0.0.1 not routed by 127.0.0.0/8")
    # a v6 route never matches a v4 client: fd00::/8 only -> closed as no route
    p2 = lib.free_port()
    q = t.proxy(lib.config([lib.listener("l", p2, routes=[{"match": {"source": ["fd00::/8", "::1"]},
                                                            "upstream": "v6"}])],
                           [lib.upstream("v6", [v6.address])]), name="q")
    reply, _, local = send_and_read(p2, b"x")
    check(reply == b"", "IPv4 client matched an IPv6-only route: %r" % reply)
    check(ends(q, [local[1]]) == ["no_route"], "access log end=%s, want no_route" % ends(q, [local[1]]))
    del p


# ---- PROXY protocol ---------------------------------------------------------------


def test_routing_send_proxy_v1_and_v2_carry_client_and_listener_addresses(t):
    r1, r2 = named(t, "r1"), named(t, "r2")
    l1, l2 = lib.free_port(), lib.free_port()
    listeners = [lib.listener("a", l1, "u1"), lib.listener("b", l2, "u2")]
    upstreams = [lib.upstream("u1", [r1.address], send_proxy_protocol="v1"),
                 lib.upstream("u2", [r2.address], send_proxy_protocol="v2")]
    six = have_ipv6()
    if six:
        l3, l4 = lib.free_port(), lib.free_port()
        listeners += [{"name": "c", "listen": "[::1]:%d" % l3, "routes": [{"upstream": "u1"}]},
                      {"name": "d", "listen": "[::1]:%d" % l4, "routes": [{"upstream": "u2"}]}]
    t.proxy(lib.config(listeners, upstreams), probe=False)
    for lst in listeners:
        host, _, lport = lst["listen"].rpartition(":")
        wait_listening(host.strip("[]"), int(lport))
    cases = [(l1, lib.LOOPBACK, "127.0.0.2", 1, r1), (l2, lib.LOOPBACK, "127.0.0.3", 2, r2)]
    if six:
        cases += [(l3, "::1", None, 1, r1), (l4, "::1", None, 2, r2)]
    for i, (port, host, src, ver, rec) in enumerate(cases):
        body = b"payload %d after the header" % i
        reply, _, local = send_and_read(port, body, host=host, source=src)
        check(reply == rec.name.encode() + b"\n", "reply %r" % reply)
        # (listener probes left records too: a header and nothing after it)
        data = lib.wait_until(lambda: [r for r in list(rec.records) if r.endswith(body)], 5)
        check(data, "upstream %s never received %r" % (rec.name, body))
        v, s, d, rest = parse_proxy(data[0])
        what = "PROXY v%d via %s:%d" % (ver, host, port)
        check(v == ver, "%s: upstream got a v%d header" % (what, v))
        check(s == (local[0], local[1]), "%s: source %s, want the client's %s" % (what, s, local))
        check(d == (host, port), "%s: destination %s, want the listener's %s" % (what, d, (host, port)))
        check(rest == body, "%s: bytes after the header %r, want %r" % (what, rest, body))


def test_routing_accept_proxy_protocol_routes_on_the_address_it_carries(t):
    ups = {n: named(t, n) for n in ("internal", "web")}
    port = lib.free_port()
    p = t.proxy(lib.config(
        [lib.listener("edge", port, accept_proxy_protocol=True, routes=[
            {"match": {"source": ["10.0.0.0/8", "fd00::/8"]}, "upstream": "internal"},
            {"upstream": "web"}])],
        [lib.upstream("internal", [ups["internal"].address], send_proxy_protocol="v2"),
         lib.upstream("web", [ups["web"].address])]))
    body = b"client bytes"
    # v1, sent in two pieces
    hdr = b"PROXY TCP4 10.1.2.3 192.0.2.1 5555 443\r\n"
    reply, _, _ = send_and_read(port, hdr + body, chunks=17, delay=0.05)
    check(reply == b"internal\n", "PROXY v1 from 10.1.2.3: reply %r, want internal" % reply)
    _, s, d, rest = parse_proxy(ups["internal"].wait_records(1)[0])
    check(s == ("10.1.2.3", 5555) and d == ("192.0.2.1", 443),
          "the header passed on says %s -> %s, want 10.1.2.3:5555 -> 192.0.2.1:443" % (s, d))
    check(rest == body, "bytes after the header: %r" % rest)
    # v2 from outside 10/8, and v2 IPv6 inside fd00::/8
    reply, _, _ = send_and_read(port, proxy_v2("192.168.1.1", "192.0.2.1", 4000, 443) + body)
    check(reply == b"web\n", "PROXY v2 from 192.168.1.1: reply %r, want web" % reply)
    check(ups["web"].wait_records(1) == [body], "web got %r, want the client bytes without the header"
          % ups["web"].records)
    reply, _, _ = send_and_read(port, proxy_v2("fd00::7", "2001:db8::1", 4001, 443) + body)
    check(reply == b"internal\n", "PROXY v2 from fd00::7: reply %r, want internal" % reply)
    _, s, _, _ = parse_proxy(ups["internal"].wait_records(2)[1])
    check(s == ("fd00::7", 4001), "IPv6 source passed on as %s" % (s,))
    logged = lib.wait_until(lambda: [e for e in p.access() if e.get("client") == "10.1.2.3:5555"], 5)
    check(logged and logged[0].get("upstream") == "internal",
          "access log has no line for client=10.1.2.3:5555 upstream=internal: %s" % p.access())


def test_routing_malformed_proxy_header_is_closed_and_counted(t):
    up = named(t, "web")
    port = lib.free_port()
    p = t.proxy(lib.config([lib.listener("edge", port, "web", accept_proxy_protocol=True)],
                           [lib.upstream("web", [up.address])]))
    bad = [b"PROXY TCP4 999.1.2.3 127.0.0.1 1 2\r\n",
           b"PROXY TCP4 10.1.2.3 127.0.0.1 5555\r\nxx",
           b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",
           b"GET / HTTP/1.1\r\n\r\n",
           V2_SIG + b"\x31\x11\x00\x0c" + b"\x00" * 12,   # version 3
           b"PROXY " + b"1" * 200 + b"\r\n"]
    ports = []
    for data in bad:
        t0 = time.monotonic()
        reply, _, local = send_and_read(port, data)
        ports.append(local[1])
        check(reply == b"", "malformed header %r: the client got %r" % (data[:24], reply))
        check(time.monotonic() - t0 < 2, "malformed header %r closed only after %.1f s"
              % (data[:24], time.monotonic() - t0))
    check(ends(p, ports) == ["bad_proxy_header"], "access log end= %s, want bad_proxy_header" % ends(p, ports))
    check(up.accepted == 0, "the upstream was connected %d times for malformed headers" % up.accepted)
    reply, _, _ = send_and_read(port, b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 80\r\nok")
    check(reply == b"web\n", "a valid header afterwards: reply %r" % reply)


# ---- balancing ----------------------------------------------------------------------


def who_done(port, **kw):
    """who(), but returns only once the session is over at the proxy: the
    upstream's FIN reaches us after the proxy saw both sides finish, so the
    next connection meets servers with no session from this one."""
    reply, _, _ = send_and_read(port, b"", **kw)
    check(reply.endswith(b"\n"), "no name from the upstream: %r" % reply)
    return reply[:-1].decode()


def _each_reaches(port, n, name, when, failed_means=None):
    """n connections in a row, each served by the server called name."""
    for i in range(n):
        try:
            got = who(port)
        except (OSError, lib.TestFailure) as e:
            lib.fail("connection %d %s failed%s: %r"
                     % (i, when, " (%s)" % failed_means if failed_means else "", e))
        check(got == name, "connection %d %s reached %s" % (i, when, got))


def _counts(port, n, **kw):
    c = {}
    for _ in range(n):
        name = who_done(port, **kw)
        c[name] = c.get(name, 0) + 1
    return c


def test_routing_weights_3_to_1_honoured_over_400_connections(t):
    a, b = named(t, "a"), named(t, "b")
    servers = [{"address": a.address, "weight": 3}, {"address": b.address, "weight": 1}]
    algos = ["round_robin", "least_conn", "random_two", "source_hash"]
    ports = {al: lib.free_port() for al in algos}
    t.proxy(lib.config([lib.listener(al, ports[al], al) for al in algos],
                       [lib.upstream(al, servers, balance=al) for al in algos]))
    for al, lo, hi in [("round_robin", 290, 310), ("least_conn", 270, 330), ("random_two", 260, 340)]:
        c = _counts(ports[al], 400)
        lib.log("%s: %s" % (al, c))
        check(lo <= c.get("a", 0) <= hi and c.get("a", 0) + c.get("b", 0) == 400,
              "%s, weights 3:1, 400 connections: %s, want a in %d..%d" % (al, c, lo, hi))
    # source_hash weighs clients, not connections: 64 client addresses
    c = {}
    for i in range(64):
        name = who(ports["source_hash"], source="127.0.1.%d" % (i + 1))
        c[name] = c.get(name, 0) + 1
    check(36 <= c.get("a", 0) <= 60, "source_hash, weights 3:1, 64 clients: %s" % c)


def test_routing_source_hash_same_client_same_server(t):
    ups = [named(t, n) for n in ("a", "b", "c")]
    port = lib.free_port()
    t.proxy(lib.config([lib.listener("l", port, "u")],
                       [lib.upstream("u", [u.address for u in ups], balance="source_hash")]))
    seen = {}
    for rnd in range(3):
        for i in range(24):
            src = "127.0.0.%d" % (i + 1)
            got = who(port, source=src)
            check(seen.setdefault(src, got) == got,
                  "client %s reached %s, earlier %s" % (src, got, seen[src]))
    spread = set(seen.values())
    check(len(spread) >= 2, "24 client addresses all hashed to %s" % spread)


def _held(port, n):
    socks, names = [], []
    for _ in range(n):
        s = dial(port)
        names.append(lib.recv_line(s).decode())
        socks.append(s)
    return socks, names


def _fills_the_emptied_server(t, balance):
    a, b = named(t, "a"), named(t, "b")
    port = lib.free_port()
    # One shard: each shard balances on the sessions it holds itself (as an
    # nginx worker does without a shared zone), so with two shards the
    # split of 10 new connections would depend on steering's coin flips.
    t.proxy(lib.config([lib.listener("l", port, "u")],
                       [lib.upstream("u", [a.address, b.address], balance=balance)], workers=1))
    socks, names = _held(port, 20)
    check(8 <= names.count("a") <= 12, "%s: 20 held connections split %d:%d"
          % (balance, names.count("a"), names.count("b")))
    for s, n in zip(socks, names):
        if n == "a":
            s.close()
    check(lib.wait_until(lambda: not a.conns, 5), "a still has sessions after its clients left")
    time.sleep(0.1)
    more, names2 = _held(port, 10)
    check(names2.count("a") >= 8, "%s: a had no sessions and b about 10, yet of 10 new connections "
          "a got only %d" % (balance, names2.count("a")))
    for s in socks + more:
        s.close()


def test_routing_least_conn_sends_new_connections_to_the_idle_server(t):
    _fills_the_emptied_server(t, "least_conn")


def test_routing_random_two_sends_new_connections_to_the_idle_server(t):
    _fills_the_emptied_server(t, "random_two")


# ---- health and backups ---------------------------------------------------------------

FAST_CHECK = {"interval_ms": 100, "timeout_ms": 100, "fall": 3, "rise": 2}


@lib.timeout(30)
def test_routing_stopped_server_marked_down_by_health_checks_then_no_client_fails(t):
    a, b = named(t, "a"), named(t, "b")
    port = lib.free_port()
    p = t.proxy(lib.config([lib.listener("l", port, "u")],
                           [lib.upstream("u", [a.address, b.address], retries=0, health_check=FAST_CHECK)]))
    c = _counts(port, 20)
    check(c.get("a") and c.get("b"), "both servers up, yet %s" % c)
    m = p.mark()
    t0 = time.monotonic()
    b.close()
    line = p.expect_log(r"server %s is down \(3 checks failed" % b.address, timeout_s=3, after=m)
    took = time.monotonic() - t0
    check(took >= 0.15, "marked down %.2f s after the stop, before fall=3 checks could fail: %s" % (took, line))
    # no traffic met the stopped server: every client now gets a
    _each_reaches(port, 40, "a", "after the down mark")
    # back on the same port: up after rise checks, and used again
    m = p.mark()
    b2 = named(t, "b", port=b.port)
    p.expect_log(r"server %s is up" % b2.address, timeout_s=3, after=m)
    c = _counts(port, 20)
    check(c.get("b", 0) >= 5, "server back up, yet it got %s" % c)


# active checks too rare to matter: only live traffic can tell
SLOW_CHECKS = {"interval_ms": 600000, "timeout_ms": 1000, "fall": 2, "rise": 1}


def _b_fails_under_traffic(t):
    """Servers a and b behind port (retries=1, SLOW_CHECKS); b goes away and
    ten clients land on a. Returns (proxy, port, a, b, mark before b went)."""
    a, b = named(t, "a"), named(t, "b")
    port = lib.free_port()
    p = t.proxy(lib.config([lib.listener("l", port, "u")],
                           [lib.upstream("u", [a.address, b.address], retries=1,
                                         health_check=SLOW_CHECKS)]))
    m = p.mark()
    b.close()
    for i in range(10):
        check(who(port) == "a", "retries=1: connection %d did not land on a" % i)
    return p, port, a, b, m


@lib.timeout(30)
def test_routing_passive_failures_mark_a_server_down(t):
    p, _port, _a, b, m = _b_fails_under_traffic(t)
    p.expect_log(r"server %s is down \(\d+ connection failures" % b.address, timeout_s=2, after=m)


@lib.timeout(30)
def test_routing_reload_keeps_a_down_server_down(t):
    """Health state survives a reload for servers the new file still has:
    a server known to be down takes no client after the reload either."""
    p, port, a, b, m = _b_fails_under_traffic(t)
    p.expect_log(r"server %s is down" % b.address, timeout_s=2, after=m)
    # the new file gives no second chance: one failed connect fails the client
    m = p.reload(lib.config([lib.listener("l", port, "u")],
                            [lib.upstream("u", [a.address, b.address], retries=0, health_check=SLOW_CHECKS)]))
    p.expect_log(r"reload: generation 2 ready", after=m)
    _each_reaches(port, 20, "a", "after the reload", "the down server was tried again")


@lib.timeout(30)
def test_routing_backup_used_only_when_primaries_are_down(t):
    a, b, bk = named(t, "a"), named(t, "b"), named(t, "backup")
    port = lib.free_port()
    p = t.proxy(lib.config([lib.listener("l", port, "u")],
                           [lib.upstream("u", [a.address, b.address, {"address": bk.address, "backup": True}],
                                         retries=0, health_check=FAST_CHECK)]))
    c = _counts(port, 30)
    check(not c.get("backup") and c.get("a") and c.get("b"), "primaries up: %s" % c)
    m = p.mark()
    a.close()
    p.expect_log(r"server %s is down" % a.address, timeout_s=3, after=m)
    c = _counts(port, 10)
    check(c == {"b": 10}, "one primary left, yet %s" % c)
    b.close()
    p.expect_log(r"server %s is down" % b.address, timeout_s=3, after=m)
    c = _counts(port, 20)
    check(c == {"backup": 20}, "every primary down: %s" % c)
    m = p.mark()
    a2 = named(t, "a", port=a.port)
    p.expect_log(r"server %s is up" % a2.address, timeout_s=3, after=m)
    c = _counts(port, 20)
    check(c == {"a": 20}, "a primary back up: %s" % c)
    # without health checks: the backup is what retries reach when primaries refuse
    d1, d2 = t.down_port(), t.down_port()
    p2 = lib.free_port()
    t.proxy(lib.config([lib.listener("l", p2, "u")],
                       [lib.upstream("u", [d1.address, d2.address, {"address": bk.address, "backup": True}],
                                     retries=2)]), name="nocheck")
    c = _counts(p2, 10)
    check(c == {"backup": 10}, "primaries refusing, retries 2: %s" % c)
