"""The SMTP client side of the queue: one connection to one host, kept open
for several messages (RFC 5321 3.3: a client may send many transactions over
one connection), on aiosmtplib.

TLS, in the order a connection is attempted:

- `Tls.OPPORTUNISTIC`: STARTTLS whenever the server offers it (RFC 3207),
  without checking the certificate (RFC 7435: encryption against passive
  eavesdroppers is better than none; most MX certificates would not verify
  against their MX name anyway). If the handshake fails, the caller retries
  the same address in the clear (`Tls.NONE`), as Postfix's "may" level does.
- `Tls.VERIFY`: STARTTLS must be offered and the certificate must be valid for
  the host name (MTA-STS enforce, RFC 8461 4.2; and the smarthost, which gets
  our password). Anything less fails the connection.
- `Tls.IMPLICIT`: TLS from the first byte, verified (a relay on 465, RFC 8314).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import socket
import ssl
from dataclasses import dataclass

import aiosmtplib

log = logging.getLogger(__name__)


class Tls(enum.Enum):
    NONE = "none"
    OPPORTUNISTIC = "opportunistic"
    VERIFY = "verify"
    IMPLICIT = "implicit"


@dataclass
class Reply:
    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


class ConnectionFailed(Exception):
    """No session with this host (refused, timeout, greeting 4xx/5xx, TLS...).
    `tls_failed` says that a plaintext retry may work."""

    def __init__(self, message: str, *, status: str = "4.4.1", tls_failed: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.tls_failed = tls_failed


@dataclass
class Transaction:
    """What one message's transaction came to."""

    rcpt_replies: dict[str, Reply]
    data_reply: Reply | None  # None when no recipient was accepted or MAIL failed
    mail_reply: Reply

    def outcome(self, recipient: str) -> Reply:
        """The reply that decides `recipient`'s fate."""
        if not self.mail_reply.ok:
            return self.mail_reply
        reply = self.rcpt_replies[recipient]
        if not reply.ok or self.data_reply is None:
            return reply
        return self.data_reply


