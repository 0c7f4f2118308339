"""Harness for the end-to-end tests: the real shardproxy binary over loopback.

Python 3 standard library only. What is here:
  - Ctx: what a test receives; owns a temp dir and a cleanup stack, starts
    proxies and upstreams that it tears down whatever happens.
  - Proxy: start `shardproxy -c FILE`, wait for "ready", read its log, signal
    it, find its shards, count their fds, stop it.
  - Upstreams (threads): EchoServer (echoes while hashing what it got, and
    can greet with a name first), ReplyAfterEofServer, HalfCloseFirstServer,
    a "down" port (bound, never listening: connect is refused) and a
    "blackhole" (listen queue full: SYNs are dropped, connect hangs).
  - Clients: echo_transfer (send and receive at once, SHA-256 both ways),
    reset_close, wrk runner and parser.
  - Admin readers: admin_raw / admin_http / admin_status, stats, metrics
    (over the TCP port or admin.socket).
  - Config builders that write SPEC §4 JSON; Ctx.echo_proxy for the common
    "one echo server behind one proxy".

Used as a program, it also offers helper commands for client processes that
must run elsewhere (e.g. pinned with taskset):
  python3 lib.py connect-many PORT COUNT   -> prints a JSON list of local ports
"""

import hashlib
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
LOOPBACK = "127.0.0.1"

MiB = 1 << 20


class Skip(Exception):
    """Raise to report SKIP (never PASS) for a test whose preconditions are absent."""


class TestFailure(AssertionError):
    pass


def fail(msg):
    raise TestFailure(msg)


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def timeout(seconds):
    """Decorator: this test's wall-clock bound (the runner's default is 60 s)."""

    def deco(fn):
        fn.timeout = seconds
        return fn

    return deco


def needs(*what):
    """Decorator: document what a test needs ("root", "bpf", "2cpu", "wrk").
    The runner prints it with -v; the test itself raises Skip when absent."""

    def deco(fn):
        fn.needs = what
        return fn

    return deco


VERBOSE = os.environ.get("E2E_VERBOSE") == "1"


def log(msg):
    if VERBOSE:
        sys.stderr.write("    | %s\n" % msg)
        sys.stderr.flush()


def wait_until(pred, timeout_s, interval=0.02):
    """Poll pred() until it returns a truthy value; returns it, or None on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def started_with_notify(t, start, abstract=False):
    """Run start() (it starts a proxy) with NOTIFY_SOCKET naming a datagram
    socket of the test's own, bound in t.tmpdir or, with abstract, in the
    abstract namespace; the variable is gone again afterwards, so later
    proxies do not inherit it. Returns (socket, what start() returned)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = "@shardproxy-e2e-%d-%d" % (os.getpid(), time.monotonic_ns())
        sock.bind("\0" + name[1:])
    else:
        name = os.path.join(t.tmpdir, "notify.sock")
        sock.bind(name)
    t.defer(sock.close)
    os.environ["NOTIFY_SOCKET"] = name
    try:
        return sock, start()
    finally:
        del os.environ["NOTIFY_SOCKET"]


def sha(data):
    return hashlib.sha256(data).hexdigest()


def payload(n, seed):
    """n reproducible random bytes."""
    return random.Random(seed).randbytes(n)


# ---- ports -------------------------------------------------------------------

_ports_lock = threading.Lock()
_ports_given = set()
_rng = random.Random()


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port():
    """A port on 127.0.0.1 nobody listens on, below the ephemeral range (so no
    outgoing connection can take it between now and the proxy's bind), and
    not given out before by this process."""
    low, high = 10000, _ephemeral_low()
    if high - low < 1000:
        low, high = 1024, high
    with _ports_lock:
        for _ in range(1000):
            port = _rng.randrange(low, high)
            if port in _ports_given:
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
            finally:
                s.close()
            _ports_given.add(port)
            return port
    raise RuntimeError("no free port")


class DownPort:
    """A port kept reserved by a bound, never listening socket: connecting to
    it is refused at once (RST)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((LOOPBACK, 0))
        self.port = self.sock.getsockname()[1]
        self.address = "%s:%d" % (LOOPBACK, self.port)

    def close(self):
        self.sock.close()


class Blackhole:
    """A listener whose accept queue is full and never drained: the kernel
    drops further SYNs, so a connect to it hangs until the caller's timeout."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.address = "%s:%d" % (LOOPBACK, self.port)
        self.fillers = []
        for _ in range(3):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect((LOOPBACK, self.port))
            except BlockingIOError:
                pass
            self.fillers.append(c)
        time.sleep(0.1)
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.3)
        try:
            probe.connect((LOOPBACK, self.port))
            raise RuntimeError("blackhole: connect was not dropped")
        except socket.timeout:
            pass
        finally:
            probe.close()

    def close(self):
        for c in self.fillers:
            c.close()
        self.sock.close()


