"""SPF (RFC 7208): may this client IP send mail for the MAIL FROM domain?

`check(resolver, ip, mail_from, helo)` evaluates the sender's SPF record the
way RFC 7208 4 (check_host()) describes, on top of pimail's async Resolver:
every lookup goes through the DNS servers pimail is configured with (in tests:
a DNS server on loopback), answers are cached for their TTL by the Resolver,
and no thread or process-wide resolver setting is involved.

Implemented: the mechanisms all, include, a, mx, ip4, ip6, exists and ptr
(which RFC 7208 5.5 says SHOULD NOT be used: here it counts as a DNS lookup
and never matches, so a record relying on it falls through to its other
terms); the modifiers redirect and exp; macros (RFC 7208 7) with the
transformers (digits, `r`) and delimiters; the limits of RFC 7208 4.6.4 (10
lookup terms, 10 MX hosts, 2 void lookups, an overall time limit).

This module only reads DNS. It holds no state between calls.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
import urllib.parse
from dataclasses import dataclass

from ..dns.resolver import DnsError, Resolver

log = logging.getLogger(__name__)

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
MAX_LOOKUPS = 10  # RFC 7208 4.6.4: terms that cause DNS queries
MAX_VOID_LOOKUPS = 2  # RFC 7208 4.6.4: "SHOULD ... default limit of 2"
MAX_MX_HOSTS = 10  # RFC 7208 4.6.4: address lookups per mx mechanism
TIMEOUT = 20.0  # RFC 7208 4.6.4: "at least 20 seconds" for the whole check
MAX_EXPLANATION = 200

_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
# RFC 7208 5.6: ip4-cidr-length = "/" ("0" / %x31-39 0*1DIGIT); same for ip6 up to 3 digits.
_CIDR = r"(?:0|[1-9][0-9]{0,2})"
_A_MX_ARGS = re.compile(rf"(?::(?P<domain>.+?))?(?:/(?P<c4>{_CIDR}))?(?://(?P<c6>{_CIDR}))?")
_IP_ARGS = re.compile(rf":(?P<addr>[0-9A-Fa-f.:]+)(?:/(?P<cidr>{_CIDR}))?")
# RFC 7208 7.1: macro-expand = ( "%{" macro-letter transformers *delimiter "}" )
#                              / "%%" / "%_" / "%-"
_MACRO = re.compile(
    r"%(?:\{(?P<letter>[A-Za-z])(?P<digits>[0-9]*)(?P<r>[rR]?)(?P<delims>[.\-+,/_=]*)\}"
    r"|(?P<esc>[%_-]))"
)


@dataclass(frozen=True)
class SpfResult:
    result: str  # one of RESULTS
    domain: str  # the domain checked: of MAIL FROM, or the HELO name for the null sender
    scope: str  # "mailfrom" or "helo" (RFC 7208 2.4)
    explanation: str = ""  # why: the matching term or the error; for fail, the exp= text if any


class _PermError(Exception):
    """RFC 7208 2.6.7: the record could not be interpreted."""


class _TempError(Exception):
    """RFC 7208 2.6.6: a transient DNS error."""


@dataclass
class _Term:
    qualifier: str
    mechanism: str
    domain_spec: str | None = None
    cidr4: int = 32
    cidr6: int = 128
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None


@dataclass
class _Record:
    terms: list[_Term]
    redirect: str | None
    exp: str | None


async def check(
    resolver: Resolver, ip: str, mail_from: str, helo: str, timeout: float = TIMEOUT
) -> SpfResult:
    """The SPF result for a client at `ip` that said HELO `helo` and MAIL FROM `mail_from`
    (the bare address, "" for the null sender). Never raises for any input."""
    mail_from = mail_from.strip().removeprefix("<").removesuffix(">")
    helo = helo.strip().rstrip(".")
    if mail_from:
        # RFC 7208 4.3: no local part means "postmaster".
        local, at, domain = mail_from.rpartition("@")
        scope = "mailfrom"
        if not at:
            local, domain = "postmaster", mail_from
        local = local or "postmaster"
    else:
        # RFC 7208 2.4: for the null reverse-path, check "postmaster@<HELO>".
        local, domain, scope = "postmaster", helo, "helo"
    domain = domain.rstrip(".")
    shown = printable(domain.lower())
    try:
        client = ipaddress.ip_address(ip)
    except ValueError:
        return SpfResult("permerror", shown, scope, "the client address is not an IP address")
    if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped:
        client = client.ipv4_mapped
    name = dns_name(domain)
    # RFC 7208 4.3: a malformed or single-label domain gives "none" at once.
    if name is None or "." not in name or name.rsplit(".", 1)[1].isdigit():
        return SpfResult("none", shown, scope, "not a domain name that can have an SPF record")
    evaluation = _Evaluation(resolver, client, f"{local}@{name}", local, name, helo)
    try:
        async with asyncio.timeout(timeout):
            result, explanation = await evaluation.check_host(name)
    except _PermError as e:
        result, explanation = "permerror", str(e)
    except (_TempError, TimeoutError) as e:
        result, explanation = "temperror", str(e) or "DNS took too long (RFC 7208 4.6.4)"
    log.debug(
        "spf result=%s domain=%r scope=%s ip=%s lookups=%d reason=%r",
        result, name, scope, client, evaluation.lookups, explanation,
    )  # fmt: skip
    return SpfResult(result, name, scope, explanation)


class _Evaluation:
    """One check_host() run with its shared counters (RFC 7208 4.6.4)."""

    def __init__(
        self,
        resolver: Resolver,
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
        sender: str,
        local: str,
        sender_domain: str,
        helo: str,
    ) -> None:
        self.resolver = resolver
        self.ip = ip
        self.sender = sender
        self.local = local
        self.sender_domain = sender_domain
        self.helo = helo
        self.lookups = 0
        self.voids = 0

    def count_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise _PermError(f"more than {MAX_LOOKUPS} DNS lookups (RFC 7208 4.6.4)")

    def count_void(self) -> None:
        self.voids += 1
        if self.voids > MAX_VOID_LOOKUPS:
            raise _PermError(f"more than {MAX_VOID_LOOKUPS} void DNS lookups (RFC 7208 4.6.4)")

    async def check_host(self, domain: str) -> tuple[str, str]:
        """RFC 7208 4: (result, explanation) for `domain`; raises _PermError/_TempError."""
        text = await self.spf_record(domain)
        if text is None:
            return "none", f"no SPF record at {domain}"
        record = _parse(text)  # RFC 7208 4.6: any syntax error is permerror before evaluating
        for term in record.terms:
            if await self.matches(term, domain):
                result = _QUALIFIERS[term.qualifier]
                explanation = f"matched {term.mechanism} in the record of {domain}"
                if result == "fail" and record.exp:
                    explanation = await self.explain(record.exp, domain) or explanation
                return result, explanation
        # RFC 6.1: redirect is used only when nothing matched and there is no "all".
        if record.redirect is not None and not any(t.mechanism == "all" for t in record.terms):
            self.count_lookup()
            target = self.expand_domain(record.redirect, domain)
            result, explanation = await self.check_host(target)
            if result == "none":  # RFC 7208 6.1: a redirect to no record is permerror
                raise _PermError(f"redirect to {target}, which has no SPF record")
            return result, explanation
        return "neutral", f"no term matched in the record of {domain}"  # RFC 7208 4.7

    async def spf_record(self, domain: str) -> str | None:
        try:
            texts = await self.resolver.txt(domain)
        except DnsError as e:
            raise _TempError(f"TXT lookup of {domain} failed") from e
        # RFC 7208 4.5: records begin with "v=spf1" then a space or the end.
        records = [t for t in texts if re.match(r"(?i)v=spf1(?: |$)", t)]
        if len(records) > 1:
            raise _PermError(f"{domain} publishes more than one SPF record (RFC 7208 4.5)")
        return records[0] if records else None

    async def matches(self, term: _Term, domain: str) -> bool:
        mechanism = term.mechanism
        if mechanism == "all":
            return True
        if mechanism in ("ip4", "ip6"):  # RFC 7208 5.6
            return term.network is not None and self.ip in term.network
        self.count_lookup()
        target = self.expand_domain(term.domain_spec, domain) if term.domain_spec else domain
        if mechanism == "include":
            return await self.include(target)
        if mechanism == "a":  # RFC 7208 5.3
            return self.in_any(await self.addresses(target, self.ip.version), term)
        if mechanism == "mx":
            return await self.mx(target, term)
        if mechanism == "exists":  # RFC 7208 5.7: always an A query, whatever the client
            return bool(await self.addresses(target, 4))
        # ptr: RFC 7208 5.5 "SHOULD NOT be used"; counted above, never matches here.
        return False

    async def include(self, target: str) -> bool:
        # RFC 7208 5.2: the table of what an included result means.
        result, _ = await self.check_host(target)
        if result == "pass":
            return True
        if result == "temperror":
            raise _TempError(f"include:{target} gave temperror")
        if result in ("permerror", "none"):
            raise _PermError(f"include:{target} has no usable SPF record")
        return False

    async def mx(self, target: str, term: _Term) -> bool:
        # RFC 7208 5.4
        try:
            records = await self.resolver.mx(target)
        except DnsError as e:
            if e.temporary:
                raise _TempError(f"MX lookup of {target} failed") from e
            records = []
        hosts = [r.host for r in records if r.host]
        if not records:
            self.count_void()
        if len(hosts) > MAX_MX_HOSTS:  # RFC 7208 4.6.4
            raise _PermError(f"{target} has more than {MAX_MX_HOSTS} MX hosts")
        for host in hosts:
            if self.in_any(await self.addresses(host, self.ip.version, void=False), term):
                return True
        return False

    async def addresses(self, name: str, version: int, void: bool = True) -> list[str]:
        try:
            found = await self.resolver.addresses(name)
        except DnsError as e:
            if e.temporary:
                raise _TempError(f"address lookup of {name} failed") from e
            found = []
        found = [a for a in found if ipaddress.ip_address(a).version == version]
        if not found and void:
            self.count_void()
        return found

    def in_any(self, addresses: list[str], term: _Term) -> bool:
        cidr = term.cidr4 if self.ip.version == 4 else term.cidr6
        return any(self.ip in ipaddress.ip_network(f"{a}/{cidr}", strict=False) for a in addresses)

    async def explain(self, exp: str, domain: str) -> str:
        """RFC 7208 6.2: the explanation string; "" when anything about it fails."""
        try:
            target = self.expand_domain(exp, domain)
            texts = await self.resolver.txt(target)
            if len(texts) != 1:
                return ""
            return printable(self.expand(texts[0], domain, exp=True))[:MAX_EXPLANATION]
        except (DnsError, _PermError):
            return ""

    def expand_domain(self, spec: str, domain: str) -> str:
        """A domain-spec with its macros expanded, as a DNS name (RFC 7208 7.3)."""
        expanded = self.expand(spec, domain).rstrip(".")
        # RFC 7208 7.3: longer than 253 characters: drop labels from the left.
        while len(expanded) > 253 and "." in expanded:
            expanded = expanded.split(".", 1)[1]
        name = dns_name(expanded)
        if name is None or "." not in name or name.rsplit(".", 1)[1].isdigit():
            raise _PermError(f"{printable(expanded)!r} is not a valid domain name")
        return name

    def expand(self, spec: str, domain: str, exp: bool = False) -> str:
        """RFC 7208 7: expand the macros of a macro-string."""
        out: list[str] = []
        pos = 0
        for m in _MACRO.finditer(spec):
            if "%" in spec[pos : m.start()]:
                raise _PermError("a lone '%' in a macro string")
            out.append(spec[pos : m.start()])
            pos = m.end()
            if m["esc"]:
                out.append({"%": "%", "_": " ", "-": "%20"}[m["esc"]])
                continue
            value = self.macro_value(m["letter"].lower(), domain, exp)
            value = _transform(value, m["digits"], bool(m["r"]), m["delims"] or ".")
            if m["letter"].isupper():  # RFC 7208 7.3: upper case letters are URL-escaped
                value = urllib.parse.quote(value, safe="")
            out.append(value)
        if "%" in spec[pos:]:
            raise _PermError("a lone '%' in a macro string")
        out.append(spec[pos:])
        return "".join(out)

    def macro_value(self, letter: str, domain: str, exp: bool) -> str:
        ip = self.ip
        values = {
            "s": self.sender,
            "l": self.local,
            "o": self.sender_domain,
            "d": domain,
            "i": ip.exploded if ip.version == 4 else ".".join(ip.exploded.replace(":", "")),
            "p": "unknown",  # RFC 7208 7.3: we do not validate PTR names (5.5)
            "v": "in-addr" if ip.version == 4 else "ip6",
            "h": self.helo,
        }
        if exp:  # RFC 7208 7.3: c, r, t only in explanations
            values |= {"c": str(ip), "r": "unknown", "t": str(int(time.time()))}
        if letter not in values:
            raise _PermError(f"unknown macro letter {letter!r}")
        return values[letter]


def _transform(value: str, digits: str, reverse: bool, delimiters: str) -> str:
    # RFC 7208 7.3: split on the delimiters, optionally reverse, keep the right-most parts.
    if not digits and not reverse and delimiters == ".":
        return value
    parts = re.split("[" + re.escape(delimiters) + "]", value)
    if reverse:
        parts.reverse()
    if digits:
        keep = int(digits[:4])
        if keep == 0:
            raise _PermError("a macro transformer of zero parts (RFC 7208 7.1)")
        parts = parts[-keep:]
    return ".".join(parts)


def _parse(text: str) -> _Record:
    """Parse an SPF record (RFC 7208 4.6.1, 12); _PermError on any syntax error."""
    terms: list[_Term] = []
    redirect = exp = None
    for word in text.split(" ")[1:]:
        if not word:
            continue
        modifier = re.fullmatch(r"([A-Za-z][A-Za-z0-9_.-]*)=(.*)", word)
        if modifier:
            name, value = modifier[1].lower(), modifier[2]
            _check_macros(value)
            if name in ("redirect", "exp"):
                # RFC 7208 6: each at most once.
                if (redirect if name == "redirect" else exp) is not None or not value:
                    raise _PermError(f"bad or repeated {name}= modifier")
                if name == "redirect":
                    redirect = value
                else:
                    exp = value
            continue  # RFC 7208 6: unknown modifiers are ignored
        terms.append(_parse_mechanism(word))
    return _Record(terms, redirect, exp)


def _parse_mechanism(word: str) -> _Term:
    qualifier = word[0] if word[0] in _QUALIFIERS else "+"
    rest = word[1:] if word[0] in _QUALIFIERS else word
    m = _NAME.match(rest)
    mechanism = m[0].lower() if m else ""
    if mechanism not in _MECHANISMS:
        raise _PermError(f"unknown mechanism {printable(word)[:60]!r}")
    args = rest[len(mechanism) :]
    term = _Term(qualifier, mechanism)
    if mechanism == "all":
        if args:
            raise _PermError("'all' takes no arguments")
    elif mechanism in ("include", "exists"):
        if not args.startswith(":") or len(args) < 2:
            raise _PermError(f"{mechanism} needs a domain")
        term.domain_spec = args[1:]
    elif mechanism == "ptr":
        if args and (not args.startswith(":") or len(args) < 2):
            raise _PermError("bad ptr mechanism")
        term.domain_spec = args[1:] or None
    elif mechanism in ("a", "mx"):
        dm = _A_MX_ARGS.fullmatch(args)
        if not dm:
            raise _PermError(f"bad {mechanism} mechanism")
        term.domain_spec = dm["domain"]
        term.cidr4 = int(dm["c4"]) if dm["c4"] else 32
        term.cidr6 = int(dm["c6"]) if dm["c6"] else 128
        if term.cidr4 > 32 or term.cidr6 > 128:
            raise _PermError(f"bad prefix length in {mechanism}")
    else:  # ip4, ip6 (RFC 7208 5.6)
        im = _IP_ARGS.fullmatch(args)
        try:
            if not im:
                raise ValueError(args)
            address = ipaddress.ip_address(im["addr"])
            if address.version != int(mechanism[2]):
                raise ValueError(args)
            prefix = im["cidr"] or str(address.max_prefixlen)
            term.network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
        except ValueError as e:
            raise _PermError(f"bad {mechanism} mechanism") from e
    if term.domain_spec is not None:
        _check_macros(term.domain_spec)
    return term


def _check_macros(spec: str) -> None:
    """RFC 7208 7.1: a '%' must start a valid macro; in a domain-spec only the
    letters s l o d i p h v (c r t are for explanations); no zero transformer."""
    if "%" in _MACRO.sub("", spec):
        raise _PermError("a malformed macro")
    for m in _MACRO.finditer(spec):
        if m["letter"] and m["letter"].lower() not in "slodiphv":
            raise _PermError(f"macro letter {m['letter']!r} not allowed here")
        if m["digits"] and int(m["digits"][:4]) == 0:
            raise _PermError("a macro transformer of zero parts (RFC 7208 7.1)")


def dns_name(name: str) -> str | None:
    """`name` as a lower-case ASCII DNS name, or None. Underscores are allowed
    (SPF and DKIM use names like _spf.example.org), empty labels are not."""
    name = name.rstrip(".")
    try:
        name = name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    if not name or len(name) > 253:
        return None
    for label in name.split("."):
        if not 0 < len(label) <= 63 or not re.fullmatch(r"[a-z0-9_-]+", label):
            return None
    return name


def printable(text: str) -> str:
    """Only printable ASCII: what may go into a log or a header comment."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)
