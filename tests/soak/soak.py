#!/usr/bin/env python3
"""Soak and fault suite: the real proxy under mixed load while it is reloaded,
has shards killed and is given reloads that must fail. `make soak`.

  make soak                                   10 minutes (SOAK_SECONDS=600)
  SOAK_SECONDS=120 make soak                  a short one while developing
  python3 tests/soak/soak.py --build build --seconds 120 --workers 2

Loopback only. For the whole run, at once:
  - wrk keep-alive (listener "ka") and wrk with "Connection: close", one
    connection per request ("cpr"), against two build/demo-upstream servers;
  - bulk transfers both ways ("bulk"): random payloads of 1 KiB..8 MiB
    uploaded (the upstream checks every byte and answers with the sha256) or
    downloaded (the client checks every byte); a transfer cut by a fault must
    still have carried a correct prefix;
  - slow readers (downloads read at ~80 KB/s through a small receive buffer)
    and slowloris clients (an HTTP request head one byte a second) ("slow");
  - a SIGHUP every 2 s alternating two valid configurations (A: relay copy,
    text access log, round robin; B: relay auto, which moves bulk to splice,
    JSON access log, least_conn; different limits), the access log rotated
    at each one;
  - a shard SIGKILL every 15 s (a shard of the serving generation);
  - one failed reload a minute, alternating an invalid file and a valid file
    adding two listeners, the second on a port already in use (the first one
    must then refuse connections: the failed reload closed what it bound).

It passes when wrk reports 0 connect errors and 0 non-2xx responses, no
transfer carried a wrong byte, every bulk transfer either completed with a
matching sha256 or was cut by a fault that explains it (a killed shard, a
drain timeout), every valid reload applied and every bad one failed, every
killed shard came back, the proxy's memory (PSS summed over supervisor and
shards, with one generation running) at the end is within 10% of the figure
after the first minute, and once the load stops, the shard count and the
descriptors of the supervisor and the shards are back to their baseline. It
prints a one-screen summary (also written to BUILD/soak/summary.txt, with the
proxy's log and wrk's output) and exits 0 on pass, 1 on fail, 2 if it could
not run.
"""

import argparse
import collections
import hashlib
import json
import os
import random
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))

import lib  # noqa: E402

LO = lib.LOOPBACK
MiB = 1 << 20

RELOAD_EVERY = 2.0
KILL_EVERY = 15.0
FAILED_RELOAD_EVERY = float(os.environ.get("SOAK_FAILED_RELOAD_EVERY", "60"))
FIRST_FAILED_RELOAD = float(os.environ.get("SOAK_FIRST_FAILED_RELOAD", "20"))
WRK_SEGMENT = 30  # s; wrk reports only at its end, so segments localise errors in time
BULK_CLIENTS = 4
SLOW_READERS = 16
SLOWLORIS = 32
MEM_TOLERANCE = 0.10
# Memory is compared in two quiet windows, one after the first minute and one
# at the end: config A is loaded as the window opens, then no reload and no
# kill, so one generation of the same configuration serves the same load and
# the samples of the window's second half compare like with like. Every
# reload starts new shards, whose memory grows as they touch their pools: with
# relay copy (config A) and 256 sessions a shard, a shard is at its plateau
# within 5 s under this load (with auto it takes ~40 s, as bulk moves to
# splice and leaves the copy ring's buffers untouched longer).
MEM_WINDOW = 15.0
MEM_SAMPLE = 6.0


def now_wall():
    return time.time()


def human_bytes(n):
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return "%.1f %s" % (n / div, unit)
    return "%d B" % n


# ---- what the proxy says -------------------------------------------------------


