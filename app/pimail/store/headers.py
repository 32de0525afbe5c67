"""Just enough RFC 5322 header parsing for the index, on raw bytes.

The index keeps header values raw (unfolded, not RFC 2047-decoded): IMAP
ENVELOPE wants them that way, and the webmail decodes when it shows them.
Only the header block is read, and at most `MAX_HEADER` octets of it.
"""

from __future__ import annotations

MAX_HEADER = 256 * 1024

INDEXED = {
    b"date": "hdr_date",
    b"from": "hdr_from",
    b"to": "hdr_to",
    b"cc": "hdr_cc",
    b"subject": "hdr_subject",
    b"message-id": "hdr_message_id",
    b"in-reply-to": "hdr_in_reply_to",
}
# An index column holds at most this much of a header value.
MAX_VALUE = 2048


def header_end(data: bytes) -> int:
    """Offset just past the blank line that ends the header block (or len(data))."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = data.find(sep, 0, MAX_HEADER)
        if i >= 0:
            return i + len(sep)
    return min(len(data), MAX_HEADER)


def fields(data: bytes) -> list[tuple[bytes, bytes]]:
    """[(lower-case name, unfolded raw value)] of the header block, in order."""
    block = data[: header_end(data)]
    out: list[tuple[bytes, bytes]] = []
    for line in block.splitlines():
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if out:  # RFC 5322 2.2.3: unfold
                name, value = out[-1]
                out[-1] = (name, value + b" " + line.strip())
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or b" " in name.strip():
            continue  # not a header field: skip it rather than guess
        out.append((name.strip().lower(), value.strip()))
    return out


def index_columns(data: bytes) -> dict[str, str | None]:
    """The first occurrence of each indexed header, decoded for storage."""
    columns: dict[str, str | None] = dict.fromkeys(INDEXED.values())
    for name, value in fields(data):
        column = INDEXED.get(name)
        if column and columns[column] is None:
            columns[column] = value[:MAX_VALUE].decode("utf-8", "replace")
    return columns
