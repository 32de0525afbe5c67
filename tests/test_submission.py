"""Submission on 587 (STARTTLS) and 465 (implicit TLS): AUTH only over TLS,
senders the user owns, local delivery (RFC 6409, RFC 8314)."""

from __future__ import annotations

import base64
import smtplib
import sqlite3
import subprocess
from typing import Any

import pytest

from conftest import PASSWORD, PimailServer
from dnsserver import DnsServer
from smtp_raw import RawSMTP

MESSAGE = b"From: Alice <alice@example.org>\r\nSubject: hi bob\r\n\r\nhello\r\n"


@pytest.fixture
def sub(server: PimailServer) -> PimailServer:
    server.cli("alias", "add", "sales@example.org", "alice@example.org")
    return server


def starttls(server: PimailServer) -> smtplib.SMTP:
    s = smtplib.SMTP("localhost", server.submission_port, timeout=10)
    s.ehlo("client.test")
    s.starttls(context=server.client_tls())
    s.ehlo("client.test")
    return s


def test_nothing_before_tls_on_587(sub: PimailServer) -> None:
    c = RawSMTP(sub.submission_port)
    ehlo = c.cmd(b"EHLO client.test")
    assert b"STARTTLS" in ehlo and b"AUTH" not in ehlo  # no AUTH advertised in the clear
    assert c.cmd(b"AUTH PLAIN " + base64.b64encode(b"\0alice@example.org\0x"))[:3] in (
        b"530", b"538",
    )  # fmt: skip
    assert c.cmd(b"MAIL FROM:<alice@example.org>").startswith(b"530")
    c.close()


def test_auth_then_send_to_a_local_user(sub: PimailServer) -> None:
    with starttls(sub) as s:
        assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("alice@example.org", "wrong-password")
    with starttls(sub) as s:
        s.login("alice@example.org", PASSWORD)
        s.sendmail("alice@example.org", ["bob@example.org"], MESSAGE)
    [message] = sub.messages("bob@example.org")
    assert b"with ESMTPSA id" in message.read_bytes()


def test_mail_needs_auth(sub: PimailServer) -> None:
    with starttls(sub) as s:
        code, text = s.docmd("MAIL FROM:<alice@example.org>")
        assert code == 530 and text.startswith(b"5.7.0")


def test_only_own_senders(sub: PimailServer) -> None:
    with starttls(sub) as s:
        s.login("alice@example.org", PASSWORD)
        for sender in ("bob@example.org", "someone@foreign.test", "<>"):
            code, text = s.docmd(f"MAIL FROM:<{sender.strip('<>')}>")
            assert code == 553 and text.startswith(b"5.7.1"), sender
        # An alias that reaches alice, and a +tag of her address, are hers.
        for sender in ("sales@example.org", "alice+news@example.org"):
            assert s.docmd(f"MAIL FROM:<{sender}>")[0] == 250, sender
            s.rset()
        # A From: header that is not hers is refused at the end of DATA.
        with pytest.raises(smtplib.SMTPDataError) as refused:
            s.sendmail("alice@example.org", ["bob@example.org"],
                       b"From: bob@example.org\r\nSubject: spoof\r\n\r\nx\r\n")  # fmt: skip
        assert refused.value.smtp_code == 553
    assert sub.messages("bob@example.org") == []


