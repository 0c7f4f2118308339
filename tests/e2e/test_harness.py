"""The e2e runner itself: what its summary counts, on a directory of fake tests."""

import os
import subprocess
import sys

import lib
from lib import check

RUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run.py")

FAKE = '''
import os
import lib

HERE = os.path.dirname(os.path.abspath(__file__))


def test_always_passes(t):
    pass


def test_passes_only_on_the_rerun(t):
    mark = os.path.join(HERE, "ran-once")
    if not os.path.exists(mark):
        open(mark, "w").close()
        lib.fail("first run fails")


def test_is_skipped(t):
    raise lib.Skip("not here")
'''

FAILING = '''
import lib


def test_always_fails(t):
    lib.fail("always")
'''


def _run_fake(t, name, text):
    d = os.path.join(t.tmpdir, name)
    os.mkdir(d)
    with open(os.path.join(d, "test_%s.py" % name), "w") as f:
        f.write(text)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("E2E_PIDS", None)  # the inner runner keeps its own list
    r = subprocess.run([sys.executable, RUN, "--build", t.build, "--dir", d], capture_output=True,
                       text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    return r.returncode, lines, r.stdout + r.stderr


def test_runner_counts_a_test_passing_only_on_rerun_as_flaky_not_passed(t):
    rc, lines, out = _run_fake(t, "flakyfake", FAKE)
    check(rc == 0, "a flaky test must not fail the run: exit %d\n%s" % (rc, out))
    check(lines and lines[-1] == "1 passed, 0 failed, 1 skipped",
          "last line must be 'N passed, N failed, N skipped' without the flaky one:\n%s" % out)
    check("flaky: 1 (failed, then passed on the rerun): test_passes_only_on_the_rerun" in lines,
          "no 'flaky: 1 ...' line naming the test:\n%s" % out)
    check(any(l.startswith("3 tests in ") and l.endswith(": 1 passed, 1 flaky, 0 failed, 1 skipped")
              for l in lines), "no '3 tests in ...: 1 passed, 1 flaky, 0 failed, 1 skipped' line:\n%s" % out)


def test_runner_fails_the_run_and_says_flaky_0_when_a_test_fails_twice(t):
    rc, lines, out = _run_fake(t, "failfake", FAILING)
    check(rc == 1, "a test failing on its rerun too must fail the run: exit %d\n%s" % (rc, out))
    check(lines and lines[-1] == "0 passed, 1 failed, 0 skipped", "last line:\n%s" % out)
    check("flaky: 0 (failed, then passed on the rerun)" in lines and "failed: test_always_fails" in lines,
          "want 'failed: test_always_fails' and 'flaky: 0 ...':\n%s" % out)
