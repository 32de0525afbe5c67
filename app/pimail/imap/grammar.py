"""The lexical elements of IMAP commands (RFC 9051 sections 4 and 9), without I/O.

This room holds what every command is built from: atoms, quoted strings,
literals, astrings, numbers, sequence sets, dates, flags and mailbox names, read
by `Reader` from a command the framer in `parser.py` has already cut out of the
stream (lines plus literal data). It also holds the value types the server uses
afterwards: `SequenceSet` and the modified UTF-7 helpers for mailbox names.

Nothing here touches a socket or a mailbox; every failure is a `ParseError`
whose message says what was expected where.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import NoReturn, TypeVar

T = TypeVar("T")


class ParseError(Exception):
    """A command that cannot be parsed; the server answers `tag BAD message`.

    `tag` is None when the tag itself is unreadable (the server then answers
    with `*`). `code` is a response code (RFC 9051 7.1) such as "TOOBIG" or
    "BADCHARSET"; `status` is "BAD" for syntax errors, "NO" where the command
    was well formed but cannot be accepted. `fatal`: the parser cannot find
    the next command (the client announced more octets than it may send):
    the server answers, says BYE and closes.
    """

    fatal = False

    def __init__(
        self, tag: str | None, message: str, *, code: str | None = None, status: str = "BAD"
    ) -> None:
        super().__init__(message)
        self.tag = tag
        self.message = message
        self.code = code
        self.status = status

    def response(self) -> bytes:
        """The tagged response line for this error, CRLF included."""
        code = f"[{self.code}] " if self.code else ""
        line = f"{self.tag or '*'} {self.status} {code}{self.message}"
        return line.encode("ascii", "replace") + b"\r\n"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.tag!r}, {self.message!r})"


# RFC 9051 9: atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards /
# quoted-specials / resp-specials; ATOM-CHAR is any CHAR (7-bit) but those.
ATOM_RE = re.compile(rb"[^\x00-\x20(){%*\"\\\]\x7f-\xff]+")
# ASTRING-CHAR = ATOM-CHAR / resp-specials ("]").
_ASTRING_ATOM = re.compile(rb"[^\x00-\x20(){%*\"\\\x7f-\xff]+")
# list-char = ATOM-CHAR / list-wildcards / resp-specials (LIST patterns).
_LIST_ATOM = re.compile(rb"[^\x00-\x20(){\"\\\x7f-\xff]+")
# tag = 1*<any ASTRING-CHAR except "+">.
TAG_RE = re.compile(rb"[^\x00-\x20(){%*\"\\+\x7f-\xff]+")
_DIGITS = re.compile(rb"[0-9]+")
DIGITS = frozenset(b"0123456789")
_SEQSET = re.compile(rb"[0-9*:,$]+")
# RFC 9051 4.3: literal = "{" number64 ["+"] "}" CRLF *CHAR8; literal8 = "~{" ...
_LITERAL = re.compile(rb"(~?)\{([0-9]+)(\+?)\}")
_QUOTED_RUN = re.compile(rb'[^"\\\r\n\x00]*')
_DATE = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
_DATE_TIME = re.compile(
    rb'"([ 0-9]?[0-9])-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) '
    rb'([+-])([0-9]{2})([0-9]{2})"'
)

MONTHS = {
    b"JAN": 1, b"FEB": 2, b"MAR": 3, b"APR": 4, b"MAY": 5, b"JUN": 6,
    b"JUL": 7, b"AUG": 8, b"SEP": 9, b"OCT": 10, b"NOV": 11, b"DEC": 12,
}  # fmt: skip

UINT32_MAX = 2**32 - 1
INT63_MAX = 2**63 - 1

# RFC 9051 2.3.2: the system flags, matched case-insensitively, kept in their
# canonical spelling. \Recent is RFC 3501 only, kept so rev1 clients are understood.
SYSTEM_FLAGS = {
    f.upper(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
}


@dataclass(frozen=True)
class SeqRange:
    """One element of a sequence set: `first:last`; None stands for `*`.

    A single number n is SeqRange(n, n). The ends may be in either order
    (RFC 9051 9: "2:4" and "4:2" are the same range).
    """

    first: int | None
    last: int | None

    def bounds(self, largest: int) -> tuple[int, int]:
        """(low, high) with `*` replaced by `largest`."""
        a = largest if self.first is None else self.first
        b = largest if self.last is None else self.last
        return (a, b) if a <= b else (b, a)

    def __str__(self) -> str:
        a = "*" if self.first is None else str(self.first)
        if self.first == self.last:
            return a
        return f"{a}:{'*' if self.last is None else self.last}"


@dataclass(frozen=True)
class SequenceSet:
    """A sequence-set of message numbers or UIDs (RFC 9051 9).

    `saved` is True for `$`, the result saved by SEARCH RETURN (SAVE)
    (RFC 5182 2.1); `ranges` is then empty and the server substitutes its saved
    set. Otherwise resolve against the largest number in use: the message
    count for sequence numbers, the largest UID for UIDs.
    """

    ranges: tuple[SeqRange, ...] = ()
    saved: bool = False

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Sorted, merged (low, high) ranges, `*` meaning `largest`."""
        if self.saved:
            raise ValueError("'$' must be replaced by the saved search result")
        spans = sorted(r.bounds(largest) for r in self.ranges)
        merged: list[tuple[int, int]] = []
        for low, high in spans:
            if merged and low <= merged[-1][1] + 1:
                if high > merged[-1][1]:
                    merged[-1] = (merged[-1][0], high)
            else:
                merged.append((low, high))
        return merged

    def contains(self, number: int, largest: int) -> bool:
        if self.saved:
            raise ValueError("'$' must be replaced by the saved search result")
        return any(low <= number <= high for low, high in (r.bounds(largest) for r in self.ranges))

    def numbers(self, largest: int) -> Iterable[int]:
        """Every number in the set in ascending order; only up to `largest`."""
        for low, high in self.resolve(largest):
            yield from range(max(low, 1), min(high, largest) + 1)

    @classmethod
    def from_numbers(cls, numbers: Iterable[int]) -> SequenceSet:
        """The shortest set naming exactly these numbers (for responses)."""
        ranges: list[SeqRange] = []
        for n in sorted(set(numbers)):
            if ranges and ranges[-1].last == n - 1:
                ranges[-1] = SeqRange(ranges[-1].first, n)
            else:
                ranges.append(SeqRange(n, n))
        return cls(tuple(ranges))

    def __str__(self) -> str:
        return "$" if self.saved else ",".join(str(r) for r in self.ranges)


