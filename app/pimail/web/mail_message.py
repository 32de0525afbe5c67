"""Reading one stored message for the webmail: its MIME tree (the stdlib
`email` package, policy.default), what to show (text and HTML blocks), what to
list (attachments), and the octets of any one part (inline images, downloads).

No I/O but `read_file`, and nothing here trusts the message: the parser never
raises on malformed MIME (it records defects), and everything after it is
defensive, because a header that cannot be parsed, a charset nobody knows, a
multipart without its boundary or a thousand nested parts must still render
something. The handlers (web/mail.py) run these functions in a worker thread:
a 2 MB message is parsed once and kept (the handlers' cache), never re-read
per part.

Parts are numbered in depth-first order of the tree, not descending into
attached messages (message/rfc822 is one part, downloadable as .eml); the
numbers are stable for the same octets, so URLs can name parts by number.
"""

from __future__ import annotations

import codecs
import email.policy
import email.utils
import html
import mimetypes
import os
import re
import unicodedata
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.parser import BytesParser
from pathlib import Path

from ..store import headers, maildir
from ..store.analyze import decode_words

MAX_DEPTH = 40  # multipart nesting we follow
MAX_PARTS = 500  # parts we look at in one message
MAX_HEADER_SHOWN = 4000  # characters of one header value on the page
MAX_PARSE = 64 * 1024 * 1024  # larger messages: headers only, and the download


@dataclass
class Attachment:
    index: int
    filename: str
    content_type: str
    size: int  # decoded octets (estimated from the encoded size)

    @property
    def is_image(self) -> bool:
        return self.content_type in INLINE_IMAGE_TYPES


@dataclass
class Block:
    """Something shown in the reading view: a text part (as HTML already, from
    sanitize.text_to_html) or an HTML part (shown in a sandboxed frame)."""

    kind: str  # "text" or "html"
    index: int


@dataclass
class Reading:
    message: EmailMessage
    parts: list[Message]  # by part number
    types: list[str]  # their content types
    headers: dict[str, str]  # decoded: from, to, cc, date, subject, reply-to
    blocks: list[Block]
    attachments: list[Attachment]
    inline: dict[str, int]  # Content-ID (no <>) -> part number
    alternative: bool  # a text/plain alternative to the HTML exists (or the reverse)
    problems: list[str] = field(default_factory=list)  # for the reader: what was odd
    size: int = 0  # octets of the file


# Images a browser may show from an <img> (never SVG: it is a document).
INLINE_IMAGE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/avif"}
)
_PARSER = BytesParser(policy=email.policy.default)


def read_file(folder: Path, subdir: str, filename: str) -> bytes:
    """The message file; if a flag change renamed it meanwhile (new/ -> cur/,
    other letters), the file with the same unique base."""
    try:
        return (folder / subdir / filename).read_bytes()
    except FileNotFoundError:
        base = maildir.parse_name(filename).base
        for sub in ("cur", "new"):
            for name in os.listdir(folder / sub):
                if name.split(":2,")[0] == base:
                    return (folder / sub / name).read_bytes()
        raise


@dataclass
class Parsed:
    """A parsed message, as the handlers keep it between requests."""

    message: EmailMessage
    size: int  # octets of the file
    problems: list[str] = field(default_factory=list)
    _tree: Tree | None = None

    @property
    def tree(self) -> Tree:
        if self._tree is None:  # two threads may both build it: the same result
            self._tree = tree(self.message)
        return self._tree


def parse(data: bytes) -> Parsed:
    """Parse a message; never raises on content (a message the parser cannot
    take at all comes back as its text, with a problem noted)."""
    problems = []
    try:
        if len(data) > MAX_PARSE:
            message = _PARSER.parsebytes(data[: headers.header_end(data)])
            message.set_payload("")
            problems.append("This message is too large to show here: download it.")
        else:
            message = _PARSER.parsebytes(data)
    except Exception:  # the parser's own limits (recursion, memory): show the octets
        message = EmailMessage(policy=email.policy.default)
        message.set_content(data[:1_000_000].decode("utf-8", "replace"))
        problems.append("This message could not be parsed; its raw text follows.")
    return Parsed(message, len(data), problems)


