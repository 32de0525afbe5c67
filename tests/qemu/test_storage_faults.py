"""End to end, issue 16 item 8: storage faults never cost acknowledged mail.

One boot of the SD image (512 MB, virt) whose data disk is a USB stick
(pimailvm data_bus="usb"), then, in order:

1. under SMTP load (three senders, one session per message, every reply
   recorded) the stick is pulled out (QMP device_del): from then on every
   reply is a 4xx (452 4.3.1) or a 250 for a message that is on disk, and
   pimail stays up answering 452 while the disk is gone;
2. while it is out, the host fills its filesystem (a ballast file that leaves
   a little more than pimail's reserve free), and puts it back (device_add,
   the same backing file): the appliance mounts it again by itself (udev ->
   pimail-data-return.service) and pimail serves again by itself;
3. big messages until the disk is full: 452 4.3.1 (at MAIL, or at the end of
   DATA for the room the message itself took), and the next big one is
   refused too; the user deletes the big messages over IMAP (EXPUNGE works on
   a disk that is only full) and a big message is accepted again;
4. at the end every acknowledged message is in INBOX exactly once (IMAP).

Nothing here asserts on time; every wait is bounded.
"""

from __future__ import annotations

import base64
import collections
import imaplib
import os
import re
import shutil
import smtplib
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pimailvm
import pytest

from .test_appliance import IMAGE, REPO, tls  # the image, checked there

WORKDIR = REPO / "test-output" / "qemu-storage"
DOMAIN = "example.org"
ADMIN = "admin@example.org"
SENDER = "sender@example.net"
PASSWORD = "qemu-storage-password"
HOST = "127.0.0.1"
MIB = 1024 * 1024
# pimail's reserve ([storage] defaults: 2 %, at least 64 MiB; store/health.py).
RESERVE_PERCENT, RESERVE_MIB = 2.0, 64
# What the ballast leaves free above the reserve: a few big messages fill it.
HEADROOM = 20 * MIB
BIG = 4 * MIB


def raw_message(message_id: str, body: bytes = b"hello from the host\r\n") -> bytes:
    head = (
        f"From: {SENDER}\r\nTo: {ADMIN}\r\nSubject: storage {message_id}\r\n"
        f"Message-ID: <{message_id}>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    return head.encode() + body


def big_body(size: int) -> bytes:
    """Text that no filter shrinks: base64 of random bytes, 76 to a line."""
    data = base64.b64encode(os.urandom(size * 3 // 4)).decode()
    return "".join(data[i : i + 76] + "\r\n" for i in range(0, len(data), 76)).encode()


@dataclass
class Reply:
    at: float  # time.monotonic()
    step: str  # connect, mail, rcpt, data
    code: int  # 0: no reply (connection refused, reset, timed out)
    text: str
    message_id: str


@dataclass
class Mailer:
    """Sends messages one SMTP session each and records every reply."""

    vm: pimailvm.Machine
    replies: list[Reply] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)  # a 250 to the end of DATA
    attempted: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _note(self, step: str, code: int, text: bytes | str, mid: str) -> None:
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        with self.lock:
            self.replies.append(Reply(time.monotonic(), step, code, text, mid))

    def send(self, mid: str, body: bytes = b"hello from the host\r\n") -> int:
        """One message; the code of the last reply (0: none)."""
        with self.lock:
            self.attempted.append(mid)
        step = "connect"
        try:
            with smtplib.SMTP(HOST, self.vm.ports["smtp"], timeout=120) as s:
                s.ehlo("host.example.net")
                step = "mail"
                code, text = s.mail(SENDER)
                self._note(step, code, text, mid)
                if code != 250:
                    return code
                step = "rcpt"
                code, text = s.rcpt(ADMIN)
                self._note(step, code, text, mid)
                if code != 250:
                    return code
                step = "data"
                try:
                    code, text = s.data(raw_message(mid, body))
                except smtplib.SMTPResponseException as e:
                    code, text = e.smtp_code, e.smtp_error
                self._note(step, code, text, mid)
                if code == 250:
                    with self.lock:
                        self.acked.append(mid)
                return code
        except smtplib.SMTPResponseException as e:  # the greeting (421 while starting)
            self._note(step, e.smtp_code, e.smtp_error, mid)
            return e.smtp_code
        except (OSError, smtplib.SMTPException) as e:
            self._note(step, 0, repr(e), mid)
            return 0

    def since(self, t: float) -> list[Reply]:
        with self.lock:
            return [r for r in self.replies if r.at >= t]


class Load:
    """`n` threads sending small messages until stopped."""

    def __init__(self, mailer: Mailer, n: int = 3) -> None:
        self.mailer = mailer
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)
        ]

    def _run(self, n: int) -> None:
        i = 0
        while not self.stop.is_set():
            code = self.mailer.send(f"load-{n}-{i}@storage.test")
            i += 1
            if code != 250:
                self.stop.wait(1.0)  # refused or no answer: a sender retries later

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(180)


