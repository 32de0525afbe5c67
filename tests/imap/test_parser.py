"""The IMAP command parser without I/O: grammar tables, framing, limits, properties.

No sockets here: bytes go into `Parser.receive_data` and events come out.
"""

from __future__ import annotations

import string
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pimail.imap.events import (
    Append,
    Authenticate,
    AuthenticateCancel,
    AuthenticateResponse,
    Capability,
    Check,
    Close,
    Command,
    Copy,
    Create,
    Delete,
    Enable,
    Expunge,
    Fetch,
    FetchAttribute,
    GetQuota,
    GetQuotaRoot,
    Id,
    Idle,
    IdleDone,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    NeedContinuation,
    Noop,
    QResync,
    Rename,
    Search,
    Select,
    StartTLS,
    Status,
    Store,
    Subscribe,
    Unselect,
    Unsubscribe,
)
from pimail.imap.grammar import SeqRange, SequenceSet, decode_mailbox, encode_mailbox, seq
from pimail.imap.parser import PRELOGIN, LiteralTooLarge, Mode, ParseError, Parser, literal_marker
from pimail.imap.searchkey import (
    SearchAge,
    SearchAll,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchModseq,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchSize,
    SearchText,
)
from pimail.mime.section import Partial, Section

# -- helpers -------------------------------------------------------------------------


def drain(parser: Parser) -> list[object]:
    """Every event (and ParseError) the parser has ready."""
    out: list[object] = []
    while True:
        try:
            event = parser.next_event()
        except ParseError as exc:
            out.append(exc)
            continue
        if event is None:
            return out
        out.append(event)


def run(wire: bytes, parser: Parser | None = None) -> list[object]:
    """Feed `wire` at once; return the events, continuations left out."""
    parser = parser or Parser()
    parser.receive_data(wire)
    return [e for e in drain(parser) if not isinstance(e, NeedContinuation)]


def one(wire: bytes, **kwargs: object) -> object:
    events = run(wire, Parser(**kwargs))  # type: ignore[arg-type]
    assert len(events) == 1, events
    return events[0]


def error(wire: bytes, **kwargs: object) -> ParseError:
    result = one(wire, **kwargs)
    assert isinstance(result, ParseError), result
    return result


TZ1 = timezone(timedelta(hours=1))


def fa(name: str, section: Section | None = None, **kw: object) -> FetchAttribute:
    return FetchAttribute(name, section, **kw)  # type: ignore[arg-type]


# -- commands: wire form -> record -------------------------------------------------------

COMMAND_TABLE: list[tuple[bytes, Command]] = [
    # RFC 9051 6.1 / 6.2
    (b"a CAPABILITY", Capability("a")),
    (b"a noop", Noop("a")),
    (b"a LOGOUT", Logout("a")),
    (b"a StartTLS", StartTLS("a")),
    (b"a LOGIN joe secret", Login("a", "joe", "secret")),
    (b'a LOGIN "jo e" "p\\"a\\\\ss"', Login("a", "jo e", 'p"a\\ss')),
    (b"a LOGIN {3}\r\njoe {6+}\r\nsecret", Login("a", "joe", "secret")),
    ('a LOGIN "jörg" "pässword"'.encode(), Login("a", "jörg", "pässword")),
    (b"a LOGIN user pass]word", Login("a", "user", "pass]word")),
    (b"a AUTHENTICATE PLAIN", Authenticate("a", "PLAIN")),
    (b"a authenticate plain =", Authenticate("a", "PLAIN", b"")),
    (b"a AUTHENTICATE PLAIN AGpvZQBzZWNyZXQ=", Authenticate("a", "PLAIN", b"\0joe\0secret")),
    (b"a AUTHENTICATE SCRAM-SHA-256", Authenticate("a", "SCRAM-SHA-256")),
    (b"a ID NIL", Id("a", None)),
    (b"a ID ()", Id("a", ())),
    (
        b'a ID ("name" "Thunderbird" "version" NIL)',
        Id("a", (("name", "Thunderbird"), ("version", None))),
    ),
    # RFC 9051 6.3
    (b"a ENABLE IMAP4rev2", Enable("a", ("IMAP4REV2",))),
    (b"a ENABLE CONDSTORE utf8=accept", Enable("a", ("CONDSTORE", "UTF8=ACCEPT"))),
    (b"a SELECT INBOX", Select("a", "INBOX")),
    (b"a SELECT inbox", Select("a", "INBOX")),
    (b'a SELECT "Inbox"', Select("a", "INBOX")),
    (b"a SELECT INBOX.Sent", Select("a", "INBOX.Sent")),
    (b"a EXAMINE Archive", Select("a", "Archive", readonly=True)),
    (b"a SELECT INBOX (CONDSTORE)", Select("a", "INBOX", condstore=True)),
    (
        b"a SELECT INBOX (QRESYNC (67890007 20050715194045000))",
        Select("a", "INBOX", qresync=QResync(67890007, 20050715194045000)),
    ),
    (
        b"a SELECT INBOX (QRESYNC (67890007 90060115194045000 41,43:211,214:541))",
        Select(
            "a", "INBOX", qresync=QResync(67890007, 90060115194045000, seq("41,43:211,214:541"))
        ),
    ),
    (
        b"a EXAMINE INBOX (QRESYNC (67890007 90060115194045000 1:29997 "
        b"(5000,7500,9000,9990:9999 15000,22500,27000,29970,29973,29976,29979:29997)))",
        Select(
            "a",
            "INBOX",
            readonly=True,
            qresync=QResync(
                67890007,
                90060115194045000,
                seq("1:29997"),
                (
                    seq("5000,7500,9000,9990:9999"),
                    seq("15000,22500,27000,29970,29973,29976,29979:29997"),
                ),
            ),
        ),
    ),
    (
        b"a SELECT INBOX (CONDSTORE QRESYNC (1 2 (1 3)))",
        Select("a", "INBOX", condstore=True, qresync=QResync(1, 2, None, (seq("1"), seq("3")))),
    ),
    (b"a CREATE Projects/2024", Create("a", "Projects/2024")),
    (b"a CREATE Trash (USE (\\trash))", Create("a", "Trash", ("\\Trash",))),
    (
        b"a CREATE MySpecial (USE (\\Drafts \\Sent \\X-Custom))",
        Create("a", "MySpecial", ("\\Drafts", "\\Sent", "\\X-Custom")),
    ),
    (b"a DELETE foo", Delete("a", "foo")),
    (b"a RENAME foo bar", Rename("a", "foo", "bar")),
    (b"a RENAME foo {3}\r\nbar", Rename("a", "foo", "bar")),
    (b"a RENAME INBOX Old-Inbox", Rename("a", "INBOX", "Old-Inbox")),
    (b"a SUBSCRIBE news", Subscribe("a", "news")),
    (b"a UNSUBSCRIBE news", Unsubscribe("a", "news")),
    (b'a LIST "" *', List("a", "", ("*",))),
    (b'a LIST "" %', List("a", "", ("%",))),
    (b"a LIST ~/Mail/ %/foo*]", List("a", "~/Mail/", ("%/foo*]",))),
    (b'a LIST "" ""', List("a", "", ("",))),
    (b"a LIST inbox *", List("a", "inbox", ("*",))),
    (
        b'a LIST (SUBSCRIBED) "" "*"',
        List("a", "", ("*",), selection=frozenset({"SUBSCRIBED"})),
    ),
    (
        b'a LIST (REMOTE subscribed RECURSIVEMATCH) "" ("%" "Archive/*")',
        List("a", "", ("%", "Archive/*"), frozenset({"REMOTE", "SUBSCRIBED", "RECURSIVEMATCH"})),
    ),
    (b'a LIST () "" %', List("a", "", ("%",))),
    (
        b'a LIST (SPECIAL-USE) "" * RETURN (SPECIAL-USE)',
        List("a", "", ("*",), frozenset({"SPECIAL-USE"}), frozenset({"SPECIAL-USE"})),
    ),
    (
        b'a LIST "" % RETURN (CHILDREN SUBSCRIBED STATUS (MESSAGES UNSEEN SIZE))',
        List(
            "a",
            "",
            ("%",),
            return_options=frozenset({"CHILDREN", "SUBSCRIBED", "STATUS"}),
            status_items=("MESSAGES", "UNSEEN", "SIZE"),
        ),
    ),
    (b'a LIST "" % RETURN ()', List("a", "", ("%",))),
    (b'a LSUB "" *', Lsub("a", "", "*")),
    (b"a NAMESPACE", Namespace("a")),
    (
        b"a STATUS blurdybloop (UIDNEXT MESSAGES)",
        Status("a", "blurdybloop", ("UIDNEXT", "MESSAGES")),
    ),
    (
        b"a STATUS INBOX (messages uidnext uidvalidity unseen deleted size recent highestmodseq)",
        Status(
            "a",
            "INBOX",
            (
                "MESSAGES",
                "UIDNEXT",
                "UIDVALIDITY",
                "UNSEEN",
                "DELETED",
                "SIZE",
                "RECENT",
                "HIGHESTMODSEQ",
            ),
        ),
    ),
    (b"a APPEND saved-messages {5}\r\nhello", Append("a", "saved-messages", b"hello")),
    (b"a APPEND Drafts {0+}\r\n", Append("a", "Drafts", b"")),
    (
        b'a APPEND Drafts (\\Seen \\draft $Forwarded) "05-Jan-2024 10:00:00 +0100" {3+}\r\nabc',
        Append(
            "a",
            "Drafts",
            b"abc",
            ("\\Seen", "\\Draft", "$Forwarded"),
            datetime(2024, 1, 5, 10, tzinfo=TZ1),
        ),
    ),
    (
        b'a APPEND Drafts " 5-Jan-2024 23:59:59 -0330" {3}\r\nabc',
        Append(
            "a",
            "Drafts",
            b"abc",
            internal_date=datetime(
                2024, 1, 5, 23, 59, 59, tzinfo=timezone(-timedelta(hours=3, minutes=30))
            ),
        ),
    ),
    (b"a APPEND Drafts () {1}\r\nx", Append("a", "Drafts", b"x")),
    (b"a APPEND INBOX ~{3}\r\na\0b", Append("a", "INBOX", b"a\0b", binary=True)),
    (b"a APPEND {5}\r\nINBOX {2+}\r\nhi", Append("a", "INBOX", b"hi")),
    (b"a IDLE", Idle("a")),
    (b'a GETQUOTA ""', GetQuota("a", "")),
    (b"a GETQUOTAROOT INBOX", GetQuotaRoot("a", "INBOX")),
    # RFC 9051 6.4
    (b"a CHECK", Check("a")),
    (b"a CLOSE", Close("a")),
    (b"a UNSELECT", Unselect("a")),
    (b"a EXPUNGE", Expunge("a")),
    (b"a UID EXPUNGE 3000:3002", Expunge("a", seq("3000:3002"))),
    (b"a COPY 2:4 MEETING", Copy("a", seq("2:4"), "MEETING")),
    (b"a UID COPY 2:4 MEETING", Copy("a", seq("2:4"), "MEETING", uid=True)),
    (b"a MOVE $ Trash", Move("a", SequenceSet(saved=True), "Trash")),
    (b"a uid move 1:* {5}\r\nTrash", Move("a", seq("1:*"), "Trash", uid=True)),
    (
        b"a STORE 2:4 +FLAGS (\\Deleted)",
        Store("a", seq("2:4"), "add", ("\\Deleted",)),
    ),
    (
        b"a STORE 1 -flags.silent \\Seen $Junk",
        Store("a", seq("1"), "remove", ("\\Seen", "$Junk"), silent=True),
    ),
    (b"a STORE 1 FLAGS ()", Store("a", seq("1"), "replace", ())),
    (
        b"a UID STORE 1,3 (UNCHANGEDSINCE 12121230045) FLAGS.SILENT (\\Seen)",
        Store("a", seq("1,3"), "replace", ("\\Seen",), True, True, 12121230045),
    ),
    (
        b"a STORE 7 (UNCHANGEDSINCE 0) +FLAGS x",
        Store("a", seq("7"), "add", ("x",), False, False, 0),
    ),
]


