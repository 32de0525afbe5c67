"""The smaller faults of issue 13, each over real sockets: the open redirect
after login, 500s for malformed bodies, headers missing on errors, tracebacks
for aborted uploads, aiohttp's version in `Server:`, the Host header reflected
in the HTTP redirect, sessions that outlive `pimail user passwd`, an admin
resetting their own password without the current one, inline-image URLs that
outlive the session, and vnd.*+xml attachments served with their own type."""

from __future__ import annotations

import asyncio
import base64
import http.client
import re
import time
import urllib.parse
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from conftest import PASSWORD, PimailServer
from pimail.web.server import CSP, Web

from .browser import Browser
from .rawhttp import connect, cookies_of, post_head, read_response
from .test_mail import HTML_MAIL, PNG, deliver, message_url

DOMAIN = "example.org"
ALICE, CAROL, DAVE = f"alice@{DOMAIN}", f"carol@{DOMAIN}", f"dave@{DOMAIN}"
ADMIN, ADMIN_PASSWORD = f"admin@{DOMAIN}", "admin-password"
SECURITY_HEADERS = ("content-security-policy", "x-content-type-options", "x-frame-options",
                    "referrer-policy", "strict-transport-security")  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PimailServer]:
    server = PimailServer(
        tmp_path_factory.mktemp("fixes") / "data",
        {"auth": {"failure_delay": 0.05, "max_failures": 1000}},
    )
    server.cli("domain", "add", DOMAIN)
    for user in (ALICE, CAROL, DAVE):
        server.add_user(user)
    server.cli("user", "add", ADMIN, "--admin", input=ADMIN_PASSWORD + "\n")
    server.start()
    yield server
    server.stop()


def browser(site: PimailServer) -> Browser:
    return Browser(f"https://127.0.0.1:{site.https_port}", site.client_tls())


def login(site: PimailServer, user: str = ALICE, password: str = PASSWORD) -> Browser:
    b = browser(site)
    assert b.login(user, password).status == 200
    return b


# -- the redirect after login ---------------------------------------------------------------

EVIL = [
    "/\t/evil.example/", "/\r/evil.example/", "/\n/evil.example/", "\t//evil.example/",
    "/\\evil.example/", "\\\\evil.example/", "//evil.example/", "/\\/evil.example/",
    "/%09/evil.example/", "/%0d/evil.example/", "/%0a/evil.example/", "/%5c/evil.example/",
    "/%2f%2fevil.example/", "%2f%2fevil.example/", "https://evil.example/", "http:evil.example",
    "//evil.example@mx.test/", "/ /evil.example", "javascript:alert(1)", " /mail", "/mail\x00x",
    "/\u3000/evil.example", "///evil.example",
]  # fmt: skip


def lands_here(location: str, site: PimailServer) -> bool:
    """What a browser makes of the Location (WHATWG URL: tab, CR, LF dropped,
    backslash read as slash) is a path of this very site."""
    here = f"https://127.0.0.1:{site.https_port}/login"
    cleaned = re.sub(r"[\t\r\n]", "", location).replace("\\", "/")
    target = urllib.parse.urlsplit(urllib.parse.urljoin(here, cleaned))
    return target.netloc == f"127.0.0.1:{site.https_port}" and target.path.startswith("/")


@pytest.mark.parametrize("target", EVIL)
def test_next_ends_on_a_same_site_path(site: PimailServer, target: str) -> None:
    for in_query in (False, True):  # the form's field, or the login page's ?next=
        b = browser(site)
        token = b.get("/login").csrf
        form = {"csrf": token, "username": ALICE, "password": PASSWORD}
        path = "/login"
        if in_query:
            path += "?" + urllib.parse.urlencode({"next": target})
        else:
            form["next"] = target
        page = b.post(path, form, follow=False)
        assert page.status == 303
        assert page.redirected_to is not None and lands_here(page.redirected_to, site), target
    shown = browser(site).get("/login?" + urllib.parse.urlencode({"next": target}))
    value = re.search(r'name="next" value="([^"]*)"', shown.text)
    assert value is None or lands_here(value.group(1).replace("&amp;", "&"), site)


def test_next_keeps_a_real_local_path(site: PimailServer) -> None:
    b = browser(site)
    token = b.get("/login").csrf
    page = b.post("/login", {"csrf": token, "username": ALICE, "password": PASSWORD,
                             "next": "/mail/3?page=2&sort=from"}, follow=False)  # fmt: skip
    assert page.redirected_to == "/mail/3?page=2&sort=from"


