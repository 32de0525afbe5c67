"""SMTP on the wire: UTF-8 addresses, long lines, QUIT over TLS, failed handshakes.

- RFC 6531 3.4: an address in UTF-8 needs the SMTPUTF8 parameter on MAIL;
  without it MAIL and RCPT get 553 5.6.7 (RFC 6531 3.7.4.1), on the MX port
  and on submission alike. With it the octets must be UTF-8.
- RFC 5321 4.5.3.1.4: an over-long command line is "500 5.5.2 Line too long"
  (not a "bare LF"), and the session goes on.
- RFC 5321 4.1.1.10: QUIT over TLS (465, or after STARTTLS) ends the TCP
  connection at once.
- A failed TLS handshake (a client that goes away, garbage instead of a
  ClientHello, an old protocol version) is one INFO line in the log on every
  TLS port: no ERROR, no traceback. And aiosmtpd's warning about AUTH without
  TLS is not logged: TLS is required on both submission ports.
"""

from __future__ import annotations

import base64
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PASSWORD, PimailServer
from imap.imap_raw import tcp_eof
from smtp_raw import RawSMTP


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PimailServer]:
    base: Path = tmp_path_factory.mktemp("smtpwire")
    server = PimailServer(base / "data")
    server.cli("domain", "add", "example.org")
    server.add_user("alice@example.org")
    server.start()
    yield server
    server.stop()


def submission(srv: PimailServer) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=10)
    s.starttls(context=srv.client_tls())
    s.login("alice@example.org", PASSWORD)
    s.command_encoding = "utf-8"  # let docmd send UTF-8 as a broken client would
    return s


# -- RFC 6531: UTF-8 addresses ---------------------------------------------------


@pytest.mark.parametrize("port", ["mx", "submission"])
def test_utf8_sender_without_smtputf8_refused(srv: PimailServer, port: str) -> None:
    if port == "mx":
        s = smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=10)
        s.command_encoding = "utf-8"
        sender = "jösé@remote.test"
    else:
        s = submission(srv)
        sender = "alice@example.org"
    s.ehlo("client.test")
    assert s.docmd("MAIL FROM:<änne@remote.test>") == (
        553,
        b"5.6.7 Non-ASCII address requires SMTPUTF8 (RFC 6531)",
    )
    # With SMTPUTF8 the same kind of address is a matter for the policy, not 5.6.7.
    code, text = s.docmd(f"MAIL FROM:<{sender}> SMTPUTF8")
    assert not text.startswith(b"5.6.7"), (code, text)
    s.rset()
    assert s.docmd("MAIL FROM:<ann@remote.test>")[0] == 250 if port == "mx" else True
    s.close()


@pytest.mark.parametrize("port", ["mx", "submission"])
def test_utf8_recipient_without_smtputf8_refused(srv: PimailServer, port: str) -> None:
    if port == "mx":
        s = smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=10)
        s.command_encoding = "utf-8"
        sender = "ann@remote.test"
    else:
        s = submission(srv)
        sender = "alice@example.org"
    s.ehlo("client.test")
    assert s.docmd(f"MAIL FROM:<{sender}>")[0] == 250
    code, text = s.docmd("RCPT TO:<ünï@example.org>")
    assert (code, text[:5]) == (553, b"5.6.7")
    # The envelope goes on: an ASCII recipient is still taken.
    assert s.docmd("RCPT TO:<alice@example.org>")[0] == 250
    s.rset()
    s.command_encoding = "utf-8"  # rset() sets it back to ASCII
    assert s.docmd(f"MAIL FROM:<{sender}> SMTPUTF8")[0] == 250
    code, text = s.docmd("RCPT TO:<ünï@example.org>")
    assert not text.startswith(b"5.6.7"), (code, text)  # unknown user: 550 5.1.1
    s.close()


def test_invalid_utf8_address_refused_even_with_smtputf8(srv: PimailServer) -> None:
    c = RawSMTP(srv.smtp_port)
    c.greet()
    assert c.cmd(b"MAIL FROM:<a\xff\xfe@remote.test> SMTPUTF8").startswith(b"553 5.6.7")
    assert c.cmd(b"MAIL FROM:<a@remote.test>").startswith(b"250")
    c.close()


# -- RFC 5321 4.5.3.1.4: command line length ----------------------------------------------


@pytest.mark.parametrize("length", [600, 1100, 5000, 200_000])
def test_long_command_line_says_line_too_long(srv: PimailServer, length: int) -> None:
    c = RawSMTP(srv.smtp_port)
    c.greet()
    reply = c.cmd(b"MAIL FROM:<" + b"a" * length + b"@remote.test>")
    assert re.match(rb"500 5\.5\.2 (Command line|Line) too long", reply), reply
    assert b"Bare" not in reply
    assert c.cmd(b"NOOP").startswith(b"250")  # the session goes on
    c.close()


