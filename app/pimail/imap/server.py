"""The IMAP listener and connection loop: the only place IMAP touches sockets.

Bytes read from the client go to the parser; its events go to the session;
the session's output is written back. While a session is in IDLE the loop
also waits on its mailbox's change notifications and pushes updates at once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..net import ConnectionLimiter, limit_writes, serve_connection, start_tls
from . import events as ev
from .context import ImapContext
from .grammar import ParseError
from .parser import PRELOGIN, Parser
from .session import Session

log = logging.getLogger(__name__)
READ_SIZE = 65536
MAX_BAD = 30  # protocol errors in a row before the connection is closed


class ImapServer:
    def __init__(self, ctx: ImapContext) -> None:
        self.ctx = ctx
        s = ctx.settings.imap
        self.limiter = ConnectionLimiter(s.max_connections_per_ip, s.max_connections)

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, implicit_tls: bool
    ) -> None:
        async def run(ip: str) -> None:
            await Connection(self.ctx, reader, writer, ip, implicit_tls).run()

        tls = (lambda: self.ctx.tls_context) if implicit_tls else None  # type: ignore[return-value]
        await serve_connection(
            "imap", self.limiter, reader, writer, tls, b"* BYE Too many connections\r\n", run
        )


class Connection:
    def __init__(
        self,
        ctx: ImapContext,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ip: str,
        tls: bool,
    ) -> None:
        self.ctx = ctx
        self.reader = reader
        self.writer = writer
        self.session = Session(ctx, ip, tls)
        settings = ctx.settings.imap
        self.parser = Parser(max_append_size=settings.max_append_size)
        self.limits = self.parser.limits
        # Until a login, a few KiB per command (issue 13's budget), and one
        # total deadline for the whole not-authenticated phase: a client that
        # drips a byte now and then does not get a new timer with each.
        self.parser.set_limits(PRELOGIN)
        self.login_deadline = time.monotonic() + settings.login_timeout
        self.bad = 0

    async def run(self) -> None:
        s = self.session
        limit_writes(self.writer, prelogin=True)
        self.writer.write(f"* OK [CAPABILITY {s.capabilities()}] pimail IMAP ready\r\n".encode())
        while not s.logout:
            data = await self._read()
            if not data:
                return
            self.parser.receive_data(data)
            await self._process()
            if s.starttls_requested:
                await self._starttls()
            else:
                await self._flush()

    async def _read(self) -> bytes:
        s = self.session
        # RFC 9051 5.4 asks 30 minutes of an authenticated client only.
        timeout = self._timeout()
        size = PRELOGIN.max_command_size if s.account is None else READ_SIZE
        if s.idling is None or s.selected is None:
            try:
                return await asyncio.wait_for(self.reader.read(size), timeout)
            except TimeoutError:
                self.writer.write(b"* BYE Autologout; idle for too long\r\n")
                return b""
        # IDLE: wait for the client (DONE) or for a change to the mailbox.
        shared = s.selected.shared
        while True:
            changed = asyncio.Event()
            shared.watchers.add(changed)
            sel = s.selected
            if shared.stale or shared.uids is not sel.uids or shared.highestmodseq != sel.modseq:
                changed.set()  # something changed while we were busy: no lost wake-up
            read = asyncio.ensure_future(self.reader.read(READ_SIZE))
            wake = asyncio.ensure_future(changed.wait())
            try:
                done, _ = await asyncio.wait(
                    {read, wake}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                shared.watchers.discard(changed)
                wake.cancel()
            if read in done:
                return read.result()
            read.cancel()
            if not done:
                self.writer.write(b"* BYE Autologout; idle for too long\r\n")
                return b""
            if s.selected is not None:
                await s.sync(expunges=True)
                await self._flush()

    async def _process(self) -> None:
        s = self.session
        while not s.logout:
            try:
                event = self.parser.next_event()
            except ParseError as e:
                self.bad += 1
                s.send(e.response())
                if e.fatal:  # e.g. a {n+} literal over the limit (RFC 7888 4)
                    log.info("imap closing ip=%s reason=%r", s.peer_ip, e.message)
                    s.send("* BYE Closing: announced more than allowed\r\n")
                    s.logout = True
                elif self.bad >= MAX_BAD:
                    s.send("* BYE Too many protocol errors\r\n")
                    s.logout = True
                continue
            if event is None:
                return
            if isinstance(event, ev.NeedContinuation):
                refusal = await s.literal_refusal(event)
                if refusal is not None:  # the client sends no data: the command is over
                    self.parser.reject_literal()
                    s.send(refusal)
                    continue
                s.send("+ Ready for literal data\r\n")
                await self._flush()
                continue
            self.bad = 0
            if isinstance(event, ev.IdleDone):
                if s.idling is not None:
                    s.idle_done()
            elif isinstance(event, ev.AuthenticateResponse | ev.AuthenticateCancel):
                await s.sasl_response(event)
            else:
                assert isinstance(event, ev.Command)
                await s.handle(event)
            if s.idling is not None:
                self.parser.expect_done(s.idling)
            if s.sasl_tag is not None:
                self.parser.expect_sasl_response(s.sasl_tag)
            if s.utf8:
                self.parser.utf8_enabled = True
            if s.account is not None and self.parser.limits is PRELOGIN:
                self.parser.set_limits(self.limits)
                limit_writes(self.writer, prelogin=False)
            if s.starttls_requested:
                return
            if len(s.out) > 256 or s.account is None:
                await self._flush()  # before login: one answer at a time

    async def _flush(self) -> None:
        data = self.session.take_output()
        if data:
            self.writer.write(data)
            # A client that does not read is not waited for beyond its timeout.
            async with asyncio.timeout(self._timeout()):
                await self.writer.drain()

    def _timeout(self) -> float:
        """Seconds to wait for the client: imap.timeout, and before login no
        more than what is left of the login deadline."""
        timeout = self.ctx.settings.imap.timeout
        if self.session.account is None:
            return min(max(self.login_deadline - time.monotonic(), 0.0), timeout)
        return timeout

    async def _starttls(self) -> None:
        s = self.session
        s.starttls_requested = False
        # Anything the client sent after STARTTLS in the clear is dropped, never
        # run after the handshake (the CVE-2011-0411 class of injection). Drop it
        # before the OK goes out, and start TLS without yielding to the loop in
        # between: what arrives after the OK is the client's TLS handshake.
        self.parser.reset()
        self.reader._buffer.clear()  # type: ignore[attr-defined]
        self.writer.write(s.take_output())
        assert self.ctx.tls_context is not None
        if not await start_tls(self.writer, self.ctx.tls_context, "imap", s.peer_ip):
            s.logout = True
            return
        limit_writes(self.writer, prelogin=True)
        s.tls = True
