"""The content filter in the inbound path, over real SMTP: DMARC reject before
the 250, quarantine to Junk, forged Authentication-Results replaced by ours.
The sending address (127.0.0.1) is taken out of the trusted networks so that
loopback mail is filtered as mail from the internet would be."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import PimailServer
from dnsserver import DnsServer


@pytest.fixture
def filtered(make_server: Any) -> Iterator[tuple[PimailServer, DnsServer]]:
    zone = DnsServer().start()
    server: PimailServer = make_server(sections={
        "dns": {"nameservers": [zone.address], "timeout": 3.0},
        "filter": {"skip_networks": [], "greylist": False},
    })  # fmt: skip
    server.cli("domain", "add", "example.org")
    server.add_user("alice@example.org")
    server.start()
    yield server, zone
    zone.stop()


def send(server: PimailServer, sender: str, message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        s.sendmail(sender, ["alice@example.org"], message)


def message(domain: str, extra: bytes = b"") -> bytes:
    return extra + (
        f"From: someone@{domain}\r\nTo: alice@example.org\r\nSubject: hello\r\n"
        "Date: Fri, 27 Nov 2026 12:00:00 +0000\r\nMessage-ID: <m1@x.test>\r\n\r\nHi.\r\n"
    ).encode()


def test_dmarc_reject_is_refused_before_the_250(filtered: Any) -> None:
    server, zone = filtered
    zone.add("evil.test", "TXT", '"v=spf1 ip4:192.0.2.1 -all"')  # not us: SPF fails
    zone.add("_dmarc.evil.test", "TXT", '"v=DMARC1; p=reject"')
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(server, "someone@evil.test", message("evil.test"))
    assert refused.value.smtp_code == 550 and b"5.7.1" in refused.value.smtp_error
    assert server.messages("alice@example.org") == []


def test_quarantine_goes_to_junk_with_our_headers_and_no_forged_ones(filtered: Any) -> None:
    server, zone = filtered
    zone.add("shady.test", "TXT", '"v=spf1 ip4:192.0.2.1 -all"')
    zone.add("_dmarc.shady.test", "TXT", '"v=DMARC1; p=quarantine"')
    forged = b"Authentication-Results: mx.test; dmarc=pass\r\n\theader.from=shady.test\r\n"
    send(server, "someone@shady.test", message("shady.test", forged))
    assert server.messages("alice@example.org") == []
    [junk] = server.messages("alice@example.org", ".Junk")
    head = junk.read_bytes().split(b"\r\n\r\n", 1)[0]
    assert b"dmarc=pass" not in head  # the forged claim is gone
    assert b"spf=fail" in head and b"dmarc=fail" in head
    assert b"X-Spam-Status: Yes" in head and head.count(b"Authentication-Results:") == 1


def test_mail_that_passes_stays_in_the_inbox(filtered: Any) -> None:
    server, zone = filtered
    zone.add("good.test", "TXT", '"v=spf1 ip4:127.0.0.1 -all"')
    zone.add("_dmarc.good.test", "TXT", '"v=DMARC1; p=reject"')
    send(server, "someone@good.test", message("good.test"))
    [inbox] = server.messages("alice@example.org")
    head = inbox.read_bytes().split(b"\r\n\r\n", 1)[0]
    assert b"spf=pass" in head and b"dmarc=pass" in head and b"X-Spam-Status: No" in head


def test_greylisting_defers_the_first_attempt_then_accepts(make_server: Any) -> None:
    zone = DnsServer().start()
    server: PimailServer = make_server(sections={
        "dns": {"nameservers": [zone.address], "timeout": 3.0},
        "filter": {"skip_networks": [], "greylist": True, "greylist_delay": 1.0},
    })  # fmt: skip
    server.cli("domain", "add", "example.org")
    server.add_user("alice@example.org")
    server.start()
    try:
        zone.add("good.test", "TXT", '"v=spf1 ip4:127.0.0.1 -all"')
        zone.add("_dmarc.good.test", "TXT", '"v=DMARC1; p=reject"')
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
            s.ehlo("mta.good.test")
            s.mail("someone@good.test")
            code, text = s.rcpt("alice@example.org")
            assert code == 451 and text.startswith(b"4.7.1")
            code, _ = s.rcpt("alice@example.org")
            assert code == 451  # too early
        time.sleep(1.2)
        send(server, "someone@good.test", message("good.test"))  # the retry passes
        assert len(server.messages("alice@example.org")) == 1
        send(server, "someone@good.test", message("good.test"))  # and is known now
        assert len(server.messages("alice@example.org")) == 2
        # A new sender of the same (DMARC-passing) domain from this network: known.
        send(server, "other@good.test", message("good.test"))
        assert len(server.messages("alice@example.org")) == 3
    finally:
        zone.stop()


def test_a_big_message_is_rewritten_on_disk_and_a_huge_header_block_refused(
    filtered: Any,
) -> None:
    server, zone = filtered
    zone.add("big.test", "TXT", '"v=spf1 ip4:127.0.0.1 -all"')
    forged = b"Authentication-Results: mx.test; dmarc=pass header.from=big.test\r\n"
    body = b"x" * 998 + b"\r\n"
    big = message("big.test", forged).replace(b"Hi.\r\n", body * 700)  # spilled (> 512 KB)
    send(server, "someone@big.test", big)
    [path] = server.messages("alice@example.org")
    stored = path.read_bytes()
    head = stored.split(b"\r\n\r\n", 1)[0]
    assert b"dmarc=pass header.from=big.test" not in head and b"spf=pass" in head
    assert stored.endswith(body * 700)
    # 270 KB of header fields: over the filter's limit on a header block.
    padding = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 900) for i in range(300))
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(server, "someone@big.test", message("big.test", padding + forged))
    assert refused.value.smtp_code == 552 and b"5.3.4" in refused.value.smtp_error
    assert len(server.messages("alice@example.org")) == 1
