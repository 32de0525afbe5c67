"""A small authoritative DNS server on loopback, for tests.

A real server over real UDP and TCP sockets (dnspython builds and parses the
wire format), so that pimail's resolver is exercised as it would be against
any DNS server; it is pointed here by its `dns.nameservers` setting.

    zone = DnsServer().start()
    zone.add("example.test", "MX", "10 mx.example.test.")
    zone.add("mx.example.test", "A", "127.0.0.5")
    settings: dns.nameservers = [zone.address]

A name with no records is NXDOMAIN unless some record lies below it (then it
is an empty non-terminal: NOERROR, no answer). Names in `servfail` answer
SERVFAIL, to test temporary failures.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class DnsServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.records: dict[tuple[str, str], list[str]] = {}
        self.servfail: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        # TTL 0: resolvers (pimail's caches answers for their TTL) see every
        # change a test makes at once.
        self.ttl = 0
        self._lock = threading.Lock()
        self._servers: list[socketserver.BaseServer] = []
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- the zone --------------------------------------------------------------

    def add(self, name: str, rdtype: str, value: str) -> None:
        with self._lock:
            self.records.setdefault((_norm(name), rdtype.upper()), []).append(value)

    def set(self, name: str, rdtype: str, *values: str) -> None:
        with self._lock:
            key = (_norm(name), rdtype.upper())
            if values:
                self.records[key] = list(values)
            else:
                self.records.pop(key, None)

    def reset(self) -> None:
        """Forget every record, SERVFAIL name and logged query (between tests)."""
        with self._lock:
            self.records.clear()
            self.servfail.clear()
            self.queries.clear()

    def remove_name(self, name: str) -> None:
        with self._lock:
            for key in [k for k in self.records if k[0] == _norm(name)]:
                del self.records[key]

    def answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        name = _norm(question.name.to_text())
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((name, rdtype))
            if name in self.servfail:
                response.set_rcode(dns.rcode.SERVFAIL)
                return response.to_wire()
            values = list(self.records.get((name, rdtype), []))
            cname = self.records.get((name, "CNAME"))
            exists = any(k[0] == name or k[0].endswith("." + name) for k in self.records)
        if not values and cname and rdtype != "CNAME":
            rrset = dns.rrset.from_text(question.name, self.ttl, "IN", "CNAME", *cname)
            response.answer.append(rrset)
            target = _norm(cname[0])
            with self._lock:
                values = list(self.records.get((target, rdtype), []))
            if values:
                response.answer.append(
                    dns.rrset.from_text(dns.name.from_text(target), self.ttl, "IN", rdtype, *values)
                )
            return response.to_wire(max_size=65535)
        if values:
            rrset = dns.rrset.from_text(question.name, self.ttl, "IN", rdtype, *values)
            response.answer.append(rrset)
        elif not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        wire_out = response.to_wire(max_size=65535)
        return wire_out

    # -- the sockets -----------------------------------------------------------

    def start(self) -> DnsServer:
        zone = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = zone.answer(data)
                if reply is None:
                    return
                if len(reply) > 512:  # RFC 1035 4.2.1: truncate, the client retries over TCP
                    query = dns.message.from_wire(data)
                    short = dns.message.make_response(query)
                    short.flags |= dns.flags.TC
                    reply = short.to_wire()
                sock.sendto(reply, self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.settimeout(5)
                try:
                    while True:
                        head = _recv_exactly(sock, 2)
                        if head is None:
                            return
                        data = _recv_exactly(sock, struct.unpack("!H", head)[0])
                        if data is None:
                            return
                        reply = zone.answer(data)
                        if reply is None:
                            return
                        sock.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    return

        # One port for both: bind UDP first, then TCP on the same number.
        for _ in range(20):
            udp = socketserver.ThreadingUDPServer((self.host, 0), Udp)
            port = udp.server_address[1]
            try:
                tcp = socketserver.ThreadingTCPServer((self.host, port), Tcp)
            except OSError:
                udp.server_close()
                continue
            break
        else:
            raise RuntimeError("no free port for the DNS server")
        udp.daemon_threads = tcp.daemon_threads = True
        self.port = port
        self._servers = [udp, tcp]
        for server in self._servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data
