"""The databases across system versions (issue 17, "Data across versions").

A new slot's pimail may migrate `pimail.db` and `queue.db` to a schema the
old slot does not know (db.py refuses to open a schema newer than its
migrations). So, before a new slot's first start (the trial boot that
/data/update/pending names), both are copied with SQLite's online backup to
<data>/update/snapshot/. If an older slot then boots (the trial failed, or a
roll back) and finds a schema newer than it knows, it puts the snapshot back.
`index.db` is not snapshotted: it is derived from the Maildirs, so one with a
newer schema is deleted and rebuilt, and mail delivered during the trial
(in the Maildirs) is there again after the rebuild.

Runs as root from pimail-update-prepare.service, before pimail.service.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .. import db
from ..backup.stage import StageReport, _copy_database
from ..queue.store import QUEUE_MIGRATIONS
from ..store.maildir import fsync_dir as _fsync_dir

log = logging.getLogger(__name__)

PENDING = "pending"


@dataclass(frozen=True)
class Databases:
    """Where the databases are, and the newest schema this pimail knows of each."""

    main: Path
    queue: Path
    index: Path

    @classmethod
    def of(cls, data_dir: Path) -> Databases:
        data_dir = Path(data_dir)
        return cls(data_dir / "pimail.db", data_dir / "queue" / "queue.db", data_dir / "index.db")

    def known(self) -> dict[str, int]:
        return {"main": len(db.MAIN_MIGRATIONS), "queue": len(QUEUE_MIGRATIONS)}

    def paths(self) -> dict[str, Path]:
        return {"main": self.main, "queue": self.queue}


def update_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "update"


def snapshot_dir(data_dir: Path) -> Path:
    return update_dir(data_dir) / "snapshot"


def schema_version(path: Path) -> int | None:
    """PRAGMA user_version of a database file, None if there is none."""
    if not path.exists():
        return None
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return int(con.execute("PRAGMA user_version").fetchone()[0])
    finally:
        con.close()


def take(data_dir: Path, slot: str = "", version: str = "") -> Path:
    """Snapshot pimail.db and queue.db (SQLite's online backup: consistent
    while a writer goes on) into <data>/update/snapshot/, replacing an older
    snapshot only once the new one is complete."""
    dbs = Databases.of(data_dir)
    target = snapshot_dir(data_dir)
    building = target.with_name("snapshot.new")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    schemas: dict[str, int | None] = {}
    for name, path in dbs.paths().items():
        schemas[name] = schema_version(path)
        if schemas[name] is not None:
            _copy_database(path, building / f"{name}.db", StageReport())
    meta = {"slot": slot, "version": version, "taken": int(time.time()), "schemas": schemas}
    (building / "meta.json").write_text(json.dumps(meta) + "\n")
    _fsync_dir(building)
    old = target.with_name("snapshot.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.rename(target, old)
    os.rename(building, target)
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)
    log.info("update snapshot dir=%s schemas=%s", target, schemas)
    return target


def newer_than_known(data_dir: Path) -> dict[str, int]:
    """The databases whose schema this pimail does not know: name -> version."""
    dbs = Databases.of(data_dir)
    known = dbs.known()
    found: dict[str, int] = {}
    for name, path in dbs.paths().items():
        version = schema_version(path)
        if version is not None and version > known[name]:
            found[name] = version
    return found


def restore_if_newer(data_dir: Path) -> list[str]:
    """Put the snapshot back where a database's schema is newer than this
    pimail knows (an older slot after a newer one ran); the databases restored.
    Raises RuntimeError when a database is too new and no usable snapshot exists."""
    dbs = Databases.of(data_dir)
    known = dbs.known()
    restored: list[str] = []
    index_version = schema_version(dbs.index)
    if index_version is not None and index_version > len(db.INDEX_MIGRATIONS):
        # Derived from the Maildirs: rebuilt at pimail's start, mail and flags kept.
        for suffix in ("", "-wal", "-shm"):
            Path(f"{dbs.index}{suffix}").unlink(missing_ok=True)
        log.warning("update index schema=%d newer than known: deleted, rebuilt", index_version)
        restored.append("index")
    too_new = newer_than_known(data_dir)
    if not too_new:
        return restored
    snap = snapshot_dir(data_dir)
    try:
        meta = json.loads((snap / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise RuntimeError(
            f"databases {sorted(too_new)} have a newer schema than this pimail and "
            "there is no snapshot to go back to"
        ) from e
    for name in too_new:
        copy = snap / f"{name}.db"
        version = meta.get("schemas", {}).get(name)
        if version is None or not copy.exists() or version > known[name]:
            raise RuntimeError(f"the snapshot's {name} database does not fit this pimail either")
    for name in sorted(too_new):
        live = dbs.paths()[name]
        tmp = live.with_name(live.name + ".restoring")
        shutil.copyfile(snap / f"{name}.db", tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # Run as root (before pimail starts): the file stays pimail's.
        owner = live.stat()
        if (owner.st_uid, owner.st_gid) != (os.getuid(), os.getgid()):
            os.chown(tmp, owner.st_uid, owner.st_gid)
        os.chmod(tmp, owner.st_mode & 0o7777)
        # The live database's WAL belongs to the newer schema: gone with it.
        for suffix in ("-wal", "-shm"):
            Path(f"{live}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, live)
        _fsync_dir(live.parent)
        log.warning(
            "update restored db=%s schema=%d from snapshot schema=%d taken=%s",
            name,
            too_new[name],
            meta["schemas"][name],
            meta.get("taken"),
        )
        restored.append(name)
    return restored


def booted_slot(cmdline: str) -> str:
    for word in cmdline.split():
        if word.startswith("rauc.slot="):
            return word.partition("=")[2]
    return ""


def pending_slot(data_dir: Path) -> str:
    try:
        text = (update_dir(data_dir) / PENDING).read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        if line.startswith("slot="):
            return line.partition("=")[2].strip()
    return ""


def prepare(data_dir: Path, cmdline: str, version: str = "") -> str:
    """Before pimail starts, at every boot: on a new slot's first start take
    the snapshot; on any other start restore it if a schema is too new. What
    was done, for the log."""
    slot = booted_slot(cmdline)
    if slot and pending_slot(data_dir) == slot:
        meta = snapshot_dir(data_dir) / "meta.json"
        try:
            taken_for = json.loads(meta.read_text()).get("slot")
        except (OSError, ValueError):
            taken_for = None
        # Once per trial: a second start of the trial keeps the first copy,
        # which is the old slot's data, not the half-migrated one.
        if taken_for == slot and _same_trial(data_dir, meta):
            return "snapshot kept"
        take(data_dir, slot, version)
        return "snapshot taken"
    restored = restore_if_newer(data_dir)
    return f"restored {','.join(restored)}" if restored else "nothing to do"


def _same_trial(data_dir: Path, meta: Path) -> bool:
    pending = update_dir(data_dir) / PENDING
    try:
        return meta.stat().st_mtime >= pending.stat().st_mtime
    except OSError:
        return False
