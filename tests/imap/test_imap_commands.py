"""IMAP commands one by one, with Python's imaplib and a raw client, over loopback."""

from __future__ import annotations

import imaplib
import re

import pytest

from conftest import PASSWORD

from .conftest import Mailbox
from .imap_raw import RawIMAP

MULTIPART = (
    'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n',
    "preamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nthe text part\r\n"
    '--b1\r\nContent-Type: application/octet-stream; name="a.bin"\r\n'
    "Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment\r\n\r\n"
    "AAECAwQF\r\n--b1--\r\n",
)


def raw_login(mailbox: Mailbox) -> RawIMAP:
    c = RawIMAP(mailbox.server.imaps_port, tls=mailbox.server.client_tls())
    c.ok(f'LOGIN "{mailbox.address}" "{PASSWORD}"')
    return c


def test_capability_and_greeting(mailbox: Mailbox) -> None:
    c = RawIMAP(mailbox.server.imap_port)
    assert c.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2")
    caps = c.ok("CAPABILITY")[0].split()
    # Before TLS: no password may be sent (RFC 9051 6.2.3, RFC 8314).
    assert b"STARTTLS" in caps and b"LOGINDISABLED" in caps and b"AUTH=PLAIN" not in caps
    _, tagged = c.command(f'LOGIN "{mailbox.address}" "{PASSWORD}"')
    assert b"NO [PRIVACYREQUIRED]" in tagged
    _, tagged = c.command("AUTHENTICATE PLAIN AGFiYwBkZWY=")
    assert b"NO [PRIVACYREQUIRED]" in tagged
    c.starttls(mailbox.server.client_tls())
    caps = c.ok("CAPABILITY")[0].split()
    for cap in (b"IDLE", b"UIDPLUS", b"MOVE", b"NAMESPACE", b"ID", b"ENABLE", b"LITERAL+",
                b"SPECIAL-USE", b"LIST-EXTENDED", b"LIST-STATUS", b"ESEARCH", b"CONDSTORE",
                b"QRESYNC", b"UNSELECT", b"SASL-IR", b"AUTH=PLAIN"):  # fmt: skip
        assert cap in caps, cap
    assert b"STARTTLS" not in caps and b"LOGINDISABLED" not in caps
    assert c.ok("NOOP") == []
    assert c.ok('ID ("name" "test")')[0].startswith(b'* ID ("name" "pimail"')
    _, tagged = c.command("SELECT INBOX")
    assert b" BAD" in tagged  # not logged in
    c.ok(f'LOGIN "{mailbox.address}" "{PASSWORD}"')
    c.ok("LOGOUT")
    c.close()


def test_starttls_discards_pipelined_plaintext(mailbox: Mailbox) -> None:
    """CVE-2011-0411: commands sent in the clear after STARTTLS must not run."""
    c = RawIMAP(mailbox.server.imap_port)
    c.send(f'a STARTTLS\r\nb LOGIN "{mailbox.address}" "{PASSWORD}"\r\n'.encode())
    assert c.line().startswith(b"a OK")
    c.sock = mailbox.server.client_tls().wrap_socket(c.sock, server_hostname="localhost")
    c.file = c.sock.makefile("rb")
    # Had "b LOGIN" run, we would be logged in and see its tagged reply now.
    untagged, tagged = c.command("NOOP")
    assert untagged == [] and tagged.startswith(b"t1 OK")
    _, tagged = c.command("SELECT INBOX")
    assert b" BAD" in tagged
    c.close()


