"""One IMAP session: states and commands (RFC 9051, with RFC 3501 clients served).

The session turns parsed commands into responses. It never touches a socket:
it writes response octets through `self.out` and the connection (server.py)
sends them. State: not authenticated, authenticated, selected (RFC 9051 3).

Mailbox changes made by other sessions or by delivery reach a selected
session through `sync()`, at the points the RFC allows (RFC 9051 7.4.1, 5.5):
EXISTS and FETCH FLAGS after any command, EXPUNGE/VANISHED only after
commands other than FETCH, STORE and SEARCH, and at once during IDLE.
"""

from __future__ import annotations

import base64
import bisect
import logging
import re
import sqlite3
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..auth.accounts import Account
from ..auth.login import parse_sasl_plain
from ..store import quota
from ..store.health import StorageUnavailable
from ..store.ops import StoreError
from . import events as ev
from . import fetch as fetching
from .context import ImapContext
from .grammar import SequenceSet, encode_mailbox
from .listing import handle_list, handle_lsub, mailbox_status, valid_new_name
from .search import SearchContext, search
from .views import MailboxState, RecentMark

log = logging.getLogger(__name__)

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
ENABLEABLE = {"CONDSTORE", "QRESYNC", "IMAP4REV2", "UTF8=ACCEPT"}


class Bad(Exception):
    """A command the session refuses with BAD."""


