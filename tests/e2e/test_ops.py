"""Operations (issue 6): counters that match the traffic across a shard
SIGKILL and a reload, /metrics valid for promtool, an admin endpoint that
turns bad requests away and keeps serving, /healthz during a drain, JSON
access-log lines, the systemd notify protocol, the privilege drop of shards
and `make install`."""

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from datetime import datetime, timezone

import lib
from lib import check


# ---- helpers ----------------------------------------------------------------


SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _samples(text):
    """[(name, {label: value}, float)] of a Prometheus text exposition."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        check(m, "unparsable /metrics line: %r" % line)
        out.append((m.group(1), dict(LABEL_RE.findall(m.group(2) or "")), float(m.group(3))))
    return out


def _sum(samples, name, **labels):
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in labels.items()))


def _ops_proxy(t, workers=2, admin=True, probe=False, **kw):
    """An echo upstream behind a proxy with an admin port. probe=False: no
    test connection is made, so the counters see only the test's traffic."""
    up = t.echo()
    port = lib.free_port()
    aport = lib.free_port() if admin else None
    extra = {"admin": {"listen": "127.0.0.1:%d" % aport}} if admin else {}
    extra.update(kw)
    conf = lib.config([lib.listener("edge", port, "echo")], [lib.upstream("echo", [up.address])],
                      workers=workers, **extra)
    p = t.proxy(conf, probe=probe)
    return up, port, aport, p


def _traffic(port, up, n, seed):
    """n echo sessions of distinct sizes, one after another; returns the bytes sent."""
    total = 0
    for i in range(n):
        data = lib.payload(1000 + 337 * i + seed, seed=seed * 100 + i)
        lib.check_echo(port, data, up, what="session %d (seed %d):" % (i, seed))
        total += len(data)
    return total


def _wait_done(aport, n, timeout_s=5.0):
    """Wait until /stats counts n finished sessions; returns the stats."""
    last = {}

    def done():
        last["st"] = lib.stats(aport)
        return last["st"]["totals"]["closed"]["done"] >= n

    ok = lib.wait_until(done, timeout_s, 0.05)
    check(ok, "/stats: %s sessions done, want %d: totals %s"
          % (last["st"]["totals"]["closed"]["done"], n, last["st"]["totals"]))
    return last["st"]


# ---- counters -----------------------------------------------------------------


