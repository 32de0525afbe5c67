"""The shared view of each selected mailbox, read through the store's IndexReader.

`MailboxViews` keeps one `MailboxState` per mailbox that some session has
selected: its sorted UIDs (an array, 4 octets each) and HIGHESTMODSEQ. The
store calls `changed(mailbox_id)` after every change; the state is reloaded
once, and every session in sync shares the same UID array, so 200 sessions
on a 10,000-message INBOX hold one copy, not 200.

`RecentMark` is the IMAP4rev1 \\Recent flag of one mailbox (RFC 3501 2.3.2),
kept in memory only, as Dovecot does without persistence: the highest UID some
session has been told about, and the UIDs that were in new/ when the mark was
first needed. Across a restart the mark starts again from the index: what no
session had selected read-write (still in the Maildir's new/) is \\Recent again
for the first session to select the mailbox, and nothing else is.
"""

from __future__ import annotations

import asyncio
import sqlite3
import weakref
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..store.reader import IndexReader


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


@dataclass
class RecentMark:
    """RFC 3501 2.3.2: a message is \\Recent for exactly one session, "the first
    session to have been notified about this message". Claims run on the event
    loop, so two sessions never both claim a UID."""

    uidvalidity: int
    mark: int  # the highest UID whose \Recent a session has claimed
    unclaimed: set[int]  # UIDs in new/ when the mark was loaded (no session saw them)

    def peek(self, uids: Iterable[int]) -> set[int]:
        """The UIDs among `uids` that nobody has claimed (a read-only session
        shows them \\Recent without taking the flag, RFC 3501 6.3.2)."""
        return {u for u in uids if u > self.mark or u in self.unclaimed}

    def claim(self, uids: Sequence[int]) -> set[int]:
        """Take \\Recent for `uids` (sorted, all known to the claiming session)."""
        if not uids:
            return set()
        recent = self.peek(uids)
        top = uids[-1]
        self.mark = max(self.mark, top)
        if self.unclaimed:
            self.unclaimed = {u for u in self.unclaimed if u > top}
        return recent


def _startup_marks(index_path: Path) -> dict[int, tuple[int, int]]:
    """mailbox id -> (UIDVALIDITY, highest UID handed out) as the process starts:
    what came later is new to every session of this process."""
    try:
        con = sqlite3.connect(f"file:{index_path}?mode=ro", uri=True, timeout=30)
        try:
            rows = con.execute("SELECT id, uidvalidity, uidnext FROM mailboxes").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return {}
    return {r[0]: (r[1], r[2] - 1) for r in rows}


def _in_new(con: sqlite3.Connection, mailbox_id: int, top: int) -> set[int]:
    rows = con.execute(
        "SELECT uid FROM messages WHERE mailbox_id = ? AND subdir = 'new' AND uid <= ?",
        (mailbox_id, top),
    )
    return {r[0] for r in rows}


class MailboxViews:
    def __init__(self, reader: IndexReader) -> None:
        self.reader = reader
        self._states: weakref.WeakValueDictionary[int, MailboxState] = weakref.WeakValueDictionary()
        self._recent: dict[int, RecentMark] = {}  # small: one per mailbox ever selected
        self._startup = _startup_marks(reader.index_path)
        self.loop: asyncio.AbstractEventLoop | None = None

    async def recent(self, mailbox_id: int, uidvalidity: int) -> RecentMark:
        """The mailbox's \\Recent mark, loaded from the index the first time."""
        found = self._recent.get(mailbox_id)
        if found is None or found.uidvalidity != uidvalidity:
            # Everything since the process started is new; of what came before,
            # what no session took out of new/ (a folder made since: all of it).
            known_uidvalidity, top = self._startup.get(mailbox_id, (0, 0))
            if known_uidvalidity != uidvalidity:
                top = 0
            new = await self.reader.run(_in_new, mailbox_id, top) if top else set()
            found = self._recent.get(mailbox_id)  # another session may have loaded it
            if found is None or found.uidvalidity != uidvalidity:
                found = RecentMark(uidvalidity, top, new)
                self._recent[mailbox_id] = found
        return found

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