class No(Exception):
    """A command that fails with NO [code]."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Selected:
    mailbox_id: int
    name: str
    folder: Path
    uidvalidity: int
    readonly: bool
    shared: MailboxState
    uids: array
    modseq: int
    recent_mark: RecentMark
    recent: set[int] = field(default_factory=set)
    keywords: list[str] = field(default_factory=list)  # announced in FLAGS, in order
    # (UID, MODSEQ) of this session's own changes whose whole FLAGS it was sent
    # or already knew: sync need not report them again.
    own_changes: set[tuple[int, int]] = field(default_factory=set)
    saved: list[int] = field(default_factory=list)  # SEARCH RETURN (SAVE), RFC 5182


class Session:
    def __init__(self, ctx: ImapContext, peer_ip: str, tls: bool) -> None:
        self.ctx = ctx
        self.peer_ip = peer_ip
        self.tls = tls
        self.account: Account | None = None
        self.selected: Selected | None = None
        self.enabled: set[str] = set()
        self.out: list[bytes] = []
        self.logout = False
        self.starttls_requested = False
        self.idling: str | None = None  # the IDLE tag while idling
        self.sasl_tag: str | None = None  # AUTHENTICATE waiting for its response
        self.utf8_changed = False

    # -- output ---------------------------------------------------------------------

    def send(self, line: bytes | str) -> None:
        self.out.append(line.encode() if isinstance(line, str) else line)

    def take_output(self) -> bytes:
        data, self.out = b"".join(self.out), []
        return data

    @property
    def utf8(self) -> bool:
        return bool(self.enabled & {"IMAP4REV2", "UTF8=ACCEPT"})

    @property
    def rev2(self) -> bool:
        return "IMAP4REV2" in self.enabled

    @property
    def condstore(self) -> bool:
        return bool(self.enabled & {"CONDSTORE", "QRESYNC"})

    def enable_condstore(self) -> None:
        """RFC 7162 3.1: a CONDSTORE enabling command (FETCH MODSEQ or CHANGEDSINCE,
        SEARCH MODSEQ, STORE UNCHANGEDSINCE, STATUS HIGHESTMODSEQ, ENABLE, SELECT
        (CONDSTORE)) turns it on for the rest of the session; the first one while a
        mailbox is selected reports the mailbox's HIGHESTMODSEQ (3.1.2.1)."""
        if self.condstore:
            return
        self.enabled.add("CONDSTORE")
        if self.selected is not None:
            self.send(f"* OK [HIGHESTMODSEQ {self.selected.modseq}] Highest\r\n")

    def _recent_for(self, sel: Selected, uids: Any) -> set[int]:
        """RFC 3501 2.3.2: the new messages this session is the first to be told
        of are \\Recent for it alone; a read-only session shows the unclaimed ones
        without taking them (6.3.2). IMAP4rev2 has no \\Recent (RFC 9051 E.1):
        a session that enabled it neither sees nor takes the flag."""
        if self.rev2:
            return set()
        if sel.readonly:
            return sel.recent_mark.peek(uids)
        return sel.recent_mark.claim(uids)

    def _send_flags(self, sel: Selected) -> None:
        flags = " ".join((*SYSTEM_FLAGS, *sel.keywords))
        self.send(f"* FLAGS ({flags})\r\n")
        permanent = "" if sel.readonly else f"{flags} \\*"
        self.send(f"* OK [PERMANENTFLAGS ({permanent})] Flags permitted\r\n")

    def announce_keywords(self, flags: Any) -> None:
        """RFC 9051 7.3.5, RFC 3501 7.2.6: a keyword first used in the mailbox
        (by this session, another, or an APPEND/COPY/MOVE) is announced in FLAGS
        and PERMANENTFLAGS before any FETCH response carries it."""
        sel = self.selected
        if sel is None:
            return
        known = {k.lower() for k in sel.keywords}
        new = []
        for flag in flags:
            if flag and not flag.startswith("\\") and flag.lower() not in known:
                known.add(flag.lower())
                new.append(flag)
        if new:
            sel.keywords.extend(new)
            self._send_flags(sel)

    def quote_mailbox(self, name: str) -> bytes:
        from ..mime.header import imap_string

        return imap_string(encode_mailbox(name, self.utf8).encode(), utf8=self.utf8)

    def capabilities(self) -> str:
        caps = ["IMAP4rev1", "IMAP4rev2"]
        plaintext_ok = self.tls or self.ctx.settings.imap.allow_plaintext_auth
        if self.account is None:
            if self.ctx.tls_context is not None and not self.tls:
                caps.append("STARTTLS")
            if plaintext_ok:
                caps += ["AUTH=PLAIN", "SASL-IR"]
            else:
                caps.append("LOGINDISABLED")
        caps += [
            "IDLE", "UIDPLUS", "MOVE", "NAMESPACE", "ID", "ENABLE", "LITERAL+", "SPECIAL-USE",
            "CREATE-SPECIAL-USE", "LIST-EXTENDED", "LIST-STATUS", "ESEARCH", "SEARCHRES",
            "CONDSTORE", "QRESYNC", "UNSELECT", "BINARY", "UTF8=ACCEPT", "STATUS=SIZE",
            f"APPENDLIMIT={self.ctx.settings.imap.max_append_size}",
            "QUOTA", "QUOTA=RES-STORAGE",  # RFC 9208, read-only: no QUOTASET
        ]  # fmt: skip
        return " ".join(caps)

    # -- dispatch ---------------------------------------------------------------------

    async def handle(self, command: ev.Command) -> None:
        handler = getattr(self, f"cmd_{type(command).__name__.lower()}", None)
        tag = command.tag
        try:
            if handler is None:
                raise Bad("Command not supported")
            needs = _STATE.get(type(command).__name__, "any")
            if needs == "auth" and self.account is None:
                raise Bad("Log in first")
            if needs == "selected" and self.selected is None:
                raise Bad("Select a mailbox first")
            if needs == "notauth" and self.account is not None:
                raise Bad("Already logged in")
            done = await handler(command)
            if self.selected is not None and not self.logout and self.idling is None:
                await self.sync(expunges=type(command).__name__ not in _NO_EXPUNGE_AFTER
                                or getattr(command, "uid", False))  # fmt: skip
            if done is not None:
                self.send(f"{tag} {done}\r\n")
        except Bad as e:
            self.send(f"{tag} BAD {e}\r\n")
        except No as e:
            code = f"[{e.code}] " if e.code else ""
            self.send(f"{tag} NO {code}{e}\r\n")
        except StoreError as e:
            self.send(f"{tag} NO [{e.code}] {e}\r\n")
        except StorageUnavailable as e:
            # The data disk is gone, read-only or full (store/health.py): a
            # temporary NO, and the connection stays (RFC 9051 7.1).
            self.send(f"{tag} NO [{e.health.imap_code}] {e.health.describe()}\r\n")
        except (ValueError, sqlite3.Error, OSError) as e:
            guard = self.ctx.store.guard
            if guard is not None and await guard.judge(e):
                # It failed during the command: the disk's fault, not a bug.
                log.warning("imap command failed command=%s error=%r",
                            type(command).__name__, str(e))  # fmt: skip
                health = guard.health
                code = health.imap_code if not health.ok else "UNAVAILABLE"
                self.send(f"{tag} NO [{code}] Storage failed, try again later\r\n")
                return
            log.exception("imap command failed command=%s", type(command).__name__)
            self.send(f"{tag} NO [SERVERBUG] {type(e).__name__}\r\n")

    # -- any state --------------------------------------------------------------------

    async def cmd_capability(self, c: ev.Capability) -> str:
        self.send(f"* CAPABILITY {self.capabilities()}\r\n")
        return "OK CAPABILITY completed"

    async def cmd_noop(self, c: ev.Noop) -> str:
        return "OK NOOP completed"

    async def cmd_check(self, c: ev.Check) -> str:
        return "OK CHECK completed"

    async def cmd_logout(self, c: ev.Logout) -> str:
        self.send("* BYE pimail logging out\r\n")
        self.logout = True
        return "OK LOGOUT completed"

    async def cmd_id(self, c: ev.Id) -> str:
        self.send(f'* ID ("name" "pimail" "version" "{__version__}")\r\n')
        return "OK ID completed"

    async def cmd_enable(self, c: ev.Enable) -> str:
        new = [cap for cap in (x.upper() for x in c.capabilities) if cap in ENABLEABLE]
        new = [cap for cap in new if cap not in self.enabled]
        had_condstore = self.condstore
        if "QRESYNC" in new and "CONDSTORE" not in self.enabled:
            self.enabled.add("CONDSTORE")  # RFC 7162 3.2.3: QRESYNC implies CONDSTORE
        self.enabled.update(new)
        if self.utf8:
            self.utf8_changed = True
        names = {"IMAP4REV2": "IMAP4rev2"}
        self.send("* ENABLED" + "".join(" " + names.get(x, x) for x in new) + "\r\n")
        if self.condstore and not had_condstore and self.selected is not None:
            # RFC 7162 3.1.2.1: the first enabling command while selected.
            self.send(f"* OK [HIGHESTMODSEQ {self.selected.modseq}] Highest\r\n")
        return "OK ENABLE completed"

    # -- not authenticated ------------------------------------------------------------

    async def cmd_starttls(self, c: ev.StartTLS) -> str:
        if self.tls or self.ctx.tls_context is None:
            raise Bad("TLS is not available here" if not self.tls else "TLS is active already")
        self.starttls_requested = True
        return "OK Begin TLS negotiation now"

    def _plaintext_refused(self) -> bool:
        return not self.tls and not self.ctx.settings.imap.allow_plaintext_auth

    async def cmd_login(self, c: ev.Login) -> str:
        if self._plaintext_refused():
            raise No("Use STARTTLS first", "PRIVACYREQUIRED")
        return await self._login(c.user, c.password)

    async def _login(self, user: str, password: str) -> str:
        result = await self.ctx.authenticator.authenticate(user, password, self.peer_ip, "imap")
        account = result.account
        if result.refused:
            # RFC 5530 3: UNAVAILABLE is a temporary failure; the password was not
            # checked, so AUTHENTICATIONFAILED ("no point in trying the same
            # login/password again later") would be untrue.
            raise No("Too many failed logins, try again later", "UNAVAILABLE")
        if account is None:
            raise No("Authentication failed", "AUTHENTICATIONFAILED")
        self.account = account
        await self.ctx.store.run(self.ctx.store.ensure_account, account)
        return f"OK [CAPABILITY {self.capabilities()}] Logged in"

    async def cmd_authenticate(self, c: ev.Authenticate) -> str | None:
        if c.mechanism.upper() != "PLAIN":
            raise No("Unsupported mechanism", "CANNOT")
        if self._plaintext_refused():
            raise No("Use STARTTLS first", "PRIVACYREQUIRED")
        if c.initial_response is None:  # no SASL-IR: ask for it (RFC 9051 6.2.2)
            self.sasl_tag = c.tag
            self.send("+ \r\n")
            return None
        return await self._sasl_plain(c.initial_response)

    async def sasl_response(self, event: ev.AuthenticateResponse | ev.AuthenticateCancel) -> None:
        tag, self.sasl_tag = event.tag, None
        if isinstance(event, ev.AuthenticateCancel):
            self.send(f"{tag} BAD Authentication cancelled\r\n")
            return
        try:
            self.send(f"{tag} {await self._sasl_plain(event.data)}\r\n")
        except No as e:
            self.send(f"{tag} NO [{e.code}] {e}\r\n")

    async def _sasl_plain(self, data: bytes) -> str:
        parsed = parse_sasl_plain(data)
        if parsed is None:
            raise No("Malformed PLAIN response", "AUTHENTICATIONFAILED")
        return await self._login(*parsed)

    # -- authenticated ----------------------------------------------------------------

    @property
    def me(self) -> Account:
        assert self.account is not None
        return self.account

    async def cmd_namespace(self, c: ev.Namespace) -> str:
        self.send('* NAMESPACE (("" "/")) NIL NIL\r\n')
        return "OK NAMESPACE completed"

    async def cmd_select(self, c: ev.Select) -> str:
        self.selected = None  # RFC 9051 6.3.2: a failed SELECT leaves no mailbox selected
        store = self.ctx.store
        mbox = await self._open(c.mailbox, "NONEXISTENT")
        if c.condstore or c.qresync:
            self.enabled.add("CONDSTORE")
        if c.qresync and "QRESYNC" not in self.enabled:
            raise Bad("QRESYNC is not enabled")
        # The \Recent mark is loaded (from new/) before new/ is emptied.
        mark = await self.ctx.views.recent(mbox.id, mbox.uidvalidity)
        if not c.readonly:
            await store.run(store.claim_new, mbox.id)  # Maildir: new/ -> cur/
        # Kept current by the store's notifications; a new one loads itself.
        shared = self.ctx.views.state(mbox.id, mbox.uidvalidity)
        state = await shared.current(self.ctx.reader)
        sel = Selected(
            mbox.id, mbox.name, mbox.path, mbox.uidvalidity, c.readonly, shared, state.uids,
            state.highestmodseq, mark, keywords=[k for k in mbox.keywords if k],
        )  # fmt: skip
        sel.recent = self._recent_for(sel, sel.uids)
        self.send(f"* {len(sel.uids)} EXISTS\r\n")
        if not self.rev2:
            self.send(f"* {len(sel.recent)} RECENT\r\n")  # RFC 3501 7.3.2
        self._send_flags(sel)
        self.send(f"* OK [UIDVALIDITY {sel.uidvalidity}] UIDs valid\r\n")
        self.send(f"* OK [UIDNEXT {state.uidnext}] Predicted next UID\r\n")
        self.send(f"* OK [HIGHESTMODSEQ {sel.modseq}] Highest\r\n")
        self.selected = sel
        if c.qresync is not None and c.qresync.uidvalidity == sel.uidvalidity:
            await self._qresync(c.qresync)
        mode = "READ-ONLY" if c.readonly else "READ-WRITE"
        return f"OK [{mode}] {'EXAMINE' if c.readonly else 'SELECT'} completed"

    async def _qresync(self, q: ev.QResync) -> None:
        """RFC 7162 3.2.5: what changed since the client's MODSEQ, at SELECT."""
        sel = self.selected
        assert sel is not None
        largest = sel.uids[-1] if sel.uids else 0
        known = q.known_uids.resolve(max(largest, sel.shared.uidnext)) if q.known_uids else None
        vanished = await self.ctx.reader.run(_expunged_since, sel.mailbox_id, q.modseq)
        if known is not None:
            vanished = [u for u in vanished if any(lo <= u <= hi for lo, hi in known)]
        if vanished:
            self.send(f"* VANISHED (EARLIER) {SequenceSet.from_numbers(vanished)}\r\n")
        await self._fetch_lines(
            [(1, largest)] if largest else [], (ev.FetchAttribute("FLAGS"),), uid=True,
            changedsince=q.modseq,
        )  # fmt: skip

    async def cmd_create(self, c: ev.Create) -> str:
        # RFC 9051 6.3.4: a trailing separator declares that inferiors will follow;
        # a server that does not need the declaration MUST ignore it.
        mailbox = c.mailbox[:-1] if c.mailbox.endswith("/") and c.mailbox != "/" else c.mailbox
        name = valid_new_name(mailbox)
        special = None
        if c.special_use:
            # RFC 6154: attributes are case-insensitive (\archive is \Archive);
            # str.capitalize() would lower-case all after the backslash.
            allowed = {u.lower(): u for u in ("\\Drafts", "\\Sent", "\\Junk", "\\Trash",
                                              "\\Archive", "\\All", "\\Flagged")}  # fmt: skip
            uses = [allowed[u.lower()] for u in c.special_use if u.lower() in allowed]
            if len(uses) != len(c.special_use) or len(uses) > 1:
                raise No("Unsupported special use", "USEATTR")
            special = uses[0]
        await self.ctx.store.run(self.ctx.store.create_mailbox, self.me, name, special)
        return "OK CREATE completed"

    async def cmd_delete(self, c: ev.Delete) -> str:
        if self.selected is not None and self.selected.name == c.mailbox:
            self.selected = None
        await self.ctx.store.run(self.ctx.store.delete_mailbox, self.me, c.mailbox)
        return "OK DELETE completed"

    async def cmd_rename(self, c: ev.Rename) -> str:
        name = valid_new_name(c.new_name)
        await self.ctx.store.run(self.ctx.store.rename_mailbox, self.me, c.mailbox, name)
        return "OK RENAME completed"

    async def cmd_subscribe(self, c: ev.Subscribe) -> str:
        await self.ctx.store.run(self.ctx.store.subscribe, self.me, c.mailbox, True)
        return "OK SUBSCRIBE completed"

    async def cmd_unsubscribe(self, c: ev.Unsubscribe) -> str:
        await self.ctx.store.run(self.ctx.store.subscribe, self.me, c.mailbox, False)
        return "OK UNSUBSCRIBE completed"

    async def cmd_list(self, c: ev.List) -> str:
        await handle_list(self, c)
        return "OK LIST completed"

    async def _open(self, name: str, code: str) -> Any:
        """A folder of this account; NO [`code`] when there is none (RFC 9051 7.1:
        NONEXISTENT, or TRYCREATE where creating it would help)."""
        store = self.ctx.store
        try:
            return await store.run(store.open_mailbox, self.me, name)
        except StoreError as e:
            raise No("No such mailbox", code) from e

    async def cmd_lsub(self, c: ev.Lsub) -> str:
        await handle_lsub(self, c)
        return "OK LSUB completed"

    async def cmd_status(self, c: ev.Status) -> str:
        mbox = await self._open(c.mailbox, "NONEXISTENT")
        if any(item.upper() == "HIGHESTMODSEQ" for item in c.items):
            self.enable_condstore()  # RFC 7162 3.1
        items = await mailbox_status(self, mbox.id, mbox.uidvalidity, c.items)
        text = " ".join(f"{k} {v}" for k, v in items)
        self.send(b"* STATUS " + self.quote_mailbox(mbox.name) + f" ({text})\r\n".encode())
        return "OK STATUS completed"

    async def cmd_append(self, c: ev.Append) -> str:
        store = self.ctx.store
        if len(c.message) > self.ctx.settings.imap.max_append_size:
            raise No("Message too large", "TOOBIG")
        mbox = await self._open(c.mailbox, "TRYCREATE")
        flags = [f for f in c.flags if f.lower() != "\\recent"]
        when = c.internal_date.timestamp() if c.internal_date else None
        uidvalidity, uid = await store.run(
            store.append, mbox.id, c.message, flags, when, self._quota_limit()
        )  # NO [OVERQUOTA] from the store when it does not fit (store/quota.py)
        return f"OK [APPENDUID {uidvalidity} {uid}] APPEND completed"

    async def literal_refusal(self, event: ev.NeedContinuation) -> str | None:
        """The tagged answer that refuses a synchronising literal instead of "+"
        (RFC 9051 7.6), or None to take it: an APPEND that cannot fit the quota
        is refused before the client uploads it. (The literal may be the mailbox
        name rather than the message, a few octets: refused only when those
        would not fit either, and then the message would not.) The store checks
        again when the message is in (`cmd_append`)."""
        if event.command != "APPEND" or self.account is None:
            return None
        guard = self.ctx.store.guard
        if guard is not None:
            health = await guard.current()
            if not health.ok:  # the disk cannot take it: not uploaded for nothing
                return f"{event.tag} NO [{health.imap_code}] {health.describe()}\r\n"
        limit = self._quota_limit()
        if limit <= 0:
            return None
        try:
            used = await self.ctx.reader.run(quota.usage, self.me.id)
        except sqlite3.Error:
            log.exception("quota usage unreadable account=%s", self.me.address)
            return None  # take the literal: the store decides
        if quota.Quota(used, limit).fits(event.size):
            return None
        log.info("quota refused append account=%s used=%d size=%d limit=%d",
                 self.me.address, used, event.size, limit)  # fmt: skip
        return f"{event.tag} NO [OVERQUOTA] Quota exceeded (mailbox full)\r\n"

    # -- QUOTA (RFC 9208), read-only: one quota root per account ------------------------

    def _quota_limit(self) -> int:
        """The account's limit in octets (0: none), read now: an administrator
        may change it while the session lasts (pimail.db, nothing cached)."""
        account = self.ctx.directory.account_by_id(self.me.id)
        return account.quota_bytes if account is not None else self.me.quota_bytes

    async def _send_quota(self) -> None:
        """RFC 9208 4.2.1: * QUOTA "" (STORAGE used limit), in units of 1024
        octets (5.1), rounded up so that a full account never looks otherwise."""
        limit = self._quota_limit()
        used = await self.ctx.reader.run(quota.usage, self.me.id)
        self.send(f'* QUOTA "" (STORAGE {-(-used // 1024)} {-(-limit // 1024)})\r\n')

    async def cmd_getquotaroot(self, c: ev.GetQuotaRoot) -> str:
        mbox = await self._open(c.mailbox, "NONEXISTENT")
        # RFC 9208 4.1.2: every folder of the account is under the root "";
        # an account without a quota has no root at all.
        if self._quota_limit() <= 0:
            self.send(b"* QUOTAROOT " + self.quote_mailbox(mbox.name) + b"\r\n")
        else:
            self.send(b"* QUOTAROOT " + self.quote_mailbox(mbox.name) + b' ""\r\n')
            await self._send_quota()
        return "OK GETQUOTAROOT completed"

    async def cmd_getquota(self, c: ev.GetQuota) -> str:
        # RFC 9208 4.1.1: a root that does not exist is a NO.
        if c.root != "" or self._quota_limit() <= 0:
            raise No("No such quota root", "NONEXISTENT")
        await self._send_quota()
        return "OK GETQUOTA completed"

    async def cmd_setquota(self, c: ev.SetQuota) -> str:
        # RFC 9208 4.1.3: only for servers that announce QUOTASET. Limits are the
        # administrator's (pimail user quota, the admin pages).
        raise No("Quotas are set by the administrator", "NOPERM")

    async def cmd_idle(self, c: ev.Idle) -> None:
        self.idling = c.tag
        self.send("+ idling\r\n")
        if self.selected is not None:
            await self.sync(expunges=True)
        return None

    def idle_done(self) -> None:
        tag, self.idling = self.idling, None
        self.send(f"{tag} OK IDLE terminated\r\n")

    # -- selected -------------------------------------------------------------------

    @property
    def sel(self) -> Selected:
        assert self.selected is not None
        return self.selected

    async def cmd_close(self, c: ev.Close) -> str:
        sel = self.sel
        if not sel.readonly:
            deleted = await self.ctx.reader.run(_deleted_uids, sel.mailbox_id, None)
            if deleted:
                await self.ctx.store.run(self.ctx.store.expunge, sel.mailbox_id, deleted)
        self.selected = None
        return "OK CLOSE completed"

    async def cmd_unselect(self, c: ev.Unselect) -> str:
        self.selected = None
        return "OK UNSELECT completed"

    async def cmd_expunge(self, c: ev.Expunge) -> str:
        sel = self.sel
        if sel.readonly:
            raise No("Mailbox is read-only", "READ-ONLY")
        only = None
        if c.uid_set is not None:
            only = [u for u in self._uids_of(c.uid_set, True)]
        deleted = await self.ctx.reader.run(_deleted_uids, sel.mailbox_id, only)
        if deleted:
            await self.ctx.store.run(self.ctx.store.expunge, sel.mailbox_id, deleted)
        return "OK EXPUNGE completed"

    def _uids_of(self, sequence_set: SequenceSet, by_uid: bool) -> list[int]:
        """The session's UIDs named by a set of sequence numbers or UIDs."""
        sel = self.sel
        if sequence_set.saved:
            return [u for u in sel.saved if _has(sel.uids, u)]
        uids = sel.uids
        if by_uid:
            largest = uids[-1] if uids else 0
            out: list[int] = []
            for lo, hi in sequence_set.resolve(largest):
                i, j = bisect.bisect_left(uids, lo), bisect.bisect_right(uids, hi)
                out.extend(uids[i:j])
            return out
        out = []
        for lo, hi in sequence_set.resolve(len(uids)):
            out.extend(uids[max(lo, 1) - 1 : min(hi, len(uids))])
        return out

    def _check_set(self, sequence_set: SequenceSet, by_uid: bool) -> None:
        # RFC 9051 6.4.5: a message number beyond the mailbox is an error (BAD).
        if not by_uid and not sequence_set.saved:
            for r in sequence_set.ranges:
                for n in (r.first, r.last):
                    if n is not None and n > len(self.sel.uids):
                        raise Bad("Invalid message sequence number")

    async def cmd_fetch(self, c: ev.Fetch) -> str:
        sel = self.sel
        self._check_set(c.sequence_set, c.uid)
        if c.changedsince is not None or any(a.name == "MODSEQ" for a in c.attributes):
            self.enable_condstore()  # RFC 7162 3.1
        if c.vanished and "QRESYNC" not in self.enabled:
            raise Bad("VANISHED needs QRESYNC enabled")
        uids = self._uids_of(c.sequence_set, c.uid)
        marked: frozenset[int] = frozenset()
        if fetching.sets_seen(c.attributes) and not sel.readonly and uids:
            changes, _ = await self.ctx.store.run(
                self.ctx.store.store_flags, sel.mailbox_id, uids, "+", ["\\Seen"]
            )
            marked = frozenset(ch.uid for ch in changes)
            sel.own_changes.update((ch.uid, ch.modseq) for ch in changes)
        if c.vanished and c.changedsince is not None:
            gone = await self.ctx.reader.run(_expunged_since, sel.mailbox_id, c.changedsince)
            wanted = c.sequence_set.resolve(max(sel.shared.uidnext, 1))
            gone = [u for u in gone if any(lo <= u <= hi for lo, hi in wanted)]
            if gone:
                self.send(f"* VANISHED (EARLIER) {SequenceSet.from_numbers(gone)}\r\n")
        ranges = _ranges(uids)
        await self._fetch_lines(ranges, c.attributes, c.uid, c.changedsince, marked)
        return f"OK {'UID ' if c.uid else ''}FETCH completed"

    async def _fetch_lines(
        self,
        ranges: list[tuple[int, int]],
        attributes: tuple[ev.FetchAttribute, ...],
        uid: bool,
        changedsince: int | None = None,
        marked: frozenset[int] = frozenset(),
    ) -> None:
        sel = self.sel
        options = fetching.FetchOptions(
            uid=uid, condstore=self.condstore, utf8=self.utf8, imap4rev2=self.rev2,
            changedsince=changedsince, recent=frozenset(sel.recent) if not self.rev2 else
            frozenset(), add_flags=marked, flags_out=set(),
        )  # fmt: skip
        lines = await self.ctx.reader.run(
            fetching.render, sel.mailbox_id, sel.folder, sel.uids, ranges, attributes, options
        )
        self.announce_keywords(sorted(options.flags_out or ()))
        self.out.extend(lines)

    async def cmd_store(self, c: ev.Store) -> str:
        sel = self.sel
        if sel.readonly:
            raise No("Mailbox is read-only", "READ-ONLY")
        self._check_set(c.sequence_set, c.uid)
        if c.unchangedsince is not None:
            self.enable_condstore()  # RFC 7162 3.1
        uids = self._uids_of(c.sequence_set, c.uid)
        mode = {"add": "+", "remove": "-", "replace": "="}[c.action]
        flags = [f for f in c.flags if f.lower() != "\\recent"]
        changes, failed, before = await self.ctx.store.run(
            _store_flags, self.ctx.store, sel.mailbox_id, uids, mode, flags, c.unchangedsince
        )
        # Answered below with each message's whole FLAGS, sync need not repeat them.
        # After .SILENT only where the session knew the message's flags before: if
        # another session had changed them meanwhile, sync must still report it.
        sel.own_changes.update(
            (ch.uid, ch.modseq)
            for ch in changes
            if not c.silent or before.get(ch.uid, 0) <= sel.modseq
        )
        self.announce_keywords([f for ch in changes for f in ch.flags])
        if not c.silent or self.condstore:
            # RFC 7162 3.1.3: with CONDSTORE, changed messages are reported even
            # with .SILENT, carrying their new MODSEQ.
            for ch in changes:
                i = bisect.bisect_left(sel.uids, ch.uid)
                items = []
                if c.uid or self.condstore:
                    items.append(f"UID {ch.uid}")
                if not c.silent:
                    recent = ch.uid in sel.recent and not self.rev2
                    items.append("FLAGS " + fetching.format_flags(" ".join(ch.flags), recent)
                                 .decode())  # fmt: skip
                if self.condstore:
                    items.append(f"MODSEQ ({ch.modseq})")
                self.send(f"* {i + 1} FETCH ({' '.join(items)})\r\n")
        if failed:
            numbers = failed if c.uid else [bisect.bisect_left(sel.uids, u) + 1 for u in failed]
            return f"OK [MODIFIED {SequenceSet.from_numbers(numbers)}] Conditional STORE failed"
        return f"OK {'UID ' if c.uid else ''}STORE completed"

    async def cmd_copy(self, c: ev.Copy) -> str:
        return await self._copy(c, move=False)

    async def cmd_move(self, c: ev.Move) -> str:
        return await self._copy(c, move=True)

    async def _copy(self, c: ev.Copy | ev.Move, move: bool) -> str:
        sel = self.sel
        if move and sel.readonly:
            raise No("Mailbox is read-only", "READ-ONLY")
        self._check_set(c.sequence_set, c.uid)
        store = self.ctx.store
        target = await self._open(c.mailbox, "TRYCREATE")
        uids = self._uids_of(c.sequence_set, c.uid)
        if not uids:
            return f"OK {'MOVE' if move else 'COPY'} completed (nothing to do)"
        if move:  # never refused for quota: the account's usage stays (store/quota.py)
            uidvalidity, pairs = await store.run(store.move, sel.mailbox_id, uids, target.id)
        else:
            uidvalidity, pairs = await store.run(
                store.copy, sel.mailbox_id, uids, target.id, self._quota_limit()
            )
        if not pairs:
            return "OK Nothing copied"
        source = SequenceSet.from_numbers(p[0] for p in pairs)
        dest = ",".join(str(p[1]) for p in pairs)
        dest_set = str(SequenceSet.from_numbers(p[1] for p in pairs))
        if len(dest) > len(dest_set):
            dest = dest_set  # consecutive: the short form keeps the order
        code = f"COPYUID {uidvalidity} {source} {dest}"
        if move:
            self.send(f"* OK [{code}] Moved\r\n")
            return "OK MOVE completed"
        return f"OK [{code}] COPY completed"

    async def cmd_search(self, c: ev.Search) -> str:
        sel = self.sel
        if "SearchText" in repr(c.criteria) or "SearchHeader" in repr(c.criteria):
            # String keys read the text index: finish the analysis delivery deferred.
            store = self.ctx.store
            while await store.run(store.analyse_pending, 500, sel.mailbox_id):
                pass
        has_modseq = _mentions_modseq(c.criteria)
        if has_modseq:
            self.enable_condstore()  # RFC 7162 3.1
        recent = frozenset(sel.recent) if not self.rev2 else frozenset()
        ctx_args = (sel.mailbox_id, sel.folder, sel.uids, recent, sel.saved)
        result, max_modseq = await self.ctx.reader.run(_run_search, c.criteria, ctx_args)
        numbers = result if c.uid else [bisect.bisect_left(sel.uids, u) + 1 for u in result]
        # RFC 9051 6.4.4: in IMAP4rev2 a SEARCH without RETURN is RETURN (ALL),
        # answered by ESEARCH; * SEARCH is IMAP4rev1's (RFC 3501 7.2.5).
        if c.return_options is None and not self.rev2:  # classic SEARCH response
            text = "* SEARCH" + "".join(f" {n}" for n in numbers)
            if has_modseq and numbers:
                text += f" (MODSEQ {max_modseq})"
            self.send(text + "\r\n")
        else:
            opts = c.return_options or frozenset({"ALL"})
            if "SAVE" in opts:
                sel.saved = list(result)
                opts = opts - {"SAVE"} if opts != {"SAVE"} else frozenset()
            parts = [f'* ESEARCH (TAG "{c.tag}")'] + (["UID"] if c.uid else [])
            if numbers:
                if "MIN" in opts:
                    parts.append(f"MIN {numbers[0]}")
                if "MAX" in opts:
                    parts.append(f"MAX {numbers[-1]}")
            if "COUNT" in opts:
                parts.append(f"COUNT {len(numbers)}")
            if numbers and "ALL" in opts:
                parts.append(f"ALL {SequenceSet.from_numbers(numbers)}")
            if has_modseq and numbers:
                parts.append(f"MODSEQ {max_modseq}")
            if opts:
                self.send(" ".join(parts) + "\r\n")
        return f"OK {'UID ' if c.uid else ''}SEARCH completed"

    # -- untagged updates ----------------------------------------------------------------

    async def sync(self, expunges: bool) -> None:
        sel = self.selected
        if sel is None:
            return
        state = await sel.shared.current(self.ctx.reader)
        known_top = sel.uids[-1] if sel.uids else 0  # newer UIDs are announced by EXISTS
        if state.uids is not sel.uids:
            old, new = sel.uids, state.uids
            if expunges:
                removed = _missing(old, new)
                if removed:
                    if "QRESYNC" in self.enabled:
                        self.send(f"* VANISHED {SequenceSet.from_numbers(removed)}\r\n")
                    else:
                        gone = set(removed)
                        for i in range(len(old) - 1, -1, -1):
                            if old[i] in gone:
                                self.send(f"* {i + 1} EXPUNGE\r\n")
                    sel.recent.difference_update(removed)
                sel.uids = new
                added = new[bisect.bisect_right(new, known_top) :]
                if len(new) != len(old) - len(removed):
                    self.send(f"* {len(new)} EXISTS\r\n")
            else:
                added = new[bisect.bisect_right(new, known_top) :]
                if added:
                    sel.uids = old + added
                    self.send(f"* {len(sel.uids)} EXISTS\r\n")
            if added:  # RFC 3501 2.3.2: this session is the first told of these
                sel.recent |= self._recent_for(sel, added)
                if not self.rev2:  # RFC 3501 7.3.2: RECENT follows a change of size
                    self.send(f"* {len(sel.recent)} RECENT\r\n")
        if state.highestmodseq > sel.modseq:
            rows = await self.ctx.reader.run(_flags_since, sel.mailbox_id, sel.modseq)
            lines = []
            for uid, flags, modseq in rows:
                if (uid, modseq) in sel.own_changes or uid > known_top:
                    continue  # reported already, by this session or as new mail
                i = bisect.bisect_left(sel.uids, uid)
                if i == len(sel.uids) or sel.uids[i] != uid:
                    continue
                self.announce_keywords(flags.split())
                recent = uid in sel.recent and not self.rev2
                line = f"* {i + 1} FETCH (UID {uid} FLAGS "
                line += fetching.format_flags(flags, recent).decode()
                if self.condstore:
                    line += f" MODSEQ ({modseq})"
                lines.append(line + ")\r\n")
            for line in lines:
                self.send(line)
            sel.modseq = state.highestmodseq
            sel.own_changes.clear()


