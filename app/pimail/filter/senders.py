"""Each account's own allow and block lists of senders.

An entry is an address (`bob@example.org`) or a domain (`example.org`, also
written `@example.org` or `*.example.org`), which covers its subdomains too.
The most specific entry decides: an address entry before its domain's, a
subdomain's before its parent's, so "block example.org, but allow
boss@example.org" works.

What an entry does for the account's copy (filter/pipeline.py):

- block: the copy goes to Junk, whatever it scores (USER_BLOCK). The message
  is not refused for it: like a mail provider's "block sender", the user can
  still look, and the sender learns nothing.
- allow: the copy is never put in Junk and never refused for its score
  (USER_ALLOW). Viruses, MIME bombs and a DMARC p=reject are still refused:
  those are about the message, not the sender.

An allow entry applies only to an address this server has authenticated,
because anyone can write any From: and MAIL FROM. An address counts as
authenticated when (RFC 7489's identifiers):

- it is the MAIL FROM and SPF passed for it (RFC 7208), or
- it is a From: address and DMARC passed for its domain, or a DKIM signature
  passed whose d= is aligned (relaxed, RFC 7489 3.1.1) with its domain.

So a friend whose domain publishes no SPF and signs nothing cannot be
allow-listed; their mail is scored like any other. A block entry applies to
either address as written: a spammer gains nothing by forging a blocked one.

Storage: the `sender_lists` table of pimail.db (db.MAIN_MIGRATIONS 3), read on
every message (one indexed query) so that a change from the CLI or the
webmail applies to the next message.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ..auth.accounts import DirectoryError, normalize_domain
from ..db import transaction

ALLOW, BLOCK = "allow", "block"
KINDS = (ALLOW, BLOCK)
MAX_ENTRIES = 1000  # per account: a list, not a database


class ListError(ValueError):
    """An entry or request the lists refuse, with a message for the user."""


@dataclass(frozen=True)
class Sender:
    """One address a message claims to be from, and whether it is proven."""

    address: str  # local@domain, as it came
    authenticated: bool


def normalize_entry(text: str) -> str:
    """'Bob@Example.ORG' -> 'bob@example.org'; '@Example.org', '*.example.org'
    -> 'example.org'. ListError when it is neither an address nor a domain."""
    entry = text.strip()
    if not entry or len(entry) > 320 or any(c.isspace() or c in '<>()[]\\",;:' for c in entry):
        raise ListError(f"not an address or domain: {text!r}")
    if entry.startswith("*."):
        entry = entry[2:]
    local, at, domain = entry.rpartition("@")
    if at and not local:  # '@example.org'
        local, at = "", ""
    if at and (len(local) > 64 or "@" in local or local.startswith(".") or local.endswith(".")):
        raise ListError(f"not an address or domain: {text!r}")
    try:
        domain = normalize_domain(domain)
    except DirectoryError as e:
        raise ListError(f"not an address or domain: {text!r}") from e
    return f"{local.lower()}@{domain}" if at else domain


def _candidates(address: str) -> list[str]:
    """The entries that could match an address, most specific first."""
    try:
        address = normalize_entry(address)
    except ListError:
        return []
    _, at, domain = address.rpartition("@")
    if not at:
        return []
    labels = domain.split(".")
    return [address] + [".".join(labels[i:]) for i in range(len(labels) - 1)]


class SenderLists:
    """The lists in pimail.db; one connection, used from one thread at a time."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def set(self, account_id: int, kind: str, entries: Iterable[str]) -> list[str]:
        """Put entries on the allow or block list (moving them off the other one).
        Returns them normalised; ListError for a bad one (nothing is stored then)."""
        if kind not in KINDS:
            raise ListError(f"unknown list {kind!r}")
        normalized = list(dict.fromkeys(normalize_entry(e) for e in entries))
        now = int(time.time())
        with transaction(self.con):
            count = self.con.execute(
                "SELECT count(*) FROM sender_lists WHERE account_id = ?", (account_id,)
            ).fetchone()[0]
            if count + len(normalized) > MAX_ENTRIES:
                raise ListError(f"at most {MAX_ENTRIES} entries per account")
            self.con.executemany(
                "INSERT INTO sender_lists (account_id, entry, kind, created) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (account_id, entry) DO UPDATE SET kind = excluded.kind",
                [(account_id, entry, kind, now) for entry in normalized],
            )
        return normalized

    def remove(self, account_id: int, entries: Iterable[str]) -> int:
        """Take entries off whichever list they are on; how many were there."""
        normalized = [normalize_entry(e) for e in entries]
        with transaction(self.con):
            return sum(
                self.con.execute(
                    "DELETE FROM sender_lists WHERE account_id = ? AND entry = ?",
                    (account_id, entry),
                ).rowcount
                for entry in normalized
            )

    def entries(self, account_id: int) -> list[tuple[str, str]]:
        """(kind, entry) of one account, allow before block, then by entry."""
        rows = self.con.execute(
            "SELECT kind, entry FROM sender_lists WHERE account_id = ? ORDER BY kind, entry",
            (account_id,),
        )
        return [(row[0], row[1]) for row in rows]

    def decide(self, account_ids: Iterable[int], senders: Iterable[Sender]) -> dict[int, str]:
        """ALLOW or BLOCK for each account whose lists speak about these senders
        (accounts they say nothing for are absent). A block on any sender wins;
        an allow needs an authenticated sender (module docstring)."""
        accounts = list(dict.fromkeys(account_ids))
        candidates = {s: _candidates(s.address) for s in senders}
        names = sorted({c for cs in candidates.values() for c in cs})
        if not accounts or not names:
            return {}
        rows = self.con.execute(
            "SELECT account_id, entry, kind FROM sender_lists"
            f" WHERE account_id IN ({','.join('?' * len(accounts))})"
            f" AND entry IN ({','.join('?' * len(names))})",
            [*accounts, *names],
        ).fetchall()
        lists: dict[int, dict[str, str]] = {}
        for account_id, entry, kind in rows:
            lists.setdefault(account_id, {})[entry] = kind
        decisions: dict[int, str] = {}
        for account_id, entries in lists.items():
            found = set()
            for sender, names_of_sender in candidates.items():
                kind = next((entries[n] for n in names_of_sender if n in entries), None)
                if kind == BLOCK or (kind == ALLOW and sender.authenticated):
                    found.add(kind)
            if BLOCK in found:
                decisions[account_id] = BLOCK
            elif ALLOW in found:
                decisions[account_id] = ALLOW
        return decisions
