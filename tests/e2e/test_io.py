"""The event loop backend (SPEC §4 "io", issue 13): forced epoll serves and
says so; where io_uring is blocked (a seccomp filter like the container
runtimes' defaults, kernel.io_uring_disabled) "auto" starts on epoll, names
the cause, and relays with every engine; "io_uring" forced there exits 2
with the cause. /stats, /metrics and -V show the backend in force."""

import contextlib
import os
import stat

import lib
from lib import MiB, check


def _no_uring(t, errno="EPERM"):
    """Make the test's proxies run under a seccomp filter that denies
    io_uring_setup/enter/register (tests/seccomp/no_uring.c)."""
    launcher = os.path.join(t.build, "no_uring")
    if not os.access(launcher, os.X_OK):
        raise lib.Skip("%s not built (make %s)" % (launcher, launcher))
    wrapper = os.path.join(t.tmpdir, "shardproxy-no-uring")
    with open(wrapper, "w") as f:
        f.write('#!/bin/sh\nexec "%s" --errno %s "%s" "$@"\n' % (launcher, errno, t.binary))
    os.chmod(wrapper, os.stat(wrapper).st_mode | stat.S_IXUSR)
    t.binary = wrapper


def _relay_all_engines(t, extra, admin=False):
    """A proxy per engine; each relays 1 byte and 3 MiB intact both ways.
    Returns the last proxy and its admin port."""
    up = t.echo()
    last = None
    for relay in ("copy", "splice", "auto"):
        port = lib.free_port()
        kw = dict(extra)
        aport = None
        if admin:
            aport = lib.free_port()
            kw["admin"] = {"listen": "127.0.0.1:%d" % aport}
        p = t.proxy(lib.echo_config(up, port, relay=relay, **kw),
                    name="proxy-" + relay)
        for i, n in enumerate((1, 3 * MiB)):
            lib.check_echo(port, lib.payload(n, seed=i), up, what="%s, %d bytes:" % (relay, n))
        last = (p, aport)
    return last


def _check_reports(aport, backend):
    st = lib.stats(aport)
    check(st.get("io", {}).get("backend") == backend, "/stats io: %r" % st.get("io"))
    m = lib.metrics(aport)
    check('io="%s"' % backend in m, "/metrics shardproxy_info has no io=\"%s\":\n%s"
          % (backend, "\n".join(l for l in m.splitlines() if "shardproxy_info" in l)))


def test_io_epoll_forced_relays_with_every_engine_and_reports_epoll(t):
    p, aport = _relay_all_engines(t, {"io": "epoll"}, admin=True)
    p.expect_log(r"io: epoll \(as configured\)")
    p.expect_log(r"ready: generation 1, .* io epoll")
    _check_reports(aport, "epoll")


def test_io_auto_under_seccomp_denying_io_uring_starts_on_epoll_and_says_why(t):
    _no_uring(t)
    p, aport = _relay_all_engines(t, {"io": "auto"}, admin=True)
    p.expect_log(r"warning: io: epoll \(auto: io_uring unavailable: io_uring_setup: Operation not permitted \(EPERM\): "
                 r"io_uring is blocked by a seccomp filter")
    _check_reports(aport, "epoll")


def test_io_auto_under_seccomp_answering_enosys_starts_on_epoll(t):
    _no_uring(t, errno="ENOSYS")
    p, _ = _relay_all_engines(t, {"io": "auto"})
    p.expect_log(r"io: epoll \(auto: io_uring unavailable: io_uring_setup: ENOSYS \(no such system call\): "
                 r"io_uring is blocked by a seccomp filter")


def test_io_uring_forced_under_seccomp_exits_2_naming_the_cause(t):
    _no_uring(t)
    up, port, p = t.echo_proxy(ready=False, io="io_uring")
    code = p.wait_exit(10)
    check(code == 2, "exit status %r, want 2; stderr:\n%s" % (code, p.tail()))
    check("io: io_uring configured but unavailable: io_uring_setup: Operation not permitted (EPERM): io_uring is blocked "
          "by a seccomp filter" in p.log_text(), "stderr does not name the cause:\n%s" % p.tail())