# -- malformed bodies: 400 (or 403), never 500, always with the headers ---------------------


def raw_post(
    site: PimailServer, path: str, body: bytes, ctype: str, cookies: dict[str, str]
) -> tuple[int, dict[str, str]]:
    with connect(site) as sock:
        sock.sendall(post_head(path, len(body), ctype, cookies) + body)
        status, headers, _ = read_response(sock)
    return status, headers


def has_security_headers(headers: dict[str, str]) -> bool:
    return all(name in headers for name in SECURITY_HEADERS) and headers["server"] == "pimail"


def test_malformed_bodies_get_400_with_the_headers(site: PimailServer) -> None:
    b = login(site)
    cookies = cookies_of(b)
    token = b.get("/mail/compose").csrf
    form = "application/x-www-form-urlencoded"

    def mp(*parts: bytes, boundary: str = "XyZ") -> tuple[bytes, str]:
        return b"".join(parts), f"multipart/form-data; boundary={boundary}"

    csrf_part = f'--XyZ\r\nContent-Disposition: form-data; name="csrf"\r\n\r\n{token}\r\n'.encode()
    cases = {
        "non-UTF-8 form": (b"csrf=" + token.encode() + b"&to=\xff\xfe", form),
        "non-UTF-8 token": (b"csrf=\xc3\x28", form),
        "multipart line over 1 MiB (streamed)": mp(csrf_part, b"--XyZ\r\nContent-Disposition: "
                                          + b"x" * (1200 * 1024) + b"\r\n\r\nv\r\n--XyZ--\r\n"),
        "multipart line over 512 KiB": mp(csrf_part, b"--XyZ\r\nContent-Disposition: "
                                          + b"x" * (600 * 1024) + b"\r\n\r\nv\r\n--XyZ--\r\n"),
        "multipart without a boundary": (csrf_part, "multipart/form-data"),
        "multipart broken boundary": mp(b"--Other\r\n\r\nx\r\n--Other--\r\n"),
        "multipart never ends": mp(csrf_part, b"--XyZ\r\nContent-Disposition: form-data;"
                                   b' name="to"\r\n\r\nabc'),
        "multipart unknown charset": mp(csrf_part, b"--XyZ\r\nContent-Disposition: form-data;"
                                        b' name="to"\r\nContent-Type: text/plain; charset=nope'
                                        b"\r\n\r\nabc\r\n--XyZ--\r\n"),
        "multipart encoded part": mp(csrf_part, b"--XyZ\r\nContent-Disposition: form-data;"
                                     b' name="to"\r\nContent-Transfer-Encoding: base64'
                                     b"\r\n\r\nYWJj\r\n--XyZ--\r\n"),
        "multipart gzip part": mp(csrf_part, b"--XyZ\r\nContent-Disposition: form-data;"
                                  b' name="to"\r\nContent-Encoding: gzip\r\n\r\nabc\r\n'
                                  b"--XyZ--\r\n"),
        "multipart nested": mp(csrf_part, b"--XyZ\r\nContent-Type: multipart/mixed; boundary=In"
                               b"\r\n\r\n--In\r\n\r\nx\r\n--In--\r\n--XyZ--\r\n"),
    }  # fmt: skip
    for name, (body, ctype) in cases.items():
        paths = ["/mail/compose"] if "streamed" in name else ["/mail/compose", "/settings/vacation"]
        for path in paths:
            status, headers = raw_post(site, path, body, ctype, cookies)
            assert status == 400, (name, path, status)
            assert has_security_headers(headers), (name, headers)
    # A non-ASCII token is a wrong token: 403, as any other (it was a 500).
    anonymous = browser(site)
    anonymous.get("/login")
    for path, jar in (("/login", cookies_of(anonymous)), ("/settings/vacation", cookies)):
        status, headers = raw_post(site, path, "csrf=é&x=1".encode(), form, jar)
        assert status == 403 and has_security_headers(headers), path
    # Multipart whose first part is not the token: refused before anything else is read.
    late, ctype = mp(b'--XyZ\r\nContent-Disposition: form-data; name="to"\r\n\r\nx\r\n', csrf_part,
                     b"--XyZ--\r\n")  # fmt: skip
    assert raw_post(site, "/mail/compose", late, ctype, cookies)[0] == 403
    assert "Traceback" not in site.log.read_text()


