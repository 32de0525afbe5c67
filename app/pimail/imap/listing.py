"""LIST, LSUB and STATUS (RFC 9051 6.3.9-6.3.11, RFC 5258 LIST-EXTENDED,
RFC 5819 LIST-STATUS, RFC 6154 SPECIAL-USE), and mailbox name rules.

The hierarchy delimiter is "/". Names are matched with the two wildcards of
RFC 9051 6.3.9: "*" matches anything, "%" anything but the delimiter. INBOX
matches case-insensitively.
"""

from __future__ import annotations

import re
import sqlite3
from typing import TYPE_CHECKING

from . import events as ev

if TYPE_CHECKING:
    from .session import Session

MAX_NAME = 255  # characters of a mailbox name
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def valid_new_name(name: str) -> str:
    """A name a client may create or rename to, or No. Wildcards, control
    characters, empty levels and "." / ".." levels are refused (the name
    becomes a directory on disk; maildir.folder_dirname escapes the rest)."""
    from .session import No

    if not name or len(name) > MAX_NAME:
        raise No("Mailbox name is empty or too long", "CANNOT")
    if _CONTROL.search(name) or "%" in name or "*" in name:
        raise No("Mailbox name has a wildcard or control character", "CANNOT")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise No("Mailbox name has an empty, '.' or '..' level", "CANNOT")
    if parts[0].upper() == "INBOX":
        parts[0] = "INBOX"
    return "/".join(parts)


def _pattern(text: str) -> re.Pattern[str]:
    out = []
    for c in text:
        if c == "*":
            out.append(".*")
        elif c == "%":
            out.append("[^/]*")
        else:
            out.append(re.escape(c))
    return re.compile("".join(out), re.DOTALL)


def _matches(patterns: list[re.Pattern[str]], name: str) -> bool:
    for p in patterns:
        if p.fullmatch(name):
            return True
        # INBOX is case-insensitive (RFC 9051 5.1), in patterns too.
        inbox = name == "INBOX" or name.startswith("INBOX/")
        if inbox and p.pattern.upper().startswith("INBOX") and re.fullmatch(p.pattern, name, re.I):
            return True
    return False


def _mailboxes(con: sqlite3.Connection, account_id: int) -> tuple[list[tuple], set[str]]:
    boxes = con.execute(
        "SELECT id, name, special_use, uidvalidity FROM mailboxes WHERE account_id = ?"
        " ORDER BY name",
        (account_id,),
    ).fetchall()
    subscribed = {
        r[0]
        for r in con.execute("SELECT name FROM subscriptions WHERE account_id = ?", (account_id,))
    }
    return boxes, subscribed


async def handle_list(s: Session, c: ev.List) -> None:
    if len(c.patterns) == 1 and c.patterns[0] == "" and not c.selection:
        # RFC 9051 6.3.9: an empty pattern asks for the delimiter and root.
        s.send('* LIST (\\Noselect) "/" ""\r\n')
        return
    boxes, subscribed = await s.ctx.reader.run(_mailboxes, s.me.id)
    patterns = [_pattern(c.reference + p) for p in c.patterns]
    names = {b[1] for b in boxes}
    special = {b[1]: b[2] for b in boxes}
    selection = {x.upper() for x in c.selection}
    returns = {x.upper() for x in c.return_options}
    want_subscribed = "SUBSCRIBED" in selection or "SUBSCRIBED" in returns
    # RFC 9051 6.3.9: "If the '%' wildcard is the last character of a mailbox
    # name argument, matching levels of hierarchy are also returned", \Noselect
    # when they are no mailbox (a deleted parent: 6.3.5's second example).
    levels = [_pattern(c.reference + p) for p in c.patterns if p.endswith("%")]
    implied = {n[:i] for n in names for i, ch in enumerate(n) if ch == "/"} - names
    implied = {n for n in implied if _matches(levels, n)} if levels else set()
    candidates = sorted(names | implied | (subscribed if "SUBSCRIBED" in selection else set()))
    all_names = names | subscribed
    for name in candidates:
        if not _matches(patterns, name):
            continue
        exists = name in names
        if "SUBSCRIBED" in selection and name not in subscribed:
            continue
        if "SPECIAL-USE" in selection and not special.get(name):
            continue
        attrs = []
        if name in implied:
            attrs += ["\\Noselect", "\\HasChildren"]
        elif not exists:
            attrs.append("\\NonExistent")
        else:
            has_children = any(n.startswith(name + "/") for n in all_names)
            attrs.append("\\HasChildren" if has_children else "\\HasNoChildren")
            if special.get(name):
                attrs.append(special[name])
        if want_subscribed and name in subscribed:
            attrs.append("\\Subscribed")
        line = f'* LIST ({" ".join(attrs)}) "/" '.encode() + s.quote_mailbox(name)
        s.send(line + b"\r\n")
        if c.status_items and exists:
            box = next(b for b in boxes if b[1] == name)
            items = await mailbox_status(s, box[0], box[3], c.status_items)
            text = " ".join(f"{k} {v}" for k, v in items)
            s.send(b"* STATUS " + s.quote_mailbox(name) + f" ({text})\r\n".encode())
    if "RECURSIVEMATCH" in selection and "SUBSCRIBED" in selection:
        # RFC 5258 3.5: parents whose children are subscribed, themselves not.
        for name in sorted(names):
            if name in subscribed or not _matches(patterns, name):
                continue
            if any(n.startswith(name + "/") for n in subscribed):
                line = b'* LIST () "/" ' + s.quote_mailbox(name)
                s.send(line + b' ("CHILDINFO" ("SUBSCRIBED"))\r\n')


