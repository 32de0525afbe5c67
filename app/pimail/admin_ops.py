"""Administration operations shared by the `pimail` command and the web pages.

Each function takes the settings and a `Directory` (or a connection to
`pimail.db`) and does one administrator's action the same way wherever it is
asked for: adding a domain makes its DKIM keys, removing an account moves its
mail aside, a stored setting is validated like `pimail config set` does.

Nothing here prints or reads a terminal: results come back as values and
refusals as `DirectoryError` / `ValueError` with a message for the user. All
functions block (SQLite with synchronous=FULL, key generation, scrypt): the
web calls them from a worker thread with a connection of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import config
from .auth.accounts import Account, Directory, DirectoryError, normalize_domain, split_address

if TYPE_CHECKING:
    from .dns.records import Record
    from .queue.dkim import DkimKey
    from .queue.store import QueueStore

MIN_PASSWORD = 8
HEADER_CAP = 64 * 1024  # what `queue show` reads of a queued message


# -- domains ----------------------------------------------------------------------


def add_domain(directory: Directory, name: str) -> tuple[str, list[DkimKey]]:
    """Add a local domain and make its DKIM keys (active at once: nothing is
    published yet, so nothing can break). Returns (A-label name, the keys)."""
    from .queue import dkim

    domain = directory.add_domain(name)
    return domain, dkim.generate_keys(directory.con, domain)


def local_domain(directory: Directory, name: str) -> str:
    """`name` normalised (A-label), if it is a local domain; else DirectoryError."""
    from .auth.accounts import normalize_domain

    directory.require_domain(name)
    return normalize_domain(name)


def dns_records(settings: config.Settings, directory: Directory, domain: str) -> list[Record]:
    """What to publish for a local domain (`pimail dns`), with its DKIM keys."""
    from .dns import records
    from .queue import dkim

    domain = local_domain(directory, domain)
    return records.records(settings, domain, dkim.keys(directory.con, domain))


# -- accounts ---------------------------------------------------------------------


def check_password(password: str, minimum: int = MIN_PASSWORD) -> str:
    if len(password) < minimum:
        raise ValueError(f"a password needs at least {minimum} characters")
    if len(password) > 1024:
        raise ValueError("a password has at most 1024 characters")
    return password


def check_new_account(directory: Directory, address: str) -> str:
    """The normalised address of an account that could be added now, else
    DirectoryError (what `add_account` would say, before any password is hashed)."""
    from .auth.accounts import _ACCOUNT_LOCALPART

    localpart, domain = split_address(address)
    if not _ACCOUNT_LOCALPART.match(localpart):
        raise DirectoryError(
            f"account name {localpart!r}: use letters, digits, '.', '-', '_' "
            "(no '+', no leading, trailing or double dot)"
        )
    directory.require_domain(domain)
    if directory.account(f"{localpart}@{domain}") is not None:
        raise DirectoryError(f"account {localpart}@{domain} exists already")
    return f"{localpart}@{domain}"


def remove_account(
    settings: config.Settings, directory: Directory, address: str
) -> tuple[Account, Path | None]:
    """Remove an account; its Maildir is moved to <data>/removed/<domain>/, not
    deleted. Returns the account and where its mail is kept (None: it had none)."""
    account = directory.remove_account(address)
    maildir = settings.mail_dir / account.domain / account.localpart
    if not maildir.is_dir():
        return account, None
    target = (
        settings.data_dir
        / "removed"
        / account.domain
        / f"{account.localpart}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(maildir), target)
    return account, target


def _account(directory: Directory, address: str) -> Account:
    account = directory.account(address)
    if account is None:
        raise DirectoryError(f"no account {address}")
    return account


def set_quota(directory: Directory, address: str, quota_bytes: int) -> Account:
    """Store an account's quota (0: none)."""
    if quota_bytes < 0:
        raise ValueError("a quota cannot be negative")
    account = _account(directory, address)
    directory.con.execute(
        "UPDATE accounts SET quota_bytes = ? WHERE id = ?", (quota_bytes, account.id)
    )
    return account


def set_admin(directory: Directory, address: str, is_admin: bool) -> Account:
    """Make an account an administrator, or not; the last one stays one."""
    account = _account(directory, address)
    if not is_admin and account.is_admin:
        admins = sum(1 for a in directory.accounts() if a.is_admin)
        if admins <= 1:
            raise DirectoryError(f"{account.address} is the last administrator")
    directory.con.execute(
        "UPDATE accounts SET is_admin = ? WHERE id = ?", (int(is_admin), account.id)
    )
    return account