class LogWatch:
    """Follows the supervisor's stderr from a thread: every line with the wall
    time it was seen, and wait() for a regex after a mark."""

    def __init__(self, path):
        self.path = path
        self.lines = []  # (wall time, text)
        self.cond = threading.Condition()
        self.stop = False
        self._off = 0
        self._part = b""
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self._off)
                data = f.read()
        except OSError:
            return
        if not data:
            return
        self._off += len(data)
        data = self._part + data
        parts = data.split(b"\n")
        self._part = parts.pop()
        t = now_wall()
        with self.cond:
            for p in parts:
                self.lines.append((t, p.decode(errors="replace")))
            self.cond.notify_all()

    def _run(self):
        while not self.stop:
            self._read()
            time.sleep(0.05)
        self._read()

    def mark(self):
        with self.cond:
            return len(self.lines)

    def wait(self, pattern, after, timeout_s):
        """(wall time, line) of the first line at or after index `after`
        matching pattern, or None after timeout_s."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        i = after
        with self.cond:
            while True:
                while i < len(self.lines):
                    if rx.search(self.lines[i][1]):
                        return self.lines[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.2))

    def grep(self, pattern, after=0):
        rx = re.compile(pattern)
        with self.cond:
            return [(t, l) for t, l in self.lines[after:] if rx.search(l)]

    def close(self):
        self.stop = True
        self.thread.join(2)


TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z")


def _access_time(line, d):
    ts = d.get("time")
    if not ts:
        m = TIME_RE.search(line)
        ts = m.group(1) if m else None
    if not ts:
        return None
    ts = ts.rstrip("Z")
    try:
        import datetime

        return datetime.datetime.fromisoformat(ts).replace(tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return None


class AccessLogs:
    """The access log is a file, renamed before every reload (each generation
    opens it again, as operators rotate it). A thread reads every file still
    written to, counts (listener, end) and keeps the non-"done" entries of
    the bulk and slow listeners by client port, to explain cut transfers."""

    KEEP_LISTENERS = ("bulk", "slow")
    CAP = 200000

    def __init__(self, path):
        self.path = path
        self.seq = 0
        self.files = {}  # path -> [offset, partial, last growth (monotonic), rotated]
        self.counts = collections.Counter()
        self.cut_by_port = collections.defaultdict(list)  # port -> [(wall time, end, listener)]
        self.kept = 0
        self.lines = 0
        self.unparsed = 0
        self.lock = threading.Lock()
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def rotate(self):
        with self.lock:
            if os.path.exists(self.path):
                self.seq += 1
                dst = "%s.%d" % (self.path, self.seq)
                os.rename(self.path, dst)
                st = self.files.pop(self.path, [0, b"", time.monotonic(), False])
                st[3] = True
                self.files[dst] = st

    def _parse(self, raw):
        line = raw.decode(errors="replace")
        d = lib.parse_access(line)
        self.lines += 1
        if d is None:
            self.unparsed += 1
            return
        lst, end = d.get("listener", "?"), d.get("end", "?")
        self.counts[(lst, end)] += 1
        if end != "done" and lst in self.KEEP_LISTENERS and self.kept < self.CAP:
            try:
                port = int(d.get("client", "").rsplit(":", 1)[1])
            except (IndexError, ValueError):
                return
            self.cut_by_port[port].append((_access_time(line, d), end, lst))
            self.kept += 1

    def poll(self, final=False):
        with self.lock:
            if os.path.exists(self.path) and self.path not in self.files:
                self.files[self.path] = [0, b"", time.monotonic(), False]
            for p, st in list(self.files.items()):
                try:
                    with open(p, "rb") as f:
                        f.seek(st[0])
                        data = f.read(64 * MiB)
                except OSError:
                    data = b""
                if data:
                    st[0] += len(data)
                    st[2] = time.monotonic()
                    chunks = (st[1] + data).split(b"\n")
                    st[1] = chunks.pop()
                    for c in chunks:
                        if c:
                            self._parse(c)
                # No generation writes a rotated file 30 s after its last line:
                # a drain is at most drain_timeout_ms + 2 s here.
                if st[3] and (final or time.monotonic() - st[2] > 30):
                    if st[1]:
                        self._parse(st[1])
                    del self.files[p]
                    try:
                        os.unlink(p)
                    except OSError:
                        pass

    def _run(self):
        while not self.stop:
            self.poll()
            time.sleep(1.0)

    def close(self):
        self.stop = True
        self.thread.join(10)
        self.poll(final=True)

    def explain(self, port, t0, t1):
        """The access-log end of a cut session of this client port between
        t0 and t1 (wall), or None if no line was written (its shard died)."""
        for t, end, _lst in self.cut_by_port.get(port, []):
            if t is None or t0 - 2 <= t <= t1 + 2:
                return end
        return None


# ---- the bulk upstream ------------------------------------------------------------


class BulkServer(lib.TcpServer):
    """Speaks one request per connection, a line then data:
      "U SEED N PORT\\n" + N bytes: the client uploads random.Random(SEED)'s N
         bytes; every byte is compared as it comes; at the client's FIN after
         all N: "OK N SHA256\\n" and close.
      "D SEED N PORT\\n": the server sends those N bytes, then FIN.
    PORT is the client's local port, for the records."""

    def __init__(self, **kw):
        self.up_ok = 0
        self.up_short_fin = 0  # EOF (not reset) before N bytes: the close looked clean
        self.up_reset = 0
        self.up_corrupt = []
        self.down_sent = 0
        self.down_cut = 0
        self.headerless = 0
        super().__init__(name="bulk", **kw)

    def handle(self, conn):
        conn.settimeout(120)
        head = bytearray()
        while not head.endswith(b"\n"):
            try:
                d = conn.recv(1)
            except OSError:
                d = b""
            if not d or len(head) > 80:
                with self.lock:
                    self.headerless += 1
                return
            head += d
        kind, seed, n, port = head.decode().split()
        seed, n, port = int(seed), int(n), int(port)
        data = lib.payload(n, seed)
        if kind == "U":
            got = 0
            h = hashlib.sha256()
            try:
                while True:
                    d = conn.recv(262144)
                    if not d:
                        break
                    if got + len(d) > n or data[got:got + len(d)] != d:
                        with self.lock:
                            self.up_corrupt.append("upload port %d seed %d: wrong bytes at offset %d" % (port, seed, got))
                        conn.close()
                        return
                    h.update(d)
                    got += len(d)
            except OSError:
                with self.lock:
                    self.up_reset += 1
                return
            if got != n:
                with self.lock:
                    self.up_short_fin += 1
                return
            conn.sendall(b"OK %d %s\n" % (n, h.hexdigest().encode()))
            conn.shutdown(socket.SHUT_WR)
            with self.lock:
                self.up_ok += 1
        else:
            try:
                conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                with self.lock:
                    self.down_cut += 1
                return
            with self.lock:
                self.down_sent += 1
        try:  # wait for the client's close, so ours is never the reset
            conn.settimeout(10)
            while conn.recv(65536):
                pass
        except OSError:
            pass


# ---- clients -----------------------------------------------------------------------


class Results:
    def __init__(self):
        self.lock = threading.Lock()
        self.bulk = collections.Counter()
        self.bulk_bytes = 0
        self.cuts = []  # dicts: kind, port, n, got, t0, t1, how
        self.corrupt = []
        self.connect_errors = []
        self.slow = collections.Counter()
        self.slow_bytes = 0
        self.loris = collections.Counter()


def _connect(port, results, what, rcvbuf=None, timeout_s=10):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout_s)
    try:
        s.connect((LO, port))
    except OSError as e:
        s.close()
        with results.lock:
            results.connect_errors.append("%s %s: connect: %r" % (time.strftime("%H:%M:%S"), what, e))
        return None
    return s


def bulk_client(port, results, stop, rng):
    while not stop.is_set():
        kind = rng.choice("UD")
        n = int(2 ** rng.uniform(10, 23))
        seed = rng.randrange(1 << 30)
        data = lib.payload(n, seed)
        s = _connect(port, results, "bulk")
        if s is None:
            time.sleep(0.2)
            continue
        s.settimeout(60)
        lport = s.getsockname()[1]
        t0 = now_wall()
        got = 0
        how = "overlong"
        try:
            s.sendall(b"%s %d %d %d\n" % (kind.encode(), seed, n, lport))
            if kind == "U":
                lib.send_all(s, data)
                s.shutdown(socket.SHUT_WR)
                reply, how = lib.recv_all(s)
                m = re.match(rb"OK (\d+) ([0-9a-f]{64})\n$", reply)
                if m and int(m.group(1)) == n and m.group(2).decode() == lib.sha(data):
                    how = "ok"
                    got = n
                elif m:
                    with results.lock:
                        results.corrupt.append("upload port %d: upstream reports sha %s for %d bytes, sent %s"
                                               % (lport, m.group(2).decode()[:12], n, lib.sha(data)[:12]))
                    how = "corrupt"
                elif reply:
                    how = "corrupt"
                    with results.lock:
                        results.corrupt.append("upload port %d: reply %r" % (lport, reply[:80]))
                else:
                    how = "cut-" + how
            else:
                buf = bytearray()
                try:
                    while True:
                        d = s.recv(262144)
                        if not d:
                            how = "eof"
                            break
                        buf += d
                        if len(buf) > n:
                            break
                except ConnectionResetError:
                    how = "reset"
                got = len(buf)
                if bytes(buf) != data[:got]:
                    how = "corrupt"
                    with results.lock:
                        results.corrupt.append("download port %d seed %d: %d of %d bytes, wrong content"
                                               % (lport, seed, got, n))
                elif got == n and how == "eof":
                    how = "ok"
                else:
                    how = "cut-" + how
        except socket.timeout:
            how = "cut-timeout"
        except OSError as e:
            how = "cut-" + type(e).__name__
        finally:
            s.close()
        t1 = now_wall()
        with results.lock:
            results.bulk[(kind, "ok" if how == "ok" else "corrupt" if how == "corrupt" else "cut")] += 1
            results.bulk_bytes += got
            if how.startswith("cut"):
                results.cuts.append({"kind": kind, "port": lport, "n": n, "got": got, "t0": t0, "t1": t1,
                                     "how": how[4:]})


