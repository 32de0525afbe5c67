"""NUL and BINARY over a real IMAPS socket (RFC 9051 4.3, 6.4.5; RFC 3516; RFC 2045 6.7, 6.8).

A message APPENDed as a literal8 ~{n} may hold NUL. A plain {n} literal never
carries NUL (RFC 9051 4.3: CHAR8), so BODY[...] and RFC822 serve NUL as 0x80
(sizes unchanged); only BINARY[...] gives NUL, in a literal8 (RFC 3516 4.2).
BINARY decodes quoted-printable and base64 as RFC 2045 tells a robust decoder
to, BINARY.SIZE is always the length of BINARY, and an unknown encoding gets
NO [UNKNOWN-CTE] (RFC 3516 4.1).
"""

from __future__ import annotations

import re

import pytest

from .conftest import Mailbox
from .imap_raw import RawIMAP
from .test_imap_commands import raw_login

_MARKER = re.compile(rb"(~?)\{(\d+)\}\r\n")
_ITEM = re.compile(rb"([A-Z0-9.]+(?:\[[^\]]*\])?(?:<\d+>)?) $")


def literals(response: bytes) -> dict[bytes, tuple[bool, bytes]]:
    """The literals of one FETCH response: item name -> (is literal8, data)."""
    out: dict[bytes, tuple[bool, bytes]] = {}
    pos = 0
    while (m := _MARKER.search(response, pos)) is not None:
        start, size = m.end(), int(m.group(2))
        name = _ITEM.search(response, 0, m.start())
        assert name is not None, response[: m.start()]
        out[name.group(1)] = (m.group(1) == b"~", response[start : start + size])
        pos = start + size
    return out


def append8(c: RawIMAP, message: bytes) -> None:
    """APPEND as a non-synchronising literal8 (RFC 3516 4.3, RFC 7888)."""
    c.n += 1
    tag = b"t%d" % c.n
    c.send(tag + b" APPEND INBOX ~{%d+}\r\n" % len(message) + message + b"\r\n")
    _, tagged = c.until(tag)
    assert b" OK " in tagged, tagged


SINGLE = (
    b"From: a@example.org\r\nSubject: single\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: binary\r\n\r\nbin\x00ary\x00\r\n\x00end\r\n"
)
INNER = b"Subject: inner\x00\r\nContent-Transfer-Encoding: binary\r\n\r\ninner\x00body\r\n"
MULTI = (
    b'From: a@example.org\r\nSubject: multi\r\nContent-Type: multipart/mixed; boundary="b"\r\n'
    b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nplain text\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n"
    b"\r\n\x00\x01\x02\x00\r\n"
    b"--b\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    + INNER
    + b"--b--\r\n"
)
NUL_ITEMS = [
    # (message, FETCH items, the items that must be literal8 with NUL)
    (
        SINGLE,
        "BODY.PEEK[] BODY.PEEK[TEXT] BODY.PEEK[1] RFC822 RFC822.TEXT BODY.PEEK[]<10.150>"
        " BINARY.PEEK[] BINARY.PEEK[1] BINARY.SIZE[] BINARY.SIZE[1] BINARY.PEEK[1]<3.5>",
        {b"BINARY[]", b"BINARY[1]", b"BINARY[1]<3>"},
    ),
    (
        MULTI,
        "BODY.PEEK[2] BODY.PEEK[3] BODY.PEEK[3.HEADER] BODY.PEEK[3.TEXT] BODY.PEEK[3.1]"
        " RFC822.HEADER BODY.PEEK[1] BINARY.PEEK[2] BINARY.PEEK[3] BINARY.PEEK[3.1] BINARY.PEEK[1]"
        " BINARY.SIZE[2] BINARY.SIZE[3] BINARY.SIZE[3.1] RFC822",
        {b"BINARY[2]", b"BINARY[3]", b"BINARY[3.1]"},
    ),
]


@pytest.mark.parametrize(("message", "items", "binary"), NUL_ITEMS, ids=["single", "multipart"])
def test_nul_never_in_a_plain_literal(
    mailbox: Mailbox, message: bytes, items: str, binary: set[bytes]
) -> None:
    c = raw_login(mailbox)
    append8(c, message)
    c.ok("SELECT INBOX")
    [response] = c.ok(f"FETCH 1 ({items})")
    found = literals(response)
    names = {name for name in found}
    assert binary <= names, names
    for name, (is8, data) in found.items():
        if name in binary:
            # RFC 3516 4.2: BINARY content with NUL comes as a literal8, NUL kept.
            assert is8 and b"\x00" in data, name
        else:
            # RFC 9051 4.3: never NUL in {n}; served as 0x80, same size.
            assert not is8 and b"\x00" not in data, (name, data)
    whole = found[b"RFC822"][1]
    assert len(whole) == len(message) and whole == message.replace(b"\x00", b"\x80")
    if b"BINARY[]" in found:
        assert found[b"BINARY[]"][1] == message
        assert found[b"BODY[]<10>"][1] == message[10:160].replace(b"\x00", b"\x80")
        assert found[b"BINARY[1]<3>"][1] == b"\x00ary\x00"
    # RFC 3516 4.2: BINARY.SIZE is the length of what BINARY returns.
    for size in re.finditer(rb"BINARY\.SIZE\[([0-9.]*)\] (\d+)", response):
        assert int(size.group(2)) == len(found[b"BINARY[%s]" % size.group(1)][1]), size
    c.close()


