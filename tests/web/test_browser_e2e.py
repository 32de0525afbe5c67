"""End to end in a real browser: headless Chromium (Playwright, sync API) against a
running pimail over HTTPS with its internal CA trusted (tests/web/conftest.py).

The setup wizard from an empty data directory to the admin's DNS page; webmail
(receive over SMTP, read, reply, attachments both ways, Junk training the filter);
settings (Apple profile, vacation); and every admin page. Each page visited is
saved as a screenshot (test-output/screenshots/e2e-*.png), and each test fails
on any CSP violation, uncaught exception or console error (conftest's hook).

Two servers for the module: `fresh` (no domain, no account: the wizard's) and
`site` (example.org with alice, bob and an administrator); one Chromium."""

from __future__ import annotations

import os
import plistlib
import re
import secrets
import shutil
import smtplib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from conftest import PASSWORD, PimailServer
from dnsserver import DnsServer

from .browser import wait_for
from .conftest import ADDRESS, DOMAIN, HOSTNAME, BrowserLog, open_context, settle, shot, start_site

ALICE = ADDRESS
BOB = f"bob@{DOMAIN}"
ADMIN, ADMIN_PASSWORD = f"admin@{DOMAIN}", "admin-password-1"
WIZARD_HOST = f"mail.{DOMAIN}"
WIZARD_ADMIN_PASSWORD = "wizard-admin-pw"
WIZARD_ALICE_PASSWORD = "wizard-alice-pw"
EXPECT_MS = 5_000
ADMIN_SECTIONS = (  # nav link, heading, screenshot name
    ("Overview", "Administration", "overview"),
    ("Domains", "Domains", "domains"),
    ("Accounts", "Accounts", "accounts"),
    ("Aliases", "Aliases", "aliases"),
    ("Queue", "Outbound queue", "queue"),
    ("Certificates", "Certificates", "certificates"),
    ("Storage", "Storage", "storage"),
    ("Log", "Log", "log"),
    ("Spam filter", "Spam filter", "spam"),
    ("DNS", "DNS records", "dns"),
)


# -- servers ------------------------------------------------------------------------------


def dns_section(dns_server: DnsServer) -> dict[str, dict[str, Any]]:
    """pimail asks the loopback DNS server (empty: quick NXDOMAINs), never the
    host's resolver, for the DNS checks of the admin pages."""
    return {"dns": {"nameservers": [dns_server.address]}}


@pytest.fixture(scope="module")
def fresh(
    tmp_path_factory: pytest.TempPathFactory, browser_ca: Path, dns_server: DnsServer
) -> Iterator[PimailServer]:
    """A server on an empty data directory (no domain, no account), with the
    session's CA seeded as conftest's `start_site` does, so the browser trusts it."""
    data_dir = tmp_path_factory.mktemp("browser-fresh") / "data"
    config = {"auth": {"failure_delay": 0.05, "max_failures": 1000}, **dns_section(dns_server)}
    server = PimailServer(data_dir, config, None, HOSTNAME)
    target = data_dir / "tls" / "ca"
    target.mkdir(mode=0o700, parents=True)
    for name in ("ca.key", "ca.pem"):
        shutil.copyfile(browser_ca / name, target / name)
    os.chmod(target / "ca.key", 0o600)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, browser_ca: Path, dns_server: DnsServer
) -> Iterator[PimailServer]:
    """example.org with alice (conftest.PASSWORD), bob and an administrator."""
    server = start_site(
        tmp_path_factory.mktemp("browser-e2e") / "data", browser_ca, dns_section(dns_server)
    )
    try:
        server.add_user(BOB)
        server.cli("user", "add", ADMIN, "--admin", input=ADMIN_PASSWORD + "\n")
        yield server
    finally:
        server.stop()


@pytest.fixture
def base_url(site: PimailServer) -> str:
    """This module's site, not conftest's `browser_site` (which is then not started)."""
    return f"https://{HOSTNAME}:{site.https_port}"


# -- helpers ------------------------------------------------------------------------------


def log_in(page: Page, address: str, password: str, name: str) -> None:
    """Through the login form; screenshots `name`-login and `name`-home."""
    page.goto("/login")
    shot(page, f"{name}-login")
    page.get_by_label("Email address").fill(address)
    page.get_by_label("Password").fill(password)
    with page.expect_navigation():
        page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Hello, {address}")
    expect(page.locator("header .who")).to_have_text(address)
    shot(page, f"{name}-home")