def test_aiohttps_own_errors_name_no_version(site: PimailServer) -> None:
    for request in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n"):
        with connect(site) as sock:
            sock.sendall(request)
            status, headers, _ = read_response(sock)
        assert status == 400 and headers.get("server") == "pimail", headers
    b = browser(site)
    for path in ("/login", "/no/such/page", "/static/style.css"):
        page = b.get(path)
        assert page.headers["Server"] == "pimail", path
        assert page.headers["Content-Security-Policy"]
    plain = Browser(f"http://127.0.0.1:{site.http_port}").get("/x", follow=False)
    assert plain.headers["Server"] == "pimail" and plain.headers["X-Content-Type-Options"]


def test_an_unexpected_error_is_a_500_with_the_headers() -> None:
    """Web's own middleware and hook around a handler that fails (no route of
    the real server fails on purpose): one log line, a 500 with every header."""

    async def run() -> tuple[int, dict[str, str], str]:
        web_ = Web.__new__(Web)
        web_.sessions = SimpleNamespace(get=lambda token: None)  # type: ignore[assignment]

        async def broken(request: web.Request) -> web.Response:
            raise RuntimeError("boom")

        app = web.Application(middlewares=[web_._security])
        app.on_response_prepare.append(web_._headers)
        app.router.add_get("/", broken)
        async with (
            TestServer(app, host="127.0.0.1") as server,
            ClientSession() as client,
            client.get(server.make_url("/")) as response,
        ):
            return response.status, dict(response.headers), await response.text()

    status, headers, text = asyncio.run(run())
    assert status == 500 and "boom" not in text
    assert headers["Content-Security-Policy"] == CSP and headers["Server"] == "pimail"
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"]


def test_an_aborted_upload_logs_one_line(site: PimailServer) -> None:
    b = login(site)
    token = b.get("/mail/compose").csrf
    start = len(site.log.read_text())
    head = post_head("/mail/compose", 5_000_000, "multipart/form-data; boundary=XyZ", cookies_of(b))
    first = (f'--XyZ\r\nContent-Disposition: form-data; name="csrf"\r\n\r\n{token}\r\n'
             '--XyZ\r\nContent-Disposition: form-data; name="attachment"; filename="a.bin"\r\n'
             "\r\n").encode() + b"x" * 1_000_000  # fmt: skip
    anonymous = browser(site)
    login_token = anonymous.get("/login").csrf
    for data in (
        head + first,
        post_head("/login", 9000, cookies=cookies_of(anonymous)) + f"csrf={login_token}".encode(),
    ):
        sock = connect(site)
        sock.sendall(data)
        time.sleep(0.2)
        sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = site.log.read_text()[start:]
        if log.count("web body aborted") >= 2:
            break
        time.sleep(0.05)
    assert log.count("web body aborted") == 2, log
    assert "Traceback" not in log and "Error handling request" not in log
    assert not list((site.data_dir / "spool" / "web").iterdir())


# -- the redirect to HTTPS -------------------------------------------------------------------


def redirect_for(site: PimailServer, host: str) -> str:
    con = http.client.HTTPConnection("127.0.0.1", site.http_port, timeout=10)
    con.putrequest("GET", "/mail?x=1", skip_host=True)
    con.putheader("Host", host)
    con.endheaders()
    response = con.getresponse()
    assert response.status == 301
    location = response.getheader("Location") or ""
    con.close()
    return location


def test_the_https_redirect_names_only_our_hosts(site: PimailServer) -> None:
    port = site.https_port
    ours = {"mx.test": "mx.test", "MX.TEST.": "mx.test", f"mx.test:{site.http_port}": "mx.test",
            f"mail.{DOMAIN}": f"mail.{DOMAIN}", f"mta-sts.{DOMAIN}": f"mta-sts.{DOMAIN}",
            "127.0.0.1": "127.0.0.1", f"127.0.0.1:{site.http_port}": "127.0.0.1",
            "[::1]": "[::1]"}  # fmt: skip
    for host, expected in ours.items():
        assert redirect_for(site, host) == f"https://{expected}:{port}/mail?x=1", host
    for host in ("evil.example", "evil.example:80", "mx.test.evil.example", "127.0.0.2",
                 "[::2]", "a" * 300, "mx.test@evil.example", "evil.example/x"):  # fmt: skip
        assert redirect_for(site, host) == f"https://mx.test:{port}/mail?x=1", host


