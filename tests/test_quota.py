"""Quotas (store/quota.py) over real sockets: SMTP RCPT refuses a full mailbox with
452 4.2.2 (and by MAIL FROM SIZE=), the others still get the message, postmaster
and abuse always receive, IMAP APPEND and COPY answer NO [OVERQUOTA] while MOVE
still works, GETQUOTAROOT reports usage (RFC 9208), the webmail shows usage and
says when a Sent copy or a draft did not fit, and a quota raised with the CLI
counts at once, without a restart."""

from __future__ import annotations

import imaplib
import itertools
import re
import secrets
import smtplib
import sqlite3
from collections.abc import Iterator

import pytest

from conftest import PASSWORD, PimailServer
from imap.imap_raw import RawIMAP
from web.browser import Browser
from web.test_mail import compose

DOMAIN = "example.org"
SENDER = "ann@remote.test"
_counter = itertools.count()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PimailServer]:
    server = PimailServer(
        tmp_path_factory.mktemp("quota") / "data", {"auth": {"failure_delay": 0.05}}
    )
    server.cli("domain", "add", DOMAIN)
    server.start()
    yield server
    server.stop()


def new_user(site: PimailServer, name: str = "user") -> str:
    address = f"{name}{next(_counter)}@{DOMAIN}"
    site.add_user(address)
    return address


def message(subject: str, size: int = 0, to: str = "someone@example.org") -> bytes:
    body = "x" * 70 + "\r\n"
    text = (
        f"From: Ann <{SENDER}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{secrets.token_hex(8)}@remote.test>\r\n"
        f"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\nHello.\r\n"
    )
    while len(text) < size:
        text += body
    return text.encode()


def deliver(site: PimailServer, rcpts: list[str], data: bytes) -> dict:
    with smtplib.SMTP("127.0.0.1", site.smtp_port, timeout=10) as s:
        return s.sendmail(SENDER, rcpts, data)


def usage(site: PimailServer, address: str) -> int:
    con = sqlite3.connect(site.data_dir / "index.db")
    [(used,)] = con.execute(
        "SELECT coalesce(sum(m.size), 0) FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id"
        " WHERE b.account_id = ?",
        (site.account_id(address),),
    ).fetchall()
    con.close()
    return int(used)


def set_quota(site: PimailServer, address: str, octets: int) -> None:
    """Straight into pimail.db, as any tool may; the server reads it at each check."""
    con = sqlite3.connect(site.data_dir / "pimail.db")
    with con:
        con.execute("UPDATE accounts SET quota_bytes = ? WHERE id = ?",
                    (octets, site.account_id(address)))  # fmt: skip
    con.close()


def fill(site: PimailServer, address: str, subject: str = "filler") -> None:
    """One message in, then the quota set to exactly what is used: full."""
    deliver(site, [address], message(subject, 3000, address))
    set_quota(site, address, usage(site, address))


def imap_login(site: PimailServer, address: str) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL("localhost", site.imaps_port, ssl_context=site.client_tls())
    m.login(address, PASSWORD)
    return m


# -- without a server -------------------------------------------------------------------------


def test_the_rules_without_io() -> None:
    from pimail.cli import parse_size
    from pimail.imap.events import SetQuota
    from pimail.imap.grammar import ParseError
    from pimail.imap.parser import Parser
    from pimail.store.quota import Quota, declared_size, exempt

    assert Quota(100, 100).full and not Quota(99, 100).full and not Quota(10**9, 0).full
    assert Quota(90, 100).fits(10) and not Quota(90, 100).fits(11) and Quota(5, 0).fits(10**9)
    assert Quota(50, 100).takes(0) and not Quota(50, 100).takes(51) and not Quota(100, 100).takes(0)
    assert declared_size(["BODY=8BITMIME", "SIZE=1234"]) == 1234 and declared_size([]) == 0
    assert exempt("Postmaster@example.org") and exempt("abuse@x.test") and not exempt("bob@x.test")
    assert [parse_size(t) for t in ("0", "none", "2000", "1K", "500M", "2G", "3GiB")] == [
        0, 0, 2000, 1024, 500 * 2**20, 2 * 2**30, 3 * 2**30,
    ]  # fmt: skip
    with pytest.raises(ValueError):
        parse_size("-5")
    parser = Parser()
    parser.receive_data(b'a SETQUOTA "" (STORAGE 512)\r\nb SETQUOTA "" STORAGE\r\n')
    assert parser.next_event() == SetQuota("a", "", (("STORAGE", 512),))
    with pytest.raises(ParseError):
        parser.next_event()


