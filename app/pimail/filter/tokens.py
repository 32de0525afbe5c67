"""Tokens of a message for the learning spam filter (`pimail.filter.bayes`).

`tokenize(data) -> set[str]` turns the raw RFC 5322 octets of a message into
the set of its tokens (each counts once per message). Pure function, no I/O;
it never raises on any bytes and its work is bounded by the limits below,
whatever the input (10,000 MIME parts, deep nesting, unknown charsets,
binary garbage).

The choice of tokens follows the SpamBayes tokenizer (Tim Peters et al.,
2002-2003) and Paul Graham's "A Plan for Spam" (2002):

- header fields, each token prefixed by its field: "subject:" words,
  "from:addr:", "from:domain:", "from:name:" (RFC 2047 decoded), "to:domain:"
  and a recipient count, "sender:domain:", "reply-to:domain:", "return-path:domain:",
  "received:" host suffixes and IPv4 prefixes, "message-id:@domain",
  "x-mailer:" (and User-Agent), "list-id:", "precedence:", "x-priority:";
  and "header:NAME" for every field present;
- the MIME structure: "mime:type/subtype", "cte:", "charset:" and
  "filename:" extension of every part, "mime:truncated" past a limit;
- body text of text/plain and text/html parts, transfer encoding (RFC 2045
  6.7, 6.8) and charset undone; HTML comments, scripts and styles removed,
  tags dropped, entities decoded; words lower-cased and stripped of
  surrounding punctuation, 3 to 20 characters kept, a longer one becomes
  "skip:C N" (its first character and its length rounded down to tens);
- URL hosts ("url:" plus each domain suffix, "url:ip" for a numeric host,
  "proto:") and e-mail address domains ("email:") found in the body.

Header fields that spam filters add (X-Spam-*, X-Pimail-*, X-Bayes-*) are
skipped: a message trained from the Junk folder carries the verdict that
put it there, and learning it would feed the filter its own output.

The MIME structure comes from `pimail.mime.structure.parse` (linear, limited in
depth and part count); the stdlib `email` parser recurses per nesting level
and raises RecursionError on deep nesting.
"""

from __future__ import annotations

import email.header
import html
import re

from pimail.mime import header as hdr
from pimail.mime import structure as mime

MAX_MESSAGE_BYTES = 1024 * 1024  # octets of a message looked at; the rest is ignored
MAX_MIME_PARTS = 100  # MIME entities parsed (pimail.mime.structure: the rest is one opaque leaf)
MAX_MIME_DEPTH = 16
MAX_HEADER_BYTES = 64 * 1024  # header octets of the message examined
MAX_FIELDS = 256  # header fields examined
MAX_FIELD_CHARS = 2_000  # characters of one header value examined
MAX_RECEIVED = 10  # Received fields examined (the newest, on top)
MAX_TEXT_PARTS = 16  # text parts decoded
MAX_PART_BYTES = 256 * 1024  # encoded octets of one text part decoded
MAX_TEXT_CHARS = 128 * 1024  # characters of body text tokenized, all parts together
MAX_URLS = 200  # URLs and addresses looked at in the body
MAX_TOKENS = 5_000  # distinct tokens per message
MIN_WORD, MAX_WORD = 3, 20

# Added by spam filters, pimail's own included: never learnt (see above).
IGNORED_FIELD_PREFIXES = ("x-spam", "x-pimail", "x-bayes")

_FROM_LINE = re.compile(rb"From [^\n]*\n")  # mbox "From " separator line (RFC 4155)
_FIELD = re.compile(rb"([!-9;-~]{1,76})[ \t]*:")  # RFC 5322 3.6.8 ftext
_PUNCTUATION = "\"'.,;:!?()[]{}<>*`|~-_=+/\\"
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}\.)+[a-z]{2,24}\b")
_IPV4 = re.compile(r"\b(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\b")
_URL = re.compile(
    r"(?i)\b(https?|ftp)://([^\s/?#\"'<>\\]{1,255})[^\s\"'<>]{0,2000}"
    r"|\bwww\.([a-z0-9.-]{1,255})[^\s\"'<>]{0,2000}"
)
_EMAIL = re.compile(r"[\w.+-]{1,64}@([a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63}){1,8})", re.I)
_TAG = re.compile(r"<[^<>]*>")  # [^<>]: a run of "<" without ">" stays linear
_SPACE = re.compile(r"\s+")


