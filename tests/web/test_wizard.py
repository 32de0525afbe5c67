"""The setup wizard (pimail.web.wizard) from a fresh data directory, over real
HTTPS: who may use it, the setup token, each step's checks, what applying
makes, and that it is gone afterwards."""

from __future__ import annotations

import imaplib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PimailServer
from dnsserver import DnsServer
from pimail import config, db
from pimail.auth.accounts import Directory
from pimail.web import wizard

from .browser import Browser, Page

DOMAIN = "example.org"
HOST = f"mail.{DOMAIN}"
ADMIN, ADMIN_PASSWORD = f"admin@{DOMAIN}", "admin-password-1"
ALICE, ALICE_PASSWORD = f"alice@{DOMAIN}", "alice-password-1"


# -- the rules alone -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, lan",
    [
        ("127.0.0.1", True), ("10.1.2.3", True), ("172.16.0.9", True), ("172.32.0.1", False),
        ("192.168.178.20", True), ("169.254.10.1", True), ("::1", True), ("fd12:3456::1", True),
        ("fe80::1%eth0", True), ("::ffff:192.168.1.2", True), ("::ffff:8.8.8.8", False),
        ("8.8.8.8", False), ("100.64.0.1", False), ("2a00:1450::1", False), ("", False),
        (None, False), ("not an address", False),
    ],
)  # fmt: skip
def test_only_the_local_network(address: str | None, lan: bool) -> None:
    assert wizard.is_lan(address) is lan


def test_tokens_from_the_data_directory_and_the_boot_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot = tmp_path / "boot-token"
    monkeypatch.setattr(wizard, "BOOT_TOKEN_FILE", boot)
    data = tmp_path / "data"
    data.mkdir()
    assert wizard.setup_tokens(data) == []
    boot.write_text("from-the-card\n")
    assert wizard.setup_tokens(data) == ["from-the-card"]
    (data / "setup-token").write_text("t0k3n\n")
    tokens = wizard.setup_tokens(data)
    assert tokens == ["t0k3n", "from-the-card"]
    assert wizard.token_matches(" t0k3n\n", tokens)
    assert wizard.token_matches("from-the-card", tokens)
    assert not wizard.token_matches("t0k3", tokens) and not wizard.token_matches("", tokens)


def test_setup_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wizard, "BOOT_TOKEN_FILE", tmp_path / "none")
    settings = config.Settings(data_dir=tmp_path)
    directory = Directory(db.open_main(settings.db_path))
    assert not wizard.setup_done(settings, directory)  # fresh
    directory.add_domain(DOMAIN)
    directory.add_account(ADMIN, "$scrypt$x", is_admin=True)
    assert wizard.setup_done(settings, directory)  # set up from the command line
    (tmp_path / "setup-token").write_text("t\n")
    assert not wizard.setup_done(settings, directory)  # prepared headlessly: finish in the web
    wizard.mark_done(settings, ADMIN)
    assert wizard.setup_done(settings, directory)
    assert json.loads((tmp_path / "setup-done").read_text())["admin"] == ADMIN


# -- over HTTPS ----------------------------------------------------------------------------------


@pytest.fixture
def fresh(make_server, dns_server: DnsServer) -> Iterator[PimailServer]:
    """A server on an empty data directory: no domain, no account."""
    dns_server.reset()
    server: PimailServer = make_server(sections={"dns": {"nameservers": [dns_server.address]}})
    yield server
    server.stop()


def browser(server: PimailServer) -> Browser:
    return Browser(f"https://127.0.0.1:{server.https_port}", server.client_tls())


def post(b: Browser, path: str, form: dict[str, str], csrf_from: Page) -> Page:
    return b.post(path, {"csrf": csrf_from.csrf, **form}, follow=False)


def step(b: Browser, name: str, form: dict[str, str]) -> Page:
    """Submit a step's form; the page it answers (following the redirect)."""
    page = b.get(f"/setup/{name}")
    assert page.status == 200, (name, page.status)
    return b.post(f"/setup/{name}", {"csrf": page.csrf, **form})


