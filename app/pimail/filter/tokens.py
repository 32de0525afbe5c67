"""Tokens of a message for the learning spam filter (`pimail.filter.bayes`).

`tokenize(data) -> set[str]` turns the raw RFC 5322 octets of a message into
the set of its tokens (each counts once per message). Pure function, no I/O;
it never raises on any bytes and its work is bounded by the limits below,
whatever the input (10,000 MIME parts, deep nesting, unknown charsets,
binary garbage). TOKENIZER_VERSION changes whenever the tokens of a message
change: a model learnt with other tokens is of no use (bayes.py).

The choice of tokens follows the SpamBayes tokenizer (Tim Peters et al.,
2002-2003), Paul Graham's "A Plan for Spam" (2002), and the word pairs of
CRM114's and rspamd's classifiers:

- header fields, each token prefixed by its field: "subject:" words, word
  pairs and shape ("subject:shape:caps", "!", "$"), "from:addr:",
  "from:domain:", "from:name:" (RFC 2047 decoded), "to:domain:" and a
  recipient count, "sender:domain:", "reply-to:domain:",
  "return-path:domain:", "message-id:@domain", "x-mailer:" (and
  User-Agent), "list-id:", "precedence:", "x-priority:"; "header:NAME" for
  every field present; "charset:" of RFC 2047 encoded-words;
- the Received chain, only the hops outside our trust boundary: hops from
  private, loopback or unnamed addresses are the receiving site's own, and
  for list mail (List-Id, List-Post, X-BeenThere, Mailing-List) the list
  server's hops and everything above them are skipped, so that a list's
  relays never become clues about the mail it carries. Of each hop left:
  "received:" the sending host's domain suffixes, its IPv4 /16 and /24,
  "received:no-rdns" when the client had no name;
- the MIME structure: "mime:type/subtype", "cte:", "charset:" and
  "filename:" extension of every part, "mime:shape:" the tree in one
  token, "mime:truncated" past a limit;
- body text of text/plain and text/html parts, transfer encoding (RFC 2045
  6.7, 6.8) and charset undone; for HTML the structure, links and visible
  text (`pimail.filter.tokens_html`); words lower-cased and stripped of
  surrounding punctuation, 3 to 20 characters kept, a longer one becomes
  "skip:C N" (its first character and its length rounded down to tens);
  pairs of adjacent words "w1 w2" (the first MAX_PAIRS of a message);
  "text:len:N" the length of the text, "text:caps:N" its share of capitals;
- URLs of the body ("url:" plus each domain suffix, "url:ip", "proto:",
  "url-path:" words) and e-mail address domains ("email:").

Header fields that spam filters add (X-Spam-*, X-Pimail-*, X-Bayes-*) are
skipped: a message trained from the Junk folder carries the verdict that
put it there, and learning it would feed the filter its own output.

The MIME structure comes from `pimail.mime.structure.parse` (linear, limited in
depth and part count); the stdlib `email` parser recurses per nesting level
and raises RecursionError on deep nesting.
"""

from __future__ import annotations

import email.header
import ipaddress
import re

from pimail.filter import tokens_html
from pimail.filter.tokens_html import bucket
from pimail.mime import header as hdr
from pimail.mime import structure as mime

TOKENIZER_VERSION = 2  # 1: issue 7's tokens; 2: pairs, HTML, URLs, trusted Received
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
MAX_PAIRS = 1_500  # word pairs per message
MAX_TOKENS = 5_000  # distinct tokens per message
MIN_WORD, MAX_WORD = 3, 20

# Added by spam filters, pimail's own included: never learnt (see above).
IGNORED_FIELD_PREFIXES = ("x-spam", "x-pimail", "x-bayes")
# Fields that mark list mail, and those that name the list's host.
LIST_FIELDS = ("list-id", "list-post", "x-beenthere", "mailing-list", "x-mailing-list")

