"""DNSBL/DNSWL lookups (filter/dnsbl.py) against a real DNS server on loopback
publishing the zones: listings, error codes, hijacked answers, failures."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

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