@pytest.mark.parametrize(("wire", "expected"), COMMAND_TABLE, ids=lambda x: repr(x)[:60])
def test_command(wire: bytes, expected: Command) -> None:
    assert one(wire + b"\r\n") == expected


# -- FETCH ----------------------------------------------------------------------------------

FETCH_TABLE: list[tuple[bytes, tuple[FetchAttribute, ...]]] = [
    (b"FLAGS", (fa("FLAGS"),)),
    (b"ALL", (fa("FLAGS"), fa("INTERNALDATE"), fa("RFC822.SIZE"), fa("ENVELOPE"))),
    (b"fast", (fa("FLAGS"), fa("INTERNALDATE"), fa("RFC822.SIZE"))),
    (b"FULL", (fa("FLAGS"), fa("INTERNALDATE"), fa("RFC822.SIZE"), fa("ENVELOPE"), fa("BODY"))),
    (
        b"(uid rfc822.size internaldate envelope bodystructure body modseq)",
        tuple(
            fa(n)
            for n in (
                "UID",
                "RFC822.SIZE",
                "INTERNALDATE",
                "ENVELOPE",
                "BODYSTRUCTURE",
                "BODY",
                "MODSEQ",
            )
        ),
    ),
    (b"(RFC822 RFC822.HEADER RFC822.TEXT)", (fa("RFC822"), fa("RFC822.HEADER"), fa("RFC822.TEXT"))),
    (b"BODY[]", (fa("BODY", Section()),)),
    (b"BODY.PEEK[]", (fa("BODY", Section(), peek=True),)),
    (b"body[text]", (fa("BODY", Section(text="TEXT")),)),
    (b"BODY[HEADER]<0.1024>", (fa("BODY", Section(text="HEADER"), partial=Partial(0, 1024)),)),
    (
        b"BODY.PEEK[HEADER.FIELDS (DATE FROM Subject)]",
        (fa("BODY", Section(text="HEADER.FIELDS", fields=("DATE", "FROM", "SUBJECT")), peek=True),),
    ),
    (
        b'BODY[header.fields.not (X-Spam "Received")]',
        (fa("BODY", Section(text="HEADER.FIELDS.NOT", fields=("X-SPAM", "RECEIVED"))),),
    ),
    (b"BODY[1]", (fa("BODY", Section((1,))),)),
    (b"BODY[4.2.2.1]<10.20>", (fa("BODY", Section((4, 2, 2, 1)), partial=Partial(10, 20)),)),
    (b"BODY[3.MIME]", (fa("BODY", Section((3,), "MIME")),)),
    (b"BODY[1.2.HEADER]", (fa("BODY", Section((1, 2), "HEADER")),)),
    (b"BODY[2.TEXT]", (fa("BODY", Section((2,), "TEXT")),)),
    (
        b"BODY[2.HEADER.FIELDS (To)]",
        (fa("BODY", Section((2,), "HEADER.FIELDS", ("TO",))),),
    ),
    (b"BINARY[]", (fa("BINARY", Section()),)),
    (
        b"BINARY.PEEK[1.2]<0.100>",
        (fa("BINARY", Section((1, 2)), partial=Partial(0, 100), peek=True),),
    ),
    (b"BINARY.SIZE[3]", (fa("BINARY.SIZE", Section((3,))),)),
    (b"(FLAGS BODY[])", (fa("FLAGS"), fa("BODY", Section()))),
]


@pytest.mark.parametrize(("items", "expected"), FETCH_TABLE, ids=lambda x: repr(x)[:50])
def test_fetch_attributes(items: bytes, expected: tuple[FetchAttribute, ...]) -> None:
    assert one(b"t FETCH 1:* " + items + b"\r\n") == Fetch("t", seq("1:*"), expected)


def test_fetch_modifiers() -> None:
    # RFC 7162 3.1.4 and 3.2.6
    assert one(b"t FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)\r\n") == Fetch(
        "t", seq("1:*"), (fa("FLAGS"),), changedsince=12345
    )
    assert one(b"t UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n") == Fetch(
        "t", seq("300:500"), (fa("FLAGS"),), uid=True, changedsince=12345, vanished=True
    )
    assert "VANISHED" in error(b"t FETCH 1 FLAGS (CHANGEDSINCE 1 VANISHED)\r\n").message
    assert "VANISHED" in error(b"t UID FETCH 1 FLAGS (VANISHED)\r\n").message


def test_fetch_response_names() -> None:
    fetch = one(
        b"t FETCH 1 (BODY.PEEK[1.2.HEADER.FIELDS (From To)]<0.10> BINARY[1] "
        b"BINARY.SIZE[] BODY[] FLAGS RFC822)\r\n"
    )
    assert isinstance(fetch, Fetch)
    assert [a.response_name() for a in fetch.attributes] == [
        "BODY[1.2.HEADER.FIELDS (FROM TO)]<0>",
        "BINARY[1]",
        "BINARY.SIZE[]",
        "BODY[]",
        "FLAGS",
        "RFC822",
    ]


# -- SEARCH ------------------------------------------------------------------------------

SEEN = SearchFlag("\\Seen")

