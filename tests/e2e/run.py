#!/usr/bin/env python3
"""End-to-end test runner: drives the real shardproxy binary over loopback.

  python3 tests/e2e/run.py --build build            every test
  python3 tests/e2e/run.py --build build -k reload  tests whose name contains "reload"
  python3 tests/e2e/run.py --build build -v         stream each test's own log
  python3 tests/e2e/run.py --list

Discovers tests/e2e/test_*.py and runs each function named test_* in its own
Python process with a wall-clock bound (the function's `timeout` attribute,
default 60 s), so a hung test is killed, its proxies and upstreams with it.
Prints `PASS name (1.2s)`, `FAIL name: reason` or `SKIP name: reason` per
test, then a summary; exits 1 if any test failed. A failed test (other than
one failed by a sanitizer report) runs once more after the others; if it
passes then, it is reported as FLAKY: it does not fail the run, but it is
not counted as passed either, so a timing bug cannot hide behind the rerun.
The summary ends with

  90 tests in 312 s: 86 passed, 2 flaky, 1 failed, 1 skipped
  failed: test_c
  flaky: 2 (failed, then passed on the rerun): test_a test_b
  86 passed, 1 failed, 1 skipped

the last line alone in the `N passed, N failed, N skipped` form CI parsers
read ("passed" excludes the flaky ones); the `flaky: N` line is always there.
"""

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import lib  # noqa: E402

DEFAULT_TIMEOUT = 60


def discover(substr=None, where=HERE):
    tests = []
    for fn in sorted(os.listdir(where)):
        if not (fn.startswith("test_") and fn.endswith(".py")):
            continue
        modname = fn[:-3]
        mod = importlib.import_module(modname)
        for name, obj in vars(mod).items():
            if name.startswith("test_") and callable(obj) and getattr(obj, "__module__", None) == modname:
                if substr and substr not in name and substr not in modname:
                    continue
                line = obj.__code__.co_firstlineno
                tests.append((modname, name, line, getattr(obj, "timeout", DEFAULT_TIMEOUT),
                              getattr(obj, "needs", ())))
    tests.sort(key=lambda t: (t[0], t[2]))
    return tests


# ---- child: run one test --------------------------------------------------------


def run_one(build, modname, name, result_path):
    mod = importlib.import_module(modname)
    fn = getattr(mod, name)
    ctx = lib.Ctx(build, name)
    status, reason = "PASS", ""

    def on_term(signum, frame):
        raise TimeoutError("test exceeded its wall-clock bound")

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.monotonic()
    try:
        fn(ctx)
    except lib.Skip as e:
        status, reason = "SKIP", str(e)
    except lib.TestFailure as e:
        status, reason = "FAIL", str(e)
        if lib.VERBOSE:
            traceback.print_exc()
    except BaseException as e:  # report everything else as a failure with where it happened
        status = "FAIL"
        tb = traceback.extract_tb(e.__traceback__)
        where = ""
        for fr in reversed(tb):
            if os.path.basename(fr.filename).startswith("test_") or os.path.basename(fr.filename) == "lib.py":
                where = " at %s:%d" % (os.path.basename(fr.filename), fr.lineno)
                break
        reason = "%s: %s%s" % (type(e).__name__, e, where)
        if lib.VERBOSE:
            traceback.print_exc()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        elapsed = time.monotonic() - t0
        keep = status == "FAIL" and os.environ.get("E2E_KEEP") == "1"
        ctx.cleanup(keep_tmp=keep)
        if ctx.sanitizer_reports and status != "FAIL":
            status, reason = "FAIL", "sanitizer report: " + "; ".join(ctx.sanitizer_reports)
        if keep:
            reason += " (kept %s)" % ctx.tmpdir
        with open(result_path, "w") as f:
            json.dump({"status": status, "reason": reason, "elapsed": elapsed}, f)


# ---- parent ------------------------------------------------------------------


def kill_registered(pids_path):
    """Kill any process group a finished test left behind."""
    left = []
    try:
        with open(pids_path) as f:
            entries = [l.split() for l in f if l.strip()]
    except OSError:
        return left
    for pid_s, st in entries:
        pid = int(pid_s)
        if lib._starttime(pid) is None or lib._starttime(pid) != st:
            # gone, or the pid was reused; its group may still hold orphans
            members = lib.pgid_members(pid)
        else:
            members = [pid]
        if members:
            left.append(pid)
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return left


