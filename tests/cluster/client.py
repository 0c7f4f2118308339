#!/usr/bin/env python3
"""Clients for the cluster test, run in the client namespace
(`ip netns exec NS python3 client.py ...`). Python 3 standard library only.

  client.py transfers --vip IP --port 9000 --count 6 --seconds 8 --rate-kib 256
            [--target-via IP --min-target 2 --max-open 30]
      Long checksummed transfers through the VIP to the backends' echo port.
      Each reads the backend's `HELLO via=IP client=...` line (the instance
      that relays it), then sends seeded random bytes paced over --seconds,
      half-closes, reads the echo to EOF and compares SHA-256 and length.
      Opens --count transfers, and more (up to --max-open) until at least
      --min-target of them run through --target-via. Prints one line
      `{"started": [...]}` once all are open, then one JSON line with every
      transfer's result.

  client.py probe --vip IP --port 8080 --seconds 10 --interval-ms 20 --timeout-ms 1000
      A new connection per request (GET /, Connection: close) every
      --interval-ms, each with its own timeout; prints one JSON line with
      every attempt: wall-clock start, ok, error, the instance that relayed it.
"""

import argparse
import hashlib
import json
import random
import socket
import sys
import threading
import time


def recv_line(s, limit=256):
    buf = b""
    while not buf.endswith(b"\n"):
        b = s.recv(1)
        if not b:
            raise ConnectionError("EOF before the HELLO line")
        buf += b
        if len(buf) > limit:
            raise ConnectionError("HELLO line too long")
    return buf.decode().strip()


class Transfer:
    def __init__(self, idx, a):
        self.idx, self.a = idx, a
        self.via = self.client = None
        self.result = {"id": idx, "ok": False, "via": None, "sent": 0, "received": 0, "error": None}

    def open(self):
        a = self.a
        self.t0 = time.time()
        self.s = socket.create_connection((a.vip, a.port), timeout=5)
        self.s.settimeout(a.seconds + 30)  # a stalled transfer fails, never hangs
        hello = recv_line(self.s)
        fields = dict(f.split("=", 1) for f in hello.split()[1:])
        self.via, self.client = fields.get("via"), fields.get("client")
        self.result.update(via=self.via, client=self.client, local=self.s.getsockname()[1])

    def run(self):
        a = self.a
        total = a.rate_kib * 1024 * a.seconds
        data = random.Random(self.idx * 7919 + 17).randbytes(total)
        want = hashlib.sha256(data).hexdigest()
        got = hashlib.sha256()
        received = [0]
        err = []

        def reader():
            try:
                while True:
                    b = self.s.recv(65536)
                    if not b:
                        return
                    got.update(b)
                    received[0] += len(b)
            except OSError as e:
                err.append("recv: %s" % e)

        rt = threading.Thread(target=reader, daemon=True)
        rt.start()
        chunk = 16384
        start = time.monotonic()
        try:
            for off in range(0, total, chunk):
                # Paced: byte `off` is due at off / rate seconds after the start.
                due = start + off / (a.rate_kib * 1024)
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                self.s.sendall(data[off:off + chunk])
                self.result["sent"] = off + len(data[off:off + chunk])
            self.s.shutdown(socket.SHUT_WR)
        except OSError as e:
            err.append("send: %s" % e)
        rt.join(a.seconds + 40)
        self.s.close()
        self.result.update(received=received[0], seconds=round(time.time() - self.t0, 2))
        if err:
            self.result["error"] = err[0]
        elif received[0] != total or got.hexdigest() != want:
            self.result["error"] = "echo differs: %d of %d bytes, sha256 %s" % (
                received[0], total, "match" if got.hexdigest() == want else "mismatch")
        else:
            self.result["ok"] = True


def cmd_transfers(a):
    opened = []
    failures = []
    idx = 0
    while idx < a.max_open:
        on_target = sum(1 for t in opened if t.via == a.target_via)
        if len(opened) >= a.count and (not a.target_via or on_target >= a.min_target):
            break
        t = Transfer(idx, a)
        idx += 1
        try:
            t.open()
            opened.append(t)
        except OSError as e:
            failures.append({"id": t.idx, "ok": False, "via": None, "error": "open: %s" % e})
    print(json.dumps({"started": [{"id": t.idx, "via": t.via} for t in opened], "open_failures": len(failures)}),
          flush=True)
    threads = [threading.Thread(target=t.run, daemon=True) for t in opened]
    for th in threads:
        th.start()
    for th in threads:
        th.join(a.seconds + 60)
    print(json.dumps({"results": [t.result for t in opened] + failures}), flush=True)


def cmd_probe(a):
    out = []
    req = ("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % a.vip).encode()
    end = time.monotonic() + a.seconds
    lock = threading.Lock()

    def one():
        t0 = time.time()
        rec = {"t": round(t0, 4), "ok": False, "via": None, "error": None}
        try:
            s = socket.create_connection((a.vip, a.port), timeout=a.timeout_ms / 1000)
            s.settimeout(a.timeout_ms / 1000)
            s.sendall(req)
            buf = b""
            while True:
                b = s.recv(4096)
                if not b:
                    break
                buf += b
            s.close()
            if buf.startswith(b"HTTP/1.1 200"):
                rec["ok"] = True
                for line in buf.split(b"\r\n"):
                    if line.lower().startswith(b"x-via:"):
                        rec["via"] = line.split(b":", 1)[1].strip().decode()
            else:
                rec["error"] = "bad response %r" % buf[:40]
        except socket.timeout:
            rec["error"] = "timeout"
        except OSError as e:
            rec["error"] = e.strerror or str(e)
        rec["ms"] = round((time.time() - t0) * 1000, 1)
        with lock:
            out.append(rec)

    # One thread per attempt, so a hanging connect does not delay the next.
    threads = []
    while time.monotonic() < end:
        th = threading.Thread(target=one, daemon=True)
        th.start()
        threads.append(th)
        time.sleep(a.interval_ms / 1000)
    for th in threads:
        th.join(a.timeout_ms / 1000 + 2)
    out.sort(key=lambda r: r["t"])
    print(json.dumps({"attempts": out}), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("transfers")
    t.add_argument("--vip", required=True)
    t.add_argument("--port", type=int, default=9000)
    t.add_argument("--count", type=int, default=6)
    t.add_argument("--seconds", type=int, default=8)
    t.add_argument("--rate-kib", type=int, default=256)
    t.add_argument("--target-via")
    t.add_argument("--min-target", type=int, default=0)
    t.add_argument("--max-open", type=int, default=30)
    pr = sub.add_parser("probe")
    pr.add_argument("--vip", required=True)
    pr.add_argument("--port", type=int, default=8080)
    pr.add_argument("--seconds", type=float, default=10)
    pr.add_argument("--interval-ms", type=int, default=20)
    pr.add_argument("--timeout-ms", type=int, default=1000)
    a = p.parse_args()
    (cmd_transfers if a.cmd == "transfers" else cmd_probe)(a)
    sys.exit(0)
