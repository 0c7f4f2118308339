#!/usr/bin/env python3
"""Where the time goes: one proxy at a time (HAProxy, shardproxy), each under
the same client, with `perf stat` (syscalls, context switches, CPU) and
`perf record -g` on the proxy's processes only. Used for docs/BENCHMARKS.md
Findings; not part of `make bench`.

    python3 tests/bench/profile.py --build build --workload redis_p16 --out /tmp/prof
    workloads: redis, redis_p16, pg, close, keepalive

Per workload and proxy it writes OUT/<workload>-<proxy>.{stat,report} and
prints syscalls and CPU per request. Needs root (perf on other processes).
"""

import argparse
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def client(ctx, w, port, secs):
    if w in ("redis", "redis_p16"):
        depth = bench.REDIS_WORKLOADS[w][1]
        rate = ctx.redis_rate.get(w, 20000.0 * depth)
        return bench.run_redis_benchmark(port, int(rate * secs / 2), depth, secs * 6 + 30)
    if w == "pg":
        return bench.run_pgbench(port, secs, secs + 30)
    extra = ("-H", "Connection: close") if w == "close" else ()
    return bench.run_wrk(ctx.args, "http://%s:%d/" % (bench.HOST, port), secs, extra, 2, 50)


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--workload", default="redis_p16")
    ap.add_argument("--proxies", default="haproxy,shardproxy-auto")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--out", default="/tmp/prof")
    ap.add_argument("--no-record", action="store_true", help="perf stat only")
    ap.add_argument("--base", default=None, metavar="BINARY",
                    help="another shardproxy binary: a proxy NAME@base runs NAME on it")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    ctx = bench.Ctx()
    ctx.args = argparse.Namespace(duration=a.seconds)
    build = os.path.abspath(a.build)
    backend = bench.start_demo_backend(os.path.join(build, "demo-upstream"), 2)
    ctx.redis_rate = {}
    extra = []
    if a.workload.startswith("redis"):
        srv = bench.start_redis()
        depth = bench.REDIS_WORKLOADS[a.workload][1]
        r = bench.run_redis_benchmark(srv.port, 5000 * depth, depth, 60)
        ctx.redis_rate[a.workload] = r["rps"] or 20000.0 * depth
        extra = [("redis", srv.port)]
    elif a.workload == "pg":
        srv, why = bench.start_postgres()
        if not srv:
            raise SystemExit(why)
        extra = [("pg", srv.port)]
    for name in a.proxies.split(","):
        if name == "haproxy":
            p = bench.start_haproxy(2, backend.port, extra)
        else:
            vname, _, which = name.partition("@")
            relay, steering, *more = bench.SHARDPROXY_VARIANTS[vname]
            binpath = a.base if which == "base" else os.path.join(build, "shardproxy")
            p = bench.start_shardproxy(binpath, 2, relay, steering, backend.port, 10000,
                                       extra=extra, affinity=more[0] if more else None,
                                       io=bench.SHARDPROXY_IO.get(vname))
        port = p.ports[extra[0][0]] if extra else p.port
        pids = [x for x in p.pids() if x != p.pid or name == "haproxy"]
        time.sleep(0.5)
        tag = "%s/%s-%s" % (a.out, a.workload, name)
        ev = "raw_syscalls:sys_enter,context-switches,cpu-clock,task-clock"
        stat = subprocess.Popen(["perf", "stat", "-e", ev, "-o", tag + ".stat", "-p",
                                 ",".join(map(str, pids))])
        rec = None
        if not a.no_record:
            rec = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-o", tag + ".data",
                                    "-p", ",".join(map(str, pids))], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        c0 = bench.cpu_ticks(p.pids())
        r = client(ctx, a.workload, port, a.seconds)
        cpu = bench.cpu_delta_s(c0, bench.cpu_ticks(p.pids()))
        for q in (stat, rec):
            if q:
                q.send_signal(2)
                q.wait()
        p.stop()
        st = open(tag + ".stat").read()
        m = re.search(r"([\d,]+)\s+raw_syscalls:sys_enter", st)
        cs = re.search(r"([\d,]+)\s+context-switches", st)
        nsys = int(m.group(1).replace(",", "")) if m else 0
        ncs = int(cs.group(1).replace(",", "")) if cs else 0
        req = r.get("requests") or 0
        print("%s %s: %.0f req/s, %d requests, proxy CPU %.2f s = %.2f us/req, %d syscalls = "
              "%.3f per request, %d context switches = %.3f per request"
              % (a.workload, name, r["rps"] or 0, req, cpu, cpu / req * 1e6 if req else 0,
                 nsys, nsys / req if req else 0, ncs, ncs / req if req else 0))
        if rec:
            with open(tag + ".report", "w") as f:
                subprocess.run(["perf", "report", "-i", tag + ".data", "--no-children",
                                "--sort", "sym", "--stdio", "-g", "none", "--percent-limit",
                                "0.7"], stdout=f, stderr=subprocess.DEVNULL)
            with open(tag + ".syscalls", "w") as f:
                subprocess.run(["perf", "report", "-i", tag + ".data", "--no-children",
                                "--sort", "sym", "--stdio", "-g", "caller,0.5,callee,function",
                                "--percent-limit", "3"], stdout=f, stderr=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    try:
        rc = main(sys.argv[1:])
    finally:
        bench.cleanup()
    sys.exit(rc)
