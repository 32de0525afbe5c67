"""The webmail (pimail.web.mail) over real HTTPS, with mail delivered over real
SMTP: folders and unread counts, lists (paging, sorting, search), reading
(text, sandboxed HTML, remote and inline images, attachments), writing (send,
reply, forward, drafts, through the submission path into the queue), changes
(flags, move, delete, Junk training the filter), and what must be refused:
another user's folders and messages, POSTs without the CSRF token, and
malformed mail that must still render."""

from __future__ import annotations

import base64
import html
import imaplib
import re
import secrets
import smtplib
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import PASSWORD, PimailServer
from dnsserver import DnsServer

from .browser import Browser, Page

DOMAIN = "example.org"
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)")
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, dns_server: DnsServer) -> Iterator[PimailServer]:
    dns_server.servfail.add("foreign.test")  # so that a queued message stays queued
    server = PimailServer(
        tmp_path_factory.mktemp("mail") / "data",
        {"dns": {"nameservers": [dns_server.address]}, "auth": {"failure_delay": 0.05}},
    )
    server.cli("domain", "add", DOMAIN)
    for user in (ALICE, BOB, CAROL):
        server.add_user(user)
    server.start()
    yield server
    server.stop()


# -- helpers --------------------------------------------------------------------------------


def deliver(site: PimailServer, rcpt: str, raw: bytes | str, sender: str = "x@remote.test") -> None:
    data = raw.encode() if isinstance(raw, str) else raw
    with smtplib.SMTP("127.0.0.1", site.smtp_port, timeout=10) as s:
        s.sendmail(sender, [rcpt], data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


def simple(
    subject: str,
    body: str = "Hello.",
    sender: str = "Xavier <x@remote.test>",
    to: str = ALICE,
    extra: str = "",
) -> str:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{secrets.token_hex(6)}@remote.test>\r\n{extra}"
        f"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\n{body}\r\n"
    )


def login(site: PimailServer, user: str) -> Browser:
    b = Browser(f"https://127.0.0.1:{site.https_port}", site.client_tls())
    assert b.login(user, PASSWORD).status == 200
    return b


def folders(site: PimailServer, user: str) -> dict[str, int]:
    """Folder name -> id in the index, for `user`."""
    account_id = site.account_id(user)
    con = sqlite3.connect(site.data_dir / "index.db")
    found = dict(con.execute("SELECT name, id FROM mailboxes WHERE account_id = ?", (account_id,)))
    con.close()
    return found


def uid_of(site: PimailServer, user: str, subject: str, folder: str = "INBOX") -> int:
    for _ in range(50):
        for row in site.index_rows(user, folder):
            if row["hdr_subject"] == subject:
                return int(row["uid"])
        time.sleep(0.1)
    raise AssertionError(f"no message {subject!r} in {user}'s {folder}")


def row_of(site: PimailServer, user: str, subject: str, folder: str = "INBOX") -> sqlite3.Row:
    uid = uid_of(site, user, subject, folder)
    return next(r for r in site.index_rows(user, folder) if r["uid"] == uid)


def message_url(site: PimailServer, user: str, subject: str, folder: str = "INBOX") -> str:
    return f"/mail/{folders(site, user)[folder]}/{uid_of(site, user, subject, folder)}"


def csrf(b: Browser) -> str:
    return b.get("/mail/compose").csrf