def seq(text: str) -> SequenceSet:
    """A SequenceSet from its wire form ("1:3,5,*"); for tests and the server."""
    return Reader([text.encode("ascii")], []).sequence_set()


def safe_text(data: bytes | str, limit: int = 24) -> str:
    """Printable ASCII excerpt of client data, fit to quote in a response line."""
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    text = "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x22 else "?" for b in data[:limit])
    return text + ("..." if len(data) > limit else "")


class Reader:
    """Reads grammar elements from one framed command.

    `segments` are the command's lines without CRLF; every segment but the last
    ends with a literal marker `{n}`, whose data is the matching entry of
    `literals` (bytes, and whether it was a literal8 `~{n}`).
    """

    def __init__(
        self,
        segments: list[bytes],
        literals: list[tuple[bytes, bool]],
        *,
        utf8: bool = False,
        max_depth: int = 32,
        max_ranges: int = 10_000,
    ) -> None:
        self.segments = segments
        self.literals = literals
        self.index = 0
        self.line = segments[0]
        self.pos = 0
        self.utf8 = utf8
        self.max_depth = max_depth
        self.max_ranges = max_ranges

    # -- position -----------------------------------------------------------

    def fail(self, message: str) -> NoReturn:
        if self.pos >= len(self.line):
            where = " at end of line" if self.index == len(self.segments) - 1 else ""
        else:
            where = f' at "{safe_text(self.line[self.pos :])}"'
        raise ParseError(None, message + where)

    def peek(self) -> int:
        """The next byte of the current line, or -1 at its end."""
        return self.line[self.pos] if self.pos < len(self.line) else -1

    def at(self, token: bytes) -> bool:
        """Whether the current line continues with `token` (case-insensitive)."""
        end = self.pos + len(token)
        return self.line[self.pos : end].upper() == token.upper()

    def at_end(self) -> bool:
        return self.pos >= len(self.line) and self.index == len(self.segments) - 1

    def end(self) -> None:
        if not self.at_end():
            self.fail("Unexpected extra arguments")

    def expect(self, token: bytes, what: str) -> None:
        if not self.at(token):
            self.fail(f"Expected {what}")
        self.pos += len(token)

    def sp(self) -> None:
        # RFC 9051 9: arguments are separated by exactly one SP.
        if self.peek() != 0x20:
            self.fail("Expected space")
        self.pos += 1

    def open(self) -> None:
        self.expect(b"(", "'('")

    def close(self) -> None:
        self.expect(b")", "')'")

    def more(self) -> bool:
        """Inside a parenthesised list: True if another element follows (after SP)."""
        c = self.peek()
        if c == 0x29:
            return False
        if c != 0x20:
            self.fail("Expected ')'" if c == -1 else "Expected space or ')'")
        self.pos += 1
        return True

    def paren_list(self, item: Callable[[], T], empty: bool = True) -> list[T]:
        """ "(" [item *(SP item)] ")"; with empty=False at least one item."""
        self.open()
        items = []
        if not empty or self.peek() != 0x29:
            items.append(item())
            while self.more():
                items.append(item())
        self.close()
        return items

    # -- atoms and numbers -------------------------------------------------

    def match(self, pattern: re.Pattern[bytes], what: str) -> bytes:
        m = pattern.match(self.line, self.pos)
        if not m:
            self.fail(f"Expected {what}")
        self.pos = m.end()
        return m.group()

    def atom(self) -> bytes:
        return self.match(ATOM_RE, "atom")

    def keyword(self) -> str:
        """An atom as an upper-case keyword (RFC 9051 9: keywords are case-insensitive)."""
        return self.match(ATOM_RE, "keyword").decode("ascii").upper()

    def peek_keyword(self) -> str:
        m = ATOM_RE.match(self.line, self.pos)
        return m.group().decode("ascii").upper() if m else ""

    def word(self, pattern: re.Pattern[bytes], what: str) -> str:
        """An upper-cased token of the given character class (FETCH attributes etc.)."""
        return self.match(pattern, what).decode("ascii").upper()

    def number(self, what: str = "number", low: int = 0, high: int = UINT32_MAX) -> int:
        """number (uint32), nz-number, number64 or mod-sequence-value by the bounds."""
        digits = self.match(_DIGITS, what)
        # Bound the length first: int() of a huge digit string is slow (or refused).
        value = int(digits) if len(digits) <= 20 else high + 1
        if not low <= value <= high:
            self.pos -= len(digits)
            self.fail(f"{what[0].upper()}{what[1:]} out of range")
        return value

    def nz_number(self, what: str = "number") -> int:
        return self.number(what, 1, UINT32_MAX)

    def number64(self, what: str = "number", low: int = 0) -> int:
        return self.number(what, low, INT63_MAX)

    # -- strings ------------------------------------------------------------

    def quoted(self) -> bytes:
        # RFC 9051 4.3: quoted = DQUOTE *QUOTED-CHAR DQUOTE, with \" and \\ escapes;
        # CR, LF and NUL never appear in one.
        line, pos = self.line, self.pos + 1
        parts = []
        while True:
            m = _QUOTED_RUN.match(line, pos)
            parts.append(m.group())  # type: ignore[union-attr]
            pos = m.end()  # type: ignore[union-attr]
            c = line[pos] if pos < len(line) else -1
            if c == 0x22:
                self.pos = pos + 1
                return b"".join(parts)
            self.pos = pos
            if c == -1:
                self.fail("Unterminated quoted string")
            if c != 0x5C:
                self.fail("Invalid character in quoted string")
            if pos + 1 >= len(line) or line[pos + 1] not in b'"\\':
                self.fail("Invalid escape in quoted string")
            parts.append(line[pos + 1 : pos + 2])
            pos += 2

    def literal(self, binary: bool = False) -> tuple[bytes, bool]:
        """The data of the literal whose marker is here; (data, is_literal8)."""
        m = _LITERAL.fullmatch(self.line, self.pos)
        if not m:
            self.fail("Invalid literal (its marker must end the line)")
        if m.group(1) and not binary:
            self.fail("literal8 not allowed here")
        if self.index >= len(self.literals):
            self.fail("Literal without data")
        data, is8 = self.literals[self.index]
        # RFC 9051 4.3 / 9: a plain literal carries CHAR8 (no NUL), where a
        # literal8 is allowed too (APPEND, RFC 3516 4.4); only a literal8 may.
        if not is8 and b"\x00" in data:
            self.fail("NUL in literal")
        self.index += 1
        self.line = self.segments[self.index]
        self.pos = 0
        return data, is8

    def string(self) -> bytes:
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == 0x7B or (c == 0x7E and self.at(b"~{")):
            return self.literal()[0]
        self.fail("Expected string")

    def astring(self) -> bytes:
        c = self.peek()
        if c == 0x22 or c == 0x7B or (c == 0x7E and self.at(b"~{")):
            return self.string()
        return self.match(_ASTRING_ATOM, "string")

    def nstring(self) -> bytes | None:
        if self.at(b"NIL") and not _ASTRING_ATOM.match(self.line, self.pos + 3):
            self.pos += 3
            return None
        return self.string()

    def text(self, data: bytes, what: str) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError(None, f"{what} is not valid UTF-8") from None

    def astring_text(self, what: str = "String") -> str:
        return self.text(self.astring(), what)

    # -- mailboxes ------------------------------------------------------------

    def _mailbox_name(self, raw: bytes) -> str:
        name = self.text(raw, "Mailbox name")
        try:
            return decode_mailbox(name, self.utf8)
        except ValueError:
            # Well formed (an astring), just not a name: NO, not BAD (RFC 9051 7.1).
            raise ParseError(
                None, "Mailbox name is not valid modified UTF-7", code="CANNOT", status="NO"
            ) from None

    def mailbox(self, inbox: bool = True) -> str:
        # RFC 9051 9: mailbox = "INBOX" / astring; INBOX is case-insensitive.
        name = self._mailbox_name(self.astring())
        return "INBOX" if inbox and name.upper() == "INBOX" else name

    def list_mailbox(self) -> str:
        # RFC 9051 9: list-mailbox = 1*list-char / string.
        c = self.peek()
        if c == 0x22 or c == 0x7B:
            return self._mailbox_name(self.string())
        return self._mailbox_name(self.match(_LIST_ATOM, "mailbox pattern"))

    # -- sequence sets ----------------------------------------------------------

    def sequence_set(self) -> SequenceSet:
        start = self.pos
        token = self.match(_SEQSET, "sequence set")
        self.pos = start
        # RFC 5182 2.1: "$" is the saved search result, only on its own.
        if token == b"$":
            self.pos += 1
            return SequenceSet(saved=True)
        if token.count(b",") >= self.max_ranges:
            self.fail(f"Too many ranges in sequence set (max {self.max_ranges})")
        ranges = []
        for part in token.split(b","):
            ends = part.split(b":")
            if len(ends) > 2:
                self.fail("Invalid sequence range")
            numbers = [self._seq_number(e) for e in ends]
            ranges.append(SeqRange(numbers[0], numbers[-1]))
            self.pos += len(part) + 1
        self.pos = start + len(token)
        return SequenceSet(tuple(ranges))

    def _seq_number(self, text: bytes) -> int | None:
        # RFC 9051 9: seq-number = nz-number / "*".
        if text == b"*":
            return None
        if not text.isdigit() or text.startswith(b"0"):
            self.fail("Invalid sequence number")
        value = int(text) if len(text) <= 10 else 0
        if not 1 <= value <= UINT32_MAX:
            self.fail("Sequence number out of range")
        return value

    # -- dates ----------------------------------------------------------------

    def date(self) -> date:
        # RFC 9051 9: date = date-text / DQUOTE date-text DQUOTE;
        # date-text = date-day "-" date-month "-" date-year.
        quoted = self.peek() == 0x22
        m = _DATE.match(self.line, self.pos + quoted)
        if not m or (quoted and self.line[m.end() : m.end() + 1] != b'"'):
            self.fail("Expected date (d-Mon-yyyy)")
        month = MONTHS.get(m.group(2).upper())
        try:
            value = date(int(m.group(3)), month or 0, int(m.group(1)))
        except ValueError:
            self.fail("Invalid date")
        self.pos = m.end() + quoted
        return value

    def date_time(self) -> datetime:
        # RFC 9051 9: date-time = DQUOTE date-day-fixed "-" date-month "-" date-year
        # SP time SP zone DQUOTE; zone = ("+" / "-") 4DIGIT. A one-digit day
        # without its leading space is accepted too.
        m = _DATE_TIME.match(self.line, self.pos)
        if not m:
            self.fail('Expected date-time ("dd-Mon-yyyy hh:mm:ss +zzzz")')
        day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
        zone_minutes = int(zh) * 60 + int(zm)
        month = MONTHS.get(mon.upper())
        try:
            if int(zm) > 59 or zone_minutes >= 24 * 60:
                raise ValueError("zone")
            zone = timezone(timedelta(minutes=-zone_minutes if sign == b"-" else zone_minutes))
            value = datetime(
                int(year), month or 0, int(day), int(hh), int(mm), int(ss), tzinfo=zone
            )
        except ValueError:
            self.fail("Invalid date-time")
        self.pos = m.end()
        return value

    # -- flags ----------------------------------------------------------------

    def flag(self) -> str:
        # RFC 9051 9: flag = system flags / flag-keyword / flag-extension ("\" atom).
        if self.peek() == 0x5C:
            self.pos += 1
            name = "\\" + self.atom().decode("ascii")
            return SYSTEM_FLAGS.get(name.upper(), name)
        return self.atom().decode("ascii")

    def flag_list(self) -> tuple[str, ...]:
        # RFC 9051 9: flag-list = "(" [flag *(SP flag)] ")".
        return tuple(self.paren_list(self.flag))


