"""The login throttle over real sockets: one throttle for the web login, IMAP,
POP3 and SMTP AUTH, that neither interleaved successes nor parallel attempts
sidestep, and that leaves honest users elsewhere (and at their known
addresses) alone. The policy: docs/ARCHITECTURE.md, "Login throttling".

What was checked is read from the server's log (one line per decision:
decision=ok|fail for a password checked, decision=refused for one that was
not), so the tests do not depend on timing. Each test attacks from its own
loopback addresses (the server listens on 127.0.0.1; clients bind 127.0.N.M as
their source) and its own accounts, so they share one server."""

from __future__ import annotations

import asyncio
import re
import smtplib
from collections.abc import Iterator

import aiohttp
import pytest

from conftest import PASSWORD, PimailServer
from web.browser import Browser

DOMAIN = "example.org"
ADMIN, ADMIN_PASSWORD = f"admin@{DOMAIN}", "admin-password"
LIMIT = 5  # auth.max_failures: per address
ACCOUNT_LIMIT = 8  # auth.max_failures_per_account
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
         "mallory", "oscar", "peggy")  # fmt: skip
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def user(name: str) -> str:
    return f"{name}@{DOMAIN}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PimailServer]:
    server = PimailServer(
        tmp_path_factory.mktemp("throttle") / "data",
        {
            "auth": {"failure_delay": 0.05, "max_failures": LIMIT,
                     "max_failures_per_account": ACCOUNT_LIMIT,
                     "max_failures_known_address": 20, "max_throttle_delay": 0.1},
            "imap": {"max_connections_per_ip": 200},
        },
    )  # fmt: skip
    server.cli("domain", "add", DOMAIN)
    server.cli("user", "add", ADMIN, "--admin", input=ADMIN_PASSWORD + "\n")
    for name in USERS:
        server.add_user(user(name))
    server.start()
    yield server
    server.stop()


def decisions(site: PimailServer, service: str, address: str, ip: str) -> dict[str, int]:
    """How the server decided this (service, account, address)'s attempts, from its log."""
    pattern = re.compile(
        rf"login service={service} user={re.escape(address)} ip={re.escape(ip)} decision=(\w+)"
    )
    found = {"ok": 0, "fail": 0, "refused": 0}
    for m in pattern.finditer(site.log.read_text(errors="replace")):
        found[m.group(1)] += 1
    return found


def checked(site: PimailServer, service: str, address: str, ip: str) -> int:
    d = decisions(site, service, address, ip)
    return d["ok"] + d["fail"]


# -- clients that choose their source address ---------------------------------------------


