"""eBPF sk_reuseport steering across shards (issue 3), measured on the real
kernel. Every test here needs BPF (root or CAP_BPF + CAP_NET_ADMIN): without
it the proxy falls back to plain SO_REUSEPORT and these tests SKIP."""

import collections
import json
import os
import shutil
import subprocess
import sys
import urllib.request

import lib
from lib import check


def _steered(t, steering, admin_port=None):
    up = t.echo()
    port = lib.free_port()
    extra = {"admin": {"listen": "127.0.0.1:%d" % admin_port}} if admin_port else {}
    p = t.proxy(lib.echo_config(up, port, workers=2, steering=steering, **extra))
    lib.require_bpf_steering(t, p)
    p.wait_shards(2)
    return up, port, p


def _short(port):
    s = lib.connect(port)
    lib.roundtrip(s, b"x")
    cp = s.getsockname()[1]
    s.close()
    return cp


def _split(p, ports):
    """Shard of each connection made from these client ports, counted."""
    return collections.Counter(e.get("shard") for e in p.access_for_ports(ports, timeout_s=10))


def _split_held(p, ports):
    """The same for connections that were open together (ports unique)."""
    found = p.access_by_client_port(ports, timeout_s=10)
    return collections.Counter(e.get("shard") for e in found.values())


@lib.needs("root", "bpf")
def test_steering_hash_400_connections_split_30_to_70_percent_per_shard(t):
    _, port, p = _steered(t, "hash")
    ports = [_short(port) for _ in range(400)]
    c = _split(p, ports)
    check(set(c) <= {"0", "1"}, "shards in the access log: %s" % dict(c))
    n = sum(c.values())
    for shard in ("0", "1"):
        share = c[shard] / n
        check(0.30 <= share <= 0.70, "hash: shard %s got %.0f%% of %d connections (%s), want 30..70%%"
              % (shard, share * 100, n, dict(c)))


@lib.needs("root", "bpf")
def test_steering_least_conn_balances_long_lived_sessions_among_short_ones(t):
    _, port, p = _steered(t, "least_conn")
    held, held_ports = [], []
    for i in range(100):
        s = lib.connect(port)
        lib.roundtrip(s)  # accepted and counted before the next one arrives
        held.append(s)
        held_ports.append(s.getsockname()[1])
        if i % 3 == 0:  # short ones in between: they come and go
            _short(port)
    for _ in range(200):
        _short(port)
    for s in held:
        lib.roundtrip(s, b"alive")
        s.close()
    c = _split_held(p, held_ports)
    diff = abs(c["0"] - c["1"])
    check(diff <= 10, "least_conn: 100 long-lived sessions split %s (difference %d, want <= 10)" % (dict(c), diff))


def _active(admin_port):
    """Active sessions per shard slot of the current generation, from /stats."""
    with urllib.request.urlopen("http://127.0.0.1:%d/stats" % admin_port, timeout=5) as r:
        st = json.load(r)
    gen = st.get("generation")
    out = {}
    for sh in st.get("shards", []):
        if gen is not None and sh.get("generation", gen) != gen:
            continue
        out[int(sh["slot"])] = int(sh["active"])
    return out


@lib.needs("root", "bpf")
def test_steering_least_conn_sends_new_connections_to_less_loaded_shard(t):
    admin = lib.free_port()
    _, port, p = _steered(t, "least_conn", admin_port=admin)
    try:
        base = _active(admin)
    except (OSError, ValueError, KeyError) as e:
        lib.fail("cannot read per-shard active sessions from admin /stats: %r" % e)
    check(set(base) == {0, 1}, "/stats shards: %s" % base)

    def open_one():
        before = _active(admin)
        s = lib.connect(port)
        lib.roundtrip(s)
        now = lib.wait_until(lambda: (lambda a: a if sum(a.values()) == sum(before.values()) + 1 else None)(
            _active(admin)), 3)
        check(now, "/stats active did not count the new session (%s)" % before)
        return s, next(k for k in now if now[k] == before.get(k, 0) + 1)

    by_slot = {0: [], 1: []}
    for _ in range(40):
        s, slot = open_one()
        by_slot[slot].append(s)
    lib.log("40 long-lived: %s" % {k: len(v) for k, v in by_slot.items()})
    # make shard 0 the idle one: close every session it holds
    for s in by_slot[0]:
        s.close()
    by_slot[0] = []
    check(lib.wait_until(lambda: _active(admin).get(0) == 0, 5), "/stats: shard 0 still active %s" % _active(admin))
    load1 = len(by_slot[1])
    check(load1 >= 10, "setup: shard 1 holds only %d sessions" % load1)
    # new connections, each closed at once: the imbalance stays, they should all go to shard 0
    ports = [_short(port) for _ in range(40)]
    c = _split(p, ports)
    check(c["0"] >= 36, "least_conn: with shard 0 idle and shard 1 holding %d sessions, only %d of 40 new "
          "connections went to shard 0 (%s)" % (load1, c["0"], dict(c)))
    for s in by_slot[1]:
        s.close()


