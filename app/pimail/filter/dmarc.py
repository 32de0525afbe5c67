"""DMARC (RFC 7489): does an authenticated identity align with the From domain,
and what does the From domain ask receivers to do when none does?

`author_domains(header_block)` finds the RFC5322.From domain(s);
`evaluate(resolver, from_domain, spf, dkim)` looks up the policy record
(`_dmarc.<domain>`, else `_dmarc.<organizational domain>`, RFC 7489 6.6.3) and
checks identifier alignment (RFC 7489 3.1) of the SPF and DKIM results;
`evaluate_message(...)` does both, with RFC 7489 6.6.1's rules for messages
with several or no author domains.

The organizational domain comes from the Public Suffix List bundled with the
`publicsuffixlist` package (both its ICANN and private sections, as OpenDMARC
and mox use it): nothing is downloaded at run time; a newer list arrives with
a package update.

pct= (RFC 7489 6.6.4): a failing message is "sampled" with probability pct/100
by `rng.random() * 100 < pct` (the `random` module's generator unless the
caller passes its own `rng`). A message not sampled gets the next less strict policy (reject ->
quarantine, quarantine -> none), and its reason says so. pct=100 and pct=0 are
therefore deterministic.

Only DNS is read; no state is kept between calls beyond the parsed PSL.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import random
import re
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

from ..dns.resolver import DnsError, Resolver
from .dkim_verify import DkimResult
from .spf import SpfResult, dns_name, printable

log = logging.getLogger(__name__)

RESULTS = ("pass", "fail", "none", "temperror", "permerror")
POLICIES = ("none", "quarantine", "reject")
MAX_AUTHOR_DOMAINS = 5
_LESS_STRICT = {"reject": "quarantine", "quarantine": "none", "none": "none"}
_HEADER_LIMIT = 256 * 1024  # only so much of a header block is searched for From


@dataclass(frozen=True)
class DmarcResult:
    result: str  # one of RESULTS (RFC 7489 11.2)
    policy: str  # what to do with the message: one of POLICIES ("none" unless it failed)
    domain: str  # the RFC5322.From domain
    org_domain: str  # its organizational domain (RFC 7489 3.2)
    reason: str = ""
    published: str = "none"  # the p= or sp= the domain publishes (before pct sampling)


@dataclass(frozen=True)
class AuthorDomains:
    """The From domain(s) of a header block; `error` says why there is no usable one."""

    domains: tuple[str, ...]
    error: str = ""


@dataclass(frozen=True)
class _Record:
    p: str
    sp: str
    pct: int
    adkim: str
    aspf: str


class _RecordError(ValueError):
    pass


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # the bundled snapshot; parsed once per process


def organizational_domain(domain: str) -> str:
    """RFC 7489 3.2: the public suffix plus one label; the domain itself when it
    is a public suffix or not under any."""
    return _psl().privatesuffix(domain) or domain


def aligned(a: str, b: str, mode: str) -> bool:
    """RFC 7489 3.1: strict ("s") is equality, relaxed ("r") is the same organizational domain."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if not a or not b:
        return False
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)


async def evaluate(
    resolver: Resolver,
    from_domain: str,
    spf: SpfResult | None,
    dkim: list[DkimResult],
    rng: random.Random | None = None,
) -> DmarcResult:
    """The DMARC result for mail from `from_domain` (RFC 7489 6.6). Never raises."""
    domain = dns_name(from_domain)
    if domain is None or "." not in domain:
        shown = printable(from_domain)[:255]
        return DmarcResult("permerror", "none", shown, shown, "From domain is not a domain name")
    org = organizational_domain(domain)
    try:
        record, found_at = await _discover(resolver, domain, org)
    except DnsError:
        return DmarcResult("temperror", "none", domain, org, "policy lookup failed for now")
    except _RecordError as e:
        return DmarcResult("permerror", "none", domain, org, str(e))
    if record is None:
        return DmarcResult("none", "none", domain, org, "no DMARC record")
    # RFC 7489 6.3: sp= applies to subdomains found through the organizational record.
    published = record.sp if found_at != domain else record.p
    # RFC 7489 4.2: pass if either SPF or DKIM passes with an aligned identifier.
    for r in dkim:
        if r.result == "pass" and aligned(r.domain, domain, record.adkim):
            reason = f"DKIM d={r.domain} aligned"
            return DmarcResult("pass", "none", domain, org, reason, published)
    if spf is not None and spf.result == "pass" and aligned(spf.domain, domain, record.aspf):
        # The SPF domain is MAIL FROM's, or HELO's for the null sender (RFC 7208 2.4).
        reason = f"SPF {spf.scope} {spf.domain} aligned"
        return DmarcResult("pass", "none", domain, org, reason, published)
    policy, reason = published, "no aligned SPF or DKIM pass"
    if record.pct < 100 and not _sampled(record.pct, rng):
        policy = _LESS_STRICT[published]  # RFC 7489 6.6.4
        reason += f"; not sampled (pct={record.pct}): {published} lowered to {policy}"
    log.debug("dmarc fail domain=%s org=%s published=%s policy=%s", domain, org, published, policy)
    return DmarcResult("fail", policy, domain, org, reason, published)


def _sampled(pct: int, rng: random.Random | None) -> bool:
    """RFC 7489 6.6.4: whether a failing message falls in the pct% the policy is for."""
    draw = rng.random() if rng is not None else random.random()
    return draw * 100 < pct


