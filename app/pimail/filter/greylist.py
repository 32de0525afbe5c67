"""Greylisting (RFC 6647): the first attempt from an unknown sender gets a
temporary failure; a real MTA retries after a while and passes, a spam bot
that fires once and moves on does not.

The caller asks at RCPT, once per recipient (of the SMTP stages RFC 6647
describes, RCPT is the one where the client, MAIL FROM and RCPT TO are all
known, and a 4yz reply there costs both sides the least):

    decision = greylist.check(peer_ip, mail_from, rcpt_to, spf_pass=spf_result == "pass")
    if decision.action == "defer":
        return decision.smtp_reply      # "451 4.7.1 Greylisted, please try again in 300 seconds"

and, after the DATA, for a message that passed SPF for its envelope sender's
domain, or DKIM with a signature aligned with that domain:

    greylist.record_authenticated(domain, peer_ip)

The triplet is (client network, envelope sender, recipient):

- the client's network, not its address: IPv4 /24, IPv6 /64. Big senders
  retry from another host of the same pool (Gmail, Outlook, SES); keyed by
  the exact address their mail would wait for hours.
- the envelope sender, lower case, with the parts that change on every
  message taken out where that is simple, so that a retry finds its triplet:
  BATV (`prvs=0123abcdef=user@` -> `user@`), SRS (the hash and time stamp of
  `SRS0=HHH=TT=domain=user@`), `+tag` (VERP `list+user=example.org@`), and
  runs of digits (`bounce-12345-...@` -> `bounce-#-...@`). The null sender
  (bounces, DSNs) is greylisted as "": MTAs retry bounces like any mail.
- the recipient, lower case.

What passes at once:

- a triplet that passed before, for `pass_ttl` seconds after it was last seen
  (36 days: a monthly newsletter keeps its place);
- a known sender: a domain given to `record_authenticated`, when the client
  is in a network that domain's authenticated mail came from, or when the
  caller says SPF passes for this MAIL FROM now (`spf_pass`). A domain alone
  is not enough: bots forge the big domains people get mail from.
- a client in an allow-listed network (`allow`, CIDR strings);
- authenticated users: not greylisted at all, the caller does not ask
  (submission, and AUTH on port 25).

A retry before `delay` is deferred again with the time left (the first
attempt's time stands: retrying harder does not help); a retry after `delay`
and within `retry_window` passes and the triplet is remembered. A triplet not
retried within the window, or not seen for `pass_ttl`, starts over.

Bounded growth: the table holds at most `max_rows` triplets (and as many
known senders). A flood of random senders only creates waiting triplets;
when the table is full, expired rows go first, then the oldest waiting
triplets; confirmed triplets go last, oldest first. `purge(now)` removes
expired rows; the server calls it now and then (hourly is plenty).

Storage: its own SQLite file, `<data>/greylist.db` (not precious: deleting it
only greylists everyone once more), created and migrated here:

    triplets (id INTEGER PRIMARY KEY,
              network TEXT,        -- '192.0.2.0/24', '2001:db8:1:2::/64'
              sender TEXT,         -- normalised envelope sender, '' for <>
              recipient TEXT,      -- lower case
              first_seen REAL,     -- Unix time of the first (deferred) attempt
              last_seen REAL,      -- Unix time of the latest attempt
              passed INTEGER,      -- attempts that passed, 0: still waiting
              UNIQUE (network, sender, recipient))
    known_senders (domain TEXT,    -- lower case, no trailing dot
                   network TEXT,   -- where its authenticated mail came from, '' unknown
                   last_seen REAL,
                   PRIMARY KEY (domain, network))

Each call is one short transaction on a local file (well under a millisecond
on a Pi's SD card in WAL mode); calls from several threads are serialised.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from pimail import db

log = logging.getLogger(__name__)

FILENAME = "greylist.db"

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE triplets (
        id INTEGER PRIMARY KEY,
        network TEXT NOT NULL,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        passed INTEGER NOT NULL DEFAULT 0,
        UNIQUE (network, sender, recipient)
    );
    CREATE INDEX triplets_waiting ON triplets(first_seen) WHERE passed = 0;
    CREATE INDEX triplets_last_seen ON triplets(last_seen);
    CREATE TABLE known_senders (
        domain TEXT NOT NULL,
        network TEXT NOT NULL,
        last_seen REAL NOT NULL,
        PRIMARY KEY (domain, network)
    );
    CREATE INDEX known_senders_last_seen ON known_senders(last_seen)
    """,
]

