#!/usr/bin/env python3
"""make bench: shardproxy against HAProxy `mode tcp`, nginx `stream` and a
direct connection, on loopback, side by side, written to docs/BENCHMARKS.md.

Python 3 standard library only. Usage:

    python3 tests/bench/bench.py --build build --out docs/BENCHMARKS.md
    BENCH_QUICK=1 python3 tests/bench/bench.py ...     # or --quick: < 2 min
    ... --only shardproxy-copy,haproxy --repeats 5 --duration 10
    python3 tests/bench/bench.py --scaling            # only the scaling section

What runs (see METHOD below, which is also written into the report):
  - one HTTP backend shared by every variant: build/demo-upstream
    (-w = workers), or nginx `http` when demo-upstream is absent;
  - variants: direct (wrk straight to the backend), haproxy (mode tcp,
    nbthread = workers), nginx (stream, worker_processes = workers,
    reuseport), shardproxy-auto (the default relay) / shardproxy-copy /
    shardproxy-splice (steering hash), shardproxy-epoll (auto relay on the
    epoll event loop, "io": "epoll"); shardproxy-copy-none (steering
    none), shardproxy-copy-cpu, shardproxy-copy-lc and the placement A/B
    variants (shardproxy-auto-pin / -none / -cpu-pin / -cpu-none: relay
    auto, steering hash or cpu, cpu_affinity pin or none) on request
    (--only);
  - per repeat, for each variant in turn (A B C A B C ...), a fresh proxy
    runs: keep-alive (wrk -t2 -c50 --latency), new connection per request
    (wrk -t2 -c50 -H 'Connection: close'), bulk (wrk -t1 -c4 on
    /bytes/10000000), redis-benchmark -t set,get -c 50 -d 64 (plain and
    -P 16) against a redis-server the bench starts, pgbench -S -c 16 -j 2
    against a PostgreSQL 15 it initialises in a temp dir (as postgres, fsync
    off), then idle connections held open by client processes (--workloads
    picks a subset; --hog CPU adds a busy loop pinned to CPU);
  - from /proc: CPU (utime+stime) of every proxy process over each wrk run,
    PSS (smaps_rollup) before and with the idle connections, io-wq worker
    threads (iou-wrk-*) sampled during the runs; from shardproxy's admin
    /stats: per-shard accepted/active counts;
  - at the end of a full run (not --quick, --only or --no-scaling; ~1.5 min),
    or alone with --scaling: shardproxy-auto with 1 and 2 shards, wrk and the
    backend pinned with taskset (keep-alive and new-connection req/s, CPU per
    100k requests), and PSS of shardproxy-auto and HAProxy at 1,000 / 5,000 /
    10,000 idle connections; written as "## Scaling and memory curve", just
    before "## Findings" (kept as it is by runs that do not measure it).

Everything started runs in its own process group and is killed at exit
(try/finally, atexit, SIGINT/SIGTERM handlers). Ports are chosen at runtime.
"""

import argparse
import atexit
import datetime
import json
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BULK_BYTES = 10_000_000

ALL_VARIANTS = [
    "direct",
    "haproxy",
    "nginx",
    "shardproxy-auto",
    "shardproxy-copy",
    "shardproxy-splice",
    "shardproxy-epoll",
    "shardproxy-copy-none",
    "shardproxy-copy-cpu",
    "shardproxy-copy-lc",
    "shardproxy-auto-pin",
    "shardproxy-auto-cpu-pin",
    "shardproxy-auto-cpu-none",
    "shardproxy-auto-none",
]
DEFAULT_VARIANTS = ALL_VARIANTS[:7]
SHARDPROXY_VARIANTS = {
    # name: (relay, steering)
    "shardproxy-copy": ("copy", "hash"),
    "shardproxy-splice": ("splice", "hash"),
    "shardproxy-copy-none": ("copy", "none"),
    "shardproxy-auto": ("auto", "hash"),
    "shardproxy-copy-cpu": ("copy", "cpu"),
    "shardproxy-copy-lc": ("copy", "least_conn"),
    # (relay, steering, cpu_affinity): the default variants leave cpu_affinity at
    # its default; these two set it, for the A/B behind that default.
    "shardproxy-auto-pin": ("auto", "hash", "pin"),
    "shardproxy-auto-none": ("auto", "hash", "none"),
    "shardproxy-auto-cpu-pin": ("auto", "cpu", "pin"),
    "shardproxy-auto-cpu-none": ("auto", "cpu", "none"),
    "shardproxy-epoll": ("auto", "hash"),
}
# The event loop of variants not on the default (io_uring where it runs).
SHARDPROXY_IO = {"shardproxy-epoll": "epoll"}
ALL_WORKLOADS = ["keepalive", "close", "bulk", "redis", "redis_p16", "pg", "idle"]


def say(msg):
    sys.stderr.write("bench: %s\n" % msg)
    sys.stderr.flush()


# ---- process bookkeeping ------------------------------------------------------

_children = []  # Popen objects, each the leader of its own process group
_tmpdirs = []


def spawn(argv, stdout=None, stderr=None, stdin=subprocess.DEVNULL, env=None, cwd=None):
    """Start argv in a new session (so its group can be killed as a whole)."""
    p = subprocess.Popen(argv, stdout=stdout, stderr=stderr, stdin=stdin, env=env, cwd=cwd,
                         start_new_session=True)
    _children.append(p)
    return p


def kill_group(p, grace=3.0):
    """SIGTERM the group, wait up to grace seconds, then SIGKILL it. Returns the
    leader's exit status (None if it had to be killed)."""
    if p is None:
        return None
    rc = p.poll()
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    if rc is None:
        try:
            rc = p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            rc = None
    # Whatever is left of the group (children of a leader that exited) goes too.
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass
    if p in _children:
        _children.remove(p)
    return rc


def cleanup():
    for p in list(_children):
        kill_group(p, grace=1.0)
    for d in _tmpdirs:
        shutil.rmtree(d, ignore_errors=True)
    _tmpdirs.clear()


def _on_signal(signo, _frame):
    raise SystemExit(128 + signo)


