"""MIME structure of a stored message, for IMAP FETCH (RFC 9051 6.4.5, 7.5.2).

Pure functions on the message octets, no I/O. `parse()` walks the message
once and records, for every MIME entity, where its header and body lie in the
original bytes; FETCH then cuts BODY[...] sections out of those bytes without
re-serialising (IMAP must send the exact stored octets) and formats ENVELOPE
and BODYSTRUCTURE from them.

Sizes and offsets are octets of the message as stored. pimail stores messages
with CRLF line ends, so the stored octets are the octets sent and every size
here (BODYSTRUCTURE body-fld-octets, RFC822.SIZE) is the wire size. A stored
file with bare LF line ends is parsed correctly, but its sizes count the
stored octets, not a CRLF version.

The structure is cached by the server (`MessageStructure.to_json()` into the
SQLite index, `from_json()` back) so a FETCH does not re-parse the message.

Limits: nesting depth, number of parts and header octets examined. A
message beyond them is still served: the part where a limit is hit becomes an
opaque application/octet-stream leaf that holds the rest of its octets.
Nothing here raises on any input but `MimeError` and its subclasses.

Public API:
  parse(data) -> MessageStructure      (.to_json() / MessageStructure.from_json())
  part_at(struct, path) -> Part | None  IMAP part numbers
  section_bytes(struct, data, Section)  BODY[section]; apply_partial() for <o.c>
  binary_bytes / binary_size            BINARY[part], BINARY.SIZE[part]
  envelope(struct, data)                ENVELOPE
  bodystructure(struct, data, extensible)  BODYSTRUCTURE / BODY
ENVELOPE and BODYSTRUCTURE come back as wire octets (bytes): a string that
cannot be quoted is a literal, "{n}" CRLF and n octets, ready to send.

Header syntax (fields, Content-* values, addresses, IMAP quoting) lives in
`pimail.mime.header`.
"""

from __future__ import annotations

import binascii
import json
import re
from dataclasses import dataclass, field

from pimail.mime import header as hdr
from pimail.mime.section import Partial, Section

MAX_DEPTH = 32  # nested multiparts and message/rfc822 parts
MAX_PARTS = 1_000  # MIME entities per message
MAX_HEADER_BYTES = 64 * 1024  # header octets of one entity examined for fields
CACHE_VERSION = 1

_IDENTITY_ENCODINGS = frozenset({None, "7bit", "8bit", "binary"})
_MESSAGE_SUBTYPES = frozenset({"rfc822", "global"})  # RFC 9051 7.5.2, RFC 6532


class MimeError(Exception):
    """Base of every error this module raises."""


class CacheFormatError(MimeError):
    """A cached structure that cannot be read: re-parse the message."""


class StructureMismatchError(MimeError):
    """The structure was made from other octets than those given."""


class UnknownCTEError(MimeError):
    """BINARY of a part whose Content-Transfer-Encoding is unknown.

    RFC 3516 4.3 / RFC 9051 7.1: the server answers NO [UNKNOWN-CTE].
    """

    def __init__(self, encoding: str) -> None:
        super().__init__(f"unknown Content-Transfer-Encoding {encoding!r}")
        self.encoding = encoding


@dataclass(slots=True)
class Part:
    """One MIME entity: its octets are data[start:end].

    data[start:body_start] is the header including the empty line that ends
    it (the MIME header of a body part, or a message's header), and
    data[body_start:end] the body. For a message/rfc822 part, `message` is the
    encapsulated message, spanning this part's body. Text values are raw
    header text (no RFC 2047/2231 decoding); type and subtype lower-case.
    """

    start: int
    body_start: int
    end: int
    type: str = "text"
    subtype: str = "plain"
    params: hdr.Params = ()
    content_id: str | None = None
    description: str | None = None
    encoding: str | None = None  # lower-cased mechanism; None when absent
    md5: str | None = None
    disposition: str | None = None
    disposition_params: hdr.Params = ()
    language: tuple[str, ...] = ()
    location: str | None = None
    lines: int = 0  # LF count of the body, kept for text/* and message/*
    parts: list[Part] = field(default_factory=list)
    message: Part | None = None
    opaque: bool = False  # a limit was hit here: the rest is one leaf

    @property
    def size(self) -> int:
        return self.end - self.body_start

    def param(self, name: str) -> str | None:
        """The first Content-Type parameter called name (case-insensitive)."""
        name = name.lower()
        for key, value in self.params:
            if key.lower() == name:
                return value
        return None


