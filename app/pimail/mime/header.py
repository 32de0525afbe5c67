"""Header-field syntax for the MIME structure code (`pimail.mime.structure`).

Pure functions, no I/O: finding the fields of a header block in the stored
octets (RFC 5322 2.2), unfolding, the Content-* values BODYSTRUCTURE needs
(RFC 2045 5.1, RFC 2183, RFC 2231), RFC 5322 3.4 address lists as IMAP wants
them for ENVELOPE (RFC 9051 7.5.2), and IMAP string quoting (RFC 9051 4.3).

Header values are kept raw: no RFC 2047 decoding, as IMAP requires. Every
function here is linear in its input; none raises on malformed input.
"""

from __future__ import annotations

import re

Params = tuple[tuple[str, str], ...]
# (name, adl, mailbox, host) of RFC 9051 7.5.2; a group start is
# (None, None, group name, None), a group end is all None.
Address = tuple[bytes | None, bytes | None, bytes | None, bytes | None]

MAX_PARAMS = 256  # parameters kept per Content-Type / Content-Disposition
MAX_LANGUAGES = 64
MAX_ADDRESSES = 10_000  # addresses kept per header field

_FIELD_NAME = re.compile(rb"[!-9;-~]+")  # RFC 5322 3.6.8 ftext
_BLANK_LINE = re.compile(rb"\n\r?\n")


def split_header(data: bytes, start: int, end: int) -> tuple[int, int]:
    """Return (header end, body start) of the entity in data[start:end].

    The header ends at the first empty line (RFC 5322 2.1), which belongs to
    neither part: data[header end:body start] is that CRLF (or bare LF). With
    no empty line the whole entity is header and the body is empty. An entity
    whose first line is no header field has no header at all, only a body
    (as Python's email parser decides; a MIME part that lost its headers).
    Continuation lines before the first field (a header that starts folded,
    RFC 5322 2.2.3 leaves them nothing to continue) are skipped for that
    test, as Python's parser skips them, and stay in the header block.
    """
    if data.startswith(b"\n", start, end):
        return start, start + 1
    if data.startswith(b"\r\n", start, end):
        return start, start + 2
    first = start
    while first < end and data[first] in (32, 9):  # a stray continuation line
        newline = data.find(b"\n", first, end)
        if newline < 0 or data.startswith(b"\n", newline + 1, end):
            break  # nothing but folded lines: no field follows
        first = newline + 1
        if data.startswith(b"\r\n", first, end):
            break
    newline = data.find(b"\n", first, end)
    colon = data.find(b":", first, end if newline < 0 else newline)
    if colon <= first or not _FIELD_NAME.fullmatch(data[first:colon].rstrip(b" \t")):
        return start, start
    match = _BLANK_LINE.search(data, start, end)
    if match is None:
        return end, end
    return match.start() + 1, match.end()


def field_spans(data: bytes, start: int, end: int, names: list[bytes]) -> list[tuple[int, int]]:
    """(start, end) of each field of the header block data[start:end] called
    one of names (case-insensitive), in message order, end after its line end.

    One regular-expression scan in C, so even a header of megabytes costs
    little; the compiled pattern is cached by `re` for repeated name lists.
    """
    wanted = sorted({name.lower() for name in names if _FIELD_NAME.fullmatch(name)})
    if not wanted:
        return []
    # Leading LF, not a look-behind: the engine then skips to line starts fast.
    pattern = re.compile(
        rb"\n(?:%s)[ \t]*:[^\n]*(?:\n[ \t][^\n]*)*" % b"|".join(map(re.escape, wanted))
    )
    block = b"\n" + data[start:end].lower()
    spans = []
    for match in pattern.finditer(block):
        field_end = match.end() + 1 if block.startswith(b"\n", match.end()) else match.end()
        spans.append((start + match.start(), start + field_end - 1))
    return spans