def test_long_auth_response_line_says_line_too_long(srv: PimailServer) -> None:
    c = RawSMTP(srv.submission_port)
    c.greet()
    assert c.cmd(b"STARTTLS").startswith(b"220")
    c.sock = srv.client_tls().wrap_socket(c.sock, server_hostname="localhost")
    c.file = c.sock.makefile("rb")
    c.greet()
    assert c.cmd(b"AUTH LOGIN").startswith(b"334")
    reply = c.cmd(b"x" * 5000)
    assert reply.startswith(b"500 5.5.2 Line too long"), reply
    auth = base64.b64encode(f"\0alice@example.org\0{PASSWORD}".encode())
    assert c.cmd(b"AUTH PLAIN " + auth).startswith(b"235")
    c.close()


# -- QUIT over TLS -----------------------------------------------------------------


@pytest.mark.parametrize("port", ["465", "587", "25"])
def test_quit_over_tls_closes_at_once(srv: PimailServer, port: str) -> None:
    if port == "465":
        s: smtplib.SMTP = smtplib.SMTP_SSL(
            "localhost", srv.submissions_port, context=srv.client_tls(), timeout=10
        )
    else:
        number = srv.submission_port if port == "587" else srv.smtp_port
        s = smtplib.SMTP("localhost", number, timeout=10)
        s.starttls(context=srv.client_tls())
    assert s.docmd("QUIT")[0] == 221
    assert s.sock is not None
    assert tcp_eof(s.sock), "TCP connection still open after QUIT"
    s.close()


def test_auth_over_465_works_and_no_false_warning(srv: PimailServer) -> None:
    with smtplib.SMTP_SSL("localhost", srv.submissions_port, context=srv.client_tls()) as s:
        s.ehlo("client.test")
        assert not s.has_extn("starttls")
        s.login("alice@example.org", PASSWORD)
        s.sendmail("alice@example.org", ["alice@example.org"], b"Subject: 465\r\n\r\nx\r\n")
        assert s.docmd("STARTTLS")[0] == 503  # RFC 3207 4.2: TLS is on already
    log = srv.log.read_text(errors="replace")
    assert "Requiring AUTH while not requiring TLS" not in log
    assert "auth_require_tls == False" not in log


# -- failed handshakes: one INFO line each --------------------------------------------


def _hello_then_garbage(sock: socket.socket) -> None:
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n" + b"\x00" * 64)


def _old_version(sock: socket.socket) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, OSError)):
        ctx.wrap_socket(sock, server_hostname="localhost").do_handshake()


def _go_away(sock: socket.socket) -> None:
    pass


def _open(srv: PimailServer, service: str) -> socket.socket:
    """A connection at the point where the client's ClientHello is due."""
    ports = {"smtps": srv.submissions_port, "imaps": srv.imaps_port, "pop3s": srv.pop3s_port}
    if service in ports:
        return socket.create_connection(("127.0.0.1", ports[service]), timeout=10)
    if service in ("smtp", "submission"):
        c = RawSMTP(srv.smtp_port if service == "smtp" else srv.submission_port)
        c.greet()
        assert c.cmd(b"STARTTLS").startswith(b"220")
        return c.sock
    port, command, ok = {
        "imap": (srv.imap_port, b"a STARTTLS\r\n", b"a OK"),
        "pop3": (srv.pop3_port, b"STLS\r\n", b"+OK"),
    }[service]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    file = sock.makefile("rb")
    file.readline()
    sock.sendall(command)
    assert file.readline().startswith(ok)
    return sock


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TLS 1.0 on purpose
@pytest.mark.parametrize("attempt", [_go_away, _hello_then_garbage, _old_version])
@pytest.mark.parametrize(
    "service", ["smtp", "submission", "smtps", "imap", "imaps", "pop3", "pop3s"]
)
def test_failed_handshake_is_one_info_line(srv: PimailServer, service: str, attempt) -> None:
    before = srv.log.read_text(errors="replace")
    sock = _open(srv, service)
    attempt(sock)
    sock.close()
    deadline = time.monotonic() + 10
    while True:
        new = srv.log.read_text(errors="replace")[len(before) :]
        if "tls handshake failed" in new or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    lines = [line for line in new.splitlines() if "handshake" in line.lower()]
    assert len(lines) == 1 and " INFO " in lines[0], new
    assert "ERROR" not in new and "Traceback" not in new, new
