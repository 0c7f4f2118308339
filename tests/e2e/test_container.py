"""Containers without a container engine: the seccomp profile we ship
(dist/seccomp.json, applied by build/profile_run the way runc applies one),
the supervisor as PID 1 of its own PID namespace (what `docker run` gives
it), and the image's configuration (dist/container.json)."""

import os
import shutil
import signal
import subprocess

import lib
from lib import MiB, check

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROFILE = os.path.join(REPO, "dist", "seccomp.json")


def _profile_run(t):
    path = os.path.join(t.build, "profile_run")
    if not os.access(path, os.X_OK):
        lib.fail("%s missing: `make e2e` builds it" % path)
    return path


def _echo_after_reload(port, data, old, new, what):
    """A connection opened right after a reload may still be taken by the old
    generation (a draining shard serves what was queued on its sockets), so
    either upstream may see it; it must arrive intact at one of them."""
    r = lib.echo_transfer(port, data)
    want = lib.sha(data)
    check(r["end"] == "eof" and r["sha"] == want,
          "%s: got back %d of %d bytes (end=%s %s)" % (what, r["received"], len(data), r["end"], r["error"]))
    check(new.has_record(want) or old.has_record(want), "%s: no upstream received the bytes intact" % what)


def _no_filter_needed(t):
    """The tests below prove a profile lets the proxy work; they mean nothing
    if the process is already under a filter that denies more."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Seccomp:") and line.split()[1] != "0":
                raise lib.Skip("this test runner already runs under a seccomp filter")


@lib.timeout(60)
def test_shipped_seccomp_profile_lets_proxy_relay_reload_and_drain_on_io_uring(t):
    _no_filter_needed(t)
    # LeakSanitizer stops the world with ptrace at exit, which the profile
    # (like Docker's) denies: a sanitizer build checks no leaks here.
    os.environ["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    up, port, p = t.echo_proxy(wrap=[_profile_run(t), PROFILE, "--"], relay="auto")
    check(not [l for l in p.lines() if "io_uring" in l and ("unavailable" in l or "blocked" in l)],
          "the shipped profile blocks io_uring; log:\n%s" % p.tail())
    with open("/proc/%d/status" % p.pid) as f:
        check(any(l.split() == ["Seccomp:", "2"] for l in f), "the proxy does not run under a filter")
    for seed, n in ((1, 100), (2, 8 * MiB)):
        lib.check_echo(port, lib.payload(n, seed), up, what="under the profile")
    # A reload forks a new generation under the same filter.
    up2 = t.echo(name="echo2")
    mark = p.reload(lib.echo_config(up2, port, relay="auto"))
    p.expect_log(r"reload: generation 2 ready", 10, after=mark)
    _echo_after_reload(port, lib.payload(4096, 3), up, up2, "after reload under the profile")
    rc = p.stop(15)
    check(rc == 0, "exit status %s after SIGTERM under the profile; log:\n%s" % (rc, p.tail()))


@lib.timeout(60)
def test_profile_launcher_denies_what_profile_omits(t):
    """The launcher really enforces: -V under a profile without the io_uring
    calls must see io_uring_setup fail with EPERM."""
    _no_filter_needed(t)
    env = dict(os.environ, ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0")
    r = subprocess.run([_profile_run(t), "--deny", "io_uring_setup,io_uring_enter,io_uring_register",
                        PROFILE, "--", t.binary, "-V"], capture_output=True, text=True, timeout=20, env=env)
    out = r.stdout + r.stderr
    check("seccomp" in out and "Operation not permitted" in out,
          "-V under a profile denying io_uring does not report the seccomp block:\n%s" % out)


@lib.needs("root")
@lib.timeout(60)
def test_supervisor_as_pid_1_reloads_on_sighup_from_inside_and_drains_on_sigterm(t):
    """In a container the supervisor is PID 1 of a PID namespace: the kernel
    drops signals to PID 1 that it does not handle, and nobody else reaps
    its children. Signals sent from inside the namespace (docker exec ...
    kill -HUP 1) and from outside (docker kill, docker stop) must both work."""
    if os.geteuid() != 0:
        raise lib.Skip("needs root (unshare --pid)")
    for tool in ("unshare", "nsenter"):
        if not shutil.which(tool):
            raise lib.Skip("%s not installed" % tool)
    up = t.echo()
    port = lib.free_port()
    p = t.proxy(lib.echo_config(up, port, limits={"drain_timeout_ms": 10000}),
                wrap=["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"])
    kids = lib.children(p.pid)
    check(len(kids) == 1, "unshare should have one child (the supervisor), has %s" % kids)
    sup = kids[0]
    with open("/proc/%d/status" % sup) as f:
        nspid = [l.split()[1:] for l in f if l.startswith("NSpid:")][0]
    check(nspid[-1] == "1", "the supervisor is not PID 1 in its namespace (NSpid %s)" % nspid)
    shards = lib.children(sup)
    check(len(shards) == 2, "expected 2 shards under PID 1, have %s" % shards)

    # Reload from inside the namespace, as `docker exec C kill -HUP 1` does.
    up2 = t.echo(name="echo2")
    mark = p.mark()
    lib.write_config(p.path, lib.echo_config(up2, port, limits={"drain_timeout_ms": 10000}))
    subprocess.run(["nsenter", "-t", str(sup), "-p", "-m", "kill", "-HUP", "1"], check=True, timeout=10)
    p.expect_log(r"reload: generation 2 ready", 10, after=mark, what="SIGHUP to PID 1 from inside")
    _echo_after_reload(port, lib.payload(65536, 5), up, up2, "after a reload of PID 1")
    # The old generation's shards were reaped by PID 1, not left as zombies.
    check(lib.wait_until(lambda: all(not os.path.exists("/proc/%d" % s) for s in shards), 10),
          "the old generation's shards are still there (zombies?): %s" % shards)

    # Stop from outside, as `docker stop` does: drain, exit 0.
    os.kill(sup, signal.SIGTERM)
    rc = p.wait_exit(15)
    check(rc == 0, "PID 1 exited %s after SIGTERM, want 0; log:\n%s" % (rc, p.tail()))


def test_container_image_configuration_is_valid(t):
    rc, out = t.run(["-t", "-c", os.path.join(REPO, "dist", "container.json")])
    check(rc == 0 and out.strip() == "ok", "dist/container.json: -t says (%d):\n%s" % (rc, out))
