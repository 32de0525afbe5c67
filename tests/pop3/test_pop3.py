"""POP3 over loopback: Python's poplib and a raw socket client against `pimail serve`.

Two servers per module: `pop3_server` allows USER/PASS without TLS (as a
loopback test may) and has STLS and port 995's implicit TLS from the internal
CA; `strict_server` keeps the defaults' refusal of plaintext passwords and has
a short autologout timer and a low per-address connection limit.
"""

from __future__ import annotations

import base64
import imaplib
import itertools
import poplib
import random
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PASSWORD, PimailServer, free_port

_counter = itertools.count()
# A body whose lines begin with dots: SMTP unstuffs them, POP3 must stuff them again.
DOTTED = "Hello.\r\n.leading dot\r\n..two dots\r\n.\r\n. \r\nend\r\n"


class PopServer(PimailServer):
    """A pimail server with POP3 on free ports (110's and 995's roles)."""

    def __init__(self, data_dir: Path, **pop3: object) -> None:
        port, tls_port = free_port(), free_port()
        settings = {"listen": [f"127.0.0.1:{port}"], "listen_tls": [f"127.0.0.1:{tls_port}"]}
        super().__init__(
            data_dir, {"pop3": {**settings, **pop3}, "imap": {"allow_plaintext_auth": True}}
        )
        self.pop3_port, self.pop3s_port = port, tls_port
        self.plaintext = bool(pop3.get("allow_plaintext_auth", False))

    def start(self) -> None:
        super().start()
        deadline = time.monotonic() + 10
        while True:  # the POP3 listener starts just after the SMTP one
            try:
                with socket.create_connection(("127.0.0.1", self.pop3_port), timeout=2) as s:
                    if s.recv(100).startswith(b"+OK"):
                        s.sendall(b"QUIT\r\n")
                        return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def client_tls(self) -> ssl.SSLContext:
        """Trusts the server's internal CA, as a user who installed it does."""
        return ssl.create_default_context(cafile=self.data_dir / "tls" / "ca" / "ca.pem")


def _running(base: Path, **pop3: object) -> Iterator[PopServer]:
    server = PopServer(base / "data", **pop3)
    server.cli("domain", "add", "example.org")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pop3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PopServer]:
    yield from _running(
        tmp_path_factory.mktemp("pop3"), allow_plaintext_auth=True, max_connections_per_ip=100
    )


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PopServer]:
    yield from _running(
        tmp_path_factory.mktemp("pop3strict"), timeout=1.0, max_connections_per_ip=3
    )


class User:
    """A fresh account on a server, with helpers to fill its INBOX and log in."""

    def __init__(self, server: PopServer) -> None:
        self.server = server
        self.address = f"pop{next(_counter)}@example.org"
        server.add_user(self.address)

    def deliver(self, subject: str, body: str = "Hello.\r\n") -> None:
        message = f"From: ann@remote.test\r\nTo: {self.address}\r\nSubject: {subject}\r\n\r\n{body}"
        with smtplib.SMTP("127.0.0.1", self.server.smtp_port) as s:
            s.sendmail("ann@remote.test", [self.address], message.encode())

    def pop(self) -> poplib.POP3:
        p = poplib.POP3("127.0.0.1", self.server.pop3_port, timeout=10)
        p.user(self.address)
        p.pass_(PASSWORD)
        return p

    def raw(self) -> RawPOP3:
        c = RawPOP3(self.server.pop3_port)
        assert c.command(f"USER {self.address}").startswith(b"+OK")
        assert c.command(f"PASS {PASSWORD}").startswith(b"+OK")
        return c

    def files(self) -> list[Path]:
        """The INBOX's message files, in UID order."""
        return sorted(self.server.messages(self.address), key=_uid_of)

    def uids(self) -> list[int]:
        """The UIDs in the Maildir (IMAP's SELECT moves files from new/ to cur/)."""
        return [_uid_of(f) for f in self.files()]

    def imap_count(self) -> int:
        m = imaplib.IMAP4("127.0.0.1", self.server.imap_port)
        m.login(self.address, PASSWORD)
        typ, data = m.select("INBOX")
        assert typ == "OK"
        m.logout()
        return int(data[0])


def _uid_of(path: Path) -> int:
    match = re.search(r",U=(\d+)", path.name)
    assert match, path
    return int(match.group(1))


