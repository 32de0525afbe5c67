"""The staging tree: a consistent picture of the data directory, for restic.

restic reads files one by one while pimail keeps working, so it is not given
the data directory itself but a tree built in <data>/backup/stage:

- every SQLite database (pimail.db, index.db, queue/queue.db, bayes.db, ...)
  is copied with SQLite's online backup API (sqlite3.Connection.backup), which
  gives a consistent copy of a database in use; a live .db file (and its -wal)
  is never read byte for byte;
- the databases come first, the files after, so that what the files add is
  newer than the databases: at the next start the store reconciles the index
  with the Maildirs (messages that arrived meanwhile are indexed with the UID
  in their name, flags renamed meanwhile win, with a new MODSEQ), and the queue
  drops records whose file is gone (sent meanwhile);
- Maildir and queue message files are hard links: their contents never change,
  a link costs no space, and once made it holds the file whatever pimail does
  to the name (a flag change renames it, a move to cur/ renames it). A file
  renamed between listing its folder and linking it is looked up again by the
  unique part of its name (before ":2,"), so a rename during the backup loses
  nothing; a file gone for good was expunged;
- index.db goes in without its text index and MIME cache (derived from the
  messages, as big as they are, rebuilt after a restore): a new database of
  the same schema filled from the live one in one read transaction;
- other small files (certificates and keys, the ACME account, Maildir state
  and keyword files, the wizard's marker) are copied.

Left out: the lock, the SMTP spool (nothing in it was acknowledged), SQLite's
-wal/-shm/-journal files, <data>/backup itself (password, SSH key, restic's
cache), and the spam filter's starter model (rebuilt from its corpus).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__

log = logging.getLogger(__name__)

MANIFEST = "pimail-backup.json"
FORMAT = 1
SQLITE_MAGIC = b"SQLite format 3\x00"
# Not backed up: the lock, the spool (nothing acknowledged), the backup's own
# files, the shipped starter model, and the data disk's marker (store/health.py:
# it names this disk, not its data; a restored box keeps its own, so a server
# that restores through the wizard does not see "another disk" until it restarts).
# On the appliance, /data also holds other services' state, owned by them (a restore
# running as pimail cannot move their directories) and remade on any box: ClamAV's
# signatures, unbound's trust anchor, timesyncd's clock, the network (Wi-Fi) settings
# of this card, the self-test's reports; and this card's system-update state.
SKIP_TOP = {
    "pimail.lock",
    "spool",
    "backup",
    "starter-bayes.db",
    ".pimail-data",
    ".pimail-data-return",
    "clamav",
    "unbound",
    "timesync",
    "network",
    "selftest.txt",
    "selftest-journal.txt",
    "update",  # this box's update state: its slots' snapshots and markers (update/)
    "rauc",  # RAUC's status of this card's slots
}
SKIP_SUFFIXES = ("-wal", "-shm", "-journal", ".tmp")
LINKED_TOP = {"mail", "queue"}  # their message files are immutable: hard links
RETRIES = 5
INDEX = "index.db"


@dataclass
class StageReport:
    databases: int = 0
    linked: int = 0
    copied: int = 0
    renamed_meanwhile: int = 0
    vanished: int = 0
    octets: int = 0


def stage_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "backup" / "stage"


def build(data_dir: Path, hostname: str) -> tuple[Path, StageReport]:
    """Build the staging tree afresh; return its path and what went in."""
    data_dir = Path(data_dir)
    stage = stage_dir(data_dir)
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    report = StageReport()
    databases, files, folders = _walk(data_dir)
    for path in folders:  # every folder, empty ones too (a Maildir needs cur/ new/ tmp/)
        target = stage / path.relative_to(data_dir)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copymode(path, target)
    for path in databases:  # first: see the module's docstring
        if path == data_dir / INDEX:
            _copy_index(path, stage / INDEX, report)
        else:
            _copy_database(path, stage / path.relative_to(data_dir), report)
    for path in files:
        relative = path.relative_to(data_dir)
        target = stage / relative
        if relative.parts[0] in LINKED_TOP:
            _link_message(path, target, report)
        else:
            _copy_file(path, target, report)
    manifest = {
        "format": FORMAT,
        "pimail": __version__,
        "created": int(time.time()),
        "hostname": hostname,
    }
    (stage / MANIFEST).write_text(json.dumps(manifest) + "\n")
    return stage, report


def remove(data_dir: Path) -> None:
    shutil.rmtree(stage_dir(data_dir), ignore_errors=True)


def _walk(data_dir: Path) -> tuple[list[Path], list[Path], list[Path]]:
    databases: list[Path] = []
    files: list[Path] = []
    folders: list[Path] = []
    for root, dirs, names in os.walk(data_dir):
        here = Path(root)
        if here == data_dir:
            dirs[:] = [d for d in dirs if d not in SKIP_TOP]
            names = [n for n in names if n not in SKIP_TOP]
        else:
            folders.append(here)
            if here.name == "tmp" and here.relative_to(data_dir).parts[0] == "mail":
                continue  # Maildir tmp/: kept empty, nothing in it was delivered
        for name in names:
            if name.endswith(SKIP_SUFFIXES):
                continue
            path = here / name
            (databases if _is_sqlite(path) else files).append(path)
        dirs.sort()
    return databases, files, folders


def _is_sqlite(path: Path) -> bool:
    if not path.name.endswith(".db") or path.is_symlink():
        return False
    try:
        with open(path, "rb") as f:
            return f.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def _copy_database(source: Path, target: Path, report: StageReport) -> None:
    """SQLite's online backup: a consistent copy while writers go on."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target)
    try:
        # pages=0: one step, under one read transaction: a consistent copy.
        src.backup(dst, pages=0)
        # A copy that is one file: no -wal beside it for restic to miss or take.
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        dst.close()
        src.close()
    report.databases += 1
    report.octets += target.stat().st_size


