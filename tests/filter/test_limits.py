"""MIME and archive limits (pimail.filter.limits): hostile samples and properties.

Every hostile sample is built here (nothing downloaded): 10,000 parts, 1,000
levels of nesting, a 42.zip-like tower of zips, a gzip of 1 GiB of zeros, zip
entries that claim huge sizes, overlap or lie, truncated zips and garbage.
Each is refused (or, for damaged but harmless input, let through) quickly
and never with an exception; normal mail passes with its parts counted.
"""

from __future__ import annotations

import base64
import io
import struct
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pimail.filter.limits import DEFAULT_LIMITS, LimitResult, Limits, check, check_file

MiB = 1024 * 1024
FAST = 1.5  # seconds: no sample may take longer (they take milliseconds to ~0.3 s)


# -- builders ------------------------------------------------------------------


def mail(
    body: bytes, content_type: bytes = b"text/plain; charset=utf-8", headers: bytes = b""
) -> bytes:
    return (
        b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: test\r\n"
        b"MIME-Version: 1.0\r\n" + headers + b"Content-Type: " + content_type + b"\r\n\r\n" + body
    )


def multipart(parts: list[bytes], boundary: bytes = b"b1", subtype: bytes = b"mixed") -> bytes:
    """A multipart body (the parts are entities: headers, blank line, body)."""
    out = b"preamble\r\n"
    for part in parts:
        out += b"--" + boundary + b"\r\n" + part + b"\r\n"
    return out + b"--" + boundary + b"--\r\nepilogue\r\n"


def attachment(name: str, content: bytes, content_type: str = "application/octet-stream") -> bytes:
    encoded = base64.encodebytes(content).replace(b"\n", b"\r\n")
    return (
        f'Content-Type: {content_type}; name="{name}"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{name}"\r\n\r\n'
    ).encode() + encoded


def with_attachments(*attachments: bytes) -> bytes:
    text = b"Content-Type: text/plain\r\n\r\nSee attached.\r\n"
    parts = [text, *attachments]
    return mail(multipart(parts), b'multipart/mixed; boundary="b1"')


