"""The POP3 state machine, line reader and framing, without sockets (pimail.pop3.protocol)."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pimail.pop3 import protocol as p


def connection(
    *, tls: bool = False, tls_available: bool = True, plaintext: bool = True
) -> p.Pop3Connection:
    conn = p.Pop3Connection(
        hostname="mx.test",
        timestamp="1.2.3",
        tls=tls,
        tls_available=tls_available,
        allow_plaintext_auth=plaintext,
    )
    assert conn.data_to_send() == b"+OK pimail POP3 ready <1.2.3@mx.test>\r\n"
    return conn


def feed(conn: p.Pop3Connection, data: bytes) -> tuple[bytes, p.Event | None]:
    conn.receive_data(data)
    event = conn.next_event()
    return conn.data_to_send(), event


def logged_in(sizes: tuple[int, ...] = (100, 200, 300)) -> p.Pop3Connection:
    conn = connection()
    feed(conn, b"USER ann@example.org\r\n")
    _, event = feed(conn, b"PASS pass word\r\n")
    assert event == p.Login("ann@example.org", "pass word")
    conn.login_succeeded(p.Maildrop(77, [(10 + i, s) for i, s in enumerate(sizes)]))
    count, octets = len(sizes), sum(sizes)
    assert conn.data_to_send() == (
        f"+OK Logged in, maildrop has {count} messages ({octets} octets)\r\n".encode()
    )
    assert conn.state is p.State.TRANSACTION
    return conn


# -- line reader --------------------------------------------------------------------------


def test_line_reader_splits_and_limits() -> None:
    r = p.LineReader()
    r.feed(b"NOOP\r\nSTAT\nLI")
    assert [r.next_line(), r.next_line(), r.next_line()] == [b"NOOP", b"STAT", None]
    r.feed(b"ST 1\r\n")
    assert r.next_line() == b"LIST 1"
    # 512 octets with the CRLF are a line; 513 are too long, reported once at the end.
    r.feed(b"a" * 510 + b"\r\n" + b"b" * 511 + b"\r\n" + b"c\r\n")
    assert r.next_line() == b"a" * 510
    assert r.next_line() == p.LineTooLong()
    assert r.next_line() == b"c"
    # An unfinished over-long line is not kept.
    r.feed(b"d" * 5000)
    assert r.next_line() is None and len(r._buffer) == 0
    r.feed(b"d" * 5000 + b"\r\nNOOP\r\n")
    assert [r.next_line(), r.next_line()] == [p.LineTooLong(), b"NOOP"]
    # One that never ends is fatal.
    for _ in range(20):
        r.feed(b"e" * 4096)
        found = r.next_line()
        if found is not None:
            break
    assert found == p.LineTooLong(fatal=True)
    r.feed(b"rest\r\nNOOP\r\n")
    r.clear()
    assert r.next_line() is None


# -- framing ----------------------------------------------------------------------------------


def unstuff(wire: bytes) -> bytes:
    """What a client does with a multi-line response body (RFC 1939 3)."""
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    lines = wire.split(b"\r\n")[:-2]  # drop the "." line and what follows it
    assert all(line != b"." for line in lines)
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)


@pytest.mark.parametrize(
    "message",
    [b"", b"a\r\n", b".\r\n", b"..\r\n", b"a\r\n.\r\nb\r\n", b".start\r\n..two\r\n", b"no end"],
)
def test_dot_stuffing(message: bytes) -> None:
    s = p.DotStuffer()
    wire = b"".join(s.feed(message[i : i + 1]) for i in range(len(message))) + s.end()
    expected = message if message.endswith(b"\r\n") or not message else message + b"\r\n"
    assert unstuff(wire) == expected


@given(st.lists(st.sampled_from([b"a", b".", b"\r\n", b"\r", b"\n", b"x y"]), max_size=40),
       st.data())  # fmt: skip
def test_dot_stuffing_any_chunks(parts: list[bytes], data: st.DataObject) -> None:
    message = b"".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=5)))
    s = p.DotStuffer()
    pieces = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)]
    wire = b"".join(s.feed(x) for x in pieces) + s.end()
    # No line of the message ends the response early, for a client splitting on LF.
    body = wire[: -len(p.TERMINATOR)]
    assert b"\n.\r\n" not in body and b"\n.\n" not in body and not body.startswith(b".\r")
    assert wire.endswith(b"\n.\r\n") or wire == b".\r\n"
    if b"\n" not in message.replace(b"\r\n", b"") and b"\r" not in message.replace(b"\r\n", b""):
        assert unstuff(wire) == (message + b"\r\n" if message and not message.endswith(b"\r\n")
                                 else message)  # fmt: skip


def test_top_of() -> None:
    message = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n"
    lines = io.BytesIO(message)
    assert p.top_of(io.BytesIO(message), 0) == b"A: 1\r\nB: 2\r\n\r\n"
    assert p.top_of(lines, 2) == b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n"
    assert lines.read() == b"l3\r\n"  # not read past what was wanted
    assert p.top_of(io.BytesIO(message), 99) == message
    assert p.top_of(io.BytesIO(b"A: 1\r\nB: 2\r\n"), 5) == b"A: 1\r\nB: 2\r\n"
    assert p.top_of(io.BytesIO(b"A: 1\n\nbody\n"), 0) == b"A: 1\n\n"


# -- the maildrop ----------------------------------------------------------------------------------


def test_maildrop() -> None:
    drop = p.Maildrop(5, [(3, 10), (7, 20), (9, 30)])
    assert drop.stat() == (3, 60)
    assert drop.unique_id(2) == "5.7"
    assert drop.number(b"3") == 3
    drop.delete(2)
    assert drop.stat() == (2, 40)
    assert list(drop.live()) == [1, 3]
    assert drop.marked_uids() == (7,)
    for bad in [b"0", b"4", b"2", b"-1", b"+1", b"1 ", b"", b"\xd9\xa1", b"12345678901"]:
        with pytest.raises(p.Pop3Error):
            drop.number(bad)
    drop.reset()
    assert drop.stat() == (3, 60) and drop.marked_uids() == ()


# -- the state machine --------------------------------------------------------------------


def test_capa_follows_state_and_tls() -> None:
    conn = connection(plaintext=False)
    out, _ = feed(conn, b"CAPA\r\n")
    assert out == (
        b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
        b"PIPELINING\r\nSTLS\r\nIMPLEMENTATION pimail\r\n.\r\n"
    )
    conn = connection(tls=True, plaintext=False)
    out, _ = feed(conn, b"capa\r\n")
    assert b"USER\r\nSASL PLAIN\r\n" in out and b"STLS" not in out
    conn = connection(tls_available=False)
    out, _ = feed(conn, b"CAPA\r\n")
    assert b"USER\r\n" in out and b"STLS" not in out


def test_authorization() -> None:
    conn = connection(plaintext=False)
    assert feed(conn, b"USER a\r\n") == (b"-ERR [AUTH] Use STLS first\r\n", None)
    assert feed(conn, b"AUTH PLAIN AGEAYg==\r\n") == (b"-ERR [AUTH] Use STLS first\r\n", None)
    conn = connection()
    assert feed(conn, b"PASS x\r\n") == (b"-ERR USER first\r\n", None)
    assert feed(conn, b"USER a b\r\n")[0].startswith(b"-ERR")
    assert feed(conn, b"USER a\r\n") == (b"+OK Send your password\r\n", None)
    _, event = feed(conn, b"PASS  spaced  \r\n")
    assert event == p.Login("a", " spaced  ")
    conn.login_failed()
    assert conn.data_to_send() == b"-ERR [AUTH] Authentication failed\r\n"
    assert conn.state is p.State.AUTHORIZATION
    assert feed(conn, b"PASS x\r\n")[0] == b"-ERR USER first\r\n"
    # AUTH PLAIN, with the continuation.
    assert feed(conn, b"AUTH PLAIN\r\n") == (b"+ \r\n", None)
    assert feed(conn, b"AGEAYg==\r\n") == (b"", p.Login("a", "b"))
    conn.login_failed(temporary=True)
    assert conn.data_to_send() == b"-ERR [SYS/TEMP] Maildrop not available, try again later\r\n"
    assert feed(conn, b"AUTH PLAIN AGEAYg==\r\n")[1] == p.Login("a", "b")


def test_transaction_commands() -> None:
    conn = logged_in()
    assert feed(conn, b"STAT\r\n")[0] == b"+OK 3 600\r\n"
    assert (
        feed(conn, b"LIST\r\n")[0]
        == b"+OK 3 messages (600 octets)\r\n1 100\r\n2 200\r\n3 300\r\n.\r\n"
    )
    assert feed(conn, b"UIDL 2\r\n")[0] == b"+OK 2 77.11\r\n"
    assert feed(conn, b"DELE 2\r\n")[0] == b"+OK Message 2 deleted\r\n"
    assert feed(conn, b"DELE 2\r\n")[0] == b"-ERR Message 2 already deleted\r\n"
    assert feed(conn, b"LIST 2\r\n")[0].startswith(b"-ERR")
    assert (
        feed(conn, b"UIDL\r\n")[0]
        == b"+OK Unique-id listing follows\r\n1 77.10\r\n3 77.12\r\n.\r\n"
    )
    assert feed(conn, b"RETR 3\r\n") == (b"", p.Retrieve(3, 12))
    conn.message_follows(300)
    assert conn.data_to_send() == b"+OK 300 octets\r\n"
    assert feed(conn, b"TOP 1 5\r\n") == (b"", p.Retrieve(1, 10, 5))
    conn.message_gone()
    assert conn.data_to_send() == b"-ERR Message was removed by another session\r\n"
    assert feed(conn, b"TOP 1 0\r\n")[1] == p.Retrieve(1, 10, 0)
    conn.message_gone(temporary=True)
    assert conn.data_to_send().startswith(b"-ERR [SYS/TEMP]")
    assert feed(conn, b"RSET\r\n")[0] == b"+OK Maildrop has 3 messages (600 octets)\r\n"
    assert feed(conn, b"NOOP\r\n")[0] == b"+OK\r\n"
    assert feed(conn, b"USER x\r\n")[0].startswith(b"-ERR USER is not valid")
    assert feed(conn, b"STLS\r\n")[0].startswith(b"-ERR")
    conn.receive_data(b"DELE 1\r\nDELE 3\r\n")
    assert conn.next_event() is None
    assert conn.data_to_send() == b"+OK Message 1 deleted\r\n+OK Message 3 deleted\r\n"
    assert feed(conn, b"QUIT\r\n") == (b"", p.Update((10, 12)))
    conn.update_done(2)
    assert conn.data_to_send() == b"+OK pimail POP3 server signing off (2 messages deleted)\r\n"
    assert conn.closing and conn.state is p.State.UPDATE


def test_quit_without_marks_and_failed_update() -> None:
    conn = logged_in()
    assert feed(conn, b"QUIT\r\n") == (
        b"+OK pimail POP3 server signing off (0 messages deleted)\r\n",
        None,
    )
    assert conn.closing
    conn = logged_in()
    feed(conn, b"DELE 1\r\n")
    assert feed(conn, b"QUIT\r\nNOOP\r\n")[1] == p.Update((10,))
    conn.update_failed()
    assert conn.data_to_send() == b"-ERR [SYS/TEMP] Some deleted messages not removed\r\n"
    assert conn.closing and conn.next_event() is None and conn.data_to_send() == b""


def test_pipelined_lines_stop_at_each_event() -> None:
    conn = connection()
    conn.receive_data(b"CAPA\r\nUSER a\r\nPASS b\r\nSTAT\r\n")
    assert conn.next_event() == p.Login("a", "b")
    assert conn.data_to_send().endswith(b".\r\n+OK Send your password\r\n")
    with pytest.raises(AssertionError):
        conn.next_event()  # the login has not been answered
    conn.login_succeeded(p.Maildrop(1, []))
    assert conn.next_event() is None
    assert (
        conn.data_to_send() == b"+OK Logged in, maildrop has 0 messages (0 octets)\r\n+OK 0 0\r\n"
    )


def test_stls_drops_pipelined_input() -> None:
    conn = connection()
    feed(conn, b"USER a\r\n")
    out, event = feed(conn, b"STLS\r\nPASS b\r\n")
    assert (out, event) == (b"+OK Begin TLS negotiation\r\n", p.StartTls())
    conn.tls_started()
    assert conn.next_event() is None and conn.data_to_send() == b""
    assert feed(conn, b"PASS b\r\n")[0] == b"-ERR USER first\r\n"
    assert feed(conn, b"STLS\r\n")[0] == b"-ERR Command not permitted when TLS active\r\n"
    assert feed(connection(tls_available=False), b"STLS\r\n")[0].startswith(b"-ERR")


def test_too_many_bad_commands_close() -> None:
    conn = connection()
    conn.receive_data(b"BAD\r\n" * (p.MAX_BAD - 1) + b"NOOP\r\n" + b"BAD\r\n" * 20)
    assert conn.next_event() is None
    lines = conn.data_to_send().split(b"\r\n")[:-1]
    # NOOP in AUTHORIZATION is a bad command too (RFC 1939 5: TRANSACTION only).
    assert len(lines) == p.MAX_BAD
    assert lines[-1] == b"-ERR Too many bad commands, closing"
    assert conn.closing
    # Errors that are not bad commands reset the count.
    conn = logged_in()
    conn.receive_data((b"BAD\r\n" * (p.MAX_BAD - 1) + b"RETR 9\r\n") * 3)
    assert conn.next_event() is None and not conn.closing


# -- fuzzing -----------------------------------------------------------------------------

COMMANDS = [b"USER a", b"PASS b", b"AUTH PLAIN", b"AUTH PLAIN AGEAYg==", b"STLS", b"CAPA",
            b"STAT", b"LIST", b"LIST 2", b"UIDL", b"RETR 1", b"TOP 2 1", b"DELE 1", b"RSET",
            b"NOOP", b"QUIT", b"*", b""]  # fmt: skip


def drive(conn: p.Pop3Connection, data: bytes) -> bytes:
    """Feed `data` and answer every event as a server would; returns the output."""
    conn.receive_data(data)
    while (event := conn.next_event()) is not None:
        if isinstance(event, p.Login):
            conn.login_succeeded(p.Maildrop(9, [(1, 10), (2, 20)]))
        elif isinstance(event, p.Retrieve):
            conn.message_follows(10)
        elif isinstance(event, p.StartTls):
            conn.tls_started()
        else:
            conn.update_done(len(event.uids))
    return conn.data_to_send()


def check_output(out: bytes) -> None:
    assert out == b"" or out.endswith(b"\r\n")
    for line in out.split(b"\r\n"):
        assert len(line) + 2 <= 512  # RFC 1939 3: responses fit 512 octets


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=80), st.sampled_from(COMMANDS)), max_size=30),
       st.booleans())  # fmt: skip
def test_fuzz_never_raises(pieces: list[bytes], plaintext: bool) -> None:
    conn = connection(plaintext=plaintext)
    for piece in pieces:
        check_output(drive(conn, piece + b"\r\n"))
        if conn.closing:
            break


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_fuzz_raw_bytes(data: bytes) -> None:
    for conn in (connection(), logged_in()):
        check_output(drive(conn, data))
