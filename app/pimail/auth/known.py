"""Where each account has logged in from: the login throttle's known addresses
(auth/throttle.py), kept across restarts.

Storage: its own SQLite file, `<data>/logins.db` (not precious: deleting it
only makes every address unknown again, as on a fresh box). One row per
(account, address) with the time of the last success remembered (epoch
seconds); the Authenticator writes a row at most once a day per pair, on a
worker thread, and rows older than the known-address lifetime are dropped as
it writes. Keys are the throttle's: the normalized account name and the
address key (IPv6 per /64). No password, nothing else.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

log = logging.getLogger(__name__)

FILENAME = "logins.db"
_SCHEMA = """CREATE TABLE IF NOT EXISTS known (
    account TEXT NOT NULL, address TEXT NOT NULL, last REAL NOT NULL,
    PRIMARY KEY (account, address)) WITHOUT ROWID"""


class KnownAddresses:
    def __init__(self, path: Path, ttl: float, limit: int) -> None:
        self.path = Path(path)
        self.ttl = ttl
        self.limit = limit

    def _open(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=10)
        con.execute(_SCHEMA)
        return con

    def load(self) -> list[tuple[str, str, float]]:
        """(account, address, last success) within the lifetime, the newest
        `limit`, oldest first. Nothing (and a warning) if the file is unreadable."""
        try:
            con = self._open()
            try:
                rows = con.execute(
                    "SELECT account, address, last FROM known WHERE last > ?"
                    " ORDER BY last DESC LIMIT ?",
                    (time.time() - self.ttl, self.limit),
                ).fetchall()
            finally:
                con.close()
        except sqlite3.Error as e:
            log.warning("known login addresses not loaded path=%s error=%s", self.path, e)
            return []
        return [(str(a), str(b), float(c)) for a, b, c in reversed(rows)]

    def save(self, account: str, address: str, when: float) -> None:
        """Remember one pair (on a worker thread); errors are logged, not raised."""
        try:
            con = self._open()
            try:
                with con:
                    con.execute(
                        "INSERT INTO known (account, address, last) VALUES (?, ?, ?)"
                        " ON CONFLICT (account, address) DO UPDATE SET last = excluded.last",
                        (account, address, when),
                    )
                    con.execute("DELETE FROM known WHERE last <= ?", (when - self.ttl,))
            finally:
                con.close()
        except sqlite3.Error as e:
            log.warning("known login address not stored path=%s error=%s", self.path, e)
