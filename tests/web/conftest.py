"""Browser tests: Playwright (sync API) drives headless Debian Chromium against a
real `pimail serve` on loopback. See tests/web/README.md.

- `browser` (session): one Chromium for the whole run. It trusts a pimail
  internal CA made once per session by pimail's own code and seeded into every
  server these tests start, through an NSS database in a private HOME (that is
  where Chromium on Linux reads locally trusted roots), so pages are checked as
  a user who imported the CA sees them: `ignore_https_errors` stays False.
- `browser_site` (module): a running pimail, domain example.org, user alice.
- `context` / `page` (function): a fresh context (no cookies, no cache) per test.
- `browser_log` (function): console errors, uncaught exceptions and CSP
  violations of every page and frame of the context. A test that leaves one
  there FAILS (see `pytest_runtest_call`); `browser_log.allow(regex)` for the
  ones a test provokes on purpose.
- `shot(page, name)`: a full-page PNG under test-output/screenshots/.

Chromium or certutil missing is a test failure with the fix in the message,
never a skip: CI must not go green without having driven a browser.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from conftest import PimailServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-output" / "screenshots"
HOSTNAME = "mx.test"
DOMAIN = "example.org"
ADDRESS = f"alice@{DOMAIN}"
# The real binary: Debian's /usr/bin/chromium is a shell wrapper that sources
# /etc/chromium.d (system extensions, API keys, --enable-remote-extensions).
CHROMIUM_PATHS = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")
TIMEOUT_MS = 10_000  # per action; a broken page fails fast, not after 30 s

# Reported on every page and not the page's fault... or not yet fixed. Keep short.
ALWAYS_ALLOWED = [
    # The browser asks for /favicon.ico by itself and pimail has none (404).
    re.compile(r"^console\.error .*status of 404 .* @ https://[^/]+/favicon\.ico$"),
]

# Reports every CSP violation in every frame, structured (directive, blocked URL).
# Init scripts and bindings are injected over CDP, so the page's CSP (no inline
# script) does not apply to them. Chrome's console message says the same in
# words; both channels are recorded.
_CSP_INIT_SCRIPT = """
document.addEventListener('securitypolicyviolation', (e) => {
  window.__pimailCspViolation(
    `${e.effectiveDirective} blocked=${e.blockedURI} sample=${e.sample} @ ${e.documentURI}`);
}, true);
"""


def _require_playwright() -> Any:
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail(
            "playwright is not installed: `.venv/bin/pip install -e 'app[test]'` "
            "(or ./build.sh test, which does it)",
            pytrace=False,
        )
    return sync_api


def find_chromium() -> str:
    wanted = os.environ.get("PIMAIL_CHROMIUM")
    if wanted:  # set on purpose: no quiet fallback to another browser
        if os.access(wanted, os.X_OK):
            return wanted
        pytest.fail(f"PIMAIL_CHROMIUM={wanted} is not an executable", pytrace=False)
    for path in CHROMIUM_PATHS:
        if os.access(path, os.X_OK):
            return path
    pytest.fail(
        "Chromium not found (looked at " + ", ".join(CHROMIUM_PATHS) + "): the browser "
        "tests need Debian's chromium: `apt-get install -y chromium` (./build.sh test "
        "installs it), or set PIMAIL_CHROMIUM to a Chromium binary.",
        pytrace=False,
    )


# -- the certificate: one internal CA per session, trusted by the browser -------------


@pytest.fixture(scope="session")
def browser_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The internal CA's directory (ca.pem, ca.key), made by pimail itself."""
    from pimail.tls.ca import ca_dir, ensure_ca

    seed = tmp_path_factory.mktemp("browser-ca")
    ensure_ca(seed, HOSTNAME)
    return ca_dir(seed)


@pytest.fixture(scope="session")
def browser_home(tmp_path_factory: pytest.TempPathFactory, browser_ca: Path) -> Path:
    """A HOME whose ~/.pki/nssdb trusts the CA for TLS servers (trust "C,,"),
    as after a user imported it in chrome://settings/certificates."""
    certutil = shutil.which("certutil")
    if certutil is None:
        pytest.fail(
            "certutil not found: the browser tests need it to make Chromium trust "
            "pimail's CA: `apt-get install -y libnss3-tools`",
            pytrace=False,
        )
    home = tmp_path_factory.mktemp("browser-home")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    for args in (
        ["-N", "--empty-password"],
        ["-A", "-n", "pimail internal CA", "-t", "C,,", "-i", str(browser_ca / "ca.pem")],
    ):
        run = subprocess.run(
            [certutil, "-d", f"sql:{nssdb}", *args], capture_output=True, text=True, timeout=30
        )
        assert run.returncode == 0, f"certutil {args[0]}: {run.stderr or run.stdout}"
    return home


# -- the browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")  # not longer: Playwright's sync API keeps an event loop
def browser(browser_home: Path) -> Iterator[Browser]:  # running, and asyncio.run() then fails
    sync_api = _require_playwright()
    executable = find_chromium()
    playwright = sync_api.sync_playwright().start()
    try:
        browser = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            # Chromium's own sandbox cannot start as root ("Running as root without
            # --no-sandbox is not supported"), which is how CI and the containers
            # run; Playwright then passes --no-sandbox. Anyone else keeps it.
            chromium_sandbox=os.geteuid() != 0,
            # HOME: where Chromium finds the NSS database that trusts our CA.
            env={**os.environ, "HOME": str(browser_home)},
            args=[
                # The server by its name, so that TLS checks the name too; every
                # other name fails to resolve: loopback only, no stray requests.
                f"--host-resolver-rules=MAP {HOSTNAME} 127.0.0.1, MAP * ~NOTFOUND",
            ],
            # Playwright turns the back/forward cache off; real browsers have it,
            # and it is what shows a page again on Back without asking the server.
            ignore_default_args=["--disable-back-forward-cache"],
            timeout=30_000,
        )
    except sync_api.Error as e:
        playwright.stop()
        pytest.fail(f"Chromium ({executable}) did not start: {e}", pytrace=False)
    yield browser
    browser.close()
    playwright.stop()