def multipart(
    fields: list[tuple[str, str]], files: list[tuple[str, str, str, bytes]] = ()
) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body (RFC 7578): fields, then (field, filename, type, data)."""
    boundary = "----pimail" + secrets.token_hex(12)
    out = b""
    for name, value in fields:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        ).encode()
    for name, filename, ctype, data in files:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}";'
            f' filename="{filename}"\r\nContent-Type: {ctype}\r\n\r\n'
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def compose(
    b: Browser,
    fields: dict[str, str | list[str]],
    files: list[tuple[str, str, str, bytes]] = (),
    action: str = "send",
) -> Page:
    pairs = [("csrf", csrf(b)), ("action", action)]
    for name, value in fields.items():
        pairs += [(name, v) for v in ([value] if isinstance(value, str) else value)]
    body, headers = multipart(pairs, list(files))
    return b.post("/mail/compose", body, headers=headers)


def file_of(site: PimailServer, user: str, subject: str, folder: str = "INBOX") -> bytes:
    row = row_of(site, user, subject, folder)
    base = site.maildir(user, "" if folder == "INBOX" else "." + folder)
    return (base / row["subdir"] / row["filename"]).read_bytes()


def sources(csp: str, directive: str) -> list[str]:
    for part in csp.split(";"):
        name, *values = part.split()
        if name == directive:
            return values
    return []


def bayes_totals(site: PimailServer, user: str) -> tuple[int, int]:
    account_id = site.account_id(user)
    try:
        con = sqlite3.connect(site.data_dir / "bayes.db")
        row = con.execute(
            "SELECT spam, ham FROM totals WHERE account_id = ?", (account_id,)
        ).fetchone()
        con.close()
    except sqlite3.OperationalError:
        return (0, 0)
    return (row[0], row[1]) if row else (0, 0)


def token_count(site: PimailServer, user: str) -> int:
    if not (site.data_dir / "bayes.db").exists():
        return 0
    account_id = site.account_id(user)
    con = sqlite3.connect(site.data_dir / "bayes.db")
    try:
        count = con.execute(
            "SELECT COUNT(*) FROM tokens WHERE account_id = ?", (account_id,)
        ).fetchone()[0]
    except sqlite3.OperationalError:
        count = 0
    con.close()
    return int(count)


# -- folders, lists, search -----------------------------------------------------------------


def test_list_shows_a_delivered_message_and_the_unread_count(site: PimailServer) -> None:
    deliver(
        site, CAROL, simple("Lunch on Friday?", sender="Dana Smith <dana@remote.test>", to=CAROL)
    )
    b = login(site, CAROL)
    page = b.get("/mail")
    inbox = folders(site, CAROL)["INBOX"]
    assert page.status == 200 and page.url.endswith(f"/mail/{inbox}")
    assert "Lunch on Friday?" in page.text and "Dana Smith" in page.text
    assert re.search(r"<span>Inbox</span><span class=\"count\"[^>]*>1</span>", page.text)
    assert '<tr class="unread">' in page.text
    for name in ("Drafts", "Sent", "Junk", "Trash", "Archive"):
        assert f"<span>{name}</span>" in page.text
    assert "style=" not in page.text and not INLINE_SCRIPT.search(page.text)  # the page CSP
    # Opening it marks it \Seen: the count goes.
    url = message_url(site, CAROL, "Lunch on Friday?")
    assert b.get(url).status == 200
    assert "\\Seen" in row_of(site, CAROL, "Lunch on Friday?")["flags"].split()
    assert 'class="count"' not in b.get(f"/mail/{inbox}").text


def test_paging_and_sorting(site: PimailServer) -> None:
    user = f"pager@{DOMAIN}"
    site.add_user(user)
    with smtplib.SMTP("127.0.0.1", site.smtp_port, timeout=30) as s:
        for i in range(120):
            body = "x" * (i * 10)
            sender = f"Sender {chr(65 + i % 26)} <s{i}@remote.test>"
            s.sendmail("x@remote.test", [user], simple(f"Message {i:03d}", body, sender, user))
    b = login(site, user)
    inbox = folders(site, user)["INBOX"]
    first = b.get(f"/mail/{inbox}")
    subjects = re.findall(r">Message (\d{3})<", first.text)
    assert len(subjects) == 50 and subjects[0] == "119"  # newest first
    assert "Page 1 of 3 (120 messages)" in first.text
    third = b.get(f"/mail/{inbox}?page=3")
    assert re.findall(r">Message (\d{3})<", third.text) == [f"{i:03d}" for i in range(19, -1, -1)]
    beyond = b.get(f"/mail/{inbox}?page=99")  # past the end: the last page
    assert beyond.status == 200 and "Page 3 of 3" in beyond.text
    by_subject = b.get(f"/mail/{inbox}?sort=subject&order=asc")
    assert re.findall(r">Message (\d{3})<", by_subject.text)[:3] == ["000", "001", "002"]
    second = b.get(f"/mail/{inbox}?sort=subject&order=asc&page=2")
    assert re.findall(r">Message (\d{3})<", second.text)[0] == "050"
    by_size = b.get(f"/mail/{inbox}?sort=size&order=desc")
    assert re.findall(r">Message (\d{3})<", by_size.text)[0] == "119"
    by_size = b.get(f"/mail/{inbox}?sort=size&order=asc")
    assert re.findall(r">Message (\d{3})<", by_size.text)[0] == "000"
    by_from = b.get(f"/mail/{inbox}?sort=from&order=asc")
    whos = re.findall(r'<td class="who">(?:<span[^>]*>★</span> )?([^<]*)</td>', by_from.text)
    assert whos[:3] == ["Sender A"] * 3 and whos == sorted(whos)
    by_from = b.get(f"/mail/{inbox}?sort=from&order=desc")
    assert re.findall(r'<td class="who">([^<]*)</td>', by_from.text)[0] == "Sender Z"
    # Nonsense in the query is not an error.
    for query in (
        "?sort=evil;DROP&order=sideways",
        "?page=-4",
        "?page=9999999999999999999999",
        "?page=abc",
    ):
        assert b.get(f"/mail/{inbox}{query}").status == 200, query


def test_search_finds_a_word_in_a_body(site: PimailServer) -> None:
    user = f"searcher@{DOMAIN}"
    site.add_user(user)
    deliver(site, user, simple("Plans", "We should visit the xylophonist next week.", to=user))
    deliver(site, user, simple("Other", "Nothing to see here.", to=user))
    deliver(site, user, simple("Quoted", 'He said "hi" -- and (left) * NEAR', to=user))
    b = login(site, user)
    inbox = folders(site, user)["INBOX"]
    page = b.get(f"/mail/{inbox}?q=xylophonist")
    assert ">Plans<" in page.text and ">Other<" not in page.text
    assert "1 message found" in page.text
    assert ">Plans<" in b.get(f"/mail/{inbox}?q=xylophon").text  # a word prefix
    assert ">Other<" in b.get(f"/mail/{inbox}?q=other").text  # a header word (Subject)
    none = b.get(f"/mail/{inbox}?q=nonexistentword")
    assert "Nothing found." in none.text
    for odd in ('"', "NEAR(", "*", "a OR", "-", "\x00", "é" * 300):  # FTS syntax is not ours
        query = urllib.parse.quote(odd)
        assert b.get(f"/mail/{inbox}?q={query}").status == 200, odd


# -- reading --------------------------------------------------------------------------------


def test_reading_a_text_message(site: PimailServer) -> None:
    body = "Dear Alice,\r\n\r\n<script>alert(1)</script> & see https://example.net/page.\r\nBye"
    deliver(site, ALICE, simple("Text reading", body, extra="Cc: Carl <carl@remote.test>\r\n"))
    b = login(site, ALICE)
    page = b.get(message_url(site, ALICE, "Text reading"))
    assert page.status == 200
    assert "<h1>Text reading</h1>" in page.text
    assert (
        "Xavier &lt;x@remote.test&gt;" in page.text and "Carl &lt;carl@remote.test&gt;" in page.text
    )
    assert "Mon, 01 Jan 2024 10:00:00 +0000" in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; see" in page.text
    assert '<a href="https://example.net/page"' in page.text
    assert '<div class="mail-text">' in page.text and "style=" not in page.text
    assert "<iframe" not in page.text


HTML_MAIL = """From: News <news@remote.test>\r
To: alice@example.org\r
Subject: {subject}\r
MIME-Version: 1.0\r
Content-Type: multipart/related; boundary="REL"\r
\r
--REL\r
Content-Type: multipart/alternative; boundary="ALT"\r
\r
--ALT\r
Content-Type: text/plain; charset=utf-8\r
\r
The plain version.\r
--ALT\r
Content-Type: text/html; charset=utf-8\r
\r
<html><head><script>alert(1)</script></head><body onload="evil()">\r
<p style="color:red">Hello <b>HTML</b></p>\r
<img src="https://tracker.test/pixel.gif" alt="pixel">\r
<img src="cid:logo@remote.test" alt="logo">\r
<a href="javascript:alert(2)">bad link</a> <a href="https://good.test/">good link</a>\r
</body></html>\r
--ALT--\r
--REL\r
Content-Type: image/png\r
Content-ID: <logo@remote.test>\r
Content-Transfer-Encoding: base64\r
\r
{png}\r
--REL--\r
"""
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg=="
)


def test_html_mail_in_a_sandboxed_frame_with_remote_images_blocked(site: PimailServer) -> None:
    deliver(
        site, ALICE, HTML_MAIL.format(subject="HTML reading", png=base64.b64encode(PNG).decode())
    )
    b = login(site, ALICE)
    url = message_url(site, ALICE, "HTML reading")
    page = b.get(url)
    [frame] = re.findall(r"<iframe[^>]*>", page.text)
    assert 'sandbox="' in frame and "allow-scripts" not in frame
    assert "allow-same-origin" not in frame
    src = re.search(r'src="([^"]+)"', frame).group(1)
    assert "Remote images were blocked (1)" in page.text
    assert "Show as plain text" in page.text
    assert "<h2>Attachments</h2>" not in page.text  # the other version and the logo are not
    inner = b.get(src)
    assert inner.status == 200 and "text/html" in inner.headers["Content-Type"]
    csp = inner.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "style-src 'unsafe-inline'" in csp and "https:" not in sources(csp, "img-src")
    assert "sandbox" in csp and "allow-scripts" not in csp
    assert "<script" not in inner.text and "onload" not in inner.text
    assert "javascript:" not in inner.text and "tracker.test" not in inner.text
    assert "Hello <b>HTML</b>" in inner.text and 'href="https://good.test/"' in inner.text
    # The inline image: a signed URL the frame may load without the session cookie.
    image = re.search(r'<img src="(/mail/[^"]+/inline/\d+\?[^"]+)"', inner.text).group(1)
    image = image.replace("&amp;", "&")
    anonymous = Browser(f"https://127.0.0.1:{site.https_port}", site.client_tls())
    got = anonymous.get(image)
    assert got.status == 200 and got.body == PNG and got.headers["Content-Type"] == "image/png"
    assert anonymous.get(image.replace("t=", "t=0")).status == 404  # a forged signature
    assert anonymous.get(image.replace("t=", "t=%C3%A9")).status == 404
    assert anonymous.get(re.sub(r"e=\d+", "e=1", image)).status == 404  # expired / altered
    # Remote images, when asked for.
    shown = b.get(url + "?remote=1")
    assert "Remote images were blocked" not in shown.text
    src = re.search(r'<iframe[^>]*src="([^"]+)"', shown.text).group(1)
    assert src.endswith("?remote=1")
    inner = b.get(src.replace("&amp;", "&"))
    assert "https://tracker.test/pixel.gif" in inner.text
    assert "https:" in sources(inner.headers["Content-Security-Policy"], "img-src")
    # The plain alternative, on request.
    plain = b.get(url + "?view=text")
    assert "The plain version." in plain.text and "<iframe" not in plain.text


def test_attachment_round_trip_between_local_accounts(site: PimailServer) -> None:
    data = bytes(range(256)) * 300 + b"\r\n.\r\n\x00end"
    html_file = b"<html><script>alert(document.cookie)</script></html>"
    a = login(site, ALICE)
    page = compose(
        a,
        {"to": BOB, "subject": "Files for you", "body": "See attached."},
        [
            ("attachment", 'r\u00e9sum\u00e9 "1".bin', "application/octet-stream", data),
            ("attachment", "../../evil.html", "text/html", html_file),
        ],
    )
    assert page.status == 200 and "Message sent." in page.text, page.text[-2000:]
    b = login(site, BOB)
    url = message_url(site, BOB, "Files for you")
    view = b.get(url)
    assert "See attached." in view.text
    links = re.findall(r'<a href="(/mail/\d+/\d+/part/\d+)" download>([^<]+)</a>', view.text)
    names = [name for _, name in links]
    assert names == ["résumé 1.bin", "evil.html"], names
    got = b.get(links[0][0])
    assert got.status == 200 and got.body == data  # byte for byte
    assert got.headers["Content-Disposition"].startswith("attachment;")
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9%201.bin" in got.headers["Content-Disposition"]
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    evil = b.get(links[1][0])
    assert evil.body == html_file and evil.headers["Content-Type"] == "application/octet-stream"
    assert evil.headers["Content-Disposition"].startswith("attachment;")
    # The sender's copy is in Sent, with the same attachment.
    sent = file_of(site, ALICE, "Files for you", "Sent")
    assert base64.b64encode(data)[:60] in sent.replace(b"\r\n", b"")
    assert b"\\Seen" in row_of(site, ALICE, "Files for you", "Sent")["flags"].encode()
    # The delivered copy went the submission way: our trace, Message-ID, Date.
    delivered = file_of(site, BOB, "Files for you")
    assert delivered.startswith(b"Return-Path: <alice@example.org>\r\nReceived: from webmail")
    assert b"\r\nMessage-ID: <" in delivered and b"\r\nDate: " in delivered
    # The whole message downloads as .eml.
    raw = b.get(url + "/raw")
    assert raw.body == delivered and raw.headers["Content-Type"] == "message/rfc822"


def test_reply_lands_with_thread_headers_and_in_sent(site: PimailServer) -> None:
    original = simple(
        "Question",
        "Can you help?",
        sender="Bob <bob@example.org>",
        extra="References: <root@example.org>\r\n",
    )
    deliver(site, ALICE, original, sender=BOB)
    original_id = re.search(r"Message-ID: (<[^>]+>)", original).group(1)
    a = login(site, ALICE)
    folder, uid = message_url(site, ALICE, "Question").split("/")[2:]
    form = a.get(f"/mail/compose?reply={folder}:{uid}")
    assert 'value="Bob &lt;bob@example.org&gt;"' in form.text or 'value="Bob <' in form.text
    assert 'value="Re: Question"' in form.text
    assert "&gt; Can you help?" in form.text
    fields = {
        name: html.unescape(value)
        for name, value in re.findall(
            r'<input type="hidden" name="(\w+)" value="([^"]*)"', form.text
        )
    }
    page = compose(
        a,
        {
            "to": "Bob <bob@example.org>",
            "subject": "Re: Question",
            "body": "Sure.\n\n> Can you help?",
            "in_reply_to": fields["in_reply_to"],
            "references": fields["references"],
            "replied": fields["replied"],
        },
    )
    assert "Message sent." in page.text
    reply = file_of(site, BOB, "Re: Question")
    assert f"\r\nIn-Reply-To: {original_id}\r\n".encode() in reply
    assert f"\r\nReferences: <root@example.org> {original_id}\r\n".encode() in reply
    assert file_of(site, ALICE, "Re: Question", "Sent").count(b"Sure.") == 1
    assert "\\Answered" in row_of(site, ALICE, "Question")["flags"].split()


def test_reply_all_and_forwards(site: PimailServer) -> None:
    mail = simple(
        "Team news",
        "Big news.",
        sender="Bob <bob@example.org>",
        to="alice@example.org, Carol <carol@example.org>",
        extra="Cc: dave@remote.test\r\n",
    )
    mail = mail.replace("Content", "X")  # plain text
    deliver(site, ALICE, mail, sender=BOB)
    a = login(site, ALICE)
    folder, uid = message_url(site, ALICE, "Team news").split("/")[2:]
    form = a.get(f"/mail/compose?replyall={folder}:{uid}")
    cc = re.search(r'name="cc" value="([^"]*)"', form.text).group(1)
    assert "carol@example.org" in cc and "dave@remote.test" in cc and "alice@" not in cc
    fwd = a.get(f"/mail/compose?forward={folder}:{uid}")
    assert 'value="Fwd: Team news"' in fwd.text and "Forwarded message" in fwd.text
    attach = a.get(f"/mail/compose?attach={folder}:{uid}")
    ref = re.search(r'name="attach_message" value="([^"]+)"', attach.text).group(1)
    page = compose(
        a,
        {
            "to": CAROL,
            "subject": "Fwd: Team news",
            "body": "FYI",
            "attach_message": ref,
            "attach_name": "Team news.eml",
            "replied": f"{ref}:$Forwarded",
        },
    )
    assert "Message sent." in page.text
    got = file_of(site, CAROL, "Fwd: Team news")
    assert b"Content-Type: message/rfc822" in got and b"Big news." in got
    assert "$Forwarded" in row_of(site, ALICE, "Team news")["flags"].split()
    c = login(site, CAROL)
    view = c.get(message_url(site, CAROL, "Fwd: Team news"))
    assert "Team news.eml" in view.text


def test_sending_to_a_foreign_domain_queues_it(site: PimailServer) -> None:
    a = login(site, ALICE)
    page = compose(
        a,
        {
            "to": "friend@foreign.test",
            "cc": BOB,
            "bcc": "hidden@foreign.test",
            "subject": "Across the net",
            "body": "Hello out there",
        },
    )
    assert "Message sent." in page.text
    listing = site.cli("queue", "list").stdout
    assert "friend@foreign.test" in listing and "hidden@foreign.test" in listing
    assert "<alice@example.org>" in listing
    con = sqlite3.connect(site.data_dir / "queue" / "queue.db")
    [(message_id,)] = con.execute(
        "SELECT message_id FROM recipients WHERE address = 'friend@foreign.test'"
    ).fetchall()
    con.close()
    queued = (site.data_dir / "queue" / "messages" / message_id).read_bytes()
    assert b"Hello out there" in queued and b"hidden@" not in queued  # no Bcc in what goes out
    assert b"hidden@foreign.test" in file_of(site, ALICE, "Across the net", "Sent")
    assert b"hidden@" not in file_of(site, BOB, "Across the net")


def test_refusals_are_shown_not_sent(site: PimailServer) -> None:
    a = login(site, ALICE)
    for fields, words in (
        ({"to": "nobody@example.org", "subject": "x", "body": "x"}, "User unknown"),
        ({"to": "not an address", "subject": "x", "body": "x"}, "is not an email address"),
        ({"to": "", "subject": "x", "body": "x"}, "Add at least one recipient"),
    ):
        page = compose(a, fields)
        assert page.status == 400 and words in page.text, (fields, page.text[-1500:])
        assert 'name="subject" value="x"' in page.text  # the form comes back filled in


def test_webmail_and_smtp_submission_share_the_hourly_limit(make_server: Any) -> None:
    """One Submitter for both: what was sent over SMTP counts for the webmail."""
    server: PimailServer = make_server(sections={"submission": {"max_messages_per_hour": 2}})
    server.cli("domain", "add", DOMAIN)
    server.add_user(ALICE)
    server.add_user(BOB)
    server.start()
    with smtplib.SMTP("localhost", server.submission_port, timeout=10) as s:
        s.starttls(context=server.client_tls())
        s.login(ALICE, PASSWORD)
        s.sendmail(ALICE, [BOB], b"From: alice@example.org\r\nSubject: by smtp\r\n\r\nx\r\n")
    a = login(server, ALICE)
    assert "Message sent." in compose(a, {"to": BOB, "subject": "by web", "body": "x"}).text
    page = compose(a, {"to": BOB, "subject": "one too many", "body": "x"})
    assert page.status == 400 and "Sending limit of 2 messages an hour reached" in page.text
    with smtplib.SMTP("localhost", server.submission_port, timeout=10) as s:
        s.starttls(context=server.client_tls())
        s.login(ALICE, PASSWORD)
        with pytest.raises(smtplib.SMTPSenderRefused):
            s.sendmail(ALICE, [BOB], b"From: alice@example.org\r\nSubject: no\r\n\r\nx\r\n")
    assert sorted(r["hdr_subject"] for r in server.index_rows(BOB)) == ["by smtp", "by web"]


def test_drafts_save_reopen_send(site: PimailServer) -> None:
    a = login(site, ALICE)
    page = compose(
        a,
        {"to": BOB, "bcc": CAROL, "subject": "Draft one", "body": "Half done"},
        [("attachment", "notes.txt", "text/plain", b"some notes\n")],
        action="save",
    )
    assert page.status == 200 and "Draft saved." in page.text
    drafts = folders(site, ALICE)["Drafts"]
    [row] = [r for r in site.index_rows(ALICE, "Drafts") if r["hdr_subject"] == "Draft one"]
    assert {"\\Draft", "\\Seen"} <= set(row["flags"].split())
    assert page.url.endswith(f"/mail/compose?draft={drafts}:{row['uid']}&done=saved")
    assert re.search(r">Half done\s*</textarea>", page.text)
    assert 'name="bcc" value="carol@example.org"' in page.text
    keep = re.search(r'name="keep" value="([^"]+)"', page.text).group(1)
    draft_ref = re.search(r'name="draft" value="([^"]+)"', page.text).group(1)
    # Saved again: one draft, the newer.
    page = compose(
        a,
        {
            "to": BOB,
            "subject": "Draft one",
            "body": "Nearly done",
            "keep": keep,
            "draft": draft_ref,
        },
        action="save",
    )
    assert [r["hdr_subject"] for r in site.index_rows(ALICE, "Drafts")].count("Draft one") == 1
    keep = re.search(r'name="keep" value="([^"]+)"', page.text).group(1)
    draft_ref = re.search(r'name="draft" value="([^"]+)"', page.text).group(1)
    # Opened from the folder, then sent: it goes, and the draft with it.
    folder, uid = draft_ref.split(":")
    assert "Edit draft" in a.get(f"/mail/{folder}/{uid}").text
    page = compose(
        a, {"to": BOB, "subject": "Draft one", "body": "Done", "keep": keep, "draft": draft_ref}
    )
    assert "Message sent." in page.text
    assert [r["hdr_subject"] for r in site.index_rows(ALICE, "Drafts")].count("Draft one") == 0
    got = file_of(site, BOB, "Draft one")
    assert b"Done" in got and b"notes.txt" in got and base64.b64encode(b"some notes\n") in got


def test_move_delete_flag_read(site: PimailServer) -> None:
    for subject in ("Keep me", "Throw me", "Mark me"):
        deliver(site, ALICE, simple(subject))
    a = login(site, ALICE)
    ids = folders(site, ALICE)
    token = csrf(a)
    url = message_url(site, ALICE, "Keep me")
    page = a.post(f"{url}/move", {"csrf": token, "target": str(ids["Archive"])})
    assert page.status == 200 and "Moved." in page.text
    uid_of(site, ALICE, "Keep me", "Archive")
    url = message_url(site, ALICE, "Throw me")
    assert "Deleted." in a.post(f"{url}/delete", {"csrf": token}).text
    in_trash = message_url(site, ALICE, "Throw me", "Trash")
    assert "Delete for good" in a.get(in_trash).text
    a.post(f"{in_trash}/delete", {"csrf": token})
    assert all(r["hdr_subject"] != "Throw me" for r in site.index_rows(ALICE, "Trash"))
    url = message_url(site, ALICE, "Mark me")
    a.post(f"{url}/flags", {"csrf": token, "do": "flag"})
    assert "\\Flagged" in row_of(site, ALICE, "Mark me")["flags"].split()
    a.post(f"{url}/flags", {"csrf": token, "do": "unread"})
    assert "\\Seen" not in row_of(site, ALICE, "Mark me")["flags"].split()
    a.post(f"{url}/flags", {"csrf": token, "do": "unflag"})
    assert "\\Flagged" not in row_of(site, ALICE, "Mark me")["flags"].split()
    # Several at once, from the list.
    deliver(site, ALICE, simple("Bulk one"))
    deliver(site, ALICE, simple("Bulk two"))
    inbox = ids["INBOX"]
    uids = [str(uid_of(site, ALICE, s)) for s in ("Bulk one", "Bulk two")]
    body = urllib.parse.urlencode(
        [
            ("csrf", token),
            ("do", "read"),
            ("back", f"/mail/{inbox}?page=1"),
            *(("uid", u) for u in uids),
        ]
    ).encode()
    page = a.post(f"/mail/{inbox}/selected", body)
    assert page.status == 200 and page.url.endswith(f"/mail/{inbox}?page=1&done=flags")
    assert all("\\Seen" in row_of(site, ALICE, s)["flags"] for s in ("Bulk one", "Bulk two"))
    body = urllib.parse.urlencode(
        [
            ("csrf", token),
            ("do", "move"),
            ("target", str(ids["Archive"])),
            *(("uid", u) for u in uids),
        ]
    ).encode()
    a.post(f"/mail/{inbox}/selected", body)
    assert {"Bulk one", "Bulk two"} <= {r["hdr_subject"] for r in site.index_rows(ALICE, "Archive")}
    # Moving to a folder that is not one's own: refused, nothing moves.
    deliver(site, ALICE, simple("Stay here"))
    url = message_url(site, ALICE, "Stay here")
    bobs = folders(site, BOB)["INBOX"]
    assert a.post(f"{url}/move", {"csrf": token, "target": str(bobs)}).status == 404
    uid_of(site, ALICE, "Stay here")


SPAM = (
    "From: winner@lottery.test\r\nTo: alice@example.org\r\nSubject: You have WON\r\n"
    "\r\nClaim your prize money now, click the link, free casino bonus!\r\n"
)


def test_junk_button_moves_and_trains_the_filter(site: PimailServer) -> None:
    user = f"junky@{DOMAIN}"
    site.add_user(user)
    deliver(site, user, SPAM.replace("alice@", "junky@"), sender="winner@lottery.test")
    b = login(site, user)
    before = bayes_totals(site, user)
    assert token_count(site, user) == 0
    url = message_url(site, user, "You have WON")
    page = b.post(f"{url}/junk", {"csrf": csrf(b)})
    assert "Moved to Junk." in page.text
    in_junk = message_url(site, user, "You have WON", "Junk")
    assert bayes_totals(site, user) == (before[0] + 1, before[1])
    assert token_count(site, user) > 0  # the message's tokens, learnt as spam
    view = b.get(in_junk)
    assert "Not junk" in view.text
    page = b.post(f"{in_junk}/notjunk", {"csrf": csrf(b)})
    assert "Moved to the Inbox." in page.text
    uid_of(site, user, "You have WON")
    assert bayes_totals(site, user) == (before[0], before[1] + 1)


# -- what must be refused -----------------------------------------------------------------


def test_another_users_messages_are_not_found(site: PimailServer) -> None:
    deliver(site, BOB, simple("Bob's secret", "for bob only", to=BOB))
    deliver(
        site,
        BOB,
        HTML_MAIL.format(subject="Bob's html", png=base64.b64encode(PNG).decode()),
    )
    bob_inbox = folders(site, BOB)["INBOX"]
    secret = message_url(site, BOB, "Bob's secret")
    html_url = message_url(site, BOB, "Bob's html")
    bob = login(site, BOB)
    frame = re.search(r'<iframe[^>]*src="([^"]+)"', bob.get(html_url).text).group(1)
    a = login(site, ALICE)
    token = csrf(a)
    folder, uid = secret.split("/")[2:]
    for path in (
        f"/mail/{bob_inbox}",
        secret,
        f"{secret}/raw",
        f"{secret}/part/0",
        f"{secret}/part/1",
        frame,
        f"{html_url}/frame/3",
        f"/mail/compose?reply={folder}:{uid}",
        f"/mail/compose?draft={folder}:{uid}",
        f"/mail/compose?attach={folder}:{uid}",
    ):
        page = a.get(path)
        assert page.status == 404, path
        assert b"bob only" not in page.body
    for action, data in (
        ("flags", {"do": "read"}),
        ("move", {"target": str(bob_inbox)}),
        ("delete", {}),
        ("junk", {}),
        ("notjunk", {}),
    ):
        assert a.post(f"{secret}/{action}", {"csrf": token, **data}).status == 404, action
    page = a.post(f"/mail/{bob_inbox}/selected", {"csrf": token, "do": "delete", "uid": uid})
    assert page.status == 404
    # Bob's attachment or message, named in alice's compose form: refused.
    page = compose(a, {"to": ALICE, "subject": "steal", "body": "x", "keep": f"{folder}:{uid}:0"})
    assert page.status == 400 and "no longer there" in page.text
    page = compose(
        a, {"to": ALICE, "subject": "steal", "body": "x", "attach_message": f"{folder}:{uid}"}
    )
    assert page.status == 400 and "no longer there" in page.text
    # Nothing of bob's changed.
    row = row_of(site, BOB, "Bob's secret")
    assert "\\Seen" not in row["flags"].split()
    assert uid_of(site, BOB, "Bob's secret") == int(uid)
    # Logged out: the login page, not the mail.
    anonymous = Browser(f"https://127.0.0.1:{site.https_port}", site.client_tls())
    assert anonymous.get(secret, follow=False).status == 303


def test_every_post_needs_the_csrf_token(site: PimailServer) -> None:
    deliver(site, ALICE, simple("CSRF target"))
    a = login(site, ALICE)
    url = message_url(site, ALICE, "CSRF target")
    inbox = folders(site, ALICE)["INBOX"]
    routes = [
        ("/mail/compose", {"to": BOB, "subject": "forged", "body": "x", "action": "send"}),
        (f"/mail/{inbox}/selected", {"do": "delete", "uid": url.rsplit("/", 1)[1]}),
        (f"{url}/flags", {"do": "flag"}),
        (f"{url}/move", {"target": str(folders(site, ALICE)["Archive"])}),
        (f"{url}/delete", {}),
        (f"{url}/junk", {}),
        (f"{url}/notjunk", {}),
    ]
    for path, data in routes:
        assert a.post(path, data).status == 403, path
        assert a.post(path, {**data, "csrf": "forged"}).status == 403, path
        body, headers = multipart(list(data.items()))
        assert a.post(path, body, headers=headers).status == 403, path
    row = row_of(site, ALICE, "CSRF target")
    assert "\\Flagged" not in row["flags"].split()
    assert all(r["hdr_subject"] != "forged" for r in site.index_rows(BOB))


def test_nonsense_urls_are_not_found(site: PimailServer) -> None:
    a = login(site, ALICE)
    url = message_url(site, ALICE, "Text reading")
    for path in (
        "/mail/99999999",
        "/mail/99999999999999999999999999",
        f"{url}99999",
        f"{url}/part/999",
        f"{url}/part/99999999999999999999999",
        f"{url}/frame/0",
        f"{url}/inline/0",
        f"{url}/inline/0?a=1&e=99999999999&t=x",
        "/mail/compose?reply=1:99999999999999999999999",
    ):
        assert a.get(path).status in (404,), path


# -- malformed mail still renders ---------------------------------------------------------

MALFORMED = {
    "no boundary": "Content-Type: multipart/mixed\r\n\r\nno boundary here\r\n",
    "unclosed": 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
    "Content-Type: text/plain\r\n\r\nunclosed part text\r\n",
    "bad charset": "Content-Type: text/plain; charset=x-no-such-charset\r\n\r\ncaf\xe9 text\r\n",
    "bad base64": "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    "!!!not base64 at all###\r\n",
    "bad qp": "Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    "=ZZ=\r\nbroken =E9=\r\n",
    "unknown cte": "Content-Type: text/plain\r\nContent-Transfer-Encoding: x-weird\r\n\r\nodd\r\n",
    "html only bad": 'Content-Type: text/html; charset="utf-8\r\n\r\n<p>unterminated <b attr="\r\n',
    "empty multipart": 'Content-Type: multipart/alternative; boundary="e"\r\n\r\n--e--\r\n',
    "nested deep": 'Content-Type: multipart/mixed; boundary="d"\r\n\r\n'
    + "".join(f'--d\r\nContent-Type: multipart/mixed; boundary="d{i}"\r\n\r\n' for i in range(60))
    + "deep text\r\n",
    "bad attachment": 'Content-Type: multipart/mixed; boundary="a"\r\n\r\n--a\r\n'
    "Content-Type: text/plain\r\n\r\nbody\r\n--a\r\nContent-Type: application/pdf\r\n"
    "Content-Disposition: attachment; filename*=utf-8''%FF%FE%00../../x\r\n"
    "Content-Transfer-Encoding: base64\r\n\r\n@@@@\r\n--a--\r\n",
    "rfc822 broken": 'Content-Type: multipart/mixed; boundary="m"\r\n\r\n--m\r\n'
    "Content-Type: message/rfc822\r\n\r\nnot: really\r\n a message\r\n--m--\r\n",
}


def test_malformed_messages_render(site: PimailServer) -> None:
    user = f"odd@{DOMAIN}"
    site.add_user(user)
    for name, rest in MALFORMED.items():
        head = f"From: =?utf-8?q?bad=ZZ?= <odd@remote.test>\r\nTo: <>,,@@\r\nSubject: {name}\r\n"
        head += "Date: not a date at all\r\nMIME-Version: 1.0\r\n"
        deliver(site, user, (head + rest).encode("latin-1"))
    # A huge header block, an address list that does not parse, a header without value.
    # SMTP refuses a header block this size (the filter's MIME limits, for trusted
    # senders too), so it comes in by IMAP APPEND, as an import or a client may.
    huge = ("X-Big: " + "y" * 200 + "\r\n") * 2000
    raw = (
        "From: a@b.test\r\nSubject: huge headers\r\nTo: "
        + "a" * 5000
        + ' "unterminated\r\nCc:\r\n'
        + huge
        + "\r\nbody after\r\n"
    )
    imap = imaplib.IMAP4_SSL("localhost", site.imaps_port, ssl_context=site.client_tls())
    imap.login(user, PASSWORD)
    assert imap.append("INBOX", None, None, raw.encode())[0] == "OK"
    imap.logout()
    b = login(site, user)
    inbox = folders(site, user)["INBOX"]
    listing = b.get(f"/mail/{inbox}")
    assert listing.status == 200
    for row in site.index_rows(user):
        page = b.get(f"/mail/{inbox}/{row['uid']}")
        assert page.status == 200, row["hdr_subject"]
        for src in re.findall(r'(?:src|href)="(/mail/\d+/\d+/(?:frame|part)/\d+[^"]*)"', page.text):
            assert b.get(src.replace("&amp;", "&")).status == 200, (row["hdr_subject"], src)
        for mode in ("reply", "replyall", "forward", "attach"):
            assert b.get(f"/mail/compose?{mode}={inbox}:{row['uid']}").status == 200
    text = {r["hdr_subject"]: r["uid"] for r in site.index_rows(user)}
    assert "unclosed part text" in b.get(f"/mail/{inbox}/{text['unclosed']}").text
    assert "caf" in b.get(f"/mail/{inbox}/{text['bad charset']}").text
    assert "deep text" in b.get(f"/mail/{inbox}/{text['nested deep']}").text
    assert "body after" in b.get(f"/mail/{inbox}/{text['huge headers']}").text


def test_a_big_message_opens(site: PimailServer) -> None:
    """A 2 MB message with a big attachment and a long text: the page, the
    attachment and the text, each once parsed (the figures: bench/web_bench.py)."""
    blob = secrets.token_bytes(1_400_000)
    text = ("A long line of text for the big message. " * 20 + "\r\n") * 500
    raw = (
        "From: big@remote.test\r\nTo: alice@example.org\r\nSubject: Big one\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
        f"--B\r\nContent-Type: text/plain\r\n\r\n{text}\r\n--B\r\n"
        'Content-Type: application/octet-stream; name="blob.bin"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(blob).decode().replace("\n", "\r\n")
        + "--B--\r\n"
    )
    assert len(raw) > 2_000_000
    deliver(site, ALICE, raw)
    a = login(site, ALICE)
    url = message_url(site, ALICE, "Big one")
    started = time.monotonic()
    page = a.get(url)
    assert page.status == 200 and "blob.bin" in page.text
    part = re.search(r'href="(/mail/\d+/\d+/part/\d+)" download>blob.bin', page.text).group(1)
    assert a.get(part).body == blob
    assert time.monotonic() - started < 30  # a sanity bound, not a benchmark


def test_the_server_logged_no_errors(site: PimailServer) -> None:
    """After everything above (malformed mail, bad URLs, refusals): no request
    ended in an exception."""
    log = site.log.read_text(errors="replace")
    assert "Traceback" not in log and "Error handling request" not in log
