"""Request bodies within a budget: what a client can make the server hold.

The CSRF middleware (web/server.py) reads every form here, before any
handler, once it knows from the cookie alone who is asking:

- Nobody logged in (the login form, the setup wizard, Autodiscover):
  `web.max_body_anonymous` octets (16 KiB), whole within
  `web.anonymous_body_timeout` (10 s).
- Logged in: a form of `web.max_body_form` (1 MiB), in memory.
- Logged in, on an upload route (the compose form) with a body over that or
  of unknown length: up to MAX_BODY, each file
  streamed to an unlinked file under `<spool>/web/`, text fields within
  MAX_UPLOAD_TEXT; `web.max_uploads` such bodies at once.

A Content-Length over the budget is refused (413) before a byte of the body
is read; a chunked body is cut off at the budget. Every body must also come at
`web.body_min_rate` octets a second after `web.body_grace` seconds (a client
trickling bytes holds a connection slot; SMTP and IMAP cut such clients off
too): such a client is answered 408 and its connection closed at once.

CSRF without buffering: in a multipart body the `csrf` field must be the first
part (our one multipart form, mail/compose.html, puts it first), so a forged
upload is refused before its first file octet is spooled. Form fields are
what a browser sends (RFC 7578); a part with a Content-Transfer-Encoding (RFC
7578 4.7: senders must not use one) or a Content-Encoding (no browser sends
one) is refused, which also keeps compressed "bombs" out. Bodies within the
small budgets are read whole first and parsed from memory, so that no line of
them, however long, costs more than the budget.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import tempfile
import urllib.parse
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

log = logging.getLogger(__name__)

MAX_UPLOAD_TEXT = 8 * 1024 * 1024  # the text fields of an upload (the compose body: 5 M chars)
MAX_FIELDS = 10_000  # form fields (the message list's checkboxes: one per message)
CHUNK = 64 * 1024
CHECK_EVERY = 0.25  # seconds between two looks at a body's progress

T = TypeVar("T")


@dataclass(frozen=True)
class Budget:
    """What one request body may cost."""

    limit: int  # octets
    deadline: float | None  # seconds for the whole body, or None
    min_rate: int  # octets a second, on average, after `grace`
    grace: float
    stream: bool  # files to the spool (upload routes), not into memory


class Refused(Exception):
    """A body not taken: answer `response` and close the connection."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def too_large(limit: int) -> Refused:
    text = f"The request is too large (at most {limit} octets)."
    return Refused(web.Response(status=413, text=text))


def _bad(text: str) -> Refused:
    return Refused(web.Response(status=400, text=text))


def _forbidden() -> Refused:
    text = "The form has expired. Go back, reload, try again."
    return Refused(web.Response(status=403, text=text))


async def answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Answer `response` and end the connection. A client cut off for slowness
    is closed at once; any other keeps sending its body while aiohttp reads and
    drops it (at most 10 s, nothing kept), so that a browser sees the answer
    rather than a reset connection."""
    response.force_close()
    if response.status == 408:
        await response.prepare(request)
        await response.write_eof()
        request.protocol.force_close()
    return response


def token_matches(sent: object, expected: str | None) -> bool:
    """The CSRF token compared in constant time; as bytes, since
    compare_digest refuses non-ASCII str (a 500 before)."""
    if not isinstance(sent, str) or not sent or not expected:
        return False
    return secrets.compare_digest(sent.encode("utf-8", "replace"), expected.encode())


async def within(request: web.Request, budget: Budget, work: Awaitable[T]) -> T:
    """`work` (reading the body), cut off when the body comes too slowly:
    later than `budget.deadline`, or under `budget.min_rate` after the grace."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    start = loop.time()
    base = request.content.total_bytes
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=CHECK_EVERY)
            if done:
                return task.result()
            elapsed = loop.time() - start
            got = request.content.total_bytes - base
            late = budget.deadline is not None and elapsed > budget.deadline
            owed = budget.min_rate * (elapsed - budget.grace)
            if late or got < owed:
                log.info("web body too slow ip=%s path=%s octets=%d seconds=%.1f",
                         request.remote, request.path, got, elapsed)  # fmt: skip
                raise Refused(web.Response(status=408, text="The request body came too slowly."))
    finally:
        if not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass


async def read_form(
    request: web.Request, budget: Budget, expected: str | None, spool: Path
) -> MultiDictProxy[Any]:
    """The form of a POST, its CSRF token checked against `expected`.
    Raises Refused (400, 403, 408, 413)."""
    if request.content_length is not None and request.content_length > budget.limit:
        raise too_large(budget.limit)
    ctype = request.content_type
    if not expected or ctype not in FORM_TYPES:
        raise _forbidden()  # no token to compare with, or no form to find it in
    try:
        return await within(request, budget, _read(request, ctype, budget, expected, spool))
    except (ConnectionError, HttpProcessingError, asyncio.IncompleteReadError) as e:
        # The client went away mid-body (or its chunked framing broke): one line.
        log.info("web body aborted ip=%s path=%s error=%s", request.remote, request.path,
                 type(e).__name__)  # fmt: skip
        raise _bad("The request body was cut short.") from None


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def _read(
    request: web.Request, ctype: str, budget: Budget, expected: str, spool: Path
) -> MultiDictProxy[Any]:
    if ctype == "multipart/form-data" and budget.stream:
        return await _multipart(request.headers, request.content, request, budget, expected, spool)
    raw = await read_raw(request.content, budget.limit)
    if ctype == "application/x-www-form-urlencoded":
        form = _urlencoded(raw)
        if not token_matches(form.get("csrf"), expected):
            raise _forbidden()
        return MultiDictProxy(form)
    return await _multipart(request.headers, _memory_stream(raw), request, budget, expected, spool)


