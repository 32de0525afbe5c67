"""POP3 without sockets: command lines in, responses and requests out.

Implements RFC 1939 (POP3), RFC 2449 (CAPA, response codes, pipelining),
RFC 2595 section 4 (STLS), RFC 5034 (AUTH) with RFC 4616 PLAIN, and the
RFC 3206 response codes ([AUTH], [SYS/TEMP]).

`Pop3Connection` is the state machine, in h11's manner: the server feeds it
octets (`receive_data`), writes what `data_to_send()` returns, and asks
`next_event()` for the work that needs I/O: check a password (`Login`), send
a message (`Retrieve`), start TLS (`StartTls`), remove the marked messages at
QUIT (`Update`). The server answers each with a method (`login_succeeded`,
`message_follows`, `tls_started`, `update_done`, ...) before it asks for the
next event. Everything that needs no I/O is answered here: CAPA, STAT, LIST,
UIDL, DELE, RSET, NOOP, state checks, syntax and limits.

`Maildrop` is a session's snapshot of INBOX taken at login (RFC 1939 4: the
messages of the maildrop are fixed for the session; later deliveries show in
the next one). `DotStuffer` and `top_of` frame message octets for multi-line
responses.

This module touches no socket, file, store or clock.
"""

from __future__ import annotations

import base64
import binascii
import enum
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..auth.login import parse_sasl_plain

# RFC 2449 4: a command line is at most 255 octets with its CRLF. Clients exceed
# that (long user names, AUTH initial responses), so we take up to 512, the
# length RFC 1939 3 allows for responses.
MAX_LINE = 512
# RFC 5034 4: a SASL response line sent after "+ " is not bound by the command
# limit; PLAIN needs room for a long password in base64.
MAX_SASL_LINE = 2048
# Octets of one over-long line we drop before deciding the peer is not a client.
MAX_DISCARD = 64 * 1024
# Bad commands in a row (unknown, malformed, wrong state) before we close.
MAX_BAD = 10
# A message number or a TOP line count: up to 10 decimal digits.
MAX_DIGITS = 10

CRLF = b"\r\n"
TERMINATOR = b".\r\n"


class State(enum.Enum):
    """RFC 1939 3: the states of a POP3 session."""

    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"


class Pop3Error(Exception):
    """A -ERR response. `code` is an RFC 2449/3206 response code (without the
    brackets) or None; `bad` marks errors that count toward MAX_BAD: unknown
    commands, syntax errors, commands in the wrong state."""

    def __init__(self, text: str, code: str | None = None, *, bad: bool = False) -> None:
        super().__init__(text)
        self.code = code
        self.bad = bad

    def response(self) -> bytes:
        code = f"[{self.code}] " if self.code else ""
        return f"-ERR {code}{self}\r\n".encode()


# -- events: what the server must do -------------------------------------------------


@dataclass(frozen=True)
class Login:
    """Check this user name and password (USER/PASS or AUTH PLAIN)."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Retrieve:
    """Send message `number` (UID `uid`): all of it (RETR), or its header and
    `lines` lines of its body (TOP)."""

    number: int
    uid: int
    lines: int | None = None


@dataclass(frozen=True)
class StartTls:
    """Start the TLS handshake now (RFC 2595 4); the "+OK" is already queued."""


@dataclass(frozen=True)
class Update:
    """QUIT in the TRANSACTION state (RFC 1939 6): remove these UIDs for good."""

    uids: tuple[int, ...]


Event = Login | Retrieve | StartTls | Update


# -- reading command lines -------------------------------------------------------------


@dataclass(frozen=True)
class LineTooLong:
    """A line over the limit was dropped. `fatal`: it went on past MAX_DISCARD."""

    fatal: bool = False


class LineReader:
    """Splits received octets into lines (CRLF, or a bare LF, tolerated), holding
    at most `max_line` octets of an unfinished line. An over-long line is
    dropped up to its end and reported once, as `LineTooLong`."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._discarded: int | None = None  # octets of an over-long line dropped so far

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def clear(self) -> None:
        """Forget everything received and not yet read (STLS: RFC 2595 4)."""
        self._buffer.clear()
        self._discarded = None

    def next_line(self) -> bytes | LineTooLong | None:
        """The next line without its end, a LineTooLong, or None: need more octets."""
        buffer = self._buffer
        end = buffer.find(b"\n")
        if self._discarded is not None:
            if end < 0:
                self._discarded += len(buffer)
                buffer.clear()
                if self._discarded > MAX_DISCARD:
                    self._discarded = None
                    return LineTooLong(fatal=True)
                return None
            del buffer[: end + 1]
            self._discarded = None
            return LineTooLong()
        if end < 0:
            if len(buffer) > self.max_line:
                self._discarded = len(buffer)
                buffer.clear()
            return None
        if end + 1 > self.max_line:
            del buffer[: end + 1]
            return LineTooLong()
        line = bytes(buffer[:end])
        del buffer[: end + 1]
        return line[:-1] if line.endswith(b"\r") else line


