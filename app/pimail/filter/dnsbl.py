"""DNS blocklists and allowlists (DNSBL, DNSWL; RFC 5782): addresses and domains.

`lookup(resolver, ip, zones)` asks every zone at once whether the client
address is listed and returns one `Listing` per zone entry that matched.
`lookup_domains(resolver, domains, zones)` does the same for domain lists
(RHSBL/URIBL, RFC 5782 2.3: the name asked is the domain itself under the
zone, "example.test.dbl.spamhaus.org"), for the links of a message and its
sender's domains; each zone entry counts once however many domains it lists. The
same function serves blocklists (zen.spamhaus.org) and allowlists
(list.dnswl.org): what a hit means is the caller's decision, helped by a
per-entry weight (`score()` adds them up; give allowlists a negative weight).

Zone entries (the syntax of Postfix's `postscreen_dnsbl_sites`, a subset):

    zen.spamhaus.org                       any 127.x.y.z answer counts, weight 1
    zen.spamhaus.org*3                     weight 3
    zen.spamhaus.org=127.0.0.2,127.0.0.4   only these answers count
    b.barracudacentral.org=127.0.0.[2..11]*2
    list.dnswl.org=127.0.[0..255].[1;2;3]*-2

A pattern is a dotted quad whose octets are a number, `[a..b]` (a range) or
`[a;b;c]` (a set, ranges allowed inside); patterns are separated by commas.
The same zone may appear twice with different patterns and weights.

What does not count as a listing, whatever the patterns say:

- an answer outside 127.0.0.0/8: the values of a DNSxL live there (RFC 5782
  2.3); anything else is a resolver that rewrites NXDOMAIN into the address of
  an ad server, or a broken zone. The whole zone is ignored for that query and
  a warning is logged.
- 127.0.0.1: RFC 5782 5 reserves it as the entry that is never listed; lists
  that stop serving a resolver answer it for every query ("listing the world").
- 127.255.255.0/24: Spamhaus's error range (127.255.255.252 typo in the zone
  name, .254 query through a public/open resolver, .255 too many queries). It
  says nothing about the client; counting it would reject all mail.
- 127.0.0.255: dnswl.org's "query blocked" (volume limit or public resolver).
- 127.0.1.255: Spamhaus DBL's "IP queries prohibited" (an address asked of a
  domain list).
- 127.0.0.1 from SURBL means "query blocked" too: it is never a listing anyway.

Every such answer, and timeouts and DNS errors, are warned about at most once
per WARN_INTERVAL per zone and kept (`problems()`) for the admin spam page,
which says what a list answered and when.
- SERVFAIL, timeouts, any DNS error: not listed (fail open), logged. A zone
  that timed out is not asked for REST_AFTER_TIMEOUT seconds (60): with no
  resolver listening, mail waits for one timeout a minute, not one each.

Addresses that are not global (loopback, RFC 1918, link-local, CGNAT,
documentation ranges) are never looked up: no list knows them and the query
would leak the LAN's layout. IPv4-mapped IPv6 addresses are looked up as IPv4.

The development profile enables no zones. The free public lists refuse queries
that come through the big public resolvers (Spamhaus answers 127.255.255.254 to
queries via 8.8.8.8, 1.1.1.1, 9.9.9.9; dnswl.org blocks them too), and a home
box usually forwards to such a resolver or to its ISP's. The device image runs
its own recursive resolver (unbound on 127.0.0.1:5335, config.DEVICE_RESOLVER)
and its profile turns on config.DEVICE_DNSBL_ZONES and DEVICE_DNSBL_DOMAIN_ZONES.
Elsewhere: run a local recursive resolver, point `dns.nameservers` (or
`filter.dnsbl_resolver`) at it and add zones. `probe(resolver, zone)` checks,
through the test entries of RFC 5782 5, that a zone answers sensibly through
the configured resolver.

What it touches: DNS only, through `pimail.dns.resolver.Resolver` (answers
are cached for their TTL there). No storage.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pimail.dns.resolver import DnsError, Resolver

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
LOOPBACK_V4 = ipaddress.IPv4Network("127.0.0.0/8")
# Answers that are errors of the list, never listings (see the module docstring).
SPAMHAUS_ERRORS = ipaddress.IPv4Network("127.255.255.0/24")
DNSWL_BLOCKED = ipaddress.IPv4Address("127.0.0.255")
DBL_IP_QUERY = ipaddress.IPv4Address("127.0.1.255")  # Spamhaus DBL: "IP queries prohibited"
PROBLEM_AGE = 86400.0  # problems() shows what happened within this many seconds
# A zone that timed out is not asked again for this long: a resolver that is not
# there (no unbound yet on 127.0.0.1:53) must not hold every message for the timeout.
REST_AFTER_TIMEOUT = 60.0
NEVER_LISTED = ipaddress.IPv4Address("127.0.0.1")  # RFC 5782 5
MAX_TEXT = 512  # a TXT reason is kept for logs and headers; no more than this
WARN_INTERVAL = 600.0  # seconds between two warnings about the same zone problem

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_ZONE_NAME = re.compile(rf"^(?=.{{1,200}}$){_LABEL}(?:\.{_LABEL})+$")
_OCTET_ITEM = re.compile(r"^(\d{1,3})(?:\.\.(\d{1,3}))?$")
_warned: dict[tuple[str, str], float] = {}
_problems: dict[tuple[str, str], Problem] = {}
_resting: dict[str, float] = {}  # zone -> time.monotonic() until which it is not asked


@dataclass(frozen=True)
class Problem:
    """A zone that answered with an error code, timed out or failed."""

    zone: str
    kind: str  # "timeout", "dns-error", "not-loopback", "error-127.255.255.254", ...
    detail: str  # one line, for the admin page
    when: float  # time.time() of the latest occurrence
    count: int  # occurrences since the process started


def problems(max_age: float = PROBLEM_AGE) -> list[Problem]:
    """The zone problems of the last `max_age` seconds, newest first."""
    now = time.time()
    recent = [p for p in _problems.values() if now - p.when <= max_age]
    return sorted(recent, key=lambda p: p.when, reverse=True)


# An answer pattern: four octets, each a tuple of inclusive (low, high) ranges.
Pattern = tuple[tuple[tuple[int, int], ...], ...]


@dataclass(frozen=True)
class Zone:
    """One zone entry: the zone, which answers count, and its weight."""

    name: str  # lower case, no trailing dot
    patterns: tuple[Pattern, ...] = ()  # empty: any answer in 127.0.0.0/8 counts
    weight: int = 1

    def matches(self, code: str) -> bool:
        if not self.patterns:
            return True
        octets = [int(o) for o in code.split(".")]
        return any(_octets_match(octets, pattern) for pattern in self.patterns)


def _octets_match(octets: list[int], pattern: Pattern) -> bool:
    return all(
        any(low <= octet <= high for low, high in ranges)
        for octet, ranges in zip(octets, pattern, strict=True)
    )


@dataclass
class Listing:
    zone: str  # the zone's name
    codes: list[str]  # the 127.0.0.x answers that counted
    text: str | None  # the TXT reason, fetched only when listed; None if there is none
    weight: int = 1  # the zone entry's weight


@dataclass
class _Answer:
    codes: list[str] = field(default_factory=list)
    text: str | None = None


def parse_zone(spec: str) -> Zone:
    """'zone[=pattern,...][*weight]' -> Zone; ValueError says what is wrong."""
    text = spec.strip().lower()
    weight = 1
    if "*" in text:
        text, _, weight_text = text.rpartition("*")
        try:
            weight = int(weight_text)
        except ValueError:
            raise ValueError(f"DNSBL zone {spec!r}: weight must be an integer") from None
    name, equals, pattern_text = text.partition("=")
    name = name.strip().rstrip(".")
    if not _ZONE_NAME.match(name):
        raise ValueError(f"DNSBL zone {spec!r}: bad zone name")
    patterns = tuple(_parse_pattern(p.strip(), spec) for p in pattern_text.split(",") if p.strip())
    if equals and not patterns:
        raise ValueError(f"DNSBL zone {spec!r}: no pattern after '='")
    return Zone(name, patterns, weight)


def parse_zones(specs: Iterable[str | Zone]) -> list[Zone]:
    return [s if isinstance(s, Zone) else parse_zone(s) for s in specs]


def _parse_pattern(pattern: str, spec: str) -> Pattern:
    octets = pattern.split(".")
    # A '.' inside "[a..b]" is not an octet separator: put ranges back together.
    merged: list[str] = []
    for part in octets:
        if merged and merged[-1].count("[") > merged[-1].count("]"):
            merged[-1] += "." + part
        else:
            merged.append(part)
    if len(merged) != 4:
        raise ValueError(f"DNSBL zone {spec!r}: pattern {pattern!r} is not four octets")
    result = []
    for octet in merged:
        items = octet[1:-1].split(";") if octet.startswith("[") and octet.endswith("]") else [octet]
        ranges = []
        for item in items:
            m = _OCTET_ITEM.match(item.strip())
            low = int(m.group(1)) if m else -1
            high = int(m.group(2)) if m and m.group(2) else low
            if not m or not 0 <= low <= high <= 255:
                raise ValueError(f"DNSBL zone {spec!r}: bad octet {octet!r} in {pattern!r}")
            ranges.append((low, high))
        result.append(tuple(ranges))
    return tuple(result)


def query_name(ip: str, zone: str) -> str:
    """The name to ask for `ip` in `zone`: RFC 5782 2.1 (IPv4, octets reversed:
    192.0.2.99 -> 99.2.0.192.zone) and 2.4 (IPv6, the 32 nibbles reversed)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    # reverse_pointer is "99.2.0.192.in-addr.arpa" or "b.a.9.8....ip6.arpa":
    # exactly the reversed form RFC 5782 uses, under another parent.
    reversed_form = address.reverse_pointer.rsplit(".", 2)[0]
    return f"{reversed_form}.{zone}"


