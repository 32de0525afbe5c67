"""The mail store: Maildirs (the truth) and the SQLite index (derived).

Everything that changes Maildirs or the index runs on one writer thread, in
order: deliveries, flag changes, folder creation, reconciliation. That makes
UID allocation race-free without locks and lets deliveries share fsyncs.

Delivery is a group commit. SMTP sessions hand messages in; the writer takes
every message waiting and, for the whole batch:

1. writes each message to its spool file and fsyncs it;
2. hard-links it into each recipient's `new/` under a name carrying its UID;
3. fsyncs each `new/` directory once;
4. records the messages in the index in one transaction;

and only then are the sessions answered. A crash anywhere before step 3 ends
loses only unanswered messages; a crash after it leaves files the index does
not know yet, and `reconcile()` at the next start adds them. An index that is
missing or corrupt is rebuilt from the Maildirs with the same UIDs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .. import db
from ..auth.accounts import Account, Directory
from ..config import Settings
from . import headers, maildir
from .spool import Incoming, clean_spool

log = logging.getLogger(__name__)
T = TypeVar("T")

# RFC 6154 special-use folders every account gets.
STANDARD_FOLDERS = {
    "INBOX": None,
    "Drafts": "\\Drafts",
    "Sent": "\\Sent",
    "Junk": "\\Junk",
    "Trash": "\\Trash",
    "Archive": "\\Archive",
}
MAX_BATCH = 256


@dataclass
class Mailbox:
    """The writer's view of one folder. Only the writer thread touches these."""

    id: int
    account_id: int
    name: str
    path: Path
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    saved: tuple[int, int] = (0, 0)  # (uidnext, highestmodseq) last written to the state file

    def state(self) -> maildir.FolderState:
        return maildir.FolderState(self.uidvalidity, self.uidnext, self.highestmodseq)


@dataclass
class Placement:
    """Where a delivered message landed."""

    account_id: int
    mailbox_id: int
    uid: int
    path: Path


@dataclass
class _Delivery:
    message: Incoming
    accounts: list[Account]
    future: asyncio.Future[list[Placement]]
    placements: list[Placement] = field(default_factory=list)
    error: BaseException | None = None


@dataclass
class ReconcileReport:
    mailboxes: int = 0
    added: int = 0
    removed: int = 0
    updated: int = 0
    renamed: int = 0
    rebuilt: bool = False


