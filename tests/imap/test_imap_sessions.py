"""Several sessions on one mailbox, IDLE, QRESYNC, and hostile input."""

from __future__ import annotations

import re
import time

from conftest import PASSWORD

from .conftest import Mailbox
from .imap_raw import RawIMAP


def session(mailbox: Mailbox, select: str = "INBOX") -> RawIMAP:
    c = RawIMAP(mailbox.server.imaps_port, tls=mailbox.server.client_tls())
    c.ok(f'LOGIN "{mailbox.address}" "{PASSWORD}"')
    if select:
        c.ok(f"SELECT {select}")
    return c


def test_changes_reach_other_sessions(mailbox: Mailbox) -> None:
    mailbox.deliver("one")
    mailbox.deliver("two")
    a, b = session(mailbox), session(mailbox)
    # A delivery is announced at the next command.
    mailbox.deliver("three")
    assert b"* 3 EXISTS\r\n" in a.ok("NOOP")
    # A flag change in B reaches A as FETCH FLAGS.
    b.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
    lines = a.ok("NOOP")
    assert any(re.match(rb"\* 1 FETCH \(UID 1 FLAGS \([^)]*\\Flagged", x) for x in lines), lines
    # An expunge in B is not announced to A during a FETCH (RFC 9051 7.4.1)...
    b.ok("NOOP")
    b.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    lines = a.ok("FETCH 1:* (UID)")
    assert not any(b"EXPUNGE" in x for x in lines)
    assert len([x for x in lines if b"FETCH" in x]) == 2  # 1 and 3; 2 is gone already
    # ... but at the next NOOP.
    lines = a.ok("NOOP")
    assert b"* 2 EXPUNGE\r\n" in lines
    assert [re.search(rb"UID (\d+)", x).group(1) for x in a.ok("FETCH 1:* (UID)")] == [b"1", b"3"]
    a.close()
    b.close()


def test_idle_hears_new_mail_within_a_second(mailbox: Mailbox) -> None:
    c = session(mailbox)
    c.send(b"i1 IDLE\r\n")
    assert c.line() == b"+ idling\r\n"
    started = time.monotonic()
    mailbox.deliver("wake up")  # returns after the 250
    line = c.line()
    elapsed = time.monotonic() - started
    assert line == b"* 1 EXISTS\r\n"
    assert elapsed < 1.0, elapsed
    assert c.line() == b"* 1 RECENT\r\n"  # RFC 3501 7.3.2, for an IMAP4rev1 client
    # Flag changes from another session arrive during IDLE too.
    other = session(mailbox)
    other.ok("STORE 1 +FLAGS (\\Seen)")
    assert b"FLAGS (\\Seen" in c.line()
    c.send(b"DONE\r\n")
    assert c.line().startswith(b"i1 OK")
    c.ok("NOOP")
    c.close()
    other.close()


def test_qresync(mailbox: Mailbox) -> None:
    for i in range(4):
        mailbox.deliver(f"q{i}")
    c = session(mailbox, select="")
    c.ok("ENABLE QRESYNC")
    text = b"".join(c.ok("SELECT INBOX"))
    uidvalidity = int(re.search(rb"UIDVALIDITY (\d+)", text).group(1))
    modseq = int(re.search(rb"HIGHESTMODSEQ (\d+)", text).group(1))
    c.close()
    other = session(mailbox)
    other.ok("STORE 1 +FLAGS (\\Answered)")
    other.ok("STORE 3 +FLAGS (\\Deleted)")
    other.ok("EXPUNGE")
    other.close()
    c = session(mailbox, select="")
    c.ok("ENABLE QRESYNC")
    lines = c.ok(f"SELECT INBOX (QRESYNC ({uidvalidity} {modseq} 1:4))")
    assert b"* VANISHED (EARLIER) 3\r\n" in lines
    fetched = [x for x in lines if b" FETCH " in x]
    assert len(fetched) == 1 and b"UID 1 " in fetched[0] and b"\\Answered" in fetched[0]
    lines = c.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
    assert lines[0] == b"* VANISHED (EARLIER) 3\r\n"
    # With QRESYNC on, expunges are announced as VANISHED.
    c.ok("STORE 1 +FLAGS (\\Deleted)")
    assert b"* VANISHED 1\r\n" in c.ok("EXPUNGE")
    c.close()


def test_hostile_input_gets_bad_and_service_goes_on(mailbox: Mailbox) -> None:
    c = RawIMAP(mailbox.server.imap_port)
    for junk in (b"\x00\x01\x02", b"a", b"a NOSUCHCOMMAND", b'a LOGIN "unterminated',
                 b"a FETCH 1:* (", b"a SEARCH " + b"(" * 500 + b"ALL" + b")" * 500,
                 b"\xff\xfe\xfd garbage"):  # fmt: skip
        c.send(junk + b"\r\n")
        assert b"BAD" in c.line(), junk
    # An over-long line, and a literal over the limit, are refused without buffering.
    c.send(b"a NOOP " + b"x" * 200_000 + b"\r\n")
    assert b"BAD" in c.line()
    c.send(b"a LOGIN {9999999}\r\n")
    assert b"NO [TOOBIG]" in c.line() or b"BAD" in c.line()
    c.ok("NOOP")
    c.close()
    # Another client is served as usual.
    s = session(mailbox)
    s.ok("NOOP")
    s.close()


def test_too_many_errors_close_the_connection(mailbox: Mailbox) -> None:
    c = RawIMAP(mailbox.server.imap_port)
    seen = b""
    try:
        for _ in range(100):
            c.send(b"? ?\r\n")
            seen += c.line()
    except (ConnectionError, OSError):
        pass
    assert b"* BYE Too many protocol errors" in seen
    c.close()


def test_pipelined_commands_and_literal_plus(mailbox: Mailbox) -> None:
    c = RawIMAP(mailbox.server.imaps_port, tls=mailbox.server.client_tls())
    user, pw = mailbox.address.encode(), PASSWORD.encode()
    c.send(
        b"p1 LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\np2 SELECT INBOX\r\np3 NOOP\r\n"
        % (len(user), user, len(pw), pw)
    )
    untagged, tagged = c.until(b"p3")
    assert any(line.startswith(b"p1 OK") for line in untagged)
    assert any(line.startswith(b"p2 OK") for line in untagged)
    assert tagged.startswith(b"p3 OK")
    # A synchronising literal waits for the continuation.
    c.send(b"p4 APPEND INBOX {12}\r\n")
    assert c.line().startswith(b"+ ")
    c.send(b"Subject: x\r\n\r\n")
    _, tagged = c.until(b"p4")
    assert b"APPENDUID" in tagged
    c.close()


def test_login_rate_limited_per_address(make_server) -> None:
    server = make_server(sections={"auth": {"max_failures": 3, "failure_delay": 0.05}})
    server.cli("domain", "add", "example.org")
    server.add_user("alice@example.org")
    server.start()
    c = RawIMAP(server.imaps_port, tls=server.client_tls())
    for _ in range(3):
        _, tagged = c.command('LOGIN "alice@example.org" "wrong-password"')
        assert b"NO [AUTHENTICATIONFAILED]" in tagged
    # Now even the right password fails from this address.
    _, tagged = c.command(f'LOGIN "alice@example.org" "{PASSWORD}"')
    assert b"NO" in tagged
    c.close()
