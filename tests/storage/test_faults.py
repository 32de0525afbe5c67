"""Storage faults never cost acknowledged mail (store/health.py).

A real server whose data directory is a small ext4 filesystem on a loop
device, mounted for the test (we run as root). The disk then fills up, turns
read-only, or goes away (`umount -l`, an unplugged disk), idle and under SMTP
load. Read-only is what ext4's errors=remount-ro does after an I/O error,
made here with the `abort` mount option (ext4's own debugging switch for it):
a plain `mount -o remount,ro` is refused (EBUSY) while pimail has files open
for writing, so an admin cannot do it to a running server; and a filesystem
that ext4 has turned read-only for an error comes back only through umount,
fsck and mount, that is with pimail restarted (pimail stays up meanwhile,
refusing with 4xx). Asserted:
every message that got 250 is in the Maildir exactly once once the disk is
back, every refused one got a 4xx (and is not there), IMAP and POP3 refuse
changes with NO / -ERR and keep the connection, and the server resumes by
itself within a bounded time. Every mount and loop device is removed in a
`finally`, whatever fails.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import poplib
import re
import smtplib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PASSWORD, PimailServer

MIB = 1024 * 1024
DISK_MIB = 64
RESERVE_MIB = 4
ALICE = "alice@example.org"
# The server looks at the disk every CHECK seconds; recovery is awaited for
# at most RECOVERY seconds (generous: 2 shared cores).
CHECK = 0.2
RECOVERY = 30.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a loop device: needs root")


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout


class Disk:
    """An ext4 image on a loop device, mounted at `mount_point`."""

    def __init__(self, image: Path, mount_point: Path) -> None:
        self.image = image
        self.mount_point = mount_point
        self.loop = ""
        self.filler = 0

    def create(self) -> None:
        with open(self.image, "wb") as f:
            f.truncate(DISK_MIB * MIB)
        # -m 0: no blocks reserved for root, so what root sees free is what
        # the (unprivileged, on the device) server sees free.
        run("mkfs.ext4", "-q", "-F", "-m", "0", str(self.image))
        self.loop = run("losetup", "--find", "--show", str(self.image)).strip()
        self.mount_point.mkdir()
        self.mount()

    def mount(self) -> None:
        # As the appliance mounts /data (overlay/usr/local/sbin/pimail-data-mount).
        run("mount", "-t", "ext4", "-o", "errors=remount-ro", self.loop, str(self.mount_point))

    def mounted(self) -> bool:
        return os.path.ismount(self.mount_point)

    def fail(self) -> None:
        """ext4's errors=remount-ro after an error: every write fails with EROFS."""
        run("mount", "-o", "remount,abort", str(self.mount_point))

    def repair(self) -> None:
        """What the admin (or a reboot) does: unmount, fsck, mount. Only once
        nothing holds the filesystem open (the server stopped)."""
        run("umount", str(self.mount_point))
        subprocess.run(["fsck.ext4", "-f", "-y", self.loop], check=False, capture_output=True,
                       timeout=120)  # fmt: skip
        self.mount()

    def unplug(self) -> None:
        """The disk goes away: detached at once (lazily: the server's open
        files keep the filesystem alive, as a dead USB disk's mount does)."""
        run("umount", "-l", str(self.mount_point))

    def plug(self) -> None:
        """Back at the same place: the same device (the same filesystem)."""
        self.mount()

    def fill(self, leave: int) -> None:
        """Fill the disk until `leave` octets (or less) are free."""
        self.filler += 1
        path = self.mount_point / f"filler-{self.filler}"
        st = os.statvfs(self.mount_point)
        size = st.f_bavail * st.f_frsize - leave
        if size <= 0:
            return
        with open(path, "wb") as f:
            block = b"\0" * MIB
            try:
                while size > 0:
                    size -= f.write(block[: min(size, MIB)])
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                pass  # full already

    def fill_completely(self) -> None:
        self.fill(0)
        path = self.mount_point / "filler-last"
        with contextlib.suppress(OSError), open(path, "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
                os.fsync(f.fileno())

    def unfill(self) -> None:
        for path in self.mount_point.glob("filler-*"):
            path.unlink()

    def teardown(self) -> None:
        while self.mounted():
            subprocess.run(["umount", "-l", str(self.mount_point)], check=False, timeout=60)
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], check=False, timeout=60)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    d = Disk(tmp_path / "data.img", tmp_path / "data")
    try:
        d.create()
        yield d
    finally:
        d.teardown()


