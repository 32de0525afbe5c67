"""The SMTP protocol engine: aiosmtpd's SMTP, subclassed narrowly.

aiosmtpd does the command dispatch; pimail's policy lives in handler hooks
(`inbound.py`). What this subclass changes, and why:

- `smtp_DATA` streams the message into an `Incoming` (memory, then spool file)
  instead of building it in RAM as a list of lines: a Pi cannot hold eight
  50 MB messages. It also refuses bare CR/LF (SMTP smuggling, RFC 5321 2.3.8),
  enforces SIZE while reading without storing the excess, and gives slow senders
  a deadline that grows with the data received (a minimum data rate).
- `push` adds RFC 3463 enhanced status codes to the replies aiosmtpd writes
  itself, since we advertise ENHANCEDSTATUSCODES (RFC 2034 requires them on
  every reply but the greeting and HELO/EHLO).
- Command lines ending in a bare LF are refused (RFC 5321 2.3.8); one longer
  than the reader's limit is dropped as it arrives and answered
  `500 5.5.2 Line too long` (RFC 5321 4.5.3.1.4).
- A MAIL or RCPT address in UTF-8 without the SMTPUTF8 parameter is refused
  (RFC 6531 3.4, 3.7.4.1: 553 5.6.7).
- Implicit TLS (465, RFC 8314) is started by the session itself, the way
  STARTTLS is, so that aiosmtpd knows the session is encrypted (AUTH with
  `auth_require_tls` on, and no false warning about it) and a failed handshake
  is one INFO line, as is a failed STARTTLS (scanners do both all day).
- `connection_made` enforces the per-address and total connection limits.
- A timeout says 421 before closing (RFC 5321 4.5.3.2); QUIT closes at once,
  under TLS too (`net.close_now`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException, sslproto, syntax

from ..net import TLS_TIMEOUT, ConnectionLimiter, close_now, handshake_failed
from ..store.spool import Incoming
from .data import DataDecoder

log = logging.getLogger(__name__)

# RFC 3463 defaults for replies that carry none.
DEFAULT_ENHANCED = {
    "211": "2.0.0",
    "214": "2.0.0",
    "220": "2.0.0",  # the STARTTLS go-ahead; the greeting itself carries none
    "221": "2.0.0",
    "235": "2.7.0",
    "250": "2.0.0",
    "251": "2.1.5",
    "252": "2.0.0",
    "421": "4.3.0",
    "450": "4.2.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "455": "4.5.4",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "534": "5.7.9",
    "535": "5.7.8",
    "538": "5.7.11",
    "550": "5.0.0",
    "551": "5.1.6",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")


# Octets of a message in DATA kept in memory before it goes to its spool file.
# The MX port takes DATA from anyone: smtp.max_connections (500) senders that
# trickle at the minimum data rate would pin 500 x this (issue 13's budget;
# the spool's default of 512 KiB made that 250 MiB on a 512 MB Pi).
DATA_IN_MEMORY = 64 * 1024

# Per session: a client looping on these is not sending mail.
CALL_LIMITS = {
    "*": 100_000,
    "EHLO": 20,
    "HELO": 20,
    "NOOP": 200,
    "VRFY": 20,
    "HELP": 20,
    "EXPN": 20,
    "STARTTLS": 2,
}


class BareLineEnd(Exception):
    """A command line ended in a bare LF."""


class LineTooLong(Exception):
    """A command line longer than the reader's limit (dropped, not buffered)."""