class Store:
    def __init__(self, settings: Settings, directory: Directory) -> None:
        self.settings = settings
        self.directory = directory
        self.mail_dir = settings.mail_dir
        self.incoming_dir = settings.spool_dir / "incoming"
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._wcon: sqlite3.Connection | None = None
        self._mailboxes: dict[tuple[int, str], Mailbox] = {}
        self._ready_accounts: set[int] = set()
        self._pending: list[_Delivery] = []
        self._wakeup: asyncio.Event | None = None
        self._committer: asyncio.Task[None] | None = None
        self._last_uidvalidity = 0
        self.batches = 0  # statistics: how many group commits
        self.batched = 0  # and how many messages they carried

    # -- opening, closing ---------------------------------------------------

    def open(self) -> ReconcileReport:
        """Open the index (rebuilding it if missing or corrupt), clean the spool,
        and bring the index in line with every account's Maildir."""
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        removed = clean_spool(self.incoming_dir)
        if removed:
            log.info("spool cleaned removed=%d (never acknowledged)", removed)
        self.incoming_dir.mkdir(parents=True, exist_ok=True)
        rebuilt = not self.settings.index_path.exists()
        try:
            self._wcon = db.open_index(self.settings.index_path)
            ok = self._wcon.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(ok)
        except sqlite3.DatabaseError as e:
            log.error("index unreadable error=%r: moving it aside and rebuilding", str(e))
            if self._wcon is not None:
                self._wcon.close()
            self._move_index_aside()
            self._wcon = db.open_index(self.settings.index_path)
            rebuilt = True
        report = self._reconcile_all()
        report.rebuilt = rebuilt
        return report

    def _move_index_aside(self) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{self.settings.index_path}{suffix}")
            if path.exists():
                path.rename(f"{path}.corrupt-{stamp}")

    def close(self) -> None:
        """Persist UID/modseq bounds and stop the writer."""
        if self._wcon is None:
            return  # closed already
        if self._committer is not None:
            self._committer.cancel()
        self._writer.submit(self._save_states).result()
        self._writer.shutdown(wait=True)
        if self._wcon is not None:
            self._wcon.close()
            self._wcon = None

    async def aclose(self) -> None:
        """Finish pending deliveries, then close."""
        while self._pending:
            await asyncio.sleep(0.01)
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def _save_states(self) -> None:
        for mbox in self._mailboxes.values():
            if mbox.saved != (mbox.uidnext, mbox.highestmodseq) and mbox.path.is_dir():
                maildir.write_state(mbox.path, mbox.state())
                mbox.saved = (mbox.uidnext, mbox.highestmodseq)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the writer thread, after everything queued before it."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    @property
    def wcon(self) -> sqlite3.Connection:
        assert self._wcon is not None, "Store.open() first"
        return self._wcon

    # -- accounts and folders -----------------------------------------------

    def account_dir(self, account: Account) -> Path:
        return self.mail_dir / account.domain / account.localpart

    def ensure_account(self, account: Account, report: ReconcileReport | None = None) -> None:
        """Create the account's Maildir and standard folders if needed, and make
        sure the index agrees with what is on disk. Writer thread only."""
        if account.id in self._ready_accounts:
            return
        root = self.account_dir(account)
        for name, special_use in STANDARD_FOLDERS.items():
            folder = root / maildir.folder_dirname(name)
            maildir.make_folder(folder)
            self._mailbox(account, name, special_use)
        self._reconcile_account(account, report or ReconcileReport())
        self._ready_accounts.add(account.id)

    def _mailbox(self, account: Account, name: str, special_use: str | None = None) -> Mailbox:
        key = (account.id, name)
        mbox = self._mailboxes.get(key)
        if mbox is not None:
            return mbox
        path = self.account_dir(account) / maildir.folder_dirname(name)
        row = self.wcon.execute(
            "SELECT id, uidvalidity, uidnext, highestmodseq FROM mailboxes"
            " WHERE account_id = ? AND name = ?",
            (account.id, name),
        ).fetchone()
        state = maildir.read_state(path)
        if row is not None and (state is None or state.uidvalidity == row[1]):
            mbox = Mailbox(row[0], account.id, name, path, row[1], row[2], row[3])
            if state is not None:  # the file's bounds win if they are ahead
                mbox.uidnext = max(mbox.uidnext, state.uidnext)
                mbox.highestmodseq = max(mbox.highestmodseq, state.highestmodseq)
                mbox.saved = (state.uidnext, state.highestmodseq)
        else:
            if row is not None:
                # The folder on disk was replaced: its UIDVALIDITY wins.
                self.wcon.execute("DELETE FROM mailboxes WHERE id = ?", (row[0],))
            if state is None:
                state = maildir.FolderState(self._new_uidvalidity(), 1, 1)
                maildir.make_folder(path)
                maildir.write_state(path, state)
                highestmodseq = 1
            else:
                # Rebuilding from disk. Mod-sequences must not go backwards for a
                # client that remembers one (RFC 7162 3.1.2): jump past anything
                # handed out before, using the clock in milliseconds as a floor.
                highestmodseq = max(state.highestmodseq + 1, int(time.time() * 1000))
            cur = self.wcon.execute(
                "INSERT INTO mailboxes (account_id, name, uidvalidity, uidnext, highestmodseq,"
                " special_use) VALUES (?, ?, ?, ?, ?, ?)",
                (account.id, name, state.uidvalidity, state.uidnext, highestmodseq, special_use),
            )
            mbox = Mailbox(
                cur.lastrowid or 0,
                account.id,
                name,
                path,
                state.uidvalidity,
                state.uidnext,
                highestmodseq,
                saved=(state.uidnext, state.highestmodseq),
            )
        self._mailboxes[key] = mbox
        return mbox

    def _new_uidvalidity(self) -> int:
        value = max(int(time.time()), self._last_uidvalidity + 1)
        self._last_uidvalidity = value
        return value

    # -- reconciliation -------------------------------------------------------

    def _reconcile_all(self) -> ReconcileReport:
        report = ReconcileReport()
        accounts = self.directory.accounts()
        known = {a.id for a in accounts}
        stale = [
            r[0]
            for r in self.wcon.execute("SELECT DISTINCT account_id FROM mailboxes")
            if r[0] not in known
        ]
        for account_id in stale:  # accounts removed from the directory
            self.wcon.execute("DELETE FROM mailboxes WHERE account_id = ?", (account_id,))
        for account in accounts:
            self._ready_accounts.discard(account.id)
            self.ensure_account(account, report)
        return report

    def reconcile(self) -> ReconcileReport:
        """Bring the index in line with the Maildirs (writer thread, or before serving)."""
        self._ready_accounts.clear()
        return self._reconcile_all()

    def _reconcile_account(self, account: Account, report: ReconcileReport) -> None:
        root = self.account_dir(account)
        if not root.is_dir():
            return
        names = ["INBOX"]
        for entry in sorted(os.listdir(root)):
            name = maildir.folder_name(entry)
            if name is not None and (root / entry / "cur").is_dir():
                names.append(name)
        for name in names:
            mbox = self._mailbox(account, name, STANDARD_FOLDERS.get(name))
            self._sync_folder(mbox, report)
            report.mailboxes += 1

    def _sync_folder(self, mbox: Mailbox, report: ReconcileReport) -> None:
        on_disk: dict[int, tuple[str, str]] = {}
        unnamed: list[tuple[str, str]] = []
        for sub in ("new", "cur"):
            for name in os.listdir(mbox.path / sub):
                if name.startswith("."):
                    continue
                uid = maildir.parse_name(name).uid
                if uid is None or uid in on_disk or uid >= 2**32:
                    unnamed.append((sub, name))
                else:
                    on_disk[uid] = (sub, name)
        indexed = {
            r[0]: (r[1], r[2], r[3])
            for r in self.wcon.execute(
                "SELECT uid, subdir, filename, flags FROM messages WHERE mailbox_id = ?",
                (mbox.id,),
            )
        }
        if on_disk:
            mbox.uidnext = max(mbox.uidnext, max(on_disk) + 1)
        with self.wcon:
            for uid in indexed.keys() - on_disk.keys():
                self.wcon.execute(
                    "DELETE FROM messages WHERE mailbox_id = ? AND uid = ?", (mbox.id, uid)
                )
                report.removed += 1
            for uid, (sub, name) in on_disk.items():
                known = indexed.get(uid)
                if known is None:
                    self._index_file(mbox, uid, sub, name)
                    report.added += 1
                elif (known[0], known[1]) != (sub, name):
                    keywords = [f for f in known[2].split() if f not in maildir.FLAG_LETTERS]
                    flags = maildir.parse_name(name).flags + keywords
                    mbox.highestmodseq += 1
                    self.wcon.execute(
                        "UPDATE messages SET subdir = ?, filename = ?, flags = ?, modseq = ?"
                        " WHERE mailbox_id = ? AND uid = ?",
                        (sub, name, " ".join(flags), mbox.highestmodseq, mbox.id, uid),
                    )
                    report.updated += 1
            for sub, name in unnamed:  # files dropped in by other tools: give them a UID
                parsed = maildir.parse_name(name)
                uid = mbox.uidnext
                new = maildir.new_name(
                    parsed.base.split(",U=")[0], self._size(mbox, sub, name), uid
                )
                if parsed.letters or sub == "cur":
                    new += f":2,{parsed.letters}"
                os.rename(mbox.path / sub / name, mbox.path / sub / new)
                mbox.uidnext += 1
                self._index_file(mbox, uid, sub, new)
                report.renamed += 1
            self._save_mailbox_row(mbox)

    def _size(self, mbox: Mailbox, sub: str, name: str) -> int:
        return os.stat(mbox.path / sub / name).st_size

    def _index_file(self, mbox: Mailbox, uid: int, sub: str, name: str) -> None:
        path = mbox.path / sub / name
        st = os.stat(path)
        with open(path, "rb") as f:
            head = f.read(headers.MAX_HEADER)
        mbox.highestmodseq += 1
        self._insert_message(
            mbox,
            uid,
            sub,
            name,
            maildir.parse_name(name).flags,
            mbox.highestmodseq,
            int(st.st_mtime),
            st.st_size,
            headers.index_columns(head),
        )

    def _insert_message(
        self,
        mbox: Mailbox,
        uid: int,
        sub: str,
        name: str,
        flags: list[str],
        modseq: int,
        internaldate: int,
        size: int,
        columns: dict[str, str | None],
    ) -> None:
        self.wcon.execute(
            "INSERT OR REPLACE INTO messages (mailbox_id, uid, subdir, filename, flags, modseq,"
            " internaldate, size, hdr_date, hdr_from, hdr_to, hdr_cc, hdr_subject,"
            " hdr_message_id, hdr_in_reply_to) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                mbox.id,
                uid,
                sub,
                name,
                " ".join(flags),
                modseq,
                internaldate,
                size,
                columns["hdr_date"],
                columns["hdr_from"],
                columns["hdr_to"],
                columns["hdr_cc"],
                columns["hdr_subject"],
                columns["hdr_message_id"],
                columns["hdr_in_reply_to"],
            ),
        )

    def _save_mailbox_row(self, mbox: Mailbox) -> None:
        self.wcon.execute(
            "UPDATE mailboxes SET uidnext = ?, highestmodseq = ? WHERE id = ?",
            (mbox.uidnext, mbox.highestmodseq, mbox.id),
        )

    # -- delivery (group commit) ---------------------------------------------

    async def deliver(self, message: Incoming, accounts: list[Account]) -> list[Placement]:
        """Deliver to each account's INBOX; returns once every copy is durable."""
        loop = asyncio.get_running_loop()
        committer = self._committer
        if self._wakeup is None or committer is None or committer.get_loop() is not loop:
            self._wakeup = asyncio.Event()
            self._committer = loop.create_task(self._commit_loop(), name="store-committer")
        future: asyncio.Future[list[Placement]] = loop.create_future()
        self._pending.append(_Delivery(message, accounts, future))
        self._wakeup.set()
        # shield: a client that goes away must not cancel a commit in flight.
        return await asyncio.shield(future)

    async def _commit_loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    await loop.run_in_executor(self._writer, self._commit, batch)
                except Exception as e:  # a bug or a dead disk: fail the batch, keep serving
                    log.exception("delivery batch failed")
                    for d in batch:
                        d.error = d.error or e
                for d in batch:
                    if d.future.done():
                        continue
                    if d.error is not None:
                        d.future.set_exception(d.error)
                    else:
                        d.future.set_result(d.placements)

    def _commit(self, batch: list[_Delivery]) -> None:
        self.batches += 1
        self.batched += len(batch)
        # 1. message data durable in the spool
        for d in batch:
            try:
                d.message.make_durable()
            except OSError as e:
                d.error = e
        live = [d for d in batch if d.error is None]
        # 2. a hard link per recipient, named with its UID
        new_dirs: set[Path] = set()
        for d in live:
            try:
                self._link(d, new_dirs)
            except OSError as e:
                d.error = e
                for p in d.placements:  # all or nothing for one message
                    _unlink_quietly(p.path)
                d.placements = []
        # 3. the directory entries durable: from here on, the message is delivered
        for path in new_dirs:
            maildir.fsync_dir(path)
        # 4. the index, in one transaction; a failure here loses nothing
        live = [d for d in batch if d.error is None]
        try:
            self._index_deliveries(live)
        except sqlite3.Error:
            log.exception("index update failed; the messages are on disk, reconciling")
            self._ready_accounts.clear()
        for d in batch:
            d.message.discard()

    def _link(self, d: _Delivery, new_dirs: set[Path]) -> None:
        spool_path = d.message.path
        assert spool_path is not None
        for account in d.accounts:
            self.ensure_account(account)
            mbox = self._mailbox(account, "INBOX")
            uid = mbox.uidnext
            target = mbox.path / "new" / maildir.new_name(d.message.base, d.message.size, uid)
            try:
                os.link(spool_path, target)
            except OSError as e:
                if e.errno != 18:  # EXDEV: spool on another filesystem; copy instead
                    raise
                _copy_durably(spool_path, target)
            mbox.uidnext = uid + 1
            d.placements.append(Placement(account.id, mbox.id, uid, target))
            new_dirs.add(target.parent)

    def _index_deliveries(self, live: list[_Delivery]) -> None:
        touched: dict[int, Mailbox] = {}
        with self.wcon:
            for d in live:
                columns = headers.index_columns(bytes(d.message.head))
                # INTERNALDATE is the file's mtime, so a rebuild finds the same value.
                internaldate = int(d.message.mtime)
                for p in d.placements:
                    mbox = self._mailboxes[(p.account_id, "INBOX")]
                    mbox.highestmodseq += 1
                    self._insert_message(
                        mbox,
                        p.uid,
                        "new",
                        p.path.name,
                        [],
                        mbox.highestmodseq,
                        internaldate,
                        d.message.size,
                        columns,
                    )
                    touched[mbox.id] = mbox
            for mbox in touched.values():
                self._save_mailbox_row(mbox)

    # -- flags ------------------------------------------------------------------

    def _by_id(self, mailbox_id: int) -> Mailbox:
        mbox = next((m for m in self._mailboxes.values() if m.id == mailbox_id), None)
        if mbox is None:
            raise KeyError(f"mailbox {mailbox_id} not open")
        return mbox

    def set_flags(self, mailbox_id: int, uid: int, flags: list[str]) -> int:
        """Replace a message's flags (writer thread). Renames the file into cur/
        with the new Maildir letters; returns the new MODSEQ."""
        mbox = self._by_id(mailbox_id)
        row = self.wcon.execute(
            "SELECT subdir, filename FROM messages WHERE mailbox_id = ? AND uid = ?",
            (mailbox_id, uid),
        ).fetchone()
        if row is None:
            raise KeyError(f"no message uid={uid}")
        parsed = maildir.parse_name(row[1])
        new_name = parsed.with_letters(maildir.letters_for(flags))
        if (row[0], row[1]) != ("cur", new_name):
            os.rename(mbox.path / row[0] / row[1], mbox.path / "cur" / new_name)
        mbox.highestmodseq += 1
        with self.wcon:
            self.wcon.execute(
                "UPDATE messages SET subdir = 'cur', filename = ?, flags = ?, modseq = ?"
                " WHERE mailbox_id = ? AND uid = ?",
                (new_name, " ".join(flags), mbox.highestmodseq, mailbox_id, uid),
            )
            self._save_mailbox_row(mbox)
        return mbox.highestmodseq

    def expunge(self, mailbox_id: int, uids: list[int]) -> list[int]:
        """Remove messages for good (writer thread). Returns the UIDs removed."""
        mbox = self._by_id(mailbox_id)
        # RFC 9051 2.3.1.1: a UID is never reused. The index may be lost, so
        # the Maildir's state file must know UIDNEXT before the files go.
        if mbox.saved[0] != mbox.uidnext:
            maildir.write_state(mbox.path, mbox.state())
            mbox.saved = (mbox.uidnext, mbox.highestmodseq)
        removed: list[int] = []
        for uid in uids:
            row = self.wcon.execute(
                "SELECT subdir, filename FROM messages WHERE mailbox_id = ? AND uid = ?",
                (mailbox_id, uid),
            ).fetchone()
            if row is None:
                continue
            _unlink_quietly(mbox.path / row[0] / row[1])
            removed.append(uid)
        for sub in ("cur", "new"):
            maildir.fsync_dir(mbox.path / sub)
        mbox.highestmodseq += 1
        with self.wcon:
            self.wcon.executemany(
                "DELETE FROM messages WHERE mailbox_id = ? AND uid = ?",
                [(mailbox_id, uid) for uid in removed],
            )
            self._save_mailbox_row(mbox)
        return removed


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _copy_durably(source: Path, target: Path) -> None:
    with open(source, "rb") as src, open(target, "xb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
