"""The POP3 listener and connection loop: the only place POP3 touches sockets.

Each connection feeds a `protocol.Pop3Connection` and carries out what it asks:

- `Login`: the password through the shared `Authenticator` (scrypt in a
  thread, the login throttle of every protocol; a refusal is [SYS/TEMP]), then
  INBOX opened on the store's writer and its messages read from the index
  (`IndexReader`, a reader thread): that list is the session's maildrop;
- `Retrieve`: the message's file name from the index, the file opened and read
  on threads, and streamed in chunks (RETR) or cut (TOP), dot-stuffed;
- `StartTls`: what the client pipelined after STLS is dropped, then the handshake;
- `Update` (QUIT): the marked UIDs removed through `Store.expunge`, which tells
  the IMAP sessions at once.

The maildrop is not locked. RFC 1939 4 has the server take an exclusive lock
"as necessary to prevent messages from being modified or removed" before
UPDATE; like Dovecot's default (pop3_lock_session = no), pimail does without:
a lock would let one stale phone connection shut out every other client. The
session addresses messages by UID, so an IMAP session or a second POP3 session
may expunge meanwhile: such a message then reads as gone ("-ERR"), and removing
it again at QUIT is harmless. Messages stay in new/ (`claim_new` is IMAP's
\\Recent: a POP3 session takes it from nobody).

Timeouts: RFC 1939 3's autologout closes a silent client without a response
and without the UPDATE state, so a dropped or timed-out session deletes
nothing. That timer (10 minutes) is for a logged-in client; before login the
whole AUTHORIZATION state has one deadline (`pop3.login_timeout`, 60 s),
which no drip of octets extends, and input is read a few KiB at a time. A
client that stops reading gets the same treatment when a write cannot drain
within the timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sqlite3
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..auth.accounts import Account
from ..auth.login import Authenticator
from ..config import Settings
from ..net import ConnectionLimiter, limit_writes, serve_connection, start_tls
from ..store.ops import StoreError
from ..store.reader import IndexReader
from ..store.store import Mailbox, Store
from . import protocol as p

log = logging.getLogger(__name__)
READ_SIZE = 65536
# Before login: a command line's worth (p.MAX_LINE), so that one read of
# pipelined commands cannot queue more than a few KiB of answers.
PRELOGIN_READ_SIZE = p.MAX_LINE
CHUNK = 65536  # octets of a message read and sent at a time

# The context for a TLS handshake starting now (session ticket keys rotate).
TlsContextFactory = Callable[[], ssl.SSLContext]


class Pop3Server:
    """Serves POP3 connections: `handle` is given to `asyncio.start_server`.

    `tls`: returns the context for a handshake starting now, or None when no
    certificate exists (then there is no STLS, and no implicit TLS listener)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        authenticator: Authenticator,
        reader: IndexReader,
        tls: TlsContextFactory | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.authenticator = authenticator
        self.reader = reader
        self.tls = tls
        s = settings.pop3
        self.limiter = ConnectionLimiter(s.max_connections_per_ip, s.max_connections)

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, implicit_tls: bool
    ) -> None:
        async def run(ip: str) -> None:
            await Connection(self, reader, writer, ip, implicit_tls).run()

        refusal = b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
        await serve_connection(
            "pop3", self.limiter, reader, writer, self.tls if implicit_tls else None, refusal, run
        )