# ---- upstream servers (threads) ----------------------------------------------


class TcpServer:
    """Threaded TCP server on 127.0.0.1: one thread per connection running
    self.handle(conn). close() stops accepting and shuts every connection."""

    def __init__(self, name="up", backlog=1024, host=LOOPBACK, port=0):
        self.name = name
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=fam, backlog=backlog)
        self.sock.settimeout(0.1)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.address = ("[%s]:%d" if fam == socket.AF_INET6 else "%s:%d") % (host, self.port)
        self.lock = threading.Lock()
        self.conns = set()
        self.accepted = 0
        self.stopping = False
        self.errors = []
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self.stopping:
                    return
                time.sleep(0.01)
                continue
            conn.settimeout(None)
            with self.lock:
                self.conns.add(conn)
                self.accepted += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        try:
            self.handle(conn)
        except (ConnectionError, OSError) as e:
            if not self.stopping:
                with self.lock:
                    self.errors.append(repr(e))
        finally:
            with self.lock:
                self.conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def active(self):
        with self.lock:
            return len(self.conns)

    def handle(self, conn):
        raise NotImplementedError

    def close(self):
        self.stopping = True
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(2)


def read_to_eof(conn):
    """Read conn until the peer's FIN: (bytes, sha256 hex) of what came."""
    h = hashlib.sha256()
    n = 0
    while True:
        data = conn.recv(262144)
        if not data:
            return n, h.hexdigest()
        h.update(data)
        n += len(data)


class EchoServer(TcpServer):
    """Echoes every byte back while hashing what it received. Optionally sends
    greeting (e.g. its name and a newline) first. On the client's EOF it records
    (bytes, sha256 hex) of everything received, then closes its side.

    records: list of dicts {bytes, sha, end} for finished connections
             (end: "eof" or "reset"); received: total bytes received so far."""

    def __init__(self, name="echo", greeting=None, **kw):
        self.greeting = greeting
        self.records = []
        self.received = 0
        super().__init__(name=name, **kw)

    def handle(self, conn):
        h = hashlib.sha256()
        n = 0
        end = "eof"
        try:
            if self.greeting:
                conn.sendall(self.greeting)
            while True:
                data = conn.recv(262144)
                if not data:
                    break
                h.update(data)
                n += len(data)
                with self.lock:
                    self.received += len(data)
                conn.sendall(data)
        except (ConnectionError, OSError):
            end = "reset"
        with self.lock:
            self.records.append({"bytes": n, "sha": h.hexdigest(), "end": end})
        if end == "eof":
            try:
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def has_record(self, digest, timeout_s=5.0):
        def look():
            with self.lock:
                return any(r["sha"] == digest and r["end"] == "eof" for r in self.records)

        return bool(wait_until(look, timeout_s))


class ReplyAfterEofServer(TcpServer):
    """Half-close client -> upstream: reads until the client's FIN, then sends
    the sha256 hex (64 bytes) of what it got followed by `extra` bytes, then closes."""

    def __init__(self, extra=b"", **kw):
        self.extra = extra
        super().__init__(**kw)

    def handle(self, conn):
        _n, digest = read_to_eof(conn)
        conn.sendall(digest.encode() + self.extra)
        conn.shutdown(socket.SHUT_WR)