SEARCH_TABLE: list[tuple[bytes, SearchKey]] = [
    (b"ALL", SearchAll()),
    (b"answered", SearchFlag("\\Answered")),
    (b"UNANSWERED", SearchFlag("\\Answered", False)),
    (b"DELETED UNDELETED", SearchAnd((SearchFlag("\\Deleted"), SearchFlag("\\Deleted", False)))),
    (b"DRAFT", SearchFlag("\\Draft")),
    (b"UNDRAFT", SearchFlag("\\Draft", False)),
    (b"FLAGGED", SearchFlag("\\Flagged")),
    (b"UNFLAGGED", SearchFlag("\\Flagged", False)),
    (b"SEEN", SEEN),
    (b"UNSEEN", SearchFlag("\\Seen", False)),
    (b"RECENT", SearchFlag("\\Recent")),
    (b"OLD", SearchFlag("\\Recent", False)),
    (b"NEW", SearchAnd((SearchFlag("\\Recent"), SearchFlag("\\Seen", False)))),
    (b"KEYWORD $Forwarded", SearchFlag("$Forwarded")),
    (b"UNKEYWORD $Junk", SearchFlag("$Junk", False)),
    (b"FROM Smith", SearchHeader("From", "Smith")),
    (b'TO "joe@example.org"', SearchHeader("To", "joe@example.org")),
    (b"CC {3}\r\nabc", SearchHeader("Cc", "abc")),
    (b"BCC x", SearchHeader("Bcc", "x")),
    (b'SUBJECT ""', SearchHeader("Subject", "")),
    (b"HEADER X-Mailer mutt", SearchHeader("X-Mailer", "mutt")),
    (b'HEADER "List-Id" ""', SearchHeader("List-Id", "")),
    (b"BODY hello", SearchText("hello")),
    (b'TEXT "hello world"', SearchText("hello world", headers=True)),
    (b"BEFORE 1-Feb-2024", SearchDate("before", date(2024, 2, 1))),
    (b'ON "01-feb-2024"', SearchDate("on", date(2024, 2, 1))),
    (b"SINCE 29-Feb-2024", SearchDate("since", date(2024, 2, 29))),
    (b"SENTBEFORE 1-Jan-2000", SearchDate("before", date(2000, 1, 1), sent=True)),
    (b"SENTON 31-Dec-1999", SearchDate("on", date(1999, 12, 31), sent=True)),
    (b"SENTSINCE 1-Jan-1970", SearchDate("since", date(1970, 1, 1), sent=True)),
    (b"LARGER 10000", SearchSize("larger", 10000)),
    (b"SMALLER 9223372036854775807", SearchSize("smaller", 2**63 - 1)),
    (b"OLDER 3600", SearchAge("older", 3600)),
    (b"YOUNGER 60", SearchAge("younger", 60)),
    (b"1:5,7", SearchSequence(seq("1:5,7"))),
    (b"*", SearchSequence(seq("*"))),
    (b"$", SearchSequence(SequenceSet(saved=True))),
    (b"UID 100:*", SearchSequence(seq("100:*"), uid=True)),
    (b"UID $", SearchSequence(SequenceSet(saved=True), uid=True)),
    (b"NOT SEEN", SearchNot(SEEN)),
    (b"NOT NOT SEEN", SearchNot(SearchNot(SEEN))),
    (b"OR SEEN DRAFT", SearchOr(SEEN, SearchFlag("\\Draft"))),
    (
        b"OR OR SEEN DRAFT FROM x",
        SearchOr(SearchOr(SEEN, SearchFlag("\\Draft")), SearchHeader("From", "x")),
    ),
    (b"(SEEN)", SEEN),
    (b"(SEEN DRAFT)", SearchAnd((SEEN, SearchFlag("\\Draft")))),
    (
        b"OR (FROM a TO b) (NOT SEEN 2:3)",
        SearchOr(
            SearchAnd((SearchHeader("From", "a"), SearchHeader("To", "b"))),
            SearchAnd((SearchNot(SEEN), SearchSequence(seq("2:3")))),
        ),
    ),
    (b"((SEEN))", SEEN),
    (b"MODSEQ 620162338", SearchModseq(620162338)),
    (
        b'MODSEQ "/flags/\\\\draft" all 620162338',
        SearchModseq(620162338, "/flags/\\draft", "all"),
    ),
    (b'MODSEQ "/flags/$Junk" PRIV 0', SearchModseq(0, "/flags/$Junk", "priv")),
    (
        b'DELETED FROM "SMITH" SINCE 1-Feb-1994',
        SearchAnd(
            (
                SearchFlag("\\Deleted"),
                SearchHeader("From", "SMITH"),
                SearchDate("since", date(1994, 2, 1)),
            )
        ),
    ),
]


@pytest.mark.parametrize(("keys", "expected"), SEARCH_TABLE, ids=lambda x: repr(x)[:50])
def test_search_keys(keys: bytes, expected: SearchKey) -> None:
    assert one(b"s SEARCH " + keys + b"\r\n") == Search("s", expected)


def test_search_options() -> None:
    all_ = SearchAll()
    assert one(b"s UID SEARCH ALL\r\n") == Search("s", all_, uid=True)
    assert one(b"s SEARCH RETURN () ALL\r\n") == Search("s", all_, return_options=frozenset())
    assert one(b"s SEARCH RETURN (MIN MAX COUNT ALL SAVE) ALL\r\n") == Search(
        "s", all_, return_options=frozenset({"MIN", "MAX", "COUNT", "ALL", "SAVE"})
    )
    got = one(b"s SEARCH CHARSET UTF-8 TEXT {3}\r\n\xc3\xa9t\r\n")
    assert got == Search("s", SearchText("ét", headers=True), charset="UTF-8")
    got = one(b's UID SEARCH RETURN (COUNT) CHARSET "ISO-8859-1" SUBJECT {1}\r\n\xe9\r\n')
    assert got == Search(
        "s", SearchHeader("Subject", "é"), True, "ISO-8859-1", frozenset({"COUNT"})
    )


@pytest.mark.parametrize("name", [b"&Jjo", b"Tom&Jerry", b"&AGE-"])  # &AGE- encodes ASCII "a"
def test_broken_modified_utf7_is_no_not_bad(name: bytes) -> None:
    # Well formed, but not a name: NO [CANNOT] (RFC 9051 7.1), and parsing goes on.
    events = run(b"a SELECT " + name + b"\r\nz NOOP\r\n")
    assert len(events) == 2, events
    exc, after = events
    assert isinstance(exc, ParseError) and exc.status == "NO" and exc.code == "CANNOT"
    assert exc.response() == b"a NO [CANNOT] Mailbox name is not valid modified UTF-7\r\n"
    assert after == Noop("z")


def test_search_charset_errors() -> None:
    exc = error(b"s SEARCH CHARSET X-UNKNOWN ALL\r\n")
    assert exc.status == "NO" and exc.code is not None and exc.code.startswith("BADCHARSET (")
    assert exc.response().startswith(b"s NO [BADCHARSET (UTF-8 US-ASCII")
    exc = error(b"s SEARCH CHARSET UTF-8 TEXT {2}\r\n\xc3(\r\n")
    assert exc.status == "BAD" and "not valid UTF-8" in exc.message


# -- errors ------------------------------------------------------------------------------