def wait_for(what: str, predicate, timeout: float, every: float = 1.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(every)


def mail_reply(vm: pimailvm.Machine) -> tuple[int, str]:
    """The reply to MAIL FROM in a new session ((0, why) without one)."""
    try:
        with smtplib.SMTP(HOST, vm.ports["smtp"], timeout=60) as s:
            s.ehlo("host.example.net")
            code, text = s.mail(SENDER)
            return code, text.decode(errors="replace")
    except smtplib.SMTPResponseException as e:
        return e.smtp_code, e.smtp_error.decode(errors="replace")
    except (OSError, smtplib.SMTPException) as e:
        return 0, repr(e)


def imap_login(vm: pimailvm.Machine) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL(HOST, vm.ports["imaps"], ssl_context=tls(), timeout=120)
    m.login(ADMIN, PASSWORD)
    return m


def inbox_ids(vm: pimailvm.Machine) -> list[str]:
    """The Message-IDs of every message in INBOX, in order."""
    m = imap_login(vm)
    try:
        typ, data = m.select("INBOX", readonly=True)
        assert typ == "OK"
        ids: list[str] = []
        if int(data[0]):
            typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            assert typ == "OK"
            for item in data:
                if isinstance(item, tuple):
                    found = re.search(rb"<([^>]+)>", item[1])
                    ids.append(found.group(1).decode() if found else "")
        return ids
    finally:
        m.logout()


def fill_with_ballast(image: Path, headroom: int) -> int:
    """Mount the (unplugged) data disk on the host and fallocate a file that
    leaves `headroom` bytes above pimail's reserve; its size."""
    with tempfile.TemporaryDirectory() as mnt:
        subprocess.run(["mount", "-o", "loop", str(image), mnt], check=True)
        try:
            st = os.statvfs(mnt)
            total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
            reserve = max(total * RESERVE_PERCENT / 100, RESERVE_MIB * MIB)
            size = int(free - reserve - headroom) // 4096 * 4096
            assert size > 0, (free, reserve)
            subprocess.run(["fallocate", "-l", str(size), f"{mnt}/ballast"], check=True)
        finally:
            subprocess.run(["umount", mnt], check=True)
    return size


@pytest.fixture(scope="module")
def vm() -> pimailvm.Machine:
    """The machine after its first boot, its data disk a USB stick."""
    shutil.rmtree(WORKDIR, ignore_errors=True)
    m = pimailvm.Machine(workdir=WORKDIR, image=IMAGE, memory_mb=512, data_bus="usb")
    setup = pimailvm.setup_toml(DOMAIN, ADMIN, pimailvm.password_hash(PASSWORD))
    m.prepare({"pimail.toml": setup})
    m.start()
    try:
        m.wait_banner(timeout=900)
        yield m
    finally:
        m.kill()


def test_pull_fill_and_replug_the_data_disk(vm: pimailvm.Machine, figures: dict) -> None:
    mailer = Mailer(vm)
    with Load(mailer):
        wait_for("mail accepted before the pull", lambda: len(mailer.acked) >= 6, 600)

        # 1. The disk is pulled out under load.
        pulled = time.monotonic()
        vm.unplug_data_disk()
        acked_before = set(mailer.acked)

        def refused() -> bool:
            return any(r.code == 452 for r in mailer.since(pulled))

        wait_for("a 452 after the pull", refused, 300)
        gone = [r for r in mailer.since(pulled) if r.code == 452]
        assert "4.3.1" in gone[0].text, gone[0]
        # pimail stays up while the disk is gone, and refuses at MAIL.
        wait_for("452 4.3.1 at MAIL", lambda: mail_reply(vm)[0] == 452, 120)
        code, text = mail_reply(vm)
        assert code == 452 and "4.3.1" in text, (code, text)

        # 2. Filled while out, then put back: mounted again and served again.
        ballast = fill_with_ballast(vm.data, HEADROOM)
        figures["storage_ballast_mib"] = ballast // MIB
        plugged = time.monotonic()
        vm.plug_data_disk()
        wait_for("mail accepted after the replug", lambda: mail_reply(vm)[0] == 250, 900, 3)
        back = time.monotonic()
        wait_for(
            "the load acknowledged again",
            lambda: any(r.step == "data" and r.code == 250 for r in mailer.since(back)),
            300,
        )
    # Every reply after the pull: a 4xx, or a 250 (on disk: checked at the end).
    after = mailer.since(pulled)
    bad = [r for r in after if r.code and not (200 <= r.code < 300 or 400 <= r.code < 500)]
    assert not bad, bad
    figures["storage_replies_after_pull"] = len(after)
    figures["storage_452_while_gone"] = sum(
        1 for r in after if r.code == 452 and r.at < plugged
    )  # fmt: skip
    acked_while_gone = [
        r.message_id for r in after if r.step == "data" and r.code == 250 and r.at < plugged
    ]

    # 3. Full: big messages until 452 (at MAIL, or at the end of DATA for the
    # room the message took while in flight); another is refused too; the user
    # makes room over IMAP (EXPUNGE works on a disk that is only full) and a
    # big message is accepted again.
    big: list[str] = []
    refusal: Reply | None = None
    for i in range(12):  # HEADROOM / BIG, and a few lost replies
        mid = f"big-{i}@storage.test"
        code = mailer.send(mid, big_body(BIG))
        if code == 250:
            big.append(mid)
        elif code == 452:
            refusal = mailer.since(0)[-1]
            break
    assert refusal is not None and "4.3.1" in refusal.text, mailer.since(0)[-3:]
    assert big, "the headroom took no big message"
    assert mailer.send("big-again@storage.test", big_body(BIG)) == 452
    assert "4.3.1" in mailer.since(0)[-1].text
    m = imap_login(vm)
    try:
        typ, _ = m.select("INBOX")
        assert typ == "OK"
        typ, data = m.search(None, "SUBJECT", '"storage big-"')
        # (A big message whose reply was lost may be there too: deleted alike.)
        assert typ == "OK" and len(data[0].split()) >= len(big), data
        typ, _ = m.store(b",".join(data[0].split()).decode(), "+FLAGS.SILENT", r"(\Deleted)")
        assert typ == "OK"
        typ, _ = m.expunge()
        assert typ == "OK"
    finally:
        m.logout()
    room = iter(range(100))
    wait_for(
        "a big message accepted after EXPUNGE made room",
        lambda: mailer.send(f"room-{next(room)}@storage.test", big_body(BIG)) == 250,
        180,
        3,
    )
    assert mailer.send("last@storage.test") == 250

    # 4. Every acknowledged message is there exactly once; nothing unknown.
    ids = inbox_ids(vm)
    counts = collections.Counter(ids)
    dupes = sorted(i for i, n in counts.items() if n > 1)
    assert not dupes, f"duplicated: {dupes}"
    deleted = {mid for mid in mailer.attempted if mid.startswith("big-")}
    expected = set(mailer.acked) - deleted
    missing = sorted(expected - set(ids))
    assert not missing, f"acknowledged with 250 but not in INBOX: {missing}"
    unexpected = set(ids) - set(mailer.attempted)
    assert not unexpected, unexpected
    assert not deleted & set(ids)
    assert acked_before <= set(ids)
    assert set(acked_while_gone) <= set(ids)
    figures["storage_acked_messages"] = len(mailer.acked)
    figures["storage_big_messages_before_full"] = len(big)