@dataclass(slots=True)
class MessageStructure:
    """The parsed structure of one message of `size` octets."""

    size: int
    root: Part
    truncated: bool = False  # the depth or part limit was hit somewhere
    max_header_bytes: int = MAX_HEADER_BYTES

    def to_json(self) -> str:
        """A compact JSON form for the index (ASCII; non-UTF-8 octets escaped)."""
        return json.dumps(
            [CACHE_VERSION, self.size, self.truncated, self.max_header_bytes, _dump(self.root)],
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> MessageStructure:
        """Read to_json() output back; CacheFormatError when it is not that."""
        try:
            version, size, truncated, max_header_bytes, root = json.loads(text)
            if version != CACHE_VERSION:
                raise CacheFormatError(f"cache version {version!r}, want {CACHE_VERSION}")
            return cls(
                _int(size, 0),
                _load(root, 0, _int(size, 0), 0),
                bool(truncated),
                _int(max_header_bytes, 0),
            )
        except CacheFormatError:
            raise
        except (ValueError, TypeError, IndexError, KeyError, RecursionError) as exc:
            raise CacheFormatError(f"bad cached structure: {exc}") from exc


def _dump(part: Part) -> list:
    return [
        part.start,
        part.body_start,
        part.end,
        part.lines,
        part.type,
        part.subtype,
        [item for pair in part.params for item in pair],
        part.content_id,
        part.description,
        part.encoding,
        part.md5,
        part.disposition,
        [item for pair in part.disposition_params for item in pair],
        list(part.language),
        part.location,
        int(part.opaque),
        [_dump(child) for child in part.parts],
        None if part.message is None else _dump(part.message),
    ]


def _load(item: list, low: int, high: int, depth: int) -> Part:
    if depth > 4 * MAX_DEPTH + 8:
        raise CacheFormatError("cached structure nested too deep")
    if not isinstance(item, list) or len(item) != 18:
        raise ValueError("a part is a list of 18 items")
    (start, body_start, end, lines, type_, subtype, params, content_id, description) = item[:9]
    (encoding, md5, disposition, disposition_params, language, location, opaque) = item[9:16]
    children, message = item[16:18]
    start, end = _int(start, low, high), _int(end, low, high)
    part = Part(
        start=start,
        body_start=_int(body_start, start, end),
        end=end,
        type=_str(type_),
        subtype=_str(subtype),
        params=_pairs(params),
        content_id=_opt_str(content_id),
        description=_opt_str(description),
        encoding=_opt_str(encoding),
        md5=_opt_str(md5),
        disposition=_opt_str(disposition),
        disposition_params=_pairs(disposition_params),
        language=tuple(_str(tag) for tag in _list(language)),
        location=_opt_str(location),
        lines=_int(lines, 0),
        opaque=bool(opaque),
    )
    part.parts = [_load(child, part.body_start, end, depth + 1) for child in _list(children)]
    if message is not None:
        part.message = _load(message, part.body_start, end, depth + 1)
    return part


def _int(value: object, low: int, high: int | None = None) -> int:
    if type(value) is not int or value < low or (high is not None and value > high):
        raise ValueError(f"bad offset or count {value!r}")
    return value


def _list(value: object) -> list:
    if not isinstance(value, list):
        raise TypeError(f"not a list: {value!r}")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"not a string: {value!r}")
    return value


def _opt_str(value: object) -> str | None:
    return None if value is None else _str(value)


