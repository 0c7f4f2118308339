"""Hitless reload (SIGHUP) and shard crashes under load (issue 3): no
connection refused or reset, old sessions keep their upstream, new ones get
the new routes, invalid files change nothing."""

import http.client
import json
import os
import re
import signal
import time

import lib
from lib import check


def _http_conf(port, servers, workers=2, **upstream_kw):
    return lib.config([lib.listener("web", port, "web")], [lib.upstream("web", servers, **upstream_kw)],
                      workers=workers)


def _storm(t, headers=()):
    h1, h2 = t.http_upstream(), t.http_upstream()
    port = lib.free_port()
    confs = [_http_conf(port, [h1.address, h2.address]),
             _http_conf(port, [{"address": h2.address, "weight": 2}, h1.address], retries=3)]
    p = t.proxy(confs[0])
    w = lib.wrk_start(t, port, threads=2, conns=64, duration=10, headers=headers)
    time.sleep(0.2)
    most = 0
    for i in range(20):
        p.reload(confs[(i + 1) % 2])
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            most = max(most, len(p.shards()))
            time.sleep(0.05)
    r = lib.wrk_finish(w)
    check(p.alive(), "proxy died during the reload storm; log:\n%s" % p.tail())
    failed = [l for l in p.lines() if "reload failed" in l]
    check(not failed, "valid files were rejected: %s" % failed[:3])
    check(p.wait_log(r"reload: generation \d+ ready", 0.1), "no reload took effect; log:\n%s" % p.tail())
    lib.log("%s; reload lines: %d; most shard processes at once: %d"
            % (r.summary(), sum("reload: generation" in l for l in p.lines()), most))
    r.check_clean("wrk -t2 -c64 -d10s with 20 SIGHUPs%s" % (" (%s)" % ", ".join(headers) if headers else ""))
    check(most <= 4, "%d shard processes at once with workers 2: more than two generations" % most)


@lib.timeout(60)
@lib.needs("wrk")
def test_reload_storm_20_sighups_under_wrk_zero_socket_errors(t):
    _storm(t)


@lib.timeout(60)
@lib.needs("wrk")
def test_reload_storm_20_sighups_under_wrk_new_connection_per_request_zero_socket_errors(t):
    # every request a new connection: connections arrive throughout each handover
    _storm(t, headers=("Connection: close",))


@lib.timeout(60)
def test_long_lived_session_opened_before_20_reloads_relays_intact_after(t):
    up = t.echo()
    port = lib.free_port()
    confs = [lib.echo_config(up, port, limits={"drain_timeout_ms": 60000}),
             lib.config([lib.listener("l", port, "echo")], [lib.upstream("echo", [up.address], retries=3)],
                        limits={"drain_timeout_ms": 60000})]
    p = t.proxy(confs[0])
    s = lib.connect(port)
    sent = bytearray()

    def rt(data):
        lib.roundtrip(s, data)
        sent.extend(data)

    rt(b"before the reloads")
    for i in range(20):
        p.reload(confs[(i + 1) % 2])
        time.sleep(0.5)
        try:
            rt(b"after reload %d" % i)
        except (OSError, lib.TestFailure) as e:
            lib.fail("long-lived session broken by reload %d: %r; log:\n%s" % (i + 1, e, p.tail()))
        lib.check_echo(port, b"new %d" % i, up, what="new connection after reload %d:" % (i + 1))
    data = lib.payload(4 * lib.MiB, seed=301)
    sent.extend(data)
    r = lib.echo_transfer(port, data, sock=s)
    check(r["end"] == "eof" and r["received"] == len(data) and r["sha"] == lib.sha(data),
          "after 20 reloads the long-lived session returned %d of %d bytes (end=%s %s)"
          % (r["received"], len(data), r["end"], r["error"]))
    check(up.has_record(lib.sha(bytes(sent))),
          "upstream did not receive the long-lived session's %d bytes intact" % len(sent))


def _ab(t):
    a = t.echo(name="A", greeting=b"A\n")
    b = t.echo(name="B", greeting=b"B\n")
    port = lib.free_port()

    def conf(target):
        return lib.config([lib.listener("l", port, target)],
                          [lib.upstream("a", [a.address]), lib.upstream("b", [b.address])],
                          limits={"drain_timeout_ms": 30000})

    return a, b, port, conf