@pytest.fixture
def server(disk: Disk, make_server: object) -> Iterator[PimailServer]:
    s: PimailServer = make_server(  # type: ignore[operator]
        sections={
            "storage": {"reserve_percent": 0.0, "reserve_mib": float(RESERVE_MIB),
                        "check_interval": CHECK},
            "pop3": {"allow_plaintext_auth": True},
        },
    )  # fmt: skip
    s.cli("domain", "add", "example.org")
    s.add_user(ALICE)
    s.start()
    try:
        yield s
    finally:
        # The disk back first, so the server can stop cleanly.
        if not disk.mounted():
            disk.plug()
        s.stop()


# -- helpers --------------------------------------------------------------------------


def message(subject: str) -> bytes:
    return (
        f"From: ann@remote.test\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\r\n\r\nBody of {subject}.\r\n"
    ).encode()


def send(server: PimailServer, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        s.sendmail("ann@remote.test", [ALICE], message(subject))


def subjects(server: PimailServer) -> list[str]:
    """Subjects of every message file in alice's Maildir (all folders)."""
    found = []
    for path in server.maildir(ALICE).rglob("*"):
        if path.parent.name in ("new", "cur") and path.is_file():
            head = path.read_bytes().split(b"\r\n\r\n", 1)[0].decode()
            m = re.search(r"^Subject: (.*)$", head, re.M)
            if m:
                found.append(m.group(1).strip())
    return found


def mail_refused(server: PimailServer) -> smtplib.SMTPResponseException:
    with (
        smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s,
        pytest.raises(smtplib.SMTPResponseException) as caught,
    ):
        s.sendmail("ann@remote.test", [ALICE], message("refused"))
    return caught.value


def wait_until_refused(server: PimailServer) -> None:
    deadline = time.monotonic() + RECOVERY
    while True:
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
            s.ehlo()
            code, reply = s.mail("ann@remote.test")
            if code == 452:
                assert reply.startswith(b"4.3.1 "), reply
                return
            s.rset()
        assert time.monotonic() < deadline, "the server never noticed the fault"
        time.sleep(CHECK / 2)


def wait_until_accepting(server: PimailServer) -> float:
    """Seconds until MAIL is accepted again (the server recovers by itself)."""
    started = time.monotonic()
    while True:
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
            s.ehlo()
            code, _ = s.mail("ann@remote.test")
            if code == 250:
                return time.monotonic() - started
        assert time.monotonic() - started < RECOVERY, "the server did not recover"
        time.sleep(CHECK / 2)


def imap(server: PimailServer) -> imaplib.IMAP4:
    m = imaplib.IMAP4_SSL("localhost", server.imaps_port, ssl_context=server.client_tls())
    m.login(ALICE, PASSWORD)
    assert m.select("INBOX")[0] == "OK"
    return m


def tagged(m: imaplib.IMAP4, command: str) -> bytes:
    """Send one raw command and return its tagged completion line."""
    tag = m._new_tag()  # type: ignore[attr-defined]
    m.send(tag + b" " + command.encode() + b"\r\n")
    while True:
        line = m.readline()
        if line.startswith(tag + b" "):
            return line[len(tag) + 1 :].rstrip()


def append(m: imaplib.IMAP4, subject: str) -> bytes:
    """APPEND with a synchronising literal; the tagged reply (a NO may come
    in place of the "+": the server refuses before the upload)."""
    data = message(subject)
    tag = m._new_tag()  # type: ignore[attr-defined]
    m.send(tag + b" APPEND INBOX {" + str(len(data)).encode() + b"}\r\n")
    line = m.readline()
    if line.startswith(b"+"):
        m.send(data + b"\r\n")
        line = m.readline()
    while not line.startswith(tag + b" "):
        line = m.readline()
    return line[len(tag) + 1 :].rstrip()


def pop(server: PimailServer) -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", server.pop3_port, timeout=30)
    p.user(ALICE)
    p.pass_(PASSWORD)
    return p


# -- the faults, one at a time ----------------------------------------------------------


def test_full_disk_refuses_new_mail_and_lets_the_user_make_room(
    disk: Disk, server: PimailServer
) -> None:
    for i in range(3):
        send(server, f"before {i}")
    m = imap(server)
    pending = smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30)
    pending.ehlo()
    assert pending.mail("ann@remote.test")[0] == 250  # a transaction begun before

    disk.fill(leave=RESERVE_MIB * MIB // 2)
    wait_until_refused(server)
    # RFC 5321 4.2.5, RFC 3463 X.3.1: at MAIL, and at RCPT of a transaction begun before.
    code, reply = pending.rcpt(ALICE)
    assert (code, reply[:6]) == (452, b"4.3.1 ")
    pending.quit()
    refused = mail_refused(server)
    assert refused.smtp_code == 452
    # IMAP: APPEND and COPY refused with [LIMIT] (RFC 9051 7.1), the session goes on.
    assert append(m, "appended").startswith(b"NO [LIMIT]")
    assert tagged(m, "COPY 1 Archive").startswith(b"NO [LIMIT]")
    # What frees room still works on a disk that is only full: flags, MOVE, EXPUNGE.
    assert tagged(m, "STORE 1 +FLAGS (\\Deleted)").startswith(b"OK")
    assert tagged(m, "MOVE 2 Trash").startswith(b"OK")
    assert tagged(m, "EXPUNGE").startswith(b"OK")
    assert tagged(m, "NOOP").startswith(b"OK")
    # POP3: deleting is making room too.
    p = pop(server)
    assert p.stat()[0] == 1
    p.dele(1)
    assert p.quit().startswith(b"+OK")

    disk.unfill()
    wait_until_accepting(server)
    send(server, "after")
    assert append(m, "appended after").startswith(b"OK [APPENDUID")
    m.logout()
    assert sorted(subjects(server)) == ["after", "appended after", "before 1"]


def test_read_only_disk_refuses_every_change_and_keeps_the_messages(
    disk: Disk, server: PimailServer
) -> None:
    for i in range(3):
        send(server, f"before {i}")
    m = imap(server)
    p = pop(server)
    assert p.stat()[0] == 3
    p.dele(1)

    disk.fail()
    # Nothing shows it (no ST_RDONLY) until a write fails: this message's.
    # Never 250 for it: 452 at the end of DATA.
    with pytest.raises(smtplib.SMTPDataError) as caught:
        send(server, "during")
    assert (caught.value.smtp_code, caught.value.smtp_error[:6]) == (452, b"4.3.1 ")
    wait_until_refused(server)
    time.sleep(3 * CHECK)  # the server's own looks (a write that fails) keep it refused
    assert mail_refused(server).smtp_code == 452
    # A disk that is gone or read-only is a subsystem down: [UNAVAILABLE]
    # (RFC 9051 7.1), never [SERVERBUG]; the connection stays.
    for command in ("STORE 1 +FLAGS (\\Seen)", "COPY 1 Archive", "MOVE 1 Trash",
                    "CREATE Later", "RENAME Archive Old"):  # fmt: skip
        reply = tagged(m, command)
        assert reply.startswith(b"NO [UNAVAILABLE]"), (command, reply)
    assert append(m, "appended").startswith(b"NO [UNAVAILABLE]")
    assert tagged(m, "NOOP").startswith(b"OK")
    assert tagged(m, "UID FETCH 1:* (FLAGS)").startswith(b"OK")  # reading works
    # POP3 QUIT cannot commit the DELE: -ERR (RFC 1939 6), the message stays.
    with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/TEMP\]"):
        p.quit()
    p.close()
    m.logout()

    # ext4 wants an fsck now: the admin (or a reboot) stops pimail, repairs, starts it.
    server.stop()
    disk.repair()
    server.start()
    assert sorted(subjects(server)) == ["before 0", "before 1", "before 2"]
    p = pop(server)
    assert p.stat()[0] == 3
    p.dele(1)
    assert p.quit().startswith(b"+OK")
    send(server, "after")
    assert sorted(subjects(server)) == ["after", "before 1", "before 2"]


