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
- Local recipients are delivered straight into their mailboxes. Mail for other
  domains needs the outbound queue, which is not there yet: it is answered
  451 4.3.0, a temporary refusal the client keeps and retries.
"""

from __future__ import annotations

import email.utils
import logging
from base64 import b64decode
from typing import Any

from aiosmtpd.smtp import MISSING, AuthResult

from ..auth.accounts import Account, Directory, Resolution
from ..auth.login import Authenticator, parse_sasl_plain
from ..store import headers
from .inbound import InboundHandler

log = logging.getLogger(__name__)


class SubmissionHandler(InboundHandler):
    def __init__(self, settings: Any, directory: Directory, store: Any,
                 authenticator: Authenticator) -> None:  # fmt: skip
        super().__init__(settings, directory, store)
        self.authenticator = authenticator

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
        return await super().handle_MAIL(server, session, envelope, address, mail_options)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self.settings.smtp.max_recipients:
            return "452 4.5.3 Too many recipients"
        resolution, accounts = self.directory.resolve(address)
        if resolution is Resolution.RELAY_DENIED:
            return f"451 4.3.0 <{address}>: mail to other domains is not available yet"
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
        return await super().handle_DATA(server, session, envelope)
