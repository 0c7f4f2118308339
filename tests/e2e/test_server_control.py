"""Runtime server control over admin.socket (issue 14 item 2): drain,
disable, enable and weight per server, in force in every shard at once
through shared memory, shown in /stats and /metrics, kept across a shard
restart, cleared by a reload; writes only on the Unix socket (403 on the TCP
port), malformed ones refused with a reason and no change."""

import os
import signal
import socket
import stat
import time

import lib
from lib import check


def _post(sock, url, want=200):
    st, _, body = lib.admin_http(sock, url, "POST")
    check(st == want, "POST %s: %d %r, want %d" % (url, st, body, want))
    return body


def _server(stats, upstream, address):
    for u in stats["upstreams"]:
        if u["name"] == upstream:
            for s in u["servers"]:
                if s["address"] == address:
                    return s
    lib.fail("no server %s in upstream %s of /stats" % (address, upstream))


def _two_servers(t, workers=2, weights=(1, 1), **kw):
    """Two echo servers behind one upstream, an admin port and admin.socket."""
    a = t.echo(name="a", greeting=b"a\n")
    b = t.echo(name="b", greeting=b"b\n")
    port, aport = lib.free_port(), lib.free_port()
    sock = os.path.join(t.tmpdir, "admin.sock")
    conf = lib.config([lib.listener("edge", port, "web")],
                      [lib.upstream("web", [{"address": a.address, "weight": weights[0]},
                                            {"address": b.address, "weight": weights[1]}], **kw)],
                      workers=workers, admin={"listen": "127.0.0.1:%d" % aport, "socket": sock})
    p = t.proxy(conf)
    return a, b, port, aport, sock, p


def _which(port):
    """Open a session; returns (socket, b"a" or b"b") once the greeting came."""
    s = lib.connect(port)
    s.sendall(b"x")
    name = lib.recv_line(s).strip()
    lib.recv_exact(s, 1)
    return s, name


def _spread(port, n):
    got = {b"a": 0, b"b": 0}
    for _ in range(n):
        s, name = _which(port)
        got[name] += 1
        s.close()
    return got


def test_admin_socket_is_mode_0600_serves_the_gets_and_is_removed_on_exit(t):
    a, b, port, aport, sock, p = _two_servers(t)
    mode = os.stat(sock).st_mode
    check(stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600,
          "admin.socket mode %o, want a socket of mode 600" % stat.S_IMODE(mode))
    for path in ("/stats", "/metrics", "/healthz"):
        st, _, _ = lib.admin_http(sock, path)
        check(st == 200, "GET %s on admin.socket: %d" % (path, st))
    check(lib.stats(sock)["generation"] == 1, "/stats on the socket")
    p.stop()
    check(not os.path.exists(sock), "admin.socket left behind after exit")


def test_drain_takes_a_server_out_for_new_sessions_while_its_open_one_finishes(t):
    a, b, port, aport, sock, p = _two_servers(t)
    held, name = _which(port)
    other = b"b" if name == b"a" else b"a"
    addr = (a if name == b"a" else b).address
    body = _post(sock, "/servers/web/%s/drain" % addr)
    check(b'"admin":"draining"' in body, "drain answer: %r" % body)
    # Every shard, at once: no new session reaches the drained server.
    got = _spread(port, 40)
    check(got[name] == 0 and got[other] == 40, "after drain: %s" % got)
    # The open session still relays, both ways, and ends normally.
    lib.roundtrip(held, b"still here")
    held.shutdown(socket.SHUT_WR)
    check(lib.recv_all(held)[1] == "eof", "held session did not end with the server's FIN")
    held.close()
    s = _server(lib.stats(sock), "web", addr)
    check(s["admin"] == "draining", "/stats admin state %r" % s["admin"])
    st, _, text = lib.admin_http(aport, "/metrics")
    line = 'shardproxy_server_admin_state{upstream="web",server="%s",state="draining"} 1' % addr
    check(line in text.decode(), "/metrics lacks %s" % line)


