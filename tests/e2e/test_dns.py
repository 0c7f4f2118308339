"""Upstream host names resolved asynchronously with c-ares (issue 14 item 3,
issue 11 item 7): one server per address, re-resolution every
resolve_interval_ms applied to new connections without a reload and without
touching open ones, the last good addresses kept (and the failure counted)
when the nameserver stops answering, and a supervisor that keeps serving
while a reload waits for a nameserver that never answers. The nameserver is
tests/e2e/fakedns.py on 127.0.0.1, changed by each test as it runs."""

import json
import os
import signal
import socket
import time

import lib
from lib import check
from fakedns import FakeDns

NAME = "svc.e2e.test"


def _upstream(st, name="web"):
    for u in st["upstreams"]:
        if u["name"] == name:
            return u
    lib.fail("no upstream %s in /stats" % name)


def _resolved(aport):
    """The addresses the proxy has for NAME, as /stats lists them."""
    for s in _upstream(lib.stats(aport))["servers"]:
        if s["address"].startswith(NAME):
            return sorted(r["address"] for r in s.get("resolved", []))
    return []


def _echo_on(t, ip, port, name):
    return t.server(lib.EchoServer, name=name, greeting=name.encode() + b"\n", host=ip, port=port)


def _which(port):
    s = lib.connect(port)
    s.sendall(b"x")
    name = lib.recv_line(s).strip().decode()
    lib.recv_exact(s, 1)
    return s, name


def _spread(port, n):
    got = {}
    for _ in range(n):
        s, name = _which(port)
        got[name] = got.get(name, 0) + 1
        s.close()
    return got


def _setup(t, answers, interval=None, workers=2):
    """A fake nameserver, echo servers on 127.0.0.2 and .3 (same port) and a
    proxy whose upstream is NAME:port."""
    dns = t.server(FakeDns, answers={NAME: answers})
    uport = lib.free_port()
    ups = {ip: _echo_on(t, ip, uport, ip) for ip in ("127.0.0.2", "127.0.0.3")}
    port, aport = lib.free_port(), lib.free_port()
    extra = {"resolve_interval_ms": interval} if interval else {}
    conf = lib.config([lib.listener("edge", port, "web")],
                      [lib.upstream("web", ["%s:%d" % (NAME, uport)], **extra)], workers=workers,
                      admin={"listen": "127.0.0.1:%d" % aport}, resolvers=[dns.address])
    p = t.proxy(conf)
    return dns, ups, uport, port, aport, p, conf


def test_name_with_several_addresses_gives_one_server_per_address(t):
    dns, ups, uport, port, aport, p, _ = _setup(t, ["127.0.0.2", "127.0.0.3"])
    want = ["127.0.0.2:%d" % uport, "127.0.0.3:%d" % uport]
    check(_resolved(aport) == want, "/stats resolved %s, want %s" % (_resolved(aport), want))
    got = _spread(port, 20)
    check(got.get("127.0.0.2", 0) >= 6 and got.get("127.0.0.3", 0) >= 6,
          "round robin over the two addresses: %s" % got)


@lib.timeout(60)
def test_changed_answers_reach_new_connections_without_reload_and_open_ones_stay(t):
    dns, ups, uport, port, aport, p, _ = _setup(t, ["127.0.0.2"], interval=300)
    held, name = _which(port)
    check(name == "127.0.0.2", "first session on %s" % name)
    dns.set(NAME, ["127.0.0.3"])
    ok = lib.wait_until(lambda: _resolved(aport) == ["127.0.0.3:%d" % uport], 5, 0.1)
    check(ok, "the new answer was not applied: %s; log:\n%s" % (_resolved(aport), p.tail()))
    got = _spread(port, 10)
    check(got == {"127.0.0.3": 10}, "new connections after the change: %s" % got)
    lib.roundtrip(held, b"the old address still serves its session")
    held.shutdown(socket.SHUT_WR)
    check(lib.recv_all(held)[1] == "eof", "the open session was cut")
    held.close()
    st = lib.stats(aport)
    check(st["generation"] == 1 and st["reloads"]["count"] == 0, "a change made a reload: %s"
          % st["reloads"])
    p.expect_log(r"addresses now 127\.0\.0\.3:%d \(were 127\.0\.0\.2:%d\)" % (uport, uport))