def test_reload_route_change_reaches_new_upstream_within_1s_old_session_keeps_old(t):
    a, b, port, conf = _ab(t)
    p = t.proxy(conf("a"))
    old = lib.connect(port)
    check(lib.recv_line(old) == b"A", "before the reload the route does not reach A")
    t0 = time.monotonic()
    m = p.reload(conf("b"))
    seen, first_b = [], None
    while time.monotonic() - t0 < 3:
        g = lib.greeting(port)
        seen.append(g)
        if g == "B":
            first_b = time.monotonic() - t0
            break
        time.sleep(0.05)
    check(first_b is not None, "no new connection reached B within 3 s of SIGHUP (saw %s); log:\n%s"
          % (seen[-5:], p.tail()))
    check(first_b <= 1.0, "new connections reached B only %.2f s after SIGHUP (want <= 1 s)" % first_b)
    # The first B comes from a new shard as soon as it accepts; the old
    # shards accept too until each has taken in its drain order. The switch
    # is complete once the reload says it is done.
    p.expect_log(r"reload: generation 2 ready", timeout_s=5, after=m)
    after = [lib.greeting(port) for _ in range(10)]
    check(after == ["B"] * 10, "after the reload was done new connections reached %s" % after)
    data = lib.payload(65536, seed=401)
    r = lib.echo_transfer(port, data, sock=old)
    check(r["received"] == len(data) and r["sha"] == lib.sha(data),
          "the session opened before the reload broke: %d of %d bytes back (%s %s)"
          % (r["received"], len(data), r["end"], r["error"]))
    check(a.has_record(lib.sha(data)), "the old session's bytes did not reach A")
    check(not b.has_record(lib.sha(data), timeout_s=0.2), "the old session's bytes reached B")


def _ab_admin(t):
    a, b, port, conf = _ab(t)
    aport = lib.free_port()

    def conf_admin(target):
        c = conf(target)
        c["admin"] = {"listen": "127.0.0.1:%d" % aport}
        return c

    return a, b, port, aport, conf_admin


@lib.timeout(60)
def test_reload_is_done_only_once_no_old_shard_can_accept_then_every_new_connection_is_new(t):
    """Old and new shards accept on the same sockets; an old shard stops
    only when it takes in its drain order. Here one old shard is stopped
    (SIGSTOP) and cannot: until it can, the reload is not said to be done
    (no log line, /stats still names generation 1), though the new
    generation already serves. Once it has closed its sockets, the reload
    is done, and from then on every new connection reaches the new route."""
    a, b, port, aport, conf = _ab_admin(t)
    p = t.proxy(conf("a"))
    old = p.wait_shards(2)
    os.kill(old[0], signal.SIGSTOP)
    t.defer(lambda: os.kill(old[0], signal.SIGCONT))
    m = p.reload(conf("b"))
    check(lib.wait_until(lambda: lib.greeting(port) == "B", 5, 0.05), "the new generation does not serve")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.8:
        check(not p.wait_log(r"reload: generation 2 ready", 0, after=m),
              "the reload was said to be done while an old shard (stopped) still had its accept armed")
        gen = lib.stats(aport)["generation"]
        check(gen == 1, "/stats says generation %s while an old shard still may accept" % gen)
        time.sleep(0.05)
    os.kill(old[0], signal.SIGCONT)
    p.expect_log(r"reload: generation 2 ready", timeout_s=5, after=m)
    check(lib.stats(aport)["generation"] == 2, "/stats after the reload: %s" % lib.stats(aport)["generation"])
    check(not p.wait_log(r"did not say they stopped accepting", 0, after=m), "the handover timed out")
    after = [lib.greeting(port) for _ in range(30)]
    check(after == ["B"] * 30, "after the reload was done new connections reached %s" % after)


@lib.timeout(60)
def test_reload_is_done_after_5s_when_an_old_shard_never_says_it_stopped_accepting(t):
    """A stuck old shard does not hold a reload (and systemd's READY=1) up
    for ever: after 5 s it is named and the reload is done."""
    a, b, port, aport, conf = _ab_admin(t)
    p = t.proxy(conf("a"))
    old = p.wait_shards(2)
    os.kill(old[0], signal.SIGSTOP)
    t.defer(lambda: os.kill(old[0], signal.SIGCONT))
    t0 = time.monotonic()
    m = p.reload(conf("b"))
    p.expect_log(r"reload: 1 shard\(s\) of generation 1 did not say they stopped accepting within 5000 ms",
                 timeout_s=15, after=m)
    p.expect_log(r"reload: generation 2 ready", timeout_s=2, after=m)
    took = time.monotonic() - t0
    check(took >= 4.5, "the reload was done %.1f s after SIGHUP, before the 5 s handover bound" % took)
    check(lib.stats(aport)["generation"] == 2, "/stats after the reload: %s" % lib.stats(aport)["generation"])
    os.kill(old[0], signal.SIGCONT)
    check(lib.wait_until(lambda: not any(s in p.shards() for s in old), 10, 0.1),
          "old shards %s still there after SIGCONT: %s" % (old, p.shards()))


