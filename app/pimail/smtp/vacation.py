"""Vacation auto-replies ("out of office"), after RFC 3834 and Sieve's vacation (RFC 5230).

Each account may switch on one auto-reply (a subject, a text, optional first
and last days, and a period). After a message is delivered to such an account,
`Responder.after_delivery` decides whether to answer it and, if so, sends one
reply to the envelope sender:

- Never to the null reverse-path, never to what looks automated: addresses
  like MAILER-DAEMON, owner-*, *-request; messages with Auto-Submitted other
  than "no", with mailing-list header fields, with Precedence bulk, junk or
  list (RFC 3834 2, RFC 5230 4.6). Never to the account's own addresses, never
  for a copy that went to Junk.
- Only to messages that name one of the account's addresses (the address, a
  +tag of it, an alias that reaches it: `Directory.owners`) in To, Cc, Bcc or
  their Resent- forms: not to a Bcc'd list copy or a catch-all (RFC 3834 2,
  RFC 5230 4.5).
- At most one reply per sender in `days` days (RFC 3834 2, RFC 5230 4.1 and
  4.2): the `vacation_replies` table of pimail.db (db.MAIN_MIGRATIONS 5)
  remembers whom it answered when; rows older than the period go. Saving a
  new text, or switching the reply on, forgets them (RFC 5230 4.2: a new
  message is a new "handle").

The reply (RFC 3834 3, RFC 5230 5): From the account's address, To the
envelope sender, Subject the configured one or "Auto: " and the original's
(RFC 3834 3.1.5), In-Reply-To and References (RFC 5322 3.6.4),
Auto-Submitted: auto-replied (RFC 3834 5), and sent with a null MAIL FROM
("<>", RFC 3834 3.3, RFC 5230 5.1), so that nothing answers it and a bounce of
it goes nowhere. A local recipient gets it straight into the mailbox (the
queue routes by MX, which would be this server); any other through the
outbound queue, which signs it with the domain's DKIM key.

What may touch what: the vacation tables and the directory, through a
connection of its own used on the event loop only (synchronous=NORMAL: after a
power cut the last reply may be forgotten, which costs one more reply, never a
message). Nothing here may make a delivery fail: every error is logged and the
250 stands.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.header
import email.policy
import email.utils
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from .. import db
from ..auth.accounts import Account, Directory, Resolution
from ..config import Settings
from ..db import transaction
from ..store import headers
from ..store.spool import Incoming

log = logging.getLogger(__name__)

DAY = 86400
DEFAULT_DAYS = 7  # RFC 3834 2 suggests a week; Dovecot's default too
MIN_DAYS, MAX_DAYS = 1, 365  # RFC 5230 4.1: not less than a day
MAX_SUBJECT = 200
MAX_BODY = 10_000
MAX_RECIPIENT_ADDRESSES = 100  # of To/Cc/...: enough to find one's own
MAX_REFERENCES = 20

# Local parts of addresses that only machines write from (RFC 5230 4.6 names
# MAILER-DAEMON, LISTSERV, majordomo, owner-*, *-request; the rest is practice).
_AUTOMATED_LOCALPARTS = frozenset(
    {"mailer-daemon", "listserv", "majordomo", "mailman", "noreply", "no-reply",
     "donotreply", "do-not-reply", "bounce", "bounces"}
)  # fmt: skip
_AUTOMATED_SUFFIXES = ("-request", "-owner", "-bounces")
# RFC 2369 and RFC 2919: a message from a mailing list.
_LIST_FIELDS = (b"list-id", b"list-help", b"list-subscribe", b"list-unsubscribe",
                b"list-post", b"list-owner", b"list-archive")  # fmt: skip
_RECIPIENT_FIELDS = (b"to", b"cc", b"bcc", b"resent-to", b"resent-cc", b"resent-bcc")
_MSG_ID = re.compile(r"<[^<>\s]{1,900}>")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class VacationError(ValueError):
    """A setting the form must not save, with a message for the user."""


@dataclass(frozen=True)
class Vacation:
    """One account's auto-reply settings."""

    enabled: bool = False
    subject: str = ""  # empty: "Auto: " and the original subject
    body: str = ""
    start: dt.date | None = None  # first day, server local time
    end: dt.date | None = None  # last day (inclusive)
    days: int = DEFAULT_DAYS

    def active(self, today: dt.date) -> bool:
        return (
            self.enabled
            and (self.start is None or today >= self.start)
            and (self.end is None or today <= self.end)
        )


