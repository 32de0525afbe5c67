"""The admin pages (pimail.web.admin) over real HTTPS: for administrators only,
and each action does what the `pimail` command does, checked with the CLI and
with real clients (IMAP login, SMTP delivery, submission into the queue)."""

from __future__ import annotations

import imaplib
import logging
import smtplib
import sqlite3
import time
from collections.abc import Iterator

import pytest

from conftest import PASSWORD, PimailServer
from dnsserver import DnsServer
from pimail.web.admin import LogBuffer

from .browser import Browser, Page

DOMAIN = "example.org"
ADMIN, ADMIN_PASSWORD = f"admin@{DOMAIN}", "admin-password"
BOB = f"bob@{DOMAIN}"
GET_PAGES = (
    "/admin", "/admin/welcome", "/admin/domains", "/admin/accounts", "/admin/aliases",
    "/admin/queue", "/admin/certificates", "/admin/certificates/ca.pem", "/admin/storage",
    "/admin/log", "/admin/spam", "/admin/dns", f"/admin/dns/{DOMAIN}", "/admin/throttle",
)  # fmt: skip
POST_ACTIONS = (
    "/admin/domains/add", "/admin/domains/remove", "/admin/accounts/add",
    "/admin/accounts/remove", "/admin/accounts/password", "/admin/accounts/quota",
    "/admin/accounts/admin", "/admin/aliases/add", "/admin/aliases/remove", "/admin/queue/retry",
    "/admin/queue/delete", "/admin/certificates/renew", "/admin/throttle/lift",
)  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, dns_server: DnsServer) -> Iterator[PimailServer]:
    # foreign.test fails in the DNS for now: mail to it stays in the queue.
    dns_server.servfail.add("foreign.test")
    server = PimailServer(
        tmp_path_factory.mktemp("admin") / "data",
        {"dns": {"nameservers": [dns_server.address]}}, None, "mx.test",
    )  # fmt: skip
    server.cli("domain", "add", DOMAIN)
    server.cli("user", "add", ADMIN, "--admin", input=ADMIN_PASSWORD + "\n")
    server.add_user(BOB)
    server.start()
    yield server
    server.stop()


def browser(site: PimailServer) -> Browser:
    return Browser(f"https://127.0.0.1:{site.https_port}", site.client_tls())


@pytest.fixture
def admin(site: PimailServer) -> Browser:
    b = browser(site)
    assert b.login(ADMIN, ADMIN_PASSWORD).status == 200
    return b


def act(b: Browser, path: str, form: dict[str, str], page: str | None = None) -> Page:
    """POST an admin form with the session's CSRF token."""
    csrf = b.get(page or path.rsplit("/", 1)[0]).csrf
    return b.post(path, {"csrf": csrf, **form})


def notice(page: Page) -> str:
    import html

    return html.unescape(page.text.split('role="status">', 1)[1].split("</p>")[0])


def error(page: Page) -> str:
    import html

    return html.unescape(page.text.split('class="card error" role="alert">', 1)[1].split("</p>")[0])


def test_every_page_for_admins_only(site: PimailServer, admin: Browser) -> None:
    for path in GET_PAGES:
        assert admin.get(path).status == 200, path
    user = browser(site)
    assert user.login(BOB, PASSWORD).status == 200
    csrf = user.get("/").csrf
    for path in GET_PAGES:
        assert user.get(path).status == 403, path
    for path in POST_ACTIONS:
        assert user.post(path, {"csrf": csrf, "name": "x.example"}).status == 403, path
    assert "/admin" not in user.get("/").text  # no link either
    anonymous = browser(site)
    for path in GET_PAGES:
        assert anonymous.get(path, follow=False).status == 303, path
    assert site.cli("domain", "list").stdout.split() == [DOMAIN]


def test_forms_need_the_csrf_token(admin: Browser) -> None:
    assert admin.post("/admin/domains/add", {"name": "csrf.example"}).status == 403
    assert admin.post("/admin/domains/add", {"name": "csrf.example", "csrf": "x"}).status == 403
    csrf = admin.get("/admin/domains").csrf
    evil = {"Origin": "https://evil.example"}
    assert admin.post("/admin/domains/add", {"name": "csrf.example", "csrf": csrf},
                      headers=evil).status == 403  # fmt: skip
    assert "csrf.example" not in admin.get("/admin/domains").text


