"""The web server (pimail.web.server) over real HTTP and HTTPS: login and
sessions, CSRF, the security headers, the shared login limiter, the HTTP side
(ACME challenges, redirect), MTA-STS and client autoconfiguration."""

from __future__ import annotations

import re
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import PASSWORD, PimailServer

from .browser import Browser

DOMAIN = "example.org"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PimailServer]:
    server = PimailServer(
        tmp_path_factory.mktemp("web") / "data",
        {"auth": {"failure_delay": 0.05, "max_failures": 5}},
        None,
        "mx.test",
    )
    server.cli("domain", "add", DOMAIN)
    server.add_user(f"alice@{DOMAIN}")
    server.add_user(f"bob@{DOMAIN}")
    server.start()
    yield server
    server.stop()


def browser(site: PimailServer) -> Browser:
    return Browser(f"https://127.0.0.1:{site.https_port}", site.client_tls())


def test_login_sets_a_strict_session_cookie_and_logout_ends_it(site: PimailServer) -> None:
    b = browser(site)
    assert b.get("/", follow=False).redirected_to in ("/login?next=%2F", "/login?next=/")
    page = b.login(f"alice@{DOMAIN}", PASSWORD)
    assert page.status == 200 and f"Hello, alice@{DOMAIN}" in page.text
    cookie = b.cookie("pimail_session")
    assert cookie is not None and cookie.secure
    assert cookie.has_nonstandard_attr("HttpOnly")
    # SameSite is not kept by the jar: read it from a fresh login's Set-Cookie.
    fresh = browser(site)
    form = fresh.get("/login")
    set_cookie = fresh.post(
        "/login",
        {"csrf": form.csrf, "username": f"alice@{DOMAIN}", "password": PASSWORD},
        follow=False,
    ).headers.get_all("Set-Cookie")
    assert any("pimail_session=" in c and "SameSite=Strict" in c and "Secure" in c
               and "HttpOnly" in c for c in set_cookie)  # fmt: skip
    # Only the token's hash is stored.
    con = sqlite3.connect(site.data_dir / "pimail.db")
    stored = [row[0] for row in con.execute("SELECT token_hash FROM web_sessions")]
    assert cookie.value not in stored and len(stored) >= 2
    home = b.get("/")
    out = b.post("/logout", {"csrf": home.csrf}, follow=False)
    assert out.status == 303 and out.redirected_to == "/login"
    b.jar.set_cookie(cookie)  # replaying the old cookie: logged out for good
    assert b.get("/", follow=False).status == 303


def test_wrong_password_and_the_shared_limiter(site: PimailServer) -> None:
    import imaplib

    b = browser(site)
    page = b.login(f"bob@{DOMAIN}", "wrong")
    assert page.status == 401 and "Wrong address or password" in page.text
    assert b.cookie("pimail_session") is None
    for _ in range(4):  # with IMAP's failures, one limiter per client address
        with imaplib.IMAP4("127.0.0.1", site.imap_port) as imap:
            imap.starttls(site.client_tls())
            with pytest.raises(imaplib.IMAP4.error):
                imap.login(f"bob@{DOMAIN}", "wrong")
    assert b.login(f"bob@{DOMAIN}", PASSWORD).status == 401  # the right password, blocked
    site.stop()  # the limiter is in memory: a restart forgets it
    site.start()
    assert b.login(f"bob@{DOMAIN}", PASSWORD).status == 200


def test_forms_need_the_csrf_token_and_our_origin(site: PimailServer) -> None:
    b = browser(site)
    form = b.get("/login")
    creds = {"username": f"alice@{DOMAIN}", "password": PASSWORD}
    assert b.post("/login", creds).status == 403  # no token
    assert b.post("/login", {**creds, "csrf": "forged"}).status == 403
    other = browser(site)  # a token from another visitor's page
    assert b.post("/login", {**creds, "csrf": other.get("/login").csrf}).status == 403
    for origin in ("https://evil.example", "null"):  # "null": a sandboxed or opaque origin
        evil = {"Origin": origin}
        assert b.post("/login", {**creds, "csrf": form.csrf}, headers=evil).status == 403
    assert b.post("/login", {**creds, "csrf": form.csrf}).status == 200
    # Logged in, the session's token is needed: the pre-login one no longer works.
    assert b.post("/logout", {"csrf": form.csrf}).status == 403
    assert b.post("/logout", {"csrf": b.get("/").csrf}, follow=False).status == 303


