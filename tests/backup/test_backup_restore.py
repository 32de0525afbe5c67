"""Back up a running server with restic and restore it onto a fresh one.

Mail arrives over SMTP and flags change over IMAP while the backup runs; the
restored server must show IMAP clients the same UIDVALIDITY, UIDs, flags,
MODSEQ and bodies (no re-download), accept the same passwords, sign with the
same DKIM keys, and still hold the queued message.
"""

from __future__ import annotations

import json
import smtplib
import sqlite3
import subprocess
import threading
from pathlib import Path

from conftest import PASSWORD, PimailServer, free_port
from outbound.queue_env import Sink
from testca import TestCA
from web.browser import wait_for

from .conftest import REPO_PASSWORD, USERS, deliver, login, mailbox_state, restic_env


def _fill(server: PimailServer, count: int) -> None:
    for i in range(count):
        deliver(server, USERS[i % 2], f"message {i}")
    m = login(server, USERS[0])
    try:
        m.create("Projects")
        m.select("INBOX")
        m.uid("STORE", "1:5", "+FLAGS", r"(\Seen)")
        m.uid("STORE", "3", "+FLAGS", r"(\Flagged $Important)")
        m.uid("COPY", "2:4", "Projects")
        m.uid("STORE", "6", "+FLAGS", r"(\Deleted)")
        m.expunge()
        m.select("Projects")
        m.uid("STORE", "2", "+FLAGS", r"(\Answered)")
    finally:
        m.logout()


def _queue_one(server: PimailServer) -> None:
    """Authenticated mail for a foreign domain, waiting for a relay that is down."""
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30) as s:
        s.starttls(context=server.client_tls())
        s.login(USERS[0], PASSWORD)
        s.sendmail(USERS[0], ["carol@remote.test"], b"Subject: waiting\r\n\r\nStill here?\r\n")


def _server(make_server: object, name: str, relay_port: int, ca: TestCA) -> PimailServer:
    outbound = {
        "relay_host": "127.0.0.1", "relay_port": relay_port, "relay_security": "starttls",
        "retry_min": 3600.0, "ca_file": str(ca.ca_file), "connect_timeout": 5.0,
    }  # fmt: skip
    return make_server(name, sections={"outbound": outbound})  # type: ignore[operator]


def _backup_now(server: PimailServer) -> dict:
    server.cli("backup", "now")
    return json.loads((server.data_dir / "backup" / "status.json").read_text())


def _dkim(server: PimailServer) -> list[tuple[str, str, str]]:
    con = sqlite3.connect(server.data_dir / "pimail.db")
    try:
        return sorted(con.execute("SELECT selector, private_key, state FROM dkim_keys").fetchall())
    finally:
        con.close()