# -- the maildrop ------------------------------------------------------------------------


class Maildrop:
    """A session's INBOX: message numbers 1..n over (UID, size) as at login, and
    the numbers marked deleted (RFC 1939 5). Sizes are octets as stored, which
    is as transmitted: pimail stores CRLF line ends (RFC 1939 11)."""

    def __init__(self, uidvalidity: int, messages: Iterable[tuple[int, int]]) -> None:
        self.uidvalidity = uidvalidity
        self.uids = array("I")
        self.sizes = array("Q")
        for uid, size in messages:
            self.uids.append(uid)
            self.sizes.append(size)
        self.deleted: set[int] = set()
        self._octets = sum(self.sizes)
        self._deleted_octets = 0

    def __len__(self) -> int:
        return len(self.uids)

    def stat(self) -> tuple[int, int]:
        """(messages, octets), not counting those marked deleted (RFC 1939 5 STAT)."""
        return len(self.uids) - len(self.deleted), self._octets - self._deleted_octets

    def number(self, arg: bytes) -> int:
        """A message-number argument that names a message not marked deleted."""
        n = parse_number(arg)
        if n < 1 or n > len(self.uids):
            raise Pop3Error(f"No such message, only {len(self.uids)} in the maildrop")
        if n in self.deleted:
            raise Pop3Error(f"Message {n} is deleted")
        return n

    def uid(self, n: int) -> int:
        return self.uids[n - 1]

    def size(self, n: int) -> int:
        return self.sizes[n - 1]

    def unique_id(self, n: int) -> str:
        """RFC 1939 7 UIDL: <uidvalidity>.<uid>. Stable across sessions (the UID is
        in the Maildir file name) and never reused: a UID is not given twice
        within one UIDVALIDITY, and a new UIDVALIDITY changes every id."""
        return f"{self.uidvalidity}.{self.uids[n - 1]}"

    def live(self) -> Iterable[int]:
        """The message numbers not marked deleted, in order."""
        return (n for n in range(1, len(self.uids) + 1) if n not in self.deleted)

    def delete(self, n: int) -> None:
        self.deleted.add(n)
        self._deleted_octets += self.sizes[n - 1]

    def reset(self) -> None:
        self.deleted.clear()
        self._deleted_octets = 0

    def marked_uids(self) -> tuple[int, ...]:
        return tuple(self.uids[n - 1] for n in sorted(self.deleted))


def parse_number(arg: bytes) -> int:
    """RFC 1939 3: a decimal number; no sign, no spaces, no other digits."""
    if not arg or len(arg) > MAX_DIGITS or not arg.isdigit():  # bytes.isdigit: ASCII only
        raise Pop3Error("Invalid number", bad=True)
    return int(arg)


# -- framing message octets ---------------------------------------------------------------


