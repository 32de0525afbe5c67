"""The /settings page (web/settings.py) over real HTTPS, and the vacation
auto-reply (smtp/vacation.py) end to end: the web page switches it on, SMTP
brings mail, the queue and the mailboxes show the replies."""

from __future__ import annotations

import imaplib
import plistlib
import re
import smtplib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import PASSWORD, PimailServer
from dnsserver import DnsServer

from .browser import Browser, wait_for

DOMAIN = "example.org"
NEW_PASSWORD = "a much longer passphrase"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PimailServer]:
    zone = DnsServer().start()
    zone.servfail.add("remote.test")  # replies there stay in the queue (deferred)
    server = PimailServer(
        tmp_path_factory.mktemp("settings") / "data",
        {"auth": {"failure_delay": 0.05, "max_failures": 5, "max_failures_known_address": 5},
         "dns": {"nameservers": [zone.address]}},
        None,
        "mx.test",
    )  # fmt: skip
    server.cli("domain", "add", DOMAIN)
    for name in ("alice", "bob", "carol", "dave", "erin"):
        server.add_user(f"{name}@{DOMAIN}")
    server.start()
    yield server
    server.stop()
    zone.stop()


def browser(site: PimailServer) -> Browser:
    return Browser(f"https://127.0.0.1:{site.https_port}", site.client_tls())


def logged_in(site: PimailServer, address: str, password: str = PASSWORD) -> Browser:
    b = browser(site)
    assert b.login(address, password).status == 200
    return b


def main_db(site: PimailServer) -> sqlite3.Connection:
    return sqlite3.connect(site.data_dir / "pimail.db")


def account_id(site: PimailServer, address: str) -> int:
    local, domain = address.split("@")
    with main_db(site) as con:
        row = con.execute(
            "SELECT a.id FROM accounts a JOIN domains d ON d.id = a.domain_id"
            " WHERE a.localpart = ? AND d.name = ?",
            (local, domain),
        ).fetchone()
    return int(row[0])


# -- the page and its guards ----------------------------------------------------------------


def test_the_page_needs_a_login_and_shows_every_section(site: PimailServer) -> None:
    b = browser(site)
    assert b.get("/settings", follow=False).redirected_to.startswith("/login?next=")
    assert b.get("/settings/pimail.mobileconfig", follow=False).status == 303
    assert b.post("/settings/senders/add", {"entry": "x.test"}).status == 403
    page = logged_in(site, f"erin@{DOMAIN}").get("/settings")
    assert page.status == 200
    for anchor in ('id="password"', 'id="devices"', 'id="senders"', 'id="vacation"'):
        assert anchor in page.text
    assert "At least 10 characters" in page.text
    scripts = re.findall(r"<script[^>]*>", page.text)
    assert all(" src=" in tag for tag in scripts) and "style=" not in page.text  # none inline
    # Manual settings: the host name and the published ports, implicit TLS first.
    assert "<code>mx.test</code>" in page.text
    imaps = page.text.index(f"<td>{site.imaps_port}</td>")
    assert imaps < page.text.index(f"<td>{site.imap_port}</td>")
    for port in (site.submissions_port, site.submission_port, site.pop3s_port):
        assert f"<td>{port}</td>" in page.text
    assert "SSL/TLS" in page.text and "STARTTLS" in page.text


# -- password ---------------------------------------------------------------------------


def test_change_password_logs_out_other_sessions(site: PimailServer) -> None:
    address = f"alice@{DOMAIN}"
    here, elsewhere = logged_in(site, address), logged_in(site, address)
    form = here.get("/settings")
    done = here.post("/settings/password",
                     {"csrf": form.csrf, "current": PASSWORD, "new": NEW_PASSWORD,
                      "repeat": NEW_PASSWORD}, follow=False)  # fmt: skip
    assert done.status == 303 and done.redirected_to.startswith("/settings?done=password")
    page = here.get(done.redirected_to)  # this session goes on
    assert page.status == 200 and "Password changed" in page.text
    assert elsewhere.get("/settings", follow=False).status == 303  # the other one ended
    assert browser(site).login(address, PASSWORD).status == 401
    assert browser(site).login(address, NEW_PASSWORD).status == 200
    with imaplib.IMAP4("127.0.0.1", site.imap_port) as imap:
        imap.starttls(site.client_tls())
        assert imap.login(address, NEW_PASSWORD)[0] == "OK"