# -- usage ------------------------------------------------------------------------------------


def test_usage_is_the_sum_of_what_the_maildirs_hold(site: PimailServer) -> None:
    from pimail.store import quota

    alice = new_user(site, "alice")
    for n in range(3):
        deliver(site, [alice], message(f"m{n}", 1000 * (n + 1), alice))
    m = imap_login(site, alice)
    assert m.append("Archive", None, None, message("kept", 5000))[0] == "OK"
    m.logout()
    on_disk = sum(p.stat().st_size for f in ("", ".Archive") for p in site.messages(alice, f))
    index = sqlite3.connect(site.data_dir / "index.db")
    assert quota.usage(index, site.account_id(alice)) == on_disk == usage(site, alice)
    plan = " ".join(str(r) for r in index.execute(
        "EXPLAIN QUERY PLAN " + quota._USAGE, (1,)))  # fmt: skip
    assert "COVERING INDEX messages_modseq" in plan  # an index-only SUM (db.py migration 4)
    index.close()
    out = site.cli("user", "quota", alice).stdout
    assert f"({on_disk} octets)" in out and "no quota" in out


# -- SMTP ---------------------------------------------------------------------------------------


def test_full_mailbox_gets_452_and_the_others_still_get_the_message(site: PimailServer) -> None:
    alice, bob = new_user(site, "alice"), new_user(site, "bob")
    fill(site, alice)
    before = len(site.messages(alice))
    refused = deliver(site, [alice, bob], message("to both", to=f"{alice}, {bob}"))
    assert list(refused) == [alice]
    code, text = refused[alice]
    assert code == 452 and text.startswith(b"4.2.2 ") and b"Mailbox full" in text
    assert len(site.messages(alice)) == before
    assert b"Subject: to both" in site.messages(bob)[0].read_bytes()
    # Over quota (not only at it) is refused the same way.
    set_quota(site, alice, 1000)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refusal:
        deliver(site, [alice], message("again"))
    assert refusal.value.recipients[alice][0] == 452


