"""The outbound queue on disk: what is waiting to leave, and why.

Layout under `<data>/queue/` (primary data: back it up with pimail.db):

    queue.db          one row per message, one per recipient still to do
    messages/<id>     the message as it was accepted (trace headers included)

A message enters in this order, and only then is 250 sent: the file is
fsynced (it is a hard link of the spool file), its directory is fsynced, then
the rows commit with synchronous=FULL. A file without rows was never
acknowledged and is removed at start; rows without a file cannot be sent and
are reported and dropped.

A recipient row is in one of two named states: `queued` (never tried) or
`deferred` (tried, failed for now, due again at `next_attempt`). A recipient
that is delivered or bounced leaves the table (the log keeps the record); a
message without recipients leaves with its file. While a delivery is in
flight its rows stay as they are: a crash then means one more attempt, which
SMTP allows (RFC 5321 6.1: at most a duplicate, never a loss).

All methods block: the queue calls them on its own writer thread.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import db
from ..store import maildir
from ..store.spool import Incoming

log = logging.getLogger(__name__)

QUEUE_MIGRATIONS: list[str] = [
    """
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        sender TEXT NOT NULL,               -- '' for the null reverse-path
        account TEXT NOT NULL DEFAULT '',   -- who submitted it ('' for DSNs)
        kind TEXT NOT NULL DEFAULT 'mail',  -- 'mail' or 'dsn'
        size INTEGER NOT NULL,
        created REAL NOT NULL,
        envid TEXT,                         -- RFC 3461 ENVID
        dkim TEXT,                          -- DKIM-Signature fields, once signed
        delay_notified INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE recipients (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        address TEXT NOT NULL,
        domain TEXT NOT NULL,               -- lower case, IDNA A-label
        orcpt TEXT,
        state TEXT NOT NULL DEFAULT 'queued',   -- 'queued' | 'deferred'
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        last_attempt REAL,
        last_error TEXT
    );
    CREATE INDEX recipients_due ON recipients(next_attempt);
    CREATE INDEX recipients_message ON recipients(message_id)
    """,
]


@dataclass
class Recipient:
    id: int
    address: str
    domain: str
    state: str = "queued"
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str | None = None
    orcpt: str | None = None


@dataclass
class QueuedMessage:
    id: str
    sender: str
    account: str
    kind: str
    size: int
    created: float
    envid: str | None
    dkim: str | None
    delay_notified: bool
    recipients: list[Recipient] = field(default_factory=list)


def new_id() -> str:
    """Sortable by time, unique: 10 hex digits of milliseconds, 8 random."""
    return f"{int(time.time() * 1000):010X}{secrets.token_hex(4).upper()}"


def domain_of(address: str) -> str:
    domain = address.rpartition("@")[2].lower().rstrip(".")
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


class QueueStore:
    def __init__(self, queue_dir: Path) -> None:
        self.dir = queue_dir
        self.messages_dir = queue_dir / "messages"
        self.messages_dir.mkdir(parents=True, exist_ok=True)
        self.con = db.connect(queue_dir / "queue.db", QUEUE_MIGRATIONS)
        # 250 means on disk, also for the rows (a power cut must not lose them).
        self.con.execute("PRAGMA synchronous=FULL")
        self.con.execute("PRAGMA cache_size=-512")

    def close(self) -> None:
        self.con.close()

    def path(self, message_id: str) -> Path:
        return self.messages_dir / message_id

    # -- in -------------------------------------------------------------------

    def enqueue(
        self,
        message: Incoming,
        sender: str,
        recipients: list[str],
        *,
        account: str = "",
        kind: str = "mail",
        envid: str | None = None,
    ) -> str:
        """Make `message` durable in the queue for `recipients`; returns its id.
        The spool file stays (hard-linked): the caller may deliver it locally too."""
        message_id = new_id()
        spool_path = message.make_durable()
        maildir.link_or_copy(spool_path, self.path(message_id))
        maildir.fsync_dir(self.messages_dir)
        self._insert(message_id, sender, recipients, account, kind, message.size, envid)
        return message_id

    def enqueue_bytes(
        self, data: bytes, sender: str, recipients: list[str], *, kind: str = "dsn"
    ) -> str:
        message_id = new_id()
        maildir.write_new(self.path(message_id), data)
        maildir.fsync_dir(self.messages_dir)
        self._insert(message_id, sender, recipients, "", kind, len(data), None)
        return message_id

    def _insert(
        self,
        message_id: str,
        sender: str,
        recipients: list[str],
        account: str,
        kind: str,
        size: int,
        envid: str | None,
    ) -> None:
        now = time.time()
        with db.transaction(self.con):
            self.con.execute(
                "INSERT INTO messages (id, sender, account, kind, size, created, envid)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (message_id, sender, account, kind, size, now, envid),
            )
            self.con.executemany(
                "INSERT INTO recipients (message_id, address, domain, next_attempt)"
                " VALUES (?, ?, ?, ?)",
                [(message_id, r, domain_of(r), now) for r in recipients],
            )

    # -- out ------------------------------------------------------------------

    def due(self, now: float, limit: int, skip: set[int]) -> list[tuple[str, Recipient]]:
        """Recipients due by `now`, oldest first, except those in `skip` (in flight)."""
        rows = self.con.execute(
            "SELECT * FROM recipients WHERE next_attempt <= ? ORDER BY next_attempt, id LIMIT ?",
            (now, limit + len(skip)),
        ).fetchall()
        out = [(r["message_id"], _recipient(r)) for r in rows if r["id"] not in skip]
        return out[:limit]

    def next_due(self) -> float | None:
        row = self.con.execute("SELECT MIN(next_attempt) FROM recipients").fetchone()
        return row[0]

    def message(self, message_id: str) -> QueuedMessage | None:
        row = self.con.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            return None
        m = QueuedMessage(
            row["id"], row["sender"], row["account"], row["kind"], row["size"], row["created"],
            row["envid"], row["dkim"], bool(row["delay_notified"]),
        )  # fmt: skip
        m.recipients = [
            _recipient(r)
            for r in self.con.execute(
                "SELECT * FROM recipients WHERE message_id = ? ORDER BY id", (message_id,)
            )
        ]
        return m

    def set_dkim(self, message_id: str, fields: str) -> None:
        self.con.execute("UPDATE messages SET dkim = ? WHERE id = ?", (fields, message_id))

    def set_delay_notified(self, message_id: str) -> None:
        self.con.execute("UPDATE messages SET delay_notified = 1 WHERE id = ?", (message_id,))

    def finish(
        self, message_id: str, done: list[int], deferred: dict[int, tuple[float, str]]
    ) -> bool:
        """Record an attempt: `done` recipients (delivered or bounced) leave;
        `deferred` ones get their next attempt and error. Returns True when
        the message has no recipients left (its file is then removed)."""
        now = time.time()
        with db.transaction(self.con):
            self.con.executemany(
                "DELETE FROM recipients WHERE id = ? AND message_id = ?",
                [(rid, message_id) for rid in done],
            )
            self.con.executemany(
                "UPDATE recipients SET state = 'deferred', attempts = attempts + 1,"
                " next_attempt = ?, last_attempt = ?, last_error = ? WHERE id = ?",
                [(when, now, error[:1000], rid) for rid, (when, error) in deferred.items()],
            )
            left = self.con.execute(
                "SELECT COUNT(*) FROM recipients WHERE message_id = ?", (message_id,)
            ).fetchone()[0]
            if left == 0:
                self.con.execute("DELETE FROM messages WHERE id = ?", (message_id,))
        if left == 0:
            maildir.unlink_quietly(self.path(message_id))
        return left == 0

    # -- administration (`pimail queue`) ----------------------------------------

    def list(self) -> list[QueuedMessage]:
        ids = [r[0] for r in self.con.execute("SELECT id FROM messages ORDER BY created, id")]
        return [m for m in map(self.message, ids) if m is not None]

    def counts(self) -> dict[str, int]:
        rows = self.con.execute("SELECT state, COUNT(*) FROM recipients GROUP BY state")
        return {state: n for state, n in rows}

    def retry(self, message_id: str | None = None) -> int:
        """Make recipients due now (one message's, or all). Returns how many."""
        if message_id is None:
            cur = self.con.execute("UPDATE recipients SET next_attempt = 0")
        else:
            cur = self.con.execute(
                "UPDATE recipients SET next_attempt = 0 WHERE message_id = ?", (message_id,)
            )
        return cur.rowcount

    def delete(self, message_id: str) -> bool:
        """Remove a message without a bounce (an administrator's decision)."""
        with db.transaction(self.con):
            cur = self.con.execute("DELETE FROM messages WHERE id = ?", (message_id,))
        if cur.rowcount:
            maildir.unlink_quietly(self.path(message_id))
        return cur.rowcount > 0

    def recover(self) -> tuple[int, int]:
        """At start: remove files that never got rows (never acknowledged) and
        rows whose file is gone. Returns (files removed, messages dropped)."""
        known = {r[0] for r in self.con.execute("SELECT id FROM messages")}
        files = 0
        for entry in os.scandir(self.messages_dir):
            if entry.name not in known and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                files += 1
        dropped = 0
        for message_id in known:
            if not self.path(message_id).exists():
                log.error("queue file missing id=%s: dropping the message", message_id)
                self.con.execute("DELETE FROM messages WHERE id = ?", (message_id,))
                dropped += 1
        return files, dropped


def _recipient(r: sqlite3.Row) -> Recipient:
    return Recipient(
        r["id"], r["address"], r["domain"], r["state"], r["attempts"], r["next_attempt"],
        r["last_error"], r["orcpt"],
    )  # fmt: skip
