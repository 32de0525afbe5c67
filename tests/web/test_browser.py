"""The web interface in a real browser: headless Chromium driven by Playwright
against a running pimail over HTTPS, its internal CA trusted (tests/web/conftest.py).

Every test also fails on any CSP violation, uncaught exception or console error
the pages report (conftest's `pytest_runtest_call`), unless it allows it."""

from __future__ import annotations

import re
import smtplib
import time
from email.message import EmailMessage

from playwright.sync_api import BrowserContext, Page, Response, expect

from conftest import PASSWORD, PimailServer

from .conftest import ADDRESS, HOSTNAME, BrowserLog, shot

SESSION_COOKIE = "pimail_session"
EXPECT_MS = 5_000


def log_in(page: Page, address: str = ADDRESS, password: str = PASSWORD) -> Response:
    """Submit the login form; the response the browser ends up on."""
    page.goto("/login")
    page.get_by_label("Email address").fill(address)
    page.get_by_label("Password").fill(password)
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Log in").click()
    return navigation.value


def log_in_ok(page: Page) -> Response:
    response = log_in(page)
    assert response.status == 200, (
        f"login answered {response.status} at {response.url}: {page.inner_text('body')[:300]}"
    )
    return response


def test_login_page_renders(page: Page, base_url: str) -> None:
    response = page.goto("/login")
    assert response is not None and response.status == 200
    assert response.url == f"{base_url}/login"  # over HTTPS, no certificate error
    assert "default-src 'none'" in response.headers["content-security-policy"]
    expect(page).to_have_title(f"Log in · {HOSTNAME}")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    expect(page.get_by_label("Email address")).to_be_focused()  # autofocus
    expect(page.get_by_label("Password")).to_have_attribute("type", "password")
    # The stylesheet (a file: the CSP allows no inline style) was applied.
    assert page.evaluate("document.styleSheets.length") == 1
    assert page.evaluate("document.styleSheets[0].cssRules.length") > 0
    shot(page, "login")


def test_wrong_password_shows_the_error(
    page: Page, context: BrowserContext, browser_log: BrowserLog
) -> None:
    browser_log.allow(r"status of 401 .* @ https://[^/]+/login$")  # the 401 page itself
    assert log_in(page, password="not-the-password").status == 401
    expect(page.get_by_role("alert")).to_contain_text("Wrong address or password")
    expect(page).to_have_url(re.compile(r"/login$"))
    expect(page.get_by_label("Email address")).to_have_value(ADDRESS)
    expect(page.get_by_label("Password")).to_have_value("")
    assert SESSION_COOKIE not in {c["name"] for c in context.cookies()}
    shot(page, "login-wrong-password")


def test_login_lands_on_home_with_the_address(page: Page, base_url: str) -> None:
    log_in_ok(page)
    expect(page).to_have_url(f"{base_url}/")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Hello, {ADDRESS}")
    expect(page.locator("header .who")).to_have_text(ADDRESS)
    expect(page.get_by_role("button", name="Log out")).to_be_visible()
    shot(page, "home")


def test_session_cookie_is_secure_httponly_strict(page: Page, context: BrowserContext) -> None:
    log_in_ok(page)
    expect(page.get_by_role("heading", level=1)).to_contain_text(ADDRESS)
    cookies = {c["name"]: c for c in context.cookies()}
    session = cookies[SESSION_COOKIE]
    assert session["secure"] is True
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert session["domain"] == HOSTNAME  # host-only, no Domain attribute
    assert session["expires"] == -1  # a session cookie: gone when the browser closes
    # HttpOnly as the page's scripts see it.
    assert SESSION_COOKIE not in page.evaluate("document.cookie")
    for cookie in cookies.values():  # the CSRF cookie too
        assert (cookie["secure"], cookie["httpOnly"], cookie["sameSite"]) == (True, True, "Strict")


def test_logout_then_back_does_not_show_the_mailbox(page: Page, base_url: str) -> None:
    """Logout, then the Back button: the browser must neither show the logged-in
    page from its HTTP cache (Cache-Control: no-store) nor restore it from the
    back/forward cache (which Playwright's default flags would hide)."""
    home = log_in_ok(page)
    assert home.url == f"{base_url}/"
    assert "no-store" in home.headers["cache-control"]
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Hello, {ADDRESS}")

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{base_url}/login")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    shot(page, "logged-out")

    page.go_back(wait_until="commit")
    # Asked again, the server sends the login page; restored, the mailbox shows.
    expect(page.get_by_role("heading", name="Log in")).to_be_visible(timeout=EXPECT_MS)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    assert ADDRESS not in page.content()
    shot(page, "logged-out-back")


def test_csp_violations_are_caught(page: Page, browser_log: BrowserLog) -> None:
    """The watcher itself: an inline script and an inline style are refused by
    the CSP and reported, so the other tests' silence means something."""
    page.goto("/login")
    page.evaluate(
        """() => {
          const s = document.createElement('script');
          s.textContent = 'document.title = "ran"';
          document.body.append(s);
          document.body.setAttribute('style', 'color: red');
        }"""
    )
    deadline = time.monotonic() + 5
    while len(browser_log.csp_violations()) < 4 and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    expect(page).to_have_title(f"Log in · {HOSTNAME}")  # the script did not run
    violations = browser_log.csp_violations()
    assert any(v.startswith("csp script-src-elem blocked=inline") for v in violations)
    assert any(v.startswith("csp style-src-attr blocked=inline") for v in violations)
    assert any(v.startswith("console.error") and "script-src" in v for v in violations)
    assert browser_log.problems()  # would fail the test...
    browser_log.allow(r"inline|Content Security Policy")  # ...but were provoked here


def test_html_mail_in_a_sandboxed_iframe_cannot_run_script(
    page: Page, browser_site: PimailServer, browser_log: BrowserLog
) -> None:
    log_in_ok(page)
    expect(page.get_by_role("heading", level=1)).to_contain_text(ADDRESS)
    response = page.goto("/mail")
    assert response is not None and response.status == 200

    subject = "Scripted HTML"
    message = EmailMessage()
    message["From"] = "mallory@elsewhere.test"
    message["To"] = ADDRESS
    message["Subject"] = subject
    message.set_content("plain part")
    message.add_alternative(
        "<html><body><p id=shown>the HTML part</p>"
        "<script>document.body.setAttribute('data-ran', 'script');"
        "top.document.title = 'pwned';</script>"
        "<img src=x onerror=\"document.body.setAttribute('data-ran', 'onerror')\">"
        "</body></html>",
        subtype="html",
    )
    with smtplib.SMTP("127.0.0.1", browser_site.smtp_port, timeout=30) as smtp:
        smtp.send_message(message)

    # Blocked scripts are reported: that is the expected outcome here.
    browser_log.allow(r"sandboxed|allow-scripts|Content Security Policy|inline")
    page.goto("/mail")
    page.get_by_text(subject).first.click()
    frame_element = page.locator("iframe[sandbox]").first
    expect(frame_element).to_be_attached()
    assert "allow-scripts" not in (frame_element.get_attribute("sandbox") or "").split()
    frame = frame_element.content_frame
    expect(frame.get_by_text("the HTML part")).to_be_visible()  # ids are sanitised away
    page.wait_for_timeout(300)  # time for a script that could run to have run
    assert frame.locator("body").get_attribute("data-ran") is None
    assert page.title() != "pwned"
    shot(page, "mail-sandboxed-html")