def test_domains(site: PimailServer, admin: Browser) -> None:
    added = act(admin, "/admin/domains/add", {"name": "Second.Example"})
    assert added.status == 200 and "Added second.example" in notice(added)
    keys = site.cli("dkim", "list", "second.example").stdout
    assert "rsa-sha256  active" in keys and "ed25519-sha256  active" in keys
    assert "second.example" in site.cli("domain", "list").stdout
    again = act(admin, "/admin/domains/add", {"name": "second.example"})
    assert again.status == 400 and "exists already" in error(again)
    bad = act(admin, "/admin/domains/add", {"name": "not a domain"})
    assert bad.status == 400 and "not a valid domain" in error(bad)
    unconfirmed = act(admin, "/admin/domains/remove", {"name": "second.example"})
    assert unconfirmed.status == 400
    busy = act(admin, "/admin/domains/remove", {"name": DOMAIN, "confirm": "yes"})
    assert busy.status == 400 and "still has" in error(busy)
    removed = act(admin, "/admin/domains/remove", {"name": "second.example", "confirm": "yes"})
    assert removed.status == 200 and "Removed second.example" in notice(removed)
    assert site.cli("domain", "list").stdout.split() == [DOMAIN]


def imap_login(site: PimailServer, address: str, password: str) -> bool:
    with imaplib.IMAP4_SSL("127.0.0.1", site.imaps_port, ssl_context=site.client_tls()) as m:
        try:
            return m.login(address, password)[0] == "OK"
        except imaplib.IMAP4.error:
            return False


def test_accounts(site: PimailServer, admin: Browser) -> None:
    carol = f"carol@{DOMAIN}"
    short = act(admin, "/admin/accounts/add",
                {"address": carol, "password": "short", "password_again": "short"})  # fmt: skip
    assert short.status == 400 and "at least 10" in error(short)
    other = act(admin, "/admin/accounts/add", {"address": "carol@other.test",
                "password": "carol-password", "password_again": "carol-password"})  # fmt: skip
    assert other.status == 400 and "not a local domain" in error(other)
    added = act(admin, "/admin/accounts/add",
                {"address": carol, "password": "carol-password",
                 "password_again": "carol-password"})  # fmt: skip
    assert added.status == 200 and f"Added {carol}" in notice(added)
    assert carol in site.cli("user", "list").stdout
    assert imap_login(site, carol, "carol-password")

    reset = act(admin, "/admin/accounts/password", {"address": carol, "password": "new-password-1"},
                "/admin/accounts")  # fmt: skip
    assert reset.status == 200 and "New password" in notice(reset)
    assert not imap_login(site, carol, "carol-password")
    assert imap_login(site, carol, "new-password-1")

    quota = act(admin, "/admin/accounts/quota", {"address": carol, "quota_mb": "250"})
    assert quota.status == 200 and "250 MiB" in notice(quota)
    con = sqlite3.connect(site.data_dir / "pimail.db")
    [(stored,)] = con.execute("SELECT quota_bytes FROM accounts WHERE localpart = 'carol'")
    con.close()
    assert stored == 250 * 1024 * 1024
    assert act(admin, "/admin/accounts/quota", {"address": carol, "quota_mb": "-1"}).status == 400

    made = act(admin, "/admin/accounts/admin", {"address": carol, "is_admin": "yes"})
    assert made.status == 200 and f"{carol}  admin" in site.cli("user", "list").stdout
    act(admin, "/admin/accounts/admin", {"address": carol, "is_admin": "no"})
    assert f"{carol}  admin" not in site.cli("user", "list").stdout
    # No lock-out: not one's own flag, not one's own account.
    own = act(admin, "/admin/accounts/admin", {"address": ADMIN, "is_admin": "no"})
    assert own.status == 400 and "your own" in error(own)
    own = act(admin, "/admin/accounts/remove", {"address": ADMIN, "confirm": "yes"})
    assert own.status == 400

    unconfirmed = act(admin, "/admin/accounts/remove", {"address": carol})
    assert unconfirmed.status == 400 and carol in site.cli("user", "list").stdout
    removed = act(admin, "/admin/accounts/remove", {"address": carol, "confirm": "yes"})
    assert removed.status == 200 and f"Removed {carol}" in notice(removed)
    assert carol not in site.cli("user", "list").stdout
    assert not imap_login(site, carol, "new-password-1")