def test_version_under_seccomp_says_io_uring_unavailable_and_epoll_in_force(t):
    _no_uring(t)
    import subprocess
    r = subprocess.run([t.binary, "-V", "-c", "/nonexistent.json"], capture_output=True, text=True,
                       timeout=20)
    out = r.stdout + r.stderr
    check(r.returncode == 0, "-V exit %d: %s" % (r.returncode, out))
    check("io_uring: unavailable: io_uring_setup: Operation not permitted (EPERM)" in out, "-V output:\n%s" % out)
    check("io: epoll (auto: io_uring unavailable" in out, "-V output:\n%s" % out)


SYSCTL = "/proc/sys/kernel/io_uring_disabled"


def _io_uring_sysctl(t):
    """kernel.io_uring_disabled, or Skip without root or on a kernel that
    lacks it. Returns a context manager inside which it is 2 (only for that
    moment: other tests on this machine may want io_uring); on leaving it,
    and at teardown whatever happens, the value from before is back."""
    if os.geteuid() != 0:
        raise lib.Skip("needs root to set kernel.io_uring_disabled")
    if not os.path.exists(SYSCTL):
        raise lib.Skip("this kernel has no kernel.io_uring_disabled (Linux 6.6+)")
    with open(SYSCTL) as f:
        saved = f.read().strip()

    def write(value):
        with open(SYSCTL, "w") as f:
            f.write(value)

    t.defer(lambda: write(saved))

    @contextlib.contextmanager
    def disabled():
        write("2")
        try:
            yield
        finally:
            write(saved)

    return disabled


@lib.needs("root")
def test_io_auto_with_sysctl_io_uring_disabled_starts_on_epoll_and_says_why(t):
    """kernel.io_uring_disabled=2 only for the moment the proxy probes (other
    tests on this machine may want io_uring): set, start until the backend
    is chosen, restore - also when anything fails."""
    disabled = _io_uring_sysctl(t)
    up = t.echo()
    port = lib.free_port()
    with disabled():
        p = t.proxy(lib.echo_config(up, port, io="auto"), ready=False)
        p.expect_log(r"io: ", timeout_s=10)
    p.wait_ready()
    p.expect_log(r"io: epoll \(auto: io_uring unavailable: io_uring_setup: Operation not permitted \(EPERM\): io_uring is "
                 r"disabled by kernel.io_uring_disabled=2")
    for i, n in enumerate((1, 3 * MiB)):
        lib.check_echo(port, lib.payload(n, seed=i), up, what="%d bytes:" % n)


@lib.needs("root")
@lib.timeout(60)
def test_io_uring_shard_that_cannot_set_up_its_ring_on_restart_logs_why_and_backs_off(t):
    """A shard restarted while io_uring is unavailable (here the sysctl, set
    for about a second) fails with the cause in the log, the supervisor
    retries with its backoff, and once io_uring is back the shard serves."""
    if lib.IO == "epoll":
        raise lib.Skip("the io_uring backend is what fails here")
    disabled = _io_uring_sysctl(t)
    up, port, p = t.echo_proxy(workers=1, io="io_uring")
    shard = p.wait_shards(1)[0]
    m = p.mark()
    with disabled():
        os.kill(shard, 9)
        p.expect_log(r"shard 0\]: error: io_uring_setup: Operation not permitted \(EPERM\): io_uring "
                     r"is disabled by kernel.io_uring_disabled=2", timeout_s=10, after=m)
        p.expect_log(r"shard 0 \(pid \d+, generation 1\) .*; restarting in [1-9]\d* ms",
                     timeout_s=10, after=m)
    p.expect_log(r"shard 0 restarted", timeout_s=15, after=m)
    lib.check_echo(port, lib.payload(100000, seed=9), up, what="after the shard came back:")
