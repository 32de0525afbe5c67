"""Hostile and broken SMTP clients: each gets a clear refusal or a clean close,
nothing is stored from them, and the server goes on serving everyone else."""

from __future__ import annotations

import os
import smtplib
import time

import pytest

from conftest import PimailServer
from smtp_raw import RawSMTP

GOOD = b"Subject: good\r\n\r\nfine\r\n"


def still_serving(server: PimailServer) -> None:
    """A well-behaved client is served normally, on a new connection."""
    before = len(server.messages("bob@example.org"))
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as s:
        s.sendmail("a@remote.test", ["bob@example.org"], GOOD)
    assert len(server.messages("bob@example.org")) == before + 1


def spool_is_empty(server: PimailServer) -> bool:
    incoming = server.data_dir / "spool" / "incoming"
    return not any(incoming.iterdir())


# The end-of-data forms of the 2023 SMTP smuggling attacks: each must be taken
# as message content (with a bare CR or LF), never as the end of the data.
SMUGGLING_ENDS = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r"]


@pytest.mark.parametrize("fake_end", SMUGGLING_ENDS, ids=repr)
def test_smuggling_refused(server: PimailServer, fake_end: bytes) -> None:
    c = RawSMTP(server.smtp_port)
    c.greet()
    c.envelope()
    smuggled = (
        b"MAIL FROM:<admin@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
        b"From: admin@example.org\r\nSubject: smuggled\r\n\r\nevil\r\n"
    )
    c.send(b"Subject: legit\r\n\r\nbody" + fake_end + smuggled + b".\r\n")
    reply = c.reply()
    assert reply.startswith(b"550 5.5.2"), reply
    # Exactly one reply: nothing inside the data was taken as a command.
    assert c.cmd(b"NOOP").startswith(b"250 2.0.0")
    c.close()
    assert server.messages("alice@example.org") == []
    assert server.messages("bob@example.org") == []
    assert spool_is_empty(server)
    still_serving(server)


def test_bare_lf_in_command_refused(server: PimailServer) -> None:
    c = RawSMTP(server.smtp_port)
    c.send(b"EHLO client.test\n")
    assert c.reply().startswith(b"500 5.5.2")
    assert c.cmd(b"EHLO client.test").startswith(b"250")
    c.close()


def test_overlong_command_line(server: PimailServer) -> None:
    c = RawSMTP(server.smtp_port)
    c.greet()
    assert c.cmd(b"MAIL FROM:<" + b"a" * 5000 + b"@remote.test>").startswith(b"500 5.5.2")
    # A line of a megabyte with no end at all is read and refused too, without buffering it.
    c.send(b"X" * (1 << 20) + b"\r\n")
    assert c.reply().startswith(b"500 5.5.2")
    assert c.cmd(b"NOOP").startswith(b"250")
    c.close()
    still_serving(server)


def test_garbage_and_binary(server: PimailServer) -> None:
    c = RawSMTP(server.smtp_port)
    for junk in (b"\x00\x01\x02\xff\xfe", "ÄÖÜ".encode("latin-1"), b"\x1b[31mRED", b"  "):
        reply = c.cmd(junk)
        assert reply[:1] == b"5", reply
    c.greet()
    assert c.cmd(b"MAIL FROM:<\xff\xfe@remote.test>")[:1] in (b"2", b"5")
    c.close()
    still_serving(server)


def test_unknown_commands_flood_closes(server: PimailServer) -> None:
    c = RawSMTP(server.smtp_port)
    replies = b""
    with pytest.raises(ConnectionError):
        for i in range(200):
            replies += c.cmd(b"BOGUS%d" % i)
    assert b"502 5.5.1" in replies
    still_serving(server)