def should_lookup(ip: str) -> bool:
    """False for addresses no public list can know (loopback, private, ...)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_global


async def lookup(
    resolver: Resolver,
    ip: str,
    zones: Sequence[str | Zone],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    skip_private: bool = True,
) -> list[Listing]:
    """The zone entries that list `ip`, in the order given. All zones are asked
    at once; a zone that has not answered within `timeout` seconds, or failed,
    counts as not listing. Never raises for DNS trouble. Strings in `zones` are
    parsed on each call (ValueError if malformed): parse the setting once with
    `parse_zones` at startup. `skip_private=False` is for lab setups and tests
    that list loopback addresses."""
    entries = parse_zones(zones)
    if not entries:
        return []
    if skip_private and not should_lookup(ip):
        log.debug("dnsbl skipped ip=%s reason=not-global", ip)
        return []
    try:
        names = {z.name: query_name(ip, z.name) for z in entries}
    except ValueError:
        log.warning("dnsbl skipped ip=%r reason=bad-address", ip)
        return []
    zone_names = list(names)
    answers = await asyncio.gather(
        *(_ask(resolver, zone, names[zone], entries, timeout) for zone in zone_names)
    )
    by_zone = dict(zip(zone_names, answers, strict=True))
    listings = []
    for entry in entries:
        answer = by_zone[entry.name]
        codes = [c for c in answer.codes if entry.matches(c)]
        if codes:
            listings.append(Listing(entry.name, codes, answer.text, entry.weight))
    for hit in listings:
        log.info("dnsbl listed ip=%s zone=%s codes=%s weight=%d text=%r",
                 ip, hit.zone, ",".join(hit.codes), hit.weight, hit.text)  # fmt: skip
    return listings


_DOMAIN = re.compile(rf"^(?=.{{1,200}}$){_LABEL}(?:\.{_LABEL})+$")


async def lookup_domains(
    resolver: Resolver,
    domains: Sequence[str],
    zones: Sequence[str | Zone],
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Listing]:
    """The zone entries that list any of `domains` (RFC 5782 2.3), each at most
    once, with the first domain it listed named in its text. Every query is
    asked at once under one `timeout`; addresses and malformed names are not
    asked (DBL refuses them). Never raises for DNS trouble."""
    entries = parse_zones(zones)
    wanted = [d.lower().rstrip(".") for d in domains]
    wanted = [d for d in dict.fromkeys(wanted) if _DOMAIN.match(d) and not _is_address(d)]
    if not entries or not wanted:
        return []
    zone_names = list(dict.fromkeys(z.name for z in entries))
    pairs = [(domain, zone) for domain in wanted for zone in zone_names]
    answers = await asyncio.gather(
        *(_ask(resolver, zone, f"{domain}.{zone}", entries, timeout) for domain, zone in pairs)
    )
    listings: list[Listing] = []
    for entry in entries:
        for (domain, zone), answer in zip(pairs, answers, strict=True):
            codes = [c for c in answer.codes if entry.matches(c)]
            if zone == entry.name and codes:
                text = f"{domain}: {answer.text}" if answer.text else domain
                listings.append(Listing(entry.name, codes, text, entry.weight))
                log.info("dnsbl listed domain=%s zone=%s codes=%s weight=%d",
                         domain, zone, ",".join(codes), entry.weight)  # fmt: skip
                break
    return listings


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def score(listings: Iterable[Listing]) -> int:
    """The sum of the weights of the entries that matched."""
    return sum(listing.weight for listing in listings)


async def _ask(
    resolver: Resolver, zone: str, name: str, entries: list[Zone], timeout: float
) -> _Answer:
    """The usable answers of one zone, and its TXT reason when some entry matched."""
    if time.monotonic() < _resting.get(zone, 0.0):
        log.debug("dnsbl zone resting after a timeout zone=%s", zone)
        return _Answer()
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            codes = _usable_codes(zone, await resolver.a_records(name))
    except TimeoutError:
        _resting[zone] = time.monotonic() + REST_AFTER_TIMEOUT
        _warn(zone, "timeout", "dnsbl zone timed out zone=%s timeout=%.1f", zone, timeout)
        return _Answer()
    except DnsError as e:
        _warn(zone, "dns-error", "dnsbl zone failed zone=%s error=%r", zone, str(e))
        return _Answer()
    if not any(e.matches(c) for e in entries if e.name == zone for c in codes):
        return _Answer(codes)
    # RFC 5782 2.1: a DNSBL SHOULD have a TXT record saying why. Asked only
    # now that the address is listed (most lookups are not), within the same
    # deadline; without it the listing still counts.
    try:
        async with asyncio.timeout_at(deadline):
            texts = await resolver.txt(name)
    except (TimeoutError, DnsError) as e:
        log.debug("dnsbl reason lookup failed zone=%s error=%r", zone, str(e) or "timeout")
        return _Answer(codes)
    text = " / ".join(t.strip() for t in texts if t.strip())[:MAX_TEXT] or None
    return _Answer(codes, text)


def _usable_codes(zone: str, answers: list[str]) -> list[str]:
    codes: list[str] = []
    for answer in answers:
        try:
            address = ipaddress.IPv4Address(answer)
        except ValueError:
            continue
        if address not in LOOPBACK_V4:
            # RFC 5782 2.3: the values are in 127.0.0.0/8. An answer outside it
            # is a resolver rewriting NXDOMAIN, or a broken zone: trust none of it.
            _warn(zone, "not-loopback",
                  "dnsbl zone ignored: answer outside 127.0.0.0/8 zone=%s answer=%s",
                  zone, answer)  # fmt: skip
            return []
        if address in SPAMHAUS_ERRORS or address in (DNSWL_BLOCKED, NEVER_LISTED, DBL_IP_QUERY):
            _warn(zone, f"error-{answer}",
                  "dnsbl zone returned an error code, not a listing zone=%s code=%s",
                  zone, answer)  # fmt: skip
            continue
        codes.append(answer)
    return codes


def _warn(zone: str, kind: str, message: str, *args: object) -> None:
    """Warn about a zone problem at most every WARN_INTERVAL seconds: a broken
    zone would otherwise put one line in the log for every connection."""
    now = time.monotonic()
    key = (zone, kind)
    previous = _problems.get(key)
    if kind != f"error-{NEVER_LISTED}":  # RFC 5782's "not listed": no problem to show
        _problems[key] = Problem(
            zone, kind, (message % args)[:300], time.time(), previous.count + 1 if previous else 1
        )
    if now - _warned.get(key, -WARN_INTERVAL) >= WARN_INTERVAL:
        _warned[key] = now
        log.warning(message, *args)
    else:
        log.debug(message, *args)


async def probe(resolver: Resolver, zone: str, *, timeout: float = DEFAULT_TIMEOUT) -> str | None:
    """None if `zone` (a name or an entry) behaves through `resolver` as RFC 5782 5
    says a list must: 127.0.0.2 listed, 127.0.0.1 not. Otherwise what is wrong,
    for the admin pages and `pimail dns check` (e.g. Spamhaus refusing a
    public resolver with 127.255.255.254)."""
    name = parse_zone(zone).name
    try:
        async with asyncio.timeout(timeout):
            listed = await resolver.a_records(query_name("127.0.0.2", name))
            clean = await resolver.a_records(query_name("127.0.0.1", name))
    except TimeoutError:
        return f"{name}: no answer within {timeout:g} s"
    except DnsError as e:
        return f"{name}: {e}"
    outside = [a for a in listed + clean if ipaddress.IPv4Address(a) not in LOOPBACK_V4]
    if outside:
        return f"{name}: answers outside 127.0.0.0/8 ({outside[0]}): the resolver rewrites answers"
    errors = [a for a in listed + clean if _refusal(ipaddress.IPv4Address(a))]
    if errors:
        return f"{name}: the list refuses this resolver (answer {errors[0]})"
    if clean:
        return f"{name}: 127.0.0.1 is listed ({clean[0]}): the list lists everything"
    if not listed:
        return f"{name}: the test entry 127.0.0.2 is not listed: wrong zone name?"
    return None


def _refusal(address: ipaddress.IPv4Address) -> bool:
    """An answer by which a list says it refuses to serve this resolver."""
    return address in SPAMHAUS_ERRORS or address == DNSWL_BLOCKED