ERROR_TABLE: list[tuple[bytes, str | None, str]] = [
    (b"a FROBNICATE", "a", "Unknown command"),
    (b"a UID FROBNICATE 1", "a", "Unknown UID command"),
    (b"a UID LOGIN a b", "a", "Unknown UID command"),
    (b"a", "a", "Missing command"),
    (b"a (", "a", "Missing command"),
    (b"+ NOOP", None, "Invalid tag"),
    (b"a* NOOP", None, "Invalid tag"),
    (b'"a" NOOP', None, "Invalid tag"),
    (b" NOOP", None, "Invalid tag"),
    (b"\xff\xfe NOOP", None, "Invalid tag"),
    (b"a NOOP extra", "a", "Unexpected extra arguments"),
    (b"a NOOP ", "a", "Unexpected extra arguments"),
    (b"a LOGIN joe", "a", "Expected space at end of line"),
    (b"a LOGIN  joe secret", "a", "Expected string"),
    (b'a LOGIN "joe secret', "a", "Unterminated quoted string"),
    (b'a LOGIN "jo\\e" x', "a", "Invalid escape"),
    (b'a LOGIN "jo\re" x', "a", "Invalid character in quoted string"),
    (b"a LOGIN joe \xff", "a", "Expected string"),
    (b'a LOGIN "\xff" x', "a", "User name is not valid UTF-8"),
    (b"a LOGIN {3}x\r\n", "a", "Invalid literal"),
    (b"a LOGIN joe ~{3}\r\nabc", "a", "literal8 not allowed here"),
    (b"a LOGIN {3}\r\na\0c x", "a", "NUL in literal"),
    (b"a SELECT", "a", "Expected space"),
    (b"a SELECT INBOX (FOO)", "a", "Unknown SELECT parameter"),
    (b"a SELECT INBOX ()", "a", "Expected keyword"),
    (b"a SELECT INBOX (QRESYNC (0 1))", "a", "UIDVALIDITY out of range"),
    (b"a SELECT INBOX (QRESYNC (1 2 1:*))", "a", "'*' and '$' are not allowed"),
    (b"a SELECT INBOX (QRESYNC (1 2 $))", "a", "'*' and '$' are not allowed"),
    (b"a CREATE x (USE (Drafts))", "a", "Expected special-use attribute"),
    (b"a CREATE x (FOO)", "a", "Unknown CREATE parameter"),
    (b'a LIST (FOO) "" *', "a", "Unknown LIST selection option"),
    (b'a LIST (RECURSIVEMATCH) "" *', "a", "RECURSIVEMATCH needs"),
    (b'a LIST (REMOTE RECURSIVEMATCH) "" *', "a", "RECURSIVEMATCH needs"),
    (b'a LIST "" * RETURN (FOO)', "a", "Unknown LIST return option"),
    (b'a LIST "" () ', "a", "Expected mailbox pattern"),
    (b'a LIST "" * FOO', "a", "Expected RETURN"),
    (b"a STATUS INBOX ()", "a", "Expected keyword"),
    (b"a STATUS INBOX (MESSAGES FOO)", "a", "Unknown STATUS item"),
    (b"a APPEND INBOX hello", "a", "Expected message literal"),
    (b'a APPEND INBOX "hello"', "a", "Expected date-time"),
    (b'a APPEND INBOX "31-Feb-2024 10:00:00 +0000" {1}\r\nx', "a", "Invalid date-time"),
    (b'a APPEND INBOX "01-Feb-2024 10:00:00 +2400" {1}\r\nx', "a", "Invalid date-time"),
    (b'a APPEND INBOX "01-Foo-2024 10:00:00 +0000" {1}\r\nx', "a", "Invalid date-time"),
    (b"a APPEND INBOX {1}\r\nx {1}\r\ny", "a", "MULTIAPPEND"),
    (b"a AUTHENTICATE PLAIN AGpvZQBzZWNyZXQ", "a", "Invalid base64"),
    (b"a AUTHENTICATE PLAIN ab!c", "a", "Unexpected extra arguments"),
    (b"a AUTHENTICATE PLAIN ab", "a", "Invalid base64"),
    (b"a FETCH 1 (FLAGS UID", "a", "Expected ')'"),
    (b"a FETCH 1 (FLAGS,UID)", "a", "Expected space or ')'"),
    (b"a ENABLE", "a", "Expected space"),
    (b'a ID ("a")', "a", "Expected space"),
    (b"a FETCH 1", "a", "Expected space"),
    (b"a FETCH 0 FLAGS", "a", "Invalid sequence number"),
    (b"a FETCH 01 FLAGS", "a", "Invalid sequence number"),
    (b"a FETCH 4294967296 FLAGS", "a", "Sequence number out of range"),
    (b"a FETCH 1:2:3 FLAGS", "a", "Invalid sequence range"),
    (b"a FETCH 1,,2 FLAGS", "a", "Invalid sequence number"),
    (b"a FETCH 1, FLAGS", "a", "Invalid sequence number"),
    (b"a FETCH $,1 FLAGS", "a", "Invalid sequence number"),
    (b"a FETCH x FLAGS", "a", "Expected sequence set"),
    (b"a FETCH 1 FOO", "a", "Unknown FETCH attribute"),
    (b"a FETCH 1 ()", "a", "Expected FETCH attribute"),
    (b"a FETCH 1 (FLAGS", "a", "Expected ')'"),
    (b"a FETCH 1 BODY.PEEK", "a", "Expected '['"),
    (b"a FETCH 1 BODY[MIME]", "a", "Invalid section text"),
    (b"a FETCH 1 BODY[0]", "a", "Section part out of range"),
    (b"a FETCH 1 BODY[1.]", "a", "Expected section text"),
    (b"a FETCH 1 BODY[HEADER.FIELDS]", "a", "Expected space"),
    (b"a FETCH 1 BODY[HEADER.FIELDS ()]", "a", "Expected string"),
    (b"a FETCH 1 BODY[HEADER.FIELDS (a:b)]", "a", "Invalid header field name"),
    (b"a FETCH 1 BODY[]<0.0>", "a", "Partial length out of range"),
    (b"a FETCH 1 BODY[]<5>", "a", "Expected '.'"),
    (b"a FETCH 1 BINARY[TEXT]", "a", "Expected section part"),
    (b"a FETCH 1 FLAGS (FOO 1)", "a", "Unknown FETCH modifier"),
    (b"a STORE 1 FLAGS", "a", "Expected space"),
    (b"a STORE 1 XFLAGS \\Seen", "a", "Expected [+|-]FLAGS[.SILENT]"),
    (b"a STORE 1 +FLAGS.LOUD \\Seen", "a", "Expected [+|-]FLAGS[.SILENT]"),
    (b"a STORE 1 (FOO 1) FLAGS x", "a", "Unknown STORE modifier"),
    (b"a STORE 1 FLAGS (\\Seen", "a", "Expected ')'"),
    (b"a COPY 1", "a", "Expected space"),
    (b"a EXPUNGE 1", "a", "Unexpected extra arguments"),
    (b"a UID EXPUNGE", "a", "Expected space"),
    (b"a SEARCH", "a", "Expected space"),
    (b"a SEARCH FOO", "a", "Unknown search key"),
    (b"a SEARCH (SEEN", "a", "Expected ')'"),
    (b"a SEARCH ()", "a", "Expected keyword"),
    (b"a SEARCH OR SEEN", "a", "Expected space"),
    (b"a SEARCH SINCE 30-Feb-2024", "a", "Invalid date"),
    (b"a SEARCH SINCE 1-Feb-24", "a", "Expected date"),
    (b'a SEARCH SINCE "1-Feb-2024', "a", "Expected date"),
    (b"a SEARCH LARGER -1", "a", "Expected size"),
    (b"a SEARCH LARGER 9223372036854775808", "a", "Size out of range"),
    (b"a SEARCH LARGER 99999999999999999999999999999", "a", "Size out of range"),
    (b'a SEARCH MODSEQ "/foo" all 1', "a", "MODSEQ entry name"),
    (b'a SEARCH MODSEQ "/flags/x" any 1', "a", "MODSEQ entry type"),
    (b"a SEARCH RETURN (FOO) ALL", "a", "Unknown SEARCH return option"),
    (b"a SEARCH ALL ", "a", "Expected keyword"),
]


@pytest.mark.parametrize(("wire", "tag", "message"), ERROR_TABLE, ids=lambda x: repr(x)[:50])
def test_errors(wire: bytes, tag: str | None, message: str) -> None:
    # Each bad command gives its precise error, and the next command still parses.
    events = run(wire + b"\r\nz NOOP\r\n")
    assert len(events) == 2, events
    exc, after = events
    assert isinstance(exc, ParseError), exc
    assert exc.tag == tag
    assert message in exc.message
    assert exc.status == "BAD"
    assert after == Noop("z")
    line = exc.response()
    assert line.endswith(b"\r\n") and b"\r" not in line[:-2] and b"\n" not in line[:-2]
    assert line.startswith((tag or "*").encode() + b" BAD ")


def test_error_messages_quote_safely() -> None:
    exc = error(b'a LOGIN "a\x01b\x7f\xff"  \r\n')
    assert exc.message.isascii() and exc.message.isprintable()
    exc = error(b"a FETCH 1 " + b"X" * 100 + b"\r\n")
    assert exc.message == 'Unknown FETCH attribute at "XXXXXXXXXXXXXXXXXXXXXXXX..."'


# -- grammar elements -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "value"),
    [
        (b"atom", "atom"),
        (b"a]b", "a]b"),  # ASTRING-CHAR includes "]"
        (b'""', ""),
        (b'"with space"', "with space"),
        (b'"q\\"uote"', 'q"uote'),
        (b'"back\\\\slash"', "back\\slash"),
        (b'"\xc3\xa4"', "ä"),
        (b"{0}\r\n", ""),
        (b"{3}\r\n\r\n\r", "\r\n\r"),
        (b"{3+}\r\n{}}", "{}}"),
        (b"{05}\r\nhello", "hello"),
    ],
)
def test_astring(wire: bytes, value: str) -> None:
    assert one(b"a LOGIN " + wire + b" x\r\n") == Login("a", value, "x")


def test_nil_is_not_a_string_in_id_keys_but_is_in_values() -> None:
    assert one(b'a ID ("NIL" NIL "x" "NIL")\r\n') == Id("a", (("NIL", None), ("x", "NIL")))
    assert one(b"a ID ({3}\r\nkey {0}\r\n)\r\n") == Id("a", (("key", ""),))


@pytest.mark.parametrize(
    ("wire", "ranges"),
    [
        ("1", ((1, 1),)),
        ("*", ((None, None),)),
        ("1:*", ((1, None),)),
        ("*:4", ((None, 4),)),
        ("4:2", ((4, 2),)),
        ("2,4:7,9,12:*", ((2, 2), (4, 7), (9, 9), (12, None))),
        ("4294967295", ((4294967295, 4294967295),)),
    ],
)
def test_sequence_set(wire: str, ranges: tuple[tuple[int | None, int | None], ...]) -> None:
    parsed = seq(wire)
    assert parsed == SequenceSet(tuple(SeqRange(a, b) for a, b in ranges))
    assert str(parsed) == wire


def test_sequence_set_resolution() -> None:
    # RFC 9051 9: "*" is the largest number in use; ranges may be backwards.
    assert seq("2,4:7,9,12:*").resolve(15) == [(2, 2), (4, 7), (9, 9), (12, 15)]
    assert seq("*:4,5:3,1").resolve(10) == [(1, 1), (3, 10)]
    assert seq("12:*").resolve(5) == [(5, 12)]
    assert list(seq("3:*,1").numbers(5)) == [1, 3, 4, 5]
    assert list(seq("3:9").numbers(5)) == [3, 4, 5]
    assert seq("1:3,*").contains(10, largest=10)
    assert not seq("1:3").contains(4, largest=10)
    assert SequenceSet.from_numbers([5, 1, 2, 3, 9, 8]) == seq("1:3,5,8:9")
    assert str(SequenceSet.from_numbers([])) == ""
    with pytest.raises(ValueError):
        SequenceSet(saved=True).resolve(3)
    assert str(SequenceSet(saved=True)) == "$"


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("INBOX", "INBOX"),
        ("a&b", "a&-b"),
        ("&", "&-"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ("📧 Mail", "&2D3c5w- Mail"),
        ("ä&ö", "&AOQ-&-&APY-"),
    ],
)
def test_modified_utf7(name: str, wire: str) -> None:
    # RFC 3501 5.1.3
    assert encode_mailbox(name, utf8_enabled=False) == wire
    assert decode_mailbox(wire, utf8_enabled=False) == name
    assert encode_mailbox(name, utf8_enabled=True) == name
    assert decode_mailbox(wire, utf8_enabled=True) == wire
    assert one(b'a SELECT "' + wire.encode() + b'"\r\n') == Select("a", name)


@pytest.mark.parametrize("bad", ["&", "&Jjo", "&AGE-", "&U,BTFw", "&U,BTF-", "&2D3c-", "&ÄÖ-"])
def test_modified_utf7_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_mailbox(bad, utf8_enabled=False)


