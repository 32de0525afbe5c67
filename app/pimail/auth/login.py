"""Checking passwords, for every protocol, with one limit on failures.

`Authenticator.login()` is what IMAP LOGIN/AUTHENTICATE, POP3 USER/PASS and
AUTH, SMTP AUTH and the webmail call. scrypt runs in a thread (never on the
event loop). Failed attempts are counted per client address, shared by all
protocols: past `max_failures` in `window` seconds, every attempt from that
address fails (a correct password too) until the window has passed. Each
failure also costs the client a short delay. Unknown users cost as much time
as known ones, so timing does not tell which addresses exist.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from .accounts import Account, Directory
from .passwords import hash_password, verify_password

log = logging.getLogger(__name__)


class FailureLimiter:
    """Events per key in a sliding window: failed logins per client address
    (and, in submission, messages per account)."""

    def __init__(self, max_failures: int = 10, window: float = 600.0, max_tracked: int = 10_000):
        self.max_failures = max_failures
        self.window = window
        self.max_tracked = max_tracked
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, ip: str, now: float) -> deque[float] | None:
        times = self._failures.get(ip)
        if times is None:
            return None
        while times and times[0] < now - self.window:
            times.popleft()
        if not times:
            del self._failures[ip]
            return None
        return times

    def blocked(self, ip: str) -> bool:
        times = self._recent(ip, time.monotonic())
        return times is not None and len(times) >= self.max_failures

    def failed(self, ip: str) -> None:
        now = time.monotonic()
        if len(self._failures) >= self.max_tracked and ip not in self._failures:
            # Bounded memory under a distributed attack: forget the oldest entry.
            self._failures.pop(next(iter(self._failures)))
        times = self._recent(ip, now) or self._failures.setdefault(ip, deque())
        times.append(now)
        if len(times) > self.max_failures:
            times.popleft()

    def succeeded(self, ip: str) -> None:
        self._failures.pop(ip, None)


class Authenticator:
    def __init__(
        self, directory: Directory, limiter: FailureLimiter, failure_delay: float = 1.0
    ) -> None:
        self.directory = directory
        self.limiter = limiter
        self.failure_delay = failure_delay
        self._dummy_hash = hash_password("not a password of anybody")

    async def login(self, username: str, password: str, ip: str, service: str) -> Account | None:
        """The account, if the password is right and the address is not blocked."""
        loop = asyncio.get_running_loop()
        if self.limiter.blocked(ip):
            log.warning("login refused: too many failures service=%s ip=%s", service, ip)
            await asyncio.sleep(self.failure_delay)
            return None
        account = self.directory.account(username)
        stored = self.directory.password_hash(account.id) if account else None
        ok = await loop.run_in_executor(None, verify_password, password, stored or self._dummy_hash)
        if ok and account is not None and stored is not None:
            self.limiter.succeeded(ip)
            log.info("login service=%s user=%s ip=%s", service, account.address, ip)
            return account
        self.limiter.failed(ip)
        log.warning("login failed service=%s ip=%s", service, ip)
        await asyncio.sleep(self.failure_delay)
        return None


def parse_sasl_plain(data: bytes) -> tuple[str, str] | None:
    """RFC 4616: [authzid] NUL authcid NUL passwd. Returns (user, password), or
    None if malformed or if it asks to act as somebody else."""
    try:
        authzid, authcid, password = data.decode("utf-8").split("\0")
    except (UnicodeDecodeError, ValueError):
        return None
    if not authcid or (authzid and authzid.lower() != authcid.lower()):
        return None
    return authcid, password
