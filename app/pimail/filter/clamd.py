"""Virus scanning through a running clamd, over its unix or TCP socket.

`scan(address, message, timeout=..., max_size=...)` streams a message to clamd
with the INSTREAM command and answers a `ScanResult`: "clean", "infected"
(with the signature's name), "skipped" (larger than `max_size`, not sent) or
"error" (clamd unreachable, slow, or answering something we cannot read). It
never raises: every failure is an "error" result whose `detail` says what
went wrong, so the caller decides the policy (pimail's default: infected ->
554 5.7.1, error -> 451 4.7.0; see `ScanResult`). `ping(address)` and
`version(address)` are the PING and VERSION commands, for health checks and
an X-Virus-Scanned header.

The protocol (clamd(8), "INSTREAM"; the commands are prefixed with "z" so that
they, and clamd's replies, end with a NUL byte instead of a newline):

    client: zINSTREAM\\0
    client: <4-byte big-endian length><that many bytes>   repeated
    client: \\0\\0\\0\\0                                   end of the stream
    clamd:  stream: OK\\0 | stream: <name> FOUND\\0 | <text> ERROR\\0

clamd refuses a stream longer than its StreamMaxLength (25 MB by default): it
answers "INSTREAM size limit exceeded. ERROR" and closes the connection while
we are still sending. The reply is read concurrently with the sending, so that
answer is reported as it is rather than as a broken pipe. Set `max_size` to at
most clamd's StreamMaxLength: a larger message is then "skipped" without being
sent (nothing was scanned: mark it, do not reject or tempfail it forever).

Addresses: "unix:/run/clamav/clamd.ctl", "127.0.0.1:3310", "[::1]:3310". The
same syntax serves rspamd (`pimail.filter.rspamd` uses `connect` and the
message helpers below).

The message is read from the file in chunks of `CHUNK` bytes, never whole
into memory. Reads of a local file are short and stay on the event loop.

What it touches: a socket to clamd; the message file, read only. Nothing of
the message is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

from ..config import parse_listen

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
MAX_REPLY = 4096  # clamd's replies are one short line; anything longer is not clamd
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_SIZE = 25 * 1024 * 1024  # clamd's default StreamMaxLength (clamd.conf(5))

# What can be scanned: the bytes themselves, a path to the message file, or an
# open binary file (read from its current position).
MessageSource = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO
Status = Literal["clean", "infected", "skipped", "error"]

_FOUND = re.compile(r"^stream: (.{1,200}) FOUND$")
_ERROR = re.compile(r"^(.{0,300}) ERROR$")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


@dataclass(frozen=True)
class ScanResult:
    """clamd's verdict on one message.

    Suggested answers (RFC 3463): "infected" -> 554 5.7.1 ("Delivery not
    authorized, message refused", as for the built-in screen); "error" ->
    451 4.7.0 (temporary: the sender retries) or, if so configured, accept
    and mark; "skipped" -> accept and mark (the message was larger than
    clamd takes, so nothing was scanned).
    """

    status: Status
    signature: str | None = None  # the signature's name, when infected
    detail: str = ""  # what happened, for logs and headers (ASCII, one line)

    @property
    def header_value(self) -> str:
        """A value for an X-Virus-Scanned style header."""
        if self.status == "infected":
            return f"infected ({self.signature})"
        return self.status


# -- addresses and connections (shared with rspamd.py) -------------------------


def parse_address(address: str) -> tuple[str, int] | str:
    """Parse "unix:/path" into "/path", "host:port" or "[v6]:port" into (host, port).

    Raises ValueError on anything else.
    """
    if address.startswith("unix:"):
        path = address[len("unix:") :]
        if not path:
            raise ValueError(f"no socket path in {address!r}")
        return path
    host, port = parse_listen(address)  # the settings' own "host:port" syntax
    if not host or not 0 < port < 65536:
        raise ValueError(f"not unix:/path or host:port: {address!r}")
    return host, port


async def connect(
    address: str, limit: int = 64 * 1024
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a stream to a "unix:/path" or "host:port" address."""
    target = parse_address(address)
    if isinstance(target, str):
        return await asyncio.open_unix_connection(target, limit=limit)
    return await asyncio.open_connection(target[0], target[1], limit=limit)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


# -- the message as chunks (shared with rspamd.py) -----------------------------


def message_size(source: MessageSource) -> int | None:
    """Bytes left to read from `source`, or None if it cannot tell."""
    if isinstance(source, bytes | bytearray):
        return len(source)
    if isinstance(source, memoryview):
        return source.nbytes
    if isinstance(source, str | os.PathLike):
        return os.stat(source).st_size
    try:
        return os.fstat(source.fileno()).st_size - source.tell()
    except (AttributeError, OSError, ValueError):
        return None


def message_chunks(source: MessageSource, size: int = CHUNK) -> Iterator[bytes]:
    """The message in pieces of at most `size` bytes; opens and closes a path."""
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source).cast("B")
        for start in range(0, len(view), size):
            yield bytes(view[start : start + size])
        return
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:
            yield from message_chunks(f, size)
        return
    while chunk := source.read(size):
        yield chunk


def _one_line(text: str, limit: int = 300) -> str:
    return _UNPRINTABLE.sub("?", text)[:limit]


# -- clamd ---------------------------------------------------------------------


def parse_reply(reply: bytes) -> ScanResult:
    """clamd's answer to INSTREAM (one NUL-terminated line) -> ScanResult."""
    text = reply.rstrip(b"\0").decode("ascii", "replace").strip()
    if text == "stream: OK":
        return ScanResult("clean", None, "stream: OK")
    if found := _FOUND.match(text):
        name = _one_line(found.group(1), 200)
        return ScanResult("infected", name, text[:300])
    if error := _ERROR.match(text):
        return ScanResult("error", None, f"clamd: {_one_line(error.group(1))}")
    return ScanResult("error", None, f"unexpected reply from clamd: {_one_line(text)!r}")