def errors_of(page: Page) -> str:
    import html

    return html.unescape(page.text.split('class="error" role="alert">', 1)[1].split("</p>")[0])


def test_the_wizard_end_to_end(fresh: PimailServer, dns_server: DnsServer) -> None:
    fresh.start()
    b = browser(fresh)
    # Before setup, the home page leads to the wizard; its steps need a start.
    assert b.get("/", follow=False).redirected_to == "/setup"
    welcome = b.get("/setup")
    assert welcome.status == 200 and "not private" in welcome.text
    assert 'href="/setup/ca.pem"' in welcome.text and 'name="token"' not in welcome.text
    ca = b.get("/setup/ca.pem")
    assert ca.body.startswith(b"-----BEGIN CERTIFICATE-----")
    assert ca.headers["Content-Type"] == "application/x-x509-ca-cert"
    assert b.get("/setup/names", follow=False).redirected_to == "/setup"
    assert b.post("/setup", {}).status == 403  # CSRF, as everywhere
    started = post(b, "/setup", {}, welcome)
    assert started.status == 303 and started.redirected_to == "/setup/names"
    # Later steps wait for the earlier ones.
    assert b.get("/setup/outbound", follow=False).redirected_to == "/setup/names"

    # 1. names
    bad = step(b, "names", {"domain": "not a domain", "hostname": "x"})
    assert bad.status == 400
    assert "not a domain name" in errors_of(bad) and "host name" in errors_of(bad)
    assert 'value="not a domain"' in bad.text  # the form keeps what was typed
    page = step(b, "names", {"domain": "Example.ORG", "hostname": HOST})
    assert page.status == 200 and page.url.endswith("/setup/admin")
    assert f'value="admin@{DOMAIN}"' in page.text

    # 2. the administrator
    for form, error in (
        ({"address": "admin@other.test"}, f"must be in {DOMAIN}"),
        ({"address": "ad+min@example.org"}, "no '+'"),
        ({"address": ADMIN, "password": "short", "password_again": "short"}, "at least 10"),
        ({"address": ADMIN, "password": ADMIN_PASSWORD, "password_again": "other-password"},
         "differ"),
    ):  # fmt: skip
        refused = step(b, "admin", form)
        assert refused.status == 400 and error in errors_of(refused), error
        assert ADMIN_PASSWORD not in refused.text
    page = step(b, "admin", {"address": ADMIN, "password": ADMIN_PASSWORD,
                             "password_again": ADMIN_PASSWORD})  # fmt: skip
    assert page.url.endswith("/setup/mailbox")

    # 3. the first mailbox: another account
    refused = step(
        b,
        "mailbox",
        {
            "choice": "other",
            "address": "alice@elsewhere.test",
            "password": ALICE_PASSWORD,
            "password_again": ALICE_PASSWORD,
        },
    )
    assert refused.status == 400 and f"must be in {DOMAIN}" in errors_of(refused)
    page = step(b, "mailbox", {"choice": "other", "address": ALICE, "password": ALICE_PASSWORD,
                               "password_again": ALICE_PASSWORD})  # fmt: skip
    assert page.url.endswith("/setup/certificates")

    # 4. certificates: the name check asks pimail's resolver (the loopback DNS server)
    assert "port 80" in page.text and "Let's Encrypt" in page.text
    dns_server.add(HOST, "A", "10.0.0.7")
    checked = b.post("/setup/certificates", {"csrf": page.csrf, "action": "check"})
    assert checked.status == 200 and "10.0.0.7" in checked.text
    assert "only private addresses" in checked.text
    dns_server.set(HOST, "A", "93.184.215.14")
    checked = b.post("/setup/certificates", {"csrf": page.csrf, "action": "check"})
    assert "93.184.215.14" in checked.text and 'class="host-check ok"' in checked.text
    refused = step(b, "certificates", {"choice": "neither"})
    assert refused.status == 400
    page = step(b, "certificates", {"choice": "internal"})
    assert page.url.endswith("/setup/outbound")
    assert "next starts" in page.text  # the settings apply at the next start

    # 5. outbound through a smarthost
    relay = {
        "choice": "relay",
        "relay_host": "smtp.provider.test",
        "relay_port": "587",
        "relay_security": "starttls",
        "relay_username": "me",
        "relay_password": "relay-pw",
    }
    for change, error in (({"relay_port": "99999"}, "port"), ({"relay_host": "no host!"}, "host"),
                          ({"relay_security": "plain"}, "STARTTLS"),
                          ({"relay_password": ""}, "password")):  # fmt: skip
        refused = step(b, "outbound", {**relay, **change})
        assert refused.status == 400 and error in errors_of(refused), change
    page = step(b, "outbound", relay)
    assert page.url.endswith("/setup/review")
    assert HOST in page.text and ALICE in page.text and "smtp.provider.test:587" in page.text
    assert "relay-pw" not in page.text

    # 6. apply
    applied = post(b, "/setup/apply", {}, page)
    assert applied.status == 303 and applied.redirected_to == "/login?next=/admin/welcome"

    users = fresh.cli("user", "list").stdout.splitlines()
    assert users == [f"{ADMIN}  admin", ALICE]
    keys = fresh.cli("dkim", "list", DOMAIN).stdout
    assert "rsa-sha256  active" in keys and "ed25519-sha256  active" in keys
    assert "postmaster@example.org -> admin@example.org" in fresh.cli("alias", "list").stdout
    assert (fresh.data_dir / "setup-done").exists()
    stored = config.load(fresh.config)
    assert stored.hostname == HOST and stored.tls.acme is False
    assert (stored.outbound.relay_host, stored.outbound.relay_port) == ("smtp.provider.test", 587)
    assert (stored.outbound.relay_username, stored.outbound.relay_password) == ("me", "relay-pw")

    # The wizard is gone: every route 404, the home page is the normal one.
    for path in ("/setup", "/setup/names", "/setup/review", "/setup/ca.pem"):
        assert b.get(path).status == 404, path
    assert b.post("/setup/apply", {"csrf": page.csrf}).status == 404
    assert b.get("/", follow=False).redirected_to.startswith("/login")

    # The administrator logs in and lands on the welcome page with the DNS records.
    login = b.get("/login?next=%2Fadmin%2Fwelcome")
    landed = b.post("/login", {"csrf": login.csrf, "username": ADMIN, "password": ADMIN_PASSWORD,
                               "next": "/admin/welcome"})  # fmt: skip
    assert landed.status == 200 and landed.url.endswith("/admin/welcome")
    assert "Restart" in landed.text and f"_dmarc.{DOMAIN}" in landed.text
    assert "autoconfig" in landed.text and "port 993" in landed.text
    assert b.get("/admin").status == 200
    # The mailbox works with its password (IMAP).
    with imaplib.IMAP4_SSL("127.0.0.1", fresh.imaps_port, ssl_context=fresh.client_tls()) as m:
        assert m.login(ALICE, ALICE_PASSWORD)[0] == "OK"


