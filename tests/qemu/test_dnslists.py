"""The image's own resolver and the DNS lists, end to end (issue 15 item 4),
ClamAV where it fits (issue 15 item 5), and the bare read-only root with
pimail.overlay=0 (issue 16 item 2). One machine, two boots:

1. 4 GiB, like a 4 GB Pi 4: pimail-clamav.service turns ClamAV on; the DNS
   lists, unbound, and clamd's verdicts over SMTP.
2. 512 MB, like a Zero 2 W, with pimail.overlay=0: the bare root; ClamAV is
   decided off for memory. (The big board must be the first boot: on the
   bare root pimail does not serve at all, its PrivateTmp needs a writable
   /tmp; so ClamAV's verdicts can only be seen on a boot with the overlay.)

ClamAV's databases cannot be downloaded here (freshclam fails, and retries):
before the first boot the test writes a signature database of its own on the
data disk, in /data/clamav (bound to /var/lib/clamav, where clamd reads it),
an .ndb body signature for a test string, as tests/filter/engines.py does.

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

import base64
import imaplib
import re
import shutil
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_appliance import ADMIN, DOMAIN, HOST, IMAGE, PASSWORD, REPO, pimailvm, tls

sys.path.insert(0, str(REPO / "tests"))
from dnsserver import DnsServer

WORKDIR = REPO / "test-output" / "qemu-dnslists"
CLIENT = "10.0.2.2"  # the host, as QEMU's user network shows it to the guest
REVERSED = ".".join(reversed(CLIENT.split(".")))
LIST_SERVER = ("10.0.2.100", 53)  # in the guest; forwarded to the host's DnsServer
BIG_BOARD_MB = 4096  # the first boot: a 4 GB Pi 4's memory, where ClamAV fits
SMALL_BOARD_MB = 512  # the second: a Zero 2 W's, where it does not
# A string only the test's ClamAV signature knows (not EICAR, which the built-in
# screen knows too): a message carrying it can only be refused by clamd.
CLAMAV_TEST_STRING = b"pimail-qemu-clamav-test-signature-7d41c2"
CLAMAV_SIGNATURE = "Pimail.QemuTest"
CLAMD_WAIT = 900.0  # clamd's start under TCG on a shared host: a generous bound
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

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
        workdir=WORKDIR,
        image=IMAGE,
        memory_mb=BIG_BOARD_MB,
        guest_forwards=[(*LIST_SERVER, zone.port)],
    )
    setup = pimailvm.setup_toml(DOMAIN, ADMIN, pimailvm.password_hash(PASSWORD))
    m.prepare({"pimail.toml": setup + SETTINGS.encode(), "pimail-selftest": b"on\n"})
    put_clamav_database(m.data)
    m.start()
    try:
        m.wait_banner(timeout=900)
        wait_for_clamd(m)  # else mail meanwhile gets 451 4.7.0 (clamd unreachable)
        yield m
    finally:
        m.kill()


def wait_for_clamd(vm: pimailvm.Machine) -> None:
    """Wait on clamd's socket: the admin spam page PINGs it through pimail.
    clamd starts after pimail-clamav.service decided, and loads its database."""
    sys.path.insert(0, str(REPO / "tests" / "web"))
    from browser import Browser

    deadline = time.monotonic() + CLAMD_WAIT
    page = ""
    while True:
        try:  # the web may come up a little after SMTP's banner: QEMU resets till then
            b = Browser(f"https://{HOST}:{vm.ports['https']}", tls())
            assert b.login(ADMIN, PASSWORD).status == 200
            while "configured and reachable" not in (page := b.get("/admin/spam").text):
                assert time.monotonic() < deadline, re.sub(r"\s+", " ", page)[-2000:]
                time.sleep(5)
            return
        except OSError as e:  # URLError, a reset connection
            assert time.monotonic() < deadline, (e, page[-500:])
            time.sleep(5)


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


def test_admin_page_shows_the_refusal_and_clamav_on(vm: pimailvm.Machine) -> None:
    sys.path.insert(0, str(REPO / "tests" / "web"))
    from browser import Browser

    b = Browser(f"https://{HOST}:{vm.ports['https']}", tls())
    assert b.login(ADMIN, PASSWORD).status == 200
    page = b.get("/admin/spam").text
    assert "asked through 127.0.0.1:5335, [::1]:5335" in page
    assert "refusing.test" in page and "refusing-dbl.test" in page
    assert "127.255.255.254" in page
    # 4 GiB: ClamAV is on, and the page says why; pimail asks Debian's clamd socket.
    assert 'ClamAV on this board: <span class="ok">on (memory: ' in page
    assert "ClamAV needs 3584 MiB" in page
    assert "unix:/run/clamav/clamd.ctl" in page


def test_unbound_runs_validating_on_loopback(vm: pimailvm.Machine, figures: dict) -> None:
    report = vm.selftest(timeout=600)
    assert report["unbound_active"] == "active"
    assert report["unbound_listen"].split() == ["127.0.0.1:5335", "[::1]:5335"]
    # DNSSEC: the trust anchor from dns-root-data, on /data (RFC 5011 updates kept).
    assert report["unbound_validating"] == "/var/lib/unbound/root.key"
    assert report["unbound_trust_anchor"] == "present"
    # The system's resolver is still systemd-resolved's stub: unbound is pimail's.
    assert report["resolv_conf"] == "/run/systemd/resolve/stub-resolv.conf"
    assert report["clamav"].startswith("on (memory: ")
    assert "unbound" not in report["failed_units"] and "clam" not in report["failed_units"]
    assert int(report["overlay_mounts"]) >= 1
    figures["dnslists_guest_4gib_pimail_rss_kb"] = int(report["pimail_rss_kb"])
    figures["dnslists_guest_4gib_mem_available_kb"] = int(report["mem_available_kb"])


def clamav_mail(message_id: str, attachment: bytes | None) -> bytes:
    """A message, with the attachment (base64, as a mail client sends it) if any."""
    head = (
        "From: Sender <someone@sender.test>\r\n"
        f"To: {ADMIN}\r\n"
        f"Subject: clamav {message_id}\r\n"
        f"Message-ID: <{message_id}>\r\n"
        "Date: Mon, 07 Dec 2026 12:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
    )
    text = "Hello, the notes from today's meeting are attached.\r\n"
    if attachment is None:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text).encode()
    encoded = base64.encodebytes(attachment).decode().replace("\n", "\r\n")
    return (
        head + 'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text +
        "--b1\r\nContent-Type: text/plain; name=notes.txt\r\n"
        "Content-Disposition: attachment; filename=notes.txt\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n" + encoded + "--b1--\r\n"
    ).encode()  # fmt: skip


def test_clamav_on_a_big_board_refuses_its_signatures(vm: pimailvm.Machine) -> None:
    """Issue 15 item 5, on the 4 GiB boot: pimail-clamav.service turned ClamAV
    on, pimail asks clamd, and clamd's verdict refuses at DATA."""
    before = spam_status(vm)
    with smtplib.SMTP(HOST, vm.ports["smtp"], timeout=300) as s:
        s.ehlo("client.test")
        for name, attachment in (("signature", CLAMAV_TEST_STRING), ("eicar", EICAR)):
            with pytest.raises(smtplib.SMTPDataError) as refused:
                s.sendmail("someone@sender.test", [ADMIN],
                           clamav_mail(f"{name}@clamav.test", attachment))  # fmt: skip
            code, reply = refused.value.smtp_code, refused.value.smtp_error
            assert (code, reply[:5]) == (554, b"5.7.1"), (name, reply)
            if name == "signature":  # only clamd knows it
                assert f"Virus found: {CLAMAV_SIGNATURE}".encode() in reply, reply
        s.sendmail("someone@sender.test", [ADMIN], clamav_mail("clean@clamav.test", None))
    after = spam_status(vm)
    # Nothing refused was stored; the clean message was, in INBOX or Junk.
    assert set(after) - set(before) == {"clean@clamav.test"}, after


