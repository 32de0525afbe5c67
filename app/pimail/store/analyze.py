"""What the index learns from a message's content, once, after delivery.

For IMAP: the MIME structure (JSON), ENVELOPE and BODYSTRUCTURE as wire
octets, so a first sync of a big folder reads the index and no files. For
search: the text of the message for the text index (store/textindex.py):
every header field, decoded, and the text/* parts decoded (HTML stripped of
markup), so that SEARCH reads no file.

Decoding is tolerant of any octets (real mail has raw 8-bit headers, wrong
and unknown charsets, NULs): a text is decoded with the declared charset,
then UTF-8, then cp1252 (latin-1 for its five holes), never raising, and no
surrogate or NUL reaches SQLite (`textindex.clean`).

Pure functions of the message octets; the store runs them on its writer
thread after the 250 (they never delay an acknowledgement).
"""

from __future__ import annotations

import binascii
import codecs
import functools
import html
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..mime import structure as mime
from . import headers as header_fields
from .textindex import clean, fold, fold_lines

MAX_TEXT = 256 * 1024  # characters of body text indexed per message
MAX_HEADER_TEXT = 64 * 1024  # characters of header text indexed per message
MAX_FIELD_TEXT = 8 * 1024  # characters of one header field's value
_TAGS = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.IGNORECASE | re.DOTALL)
_ADDRESS_FIELDS = {
    b"from",
    b"to",
    b"cc",
    b"bcc",
    b"reply-to",
    b"sender",
    b"resent-from",
    b"resent-to",
    b"resent-cc",
    b"resent-bcc",
    b"resent-sender",
}
# Signatures (RFC 6376 3.5, RFC 8617 4.1): their b= and bh= values are base64
# noise nobody searches for, a sixth of a typical header's text, and the most
# costly kind for a trigram index (every trigram new). The other tags stay.
_SIGNATURE_FIELDS = {b"dkim-signature", b"arc-seal", b"arc-message-signature"}
_SIGNATURE_DATA = re.compile(r"\b(bh?)=[^;]*")
# Declared charsets read as the superset mail clients use (WHATWG Encoding).
_SUPERSETS = {
    "iso8859-1": "cp1252",
    "ascii": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "big5": "big5hkscs",
    "shift_jis": "cp932",
    "euc_kr": "cp949",
}
# Charsets whose text may be all octets below 128 and still not ASCII (RFC 1468
# ISO-2022-JP: escape sequences; UTF-7; UTF-16 and -32 with their NULs).
_SEVEN_BIT = {
    "iso2022_jp", "iso2022_jp_1", "iso2022_jp_2", "iso2022_jp_2004", "iso2022_jp_3",
    "iso2022_jp_ext", "iso2022_kr", "hz", "utf-7", "utf-16", "utf-16-le", "utf-16-be",
    "utf-32", "utf-32-le", "utf-32-be",
}  # fmt: skip
# Text codecs that are not charsets: they turn escapes into characters.
_NOT_CHARSETS = {"unicode-escape", "raw-unicode-escape", "punycode", "idna"}


@dataclass
class Analysis:
    structure: str
    envelope: bytes
    bodystructure: bytes
    headers: str  # folded header lines for TEXT and header searches
    body: str  # folded body text for BODY/TEXT searches


def analyze(data: bytes) -> Analysis:
    struct = mime.parse(data)
    charset = _declared_charset(struct.root)
    return Analysis(
        structure=struct.to_json(),
        envelope=mime.envelope(struct, data),
        bodystructure=mime.bodystructure(struct, data, True),
        headers=headers_text(data[struct.root.start : struct.root.body_start], charset),
        body=_body_text(data, struct.root, charset),
    )


def fallback_text(data: bytes) -> tuple[str, str]:
    """(headers, body) for the index without the MIME parser: the header block,
    and the rest decoded as one text. For a message whose analysis failed."""
    end = header_fields.header_end(data)
    body = decode_text(data[end : end + MAX_TEXT], ())
    return headers_text(data[:end], None), fold(body)[:MAX_TEXT]


# --- charsets ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _codec(charset: str | None) -> str | None:
    if not charset:
        return None
    name = charset.strip().strip("\"'").split("*", 1)[0]  # RFC 2231 language suffix
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        return None
    return _SUPERSETS.get(info.name, info.name)


def decode_text(raw: bytes, charsets: Iterable[str | None]) -> str:
    """Octets as text: the first of `charsets` that decodes them strictly, then
    UTF-8, then cp1252 (latin-1 where cp1252 has no character). Never raises."""
    if raw.isascii() and not any(_codec(c) in _SEVEN_BIT for c in charsets):
        text = raw.decode("ascii")
        return text.replace("\x00", "\ufffd") if "\x00" in text else text
    tried = set()
    for charset in (*charsets, "utf-8"):
        codec = _codec(charset)
        if codec is None or codec in tried:
            continue
        tried.add(codec)
        try:
            return clean(raw.decode(codec))
        except Exception:  # a codec may raise anything on any octets
            continue
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


# --- header fields ------------------------------------------------------------------

