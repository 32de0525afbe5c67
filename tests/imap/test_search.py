"""IMAP SEARCH string keys (RFC 9051 6.4.4, RFC 3501 6.4.4) over real sockets, and
the analysis behind them (store/analyze.py, store/textindex.py).

- Any content is analysed and searchable: raw 8-bit header fields, bodies in
  undeclared, mis-declared and unknown charsets, NULs (delivered over SMTP with
  8BITMIME); SEARCH never answers SERVERBUG; a message whose analysis fails is
  marked and skipped and the rest of its batch commits.
- String keys match substrings, case-insensitively ("the field contains the
  specified string"): TEXT (every header field and the body), BODY, SUBJECT,
  FROM, TO, CC, BCC, HEADER, with NOT and OR, and the CHARSET argument.
- A model check: a seeded set of generated messages and queries, the server's
  answers compared with a brute-force reference over the messages' logical text.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import html
import random
import re
import smtplib
import sqlite3
from collections.abc import Callable
from pathlib import Path

from conftest import PASSWORD, PimailServer

from .conftest import Mailbox
from .imap_raw import RawIMAP


def raw_login(mailbox: Mailbox, select: str = "INBOX") -> RawIMAP:
    c = RawIMAP(mailbox.server.imaps_port, tls=mailbox.server.client_tls())
    c.ok(f'LOGIN "{mailbox.address}" "{PASSWORD}"')
    c.ok(f"SELECT {select}")
    return c


def literal(text: str) -> bytes:
    """An IMAP literal (RFC 9051 4.3, non-synchronizing: RFC 7888 LITERAL+)."""
    data = text.encode()
    return b"{%d+}\r\n%s" % (len(data), data)


def search(c: RawIMAP, *criteria: bytes | str, charset: bool = True) -> list[int]:
    """UID SEARCH [CHARSET UTF-8] criteria: the UIDs, or AssertionError if not OK."""
    words = [w.encode() if isinstance(w, str) else w for w in criteria]
    command = b"UID SEARCH " + (b"CHARSET UTF-8 " if charset else b"") + b" ".join(words)
    untagged, tagged = c.command(command)
    assert b" OK" in tagged[:12], (command, tagged)
    assert b"SERVERBUG" not in tagged
    found = [line for line in untagged if line.startswith(b"* SEARCH")]
    assert len(found) == 1, untagged
    return [int(n) for n in found[0].split()[2:]]


def smtp_send(server: PimailServer, rcpt: str, message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as s:
        s.ehlo()
        assert s.has_extn("8bitmime")
        s.sendmail("sender@remote.test", [rcpt], message, mail_options=["BODY=8BITMIME"])


def index_states(server: PimailServer) -> list[int]:
    con = sqlite3.connect(server.data_dir / "index.db")
    try:
        return [r[0] for r in con.execute("SELECT analysed FROM messages ORDER BY id")]
    finally:
        con.close()


# -- any content is analysed and searchable ----------------------------------------------

# (header octets, body octets, a word of each to find): every header field holds raw
# 8-bit octets; the bodies are in undeclared, mis-declared and unknown charsets.
HOSTILE = [
    (  # Big5 everywhere, nothing declared (the corpus case that broke the index)
        b"Subject: \xb3\xf8\xa7i big5subject\r\nFrom: \xa4\xfd\xa4p\xa9\xfa <wang@remote.test>\r\n"
        b"To: \xb1i\xa4T <zhang@example.org>\r\nX-Custom: \xb4\xfa\xb8\xd5 customvalue\r\n",
        b"\xb3o\xacO\xa4@\xbd\xd5 big5body \xa4\xe5\xa5\xbb\r\n",
    ),
    (  # Big5 declared in the body: the raw header is read in it too
        b"Subject: \xb3\xf8\xa7i declaredbig5\r\nFrom: sender@remote.test\r\n"
        b"Content-Type: text/plain; charset=big5\r\n",
        "報告內容 big5declaredbody".encode("big5"),
    ),
    (  # Shift_JIS declared
        b"Subject: sjis\r\nContent-Type: text/plain; charset=Shift_JIS\r\n",
        "日本語のテキスト sjisbody".encode("shift_jis"),
    ),
    (  # KOI8-R declared, headers in KOI8-R raw
        "Subject: Привет koi8subject\r\nFrom: Иван <ivan@remote.test>\r\n".encode("koi8-r")
        + b"Content-Type: text/plain; charset=koi8-r\r\n",
        "Съешь же ещё этих мягких французских булок koi8body".encode("koi8-r"),
    ),
    (  # latin-1, not declared at all
        "Subject: Größe latin1subject\r\nFrom: Jörg Müller <jm@remote.test>\r\n".encode("latin-1"),
        "Die Größe des Gepäcks latin1body".encode("latin-1"),
    ),
    (  # declared UTF-8 but latin-1 octets (invalid UTF-8)
        b"Subject: misdeclared\r\nContent-Type: text/plain; charset=utf-8\r\n",
        "Ça coûte très cher misdeclaredbody \xff\xfe".encode("latin-1"),
    ),
    (  # an unknown charset, and one that is a Python codec but no charset
        b"Subject: unknowncharset\r\nContent-Type: text/plain; charset=x-unknown\r\n",
        "ünknown unknownbody".encode(),
    ),
    (
        b"Subject: escapecodec\r\nContent-Type: text/plain; charset=unicode_escape\r\n",
        b"\\ud800 \\x00 escapebody",
    ),
    (  # NULs in a header and the body, and an encoded word naming a bad charset
        b"Subject: nul\x00subject =?x-bogus?q?w=FFord?= =?utf-8?b?!!!?=\r\n",
        b"nul\x00body \x00\x00 nulbody",
    ),
    (  # UTF-8 declared in an RFC 2047 word whose octets are not UTF-8
        b"Subject: =?utf-8?q?bad=FF=FEutf8word?=\r\n",
        b"badutf8body\r\n",
    ),
    (  # RFC 1468 ISO-2022-JP: 7-bit octets that are not ASCII text, raw in the subject too
        "Subject: 件名 jissubject\r\n".encode("iso2022_jp")
        + b"Content-Type: text/plain; charset=ISO-2022-JP\r\n",
        "漢字の本文 iso2022body".encode("iso2022_jp"),
    ),
]


def test_any_content_is_analysed_and_searchable(mailbox: Mailbox) -> None:
    server = mailbox.server
    for i, (head, body) in enumerate(HOSTILE):
        message = (
            head + b"Message-ID: <hostile%d@remote.test>\r\nDate: Fri, 27 Nov 2026 10:00:00 +0000"
            b"\r\n\r\n" % i + body + b"\r\n"
        )
        smtp_send(server, mailbox.address, message)
    mailbox.deliver("plain", "an ordinary message\r\n")
    c = raw_login(mailbox)
    everything = list(range(1, len(HOSTILE) + 2))
    assert search(c, "ALL", charset=False) == everything
    # Each of them was analysed (the index holds its text), none failed.
    assert search(c, "TEXT", "message-id") == everything
    assert index_states(server)[-len(everything) :] == [1] * len(everything)
    # Words from each, where the octets can be decoded.
    for i, word in enumerate(
        ["big5body", "big5declaredbody", "sjisbody", "koi8body", "latin1body",
         "misdeclaredbody", "unknownbody", "escapebody", "nulbody", "badutf8body", "iso2022body"]
    ):  # fmt: skip
        assert search(c, "BODY", word, charset=False) == [i + 1], word
        assert search(c, "TEXT", word.upper(), charset=False) == [i + 1], word
    assert search(c, "SUBJECT", "big5subject") == [1]
    assert search(c, "HEADER", "X-Custom", "customvalue") == [1]
    assert search(c, "TEXT", "X-CUSTOM:") == [1]
    assert search(c, "FROM", "wang@remote") == [1]
    assert search(c, "TO", "zhang@example") == [1]
    # Declared charsets decode the text itself, and the raw header with it.
    assert search(c, "BODY", literal("報告內容")) == [2]
    assert search(c, "SUBJECT", literal("報告")) == [2]
    assert search(c, "BODY", literal("日本語")) == [3]
    assert search(c, "BODY", literal("французских")) == [4]
    assert search(c, "SUBJECT", literal("ПРИВЕТ")) == [4]
    assert search(c, "FROM", literal("иван")) == [4]
    # Undeclared and mis-declared 8-bit text reads as cp1252 / latin-1.
    assert search(c, "BODY", literal("GRÖSSE")) == [5]  # case folding: ß is ss
    assert search(c, "SUBJECT", literal("größe")) == [5]
    assert search(c, "FROM", literal("jörg müller")) == [5]
    assert search(c, "BODY", literal("très cher")) == [6]
    assert search(c, "BODY", literal("ünknown")) == [7]
    assert search(c, "BODY", literal("漢字の本文")) == [11]
    assert search(c, "SUBJECT", literal("件名")) == [11]
    # Nothing in any of them makes a key fail: every kind of key, whole mailbox.
    for key in (
        ["TEXT", literal("\u00e9")], ["BODY", "x"], ["SUBJECT", "s"], ["FROM", "@"],
        ["TO", "e"], ["CC", "a"], ["BCC", "b"], ["HEADER", "X-Custom", '""'],
        ["NOT", "TEXT", "zz"], ["OR", "BODY", "big", "SUBJECT", literal("Прив")],
    ):  # fmt: skip
        search(c, *key)
    assert search(c, "HEADER", "X-Custom", '""') == [1]  # RFC 9051 6.4.4: has the field
    c.close()


def test_search_right_after_delivery_analyses_the_rest(mailbox: Mailbox) -> None:
    """A search does not wait for the background analysis: it finishes it first,
    also when the batch holds raw 8-bit headers (the batch that used to roll back)."""
    server = mailbox.server
    for i in range(40):
        head = (
            b"Subject: \xb3\xf8\xa7i %d batchword\r\n" % i if i % 3 == 0 else b"Subject: %d\r\n" % i
        )
        smtp_send(server, mailbox.address, head + b"\r\nbatch body %d\r\n" % i)
    c = raw_login(mailbox)
    assert search(c, "SUBJECT", "batchword") == list(range(1, 41, 3))
    assert search(c, "BODY", '"batch body"') == list(range(1, 41))
    c.close()


# -- a message whose analysis fails ------------------------------------------------------


def test_a_failing_analysis_is_marked_and_skipped(tmp_path: Path, monkeypatch) -> None:
    """Injected failures (no real message is known to break the analysis): the
    failing message is marked analysed = 2, indexed by the fallback where that
    works, never picked again; the other messages of its batch commit."""
    from pimail import config
    from pimail.auth.accounts import Directory
    from pimail.db import open_main
    from pimail.store import analyze, ops, textindex
    from pimail.store.spool import Incoming
    from pimail.store.store import Store

    settings = config.load(None, tmp_path / "data")
    directory = Directory(open_main(settings.db_path))
    directory.add_domain("example.org")
    alice = directory.add_account("alice@example.org", "x")
    store = Store(settings, Directory(open_main(settings.db_path)))
    store.open()
    real_analyze, real_fallback = analyze.analyze, analyze.fallback_text

    def failing_analyze(data: bytes):
        if b"POISON" in data:
            raise RuntimeError("injected")
        return real_analyze(data)

    def failing_fallback(data: bytes):
        if b"DEADLY" in data:
            raise RuntimeError("injected too")
        return real_fallback(data)

    monkeypatch.setattr(ops, "analyze", failing_analyze)
    monkeypatch.setattr(ops, "fallback_text", failing_fallback)
    bodies = ["fine one", "POISON fallbackword", "fine two", "POISON DEADLY", "fine three"]

    async def deliver() -> None:
        for body in bodies:
            message = Incoming(store.incoming_dir)
            message.write(f"Subject: s\r\n\r\n{body}\r\n".encode())
            await store.deliver(message, [alice])

    try:
        asyncio.run(deliver())
        con = sqlite3.connect(settings.index_path, isolation_level=None)
        con.execute("UPDATE messages SET analysed = 0")  # whatever the background did
        assert store.analyse_pending(32) == 5  # one batch, all of it
        assert store.analyse_pending(32) == 0  # nothing is retried
        states = [r[0] for r in con.execute("SELECT analysed FROM messages ORDER BY uid")]
        assert states == [1, 2, 1, 2, 1]
        mailbox_id = con.execute("SELECT mailbox_id FROM messages LIMIT 1").fetchone()[0]
        uids = {i: u for i, u in con.execute("SELECT id, uid FROM messages")}
        found = textindex.text_ids(con, mailbox_id, "fine", "body")
        assert sorted(uids[i] for i in found) == [1, 3, 5]
        # The fallback indexed the first failure's text; the second has none.
        assert [uids[i] for i in textindex.text_ids(con, mailbox_id, "fallbackword", "body")] == [2]
        assert textindex.text_ids(con, mailbox_id, "deadly", "body") == set()
        # APPEND of a message whose analysis fails still stores it.
        inbox = con.execute("SELECT id FROM mailboxes WHERE name = 'INBOX'").fetchone()[0]
        _uv, uid = store.append(inbox, b"Subject: x\r\n\r\nPOISON DEADLY\r\n", [])
        assert uid == 6
        con.close()
    finally:
        store.close()


# -- substrings, case-insensitive, every string key --------------------------------------


def test_string_keys_match_substrings(mailbox: Mailbox) -> None:
    """RFC 9051 6.4.4: "Messages that contain the specified string in the body"
    (BODY), "in the header or body" (TEXT), "in the envelope structure's FROM
    field" and so on: a substring anywhere, case-insensitively."""
    mailbox.deliver(  # 1
        "Quarterly Über report",
        "The code is asdfghjkl and the city is MÜNCHEN.\r\nSecond line here.\r\n",
        extra="X-Header: distinctvalue\r\nCc: Carla Cee <carla@cc.test>\r\n",
    )
    mailbox.deliver(  # 2: encoded words in the subject and a display name, a comment
        "=?utf-8?q?Gr=C3=BC=C3=9Fe_aus?= =?utf-8?b?S8O2bG4=?=",
        "nothing special\r\n",
        extra="Reply-To: =?iso-8859-1?q?J=F6rg_Sch=E4fer?= <js@remote.test> (hidden note)\r\n",
    )
    mailbox.deliver(  # 3: HTML, quoted-printable, an attachment in base64
        "html",
        "--b\r\nContent-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        "<p>Caf=C3=A9 <b>bold</b>word &amp; more</p><script>scriptword()</script>\r\n"
        "--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64"
        "\r\n\r\n"
        + base64.b64encode(b"binaryword inside an attachment").decode()
        + "\r\n--b--\r\n",
        extra='MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n',
    )
    c = raw_login(mailbox)
    # In the middle of words, in either case (ASCII and not).
    assert search(c, "BODY", "sdfghjk") == [1]
    assert search(c, "TEXT", "SDFGHJK") == [1]
    assert search(c, "BODY", literal("münch")) == [1]
    assert search(c, "SUBJECT", literal("üBER")) == [1]
    assert search(c, "SUBJECT", "uarter") == [1]
    # Strings spanning a space and a line end (white space runs are one space).
    assert search(c, "BODY", '"here. second"') == []
    assert search(c, "BODY", literal("münchen. second line")) == [1]
    assert search(c, "BODY", '"is asdf"') == [1]
    # 1- and 2-character strings.
    assert search(c, "BODY", "Q") == []  # "quarterly" is in the subject, not the body
    assert search(c, "TEXT", "Q") == [1]
    assert search(c, "BODY", literal("é")) == [3]
    assert search(c, "BODY", "DF") == [1]
    assert search(c, "TEXT", "@") == [1, 2, 3]
    # TEXT covers every header field, BODY only the body.
    assert search(c, "TEXT", '"X-Header: distinct"') == [1]
    assert search(c, "TEXT", "distinctval") == [1]
    assert search(c, "BODY", "distinctval") == []
    assert search(c, "HEADER", "x-header", "TINCTVAL") == [1]
    assert search(c, "HEADER", "X-Header", '""') == [1]
    assert search(c, "HEADER", "Subject", '""') == [1, 2, 3]
    assert search(c, "HEADER", "X-Nothing", '""') == []
    # RFC 2047 words (RFC 2047 6.2: the space between two words is not text).
    assert search(c, "SUBJECT", literal("GRÜSSE AUS KÖLN")) == []
    assert search(c, "SUBJECT", literal("grüße ausköln")) == [2]
    assert search(c, "SUBJECT", "=?utf-8?") == []
    assert search(c, "HEADER", "Reply-To", literal("jörg schäfer <js@")) == [2]
    assert search(c, "HEADER", "Reply-To", "hidden") == []  # comments are no address
    # FROM, TO, CC: display names and addresses.
    assert search(c, "FROM", '"ann example"') == [1, 2, 3]
    assert search(c, "FROM", "NN@REMOTE.T") == [1, 2, 3]
    assert search(c, "TO", mailbox.address.upper()) == [1, 2, 3]
    assert search(c, "CC", '"carla cee <carla"') == [1]
    assert search(c, "BCC", "a") == []
    # HTML as text: markup and scripts are not text, entities are.
    assert search(c, "BODY", "boldword") == []
    assert search(c, "BODY", '"bold word"') == [3]
    assert search(c, "BODY", '"word & more"') == [3]
    assert search(c, "BODY", "<b>") == []
    assert search(c, "BODY", "scriptword") == []
    assert search(c, "BODY", "binaryword") == []  # an attachment's octets are not text
    # NOT and OR (RFC 9051 6.4.4), and string keys with other keys.
    assert search(c, "NOT", "BODY", "sdfghjk") == [2, 3]
    assert search(c, "OR", "BODY", "sdfghjk", "SUBJECT", "html") == [1, 3]
    assert search(c, "NOT", "OR", "BODY", "sdfghjk", "SUBJECT", "html") == [2]
    assert search(c, "TEXT", "e", "NOT", "SUBJECT", "e") == [3]
    assert search(c, "UID", "2:3", "TEXT", "@") == [2, 3]
    # The CHARSET argument (RFC 9051 6.4.4): strings in it; an unknown one is refused.
    assert search(c, "BODY", literal("CAFÉ")) == [3]
    untagged, tagged = c.command(b"UID SEARCH CHARSET ISO-8859-1 BODY {4+}\r\ncaf\xc9")
    assert b" OK" in tagged and untagged == [b"* SEARCH 3\r\n"]
    _, tagged = c.command(b"UID SEARCH CHARSET X-NO-SUCH TEXT x")
    assert b" NO [BADCHARSET" in tagged
    c.close()


