"""DNSBL/DNSWL lookups (filter/dnsbl.py) against a real DNS server on loopback
publishing the zones: listings, error codes, hijacked answers, failures."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import socket
import time
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from conftest import PimailServer
from dnsserver import DnsServer
from pimail.dns.resolver import Resolver
from pimail.filter import dnsbl
from pimail.filter.dnsbl import Listing, Zone, lookup, parse_zone, probe, query_name, score

# Global addresses (private ones are never looked up); no packet leaves loopback.
IP = "11.22.33.44"
IP_NAME = "44.33.22.11"
IP6 = "2a01:4f8:1c1c:e1a5::2"
# RFC 5782 2.4: the 32 nibbles of 2a01:04f8:1c1c:e1a5:0000:0000:0000:0002, reversed.
IP6_NAME = "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.5.a.1.e.c.1.c.1.8.f.4.0.1.0.a.2"


class SlowDnsServer(DnsServer):
    """The test DNS server, answering names in `slow` only after `delay` seconds
    (each query is answered in its own thread, so others are not held up), and
    SERVFAIL to every TXT query while `servfail_txt` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.slow: set[str] = set()
        self.delay = 1.0
        self.servfail_txt = False
        self.sleeping = 0

    def answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
            question = query.question[0]
        except Exception:
            return super().answer(wire)
        if question.name.to_text().rstrip(".").lower() in self.slow:
            with self._lock:
                self.sleeping += 1
            time.sleep(self.delay)
            with self._lock:
                self.sleeping -= 1
        if self.servfail_txt and question.rdtype == dns.rdatatype.TXT:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        return super().answer(wire)


@pytest.fixture(scope="module")
def dns_server() -> Iterator[SlowDnsServer]:
    server = SlowDnsServer().start()
    yield server
    server.stop()


@pytest.fixture
def zone(dns_server: SlowDnsServer) -> SlowDnsServer:
    dns_server.reset()
    dns_server.slow.clear()
    dns_server.servfail_txt = False
    dnsbl._warned.clear()
    dnsbl._problems.clear()
    dnsbl._resting.clear()
    return dns_server


@pytest.fixture
def resolver(zone: DnsServer) -> Resolver:
    return Resolver([zone.address], timeout=2.0)


def run(
    resolver: Resolver,
    ip: str,
    zones: list[str | Zone],
    timeout: float = 5.0,
    skip_private: bool = True,
) -> list[Listing]:
    return asyncio.run(lookup(resolver, ip, zones, timeout=timeout, skip_private=skip_private))


# -- names and zone entries ------------------------------------------------------


def test_query_names() -> None:
    # RFC 5782 2.1: octets reversed; 2.4: nibbles reversed.
    assert query_name("192.0.2.99", "bl.test") == "99.2.0.192.bl.test"
    assert query_name(IP6, "bl.test") == f"{IP6_NAME}.bl.test"
    # A dual-stack socket's IPv4-mapped address is asked as IPv4.
    assert query_name("::ffff:192.0.2.99", "bl.test") == "99.2.0.192.bl.test"