# RFC 2047 2: encoded-word = "=?" charset "?" encoding "?" encoded-text "?="
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
# RFC 2047 6.2: white space between adjacent encoded words is not displayed.
_BETWEEN_WORDS = re.compile(r"(\?=)[ \t\r\n]+(?==\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=)")


def decode_words(value: str) -> str:
    """RFC 2047 encoded words to text, leniently: a word that cannot be decoded
    stays as written, charsets as `decode_text` reads them."""
    if "=?" not in value:
        return value
    value = _BETWEEN_WORDS.sub(r"\1", value)
    return clean(_ENCODED_WORD.sub(_decode_word, value))


def _decode_word(match: re.Match[str]) -> str:
    charset, encoding, text = match.groups()
    raw = text.encode("ascii", "replace")
    try:
        if encoding in "bB":
            raw = binascii.a2b_base64(raw + b"=" * (-len(raw) % 4))
        else:  # RFC 2047 4.2: "_" is a space
            raw = binascii.a2b_qp(raw, header=True)
    except binascii.Error:
        return match.group(0)
    return decode_text(raw, (charset,))


def _without_comments(value: str) -> str:
    """An address field's value without RFC 5322 3.2.2 comments and without the
    quotes of quoted strings (their content stays), for FROM/TO/CC/BCC searches."""
    out: list[str] = []
    depth = 0
    quoted = escaped = False
    for c in value:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(c)
        elif c == "\\":
            escaped = True
        elif quoted:
            if c == '"':
                quoted = False
            else:
                out.append(c)
        elif c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif depth:
            continue
        elif c == '"':
            quoted = True
        else:
            out.append(c)
    return "".join(out)


def headers_text(block: bytes, charset: str | None) -> str:
    """The index's `headers` column: folded `name: value` lines. Raw 8-bit values
    are UTF-8 (RFC 6532), else the message's declared charset, else cp1252."""
    lines: list[str] = []
    size = 0
    for name, raw in header_fields.fields(block):
        if raw.isascii() and b"\x1b" not in raw:
            value = raw[:MAX_FIELD_TEXT].decode("ascii")
        else:  # raw 8-bit (or ISO-2022 escapes, in the message's charset first)
            order = (charset, "utf-8") if b"\x1b" in raw else ("utf-8", charset)
            value = decode_text(raw[: MAX_FIELD_TEXT * 4], order)[:MAX_FIELD_TEXT]
        if name in _ADDRESS_FIELDS and ("(" in value or '"' in value):
            value = _without_comments(value)
        if "=?" in value:
            value = decode_words(value)
        if name in _SIGNATURE_FIELDS:
            value = _SIGNATURE_DATA.sub(r"\1=", value)
        lines.append(f"{name.decode('latin-1')}: {value.strip()}")
        size += len(lines[-1]) + 1
        if size >= MAX_HEADER_TEXT:
            break
    # RFC 9051 6.4.4: TEXT looks in the whole header. A line there that is no
    # field (no colon, an empty name) is kept as it is, after the fields.
    for line in block.splitlines():
        if size >= MAX_HEADER_TEXT or not line.strip():
            break
        if line[:1] not in (b" ", b"\t"):
            name, colon, _ = line.partition(b":")
            if not colon or not name.strip() or b" " in name.strip():
                lines.append(decode_text(line[:MAX_FIELD_TEXT], ("utf-8", charset)).strip())
                size += len(lines[-1]) + 1
    return fold_lines("\n".join(lines))[:MAX_HEADER_TEXT]


# --- body text ------------------------------------------------------------------------


def _declared_charset(root: mime.Part) -> str | None:
    """The charset the message declares: its own, or its first text part's."""
    for part in _leaves(root):
        if part.type == "text" and part.param("charset"):
            return part.param("charset")
    return None


def _body_text(data: bytes, root: mime.Part, charset: str | None) -> str:
    """Every text/* part (RFC 2046 4.1) decoded, HTML as its text, and the header
    of each attached message (message/rfc822), in order, up to MAX_TEXT characters.
    Other parts (images, PDFs, ...) are skipped."""
    out: list[str] = []
    size = 0
    stack = [root]
    while stack and size < MAX_TEXT:
        part = stack.pop()
        if part.message is not None:
            inner = part.message
            text = headers_text(data[inner.start : inner.body_start], charset)
            stack.append(inner)
        elif part.parts:
            stack.extend(reversed(part.parts))
            continue
        elif part.type == "text" and not part.opaque:
            text = fold(_part_text(data, part))
        else:
            continue
        out.append(text[: MAX_TEXT - size])
        size += len(out[-1]) + 1
    return "\n".join(out)[:MAX_TEXT]


def _part_text(data: bytes, part: mime.Part) -> str:
    try:
        raw = mime.decode_transfer_encoding(data[part.body_start : part.end], part.encoding)
    except mime.UnknownCTEError:  # read as it is
        raw = data[part.body_start : part.end]
    text = decode_text(raw[: MAX_TEXT * 4], (part.param("charset"),))
    if part.subtype == "html":
        text = html.unescape(_TAGS.sub(" ", text))
    return clean(text)


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