async def _open_socket(address: str) -> socket.socket:
    """A connected non-blocking socket to clamd.

    Raw sockets rather than asyncio streams: when clamd refuses a stream (size
    limit) it replies and closes while we are still sending; our send then
    fails with EPIPE, and a stream would drop the reply already received. A
    socket still gives it to recv() (Linux keeps the receive queue).
    """
    loop = asyncio.get_running_loop()
    target = parse_address(address)
    if isinstance(target, str):
        candidates = [(socket.AF_UNIX, target)]
    else:
        infos = await loop.getaddrinfo(target[0], target[1], type=socket.SOCK_STREAM)
        candidates = [(family, sockaddr) for family, _, _, _, sockaddr in infos]
    error: OSError = OSError(f"no address for {address}")
    for family, sockaddr in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, sockaddr)
            return sock
        except OSError as e:
            sock.close()
            error = e
        except BaseException:
            sock.close()
            raise
    raise error


async def _read_reply(sock: socket.socket) -> bytes:
    """Bytes up to clamd's NUL (or the end of the stream); at most MAX_REPLY."""
    loop = asyncio.get_running_loop()
    reply = b""
    while b"\0" not in reply:
        chunk = await loop.sock_recv(sock, MAX_REPLY + 1 - len(reply))
        if not chunk:
            break
        reply += chunk
        if len(reply) > MAX_REPLY:
            raise _ReplyTooLong
    return reply.split(b"\0", 1)[0]


class _ReplyTooLong(Exception):
    pass


async def _instream(address: str, source: MessageSource, max_size: int) -> ScanResult:
    loop = asyncio.get_running_loop()
    sock = await _open_socket(address)
    reply_task = asyncio.create_task(_read_reply(sock))
    chunks = message_chunks(source)
    try:
        sent = 0
        try:
            await loop.sock_sendall(sock, b"zINSTREAM\0")
            for chunk in chunks:
                if reply_task.done():
                    break  # clamd answered early (size limit): stop sending
                if sent + len(chunk) > max_size:  # a file whose size we could not tell
                    return ScanResult("skipped", None, f"message over {max_size} bytes")
                await loop.sock_sendall(sock, struct.pack(">I", len(chunk)) + chunk)
                sent += len(chunk)
            else:
                # A zero-length chunk ends the stream.
                await loop.sock_sendall(sock, struct.pack(">I", 0))
        except ConnectionError as e:
            # clamd closed while we were sending: its reply, if any, says why.
            log.debug("clamd closed during INSTREAM sent=%d error=%s", sent, e)
        try:
            reply = await reply_task
        except _ReplyTooLong:
            return ScanResult("error", None, f"reply from clamd longer than {MAX_REPLY} bytes")
        except ConnectionError as e:
            return ScanResult("error", None, f"clamd closed the connection: {e}")
        if not reply:
            return ScanResult("error", None, f"clamd closed the connection after {sent} bytes")
        return parse_reply(reply)
    finally:
        chunks.close()
        reply_task.cancel()
        with contextlib.suppress(BaseException):
            await reply_task
        sock.close()


async def scan(
    address: str,
    message: MessageSource,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_size: int = DEFAULT_MAX_SIZE,
) -> ScanResult:
    """Scan one message with clamd's INSTREAM; never raises (see the module doc).

    `timeout` bounds the whole exchange: connect, send, clamd's scan, reply.
    """
    started = time.monotonic()
    try:
        size = message_size(message)
        if size is not None and size > max_size:
            result = ScanResult("skipped", None, f"message of {size} bytes over {max_size}")
        else:
            async with asyncio.timeout(timeout):
                result = await _instream(address, message, max_size)
    except TimeoutError:
        result = ScanResult("error", None, f"clamd did not answer within {timeout:g}s")
    except (OSError, ValueError) as e:
        # Connection refused, no such socket, a bad address, an unreadable file...
        result = ScanResult("error", None, f"cannot scan with clamd at {address}: {e}")
    except Exception as e:  # never raise into the filter pipeline
        log.exception("clamd scan failed address=%s", address)
        result = ScanResult("error", None, f"clamd scan failed: {type(e).__name__}: {e}")
    elapsed = time.monotonic() - started
    if result.status == "error":
        log.warning("clamd error address=%s detail=%r time=%.3f", address, result.detail, elapsed)
    else:
        log.debug(
            "clamd scan status=%s signature=%s time=%.3f",
            result.status,
            result.signature,
            elapsed,
        )
    return result


async def _command(address: str, command: bytes, timeout: float) -> str | None:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            sock = await _open_socket(address)
            try:
                await loop.sock_sendall(sock, command)
                reply = await _read_reply(sock)
            finally:
                sock.close()
    except (OSError, TimeoutError, ValueError, _ReplyTooLong) as e:
        log.debug("clamd command failed address=%s command=%r error=%s", address, command, e)
        return None
    return reply.decode("ascii", "replace").strip()


async def ping(address: str, *, timeout: float = 5.0) -> bool:
    """True if clamd answers PING with PONG."""
    return await _command(address, b"zPING\0", timeout) == "PONG"


async def version(address: str, *, timeout: float = 5.0) -> str | None:
    """clamd's VERSION line ("ClamAV 1.4.6/27000/..."), or None if unreachable."""
    reply = await _command(address, b"zVERSION\0", timeout)
    return _one_line(reply) if reply else None