@pytest.mark.parametrize(
    ("spec", "name", "weight", "counted", "not_counted"),
    [
        ("zen.spamhaus.org", "zen.spamhaus.org", 1, ["127.0.0.2", "127.1.2.3"], []),
        ("Zen.Spamhaus.org.*3", "zen.spamhaus.org", 3, ["127.0.0.4"], []),
        ("bl.test=127.0.0.2,127.0.0.4", "bl.test", 1, ["127.0.0.2", "127.0.0.4"], ["127.0.0.3"]),
        ("bl.test=127.0.0.[2..11]*2", "bl.test", 2, ["127.0.0.2", "127.0.0.11"], ["127.0.0.12"]),
        (
            "list.dnswl.org=127.0.[0..255].[1;2;3]*-2",
            "list.dnswl.org",
            -2,
            ["127.0.15.1", "127.0.3.3"],
            ["127.0.15.0", "127.1.15.1"],
        ),
        ("bl.test=127.0.0.[2;10..11]", "bl.test", 1, ["127.0.0.2", "127.0.0.10"], ["127.0.0.3"]),
    ],
)
def test_parse_zone(
    spec: str, name: str, weight: int, counted: list[str], not_counted: list[str]
) -> None:
    entry = parse_zone(spec)
    assert (entry.name, entry.weight) == (name, weight)
    assert all(entry.matches(code) for code in counted)
    assert not any(entry.matches(code) for code in not_counted)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "localhost",
        "bl.test*x",
        "bl.test*",
        "bl.test=",
        "bl.test=127.0.0",
        "bl.test=127.0.0.256",
        "bl.test=127.0.0.[5..2]",
        "bl.test=127.0.0.[2..",
        "bad zone.test",
    ],
)
def test_parse_zone_errors(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_zone(spec)


# -- lookups ---------------------------------------------------------------------


def test_listed_with_reason(zone: DnsServer, resolver: Resolver) -> None:
    zone.add(f"{IP_NAME}.bl.test", "A", "127.0.0.2")
    zone.add(f"{IP_NAME}.bl.test", "TXT", '"Listed: see https://bl.test/lookup?ip=11.22.33.44"')
    assert run(resolver, IP, ["bl.test"]) == [
        Listing("bl.test", ["127.0.0.2"], "Listed: see https://bl.test/lookup?ip=11.22.33.44", 1)
    ]


def test_listed_without_reason_and_several_codes(zone: DnsServer, resolver: Resolver) -> None:
    zone.set(f"{IP_NAME}.bl.test", "A", "127.0.0.2", "127.0.0.4")
    [listing] = run(resolver, IP, ["bl.test*3"])
    assert sorted(listing.codes) == ["127.0.0.2", "127.0.0.4"]
    assert (listing.text, listing.weight) == (None, 3)


def test_not_listed_asks_no_txt(zone: DnsServer, resolver: Resolver) -> None:
    zone.add("2.0.0.127.bl.test", "A", "127.0.0.2")  # the zone exists; our address is NXDOMAIN
    assert run(resolver, IP, ["bl.test"]) == []
    assert (f"{IP_NAME}.bl.test", "A") in zone.queries
    assert not [q for q in zone.queries if q[1] == "TXT"]


def test_ipv6_listing(zone: DnsServer, resolver: Resolver) -> None:
    zone.add(f"{IP6_NAME}.bl.test", "A", "127.0.0.3")
    zone.add(f"{IP6_NAME}.bl.test", "TXT", '"IPv6 spam source"')
    assert run(resolver, IP6, ["bl.test"]) == [
        Listing("bl.test", ["127.0.0.3"], "IPv6 spam source", 1)
    ]


def test_several_zones_blocklist_and_allowlist(zone: DnsServer, resolver: Resolver) -> None:
    zone.add(f"{IP_NAME}.bl.test", "A", "127.0.0.2")
    zone.add(f"{IP_NAME}.wl.test", "A", "127.0.10.2")
    zones = ["bl.test*3", "other.test", "wl.test=127.0.[0..255].[1..3]*-5"]
    listings = run(resolver, IP, zones)
    assert [(hit.zone, hit.weight) for hit in listings] == [("bl.test", 3), ("wl.test", -5)]
    assert score(listings) == -2


def test_code_filters(zone: DnsServer, resolver: Resolver) -> None:
    # zen answers 127.0.0.10 (PBL, "dynamic address"): two entries of one zone
    # count different codes with different weights; the zone is asked once.
    zone.add(f"{IP_NAME}.zen.test", "A", "127.0.0.10")
    zones = ["zen.test=127.0.0.[2..9]*4", "zen.test=127.0.0.[10;11]*1"]
    listings = run(resolver, IP, zones)
    assert [(hit.codes, hit.weight) for hit in listings] == [(["127.0.0.10"], 1)]
    assert zone.queries.count((f"{IP_NAME}.zen.test", "A")) == 1
    assert run(resolver, IP, ["zen.test=127.0.0.2"]) == []


def test_answer_outside_loopback_ignores_the_zone(
    zone: DnsServer, resolver: Resolver, caplog: pytest.LogCaptureFixture
) -> None:
    # A resolver that turns NXDOMAIN into an ad server's address, or a dead
    # list whose domain now has a wildcard: nothing it says counts.
    zone.set(f"{IP_NAME}.hijacked.test", "A", "8.8.8.8", "127.0.0.2")
    zone.add(f"{IP_NAME}.bl.test", "A", "127.0.0.2")
    with caplog.at_level(logging.WARNING, logger="pimail.filter.dnsbl"):
        listings = run(resolver, IP, ["hijacked.test", "bl.test"])
    assert [hit.zone for hit in listings] == ["bl.test"]
    assert "zone=hijacked.test answer=8.8.8.8" in caplog.text


@pytest.mark.parametrize("code", ["127.255.255.254", "127.255.255.255", "127.255.255.252"])
def test_spamhaus_error_codes_are_not_listings(
    zone: DnsServer, resolver: Resolver, caplog: pytest.LogCaptureFixture, code: str
) -> None:
    zone.add(f"{IP_NAME}.zen.test", "A", code)
    with caplog.at_level(logging.WARNING, logger="pimail.filter.dnsbl"):
        assert run(resolver, IP, ["zen.test"]) == []
        assert run(resolver, IP, ["zen.test"]) == []
    # Said once, not on every connection.
    assert caplog.text.count(f"code={code}") == 1


@pytest.mark.parametrize("code", ["127.0.0.1", "127.0.0.255"])
def test_list_refusals_are_not_listings(zone: DnsServer, resolver: Resolver, code: str) -> None:
    # RFC 5782 5: 127.0.0.1 is never listed; dnswl.org answers 127.0.0.255 when it refuses.
    zone.add(f"{IP_NAME}.wl.test", "A", code)
    assert run(resolver, IP, ["wl.test"]) == []


def test_servfail_is_not_listed(zone: DnsServer, resolver: Resolver) -> None:
    zone.add(f"{IP_NAME}.bl.test", "A", "127.0.0.2")
    zone.servfail.add(f"{IP_NAME}.broken.test")
    assert [hit.zone for hit in run(resolver, IP, ["broken.test", "bl.test"])] == ["bl.test"]


def test_failing_txt_still_lists(zone: SlowDnsServer, resolver: Resolver) -> None:
    zone.add(f"{IP_NAME}.bl.test", "A", "127.0.0.2")
    zone.add(f"{IP_NAME}.bl.test", "TXT", '"spam"')
    zone.servfail_txt = True
    assert run(resolver, IP, ["bl.test"]) == [Listing("bl.test", ["127.0.0.2"], None, 1)]


def test_slow_zone_times_out_others_answer(zone: SlowDnsServer) -> None:
    zone.add(f"{IP_NAME}.bl.test", "A", "127.0.0.2")
    zone.add(f"{IP_NAME}.slow.test", "A", "127.0.0.2")
    zone.slow.add(f"{IP_NAME}.slow.test")
    resolver = Resolver([zone.address], timeout=10.0)  # the lookup's own timeout decides
    started = time.monotonic()
    listings = run(resolver, IP, ["slow.test", "bl.test"], timeout=0.5)
    elapsed = time.monotonic() - started
    assert [hit.zone for hit in listings] == ["bl.test"]
    assert elapsed < 1.5  # the zones were asked at once, and the slow one was not waited for
    while zone.sleeping:  # let the late answer go out before the server stops
        time.sleep(0.05)


def test_silent_server_is_not_listed() -> None:
    # A real UDP socket that never answers: the resolver's timeout, no exception.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        resolver = Resolver([f"127.0.0.1:{silent.getsockname()[1]}"], timeout=0.5)
        started = time.monotonic()
        assert run(resolver, IP, ["bl.test", "other.test"], timeout=3.0) == []
        assert time.monotonic() - started < 2.5


@pytest.mark.parametrize(
    "ip",
    ["127.0.0.2", "10.1.2.3", "192.168.1.20", "172.16.0.1", "100.64.0.1", "169.254.1.1",
     "::1", "fe80::1", "fd00::1", "::ffff:10.0.0.1", "not an address"],
)  # fmt: skip
def test_private_addresses_are_never_looked_up(
    zone: DnsServer, resolver: Resolver, ip: str
) -> None:
    assert run(resolver, ip, ["bl.test"]) == []
    assert zone.queries == []


def test_loopback_lookup_on_request(zone: DnsServer, resolver: Resolver) -> None:
    # For lab setups and end-to-end tests over loopback: RFC 5782 5's test entry.
    zone.add("2.0.0.127.bl.test", "A", "127.0.0.2")
    assert run(resolver, "127.0.0.2", ["bl.test"], skip_private=False) == [
        Listing("bl.test", ["127.0.0.2"], None, 1)
    ]


def test_no_zones_no_queries(zone: DnsServer, resolver: Resolver) -> None:
    assert run(resolver, IP, []) == []
    assert zone.queries == []


def test_zone_objects_accepted(zone: DnsServer, resolver: Resolver) -> None:
    zone.add(f"{IP_NAME}.bl.test", "A", "127.0.0.2")
    assert run(resolver, IP, [Zone("bl.test", weight=7)])[0].weight == 7


# -- probing a zone through the configured resolver ------------------------------


def test_probe(zone: DnsServer, resolver: Resolver) -> None:
    zone.add("2.0.0.127.good.test", "A", "127.0.0.2")
    zone.add("2.0.0.127.refusing.test", "A", "127.255.255.254")
    zone.add("1.0.0.127.world.test", "A", "127.0.0.2")
    zone.add("2.0.0.127.world.test", "A", "127.0.0.2")
    zone.add("2.0.0.127.hijacked.test", "A", "8.8.8.8")
    zone.servfail.add("2.0.0.127.broken.test")

    def check(name: str) -> str | None:
        return asyncio.run(probe(resolver, name))

    assert check("good.test") is None
    assert "refuses this resolver" in (check("refusing.test") or "")
    assert "lists everything" in (check("world.test") or "")
    assert "outside 127.0.0.0/8" in (check("hijacked.test") or "")
    assert "not listed: wrong zone name" in (check("typo.test") or "")
    assert "broken.test" in (check("broken.test") or "")


# -- domain lists (RHSBL/URIBL, RFC 5782 2.3) -------------------------------------


def run_domains(resolver: Resolver, domains: list[str], zones: list[str], timeout: float = 5.0):
    return asyncio.run(dnsbl.lookup_domains(resolver, domains, zones, timeout=timeout))


def test_listed_domain(zone: DnsServer, resolver: Resolver) -> None:
    zone.set("evil.test.dbl.test", "A", "127.0.1.2")
    zone.set("evil.test.dbl.test", "TXT", '"https://check.test/evil.test"')
    zone.set("evil.test.uri.test", "A", "127.0.0.8")
    [dbl, uri] = run_domains(resolver, ["good.test", "Evil.Test."], ["dbl.test*2", "uri.test"])
    assert (dbl.zone, dbl.codes, dbl.weight) == ("dbl.test", ["127.0.1.2"], 2)
    assert dbl.text == "evil.test: https://check.test/evil.test"
    assert (uri.zone, uri.codes, uri.text) == ("uri.test", ["127.0.0.8"], "evil.test")
    assert score([dbl, uri]) == 3
    assert run_domains(resolver, ["good.test"], ["dbl.test"]) == []


def test_a_zone_counts_once_however_many_domains_it_lists(
    zone: DnsServer, resolver: Resolver
) -> None:
    for name in ("a.test", "b.test", "c.test"):
        zone.set(f"{name}.dbl.test", "A", "127.0.1.2")
    [listing] = run_domains(resolver, ["a.test", "b.test", "c.test"], ["dbl.test"])
    assert listing.text == "a.test"


def test_addresses_and_bad_names_are_not_asked(zone: DnsServer, resolver: Resolver) -> None:
    assert run_domains(resolver, ["192.0.2.1", "-bad-.test", "x" * 300, ""], ["dbl.test"]) == []
    assert zone.queries == []


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("127.255.255.254", "public/open resolver"),
        ("127.255.255.252", "typo in the zone name"),
        ("127.255.255.255", "too many queries"),
        ("127.0.1.255", "IP queries prohibited (DBL)"),
        ("127.0.0.255", "dnswl.org: blocked"),
    ],
)
def test_list_error_codes_are_never_listings_and_are_shown(
    zone: DnsServer, resolver: Resolver, code: str, kind: str
) -> None:
    dnsbl._problems.clear()
    zone.set("evil.test.dbl.test", "A", code)
    zone.set(f"{IP_NAME}.zen.test", "A", code)
    assert run_domains(resolver, ["evil.test"], ["dbl.test"]) == []
    assert run(resolver, IP, ["zen.test"]) == []
    found = {(p.zone, p.kind) for p in dnsbl.problems()}
    assert found == {("dbl.test", f"error-{code}"), ("zen.test", f"error-{code}")}, kind
    # Asked again: one problem per zone and kind, counted, not one per query.
    run(resolver, IP, ["zen.test"])
    [zen] = [p for p in dnsbl.problems() if p.zone == "zen.test"]
    assert zen.count == 2 and code in zen.detail


