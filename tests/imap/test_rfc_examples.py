"""The example exchanges of RFC 9051 and of the extension RFCs pimail
announces, replayed against a real server over a raw socket (issue 14).

Each test sets up the state the example assumes (mailboxes, messages, flags),
sends the example's client lines with the example's tags, and compares the
answers. Where the RFC is exact (tags, status, response codes, untagged data
such as EXPUNGE/EXISTS/ESEARCH/NAMESPACE), byte for byte; the human text after
a status (resp-text, RFC 9051 7.1) is free and never compared. Where the RFC
leaves freedom (the order of FETCH data items, of flags in a list, of the
untagged answers to SELECT), the comparison is structural, and a comment says
so. Values the example shows but no server can reproduce (UIDVALIDITY, the
MODSEQ values) are taken from the server and checked for consistency.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator

import pytest

from conftest import PASSWORD

from .conftest import Mailbox
from .imap_raw import RawIMAP


def message(n: int, subject: str | None = None, sender: str = "Ann Example <ann@remote.test>",
            body: str = "Hello.\r\n", extra: str = "") -> bytes:  # fmt: skip
    return (
        f"From: {sender}\r\nTo: user@example.org\r\nSubject: {subject or f'message {n}'}\r\n"
        f"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <m{n}.{time.time_ns()}@remote.test>"
        f"\r\n{extra}\r\n{body}"
    ).encode()


class Session(RawIMAP):
    """A raw session over implicit TLS, logged in; IMAP4rev2 enabled unless asked."""

    def __init__(self, mailbox: Mailbox, rev2: bool = True, login: bool = True) -> None:
        super().__init__(mailbox.server.imaps_port, tls=mailbox.server.client_tls())
        self.mailbox = mailbox
        if login:
            self.ok(f'LOGIN "{mailbox.address}" "{PASSWORD}"')
            if rev2:
                assert self.ok("ENABLE IMAP4rev2") == [b"* ENABLED IMAP4rev2\r\n"]

    def c(self, line: str | bytes) -> tuple[list[bytes], bytes]:
        """Send the example's client line as it is (its own tag); read to that tag."""
        data = line.encode() if isinstance(line, str) else line
        self.send(data + b"\r\n")
        return self.until(data.split(b" ", 1)[0])

    def append(self, folder: str, data: bytes, flags: str = "", date: str = "") -> None:
        """APPEND with a non-synchronizing literal (RFC 7888)."""
        extra = (f" ({flags})" if flags else "") + (f' "{date}"' if date else "")
        self.n += 1
        tag = b"s%d" % self.n
        self.send(tag + f' APPEND "{folder}"{extra} {{{len(data)}+}}\r\n'.encode() + data + b"\r\n")
        _, tagged = self.until(tag)
        assert tagged.startswith(tag + b" OK"), tagged

    def fill(self, folder: str, count: int, flags: dict[int, str] | None = None) -> None:
        for n in range(1, count + 1):
            self.append(folder, message(n), (flags or {}).get(n, ""))


def tagged_is(tagged: bytes, expected: str) -> None:
    """The tagged line starts with the example's tag, status and response code;
    the text after them is the server's own (RFC 9051 7.1)."""
    assert tagged.startswith(expected.encode() + b" ") or tagged == expected.encode() + b"\r\n", (
        f"expected {expected!r} ..., got {tagged!r}"
    )


def lines(*expected: str) -> list[bytes]:
    return [e.encode() + b"\r\n" for e in expected]


def flag_sets(untagged: list[bytes]) -> dict[int, set[bytes]]:
    """seq -> FLAGS of each `* n FETCH (... FLAGS (...) ...)` (flag order is free)."""
    out = {}
    for line in untagged:
        m = re.match(rb"\* (\d+) FETCH \(.*FLAGS \(([^)]*)\)", line)
        if m:
            out[int(m.group(1))] = set(m.group(2).split())
    return out


@pytest.fixture
def s(mailbox: Mailbox) -> Iterator[Session]:
    session = Session(mailbox)
    yield session
    session.close()


# -- RFC 9051 6.1: any state -------------------------------------------------------------


def test_6_1_1_capability(s: Session) -> None:
    untagged, tagged = s.c("abcd CAPABILITY")
    assert len(untagged) == 1 and untagged[0].startswith(b"* CAPABILITY ")
    assert b"IMAP4rev2" in untagged[0].split()
    tagged_is(tagged, "abcd OK")


def test_6_1_2_noop_reports_changes(mailbox: Mailbox, s: Session) -> None:
    """RFC 9051 6.1.2: NOOP is how a client polls; new mail shows as EXISTS."""
    s.fill("INBOX", 2)
    s.ok("SELECT INBOX")
    mailbox.deliver("arrived meanwhile")
    untagged, tagged = s.c("a002 NOOP")
    assert b"* 3 EXISTS\r\n" in untagged
    tagged_is(tagged, "a002 OK")


def test_6_1_3_logout_closes(s: Session) -> None:
    """RFC 9051 6.1.3: BYE, then the tagged OK, then the server closes."""
    untagged, tagged = s.c("A023 LOGOUT")
    assert untagged[0].startswith(b"* BYE ")
    tagged_is(tagged, "A023 OK")
    s.sock.settimeout(5)
    assert s.file.read() == b"", "the connection stays open after LOGOUT"


# -- RFC 9051 6.2: not authenticated -------------------------------------------------------


def test_6_2_3_login_and_6_2_2_authenticate_sasl_ir(mailbox: Mailbox) -> None:
    s = Session(mailbox, login=False)
    tagged_is(s.c(f'a001 LOGIN "{mailbox.address}" "{PASSWORD}"')[1], "a001 OK")
    s.close()
    s = Session(mailbox, login=False)
    # RFC 4959 (SASL-IR) 3, RFC 4616: PLAIN with its initial response on the line
    token = base64.b64encode(f"\0{mailbox.address}\0{PASSWORD}".encode()).decode()
    tagged_is(s.c(f"A001 AUTHENTICATE PLAIN {token}")[1], "A001 OK")
    s.close()


