"""SEARCH criteria (RFC 9051 6.4.4) as a tree of small nodes, and their grammar.

The parser reduces the many search keys of the RFC to a few node types the
store can evaluate: flags (ANSWERED, UNSEEN, KEYWORD x, ...), header and text
matches, dates, sizes, sequence/UID sets, MODSEQ (RFC 7162 3.1.5), ages
(RFC 5032 WITHIN), and the combinators AND / OR / NOT. Strings are already
decoded from the command's CHARSET.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from pimail.imap.grammar import DIGITS, Reader, SequenceSet


class SearchKey:
    """Base of the search nodes."""

    __slots__ = ()


@dataclass(frozen=True)
class SearchAll(SearchKey):
    """ALL: every message."""


@dataclass(frozen=True)
class SearchAnd(SearchKey):
    """Every key matches (RFC 9051 6.4.4: keys in sequence are ANDed; "(...)")."""

    keys: tuple[SearchKey, ...]


@dataclass(frozen=True)
class SearchOr(SearchKey):
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True)
class SearchNot(SearchKey):
    key: SearchKey


@dataclass(frozen=True)
class SearchSequence(SearchKey):
    """A bare sequence set (message numbers), or UID <sequence-set>."""

    sequence_set: SequenceSet
    uid: bool = False


@dataclass(frozen=True)
class SearchFlag(SearchKey):
    """A flag set (present=True) or not set: ANSWERED, UNSEEN, KEYWORD x, OLD, ..."""

    flag: str
    present: bool = True


@dataclass(frozen=True)
class SearchHeader(SearchKey):
    """HEADER field value, and FROM/TO/CC/BCC/SUBJECT; field is matched case-insensitively.

    An empty value matches every message that has the field (RFC 9051 6.4.4).
    """

    field: str
    value: str


@dataclass(frozen=True)
class SearchText(SearchKey):
    """BODY value (headers=False) or TEXT value (headers and body)."""

    value: str
    headers: bool = False


@dataclass(frozen=True)
class SearchDate(SearchKey):
    """BEFORE/ON/SINCE (internal date) or SENTBEFORE/SENTON/SENTSINCE (Date: header).

    relation is "before", "on" or "since"; dates disregard time and zone.
    """

    relation: str
    date: date
    sent: bool = False


@dataclass(frozen=True)
class SearchSize(SearchKey):
    """LARGER n / SMALLER n (RFC822.SIZE); relation is "larger" or "smaller"."""

    relation: str
    size: int


@dataclass(frozen=True)
class SearchAge(SearchKey):
    """OLDER n / YOUNGER n seconds, by internal date (RFC 5032)."""

    relation: str
    seconds: int


@dataclass(frozen=True)
class SearchModseq(SearchKey):
    """MODSEQ [entry-name entry-type] n (RFC 7162 3.1.5): mod-sequence >= n."""

    modseq: int
    entry: str | None = None
    entry_type: str | None = None


# RFC 9051 6.4.4 (and RFC 3501 6.4.4 for RECENT/OLD/NEW, which rev1 clients send).
_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True),
    "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True),
    "UNDRAFT": ("\\Draft", False),
    "FLAGGED": ("\\Flagged", True),
    "UNFLAGGED": ("\\Flagged", False),
    "SEEN": ("\\Seen", True),
    "UNSEEN": ("\\Seen", False),
    "RECENT": ("\\Recent", True),
    "OLD": ("\\Recent", False),
}
_HEADER_KEYS = {"BCC": "Bcc", "CC": "Cc", "FROM": "From", "SUBJECT": "Subject", "TO": "To"}
_DATE_KEYS = {
    "BEFORE": ("before", False),
    "ON": ("on", False),
    "SINCE": ("since", False),
    "SENTBEFORE": ("before", True),
    "SENTON": ("on", True),
    "SENTSINCE": ("since", True),
}
# RFC 7162 3.1.5: entry-type-req = "priv" / "shared" / "all".
_ENTRY_TYPES = {"PRIV": "priv", "SHARED": "shared", "ALL": "all"}

_SEQUENCE_START = DIGITS | {0x2A, 0x24}  # digit, "*", "$"

Decoder = Callable[[bytes], str]


def search_program(r: Reader, decode: Decoder) -> SearchKey:
    """search-key *(SP search-key), ANDed (RFC 9051 6.4.4); one key stands alone."""
    keys = [search_key(r, decode, 1)]
    while not r.at_end():
        r.sp()
        keys.append(search_key(r, decode, 1))
    return keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))


def search_key(r: Reader, decode: Decoder, depth: int) -> SearchKey:
    if depth > r.max_depth:
        r.fail(f"Search keys nested too deeply (max {r.max_depth})")
    c = r.peek()
    if c == 0x28:  # "(" search-key *(SP search-key) ")"
        keys = r.paren_list(lambda: search_key(r, decode, depth + 1), empty=False)
        return keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))
    if c in _SEQUENCE_START:
        return SearchSequence(r.sequence_set())
    start = r.pos
    name = r.keyword()
    if name in _FLAG_KEYS:
        return SearchFlag(*_FLAG_KEYS[name])
    if name == "ALL":
        return SearchAll()
    if name == "NEW":  # RFC 3501 6.4.4: NEW is RECENT UNSEEN.
        return SearchAnd((SearchFlag("\\Recent"), SearchFlag("\\Seen", False)))
    parse = _ARG_KEYS.get(name)
    if parse is None:
        r.pos = start
        r.fail("Unknown search key")
    r.sp()
    return parse(r, name, decode, depth)


def _header(r: Reader, name: str, decode: Decoder, depth: int) -> SearchKey:
    if name == "HEADER":
        # RFC 9051 9: "HEADER" SP header-fld-name SP astring.
        field = r.astring()
        if not field.isascii():
            r.fail("Header field name is not ASCII")
        r.sp()
        return SearchHeader(field.decode("ascii"), decode(r.astring()))
    return SearchHeader(_HEADER_KEYS[name], decode(r.astring()))


def _text(r: Reader, name: str, decode: Decoder, depth: int) -> SearchKey:
    return SearchText(decode(r.astring()), headers=name == "TEXT")


def _keyword(r: Reader, name: str, decode: Decoder, depth: int) -> SearchKey:
    return SearchFlag(r.flag(), present=name == "KEYWORD")


def _date(r: Reader, name: str, decode: Decoder, depth: int) -> SearchKey:
    relation, sent = _DATE_KEYS[name]
    return SearchDate(relation, r.date(), sent)


def _size(r: Reader, name: str, decode: Decoder, depth: int) -> SearchKey:
    # RFC 9051 9: "LARGER" SP number64 / "SMALLER" SP number64.
    return SearchSize(name.lower(), r.number64("size"))


def _age(r: Reader, name: str, decode: Decoder, depth: int) -> SearchKey:
    # RFC 5032: "OLDER" SP nz-number / "YOUNGER" SP nz-number.
    return SearchAge(name.lower(), r.nz_number("interval"))


def _uid(r: Reader, name: str, decode: Decoder, depth: int) -> SearchKey:
    return SearchSequence(r.sequence_set(), uid=True)


def _not(r: Reader, name: str, decode: Decoder, depth: int) -> SearchKey:
    return SearchNot(search_key(r, decode, depth + 1))


def _or(r: Reader, name: str, decode: Decoder, depth: int) -> SearchKey:
    left = search_key(r, decode, depth + 1)
    r.sp()
    return SearchOr(left, search_key(r, decode, depth + 1))


def _modseq(r: Reader, name: str, decode: Decoder, depth: int) -> SearchKey:
    # RFC 7162 3.1.5: "MODSEQ" [SP entry-name SP entry-type-req] SP mod-sequence-valzer,
    # entry-name = DQUOTE "/flags/" attr-flag DQUOTE.
    entry = entry_type = None
    if r.peek() == 0x22:
        raw = r.quoted()
        if not raw.lower().startswith(b"/flags/") or not raw.isascii():
            r.fail("MODSEQ entry name must be /flags/<flag>")
        entry = raw.decode("ascii")
        r.sp()
        kind = r.keyword()
        if kind not in _ENTRY_TYPES:
            r.fail("MODSEQ entry type must be priv, shared or all")
        entry_type = _ENTRY_TYPES[kind]
        r.sp()
    return SearchModseq(r.number64("mod-sequence"), entry, entry_type)


_ARG_KEYS: dict[str, Callable[[Reader, str, Decoder, int], SearchKey]] = {
    **dict.fromkeys(("BCC", "CC", "FROM", "SUBJECT", "TO", "HEADER"), _header),
    **dict.fromkeys(("BODY", "TEXT"), _text),
    **dict.fromkeys(("KEYWORD", "UNKEYWORD"), _keyword),
    **dict.fromkeys(_DATE_KEYS, _date),
    **dict.fromkeys(("LARGER", "SMALLER"), _size),
    **dict.fromkeys(("OLDER", "YOUNGER"), _age),
    "UID": _uid,
    "NOT": _not,
    "OR": _or,
    "MODSEQ": _modseq,
}