@lib.timeout(90)
def test_counters_match_traffic_exactly_across_shard_kill_and_reload(t):
    up, port, aport, p = _ops_proxy(t)
    sent = _traffic(port, up, 10, seed=1)
    before = _wait_done(aport, 10)["totals"]
    check(before["accepted"] == 10 and before["bytes_in"] == sent and before["bytes_out"] == sent,
          "after 10 sessions of %d bytes in all: totals %s" % (sent, before))

    victim = p.wait_shards(2)[0]
    m = p.mark()
    os.kill(victim, signal.SIGKILL)
    p.expect_log(r"shard \d+ restarted", timeout_s=5, after=m, what="after SIGKILL of a shard")
    after_kill = lib.stats(aport)["totals"]
    for k in ("accepted", "bytes_in", "bytes_out"):
        check(after_kill[k] >= before[k], "totals went backwards after a shard SIGKILL: %s %d -> %d"
              % (k, before[k], after_kill[k]))
    sent += _traffic(port, up, 10, seed=2)
    _wait_done(aport, 20)

    m = p.reload()
    p.expect_log(r"reload: generation 2 ready", timeout_s=10, after=m)
    sent += _traffic(port, up, 10, seed=3)
    st = _wait_done(aport, 30)
    p.expect_log(r"generation 1 drained", timeout_s=5, after=m)
    st = lib.stats(aport)

    tot = st["totals"]
    want = {"accepted": 30, "active": 0, "refused": 0, "no_route": 0, "connect_failed": 0,
            "bytes_in": sent, "bytes_out": sent}
    bad = {k: (tot[k], v) for k, v in want.items() if tot[k] != v}
    check(not bad, "/stats totals (got, want) after 30 sessions, a SIGKILL and a reload: %s" % bad)
    check(tot["closed"]["done"] == 30 and sum(tot["closed"].values()) == 30,
          "/stats closed by reason: %s" % tot["closed"])
    check(st["reloads"]["ok"] == 1 and st["reloads"]["count"] == 1 and st["reloads"]["last"]["result"] == "ok",
          "/stats reloads: %s" % st["reloads"])
    check(st["shard_restarts"] == 1, "/stats shard_restarts: %s" % st["shard_restarts"])
    check(st["generation"] == 2, "/stats generation %s" % st["generation"])
    check(sum(s["accepted"] for s in st["slots"]) == 30, "/stats slots: %s" % st["slots"])
    lst = {l["name"]: l for l in st["listeners"]}
    check(lst.get("edge", {}).get("accepted") == 30 and lst["edge"]["bytes_in"] == sent
          and lst["edge"]["bytes_out"] == sent, "/stats listeners: %s" % st["listeners"])
    srv = st["upstreams"][0]["servers"][0]
    check(srv["connect_attempts"] == 30 and srv["connected"] == 30 and srv["connect_failures"] == 0
          and srv["bytes_in"] == sent and srv["bytes_out"] == sent and srv["active"] == 0,
          "/stats server: %s" % srv)

    s = _samples(lib.metrics(aport))
    got = {
        "accepted": _sum(s, "shardproxy_connections_accepted_total"),
        "bytes_in": _sum(s, "shardproxy_bytes_total", direction="client_to_upstream"),
        "bytes_out": _sum(s, "shardproxy_bytes_total", direction="upstream_to_client"),
        "done": _sum(s, "shardproxy_sessions_closed_total", reason="done"),
        "listener": _sum(s, "shardproxy_listener_connections_accepted_total", listener="edge"),
        "attempts": _sum(s, "shardproxy_server_connect_attempts_total", upstream="echo", server=up.address),
        "server_in": _sum(s, "shardproxy_server_bytes_total", server=up.address, direction="client_to_upstream"),
        "reloads": _sum(s, "shardproxy_reloads_total", result="ok"),
        "restarts": _sum(s, "shardproxy_shard_restarts_total"),
    }
    want = {"accepted": 30, "bytes_in": sent, "bytes_out": sent, "done": 30, "listener": 30,
            "attempts": 30, "server_in": sent, "reloads": 1, "restarts": 1}
    bad = {k: (got[k], v) for k, v in want.items() if got[k] != v}
    check(not bad, "/metrics (got, want): %s" % bad)


def test_counters_count_connect_failures_and_unrouted_connections(t):
    down = t.down_port()
    up = t.echo()
    port, aport = lib.free_port(), lib.free_port()
    conf = lib.config(
        [lib.listener("edge", port, routes=[{"match": {"source": ["10.0.0.0/8"]}, "upstream": "u"}]),
         lib.listener("main", lib.free_port(), "u")],
        [lib.upstream("u", [down.address, up.address], retries=0, balance="round_robin")],
        workers=1, admin={"listen": "127.0.0.1:%d" % aport})
    p = t.proxy(conf, probe=False)
    for _ in range(3):  # 127.0.0.1 is not in 10.0.0.0/8: no route
        s = lib.connect(port)
        lib.wait_closed(s, 5)
        s.close()
    main_port = int(conf["listeners"][1]["listen"].rsplit(":", 1)[1])
    for _ in range(4):  # round robin over a refusing server and a live one, no retry
        s = lib.connect(main_port)
        s.settimeout(5)
        try:
            s.sendall(b"x")
            s.recv(10)
        except OSError:
            pass
        s.close()

    def settled():
        st = lib.stats(aport)
        return st if st["totals"]["accepted"] == 7 and st["totals"]["active"] == 0 else None

    st = lib.wait_until(settled, 5, 0.05) or lib.stats(aport)
    tot = st["totals"]
    check(tot["accepted"] == 7 and tot["no_route"] == 3 and tot["closed"]["no_route"] == 3,
          "unrouted: totals %s" % tot)
    lst = {l["name"]: l for l in st["listeners"]}
    check(lst["edge"]["no_route"] == 3 and lst["main"]["no_route"] == 0, "listeners: %s" % lst)
    srv = {x["address"]: x for x in st["upstreams"][0]["servers"]}
    d = srv[down.address]
    check(d["connect_attempts"] == 2 and d["connect_failures"] == 2 and d["connected"] == 0,
          "refusing server: %s" % d)
    check(d["last_failure"] and "refused" in d["last_failure"]["error"].lower()
          and abs(d["last_failure"]["time"] - time.time()) < 60, "last_failure: %s" % d["last_failure"])
    check(tot["connect_failed"] == 2 and tot["closed"]["connect_failed"] == 2, "connect_failed: %s" % tot)
    check(srv[up.address]["connected"] == 2, "live server: %s" % srv[up.address])