def free_port():
    """A port free now on 127.0.0.1 (bound and released; the kernel does not hand
    it out again soon). Tried for a listen right after, with retries by callers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def http_get(port, path="/", timeout=2.0):
    """One GET over a fresh connection: (status, body) or (None, error text)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(("GET %s HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n" % path).encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        m = re.match(rb"HTTP/1\.[01] (\d+)", head)
        return (int(m.group(1)) if m else None), body
    except OSError as e:
        return None, str(e).encode()


def wait_http(port, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st, _ = http_get(port)
        if st == 200:
            return True
        time.sleep(0.1)
    return False


# ---- /proc --------------------------------------------------------------------


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def proc_stat(pid):
    """(ppid, pgrp, cpu_ticks) of pid, or None."""
    s = read("/proc/%d/stat" % pid)
    if not s:
        return None
    rest = s[s.rindex(")") + 2:].split()
    return int(rest[1]), int(rest[2]), int(rest[11]) + int(rest[12])


def group_pids(root):
    """Every live process in root's process group or descending from root."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st:
                stats[int(name)] = st
    pids = {p for p, (_pp, pg, _c) in stats.items() if pg == root}
    if root in stats:
        pids.add(root)
    grew = True
    while grew:
        grew = False
        for p, (pp, _pg, _c) in stats.items():
            if pp in pids and p not in pids:
                pids.add(p)
                grew = True
    return sorted(pids)


def cpu_ticks(pids):
    out = {}
    for p in pids:
        st = proc_stat(p)
        if st:
            out[p] = st[2]
    return out


def cpu_delta_s(before, after):
    return sum(after[p] - before.get(p, 0) for p in after) / CLK_TCK


def pss_kib(pids):
    total = 0
    for p in pids:
        s = read("/proc/%d/smaps_rollup" % p)
        if s:
            m = re.search(r"^Pss:\s+(\d+) kB", s, re.M)
            if m:
                total += int(m.group(1))
    return total


def iowq_threads(pids):
    n = 0
    for p in pids:
        try:
            tids = os.listdir("/proc/%d/task" % p)
        except OSError:
            continue
        for t in tids:
            comm = read("/proc/%d/task/%s/comm" % (p, t))
            if comm and comm.startswith("iou-wrk"):
                n += 1
    return n


class Sampler(threading.Thread):
    """Counts io-wq worker threads of a process group every `every` seconds."""

    def __init__(self, root, every=0.25):
        super().__init__(daemon=True)
        self.root, self.every = root, every
        self.stop_ev = threading.Event()
        self.max_iowq = 0
        self.samples = 0

    def run(self):
        while not self.stop_ev.is_set():
            pids = group_pids(self.root)
            self.max_iowq = max(self.max_iowq, iowq_threads(pids))
            self.samples += 1
            self.stop_ev.wait(self.every)

    def stop(self):
        self.stop_ev.set()
        self.join(timeout=5)


# ---- wrk ----------------------------------------------------------------------

UNITS = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}
TIME_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def parse_wrk(text):
    """What matters of wrk's output: req/s, bytes/s, requests, latency
    percentiles (µs), socket errors, non-2xx responses."""
    r = {"rps": None, "bps": None, "requests": None, "lat": {}, "errors": 0,
         "socket_errors": {}, "non2xx": 0}
    m = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"^Transfer/sec:\s+([\d.]+)\s*([KMGT]?B)", text, re.M)
    if m:
        r["bps"] = float(m.group(1)) * UNITS[m.group(2)]
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text, re.M)
    if m:
        r["requests"] = int(m.group(1))
    for m in re.finditer(r"^\s+(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M):
        r["lat"][int(m.group(1))] = float(m.group(2)) * TIME_UNITS[m.group(3)]
    m = re.search(r"Socket errors:\s*connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        r["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"),
                                      (int(x) for x in m.groups())))
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    if m:
        r["non2xx"] = int(m.group(1))
    r["errors"] = sum(r["socket_errors"].values()) + r["non2xx"]
    return r


def taskset(cpus):
    """argv prefix pinning a command (and what it forks) to `cpus` ("0", "0,1"), or []."""
    return ["taskset", "-c", cpus] if cpus else []


def run_wrk(args, url, duration, extra=(), threads=2, conns=50, pin=None):
    argv = taskset(pin) + ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration, "--latency",
            *extra, url]
    p = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = p.communicate(timeout=duration + 20)
    except subprocess.TimeoutExpired:
        kill_group(p)
        return {"rps": None, "bps": None, "requests": None, "lat": {}, "errors": 1,
                "socket_errors": {}, "non2xx": 0, "raw": "wrk timed out"}
    kill_group(p, grace=0.1)
    text = out.decode(errors="replace")
    r = parse_wrk(text)
    r["raw"] = text
    if p.returncode != 0 or r["rps"] is None:
        say("wrk %s failed (rc %s):\n%s" % (url, p.returncode, text))
    return r


# ---- real clients: redis-benchmark and pgbench ---------------------------------

REDIS_WORKLOADS = {
    # name: (label, redis-benchmark pipeline depth)
    "redis": ("redis-benchmark -t set,get -c 50 -d 64", 1),
    "redis_p16": ("redis-benchmark -t set,get -c 50 -d 64 -P 16", 16),
}
PG_CLIENTS, PG_THREADS, PG_SCALE = 16, 2, 2


def _failed(why):
    return {"rps": None, "bps": None, "requests": None, "lat": {}, "errors": 1,
            "socket_errors": {}, "non2xx": 0, "raw": why}


def run_client(argv, timeout_s, env=None):
    """Run a benchmark client to its end: (exit status, output text), or
    (None, why) when it outran timeout_s and was killed."""
    p = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        out, _ = p.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(p)
        return None, "%s timed out after %.0f s" % (argv[0], timeout_s)
    kill_group(p, grace=0.1)
    return p.returncode, out.decode(errors="replace")


def run_redis_benchmark(port, n, pipeline, timeout_s):
    """redis-benchmark -t set,get -c 50 -d 64 [-P pipeline] -n n: req/s over both
    tests (total requests / total time), p50 latency of the two (µs, mean of the
    two tests' p50)."""
    argv = ["redis-benchmark", "-h", HOST, "-p", str(port), "-t", "set,get", "-c", "50", "-d",
            "64", "-n", str(n), "--csv"] + (["-P", str(pipeline)] if pipeline > 1 else [])
    rc, text = run_client(argv, timeout_s)
    if rc is None:
        return _failed(text)
    rates, p50 = {}, []
    for m in re.finditer(r'^"(SET|GET)","([\d.]+)","[\d.]+","[\d.]+","([\d.]+)"', text, re.M):
        rates[m.group(1)] = float(m.group(2))
        p50.append(float(m.group(3)) * 1000)
    if rc != 0 or len(rates) != 2 or min(rates.values()) <= 0:
        say("redis-benchmark on port %d failed (rc %s):\n%s" % (port, rc, text[-500:]))
        return _failed(text[-300:])
    secs = sum(n / x for x in rates.values())
    return {"rps": 2 * n / secs, "bps": None, "requests": 2 * n, "lat": {50: sum(p50) / 2},
            "errors": 0, "socket_errors": {}, "non2xx": 0, "raw": text, "secs": secs}


def run_pgbench(port, duration, timeout_s):
    """pgbench -S -c 16 -j 2 -T duration: tps (without the initial connection time)."""
    argv = ["pgbench", "-h", HOST, "-p", str(port), "-U", "postgres", "-n", "-S",
            "-c", str(PG_CLIENTS), "-j", str(PG_THREADS), "-T", str(duration), "postgres"]
    rc, text = run_client(argv, timeout_s, env=dict(os.environ, PGCONNECT_TIMEOUT="10"))
    if rc is None:
        return _failed(text)
    tps = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", text, re.M)
    n = re.search(r"^number of transactions actually processed: (\d+)", text, re.M)
    bad = re.search(r"^number of failed transactions: (\d+)", text, re.M)
    lat = re.search(r"^latency average = ([\d.]+) ms", text, re.M)
    if rc != 0 or not tps or not n:
        say("pgbench on port %d failed (rc %s):\n%s" % (port, rc, text[-500:]))
        return _failed(text[-300:])
    errs = int(bad.group(1)) if bad else 0
    return {"rps": float(tps.group(1)), "bps": None, "requests": int(n.group(1)),
            "lat": {"avg": float(lat.group(1)) * 1000} if lat else {}, "errors": errs,
            "socket_errors": {"failed transactions": errs} if errs else {}, "non2xx": 0,
            "raw": text}


def redis_run(ctx, variant, wname, port, depth):
    """One redis-benchmark run sized to last about --rc-duration seconds: the
    request count comes from this variant's last rate for this workload, else
    from the slowest rate any variant had so far, else from 0.4 × the
    calibration against redis-server directly (a proxy in between is slower),
    so that a first run is shorter rather than longer than planned."""
    a = ctx.args
    seen = [r for (v, w), r in ctx.redis_rate.items() if w == wname and v is not None]
    rate = ctx.redis_rate.get((variant, wname)) or (min(seen) if seen else None) \
        or 0.4 * ctx.redis_rate.get((None, wname), 20000.0 * depth)
    n = int(min(max(rate * a.rc_duration / 2, 2000), 5_000_000))
    r = run_redis_benchmark(port, n, depth, a.rc_duration * 6 + 30)
    if r["rps"]:
        ctx.redis_rate[(variant, wname)] = r["rps"]
    return r


def start_redis():
    """redis-server on a free loopback port, temp dir, no persistence."""
    for _attempt in range(5):
        port = free_port()
        d = mktmp("redis")
        logp = os.path.join(d, "redis.log")
        lf = open(logp, "w")
        p = spawn(["redis-server", "--port", str(port), "--bind", HOST, "--save", "",
                   "--appendonly", "no", "--dir", d, "--protected-mode", "no", "--daemonize",
                   "no", "--maxclients", "10000"], stdout=lf, stderr=lf)
        lf.close()
        if wait_port(port, 10):
            return Server("redis-server", port, p, logp)
        kill_group(p)
    say("redis-server did not start:\n%s" % (read(logp) or ""))
    return None


def pg_bindir():
    for d in ("/usr/lib/postgresql/15/bin",) + tuple(
            sorted((os.path.join("/usr/lib/postgresql", v, "bin")
                    for v in (os.listdir("/usr/lib/postgresql")
                              if os.path.isdir("/usr/lib/postgresql") else [])), reverse=True)):
        if os.access(os.path.join(d, "initdb"), os.X_OK):
            return d
    return None


def start_postgres():
    """PostgreSQL initialised in a temp dir and run as the `postgres` user: fsync
    off, TCP on 127.0.0.1 only (a free port), its socket in the temp dir, trust
    auth; then `pgbench -i -s PG_SCALE`. Returns (Server, None) or (None, why)."""
    import pwd
    bindir = pg_bindir()
    if not bindir:
        return None, "PostgreSQL server binaries not installed (postgresql-15)"
    if not shutil.which("pgbench"):
        return None, "pgbench not installed (postgresql-client-15)"
    if os.geteuid() != 0:
        return None, "not root: cannot start PostgreSQL as the postgres user"
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        return None, "no postgres user"
    d = mktmp("postgres")
    os.chown(d, pw.pw_uid, pw.pw_gid)
    os.chmod(d, 0o700)
    data = os.path.join(d, "data")
    asuser = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
    r = subprocess.run([os.path.join(bindir, "initdb"), "-D", data, "-A", "trust", "-U",
                        "postgres", "-E", "UTF8", "--no-sync"], cwd=d, capture_output=True,
                       text=True, timeout=120, **asuser)
    if r.returncode != 0:
        return None, "initdb failed: %s" % (r.stdout + r.stderr)[-300:]
    for _attempt in range(5):
        port = free_port()
        logp = os.path.join(d, "postgres.log")
        lf = open(logp, "w")
        p = subprocess.Popen([os.path.join(bindir, "postgres"), "-D", data, "-p", str(port),
                              "-c", "listen_addresses=" + HOST, "-c", "unix_socket_directories=" + d,
                              "-c", "fsync=off", "-c", "synchronous_commit=off", "-c",
                              "full_page_writes=off", "-c", "max_connections=200", "-c",
                              "shared_buffers=64MB", "-c", "logging_collector=off"],
                             stdout=lf, stderr=lf, stdin=subprocess.DEVNULL, cwd=d,
                             start_new_session=True, **asuser)
        _children.append(p)
        lf.close()
        ok = False
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and p.poll() is None:
            q = subprocess.run(["pg_isready", "-h", HOST, "-p", str(port), "-t", "1"],
                               capture_output=True)
            if q.returncode == 0:
                ok = True
                break
            time.sleep(0.2)
        if ok:
            r = subprocess.run(["pgbench", "-h", HOST, "-p", str(port), "-U", "postgres", "-i",
                                "-q", "-s", str(PG_SCALE), "postgres"], capture_output=True,
                               text=True, timeout=180)
            if r.returncode != 0:
                kill_group(p)
                return None, "pgbench -i failed: %s" % (r.stdout + r.stderr)[-300:]
            return Server("postgres", port, p, logp), None
        kill_group(p)
    return None, "postgres did not start: %s" % (read(logp) or "")[-300:]


class Hog:
    """A busy loop pinned to one CPU (--hog CPU): a box shared with a busy
    process, e.g. a backend or a sidecar's neighbour."""

    def __init__(self, cpu):
        self.cpu = cpu
        self.proc = spawn(taskset(str(cpu)) + [sys.executable, "-c", "while True: pass"])

    def stop(self):
        kill_group(self.proc, grace=0.5)


# ---- idle-connection client (a separate process: its own RLIMIT_NOFILE) -----


def idle_client_main(port, count):
    """Open `count` connections to port, send one GET on each and read its
    response, print 'READY ok failed', then hold them until stdin closes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    sel = selectors.DefaultSelector()
    held, failed = [], 0
    pending = 0
    started = 0
    deadline = time.monotonic() + 90
    buf = {}
    inflight_max = 128

    def start_one():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect((HOST, port))
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            return False
        sel.register(s, selectors.EVENT_WRITE, "connect")
        return True

    while (started < count or pending) and time.monotonic() < deadline:
        while started < count and pending < inflight_max:
            started += 1
            if start_one():
                pending += 1
            else:
                failed += 1
        for key, _ev in sel.select(timeout=1.0):
            s = key.fileobj
            if key.data == "connect":
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    sel.unregister(s)
                    s.close()
                    failed += 1
                    pending -= 1
                    continue
                try:
                    s.send(req)
                except OSError:
                    sel.unregister(s)
                    s.close()
                    failed += 1
                    pending -= 1
                    continue
                buf[s] = b""
                sel.modify(s, selectors.EVENT_READ, "response")
            else:
                try:
                    chunk = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(s)
                    s.close()
                    buf.pop(s, None)
                    failed += 1
                    pending -= 1
                    continue
                data = buf[s] + chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                m = re.search(rb"Content-Length:\s*(\d+)", head, re.I)
                if sep and m and len(body) >= int(m.group(1)):
                    sel.unregister(s)
                    del buf[s]
                    held.append(s)
                    pending -= 1
                else:
                    buf[s] = data
    failed += pending
    sys.stdout.write("READY %d %d\n" % (len(held), failed))
    sys.stdout.flush()
    sys.stdin.read()  # hold until the parent closes our stdin
    for s in held:
        s.close()


def hold_idle(port, total, nclients):
    """Start nclients idle-client processes for total connections; returns
    (procs, ok, failed)."""
    per = [total // nclients + (1 if i < total % nclients else 0) for i in range(nclients)]
    procs = []
    for n in per:
        if n:
            procs.append(spawn([sys.executable, os.path.abspath(__file__), "--idle-client",
                                str(port), str(n)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE))
    ok = failed = 0
    for p in procs:
        line = b""
        # READY arrives within the client's own 90 s deadline.
        t = threading.Timer(120, lambda p=p: kill_group(p, 0))
        t.start()
        line = p.stdout.readline()
        t.cancel()
        m = re.match(rb"READY (\d+) (\d+)", line)
        if m:
            ok += int(m.group(1))
            failed += int(m.group(2))
        else:
            failed += per[procs.index(p)]
    return procs, ok, failed


def release_idle(procs):
    for p in procs:
        try:
            p.stdin.close()
        except OSError:
            pass
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        kill_group(p, grace=0.5)


# ---- backends and proxies -----------------------------------------------------


class Server:
    """A started program (its own process group) with its log and temp dir."""

    def __init__(self, name, port, proc, logpath, admin_port=None, ports=None):
        self.name, self.port, self.proc = name, port, proc
        self.logpath, self.admin_port = logpath, admin_port
        # extra listeners of a proxy: {"redis": port, "pg": port}
        self.ports = ports or {}

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def pids(self):
        return group_pids(self.proc.pid) if self.proc else []

    def log_tail(self, n=20):
        if not self.logpath:
            return ""
        s = read(self.logpath) or ""
        return "\n".join(s.splitlines()[-n:])

    def stop(self):
        return kill_group(self.proc)


def mktmp(tag):
    d = tempfile.mkdtemp(prefix="shardproxy-bench-%s-" % tag)
    _tmpdirs.append(d)
    return d


def start_demo_backend(binpath, workers, pin=None):
    for _attempt in range(5):
        port = free_port()
        d = mktmp("backend")
        logp = os.path.join(d, "backend.log")
        lf = open(logp, "w")
        p = spawn(taskset(pin) + [binpath, "-l", "%s:%d" % (HOST, port), "-w", str(workers)],
                  stdout=lf, stderr=lf)
        lf.close()
        if wait_http(port, 10):
            return Server("demo-upstream", port, p, logp)
        kill_group(p)
    raise SystemExit("bench: demo-upstream did not start; log:\n%s" % (read(logp) or ""))


def start_nginx_backend(workers):
    """Fallback backend: nginx http with a small body at / and a 10 MB file."""
    for _attempt in range(5):
        port = free_port()
        d = mktmp("nginx-backend")
        os.makedirs(os.path.join(d, "html", "bytes"))
        with open(os.path.join(d, "html", "index.html"), "w") as f:
            f.write("hello from nginx backend\n")
        with open(os.path.join(d, "html", "bytes", str(BULK_BYTES)), "wb") as f:
            f.write(b"x" * BULK_BYTES)
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""worker_processes %d;
worker_rlimit_nofile %d;
error_log %s/error.log warn;
pid %s/nginx.pid;
events { worker_connections %d; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen %s:%d reuseport backlog=65535;
    root %s/html;
    location = / { default_type text/plain; }
    location /bytes/ { default_type application/octet-stream; sendfile on; }
  }
}
""" % (workers, hard_nofile(), d, d, min(hard_nofile() - 100, 16384), HOST, port, d))
        logp = os.path.join(d, "stderr.log")
        lf = open(logp, "w")
        p = spawn(["nginx", "-p", d, "-e", os.path.join(d, "error.log"), "-c", conf, "-g",
                   "daemon off;"], stdout=lf, stderr=lf)
        lf.close()
        if wait_http(port, 10):
            return Server("nginx-http", port, p, logp)
        kill_group(p)
    raise SystemExit("bench: nginx backend did not start")


def extra_ports(extra, taken):
    """A free port for each (name, backend_port) of extra, distinct from taken."""
    out = {}
    for name, _bport in extra:
        port = free_port()
        while port in taken or port in out.values():
            port = free_port()
        out[name] = port
    return out


def hard_nofile():
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def start_haproxy(workers, backend_port, extra=()):
    """extra: [(name, backend_port)], one more frontend/backend pair each."""
    hard = hard_nofile()
    maxconn = max(1000, (hard - 200) // 2)
    for _attempt in range(5):
        port = free_port()
        ports = extra_ports(extra, {port})
        more = "".join("""
frontend fe_%s
    bind %s:%d
    default_backend be_%s

backend be_%s
    server s1 %s:%d
""" % (n, HOST, ports[n], n, n, HOST, bp) for n, bp in extra)
        d = mktmp("haproxy")
        cfg = os.path.join(d, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write("""global
    nbthread %d
    maxconn %d

defaults
    mode tcp
    maxconn %d
    timeout connect 5s
    timeout client 300s
    timeout server 300s

frontend fe
    bind %s:%d
    default_backend be

backend be
    server s1 %s:%d
""" % (workers, maxconn, maxconn, HOST, port, HOST, backend_port) + more)
        logp = os.path.join(d, "haproxy.log")
        lf = open(logp, "w")
        p = spawn(["haproxy", "-f", cfg, "-db"], stdout=lf, stderr=lf)
        lf.close()
        if wait_http(port, 10) and all(wait_port(x, 5) for x in ports.values()):
            return Server("haproxy", port, p, logp, ports=ports)
        say("haproxy did not start:\n%s" % (read(logp) or ""))
        kill_group(p)
    return None


def nginx_stream_module():
    out = subprocess.run(["nginx", "-V"], capture_output=True, text=True).stderr
    if "--with-stream=dynamic" in out or "--with-stream " not in out + " ":
        for path in ("/usr/lib/nginx/modules/ngx_stream_module.so",
                     "/usr/share/nginx/modules/ngx_stream_module.so"):
            if os.path.exists(path):
                return "load_module %s;\n" % path
    return ""


def start_nginx_stream(workers, backend_port, extra=()):
    hard = hard_nofile()
    for _attempt in range(5):
        port = free_port()
        ports = extra_ports(extra, {port})
        more = "".join("""  upstream be_%s { server %s:%d; }
  server {
    listen %s:%d reuseport;
    proxy_pass be_%s;
    proxy_timeout 300s;
  }
""" % (n, HOST, bp, HOST, ports[n], n) for n, bp in extra)
        d = mktmp("nginx")
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""%sworker_processes %d;
worker_rlimit_nofile %d;
error_log %s/error.log warn;
pid %s/nginx.pid;
events { worker_connections %d; }
stream {
  upstream be { server %s:%d; }
  server {
    listen %s:%d reuseport;
    proxy_pass be;
    proxy_timeout 300s;
  }
%s}
""" % (nginx_stream_module(), workers, hard, d, d, hard - 100, HOST, backend_port, HOST, port,
       more))
        logp = os.path.join(d, "stderr.log")
        lf = open(logp, "w")
        p = spawn(["nginx", "-p", d, "-e", os.path.join(d, "error.log"), "-c", conf, "-g",
                   "daemon off;"], stdout=lf, stderr=lf)
        lf.close()
        if wait_http(port, 10) and all(wait_port(x, 5) for x in ports.values()):
            s = Server("nginx", port, p, os.path.join(d, "error.log"), ports=ports)
            return s
        say("nginx stream did not start:\n%s\n%s" % (read(logp) or "",
                                                     read(os.path.join(d, "error.log")) or ""))
        kill_group(p)
    return None


def shardproxy_conf(workers, relay, steering, port, admin_port, backend_port, max_conns,
                    level="warn", extra=(), ports=None, affinity=None, io=None):
    c = {
        "workers": workers,
        "relay": relay,
        "steering": steering,
        "log": {"level": level, "access_log": False},
        "admin": {"listen": "%s:%d" % (HOST, admin_port)},
        "limits": {"max_connections": max_conns, "drain_timeout_ms": 1000},
        "listeners": [{"name": "bench", "listen": "%s:%d" % (HOST, port),
                       "routes": [{"upstream": "backend"}]}],
        "upstreams": [{"name": "backend",
                       "servers": [{"address": "%s:%d" % (HOST, backend_port)}]}],
    }
    for name, bport in extra:
        c["listeners"].append({"name": name, "listen": "%s:%d" % (HOST, ports[name]),
                               "routes": [{"upstream": name}]})
        c["upstreams"].append({"name": name, "servers": [{"address": "%s:%d" % (HOST, bport)}]})
    if affinity:
        c["cpu_affinity"] = affinity
    if io:
        c["io"] = io
    return c


def start_shardproxy(binpath, workers, relay, steering, backend_port, max_conns, level="warn",
                     pin=None, extra=(), affinity=None, io=None):
    for _attempt in range(5):
        port, admin_port = free_port(), free_port()
        if port == admin_port:
            continue
        ports = extra_ports(extra, {port, admin_port})
        d = mktmp("shardproxy")
        cfg = os.path.join(d, "shardproxy.json")
        with open(cfg, "w") as f:
            json.dump(shardproxy_conf(workers, relay, steering, port, admin_port, backend_port,
                                      max_conns, level, extra, ports, affinity, io), f, indent=1)
        logp = os.path.join(d, "shardproxy.log")
        lf = open(logp, "w")
        p = spawn(taskset(pin) + [binpath, "-c", cfg], stdout=lf, stderr=lf)
        lf.close()
        if wait_http(port, 15) and all(wait_port(x, 5) for x in ports.values()):
            s = Server("shardproxy", port, p, logp, admin_port, ports=ports)
            # every shard ready?
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                st = admin_stats(s)
                if st and sum(1 for sh in st["shards"] if sh["state"] == "ready") >= workers:
                    break
                time.sleep(0.1)
            return s
        say("shardproxy (%s/%s) did not start:\n%s" % (relay, steering, read(logp) or ""))
        kill_group(p)
    return None


def admin_stats(server):
    if not server or not server.admin_port:
        return None
    try:
        with urllib.request.urlopen("http://%s:%d/stats" % (HOST, server.admin_port),
                                    timeout=3) as r:
            return json.loads(r.read().decode())
    except (OSError, ValueError):
        return None


def shard_counts(stats):
    """{slot: (accepted, active, refused, connect_failed, pid)} of the current generation."""
    if not stats:
        return {}
    gen = stats.get("generation")
    return {sh["slot"]: (sh["accepted"], sh["active"], sh.get("refused", 0),
                         sh.get("connect_failed", 0), sh["pid"])
            for sh in stats["shards"] if sh.get("generation") == gen}


# ---- one run of one variant ---------------------------------------------------


def run_variant(ctx, name, rep):
    """Start variant `name`, run every workload on it, stop it. Returns a dict
    of figures (None where not applicable) and notes."""
    a = ctx.args
    res = {"variant": name, "repeat": rep, "notes": []}
    backend = ctx.backend
    server = None
    # the real-client backends this run has: [(listener name, backend port)]
    extra = [(n, srv.port) for n, srv in (("redis", ctx.redis), ("pg", ctx.pg)) if srv]
    if name == "direct":
        port = backend.port
        ports = dict(extra)
    elif name == "haproxy":
        server = start_haproxy(a.workers, backend.port, extra)
    elif name == "nginx":
        server = start_nginx_stream(a.workers, backend.port, extra)
    else:
        # "NAME@base": the same variant on the --base binary (A/B of two builds)
        vname, _, which = name.partition("@")
        relay, steering, *more = SHARDPROXY_VARIANTS[vname]
        binpath = a.base if which == "base" else ctx.shardproxy
        server = start_shardproxy(binpath, a.workers, relay, steering, backend.port,
                                  max(10000, a.idle + 2000), extra=extra,
                                  affinity=more[0] if more else None, io=SHARDPROXY_IO.get(vname))
    if name != "direct":
        if server is None:
            res["notes"].append("did not start")
            return res
        port = server.port
        ports = server.ports
        time.sleep(0.3)
    try:
        root = server.pid if server else None
        shard_pids0 = None
        if server:
            res["pss_fresh_kib"] = pss_kib(server.pids())
        if server and server.admin_port:
            shard_pids0 = {k: v[4] for k, v in shard_counts(admin_stats(server)).items()}
        url = "http://%s:%d/" % (HOST, port)
        burl = "http://%s:%d/bytes/%d" % (HOST, port, BULK_BYTES)
        workloads = [
            ("keepalive", lambda: run_wrk(a, url, a.duration, (), 2, 50)),
            ("close", lambda: run_wrk(a, url, a.duration, ("-H", "Connection: close"), 2, 50)),
            ("bulk", lambda: run_wrk(a, burl, a.duration, (), 1, 4)),
        ]
        for wname, (_label, depth) in REDIS_WORKLOADS.items():
            if "redis" in ports:
                workloads.append((wname, lambda wname=wname, depth=depth: redis_run(
                    ctx, name, wname, ports["redis"], depth)))
        if "pg" in ports:
            workloads.append(("pg", lambda: run_pgbench(ports["pg"], a.rc_duration,
                                                        a.rc_duration + 30)))
        workloads = [w for w in workloads if w[0] in a.workloads]
        iowq_max = 0
        for wname, runner in workloads:
            if server and not server.alive():
                res["notes"].append("%s: proxy exited (rc %s) before it; log: %s"
                                    % (wname, server.proc.returncode, server.log_tail(5)))
                break
            st0 = admin_stats(server) if server and server.admin_port else None
            pids0 = server.pids() if server else []
            cpu0 = cpu_ticks(pids0)
            sampler = Sampler(root) if root else None
            if sampler:
                sampler.start()
            t_w = time.monotonic()
            w = runner()
            res["t_" + wname] = time.monotonic() - t_w
            if sampler:
                sampler.stop()
                iowq_max = max(iowq_max, sampler.max_iowq)
                res["iowq_" + wname] = sampler.max_iowq
            if server:
                cpu1 = cpu_ticks(server.pids())
                cpu = cpu_delta_s(cpu0, cpu1)
            else:
                cpu = None
            res[wname] = {k: w[k] for k in ("rps", "bps", "requests", "lat", "errors",
                                           "socket_errors", "non2xx")}
            res[wname]["cpu_s"] = cpu
            if w["errors"]:
                res["notes"].append("%s: client errors %s, non-2xx %d"
                                    % (wname, w["socket_errors"] or w.get("raw", "")[-200:],
                                       w["non2xx"]))
            if w["rps"] is None:
                res["notes"].append("%s: %s gave no result: %s"
                                    % (wname, "pgbench" if wname == "pg" else
                                       "redis-benchmark" if wname.startswith("redis") else "wrk",
                                       w["raw"][-300:]))
            if st0:
                st1 = admin_stats(server)
                c0, c1 = shard_counts(st0), shard_counts(st1)
                res["shards_" + wname] = [c1[k][0] - c0.get(k, (0,))[0] for k in sorted(c1)]
                for k in sorted(c1):
                    b = c0.get(k, (0, 0, 0, 0, 0))
                    if c1[k][2] > b[2] or c1[k][3] > b[3]:
                        res["notes"].append("%s: shard %d refused +%d, connect_failed +%d"
                                            % (wname, k, c1[k][2] - b[2], c1[k][3] - b[3]))
            time.sleep(0.3)
        res["iowq"] = iowq_max if root else None

        # idle connections
        if server and server.alive() and a.idle > 0 and "idle" in a.workloads \
                and (rep < a.idle_repeats or name not in ctx.idle_done):
            t_w = time.monotonic()
            time.sleep(0.5)
            pids = server.pids()
            pss0 = pss_kib(pids)
            procs, ok, failed = hold_idle(port, a.idle, a.idle_clients)
            try:
                time.sleep(1.0)
                pids = server.pids()
                pss1 = pss_kib(pids)
                res["idle"] = {"ok": ok, "failed": failed, "pss0_kib": pss0, "pss1_kib": pss1,
                               "per_conn_kib": (pss1 - pss0) / ok if ok else None,
                               "nprocs": len(pids)}
                if failed:
                    res["notes"].append("idle: %d of %d connections failed" % (failed, a.idle))
                if server.admin_port:
                    res["shards_idle_active"] = [v[1] for k, v in
                                                 sorted(shard_counts(admin_stats(server)).items())]
            finally:
                release_idle(procs)
                res["t_idle"] = time.monotonic() - t_w
                if ok:
                    ctx.idle_done.add(name)
        if server and server.admin_port:
            st = shard_counts(admin_stats(server))
            pids1 = {k: v[4] for k, v in st.items()}
            if shard_pids0 and pids1 != shard_pids0:
                res["notes"].append("shard pids changed during the run (a shard restarted): %s -> %s"
                                    % (shard_pids0, pids1))
    finally:
        if server:
            alive = server.alive()
            rc = server.stop()
            if not alive:
                res["notes"].append("proxy had exited (rc %s)" % server.proc.returncode)
            elif name.startswith("shardproxy") and rc not in (0, None):
                res["notes"].append("exit status %s after SIGTERM" % rc)
            elif name.startswith("shardproxy") and rc is None:
                res["notes"].append("did not stop within 3 s of SIGTERM (killed)")
            log = read(server.logpath) or ""
            bad = [l for l in log.splitlines()
                   if re.search(r"error|warn|alert|emerg|crit|abort|assert|sanitizer", l, re.I)
                   and "RLIMIT_NOFILE" not in l]
            if bad:
                res["log_lines"] = bad[:10]
                res["notes"].append("log: %d warning/error lines, e.g. %s" % (len(bad), bad[0][:200]))
    return res


# ---- summary ------------------------------------------------------------------


def med_range(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None, None
    return statistics.median(vals), min(vals), max(vals)


METRICS = [
    # key, label, unit, extractor, higher_is_better, fmt
    ("ka_rps", "keep-alive req/s", "req/s",
     lambda r: r.get("keepalive", {}).get("rps"), True, "{:,.0f}"),
    ("ka_p50", "keep-alive p50 latency", "ms",
     lambda r: ms(r.get("keepalive", {}).get("lat", {}).get(50)), False, "{:.3f}"),
    ("ka_p99", "keep-alive p99 latency", "ms",
     lambda r: ms(r.get("keepalive", {}).get("lat", {}).get(99)), False, "{:.3f}"),
    ("cl_rps", "new connection per request req/s", "req/s",
     lambda r: r.get("close", {}).get("rps"), True, "{:,.0f}"),
    ("bulk", "bulk transfer (10 MB bodies)", "MiB/s",
     lambda r: mib(r.get("bulk", {}).get("bps")), True, "{:,.0f}"),
    ("redis_rps", "redis-benchmark SET+GET, -c 50 -d 64", "req/s",
     lambda r: r.get("redis", {}).get("rps"), True, "{:,.0f}"),
    ("redis_p16_rps", "redis-benchmark SET+GET, -c 50 -d 64 -P 16", "req/s",
     lambda r: r.get("redis_p16", {}).get("rps"), True, "{:,.0f}"),
    ("pg_tps", "pgbench -S -c 16 -j 2", "tps",
     lambda r: r.get("pg", {}).get("rps"), True, "{:,.0f}"),
    ("ka_cpu", "proxy CPU per 100k keep-alive req", "CPU s",
     lambda r: per100k(r.get("keepalive")), False, "{:.2f}"),
    ("cl_cpu", "proxy CPU per 100k new connections", "CPU s",
     lambda r: per100k(r.get("close")), False, "{:.2f}"),
    ("bulk_cpu", "proxy CPU per GiB bulk", "CPU s",
     lambda r: per_gib(r.get("bulk")), False, "{:.2f}"),
    ("redis_cpu", "proxy CPU per 100k redis requests", "CPU s",
     lambda r: per100k(r.get("redis")), False, "{:.2f}"),
    ("redis_p16_cpu", "proxy CPU per 100k pipelined redis requests", "CPU s",
     lambda r: per100k(r.get("redis_p16")), False, "{:.3f}"),
    ("pg_cpu", "proxy CPU per 100k pgbench transactions", "CPU s",
     lambda r: per100k(r.get("pg")), False, "{:.2f}"),
    ("idle_kib", "PSS per idle connection (delta)", "KiB",
     lambda r: (r.get("idle") or {}).get("per_conn_kib"), False, "{:.2f}"),
    ("idle_total", "proxy PSS with the idle connections", "MiB",
     lambda r: (r.get("idle") or {}).get("pss1_kib", 0) / 1024 or None, False, "{:.1f}"),
    ("iowq", "io-wq threads (max sampled)", "threads",
     lambda r: r.get("iowq"), False, "{:.0f}"),
]


def ms(us):
    return None if us is None else us / 1000.0


def mib(bps):
    return None if bps is None else bps / (1 << 20)


def per100k(w):
    if not w or w.get("cpu_s") is None or not w.get("requests"):
        return None
    return w["cpu_s"] / w["requests"] * 1e5


def per_gib(w):
    if not w or w.get("cpu_s") is None or not w.get("requests"):
        return None
    return w["cpu_s"] / (w["requests"] * BULK_BYTES / (1 << 30))


def summarize(results, variants):
    """{metric: {variant: (median, min, max, n)}}"""
    out = {}
    for key, _label, _unit, fn, _hib, _fmt in METRICS:
        out[key] = {}
        for v in variants:
            vals = [fn(r) for r in results if r["variant"] == v]
            vals = [x for x in vals if x is not None]
            m, lo, hi = med_range(vals)
            out[key][v] = (m, lo, hi, len(vals))
    return out


def fmt_ratio(x, ref):
    if x is None or ref is None or ref == 0:
        return "–"
    if abs(x / ref) < 0.005:
        return "≈0"
    return "%.2f×" % (x / ref)


def table_rows(summary, variants):
    rows = []
    for key, label, unit, _fn, _hib, fmt in METRICS:
        for v in variants:
            m, lo, hi, n = summary[key][v]
            if m is None:
                continue
            ref_h = summary[key].get("haproxy", (None,))[0]
            ref_d = summary[key].get("direct", (None,))[0]
            rng = (fmt.format(lo) + "–" + fmt.format(hi)) if n > 1 else "(1 run)"
            rows.append(["%s (%s)" % (label, unit), v, fmt.format(m), rng,
                         fmt_ratio(m, ref_h), fmt_ratio(m, ref_d)])
    return rows


HEADER = ["figure", "variant", "median", "min–max", "× HAProxy", "× direct"]


def text_table(rows):
    w = [max(len(str(r[i])) for r in rows + [HEADER]) for i in range(len(HEADER))]
    lines = ["  ".join(h.ljust(w[i]) for i, h in enumerate(HEADER)),
             "  ".join("-" * w[i] for i in range(len(HEADER)))]
    prev = None
    for r in rows:
        first = r[0] if r[0] != prev else ""
        prev = r[0]
        cells = [first] + r[1:]
        lines.append("  ".join((c.ljust(w[i]) if i < 2 else c.rjust(w[i]))
                               for i, c in enumerate(cells)))
    return "\n".join(lines)


def md_table(rows):
    lines = ["| " + " | ".join(HEADER) + " |",
             "|" + "|".join(["---", "---", "---:", "---:", "---:", "---:"]) + "|"]
    prev = None
    for r in rows:
        first = r[0] if r[0] != prev else ""
        prev = r[0]
        lines.append("| " + " | ".join([first] + r[1:]) + " |")
    return "\n".join(lines)


def memory_rows(results, variants):
    """Median PSS (MiB) fresh, after the wrk runs, with the idle connections."""
    rows = []
    for v in variants:
        rs = [r for r in results if r["variant"] == v and r.get("idle")]
        if not rs:
            continue
        fresh = med_range([r.get("pss_fresh_kib") for r in rs])[0]
        before = med_range([r["idle"]["pss0_kib"] for r in rs])[0]
        with_ = med_range([r["idle"]["pss1_kib"] for r in rs])[0]
        n = rs[0]["idle"]["ok"]
        rows.append((v, fresh / 1024 if fresh else None, before / 1024, with_ / 1024, n,
                     rs[0]["idle"]["nprocs"]))
    return rows


def shard_lines(results, variants):
    """Per-shard connection counts of each shardproxy run."""
    lines = []
    for v in variants:
        if not v.startswith("shardproxy"):
            continue
        for r in results:
            if r["variant"] != v:
                continue
            parts = []
            for key, label in (("shards_keepalive", "keep-alive"), ("shards_close", "new-conn"),
                               ("shards_bulk", "bulk"), ("shards_redis", "redis"),
                               ("shards_redis_p16", "redis -P 16"), ("shards_pg", "pgbench"),
                               ("shards_idle_active", "idle (active)")):
                c = r.get(key)
                if c:
                    tot = sum(c) or 1
                    parts.append("%s %s (%s)" % (label, "/".join(str(x) for x in c),
                                                 "/".join("%.0f%%" % (100.0 * x / tot) for x in c)))
            lines.append((v, r["repeat"] + 1, "; ".join(parts) or "no data"))
    return lines


# ---- machine and tools --------------------------------------------------------


def cmd_out(argv):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return "unavailable (%s)" % e


def machine_info(ctx):
    cpu = "unknown"
    for line in (read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    u = os.uname()
    info = {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": "%s %s %s" % (u.sysname, u.release, u.version),
        "debian": (read("/etc/debian_version") or "not Debian").strip(),
        "mem": "",
        "haproxy": cmd_out(["haproxy", "-v"]).splitlines()[0] if shutil.which("haproxy") else "absent",
        "nginx": cmd_out(["nginx", "-v"]) if shutil.which("nginx") else "absent",
        "wrk": cmd_out(["wrk", "-v"]).splitlines()[0] if shutil.which("wrk") else "absent",
        "redis": cmd_out(["redis-server", "--version"]) if shutil.which("redis-server") else "absent",
        "pg": (cmd_out([os.path.join(pg_bindir(), "postgres"), "--version"]) + "; " +
               cmd_out(["pgbench", "--version"])) if pg_bindir() and shutil.which("pgbench")
              else "absent",
        "python": platform.python_version(),
        "shardproxy": cmd_out([ctx.shardproxy, "-V"]),
        "git": cmd_out(["git", "-C", REPO, "describe", "--always", "--dirty"]),
        "nofile": "%d/%d" % resource.getrlimit(resource.RLIMIT_NOFILE),
        "loadavg": " ".join((read("/proc/loadavg") or "? ? ?").split()[:3]),
    }
    m = re.search(r"MemTotal:\s+(\d+) kB", read("/proc/meminfo") or "")
    if m:
        info["mem"] = "%.1f GiB" % (int(m.group(1)) / (1 << 20))
    return info


# ---- report -------------------------------------------------------------------

METHOD = """\
- **Backend**: {backend}, on 127.0.0.1, the same process for every variant and
  every repeat. `GET /` returns a small body (~40 bytes), `GET /bytes/10000000`
  a 10,000,000-byte body.
- **Real clients' servers**, started once by the bench and shared by every
  variant like the HTTP backend (each proxy gets one more listener for each):
  `redis-server` (one thread) on a free 127.0.0.1 port, its dir a temp dir,
  `--save ""` and `--appendonly no` (no persistence); PostgreSQL 15 initialised
  by `initdb` in a temp dir and run as the `postgres` user, `listen_addresses`
  127.0.0.1 only, a free port, `fsync=off`, `synchronous_commit=off`,
  `full_page_writes=off`, trust authentication, then `pgbench -i -s {pg_scale}`.
- **Variants**, each with {workers} workers (= `nproc`):
  - `direct`: wrk straight to the backend (no proxy: the upper bound);
  - `haproxy`: HAProxy `mode tcp`, `nbthread {workers}`, `maxconn` as high as
    the descriptor limit allows, default buffers, no splicing, no logging;
  - `nginx`: nginx `stream`, `worker_processes {workers}`, `listen ... reuseport`,
    `proxy_pass` to the backend, no access log;
  - `shardproxy-auto` / `shardproxy-copy` / `shardproxy-splice`: `"relay":
    "auto"` (the default: copy, bulk directions moved to splice) / `"copy"` /
    `"splice"`, `"steering": "hash"`; `shardproxy-copy-none` (on request): copy
    with `"steering": "none"` (plain `SO_REUSEPORT`, no BPF); all with `"access_log": false`,
    `"level": "warn"` (stderr to a file) and the admin endpoint on for `/stats`.
- **Order**: {repeats} repeat(s); in each, every variant in turn (A B C … A B C …),
  each time a freshly started proxy. Each figure is the **median** over the
  repeats, with the min–max.
- **Workloads** (each `wrk` run lasts {duration} s):
  - keep-alive: `wrk -t2 -c50 -d{duration}s --latency URL/` → req/s, p50, p99;
  - new connection per request: the same with `-H 'Connection: close'` → req/s
    (client accept + upstream connect + steering for every request);
  - bulk: `wrk -t1 -c4 -d{duration}s URL/bytes/10000000` → MiB/s from wrk's
    `Transfer/sec` (wrk's units are powers of 1024);
  - redis: `redis-benchmark -t set,get -c 50 -d 64 -n N --csv`, and the same
    with `-P 16` (pipelined): req/s = 2N / (N/SET rate + N/GET rate); N is
    sized from that variant's previous rate (first: a calibration run straight
    to redis-server) so each run lasts about {rc_duration} s;
  - pgbench: `pgbench -S -c 16 -j 2 -T {rc_duration} -n` (select-only, one
    session per client for the whole run) → tps without the initial
    connection time;
  - idle (in the first {idle_repeats} repeat(s) only: it moves little from one
    repeat to the next, and takes time): {idle} connections opened by
    {idle_clients} Python client processes, one `GET /` answered on each, then
    held open; PSS
    (`/proc/PID/smaps_rollup`, summed over all of the proxy's processes) with
    them minus PSS just before, divided by the connections; and the total PSS
    with them, since a proxy that allocates its connection slots up front (as
    shardproxy does, for `limits.max_connections`, default 10,000) shows a
    delta near zero and pays in its baseline instead. {idle_note}
- **CPU**: `utime + stime` (`/proc/PID/stat`, all threads, io-wq workers
  included) of every process of the proxy (its process group and descendants:
  supervisor + shards, nginx master + workers, HAProxy's one process), over each
  wrk run, divided by the requests wrk completed × 100,000 (bulk: per GiB moved).
  A proxy that is fast only because it leaves wrk and the backend more CPU shows
  up here. The resolution is one clock tick ({tck} ms).
- **io-wq threads**: `/proc/PID/task/*/comm` named `iou-wrk-*` under the proxy's
  processes, sampled every 0.25 s during the wrk runs; the table gives the most
  seen at once.
- **Per-shard counts**: shardproxy's admin `/stats` (`shards[].accepted`, and
  `active` while the idle connections are held), read before and after each
  workload.
- Nothing is pinned: wrk (2 threads), the backend ({backend_workers} worker(s))
  and the proxy share the {nproc} CPUs, as they would on a small box. The machine
  may be shared with other work, so absolute numbers are noisy; the ratios,
  measured side by side and interleaved, are what to read.
"""

MEANING = """\
- **req/s and latency** measure the whole loop (wrk + proxy + backend on the same
  cores), so a proxy that uses less CPU per request also leaves more to wrk and
  the backend; that is why the CPU-per-request rows matter as much as req/s.
  `× direct` is how much of the no-proxy rate survives the extra hop.
- **redis and pgbench** are clients nobody here wrote. Plain redis-benchmark
  is one small request and reply per round trip (like keep-alive, but a
  single-threaded client and server); `-P 16` sends 16 commands per write,
  so the proxy relays fewer, larger messages and the per-byte and
  per-wake-up costs matter more than per-connection ones; pgbench `-S` is
  16 long sessions of one small query each way through a backend that does
  real work per query.
- **New connection per request** adds, per request, a client accept, an
  upstream connect and two closes: it is dominated by the kernel's TCP
  handshake work and by how a proxy accepts (multishot accept, steering).
- **Bulk** costs every proxy a second loopback TCP hop: its send path and the
  delivery into wrk's socket run on the same two cores as wrk and the backend
  (`direct` is already CPU-bound). A proxy that copies through user space
  also moves every byte twice more; `splice` moves pages between sockets
  through a pipe without copying them to user space (Findings, item 4).
- **PSS per idle connection** is what the proxy's processes hold per connection
  (buffers, session state), shared pages split between processes; kernel socket
  memory (the same two sockets for every proxy) is not included.
- **io-wq threads** are the kernel workers io_uring falls back to when an
  operation cannot complete inline; a relay built on multishot recv and
  non-blocking splice should need none.
- **Per-shard counts** show how evenly steering spread connections; with the
  ~50 keep-alive connections a few either way is chance, while the
  new-connection run (tens of thousands of connections) and the idle
  connections show the steady-state spread.
- A ratio within the min–max spread of the runs is not a difference.
"""


def preserved_findings(path):
    """The lead's `## Findings` section of an existing report, kept across reruns."""
    old = read(path) if path else None
    if not old:
        return None
    m = re.search(r"^## Findings\n(.*?)(?=^## |\Z)", old, re.M | re.S)
    if not m:
        return None
    body = m.group(1).strip()
    if not body or body.startswith("<!-- lead:"):
        return None
    return body


def write_report(ctx, path, info, rows, shard_info, mem_rows, notes, elapsed, auto_relay,
                 scaling=None):
    a = ctx.args
    # The scaling section: this run's if it measured one, else the report's existing one.
    scaling_md = scaling_section(scaling) if scaling else section_of(read(path), SCALING_TITLE)
    findings = preserved_findings(path) or (
        "<!-- lead: to be filled in. What the table shows, what was changed because of it,\n"
        "     what perf/callgrind found, scaling projections. -->\n\n_To be written._")
    idle_note = ctx.idle_note
    md = []
    md.append("# Benchmarks\n")
    md.append("Generated by `make bench` (`tests/bench/bench.py`) on %s, in %.0f s%s. "
              "Rerun it to check every figure; absolute numbers depend on the machine and on "
              "what else runs on it, ratios measured in one run are what matter.\n"
              % (datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), elapsed,
                 " (quick mode)" if a.quick else ""))
    md.append("## Machine and tools\n")
    md.append("| | |\n|---|---|")
    md.append("| CPUs (`nproc`) | %s |" % info["nproc"])
    md.append("| CPU model | %s |" % info["cpu"])
    md.append("| memory | %s |" % info["mem"])
    md.append("| kernel | `%s` |" % info["kernel"])
    md.append("| Debian | %s |" % info["debian"])
    md.append("| RLIMIT_NOFILE (soft/hard) | %s |" % info["nofile"])
    md.append("| load average at the start (1/5/15 min) | %s |" % info["loadavg"])
    md.append("| HAProxy | %s |" % info["haproxy"])
    md.append("| nginx | %s |" % info["nginx"])
    md.append("| wrk | %s |" % info["wrk"])
    md.append("| redis | %s |" % info.get("redis", "absent"))
    md.append("| PostgreSQL | %s |" % info.get("pg", "absent"))
    md.append("| Python | %s |" % info["python"])
    md.append("| shardproxy | `%s` (git `%s`) |" % (info["shardproxy"].splitlines()[0], info["git"]))
    md.append("| backend | %s |" % ctx.backend_desc)
    md.append("")
    md.append("`shardproxy -V` on this machine:\n")
    md.append("```\n%s\n```\n" % info["shardproxy"])
    if auto_relay:
        md.append("`\"relay\": \"auto\"` chose **%s** on this kernel.\n" % auto_relay)
    md.append("## Results\n")
    md.append("%d worker(s) per proxy, %d repeat(s), %d s per wrk run, %d idle connections. "
              "Median over the repeats, min–max in the next column; `× HAProxy` and "
              "`× direct` are ratios of medians (for latency, CPU and memory, lower is better).\n"
              % (a.workers, a.repeats, a.duration, a.idle))
    md.append(md_table(rows))
    md.append("")
    if mem_rows:
        md.append("### Memory of the proxy's processes (PSS, MiB, median)\n")
        md.append("Fresh = just started and answering; after load = after the three wrk "
                  "runs, just before the idle connections; with idle = holding them.\n")
        md.append("| variant | processes | fresh | after load | with idle | idle connections |\n"
                  "|---|---:|---:|---:|---:|---:|")
        for v, fresh, before, with_, n, nprocs in mem_rows:
            md.append("| %s | %d | %s | %.1f | %.1f | %d |"
                      % (v, nprocs, "%.1f" % fresh if fresh is not None else "–", before, with_, n))
        md.append("")
    if shard_info:
        md.append("### Per-shard connections (shardproxy)\n")
        md.append("Connections accepted by each shard during each workload, and open on each "
                  "shard while the idle connections were held.\n")
        md.append("| variant | repeat | per shard |\n|---|---:|---|")
        for v, rep, text in shard_info:
            md.append("| %s | %d | %s |" % (v, rep, text))
        md.append("")
    md.append("### Errors and anomalies seen during the runs\n")
    if notes:
        for n in notes:
            md.append("- %s" % n)
    else:
        md.append("None: no wrk socket errors or non-2xx responses, no failed idle "
                  "connections, no proxy exits, no warnings in the proxies' logs.")
    md.append("")
    md.append("## Method\n")
    md.append(METHOD.format(backend=ctx.backend_desc, workers=a.workers, repeats=a.repeats,
                            duration=a.duration, idle=a.idle, idle_clients=a.idle_clients,
                            idle_note=idle_note, tck=1000 // CLK_TCK,
                            backend_workers=a.backend_workers, nproc=info["nproc"],
                            pg_scale=PG_SCALE, rc_duration=a.rc_duration,
                            idle_repeats=a.idle_repeats))
    if a.hog is not None:
        md.append("This run had `--hog %d`: a Python busy loop pinned to CPU %d for the whole "
                  "run (a box shared with a busy process).\n" % (a.hog, a.hog))
    md.append("Rerun: `make bench` (default: 3 repeats, 5 s wrk runs, 4 s real-client runs, "
              "about 11 minutes; the scaling section is measured only if the run leaves the "
              "time for it), "
              "`BENCH_QUICK=1 make bench` (1 repeat, 2 s runs, 1,000 idle connections, under "
              "2 minutes), `python3 tests/bench/bench.py --build build --only "
              "shardproxy-copy,haproxy --repeats 5 --duration 10 --workloads redis_p16,pg`, "
              "`... --only shardproxy-auto-pin,shardproxy-auto-none --hog 0` (CPU placement on "
              "a box with a busy CPU), `... --base OLD/shardproxy --only "
              "shardproxy-epoll,shardproxy-epoll@base` (an interleaved A/B of this build "
              "against another binary), or `python3 "
              "tests/bench/bench.py --scaling` (only the scaling section, about 1.5 minutes).\n")
    md.append("## What the numbers mean\n")
    md.append(MEANING)
    if scaling_md:
        md.append(scaling_md)
    md.append("## Findings\n")
    md.append(findings)
    md.append("")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(md))
    os.replace(tmp, path)


# ---- --scaling: cost per shard, and memory against idle connections ----------

SCALING_TITLE = "## Scaling and memory curve"
SCALING_LEVELS = (1000, 5000, 10000)


def cpus_allowed(pid):
    m = re.search(r"^Cpus_allowed_list:\s*(\S+)", read("/proc/%d/status" % pid) or "", re.M)
    return m.group(1) if m else "?"


def scaling_pins(ncpu):
    """(proxy CPUs for 1 shard, for 2 shards, CPUs of wrk + backend)."""
    if ncpu >= 4:
        return "0", "0,1", "2-%d" % (ncpu - 1)
    if ncpu == 3:
        return "0", "0,1", "2"
    return "0", "0,1", str(ncpu - 1)


def run_scaling(ctx, demo):
    """Throughput and CPU per request of shardproxy (relay auto) with 1 and 2
    shards, interleaved, wrk and the backend pinned; then PSS of shardproxy-auto
    and HAProxy at 1,000 / 5,000 / 10,000 idle connections. Returns a dict."""
    a = ctx.args
    t0 = time.monotonic()
    ncpu = os.cpu_count() or 1
    pin1, pin2, pin_load = scaling_pins(ncpu)
    load_cpus = 1 if "-" not in pin_load else ncpu - 2
    wrk_threads = 1 if load_cpus == 1 else 2
    data = {"when": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "git": cmd_out(["git", "-C", REPO, "describe", "--always", "--dirty"]),
            "nproc": ncpu, "repeats": a.scaling_repeats, "duration": a.scaling_duration,
            "pins": {"1": pin1, "2": pin2, "load": pin_load}, "wrk_threads": wrk_threads,
            "backend_workers": load_cpus,
            "loadavg": " ".join((read("/proc/loadavg") or "? ? ?").split()[:3]),
            "runs": [], "mem": [], "notes": [], "affinity": {}}
    if ncpu < 2:
        data["notes"].append("one CPU: nothing to pin apart; scaling runs skipped")
    backend = None
    if os.access(demo, os.X_OK):
        backend = start_demo_backend(demo, load_cpus, pin=pin_load)
        data["backend"] = "`taskset -c %s demo-upstream -w %d`" % (pin_load, load_cpus)
    else:
        backend = ctx.backend if getattr(ctx, "backend", None) else None
        data["backend"] = "%s (not pinned: demo-upstream missing)" % (ctx.backend_desc,)
        if backend is None:
            data["notes"].append("no backend")
            return data
    try:
        for rep in range(a.scaling_repeats if ncpu >= 2 else 0):
            for workers, pin in ((1, pin1), (2, pin2)):
                say("scaling %d/%d: shardproxy-auto, %d shard(s) on CPU %s, wrk + backend on "
                    "CPU %s" % (rep + 1, a.scaling_repeats, workers, pin, pin_load))
                srv = start_shardproxy(ctx.shardproxy, workers, "auto", "hash", backend.port,
                                       10000, pin=pin, affinity="pin")
                if srv is None:
                    data["notes"].append("%d shard(s), repeat %d: did not start" % (workers, rep + 1))
                    continue
                r = {"workers": workers, "repeat": rep}
                try:
                    time.sleep(0.3)
                    st = shard_counts(admin_stats(srv))
                    data["affinity"][str(workers)] = "supervisor %s; %s" % (
                        cpus_allowed(srv.pid), ", ".join("shard %d on CPU %s" % (k, cpus_allowed(v[4]))
                                                         for k, v in sorted(st.items())))
                    url = "http://%s:%d/" % (HOST, srv.port)
                    for wname, extra in (("keepalive", ()), ("close", ("-H", "Connection: close"))):
                        st0 = shard_counts(admin_stats(srv))
                        pids = srv.pids()
                        c0 = cpu_ticks(pids)
                        w = run_wrk(a, url, a.scaling_duration, extra, wrk_threads, 50, pin=pin_load)
                        c1 = cpu_ticks(srv.pids())
                        st1 = shard_counts(admin_stats(srv))
                        r[wname] = {"rps": w["rps"], "requests": w["requests"],
                                    "cpu_s": cpu_delta_s(c0, c1),
                                    "sup_cpu_s": (c1.get(srv.pid, 0) - c0.get(srv.pid, 0)) / CLK_TCK,
                                    "errors": w["errors"],
                                    "shards": [st1[k][0] - st0.get(k, (0,))[0] for k in sorted(st1)]}
                        if w["errors"]:
                            data["notes"].append("%d shard(s), repeat %d, %s: wrk errors %s, non-2xx %d"
                                                 % (workers, rep + 1, wname, w["socket_errors"],
                                                    w["non2xx"]))
                        say("  %s: %.0f req/s, %.2f CPU-s/100k" % (
                            wname, w["rps"] or 0, per100k(r[wname]) or 0))
                        time.sleep(0.3)
                finally:
                    alive = srv.alive()
                    srv.stop()
                    if not alive:
                        data["notes"].append("%d shard(s), repeat %d: proxy exited" % (workers, rep + 1))
                data["runs"].append(r)
        data["scaling_s"] = time.monotonic() - t0

        # memory against idle connections
        t1 = time.monotonic()
        hard = hard_nofile()
        hap_cap = ((hard - 300) // 2) // 100 * 100
        names = ["shardproxy-auto"] + (["haproxy"] if shutil.which("haproxy") else [])
        for name in names:
            say("memory curve: %s" % name)
            if name == "haproxy":
                srv = start_haproxy(a.workers, backend.port)
            else:
                srv = start_shardproxy(ctx.shardproxy, a.workers, "auto", "hash", backend.port,
                                       max(SCALING_LEVELS) + 2000)
            m = {"variant": name, "points": [], "skipped": []}
            data["mem"].append(m)
            if srv is None:
                m["skipped"].append("did not start")
                continue
            procs = []
            try:
                time.sleep(0.5)
                m["fresh_kib"] = pss_kib(srv.pids())
                m["nprocs"] = len(srv.pids())
                held = 0
                for level in SCALING_LEVELS:
                    target = level
                    if name == "haproxy" and level > hap_cap:
                        m["skipped"].append(
                            "%s connections: HAProxy holds the client and the upstream socket of "
                            "every connection in its one process, 2 × %s = %s descriptors plus "
                            "its listeners, over the hard RLIMIT_NOFILE of %s; measured at %s "
                            "instead (its maxconn here is %s)"
                            % (fmt_int(level), fmt_int(level), fmt_int(2 * level), fmt_int(hard),
                               fmt_int(hap_cap), fmt_int((hard - 200) // 2)))
                        target = hap_cap
                    if target <= held:
                        continue
                    add = target - held
                    ps, ok, failed = hold_idle(srv.port, add, max(1, -(-add // 4000)))
                    procs += ps
                    held += ok
                    time.sleep(1.0)
                    m["points"].append({"level": level, "target": target, "held": held,
                                        "failed": failed, "pss_kib": pss_kib(srv.pids())})
                    if failed:
                        data["notes"].append("%s at %s: %d connections failed"
                                             % (name, fmt_int(target), failed))
                    say("  %s held: %.1f MiB" % (fmt_int(held), m["points"][-1]["pss_kib"] / 1024))
            finally:
                release_idle(procs)
                srv.stop()
        data["mem_s"] = time.monotonic() - t1
    finally:
        if backend is not getattr(ctx, "backend", None):
            backend.stop()
    data["elapsed_s"] = time.monotonic() - t0
    return data


def fmt_int(n):
    return "{:,}".format(n)


def sig3(x):
    """x rounded to 3 significant figures, as an int (a projection is no more precise)."""
    return int(float("%.3g" % x))


def scaling_section(d):
    """Markdown of the scaling section (starting with SCALING_TITLE)."""
    md = [SCALING_TITLE + "\n"]
    md.append("Generated by %s on %s (git `%s`), in %.0f s; load average (1/5/15 min) at the "
              "start %s. A full `make bench` measures it again at its end and rewrites it; "
              "runs that do not (quick mode, `--only`, `--no-scaling`) keep it as it is. "
              "`python3 tests/bench/bench.py --scaling` measures only this section.\n"
              % (d.get("how", "`python3 tests/bench/bench.py --scaling`"), d["when"], d["git"],
                 d.get("elapsed_s", 0), d["loadavg"]))
    pins = d["pins"]
    md.append("### Cost per request with 1 and 2 shards\n")
    md.append(
        "shardproxy, `\"relay\": \"auto\"`, `\"steering\": \"hash\"`, a fresh proxy per run; "
        "%d repeat(s), each running 1 shard then 2 shards (interleaved), %d s per wrk run; "
        "median (min–max). Pinned with `taskset -c`: wrk (`-t%d -c50`) and the backend (%s) "
        "on CPU %s; the proxy launched on CPU %s for 1 shard and on CPUs %s for 2 shards "
        "(`\"cpu_affinity\": \"pin\"`: shard slot *i* on the *i*-th CPU it is allowed; read back from "
        "`/proc/PID/status`: 1 shard: %s; 2 shards: %s). CPU = utime + stime of the supervisor "
        "and the shards over the wrk run (the supervisor's own share is its column).\n"
        % (d["repeats"], d["duration"], d["wrk_threads"], d["backend"], pins["load"], pins["1"],
           pins["2"], d["affinity"].get("1", "?"), d["affinity"].get("2", "?")))
    if d["nproc"] <= 2:
        md.append(
            "**This is not a clean scaling measurement.** The box has %d CPUs and the load "
            "generator and the backend must run somewhere: the 1-shard run gives that shard "
            "CPU 0 to itself, but in the 2-shard run the second shard shares CPU %s with wrk "
            "and the backend, so its req/s says how much the second shard can take from a core "
            "that is already busy, not what a second core adds. What this box can show cleanly "
            "is the CPU cost per request with 1 shard and whether it changes with 2.\n"
            % (d["nproc"], pins["load"]))
    rows = []
    summ, summ_busy, sup_max, tot_cpu = {}, {}, 0.0, []
    for workers in (1, 2):
        runs = [r for r in d["runs"] if r["workers"] == workers]
        for wname, label in (("keepalive", "keep-alive"), ("close", "new connection per request")):
            ws = [r[wname] for r in runs if r.get(wname)]
            rps = med_range([w["rps"] for w in ws])
            cpu = med_range([per100k(w) for w in ws])
            busy = med_range([w["cpu_s"] / d["duration"] / workers * 100 for w in ws
                              if w.get("cpu_s") is not None])
            sup = med_range([w["sup_cpu_s"] for w in ws])
            spread = []
            for w in ws:
                tot = sum(w["shards"]) or 1
                spread.append("/".join("%.0f%%" % (100.0 * x / tot) for x in w["shards"]))
            summ[(workers, wname)] = (rps[0], cpu[0])
            summ_busy[(workers, wname)] = busy[0]
            sup_max = max([sup_max] + [w["sup_cpu_s"] for w in ws])
            tot_cpu += [w["cpu_s"] for w in ws if w.get("cpu_s") is not None]
            if rps[0] is None:
                rows.append("| %d | %s | – | – | – | – | – |" % (workers, label))
                continue
            rows.append("| %d | %s | %s (%s–%s) | %.2f (%.2f–%.2f) | %.0f%% | %.2f | %s |" % (
                workers, label, fmt_int(round(rps[0])), fmt_int(round(rps[1])),
                fmt_int(round(rps[2])), cpu[0], cpu[1], cpu[2], busy[0] or 0, sup[0] or 0,
                ", ".join(sorted(set(spread))) if workers > 1 else "–"))
    md.append("| shards | workload | req/s | proxy CPU-s per 100k req | proxy CPU busy (% of "
              "its shards' cores) | supervisor CPU-s per run | accepted per shard |\n"
              "|---:|---|---:|---:|---:|---:|---|")
    md.extend(rows)
    md.append("")
    ratio = []
    for wname, label in (("keepalive", "keep-alive"), ("close", "new connection")):
        r1, c1 = summ.get((1, wname), (None, None))
        r2, c2 = summ.get((2, wname), (None, None))
        if r1 and r2 and c1 and c2:
            ratio.append("%s: 2 shards / 1 shard = %.2f× req/s, %.2f× CPU per request"
                         % (label, r2 / r1, c2 / c1))
    if ratio:
        md.append("Ratios of medians: " + "; ".join(ratio) + ".\n")

    md.append("### Memory against idle connections\n")
    md.append("PSS (`/proc/PID/smaps_rollup`, summed over every process of the proxy: supervisor "
              "+ shards for shardproxy, HAProxy's one process), one proxy per variant with %d "
              "workers, not pinned, fresh (no load before), then holding 1,000, then 5,000, then "
              "10,000 idle connections (each answered one `GET /`, opened by client processes of "
              "at most 4,000 connections each, whose descriptor limits are their own); read 1 s "
              "after each step. One pass, not a median; shardproxy's "
              "`limits.max_connections` is 12,000 for every step, so its slot table is the same "
              "size throughout.\n" % (d["nproc"]))
    md.append("| variant | processes | fresh | 1,000 idle | 5,000 idle | 10,000 idle | "
              "KiB per connection (1,000 → most held) |\n|---|---:|---:|---:|---:|---:|---:|")
    for m in d["mem"]:
        cells = []
        by = {p["level"]: p for p in m["points"]}
        for level in SCALING_LEVELS:
            p = by.get(level)
            if not p:
                cells.append("not measured")
            elif p["target"] != level or p["held"] != level:
                cells.append("%.1f MiB (at %s)" % (p["pss_kib"] / 1024, fmt_int(p["held"])))
            else:
                cells.append("%.1f MiB" % (p["pss_kib"] / 1024))
        slope = "–"
        if len(m["points"]) >= 2:
            p0, p1 = m["points"][0], m["points"][-1]
            if p1["held"] > p0["held"]:
                slope = "%.2f" % ((p1["pss_kib"] - p0["pss_kib"]) / (p1["held"] - p0["held"]))
        md.append("| %s | %s | %s | %s | %s |" % (
            m["variant"], m.get("nprocs", "–"),
            "%.1f MiB" % (m["fresh_kib"] / 1024) if m.get("fresh_kib") else "–",
            " | ".join(cells), slope))
    md.append("")
    for m in d["mem"]:
        for s in m["skipped"]:
            md.append("- %s: %s." % (m["variant"], s))
    if any(m["skipped"] for m in d["mem"]):
        md.append("")

    md.append("### Projection to a 16- and a 64-core box\n")
    ka = summ.get((1, "keepalive"), (None, None))[1]
    cl = summ.get((1, "close"), (None, None))[1]
    if ka and cl:
        per_core_ka = 1e5 / ka
        per_core_cl = 1e5 / cl
        md.append(
            "From the 1-shard run (one shard alone on its core): %.2f CPU-s per 100k keep-alive "
            "requests = %.1f µs of proxy CPU per request, so one core fully given to a shard "
            "relays about **%s keep-alive req/s**; %.2f CPU-s per 100k new connections = %.1f µs "
            "per connection, about **%s new connections/s** per core. If that per-request cost "
            "stayed the same on every core (linear scaling, one shard per core, the load "
            "generator and the backends elsewhere):\n"
            % (ka, ka * 10, fmt_int(sig3(per_core_ka)), cl, cl * 10,
               fmt_int(sig3(per_core_cl))))
        md.append("| cores given to shards | keep-alive req/s | new connections/s |\n|---:|---:|---:|")
        for n in (1, 16, 64):
            md.append("| %d | %s | %s |" % (n, fmt_int(sig3(n * per_core_ka)),
                                            fmt_int(sig3(n * per_core_cl))))
        md.append("")
        busy_ka, busy_cl = summ_busy.get((1, "keepalive")), summ_busy.get((1, "close"))
        if busy_ka is not None and busy_cl is not None and max(busy_ka, busy_cl) < 90:
            md.append(
                "The shard was not saturated in those runs (%.0f%% and %.0f%% busy): CPU %s, "
                "running wrk and the backend, was the limit, so the 1-shard req/s above is the "
                "load generator's ceiling and the per-core figure is the measured cost per "
                "request extrapolated to a busy core. A busy shard batches more completions "
                "per `io_uring_enter`, so if anything this overstates the cost per request.\n"
                % (busy_ka, busy_cl, pins["load"]))
        md.append(
            "Read this as the ceiling linear scaling would give, not as a promise. On loopback "
            "the kernel processes a segment's receive path in the sender's context, so the "
            "proxy's CPU here includes part of the TCP receive work of wrk and the backend, "
            "and theirs includes part of the proxy's; with a NIC, the receive softirq runs on "
            "whichever core the queue's interrupt targets, and the driver, interrupts and "
            "(for new connections) SYN/ACK and TIME_WAIT handling come on top. What would "
            "stop the line from staying straight:\n")
    else:
        md.append("No 1-shard figures were measured, so no projection.\n")
    md.append(SCALING_LIMITS.format(
        sup="at most %.2f CPU-s in any run, while the whole proxy used %.2f–%.2f CPU-s per run"
        % (sup_max, min(tot_cpu), max(tot_cpu)) if tot_cpu else "not measured in this run"))
    if d["notes"]:
        md.append("Notes from the run:\n")
        for n in d["notes"]:
            md.append("- %s" % n)
        md.append("")
    return "\n".join(md) + "\n"


SCALING_LIMITS = """\
- **The kernel's TCP and softirq work per connection.** The profile of a shard
  under new connections is mostly the kernel (handshake, softirq, teardown,
  slab; see Findings); that work scales with cores only as far as the
  kernel's shared structures do: the established and bind hash tables (locked
  per bucket), the listener's SYN handling, and, for the upstream side, the
  ephemeral port search: one source IP to one backend `IP:port` has about
  28,000 ports (`ip_local_port_range`), each held by TIME_WAIT for 60 s after
  the proxy closes first, which caps new upstream connections per
  (source IP, backend) pair well below what 64 cores could accept unless
  `tcp_tw_reuse`, several source addresses or several backends spread them.
- **NIC queues and RSS against `SO_REUSEPORT` steering.** Linear scaling needs
  at least one receive queue per core with its interrupt on that core. With
  `"steering": "hash"` the shard is chosen by the 4-tuple hash independently of
  the queue that received the packets, so a connection's softirq work can run
  on one core and its relay on another (cross-core cache traffic, and
  one core doing all the softirq if the NIC has few queues); `"steering":
  "cpu"` picks the shard pinned to the CPU that handled the SYN, which lines up
  with RSS/RPS when the queues are spread over the cores.
- **The single supervisor is off the data path.** It forks, watches and
  reloads shards and rebuilds the steering maps; it does no accept, connect or
  relay work. Its CPU during the runs (the supervisor column above):
  {sup}. It does not grow with traffic; it would matter only for the reload
  and restart paths.
- **Buffer ring memory per shard.** The copy engine's provided-buffer ring is
  at most 1,024 × 16 KiB = 16 MiB per shard (what it can hold in flight); 64
  shards may touch 1 GiB under bulk traffic, plus each shard's share of the
  session slots (`limits.max_connections`) and its pipe pool for splice. The
  idle-connection curve above is what this costs per connection.
- **Memory bandwidth for copy against splice.** Copy moves every byte through
  user memory (socket → buffer → socket: two copies per direction besides the
  kernel's own), splice moves pages between sockets through a pipe; at tens of
  cores doing bulk, copy hits the memory bus before the CPU, which is why
  `auto` moves bulk directions to splice. Small keep-alive messages are not
  bandwidth-bound.
- **The accept queue per slot.** Each listener has one `SO_REUSEPORT` socket,
  and so one accept queue, per shard slot, shared by the old and new
  generation during a reload; steering balances new connections among the live
  slots, but a burst lands in whichever queues the hash picks, and one slow
  shard's queue fills while others are idle (`least_conn` reads counters that
  lag a burst; see Findings).
"""


def section_of(text, title):
    """The section `title` (a '## ' heading line) of text with its body, up to the
    next '## ' heading, or None."""
    if not text:
        return None
    m = re.search(r"^%s\n.*?(?=^## |\Z)" % re.escape(title), text, re.M | re.S)
    return m.group(0).rstrip("\n") + "\n" if m else None


def put_scaling_section(path, section):
    """Put `section` into the report at path: in place of an existing one, else
    just before '## Findings', else at the end. Nothing from '## Findings' on is
    changed."""
    old = read(path) or ""
    m = re.search(r"^## Findings\n", old, re.M)
    head, tail = (old[:m.start()], old[m.start():]) if m else (old, "")
    ex = re.search(r"^%s\n.*?(?=^## |\Z)" % re.escape(SCALING_TITLE), head, re.M | re.S)
    if ex:
        head = head[:ex.start()] + section + "\n" + head[ex.end():]
    else:
        head = head.rstrip("\n") + "\n\n" + section + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(head + tail)
    os.replace(tmp, path)


# ---- main ---------------------------------------------------------------------


class Ctx:
    pass


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build", help="build directory (default: build)")
    ap.add_argument("--out", default=None, help="write the Markdown report here")
    ap.add_argument("--json", default=None, help="write every raw result here")
    ap.add_argument("--quick", action="store_true", help="1 repeat, 2 s runs (also BENCH_QUICK=1)")
    ap.add_argument("--only", default=None,
                    help="comma-separated variants, from: " + ", ".join(ALL_VARIANTS))
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--duration", type=int, default=None, help="seconds per wrk run")
    ap.add_argument("--rc-duration", type=int, default=None,
                    help="seconds per real-client run (pgbench -T; redis-benchmark -n is sized "
                         "from the last rate to last about this long)")
    ap.add_argument("--workloads", default=None,
                    help="comma-separated workloads, from: " + ", ".join(ALL_WORKLOADS))
    ap.add_argument("--base", default=None, metavar="BINARY",
                    help="another shardproxy binary: a variant NAME@base runs NAME on it, for "
                         "an interleaved A/B of two builds (--only shardproxy-epoll,"
                         "shardproxy-epoll@base)")
    ap.add_argument("--hog", type=int, default=None, metavar="CPU",
                    help="run a busy loop pinned to CPU for the whole run (a box shared with a "
                         "busy process)")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--backend-workers", type=int, default=None,
                    help="backend processes (default: workers)")
    ap.add_argument("--idle", type=int, default=None, help="idle connections to hold")
    ap.add_argument("--idle-clients", type=int, default=None)
    ap.add_argument("--idle-repeats", type=int, default=1,
                    help="hold the idle connections in this many repeats (default 1: PSS per "
                         "connection moves little from one repeat to the next)")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="stop starting new repeats after this many seconds")
    ap.add_argument("--scaling", action="store_true",
                    help="run only the scaling and memory-curve measurements (1 and 2 shards, "
                         "pinned; PSS at 1,000/5,000/10,000 idle connections) and put their "
                         "section into the report (default --out docs/BENCHMARKS.md)")
    ap.add_argument("--no-scaling", action="store_true",
                    help="do not append the scaling measurements to a full run")
    ap.add_argument("--scaling-repeats", type=int, default=3)
    ap.add_argument("--scaling-duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--idle-client", nargs=2, type=int, metavar=("PORT", "COUNT"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if os.environ.get("BENCH_QUICK") == "1":
        a.quick = True
    if a.repeats is None:
        a.repeats = 1 if a.quick else 3
    if a.duration is None:
        a.duration = 2 if a.quick else 5
    if a.rc_duration is None:
        a.rc_duration = 2 if a.quick else 4
    a.workloads = ALL_WORKLOADS if not a.workloads else [w.strip() for w in a.workloads.split(",")]
    bad = [w for w in a.workloads if w not in ALL_WORKLOADS]
    if bad:
        ap.error("unknown workload(s) %s; known: %s" % (", ".join(bad), ", ".join(ALL_WORKLOADS)))
    if a.backend_workers is None:
        a.backend_workers = a.workers
    if a.time_limit is None:
        a.time_limit = 150 if a.quick else 720
    return a


def scaling_main(a):
    """--scaling: only the scaling and memory-curve measurements, written as one
    section of the existing report."""
    t_start = time.monotonic()
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = Ctx()
    ctx.args = a
    build = a.build if os.path.isabs(a.build) else os.path.join(REPO, a.build)
    ctx.shardproxy = os.path.join(build, "shardproxy")
    ctx.backend = None
    ctx.backend_desc = None
    demo = os.path.join(build, "demo-upstream")
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            say("%s is not installed" % tool)
            return 2
    if not os.access(ctx.shardproxy, os.X_OK) or not os.access(demo, os.X_OK):
        say("%s or %s is missing (make BUILD=%s all)" % (ctx.shardproxy, demo, a.build))
        return 2
    data = run_scaling(ctx, demo)
    section = scaling_section(data)
    print(section)
    print("%.0f s" % (time.monotonic() - t_start))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(data, f, indent=1, default=str)
    out = a.out or "docs/BENCHMARKS.md"
    out = out if os.path.isabs(out) else os.path.join(REPO, out)
    put_scaling_section(out, section)
    say("wrote the scaling section of %s" % out)
    return 0


def main(argv):
    a = parse_args(argv)
    if a.idle_client:
        idle_client_main(*a.idle_client)
        return 0
    if a.scaling:
        return scaling_main(a)

    t_start = time.monotonic()
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    variants = DEFAULT_VARIANTS if not a.only else [v.strip() for v in a.only.split(",") if v.strip()]
    unknown = [v for v in variants
               if v not in ALL_VARIANTS and not (a.base and v.endswith("@base") and
                                                 v[:-5] in SHARDPROXY_VARIANTS)]
    if unknown:
        say("unknown variant(s) %s; known: %s" % (", ".join(unknown), ", ".join(ALL_VARIANTS)))
        return 2

    # Raise our own descriptor limit; children inherit it.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    ctx = Ctx()
    ctx.args = a
    build = a.build if os.path.isabs(a.build) else os.path.join(REPO, a.build)
    ctx.shardproxy = os.path.join(build, "shardproxy")
    demo = os.path.join(build, "demo-upstream")

    if not shutil.which("wrk"):
        say("wrk is not installed (apt-get install wrk)")
        return 2
    for tool, vs in (("haproxy", ["haproxy"]), ("nginx", ["nginx"])):
        if not shutil.which(tool) and any(v in variants for v in vs):
            say("%s is not installed: its variant is skipped" % tool)
            variants = [v for v in variants if v not in vs]
    if any(v.startswith("shardproxy") for v in variants) and not os.access(ctx.shardproxy, os.X_OK):
        say("%s is missing (make BUILD=%s all)" % (ctx.shardproxy, a.build))
        return 2

    # Idle connections: HAProxy is one process, so one process must hold two
    # descriptors per connection (client + upstream) under the hard limit.
    if a.idle is None:
        want = 1000 if a.quick else 10000
        cap = (hard - 300) // 2
        if "haproxy" in variants and want > cap:
            a.idle = 5000 if cap >= 5000 else max(100, cap)
            ctx.idle_note = ("10,000 was the goal, but RLIMIT_NOFILE's hard limit here is %d per "
                             "process and HAProxy keeps both sockets of each connection in its "
                             "one process, so every proxy gets %d." % (hard, a.idle))
        else:
            a.idle = want
            ctx.idle_note = ""
    else:
        ctx.idle_note = ""
    if a.idle_clients is None:
        a.idle_clients = max(1, -(-a.idle // 4000))

    ctx.backend_desc = None
    if os.access(demo, os.X_OK):
        ctx.backend = start_demo_backend(demo, a.backend_workers)
        ctx.backend_desc = "`demo-upstream -w %d` (tests/demo/demo_upstream.c: epoll, one " \
                           "process per worker, SO_REUSEPORT)" % a.backend_workers
    elif shutil.which("nginx"):
        say("%s missing: using nginx http as the backend" % demo)
        ctx.backend = start_nginx_backend(a.backend_workers)
        ctx.backend_desc = "nginx `http` with %d worker(s), `sendfile on` (demo-upstream was " \
                           "not built)" % a.backend_workers
    else:
        say("no backend: neither %s nor nginx" % demo)
        return 2
    say("backend %s on port %d; variants: %s; %d repeat(s) of %d s runs; %d idle connections"
        % (ctx.backend.name, ctx.backend.port, ", ".join(variants), a.repeats, a.duration, a.idle))

    # The real clients' servers, shared by every variant like the HTTP backend.
    notes = []
    ctx.redis = ctx.pg = None
    ctx.redis_rate = {}
    ctx.idle_done = set()
    if any(w.startswith("redis") for w in a.workloads):
        if shutil.which("redis-server") and shutil.which("redis-benchmark"):
            ctx.redis = start_redis()
            if ctx.redis:
                # calibration straight to redis-server: sizes the first runs' -n
                for wname, (_label, depth) in REDIS_WORKLOADS.items():
                    r = run_redis_benchmark(ctx.redis.port, 5000 * depth, depth, 60)
                    if r["rps"]:
                        ctx.redis_rate[(None, wname)] = r["rps"]
        else:
            notes.append("redis workloads skipped: redis-server or redis-benchmark not installed "
                         "(make deps)")
            say(notes[-1])
    if "pg" in a.workloads:
        ctx.pg, why = start_postgres()
        if not ctx.pg:
            notes.append("pgbench workload skipped: %s" % why)
            say(notes[-1])
    hog = None
    if a.hog is not None:
        hog = Hog(a.hog)
        say("busy loop pinned to CPU %d for the whole run" % a.hog)

    info = machine_info(ctx)

    # Which engine does relay auto pick? (one short start, read from the ready line)
    auto_relay = None
    if os.access(ctx.shardproxy, os.X_OK):
        s = start_shardproxy(ctx.shardproxy, a.workers, "auto", "hash", ctx.backend.port, 10000,
                             level="info")
        if s:
            m = re.findall(r"ready: .*relay (\w+)", read(s.logpath) or "")
            s.stop()
            auto_relay = m[-1] if m else None

    results = []
    repeats_done = 0
    per_repeat = None
    for rep in range(a.repeats):
        t_rep = time.monotonic()
        elapsed = t_rep - t_start
        if per_repeat and elapsed + per_repeat > a.time_limit:
            notes.append("stopped after %d of %d repeats to stay within the %.0f s time limit"
                         % (rep, a.repeats, a.time_limit))
            say(notes[-1])
            break
        for v in variants:
            say("repeat %d/%d: %s" % (rep + 1, a.repeats, v))
            for srv in (ctx.backend, ctx.redis, ctx.pg):
                if srv and not srv.alive():
                    raise SystemExit("bench: %s exited; log:\n%s" % (srv.name, srv.log_tail()))
            r = run_variant(ctx, v, rep)
            results.append(r)
            brief = []
            for w in ("keepalive", "close", "bulk", "redis", "redis_p16", "pg"):
                if r.get(w) and r[w].get("rps") is not None:
                    brief.append("%s %.0f req/s" % (w, r[w]["rps"]))
            if r.get("idle") and r["idle"].get("per_conn_kib") is not None:
                brief.append("idle %.2f KiB/conn" % r["idle"]["per_conn_kib"])
            say("  %s%s" % (", ".join(brief), ("; " + "; ".join(r["notes"])) if r["notes"] else ""))
            say("  (%s)" % ", ".join("%s %.1f s" % (k[2:], v) for k, v in r.items()
                                     if k.startswith("t_")))
            for n in r["notes"]:
                notes.append("%s (repeat %d): %s" % (v, rep + 1, n))
        repeats_done += 1
        per_repeat = time.monotonic() - t_rep
    a.repeats = repeats_done
    if hog:
        hog.stop()

    # The scaling and memory curve (~2 min) at the end of a full default run only.
    # Skipped (the report keeps its existing section) when the run is already long.
    scaling = None
    if not a.quick and not a.only and not a.no_scaling and a.workloads == ALL_WORKLOADS \
            and a.hog is None and shutil.which("taskset") \
            and os.access(ctx.shardproxy, os.X_OK) and os.access(demo, os.X_OK):
        if time.monotonic() - t_start > a.time_limit - 100:
            notes.append("scaling section not measured (the run had used %.0f s); the report "
                         "keeps the existing one" % (time.monotonic() - t_start))
            say(notes[-1])
        else:
            scaling = run_scaling(ctx, demo)
            scaling["how"] = "the end of `make bench`"

    summary = summarize(results, variants)
    rows = table_rows(summary, variants)
    elapsed = time.monotonic() - t_start
    print(text_table(rows))
    shard_info = shard_lines(results, variants)
    if shard_info:
        print("\nper-shard connections (shardproxy):")
        for v, rep, text in shard_info:
            print("  %-22s #%d  %s" % (v, rep, text))
    mem = memory_rows(results, variants)
    if mem:
        print("\nPSS (MiB): variant, fresh, after load, with %d idle" % a.idle)
        for v, fresh, before, with_, _n, _np in mem:
            print("  %-22s %8s %8.1f %8.1f" % (v, "%.1f" % fresh if fresh is not None else "-",
                                               before, with_))
    if notes:
        print("\nnotes:")
        for n in notes:
            print("  - " + n)
    print("\n%.0f s" % elapsed)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"info": info, "results": results}, f, indent=1, default=str)
    if a.out:
        out = a.out if os.path.isabs(a.out) else os.path.join(REPO, a.out)
        write_report(ctx, out, info, rows, shard_info, memory_rows(results, variants), notes,
                     elapsed, auto_relay, scaling)
        say("wrote %s" % out)
    return 0


if __name__ == "__main__":
    try:
        rc = main(sys.argv[1:])
    finally:
        cleanup()
    sys.exit(rc)
