"""Tests of pimail.mime.structure: MIME structure, ENVELOPE, BODYSTRUCTURE, sections, BINARY.

Messages are built here as the octets a client would have sent (CRLF unless a
test says otherwise); expected IMAP strings are written out in full, and the
structure is cross-checked against Python's email package where both agree
on what a message means.
"""

from __future__ import annotations

import base64
import email
import email.policy
import time
import urllib.parse
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pimail.mime import header as mime_header
from pimail.mime.section import Partial, Section
from pimail.mime.structure import (
    MAX_DEPTH,
    MAX_PARTS,
    CacheFormatError,
    MessageStructure,
    MimeError,
    Part,
    StructureMismatchError,
    UnknownCTEError,
    apply_partial,
    binary_bytes,
    binary_size,
    bodystructure,
    envelope,
    parse,
    part_at,
    section_bytes,
)


def crlf(*lines: str | bytes) -> bytes:
    return b"\r\n".join(line.encode() if isinstance(line, str) else line for line in lines)


def walk(part: Part) -> Iterator[Part]:
    """Every entity in the order Python's email.Message.walk() visits them."""
    yield part
    for child in part.parts:
        yield from walk(child)
    if part.message is not None:
        yield from walk(part.message)


def depth(part: Part) -> int:
    children = [*part.parts, *([part.message] if part.message else [])]
    return 1 + max((depth(child) for child in children), default=0)


def body(struct: MessageStructure, data: bytes, *part: int, text: str | None = None) -> bytes:
    return section_bytes(struct, data, Section(tuple(part), text))


def fields(struct: MessageStructure, data: bytes, *names: str, part=(), exclude=False) -> bytes:
    text = "HEADER.FIELDS.NOT" if exclude else "HEADER.FIELDS"
    return section_bytes(struct, data, Section(part, text, tuple(n.upper() for n in names)))


def cross_check(data: bytes) -> None:
    """Our structure agrees with Python's email package on types, parameters and payloads."""
    struct = parse(data)
    ours = list(walk(struct.root))
    theirs = list(email.message_from_bytes(data, policy=email.policy.compat32).walk())
    assert [f"{p.type}/{p.subtype}" for p in ours] == [m.get_content_type() for m in theirs]
    for part, message in zip(ours, theirs, strict=True):
        for name in ("charset", "boundary", "name"):
            assert part.param(name) == message.get_param(name), name
        if part.parts or part.message is not None:
            continue
        payload = message.get_payload(decode=False).encode("ascii", "surrogateescape")
        assert data[part.body_start : part.end] == payload
        if part.encoding in ("base64", "quoted-printable"):
            path = path_of(struct, part)
            assert binary_bytes(struct, data, path) == message.get_payload(decode=True)


def path_of(struct: MessageStructure, target: Part) -> tuple[int, ...]:
    """The IMAP part number of target (a leaf), found by trying every number."""

    def search(path: tuple[int, ...]) -> tuple[int, ...] | None:
        for number in range(1, 50):
            found = part_at(struct, (*path, number))
            if found is None:
                return None
            if found is target:
                return (*path, number)
            if len(path) < 8 and (deeper := search((*path, number))) is not None:
                return deeper
        return None

    result = search(())
    assert result is not None
    return result


# --- messages ----------------------------------------------------------------

PLAIN_BODY = b"Hi Bob,\r\n\r\nlunch at noon?\r\n\r\nAlice\r\n"
PLAIN = (
    crlf(
        "Return-Path: <alice@example.net>",
        "Received: from mx.example.net (mx.example.net [192.0.2.1])",
        "\tby mail.example.org with ESMTPS; Mon, 1 Jan 2024 10:00:00 +0000",
        "Date: Mon, 1 Jan 2024 10:00:00 +0000",
        "From: Alice Example <alice@example.net>",
        "To: Bob <bob@example.org>",
        "Subject: Lunch?",
        "Message-ID: <lunch-1@example.net>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8; format=flowed",
        "Content-Transfer-Encoding: 7bit",
        "",
        "",
    )
    + PLAIN_BODY
)

ALTERNATIVE = crlf(
    "From: news@example.com",
    "To: Bob <bob@example.org>",
    "Subject: Newsletter",
    "Date: Wed, 3 Jan 2024 12:00:00 +0000",
    "Message-ID: <news-3@example.com>",
    "MIME-Version: 1.0",
    'Content-Type: multipart/alternative; boundary="=_alt_42"',
    "",
    "This is a multi-part message in MIME format.",
    "",
    "--=_alt_42",
    "Content-Type: text/plain; charset=UTF-8",
    "Content-Transfer-Encoding: quoted-printable",
    "",
    "Caf=C3=A9 news: prices are =",
    "down.",
    "--=_alt_42",
    "Content-Type: text/html; charset=UTF-8",
    "Content-Transfer-Encoding: quoted-printable",
    "",
    "<html><body><p>Caf=C3=A9 news</p>",
    "</body></html>",
    "",
    "--=_alt_42--",
    "epilogue, ignored",
    "",
)

PDF = bytes(range(256)) * 8
PDF_B64 = base64.encodebytes(PDF).replace(b"\n", b"\r\n")
MIXED = (
    crlf(
        "From: Alice <alice@example.net>",
        "To: bob@example.org",
        "Subject: The report",
        "Date: Thu, 4 Jan 2024 08:30:00 +0100",
        "MIME-Version: 1.0",
        "Content-Type: multipart/mixed;",
        ' boundary="mixed-boundary"',
        "",
        "--mixed-boundary",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "Report attached.",
        "",
        "--mixed-boundary",
        'Content-Type: application/pdf; name="report.pdf"',
        "Content-Transfer-Encoding: base64",
        'Content-Disposition: attachment; filename="report.pdf"',
        "Content-ID: <report@example.net>",
        "Content-Description: Q4 report",
        "Content-Language: en, de",
        "Content-Location: http://example.net/report.pdf",
        "",
        "",
    )
    + PDF_B64
    + crlf("--mixed-boundary--", "")
)