# -- settings: the form and the database ---------------------------------------------


def parse(enabled: bool, subject: str, body: str, start: str, end: str, days: str) -> Vacation:
    """Settings from the web form's fields; VacationError says what is wrong."""
    subject = _CONTROL.sub(" ", subject).strip()
    if len(subject) > MAX_SUBJECT:
        raise VacationError(f"The subject may have at most {MAX_SUBJECT} characters.")
    body = body.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    if len(body) > MAX_BODY:
        raise VacationError(f"The text may have at most {MAX_BODY} characters.")
    if enabled and not body.strip():
        raise VacationError("Write the text of the auto-reply.")
    try:
        first = dt.date.fromisoformat(start.strip()) if start.strip() else None
        last = dt.date.fromisoformat(end.strip()) if end.strip() else None
    except ValueError:
        raise VacationError("Dates are written YYYY-MM-DD.") from None
    if first is not None and last is not None and last < first:
        raise VacationError("The last day comes before the first.")
    try:
        period = int(days.strip()) if days.strip() else DEFAULT_DAYS
    except ValueError:
        raise VacationError("The period is a whole number of days.") from None
    if not MIN_DAYS <= period <= MAX_DAYS:
        raise VacationError(f"The period is {MIN_DAYS} to {MAX_DAYS} days.")
    return Vacation(enabled, subject, body, first, last, period)


_COLUMNS = "enabled, subject, body, start_date, end_date, days"


def _from_row(row: Sequence[Any]) -> Vacation:
    enabled, subject, body, start, end, days = row
    return Vacation(
        bool(enabled),
        subject,
        body,
        dt.date.fromisoformat(start) if start else None,
        dt.date.fromisoformat(end) if end else None,
        int(days),
    )


def load(con: sqlite3.Connection, account_id: int) -> Vacation:
    row = con.execute(
        f"SELECT {_COLUMNS} FROM vacations WHERE account_id = ?", (account_id,)
    ).fetchone()
    return _from_row(row) if row is not None else Vacation()


def save(con: sqlite3.Connection, account_id: int, vacation: Vacation) -> None:
    """Store an account's settings. A new text, or the reply switched on, makes
    a new reply (RFC 5230 4.2): who was answered before is forgotten."""
    with transaction(con):
        old = load(con, account_id)
        con.execute(
            f"INSERT INTO vacations (account_id, {_COLUMNS}, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (account_id) DO UPDATE SET enabled = excluded.enabled,"
            " subject = excluded.subject, body = excluded.body,"
            " start_date = excluded.start_date, end_date = excluded.end_date,"
            " days = excluded.days, updated = excluded.updated",
            (
                account_id, int(vacation.enabled), vacation.subject, vacation.body,
                vacation.start.isoformat() if vacation.start else None,
                vacation.end.isoformat() if vacation.end else None,
                vacation.days, int(time.time()),
            ),
        )  # fmt: skip
        renewed = (old.subject, old.body) != (vacation.subject, vacation.body)
        if renewed or (vacation.enabled and not old.enabled) or not vacation.enabled:
            con.execute("DELETE FROM vacation_replies WHERE account_id = ?", (account_id,))


# -- the decision (pure) -----------------------------------------------------------------


