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
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .. import db
from ..auth.accounts import Account, Directory
from ..config import Settings
from ..db import transaction
from . import headers, maildir
from .health import DataGuard, Health, StorageUnavailable
from .ops import MailboxOps
from .quota import QuotaReader
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
# Seconds without a delivery before background analysis runs.
ANALYSE_QUIET = 0.1


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
    _keywords: list[str] | None = None

    @property
    def keywords(self) -> list[str]:
        if self._keywords is None:
            self._keywords = maildir.read_keywords(self.path)
        return self._keywords

    def flags_of(self, filename: str) -> list[str]:
        return maildir.flags_of(maildir.parse_name(filename).letters, self.keywords)

    def letters(self, flags: list[str]) -> str:
        """Maildir letters for `flags`, giving new keywords a letter while any
        is free (a keyword beyond 26 per folder lives in the index only)."""
        letters = [maildir.FLAG_LETTERS[f] for f in flags if f in maildir.FLAG_LETTERS]
        table = self.keywords
        grew = False
        for flag in flags:
            if flag in maildir.FLAG_LETTERS or flag.startswith("\\"):
                continue
            if flag not in table and len(table) < len(maildir.KEYWORD_LETTERS):
                table.append(flag)
                grew = True
            if flag in table:
                letters.append(maildir.KEYWORD_LETTERS[table.index(flag)])
        if grew:
            maildir.write_keywords(self.path, table)
        return "".join(sorted(set(letters)))

    def state(self) -> maildir.FolderState:
        return maildir.FolderState(self.uidvalidity, self.uidnext, self.highestmodseq)


@dataclass
class Placement:
    """Where a delivered message landed."""

    account_id: int
    mailbox_id: int
    uid: int
    path: Path
    folder: str = "INBOX"


@dataclass
class _Delivery:
    message: Incoming
    accounts: list[Account]
    future: asyncio.Future[list[Placement]]
    junk: frozenset[int] = frozenset()  # accounts whose copy goes to Junk
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


