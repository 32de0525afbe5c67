"""Backup jobs: init, back up now, list, check, forget, restore; the last result.

The last result is <data>/backup/status.json: when, whether it worked, the
snapshot, the figures restic reported, the error in words, and how many runs
in a row failed (the nightly run mails the postmaster at two).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from . import stage
from .restic import BackupError, Target, backup_dir, run

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
BACKUP_TIMEOUT = 6 * 3600.0


@dataclass
class Status:
    """What the last backup did (status.json)."""

    finished: float = 0.0
    ok: bool = False
    scheduled: bool = False
    snapshot: str = ""
    error: str = ""
    seconds: float = 0.0
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    bytes_processed: int = 0
    bytes_added: int = 0  # restic's "data added": new chunks, before compression
    seconds_stage: float = 0.0  # building the staging tree
    seconds_restic: float = 0.0  # restic backup
    seconds_forget: float = 0.0  # restic forget --prune
    failures_in_a_row: int = 0
    last_ok: float = 0.0
    warnings: list[str] = field(default_factory=list)


def read_status(data_dir: Path) -> Status | None:
    try:
        values = json.loads((backup_dir(data_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    known = Status.__dataclass_fields__
    return Status(**{k: v for k, v in values.items() if k in known})


def _write_status(data_dir: Path, status: Status) -> None:
    path = backup_dir(data_dir) / STATUS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(status), indent=1) + "\n")
    os.replace(tmp, path)


def init(settings: Settings, repository: str | None = None) -> str:
    """Create the repository (restic's format version 2: compressed)."""
    target = Target.from_settings(settings, repository)
    run(target, ["init", "--repository-version", "2"], timeout=600)
    log.info("backup repository created kind=%s", target.kind)
    return target.repository


@contextlib.contextmanager
def _one_at_a_time(data_dir: Path) -> Iterator[None]:
    """One backup per data directory at a time (the nightly run, the admin page
    and `pimail backup now` share the staging tree): <data>/backup/lock."""
    path = backup_dir(data_dir) / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise BackupError("a backup is running already") from e
        yield


def backup_now(settings: Settings, scheduled: bool = False) -> Status:
    """Stage, back up, forget what the history no longer keeps; record the result."""
    try:
        with _one_at_a_time(settings.data_dir):
            return _backup_now(settings, scheduled)
    except BackupError as e:  # another one runs: it records its own result
        return Status(finished=time.time(), scheduled=scheduled, error=str(e))


def _backup_now(settings: Settings, scheduled: bool) -> Status:
    previous = read_status(settings.data_dir) or Status()
    started = time.monotonic()
    status = Status(scheduled=scheduled, last_ok=previous.last_ok)
    try:
        _backup(settings, status)
    except (BackupError, OSError) as e:
        status.ok = False
        status.error = str(e)
        status.failures_in_a_row = previous.failures_in_a_row + 1
        log.error("backup failed error=%s failures_in_a_row=%d", e, status.failures_in_a_row)
    else:
        status.ok = True
        status.last_ok = time.time()
        log.info(
            "backup done snapshot=%s files_new=%d files_changed=%d bytes_added=%d seconds=%.1f",
            status.snapshot, status.files_new, status.files_changed, status.bytes_added,
            time.monotonic() - started,
        )  # fmt: skip
    finally:
        stage.remove(settings.data_dir)
    status.seconds = round(time.monotonic() - started, 2)
    status.finished = time.time()
    _write_status(settings.data_dir, status)
    return status


def _backup(settings: Settings, status: Status) -> None:
    target = Target.from_settings(settings)
    started = time.monotonic()
    staged, report = stage.build(settings.data_dir, settings.hostname)
    status.seconds_stage = round(time.monotonic() - started, 2)
    if report.renamed_meanwhile:
        status.warnings.append(f"{report.renamed_meanwhile} files renamed during the backup")
    # The staging tree's path is the same at every run, so restic finds the parent
    # snapshot and reads only files that changed. Hard links change a file's ctime,
    # not its contents: --ignore-ctime keeps restic from reading every message again.
    done = run(
        target,
        ["backup", "--json", "--host", settings.hostname, "--tag", "pimail",
         "--ignore-ctime", "--compression", "auto", "."],
        timeout=BACKUP_TIMEOUT, cwd=staged,
    )  # fmt: skip
    summary = next((m for m in done.json_lines() if m.get("message_type") == "summary"), None)
    if summary is None:
        raise BackupError("restic reported no summary: " + done.stderr.strip()[-300:])
    status.snapshot = str(summary.get("snapshot_id", ""))[:8]
    status.files_new = int(summary.get("files_new", 0))
    status.files_changed = int(summary.get("files_changed", 0))
    status.files_unmodified = int(summary.get("files_unmodified", 0))
    status.bytes_processed = int(summary.get("total_bytes_processed", 0))
    status.bytes_added = int(summary.get("data_added", 0))
    if done.returncode != 0:
        status.warnings.append("restic could not read some files: " + done.stderr[-300:])
    status.seconds_restic = round(time.monotonic() - started - status.seconds_stage, 2)
    forget(settings, target)
    status.seconds_forget = round(
        time.monotonic() - started - status.seconds_stage - status.seconds_restic, 2
    )


def forget(settings: Settings, target: Target | None = None) -> None:
    """Keep the configured history (restic forget --keep-daily/--keep-weekly --prune)."""
    target = target or Target.from_settings(settings)
    b = settings.backup
    run(
        target,
        ["forget", "--tag", "pimail", "--host", settings.hostname, "--group-by", "host",
         "--keep-daily", str(max(1, b.keep_daily)), "--keep-weekly", str(max(0, b.keep_weekly)),
         "--prune"],
        timeout=BACKUP_TIMEOUT,
    )  # fmt: skip


@dataclass(frozen=True)
class Snapshot:
    id: str
    time: str
    hostname: str


def snapshots(settings: Settings, repository: str | None = None) -> list[Snapshot]:
    target = Target.from_settings(settings, repository)
    done = run(target, ["snapshots", "--json"], timeout=600)
    try:
        items: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    except ValueError as e:
        raise BackupError("restic listed the snapshots in a form pimail does not know") from e
    return [
        Snapshot(str(s.get("short_id") or s.get("id", ""))[:8], str(s.get("time", ""))[:19],
                 str(s.get("hostname", "")))
        for s in items
    ]  # fmt: skip


def check(settings: Settings, read_data: bool = False) -> str:
    """restic check: the repository's structure (and with read_data, every pack)."""
    target = Target.from_settings(settings)
    args = ["check"] + (["--read-data"] if read_data else [])
    done = run(target, args, timeout=BACKUP_TIMEOUT)
    if done.returncode != 0:
        raise BackupError("the repository has errors: " + done.stderr.strip()[-300:])
    return "no errors were found"


# -- restore ---------------------------------------------------------------------------


def is_fresh(data_dir: Path) -> bool:
    """Whether a data directory holds no mail and no accounts (may be restored onto)."""
    import sqlite3

    data_dir = Path(data_dir)
    if not data_dir.exists():
        return True
    mail = data_dir / "mail"
    if mail.exists() and any(mail.iterdir()):
        return False
    db_path = data_dir / "pimail.db"
    if db_path.exists():
        try:
            con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
            try:
                row = con.execute("SELECT 1 FROM accounts LIMIT 1").fetchone()
            finally:
                con.close()
        except sqlite3.Error:
            return False
        if row is not None:
            return False
    return True


def restore(settings: Settings, repository: str, password: str, snapshot: str = "latest") -> str:
    """Restore a snapshot into a data directory with no mail and no accounts.

    restic restores into <data>/backup/restore; the backed-up tree is then moved
    into place, what was there before (a fresh box's empty databases and
    certificates) aside into <data>/backup/replaced-<time>. The password is kept
    in <data>/backup/password, so the next nightly backup goes on into the same
    repository. Run with the server stopped (`pimail restore`) or by the wizard,
    which restarts the server after it."""
    from .restic import write_password

    data_dir = Path(settings.data_dir)
    if not is_fresh(data_dir):
        raise BackupError(
            f"{data_dir} already holds mail or accounts: restore onto an empty data directory"
        )
    if snapshot != "latest" and not re.fullmatch(r"[0-9a-f]{8,64}", snapshot):
        raise BackupError(f"not a snapshot id: {snapshot!r}")
    data_dir.mkdir(parents=True, exist_ok=True)
    write_password(data_dir, password)
    target = Target.from_settings(settings, repository)
    work = backup_dir(data_dir) / "restore"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        run(target, ["restore", snapshot, "--target", str(work)], timeout=BACKUP_TIMEOUT)
        manifests = list(work.rglob(stage.MANIFEST))
        if len(manifests) != 1:
            raise BackupError(f"snapshot {snapshot} is not a pimail backup")
        tree = manifests[0].parent
        json.loads(manifests[0].read_text())  # a manifest we can read
        aside = backup_dir(data_dir) / f"replaced-{int(time.time())}"
        for entry in sorted(tree.iterdir()):
            if entry.name == stage.MANIFEST or entry.name in stage.SKIP_TOP:
                continue  # (an older backup may hold another service's directory)
            destination = data_dir / entry.name
            if destination.exists() or destination.is_symlink():
                aside.mkdir(parents=True, exist_ok=True)
                os.replace(destination, aside / entry.name)
            os.replace(entry, destination)
            # A fresh box's WAL files belong to the databases just moved aside.
            for suffix in ("-wal", "-shm"):
                stale = data_dir / (entry.name + suffix)
                if stale.exists():
                    aside.mkdir(parents=True, exist_ok=True)
                    os.replace(stale, aside / stale.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _give_to_owner(data_dir)
    log.info("restore done snapshot=%s kind=%s", snapshot, target.kind)
    return snapshot


def _give_to_owner(data_dir: Path) -> None:
    """Run as root (`pimail restore` on the box), files made now would be root's:
    hand everything to the data directory's owner, the user pimail runs as."""
    if os.geteuid() != 0:
        return
    owner = data_dir.stat()
    if owner.st_uid == 0:
        return
    for root, dirs, files in os.walk(data_dir):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), owner.st_uid, owner.st_gid)
