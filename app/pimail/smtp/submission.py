"""Message submission (RFC 6409) on 587 (STARTTLS) and 465 (implicit TLS, RFC 8314).

The same engine as the MX (server.py) with other policy:

- AUTH PLAIN and LOGIN, only over TLS (587 does not even advertise AUTH before
  STARTTLS, and refuses every command but EHLO/NOOP/QUIT/STARTTLS in the
  clear); passwords go through the shared `Authenticator`, so failures count
  against the client's address across all protocols. Nothing but AUTH'd
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
  minutes). Failed AUTH is limited per client address by the Authenticator.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
from base64 import b64decode
from typing import Any

from aiosmtpd.smtp import MISSING, AuthResult

from ..auth.accounts import Account, Directory, Resolution
from ..auth.login import Authenticator, FailureLimiter, parse_sasl_plain
from ..store import headers
from ..store.spool import Incoming
from .inbound import MAX_ADDRESS, InboundHandler

log = logging.getLogger(__name__)


class SubmissionHandler(InboundHandler):
    def __init__(self, settings: Any, directory: Directory, store: Any,
                 authenticator: Authenticator, queue: Any) -> None:  # fmt: skip
        super().__init__(settings, directory, store, queue)
        self.authenticator = authenticator
        # Messages per account in a sliding hour: the same window as failed
        # logins (in memory: a restart forgets, which errs on the user's side).
        self.per_hour = settings.submission.max_messages_per_hour
        self.sent = FailureLimiter(self.per_hour, 3600.0)

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
        account = await self.authenticator.login(user, password, str(ip), "submission")
        if account is None:
            return AuthResult(success=False, handled=False)  # aiosmtpd answers 535 5.7.8
        return AuthResult(success=True, auth_data=account)

    # -- the envelope -------------------------------------------------------------

    def owns(self, account: Account, address: str) -> bool:
        """Whether `account` may send as `address` (no catch-all, RFC 6409 8.1)."""
        return any(a.id == account.id for a in self.directory.owners(address))

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        account: Account | None = session.auth_data
        if account is None:
            return "530 5.7.0 Authentication required"
        if address == "<>" or not self.owns(account, address):
            return f"553 5.7.1 <{address}>: not an address of {account.address}"
        if self.sent.blocked(account.address):
            log.warning("sending limit reached account=%s", account.address)
            return (
                f"450 4.7.1 Sending limit of {self.per_hour} messages an hour reached,"
                " try again later"
            )
        reply = await super().handle_MAIL(server, session, envelope, address, mail_options)
        envelope.remote_rcpts = []
        return reply

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self.settings.submission.max_recipients:
            return "452 4.5.3 Too many recipients"
        if len(address) > MAX_ADDRESS or "@" not in address.strip("@"):
            return "553 5.1.3 Recipient address malformed"
        forwards: list[str] = []
        resolution, accounts = self.directory.resolve(address, forwards)
        if resolution is Resolution.RELAY_DENIED:
            forwards = [address]
        for target in forwards:
            if target not in envelope.remote_rcpts:
                envelope.remote_rcpts.append(target)
        if resolution is Resolution.RELAY_DENIED:
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 Ok"
        if resolution is Resolution.UNKNOWN_USER:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        for account in accounts:
            envelope.accounts[account.id] = account
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        account: Account = session.auth_data
        for name, value in headers.fields(bytes(envelope.incoming.head)):
            if name != b"from":
                continue
            text = value.decode("utf-8", "replace")
            for _display, address in email.utils.getaddresses([text]):
                if address and not self.owns(account, address):
                    return f"553 5.7.1 From: <{address}> is not an address of {account.address}"
        await self._complete(envelope)
        message: Incoming = envelope.incoming
        queued = ""
        if envelope.remote_rcpts:
            try:
                queued = await self.queue.enqueue(
                    message, envelope.mail_from, envelope.remote_rcpts, account.address
                )
            except Exception:
                log.exception("queueing failed id=%s", envelope.queue_id)
                return "451 4.3.0 Could not queue the message, try again later"
        if envelope.accounts:
            reply = await super().handle_DATA(server, session, envelope)
            if not reply.startswith("250"):
                return reply
        else:
            message.discard()
        self.sent.failed(account.address)  # counted, not failed: the same sliding window
        log.info(
            "submitted id=%s account=%s local=%d remote=%d queue_id=%s size=%d",
            envelope.queue_id, account.address, len(envelope.accounts),
            len(envelope.remote_rcpts), queued or "-", message.size,
        )  # fmt: skip
        return f"250 2.0.0 Ok: queued as {queued or envelope.queue_id}"

    async def _complete(self, envelope: Any) -> None:
        """RFC 6409 8.2, 8.3: add Date and Message-ID when missing."""
        message: Incoming = envelope.incoming
        head = bytes(message.head)
        end = headers.header_end(head)
        if end >= len(head) and len(head) >= headers.MAX_HEADER:
            return  # a header block too large to see whole: leave it be
        present = {name for name, _ in headers.fields(head[envelope.trace_length :])}
        added = b""
        if b"date" not in present:
            added += f"Date: {email.utils.formatdate(localtime=True)}\r\n".encode()
        if b"message-id" not in present:
            domain = envelope.mail_from.rpartition("@")[2] or self.settings.hostname
            added += f"Message-ID: {email.utils.make_msgid(domain=domain)}\r\n".encode()
        if added:  # a spilled message is rewritten: not on the event loop
            await asyncio.to_thread(message.insert, envelope.trace_length, added)