async def imap_login(site: PimailServer, address: str, password: str, source: str) -> bytes:
    """LOGIN over IMAPS from `source`: the tagged reply."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", site.imaps_port, ssl=site.client_tls(), server_hostname="localhost",
        local_addr=(source, 0),
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):
            assert (await reader.readline()).startswith(b"* OK")
            writer.write(f'a LOGIN "{address}" "{password}"\r\n'.encode())
            while not (line := await reader.readline()).startswith(b"a ") and line:
                pass
            return line
    finally:
        writer.close()


async def pop3_login(site: PimailServer, address: str, password: str, source: str) -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", site.pop3s_port, ssl=site.client_tls(), server_hostname="localhost",
        local_addr=(source, 0),
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):
            assert (await reader.readline()).startswith(b"+OK")
            writer.write(f"USER {address}\r\n".encode())
            assert (await reader.readline()).startswith(b"+OK")
            writer.write(f"PASS {password}\r\n".encode())
            return await reader.readline()
    finally:
        writer.close()


class WebClient:
    """The login form over HTTPS from `source`, as a browser sends it (the CSRF
    double submit: the pimail_csrf cookie and the same token in the form)."""

    def __init__(self, site: PimailServer, source: str) -> None:
        self.base = f"https://127.0.0.1:{site.https_port}"
        # 24 connections at once: under web.max_connections_per_ip (32), which
        # closes any more from one address before a request is read.
        connector = aiohttp.TCPConnector(ssl=site.client_tls(), local_addr=(source, 0), limit=24)
        self.http = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True),
            timeout=aiohttp.ClientTimeout(total=120),
        )  # fmt: skip

    async def __aenter__(self) -> WebClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()

    async def form(self) -> str:
        self.http.cookie_jar.clear()  # a fresh visitor: no session, a new CSRF cookie
        async with self.http.get(self.base + "/login") as response:
            found = _CSRF.search(await response.text())
            assert found
            return found.group(1)

    async def login(self, address: str, password: str, csrf: str | None = None) -> int:
        """303 (logged in) or 401 (wrong, or refused)."""
        data = {"csrf": csrf or await self.form(), "username": address, "password": password}
        async with self.http.post(
            self.base + "/login", data=data, allow_redirects=False
        ) as response:
            return response.status


async def web_login(site: PimailServer, address: str, password: str, source: str) -> int:
    async with WebClient(site, source) as web:
        return await web.login(address, password)


# -- the interleaved-success attack ---------------------------------------------------------


def test_interleaved_successes_do_not_reset_the_web_throttle(site: PimailServer) -> None:
    """Nine wrong for alice, one right for the attacker's own bob, five times."""
    attacker = "127.0.1.1"
    alice, bob = user("alice"), user("bob")

    async def attack() -> tuple[list[int], list[int], int]:
        async with WebClient(site, attacker) as web:
            assert await web.login(bob, PASSWORD) == 303  # bob knows his password
            guesses, own = [], []
            for _ in range(5):
                guesses += [await web.login(alice, f"guess-{i}") for i in range(9)]
                own.append(await web.login(bob, PASSWORD))
            return guesses, own, await web.login(alice, PASSWORD)

    guesses, own, right = asyncio.run(attack())
    assert set(guesses) == {401} and own == [303] * 5
    assert checked(site, "web", alice, attacker) == LIMIT  # not 45
    assert decisions(site, "web", alice, attacker)["refused"] == 45 + 1 - LIMIT
    assert right == 401  # alice's right password from the attacker's address: refused too


def test_interleaved_successes_do_not_reset_the_imap_throttle(site: PimailServer) -> None:
    attacker = "127.0.2.1"
    carol, dave = user("carol"), user("dave")

    async def attack() -> tuple[list[bytes], list[bytes], bytes]:
        assert b"OK" in await imap_login(site, dave, PASSWORD, attacker)
        guesses, own = [], []
        for _ in range(5):
            guesses += [await imap_login(site, carol, f"guess-{i}", attacker) for i in range(9)]
            own.append(await imap_login(site, dave, PASSWORD, attacker))
        return guesses, own, await imap_login(site, carol, PASSWORD, attacker)

    guesses, own, right = asyncio.run(attack())
    assert all(reply.startswith(b"a OK") for reply in own)
    failed = [g for g in guesses if b"NO [AUTHENTICATIONFAILED]" in g]
    refused = [g for g in guesses if b"NO [UNAVAILABLE]" in g]
    assert len(failed) == LIMIT and len(refused) == 45 - LIMIT
    assert checked(site, "imap", carol, attacker) == LIMIT
    assert right.startswith(b"a NO [UNAVAILABLE]")  # refused, not "wrong"


# -- many attempts at once ------------------------------------------------------------------