def test_login_failures_and_sasl(mailbox: Mailbox) -> None:
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imaplib.IMAP4_SSL(
            "localhost", mailbox.server.imaps_port, ssl_context=mailbox.server.client_tls()
        ).login(mailbox.address, "wrong")
    tls = mailbox.server.client_tls()
    c = RawIMAP(mailbox.server.imaps_port, tls=tls)
    import base64

    token = base64.b64encode(f"\0{mailbox.address}\0{PASSWORD}".encode()).decode()
    c.ok(f"AUTHENTICATE PLAIN {token}")  # SASL-IR (RFC 4959)
    c.close()
    c = RawIMAP(mailbox.server.imaps_port, tls=tls)
    c.send(b"a AUTHENTICATE PLAIN\r\n")
    assert c.line() == b"+ \r\n"
    c.send(token.encode() + b"\r\n")
    assert c.line().startswith(b"a OK")
    c.close()
    # Acting as somebody else (authzid) is refused.
    c = RawIMAP(mailbox.server.imaps_port, tls=tls)
    other = base64.b64encode(f"admin@example.org\0{mailbox.address}\0{PASSWORD}".encode())
    _, tagged = c.command(b"AUTHENTICATE PLAIN " + other)
    assert b"NO" in tagged
    c.close()


def test_select_and_fetch_items(mailbox: Mailbox) -> None:
    mailbox.deliver("plain one", "line one\r\nline two\r\n")
    mailbox.deliver("multi", MULTIPART[1], extra=MULTIPART[0])
    c = raw_login(mailbox)
    untagged = c.ok("SELECT INBOX")
    text = b"".join(untagged)
    assert b"* 2 EXISTS" in text and b"* 2 RECENT" in text
    assert re.search(rb"\* OK \[UIDVALIDITY \d+\]", text)
    assert b"* OK [UIDNEXT 3]" in text and b"[PERMANENTFLAGS (" in text
    lines = c.ok("FETCH 1:2 (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)")
    assert lines[0].startswith(b"* 1 FETCH (UID 1 FLAGS (\\Recent) RFC822.SIZE ")
    assert (
        b'ENVELOPE ("Fri, 27 Nov 2026 10:00:00 +0000" "plain one" (("Ann Example" NIL "ann"'
        in (lines[0])
    )
    bs = c.ok("FETCH 2 BODYSTRUCTURE")[0]
    # Sizes count the part's octets; the CRLF before a boundary belongs to the boundary.
    assert b'("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 13 0' in bs
    assert b'"APPLICATION" "OCTET-STREAM" ("NAME" "a.bin") NIL NIL "BASE64" 8' in bs
    assert b'"MIXED" ("BOUNDARY" "b1")' in bs
    # Sections, partials, PEEK does not set \Seen, BODY[] does.
    part = c.ok("FETCH 2 (BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[]<0.10>)")[0]
    assert b"BODY[1] {13}\r\nthe text part" in part
    assert b"BODY[2.MIME] {" in part and b"Content-Disposition: attachment" in part
    assert b"BODY[]<0> {10}\r\nReturn-Pat" in part
    assert b"\\Seen" not in c.ok("FETCH 2 FLAGS")[0]
    binary = c.ok("FETCH 2 (BINARY.PEEK[2] BINARY.SIZE[2])")[0]
    assert b"BINARY[2] ~{6}\r\n\x00\x01\x02\x03\x04\x05" in binary and b"BINARY.SIZE[2] 6" in binary
    body = c.ok("FETCH 1 (BODY[TEXT])")[0]
    assert b"BODY[TEXT] {20}\r\nline one\r\nline two\r\n" in body
    assert b"\\Seen" in body  # the side effect is reported in the same response
    fields = c.ok("UID FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[0]
    assert fields.endswith(b"BODY[HEADER.FIELDS (SUBJECT)] {22}\r\nSubject: plain one\r\n\r\n)\r\n")
    _, tagged = c.command("FETCH 9 FLAGS")
    assert b"BAD" in tagged  # beyond the mailbox
    c.close()


def test_store_flags_and_keywords(mailbox: Mailbox) -> None:
    for i in range(3):
        mailbox.deliver(f"m{i}")
    m = mailbox.login()
    typ, data = m.store("1:2", "+FLAGS", "(\\Flagged $Important)")
    assert typ == "OK" and b"\\Flagged $Important" in data[0]
    typ, data = m.store("2", "-FLAGS", "(\\Flagged)")
    assert b"(FLAGS ($Important" in data[0]
    typ, data = m.store("3", "FLAGS.SILENT", "(\\Answered)")
    assert data == [None]
    typ, data = m.fetch("1:3", "(FLAGS)")
    flags = [re.search(rb"FLAGS \(([^)]*)\)", d).group(1) for d in data]
    assert set(flags[0].split()) == {b"\\Flagged", b"$Important", b"\\Recent"}
    assert set(flags[2].split()) == {b"\\Answered", b"\\Recent"}
    m.logout()
    # The keyword survives in the Maildir file name.
    names = [p.name for p in mailbox.server.messages(mailbox.address)]
    assert any(n.endswith(":2,Fa") for n in names)


def test_condstore_unchangedsince(mailbox: Mailbox) -> None:
    mailbox.deliver("a")
    mailbox.deliver("b")
    c = raw_login(mailbox)
    c.ok("ENABLE CONDSTORE")
    text = b"".join(c.ok("SELECT INBOX"))
    modseq = int(re.search(rb"HIGHESTMODSEQ (\d+)", text).group(1))
    lines = c.ok("FETCH 1:2 (MODSEQ)")
    assert all(b"MODSEQ (" in line for line in lines)
    c.ok("STORE 1 +FLAGS (\\Seen)")
    _, tagged = c.command(f"STORE 1:2 (UNCHANGEDSINCE {modseq}) +FLAGS (\\Flagged)")
    assert b"[MODIFIED 1]" in tagged
    lines = c.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq})")
    assert len(lines) == 2 and all(b"MODSEQ" in line for line in lines)
    c.close()