INNER = crlf(
    "From: Dave <dave@example.net>",
    "To: Carol <carol@example.com>",
    "Subject: report",
    "Message-ID: <r@example.net>",
    "MIME-Version: 1.0",
    'Content-Type: multipart/alternative; boundary="inner"',
    "",
    "--inner",
    "Content-Type: text/plain",
    "",
    "numbers",
    "--inner",
    "Content-Type: text/html",
    "",
    "<p>numbers</p>",
    "--inner--",
    "",
)
NESTED = (
    crlf(
        "From: Carol <carol@example.com>",
        "To: list@example.org",
        "Subject: Fwd: report",
        "Date: Tue, 2 Jan 2024 09:00:00 +0100",
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="outer"',
        "",
        "--outer",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "See the forwarded message.",
        "--outer",
        "Content-Type: message/rfc822",
        "Content-Description: forwarded message",
        "",
        "",
    )
    + INNER
    + crlf("", "--outer--", "")
)

RFC2231 = crlf(
    "From: a@example.com",
    "Subject: rates",
    "MIME-Version: 1.0",
    "Content-Type: multipart/mixed; boundary=b1",
    "",
    "--b1",
    "Content-Type: application/vnd.ms-excel;",
    " name*0*=utf-8''%E2%82%AC%20rates;",
    " name*1*=%20for%202024.xlsx",
    "Content-Disposition: attachment;",
    ' filename*0="long file name ";',
    ' filename*1="continued.xlsx"; size=1234',
    "Content-Transfer-Encoding: base64",
    "",
    "AAAA",
    "--b1",
    "Content-Type: text/plain; title*0*=us-ascii'en'This%20is; title*1=\" fun\"",
    "Content-Disposition: inline; filename*=utf-8''%C3%A9t%C3%A9.txt",
    "",
    "x",
    "--b1",
    'Content-Type: image/png; name="=?utf-8?B?w6l0w6kucG5n?="',
    "",
    "y",
    "--b1--",
    "",
)

GROUPS = crlf(
    'From: "Smith, Jane (Sales)" <jane@example.com>',
    "Sender:",
    "Reply-To: ",
    'To: Friends: joe@example.com, "Ann" <ann@example.com>;, undisclosed-recipients:;',
    "Cc: boss@example.com (The Boss),",
    '  <@relay.example.net,@b.example:route@example.org>, "q r"@example.org',
    "Bcc:",
    "Subject:",
    "In-Reply-To: <a@b>",
    "",
    "body",
    "",
)

ALL_MESSAGES = {
    "plain": PLAIN,
    "alternative": ALTERNATIVE,
    "mixed": MIXED,
    "nested": NESTED,
    "rfc2231": RFC2231,
    "groups": GROUPS,
}


# --- plain text --------------------------------------------------------------


def test_plain_text_envelope_and_bodystructure():
    struct = parse(PLAIN)
    assert envelope(struct, PLAIN) == (
        b'("Mon, 1 Jan 2024 10:00:00 +0000" "Lunch?" '
        b'(("Alice Example" NIL "alice" "example.net")) '
        b'(("Alice Example" NIL "alice" "example.net")) '
        b'(("Alice Example" NIL "alice" "example.net")) '
        b'(("Bob" NIL "bob" "example.org")) NIL NIL NIL "<lunch-1@example.net>")'
    )
    assert len(PLAIN_BODY) == 36
    assert bodystructure(struct, PLAIN) == (
        b'("TEXT" "PLAIN" ("CHARSET" "utf-8" "FORMAT" "flowed") NIL NIL "7BIT" 36 5'
        b" NIL NIL NIL NIL)"
    )
    assert bodystructure(struct, PLAIN, extensible=False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "utf-8" "FORMAT" "flowed") NIL NIL "7BIT" 36 5)'
    )