@lib.needs("root", "bpf", "2cpu")
def test_steering_cpu_client_pinned_to_cpu_n_lands_on_shard_n(t):
    lib.require_cpus(2)
    if not shutil.which("taskset"):
        raise lib.Skip("taskset not installed")
    _, port, p = _steered(t, "cpu")
    for cpu in (0, 1):
        r = subprocess.run(["taskset", "-c", str(cpu), sys.executable, lib.__file__, "connect-many", str(port), "100"],
                           capture_output=True, text=True, timeout=60)
        check(r.returncode == 0, "pinned client failed: %s" % r.stderr[-500:])
        ports = json.loads(r.stdout)
        c = _split(p, ports)
        check(c[str(cpu)] >= 90, "cpu: client pinned to CPU %d landed on shard %d only %d of 100 times (%s)"
              % (cpu, cpu, c[str(cpu)], dict(c)))


@lib.needs("root")
def test_without_bpf_privilege_one_warning_and_plain_reuseport_serves(t):
    if os.geteuid() != 0:
        raise lib.Skip("needs root to drop to an unprivileged user")
    up = t.echo()
    port = lib.free_port()
    conf = lib.echo_config(up, port, workers=2, steering="hash")
    p = lib.Proxy(t, conf, user=65534)
    p.wait_ready()
    warn = [l for l in p.lines() if "BPF steering unavailable" in l]
    check(len(warn) == 1, "want one 'BPF steering unavailable' warning as an unprivileged user, got %d; log:\n%s"
          % (len(warn), p.tail()))
    p.wait_shards(2)
    for i in range(20):
        lib.check_echo(port, lib.payload(1000, seed=900 + i), up, what="unprivileged, connection %d:" % i)
    r = subprocess.run([p.bin, "-V", "-c", p.path], capture_output=True, text=True, timeout=20, user=65534,
                       group=65534, extra_groups=[], cwd="/")
    check(r.returncode == 0 and "steering: none" in r.stdout,
          "-V as an unprivileged user: exit %s, %r; want 'steering: none (...)'" % (r.returncode, r.stdout))


@lib.needs("root", "bpf", "2cpu")
def test_reload_changes_steering_policy_hash_to_cpu(t):
    """A reload that changes `steering` switches the loaded program's policy:
    after hash -> cpu, a client pinned to CPU n lands on shard n."""
    lib.require_cpus(2)
    if not shutil.which("taskset"):
        raise lib.Skip("taskset not installed")
    _, port, p = _steered(t, "hash")
    conf = dict(p.conf)
    conf["steering"] = "cpu"
    m = p.reload(conf)
    p.expect_log(r"reload: generation 2 ready", after=m)
    check(any("steering: cpu" in l for l in p.lines()[-50:]),
          "reload to steering cpu was not logged; log:\n%s" % p.tail())
    for cpu in (0, 1):
        r = subprocess.run(["taskset", "-c", str(cpu), sys.executable, lib.__file__, "connect-many", str(port), "100"],
                           capture_output=True, text=True, timeout=60)
        check(r.returncode == 0, "pinned client failed: %s" % r.stderr[-500:])
        c = _split(p, json.loads(r.stdout))
        check(c[str(cpu)] >= 90, "after reload to cpu: client pinned to CPU %d landed on shard %d only %d of 100 "
              "times (%s)" % (cpu, cpu, c[str(cpu)], dict(c)))