@pytest.mark.parametrize("fault", ["read-only", "unplugged"])
def test_disk_failing_during_a_large_message_gets_452_at_the_end_of_data(
    disk: Disk, server: PimailServer, fault: str
) -> None:
    """The message is past memory (spooled to the data disk) when the disk
    fails: the rest is read, the answer is 452 and the session stays in step."""
    lines = b"".join(b"%06d " % i + b"x" * 70 + b"\r\n" for i in range(3000))  # ~230 KB
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        s.ehlo()
        assert s.mail("ann@remote.test")[0] == 250
        assert s.rcpt(ALICE)[0] == 250
        assert s.docmd("DATA")[0] == 354
        s.send(message("big").rstrip(b"\r\n") + b"\r\n" + lines)
        time.sleep(0.5)  # read and spooled meanwhile (not asserted: only the answer is)
        disk.fail() if fault == "read-only" else disk.unplug()
        s.send(lines + b".\r\n")
        code, reply = s.getreply()
        assert (code, reply[:6]) == (452, b"4.3.1 "), reply
        assert s.noop()[0] == 250  # nothing of the message was taken for commands
    if fault == "read-only":
        server.stop()
        disk.repair()
        server.start()
    else:
        disk.plug()
        wait_until_accepting(server)
    assert "big" not in subjects(server)
    send(server, "after")
    assert subjects(server) == ["after"]