def test_plain_text_sections():
    struct = parse(PLAIN)
    header = PLAIN[: PLAIN.index(b"\r\n\r\n") + 4]
    assert body(struct, PLAIN) == PLAIN
    assert body(struct, PLAIN, text="HEADER") == header
    assert body(struct, PLAIN, text="TEXT") == PLAIN_BODY
    # RFC 9051 6.4.5: a non-multipart message has a part 1, its body.
    assert body(struct, PLAIN, 1) == PLAIN_BODY
    assert body(struct, PLAIN, 1, text="MIME") == header
    assert body(struct, PLAIN, 2) == b""
    assert body(struct, PLAIN, 1, 1) == b""
    assert body(struct, PLAIN, 1, text="HEADER") == b""  # part 1 is no message/rfc822
    assert body(struct, PLAIN, text="MIME") == b""
    assert fields(struct, PLAIN, "subject", "FROM", "x-absent") == (
        b"From: Alice Example <alice@example.net>\r\nSubject: Lunch?\r\n\r\n"
    )
    assert fields(struct, PLAIN, "received") == (
        b"Received: from mx.example.net (mx.example.net [192.0.2.1])\r\n"
        b"\tby mail.example.org with ESMTPS; Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n"
    )
    assert fields(struct, PLAIN, "nothing") == b"\r\n"
    not_fields = fields(struct, PLAIN, "Received", "Return-Path", "Content-Type", exclude=True)
    assert not_fields.startswith(b"Date: Mon, 1 Jan 2024")
    assert not_fields.endswith(b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: 7bit\r\n\r\n")
    assert b"Received" not in not_fields and b"charset" not in not_fields


def test_header_fields_edge_cases():
    data = crlf(
        "Received: one",
        "junk line without colon",
        "Subject : spaced name",
        "received: two",
        "\tfolded",
        "X-Other: x",
        "",
        "body",
    )
    struct = parse(data)
    assert fields(struct, data, "RECEIVED") == b"Received: one\r\nreceived: two\r\n\tfolded\r\n\r\n"
    assert fields(struct, data, "subject") == b"Subject : spaced name\r\n\r\n"
    # .NOT leaves every other line of the header as it is, junk included.
    assert fields(struct, data, "received", "x-other", exclude=True) == (
        b"junk line without colon\r\nSubject : spaced name\r\n\r\n"
    )
    assert fields(struct, data, exclude=True) == body(struct, data, text="HEADER")
    assert fields(struct, data, "bad name", "") == b"\r\n"


def test_partial():
    assert apply_partial(b"0123456789", Partial(2, 3)) == b"234"
    assert apply_partial(b"0123456789", Partial(8, 100)) == b"89"
    assert apply_partial(b"0123456789", Partial(10, 1)) == b""
    assert apply_partial(b"0123456789", None) == b"0123456789"


def test_missing_headers_and_defaults():
    data = crlf("Subject: only a subject", "", "text")
    struct = parse(data)
    assert envelope(struct, data) == (b'(NIL "only a subject" NIL NIL NIL NIL NIL NIL NIL NIL)')
    assert bodystructure(struct, data) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 4 0 NIL NIL NIL NIL)'
    )
    # No header at all: the first line is no field, so all of it is body.
    data = b"just some text\r\nwithout headers\r\n"
    struct = parse(data)
    assert struct.root.body_start == 0
    assert body(struct, data, text="HEADER") == b""
    assert body(struct, data, text="TEXT") == data
    assert envelope(struct, data) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    # A header that starts with a folded line (nothing for it to continue): the
    # fields after it are still the header, as Python's email parser reads it.
    for stray in (b" folded: first\r\n", b"\tx\r\n y\r\n"):
        data = stray + crlf("Subject: after a stray line", "From: a@b", "", "text")
        struct = parse(data)
        assert body(struct, data, text="TEXT") == b"text"
        assert fields(struct, data, "subject") == b"Subject: after a stray line\r\n\r\n"
        assert envelope(struct, data).startswith(b'(NIL "after a stray line" ((NIL NIL "a" "b"))')
        assert email.message_from_bytes(data)["subject"] == "after a stray line"
    # Only folded lines before the empty line: no field, all body.
    data = b" folded\r\n\r\ntext"
    assert parse(data).root.body_start == 0
    # Header only, no empty line and no body.
    data = b"Subject: x\r\nFrom: a@b"
    struct = parse(data)
    assert body(struct, data, text="HEADER") == data
    assert body(struct, data, text="TEXT") == b""
    assert fields(struct, data, "from") == b"From: a@b\r\n\r\n"
    # Empty message.
    struct = parse(b"")
    assert bodystructure(struct, b"") == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0 NIL NIL NIL NIL)'
    )
    assert envelope(struct, b"") == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_invalid_content_type_is_text_plain():
    data = crlf("Content-Type: garbage", "Content-Transfer-Encoding: 8bit", "", "body")
    assert bodystructure(parse(data), data) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "8BIT" 4 0 NIL NIL NIL NIL)'
    )
    cross_check(data)
    data = crlf("Content-Type: Image/JPEG (a comment)", "", "x")
    assert bodystructure(parse(data), data, extensible=False) == (
        b'("IMAGE" "JPEG" NIL NIL NIL "7BIT" 1)'
    )


# --- multipart ---------------------------------------------------------------


def test_multipart_alternative_with_html():
    struct = parse(ALTERNATIVE)
    text = b"Caf=C3=A9 news: prices are =\r\ndown."
    html = b"<html><body><p>Caf=C3=A9 news</p>\r\n</body></html>\r\n"
    assert body(struct, ALTERNATIVE, 1) == text
    assert body(struct, ALTERNATIVE, 2) == html
    assert body(struct, ALTERNATIVE, 2, text="MIME") == (
        b"Content-Type: text/html; charset=UTF-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    assert body(struct, ALTERNATIVE, 3) == b""
    assert bodystructure(struct, ALTERNATIVE) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "UTF-8") NIL NIL "QUOTED-PRINTABLE" 35 1 NIL NIL NIL NIL)'
        b'("TEXT" "HTML" ("CHARSET" "UTF-8") NIL NIL "QUOTED-PRINTABLE" 51 2 NIL NIL NIL NIL)'
        b' "ALTERNATIVE" ("BOUNDARY" "=_alt_42") NIL NIL NIL)'
    )
    assert bodystructure(struct, ALTERNATIVE, extensible=False) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "UTF-8") NIL NIL "QUOTED-PRINTABLE" 35 1)'
        b'("TEXT" "HTML" ("CHARSET" "UTF-8") NIL NIL "QUOTED-PRINTABLE" 51 2) "ALTERNATIVE")'
    )
    assert len(text) == 35 and len(html) == 51
    assert binary_bytes(struct, ALTERNATIVE, (1,)) == "Café news: prices are down.".encode()
    assert binary_size(struct, ALTERNATIVE, (1,)) == len("Café news: prices are down.".encode())
    cross_check(ALTERNATIVE)