async def handle_lsub(s: Session, c: ev.Lsub) -> None:
    boxes, subscribed = await s.ctx.reader.run(_mailboxes, s.me.id)
    names = {b[1] for b in boxes}
    patterns = [_pattern(c.reference + c.pattern)]
    for name in sorted(subscribed):
        if _matches(patterns, name):
            attrs = "" if name in names else "\\Noselect"
            s.send(f'* LSUB ({attrs}) "/" '.encode() + s.quote_mailbox(name) + b"\r\n")


async def mailbox_status(
    s: Session, mailbox_id: int, uidvalidity: int, items: tuple[str, ...]
) -> list[tuple[str, int]]:
    """STATUS (RFC 9051 6.3.10) of one mailbox, RECENT from the in-memory mark
    (RFC 3501 6.3.10: the messages the next session to select it will see \\Recent)."""
    values = await s.ctx.reader.run(status_items, mailbox_id, items)
    if any(k == "RECENT" for k, _ in values):
        mark = await s.ctx.views.recent(mailbox_id, uidvalidity)
        recent = await s.ctx.reader.run(
            _count_recent, mailbox_id, mark.mark, sorted(mark.unclaimed)
        )
        values = [(k, recent if k == "RECENT" else v) for k, v in values]
    return values


def _count_recent(con: sqlite3.Connection, mailbox_id: int, mark: int, unclaimed: list[int]) -> int:
    count = con.execute(
        "SELECT count(*) FROM messages WHERE mailbox_id = ? AND uid > ?", (mailbox_id, mark)
    ).fetchone()[0]
    for i in range(0, len(unclaimed), 500):
        chunk = unclaimed[i : i + 500]
        count += con.execute(
            f"SELECT count(*) FROM messages WHERE mailbox_id = ? AND uid <= ? AND uid IN"
            f" ({','.join('?' * len(chunk))})",
            (mailbox_id, mark, *chunk),
        ).fetchone()[0]
    return count


def status_items(
    con: sqlite3.Connection, mailbox_id: int, items: tuple[str, ...]
) -> list[tuple[str, int]]:
    row = con.execute(
        "SELECT count(*), coalesce(sum(size), 0),"
        " coalesce(sum((' ' || flags || ' ') NOT LIKE '% \\Seen %'), 0),"
        " coalesce(sum((' ' || flags || ' ') LIKE '% \\Deleted %'), 0),"
        " coalesce(sum(subdir = 'new'), 0),"
        " coalesce(sum(CASE WHEN (' ' || flags || ' ') LIKE '% \\Deleted %' THEN size END), 0)"
        " FROM messages WHERE mailbox_id = ?",
        (mailbox_id,),
    ).fetchone()
    box = con.execute(
        "SELECT uidnext, uidvalidity, highestmodseq FROM mailboxes WHERE id = ?", (mailbox_id,)
    ).fetchone()
    values = {
        "MESSAGES": row[0],
        "SIZE": row[1],
        "UNSEEN": row[2],
        "DELETED": row[3],
        "RECENT": row[4],
        "UIDNEXT": box[0],
        "UIDVALIDITY": box[1],
        "HIGHESTMODSEQ": box[2],
        # RFC 9208 4.1.4: what EXPUNGE would free, the RFC822.SIZEs of the
        # \Deleted messages (exact here: the size is what is stored).
        "DELETED-STORAGE": row[5],
    }
    return [(item.upper(), values[item.upper()]) for item in items if item.upper() in values]