def test_reload_invalid_file_logs_position_and_old_config_keeps_serving(t):
    a, b, port, conf = _ab(t)
    p = t.proxy(conf("a"))
    shards = p.wait_shards(2)
    bad = conf("b")
    bad["listeners"][0]["routes"][0]["upstream"] = "nosuch"
    text = json.dumps(bad, indent=2) + "\n"
    line = next(i for i, l in enumerate(text.splitlines(), 1) if '"upstream": "nosuch"' in l)
    m = p.reload(text)
    p.expect_log(r"reload failed", 5, after=m, what="invalid file on SIGHUP")
    rx = r"%s:%d:\d+: listeners\[0\]\.routes\[0\]\.upstream" % (re.escape(os.path.basename(p.path)), line)
    p.expect_log(rx, 2, after=m, what="error position of the failed reload")
    time.sleep(0.5)
    check(p.alive(), "proxy died on an invalid reload")
    check(not p.wait_log(r"reload: generation \d+ ready", 0.1, after=m), "a new generation started")
    check(p.shards() == shards, "shards changed on a failed reload: %s -> %s" % (shards, p.shards()))
    got = [lib.greeting(port) for _ in range(5)]
    check(got == ["A"] * 5, "after the failed reload new connections reached %s, want A" % got)
    lib.check_echo(port, lib.payload(10000, seed=402), a, what="after the failed reload:",
                   sock=_skip_greeting(port))


def _skip_greeting(port):
    s = lib.connect(port)
    lib.recv_line(s)
    return s


def test_reload_valid_file_after_failed_reload_applies(t):
    a, b, port, conf = _ab(t)
    p = t.proxy(conf("a"))
    m = p.reload('{"workers": 2, "listeners": [\n')
    p.expect_log(r"reload failed", 5, after=m)
    m = p.reload(conf("b"))
    p.expect_log(r"reload: generation 2 ready", 5, after=m, what="valid reload after a failed one")
    check(lib.wait_until(lambda: lib.greeting(port) == "B", 2), "new connections do not reach B")


@lib.timeout(60)
def test_rapid_sighups_keep_at_most_two_generations(t):
    up, port, p = t.echo_proxy(workers=2, limits={"drain_timeout_ms": 60000})
    s = lib.connect(port)
    lib.roundtrip(s)  # holds the first generation in its drain
    most = 0
    for _ in range(10):
        p.reload()
        for _ in range(3):
            most = max(most, len(p.shards()))
            time.sleep(0.02)
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        most = max(most, len(p.shards()))
        time.sleep(0.05)
    check(most <= 4, "%d shard processes at once with workers 2 after 10 quick SIGHUPs" % most)
    check(p.alive(), "proxy died under quick SIGHUPs; log:\n%s" % p.tail())
    lib.roundtrip(s, b"old session still here")
    lib.check_echo(port, b"new session", up)
    s.close()
    check(lib.wait_until(lambda: len(p.shards()) == 2, 10),
          "generations did not settle to 2 shards after the last session closed: %s; log:\n%s"
          % (p.shards(), p.tail()))
    lib.check_echo(port, b"settled", up)


def _kill_under_wrk(t, headers):
    http = t.http_upstream()
    port = lib.free_port()
    p = t.proxy(_http_conf(port, [http.address]))
    before = p.wait_shards(2)
    w = lib.wrk_start(t, port, threads=2, conns=64, duration=6, headers=headers)
    time.sleep(2)
    victim = before[0]
    m = p.mark()
    t_kill = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    back = lib.wait_until(lambda: [x for x in p.shards() if x not in before] or None, 5, 0.005)
    back_s = time.monotonic() - t_kill
    r = lib.wrk_finish(w)
    check(p.alive(), "supervisor died; log:\n%s" % p.tail())
    check(back, "no new shard within 5 s of SIGKILL; log:\n%s" % p.tail())
    check(back_s <= 1.0, "new shard only %.2f s after SIGKILL (want <= 1 s)" % back_s)
    p.expect_log(r"shard \d+.*restarted", 3, after=m)
    check(r.requests and r.requests > 0, "wrk: no request completed:\n%s" % r.raw)
    check(r.connect == 0, "wrk: %d connect errors across a shard kill (%s)" % (r.connect, r.summary()))
    lib.log("shard back in %.3f s; %s" % (back_s, r.summary()))