class DotStuffer:
    """RFC 1939 3: in a multi-line response a line that begins with "." gets one
    more "." in front, and the response ends with CRLF "." CRLF. Fed the message
    in pieces of any size; a bare LF also ends a line here, so that no client
    that splits on LF can mistake a line of the message for the end."""

    def __init__(self) -> None:
        self._line_start = True
        self._last = b""

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        out = chunk.replace(b"\n.", b"\n..")
        if self._line_start and chunk.startswith(b"."):
            out = b"." + out
        self._line_start = chunk.endswith(b"\n")
        self._last = chunk[-1:]
        return out

    def end(self) -> bytes:
        """The terminator, after a CRLF if the message did not end with one."""
        if self._line_start:
            return TERMINATOR
        if self._last == b"\r":
            return b"\n" + TERMINATOR
        return CRLF + TERMINATOR


def top_of(lines: Iterable[bytes], body_lines: int) -> bytes:
    """RFC 1939 7 TOP: the header, the blank line after it, and the first
    `body_lines` lines of the body (the whole message if it has fewer). `lines`
    yields the message line by line with line ends (a binary file does)."""
    out: list[bytes] = []
    it = iter(lines)
    for line in it:
        out.append(line)
        if line in (b"\r\n", b"\n"):
            break
    else:
        return b"".join(out)  # no body at all
    # zip takes from range first: no line is read past the last one wanted
    out.extend(line for _, line in zip(range(body_lines), it, strict=False))
    return b"".join(out)


def multiline(first: str, lines: Iterable[str]) -> bytes:
    """A multi-line response whose lines need no stuffing (none begins with ".")."""
    return (first + "\r\n" + "".join(f"{line}\r\n" for line in lines) + ".\r\n").encode()


# -- the state machine ----------------------------------------------------------------------

Handler = Callable[["Pop3Connection", bytes], "Event | None"]
_COMMANDS: dict[str, tuple[Handler, frozenset[State]]] = {}
_AUTHORIZATION = frozenset({State.AUTHORIZATION})
_TRANSACTION = frozenset({State.TRANSACTION})
_BOTH = _AUTHORIZATION | _TRANSACTION


def _command(name: str, states: frozenset[State]) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _COMMANDS[name] = (fn, states)
        return fn

    return register


