#!/usr/bin/env python3
"""make cluster-test: several shardproxy instances behind Linux ECMP, in
network namespaces. Needs root. Python 3 standard library, iproute2, nftables,
wrk and curl. Not part of `make test`.

    sudo python3 tests/cluster/cluster.py --build build
    ... --instances 3 --workers 2 --step-seconds 12 --crash-detect-ms 500,2000

The network (every address private, every one inside namespaces this script
creates, named spc-<pid>-*; the host's own network is never touched):

    client 10.77.1.2 --- router --- p1 10.77.11.2   each instance has the VIP
                          |     \-- p2 10.77.12.2   10.77.100.1/32 on lo and
                          |      \- p3 10.77.13.2   relays to both backends
                          |--- b1 10.77.201.2       (PROXY v2)
                          \--- b2 10.77.202.2

The router reaches the VIP through a resilient nexthop group over the
instances (`ip nexthop add id 100 group 1/2/3 type resilient ...`) with
`net.ipv4.fib_multipath_hash_policy=1` (hash on the 4-tuple). An nftables rule
in the router remembers, in each connection's conntrack mark, the instance its
first packet went to; a flow is routed by that mark only while its instance
drains (an `ip rule fwmark N` added before its nexthop leaves the group and
removed once it has exited), which is what lets a removed instance finish its
open connections while no new one reaches it. A plain BGP ECMP router has no
such memory: docs/scale-out.md says what that costs and what replaces it.

Steps, each under wrk load from the client namespace (keep-alive and
connection-per-request) plus long checksummed transfers (client.py):
  remove   nexthop out of the group, then SIGTERM: 0 wrk errors, the
           transfers through it complete, its /stats `accepted` does not move
           after the group change, it exits 0.
  add      start it, put its nexthop back: it takes a share of new flows, the
           flows already open are not moved (0 errors, transfers intact).
  reload   SIGHUP one instance in the group: 0 errors, transfers intact.
  upgrade  install another build at the path the instances run from (the
           binary with another version string), then SIGUSR2 one instance in
           the group: 0 errors, transfers intact, a new pid answers /stats
           with the new version and takes new flows, the old supervisor
           drains and exits 0; the time each takes is measured. Only if this
           binary performs a binary upgrade (probed at start on a throw-away
           instance); else reported as not available.
  remove, no pin
           the remove step without the conntrack pin: what a stateless
           router does on a BGP withdraw. Measured (the removed instance's
           flows are expected to break); checked: the other flows are intact
           and nothing new reaches it. --no-unpinned-remove skips it.
  crash    SIGKILL one instance's supervisor, take its nexthop out after
           --crash-detect-ms: what clients see is measured and reported; the
           check is that new connections succeed once the nexthop is out.

Everything it creates (namespaces, and with them veths, routes, nexthops and
nftables rules; the processes it started) is removed at the end, also on
Ctrl-C, SIGTERM or the --max-seconds limit. Logs of a failed run stay in
build/cluster/<pid>/ (removed after a green run unless --keep-logs).
Exit status: 0 all steps passed, 1 a step failed, 2 a prerequisite is missing,
130 interrupted.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

VIP = "10.77.100.1"
CLIENT_IP = "10.77.1.2"
HTTP_PORT, STREAM_PORT, BACKEND_STATS_PORT = 8080, 9000, 9100
ADMIN = "http://127.0.0.1:9901"
GROUP = 100  # nexthop group id; instance i has nexthop id i and drain table 200 + i
BACKENDS = {"b1": "10.77.201.2", "b2": "10.77.202.2"}


def inst_addr(i):
    return "10.77.%d.2" % (10 + i)


class Interrupted(Exception):
    pass


class StepFailed(Exception):
    pass


def _raise_interrupt(signum, frame):
    raise Interrupted("signal %d" % signum)


class Wrk:
    """One wrk run in the client namespace; parses wrk's summary."""

    def __init__(self, cl, name, conns, seconds, close):
        self.name = name
        self.out = os.path.join(cl.logdir, "wrk-%s-%d.out" % (name, time.monotonic_ns()))
        cmd = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--timeout", "4s"]
        if close:
            cmd += ["-H", "Connection: close"]
        cmd.append("http://%s:%d/" % (VIP, HTTP_PORT))
        self.proc = cl.spawn("client", cmd, self.out)
        self.seconds = seconds

    def finish(self):
        try:
            self.proc.wait(self.seconds + 20)
        except subprocess.TimeoutExpired:
            raise StepFailed("wrk %s did not finish" % self.name)
        with open(self.out) as f:
            text = f.read()
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
        self.errors = dict(zip(("connect", "read", "write", "timeout"),
                               (int(x) for x in m.groups()) if m else (0, 0, 0, 0)))
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        self.errors["non2xx"] = int(m.group(1)) if m else 0
        m = re.search(r"(\d+) requests in", text)
        self.requests = int(m.group(1)) if m else None
        if self.requests is None:
            raise StepFailed("wrk %s: unparsable output:\n%s" % (self.name, text))
        return self

    def total_errors(self):
        return sum(self.errors.values())

    def describe(self):
        bad = ", ".join("%s %d" % kv for kv in self.errors.items() if kv[1])
        return "%d req, %s" % (self.requests, bad or "0 errors")