class Connection:
    def __init__(
        self,
        server: Pop3Server,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ip: str,
        tls: bool,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.ip = ip
        settings = server.settings
        self.timeout = settings.pop3.timeout
        self.login_deadline = time.monotonic() + settings.pop3.login_timeout
        timestamp = f"{os.getpid()}.{int(time.time())}.{secrets.token_hex(4)}"
        self.conn = p.Pop3Connection(
            hostname=settings.hostname,
            timestamp=timestamp,
            tls=tls,
            tls_available=server.tls is not None,
            allow_plaintext_auth=settings.pop3.allow_plaintext_auth,
        )
        self.account: Account | None = None
        self.mailbox: Mailbox | None = None

    async def run(self) -> None:
        conn = self.conn
        limit_writes(self.writer, prelogin=True)
        await self._flush()
        while not conn.closing:
            size = PRELOGIN_READ_SIZE if self.account is None else READ_SIZE
            try:
                async with asyncio.timeout(self._timeout()):
                    data = await self.reader.read(size)
            except TimeoutError:
                # RFC 1939 3: no response, no UPDATE state.
                log.info("pop3 autologout ip=%s", self.ip)
                return
            if not data:
                return  # dropped: nothing marked is removed
            conn.receive_data(data)
            while (event := conn.next_event()) is not None:
                if isinstance(event, p.StartTls):
                    await self._start_tls()
                    continue
                await self._flush()
                if isinstance(event, p.Login):
                    await self._login(event)
                elif isinstance(event, p.Retrieve):
                    await self._retrieve(event)
                else:
                    await self._update(event)
            await self._flush()

    async def _flush(self) -> None:
        await self._write(self.conn.data_to_send())

    async def _write(self, data: bytes) -> None:
        if data:
            self.writer.write(data)
            async with asyncio.timeout(self._timeout()):  # a client that does not read
                await self.writer.drain()

    def _timeout(self) -> float:
        """pop3.timeout, and before login no more than what is left of the
        login deadline."""
        if self.account is None:
            return min(max(self.login_deadline - time.monotonic(), 0.0), self.timeout)
        return self.timeout

    # -- events ------------------------------------------------------------------

    async def _login(self, event: p.Login) -> None:
        server = self.server
        result = await server.authenticator.authenticate(
            event.username, event.password, self.ip, "pop3"
        )
        account = result.account
        if result.refused:
            self.conn.login_refused()
            return
        if account is None:
            self.conn.login_failed()
            return
        try:
            mailbox = await server.store.run(server.store.open_mailbox, account, "INBOX")
            messages = await server.reader.run(_snapshot, mailbox.id)
        except (StoreError, sqlite3.Error, OSError):
            log.exception("pop3 maildrop unavailable user=%s", account.address)
            self.conn.login_failed(temporary=True)
            return
        self.account, self.mailbox = account, mailbox
        limit_writes(self.writer, prelogin=False)
        self.conn.login_succeeded(p.Maildrop(mailbox.uidvalidity, messages))

    async def _retrieve(self, event: p.Retrieve) -> None:
        mailbox = self.mailbox
        assert mailbox is not None
        reader = self.server.reader
        try:
            if event.lines is not None:
                found = await reader.run(
                    _read_top, mailbox.id, mailbox.path, event.uid, event.lines
                )
            else:
                found = await reader.run(_open_message, mailbox.id, mailbox.path, event.uid)
        except (OSError, sqlite3.Error):
            log.exception("pop3 message unreadable mailbox=%d uid=%d", mailbox.id, event.uid)
            self.conn.message_gone(temporary=True)
            return
        if found is None:
            self.conn.message_gone()
            return
        if isinstance(found, bytes):  # TOP: the part wanted, read whole
            self.conn.message_follows(len(found))
            stuffer = p.DotStuffer()
            await self._write(self.conn.data_to_send() + stuffer.feed(found) + stuffer.end())
            return
        file, size, chunk = found
        self.conn.message_follows(size)
        stuffer = p.DotStuffer()
        data = self.conn.data_to_send() + stuffer.feed(chunk)
        if file is not None:
            # Larger than a chunk: one chunk in memory at a time, read off the loop.
            loop = asyncio.get_running_loop()
            try:
                while chunk:
                    await self._write(data)
                    chunk = await loop.run_in_executor(None, file.read, CHUNK)
                    data = stuffer.feed(chunk)
            finally:
                file.close()
        await self._write(data + stuffer.end())

    async def _start_tls(self) -> None:
        """RFC 2595 4. What arrived after STLS is dropped (the protocol dropped
        its own buffer; this is the stream's), *before* the "+OK" goes out: the
        client's handshake may follow the "+OK" at once and must not be lost.
        From the write to `start_tls` nothing yields to the loop (unless the
        client left a full send buffer unread), so no octet is read in the clear
        in between."""
        tls = self.server.tls
        assert tls is not None
        self.reader._buffer.clear()  # type: ignore[attr-defined]
        self.writer.write(self.conn.data_to_send())
        if not await start_tls(self.writer, tls(), "pop3", self.ip):
            self.conn.tls_failed()
            return
        limit_writes(self.writer, prelogin=True)
        self.conn.tls_started()

    async def _update(self, event: p.Update) -> None:
        mailbox, account = self.mailbox, self.account
        assert mailbox is not None and account is not None
        store = self.server.store
        try:
            removed = await store.run(store.expunge, mailbox.id, list(event.uids))
        except (StoreError, sqlite3.Error, OSError) as e:
            # RFC 1939 6: -ERR, and the messages stay (the data disk may be gone,
            # read-only or full: store/health.py; expunge is allowed when only full).
            guard = store.guard
            if guard is not None and await guard.judge(e):
                log.warning("pop3 update refused user=%s error=%r", account.address, str(e))
            else:
                log.exception("pop3 update failed user=%s", account.address)
            self.conn.update_failed()
            return
        log.info("pop3 quit user=%s ip=%s deleted=%d", account.address, self.ip, len(removed))
        self.conn.update_done(len(removed))


# -- on reader threads ----------------------------------------------------------------


def _snapshot(con: sqlite3.Connection, mailbox_id: int) -> list[tuple[int, int]]:
    """(uid, size) of every message in the folder, in UID order."""
    return con.execute(
        "SELECT uid, size FROM messages WHERE mailbox_id = ? ORDER BY uid", (mailbox_id,)
    ).fetchall()


def _open(con: sqlite3.Connection, mailbox_id: int, folder: Path, uid: int) -> BinaryIO | None:
    """The message's file, open; None if the message is gone. A flag change may
    rename the file between the query and the open: then look the name up again."""
    for _attempt in range(3):
        rows = con.execute(
            "SELECT subdir, filename FROM messages WHERE mailbox_id = ? AND uid = ?",
            (mailbox_id, uid),
        ).fetchall()  # fetchall: the read transaction ends, a retry sees renames
        if not rows:
            return None
        subdir, filename = rows[0]
        try:
            return open(folder / subdir / filename, "rb")  # the caller closes it
        except FileNotFoundError:
            continue
    return None


def _open_message(
    con: sqlite3.Connection, mailbox_id: int, folder: Path, uid: int
) -> tuple[BinaryIO | None, int, bytes] | None:
    """(open file, size in octets, first chunk), or None if the message is gone.
    The file is None (closed already) when the first chunk is all of it."""
    file = _open(con, mailbox_id, folder, uid)
    if file is None:
        return None
    try:
        size = os.fstat(file.fileno()).st_size
        chunk = file.read(CHUNK)
    except BaseException:
        file.close()
        raise
    if len(chunk) < CHUNK:
        file.close()
        return None, size, chunk
    return file, size, chunk


def _read_top(
    con: sqlite3.Connection, mailbox_id: int, folder: Path, uid: int, lines: int
) -> bytes | None:
    file = _open(con, mailbox_id, folder, uid)
    if file is None:
        return None
    with file:
        return p.top_of(file, lines)
