"""The webmail: folders, message lists, reading, writing (routes under /mail).

What it may touch, and how:
- Reads the index through read-only SQLite connections of its own, on a
  small thread pool (store/reader.py's IndexReader; WAL lets readers run beside
  the store's writer). Message bodies come from the Maildir files, parsed
  with the stdlib `email` package in worker threads (web/mail_message.py);
  a few parsed messages are kept, so a message's page, its HTML frame and
  its images parse it once.
- Changes nothing itself: flags, moves, deletions, saving drafts and Sent
  copies are the store's methods on its writer thread (store/ops.py, as IMAP
  calls them). Moving into or out of Junk is a MailboxOps move, which trains
  the spam filter.
- Sends through smtp/submission.py's Submitter: the very path of SMTP
  submission (sender checks, limits, local delivery, the queue and its DKIM).
- Quota (store/quota.py): the folder list shows what the account uses of its
  quota. Sending is never stopped by the sender's own quota; the Sent copy and
  drafts are APPENDs and are refused when they do not fit: a draft is then
  not saved (the page says so, the text stays in the form), and a message
  sent without its Sent copy says that it was sent, without a copy.

Every URL names a folder by its index id and a message by its UID; each
handler first finds the folder among the logged-in account's own (a folder
of someone else's is "not found", as is a message not in the folder).

HTML mail is shown in `<iframe sandbox>` (no scripts, an opaque origin) from
its own route, cleaned by web/sanitize.py and served with its own CSP: no
scripts, styles inline only, images from data: and this message's inline
image route, and from https: only after the reader asked for remote images.
Images inside the frame are fetched without the session cookie (a sandboxed
frame is cross-site for SameSite), so their URLs carry a signature instead.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..auth.accounts import Account
from ..smtp.submission import SubmissionRefused, Submitter
from ..store import maildir, quota
from ..store.ops import StoreError
from ..store.reader import IndexReader
from ..store.spool import Incoming
from ..store.textindex import fts_query
from . import mail_compose as mc
from . import mail_index as mi
from . import mail_message as mm
from .sanitize import CleanResult, clean_html, text_to_html

if TYPE_CHECKING:
    from .server import Web

log = logging.getLogger(__name__)

MAX_ID = 2**62  # larger numbers in a URL name nothing (and SQLite would refuse them)
CACHE_ENTRIES = 8
CACHE_OCTETS = 24 * 1024 * 1024  # file octets of the parsed messages kept
INLINE_LIFETIME = 12 * 3600  # seconds an inline image URL stays valid (at least)
FRAME_SANDBOX = "allow-popups allow-popups-to-escape-sandbox"  # links open in a new tab
DONE = {
    "sent": "Message sent.",
    "sent_nocopy": "Message sent. Your mailbox is full: no copy was saved in Sent.",
    "saved": "Draft saved.",
    "moved": "Moved.",
    "deleted": "Deleted.",
    "junk": "Moved to Junk.",
    "notjunk": "Moved to the Inbox.",
    "flags": "Updated.",
}
ACTIONS = ("read", "unread", "flag", "unflag", "delete", "junk", "notjunk", "move")
_BACK = re.compile(r"/mail/\d+(\?[A-Za-z0-9=&%+._~-]*)?")
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,60}/[a-z0-9][a-z0-9.+-]{0,80}")
_HOST = re.compile(r"[A-Za-z0-9.:\[\]-]{1,300}")


def register(web: Web) -> None:
    """Add this module's pages to the HTTPS application."""
    MailPages(web).routes()


# -- parsed messages, kept for a while -----------------------------------------------------


@dataclass
class Entry:
    parsed: mm.Parsed
    cleaned: dict[tuple[int, bool, int, str], CleanResult]


class Readings:
    """The last few parsed messages (a message's page, its frames and images
    parse it once), within a budget of file octets."""

    def __init__(self, entries: int = CACHE_ENTRIES, octets: int = CACHE_OCTETS) -> None:
        self.entries, self.octets = entries, octets
        self._kept: OrderedDict[tuple[int, int, int], Entry] = OrderedDict()

    def get(self, key: tuple[int, int, int]) -> Entry | None:
        entry = self._kept.get(key)
        if entry is not None:
            self._kept.move_to_end(key)
        return entry

    def put(self, key: tuple[int, int, int], entry: Entry) -> None:
        self._kept[key] = entry
        self._kept.move_to_end(key)
        while len(self._kept) > 1 and (
            len(self._kept) > self.entries
            or sum(e.parsed.size for e in self._kept.values()) > self.octets
        ):
            self._kept.popitem(last=False)