def test_mailbox_names_utf8() -> None:
    # With IMAP4rev2 / UTF8=ACCEPT (RFC 9051 5.1, RFC 6855) names are UTF-8 as sent.
    wire = 'a CREATE "Entwürfe/&AOQ-"\r\n'.encode()
    assert one(wire, utf8_enabled=True) == Create("a", "Entwürfe/&AOQ-")
    # A rev1 client sending raw UTF-8 is understood too.
    assert one('a CREATE "Entwürfe"\r\n'.encode()) == Create("a", "Entwürfe")
    parser = Parser()
    parser.receive_data(b"a SELECT &APw-\r\n")
    assert drain(parser) == [Select("a", "ü")]
    parser.utf8_enabled = True
    parser.receive_data(b"b SELECT &APw-\r\n")
    assert drain(parser) == [Select("b", "&APw-")]


def test_date_and_date_time() -> None:
    for wire, expected in [
        (b"1-Feb-2024", date(2024, 2, 1)),
        (b"01-FEB-2024", date(2024, 2, 1)),
        (b'"9-dec-1999"', date(1999, 12, 9)),
    ]:
        assert one(b"s SEARCH ON " + wire + b"\r\n") == Search("s", SearchDate("on", expected))
    for wire, expected_dt in [
        (b'"01-Feb-2024 10:00:00 +0100"', datetime(2024, 2, 1, 10, tzinfo=TZ1)),
        (b'" 1-Feb-2024 10:00:00 +0000"', datetime(2024, 2, 1, 10, tzinfo=UTC)),
        (b'"1-Feb-2024 10:00:00 -0000"', datetime(2024, 2, 1, 10, tzinfo=UTC)),
        (
            b'"17-Jul-1996 02:44:25 -0700"',
            datetime(1996, 7, 17, 2, 44, 25, tzinfo=timezone(timedelta(hours=-7))),
        ),
    ]:
        got = one(b"a APPEND x " + wire + b" {1}\r\nm\r\n")
        assert isinstance(got, Append)
        assert got.internal_date == expected_dt
        assert got.internal_date.utcoffset() == expected_dt.utcoffset()


def test_flags_are_canonical() -> None:
    got = one(b"a STORE 1 +FLAGS (\\SEEN \\answered \\Flagged \\DELETED \\draft \\X-Ext kw)\r\n")
    assert isinstance(got, Store)
    assert got.flags == (
        "\\Seen",
        "\\Answered",
        "\\Flagged",
        "\\Deleted",
        "\\Draft",
        "\\X-Ext",
        "kw",
    )


def test_secrets_stay_out_of_repr() -> None:
    login = one(b"a LOGIN joe hunter2\r\n")
    assert "hunter2" not in repr(login)
    auth = one(b"a AUTHENTICATE PLAIN AGpvZQBodW50ZXIy\r\n")
    assert "AGpvZQ" not in repr(auth) and "hunter2" not in repr(auth)
    append = one(b"a APPEND INBOX {12}\r\nsecret body!\r\n")
    assert "secret" not in repr(append)


# -- framing ----------------------------------------------------------------------------


def test_sync_literal_continuation_flow() -> None:
    parser = Parser()
    parser.receive_data(b"a1 LOGIN {3}\r\n")
    assert parser.next_event() == NeedContinuation("a1", 3, "LOGIN")
    assert parser.next_event() is None
    parser.receive_data(b"joe {6}\r\n")
    assert parser.next_event() == NeedContinuation("a1", 6, "LOGIN")
    parser.receive_data(b"sec")
    assert parser.next_event() is None
    parser.receive_data(b"ret\r\na2 NOOP\r\n")
    assert parser.next_event() == Login("a1", "joe", "secret")
    assert parser.next_event() == Noop("a2")
    assert parser.next_event() is None


def test_literal_plus_needs_no_continuation() -> None:
    # RFC 7888 3
    parser = Parser()
    parser.receive_data(b"a1 LOGIN {3+}\r\njoe {6+}\r\nsecret\r\n")
    assert drain(parser) == [Login("a1", "joe", "secret")]


def test_literal8_continuation() -> None:
    parser = Parser()
    parser.receive_data(b"a APPEND INBOX ~{4}\r\n")
    assert drain(parser) == [NeedContinuation("a", 4, "APPEND", binary=True)]
    parser.receive_data(b"\0\1\2\3\r\n")
    assert drain(parser) == [Append("a", "INBOX", b"\0\1\2\3", binary=True)]


def test_literal_data_is_not_interpreted() -> None:
    # Literal data holding CRLF, "{n}" and a command stays data.
    body = b"b LOGOUT\r\nc {5}\r\n"
    wire = b"a APPEND INBOX {%d+}\r\n%s\r\nd NOOP\r\n" % (len(body), body)
    assert run(wire) == [Append("a", "INBOX", body), Noop("d")]


WIRES_WITH_LITERALS = [
    (
        b"a1 LOGIN {3}\r\njoe {6+}\r\nsecret\r\na2 NOOP\r\n",
        [Login("a1", "joe", "secret"), Noop("a2")],
        1,
    ),
    (
        b"a APPEND Drafts (\\Seen) {12}\r\nHello\r\nWorld\r\nb SEARCH TEXT {2}\r\nhi\r\n",
        [
            Append("a", "Drafts", b"Hello\r\nWorld", ("\\Seen",)),
            Search("b", SearchText("hi", headers=True)),
        ],
        2,
    ),
    (b"x SELECT ~{1}\r\nx\r\n", [ParseError("x", "")], 1),
]


@pytest.mark.parametrize(("wire", "expected", "continuations"), WIRES_WITH_LITERALS)
def test_split_at_every_byte(wire: bytes, expected: list[object], continuations: int) -> None:
    def check(events: list[object]) -> None:
        got = [e for e in events if not isinstance(e, NeedContinuation)]
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            if isinstance(e, ParseError):
                assert isinstance(g, ParseError) and g.tag == e.tag
            else:
                assert g == e
        assert sum(isinstance(e, NeedContinuation) for e in events) == continuations

    for cut in range(len(wire) + 1):
        parser = Parser()
        parser.receive_data(wire[:cut])
        events = drain(parser)
        parser.receive_data(wire[cut:])
        check(events + drain(parser))
    parser = Parser()
    events = []
    for i in range(len(wire)):
        parser.receive_data(wire[i : i + 1])
        events += drain(parser)
    check(events)


def test_line_endings_and_blank_lines() -> None:
    # A bare LF ends a line too; blank lines between commands are ignored.
    assert run(b"\r\n\na NOOP\nb NOOP\r\n\r\n") == [Noop("a"), Noop("b")]


def test_literal_marker_detection() -> None:
    assert literal_marker(b"a LOGIN {5}") == (5, True, False)
    assert literal_marker(b"a LOGIN {5+}") == (5, False, False)
    assert literal_marker(b"a APPEND x ~{12}") == (12, True, True)
    assert literal_marker(b"a LOGIN {}") is None
    assert literal_marker(b"a LOGIN 5}") is None
    assert literal_marker(b"a LOGIN {5 }") is None
    assert literal_marker(b"{" + b"9" * 40 + b"+}").size >= 2**63  # type: ignore[union-attr]
    assert literal_marker(b"99+}", truncated=True).size >= 2**63  # type: ignore[union-attr]
    assert literal_marker(b"99+}") is None


def test_idle_mode() -> None:
    parser = Parser()
    parser.receive_data(b"a IDLE\r\n")
    assert drain(parser) == [Idle("a")]
    parser.expect_done("a")
    assert parser.mode is Mode.IDLE
    parser.receive_data(b"done\r\nb NOOP\r\n")
    assert drain(parser) == [IdleDone("a"), Noop("b")]
    assert parser.mode is Mode.COMMAND
    # Anything else ends IDLE with a BAD.
    parser.receive_data(b"c IDLE\r\n")
    assert drain(parser) == [Idle("c")]
    parser.expect_done("c")
    parser.receive_data(b"d NOOP\r\ne NOOP\r\n")
    events = drain(parser)
    assert isinstance(events[0], ParseError) and events[0].tag == "c"
    assert events[0].message == "Expected DONE"
    assert events[1:] == [Noop("e")]


def test_idle_mode_applies_to_data_already_buffered() -> None:
    parser = Parser()
    parser.receive_data(b"a IDLE\r\nDONE\r\n")
    assert parser.next_event() == Idle("a")
    parser.expect_done("a")
    assert parser.next_event() == IdleDone("a")


def test_authenticate_mode() -> None:
    parser = Parser()
    parser.receive_data(b"a AUTHENTICATE PLAIN\r\n")
    assert drain(parser) == [Authenticate("a", "PLAIN")]
    parser.expect_sasl_response("a")
    parser.receive_data(b"AGpvZQBzZWNyZXQ=\r\n")
    assert drain(parser) == [AuthenticateResponse("a", b"\0joe\0secret")]
    parser.expect_sasl_response("a")
    parser.receive_data(b"\r\n")
    assert drain(parser) == [AuthenticateResponse("a", b"")]
    parser.expect_sasl_response("a")
    parser.receive_data(b"*\r\n")
    assert drain(parser) == [AuthenticateCancel("a")]
    parser.expect_sasl_response("a")
    parser.receive_data(b"not base64!\r\nb NOOP\r\n")
    events = drain(parser)
    assert isinstance(events[0], ParseError) and events[0].tag == "a"
    assert events[1:] == [Noop("b")]


def test_mode_switch_only_between_commands() -> None:
    parser = Parser()
    parser.receive_data(b"a LOGIN {3}\r\n")
    drain(parser)
    with pytest.raises(RuntimeError):
        parser.expect_done("a")