def test_wrong_or_short_passwords_are_refused(site: PimailServer) -> None:
    address = f"bob@{DOMAIN}"
    b = logged_in(site, address)
    csrf = b.get("/settings").csrf
    for fields, status, words in (
        ({"current": "wrong", "new": NEW_PASSWORD, "repeat": NEW_PASSWORD}, 403,
         "current password is wrong"),
        ({"current": PASSWORD, "new": "short9char", "repeat": "short9chaX"}, 400, "differ"),
        ({"current": PASSWORD, "new": "nine char", "repeat": "nine char"}, 400,
         "at least 10 characters"),
    ):  # fmt: skip
        page = b.post("/settings/password", {"csrf": csrf, **fields})
        assert page.status == status and words in page.text, fields
    assert b.login(address, PASSWORD).status == 200  # unchanged


def test_wrong_current_passwords_count_in_the_shared_limiter(site: PimailServer) -> None:
    address = f"erin@{DOMAIN}"
    b = logged_in(site, address)
    csrf = b.get("/settings").csrf
    # erin logged in from here: her failures count for (erin, this address), whose
    # limit (max_failures_known_address) is 5 here, for every protocol.
    for _ in range(5):
        page = b.post("/settings/password",
                      {"csrf": csrf, "current": "guess", "new": NEW_PASSWORD,
                       "repeat": NEW_PASSWORD})  # fmt: skip
        assert page.status == 403
    with imaplib.IMAP4("127.0.0.1", site.imap_port) as imap:  # IMAP is blocked too
        imap.starttls(site.client_tls())
        with pytest.raises(imaplib.IMAP4.error):
            imap.login(address, PASSWORD)
    refused = b.post("/settings/password",  # even the right one, while blocked
                     {"csrf": csrf, "current": PASSWORD, "new": NEW_PASSWORD,
                      "repeat": NEW_PASSWORD})  # fmt: skip
    assert refused.status == 403
    site.stop()  # the limiter is in memory: a restart forgets it
    site.start()
    assert browser(site).login(address, PASSWORD).status == 200


# -- devices --------------------------------------------------------------------------------


def test_apple_profile_names_the_user_and_carries_the_internal_ca(site: PimailServer) -> None:
    b = logged_in(site, f"dave@{DOMAIN}")
    assert "/settings/ca.pem" in b.get("/settings").text  # the internal CA is in use
    page = b.get("/settings/pimail.mobileconfig")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("application/x-apple-aspen-config")
    assert page.headers["Content-Disposition"] == 'attachment; filename="pimail.mobileconfig"'
    profile = plistlib.loads(page.body)
    by_type = {p["PayloadType"]: p for p in profile["PayloadContent"]}
    mail = by_type["com.apple.mail.managed"]
    assert mail["EmailAddress"] == mail["IncomingMailServerUsername"] == f"dave@{DOMAIN}"
    assert mail["IncomingMailServerHostName"] == "mx.test"
    assert mail["IncomingMailServerPortNumber"] == site.imaps_port
    assert mail["OutgoingMailServerPortNumber"] == site.submissions_port
    ca_pem = (site.data_dir / "tls" / "ca" / "ca.pem").read_bytes()
    ca_der = x509.load_pem_x509_certificate(ca_pem).public_bytes(serialization.Encoding.DER)
    assert by_type["com.apple.security.root"]["PayloadContent"] == ca_der
    download = b.get("/settings/ca.pem")
    assert download.status == 200 and download.body == ca_pem
    assert "attachment" in download.headers["Content-Disposition"]


def test_no_ca_when_an_acme_certificate_is_in_use() -> None:
    from pimail.web.settings import internal_ca_in_use

    class Certs:
        def __init__(self, names: list[str]) -> None:
            self.loaded_names = names

    assert internal_ca_in_use(Certs(["internal"]))
    assert not internal_ca_in_use(Certs(["acme", "internal"]))
    assert not internal_ca_in_use(Certs([])) and not internal_ca_in_use(None)


# -- sender lists -----------------------------------------------------------------------------


def entries(site: PimailServer, address: str) -> list[tuple[str, str]]:
    with main_db(site) as con:
        rows = con.execute("SELECT kind, entry FROM sender_lists WHERE account_id = ?"
                           " ORDER BY entry", (account_id(site, address),)).fetchall()  # fmt: skip
    return [(r[0], r[1]) for r in rows]