def test_restore_gives_clients_the_same_mailboxes(
    make_server: object, repo: Path, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path / "ca")
    relay_port = free_port()  # nothing listens yet: the queued message waits
    old = _server(make_server, "old", relay_port, ca)
    old.cli("domain", "add", "example.org")
    for user in USERS:
        old.add_user(user)
    old.start()
    _fill(old, 40)
    (old.data_dir / "clamav").mkdir()  # the appliance's ClamAV signatures: not backed up
    (old.data_dir / "clamav" / "old.cvd").write_bytes(b"old box")
    _queue_one(old)
    old.cli("backup", "init", "--repository", str(repo), input=REPO_PASSWORD + "\n")
    assert (old.data_dir / "backup" / "password").stat().st_mode & 0o777 == 0o600
    before = mailbox_state(old, USERS[0])

    # Back up while mail arrives and flags change (each flag change renames a file).
    stop = threading.Event()
    arrived: list[str] = []

    def busy() -> None:
        m = login(old, USERS[0])
        m.select("INBOX")
        i = 0
        while not stop.is_set():
            deliver(old, USERS[0], f"during {i}")
            arrived.append(f"during {i}")
            m.uid("STORE", "1:*", "+FLAGS" if i % 2 else "-FLAGS", "(seen-during)")
            i += 1
        m.logout()

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        first = _backup_now(old)
    finally:
        stop.set()
        worker.join(60)
    assert first["ok"], first
    assert arrived, "no mail arrived while the backup ran"

    # The first snapshot, restored: nothing that was there before the backup is missing.
    mid = make_server("mid")  # type: ignore[operator]
    # A fresh box's other services' directories stay where they are (on the appliance
    # they belong to clamav and unbound: pimail could not even move them aside).
    (mid.data_dir / "clamav").mkdir(parents=True)
    (mid.data_dir / "clamav" / "mid.cvd").write_bytes(b"this box")
    mid.cli("restore", str(repo), input=REPO_PASSWORD + "\n")
    assert sorted(p.name for p in (mid.data_dir / "clamav").iterdir()) == ["mid.cvd"]
    assert not list((mid.data_dir / "backup").glob("replaced-*/clamav"))
    mid.start()
    during = mailbox_state(mid, USERS[0])
    mid.stop()
    for name, folder in before.items():
        assert during[name].uidvalidity == folder.uidvalidity
        assert set(folder.messages) <= set(during[name].messages), name
        for uid, (_flags, _modseq, body) in folder.messages.items():
            assert during[name].messages[uid][2] == body

    # Quiet now: a second, incremental backup; then a fresh box restores the latest.
    expected = {user: mailbox_state(old, user) for user in USERS}
    second = _backup_now(old)
    assert second["ok"] and second["snapshot"] != first["snapshot"]
    queue_before = old.cli("queue", "list").stdout
    dns_before = old.cli("dns", "example.org").stdout
    dkim_before = _dkim(old)
    old.stop()

    new = _server(make_server, "new", relay_port, ca)
    listed = new.cli("--data", str(new.data_dir), "restore", str(repo), input=REPO_PASSWORD + "\n")
    assert "restored snapshot latest" in listed.stdout
    new.start()
    for user in USERS:
        got = mailbox_state(new, user)
        assert got.keys() == expected[user].keys()
        for name, folder in expected[user].items():
            assert got[name].uidvalidity == folder.uidvalidity, name
            assert got[name].messages == folder.messages, name
            assert got[name].highestmodseq == folder.highestmodseq, name
    assert _dkim(new) == dkim_before
    assert new.cli("dns", "example.org").stdout == dns_before
    assert new.cli("queue", "list").stdout.split("\n")[1:] == queue_before.split("\n")[1:]
    assert "carol@remote.test" in queue_before
    login(new, USERS[1]).logout()  # the password is the same
    # The queue resumes: the relay is up now, and the message leaves.
    relay = Sink("127.0.0.1", relay_port, tls_context=ca.server_context("127.0.0.1"))
    try:
        new.cli("queue", "retry")
        [sent] = wait_for(lambda: relay.messages, timeout=60)
        assert (
            sent.rcpt_tos == ["carol@remote.test"] and b"Still here?" in sent.content and sent.tls
        )
    finally:
        relay.stop()
    # ...and new mail goes on from the same UIDs.
    deliver(new, USERS[1], "after the restore")
    m = login(new, USERS[1])
    m.select("INBOX")
    _typ, data = m.uid("SEARCH", "SUBJECT", "after")
    assert int(data[0]) == max(expected[USERS[1]]["INBOX"].messages) + 1
    m.logout()
    # The restored box backs up into the same repository; the history keeps one
    # snapshot a day (backup.keep_daily), so today's three are now the last one.
    third = _backup_now(new)
    assert third["ok"]
    snaps = subprocess.run(
        ["restic", "snapshots", "--json"],
        env=restic_env(repo, new.data_dir / "backup" / "password"),
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert [s["short_id"] for s in json.loads(snaps.stdout)] == [third["snapshot"]]
