"""Quota: how much mail an account stores, and whether a message still fits.

Usage is the sum of the sizes of the account's messages in the index (octets
as stored, CRLF), over all its folders, \\Deleted messages included until they
are expunged: what Dovecot's "count" quota backend counts, and the STORAGE
resource of RFC 9208 5.1 (which IMAP reports in units of 1024 octets). A copy
counts in full although COPY hard-links one file: the limit is the user's, not
the disk's. `usage()` is one SUM over a covering index (db.INDEX_MIGRATIONS 4):
about 0.5 ms at 10,000 messages, 4 ms at 50,000 (x86, bench/quota_usage.py).

The limit is `accounts.quota_bytes` in pimail.db (0: none; `pimail user
quota`, the admin page). Nothing caches it: each check takes it from an
`Account` read at that moment (the directory resolves every RCPT afresh, the
web loads the account for each request, IMAP re-reads it for each command
that checks), so a quota raised while the server runs counts at once.

Where a full account is refused, and where it is not, on purpose:

- SMTP RCPT, inbound (smtp/inbound.py) and the local recipients of submission
  (smtp/submission.py): 452 4.2.2 (RFC 3463 3.3, X.2.2 "mailbox full"),
  temporary as Dovecot's quota-status service answers Postfix: the sender's
  server retries, and the user can make room meanwhile. Refused when the
  account is at or over its limit, or when the size announced with MAIL FROM
  SIZE= (RFC 1870) would take it over. A message accepted at RCPT is then
  delivered whole, even if it ends past the limit (a sender that announced no
  SIZE): after DATA there is one reply for all recipients, and the next RCPT
  is refused anyway.
- An alias reaching several accounts is refused only when none of them has
  room (a copy it forwards to another domain counts as room); otherwise every
  account gets its copy, a full one included: no copy
  is dropped silently, no bounce goes to a (maybe forged) sender, one full
  member does not hold up the others. Each member's own address still refuses.
- postmaster@ and abuse@ of our domains are never refused for quota (RFC 5321
  4.5.1: mail to postmaster must work; RFC 2142 for abuse).
- IMAP APPEND and COPY: NO [OVERQUOTA] (RFC 9051 7.1, RFC 9208 4.3.1) when the
  account would end over its limit, checked on the store's writer thread
  (store/ops.py), so two APPENDs cannot both take the last room. MOVE never:
  its messages stay in the same account (one quota root), and a user over
  quota must be able to move mail to Trash and expunge it.
- Not checked: what the system delivers itself, DSNs (queue/runner.py
  `deliver_notice`) and vacation replies (smtp/vacation.py). A DSN tells the
  user that their own mail failed; refused, it would be lost, since a bounce
  is never bounced (RFC 5321 4.5.5).
- Sending is never refused for the sender's own quota (submission, webmail).
  The webmail's Sent copy and drafts are APPENDs and do count: a failed Sent
  copy leaves the message sent and says so on the page (web/mail.py).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..auth.accounts import Account

log = logging.getLogger(__name__)

# RFC 5321 4.5.1 (postmaster), RFC 2142 (abuse): always take mail.
EXEMPT_LOCALPARTS = frozenset({"postmaster", "abuse"})

_USAGE = (
    "SELECT coalesce(sum(m.size), 0) FROM mailboxes b JOIN messages m ON m.mailbox_id = b.id"
    " WHERE b.account_id = ?"
)


def usage(con: sqlite3.Connection, account_id: int) -> int:
    """Octets the account stores: the sum of its messages' sizes, all folders."""
    return int(con.execute(_USAGE, (account_id,)).fetchone()[0])


@dataclass(frozen=True)
class Quota:
    used: int  # octets
    limit: int  # octets; 0: no quota

    @property
    def full(self) -> bool:
        """At or over the limit: nothing more goes in."""
        return self.limit > 0 and self.used >= self.limit

    def fits(self, size: int) -> bool:
        """Whether `size` more octets stay within the limit (RFC 9051 7.1
        OVERQUOTA: "the user would be over quota after the operation")."""
        return self.limit <= 0 or self.used + size <= self.limit

    def takes(self, size: int) -> bool:
        """SMTP RCPT: not full, and the announced size (0: none) fits."""
        return not self.full and self.fits(size)


def exempt(address: str) -> bool:
    """postmaster@ and abuse@ (any of our domains, any case)."""
    return address.rpartition("@")[0].strip('"').lower() in EXEMPT_LOCALPARTS


def declared_size(mail_options: Iterable[str]) -> int:
    """The SIZE= of MAIL FROM (RFC 1870), 0 when none or malformed (aiosmtpd
    has refused a malformed one already, and one above its own limit)."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit() and len(value) < 20:
            return int(value)
    return 0


class QuotaReader:
    """Usage for code on the event loop (SMTP): one thread with a read-only
    connection of its own (the store's connection belongs to its writer, and a
    SUM may take milliseconds at 50,000 messages: not on the loop)."""

    def __init__(self, index_path: Path) -> None:
        self.index_path = index_path
        self._pool: ThreadPoolExecutor | None = None
        self._con: sqlite3.Connection | None = None

    def _usages(self, account_ids: list[int]) -> dict[int, int]:
        if self._con is None:
            self._con = sqlite3.connect(
                f"file:{self.index_path}?mode=ro", uri=True, check_same_thread=False, timeout=30
            )
            self._con.execute("PRAGMA query_only=1")
            self._con.execute("PRAGMA cache_size=-512")
        return {account_id: usage(self._con, account_id) for account_id in account_ids}

    async def quotas(self, accounts: Iterable[Account]) -> dict[int, Quota]:
        """Quota of each account that has a limit (the others are not read)."""
        limited = {a.id: a.quota_bytes for a in accounts if a.quota_bytes > 0}
        if not limited:
            return {}
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quota-reader")
        loop = asyncio.get_running_loop()
        used = await loop.run_in_executor(self._pool, self._usages, list(limited))
        return {account_id: Quota(used[account_id], limit) for account_id, limit in limited.items()}

    async def rcpt_refusal(self, address: str, accounts: list[Account], size: int) -> str | None:
        """RCPT TO `address`, which reaches `accounts`: the 452 4.2.2 refusal
        when none of them can take a message of `size` octets (0: unknown),
        else None. See the module's docstring for who is never refused."""
        if not accounts or exempt(address) or any(a.quota_bytes <= 0 for a in accounts):
            return None
        quotas = await self.quotas(accounts)
        if any(q.takes(size) for q in quotas.values()):
            return None
        log.info("quota refused rcpt=<%s> size=%d used=%s", address, size,
                 ",".join(f"{q.used}/{q.limit}" for q in quotas.values()))  # fmt: skip
        if size and not any(q.full for q in quotas.values()):
            return f"452 4.2.2 <{address}>: Mailbox full: no room for {size} octets"
        return f"452 4.2.2 <{address}>: Mailbox full, try again later"

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            con, self._con = self._con, None
            if con is not None:
                pool.submit(con.close).result()
            pool.shutdown(wait=True)