def test_sender_lists_add_remove_and_errors(site: PimailServer) -> None:
    address = f"dave@{DOMAIN}"
    b = logged_in(site, address)
    csrf = b.get("/settings").csrf
    added = b.post("/settings/senders/add", {"csrf": csrf, "kind": "block", "entry": "*.spam.test"},
                   follow=False)  # fmt: skip
    assert added.status == 303
    b.post("/settings/senders/add", {"csrf": csrf, "kind": "allow", "entry": "Boss@Work.TEST"})
    page = b.get("/settings")
    assert "<code>spam.test</code>" in page.text and "<code>boss@work.test</code>" in page.text
    assert entries(site, address) == [("allow", "boss@work.test"), ("block", "spam.test")]
    bad = b.post("/settings/senders/add", {"csrf": csrf, "kind": "block", "entry": "<x>@@y"})
    assert bad.status == 400 and "not an address or domain" in bad.text
    assert "&lt;x&gt;@@y" in bad.text and "<x>@@y" not in bad.text  # shown escaped
    odd = b.post("/settings/senders/add", {"csrf": csrf, "kind": "maybe", "entry": "a.test"})
    assert odd.status == 400 and "allow or block" in odd.text
    b.post("/settings/senders/remove", {"csrf": csrf, "entry": "spam.test"})
    assert entries(site, address) == [("allow", "boss@work.test")]


def test_nothing_takes_an_account_from_the_request(site: PimailServer) -> None:
    """Every route works on the session's account: no path has a placeholder,
    and form fields naming another account change nothing of that account."""
    from pimail.web import settings as settings_module

    routes: list[tuple[str, str]] = []

    class Recorder:
        directory = type("D", (), {"con": None})()

        def page(self, method: str, path: str, handler: object, **kw: object) -> None:
            routes.append((method, path))
            assert kw.get("login", True)  # every one of them needs a session

    settings_module.register(Recorder())  # type: ignore[arg-type]
    assert routes and all(path.startswith("/settings") and "{" not in path for _, path in routes)
    source = Path(settings_module.__file__).read_text()
    assert "match_info" not in source and "account_by_id" not in source

    victim, victim_id = f"bob@{DOMAIN}", account_id(site, f"bob@{DOMAIN}")
    b = logged_in(site, f"carol@{DOMAIN}")
    csrf = b.get("/settings").csrf
    foreign = {
        "account": victim,
        "account_id": str(victim_id),
        "username": victim,
        "id": str(victim_id),
    }
    b.post("/settings/senders/add", {"csrf": csrf, "kind": "block", "entry": "x.test", **foreign})
    assert entries(site, victim) == [] and entries(site, f"carol@{DOMAIN}") == [("block", "x.test")]
    with main_db(site) as con:
        con.execute("INSERT INTO sender_lists VALUES (?, 'keep.test', 'allow', 0)", (victim_id,))
    b.post("/settings/senders/remove", {"csrf": csrf, "entry": "keep.test", **foreign})
    assert entries(site, victim) == [("allow", "keep.test")]
    b.post(
        "/settings/vacation", {"csrf": csrf, "enabled": "1", "body": "gone", "days": "7", **foreign}
    )
    with main_db(site) as con:
        owners = [r[0] for r in con.execute("SELECT account_id FROM vacations")]
    assert victim_id not in owners
    b.post("/settings/password", {"csrf": csrf, "current": PASSWORD, "new": NEW_PASSWORD,
                                  "repeat": NEW_PASSWORD, **foreign})  # fmt: skip
    assert browser(site).login(victim, PASSWORD).status == 200  # the victim's is unchanged
    # Carol's own things back as they were.
    back = {"csrf": csrf, "current": NEW_PASSWORD, "new": PASSWORD, "repeat": PASSWORD}
    assert b.post("/settings/password", back, follow=False).status == 303
    b.post("/settings/vacation", {"csrf": csrf, "days": "7"})


# -- vacation ---------------------------------------------------------------------------------


