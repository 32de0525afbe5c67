"""FETCH responses (RFC 9051 6.4.5, 7.5.2; RFC 3516 BINARY; RFC 7162 MODSEQ).

`render()` runs on an index-reader thread: one query per UID range, then one
`* n FETCH (...)` line per message. What the index caches (FLAGS, sizes,
ENVELOPE, BODYSTRUCTURE) is served without opening a file; a file is read
only for BODY[...], BINARY and the non-extensible BODY, or when a message has
not been analysed yet.
"""

from __future__ import annotations

import bisect
import sqlite3
import time
from array import array
from dataclasses import dataclass
from pathlib import Path

from ..mime import structure as mime
from ..store.ops import StoreError
from .events import FetchAttribute

COLUMNS = (
    "m.uid, m.flags, m.internaldate, m.size, m.modseq, c.envelope, c.bodystructure, c.structure,"
    " m.subdir, m.filename"
)
# FETCH items that set \Seen (RFC 9051 6.4.5) unless .PEEK or read-only.
SETS_SEEN = {"RFC822", "RFC822.TEXT"}
# Items served from the index alone (when the message has been analysed).
CACHED = {"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "MODSEQ", "ENVELOPE", "BODYSTRUCTURE"}


@dataclass
class FetchOptions:
    uid: bool  # UID FETCH: UID is always returned (RFC 9051 6.4.9)
    condstore: bool  # MODSEQ is returned with every FETCH once CONDSTORE is on
    utf8: bool
    imap4rev2: bool
    changedsince: int | None = None
    recent: frozenset[int] = frozenset()  # \Recent UIDs (IMAP4rev1 sessions)
    add_flags: frozenset[int] = frozenset()  # UIDs whose FLAGS changed as a side effect
    flags_out: set[str] | None = None  # filled with every flag sent (for FLAGS, RFC 9051 7.3.5)


def sets_seen(attributes: tuple[FetchAttribute, ...]) -> bool:
    return any(
        (a.name in SETS_SEEN) or (a.section is not None and not a.peek and a.name != "BINARY.SIZE")
        for a in attributes
    )


def format_flags(flags: str, recent: bool = False) -> bytes:
    text = flags + (" \\Recent" if recent else "") if flags else ("\\Recent" if recent else "")
    return b"(" + text.strip().encode() + b")"


def internaldate(timestamp: int) -> bytes:
    # RFC 9051 9: date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone
    return time.strftime('"%d-%b-%Y %H:%M:%S +0000"', time.gmtime(timestamp)).encode()


def literal(data: bytes, binary: bool = False) -> bytes:
    """data as a literal: a literal8 for BINARY content with NUL, else {n}.

    RFC 9051 4.3: a literal carries CHAR8, never NUL; unencoded binary is sent
    only as a literal8 in answer to BINARY[] (RFC 3516 4.2; RFC 9051 6.4.5).
    A message stored with NUL (APPENDed as a literal8 ~{n}, RFC 3516 4.3, or
    received so) is still served to BODY[], RFC822 and friends: its NULs go as
    0x80, as Dovecot does, so that every size and <partial> offset stays that
    of the stored octets and a client that never asked for BINARY never sees
    a NUL. BINARY[] gives the octets as they are.
    """
    if b"\x00" in data:
        if binary:
            return b"~{%d}\r\n" % len(data) + data  # literal8, RFC 3516 4.2
        data = data.replace(b"\x00", b"\x80")
    return b"{%d}\r\n" % len(data) + data


def uid_ranges(ranges: list[tuple[int, int]], uids: array, by_uid: bool) -> list[tuple[int, int]]:
    """Resolved set ranges -> UID ranges to query (sequence numbers map through `uids`)."""
    if by_uid:
        return ranges
    out = []
    for low, high in ranges:
        if low > len(uids):
            continue
        out.append((uids[low - 1], uids[min(high, len(uids)) - 1]))
    return out


def render(
    con: sqlite3.Connection,
    mailbox_id: int,
    folder: Path,
    uids: array,
    ranges: list[tuple[int, int]],
    attributes: tuple[FetchAttribute, ...],
    options: FetchOptions,
) -> list[bytes]:
    names = {a.name for a in attributes}
    if options.uid:
        names.add("UID")
    out: list[bytes] = []
    columns = COLUMNS
    if names <= CACHED and not options.utf8 and not options.imap4rev2:
        # The common first sync: everything is in the index; leave the structure
        # JSON (the larger part of the cache) in the database.
        columns = columns.replace("c.structure", "NULL")
    query = (
        f"SELECT {columns} FROM messages m LEFT JOIN message_cache c ON c.message_id = m.id"
        " WHERE m.mailbox_id = ? AND m.uid BETWEEN ? AND ?"
    )
    if options.changedsince is not None:
        query += f" AND m.modseq > {int(options.changedsince)}"
    query += " ORDER BY m.uid"
    for low, high in ranges:
        for row in con.execute(query, (mailbox_id, low, high)):
            uid = row[0]
            i = bisect.bisect_left(uids, uid)
            if i == len(uids) or uids[i] != uid:
                continue  # not (yet) known to this session
            out.append(_message(con, row, i + 1, folder, attributes, names, options))
    return out


def _message(
    con: sqlite3.Connection,
    row: tuple,
    seq: int,
    folder: Path,
    attributes: tuple[FetchAttribute, ...],
    names: set[str],
    options: FetchOptions,
) -> bytes:
    uid, flags, idate, size, modseq, envelope, bodystructure, structure, sub, filename = row
    items: list[bytes] = []
    if "UID" in names:
        items.append(b"UID %d" % uid)
    message = _Lazy(con, folder, sub, filename, structure, uid)
    done_flags = False
    for a in attributes:
        name = a.name
        if name == "UID":
            continue
        if name == "FLAGS":
            items.append(b"FLAGS " + format_flags(flags, uid in options.recent))
            done_flags = True
        elif name == "INTERNALDATE":
            items.append(b"INTERNALDATE " + internaldate(idate))
        elif name == "RFC822.SIZE":
            items.append(b"RFC822.SIZE %d" % size)
        elif name == "MODSEQ":
            items.append(b"MODSEQ (%d)" % modseq)
        elif name == "ENVELOPE":
            # The cache is the non-UTF-8 form; it differs only where a literal was needed.
            if not envelope or (options.utf8 and b"{" in envelope):
                envelope = mime.envelope(message.struct(), message.data(), utf8=options.utf8)
            items.append(b"ENVELOPE " + envelope)
        elif name == "BODYSTRUCTURE" or (name == "BODY" and a.section is None):
            extensible = name == "BODYSTRUCTURE"
            if extensible and bodystructure and not options.imap4rev2:
                items.append(b"BODYSTRUCTURE " + bodystructure)
            else:
                text = mime.bodystructure(
                    message.struct(), message.data(), extensible, imap4rev2=options.imap4rev2
                )
                items.append(name.encode() + b" " + text)
        else:
            items.append(_section(a, message))
    if uid in options.add_flags and not done_flags:
        items.append(b"FLAGS " + format_flags(flags, uid in options.recent))
        done_flags = True
    # RFC 7162 3.1: once CONDSTORE is on, flags go out with their MODSEQ.
    if "MODSEQ" not in names and (options.changedsince is not None or
                                  (options.condstore and done_flags)):  # fmt: skip
        items.append(b"MODSEQ (%d)" % modseq)
    if done_flags and options.flags_out is not None:
        options.flags_out.update(flags.split())
    return b"* %d FETCH (%s)\r\n" % (seq, b" ".join(items))


def _section(a: FetchAttribute, message: _Lazy) -> bytes:
    data = message.data()
    if a.name == "RFC822":
        return b"RFC822 " + literal(data)
    if a.name == "RFC822.HEADER":
        return b"RFC822.HEADER " + literal(
            mime.section_bytes(message.struct(), data, mime.Section((), "HEADER"))
        )
    if a.name == "RFC822.TEXT":
        return b"RFC822.TEXT " + literal(
            mime.section_bytes(message.struct(), data, mime.Section((), "TEXT"))
        )
    assert a.section is not None
    if a.name in ("BINARY", "BINARY.SIZE"):
        return _binary(a, message.struct(), data)
    content = mime.section_bytes(message.struct(), data, a.section)
    content = mime.apply_partial(content, a.partial)
    return a.response_name().replace(".PEEK", "").encode() + b" " + literal(content)


def _binary(a: FetchAttribute, struct: mime.MessageStructure, data: bytes) -> bytes:
    """BINARY[part]<partial> or BINARY.SIZE[part] (RFC 3516 4.1, RFC 9051 6.4.5)."""
    assert a.section is not None
    part = a.section.part
    try:
        if a.name == "BINARY.SIZE":
            size = mime.binary_size(struct, data, part)
            return f"BINARY.SIZE[{'.'.join(map(str, part))}] {size}".encode()
        content = mime.binary_bytes(struct, data, part)
    except mime.UnknownCTEError as e:
        # RFC 3516 4.1: a CTE the server cannot decode fails the command with
        # NO [UNKNOWN-CTE] (the session answers a StoreError with its code).
        raise StoreError("UNKNOWN-CTE", f"Cannot decode {e.encoding!r}") from None
    content = mime.apply_partial(content, a.partial)
    return a.response_name().encode() + b" " + literal(content, binary=True)


class _Lazy:
    """A message's octets and structure, read and parsed only if an item needs them."""

    def __init__(
        self,
        con: sqlite3.Connection,
        folder: Path,
        sub: str,
        filename: str,
        structure: str | None,
        uid: int,
    ) -> None:
        self.con, self.folder, self.sub, self.filename = con, folder, sub, filename
        self.cached_structure = structure
        self.uid = uid
        self._data: bytes | None = None
        self._struct: mime.MessageStructure | None = None

    def data(self) -> bytes:
        if self._data is None:
            for _attempt in range(3):
                try:
                    self._data = (self.folder / self.sub / self.filename).read_bytes()
                    break
                except FileNotFoundError:
                    # Renamed by a flag change since the query: look the name up again.
                    row = self.con.execute(
                        "SELECT subdir, filename FROM messages WHERE uid = ? AND filename LIKE ?",
                        (self.uid, self.filename.split(":2,")[0] + "%"),
                    ).fetchone()
                    if row is None:
                        break
                    self.sub, self.filename = row
            if self._data is None:
                self._data = b""  # expunged meanwhile: serve it empty
        return self._data

    def struct(self) -> mime.MessageStructure:
        if self._struct is None:
            data = self.data()
            if self.cached_structure:
                try:
                    self._struct = mime.MessageStructure.from_json(self.cached_structure)
                    if self._struct.size != len(data):
                        self._struct = None
                except mime.MimeError:
                    self._struct = None
            if self._struct is None:
                self._struct = mime.parse(data)
        return self._struct
