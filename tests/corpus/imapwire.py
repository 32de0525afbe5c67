"""IMAP responses as data, and a pipelining client, for the corpus tests.

`parse(line)` turns one response line (with its literals inlined, as
`RawIMAP.line()` returns it) into nested Python values: lists for
parenthesised lists, bytes for atoms, quoted strings and literals (literal8
too, RFC 3516 4.2), None for NIL. Atoms and strings are both bytes; a test
that cares tells them apart by position, as a client does.

`Pipeline` sends many tagged commands before reading any answer (RFC 9051
5.5: a client MAY send another command without waiting for the completion
result of the first), so 6,000 messages cost a few round trips, not 60,000.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from imap.imap_raw import RawIMAP

_ATOM_END = b' ()[]{\r\n"'
_LITERAL = re.compile(rb"~?\{(\d+)\+?\}\r\n")


class ParseError(ValueError):
    pass


def parse(data: bytes, pos: int = 0) -> list:
    """The items of a response line, as a list (the line's own words at top level)."""
    out: list = []
    stack: list[list] = [out]
    n = len(data)
    while pos < n:
        c = data[pos : pos + 1]
        if c in (b" ", b"\r", b"\n"):
            pos += 1
        elif c == b"(":
            new: list = []
            stack[-1].append(new)
            stack.append(new)
            pos += 1
        elif c == b")":
            if len(stack) == 1:
                raise ParseError(f"unbalanced ) at {pos}")
            stack.pop()
            pos += 1
        elif c == b'"':
            end = pos + 1
            value = bytearray()
            while True:
                if end >= n:
                    raise ParseError("unterminated quoted string")
                ch = data[end : end + 1]
                if ch == b"\\":
                    value += data[end + 1 : end + 2]
                    end += 2
                elif ch == b'"':
                    break
                else:
                    value += ch
                    end += 1
            stack[-1].append(bytes(value))
            pos = end + 1
        elif c in (b"{", b"~") and (m := _LITERAL.match(data, pos)):
            size = int(m.group(1))
            stack[-1].append(data[m.end() : m.end() + size])
            pos = m.end() + size
        else:
            end = pos
            depth = 0  # atoms with a section: BODY[HEADER.FIELDS (FROM SUBJECT)]<0>
            while end < n:
                ch = data[end : end + 1]
                if ch == b"[":
                    depth += 1
                elif ch == b"]":
                    depth -= 1
                elif depth <= 0 and ch in _ATOM_END:
                    break
                end += 1
            atom = data[pos:end]
            stack[-1].append(None if atom.upper() == b"NIL" else atom)
            pos = max(end, pos + 1)
    if len(stack) != 1:
        raise ParseError("unbalanced (")
    return out


def fetch_items(line: bytes) -> tuple[int, dict[bytes, object]] | None:
    """`* n FETCH (k v k v ...)` -> (n, {K: v}); None for any other line."""
    if not line.startswith(b"* ") or b" FETCH (" not in line[:30]:
        return None
    words = parse(line)
    items = words[3]
    return int(words[1]), {items[i].upper(): items[i + 1] for i in range(0, len(items) - 1, 2)}


@dataclass
class Answer:
    command: bytes
    untagged: list[bytes] = field(default_factory=list)
    tagged: bytes = b""

    @property
    def status(self) -> bytes:
        return self.tagged.split(b" ", 2)[1] if b" " in self.tagged else b""

    def fetches(self) -> list[tuple[int, dict[bytes, object]]]:
        return [f for f in map(fetch_items, self.untagged) if f is not None]


class Pipeline:
    """Commands sent `window` at a time without waiting; answers in order.

    If the server drops the connection, `reconnect()` gives a new session and
    the unanswered commands of that window are sent again one at a time, so
    that the one that makes the server drop it is known: it gets a made-up
    tagged line `* DROPPED ...` (a problem for the caller to report)."""

    def __init__(
        self, client: RawIMAP, window: int = 50, reconnect: Callable[[], RawIMAP] | None = None
    ) -> None:
        self.client = client
        self.window = window
        self.reconnect = reconnect

    def run(self, commands: list[bytes]) -> list[Answer]:
        answers: list[Answer] = []
        start = 0
        careful_until = 0  # after a drop: the rest of that window one by one, to find the culprit
        while start < len(commands):
            batch = commands[start : start + (1 if start < careful_until else self.window)]
            tags = []
            out = b""
            for command in batch:
                self.client.n += 1
                tag = b"p%d" % self.client.n
                tags.append(tag)
                out += tag + b" " + command + b"\r\n"
            try:
                self.client.send(out)
            except OSError:
                pass  # the reading below says what happened
            for tag, command in zip(tags, batch, strict=True):
                try:
                    untagged, tagged = self.client.until(tag)
                except (ConnectionError, OSError) as e:
                    if len(batch) > 1:  # which of the window's commands did it? Ask again
                        careful_until = start + len(batch)
                        self.client.close()
                        self.client = self._again(commands[start:])
                        break
                    answers.append(Answer(command, [], DROPPED + str(e)[:100].encode()))
                    start += 1
                    self.client.close()
                    self.client = self._again(commands[start:])
                    break
                answers.append(Answer(command, untagged, tagged))
                start += 1
        return answers

    def _again(self, rest: list[bytes]) -> RawIMAP:
        if self.reconnect is None:
            raise ConnectionError(f"dropped, {len(rest)} commands unanswered")
        return self.reconnect()


DROPPED = b"* DROPPED the server closed the connection: "