def test_multipart_mixed_with_base64_attachment():
    struct = parse(MIXED)
    assert body(struct, MIXED, 1) == b"Report attached.\r\n"
    # The CRLF before a delimiter belongs to the delimiter (RFC 2046 5.1.1).
    assert body(struct, MIXED, 2) == PDF_B64[:-2]
    assert binary_bytes(struct, MIXED, (2,)) == PDF
    assert binary_size(struct, MIXED, (2,)) == len(PDF)
    assert binary_bytes(struct, MIXED, (1,)) == b"Report attached.\r\n"
    assert binary_size(struct, MIXED, (1,)) == 18
    assert binary_bytes(struct, MIXED, ()) == MIXED
    assert binary_bytes(struct, MIXED, (3,)) == b""
    assert bodystructure(struct, MIXED) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 18 1 NIL NIL NIL NIL)'
        b'("APPLICATION" "PDF" ("NAME" "report.pdf") "<report@example.net>" "Q4 report" "BASE64" '
        + str(len(PDF_B64) - 2).encode()
        + b' NIL ("ATTACHMENT" ("FILENAME" "report.pdf")) ("en" "de") '
        b'"http://example.net/report.pdf")'
        b' "MIXED" ("BOUNDARY" "mixed-boundary") NIL NIL NIL)'
    )
    cross_check(MIXED)


def test_nested_message_rfc822_with_its_own_multipart():
    struct = parse(NESTED)
    inner_header = INNER[: INNER.index(b"\r\n\r\n") + 4]
    assert body(struct, NESTED, 1) == b"See the forwarded message."
    assert body(struct, NESTED, 2) == INNER
    assert body(struct, NESTED, 2, text="MIME") == (
        b"Content-Type: message/rfc822\r\nContent-Description: forwarded message\r\n\r\n"
    )
    assert body(struct, NESTED, 2, text="HEADER") == inner_header
    assert body(struct, NESTED, 2, text="TEXT") == INNER[len(inner_header) :]
    assert fields(struct, NESTED, "Subject", "From", part=(2,)) == (
        b"From: Dave <dave@example.net>\r\nSubject: report\r\n\r\n"
    )
    assert body(struct, NESTED, 2, 1) == b"numbers"
    assert body(struct, NESTED, 2, 2) == b"<p>numbers</p>"
    assert body(struct, NESTED, 2, 2, text="MIME") == b"Content-Type: text/html\r\n\r\n"
    assert body(struct, NESTED, 2, 3) == b""
    assert body(struct, NESTED, 2, 1, 1) == b""
    assert body(struct, NESTED, 1, text="HEADER") == b""
    assert bodystructure(struct, NESTED) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 26 0 NIL NIL NIL NIL)'
        b'("MESSAGE" "RFC822" NIL NIL "forwarded message" "7BIT" '
        + str(len(INNER)).encode()
        + b' (NIL "report" (("Dave" NIL "dave" "example.net")) (("Dave" NIL "dave" "example.net"))'
        b' (("Dave" NIL "dave" "example.net")) (("Carol" NIL "carol" "example.com")) NIL NIL NIL'
        b' "<r@example.net>")'
        b' (("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 7 0 NIL NIL NIL NIL)'
        b'("TEXT" "HTML" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 14 0 NIL NIL NIL NIL)'
        b' "ALTERNATIVE" ("BOUNDARY" "inner") NIL NIL NIL) '
        + str(INNER.count(b"\n")).encode()
        + b' NIL NIL NIL NIL) "MIXED" ("BOUNDARY" "outer") NIL NIL NIL)'
    )
    assert INNER.count(b"\n") == 16
    cross_check(NESTED)


def test_single_part_message_rfc822_numbering():
    inner = crlf("Subject: inner", "", "inner text")
    data = crlf("Subject: outer", "Content-Type: message/rfc822", "", "") + inner
    struct = parse(data)
    assert body(struct, data, 1) == inner
    assert body(struct, data, 1, text="HEADER") == b"Subject: inner\r\n\r\n"
    assert body(struct, data, 1, text="TEXT") == b"inner text"
    assert body(struct, data, 1, 1) == b"inner text"
    assert body(struct, data, 1, 1, text="MIME") == b"Subject: inner\r\n\r\n"
    assert len(inner) == 28
    assert bodystructure(struct, data, extensible=False) == (
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 28 '
        b'(NIL "inner" NIL NIL NIL NIL NIL NIL NIL NIL) '
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 0) 2)'
    )


def test_message_global_and_digest():
    data = crlf(
        "Content-Type: multipart/digest; boundary=d",
        "",
        "--d",
        "",
        "Subject: one",
        "",
        "first",
        "--d",
        "Content-Type: message/global",
        "",
        "Subject: two",
        "",
        "second",
        "--d--",
    )
    struct = parse(data)
    assert [f"{p.type}/{p.subtype}" for p in struct.root.parts] == [
        "message/rfc822",  # RFC 2046 5.1.5: the default in a digest
        "message/global",
    ]
    assert bodystructure(struct, data, extensible=False, imap4rev2=True) == (
        b'(("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 21 (NIL "one" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 5 0) 2)'
        b'("MESSAGE" "GLOBAL" NIL NIL NIL "7BIT" 22 (NIL "two" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 6 0) 2) "DIGEST")'
    )
    # IMAP4rev1 (RFC 3501) has no MESSAGE/GLOBAL form: a basic body there.
    assert bodystructure(struct, data, extensible=False).endswith(
        b'("MESSAGE" "GLOBAL" NIL NIL NIL "7BIT" 22) "DIGEST")'
    )
    assert body(struct, data, 1, text="MIME") == b"\r\n"
    assert body(struct, data, 2, 1) == b"second"
    cross_check(data)