def _pairs(flat: object) -> hdr.Params:
    if not isinstance(flat, list) or len(flat) % 2:
        raise ValueError("odd parameter list")
    return tuple((_str(flat[i]), _str(flat[i + 1])) for i in range(0, len(flat), 2))


# --- parsing -----------------------------------------------------------------

# RFC 2046 5.1.1: a delimiter line is "--" boundary, "--" more for the close
# delimiter, then optional white space (transport padding) and the line end.
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(?:\r?\n|\r?\Z)")


def parse(
    data: bytes,
    *,
    max_depth: int = MAX_DEPTH,
    max_parts: int = MAX_PARTS,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> MessageStructure:
    """Parse the MIME structure of a message. Never raises on any bytes."""
    data = bytes(data)
    parser = _Parser(data, max_depth, max_parts, max_header_bytes)
    root = parser.entity(0, len(data), 0, digest_child=False)
    return MessageStructure(len(data), root, parser.truncated, max_header_bytes)


class _Parser:
    def __init__(self, data: bytes, max_depth: int, max_parts: int, max_header: int) -> None:
        self.data = data
        self.max_depth = max_depth
        self.max_parts = max_parts
        self.max_header = max_header
        self.count = 0
        self.truncated = False

    def entity(
        self, start: int, end: int, depth: int, digest_child: bool, remainder: bool = False
    ) -> Part:
        """The entity data[start:end]: its header, then what its type says is inside."""
        data = self.data
        header_end, body_start = hdr.split_header(data, start, end)
        part = Part(start, body_start, end)
        self.count += 1
        fields = hdr.content_fields(data, start, min(header_end, start + self.max_header))
        _apply_content_fields(part, fields, digest_child)
        multipart = part.type == "multipart"
        message = part.type == "message" and part.subtype in _MESSAGE_SUBTYPES
        if remainder or (
            (multipart or message) and (depth >= self.max_depth or self.count >= self.max_parts)
        ):
            self.truncated = True
            _make_opaque(part, always=remainder)
        elif message and part.encoding not in _IDENTITY_ENCODINGS:
            # An encoded message/rfc822 (RFC 2046 5.2.1 forbids it) cannot be
            # parsed in place; offer it as an attachment.
            _make_opaque(part)
        elif multipart:
            self.multipart(part, depth + 1)
        elif message:
            part.message = self.entity(body_start, end, depth + 1, digest_child=False)
        if part.type == "text" or part.message is not None:
            part.lines = data.count(b"\n", body_start, end)
        return part

    def multipart(self, part: Part, depth: int) -> None:
        """Split a multipart body at its boundary (RFC 2046 5.1.1) into parts.

        The CRLF before a delimiter belongs to the delimiter. Text before the
        first delimiter (preamble) and after the close delimiter (epilogue)
        belongs to no part. Without a close delimiter the last part runs to
        the end. Each level scans only its own body, so the work is linear
        per nesting level.
        """
        data, low, end = self.data, part.body_start, part.end
        digest = part.subtype == "digest"  # RFC 2046 5.1.5: parts default to message/rfc822
        boundary = part.param("boundary")
        delimiters = _Delimiters(data, hdr.octets(boundary), low, end) if boundary else None
        found = delimiters.find(low) if delimiters else None
        pos, close = (found[1], found[2]) if found else (end, True)
        while not close:
            if self.count >= self.max_parts:
                part.parts.append(self.entity(pos, end, depth, digest, remainder=True))
                break
            assert delimiters is not None
            found = delimiters.find(pos)
            if found is None:
                part.parts.append(self.entity(pos, end, depth, digest))
                break
            delimiter, next_pos, close = found
            part.parts.append(
                self.entity(pos, _before_line_end(data, delimiter, pos), depth, digest)
            )
            pos = next_pos
        if not part.parts:
            # A multipart needs a part (RFC 9051 body-type-mpart); like Dovecot,
            # stand in an empty text/plain one at the end of the body.
            self.count += 1
            part.parts.append(Part(end, end, end))


def _apply_content_fields(part: Part, fields: dict[bytes, bytes], digest_child: bool) -> None:
    value = fields.get(b"content-type")
    parsed = hdr.content_type(hdr.text(value)) if value is not None else None
    if parsed is not None:
        part.type, part.subtype, part.params = parsed
    elif value is None and digest_child:
        part.type, part.subtype = "message", "rfc822"
    # else: absent or invalid, RFC 2045 5.2 default text/plain; charset=us-ascii
    if (value := fields.get(b"content-transfer-encoding")) is not None:
        part.encoding = hdr.transfer_encoding(hdr.text(value))
    if (value := fields.get(b"content-id")) is not None:
        part.content_id = hdr.text(value)
    if (value := fields.get(b"content-description")) is not None:
        part.description = hdr.text(value)
    if (value := fields.get(b"content-md5")) is not None:
        part.md5 = hdr.text(value)
    if (value := fields.get(b"content-disposition")) is not None:
        disposition = hdr.disposition(hdr.text(value))
        if disposition is not None:
            part.disposition, part.disposition_params = disposition
    if (value := fields.get(b"content-language")) is not None:
        part.language = hdr.languages(hdr.text(value))
    if (value := fields.get(b"content-location")) is not None:
        part.location = hdr.text(value)


def _make_opaque(part: Part, always: bool = False) -> None:
    part.opaque = True
    if always or part.type in ("multipart", "message"):
        part.type, part.subtype = "application", "octet-stream"


class _Delimiters:
    """Finds the delimiter lines of one multipart body data[low:end] (RFC 2046 5.1.1)."""

    MAX_MISSES = 32

    def __init__(self, data: bytes, boundary: bytes, low: int, end: int) -> None:
        self.data, self.low, self.end = data, low, end
        self.marker = b"--" + boundary
        self.needle = b"\n" + self.marker
        self.misses = 0
        self.pattern: re.Pattern[bytes] | None = None

    def find(self, pos: int) -> tuple[int, int, bool] | None:
        """The next delimiter line from line start pos: (its start, next line's start, close?).

        bytes.find for LF + "--" boundary skips all but line starts; lines
        that start so but are no delimiter (an inner boundary that extends
        this one) are checked in Python until there are many, then a
        compiled pattern rejects them in C, so nested levels with such
        boundaries cost no Python work per line.
        """
        data, low, end = self.data, self.low, self.end
        if pos == low and data.startswith(self.marker, low, end):
            tail = _DELIMITER_TAIL.match(data, low + len(self.marker), end)
            if tail is not None:
                return low, tail.end(), tail.group(1) is not None
        index = max(pos - 1, low)
        while self.pattern is None:
            index = data.find(self.needle, index, end)
            if index < 0:
                return None
            tail = _DELIMITER_TAIL.match(data, index + len(self.needle), end)
            if tail is not None:
                return index + 1, tail.end(), tail.group(1) is not None
            index += 1
            self.misses += 1
            if self.misses > self.MAX_MISSES:
                self.pattern = re.compile(re.escape(self.needle) + _DELIMITER_TAIL.pattern)
        match = self.pattern.search(data, index, end)
        if match is None:
            return None
        return match.start() + 1, match.end(), match.group(1) is not None


def _before_line_end(data: bytes, index: int, floor: int) -> int:
    """index moved back over the CRLF (or LF) that ends the previous line."""
    if index > floor and data[index - 1] == 10:
        index -= 1
        if index > floor and data[index - 1] == 13:
            index -= 1
    return index


# --- sections (RFC 9051 6.4.5) -----------------------------------------------


def _check(struct: MessageStructure, data: bytes) -> None:
    if len(data) != struct.size:
        raise StructureMismatchError(f"structure is of {struct.size} octets, message {len(data)}")


def part_at(struct: MessageStructure, path: tuple[int, ...]) -> Part | None:
    """The part with IMAP part number path (RFC 9051 6.4.5), None if there is none.

    Part 1 of a message whose body is not multipart is that body, so it is the
    message entity itself; inside a message/rfc822 part the numbers go on in
    the encapsulated message. A leaf part has no subparts. path () is the
    whole message.
    """
    node = struct.root
    at_message = True  # node is a message: its non-multipart body is part 1
    for number in path:
        if not at_message and not node.parts and node.message is not None:
            node, at_message = node.message, True
        if node.parts:
            if not 1 <= number <= len(node.parts):
                return None
            node = node.parts[number - 1]
        elif not (at_message and number == 1):
            return None
        at_message = False
    return node


def section_bytes(struct: MessageStructure, data: bytes, section: Section) -> bytes:
    """The octets of BODY[section] (RFC 9051 6.4.5); b"" for a nonexistent part.

    HEADER, HEADER.FIELDS[.NOT] and TEXT apply to the message itself or, after
    a part number, to the message encapsulated in that message/rfc822 part.
    MIME is the MIME header of a numbered part.
    """
    _check(struct, data)
    if section.part:
        part = part_at(struct, section.part)
        if part is None:
            return b""
        if section.text is None:
            return data[part.body_start : part.end]
        if section.text == "MIME":
            return data[part.start : part.body_start]
        message = part.message
        if message is None:
            return b""
    else:
        message = struct.root
        if section.text is None:
            return data
    if section.text == "HEADER":
        return data[message.start : message.body_start]
    if section.text == "TEXT":
        return data[message.body_start : message.end]
    if section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        return _header_lines(data, message, section.fields, section.text == "HEADER.FIELDS")
    return b""


def _header_lines(data: bytes, message: Part, names: tuple[str, ...], wanted: bool) -> bytes:
    """HEADER.FIELDS: the fields named, in message order; HEADER.FIELDS.NOT
    (wanted False): the header without them. Then the empty line that ends
    a header (RFC 9051 6.4.5)."""
    start = message.start
    header_end, _ = hdr.split_header(data, start, message.body_start)
    spans = hdr.field_spans(data, start, header_end, [hdr.octets(name) for name in names])
    if wanted:
        pieces = [data[field_start:field_end] for field_start, field_end in spans]
    else:
        pieces, pos = [], start
        for field_start, field_end in spans:
            pieces.append(data[pos:field_start])
            pos = field_end
        pieces.append(data[pos:header_end])
    lines = b"".join(pieces)
    if lines and not lines.endswith(b"\n"):  # a header that ends the message
        lines += b"\r\n"
    return lines + b"\r\n"


def apply_partial(data: bytes, partial: Partial | None) -> bytes:
    """BODY[...]<origin.count>: at most count octets from origin (RFC 9051 6.4.5)."""
    if partial is None:
        return data
    return data[partial.origin : partial.origin + partial.count]


# --- BINARY (RFC 3516, RFC 9051 6.4.5) ---------------------------------------

_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_BASE64_NOISE = bytes(byte for byte in range(256) if byte not in _BASE64_ALPHABET)


def decode_transfer_encoding(body: bytes, encoding: str | None) -> bytes:
    """Undo a Content-Transfer-Encoding (RFC 2045 6); UnknownCTEError if unknown.

    Lenient like mail readers: base64 skips non-alphabet octets and stops at
    padding; quoted-printable keeps malformed escapes as written.
    """
    if encoding in _IDENTITY_ENCODINGS:
        return body
    if encoding == "base64":
        clean = body.translate(None, _BASE64_NOISE)
        padding = clean.find(b"=")
        if padding >= 0:
            clean = clean[:padding]
        clean = clean[: len(clean) - (len(clean) % 4 == 1)]
        try:
            return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))
        except binascii.Error:  # not expected after the clean-up above
            return b""
    if encoding == "quoted-printable":
        return decode_quoted_printable(body)
    raise UnknownCTEError(encoding or "")