def is_sanitized(binary):
    try:
        with open(binary, "rb") as f:
            return b"AddressSanitizer" in f.read()
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser(description="shardproxy end-to-end tests")
    ap.add_argument("--build", default="build", help="build directory holding shardproxy")
    ap.add_argument("-k", dest="substr", help="only tests whose name contains this")
    ap.add_argument("-v", dest="verbose", action="store_true", help="show each test's log")
    ap.add_argument("--list", action="store_true", help="list the tests and exit")
    ap.add_argument("--slow", type=float, default=None,
                    help="multiply every wall-clock bound (default: 2 for a sanitizer build)")
    ap.add_argument("--dir", default=HERE,
                    help="where the test_*.py files are (default: this directory)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args()

    a.dir = os.path.abspath(a.dir)
    if a.dir != HERE:
        sys.path.insert(0, a.dir)
    if a.one:
        modname, name = a.one.split(":")
        run_one(a.build, modname, name, a.result)
        return 0

    tests = discover(a.substr, a.dir)
    if a.list:
        for modname, name, _, tmo, needs in tests:
            print("%-70s %4ds %s" % ("%s:%s" % (modname, name), tmo, ",".join(needs)))
        return 0
    if not tests:
        print("no tests match")
        return 1

    binary = os.path.join(a.build, "shardproxy")
    if not os.access(binary, os.X_OK):
        print("FAIL e2e: %s not found or not executable (build it with make)" % binary)
        return 1
    slow = a.slow if a.slow else (2.0 if is_sanitized(binary) else 1.0)

    env = dict(os.environ)
    if a.verbose:
        env["E2E_VERBOSE"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"

    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    failed = []
    t_start = time.monotonic()
    work = tempfile.mkdtemp(prefix="e2e-run-")
    def run_test(modname, name, tmo):
        """One test in its own process; returns (status, reason, elapsed, output file)."""
        bound = tmo * slow
        result = os.path.join(work, name + ".json")
        pids = os.path.join(work, name + ".pids")
        outp = os.path.join(work, name + ".out")
        for stale in (result, pids):
            try:
                os.unlink(stale)
            except OSError:
                pass
        env["E2E_PIDS"] = pids
        cmd = [sys.executable, os.path.abspath(__file__), "--build", a.build, "--dir", a.dir,
               "--one", "%s:%s" % (modname, name), "--result", result]
        out = None if a.verbose else open(outp, "wb")
        if a.verbose:
            print("---- %s" % name, flush=True)
        t0 = time.monotonic()
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None,
                                 env=env, stdin=subprocess.DEVNULL)
        timed_out = False
        try:
            child.wait(bound)
        except subprocess.TimeoutExpired:
            timed_out = True
            child.send_signal(signal.SIGTERM)  # the test's cleanup runs
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if out:
            out.close()
        elapsed = time.monotonic() - t0
        left = kill_registered(pids)

        try:
            with open(result) as f:
                r = json.load(f)
        except (OSError, ValueError):
            r = {"status": "FAIL", "reason": "test process died (exit %s)" % child.returncode}
        status, reason = r["status"], r.get("reason", "")
        if timed_out:
            status = "FAIL"
            reason = "timed out after %.0f s (%s)" % (bound, reason or "no result")
        if left and status != "FAIL":
            # the harness failed to clean up: say so, but it is not the proxy's fault
            reason = (reason + "; " if reason else "") + "harness killed leftover pids %s" % left
        return status, reason, elapsed, outp

    def show_output(outp):
        if a.verbose:
            return
        try:
            with open(outp, errors="replace") as f:
                text = f.read().strip()
            if text:
                print("\n".join("    " + l for l in text.splitlines()[-40:]), flush=True)
        except OSError:
            pass

    retry = []
    for modname, name, _, tmo, _needs in tests:
        status, reason, elapsed, outp = run_test(modname, name, tmo)
        if status == "PASS":
            line = "PASS %s (%.1fs)" % (name, elapsed)
            if reason:
                line += " [%s]" % reason
        else:
            line = "%s %s: %s" % (status, name, reason)
        print(line, flush=True)
        if status == "FAIL":
            show_output(outp)
            # A sanitizer report is a bug however the rerun goes.
            if not reason.startswith("sanitizer report"):
                retry.append((modname, name, tmo))
            else:
                failed.append(name)
        counts[status] += status != "FAIL"

    # The machine is shared by the client, the proxy and the upstreams, and
    # some tests measure time or spread: a failure is run once more, alone.
    # One that passes then is reported as FLAKY (counted apart from the
    # passed ones, listed); one that fails again fails the run.
    flaky = []
    for modname, name, tmo in retry:
        status, reason, elapsed, outp = run_test(modname, name, tmo)
        if status == "FAIL":
            print("FAIL %s (again, on rerun): %s" % (name, reason), flush=True)
            show_output(outp)
            failed.append(name)
        else:
            print("FLAKY %s: failed, then %s on rerun (%.1fs)" % (name, status, elapsed), flush=True)
            if status == "PASS":
                flaky.append(name)
            else:  # a skip on the rerun is a skip, not a pass
                counts[status] += 1
    counts["FAIL"] = len(failed)
    total = time.monotonic() - t_start
    print("\n%d tests in %.0f s: %d passed, %d flaky, %d failed, %d skipped"
          % (len(tests), total, counts["PASS"], len(flaky), counts["FAIL"], counts["SKIP"]))
    if failed:
        print("failed: " + " ".join(failed))
    print("flaky: %d (failed, then passed on the rerun)%s" % (len(flaky), ": " + " ".join(flaky) if flaky else ""))
    # Last, and alone on its line: the form CI parsers read. Flaky tests are
    # not in "passed"; the line above counts them.
    print("%d passed, %d failed, %d skipped" % (counts["PASS"], counts["FAIL"], counts["SKIP"]))
    try:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    except OSError:
        pass
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
