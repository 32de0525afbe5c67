"""The example exchanges of RFC 1939 (sections 5-10) and RFC 2449 (CAPA),
replayed against a real server over a raw socket (issue 14).

The maildrop is set up as the examples assume (two messages; their sizes are
ours, not 120 and 200). The status indicator, the numbers and the multi-line
data are compared exactly; the text after "+OK"/"-ERR" is the server's own
(RFC 1939 3: "may be followed by additional text"), except where the RFC
fixes its form (STAT, LIST n, UIDL n: RFC 1939 5 and 7). USER/PASS stands in
for APOP in the section 10 session (pimail offers no APOP: it would need the
password in clear on the server).
"""

from __future__ import annotations

import itertools
import re
import smtplib
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from conftest import PASSWORD, PimailServer
from pimail.store import maildir

MESSAGES = [
    b"From: Dewey <dewey@remote.test>\r\nTo: mrose@example.org\r\nSubject: one\r\n\r\n"
    b"Hello.\r\n.leading dot\r\nline 3\r\nline 4\r\n",
    b"From: Dewey <dewey@remote.test>\r\nTo: mrose@example.org\r\nSubject: two\r\n\r\n"
    + b"".join(b"line %d\r\n" % i for i in range(1, 21)),
]


@pytest.fixture(scope="module")
def pop_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PimailServer]:
    server = PimailServer(
        tmp_path_factory.mktemp("pop3rfc") / "data", {"pop3": {"allow_plaintext_auth": True}}
    )
    server.cli("domain", "add", "example.org")
    server.start()
    yield server
    server.stop()


_users = itertools.count()


@dataclass
class Maildrop:
    address: str
    stored: list[bytes]  # the messages as stored (trace fields on top), in UID order


@pytest.fixture
def drop(pop_server: PimailServer) -> Maildrop:
    """A fresh account whose maildrop holds exactly the two messages."""
    address = f"mrose{next(_users)}@example.org"
    pop_server.add_user(address)
    with smtplib.SMTP("127.0.0.1", pop_server.smtp_port, timeout=30) as smtp:
        for data in MESSAGES:
            smtp.sendmail("dewey@remote.test", [address], data)
    files = sorted(pop_server.messages(address), key=lambda p: maildir.parse_name(p.name).uid)
    return Maildrop(address, [p.read_bytes() for p in files])


class Pop:
    def __init__(self, server: PimailServer, address: str = "nobody@example.org") -> None:
        self.address = address
        self.sock = socket.create_connection(("127.0.0.1", server.pop3_port), timeout=30)
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()

    def c(self, line: str) -> bytes:
        """Send one command line, return the status line."""
        self.sock.sendall(line.encode() + b"\r\n")
        return self.file.readline()

    def block(self) -> list[bytes]:
        """The lines of a multi-line answer up to '.', still byte-stuffed."""
        out = []
        while (line := self.file.readline()) != b".\r\n":
            assert line, "closed in a multi-line answer"
            out.append(line)
        return out

    def login(self) -> bytes:
        assert self.c(f"USER {self.address}").startswith(b"+OK ")
        return self.c(f"PASS {PASSWORD}")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def unstuff(lines: list[bytes]) -> bytes:
    return b"".join(line[1:] if line.startswith(b".") else line for line in lines)


def ok(line: bytes) -> None:
    assert line == b"+OK\r\n" or line.startswith(b"+OK "), line


def err(line: bytes) -> None:
    assert line == b"-ERR\r\n" or line.startswith(b"-ERR "), line


def test_4_greeting_and_7_user_pass(pop_server: PimailServer, drop: Maildrop) -> None:
    """RFC 1939 4 and 7: '+OK' greeting; USER (whatever the name), PASS opens
    the maildrop; a wrong password is -ERR ([AUTH], RFC 3206 4 when
    AUTH-RESP-CODE is announced)."""
    pop = Pop(pop_server, drop.address)
    ok(pop.greeting)
    ok(pop.c("USER frated"))  # pimail does not say which names exist (RFC 1939 13)
    line = pop.c("PASS wrong")
    err(line)
    assert line.startswith(b"-ERR [AUTH]"), line
    ok(pop.login())
    pop.close()


def test_5_stat_list_7_uidl(pop_server: PimailServer, drop: Maildrop) -> None:
    """RFC 1939 5 (STAT, LIST) and 7 (UIDL), with their exact forms."""
    pop = Pop(pop_server, drop.address)
    ok(pop.login())
    sizes = [len(m) for m in drop.stored]
    assert pop.c("STAT") == b"+OK 2 %d\r\n" % sum(sizes)  # "+OK nn mm"
    ok(pop.c("LIST"))
    assert pop.block() == [b"1 %d\r\n" % sizes[0], b"2 %d\r\n" % sizes[1]]
    assert pop.c("LIST 2") == b"+OK 2 %d\r\n" % sizes[1]
    err(pop.c("LIST 3"))
    ok(pop.c("UIDL"))
    uidls = pop.block()
    assert [u.split()[0] for u in uidls] == [b"1", b"2"]
    ids = [u.split()[1] for u in uidls]
    for unique_id in ids:  # RFC 1939 7: 1 to 70 characters 0x21 to 0x7E
        assert re.fullmatch(rb"[\x21-\x7e]{1,70}", unique_id), unique_id
    assert ids[0] != ids[1]
    assert pop.c("UIDL 2") == b"+OK 2 " + ids[1] + b"\r\n"
    err(pop.c("UIDL 3"))
    pop.close()


