"""What IMAP (and later POP3 and the webmail) change in the store.

Folders (create, delete, rename, subscribe), flags, copy, move, expunge,
append, claiming new messages, and the post-delivery analysis. Every method
here runs on the store's writer thread (`await store.run(store.method, ...)`);
they are mixed into `Store`.

Every change bumps the folder's HIGHESTMODSEQ (RFC 7162) and calls
`self.notify(mailbox_id)`, so that sessions watching the folder (IDLE) learn
of it at once; the sessions then read what changed from the index.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..db import transaction
from . import headers, maildir, quota
from .analyze import analyze, fallback_text
from .health import DataGuard, StorageUnavailable

if TYPE_CHECKING:
    from ..auth.accounts import Account
    from .store import Mailbox

log = logging.getLogger(__name__)
ANALYSE_BATCH = 32


class StoreError(Exception):
    """A refused change. `code` is the IMAP response code that fits (RFC 5530)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class FlagChange:
    uid: int
    flags: list[str]
    modseq: int


class MailboxOps:
    # Provided by Store.
    wcon: sqlite3.Connection
    _mailboxes: dict[tuple[int, str], Mailbox]
    notify: Callable[[int], None] | None
    _to_notify: set[int]
    on_junk_verdict: Callable[[int, list[Path], bool], None] | None
    guard: DataGuard | None

    def _mailbox(self, account: Account, name: str, special_use: str | None = None) -> Mailbox:
        raise NotImplementedError

    def account_dir(self, account: Account) -> Path:
        raise NotImplementedError

    def ensure_account(self, account: Account, report: Any = None) -> None:
        raise NotImplementedError

    def _save_mailbox_row(self, mbox: Mailbox) -> None:
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------

    def _writable(self, freeing: bool = False) -> None:
        """Refuse a change while the data disk is gone, read-only or full
        (health.py: StorageUnavailable, NO [LIMIT] or [UNAVAILABLE] in IMAP).
        A change that frees space or takes none (flags, expunge, move: hard
        links) still goes ahead on a disk that is only full: the reserve is
        there for it, and it is how the user makes room."""
        if self.guard is None:
            return
        health = self.guard.check()
        if not health.ok and not (freeing and health.reason == "full"):
            raise StorageUnavailable(health)

    def _by_id(self, mailbox_id: int) -> Mailbox:
        for mbox in self._mailboxes.values():
            if mbox.id == mailbox_id:
                return mbox
        raise StoreError("NONEXISTENT", "No such mailbox")

    def _changed(self, mbox: Mailbox) -> None:
        """Record a change; sessions hear of it once the transaction is committed."""
        self._save_mailbox_row(mbox)
        self._to_notify.add(mbox.id)

    def _flush_notify(self) -> None:
        ids, self._to_notify = self._to_notify, set()
        if self.notify is not None:
            for mailbox_id in ids:
                self.notify(mailbox_id)

    def _exists(self, account: Account, name: str) -> bool:
        return (
            self.wcon.execute(
                "SELECT 1 FROM mailboxes WHERE account_id = ? AND name = ?", (account.id, name)
            ).fetchone()
            is not None
        )

    def open_mailbox(self, account: Account, name: str) -> Mailbox:
        """The folder called `name` (INBOX case-insensitively), if it exists."""
        self.ensure_account(account)
        if name.upper() == "INBOX":
            name = "INBOX"
        if not self._exists(account, name):
            raise StoreError("NONEXISTENT", f"No mailbox {name}")
        return self._mailbox(account, name)

    # -- folders -------------------------------------------------------------------

    def create_mailbox(self, account: Account, name: str, special_use: str | None = None) -> int:
        """RFC 9051 6.3.4: missing superior names are created too."""
        self._writable()
        self.ensure_account(account)
        if name.upper() == "INBOX" or self._exists(account, name):
            raise StoreError("ALREADYEXISTS", "Mailbox already exists")
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent.upper() != "INBOX" and not self._exists(account, parent):
                self._create_folder(account, parent, None)
        return self._create_folder(account, name, special_use).id

    def _create_folder(self, account: Account, name: str, special_use: str | None) -> Mailbox:
        path = self.account_dir(account) / maildir.folder_dirname(name)
        if path.exists():  # left over on disk without an index row: adopt it
            log.info("adopting folder on disk name=%r", name)
        maildir.make_folder(path)
        # Subscribing is the client's (RFC 9051 6.3.7): CREATE subscribes nothing.
        return self._mailbox(account, name, special_use)

    def delete_mailbox(self, account: Account, name: str) -> None:
        self._writable(freeing=True)
        mbox = self.open_mailbox(account, name)
        if mbox.name == "INBOX":
            raise StoreError("CANNOT", "INBOX cannot be deleted")
        # Out of the way atomically, then removed: a crash leaves only a hidden dir.
        doomed = mbox.path.with_name(f".~deleted-{int(time.time() * 1000)}")
        os.rename(mbox.path, doomed)
        with transaction(self.wcon):
            for table, column in (("message_text", "rowid"), ("message_cache", "message_id")):
                self.wcon.execute(
                    f"DELETE FROM {table} WHERE {column} IN"
                    " (SELECT id FROM messages WHERE mailbox_id = ?)",
                    (mbox.id,),
                )
            self.wcon.execute("DELETE FROM messages WHERE mailbox_id = ?", (mbox.id,))
            self.wcon.execute("DELETE FROM expunged WHERE mailbox_id = ?", (mbox.id,))
            self.wcon.execute("DELETE FROM mailboxes WHERE id = ?", (mbox.id,))
        del self._mailboxes[(account.id, mbox.name)]
        shutil.rmtree(doomed, ignore_errors=True)
        self._to_notify.add(mbox.id)

    def rename_mailbox(self, account: Account, old: str, new: str) -> None:
        self._writable()
        source = self.open_mailbox(account, old)
        if new.upper() == "INBOX" or self._exists(account, new):
            raise StoreError("ALREADYEXISTS", "Mailbox already exists")
        if source.name == "INBOX":
            self._rename_inbox(account, new)
            return
        parts = new.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent != old and parent.upper() != "INBOX" and not self._exists(account, parent):
                self._create_folder(account, parent, None)
        # The folder and its inferiors (RFC 9051 6.3.6), each a Maildir++ directory.
        names = [source.name] + [
            r[0]
            for r in self.wcon.execute(
                "SELECT name FROM mailboxes WHERE account_id = ? AND substr(name, 1, ?) = ?",
                (account.id, len(old) + 1, old + "/"),
            )
        ]
        root = self.account_dir(account)
        with transaction(self.wcon):
            for name in names:
                target = new + name[len(old) :]
                mbox = self._mailbox(account, name)
                new_path = root / maildir.folder_dirname(target)
                os.rename(mbox.path, new_path)
                # RFC 9051 6.3.6: renaming does not touch subscriptions (the
                # client moves them if it wants); nor does DELETE (6.3.7).
                self.wcon.execute("UPDATE mailboxes SET name = ? WHERE id = ?", (target, mbox.id))
                del self._mailboxes[(account.id, name)]
                mbox.name, mbox.path = target, new_path
                self._mailboxes[(account.id, target)] = mbox
        maildir.fsync_dir(root)

    def _rename_inbox(self, account: Account, new: str) -> None:
        """RFC 9051 6.3.6: renaming INBOX moves its messages to a new folder and
        leaves INBOX empty."""
        inbox = self._mailbox(account, "INBOX")
        target_id = self.create_mailbox(account, new)
        uids = [
            r[0]
            for r in self.wcon.execute("SELECT uid FROM messages WHERE mailbox_id = ?", (inbox.id,))
        ]
        self.move(inbox.id, uids, target_id)

    def subscribe(self, account: Account, name: str, on: bool) -> None:
        if on:
            self.wcon.execute(
                "INSERT OR IGNORE INTO subscriptions (account_id, name) VALUES (?, ?)",
                (account.id, name),
            )
        else:
            self.wcon.execute(
                "DELETE FROM subscriptions WHERE account_id = ? AND name = ?", (account.id, name)
            )

    # -- flags -----------------------------------------------------------------------

    def store_flags(
        self,
        mailbox_id: int,
        uids: list[int],
        mode: str,
        flags: list[str],
        unchangedsince: int | None = None,
    ) -> tuple[list[FlagChange], list[int]]:
        """STORE: mode '+', '-' or '=' (RFC 9051 6.4.6), with CONDSTORE's
        UNCHANGEDSINCE (RFC 7162 3.1.3). Returns (changes, uids that failed the
        UNCHANGEDSINCE test). All messages changed by one call share one MODSEQ."""
        self._writable(freeing=True)
        mbox = self._by_id(mailbox_id)
        rows = self._rows(mailbox_id, uids, "uid, subdir, filename, flags, modseq")
        mbox.highestmodseq += 1
        modseq = mbox.highestmodseq
        changes: list[FlagChange] = []
        failed: list[int] = []
        folder = str(mbox.path)
        updates = []
        for uid, sub, name, current_text, current_modseq in rows:
            if unchangedsince is not None and current_modseq > unchangedsince:
                failed.append(uid)
                continue
            current = current_text.split()
            if mode == "+":
                new = current + [f for f in flags if f not in current]
            elif mode == "-":
                new = [f for f in current if f not in flags]
            else:
                new = list(dict.fromkeys(flags))
            if set(new) == set(current):
                continue
            new_name = maildir.parse_name(name).with_letters(mbox.letters(new))
            if (sub, name) != ("cur", new_name):
                try:
                    # Plain strings: pathlib's joins cost more than the rename here.
                    os.rename(f"{folder}/{sub}/{name}", f"{folder}/cur/{new_name}")
                except FileNotFoundError:
                    continue  # expunged meanwhile by another tool; reconcile will see
            updates.append((new_name, " ".join(new), modseq, mailbox_id, uid))
            changes.append(FlagChange(uid, new, modseq))
        with transaction(self.wcon):
            self.wcon.executemany(
                "UPDATE messages SET subdir = 'cur', filename = ?, flags = ?, modseq = ?"
                " WHERE mailbox_id = ? AND uid = ?",
                updates,
            )
            if changes:
                self._changed(mbox)
            else:
                mbox.highestmodseq -= 1  # nothing changed: no new mod-sequence
        if mode in ("+", "=") and updates:
            # The keywords mail clients set when the user says junk or not junk
            # (Thunderbird, Apple Mail: $Junk / $NotJunk).
            for keyword, spam in (("$Junk", True), ("$NotJunk", False)):
                if any(f.lower() == keyword.lower() for f in flags):
                    self._learn(mbox.account_id, [mbox.path / "cur" / u[0] for u in updates], spam)
        return changes, failed

    def set_flags(self, mailbox_id: int, uid: int, flags: list[str]) -> int:
        """Replace one message's flags; returns the message's MODSEQ."""
        changes, _ = self.store_flags(mailbox_id, [uid], "=", flags)
        return changes[0].modseq if changes else self._by_id(mailbox_id).highestmodseq

    def claim_new(self, mailbox_id: int) -> list[int]:
        """Move messages from new/ to cur/ (a session has seen them arrive);
        returns their UIDs: the IMAP4rev1 \\Recent messages of that session.
        Nothing while the disk is unavailable (SELECT still works; they stay new)."""
        if self.guard is not None and not self.guard.check().ok:
            return []
        mbox = self._by_id(mailbox_id)
        rows = self.wcon.execute(
            "SELECT uid, filename FROM messages WHERE mailbox_id = ? AND subdir = 'new'",
            (mailbox_id,),
        ).fetchall()
        claimed, updates = [], []
        for uid, name in rows:
            new_name = maildir.parse_name(name).with_letters(maildir.parse_name(name).letters)
            try:
                os.rename(mbox.path / "new" / name, mbox.path / "cur" / new_name)
            except FileNotFoundError:
                continue
            claimed.append(uid)
            updates.append((new_name, mailbox_id, uid))
        with transaction(self.wcon):
            self.wcon.executemany(
                "UPDATE messages SET subdir = 'cur', filename = ? WHERE mailbox_id = ? AND uid = ?",
                updates,
            )
        return claimed

    # -- expunge, copy, move, append ---------------------------------------------------

    def expunge(self, mailbox_id: int, uids: list[int]) -> list[int]:
        """Remove messages for good. Returns the UIDs removed."""
        self._writable(freeing=True)
        mbox = self._by_id(mailbox_id)
        # RFC 9051 2.3.1.1: a UID is never reused. The index may be lost, so
        # the Maildir's state file must know UIDNEXT before the files go.
        if mbox.saved[0] != mbox.uidnext:
            maildir.write_state(mbox.path, mbox.state())
            mbox.saved = (mbox.uidnext, mbox.highestmodseq)
        rows = self._rows(mailbox_id, uids, "uid, subdir, filename, id")
        for _uid, sub, name, _id in rows:
            maildir.unlink_quietly(mbox.path / sub / name)
        for sub in ("cur", "new"):
            maildir.fsync_dir(mbox.path / sub)
        mbox.highestmodseq += 1
        with transaction(self.wcon):
            self.wcon.executemany(
                "DELETE FROM message_text WHERE rowid = ?", [(r[3],) for r in rows]
            )
            self.wcon.executemany(
                "DELETE FROM message_cache WHERE message_id = ?", [(r[3],) for r in rows]
            )
            self.wcon.executemany(
                "DELETE FROM messages WHERE mailbox_id = ? AND uid = ?",
                [(mailbox_id, r[0]) for r in rows],
            )
            self.wcon.executemany(
                "INSERT OR REPLACE INTO expunged (mailbox_id, uid, modseq) VALUES (?, ?, ?)",
                [(mailbox_id, r[0], mbox.highestmodseq) for r in rows],
            )
            self._changed(mbox)
        return [r[0] for r in rows]

    def copy(
        self, mailbox_id: int, uids: list[int], target_id: int, quota_bytes: int = 0
    ) -> tuple[int, list[tuple[int, int]]]:
        """COPY (RFC 9051 6.4.7): hard links into the target's cur/. Returns the
        target's UIDVALIDITY and (source UID, new UID) pairs for COPYUID (RFC 4315).
        With `quota_bytes` (the account's limit), nothing is copied if the copies
        would take the account over it (StoreError OVERQUOTA, quota.py)."""
        self._writable()
        return self._copy(mailbox_id, uids, target_id, quota_bytes)

    def _copy(
        self, mailbox_id: int, uids: list[int], target_id: int, quota_bytes: int = 0
    ) -> tuple[int, list[tuple[int, int]]]:
        source, target = self._by_id(mailbox_id), self._by_id(target_id)
        rows = self._rows(
            mailbox_id,
            uids,
            "uid, subdir, filename, flags, internaldate, size, hdr_date, hdr_from, hdr_to,"
            " hdr_cc, hdr_subject, hdr_message_id, hdr_in_reply_to, analysed, id",
        )
        if rows:
            self._check_quota(target.account_id, quota_bytes, sum(row[5] for row in rows))
        pairs, inserts = [], []
        for row in rows:
            uid, sub, name, flags = row[0], row[1], row[2], row[3].split()
            new_uid = target.uidnext
            parsed = maildir.parse_name(name)
            base = parsed.base.split(",U=")[0].split(",S=")[0]
            new_name = maildir.new_name(base, row[5], new_uid) + f":2,{target.letters(flags)}"
            try:
                os.link(source.path / sub / name, target.path / "cur" / new_name)
            except FileNotFoundError:
                continue
            target.uidnext += 1
            pairs.append((uid, new_uid))
            inserts.append((new_uid, new_name, row))
        maildir.fsync_dir(target.path / "cur")
        target.highestmodseq += 1
        with transaction(self.wcon):
            for new_uid, new_name, row in inserts:
                cur = self.wcon.execute(
                    "INSERT INTO messages (mailbox_id, uid, subdir, filename, flags, modseq,"
                    " internaldate, size, hdr_date, hdr_from, hdr_to, hdr_cc, hdr_subject,"
                    " hdr_message_id, hdr_in_reply_to, analysed)"
                    " VALUES (?, ?, 'cur', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (target.id, new_uid, new_name, row[3], target.highestmodseq, *row[4:14]),
                )
                new_id, old_id = cur.lastrowid, row[14]
                self.wcon.execute(
                    "INSERT INTO message_cache (message_id, structure, envelope, bodystructure)"
                    " SELECT ?, structure, envelope, bodystructure FROM message_cache"
                    " WHERE message_id = ?",
                    (new_id, old_id),
                )
                self.wcon.execute(
                    "INSERT INTO message_text (rowid, headers, body)"
                    " SELECT ?, headers, body FROM message_text WHERE rowid = ?",
                    (new_id, old_id),
                )
            self._changed(target)
        junk = self._special_use(target.id) == "\\Junk"
        was_junk = self._special_use(source.id) == "\\Junk"
        if junk != was_junk and self._special_use(target.id) != "\\Trash":
            # Into Junk: "this is spam"; out of Junk (not to Trash): "this is not".
            files = [target.path / "cur" / new_name for _uid, new_name, _row in inserts]
            self._learn(target.account_id, files, spam=junk)
        return target.uidvalidity, pairs

    def _special_use(self, mailbox_id: int) -> str | None:
        row = self.wcon.execute(
            "SELECT special_use FROM mailboxes WHERE id = ?", (mailbox_id,)
        ).fetchone()
        return row[0] if row else None

    def _learn(self, account_id: int, files: list[Path], spam: bool) -> None:
        """Tell whoever listens (the spam filter, app.py) what the user said by
        moving messages. Never fails the user's command."""
        listener = self.on_junk_verdict
        if listener is None or not files:
            return
        try:
            listener(account_id, files, spam)
        except Exception:
            log.exception("junk verdict listener failed account=%d", account_id)

    def move(
        self, mailbox_id: int, uids: list[int], target_id: int
    ) -> tuple[int, list[tuple[int, int]]]:
        """MOVE (RFC 6851): copy, then expunge the originals. Never refused for
        quota: the account's usage does not change (quota.py), nor for a full
        disk: hard links take no room (and a delete is a MOVE to Trash)."""
        self._writable(freeing=True)
        uidvalidity, pairs = self._copy(mailbox_id, uids, target_id)
        self.expunge(mailbox_id, [src for src, _ in pairs])
        return uidvalidity, pairs

    def append(
        self,
        mailbox_id: int,
        data: bytes,
        flags: list[str],
        internaldate: float | None = None,
        quota_bytes: int = 0,
    ) -> tuple[int, int]:
        """APPEND (RFC 9051 6.3.12): durable before it returns. Returns
        (UIDVALIDITY, UID) for APPENDUID (RFC 4315). With `quota_bytes` (the
        account's limit): StoreError OVERQUOTA if the message would take the
        account over it."""
        self._writable()
        mbox = self._by_id(mailbox_id)
        self._check_quota(mbox.account_id, quota_bytes, len(data))
        base = maildir.unique_base()
        tmp = mbox.path / "tmp" / base
        maildir.write_new(tmp, data)
        when = internaldate if internaldate is not None else time.time()
        os.utime(tmp, (when, when))
        uid = mbox.uidnext
        name = maildir.new_name(base, len(data), uid) + f":2,{mbox.letters(flags)}"
        os.link(tmp, mbox.path / "cur" / name)
        maildir.fsync_dir(mbox.path / "cur")
        os.unlink(tmp)
        mbox.uidnext += 1
        mbox.highestmodseq += 1
        try:
            with transaction(self.wcon):
                message_id = self._insert_row(
                    mbox, uid, "cur", name, flags, int(when), len(data), data
                )
                self._store_analysis(message_id, data)
                self._changed(mbox)
        except BaseException:
            # The client hears NO: the message must not be there either (Maildir
            # is the truth, and the next reindex would bring it back). Its UID
            # stays used.
            (mbox.path / "cur" / name).unlink(missing_ok=True)
            maildir.fsync_dir(mbox.path / "cur")
            raise
        return mbox.uidvalidity, uid

    def _check_quota(self, account_id: int, quota_bytes: int, size: int) -> None:
        """RFC 9208 4.3.1, RFC 9051 7.1: OVERQUOTA when the account would end over
        its limit. Here, on the writer thread, the check and the write are one step."""
        if quota_bytes <= 0:
            return
        used = quota.usage(self.wcon, account_id)
        if not quota.Quota(used, quota_bytes).fits(size):
            log.info("quota refused account=%d used=%d size=%d limit=%d",
                     account_id, used, size, quota_bytes)  # fmt: skip
            raise StoreError("OVERQUOTA", "Quota exceeded (mailbox full)")

    def _insert_row(
        self,
        mbox: Mailbox,
        uid: int,
        sub: str,
        name: str,
        flags: list[str],
        internaldate: int,
        size: int,
        head: bytes,
    ) -> int:
        columns = headers.index_columns(head)
        cur = self.wcon.execute(
            "INSERT OR REPLACE INTO messages (mailbox_id, uid, subdir, filename, flags, modseq,"
            " internaldate, size, hdr_date, hdr_from, hdr_to, hdr_cc, hdr_subject,"
            " hdr_message_id, hdr_in_reply_to) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                mbox.id,
                uid,
                sub,
                name,
                " ".join(flags),
                mbox.highestmodseq,
                internaldate,
                size,
                *(columns[c] for c in headers.INDEXED.values()),
            ),
        )
        return cur.lastrowid or 0

    def _rows(self, mailbox_id: int, uids: list[int], columns: str) -> list[tuple]:
        out: list[tuple] = []
        for i in range(0, len(uids), 500):
            chunk = uids[i : i + 500]
            out += self.wcon.execute(
                f"SELECT {columns} FROM messages WHERE mailbox_id = ?"
                f" AND uid IN ({','.join('?' * len(chunk))}) ORDER BY uid",
                (mailbox_id, *chunk),
            ).fetchall()
        return out

    # -- analysis (after the 250) ---------------------------------------------------------

    def _store_analysis(self, message_id: int, data: bytes) -> bool:
        """Cache the message's MIME analysis and index its text; analysed = 1.

        A message that cannot be analysed (whatever it holds) is indexed as
        well as the fallback can and marked analysed = 2: it is never retried
        in a loop, and its failure touches neither the batch it is in nor the
        command (APPEND) that stored it. Returns False then.

        Everything is computed before the first write, and each write is one
        statement: no savepoint, which would make FTS5 flush its pending
        terms to a new segment for every message (20x slower indexing)."""
        try:
            a = analyze(data)
        except Exception:  # any content: the message is served unanalysed
            log.exception("analysis failed message=%d", message_id)
            a = None
        try:
            if a is not None:
                self.wcon.execute(
                    "INSERT OR REPLACE INTO message_cache"
                    " (message_id, structure, envelope, bodystructure) VALUES (?, ?, ?, ?)",
                    (message_id, a.structure, a.envelope, a.bodystructure),
                )
                text = (a.headers, a.body)
            else:
                text = fallback_text(data)
            self.wcon.execute(
                "INSERT OR REPLACE INTO message_text (rowid, headers, body) VALUES (?, ?, ?)",
                (message_id, *text),
            )
        except Exception:
            log.exception("text index failed message=%d", message_id)
            a = None
        self.wcon.execute(
            "UPDATE messages SET analysed = ? WHERE id = ?", (1 if a else 2, message_id)
        )
        return a is not None

    def analyse_pending(self, limit: int = ANALYSE_BATCH, mailbox_id: int | None = None) -> int:
        """Analyse up to `limit` messages that lack it (new deliveries, a rebuilt
        index), in one mailbox or all. Returns how many; 0 when none is left."""
        where = "" if mailbox_id is None else f" AND m.mailbox_id = {int(mailbox_id)}"
        rows = self.wcon.execute(
            "SELECT m.id, m.mailbox_id, m.subdir, m.filename FROM messages m"
            f" WHERE m.analysed = 0{where} ORDER BY m.id LIMIT ?",
            (limit,),
        ).fetchall()
        done = 0
        with transaction(self.wcon):
            for message_id, mailbox_id, sub, name in rows:
                try:
                    mbox = self._by_id(mailbox_id)
                    data = (mbox.path / sub / name).read_bytes()
                except (StoreError, OSError):
                    # Gone, or a folder not loaded: mark it so it is not retried forever.
                    self.wcon.execute(
                        "UPDATE messages SET analysed = 2 WHERE id = ?", (message_id,)
                    )
                    continue
                self._store_analysis(message_id, data)
                done += 1
        return done