def test_unplugged_disk_refuses_mail_and_resumes_when_plugged_back(
    disk: Disk, server: PimailServer
) -> None:
    send(server, "before")
    m = imap(server)
    disk.unplug()
    wait_until_refused(server)
    assert append(m, "appended").startswith(b"NO [UNAVAILABLE]")
    # Nothing was written to the empty mount point left behind.
    assert not (disk.mount_point / "mail").exists()
    disk.plug()
    seconds = wait_until_accepting(server)
    assert seconds < RECOVERY
    send(server, "after")
    assert append(m, "appended after").startswith(b"OK [APPENDUID")
    m.logout()
    assert sorted(subjects(server)) == ["after", "appended after", "before"]
    log = server.log.read_text()
    # Logged once per change of state, not per refused message.
    assert log.count("storage unavailable") == 1, log[-3000:]
    assert log.count("storage available again") == 1


def test_admin_page_says_why(disk: Disk, server: PimailServer) -> None:
    from web.browser import Browser

    admin = "admin@example.org"
    server.cli("user", "add", admin, "--admin", input=PASSWORD + "\n")
    b = Browser(f"https://127.0.0.1:{server.https_port}", server.client_tls())
    assert b.login(admin, PASSWORD).status == 200
    assert "data disk" not in b.get("/admin").text
    disk.unplug()
    wait_until_refused(server)
    for path in ("/admin", "/admin/storage"):
        page = b.get(path)
        assert page.status == 200
        assert "data disk missing (not mounted) since" in page.text, path
    disk.plug()
    wait_until_accepting(server)
    assert "data disk" not in b.get("/admin").text


# -- under load -----------------------------------------------------------------------


class Load:
    """Threads sending numbered messages back to back, remembering each answer."""

    def __init__(self, server: PimailServer, name: str = "load", threads: int = 3) -> None:
        self.server = server
        self.name = name
        self.acknowledged: list[str] = []
        self.refused: list[tuple[str, int]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(120)

    def _run(self, worker: int) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.server.smtp_port, timeout=60) as s:
                    while not self.stop.is_set():
                        n += 1
                        subject = f"{self.name} {worker}-{n}"
                        try:
                            s.sendmail("ann@remote.test", [ALICE], message(subject))
                        except smtplib.SMTPRecipientsRefused as e:
                            code = next(iter(e.recipients.values()))[0]
                            with self._lock:
                                self.refused.append((subject, code))
                            s.rset()
                        except smtplib.SMTPResponseException as e:
                            with self._lock:
                                self.refused.append((subject, e.smtp_code))
                            s.rset()
                        else:
                            with self._lock:
                                self.acknowledged.append(subject)
            except (OSError, smtplib.SMTPException) as e:
                with self._lock:
                    self.errors.append(f"{subject}: {e!r}")

    def wait_for(self, acknowledged: int, refused: int = 0) -> None:
        deadline = time.monotonic() + RECOVERY
        while len(self.acknowledged) < acknowledged or len(self.refused) < refused:
            assert time.monotonic() < deadline, (len(self.acknowledged), len(self.refused))
            time.sleep(0.05)


def restart_after_repair(disk: Disk, server: PimailServer) -> None:
    server.stop()
    disk.repair()
    server.start()