def named_fields(data: bytes, start: int, end: int, names: re.Pattern[bytes]) -> dict[bytes, bytes]:
    """The unfolded values of the fields of data[start:end] that names matches (first wins).

    names is made by field_names(); searching the lower-cased block for them
    at line starts is several times faster than walking every line.
    """
    block = b"\n" + data[start:end].lower()
    found: dict[bytes, bytes] = {}
    for match in names.finditer(block):
        name = match.group(1)
        if name not in found:
            value_start = start + match.end() - 1
            found[name] = unfold(data[value_start : field_end(data, value_start, end)])
    return found


def field_names(*names: bytes) -> re.Pattern[bytes]:
    """A pattern for named_fields() that finds the fields called names."""
    return re.compile(rb"\n(%s)[ \t]*:" % b"|".join(re.escape(name.lower()) for name in names))


def field_end(data: bytes, pos: int, end: int) -> int:
    """Offset after the last line of the field whose value starts at pos."""
    while True:
        newline = data.find(b"\n", pos, end)
        if newline < 0:
            return end
        if newline + 1 < end and data[newline + 1] in (32, 9):
            pos = newline + 1
            continue
        return newline + 1


def content_fields(data: bytes, start: int, end: int) -> dict[bytes, bytes]:
    """The unfolded values of the Content-* fields of data[start:end] (first wins).

    Finds them by searching the lower-cased block for "content-" at a line
    start, which skips the Received: lines that make up most headers.
    """
    block = data[start:end].lower()
    found: dict[bytes, bytes] = {}
    pos = 0
    while True:
        pos = block.find(b"content-", pos)
        if pos < 0:
            return found
        if pos == 0 or block[pos - 1] == 10:
            line_end = block.find(b"\n", pos)
            colon = block.find(b":", pos, len(block) if line_end < 0 else line_end)
            if colon > 0:
                name = block[pos:colon].rstrip(b" \t")
                if name not in found and _FIELD_NAME.fullmatch(name):
                    value_end = field_end(data, start + colon + 1, end)
                    found[name] = unfold(data[start + colon + 1 : value_end])
        pos += 8


def unfold(raw: bytes) -> bytes:
    """RFC 5322 2.2.3 unfolding, then surrounding white space removed."""
    if b"\n" in raw:
        raw = raw.replace(b"\r\n", b"").replace(b"\n", b"")
    return raw.strip(b" \t\r")


def text(raw: bytes) -> str:
    """Header octets as str; 8-bit octets that are not UTF-8 survive as surrogates."""
    return raw.decode("utf-8", "surrogateescape")


def octets(value: str) -> bytes:
    """The inverse of text()."""
    return value.encode("utf-8", "surrogateescape")


# --- Content-* values (RFC 2045 5.1, RFC 2183, RFC 2231) --------------------

_COMMENTS = r"(?:\s*\((?:[^()\\]|\\.)*\))*\s*"
_TOKEN = r'[^\s()<>@,;:\\"/\[\]?=]+'  # RFC 2045 5.1 token, 8-bit tolerated
_CONTENT_TYPE = re.compile(_COMMENTS + f"({_TOKEN}){_COMMENTS}/{_COMMENTS}({_TOKEN})", re.S)
_DISPOSITION = re.compile(_COMMENTS + f"({_TOKEN})", re.S)
_PARAM_NAME = re.compile(r'\s*([^\s;="]+)\s*=\s*')
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"?', re.S)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_SECTION = re.compile(r"(.+?)\*(\d{1,3})(\*?)\Z", re.S)
_ATTRIBUTE_CHARS = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~"
)


def content_type(value: str) -> tuple[str, str, Params] | None:
    """Parse a Content-Type value: (type, subtype, params), None when invalid.

    type and subtype are lower-cased; parameter names and values are kept as
    written (quotes removed), RFC 2231 continuations merged.
    """
    match = _CONTENT_TYPE.match(value)
    if match is None:
        return None
    return match.group(1).lower(), match.group(2).lower(), parameters(value, match.end())


def disposition(value: str) -> tuple[str, Params] | None:
    """Parse a Content-Disposition value (RFC 2183): (type, params) or None."""
    match = _DISPOSITION.match(value)
    if match is None:
        return None
    return match.group(1), parameters(value, match.end())