# -- the model check ---------------------------------------------------------------------

WORDS = [
    "alpha", "Beta", "gamma", "delta", "report", "Meeting", "x-ray", "O'Neil", "a&b", "100%",
    "über", "Straße", "naïve", "café", "mañana", "GRÜN", "Ελλάδα", "русский", "日本語", "q?=_x",
]  # fmt: skip
NAMES = ["Ann", "Bob", "Zoë", "Jörg", "Иван", "Smith", "Doe, John", "李"]


def _fold(text: str) -> str:
    """The reference's case-insensitive form (Unicode case folding, one space)."""
    return re.sub(r"\s+", " ", text.casefold())


def _q_word(text: str, charset: str) -> str:
    """An RFC 2047 4.2 "Q" encoded word."""
    safe = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!*+-/")
    out = "".join(
        chr(b) if b in safe else "_" if b == 32 else f"={b:02X}" for b in text.encode(charset)
    )
    return f"=?{charset}?q?{out}?="


def _b_word(text: str, charset: str) -> str:
    return f"=?{charset}?b?{base64.b64encode(text.encode(charset)).decode()}?="


def _encodable(text: str, charset: str) -> bool:
    try:
        text.encode(charset)
    except UnicodeEncodeError:
        return False
    return True


class Generated:
    """One message: its octets, and its logical text (what a reader sees)."""

    def __init__(self, rnd: random.Random, n: int) -> None:
        self.fields: list[tuple[str, str]] = []  # (name, logical value), every header field
        self.body: list[str] = []  # logical text of each text part
        head: list[bytes] = []
        text = self._words(rnd, rnd.randint(3, 25), lines=True)
        charsets = [c for c in ("utf-8", "iso-8859-1", "koi8-r") if _encodable(text, c)]
        charset = rnd.choice(charsets)
        subject = self._words(rnd, rnd.randint(1, 5))
        head.append(b"Subject: " + self._encode_text(rnd, subject, charset) + b"\r\n")
        self.fields.append(("Subject", subject))
        for name, count in (("From", 1), ("To", rnd.randint(1, 2)), ("Cc", rnd.randint(0, 2))):
            if count:
                raw, logical = zip(*(self._address(rnd, n, k) for k in range(count)), strict=True)
                head.append(f"{name}: ".encode() + b", ".join(raw) + b"\r\n")
                self.fields.append((name, ", ".join(logical)))
        if rnd.random() < 0.5:
            tag = self._words(rnd, rnd.randint(1, 3))
            head.append(b"X-Tag: " + self._encode_text(rnd, tag, "utf-8") + b"\r\n")
            self.fields.append(("X-Tag", tag))
        for name, value in (
            ("Date", "Fri, 27 Nov 2026 10:00:00 +0000"),
            ("Message-ID", f"<m{n}@model.test>"),
            ("MIME-Version", "1.0"),
        ):
            head.append(f"{name}: {value}\r\n".encode())
            self.fields.append((name, value))
        body = self._body(rnd, head, text, charset)
        self.octets = b"".join(head) + b"\r\n" + body

    @staticmethod
    def _words(rnd: random.Random, count: int, lines: bool = False) -> str:
        out = []
        for i in range(count):
            out.append(rnd.choice(WORDS))
            if i < count - 1:
                out.append("\r\n" if lines and rnd.random() < 0.2 else " ")
        return "".join(out)

    @staticmethod
    def _encode_text(rnd: random.Random, text: str, charset: str) -> bytes:
        """Unstructured text (RFC 5322 3.2.5): plain, raw 8-bit, or RFC 2047 words."""
        ways = ["raw-utf-8", "b", "q", "b2"]
        if text.isascii():
            ways.append("plain")
        if charset != "utf-8" and _encodable(text, charset):
            ways.append("raw-charset")  # raw octets in the body's declared charset
        way = rnd.choice(ways)
        if way == "plain":
            return text.encode()
        if way == "raw-utf-8":
            return text.encode()
        if way == "raw-charset":
            return text.encode(charset)
        if way == "b2" and len(text) > 1:  # two words, split anywhere (RFC 2047 6.2)
            cut = rnd.randint(1, len(text) - 1)
            return f"{_b_word(text[:cut], 'utf-8')}\r\n {_q_word(text[cut:], 'utf-8')}".encode()
        word = _b_word if way == "b" else _q_word
        cs = "iso-8859-1" if _encodable(text, "iso-8859-1") and rnd.random() < 0.5 else "utf-8"
        return word(text, cs).encode()

    @staticmethod
    def _address(rnd: random.Random, n: int, k: int) -> tuple[bytes, str]:
        addr = f"{rnd.choice(['ann', 'bob', 'zed'])}{n}.{k}@{rnd.choice(['a.test', 'b.test'])}"
        if rnd.random() < 0.3:
            return addr.encode(), addr
        name = rnd.choice(NAMES)
        way = rnd.choice(["quoted", "b", "raw"] + (["plain"] if name.isalpha() else []))
        if way == "plain" and name.isascii():
            raw = name.encode()
        elif way == "quoted" or "," in name:
            raw = f'"{name}"'.encode()
        elif way == "b":
            raw = _b_word(name, "utf-8").encode()
        else:
            raw = name.encode()
        if rnd.random() < 0.3:
            raw += b" (a comment " + rnd.choice(WORDS).encode() + b")"  # RFC 5322 3.2.2
        return raw + f" <{addr}>".encode(), f"{name} <{addr}>"

    def _body(self, rnd: random.Random, head: list[bytes], text: str, charset: str) -> bytes:
        def part(content: str, subtype: str) -> tuple[bytes, bytes]:
            data = content.encode(charset)
            cte = rnd.choice(["8bit", "quoted-printable", "base64"])
            if cte == "quoted-printable":
                data = binascii.b2a_qp(data.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
            elif cte == "base64":
                data = base64.encodebytes(data).replace(b"\n", b"\r\n")
            fields = (
                f"Content-Type: text/{subtype}; charset={charset}\r\n"
                f"Content-Transfer-Encoding: {cte}\r\n"
            )
            return fields.encode(), data

        self.body.append(text)
        if rnd.random() < 0.6:
            fields, data = part(text, "plain")
            head.append(fields)
            for line in fields.decode().splitlines():
                name, _, value = line.partition(": ")
                self.fields.append((name, value))
            return data + b"\r\n"
        # multipart/alternative (RFC 2046 5.1.4): the text and its HTML version.
        self.body.append(text)
        boundary = f"=_b{rnd.randrange(10**6)}"
        value = f'multipart/alternative; boundary="{boundary}"'
        head.append(f"Content-Type: {value}\r\n".encode())
        self.fields.append(("Content-Type", value))
        out = b""
        markup = "<div><p>" + html.escape(text).replace("\r\n", "<br>\r\n") + "</p></div>"
        for content, subtype in ((text, "plain"), (markup, "html")):
            fields, data = part(content, subtype)
            out += f"--{boundary}\r\n".encode() + fields + b"\r\n" + data + b"\r\n"
        return out + f"--{boundary}--\r\n".encode()

    def matches(self, key: str, field: str | None, needle: str) -> bool:
        """The reference: does this message satisfy `key` (TEXT, BODY, or a header
        field's key) for `needle`? RFC 9051 6.4.4, case-insensitively."""
        folded = _fold(needle)
        body = any(folded in _fold(t) for t in self.body)
        if key == "BODY":
            return body
        if key == "TEXT":
            return body or any(folded in _fold(f"{n}: {v}") for n, v in self.fields)
        return any(n.lower() == field.lower() and folded in _fold(v) for n, v in self.fields)


def _needle(rnd: random.Random, messages: list[Generated], key: str, field: str | None) -> str:
    if rnd.random() < 0.25:  # most likely in no message
        return "".join(rnd.choice("abcdeüßλж日 ") for _ in range(rnd.randint(1, 6))).strip() or "z"
    m = rnd.choice(messages)
    if key == "BODY":
        source = rnd.choice(m.body)
    elif key == "TEXT":
        source = rnd.choice(m.body + [f"{n}: {v}" for n, v in m.fields])
    else:
        values = [v for n, v in m.fields if n.lower() == field.lower()] or ["none"]
        source = rnd.choice(values)
    source = re.sub(r"\s+", " ", source)
    length = rnd.choice([1, 2, 3, 4, 6, 9, 14])
    start = rnd.randrange(max(1, len(source) - length + 1))
    needle = source[start : start + length].strip() or "a"
    return rnd.choice([needle, needle.upper(), needle.lower(), needle.swapcase()])


KEYS = [("TEXT", None), ("BODY", None), ("SUBJECT", "Subject"), ("FROM", "From"),
        ("TO", "To"), ("CC", "Cc"), ("HEADER", "X-Tag")]  # fmt: skip


def test_search_equals_a_reference_on_generated_messages(mailbox: Mailbox) -> None:
    """A seeded model check: a few hundred generated messages (charsets, transfer
    encodings, RFC 2047 words, raw 8-bit headers, comments, HTML) and queries
    (substrings in any case, 1-14 characters, NOT, OR, AND); the server's answer
    must equal a brute-force reference over the messages' logical text."""
    rnd = random.Random(20261207)
    messages = [Generated(rnd, n) for n in range(150)]
    m = mailbox.login(select=None)
    for message in messages:
        typ, _ = m.append("INBOX", None, None, message.octets)
        assert typ == "OK"
    m.logout()
    c = raw_login(mailbox)
    uids = list(range(1, len(messages) + 1))

    def simple() -> tuple[bytes, Callable[[Generated], bool], str]:
        key, field = rnd.choice(KEYS)
        needle = _needle(rnd, messages, key, field)
        wire = key.encode() + (b" " + field.encode() if key == "HEADER" else b"")
        return (
            wire + b" " + literal(needle),
            lambda g: g.matches(key, field, needle),
            f"{key} {field or ''} {needle!r}",
        )

    for _ in range(250):
        shape = rnd.random()
        wire, test, label = simple()
        if shape < 0.15:
            wire, label = b"NOT " + wire, "NOT " + label
            test = (lambda t: lambda g: not t(g))(test)
        elif shape < 0.3:
            wire2, test2, label2 = simple()
            wire, label = b"OR " + wire + b" " + wire2, f"OR {label} {label2}"
            test = (lambda a, b: lambda g: a(g) or b(g))(test, test2)
        elif shape < 0.4:
            wire2, test2, label2 = simple()
            wire, label = wire + b" " + wire2, f"{label} {label2}"
            test = (lambda a, b: lambda g: a(g) and b(g))(test, test2)
        expected = [uid for uid, g in zip(uids, messages, strict=True) if test(g)]
        assert search(c, wire) == expected, label
    c.close()