_HEX = b"0123456789ABCDEFabcdef"
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
_LINE = re.compile(rb"([^\n]*?)[ \t]*(\r?\n|\Z)")


def decode_quoted_printable(body: bytes) -> bytes:
    """RFC 2045 6.7, as a robust decoder reads it:

    - trailing white space on each line is deleted, since transports add it
      (rule 3), and only then is a final "=" a soft line break (rule 5), so
      "=  " CRLF is one too;
    - "=XX" is the octet XX, hex digits in either case (note 1: lowercase is
      "formally illegal" but a robust decoder recognises it);
    - "=" not followed by two hex digits, and "=X" as the last two octets of
      the body, are kept as written (notes 2 and 3); a final "=" is a soft
      line break, as at the end of any other line;
    - hard line breaks stay as they were (CRLF, or LF in a file stored so).
    """
    out = bytearray()
    for match in _LINE.finditer(body):
        text, end = match.group(1), match.group(2)
        if not text and not end:
            break  # the empty match at the end of the body
        # A part's last line has no line end of its own (the CRLF before the
        # boundary belongs to the delimiter, RFC 2046 5.1.1): its "=" is still
        # the soft line break an encoder wrote (as Python's quopri reads it).
        soft = text.endswith(b"=")
        if soft:
            text = text[:-1]
        out += _QP_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), text)
        if not soft:
            out += end
    return bytes(out)