def test_announced_size_over_quota_is_refused(site: PimailServer) -> None:
    alice, bob = new_user(site, "alice"), new_user(site, "bob")
    deliver(site, [alice], message("first", 2000, alice))
    set_quota(site, alice, usage(site, alice) + 10_000)
    with smtplib.SMTP("127.0.0.1", site.smtp_port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.has_extn("size")
        assert s.mail(SENDER, ["SIZE=50000"])[0] == 250
        code, text = s.rcpt(alice)
        assert code == 452 and text.startswith(b"4.2.2 ") and b"no room for 50000" in text
        assert s.rcpt(bob)[0] == 250  # the size fits bob (no quota)
        s.rset()
        data = message("fits", 4000, alice)
        assert s.mail(SENDER, [f"SIZE={len(data)}"])[0] == 250
        assert s.rcpt(alice)[0] == 250
        assert s.data(data)[0] == 250
    assert usage(site, alice) <= 2000 + 10_000 + 4000


def test_postmaster_and_abuse_always_receive(site: PimailServer) -> None:
    """RFC 5321 4.5.1: mail to postmaster must work; RFC 2142: abuse too."""
    alice = new_user(site, "alice")
    site.cli("alias", "add", f"postmaster@{DOMAIN}", alice)
    site.cli("alias", "add", f"abuse@{DOMAIN}", alice)
    try:
        fill(site, alice)
        before = len(site.messages(alice))
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            deliver(site, [alice], message("direct"))
        for rcpt in (f"postmaster@{DOMAIN}", f"PostMaster@{DOMAIN}", f"abuse@{DOMAIN}"):
            assert deliver(site, [rcpt], message(f"to {rcpt}")) == {}
        assert len(site.messages(alice)) == before + 3
    finally:
        site.cli("alias", "remove", f"postmaster@{DOMAIN}")
        site.cli("alias", "remove", f"abuse@{DOMAIN}")


def test_alias_to_several_accounts_is_refused_only_when_all_are_full(site: PimailServer) -> None:
    alice, bob = new_user(site, "alice"), new_user(site, "bob")
    team = f"team{next(_counter)}@{DOMAIN}"
    site.cli("alias", "add", team, alice, bob)
    fill(site, alice)
    set_quota(site, bob, 10_000_000)
    a, b = len(site.messages(alice)), len(site.messages(bob))
    assert deliver(site, [team], message("for the team")) == {}
    # Nobody's copy is dropped: the full member gets hers too, past her quota.
    assert (len(site.messages(alice)), len(site.messages(bob))) == (a + 1, b + 1)
    set_quota(site, bob, 1)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refusal:
        deliver(site, [team], message("nobody has room"))
    assert refusal.value.recipients[team][0] == 452


def test_raising_the_quota_with_the_cli_counts_at_once(site: PimailServer) -> None:
    alice = new_user(site, "alice")
    deliver(site, [alice], message("first", 2000, alice))
    out = site.cli("user", "quota", alice, "1K").stdout
    assert "(1024 octets)" in out
    with smtplib.SMTP("127.0.0.1", site.smtp_port, timeout=10) as s:
        s.ehlo("client.test")
        s.mail(SENDER)
        assert s.rcpt(alice)[0] == 452
        s.rset()
        site.cli("user", "quota", alice, "10M")  # the server is not told: it reads pimail.db
        s.mail(SENDER)
        assert s.rcpt(alice)[0] == 250
        assert s.data(message("after the raise", to=alice))[0] == 250
    assert "no quota" in site.cli("user", "quota", alice, "none").stdout
    assert site.cli("user", "quota", alice, "lots", check=False).returncode == 1


def test_submission_refuses_a_full_local_recipient_but_never_the_sender(
    site: PimailServer,
) -> None:
    alice, bob = new_user(site, "alice"), new_user(site, "bob")
    fill(site, alice)
    with smtplib.SMTP("localhost", site.submission_port, timeout=10) as s:
        s.starttls(context=site.client_tls())
        s.login(bob, PASSWORD)
        s.mail(bob)
        code, text = s.rcpt(alice)
        assert code == 452 and text.startswith(b"4.2.2 ")
    # Alice is full, and sends all the same (to bob, and to herself not).
    with smtplib.SMTP("localhost", site.submission_port, timeout=10) as s:
        s.starttls(context=site.client_tls())
        s.login(alice, PASSWORD)
        data = f"From: <{alice}>\r\nTo: <{bob}>\r\nSubject: from a full box\r\n\r\nhi\r\n"
        assert s.sendmail(alice, [bob], data.encode()) == {}
    assert any(b"from a full box" in p.read_bytes() for p in site.messages(bob))


# -- IMAP -----------------------------------------------------------------------------------------


def test_append_over_quota_is_overquota_and_a_raise_counts_in_the_session(
    site: PimailServer,
) -> None:
    alice = new_user(site, "alice")
    deliver(site, [alice], message("first", 1000, alice))
    set_quota(site, alice, usage(site, alice) + 3000)
    m = imap_login(site, alice)
    assert m.append("INBOX", None, None, message("small", 2000))[0] == "OK"
    # imaplib sends a synchronising literal: refused before the upload (RFC 9051 7.6).
    typ, data = m.append("INBOX", None, None, message("big", 5000))
    assert typ == "NO" and data[0].startswith(b"[OVERQUOTA]"), data
    assert m.noop()[0] == "OK"  # the session goes on
    set_quota(site, alice, 10_000_000)
    assert m.append("INBOX", None, None, message("big", 5000))[0] == "OK"
    m.logout()
    # LITERAL+ (RFC 7888): the data comes anyway; the store refuses it.
    set_quota(site, alice, usage(site, alice))
    c = RawIMAP(site.imaps_port, tls=site.client_tls())
    c.ok(f'LOGIN "{alice}" "{PASSWORD}"')
    data = message("plus", 500)
    c.send(b"a1 APPEND Drafts {%d+}\r\n" % len(data) + data + b"\r\n")
    _, tagged = c.until(b"a1")
    assert tagged.startswith(b"a1 NO [OVERQUOTA]"), tagged
    c.ok("NOOP")
    c.close()


def test_copy_over_quota_is_refused_and_move_is_not(site: PimailServer) -> None:
    alice = new_user(site, "alice")
    deliver(site, [alice], message("one", 1500, alice))
    deliver(site, [alice], message("two", 1500, alice))
    set_quota(site, alice, usage(site, alice) + 100)
    m = imap_login(site, alice)
    m.select("INBOX")
    typ, data = m.copy("1", "Archive")
    assert typ == "NO" and data[0].startswith(b"[OVERQUOTA]"), data
    assert m.select("Archive")[1] == [b"0"]  # nothing was copied
    m.select("INBOX")
    # Usage does not change with a MOVE: a full account can still clean up.
    set_quota(site, alice, 1)
    assert m._simple_command("MOVE", "1", "Trash")[0] == "OK"  # imaplib has no move()
    m.select("Trash")
    m.store("1", "+FLAGS", "\\Deleted")
    m.expunge()
    m.logout()
    assert len(site.messages(alice, ".Trash")) == 0 and len(site.messages(alice)) == 1


def test_getquotaroot_reports_usage_in_kib(site: PimailServer) -> None:
    alice = new_user(site, "alice")
    deliver(site, [alice], message("first", 3000, alice))
    m = imap_login(site, alice)
    typ, caps = m.capability()
    assert b"QUOTA" in caps[0].split() and b"QUOTA=RES-STORAGE" in caps[0].split()
    # No quota: no quota root (RFC 9208 4.1.2).
    typ, data = m.getquotaroot("INBOX")
    assert typ == "OK" and data == [[b'"INBOX"'], [None]], data
    set_quota(site, alice, 5 * 1024 * 1024)
    used = usage(site, alice)
    typ, data = m.getquotaroot("INBOX")
    assert typ == "OK", data
    assert data[0] == [b'"INBOX" ""']
    assert data[1] == [b'"" (STORAGE %d 5120)' % -(-used // 1024)]
    assert m.getquota('""') == ("OK", [b'"" (STORAGE %d 5120)' % -(-used // 1024)])
    assert m.getquota("other")[0] == "NO"
    typ, data = m.setquota('""', "(STORAGE 99999)")
    assert typ == "NO" and data[0].startswith(b"[NOPERM]")
    assert m.getquotaroot("Nope")[0] == "NO"
    # RFC 9208 4.1.4: what an EXPUNGE would free.
    m.select("INBOX")
    m.store("1", "+FLAGS", "\\Deleted")
    typ, data = m.status("INBOX", "(DELETED DELETED-STORAGE)")
    assert data == [b'"INBOX" (DELETED 1 DELETED-STORAGE %d)' % used], data
    m.logout()


# -- webmail ------------------------------------------------------------------------------------


def test_webmail_shows_usage_and_what_did_not_fit(site: PimailServer) -> None:
    alice, bob = new_user(site, "alice"), new_user(site, "bob")
    deliver(site, [alice], message("hello", 2000, alice))
    b = Browser(f"https://127.0.0.1:{site.https_port}", site.client_tls())
    assert b.login(alice, PASSWORD).status == 200
    page = b.get("/mail")
    assert re.search(r"Used [\d.]+ KB</p>", page.text), page.text  # no quota: usage only
    set_quota(site, alice, 10 * 1024 * 1024)
    page = b.get("/mail")
    assert "Used 2 KB of 10.0 MB" in page.text and "<meter" in page.text
    assert "mailbox is full" not in page.text
    set_quota(site, alice, usage(site, alice))
    assert "Your mailbox is full" in b.get("/mail").text
    # Sending works; the Sent copy does not fit, and the page says so.
    sent = compose(b, {"to": bob, "subject": "sent while full", "body": "Hi Bob."})
    assert sent.status == 200
    assert "Message sent. Your mailbox is full: no copy was saved in Sent." in sent.text
    assert any(b"sent while full" in p.read_bytes() for p in site.messages(bob))
    assert site.messages(alice, ".Sent") == []
    # A draft is not saved: the form comes back, with the text and the reason.
    draft = compose(b, {"to": bob, "subject": "a draft", "body": "Keep me."}, action="save")
    assert draft.status == 400 and "the draft was not saved" in draft.text
    assert "Keep me." in draft.text
    assert site.messages(alice, ".Drafts") == []
    set_quota(site, alice, 0)
    draft = compose(b, {"to": bob, "subject": "a draft", "body": "Keep me."}, action="save")
    assert draft.status == 200 and "Draft saved." in draft.text
    assert len(site.messages(alice, ".Drafts")) == 1
