"""Message submission (RFC 6409) on 587 (STARTTLS) and 465 (implicit TLS, RFC 8314).

The same engine as the MX (server.py) with other policy:

- AUTH PLAIN and LOGIN, only over TLS (587 does not even advertise AUTH before
  STARTTLS, and refuses every command but EHLO/NOOP/QUIT/STARTTLS in the
  clear); passwords go through the shared `Authenticator` and its login
  throttle (auth/throttle.py: per address and per account, across all
  protocols; a refusal is 454 4.7.0, RFC 4954 6). Nothing but AUTH'd
  clients may send (530 5.7.0).
- The envelope sender and every From: address must be the user's own: the
  account's address, a +tag of it, or an alias that reaches it (a catch-all
  does not count), else 553 5.7.1.
- Local recipients are delivered straight into their mailboxes; the others
  go into the outbound queue (queue/), durably, before the 250.
- The message is completed as RFC 6409 8.2/8.3 allow: a Message-ID and a Date
  are added when the client sent none.
- Limits per account: `submission.max_recipients` per message (452 4.5.3) and
  `submission.max_messages_per_hour` (450 4.7.1, counted over the last 60
  minutes).
- A local recipient whose mailbox is full gets 452 4.2.2, as on the MX
  (store/quota.py); the sender's own quota never stops sending.

Everything after AUTH lives in `Submitter`, the one path by which an
authenticated account's message enters the system: the SMTP hooks below call
it step by step, the webmail (web/mail.py) calls `Submitter.submit` once. Both
get the same instance (`Submitter.shared`), so the hourly limit counts
messages from either.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import weakref
from base64 import b64decode
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import MISSING, AuthResult, Envelope, Session

from ..auth.accounts import Account, Directory, Resolution
from ..auth.login import Authenticator, FailureLimiter, parse_sasl_plain
from ..store import headers
from ..store.spool import Incoming
from .inbound import MAX_ADDRESS, UNREADABLE, InboundHandler

log = logging.getLogger(__name__)


class SubmissionRefused(Exception):
    """A message the submission path will not take; `reply` is the SMTP reply
    (code, enhanced status, text) that says why."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply

    @property
    def text(self) -> str:
        """The reply without its codes, for people."""
        parts = self.reply.split(" ", 2)
        return parts[2] if len(parts) == 3 and "." in parts[1] else self.reply[4:]


@dataclass
class Routing:
    """Where a submitted message goes: local accounts now, the rest to the queue."""

    recipients: list[str] = field(default_factory=list)  # as given (RCPT TO)
    accounts: dict[int, Account] = field(default_factory=dict)
    remote: list[str] = field(default_factory=list)  # queued for other domains


# One Submitter per store (that is, per server): SMTP and the webmail share it.
_SHARED: weakref.WeakKeyDictionary[Any, Submitter] = weakref.WeakKeyDictionary()