def zip_of(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def docx_like() -> bytes:
    """An office document is a zip of XML: it must pass (ratio ~10:1, small)."""
    xml = b'<?xml version="1.0"?><w:document>' + b"<w:p>Quarterly figures</w:p>" * 4000
    return zip_of({"[Content_Types].xml": b"<Types/>", "word/document.xml": xml})


def tower_of_zips(levels: int, width: int = 16, bottom_file: int = 4 * MiB) -> bytes:
    """42.zip's shape: `levels` zips deep, `width` copies at each level, zeros at the bottom."""
    blob = zip_of({f"{i:x}.dll": bytes(bottom_file) for i in range(width)})
    for level in range(levels - 1):
        blob = zip_of({f"{level}-{i:x}.zip": blob for i in range(width)})
    return blob


def gzip_of_zeros(size: int) -> bytes:
    """A gzip of `size` bytes of zeros (a multiple of 1 MiB), built streaming.

    After a full flush deflate forgets its history, so every 1 MiB of zeros
    compresses to the same bytes: compress two, repeat the second.
    """
    chunk = bytes(MiB)
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    first = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    repeated = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    end = deflate.flush()[:-8]  # the last (empty) block, without the 2-chunk trailer
    crc = 0
    for _ in range(size // MiB):
        crc = zlib.crc32(chunk, crc)
    trailer = struct.pack("<II", crc, size & 0xFFFFFFFF)  # RFC 1952 2.3.1: CRC32, ISIZE
    return first + repeated * (size // MiB - 1) + end + trailer


def patch_central(blob: bytes, field_offset: int, fmt: str, value: int, index: int = 0) -> bytes:
    """Overwrite a field of the index-th central directory header (APPNOTE 4.3.12)."""
    at = -1
    for _ in range(index + 1):
        at = blob.index(b"PK\x01\x02", at + 1)
    data = bytearray(blob)
    struct.pack_into(fmt, data, at + field_offset, value)
    return bytes(data)


def overlapping_zip() -> bytes:
    """Two central directory entries for one local file: Fifield's overlap, in small."""
    blob = zip_of({"a.txt": b"x" * 1000})
    cd_at = blob.index(b"PK\x01\x02")
    eocd_at = blob.index(b"PK\x05\x06")
    central = blob[cd_at:eocd_at]
    eocd = bytearray(blob[eocd_at:])
    struct.pack_into("<HHI", eocd, 8, 2, 2, len(central) * 2)  # entries, entries, cd size
    return blob[:cd_at] + central + central.replace(b"a.txt", b"b.txt") + bytes(eocd)


def lying_nested_zip() -> bytes:
    """A zip inside a zip whose entry says 100 bytes and inflates to 2 MiB."""
    inner = zip_of({"big.txt": bytes(2 * MiB)}, zipfile.ZIP_STORED)
    outer = zip_of({"inner.zip": inner})
    return patch_central(outer, 24, "<I", 100)  # uncompressed size


def tar_gz() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = b"log line\n" * 10000
        info = tarfile.TarInfo("app.log")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def nested_multiparts(depth: int) -> bytes:
    head = b"".join(
        b'Content-Type: multipart/mixed; boundary="n%d"\r\n\r\n--n%d\r\n' % (i, i)
        for i in range(depth)
    )
    tail = b"".join(b"\r\n--n%d--\r\n" % i for i in reversed(range(depth)))
    return b"From: a@example.org\r\n" + head + b"Content-Type: text/plain\r\n\r\nhi" + tail


def many_parts(n: int) -> bytes:
    part = b"Content-Type: text/plain\r\n\r\nx"
    return mail(multipart([part] * n), b"multipart/mixed; boundary=b1")


def forwarded() -> bytes:
    inner = mail(b"the original\r\n")
    parts = [
        b"Content-Type: text/plain\r\n\r\nForwarded:\r\n",
        b"Content-Type: message/rfc822\r\n\r\n" + inner,
    ]
    return mail(multipart(parts), b"multipart/mixed; boundary=b1")


def digest() -> bytes:
    # RFC 2046 5.1.5: the parts of a digest are message/rfc822 by default.
    parts = [b"\r\n" + mail(b"one\r\n"), b"\r\n" + mail(b"two\r\n")]
    return mail(multipart(parts, b"d"), b"multipart/digest; boundary=d")


def alternative_with_attachment() -> bytes:
    alternative = b"Content-Type: multipart/alternative; boundary=alt\r\n\r\n" + multipart(
        [b"Content-Type: text/plain\r\n\r\nHi", b"Content-Type: text/html\r\n\r\n<p>Hi</p>"],
        b"alt",
        b"alternative",
    )
    parts = [alternative, attachment("report.docx", docx_like())]
    return mail(multipart(parts), b"multipart/mixed; boundary=b1")


# -- the table -----------------------------------------------------------------


@dataclass
class Sample:
    name: str
    build: object  # () -> bytes
    ok: bool
    kind: str = ""
    parts: int | None = None
    depth: int | None = None
    limits: Limits = DEFAULT_LIMITS


SAMPLES = [
    # normal mail passes, counted
    Sample("plain text", lambda: mail(b"Hello\r\n"), True, parts=1, depth=0),
    Sample("no body", lambda: b"Subject: hi\r\n", True, parts=1, depth=0),
    Sample("empty", lambda: b"", True, parts=1, depth=0),
    Sample("alternative + docx", alternative_with_attachment, True, parts=5, depth=2),
    Sample("forwarded message", forwarded, True, parts=4, depth=2),
    Sample("digest", digest, True, parts=5, depth=2),
    Sample(
        "tar.gz attachment",
        lambda: with_attachments(attachment("logs.tar.gz", tar_gz())),
        True,
        parts=3,
    ),
    Sample(
        "zip in zip",
        lambda: with_attachments(
            attachment(
                "photos.zip", zip_of({"a.zip": zip_of({"a.txt": b"hello" * 100}), "b.txt": b"b"})
            )
        ),
        True,
    ),
    Sample("499 parts", lambda: many_parts(498), True, parts=499, depth=1),
    Sample("20 deep", lambda: nested_multiparts(20), True, depth=20),
    # hostile structure
    Sample("10,000 parts", lambda: many_parts(10_000), False, "parts"),
    Sample("1,000 deep", lambda: nested_multiparts(1000), False, "depth"),
    Sample(
        "nested message/rfc822 x 100",
        lambda: (b"Content-Type: message/rfc822\r\n\r\n" * 100) + b"hi",
        False,
        "depth",
    ),
    Sample(
        "1 MB header block", lambda: b"X-Junk: " + b"a" * MiB + b"\r\n\r\nbody", False, "header"
    ),
    Sample(
        "200 KB of folded header",
        lambda: b"Subject: x\r\n" + b" y\r\n" * 50_000 + b"\r\nb",
        False,
        "header",
    ),
    # archives
    Sample(
        "42.zip-like tower",
        lambda: with_attachments(attachment("42.zip", tower_of_zips(6))),
        False,
        "archive-depth",
    ),
    Sample(
        "42.zip-like tower, deep limit",
        lambda: with_attachments(attachment("42.zip", tower_of_zips(6))),
        False,
        "archive-size",
        limits=Limits(max_archive_depth=10),
    ),
    Sample(
        "gzip of 1 GiB of zeros",
        lambda: with_attachments(attachment("zeros.gz", gzip_of_zeros(1024 * MiB))),
        False,
        "archive-bomb",
    ),
    Sample(
        "gzip of 1 GiB of zeros, unnamed",
        lambda: with_attachments(attachment("data.bin", gzip_of_zeros(1024 * MiB))),
        False,
        "archive-bomb",
    ),
    Sample(
        "zip entry claiming 4 GB",
        lambda: with_attachments(
            attachment("a.zip", patch_central(zip_of({"a.txt": b"a" * 100}), 24, "<I", 0xFFFFFFF0))
        ),
        False,
        "archive-bomb",
    ),
    Sample(
        "zip entries overlapping",
        lambda: with_attachments(attachment("a.zip", overlapping_zip())),
        False,
        "archive-malformed",
    ),
    Sample(
        "nested entry lying about its size",
        lambda: with_attachments(attachment("a.zip", lying_nested_zip())),
        False,
        "archive-malformed",
    ),
    Sample(
        "20,000 zip entries",
        lambda: with_attachments(
            attachment("many.zip", zip_of({str(i): b"" for i in range(20_000)}, zipfile.ZIP_STORED))
        ),
        False,
        "archive-entries",
    ),
    Sample(
        "nested archive over 16 MiB",
        lambda: with_attachments(
            attachment(
                "a.zip", zip_of({"inner.zip": zip_of({"z": bytes(20 * MiB)}, zipfile.ZIP_STORED)})
            )
        ),
        False,
        "archive-nested-size",
    ),
    # damaged or junk: let through, quickly
    Sample("truncated zip", lambda: with_attachments(attachment("a.zip", docx_like()[:500])), True),
    Sample(
        "truncated gzip",
        lambda: with_attachments(attachment("a.gz", gzip_of_zeros(64 * MiB)[:5000])),
        True,
    ),
    Sample(
        "zip named, not a zip",
        lambda: with_attachments(attachment("a.zip", b"just text " * 100)),
        True,
    ),
    Sample(
        "bad base64",
        lambda: with_attachments(
            b"Content-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n"
            b"\r\nUEsDB!!!@@@="
        ),
        True,
    ),
    Sample(
        "2M boundary-like lines",
        lambda: mail(b"--ax\r\n" * 2_000_000, b"multipart/mixed; boundary=a"),
        True,
        parts=1,
    ),
    Sample("NUL bytes", lambda: bytes(MiB), False, "header"),
    Sample(
        "unterminated multipart",
        lambda: mail(
            b"--b\r\n\r\nx\r\n--b\r\nContent-Type: text/plain", b"multipart/mixed; boundary=b"
        ),
        True,
        parts=3,
    ),
]


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.name for s in SAMPLES])
def test_sample(sample: Sample) -> None:
    message = sample.build()
    started = time.perf_counter()
    result = check(message, sample.limits)
    elapsed = time.perf_counter() - started
    assert elapsed < FAST, f"{sample.name} took {elapsed:.2f}s"
    assert (result.ok, result.kind) == (sample.ok, sample.kind), result
    if sample.parts is not None:
        assert result.parts == sample.parts, result
    if sample.depth is not None:
        assert result.depth == sample.depth, result
    assert result.reason.isascii() and "\n" not in result.reason


def test_smtp_status_per_kind() -> None:
    assert LimitResult(False, "r", 1, 0, "parts").smtp_status == (552, "5.3.4")
    assert LimitResult(False, "r", 1, 0, "archive-size").smtp_status == (552, "5.3.4")
    assert LimitResult(False, "r", 1, 0, "archive-bomb").smtp_status == (554, "5.6.0")
    assert LimitResult(False, "r", 1, 0, "archive-malformed").smtp_status == (554, "5.6.0")
    assert LimitResult(False, "r", 1, 0, "internal").smtp_status == (451, "4.3.0")


def test_check_file_maps_the_message(tmp_path) -> None:
    path = tmp_path / "message.eml"
    path.write_bytes(alternative_with_attachment())
    result = check_file(path)
    assert result.ok and result.parts == 5
    (tmp_path / "empty").write_bytes(b"")
    assert check_file(tmp_path / "empty").ok


def test_limits_are_settings() -> None:
    message = many_parts(10)
    assert check(message, Limits(max_parts=11)).ok
    assert check(message, Limits(max_parts=10)).kind == "parts"
    assert check(nested_multiparts(3), Limits(max_depth=2)).kind == "depth"


# -- properties ----------------------------------------------------------------

FRAGMENTS = [
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b"--",
    b"--b",
    b"--b--",
    b"--b\r\n",
    b"--b--\r\n",
    b" ",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b'Content-Type: multipart/digest; boundary="b"',
    b"Content-Type: message/rfc822\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Disposition: attachment; filename=a.zip\r\n",
    b"Content-Type: application/zip\r\n",
    b"UEsDBBQAAAAIAA==",
    b"H4sIAAAAAAAA",
    b"PK\x03\x04",
    b"PK\x01\x02",
    b"PK\x05\x06",
    b"\x1f\x8b",
    b"PK\x06\x06",
    b"PK\x06\x07",
    b"boundary*=utf-8''b",
    b"\t",
    b";",
    b'"',
    b"=\r\n",
    b"\xff" * 4,
]


def not_internal(result: LimitResult) -> None:
    assert isinstance(result, LimitResult)
    assert result.kind != "internal", result
    assert result.ok == (result.kind == "")


@settings(max_examples=300, deadline=1000)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    not_internal(check(data))


@settings(max_examples=300, deadline=1000)
@given(st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=20), max_size=60))
def test_mime_like_fragments_never_crash(pieces: list[bytes]) -> None:
    not_internal(check(b"".join(pieces)))
    not_internal(check(mail(b"".join(pieces), b"multipart/mixed; boundary=b")))