def test_5_retr_top_byte_stuffing(pop_server: PimailServer, drop: Maildrop) -> None:
    """RFC 1939 5 RETR and 7 TOP: the message, byte-stuffed (RFC 1939 3); TOP
    n 10: the header, the blank line and the first 10 lines of the body."""
    pop = Pop(pop_server, drop.address)
    ok(pop.login())
    ok(pop.c("RETR 1"))
    lines = pop.block()
    assert b"..leading dot\r\n" in lines  # stuffed on the wire
    assert unstuff(lines) == drop.stored[0]
    ok(pop.c("TOP 2 10"))
    head, body = drop.stored[1].split(b"\r\n\r\n", 1)
    assert unstuff(pop.block()) == head + b"\r\n\r\n" + b"".join(
        body.splitlines(keepends=True)[:10]
    )
    ok(pop.c("TOP 1 0"))
    assert unstuff(pop.block()) == drop.stored[0].split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    err(pop.c("TOP 100 3"))
    err(pop.c("RETR 3"))
    pop.close()


def test_5_dele_noop_rset(pop_server: PimailServer, drop: Maildrop) -> None:
    """RFC 1939 5: a deleted message is not counted, listed or retrievable;
    DELE twice is -ERR; NOOP is +OK; RSET unmarks (and nothing is deleted)."""
    pop = Pop(pop_server, drop.address)
    ok(pop.login())
    ok(pop.c("DELE 1"))
    err(pop.c("DELE 1"))  # "-ERR message 1 already deleted"
    assert pop.c("STAT") == b"+OK 1 %d\r\n" % len(drop.stored[1])
    ok(pop.c("LIST"))
    assert pop.block() == [b"2 %d\r\n" % len(drop.stored[1])]
    err(pop.c("LIST 1"))
    err(pop.c("RETR 1"))
    ok(pop.c("NOOP"))
    ok(pop.c("RSET"))
    assert pop.c("STAT") == b"+OK 2 %d\r\n" % sum(map(len, drop.stored))
    ok(pop.c("QUIT"))
    pop.close()
    assert len(pop_server.messages(drop.address)) == 2


def test_10_example_session(pop_server: PimailServer, drop: Maildrop) -> None:
    """RFC 1939 10: STAT, LIST, RETR 1, DELE 1, RETR 2, DELE 2, QUIT - the
    maildrop is empty afterwards and the server closes the connection (6)."""
    pop = Pop(pop_server, drop.address)
    ok(pop.greeting)
    ok(pop.login())
    sizes = [len(m) for m in drop.stored]
    assert pop.c("STAT") == b"+OK 2 %d\r\n" % sum(sizes)
    ok(pop.c("LIST"))
    assert pop.block() == [b"1 %d\r\n" % sizes[0], b"2 %d\r\n" % sizes[1]]
    for n in (1, 2):
        ok(pop.c(f"RETR {n}"))
        assert unstuff(pop.block()) == drop.stored[n - 1]
        ok(pop.c(f"DELE {n}"))
    ok(pop.c("QUIT"))
    pop.sock.settimeout(5)
    assert pop.file.read() == b"", "the connection stays open after QUIT"
    pop.close()
    assert pop_server.messages(drop.address) == []
    pop = Pop(pop_server, drop.address)
    ok(pop.login())
    assert pop.c("STAT") == b"+OK 0 0\r\n"
    pop.close()


def test_6_quit_in_authorization_state(pop_server: PimailServer, drop: Maildrop) -> None:
    pop = Pop(pop_server, drop.address)
    ok(pop.c("QUIT"))
    pop.sock.settimeout(5)
    assert pop.file.read() == b""
    pop.close()


def test_2449_capa(pop_server: PimailServer, drop: Maildrop) -> None:
    """RFC 2449 5: CAPA in both states; one capability per line, '.' ends it;
    the tags pimail uses are announced (TOP, UIDL, USER, RESP-CODES, PIPELINING)."""
    pop = Pop(pop_server, drop.address)
    ok(pop.c("CAPA"))
    before = pop.block()
    names = {line.split()[0] for line in before}
    assert {b"TOP", b"UIDL", b"USER", b"RESP-CODES", b"PIPELINING"} <= names, before
    assert all(re.fullmatch(rb"[\x21-\x7e]+( [\x20-\x7e]*)?\r\n", line) for line in before)
    ok(pop.login())
    ok(pop.c("CAPA"))
    assert {line.split()[0] for line in pop.block()} >= {b"TOP", b"UIDL", b"PIPELINING"}
    pop.close()


def test_2449_6_6_pipelining(pop_server: PimailServer, drop: Maildrop) -> None:
    """RFC 2449 6.6: commands sent at once are answered in order."""
    pop = Pop(pop_server, drop.address)
    pop.sock.sendall(
        f"USER {drop.address}\r\nPASS {PASSWORD}\r\nSTAT\r\nLIST 1\r\nNOOP\r\n".encode()
    )
    answers = [pop.file.readline() for _ in range(5)]
    assert answers[2] == b"+OK 2 %d\r\n" % sum(map(len, drop.stored)), answers
    assert answers[3] == b"+OK 1 %d\r\n" % len(drop.stored[0]), answers
    ok(answers[4])
    pop.close()
