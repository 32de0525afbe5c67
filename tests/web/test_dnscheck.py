"""The DNS check (pimail.web.dnscheck): the records `pimail dns` suggests, looked
up live through pimail's Resolver against a real DNS server on loopback that
publishes some of them right, some wrong and some not at all; and the admin
page that shows the result."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from conftest import PimailServer
from dnsserver import DnsServer
from pimail.config import Settings
from pimail.dns.records import Record
from pimail.dns.resolver import MxRecord, Resolver
from pimail.queue.dkim import ACTIVE, ED25519, RSA, DkimKey
from pimail.web import dnscheck
from pimail.web.dnscheck import DIFFERENT, ERROR, MISSING, OK, OPTIONAL

from .browser import Browser

T = TypeVar("T")
DOMAIN = "example.org"
HOST = "mx.example.org"
PUBLIC = "93.184.215.14"  # any global address: nothing is sent there
KEYS = [
    DkimKey(DOMAIN, "pm202611r", RSA, "secret", "MIIBrsakey+/=", ACTIVE, 0),
    DkimKey(DOMAIN, "pm202611e", ED25519, "secret", "ed25519key=", ACTIVE, 0),
]


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on a thread of its own: Playwright's sync API (tests/web's
    browser tests) keeps an event loop running on the main thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def settings() -> Settings:
    return Settings(hostname=HOST)


def by_name(checks: list[dnscheck.Check]) -> dict[tuple[str, str], dnscheck.Check]:
    return {(c.record.name, c.record.type): c for c in checks}


def publish_some(zone: DnsServer) -> None:
    """Right: MX, SPF, the RSA DKIM key, MTA-STS host (CNAME), one SRV, autoconfig
    (as addresses), the host's A. Wrong: the Ed25519 key, DMARC, an SRV port,
    autodiscover. Missing: the rest."""
    wanted = {(r.name, r.type): r.value for r in
              dnscheck.dns_records.records(settings(), DOMAIN, KEYS)}  # fmt: skip
    zone.add(DOMAIN, "MX", f"10 {HOST}.")
    zone.add(DOMAIN, "TXT", '"v=spf1 mx -all"')
    zone.add(DOMAIN, "TXT", '"google-site-verification=abc"')
    rsa = wanted[(f"pm202611r._domainkey.{DOMAIN}", "TXT")]
    zone.add(f"pm202611r._domainkey.{DOMAIN}", "TXT", f'"{rsa[:20]}" "{rsa[20:]}"')  # split
    zone.add(f"pm202611e._domainkey.{DOMAIN}", "TXT", '"v=DKIM1; k=ed25519; p=otherkey="')
    zone.add(f"_dmarc.{DOMAIN}", "TXT", '"v=DMARC1; p=none"')
    zone.add(f"mta-sts.{DOMAIN}", "CNAME", f"{HOST}.")
    zone.add(f"_imaps._tcp.{DOMAIN}", "SRV", f"0 1 993 {HOST}.")
    zone.add(f"_submissions._tcp.{DOMAIN}", "SRV", f"0 1 2465 {HOST}.")
    zone.add(f"autoconfig.{DOMAIN}", "A", PUBLIC)
    zone.add(f"autodiscover.{DOMAIN}", "CNAME", "elsewhere.example.net.")
    zone.add(HOST, "A", PUBLIC)


def test_live_check_against_a_zone_half_right(zone: DnsServer, resolver: Resolver) -> None:
    publish_some(zone)
    checks = run(dnscheck.check_domain(settings(), DOMAIN, KEYS, resolver))
    got = by_name(checks)
    expected = {
        (DOMAIN, "MX"): OK,
        (f"pm202611r._domainkey.{DOMAIN}", "TXT"): OK,
        (f"pm202611e._domainkey.{DOMAIN}", "TXT"): DIFFERENT,
        (f"_dmarc.{DOMAIN}", "TXT"): DIFFERENT,
        (f"_mta-sts.{DOMAIN}", "TXT"): MISSING,
        (f"mta-sts.{DOMAIN}", "CNAME"): OK,
        (f"_smtp._tls.{DOMAIN}", "TXT"): MISSING,
        (f"_imaps._tcp.{DOMAIN}", "SRV"): OK,
        (f"_submissions._tcp.{DOMAIN}", "SRV"): DIFFERENT,
        (f"_imap._tcp.{DOMAIN}", "SRV"): MISSING,
        (f"autoconfig.{DOMAIN}", "CNAME"): OK,  # A records with the host's address
        (f"autodiscover.{DOMAIN}", "CNAME"): DIFFERENT,
        (HOST, "A"): OK,
        (HOST, "AAAA"): OPTIONAL,
        (HOST, "TXT"): MISSING,  # the host name's own SPF
    }
    for key, status in expected.items():
        assert got[key].status == status, (key, got[key])
    spf = next(c for c in checks if c.record.name == DOMAIN and c.record.type == "TXT")
    assert spf.status == OK and "google-site-verification=abc" in spf.found
    assert got[(f"_dmarc.{DOMAIN}", "TXT")].found == ("v=DMARC1; p=none",)
    assert got[(f"autodiscover.{DOMAIN}", "CNAME")].found == ("elsewhere.example.net.",)
    assert got[(HOST, "A")].found == (PUBLIC,)
    # Every suggested record is there once, in the order `pimail dns` prints them.
    suggested = dnscheck.dns_records.records(settings(), DOMAIN, KEYS)
    assert [c.record for c in checks if c.record.type != "AAAA"] == suggested
    assert dnscheck.summary(checks)[OK] == 7


def test_private_address_missing_names_and_temporary_failures(
    zone: DnsServer, resolver: Resolver
) -> None:
    zone.add(HOST, "A", "192.168.1.20")
    zone.servfail.add(f"_dmarc.{DOMAIN}")
    got = by_name(run(dnscheck.check_domain(settings(), DOMAIN, KEYS, resolver)))
    assert got[(HOST, "A")].status == DIFFERENT and "not a public" in got[(HOST, "A")].note
    assert got[(DOMAIN, "MX")].status == MISSING  # NXDOMAIN: the domain is not in the DNS
    assert got[(f"_dmarc.{DOMAIN}", "TXT")].status == ERROR
    assert got[(f"mta-sts.{DOMAIN}", "CNAME")].status == MISSING


def test_a_silent_server_costs_the_timeout_not_more() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # takes questions, never answers
        resolver = Resolver([f"127.0.0.1:{silent.getsockname()[1]}"], timeout=30.0)
        started = time.monotonic()
        checks = run(dnscheck.check_domain(settings(), DOMAIN, KEYS, resolver, timeout=1.0))
        elapsed = time.monotonic() - started
    assert elapsed < 3.0
    assert {c.status for c in checks} == {ERROR}
    assert "within 1 seconds" in checks[0].note


def test_check_host(zone: DnsServer, resolver: Resolver) -> None:
    zone.add(HOST, "A", PUBLIC)
    zone.add(HOST, "AAAA", "2606:2800:21f:cb07:6820:80da:af6b:8b2c")
    found = run(dnscheck.check_host(resolver, HOST))
    assert found.ok and set(found.addresses) == {PUBLIC, "2606:2800:21f:cb07:6820:80da:af6b:8b2c"}
    zone.set(HOST, "A", "10.0.0.5")
    zone.set(HOST, "AAAA")
    private = run(dnscheck.check_host(Resolver([zone.address], timeout=2.0), HOST))
    assert not private.ok and "private" in private.error
    missing = run(dnscheck.check_host(resolver, "nothing.example.org"))
    assert not missing.ok and missing.addresses == ()


# -- the comparisons alone -------------------------------------------------------------------


def record(rtype: str, value: str, name: str = DOMAIN) -> Record:
    return Record(name, rtype, value, "test")


def test_compare_mx() -> None:
    mx = record("MX", f"10 {HOST}.")
    assert dnscheck.compare_mx(mx, [MxRecord(5, HOST)]).status == OK
    assert dnscheck.compare_mx(mx, []).status == MISSING
    first = dnscheck.compare_mx(mx, [MxRecord(5, "backup.example.net"), MxRecord(10, HOST)])
    assert first.status == DIFFERENT and "backup.example.net" in first.note
    assert dnscheck.compare_mx(mx, [MxRecord(0, "")]).status == DIFFERENT  # null MX


def test_compare_txt() -> None:
    spf = record("TXT", "v=spf1 mx -all")
    assert dnscheck.compare_txt(spf, ["V=SPF1  MX  -ALL"]).status == OK
    assert dnscheck.compare_txt(spf, ["v=spf1 a mx ~all"]).status == DIFFERENT
    two = dnscheck.compare_txt(spf, ["v=spf1 mx -all", "v=spf1 a -all"])
    assert two.status == DIFFERENT and "more than one" in two.note
    assert dnscheck.compare_txt(spf, ["v=spf10 nonsense"]).status == MISSING
    sts = record("TXT", "v=STSv1; id=abc")
    assert dnscheck.compare_txt(sts, ["v=STSv1;id=abc;"]).status == OK
    assert "cached" in dnscheck.compare_txt(sts, ["v=STSv1; id=old"]).note
    dkim = record("TXT", "v=DKIM1; k=ed25519; p=AbC=")
    assert dnscheck.compare_txt(dkim, ["k=ed25519; p=A b C="]).status == OK  # no v=, spaces
    assert dnscheck.compare_txt(dkim, ["v=DKIM1; k=rsa; p=AbC="]).status == DIFFERENT


def test_compare_cname_srv_and_addresses() -> None:
    cname = record("CNAME", f"{HOST}.", f"autoconfig.{DOMAIN}")
    assert dnscheck.compare_cname(cname, [f"{HOST.upper()}."]).status == OK
    assert dnscheck.compare_addresses_for_cname(cname, [PUBLIC], [PUBLIC]).status == OK
    assert dnscheck.compare_addresses_for_cname(cname, [PUBLIC], ["1.1.1.1"]).status == DIFFERENT
    srv = record("SRV", f"0 1 993 {HOST}.", f"_imaps._tcp.{DOMAIN}")
    assert dnscheck.compare_srv(srv, [f"0 1 993 {HOST.upper()}"]).status == OK
    refused = dnscheck.compare_srv(srv, ["0 0 0 ."])
    assert refused.status == DIFFERENT and "not offered" in refused.note
    a = record("A", "<public IPv4 of this box>", HOST)
    assert dnscheck.compare_address(a, [PUBLIC], [PUBLIC]).note == "this box's own address"
    assert dnscheck.compare_address(a, ["127.0.0.1"], []).status == DIFFERENT


# -- the admin page ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, dns_server: DnsServer) -> Iterator[PimailServer]:
    server = PimailServer(
        tmp_path_factory.mktemp("dnscheck") / "data",
        {"dns": {"nameservers": [dns_server.address]}}, None, HOST,
    )  # fmt: skip
    server.cli("domain", "add", DOMAIN)
    server.cli("user", "add", f"admin@{DOMAIN}", "--admin", input="admin-password\n")
    server.start()
    yield server
    server.stop()


def test_the_admin_dns_page(site: PimailServer, zone: DnsServer) -> None:
    keys = site.cli("dkim", "list", DOMAIN).stdout.split()
    rsa_selector = keys[1]
    dns_lines = site.cli("dns", DOMAIN).stdout.splitlines()
    rsa_line = next(line for line in dns_lines if line.startswith(f"{rsa_selector}._domainkey"))
    zone.add(f"{rsa_selector}._domainkey.{DOMAIN}", "TXT", rsa_line.split("\tTXT\t")[1])
    zone.add(DOMAIN, "MX", f"10 {HOST}.")
    zone.add(f"_dmarc.{DOMAIN}", "TXT", '"v=DMARC1; p=reject"')
    b = Browser(f"https://127.0.0.1:{site.https_port}", site.client_tls())
    b.login(f"admin@{DOMAIN}", "admin-password")
    page = b.get(f"/admin/dns/{DOMAIN}")
    assert page.status == 200
    text = page.text

    def status(name: str) -> str:
        row = text.rfind('<tr class="check-', 0, text.index(f"<code>{name}</code>"))
        return text[row:].split('"', 2)[1].removeprefix("check-")

    assert status(f"{rsa_selector}._domainkey.{DOMAIN}") == OK
    assert status(f"_dmarc.{DOMAIN}") == DIFFERENT and "v=DMARC1; p=reject" in text
    assert status(f"_imaps._tcp.{DOMAIN}") == MISSING
    assert '<span class="status different">different</span>' in text
    assert "v=spf1 mx -all" in text and "mode: testing" in text  # zone lines, MTA-STS policy
    assert b.get("/admin/dns/not-ours.example").status == 404


def test_port_80_probe_finds_this_box_and_not_another(site: PimailServer) -> None:
    """The wizard's Let's Encrypt check fetches a file of its own through the
    public address: a real pimail HTTP listener answers it, another server
    or a closed port does not, and the file is gone afterwards."""
    challenges = site.data_dir / "tls" / "acme-challenge"
    ok, detail = run(dnscheck.probe_http(HOST, ["127.0.0.1"], challenges, port=site.http_port))
    assert ok, detail
    assert list(challenges.iterdir()) == []  # the probe's file removed
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    ok, detail = run(dnscheck.probe_http(HOST, ["127.0.0.1"], challenges, port=port, timeout=2))
    assert not ok and "127.0.0.1" in detail

    other = socket.socket()  # a server that answers every path with 200 and its own text
    other.bind(("127.0.0.1", 0))
    other.listen()

    def answer() -> None:
        conn, _ = other.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(answer)
        ok, detail = run(dnscheck.probe_http(HOST, ["127.0.0.1"], challenges,
                                             port=other.getsockname()[1], timeout=5))  # fmt: skip
    other.close()
    assert not ok and "another server answered" in detail