def test_reject_literal() -> None:
    # The server may refuse an APPEND before its data (e.g. NO [TRYCREATE]).
    parser = Parser()
    parser.receive_data(b"a APPEND Nope {10}\r\n")
    assert drain(parser) == [NeedContinuation("a", 10, "APPEND")]
    parser.reject_literal()
    parser.receive_data(b"b NOOP\r\n")
    assert drain(parser) == [Noop("b")]
    with pytest.raises(RuntimeError):
        parser.reject_literal()


def test_reset_drops_pipelined_plaintext() -> None:
    parser = Parser()
    parser.receive_data(b"a STARTTLS\r\nb LOGIN joe secret\r\n")
    assert parser.next_event() == StartTLS("a")
    parser.reset()
    assert parser.buffered_size == 0
    assert parser.next_event() is None


# -- limits -------------------------------------------------------------------------------


def test_long_line_is_discarded_as_it_arrives() -> None:
    parser = Parser(max_line_length=100)
    parser.receive_data(b"a1 LOGIN " + b"x" * 200)
    assert drain(parser) == []
    assert parser.buffered_size <= 64
    for _ in range(100):
        parser.receive_data(b"y" * 1000)
        assert drain(parser) == []
        assert parser.buffered_size <= 64
    parser.receive_data(b" z\r\na2 NOOP\r\n")
    events = drain(parser)
    assert isinstance(events[0], ParseError)
    assert (events[0].tag, events[0].message) == ("a1", "Line too long")
    assert events[1:] == [Noop("a2")]


def test_long_line_in_one_piece() -> None:
    events = run(b"a1 LOGIN " + b"x" * 200 + b"\r\na2 NOOP\r\n", Parser(max_line_length=100))
    assert [type(e) for e in events] == [ParseError, Noop]
    assert events[0].tag == "a1"  # type: ignore[union-attr]


def test_long_line_with_unreadable_tag() -> None:
    parser = Parser(max_line_length=100)
    parser.receive_data(b"x" * 500)
    assert drain(parser) == []
    events = run(b"\r\na2 NOOP\r\n", parser)
    assert isinstance(events[0], ParseError) and events[0].tag is None
    assert events[0].response() == b"* BAD Line too long\r\n"
    assert events[1:] == [Noop("a2")]


def test_long_line_in_one_piece_with_unreadable_tag() -> None:
    events = run(b"x" * 500 + b"\r\na2 NOOP\r\n", Parser(max_line_length=100))
    assert isinstance(events[0], ParseError) and events[0].tag is None
    assert events[1:] == [Noop("a2")]


def test_long_line_ending_in_literal_plus_skips_the_literal() -> None:
    # The discarded line announces a literal: its data must not run as commands.
    parser = Parser(max_line_length=100)
    parser.receive_data(b"a1 SEARCH TEXT " + b"x" * 300 + b" TEXT {10+}\r\n")
    parser.receive_data(b"b LOGOUT\r\n FROM y\r\na2 NOOP\r\n")
    events = drain(parser)
    assert [type(e) for e in events] == [ParseError, Noop]
    assert events[0].tag == "a1"  # type: ignore[union-attr]


def test_long_line_ending_in_sync_literal_ends_the_command() -> None:
    # The client waits for "+" that never comes; the BAD ends its command.
    parser = Parser(max_line_length=100)
    parser.receive_data(b"a1 SEARCH TEXT " + b"x" * 300 + b" TEXT {10}\r\n")
    events = drain(parser)
    assert len(events) == 1 and isinstance(events[0], ParseError)
    parser.receive_data(b"a2 NOOP\r\n")
    assert drain(parser) == [Noop("a2")]


def test_sync_literal_over_limit_is_refused_before_its_data() -> None:
    parser = Parser(max_literal_size=1000)
    parser.receive_data(b"a1 LOGIN joe {1001}\r\n")
    events = drain(parser)
    assert len(events) == 1
    exc = events[0]
    assert isinstance(exc, LiteralTooLarge) and exc.synchronizing
    assert (exc.tag, exc.size, exc.limit, exc.code, exc.status) == (
        "a1",
        1001,
        1000,
        "TOOBIG",
        "NO",
    )
    assert exc.response().startswith(b"a1 NO [TOOBIG] ")
    parser.receive_data(b"a2 LOGIN joe {1000+}\r\n" + b"p" * 1000 + b"\r\n")
    assert drain(parser) == [Login("a2", "joe", "p" * 1000)]


def test_append_has_its_own_literal_limit() -> None:
    parser = Parser(max_literal_size=10, max_append_size=100, max_command_size=50)
    parser.receive_data(b"a APPEND INBOX {100}\r\n")
    assert drain(parser) == [NeedContinuation("a", 100, "APPEND")]
    parser.receive_data(b"m" * 100 + b"\r\n")
    assert drain(parser) == [Append("a", "INBOX", b"m" * 100)]
    parser.receive_data(b"b APPEND INBOX {101}\r\n")
    (exc,) = drain(parser)
    assert isinstance(exc, LiteralTooLarge) and exc.limit == 100
    parser.receive_data(b"c LOGIN {11}\r\n")
    (exc,) = drain(parser)
    assert isinstance(exc, LiteralTooLarge) and exc.limit == 10


@pytest.mark.parametrize(
    "wire",
    [
        b"a1 LOGIN joe {50000+}\r\n",
        b"a1 LOGIN joe {99999999999999999999999+}\r\n",
        b"a1 APPEND INBOX ~{99999999999+}\r\n",
        b"a1 FROB {50000+}\r\n",  # refused at its head, and announces too much
    ],
)
def test_non_sync_literal_over_limit_is_fatal(wire: bytes) -> None:
    # RFC 7888 4: the client sends a {n+} literal without waiting; reading and
    # dropping what it announced could take hours, so the parser stops at once
    # (the server answers BAD [TOOBIG] and closes) and buffers none of it.
    parser = Parser(max_literal_size=1000, max_append_size=2000)
    parser.receive_data(wire + b"b NOOP\r\n" * 125)
    events = drain(parser)
    assert len(events) == 1
    exc = events[0]
    assert isinstance(exc, ParseError) and exc.fatal and exc.tag == "a1"
    if b"FROB" not in wire:
        assert exc.response().startswith(b"a1 BAD [TOOBIG] ")
    assert parser.buffered_size == 0
    parser.receive_data(b"c NOOP\r\n")
    assert drain(parser) == [] and parser.buffered_size == 0


def test_command_too_long_through_many_literals() -> None:
    parser = Parser(max_command_size=1000)
    parser.receive_data(b"a SEARCH" + (b" TEXT {100+}\r\n" + b"x" * 100) * 20 + b"\r\nb NOOP\r\n")
    events = drain(parser)
    assert isinstance(events[0], LiteralTooLarge) and events[0].tag == "a"
    assert events[0].message == "Command too long" and events[0].fatal
    assert events[1:] == []


def test_prelogin_limits_are_small() -> None:
    # Issue 13: before authentication a command holds a few KiB at most.
    parser = Parser()
    parser.set_limits(PRELOGIN)
    parser.receive_data(b"a LOGIN joe {2049}\r\n")
    (exc,) = drain(parser)
    assert isinstance(exc, LiteralTooLarge) and exc.synchronizing and exc.limit == 2048
    parser.receive_data(b"b LOGIN joe {2048}\r\n")
    assert drain(parser) == [NeedContinuation("b", 2048, "LOGIN")]
    parser.receive_data(b"p" * 2048 + b"\r\n")
    assert drain(parser) == [Login("b", "joe", "p" * 2048)]
    parser.receive_data(b"c LOGIN joe " + b"x" * 5000 + b"\r\nd NOOP\r\n")
    events = drain(parser)
    assert events[0].message == "Line too long" and events[1:] == [Noop("d")]
    assert parser.buffered_size == 0


def test_command_too_long_through_many_empty_literals() -> None:
    parser = Parser(max_command_size=1000)
    parser.receive_data(b"a SEARCH" + b" TEXT {0+}\r\n" * 200 + b"\r\nb NOOP\r\n")
    events = drain(parser)
    assert isinstance(events[0], ParseError)
    assert events[0].message == "Command too long"
    assert events[1:] == [Noop("b")]


def test_unknown_command_with_literal_is_refused_at_once() -> None:
    # No continuation for a command that cannot succeed; a {n+} literal is skipped.
    parser = Parser()
    parser.receive_data(b"a FROB {5}\r\n")
    (exc,) = drain(parser)
    assert isinstance(exc, ParseError) and exc.message == "Unknown command"
    parser.receive_data(b"b FROB {10+}\r\nc LOGOUT\r\n\r\nd NOOP\r\n")
    events = drain(parser)
    assert [type(e) for e in events] == [ParseError, Noop]
    assert events[1] == Noop("d")
    parser.receive_data(b"+ {3+}\r\nabc\r\ne NOOP\r\n")
    events = drain(parser)
    assert isinstance(events[0], ParseError) and events[0].tag is None
    assert events[1:] == [Noop("e")]


@pytest.mark.parametrize("key", [b"NOT ", b"(", b"OR ALL "])
def test_deep_nesting(key: bytes) -> None:
    close = b")" * 40 if key == b"(" else b""
    exc = error(b"a SEARCH " + key * 40 + b"ALL" + close + b"\r\n")
    assert "nested too deeply" in exc.message
    # Within the limit it parses.
    close = b")" * 31 if key == b"(" else b""
    assert isinstance(one(b"a SEARCH " + key * 31 + b"ALL" + close + b"\r\n"), Search)
    parser = Parser(max_depth=3)
    assert isinstance(run(b"a SEARCH NOT NOT NOT NOT ALL\r\n", parser)[0], ParseError)