def test_search(mailbox: Mailbox) -> None:
    mailbox.deliver("Quarterly report", "The budget needle is here.\r\n")
    mailbox.deliver("Lunch", "Nothing to see.\r\n")
    mailbox.deliver(
        "Re: Quarterly report",
        "<p>Another <b>needle</b></p>\r\n",
        extra="Content-Type: text/html\r\nX-Custom: marker-7\r\n",
    )
    m = mailbox.login()
    m.store("2", "+FLAGS", "(\\Seen)")

    def search(*criteria: str) -> list[int]:
        typ, data = m.search(None, *criteria)
        assert typ == "OK"
        return [int(x) for x in data[0].split()]

    assert search("ALL") == [1, 2, 3]
    assert search("TEXT", "needle") == [1, 3]
    assert search("BODY", "budget") == [1]
    assert search("SUBJECT", "quarterly") == [1, 3]
    assert search("FROM", "ann@remote") == [1, 2, 3]
    assert search("SEEN") == [2] and search("UNSEEN") == [1, 3]
    assert search("OR", "SUBJECT", "lunch", "BODY", "budget") == [1, 2]
    assert search("NOT", "SUBJECT", "lunch") == [1, 3]
    assert search("HEADER", "X-Custom", "marker") == [3]
    assert search("LARGER", "10", "SMALLER", "100000") == [1, 2, 3]
    assert search("SENTON", "27-Nov-2026") == [1, 2, 3]
    assert search("2:3") == [2, 3]
    _typ, data = m.uid("SEARCH", "UID", "2:*")
    assert data[0].split() == [b"2", b"3"]
    # ESEARCH (RFC 4731) and SEARCHRES (RFC 5182).
    raw = RawIMAP(mailbox.server.imaps_port, tls=mailbox.server.client_tls())
    raw.ok(f'LOGIN "{mailbox.address}" "{PASSWORD}"')
    raw.ok("SELECT INBOX")
    line = raw.ok("SEARCH RETURN (MIN MAX COUNT ALL) TEXT needle")[0]
    assert line == b'* ESEARCH (TAG "t3") MIN 1 MAX 3 COUNT 2 ALL 1,3\r\n'
    assert raw.ok("UID SEARCH RETURN (SAVE) SUBJECT quarterly") == []
    line = raw.ok("UID FETCH $ (UID)")
    assert [re.search(rb"UID (\d+)", x).group(1) for x in line] == [b"1", b"3"]
    raw.close()
    m.logout()