# ---- /metrics ------------------------------------------------------------------


def test_metrics_pass_promtool_check_metrics(t):
    promtool = shutil.which("promtool")
    if not promtool:
        raise lib.Skip("promtool not installed (Debian package prometheus)")
    up, port, aport, p = _ops_proxy(t)
    _traffic(port, up, 3, seed=7)
    _wait_done(aport, 3)
    m = p.reload()
    p.expect_log(r"reload: generation 2 ready", timeout_s=10, after=m)
    text = lib.metrics(aport)
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    check(r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(),
          "promtool check metrics: exit %d\n%s%s\n--- metrics:\n%s"
          % (r.returncode, r.stdout, r.stderr, text[:3000]))
    names = {n for n, _, _ in _samples(text)}
    for want in ("shardproxy_connections_accepted_total", "shardproxy_bytes_total",
                 "shardproxy_server_connect_attempts_total", "shardproxy_listener_connections_accepted_total",
                 "shardproxy_server_up", "shardproxy_reloads_total", "shardproxy_info"):
        check(want in names, "/metrics lacks %s" % want)
    for line in text.splitlines():
        if line.startswith("shardproxy_") and "{" in line and not line.startswith("shardproxy_info"):
            labels = dict(LABEL_RE.findall(line.split("{", 1)[1].rsplit("}", 1)[0]))
            check(set(labels) <= {"shard", "listener", "upstream", "server", "direction", "reason", "result",
                                  "address", "state"},
                  "unexpected labels in %r" % line)


# ---- admin endpoint -------------------------------------------------------------