def test_with_a_setup_token(fresh: PimailServer) -> None:
    fresh.data_dir.mkdir(parents=True, exist_ok=True)
    (fresh.data_dir / "setup-token").write_text("correct horse\n")
    fresh.start()
    b = browser(fresh)
    welcome = b.get("/setup")
    assert 'name="token"' in welcome.text
    refused = post(b, "/setup", {"token": "wrong horse"}, welcome)
    assert refused.status == 403 and "not the setup token" in refused.text
    assert b.get("/setup/names", follow=False).redirected_to == "/setup"
    assert post(b, "/setup", {}, welcome).status == 403  # no token at all
    opened = post(b, "/setup", {"token": "correct horse"}, welcome)
    assert opened.status == 303 and opened.redirected_to == "/setup/names"
    assert b.get("/setup/names").status == 200
    # Another browser has not given the token: it starts at the welcome page.
    other = browser(fresh)
    assert other.get("/setup/names", follow=False).redirected_to == "/setup"


def test_headless_setup_then_the_wizard_finishes(fresh: PimailServer, tmp_path: Path) -> None:
    """`pimail setup apply` made the admin and a token: the wizard asks for the
    token, keeps the domain, and the password typed in it wins."""
    hashed = fresh.cli("user", "hash", input="headless-password\n").stdout.strip()
    toml = tmp_path / "pimail.toml"
    toml.write_text(f'[setup]\ndomain = "{DOMAIN}"\nadmin = "{ADMIN}"\n'
                    f'password_hash = "{hashed}"\nsetup_token = "tok"\n')  # fmt: skip
    fresh.cli("setup", "apply", str(toml))
    fresh.start()
    b = browser(fresh)
    assert b.get("/", follow=False).redirected_to == "/setup"
    post(b, "/setup", {"token": "tok"}, b.get("/setup"))
    names = b.get("/setup/names")
    assert f'value="{DOMAIN}"' in names.text and f'value="mail.{DOMAIN}"' in names.text
    step(b, "names", {"domain": DOMAIN, "hostname": HOST})
    step(b, "admin", {"address": ADMIN, "password": ADMIN_PASSWORD,
                      "password_again": ADMIN_PASSWORD})  # fmt: skip
    step(b, "mailbox", {"choice": "admin"})
    step(b, "certificates", {"choice": "acme", "acme_email": ADMIN})
    review = step(b, "outbound", {"choice": "direct"})
    assert "Let's Encrypt" in review.text
    assert post(b, "/setup/apply", {}, review).redirected_to.startswith("/login")
    assert fresh.cli("user", "list").stdout.splitlines() == [f"{ADMIN}  admin"]
    assert config.load(fresh.config).tls.acme is True
    assert b.login(ADMIN, ADMIN_PASSWORD).status == 200
    assert browser(fresh).login(ADMIN, "headless-password").status == 401