def test_surbls_query_refused_answer_is_no_problem_and_no_listing(
    zone: DnsServer, resolver: Resolver
) -> None:
    dnsbl._problems.clear()
    zone.set("evil.test.multi.test", "A", "127.0.0.1")  # SURBL: 127.0.0.1 = blocked
    assert run_domains(resolver, ["evil.test"], ["multi.test"]) == []


def test_domain_zone_timeout_is_not_listed(zone: SlowDnsServer, resolver: Resolver) -> None:
    dnsbl._problems.clear()
    zone.set("evil.test.slow.test", "A", "127.0.1.2")
    zone.set("evil.test.dbl.test", "A", "127.0.1.2")
    zone.slow.add("evil.test.slow.test")
    listings = run_domains(resolver, ["evil.test"], ["slow.test", "dbl.test"], timeout=0.3)
    assert [x.zone for x in listings] == ["dbl.test"]
    assert [(p.zone, p.kind) for p in dnsbl.problems()] == [("slow.test", "timeout")]


def test_a_zone_that_timed_out_rests(zone: SlowDnsServer, resolver: Resolver) -> None:
    zone.set("evil.test.slow.test", "A", "127.0.1.2")
    zone.slow.add("evil.test.slow.test")
    assert run_domains(resolver, ["evil.test"], ["slow.test"], timeout=0.3) == []
    zone.slow.clear()  # it answers at once now, but is not asked for a while
    asked = len(zone.queries)
    assert run_domains(resolver, ["evil.test"], ["slow.test"], timeout=0.3) == []
    assert len(zone.queries) == asked
    dnsbl._resting.clear()  # the rest is over
    assert [x.zone for x in run_domains(resolver, ["evil.test"], ["slow.test"])] == ["slow.test"]


