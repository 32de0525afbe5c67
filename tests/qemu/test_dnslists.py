"""The image's own resolver and the DNS lists, end to end (issue 15 item 4), and
the bare read-only root with pimail.overlay=0 (issue 16 item 2). One machine
(512 MB, like a Zero 2 W), two boots.

The lists are served by tests/dnsserver.py on the host's loopback. The guest
reaches it only through unbound: its stub zone "test" (dns.stub_zones, set by
the boot partition's [setup.settings] like a user with a LAN DNS server would)
points at 10.0.2.100:53, which QEMU forwards (guestfwd, TCP only: hence
"tcp:") to the host's server; nothing else in the guest can reach the host.
So a query the host's server logs came from unbound, and pimail's verdicts on
it prove the whole path: pimail -> unbound on 127.0.0.1:5335 -> stub zone ->
list server.

QEMU's user network shows every SMTP client as 10.0.2.2, not a global
address: the test takes 10.0.0.0/8 out of skip_networks and turns
filter.dnsbl_skip_private off (a lab setting), so that 10.0.2.2 is asked of the
IP lists like any outside client.
"""

from __future__ import annotations

import imaplib
import re
import shutil
import smtplib
import sys

import pytest

from .test_appliance import ADMIN, DOMAIN, HOST, IMAGE, PASSWORD, REPO, pimailvm, tls

sys.path.insert(0, str(REPO / "tests"))
from dnsserver import DnsServer

WORKDIR = REPO / "test-output" / "qemu-dnslists"
CLIENT = "10.0.2.2"  # the host, as QEMU's user network shows it to the guest
REVERSED = ".".join(reversed(CLIENT.split(".")))
LIST_SERVER = ("10.0.2.100", 53)  # in the guest; forwarded to the host's DnsServer

SETTINGS = f"""
[setup.settings.dns]
stub_zones = ["test=tcp:{LIST_SERVER[0]}:{LIST_SERVER[1]}"]
[setup.settings.filter]
skip_networks = ["127.0.0.0/8", "::1/128"]
greylist = false
dnsbl_skip_private = false
dnsbl_zones = ["bl.test", "refusing.test"]
dnsbl_domain_zones = ["dbl.test", "refusing-dbl.test"]
# Under TCG on a loaded host the first lookups (unbound -> TCP through QEMU's
# guestfwd -> the host) took longer than the default 5 s and failed open.
dnsbl_timeout = 30.0
"""


def list_zones(zone: DnsServer) -> None:
    # RFC 5782 2.1: the client's address, octets reversed, under the IP list.
    zone.add(f"{REVERSED}.bl.test", "A", "127.0.0.2")
    zone.add(f"{REVERSED}.bl.test", "TXT", '"listed for the test"')
    # Spamhaus's "you query through a public resolver": an error, never a listing.
    zone.add(f"{REVERSED}.refusing.test", "A", "127.255.255.254")
    # RFC 5782 2.3: a domain list, asked about the links' domains.
    zone.add("listed.test.dbl.test", "A", "127.0.1.2")
    zone.add("clean.test.refusing-dbl.test", "A", "127.255.255.254")
    zone.add("listed.test.refusing-dbl.test", "A", "127.255.255.254")


@pytest.fixture(scope="module")
def zone() -> DnsServer:
    server = DnsServer().start()
    list_zones(server)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def vm(zone: DnsServer) -> pimailvm.Machine:
    shutil.rmtree(WORKDIR, ignore_errors=True)
    m = pimailvm.Machine(
        workdir=WORKDIR, image=IMAGE, memory_mb=512, guest_forwards=[(*LIST_SERVER, zone.port)]
    )
    setup = pimailvm.setup_toml(DOMAIN, ADMIN, pimailvm.password_hash(PASSWORD))
    m.prepare({"pimail.toml": setup + SETTINGS.encode(), "pimail-selftest": b"on\n"})
    m.start()
    yield m
    m.kill()


def mail(message_id: str, link: str) -> bytes:
    return (
        "From: Offers <offers@sender.test>\r\n"
        f"To: {ADMIN}\r\n"
        f"Subject: dns lists {message_id}\r\n"
        f"Message-ID: <{message_id}>\r\n"
        "Date: Mon, 07 Dec 2026 12:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"Have a look at {link} today.\r\n"
    ).encode()


def spam_status(vm: pimailvm.Machine) -> dict[str, str]:
    """Message-ID -> the X-Spam-Status field of each message, in INBOX or Junk
    (where a message lands depends on the starter model too; the lists'
    symbols are what this test is about)."""
    found: dict[str, str] = {}
    with imaplib.IMAP4_SSL(HOST, vm.ports["imaps"], ssl_context=tls(), timeout=60) as m:
        m.login(ADMIN, PASSWORD)
        for mailbox in ("INBOX", "Junk"):
            found.update(_statuses(m, mailbox))
        m.logout()
    return found


