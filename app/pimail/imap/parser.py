"""The IMAP command parser without I/O (the sans-I/O style of h11), RFC 9051 and RFC 3501.

One `Parser` per connection. The server feeds it the bytes it reads and asks
for events until it gets None ("read more"); it never touches a socket:

    parser.receive_data(data)
    while True:
        try:
            event = parser.next_event()
        except ParseError as exc:       # already resynchronised on the next command
            send(exc.response())        # "tag BAD ..." / "tag NO [TOOBIG] ..."
            continue
        if event is None:
            break
        if isinstance(event, NeedContinuation):
            send(b"+ Ready for literal data\\r\\n")
        else:
            handle(event)               # a Command from events.py, IdleDone, ...

This module cuts commands out of the stream (RFC 9051 2.2.1, 4.3): lines ending
in CRLF, synchronising literals {n} (a NeedContinuation comes first),
non-synchronising literals {n+} (LITERAL+, RFC 7888) and literal8 ~{n}
(RFC 3516). Every limit is checked before anything is buffered: a literal over
its limit is refused before the client sends it ({n}: NO [TOOBIG], the
connection goes on); a {n+} over its limit ends the connection at once
(BAD [TOOBIG], then BYE: RFC 7888 4 allows it), since reading and dropping
what a client announced could take hours; a refused command's smaller {n+}
literal is skipped unbuffered. An over-long line is discarded as it arrives,
watching its end for a literal marker so that literal data is never read as
commands. `PRELOGIN` are the limits before authentication: a few KiB, room
for LOGIN and AUTHENTICATE and nothing else (issue 13's memory budget). The grammar of
each command is in syntax.py, its elements in grammar.py, the records it
produces in events.py.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from pimail.imap.events import (
    AuthenticateCancel,
    AuthenticateResponse,
    Event,
    IdleDone,
    NeedContinuation,
)
from pimail.imap.grammar import DIGITS, ParseError
from pimail.imap.syntax import COMMANDS, UID_COMMANDS, command_head, decode_base64, parse_command

__all__ = ["PRELOGIN", "Limits", "LiteralTooLarge", "Mode", "ParseError", "Parser"]


@dataclass(frozen=True)
class Limits:
    """What one command may hold. Bytes unless said otherwise."""

    # One line: the text between literals, without CRLF (RFC 7162 4 asks
    # servers to take at least 8192 octets).
    max_line_length: int = 64 * 1024
    # A literal in any command but APPEND (LOGIN passwords, SEARCH strings, names).
    max_literal_size: int = 64 * 1024
    # A literal in APPEND: the message (advertise it as APPENDLIMIT, RFC 7889).
    max_append_size: int = 50 * 1024 * 1024
    # A whole command, lines and literals; APPEND may carry max_append_size more.
    max_command_size: int = 1024 * 1024
    # Nesting of search keys: parentheses, NOT and OR.
    max_depth: int = 32
    # Ranges in one sequence set ("1,3,5:7" has three).
    max_sequence_ranges: int = 10_000


# Before authentication (RFC 9051 3: only CAPABILITY, STARTTLS, AUTHENTICATE,
# LOGIN, NOOP, LOGOUT, ID may succeed): a line holds a LOGIN or a SASL-IR
# PLAIN response with a long password; a literal a user name or password.
PRELOGIN = Limits(
    max_line_length=4096,
    max_literal_size=2048,
    max_append_size=2048,
    max_command_size=8192,
)


class LiteralTooLarge(ParseError):
    """A literal over its limit (RFC 9051 7.1 TOOBIG).

    For a synchronising literal the client has not sent the data: answer
    `tag NO [TOOBIG]` (RFC 9051 7.6: the server may refuse a literal instead
    of a continuation). A non-synchronising one is on its way: the error is
    `fatal`; answer `tag BAD [TOOBIG]` and close (RFC 7888 4).
    """

    def __init__(
        self, tag: str | None, size: int, limit: int, synchronizing: bool, message: str = ""
    ) -> None:
        shown = str(size) if size < _HUGE else "too many"
        super().__init__(
            tag,
            message or f"Literal of {shown} octets exceeds the limit of {limit}",
            code="TOOBIG",
            status="NO" if synchronizing else "BAD",
        )
        self.size = size
        self.limit = limit
        self.synchronizing = synchronizing
        self.fatal = not synchronizing


class Mode(enum.Enum):
    """What the next line is: a command, the DONE of IDLE, or a SASL response."""

    COMMAND = "command"
    IDLE = "idle"
    AUTHENTICATE = "authenticate"


class _Marker(NamedTuple):
    size: int
    sync: bool
    binary: bool


_HUGE = 2**63  # a literal size too long to read as a number
_TAIL = 64  # bytes kept of a discarded line, enough for its literal marker
_LINE, _LITERAL, _SKIP, _DISCARD, _CLOSED = "line", "literal", "skip", "discard", "closed"
_AGAIN = object()  # a step made progress; take the next one


def literal_marker(line: bytes, truncated: bool = False) -> _Marker | None:
    """The literal marker ending `line` ({n}, {n+}, ~{n}, ~{n+}), if any.

    RFC 9051 4.3: a literal is announced at the end of a line. `truncated`
    says `line` is only the tail of a longer (discarded) line: a digit run
    reaching its start then counts as a marker of unknown, huge size.
    """
    end = len(line) - 1
    if end < 0 or line[end] != 0x7D:  # "}"
        return None
    sync = True
    if end > 0 and line[end - 1] == 0x2B:  # "+"
        sync = False
        end -= 1
    start = end
    while start > 0 and line[start - 1] in DIGITS:
        start -= 1
    if start == end:
        return None
    if start == 0:
        return _Marker(_HUGE, sync, False) if truncated else None
    if line[start - 1] != 0x7B:  # "{"
        return None
    digits = line[start:end]
    size = int(digits) if len(digits) <= 18 else _HUGE
    return _Marker(size, sync, start >= 2 and line[start - 2] == 0x7E)


class Parser:
    """Bytes in, IMAP events out, for one connection. See the module docstring.

    `utf8_enabled` is set by the server once the client has enabled IMAP4rev2
    or UTF8=ACCEPT: mailbox names are then UTF-8, else modified UTF-7.
    """

    def __init__(
        self,
        *,
        utf8_enabled: bool = False,
        max_line_length: int = Limits.max_line_length,
        max_literal_size: int = Limits.max_literal_size,
        max_append_size: int = Limits.max_append_size,
        max_command_size: int = Limits.max_command_size,
        max_depth: int = Limits.max_depth,
        max_sequence_ranges: int = Limits.max_sequence_ranges,
    ) -> None:
        self.limits = Limits(
            max_line_length,
            max_literal_size,
            max_append_size,
            max_command_size,
            max_depth,
            max_sequence_ranges,
        )
        self.utf8_enabled = utf8_enabled
        self.mode = Mode.COMMAND
        self._mode_tag: str | None = None
        self._buf = bytearray()
        self._scan = 0  # where to go on looking for LF in _buf
        self._reset_command()

    # -- the server's side -----------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the client. Call next_event() until None before feeding more."""
        if self._state is not _CLOSED:  # after a fatal error nothing more is read
            self._buf += data

    def next_event(self) -> Event | None:
        """The next event, or None if more data is needed; raises ParseError.

        After a ParseError the parser has already dropped the bad command and
        goes on with the next one.
        """
        while True:
            state = self._state
            if state is _LINE:
                result = self._read_line()
            elif state is _LITERAL:
                result = self._read_literal()
            elif state is _SKIP:
                result = self._skip_literal()
            elif state is _CLOSED:
                return None
            else:
                result = self._discard_line()
            if result is not _AGAIN:
                return result  # type: ignore[return-value]

    def set_limits(self, limits: Limits) -> None:
        """New limits from the next command on (PRELOGIN until authenticated)."""
        self.limits = limits

    def expect_done(self, tag: str) -> None:
        """The next line ends IDLE (RFC 9051 6.3.13): IdleDone, or ParseError(tag)."""
        self._enter(Mode.IDLE, tag)

    def expect_sasl_response(self, tag: str) -> None:
        """The next line answers a SASL challenge (RFC 9051 6.2.2): base64 or "*"."""
        self._enter(Mode.AUTHENTICATE, tag)

    def reject_literal(self) -> None:
        """Refuse the literal of the last NeedContinuation: the command is dropped.

        The server answers it with a tagged NO or BAD instead of "+" (RFC 9051
        7.6), e.g. `NO [TRYCREATE]` or `NO [OVERQUOTA]` for an APPEND.
        """
        if self._state is not _LITERAL or self._chunks:
            raise RuntimeError("no literal is waiting for a continuation")
        self._reset_command()

    def reset(self) -> None:
        """Forget everything buffered, e.g. plaintext pipelined after STARTTLS
        (which must not be run once TLS is up: the CVE-2011-0411 injection)."""
        self._buf.clear()
        self._scan = 0
        self.mode = Mode.COMMAND
        self._mode_tag = None
        self._reset_command()

    @property
    def buffered_size(self) -> int:
        """Bytes held: unread input plus the command assembled so far."""
        held = len(self._buf) + len(self._tail)
        held += sum(len(s) for s in self._segments) + sum(len(c) for c in self._chunks)
        return held + sum(len(data) for data, _ in self._literals)

    # -- states ------------------------------------------------------------------

    def _reset_command(self) -> None:
        self._state = _LINE
        self._segments: list[bytes] = []
        self._literals: list[tuple[bytes, bool]] = []
        self._chunks: list[bytes] = []
        self._remaining = 0
        self._binary = False
        self._size = 0
        self._tag: str | None = None
        self._name = ""
        self._error: ParseError | None = None
        self._tail = b""

    def _enter(self, mode: Mode, tag: str) -> None:
        if self._state is not _LINE or self._segments:
            raise RuntimeError("cannot switch mode in the middle of a command")
        self.mode = mode
        self._mode_tag = tag

    def _read_line(self) -> object:
        buf = self._buf
        idx = buf.find(b"\n", self._scan)
        longest = self.limits.max_line_length + 1  # +1: a CR may end it
        if idx < 0:
            self._scan = len(buf)
            return self._overflow(len(buf)) if len(buf) > longest else None
        if idx > longest:
            return self._overflow(idx)
        line = bytes(buf[:idx])
        del buf[: idx + 1]
        self._scan = 0
        # RFC 9051 2.2: lines end in CRLF; a bare LF is taken too.
        if line.endswith(b"\r"):
            line = line[:-1]
        if self.mode is not Mode.COMMAND:
            return self._mode_line(line)
        if not line and not self._segments:
            return _AGAIN  # an empty line between commands is ignored
        return self._command_line(line)

    def _command_line(self, line: bytes) -> object:
        limits = self.limits
        marker = literal_marker(line)
        if not self._segments:
            self._tag, name, sub = command_head(line)
            self._name = f"UID {sub}" if name == "UID" else name
            error = self._check_head(name, sub)
            if error:
                return self._fail(error, marker)
        self._size += len(line) + 2
        if len(line) > limits.max_line_length:
            return self._fail(ParseError(self._tag, "Line too long"), marker)
        if self._size > self._command_limit():
            return self._fail(ParseError(self._tag, "Command too long"), marker)
        self._segments.append(line)
        if marker is None:
            return self._complete()
        limit = self._literal_limit()
        if marker.size > limit:
            error = LiteralTooLarge(self._tag, marker.size, limit, marker.sync)
            return self._fail(error, marker)
        if self._size + marker.size > self._command_limit():
            limit = self._command_limit()
            error = LiteralTooLarge(self._tag, marker.size, limit, marker.sync, "Command too long")
            return self._fail(error, marker)
        self._state = _LITERAL
        self._remaining = marker.size
        self._binary = marker.binary
        self._size += marker.size
        if marker.sync:
            # RFC 9051 7.6: the client waits for a continuation request.
            return NeedContinuation(self._tag or "*", marker.size, self._name, marker.binary)
        return _AGAIN

    def _check_head(self, name: str, sub: str) -> ParseError | None:
        """Refuse a command at its first line, before any literal is read."""
        tag = self._tag
        if tag is None:
            return ParseError(None, "Invalid tag")
        if not name:
            return ParseError(tag, "Missing command")
        if name == "UID":
            return None if sub in UID_COMMANDS else ParseError(tag, "Unknown UID command")
        return None if name in COMMANDS else ParseError(tag, "Unknown command")

    def _literal_limit(self) -> int:
        limits = self.limits
        return limits.max_append_size if self._name == "APPEND" else limits.max_literal_size

    def _command_limit(self) -> int:
        extra = self.limits.max_append_size if self._name == "APPEND" else 0
        return self.limits.max_command_size + extra

    def _read_literal(self) -> object:
        buf = self._buf
        if self._remaining:
            if not buf:
                return None
            n = min(self._remaining, len(buf))
            if n == len(buf):
                chunk = bytes(buf)
                buf.clear()
            else:
                with memoryview(buf) as view, view[:n] as part:
                    chunk = part.tobytes()
                del buf[:n]
            self._chunks.append(chunk)
            self._remaining -= n
            if self._remaining:
                return None
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._literals.append((data, self._binary))
        self._chunks = []
        self._state = _LINE
        return _AGAIN

    def _skip_literal(self) -> object:
        n = min(self._remaining, len(self._buf))
        del self._buf[:n]
        self._remaining -= n
        if self._remaining:
            return None
        self._state = _DISCARD  # the rest of the command's line follows
        return _AGAIN

    def _discard_line(self) -> object:
        buf = self._buf
        idx = buf.find(b"\n")
        if idx < 0:
            self._tail = (self._tail + bytes(buf[-_TAIL:]))[-_TAIL:]
            buf.clear()
            self._scan = 0
            return None
        tail = (self._tail + bytes(buf[max(0, idx - _TAIL) : idx]))[-_TAIL:]
        del buf[: idx + 1]
        self._scan = 0
        self._tail = b""
        if tail.endswith(b"\r"):
            tail = tail[:-1]
        if self.mode is Mode.COMMAND:
            marker = literal_marker(tail, truncated=True)
            if marker is not None and not marker.sync:
                if marker.size > self._literal_limit():
                    assert self._error is not None
                    return self._fatal(self._error)
                self._state = _SKIP
                self._remaining = marker.size
                return _AGAIN
        error = self._error
        self.mode = Mode.COMMAND
        self._reset_command()
        raise error  # type: ignore[misc]

    def _overflow(self, stop: int) -> object:
        """A line passed max_line_length: drop it (up to `stop`) and the rest as it comes."""
        buf = self._buf
        if self.mode is not Mode.COMMAND:
            tag = self._mode_tag
        elif self._segments:
            tag = self._tag
        else:
            head = bytes(buf[: min(1024, stop)])
            tag = command_head(head)[0] if b" " in head else None
        self._error = ParseError(tag, "Line too long")
        self._tail = bytes(buf[max(0, stop - _TAIL) : stop])
        del buf[:stop]
        self._scan = 0
        self._state = _DISCARD
        return _AGAIN

    def _fail(self, error: ParseError, marker: _Marker | None) -> object:
        """Drop the current command, whose last line ended with `marker`."""
        if marker is not None and not marker.sync:
            # RFC 7888 4: the client sends the data anyway. More than a literal
            # may hold ends the connection; less is skipped with the rest of
            # the command, then reported.
            if marker.size > self._literal_limit() or isinstance(error, LiteralTooLarge):
                return self._fatal(error)
            self._segments, self._literals = [], []  # freed; only the tag is needed now
            self._error = error
            self._state = _SKIP
            self._remaining = marker.size
            return _AGAIN
        # A synchronising literal is never sent: the client waits for "+"
        # and gets the tagged error instead (RFC 9051 7.6).
        self._reset_command()
        raise error

    def _fatal(self, error: ParseError) -> object:
        """Stop reading commands: the server answers `error`, says BYE and closes."""
        error.fatal = True
        self._buf.clear()
        self._reset_command()
        self._state = _CLOSED
        raise error

    def _complete(self) -> Event:
        segments, literals, tag = self._segments, self._literals, self._tag
        self._reset_command()
        try:
            return parse_command(
                segments,
                literals,
                utf8=self.utf8_enabled,
                max_depth=self.limits.max_depth,
                max_ranges=self.limits.max_sequence_ranges,
            )
        except ParseError as exc:
            exc.tag = exc.tag or tag
            raise

    def _mode_line(self, line: bytes) -> Event:
        tag = self._mode_tag or "*"
        mode = self.mode
        self.mode = Mode.COMMAND
        self._mode_tag = None
        if len(line) > self.limits.max_line_length:
            raise ParseError(tag, "Line too long")
        if mode is Mode.IDLE:
            # RFC 9051 6.3.13: the client ends IDLE with "DONE".
            if line.upper() == b"DONE":
                return IdleDone(tag)
            raise ParseError(tag, "Expected DONE")
        # RFC 9051 6.2.2: a base64 response line, or "*" to cancel.
        if line == b"*":
            return AuthenticateCancel(tag)
        data = decode_base64(line)
        if data is None:
            raise ParseError(tag, "Invalid base64 in SASL response")
        return AuthenticateResponse(tag, data)