def test_next_is_a_local_path_only(site: PimailServer) -> None:
    for target, expected in (("/mail?x=1", "/mail?x=1"), ("https://evil.example/", "/"),
                             ("//evil.example/", "/"), ("/\\evil.example", "/")):  # fmt: skip
        b = browser(site)
        form = b.get("/login")
        page = b.post(
            "/login",
            {"csrf": form.csrf, "username": f"alice@{DOMAIN}", "password": PASSWORD,
             "next": target},
            follow=False,
        )  # fmt: skip
        assert page.redirected_to == expected, target


def test_security_headers(site: PimailServer) -> None:
    page = browser(site).get("/login")
    h = page.headers
    csp = h["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'self'" in csp and "default-src 'none'" in csp
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["Referrer-Policy"] == "same-origin"
    assert h["Strict-Transport-Security"].startswith("max-age=")
    assert h["Cache-Control"] == "no-store"
    scripts = re.findall(r"<script[^>]*>", page.text)
    assert scripts and all(" src=" in tag for tag in scripts)  # no inline script
    assert "style=" not in page.text
    css = browser(site).get("/static/style.css")
    assert css.status == 200 and "text/css" in css.headers["Content-Type"]


def test_plain_http_redirects_and_serves_acme_challenges(site: PimailServer) -> None:
    b = Browser(f"http://127.0.0.1:{site.http_port}")
    page = b.get("/mail/INBOX?page=2", follow=False)
    assert page.status == 301
    assert page.redirected_to == f"https://127.0.0.1:{site.https_port}/mail/INBOX?page=2"
    challenges = site.data_dir / "tls" / "acme-challenge"
    challenges.mkdir(parents=True, exist_ok=True)
    (challenges / "tok-EN_1").write_text("tok-EN_1.thumbprint")
    assert b.get("/.well-known/acme-challenge/tok-EN_1").body == b"tok-EN_1.thumbprint"
    assert b.get("/.well-known/acme-challenge/missing").status == 404
    assert b.get("/.well-known/acme-challenge/..%2F..%2Fpimail.db").status == 404
    assert b.post("/login", {"x": "y"}, follow=False).status == 301  # nothing else over HTTP


def test_redirect_names_the_forwarded_https_port(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Behind a port forward (QEMU's user network in `./build.sh qemu`, a
    router's), the HTTPS port browsers reach is not the one pimail listens
    on: web.public_https_port names it, and the redirect from HTTP uses it
    (issue 16 item 7: the redirect dropped the forwarded port)."""
    server = PimailServer(tmp_path / "data", {"web": {"public_https_port": 10443}})
    server.start()
    try:
        b = Browser(f"http://127.0.0.1:{server.http_port}")
        page = b.get("/mail/INBOX?page=2", follow=False)
        assert page.status == 301
        assert page.redirected_to == "https://127.0.0.1:10443/mail/INBOX?page=2"
    finally:
        server.stop()


def test_mta_sts_policy_over_https(site: PimailServer) -> None:
    b = browser(site)
    page = b.get("/.well-known/mta-sts.txt", headers={"Host": f"mta-sts.{DOMAIN}"})
    assert page.status == 200 and page.text.startswith("version: STSv1\r\n")
    assert "mx: mx.test" in page.text
    assert b.get("/.well-known/mta-sts.txt", headers={"Host": "mta-sts.other.test"}).status == 404


def test_thunderbird_autoconfig_over_http_and_https(site: PimailServer) -> None:
    for b in (Browser(f"http://127.0.0.1:{site.http_port}"), browser(site)):
        page = b.get(f"/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=alice@{DOMAIN}")
        assert page.status == 200 and "xml" in page.headers["Content-Type"]
        root = ET.fromstring(page.body)
        imap = root.find("./emailProvider/incomingServer[@type='imap']")
        assert imap is not None and imap.findtext("hostname") == "mx.test"
        assert imap.findtext("port") == str(site.imaps_port)
        assert imap.findtext("socketType") == "SSL"
        byhost = b.get("/mail/config-v1.1.xml", headers={"Host": f"autoconfig.{DOMAIN}"})
        assert byhost.status == 200 and byhost.body == page.body
        assert b.get("/mail/config-v1.1.xml?emailaddress=x@other.test").status == 404


def test_autodiscover(site: PimailServer) -> None:
    request = (
        '<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/'
        'exchange/autodiscover/outlook/requestschema/2006"><Request>'
        f"<EMailAddress>alice@{DOMAIN}</EMailAddress><AcceptableResponseSchema>http://schemas."
        "microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
        "</AcceptableResponseSchema></Request></Autodiscover>"
    ).encode()
    b = browser(site)
    page = b.post("/autodiscover/autodiscover.xml", request,
                  headers={"Content-Type": "text/xml"})  # fmt: skip
    assert page.status == 200 and f"<LoginName>alice@{DOMAIN}</LoginName>" in page.text
    assert f"<Port>{site.submissions_port}</Port>" in page.text
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>'
    refused = b.post("/autodiscover/autodiscover.xml", bomb, headers={"Content-Type": "text/xml"})
    assert refused.status == 200 and "<ErrorCode>600</ErrorCode>" in refused.text
    huge = b.post("/autodiscover/autodiscover.xml", b"<" * (2 * 1024 * 1024),
                  headers={"Content-Type": "text/xml"})  # fmt: skip
    assert huge.status in (200, 413)
    assert site.proc is not None and site.proc.poll() is None


def test_garbage_requests_get_errors_not_crashes(site: PimailServer) -> None:
    import socket
    import ssl

    huge_form = (b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n"
                 b"Content-Type: application/x-www-form-urlencoded\r\n\r\ncsrf=")  # fmt: skip
    long_target = b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    for raw, codes in (
        (b"\x00\xff garbage\r\n\r\n", {b"400"}),
        (b"GET / HTTP/9.9\r\n\r\n", {b"400", b"505"}),
        (long_target, {b"400", b"414"}),
        (huge_form, {b"413"}),
    ):
        address = ("127.0.0.1", site.https_port)
        tls_context = site.client_tls()
        with socket.create_connection(address, timeout=10) as s:
            tls = tls_context.wrap_socket(s, server_hostname="127.0.0.1")
            tls.sendall(raw)
            try:
                reply = tls.recv(200)
            except (ConnectionError, ssl.SSLError):
                reply = b""
            tls.close()
        assert reply[:7] == b"HTTP/1." and reply[9:12] in codes, (raw[:40], reply[:40])
    assert browser(site).get("/login").status == 200


def test_silent_trickling_and_too_many_connections_are_closed(tmp_path: Any) -> None:
    """A client that connects and sends nothing, or trickles a request head, is
    closed after web.request_timeout; one over web.max_connections_per_ip is
    closed at once; the others keep being served."""
    import socket
    import time

    server = PimailServer(
        tmp_path / "data",
        {"web": {"request_timeout": 2.0, "max_connections_per_ip": 4}},
        None,
        "mx.test",
    )
    server.start()
    try:
        address = ("127.0.0.1", server.http_port)
        held = [socket.create_connection(address, timeout=10) for _ in range(4)]
        extra = socket.create_connection(address, timeout=10)
        assert extra.recv(100) == b""  # the fifth: closed at once, nothing served
        extra.close()
        started = time.monotonic()
        trickler = held[0]
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\n":  # a byte a 0.1 s: never a whole head
            try:
                trickler.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
        for s in held:
            s.settimeout(10)
            assert s.recv(100) == b""  # closed by the server
            s.close()
        assert time.monotonic() - started < 8
        # Room again: a normal request is served.
        page = Browser(f"http://127.0.0.1:{server.http_port}").get("/", follow=False)
        assert page.status == 301
        assert "web connection refused ip=127.0.0.1" in server.log.read_text()
    finally:
        server.stop()
