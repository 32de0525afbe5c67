"""The webmail's reads of the index (web/mail.py's pages): folders with their
counts, one folder's page of messages sorted and searched, one message's row.

Functions of a read-only SQLite connection, run on an IndexReader thread
(imap/views.py); every query names the account, so a folder or message of
another account is simply not found. Search uses the text index the store
fills after delivery (`message_text`, store/textindex.py: a string anywhere in
the headers or the body, case-insensitively, as IMAP SEARCH TEXT does).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from ..store import textindex
from ..store.analyze import decode_words

log = logging.getLogger(__name__)

PAGE_SIZE = 50
SORTS = ("date", "from", "subject", "size")
FOLDER_ORDER = {"\\Drafts": 1, "\\Sent": 2, "\\Archive": 3, "\\Junk": 4, "\\Trash": 5}
_PREFIX = re.compile(r"^\s*((re|fwd?|aw|sv|wg)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)


@dataclass
class Folder:
    id: int
    name: str
    special_use: str | None
    total: int = 0
    unseen: int = 0

    @property
    def label(self) -> str:
        return "Inbox" if self.name == "INBOX" else self.name

    @property
    def correspondent(self) -> str:
        """Whom the list shows: the sender, or in Sent and Drafts the recipient."""
        return "to" if self.special_use in ("\\Sent", "\\Drafts") else "from"


@dataclass
class MessageRow:
    folder: Folder
    uid: int
    subdir: str
    filename: str
    flags: list[str]
    uidvalidity: int


def folders(con: Any, account_id: int) -> list[Folder]:
    folders = {
        r[0]: Folder(r[0], r[1], r[2])
        for r in con.execute(
            "SELECT id, name, special_use FROM mailboxes WHERE account_id = ?", (account_id,)
        )
    }
    if folders:
        marks = ",".join("?" * len(folders))
        for mailbox_id, total, unseen in con.execute(
            "SELECT mailbox_id, COUNT(*), SUM(instr(flags, '\\Seen') = 0) FROM messages"
            f" WHERE mailbox_id IN ({marks}) GROUP BY mailbox_id",
            tuple(folders),
        ):
            folders[mailbox_id].total, folders[mailbox_id].unseen = total, unseen or 0
    return sorted(
        folders.values(),
        key=lambda f: (
            f.name != "INBOX",
            FOLDER_ORDER.get(f.special_use or "", 9),
            f.name.lower(),
        ),
    )


def folder(con: Any, account_id: int, folder_id: int) -> Folder | None:
    row = con.execute(
        "SELECT id, name, special_use FROM mailboxes WHERE id = ? AND account_id = ?",
        (folder_id, account_id),
    ).fetchone()
    return Folder(*row) if row else None


def special(con: Any, account_id: int, special_use: str) -> Folder | None:
    row = con.execute(
        "SELECT id, name, special_use FROM mailboxes WHERE account_id = ? AND special_use = ?"
        " ORDER BY id LIMIT 1",
        (account_id, special_use),
    ).fetchone()
    if row is None and special_use == "INBOX":
        row = con.execute(
            "SELECT id, name, special_use FROM mailboxes WHERE account_id = ? AND name = 'INBOX'",
            (account_id,),
        ).fetchone()
    return Folder(*row) if row else None


def message(con: Any, account_id: int, folder_id: int, uid: int) -> MessageRow | None:
    row = con.execute(
        "SELECT b.id, b.name, b.special_use, b.uidvalidity, m.uid, m.subdir, m.filename, m.flags"
        " FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id"
        " WHERE b.id = ? AND b.account_id = ? AND m.uid = ?",
        (folder_id, account_id, uid),
    ).fetchone()
    if row is None:
        return None
    folder = Folder(row[0], row[1], row[2])
    return MessageRow(folder, row[4], row[5], row[6], row[7].split(), row[3])


def _from_key(value: str | None) -> str:
    """Sort key of a From/To value: the display name, else the address."""
    if not value:
        return ""
    if "=?" in value:
        value = decode_words(value)
    name, _, rest = value.partition("<")
    name = name.strip().strip('"').strip()
    return (name or rest.rstrip(">").strip() or value).lower()


def _subject_key(value: str | None) -> str:
    if not value:
        return ""
    if "=?" in value:
        value = decode_words(value)
    return _PREFIX.sub("", value).strip().lower()


@dataclass
class ListRow:
    uid: int
    flags: list[str]
    internaldate: int
    size: int
    who: str
    subject: str

    @property
    def seen(self) -> bool:
        return "\\Seen" in self.flags

    @property
    def flagged(self) -> bool:
        return "\\Flagged" in self.flags


def page(
    con: Any, folder: Folder, sort: str, descending: bool, page: int, query: str | None
) -> tuple[int, list[ListRow]]:
    """(messages in the folder matching `query`, the rows of page `page`)."""
    con.create_function("pimail_from_key", 1, _from_key, deterministic=True)
    con.create_function("pimail_subject_key", 1, _subject_key, deterministic=True)
    column = "hdr_to" if folder.correspondent == "to" else "hdr_from"
    order = {
        "date": "internaldate",
        "size": "size",
        "from": f"pimail_from_key({column})",
        "subject": "pimail_subject_key(hdr_subject)",
    }[sort]
    direction = "DESC" if descending else "ASC"
    where = "mailbox_id = ?"
    args: list[Any] = [folder.id]
    if query is not None:
        # The text index (store/textindex.py): `query` (folded) anywhere in the
        # headers or the body, as IMAP SEARCH TEXT.
        sql, text_args = textindex.match_sql(query, "text", folder.id)
        where += f" AND id IN ({sql})"
        args += text_args
    try:
        total = con.execute(f"SELECT COUNT(*) FROM messages WHERE {where}", args).fetchone()[0]
        rows = con.execute(
            f"SELECT uid, flags, internaldate, size, {column}, hdr_subject FROM messages"
            f" WHERE {where} ORDER BY {order} {direction}, uid {direction} LIMIT ? OFFSET ?",
            (*args, PAGE_SIZE, (page - 1) * PAGE_SIZE),
        ).fetchall()
    except Exception as e:  # an FTS query SQLite cannot take matches nothing
        if query is None:
            raise
        log.info("search failed query=%r error=%s", query[:100], e)
        return 0, []
    return total, [
        ListRow(r[0], r[1].split(), r[2], r[3], _who(r[4]), _subject(r[5])) for r in rows
    ]


def _who(value: str | None) -> str:
    if not value:
        return ""
    text = decode_words(value) if "=?" in value else value
    name, _, rest = text.partition("<")
    name = name.strip().strip('"').strip()
    return (name or rest.rstrip(">").strip() or text)[:200]


def _subject(value: str | None) -> str:
    if not value:
        return ""
    return (decode_words(value) if "=?" in value else value)[:300]


def folder_named(con: Any, account_id: int, name: str) -> Folder | None:
    row = con.execute(
        "SELECT id, name, special_use FROM mailboxes WHERE account_id = ? AND name = ?",
        (account_id, name),
    ).fetchone()
    return Folder(*row) if row else None