@contextmanager
def other_user(
    browser: Browser, base_url: str, log: BrowserLog, address: str, name: str
) -> Iterator[Page]:
    """A second browser context (own cookies), logged in as `address`; what
    its pages report goes to the test's log."""
    context = open_context(browser, base_url, log)
    try:
        page = context.new_page()
        log_in(page, address, PASSWORD, name)
        yield page
        settle(context)
    finally:
        context.close()


def deliver(site: PimailServer, rcpt: str, raw: str, sender: str) -> None:
    """Over SMTP, to the MX port, as another server would."""
    with smtplib.SMTP("127.0.0.1", site.smtp_port, timeout=10) as smtp:
        smtp.sendmail(sender, [rcpt], raw.replace("\n", "\r\n").encode())


def message(subject: str, body: str, sender: str, to: str) -> str:
    return (
        f"From: {sender}\nTo: {to}\nSubject: {subject}\n"
        f"Message-ID: <{secrets.token_hex(8)}@remote.test>\n"
        f"Date: Mon, 01 Jan 2024 10:00:00 +0000\n\n{body}\n"
    )


def subjects(site: PimailServer, address: str, folder: str = "INBOX") -> list[str]:
    return [r["hdr_subject"] for r in site.index_rows(address, folder)]


def unread(site: PimailServer, address: str, folder: str = "INBOX") -> int:
    return sum("\\Seen" not in r["flags"].split() for r in site.index_rows(address, folder))


def top_nav(page: Page, name: str) -> Any:
    """A link of the header's navigation (Mail, Settings, Admin)."""
    return page.locator("header.top nav").get_by_role("link", name=name, exact=True)


def folder_link(page: Page, name: str) -> Any:
    return page.get_by_role("navigation", name="Folders").get_by_role("link", name=name)


def open_folder(page: Page, name: str) -> None:
    folder_link(page, name).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(name)


def bayes(site: PimailServer, address: str) -> tuple[int, int, int]:
    """(spam, ham, tokens) learnt for the account, as tests/web/test_mail.py reads them."""
    path = site.data_dir / "bayes.db"
    if not path.exists():
        return (0, 0, 0)
    account_id = site.account_id(address)
    con = sqlite3.connect(path)
    try:
        totals = con.execute(
            "SELECT spam, ham FROM totals WHERE account_id = ?", (account_id,)
        ).fetchone()
        [tokens] = con.execute(
            "SELECT COUNT(*) FROM tokens WHERE account_id = ?", (account_id,)
        ).fetchone()
    except sqlite3.OperationalError:  # not made yet
        return (0, 0, 0)
    finally:
        con.close()
    spam, ham = totals or (0, 0)
    return (int(spam), int(ham), int(tokens))


# -- 1. the setup wizard ------------------------------------------------------------------