# -- the server -------------------------------------------------------------------------


def start_site(data_dir: Path, ca: Path, sections: dict | None = None) -> PimailServer:
    """A running pimail whose internal CA is the session's `browser_ca`, with the
    domain example.org and the user alice (password conftest.PASSWORD)."""
    config = {"auth": {"failure_delay": 0.05, "max_failures": 1000}}
    for name, values in (sections or {}).items():
        config.setdefault(name, {}).update(values)
    server = PimailServer(data_dir, config, None, HOSTNAME)
    target = data_dir / "tls" / "ca"
    target.mkdir(mode=0o700, parents=True)
    for name in ("ca.key", "ca.pem"):
        shutil.copyfile(ca / name, target / name)
    os.chmod(target / "ca.key", 0o600)
    server.cli("domain", "add", DOMAIN)
    server.add_user(ADDRESS)
    server.start()
    return server


@pytest.fixture(scope="module")
def browser_site(
    tmp_path_factory: pytest.TempPathFactory, browser_ca: Path
) -> Iterator[PimailServer]:
    server = start_site(tmp_path_factory.mktemp("browser-site") / "data", browser_ca)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def base_url(browser_site: PimailServer) -> str:
    return f"https://{HOSTNAME}:{browser_site.https_port}"


# -- what the browser reports --------------------------------------------------------------


@dataclass
class BrowserLog:
    """Everything the context's pages reported, as "kind text @ url" lines."""

    entries: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=lambda: list(ALWAYS_ALLOWED))

    def add(self, kind: str, text: str, url: str = "") -> None:
        self.entries.append(f"{kind} {text}" + (f" @ {url}" if url else ""))

    def on_console(self, message: ConsoleMessage) -> None:
        self.add(f"console.{message.type}", message.text, message.location.get("url", ""))

    def allow(self, pattern: str) -> None:
        """Accept entries matching `pattern` (re.search) for the rest of the test."""
        self.allowed.append(re.compile(pattern))

    def csp_violations(self) -> list[str]:
        return [e for e in self.entries if e.startswith("csp ") or "Content Security" in e]

    def problems(self) -> list[str]:
        """CSP violations, uncaught exceptions and console errors not allowed."""
        bad = [
            e
            for e in self.entries
            if e.startswith(("csp ", "pageerror ", "console.error "))
            or "Content Security Policy" in e
        ]
        return [e for e in bad if not any(p.search(e) for p in self.allowed)]


@pytest.fixture
def browser_log() -> BrowserLog:
    return BrowserLog()


@pytest.fixture
def context(browser: Browser, base_url: str, browser_log: BrowserLog) -> Iterator[BrowserContext]:
    context = browser.new_context(
        base_url=base_url,
        ignore_https_errors=False,  # the CA is trusted: a certificate error fails
        viewport={"width": 1280, "height": 800},
        locale="en-US",
    )
    context.set_default_timeout(TIMEOUT_MS)
    context.on("console", browser_log.on_console)
    context.on("weberror", lambda error: browser_log.add("pageerror", str(error.error)))
    context.expose_binding(
        "__pimailCspViolation", lambda _source, text: browser_log.add("csp", str(text))
    )
    context.add_init_script(_CSP_INIT_SCRIPT)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def open_context(browser: Browser, base_url: str, log: BrowserLog) -> BrowserContext:
    """Another context set up as the `context` fixture's (a second user logged in
    beside the first, say), reporting to the same `log`, so that what its pages
    report fails the test too. The caller closes it, after `settle(context)`."""
    context = browser.new_context(
        base_url=base_url,
        ignore_https_errors=False,
        viewport={"width": 1280, "height": 800},
        locale="en-US",
    )
    context.set_default_timeout(TIMEOUT_MS)
    context.on("console", log.on_console)
    context.on("weberror", lambda error: log.add("pageerror", str(error.error)))
    context.expose_binding("__pimailCspViolation", lambda _source, text: log.add("csp", str(text)))
    context.add_init_script(_CSP_INIT_SCRIPT)
    return context


def settle(context: BrowserContext) -> None:
    """Let reports already sent by the pages arrive (one round trip each)."""
    for p in context.pages:
        try:
            p.evaluate("0")
        except Exception:  # closed or navigating: nothing more will come from it
            pass


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Fail a browser test that passed but left a CSP violation, an uncaught
    exception or a console error behind; show the log when a test fails."""
    funcargs = getattr(item, "funcargs", {})
    log: BrowserLog | None = funcargs.get("browser_log")
    context: BrowserContext | None = funcargs.get("context")
    try:
        result = yield
    except BaseException:
        if log is not None and log.entries:
            item.add_report_section("call", "browser log", "\n".join(log.entries))
        raise
    if log is not None:
        if context is not None:
            settle(context)
        problems = log.problems()
        if problems:
            item.add_report_section("call", "browser log", "\n".join(log.entries))
            raise AssertionError(
                "the browser reported (CSP violation, JS error or console error):\n  "
                + "\n  ".join(problems)
            )
    return result


# -- screenshots --------------------------------------------------------------------------


def shot(page: Page, name: str) -> Path:
    """Save a full-page PNG as test-output/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / (re.sub(r"[^A-Za-z0-9._-]+", "-", name) + ".png")
    page.screenshot(path=path, full_page=True)
    return path