def binary_bytes(struct: MessageStructure, data: bytes, part: tuple[int, ...]) -> bytes:
    """BINARY[part]: the part's body with its transfer encoding undone.

    BINARY[] is the whole message as stored (it has no transfer encoding of
    its own); a nonexistent part is b"", as for BODY[].
    """
    _check(struct, data)
    if not part:
        return data
    node = part_at(struct, part)
    if node is None:
        return b""
    return decode_transfer_encoding(data[node.body_start : node.end], node.encoding)


def binary_size(struct: MessageStructure, data: bytes, part: tuple[int, ...]) -> int:
    """BINARY.SIZE[part]: the octets BINARY[part] would return."""
    _check(struct, data)
    node = part_at(struct, part) if part else None
    if node is not None and node.encoding in _IDENTITY_ENCODINGS:
        return node.size
    return len(binary_bytes(struct, data, part))


# --- ENVELOPE and BODYSTRUCTURE (RFC 9051 7.5.2) -----------------------------

_ENVELOPE_FIELDS = hdr.field_names(
    b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc", b"in-reply-to",
    b"message-id",
)  # fmt: skip


def envelope(struct: MessageStructure, data: bytes, *, utf8: bool = False) -> bytes:
    """The ENVELOPE of the message as IMAP wire octets, "(" ... ")".

    utf8: the session accepts UTF-8 in quoted strings (IMAP4rev2, or
    UTF8=ACCEPT enabled); otherwise 8-bit values go as literals.
    """
    _check(struct, data)
    return _envelope(data, struct.root, struct.max_header_bytes, utf8)