def test_aliases_and_catch_all_deliver(site: PimailServer, admin: Browser) -> None:
    added = act(admin, "/admin/aliases/add", {"source": f"sales@{DOMAIN}", "targets": BOB})
    assert added.status == 200 and f"sales@{DOMAIN} -> {BOB}" in site.cli("alias", "list").stdout
    clash = act(admin, "/admin/aliases/add", {"source": BOB, "targets": ADMIN})
    assert clash.status == 400 and "is an account" in error(clash)
    act(admin, "/admin/aliases/add", {"source": f"@{DOMAIN}", "targets": f"{BOB}, {ADMIN}"})
    assert "(catch-all)" in admin.get("/admin/aliases").text
    before = len(site.messages(BOB))
    with smtplib.SMTP("127.0.0.1", site.smtp_port, timeout=10) as s:
        s.sendmail("someone@remote.test", [f"sales@{DOMAIN}"], b"Subject: sales\r\n\r\nx\r\n")
        s.sendmail("someone@remote.test", [f"whoever@{DOMAIN}"], b"Subject: any\r\n\r\nx\r\n")
    assert len(site.messages(BOB)) == before + 2
    for source in (f"sales@{DOMAIN}", f"@{DOMAIN}"):
        removed = act(admin, "/admin/aliases/remove", {"source": source})
        assert removed.status == 200, source
    assert site.cli("alias", "list").stdout.strip() == ""
    with (
        smtplib.SMTP("127.0.0.1", site.smtp_port, timeout=10) as s,
        pytest.raises(smtplib.SMTPRecipientsRefused),
    ):
        s.sendmail("someone@remote.test", [f"sales@{DOMAIN}"], b"Subject: gone\r\n\r\nx\r\n")


def queue_one(site: PimailServer, subject: str) -> str:
    """Bob submits a message to a foreign domain (over TLS); it waits in the queue."""
    with smtplib.SMTP("localhost", site.submission_port, timeout=10) as s:
        s.starttls(context=site.client_tls())
        s.login(BOB, PASSWORD)
        s.sendmail(BOB, ["friend@foreign.test"],
                   f"From: {BOB}\r\nSubject: {subject}\r\n\r\nhello\r\n".encode())  # fmt: skip
    con = sqlite3.connect(site.data_dir / "queue" / "queue.db")
    [message_id] = [r[0] for r in con.execute("SELECT id FROM messages ORDER BY created DESC")][:1]
    con.close()
    return message_id


def test_queue_list_show_retry_delete(site: PimailServer, admin: Browser) -> None:
    message_id = queue_one(site, "to a friend")
    listing = admin.get("/admin/queue")
    assert message_id in listing.text and "friend@foreign.test" in listing.text
    shown = admin.get(f"/admin/queue/{message_id}")
    assert shown.status == 200 and "Subject: to a friend" in shown.text
    assert f"&lt;{BOB}&gt;" in shown.text
    assert admin.get("/admin/queue/NOSUCHID").status == 404
    # The first attempt fails (SERVFAIL): the recipient is deferred, then made due again.
    deadline = time.monotonic() + 20
    while "deferred" not in admin.get("/admin/queue").text and time.monotonic() < deadline:
        time.sleep(0.2)
    retried = act(admin, "/admin/queue/retry", {"id": message_id})
    assert retried.status == 200 and "1 recipient(s) due now" in notice(retried)
    everything = act(admin, "/admin/queue/retry", {})
    assert "due now" in notice(everything)
    deleted = act(admin, "/admin/queue/delete", {"id": message_id})
    assert deleted.status == 200 and f"Deleted {message_id}" in notice(deleted)
    assert message_id not in site.cli("queue", "list").stdout
    assert not (site.data_dir / "queue" / "messages" / message_id).exists()
    again = act(admin, "/admin/queue/delete", {"id": message_id})
    assert again.status == 400


