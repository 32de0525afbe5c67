"""No open relay: the classic tricks are all refused, and nothing is stored or sent."""

from __future__ import annotations

import pytest

from conftest import PimailServer
from smtp_raw import RawSMTP

TRICKS = [
    b"user@foreign.test",  # plain foreign -> foreign
    b"user%foreign.test@example.org",  # the percent hack
    b"foreign.test!user@example.org",  # UUCP bang path
    b'"user@foreign.test"@example.org',  # quoted local part hiding a domain
    b"@example.org:user@foreign.test",  # source route (RFC 5321 C)
    b"@example.org,@mx.test:user@foreign.test",
    b"user@foreign.test@example.org",  # two at signs
    b"user@[127.0.0.1]",  # address literal
    b"user@example.org.foreign.test",  # our domain as a prefix
    b"user@xexample.org",  # our domain as a suffix
    b"alice@example.org@foreign.test",
]


@pytest.mark.parametrize("rcpt", TRICKS, ids=lambda r: r.decode())
@pytest.mark.parametrize("sender", [b"a@foreign.test", b"alice@example.org", b""])
def test_relay_tricks_refused(server: PimailServer, rcpt: bytes, sender: bytes) -> None:
    c = RawSMTP(server.smtp_port)
    c.greet()
    assert c.cmd(b"MAIL FROM:<" + sender + b">").startswith(b"250")
    reply = c.cmd(b"RCPT TO:<" + rcpt + b">")
    assert reply[:1] == b"5", reply
    # With no accepted recipient there is no transaction to send data in.
    assert c.cmd(b"DATA").startswith(b"503")
    c.close()
    for user in ("alice@example.org", "bob@example.org"):
        assert server.messages(user) == []


def test_foreign_reply_codes(server: PimailServer) -> None:
    c = RawSMTP(server.smtp_port)
    c.greet()
    c.cmd(b"MAIL FROM:<a@foreign.test>")
    assert c.cmd(b"RCPT TO:<user@foreign.test>").startswith(b"554 5.7.1")
    assert c.cmd(b"RCPT TO:<user%foreign.test@example.org>").startswith(b"550 5.7.1")
    assert c.cmd(b"RCPT TO:<@example.org:user@foreign.test>").startswith(b"554 5.7.1")
    c.close()


def test_catch_all_does_not_open_a_relay(server: PimailServer) -> None:
    """With a catch-all, routing tricks still must not reach anyone."""
    server.cli("alias", "add", "@example.org", "bob@example.org")
    c = RawSMTP(server.smtp_port)
    c.greet()
    c.cmd(b"MAIL FROM:<a@foreign.test>")
    for rcpt in TRICKS:
        assert c.cmd(b"RCPT TO:<" + rcpt + b">")[:1] == b"5", rcpt
    c.close()