def test_rfc2231_parameters_kept_raw_with_continuations_joined():
    struct = parse(RFC2231)
    excel, text, png = struct.root.parts
    assert excel.params == (("name*", "utf-8''%E2%82%AC%20rates%20for%202024.xlsx"),)
    assert excel.disposition_params == (
        ("filename", "long file name continued.xlsx"),
        ("size", "1234"),
    )
    assert text.params == (("title*", "us-ascii'en'This%20is%20fun"),)
    assert text.disposition_params == (("filename*", "utf-8''%C3%A9t%C3%A9.txt"),)
    assert png.params == (("name", "=?utf-8?B?w6l0w6kucG5n?="),)  # RFC 2047, raw
    assert bodystructure(struct, RFC2231) == (
        b'(("APPLICATION" "VND.MS-EXCEL" ("NAME*" "utf-8\'\'%E2%82%AC%20rates%20for%202024.xlsx")'
        b' NIL NIL "BASE64" 4 NIL ("ATTACHMENT" ("FILENAME" "long file name continued.xlsx"'
        b' "SIZE" "1234")) NIL NIL)'
        b'("TEXT" "PLAIN" ("TITLE*" "us-ascii\'en\'This%20is%20fun" "CHARSET" "US-ASCII")'
        b' NIL NIL "7BIT" 1 0 NIL ("INLINE" ("FILENAME*" "utf-8\'\'%C3%A9t%C3%A9.txt")) NIL NIL)'
        b'("IMAGE" "PNG" ("NAME" "=?utf-8?B?w6l0w6kucG5n?=") NIL NIL "7BIT" 1 NIL NIL NIL NIL)'
        b' "MIXED" ("BOUNDARY" "b1") NIL NIL NIL)'
    )
    # The joined raw values decode to what Python's email package makes of them.
    theirs = list(email.message_from_bytes(RFC2231, policy=email.policy.default).iter_parts())
    charset, _, encoded = excel.params[0][1].split("'", 2)
    assert urllib.parse.unquote(encoded, charset) == theirs[0].get_param("name")
    assert theirs[0].get_filename() == "long file name continued.xlsx"
    assert theirs[1].get_filename() == "été.txt"


def test_groups_routes_comments_and_empty_fields():
    struct = parse(GROUPS)
    jane = b'(("Smith, Jane (Sales)" NIL "jane" "example.com"))'
    assert envelope(struct, GROUPS) == (
        b'(NIL "" ' + jane + b" " + jane + b" " + jane + b" "
        b'((NIL NIL "Friends" NIL)(NIL NIL "joe" "example.com")("Ann" NIL "ann" "example.com")'
        b'(NIL NIL NIL NIL)(NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) '
        b'(("The Boss" NIL "boss" "example.com")'
        b'(NIL "@relay.example.net,@b.example" "route" "example.org")'
        b'(NIL NIL "\\"q r\\"" "example.org")) '
        b'NIL "<a@b>" NIL)'
    )
    # Python's email package reads the plain mailboxes the same way.
    message = email.message_from_bytes(GROUPS, policy=email.policy.compat32)
    assert email.utils.getaddresses([message["Cc"]])[0] == ("The Boss", "boss@example.com")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"a@b", [(None, None, b"a", b"b")]),
        (b"  Bob   Q.  Smith <b@x.y> ", [(b"Bob Q. Smith", None, b"b", b"x.y")]),
        (b'"a \\" b" <c@d>', [(b'a " b', None, b"c", b"d")]),
        (b"<c@d>", [(None, None, b"c", b"d")]),
        (b"c@d (Comment (nested)) ", [(b"Comment (nested)", None, b"c", b"d")]),
        (b"x (c) <y@z>", [(b"x", None, b"y", b"z")]),
        (b"localonly", [(None, None, b"localonly", b"")]),
        (b"a@b,,, c@d", [(None, None, b"a", b"b"), (None, None, b"c", b"d")]),
        (b"Broken <a@b", [(b"Broken", None, b"a", b"b")]),
        (b"G: ;", [(None, None, b"G", None), (None, None, None, None)]),
        (b"G: a@b", [(None, None, b"G", None), (None, None, b"a", b"b"), (None,) * 4]),
        (b"a@[192.0.2.1]", [(None, None, b"a", b"[192.0.2.1]")]),
        (b"", []),
        (b"(only a comment)", []),
        (b"<>", []),
    ],
)
def test_address_parsing(value, expected):
    assert mime_header.addresses(value) == expected


def test_eight_bit_headers_literal_or_quoted_utf8():
    data = crlf(
        "From: =?utf-8?q?J=C3=BCrgen?= <j@example.de>",
        'To: "Jürgen Groß" <jg@example.de>',
        "Subject: Grüße aus Köln",
        b"Cc: Ren\xe9 <rene@example.fr>",
        'Message-ID: say "hi" \\ bye',
        "",
        "x",
    )
    struct = parse(data)
    subject = "Grüße aus Köln".encode()
    name = "Jürgen Groß".encode()
    plain = envelope(struct, data)
    assert b"{%d}\r\n%s" % (len(subject), subject) in plain
    assert b"({%d}\r\n%s NIL" % (len(name), name) in plain
    assert b'(("=?utf-8?q?J=C3=BCrgen?=" NIL "j" "example.de"))' in plain  # RFC 2047: raw
    assert b'"say \\"hi\\" \\\\ bye"' in plain
    utf8 = envelope(struct, data, utf8=True)
    assert b'"' + subject + b'"' in utf8
    assert b'(("' + name + b'" NIL "jg" "example.de"))' in utf8
    # Latin-1 is not UTF-8: a literal even for a UTF-8 session.
    assert b"(({4}\r\nRen\xe9 NIL" in utf8


def test_eight_bit_parameter_values():
    data = crlf(
        "Content-Type: multipart/mixed; boundary=b",
        "",
        "--b",
        'Content-Type: text/plain; name="Grüße.txt"',
        "",
        "x",
        "--b--",
    )
    struct = parse(data)
    name = "Grüße.txt".encode()
    assert b'("NAME" {%d}\r\n%s "CHARSET"' % (len(name), name) in bodystructure(struct, data)
    assert b'("NAME" "%s" "CHARSET"' % name in bodystructure(struct, data, utf8=True)