def put_clamav_database(data_disk: Path) -> None:
    """The test's signature database into /clamav of the (unmounted) data
    disk, with debugfs: no mounts. .ndb: Name:TargetType:Offset:HexSignature
    (ClamAV's body-based signatures; target 0 any file, offset * anywhere)."""
    local = data_disk.parent / "pimail-test.ndb"
    local.write_text(f"{CLAMAV_SIGNATURE}:0:*:{CLAMAV_TEST_STRING.hex()}\n")
    local.chmod(0o644)
    script = data_disk.parent / "debugfs-clamav.txt"
    # At boot, tmpfiles (d /data/clamav 0755 clamav clamav) gives the directory to clamav.
    script.write_text(f"mkdir /clamav\ncd /clamav\nwrite {local} pimail-test.ndb\n")
    subprocess.run(["debugfs", "-w", "-f", str(script), str(data_disk)],
                   capture_output=True, check=True)  # fmt: skip
    assert pimailvm.data_disk_read(data_disk, "/clamav/pimail-test.ndb") == local.read_text()


def test_overlay_off_boots_the_bare_read_only_root(vm: pimailvm.Machine) -> None:
    """Issue 16 item 2: pimail.overlay=0 on the kernel command line; this
    boot has 512 MB, and ClamAV is decided off for it (issue 15 item 5)."""
    first_console = vm.console.read_text(errors="replace")
    vm.powerdown()
    vm.extra_append = "pimail.overlay=0"
    vm.memory_mb = SMALL_BOARD_MB
    vm.start()
    report = vm.selftest(timeout=900)
    console = vm.console.read_text(errors="replace")
    assert report["clamav"].startswith("off (memory: "), report
    assert "ClamAV needs 3584 MiB" in report["clamav"]
    assert report["clamd_active"] != "active"
    assert report["root_fstype"] == "squashfs", report
    assert report["overlay_mounts"] == "0"
    assert report["root_write"].startswith("failed") and "Read-only" in report["root_write"]
    # The old initramfs script called grep, which the initramfs does not have.
    for text in (first_console, console):
        assert "grep: not found" not in text
        assert "pimail-overlay" not in text  # no failure message of the script either
