"""IMAP test fixtures: one running server per module, a fresh account per test."""

from __future__ import annotations

import imaplib
import itertools
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PASSWORD, PimailServer

_counter = itertools.count()


@pytest.fixture(scope="module")
def imap_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PimailServer]:
    base: Path = tmp_path_factory.mktemp("imap")
    server = PimailServer(base / "data")
    server.cli("domain", "add", "example.org")
    server.start()
    yield server
    server.stop()


class Mailbox:
    """A fresh account on the module's server, with helpers to fill it and log in."""

    def __init__(self, server: PimailServer) -> None:
        self.server = server
        self.address = f"user{next(_counter)}@example.org"
        server.add_user(self.address)

    def deliver(
        self, subject: str, body: str = "Hello.\r\n", extra: str = "", rcpt: str | None = None
    ) -> None:
        message = (
            f"From: Ann Example <ann@remote.test>\r\nTo: {self.address}\r\n"
            f"Subject: {subject}\r\nDate: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\r\n{extra}\r\n{body}"
        )
        with smtplib.SMTP("127.0.0.1", self.server.smtp_port) as s:
            s.sendmail("ann@remote.test", [rcpt or self.address], message.encode())

    def login(self, select: str | None = "INBOX") -> imaplib.IMAP4:
        """Log in over implicit TLS (port 993's role), as a real client does."""
        m = imaplib.IMAP4_SSL(
            "localhost", self.server.imaps_port, ssl_context=self.server.client_tls()
        )
        m.login(self.address, PASSWORD)
        if select:
            typ, _ = m.select(select)
            assert typ == "OK"
        return m


@pytest.fixture
def mailbox(imap_server: PimailServer) -> Mailbox:
    return Mailbox(imap_server)
