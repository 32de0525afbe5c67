"""The staging tree's rules, without a server: a file renamed between the
listing and the link is found again, one expunged is left out, databases are
copied consistently, the index goes in slim; and the schedule's arithmetic."""

from __future__ import annotations

import datetime
import sqlite3
from pathlib import Path

from pimail import db
from pimail.backup import schedule, stage
from pimail.backup.job import Status


def _maildir(base: Path) -> Path:
    inbox = base / "mail" / "example.org" / "alice"
    for sub in ("cur", "new", "tmp"):
        (inbox / sub).mkdir(parents=True)
    return inbox


def test_rename_between_listing_and_link(tmp_path: Path) -> None:
    data = tmp_path / "data"
    inbox = _maildir(data)
    old = inbox / "new" / "1.M1P1Q1.host,S=5,U=1"
    old.write_bytes(b"hello")
    moved = inbox / "cur" / "1.M1P1Q1.host,S=5,U=1:2,S"
    old.rename(moved)  # the client read it: new/ -> cur/ with \Seen
    (inbox / "cur" / "2.M2P1Q1.host,S=3,U=2:2,").write_bytes(b"bye")
    gone = inbox / "cur" / "3.M3P1Q1.host,S=3,U=3:2,T"  # expunged before the link
    report = stage.StageReport()
    target = tmp_path / "stage" / "new" / old.name
    stage._link_message(old, target, report)
    assert (tmp_path / "stage" / "cur" / moved.name).read_bytes() == b"hello"
    assert report.renamed_meanwhile == 1 and report.linked == 1
    stage._link_message(gone, tmp_path / "stage" / "cur" / gone.name, report)
    assert report.vanished == 1


def test_build_copies_databases_and_slims_the_index(tmp_path: Path) -> None:
    data = tmp_path / "data"
    inbox = _maildir(data)
    (inbox / "tmp" / "half-written").write_bytes(b"x")
    (inbox / "cur" / "1.M1P1Q1.host,S=5,U=1:2,S").write_bytes(b"hello")
    main = db.open_main(data / "pimail.db")
    main.execute("INSERT INTO settings (key, value) VALUES ('hostname', '\"mx.test\"')")
    index = db.open_index(data / "index.db")
    index.execute("INSERT INTO message_text (headers, body) VALUES ('h', 'a body')")
    index.execute(
        "INSERT INTO mailboxes (account_id, name, uidvalidity, uidnext, highestmodseq)"
        " VALUES (1, 'INBOX', 1234, 8, 99)"
    )
    (data / "pimail.lock").write_text("1\n")
    (data / "spool").mkdir()
    (data / "spool" / "x").write_bytes(b"not acknowledged")
    # The appliance's other services keep state on /data too: not pimail's to back up.
    for other in ("clamav/main.cvd", "unbound/root.key", "timesync/clock", "network/wlan0.conf"):
        (data / other).parent.mkdir(parents=True)
        (data / other).write_bytes(b"another service's")
    (data / "selftest.txt").write_text("report\n")
    index_version = tuple(index.execute("PRAGMA user_version").fetchone())
    staged, report = stage.build(data, "mx.test")
    main.close()
    index.close()
    assert report.databases == 2
    copy = sqlite3.connect(staged / "pimail.db")
    assert copy.execute("SELECT value FROM settings").fetchall() == [('"mx.test"',)]
    slim = sqlite3.connect(staged / "index.db")
    assert slim.execute("SELECT count(*) FROM message_text").fetchone() == (0,)
    assert slim.execute("SELECT uidvalidity, uidnext, highestmodseq FROM mailboxes").fetchall() == [
        (1234, 8, 99)
    ]
    assert slim.execute("PRAGMA user_version").fetchone() == index_version
    copy.close()
    slim.close()
    names = {p.relative_to(staged).as_posix() for p in staged.rglob("*")}
    assert "mail/example.org/alice/tmp" in names  # the folder, empty
    assert "mail/example.org/alice/tmp/half-written" not in names
    assert not {"pimail.lock", "spool", "backup", "pimail.db-wal"} & names
    assert not {"clamav", "unbound", "timesync", "network", "selftest.txt"} & names
    assert stage.MANIFEST in names


def test_schedule() -> None:
    at = datetime.datetime(2026, 12, 7, 2, 30)
    assert schedule.seconds_until(3, at) == 1800
    assert schedule.seconds_until(2, at) == 23.5 * 3600
    mails = [n for n in range(1, 20) if schedule.wants_mail(Status(failures_in_a_row=n))]
    assert mails == [2, 9, 16]
    assert not schedule.wants_mail(Status(ok=True, failures_in_a_row=2))