# -- settings in the database -----------------------------------------------------


def store_setting(con: sqlite3.Connection, key: str, value: Any) -> None:
    """`pimail config set`: validated, stored in pimail.db's settings table;
    the server reads it at its next start (config.load)."""
    config.validate_override(key, value)
    con.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?)"
        " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, json.dumps(value)),
    )


def unset_setting(con: sqlite3.Connection, key: str) -> None:
    con.execute("DELETE FROM settings WHERE key = ?", (key,))


# -- headless setup -----------------------------------------------------------------


def apply_setup(
    settings: config.Settings,
    directory: Directory,
    setup: dict[str, Any],
    report: Callable[[str], None] | None = None,
) -> list[str]:
    """What a pimail.toml [setup] table asks for, idempotently: what exists is
    left as it is. Returns one line per change (each also given to `report`
    as it happens); ValueError for a bad table, after what came before it.

    [setup]
    domain = "example.org"
    hostname = "mail.example.org"       # optional
    admin = "admin@example.org"
    password_hash = "$scrypt$..."       # from `pimail user hash`
    setup_token = "..."                 # optional: the web wizard asks for it

    [setup.settings]                    # optional: settings kept in pimail.db, as
    "filter.greylist" = false           # `pimail config set` would (dotted keys, or
    [setup.settings.dns]                # tables); read at pimail's next start
    stub_zones = ["lan.example=192.168.1.5"]
    """
    from .queue import dkim

    done: list[str] = []

    def say(line: str) -> None:
        done.append(line)
        if report is not None:
            report(line)

    if "domain" in setup and not directory.is_local_domain(setup["domain"]):
        say(f"added domain {directory.add_domain(setup['domain'])}")
    if "domain" in setup and dkim.ensure_keys(directory.con, setup["domain"]):
        say(f"DKIM keys made for {setup['domain']} (pimail dns {setup['domain']})")
    if "hostname" in setup:
        store_setting(directory.con, "hostname", setup["hostname"])
        say(f"hostname = {setup['hostname']}")
    if "admin" in setup:
        stored = setup.get("password_hash", "")
        if not isinstance(stored, str) or not stored.startswith("$scrypt$"):
            raise ValueError("[setup] admin needs a password_hash (pimail user hash)")
        if directory.account(setup["admin"]) is None:
            account = directory.add_account(setup["admin"], stored, is_admin=True)
            say(f"added account {account.address} (admin)")
        if "domain" in setup and (
            line := ensure_postmaster(directory, setup["domain"], setup["admin"])
        ):
            say(line)
    if "settings" in setup:
        values = setup["settings"]
        if not isinstance(values, dict):
            raise ValueError("[setup] settings must be a table of settings")
        flat = config.flatten(values)
        for key, value in flat.items():  # all checked before any is stored
            config.validate_override(key, value)
        for key, value in flat.items():
            store_setting(directory.con, key, value)
            say(f"{key} = {json.dumps(value)}")
    if "setup_token" in setup:
        write_private(settings.data_dir / "setup-token", str(setup["setup_token"]) + "\n")
        say("setup token stored")
    return done