async def _discover(resolver: Resolver, domain: str, org: str) -> tuple[_Record | None, str]:
    """RFC 7489 6.6.3: the record at _dmarc.<domain>, else at _dmarc.<org>."""
    for candidate in dict.fromkeys((domain, org)):
        texts = await resolver.txt(f"_dmarc.{candidate}")
        # RFC 7489 6.6.3 step 3: keep records that begin with v=DMARC1.
        records = [t for t in texts if re.match(r"\s*v\s*=\s*DMARC1\s*(;|$)", t, re.IGNORECASE)]
        if len(records) > 1:
            # RFC 7489 6.6.3 step 4: several records mean no DMARC processing.
            return None, candidate
        if records:
            return _parse(records[0]), candidate
    return None, domain


def _parse(text: str) -> _Record:
    """RFC 7489 6.3's tags. _RecordError on values we cannot honour."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if not name:
            continue
        if not eq:
            raise _RecordError("DMARC record has a tag without '='")
        tags.setdefault(name, value.strip())
    p = tags.get("p", "").lower()
    sp = tags.get("sp", p).lower()
    if p not in POLICIES or sp not in POLICIES:
        # RFC 7489 6.6.3 step 6: with a valid rua=, act as if p=none; else no processing.
        if "mailto:" in tags.get("rua", "").lower():
            p = p if p in POLICIES else "none"
            sp = sp if sp in POLICIES else p
        else:
            raise _RecordError("DMARC record without a valid p= or sp=")
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    pct = tags.get("pct", "100")
    if adkim not in ("r", "s") or aspf not in ("r", "s"):
        raise _RecordError("DMARC record with a bad adkim= or aspf=")
    if not re.fullmatch(r"[0-9]{1,3}", pct) or int(pct) > 100:
        raise _RecordError("DMARC record with a bad pct=")
    return _Record(p, sp, int(pct), adkim, aspf)


def author_domains(header_block: bytes) -> AuthorDomains:
    """The domains of the RFC5322.From addresses (RFC 7489 3.1, 6.6.1), A-labels,
    lower case, without repeats. Empty with `error` when there is no From field,
    more than one, no parseable address, or an address without a valid domain."""
    fields = _from_fields(header_block[:_HEADER_LIMIT])
    if not fields:
        return AuthorDomains((), "no From field")
    if len(fields) > 1:
        return AuthorDomains((), "more than one From field")
    if "\r" in fields[0] or "\n" in fields[0] or "\x00" in fields[0]:
        return AuthorDomains((), "From field contains CR, LF or NUL")
    addresses = email.utils.getaddresses([fields[0]])
    domains: list[str] = []
    for _, address in addresses:
        local, at, domain = address.rpartition("@")
        name = dns_name(domain) if at and local else None
        if name is None or "." not in name or name.rsplit(".", 1)[1].isdigit():
            return AuthorDomains((), "From address without a valid domain")
        domains.append(name)
    domains = list(dict.fromkeys(domains))
    if not domains:
        return AuthorDomains((), "From field without an address")
    if len(domains) > MAX_AUTHOR_DOMAINS:
        return AuthorDomains((), "too many From domains")
    return AuthorDomains(tuple(domains))


def from_addresses(header_block: bytes) -> list[str]:
    """The addresses of the From field (local@domain, as written), at most
    MAX_AUTHOR_DOMAINS; empty when the field is missing, repeated or unreadable."""
    fields = _from_fields(header_block[:_HEADER_LIMIT])
    if len(fields) != 1 or any(c in fields[0] for c in "\r\n\x00"):
        return []
    addresses = [a for _, a in email.utils.getaddresses([fields[0]]) if "@" in a]
    return list(dict.fromkeys(addresses))[:MAX_AUTHOR_DOMAINS]


def _from_fields(header_block: bytes) -> list[str]:
    """The unfolded values of every From field, up to the end of the header."""
    text = header_block.decode("utf-8", "surrogateescape")
    fields: list[str] = []
    current: list[str] | None = None
    for line in re.split(r"\r?\n", text):
        if line == "":
            break
        if line[0] in " \t":
            if current is not None:
                current.append(line)
            continue
        if current is not None:
            fields.append("".join(current))
        name, colon, value = line.partition(":")
        current = [value] if colon and name.strip().lower() == "from" else None
    if current is not None:
        fields.append("".join(current))
    return [f.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for f in fields]


async def evaluate_message(
    resolver: Resolver,
    header_block: bytes,
    spf: SpfResult | None,
    dkim: list[DkimResult],
    rng: random.Random | None = None,
) -> DmarcResult:
    """DMARC for a received message, RFC 7489 6.6.1 included:

    - several addresses in the one From field: each distinct domain is evaluated
      and the strictest policy among the failing ones applies (a pass needs all
      to pass);
    - no From field, more than one, or no usable address: RFC 5322 requires
      exactly one From, and 6.6.1 leaves such messages to local policy. Ours:
      `permerror` with policy `reject`, because a second or unparseable From is
      the classic way to show the reader a domain DMARC never checked.
    """
    authors = author_domains(header_block)
    if authors.error:
        return DmarcResult("permerror", "reject", "", "", authors.error, "none")
    results = [await evaluate(resolver, d, spf, dkim, rng) for d in authors.domains]
    order = {"reject": 2, "quarantine": 1, "none": 0}
    failed = [r for r in results if r.result == "fail"]
    if failed:
        return max(failed, key=lambda r: order[r.policy])
    for result in ("temperror", "permerror", "none"):
        for r in results:
            if r.result == result:
                return r
    return results[0]
