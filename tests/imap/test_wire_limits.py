"""IMAP on the wire before and after login: closing, timeouts, announced literals.

- LOGOUT over implicit TLS ends the TCP connection at once (RFC 9051 6.1.3),
  not after the 30 s asyncio waits for a client's close_notify.
- Before login one deadline covers the whole not-authenticated state
  (imap.login_timeout; 2 s here): an idle client and one that drips octets
  are both closed by it.
- A literal over the limit: {n} (synchronising) is refused before the client
  sends it and the connection goes on (RFC 9051 7.6: NO [TOOBIG]); {n+}
  (RFC 7888 4) gets BAD [TOOBIG] and BYE at once instead of the server
  reading what was announced. Before login the limits are a few KiB.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PASSWORD, PimailServer
from drip import drip_until_closed

from .imap_raw import RawIMAP, tcp_eof

LOGIN_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PimailServer]:
    base: Path = tmp_path_factory.mktemp("imapwire")
    server = PimailServer(base / "data", sections={"imap": {"login_timeout": LOGIN_TIMEOUT}})
    server.cli("domain", "add", "example.org")
    server.add_user("wire@example.org")
    server.start()
    yield server
    server.stop()


def read_to_eof(c: RawIMAP) -> bytes:
    out = b""
    while True:
        try:
            chunk = c.sock.recv(4096)
        except (ConnectionResetError, ssl.SSLError):
            return out
        if not chunk:
            return out
        out += chunk


def login(srv: PimailServer) -> RawIMAP:
    c = RawIMAP(srv.imaps_port, tls=srv.client_tls())
    c.ok(f'LOGIN "wire@example.org" "{PASSWORD}"')
    return c


# -- closing -----------------------------------------------------------------------


@pytest.mark.parametrize("logged_in", [False, True])
def test_logout_over_imaps_closes_at_once(srv: PimailServer, logged_in: bool) -> None:
    c = login(srv) if logged_in else RawIMAP(srv.imaps_port, tls=srv.client_tls())
    untagged, tagged = c.command("LOGOUT")
    assert untagged[0].startswith(b"* BYE") and b" OK " in tagged
    # RFC 9051 6.1.3: the server closes. We never answer its close_notify.
    assert c.file.read() == b""  # TLS close_notify
    assert tcp_eof(c.sock), "TCP connection still open after LOGOUT"
    c.close()


def test_logout_after_starttls_closes_at_once(srv: PimailServer) -> None:
    c = RawIMAP(srv.imap_port)
    c.starttls(srv.client_tls())
    c.ok("LOGOUT")
    assert tcp_eof(c.sock)
    c.close()


# -- the login deadline -------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True])
def test_idle_client_closed_at_login_deadline(srv: PimailServer, tls: bool) -> None:
    c = RawIMAP(srv.imaps_port, tls=srv.client_tls()) if tls else RawIMAP(srv.imap_port)
    assert b"BYE" in read_to_eof(c)  # within the 10 s socket timeout
    c.close()


@pytest.mark.parametrize("drip", [b"a", b"a NOOP\r\n"], ids=["partial-line", "junk-lines"])
def test_drip_does_not_extend_the_login_deadline(srv: PimailServer, drip: bytes) -> None:
    c = RawIMAP(srv.imap_port)
    closed = drip_until_closed(c.sock, drip, 4 * LOGIN_TIMEOUT)
    assert closed, "a dripping client was never closed"
    c.close()


def test_logged_in_client_keeps_the_long_timeout(srv: PimailServer) -> None:
    c = login(srv)
    time.sleep(LOGIN_TIMEOUT + 0.5)
    c.ok("NOOP")
    c.close()


# -- announced literals ------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        b"LOGIN wire {99999999999}",  # a huge synchronising literal
        b"LOGIN wire {2049}",  # over the pre-login limit, well under the later one
        b"APPEND INBOX {5000}",
        b"AUTHENTICATE PLAIN {3000}",
    ],
)
def test_sync_literal_before_login_refused_and_connection_goes_on(
    srv: PimailServer, command: bytes
) -> None:
    c = RawIMAP(srv.imaps_port, tls=srv.client_tls())
    c.send(b"a1 " + command + b"\r\n")
    tagged = c.line()
    # RFC 9051 7.6: a tagged answer instead of "+"; the client sends nothing.
    assert tagged.startswith(b"a1 NO [TOOBIG]") or tagged.startswith(b"a1 BAD"), tagged
    c.ok(f'LOGIN "wire@example.org" "{PASSWORD}"')
    c.close()


def test_login_with_literals_within_the_pre_login_limit(srv: PimailServer) -> None:
    c = RawIMAP(srv.imaps_port, tls=srv.client_tls())
    user, password = b"wire@example.org", PASSWORD.encode()
    c.send(b"a1 LOGIN {%d}\r\n" % len(user))
    assert c.line().startswith(b"+")
    c.send(user + b" {%d+}\r\n" % len(password) + password + b"\r\n")
    assert b"a1 OK" in c.line() or b"a1 OK" in c.until(b"a1")[1]
    # After login the limits are the full ones: a 3000-octet literal is taken.
    c.ok("SELECT INBOX")
    c.send(b"a2 SEARCH TEXT {3000}\r\n")
    assert c.line().startswith(b"+")
    c.send(b"x" * 3000 + b"\r\n")
    _, tagged = c.until(b"a2")
    assert b"a2 OK" in tagged
    c.close()


@pytest.mark.parametrize(
    ("logged_in", "command"),
    [
        (False, b"LOGIN wire {99999999999+}"),
        (False, b"LOGIN wire {3000+}"),
        (False, b"APPEND INBOX ~{99999999999+}"),
        (True, b"APPEND INBOX {99999999999+}"),
        (True, b"APPEND INBOX ~{99999999999+}"),
        (True, b"SEARCH TEXT {99999999+}"),
    ],
)
def test_non_sync_literal_over_limit_answered_and_closed_at_once(
    srv: PimailServer, logged_in: bool, command: bytes
) -> None:
    c = login(srv) if logged_in else RawIMAP(srv.imaps_port, tls=srv.client_tls())
    # RFC 7888 4: the client may send the data right away; we send none of it
    # and the server must not wait for it.
    c.send(b"z1 " + command + b"\r\n")
    rest = read_to_eof(c)
    assert b"z1 BAD [TOOBIG]" in rest and b"* BYE" in rest, rest
    assert tcp_eof(c.sock)
    c.close()


def test_sync_literal_over_limit_after_login_connection_goes_on(srv: PimailServer) -> None:
    c = login(srv)
    for command in (b"APPEND INBOX {99999999999}", b"APPEND INBOX ~{99999999999}"):
        c.send(b"a9 " + command + b"\r\n")
        assert c.line().startswith(b"a9 NO [TOOBIG]")
    c.ok("NOOP")
    c.close()


def test_client_that_never_reads_is_closed_at_login_deadline(srv: PimailServer) -> None:
    # Pipelined commands whose answers the client never reads: the server's
    # queued output is held to a few KiB and it stops waiting at the deadline.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", srv.imap_port))
    sock.settimeout(0.2)
    sent = 0
    burst = b"a CAPABILITY\r\n" * 1000
    deadline = time.monotonic() + 3 * LOGIN_TIMEOUT
    while time.monotonic() < deadline:
        try:
            sent += sock.send(burst)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    sock.settimeout(10)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    sock.close()
    answered = received.count(b"a OK CAPABILITY")
    assert answered < sent // len(b"a CAPABILITY\r\n"), (answered, sent)
