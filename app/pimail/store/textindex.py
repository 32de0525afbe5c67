"""The text index: substring search over messages' decoded headers and bodies.

Table `message_text` (index.db migration 5) is an SQLite FTS5 table with the
`trigram` tokenizer, rowid = messages.id, two columns:

- `headers`: one line per field of the message's header, `name: value`, the
  value unfolded, RFC 2047-decoded and, for address fields, without comments
  (store/analyze.py; DKIM/ARC signatures without their b= and bh= data);
- `body`: the text of the message's text/* parts, transfer encoding and
  charset undone, HTML without its markup.

Both are stored folded (`fold`: Unicode case folding, runs of white space as
one space), and a search string is folded the same way, so the tokenizer
runs case-sensitive (`case_sensitive 1`) on folded text and needs no
folding of its own (nor `remove_diacritics`, which bookworm's SQLite 3.40
lacks): a match is "the folded field contains the folded string", the
case-insensitive substring match of RFC 9051 6.4.4 / RFC 3501 6.4.4.

The table keeps no token positions (`detail=none`: its index is a sixth of
what positions take, 16 MiB instead of 97 for the 10,000-message benchmark
folder), so a string's trigrams select candidate rows (every row holding all
of them) and instr() on the stored text decides; a string under 3 characters
has no trigram, and every row of the folder is a candidate.

Used by IMAP SEARCH (imap/search.py) and the webmail's search (web/mail_index.py);
functions of a read connection, no writes.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

# How the table is created (db.py migration 5).

_SPACE = re.compile(r"\s+")
_SPACE_IN_LINE = re.compile(r"[^\S\n]+")
# NUL and lone surrogates (from a codec or surrogateescape) never reach SQLite.
_UNSAFE = re.compile("[\x00\ud800-\udfff]")
MIN_TRIGRAM = 3
MAX_TRIGRAMS = 12


def clean(text: str) -> str:
    """Text that SQLite stores as it is: no NUL, no lone surrogate."""
    return _UNSAFE.sub("\ufffd", text) if _UNSAFE.search(text) else text


def fold(text: str) -> str:
    """The form both the index and a search string take: case-folded (Unicode
    default case folding: "Ü" is "ü", "ß" is "ss"), white space runs as one space."""
    return _SPACE.sub(" ", clean(text).casefold())


def fold_lines(text: str) -> str:
    """`fold` for text whose line ends (the header column's) are kept."""
    return _SPACE_IN_LINE.sub(" ", clean(text).casefold())


def _phrase(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def fts_query(value: str, columns: str = "text") -> str | None:
    """The webmail's search string as the text index wants it (folded), or None
    for one of only white space. `columns` is kept for the callers' sake."""
    needle = fold(value)
    return needle if needle.strip() else None


def trigram_query(needle: str) -> str:
    """An FTS5 query for the rows holding every trigram of `needle` (3+ characters):
    the candidates, a superset of the rows that contain it. Long strings use
    MAX_TRIGRAMS of their trigrams, spread over the string."""
    grams = list(dict.fromkeys(needle[i : i + 3] for i in range(len(needle) - 2)))
    if len(grams) > MAX_TRIGRAMS:
        step = (len(grams) - 1) / (MAX_TRIGRAMS - 1)
        grams = [grams[round(k * step)] for k in range(MAX_TRIGRAMS)]
    return " AND ".join(_phrase(g) for g in grams)


def match_sql(
    needle: str, where: str, mailbox_id: int, select: str = "rowid"
) -> tuple[str, list[Any]]:
    """(SELECT `select` ..., args) of the rows of `mailbox_id` whose column(s) `where`
    ("headers", "body" or "text": both) contain the folded string `needle`.

    Trigrams give candidates, instr() on the stored text decides.
    """
    folder = "rowid IN (SELECT id FROM messages WHERE mailbox_id = ?)"
    # With MATCH, "+rowid": a filter on the candidates. As a constraint FTS5 would
    # look each rowid of the folder up and run the whole query again for each
    # (19 s instead of 28 ms for the benchmark's rare word).
    folder_filter = "+" + folder
    if not needle:  # every string contains the empty string
        return f"SELECT {select} FROM message_text WHERE {folder}", [mailbox_id]
    if where == "text":
        test, args = "(instr(body, ?) > 0 OR instr(headers, ?) > 0)", [needle, needle]
    else:
        test, args = f"instr({where}, ?) > 0", [needle]
    if len(needle) < MIN_TRIGRAM:
        return (
            f"SELECT {select} FROM message_text WHERE {folder} AND {test}",
            [mailbox_id, *args],
        )
    return (
        f"SELECT {select} FROM message_text"
        f" WHERE message_text MATCH ? AND {folder_filter} AND {test}",
        [trigram_query(needle), mailbox_id, *args],
    )


def text_ids(con: sqlite3.Connection, mailbox_id: int, needle: str, where: str) -> set[int]:
    """Ids (messages.id) of the messages whose column(s) `where` contain `needle`
    (already folded), in the folder `mailbox_id`."""
    sql, args = match_sql(needle, where, mailbox_id)
    return {r[0] for r in con.execute(sql, args)}


def header_ids(con: sqlite3.Connection, mailbox_id: int, field: str, needle: str) -> set[int]:
    """Ids of the messages that have a header field `field` whose value contains
    `needle` (both folded); with an empty needle, those that have the field
    (RFC 9051 6.4.4 HEADER)."""
    prefix = field + ": "
    probe = needle if len(needle) >= MIN_TRIGRAM else prefix
    sql, args = match_sql(probe, "headers", mailbox_id, "rowid, headers")
    found: set[int] = set()
    start = "\n" + prefix
    for rowid, text in con.execute(sql, args):
        text = "\n" + text
        pos = text.find(start)
        while pos >= 0:  # each line of the field (str.find: no split of every line)
            end = text.find("\n", pos + 1)
            if needle in text[pos + len(start) : end if end >= 0 else len(text)]:
                found.add(rowid)
                break
            pos = text.find(start, pos + 1)
    return found