@lib.timeout(60)
@lib.needs("wrk")
def test_shard_sigkill_under_wrk_zero_connect_errors_back_within_1s(t):
    _kill_under_wrk(t, ())


@lib.timeout(60)
@lib.needs("wrk")
def test_shard_sigkill_under_wrk_new_connection_per_request_zero_connect_errors(t):
    _kill_under_wrk(t, ("Connection: close",))


def _http_get(port):
    c = http.client.HTTPConnection(lib.LOOPBACK, port, timeout=5)
    try:
        c.request("GET", "/")
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


@lib.timeout(60)
@lib.needs("wrk")
def test_reload_workers_2_to_1_and_back_under_wrk_zero_errors(t):
    http_up = t.http_upstream()
    port = lib.free_port()
    p = t.proxy(_http_conf(port, [http_up.address], workers=2))
    p.wait_shards(2)
    # a new connection per request, so each generation really serves and drains
    w = lib.wrk_start(t, port, threads=2, conns=64, duration=8, headers=("Connection: close",))
    time.sleep(1)
    m = p.reload(_http_conf(port, [http_up.address], workers=1))
    p.expect_log(r"reload: generation 2 ready", 3, after=m, what="reload to 1 worker")
    check(lib.wait_until(lambda: len(p.shards()) == 1, 4),
          "still %s shard processes 4 s after reloading to workers 1" % p.shards())
    time.sleep(0.5)
    m = p.reload(_http_conf(port, [http_up.address], workers=2))
    p.expect_log(r"reload: generation 3 ready", 5, after=m, what="reload back to 2 workers")
    r = lib.wrk_finish(w)
    r.check_clean("wrk across workers 2 -> 1 -> 2")
    check(lib.wait_until(lambda: len(p.shards()) == 2, 5), "shards after the way back: %s" % p.shards())
    check(_http_get(port) == 200, "no 200 after the reloads")


def test_reload_adds_new_listener_and_closes_removed_one(t):
    up = t.echo()
    pa, pb = lib.free_port(), lib.free_port()
    ups = [lib.upstream("echo", [up.address])]
    p = t.proxy(lib.config([lib.listener("a", pa, "echo")], ups))
    m = p.reload(lib.config([lib.listener("b", pb, "echo")], ups))
    p.expect_log(r"reload: generation 2 ready", 5, after=m)
    t0 = time.monotonic()
    ok = lib.wait_until(lambda: lib._can_connect(pb), 1.0)
    check(ok, "new listener b not accepting within 1 s of the reload")
    lib.check_echo(pb, lib.payload(5000, seed=501), up, what="new listener:")
    gone = lib.wait_until(lambda: not lib._can_connect(pa), 10, 0.1)
    check(gone, "removed listener a still accepts connections 10 s after the reload")
    lib.log("listener b up at %.2f s" % (time.monotonic() - t0))


def slow_signalfd_proxy(t, delay_s=1.5):
    """The proxy (2 shards, echo route) under strace -D -f with every
    signalfd4 delayed by delay_s: each process it starts (supervisor, shard,
    a binary upgrade's new one) spends that long early in its start-up,
    before its signalfd exists and so before it could read a drain order
    (which waits meanwhile, blocked and pending). Returns (proxy, upstream,
    port)."""
    t.binary = lib.strace_delay_wrapper(t, "signalfd4", delay_s)
    up = t.echo()
    port = lib.free_port()
    p = t.proxy(lib.echo_config(up, port, workers=2), ready=False)
    p.wait_ready(timeout_s=30)
    return p, up, port


