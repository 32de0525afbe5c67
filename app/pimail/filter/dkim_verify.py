"""DKIM (RFC 6376, RFC 8463) and ARC (RFC 8617) verification of received mail.

The cryptography is dkimpy's; the DNS is pimail's. dkimpy looks keys up
through a synchronous `dnsfunc`, so the work is split in two:

1. on the event loop: parse each DKIM-Signature (dkimpy's tag parser and field
   checks), fetch every `<s>._domainkey.<d>` TXT record through the async
   Resolver, and decide what needs no cryptography (no key, a revoked or
   malformed key, a temporary DNS failure);
2. in a worker thread (`asyncio.to_thread`): dkimpy hashes and verifies, with a
   `dnsfunc` that only answers from the records fetched in step 1.

So no DNS query ever leaves the thread, no process-wide resolver is touched,
and the loop never hashes a large body. At most MAX_SIGNATURES signatures are
looked at: a message with hundreds of them costs no more than one with five.

Signing is elsewhere (queue/dkim.py). Nothing here keeps state between calls.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from ..dns.resolver import DnsError, Resolver
from .spf import dns_name, printable

log = logging.getLogger(__name__)
# dkimpy's own messages (at error level, quoting attacker-chosen tags) go here,
# under pimail's name, so they can be silenced or raised on their own.
_dkimpy_log = logging.getLogger(__name__ + ".dkimpy")

RESULTS = ("pass", "fail", "neutral", "temperror", "permerror", "none")
MAX_SIGNATURES = 5
MAX_ARC_INSTANCE = 50  # RFC 8617 4.2.1: i= is 1..50
MAX_ARC_KEYS = 10
MAX_REASON = 120
_KEY_TYPE = {"rsa-sha256": b"rsa", "ed25519-sha256": b"ed25519", "rsa-sha1": b"rsa"}


@dataclass(frozen=True)
class DkimResult:
    result: str  # one of RESULTS (RFC 8601 2.7.1)
    domain: str  # d=, lower case ("" when absent or unreadable)
    selector: str  # s=
    algorithm: str  # a=, e.g. "rsa-sha256", "ed25519-sha256"
    reason: str = ""  # printable ASCII, short


@dataclass
class _Signature:
    index: int  # among the message's DKIM-Signature fields, top first (dkimpy's idx)
    domain: str
    selector: str
    algorithm: str
    key_name: str = ""  # <s>._domainkey.<d>, when the signature is well-formed
    verdict: DkimResult | None = None  # set once decided

    def decide(self, result: str, reason: str) -> None:
        reason = printable(reason)[:MAX_REASON]
        self.verdict = DkimResult(result, self.domain, self.selector, self.algorithm, reason)


async def verify(message: bytes, resolver: Resolver) -> list[DkimResult]:
    """One DkimResult per DKIM-Signature (the first MAX_SIGNATURES, top first);
    [DkimResult("none", ...)] for an unsigned message. Never raises for any input."""
    try:
        headers, _ = dkim.rfc822_parse(message)
    except dkim.DKIMException:
        head = message.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        if b"dkim-signature" in head.lower():
            return [DkimResult("permerror", "", "", "", "unparseable message header")]
        return [DkimResult("none", "", "", "", "message not signed")]
    values = [value for name, value in headers if name.lower() == b"dkim-signature"]
    if not values:
        return [DkimResult("none", "", "", "", "message not signed")]
    signatures = [_parse_signature(i, v) for i, v in enumerate(values[:MAX_SIGNATURES])]
    records = await _fetch_keys({s.key_name for s in signatures if s.verdict is None}, resolver)
    keys: dict[bytes, bytes] = {}
    for signature in signatures:
        if signature.verdict is None:
            key = _check_key(signature, records[signature.key_name])
            if key is not None:
                keys[signature.key_name.encode()] = key
    todo = [s for s in signatures if s.verdict is None]
    if todo:
        await asyncio.to_thread(_verify_in_thread, message, todo, keys)
    results = [s.verdict for s in signatures if s.verdict is not None]
    for r in results:
        log.debug(
            "dkim result=%s domain=%r selector=%r algorithm=%r reason=%r",
            r.result, r.domain, r.selector, r.algorithm, r.reason,
        )  # fmt: skip
    return results


def _parse_signature(index: int, value: bytes) -> _Signature:
    """The tags of one DKIM-Signature, checked as far as needs no key (RFC 6376 6.1.1)."""
    signature = _Signature(index, "", "", "")
    try:
        tags = parse_tag_value(value)
    except InvalidTagValueList as e:
        signature.decide("permerror", f"bad tag list: {e}")
        return signature
    signature.domain = _text(tags.get(b"d", b"")).lower()
    signature.selector = _text(tags.get(b"s", b"")).lower()
    signature.algorithm = _text(tags.get(b"a", b"")).lower()
    try:
        dkim.validate_signature_fields(tags)
    except dkim.DKIMException as e:
        signature.decide("permerror", str(e))
        return signature
    # RFC 6376 5.4 / 6.1.1: a signature that does not cover From is to be ignored.
    signed = [h.strip().lower() for h in tags[b"h"].split(b":")]
    if b"from" not in signed:
        signature.decide("permerror", "From is not signed (RFC 6376 6.1.1)")
        return signature
    if signature.algorithm == "rsa-sha1":
        signature.decide("neutral", "rsa-sha1 is not accepted (RFC 8301 3.1)")
        return signature
    domain = dns_name(signature.domain)
    selector = dns_name(signature.selector)
    if domain is None or selector is None or "." not in domain:
        signature.decide("permerror", "d= or s= is not a domain name")
        return signature
    key_name = f"{selector}._domainkey.{domain}"
    if dns_name(key_name) is None:
        signature.decide("permerror", "s=._domainkey.d= is too long")
        return signature
    signature.domain, signature.selector, signature.key_name = domain, selector, key_name
    return signature


async def _fetch_keys(names: set[str], resolver: Resolver) -> dict[str, list[str] | DnsError]:
    """TXT records for each key name (in parallel), or the DnsError that came instead."""
    ordered = sorted(names)
    answers = await asyncio.gather(*(resolver.txt(n) for n in ordered), return_exceptions=True)
    records: dict[str, list[str] | DnsError] = {}
    for name, answer in zip(ordered, answers, strict=True):
        if isinstance(answer, list | DnsError):
            records[name] = answer
        else:
            records[name] = DnsError(f"{name}: {answer!r}", temporary=True)
    return records


def _check_key(signature: _Signature, answer: list[str] | DnsError) -> bytes | None:
    """The key record as dkimpy takes it, or None with the signature decided (RFC 6376 3.6)."""
    if isinstance(answer, DnsError):
        # RFC 6376 6.1.2: a DNS failure is TEMPFAIL; a missing key is PERMFAIL.
        if answer.temporary:
            signature.decide("temperror", "key lookup failed for now")
        else:
            signature.decide("permerror", "no key record")
        return None
    if not answer:
        signature.decide("permerror", "no key record")
        return None
    try:
        record = answer[0].encode("ascii")
        tags = parse_tag_value(record)
    except (UnicodeEncodeError, InvalidTagValueList):
        signature.decide("permerror", "key record is not a tag list")
        return None
    if tags.get(b"p") == b"":
        signature.decide("permerror", "key revoked (empty p=, RFC 6376 3.6.1)")
        return None
    # RFC 6376 3.6.1 h=: the hash algorithms the key may be used with.
    if b"h" in tags and b"sha256" not in [h.strip() for h in tags[b"h"].split(b":")]:
        signature.decide("permerror", "key does not allow sha256")
        return None
    try:
        _, _, key_type, _ = dkim.evaluate_pk(signature.key_name, record)
    except Exception as e:  # dkimpy and the crypto libraries raise many kinds on junk keys
        signature.decide("permerror", f"bad key record: {type(e).__name__}")
        return None
    if key_type != _KEY_TYPE.get(signature.algorithm):  # RFC 6376 3.6.1 k=, RFC 8463 4
        signature.decide("permerror", "key type does not match a=")
        return None
    return record


def _verify_in_thread(message: bytes, todo: list[_Signature], keys: dict[bytes, bytes]) -> None:
    """dkimpy's hashing and signature checks, off the event loop."""

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return keys.get(name.lower().rstrip(b"."))

    try:
        checker = dkim.DKIM(message, logger=_dkimpy_log, minkey=1024)
    except Exception as e:
        for signature in todo:
            signature.decide("permerror", f"message not parseable: {type(e).__name__}")
        return
    for signature in todo:
        try:
            ok = checker.verify(signature.index, dnsfunc=dnsfunc)
        except dkim.ValidationError as e:
            # dkimpy says "body hash mismatch" with a ValidationError: the body changed.
            if str(e).startswith("body hash mismatch"):
                signature.decide("fail", "body hash did not verify")
            else:
                signature.decide("permerror", str(e))
            continue
        except Exception as e:  # hostile signatures may trip any part of the crypto code
            signature.decide("permerror", f"{type(e).__name__}: {e}")
            continue
        if ok:
            signature.decide("pass", "")
        else:
            signature.decide("fail", "signature did not verify")