class RawPOP3:
    """Exact octets out, response lines in."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None, timeout: float = 10) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = tls.wrap_socket(sock, server_hostname="127.0.0.1") if tls else sock
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def line(self) -> bytes:
        line = self.file.readline()
        if not line:
            raise ConnectionError("closed by server")
        return line

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, text: str | bytes) -> bytes:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.line()

    def body(self) -> list[bytes]:
        """The lines of a multi-line response after its status line, as sent."""
        lines = []
        while (line := self.line()) != b".\r\n":
            lines.append(line)
        return lines

    def starttls(self, ctx: ssl.SSLContext) -> None:
        self.sock = ctx.wrap_socket(self.sock, server_hostname="127.0.0.1")
        self.file = self.sock.makefile("rb")

    def closed(self, within: float = 5.0) -> bool:
        """True if the server closes the connection (sending nothing more)."""
        self.sock.settimeout(within)
        try:
            return self.file.read() == b""
        except (TimeoutError, OSError):
            return False

    def close(self) -> None:
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


def still_serving(server: PopServer) -> None:
    """Another client logs in and is served normally, on a new connection."""
    user = User(server)
    user.deliver("still here")
    if server.plaintext:
        p = user.pop()
    else:
        p = poplib.POP3_SSL("127.0.0.1", server.pop3s_port, context=server.client_tls(), timeout=10)
        p.user(user.address)
        p.pass_(PASSWORD)
    assert p.stat()[0] == 1
    p.quit()


@pytest.fixture
def user(pop3_server: PopServer) -> User:
    return User(pop3_server)


# -- greeting, CAPA, logins ----------------------------------------------------------


def test_greeting_and_capa(user: User) -> None:
    c = RawPOP3(user.server.pop3_port)
    assert re.fullmatch(rb"\+OK pimail POP3 ready <[\x21-\x3d\x3f-\x7e]+@mx\.test>\r\n", c.greeting)
    assert c.command("CAPA") == b"+OK Capability list follows\r\n"
    caps = c.body()
    for cap in [b"TOP", b"UIDL", b"USER", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING",
                b"SASL PLAIN", b"STLS", b"IMPLEMENTATION pimail"]:  # fmt: skip
        assert cap + b"\r\n" in caps, cap
    # Every greeting carries a different timestamp.
    assert RawPOP3(user.server.pop3_port).greeting != c.greeting
    # RFC 2449 5: what AUTHORIZATION announced is announced after login too; STLS is over.
    c.command(f"USER {user.address}")
    c.command(f"PASS {PASSWORD}")
    assert c.command("CAPA").startswith(b"+OK")
    after = c.body()
    assert b"USER\r\n" in after and b"SASL PLAIN\r\n" in after and b"STLS\r\n" not in after
    assert c.command("QUIT").startswith(b"+OK")
    assert c.closed()


def test_user_pass_and_wrong_password(user: User) -> None:
    user.deliver("one")
    p = poplib.POP3("127.0.0.1", user.server.pop3_port, timeout=10)
    assert p.user(user.address).startswith(b"+OK")
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] Authentication failed"):
        p.pass_("wrong password")
    # RFC 1939 7: after a failed PASS the session is back to USER.
    with pytest.raises(poplib.error_proto, match="USER first"):
        p.pass_(PASSWORD)
    p.user(user.address)
    assert p.pass_(PASSWORD).startswith(b"+OK Logged in, maildrop has 1 messages")
    p.quit()
    # An unknown user gets the same answers as a known one.
    p = poplib.POP3("127.0.0.1", user.server.pop3_port, timeout=10)
    assert p.user("nobody@example.org").startswith(b"+OK")
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] Authentication failed"):
        p.pass_(PASSWORD)
    p.quit()
    user.pop().quit()  # a success clears the address's failure count


def test_auth_plain(user: User) -> None:
    token = base64.b64encode(f"\0{user.address}\0{PASSWORD}".encode()).decode()
    # With the initial response (RFC 5034 4).
    c = RawPOP3(user.server.pop3_port)
    assert c.command(f"AUTH PLAIN {token}").startswith(b"+OK Logged in")
    assert c.command("STAT") == b"+OK 0 0\r\n"
    c.close()
    # With the "+ " continuation; the mechanism name in any case.
    c = RawPOP3(user.server.pop3_port)
    assert c.command("AUTH plain") == b"+ \r\n"
    assert c.command(token).startswith(b"+OK Logged in")
    c.close()
    c = RawPOP3(user.server.pop3_port)
    assert c.command("AUTH") == b"+OK Supported mechanisms\r\n"
    assert c.body() == [b"PLAIN\r\n"]
    assert c.command("AUTH PLAIN") == b"+ \r\n"
    assert c.command("*") == b"-ERR [AUTH] Authentication cancelled\r\n"
    assert c.command("AUTH CRAM-MD5").startswith(b"-ERR")
    assert c.command("AUTH PLAIN not*base64").startswith(b"-ERR [AUTH] Invalid base64")
    assert c.command("AUTH PLAIN =").startswith(b"-ERR [AUTH] Malformed")
    # Acting as somebody else (an authorization identity) is refused.
    other = base64.b64encode(f"admin@example.org\0{user.address}\0{PASSWORD}".encode())
    assert c.command(b"AUTH PLAIN " + other).startswith(b"-ERR [AUTH]")
    wrong = base64.b64encode(f"\0{user.address}\0nope".encode())
    assert c.command(b"AUTH PLAIN " + wrong) == b"-ERR [AUTH] Authentication failed\r\n"
    assert c.command(f"AUTH PLAIN {token}").startswith(b"+OK")
    assert c.command(f"AUTH PLAIN {token}").startswith(b"-ERR")  # not in TRANSACTION
    c.close()


def test_commands_in_the_wrong_state(user: User) -> None:
    c = RawPOP3(user.server.pop3_port)
    for command in ["STAT", "LIST", "UIDL", "RETR 1", "TOP 1 0", "DELE 1", "RSET", "NOOP"]:
        assert c.command(command).startswith(b"-ERR"), command
    assert c.command(f"PASS {PASSWORD}") == b"-ERR USER first\r\n"
    c.command(f"USER {user.address}")
    assert c.command(f"PASS {PASSWORD}").startswith(b"+OK")
    assert c.command(f"USER {user.address}").startswith(b"-ERR")
    c.close()


# -- the maildrop: STAT, LIST, UIDL, RETR, TOP --------------------------------------------


def test_stat_list_retr_top_match_the_maildir(user: User) -> None:
    user.deliver("first")
    user.deliver("dots", DOTTED)
    user.deliver("long", "".join(f"line {i}\r\n" for i in range(50)))
    files = user.files()
    sizes = [f.stat().st_size for f in files]
    p = user.pop()
    assert p.stat() == (3, sum(sizes))
    resp, listing, _ = p.list()
    assert resp == f"+OK 3 messages ({sum(sizes)} octets)".encode()
    assert listing == [f"{i} {s}".encode() for i, s in enumerate(sizes, 1)]
    assert p.list(2) == f"+OK 2 {sizes[1]}".encode()
    for i, f in enumerate(files, 1):
        data = f.read_bytes()
        resp, lines, octets = p.retr(i)
        assert resp == f"+OK {len(data)} octets".encode()
        assert b"\r\n".join(lines) + b"\r\n" == data
        assert octets == len(data)
    # TOP: the header, the blank line, n lines of the body (RFC 1939 7).
    data = files[2].read_bytes()
    header, _, _ = data.partition(b"\r\n\r\n")
    _, lines, _ = p.top(3, 0)
    assert b"\r\n".join(lines) == header + b"\r\n"
    _, lines, _ = p.top(3, 2)
    assert lines[-3:] == [b"", b"line 0", b"line 1"]
    _, lines, _ = p.top(3, 1000)  # more lines than the body has: all of it
    assert b"\r\n".join(lines) + b"\r\n" == data
    _, lines, _ = p.top(2, 3)
    assert lines[-3:] == [b"Hello.", b".leading dot", b"..two dots"]
    # Bad message numbers.
    for command in ["RETR 0", "RETR 4", "RETR -1", "RETR +1", "RETR 1x", "LIST 99999999999",
                    "TOP 1", "TOP 1 -1", "RETR", "DELE"]:  # fmt: skip
        with pytest.raises(poplib.error_proto):
            p._shortcmd(command)
    p.quit()
    assert len(user.files()) == 3


def test_dot_stuffing_on_the_wire(user: User) -> None:
    user.deliver("dots", DOTTED)
    c = user.raw()
    assert c.command("RETR 1").startswith(b"+OK")
    body = c.body()
    i = body.index(b"Hello.\r\n")
    assert body[i:] == [b"Hello.\r\n", b"..leading dot\r\n", b"...two dots\r\n", b"..\r\n",
                        b".. \r\n", b"end\r\n"]  # fmt: skip
    assert c.command("TOP 1 2").startswith(b"+OK")
    assert c.body()[-2:] == [b"Hello.\r\n", b"..leading dot\r\n"]
    c.close()


def test_large_message_is_streamed_whole(user: User) -> None:
    line = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/ABCDEFGHIJKL\r\n"
    user.deliver("big", line * 40_000)  # 3.2 MB
    data = user.files()[0].read_bytes()
    p = user.pop()
    resp, lines, octets = p.retr(1)
    assert resp == f"+OK {len(data)} octets".encode()
    assert octets == len(data) and b"\r\n".join(lines) + b"\r\n" == data
    p.quit()


def test_uidl_is_stable_and_unique(user: User) -> None:
    user.deliver("a")
    user.deliver("b")
    p = user.pop()
    _, first, _ = p.uidl()
    assert p.uidl(2) == b"+OK " + first[1]
    p.quit()
    rows = user.server.index_rows(user.address)
    assert first == [f"{i} {r['uidvalidity']}.{r['uid']}".encode() for i, r in enumerate(rows, 1)]
    for entry in first:  # RFC 1939 7: 1 to 70 characters in 0x21..0x7E
        assert re.fullmatch(rb"\d+ [\x21-\x7e]{1,70}", entry)
    user.deliver("c")
    p = user.pop()
    _, second, _ = p.uidl()
    assert second[:2] == first and len(second) == 3 and second[2] not in first
    # Deleting the first message renumbers, but the unique ids stay with their messages.
    p.dele(1)
    p.quit()
    p = user.pop()
    _, third, _ = p.uidl()
    assert [x.split()[1] for x in third] == [x.split()[1] for x in second[1:]]
    p.quit()


def test_maildrop_is_a_snapshot(user: User) -> None:
    user.deliver("before")
    p = user.pop()
    user.deliver("during")
    assert p.stat()[0] == 1
    with pytest.raises(poplib.error_proto):
        p.retr(2)
    p.quit()
    p = user.pop()
    assert p.stat()[0] == 2
    p.quit()


def test_changes_by_imap_during_a_session(user: User) -> None:
    user.deliver("one")
    user.deliver("two")
    p = user.pop()
    m = imaplib.IMAP4("127.0.0.1", user.server.imap_port)
    m.login(user.address, PASSWORD)
    m.select("INBOX")
    m.store("1", "+FLAGS", "(\\Deleted)")
    m.expunge()
    m.store("1", "+FLAGS", "(\\Seen)")  # message two: its file is renamed
    m.logout()
    with pytest.raises(poplib.error_proto, match="removed by another session"):
        p.retr(1)
    _, lines, _ = p.retr(2)
    assert b"Subject: two" in lines
    p.dele(1)  # gone already: removing it again is harmless
    assert p.quit() == b"+OK pimail POP3 server signing off (0 messages deleted)"
    assert user.imap_count() == 1


# -- DELE, RSET, QUIT ----------------------------------------------------------------------


def test_dele_and_quit_remove_messages(user: User) -> None:
    for subject in ["one", "two", "three"]:
        user.deliver(subject)
    files = user.files()
    p = user.pop()
    assert p.dele(1) == b"+OK Message 1 deleted"
    assert p.dele(3) == b"+OK Message 3 deleted"
    with pytest.raises(poplib.error_proto, match="already deleted"):
        p.dele(1)
    for command in ["RETR 1", "LIST 1", "UIDL 1", "TOP 1 0"]:
        with pytest.raises(poplib.error_proto):
            p._shortcmd(command)
    assert p.stat() == (1, files[1].stat().st_size)
    assert p.list()[1] == [f"2 {files[1].stat().st_size}".encode()]
    assert len(p.uidl()[1]) == 1
    # Nothing is removed before QUIT.
    assert all(f.exists() for f in files) and user.imap_count() == 3
    assert p.quit() == b"+OK pimail POP3 server signing off (2 messages deleted)"
    assert not files[0].exists() and not files[2].exists()
    assert user.uids() == [_uid_of(files[1])]
    assert [r["uid"] for r in user.server.index_rows(user.address)] == [_uid_of(files[1])]
    assert user.imap_count() == 1


def test_rset_and_a_dropped_connection_delete_nothing(user: User) -> None:
    user.deliver("one")
    user.deliver("two")
    files = user.files()
    p = user.pop()
    p.dele(1)
    p.dele(2)
    assert p.stat() == (0, 0)
    assert (
        p.rset()
        == f"+OK Maildrop has 2 messages ({sum(f.stat().st_size for f in files)} octets)".encode()
    )
    p.retr(1)
    p.quit()
    assert user.files() == files
    c = user.raw()
    assert c.command("DELE 1").startswith(b"+OK")
    c.close()  # no QUIT
    time.sleep(0.3)
    assert user.files() == files and user.imap_count() == 2
    assert user.uids() == [_uid_of(f) for f in files]


def test_pipelined_commands(user: User) -> None:
    user.deliver("one")
    user.deliver("two", DOTTED)
    c = RawPOP3(user.server.pop3_port)
    # RFC 2449 6.6: a batch in one packet, answered in order.
    c.send(
        f"USER {user.address}\r\nPASS {PASSWORD}\r\nSTAT\r\nLIST\r\nRETR 2\r\nUIDL 1\r\n"
        "DELE 1\r\nFOO\r\nTOP 2 0\r\nNOOP\r\nRSET\r\nQUIT\r\n".encode()
    )
    assert c.line().startswith(b"+OK")
    assert c.line().startswith(b"+OK Logged in")
    assert re.fullmatch(rb"\+OK 2 \d+\r\n", c.line())
    assert c.line().startswith(b"+OK 2 messages") and len(c.body()) == 2
    assert c.line().startswith(b"+OK") and b"..leading dot\r\n" in c.body()
    assert re.fullmatch(rb"\+OK 1 \d+\.\d+\r\n", c.line())
    assert c.line() == b"+OK Message 1 deleted\r\n"
    assert c.line() == b"-ERR Unknown command\r\n"
    assert c.line().startswith(b"+OK") and c.body()[-1] == b"\r\n"
    assert c.line() == b"+OK\r\n"
    assert c.line().startswith(b"+OK Maildrop has 2 messages")
    assert c.line().startswith(b"+OK pimail POP3 server signing off (0 messages")
    assert c.closed()


def test_quit_in_authorization(user: User) -> None:
    c = RawPOP3(user.server.pop3_port)
    assert c.command("quit") == b"+OK pimail POP3 server signing off\r\n"
    assert c.closed()


# -- STLS and implicit TLS --------------------------------------------------------------------


def test_stls(user: User) -> None:
    user.deliver("secret")
    ctx = user.server.client_tls()
    p = poplib.POP3("127.0.0.1", user.server.pop3_port, timeout=10)
    assert p.stls(ctx).startswith(b"+OK Begin TLS")
    assert "STLS" not in p.capa()
    with pytest.raises(poplib.error_proto, match="TLS active"):
        p._shortcmd("STLS")
    p.user(user.address)
    p.pass_(PASSWORD)
    assert p.stat()[0] == 1
    p.quit()
    # Implicit TLS, port 995's role.
    p = poplib.POP3_SSL("127.0.0.1", user.server.pop3s_port, context=ctx, timeout=10)
    assert "STLS" not in p.capa()
    p.user(user.address)
    p.pass_(PASSWORD)
    assert p.retr(1)[0].startswith(b"+OK")
    p.quit()


def test_stls_drops_what_was_pipelined_after_it(user: User) -> None:
    c = RawPOP3(user.server.pop3_port)
    # Injected in the clear behind STLS: must not be taken as sent over TLS.
    c.send(f"STLS\r\nUSER {user.address}\r\n".encode())
    assert c.line() == b"+OK Begin TLS negotiation\r\n"
    c.starttls(user.server.client_tls())
    assert c.command(f"PASS {PASSWORD}") == b"-ERR USER first\r\n"
    c.command(f"USER {user.address}")
    assert c.command(f"PASS {PASSWORD}").startswith(b"+OK")
    c.close()


def test_no_stls_after_login(user: User) -> None:
    c = user.raw()
    assert c.command("STLS").startswith(b"-ERR")
    assert c.command("STAT") == b"+OK 0 0\r\n"
    c.close()


# -- hostile input ------------------------------------------------------------------------------


def test_line_length_limit(user: User) -> None:
    c = RawPOP3(user.server.pop3_port)
    # 512 octets with the CRLF are taken; 513 are not, and the session goes on.
    assert c.command("USER " + "a" * 505).startswith(b"+OK")
    assert c.command("USER " + "a" * 506) == b"-ERR Line too long\r\n"
    assert c.command("NOOP " + "x" * 5000) == b"-ERR Line too long\r\n"
    c.send(b"x" * 3000)  # in pieces
    c.send(b"y" * 3000 + b"\r\n")
    assert c.line() == b"-ERR Line too long\r\n"
    c.command(f"USER {user.address}")
    assert c.command(f"PASS {PASSWORD}").startswith(b"+OK")
    c.close()
    # A line that never ends is not buffered: past 64 KiB the connection closes.
    c = RawPOP3(user.server.pop3_port)
    c.send(b"A" * 100_000)
    assert c.line() == b"-ERR Too many bad commands, closing\r\n"
    assert c.closed()
    still_serving(user.server)


def test_unknown_commands_and_garbage(user: User) -> None:
    c = RawPOP3(user.server.pop3_port)
    assert c.command("FOO") == b"-ERR Unknown command\r\n"
    assert c.command("") == b"-ERR Unknown command\r\n"
    assert c.command("LAST") == b"-ERR Unknown command\r\n"
    assert c.command(b"\x00\xff\xfe USER").startswith(b"-ERR")
    assert c.command(b"USER \xff\xfe").startswith(b"-ERR")
    assert c.command(b"USER a\x00b").startswith(b"-ERR")
    assert c.command("CAPA extra").startswith(b"-ERR")
    c.command(f"USER {user.address}")
    assert c.command(f"PASS {PASSWORD}").startswith(b"+OK")
    c.close()
    # Binary garbage: every line answered with -ERR until too many, then closed.
    c = RawPOP3(user.server.pop3_port)
    noise = random.Random(1939).randbytes(4000)
    c.send(b"".join(noise[i : i + 40] + b"\r\n" for i in range(0, len(noise), 40)))
    lines = []
    with pytest.raises(ConnectionError):
        while True:
            lines.append(c.line())
    assert lines[-1] == b"-ERR Too many bad commands, closing\r\n"
    assert all(line.startswith(b"-ERR") for line in lines)
    still_serving(user.server)


# -- the strict server: no plaintext passwords, short timeout, connection limit ------------------


def test_plaintext_passwords_refused_before_tls(strict_server: PopServer) -> None:
    user = User(strict_server)
    c = RawPOP3(strict_server.pop3_port)
    assert c.command("CAPA").startswith(b"+OK")
    caps = c.body()
    assert b"STLS\r\n" in caps and b"USER\r\n" not in caps and b"SASL PLAIN\r\n" not in caps
    assert c.command(f"USER {user.address}") == b"-ERR [AUTH] Use STLS first\r\n"
    assert c.command(f"PASS {PASSWORD}") == b"-ERR [AUTH] Use STLS first\r\n"
    token = base64.b64encode(f"\0{user.address}\0{PASSWORD}".encode()).decode()
    assert c.command(f"AUTH PLAIN {token}") == b"-ERR [AUTH] Use STLS first\r\n"
    assert c.command("STLS") == b"+OK Begin TLS negotiation\r\n"
    c.starttls(strict_server.client_tls())
    c.command("CAPA")
    caps = c.body()
    assert b"USER\r\n" in caps and b"SASL PLAIN\r\n" in caps and b"STLS\r\n" not in caps
    assert c.command(f"AUTH PLAIN {token}").startswith(b"+OK Logged in")
    c.close()


def test_autologout_timer(strict_server: PopServer) -> None:
    user = User(strict_server)
    user.deliver("keep me")
    c = RawPOP3(strict_server.pop3_port)
    started = time.monotonic()
    # RFC 1939 3: closed without a response...
    assert c.closed(within=10)
    assert 0.9 < time.monotonic() - started < 5
    # ... and without the UPDATE state: a message marked deleted stays.
    c = RawPOP3(strict_server.pop3s_port, tls=strict_server.client_tls())
    c.command(f"USER {user.address}")
    assert c.command(f"PASS {PASSWORD}").startswith(b"+OK")
    assert c.command("DELE 1").startswith(b"+OK")
    assert c.closed(within=10)
    assert len(user.files()) == 1
    still_serving(strict_server)


def test_connection_limit_per_address(strict_server: PopServer) -> None:
    clients = [RawPOP3(strict_server.pop3_port) for _ in range(3)]
    assert all(c.greeting.startswith(b"+OK") for c in clients)
    extra = RawPOP3(strict_server.pop3_port)
    assert extra.greeting == b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
    assert extra.closed()
    clients.pop().command("QUIT")
    time.sleep(0.1)
    still_serving(strict_server)
    for c in clients:
        c.close()