def test_mixed_recipients_local_now_foreign_queued(make_server: Any) -> None:
    """Local recipients get the message at once; foreign ones go to the queue,
    durably, before the 250 (the outbound tests follow it out: tests/outbound)."""
    zone = DnsServer().start()
    zone.servfail.add("foreign.test")  # so the message stays in the queue
    sub = make_server(sections={"dns": {"nameservers": [zone.address]}})
    sub.cli("domain", "add", "example.org")
    sub.add_user("alice@example.org")
    sub.add_user("bob@example.org")
    sub.start()
    with starttls(sub) as s:
        s.login("alice@example.org", PASSWORD)
        refused = s.sendmail("alice@example.org", ["bob@example.org", "friend@foreign.test"],
                             MESSAGE)  # fmt: skip
        assert refused == {}
    [local] = sub.messages("bob@example.org")
    head = local.read_bytes().split(b"\r\n\r\n", 1)[0]
    assert b"\r\nMessage-ID: <" in head and b"\r\nDate: " in head  # RFC 6409 8.2, 8.3
    con = sqlite3.connect(sub.data_dir / "queue" / "queue.db")
    [(message_id, address)] = con.execute("SELECT message_id, address FROM recipients").fetchall()
    con.close()
    assert address == "friend@foreign.test"
    queued = (sub.data_dir / "queue" / "messages" / message_id).read_bytes()
    assert queued == local.read_bytes()  # one file, linked twice
    zone.stop()


def test_implicit_tls_on_465(sub: PimailServer) -> None:
    with smtplib.SMTP_SSL(
        "localhost", sub.submissions_port, context=sub.client_tls(), timeout=10
    ) as s:
        s.ehlo("client.test")
        assert "PLAIN" in s.esmtp_features["auth"]
        s.login("alice@example.org", PASSWORD)
        s.sendmail("alice@example.org", ["bob@example.org"], MESSAGE)
    assert len(sub.messages("bob@example.org")) == 1


def test_swaks_tls_auth(sub: PimailServer) -> None:
    ca = sub.data_dir / "tls" / "ca" / "ca.pem"
    result = subprocess.run(
        ["swaks", "--server", "localhost", "--port", str(sub.submission_port), "--tls",
         "--tls-verify", "--tls-ca-path", str(ca), "--auth", "LOGIN",
         "--auth-user", "alice@example.org", "--auth-password", PASSWORD,
         "--from", "alice@example.org", "--to", "bob@example.org",
         "--header", "From: alice@example.org", "--body", "via swaks"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.7.0" in result.stdout
    assert len(sub.messages("bob@example.org")) == 1


def test_starttls_injection_on_587(sub: PimailServer) -> None:
    c = RawSMTP(sub.submission_port)
    c.greet()
    auth = base64.b64encode(f"\0alice@example.org\0{PASSWORD}".encode())
    c.send(b"STARTTLS\r\nAUTH PLAIN " + auth + b"\r\n")
    assert c.reply().startswith(b"220")
    c.sock = sub.client_tls().wrap_socket(c.sock, server_hostname="localhost")
    c.file = c.sock.makefile("rb")
    c.greet()
    # Had the plaintext AUTH run, MAIL would pass; it must still ask for AUTH.
    assert c.cmd(b"MAIL FROM:<alice@example.org>").startswith(b"530")
    c.close()


def test_failed_auth_is_limited_per_address(make_server: Any) -> None:
    server = make_server(sections={"auth": {"max_failures": 3, "failure_delay": 0.05}})
    server.cli("domain", "add", "example.org")
    server.add_user("alice@example.org")
    server.start()
    for _ in range(3):
        with starttls(server) as s, pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("alice@example.org", "wrong-password")
    # Now even the right password is refused from this address.
    with starttls(server) as s, pytest.raises(smtplib.SMTPAuthenticationError):
        s.login("alice@example.org", PASSWORD)


@pytest.mark.parametrize(
    "address", ["<a@>", "<@remote.test>", "<@>", "<" + "a" * 330 + "@remote.test>"]
)
def test_malformed_foreign_recipients_are_refused(sub: PimailServer, address: str) -> None:
    with starttls(sub) as s:
        s.login("alice@example.org", PASSWORD)
        s.docmd("MAIL FROM:<alice@example.org>")
        code, _ = s.docmd(f"RCPT TO:{address}")
        assert code in (501, 553)  # aiosmtpd's syntax check, or ours (5.1.3)
        code, _ = s.docmd("RCPT TO:<bob@example.org>")  # and the session goes on
        assert code == 250
    con = sqlite3.connect(sub.data_dir / "queue" / "queue.db")
    assert con.execute("SELECT COUNT(*) FROM recipients").fetchone()[0] == 0
    con.close()