# -- the whole path: the pipeline and SMTP -------------------------------------------

LISTED_MAIL = (
    "From: Shop <offers@spammer.test>\r\nTo: alice@example.org\r\nSubject: offer\r\n"
    "Date: Mon, 07 Dec 2026 12:00:00 +0000\r\nMessage-ID: <o1@spammer.test>\r\n"
    "Content-Type: text/html\r\n\r\n"
    '<p>Buy <a href="https://www.evil.test/buy">here</a>, or '
    '<a href="https://clean.test/">there</a>.</p>\r\n'
)


def list_zones(zone: DnsServer) -> None:
    zone.set(f"{IP_NAME}.zen.test", "A", "127.0.0.4")
    zone.set("evil.test.dbl.test", "A", "127.0.1.2")  # a link's registrable domain
    zone.set("spammer.test.dbl.test", "A", "127.0.1.2")  # the sender's domain
    zone.set("evil.test.refusing.test", "A", "127.255.255.254")


def test_the_pipeline_asks_its_own_resolver(zone: DnsServer) -> None:
    from pimail.config import FilterSettings, Settings
    from pimail.filter.pipeline import Envelope, Pipeline

    dnsbl._problems.clear()
    list_zones(zone)
    filters = FilterSettings(
        dnsbl_zones=["zen.test"],
        dnsbl_domain_zones=["dbl.test", "refusing.test"],
        dnsbl_resolver=zone.address,  # the only server that knows the lists
        dnsbl_timeout=2.0,
    )
    settings = Settings(hostname="mx.pimail.test", filter=filters)
    nowhere = Resolver(["127.0.0.1:9"], timeout=0.5)  # dns.nameservers: nothing answers
    pipeline = Pipeline(settings, nowhere, None)
    envelope = Envelope(IP, "mx.spammer.test", "offers@spammer.test", ["alice@example.org"])
    verdict = asyncio.run(pipeline.check(envelope, LISTED_MAIL.encode(), [1]))
    assert verdict.symbols["RCVD_IN_DNSBL"] == 3.0
    assert verdict.symbols["URIBL_LISTED"] == 2.5
    assert verdict.symbols["RHSBL_SENDER"] == 2.0
    assert 1 in verdict.junk_accounts
    asked = {q.rstrip(".").lower() for q, _ in zone.queries}
    assert "evil.test.dbl.test" in asked and "clean.test.dbl.test" in asked
    assert "www.evil.test.dbl.test" not in asked  # the registrable domain is asked
    assert [(p.zone, p.kind) for p in dnsbl.problems()] == [
        ("refusing.test", "error-127.255.255.254")
    ]


