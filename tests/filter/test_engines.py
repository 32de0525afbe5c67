"""clamd and rspamd clients (pimail.filter.clamd, pimail.filter.rspamd) against the real engines.

clamd and rspamd run on loopback, started by `engines.py` (one of each for
this module). Failures that the real engines cannot be made to produce
(garbage, endless or oversized replies, silence) come from small hostile
servers written here: they are test peers on real sockets, not mocks.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from conftest import free_port
from pimail.filter import clamd, rspamd

try:  # tests/filter as a package, or on sys.path (pytest's rootdir-relative import)
    from . import engines
except ImportError:
    import engines  # type: ignore[no-redef]

EICAR, EICAR_FOUND, GTUBE = engines.EICAR, engines.EICAR_FOUND, engines.GTUBE
ClamdServer, RspamdServer = engines.ClamdServer, engines.RspamdServer
message, with_attachment = engines.message, engines.with_attachment

T = TypeVar("T")
QUICK = 2.0  # seconds: an unreachable engine is reported at once, not after a timeout
ACTIONS = {"no action", "greylist", "add header", "rewrite subject", "soft reject", "reject"}
ENVELOPE = {
    "ip": "203.0.113.5",
    "helo": "mail.example.org",
    "mail_from": "alice@example.org",
    "rcpt_to": ["bob@example.net"],
    "queue_id": "4ZKx9c1yT2",
}


@pytest.fixture(scope="module")
def clamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    with ClamdServer(tmp_path_factory.mktemp("clamd")).start() as server:
        yield server


@pytest.fixture(scope="module")
def rspamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RspamdServer]:
    with RspamdServer(tmp_path_factory.mktemp("rspamd")).start() as server:
        yield server


@pytest.fixture(params=["unix", "tcp"])
def clamd_address(request: pytest.FixtureRequest, clamd_server: ClamdServer) -> str:
    return clamd_server.unix_address if request.param == "unix" else clamd_server.tcp_address


def run(coroutine: Coroutine[object, object, T]) -> T:
    return asyncio.run(coroutine)


UNUSED = "127.0.0.1:unused"  # a test parameter: a loopback port where nothing listens


def unused_address(address: str = UNUSED) -> str:
    """The address itself, or for UNUSED a free loopback port found now (not at
    collection, so that parallel workers collect the same test ids)."""
    return f"127.0.0.1:{free_port()}" if address == UNUSED else address


# -- clamd ---------------------------------------------------------------------


def test_eicar_attachment_is_infected(clamd_address: str) -> None:
    result = run(clamd.scan(clamd_address, with_attachment("invoice.com", EICAR), timeout=10))
    assert result.status == "infected"
    assert result.signature == EICAR_FOUND
    assert result.header_value == f"infected ({EICAR_FOUND})"


def test_clean_message_is_clean(clamd_address: str) -> None:
    result = run(clamd.scan(clamd_address, message(), timeout=10))
    assert (result.status, result.signature) == ("clean", None)


def test_streams_from_a_path_and_a_file(clamd_server: ClamdServer, tmp_path: Path) -> None:
    # Bigger than one chunk, the EICAR attachment at the end: every chunk reaches clamd.
    padding = "x" * 75 + "\r\n"
    infected = with_attachment("eicar.com", EICAR, text=padding * 5000)
    path = tmp_path / "message.eml"
    path.write_bytes(infected)
    assert len(infected) > 4 * clamd.CHUNK
    result = run(clamd.scan(clamd_server.unix_address, path, timeout=10))
    assert result.status == "infected"
    with open(path, "rb") as f:
        assert run(clamd.scan(clamd_server.tcp_address, f, timeout=10)).status == "infected"
    assert run(clamd.scan(clamd_server.tcp_address, str(path), timeout=10)).status == "infected"
    # A file object whose size cannot be told is counted as it is sent.
    stream = io.BytesIO(infected)
    assert run(clamd.scan(clamd_server.unix_address, stream, timeout=10)).status == "infected"


def test_over_stream_max_length_is_clamds_error(
    clamd_address: str, clamd_server: ClamdServer
) -> None:
    # clamd answers "INSTREAM size limit exceeded. ERROR" and closes while we
    # still send: the reply is read anyway, over TCP as over the unix socket.
    big = message(body="y" * 70 + "\r\n") + b"z" * (2 * clamd_server.stream_max_length)
    result = run(clamd.scan(clamd_address, big, timeout=10, max_size=10 * 2**20))
    assert result.status == "error"
    assert result.detail == "clamd: INSTREAM size limit exceeded."


def test_over_max_size_is_skipped_without_sending() -> None:
    # Nothing listens at the address: "skipped" proves nothing was sent.
    big = b"x" * 2000
    result = run(clamd.scan(unused_address(), big, timeout=5, max_size=1000))
    assert result.status == "skipped"
    assert run(clamd.scan(unused_address(), io.BytesIO(big), timeout=5, max_size=1000)).status == (
        "error"  # size unknown up front: it connects first, and nothing is there
    )


@pytest.mark.parametrize(
    "address",
    [UNUSED, "unix:/nonexistent/clamd.ctl", "no-port", "unix:", "127.0.0.1:99999"],
)
def test_clamd_unreachable_is_an_error_at_once(address: str) -> None:
    address = unused_address(address)
    started = time.monotonic()
    result = run(clamd.scan(address, message(), timeout=30))
    assert result.status == "error"
    assert result.detail
    assert time.monotonic() - started < QUICK
    assert run(clamd.ping(address)) is False


def test_ping_and_version(clamd_address: str) -> None:
    assert run(clamd.ping(clamd_address)) is True
    assert (run(clamd.version(clamd_address)) or "").startswith("ClamAV ")


def test_clamd_reply_parsing() -> None:
    assert clamd.parse_reply(b"stream: OK\0").status == "clean"
    found = clamd.parse_reply(b"stream: Win.Test.EICAR_HDB-1 FOUND\0")
    assert (found.status, found.signature) == ("infected", "Win.Test.EICAR_HDB-1")
    error = clamd.parse_reply(b"INSTREAM size limit exceeded. ERROR\0")
    assert (error.status, error.detail) == ("error", "clamd: INSTREAM size limit exceeded.")
    assert clamd.parse_reply(b"\xff\xfegarbage\r\n").status == "error"
    assert clamd.parse_reply(b"").status == "error"
    assert clamd.parse_address("[::1]:3310") == ("::1", 3310)
    assert clamd.parse_address("unix:/run/clamav/clamd.ctl") == "/run/clamav/clamd.ctl"


# -- hostile peers (what real engines cannot be made to do) --------------------


async def hostile(reply: bytes | None, then: Callable[[str], Awaitable[T]]) -> T:
    """A loopback server that reads what comes, sends `reply` (None: nothing, ever)."""
    handlers: set[asyncio.Task[object]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            handlers.add(task)
        try:
            await asyncio.wait_for(reader.read(65536), 1)
            if reply is None:
                await asyncio.sleep(3600)  # cancelled below, once the client gave up
            else:
                writer.write(reply)
                await writer.drain()
        except Exception:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await then(f"127.0.0.1:{port}")
    finally:
        for task in handlers:
            task.cancel()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("reply", "detail"),
    [
        (b"HTTP/1.1 200 OK\r\n\r\n", "unexpected reply from clamd"),
        (b"stream: OK" + b"!" * 5000, "longer than 4096"),
        (b"", "closed the connection"),
        (None, "did not answer within 0.5s"),
    ],
)
def test_clamd_misbehaving_peer(reply: bytes | None, detail: str) -> None:
    result = run(hostile(reply, lambda address: clamd.scan(address, message(), timeout=0.5)))
    assert result.status == "error"
    assert detail in result.detail


# -- rspamd --------------------------------------------------------------------


def test_rspamd_normal_message(rspamd_server: RspamdServer) -> None:
    result = run(rspamd.check(rspamd_server.address, message(), **ENVELOPE))
    assert result.ok, result.error
    assert result.action in ACTIONS
    assert result.action != "reject"
    assert result.required_score == 15.0  # Debian's actions.conf
    assert result.symbols and all(isinstance(v, float) for v in result.symbols.values())
    assert "RCPT_COUNT_ONE" in result.symbols  # the Rcpt header reached it
    assert result.score == pytest.approx(sum(result.symbols.values()), abs=0.01)


def test_rspamd_gtube_is_rejected(rspamd_server: RspamdServer) -> None:
    result = run(rspamd.check(rspamd_server.address, message(body=GTUBE + "\r\n"), **ENVELOPE))
    assert result.ok, result.error
    assert result.action == "reject"
    assert result.score >= result.required_score >= 15.0
    assert "GTUBE" in result.symbols
    assert result.smtp_message == "Gtube pattern"


def rspamd_log_line(server: RspamdServer, queue_id: str) -> str:
    """rspamd's result line for a queue id (its log_format names the envelope)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        log = (server.base / "rspamd.log").read_text(errors="replace")
        lines = [line for line in log.splitlines() if f"qid: <{queue_id}>" in line]
        if lines:
            return lines[-1]
        time.sleep(0.05)
    raise AssertionError(f"no log line for {queue_id}")