def test_certificates_storage_spam_and_log(site: PimailServer, admin: Browser) -> None:
    certificates = admin.get("/admin/certificates")
    assert "Internal CA" in certificates.text and "pimail internal CA" in certificates.text
    assert "mx.test" in certificates.text and "days left" in certificates.text
    renew = act(admin, "/admin/certificates/renew", {})
    assert renew.status == 409 and "ACME is off" in error(renew)
    ca = admin.get("/admin/certificates/ca.pem")
    assert ca.body == (site.data_dir / "tls" / "ca" / "ca.pem").read_bytes()

    storage = admin.get("/admin/storage")
    assert "Device" in storage.text and BOB in storage.text and "% used" in storage.text

    spam = admin.get("/admin/spam")
    assert BOB in spam.text and "learning" in spam.text

    # A cross-site POST is logged with its Origin: the log page shows it escaped.
    admin.post("/admin/domains/add", {"name": "x"}, headers={"Origin": "https://<b>evil</b>"})
    log = admin.get("/admin/log?level=WARNING")
    assert "cross-site request refused" in log.text
    assert "&lt;b&gt;evil&lt;/b&gt;" in log.text and "<b>evil</b>" not in log.text
    assert "login service=web" not in log.text  # INFO lines are below WARNING
    assert f"login service=web user={ADMIN}" in admin.get("/admin/log").text


def test_the_log_buffer_keeps_the_last_lines() -> None:
    buffer = LogBuffer(capacity=3)
    logger = logging.getLogger("test.admin.buffer")
    logger.addHandler(buffer)
    logger.setLevel(logging.INFO)
    try:
        for n in range(5):
            logger.log(logging.WARNING if n % 2 else logging.INFO, "line %d", n)
    finally:
        logger.removeHandler(buffer)
    lines = buffer.recent()
    assert [line.rsplit(" ", 1)[1] for line in lines] == ["4", "3", "2"]
    assert [line.rsplit(" ", 1)[1] for line in buffer.recent(logging.WARNING)] == ["3"]


def test_renew_now_runs_the_acme_client(make_server, tmp_path) -> None:
    """With ACME on (pebble on loopback), "Renew now" gets a new certificate."""
    from conftest import free_port
    from tls.test_acme import Pebble

    http_port = free_port()
    pebble = Pebble(tmp_path, http_port)
    try:
        server: PimailServer = make_server(sections={
            "web": {"listen_http": [f"127.0.0.1:{http_port}"]},
            "tls": {"acme": True, "acme_directory": pebble.directory,
                    "acme_ca_bundle": str(pebble.cert), "acme_names": ["mail.example.org"]},
        })  # fmt: skip
        server.cli("domain", "add", DOMAIN)
        server.cli("user", "add", ADMIN, "--admin", input=ADMIN_PASSWORD + "\n")
        server.start()
        live = server.data_dir / "tls" / "live" / "acme"
        deadline = time.monotonic() + 60
        while not live.exists() and time.monotonic() < deadline:  # the server's own loop
            time.sleep(0.3)
        # By name: "localhost" is the internal certificate's (an address gets the ACME one).
        b = Browser(f"https://localhost:{server.https_port}", server.client_tls())
        b.login(ADMIN, ADMIN_PASSWORD)
        first = b.get("/admin/certificates")
        assert "Let&#39;s Encrypt (ACME)" in first.text
        serial = first.text.split("<th>Serial</th><td><code>", 1)[1].split("<", 1)[0]
        started = act(b, "/admin/certificates/renew", {})
        assert started.status == 200 and "Renewal started" in notice(started)
        deadline = time.monotonic() + 60
        page = first
        while "status=issued" not in page.text and time.monotonic() < deadline:
            time.sleep(0.5)
            page = b.get("/admin/certificates")
        assert "status=issued" in page.text and "reason=forced" in page.text
        assert page.text.split("<th>Serial</th><td><code>", 1)[1].split("<", 1)[0] != serial
    finally:
        pebble.stop()