def test_at_most_max_domains_links_are_asked(zone: DnsServer) -> None:
    from pimail.config import FilterSettings, Settings
    from pimail.filter.pipeline import Envelope, Pipeline

    links = "".join(f'<a href="http://d{i}.test/">x</a>' for i in range(50))
    message = LISTED_MAIL.replace("<p>Buy", links + "<p>Buy").encode()
    filters = FilterSettings(
        dnsbl_domain_zones=["dbl.test"], dnsbl_resolver=zone.address, dnsbl_max_domains=10
    )
    pipeline = Pipeline(
        Settings(hostname="mx.pimail.test", filter=filters), Resolver([zone.address]), None
    )
    envelope = Envelope(IP, "mx.spammer.test", "", ["alice@example.org"])
    asyncio.run(pipeline.check(envelope, message, [1]))
    asked = {
        q.rstrip(".").lower()
        for q, _ in zone.queries
        if q.rstrip(".").lower().endswith(".dbl.test")
    }
    assert len(asked) == 10 + 1  # ten link domains, and the From domain


def test_smtp_listed_link_goes_to_junk_and_the_admin_page_shows_the_lists(
    make_server: Any, zone: DnsServer
) -> None:
    from web.browser import Browser

    list_zones(zone)
    server: PimailServer = make_server(sections={
        "dns": {"nameservers": ["127.0.0.1:9"], "timeout": 1.0},
        "filter": {
            "skip_networks": [], "greylist": False,
            "dnsbl_domain_zones": ["dbl.test", "refusing.test"],
            "dnsbl_resolver": zone.address,
            "clamd": "unix:/nonexistent/pimail-clamd.sock", "clamd_unreachable": "accept",
        },
    })  # fmt: skip
    server.cli("domain", "add", "example.org")
    server.cli("user", "add", "admin@example.org", "--admin", input="admin-password\n")
    server.add_user("alice@example.org")
    server.start()
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        s.sendmail("offers@spammer.test", ["alice@example.org"], LISTED_MAIL.encode())
    assert server.messages("alice@example.org") == []
    [junk] = server.messages("alice@example.org", ".Junk")
    head = junk.read_bytes().split(b"\r\n\r\n", 1)[0]
    assert b"URIBL_LISTED" in head and b"RHSBL_SENDER" in head
    browser = Browser(f"https://127.0.0.1:{server.https_port}", server.client_tls())
    assert browser.login("admin@example.org", "admin-password").status == 200
    page = browser.get("/admin/spam").text
    assert "refusing.test" in page and "127.255.255.254" in page
    assert "configured but not answering" in page  # clamd
    assert f"asked through {zone.address}" in page