class PimailSMTP(SMTP):
    def __init__(
        self,
        handler: Any,
        *,
        limiter: ConnectionLimiter,
        spool_dir: Any,
        min_data_rate: int = 500,
        implicit_tls: bool = False,
        **kwargs: Any,
    ) -> None:
        # aiosmtpd keeps this dict on the class, shared by all sessions: make it ours.
        self.command_size_limits = collections.defaultdict(lambda: self.command_size_limit)
        super().__init__(handler, **kwargs)
        self.limiter = limiter
        self.spool_dir = spool_dir
        self.min_data_rate = min_data_rate
        self.implicit_tls = implicit_tls
        self._peer_ip: str | None = None
        self._pushback = b""  # octets read past the end of DATA: pipelined commands
        self._refused = False
        self._greeted = False
        self._no_enhanced = False  # set while answering HELO/EHLO (RFC 2034 3)

    # -- connections ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._peer_ip is None and self.transport is None:
            peer = transport.get_extra_info("peername") or ("?", 0)
            ip = str(peer[0])
            refusal = self.limiter.acquire(ip)
            if refusal is not None:
                log.warning("connection refused ip=%s reason=%r", ip, refusal)
                self._refused = True
                transport.write(refusal.encode() + b"\r\n")  # type: ignore[attr-defined]
                transport.close()
                return
            self._peer_ip = ip
        super().connection_made(transport)
        if getattr(self, "_raw_readuntil", None) is None:
            self._raw_readuntil = self._reader.readuntil
            self._reader.readuntil = self._readuntil  # type: ignore[method-assign]
        else:
            # STARTTLS: nothing sent before the handshake may be acted on after it.
            self._pushback = b""

    async def _readuntil(self, separator: bytes = b"\n") -> bytes:
        """The command reader: serves what DATA read past its end first, and
        refuses command lines that end in a bare LF."""
        if self._pushback:
            i = self._pushback.find(separator)
            if i >= 0:
                line = self._pushback[: i + len(separator)]
                self._pushback = self._pushback[i + len(separator) :]
            else:
                line, self._pushback = self._pushback, b""
                line += await self._raw_readuntil(separator)
        else:
            try:
                line = await self._raw_readuntil(separator)
            except asyncio.LimitOverrunError as e:
                await self._drop_line(separator, e.consumed)
                raise LineTooLong() from None
        if separator == b"\n" and not line.endswith(b"\r\n"):
            raise BareLineEnd()
        return line

    async def _drop_line(self, separator: bytes, consumed: int) -> None:
        """Read and drop the rest of an over-long line, never holding more
        than the reader's limit of it (aiosmtpd would then see its last two
        octets alone and call the line end a bare LF)."""
        while True:
            await self._reader.read(max(consumed, 1))
            try:
                await self._raw_readuntil(separator)
                return
            except asyncio.LimitOverrunError as e:
                consumed = e.consumed

    # -- implicit TLS (RFC 8314) ---------------------------------------------

    async def _handle_client(self) -> None:
        if self.implicit_tls and self._tls_protocol is None:
            try:
                await self._start_tls()
            except (ConnectionError, TimeoutError, OSError) as e:
                handshake_failed("smtp", self._peer_ip or "?", e)
                if self.transport is not None:
                    close_now(self.transport)
                return
        await super()._handle_client()

    async def _start_tls(self) -> None:
        """The TLS handshake on the accepted connection, before the greeting:
        what aiosmtpd's smtp_STARTTLS does after its 220. When it completes,
        connection_made runs again with the TLS transport, as after STARTTLS."""
        assert self.tls_context is not None and self.transport is not None
        waiter = self.loop.create_future()
        self._tls_protocol = sslproto.SSLProtocol(
            self.loop, self, self.tls_context, waiter, server_side=True,
            ssl_handshake_timeout=TLS_TIMEOUT,
        )  # fmt: skip
        self._original_transport = self.transport
        self._original_transport.set_protocol(self._tls_protocol)
        self.transport = self._tls_protocol._app_transport
        self._tls_protocol.connection_made(self._original_transport)
        await waiter

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None:
            # RFC 3207 4.2: no second TLS layer inside the first.
            await self.push("503 5.5.1 TLS is active already")
            return
        await super().smtp_STARTTLS(arg)

    @syntax("QUIT")
    async def smtp_QUIT(self, arg: str) -> None:
        await super().smtp_QUIT(arg)
        if not arg and self.transport is not None:
            close_now(self.transport)  # TLS: no 30 s wait for the client's close_notify

    # -- RFC 6531: UTF-8 addresses only with SMTPUTF8 ------------------------

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        if command in ("MAIL", "RCPT") and not args[0].isascii():
            refusal = self._utf8_refusal(args[0])
            if refusal is not None:
                return refusal
        return await super()._call_handler_hook(command, *args)

    def _utf8_refusal(self, address: str) -> str | None:
        """RFC 6531 3.4: without SMTPUTF8 on MAIL, addresses are ASCII; 3.7.4.1
        gives the reply, 553 with X.6.7 (registered by RFC 6531 4.3, "Non-ASCII
        addresses not permitted for that sender/recipient"; RFC 6533 uses the
        same code in DSNs). 501 5.5.4 would say the syntax is wrong, but the
        address is fine with SMTPUTF8. With it, the octets must be UTF-8."""
        assert self.envelope is not None
        if not self.envelope.smtp_utf8:
            return "553 5.6.7 Non-ASCII address requires SMTPUTF8 (RFC 6531)"
        try:
            address.encode("utf-8")  # aiosmtpd keeps invalid octets as surrogates
        except UnicodeEncodeError:
            return "553 5.6.7 Address is not valid UTF-8"
        return None

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._peer_ip is not None:
            self.limiter.release(self._peer_ip)
            self._peer_ip = None
        super().connection_lost(error)

    def _timeout_cb(self) -> None:
        log.info("timeout peer=%r", self.session.peer if self.session else None)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(  # type: ignore[attr-defined]
                f"421 4.4.2 {self.hostname} Error: timeout exceeded\r\n".encode()
            )
        super()._timeout_cb()

    # -- replies ---------------------------------------------------------------

    async def push(self, status: Any) -> None:
        if not self._greeted:  # the 220 greeting carries no enhanced code
            self._greeted = True
        elif isinstance(status, str) and not self._no_enhanced:
            status = with_enhanced_code(status)
        await super().push(status)

    async def smtp_EHLO(self, hostname: str) -> None:
        self._no_enhanced = bool(hostname)
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._no_enhanced = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._no_enhanced = bool(hostname)
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._no_enhanced = False

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, BareLineEnd):
            return "500 5.5.2 Bare LF in command line refused (RFC 5321 2.3.8)"
        if isinstance(error, LineTooLong):
            return "500 5.5.2 Line too long"
        if isinstance(error, TLSSetupException):
            # aiosmtpd closes the connection itself and sends nothing.
            handshake_failed("smtp", self._peer_ip or "?", error.__cause__ or error)
            return "454 4.7.0 TLS handshake failed"
        log.exception("smtp session error peer=%r", self.session.peer if self.session else None)
        return "451 4.3.0 Internal error, try again later"

    # -- DATA --------------------------------------------------------------------

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        message = Incoming(self.spool_dir, spill_threshold=DATA_IN_MEMORY)
        prologue = await self._call_handler_hook("DATA_START", message)
        if isinstance(prologue, str):  # the handler refuses before any data
            await self.push(prologue)
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            status = await self._receive(message)
            if status is None:
                self.envelope.content = None
                self.envelope.incoming = message  # type: ignore[attr-defined]
                status = await self._call_handler_hook("DATA")
        finally:
            message.discard()  # delivered (linked) or refused: the spool copy goes
            self._set_post_data_state()
            self._reset_timeout()
        await self.push(status)

    async def _receive(self, message: Incoming) -> str | None:
        """Read until <CRLF>.<CRLF>. Returns a refusal, or None if the message is good."""
        decoder = DataDecoder()
        limit = self.data_size_limit
        too_big = False
        spool_error: OSError | None = None
        started = time.monotonic()
        received = 0
        pending, self._pushback = self._pushback, b""
        while not decoder.done:
            chunk = data = b""  # not kept alive while waiting for the next read
            chunk = pending or await self._reader.read(65536)
            pending = b""
            if not chunk:
                raise ConnectionResetError("client closed during DATA")
            received += len(chunk)
            # Idle for `timeout` ends it, and so does a trickle below min_data_rate.
            now = time.monotonic()
            deadline = min(
                now + self._timeout_duration,
                started + self._timeout_duration + received / max(self.min_data_rate, 1),
            )
            self._reset_timeout(max(deadline - now, 0.01))
            data, after = decoder.feed(chunk)
            if decoder.done:
                self._pushback = after
            if too_big or spool_error is not None:
                continue
            if limit and message.size + len(data) > limit:
                too_big = True  # keep reading to the end, store nothing more
                message.discard()
                continue
            try:
                message.write(data)
            except OSError as e:  # the spool is on the data disk: it failed (store/health.py)
                spool_error = e  # read to the end all the same, then refuse
                message.discard()
        if too_big:
            return "552 5.3.4 Message size exceeds fixed maximum message size"
        if spool_error is not None:
            log.warning("spooling failed peer=%r error=%r", self.session.peer, str(spool_error))
            # RFC 5321 4.2.5 452, RFC 3463 X.3.1: temporary; the sender retries.
            return "452 4.3.1 Insufficient system storage, try again later"
        if decoder.bare_line_end:
            log.warning("bare CR/LF in DATA refused peer=%r", self.session.peer)
            return "550 5.5.2 Message contains bare CR or LF, refused (RFC 5321 2.3.8)"
        return None


