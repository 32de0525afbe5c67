"""Per-session state the RFCs pin down: \\Recent (RFC 3501 2.3.2), FLAGS before a new
keyword (RFC 9051 7.3.5), CONDSTORE enabling (RFC 7162 3.1), mailbox names and
subscriptions (RFC 9051 6.3.4-6.3.7). Real server, real TLS sockets."""

from __future__ import annotations

import re

import pytest

from conftest import PASSWORD, PimailServer

from .conftest import Mailbox
from .imap_raw import RawIMAP

MESSAGE = b"From: a@b.test\r\nSubject: appended\r\n\r\nHello.\r\n"


def session(mailbox: Mailbox, select: str = "INBOX", rev2: bool = False) -> RawIMAP:
    c = RawIMAP(mailbox.server.imaps_port, tls=mailbox.server.client_tls())
    c.ok(f'LOGIN "{mailbox.address}" "{PASSWORD}"')
    if rev2:
        c.ok("ENABLE IMAP4rev2")
    if select:
        c.ok(select if " " in select else f"SELECT {select}")
    return c


def append(c: RawIMAP, folder: str, flags: str = "") -> None:
    flag_part = f" ({flags})" if flags else ""
    c.send(f"a1 APPEND {folder}{flag_part} {{{len(MESSAGE)}+}}\r\n".encode() + MESSAGE + b"\r\n")
    _, tagged = c.until(b"a1")
    assert tagged.startswith(b"a1 OK"), tagged


def recent_count(lines: list[bytes]) -> int:
    found = [int(m.group(1)) for x in lines if (m := re.match(rb"\* (\d+) RECENT", x))]
    assert len(found) == 1, lines
    return found[0]


def flags_of(lines: list[bytes]) -> dict[int, set[str]]:
    out = {}
    for x in lines:
        m = re.match(rb"\* (\d+) FETCH \(.*FLAGS \(([^)]*)\)", x)
        if m:
            out[int(m.group(1))] = set(m.group(2).decode().split())
    return out


def search(c: RawIMAP, key: str) -> list[int]:
    line = next(x for x in c.ok(f"SEARCH {key}") if x.startswith(b"* SEARCH"))
    return [int(n) for n in line.split()[2:]]


# -- 3. \Recent: one session per message (RFC 3501 2.3.2) --------------------------


def test_recent_belongs_to_the_first_session_to_select(mailbox: Mailbox) -> None:
    mailbox.deliver("r1")
    mailbox.deliver("r2")
    status = session(mailbox, select="")
    assert status.ok("STATUS INBOX (RECENT)") == [b'* STATUS "INBOX" (RECENT 2)\r\n']
    # EXAMINE shows them \Recent without taking the flag (RFC 3501 6.3.2).
    e = session(mailbox, select="")
    assert recent_count(e.ok("EXAMINE INBOX")) == 2
    a = session(mailbox, select="")
    assert recent_count(a.ok("SELECT INBOX")) == 2
    assert flags_of(a.ok("FETCH 1:* (FLAGS)")) == {1: {"\\Recent"}, 2: {"\\Recent"}}
    b = session(mailbox, select="")
    assert recent_count(b.ok("SELECT INBOX")) == 0
    assert flags_of(b.ok("FETCH 1:* (FLAGS)")) == {1: set(), 2: set()}
    assert recent_count(session(mailbox, select="").ok("EXAMINE INBOX")) == 0
    assert status.ok("STATUS INBOX (RECENT)") == [b'* STATUS "INBOX" (RECENT 0)\r\n']
    # SEARCH RECENT / NEW / OLD (RFC 3501 6.4.4) follow the session's own flag.
    a.ok("STORE 1 +FLAGS (\\Seen)")
    assert search(a, "RECENT") == [1, 2] and search(a, "NEW") == [2] and search(a, "OLD") == []
    assert search(b, "RECENT") == [] and search(b, "NEW") == [] and search(b, "OLD") == [1, 2]
    for c in (status, e, a, b):
        c.close()