def languages(value: str) -> tuple[str, ...]:
    """The tags of a Content-Language value (RFC 3282), comments removed."""
    value = re.sub(r"\((?:[^()\\]|\\.)*\)", " ", value)
    tags = (tag.strip() for tag in value.split(",", MAX_LANGUAGES))
    return tuple(tag for tag in tags if tag and " " not in tag)[:MAX_LANGUAGES]


def transfer_encoding(value: str) -> str | None:
    """The Content-Transfer-Encoding mechanism, lower-cased (RFC 2045 6.1)."""
    match = _DISPOSITION.match(value)
    return match.group(1).lower() if match else None


def parameters(value: str, pos: int) -> Params:
    """The `; name=value` list of a Content-Type or -Disposition from pos on."""
    params: list[tuple[str, str]] = []
    end = len(value)
    while pos < end and len(params) < MAX_PARAMS:
        semicolon = value.find(";", pos)
        if semicolon < 0:
            break
        match = _PARAM_NAME.match(value, semicolon + 1)
        if match is None:
            pos = semicolon + 1
            continue
        name, pos = match.group(1), match.end()
        if value.startswith('"', pos):
            quoted = _QUOTED.match(value, pos)
            assert quoted is not None  # the pattern matches any string starting with a quote
            params.append((name, _QUOTED_PAIR.sub(r"\1", quoted.group(1))))
            pos = quoted.end()
        else:
            semicolon = value.find(";", pos)
            raw = value[pos:] if semicolon < 0 else value[pos:semicolon]
            params.append((name, raw.split("(", 1)[0].strip()))
            pos = end if semicolon < 0 else semicolon
    return _merge_continuations(tuple(params))


def _merge_continuations(params: Params) -> Params:
    """Join RFC 2231 3 continuations: name*0, name*1*, ... become one parameter.

    The result stays raw (no charset decoding): "name" when no section was
    extended, else "name*" with the %-encoded value of RFC 2231 4, where
    plain sections are %-encoded so the joined value decodes as one.
    """
    if not any("*" in name for name, _ in params):
        return params
    groups: dict[str, tuple[int, str, dict[int, tuple[bool, str]]]] = {}
    merged: list[tuple[str, str] | None] = []
    for name, value in params:
        match = _SECTION.match(name)
        if match is None:
            merged.append((name, value))
            continue
        base = match.group(1)
        group = groups.get(base.lower())
        if group is None:
            group = groups[base.lower()] = (len(merged), base, {})
            merged.append(None)
        group[2].setdefault(int(match.group(2)), (match.group(3) == "*", value))
    for slot, base, sections in groups.values():
        used = []
        while len(used) in sections:
            used.append(sections[len(used)])
        if not used:  # no section 0: keep what was written
            merged[slot] = (f"{base}*{min(sections)}", sections[min(sections)][1])
        elif not any(extended for extended, _ in used):
            merged[slot] = (base, "".join(value for _, value in used))
        else:
            joined = "".join(value if extended else _percent(value) for extended, value in used)
            merged[slot] = (base + "*", joined if used[0][0] else "''" + joined)
    return tuple(param for param in merged if param is not None)


def _percent(value: str) -> str:
    return "".join(
        chr(byte) if byte in _ATTRIBUTE_CHARS else f"%{byte:02X}" for byte in octets(value)
    )


# --- RFC 5322 3.4 address lists ---------------------------------------------

_ADDRESS_TOKEN = re.compile(
    rb"""
      (?P<space>[ \t\r\n]+)
    | (?P<quoted>"(?:[^"\\]|\\.)*"?)
    | (?P<literal>\[(?:[^\]\\]|\\.)*\]?)
    | (?P<special>[()<>@,;:.\\\]])
    | (?P<atom>[^ \t\r\n"\[\]()<>@,;:.\\]+)
    """,
    re.X | re.S,
)
_COMMENT_DELIMITER = re.compile(rb"[()\\]")
_ADDRESS_QUOTED_PAIR = re.compile(rb"\\(.)", re.S)

