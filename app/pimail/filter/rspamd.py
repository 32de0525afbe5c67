"""Spam checking through a running rspamd, over its HTTP protocol (POST /checkv2).

`check(address, message, ip=..., helo=..., mail_from=..., rcpt_to=[...])`
sends one message with its SMTP envelope to rspamd's normal worker (port 11333
by default, or a unix socket) and answers an `RspamdResult`: rspamd's action
("no action", "greylist", "add header", "rewrite subject", "soft reject",
"reject"; a force_actions rule may say "discard" or "quarantine"), its score,
the score needed for "reject" (`required_score`) and the symbols that fired
with their scores. It never raises: any failure is a result whose `error` says
what went wrong (and whose action is "").

The protocol (rspamd's "Rspamd protocol" page; /checkv2 since rspamd 1.9, a
JSON reply): an HTTP/1.x POST whose body is the message as received, with the
envelope in request headers:

    IP         the client's address          Helo      its EHLO/HELO name
    Hostname   its verified rDNS name        From      the MAIL FROM address
    Rcpt       one header per RCPT TO        Queue-Id  pimail's id for the message
    User       the SASL login, if any        MTA-Name  pimail's host name
    Pass: all  run every rule even after an early decision (off by default)

and the reply `{"action": ..., "score": ..., "required_score": ...,
"symbols": {"NAME": {"score": ..., ...}}, "messages": {"smtp_message": ...},
"is_skipped": ...}`. Without a Hostname header rspamd resolves the client's
PTR itself; without IP it cannot run its IP-based rules.

The HTTP client is written by hand (no HTTP library is a dependency yet): one
request per connection (`Connection: close`), the body with Content-Length
(chunked if the size of a file object cannot be told), and the reply read by
Content-Length, chunked transfer coding (RFC 9112 7.1) or until the close,
never more than `max_reply` bytes, all within `timeout`.

Suggested answers (RFC 3463) for the pipeline: reject -> 550 5.7.1; soft
reject and greylist -> 451 4.7.1; add header and rewrite subject -> accept,
marked as spam; error -> the pipeline's own score alone.

What it touches: a socket to rspamd (`pimail.filter.clamd.connect`, the same
address syntax: "127.0.0.1:11333", "unix:/run/rspamd/normal.sock"); the
message file, read only. Nothing of the message is logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from pimail.filter.clamd import (
    MessageSource,
    close,
    connect,
    message_chunks,
    message_size,
    parse_address,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 15.0  # rspamd's own task_timeout is 8 s
DEFAULT_MAX_REPLY = 1024 * 1024  # a checkv2 reply is a few KB; URL-heavy mail, tens of KB
MAX_HEAD = 16 * 1024  # the reply's status line and headers, together
MAX_HEADERS = 100
MAX_SYMBOLS = 2000
MAX_NAME = 200

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")  # no CR/LF (header injection), no controls
_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3})(?: [^\r\n]*)?\r\n$")
_CHUNK_SIZE = re.compile(rb"^([0-9A-Fa-f]{1,8})[ \t]*(?:;[^\r\n]*)?\r\n$")


@dataclass(frozen=True)
class RspamdResult:
    action: str  # "" when error is set
    score: float
    required_score: float
    symbols: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    smtp_message: str | None = None  # rspamd's suggested SMTP reply text, if any
    skipped: bool = False  # rspamd skipped its rules (e.g. settings said so)

    @property
    def ok(self) -> bool:
        return self.error is None


class RspamdError(Exception):
    """A failure talking to rspamd; never leaves this module."""


def _failed(error: str) -> RspamdResult:
    return RspamdResult("", 0.0, 0.0, {}, error=error)


def _clean(value: object, limit: int = 1000) -> str:
    return _UNSAFE.sub(" ", str(value))[:limit]


# -- the request ---------------------------------------------------------------


def request_head(
    host: str,
    length: int | None,
    headers: Iterable[tuple[str, str]],
    path: str = "/checkv2",
) -> bytes:
    """The request line and headers; chunked body if `length` is None."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    lines += [f"{name}: {_clean(value)}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "replace")