# Which state each command needs (RFC 9051 6).
_STATE = {
    "Login": "notauth", "Authenticate": "notauth", "StartTLS": "notauth",
    "Select": "auth", "Create": "auth", "Delete": "auth", "Rename": "auth",
    "Subscribe": "auth", "Unsubscribe": "auth", "List": "auth", "Lsub": "auth",
    "Namespace": "auth", "Status": "auth", "Append": "auth", "Idle": "auth",
    "Enable": "auth", "GetQuota": "auth", "GetQuotaRoot": "auth", "SetQuota": "auth",
    "Close": "selected", "Unselect": "selected", "Expunge": "selected",
    "Search": "selected", "Fetch": "selected", "Store": "selected",
    "Copy": "selected", "Move": "selected", "Check": "selected",
}  # fmt: skip
# RFC 9051 7.4.1: no EXPUNGE while answering these (their UID forms are fine).
_NO_EXPUNGE_AFTER = {"Fetch", "Store", "Search"}
_MODSEQ = re.compile(r"SearchModseq")


def _has(uids: array, uid: int) -> bool:
    i = bisect.bisect_left(uids, uid)
    return i < len(uids) and uids[i] == uid


def _missing(old: array, new: array) -> list[int]:
    """UIDs of `old` not in `new` (both sorted)."""
    out, j = [], 0
    for uid in old:
        while j < len(new) and new[j] < uid:
            j += 1
        if j == len(new) or new[j] != uid:
            out.append(uid)
    return out