def read(parsed: Parsed, prefer_html: bool = True) -> Reading:
    """What to show of a parsed message (cheap: the parse is the costly part)."""
    try:
        reading = _reading(parsed, prefer_html)
    except Exception:  # a tree the walk cannot take: the headers, and no body
        empty = EmailMessage(policy=email.policy.default)
        empty.set_content("")
        reading = _reading(Parsed(empty, 0), prefer_html)
        reading.headers = {name: header(parsed.message, name) for name in SHOWN_HEADERS}
        reading.problems.append("The structure of this message could not be read.")
    reading.problems[:0] = parsed.problems
    reading.size = parsed.size
    return reading


@dataclass
class Tree:
    """The parts of a message, numbered depth first (containers too, not inside
    attached messages, at most MAX_PARTS), with their content types read once:
    policy.default parses a header at every access, which for a message of
    many parts costs more than the parse itself."""

    parts: list[Message]
    types: list[str]
    children: dict[int, list[int]]  # part number of a container -> its parts' numbers

    def is_container(self, index: int) -> bool:
        return index in self.children

    def descendants(self, index: int) -> list[int]:
        out, stack = [], list(self.children.get(index, ()))
        while stack:
            i = stack.pop()
            out.append(i)
            stack.extend(self.children.get(i, ()))
        return out


def tree(message: Message) -> Tree:
    parts: list[Message] = []
    types: list[str] = []
    children: dict[int, list[int]] = {}
    stack: list[tuple[Message, int, int | None]] = [(message, 0, None)]
    while stack and len(parts) < MAX_PARTS:
        part, depth, parent = stack.pop()
        index = len(parts)
        parts.append(part)
        types.append(_content_type(part))
        if parent is not None:
            children[parent].append(index)
        payload = part.get_payload()
        if types[index].startswith("multipart/") and isinstance(payload, list):
            children[index] = []
            if depth < MAX_DEPTH:
                kids = [c for c in payload if isinstance(c, Message)]
                stack.extend((c, depth + 1, index) for c in reversed(kids))
    return Tree(parts, types, children)


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:
        return "application/octet-stream"


def _reading(parsed: Parsed, prefer_html: bool) -> Reading:
    t = parsed.tree
    shown: list[int] = []
    related: set[int] = set()  # parts of the HTML (related, not its root), other versions
    _body(t, 0, prefer_html, 0, shown, related)
    blocks = [Block("html" if t.types[i] == "text/html" else "text", i) for i in shown]
    inline: dict[str, int] = {}
    for i, part in enumerate(t.parts):
        cid = _content_id(part)
        if cid and cid not in inline:
            inline[cid] = i
    attachments = []
    for i, part in enumerate(t.parts):
        if i in shown or t.types[i].startswith("multipart/"):
            continue
        if i in related and (_content_id(part) or t.types[i] in ("text/plain", "text/html")):
            continue  # an image of the HTML (shown through cid:), or another version
        attachments.append(describe(part, i, t.types[i]))
    problems = []
    if any(p.defects for p in t.parts):
        problems.append("This message is malformed; what could be read is shown.")
    if len(t.parts) >= MAX_PARTS:
        problems.append(f"Only the first {MAX_PARTS} parts are shown.")
    return Reading(
        message=parsed.message,
        parts=t.parts,
        types=t.types,
        headers={name: header(parsed.message, name) for name in SHOWN_HEADERS},
        blocks=blocks,
        attachments=attachments,
        inline=inline,
        alternative=_has_alternative(t),
        problems=problems,
    )


SHOWN_HEADERS = ("from", "to", "cc", "date", "subject", "reply-to")


def _disposition(part: Message) -> str:
    try:
        return (part.get_content_disposition() or "").lower()
    except Exception:
        return ""