class ClientJob:
    """client.py (transfers or probe) in the client namespace."""

    def __init__(self, cl, args, name):
        self.out = os.path.join(cl.logdir, "%s-%d.out" % (name, time.monotonic_ns()))
        self.proc = cl.spawn("client", [sys.executable, os.path.join(HERE, "client.py")] + args,
                             self.out, stdout_pipe=True)

    def first_line(self, timeout_s):
        # Transfers print {"started": ...} once every connection is open.
        import select

        r, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not r:
            raise StepFailed("client.py did not start its transfers within %.0f s" % timeout_s)
        return json.loads(self.proc.stdout.readline())

    def result(self, timeout_s):
        try:
            out, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise StepFailed("client.py did not finish within %.0f s" % timeout_s)
        lines = [l for l in out.splitlines() if l.strip()]
        if not lines:
            raise StepFailed("client.py printed nothing (see %s)" % self.out)
        return json.loads(lines[-1])


class Cluster:
    def __init__(self, a):
        self.a = a
        self.t0 = time.monotonic()
        self.prefix = "spc-%d-" % os.getpid()
        self.logdir = os.path.join(REPO, "build", "cluster", str(os.getpid()))
        self.binary = os.path.abspath(os.path.join(a.build, "shardproxy"))
        # The instances run a copy installed here: the upgrade step replaces
        # it (rename over it) as a package upgrade replaces the installed one.
        self.exe = os.path.join(self.logdir, "bin", "shardproxy")
        self.created = []  # namespaces, in creation order
        self.procs = []  # every Popen we started
        self.sup = {}  # instance index -> supervisor pid (changes on upgrade)
        self.group = []  # instance indices in the nexthop group
        self.pinned = set()
        self.rows = []
        self.notes = []
        self.upgrade = None  # (available, why)

    # ---- helpers ------------------------------------------------------------

    def log(self, msg):
        print("[%6.1fs] %s" % (time.monotonic() - self.t0, msg), flush=True)

    def record(self, line):
        """Every command goes to commands.log: the recipe, as it ran."""
        if os.path.isdir(self.logdir):
            with open(os.path.join(self.logdir, "commands.log"), "a") as f:
                f.write(line + "\n")

    def ns(self, short):
        return self.prefix + short

    def run(self, argv, ns=None, check=True, timeout=20):
        if ns:
            argv = ["ip", "netns", "exec", self.ns(ns)] + argv
        self.record(" ".join(argv))
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise StepFailed("%s: exit %d: %s" % (" ".join(argv), p.returncode, (p.stderr or p.stdout).strip()))
        return p

    def ip(self, ns, *args, check=True):
        return self.run(["ip", "-n", self.ns(ns)] + list(args), check=check)

    def spawn(self, ns, argv, out_path, stdout_pipe=False):
        full = ["ip", "netns", "exec", self.ns(ns)] + argv
        self.record(" ".join(full) + " &")
        out = open(out_path, "w")
        p = subprocess.Popen(full, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE if stdout_pipe else out,
                             stderr=out, start_new_session=True, text=True)
        out.close()
        self.procs.append(p)
        return p

    def admin(self, i, path, timeout=2):
        p = self.run(["curl", "-s", "-m", str(timeout), "-w", "\n%{http_code}", ADMIN + path],
                     ns="p%d" % i, check=False, timeout=timeout + 5)
        body, _, code = p.stdout.rpartition("\n")
        return (int(code) if code.isdigit() else 0), body

    def stats(self, i):
        code, body = self.admin(i, "/stats")
        if code != 200:
            return None
        return json.loads(body)

    def accepted(self, i):
        s = self.stats(i)
        return None if s is None else s["totals"]["accepted"]

    def backend_stats(self):
        out = {}
        for b in BACKENDS:
            p = self.run(["curl", "-s", "-m", "2", "http://127.0.0.1:%d/" % BACKEND_STATS_PORT], ns=b, check=False)
            out[b] = json.loads(p.stdout) if p.returncode == 0 and p.stdout else None
        return out

    @staticmethod
    def alive(pid):
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False

    def ns_pids(self, short):
        p = self.run(["ip", "netns", "pids", self.ns(short)], check=False)
        return [int(x) for x in p.stdout.split()]

    def wait_exit(self, pid, timeout_s):
        """Wait for a pid we started (or its upgraded successor) to go; returns
        the exit status when it is our child, None otherwise."""
        end = time.monotonic() + timeout_s
        child = next((p for p in self.procs if p.pid == pid), None)
        while time.monotonic() < end:
            if child is not None:
                if child.poll() is not None:
                    return child.returncode
            elif not self.alive(pid):
                return None
            time.sleep(0.05)
        raise StepFailed("pid %d still running after %.0f s" % (pid, timeout_s))

    # ---- prerequisites ------------------------------------------------------

    def prerequisites(self):
        missing = []
        if os.geteuid() != 0:
            missing.append("root (network namespaces, nexthops and nftables need it): run with sudo")
        if not os.access(self.binary, os.X_OK):
            missing.append("%s (run `make` first)" % self.binary)
        for tool, pkg in (("ip", "iproute2"), ("wrk", "wrk"), ("nft", "nftables"), ("curl", "curl")):
            if not shutil.which(tool):
                missing.append("%s (apt-get install %s)" % (tool, pkg))
        if sys.version_info < (3, 9):
            missing.append("Python 3.9 or newer (random.randbytes)")
        if missing:
            return missing
        taken = [n for n in self.run(["ip", "netns", "list"]).stdout.split() if n.startswith(self.prefix)]
        if taken:
            missing.append("free namespace names: %s already exist%s" % (", ".join(taken), "" if len(taken) > 1 else "s"))
            return missing
        # Try, in a scratch namespace, what the router needs from the kernel.
        probe = "probe"
        try:
            self.add_ns(probe)
            self.ip(probe, "link", "add", "pa", "type", "veth", "peer", "name", "pb")
            for dev in ("pa", "pb"):
                self.ip(probe, "link", "set", dev, "up")
            self.ip(probe, "addr", "add", "10.99.0.1/24", "dev", "pa")
            tries = [
                (["ip", "-n", self.ns(probe), "nexthop", "add", "id", "1", "via", "10.99.0.2", "dev", "pa"],
                 "`ip nexthop` (iproute2 >= 5.3 and a kernel with nexthop objects, Linux >= 5.3)"),
                (["ip", "-n", self.ns(probe), "nexthop", "add", "id", "2", "group", "1", "type", "resilient",
                  "buckets", "8"], "resilient nexthop groups (Linux >= 5.13, iproute2 >= 5.13)"),
                (["ip", "netns", "exec", self.ns(probe), "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"],
                 "net.ipv4.fib_multipath_hash_policy=1 (CONFIG_IP_ROUTE_MULTIPATH)"),
                (["ip", "netns", "exec", self.ns(probe), "nft", "add table ip t; add chain ip t c "
                  "{ type filter hook forward priority mangle; }; add rule ip t c ct state new ct mark set 1"],
                 "nftables with conntrack marks (CONFIG_NF_TABLES, CONFIG_NFT_CT, CONFIG_NF_CONNTRACK_MARK)"),
            ]
            for argv, what in tries:
                p = self.run(argv, check=False)
                if p.returncode != 0:
                    missing.append("%s: `%s` said: %s" % (what, " ".join(argv[-6:]), (p.stderr or p.stdout).strip()))
        finally:
            self.del_ns(probe)
        return missing

    def probe_upgrade(self):
        """Does this binary do a binary upgrade on SIGUSR2? Asked of a
        throw-away instance in its own namespace: the pid /stats reports must
        change to a new supervisor that serves."""
        short = "upg"
        conf = os.path.join(self.logdir, "probe-upgrade.json")
        with open(conf, "w") as f:
            json.dump({"workers": 1, "log": {"level": "info", "access_log": False},
                       "admin": {"listen": "127.0.0.1:9901"}, "limits": {"max_connections": 64},
                       "listeners": [{"name": "h", "listen": "127.0.0.1:18080", "routes": [{"upstream": "u"}]}],
                       "upstreams": [{"name": "u", "servers": [{"address": "127.0.0.1:18081"}]}]}, f)
        try:
            self.add_ns(short)
            self.ip(short, "link", "set", "lo", "up")
            p = self.spawn(short, [self.binary, "-c", conf], os.path.join(self.logdir, "probe-upgrade.log"))

            def pid_now():
                q = self.run(["curl", "-s", "-m", "1", ADMIN + "/stats"], ns=short, check=False)
                try:
                    return json.loads(q.stdout)["pid"]
                except (ValueError, KeyError):
                    return None

            end = time.monotonic() + 10
            while pid_now() is None and time.monotonic() < end and p.poll() is None:
                time.sleep(0.1)
            old = pid_now()
            if old is None:
                return False, "the probe instance did not start (see probe-upgrade.log)"
            os.kill(old, signal.SIGUSR2)
            end = time.monotonic() + 8
            while time.monotonic() < end:
                new = pid_now()
                if new is not None and new != old:
                    return True, "SIGUSR2 moved the admin endpoint from pid %d to pid %d" % (old, new)
                time.sleep(0.2)
            return False, "SIGUSR2 left pid %d serving and started no new supervisor within 8 s" % old
        finally:
            self.del_ns(short)

    # ---- set-up and tear-down -------------------------------------------------

    def add_ns(self, short):
        self.run(["ip", "netns", "add", self.ns(short)])
        self.created.append(short)
        self.ip(short, "link", "set", "lo", "up")

    def del_ns(self, short):
        # Processes in a namespace keep it alive: kill ours first.
        for _ in range(3):
            pids = self.ns_pids(short)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        self.run(["ip", "netns", "del", self.ns(short)], check=False)
        if short in self.created:
            self.created.remove(short)

    def link(self, a_ns, a_dev, a_addr, b_ns, b_dev, b_addr):
        """A veth pair between two namespaces, /24 on each end."""
        self.run(["ip", "link", "add", a_dev, "netns", self.ns(a_ns), "type", "veth",
                  "peer", "name", b_dev, "netns", self.ns(b_ns)])
        for ns, dev, addr in ((a_ns, a_dev, a_addr), (b_ns, b_dev, b_addr)):
            self.ip(ns, "addr", "add", addr + "/24", "dev", dev)
            self.ip(ns, "link", "set", dev, "up")

    def install(self, data):
        """Put data at self.exe the way a package manager does: beside it,
        then renamed over it (running instances keep their old inode)."""
        os.makedirs(os.path.dirname(self.exe), exist_ok=True)
        tmp = self.exe + ".new"
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, self.exe)
        self.record("install -m 0755 <build> %s.new && mv %s.new %s" % (self.exe, self.exe, self.exe))

    def version(self):
        p = subprocess.run([self.exe, "-V", "-c", "/nonexistent"], capture_output=True, text=True, timeout=20)
        first = p.stdout.splitlines()[0].split() if p.stdout else []
        return first[1] if len(first) > 1 else None

    def other_build(self, suffix):
        """The installed binary with another version string: the version is
        stored once, NUL-padded to 32 bytes (proxy/version.c), so a copy can
        carry another one, as a new build would. (data, version) or (None, why)."""
        cur = self.version()
        with open(self.exe, "rb") as f:
            data = f.read()
        new = (cur or "") + suffix
        old = (cur or "").encode().ljust(32, b"\0")
        if not cur or data.count(old) != 1 or len(new) >= 32:
            return None, "version %r not found once in the binary" % cur
        return data.replace(old, new.encode().ljust(32, b"\0")), new

    def setup(self):
        n = self.a.instances
        with open(self.binary, "rb") as f:
            self.install(f.read())
        for short in ["client", "router"] + ["p%d" % i for i in range(1, n + 1)] + list(BACKENDS):
            self.add_ns(short)
        self.link("router", "rc", "10.77.1.1", "client", "eth0", CLIENT_IP)
        self.ip("client", "route", "add", "default", "via", "10.77.1.1")
        for i in range(1, n + 1):
            self.link("router", "rp%d" % i, "10.77.%d.1" % (10 + i), "p%d" % i, "eth0", inst_addr(i))
            self.ip("p%d" % i, "route", "add", "default", "via", "10.77.%d.1" % (10 + i))
            self.ip("p%d" % i, "addr", "add", VIP + "/32", "dev", "lo")
        for k, (b, addr) in enumerate(BACKENDS.items()):
            gw = addr.rsplit(".", 1)[0] + ".1"
            self.link("router", "rb%d" % (k + 1), gw, b, "eth0", addr)
            self.ip(b, "route", "add", "default", "via", gw)
        self.run(["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1",
                  "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"], ns="router")
        for i in range(1, n + 1):
            self.ip("router", "nexthop", "add", "id", str(i), "via", inst_addr(i), "dev", "rp%d" % i)
            # Table 200+i sends the VIP to instance i alone: used by the drain pin.
            self.ip("router", "route", "add", VIP + "/32", "nhid", str(i), "table", str(200 + i))
        # The conntrack mark of a connection = the instance its first packet
        # went to (set after routing, in forward); restored on every packet
        # from the client, where `ip rule fwmark` can see it.
        marks = ", ".join('"rp%d" : %d' % (i, i) for i in range(1, n + 1))
        # Named counters: new flows the router sent to each instance, the
        # router's own record that nothing new reaches a removed one.
        counters = "".join("  counter new_p%d { }\n" % i for i in range(1, n + 1))
        count = "".join('    ip daddr %s ct state new oifname "rp%d" counter name "new_p%d"\n' % (VIP, i, i)
                        for i in range(1, n + 1))
        nft = ("table ip spc {\n" + counters +
               "  chain mark_new {\n    type filter hook forward priority mangle; policy accept;\n"
               "    ip daddr %s ct state new ct mark set oifname map { %s }\n" + count + "  }\n"
               "  chain restore {\n    type filter hook prerouting priority mangle; policy accept;\n"
               "    iifname \"rc\" meta mark set ct mark\n  }\n}\n") % (VIP, marks)
        path = os.path.join(self.logdir, "router.nft")
        with open(path, "w") as f:
            f.write(nft)
        self.run(["nft", "-f", path], ns="router")
        for b, addr in BACKENDS.items():
            self.spawn(b, [sys.executable, os.path.join(HERE, "backend.py"), "--listen", addr,
                           "--http", str(HTTP_PORT), "--stream", str(STREAM_PORT), "--stats", str(BACKEND_STATS_PORT),
                           "--expect-client", CLIENT_IP, "--vip", VIP, "--keepalive-s", str(self.a.backend_keepalive_s)],
                       os.path.join(self.logdir, "backend-%s.log" % b))
        for b in BACKENDS:
            self.wait_for(lambda b=b: self.backend_stats()[b] is not None, 10, "backend %s" % b)
        for i in range(1, n + 1):
            self.start_instance(i)
        self.set_group(list(range(1, n + 1)), first=True)
        self.ip("router", "route", "add", VIP + "/32", "nhid", str(GROUP))
        self.log("set up: client, router, %d instances (%d shards each), 2 backends; group %d = %s"
                 % (n, self.a.workers, GROUP, self.group_text()))

    def cleanup(self):
        for i in sorted(self.pinned):
            self.ip("router", "rule", "del", "pref", str(1000 + i), check=False)
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        for short in list(reversed(self.created)):
            self.del_ns(short)
        for p in self.procs:
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                pass
        left = [n for n in self.run(["ip", "netns", "list"], check=False).stdout.split()
                if n.startswith(self.prefix)]
        if left:
            print("cluster: could not delete namespaces: %s" % " ".join(left), file=sys.stderr)
        return not left

    def wait_for(self, pred, timeout_s, what):
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if pred():
                return
            time.sleep(0.1)
        raise StepFailed("%s not ready within %.0f s" % (what, timeout_s))

    # ---- instances and the group --------------------------------------------

    def start_instance(self, i):
        conf = os.path.join(self.logdir, "p%d.json" % i)
        servers = lambda port: [{"address": "%s:%d" % (a, port)} for a in BACKENDS.values()]
        with open(conf, "w") as f:
            json.dump({
                "workers": self.a.workers, "steering": "hash", "relay": "auto",
                "log": {"level": "info", "access_log": False},
                "admin": {"listen": "127.0.0.1:9901"},
                "limits": {"max_connections": 4096, "drain_timeout_ms": self.a.drain_timeout_ms},
                "listeners": [
                    {"name": "http", "listen": "%s:%d" % (VIP, HTTP_PORT), "routes": [{"upstream": "http"}]},
                    {"name": "stream", "listen": "%s:%d" % (VIP, STREAM_PORT), "routes": [{"upstream": "stream"}]}],
                "upstreams": [
                    {"name": "http", "balance": "round_robin", "send_proxy_protocol": "v2", "servers": servers(HTTP_PORT)},
                    {"name": "stream", "balance": "round_robin", "send_proxy_protocol": "v2",
                     "servers": servers(STREAM_PORT)}]}, f, indent=1)
        p = self.spawn("p%d" % i, [self.exe, "-c", conf], os.path.join(self.logdir, "p%d.log" % i))
        # `ip netns exec` execs the command: p.pid is the supervisor.
        self.sup[i] = p.pid
        self.wait_for(lambda: p.poll() is None and self.admin(i, "/healthz")[0] == 200, 10, "instance p%d" % i)
        if p.poll() is not None:
            raise StepFailed("instance p%d exited %s at start" % (i, p.returncode))

    def group_text(self):
        return "/".join(str(i) for i in self.group) or "(empty)"

    def set_group(self, members, first=False):
        self.ip("router", "nexthop", "add" if first else "replace", "id", str(GROUP),
                "group", "/".join(str(i) for i in members), "type", "resilient",
                "buckets", str(self.a.buckets), "idle_timer", str(self.a.idle_timer))
        self.group = list(members)

    def pin(self, i):
        """Established flows of instance i keep going to it (drain)."""
        self.ip("router", "rule", "add", "pref", str(1000 + i), "fwmark", str(i), "lookup", str(200 + i))
        self.pinned.add(i)

    def unpin(self, i):
        self.ip("router", "rule", "del", "pref", str(1000 + i))
        self.pinned.discard(i)

    def new_flows(self, i):
        """SYNs (conntrack state new) the router forwarded to instance i."""
        p = self.run(["nft", "list", "counter", "ip", "spc", "new_p%d" % i], ns="router")
        m = re.search(r"packets (\d+)", p.stdout)
        return int(m.group(1)) if m else None

    def buckets(self):
        p = self.ip("router", "nexthop", "bucket", "show", "id", str(GROUP))
        per = {}
        for m in re.finditer(r"nhid (\d+)", p.stdout):
            per[int(m.group(1))] = per.get(int(m.group(1)), 0) + 1
        return per

    # ---- load ---------------------------------------------------------------

    def start_load(self, target=None, probe=False):
        a = self.a
        load = {"t_start": time.monotonic(), "backends": self.backend_stats()}
        args = ["transfers", "--vip", VIP, "--port", str(STREAM_PORT), "--count", str(a.transfers),
                "--seconds", str(a.transfer_seconds), "--rate-kib", str(a.transfer_rate_kib)]
        if target:
            args += ["--target-via", inst_addr(target), "--min-target", "2"]
        load["transfers"] = ClientJob(self, args, "transfers")
        load["started"] = load["transfers"].first_line(15)
        load["ka"] = Wrk(self, "keepalive", a.wrk_conns, a.step_seconds, close=False)
        load["close"] = Wrk(self, "close", max(2, a.wrk_conns // 2), a.step_seconds, close=True)
        if probe:
            load["probe"] = ClientJob(self, ["probe", "--vip", VIP, "--port", str(HTTP_PORT),
                                             "--seconds", str(a.step_seconds), "--interval-ms", "20",
                                             "--timeout-ms", "1000"], "probe")
        return load

    def at(self, load, t):
        """Sleep until t seconds after the load started."""
        d = load["t_start"] + t - time.monotonic()
        if d > 0:
            time.sleep(d)

    def finish_load(self, load):
        a = self.a
        res = {"ka": load["ka"].finish(), "close": load["close"].finish()}
        res["transfers"] = load["transfers"].result(a.transfer_seconds + 90)["results"]
        if "probe" in load:
            res["probe"] = load["probe"].result(a.step_seconds + 30)["attempts"]
        # The PROXY v2 headers the backends checked during the step.
        after = self.backend_stats()
        res["proxy_ok"] = res["proxy_bad"] = 0
        res["proxy_samples"] = []
        for b, s1 in after.items():
            s0 = load["backends"].get(b)
            if s1 is None or s0 is None:
                raise StepFailed("backend %s does not answer its stats port" % b)
            res["proxy_ok"] += s1["header_ok"] - s0["header_ok"]
            res["proxy_bad"] += s1["header_bad"] - s0["header_bad"]
            res["proxy_samples"] += s1["bad_samples"][len(s0["bad_samples"]):]
        return res

    def via_name(self, addr):
        for i in range(1, self.a.instances + 1):
            if inst_addr(i) == addr:
                return "p%d" % i
        return str(addr)

    def transfer_text(self, transfers, target=None):
        ok = sum(1 for t in transfers if t["ok"])
        s = "%d/%d ok" % (ok, len(transfers))
        if target:
            on = [t for t in transfers if t["via"] == inst_addr(target)]
            s += " (p%d: %d/%d)" % (target, sum(1 for t in on if t["ok"]), len(on))
        return s

    def row(self, step, inst, res, figure, ok, problems, measured=False):
        self.rows.append({"step": step, "inst": inst, "measured": measured, "ka": res["ka"].describe() if res else "-",
                          "close": res["close"].describe() if res else "-",
                          "proxy": "%d ok, %d bad" % (res["proxy_ok"], res["proxy_bad"]) if res else "-",
                          "transfers": res.get("transfer_text", "-") if res else "-",
                          "figure": figure, "ok": ok, "problems": problems})
        self.log("%s %s: %s%s" % (step, inst, "PASS" if ok else "FAIL",
                                  "" if ok else ": " + "; ".join(problems)))

    def common_checks(self, res, problems, wrk_clean=True):
        if res["proxy_bad"]:
            problems.append("backends rejected %d PROXY v2 header(s): %s" % (
                res["proxy_bad"], "; ".join(x["why"] for x in res["proxy_samples"][:2])))
        if not res["proxy_ok"]:
            problems.append("backends saw no PROXY v2 header")
        if wrk_clean:
            for k in ("ka", "close"):
                if res[k].total_errors():
                    problems.append("wrk %s: %s" % (res[k].name, res[k].describe()))
                if not res[k].requests:
                    problems.append("wrk %s completed no request" % res[k].name)
        bad = [t for t in res["transfers"] if not t["ok"]]
        for t in bad[:3]:
            problems.append("transfer %d via %s: %s" % (t["id"], self.via_name(t["via"]), t["error"]))

    # ---- the steps ----------------------------------------------------------

    def step_remove(self, i, pin=True):
        """pin=False is what a stateless router does on a withdraw: measured,
        to show what the pin buys; its own flows are expected to break."""
        a = self.a
        name = "remove" if pin else "remove, no pin"
        self.log("%s p%d: load on, then nexthop %d out of the group, then SIGTERM" % (name, i, i))
        load = self.start_load(target=i)
        self.at(load, a.op_at)
        if pin:
            self.pin(i)
        self.set_group([k for k in self.group if k != i])
        ctr_change = self.new_flows(i)
        acc_change = self.accepted(i)
        self.log("  group %d = %s; p%d accepted %s at the change; the router had sent it %s new flows"
                 % (GROUP, self.group_text(), i, acc_change, ctr_change))
        time.sleep(a.settle_s)
        acc_settle = self.accepted(i)
        os.kill(self.sup[i], signal.SIGTERM)
        t_term = time.monotonic()
        last = acc_settle
        pid = self.sup[i]
        status = "?"
        end = time.monotonic() + a.drain_timeout_ms / 1000 + 5
        while time.monotonic() < end:
            child = next((p for p in self.procs if p.pid == pid), None)
            if child is not None and child.poll() is not None:
                status = child.returncode
                break
            v = self.accepted(i)
            if v is not None:
                last = v
            time.sleep(0.2)
        drained_s = time.monotonic() - t_term
        if pin:
            self.unpin(i)
        res = self.finish_load(load)
        res["transfer_text"] = self.transfer_text(res["transfers"], i)
        problems = []
        on = [t for t in res["transfers"] if t["via"] == inst_addr(i)]
        if pin:
            self.common_checks(res, problems)
        else:
            self.common_checks(dict(res, transfers=[t for t in res["transfers"] if t not in on]), problems,
                               wrk_clean=False)
        if not on:
            problems.append("no transfer ran through p%d" % i)
        # Nothing new reaches it: the router forwarded no new flow to it after
        # the change, and it accepted nothing from then on. A connection the
        # router sent it just before the change may still be accepted just
        # after (a busy shard); the router's counter tells those apart.
        ctr_end = self.new_flows(i)
        late_routed = None if ctr_end is None or ctr_change is None else ctr_end - ctr_change
        if late_routed != 0:
            problems.append("the router sent p%d %s new flow(s) after the group change" % (i, late_routed))
        if acc_change is None or last != acc_settle:
            problems.append("p%d accepted %s at the change, %s %.0f s later, %s at its exit"
                            % (i, acc_change, acc_settle, a.settle_s, last))
        if status != 0:
            problems.append("p%d exit status %s after SIGTERM" % (i, status))
        in_flight = (acc_settle - acc_change) if acc_change is not None and acc_settle is not None else None
        figure = ("new flows routed to p%d after the change: %s; accepted after the change: %s%s; "
                  "drained and exited %s in %.1f s"
                  % (i, late_routed, last - acc_change if acc_change is not None and last is not None else "?",
                     " (routed before it)" if in_flight else "", status, drained_s))
        if not pin:
            figure = ("measured: p%d transfers broken %d/%d (%s); " % (
                i, sum(1 for t in on if not t["ok"]), len(on),
                ", ".join(sorted(set(t["error"] for t in on if not t["ok"]))) or "none")) + figure
        self.row(name, "p%d" % i, res, figure, not problems, problems, measured=not pin)
        del self.sup[i]

    def step_add(self, i):
        a = self.a
        self.log("add p%d: start it, load on, then its nexthop into the group" % i)
        self.start_instance(i)
        before_members = list(self.group)
        load = self.start_load()
        self.at(load, a.op_at)
        acc0 = {k: self.accepted(k) for k in before_members + [i]}
        self.set_group(sorted(before_members + [i]))
        self.log("  group %d = %s" % (GROUP, self.group_text()))
        res = self.finish_load(load)
        acc1 = {k: self.accepted(k) for k in before_members + [i]}
        delta = {k: (acc1[k] or 0) - (acc0[k] or 0) for k in acc0}
        total = sum(delta.values()) or 1
        share = delta[i] / total
        bk = self.buckets()
        res["transfer_text"] = self.transfer_text(res["transfers"])
        problems = []
        self.common_checks(res, problems)
        moved = [t for t in res["transfers"] if t["via"] == inst_addr(i)]
        if moved:
            problems.append("%d transfer(s) opened before the add ran through p%d" % (len(moved), i))
        if delta[i] <= 0:
            problems.append("p%d accepted no connection after its nexthop was added" % i)
        figure = "p%d took %.0f%% of new connections after the add (%d of %d); buckets %s" % (
            i, 100 * share, delta[i], total, " ".join("nh%d:%d" % kv for kv in sorted(bk.items())))
        self.row("add", "p%d" % i, res, figure, not problems, problems)

    def step_reload(self, i):
        a = self.a
        self.log("reload p%d: SIGHUP under load" % i)
        s0 = self.stats(i)
        load = self.start_load(target=i)
        self.at(load, a.op_at)
        os.kill(self.sup[i], signal.SIGHUP)
        res = self.finish_load(load)
        s1 = self.stats(i)
        res["transfer_text"] = self.transfer_text(res["transfers"], i)
        problems = []
        self.common_checks(res, problems)
        if not s1 or s1["reloads"]["ok"] != s0["reloads"]["ok"] + 1:
            problems.append("p%d reloads.ok %s -> %s" % (i, s0["reloads"]["ok"], s1 and s1["reloads"]["ok"]))
        figure = "generation %d -> %s" % (s0["generation"], s1 and s1["generation"])
        self.row("reload", "p%d" % i, res, figure, not problems, problems)

    def step_upgrade(self, i):
        a = self.a
        old = self.sup[i]
        v0 = self.version()
        data, v1 = self.other_build("-upgraded")
        if data is None:
            raise StepFailed("upgrade: cannot make another build: %s" % v1)
        self.log("upgrade p%d: %s installed over %s, then SIGUSR2 under load" % (i, v1, v0))
        self.install(data)
        load = self.start_load(target=i)
        self.at(load, a.op_at)
        t_sig = time.monotonic()
        os.kill(old, signal.SIGUSR2)
        new = s1 = None
        while time.monotonic() < t_sig + 10:
            s = self.stats(i)
            if s and s["pid"] != old:
                new, s1 = s["pid"], s
                break
            time.sleep(0.05)
        t_new = time.monotonic() - t_sig
        status = t_gone = None
        if new:
            self.sup[i] = new
            try:
                status = self.wait_exit(old, a.drain_timeout_ms / 1000 + 5)
                t_gone = time.monotonic() - t_sig
            except StepFailed:
                pass
        res = self.finish_load(load)
        s2 = self.stats(i) if new else None
        res["transfer_text"] = self.transfer_text(res["transfers"], i)
        problems = []
        self.common_checks(res, problems)
        if not new:
            problems.append("no new supervisor answered /stats within 10 s of SIGUSR2")
        else:
            if s1["version"] != v1:
                problems.append("the new supervisor reports version %r, want %r" % (s1["version"], v1))
            if t_gone is None:
                problems.append("old supervisor %d still running after the drain" % old)
            elif status not in (0, None):
                problems.append("old supervisor %d exited %s" % (old, status))
            if not s2 or s2["totals"]["accepted"] == 0:
                problems.append("the new supervisor accepted no connection during the step")
        figure = "supervisor pid %d (%s) -> %s (%s)" % (old, v0, new, s1["version"] if s1 else "-")
        if new:
            figure += "; new pid answered /stats %.2f s after SIGUSR2" % t_new
            if t_gone is not None:
                figure += ", old one drained and exited %s %.1f s after it" % (
                    "0" if status in (0, None) else status, t_gone)
            if s2:
                figure += "; new pid accepted %d connections by the end of the step" % s2["totals"]["accepted"]
        self.row("upgrade", "p%d" % i, res, figure, not problems, problems)

    def step_crash(self, i, detect_ms):
        a = self.a
        self.log("crash p%d: SIGKILL its supervisor under load; nexthop out %d ms later" % (i, detect_ms))
        load = self.start_load(target=i, probe=True)
        self.at(load, a.op_at)
        t_kill = time.time()
        os.kill(self.sup[i], signal.SIGKILL)
        time.sleep(detect_ms / 1000)
        self.set_group([k for k in self.group if k != i])
        t_out = time.time()
        res = self.finish_load(load)
        # Whatever the supervisor left (draining shards) goes now.
        left = self.ns_pids("p%d" % i)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        del self.sup[i]
        on = [t for t in res["transfers"] if t["via"] == inst_addr(i)]
        others = [t for t in res["transfers"] if t["via"] != inst_addr(i)]
        broken = [t for t in on if not t["ok"]]
        probe = res["probe"]
        fails = [p for p in probe if not p["ok"]]
        late = [p for p in fails if p["t"] > t_out + 0.05]
        kinds = {}
        for p in fails:
            kinds[p["error"]] = kinds.get(p["error"], 0) + 1
        first = (fails[0]["t"] - t_kill) if fails else None
        last_end = max((p["t"] + p["ms"] / 1000 - t_kill for p in fails), default=None)
        res["transfer_text"] = self.transfer_text(res["transfers"], i)
        problems = []
        self.common_checks(dict(res, transfers=others), problems, wrk_clean=False)
        if late:
            problems.append("%d new connection(s) failed after the nexthop was out (first: %s)"
                            % (len(late), late[0]["error"]))
        if not on:
            problems.append("no transfer ran through p%d" % i)
        figure = ("nexthop out %d ms after the kill: p%d transfers broken %d/%d; new-connection probe %d/%d failed (%s)%s; "
                  "wrk conn-per-request %.0f req/s; shards still draining at the end: %d"
                  % (detect_ms, i, len(broken), len(on), len(fails), len(probe),
                     ", ".join("%s %d" % kv for kv in sorted(kinds.items())) or "none",
                     "" if first is None else ", from +%.2f s to +%.2f s after the kill" % (first, last_end),
                     res["close"].requests / a.step_seconds, len(left)))
        self.crash_detail = getattr(self, "crash_detail", []) + [{
            "detect_ms": detect_ms, "broken": [t["error"] for t in broken], "on": len(on),
            "ka": res["ka"].errors, "close": res["close"].errors, "probe_fail_kinds": kinds,
            "probe_total": len(probe), "first": first, "last_end": last_end, "shards_left": len(left)}]
        self.row("crash", "p%d" % i, res, figure, not problems, problems, measured=True)

    # ---- the run ------------------------------------------------------------

    def run_steps(self):
        a = self.a
        n = a.instances
        last, first = n, 1
        self.step_remove(last)
        self.step_add(last)
        self.step_reload(first)
        if self.upgrade[0]:
            self.step_upgrade(min(2, n))
        else:
            self.rows.append({"step": "upgrade", "inst": "-", "ka": "-", "close": "-", "transfers": "-", "proxy": "-",
                              "figure": "not available: " + self.upgrade[1], "ok": None, "problems": []})
            self.log("upgrade: not available (%s)" % self.upgrade[1])
        if a.unpinned_remove:
            self.step_remove(last, pin=False)
            self.log("p%d back in the group" % last)
            self.start_instance(last)
            self.set_group(sorted(self.group + [last]))
        for k, ms in enumerate(a.crash_detect_ms):
            if k > 0:
                self.log("crash: p%d back in the group for the next detection delay" % last)
                self.start_instance(last)
                self.set_group(sorted(self.group + [last]))
            self.step_crash(last, ms)

    def summary(self):
        hdr = ("step", "instance", "wrk keep-alive", "wrk conn-per-request", "long transfers",
               "PROXY v2 at backends", "result", "measured")
        rows = [(r["step"], r["inst"], r["ka"], r["close"], r["transfers"], r["proxy"],
                 ("PASS, measured" if r.get("measured") else "PASS") if r["ok"]
                 else ("n/a" if r["ok"] is None else "FAIL"), r["figure"]) for r in self.rows]
        lines = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        for d in getattr(self, "crash_detail", []):
            errs = {}
            for e in d["broken"]:
                errs[e] = errs.get(e, 0) + 1
            lines.append("")
            wrk_errs = lambda e: ", ".join("%s %d" % kv for kv in e.items() if kv[1]) or "none"
            lines.append("crash, nexthop out after %d ms: transfers on the instance: %s; wrk errors: keep-alive %s, "
                         "conn-per-request %s" % (
                             d["detect_ms"], ", ".join("%d x %s" % (n, e) for e, n in errs.items()) or "none broken",
                             wrk_errs(d["ka"]), wrk_errs(d["close"])))
        return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default=os.path.join(REPO, "build"))
    p.add_argument("--instances", type=int, default=3, choices=(2, 3))
    p.add_argument("--workers", type=int, default=2, help="shards per instance")
    p.add_argument("--step-seconds", type=int, default=12, help="wrk duration per step")
    p.add_argument("--op-at", type=float, default=3.0, help="seconds into the load when the operation starts")
    p.add_argument("--settle-s", type=float, default=2.0, help="remove: wait between the group change and SIGTERM")
    p.add_argument("--wrk-conns", type=int, default=16)
    p.add_argument("--transfers", type=int, default=6)
    p.add_argument("--transfer-seconds", type=int, default=8)
    p.add_argument("--transfer-rate-kib", type=int, default=256)
    p.add_argument("--drain-timeout-ms", type=int, default=20000)
    p.add_argument("--backend-keepalive-s", type=float, default=2.0,
                   help="backends end a keep-alive connection this old (Connection: close)")
    p.add_argument("--buckets", type=int, default=512)
    p.add_argument("--idle-timer", type=int, default=1, help="resilient group idle_timer (s)")
    p.add_argument("--crash-detect-ms", default="500,2000",
                   help="comma-separated: ms between SIGKILL and taking the nexthop out; one crash step each")
    p.add_argument("--no-unpinned-remove", dest="unpinned_remove", action="store_false",
                   help="skip the measured remove without the conntrack pin (a stateless withdraw)")
    p.add_argument("--max-seconds", type=int, default=600, help="hard limit for the whole run")
    p.add_argument("--keep-logs", action="store_true")
    p.add_argument("--summary-out", help="also write the summary table (markdown) to this file")
    a = p.parse_args()
    a.crash_detect_ms = [int(x) for x in a.crash_detect_ms.split(",") if x.strip()]

    cl = Cluster(a)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(s, _raise_interrupt)
    signal.alarm(a.max_seconds)
    status = 0
    try:
        missing = cl.prerequisites()
        if missing:
            print("cluster-test: missing prerequisites:", file=sys.stderr)
            for m in missing:
                print("  - " + m, file=sys.stderr)
            status = 2
            return status
        os.makedirs(cl.logdir, exist_ok=True)
        cl.upgrade = cl.probe_upgrade()
        cl.log("binary upgrade (SIGUSR2): %s (%s)" % ("available" if cl.upgrade[0] else "not available", cl.upgrade[1]))
        cl.setup()
        cl.run_steps()
    except Interrupted as e:
        print("cluster-test: interrupted (%s): cleaning up" % e, file=sys.stderr)
        status = 130
    except StepFailed as e:
        print("cluster-test: %s" % e, file=sys.stderr)
        status = 1
    finally:
        signal.alarm(0)
        # No second signal may cut the clean-up short.
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        clean = cl.cleanup()
        if status != 2 and cl.rows:
            table = cl.summary()
            print("\n" + table)
            if a.summary_out:
                with open(a.summary_out, "w") as f:
                    f.write(table + "\n")
        if status == 0 and any(r["ok"] is False for r in cl.rows):
            status = 1
        if not clean and status == 0:
            status = 1
        if status == 0 and not a.keep_logs:
            shutil.rmtree(cl.logdir, ignore_errors=True)
        elif status != 2:
            print("cluster-test: logs in %s" % cl.logdir, file=sys.stderr)
        else:
            shutil.rmtree(cl.logdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