def automated_sender(address: str) -> bool:
    """Whether an envelope sender is a machine's (RFC 5230 4.6)."""
    localpart = (address.rpartition("@")[0] or address).lower()
    base = localpart.partition("+")[0]
    return (
        base in _AUTOMATED_LOCALPARTS
        or base.startswith("owner-")
        or base.endswith(_AUTOMATED_SUFFIXES)
    )


def _values(fields: Iterable[tuple[bytes, bytes]], names: Iterable[bytes]) -> list[str]:
    wanted = set(names)
    return [v.decode("utf-8", "replace") for n, v in fields if n in wanted]


def _token(value: str) -> str:
    """The keyword of a structured field: 'Auto-Replied; x=y' -> 'auto-replied'."""
    return value.partition(";")[0].strip().lower()


def recipient_addresses(fields: Sequence[tuple[bytes, bytes]]) -> list[str]:
    """The addresses of To, Cc, Bcc and their Resent- forms, at most a hundred."""
    values = _values(fields, _RECIPIENT_FIELDS)
    found = [address for _, address in email.utils.getaddresses(values) if "@" in address]
    return found[:MAX_RECIPIENT_ADDRESSES]


def skip_reason(
    vacation: Vacation,
    *,
    sender: str,
    fields: Sequence[tuple[bytes, bytes]],
    is_own: Callable[[str], bool],
    junk: bool,
    last_reply: float | None,
    now: float,
    require_addressed: bool = True,
) -> str | None:
    """Why this message gets no auto-reply, or None when it gets one.

    `sender` is the envelope sender ('' for <>), `fields` the message's header
    (headers.fields), `is_own` tells the account's own addresses, `junk`
    whether its copy went to Junk, `last_reply` when this sender was last
    answered (None: never, or longer ago than anything kept).
    """
    if not vacation.enabled:
        return "off"
    today = dt.date.fromtimestamp(now)
    if vacation.start is not None and today < vacation.start:
        return "not started"
    if vacation.end is not None and today > vacation.end:
        return "ended"
    if not sender:  # RFC 3834 2, RFC 5321 4.5.5: nobody answers the null reverse-path
        return "null sender"
    if automated_sender(sender):
        return "automated sender"
    if is_own(sender):  # a message one sent oneself
        return "own address"
    # RFC 3834 2 and 5, RFC 5230 4.6: MUST NOT answer what was sent automatically.
    if any(_token(v) != "no" for v in _values(fields, [b"auto-submitted"])):
        return "auto-submitted"
    # RFC 5230 4.6: nor what a mailing list sent (RFC 2369, RFC 2919 fields).
    if any(name in _LIST_FIELDS for name, _ in fields):
        return "mailing list"
    # RFC 3834 2: nor bulk mail, as Precedence (RFC 2076) says.
    if any(_token(v) in ("bulk", "junk", "list") for v in _values(fields, [b"precedence"])):
        return "bulk"
    # Microsoft's way to ask for no auto-replies (MS-OXCMAIL 2.2.3.2.14).
    suppress = " ".join(_values(fields, [b"x-auto-response-suppress"])).lower()
    if any(word in suppress for word in ("all", "oof", "autoreply")):
        return "auto-response suppressed"
    if junk:  # spam would make us a backscatter source
        return "junk"
    # RFC 3834 2, RFC 5230 4.5: only to messages addressed to the user directly.
    if require_addressed and not any(is_own(a) for a in recipient_addresses(fields)):
        return "not addressed directly"
    # RFC 5230 4.2: once per sender in the period.
    if last_reply is not None and now - last_reply < vacation.days * DAY:
        return "replied recently"
    return None


# -- the reply (pure) ----------------------------------------------------------------------


def _decoded(value: str) -> str:
    """An unstructured field's text, RFC 2047 words decoded, on one line."""
    try:
        text = str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        text = value
    return _CONTROL.sub(" ", text).strip()