def test_copy_move_expunge(mailbox: Mailbox) -> None:
    for i in range(4):
        mailbox.deliver(f"m{i}")
    m = mailbox.login()
    typ, data = m.copy("1:2", "Archive")
    assert typ == "OK" and re.match(rb"\[COPYUID \d+ 1:2 1(,|:)2\]", data[0])
    typ, data = m.copy("1", "Nowhere")
    assert typ == "NO" and b"TRYCREATE" in data[0]
    typ, data = m.uid("MOVE", "3", "Trash")
    assert typ == "OK"
    typ, data = m.search(None, "ALL")
    assert data[0].split() == [b"1", b"2", b"3"]
    m.store("1", "+FLAGS", "(\\Deleted)")
    typ, data = m.expunge()
    assert data[-1] == b"1"  # (imaplib also keeps the EXPUNGE that MOVE caused)
    typ, data = m.status("Archive", "(MESSAGES UIDNEXT)")
    assert b"MESSAGES 2 UIDNEXT 3" in data[0]
    typ, data = m.status("Trash", "(MESSAGES)")
    assert b"MESSAGES 1" in data[0]
    m.store("1", "+FLAGS", "(\\Deleted)")
    m.close()  # CLOSE expunges silently
    m.select("INBOX")
    typ, data = m.search(None, "ALL")
    assert data[0].split() == [b"1"]
    m.logout()


def test_append(mailbox: Mailbox) -> None:
    m = mailbox.login(select=None)
    msg = b"Subject: appended\r\nFrom: me@example.org\r\n\r\nbody\r\n"
    typ, data = m.append("Drafts", "(\\Draft \\Seen)", '"01-Feb-2025 10:00:00 +0100"', msg)
    assert typ == "OK" and re.search(rb"\[APPENDUID \d+ 1\]", data[0])
    typ, data = m.append("Nope", None, None, msg)
    assert typ == "NO" and b"TRYCREATE" in data[0]
    m.select("Drafts")
    typ, data = m.fetch("1", "(FLAGS INTERNALDATE BODY.PEEK[])")
    assert b"01-Feb-2025 09:00:00 +0000" in data[0][0]
    assert data[0][1] == msg
    m.logout()


@pytest.mark.parametrize("stray", [b" folded: first\r\n", b"\tone\r\n two\r\n"])
def test_header_that_starts_folded(mailbox: Mailbox, stray: bytes) -> None:
    """A header whose first line is a continuation (nothing to continue, RFC
    5322 2.2.3): the fields after it are the header still, for ENVELOPE,
    HEADER.FIELDS and BODY[TEXT] as for the webmail (Python's email)."""
    msg = stray + b"Subject: after a stray line\r\nFrom: Ann <ann@remote.test>\r\n\r\nbody\r\n"
    m = mailbox.login(select=None)
    assert m.append("INBOX", None, None, msg)[0] == "OK"
    m.select("INBOX")
    typ, data = m.fetch("1", "(ENVELOPE BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[TEXT])")
    assert typ == "OK"
    assert b'ENVELOPE (NIL "after a stray line" (("Ann" NIL "ann" "remote.test"))' in data[0][0]
    assert data[0][1] == b"Subject: after a stray line\r\n\r\n"
    assert data[1][1] == b"body\r\n"
    m.logout()


def test_mailbox_management_and_list(mailbox: Mailbox) -> None:
    m = mailbox.login(select=None)
    assert m.create("Projects/2026/Q1")[0] == "OK"
    assert m.create("Projects")[0] == "NO"  # exists (created as a parent)
    _, data = m.list('""', "Projects/%")
    assert data == [b'(\\HasChildren) "/" "Projects/2026"']
    _, data = m.list('""', "*")
    names = [d.rsplit(b'"/" ', 1)[1] for d in data]
    assert b'"Projects/2026/Q1"' in names and b'"INBOX"' in names
    assert any(b"\\Sent" in d and d.endswith(b'"Sent"') for d in data)
    assert m.rename("Projects", "Work")[0] == "OK"
    _typ, data = m.list('""', "Work/*")
    assert len(data) == 2
    assert m.delete("Work/2026/Q1")[0] == "OK"
    assert m.delete("INBOX")[0] == "NO"
    assert m.subscribe("Work")[0] == "OK"
    _typ, data = m.lsub('""', "*")
    assert b'"Work"' in b" ".join(data)
    raw = RawIMAP(mailbox.server.imaps_port, tls=mailbox.server.client_tls())
    raw.ok(f'LOGIN "{mailbox.address}" "{PASSWORD}"')
    lines = raw.ok('LIST (SPECIAL-USE) "" "*"')
    assert len(lines) == 5 and all(b"\\HasNoChildren \\" in x for x in lines)
    lines = raw.ok('LIST "" "INBOX" RETURN (STATUS (MESSAGES UNSEEN))')
    assert lines[1] == b'* STATUS "INBOX" (MESSAGES 0 UNSEEN 0)\r\n'
    assert raw.ok('LIST "" ""') == [b'* LIST (\\Noselect) "/" ""\r\n']
    assert raw.ok("NAMESPACE") == [b'* NAMESPACE (("" "/")) NIL NIL\r\n']
    raw.close()
    m.logout()