def test_setup_wizard_from_a_fresh_data_directory(
    page: Page, fresh: PimailServer, browser_log: BrowserLog
) -> None:
    url = f"https://{HOSTNAME}:{fresh.https_port}"
    page.goto(f"{url}/")
    expect(page).to_have_url(f"{url}/setup")  # no domain, no account: the wizard
    expect(page.get_by_role("heading", name="Welcome to your mail server")).to_be_visible()
    expect(page.get_by_role("link", name="download the box's CA certificate")).to_be_visible()
    shot(page, "e2e-wizard-welcome")
    page.get_by_role("button", name="Start").click()

    # 1. names
    expect(page).to_have_url(f"{url}/setup/names")
    expect(page.get_by_label("Mail domain")).to_be_focused()
    page.get_by_label("Mail domain").fill(DOMAIN)
    page.get_by_label("Host name of this box").fill(WIZARD_HOST)
    shot(page, "e2e-wizard-names")
    page.get_by_role("button", name="Next").click()

    # 2. the administrator (the address is proposed in the domain)
    expect(page).to_have_url(f"{url}/setup/admin")
    expect(page.locator("input[name=address]")).to_have_value(ADMIN)
    page.locator("input[name=password]").fill(WIZARD_ADMIN_PASSWORD)
    page.locator("input[name=password_again]").fill(WIZARD_ADMIN_PASSWORD)
    shot(page, "e2e-wizard-admin")
    page.get_by_role("button", name="Next").click()

    # 3. the first mailbox: another account than the administrator's
    expect(page).to_have_url(f"{url}/setup/mailbox")
    page.get_by_label("Make another mailbox").check()
    page.locator("input[name=address]").fill(ALICE)
    page.locator("input[name=password]").fill(WIZARD_ALICE_PASSWORD)
    page.locator("input[name=password_again]").fill(WIZARD_ALICE_PASSWORD)
    shot(page, "e2e-wizard-mailbox")
    page.get_by_role("button", name="Next").click()

    # 4. certificates: the internal CA
    expect(page).to_have_url(f"{url}/setup/certificates")
    page.get_by_label("The box's own certificate authority").check()
    shot(page, "e2e-wizard-certificates")
    page.get_by_role("button", name="Next").click()

    # 5. outgoing mail: direct
    expect(page).to_have_url(f"{url}/setup/outbound")
    page.get_by_label("Direct").check()
    shot(page, "e2e-wizard-outbound")
    page.get_by_role("button", name="Next").click()

    # 6. review, apply
    expect(page).to_have_url(f"{url}/setup/review")
    summary = page.locator("table.summary")
    for label, value in (
        ("Mail domain", DOMAIN),
        ("Host name", WIZARD_HOST),
        ("Administrator", ADMIN),
        ("First mailbox", ALICE),
        ("Certificates", "the box's own CA"),
        ("Outgoing mail", "direct"),
    ):
        expect(summary.locator("tr", has_text=label).locator("td")).to_contain_text(value)
    shot(page, "e2e-wizard-review")
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(f"{url}/login?next=/admin/welcome")
    shot(page, "e2e-wizard-applied-login")
    assert fresh.cli("user", "list").stdout.splitlines() == [f"{ADMIN}  admin", ALICE]

    # The administrator logs in and lands on the welcome page with the DNS records.
    page.get_by_label("Email address").fill(ADMIN)
    page.get_by_label("Password").fill(WIZARD_ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{url}/admin/welcome")
    expect(page.get_by_role("heading", name="Your mail server is set up")).to_be_visible()
    expect(page.get_by_role("heading", name="2. Publish the DNS records")).to_be_visible()
    expect(page.get_by_role("heading", name=DOMAIN, exact=True)).to_be_visible()
    expect(page.get_by_text(f"_dmarc.{DOMAIN}").first).to_be_visible()
    expect(page.get_by_text(f"https://{WIZARD_HOST}/").first).to_be_visible()  # the next name
    expect(page.locator("header .who")).to_have_text(ADMIN)
    shot(page, "e2e-wizard-admin-welcome")

    # The wizard is gone.
    browser_log.allow(r"status of 404 .* @ https://[^/]+/setup(/names)?$")  # those very 404s
    for path in ("/setup/names", "/setup"):
        response = page.goto(f"{url}{path}")
        assert response is not None and response.status == 404, path
    shot(page, "e2e-wizard-gone")
    page.goto(f"{url}/")  # the home page is the normal one now
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Hello, {ADMIN}")
    shot(page, "e2e-wizard-done-home")


# -- 2. webmail ---------------------------------------------------------------------------


def test_webmail_receive_read_reply(
    page: Page,
    site: PimailServer,
    browser: Browser,
    base_url: str,
    browser_log: BrowserLog,
) -> None:
    subject = "Lunch on Friday?"
    deliver(
        site,
        ALICE,
        message(subject, "Shall we try the new place?", f"Bob <{BOB}>", ALICE),
        sender=BOB,
    )
    wait_for(lambda: subject in subjects(site, ALICE))
    unseen = unread(site, ALICE)
    assert unseen >= 1

    log_in(page, ALICE, PASSWORD, "e2e-mail")
    top_nav(page, "Mail").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Inbox")
    expect(folder_link(page, "Inbox").locator(".count")).to_have_text(str(unseen))
    row = page.locator("table.messages tbody tr", has_text=subject)
    expect(row).to_have_class(re.compile(r"\bunread\b"))
    expect(row.locator("td.who")).to_have_text("Bob")
    shot(page, "e2e-mail-inbox-unread")

    row.get_by_role("link", name=subject).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(subject)
    expect(page.locator(".mail-body")).to_contain_text("Shall we try the new place?")
    expect(page.locator("dl.headers")).to_contain_text(BOB)
    shot(page, "e2e-mail-message")
    # Read now: the count went down.
    if unseen == 1:
        expect(folder_link(page, "Inbox").locator(".count")).to_have_count(0)
    else:
        expect(folder_link(page, "Inbox").locator(".count")).to_have_text(str(unseen - 1))

    page.get_by_role("link", name="Reply", exact=True).click()
    expect(page.get_by_role("heading", name="Write")).to_be_visible()
    expect(page.get_by_label("To", exact=True)).to_have_value(re.compile(re.escape(BOB)))
    expect(page.get_by_label("Subject")).to_have_value(f"Re: {subject}")
    body = page.get_by_label("Message")
    expect(body).to_have_value(re.compile(r"> Shall we try the new place\?"))
    body.press("Control+Home")
    body.press_sequentially("Yes, at noon.\n")  # typed above the quote, as a person would
    shot(page, "e2e-mail-reply-compose")
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("Message sent.")
    shot(page, "e2e-mail-reply-sent")
    assert "\\Answered" in next(
        r["flags"].split() for r in site.index_rows(ALICE) if r["hdr_subject"] == subject
    )

    # Bob, in his own browser context, has the reply in his INBOX.
    with other_user(browser, base_url, browser_log, BOB, "e2e-mail-bob") as bob:
        top_nav(bob, "Mail").click()
        reply = bob.locator("table.messages tbody tr", has_text=f"Re: {subject}")
        expect(reply).to_have_class(re.compile(r"\bunread\b"))
        expect(reply.locator("td.who")).to_contain_text(ALICE)
        shot(bob, "e2e-mail-bob-inbox")
        reply.get_by_role("link", name=f"Re: {subject}").click()
        expect(bob.get_by_role("heading", level=1)).to_have_text(f"Re: {subject}")
        expect(bob.locator(".mail-body")).to_contain_text("Yes, at noon.")
        expect(bob.locator(".mail-body")).to_contain_text("> Shall we try the new place?")
        shot(bob, "e2e-mail-bob-reply")


def test_attachment_round_trip(
    page: Page,
    site: PimailServer,
    browser: Browser,
    base_url: str,
    browser_log: BrowserLog,
) -> None:
    data = secrets.token_bytes(50_000) + b"\r\n.\r\n\x00end"
    subject = "The figures"
    log_in(page, ALICE, PASSWORD, "e2e-attach")
    top_nav(page, "Mail").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Inbox")
    shot(page, "e2e-attach-inbox")
    page.get_by_role("link", name="Write").click()
    expect(page.get_by_role("heading", name="Write")).to_be_visible()
    page.get_by_label("To", exact=True).fill(BOB)
    page.get_by_label("Subject").fill(subject)
    page.get_by_label("Message").fill("Attached, as promised.")
    page.get_by_label("Attach files").set_input_files(
        [{"name": "figures.bin", "mimeType": "application/octet-stream", "buffer": data}]
    )
    shot(page, "e2e-attach-compose")
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("Message sent.")
    shot(page, "e2e-attach-sent")

    with other_user(browser, base_url, browser_log, BOB, "e2e-attach-bob") as bob:
        top_nav(bob, "Mail").click()
        expect(bob.get_by_role("heading", level=1)).to_have_text("Inbox")
        shot(bob, "e2e-attach-bob-inbox")
        bob.locator("table.messages tbody tr", has_text=subject).get_by_role(
            "link", name=subject
        ).click()
        expect(bob.locator(".mail-body")).to_contain_text("Attached, as promised.")
        link = bob.locator("table.attachments").get_by_role("link", name="figures.bin")
        expect(link).to_be_visible()
        shot(bob, "e2e-attach-received")
        with bob.expect_download() as download_info:
            link.click()
        download = download_info.value
        assert download.failure() is None
        assert download.suggested_filename == "figures.bin"
        assert Path(download.path()).read_bytes() == data  # byte for byte


SPAM = (
    "From: winner@lottery.test\nTo: {to}\nSubject: You have WON\n"
    "Message-ID: <{id}@lottery.test>\n\n"
    "Claim your prize money now, click the link, free casino bonus!\n"
)


def test_junk_button_moves_the_message_and_trains_the_filter(
    page: Page, site: PimailServer
) -> None:
    deliver(site, ALICE, SPAM.format(to=ALICE, id=secrets.token_hex(6)), "winner@lottery.test")
    wait_for(lambda: "You have WON" in subjects(site, ALICE))
    spam, ham, tokens = bayes(site, ALICE)

    log_in(page, ALICE, PASSWORD, "e2e-junk")
    top_nav(page, "Mail").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Inbox")
    shot(page, "e2e-junk-inbox")
    page.locator("table.messages tbody tr", has_text="You have WON").get_by_role(
        "link", name="You have WON"
    ).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("You have WON")
    shot(page, "e2e-junk-message")
    page.get_by_role("button", name="Junk", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("Moved to Junk.")
    expect(page.locator("table.messages")).not_to_contain_text("You have WON")
    shot(page, "e2e-junk-moved")

    open_folder(page, "Junk")
    expect(page.locator("table.messages tbody tr", has_text="You have WON")).to_be_visible()
    expect(page.get_by_role("button", name="Not junk")).to_be_visible()
    shot(page, "e2e-junk-folder")
    assert "You have WON" in subjects(site, ALICE, "Junk")
    assert "You have WON" not in subjects(site, ALICE)
    after = bayes(site, ALICE)
    assert after[:2] == (spam + 1, ham)  # learnt as spam once
    assert after[2] > tokens  # the message's tokens, counted


# -- 3. settings --------------------------------------------------------------------------


def test_settings_apple_profile_and_vacation(page: Page, site: PimailServer) -> None:
    log_in(page, ALICE, PASSWORD, "e2e-settings")
    top_nav(page, "Settings").click()
    expect(page.get_by_role("heading", name=f"Settings for {ALICE}")).to_be_visible()
    shot(page, "e2e-settings-page")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download the profile for iPhone, iPad and Mac").click()
    download = download_info.value
    assert download.failure() is None
    assert download.suggested_filename == "pimail.mobileconfig"
    profile = plistlib.loads(Path(download.path()).read_bytes())
    by_type = {p["PayloadType"]: p for p in profile["PayloadContent"]}
    mail = by_type["com.apple.mail.managed"]
    assert mail["EmailAddress"] == mail["IncomingMailServerUsername"] == ALICE
    assert mail["IncomingMailServerHostName"] == HOSTNAME
    assert mail["IncomingMailServerPortNumber"] == site.imaps_port
    assert "com.apple.security.root" in by_type  # the internal CA comes along

    vacation = page.locator("section#vacation")
    expect(vacation.locator(".status")).to_have_text("Off.")
    vacation.get_by_label("Answer incoming mail automatically").check()
    vacation.get_by_label("Subject").fill("Out of office")
    # By name: the accessible name of a label wrapping a textarea takes in its text.
    vacation.locator("textarea[name=body]").fill("Back on Monday.")
    shot(page, "e2e-settings-vacation-form")
    vacation.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_be_visible()
    expect(vacation.locator(".status")).to_have_text("On now.")
    expect(vacation.get_by_label("Answer incoming mail automatically")).to_be_checked()
    expect(vacation.locator("textarea[name=body]")).to_have_value("Back on Monday.")
    shot(page, "e2e-settings-vacation-on")

    # It answers: bob writes, bob gets the auto-reply (local: straight to his INBOX).
    deliver(site, ALICE, message("Are you in?", "?", f"Bob <{BOB}>", ALICE), sender=BOB)
    wait_for(lambda: "Out of office" in subjects(site, BOB))


# -- 4. admin -----------------------------------------------------------------------------


def test_admin_pages_render(page: Page, site: PimailServer) -> None:
    log_in(page, ADMIN, ADMIN_PASSWORD, "e2e-admin")
    top_nav(page, "Admin").click()
    nav = page.locator("nav.admin-nav")
    for link, heading, name in ADMIN_SECTIONS:
        nav.get_by_role("link", name=link, exact=True).click()
        expect(page.get_by_role("heading", level=1)).to_have_text(heading)
        expect(nav.locator("a.current")).to_have_text(link)
        shot(page, f"e2e-admin-{name}")
    # Something of the site on the pages that list it.
    nav.get_by_role("link", name="Accounts", exact=True).click()
    for address in (ALICE, BOB, ADMIN):
        expect(page.locator("main").get_by_text(address).first).to_be_visible()
    nav.get_by_role("link", name="Domains", exact=True).click()
    expect(page.locator("main").get_by_text(DOMAIN).first).to_be_visible()
    # The DNS records of the domain, from the DNS page's link.
    nav.get_by_role("link", name="DNS", exact=True).click()
    page.locator("main").get_by_role("link", name=DOMAIN).first.click()
    expect(page).to_have_url(re.compile(rf"/admin/dns/{re.escape(DOMAIN)}$"))
    expect(page.get_by_text(f"_dmarc.{DOMAIN}").first).to_be_visible()
    shot(page, "e2e-admin-dns-domain")


def test_the_servers_logged_no_errors(fresh: PimailServer, site: PimailServer) -> None:
    """After all of the above, no request ended in an exception on either server."""
    for server in (fresh, site):
        log = server.log.read_text(errors="replace")
        assert "Traceback" not in log and "Error handling request" not in log, server.log