_FROM_LINE = re.compile(rb"From [^\n]*\n")  # mbox "From " separator line (RFC 4155)
_FIELD = re.compile(rb"([!-9;-~]{1,76})[ \t]*:")  # RFC 5322 3.6.8 ftext
_PUNCTUATION = "\"'.,;:!?()[]{}<>*`|~-_=+/\\"
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}\.)+[a-z]{2,24}\b")
_IPV4 = re.compile(r"\b(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\b")
_EMAIL = re.compile(r"[\w.+-]{1,64}@([a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63}){1,8})", re.I)
_SPACE = re.compile(r"\s+")
_ENCODED_WORD_CHARSET = re.compile(r"=\?([^?\s]{1,40})\?[bBqQ]\?")
# RFC 5321 4.4: "from" Extended-Domain "by" ...; the client's name and address.
_RECEIVED_FROM = re.compile(r"^\s*from\s+(\S{1,255})")
_HELO_NAME = re.compile(r"\bhelo[= ]\s*\S+")  # qmail's "(HELO name)", Exim's "helo=name"
_RECEIVED_BY = re.compile(r"\bby\s+([a-z0-9.-]{1,255})")
_LETTER = re.compile(r"[^\W\d_]")


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
        self.pairs = 0

    def add(self, token: str) -> None:
        if len(self.found) < MAX_TOKENS:
            self.found.add(token)

    def words(self, text: str, prefix: str = "", pairs: bool = False) -> None:
        """Words of text: lower-cased, surrounding punctuation stripped,
        MIN_WORD..MAX_WORD characters, a longer one as "skip:C N"; with
        `pairs`, also each two adjacent words kept ("w1 w2")."""
        previous = ""
        for raw in text.lower().split():
            word = raw.strip(_PUNCTUATION)
            if len(word) < MIN_WORD:
                continue
            if len(word) > MAX_WORD:
                self.add(f"{prefix}skip:{word[0]} {len(word) // 10 * 10}")
                previous = ""
                continue
            self.add(prefix + word)
            if pairs and previous and self.pairs < MAX_PAIRS:
                self.pairs += 1
                self.add(f"{prefix}{previous} {word}")
            previous = word
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
    received: list[str] = []
    list_domains: set[str] = set()
    for name, raw in _fields(block):
        if name.startswith(IGNORED_FIELD_PREFIXES):
            continue
        tokens.add("header:" + name)
        value = _header_text(raw[: MAX_FIELD_CHARS * 4])[:MAX_FIELD_CHARS]
        for charset in _ENCODED_WORD_CHARSET.findall(value)[:4]:
            tokens.add("header-charset:" + charset.lower())
        if name == "subject":
            _subject_tokens(_decode_words(value), tokens)
        elif name in ("from", "reply-to", "sender", "return-path", "to", "cc"):
            _address_tokens(name, raw[: MAX_FIELD_CHARS * 4], tokens)
        elif name == "received":
            if len(received) < MAX_RECEIVED:
                received.append(value.lower())
        elif name == "message-id":
            _, at, domain = value.rpartition("@")
            domain = domain.strip("> \t").lower()
            valid = at and _HOST.fullmatch(domain)
            tokens.add("message-id:@" + domain if valid else "message-id:invalid")
        elif name in ("x-mailer", "user-agent"):
            text = _SPACE.sub(" ", _decode_words(value)).strip().lower()
            tokens.add("x-mailer:" + text[:40])
            tokens.words(text, "x-mailer:")
        elif name in ("precedence", "x-priority", "x-msmail-priority", "importance"):
            tokens.add(f"{name}:{value.strip().lower()[:20]}")
        if name in LIST_FIELDS:
            list_domains.update(_list_domains(name, value.lower()))
            if name == "list-id":
                inner = value[value.find("<") + 1 :].partition(">")[0] if "<" in value else value
                tokens.add("list-id:" + inner.strip().lower()[:80])
    _received_tokens(received, list_domains, tokens)


def _subject_tokens(subject: str, tokens: _Tokens) -> None:
    tokens.words(subject, "subject:", pairs=True)
    letters = _LETTER.findall(subject)
    if len(letters) >= 6 and sum(c.isupper() for c in letters) * 2 > len(letters):
        tokens.add("subject:shape:caps")
    for mark in "!$%":
        if mark in subject:
            tokens.add("subject:shape:" + mark)
    if subject.rstrip() != subject.rstrip().rstrip(" \t0123456789"):
        tokens.add("subject:shape:ends-digits")  # "Hello   23847", a mass-mailer's tag
    if not subject.strip():
        tokens.add("subject:shape:empty")