class Pop3Connection:
    """One POP3 session's protocol state. See the module docstring for the flow.

    `tls`: the connection is encrypted (port 995, or after STLS).
    `tls_available`: STLS can be offered. `allow_plaintext_auth`: USER/PASS and
    AUTH may be used without TLS (off by default, so passwords never cross in
    the clear)."""

    def __init__(
        self,
        *,
        hostname: str,
        timestamp: str,
        tls: bool,
        tls_available: bool,
        allow_plaintext_auth: bool,
    ) -> None:
        self.state = State.AUTHORIZATION
        self.tls = tls
        self.tls_available = tls_available
        self.allow_plaintext_auth = allow_plaintext_auth
        self.reader = LineReader()
        self.maildrop: Maildrop | None = None
        self.closing = False  # the server closes once it has sent data_to_send()
        self.bad = 0
        self._out: list[bytes] = []
        self._user: str | None = None  # USER given, PASS expected
        self._sasl = False  # AUTH PLAIN sent "+ ", the response line comes next
        self._waiting: Event | None = None  # the event the server is working on
        # RFC 1939 7 (APOP): a banner may carry a timestamp in angle brackets,
        # unique per greeting. pimail offers no APOP; the banner keeps the form.
        self._send(f"+OK pimail POP3 ready <{timestamp}@{hostname}>")

    # -- I/O with the server ----------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self.reader.feed(data)

    def data_to_send(self) -> bytes:
        data, self._out = b"".join(self._out), []
        return data

    def next_event(self) -> Event | None:
        """Answer complete lines until one needs the server; None: send what is
        queued and read more (or close, if `closing`)."""
        assert self._waiting is None, f"answer {self._waiting!r} first"
        while not self.closing:
            item = self.reader.next_line()
            if item is None:
                return None
            event = self._line(item)
            if event is not None:
                self._waiting = event
                return event
        return None

    def _send(self, line: str) -> None:
        self._out.append(line.encode() + CRLF)

    def _done(self, kind: type) -> None:
        assert isinstance(self._waiting, kind), f"no {kind.__name__} is pending"
        self._waiting = None

    # -- answers to events ---------------------------------------------------------------

    def login_succeeded(self, maildrop: Maildrop) -> None:
        """RFC 1939 4: the maildrop is open, the session is in TRANSACTION."""
        self._done(Login)
        self.state = State.TRANSACTION
        self.maildrop = maildrop
        count, octets = maildrop.stat()
        self._send(f"+OK Logged in, maildrop has {count} messages ({octets} octets)")

    def login_failed(self, temporary: bool = False) -> None:
        """RFC 3206 4: [AUTH] for bad credentials, [SYS/TEMP] when the maildrop
        cannot be opened just now."""
        self._done(Login)
        if temporary:
            self._out.append(
                Pop3Error("Maildrop not available, try again later", "SYS/TEMP").response()
            )
        else:
            self._out.append(Pop3Error("Authentication failed", "AUTH").response())

    def login_refused(self) -> None:
        """The login throttle refused the attempt unchecked: RFC 3206 4's
        [SYS/TEMP] (a temporary problem, not the credentials: [AUTH] would
        have the client tell its user the password is wrong)."""
        self._done(Login)
        self._out.append(
            Pop3Error("Too many failed logins, try again later", "SYS/TEMP").response()
        )

    def message_follows(self, size: int) -> None:
        """The message could be opened: the server writes the status line queued
        here, then the stuffed octets (DotStuffer) and the terminator."""
        assert isinstance(self._waiting, Retrieve)
        if self._waiting.lines is None:
            self._send(f"+OK {size} octets")  # RFC 1939 5 RETR
        else:
            self._send("+OK Top of message follows")
        self._waiting = None

    def message_gone(self, temporary: bool = False) -> None:
        """The message was expunged by another session since the login, or
        (`temporary`) could not be read just now."""
        self._done(Retrieve)
        if temporary:
            error = Pop3Error("Message not readable now, try again later", "SYS/TEMP")
        else:
            error = Pop3Error("Message was removed by another session")
        self._out.append(error.response())

    def tls_started(self) -> None:
        """RFC 2595 4: after the handshake the session stays in AUTHORIZATION and
        forgets what it knew from before (nothing sent in the clear is used)."""
        self._done(StartTls)
        self.tls = True
        self._user = None
        self.reader.clear()

    def tls_failed(self) -> None:
        """The handshake failed: nothing more can be said; the server closes."""
        self._done(StartTls)
        self.closing = True

    def update_done(self, removed: int) -> None:
        """RFC 1939 6: the UPDATE state has removed the marked messages."""
        self._done(Update)
        self.state = State.UPDATE
        self._send(f"+OK pimail POP3 server signing off ({removed} messages deleted)")
        self.closing = True

    def update_failed(self) -> None:
        self._done(Update)
        self.state = State.UPDATE
        self._out.append(Pop3Error("Some deleted messages not removed", "SYS/TEMP").response())
        self.closing = True

    # -- lines ------------------------------------------------------------------------------

    def _line(self, item: bytes | LineTooLong) -> Event | None:
        if self._sasl:
            self._sasl = False
            self.reader.max_line = MAX_LINE
            if isinstance(item, LineTooLong):
                return self._reject(Pop3Error("Line too long", bad=True), item.fatal)
            return self._sasl_response(item)
        if isinstance(item, LineTooLong):
            return self._reject(Pop3Error("Line too long", bad=True), item.fatal)
        try:
            event = self._dispatch(item)
        except Pop3Error as e:
            return self._reject(e)
        self.bad = 0
        return event

    def _reject(self, error: Pop3Error, fatal: bool = False) -> None:
        if error.bad:
            self.bad += 1
        else:
            self.bad = 0
        if fatal or self.bad >= MAX_BAD:
            self._out.append(Pop3Error("Too many bad commands, closing").response())
            self.closing = True
        else:
            self._out.append(error.response())
        return None

    def _dispatch(self, line: bytes) -> Event | None:
        keyword, _, rest = line.partition(b" ")
        # RFC 1939 3: keywords are case-insensitive ASCII, three or four letters.
        name = keyword.upper().decode("latin-1")
        found = _COMMANDS.get(name) if keyword.isalpha() else None
        if found is None:
            raise Pop3Error("Unknown command", bad=True)
        handler, states = found
        if self.state not in states:
            raise Pop3Error(f"{name} is not valid in the {self.state.value} state", bad=True)
        return handler(self, rest)

    @property
    def _plaintext_refused(self) -> bool:
        return not self.tls and not self.allow_plaintext_auth

    @property
    def _live(self) -> Maildrop:
        assert self.maildrop is not None
        return self.maildrop

    # -- any state ----------------------------------------------------------------------------

    @_command("CAPA", _BOTH)
    def _capa(self, rest: bytes) -> None:
        """RFC 2449 5. Capabilities of the AUTHORIZATION state are announced in
        both states (USER, SASL); STLS only while it can still be used."""
        _no_arguments(rest)
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if not self._plaintext_refused:
            caps += ["USER", "SASL PLAIN"]
        if self.state is State.AUTHORIZATION and self.tls_available and not self.tls:
            caps.append("STLS")  # RFC 2595 4
        caps.append("IMPLEMENTATION pimail")
        self._out.append(multiline("+OK Capability list follows", caps))

    @_command("QUIT", _BOTH)
    def _quit(self, rest: bytes) -> Event | None:
        _no_arguments(rest)
        if self.state is State.AUTHORIZATION:  # RFC 1939 4: no UPDATE state
            self._send("+OK pimail POP3 server signing off")
            self.closing = True
            return None
        uids = self._live.marked_uids()
        if not uids:
            self.state = State.UPDATE
            self._send("+OK pimail POP3 server signing off (0 messages deleted)")
            self.closing = True
            return None
        return Update(uids)

    # -- AUTHORIZATION -------------------------------------------------------------------------

    @_command("USER", _AUTHORIZATION)
    def _user_command(self, rest: bytes) -> None:
        """RFC 1939 7 USER. The answer does not say whether the mailbox exists."""
        self._user = None
        if self._plaintext_refused:
            raise Pop3Error("Use STLS first", "AUTH")
        if not rest or b" " in rest:
            raise Pop3Error("Syntax: USER name", bad=True)
        self._user = _utf8(rest)
        self._send("+OK Send your password")

    @_command("PASS", _AUTHORIZATION)
    def _pass(self, rest: bytes) -> Login:
        """RFC 1939 7 PASS: the argument is the rest of the line, spaces and all."""
        user, self._user = self._user, None
        if self._plaintext_refused:
            raise Pop3Error("Use STLS first", "AUTH")
        if user is None:
            raise Pop3Error("USER first", bad=True)
        return Login(user, _utf8(rest, password=True))

    @_command("AUTH", _AUTHORIZATION)
    def _auth(self, rest: bytes) -> Login | None:
        """RFC 5034 4. Without arguments: the mechanisms, one a line (what
        clients of the older AUTH draft expect)."""
        self._user = None
        if self._plaintext_refused:
            raise Pop3Error("Use STLS first", "AUTH")
        args = rest.split(b" ") if rest else []
        if not args:
            self._out.append(multiline("+OK Supported mechanisms", ["PLAIN"]))
            return None
        if len(args) > 2 or not args[0]:
            raise Pop3Error("Syntax: AUTH mechanism [initial-response]", bad=True)
        if args[0].upper() != b"PLAIN":
            raise Pop3Error("Unsupported authentication mechanism")
        if len(args) == 1:
            self._send("+ ")  # RFC 5034 4: an empty challenge
            self._sasl = True
            self.reader.max_line = MAX_SASL_LINE
            return None
        # RFC 5034 4: "=" is an initial response of zero length.
        return self._plain(b"" if args[1] == b"=" else args[1])

    def _sasl_response(self, line: bytes) -> Login | None:
        if line == b"*":  # RFC 5034 4: the client cancels
            self._out.append(Pop3Error("Authentication cancelled", "AUTH").response())
            return None
        try:
            return self._plain(line)
        except Pop3Error as e:
            return self._reject(e)

    def _plain(self, encoded: bytes) -> Login:
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise Pop3Error("Invalid base64 data", "AUTH") from None
        parsed = parse_sasl_plain(data)
        if parsed is None:
            raise Pop3Error("Malformed PLAIN response", "AUTH")
        return Login(*parsed)

    @_command("STLS", _AUTHORIZATION)
    def _stls(self, rest: bytes) -> StartTls:
        """RFC 2595 4. Anything the client sent after STLS in the clear is dropped,
        never run after the handshake (the CVE-2011-0411 class of injection)."""
        _no_arguments(rest)
        if self.tls:
            raise Pop3Error("Command not permitted when TLS active")
        if not self.tls_available:
            raise Pop3Error("TLS is not available here")
        self._user = None
        self.reader.clear()
        self._send("+OK Begin TLS negotiation")
        return StartTls()

    # -- TRANSACTION ------------------------------------------------------------------------------

    @_command("STAT", _TRANSACTION)
    def _stat(self, rest: bytes) -> None:
        _no_arguments(rest)
        count, octets = self._live.stat()
        self._send(f"+OK {count} {octets}")

    @_command("LIST", _TRANSACTION)
    def _list(self, rest: bytes) -> None:
        drop = self._live
        arg = _optional_argument(rest)
        if arg is not None:
            n = drop.number(arg)
            self._send(f"+OK {n} {drop.size(n)}")
            return
        count, octets = drop.stat()
        self._out.append(
            multiline(
                f"+OK {count} messages ({octets} octets)",
                (f"{n} {drop.size(n)}" for n in drop.live()),
            )
        )

    @_command("UIDL", _TRANSACTION)
    def _uidl(self, rest: bytes) -> None:
        drop = self._live
        arg = _optional_argument(rest)
        if arg is not None:
            n = drop.number(arg)
            self._send(f"+OK {n} {drop.unique_id(n)}")
            return
        self._out.append(
            multiline(
                "+OK Unique-id listing follows", (f"{n} {drop.unique_id(n)}" for n in drop.live())
            )
        )

    @_command("RETR", _TRANSACTION)
    def _retr(self, rest: bytes) -> Retrieve:
        drop = self._live
        arg = _optional_argument(rest)
        if arg is None:
            raise Pop3Error("Syntax: RETR msg", bad=True)
        n = drop.number(arg)
        return Retrieve(n, drop.uid(n))

    @_command("TOP", _TRANSACTION)
    def _top(self, rest: bytes) -> Retrieve:
        drop = self._live
        args = rest.split(b" ")
        if len(args) != 2:
            raise Pop3Error("Syntax: TOP msg n", bad=True)
        n = drop.number(args[0])
        return Retrieve(n, drop.uid(n), parse_number(args[1]))

    @_command("DELE", _TRANSACTION)
    def _dele(self, rest: bytes) -> None:
        drop = self._live
        arg = _optional_argument(rest)
        if arg is None:
            raise Pop3Error("Syntax: DELE msg", bad=True)
        n = parse_number(arg)
        if n in drop.deleted:
            raise Pop3Error(f"Message {n} already deleted")
        drop.delete(drop.number(arg))
        self._send(f"+OK Message {n} deleted")

    @_command("RSET", _TRANSACTION)
    def _rset(self, rest: bytes) -> None:
        _no_arguments(rest)
        drop = self._live
        drop.reset()
        count, octets = drop.stat()
        self._send(f"+OK Maildrop has {count} messages ({octets} octets)")

    @_command("NOOP", _TRANSACTION)
    def _noop(self, rest: bytes) -> None:
        _no_arguments(rest)
        self._send("+OK")


def _no_arguments(rest: bytes) -> None:
    if rest:
        raise Pop3Error("This command takes no arguments", bad=True)


def _optional_argument(rest: bytes) -> bytes | None:
    if not rest:
        return None
    if b" " in rest:
        raise Pop3Error("Too many arguments", bad=True)
    return rest


def _utf8(data: bytes, password: bool = False) -> str:
    """A user name (no control characters) or a password (no NUL or CR)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Pop3Error("Invalid UTF-8", bad=True) from None
    refused = ("\0", "\r") if password else tuple(map(chr, [*range(32), 127]))
    if any(c in text for c in refused):
        raise Pop3Error("Control characters are not allowed", bad=True)
    return text
