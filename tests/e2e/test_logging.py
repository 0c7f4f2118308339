"""Logging (issue 11): a shard's log lines never stall its relay when
stderr's reader stops, and access-log lines written by several shards into
one pipe never interleave mid-line."""

import fcntl
import os
import re
import subprocess
import threading
import time

import lib
from lib import check


def _spawn_piped(t, conf, name="proxy"):
    """The proxy with stderr on a pipe the test reads (or stops reading):
    (process, read end). Reads until the ready line."""
    path = lib.write_config(os.path.join(t.tmpdir, name + ".json"), conf)
    r, w = os.pipe()
    p = subprocess.Popen([t.binary, "-c", path], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=w, start_new_session=True)
    os.close(w)
    lib._register(p.pid)
    t.defer(lambda: lib._stop_proc(p, 2))
    t.defer(lambda: os.close(r))
    buf = b""
    deadline = time.monotonic() + 10
    while b"ready: generation 1" not in buf:
        check(time.monotonic() < deadline and p.poll() is None,
              "proxy not ready: %r" % buf[-2000:])
        buf += os.read(r, 65536)
    return p, r, buf


def _drain_in_background(t, r):
    """Keep reading the pipe from now on (so the proxy can stop cleanly)."""
    def run():
        try:
            while os.read(r, 65536):
                pass
        except OSError:
            pass
    threading.Thread(target=run, daemon=True).start()


@lib.timeout(60)
def test_shard_log_lines_never_block_the_relay_when_stderr_is_not_read(t):
    """log.level debug makes the shard log a line for every failed connect
    (the first server is down, the session goes on to the second). With
    stderr a full pipe nobody reads, 300 such sessions still relay at once."""
    echo = t.echo()
    down = t.down_port()
    port = lib.free_port()
    conf = lib.config([lib.listener("l", port, "u")],
                      [lib.upstream("u", [down.address, echo.address], balance="round_robin",
                                    retries=1)],
                      workers=1, access_log=False)
    conf["log"]["level"] = "debug"
    p, r, _ = _spawn_piped(t, conf)
    fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, 4096)
    # From here nobody reads stderr: a few dozen lines fill the pipe.
    t0 = time.monotonic()
    for i in range(300):
        s = lib.connect(port, timeout_s=5)
        try:
            lib.roundtrip(s, b"session %d" % i, timeout_s=3)
        except OSError as e:
            lib.fail("session %d of 300 stalled with stderr unread (%r): the shard blocks "
                     "writing its log" % (i, e))
        s.close()
    took = time.monotonic() - t0
    check(took < 30, "300 sessions took %.1f s with stderr unread" % took)
    # The reader comes back: the lines lost are counted, the log goes on.
    out = b""
    s = lib.connect(port)
    lib.roundtrip(s, b"after")
    s.close()
    deadline = time.monotonic() + 5
    while b"log lines dropped" not in out and time.monotonic() < deadline:
        for _ in range(3):
            s = lib.connect(port)
            lib.roundtrip(s, b"more")
            s.close()
        fcntl.fcntl(r, fcntl.F_SETFL, os.O_NONBLOCK)
        try:
            while True:
                d = os.read(r, 65536)
                if not d:
                    break
                out += d
        except BlockingIOError:
            pass
        time.sleep(0.05)
    check(b"log lines dropped: stderr was not being read" in out,
          "no line counting the dropped lines once stderr was read again:\n%s"
          % out.decode(errors="replace")[-1500:])
    fcntl.fcntl(r, fcntl.F_SETFL, 0)
    _drain_in_background(t, r)


LINE_RE = re.compile(
    r"^\S+ access listener=l client=127\.0\.0\.1:\d+ route=0 upstream=echo server=\S+ shard=\d "
    r"gen=1 bytes_in=\d+ bytes_out=\d+ duration_ms=\d+ end=\w+$")


@lib.timeout(90)
def test_access_log_lines_from_several_shards_never_interleave_mid_line(t):
    """Two shards log into one small pipe that a slow reader empties: every
    line that arrives is whole (lines may be dropped, never cut)."""
    echo = t.echo()
    port = lib.free_port()
    conf = lib.echo_config(echo, port, workers=2, steering="hash")
    p, r, head = _spawn_piped(t, conf)
    fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, 4096)
    got = bytearray()
    stop = threading.Event()

    def slow_reader():
        while not stop.is_set():
            try:
                got.extend(os.read(r, 1000))
            except OSError:
                return
            time.sleep(0.02)

    rd = threading.Thread(target=slow_reader, daemon=True)
    rd.start()

    def clients(n):
        for _ in range(n):
            s = lib.connect(port)
            s.sendall(b"x")
            lib.recv_exact(s, 1)
            s.close()

    lib.run_threads(clients, [(400,)] * 8, 60)
    time.sleep(1.0)
    stop.set()
    rd.join(2)
    _drain_in_background(t, r)
    lines = bytes(got).decode(errors="replace").split("\n")[:-1]
    access = [l for l in lines if " access " in l]
    shards = set(re.findall(r" shard=(\d) ", "\n".join(access)))
    bad = [l for l in lines if " access " in l and not LINE_RE.match(l)]
    bad += [l for l in lines if " access " not in l and not l.startswith("shardproxy")]
    lib.log("%d lines read, %d access lines from shards %s, %d malformed"
            % (len(lines), len(access), sorted(shards), len(bad)))
    check(len(access) >= 100 and len(shards) == 2,
          "too few access lines to tell (%d, shards %s)" % (len(access), sorted(shards)))
    check(not bad, "%d lines cut or interleaved, e.g.:\n%s" % (len(bad), "\n".join(bad[:5])))
