"""Checking passwords, for every protocol, through one login throttle.

`Authenticator.authenticate()` is what IMAP LOGIN/AUTHENTICATE, POP3 USER/PASS
and AUTH, SMTP AUTH and the webmail login call; `Authenticator.guard()` is the
same throttle around another secret check (the webmail's current password,
the setup wizard's token). scrypt runs in a thread (never on the event loop).
The throttle (auth/throttle.py) counts failures per client address and per
account, reserves a place for every attempt before its password is checked,
delays and then refuses; the policy is in docs/ARCHITECTURE.md ("Login
throttling"); the addresses each account logged in from are kept across
restarts by auth/known.py. Every failure and every refusal costs the client
`failure_delay`, so a refusal takes as long as a wrong password, and unknown
users cost as much time as known ones, so timing does not tell which
addresses exist. One log line per decision, key=value, never the password.

`FailureLimiter` is a plain sliding-window counter, left for what is not a
login (submission's messages per account and hour).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

from .accounts import Account, Directory
from .known import KnownAddresses
from .passwords import hash_password, verify_password
from .throttle import LoginThrottle, Verdict, account_key

log = logging.getLogger(__name__)


class FailureLimiter:
    """Events per key in a sliding window (submission: messages per account and
    hour). Logins do not use it: they have `LoginThrottle`."""

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


class Outcome(Enum):
    OK = "ok"  # checked, right
    FAILED = "fail"  # checked, wrong
    REFUSED = "refused"  # not checked: throttled


@dataclass
class LoginResult:
    account: Account | None
    outcome: Outcome

    @property
    def refused(self) -> bool:
        """Throttled: the password was not checked (a protocol with a code for a
        temporary refusal says so; the others answer as for a wrong password)."""
        return self.outcome is Outcome.REFUSED


class Authenticator:
    def __init__(
        self,
        directory: Directory,
        throttle: LoginThrottle | None = None,
        failure_delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        known: KnownAddresses | None = None,
    ) -> None:
        self.directory = directory
        self.throttle = throttle or LoginThrottle()
        self.failure_delay = failure_delay
        self.clock = clock
        self.known = known
        if known is not None:  # the known addresses of before the restart
            age = time.time() - clock()  # epoch seconds to this clock's
            for account, address, last in known.load():
                self.throttle.remember(account, address, last - age)
        self.checks = 0  # passwords (or tokens) actually checked, for tests and benches
        self.check_seconds = 0.05  # how long a check takes, lately (what a refusal waits too)
        self._dummy_hash = hash_password("not a password of anybody")

    async def guard(
        self, ip: str, username: str, service: str, check: Callable[[], Awaitable[bool]]
    ) -> Outcome:
        """`check()` (a password or token comparison) under the throttle, for
        `username` (an account, or a fixed name for what is not one) from `ip`."""
        attempt = self.throttle.begin(ip, username, self.clock())
        verdict = attempt.verdict
        if attempt.refused:
            self._log(service, ip, username, Outcome.REFUSED, verdict)
            # As long as a wrong password takes: the check (scrypt) it skipped, then the delay.
            await asyncio.sleep(self.check_seconds + self.failure_delay)
            return Outcome.REFUSED
        try:
            if verdict.delay > 0:
                await asyncio.sleep(verdict.delay)
            self.checks += 1
            started = time.monotonic()
            ok = await check()
            took = time.monotonic() - started
            self.check_seconds += (took - self.check_seconds) / 8  # a moving average
        except BaseException:
            attempt.failed(self.clock())  # the client went away: it still counts
            raise
        if ok:
            if attempt.succeeded(self.clock()) and self.known is not None:
                loop = asyncio.get_running_loop()
                store = functools.partial(
                    self.known.save, attempt.account, attempt.address, time.time()
                )
                await loop.run_in_executor(None, store)
            self._log(service, ip, username, Outcome.OK, verdict)
            return Outcome.OK
        attempt.failed(self.clock())
        self._log(service, ip, username, Outcome.FAILED, verdict)
        await asyncio.sleep(self.failure_delay)
        return Outcome.FAILED

    async def authenticate(
        self, username: str, password: str, ip: str, service: str
    ) -> LoginResult:
        """The account if the password is right, else why not (failed or refused)."""
        found: list[Account] = []

        async def check() -> bool:
            account = self.directory.account(username)
            stored = self.directory.password_hash(account.id) if account else None
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(
                None, verify_password, password, stored or self._dummy_hash
            )
            if ok and account is not None and stored is not None:
                found.append(account)
                return True
            return False

        outcome = await self.guard(ip, username, service, check)
        return LoginResult(found[0] if found else None, outcome)

    async def login(self, username: str, password: str, ip: str, service: str) -> Account | None:
        """The account, if the password is right and the throttle let it be checked."""
        return (await self.authenticate(username, password, ip, service)).account

    def _log(self, service: str, ip: str, username: str, outcome: Outcome, v: Verdict) -> None:
        # key=value, one line per decision; the name as the throttle keys it, with
        # anything that could fake another field (blanks, '=') replaced.
        user = _SAFE.sub("?", account_key(username))[:100] or "-"
        level = logging.INFO if outcome is Outcome.OK else logging.WARNING
        log.log(
            level,
            "login service=%s user=%s ip=%s decision=%s known=%s address_failures=%d"
            " account_failures=%d delay=%.2f",
            service, user, ip, outcome.value, "yes" if v.known else "no",
            v.address_failures, v.account_failures, v.delay,
        )  # fmt: skip


_SAFE = re.compile(r"[^\x21-\x3c\x3e-\x7e]")


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