QP_BODY = (
    b"soft=\r\nbreak  \r\n"  # soft line break; trailing spaces dropped (RFC 2045 6.7 rule 3)
    b"tabs\t\t\r\n"
    b"lower=e9 upper=C3=A9\r\n"  # hex in either case (6.7 note 1)
    b"bad=ZZ and =4\r\n"  # not an escape: kept as written (note 2)
    b"padded soft=  \t\r\n"  # "=" then white space: still a soft break
    b"==3D\r\n"
    b"=4\r\n"  # "=" and one more octet on a line: kept (note 3)
    b"last="  # the part's last line: its CRLF is the delimiter's, the "=" a soft break
)
QP_DECODED = (
    b"softbreak\r\ntabs\r\nlower\xe9 upper\xc3\xa9\r\nbad=ZZ and =4\r\npadded soft==\r\n"
    b"=4\r\nlast"
)
B64_BODY = b"SGVs bG8s\r\nIHdv*cm!xk\r\nIQ\r\n"  # junk, line breaks, no padding (RFC 2045 6.8)
B64_DECODED = b"Hello, world!"


def mime_message(*parts: tuple[str, bytes]) -> bytes:
    out = b'Subject: encodings\r\nContent-Type: multipart/mixed; boundary="q"\r\n\r\n'
    for encoding, body in parts:
        out += b"--q\r\nContent-Type: text/plain; charset=utf-8\r\n"
        out += b"Content-Transfer-Encoding: %s\r\n\r\n%s\r\n" % (encoding.encode(), body)
    return out + b"--q--\r\n"


def test_binary_decodes_quoted_printable_and_base64(mailbox: Mailbox) -> None:
    c = raw_login(mailbox)
    plain = b"plain 8bit caf\xc3\xa9\r\nline two"
    append8(
        c,
        mime_message(
            ("quoted-printable", QP_BODY),
            ("base64", B64_BODY),
            ("base64", b"AAEC\r\nAw=="),
            ("8bit", plain),
            ("Quoted-Printable", b"=41=42=43"),
        ),
    )
    c.ok("SELECT INBOX")
    items = " ".join(f"BINARY.PEEK[{n}] BINARY.SIZE[{n}]" for n in range(1, 6))
    [response] = c.ok(f"FETCH 1 ({items} BINARY.PEEK[] BINARY.SIZE[])")
    found = literals(response)
    expected = [QP_DECODED, B64_DECODED, b"\x00\x01\x02\x03", plain, b"ABC"]
    for n, want in enumerate(expected, 1):
        assert found[b"BINARY[%d]" % n][1] == want, n
    # Only the decoded base64 with NUL is a literal8 (RFC 3516 4.2: "SHOULD
    # return the data in a <string>" when it has no NUL).
    assert [found[b"BINARY[%d]" % n][0] for n in range(1, 6)] == [False, False, True, False, False]
    for size in re.finditer(rb"BINARY\.SIZE\[([0-9.]*)\] (\d+)", response):
        assert int(size.group(2)) == len(found[b"BINARY[%s]" % size.group(1)][1]), size
    assert b"BINARY.SIZE[1] %d" % len(QP_DECODED) in response
    c.close()


def test_unknown_transfer_encoding_is_no_unknown_cte(mailbox: Mailbox) -> None:
    c = raw_login(mailbox)
    append8(c, mime_message(("7bit", b"fine"), ("x-uuencode", b"begin 644 a\r\nend")))
    c.ok("SELECT INBOX")
    for item in ("BINARY.PEEK[2]", "BINARY.SIZE[2]", "BINARY[2]<0.3>"):
        _, tagged = c.command(f"FETCH 1 ({item})")
        assert tagged.split(b" ", 1)[1].startswith(b"NO [UNKNOWN-CTE]"), (item, tagged)
    # The connection goes on; BODY[] of the same part is served as stored.
    [response] = c.ok("FETCH 1 (BODY.PEEK[2] BINARY.PEEK[1])")
    assert b"BODY[2] {16}\r\nbegin 644 a\r\nend" in response
    assert b"BINARY[1] {4}\r\nfine" in response
    c.close()


@pytest.mark.parametrize("marker", [b"{%d}", b"{%d+}"])
def test_nul_in_a_plain_literal_is_refused(mailbox: Mailbox, marker: bytes) -> None:
    # RFC 9051 4.3: a literal is CHAR8, no NUL; APPEND takes NUL only in a
    # literal8 (RFC 3516 4.4). Nothing is stored.
    c = raw_login(mailbox)
    data = b"Subject: nul\r\n\r\na\x00b\r\n"
    c.send(b"a1 APPEND INBOX " + marker % len(data) + b"\r\n")
    if b"+" not in marker:
        assert c.line().startswith(b"+")
    c.send(data + b"\r\n")
    _, tagged = c.until(b"a1")
    assert tagged.startswith(b"a1 BAD"), tagged
    assert b"MESSAGES 0" in c.ok("STATUS INBOX (MESSAGES)")[0]
    append8(c, data)  # the same octets as a literal8 are taken
    assert b"MESSAGES 1" in c.ok("STATUS INBOX (MESSAGES)")[0]
    c.close()