def test_parallel_imap_guesses_are_counted_before_they_are_checked(site: PimailServer) -> None:
    erin, frank = user("erin"), user("frank")
    attacker, honest, home, elsewhere = "127.0.3.1", "127.0.3.2", "127.0.3.3", "127.0.3.4"

    async def run() -> tuple[list[bytes], bytes, bytes, bytes]:
        assert (await imap_login(site, erin, PASSWORD, home)).startswith(b"a OK")
        replies = await asyncio.gather(
            *(imap_login(site, erin, f"guess-{i}", attacker) for i in range(100))
        )
        return (
            replies,
            await imap_login(site, frank, PASSWORD, honest),
            await imap_login(site, erin, PASSWORD, home),
            await imap_login(site, erin, PASSWORD, elsewhere),
        )

    replies, other_user, erin_home, erin_elsewhere = asyncio.run(run())
    assert all(r.startswith(b"a NO") for r in replies)
    assert sum(b"[AUTHENTICATIONFAILED]" in r for r in replies) <= LIMIT
    assert checked(site, "imap", erin, attacker) <= LIMIT
    assert decisions(site, "imap", erin, attacker)["refused"] >= 100 - LIMIT
    # Another account from another address: untouched (and the server saw that address).
    assert other_user.startswith(b"a OK")
    assert decisions(site, "imap", frank, honest)["ok"] == 1
    # erin at home, where she logged in before: her own allowance.
    assert erin_home.startswith(b"a OK")
    # erin from an address she never used: one attacking address filled her
    # account's count with only the guesses it was allowed (5 of 8), so she is
    # checked there too (how the account's limit holds against many addresses:
    # test_a_known_address_is_still_known_after_a_restart, tests/test_throttle.py).
    assert erin_elsewhere.startswith(b"a OK")


def test_parallel_web_guesses_are_counted_before_they_are_checked(site: PimailServer) -> None:
    grace, heidi = user("grace"), user("heidi")
    attacker, honest, home = "127.0.4.1", "127.0.4.2", "127.0.4.3"

    async def run() -> tuple[list[int], int, int]:
        assert await web_login(site, grace, PASSWORD, home) == 303
        async with WebClient(site, attacker) as web:
            csrf = await web.form()  # one visitor, a hundred posts at once
            statuses = await asyncio.gather(
                *(web.login(grace, f"guess-{i}", csrf) for i in range(100))
            )
        return (
            list(statuses),
            await web_login(site, heidi, PASSWORD, honest),
            await web_login(site, grace, PASSWORD, home),
        )

    statuses, other_user, grace_home = asyncio.run(run())
    assert statuses == [401] * 100
    assert checked(site, "web", grace, attacker) <= LIMIT
    assert other_user == 303 and decisions(site, "web", heidi, honest)["ok"] == 1
    assert grace_home == 303


# -- the other protocols ----------------------------------------------------------------------


def test_pop3_goes_through_the_same_throttle(site: PimailServer) -> None:
    ivan, attacker = user("ivan"), "127.0.5.1"

    async def run() -> tuple[list[bytes], bytes, int]:
        guesses = [await pop3_login(site, ivan, f"guess-{i}", attacker) for i in range(LIMIT)]
        # ...then the web, from the same address, is refused as well: one throttle.
        return (
            guesses,
            await pop3_login(site, ivan, PASSWORD, attacker),
            await web_login(site, ivan, PASSWORD, attacker),
        )

    guesses, right, web = asyncio.run(run())
    assert all(g.startswith(b"-ERR [AUTH]") for g in guesses)
    assert right.startswith(b"-ERR [SYS/TEMP]")  # RFC 3206: temporary, not the credentials
    assert web == 401
    assert checked(site, "pop3", ivan, attacker) == LIMIT
    assert decisions(site, "web", ivan, attacker) == {"ok": 0, "fail": 0, "refused": 1}


def test_smtp_auth_goes_through_the_same_throttle(site: PimailServer) -> None:
    judy, attacker = user("judy"), "127.0.6.1"

    def login(password: str) -> tuple[int, bytes]:
        context = site.client_tls()
        with smtplib.SMTP_SSL(
            "127.0.0.1", site.submissions_port, context=context, source_address=(attacker, 0),
            timeout=30,
        ) as smtp:  # fmt: skip
            smtp.ehlo()
            smtp.user, smtp.password = judy, password
            try:  # one attempt: AUTH PLAIN (login() would go on with AUTH LOGIN)
                return smtp.auth("PLAIN", smtp.auth_plain)
            except smtplib.SMTPAuthenticationError as e:
                return e.smtp_code, e.smtp_error

    codes = [login(f"guess-{i}")[0] for i in range(LIMIT)]
    assert codes == [535] * LIMIT
    code, text = login(PASSWORD)
    assert code == 454 and text.startswith(b"4.7.0")  # RFC 4954 6: temporary failure
    assert checked(site, "submission", judy, attacker) == LIMIT
    assert asyncio.run(imap_login(site, judy, PASSWORD, attacker)).startswith(b"a NO [UNAVAILABLE]")