def test_header_value_with_cr_or_nul_goes_as_literal():
    data = b"Subject: a\rb\x00c\r\n\r\n"
    assert envelope(parse(data), data) == b"(NIL {4}\r\na\rbc NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_message_made_by_pythons_email_package():
    outer = EmailMessage()
    outer["From"] = "Alice Example <alice@example.net>"
    outer["To"] = "Bob <bob@example.org>, carol@example.org"
    outer["Subject"] = "Holiday photos"
    outer.set_content("Photos attached.\n" * 20)
    outer.add_alternative("<p>Photos attached.</p>\n" * 20, subtype="html")
    outer.add_attachment(bytes(range(256)) * 40, maintype="image", subtype="jpeg", filename="a.jpg")
    forwarded = EmailMessage()
    forwarded["Subject"] = "Re: Holiday"
    forwarded.set_content("Looks great!\n", charset="utf-8", cte="quoted-printable")
    outer.add_attachment(forwarded)
    data = outer.as_bytes(policy=email.policy.default.clone(linesep="\r\n"))
    cross_check(data)
    struct = parse(data)
    structure = bodystructure(struct, data)
    assert structure.startswith(b'((("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 360 20 ')
    assert b'("IMAGE" "JPEG" NIL NIL NIL "BASE64" ' in structure
    assert b'("ATTACHMENT" ("FILENAME" "a.jpg"))' in structure
    assert b'("MESSAGE" "RFC822" NIL NIL NIL "8BIT" ' in structure
    assert b'(NIL "Re: Holiday" NIL NIL NIL NIL NIL NIL NIL NIL)' in structure
    assert structure.endswith(
        b' "MIXED" ("BOUNDARY" "%s") NIL NIL NIL)' % struct.root.param("boundary").encode()
    )
    assert binary_bytes(struct, data, (2,)) == bytes(range(256)) * 40
    assert binary_bytes(struct, data, (3, 1)) == b"Looks great!\r\n"
    assert body(struct, data, 3, text="HEADER").startswith(b"Subject: Re: Holiday\r\n")


# --- line ends and malformed structure --------------------------------------


def test_bare_lf_message():
    data = NESTED.replace(b"\r\n", b"\n")
    struct = parse(data)
    assert body(struct, data, 1) == b"See the forwarded message."
    assert body(struct, data, 2, 2) == b"<p>numbers</p>"
    assert body(struct, data, 2, text="HEADER") == INNER.replace(b"\r\n", b"\n")[:177]
    assert body(struct, data, 2, text="HEADER").endswith(b'"inner"\n\n')
    assert fields(struct, data, "subject") == b"Subject: Fwd: report\n\r\n"
    # Sizes count the stored octets.
    assert struct.root.parts[1].size == len(INNER.replace(b"\r\n", b"\n"))
    assert b'"7BIT" 7 0' in bodystructure(struct, data)
    cross_check(data)


def test_missing_final_boundary_and_transport_padding():
    data = crlf(
        "Content-Type: multipart/mixed; boundary=b",
        "",
        "--b  ",  # RFC 2046 5.1.1: white space after a delimiter is allowed
        "",
        "one",
        " --b",  # not at a line start
        "x--b",
        "--bc",  # another boundary that starts the same
        "--b\t",
        "",
        "two",
        "",
    )
    struct = parse(data)
    assert body(struct, data, 1) == b"one\r\n --b\r\nx--b\r\n--bc"
    # No close delimiter: the last part runs to the end (Python's email drops
    # the final CRLF here; Dovecot, like us, keeps it).
    assert body(struct, data, 2) == b"two\r\n"
    assert len(struct.root.parts) == 2


def test_preamble_and_epilogue_belong_to_no_part():
    data = crlf(
        "Content-Type: multipart/mixed; boundary=b",
        "",
        "preamble --b",
        "--b",
        "",
        "one",
        "--b--   ",
        "--b",
        "epilogue",
    )
    struct = parse(data)
    assert [body(struct, data, n) for n in (1, 2)] == [b"one", b""]
    assert body(struct, data, text="TEXT").startswith(b"preamble --b\r\n--b")


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/mixed",  # no boundary
        'multipart/mixed; boundary=""',
        "multipart/mixed; boundary=never-used",
    ],
)
def test_multipart_without_parts_gets_an_empty_text_part(content_type):
    data = crlf(f"Content-Type: {content_type}", "", "--b", "", "text", "--b--", "")
    struct = parse(data)
    assert len(struct.root.parts) == 1
    assert body(struct, data, 1) == b""
    assert body(struct, data, text="TEXT") == crlf("--b", "", "text", "--b--", "")
    assert bodystructure(struct, data, extensible=False) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0) "MIXED")'
    )


def test_close_delimiter_first_and_part_without_header():
    data = crlf("Content-Type: multipart/mixed; boundary=b", "", "--b--", "--b", "", "x")
    assert body(parse(data), data, 1) == b""
    data = crlf("Content-Type: multipart/mixed; boundary=b", "", "--b", "no header here", "--b--")
    struct = parse(data)
    assert body(struct, data, 1, text="MIME") == b""
    assert body(struct, data, 1) == b"no header here"
    cross_check(data)


def test_many_lines_that_only_start_like_a_delimiter():
    # More near-misses than _Delimiters checks in Python: the rest is found in C.
    near_misses = ["--bx", "--b-", "--b --", "--bb--"] * 20
    data = crlf(
        "Content-Type: multipart/mixed; boundary=b",
        "",
        "--b",
        "",
        *near_misses,
        "--b",
        "",
        "second",
        "--b  ",
        "",
        "third",
        "--b--",
    )
    struct = parse(data)
    assert body(struct, data, 1) == crlf(*near_misses)
    assert [body(struct, data, n) for n in (2, 3, 4)] == [b"second", b"third", b""]
    cross_check(data)