SMALL_ZIP = zip_of({"inner.zip": zip_of({"x.txt": b"hello" * 50}), "y.gz": b"\x1f\x8b" + b"z" * 10})


@settings(max_examples=300, deadline=1000)
@given(
    st.lists(st.tuples(st.integers(0, len(SMALL_ZIP) - 1), st.integers(0, 255)), max_size=8),
    st.integers(0, len(SMALL_ZIP)),
)
def test_damaged_zips_never_crash(edits: list[tuple[int, int]], cut: int) -> None:
    blob = bytearray(SMALL_ZIP)
    for position, value in edits:
        blob[position] = value
    not_internal(check(with_attachments(attachment("a.zip", bytes(blob[:cut])))))
    not_internal(check(with_attachments(attachment("a.zip", bytes(blob)))))


# Generated MIME trees: a leaf is an int (its text), a multipart is a list of trees.
trees = st.recursive(
    st.integers(0, 1000),
    lambda children: st.lists(children, min_size=1, max_size=4),
    max_leaves=40,
)


def render(tree: int | list, path: str = "r") -> bytes:
    if isinstance(tree, int):
        return b"Content-Type: text/plain\r\n\r\n-- text %d --\r\n--not-a-boundary" % tree
    boundary = f"=_{path}_=".encode()
    parts = [render(child, f"{path}.{i}") for i, child in enumerate(tree)]
    return (
        b'Content-Type: multipart/mixed; boundary="'
        + boundary
        + b'"\r\n\r\n'
        + multipart(parts, boundary)
    )


def count(tree: int | list) -> tuple[int, int]:
    """(entities, depth) of a tree."""
    if isinstance(tree, int):
        return 1, 0
    counted = [count(child) for child in tree]
    return 1 + sum(c[0] for c in counted), 1 + max(c[1] for c in counted)


@settings(max_examples=200, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_generated_trees_are_counted(tree: int | list) -> None:
    result = check(b"From: a@example.org\r\n" + render(tree))
    parts, depth = count(tree)
    assert (result.ok, result.parts, result.depth) == (True, parts, depth), result


@settings(max_examples=200, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(trees, st.integers(1, 12), st.integers(0, 4))
def test_generated_trees_against_small_limits(
    tree: int | list, max_parts: int, max_depth: int
) -> None:
    parts, depth = count(tree)
    result = check(render(tree), Limits(max_parts=max_parts, max_depth=max_depth))
    assert result.ok == (parts <= max_parts and depth <= max_depth), result
    not_internal(result)
