"""A message being received, before it is delivered.

Small messages stay in memory; once a message passes `spill_threshold` octets
it continues in a file under `spool/incoming/` (on the same filesystem as the
Maildirs, so delivery is a hard link, not a copy). A Pi with 512 MB must not
hold eight 50 MB messages in RAM at once.

The spool directory holds nothing that was acknowledged: whatever is left
there after a crash was never answered 250, and the next start removes it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .headers import MAX_HEADER
from .maildir import unique_base

log = logging.getLogger(__name__)

SPILL_THRESHOLD = 512 * 1024


class Incoming:
    def __init__(self, spool_dir: Path, spill_threshold: int = SPILL_THRESHOLD) -> None:
        self.spool_dir = spool_dir
        self.spill_threshold = spill_threshold
        self.base = unique_base()
        self.size = 0
        # The header block (through its blank line), at most MAX_HEADER octets:
        # what header parsing needs. No body octets: a connection in DATA keeps
        # at most its spill threshold and its header block in memory.
        self.head = bytearray()
        self._head_done = False
        self._chunks: list[bytes] = []
        self._fd: int | None = None
        self.path: Path | None = None
        self.mtime: float = 0.0  # of the durable file: the message's INTERNALDATE

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._head_done:
            self._grow_head(data)
        self.size += len(data)
        if self._fd is None:
            self._chunks.append(data)
            if self.size > self.spill_threshold:
                self._spill()
        else:
            _write_all(self._fd, data)

    def _grow_head(self, data: bytes) -> None:
        start = max(0, len(self.head) - 3)  # a blank line may straddle two writes
        self.head += data[: MAX_HEADER - len(self.head)]
        for sep in (b"\r\n\r\n", b"\n\n"):  # as headers.header_end finds it
            end = self.head.find(sep, start)
            if end >= 0:
                del self.head[end + len(sep) :]
                self._head_done = True
                return
        self._head_done = len(self.head) >= MAX_HEADER

    def insert(self, offset: int, data: bytes) -> None:
        """Insert `data` at `offset` (header fields a submission server adds,
        RFC 6409 8)."""
        self.splice(offset, 0, data)

    def splice(self, offset: int, length: int, data: bytes) -> None:
        """Replace `length` octets at `offset` with `data` (header fields added
        or removed before delivery). In memory that is cheap; a spilled
        message is rewritten."""
        if self._fd == -1:
            raise RuntimeError("the message is durable already")
        self.head[offset : offset + length] = data
        del self.head[MAX_HEADER:]
        self.size += len(data) - length
        if self._fd is None:
            whole = b"".join(self._chunks)
            self._chunks = [whole[:offset], data, whole[offset + length :]]
            return
        assert self.path is not None
        old_path, old_fd = self.path, self._fd
        self.base = unique_base()
        self.path = self.spool_dir / self.base
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(old_path, "rb") as old:
            _write_all(self._fd, old.read(offset))
            _write_all(self._fd, data)
            old.seek(offset + length)
            while chunk := old.read(1 << 20):
                _write_all(self._fd, chunk)
        os.close(old_fd)
        os.unlink(old_path)

    def _spill(self) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.spool_dir / self.base
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        for chunk in self._chunks:
            _write_all(self._fd, chunk)
        self._chunks = []

    def make_durable(self) -> Path:
        """Put the whole message in its spool file and fsync it (blocking: call it
        from the store's writer thread). Returns the file's path. Calling it
        again (the queue, then local delivery) returns the same file."""
        if self._fd == -1 and self.path is not None:
            return self.path
        if self._fd is None:
            self._spill()
        assert self._fd is not None and self.path is not None
        os.fsync(self._fd)
        self.mtime = os.fstat(self._fd).st_mtime
        os.close(self._fd)
        self._fd = -1  # closed, but spilled: no more writes
        return self.path

    def discard(self) -> None:
        """Forget the message (refused, or the client went away)."""
        self._chunks = []
        if self._fd is not None and self._fd >= 0:
            os.close(self._fd)
        self._fd = None
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as e:  # a read-only or vanished disk: clean_spool at start
                log.info("spool file not removed path=%s error=%s", self.path, e.strerror)
            self.path = None

    def content(self) -> bytes:
        """The whole message (for filters and tests). Reads the spool file if spilled."""
        if self.path is None:
            return b"".join(self._chunks)
        with open(self.path, "rb") as f:
            return f.read()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def clean_spool(spool_dir: Path) -> int:
    """Remove leftovers of receptions that never got a 250. Returns how many."""
    removed = 0
    if spool_dir.is_dir():
        for entry in os.scandir(spool_dir):
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed += 1
    return removed