def test_rspamd_unix_socket_file_and_envelope(rspamd_server: RspamdServer, tmp_path: Path) -> None:
    path = tmp_path / "message.eml"
    path.write_bytes(message(body="Hello,\r\n" * 20000))  # several chunks
    envelope = {
        **ENVELOPE,
        "rcpt_to": ["a@example.net", "b@example.net", "c@example.net"],
        "queue_id": "4ZKxENVELOPE",
        "user": "alice",
    }
    result = run(rspamd.check(rspamd_server.unix_address, path, **envelope))
    assert result.ok, result.error
    line = rspamd_log_line(rspamd_server, "4ZKxENVELOPE")
    assert "ip: 203.0.113.5, user: alice, from: <alice@example.org>" in line
    assert "rcpts: <a@example.net,b@example.net,c@example.net>" in line  # one Rcpt header each
    with open(path, "rb") as f:  # a file object; and the null sender
        null_sender = {**ENVELOPE, "mail_from": "", "queue_id": "4ZKxNULL"}
        assert run(rspamd.check(rspamd_server.address, f, **null_sender)).ok
    assert "from: <" not in rspamd_log_line(rspamd_server, "4ZKxNULL")  # "<>": no sender
    stream = io.BytesIO(message())  # size unknown up front: sent chunked
    assert run(rspamd.check(rspamd_server.address, stream, **ENVELOPE)).ok
    assert run(rspamd.ping(rspamd_server.address)) is True
    assert run(rspamd.ping(rspamd_server.unix_address)) is True