def test_recent_goes_to_the_first_session_told_of_new_mail(mailbox: Mailbox) -> None:
    a, b = session(mailbox), session(mailbox)
    mailbox.deliver("arrives")
    # A hears first: A owns it. RECENT follows EXISTS (RFC 3501 7.3.2).
    assert a.ok("NOOP") == [b"* 1 EXISTS\r\n", b"* 1 RECENT\r\n"]
    assert b.ok("NOOP") == [b"* 1 EXISTS\r\n", b"* 0 RECENT\r\n"]
    assert flags_of(a.ok("FETCH 1 (FLAGS)")) == {1: {"\\Recent"}}
    assert flags_of(b.ok("FETCH 1 (FLAGS)")) == {1: set()}
    # Also in IDLE: the idling session is told first.
    b.send(b"i1 IDLE\r\n")
    assert b.line() == b"+ idling\r\n"
    mailbox.deliver("during idle")
    assert b.line() == b"* 2 EXISTS\r\n"
    assert b.line() == b"* 1 RECENT\r\n"
    b.send(b"DONE\r\n")
    assert b.line().startswith(b"i1 OK")
    assert b"* 2 EXISTS\r\n" in a.ok("NOOP")
    assert flags_of(b.ok("FETCH 2 (FLAGS)")) == {2: {"\\Recent"}}
    assert flags_of(a.ok("FETCH 2 (FLAGS)")) == {2: set()}
    assert recent_count(session(mailbox, select="").ok("SELECT INBOX")) == 0
    a.close()
    b.close()


def test_appended_copied_and_moved_messages_are_recent_in_the_target(mailbox: Mailbox) -> None:
    mailbox.deliver("to copy")
    mailbox.deliver("to move")
    a = session(mailbox)
    append(a, "Archive")
    a.ok("COPY 1 Archive")
    a.ok("MOVE 2 Archive")
    assert a.ok("STATUS Archive (RECENT MESSAGES)") == [
        b'* STATUS "Archive" (RECENT 3 MESSAGES 3)\r\n'
    ]
    t = session(mailbox, select="Archive")
    assert search(t, "RECENT") == [1, 2, 3]
    # Into the mailbox the session has selected: its own, at the next sync.
    append(t, "Archive")
    t.ok("NOOP")
    assert flags_of(t.ok("FETCH 4 (FLAGS)")) == {4: {"\\Recent"}}
    assert recent_count(session(mailbox, select="").ok("SELECT Archive")) == 0
    a.close()
    t.close()


def test_recent_across_a_restart(server: PimailServer) -> None:
    """The mark is in memory: after a restart, what is still in the Maildir's new/
    (told to a session but not taken out by a SELECT) is \\Recent again, once."""
    box = Mailbox.__new__(Mailbox)
    box.server, box.address = server, "alice@example.org"
    box.deliver("before")
    a = session(box)  # takes it: new/ -> cur/
    box.deliver("while selected")
    assert a.ok("NOOP")[-1] == b"* 2 RECENT\r\n"
    a.close()
    server.stop()
    server.start()
    b = session(box, select="")
    assert b.ok("STATUS INBOX (RECENT)") == [b'* STATUS "INBOX" (RECENT 1)\r\n']
    assert recent_count(b.ok("SELECT INBOX")) == 1
    assert search(b, "RECENT") == [2]
    assert recent_count(session(box, select="").ok("SELECT INBOX")) == 0
    b.close()


def test_imap4rev2_sessions_neither_see_nor_take_recent(mailbox: Mailbox) -> None:
    mailbox.deliver("rev2")
    r = session(mailbox, select="", rev2=True)
    lines = r.ok("SELECT INBOX")
    assert not any(b"RECENT" in x for x in lines)  # RFC 9051 E.1: no \Recent
    assert flags_of(r.ok("FETCH 1 (FLAGS)")) == {1: set()}
    mailbox.deliver("rev2 again")
    assert not any(b"Recent" in x for x in r.ok("NOOP"))
    # Still \Recent for the first IMAP4rev1 session.
    assert recent_count(session(mailbox, select="").ok("SELECT INBOX")) == 2
    r.close()


# -- 4. FLAGS before the first FETCH with a new keyword (RFC 9051 7.3.5) --------------


def check_flags_first(lines: list[bytes], known: set[str]) -> set[str]:
    """Walk responses as a client does: every keyword in a FETCH must have been
    listed by a FLAGS response before it. Returns the keywords met in FETCH."""
    seen = set()
    for x in lines:
        m = re.match(rb"\* FLAGS \(([^)]*)\)", x)
        if m:
            known.clear()
            known.update(f.lower() for f in m.group(1).decode().split())
            continue
        for f in flags_of([x]).get(int(x.split()[1]) if x[2:3].isdigit() else 0, set()):
            if not f.startswith("\\"):
                assert f.lower() in known, (f, lines)
                seen.add(f)
    return seen