def test_inner_multipart_cut_short_by_outer_delimiter():
    data = crlf(
        "Content-Type: multipart/mixed; boundary=outer",
        "",
        "--outer",
        "Content-Type: multipart/alternative; boundary=inner",
        "",
        "--inner",
        "",
        "a",
        "--outer",
        "",
        "b",
        "--outer--",
    )
    struct = parse(data)
    assert body(struct, data, 1, 1) == b"a"
    assert body(struct, data, 2) == b"b"
    cross_check(data)


def test_encoded_message_rfc822_is_served_as_an_attachment():
    data = crlf(
        "Content-Type: multipart/mixed; boundary=b",
        "",
        "--b",
        "Content-Type: message/rfc822",
        "Content-Transfer-Encoding: base64",
        "",
        base64.b64encode(b"Subject: hidden\r\n\r\nx").decode(),
        "--b--",
    )
    struct = parse(data)
    part = struct.root.parts[0]
    assert (part.type, part.subtype, part.message) == ("application", "octet-stream", None)
    assert binary_bytes(struct, data, (1,)) == b"Subject: hidden\r\n\r\nx"
    assert body(struct, data, 1, text="HEADER") == b""


def test_unknown_transfer_encoding():
    data = crlf("Content-Transfer-Encoding: x-uuencode", "", "begin 644 x")
    struct = parse(data)
    with pytest.raises(UnknownCTEError) as raised:
        binary_bytes(struct, data, (1,))
    assert raised.value.encoding == "x-uuencode"
    with pytest.raises(UnknownCTEError):
        binary_size(struct, data, (1,))
    assert body(struct, data, 1) == b"begin 644 x"  # BODY[] is unaffected


def test_sloppy_base64_and_quoted_printable():
    data = crlf(
        "Content-Transfer-Encoding: BASE64",
        "",
        "aGVs bG8g",
        "d29y!bGQ",  # junk octet, missing padding
        "",
    )
    assert binary_bytes(parse(data), data, (1,)) == b"hello world"
    data = crlf("Content-Transfer-Encoding: quoted-printable", "", "a=3Db=", "c =ZZ=20", "")
    assert binary_bytes(parse(data), data, (1,)) == b"a=bc =ZZ \r\n"


# --- limits ------------------------------------------------------------------


def test_ten_thousand_parts_bomb():
    data = crlf("Subject: bomb", "Content-Type: multipart/mixed; boundary=x", "", "")
    data += b"--x\r\nContent-Type: text/plain\r\n\r\npart\r\n" * 10_000 + b"--x--\r\n"
    started = time.perf_counter()
    struct = parse(data)
    structure = bodystructure(struct, data)
    elapsed = time.perf_counter() - started
    parts = list(walk(struct.root))
    assert struct.truncated
    assert MAX_PARTS - 5 <= len(parts) <= MAX_PARTS + MAX_DEPTH
    rest = struct.root.parts[-1]
    assert rest.opaque and (rest.type, rest.subtype) == ("application", "octet-stream")
    assert data[rest.body_start : rest.end].endswith(b"part\r\n--x--\r\n")
    assert structure.endswith(b' "MIXED" ("BOUNDARY" "x") NIL NIL NIL)')
    assert body(struct, data, 5) == b"part"
    assert envelope(struct, data) == b'(NIL "bomb" NIL NIL NIL NIL NIL NIL NIL NIL)'
    assert elapsed < 2, elapsed  # well under 0.1 s in practice


def test_thousand_deep_multipart_bomb():
    data = b"Content-Type: text/plain\r\n\r\nleaf"
    for level in reversed(range(1000)):
        data = (
            b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (level, level)
            + data
            + b"\r\n--b%d--" % level
        )
    started = time.perf_counter()
    struct = parse(data)
    bodystructure(struct, data)
    elapsed = time.perf_counter() - started
    assert struct.truncated
    assert depth(struct.root) == MAX_DEPTH + 1
    deepest = part_at(struct, (1,) * MAX_DEPTH)
    assert deepest is not None and deepest.opaque and not deepest.parts
    # The opaque leaf holds everything below it, leaf included.
    opaque_body = body(struct, data, *(1,) * MAX_DEPTH)
    assert opaque_body.startswith(b"--b32\r\n") and opaque_body.endswith(b"--b32--")
    assert b"\r\n\r\nleaf\r\n--b999--" in opaque_body
    assert elapsed < 2, elapsed


def test_thousand_deep_message_bomb():
    data = b"Content-Type: message/rfc822\r\n\r\n" * 1000 + b"Subject: leaf\r\n\r\nleaf"
    started = time.perf_counter()
    struct = parse(data)
    bodystructure(struct, data)
    elapsed = time.perf_counter() - started
    assert struct.truncated
    assert depth(struct.root) == MAX_DEPTH + 1
    assert elapsed < 2, elapsed


def test_limits_are_arguments():
    struct = parse(NESTED, max_depth=1)
    assert struct.truncated and struct.root.parts[1].opaque
    struct = parse(MIXED, max_parts=2)
    assert struct.truncated
    assert [p.opaque for p in struct.root.parts] == [False, True]
    assert not parse(MIXED).truncated


def test_huge_header_is_examined_only_up_to_the_limit():
    filler = b"X-Filler: " + b"y" * 70 + b"\r\n"
    data = (
        b"Subject: big\r\n"
        + filler * 2000
        + b"Content-Type: multipart/mixed; boundary=b\r\nFrom: late@example.com\r\n\r\n--b\r\n\r\nx"
    )
    struct = parse(data, max_header_bytes=64 * 1024)
    assert (struct.root.type, struct.root.subtype) == ("text", "plain")
    assert envelope(struct, data) == b'(NIL "big" NIL NIL NIL NIL NIL NIL NIL NIL)'
    assert body(struct, data, text="HEADER").endswith(b"late@example.com\r\n\r\n")
    assert fields(struct, data, "from") == b"From: late@example.com\r\n\r\n"
    roomy = parse(data, max_header_bytes=1024 * 1024)
    assert roomy.root.type == "multipart"