def envelope_headers(
    *,
    ip: str | None = None,
    helo: str | None = None,
    hostname: str | None = None,
    mail_from: str | None = None,
    rcpt_to: Iterable[str] = (),
    queue_id: str | None = None,
    user: str | None = None,
    mta_name: str | None = None,
    pass_all: bool = False,
    settings_id: str | None = None,
) -> list[tuple[str, str]]:
    """rspamd's request headers for an SMTP envelope (None: not sent)."""
    headers: list[tuple[str, str]] = []
    optional = [
        ("IP", ip),
        ("Helo", helo),
        ("Hostname", hostname),
        ("Queue-Id", queue_id),
        ("User", user),
        ("MTA-Name", mta_name),
        ("Settings-ID", settings_id),
    ]
    headers += [(name, value) for name, value in optional if value]
    if mail_from is not None:
        headers.append(("From", mail_from or "<>"))  # RFC 5321 4.5.5: the null reverse-path
    headers += [("Rcpt", rcpt) for rcpt in rcpt_to]
    if pass_all:
        headers.append(("Pass", "all"))
    return headers


# -- the reply -----------------------------------------------------------------


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readuntil(b"\r\n")
    matched = _STATUS_LINE.match(status_line)
    if not matched:
        raise RspamdError(f"not an HTTP reply: {_clean(status_line[:80].decode('latin-1'))!r}")
    headers: dict[str, str] = {}
    size = len(status_line)
    for _ in range(MAX_HEADERS + 1):
        line = await reader.readuntil(b"\r\n")
        size += len(line)
        if size > MAX_HEAD:
            raise RspamdError(f"reply headers over {MAX_HEAD} bytes")
        if line == b"\r\n":
            return int(matched.group(1)), headers
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon:
            raise RspamdError("malformed header line in the reply")
        headers[name.strip().lower()] = value.strip()
    raise RspamdError(f"more than {MAX_HEADERS} reply headers")


async def _read_chunked(reader: asyncio.StreamReader, max_reply: int) -> bytes:
    # RFC 9112 7.1: chunk-size [extensions] CRLF data CRLF ... 0 CRLF trailers CRLF
    body = bytearray()
    while True:
        matched = _CHUNK_SIZE.match(await reader.readuntil(b"\r\n"))
        if not matched:
            raise RspamdError("malformed chunk size in the reply")
        size = int(matched.group(1), 16)
        if size == 0:
            break
        if len(body) + size > max_reply:
            raise RspamdError(f"reply over {max_reply} bytes")
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise RspamdError("malformed chunk in the reply")
    for _ in range(MAX_HEADERS + 1):  # trailer fields, ignored
        if await reader.readuntil(b"\r\n") == b"\r\n":
            return bytes(body)
    raise RspamdError("too many trailer fields in the reply")


async def _read_body(
    reader: asyncio.StreamReader, headers: dict[str, str], max_reply: int
) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader, max_reply)
    if "content-length" in headers:
        length = headers["content-length"]
        if not length.isdigit():
            raise RspamdError(f"bad Content-Length {_clean(length, 40)!r}")
        if int(length) > max_reply:
            raise RspamdError(f"reply of {length} bytes over {max_reply}")
        return await reader.readexactly(int(length))
    body = await reader.read(max_reply + 1)  # until the close
    while len(body) <= max_reply and (more := await reader.read(max_reply + 1 - len(body))):
        body += more
    if len(body) > max_reply:
        raise RspamdError(f"reply over {max_reply} bytes")
    return body


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RspamdError(f"{what} is not a number in rspamd's reply")
    return float(value)