# Reasons, in GreyDecision.reason and the log.
ALLOW_LISTED = "allow-listed network"
PASSED_BEFORE = "passed before"
KNOWN_SENDER = "known sender"
RETRIED = "retried after the delay"
FIRST_ATTEMPT = "first attempt"
TOO_EARLY = "retry too early"

_BATV = re.compile(r"^(?:prvs|msprvs\d*|btv1)=+[^=@]+=+")
_SRS0 = re.compile(r"^srs0[=+-][^=]*=[^=]*=(.+)$")
_SRS1 = re.compile(r"^srs1[=+-][^=]*=([^=]*)==[^=]*=[^=]*=(.+)$")
_DIGITS = re.compile(r"(?<![a-z0-9])\d+(?![a-z0-9])")


@dataclass(frozen=True)
class GreyDecision:
    action: Literal["pass", "defer"]
    reason: str  # one of the reasons above
    retry_after: float = 0.0  # seconds until a retry can pass; 0 when passed

    @property
    def smtp_reply(self) -> str:
        """The reply to a deferred RCPT. RFC 6647: greylisting answers with a
        temporary failure, so that a conforming client queues and retries (RFC
        5321 4.5.4.1); 4.7.1 is "delivery not authorized" (RFC 3463 3.8)."""
        seconds = max(1, math.ceil(self.retry_after))
        return f"451 4.7.1 Greylisted, please try again in {seconds} seconds"