def build_reply(
    vacation: Vacation,
    *,
    account_address: str,
    sender: str,
    fields: Sequence[tuple[bytes, bytes]],
    now: float,
) -> bytes:
    """The auto-reply to a message, as it goes on the wire (CRLF)."""
    first = {name: value.decode("utf-8", "replace") for name, value in reversed(fields)}
    subject = vacation.subject
    if not subject:  # RFC 3834 3.1.5, RFC 5230 4.3
        subject = f"Auto: {_decoded(first.get(b'subject', ''))[:MAX_SUBJECT]}".rstrip()
    utf8 = not (account_address.isascii() and sender.isascii())
    reply = EmailMessage(policy=email.policy.SMTPUTF8 if utf8 else email.policy.SMTP)
    reply["From"] = account_address
    reply["To"] = sender
    reply["Subject"] = subject
    reply["Date"] = email.utils.formatdate(now, localtime=True)
    reply["Message-ID"] = email.utils.make_msgid(domain=account_address.rpartition("@")[2])
    original = _MSG_ID.search(first.get(b"message-id", ""))
    if original is not None:  # RFC 3834 3.1.5 and 3.1.6, RFC 5322 3.6.4
        parents = (
            _MSG_ID.findall(first.get(b"references", ""))
            or _MSG_ID.findall(first.get(b"in-reply-to", ""))[:1]
        )
        chain = [*parents[-(MAX_REFERENCES - 1) :], original.group()]
        reply["In-Reply-To"] = original.group()
        reply["References"] = " ".join(chain)
    reply["Auto-Submitted"] = "auto-replied"  # RFC 3834 5
    reply["X-Auto-Response-Suppress"] = "All"  # so that Exchange does not answer it
    reply.set_content(vacation.body + "\n", cte="quoted-printable")
    return reply.as_bytes()


# -- the responder -------------------------------------------------------------------------