# -- the admin page --------------------------------------------------------------------------


def test_the_admin_page_lists_and_lifts(site: PimailServer) -> None:
    mallory, oscar, attacker = user("mallory"), user("oscar"), "127.0.7.1"

    async def attack() -> None:
        for i in range(ACCOUNT_LIMIT):  # the account's limit, from two addresses
            source = attacker if i < LIMIT else "127.0.7.2"
            assert await imap_login(site, mallory, f"guess-{i}", source)

    asyncio.run(attack())
    admin = Browser(f"https://127.0.0.1:{site.https_port}", site.client_tls())
    assert admin.login(ADMIN, ADMIN_PASSWORD).status == 200
    page = admin.get("/admin/throttle")
    assert page.status == 200
    assert f"<code>{attacker}</code>" in page.text and f"<code>{mallory}</code>" in page.text
    assert 'action="/admin/throttle/lift"' in page.text
    # Lifted, the address may log in to another account again...
    assert asyncio.run(imap_login(site, oscar, PASSWORD, attacker)).startswith(
        b"a NO [UNAVAILABLE]"
    )
    csrf = page.csrf
    lifted = admin.post("/admin/throttle/lift", {"csrf": csrf, "kind": "address", "key": attacker})
    assert lifted.status == 200 and f"Lifted: {attacker}" in lifted.text
    assert f"<code>{attacker}</code>" not in lifted.text
    assert asyncio.run(imap_login(site, oscar, PASSWORD, attacker)).startswith(b"a OK")
    # ...but mallory's account is still held back, until that is lifted too.
    assert asyncio.run(imap_login(site, mallory, PASSWORD, "127.0.7.3")).startswith(
        b"a NO [UNAVAILABLE]"
    )
    lifted = admin.post("/admin/throttle/lift", {"csrf": csrf, "kind": "account", "key": mallory})
    assert lifted.status == 200
    assert asyncio.run(imap_login(site, mallory, PASSWORD, "127.0.7.3")).startswith(b"a OK")
    # Lifting what is not held back: 400; without the CSRF token: 403.
    again = admin.post("/admin/throttle/lift", {"csrf": csrf, "kind": "account", "key": mallory})
    assert again.status == 400
    forged = admin.post("/admin/throttle/lift", {"kind": "address", "key": "127.0.0.9"})
    assert forged.status == 403


# -- a restart (last: it empties the throttle every test above filled) --------------------


def test_a_known_address_is_still_known_after_a_restart(site: PimailServer) -> None:
    peggy, attacker, home, elsewhere = user("peggy"), "127.0.8.1", "127.0.8.3", "127.0.8.4"
    assert asyncio.run(imap_login(site, peggy, PASSWORD, home)).startswith(b"a OK")
    site.stop()
    site.start()

    async def run() -> tuple[list[bytes], bytes, bytes]:
        guesses = [  # two addresses, past the account's limit (8)
            await imap_login(site, peggy, f"guess-{i}", source)
            for source in (attacker, "127.0.8.2")
            for i in range(LIMIT)
        ]
        return (
            guesses,
            await imap_login(site, peggy, PASSWORD, elsewhere),
            await imap_login(site, peggy, PASSWORD, home),
        )

    guesses, from_elsewhere, from_home = asyncio.run(run())
    assert all(g.startswith(b"a NO") for g in guesses)
    assert from_elsewhere.startswith(b"a NO [UNAVAILABLE]")  # the account is held back...
    assert from_home.startswith(b"a OK")  # ...but not at home, restart or not