class Submitter:
    """Accepting a message from an authenticated account: who it may send as,
    where it goes, how it is completed, and the hourly limit."""

    def __init__(self, settings: Any, directory: Directory, store: Any, queue: Any) -> None:
        self.settings = settings
        self.directory = directory
        self.store = store
        self.queue = queue
        # Messages per account in a sliding hour: the same window as failed
        # logins (in memory: a restart forgets, which errs on the user's side).
        self.per_hour = settings.submission.max_messages_per_hour
        self.sent = FailureLimiter(self.per_hour, 3600.0)
        # Local delivery, as the MX does it after its filter; of the filter, only
        # the screen runs (`accept`): the sender is authenticated.
        screen = None
        if settings.filter.enabled:
            from ..filter.pipeline import Pipeline

            screen = Pipeline(settings, getattr(queue, "resolver", None), None, None)
        self.local = InboundHandler(settings, directory, store, queue, screen)

    @classmethod
    def shared(cls, settings: Any, directory: Directory, store: Any, queue: Any) -> Submitter:
        found = _SHARED.get(store)
        if found is None:
            found = _SHARED[store] = cls(settings, directory, store, queue)
        return found

    # -- the envelope -----------------------------------------------------------------

    def owns(self, account: Account, address: str) -> bool:
        """Whether `account` may send as `address` (no catch-all, RFC 6409 8.1)."""
        return any(a.id == account.id for a in self.directory.owners(address))

    def check_sender(self, account: Account, address: str) -> str | None:
        """MAIL FROM: the refusal, or None."""
        if address == "<>" or not self.owns(account, address):
            return f"553 5.7.1 <{address}>: not an address of {account.address}"
        if self.sent.blocked(account.address):
            log.warning("sending limit reached account=%s", account.address)
            return (
                f"450 4.7.1 Sending limit of {self.per_hour} messages an hour reached,"
                " try again later"
            )
        return None

    async def add_recipient(self, routing: Routing, address: str, size: int = 0) -> str:
        """RCPT TO: route `address` (local accounts, or the queue); the reply.
        `size` is the message's announced (SMTP SIZE=) or known (webmail) size,
        0 if unknown: a local recipient it would take over quota is refused."""
        if len(routing.recipients) >= self.settings.submission.max_recipients:
            return "452 4.5.3 Too many recipients"
        if len(address) > MAX_ADDRESS or "@" not in address.strip("@"):
            return "553 5.1.3 Recipient address malformed"
        refusal = await self.local.storage_refusal()
        if refusal is not None:
            return refusal
        forwards: list[str] = []
        resolution, accounts = self.directory.resolve(address, forwards)
        if resolution is Resolution.RELAY_DENIED:
            forwards = [address]
        elif resolution is Resolution.UNKNOWN_USER:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        elif not forwards:
            refusal = await self.store.quota.rcpt_refusal(address, accounts, size)
            if refusal is not None:
                return refusal
        for target in forwards:
            if target not in routing.remote:
                routing.remote.append(target)
        routing.recipients.append(address)
        for account in accounts:
            routing.accounts[account.id] = account
        return "250 2.1.5 Ok"

    # -- the message --------------------------------------------------------------------

    def check_from(self, account: Account, head: bytes) -> str | None:
        """Every From: address must be the account's own: the refusal, or None."""
        for name, value in headers.fields(head):
            if name != b"from":
                continue
            text = value.decode("utf-8", "replace")
            for _display, address in email.utils.getaddresses([text]):
                if address and not self.owns(account, address):
                    return f"553 5.7.1 From: <{address}> is not an address of {account.address}"
        return None

    async def complete(self, message: Incoming, trace_length: int, mail_from: str) -> None:
        """RFC 6409 8.2, 8.3: add Date and Message-ID when missing."""
        head = bytes(message.head)
        end = headers.header_end(head)
        if end >= len(head) and len(head) >= headers.MAX_HEADER:
            return  # a header block too large to see whole: leave it be
        present = {name for name, _ in headers.fields(head[trace_length:])}
        added = b""
        if b"date" not in present:
            added += f"Date: {email.utils.formatdate(localtime=True)}\r\n".encode()
        if b"message-id" not in present:
            domain = mail_from.rpartition("@")[2] or self.settings.hostname
            added += f"Message-ID: {email.utils.make_msgid(domain=domain)}\r\n".encode()
        if added:  # a spilled message is rewritten: not on the event loop
            await asyncio.to_thread(message.insert, trace_length, added)

    async def accept(self, account: Account, session: Any, envelope: Any, routing: Routing) -> str:
        """Queue for the remote recipients, deliver to the local ones (both
        durable before it returns), count it against the hourly limit; the reply.
        Local delivery is the MX's own (`InboundHandler.handle_DATA`, without the
        spam filter: the sender is authenticated; the malware screen runs here
        first), so what follows a delivery there (vacation replies) follows
        this one too."""
        message: Incoming = envelope.incoming
        # Screened before anything is queued or delivered: malware from a
        # stolen password goes nowhere (filter/pipeline.py Pipeline.screen).
        try:
            refusal = await self.local.screen(session, envelope)
        except OSError as e:  # the spool file went with the data disk (store/health.py)
            log.warning("screening failed id=%s error=%r", envelope.queue_id, str(e))
            return await self.local.failure_reply(e, UNREADABLE)
        if refusal is not None:
            message.discard()
            return refusal
        queued = ""
        if routing.remote:
            try:
                queued = await self.queue.enqueue(
                    message, envelope.mail_from, routing.remote, account.address
                )
            except Exception as e:
                log.warning("queueing failed id=%s error=%r", envelope.queue_id, str(e))
                return await self.local.failure_reply(
                    e, "451 4.3.0 Could not queue the message, try again later"
                )
        if routing.accounts:
            envelope.accounts = dict(routing.accounts)
            envelope.forwards = []  # the Routing queued them already
            reply = await self.local.handle_DATA(None, session, envelope)
            if not reply.startswith("250"):
                return reply
        else:
            message.discard()
        self.sent.failed(account.address)  # counted, not failed: the same sliding window
        log.info(
            "submitted id=%s account=%s local=%d remote=%d queue_id=%s size=%d",
            envelope.queue_id, account.address, len(routing.accounts), len(routing.remote),
            queued or "-", message.size,
        )  # fmt: skip
        return f"250 2.0.0 Ok: queued as {queued or envelope.queue_id}"

    async def submit(
        self,
        account: Account,
        message: Incoming,
        mail_from: str,
        recipients: list[str],
        *,
        client: str,
        queue_id: str,
        trace_length: int = 0,
    ) -> str:
        """The whole submission at once (the webmail): every check SMTP makes at
        MAIL, RCPT and DATA, in that order. Returns the 250 reply; raises
        SubmissionRefused with the first refusal. The caller discards `message`."""
        refusal = self.check_sender(account, mail_from)
        if refusal is not None:
            raise SubmissionRefused(refusal)
        if not recipients:
            raise SubmissionRefused("554 5.5.1 No valid recipients")
        routing = Routing()
        for address in recipients:
            reply = await self.add_recipient(routing, address, message.size)
            if not reply.startswith("250"):
                raise SubmissionRefused(reply)
        refusal = self.check_from(account, bytes(message.head)[trace_length:])
        if refusal is not None:
            raise SubmissionRefused(refusal)
        await self.complete(message, trace_length, mail_from)
        session = Session(asyncio.get_running_loop())
        session.peer = (client, 0)
        session.host_name = "webmail"
        session.authenticated = True
        session.auth_data = account
        envelope = Envelope()
        envelope.mail_from = mail_from
        envelope.rcpt_tos = list(routing.recipients)
        envelope.incoming = message  # type: ignore[attr-defined]
        envelope.queue_id = queue_id  # type: ignore[attr-defined]
        reply = await self.accept(account, session, envelope, routing)
        if not reply.startswith("250"):
            raise SubmissionRefused(reply)
        return reply

    def trace_headers(
        self, *, client: str, protocol: str, queue_id: str, recipients: list[str], mail_from: str
    ) -> bytes:
        """Return-Path and Received (RFC 5321 4.4) for a message that did not come
        over SMTP (the webmail: `protocol` "HTTPSA", client its address)."""
        received = (
            f"Received: from webmail ([{client}])\r\n"
            f"\tby {self.settings.hostname} (pimail) with {protocol} id {queue_id}"
        )
        if len(recipients) == 1:
            received += f"\r\n\tfor <{recipients[0]}>"
        received += f"; {email.utils.formatdate(localtime=True)}\r\n"
        return f"Return-Path: <{mail_from}>\r\n{received}".encode("utf-8", "surrogateescape")


