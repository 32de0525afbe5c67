"""End to end: the SD image booted under qemu-system-aarch64 (512 MB, virt).

One machine for the whole module (one first boot, with a pimail.toml on the
boot partition), its tests in this order: SMTP in, IMAP and POP3 out -> the
webmail -> the root is read-only -> a clean reboot keeps the mail -> a power
cut (SIGKILL to QEMU) in the middle of an SMTP load loses no acknowledged
message and duplicates none. Each test also runs alone, by its name (a test
reported as failed is rerun that way): the module fixtures bring the machine
to the state it needs (booted, with the first message delivered), and do it
once for the whole module.

TLS: the clients use an unverified context (the guest's CA is made at first
boot inside the guest; the test checks TLS works, not who signed it).
The image is out/pimail-arm64.img (`./build.sh image`; `./build.sh test`
builds it when it is missing or out of date).
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import shutil
import smtplib
import ssl
import sys
import threading
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "qemu"))
import pimailvm  # noqa: E402

IMAGE = Path(os.environ.get("PIMAIL_IMAGE", REPO / "out" / "pimail-arm64.img"))
WORKDIR = REPO / "test-output" / "qemu"
DOMAIN = "example.org"
ADMIN = "admin@example.org"
PASSWORD = "qemu-e2e-password"
HOST = "127.0.0.1"

if not IMAGE.exists() or not shutil.which("qemu-system-aarch64"):
    # Never a silent skip: ./build.sh test builds the image first; to run the
    # suite without it, PIMAIL_SKIP_QEMU=1 ./build.sh test (or --ignore=tests/qemu).
    raise RuntimeError(
        f"{IMAGE} or qemu-system-aarch64 is missing: run ./build.sh image, or leave "
        "these tests out with PIMAIL_SKIP_QEMU=1 ./build.sh test"
    )


def tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def message(message_id: str, body: str = "hello from the host\n") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "sender@example.net"
    msg["To"] = ADMIN
    msg["Subject"] = f"e2e {message_id}"
    msg["Message-ID"] = f"<{message_id}>"
    msg.set_content(body)
    return msg


def send(vm: pimailvm.Machine, message_id: str, timeout: float = 60) -> None:
    with smtplib.SMTP(HOST, vm.ports["smtp"], timeout=timeout) as s:
        s.ehlo("host.example.net")
        s.send_message(message(message_id), "sender@example.net", [ADMIN])


def imap_message_ids(vm: pimailvm.Machine) -> tuple[int, list[str]]:
    """(EXISTS of INBOX, the Message-IDs of every message in it)."""
    with imaplib.IMAP4_SSL(HOST, vm.ports["imaps"], ssl_context=tls(), timeout=60) as m:
        m.login(ADMIN, PASSWORD)
        typ, data = m.select("INBOX", readonly=True)
        assert typ == "OK"
        exists = int(data[0])
        ids: list[str] = []
        if exists:
            typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            assert typ == "OK"
            for item in data:
                if isinstance(item, tuple):
                    found = re.search(rb"<([^>]+)>", item[1])
                    ids.append(found.group(1).decode() if found else "")
        typ, data = m.search(None, "ALL")
        assert len(data[0].split()) == exists
        m.logout()
    return exists, ids


@pytest.fixture(scope="module")
def vm() -> pimailvm.Machine:
    """The machine after its first boot, answering SMTP and IMAP."""
    shutil.rmtree(WORKDIR, ignore_errors=True)
    m = pimailvm.Machine(workdir=WORKDIR, image=IMAGE, memory_mb=512)
    setup = pimailvm.setup_toml(DOMAIN, ADMIN, pimailvm.password_hash(PASSWORD))
    m.prepare({"pimail.toml": setup, "pimail-selftest": b"on\n"})
    m.start()
    try:
        m.wait_banner(timeout=900)
        yield m
    finally:
        m.kill()


@pytest.fixture(scope="module")
def first_message(vm: pimailvm.Machine) -> str:
    """The first message, sent over SMTP with STARTTLS (offered on 25)."""
    with smtplib.SMTP(HOST, vm.ports["smtp"], timeout=60) as s:
        s.ehlo("host.example.net")
        assert s.has_extn("starttls")
        s.starttls(context=tls())
        s.ehlo("host.example.net")
        s.send_message(message("first@e2e.test"), "sender@example.net", [ADMIN])
    return "first@e2e.test"


def test_first_boot_smtp_banner(vm: pimailvm.Machine, figures: dict) -> None:
    seconds = vm.banners[0]  # the fixture's first boot
    assert 0 < seconds < 900
    figures["qemu_start_to_smtp_banner_s"] = round(seconds, 1)
    figures["image_bytes"] = IMAGE.stat().st_size
    xz = IMAGE.with_name(IMAGE.name + ".xz")
    if xz.exists():
        figures["image_xz_bytes"] = xz.stat().st_size


def test_smtp_in_imap_and_pop3_out(vm: pimailvm.Machine, first_message: str) -> None:
    _exists, ids = imap_message_ids(vm)
    assert ids == ["first@e2e.test"]
    with imaplib.IMAP4(HOST, vm.ports["imap"], timeout=60) as m:
        m.starttls(ssl_context=tls())
        m.login(ADMIN, PASSWORD)
        m.select("INBOX")
        typ, data = m.fetch("1", "(BODY[TEXT])")
        assert typ == "OK"
        assert b"hello from the host" in data[0][1]
        m.logout()

    pop = poplib.POP3_SSL(HOST, vm.ports["pop3s"], context=tls(), timeout=60)
    try:
        pop.user(ADMIN)
        pop.pass_(PASSWORD)
        count, _size = pop.stat()
        assert count == 1
        _resp, lines, _octets = pop.retr(1)
        assert b"Message-ID: <first@e2e.test>" in lines
    finally:
        pop.quit()


def test_webmail_on_the_appliance(vm: pimailvm.Machine, first_message: str) -> None:
    """Port 80 sends browsers to HTTPS; on 443 the admin logs in to the webmail
    and sees the message of the test before."""
    sys.path.insert(0, str(REPO / "tests" / "web"))
    from browser import Browser

    plain = Browser(f"http://{HOST}:{vm.ports['http']}")
    redirect = plain.get("/mail", follow=False)
    assert redirect.status == 301 and (redirect.redirected_to or "").startswith("https://")
    b = Browser(f"https://{HOST}:{vm.ports['https']}", tls())
    assert b.login(ADMIN, PASSWORD).status == 200
    inbox = b.get("/mail")
    assert inbox.status == 200 and "e2e first@e2e.test" in inbox.text
    autoconfig = b.get(f"/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress={ADMIN}")
    assert autoconfig.status == 200 and "<port>993</port>" in autoconfig.text


def test_root_is_read_only(vm: pimailvm.Machine, figures: dict) -> None:
    report = vm.selftest()
    assert report["pimail_active"] == "active"
    assert report["root_fstype"] == "overlay"
    assert report["lower_fstype"] == "squashfs"
    assert report["root_write"].startswith("failed"), report["root_write"]
    assert "Read-only" in report["root_write"]
    assert report["marker_from_before"] == "absent"
    assert report["pimail_protect_system"] == "strict"
    assert report["data_fstype"].startswith("ext4"), report["data_fstype"]
    assert "noatime" in report["data_fstype"]
    assert report["data_owner"] == "pimail"
    assert report["mdns_name"] == "pimail.local"  # what the user types in the browser
    assert "pimail" not in report["failed_units"], report["failed_units"]
    figures["guest_mem_total_kb"] = int(report["mem_total_kb"])
    figures["guest_mem_available_kb"] = int(report["mem_available_kb"])
    figures["guest_pimail_rss_kb"] = int(report["pimail_rss_kb"])
    figures["root_squashfs_bytes"] = int(report["root_fs_bytes"])
    figures["guest_failed_units"] = report["failed_units"] or "none"


def test_clean_reboot_keeps_the_mail(
    vm: pimailvm.Machine, first_message: str, figures: dict
) -> None:
    figures["clean_powerdown_s"] = round(vm.powerdown(), 1)
    vm.start()
    figures["reboot_qemu_start_to_smtp_banner_s"] = round(vm.wait_banner(timeout=900), 1)
    _exists, ids = imap_message_ids(vm)
    assert ids == ["first@e2e.test"]
    # A file written to / in the first boot went with the tmpfs overlay.
    assert vm.selftest()["marker_from_before"] == "absent"


def test_power_cut_under_smtp_load(vm: pimailvm.Machine, figures: dict) -> None:
    acked: list[str] = []
    attempted: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def sender(n: int) -> None:
        i = 0
        while not stop.is_set():
            mid = f"load-{n}-{i}@e2e.test"
            with lock:
                attempted.append(mid)
            try:
                send(vm, mid, timeout=30)
            except (OSError, smtplib.SMTPException):
                if stop.is_set():
                    return
                time.sleep(0.5)
                continue
            with lock:
                acked.append(mid)  # a 250 to DATA
            i += 1

    threads = [threading.Thread(target=sender, args=(n,), daemon=True) for n in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(acked) < 40:
        time.sleep(0.2)
    vm.kill()  # the power cut, while the senders are still sending
    stop.set()
    for t in threads:
        t.join(60)
    acked_at_cut = list(acked)
    assert len(acked_at_cut) >= 10, "the load did not get going before the cut"
    figures["power_cut_acked_messages"] = len(acked_at_cut)
    figures["power_cut_attempted_messages"] = len(attempted)

    vm.start()
    vm.wait_banner(timeout=900)
    exists, ids = imap_message_ids(vm)
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    assert not dupes, f"duplicated after the power cut: {dupes}"
    missing = sorted(set(acked_at_cut) - set(ids))
    assert not missing, f"acknowledged with 250 but lost: {missing}"
    assert exists == len(ids)
    unexpected = set(ids) - set(attempted) - {"first@e2e.test"}
    assert not unexpected, unexpected
    figures["power_cut_messages_after_reboot"] = len(set(ids) & set(attempted))

    # POP3 sees the same mailbox as IMAP.
    pop = poplib.POP3_SSL(HOST, vm.ports["pop3s"], context=tls(), timeout=60)
    try:
        pop.user(ADMIN)
        pop.pass_(PASSWORD)
        assert pop.stat()[0] == exists
    finally:
        pop.quit()
    vm.powerdown()