@lib.timeout(60)
def test_silent_nameserver_keeps_the_last_good_addresses_and_counts_failures(t):
    dns, ups, uport, port, aport, p, _ = _setup(t, ["127.0.0.2"], interval=200)
    dns.silent = True
    ok = lib.wait_until(lambda: _upstream(lib.stats(aport))["dns"]["failures"] >= 1, 15, 0.2)
    d = _upstream(lib.stats(aport))["dns"]
    check(ok, "no failed look-up counted: %s" % d)
    check(d["last_error"], "no last_error: %s" % d)
    check(_resolved(aport) == ["127.0.0.2:%d" % uport], "addresses lost: %s" % _resolved(aport))
    got = _spread(port, 5)
    check(got == {"127.0.0.2": 5}, "sessions after the failure: %s" % got)
    # It answers again: the next look-up is counted as a success.
    dns.silent = False
    dns.set(NAME, ["127.0.0.3"])
    ok = lib.wait_until(lambda: _resolved(aport) == ["127.0.0.3:%d" % uport], 10, 0.1)
    check(ok, "answers after silence not applied: %s" % _resolved(aport))


def test_nxdomain_at_start_fails_with_the_place_unless_the_upstream_re_resolves(t):
    dns = t.server(FakeDns, answers={})
    port = lib.free_port()
    conf = lib.config([lib.listener("edge", port, "web")],
                      [lib.upstream("web", ["%s:80" % NAME])], resolvers=[dns.address])
    path = t.file("nx.json", json.dumps(conf))
    rc, out = t.run(["-t", "-c", path])
    check(rc == 1 and 'upstreams[0].servers[0].address: cannot resolve "%s"' % NAME in out,
          "-t: exit %d: %s" % (rc, out))
    p = lib.Proxy(t, None, path=path)
    check(p.wait_exit(10) == 1, "start with an unresolvable name: exit %s" % p.returncode)
    check("cannot resolve" in p.log_text() and "nx.json:" in p.log_text(),
          "no error naming the place:\n%s" % p.tail())
    # With resolve_interval_ms it starts without the name and keeps trying.
    conf["upstreams"][0]["resolve_interval_ms"] = 200
    path2 = t.file("nx2.json", json.dumps(conf))
    p2 = lib.Proxy(t, None, path=path2, name="p2")
    p2.wait_ready(probe=False)
    uport = lib.free_port()
    up = _echo_on(t, "127.0.0.2", uport, "late")
    conf["upstreams"][0]["servers"][0]["address"] = "%s:%d" % (NAME, uport)
    lib.write_config(path2, conf)
    m = p2.reload()
    p2.expect_log(r"reload: generation 2 ready", timeout_s=10, after=m)
    dns.set(NAME, ["127.0.0.2"])
    ok = lib.wait_until(lambda: _try_name(port) == "late", 5, 0.1)
    check(ok, "the name that came later is not served; log:\n%s" % p2.tail())


def _try_name(port):
    try:
        s, name = _which(port)
        s.close()
        return name
    except (OSError, lib.TestFailure):
        return None


@lib.timeout(60)
def test_sighup_with_a_nameserver_that_never_answers_keeps_healthz_and_restarts_a_killed_shard(t):
    """Issue 11 item 7: the supervisor never blocks on a name."""
    dns, ups, uport, port, aport, p, conf = _setup(t, ["127.0.0.2"])
    dns.silent = True
    conf["upstreams"][0]["servers"].append({"address": "other.e2e.test:%d" % uport})
    lib.write_config(p.path, conf)
    m = p.mark()
    p.signal(signal.SIGHUP)
    time.sleep(0.2)
    t0 = time.monotonic()
    s = socket.create_connection((lib.LOOPBACK, aport), timeout=2)
    s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
    resp = s.recv(100)
    s.close()
    check(resp.startswith(b"HTTP/1.1 200"), "/healthz during the look-up: %r" % resp)
    check(time.monotonic() - t0 < 1, "/healthz took %.1f s" % (time.monotonic() - t0))
    victim = p.shards()[0]
    t1 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    p.expect_log(r"shard \d+ restarted", timeout_s=2, after=m)
    check(time.monotonic() - t1 < 2, "restart took %.1f s" % (time.monotonic() - t1))
    check(_spread(port, 4) == {"127.0.0.2": 4}, "not served meanwhile")
    # The look-up fails in the end; the reload fails, generation 1 serves on.
    p.expect_log(r"reload failed: .*cannot resolve", timeout_s=10, after=m)
    check(lib.stats(aport)["generation"] == 1, "generation changed")
