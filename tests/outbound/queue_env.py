"""The outbound world on loopback: a DNS server, receiving MTAs, a sender.

Every receiving MTA listens on its own 127.0.0.N and on one shared port, the
port the sending pimail is told remote MX hosts use (`outbound.port`: 25 on
the internet). DNS records point domains at those addresses. Nothing here
mocks pimail: it resolves through a real DNS server and delivers over real
SMTP, with real TLS where a receiver offers it.
"""

from __future__ import annotations

import asyncio
import http.server
import smtplib
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from conftest import PASSWORD, PimailServer, free_port
from dnsserver import DnsServer
from testca import TestCA


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    session: int
    auth: str | None = None


@dataclass
class SinkState:
    messages: list[Received] = field(default_factory=list)
    sessions: int = 0
    active: int = 0
    max_active: int = 0
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _CountingSMTP(SMTP):
    def __init__(self, handler: Any, state: SinkState, **kw: Any) -> None:
        super().__init__(handler, **kw)
        self._state = state

    def connection_made(self, transport: Any) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            with self._state.lock:
                self._state.sessions += 1
                self._state.active += 1
                self._state.max_active = max(self._state.max_active, self._state.active)

    def connection_lost(self, exc: Exception | None) -> None:
        if not getattr(self, "_counted_out", False):
            self._counted_out = True
            with self._state.lock:
                self._state.active -= 1
        super().connection_lost(exc)


class Sink:
    """A receiving MTA with a behaviour: accept, refuse, fail for a while."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        rcpt_reply: Callable[[str], str | None] | None = None,
        data_reply: Callable[[int], str | None] | None = None,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: ssl.SSLContext | None = None,
        credentials: tuple[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.state = SinkState()
        self.rcpt_reply = rcpt_reply
        self.data_reply = data_reply
        self.delay = delay
        self.credentials = credentials
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": True}
        if tls_context is not None:
            kwargs.update(tls_context=tls_context, require_starttls=False)
        if credentials is not None:
            kwargs.update(
                authenticator=self._authenticate, auth_required=True,
                auth_require_tls=implicit_tls is None,
            )  # fmt: skip
        sink = self

        class _Controller(Controller):
            def factory(self) -> SMTP:
                return _CountingSMTP(self.handler, sink.state, **self.SMTP_kwargs)

        self.controller = _Controller(
            self, hostname=host, port=port, ssl_context=implicit_tls, **kwargs
        )
        self.controller.start()
        # The controller's own readiness probe is a connection: do not count it.
        deadline = time.monotonic() + 5
        while self.state.active and time.monotonic() < deadline:
            time.sleep(0.01)
        with self.state.lock:
            self.state.sessions = self.state.max_active = 0

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:  # fmt: skip
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode(), auth_data.password.decode()
        ) == self.credentials
        login = auth_data.login.decode() if ok else None
        return AuthResult(success=ok, auth_data=login, handled=False)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:  # fmt: skip
        reply = self.rcpt_reply(address) if self.rcpt_reply else None
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        with self.state.lock:
            self.state.attempts += 1
            attempt = self.state.attempts
        reply = self.data_reply(attempt) if self.data_reply else None
        if reply == "DROP":  # hang up without an answer to DATA
            server.transport.abort()
            return "421 4.3.0 gone"
        if reply:
            return reply
        with self.state.lock:
            self.state.messages.append(
                Received(
                    envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                    session.ssl is not None or server.transport.get_extra_info("sslcontext")
                    is not None, id(session),
                    session.auth_data if isinstance(session.auth_data, str) else None,
                )
            )  # fmt: skip
        return "250 2.0.0 OK"

    @property
    def messages(self) -> list[Received]:
        with self.state.lock:
            return list(self.state.messages)

    def stop(self) -> None:
        self.controller.stop()


class PolicyServer:
    """HTTPS for mta-sts.<domain>: serves /.well-known/mta-sts.txt (RFC 8461 3.3)."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, policy: str) -> None:
        self.policy = policy
        self.requests = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                body = owner.policy.encode()
                if self.path != "/.well-known/mta-sts.txt":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class GarbageServer:
    """Not an SMTP server at all: says something else and hangs up."""

    def __init__(self, host: str, port: int, greeting: bytes) -> None:
        self.connections = 0
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner.connections += 1
                self.request.sendall(greeting)
                time.sleep(0.1)

        self.server = socketserver.ThreadingTCPServer((host, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Outbound:
    def __init__(self, tmp: Path, make_server: Any) -> None:
        self.tmp = tmp
        self.zone = DnsServer().start()
        self.ca = TestCA(tmp / "ca")
        self.port = free_port()
        self.mta_sts_port = free_port()
        self.sinks: list[Sink] = []
        self.policy_servers: list[PolicyServer] = []
        self._make_server = make_server
        self.sender: PimailServer | None = None

    def start_sender(self, **outbound: Any) -> PimailServer:
        sections = {
            "dns": {"nameservers": [self.zone.address], "timeout": 3.0},
            "outbound": {
                "port": self.port, "retry_min": 0.5, "retry_max": 1.0, "poll_interval": 0.2,
                "connect_timeout": 5.0, "command_timeout": 20.0, "ca_file": str(self.ca.ca_file),
                "mta_sts_port": self.mta_sts_port, **outbound,
            },
        }  # fmt: skip
        sender = self._make_server("sender", sections)
        sender.cli("domain", "add", "example.org")
        sender.add_user("alice@example.org")
        sender.add_user("bob@example.org")
        sender.start()
        self.sender = sender
        return sender

    def sink(self, host: str, **kw: Any) -> Sink:
        sink = Sink(host, self.port, **kw)
        self.sinks.append(sink)
        return sink

    def mx(self, domain: str, *hosts: tuple[int, str, str]) -> None:
        """MX records for `domain`: (preference, host name, address) each."""
        for preference, host, address in hosts:
            self.zone.add(domain, "MX", f"{preference} {host}.")
            self.zone.set(host, "A", address)

    def submit(self, recipients: list[str], message: bytes, sender: str = "alice@example.org",
               port: int | None = None) -> str:  # fmt: skip
        assert self.sender is not None
        with smtplib.SMTP("127.0.0.1", port or self.sender.submission_port, timeout=30) as s:
            s.starttls(context=self.sender.client_tls())
            s.login(sender, PASSWORD)
            _code, reply = s.mail(sender)
            for r in recipients:
                code, reply = s.rcpt(r)
                assert code == 250, reply
            code, reply = s.data(message)
            assert code == 250, reply
            return reply.decode()

    def queue_rows(self) -> int:
        assert self.sender is not None
        import sqlite3

        con = sqlite3.connect(self.sender.data_dir / "queue" / "queue.db")
        try:
            return con.execute("SELECT COUNT(*) FROM recipients").fetchone()[0]
        finally:
            con.close()

    def mta_sts(self, domain: str, address: str, policy: str, policy_id: str = "1") -> PolicyServer:
        """Publish an MTA-STS policy for `domain`, served on `address`."""
        self.zone.set(f"_mta-sts.{domain}", "TXT", f'"v=STSv1; id={policy_id}"')
        self.zone.set(f"mta-sts.{domain}", "A", address)
        context = self.ca.server_context(f"mta-sts.{domain}")
        server = PolicyServer(address, self.mta_sts_port, context, policy)
        self.policy_servers.append(server)
        return server

    def close(self) -> None:
        for server in self.policy_servers:
            server.stop()
        for sink in self.sinks:
            sink.stop()
        self.zone.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")
