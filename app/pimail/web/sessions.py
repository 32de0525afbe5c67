"""Web sessions: who is logged in to the webmail and admin pages.

A session is a random 256-bit token in a cookie (Secure, HttpOnly,
SameSite=Strict); pimail.db keeps only its SHA-256 (table web_sessions,
db.MAIN_MIGRATIONS 4), so a copy of the database logs nobody in. Each session
has its own CSRF token, which every form of a logged-in page carries.

Sessions survive a restart of the server. They end at logout, after
IDLE_TIMEOUT without a request, after MAX_AGE whatever happens, when the
password changes (`end_all`), and with the account (ON DELETE CASCADE).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..db import transaction

IDLE_TIMEOUT = 12 * 3600
MAX_AGE = 14 * 24 * 3600
TOUCH_EVERY = 60  # seconds: how stale `seen` may get before it is written again


@dataclass(frozen=True)
class Session:
    token_hash: str
    account_id: int
    csrf: str
    created: int
    seen: int


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class SessionStore:
    """Sessions in pimail.db; one connection, used on the event loop only."""

    def __init__(self, con: sqlite3.Connection, clock: Callable[[], float] = time.time) -> None:
        self.con = con
        self._now = clock

    def create(self, account_id: int) -> tuple[str, Session]:
        """A new session: (the cookie's token, the session)."""
        token = secrets.token_urlsafe(32)
        now = int(self._now())
        session = Session(_hash(token), account_id, secrets.token_urlsafe(32), now, now)
        with transaction(self.con):
            self.con.execute(
                "DELETE FROM web_sessions WHERE seen < ? OR created < ?",
                (now - IDLE_TIMEOUT, now - MAX_AGE),
            )
            self.con.execute(
                "INSERT INTO web_sessions (token_hash, account_id, csrf, created, seen)"
                " VALUES (?, ?, ?, ?, ?)",
                (session.token_hash, account_id, session.csrf, now, now),
            )
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie's token, or None."""
        if not token or len(token) > 100:
            return None
        return self.by_hash(_hash(token))

    def by_hash(self, token_hash: str) -> Session | None:
        """The live session of a token's SHA-256 (what signed URLs name)."""
        row = self.con.execute(
            "SELECT token_hash, account_id, csrf, created, seen FROM web_sessions"
            " WHERE token_hash = ?",
            (token_hash,),
        ).fetchone()
        if row is None:
            return None
        session = Session(*row)
        now = int(self._now())
        if now - session.seen > IDLE_TIMEOUT or now - session.created > MAX_AGE:
            self.con.execute("DELETE FROM web_sessions WHERE token_hash = ?", (session.token_hash,))
            return None
        if now - session.seen > TOUCH_EVERY:
            self.con.execute(
                "UPDATE web_sessions SET seen = ? WHERE token_hash = ?", (now, session.token_hash)
            )
        return session

    def end(self, token: str | None) -> None:
        if token:
            self.con.execute("DELETE FROM web_sessions WHERE token_hash = ?", (_hash(token),))

    def end_all(self, account_id: int, keep: str | None = None) -> None:
        """Log an account out everywhere (a password change), but for `keep`'s session."""
        self.con.execute(
            "DELETE FROM web_sessions WHERE account_id = ? AND token_hash != ?",
            (account_id, _hash(keep) if keep else ""),
        )
