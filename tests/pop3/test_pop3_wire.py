"""POP3 on the wire: QUIT over TLS closes at once; the login deadline.

- RFC 1939 6: after QUIT's +OK the server closes. Over TLS (995, or after
  STLS) the TCP connection ends at once, without waiting for the client's
  close_notify.
- RFC 1939 3's autologout timer (10 minutes) is for a logged-in client;
  before login one deadline (pop3.login_timeout, 2 s here) covers the whole
  AUTHORIZATION state, and a client that drips octets or junk lines does not
  extend it.
"""

from __future__ import annotations

import poplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PASSWORD, PimailServer
from drip import drip_until_closed
from imap.imap_raw import tcp_eof

LOGIN_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PimailServer]:
    base: Path = tmp_path_factory.mktemp("pop3wire")
    server = PimailServer(base / "data", sections={"pop3": {"login_timeout": LOGIN_TIMEOUT}})
    server.cli("domain", "add", "example.org")
    server.add_user("wire@example.org")
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("logged_in", [False, True])
def test_quit_over_pop3s_closes_at_once(srv: PimailServer, logged_in: bool) -> None:
    p = poplib.POP3_SSL("localhost", srv.pop3s_port, context=srv.client_tls(), timeout=10)
    if logged_in:
        p.user("wire@example.org")
        p.pass_(PASSWORD)
    p._putcmd("QUIT")  # poplib's quit() closes the socket itself
    assert p._getresp().startswith(b"+OK")
    assert p.file.read() == b""  # TLS close_notify
    assert tcp_eof(p.sock), "TCP connection still open after QUIT"
    p.close()


def test_quit_after_stls_closes_at_once(srv: PimailServer) -> None:
    p = poplib.POP3("127.0.0.1", srv.pop3_port, timeout=10)
    p.stls(context=srv.client_tls())
    p._putcmd("QUIT")
    assert p._getresp().startswith(b"+OK")
    assert tcp_eof(p.sock)
    p.close()


@pytest.mark.parametrize("tls", [False, True])
def test_idle_client_closed_at_login_deadline(srv: PimailServer, tls: bool) -> None:
    if tls:
        p = poplib.POP3_SSL("localhost", srv.pop3s_port, context=srv.client_tls(), timeout=10)
    else:
        p = poplib.POP3("127.0.0.1", srv.pop3_port, timeout=10)
    # RFC 1939 3: autologout without a response; EOF within the socket timeout.
    assert p.file.read() == b""
    p.close()


@pytest.mark.parametrize("drip", [b"U", b"NOOP\r\n"], ids=["partial-line", "junk-lines"])
def test_drip_does_not_extend_the_login_deadline(srv: PimailServer, drip: bytes) -> None:
    p = poplib.POP3("127.0.0.1", srv.pop3_port, timeout=10)
    closed = drip_until_closed(p.sock, drip, 4 * LOGIN_TIMEOUT)
    assert closed, "a dripping client was never closed"
    p.close()


def test_logged_in_client_keeps_the_long_timeout(srv: PimailServer) -> None:
    p = poplib.POP3_SSL("localhost", srv.pop3s_port, context=srv.client_tls(), timeout=10)
    p.user("wire@example.org")
    p.pass_(PASSWORD)
    time.sleep(LOGIN_TIMEOUT + 0.5)
    assert p.noop().startswith(b"+OK")
    p.quit()
