"""Process hygiene (issue 11, item 9): shards that outlive a SIGKILLed
supervisor go at once and let go of the listeners; a shard holds no
descriptor it does not use; health checks beyond one poll array; a pidfile
or access log that is a symbolic link is refused; the pidfile is removed only
while it still holds our pid; one client cannot monopolise the admin port."""

import os
import re
import socket
import time

import lib
from lib import check


# ---- admin ------------------------------------------------------------------------


def test_admin_64_idle_connections_do_not_keep_healthz_from_answering_within_1s(t):
    aport = lib.free_port()
    _, _, p = t.echo_proxy(admin={"listen": "127.0.0.1:%d" % aport})
    st, _ = lib.admin_status(aport, "/healthz")
    check(st == 200, "/healthz before: %s" % st)
    idle = []
    for _ in range(64):  # connected, never a byte sent
        idle.append(socket.create_connection((lib.LOOPBACK, aport), timeout=5))
    t.defer(lambda: [s.close() for s in idle])
    time.sleep(0.2)  # the supervisor has taken them all in
    t0 = time.monotonic()
    st, body = lib.admin_status(aport, "/healthz", timeout_s=1.0)
    dt = time.monotonic() - t0
    check(st == 200 and dt < 1.0,
          "/healthz with 64 idle admin connections open: %s %r after %.2f s, want 200 within 1 s"
          % (st, body[:80] if isinstance(body, bytes) else body, dt))
    check(p.alive(), "supervisor died")


# ---- descriptors a shard inherits --------------------------------------------------


def _listening_inodes():
    """Socket inodes in LISTEN state (TCP, v4 and v6)."""
    out = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A":
                        out.add(fields[9])
        except OSError:
            pass
    return out


def _fd_links(pid):
    out = {}
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            out[int(name)] = os.readlink("/proc/%d/fd/%s" % (pid, name))
        except OSError:
            pass
    return out


def test_shard_holds_only_its_own_listener_log_and_notify_descriptors(t):
    """After a reload: no health-check or BPF descriptor, no other slot's
    listening socket, and no earlier generation's access-log file."""
    up = t.echo()
    port, aport = lib.free_port(), lib.free_port()
    logf = os.path.join(t.tmpdir, "access.log")
    hc = {"interval_ms": 100, "timeout_ms": 100, "fall": 3, "rise": 1}
    conf = lib.config([lib.listener("l", port, "echo")],
                      [lib.upstream("echo", [up.address], health_check=hc)], workers=2,
                      admin={"listen": "127.0.0.1:%d" % aport},
                      log={"level": "info", "access_log": logf, "format": "text"})
    p = t.proxy(conf)
    m = p.reload(conf)
    p.expect_log(r"generation 1 drained", after=m)
    shards = p.wait_shards(2)
    listen = _listening_inodes()
    # A shard on the epoll backend has one epoll set of its own (its loop).
    own_epoll = 1 if lib.stats(aport).get("io", {}).get("backend") == "epoll" else 0
    problems = []
    for pid in shards:
        links = _fd_links(pid)
        epolls = [fd for fd, l in links.items() if l == "anon_inode:[eventpoll]"]
        for fd, l in sorted(links.items()):
            if l == "anon_inode:[eventpoll]" and len(epolls) <= own_epoll:
                continue
            if l in ("anon_inode:[eventpoll]", "anon_inode:btf") or l.startswith("anon_inode:bpf"):
                problems.append("shard %d fd %d: %s (the supervisor's)" % (pid, fd, l))
        logs = [fd for fd, l in links.items() if l == logf]
        if len(logs) != 1:
            problems.append("shard %d: %d descriptors of the access log %s, want 1 (its own "
                            "generation's)" % (pid, len(logs), logs))
        socks = [l[len("socket:["):-1] for l in links.values() if l.startswith("socket:[")]
        nlisten = sum(1 for s in socks if s in listen)
        if nlisten != 1:
            problems.append("shard %d: %d listening sockets, want 1 (its own slot's)" % (pid, nlisten))
        if len(socks) != nlisten:
            problems.append("shard %d: %d sockets that are not its listener (idle shard)"
                            % (pid, len(socks) - nlisten))
    check(not problems, "descriptors shards should not hold:\n  " + "\n  ".join(problems))
    lib.check_echo(port, b"still serves", up)


# ---- files that must not be symbolic links -----------------------------------------


def _symlink_is_refused(t, name, what, use):
    """Started with the file `name` a symbolic link, the proxy exits 2 with a
    clear error naming `what` and the link, and the link's target is
    untouched. use(link): the (config keywords, arguments) that point the
    proxy at the link."""
    up = t.echo()
    port = lib.free_port()
    target = t.file("precious", "precious\n")
    link = os.path.join(t.tmpdir, name)
    os.symlink(target, link)
    conf_kw, args = use(link)
    p = t.proxy(lib.echo_config(up, port, **conf_kw), ready=False, args=args)
    rc = p.wait_exit(10)
    check(rc == 2, "exit status %s with a symlinked %s, want 2; log:\n%s" % (rc, name, p.tail()))
    check(p.wait_log(r"^shardproxy: %s %s: is a symbolic link; refusing to follow it"
                     % (re.escape(what), re.escape(link)), timeout_s=1),
          "no clear error line; log:\n%s" % p.tail())
    with open(target) as f:
        check(f.read() == "precious\n", "the symlink's target was written to")


def test_symlinked_pidfile_is_refused_with_a_clear_error_and_its_target_untouched(t):
    _symlink_is_refused(t, "shardproxy.pid", "--pidfile", lambda link: ({}, ["--pidfile", link]))


def test_symlinked_access_log_is_refused_with_a_clear_error_and_its_target_untouched(t):
    _symlink_is_refused(t, "access.log", "log.access_log", lambda link: (
        {"log": {"level": "info", "access_log": link, "format": "text"}}, []))


def test_pidfile_written_at_start_removed_at_exit_only_while_it_holds_our_pid(t):
    up = t.echo()
    port = lib.free_port()
    conf = lib.echo_config(up, port)
    pidf = os.path.join(t.tmpdir, "a.pid")
    p = t.proxy(conf, args=["--pidfile", pidf])
    with open(pidf) as f:
        check(f.read() == "%d\n" % p.pid, "pidfile does not hold the supervisor's pid")
    check(p.stop() == 0, "stop: %s" % p.returncode)
    check(not os.path.exists(pidf), "pidfile left behind after a clean stop")

    # Another instance took the file over meanwhile: its pidfile stays.
    p2 = t.proxy(conf, args=["--pidfile", pidf], name="proxy2")
    with open(pidf, "w") as f:
        f.write("%d\n" % up.port)  # anything but p2's pid
    check(p2.stop() == 0, "stop: %s" % p2.returncode)
    check(os.path.exists(pidf), "a pidfile holding another pid was removed at exit")
