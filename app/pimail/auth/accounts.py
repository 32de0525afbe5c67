"""The directory: domains, accounts and aliases in `pimail.db`, and recipient resolution.

Addresses are compared case-insensitively: local parts are stored lower-cased,
domains as lower-case IDNA A-labels. Account local parts are restricted to a
safe set (they name a directory on disk); aliases may use any local part.

Nothing here caches: the CLI may change the directory while the server runs,
and the next RCPT TO sees the change.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from enum import Enum

from ..db import transaction

# Letters and digits of any script, and . _ - inside. No '+': it is the
# plus-addressing separator. No leading dot, no '..': the name is a directory.
_ACCOUNT_LOCALPART = re.compile(r"^(?!\.)(?!.*\.\.)[\w.-]{1,64}(?<!\.)$")
_DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
MAX_ALIAS_DEPTH = 8


class DirectoryError(Exception):
    """A request the directory refuses, with a message for the user."""


@dataclass(frozen=True)
class Account:
    id: int
    localpart: str
    domain: str
    is_admin: bool
    quota_bytes: int

    @property
    def address(self) -> str:
        return f"{self.localpart}@{self.domain}"


class Resolution(Enum):
    LOCAL = "local"  # delivered to the accounts listed
    UNKNOWN_USER = "unknown"  # our domain, nobody there: 550 5.1.1
    RELAY_DENIED = "relay"  # not our domain: 554 5.7.1


def normalize_domain(domain: str) -> str:
    """Lower-case IDNA A-label; DirectoryError if it is not a host name."""
    domain = domain.strip().rstrip(".").lower()
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError as e:
        raise DirectoryError(f"not a valid domain name: {domain!r}") from e
    labels = ascii_domain.split(".")
    if (
        len(ascii_domain) > 253
        or len(labels) < 2
        or not all(_DOMAIN_LABEL.match(label) for label in labels)
    ):
        raise DirectoryError(f"not a valid domain name: {domain!r}")
    return ascii_domain


def split_address(address: str) -> tuple[str, str]:
    """'User@Example.ORG' -> ('user', 'example.org'). DirectoryError if malformed."""
    localpart, at, domain = address.rpartition("@")
    if not at or not localpart:
        raise DirectoryError(f"not an address: {address!r}")
    return localpart.lower(), normalize_domain(domain)


class Directory:
    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    # -- domains --------------------------------------------------------

    def add_domain(self, name: str) -> str:
        name = normalize_domain(name)
        try:
            self.con.execute(
                "INSERT INTO domains (name, created) VALUES (?, ?)", (name, int(time.time()))
            )
        except sqlite3.IntegrityError as e:
            raise DirectoryError(f"domain {name} exists already") from e
        return name

    def remove_domain(self, name: str) -> None:
        name = normalize_domain(name)
        (count,) = self.con.execute(
            "SELECT count(*) FROM accounts JOIN domains d ON d.id = domain_id WHERE d.name = ?",
            (name,),
        ).fetchone()
        if count:
            raise DirectoryError(f"domain {name} still has {count} account(s): remove them first")
        if self.con.execute("DELETE FROM domains WHERE name = ?", (name,)).rowcount == 0:
            raise DirectoryError(f"no domain {name}")

    def domains(self) -> list[str]:
        return [r[0] for r in self.con.execute("SELECT name FROM domains ORDER BY name")]

    def is_local_domain(self, name: str) -> bool:
        return self._domain_id(name) is not None

    def _domain_id(self, name: str) -> int | None:
        row = self.con.execute("SELECT id FROM domains WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def require_domain(self, name: str) -> int:
        """The id of local domain `name` (normalised, A-label), else DirectoryError."""
        name = normalize_domain(name)
        domain_id = self._domain_id(name)
        if domain_id is None:
            raise DirectoryError(f"{name} is not a local domain (pimail domain add {name})")
        return domain_id

    # -- accounts -------------------------------------------------------

    def add_account(self, address: str, password_hash: str, is_admin: bool = False) -> Account:
        localpart, domain = split_address(address)
        if not _ACCOUNT_LOCALPART.match(localpart):
            raise DirectoryError(
                f"account name {localpart!r}: use letters, digits, '.', '-', '_' "
                "(no '+', no leading, trailing or double dot)"
            )
        domain_id = self.require_domain(domain)
        if self._alias_targets(domain_id, localpart):
            raise DirectoryError(f"{localpart}@{domain} is an alias already")
        try:
            with transaction(self.con):
                # Never an id a removed account had: the mail index and the Bayes
                # database are keyed by it (db.MAIN_MIGRATIONS 6).
                (account_id,) = self.con.execute(
                    "SELECT max(coalesce((SELECT last FROM id_sequence WHERE name = 'accounts'),"
                    " 0), coalesce((SELECT max(id) FROM accounts), 0)) + 1"
                ).fetchone()
                self.con.execute(
                    "INSERT INTO accounts (id, domain_id, localpart, password_hash, is_admin,"
                    " created) VALUES (?, ?, ?, ?, ?, ?)",
                    (account_id, domain_id, localpart, password_hash, int(is_admin),
                     int(time.time())),
                )  # fmt: skip
                self.con.execute(
                    "INSERT INTO id_sequence (name, last) VALUES ('accounts', ?)"
                    " ON CONFLICT (name) DO UPDATE SET last = excluded.last",
                    (account_id,),
                )
        except sqlite3.IntegrityError as e:
            raise DirectoryError(f"account {localpart}@{domain} exists already") from e
        return Account(account_id, localpart, domain, is_admin, 0)

    def remove_account(self, address: str) -> Account:
        account = self.account(address)
        if account is None:
            raise DirectoryError(f"no account {address}")
        self.con.execute("DELETE FROM accounts WHERE id = ?", (account.id,))
        return account

    def set_password(self, address: str, password_hash: str) -> None:
        account = self.account(address)
        if account is None:
            raise DirectoryError(f"no account {address}")
        self.con.execute(
            "UPDATE accounts SET password_hash = ? WHERE id = ?", (password_hash, account.id)
        )

    def password_hash(self, account_id: int) -> str | None:
        row = self.con.execute(
            "SELECT password_hash FROM accounts WHERE id = ?", (account_id,)
        ).fetchone()
        return row[0] if row else None

    _ACCOUNT_SELECT = (
        "SELECT a.id, a.localpart, d.name, a.is_admin, a.quota_bytes"
        " FROM accounts a JOIN domains d ON d.id = a.domain_id"
    )

    def account(self, address: str) -> Account | None:
        try:
            localpart, domain = split_address(address)
        except DirectoryError:
            return None
        row = self.con.execute(
            self._ACCOUNT_SELECT + " WHERE d.name = ? AND a.localpart = ?", (domain, localpart)
        ).fetchone()
        return Account(row[0], row[1], row[2], bool(row[3]), row[4]) if row else None

    def account_by_id(self, account_id: int) -> Account | None:
        row = self.con.execute(self._ACCOUNT_SELECT + " WHERE a.id = ?", (account_id,)).fetchone()
        return Account(row[0], row[1], row[2], bool(row[3]), row[4]) if row else None

    def accounts(self) -> list[Account]:
        rows = self.con.execute(self._ACCOUNT_SELECT + " ORDER BY d.name, a.localpart")
        return [Account(r[0], r[1], r[2], bool(r[3]), r[4]) for r in rows]

    # -- aliases --------------------------------------------------------

    def add_alias(self, source: str, targets: list[str]) -> None:
        """`source` is local@domain, or @domain for the catch-all."""
        localpart, domain = self._alias_source(source)
        domain_id = self.require_domain(domain)
        if localpart and self.account(f"{localpart}@{domain}"):
            raise DirectoryError(f"{localpart}@{domain} is an account")
        normalized = []
        for target in targets:
            # A target in another domain is forwarded there through the queue.
            t_local, t_domain = split_address(target)
            normalized.append(f"{t_local}@{t_domain}")
        if not normalized:
            raise DirectoryError("an alias needs at least one target")
        with transaction(self.con):
            for target in normalized:
                self.con.execute(
                    "INSERT OR IGNORE INTO aliases (domain_id, localpart, target) VALUES (?, ?, ?)",
                    (domain_id, localpart, target),
                )

    def remove_alias(self, source: str, targets: list[str] | None = None) -> None:
        localpart, domain = self._alias_source(source)
        domain_id = self.require_domain(domain)
        if targets:
            removed = 0
            for target in targets:
                t_local, t_domain = split_address(target)
                removed += self.con.execute(
                    "DELETE FROM aliases WHERE domain_id = ? AND localpart = ? AND target = ?",
                    (domain_id, localpart, f"{t_local}@{t_domain}"),
                ).rowcount
        else:
            removed = self.con.execute(
                "DELETE FROM aliases WHERE domain_id = ? AND localpart = ?", (domain_id, localpart)
            ).rowcount
        if not removed:
            raise DirectoryError(f"no alias {source}")

    def aliases(self) -> list[tuple[str, list[str]]]:
        rows = self.con.execute(
            "SELECT a.localpart, d.name, a.target FROM aliases a"
            " JOIN domains d ON d.id = a.domain_id ORDER BY d.name, a.localpart, a.target"
        )
        out: dict[str, list[str]] = {}
        for localpart, domain, target in rows:
            out.setdefault(f"{localpart}@{domain}", []).append(target)
        return list(out.items())

    def _alias_source(self, source: str) -> tuple[str, str]:
        if source.startswith("@"):
            return "", normalize_domain(source[1:])
        return split_address(source)

    def _alias_targets(self, domain_id: int, localpart: str) -> list[str]:
        rows = self.con.execute(
            "SELECT target FROM aliases WHERE domain_id = ? AND localpart = ?",
            (domain_id, localpart),
        )
        return [r[0] for r in rows]

    # -- resolution -----------------------------------------------------

    def resolve(
        self, address: str, forwards: list[str] | None = None
    ) -> tuple[Resolution, list[Account]]:
        """Where mail for `address` goes: exact account, exact alias, the
        address without its +tag, then the domain's catch-all. Alias targets
        in other domains are appended to `forwards` (when given: the caller
        can forward; else they count as nobody)."""
        localpart, at, domain = address.rpartition("@")
        try:
            domain = normalize_domain(domain)
        except DirectoryError:
            return Resolution.RELAY_DENIED, []  # an IP literal or garbage: not ours
        domain_id = self._domain_id(domain)
        if domain_id is None:
            return Resolution.RELAY_DENIED, []
        localpart = localpart.lower()
        if not at or not localpart:
            return Resolution.UNKNOWN_USER, []
        found: list[str] = []
        accounts = self._resolve_local(domain_id, domain, localpart, set(), 0, forwards=found)
        if forwards is not None:
            forwards.extend(dict.fromkeys(found))
        if accounts or (found and forwards is not None):
            return Resolution.LOCAL, accounts
        return Resolution.UNKNOWN_USER, []

    def owners(self, address: str) -> list[Account]:
        """The accounts `address` belongs to, as a sender: the account itself, a
        +tag of it, or an alias that reaches it. A catch-all makes nobody an
        owner (else anyone could send as any address of the domain)."""
        try:
            localpart, domain = split_address(address)
        except DirectoryError:
            return []
        domain_id = self._domain_id(domain)
        if domain_id is None:
            return []
        return self._resolve_local(domain_id, domain, localpart, set(), 0, catch_all=False)

    def _resolve_local(
        self,
        domain_id: int,
        domain: str,
        localpart: str,
        seen: set[str],
        depth: int,
        catch_all: bool = True,
        forwards: list[str] | None = None,
    ) -> list[Account]:
        candidates = [localpart]
        base, plus, _tag = localpart.partition("+")
        if plus and base:
            candidates.append(base)
        for candidate in candidates:
            found = self._expand(domain_id, domain, candidate, seen, depth, forwards)
            if found is not None:
                return found
        if not catch_all:
            return []
        found = self._expand(domain_id, domain, "", seen, depth, forwards)
        return found or []

    def _expand(
        self,
        domain_id: int,
        domain: str,
        localpart: str,
        seen: set[str],
        depth: int,
        forwards: list[str] | None = None,
    ) -> list[Account] | None:
        """Accounts for exactly localpart@domain (an account or an alias), or None."""
        if localpart:
            account = self.account(f"{localpart}@{domain}")
            if account is not None:
                return [account]
        targets = self._alias_targets(domain_id, localpart)
        if not targets:
            return None
        key = f"{localpart}@{domain}"
        if key in seen or depth >= MAX_ALIAS_DEPTH:
            return []  # a loop or a chain too long: deliver to nobody through here
        seen = seen | {key}
        out: dict[int, Account] = {}
        for target in targets:
            t_local, t_domain = target.rsplit("@", 1)
            t_domain_id = self._domain_id(t_domain)
            if t_domain_id is None:
                if forwards is not None:
                    forwards.append(target)
                continue
            # An alias target is taken as written: no catch-all behind it.
            resolved = self._resolve_local(
                t_domain_id, t_domain, t_local, seen, depth + 1, catch_all=False,
                forwards=forwards,
            )  # fmt: skip
            for account in resolved:
                out[account.id] = account
        return list(out.values())