async def read_raw(content: StreamReader, limit: int) -> bytes:
    """The whole body, refused past `limit` (a chunked body has no length to check first)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await content.readany()
        if not chunk:  # readany() answers b"" at the end only
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)


def _urlencoded(raw: bytes) -> MultiDict[str]:
    try:
        text = raw.decode("utf-8")
        # HTML 5 4.10.21.8 (application/x-www-form-urlencoded): UTF-8, '+' for space
        pairs = urllib.parse.parse_qsl(
            text, keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        raise _bad("The form is malformed.") from None
    return MultiDict(pairs)


class _NoFlowControl:
    """A protocol for a stream fed once from memory: nothing to pause."""

    _reading_paused = False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


def _memory_stream(raw: bytes) -> StreamReader:
    stream = StreamReader(_NoFlowControl(), CHUNK, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
    stream.feed_data(raw)
    stream.feed_eof()
    return stream


async def _multipart(
    headers: CIMultiDictProxy[str] | CIMultiDict[str],
    content: StreamReader,
    request: web.Request,
    budget: Budget,
    expected: str,
    spool: Path,
) -> MultiDictProxy[Any]:
    """RFC 7578 multipart/form-data: the first part must be the CSRF token."""
    form: MultiDict[Any] = MultiDict()
    files: list[IO[bytes]] = request.setdefault("spooled", [])
    text_left = MAX_UPLOAD_TEXT if budget.stream else budget.limit
    try:
        reader = MultipartReader(headers, content)
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader) or part.name is None:
                raise _bad("The form is malformed.")
            if "Content-Transfer-Encoding" in part.headers or "Content-Encoding" in part.headers:
                raise _bad("Form fields must not be encoded.")  # RFC 7578 4.7
            if not form and part.name != "csrf":
                raise _forbidden()  # the token first, before any file is taken
            if len(form) >= MAX_FIELDS:
                raise too_large(budget.limit)
            if part.filename is not None and budget.stream:
                form.add(part.name, await _spool_file(part, files, spool, request, budget.limit))
                continue
            data = bytearray()
            while chunk := await part.read_chunk(CHUNK):
                data += chunk
                if len(data) > text_left:
                    raise too_large(budget.limit)
            text_left -= len(data)
            if part.filename is not None:  # a small form's file: it is in memory already
                form.add(part.name, _file_field(part, io.BytesIO(data)))
                continue
            charset = part.get_charset(default="utf-8")
            value = data.decode(charset)
            if not form and not token_matches(value, expected):
                raise _forbidden()
            form.add(part.name, value)
            _check_total(request, budget.limit)
    except (ValueError, LookupError, AssertionError, HttpProcessingError):
        # A broken boundary, a header or line too long, an unknown charset,
        # text that is not in its charset: the client's fault, a 400.
        raise _bad("The form is malformed.") from None
    if not form:
        raise _forbidden()
    return MultiDictProxy(form)


def _check_total(request: web.Request, limit: int) -> None:
    if request.content.total_bytes > limit:
        raise too_large(limit)


async def _spool_file(
    part: BodyPartReader, files: list[IO[bytes]], spool: Path, request: web.Request, limit: int
) -> web.FileField:
    """A file of the form, written to an unlinked file under the spool."""
    loop = asyncio.get_running_loop()
    try:
        spool.mkdir(parents=True, exist_ok=True)
        # Unlinked at once: nothing is left behind, whatever happens; closed by close_spooled.
        file = await loop.run_in_executor(None, lambda: tempfile.TemporaryFile(dir=spool))  # noqa: SIM115
        files.append(file)
        while chunk := await part.read_chunk(CHUNK):
            _check_total(request, limit)
            await loop.run_in_executor(None, file.write, chunk)
        await loop.run_in_executor(None, file.seek, 0)
    except ConnectionError:  # the client went away: read_form logs it
        raise
    except OSError as e:  # the data partition full, say: the client may try later
        log.warning("web upload not spooled path=%s error=%s", request.path, e)
        raise Refused(web.Response(status=503, text="No room for the upload now.")) from None
    return _file_field(part, file)


def _file_field(part: BodyPartReader, file: IO[bytes]) -> web.FileField:
    headers = CIMultiDictProxy(CIMultiDict(part.headers))
    ctype = part.headers.get("Content-Type", "application/octet-stream")
    return web.FileField(part.name or "", part.filename or "", file, ctype, headers)  # type: ignore[arg-type]


def close_spooled(request: web.Request) -> None:
    for file in request.get("spooled", ()):
        file.close()