def test_disable_then_enable_by_index(t):
    a, b, port, aport, sock, p = _two_servers(t)
    _post(sock, "/servers/web/0/disable")
    got = _spread(port, 20)
    check(got == {b"a": 0, b"b": 20}, "server 0 disabled: %s" % got)
    check(_server(lib.stats(sock), "web", a.address)["admin"] == "disabled", "/stats after disable")
    _post(sock, "/servers/web/0/enable")
    got = _spread(port, 20)
    check(got[b"a"] >= 8 and got[b"b"] >= 8, "enabled again: %s" % got)


def test_weight_set_over_the_socket_shifts_the_share_in_every_shard(t):
    a, b, port, aport, sock, p = _two_servers(t, workers=2)
    body = _post(sock, "/servers/web/%s/weight/9" % a.address)
    check(b'"weight":9' in body, "weight answer %r" % body)
    got = _spread(port, 100)
    check(got[b"a"] >= 80, "weights 9:1 gave %s" % got)
    s = _server(lib.stats(sock), "web", a.address)
    check(s["weight"] == 9 and s["configured_weight"] == 1, "/stats weights %s" % s)


def test_writes_on_the_tcp_admin_port_get_403_and_change_nothing(t):
    a, b, port, aport, sock, p = _two_servers(t)
    st, _, body = lib.admin_http(aport, "/servers/web/0/drain", "POST")
    check(st == 403 and b"admin.socket" in body, "POST on TCP: %d %r" % (st, body))
    check(_server(lib.stats(sock), "web", a.address)["admin"] == "enabled", "a write on TCP changed state")
    got = _spread(port, 20)
    check(got[b"a"] >= 8, "server 0 lost traffic: %s" % got)


def test_malformed_writes_get_4xx_with_a_reason_and_change_nothing(t):
    a, b, port, aport, sock, p = _two_servers(t)
    before = lib.stats(sock)["upstreams"]
    for url, want, reason in [
            ("/servers/web/0/pause", 400, b"unknown action"),
            ("/servers/web/0/weight/0", 400, b"invalid weight"),
            ("/servers/web/0/weight/300", 400, b"invalid weight"),
            ("/servers/web/0", 400, b"expected /servers/"),
            ("/servers/nope/0/drain", 404, b"no upstream"),
            ("/servers/web/7/drain", 404, b"no such server"),
            ("/servers/web/%s/drain/x" % a.address, 400, b"unexpected"),
            ("/stats", 404, b"not found")]:
        st, _, body = lib.admin_http(sock, url, "POST")
        check(st == want and reason in body, "POST %s: %d %r, want %d with %r" % (url, st, body, want, reason))
    st, _, body = lib.admin_http(sock, "/servers/web/0/drain")
    check(st == 405, "GET of a write: %d %r" % (st, body))
    after = lib.stats(sock)["upstreams"]
    for u0, u1 in zip(before, after):
        for s0, s1 in zip(u0["servers"], u1["servers"]):
            check((s0["admin"], s0["weight"]) == (s1["admin"], s1["weight"]),
                  "a refused write changed %s: %s -> %s" % (s0["address"], s0, s1))


def test_server_control_kept_across_a_sigkilled_shard_and_cleared_by_sighup(t):
    a, b, port, aport, sock, p = _two_servers(t, workers=2)
    _post(sock, "/servers/web/%s/drain" % a.address)
    _post(sock, "/servers/web/%s/weight/5" % b.address)
    victim = p.shards()[0]
    m = p.mark()
    os.kill(victim, signal.SIGKILL)
    p.expect_log(r"shard \d+ restarted", timeout_s=5, after=m)
    got = _spread(port, 30)
    check(got[b"a"] == 0, "drain lost across a shard restart: %s" % got)
    s = _server(lib.stats(sock), "web", b.address)
    check(s["weight"] == 5, "weight lost across a shard restart: %s" % s)
    m = p.reload()
    p.expect_log(r"reload: generation 2 ready", timeout_s=10, after=m)
    st = lib.stats(sock)
    for addr in (a.address, b.address):
        s = _server(st, "web", addr)
        check(s["admin"] == "enabled" and s["weight"] == 1, "not cleared by the reload: %s" % s)
    got = _spread(port, 20)
    check(got[b"a"] >= 8, "drained server not back after the reload: %s" % got)


