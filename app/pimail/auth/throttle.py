"""The login throttle: how many password guesses anyone gets, sans I/O.

Every password check of every protocol (IMAP LOGIN/AUTHENTICATE, POP3
USER/PASS and AUTH, SMTP AUTH on submission, the web login, the webmail's
current-password check, the setup wizard's token) asks `LoginThrottle.begin`
first and tells `Attempt` how it ended. Nothing here sleeps, reads a clock of
its own or touches a socket: the caller passes `now` (tests inject a clock),
waits the delay it is told, and checks the password. The policy (also in
docs/ARCHITECTURE.md, "Login throttling"):

- Keys. The client address (IPv4; IPv4-mapped IPv6 as IPv4; other IPv6 per
  /64, what one subscriber gets) and the account (the normalized user name,
  whether or not it exists). Failures are kept per key in a sliding window
  (`window` seconds), each tagged with the other key, so a success clears
  exactly its own (address, account) pair: a correct login to the attacker's
  own account forgives nothing he guessed for somebody else.
- Known addresses. An address from which an account logged in within
  `known_ttl` gets that account a bucket of its own, (account, address), with
  the higher `known_limit`; the address's and the account's buckets do not
  apply to it. So an attacker hammering alice from elsewhere throttles alice
  for unknown addresses only, and an attacker behind the same NAT as bob
  cannot lock bob out of his own account (Dovecot's auth penalty and
  fail2ban make the same split between known and unknown).
- Reservation. `begin` counts the attempt against every bucket it uses before
  the password is checked (in flight); `Attempt.failed` turns that into a
  failure, `Attempt.succeeded` releases it. A hundred parallel guesses get no
  more checks than a hundred sequential ones.
- Delay, then refusal. Once a bucket holds half its limit, each attempt first
  waits `base_delay * 2**k` (k: failures past the half), at most `max_delay`;
  at the limit the attempt is refused without checking the password (the
  caller still makes it cost what a failure costs). A refused attempt counts
  as a failure of the key(s) at their limit, so an attacker who keeps going
  stays refused; not of the others, so one address refused for its own
  guesses does not fill the account's bucket beyond them.
- Known addresses survive a restart: the Authenticator stores them
  (auth/known.py, <data>/logins.db) when `Attempt.succeeded` says so, at most
  once a day per pair.
- Bounded memory. Each table keeps at most `max_tracked` keys (the least
  recently touched goes first; never one with an attempt in flight) and
  each key at most its limit's number of failures.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .accounts import DirectoryError, split_address

MAX_USERNAME = 320  # RFC 5321 4.5.3.1: 64 + @ + 255, rounded
REMEMBER_EVERY = 86400.0  # a known address is stored again at most once a day


class Decision(Enum):
    CHECK = "check"  # check the password now
    DELAY = "delay"  # wait `delay` seconds, then check it
    REFUSE = "refuse"  # do not check it: too many failures


@dataclass
class ThrottleLimits:
    per_address: int = 10  # failures from one address (unknown for the account)
    per_account: int = 20  # failures for one account from addresses unknown for it
    known_limit: int = 50  # failures for one account from an address known for it
    window: float = 600.0  # seconds a failure is remembered
    base_delay: float = 1.0
    max_delay: float = 16.0
    known_ttl: float = 30 * 86400.0  # how long a successful login makes an address known
    max_tracked: int = 10_000  # keys per table (addresses, accounts, pairs, known pairs)


def address_key(ip: str) -> str:
    """The address a failure is counted against: IPv4 as is, IPv4-mapped IPv6
    as IPv4, other IPv6 per /64 (RFC 6177: a subscriber gets a /64 or more)."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip[:64]  # "unknown" and the like: one key for all of them
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def account_key(username: str) -> str:
    """The account a failure is counted against, existing or not: the address as
    the directory finds it (case, IDNA), else the name as typed, lower-cased."""
    name = username.strip()[:MAX_USERNAME]
    try:
        localpart, domain = split_address(name)
    except (DirectoryError, UnicodeError):
        return name.lower()
    return f"{localpart}@{domain}"


@dataclass
class _Bucket:
    """Recent failures of one key, oldest first, each with the key of the other
    side of its pair (the account for an address, the address for an account)."""

    failures: deque[tuple[float, str]] = field(default_factory=deque)
    in_flight: int = 0

    def count(self, now: float, window: float) -> int:
        while self.failures and self.failures[0][0] <= now - window:
            self.failures.popleft()
        return len(self.failures) + self.in_flight