# -- the pages -------------------------------------------------------------------------------


class NotFound(web.HTTPNotFound):
    def __init__(self) -> None:
        super().__init__(text="No such folder or message.")


def _number(value: str | None, default: int | None = None) -> int:
    """A folder id, UID or part number from a URL; anything else is not found."""
    if value is not None and value.isdigit() and len(value) < 19 and int(value) < MAX_ID:
        return int(value)
    if default is not None:
        return default
    raise NotFound()


def _ref(value: object, parts: int) -> tuple[int, ...] | None:
    """'12:34' (folder:uid) or '12:34:5' (folder:uid:part) from a form or a URL."""
    if not isinstance(value, str):
        return None
    pieces = value.split(":")
    if len(pieces) != parts or not all(p.isdigit() and len(p) < 19 for p in pieces):
        return None
    return tuple(int(p) for p in pieces)


def _size(octets: int) -> str:
    if octets < 1024:
        return f"{octets} B"
    if octets < 1024 * 1024:
        return f"{octets / 1024:.0f} KB"
    return f"{octets / 1024 / 1024:.1f} MB"


def _when(timestamp: int) -> str:
    now = time.localtime()
    then = time.localtime(timestamp)
    if then[:3] == now[:3]:
        return time.strftime("%H:%M", then)
    return time.strftime("%Y-%m-%d", then)