def test_admin_bad_requests_get_400_and_supervisor_keeps_serving(t):
    up, port, aport, p = _ops_proxy(t)
    bad = [
        b"BLAH\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /stats\r\n\r\n",
        b"GET stats HTTP/1.1\r\n\r\n",
        b"GET /stats HTTP/9.9\r\n\r\n",
        b"GET /st\x00ats HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64) + b"\r\n\r\n",
        b"GET /" + b"a" * 600 + b" HTTP/1.1\r\n\r\n",
        b"GET /stats HTTP/1.1\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n",  # oversized
    ]
    for req in bad:
        resp = lib.admin_raw(aport, req)
        check(resp.startswith(b"HTTP/1.1 400 "), "request %r... got %r, want 400" % (req[:40], resp[:80]))
    st, _, _ = lib.admin_http(aport, "/no/such/path")
    check(st == 404, "unknown path: %d, want 404" % st)
    resp = lib.admin_raw(aport, b"POST /stats HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    check(resp.startswith(b"HTTP/1.1 403 "), "POST on the TCP port: %r" % resp[:60])
    resp = lib.admin_raw(aport, b"PUT /stats HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    check(resp.startswith(b"HTTP/1.1 405 "), "PUT: %r" % resp[:60])
    resp = lib.admin_raw(aport, b"HEAD /healthz HTTP/1.1\r\n\r\n")
    check(resp.startswith(b"HTTP/1.1 200 ") and resp.endswith(b"\r\n\r\n"), "HEAD: %r" % resp[:200])

    # Slow clients: one that never finishes its request is cut off; meanwhile
    # more of them than the admin has room for never block the supervisor.
    slow = []
    for _ in range(24):
        s = socket.create_connection((lib.LOOPBACK, aport), timeout=5)
        s.sendall(b"GET /stats HTTP/1.1\r\n")
        slow.append(s)
    t0 = time.monotonic()
    lib.check_echo(port, b"relay unaffected by slow admin clients", up)
    s0 = slow[0]
    s0.settimeout(5)
    try:
        d = s0.recv(100)
    except OSError:
        d = b""
    cut = time.monotonic() - t0
    check(d == b"" and cut < 4.5, "a stalled admin request was not cut off (%r after %.1f s)" % (d, cut))
    for s in slow:
        s.close()
    st = lib.wait_until(lambda: lib.admin_status(aport, "/stats")[0] == 200, 5, 0.1)
    check(st, "/stats not served after the slow clients left")
    check(p.alive(), "supervisor died")
    lib.check_echo(port, b"still relays", up)


def test_healthz_200_while_serving_503_while_draining(t):
    up, port, aport, p = _ops_proxy(t, limits={"drain_timeout_ms": 20000})
    st, _, body = lib.admin_http(aport, "/healthz")
    check(st == 200, "/healthz while serving: %d %r" % (st, body))
    s = lib.connect(port)
    lib.roundtrip(s)  # holds the drain open
    p.signal(signal.SIGTERM)
    got = lib.wait_until(lambda: lib.admin_status(aport, "/healthz")[0] == 503, 3, 0.05)
    check(got, "/healthz did not turn 503 during the drain")
    check(lib.stats(aport)["state"] == "draining", "/stats state during drain")
    s.close()
    check(p.wait_exit(10) == 0, "exit after drain: %s; log:\n%s" % (p.returncode, p.tail()))


# ---- access log -----------------------------------------------------------------


def test_access_log_json_file_lines_parse_and_match_sessions(t):
    logf = os.path.join(t.tmpdir, "access.log")
    up, port, aport, p = _ops_proxy(t, log={"level": "info", "format": "json", "access_log": logf})
    sizes = [1, 700, 70000, 5]
    ports = {}
    for i, n in enumerate(sizes):
        s = lib.connect(port)
        ports[s.getsockname()[1]] = n
        r = lib.echo_transfer(port, lib.payload(n, seed=40 + i), sock=s)
        check(r["received"] == n, "session %d: %s" % (i, r))
    _wait_done(aport, len(sizes))

    def lines():
        try:
            with open(logf) as f:
                return f.read().splitlines()
        except OSError:
            return []

    check(lib.wait_until(lambda: len(lines()) >= len(sizes), 5), "access log file has %d lines" % len(lines()))
    seen = {}
    for l in lines():
        try:
            e = json.loads(l)
        except ValueError:
            lib.fail("access log line is not a JSON object: %r" % l)
        for k in ("time", "listener", "client", "route", "upstream", "server", "bytes_in", "bytes_out",
                  "duration_ms", "end"):
            check(k in e, "access log line lacks %s: %r" % (k, l))
        when = datetime.strptime(e["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        check(abs(when.timestamp() - time.time()) < 60, "access log time %s is not now" % e["time"])
        seen[int(e["client"].rsplit(":", 1)[1])] = e
    for cport, n in ports.items():
        e = seen.get(cport)
        check(e, "no access log line for client port %d; lines: %s" % (cport, lines()))
        check(e["bytes_in"] == n and e["bytes_out"] == n and e["end"] == "done" and e["listener"] == "edge"
              and e["upstream"] == "echo" and e["server"] == up.address and e["route"] == 0,
              "access log line for %d bytes: %s" % (n, e))
    check(not any('"listener"' in l for l in p.lines()), "access log lines also went to stderr")

    # A reload reopens the file: rotation is mv + SIGHUP.
    os.rename(logf, logf + ".1")
    m = p.reload()
    p.expect_log(r"reload: generation 2 ready", timeout_s=10, after=m)
    lib.check_echo(port, b"after rotation", up)
    check(lib.wait_until(lambda: len(lines()) == 1, 5), "after rotation and reload, new file has %s" % lines())


# ---- systemd notify -------------------------------------------------------------


def _next_msg(sock, timeout_s=10):
    sock.settimeout(timeout_s)
    try:
        return sock.recv(4096).decode()
    except socket.timeout:
        lib.fail("no sd_notify message within %.0f s" % timeout_s)


def _sd_notify_order(t, abstract):
    sock, (up, port, aport, p) = lib.started_with_notify(t, lambda: _ops_proxy(t, admin=False),
                                                         abstract)
    msgs = [_next_msg(sock)]
    check("READY=1" in msgs[0].split("\n") and "MAINPID=%d" % p.pid in msgs[0], "first message: %r" % msgs[0])
    lib.check_echo(port, b"serving", up)

    p.reload()
    msgs.append(_next_msg(sock))
    msgs.append(_next_msg(sock))
    fields = msgs[1].split("\n")
    check("RELOADING=1" in fields, "after SIGHUP: %r, want RELOADING=1" % msgs[1])
    usec = [f for f in fields if f.startswith("MONOTONIC_USEC=")]
    check(usec and abs(int(usec[0].split("=")[1]) - time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6) < 30e6,
          "RELOADING=1 without a current MONOTONIC_USEC: %r" % msgs[1])
    check("READY=1" in msgs[2].split("\n"), "after the reload: %r, want READY=1" % msgs[2])

    # A failed reload is a reload too: RELOADING=1, then READY=1 (old config serving).
    lib.write_config(p.path, "{ not json")
    p.signal(signal.SIGHUP)
    m1, m2 = _next_msg(sock), _next_msg(sock)
    check("RELOADING=1" in m1.split("\n") and "READY=1" in m2.split("\n") and "failed" in m2,
          "failed reload: %r then %r" % (m1, m2))

    p.signal(signal.SIGTERM)
    last = _next_msg(sock)
    check("STOPPING=1" in last.split("\n"), "after SIGTERM: %r, want STOPPING=1" % last)
    check(p.wait_exit(10) == 0, "exit status %s" % p.returncode)
    order = [next(f for f in m.split("\n") if f in ("READY=1", "RELOADING=1", "STOPPING=1"))
             for m in msgs + [m1, m2, last]]
    check(order == ["READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1", "STOPPING=1"],
          "sd_notify order: %s" % order)


def test_sd_notify_ready_reloading_ready_stopping_in_order(t):
    _sd_notify_order(t, abstract=False)


def test_sd_notify_abstract_socket_name(t):
    _sd_notify_order(t, abstract=True)


# ---- privilege drop -------------------------------------------------------------


def _ids(pid):
    with open("/proc/%d/status" % pid) as f:
        st = f.read()
    uid = [int(x) for x in re.search(r"^Uid:\s+(.*)$", st, re.M).group(1).split()]
    gid = [int(x) for x in re.search(r"^Gid:\s+(.*)$", st, re.M).group(1).split()]
    groups = re.search(r"^Groups:[ \t]*(.*)$", st, re.M).group(1).split()
    return uid, gid, groups


@lib.needs("root")
def test_privilege_drop_shards_run_as_nobody_and_reload_still_works(t):
    if os.geteuid() != 0:
        raise lib.Skip("needs root to drop privileges")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        raise lib.Skip("no user nobody")
    up, port, aport, p = _ops_proxy(t, user="nobody", relay="auto")
    want = nobody.pw_uid
    gid = nobody.pw_gid

    def check_ids(what):
        shards = p.wait_shards(2)
        for pid in shards:
            uid, g, groups = _ids(pid)
            check(uid == [want] * 4, "%s: shard %d Uid %s, want %d everywhere" % (what, pid, uid, want))
            check(g == [gid] * 4, "%s: shard %d Gid %s, want %d" % (what, pid, g, gid))
            check(groups == [], "%s: shard %d kept supplementary groups %s" % (what, pid, groups))
        check(_ids(p.pid)[0][0] == 0, "%s: the supervisor must stay root (reload binds)" % what)

    check_ids("at start")
    lib.check_echo(port, lib.payload(300000, seed=9), up, what="as nobody:")
    # Reload adds a listener: the root supervisor binds it, new shards drop again.
    port2 = lib.free_port()
    conf = dict(p.conf)
    conf["listeners"] = conf["listeners"] + [lib.listener("second", port2, "echo")]
    m = p.reload(conf)
    p.expect_log(r"reload: generation 2 ready", timeout_s=10, after=m)
    p.expect_log(r"generation 1 drained", timeout_s=10, after=m)
    check_ids("after reload")
    lib.check_echo(port2, b"new listener after reload, as nobody", up)
    victim = p.shards()[0]
    m = p.mark()
    os.kill(victim, signal.SIGKILL)
    p.expect_log(r"shard \d+ restarted", timeout_s=5, after=m)
    check_ids("after a shard restart")
    lib.check_echo(port, b"after restart", up)
    st = lib.stats(aport)
    check(st["user"] == "nobody", "/stats user: %r" % st["user"])


def test_unknown_user_is_a_config_error_with_position(t):
    path = t.file("conf.json", json.dumps(lib.config(
        [lib.listener("l", lib.free_port(), "u")], [lib.upstream("u", ["127.0.0.1:9"])],
        user="no-such-user-e2e"), indent=2))
    rc, out = t.run(["-t", "-c", path])
    check(rc == 1 and re.search(r":\d+:\d+: user: unknown user \"no-such-user-e2e\"", out),
          "-t with an unknown user: exit %d, %r" % (rc, out))


# ---- make install ---------------------------------------------------------------


@lib.timeout(240)
def test_make_install_into_destdir_installs_every_file(t):
    if not shutil.which("make"):
        raise lib.Skip("make not installed")
    dest = os.path.join(t.tmpdir, "root")
    build = os.path.relpath(t.build, lib.REPO)

    with open(t.binary, "rb") as f:
        san = ["SANITIZE=1"] if b"AddressSanitizer" in f.read() else []

    def install():
        r = subprocess.run(["make", "-s", "-C", lib.REPO, "BUILD=" + build, "DESTDIR=" + dest,
                            "PREFIX=/usr/local"] + san + ["install"], capture_output=True, text=True, timeout=200)
        check(r.returncode == 0, "make install: exit %d\n%s%s" % (r.returncode, r.stdout[-2000:], r.stderr[-2000:]))

    install()
    files = {
        "usr/local/sbin/shardproxy": 0o755,
        "etc/shardproxy/shardproxy.json": 0o644,
        "usr/local/share/man/man8/shardproxy.8": 0o644,
        "usr/local/lib/systemd/system/shardproxy.service": 0o644,
    }
    for rel, mode in files.items():
        path = os.path.join(dest, rel)
        check(os.path.isfile(path), "make install did not install /%s" % rel)
        check(os.stat(path).st_mode & 0o777 == mode, "/%s mode %o, want %o" % (rel, os.stat(path).st_mode & 0o777, mode))
    binary = os.path.join(dest, "usr/local/sbin/shardproxy")
    conf = os.path.join(dest, "etc/shardproxy/shardproxy.json")
    r = subprocess.run([binary, "-t", "-c", conf], capture_output=True, text=True, timeout=20)
    check(r.returncode == 0 and r.stdout.strip() == "ok", "installed config: %s%s" % (r.stdout, r.stderr))
    with open(os.path.join(dest, "usr/local/lib/systemd/system/shardproxy.service")) as f:
        unit = f.read()
    for want in ("Type=notify", "ExecStart=/usr/local/sbin/shardproxy -c /etc/shardproxy/shardproxy.json",
                 "ExecReload=/bin/kill -HUP $MAINPID", "LimitNOFILE=1048576", "CAP_NET_BIND_SERVICE"):
        check(want in unit, "unit lacks %r:\n%s" % (want, unit))
    if shutil.which("systemd-analyze"):  # unknown directives, bad values
        r = subprocess.run(["systemd-analyze", "--man=no", "verify",
                            os.path.join(dest, "usr/local/lib/systemd/system/shardproxy.service")],
                           capture_output=True, text=True, timeout=30)
        issues = [l for l in (r.stdout + r.stderr).splitlines()
                  if l.strip() and "/usr/local/sbin/shardproxy is not executable" not in l]
        check(not issues, "systemd-analyze verify:\n%s" % "\n".join(issues))
    if shutil.which("groff"):
        r = subprocess.run(["groff", "-man", "-ww", "-z", os.path.join(dest, "usr/local/share/man/man8/shardproxy.8")],
                           capture_output=True, text=True, timeout=20)
        check(r.returncode == 0 and not r.stderr.strip(), "groff warnings on the man page:\n%s" % r.stderr)

    # An existing configuration is the operator's: a second install keeps it.
    with open(conf, "a") as f:
        f.write("\n")
    edited = open(conf).read()
    install()
    check(open(conf).read() == edited, "make install overwrote an existing /etc/shardproxy/shardproxy.json")

    r = subprocess.run(["make", "-s", "-C", lib.REPO, "BUILD=" + build, "DESTDIR=" + dest, "PREFIX=/usr/local",
                        "uninstall"], capture_output=True, text=True, timeout=60)
    check(r.returncode == 0, "make uninstall: %s%s" % (r.stdout, r.stderr))
    check(not os.path.exists(binary), "make uninstall left the binary")
    check(os.path.exists(conf), "make uninstall removed the operator's configuration")
