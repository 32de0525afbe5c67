"""The data directory's health: may pimail write there now?

On a Pi the data directory is a USB disk that can be unplugged, lose power,
fill up, or be remounted read-only by ext4 after an error (errors=remount-ro).
pimail writes only to the data filesystem it started on, and only while it is
writable and has room; otherwise it refuses new work with a temporary error
and nothing is acknowledged (docs/ARCHITECTURE.md, "Storage faults"):

- SMTP: 452 4.3.1 at MAIL and RCPT, and at the end of DATA if the disk failed
  during the transfer (RFC 5321 4.2.5 452: insufficient system storage;
  RFC 3463 3.4 X.3.1: mail system full);
- IMAP APPEND, COPY, MOVE, STORE, EXPUNGE: NO [LIMIT] for a full disk, NO
  [UNAVAILABLE] for one that is gone or read-only (RFC 9051 7.1);
- POP3 QUIT: -ERR [SYS/TEMP], the messages kept (RFC 1939 6, RFC 3206 4);
- the outbound queue pauses: no attempt, no bounce, no retry counted.

What "healthy" means, checked at start (`claim`), before each commit batch
of the store's writer, and every `storage.check_interval` seconds (`watch`):

1. the directory is there and holds the marker file `.pimail-data` with the
   id written at the first start (a different or missing marker: the disk is
   gone and the mount point, or another disk, is showing through);
2. if it was a mount point at start (its device differs from its parent's),
   it still is, on the same device (a lazily unmounted disk leaves the empty
   mount point behind on the root filesystem);
3. the filesystem is not mounted read-only (statvfs ST_RDONLY), and the last
   write did not fail with EROFS or EIO: ext4's errors=remount-ro (an
   "emergency read-only" since Linux 6.x) shows no ST_RDONLY, only failing
   writes. After such a failure every look also tries a small write (the
   marker's temporary file) until one succeeds; a healthy disk is never
   written to just to look;
4. free space (what an unprivileged user may use, f_bavail) is above the
   reserve: `storage.reserve_percent` of the size, and at least
   `storage.reserve_mib` (leaving room for the index, the queue's records
   and the expunges that free space).

In development (./var on the same filesystem as its parent) the marker alone
says it is the right directory. The state is logged once per change, never
per message; listeners (`on_change`) hear each change (the queue resumes, the
store reconciles what it may have missed).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = ".pimail-data"
MIB = 1024 * 1024

# Errors that mean the disk, not pimail: refused as "storage unavailable".
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ENODEV})


class StorageUnavailable(OSError):
    """Writing to the data directory is refused now; `health` says why. An
    OSError, so that every handler of a failed write handles it too."""

    def __init__(self, health: Health) -> None:
        super().__init__(health.errno, health.describe())
        self.health = health


@dataclass(frozen=True)
class Health:
    """One look at the data directory. `reason`: "" (healthy), "missing",
    "read-only" or "full"."""

    reason: str = ""
    detail: str = ""
    free: int = 0
    total: int = 0
    checked: float = 0.0  # time.monotonic() of the look

    @property
    def ok(self) -> bool:
        return not self.reason

    @property
    def errno(self) -> int:
        return {"full": errno.ENOSPC, "read-only": errno.EROFS}.get(self.reason, errno.ENODEV)

    @property
    def imap_code(self) -> str:
        """RFC 9051 7.1: LIMIT for the server's own limit (the reserve);
        UNAVAILABLE ("temporary failure because a subsystem is down") for a
        disk that is gone or read-only."""
        return "LIMIT" if self.reason == "full" else "UNAVAILABLE"

    def describe(self) -> str:
        text = {
            "": "storage available",
            "missing": "data disk missing",
            "read-only": "data disk read-only",
            "full": "data disk full",
        }.get(self.reason, self.reason)
        return f"{text} ({self.detail})" if self.detail else text

    @property
    def smtp_reply(self) -> str:
        # RFC 5321 4.2.5 452 and RFC 3463 3.4 X.3.1: a temporary refusal;
        # the sender keeps the message and retries.
        return "452 4.3.1 Insufficient system storage, try again later"


def reserve_bytes(total: int, percent: float, floor_mib: float) -> int:
    return int(max(total * percent / 100.0, floor_mib * MIB))


class DataGuard:
    """Watches one data directory. `check()` may run on any thread."""

    def __init__(
        self,
        data_dir: Path,
        *,
        reserve_percent: float = 2.0,
        reserve_mib: float = 64.0,
        check_interval: float = 5.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.reserve_percent = reserve_percent
        self.reserve_mib = reserve_mib
        self.check_interval = check_interval
        self.marker_id = ""
        self.device: int | None = None  # st_dev at start when a mount point, else None
        self.on_change: list[Callable[[Health], None]] = []
        self._lock = threading.Lock()
        self._health = Health(checked=time.monotonic())
        self.since = time.time()  # wall-clock time of the last change
        self._task: asyncio.Task[None] | None = None
        # Set by a write that failed with EROFS/EIO: (reason, detail), until a
        # probing write succeeds.
        self._failed: tuple[str, str] | None = None
        self._parent = str(self.data_dir.parent)
        self._marker_path = str(self.data_dir / MARKER)

    # -- at start ---------------------------------------------------------------

    def claim(self) -> Health:
        """At start: write the marker if there is none (the first start on this
        disk), remember it and whether the directory is a mount point."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        marker = self.data_dir / MARKER
        try:
            self.marker_id = marker.read_text().strip()
        except FileNotFoundError:
            self.marker_id = ""
        if not self.marker_id:
            self.marker_id = secrets.token_hex(16)
            self._write_marker()
            log.info("data directory claimed path=%s marker=%s", self.data_dir, MARKER)
        here = os.stat(self.data_dir)
        self._parent = str(self.data_dir.resolve().parent)
        self._marker_path = str(self.data_dir / MARKER)
        parent = os.stat(self._parent)
        self.device = here.st_dev if here.st_dev != parent.st_dev else None
        log.info(
            "data directory path=%s mount_point=%s reserve_percent=%g reserve_mib=%g",
            self.data_dir, self.device is not None, self.reserve_percent, self.reserve_mib,
        )  # fmt: skip
        return self.check()

    def _write_marker(self) -> None:
        """(Re)write the marker atomically and durably: at the first start, and
        as the probing write after a failure (the same content)."""
        tmp = self.data_dir / f"{MARKER}.tmp"
        with open(tmp, "w") as f:
            f.write(self.marker_id + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.data_dir / MARKER)
        fd = os.open(self.data_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- looking ------------------------------------------------------------------

    def probe(self) -> Health:
        """One look, without changing the recorded state."""
        now = time.monotonic()
        try:
            here = os.stat(self.data_dir)
            if self.device is not None:
                parent = os.stat(self._parent)
                if here.st_dev == parent.st_dev:
                    return Health("missing", "not mounted", checked=now)
                if here.st_dev != self.device:
                    return Health("missing", "another device is mounted", checked=now)
            try:
                marker = _read_small(self._marker_path)
            except FileNotFoundError:
                return Health("missing", f"no {MARKER} marker", checked=now)
            if marker != self.marker_id:
                return Health("missing", f"another disk ({MARKER} differs)", checked=now)
            st = os.statvfs(self.data_dir)
        except OSError as e:
            return Health("missing", os.strerror(e.errno or errno.EIO), checked=now)
        total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        if st.f_flag & os.ST_RDONLY:
            return Health("read-only", "mounted read-only", free, total, now)
        failed = self._failed
        if failed is not None:
            try:
                self._write_marker()
            except OSError:
                return Health(failed[0], failed[1], free, total, now)
            self._failed = None
        reserve = reserve_bytes(total, self.reserve_percent, self.reserve_mib)
        if free <= reserve:
            detail = f"{free // MIB} MiB free, reserve {reserve // MIB} MiB"
            return Health("full", detail, free, total, now)
        return Health("", "", free, total, now)

    def check(self) -> Health:
        """Look now, record the result, and announce a change."""
        health = self.probe()
        with self._lock:
            before = self._health
            self._health = health
            changed = before.reason != health.reason
            if changed:
                self.since = time.time()
        if changed:
            self._announce(before, health)
        return health

    def _announce(self, before: Health, health: Health) -> None:
        if health.ok:
            log.warning("storage available again path=%s was=%r free_mib=%d",
                        self.data_dir, before.reason, health.free // MIB)  # fmt: skip
        else:
            log.error("storage unavailable path=%s reason=%r detail=%r: refusing mail until"
                      " it is back", self.data_dir, health.reason, health.detail)  # fmt: skip
        for listener in list(self.on_change):
            try:
                listener(health)
            except Exception:
                log.exception("storage listener failed")

    @property
    def health(self) -> Health:
        """The last look (at most `check_interval` old while `watch` runs)."""
        return self._health

    def require(self) -> None:
        """Look now; raise StorageUnavailable unless writing is safe."""
        health = self.check()
        if not health.ok:
            raise StorageUnavailable(health)

    async def current(self, max_age: float = 1.0) -> Health:
        """The state, looked at again (off the event loop) if older than
        `max_age` seconds: what SMTP asks at MAIL and RCPT."""
        health = self._health
        if time.monotonic() - health.checked <= max_age:
            return health
        return await asyncio.to_thread(self.check)

    async def judge(self, error: BaseException) -> bool:
        """`is_storage_error` for the event loop: its look at the disk (stat,
        statvfs, a probing write with fsync on a failing disk) runs in a thread."""
        return await asyncio.to_thread(self.is_storage_error, error)

    def is_storage_error(self, error: BaseException) -> bool:
        """Whether a failed write was the disk's doing (then the state is
        looked at again, so the change is logged and announced)."""
        if isinstance(error, StorageUnavailable):
            return True
        if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            if error.errno in (errno.EROFS, errno.EIO):
                reason = "read-only" if error.errno == errno.EROFS else "missing"
                self._failed = (reason, f"a write failed: {os.strerror(error.errno)}")
            self.check()
            return True
        if isinstance(error, OSError):  # ENOENT: a path that went with the disk
            return not self.check().ok
        if type(error).__name__ == "OperationalError":  # sqlite3: disk I/O, full, read-only
            text = str(error).lower()
            if "readonly" in text or "read-only" in text:
                self._failed = ("read-only", "a write failed: read-only database")
            elif "disk i/o" in text:
                self._failed = ("missing", "a write failed: disk I/O error")
            return not self.check().ok
        return False

    # -- polling ------------------------------------------------------------------

    def start(self) -> None:
        """Poll every `check_interval` seconds (bounded: a disk that comes
        back is noticed within that time)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="data-guard")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                await asyncio.to_thread(self.check)
            except Exception:
                log.exception("storage check failed")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def _read_small(path: str) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 256).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