class SlowReaders:
    """Downloads read a little at a time through a 4 KiB receive buffer, every
    byte checked, reconnecting when a fault cuts one."""

    SIZE = 1 * MiB
    CHUNK = 4096
    TICK = 0.05

    def __init__(self, port, results, stop, count, rng):
        self.port, self.results, self.stop, self.count, self.rng = port, results, stop, count, rng

    def _open(self, sel):
        s = _connect(self.port, self.results, "slow reader", rcvbuf=4096)
        if s is None:
            return
        seed = self.rng.randrange(1 << 30)
        try:
            s.sendall(b"D %d %d %d\n" % (seed, self.SIZE, s.getsockname()[1]))
        except OSError:
            s.close()
            return
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, {"data": lib.payload(self.SIZE, seed), "got": 0})

    def run(self):
        sel = selectors.DefaultSelector()
        while not self.stop.is_set():
            for _ in range(min(2, self.count - len(sel.get_map()))):  # ramp up, and re-open what faults cut
                self._open(sel)
            time.sleep(self.TICK)
            for key in list(sel.get_map().values()):
                s, st = key.fileobj, key.data
                end = None
                try:
                    d = s.recv(self.CHUNK)
                    if not d:
                        end = "eof"
                except BlockingIOError:
                    continue
                except OSError:
                    end = "reset"
                if end is None:
                    if st["data"][st["got"]:st["got"] + len(d)] != d:
                        with self.results.lock:
                            self.results.corrupt.append("slow reader: wrong bytes at offset %d" % st["got"])
                        end = "corrupt"
                    else:
                        st["got"] += len(d)
                        with self.results.lock:
                            self.results.slow_bytes += len(d)
                        continue
                with self.results.lock:
                    # a cut one says how it was cut: a reset, or a FIN that looks like a clean end
                    self.results.slow["complete" if end == "eof" and st["got"] == self.SIZE else "cut-" + end] += 1
                sel.unregister(s)
                s.close()
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()


class Slowloris:
    """HTTP request heads sent one byte a second and never finished."""

    def __init__(self, port, results, stop, count):
        self.port, self.results, self.stop, self.count = port, results, stop, count
        self.head = b"GET / HTTP/1.1\r\nHost: soak\r\n" + b"".join(b"X-Slow-%d: %d\r\n" % (i, i) for i in range(300))

    def run(self):
        conns = []
        while not self.stop.is_set():
            while len(conns) < self.count and not self.stop.is_set():
                s = _connect(self.port, self.results, "slowloris", timeout_s=5)
                if s is None:
                    time.sleep(0.2)
                    break
                s.setblocking(False)
                conns.append([s, 0])
                with self.results.lock:
                    self.results.loris["opened"] += 1
            for c in list(conns):
                s, off = c
                try:
                    if off < len(self.head):
                        s.send(self.head[off:off + 1])
                        c[1] += 1
                    d = s.recv(4096)  # nothing is expected before the head ends
                    end = "closed" if not d else "answered"
                except BlockingIOError:
                    continue
                except OSError:
                    end = "closed"
                with self.results.lock:
                    self.results.loris[end] += 1
                conns.remove(c)
                s.close()
            self.stop.wait(1.0)
        for s, _ in conns:
            s.close()


def wrk_loop(ctx, port, conns, headers, until, results_list, stop):
    """wrk in WRK_SEGMENT-second runs until the monotonic time `until`."""
    while not stop.is_set():
        left = until - time.monotonic()
        if left < 3:
            return
        seg = int(min(WRK_SEGMENT, left))
        cmd = [lib.wrk_binary(), "-t1", "-c%d" % conns, "-d%ds" % seg, "--timeout", "5s"]
        for h in headers:
            cmd += ["-H", h]
        cmd.append("http://%s:%d/" % (LO, port))
        out = os.path.join(ctx.tmpdir, "wrk-%d-%d.out" % (port, len(results_list)))
        t0 = now_wall()
        proc = ctx.spawn(cmd, stdout_path=out, stderr_path=out + ".err")
        try:
            proc.wait(seg + 30)
        except subprocess.TimeoutExpired:
            lib._stop_proc(proc, 1)
        with open(out, errors="replace") as f:
            text = f.read()
        results_list.append((t0, now_wall(), lib.WrkResult(text), proc.returncode))


# ---- measuring the proxy ------------------------------------------------------------


def _kb(path, keys):
    out = dict.fromkeys(keys, 0)
    try:
        with open(path) as f:
            for line in f:
                k = line.split(":", 1)[0]
                if k in out:
                    out[k] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return out


def fd_kinds(pid, tmpdir):
    """Counter of a process's descriptors by kind (socket, pipe, anon_inode:[x], file)."""
    c = collections.Counter()
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return None
    for n in names:
        try:
            t = os.readlink("/proc/%d/fd/%s" % (pid, n))
        except OSError:
            continue
        if t.startswith("socket:"):
            c["socket"] += 1
        elif t.startswith("pipe:"):
            c["pipe"] += 1
        elif t.startswith("anon_inode:"):
            c[t] += 1
        elif t.startswith(tmpdir):
            # access.log.N (rotated, maybe deleted) is still the access log
            c["file:" + re.sub(r"(\.\d+)?( \(deleted\))?$", "", os.path.basename(t))] += 1
        else:
            c["file:" + t] += 1
    return c


TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
              "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN",
              "0B": "CLOSING"}


def _hexaddr(h):
    ip, port = h.split(":")
    if len(ip) == 8:
        return "%s:%d" % (socket.inet_ntop(socket.AF_INET, bytes.fromhex(ip)[::-1]), int(port, 16))
    raw = b"".join(bytes.fromhex(ip[i:i + 8])[::-1] for i in range(0, 32, 8))
    return "[%s]:%d" % (socket.inet_ntop(socket.AF_INET6, raw), int(port, 16))