async def verify_arc(message: bytes, resolver: Resolver) -> str:
    """The ARC chain validation status (RFC 8617 5.2): "pass", "fail" or "none".
    A temporary DNS failure for a seal's key also gives "fail" (RFC 8617 has no
    temperror); it is logged. Never raises for any input."""
    try:
        headers, _ = dkim.rfc822_parse(message)
    except dkim.DKIMException:
        return "fail"
    names: set[str] = set()
    arc_fields = 0
    for name, value in headers:
        if name.lower() not in (b"arc-seal", b"arc-message-signature"):
            continue
        arc_fields += 1
        try:
            tags = parse_tag_value(value)
            instance = int(tags.get(b"i", b"0").strip()[:4] or b"0")
        except (InvalidTagValueList, ValueError):
            return "fail"
        if not 1 <= instance <= MAX_ARC_INSTANCE:
            return "fail"
        domain = dns_name(_text(tags.get(b"d", b"")))
        selector = dns_name(_text(tags.get(b"s", b"")))
        if domain is None or selector is None:
            return "fail"
        names.add(f"{selector}._domainkey.{domain}")
    if not arc_fields:
        if any(n.lower() == b"arc-authentication-results" for n, _ in headers):
            return "fail"  # RFC 8617 5.2: a set with parts missing
        return "none"
    if len(names) > MAX_ARC_KEYS or arc_fields > 2 * MAX_ARC_INSTANCE:
        return "fail"
    records = await _fetch_keys(names, resolver)
    keys: dict[bytes, bytes] = {}
    for name, answer in records.items():
        if isinstance(answer, DnsError) and answer.temporary:
            log.info("arc key lookup failed for now name=%r", name)
            return "fail"
        if isinstance(answer, list) and answer:
            keys[name.encode()] = answer[0].encode("ascii", "replace")

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return keys.get(name.lower().rstrip(b"."))

    def run() -> bytes | None:
        try:
            cv, _, reason = dkim.arc_verify(message, logger=_dkimpy_log, dnsfunc=dnsfunc)
        except Exception as e:  # as in _verify_in_thread: junk must not escape
            cv, reason = dkim.CV_Fail, f"{type(e).__name__}"
        log.debug("arc cv=%r reason=%r", cv, printable(str(reason))[:MAX_REASON])
        return cv

    cv = await asyncio.to_thread(run)
    if cv == dkim.CV_Pass:
        return "pass"
    if cv == dkim.CV_None:
        return "none"
    return "fail"


def _text(value: bytes) -> str:
    return printable(value.decode("ascii", "replace").strip())[:255]