def _is_attachment(t: Tree, index: int) -> bool:
    ctype = t.types[index]
    if ctype.startswith("multipart/"):
        return False  # a container, or a broken one (no boundary): shown as text
    if _disposition(t.parts[index]) == "attachment":
        return True
    return ctype not in ("text/plain", "text/html")


def _body(
    t: Tree, index: int, prefer_html: bool, depth: int, shown: list[int], related: set[int]
) -> None:
    """RFC 2046 5.1: what to show of part `index`, appended to `shown`."""
    ctype = t.types[index]
    part = t.parts[index]
    if not t.is_container(index):
        if ctype.startswith("multipart/"):  # without its parts (no boundary): its text
            payload = part.get_payload()
            if isinstance(payload, str) and payload.strip():
                shown.append(index)
        elif not _is_attachment(t, index) or (depth == 0 and ctype.startswith("text/")):
            shown.append(index)
        return
    kids = t.children[index]
    if not kids:
        return
    if ctype == "multipart/alternative":
        choice = _pick_alternative(t, kids, prefer_html)
        for kid in kids:  # the versions not shown are not attachments either
            if kid != choice:
                related.update([kid, *t.descendants(kid)])
        if choice is not None:
            _body(t, choice, prefer_html, depth + 1, shown, related)
    elif ctype == "multipart/related":  # RFC 2387: the root, its resources through cid:
        root = kids[0]
        start = part.get_param("start")
        if isinstance(start, str):
            wanted = start.strip().strip("<>")
            root = next((k for k in kids if _content_id(t.parts[k]) == wanted), root)
        related.update(k for k in kids if k != root)
        _body(t, root, prefer_html, depth + 1, shown, related)
    else:  # mixed, and anything unknown (RFC 2046 5.1.7: treat as mixed)
        for kid in kids:
            if t.is_container(kid) or not _is_attachment(t, kid):
                _body(t, kid, prefer_html, depth + 1, shown, related)


def _flavour(t: Tree, index: int) -> str:
    inside = {t.types[i] for i in [index, *t.descendants(index)]}
    if "text/html" in inside:
        return "html"
    if "text/plain" in inside:
        return "text"
    return "other"


def _pick_alternative(t: Tree, kids: list[int], prefer_html: bool) -> int | None:
    """The last alternative of the preferred kind (RFC 2046 5.1.4: the last is
    the richest), else the last of the other kind."""
    order = ("html", "text") if prefer_html else ("text", "html")
    for kind in order:
        for kid in reversed(kids):
            if _flavour(t, kid) == kind:
                return kid
    return None


def _has_alternative(t: Tree) -> bool:
    for index, kids in t.children.items():
        flavours = {_flavour(t, k) for k in kids}
        if t.types[index] == "multipart/alternative" and {"html", "text"} <= flavours:
            return True
    return False


def _content_id(part: Message) -> str:
    value = _raw_header(part, "content-id")
    return value.strip().strip("<>").strip() if value else ""


# -- headers ---------------------------------------------------------------------------


def _raw_header(part: Message, name: str) -> str:
    """A header's value as it is in the message (unfolded), without parsing it."""
    for key, value in part.raw_items():
        if key.lower() == name:
            return re.sub(r"\r?\n[ \t]", " ", str(value))
    return ""


def header(message: Message, name: str) -> str:
    """A header's value, decoded (RFC 2047), for people; '' if absent. A value
    the structured parser cannot take falls back to its raw text."""
    try:
        value = message.get(name)
        text = "" if value is None else str(value)
    except Exception:
        text = decode_words(_raw_header(message, name))
    text = "".join(c if c.isprintable() or c == " " else " " for c in text)
    return text[:MAX_HEADER_SHOWN]


def addresses(message: Message, *names: str) -> list[tuple[str, str]]:
    """(display name, address) pairs of the named headers, that have an '@'."""
    out = []
    for name in names:
        for display, address in email.utils.getaddresses([header(message, name)]):
            if "@" in address:
                out.append((display, address))
    return out