def send_mx(site: PimailServer, sender: str, rcpt: str, message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", site.smtp_port, timeout=10) as s:
        s.sendmail(sender, [rcpt], message)


def queued_replies(site: PimailServer) -> list[tuple[str, str, str, str]]:
    con = sqlite3.connect(site.data_dir / "queue" / "queue.db")
    try:
        rows = con.execute(
            "SELECT m.id, m.sender, m.account, r.address FROM messages m"
            " JOIN recipients r ON r.message_id = m.id ORDER BY m.id"
        ).fetchall()
    finally:
        con.close()
    return [tuple(r) for r in rows]


def test_vacation_form_validation(site: PimailServer) -> None:
    b = logged_in(site, f"dave@{DOMAIN}")
    csrf = b.get("/settings").csrf
    wrong = {"enabled": "1", "body": "x", "start": "2026-08-10", "end": "2026-08-01", "days": "7"}
    page = b.post("/settings/vacation", {"csrf": csrf, **wrong})
    assert page.status == 400 and "The last day comes before the first." in page.text
    assert 'value="2026-08-10"' in page.text  # what was typed is kept
    page = b.post("/settings/vacation", {"csrf": csrf, "enabled": "1", "body": "", "days": "7"})
    assert page.status == 400 and "Write the text" in page.text


def test_vacation_end_to_end(site: PimailServer) -> None:
    carol = f"carol@{DOMAIN}"
    b = logged_in(site, carol)
    csrf = b.get("/settings").csrf
    saved = b.post("/settings/vacation",
                   {"csrf": csrf, "enabled": "1", "subject": "", "body": "Back on Monday.",
                    "start": "", "end": "", "days": "7"}, follow=False)  # fmt: skip
    assert saved.status == 303
    page = b.get("/settings")
    assert "On now." in page.text and "Back on Monday." in page.text
    before = len(queued_replies(site))

    # 1. A foreign sender: the reply is queued, with a null MAIL FROM.
    message = (
        b"From: Ann <ann@remote.test>\r\nTo: Carol <carol@example.org>\r\n"
        b"Subject: Budget 2027\r\nMessage-ID: <budget@remote.test>\r\n\r\nNumbers.\r\n"
    )
    send_mx(site, "ann@remote.test", carol, message)
    [(queue_id, sender, account, rcpt)] = wait_for(lambda: queued_replies(site)[before:])
    assert (sender, account, rcpt) == ("", carol, "ann@remote.test")
    raw = (site.data_dir / "queue" / "messages" / queue_id).read_bytes()
    head = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    for line in (b"From: carol@example.org\r\n", b"To: ann@remote.test\r\n",
                 b"Subject: Auto: Budget 2027\r\n", b"Auto-Submitted: auto-replied\r\n",
                 b"In-Reply-To: <budget@remote.test>\r\n",
                 b"References: <budget@remote.test>\r\n"):  # fmt: skip
        assert line in head, line
    listing = site.cli("queue", "list").stdout
    assert queue_id in listing and "<>" in listing and "ann@remote.test" in listing

    # 2. The same sender again within the period, and a mailing list: no reply.
    send_mx(site, "ann@remote.test", carol, message.replace(b"<budget@", b"<again@"))
    send_mx(site, "dev-bounces@lists.test", carol,
            b"From: dev@lists.test\r\nTo: carol@example.org\r\nList-Id: <dev.lists.test>\r\n"
            b"Subject: digest\r\n\r\n.\r\n")  # fmt: skip
    log = site.log
    wait_for(lambda: "reason=replied recently" in log.read_text())
    wait_for(lambda: "from=<dev-bounces@lists.test> reason=automated sender" in log.read_text())
    assert len(queued_replies(site)) == before + 1

    # 3. A local sender (submission): the reply lands in that account's INBOX.
    dave = f"dave@{DOMAIN}"
    with smtplib.SMTP("127.0.0.1", site.submission_port, timeout=10) as s:
        s.starttls(context=site.client_tls())
        s.login(dave, PASSWORD)
        lunch = (
            b"From: dave@example.org\r\nTo: carol@example.org\r\nSubject: Lunch?\r\n"
            b"Message-ID: <lunch@example.org>\r\n\r\n?\r\n"
        )
        s.sendmail(dave, [carol], lunch)
    [row] = wait_for(
        lambda: [r for r in site.index_rows(dave) if r["hdr_subject"] == "Auto: Lunch?"]
    )
    assert row["hdr_from"] == carol and row["hdr_in_reply_to"] == "<lunch@example.org>"
    [path] = [p for p in site.messages(dave) if p.name == row["filename"]]
    delivered = path.read_bytes()
    assert delivered.startswith(b"Return-Path: <>\r\n")
    assert b"\r\nAuto-Submitted: auto-replied\r\n" in delivered
    assert len(queued_replies(site)) == before + 1  # nothing local went through the queue
    assert site.proc is not None and site.proc.poll() is None


def test_vacation_off_or_outside_its_dates_sends_nothing(site: PimailServer) -> None:
    address = f"erin@{DOMAIN}"
    b = logged_in(site, address)
    csrf = b.get("/settings").csrf
    b.post("/settings/vacation", {"csrf": csrf, "enabled": "1", "body": "Later.",
                                  "start": "2099-01-01", "days": "7"})  # fmt: skip
    assert "On, but outside its dates." in b.get("/settings").text
    before = len(queued_replies(site))
    send_mx(
        site,
        "zoe@remote.test",
        address,
        b"From: zoe@remote.test\r\nTo: erin@example.org\r\nSubject: hi\r\n\r\nhi\r\n",
    )
    wait_for(lambda: "from=<zoe@remote.test> reason=not started" in site.log.read_text())
    assert len(queued_replies(site)) == before