def test_the_recommended_public_lists_parse_and_are_on_with_the_devices_resolver() -> None:
    from pimail.config import (
        DEVICE_DNSBL_DOMAIN_ZONES,
        DEVICE_DNSBL_ZONES,
        Settings,
        device_defaults,
    )

    zones = [parse_zone(z) for z in DEVICE_DNSBL_ZONES + DEVICE_DNSBL_DOMAIN_ZONES]
    assert {z.name for z in zones} == {"zen.spamhaus.org", "dbl.spamhaus.org", "multi.surbl.org"}
    dbl = next(z for z in zones if z.name == "dbl.spamhaus.org")
    assert dbl.matches("127.0.1.2") and not dbl.matches("127.0.1.255")
    # The image runs its own recursive resolver (unbound): the device asks the lists
    # through it; development has none, so asks nothing (the public lists answer only
    # their "public resolver" errors through a forwarder).
    device, dev = device_defaults(), Settings()
    assert device.filter.dnsbl_zones == list(DEVICE_DNSBL_ZONES)
    assert device.filter.dnsbl_domain_zones == list(DEVICE_DNSBL_DOMAIN_ZONES)
    assert device.dns.nameservers == ["127.0.0.1:5335", "[::1]:5335"]
    assert (dev.filter.dnsbl_resolver, dev.filter.dnsbl_zones) == ("", [])
    assert dev.filter.dnsbl_domain_zones == [] and dev.dns.nameservers == []