def parse_reply(status: int, body: bytes) -> RspamdResult:
    """A /checkv2 HTTP reply (status, body) -> RspamdResult."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    if status != 200:
        reason = data.get("error") if isinstance(data, dict) else None
        return _failed(
            f"rspamd answered HTTP {status}" + (f": {_clean(reason, 200)}" if reason else "")
        )
    if not isinstance(data, dict):
        return _failed("rspamd's reply is not a JSON object")
    try:
        action = data.get("action")
        if not isinstance(action, str) or not action:
            raise RspamdError("no action in rspamd's reply")
        score = _number(data.get("score"), "score")
        required = _number(data.get("required_score", math.inf), "required_score")
    except RspamdError as e:
        return _failed(str(e))
    symbols: dict[str, float] = {}
    raw_symbols = data.get("symbols")
    if isinstance(raw_symbols, dict):
        for name, symbol in list(raw_symbols.items())[:MAX_SYMBOLS]:
            if isinstance(symbol, dict) and isinstance(symbol.get("score"), int | float):
                symbols[_clean(name, MAX_NAME)] = float(symbol["score"])
    messages = data.get("messages")
    smtp_message = messages.get("smtp_message") if isinstance(messages, dict) else None
    return RspamdResult(
        action=_clean(action, 40),
        score=score,
        required_score=required,
        symbols=symbols,
        smtp_message=_clean(smtp_message, 300) if isinstance(smtp_message, str) else None,
        skipped=data.get("is_skipped") is True,
    )


# -- the exchange --------------------------------------------------------------


async def _exchange(
    address: str, message: MessageSource, headers: list[tuple[str, str]], max_reply: int
) -> RspamdResult:
    target = parse_address(address)
    if isinstance(target, str):
        host = "localhost"
    else:
        host = f"[{target[0]}]" if ":" in target[0] else target[0]  # RFC 9110 7.2: Host
    length = message_size(message)
    reader, writer = await connect(address, limit=MAX_HEAD)
    chunks = message_chunks(message)
    try:
        writer.write(request_head(host, length, headers))
        sent = 0
        for chunk in chunks:
            if length is not None and sent + len(chunk) > length:
                raise RspamdError("the message grew while it was being sent")
            writer.write(chunk if length is not None else b"%x\r\n%b\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            await writer.drain()
        if length is None:
            writer.write(b"0\r\n\r\n")
        elif sent != length:
            raise RspamdError("the message shrank while it was being sent")
        await writer.drain()
        status, reply_headers = await _read_head(reader)
        body = await _read_body(reader, reply_headers, max_reply)
    finally:
        chunks.close()
        await close(writer)
    return parse_reply(status, body)


async def check(
    address: str,
    message: MessageSource,
    *,
    ip: str | None = None,
    helo: str | None = None,
    hostname: str | None = None,
    mail_from: str | None = None,
    rcpt_to: Iterable[str] = (),
    queue_id: str | None = None,
    user: str | None = None,
    mta_name: str | None = None,
    pass_all: bool = False,
    settings_id: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_reply: int = DEFAULT_MAX_REPLY,
) -> RspamdResult:
    """Ask rspamd about one message; never raises (see the module doc).

    `mail_from=""` is the null reverse-path (sent as "<>"); None sends no From.
    """
    headers = envelope_headers(
        ip=ip,
        helo=helo,
        hostname=hostname,
        mail_from=mail_from,
        rcpt_to=rcpt_to,
        queue_id=queue_id,
        user=user,
        mta_name=mta_name,
        pass_all=pass_all,
        settings_id=settings_id,
    )
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            result = await _exchange(address, message, headers, max_reply)
    except TimeoutError:
        result = _failed(f"rspamd did not answer within {timeout:g}s")
    except RspamdError as e:
        result = _failed(str(e))
    except asyncio.LimitOverrunError:
        result = _failed("a line of rspamd's reply is too long")
    except asyncio.IncompleteReadError:
        result = _failed("rspamd closed the connection before the end of its reply")
    except ValueError as e:  # a bad address; StreamReader's over-long lines
        result = _failed(f"rspamd: {e}")
    except OSError as e:
        result = _failed(f"cannot check with rspamd at {address}: {e}")
    except Exception as e:  # never raise into the filter pipeline
        log.exception("rspamd check failed address=%s", address)
        result = _failed(f"rspamd check failed: {type(e).__name__}: {e}")
    elapsed = time.monotonic() - started
    if result.error:
        log.warning("rspamd error address=%s error=%r time=%.3f", address, result.error, elapsed)
    else:
        log.debug(
            "rspamd check action=%r score=%.2f required=%.2f symbols=%d time=%.3f",
            result.action,
            result.score,
            result.required_score,
            len(result.symbols),
            elapsed,
        )
    return result


async def ping(address: str, *, timeout: float = 5.0) -> bool:
    """True if rspamd's worker answers GET /ping with "pong"."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await connect(address, limit=MAX_HEAD)
            try:
                writer.write(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                await writer.drain()
                status, headers = await _read_head(reader)
                body = await _read_body(reader, headers, 1024)
            finally:
                await close(writer)
    except (OSError, TimeoutError, ValueError, RspamdError, asyncio.IncompleteReadError) as e:
        log.debug("rspamd ping failed address=%s error=%s", address, e)
        return False
    return status == 200 and body.strip() == b"pong"