def test_7888_literal_plus_login(mailbox: Mailbox) -> None:
    """RFC 7888 4: 'A001 LOGIN {11+} FRED FOOBAR {7+} fat man' - no continuation
    request for a non-synchronizing literal."""
    s = Session(mailbox, login=False)
    user, password = mailbox.address.encode(), PASSWORD.encode()
    s.send(b"A001 LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(user), user, len(password), password))
    untagged, tagged = s.until(b"A001")
    assert not any(line.startswith(b"+") for line in untagged)
    tagged_is(tagged, "A001 OK")
    s.close()


# -- RFC 9051 6.3: authenticated ---------------------------------------------------------


def test_6_3_1_and_5161_enable(mailbox: Mailbox) -> None:
    """RFC 5161 3.1 / RFC 9051 6.3.1: ENABLED lists what this command enabled,
    an unknown capability is ignored."""
    s = Session(mailbox, rev2=False)
    untagged, tagged = s.c("t2 ENABLE CONDSTORE X-GOOD-IDEA")
    assert untagged == lines("* ENABLED CONDSTORE")
    tagged_is(tagged, "t2 OK")
    untagged, tagged = s.c("t3 ENABLE CONDSTORE")  # already on: not listed again
    assert untagged in ([], lines("* ENABLED")), untagged
    tagged_is(tagged, "t3 OK")
    s.close()


def test_7162_3_1_condstore_enabled_by_select(mailbox: Mailbox) -> None:
    """RFC 7162 3.1: SELECT ... (CONDSTORE) enables CONDSTORE: HIGHESTMODSEQ in
    the answer, MODSEQ in every FETCH after (3.1.4: even when not asked for)."""
    s = Session(mailbox, rev2=False)
    s.fill("INBOX", 1)
    untagged, tagged = s.c("A142 SELECT INBOX (CONDSTORE)")
    assert any(re.match(rb"\* OK \[HIGHESTMODSEQ \d+\]", u) for u in untagged), untagged
    tagged_is(tagged, "A142 OK [READ-WRITE]")
    untagged, _ = s.c("a103 STORE 1 +FLAGS (\\Flagged)")
    assert re.match(rb"\* 1 FETCH \(.*MODSEQ \(\d+\)", untagged[0]), untagged
    s.close()
    # RFC 7162 3.1: a FETCH of MODSEQ enables it as well.
    s = Session(mailbox, rev2=False)
    s.ok("SELECT INBOX")
    untagged, _ = s.c("a FETCH 1 (MODSEQ)")
    # RFC 7162 3.1.2.1: the first enabling command while a mailbox is selected
    # also brings an untagged OK [HIGHESTMODSEQ n].
    assert any(re.match(rb"\* OK \[HIGHESTMODSEQ \d+\]", u) for u in untagged), untagged
    fetches = [u for u in untagged if u.startswith(b"* 1 FETCH")]
    assert len(fetches) == 1 and re.match(rb"\* 1 FETCH \(MODSEQ \(\d+\)\)", fetches[0])
    untagged, _ = s.c("b STORE 1 -FLAGS (\\Flagged)")
    assert b"MODSEQ (" in untagged[0], "CONDSTORE not enabled by FETCH MODSEQ"
    s.close()


def test_6_3_2_select(s: Session) -> None:
    """RFC 9051 6.3.2 example (172 messages, \\Deleted \\Seen \\* permanent).
    The untagged answers may come in any order: compared as a set; the numbers
    the example shows as UIDVALIDITY and UIDNEXT are checked against STATUS."""
    s.fill("INBOX", 172)
    status = b"".join(s.ok("STATUS INBOX (UIDVALIDITY UIDNEXT)"))
    uidvalidity = re.search(rb"UIDVALIDITY (\d+)", status).group(1).decode()
    untagged, tagged = s.c("A142 SELECT INBOX")
    got = {u.split(b"]")[0] + b"]" if u.startswith(b"* OK [") else u.rstrip() for u in untagged}
    assert b"* 172 EXISTS" in got
    assert f"* OK [UIDVALIDITY {uidvalidity}]".encode() in got
    assert b"* OK [UIDNEXT 173]" in got
    flags = next(u for u in untagged if u.startswith(b"* FLAGS ("))
    assert {b"\\Answered", b"\\Flagged", b"\\Deleted", b"\\Seen", b"\\Draft"} <= set(
        flags[9:].rstrip().rstrip(b")").split()
    )
    permanent = next(u for u in untagged if u.startswith(b"* OK [PERMANENTFLAGS ("))
    assert b"\\*" in permanent and b"\\Deleted" in permanent and b"\\Seen" in permanent
    tagged_is(tagged, "A142 OK [READ-WRITE]")


def test_3501_6_3_1_select_in_imap4rev1_reports_recent(mailbox: Mailbox) -> None:
    """RFC 3501 6.3.1 (IMAP4rev1, which pimail also serves): SELECT answers
    '* n RECENT'; the first session to see new messages sees them \\Recent
    (RFC 3501 2.3.2), and the next one does not."""
    first = Session(mailbox, rev2=False)
    first.fill("INBOX", 3)
    untagged, _ = first.c("A142 SELECT INBOX")
    assert b"* 3 EXISTS\r\n" in untagged and b"* 3 RECENT\r\n" in untagged, untagged
    untagged, _ = first.c("A143 FETCH 1 FLAGS")
    assert b"\\Recent" in untagged[0], untagged
    first.close()
    second = Session(mailbox, rev2=False)
    untagged, _ = second.c("A144 SELECT INBOX")
    assert b"* 0 RECENT\r\n" in untagged, untagged
    second.close()


def test_6_3_3_examine(s: Session) -> None:
    s.fill("INBOX", 17)
    untagged, tagged = s.c("A932 EXAMINE blurdybloop")
    assert tagged.startswith(b"A932 NO"), tagged  # no such mailbox yet
    s.ok("CREATE blurdybloop")
    s.fill("blurdybloop", 17)
    untagged, tagged = s.c("A932 EXAMINE blurdybloop")
    assert b"* 17 EXISTS\r\n" in untagged
    assert any(u.startswith(b"* OK [PERMANENTFLAGS ()]") for u in untagged), untagged
    tagged_is(tagged, "A932 OK [READ-ONLY]")


def _names(untagged: list[bytes]) -> dict[bytes, bytes]:
    """LIST lines -> {mailbox name: attributes} (attribute order is free)."""
    out = {}
    for line in untagged:
        m = re.match(rb'\* LIST \(([^)]*)\) "/" "?([^"\r ]*)"?( \(.*\))?\r\n', line)
        if m:
            out[m.group(2)] = b" ".join(sorted(m.group(1).split()))
    return out


def test_6_3_4_create_with_trailing_delimiter(s: Session) -> None:
    """RFC 9051 6.3.4: 'CREATE owatagusiam/' declares a parent: the name is
    created without the trailing delimiter; CREATE INBOX is NO."""
    tagged_is(s.c("A003 CREATE owatagusiam/")[1], "A003 OK")
    tagged_is(s.c("A004 CREATE owatagusiam/blurdybloop")[1], "A004 OK")
    names = _names(s.c('A005 LIST "" "owatagusiam*"')[0])
    assert set(names) == {b"owatagusiam", b"owatagusiam/blurdybloop"}, names
    assert s.c("A006 CREATE INBOX")[1].startswith(b"A006 NO")


def test_6_3_5_delete(s: Session) -> None:
    """RFC 9051 6.3.5, second example: a mailbox with inferiors is deleted and
    keeps its name as \\Noselect; its inferiors stay."""
    for name in ("blurdybloop", "foo", "foo/bar"):
        s.ok(f"CREATE {name}")
    tagged_is(s.c("A683 DELETE blurdybloop")[1], "A683 OK")
    tagged_is(s.c("A684 DELETE foo")[1], "A684 OK")
    names = _names(s.c('A685 LIST "" *')[0])
    assert b"blurdybloop" not in names and b"foo/bar" in names and b"foo" not in names, names
    names = _names(s.c('A686 LIST "" %')[0])
    assert {b"\\Noselect", b"\\NonExistent"} & set(names.get(b"foo", b"").split()), names
    # RFC 9051 6.3.5, first example: deleting the \Noselect name with inferiors is NO.
    assert s.c("A686 DELETE foo")[1].startswith(b"A686 NO")


def test_6_3_6_rename(s: Session) -> None:
    """RFC 9051 6.3.6: renaming a parent renames its inferiors."""
    for name in ("blurdybloop", "foo", "foo/bar"):
        s.ok(f"CREATE {name}")
    tagged_is(s.c("A683 RENAME blurdybloop sarasoop")[1], "A683 OK")
    tagged_is(s.c("A684 RENAME foo zowie")[1], "A684 OK")
    names = _names(s.c('A685 LIST "" *')[0])
    assert {b"sarasoop", b"zowie", b"zowie/bar"} <= set(names), names
    assert not {b"blurdybloop", b"foo", b"foo/bar"} & set(names), names


def test_6_3_6_rename_inbox(s: Session) -> None:
    """RFC 9051 6.3.6: renaming INBOX moves its messages; INBOX stays, empty."""
    s.fill("INBOX", 3)
    tagged_is(s.c("A686 RENAME INBOX old-mail")[1], "A686 OK")
    status = b"".join(s.ok("STATUS INBOX (MESSAGES)") + s.ok("STATUS old-mail (MESSAGES)"))
    assert re.search(rb'INBOX"? \(MESSAGES 0\)', status), status
    assert re.search(rb'old-mail"? \(MESSAGES 3\)', status), status


def test_6_3_7_subscribe_6_3_8_unsubscribe(s: Session) -> None:
    s.ok("CREATE news")
    tagged_is(s.c("A002 SUBSCRIBE news")[1], "A002 OK")
    untagged, _ = s.c('A003 LIST (SUBSCRIBED) "" "news"')
    assert untagged and b"\\Subscribed" in untagged[0], untagged
    tagged_is(s.c("A004 UNSUBSCRIBE news")[1], "A004 OK")
    assert s.c('A005 LIST (SUBSCRIBED) "" "news"')[0] == []


def test_6_3_9_list_empty_pattern(s: Session) -> None:
    """RFC 9051 6.3.9: LIST "" "" gives the delimiter and root, exactly."""
    untagged, tagged = s.c('A101 LIST "" ""')
    assert untagged == lines('* LIST (\\Noselect) "/" ""')
    tagged_is(tagged, "A101 OK")


def test_6_3_10_and_2342_namespace(s: Session) -> None:
    untagged, tagged = s.c("A001 NAMESPACE")
    assert untagged == lines('* NAMESPACE (("" "/")) NIL NIL')
    tagged_is(tagged, "A001 OK")


def test_6_3_11_status(s: Session) -> None:
    """RFC 9051 6.3.11 (and RFC 8438 STATUS=SIZE, RFC 9051 DELETED)."""
    s.ok("CREATE blurdybloop")
    s.fill("blurdybloop", 5, {2: "\\Deleted"})
    untagged, tagged = s.c("A042 STATUS blurdybloop (UIDNEXT MESSAGES)")
    items = re.match(rb'\* STATUS "?blurdybloop"? \((.*)\)\r\n', untagged[0]).group(1).split()
    assert dict(zip(items[::2], items[1::2], strict=True)) == {b"UIDNEXT": b"6", b"MESSAGES": b"5"}
    tagged_is(tagged, "A042 OK")
    untagged, _ = s.c("A043 STATUS blurdybloop (DELETED SIZE)")
    sizes = b"".join(s.ok("EXAMINE blurdybloop") and s.ok("FETCH 1:* RFC822.SIZE"))
    total = sum(int(x) for x in re.findall(rb"RFC822.SIZE (\d+)", sizes))
    assert re.search(rb"DELETED 1\b", untagged[0]) and re.search(rb"SIZE %d\b" % total, untagged[0])


APPEND_EXAMPLE = (
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
    b"From: Fred Foobar <foobar@Blurdybloop.example>\r\n"
    b"Subject: afternoon meeting\r\n"
    b"To: mooch@owatagu.siam.edu.example\r\n"
    b"Message-Id: <B27397-0100000@Blurdybloop.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
    b"\r\n"
    b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n"
)


def test_6_3_12_append_and_4315_appenduid(s: Session) -> None:
    """RFC 9051 6.3.12 with a synchronizing literal: '+' then the octets;
    RFC 4315 3: APPENDUID <uidvalidity> <uid> in the tagged OK."""
    s.ok("CREATE saved-messages")
    s.send(b"A003 APPEND saved-messages (\\Seen) {%d}\r\n" % len(APPEND_EXAMPLE))
    assert s.line().startswith(b"+")
    s.send(APPEND_EXAMPLE + b"\r\n")
    untagged, tagged = s.until(b"A003")
    status = b"".join(s.ok("STATUS saved-messages (UIDVALIDITY)"))
    uidvalidity = re.search(rb"UIDVALIDITY (\d+)", status).group(1)
    tagged_is(tagged, f"A003 OK [APPENDUID {uidvalidity.decode()} 1]")
    s.ok("SELECT saved-messages")
    untagged, _ = s.c("A004 FETCH 1 (FLAGS BODY.PEEK[])")
    assert b"\\Seen" in untagged[0] and untagged[0].endswith(APPEND_EXAMPLE + b")\r\n")


def test_6_3_12_append_to_missing_mailbox_trycreate(s: Session) -> None:
    s.send(b"A003 APPEND no-such-box {%d+}\r\n" % len(APPEND_EXAMPLE) + APPEND_EXAMPLE + b"\r\n")
    tagged_is(s.until(b"A003")[1], "A003 NO [TRYCREATE]")


def test_6_3_13_and_2177_idle(mailbox: Mailbox) -> None:
    """RFC 2177 3 / RFC 9051 6.3.13: '+ idling', new mail as EXISTS while
    idling, another session's expunge as EXPUNGE, DONE ends it with OK."""
    s = Session(mailbox, rev2=False)
    s.fill("INBOX", 3)
    s.ok("SELECT INBOX")
    s.send(b"A002 IDLE\r\n")
    assert s.line().startswith(b"+ ")
    mailbox.deliver("new mail arrives")
    assert s.line() == b"* 4 EXISTS\r\n"
    s.send(b"DONE\r\n")
    tagged_is(s.until(b"A002")[1], "A002 OK")
    other = Session(mailbox, rev2=False)
    other.ok("SELECT INBOX")
    other.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    other.ok("EXPUNGE")
    s.send(b"A004 IDLE\r\n")
    seen = []
    while not (line := s.line()).startswith(b"+"):
        seen.append(line)
    if b"* 2 EXPUNGE\r\n" not in seen:  # RFC 2177: sent before or while idling
        seen.append(s.line())
    assert b"* 2 EXPUNGE\r\n" in seen, seen
    s.send(b"DONE\r\n")
    tagged_is(s.until(b"A004")[1], "A004 OK")
    other.close()
    s.close()


# -- RFC 9051 6.4: selected -------------------------------------------------------------------


def test_6_4_1_close_expunges_silently(s: Session) -> None:
    s.fill("INBOX", 3, {2: "\\Deleted"})
    s.ok("SELECT INBOX")
    untagged, tagged = s.c("A341 CLOSE")
    assert untagged == []  # RFC 9051 6.4.1: no untagged EXPUNGE
    tagged_is(tagged, "A341 OK")
    assert b"MESSAGES 2" in s.ok("STATUS INBOX (MESSAGES)")[0]


def test_6_4_2_unselect_keeps_deleted(s: Session) -> None:
    s.fill("INBOX", 3, {2: "\\Deleted"})
    s.ok("SELECT INBOX")
    untagged, tagged = s.c("A342 UNSELECT")
    assert untagged == []
    tagged_is(tagged, "A342 OK")
    assert b"MESSAGES 3" in s.ok("STATUS INBOX (MESSAGES)")[0]


def expunged(untagged: list[bytes], count: int) -> list[int]:
    """The messages (by their sequence number before) that a run of EXPUNGE
    responses removed. RFC 9051 7.5.1: each EXPUNGE renumbers the ones after
    it at once; the order of the responses is the server's choice (the RFC's
    examples send ascending, descending is as valid), so this is compared, not
    the lines."""
    alive = list(range(1, count + 1))
    gone = []
    for line in untagged:
        m = re.fullmatch(rb"\* (\d+) EXPUNGE\r\n", line)
        assert m, line
        gone.append(alive.pop(int(m.group(1)) - 1))
    return sorted(gone)


def test_6_4_3_expunge(s: Session) -> None:
    """RFC 9051 6.4.3: messages 3, 4, 7 and 11 had \\Deleted; the example's
    answer is '* 3 EXPUNGE', '* 3 EXPUNGE', '* 5 EXPUNGE', '* 8 EXPUNGE'."""
    s.fill("INBOX", 12, {3: "\\Deleted", 4: "\\Deleted", 7: "\\Deleted", 11: "\\Deleted"})
    s.ok("SELECT INBOX")
    untagged, tagged = s.c("A202 EXPUNGE")
    assert expunged(untagged, 12) == [3, 4, 7, 11], untagged
    tagged_is(tagged, "A202 OK")


def _search_mailbox(s: Session) -> None:
    """The state of the 6.4.4 examples: 11 messages, \\Flagged on 2, 10 and 11,
    one flagged message from Smith (5)."""
    for n in range(1, 12):
        sender = "Smith <smith@remote.test>" if n == 5 else "Ann <ann@remote.test>"
        flags = "\\Flagged" if n in (2, 5, 10, 11) else ""
        s.append("INBOX", message(n, sender=sender), flags, "02-Feb-1994 21:52:25 -0800")
    s.ok("SELECT INBOX")


def test_6_4_4_search_and_4731_esearch(s: Session) -> None:
    """RFC 9051 6.4.4 / RFC 4731 3: exactly these ESEARCH responses."""
    _search_mailbox(s)
    search = 'FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"'
    untagged, tagged = s.c(f"A282 SEARCH RETURN (MIN COUNT) {search}")
    assert untagged == lines('* ESEARCH (TAG "A282") MIN 2 COUNT 3')
    tagged_is(tagged, "A282 OK")
    untagged, _ = s.c(f"A283 SEARCH RETURN () {search}")
    assert untagged == lines('* ESEARCH (TAG "A283") ALL 2,10:11')
    untagged, _ = s.c("A285 UID SEARCH RETURN (MIN MAX) 1:5000")
    assert untagged == lines('* ESEARCH (TAG "A285") UID MIN 1 MAX 11')
    _, tagged = s.c('A286 SEARCH CHARSET WHATEVER TEXT "hello"')
    assert tagged.startswith(b"A286 NO [BADCHARSET"), tagged
    # RFC 9051 6.4.4 and 7.3.4: an IMAP4rev2 session gets ESEARCH even without
    # RETURN (the SEARCH response is IMAP4rev1's), here for no match at all.
    untagged, _ = s.c('A284 SEARCH TEXT "string not in mailbox"')
    assert untagged == lines('* ESEARCH (TAG "A284")')
    untagged, _ = s.c("A287 SEARCH FLAGGED")
    assert untagged == lines('* ESEARCH (TAG "A287") ALL 2,5,10:11')


def test_6_4_4_search_in_imap4rev1(mailbox: Mailbox) -> None:
    """RFC 3501 6.4.4 (an IMAP4rev1 session): the SEARCH response."""
    s = Session(mailbox, rev2=False)
    _search_mailbox(s)
    untagged, _ = s.c('A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"')
    assert untagged == lines("* SEARCH 2 10 11")
    s.close()


def test_6_4_4_search_substring(s: Session) -> None:
    """RFC 9051 6.4.4: 'the string is a substring of the field' - inside a word too."""
    s.append(
        "INBOX",
        message(1, subject="afternoon meeting"),
        "",
    )
    s.append("INBOX", message(2, body="Hello Joe, do you think we can meet at 3:30?\r\n"))
    s.ok("SELECT INBOX")
    wrong = []
    for key, needle, found in (
        ("SUBJECT", "noon", "1"), ("SUBJECT", "AFTERNOON MEET", "1"), ("BODY", "thin", "2"),
        ("TEXT", "eetin", "1"), ("BODY", "3:30", "2"), ("FROM", "xample", "1:2"),
        ("BODY", "you think", "2"), ("TEXT", "o Jo", "2"), ("SUBJECT", "ernoo", "1"),
    ):  # fmt: skip
        untagged, _ = s.c(f'A SEARCH RETURN (ALL) {key} "{needle}"')
        if untagged != lines(f'* ESEARCH (TAG "A") ALL {found}'):
            wrong.append((key, needle, untagged))
    assert not wrong, wrong


def test_5182_searchres(s: Session) -> None:
    """RFC 5182 2.4 example: SEARCH RETURN (SAVE), then FETCH $."""
    _search_mailbox(s)
    untagged, tagged = s.c('A282 SEARCH RETURN (SAVE) FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"')
    assert untagged == []  # SAVE alone: no ESEARCH response (RFC 5182 2.1)
    tagged_is(tagged, "A282 OK")
    untagged, tagged = s.c("A283 FETCH $ (UID FLAGS)")
    assert sorted(int(u.split()[1]) for u in untagged) == [2, 10, 11], untagged
    untagged, _ = s.c("A284 SEARCH RETURN (SAVE MIN) FROM Smith")
    assert untagged == lines('* ESEARCH (TAG "A284") MIN 5')
    untagged, _ = s.c("A285 UID SEARCH RETURN (ALL) UID $")
    assert untagged == lines('* ESEARCH (TAG "A285") UID ALL 5')


HEADER_FIELDS_RE = rb"BODY\[HEADER\.FIELDS \(DATE FROM\)\] \{(\d+)\}\r\n"


def test_6_4_5_fetch_header_fields(s: Session) -> None:
    """RFC 9051 6.4.5: 'FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])';
    the order of the data items in a FETCH response is free (compared by item)."""
    s.fill("INBOX", 4)
    s.ok("SELECT INBOX")
    untagged, tagged = s.c("A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])")
    assert [u.split()[1] for u in untagged] == [b"2", b"3", b"4"]
    for u in untagged:
        assert re.search(rb"FLAGS \(\\Seen\)", u), u  # BODY[] (not .PEEK) sets \Seen
        block = u[re.search(HEADER_FIELDS_RE, u).end() :]
        assert block.startswith(
            b"From: Ann Example <ann@remote.test>\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\n\r\n"
        ), block
    tagged_is(tagged, "A654 OK")


def test_7_5_2_fetch_envelope_and_body(s: Session) -> None:
    """RFC 9051 7.5.2 example: the ENVELOPE exactly as the RFC shows it, and
    BODY ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92) -
    type, subtype and parameter names are case-insensitive (RFC 2045 5.1), so
    compared without case."""
    body = (b"y" * 30 + b"\r\n") * 91
    body += b"z" * (3028 - len(body) - 2) + b"\r\n"
    assert len(body) == 3028 and body.count(b"\r\n") == 92
    data = (
        b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
        b"From: Terry Gray <gray@cac.washington.edu>\r\n"
        b"Subject: IMAP4rev2 WG mtg summary and minutes\r\n"
        b"To: imap@cac.washington.edu\r\n"
        b"cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\r\n"
        b"Message-Id: <B27397-0100000@cac.washington.edu>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\n" + body
    )
    s.append("INBOX", data, "\\Seen", "17-Jul-1996 02:44:25 -0700")
    s.ok("SELECT INBOX")
    untagged, _ = s.c("a FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY)")
    line = untagged[0]
    assert (
        b'ENVELOPE ("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev2 WG mtg summary and minutes"'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
        b' ((NIL NIL "imap" "cac.washington.edu"))'
        b' ((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU"))'
        b' NIL NIL "<B27397-0100000@cac.washington.edu>")'
    ) in line, line
    assert b'BODY ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92)' in line.upper()
    assert b"RFC822.SIZE %d" % len(data) in line
    assert b"FLAGS (\\Seen)" in line
    # The same instant as "17-Jul-1996 02:44:25 -0700", in any zone (RFC 9051 2.3.3).
    stamp = re.search(rb'INTERNALDATE "([^"]+)"', line).group(1).decode()
    assert time.mktime(time.strptime(stamp[:20], "%d-%b-%Y %H:%M:%S")) - _offset(stamp[21:]) == (
        time.mktime(time.strptime("17-Jul-1996 02:44:25", "%d-%b-%Y %H:%M:%S")) + 7 * 3600
    )


def _offset(zone: str) -> int:
    sign = -1 if zone[0] == "-" else 1
    return sign * (int(zone[1:3]) * 3600 + int(zone[3:5]) * 60)


def test_6_4_6_store(s: Session) -> None:
    """RFC 9051 6.4.6: the FETCH responses the example shows (flag order free)."""
    s.fill("INBOX", 4, {2: "\\Seen", 4: "\\Flagged \\Seen"})
    s.ok("SELECT INBOX")
    untagged, tagged = s.c("A003 STORE 2:4 +FLAGS (\\Deleted)")
    assert flag_sets(untagged) == {
        2: {b"\\Deleted", b"\\Seen"}, 3: {b"\\Deleted"}, 4: {b"\\Deleted", b"\\Flagged", b"\\Seen"}
    }  # fmt: skip
    tagged_is(tagged, "A003 OK")


def test_9051_7_3_5_flags_response_on_a_new_keyword(s: Session) -> None:
    """RFC 9051 7.3.5 / 6.3.2: FLAGS lists the flags in use; a STORE that adds
    a keyword not yet in it sends the new FLAGS (and PERMANENTFLAGS) first."""
    s.fill("INBOX", 1)
    s.ok("SELECT INBOX")
    untagged, tagged = s.c("A004 STORE 1 +FLAGS ($Forwarded NewKeyword)")
    flags = [u for u in untagged if u.startswith(b"* FLAGS (")]
    assert flags and b"NewKeyword" in flags[0] and b"$Forwarded" in flags[0], untagged
    tagged_is(tagged, "A004 OK")


def test_6_4_7_copy_and_4315_copyuid(s: Session) -> None:
    s.fill("INBOX", 4)
    s.ok("CREATE meeting")
    s.ok("SELECT INBOX")
    status = b"".join(s.ok("STATUS meeting (UIDVALIDITY)"))
    uidvalidity = re.search(rb"UIDVALIDITY (\d+)", status).group(1).decode()
    _, tagged = s.c("A003 COPY 2:4 meeting")
    tagged_is(tagged, f"A003 OK [COPYUID {uidvalidity} 2:4 1:3]")
    _, tagged = s.c("A006 COPY 2 funny")
    tagged_is(tagged, "A006 NO [TRYCREATE]")  # RFC 4315 3 example / RFC 9051 6.4.7


def test_6_4_8_and_6851_move(s: Session) -> None:
    """RFC 6851 4.4 example: COPYUID in an untagged OK before the EXPUNGEs."""
    s.fill("INBOX", 5)
    s.ok("CREATE foo")
    s.ok("SELECT INBOX")
    status = b"".join(s.ok("STATUS foo (UIDVALIDITY)"))
    uidvalidity = re.search(rb"UIDVALIDITY (\d+)", status).group(1).decode()
    untagged, tagged = s.c("a UID MOVE 2:4 foo")
    assert untagged[0].startswith(f"* OK [COPYUID {uidvalidity} 2:4 1:3]".encode()), untagged
    assert expunged(untagged[1:], 5) == [2, 3, 4], untagged
    tagged_is(tagged, "a OK")


def test_4315_uid_expunge(s: Session) -> None:
    """RFC 4315 2.1 example: UID EXPUNGE 3:5 expunges only those (3 and 5 here,
    which are \\Deleted; 6 is \\Deleted too but not named)."""
    s.fill("INBOX", 6, {3: "\\Deleted", 4: "\\Deleted", 5: "\\Deleted", 6: "\\Deleted"})
    s.ok("SELECT INBOX")
    untagged, tagged = s.c("A003 UID EXPUNGE 3:5")
    assert expunged(untagged, 6) == [3, 4, 5], untagged
    tagged_is(tagged, "A003 OK")
    assert b"MESSAGES 3" in s.ok("STATUS INBOX (MESSAGES)")[0]


def test_6_4_9_uid_fetch(s: Session) -> None:
    s.fill("INBOX", 5)
    s.ok("SELECT INBOX")
    untagged, tagged = s.c("A999 UID FETCH 2:4 FLAGS")
    assert [re.search(rb"UID (\d+)", u).group(1) for u in untagged] == [b"2", b"3", b"4"]
    assert [u.split()[1] for u in untagged] == [b"2", b"3", b"4"]
    tagged_is(tagged, "A999 OK")


# -- RFC 7162 CONDSTORE / QRESYNC ------------------------------------------------------------


def _modseqs(untagged: list[bytes]) -> dict[int, int]:
    return {int(m.group(1)): int(m.group(2)) for u in untagged
            if (m := re.match(rb"\* (\d+) FETCH \(.*MODSEQ \((\d+)\)", u))}  # fmt: skip


def test_7162_3_1_3_store_unchangedsince_modified(s: Session) -> None:
    """RFC 7162 3.1.3 example: 'STORE 7,5,9 (UNCHANGEDSINCE m) +FLAGS.SILENT
    (\\Deleted)' after 7 and 9 changed: 5 is stored (its MODSEQ sent),
    OK [MODIFIED 7,9]."""
    s.fill("INBOX", 9)
    s.ok("SELECT INBOX (CONDSTORE)")
    before = max(_modseqs(s.ok("FETCH 1:* (MODSEQ)")).values())
    s.ok("STORE 7,9 +FLAGS.SILENT (\\Flagged)")
    untagged, tagged = s.c(f"d105 STORE 7,5,9 (UNCHANGEDSINCE {before}) +FLAGS.SILENT (\\Deleted)")
    assert list(_modseqs(untagged)) == [5], untagged
    tagged_is(tagged, "d105 OK [MODIFIED 7,9]")


def test_7162_3_1_4_fetch_changedsince(s: Session) -> None:
    s.fill("INBOX", 5)
    s.ok("SELECT INBOX (CONDSTORE)")
    before = max(_modseqs(s.ok("FETCH 1:* (MODSEQ)")).values())
    s.ok("STORE 2,4 +FLAGS.SILENT (\\Seen)")
    untagged, tagged = s.c(f"s100 UID FETCH 1:* (FLAGS) (CHANGEDSINCE {before})")
    assert sorted(_modseqs(untagged)) == [2, 4], untagged
    assert all(re.search(rb"UID \d+", u) and b"FLAGS (\\Seen)" in u for u in untagged)
    tagged_is(tagged, "s100 OK")


def test_7162_3_1_5_search_modseq(s: Session) -> None:
    """RFC 7162 3.1.5: SEARCH MODSEQ; the ESEARCH answer carries MODSEQ (the
    highest of the found messages)."""
    s.fill("INBOX", 4)
    s.ok("SELECT INBOX (CONDSTORE)")
    before = max(_modseqs(s.ok("FETCH 1:* (MODSEQ)")).values())
    modseqs = _modseqs(s.ok("STORE 2,3 +FLAGS (\\Draft)"))
    untagged, tagged = s.c(f'a SEARCH RETURN (ALL) MODSEQ "/flags/\\\\draft" all {before + 1}')
    assert untagged == lines(f'* ESEARCH (TAG "a") ALL 2:3 MODSEQ {max(modseqs.values())}')
    tagged_is(tagged, "a OK")


def test_7162_3_2_qresync_select_and_vanished(mailbox: Mailbox) -> None:
    """RFC 7162 3.2.5 / 3.2.10: SELECT (QRESYNC ...) reports what vanished since
    as VANISHED (EARLIER); with QRESYNC on, EXPUNGE answers VANISHED <uids>."""
    s = Session(mailbox)
    s.fill("INBOX", 6)
    assert s.ok("ENABLE QRESYNC") == lines("* ENABLED QRESYNC")
    untagged = s.ok("SELECT INBOX")
    uidvalidity = re.search(rb"UIDVALIDITY (\d+)", b"".join(untagged)).group(1).decode()
    modseq = int(re.search(rb"HIGHESTMODSEQ (\d+)", b"".join(untagged)).group(1))
    s.ok("STORE 2,3 +FLAGS.SILENT (\\Deleted)")
    untagged, tagged = s.c("A202 EXPUNGE")
    assert untagged == lines("* VANISHED 2:3"), untagged
    tagged_is(tagged, "A202 OK")
    s.close()
    s = Session(mailbox)
    s.ok("ENABLE QRESYNC")
    untagged, tagged = s.c(f"A02 SELECT INBOX (QRESYNC ({uidvalidity} {modseq} 1:6))")
    assert b"* VANISHED (EARLIER) 2:3\r\n" in untagged, untagged
    tagged_is(tagged, "A02 OK [READ-WRITE]")
    s.close()


# -- RFC 6154 SPECIAL-USE, RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS ---------------------


def test_6154_list_special_use(s: Session) -> None:
    """RFC 6154 5.1/5.2: RETURN (SPECIAL-USE) and the (SPECIAL-USE) selection."""
    untagged, tagged = s.c('t1 LIST "" "%" RETURN (SPECIAL-USE)')
    names = _names(untagged)
    assert b"\\Sent" in names.get(b"Sent", b"") and b"\\Drafts" in names.get(b"Drafts", b"")
    tagged_is(tagged, "t1 OK")
    untagged, _ = s.c('t2 LIST (SPECIAL-USE) "" "*"')
    assert b"INBOX" not in _names(untagged) and b"Sent" in _names(untagged), untagged
    # RFC 6154 5.3: CREATE-SPECIAL-USE
    s.ok("DELETE Archive")  # one \\Archive at a time is the server's choice
    tagged_is(s.c("t3 CREATE MySpecial (USE (\\Archive))")[1], "t3 OK")
    assert b"\\Archive" in _names(s.c('t4 LIST "" MySpecial RETURN (SPECIAL-USE)')[0])[b"MySpecial"]
    assert s.c("t5 CREATE Other (USE (\\Frobnicate))")[1].startswith(b"t5 NO [USEATTR]")


def _fruit(s: Session) -> None:
    """RFC 5258 5: the Fruit / Vegetable hierarchy of the examples."""
    for name in ("Fruit", "Fruit/Apple", "Fruit/Banana", "Fruit/Peach", "Tofu", "Vegetable",
                 "Vegetable/Broccoli", "Vegetable/Corn"):  # fmt: skip
        s.ok(f"CREATE {name}")
    # pimail subscribes what CREATE makes (RFC 9051 leaves that open): the
    # example's subscriptions are set explicitly.
    for name in ("Fruit", "Fruit/Apple", "Tofu", "Vegetable/Corn"):
        s.ok(f"UNSUBSCRIBE {name}")
    for name in ("Fruit/Banana", "Fruit/Peach", "Vegetable", "Vegetable/Broccoli"):
        s.ok(f"SUBSCRIBE {name}")


def test_5258_list_extended_children_and_subscribed(s: Session) -> None:
    """RFC 5258 5 examples: RETURN (CHILDREN), (SUBSCRIBED), and RECURSIVEMATCH
    with CHILDINFO (attribute order free, compared as sets)."""
    _fruit(s)
    names = _names(s.c('A03 LIST () "" % RETURN (CHILDREN)')[0])
    assert names[b"Fruit"] == b"\\HasChildren" and names[b"Tofu"] == b"\\HasNoChildren", names
    untagged, tagged = s.c('A04 LIST (SUBSCRIBED) "" "*"')
    assert set(_names(untagged)) == {b"Fruit/Banana", b"Fruit/Peach", b"Vegetable",
                                     b"Vegetable/Broccoli"}  # fmt: skip
    tagged_is(tagged, "A04 OK")
    untagged, _ = s.c('A05 LIST (SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (SUBSCRIBED)')
    assert set(_names(untagged)) == {b"Fruit", b"Vegetable"}, untagged
    fruit = next(u for u in untagged if b'"Fruit"' in u or u.rstrip().endswith(b" Fruit"))
    assert b'("CHILDINFO" ("SUBSCRIBED"))' in fruit, fruit
    untagged, _ = s.c('A06 LIST "" ("Fruit" "Vegetable/%")')  # several patterns
    assert set(_names(untagged)) == {b"Fruit", b"Vegetable/Broccoli", b"Vegetable/Corn"}


def test_5819_list_status(s: Session) -> None:
    """RFC 5819 5: each STATUS right after its LIST; none for a \\Noselect name."""
    s.fill("INBOX", 3, {1: "\\Seen"})
    s.ok("CREATE foo")
    s.fill("foo", 2)
    untagged, tagged = s.c('A01 LIST "" % RETURN (STATUS (MESSAGES UNSEEN))')
    for i, line in enumerate(untagged):
        if line.startswith(b"* STATUS "):
            name = line.split(b" (")[0][len(b"* STATUS ") :]
            assert untagged[i - 1].rstrip().endswith(b" " + name), (untagged[i - 1], line)
    statuses = {line.split(b" (")[0].replace(b'"', b""): line.split(b" (", 1)[1]
                for line in untagged if line.startswith(b"* STATUS ")}  # fmt: skip
    assert statuses[b"* STATUS INBOX"] == b"MESSAGES 3 UNSEEN 2)\r\n", untagged
    assert statuses[b"* STATUS foo"] == b"MESSAGES 2 UNSEEN 2)\r\n", untagged
    tagged_is(tagged, "A01 OK")


# -- RFC 3516 BINARY, RFC 9208 QUOTA ------------------------------------------------------------

BINARY_MESSAGE = (
    b"From: a@remote.test\r\nSubject: binary\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
    b"\r\n\r\ncaf=C3=A9 soft=\r\nbreak  \r\nline two\r\n--b\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"AAECAwD/\r\n--b\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: binary\r\n\r\nx\x00y\r\n--b--\r\n"
)


def test_3516_binary_fetch_and_size(s: Session) -> None:
    """RFC 3516 4.1/4.2 (and RFC 9051 6.4.5): BINARY[n] is the part decoded,
    literal8 (~{n}) when it has NUL; BINARY.SIZE the decoded size. The
    message itself goes in as literal8 (RFC 3516 4.4: APPEND takes NUL there)."""
    s.send(b"A003 APPEND INBOX ~{%d+}\r\n" % len(BINARY_MESSAGE) + BINARY_MESSAGE + b"\r\n")
    tagged_is(s.until(b"A003")[1], "A003 OK [APPENDUID")
    s.ok("SELECT INBOX")
    expected = {
        b"1": b"caf\xc3\xa9 softbreak\r\nline two",  # RFC 2045 6.7: soft break, padding dropped
        b"2": b"\x00\x01\x02\x03\x00\xff",
        b"3": b"x\x00y",
    }
    wrong = []
    for part, want in expected.items():
        untagged, tagged = s.c(b"A004 FETCH 1 (BINARY.PEEK[%s] BINARY.SIZE[%s])" % (part, part))
        tagged_is(tagged, "A004 OK")
        line = untagged[0]
        prefix = b"~{%d}\r\n" % len(want) if b"\x00" in want else b"{%d}\r\n" % len(want)
        if b"BINARY[%s] %s%s" % (part, prefix, want) not in line:
            wrong.append(line)
        if b"BINARY.SIZE[%s] %d" % (part, len(want)) not in line:
            wrong.append(line)
    assert not wrong, wrong


def test_3516_unknown_cte(s: Session) -> None:
    s.append("INBOX", b"Subject: x\r\nContent-Transfer-Encoding: x-frob\r\n\r\nzzz\r\n")
    s.ok("SELECT INBOX")
    _, tagged = s.c("A005 FETCH 1 (BINARY[1])")
    tagged_is(tagged, "A005 NO [UNKNOWN-CTE]")


def test_9051_4_3_nul_in_literal_is_refused(s: Session) -> None:
    """RFC 9051 9: literal = "{" number64 ["+"] "}" CRLF *CHAR8 - CHAR8 has no NUL
    (RFC 3516 4.4: a client sends such a message as literal8)."""
    data = b"Subject: nul\r\n\r\na\x00b\r\n"
    s.send(b"A006 APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n")
    _, tagged = s.until(b"A006")
    assert tagged.startswith(b"A006 BAD") or tagged.startswith(b"A006 NO"), tagged
    assert b"MESSAGES 0" in s.ok("STATUS INBOX (MESSAGES)")[0]


def test_9208_quota(mailbox: Mailbox, s: Session) -> None:
    """RFC 9208 4.3.2 example shape: QUOTAROOT then QUOTA of each root, STORAGE
    in units of 1024 octets, usage the sum of the message sizes (rounded up)."""
    mailbox.server.cli("user", "quota", mailbox.address, "10M")
    s.fill("INBOX", 3)
    sizes = b"".join(s.ok("EXAMINE INBOX") and s.ok("FETCH 1:* RFC822.SIZE"))
    total = sum(int(x) for x in re.findall(rb"RFC822.SIZE (\d+)", sizes))
    untagged, tagged = s.c("G0002 GETQUOTAROOT INBOX")
    quotaroot = re.match(rb'\* QUOTAROOT (INBOX|"INBOX") (\S+)\r\n', untagged[0])
    assert quotaroot, untagged
    root = quotaroot.group(2)
    quota = re.match(rb"\* QUOTA (\S+) \(STORAGE (\d+) (\d+)\)\r\n", untagged[1])
    assert quota and quota.group(1) == root, untagged
    assert int(quota.group(2)) == -(-total // 1024), (quota.group(2), total)
    assert int(quota.group(3)) == 10 * 1024
    tagged_is(tagged, "G0002 OK")
    quota_line = untagged[1]
    untagged, tagged = s.c(f"G0001 GETQUOTA {root.decode()}")
    assert untagged == [quota_line]
    tagged_is(tagged, "G0001 OK")