@pytest.mark.parametrize(
    "name",
    ["../other", "a/../../b", "%", "a*b", "tab\there", "a//b", "/lead", "..", "/", "a/", "a&Jjo"],
)
def test_unsafe_mailbox_names_refused(mailbox: Mailbox, name: str) -> None:
    # Syntactically valid names the server will not take: NO [CANNOT], not BAD
    # (BAD is for syntax, RFC 9051 7.1.3); CREATE and RENAME alike.
    c = raw_login(mailbox)
    _, tagged = c.command(b'CREATE "' + name.encode() + b'/"' if name == "a/" else
                          b'CREATE "' + name.encode() + b'"')  # fmt: skip
    assert tagged.startswith(b"t2 NO [CANNOT]"), tagged
    _, tagged = c.command(b'RENAME Archive "' + name.encode() + b'"')
    assert tagged.startswith(b"t3 NO [CANNOT]"), tagged
    c.close()
    root = mailbox.server.maildir(mailbox.address)
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == [
        ".Archive", ".Drafts", ".Junk", ".Sent", ".Trash",
    ]  # fmt: skip


def test_cannot_reach_another_users_mail(mailbox: Mailbox, imap_server) -> None:
    other = Mailbox(imap_server)
    other.deliver("private")
    c = raw_login(mailbox)
    user = other.address.split("@")[0]
    for name in (f"../{user}", f"../../example.org/{user}", f"~{user}", f"/{user}/INBOX",
                 f"#users/{user}", f"..{user}"):  # fmt: skip
        _, tagged = c.command(f'SELECT "{name}"')
        assert b" NO" in tagged, name
        _, tagged = c.command(f'STATUS "{name}" (MESSAGES)')
        assert b" NO" in tagged, name
    lines = c.ok('LIST "" "*"')
    assert not any(user.encode() in line for line in lines)
    c.close()


def test_unicode_mailbox_names(mailbox: Mailbox) -> None:
    c = raw_login(mailbox)
    c.ok('CREATE "Entw&APw-rfe"')  # modified UTF-7 for a rev1 client: "Entwürfe"
    assert b'"Entw&APw-rfe"' in b"".join(c.ok('LIST "" "Entw*"'))
    c.ok("ENABLE UTF8=ACCEPT")
    lines = c.ok('LIST "" "Entw*"')
    assert "Entwürfe".encode() in lines[0]
    c.close()
    assert (mailbox.server.maildir(mailbox.address) / ".Entwürfe").is_dir()


def test_uid_expunge_and_imap4rev2(mailbox: Mailbox) -> None:
    for i in range(3):
        mailbox.deliver(f"x{i}")
    c = raw_login(mailbox)
    assert c.ok("ENABLE IMAP4rev2") == [b"* ENABLED IMAP4rev2\r\n"]
    text = b"".join(c.ok("SELECT INBOX"))
    assert b"RECENT" not in text  # IMAP4rev2 has no \Recent (RFC 9051 E.)
    c.ok("STORE 1:3 +FLAGS (\\Deleted)")
    # UID EXPUNGE (RFC 4315) removes only the UIDs named, of those marked \Deleted.
    lines = c.ok("UID EXPUNGE 2")
    assert lines == [b"* 2 EXPUNGE\r\n"]
    assert len(c.ok("FETCH 1:* (UID)")) == 2
    c.close()