# A token: kind ("atom", "quoted", "literal", "special", "comment"), its
# octets (a comment without its parentheses), white space before it.
Token = tuple[str, bytes, bool]


def _address_tokens(value: bytes) -> list[Token]:
    tokens: list[Token] = []
    pos, end, space = 0, len(value), False
    while pos < end:
        match = _ADDRESS_TOKEN.match(value, pos)
        assert match is not None  # the alternatives cover every octet
        kind, pos = match.lastgroup or "space", match.end()
        if kind == "space":
            space = True
            continue
        token = match.group()
        if token == b"(":
            token, pos = _comment(value, pos)
            kind = "comment"
        tokens.append((kind, token, space))
        space = kind == "comment"
    return tokens


def _comment(value: bytes, pos: int) -> tuple[bytes, int]:
    """The text of the (nested) comment opened just before pos, and its end."""
    start, depth = pos, 1
    while True:
        match = _COMMENT_DELIMITER.search(value, pos)
        if match is None:
            return value[start:], len(value)
        pos = match.end()
        char = match.group()
        if char == b"\\":
            pos += 1
        elif char == b"(":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return value[start : pos - 1], pos


def _phrase(tokens: list[Token]) -> bytes | None:
    """A display name: words joined by one space, quoted strings unquoted."""
    words: list[bytes] = []
    for kind, token, space in tokens:
        if kind == "comment":
            continue
        if kind == "quoted":
            token = _ADDRESS_QUOTED_PAIR.sub(
                rb"\1", token[1:-1] if token.endswith(b'"') else token[1:]
            )
        if words and space:
            words.append(b" ")
        words.append(token)
    return b"".join(words) or None


def _raw(tokens: list[Token]) -> bytes:
    """A local part, domain or route: tokens as written, comments and spaces dropped."""
    return b"".join(token for kind, token, _ in tokens if kind != "comment")


def _addr_spec(tokens: list[Token]) -> tuple[bytes, bytes]:
    """(mailbox, host) of an addr-spec; host b"" when there is no @domain."""
    for index in range(len(tokens) - 1, -1, -1):
        if tokens[index][:2] == ("special", b"@"):
            return _raw(tokens[:index]), _raw(tokens[index + 1 :])
    return _raw(tokens), b""


_WORD = rb'[^"<>@,;:()\[\]\\\s]'  # an atom or dot octet
_SIMPLE_ADDRESS = re.compile(
    rb"""[ \t]*(?:
        (?:"(?P<quoted>(?:[^"\\\r\n]|\\[^\r\n])*)"|(?P<phrase>%(w)s(?:[^"<>@,;:()\[\]\\\r\n]*%(w)s)?))?
        [ \t]*<(?P<angle_mailbox>%(w)s+)@(?P<angle_host>%(w)s+)>
      | (?P<mailbox>%(w)s+)@(?P<host>%(w)s+)
    )[ \t]*(?:,|\Z)"""
    % {b"w": _WORD},
    re.X,
)
_SPACES = re.compile(rb"[ \t]+")


def addresses(value: bytes | None) -> list[Address]:
    """Parse an RFC 5322 address-list leniently into ENVELOPE address structures.

    RFC 9051 7.5.2: groups become (NIL NIL "name" NIL) ... (NIL NIL NIL NIL);
    a route "<@a,@b:x@y>" becomes the adl "@a,@b". Without a display name,
    a comment after the address is used as the name, as Dovecot does.
    Quoted local parts keep their quotes so mailbox@host stays an address.
    """
    if not value:
        return []
    # Fast path for the common lists of `a@b`, `Name <a@b>` and `"Name" <a@b>`;
    # same result as the general parser (a property test holds them equal).
    result: list[Address] = []
    pos, end = 0, len(value)
    while pos < end and len(result) < MAX_ADDRESSES:
        match = _SIMPLE_ADDRESS.match(value, pos)
        if match is None:
            return _parse_addresses(value)
        if match.group("host") is not None:
            result.append((None, None, match.group("mailbox"), match.group("host")))
        else:
            quoted, phrase = match.group("quoted"), match.group("phrase")
            if quoted is not None:
                name = _ADDRESS_QUOTED_PAIR.sub(rb"\1", quoted) or None
            else:
                name = None if phrase is None else _SPACES.sub(b" ", phrase)
            result.append((name, None, match.group("angle_mailbox"), match.group("angle_host")))
        pos = match.end()
    return result