def _ranges(uids: list[int]) -> list[tuple[int, int]]:
    """Sorted UIDs -> the fewest [low, high] ranges covering exactly the session's
    neighbours (gaps in the session's list do not matter: rows outside it are skipped)."""
    if not uids:
        return []
    return [(r[0], r[1]) for r in SequenceSet.from_numbers(uids).resolve(uids[-1])]


def _mentions_modseq(key: Any) -> bool:
    return bool(_MODSEQ.search(repr(key)))


def _run_search(con: sqlite3.Connection, criteria: Any, args: tuple) -> tuple[list[int], int]:
    ctx = SearchContext(con, *args)
    return search(ctx, criteria), ctx.max_modseq


def _store_flags(
    store: Any,
    mailbox_id: int,
    uids: list[int],
    mode: str,
    flags: list[str],
    unchangedsince: int | None,
) -> tuple[list[Any], list[int], dict[int, int]]:
    """On the writer thread, as one step (no other write between): the messages'
    MODSEQs just before the change, and the change (store.store_flags)."""
    before: dict[int, int] = {}
    for i in range(0, len(uids), 500):
        chunk = uids[i : i + 500]
        before.update(
            store.wcon.execute(
                f"SELECT uid, modseq FROM messages WHERE mailbox_id = ? AND uid IN"
                f" ({','.join('?' * len(chunk))})",
                (mailbox_id, *chunk),
            ).fetchall()
        )
    changes, failed = store.store_flags(mailbox_id, uids, mode, flags, unchangedsince)
    return changes, failed, before


def _deleted_uids(con: sqlite3.Connection, mailbox_id: int, only: list[int] | None) -> list[int]:
    rows = con.execute(
        "SELECT uid FROM messages WHERE mailbox_id = ? AND (' ' || flags || ' ') LIKE ?",
        (mailbox_id, "% \\Deleted %"),
    )
    uids = [r[0] for r in rows]
    if only is not None:
        wanted = set(only)
        uids = [u for u in uids if u in wanted]
    return uids


def _flags_since(con: sqlite3.Connection, mailbox_id: int, modseq: int) -> list[tuple]:
    return con.execute(
        "SELECT uid, flags, modseq FROM messages WHERE mailbox_id = ? AND modseq > ? ORDER BY uid",
        (mailbox_id, modseq),
    ).fetchall()


def _expunged_since(con: sqlite3.Connection, mailbox_id: int, modseq: int) -> list[int]:
    return [
        r[0]
        for r in con.execute(
            "SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ? ORDER BY uid",
            (mailbox_id, modseq),
        )
    ]


def decode_sasl(line: bytes) -> bytes:
    return base64.b64decode(line, validate=True)
