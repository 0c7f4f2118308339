#!/usr/bin/env python3
"""Backend for the cluster test: runs in a backend namespace behind the
shardproxy instances, which relay to it with `send_proxy_protocol: "v2"`.

Python 3 standard library only (asyncio). Every connection must start with a
PROXY protocol v2 header (TCP over IPv4, command PROXY) whose source address
is the client namespace's address and whose destination is the VIP and the
port the connection arrived on; anything else is counted as bad and closed.

    backend.py --listen 10.77.201.2 --http 8080 --stream 9000 --stats 9100 \
               --expect-client 10.77.1.2 --vip 10.77.100.1 --keepalive-s 2

Ports:
  --http    HTTP/1.1 for wrk. The body names the instance that relayed the
            request (the TCP peer, "via") and the client the header gave.
            A connection older than --keepalive-s gets `Connection: close`
            on its next response, as nginx's keepalive_time does: a TCP relay
            cannot end an HTTP keep-alive connection between two requests,
            the server can, and that is what lets a draining instance empty.
  --stream  for the long checksummed transfers: after the header, the
            backend writes one line `HELLO via=IP client=IP:PORT`, then echoes
            every byte back until the client's FIN, then closes.
  --stats   127.0.0.1 only, no PROXY header: GET / returns the counters as
            JSON (per relaying instance, headers ok/bad, the first bad ones).
"""

import argparse
import asyncio
import json
import socket
import struct
import time

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_HEADER = 16 + 216  # v2 fixed part + the largest address block we accept plus TLVs


class Stats:
    def __init__(self):
        self.via = {}  # instance address -> {"http": conns, "stream": conns, "requests": n}
        self.header_ok = 0
        self.header_bad = 0
        self.bad_samples = []

    def conn(self, via, kind):
        d = self.via.setdefault(via, {"http": 0, "stream": 0, "requests": 0})
        d[kind] += 1
        return d

    def bad(self, via, why):
        self.header_bad += 1
        if len(self.bad_samples) < 10:
            self.bad_samples.append({"via": via, "why": why, "time": time.time()})

    def as_json(self):
        return json.dumps({"via": self.via, "header_ok": self.header_ok,
                           "header_bad": self.header_bad, "bad_samples": self.bad_samples})


def parse_v2(buf, expect_client, vip, port):
    """Returns (consumed, client "ip:port", None) or (0, None, None) when more
    bytes are needed, or (-1, None, why) when the header is wrong."""
    if len(buf) < 16:
        return (0, None, None) if SIG.startswith(buf[:12]) else (-1, None, "no PROXY v2 signature")
    if buf[:12] != SIG:
        return -1, None, "no PROXY v2 signature"
    ver_cmd, fam, length = buf[12], buf[13], struct.unpack("!H", buf[14:16])[0]
    if ver_cmd != 0x21:
        return -1, None, "version/command 0x%02x, want 0x21 (v2 PROXY)" % ver_cmd
    if fam != 0x11:
        return -1, None, "family 0x%02x, want 0x11 (TCP over IPv4)" % fam
    if length < 12 or 16 + length > MAX_HEADER:
        return -1, None, "address block of %d bytes" % length
    if len(buf) < 16 + length:
        return 0, None, None
    src, dst = socket.inet_ntoa(buf[16:20]), socket.inet_ntoa(buf[20:24])
    sport, dport = struct.unpack("!HH", buf[24:28])
    if src != expect_client:
        return -1, None, "source %s:%d, want %s" % (src, sport, expect_client)
    if dst != vip or dport != port:
        return -1, None, "destination %s:%d, want %s:%d" % (dst, dport, vip, port)
    return 16 + length, "%s:%d" % (src, sport), None


class Conn(asyncio.Protocol):
    kind = None

    def __init__(self, app, port):
        self.app, self.port = app, port
        self.buf = b""
        self.client = None
        self.born = time.monotonic()

    def connection_made(self, transport):
        self.t = transport
        self.via = transport.get_extra_info("peername")[0]
        self.counters = self.app.stats.conn(self.via, self.kind)

    def data_received(self, data):
        if self.client is None:
            self.buf += data
            n, client, why = parse_v2(self.buf, self.app.expect_client, self.app.vip, self.port)
            if n < 0:
                self.app.stats.bad(self.via, why)
                self.t.abort()
                return
            if n == 0:
                return
            self.app.stats.header_ok += 1
            self.client, data, self.buf = client, self.buf[n:], b""
            self.started()
        self.payload(data)

    def started(self):
        pass

    # Backpressure: stop reading while our own writes are queued.
    def pause_writing(self):
        self.t.pause_reading()

    def resume_writing(self):
        self.t.resume_reading()


class HttpConn(Conn):
    kind = "http"

    def payload(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 8192:
                    self.t.abort()
                return
            head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
            self.counters["requests"] += 1
            close = "\r\nconnection: close" in head.lower() or (
                time.monotonic() - self.born >= self.app.keepalive_s)
            body = ("ok via=%s client=%s\n" % (self.via, self.client)).encode()
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                         b"X-Via: %s\r\n%s\r\n%s" % (len(body), self.via.encode(),
                                                    b"Connection: close\r\n" if close else b"", body))
            if close:
                self.t.close()  # after the queued response is written
                return


class StreamConn(Conn):
    kind = "stream"

    def started(self):
        self.t.write(("HELLO via=%s client=%s\n" % (self.via, self.client)).encode())

    def payload(self, data):
        if data:
            self.t.write(data)

    def eof_received(self):
        return False  # close once the echo is written


class StatsConn(asyncio.Protocol):
    def __init__(self, app):
        self.app = app

    def connection_made(self, transport):
        self.t = transport

    def data_received(self, data):
        body = self.app.stats.as_json().encode()
        self.t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (len(body), body))
        self.t.close()


class App:
    def __init__(self, a):
        self.expect_client, self.vip, self.keepalive_s = a.expect_client, a.vip, a.keepalive_s
        self.stats = Stats()


async def main(a):
    app = App(a)
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(lambda: HttpConn(app, a.http), a.listen, a.http, backlog=1024, reuse_address=True),
        await loop.create_server(lambda: StreamConn(app, a.stream), a.listen, a.stream, backlog=1024, reuse_address=True),
        await loop.create_server(lambda: StatsConn(app), "127.0.0.1", a.stats, reuse_address=True),
    ]
    print("backend ready on %s: http %d, stream %d, stats 127.0.0.1:%d" % (a.listen, a.http, a.stream, a.stats),
          flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", required=True)
    p.add_argument("--http", type=int, default=8080)
    p.add_argument("--stream", type=int, default=9000)
    p.add_argument("--stats", type=int, default=9100)
    p.add_argument("--expect-client", required=True)
    p.add_argument("--vip", required=True)
    p.add_argument("--keepalive-s", type=float, default=2.0)
    try:
        asyncio.run(main(p.parse_args()))
    except KeyboardInterrupt:
        pass