@functools.lru_cache(maxsize=8)
def tls_context(verify: bool, cafile: str = "") -> ssl.SSLContext:
    """One context per kind, made once: loading the system's CA store costs
    ~20 ms and memory, and an unverified context needs no CA store at all."""
    if verify:
        context = ssl.create_default_context()
        if cafile:
            context.load_verify_locations(cafile=cafile)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Connection:
    def __init__(self, smtp: aiosmtplib.SMTP, host: str, address: str, tls: bool) -> None:
        self.smtp = smtp
        self.host = host  # the MX (or relay) name: what DSNs call the Remote-MTA
        self.address = address
        self.tls = tls
        self.sent = 0

    @property
    def usable(self) -> bool:
        return self.smtp.is_connected

    @classmethod
    async def open(
        cls,
        host: str,
        address: str,
        port: int,
        *,
        local_hostname: str,
        tls: Tls,
        cafile: str = "",
        connect_timeout: float = 30.0,
        command_timeout: float = 300.0,
        username: str = "",
        password: str = "",
    ) -> Connection:
        verify = tls in (Tls.VERIFY, Tls.IMPLICIT)
        context = tls_context(verify, cafile)
        try:
            sock = await asyncio.wait_for(_tcp_connect(address, port), connect_timeout)
        except (OSError, TimeoutError) as e:
            raise ConnectionFailed(f"{host}[{address}]:{port}: {type(e).__name__}: {e}") from e
        # aiosmtplib takes the TLS server name from `hostname`; with a socket
        # of our own it connects nowhere by name, so the MX name is checked
        # against the certificate, not the address.
        smtp = aiosmtplib.SMTP(
            hostname=host,
            sock=sock,
            local_hostname=local_hostname,
            timeout=connect_timeout,
            use_tls=tls is Tls.IMPLICIT,
            start_tls=False,
            tls_context=context if tls is Tls.IMPLICIT else None,
        )
        try:
            await smtp.connect()
            smtp.timeout = command_timeout
            await smtp.ehlo()
            encrypted = tls is Tls.IMPLICIT
            if tls in (Tls.OPPORTUNISTIC, Tls.VERIFY) and smtp.supports_extension("starttls"):
                try:
                    await smtp.starttls(server_hostname=host, tls_context=context)
                except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as e:
                    raise ConnectionFailed(
                        f"{host}[{address}]: TLS failed: {e}", status="4.7.5", tls_failed=True
                    ) from e
                await smtp.ehlo()
                encrypted = True
            if tls is Tls.VERIFY and not encrypted:
                raise ConnectionFailed(
                    f"{host}[{address}]: STARTTLS required (MTA-STS) but not offered",
                    status="4.7.4",
                )
            if username:
                await smtp.login(username, password)
        except ConnectionFailed:
            smtp.close()
            raise
        except aiosmtplib.SMTPAuthenticationError as e:
            smtp.close()
            raise ConnectionFailed(
                f"{host}: relay refused our login: {e.code}", status="4.7.8"
            ) from e
        except aiosmtplib.SMTPResponseException as e:
            smtp.close()
            raise ConnectionFailed(f"{host}[{address}] said: {e.code} {e.message}") from e
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            smtp.close()
            raise ConnectionFailed(f"{host}[{address}]: {type(e).__name__}: {e}") from e
        return cls(smtp, host, address, encrypted)

    async def send(self, sender: str, recipients: list[str], data: bytes) -> Transaction:
        """One transaction. Replies come back as values; only a broken
        connection raises (ConnectionFailed), and then nothing was sent."""
        smtp = self.smtp
        utf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
        options: list[str] = []
        if smtp.supports_extension("size"):
            options.append(f"SIZE={len(data)}")
        if smtp.supports_extension("8bitmime") and not data.isascii():
            options.append("BODY=8BITMIME")
        if utf8:
            if not smtp.supports_extension("smtputf8"):
                reply = Reply(553, "5.6.7 The receiving server does not accept UTF-8 addresses")
                return Transaction({r: reply for r in recipients}, None, reply)
            options.append("SMTPUTF8")
        encoding = "utf-8" if utf8 else "ascii"
        try:
            try:
                response = await smtp.mail(sender, options=options, encoding=encoding)
                mail_reply = Reply(response.code, response.message)
            except aiosmtplib.SMTPSenderRefused as e:
                await self._reset()
                reply = Reply(e.code, e.message)
                return Transaction({r: reply for r in recipients}, None, reply)
            replies: dict[str, Reply] = {}
            for recipient in recipients:
                try:
                    response = await smtp.rcpt(recipient, encoding=encoding)
                    replies[recipient] = Reply(response.code, response.message)
                except aiosmtplib.SMTPRecipientRefused as e:
                    replies[recipient] = Reply(e.code, e.message)
            if not any(r.ok for r in replies.values()):
                await self._reset()
                return Transaction(replies, None, mail_reply)
            try:
                response = await smtp.data(data)
                data_reply = Reply(response.code, response.message)
            except aiosmtplib.SMTPDataError as e:
                data_reply = Reply(e.code, e.message)
                await self._reset()
        except aiosmtplib.SMTPResponseException as e:
            self.smtp.close()
            raise ConnectionFailed(f"{self.host}[{self.address}] said: {e.code} {e.message}") from e
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            self.smtp.close()
            raise ConnectionFailed(f"{self.host}[{self.address}]: {type(e).__name__}: {e}") from e
        self.sent += 1
        return Transaction(replies, data_reply, mail_reply)

    async def _reset(self) -> None:
        try:
            await self.smtp.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self.smtp.close()

    async def close(self) -> None:
        if not self.smtp.is_connected:
            return
        try:
            await self.smtp.quit(timeout=10)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self.smtp.close()


async def _tcp_connect(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (address, port))
    except BaseException:
        sock.close()
        raise
    return sock