def test_deep_nesting_at_the_default_recursion_limit() -> None:
    # Far beyond the limit: an error, never a RecursionError.
    exc = error(b"a SEARCH " + b"(" * 30000 + b"\r\n")
    assert "nested too deeply" in exc.message


def test_huge_sequence_set() -> None:
    exc = error(b"a FETCH " + b"1," * 10_000 + b"1 FLAGS\r\n")
    assert "Too many ranges" in exc.message
    assert isinstance(one(b"a FETCH " + b"1," * 9_999 + b"1 FLAGS\r\n"), Fetch)
    exc = error(b"a FETCH 1,2,3 FLAGS\r\n", max_sequence_ranges=2)
    assert "Too many ranges" in exc.message


def test_huge_numbers() -> None:
    exc = error(b"a SEARCH LARGER " + b"9" * 5000 + b"\r\n")
    assert "out of range" in exc.message
    exc = error(b"a FETCH " + b"9" * 5000 + b" FLAGS\r\n")
    assert "out of range" in exc.message
    exc = error(b"a LOGIN {" + b"9" * 5000 + b"}\r\n")
    assert isinstance(exc, LiteralTooLarge)


# -- properties ----------------------------------------------------------------------------

ATOM_CHARS = "".join(
    c for c in string.printable if c not in '(){ %*"\\]' and c.isprintable() and c not in "\t\n\r"
)
TAG_CHARS = ATOM_CHARS.replace("+", "") + "]"
tags = st.text(TAG_CHARS, min_size=1, max_size=8)
atoms = st.text(ATOM_CHARS, min_size=1, max_size=10)


@st.composite
def astrings(draw: st.DrawFn, value: bytes) -> bytes:
    """One wire form of the astring `value`: atom, quoted or literal."""
    forms = ["literal", "literal+"]
    if value and all(chr(b) in ATOM_CHARS + "]" for b in value) and value.upper() != b"NIL":
        forms.append("atom")
    if not any(b in b"\r\n\0" for b in value):
        forms.append("quoted")
    form = draw(st.sampled_from(forms))
    if form == "atom":
        return value
    if form == "quoted":
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d%s}\r\n%s" % (len(value), b"+" if form == "literal+" else b"", value)


text_values = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12
)


@st.composite
def mailboxes(draw: st.DrawFn, utf8: bool) -> tuple[bytes, str]:
    """(wire, name) of a mailbox name; see inbox() for the INBOX rule."""
    name = draw(text_values | atoms | st.sampled_from(["INBOX", "inbox", "Inbox"]))
    wire = name.encode() if utf8 else encode_mailbox(name, False).encode()
    return draw(astrings(wire)), name


def inbox(name: str) -> str:
    # RFC 9051 5.1: INBOX is case-insensitive.
    return "INBOX" if name.upper() == "INBOX" else name


numbers = st.integers(1, 2**32 - 1)


@st.composite
def sequence_sets(draw: st.DrawFn) -> tuple[bytes, SequenceSet]:
    if draw(st.integers(0, 9)) == 0:
        return b"$", SequenceSet(saved=True)
    ends = st.none() | numbers
    ranges = draw(st.lists(st.tuples(ends, ends), min_size=1, max_size=5))
    parts = []
    for a, b in ranges:
        if a == b:
            parts.append(b"*" if a is None else str(a).encode())
        else:
            parts.append(b"%s:%s" % tuple(b"*" if x is None else str(x).encode() for x in (a, b)))
    return b",".join(parts), SequenceSet(tuple(SeqRange(a, b) for a, b in ranges))


def _flags() -> st.SearchStrategy[tuple[bytes, str]]:
    system = st.sampled_from(["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"])
    return st.one_of(
        system.map(lambda f: (f.upper().encode(), f)),
        atoms.map(lambda a: (a.encode(), a)),
    )


@st.composite
def dates(draw: st.DrawFn) -> tuple[bytes, date]:
    d = draw(st.dates(date(1900, 1, 1), date(2100, 12, 31)))
    month = d.strftime("%b")
    month = draw(st.sampled_from([month, month.upper(), month.lower()]))
    day = draw(st.sampled_from([str(d.day), f"{d.day:02d}"]))
    text = f"{day}-{month}-{d.year}".encode()
    return (b'"%s"' % text if draw(st.booleans()) else text), d


@st.composite
def search_leaves(draw: st.DrawFn) -> tuple[bytes, SearchKey]:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return b"ALL", SearchAll()
    if kind == 1:
        name, flag, present = draw(
            st.sampled_from(
                [
                    ("SEEN", "\\Seen", True),
                    ("UNSEEN", "\\Seen", False),
                    ("flagged", "\\Flagged", True),
                    ("UNDELETED", "\\Deleted", False),
                ]
            )
        )
        return name.encode(), SearchFlag(flag, present)
    if kind == 2:
        value = draw(text_values)
        key, field = draw(st.sampled_from([("FROM", "From"), ("to", "To"), ("SUBJECT", "Subject")]))
        return key.encode() + b" " + draw(astrings(value.encode())), SearchHeader(field, value)
    if kind == 3:
        value = draw(text_values)
        name = draw(atoms)
        wire = b"HEADER " + draw(astrings(name.encode())) + b" " + draw(astrings(value.encode()))
        return wire, SearchHeader(name, value)
    if kind == 4:
        value = draw(text_values)
        headers = draw(st.booleans())
        wire = (b"TEXT " if headers else b"BODY ") + draw(astrings(value.encode()))
        return wire, SearchText(value, headers)
    if kind == 5:
        key, relation, sent = draw(
            st.sampled_from([("SINCE", "since", False), ("SENTBEFORE", "before", True)])
        )
        wire, d = draw(dates())
        return key.encode() + b" " + wire, SearchDate(relation, d, sent)
    if kind == 6:
        n = draw(st.integers(0, 2**63 - 1))
        return b"LARGER %d" % n, SearchSize("larger", n)
    if kind == 7:
        wire, s = draw(sequence_sets())
        uid = draw(st.booleans())
        return (b"UID " if uid else b"") + wire, SearchSequence(s, uid)
    if kind == 8:
        wire, flag = draw(_flags().filter(lambda f: not f[1].startswith("\\")))
        return b"KEYWORD " + wire, SearchFlag(flag)
    n = draw(st.integers(0, 2**63 - 1))
    return b"MODSEQ %d" % n, SearchModseq(n)


def _extend(children: st.SearchStrategy[tuple[bytes, SearchKey]]) -> st.SearchStrategy:
    def group(items: list[tuple[bytes, SearchKey]]) -> tuple[bytes, SearchKey]:
        keys = tuple(k for _, k in items)
        wire = b"(" + b" ".join(w for w, _ in items) + b")"
        return wire, keys[0] if len(keys) == 1 else SearchAnd(keys)

    return st.one_of(
        children.map(lambda c: (b"NOT " + c[0], SearchNot(c[1]))),
        st.tuples(children, children).map(
            lambda p: (b"OR " + p[0][0] + b" " + p[1][0], SearchOr(p[0][1], p[1][1]))
        ),
        st.lists(children, min_size=1, max_size=3).map(group),
    )


search_keys = st.recursive(search_leaves(), _extend, max_leaves=8)

FETCH_ITEMS = [
    (b"FLAGS", fa("FLAGS")),
    (b"uid", fa("UID")),
    (b"ENVELOPE", fa("ENVELOPE")),
    (b"BODYSTRUCTURE", fa("BODYSTRUCTURE")),
    (b"BODY", fa("BODY")),
    (b"RFC822.SIZE", fa("RFC822.SIZE")),
    (b"MODSEQ", fa("MODSEQ")),
    (
        b"BODY.PEEK[HEADER.FIELDS (FROM TO)]",
        fa("BODY", Section((), "HEADER.FIELDS", ("FROM", "TO")), peek=True),
    ),
]


@st.composite
def fetch_items(draw: st.DrawFn) -> tuple[bytes, FetchAttribute]:
    if draw(st.booleans()):
        return draw(st.sampled_from(FETCH_ITEMS))
    part = tuple(draw(st.lists(st.integers(1, 99), max_size=3)))
    texts = [None, "HEADER", "TEXT"] + (["MIME"] if part else [])
    text = draw(st.sampled_from(texts))
    partial = draw(st.none() | st.tuples(st.integers(0, 2**40), st.integers(1, 2**40)))
    peek = draw(st.booleans())
    binary = text is None and draw(st.booleans())
    spec = ".".join([str(p) for p in part] + ([text] if text else []))
    name = ("BINARY" if binary else "BODY") + (".PEEK" if peek else "")
    wire = f"{name}[{spec}]" + (f"<{partial[0]}.{partial[1]}>" if partial else "")
    return wire.encode(), FetchAttribute(
        "BINARY" if binary else "BODY",
        Section(part, text),
        Partial(*partial) if partial else None,
        peek,
    )