def tokenize(data: bytes) -> set[str]:
    """The distinct tokens of a message (see the module docstring)."""
    data = bytes(data[:MAX_MESSAGE_BYTES])
    match = _FROM_LINE.match(data)
    if match is not None and not data.startswith(b"From:"):
        data = data[match.end() :]
    tokens = _Tokens()
    struct = mime.parse(data, max_depth=MAX_MIME_DEPTH, max_parts=MAX_MIME_PARTS)
    root = struct.root
    header_end, _ = hdr.split_header(data, root.start, root.end)
    _header_tokens(data[root.start : min(header_end, root.start + MAX_HEADER_BYTES)], tokens)
    if struct.truncated:
        tokens.add("mime:truncated")
    _body_tokens(data, root, tokens)
    return tokens.found


class _Tokens:
    """A set of tokens that stops growing at MAX_TOKENS."""

    def __init__(self) -> None:
        self.found: set[str] = set()

    def add(self, token: str) -> None:
        if len(self.found) < MAX_TOKENS:
            self.found.add(token)

    def words(self, text: str, prefix: str = "") -> None:
        """Words of text: lower-cased, surrounding punctuation stripped,
        MIN_WORD..MAX_WORD characters, a longer one as "skip:C N"."""
        for raw in text.lower().split():
            word = raw.strip(_PUNCTUATION)
            if len(word) < MIN_WORD:
                continue
            if len(word) > MAX_WORD:
                self.add(f"{prefix}skip:{word[0]} {len(word) // 10 * 10}")
            else:
                self.add(prefix + word)
            if len(self.found) >= MAX_TOKENS:
                return

    def host(self, prefix: str, host: str) -> None:
        """prefix + each domain suffix of host ("a.b.example.com": also
        "b.example.com" and "example.com"); a numeric host as prefix + "ip"."""
        host = host.strip(".").lower()
        if not host:
            return
        if _IPV4.fullmatch(host):
            self.add(prefix + "ip")
            return
        labels = host.split(".")[-5:]
        for first in range(len(labels) - 1):
            self.add(prefix + ".".join(labels[first:]))
        if len(labels) == 1:
            self.add(prefix + labels[0])


# --- header fields ----------------------------------------------------------


def _fields(block: bytes) -> list[tuple[str, bytes]]:
    """(lower-cased name, unfolded raw value) of the fields of a header block."""
    fields: list[tuple[str, bytes]] = []
    for line in re.split(rb"\r?\n(?![ \t])", block):
        match = _FIELD.match(line)
        if match is None:
            continue
        value = hdr.unfold(line[match.end() :])
        fields.append((match.group(1).decode("ascii").lower(), value))
        if len(fields) >= MAX_FIELDS:
            break
    return fields


def _header_tokens(block: bytes, tokens: _Tokens) -> None:
    received = 0
    for name, raw in _fields(block):
        if name.startswith(IGNORED_FIELD_PREFIXES):
            continue
        tokens.add("header:" + name)
        value = _header_text(raw[: MAX_FIELD_CHARS * 4])[:MAX_FIELD_CHARS]
        if name == "subject":
            tokens.words(_decode_words(value), "subject:")
        elif name in ("from", "reply-to", "sender", "return-path", "to", "cc"):
            _address_tokens(name, raw[: MAX_FIELD_CHARS * 4], tokens)
        elif name == "received" and received < MAX_RECEIVED:
            received += 1
            _received_tokens(value.lower(), tokens)
        elif name == "message-id":
            _, at, domain = value.rpartition("@")
            domain = domain.strip("> \t").lower()
            valid = at and _HOST.fullmatch(domain)
            tokens.add("message-id:@" + domain if valid else "message-id:invalid")
        elif name in ("x-mailer", "user-agent"):
            text = _SPACE.sub(" ", _decode_words(value)).strip().lower()
            tokens.add("x-mailer:" + text[:40])
            tokens.words(text, "x-mailer:")
        elif name == "list-id":
            inner = value[value.find("<") + 1 :].partition(">")[0] if "<" in value else value
            tokens.add("list-id:" + inner.strip().lower()[:80])
        elif name in ("precedence", "x-priority", "x-msmail-priority", "importance"):
            tokens.add(f"{name}:{value.strip().lower()[:20]}")


def _address_tokens(name: str, raw: bytes, tokens: _Tokens) -> None:
    field = name
    addresses = [a for a in hdr.addresses(raw)[:50] if a[2] is not None]
    if name in ("to", "cc"):
        count = len(addresses)
        bucket = "0" if count == 0 else "1" if count == 1 else "2-5" if count <= 5 else "6+"
        tokens.add(f"{field}:count:{bucket}")
    for display, _, mailbox, host in addresses[:10]:
        domain = _header_text(host or b"").lower()
        if field == "from":
            local = _header_text(mailbox or b"").lower()
            tokens.add(f"from:addr:{local}@{domain}"[:100])
            if display:
                tokens.words(_decode_words(_header_text(display)), "from:name:")
            else:
                tokens.add("from:no name")
        tokens.host(f"{field}:domain:", domain)