def test_flags_announced_before_a_new_keyword(mailbox: Mailbox) -> None:
    mailbox.deliver("k1")
    a, b = session(mailbox), session(mailbox)
    known_a = {"\\seen"}
    # By STORE in another session, seen at NOOP (with PERMANENTFLAGS too).
    b.ok("STORE 1 +FLAGS ($Work)")
    lines = a.ok("NOOP")
    assert check_flags_first(lines, known_a) == {"$Work"}
    assert any(x.startswith(b"* OK [PERMANENTFLAGS (") and b"$Work" in x for x in lines)
    # By this session's own STORE: FLAGS before the STORE's FETCH.
    assert "$Mine" in check_flags_first(a.ok("STORE 1 +FLAGS ($Mine)"), known_a)
    # By APPEND with a keyword, then FETCH.
    append(b, "INBOX", "$Appended")
    lines = a.ok("NOOP") + a.ok("FETCH 1:* (FLAGS)")
    assert check_flags_first(lines, known_a) >= {"$Appended"}
    # By COPY and MOVE from another folder into the selected one.
    append(b, "Archive", "$Copied")
    append(b, "Archive", "$Moved")
    b.ok("SELECT Archive")
    b.ok("COPY 1 INBOX")
    b.ok("MOVE 2 INBOX")
    lines = a.ok("NOOP") + a.ok("FETCH 1:* (FLAGS)")
    assert check_flags_first(lines, known_a) >= {"$Copied", "$Moved"}
    # During IDLE.
    a.send(b"i1 IDLE\r\n")
    assert a.line() == b"+ idling\r\n"
    b.ok("SELECT INBOX")
    b.ok("STORE 1 +FLAGS.SILENT ($Idle)")
    lines = []
    while not any(b"$Idle" in x and b"FETCH" in x for x in lines):
        lines.append(a.line())
    a.send(b"DONE\r\n")
    lines += a.until(b"i1")[0]
    assert check_flags_first(lines, known_a) >= {"$Idle"}
    a.close()
    b.close()


# -- 5. CONDSTORE enabling commands (RFC 7162 3.1) ------------------------------------

ENABLING = [
    "FETCH 1 (MODSEQ)",
    "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1)",
    "SEARCH MODSEQ 1",
    "STORE 1 (UNCHANGEDSINCE 999999999999999) +FLAGS (\\Draft)",
    "STATUS INBOX (HIGHESTMODSEQ)",
    "ENABLE CONDSTORE",
    "ENABLE QRESYNC",
]


@pytest.mark.parametrize("command", ENABLING)
def test_condstore_enabling_command(mailbox: Mailbox, command: str) -> None:
    mailbox.deliver("c1")
    mailbox.deliver("c2")
    a, b = session(mailbox), session(mailbox)
    before = a.ok("FETCH 1 (FLAGS)")
    assert b"MODSEQ" not in b"".join(before)
    lines = a.ok(command)
    # The first enabling command while selected reports HIGHESTMODSEQ (3.1.2.1).
    assert any(x.startswith(b"* OK [HIGHESTMODSEQ ") for x in lines), lines
    assert_modseq_everywhere(a, b)


@pytest.mark.parametrize("command", ["SELECT INBOX (CONDSTORE)", "EXAMINE INBOX (CONDSTORE)"])
def test_condstore_enabled_by_select(mailbox: Mailbox, command: str) -> None:
    mailbox.deliver("c1")
    mailbox.deliver("c2")
    a, b = session(mailbox, select=command), session(mailbox)
    assert_modseq_everywhere(a, b, readonly=command.startswith("EXAMINE"))


def assert_modseq_everywhere(a: RawIMAP, b: RawIMAP, readonly: bool = False) -> None:
    """After enabling: FETCH FLAGS, STORE replies (.SILENT too) and unsolicited
    FETCHes from another session's change all carry UID-able MODSEQ."""

    def modseqs(lines: list[bytes]) -> list[bytes]:
        fetches = [x for x in lines if b" FETCH (" in x]
        assert fetches, lines
        assert all(b"MODSEQ (" in x for x in fetches), lines
        return fetches

    modseqs(a.ok("FETCH 1:2 (FLAGS)"))
    if not readonly:
        modseqs(a.ok("STORE 1 +FLAGS (\\Flagged)"))
        modseqs(a.ok("STORE 2 +FLAGS.SILENT (\\Answered)"))
    b.ok("STORE 2 +FLAGS (\\Seen)")
    fetches = modseqs(a.ok("NOOP"))
    assert any(b"UID 2 " in x for x in fetches)
    a.close()
    b.close()