def ensure_postmaster(directory: Directory, domain: str, admin: str) -> str | None:
    """RFC 5321 4.5.1: postmaster@ every local domain must take mail (DMARC and
    TLS reports, bounces' replies go there): an alias to the administrator when no
    account or alias has the name. The change made, or None."""
    postmaster = f"postmaster@{normalize_domain(domain)}"
    if directory.account(postmaster) is not None or postmaster in dict(directory.aliases()):
        return None
    directory.add_alias(postmaster, [admin])
    return f"alias {postmaster} -> {admin}"


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner reads (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


# -- the outbound queue ---------------------------------------------------------------


@dataclass(frozen=True)
class QueueDetail:
    """`pimail queue show`: the message's record and the start of its header."""

    message: Any  # queue.store.QueuedMessage
    header: str


def queue_page(queue: QueueStore, limit: int) -> tuple[list[Any], int]:
    """The oldest `limit` queued messages (with their recipients), and how many
    there are in all: a long queue is not loaded whole."""
    (total,) = queue.con.execute("SELECT count(*) FROM messages").fetchone()
    ids = [
        r[0]
        for r in queue.con.execute("SELECT id FROM messages ORDER BY created, id LIMIT ?", (limit,))
    ]
    return [m for m in map(queue.message, ids) if m is not None], total


def queue_detail(queue: QueueStore, message_id: str) -> QueueDetail | None:
    from .store import headers

    message = queue.message(message_id)
    if message is None:
        return None
    try:
        with open(queue.path(message.id), "rb") as f:
            head = f.read(HEADER_CAP)
    except FileNotFoundError:  # delivered or deleted meanwhile
        return None
    return QueueDetail(message, head[: headers.header_end(head)].decode("utf-8", "replace"))


# -- the spam filter --------------------------------------------------------------------


def spam_stats(settings: config.Settings, account_ids: list[int]) -> list[Any]:
    """Each account's Bayes figures (filter.bayes.BayesStats), from bayes.db."""
    from .filter.bayes import open_models

    bayes = open_models(settings)
    try:
        return [bayes.stats(account_id) for account_id in account_ids]
    finally:
        bayes.close()


# -- certificates, read without `cryptography` ---------------------------------------------
#
# The server never loads `cryptography` for this (tls/ensure.py says why): the
# certificates are decoded by the ssl module. Paths as tls/ca.py lays them out.

CERTIFICATE_NAMES = ("acme", "internal")  # tls/acme_client.NAME, tls/context.INTERNAL


@dataclass(frozen=True)
class CertificateStatus:
    name: str  # "acme" or "internal"
    subject: str
    issuer: str
    serial: str
    names: tuple[str, ...]  # subjectAltNames, DNS and IP
    not_after: float  # unix time
    path: Path

    @property
    def days_left(self) -> int:
        return int((self.not_after - time.time()) // 86400)

    @property
    def expires(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.not_after))


def ca_certificate_path(data_dir: Path) -> Path:
    return Path(data_dir) / "tls" / "ca" / "ca.pem"


def certificate_status(data_dir: Path) -> list[CertificateStatus]:
    """The live certificates (`pimail cert status`): the ACME one first."""
    import ssl

    from .tls.context import FULLCHAIN

    out = []
    for name in CERTIFICATE_NAMES:
        path = Path(data_dir) / "tls" / "live" / name / FULLCHAIN
        try:
            decoded = ssl._ssl._test_decode_cert(str(path.resolve(strict=True)))  # type: ignore[attr-defined]
        except (OSError, ValueError, ssl.SSLError):
            continue
        out.append(
            CertificateStatus(
                name=name,
                subject=_x509_name(decoded.get("subject", ())),
                issuer=_x509_name(decoded.get("issuer", ())),
                serial=str(decoded.get("serialNumber", "")).lower().lstrip("0"),
                names=tuple(v for _, v in decoded.get("subjectAltName", ())),
                not_after=ssl.cert_time_to_seconds(decoded["notAfter"]),
                path=path,
            )
        )
    return out


def _x509_name(rdns: Any) -> str:
    """The ssl module's ((("commonName", "x"),), ...) as "commonName=x, ..."."""
    return ", ".join(f"{key}={value}" for rdn in rdns for key, value in rdn)


def acme_state(data_dir: Path) -> dict[str, Any]:
    """tls/acme_client's state.json: last attempt, last error, next attempt."""
    try:
        state = json.loads((Path(data_dir) / "tls" / "acme" / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


# -- storage -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Filesystem:
    path: Path
    device: str  # what is mounted ("/dev/sda1"), "" if unknown
    mountpoint: str
    fstype: str
    total: int  # octets
    free: int  # octets available to pimail (f_bavail)

    @property
    def used_percent(self) -> float:
        return 100.0 * (self.total - self.free) / self.total if self.total else 0.0


def filesystem(path: Path, mounts: Path = Path("/proc/self/mounts")) -> Filesystem:
    """The file system `path` lives on: its device (from the mount table) and space."""
    st = os.statvfs(path)
    real = os.path.realpath(path)
    device, mountpoint, fstype = "", "/", ""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(mountpoint):
            device, mountpoint, fstype = fields[0], point, fields[2]
    return Filesystem(
        Path(path), device, mountpoint, fstype, st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    )


def mail_usage(index: sqlite3.Connection) -> dict[int, tuple[int, int]]:
    """Messages and octets per account id, from the mail index (index.db): what
    the Maildirs hold, without walking them."""
    rows = index.execute(
        "SELECT b.account_id, count(m.id), coalesce(sum(m.size), 0)"
        " FROM mailboxes b LEFT JOIN messages m ON m.mailbox_id = b.id GROUP BY b.account_id"
    )
    return {account_id: (count, size) for account_id, count, size in rows}


def queue_usage(con: sqlite3.Connection) -> tuple[int, int]:
    """Messages and octets waiting in the outbound queue (queue.db)."""
    count, size = con.execute("SELECT count(*), coalesce(sum(size), 0) FROM messages").fetchone()
    return count, size