class _Table:
    """Buckets by key, at most `capacity` of them, least recently touched first out."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def get(self, key: str) -> _Bucket | None:
        return self.buckets.get(key)

    def touch(self, key: str) -> _Bucket:
        bucket = self.buckets.get(key)
        if bucket is None:
            self._make_room()
            bucket = self.buckets[key] = _Bucket()
        else:
            self.buckets.move_to_end(key)
        return bucket

    def _make_room(self) -> None:
        if len(self.buckets) < self.capacity:
            return
        for key, bucket in self.buckets.items():  # the oldest first
            if bucket.in_flight == 0:
                del self.buckets[key]
                return
        self.buckets.popitem(last=False)  # all in flight: cannot happen with connection limits

    def prune(self, key: str, now: float, window: float) -> None:
        bucket = self.buckets.get(key)
        if bucket is not None and bucket.count(now, window) == 0:
            del self.buckets[key]


@dataclass
class Verdict:
    decision: Decision
    delay: float  # seconds to wait before checking (DELAY) or before answering (REFUSE: 0)
    known: bool  # the address is known for the account
    address_failures: int  # the counts that led to it, for the log line
    account_failures: int


class Attempt:
    """One password check in flight: counted from `begin` on; end it with
    `succeeded()` or `failed()` exactly once (a refused one is ended already)."""

    def __init__(self, throttle: LoginThrottle, address: str, account: str, verdict: Verdict):
        self.throttle = throttle
        self.address = address
        self.account = account
        self.verdict = verdict
        self.done = verdict.decision is Decision.REFUSE

    @property
    def refused(self) -> bool:
        return self.verdict.decision is Decision.REFUSE

    def succeeded(self, now: float) -> bool:
        """True when the address became known for the account, or was last
        remembered more than REMEMBER_EVERY ago: worth storing (auth/known.py)."""
        if self.done:
            return False
        self.done = True
        return self.throttle._end(self, now, ok=True)

    def failed(self, now: float) -> None:
        if not self.done:
            self.done = True
            self.throttle._end(self, now, ok=False)


@dataclass
class ThrottleEntry:
    """A key that is throttled now, for the admin page."""

    kind: str  # "address", "account" or "pair" (account from a known address)
    key: str
    failures: int
    limit: int
    refused: bool  # at the limit: attempts are refused
    last: float  # time of the last failure


class LoginThrottle:
    def __init__(self, limits: ThrottleLimits | None = None) -> None:
        self.limits = limits = limits or ThrottleLimits()
        self.addresses = _Table(limits.max_tracked)
        self.accounts = _Table(limits.max_tracked)
        self.pairs = _Table(limits.max_tracked)  # "account address" of known pairs
        self.known: OrderedDict[tuple[str, str], float] = OrderedDict()  # -> last success

    # -- the attempt -------------------------------------------------------------------

    def is_known(self, account: str, address: str, now: float) -> bool:
        since = self.known.get((account, address))
        return since is not None and now - since < self.limits.known_ttl

    def begin(self, ip: str, username: str, now: float) -> Attempt:
        """Decide about one attempt and, unless refused, reserve its place in
        every bucket it counts against."""
        address, account = address_key(ip), account_key(username)
        known = self.is_known(account, address, now)
        sides = self._sides(address, account, known, touch=True)
        counts = [(b, b.count(now, self.limits.window), limit, other) for b, limit, other in sides]
        # Counts for the log line: the pair's stands for both when the address is known.
        address_failures = counts[0][1]
        account_failures = counts[-1][1]
        if any(n >= limit for _, n, limit, _ in counts):
            decision, delay = Decision.REFUSE, 0.0
            for bucket, n, limit, other in counts:
                if n >= limit:  # a refusal is a failure where it was refused: the block holds
                    self._record(bucket, now, other)
        else:
            delay = max(self._delay(n, limit) for _, n, limit, _ in counts)
            decision = Decision.DELAY if delay > 0 else Decision.CHECK
            for bucket, _, _, _ in counts:
                bucket.in_flight += 1
        verdict = Verdict(decision, delay, known, address_failures, account_failures)
        return Attempt(self, address, account, verdict)

    def _sides(
        self, address: str, account: str, known: bool, touch: bool
    ) -> list[tuple[_Bucket, int, str]]:
        """The buckets an attempt counts against, each with its limit and the key a
        failure there is tagged with: the address's first, the account's last. With
        touch=False, only those that exist (forgotten ones are skipped)."""
        limits = self.limits
        wanted = (
            [(self.pairs, f"{account} {address}", limits.known_limit, address)]
            if known
            else [
                (self.addresses, address, limits.per_address, account),
                (self.accounts, account, limits.per_account, address),
            ]
        )
        found = []
        for table, key, limit, other in wanted:
            bucket = table.touch(key) if touch else table.get(key)
            if bucket is not None:
                found.append((bucket, limit, other))
        return found

    def _delay(self, failures: int, limit: int) -> float:
        half = limit // 2
        if failures < max(half, 1):
            return 0.0
        return min(self.limits.base_delay * 2 ** (failures - half), self.limits.max_delay)

    def _record(self, bucket: _Bucket, now: float, other: str) -> None:
        bucket.failures.append((now, other))
        # Bounded: no more failures per key than the biggest limit needs.
        limits = self.limits
        while len(bucket.failures) > max(
            limits.per_address, limits.per_account, limits.known_limit
        ):
            bucket.failures.popleft()

    def _end(self, attempt: Attempt, now: float, ok: bool) -> bool:
        address, account = attempt.address, attempt.account
        # A bucket forgotten meanwhile (bounded memory) has nothing to release.
        for bucket, _, other in self._sides(address, account, attempt.verdict.known, touch=False):
            bucket.in_flight = max(0, bucket.in_flight - 1)
            if not ok:
                self._record(bucket, now, other)
        return self._forgive(address, account, now) if ok else False

    def _forgive(self, address: str, account: str, now: float) -> bool:
        """A success: clear this (address, account) pair's failures, and only
        theirs, and remember the address for the account (True: newly)."""
        window = self.limits.window
        for table, key, other in (
            (self.addresses, address, account),
            (self.accounts, account, address),
            (self.pairs, f"{account} {address}", address),
        ):
            bucket = table.get(key)
            if bucket is not None:
                bucket.failures = deque(f for f in bucket.failures if f[1] != other)
                table.prune(key, now, window)
        previous = self.known.get((account, address))
        self.remember(account, address, now)
        return previous is None or now - previous >= REMEMBER_EVERY

    def remember(self, account: str, address: str, when: float) -> None:
        """`address` (an address_key) is known for `account` since `when` (also
        what auth/known.py loads at start)."""
        self.known[(account, address)] = when
        self.known.move_to_end((account, address))
        while len(self.known) > self.limits.max_tracked:
            self.known.popitem(last=False)

    # -- what the admin sees and does ---------------------------------------------------------

    def throttled(self, now: float) -> list[ThrottleEntry]:
        """Keys with failures at or past the point where delays start, worst first."""
        found: list[ThrottleEntry] = []
        limits = self.limits
        for kind, table, limit in (
            ("address", self.addresses, limits.per_address),
            ("account", self.accounts, limits.per_account),
            ("pair", self.pairs, limits.known_limit),
        ):
            for key, bucket in list(table.buckets.items()):
                n = bucket.count(now, limits.window)
                if n and n >= max(limit // 2, 1) and bucket.failures:
                    found.append(
                        ThrottleEntry(kind, key, n, limit, n >= limit, bucket.failures[-1][0])
                    )
        found.sort(key=lambda e: (-e.failures / e.limit, e.kind, e.key))
        return found

    def lift(self, kind: str, key: str) -> bool:
        """Forget the failures of one key (the admin's "lift"). True if it had any."""
        table = {"address": self.addresses, "account": self.accounts, "pair": self.pairs}.get(kind)
        bucket = table.get(key) if table is not None else None
        if bucket is None or not bucket.failures:
            return False
        bucket.failures.clear()
        if bucket.in_flight == 0 and table is not None:
            del table.buckets[key]
        return True


def throttle_limits(auth: Any) -> ThrottleLimits:
    """The limits from the settings' [auth] section (config.AuthSettings)."""
    return ThrottleLimits(
        per_address=auth.max_failures,
        per_account=auth.max_failures_per_account,
        known_limit=auth.max_failures_known_address,
        window=auth.failure_window,
        base_delay=auth.failure_delay,
        max_delay=auth.max_throttle_delay,
        known_ttl=auth.known_address_days * 86400.0,
        max_tracked=auth.max_tracked,
    )