# -- 6. Mailbox names and subscriptions (RFC 9051 6.3.4-6.3.7) -----------------------


def lsub(c: RawIMAP) -> list[bytes]:
    return sorted(x.split(b'"/" ')[1].strip() for x in c.ok('LSUB "" "*"'))


def list_subscribed(c: RawIMAP) -> list[bytes]:
    return sorted(x.split(b'"/" ')[1].strip() for x in c.ok('LIST (SUBSCRIBED) "" "*"'))


def test_create_ignores_a_trailing_separator(mailbox: Mailbox) -> None:
    c = session(mailbox, select="")
    assert c.ok("CREATE Projects/") == []
    assert c.ok('LIST "" "Projects*"') == [b'* LIST (\\HasNoChildren) "/" "Projects"\r\n']
    c.ok("CREATE Projects/2026/")
    assert [x.split(b'"/" ')[1] for x in c.ok('LIST "" "Projects*"')] == [
        b'"Projects"\r\n', b'"Projects/2026"\r\n',
    ]  # fmt: skip
    _, tagged = c.command("CREATE Projects/")
    assert tagged.split()[1:3] == [b"NO", b"[ALREADYEXISTS]"], tagged
    c.ok("SELECT Projects/2026")  # a real folder, selectable
    c.close()


def test_create_rename_delete_leave_subscriptions_to_the_client(mailbox: Mailbox) -> None:
    c = session(mailbox, select="")
    # The standard folders are created unsubscribed, as before.
    assert lsub(c) == [] and list_subscribed(c) == []
    c.ok("CREATE a/b/c")  # CREATE subscribes nothing, parents neither
    assert lsub(c) == [] and list_subscribed(c) == []
    c.ok("SUBSCRIBE a/b")
    c.ok("SUBSCRIBE Sent")
    assert lsub(c) == [b'"Sent"', b'"a/b"'] == list_subscribed(c)
    # RFC 9051 6.3.6: RENAME does not update subscriptions.
    c.ok("RENAME a x")
    assert lsub(c) == [b'"Sent"', b'"a/b"']
    assert c.ok('LSUB "" "a/b"') == [b'* LSUB (\\Noselect) "/" "a/b"\r\n']
    lines = c.ok('LIST (SUBSCRIBED) "" "a/b"')
    assert lines == [b'* LIST (\\NonExistent \\Subscribed) "/" "a/b"\r\n']
    # RFC 9051 6.3.7: a subscription outlives the mailbox it named (DELETE).
    c.ok("SUBSCRIBE x/b/c")
    c.ok("DELETE x/b/c")
    assert lsub(c) == [b'"Sent"', b'"a/b"', b'"x/b/c"']
    # RENAME INBOX creates its target unsubscribed.
    c.ok("RENAME INBOX Old")
    assert lsub(c) == [b'"Sent"', b'"a/b"', b'"x/b/c"']
    c.ok("UNSUBSCRIBE a/b")
    assert lsub(c) == [b'"Sent"', b'"x/b/c"']
    c.close()


# -- a STORE.SILENT must not hide another session's change (RFC 9051 7.4.1) ----------


@pytest.mark.parametrize("enable", ["", "ENABLE CONDSTORE"])
def test_silent_store_does_not_swallow_a_change_from_another_session(
    mailbox: Mailbox, enable: str
) -> None:
    mailbox.deliver("s1")
    a, b = session(mailbox, select=""), session(mailbox)
    if enable:
        a.ok(enable)
    a.ok("SELECT INBOX")
    b.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")  # A has not been told yet...
    lines = a.ok("STORE 1 +FLAGS.SILENT (\\Seen)")  # ... and changes the same message
    lines += a.ok("NOOP")
    told = flags_of(lines)
    assert told and told[1] >= {"\\Flagged", "\\Seen"}, lines
    a.close()
    b.close()
