"""What the index learns from a message's content, once, after delivery.

For IMAP: the MIME structure (JSON), ENVELOPE and BODYSTRUCTURE as wire
octets, so a first sync of a big folder reads the index and no files. For
search: the text of the message for SQLite FTS5 (decoded header fields, and
the text/plain and text/html parts decoded and stripped of markup), so a
body search does not read every file.

Pure function of the message octets; the store runs it on its writer thread
after the 250 (it never delays an acknowledgement).
"""

from __future__ import annotations

import email.header
import html
import re
from dataclasses import dataclass

from ..imap import mime
from ..imap.mime_header import text as header_text

MAX_TEXT = 256 * 1024  # characters of body text indexed per message
_TAGS = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")
_SEARCH_HEADERS = (b"subject", b"from", b"to", b"cc", b"bcc", b"reply-to", b"sender")


@dataclass
class Analysis:
    structure: str
    envelope: bytes
    bodystructure: bytes
    headers: str  # decoded header text for TEXT searches
    body: str  # decoded body text for BODY/TEXT searches


def analyze(data: bytes) -> Analysis:
    struct = mime.parse(data)
    return Analysis(
        structure=struct.to_json(),
        envelope=mime.envelope(struct, data),
        bodystructure=mime.bodystructure(struct, data, True),
        headers=_headers_text(data, struct.root),
        body=_body_text(data, struct.root),
    )


def decode_words(value: str) -> str:
    """RFC 2047 encoded words to text, leniently."""
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def _headers_text(data: bytes, root: mime.Part) -> str:
    from ..imap import mime_header as hdr

    header_end = hdr.split_header(data, root.start, root.end)[0]
    spans = hdr.field_spans(data, root.start, header_end, list(_SEARCH_HEADERS))
    out = []
    for start, end in spans:
        line = header_text(hdr.unfold(data[start:end]))
        out.append(decode_words(line.partition(":")[2].strip()))
    return "\n".join(out)


def _body_text(data: bytes, root: mime.Part) -> str:
    out: list[str] = []
    size = 0
    for part in _leaves(root):
        if part.type != "text" or part.subtype not in ("plain", "html") or part.opaque:
            continue
        if part.disposition and part.disposition.lower() == "attachment":
            continue
        try:
            raw = mime.decode_transfer_encoding(data[part.body_start : part.end], part.encoding)
        except mime.UnknownCTEError:
            continue
        charset = (part.param("charset") or "utf-8").strip("\"'").lower()
        try:
            text = raw.decode(charset, "replace")
        except LookupError:
            text = raw.decode("utf-8", "replace")
        if part.subtype == "html":
            text = html.unescape(_TAGS.sub(" ", text))
        text = _SPACE.sub(" ", text)
        out.append(text[: MAX_TEXT - size])
        size += len(out[-1])
        if size >= MAX_TEXT:
            break
    return "\n".join(out)


def _leaves(part: mime.Part) -> list[mime.Part]:
    stack, leaves = [part], []
    while stack:
        p = stack.pop()
        if p.message is not None:
            stack.append(p.message)
        elif p.parts:
            stack.extend(reversed(p.parts))
        else:
            leaves.append(p)
    return leaves