def describe_sockets(pid):
    """Sorted descriptions ("tcp 127.0.0.1:80 LISTEN", "unix /path") of a
    process's sockets, for saying which one leaked."""
    inodes = {}
    for name in ("tcp", "tcp6"):
        try:
            with open("/proc/%d/net/%s" % (pid, name)) as f:
                next(f)
                for line in f:
                    x = line.split()
                    inodes[x[9]] = "%s %s -> %s %s" % (name, _hexaddr(x[1]), _hexaddr(x[2]),
                                                       TCP_STATES.get(x[3], x[3]))
        except (OSError, StopIteration, ValueError, IndexError):
            pass
    try:
        with open("/proc/%d/net/unix" % pid) as f:
            next(f)
            for line in f:
                x = line.split()
                inodes[x[6]] = "unix %s" % (x[7] if len(x) > 7 else "(unnamed)")
    except (OSError, StopIteration, IndexError):
        pass
    out = []
    try:
        for n in os.listdir("/proc/%d/fd" % pid):
            try:
                t = os.readlink("/proc/%d/fd/%s" % (pid, n))
            except OSError:
                continue
            m = re.match(r"socket:\[(\d+)\]", t)
            if m:
                out.append(inodes.get(m.group(1), "socket (not tcp/unix)"))
    except OSError:
        pass
    return sorted(out)


def fd_diff(base, end):
    """'kind before -> after' for every kind whose count changed."""
    return ", ".join("%s %d -> %d" % (k, base[k], end[k]) for k in sorted(set(base) | set(end))
                     if base[k] != end[k]) or "same"


class Monitor:
    """Every second: the proxy's processes, their summed RSS and PSS, the
    supervisor's descriptors."""

    def __init__(self, proxy, stop):
        self.proxy = proxy
        self.stop = stop
        self.samples = []  # (t since start, nshards, rss kB, pss kB, supervisor rss kB, supervisor fds, detail)
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def sample(self):
        pid = self.proxy.pid
        kids = lib.children(pid)
        rss = pss = 0
        sup_rss = 0
        detail = []
        for p in [pid] + kids:
            m = _kb("/proc/%d/smaps_rollup" % p, ("Rss", "Pss"))
            if m is None:
                continue
            rss += m["Rss"]
            pss += m["Pss"]
            detail.append((p, m["Rss"], m["Pss"]))
            if p == pid:
                sup_rss = m["Rss"]
        return (time.monotonic() - self.t0, len(kids), rss, pss, sup_rss, lib.fd_count(pid), detail)

    def _run(self):
        while not self.stop.is_set():
            self.samples.append(self.sample())
            self.stop.wait(1.0)


# ---- faults -------------------------------------------------------------------------


class Chaos:
    def __init__(self, soak, windows):
        self.s = soak
        self.windows = windows  # [(start, end)] monotonic: quiet, for the memory samples
        self.window_reloads = set()
        self.reload_signals = 0
        self.failed_attempts = []  # (kind, ok?, detail)
        self.kills = []  # (wall, slot, pid, outcome, seconds to restart)
        self.kill_times = []

    # Reloads: a SIGHUP every 2 s, alternating A and B; once a minute a bad one.
    def reloads(self, stop, t_end):
        s = self.s
        k = 0
        next_failed = time.monotonic() + FIRST_FAILED_RELOAD
        nfailed = 0
        tick = time.monotonic()
        while not stop.is_set() and time.monotonic() < t_end:
            tick += RELOAD_EVERY
            if stop.wait(max(0.0, tick - time.monotonic())):
                break
            w = self.in_window()
            if w is not None:
                if w not in self.window_reloads:  # open the window on config A
                    self.window_reloads.add(w)
                    lib.write_config(s.proxy.path, s.conf_a)
                    s.access.rotate()
                    s.proxy.signal(signal.SIGHUP)
                    self.reload_signals += 1
                    k = 0
                continue
            if time.monotonic() >= next_failed:
                self.failed_reload("invalid" if nfailed % 2 == 0 else "port_in_use")
                nfailed += 1
                next_failed += FAILED_RELOAD_EVERY
                tick = time.monotonic()
                continue
            k += 1
            conf = s.conf_b if k % 2 else s.conf_a
            lib.write_config(s.proxy.path, conf)
            s.access.rotate()
            s.proxy.signal(signal.SIGHUP)
            self.reload_signals += 1
        # End on config A, as at the start, so the baseline compares like with like.
        lib.write_config(s.proxy.path, s.conf_a)
        mark = s.log.mark()
        s.access.rotate()
        s.proxy.signal(signal.SIGHUP)
        self.reload_signals += 1
        s.final_reload_mark = mark

    def in_window(self, margin=0.0):
        t = time.monotonic()
        for i, (a, b) in enumerate(self.windows):
            if a - margin <= t < b:
                return i
        return None

    def failed_reload(self, kind):
        s = self.s
        mark = s.log.mark()
        if kind == "invalid":
            bad = json.loads(json.dumps(s.conf_a))
            bad["listeners"][0]["routes"] = [{"upstream": "no-such-upstream"}]
            lib.write_config(s.proxy.path, bad)
            free = None
        else:
            bad = json.loads(json.dumps(s.conf_b))
            free = lib.free_port()
            bad["listeners"] = bad["listeners"] + [
                lib.listener("extra_free", free, "web"),
                lib.listener("extra_busy", s.busy_port, "web"),
            ]
            lib.write_config(s.proxy.path, bad)
        s.proxy.signal(signal.SIGHUP)
        # A SIGHUP during a drain is queued: the file is read when the drain
        # ends, so the bad file stays until the proxy has said no.
        hit = s.log.wait(r"reload failed: .*keeps serving", mark, 30)
        ok = hit is not None
        if hit:
            detail = hit[1].split("shardproxy: ", 1)[-1]
        else:
            detail = "%s file: no 'reload failed' within 30 s; reload lines since: %s" % (
                kind, [l for _t, l in s.log.grep(r"reload", mark)][:3])
        if ok and free is not None:
            # The listener bound before the failing one must be closed again.
            time.sleep(0.2)
            if lib._can_connect(free, 0.5):
                ok = False
                detail = ("failed reload left 127.0.0.1:%d (its other new listener) accepting connections"
                          % free)
        self.failed_attempts.append((kind, ok, detail))
        lib.write_config(s.proxy.path, s.conf_a)

    # A shard of the serving generation SIGKILLed every 15 s.
    def kills_loop(self, stop, t_end):
        s = self.s
        nxt = time.monotonic() + KILL_EVERY / 2
        while not stop.is_set() and time.monotonic() < t_end:
            if stop.wait(max(0.0, nxt - time.monotonic())):
                break
            nxt += KILL_EVERY
            if self.in_window(margin=3.0) is not None:
                continue
            try:
                st = lib.stats(s.aport, timeout_s=3)
            except (OSError, lib.TestFailure) as e:
                self.kills.append((now_wall(), None, None, "/stats failed: %r" % e, None))
                continue
            cands = [x for x in st["shards"] if x["generation"] == st["generation"] and x["state"] == "ready"
                     and x["pid"] in lib.children(s.proxy.pid)]
            if not cands:
                self.kills.append((now_wall(), None, None, "no ready shard to kill", None))
                continue
            v = random.choice(cands)
            mark = s.log.mark()
            try:
                os.kill(v["pid"], signal.SIGKILL)
            except ProcessLookupError:
                continue
            tk = now_wall()
            self.kill_times.append(tk)
            hit = s.log.wait(r"shard %d restarted" % v["slot"], mark, 10)
            if hit:
                self.kills.append((tk, v["slot"], v["pid"], "restarted", max(0.0, hit[0] - tk)))
            elif s.log.grep(r"reload: generation \d+ ready", mark):
                # its generation was replaced: a draining shard is not restarted
                self.kills.append((tk, v["slot"], v["pid"], "superseded by a reload", None))
            else:
                self.kills.append((tk, v["slot"], v["pid"], "NOT restarted within 10 s", None))