# fault: (cause, cure, whether the cure needs the load stopped first)
FAULTS = {
    "unplugged": (Disk.unplug, lambda d, s: d.plug(), False),
    "full": (Disk.fill_completely, lambda d, s: d.unfill(), False),
    "read-only": (Disk.fail, restart_after_repair, True),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_acknowledged_message_is_there_once_after_a_fault_under_load(
    disk: Disk, server: PimailServer, fault: str
) -> None:
    cause, cure, restarts = FAULTS[fault]
    with Load(server) as load:
        load.wait_for(acknowledged=20)
        cause(disk)
        load.wait_for(acknowledged=0, refused=10)
        if not restarts:
            acknowledged_before_cure = len(load.acknowledged)
            cure(disk, server)
            load.wait_for(acknowledged=acknowledged_before_cure + 20)
    loads = [load]
    if restarts:
        cure(disk, server)
        with Load(server, "after") as after:
            after.wait_for(acknowledged=20)
        loads.append(after)
    acknowledged = [s for run in loads for s in run.acknowledged]
    refused = [r for run in loads for r in run.refused]
    errors = [e for run in loads for e in run.errors]
    assert not errors, errors[:5]  # no connection was dropped
    assert {code for _subject, code in refused} == {452}, refused[:10]
    found = subjects(server)
    for subject in acknowledged:
        assert found.count(subject) == 1, subject
    refused_subjects = {subject for subject, _code in refused}
    if fault == "read-only":
        # ext4's abort can land after the journal committed a message's rename but
        # before pimail's fsync returned: the fsync fails (EROFS), the sender is told
        # 452 and will send again, yet the message is on disk after fsck. A 4xx when
        # the outcome is unknown is SMTP's rule (RFC 5321 6.1: a duplicate, never a
        # loss); such a message is there at most once.
        for subject in refused_subjects:
            assert found.count(subject) <= 1, subject
    else:
        assert not refused_subjects & set(found), sorted(refused_subjects & set(found))[:5]
    # The index agrees with the Maildir (a fresh look over IMAP).
    m = imap(server)
    typ, data = m.search(None, "ALL")
    assert typ == "OK"
    also_stored = sum(1 for subject in found if subject in refused_subjects)  # read-only only
    assert len(data[0].split()) == len(found) == len(acknowledged) + also_stored
    m.logout()


# -- the outbound queue ---------------------------------------------------------------


def test_outbound_queue_pauses_while_the_disk_is_gone_and_resumes(
    tmp_path: Path, make_server: object
) -> None:
    """No attempt while the disk is unavailable (its result could not be
    recorded), no bounce, no delay notice; delivered once it is back."""
    from outbound.queue_env import Outbound, wait_for

    disk = Disk(tmp_path / "sender.img", tmp_path / "sender")
    env = Outbound(tmp_path, make_server)
    try:
        disk.create()
        env.mx("remote.test", (10, "mx1.remote.test", "127.0.0.2"))
        reply: dict[str, str | None] = {"data": "421 4.3.2 busy"}
        sink = env.sink("127.0.0.2", data_reply=lambda n: reply["data"])
        sections = {
            "dns": {"nameservers": [env.zone.address], "timeout": 3.0},
            "outbound": {"port": env.port, "retry_min": 0.3, "retry_max": 0.3,
                         "poll_interval": 0.2, "ca_file": str(env.ca.ca_file),
                         "mta_sts_port": env.mta_sts_port, "delay_notice": 3600.0},
            "storage": {"reserve_percent": 0.0, "reserve_mib": float(RESERVE_MIB),
                        "check_interval": CHECK},
        }  # fmt: skip
        sender: PimailServer = make_server("sender", sections)  # type: ignore[operator]
        sender.cli("domain", "add", "example.org")
        sender.add_user(ALICE)
        sender.start()
        env.sender = sender
        outgoing = f"From: {ALICE}\r\nTo: carol@remote.test\r\nSubject: out\r\n\r\nHi.\r\n"
        env.submit(["carol@remote.test"], outgoing.encode(), sender=ALICE)
        wait_for(lambda: sink.state.attempts >= 2, what="retries")

        disk.unplug()
        wait_until_refused(sender)
        time.sleep(0.5)  # an attempt in flight when the disk went ends
        attempts = sink.state.attempts
        time.sleep(10 * 0.3)  # ten retry intervals
        assert sink.state.attempts == attempts  # paused

        reply["data"] = None  # the remote accepts now
        disk.plug()
        wait_for(lambda: len(sink.state.messages) == 1, timeout=RECOVERY, what="delivery")
        wait_for(lambda: env.queue_rows() == 0, what="an empty queue")
        assert sender.messages(ALICE) == []  # no bounce, no delay notice
        log = sender.log.read_text()
        assert "bounced" not in log
    finally:
        env.close()
        if not disk.mounted() and disk.loop:
            disk.plug()
        if env.sender is not None:
            env.sender.stop()
        disk.teardown()