@st.composite
def commands(draw: st.DrawFn, utf8: bool) -> tuple[bytes, Command]:
    tag = draw(tags)
    t = tag.encode()
    kind = draw(st.integers(0, 11))
    if kind == 0:
        cls, name = draw(
            st.sampled_from(
                [(Noop, "NOOP"), (Capability, "capability"), (Idle, "IDLE"), (Close, "Close")]
            )
        )
        return t + b" " + name.encode(), cls(tag)
    if kind == 1:
        user, password = draw(text_values), draw(text_values)
        wire = b"%s LOGIN %s %s" % (
            t,
            draw(astrings(user.encode())),
            draw(astrings(password.encode())),
        )
        return wire, Login(tag, user, password)
    if kind == 2:
        mailbox_wire, mailbox = draw(mailboxes(utf8))
        readonly, condstore = draw(st.booleans()), draw(st.booleans())
        wire = b"%s %s %s" % (t, b"EXAMINE" if readonly else b"SELECT", mailbox_wire)
        qresync = None
        if draw(st.booleans()):
            uidvalidity, modseq = draw(numbers), draw(st.integers(0, 2**63 - 1))
            qresync = QResync(uidvalidity, modseq)
            params = b"QRESYNC (%d %d)" % (uidvalidity, modseq)
            wire += b" (" + (b"CONDSTORE " if condstore else b"") + params + b")"
        elif condstore:
            wire += b" (CONDSTORE)"
        return wire, Select(tag, inbox(mailbox), readonly, condstore, qresync)
    if kind == 3:
        w1, m1 = draw(mailboxes(utf8))
        cls, name = draw(st.sampled_from([(Copy, b"COPY"), (Move, b"MOVE")]))
        s_wire, s = draw(sequence_sets())
        uid = draw(st.booleans())
        wire = b"%s %s%s %s %s" % (t, b"UID " if uid else b"", name, s_wire, w1)
        return wire, cls(tag, s, inbox(m1), uid)
    if kind == 4:
        s_wire, s = draw(sequence_sets())
        items = draw(st.lists(fetch_items(), min_size=1, max_size=4))
        uid = draw(st.booleans())
        wire = b"%s %sFETCH %s (%s)" % (
            t,
            b"UID " if uid else b"",
            s_wire,
            b" ".join(w for w, _ in items),
        )
        return wire, Fetch(tag, s, tuple(a for _, a in items), uid)
    if kind == 5:
        s_wire, s = draw(sequence_sets())
        flags = draw(st.lists(_flags(), max_size=4))
        sign, action = draw(st.sampled_from([(b"+", "add"), (b"-", "remove"), (b"", "replace")]))
        silent = draw(st.booleans())
        wire = b"%s STORE %s %sFLAGS%s (%s)" % (
            t,
            s_wire,
            sign,
            b".SILENT" if silent else b"",
            b" ".join(w for w, _ in flags),
        )
        return wire, Store(tag, s, action, tuple(f for _, f in flags), silent)  # type: ignore[arg-type]
    if kind == 6:
        keys = draw(st.lists(search_keys, min_size=1, max_size=3))
        uid = draw(st.booleans())
        wire = b"%s %sSEARCH %s" % (t, b"UID " if uid else b"", b" ".join(w for w, _ in keys))
        criteria = keys[0][1] if len(keys) == 1 else SearchAnd(tuple(k for _, k in keys))
        return wire, Search(tag, criteria, uid)
    if kind == 7:
        mailbox_wire, mailbox = draw(mailboxes(utf8))
        message = draw(st.binary(max_size=50))
        flags = draw(st.lists(_flags(), max_size=3))
        # A literal's octets are CHAR8 (no NUL, RFC 9051 9); a message with NUL
        # goes as literal8 (RFC 3516 4.2).
        binary = b"\0" in message
        wire = b"%s APPEND %s (%s) %s{%d%s}\r\n%s" % (
            t,
            mailbox_wire,
            b" ".join(w for w, _ in flags),
            b"~" if binary else b"",
            len(message),
            draw(st.sampled_from([b"", b"+"])),
            message,
        )
        append = Append(tag, inbox(mailbox), message, tuple(f for _, f in flags), binary=binary)
        return wire, append
    if kind == 8:
        mailbox_wire, mailbox = draw(mailboxes(utf8))
        items = draw(
            st.lists(st.sampled_from(["MESSAGES", "UIDNEXT", "UNSEEN", "SIZE"]), min_size=1)
        )
        wire = b"%s STATUS %s (%s)" % (t, mailbox_wire, " ".join(items).encode())
        return wire, Status(tag, inbox(mailbox), tuple(items))
    if kind == 9:
        (ref_wire, ref), (pat_wire, pat) = draw(mailboxes(utf8)), draw(mailboxes(utf8))
        wire = b"%s LIST %s %s" % (t, ref_wire, pat_wire)
        return wire, List(tag, ref, (pat,))
    if kind == 10:
        caps = draw(st.lists(atoms, min_size=1, max_size=3))
        return b"%s ENABLE %s" % (t, " ".join(caps).encode()), Enable(
            tag, tuple(c.upper() for c in caps)
        )
    s_wire, s = draw(sequence_sets())
    return b"%s UID EXPUNGE %s" % (t, s_wire), Expunge(tag, s)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    utf8=st.booleans(),
    data=st.data(),
)
def test_property_valid_commands_parse(utf8: bool, data: st.DataObject) -> None:
    batch = data.draw(st.lists(commands(utf8), min_size=1, max_size=4))
    wire = b"".join(w + b"\r\n" for w, _ in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    parser = Parser(utf8_enabled=utf8)
    events: list[object] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        parser.receive_data(wire[start:end])
        events += drain(parser)
    got = [e for e in events if not isinstance(e, NeedContinuation)]
    assert got == [c for _, c in batch]
    assert parser.buffered_size == 0


FRAGMENTS = [
    b"a ", b"b1 ", b"UID ", b"FETCH ", b"SEARCH ", b"LOGIN ", b"APPEND ", b"SELECT ", b"STORE ",
    b"LIST ", b"IDLE", b"AUTHENTICATE PLAIN", b"DONE", b"NOOP", b"NOT ", b"OR ", b"(", b")",
    b"[", b"]", b"<0.5>", b'"', b"\\", b"{", b"}", b"{3}\r\n", b"{2+}\r\n", b"~{1}\r\n",
    b"{99999+}\r\n", b"{0}\r\n", b"\r\n", b"\n", b"\r", b" ", b"*", b"$", b"1:*", b"1,2",
    b"BODY[1.HEADER.FIELDS (TO)]", b"FLAGS", b"\\Seen", b"INBOX", b"&AOQ-", b"&", b"\xff",
    b"\x00", b"1-Feb-2024", b'"01-Feb-2024 10:00:00 +0100"', b"CHARSET ", b"RETURN (SAVE) ",
    b"x" * 150,
]  # fmt: skip

LIMITS = dict(
    max_line_length=120,
    max_literal_size=40,
    max_append_size=200,
    max_command_size=400,
    max_depth=5,
    max_sequence_ranges=4,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=30), max_size=60),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
)
def test_property_random_bytes_only_raise_parse_errors(
    pieces: list[bytes], cuts: list[int]
) -> None:
    wire = b"".join(pieces)
    bound = (
        LIMITS["max_command_size"] + LIMITS["max_append_size"] + LIMITS["max_line_length"] + 2 + 64
    )
    parser = Parser(**LIMITS)  # type: ignore[arg-type]
    points = sorted({c for c in cuts if c < len(wire)})
    for start, end in zip([0, *points], [*points, len(wire)], strict=True):
        parser.receive_data(wire[start:end])
        while True:
            try:
                event = parser.next_event()
            except ParseError as exc:
                assert exc.response().endswith(b"\r\n")
                continue
            if event is None:
                break
            # Drive the modes as a server would.
            if isinstance(event, Idle):
                parser.expect_done(event.tag)
            elif isinstance(event, Authenticate) and event.initial_response is None:
                parser.expect_sasl_response(event.tag)
        assert parser.buffered_size <= bound
    # Whatever came before, a fresh line after a CRLF is parsed again (unless a
    # literal or an over-long line is still being skipped).
    parser.receive_data(b"\r\nz NOOP\r\n")
    drain(parser)
    assert parser.buffered_size <= bound


def test_property_tests_cover_resync_after_garbage() -> None:
    # A concrete case of the property: garbage, then a good command.
    parser = Parser(**LIMITS)  # type: ignore[arg-type]
    parser.receive_data(b'\xff\x00 {3+}\r\n)))\r\n"unterminated\r\n* (\r\nz NOOP\r\n')
    events = drain(parser)
    assert events[-1] == Noop("z")
    assert all(isinstance(e, ParseError) for e in events[:-1])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(utf8=st.booleans(), data=st.data())
def test_property_mutated_commands_only_raise_parse_errors(utf8: bool, data: st.DataObject) -> None:
    # Valid commands with a few bytes deleted, inserted or changed reach deep
    # into the grammar; they parse or give a ParseError, and the parser goes on.
    batch = data.draw(st.lists(commands(utf8), min_size=1, max_size=3))
    wire = bytearray(b"".join(w + b"\r\n" for w, _ in batch))
    specials = [b" ", b"(", b")", b"{", b'"', b"\\", b"*", b"\r\n", b"\xff", b"[", b"<", b"0"]
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(wire)))
        op = data.draw(st.integers(0, 2))
        if op == 0:
            del wire[i : i + 1]
        elif op == 1:
            wire[i:i] = data.draw(st.sampled_from(specials))
        elif i < len(wire):
            wire[i] = data.draw(st.integers(0, 255))
    parser = Parser(utf8_enabled=utf8)
    parser.receive_data(bytes(wire) + b"\r\nz NOOP\r\n")
    drain(parser)