def test_size_limit(make_server) -> None:
    server: PimailServer = make_server(max_message_size=10_000)
    server.cli("domain", "add", "example.org")
    server.add_user("alice@example.org")
    server.add_user("bob@example.org")
    server.start()
    c = RawSMTP(server.smtp_port)
    c.greet()
    assert b"250-SIZE 10000" in c.cmd(b"EHLO again.test")
    # Declared too big: refused at MAIL (RFC 1870 6.1).
    assert c.cmd(b"MAIL FROM:<a@remote.test> SIZE=20000").startswith(b"552 5.3.4")
    # Undeclared and too big: the data is read to its end, nothing stored.
    c.envelope()
    c.send(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 300 + b".\r\n")
    assert c.reply().startswith(b"552 5.3.4")
    assert spool_is_empty(server)
    assert server.messages("alice@example.org") == []
    # The session goes on.
    c.envelope()
    c.send(GOOD + b".\r\n")
    assert c.reply().startswith(b"250 2.0.0")
    c.close()


def test_spilled_large_message_delivered(server: PimailServer) -> None:
    """Past the in-memory threshold the message streams to the spool; still one file."""
    body = (b"0123456789" * 7 + b"\r\n") * 20_000  # 1.4 MB
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        s.sendmail(
            "a@remote.test",
            ["alice@example.org", "bob@example.org"],
            b"Subject: large\r\n\r\n" + body,
        )
    [a] = server.messages("alice@example.org")
    [b] = server.messages("bob@example.org")
    assert a.read_bytes().endswith(body)
    assert os.stat(a).st_ino == os.stat(b).st_ino
    assert spool_is_empty(server)


def test_recipient_limit(make_server) -> None:
    server: PimailServer = make_server(max_recipients=3)
    server.cli("domain", "add", "example.org")
    server.add_user("alice@example.org")
    server.start()
    c = RawSMTP(server.smtp_port)
    c.greet()
    assert c.cmd(b"MAIL FROM:<a@remote.test>").startswith(b"250")
    for tag in (b"1", b"2", b"3"):
        assert c.cmd(b"RCPT TO:<alice+" + tag + b"@example.org>").startswith(b"250")
    assert c.cmd(b"RCPT TO:<alice+4@example.org>").startswith(b"452 4.5.3")
    c.close()


def test_idle_client_times_out(make_server) -> None:
    server: PimailServer = make_server(timeout=1.0)
    server.cli("domain", "add", "example.org")
    server.start()
    c = RawSMTP(server.smtp_port)
    started = time.monotonic()
    assert c.reply().startswith(b"421 4.4.2")
    assert c.closed()
    assert time.monotonic() - started < 5


def test_slow_data_times_out(make_server) -> None:
    """A trickle below min_data_rate is cut off even though bytes keep coming."""
    server: PimailServer = make_server(timeout=1.0, min_data_rate=1000)
    server.cli("domain", "add", "example.org")
    server.add_user("alice@example.org")
    server.start()
    c = RawSMTP(server.smtp_port)
    c.greet()
    c.envelope()
    started = time.monotonic()
    closed = False
    while time.monotonic() - started < 8:
        try:
            c.send(b"x")
        except OSError:
            closed = True
            break
        time.sleep(0.2)
        c.sock.setblocking(False)
        try:
            data = c.sock.recv(100)
            closed = closed or data.startswith(b"421") or data == b""
        except BlockingIOError:
            pass
        finally:
            c.sock.setblocking(True)
        if closed:
            break
    assert closed
    assert time.monotonic() - started < 6
    assert server.messages("alice@example.org") == []


def test_connection_limit_per_ip(make_server) -> None:
    server: PimailServer = make_server(max_connections_per_ip=3)
    server.cli("domain", "add", "example.org")
    server.add_user("bob@example.org")
    server.start()
    time.sleep(0.2)  # let the start-up probe connection go
    clients = [RawSMTP(server.smtp_port) for _ in range(3)]
    extra = RawSMTP(server.smtp_port)
    assert extra.banner.startswith(b"421 4.7.0")
    assert extra.closed()
    clients.pop().close()
    time.sleep(0.2)
    still_serving(server)
    for c in clients:
        c.close()


def test_client_vanishing_mid_data(server: PimailServer) -> None:
    c = RawSMTP(server.smtp_port)
    c.greet()
    c.envelope()
    c.send(b"Subject: cut\r\n\r\n" + b"half a message\r\n" * 100)
    c.close()
    time.sleep(0.3)
    assert server.messages("alice@example.org") == []
    assert spool_is_empty(server)
    still_serving(server)