def raw_ids(message: Message, name: str) -> str:
    """A header of message ids (Message-ID, References, In-Reply-To), raw and
    unfolded: ids are ASCII (RFC 5322 3.6.4)."""
    value = _raw_header(message, name)
    return " ".join(re.findall(r"<[^<>\s]{1,250}>", value))


# -- part contents -----------------------------------------------------------------------


def part_bytes(part: Message) -> bytes:
    """The decoded octets of a leaf part (a message/rfc822 part: the message)."""
    if part.get_content_type() == "message/rfc822" or part.is_multipart():
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            try:
                return payload[0].as_bytes(policy=email.policy.SMTP)
            except Exception:
                return payload[0].as_bytes(policy=email.policy.compat32.clone(linesep="\r\n"))
        return b""
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes):
        return data
    payload = part.get_payload()
    return payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""


def part_text(part: Message) -> str:
    """A text part's text: its declared charset, else UTF-8, else Latin-1 (never fails)."""
    data = part_bytes(part)
    try:
        declared = part.get_content_charset() or "utf-8"
    except Exception:
        declared = "utf-8"
    candidates = [declared, "utf-8"] if declared not in ("us-ascii", "ascii") else ["utf-8"]
    for charset in candidates:
        try:
            codecs.lookup(charset)
            return data.decode(charset)
        except (LookupError, UnicodeDecodeError, ValueError):
            continue
    return data.decode("windows-1252", "replace")


def describe(part: Message, index: int, ctype: str) -> Attachment:
    return Attachment(index, filename(part, index, ctype), ctype, _size(part, ctype))


def _size(part: Message, ctype: str) -> int:
    if ctype == "message/rfc822" or part.is_multipart():
        return len(part_bytes(part))
    payload = part.get_payload()
    if not isinstance(payload, str):
        return 0
    if (part.get("content-transfer-encoding") or "").strip().lower() == "base64":
        return len(payload.replace("\n", "").replace("\r", "")) * 3 // 4
    return len(payload)


def filename(part: Message, index: int, ctype: str) -> str:
    """The part's file name (RFC 2183, 2231), made safe for a download: no
    directories, no control characters; a name from the type if there is none."""
    try:
        name = part.get_filename() or ""
    except Exception:
        name = ""
    if not name and ctype == "message/rfc822":
        inner = part.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            subject = header(inner[0], "subject")[:80].strip()
            name = subject + ".eml" if subject else ""
    return safe_filename(name, ctype, index)


def safe_filename(name: str, ctype: str, index: int) -> str:
    name = unicodedata.normalize("NFC", name)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable() and c not in '<>:"|?*')
    name = name.strip(" .")[:150]
    if not name:
        ext = ".eml" if ctype == "message/rfc822" else (mimetypes.guess_extension(ctype) or ".bin")
        name = f"part-{index}{ext}"
    return name


# -- plain text from HTML (for quoting in replies) ------------------------------------

_DROP = re.compile(r"<(script|style|head|title)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_BREAKS = re.compile(r"<\s*(br|/p|/div|/tr|/li|/h[1-6]|/blockquote)\b[^>]*>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")


def html_to_text(markup: str) -> str:
    text = _DROP.sub("", markup[:2_000_000])
    text = _BREAKS.sub("\n", text)
    text = html.unescape(_TAG.sub("", text))
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def plain_body(reading: Reading) -> str:
    """The message's text, for quoting: its text parts, or its HTML as text."""
    texts = []
    for block in reading.blocks:
        part = reading.parts[block.index]
        text = part_text(part)
        texts.append(html_to_text(text) if block.kind == "html" else text)
    if not texts:  # HTML only inside an alternative we skipped: try the text one
        for part, ctype in zip(reading.parts, reading.types, strict=True):
            if ctype == "text/plain" and _disposition(part) != "attachment":
                texts.append(part_text(part))
                break
    return "\n\n".join(t.replace("\r\n", "\n") for t in texts)