def _copy_index(source: Path, target: Path, report: StageReport) -> None:
    """The index's state (mailboxes, UIDs, flags, MODSEQ, expunged UIDs,
    subscriptions), not what it learnt from the messages: the text index and
    the MIME cache are as big as the mail, change with every delivery, and are
    rebuilt after a restore (every message analysed again in the background,
    as after the index's migration 5). A new database with the same schema
    (db.open_index), filled from the live one in one read transaction."""
    from .. import db

    con = db.open_index(target)
    try:
        con.execute("ATTACH DATABASE ? AS live", (f"file:{source}?mode=ro",))
        con.execute("BEGIN")
        tables = [
            name
            for (name,) in con.execute(
                "SELECT name FROM live.sqlite_schema WHERE type = 'table'"
                " AND name NOT LIKE 'sqlite%' AND name NOT LIKE 'message_text%'"
                " AND name != 'message_cache'"
            )
        ]
        for name in tables:
            con.execute(f'INSERT INTO main."{name}" SELECT * FROM live."{name}"')
        con.execute("UPDATE main.messages SET analysed = 0")
        con.execute("COMMIT")
        con.execute("DETACH DATABASE live")
        con.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.Error as e:  # an index this pimail does not know: copied whole
        log.warning("backup copies the whole index error=%s", e)
        con.close()
        target.unlink()
        _copy_database(source, target, report)
        return
    finally:
        con.close()
    report.databases += 1
    report.octets += target.stat().st_size


def _copy_file(source: Path, target: Path, report: StageReport) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copy2(source, target, follow_symlinks=False)
    except FileNotFoundError:
        report.vanished += 1  # replaced or removed meanwhile: a temporary file
        return
    report.copied += 1
    if not target.is_symlink():
        report.octets += target.stat().st_size


def _link_message(source: Path, target: Path, report: StageReport) -> None:
    """Hard-link a message file; if it was renamed meanwhile, find its new name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for _attempt in range(RETRIES):
        try:
            _link_or_copy(source, target)
        except FileNotFoundError:
            moved = _renamed(source)
            if moved is None:
                report.vanished += 1  # expunged (or sent, for the queue)
                return
            report.renamed_meanwhile += 1
            source = moved
            target = target.parent.parent / moved.parent.name / moved.name
            target.parent.mkdir(parents=True, exist_ok=True)
            continue
        report.linked += 1
        report.octets += source.stat().st_size if source.exists() else 0
        return
    report.vanished += 1
    log.warning("backup gave up on a file renamed again and again path=%s", source)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(source, target, follow_symlinks=False)


def _renamed(source: Path) -> Path | None:
    """The Maildir file with the same unique part in the folder's cur/ or new/."""
    folder = source.parent.parent
    if source.parent.name not in ("cur", "new"):
        return None
    unique = source.name.partition(":2,")[0]
    for sub in ("cur", "new"):
        try:
            names = os.listdir(folder / sub)
        except OSError:
            continue
        for name in names:
            if name.partition(":2,")[0] == unique:
                return folder / sub / name
    return None