# --- cache -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL_MESSAGES))
def test_json_round_trip(name):
    data = ALL_MESSAGES[name]
    struct = parse(data)
    text = struct.to_json()
    assert text.isascii()
    again = MessageStructure.from_json(text)
    assert again == struct
    assert bodystructure(again, data) == bodystructure(struct, data)


def test_json_keeps_8bit_values():
    data = crlf('Content-Type: text/plain; name="caf\xe9"'.encode("latin-1"), "", "x")
    struct = parse(data)
    again = MessageStructure.from_json(struct.to_json().encode())
    assert again == struct
    assert b'("NAME" {4}\r\ncaf\xe9 "CHARSET" "US-ASCII")' in bodystructure(again, data)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{}",
        "not json",
        "[2,0,false,65536,[]]",
        '[1,5,false,65536,[0,0,9,0,"text","plain",[],null,null,null,null,null,[],[],null,0,[],null]]',
        '[1,5,false,65536,[0,3,2,0,"text","plain",[],null,null,null,null,null,[],[],null,0,[],null]]',
        '[1,5,false,65536,[0,0,5,0,"text","plain",["a"],null,null,null,null,null,[],[],null,0,[],null]]',
        '[1,5,false,65536,[0,0,5,0,7,"plain",[],null,null,null,null,null,[],[],null,0,[],null]]',
        '[1,5,false,65536,[0,0,5,0,"text","plain",[],null,null,null,null,null,[],[],null,0,"x",null]]',
        "[" * 100_000,
    ],
)
def test_bad_cache_is_a_cache_format_error(text):
    with pytest.raises(CacheFormatError):
        MessageStructure.from_json(text)


def test_structure_of_other_octets_is_refused():
    struct = parse(PLAIN)
    with pytest.raises(StructureMismatchError):
        section_bytes(struct, PLAIN + b"x", Section())
    with pytest.raises(MimeError):
        envelope(struct, b"")


# --- properties --------------------------------------------------------------


def exercise(data: bytes) -> None:
    """Everything FETCH may ask of a message; only MimeError may escape."""
    struct = parse(data)
    assert struct.size == len(data)
    check_offsets(struct.root, 0, len(data))
    envelope(struct, data)
    envelope(struct, data, utf8=True)
    bodystructure(struct, data)
    bodystructure(struct, data, extensible=False, utf8=True, imap4rev2=True)
    assert MessageStructure.from_json(struct.to_json()) == struct
    paths = [(), (1,), (1, 1), (2,), (1, 2, 1), (3, 1)]
    for path in paths:
        for text in (None, "HEADER", "TEXT", "MIME"):
            section_bytes(struct, data, Section(path, text))
        section_bytes(struct, data, Section(path, "HEADER.FIELDS", ("FROM", "CONTENT-TYPE")))
        section_bytes(struct, data, Section(path, "HEADER.FIELDS.NOT", ("SUBJECT",)))
        try:
            assert len(binary_bytes(struct, data, path)) == binary_size(struct, data, path)
        except UnknownCTEError:
            pass


def check_offsets(part: Part, low: int, high: int) -> None:
    assert low <= part.start <= part.body_start <= part.end <= high
    previous = part.body_start
    for child in part.parts:
        assert child.start >= previous
        check_offsets(child, part.body_start, part.end)
        previous = child.end
    if part.message is not None:
        assert (part.message.start, part.message.end) == (part.body_start, part.end)
        check_offsets(part.message, part.body_start, part.end)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(data):
    exercise(data)


FRAGMENTS = [
    b"Content-Type: multipart/mixed; boundary=b",
    b'Content-Type: multipart/digest; boundary="c"',
    b"Content-Type: message/rfc822",
    b"Content-Type: message/global",
    b"Content-Type: text/plain; charset*0*=utf-8''a; charset*1=b",
    b"Content-Type: multipart/alternative; boundary=b",
    b"Content-Transfer-Encoding: base64",
    b"Content-Transfer-Encoding: quoted-printable",
    b"Content-Transfer-Encoding: x-weird",
    b'Content-Disposition: attachment; filename="a\\"b"',
    b'From: "A" <a@b>, G: c@d;',
    b"To: (x) <@r:y@z>, q@[1.2.3.4]",
    b"Subject: =?utf-8?q?x?= \xc3\xa9",
    b" folded continuation",
    b"--b",
    b"--b--",
    b"--c",
    b"--c--",
    b"",
    b"aGVsbG8=",
    b"a=3Db=",
    b"\xff\x00(",
    b"From nobody",
]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(FRAGMENTS), max_size=40),
    st.sampled_from([b"\r\n", b"\n"]),
)
def test_mime_shaped_input_never_raises(fragments, line_end):
    exercise(line_end.join(fragments))


ADDRESS_ALPHABET = st.sampled_from(
    ["a", "b", "x.y", "@", "<", ">", ",", ";", ":", '"', "\\", " ", "\t", "(", ")", "é", "[", "]"]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(ADDRESS_ALPHABET, max_size=30).map("".join))
def test_address_fast_path_agrees_with_general_parser(value):
    raw = value.encode()
    assert mime_header.addresses(raw) == mime_header._parse_addresses(raw)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["", "Bob", "Bob  Q. Smith", '"Smith, Bob"', '"a\\"b"', "Jürgen"]),
            st.sampled_from(["bob", "b.o.b", "x+y"]),
            st.sampled_from(["example.org", "ex.ample"]),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_address_fast_path_on_common_lists(entries):
    value = ", ".join(
        f"{name} <{local}@{host}>" if name else f"{local}@{host}" for name, local, host in entries
    )
    raw = value.encode()
    assert mime_header.addresses(raw) == mime_header._parse_addresses(raw)
    assert len(mime_header.addresses(raw)) == len(entries)
