"""STARTTLS on the MX port (RFC 3207), with the server's internal certificate."""

from __future__ import annotations

import smtplib
import ssl

import pytest

from conftest import PimailServer
from smtp_raw import RawSMTP


def test_starttls_and_delivery(server: PimailServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls")
        s.starttls(context=server.client_tls())
        s.ehlo("client.test")
        assert not s.has_extn("starttls")
        s.sendmail("a@remote.test", ["alice@example.org"], b"Subject: over tls\r\n\r\nx\r\n")
    data = server.messages("alice@example.org")[0].read_bytes()
    assert b"with ESMTPS id" in data


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TLS 1.0/1.1 on purpose
def test_old_tls_versions_refused(server: PimailServer) -> None:
    ctx = server.client_tls()
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as s:
        s.ehlo("client.test")
        try:
            s.starttls(context=ctx)
            handshake_ok = True
        except (ssl.SSLError, OSError, smtplib.SMTPException):
            handshake_ok = False
    assert not handshake_ok


def test_starttls_discards_pipelined_plaintext(server: PimailServer) -> None:
    """CVE-2011-0411: a command sent in the clear behind STARTTLS must not run."""
    c = RawSMTP(server.smtp_port)
    c.greet()
    c.send(b"STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\n")
    assert c.reply().startswith(b"220")
    c.sock = server.client_tls().wrap_socket(c.sock, server_hostname="localhost")
    c.file = c.sock.makefile("rb")
    c.greet()
    # Had the MAIL run, a second MAIL would be refused as nested.
    assert c.cmd(b"MAIL FROM:<a@remote.test>").startswith(b"250")
    c.close()