@pytest.mark.parametrize("skip_private", [True, False])
def test_smtp_client_on_a_private_address_is_asked_only_when_told(
    make_server: Any, zone: DnsServer, skip_private: bool
) -> None:
    """filter.dnsbl_skip_private: a client outside skip_networks but on a
    non-global address (here loopback; in the QEMU test QEMU's 10.0.2.2) is
    asked of the IP lists only when it is off (a LAN's own list, a lab)."""
    zone.add("1.0.0.127.bl.test", "A", "127.0.0.2")
    server: PimailServer = make_server(sections={
        "dns": {"nameservers": [zone.address], "timeout": 2.0},
        "filter": {
            "skip_networks": [], "greylist": False, "dnsbl_zones": ["bl.test*2"],
            "dnsbl_skip_private": skip_private,
        },
    })  # fmt: skip
    server.cli("domain", "add", "example.org")
    server.add_user("alice@example.org")
    server.start()
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        s.sendmail("a@sender.test", ["alice@example.org"], LISTED_MAIL.encode())
    asked = {q.rstrip(".").lower() for q, _ in zone.queries}
    if skip_private:
        assert "1.0.0.127.bl.test" not in asked
        [message] = server.messages("alice@example.org") + server.messages(
            "alice@example.org", ".Junk"
        )
        assert b"RCVD_IN_DNSBL" not in message.read_bytes().split(b"\r\n\r\n", 1)[0]
    else:
        assert "1.0.0.127.bl.test" in asked
        [junk] = server.messages("alice@example.org", ".Junk")
        assert b"RCVD_IN_DNSBL" in junk.read_bytes().split(b"\r\n\r\n", 1)[0]