def _parse_addresses(value: bytes) -> list[Address]:
    """The general address-list parser behind addresses()."""
    tokens = _address_tokens(value)
    result: list[Address] = []
    in_group = False
    pos, end = 0, len(tokens)
    while pos < end and len(result) < MAX_ADDRESSES:
        kind, token, _ = tokens[pos]
        if kind == "special" and token in (b",", b";", b">", b":", b"\\", b")", b"]"):
            if token == b";" and in_group:
                result.append((None, None, None, None))
                in_group = False
            pos += 1
            continue
        stop = pos
        while stop < end and (tokens[stop][0] != "special" or tokens[stop][1] == b"."):
            stop += 1
        phrase = tokens[pos:stop]
        delimiter = tokens[stop][1] if stop < end else b""
        if delimiter == b":" and not in_group:
            result.append((None, None, _phrase(phrase) or b"", None))
            in_group = True
            pos = stop + 1
        elif delimiter == b"<":
            close = stop + 1
            while close < end and tokens[close][:2] != ("special", b">"):
                close += 1
            address = _angle_address(_phrase(phrase), tokens[stop + 1 : close])
            if address != (None, None, b"", b""):  # "<>" names nobody
                result.append(address)
            pos = close + 1
        else:
            if delimiter == b"@":  # addr-spec: the domain runs to the next , ; or <
                stop += 1
                while stop < end and tokens[stop][1] not in (b",", b";", b"<", b">", b":"):
                    stop += 1
            spec = tokens[pos:stop]
            comments = [token for kind, token, _ in spec if kind == "comment"]
            mailbox, host = _addr_spec(spec)
            if mailbox or host:
                name = _phrase([("atom", comments[-1], False)]) if comments else None
                result.append((name, None, mailbox, host))
            pos = max(stop, pos + 1)
    if in_group:
        result.append((None, None, None, None))
    return result


def _angle_address(name: bytes | None, inner: list[Token]) -> Address:
    """name <[route:]addr-spec>; the route is obsolete (RFC 5322 4.4) but kept as adl."""
    adl = None
    for index, (kind, token, _) in enumerate(inner):
        if kind == "special" and token == b":":
            adl = _raw(inner[:index]) or None
            inner = inner[index + 1 :]
            break
    mailbox, host = _addr_spec(inner)
    return name, adl, mailbox, host


# --- IMAP strings (RFC 9051 4.3) --------------------------------------------

_NOT_QUOTABLE = re.compile(rb"[\x00\r\n\x80-\xff]")
_NOT_QUOTABLE_UTF8 = re.compile(rb"[\x00\r\n]")


def imap_string(value: bytes, utf8: bool = False) -> bytes:
    """value as an IMAP quoted string, or as a literal when it cannot be quoted.

    Quoted strings carry no CR, LF or NUL (RFC 9051 4.3). 8-bit octets may be
    quoted only when they are UTF-8 and the session allows it (IMAP4rev2 or
    UTF8=ACCEPT, RFC 6855): pass utf8=True then. NUL is not allowed even in a
    literal (CHAR8) and is dropped.
    """
    if _NOT_QUOTABLE.search(value) is not None:
        if b"\x00" in value:
            value = value.replace(b"\x00", b"")
        if not utf8 or _NOT_QUOTABLE_UTF8.search(value) is not None or not _is_utf8(value):
            return b"{%d}\r\n%s" % (len(value), value)
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def imap_nstring(value: bytes | None, utf8: bool = False) -> bytes:
    return b"NIL" if value is None else imap_string(value, utf8)


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