@lib.timeout(90)
def test_drain_under_wrk_load_no_errors_and_no_new_session_reaches_the_drained_server(t):
    ha, hb = t.http_upstream(), t.http_upstream()
    port, aport = lib.free_port(), lib.free_port()
    sock = os.path.join(t.tmpdir, "admin.sock")
    conf = lib.config([lib.listener("edge", port, "web")],
                      [lib.upstream("web", [ha.address, hb.address])], workers=2, access_log=False,
                      admin={"listen": "127.0.0.1:%d" % aport, "socket": sock})
    p = t.proxy(conf)
    # Keep-alive sessions, open on both servers across the drain, and a
    # connection per request, which must all go to the other server after it.
    keep = lib.wrk_start(t, port, threads=1, conns=16, duration=6)
    close = lib.wrk_start(t, port, threads=1, conns=8, duration=6, headers=("Connection: close",))
    time.sleep(1.5)
    _post(sock, "/servers/web/%s/drain" % ha.address)
    time.sleep(0.2)  # in force at once; a margin for connects already picked
    s0 = _server(lib.stats(sock), "web", ha.address)
    check(s0["active"] > 0, "no keep-alive session open on the drained server: %s" % s0)
    time.sleep(2)
    s1 = _server(lib.stats(sock), "web", ha.address)
    rk, rc = lib.wrk_finish(keep), lib.wrk_finish(close)
    rk.check_clean("keep-alive wrk")
    rc.check_clean("connection-per-request wrk")
    check(s1["connected"] == s0["connected"],
          "new sessions reached the drained server: %d -> %d" % (s0["connected"], s1["connected"]))
    sb = _server(lib.stats(sock), "web", hb.address)
    check(sb["connected"] > s1["connected"], "the other server took no load: %s" % sb)
    ok = lib.wait_until(lambda: _server(lib.stats(sock), "web", ha.address)["active"] == 0, 5, 0.1)
    check(ok, "the drained server's sessions did not finish")


def test_admin_socket_replaces_a_stale_file_and_a_new_process_keeps_it_when_the_old_exits(t):
    """A stale socket file is replaced; a second supervisor on the same path
    (a binary upgrade) takes it over, and the first one's exit leaves it."""
    sock = os.path.join(t.tmpdir, "admin.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock)
    stale.close()  # the file stays, nobody listens

    def start(name):
        up = t.echo()
        port = lib.free_port()
        conf = lib.config([lib.listener("edge", port, "u")], [lib.upstream("u", [up.address])],
                          workers=1, admin={"socket": sock})
        return lib.Proxy(t, conf, name=name).wait_ready()

    a = start("a")
    check(lib.stats(sock)["pid"] == a.pid, "the stale socket file was not replaced")
    b = start("b")
    check(lib.stats(sock)["pid"] == b.pid, "the new supervisor did not take admin.socket over")
    check(a.stop() == 0, "old supervisor exit")
    check(os.path.exists(sock) and lib.stats(sock)["pid"] == b.pid,
          "the old supervisor's exit removed the new one's socket")
    check(b.stop() == 0, "new supervisor exit")
    check(not os.path.exists(sock), "admin.socket left behind")


def test_admin_socket_path_that_is_not_a_socket_stops_the_start(t):
    path = t.file("not-a-socket", "data\n")
    up = t.echo()
    conf = lib.config([lib.listener("edge", lib.free_port(), "u")], [lib.upstream("u", [up.address])],
                      admin={"socket": path})
    p = t.proxy(conf, ready=False)
    check(p.wait_exit(10) == 2, "exit %s, want 2" % p.returncode)
    check("admin.socket %s: exists and is not a socket" % path in p.log_text(), p.tail())
    with open(path) as f:
        check(f.read() == "data\n", "the file was touched")
