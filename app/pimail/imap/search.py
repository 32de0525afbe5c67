"""SEARCH evaluation (RFC 9051 6.4.4) against the index.

Runs on an index-reader thread. Text keys (BODY, TEXT) and header keys
(SUBJECT, FROM, TO, CC, BCC, HEADER) go to the text index
(store/textindex.py) first, once per key, giving a set of matching message
ids; everything else is evaluated per message on the indexed columns (flags,
dates, sizes).

RFC 9051 6.4.4 / RFC 3501 6.4.4: a string key matches where the field
"contains the specified string", case-insensitively: substrings, not words
("sdfghjk" finds "asdfghjkl"), over the decoded text (RFC 2047 words, any
body charset and transfer encoding, HTML as text). TEXT covers every header
field and the body, BODY the body; address fields (FROM, TO, CC, BCC) match
the display names and addresses without comments.
"""

from __future__ import annotations

import bisect
import email.utils
import sqlite3
import time
from array import array
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from ..store import textindex
from .grammar import SequenceSet
from .searchkey import (
    SearchAge,
    SearchAll,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchModseq,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchSize,
    SearchText,
)

COLUMNS = "id, uid, flags, internaldate, size, modseq, hdr_date"


class SearchContext:
    def __init__(
        self,
        con: sqlite3.Connection,
        mailbox_id: int,
        folder: Path,
        uids: array,
        recent: frozenset[int],
        saved: list[int],
    ) -> None:
        self.con = con
        self.mailbox_id = mailbox_id
        self.folder = folder
        self.uids = uids
        self.recent = recent
        self.saved = saved
        self.fts: dict[SearchText | SearchHeader, set[int]] = {}
        self.max_modseq = 0


def search(ctx: SearchContext, key: SearchKey) -> list[int]:
    """UIDs of the session's messages that match `key`, ascending."""
    _prepare_text(ctx, key)
    test = _compile(ctx, key)
    required = _required_text(key)
    if required is not None:
        # Only messages the text index matched can match: read just those rows.
        ids = sorted(ctx.fts[required])
        rows: Any = []
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            rows += ctx.con.execute(
                f"SELECT {COLUMNS} FROM messages WHERE mailbox_id = ?"
                f" AND id IN ({','.join('?' * len(chunk))})",
                (ctx.mailbox_id, *chunk),
            ).fetchall()
        rows.sort(key=lambda r: r[1])
    else:
        rows = ctx.con.execute(
            f"SELECT {COLUMNS} FROM messages WHERE mailbox_id = ? ORDER BY uid",
            (ctx.mailbox_id,),
        )
    out = []
    uids = ctx.uids
    for row in rows:
        uid = row[1]
        i = bisect.bisect_left(uids, uid)
        if i == len(uids) or uids[i] != uid:
            continue
        if test(row, i + 1):
            out.append(uid)
            ctx.max_modseq = max(ctx.max_modseq, row[5])
    return out


def _required_text(key: SearchKey) -> SearchText | SearchHeader | None:
    """A string key every match must satisfy (the key itself, or one ANDed in)."""
    if isinstance(key, SearchText | SearchHeader):
        return key
    if isinstance(key, SearchAnd):
        for k in key.keys:
            if isinstance(k, SearchText | SearchHeader):
                return k
    return None


def _prepare_text(ctx: SearchContext, key: SearchKey) -> None:
    stack = [key]
    while stack:
        k = stack.pop()
        if isinstance(k, SearchText | SearchHeader) and k not in ctx.fts:
            ctx.fts[k] = _text_ids(ctx, k)
        elif isinstance(k, SearchAnd):
            stack.extend(k.keys)
        elif isinstance(k, SearchOr):
            stack.extend((k.left, k.right))
        elif isinstance(k, SearchNot):
            stack.append(k.key)


def _text_ids(ctx: SearchContext, key: SearchText | SearchHeader) -> set[int]:
    needle = textindex.fold(key.value)
    if isinstance(key, SearchHeader):
        field = textindex.fold(key.field)
        return textindex.header_ids(ctx.con, ctx.mailbox_id, field, needle)
    return textindex.text_ids(ctx.con, ctx.mailbox_id, needle, "text" if key.headers else "body")


Test = Callable[[tuple, int], bool]


def _compile(ctx: SearchContext, key: SearchKey) -> Test:
    if isinstance(key, SearchAll):
        return lambda row, seq: True
    if isinstance(key, SearchAnd):
        tests = [_compile(ctx, k) for k in key.keys]
        return lambda row, seq: all(t(row, seq) for t in tests)
    if isinstance(key, SearchOr):
        left, right = _compile(ctx, key.left), _compile(ctx, key.right)
        return lambda row, seq: left(row, seq) or right(row, seq)
    if isinstance(key, SearchNot):
        inner = _compile(ctx, key.key)
        return lambda row, seq: not inner(row, seq)
    if isinstance(key, SearchSequence):
        return _sequence(ctx, key.sequence_set, key.uid)
    if isinstance(key, SearchFlag):
        return _flag(ctx, key)
    if isinstance(key, SearchText | SearchHeader):
        ids = ctx.fts[key]
        return lambda row, seq: row[0] in ids
    if isinstance(key, SearchDate):
        return _date(key)
    if isinstance(key, SearchSize):
        if key.relation == "larger":
            return lambda row, seq: row[4] > key.size
        return lambda row, seq: row[4] < key.size
    if isinstance(key, SearchAge):
        cutoff = time.time() - key.seconds
        if key.relation == "older":
            return lambda row, seq: row[3] <= cutoff
        return lambda row, seq: row[3] >= cutoff
    if isinstance(key, SearchModseq):
        return lambda row, seq: row[5] >= key.modseq
    raise ValueError(f"search key {type(key).__name__} not supported")


def _sequence(ctx: SearchContext, sequence_set: SequenceSet, by_uid: bool) -> Test:
    if sequence_set.saved:  # $ (RFC 5182): the result saved by SEARCH RETURN (SAVE)
        saved = set(ctx.saved)
        return lambda row, seq: row[1] in saved
    largest = (ctx.uids[-1] if ctx.uids else 0) if by_uid else len(ctx.uids)
    ranges = sequence_set.resolve(largest) if largest else []
    if by_uid:
        return lambda row, seq: any(lo <= row[1] <= hi for lo, hi in ranges)
    return lambda row, seq: any(lo <= seq <= hi for lo, hi in ranges)


def _flag(ctx: SearchContext, key: SearchFlag) -> Test:
    want = key.present
    if key.flag.upper() == "\\RECENT":
        recent = ctx.recent
        return lambda row, seq: (row[1] in recent) == want
    flag = key.flag.lower()
    return lambda row, seq: (flag in row[2].lower().split()) == want


def _date(key: SearchDate) -> Test:
    day = key.date

    def message_day(row: tuple) -> date | None:
        if not key.sent:
            # RFC 9051 6.4.4: internal date, disregarding time and timezone.
            return datetime.fromtimestamp(row[3], UTC).date()
        if not row[6]:
            return None
        try:
            return email.utils.parsedate_to_datetime(row[6]).date()
        except (TypeError, ValueError, IndexError):
            return None

    def test(row: tuple, seq: int) -> bool:
        d = message_day(row)
        if d is None:
            return False
        if key.relation == "before":
            return d < day
        if key.relation == "on":
            return d == day
        return d >= day

    return test
