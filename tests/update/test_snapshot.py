"""Data across versions: `pimail update prepare` (before pimail starts) takes
a snapshot on a new slot's first start, and an older slot that meets a newer
schema puts it back: the box starts, with its settings and all its mail
(the mail that came during the trial too: the index is rebuilt from Maildir)."""

from __future__ import annotations

import imaplib
import smtplib
import sqlite3
from pathlib import Path

from conftest import PASSWORD, PimailServer
from pimail import db
from pimail.queue.store import QUEUE_MIGRATIONS

OLD = "0.1.0+20261208010000"


def prepare(server: PimailServer, slot: str, tmp: Path, check: bool = True):
    cmdline = tmp / f"cmdline-{slot}"
    cmdline.write_text(f"console=ttyAMA0 root=PARTUUID=706d6169-02 rauc.slot={slot}\n")
    release = tmp / "release"
    release.write_text(f"version={OLD}\ncompatible=pimail-arm64\n")
    return server.cli(
        "update", "prepare", f"--cmdline={cmdline}", f"--release={release}", check=check
    )


def deliver(server: PimailServer, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as smtp:
        smtp.sendmail(
            "someone@sender.test",
            ["alice@example.org"],
            "From: someone@sender.test\r\nTo: alice@example.org\r\n"
            f"Subject: {subject}\r\n\r\nhi\r\n",
        )


def subjects(server: PimailServer) -> list[str]:
    imap = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=30)
    try:
        imap.starttls(server.client_tls())
        imap.login("alice@example.org", PASSWORD)
        imap.select("INBOX")
        _, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        return sorted(
            part[1].decode().strip().removeprefix("Subject: ")
            for part in data
            if isinstance(part, tuple)
        )
    finally:
        imap.logout()


def migrate_ahead(path: Path, migrations: int) -> None:
    """What a newer pimail's migration does: a table more, a higher user_version."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE from_the_future (x)")
    con.execute(f"PRAGMA user_version={migrations + 1}")
    con.commit()
    con.close()


def test_failed_trial_rolls_the_databases_back(make_server, tmp_path: Path) -> None:
    server: PimailServer = make_server()
    server.cli("domain", "add", "example.org")
    server.add_user("alice@example.org")
    server.start()
    deliver(server, "before the update")
    server.stop()
    # The update is installed into slot B, whose first boot is a trial.
    (server.data_dir / "update").mkdir()
    (server.data_dir / "update" / "pending").write_text(f"slot=B\nversion={OLD}x\n")
    done = prepare(server, "B", tmp_path)
    assert "snapshot taken" in done.stdout
    snap = server.data_dir / "update" / "snapshot"
    assert sorted(p.name for p in snap.iterdir()) == ["main.db", "meta.json", "queue.db"]
    # A second start of the same trial keeps the first snapshot.
    assert "snapshot kept" in prepare(server, "B", tmp_path).stdout

    # The trial: mail arrives, a setting changes, then the new pimail migrates.
    server.start()
    deliver(server, "during the trial")
    server.cli("domain", "add", "trial.example")
    server.stop()
    migrate_ahead(server.data_dir / "pimail.db", len(db.MAIN_MIGRATIONS))
    migrate_ahead(server.data_dir / "queue" / "queue.db", len(QUEUE_MIGRATIONS))
    migrate_ahead(server.data_dir / "index.db", len(db.INDEX_MIGRATIONS))
    # The old pimail will not open them (what a rollback without the snapshot meets).
    refused = server.cli("domain", "list", check=False)
    assert refused.returncode != 0 and "newer than this pimail" in refused.stderr

    # Back on slot A: prepare restores; pimail starts; everything is there.
    done = prepare(server, "A", tmp_path)
    assert "restored index,main,queue" in done.stdout, done.stdout
    assert server.cli("domain", "list").stdout.split() == ["example.org"]
    server.start()
    assert subjects(server) == ["before the update", "during the trial"]
    deliver(server, "after the rollback")
    assert subjects(server) == ["after the rollback", "before the update", "during the trial"]
    server.stop()
    # Nothing left to do at the next boot.
    assert "nothing to do" in prepare(server, "A", tmp_path).stdout


def test_too_new_without_a_snapshot_says_so(make_server, tmp_path: Path) -> None:
    server: PimailServer = make_server()
    server.cli("domain", "add", "example.org")
    migrate_ahead(server.data_dir / "pimail.db", len(db.MAIN_MIGRATIONS))
    done = prepare(server, "A", tmp_path, check=False)
    assert done.returncode == 1
    assert "newer schema than this pimail and there is no snapshot" in done.stderr


def test_a_snapshot_that_is_too_new_too_is_not_restored(make_server, tmp_path: Path) -> None:
    server: PimailServer = make_server()
    server.cli("domain", "add", "example.org")
    (server.data_dir / "update").mkdir()
    (server.data_dir / "update" / "pending").write_text("slot=B\n")
    migrate_ahead(server.data_dir / "pimail.db", len(db.MAIN_MIGRATIONS))
    assert "snapshot taken" in prepare(server, "B", tmp_path).stdout
    before = (server.data_dir / "pimail.db").read_bytes()
    done = prepare(server, "A", tmp_path, check=False)
    assert done.returncode == 1 and "does not fit this pimail either" in done.stderr
    assert (server.data_dir / "pimail.db").read_bytes() == before


def test_plain_boots_take_no_snapshot(make_server, tmp_path: Path) -> None:
    server: PimailServer = make_server()
    server.cli("domain", "add", "example.org")
    for slot in ("A", "B"):  # no pending update: neither is a trial
        assert "nothing to do" in prepare(server, slot, tmp_path).stdout
    assert not (server.data_dir / "update" / "snapshot").exists()