def _statuses(m: imaplib.IMAP4, mailbox: str) -> dict[str, str]:
    found: dict[str, str] = {}
    typ, data = m.select(mailbox, readonly=True)
    if typ == "OK" and int(data[0]):
        typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID X-SPAM-STATUS)])")
        assert typ == "OK"
        for item in data:
            if isinstance(item, tuple):
                text = item[1].decode().replace("\r\n\t", "")
                mid = re.search(r"<([^>]+)>", text)
                status = re.search(r"X-Spam-Status: (.*)", text)
                assert mid and status, text
                found[mid.group(1)] = status.group(1)
    return found


def test_lists_are_asked_through_the_guests_unbound(vm: pimailvm.Machine, zone: DnsServer) -> None:
    vm.wait_banner(timeout=900)
    with smtplib.SMTP(HOST, vm.ports["smtp"], timeout=120) as s:
        s.ehlo("client.test")
        s.sendmail(
            "offers@sender.test", [ADMIN], mail("listed-link@e2e.test", "http://listed.test/offer")
        )
        s.sendmail(
            "offers@sender.test", [ADMIN], mail("clean-link@e2e.test", "https://www.clean.test/x")
        )
    junk = spam_status(vm)
    # The client's address is on bl.test: both messages, whatever their links.
    assert set(junk) == {"listed-link@e2e.test", "clean-link@e2e.test"}, junk
    assert all("RCVD_IN_DNSBL" in status for status in junk.values()), junk
    # The listed link's domain is on dbl.test; the clean one's only got the
    # refusal (127.255.255.254) of refusing-dbl.test, which is no listing.
    assert "URIBL_LISTED" in junk["listed-link@e2e.test"]
    assert "URIBL_LISTED" not in junk["clean-link@e2e.test"]
    # The host's server was asked, and only unbound could have asked it.
    asked = {name for name, _type in zone.queries}
    assert f"{REVERSED}.bl.test" in asked and f"{REVERSED}.refusing.test" in asked
    assert "listed.test.dbl.test" in asked and "clean.test.refusing-dbl.test" in asked


def test_admin_page_shows_the_refusal_and_clamav_off_for_memory(vm: pimailvm.Machine) -> None:
    sys.path.insert(0, str(REPO / "tests" / "web"))
    from browser import Browser

    b = Browser(f"https://{HOST}:{vm.ports['https']}", tls())
    assert b.login(ADMIN, PASSWORD).status == 200
    page = b.get("/admin/spam").text
    assert "asked through 127.0.0.1:5335, [::1]:5335" in page
    assert "refusing.test" in page and "refusing-dbl.test" in page
    assert "127.255.255.254" in page
    # 512 MB: ClamAV stays off, and the page says why.
    assert "ClamAV on this board: off (memory: " in page
    assert "ClamAV needs 3584 MiB" in page
    assert "not configured (filter.clamd)" in page


def test_unbound_runs_validating_on_loopback(vm: pimailvm.Machine, figures: dict) -> None:
    report = vm.selftest(timeout=600)
    assert report["unbound_active"] == "active"
    assert report["unbound_listen"].split() == ["127.0.0.1:5335", "[::1]:5335"]
    # DNSSEC: the trust anchor from dns-root-data, on /data (RFC 5011 updates kept).
    assert report["unbound_validating"] == "/var/lib/unbound/root.key"
    assert report["unbound_trust_anchor"] == "present"
    # The system's resolver is still systemd-resolved's stub: unbound is pimail's.
    assert report["resolv_conf"] == "/run/systemd/resolve/stub-resolv.conf"
    assert report["clamav"].startswith("off (memory: ")
    assert report["clamd_active"] != "active"
    assert "unbound" not in report["failed_units"] and "clam" not in report["failed_units"]
    assert int(report["overlay_mounts"]) >= 1
    figures["dnslists_guest_pimail_rss_kb"] = int(report["pimail_rss_kb"])
    figures["dnslists_guest_mem_available_kb"] = int(report["mem_available_kb"])


def test_overlay_off_boots_the_bare_read_only_root(vm: pimailvm.Machine) -> None:
    """Issue 16 item 2: pimail.overlay=0 on the kernel command line."""
    first_console = vm.console.read_text(errors="replace")
    vm.powerdown()
    vm.extra_append = "pimail.overlay=0"
    vm.start()
    report = vm.selftest(timeout=900)
    console = vm.console.read_text(errors="replace")
    assert report["root_fstype"] == "squashfs", report
    assert report["overlay_mounts"] == "0"
    assert report["root_write"].startswith("failed") and "Read-only" in report["root_write"]
    # The old initramfs script called grep, which the initramfs does not have.
    for text in (first_console, console):
        assert "grep: not found" not in text
        assert "pimail-overlay" not in text  # no failure message of the script either