# -- modified UTF-7 (RFC 3501 5.1.3) ------------------------------------------


def decode_mailbox(name: str, utf8_enabled: bool) -> str:
    """A mailbox name as received, to its real (Unicode) name.

    With IMAP4rev2 or UTF8=ACCEPT enabled names are plain UTF-8 (RFC 9051 5.1,
    RFC 6855 3); for IMAP4rev1 clients they are modified UTF-7 (RFC 3501 5.1.3).
    Characters outside printable ASCII are passed through, for rev1 clients
    that send UTF-8 anyway. Raises ValueError on broken modified UTF-7.
    """
    if utf8_enabled or "&" not in name:
        return name
    out = []
    pos = 0
    while (amp := name.find("&", pos)) >= 0:
        out.append(name[pos:amp])
        end = name.find("-", amp + 1)
        if end < 0:
            raise ValueError("unterminated &-sequence")
        out.append(_decode_utf7_run(name[amp + 1 : end]))
        pos = end + 1
    out.append(name[pos:])
    return "".join(out)


def _decode_utf7_run(run: str) -> str:
    if not run:
        return "&"
    if not run.isascii() or len(run) % 4 == 1:
        raise ValueError("bad modified base64")
    b64 = run.replace(",", "/") + "=" * (-len(run) % 4)
    try:
        raw = base64.b64decode(b64, validate=True)
        text = raw.decode("utf-16-be")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("bad modified base64") from exc
    # Printable ASCII must not be encoded; re-encoding must give the same run.
    if any(0x20 <= ord(c) < 0x7F for c in text) or _encode_utf7_run(text) != run:
        raise ValueError("non-canonical modified UTF-7")
    return text


def _encode_utf7_run(text: str) -> str:
    raw = base64.b64encode(text.encode("utf-16-be")).decode("ascii")
    return raw.rstrip("=").replace("/", ",")


def encode_mailbox(name: str, utf8_enabled: bool) -> str:
    """A mailbox name as it goes to the client (see decode_mailbox)."""
    if utf8_enabled:
        return name
    out = []
    run: list[str] = []
    for c in name:
        if 0x20 <= ord(c) < 0x7F:
            if run:
                out.append("&" + _encode_utf7_run("".join(run)) + "-")
                run = []
            out.append("&-" if c == "&" else c)
        else:
            run.append(c)
    if run:
        out.append("&" + _encode_utf7_run("".join(run)) + "-")
    return "".join(out)