class Responder:
    """Decides after each delivery and sends the replies; used on the event loop."""

    def __init__(self, settings: Settings, store: Any, queue: Any = None) -> None:
        self.settings = settings
        self.store = store  # store.Store: local replies
        self.queue = queue  # queue.runner.Queue: the others; None: local ones only
        self._con: sqlite3.Connection | None = None
        self._directory: Directory | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0

    def _open(self) -> tuple[sqlite3.Connection, Directory]:
        if self._con is None or self._directory is None:
            # db.connect, not db.open_main: synchronous=NORMAL (module docstring).
            self._con = db.connect(self.settings.db_path, db.MAIN_MIGRATIONS)
            self._directory = Directory(self._con)
        return self._con, self._directory

    def after_delivery(
        self,
        mail_from: str,
        head: bytes,
        accounts: Sequence[Account],
        placements: Sequence[Any],
    ) -> None:
        """A message from `mail_from` ('' for <>) with header `head` was
        delivered to `accounts` (store.Placement tells where). Decides now (a
        few indexed queries), sends in the background. Never raises."""
        if not mail_from or not accounts:
            return  # the common no-op costs nothing
        try:
            self._decide_all(mail_from, head, accounts, placements)
        except Exception:
            log.exception("vacation failed from=<%s>", mail_from)

    def _decide_all(
        self, mail_from: str, head: bytes, accounts: Sequence[Account], placements: Sequence[Any]
    ) -> None:
        con, directory = self._open()
        ids = [a.id for a in accounts]
        rows = con.execute(
            f"SELECT account_id, {_COLUMNS} FROM vacations WHERE enabled = 1"
            f" AND account_id IN ({','.join('?' * len(ids))})",
            ids,
        ).fetchall()
        if not rows:
            return
        settings = {row[0]: _from_row(row[1:]) for row in rows}
        fields = headers.fields(head)
        junk = {p.account_id for p in placements if getattr(p, "folder", "INBOX") == "Junk"}
        now = time.time()
        for account in accounts:
            vacation = settings.get(account.id)
            if vacation is None:
                continue
            try:
                reply = self._decide(con, directory, account, vacation, mail_from, fields,
                                     account.id in junk, now)  # fmt: skip
            except Exception:
                log.exception("vacation failed account=%s from=<%s>", account.address, mail_from)
                continue
            if reply is not None:
                task = asyncio.get_running_loop().create_task(
                    self._send(account, mail_from, reply), name="vacation-reply"
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _decide(
        self,
        con: sqlite3.Connection,
        directory: Directory,
        account: Account,
        vacation: Vacation,
        sender: str,
        fields: list[tuple[bytes, bytes]],
        junk: bool,
        now: float,
    ) -> bytes | None:
        """The reply to send, claimed in the log; None when none is due. No
        await in here: decision and claim are one step on the event loop."""
        key = sender.lower()
        row = con.execute(
            "SELECT sent FROM vacation_replies WHERE account_id = ? AND sender = ?",
            (account.id, key),
        ).fetchone()

        def is_own(address: str) -> bool:
            return any(a.id == account.id for a in directory.owners(address))

        reason = skip_reason(
            vacation, sender=sender, fields=fields, is_own=is_own, junk=junk,
            last_reply=row[0] if row else None, now=now,
        )  # fmt: skip
        if reason is not None:
            log.info("vacation: no reply account=%s from=<%s> reason=%s",
                     account.address, sender, reason)  # fmt: skip
            return None
        reply = build_reply(vacation, account_address=account.address, sender=sender,
                            fields=fields, now=now)  # fmt: skip
        with transaction(con):
            con.execute(
                "DELETE FROM vacation_replies WHERE account_id = ? AND sent < ?",
                (account.id, int(now) - vacation.days * DAY),
            )
            con.execute(
                "INSERT INTO vacation_replies (account_id, sender, sent) VALUES (?, ?, ?)"
                " ON CONFLICT (account_id, sender) DO UPDATE SET sent = excluded.sent",
                (account.id, key, int(now)),
            )
        return reply

    async def _send(self, account: Account, recipient: str, reply: bytes) -> None:
        try:
            local, remote = self._route(recipient)
            if local:
                incoming = Incoming(self.settings.spool_dir / "incoming")
                incoming.write(b"Return-Path: <>\r\n")
                incoming.write(reply)
                await self.store.deliver(incoming, local)
            queued = ""
            if remote:
                if self.queue is None:
                    raise RuntimeError("no outbound queue")
                incoming = Incoming(self.settings.spool_dir / "incoming")
                incoming.write(reply)
                try:  # RFC 3834 3.3, RFC 5230 5.1: a null MAIL FROM
                    queued = await self.queue.enqueue(incoming, "", remote, account.address)
                finally:
                    incoming.discard()  # the queue keeps its own link
            if not local and not remote:
                log.info("vacation: no reply account=%s from=<%s> reason=unknown local sender",
                         account.address, recipient)  # fmt: skip
                return
            self.sent += 1
            log.info("vacation reply account=%s to=<%s> local=%d queue_id=%s",
                     account.address, recipient, len(local), queued or "-")  # fmt: skip
        except Exception:
            log.exception("vacation reply failed account=%s to=<%s>", account.address, recipient)
            self._unclaim(account.id, recipient)

    def _route(self, recipient: str) -> tuple[list[Account], list[str]]:
        """(local accounts, foreign addresses) the reply goes to, as if it came by SMTP."""
        _con, directory = self._open()
        forwards: list[str] = []
        resolution, accounts = directory.resolve(recipient, forwards)
        if resolution is Resolution.RELAY_DENIED:
            return [], [recipient]
        if resolution is Resolution.UNKNOWN_USER:
            return [], []
        return accounts, forwards

    def _unclaim(self, account_id: int, sender: str) -> None:
        """A reply that could not be sent does not count (the next message retries)."""
        try:
            con, _directory = self._open()
            con.execute(
                "DELETE FROM vacation_replies WHERE account_id = ? AND sender = ?",
                (account_id, sender.lower()),
            )
        except sqlite3.Error:
            log.exception("vacation log not updated account_id=%d", account_id)