def _envelope(data: bytes, message: Part, max_header: int, utf8: bool) -> bytes:
    header_end = min(message.body_start, message.start + max_header)
    values = hdr.named_fields(data, message.start, header_end, _ENVELOPE_FIELDS)
    from_ = hdr.addresses(values.get(b"from"))
    # RFC 9051 7.5.2: Sender and Reply-To absent or empty take From's value.
    sender = hdr.addresses(values.get(b"sender")) or from_
    reply_to = hdr.addresses(values.get(b"reply-to")) or from_
    items = [
        hdr.imap_nstring(values.get(b"date"), utf8),
        hdr.imap_nstring(values.get(b"subject"), utf8),
        *(
            _address_list(addresses, utf8)
            for addresses in (
                from_,
                sender,
                reply_to,
                hdr.addresses(values.get(b"to")),
                hdr.addresses(values.get(b"cc")),
                hdr.addresses(values.get(b"bcc")),
            )
        ),
        hdr.imap_nstring(values.get(b"in-reply-to"), utf8),
        hdr.imap_nstring(values.get(b"message-id"), utf8),
    ]
    return b"(" + b" ".join(items) + b")"


def _address_list(addresses: list[hdr.Address], utf8: bool) -> bytes:
    if not addresses:
        return b"NIL"
    return b"(%s)" % b"".join(
        b"(%s %s %s %s)" % tuple(hdr.imap_nstring(item, utf8) for item in address)
        for address in addresses
    )