class HalfCloseFirstServer(TcpServer):
    """Half-close upstream -> client: sends `first` then shuts its write side,
    keeps reading until the client's FIN and records the sha256 of what it got."""

    def __init__(self, first=b"", **kw):
        self.first = first
        self.records = []
        super().__init__(**kw)

    def handle(self, conn):
        conn.sendall(self.first)
        conn.shutdown(socket.SHUT_WR)
        n, digest = read_to_eof(conn)
        with self.lock:
            self.records.append({"bytes": n, "sha": digest})


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        m = re.match(r"^/bytes/(\d+)$", self.path)
        if m:
            body = b"x" * min(int(m.group(1)), 64 * MiB)
        elif self.path == "/":
            body = b"hello from e2e upstream\n"
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if self.headers.get("Connection", "").lower() == "close":
            self.send_header("Connection", "close")  # else wrk expects keep-alive and counts a read error
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _ThreadingHTTPServer(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a peer reset is the test's business, not a traceback on stderr


class PyHttpServer:
    """HTTP/1.1 keep-alive upstream for wrk when build/demo-upstream is absent."""

    def __init__(self):
        self.httpd = _ThreadingHTTPServer((LOOPBACK, 0), _HttpHandler)
        self.port = self.httpd.server_address[1]
        self.address = "%s:%d" % (LOOPBACK, self.port)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class DemoUpstream:
    """build/demo-upstream -l 127.0.0.1:PORT, a C HTTP/1.1 keep-alive server."""

    def __init__(self, binary, ctx):
        self.port = free_port()
        self.address = "%s:%d" % (LOOPBACK, self.port)
        self.errfile = os.path.join(ctx.tmpdir, "demo-upstream-%d.log" % self.port)
        self.proc = ctx.spawn([binary, "-l", self.address], stderr_path=self.errfile)
        ok = wait_until(lambda: self.proc.poll() is not None or _can_connect(self.port), 5)
        if self.proc.poll() is not None or not ok:
            fail("demo-upstream did not start: %s" % tail(self.errfile))
        # wrk needs a 200 and, for "Connection: close", the header echoed and the
        # connection closed; otherwise its errors would be blamed on the proxy
        s = connect(self.port)
        s.settimeout(3)
        s.sendall(b"GET / HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n")
        try:
            resp, how = recv_all(s)
        except socket.timeout:
            fail("demo-upstream: connection not closed after a 'Connection: close' request")
        finally:
            s.close()
        head = resp.split(b"\r\n\r\n", 1)[0].lower()
        if not head.startswith(b"http/1.1 200") or b"connection: close" not in head:
            fail("demo-upstream answers a 'Connection: close' request with %r" % resp[:200])

    def close(self):
        _stop_proc(self.proc, 2)


def _can_connect(port, timeout_s=0.5):
    try:
        socket.create_connection((LOOPBACK, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


# ---- clients -----------------------------------------------------------------


def connect(port, timeout_s=5.0):
    s = socket.create_connection((LOOPBACK, port), timeout=timeout_s)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        d = sock.recv(min(262144, n - len(buf)))
        if not d:
            raise TestFailure("EOF after %d of %d bytes" % (len(buf), n))
        buf += d
    return bytes(buf)


def recv_line(sock, limit=256):
    buf = bytearray()
    while not buf.endswith(b"\n"):
        d = sock.recv(1)
        if not d:
            raise TestFailure("EOF before a full line (got %r)" % bytes(buf))
        buf += d
        if len(buf) > limit:
            raise TestFailure("line too long: %r" % bytes(buf[:64]))
    return bytes(buf[:-1])


def greeting(port):
    """The first line a server greets a new connection on port with (the
    test upstreams that say which one they are)."""
    s = connect(port)
    try:
        return recv_line(s).decode()
    finally:
        s.close()


def recv_all(sock, timeout_s=None):
    """Read until EOF; returns (bytes, how): how is "eof" or "reset", or with
    timeout_s (a bound on each wait) "timeout" when the peer went quiet."""
    buf = bytearray()
    if timeout_s is not None:
        sock.settimeout(timeout_s)
    try:
        while True:
            d = sock.recv(262144)
            if not d:
                return bytes(buf), "eof"
            buf += d
    except ConnectionResetError:
        return bytes(buf), "reset"
    except socket.timeout:
        if timeout_s is None:
            raise
        return bytes(buf), "timeout"


def send_all(sock, data, chunk=262144, rate=None):
    """sendall in chunks; rate (bytes/s) paces the sender when given."""
    mv = memoryview(data)
    start = time.monotonic()
    for off in range(0, len(mv), chunk):
        sock.sendall(mv[off : off + chunk])
        if rate:
            due = start + (off + chunk) / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def echo_transfer(port, data, timeout_s=60.0, rate=None, chunk=262144, sock=None, close=True):
    """Send data to an echoing peer through the proxy while reading the echo
    at the same time, half-close, read to EOF. Returns a dict: received
    (bytes count), sha (of what came back), end ("eof"/"reset"), error."""
    s = sock or connect(port, timeout_s=10)
    s.settimeout(timeout_s)
    err = []

    def sender():
        try:
            send_all(s, data, chunk=chunk, rate=rate)
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            err.append("send: %r" % e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    h = hashlib.sha256()
    n = 0
    end = "eof"
    try:
        while True:
            d = s.recv(262144)
            if not d:
                break
            h.update(d)
            n += len(d)
    except socket.timeout:
        end = "timeout"
    except OSError as e:
        end = "reset"
        err.append("recv: %r" % e)
    t.join(timeout_s)
    if close:
        s.close()
    return {"received": n, "sha": h.hexdigest(), "end": end, "error": "; ".join(err)}


def check_echo(port, data, server, what="", **kw):
    """echo_transfer + both-way checks against an EchoServer."""
    r = echo_transfer(port, data, **kw)
    want = sha(data)
    check(
        r["end"] == "eof" and r["received"] == len(data) and r["sha"] == want,
        "%s upstream->client: sent %d bytes, got back %d (end=%s%s), sha %s"
        % (what, len(data), r["received"], r["end"],
           ", " + r["error"] if r["error"] else "",
           "ok" if r["sha"] == want else "MISMATCH"),
    )
    check(server.has_record(want), "%s client->upstream: upstream never received the %d bytes intact"
          % (what, len(data)))
    return r


def roundtrip(sock, data=b"ping", timeout_s=5.0):
    """Send data on an open echo session and read the same amount back."""
    sock.settimeout(timeout_s)
    sock.sendall(data)
    got = recv_exact(sock, len(data))
    check(got == data, "echo mismatch on a live session")


def reset_close(sock):
    """Close with SO_LINGER 0: the peer gets an RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def wait_closed(sock, timeout_s):
    """Wait until the peer closes (EOF or reset); returns seconds waited or None."""
    sock.settimeout(0.05)
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    while time.monotonic() < deadline:
        try:
            d = sock.recv(65536)
            if not d:
                return time.monotonic() - t0
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - t0
    return None


def run_threads(fn, args_list, timeout_s):
    """Run fn(*args) in one thread each; returns results in order (an exception
    object in place of a result that raised). Fails if not done in timeout_s."""
    results = [None] * len(args_list)

    def run(i, a):
        try:
            results[i] = fn(*a)
        except BaseException as e:  # noqa: B902 - reported to the caller
            results[i] = e

    ts = [threading.Thread(target=run, args=(i, a), daemon=True) for i, a in enumerate(args_list)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + timeout_s
    for t in ts:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = sum(t.is_alive() for t in ts)
    check(alive == 0, "%d of %d client threads still running after %.0f s" % (alive, len(ts), timeout_s))
    return results


# ---- the admin endpoint ------------------------------------------------------


def admin_raw(where, data, timeout_s=5.0, shut=False):
    """Send raw bytes to the admin endpoint - where is its TCP port (int) or
    admin.socket's path (str) - and return the whole answer (bytes); a reset
    ends the answer."""
    if isinstance(where, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        addr = where
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        addr = (LOOPBACK, where)
    try:
        s.settimeout(timeout_s)
        s.connect(addr)
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        return recv_all(s)[0]
    finally:
        s.close()


def parse_http(resp):
    """(status, headers dict with lower-case names, body bytes) of an HTTP/1.x answer."""
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3}) ", lines[0] if lines else "")
    check(m, "not an HTTP response: %r" % resp[:200])
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(m.group(1)), headers, body


def admin_http(where, path, method="GET", timeout_s=5.0):
    """(status, headers, body) of one request to the admin endpoint (where:
    as for admin_raw)."""
    req = "%s %s HTTP/1.1\r\nHost: x\r\n" % (method, path)
    if method != "GET":
        req += "Content-Length: 0\r\n"
    return parse_http(admin_raw(where, (req + "\r\n").encode(), timeout_s))


def admin_status(where, path, timeout_s=5.0):
    """(status, answer bytes) of GET path, or (None, why) when the admin
    turned the connection away, timed out or did not answer in HTTP."""
    try:
        resp = admin_raw(where, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode(), timeout_s)
    except OSError as e:
        return None, repr(e)
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", resp)
    return (int(m.group(1)), resp) if m else (None, resp[:100])


def stats(where, timeout_s=5.0):
    """/stats, parsed; fails unless it answers 200."""
    st, _, body = admin_http(where, "/stats", timeout_s=timeout_s)
    check(st == 200, "/stats answered %d: %r" % (st, body[:200]))
    return json.loads(body)


def metrics(where, timeout_s=5.0):
    """/metrics (Prometheus text); fails unless it answers 200 as text/plain."""
    st, hdr, body = admin_http(where, "/metrics", timeout_s=timeout_s)
    check(st == 200, "/metrics answered %d: %r" % (st, body[:200]))
    check(hdr.get("content-type", "").startswith("text/plain"), "/metrics content type %r" % hdr)
    return body.decode()


# ---- wrk ---------------------------------------------------------------------


class WrkResult:
    def __init__(self, out):
        self.raw = out
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        self.connect, self.read, self.write, self.timeout = (
            (int(m.group(i)) for i in range(1, 5)) if m else (0, 0, 0, 0)
        )
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        self.non2xx = int(m.group(1)) if m else 0
        m = re.search(r"Requests/sec:\s+([\d.]+)", out)
        self.rps = float(m.group(1)) if m else None
        m = re.search(r"(\d+) requests in", out)
        self.requests = int(m.group(1)) if m else None

    def socket_errors(self):
        return self.connect + self.read + self.write + self.timeout

    def summary(self):
        return "requests=%s rps=%s errors connect=%d read=%d write=%d timeout=%d non2xx=%d" % (
            self.requests, self.rps, self.connect, self.read, self.write, self.timeout, self.non2xx)

    def check_clean(self, what="wrk"):
        check(self.requests is not None and self.rps is not None,
              "%s: unparsable output:\n%s" % (what, self.raw))
        check(self.requests > 0, "%s: no request completed" % what)
        check(self.socket_errors() == 0 and self.non2xx == 0, "%s: %s" % (what, self.summary()))


def wrk_binary():
    return shutil.which("wrk")


def wrk_start(ctx, port, threads=2, conns=64, duration=5, path="/", headers=()):
    """Start wrk in the background; returns (proc, outfile). wrk_finish() parses it."""
    w = wrk_binary()
    if not w:
        raise Skip("wrk not installed")
    cmd = [w, "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration]
    for h in headers:
        cmd += ["-H", h]
    cmd.append("http://%s:%d%s" % (LOOPBACK, port, path))
    out = os.path.join(ctx.tmpdir, "wrk-%d.out" % time.monotonic_ns())
    proc = ctx.spawn(cmd, stdout_path=out, stderr_path=out + ".err")
    return proc, out, duration


def wrk_finish(started):
    proc, out, duration = started
    try:
        proc.wait(duration + 20)
    except subprocess.TimeoutExpired:
        _stop_proc(proc, 1)
        fail("wrk did not finish")
    with open(out) as f:
        text = f.read()
    log("wrk: " + " | ".join(l.strip() for l in text.splitlines() if l.strip()))
    return WrkResult(text)


def wrk(ctx, port, **kw):
    return wrk_finish(wrk_start(ctx, port, **kw))


# ---- configuration -----------------------------------------------------------


def upstream(name, servers, **kw):
    """servers: list of "host:port" strings or server dicts."""
    srv = [s if isinstance(s, dict) else {"address": s} for s in servers]
    u = {"name": name, "servers": srv}
    u.update(kw)
    return u


def listener(name, port, upstream_name=None, routes=None, **kw):
    l = {"name": name, "listen": "%s:%d" % (LOOPBACK, port),
         "routes": routes if routes is not None else [{"upstream": upstream_name}]}
    l.update(kw)
    return l


def config(listeners, upstreams, workers=2, relay=None, steering=None, access_log=True,
           log_format="text", limits=None, **kw):
    c = {"workers": workers,
         "log": {"level": "info", "access_log": access_log, "format": log_format},
         "listeners": listeners, "upstreams": upstreams}
    if relay:
        c["relay"] = relay
    if steering:
        c["steering"] = steering
    if limits:
        c["limits"] = limits
    c.update(kw)
    return c


# E2E_IO=epoll (or io_uring) runs the proxies of a whole pass on that event
# loop: every config written here gets "io" unless the test sets its own.
IO = os.environ.get("E2E_IO", "")


def echo_config(up, port, upstream_kw=None, **kw):
    """config(): one listener "l" on port relaying to upstream "echo", the
    server up; upstream_kw go to the upstream, kw to config()."""
    return config([listener("l", port, "echo")],
                  [upstream("echo", [up.address], **(upstream_kw or {}))], **kw)


def write_config(path, conf):
    """Write atomically (rename), so a SIGHUP never reads a half-written file."""
    if IO and isinstance(conf, dict) and "io" not in conf:
        conf = dict(conf, io=IO)
    text = conf if isinstance(conf, str) else json.dumps(conf, indent=2) + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


# ---- processes ---------------------------------------------------------------


def _starttime(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _register(pid):
    """Tell the runner about a process group we started, so it can kill it if
    the test itself dies or times out."""
    path = os.environ.get("E2E_PIDS")
    if path:
        with open(path, "a") as f:
            f.write("%d %s\n" % (pid, _starttime(pid)))


def _stop_proc(proc, grace):
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("      " + l for l in lines[-n:]) or "(empty)"


def children(pid):
    """Direct children of pid (every thread's list)."""
    out = []
    try:
        for task in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                    out += [int(x) for x in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return sorted(set(out))


def fd_count(pid, kind=None):
    """Open descriptors of pid; kind "socket" or "pipe" counts only those."""
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return None
    if kind is None:
        return len(names)
    n = 0
    for name in names:
        try:
            n += os.readlink("/proc/%d/fd/%s" % (pid, name)).startswith(kind + ":")
        except OSError:
            pass
    return n


def pgid_members(pgid):
    """Live (non-zombie) processes in a process group."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return out


ACCESS_RE = re.compile(r"\baccess\s+(listener=.*)$")
KV_RE = re.compile(r"(\w+)=(\S+)")


def parse_access(line):
    """An access-log line (text or json) as a dict, or None."""
    m = ACCESS_RE.search(line)
    if m:
        return dict(KV_RE.findall(m.group(1)))
    i = line.find("{")
    if i >= 0 and '"listener"' in line:
        try:
            d = json.loads(line[i:])
        except ValueError:
            return None
        return {k: str(v) for k, v in d.items()}
    return None


class Proxy:
    """One shardproxy supervisor started from a config dict (or file)."""

    def __init__(self, ctx, conf, workers=None, args=(), name="proxy", path=None, user=None, wrap=None,
                 binary=None):
        self.ctx = ctx
        self.bin = binary or ctx.binary
        self.conf = conf
        self.path = path or os.path.join(ctx.tmpdir, "%s.json" % name)
        if conf is not None:
            write_config(self.path, conf)
        self.errfile = os.path.join(ctx.tmpdir, "%s.stderr" % name)
        self.outfile = os.path.join(ctx.tmpdir, "%s.stdout" % name)
        if user is not None:
            self.bin = ctx.binary_for_user()
        # wrap: a launcher that execs the proxy (same pid), e.g. profile_run
        # with a seccomp profile; E2E_WRAP sets one for every proxy of a run.
        if wrap is None:
            wrap = os.environ.get("E2E_WRAP", "").split()
        cmd = list(wrap) + [self.bin, "-c", self.path]
        if workers is not None:
            cmd += ["-w", str(workers)]
        cmd += list(args)
        log("start: " + " ".join(cmd))
        kw = {}
        if user is not None:  # e.g. run unprivileged: the dir and file must be readable
            os.chmod(ctx.tmpdir, 0o755)
            os.chmod(self.path, 0o644)
            kw = {"user": user, "group": user, "extra_groups": []}
        self.proc = ctx.spawn(cmd, stdout_path=self.outfile, stderr_path=self.errfile, **kw)
        self.pid = self.proc.pid
        self.returncode = None

    # -- log
    def log_text(self):
        try:
            with open(self.errfile, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def lines(self):
        return self.log_text().splitlines()

    def mark(self):
        """A position in the log; wait_log(after=mark) looks only at what follows."""
        return len(self.lines())

    def tail(self, n=30):
        return tail(self.errfile, n)

    def wait_log(self, pattern, timeout_s=5.0, after=0):
        """First log line (at or after index `after`) matching the regex, or None."""
        rx = re.compile(pattern)

        def look():
            for l in self.lines()[after:]:
                if rx.search(l):
                    return l
            return None

        return wait_until(look, timeout_s, 0.02)

    def expect_log(self, pattern, timeout_s=5.0, after=0, what=None):
        l = self.wait_log(pattern, timeout_s, after)
        if l is None:
            fail("%s: no log line matching /%s/ within %.1f s; log tail:\n%s"
                 % (what or "proxy", pattern, timeout_s, self.tail()))
        return l

    def access(self, after=0):
        out = []
        for l in self.lines()[after:]:
            d = parse_access(l)
            if d is not None:
                out.append(d)
        return out

    def _client_port(self, entry):
        try:
            return int(entry.get("client", "").rsplit(":", 1)[1])
        except (IndexError, ValueError):
            return None

    def access_for_ports(self, ports, timeout_s=5.0):
        """Access-log entries of the client connections made from these local
        ports, waiting until there are at least len(ports) of them. A port
        may appear twice (loopback reuses TIME_WAIT ports), so this returns
        a list, every matching entry once."""
        want = set(ports)
        got = []

        def look():
            got[:] = [d for d in self.access() if self._client_port(d) in want]
            return len(got) >= len(ports)

        if not wait_until(look, timeout_s, 0.05):
            fail("access log: %d of %d connections logged after %.0f s; log tail:\n%s"
                 % (len(got), len(ports), timeout_s, self.tail(10)))
        return got

    def access_by_client_port(self, ports, timeout_s=5.0):
        """{port: entry} for connections still unique by port (e.g. held open
        together); the latest entry wins. Waits until every port has one."""
        want = set(ports)
        found = {}

        def look():
            for d in self.access():
                p = self._client_port(d)
                if p in want:
                    found[p] = d
            return len(found) == len(want)

        if not wait_until(look, timeout_s, 0.05):
            fail("access log: %d of %d connections logged after %.0f s; log tail:\n%s"
                 % (len(found), len(want), timeout_s, self.tail(10)))
        return found

    # -- life
    def alive(self):
        return self.proc.poll() is None

    def wait_ready(self, generation=1, timeout_s=10.0, probe=True):
        """Wait for `ready: generation G` in the log and (probe) for every
        listener port to accept a TCP connection."""
        rx = re.compile(r"ready: generation %d\b" % generation)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                fail("proxy exited with %s before ready; stderr:\n%s" % (self.proc.returncode, self.tail()))
            if any(rx.search(l) for l in self.lines()):
                break
            if time.monotonic() > deadline:
                fail("proxy not ready (no 'ready: generation %d' line) after %.0f s; stderr:\n%s"
                     % (generation, timeout_s, self.tail()))
            time.sleep(0.02)
        if probe and isinstance(self.conf, dict):
            for l in self.conf.get("listeners", []):
                port = int(l["listen"].rsplit(":", 1)[1])
                while not _can_connect(port):
                    if time.monotonic() > deadline:
                        fail("listener %s does not accept connections; stderr:\n%s"
                             % (l["listen"], self.tail()))
                    time.sleep(0.05)
        log("ready (pid %d, shards %s)" % (self.pid, self.shards()))
        return self

    def shards(self):
        return children(self.pid)

    def wait_shards(self, n, timeout_s=5.0):
        ok = wait_until(lambda: len(self.shards()) == n, timeout_s)
        check(ok, "expected %d shard processes, have %s; log tail:\n%s" % (n, self.shards(), self.tail()))
        return self.shards()

    def signal(self, sig):
        os.kill(self.pid, sig)

    def reload(self, conf=None):
        """Rewrite the file (when conf given) and send SIGHUP. Returns the log
        mark from before the signal."""
        if conf is not None:
            self.conf = conf
            write_config(self.path, conf)
        m = self.mark()
        self.signal(signal.SIGHUP)
        return m

    def wait_exit(self, timeout_s=10.0):
        try:
            self.returncode = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, timeout_s=10.0):
        """SIGTERM and wait; returns the exit status (None if it did not exit)."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait_exit(timeout_s)

    def close(self):
        _stop_proc(self.proc, 2)


def steering_available(ctx, conf_path):
    """(available, reason) from `shardproxy -V -c FILE`."""
    r = subprocess.run([ctx.binary, "-V", "-c", conf_path], capture_output=True, text=True, timeout=20)
    out = r.stdout + r.stderr
    m = re.search(r"^steering:\s*(\S+)\s*(.*)$", out, re.M)
    if not m:
        return False, "no 'steering:' line in -V output: %r" % out[-300:]
    if m.group(1) == "none":
        return False, m.group(0)
    return True, m.group(0)


def require_bpf_steering(ctx, proxy):
    """Skip unless the running proxy really steers with BPF."""
    ok, why = steering_available(ctx, proxy.path)
    if not ok:
        raise Skip("BPF steering unavailable here (%s)" % why)
    l = proxy.wait_log(r"BPF steering unavailable", timeout_s=0.1)
    if l:
        raise Skip("proxy says: " + l.strip())


def require_cpus(n):
    if len(os.sched_getaffinity(0)) < n or (os.cpu_count() or 1) < n:
        raise Skip("needs %d CPUs" % n)


# ---- the context a test gets ---------------------------------------------------

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def sanitizer_reports(tmpdir):
    """First lines of ASan/LSan/UBSan reports in the logs a test left."""
    found = []
    for root, _, files in os.walk(tmpdir):
        for fn in files:
            if not (fn.endswith(".stderr") or fn.endswith(".log")):
                continue
            try:
                with open(os.path.join(root, fn), errors="replace") as f:
                    for line in f:
                        if any(m in line for m in SANITIZER_MARKERS):
                            found.append("%s: %s" % (fn, line.strip()[:300]))
                            break
            except OSError:
                pass
    return found



class Ctx:
    def __init__(self, build, name):
        self.build = os.path.abspath(build)
        self.binary = os.path.join(self.build, "shardproxy")
        self.name = name
        self.tmpdir = tempfile.mkdtemp(prefix="e2e-%s-" % name[:40])
        self._cleanup = []

    def defer(self, fn):
        self._cleanup.append(fn)
        return fn

    def cleanup(self, keep_tmp=False):
        while self._cleanup:
            fn = self._cleanup.pop()
            try:
                fn()
            except Exception as e:  # teardown must go on
                sys.stderr.write("cleanup error: %r\n" % e)
        self.sanitizer_reports = sanitizer_reports(self.tmpdir)
        if not keep_tmp:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def spawn(self, cmd, stdout_path=None, stderr_path=None, **kw):
        """Start a process in its own process group, killed on teardown."""
        out = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
        err = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL
        try:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                 start_new_session=True, cwd=REPO, **kw)
        finally:
            for f in (out, err):
                if f is not subprocess.DEVNULL:
                    f.close()
        _register(p.pid)
        self.defer(lambda: _stop_proc(p, 2))
        return p

    def binary_for_user(self):
        """The binary copied where any user can execute it, for tests that run
        it as another user: the checkout may live under a directory others
        cannot enter (e.g. /root, mode 0700), and exec needs search permission
        on every directory of the path. Made once per test, removed with it."""
        if getattr(self, "_user_binary", None):
            return self._user_binary
        d = tempfile.mkdtemp(prefix="e2e-bin-")
        self.defer(lambda: shutil.rmtree(d, ignore_errors=True))
        os.chmod(d, 0o755)
        path = os.path.join(d, "shardproxy")
        shutil.copyfile(self.binary, path)
        os.chmod(path, 0o755)
        walk = d
        while True:
            if os.stat(walk).st_mode & 0o001 == 0:
                raise Skip("%s: directory %s is not searchable by other users (set TMPDIR to one that is)"
                           % (path, walk))
            up = os.path.dirname(walk)
            if up == walk:
                break
            walk = up
        self._user_binary = path
        return path

    def run(self, args, timeout_s=20):
        """Run the binary to completion: (exit code, stdout + stderr)."""
        r = subprocess.run([self.binary] + list(args), capture_output=True, text=True,
                           timeout=timeout_s, cwd=REPO, stdin=subprocess.DEVNULL)
        return r.returncode, r.stdout + r.stderr

    # -- things a test starts, torn down for it
    def proxy(self, conf, ready=True, probe=True, **kw):
        p = Proxy(self, conf, **kw)
        if ready:
            p.wait_ready(probe=probe)
        return p

    def _own(self, obj):
        self.defer(obj.close)
        return obj

    def echo(self, **kw):
        return self._own(EchoServer(**kw))

    def echo_proxy(self, ready=True, probe=True, args=(), wrap=None, **conf_kw):
        """An echo server and a proxy to it: (server, the proxy's port, proxy).
        conf_kw go to echo_config, the rest to proxy()."""
        up = self.echo()
        port = free_port()
        return up, port, self.proxy(echo_config(up, port, **conf_kw), ready=ready, probe=probe,
                                    args=args, wrap=wrap)

    def server(self, cls, **kw):
        return self._own(cls(**kw))

    def down_port(self):
        return self._own(DownPort())

    def blackhole(self):
        return self._own(Blackhole())

    def http_upstream(self):
        demo = os.path.join(self.build, "demo-upstream")
        if os.access(demo, os.X_OK):
            return self._own(DemoUpstream(demo, self))
        return self._own(PyHttpServer())

    def file(self, name, text):
        path = os.path.join(self.tmpdir, name)
        with open(path, "w") as f:
            f.write(text)
        return path


# ---- helper commands (for client processes run under taskset etc.) -------------


def _connect_many(port, count):
    ports = []
    for _ in range(count):
        s = connect(port)
        s.sendall(b"x")
        recv_exact(s, 1)
        ports.append(s.getsockname()[1])
        s.close()
    print(json.dumps(ports))

def strace_delay_wrapper(t, syscall, delay_s):
    """A wrapper script that runs t.binary under strace -D -f, delaying every
    call of syscall by delay_s in each process it starts (supervisor,
    shards, a binary upgrade's new one): a start-up slowed at one chosen
    point. -D keeps the traced supervisor at the pid the test started.
    Skips where strace is missing or cannot trace here."""
    strace = shutil.which("strace")
    if not strace:
        raise Skip("strace is not installed")
    path = os.path.join(t.tmpdir, "slow-%s-shardproxy" % syscall)
    with open(path, "w") as f:
        # LeakSanitizer cannot run under ptrace (SANITIZE=1 builds)
        f.write("#!/bin/sh\nASAN_OPTIONS=\"${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0\" "
                "exec %s -D -f -qq -o /dev/null --seccomp-bpf -e trace=%s "
                "-e inject=%s:delay_enter=%d %s \"$@\"\n"
                % (strace, syscall, syscall, int(delay_s * 1e6), t.binary))
    os.chmod(path, 0o755)
    r = subprocess.run([path, "-h"], capture_output=True, text=True, timeout=20)
    if r.returncode != 0 or "usage: shardproxy" not in r.stdout:
        raise Skip("strace -D cannot run the binary here: %s" % (r.stderr.strip()[-200:]))
    return path


def echo_until(port, up, done, deadline_s, what):
    """Echo through the proxy, one new connection after another, until
    done() or deadline_s (monotonic); every one must be served intact (no
    refusal, no reset). Returns how many were."""
    n = 0
    while not done() and time.monotonic() < deadline_s:
        check_echo(port, b"during the hand-over %d" % n, up, timeout_s=5, what="%s, echo %d:" % (what, n))
        n += 1
        time.sleep(0.05)
    return n


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "connect-many":
        _connect_many(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)

