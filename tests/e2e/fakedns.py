"""A tiny DNS server on 127.0.0.1 (UDP, stdlib only) that a test starts and
changes while the proxy runs: answer A queries with a list of addresses,
then another list, NXDOMAIN, or stay silent (drop every query).

    dns = t.server(FakeDns, answers={"svc.e2e.test": ["127.0.0.2"]})
    conf["resolvers"] = [dns.address]
    dns.set("svc.e2e.test", ["127.0.0.3"])   # new answers
    dns.silent = True                         # the nameserver stops answering
"""

import socket
import struct
import threading


class FakeDns:
    def __init__(self, answers=None, ttl=1):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self.lock = threading.Lock()
        self.answers = {k.lower(): list(v) for k, v in (answers or {}).items()}
        self.ttl = ttl
        self.silent = False
        self.queries = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def set(self, name, addrs):
        """addrs: a list of IPv4 addresses, or None for NXDOMAIN."""
        with self.lock:
            self.answers[name.lower()] = None if addrs is None else list(addrs)

    def _loop(self):
        while not self.stopping:
            try:
                q, peer = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.queries += 1
                if self.silent:
                    continue
                resp = self._answer(q)
            if resp:
                try:
                    self.sock.sendto(resp, peer)
                except OSError:
                    pass

    def _answer(self, q):
        if len(q) < 12:
            return None
        labels, p = [], 12
        while p < len(q) and q[p]:
            n = q[p]
            labels.append(q[p + 1:p + 1 + n].decode("ascii", "replace"))
            p += n + 1
        p += 1
        if p + 4 > len(q):
            return None
        qtype = struct.unpack("!H", q[p:p + 2])[0]
        question = q[12:p + 4]
        name = ".".join(labels).lower()
        addrs = self.answers.get(name, None) if name in self.answers else None
        rcode = 3 if addrs is None else 0  # NXDOMAIN for unknown names
        records = b""
        count = 0
        if addrs and qtype == 1:  # A; AAAA gets an empty NOERROR answer
            for a in addrs:
                records += struct.pack("!HHHIH", 0xC00C, 1, 1, self.ttl, 4) + socket.inet_aton(a)
                count += 1
        flags = 0x8180 | rcode
        header = q[:2] + struct.pack("!HHHHH", flags, 1, count, 0, 0)
        return header + question + records

    def close(self):
        self.stopping = True
        try:
            self.sock.close()
        except OSError:
            pass
        self.thread.join(1)
