"""The DATA decoder without I/O: transparency, the only true end, any split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pimail.smtp.data import DataDecoder


def stuff(message: bytes) -> bytes:
    """What a correct client sends for `message` (CRLF lines): RFC 5321 4.5.2."""
    lines = message.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


def decode(chunks: list[bytes]) -> tuple[bytes, bytes, DataDecoder]:
    d = DataDecoder()
    out, rest = b"", b""
    for chunk in chunks:
        data, after = d.feed(chunk)
        out += data
        rest += after
    return out, rest, d


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


line = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
lines = st.lists(
    st.one_of(line, st.just(b"."), st.just(b".."), line.map(lambda b: b"." + b)), max_size=20
)


@settings(max_examples=300, deadline=None)
@given(lines, st.lists(st.integers(min_value=0), max_size=8))
def test_round_trip_any_split(body_lines: list[bytes], cuts: list[int]) -> None:
    message = b"".join(x + b"\r\n" for x in body_lines)
    wire = stuff(message[:-2]) + b"\r\n" + b".\r\n" if message else b".\r\n"
    out, rest, d = decode(split(wire + b"QUIT\r\n", cuts))
    assert d.done and not d.bare_line_end
    assert out == message
    assert rest == b"QUIT\r\n"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=8))
def test_any_bytes_any_split_same_result(data: bytes, cuts: list[int]) -> None:
    whole = decode([data])
    parts = decode(split(data, cuts))
    assert (whole[0], whole[1], whole[2].done, whole[2].bare_line_end) == (
        parts[0],
        parts[1],
        parts[2].done,
        parts[2].bare_line_end,
    )


def test_smuggling_ends_are_content() -> None:
    for fake in (b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r"):
        _, _, d = decode([b"a" + fake + b"MAIL FROM:<x@y>\r\n"])
        assert not d.done, fake
        assert d.bare_line_end, fake
        _, _, d = decode([b"a" + fake + b"MAIL FROM:<x@y>\r\n.\r\n"])
        assert d.done and d.bare_line_end, fake


def test_end_right_at_start_and_byte_by_byte() -> None:
    assert decode([b".\r\n"])[0] == b""
    wire = b"Subject: x\r\n\r\n..dot\r\n.\r\n"
    out, rest, d = decode([bytes([b]) for b in wire])
    assert (out, rest, d.done) == (b"Subject: x\r\n\r\n.dot\r\n", b"", True)