def _received_tokens(value: str, tokens: _Tokens) -> None:
    for match in _HOST.finditer(value):
        tokens.host("received:", match.group())
    for match in _IPV4.finditer(value):
        a, b, c, _ = match.groups()
        tokens.add(f"received:{a}.{b}")
        tokens.add(f"received:{a}.{b}.{c}")


def _header_text(raw: bytes) -> str:
    """Header octets as text: UTF-8 when they are, else Latin-1 (raw 8-bit
    headers of spam are in any charset; Latin-1 keeps every octet)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _decode_words(value: str) -> str:
    """RFC 2047 encoded-words decoded; charsets Python lacks fall back."""
    if "=?" not in value:
        return value
    try:
        chunks = email.header.decode_header(value)
    except Exception:  # the stdlib raises several kinds on broken encoded-words
        return value
    return " ".join(
        chunk if isinstance(chunk, str) else _decode_text(chunk, charset)
        for chunk, charset in chunks
    )


# --- MIME structure and body text -------------------------------------------


def _body_tokens(data: bytes, root: mime.Part, tokens: _Tokens) -> None:
    budget = [MAX_TEXT_PARTS, MAX_TEXT_CHARS]  # text parts, characters left
    stack = [root]
    while stack:
        part = stack.pop()
        tokens.add(f"mime:{part.type}/{part.subtype}"[:60])
        if part.encoding:
            tokens.add("cte:" + part.encoding[:30])
        charset = part.param("charset")
        if charset:
            tokens.add("charset:" + charset.strip().lower()[:30])
        filename = _filename(part)
        if filename:
            extension = filename.rpartition(".")[2] if "." in filename else ""
            tokens.add("filename:" + extension.lower()[:10])
        if part.message is not None:
            stack.append(part.message)
        stack.extend(reversed(part.parts))
        if (
            part.type == "text"
            and part.subtype in ("plain", "html")
            and part.disposition != "attachment"
            and budget[0] > 0
            and budget[1] > 0
        ):
            budget[0] -= 1
            text = _part_text(data, part)[: budget[1]]
            budget[1] -= len(text)
            _text_tokens(text, part.subtype == "html", tokens)


def _filename(part: mime.Part) -> str | None:
    for key, value in part.disposition_params:
        if key.lower() == "filename":
            return value
    return part.param("name")


def _part_text(data: bytes, part: mime.Part) -> str:
    body = data[part.body_start : min(part.end, part.body_start + MAX_PART_BYTES)]
    try:
        body = mime.decode_transfer_encoding(body, part.encoding)
    except mime.UnknownCTEError:
        pass  # RFC 2045 6.4: treat as application/octet-stream; here, the octets as they are
    return _decode_text(body, part.param("charset"))


def _decode_text(raw: bytes, charset: str | None) -> str:
    """Octets in a declared charset; an unknown or unfit charset (or none):
    UTF-8 if the octets are, else Latin-1. Never raises."""
    name = (charset or "").strip().strip('"').lower()
    if name and len(name) <= 40:
        try:
            return raw.decode(name, "replace")  # LookupError too for non-text codecs
        except (LookupError, ValueError, TypeError):
            pass
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _text_tokens(text: str, is_html: bool, tokens: _Tokens) -> None:
    if is_html:
        text = _drop_between(text, "<!--", "-->", "")
        text = _drop_between(text, "<script", "</script>", " ")
        text = _drop_between(text, "<style", "</style>", " ")
    urls = 0
    for match in _URL.finditer(text):
        if urls >= MAX_URLS:
            break
        urls += 1
        scheme, authority, www = match.groups()
        if www is not None:
            tokens.host("url:", "www." + www)
            continue
        tokens.add("proto:" + scheme.lower())
        host = authority.rpartition("@")[2].partition(":")[0]
        tokens.host("url:", host)
    for count, match in enumerate(_EMAIL.finditer(text)):
        if count >= MAX_URLS:
            break
        tokens.host("email:", match.group(1))
    text = _URL.sub(" ", text)
    if is_html:
        text = html.unescape(_TAG.sub(" ", text))
    tokens.words(text)


def _drop_between(text: str, start: str, end: str, replacement: str) -> str:
    """text without each span from start to end (case-insensitive); an
    unclosed span runs to the end. Linear, unlike a non-greedy regex
    "start.*?end", which rescans the rest of the text for every unclosed start."""
    opening = re.compile(re.escape(start), re.I)
    closing = re.compile(re.escape(end), re.I)
    kept: list[str] = []
    pos = 0
    while True:
        found = opening.search(text, pos)
        if found is None:
            kept.append(text[pos:])
            break
        kept.append(text[pos : found.start()])
        kept.append(replacement)
        close = closing.search(text, found.end())
        if close is None:
            break
        pos = close.end()
    return "".join(kept)