def with_enhanced_code(status: str) -> str:
    """'550 No such user' -> '550 5.0.0 No such user' (each line of a multi-line reply)."""
    lines = status.split("\r\n")
    out = []
    for line in lines:
        code = line[:3]
        enhanced = DEFAULT_ENHANCED.get(code)
        if enhanced is None or _HAS_ENHANCED.match(line) or len(line) < 3:
            out.append(line)
        else:
            sep = line[3:4] or " "
            out.append(f"{code}{sep}{enhanced} {line[4:]}".rstrip())
    return "\r\n".join(out)


def create_session(
    handler: Any,
    limiter: ConnectionLimiter,
    spool_dir: Any,
    hostname: str,
    max_message_size: int,
    timeout: float,
    min_data_rate: int,
    command_size: int,
    implicit_tls: bool = False,
    **extra: Any,
) -> PimailSMTP:
    """One session. `implicit_tls`: a port where TLS starts at once (465,
    RFC 8314); `tls_context` is then the context for that handshake. AUTH
    always requires TLS (`auth_require_tls`, aiosmtpd's default)."""
    session = PimailSMTP(
        handler,
        limiter=limiter,
        spool_dir=spool_dir,
        min_data_rate=min_data_rate,
        implicit_tls=implicit_tls,
        hostname=hostname,
        ident="pimail ESMTP",
        data_size_limit=max_message_size,
        enable_SMTPUTF8=True,
        decode_data=False,
        timeout=timeout,
        command_call_limit=CALL_LIMITS,
        **extra,
    )
    session.command_size_limit = command_size
    return session


__all__ = ["ConnectionLimiter", "Envelope", "PimailSMTP", "Session", "create_session"]