class Greylist:
    def __init__(
        self,
        path: Path,
        *,
        delay: float = 300.0,
        retry_window: float = 24 * 3600.0,
        pass_ttl: float = 36 * 86400.0,
        allow: Iterable[str] = (),
        max_rows: int = 50_000,
        ipv4_prefix: int = 24,
        ipv6_prefix: int = 64,
    ) -> None:
        """`allow`: CIDR strings ("192.0.2.0/24", "2001:db8::/32") whose clients
        always pass; ValueError for a malformed one."""
        if delay < 0 or retry_window <= delay or pass_ttl <= 0 or max_rows < 1:
            raise ValueError(
                "greylist: need 0 <= delay < retry_window, pass_ttl > 0, max_rows >= 1"
            )
        self.delay = delay
        self.retry_window = retry_window
        self.pass_ttl = pass_ttl
        self.max_rows = max_rows
        self.ipv4_prefix = ipv4_prefix
        self.ipv6_prefix = ipv6_prefix
        self.allow = [ipaddress.ip_network(cidr.strip(), strict=False) for cidr in allow]
        self._lock = threading.Lock()
        self._con = db.connect(path, MIGRATIONS)
        self._triplets = self._con.execute("SELECT count(*) FROM triplets").fetchone()[0]
        self._known = self._con.execute("SELECT count(*) FROM known_senders").fetchone()[0]

    # -- the check at RCPT --------------------------------------------------------

    def check(
        self,
        ip: str,
        sender: str,
        recipient: str,
        now: float | None = None,
        *,
        spf_pass: bool = False,
    ) -> GreyDecision:
        """Pass or defer this attempt, and remember it. `sender` is the MAIL FROM
        address ("" for the null sender), `recipient` one RCPT TO address;
        `spf_pass`: SPF (RFC 7208, known before RCPT) passed for the MAIL FROM
        domain on this connection. ValueError if `ip` is not an address."""
        now = time.time() if now is None else now
        address = _address(ip)
        if any(address in network for network in self.allow):
            return self._decide(ALLOW_LISTED, ip, sender, recipient)
        network = self.network(ip)
        key = (network, normalise_sender(sender), recipient.strip().strip("<>").lower())
        # Known senders: from a network their authenticated mail came from, or
        # anywhere when SPF vouches for this MAIL FROM now (no forging then).
        known_from = None if spf_pass else network
        with self._lock, db.transaction(self._con):
            reason, retry_after = self._record(key, _domain(key[1]), known_from, now)
        return self._decide(reason, ip, sender, recipient, retry_after)

    def _record(
        self, key: tuple[str, str, str], domain: str, known_from: str | None, now: float
    ) -> tuple[str, float]:
        """The reason to pass or defer, and the wait; the triplet updated."""
        row = self._con.execute(
            "SELECT id, first_seen, last_seen, passed FROM triplets"
            " WHERE network = ? AND sender = ? AND recipient = ?",
            key,
        ).fetchone()
        if row and row["passed"] and now - row["last_seen"] <= self.pass_ttl:
            self._con.execute(
                "UPDATE triplets SET last_seen = ?, passed = passed + 1 WHERE id = ?",
                (max(now, row["last_seen"]), row["id"]),
            )
            return PASSED_BEFORE, 0.0
        if domain and self._is_known(domain, known_from, now):
            return KNOWN_SENDER, 0.0
        if row and not row["passed"] and now - row["first_seen"] <= self.retry_window:
            waited = now - row["first_seen"]
            if waited >= self.delay:
                self._con.execute(
                    "UPDATE triplets SET last_seen = ?, passed = 1 WHERE id = ?", (now, row["id"])
                )
                return RETRIED, 0.0
            # Too early: the first attempt's time stands, retrying harder does not help.
            self._con.execute(
                "UPDATE triplets SET last_seen = ? WHERE id = ?",
                (max(now, row["last_seen"]), row["id"]),
            )
            return TOO_EARLY, min(self.delay, self.delay - waited)
        # New, or an expired record: the triplet starts over.
        if row:
            self._con.execute(
                "UPDATE triplets SET first_seen = ?, last_seen = ?, passed = 0 WHERE id = ?",
                (now, now, row["id"]),
            )
        else:
            self._con.execute(
                "INSERT INTO triplets (network, sender, recipient, first_seen, last_seen)"
                " VALUES (?, ?, ?, ?, ?)",
                (*key, now, now),
            )
            self._triplets += 1
            if self._triplets > self.max_rows:
                self._trim_triplets(now)
        return FIRST_ATTEMPT, self.delay

    def _decide(
        self, reason: str, ip: str, sender: str, recipient: str, retry_after: float = 0.0
    ) -> GreyDecision:
        if reason in (FIRST_ATTEMPT, TOO_EARLY):
            log.info("greylist defer ip=%s mail_from=<%s> rcpt_to=<%s> reason=%r retry_after=%d",
                     ip, sender, recipient, reason, math.ceil(retry_after))  # fmt: skip
            return GreyDecision("defer", reason, retry_after)
        level = logging.INFO if reason == RETRIED else logging.DEBUG
        log.log(level, "greylist pass ip=%s mail_from=<%s> rcpt_to=<%s> reason=%r",
                ip, sender, recipient, reason)  # fmt: skip
        return GreyDecision("pass", reason)

    def network(self, ip: str) -> str:
        """The network a client address is greylisted as: '192.0.2.0/24', '2001:db8:1:2::/64'."""
        address = _address(ip)
        if isinstance(address, ipaddress.IPv4Address):
            return str(ipaddress.IPv4Network((int(address), self.ipv4_prefix), strict=False))
        return str(ipaddress.IPv6Network((int(address), self.ipv6_prefix), strict=False))

    # -- known senders ------------------------------------------------------------

    def record_authenticated(
        self, domain: str, ip: str | None = None, now: float | None = None
    ) -> None:
        """Remember that mail from `domain` (the envelope sender's) passed SPF,
        or DKIM aligned with it, coming from `ip`. Call it after the DATA, once
        the message is accepted."""
        now = time.time() if now is None else now
        domain = domain.strip().rstrip(".").lower()
        if not domain:
            return
        network = self.network(ip) if ip else ""
        with self._lock, db.transaction(self._con):
            known = self._con.execute(
                "UPDATE known_senders SET last_seen = max(last_seen, ?)"
                " WHERE domain = ? AND network = ?",
                (now, domain, network),
            ).rowcount
            if not known:
                self._con.execute(
                    "INSERT INTO known_senders (domain, network, last_seen) VALUES (?, ?, ?)",
                    (domain, network, now),
                )
                self._known += 1
                if self._known > self.max_rows:
                    self._trim_known(now)
        log.debug("greylist known sender domain=%s network=%s", domain, network or "-")

    def known_sender(self, domain: str, ip: str | None = None, now: float | None = None) -> bool:
        """Whether authenticated mail from `domain` was seen within `pass_ttl`
        (from `ip`'s network, when `ip` is given)."""
        now = time.time() if now is None else now
        network = self.network(ip) if ip else None
        with self._lock:
            return self._is_known(domain.strip().rstrip(".").lower(), network, now)

    def _is_known(self, domain: str, network: str | None, now: float) -> bool:
        sql = "SELECT 1 FROM known_senders WHERE domain = ? AND last_seen >= ?"
        args: tuple[object, ...] = (domain, now - self.pass_ttl)
        if network is not None:
            sql += " AND network = ?"
            args += (network,)
        return self._con.execute(sql + " LIMIT 1", args).fetchone() is not None

    # -- bounds -------------------------------------------------------------------

    def purge(self, now: float | None = None) -> int:
        """Delete expired rows; how many went."""
        now = time.time() if now is None else now
        with self._lock, db.transaction(self._con):
            deleted = self._purge(now)
            # Recount, so that the counters cannot drift (a rolled-back insert).
            self._triplets = self._con.execute("SELECT count(*) FROM triplets").fetchone()[0]
            self._known = self._con.execute("SELECT count(*) FROM known_senders").fetchone()[0]
            return deleted

    def _purge(self, now: float) -> int:
        triplets = self._con.execute(
            "DELETE FROM triplets WHERE (passed = 0 AND first_seen < ?)"
            " OR (passed > 0 AND last_seen < ?)",
            (now - self.retry_window, now - self.pass_ttl),
        ).rowcount
        known = self._con.execute(
            "DELETE FROM known_senders WHERE last_seen < ?", (now - self.pass_ttl,)
        ).rowcount
        self._triplets -= triplets
        self._known -= known
        if triplets or known:
            log.info("greylist purged triplets=%d known_senders=%d", triplets, known)
        return triplets + known

    def _trim_triplets(self, now: float) -> None:
        """Back under the cap: expired rows first, then the oldest waiting
        triplets, then (only if every row is confirmed) the least recently seen.
        Down to 90% of the cap, so that a flood does not trim on every insert."""
        self._purge(now)
        target = self.max_rows * 9 // 10
        for where, order in (("passed = 0", "first_seen"), ("passed > 0", "last_seen")):
            excess = self._triplets - target
            if excess <= 0:
                return
            deleted = self._con.execute(
                f"DELETE FROM triplets WHERE id IN"
                f" (SELECT id FROM triplets WHERE {where} ORDER BY {order} LIMIT ?)",
                (excess,),
            ).rowcount
            self._triplets -= deleted
            log.warning("greylist full: dropped %s triplets count=%d max_rows=%d",
                        "waiting" if order == "first_seen" else "confirmed", deleted,
                        self.max_rows)  # fmt: skip

    def _trim_known(self, now: float) -> None:
        self._purge(now)
        excess = self._known - self.max_rows * 9 // 10
        if excess > 0:
            self._known -= self._con.execute(
                "DELETE FROM known_senders WHERE rowid IN"
                " (SELECT rowid FROM known_senders ORDER BY last_seen LIMIT ?)",
                (excess,),
            ).rowcount

    # -- the file -----------------------------------------------------------------

    def counts(self) -> tuple[int, int]:
        """(triplets, known senders) stored: for the admin pages and tests."""
        with self._lock:
            return self._triplets, self._known

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def __enter__(self) -> Greylist:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def normalise_sender(sender: str) -> str:
    """The envelope sender as the greylist keys it: lower case, without the
    parts that differ between messages of one sender (see the module docstring)."""
    sender = sender.strip().strip("<>").lower()
    local, at, domain = sender.rpartition("@")
    if not at:
        return sender
    local = _BATV.sub("", local)
    if m := _SRS0.match(local):
        local = f"srs0={m.group(1)}"  # SRS0=HHH=TT=domain=user: the hash and time go
    elif m := _SRS1.match(local):
        local = f"srs1={m.group(1)}=={m.group(2)}"
    local = local.split("+", 1)[0] or local
    local = _DIGITS.sub("#", local)
    return f"{local}@{domain}"


def _domain(sender: str) -> str:
    return sender.rpartition("@")[2] if "@" in sender else ""


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped  # a dual-stack socket's ::ffff:192.0.2.1
    return address