def test_the_certificate_step_refuses_acme_for_a_local_name(fresh: PimailServer) -> None:
    fresh.start()
    b = browser(fresh)
    post(b, "/setup", {}, b.get("/setup"))
    step(b, "names", {"domain": DOMAIN, "hostname": "pimail.local"})
    step(b, "admin", {"address": ADMIN, "password": ADMIN_PASSWORD,
                      "password_again": ADMIN_PASSWORD})  # fmt: skip
    step(b, "mailbox", {"choice": "admin"})
    refused = step(b, "certificates", {"choice": "acme"})
    assert refused.status == 400 and ".local" in errors_of(refused)
    # Changing the domain sends the addresses chosen in the old one back to be chosen again.
    step(b, "names", {"domain": "example.net", "hostname": "mail.example.net"})
    assert b.get("/setup/certificates", follow=False).redirected_to == "/setup/admin"


def test_setup_token_guesses_go_through_the_login_throttle(
    make_server, dns_server: DnsServer
) -> None:
    server: PimailServer = make_server(
        sections={"dns": {"nameservers": [dns_server.address]},
                  "auth": {"max_failures": 3, "failure_delay": 0.05}},
    )  # fmt: skip
    server.data_dir.mkdir(parents=True, exist_ok=True)
    (server.data_dir / "setup-token").write_text("correct horse\n")
    server.start()
    b = browser(server)
    welcome = b.get("/setup")
    for guess in ("wrong horse", "battery staple", "tr0ub4dor"):
        assert post(b, "/setup", {"token": guess}, welcome).status == 403
    # The limit reached: the right token is refused unchecked, with the same page.
    refused = post(b, "/setup", {"token": "correct horse"}, welcome)
    assert refused.status == 403 and "not the setup token" in refused.text
    log = server.log.read_text()
    assert log.count("login service=setup user=(setup?token) ip=127.0.0.1 decision=fail") == 3
    assert "login service=setup user=(setup?token) ip=127.0.0.1 decision=refused" in log
    assert "correct horse" not in log and "wrong horse" not in log