@lib.timeout(90)
def test_reload_done_at_once_when_a_restarted_shard_gets_its_drain_order_while_starting(t):
    """A shard restarted after a crash that is still starting when the
    reload drains its generation (here: its start-up is slowed, the order
    comes while it waits before its signalfd exists) takes the order once
    it is up, closes its sockets and says so: the reload is done as soon as
    it can, with no 'did not say they stopped accepting' warning, and new
    connections are served throughout."""
    delay = 1.5
    p, up, port = slow_signalfd_proxy(t, delay)
    for gen in (2, 3):
        old = p.wait_shards(2, timeout_s=10)
        m = p.reload()
        new = lib.wait_until(lambda: set(p.shards()) - set(old) if len(set(p.shards()) - set(old)) >= 2
                             else None, 5, 0.01)
        check(new, "reload %d: the new generation's shards were not forked within 5 s: %s; log:\n%s"
              % (gen - 1, p.shards(), p.tail()))
        # They are in their slow start until ~delay from now; a shard killed
        # half-way there restarts at once and is still starting when the
        # new generation is ready and the old one is ordered to drain.
        time.sleep(delay / 2)
        victim = old[0]
        os.kill(victim, signal.SIGKILL)
        t_kill = time.monotonic()
        restarted = lib.wait_until(lambda: set(p.shards()) - set(old) - new or None, 2, 0.01)
        check(restarted, "reload %d: shard %d was not restarted within 2 s; log:\n%s"
              % (gen - 1, victim, p.tail()))
        ready = r"reload: generation %d ready" % gen
        served = lib.echo_until(port, up, lambda: p.wait_log(ready, 0, after=m), t_kill + 10,
                                "reload %d" % (gen - 1))
        took = time.monotonic() - t_kill
        check(p.wait_log(ready, 0, after=m), "reload %d not done %.1f s after the kill; log:\n%s"
              % (gen - 1, took, p.tail()))
        warned = p.wait_log(r"did not say they stopped accepting", 0, after=m)
        check(not warned, "reload %d waited for a shard that got its drain order while starting: %s"
              % (gen - 1, warned))
        # The restarted shard is up ~delay after the kill; the reload is done
        # right after it has taken the order (the 5 s bound would be ~5.5 s).
        check(took < delay + 1.5, "reload %d done %.2f s after the kill (restarted shard up after "
              "~%.1f s)" % (gen - 1, took, delay))
        # The case was built: the restarted shard's 'ready' came after the
        # order (no 'shard N restarted' line: it was draining by then).
        said = p.wait_log(r"shard \d+ restarted", 0, after=m)
        check(not said, "reload %d: the restarted shard was up before the drain order (%s): the test "
              "did not build its case" % (gen - 1, said))
        check(lib.wait_until(lambda: not set(p.shards()) & (set(old) | restarted), 10),
              "reload %d: old generation's shards %s still there: %s"
              % (gen - 1, set(old) | restarted, p.shards()))
        lib.log("reload %d: done %.2f s after the kill; %d connections served meanwhile"
                % (gen - 1, took, served))
    lib.check_echo(port, b"after both reloads", up)


@lib.timeout(90)
def test_reloads_right_after_a_shard_kill_or_another_reload_are_done_within_3s_without_the_5s_warning(t):
    """The same race at ordinary speed: a shard killed and SIGHUP at once
    (the shard restarts while the new generation starts, and may still be
    starting when its generation is drained), 10 times; then a SIGHUP while
    the previous reload's shards are starting, 5 times (queued, it drains
    the generation the first has just brought up). Every reload is done
    within 3 s of its signal, none waits out the 5 s hand-over bound, and
    new connections are served after each. (The deterministic case, the
    order surely reaching a starting shard, is the test above.)"""
    up = t.echo()
    port = lib.free_port()
    p = t.proxy(lib.echo_config(up, port, workers=2))
    gen = 1
    hits = 0
    for i in range(15):
        shards = p.wait_shards(2, timeout_s=10)  # the previous generation has left
        if i < 10:
            t0 = time.monotonic()
            os.kill(shards[i % 2], signal.SIGKILL)
            m = p.reload()
            gen += 1
        else:
            t0 = time.monotonic()
            m = p.reload()
            # the second once the first is under way (two SIGHUPs before
            # the supervisor reads its signalfd are one)
            check(lib.wait_until(lambda: len(p.shards()) > 2, 2, 0.002),
                  "round %d: the reload forked no shard within 2 s; log:\n%s" % (i, p.tail()))
            p.signal(signal.SIGHUP)
            gen += 2
        ready = r"reload: generation %d ready" % gen
        line = p.wait_log(ready, 3.0 - (time.monotonic() - t0), after=m)
        check(line, "round %d: no '%s' within 3 s of the signal; log:\n%s" % (i, ready, p.tail()))
        warned = p.wait_log(r"did not say they stopped accepting", 0, after=m)
        check(not warned, "round %d: %s" % (i, warned))
        lib.check_echo(port, b"after round %d" % i, up, timeout_s=3, what="round %d:" % i)
        # No 'shard N restarted' line: the generation was drained before the
        # restarted shard said ready (the race this is about; how often it
        # is met depends on the machine, so it is reported, not required).
        hits += i < 10 and not p.wait_log(r"shard \d+ restarted", 0, after=m)
    lib.log("in %d of 10 kill rounds the generation was drained before its restarted shard said ready" % hits)