class Store(MailboxOps):
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
        # Called (on the writer thread) with a mailbox id after each change.
        self.notify: Callable[[int], None] | None = None
        self._to_notify: set[int] = set()
        self._analyser: asyncio.Task[None] | None = None
        self._analyse_wakeup: asyncio.Event | None = None
        self._last_commit = 0.0
        # Called on the writer thread with (account id, message files, spam?) when
        # the user moves messages into Junk (spam) or out of it, not to Trash
        # ("not spam"): what the user said. The spam filter listens (app.py);
        # the store knows nothing of it.
        self.on_junk_verdict: Callable[[int, list[Path], bool], None] | None = None
        # Usage reads for the SMTP policy (quota.py); APPEND/COPY check on the writer.
        self.quota = QuotaReader(settings.index_path)
        self.batches = 0  # statistics: how many group commits
        # The data directory's health (health.py): checked before each batch.
        st = settings.storage
        self.guard: DataGuard | None = DataGuard(
            settings.data_dir, reserve_percent=st.reserve_percent, reserve_mib=st.reserve_mib,
            check_interval=st.check_interval,
        )  # fmt: skip
        self.guard.on_change.append(self._storage_changed)
        self.batched = 0  # and how many messages they carried

    # -- opening, closing ---------------------------------------------------

    def open(self) -> ReconcileReport:
        """Open the index (rebuilding it if missing or corrupt), clean the spool,
        and bring the index in line with every account's Maildir."""
        if self.guard is not None:
            self.guard.claim()
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
        for task in (self._committer, self._analyser):
            if task is not None:
                task.cancel()
        try:
            self._writer.submit(self._save_states).result()
        except OSError as e:
            # The disk is gone or read-only: the index and the file names keep
            # the bounds (the state file is only a lower bound, store/maildir.py).
            log.warning("uid bounds not saved error=%r", str(e))
        self._writer.shutdown(wait=True)
        self.quota.close()
        if self._wcon is not None:
            self._wcon.close()
            self._wcon = None

    async def aclose(self) -> None:
        """Finish pending deliveries, then close."""
        while self._pending:
            await asyncio.sleep(0.01)
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def _storage_changed(self, health: Health) -> None:
        """The disk came back: look at every account again before the next
        change, in case something was written that the index missed."""
        if health.ok and self._wcon is not None:
            try:
                self._writer.submit(self._ready_accounts.clear)
            except RuntimeError:
                pass  # shutting down

    def _save_states(self) -> None:
        for mbox in self._mailboxes.values():
            if mbox.saved != (mbox.uidnext, mbox.highestmodseq) and mbox.path.is_dir():
                maildir.write_state(mbox.path, mbox.state())
                mbox.saved = (mbox.uidnext, mbox.highestmodseq)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the writer thread, after everything queued before it."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, self._call, fn, *args)

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        finally:
            self._flush_notify()

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
        with transaction(self.wcon):
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
                    on_file = mbox.flags_of(name)
                    # Keywords that have no letter (past 26) live in the index only.
                    extra = [
                        f
                        for f in known[2].split()
                        if f not in maildir.FLAG_LETTERS and f not in mbox.keywords
                    ]
                    flags = on_file + extra
                    mbox.highestmodseq += 1
                    self.wcon.execute(
                        "UPDATE messages SET subdir = ?, filename = ?, flags = ?, modseq = ?"
                        " WHERE mailbox_id = ? AND uid = ?",
                        (sub, name, " ".join(flags), mbox.highestmodseq, mbox.id, uid),
                    )
                    report.updated += 1
            # Files dropped in by other tools get UIDs in name order (Maildir names
            # start with the delivery time), as Dovecot numbers them.
            unnamed.sort(key=lambda item: item[1])
            for sub, name in unnamed:
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
        self._insert_row(
            mbox, uid, sub, name, mbox.flags_of(name), int(st.st_mtime), st.st_size, head
        )

    def _save_mailbox_row(self, mbox: Mailbox) -> None:
        self.wcon.execute(
            "UPDATE mailboxes SET uidnext = ?, highestmodseq = ? WHERE id = ?",
            (mbox.uidnext, mbox.highestmodseq, mbox.id),
        )

    # -- delivery (group commit) ---------------------------------------------

    async def deliver(
        self, message: Incoming, accounts: list[Account], junk: Collection[int] = ()
    ) -> list[Placement]:
        """Deliver to each account's INBOX (Junk for the accounts in `junk`);
        returns once every copy is durable."""
        loop = asyncio.get_running_loop()
        committer = self._committer
        if self._wakeup is None or committer is None or committer.get_loop() is not loop:
            self._wakeup = asyncio.Event()
            self._committer = loop.create_task(self._commit_loop(), name="store-committer")
        future: asyncio.Future[list[Placement]] = loop.create_future()
        self._pending.append(_Delivery(message, accounts, future, frozenset(junk)))
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
                self._last_commit = loop.time()
                try:
                    await loop.run_in_executor(self._writer, self._commit, batch)
                except StorageUnavailable as e:  # refused before anything was written
                    log.info("delivery batch refused messages=%d reason=%r",
                             len(batch), e.health.reason)  # fmt: skip
                    for d in batch:
                        d.error = d.error or e
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
            self.start_analyser()

    def start_analyser(self) -> None:
        """Analyse what lacks it (MIME caches, search text) in the background,
        in small batches between deliveries."""
        loop = asyncio.get_running_loop()
        analyser = self._analyser
        if self._analyse_wakeup is None or analyser is None or analyser.get_loop() is not loop:
            self._analyse_wakeup = asyncio.Event()
            self._analyser = loop.create_task(self._analyse_loop(), name="store-analyser")
        self._analyse_wakeup.set()

    async def _analyse_loop(self) -> None:
        """Analysis waits for a quiet moment: under a burst of deliveries it
        would take the writer thread (and the interpreter) from them. A message
        not analysed yet is still served (FETCH computes what it needs) but a
        TEXT search finds it only once analysed, normally within a second."""
        assert self._analyse_wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._analyse_wakeup.wait()
            self._analyse_wakeup.clear()
            try:
                while True:
                    while loop.time() - self._last_commit < ANALYSE_QUIET:
                        await asyncio.sleep(ANALYSE_QUIET)
                    if not await loop.run_in_executor(self._writer, self.analyse_pending):
                        break
            except Exception:
                log.exception("analysis failed")

    def _commit(self, batch: list[_Delivery]) -> None:
        # Only to the data disk pimail started on, writable, with room (health.py).
        if self.guard is not None:
            self.guard.require()
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
                    maildir.unlink_quietly(p.path)
                d.placements = []
        # 3. the directory entries durable: from here on, the message is delivered
        try:
            for path in new_dirs:
                maildir.fsync_dir(path)
        except OSError as e:
            # The disk failed under us: nobody hears 250, so no copy may stay
            # (the sender retries; a copy left here would arrive twice).
            for d in batch:
                for p in d.placements:
                    maildir.unlink_quietly(p.path)
                d.placements = []
                d.error = d.error or e
            raise
        # 4. the index, in one transaction; a failure here loses nothing
        live = [d for d in batch if d.error is None]
        try:
            self._index_deliveries(live)
        except sqlite3.Error:
            log.exception("index update failed; the messages are on disk, reconciling")
            self._ready_accounts.clear()
        for d in batch:
            d.message.discard()
        self._flush_notify()

    def _link(self, d: _Delivery, new_dirs: set[Path]) -> None:
        spool_path = d.message.path
        assert spool_path is not None
        for account in d.accounts:
            self.ensure_account(account)
            folder = "Junk" if account.id in d.junk else "INBOX"
            mbox = self._mailbox(account, folder, STANDARD_FOLDERS[folder])
            uid = mbox.uidnext
            target = mbox.path / "new" / maildir.new_name(d.message.base, d.message.size, uid)
            maildir.link_or_copy(spool_path, target)
            mbox.uidnext = uid + 1
            d.placements.append(Placement(account.id, mbox.id, uid, target, folder))
            new_dirs.add(target.parent)

    def _index_deliveries(self, live: list[_Delivery]) -> None:
        touched: dict[int, Mailbox] = {}
        with transaction(self.wcon):
            for d in live:
                head = bytes(d.message.head)
                # INTERNALDATE is the file's mtime, so a rebuild finds the same value.
                internaldate = int(d.message.mtime)
                for p in d.placements:
                    mbox = self._mailboxes[(p.account_id, p.folder)]
                    mbox.highestmodseq += 1
                    self._insert_row(
                        mbox, p.uid, "new", p.path.name, [], internaldate, d.message.size, head
                    )
                    touched[mbox.id] = mbox
            for mbox in touched.values():
                self._changed(mbox)