@pytest.mark.parametrize("address", [UNUSED, "unix:/nonexistent/rspamd.sock", "bad"])
def test_rspamd_unreachable_is_an_error_at_once(address: str) -> None:
    address = unused_address(address)
    started = time.monotonic()
    result = run(rspamd.check(address, message(), **ENVELOPE, timeout=30))
    assert not result.ok and result.error
    assert (result.action, result.score, result.symbols) == ("", 0.0, {})
    assert time.monotonic() - started < QUICK
    assert run(rspamd.ping(address)) is False


def http(body: bytes, status: str = "200 OK", headers: str | None = None) -> bytes:
    head = headers if headers is not None else f"Content-Length: {len(body)}\r\n"
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body


GOOD = json.dumps(
    {"action": "add header", "score": 7.5, "required_score": 15, "symbols": {"A": {"score": 7.5}}}
).encode()


def chunked(body: bytes) -> bytes:
    return (
        b"".join(
            b"%x;ext=1\r\n%b\r\n" % (len(body[i : i + 7]), body[i : i + 7])
            for i in range(0, len(body), 7)
        )
        + b"0\r\nTrailer: x\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (http(GOOD), None),
        (http(chunked(GOOD), headers="Transfer-Encoding: chunked\r\n"), None),
        (http(GOOD, headers=""), None),  # until the close
        (http(b"x" * 100, headers="Content-Length: 99999999\r\n"), "over 1048576"),
        (http(b"x" * 2_000_000, headers=""), "over 1048576"),
        (http(b"zz\r\n", headers="Transfer-Encoding: chunked\r\n"), "malformed chunk"),
        (http(b'{"error": "Unknown method"}', "404 Not Found"), "HTTP 404: Unknown method"),
        (http(b"[1, 2]"), "not a JSON object"),
        (http(b"{not json"), "not a JSON object"),
        (http(b'{"action": "reject", "score": "high"}'), "score is not a number"),
        (http(b'{"score": 1}'), "no action"),
        (http(b"[" * 100_000), "not a JSON object"),
        (b"SPAMD/1.1 0 EX_OK\r\n\r\n", "not an HTTP reply"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 2000, "more than 100 reply headers"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: %b\r\n" % (b"y" * 200) * 90, "reply headers over"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 20000, "line of rspamd's reply is too long"),
        (http(GOOD)[:40], "closed the connection before the end"),
        (None, "did not answer within 0.5s"),
    ],
)
def test_rspamd_misbehaving_peer(reply: bytes | None, error: str | None) -> None:
    def ask(address: str) -> Awaitable[rspamd.RspamdResult]:
        return rspamd.check(address, message(), **ENVELOPE, timeout=0.5)

    result = run(hostile(reply, ask))
    assert isinstance(result, rspamd.RspamdResult)
    if error is None:
        assert (result.error, result.action, result.score) == (None, "add header", 7.5)
        assert result.symbols == {"A": 7.5}
    else:
        assert result.error and error in result.error, result.error


def test_rspamd_request_headers_cannot_be_injected() -> None:
    headers = rspamd.envelope_headers(
        ip="203.0.113.5", mail_from="a@example.org\r\nPass: all", rcpt_to=["b@x\nSettings: {}"]
    )
    head = rspamd.request_head("localhost", 10, headers)
    lines = head.split(b"\r\n")
    assert b"Pass: all" not in lines and not any(line.startswith(b"Settings") for line in lines)
    assert b"\n" not in head.replace(b"\r\n", b"")


# -- timing helper -------------------------------------------------------------


def test_timing_helper(clamd_server: ClamdServer, rspamd_server: RspamdServer) -> None:
    scans = run(engines.time_calls(lambda: clamd.scan(clamd_server.unix_address, message()), 20))
    checks = run(
        engines.time_calls(lambda: rspamd.check(rspamd_server.address, message(), **ENVELOPE), 20)
    )
    for samples in (scans, checks):
        figures = engines.percentiles(samples)
        assert 0 < figures[50] <= figures[99] <= max(samples)


def test_engine_addresses_refused_cleanly() -> None:
    for bad in ("", "unix:", "localhost", ":3310", "host:0", "host:99999", "host:port", "[::1]"):
        with pytest.raises(ValueError):
            clamd.parse_address(bad)
