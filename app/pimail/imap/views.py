"""Reading the index for sessions, and the shared view of each selected mailbox.

`IndexReader` runs queries on a small thread pool, each thread with its own
read-only SQLite connection: sessions do not own connections (a connection
costs far more memory than an idle IMAP session may), and a big FETCH does not
stall the event loop.

`MailboxViews` keeps one `MailboxState` per mailbox that some session has
selected: its sorted UIDs (an array, 4 octets each) and HIGHESTMODSEQ. The
store calls `changed(mailbox_id)` after every change; the state is reloaded
once, and every session in sync shares the same UID array, so 200 sessions
on a 10,000-message INBOX hold one copy, not 200.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import weakref
from array import array
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class IndexReader:
    def __init__(self, index_path: Path, threads: int = 2) -> None:
        self.index_path = index_path
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="index-reader")
        self._local = threading.local()

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(
                f"file:{self.index_path}?mode=ro", uri=True, check_same_thread=False, timeout=30
            )
            con.execute("PRAGMA query_only=1")
            # Small page caches: the kernel's page cache holds the file anyway,
            # and each cached page here is RSS (a Pi Zero has 512 MB).
            con.execute("PRAGMA cache_size=-1024")
            self._local.con = con
        return con

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(connection, *args) on a reader thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self._con(), *args))

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass
class MailboxState:
    mailbox_id: int
    uidvalidity: int
    uids: array = field(default_factory=lambda: array("I"))
    highestmodseq: int = 0
    uidnext: int = 1
    stale: bool = True
    watchers: set[asyncio.Event] = field(default_factory=set)
    _loading: asyncio.Future[None] | None = None

    async def current(self, reader: IndexReader) -> MailboxState:
        """Reload if something changed since the last load (once for all sessions)."""
        # A load in flight may have started before the latest change was
        # committed, and not yet have updated the state: wait for it too.
        while self.stale or self._loading is not None:
            if self._loading is None:
                self._loading = asyncio.get_running_loop().create_future()
                self.stale = False
                try:
                    uids, modseq, uidnext = await reader.run(_load, self.mailbox_id)
                    if uids != self.uids:  # same UIDs: keep the array every session shares
                        self.uids = uids
                    self.highestmodseq, self.uidnext = modseq, uidnext
                finally:
                    done, self._loading = self._loading, None
                    done.set_result(None)
            else:
                await self._loading
        return self


def _load(con: sqlite3.Connection, mailbox_id: int) -> tuple[array, int, int]:
    with con:  # one read transaction: the UIDs and the modseq agree
        rows = con.execute(
            "SELECT uid FROM messages WHERE mailbox_id = ? ORDER BY uid", (mailbox_id,)
        )
        uids = array("I", (r[0] for r in rows))
        row = con.execute(
            "SELECT highestmodseq, uidnext FROM mailboxes WHERE id = ?", (mailbox_id,)
        ).fetchone()
    return uids, (row[0] if row else 0), (row[1] if row else 1)


class MailboxViews:
    def __init__(self, reader: IndexReader) -> None:
        self.reader = reader
        self._states: weakref.WeakValueDictionary[int, MailboxState] = weakref.WeakValueDictionary()
        self.loop: asyncio.AbstractEventLoop | None = None

    def state(self, mailbox_id: int, uidvalidity: int) -> MailboxState:
        found = self._states.get(mailbox_id)
        if found is None or found.uidvalidity != uidvalidity:
            found = MailboxState(mailbox_id, uidvalidity)
            self._states[mailbox_id] = found
        return found

    def notify_threadsafe(self, mailbox_id: int) -> None:
        """The store's hook: called on its writer thread."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.changed, mailbox_id)

    def changed(self, mailbox_id: int) -> None:
        found = self._states.get(mailbox_id)
        if found is not None:
            found.stale = True
            for event in list(found.watchers):
                event.set()