def _address_tokens(name: str, raw: bytes, tokens: _Tokens) -> None:
    field = name
    addresses = [a for a in hdr.addresses(raw)[:50] if a[2] is not None]
    if name in ("to", "cc"):
        tokens.add(f"{field}:count:{bucket(len(addresses))}")
    for display, _, mailbox, host in addresses[:10]:
        domain = _header_text(host or b"").lower()
        if field == "from":
            local = _header_text(mailbox or b"").lower()
            tokens.add(f"from:addr:{local}@{domain}"[:100])
            if display:
                tokens.words(_decode_words(_header_text(display)), "from:name:")
            else:
                tokens.add("from:no name")
            if any(ch.isdigit() for ch in local) and sum(ch.isdigit() for ch in local) >= 3:
                tokens.add("from:local-digits")
        tokens.host(f"{field}:domain:", domain)


def _list_domains(name: str, value: str) -> set[str]:
    """The registered-looking domains (two last labels) a list field names."""
    found: set[str] = set()
    if name == "list-id":  # RFC 2919 2: list-label "." list-id-namespace
        inner = value[value.find("<") + 1 :].partition(">")[0] if "<" in value else value
        hosts = [inner.strip()]
    else:
        hosts = [m.group(1) for m in _EMAIL.finditer(value)] + _HOST.findall(value)
    for host in hosts[:5]:
        labels = host.strip(".").split(".")
        if len(labels) >= 2:
            found.add(".".join(labels[-2:]))
    return found


def _received_tokens(received: list[str], list_domains: set[str], tokens: _Tokens) -> None:
    """Tokens of the hops outside our trust boundary (module docstring).
    `received` is newest first, as the fields stand (RFC 5321 4.4)."""
    if list_domains:
        # The oldest hop into a list host: its sender is kept, the hops above
        # it (the list's own, and ours) are not.
        for index in range(len(received) - 1, -1, -1):
            by = _RECEIVED_BY.search(received[index])
            if by is not None and _domain_in(by.group(1), list_domains):
                received = received[index:]
                tokens.add("received:list-hops-skipped")
                break
    for value in received:
        start = _RECEIVED_FROM.match(value)
        if start is None:
            continue
        helo = start.group(1)
        comment = value[start.end() : start.end() + 300].split(" by ", 1)[0]
        address = _IPV4.search(comment) or _IPV4.search(helo)
        if address is None or not _public(address.group()):
            continue  # the site's own hops, or one we cannot place
        if list_domains and _domain_in(helo, list_domains):
            continue  # a list host handing on to another of its own
        a, b, c, _ = address.groups()
        tokens.add(f"received:{a}.{b}")
        tokens.add(f"received:{a}.{b}.{c}")
        names = _HOST.findall(_HELO_NAME.sub(" ", comment))
        if names:
            tokens.host("received:", names[0])
        else:
            tokens.add("received:no-rdns")
            if _HOST.fullmatch(helo.strip("[]")):
                tokens.host("received:helo:", helo)


def _domain_in(host: str, domains: set[str]) -> bool:
    host = host.strip(".[]").lower()
    return any(host == d or host.endswith("." + d) for d in domains)


def _public(address: str) -> bool:
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return ip.is_global


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
    tokens.add("mime:shape:" + _shape(root, 0)[:120])
    texts: list[str] = []
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
            texts.append(_text_tokens(text, part.subtype == "html", tokens))
    _text_shape("".join(texts), tokens)


def _shape(part: mime.Part, depth: int) -> str:
    """The MIME tree in one string: "multipart/alternative(text/plain,text/html)"."""
    name = f"{part.type}/{part.subtype}"
    if depth >= 3:
        return name
    children = list(part.parts[:6])
    if part.message is not None:
        children = [part.message]
    if not children:
        return name
    return name + "(" + ",".join(_shape(child, depth + 1) for child in children) + ")"


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


def _text_tokens(text: str, is_html: bool, tokens: _Tokens) -> str:
    """Tokens of one text part; returns the text a reader sees."""
    if is_html:
        text = tokens_html.html_tokens(text, tokens)
    text = tokens_html.text_urls(text, tokens)
    for count, match in enumerate(_EMAIL.finditer(text)):
        if count >= MAX_URLS:
            break
        tokens.host("email:", match.group(1))
    tokens.words(text, pairs=True)
    return text


def _text_shape(text: str, tokens: _Tokens) -> None:
    """The length of the visible text, and its share of capital letters."""
    letters = _LETTER.findall(text[:20_000])
    tokens.add(f"text:len:{len(text).bit_length()}")
    if len(letters) >= 20:
        tokens.add(f"text:caps:{sum(c.isupper() for c in letters) * 10 // len(letters)}")