def bodystructure(
    struct: MessageStructure,
    data: bytes,
    extensible: bool = True,
    *,
    utf8: bool = False,
    imap4rev2: bool = False,
) -> bytes:
    """BODYSTRUCTURE (or BODY, extensible=False) as IMAP wire octets (RFC 9051 7.5.2).

    Types, subtypes, encodings and parameter names are upper-cased as in the
    RFC's examples; values are sent as written. utf8 as for envelope().
    imap4rev2: the session enabled IMAP4rev2, whose grammar gives
    MESSAGE/GLOBAL the envelope form of MESSAGE/RFC822; IMAP4rev1 (RFC 3501
    media-message) knows only MESSAGE/RFC822, so there it is a basic body.
    """
    _check(struct, data)
    out: list[bytes] = []
    _Writer(data, extensible, utf8, imap4rev2, struct.max_header_bytes, out).body(struct.root)
    return b"".join(out)


@dataclass(slots=True)
class _Writer:
    data: bytes
    extensible: bool
    utf8: bool
    imap4rev2: bool
    max_header: int
    out: list[bytes]

    def string(self, value: str) -> bytes:
        return hdr.imap_string(hdr.octets(value), self.utf8)

    def nstring(self, value: str | None) -> bytes:
        return b"NIL" if value is None else hdr.imap_string(hdr.octets(value), self.utf8)

    def params(self, pairs: hdr.Params) -> bytes:
        """body-fld-param: ("NAME" "value" ...) or NIL."""
        if not pairs:
            return b"NIL"
        return b"(%s)" % b" ".join(
            b"%s %s" % (self.string(name.upper()), self.string(value)) for name, value in pairs
        )

    def body(self, part: Part) -> None:
        out = self.out
        if part.parts:  # body-type-mpart: the parts, then subtype and extension data
            out.append(b"(")
            for child in part.parts:
                self.body(child)
            out.append(b" " + self.string(part.subtype.upper()))
            if self.extensible:
                out.append(b" " + self.params(part.params))
        else:
            self.leaf(part)
        if self.extensible:  # body-fld-dsp, body-fld-lang, body-fld-loc
            if part.disposition is None:
                out.append(b" NIL")
            else:
                disposition = self.string(part.disposition.upper())
                out.append(b" (%s %s)" % (disposition, self.params(part.disposition_params)))
            if not part.language:
                out.append(b" NIL")
            elif len(part.language) == 1:
                out.append(b" " + self.string(part.language[0]))
            else:
                out.append(b" (%s)" % b" ".join(self.string(tag) for tag in part.language))
            out.append(b" " + self.nstring(part.location))
        out.append(b")")

    def leaf(self, part: Part) -> None:
        """body-type-1part up to its extension data, without the closing parenthesis."""
        pairs = part.params
        if part.type == "text" and part.param("charset") is None:
            pairs = (*pairs, ("charset", "US-ASCII"))  # RFC 2045 5.2 default
        self.out.append(
            b"(%s %s %s %s %s %s %d"
            % (
                self.string(part.type.upper()),
                self.string(part.subtype.upper()),
                self.params(pairs),
                self.nstring(part.content_id),
                self.nstring(part.description),
                self.string((part.encoding or "7bit").upper()),
                part.size,
            )
        )
        message = part.message
        if message is not None and (self.imap4rev2 or part.subtype == "rfc822"):
            # body-type-msg: envelope, body, lines
            envelope = _envelope(self.data, message, self.max_header, self.utf8)
            self.out.append(b" " + envelope + b" ")
            self.body(message)
            self.out.append(b" %d" % part.lines)
        elif part.type == "text":  # body-type-text: lines
            self.out.append(b" %d" % part.lines)
        if self.extensible:
            self.out.append(b" " + self.nstring(part.md5))