# -- sessions and passwords --------------------------------------------------------------------


def test_pimail_user_passwd_ends_web_sessions(site: PimailServer) -> None:
    b = login(site, DAVE)
    assert b.get("/settings", follow=False).status == 200
    site.cli("user", "passwd", DAVE, input="another-password-1\n")
    gone = b.get("/settings", follow=False)
    assert gone.status == 303 and (gone.redirected_to or "").startswith("/login")
    login(site, DAVE, "another-password-1")


def test_an_admin_changes_their_own_password_under_settings_only(site: PimailServer) -> None:
    admin = login(site, ADMIN, ADMIN_PASSWORD)
    page = admin.get("/admin/accounts")
    assert 'href="/settings#password"' in page.text
    own = admin.post("/admin/accounts/password",
                     {"csrf": page.csrf, "address": ADMIN, "password": "taken-over-1"})  # fmt: skip
    assert own.status == 400 and "Settings" in own.text
    login(site, ADMIN, ADMIN_PASSWORD)  # unchanged
    assert browser(site).login(ADMIN, "taken-over-1").status == 401
    form = {"csrf": page.csrf, "address": CAROL, "password": "carols-new-1"}
    other = admin.post("/admin/accounts/password", form)
    assert other.status == 200
    login(site, CAROL, "carols-new-1")


def test_inline_image_urls_end_with_the_session(site: PimailServer) -> None:
    deliver(site, ALICE, HTML_MAIL.format(subject="Inline", png=base64.b64encode(PNG).decode()))
    b = login(site)
    page = b.get(message_url(site, ALICE, "Inline"))
    frame = re.search(r'<iframe[^>]*src="([^"]+)"', page.text).group(1).replace("&amp;", "&")
    inner = b.get(frame)
    image = re.search(r'<img src="(/mail/[^"]+/inline/\d+\?[^"]+)"', inner.text).group(1)
    image = image.replace("&amp;", "&")
    anonymous = browser(site)
    assert anonymous.get(image).body == PNG
    other = login(site)  # another session's signature does not carry over
    other_image = re.search(r'<img src="(/mail/[^"]+/inline/\d+\?[^"]+)"',
                            other.get(frame).text).group(1).replace("&amp;", "&")  # fmt: skip
    assert other_image != image
    forged = re.sub(r"s=[0-9a-f]+", "s=" + re.search(r"s=([0-9a-f]+)", other_image).group(1), image)
    assert anonymous.get(forged).status == 404
    assert b.post("/logout", {"csrf": b.get("/").csrf}, follow=False).status == 303
    assert anonymous.get(image).status == 404
    assert anonymous.get(other_image).body == PNG  # the other session lives on


def test_vnd_xml_attachments_are_downloads_of_no_type(site: PimailServer) -> None:
    parts = "".join(
        f"--B\r\nContent-Type: {ctype}\r\nContent-Disposition: attachment;"
        f' filename="f{n}"\r\n\r\n<x xmlns="http://www.w3.org/1999/xhtml"><script>1</script></x>'
        "\r\n"
        for n, ctype in enumerate(TYPES)
    )
    deliver(site, ALICE, (
        f"From: x@remote.test\r\nTo: {ALICE}\r\nSubject: Types\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: text/plain\r\n'
        f"\r\nSee.\r\n{parts}--B--\r\n"
    ))  # fmt: skip
    b = login(site)
    view = b.get(message_url(site, ALICE, "Types"))
    links = dict(
        (name, link)
        for link, name in re.findall(
            r'<a href="(/mail/\d+/\d+/part/\d+)" download>([^<]+)</a>', view.text
        )
    )
    for n, (ctype, served) in enumerate(TYPES.items()):
        got = b.get(links[f"f{n}"])
        assert got.status == 200, ctype
        assert got.headers["Content-Type"].split(";")[0] == served, ctype
        assert got.headers["Content-Disposition"].startswith("attachment")


TYPES = {
    "application/vnd.evil+xml": "application/octet-stream",
    "application/vnd.ms-excel": "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet":
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.foo+html": "application/octet-stream",
    "image/svg+xml": "application/octet-stream",
    "video/vnd.x+xml": "application/octet-stream",
    "application/xhtml+xml": "application/octet-stream",
    "application/pdf": "application/pdf",
}  # fmt: skip