# ---- the soak ------------------------------------------------------------------------


class Soak:
    def __init__(self, args):
        self.a = args
        self.ctx = lib.Ctx(args.build, "soak")
        self.failures = []
        self.notes = []
        self.final_reload_mark = None

    def configs(self, up1, up2, bulk):
        self.ports = {n: lib.free_port() for n in ("ka", "cpr", "bulk", "slow")}
        self.aport = lib.free_port()
        alog = os.path.join(self.ctx.tmpdir, "access.log")
        listeners = [lib.listener(n, p, "bulk" if n == "bulk" else "web") for n, p in self.ports.items()]
        common = {"admin": {"listen": "%s:%d" % (LO, self.aport)}}
        self.conf_a = lib.config(listeners, [
            lib.upstream("web", [up1.address, up2.address], balance="round_robin"),
            lib.upstream("bulk", [bulk.address])],
            workers=self.a.workers, relay="copy", access_log=alog, log_format="text",
            limits={"max_connections": 512, "drain_timeout_ms": 1500}, **common)
        self.conf_b = lib.config(listeners, [
            lib.upstream("web", [{"address": up2.address, "weight": 2}, {"address": up1.address}],
                         balance="least_conn"),
            lib.upstream("bulk", [bulk.address], idle_timeout_ms=120000)],
            workers=self.a.workers, relay="auto", access_log=alog, log_format="json",
            limits={"max_connections": 2048, "drain_timeout_ms": 2500}, **common)
        return alog

    def run(self):
        a = self.a
        ctx = self.ctx
        if not lib.wrk_binary():
            raise SystemExit("soak: wrk not installed (make deps installs it)")
        if not os.access(os.path.join(ctx.build, "demo-upstream"), os.X_OK):
            raise SystemExit("soak: %s/demo-upstream missing (make all)" % ctx.build)
        self.started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        up1, up2 = ctx.http_upstream(), ctx.http_upstream()
        self.bulk = bulk = ctx.server(BulkServer)
        alog = self.configs(up1, up2, bulk)
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.bind((LO, 0))
        holder.listen(8)
        ctx.defer(holder.close)
        self.busy_port = holder.getsockname()[1]

        self.proxy = p = ctx.proxy(self.conf_a)
        self.log = LogWatch(p.errfile)
        ctx.defer(self.log.close)
        self.access = AccessLogs(alog)
        ctx.defer(self.access.close)
        p.wait_shards(a.workers)
        time.sleep(0.5)
        self.base_sup = fd_kinds(p.pid, ctx.tmpdir)
        self.base_sup_sockets = describe_sockets(p.pid)
        self.base_shards = sorted((fd_kinds(x, ctx.tmpdir) for x in p.shards()), key=lambda c: sorted(c.items()))
        self.base_nshards = len(p.shards())
        gen0 = lib.stats(self.aport, timeout_s=3)["generation"]

        stop = threading.Event()
        res = self.results = Results()
        self.monitor = Monitor(p, stop)
        t_start = time.monotonic()
        t_end = t_start + a.seconds
        t_first = min(60.0, 0.4 * a.seconds)
        self.windows = [(t_start + t_first - MEM_WINDOW, t_start + t_first), (t_end - MEM_WINDOW, t_end)]
        self.chaos = chaos = Chaos(self, self.windows)
        self.wrk_ka, self.wrk_cpr = [], []
        rng = random.Random(a.seed)
        threads = [
            threading.Thread(target=wrk_loop, args=(ctx, self.ports["ka"], 32, (), t_end, self.wrk_ka, stop)),
            threading.Thread(target=wrk_loop, args=(ctx, self.ports["cpr"], 16, ("Connection: close",), t_end,
                                                    self.wrk_cpr, stop)),
            threading.Thread(target=SlowReaders(self.ports["bulk"], res, stop, SLOW_READERS,
                                                random.Random(rng.random())).run),
            threading.Thread(target=Slowloris(self.ports["slow"], res, stop, SLOWLORIS).run),
        ] + [threading.Thread(target=bulk_client, args=(self.ports["bulk"], res, stop, random.Random(rng.random())))
             for _ in range(BULK_CLIENTS)]
        chaos_threads = [threading.Thread(target=chaos.reloads, args=(stop, t_end)),
                         threading.Thread(target=chaos.kills_loop, args=(stop, t_end))]
        for t in threads + chaos_threads:
            t.daemon = True
            t.start()
        print("soak: %d s, %d shards, proxy pid %d, logs in %s" % (a.seconds, a.workers, p.pid, ctx.tmpdir),
              flush=True)
        last_print = 0
        while time.monotonic() < t_end:
            time.sleep(1)
            el = time.monotonic() - t_start
            if el - last_print >= 60:
                last_print = el
                with res.lock:
                    print("soak: %3.0f s: bulk %s, %d reload signals, %d kills, %d failed reloads tried"
                          % (el, dict(res.bulk), chaos.reload_signals, len(chaos.kills), len(chaos.failed_attempts)),
                          flush=True)
        self.load_seconds = time.monotonic() - t_start
        self.t_start = t_start
        stop.set()
        for t in chaos_threads:
            t.join(45)
        for t in threads:
            t.join(60)
        alive = [t for t in threads + chaos_threads if t.is_alive()]
        if alive:
            self.failures.append("%d load/fault threads did not stop within their bound" % len(alive))
        self.settle()
        self.stop_proxy()
        self.access.close()
        self.gen0 = gen0

    def settle(self):
        """Once the load has stopped: the final reload (back to config A)
        applied, one generation, descriptors as at the start."""
        p, ctx = self.proxy, self.ctx
        if self.final_reload_mark is not None:
            hit = self.log.wait(r"reload: generation \d+ ready|reload failed", self.final_reload_mark, 20)
            if not hit or "failed" in hit[1]:
                self.failures.append("the final reload (back to config A) did not apply: %s"
                                     % (hit[1] if hit else "no result in 20 s"))
        deadline = time.monotonic() + 30
        while True:
            # Descriptors first: the /stats request's own connection must
            # not be counted (the supervisor closes it after answering).
            kids = p.shards()
            sup = fd_kinds(p.pid, ctx.tmpdir)
            shards = sorted((fd_kinds(x, ctx.tmpdir) or collections.Counter() for x in kids),
                            key=lambda c: sorted(c.items()))
            try:
                st = lib.stats(self.aport, timeout_s=3)
            except (OSError, lib.TestFailure):
                st = None
            one_gen = st is not None and all(x["generation"] == st["generation"] and x["state"] == "ready"
                                             for x in st["shards"]) and len(st["shards"]) == self.base_nshards
            nopipe = [collections.Counter({k: v for k, v in c.items() if k != "pipe"}) for c in shards]
            base_nopipe = [collections.Counter({k: v for k, v in c.items() if k != "pipe"})
                           for c in self.base_shards]
            same = (len(kids) == self.base_nshards and one_gen and sup == self.base_sup and nopipe == base_nopipe)
            if same or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.end_sup, self.end_shards, self.end_nshards = sup, shards, len(kids)
        self.settle_stats = st
        if len(kids) != self.base_nshards or not one_gen:
            self.failures.append("shards after the load: %d processes (%s), baseline %d"
                                 % (len(kids), st and [(x["slot"], x["generation"], x["state"]) for x in st["shards"]],
                                    self.base_nshards))
        if sup != self.base_sup:
            self.failures.append("supervisor descriptors after the load differ from the start: %s"
                                 % fd_diff(self.base_sup, sup or collections.Counter()))
            now = describe_sockets(p.pid)
            self.notes.append("supervisor sockets not there at the start: %s"
                              % ("; ".join((collections.Counter(now) - collections.Counter(self.base_sup_sockets))
                                           .elements()) or "none"))
        if nopipe != base_nopipe:
            for x in kids[:1]:
                files = []
                for n in os.listdir("/proc/%d/fd" % x):
                    try:
                        t = os.readlink("/proc/%d/fd/%s" % (x, n))
                    except OSError:
                        continue
                    if t.startswith("/"):
                        files.append("%s=%s" % (n, os.path.basename(t)))
                self.notes.append("files open in shard pid %d after the load: %s" % (x, ", ".join(sorted(files))))
            self.failures.append("shard descriptors (pipes aside) after the load differ from the start: %s" % "; ".join(
                "shard %d: %s" % (i, fd_diff(b, e)) for i, (b, e) in enumerate(zip(base_nopipe, nopipe))))

    def stop_proxy(self):
        p = self.proxy
        kids = p.shards()
        t0 = time.monotonic()
        p.signal(signal.SIGTERM)
        rc = p.wait_exit(15)
        self.stop_seconds = time.monotonic() - t0
        self.stop_rc = rc
        if rc != 0:
            self.failures.append("SIGTERM after the soak: exit %s after %.1f s" % (rc, self.stop_seconds))
        left = [k for k in kids if lib._starttime(k) is not None]
        if left:
            time.sleep(1)
            left = [k for k in kids if lib._starttime(k) is not None]
            if left:
                self.failures.append("shards %s still alive 1 s after the supervisor exited" % left)
        self.log.close()

    # ---- verdict
    def report(self):
        a, res, ch, acc = self.a, self.results, self.chaos, self.access
        out = []
        crit = []

        def criterion(ok, text):
            crit.append(("PASS" if ok else "FAIL") + " " + text)
            if not ok:
                self.failures.append(text)

        out.append("soak: %.0f s of load, %d shards, %s, started %s"
                   % (self.load_seconds, a.workers, os.path.relpath(self.ctx.binary, REPO), self.started))

        # wrk
        def wrk_sum(lst):
            tot = collections.Counter()
            bad = 0
            for _t0, _t1, r, rc in lst:
                if r.requests is None or rc != 0:
                    bad += 1
                    continue
                tot["requests"] += r.requests
                for k in ("connect", "read", "write", "timeout", "non2xx"):
                    tot[k] += getattr(r, k)
            return tot, bad

        ka, ka_bad = wrk_sum(self.wrk_ka)
        cpr, cpr_bad = wrk_sum(self.wrk_cpr)
        for name, tot, n, lst in (("keep-alive      c32", ka, ka_bad, self.wrk_ka),
                                  ("conn-per-request c16", cpr, cpr_bad, self.wrk_cpr)):
            out.append("wrk %s: %d requests (%.0f/s) in %d runs; socket errors connect %d, read %d, write %d, "
                       "timeout %d; non-2xx %d%s"
                       % (name, tot["requests"], tot["requests"] / max(1, self.load_seconds), len(lst),
                          tot["connect"], tot["read"], tot["write"], tot["timeout"], tot["non2xx"],
                          "; %d runs unparsable/failed" % n if n else ""))
        criterion(ka_bad + cpr_bad == 0 and self.wrk_ka and self.wrk_cpr, "every wrk run reported")
        criterion(ka["connect"] + cpr["connect"] == 0, "wrk connect errors: %d" % (ka["connect"] + cpr["connect"]))
        criterion(ka["non2xx"] + cpr["non2xx"] == 0, "wrk non-2xx responses: %d" % (ka["non2xx"] + cpr["non2xx"]))
        # keep-alive connections outlive every generation: each drain timeout
        # cuts them, which wrk counts as read errors. Per request they are not.
        ka_cut = sum(v for (l, e), v in acc.counts.items() if l == "ka" and e != "done")
        cpr_cut = sum(v for (l, e), v in acc.counts.items() if l == "cpr" and e != "done")
        # A read or write error is a connection cut under wrk: explained when
        # the proxy ended that many sessions of the listener itself (access
        # log: drain_timeout, or a reset it passed on) or killed shards could
        # have held them (each kill cuts at most every connection of the run).
        kills = len(self.chaos.kill_times) + len(self.drain_kills())
        ka_budget = ka_cut + kills * 32
        cpr_budget = cpr_cut + kills * 16
        out.append("    wrk read+write errors vs what faults explain (sessions the proxy ended other than 'done' "
                   "+ %d killed shards x connections): keep-alive %d <= %d, per-request %d <= %d"
                   % (kills, ka["read"] + ka["write"], ka_budget, cpr["read"] + cpr["write"], cpr_budget))
        # Per request, a run with errors must have had a kill in it.
        kill_t = self.chaos.kill_times + self.drain_kills()
        lone = [(t0, r.read + r.write) for t0, t1, r, _rc in self.wrk_cpr
                if r.read + r.write > cpr_cut + 16 * sum(1 for k in kill_t if t0 <= k <= t1)]
        criterion(ka["read"] + ka["write"] <= ka_budget and cpr["read"] + cpr["write"] <= cpr_budget and not lone,
                  "wrk read/write errors all explained by faults%s" % (
                      "" if not lone else " (per-request run at %s: %d errors, no kill to explain them)"
                      % (time.strftime("%H:%M:%S", time.gmtime(lone[0][0])), lone[0][1])))
        criterion(ka["timeout"] + cpr["timeout"] == 0,
                  "wrk timeouts (no answer within 5 s): %d" % (ka["timeout"] + cpr["timeout"]))
        # Bulk
        b = res.bulk
        nb = sum(b.values())
        explained = collections.Counter()
        unexplained = []
        for c in res.cuts:
            why = acc.explain(c["port"], c["t0"], c["t1"])
            if why is None and any(c["t0"] - 1 <= k <= c["t1"] + 1 for k in ch.kill_times + self.drain_kills()):
                why = "shard killed"
            if why in ("drain_timeout", "shard killed"):
                explained[why] += 1
            else:
                unexplained.append((c, why))
        out.append("bulk: %d transfers (up %d, down %d), %s; %d complete with matching sha256, %d cut by faults "
                   "(%s), %d cut unexplained, %d with wrong bytes"
                   % (nb, b[("U", "ok")] + b[("U", "cut")] + b[("U", "corrupt")],
                      b[("D", "ok")] + b[("D", "cut")] + b[("D", "corrupt")], human_bytes(res.bulk_bytes),
                      b[("U", "ok")] + b[("D", "ok")], sum(explained.values()),
                      ", ".join("%s %d" % kv for kv in sorted(explained.items())) or "none", len(unexplained),
                      b[("U", "corrupt")] + b[("D", "corrupt")]))
        bs = self.bulk
        out.append("    upstream side: uploads complete %d, reset %d, FIN before the end %d, wrong bytes %d"
                   % (bs.up_ok, bs.up_reset, bs.up_short_fin, len(bs.up_corrupt)))
        out.append("slow readers: %d held, %d sessions ended (%s), %s read, every byte checked; slowloris: %d held, "
                   "%d opened (%s)" % (SLOW_READERS, sum(res.slow.values()), dict(res.slow),
                                      human_bytes(res.slow_bytes), SLOWLORIS, res.loris["opened"],
                                      ", ".join("%s %d" % (k, v) for k, v in sorted(res.loris.items())
                                                if k != "opened")))
        corrupt = res.corrupt + bs.up_corrupt
        criterion(not corrupt, "bytes checked by sha256 or prefix: %d wrong%s"
                  % (len(corrupt), (" (" + "; ".join(corrupt[:3]) + ")") if corrupt else ""))
        criterion(nb > 0 and b[("U", "ok")] > 0 and b[("D", "ok")] > 0, "bulk transfers completed both ways")
        criterion(not unexplained, "bulk transfers cut without a fault to explain it: %d%s" % (
            len(unexplained), (" (" + "; ".join("%s port %d %d/%d bytes %s, access log: %s"
                                                 % (c["kind"], c["port"], c["got"], c["n"], c["how"], w)
                                                 for c, w in unexplained[:3]) + ")") if unexplained else ""))
        criterion(not res.connect_errors, "client connects refused or timed out: %d%s" % (
            len(res.connect_errors), (" (" + "; ".join(res.connect_errors[:3]) + ")") if res.connect_errors else ""))

        # Faults
        applied = self.log.grep(r"reload: generation \d+ ready")
        queued = self.log.grep(r"reload queued")
        failed_lines = self.log.grep(r"reload failed")
        gens = [int(re.search(r"generation (\d+) ready", l).group(1)) for _t, l in applied]
        out.append("reloads: %d SIGHUP with a valid file, %d applied (generation %d -> %d), %d queued behind a drain"
                   % (ch.reload_signals, len(applied), self.gen0, max(gens) if gens else self.gen0, len(queued)))
        fa = ch.failed_attempts
        out.append("failed reloads: %d tried (%d invalid file, %d listener port in use), %d rejected cleanly"
                   % (len(fa), sum(1 for k, _, _ in fa if k == "invalid"), sum(1 for k, _, _ in fa if k != "invalid"),
                      sum(1 for _, ok, _ in fa if ok)))
        bad = [(k, d) for k, ok, d in fa if not ok]
        criterion(fa and not bad, "every bad reload failed and released what it bound%s" % "".join(
            "; %d of %d %s: %s" % (sum(1 for k2, _ in bad if k2 == k), sum(1 for k2, _, _ in fa if k2 == k), k,
                                   next(d for k2, d in bad if k2 == k))
            for k in sorted(set(k for k, _ in bad))))
        criterion(len(failed_lines) == len(fa), "reloads failing unexpectedly: %d%s" % (
            len(failed_lines) - len(fa), (" (" + failed_lines[0][1] + ")") if len(failed_lines) > len(fa) else ""))
        # Every SIGHUP applies or is coalesced into a queued one; at least one in
        # three reaching a new generation is what a 2 s cadence with a 1.5-2.5 s
        # drain allows.
        criterion(len(applied) >= max(1, ch.reload_signals // 3),
                  "valid reloads applied: %d of %d signals" % (len(applied), ch.reload_signals))
        restarted = [k for k in ch.kills if k[3] == "restarted"]
        lat = sorted(k[4] for k in restarted)
        out.append("shard kills: %d SIGKILL, %d restarted (median %.2f s, max %.2f s), %d superseded by a reload"
                   % (len(ch.kill_times), len(restarted), statistics.median(lat) if lat else 0,
                      lat[-1] if lat else 0, sum(1 for k in ch.kills if k[3].startswith("superseded"))))
        bad_kills = [k for k in ch.kills if k[3] not in ("restarted", "superseded by a reload")]
        criterion(ch.kill_times and not bad_kills and (not lat or lat[-1] <= 2.0),
                  "killed shards restarted within 2 s%s" % (": " + "; ".join(
                      "slot %s pid %s: %s" % (k[1], k[2], k[3]) for k in bad_kills[:3]) if bad_kills else ""))

        # Access log
        per = collections.defaultdict(list)
        for (l, e), v in sorted(acc.counts.items()):
            per[l].append("%s %d" % (e, v))
        out.append("access log (%d lines, %d files): %s" % (acc.lines, acc.seq + 1, "; ".join(
            "%s: %s" % (l, ", ".join(v)) for l, v in sorted(per.items()))))
        if acc.unparsed:
            out.append("    %d access-log lines unparsable" % acc.unparsed)
        errs = [k for k in acc.counts if k[1] == "error"]
        if errs:
            self.notes.append("sessions that ended with 'error': %s" % {k: acc.counts[k] for k in errs})

        # Memory
        s = [x for x in self.monitor.samples if x[1] == self.base_nshards]
        win = [(b - MEM_SAMPLE - self.monitor.t0, b - self.monitor.t0) for _a, b in self.windows]
        first = [x for x in s if win[0][0] <= x[0] <= win[0][1]]
        last = [x for x in s if win[1][0] <= x[0] <= win[1][1]]
        t_first = win[0][1] - (self.t_start - self.monitor.t0)
        if first and last:
            pf, pl = statistics.median(x[3] for x in first), statistics.median(x[3] for x in last)
            rf, rl = statistics.median(x[2] for x in first), statistics.median(x[2] for x in last)
            sf, sl = statistics.median(x[4] for x in first), statistics.median(x[4] for x in last)
            out.append("memory (one generation, median): PSS %.1f MiB at %.0f s, %.1f MiB at the end (%+.1f%%); "
                       "RSS %.1f -> %.1f MiB (%+.1f%%); supervisor RSS %.1f -> %.1f MiB"
                       % (pf / 1024, t_first, pl / 1024, 100 * (pl - pf) / pf, rf / 1024, rl / 1024,
                          100 * (rl - rf) / rf, sf / 1024, sl / 1024))
            criterion(abs(pl - pf) <= MEM_TOLERANCE * pf and abs(rl - rf) <= MEM_TOLERANCE * rf,
                      "memory at the end within 10%% of the first minute's (PSS %+.1f%%, RSS %+.1f%%)"
                      % (100 * (pl - pf) / pf, 100 * (rl - rf) / rf))
        else:
            criterion(False, "memory: too few samples with one generation (%d, %d)" % (len(first), len(last)))
        fds = [x[5] for x in self.monitor.samples if x[5] is not None]
        out.append("descriptors: supervisor %d at the start, %d-%d during the load, %d at the end; shards %s -> %s"
                   % (sum(self.base_sup.values()), min(fds or [0]), max(fds or [0]),
                      sum((self.end_sup or {}).values()), [sum(c.values()) for c in self.base_shards],
                      ["%d (%d pipes)" % (sum(c.values()), c["pipe"]) for c in self.end_shards]))
        criterion(self.end_nshards == self.base_nshards and self.end_sup == self.base_sup,
                  "shards (%d) and supervisor descriptors back to baseline" % self.end_nshards)
        out.append("stop: SIGTERM -> exit %s in %.2f s" % (self.stop_rc, self.stop_seconds))

        # The supervisor's own log
        expected = re.compile(r"killed by signal 9|reload failed|error: .*(no-such-upstream|Address already in use)"
                              r"|still has shards after drain_timeout_ms")
        unexpected = collections.Counter()
        for _t, l in self.log.lines:
            if re.search(r": (error|warning): ", l) and not expected.search(l):
                unexpected[re.sub(r"\d+", "N", l.split(": ", 1)[-1])[:150]] += 1
        out.append("proxy log: %d lines, %d unexpected warnings/errors%s"
                   % (len(self.log.lines), sum(unexpected.values()),
                      "".join("\n    %dx %s" % (v, k) for k, v in unexpected.most_common(4))))
        errs = sum(v for k, v in unexpected.items() if k.startswith("error:"))
        criterion(errs == 0, "unexpected error lines in the proxy's log: %d" % errs)
        san = lib.sanitizer_reports(self.ctx.tmpdir)
        criterion(not san, "sanitizer reports: %d%s" % (len(san), (" (" + san[0] + ")") if san else ""))
        for f in self.failures:
            if not any(f in c for c in crit):
                crit.append("FAIL " + f)
        for n in self.notes:
            out.append("note: " + n)
        out.append("criteria:")
        out += ["  " + c for c in crit]
        ok = not any(c.startswith("FAIL") for c in crit)
        out.append("SOAK %s" % ("PASSED" if ok else "FAILED"))
        return ok, out

    def drain_kills(self):
        """Times the supervisor SIGKILLed a generation that outlived its drain."""
        return [t for t, _l in self.log.grep(r"still has shards after drain_timeout_ms")]


def main():
    ap = argparse.ArgumentParser(description="shardproxy soak and fault suite")
    ap.add_argument("--build", default="build")
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("SOAK_SECONDS", "600")))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--out", default=None, help="where to keep the summary and logs (default BUILD/soak)")
    a = ap.parse_args()
    if a.seconds < 60:
        # two 15 s quiet windows for the memory figures, kills and reloads between them
        ap.error("--seconds: at least 60")
    binary = os.path.join(a.build, "shardproxy")
    if not os.access(binary, os.X_OK):
        print("soak: %s not found (make all)" % binary)
        return 2
    out_dir = a.out or os.path.join(a.build, "soak")
    soak = Soak(a)

    # Everything is bounded: past this the run is abandoned, its processes killed.
    def watchdog():
        print("soak: FAILED: still running %d s after the load should have ended; killing it" % 240, flush=True)
        try:
            soak.ctx.cleanup(keep_tmp=True)
        finally:
            os._exit(1)

    wd = threading.Timer(a.seconds + 240, watchdog)
    wd.daemon = True
    wd.start()
    def on_term(signum, frame):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, on_term)
    ok = False
    try:
        soak.run()
        ok, lines = soak.report()
    except KeyboardInterrupt:
        print("soak: interrupted")
        soak.ctx.cleanup()
        return 2
    except (lib.TestFailure, SystemExit, OSError) as e:
        print("soak: could not run: %s" % e)
        soak.ctx.cleanup(keep_tmp=True)
        print("soak: logs kept in %s" % soak.ctx.tmpdir)
        return 2
    wd.cancel()
    text = "\n".join(lines)
    print(text)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "summary.txt"), "w") as f:
        f.write(text + "\n")
    shutil.copy(soak.proxy.errfile, os.path.join(out_dir, "proxy.stderr"))
    with open(os.path.join(out_dir, "wrk.txt"), "w") as f:
        for name, lst in (("keep-alive", soak.wrk_ka), ("conn-per-request", soak.wrk_cpr)):
            for t0, t1, r, rc in lst:
                f.write("== %s %s..%s exit %s\n%s\n" % (name, time.strftime("%H:%M:%S", time.gmtime(t0)),
                                                         time.strftime("%H:%M:%S", time.gmtime(t1)), rc, r.raw))
    with open(os.path.join(out_dir, "memory.txt"), "w") as f:
        f.write("# seconds shards rss_kB pss_kB supervisor_rss_kB supervisor_fds [pid rss pss]...\n")
        for x in soak.monitor.samples:
            f.write("%.1f %d %d %d %d %s %s\n" % (x[0], x[1], x[2], x[3], x[4], x[5],
                                                  " ".join("%d:%d:%d" % d for d in x[6])))
    soak.ctx.cleanup()
    print("soak: summary and logs in %s" % out_dir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