def content_disposition(kind: str, name: str) -> str:
    """RFC 6266: an ASCII fallback and the UTF-8 name (RFC 8187)."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%;' else "_" for c in name)
    encoded = urllib.parse.quote(name, safe="")
    return f"{kind}; filename=\"{fallback or 'download'}\"; filename*=UTF-8''{encoded}"


# Declared types a download keeps; anything else is application/octet-stream,
# so that nothing a browser would render as a document (HTML, SVG, XML) is
# ever served with its own type, even as an attachment.
_DOWNLOAD_TYPES = re.compile(
    r"(image/(png|jpeg|gif|webp|bmp|avif)|application/(pdf|zip|gzip|msword|vnd\.[\w.+-]{1,80})"
    r"|audio/[\w.+-]{1,40}|video/[\w.+-]{1,40}|text/(plain|calendar|csv)|message/rfc822)"
)
# RFC 6839 3.1: a "+xml" suffix is XML (and "+svg" kin), which a browser may
# render as a document (vnd.*+xml included: application/vnd.foo+xml renders
# as XML, scripts of its XHTML/SVG namespaces too); so are HTML-ish suffixes.
_DOCUMENT_SUFFIX = re.compile(r".*\+(xml|html|svg|xhtml)")


def _download_type(ctype: str) -> str:
    if _DOWNLOAD_TYPES.fullmatch(ctype) and not _DOCUMENT_SUFFIX.fullmatch(ctype):
        return ctype
    return "application/octet-stream"


class MailPages:
    def __init__(self, web_: Web) -> None:
        self.web = web_
        server = web_.server
        self.settings = server.settings
        self.store = server.store
        self.directory = web_.directory
        self.reader = IndexReader(self.settings.index_path, threads=2)
        self.submitter = Submitter.shared(self.settings, web_.directory, self.store, server.queue)
        self.readings = Readings()
        self._ready: set[int] = set()
        self._key = secrets.token_bytes(32)  # signs inline image URLs (frames send no cookie)

    def routes(self) -> None:
        page = self.web.page
        page("GET", "/mail", self.index)
        page("GET", "/mail/compose", self.compose)
        page("POST", "/mail/compose", self.compose_post)
        page("GET", r"/mail/{folder:\d+}", self.folder)
        page("POST", r"/mail/{folder:\d+}/selected", self.selected)
        page("GET", r"/mail/{folder:\d+}/{uid:\d+}", self.read)
        page("GET", r"/mail/{folder:\d+}/{uid:\d+}/frame/{part:\d+}", self.frame)
        page("GET", r"/mail/{folder:\d+}/{uid:\d+}/part/{part:\d+}", self.download)
        page("GET", r"/mail/{folder:\d+}/{uid:\d+}/raw", self.raw)
        # Signed URLs: the sandboxed frame fetches images without the session cookie.
        page("GET", r"/mail/{folder:\d+}/{uid:\d+}/inline/{part:\d+}", self.inline, login=False)
        for action in ("flags", "move", "delete", "junk", "notjunk"):
            page("POST", rf"/mail/{{folder:\d+}}/{{uid:\d+}}/{action}", self.act_on_one)

    # -- helpers ------------------------------------------------------------------------

    async def _ready_account(self, account: Account) -> None:
        """The account's Maildir and standard folders exist and are indexed."""
        if account.id not in self._ready:
            await self.store.run(self.store.ensure_account, account)
            self._ready.add(account.id)

    async def _context(self, request: web.Request) -> tuple[Account, list[mi.Folder]]:
        account: Account = request["account"]
        await self._ready_account(account)
        return account, await self.reader.run(mi.folders, account.id)

    async def _usage(self, account: Account) -> quota.Quota:
        """What the account stores, and its limit (read with the request: fresh)."""
        return quota.Quota(await self.reader.run(quota.usage, account.id), account.quota_bytes)

    async def _folder(self, account: Account, folder_id: int) -> mi.Folder:
        folder = await self.reader.run(mi.folder, account.id, folder_id)
        if folder is None:
            raise NotFound()
        return folder

    async def _special(self, account: Account, special_use: str) -> mi.Folder:
        """The account's folder with this special use (RFC 6154); made if missing."""
        folder = await self.reader.run(mi.special, account.id, special_use)
        if folder is None:
            name = special_use.lstrip("\\")
            try:
                await self.store.run(self.store.create_mailbox, account, name, special_use)
            except StoreError:
                pass  # a folder of that name exists, without the special use
            folder = await self.reader.run(mi.special, account.id, special_use)
            if folder is None:
                folder = await self.reader.run(mi.folder_named, account.id, name)
        if folder is None:
            raise web.HTTPInternalServerError(text=f"No {special_use} folder.")
        return folder

    async def _message(self, request: web.Request, account: Account | None = None) -> mi.MessageRow:
        account = account or request["account"]
        assert account is not None
        await self._ready_account(account)
        folder_id = _number(request.match_info["folder"])
        uid = _number(request.match_info["uid"])
        row = await self.reader.run(mi.message, account.id, folder_id, uid)
        if row is None:
            raise NotFound()
        return row

    async def _row_for_ref(self, account: Account, ref: tuple[int, ...]) -> mi.MessageRow | None:
        if any(n >= MAX_ID for n in ref):
            return None
        return await self.reader.run(mi.message, account.id, ref[0], ref[1])

    def _path(self, account: Account, row: mi.MessageRow) -> Path:
        return self.store.account_dir(account) / maildir.folder_dirname(row.folder.name)

    async def _entry(self, account: Account, row: mi.MessageRow) -> Entry:
        key = (row.folder.id, row.uidvalidity, row.uid)
        entry = self.readings.get(key)
        if entry is None:
            folder = self._path(account, row)

            def load() -> mm.Parsed:
                return mm.parse(mm.read_file(folder, row.subdir, row.filename))

            try:
                parsed = await asyncio.to_thread(load)
            except OSError as e:  # expunged meanwhile by another client
                log.info("message file gone folder=%d uid=%d error=%s", row.folder.id, row.uid, e)
                raise NotFound() from None
            entry = Entry(parsed, {})
            self.readings.put(key, entry)
        return entry

    async def _leaf(self, entry: Entry, index: int) -> tuple[Message, str]:
        """Part `index` of a message, if it is one and not a container."""
        parts = await asyncio.to_thread(lambda: entry.parsed.tree)
        if index >= len(parts.parts) or parts.is_container(index):
            raise NotFound()
        return parts.parts[index], parts.types[index]

    def _back(self, request: web.Request, form: Any, folder_id: int) -> str:
        """Where a form came from (a page of this folder's list), else the folder."""
        back = form.get("back")
        here = f"/mail/{folder_id}"
        if not isinstance(back, str) or len(back) > 2000 or not _BACK.fullmatch(back):
            return here
        return back if back == here or back.startswith(here + "?") else here

    # -- folders and lists -----------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        account: Account = request["account"]
        await self._ready_account(account)
        inbox = await self._special(account, "INBOX")
        raise web.HTTPSeeOther(f"/mail/{inbox.id}")

    async def folder(self, request: web.Request) -> web.Response:
        account, folders = await self._context(request)
        folder = next((f for f in folders if f.id == _number(request.match_info["folder"])), None)
        if folder is None:
            raise NotFound()
        q = request.query.get("q", "").strip()[:200]
        sort = request.query.get("sort", "date")
        sort = sort if sort in mi.SORTS else "date"
        default_order = "desc" if sort in ("date", "size") else "asc"
        descending = request.query.get("order", default_order) != "asc"
        page = min(_number(request.query.get("page"), 1) or 1, 10**6)
        query = fts_query(q, "{headers body}") if q else None
        if query is not None:
            # Text search needs every message analysed: finish what delivery deferred.
            while await self.store.run(self.store.analyse_pending, 500, folder.id):
                pass
        total, rows = await self.reader.run(mi.page, folder, sort, descending, page, query)
        pages = max(1, -(-total // mi.PAGE_SIZE))
        if page > pages and total:
            page = pages
            total, rows = await self.reader.run(mi.page, folder, sort, descending, page, query)
        state = {"q": q, "sort": sort, "order": "desc" if descending else "asc"}

        def link(**changes: object) -> str:
            params = {**state, "page": page, **changes}
            params = {k: v for k, v in params.items() if v not in ("", None, 1)}
            return f"/mail/{folder.id}" + (f"?{urllib.parse.urlencode(params)}" if params else "")

        def sort_link(column: str) -> str:
            if column == sort:
                return link(order="asc" if descending else "desc", page=1)
            return link(sort=column, order="desc" if column in ("date", "size") else "asc", page=1)

        return self.web.render(
            request,
            "mail/list.html",
            folders=folders,
            folder=folder,
            rows=rows,
            total=total,
            page=page,
            pages=pages,
            q=q,
            sort=sort,
            descending=descending,
            link=link,
            sort_link=sort_link,
            back=link(),
            when=_when,
            size=_size,
            usage=await self._usage(account),
            done=DONE.get(request.query.get("done", "")),
        )

    # -- reading ------------------------------------------------------------------------------

    async def read(self, request: web.Request) -> web.Response:
        account: Account = request["account"]
        row = await self._message(request, account)
        entry = await self._entry(account, row)
        prefer_html = request.query.get("view") != "text"
        remote = request.query.get("remote") == "1"
        reading = await asyncio.to_thread(mm.read, entry.parsed, prefer_html)
        if "\\Seen" not in row.flags:  # opening a message marks it read
            try:
                await self.store.run(
                    self.store.store_flags, row.folder.id, [row.uid], "+", ["\\Seen"]
                )
                row.flags.append("\\Seen")
            except StoreError:
                pass
        folders = await self.reader.run(mi.folders, account.id)  # the counts, after that
        base = f"/mail/{row.folder.id}/{row.uid}"
        blocks, blocked = [], 0
        for block in reading.blocks:
            part = reading.parts[block.index]
            if block.kind == "text":
                text = await asyncio.to_thread(lambda p=part: _text_html(mm.part_text(p)))
                blocks.append({"kind": "text", "html": text})
            else:
                cleaned = await self._cleaned(request, row, entry, reading, block.index, remote)
                blocked += cleaned.blocked_remote
                src = f"{base}/frame/{block.index}" + ("?remote=1" if remote else "")
                blocks.append({"kind": "html", "src": src, "truncated": cleaned.truncated})
        return self.web.render(
            request,
            "mail/message.html",
            folders=folders,
            folder=row.folder,
            row=row,
            base=base,
            h=reading.headers,
            blocks=blocks,
            blocked=blocked,
            remote=remote,
            prefer_html=prefer_html,
            alternative=reading.alternative,
            attachments=reading.attachments,
            problems=reading.problems,
            size=_size,
            targets=[f for f in folders if f.id != row.folder.id],
            sandbox=FRAME_SANDBOX,
            usage=await self._usage(account),
        )

    async def _cleaned(
        self,
        request: web.Request,
        row: mi.MessageRow,
        entry: Entry,
        reading: mm.Reading,
        index: int,
        remote: bool,
    ) -> CleanResult:
        account: Account = request["account"]
        session: str = request["session"].token_hash
        expires = (int(time.time()) // INLINE_LIFETIME + 2) * INLINE_LIFETIME
        key = (index, remote, expires, session)
        cleaned = entry.cleaned.get(key)
        if cleaned is None:
            part = reading.parts[index]
            images = {
                cid: n
                for cid, n in reading.inline.items()
                if reading.types[n] in mm.INLINE_IMAGE_TYPES
            }

            def cid_url(cid: str) -> str | None:
                n = images.get(cid)
                if n is None:
                    return None
                return self._inline_url(account.id, row.folder.id, row.uid, n, expires, session)

            def clean() -> CleanResult:
                return clean_html(mm.part_text(part), allow_remote=remote, cid_url=cid_url)

            cleaned = await asyncio.to_thread(clean)
            entry.cleaned = {k: v for k, v in entry.cleaned.items() if k[2] == expires}
            entry.cleaned[key] = cleaned
        return cleaned

    def _signature(
        self, account_id: int, folder: int, uid: int, part: int, expires: int, session: str
    ) -> str:
        text = f"{account_id}:{folder}:{uid}:{part}:{expires}:{session}".encode()
        return hmac.new(self._key, text, "sha256").hexdigest()[:32]

    def _inline_url(
        self, account_id: int, folder: int, uid: int, part: int, expires: int, session: str
    ) -> str:
        """Signed, and good while the session lives (`s`: its token's SHA-256, the
        key of web_sessions, which is not the cookie and logs nobody in)."""
        signature = self._signature(account_id, folder, uid, part, expires, session)
        return (f"/mail/{folder}/{uid}/inline/{part}"
                f"?a={account_id}&e={expires}&s={session}&t={signature}")  # fmt: skip

    async def frame(self, request: web.Request) -> web.Response:
        """A text/html part, cleaned, for the sandboxed frame; its own CSP."""
        account: Account = request["account"]
        row = await self._message(request, account)
        entry = await self._entry(account, row)
        index = _number(request.match_info["part"])
        reading = await asyncio.to_thread(mm.read, entry.parsed, True)
        if index >= len(reading.parts) or reading.types[index] != "text/html":
            raise NotFound()
        remote = request.query.get("remote") == "1"
        cleaned = await self._cleaned(request, row, entry, reading, index, remote)
        body = (
            '<!doctype html><html><head><meta charset="utf-8"><title>Message</title>'
            "<style>body{font-family:system-ui,sans-serif;margin:.6rem;color:#1d232a;"
            "background:#fff;overflow-wrap:anywhere}img{max-width:100%;height:auto}</style>"
            f"</head><body>{cleaned.html}</body></html>"
        )
        response = web.Response(text=body, content_type="text/html", charset="utf-8")
        host = request.host or ""
        images = "data:"
        if _HOST.fullmatch(host):
            images += f" {request.scheme}://{host}/mail/{row.folder.id}/{row.uid}/inline/"
        if remote:
            images += " https:"
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; style-src 'unsafe-inline'; img-src {images}; "
            f"base-uri 'none'; form-action 'none'; frame-ancestors 'self'; sandbox {FRAME_SANDBOX}"
        )
        return response

    async def inline(self, request: web.Request) -> web.Response:
        """An image of an HTML part (cid:, RFC 2392), by signed URL."""
        q = request.query
        account_id, expires = _number(q.get("a")), _number(q.get("e"))
        folder, uid = _number(request.match_info["folder"]), _number(request.match_info["uid"])
        index = _number(request.match_info["part"])
        session = q.get("s", "")
        if not re.fullmatch(r"[0-9a-f]{64}", session):
            raise NotFound()
        expected = self._signature(account_id, folder, uid, index, expires, session)
        given = q.get("t", "").encode("utf-8", "replace")
        if expires < time.time() or not hmac.compare_digest(expected.encode(), given):
            raise NotFound()
        live = self.web.sessions.by_hash(session)  # logged out or expired: gone
        account = self.directory.account_by_id(account_id)
        if live is None or live.account_id != account_id or account is None:
            raise NotFound()
        row = await self._message(request, account)
        entry = await self._entry(account, row)
        part, ctype = await self._leaf(entry, index)
        if ctype not in mm.INLINE_IMAGE_TYPES:
            raise NotFound()
        data = await asyncio.to_thread(mm.part_bytes, part)
        response = web.Response(body=data, content_type=ctype)
        response.headers["Content-Disposition"] = "inline"
        response.headers["Cache-Control"] = "private, max-age=3600"
        response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
        return response

    async def download(self, request: web.Request) -> web.Response:
        """An attachment (any leaf part): always a download, never rendered here."""
        account: Account = request["account"]
        row = await self._message(request, account)
        entry = await self._entry(account, row)
        index = _number(request.match_info["part"])
        part, ctype = await self._leaf(entry, index)
        data = await asyncio.to_thread(mm.part_bytes, part)
        name = mm.filename(part, index, ctype)
        return _attachment_response(data, _download_type(ctype), name)

    async def raw(self, request: web.Request) -> web.Response:
        """The whole message as stored (.eml)."""
        account: Account = request["account"]
        row = await self._message(request, account)
        folder = self._path(account, row)
        try:
            data = await asyncio.to_thread(mm.read_file, folder, row.subdir, row.filename)
        except OSError:
            raise NotFound() from None
        entry = await self._entry(account, row)
        subject = mm.header(entry.parsed.message, "subject")[:80] or f"message-{row.uid}"
        name = mm.safe_filename(subject + ".eml", "message/rfc822", row.uid)
        return _attachment_response(data, "message/rfc822", name)

    # -- changes ----------------------------------------------------------------------------

    async def act_on_one(self, request: web.Request) -> web.Response:
        account: Account = request["account"]
        row = await self._message(request, account)
        form = await request.post()
        action = request.path.rsplit("/", 1)[1]
        if action == "flags":
            action = str(form.get("do", ""))
            if action not in ("read", "unread", "flag", "unflag"):
                raise web.HTTPBadRequest(text="Unknown action.")
        done = await self._apply(account, row.folder, [row.uid], action, form.get("target"))
        if action in ("read", "flag", "unflag"):
            raise web.HTTPSeeOther(f"/mail/{row.folder.id}/{row.uid}")
        raise web.HTTPSeeOther(f"/mail/{row.folder.id}?done={done}")

    async def selected(self, request: web.Request) -> web.Response:
        account: Account = request["account"]
        await self._ready_account(account)
        folder = await self._folder(account, _number(request.match_info["folder"]))
        form = await request.post()
        action = str(form.get("do", ""))
        if action not in ACTIONS:
            raise web.HTTPBadRequest(text="Unknown action.")
        uids = sorted({_number(str(u)) for u in form.getall("uid", [])})[:10_000]
        back = self._back(request, form, folder.id)
        if not uids:
            raise web.HTTPSeeOther(back)
        done = await self._apply(account, folder, uids, action, form.get("target"))
        raise web.HTTPSeeOther(back + ("&" if "?" in back else "?") + f"done={done}")

    async def _apply(
        self, account: Account, folder: mi.Folder, uids: list[int], action: str, target: object
    ) -> str:
        """One action on messages of `folder` (the account's own: checked by the
        caller); UIDs not in the folder are skipped by the store. Returns the
        DONE key."""
        store = self.store
        flag = {"read": "\\Seen", "unread": "\\Seen", "flag": "\\Flagged", "unflag": "\\Flagged"}
        try:
            if action in flag:
                mode = "+" if action in ("read", "flag") else "-"
                await store.run(store.store_flags, folder.id, uids, mode, [flag[action]])
                return "flags"
            if action == "delete":
                if folder.special_use == "\\Trash":  # from Trash: for good
                    await store.run(store.expunge, folder.id, uids)
                else:
                    trash = await self._special(account, "\\Trash")
                    await store.run(store.move, folder.id, uids, trash.id)
                return "deleted"
            if action in ("junk", "notjunk"):
                # MailboxOps.move trains the filter on the way into or out of Junk.
                use = "\\Junk" if action == "junk" else "INBOX"
                destination = await self._special(account, use)
                if destination.id != folder.id:
                    await store.run(store.move, folder.id, uids, destination.id)
                return action
            if action == "move":
                target_id = _ref(target, 1)
                if target_id is None:
                    raise web.HTTPBadRequest(text="Choose a folder.")
                destination = await self._folder(account, target_id[0])
                if destination.id != folder.id:
                    await store.run(store.move, folder.id, uids, destination.id)
                return "moved"
        except StoreError as e:
            log.info("store refused action=%s folder=%d error=%s", action, folder.id, e)
            raise NotFound() from None
        raise web.HTTPBadRequest(text="Unknown action.")

    # -- writing --------------------------------------------------------------------------------

    async def compose(self, request: web.Request) -> web.Response:
        account, folders = await self._context(request)
        q = request.query
        draft = mc.Draft(to=q.get("to", "")[:1000])
        for mode in ("reply", "replyall", "forward", "attach", "draft"):
            if mode not in q:
                continue
            ref = _ref(q.get(mode), 2)
            row = await self._row_for_ref(account, ref) if ref is not None else None
            if row is None:
                raise NotFound()
            entry = await self._entry(account, row)
            reading = await asyncio.to_thread(mm.read, entry.parsed, False)
            text_ref = f"{row.folder.id}:{row.uid}"
            mine = {account.address.lower()}
            if mode in ("reply", "replyall"):
                draft = await asyncio.to_thread(mc.reply, reading, text_ref, mine,
                                                mode == "replyall")  # fmt: skip
            elif mode in ("forward", "attach"):
                draft = await asyncio.to_thread(mc.forward, reading, text_ref, mode == "attach")
            else:
                draft = await asyncio.to_thread(mc.reopen, reading, text_ref)
            break
        return await self._compose_page(request, folders, draft, None,
                                        done=DONE.get(q.get("done", "")))  # fmt: skip

    async def _compose_page(
        self,
        request: web.Request,
        folders: list[mi.Folder],
        draft: mc.Draft,
        error: str | None,
        status: int = 200,
        done: str | None = None,
    ) -> web.Response:
        return self.web.render(
            request,
            "mail/compose.html",
            status=status,
            folders=folders,
            folder=None,
            draft=draft,
            error=error,
            done=done,
            size=_size,
            usage=await self._usage(request["account"]),
        )

    async def compose_post(self, request: web.Request) -> web.Response:
        account, folders = await self._context(request)
        form = await request.post()

        def text(name: str, limit: int = 20_000) -> str:
            value = form.get(name, "")
            return value[:limit] if isinstance(value, str) else ""

        draft = mc.Draft(
            to=text("to"), cc=text("cc"), bcc=text("bcc"), subject=text("subject", 1000),
            body=text("body", 5_000_000), in_reply_to=text("in_reply_to", 1000),
            references=text("references", 10_000), attach_message=text("attach_message", 100),
            attach_name=text("attach_name", 200), replied=text("replied", 100),
            draft=text("draft", 100),
        )  # fmt: skip
        sending = form.get("action") == "send"
        try:
            uploads = await self._uploads(account, form, draft)
            forwarded = await self._forwarded(account, draft)
            domain = account.domain
            message_id = f"<{secrets.token_hex(12)}@{domain}>"
            data = await asyncio.to_thread(
                mc.build, account.address, draft, uploads, forwarded, message_id=message_id
            )
            if len(data) > self.settings.smtp.max_message_size:
                raise mc.ComposeError(
                    f"The message is too large ({_size(len(data))};"
                    f" at most {_size(self.settings.smtp.max_message_size)})."
                )
            if sending:
                await self._send(request, account, draft, data)
            else:
                return await self._save_draft(account, draft, data)
        except (mc.ComposeError, SubmissionRefused) as e:
            message = e.text if isinstance(e, SubmissionRefused) else str(e)
            if uploads_lost(form):
                message += " Attach your files again."
            return await self._compose_page(request, folders, draft, message, status=400)
        done = await self._after_send(account, draft, data)
        inbox = await self._special(account, "INBOX")
        raise web.HTTPSeeOther(f"/mail/{inbox.id}?done={done}")

    async def _uploads(self, account: Account, form: Any, draft: mc.Draft) -> list[mc.Upload]:
        """The files uploaded with the form, and the kept attachments of the
        forwarded message or of the draft (each checked to be the account's)."""
        uploads = []
        for item in form.getall("attachment", []):
            if isinstance(item, web.FileField) and item.filename:
                ctype = (item.content_type or "").split(";")[0].strip().lower()
                if not _MEDIA_TYPE.fullmatch(ctype):
                    ctype = "application/octet-stream"
                name = mm.safe_filename(item.filename, ctype, len(uploads))
                # Read by mc.build a slice at a time (web/body.py spooled it to disk).
                uploads.append(mc.Upload(name, ctype, file=item.file))
        for value in form.getall("keep", []):
            ref = _ref(value, 3)
            row = await self._row_for_ref(account, ref) if ref is not None else None
            if ref is None or row is None:
                raise mc.ComposeError("An attachment to keep is no longer there.")
            entry = await self._entry(account, row)
            try:
                part, ctype = await self._leaf(entry, ref[2])
            except NotFound:
                raise mc.ComposeError("An attachment to keep is no longer there.") from None
            data = await asyncio.to_thread(mm.part_bytes, part)
            name = mm.filename(part, ref[2], ctype)
            uploads.append(mc.Upload(name, ctype, data))
            draft.kept.append(mc.Kept(value, name, ctype, len(data)))
        return uploads

    async def _forwarded(self, account: Account, draft: mc.Draft) -> Message | None:
        if not draft.attach_message:
            return None
        ref = _ref(draft.attach_message, 2)
        row = await self._row_for_ref(account, ref) if ref is not None else None
        if row is None:
            raise mc.ComposeError("The message to forward is no longer there.")
        return (await self._entry(account, row)).parsed.message

    async def _send(
        self, request: web.Request, account: Account, draft: mc.Draft, data: bytes
    ) -> None:
        """Through the submission path (smtp/submission.py), as SMTP would."""
        recipients: dict[str, str] = {}
        for value, name in ((draft.to, "To"), (draft.cc, "Cc"), (draft.bcc, "Bcc")):
            for address in mc.parse_addresses(value, name):
                recipients.setdefault(address.addr_spec.lower(), address.addr_spec)
        if not recipients:
            raise mc.ComposeError("Add at least one recipient.")
        queue_id = secrets.token_hex(6).upper()
        trace = self.submitter.trace_headers(
            client=request.remote or "unknown", protocol="HTTPSA", queue_id=queue_id,
            recipients=list(recipients.values()), mail_from=account.address,
        )  # fmt: skip
        message = Incoming(self.settings.spool_dir / "incoming")
        try:
            await asyncio.to_thread(_fill, message, trace, mc.without_bcc(data))
            await self.submitter.submit(
                account, message, account.address, list(recipients.values()),
                client=request.remote or "unknown", queue_id=queue_id, trace_length=len(trace),
            )  # fmt: skip
        finally:
            message.discard()
        log.info("webmail sent account=%s queue_id=%s recipients=%d size=%d",
                 account.address, queue_id, len(recipients), len(data))  # fmt: skip

    async def _after_send(self, account: Account, draft: mc.Draft, data: bytes) -> str:
        """The Sent copy, the original's \\Answered or $Forwarded, the draft gone.
        The message is sent already: a failure here is logged, not shown, but
        for a Sent copy over quota. Returns the DONE key to show."""
        store = self.store
        done = "sent"
        try:
            sent = await self._special(account, "\\Sent")
            try:
                await store.run(store.append, sent.id, data, ["\\Seen"], None, account.quota_bytes)
            except StoreError as e:
                if e.code != "OVERQUOTA":
                    raise
                log.info("sent copy over quota account=%s", account.address)
                done = "sent_nocopy"
            replied = draft.replied.rsplit(":", 1)
            ref = _ref(replied[0], 2) if len(replied) == 2 else None
            if ref is not None and replied[1] in ("\\Answered", "$Forwarded"):
                row = await self._row_for_ref(account, ref)
                if row is not None:
                    await store.run(store.store_flags, row.folder.id, [row.uid], "+",
                                    [replied[1]])  # fmt: skip
            await self._drop_draft(account, draft)
        except (StoreError, OSError, web.HTTPException):
            log.exception("after sending account=%s", account.address)
        return done

    async def _drop_draft(self, account: Account, draft: mc.Draft) -> None:
        ref = _ref(draft.draft, 2)
        row = await self._row_for_ref(account, ref) if ref is not None else None
        if row is not None and row.folder.special_use == "\\Drafts":
            await self.store.run(self.store.expunge, row.folder.id, [row.uid])

    async def _save_draft(self, account: Account, draft: mc.Draft, data: bytes) -> web.Response:
        store = self.store
        drafts = await self._special(account, "\\Drafts")
        try:
            _, uid = await store.run(
                store.append, drafts.id, data, ["\\Draft", "\\Seen"], None, account.quota_bytes
            )
        except StoreError as e:
            if e.code != "OVERQUOTA":
                raise
            usage = await self._usage(account)
            raise mc.ComposeError(
                f"Your mailbox is full ({_size(usage.used)} of {_size(usage.limit)} used):"
                " the draft was not saved. Delete some mail, empty the Trash, and save again."
            ) from None
        await self._drop_draft(account, draft)
        raise web.HTTPSeeOther(f"/mail/compose?draft={drafts.id}:{uid}&done=saved")


def _fill(message: Incoming, trace: bytes, data: bytes) -> None:
    message.write(trace)
    message.write(data)


def uploads_lost(form: Any) -> bool:
    return any(isinstance(f, web.FileField) and f.filename for f in form.getall("attachment", []))


def _text_html(text: str) -> str:
    """sanitize.text_to_html: a <div class="mail-text"> (style.css)."""
    return text_to_html(text)


def _attachment_response(data: bytes, ctype: str, name: str) -> web.Response:
    response = web.Response(body=data, content_type=ctype)
    response.headers["Content-Disposition"] = content_disposition("attachment", name)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response.headers["Cache-Control"] = "private, no-store"
    return response