class SubmissionHandler(InboundHandler):
    def __init__(self, settings: Any, directory: Directory, store: Any,
                 authenticator: Authenticator, queue: Any) -> None:  # fmt: skip
        super().__init__(settings, directory, store, queue)
        self.authenticator = authenticator
        self.submitter = Submitter.shared(settings, directory, store, queue)

    # -- AUTH (aiosmtpd calls the handler's auth_<MECHANISM> in place of its own) --

    # AuthResult(success=False) with the default handled=True means "the reply
    # is sent already" (challenge_auth does that for a cancelled exchange).

    async def auth_PLAIN(self, server: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            data = await server.challenge_auth("")
            if data is MISSING:
                return AuthResult(success=False)
        else:
            try:
                data = b64decode(args[1], validate=True)
            except ValueError:
                await server.push("501 5.5.2 Cannot decode the base64 response")
                return AuthResult(success=False, handled=True)
        parsed = parse_sasl_plain(data)
        if parsed is None:
            return AuthResult(success=False, handled=False)  # 535 from aiosmtpd
        return await self._login(server, *parsed)

    async def auth_LOGIN(self, server: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            user = await server.challenge_auth(server.AuthLoginUsernameChallenge)
        else:
            try:
                user = b64decode(args[1], validate=True)
            except ValueError:
                await server.push("501 5.5.2 Cannot decode the base64 response")
                return AuthResult(success=False, handled=True)
        if user is MISSING:
            return AuthResult(success=False)
        password = await server.challenge_auth(server.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False)
        try:
            return await self._login(server, user.decode(), password.decode())
        except UnicodeDecodeError:
            return AuthResult(success=False, handled=False)

    async def _login(self, server: Any, user: str, password: str) -> AuthResult:
        ip = server.session.peer[0] if server.session.peer else "?"
        result = await self.authenticator.authenticate(user, password, str(ip), "submission")
        if result.refused:  # RFC 4954 6: 454 4.7.0, a temporary authentication failure
            message = "454 4.7.0 Too many failed logins, try again later"
            return AuthResult(success=False, handled=False, message=message)
        account = result.account
        if account is None:
            return AuthResult(success=False, handled=False)  # aiosmtpd answers 535 5.7.8
        return AuthResult(success=True, auth_data=account)

    # -- the envelope and the message: the Submitter's steps, one per hook ---------------

    def owns(self, account: Account, address: str) -> bool:
        return self.submitter.owns(account, address)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        account: Account | None = session.auth_data
        if account is None:
            return "530 5.7.0 Authentication required"
        refusal = self.submitter.check_sender(account, address)
        if refusal is not None:
            return refusal
        reply = await super().handle_MAIL(server, session, envelope, address, mail_options)
        envelope.routing = Routing()
        return reply

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        size = getattr(envelope, "declared_size", 0)
        reply = await self.submitter.add_recipient(envelope.routing, address, size)
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        account: Account = session.auth_data
        message: Incoming = envelope.incoming
        refusal = self.submitter.check_from(account, bytes(message.head))
        if refusal is not None:
            return refusal
        await self.submitter.complete(message, envelope.trace_length, envelope.mail_from)
        return await self.submitter.accept(account, session, envelope, envelope.routing)
