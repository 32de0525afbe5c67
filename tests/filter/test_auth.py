"""Sender authentication: SPF, DKIM, ARC, DMARC and the Authentication-Results field.

Real parts only: a DNS server on loopback (tests/dnsserver.py) answers
pimail's Resolver; DKIM keys are made and messages signed by pimail's own
signer (queue/dkim.py) or by dkimpy, and verified by filter/dkim_verify.py.
The records each test needs are published in the zone by the test itself.
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import random
import re
import sqlite3
from pathlib import Path
from typing import Any

import dkim as dkimpy
import pytest

from dnsserver import DnsServer
from pimail import db
from pimail.auth.accounts import Directory
from pimail.dns.records import dkim_txt, quote_txt
from pimail.dns.resolver import Resolver
from pimail.filter import authres, dkim_verify, dmarc, spf
from pimail.filter.dkim_verify import DkimResult
from pimail.filter.dmarc import DmarcResult
from pimail.filter.spf import SpfResult
from pimail.queue import dkim as signer

DOMAIN = "example.test"
AUTHSERV = "mx.pimail.test"
PLAIN = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: Lunch\r\n"
    b"Date: Fri, 27 Nov 2026 12:00:00 +0000\r\n"
    b"Message-ID: <lunch-1@example.test>\r\n"
    b"\r\n"
    b"Shall we meet at noon?\r\n"
)


def txt(zone: DnsServer, name: str, value: str) -> None:
    zone.set(name, "TXT", quote_txt(value))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- SPF (RFC 7208) -------------------------------------------------------------


def check(resolver: Resolver, ip: str, mail_from: str, helo: str = "mx.sender.test") -> SpfResult:
    return run(spf.check(resolver, ip, mail_from, helo))


def test_spf_pass_fail_with_explanation(zone: DnsServer, resolver: Resolver) -> None:
    txt(zone, DOMAIN, "v=spf1 ip4:192.0.2.0/24 -all exp=explain.example.test")
    txt(zone, "explain.example.test", "%{i} may not send for %{d} (%{l}); see %{c}")
    good = check(resolver, "192.0.2.10", "alice@example.test")
    assert good == SpfResult("pass", DOMAIN, "mailfrom", good.explanation)
    bad = check(resolver, "198.51.100.7", "Alice@Example.TEST")
    assert (bad.result, bad.domain, bad.scope) == ("fail", DOMAIN, "mailfrom")
    assert bad.explanation == "198.51.100.7 may not send for example.test (Alice); see 198.51.100.7"


def test_spf_softfail_neutral_and_default(zone: DnsServer, resolver: Resolver) -> None:
    txt(zone, DOMAIN, "v=spf1 ip4:192.0.2.1 ~all")
    txt(zone, "neutral.test", "v=spf1 ?all")
    txt(zone, "nothing.test", "v=spf1 ip4:192.0.2.1")
    assert check(resolver, "198.51.100.7", "a@example.test").result == "softfail"
    assert check(resolver, "198.51.100.7", "a@neutral.test").result == "neutral"
    # RFC 7208 4.7: nothing matched and no redirect: neutral.
    assert check(resolver, "198.51.100.7", "a@nothing.test").result == "neutral"


def test_spf_none(zone: DnsServer, resolver: Resolver) -> None:
    txt(zone, DOMAIN, "google-site-verification=abc")  # a TXT record, but not SPF
    assert check(resolver, "192.0.2.1", "a@example.test").result == "none"
    assert check(resolver, "192.0.2.1", "a@no-such-domain.test").result == "none"  # NXDOMAIN
    for sender in ("a@localhost", "a@bad..domain.test", "a@" + "x" * 70 + ".test", "a@1.2.3.4"):
        assert check(resolver, "192.0.2.1", sender).result == "none", sender


def test_spf_temperror_on_servfail(zone: DnsServer, resolver: Resolver) -> None:
    zone.servfail.add(DOMAIN)
    assert check(resolver, "192.0.2.1", "a@example.test").result == "temperror"
    txt(zone, "inc.test", "v=spf1 include:broken.test -all")
    zone.servfail.add("broken.test")
    result = check(resolver, "192.0.2.1", "a@inc.test")
    assert result.result == "temperror"
    # A temporary failure of a lookup a mechanism needs (MX, A) is temperror as well.
    txt(zone, "mx.test", "v=spf1 mx:broken-mx.test -all")
    txt(zone, "a.test", "v=spf1 a:broken-a.test -all")
    zone.servfail.update(("broken-mx.test", "broken-a.test"))
    assert check(resolver, "192.0.2.1", "a@mx.test").result == "temperror"
    assert check(resolver, "192.0.2.1", "a@a.test").result == "temperror"


@pytest.mark.parametrize(
    "record",
    [
        "v=spf1 ip4:999.1.1.1 -all",  # not an address
        "v=spf1 ip4:192.0.2.0/33 -all",  # prefix too long
        "v=spf1 ip6:192.0.2.1 -all",  # wrong family
        "v=spf1 foo:bar -all",  # unknown mechanism
        "v=spf1 a:%{z}.example.test -all",  # unknown macro letter
        "v=spf1 a:50%.example.test -all",  # lone %
        "v=spf1 include -all",  # include without a domain
        "v=spf1 redirect=a.test redirect=b.test",  # twice
        "v=spf1 -all:foo",  # all takes nothing
        "v=spf1 -all a:%{d0}.example.test",  # zero parts; syntax errors win over a match
        "v=spf1 include:nospf.test -all",  # include of a domain without SPF
        "v=spf1 redirect=nospf.test",  # redirect to a domain without SPF
    ],
)
def test_spf_permerror_syntax(zone: DnsServer, resolver: Resolver, record: str) -> None:
    txt(zone, DOMAIN, record)
    txt(zone, "nospf.test", "just text")
    result = check(resolver, "192.0.2.1", "a@example.test")
    assert result.result == "permerror", (record, result)


def test_spf_permerror_two_records(zone: DnsServer, resolver: Resolver) -> None:
    zone.set(DOMAIN, "TXT", '"v=spf1 -all"', '"v=spf1 +all"')  # RFC 7208 4.5
    assert check(resolver, "192.0.2.1", "a@example.test").result == "permerror"


def test_spf_permerror_too_many_lookups(zone: DnsServer, resolver: Resolver) -> None:
    # A chain of 11 includes: the 11th lookup term breaks RFC 7208 4.6.4's limit of 10.
    for i in range(11):
        txt(zone, f"i{i}.test", f"v=spf1 include:i{i + 1}.test -all")
    txt(zone, "i11.test", "v=spf1 +all")
    result = check(resolver, "192.0.2.1", "a@i0.test")
    assert result.result == "permerror" and "10 DNS lookups" in result.explanation
    # Ten are allowed.
    assert check(resolver, "192.0.2.1", "a@i1.test").result == "pass"


def test_spf_permerror_void_lookups(zone: DnsServer, resolver: Resolver) -> None:
    txt(zone, DOMAIN, "v=spf1 a:nx1.example.test a:nx2.example.test a:nx3.example.test -all")
    result = check(resolver, "192.0.2.1", "a@example.test")
    assert result.result == "permerror" and "void" in result.explanation


def test_spf_hundred_includes_is_a_result(zone: DnsServer, resolver: Resolver) -> None:
    record = "v=spf1 " + " ".join(f"include:n{i}.test" for i in range(100)) + " -all"
    txt(zone, DOMAIN, record)  # about 1.5 kB: over 512 octets, so the answer comes by TCP
    for i in range(100):
        txt(zone, f"n{i}.test", "v=spf1 ip4:203.0.113.1 -all")
    result = check(resolver, "192.0.2.1", "a@example.test")
    assert result.result == "permerror"
    assert len([q for q in zone.queries if q[0].startswith("n")]) <= 10


def test_spf_helo_identity_for_null_sender(zone: DnsServer, resolver: Resolver) -> None:
    txt(zone, "mx.sender.test", "v=spf1 a -all")
    zone.add("mx.sender.test", "A", "192.0.2.7")
    # RFC 7208 2.4: the null reverse-path is checked as postmaster@<HELO>.
    good = check(resolver, "192.0.2.7", "", helo="mx.sender.test")
    assert (good.result, good.domain, good.scope) == ("pass", "mx.sender.test", "helo")
    bad = check(resolver, "192.0.2.8", "<>", helo="MX.Sender.Test.")
    assert (bad.result, bad.domain, bad.scope) == ("fail", "mx.sender.test", "helo")
    # A HELO address literal or a single label has no SPF record: none.
    assert check(resolver, "192.0.2.7", "", helo="[192.0.2.7]").result == "none"
    assert check(resolver, "192.0.2.7", "", helo="localhost").result == "none"


def test_spf_include_and_redirect(zone: DnsServer, resolver: Resolver) -> None:
    txt(zone, DOMAIN, "v=spf1 include:_spf.provider.test -all")
    txt(zone, "_spf.provider.test", "v=spf1 ip4:203.0.113.0/24 ~all")
    assert check(resolver, "203.0.113.9", "a@example.test").result == "pass"
    # RFC 7208 5.2: an included softfail is "no match": the outer -all decides.
    assert check(resolver, "192.0.2.1", "a@example.test").result == "fail"
    txt(zone, "redirected.test", "v=spf1 redirect=_spf.provider.test")
    assert check(resolver, "203.0.113.9", "a@redirected.test").result == "pass"
    assert check(resolver, "192.0.2.1", "a@redirected.test").result == "softfail"
    # RFC 7208 6.1: redirect is ignored when the record has "all".
    txt(zone, "withall.test", "v=spf1 ?all redirect=_spf.provider.test")
    assert check(resolver, "203.0.113.9", "a@withall.test").result == "neutral"


def test_spf_a_and_mx_with_prefixes(zone: DnsServer, resolver: Resolver) -> None:
    txt(zone, DOMAIN, "v=spf1 mx/24 a:host.example.test//64 -all")
    zone.add(DOMAIN, "MX", "10 mail.example.test.")
    zone.add("mail.example.test", "A", "192.0.2.1")
    zone.add("host.example.test", "AAAA", "2001:db8:1::1")
    zone.add("host.example.test", "A", "198.51.100.1")
    assert check(resolver, "192.0.2.200", "a@example.test").result == "pass"  # mx/24
    assert check(resolver, "2001:db8:1::ffff", "a@example.test").result == "pass"  # a//64
    assert check(resolver, "2001:db8:2::1", "a@example.test").result == "fail"
    # a:host matches 198.51.100.1 exactly (no /cidr for IPv4 given) but not a neighbour.
    assert check(resolver, "198.51.100.1", "a@example.test").result == "pass"
    assert check(resolver, "198.51.100.2", "a@example.test").result == "fail"


def test_spf_mx_with_too_many_hosts(zone: DnsServer, resolver: Resolver) -> None:
    txt(zone, DOMAIN, "v=spf1 mx -all")
    for i in range(11):
        zone.add(DOMAIN, "MX", f"{i} mx{i}.example.test.")
    assert check(resolver, "192.0.2.1", "a@example.test").result == "permerror"


def test_spf_ip6_and_mapped_ip4(zone: DnsServer, resolver: Resolver) -> None:
    txt(zone, DOMAIN, "v=spf1 ip6:2001:db8::/32 ip4:192.0.2.1 -all")
    assert check(resolver, "2001:db8::25", "a@example.test").result == "pass"
    assert check(resolver, "2001:db9::25", "a@example.test").result == "fail"
    assert check(resolver, "::ffff:192.0.2.1", "a@example.test").result == "pass"


def test_spf_exists_with_macros(zone: DnsServer, resolver: Resolver) -> None:
    txt(zone, DOMAIN, "v=spf1 exists:%{ir}.%{v}._spf.%{d} exists:%{l}.users.%{o} -all")
    zone.add("3.2.0.192.in-addr._spf.example.test", "A", "127.0.0.2")
    zone.add("carol.users.example.test", "A", "127.0.0.2")
    assert check(resolver, "192.0.2.3", "anyone@example.test").result == "pass"
    assert check(resolver, "192.0.2.4", "carol@example.test").result == "pass"
    assert check(resolver, "192.0.2.4", "dave@example.test").result == "fail"


def test_spf_ptr_never_matches(zone: DnsServer, resolver: Resolver) -> None:
    txt(zone, DOMAIN, "v=spf1 ptr ~all")  # RFC 7208 5.5: SHOULD NOT be used
    assert check(resolver, "192.0.2.1", "a@example.test").result == "softfail"


def test_spf_macro_examples_of_rfc_7208_7_4(resolver: Resolver) -> None:
    """The examples of RFC 7208 7.4, expanded without DNS."""
    sender = "strong-bad@email.example.com"
    ev = spf._Evaluation(
        resolver, spf.ipaddress.ip_address("192.0.2.3"), sender, "strong-bad",
        "email.example.com", "mx.example.org",
    )  # fmt: skip
    expected = {
        "%{s}": "strong-bad@email.example.com",
        "%{o}": "email.example.com",
        "%{d}": "email.example.com",
        "%{d4}": "email.example.com",
        "%{d3}": "email.example.com",
        "%{d2}": "example.com",
        "%{d1}": "com",
        "%{dr}": "com.example.email",
        "%{d2r}": "example.email",
        "%{l}": "strong-bad",
        "%{l-}": "strong.bad",
        "%{lr}": "strong-bad",
        "%{lr-}": "bad.strong",
        "%{l1r-}": "strong",
        "%{ir}.%{v}._spf.%{d2}": "3.2.0.192.in-addr._spf.example.com",
        "%{lr-}.lp._spf.%{d2}": "bad.strong.lp._spf.example.com",
        "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}": "bad.strong.lp.3.2.0.192.in-addr._spf.example.com",
        "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}": "3.2.0.192.in-addr.strong.lp._spf.example.com",
        "%{d2}.trusted-domains.example.net": "example.com.trusted-domains.example.net",
        "%%%_%-%{L}": "% %20strong-bad",
    }
    for spec, value in expected.items():
        assert ev.expand(spec, "email.example.com") == value, spec
    ev6 = spf._Evaluation(
        resolver, spf.ipaddress.ip_address("2001:db8::cb01"), sender, "strong-bad",
        "email.example.com", "mx.example.org",
    )  # fmt: skip
    assert ev6.expand("%{ir}.%{v}._spf.%{d2}", "email.example.com") == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
    )


def test_spf_hostile_inputs_give_results(zone: DnsServer, resolver: Resolver) -> None:
    txt(zone, DOMAIN, "v=spf1 exists:%{l}.%{d} a:%{h} -all")
    senders = [
        "a\r\nb@example.test",
        "x" * 5000 + "@example.test",
        "\xff\xfe@example.test",
        "@",
        "a@",
        "a@" + "a." * 200 + "test",
        "%{s}@example.test",
    ]
    for sender in senders:
        result = check(resolver, "192.0.2.1", sender, helo="\r\n;()")
        assert result.result in spf.RESULTS, sender
    assert check(resolver, "not an ip", "a@example.test").result == "permerror"


# -- DKIM (RFC 6376, RFC 8463) ---------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> list[signer.DkimKey]:
    con: sqlite3.Connection = db.open_main(Path(tmp_path_factory.mktemp("dkim")) / "pimail.db")
    Directory(con).add_domain(DOMAIN)
    return signer.generate_keys(con, DOMAIN)  # RSA-2048 and Ed25519


def publish(zone: DnsServer, keys: list[signer.DkimKey]) -> None:
    for key in keys:
        txt(zone, f"{key.selector}._domainkey.{DOMAIN}", dkim_txt(key))


def signed(keys: list[signer.DkimKey], message: bytes = PLAIN) -> bytes:
    return signer.sign(message, DOMAIN, keys) + message


def verify(resolver: Resolver, message: bytes) -> list[DkimResult]:
    return run(dkim_verify.verify(message, resolver))


def test_dkim_pass_rsa_and_ed25519(
    zone: DnsServer, resolver: Resolver, keys: list[signer.DkimKey]
) -> None:
    publish(zone, keys)
    results = verify(resolver, signed(keys))
    assert [(r.result, r.domain, r.algorithm) for r in results] == [
        ("pass", DOMAIN, "rsa-sha256"),
        ("pass", DOMAIN, "ed25519-sha256"),
    ]
    assert [r.selector for r in results] == [k.selector for k in keys]
    # Each alone, too (RFC 8463: an Ed25519-only signer is just as valid).
    for key in keys:
        (only,) = verify(resolver, signed([key]))
        assert (only.result, only.algorithm) == ("pass", key.algorithm)


def test_dkim_fail_when_body_or_header_changed(
    zone: DnsServer, resolver: Resolver, keys: list[signer.DkimKey]
) -> None:
    publish(zone, keys)
    message = signed(keys)
    body_changed = message.replace(b"noon?", b"midnight?")
    assert [(r.result, r.reason) for r in verify(resolver, body_changed)] == [
        ("fail", "body hash did not verify")
    ] * 2
    subject_changed = message.replace(b"Subject: Lunch", b"Subject: Invoice")
    assert [(r.result, r.reason) for r in verify(resolver, subject_changed)] == [
        ("fail", "signature did not verify")
    ] * 2


def test_dkim_none_when_unsigned(resolver: Resolver) -> None:
    assert verify(resolver, PLAIN) == [DkimResult("none", "", "", "", "message not signed")]


def test_dkim_temperror_on_servfail(
    zone: DnsServer, resolver: Resolver, keys: list[signer.DkimKey]
) -> None:
    publish(zone, keys)
    zone.servfail.add(f"{keys[0].selector}._domainkey.{DOMAIN}")
    results = verify(resolver, signed(keys))
    assert [r.result for r in results] == ["temperror", "pass"]


def test_dkim_permerror_for_bad_or_missing_keys(
    zone: DnsServer, resolver: Resolver, keys: list[signer.DkimKey]
) -> None:
    rsa, ed = keys
    message = signed(keys)
    cases = {
        "v=DKIM1; k=rsa; p=AAAAB3NzaC1yc2E": "bad key record",
        "v=DKIM1; k=rsa; p=": "key revoked",
        "v=DKIM1; k=rsa; h=sha1; p=" + rsa.public_key: "key does not allow sha256",
        "v=DKIM1; k=ed25519; p=" + ed.public_key: "key type does not match a=",
        "v=DKIM1; k=rsa p=": "bad key record",
        "v=DKIM2; k=rsa; p=" + rsa.public_key: "bad key record",
    }
    for record, reason in cases.items():
        txt(zone, f"{rsa.selector}._domainkey.{DOMAIN}", record)
        txt(zone, f"{ed.selector}._domainkey.{DOMAIN}", dkim_txt(ed))
        first, second = run(dkim_verify.verify(message, Resolver([zone.address], timeout=2.0)))
        assert (first.result, first.reason[: len(reason)]) == ("permerror", reason), record
        assert second.result == "pass"
    zone.remove_name(f"{rsa.selector}._domainkey.{DOMAIN}")
    first, _ = run(dkim_verify.verify(message, Resolver([zone.address], timeout=2.0)))
    assert (first.result, first.reason) == ("permerror", "no key record")


def test_dkim_hostile_signatures(
    zone: DnsServer, resolver: Resolver, keys: list[signer.DkimKey]
) -> None:
    publish(zone, keys)
    good = signer.sign(PLAIN, DOMAIN, keys[:1])
    tail = b"; s=x; h=from; bh=AA==; b=AA==\r\n"
    absurd = [
        b"DKIM-Signature: v=1; a=rsa-sha256; d=" + b"a" * 5000 + b".test" + tail,
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; l=" + b"9" * 76 + tail,
        b"DKIM-Signature: v=1; a=rot13-sha7; d=example.test; s=x; h=from; bh=AA==; b=AA==\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=x; h=subject; bh=AA==; b=AA==\r\n",
        b"DKIM-Signature: v=1; v=1; d=example.test\r\n",
        b"DKIM-Signature: ;;;;====;;;\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=\xff\xfe.test; s=\x00; h=from; bh=AA==; b=AA==\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=a..b; h=from; bh=AA==; b=!!\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=x; h=from; x=1; bh=AA==; b=AA==\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha1; d=example.test; s=x; h=from; bh=AA==; b=AA==\r\n",
    ]
    for field in absurd:
        results = verify(resolver, field + good + PLAIN)
        assert results[0].result in ("permerror", "neutral", "fail"), field
        assert results[1].result == "pass", field
        assert all(" " <= c <= "~" for r in results for c in r.reason + r.domain + r.selector)
    # Hundreds of signatures: only the first five are looked at (and keys asked for).
    results = verify(resolver, good * 200 + PLAIN)
    assert [r.result for r in results] == ["pass"] * dkim_verify.MAX_SIGNATURES
    # Header lines dkimpy cannot parse at all.
    broken = b"DKIM-Signature: v=1\r\nnot a header line\r\n\r\nbody\r\n"
    assert [r.result for r in verify(resolver, broken)] == ["permerror"]


def test_dkim_key_published_in_several_strings(zone: DnsServer, resolver: Resolver) -> None:
    """A 2048-bit RSA key does not fit one 255-octet TXT string (RFC 6376 3.6.2.2)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    private = ed25519.Ed25519PrivateKey.generate()
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    txt(zone, "ed._domainkey.sub.example.test", "k=ed25519; p=" + base64.b64encode(public).decode())
    message = (
        dkimpy.sign(
            PLAIN, b"ed", b"sub.example.test", base64.b64encode(seed),
            signature_algorithm=b"ed25519-sha256",
        )
        + PLAIN
    )  # fmt: skip
    (result,) = verify(resolver, message)
    assert (result.result, result.domain, result.selector) == ("pass", "sub.example.test", "ed")


# -- ARC (RFC 8617) ----------------------------------------------------------------


def test_arc_none_and_hostile(resolver: Resolver) -> None:
    assert run(dkim_verify.verify_arc(PLAIN, resolver)) == "none"
    hostile = b"ARC-Seal: i=999999999999; d=x; s=y\r\n" + PLAIN
    assert run(dkim_verify.verify_arc(hostile, resolver)) == "fail"
    junk = b"ARC-Seal: ;;==;\r\nARC-Message-Signature: i=1\r\n" + PLAIN
    assert run(dkim_verify.verify_arc(junk, resolver)) == "fail"
    half = b"ARC-Authentication-Results: i=1; x.test; none\r\n" + PLAIN
    assert run(dkim_verify.verify_arc(half, resolver)) == "fail"


def test_arc_pass_fail(zone: DnsServer, resolver: Resolver, keys: list[signer.DkimKey]) -> None:
    # dkimpy seals only with the `authres` package (it parses the A-R field it seals).
    import authres  # noqa: F401 (a test dependency: dkimpy needs it to seal ARC)
    rsa = keys[0]
    publish(zone, keys)
    message = b"Authentication-Results: lists.example.test; spf=pass\r\n" + PLAIN
    arc = dkimpy.arc_sign(
        message, rsa.selector.encode(), DOMAIN.encode(), rsa.private_key.encode(),
        b"lists.example.test",
    )  # fmt: skip
    sealed = b"".join(arc) + message
    assert run(dkim_verify.verify_arc(sealed, resolver)) == "pass"
    assert run(dkim_verify.verify_arc(sealed.replace(b"noon", b"dusk"), resolver)) == "fail"
    zone.servfail.add(f"{rsa.selector}._domainkey.{DOMAIN}")
    assert run(dkim_verify.verify_arc(sealed, Resolver([zone.address], timeout=2.0))) == "fail"


# -- DMARC (RFC 7489) ---------------------------------------------------------------


def spf_pass(domain: str) -> SpfResult:
    return SpfResult("pass", domain, "mailfrom", "")


def dkim_pass(domain: str) -> DkimResult:
    return DkimResult("pass", domain, "sel", "rsa-sha256", "")


def evaluate(
    resolver: Resolver,
    from_domain: str,
    spf_result: SpfResult | None = None,
    dkim_results: list[DkimResult] | None = None,
    rng: random.Random | None = None,
) -> DmarcResult:
    return run(dmarc.evaluate(resolver, from_domain, spf_result, dkim_results or [], rng))


def test_dmarc_pass_via_aligned_dkim_and_spf(zone: DnsServer, resolver: Resolver) -> None:
    txt(zone, f"_dmarc.{DOMAIN}", "v=DMARC1; p=reject")
    failed = SpfResult("fail", "other.test", "mailfrom")
    by_dkim = evaluate(
        resolver, DOMAIN, failed, [DkimResult("fail", DOMAIN, "s", "rsa-sha256"), dkim_pass(DOMAIN)]
    )
    assert (by_dkim.result, by_dkim.policy, by_dkim.published) == ("pass", "none", "reject")
    assert by_dkim.reason == "DKIM d=example.test aligned"
    # Relaxed alignment (the default): the same organizational domain is enough.
    by_spf = evaluate(resolver, DOMAIN, spf_pass("bounces.example.test"))
    assert (by_spf.result, by_spf.reason) == ("pass", "SPF mailfrom bounces.example.test aligned")
    assert evaluate(resolver, DOMAIN, None, [dkim_pass("mail.example.test")]).result == "pass"
    # A pass for some other domain is not alignment.
    other = evaluate(resolver, DOMAIN, spf_pass("example.org"), [dkim_pass("example.com")])
    assert (other.result, other.policy) == ("fail", "reject")


def test_dmarc_strict_alignment(zone: DnsServer, resolver: Resolver) -> None:
    txt(zone, f"_dmarc.{DOMAIN}", "v=DMARC1; p=quarantine; adkim=s; aspf=s")
    assert evaluate(resolver, DOMAIN, None, [dkim_pass("mail.example.test")]).result == "fail"
    assert evaluate(resolver, DOMAIN, spf_pass("bounces.example.test")).result == "fail"
    assert evaluate(resolver, DOMAIN, None, [dkim_pass("EXAMPLE.test")]).result == "pass"
    assert evaluate(resolver, DOMAIN, spf_pass(DOMAIN)).result == "pass"


@pytest.mark.parametrize("policy", ["reject", "quarantine", "none"])
def test_dmarc_fail_policies(zone: DnsServer, resolver: Resolver, policy: str) -> None:
    txt(zone, f"_dmarc.{DOMAIN}", f"v=DMARC1; p={policy}; rua=mailto:d@example.test")
    result = evaluate(resolver, DOMAIN, SpfResult("softfail", DOMAIN, "mailfrom"))
    assert result == DmarcResult(
        "fail", policy, DOMAIN, DOMAIN, "no aligned SPF or DKIM pass", policy
    )


def test_dmarc_org_domain_fallback_and_sp(zone: DnsServer, resolver: Resolver) -> None:
    txt(zone, f"_dmarc.{DOMAIN}", "v=DMARC1; p=reject; sp=quarantine")
    sub = evaluate(resolver, "sub.example.test")
    assert (sub.result, sub.policy, sub.domain, sub.org_domain) == (
        "fail", "quarantine", "sub.example.test", DOMAIN,
    )  # fmt: skip
    assert evaluate(resolver, DOMAIN).policy == "reject"  # sp= is for subdomains only
    # Without sp=, subdomains get p=.
    txt(zone, "_dmarc.example.org", "v=DMARC1; p=reject")
    assert evaluate(resolver, "a.b.example.org").policy == "reject"
    # A record at the subdomain itself wins over the organizational one.
    txt(zone, "_dmarc.sub.example.test", "v=DMARC1; p=none")
    fresh = Resolver([zone.address], timeout=2.0)  # the other one remembers NXDOMAIN
    assert evaluate(fresh, "sub.example.test").policy == "none"
    # Alignment is relaxed across the organization: DKIM of the parent passes the child.
    assert evaluate(resolver, "x.sub.example.test", None, [dkim_pass(DOMAIN)]).result == "pass"


def test_dmarc_organizational_domain_uses_the_public_suffix_list() -> None:
    assert dmarc.organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert dmarc.organizational_domain("mail.example.com") == "example.com"
    assert dmarc.organizational_domain("sub.example.test") == "example.test"
    assert dmarc.organizational_domain("co.uk") == "co.uk"
    assert not dmarc.aligned("example.co.uk", "other.co.uk", "r")
    assert dmarc.aligned("a.example.co.uk", "b.example.co.uk", "r")


def test_dmarc_pct_sampling(zone: DnsServer, resolver: Resolver) -> None:
    txt(zone, f"_dmarc.{DOMAIN}", "v=DMARC1; p=reject; pct=0")
    result = evaluate(resolver, DOMAIN)
    # RFC 7489 6.6.4: not sampled: the next less strict policy.
    assert (result.result, result.policy, result.published) == ("fail", "quarantine", "reject")
    assert "not sampled (pct=0)" in result.reason
    txt(zone, "_dmarc.q.test", "v=DMARC1; p=quarantine; pct=0")
    assert evaluate(resolver, "q.test").policy == "none"
    txt(zone, "_dmarc.half.test", "v=DMARC1; p=reject; pct=50")
    seeds = [s for s in range(100) if random.Random(s).random() < 0.5]
    unseeds = [s for s in range(100) if random.Random(s).random() >= 0.5]
    assert evaluate(resolver, "half.test", rng=random.Random(seeds[0])).policy == "reject"
    assert evaluate(resolver, "half.test", rng=random.Random(unseeds[0])).policy == "quarantine"


def test_dmarc_none_temperror_permerror(zone: DnsServer, resolver: Resolver) -> None:
    assert evaluate(resolver, DOMAIN).result == "none"  # no record anywhere
    zone.servfail.add(f"_dmarc.{DOMAIN}")
    assert evaluate(Resolver([zone.address], timeout=2.0), DOMAIN).result == "temperror"
    txt(zone, "_dmarc.bad.test", "v=DMARC1; p=bogus")
    assert evaluate(resolver, "bad.test").result == "permerror"
    txt(zone, "_dmarc.bad2.test", "v=DMARC1; p=reject; adkim=x")
    assert evaluate(resolver, "bad2.test").result == "permerror"
    txt(zone, "_dmarc.bad3.test", "v=DMARC1; p=reject; pct=101")
    assert evaluate(resolver, "bad3.test").result == "permerror"
    # RFC 7489 6.6.3 step 6: no valid p= but a valid rua=: as if p=none.
    txt(zone, "_dmarc.rua.test", "v=DMARC1; p=bogus; rua=mailto:r@rua.test")
    assert (evaluate(resolver, "rua.test").result, evaluate(resolver, "rua.test").policy) == (
        "fail", "none",
    )  # fmt: skip
    # Step 4: two records: no DMARC processing.
    zone.set("_dmarc.two.test", "TXT", '"v=DMARC1; p=reject"', '"v=DMARC1; p=none"')
    assert evaluate(resolver, "two.test").result == "none"
    # A TXT record that is not DMARC is not a record.
    txt(zone, "_dmarc.other.test", "v=spf1 -all")
    assert evaluate(resolver, "other.test").result == "none"
    assert evaluate(resolver, "\r\nbad;domain").result == "permerror"


def test_author_domains() -> None:
    def domains(block: bytes) -> tuple[tuple[str, ...], str]:
        found = dmarc.author_domains(block)
        return found.domains, found.error

    assert domains(PLAIN) == ((DOMAIN,), "")
    folded = b"from:  Bob\r\n <BOB@Example.TEST>\r\nTo: x@y.test\r\n\r\nFrom: z@z.test\r\n"
    assert domains(folded) == ((DOMAIN,), "")  # the From in the body does not count
    assert domains(b"To: x@y.test\r\n\r\n") == ((), "no From field")
    assert domains(b"From: a@example.test\r\nFrom: b@evil.test\r\n") == (
        (), "more than one From field",
    )  # fmt: skip
    assert domains(b"From: a@x.test, b@x.test\r\n") == (("x.test",), "")
    assert domains(b"From: a@x.test, b@y.test\r\n") == (("x.test", "y.test"), "")
    assert domains(b"From: undisclosed:;\r\n")[0] == ()
    idn = b"From: Zo\xc3\xab <zoe@b\xc3\xbccher.test>\r\n"
    assert domains(idn) == (("xn--bcher-kva.test",), "")
    hostile = [
        b"From: a@good.test\rFrom: b@evil.test\r\n",  # a bare CR
        b"From: a@good.test\r\nFrom: =?utf-8?q?b@evil.test?=\r\n",
        b"From: alice@example.org)<bob@example.org>\r\n",
        b"From: \xff\xfe <a@\xffexample.test>\r\n",
        b"From: a@[192.0.2.1]\r\n",
        b"From: \x00@example.test\r\n",
        b"From: " + b"a@x.test, " * 1000 + b"\r\n",
    ]
    for block in hostile:
        found, error = domains(block)
        assert found == () and error, block


def test_dmarc_evaluate_message(zone: DnsServer, resolver: Resolver) -> None:
    txt(zone, "_dmarc.good.test", "v=DMARC1; p=quarantine")
    txt(zone, "_dmarc.evil.test", "v=DMARC1; p=reject")
    one = run(dmarc.evaluate_message(resolver, b"From: a@good.test\r\n", None, []))
    assert (one.result, one.policy, one.domain) == ("fail", "quarantine", "good.test")
    # RFC 7489 6.6.1: several authors: the strictest failing policy.
    both = run(dmarc.evaluate_message(
        resolver, b"From: a@good.test, b@evil.test\r\n", None, [dkim_pass("good.test")]
    ))  # fmt: skip
    assert (both.result, both.policy, both.domain) == ("fail", "reject", "evil.test")
    twice = run(dmarc.evaluate_message(
        resolver, b"From: a@good.test\r\nFrom: b@evil.test\r\n", None, [dkim_pass("good.test")]
    ))  # fmt: skip
    assert (twice.result, twice.policy) == ("permerror", "reject")


def test_end_to_end_signed_message(
    zone: DnsServer, resolver: Resolver, keys: list[signer.DkimKey]
) -> None:
    """SPF and DKIM from DNS, into DMARC, into the header we add."""
    publish(zone, keys)
    txt(zone, DOMAIN, "v=spf1 ip4:192.0.2.0/24 -all")
    txt(zone, f"_dmarc.{DOMAIN}", "v=DMARC1; p=reject")
    message = signed(keys)
    spf_result = check(resolver, "198.51.100.1", "bounce@example.test")  # a forwarder: SPF fails
    dkim_results = verify(resolver, message)
    result = run(dmarc.evaluate_message(resolver, message, spf_result, dkim_results))
    assert (spf_result.result, result.result) == ("fail", "pass")
    field = authres.header(AUTHSERV, spf_result, dkim_results, result)
    rsa, ed = keys
    assert field == (
        b"Authentication-Results: mx.pimail.test;\r\n"
        b"\tspf=fail smtp.mailfrom=example.test;\r\n"
        b"\tdkim=pass header.d=example.test header.s=" + rsa.selector.encode()
        + b" header.a=rsa-sha256;\r\n"
        b"\tdkim=pass header.d=example.test header.s=" + ed.selector.encode()
        + b" header.a=ed25519-sha256;\r\n"
        b"\tdmarc=pass header.from=example.test\r\n"
    )  # fmt: skip


# -- Authentication-Results (RFC 8601) -------------------------------------------------


def test_header_text_for_each_outcome() -> None:
    field = authres.header(
        AUTHSERV,
        SpfResult("softfail", "mx.sender.test", "helo", "x"),
        [DkimResult("fail", "example.test", "s1", "rsa-sha256", "body hash did not verify")],
        DmarcResult("fail", "quarantine", "example.test", "example.test", "r", "reject"),
        arc="none",
    )
    assert field == (
        b"Authentication-Results: mx.pimail.test;\r\n"
        b"\tspf=softfail smtp.helo=mx.sender.test;\r\n"
        b'\tdkim=fail reason="body hash did not verify" header.d=example.test\r\n'
        b"\t\theader.s=s1 header.a=rsa-sha256;\r\n"
        b"\tdmarc=fail (p=reject applied=quarantine) header.from=example.test;\r\n"
        b"\tarc=none\r\n"
    )
    unsigned = authres.header(
        AUTHSERV,
        SpfResult("none", "example.test", "mailfrom"),
        [DkimResult("none", "", "", "", "message not signed")],
        DmarcResult("none", "none", "example.test", "example.test"),
        arc="pass",
    )
    assert unsigned == (
        b"Authentication-Results: mx.pimail.test;\r\n"
        b"\tspf=none smtp.mailfrom=example.test;\r\n"
        b'\tdkim=none reason="message not signed";\r\n'
        b"\tdmarc=none header.from=example.test;\r\n"
        b"\tarc=pass\r\n"
    )
    for result in ("temperror", "permerror", "pass", "neutral"):
        assert f"spf={result} ".encode() in authres.header(
            AUTHSERV, SpfResult(result, DOMAIN, "mailfrom"), [], None
        )
    assert authres.header(AUTHSERV, None, [], None) == (
        b"Authentication-Results: mx.pimail.test;\r\n\tnone\r\n"
    )
    with pytest.raises(ValueError):
        authres.header("mx;evil", None, [], None)


def test_header_values_cannot_inject() -> None:
    hostile = 'evil.test;\r\nX-Injected: yes (comment "quote\\ ' + "\xff" * 3 + "a" * 600
    field = authres.header(
        AUTHSERV,
        SpfResult("pass\r\nX-Evil: 1", hostile, "mailfrom"),
        [DkimResult("fail", hostile, hostile, hostile, hostile)] * 5,
        DmarcResult("fail", "reject;(", hostile, hostile, hostile, "x)"),
    )
    assert field.endswith(b"\r\n") and field.isascii()
    lines = field[:-2].split(b"\r\n")
    assert all(len(line) < 998 for line in lines)
    assert all(line.startswith(b"\t") for line in lines[1:])  # every line break is a fold
    parsed = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(field + b"\r\n")
    assert parsed.keys() == ["Authentication-Results"]
    # Outside quoted-strings, only our own ';' and '(' remain: one per result, one comment.
    unquoted = re.sub(rb'"(?:[^"\\]|\\.)*"', b"", field)
    assert unquoted.count(b";") == 1 + 1 + 5
    assert unquoted.count(b"(") == 1 and b"(p=none applied=none)" in unquoted
    assert b"spf=permerror" in field


FORGED_BLOCK = (
    b"Received: from a by b; Fri, 27 Nov 2026 12:00:00 +0000\r\n"
    b"Authentication-Results: mx.pimail.test;\r\n"
    b"\tspf=pass smtp.mailfrom=paypal.test;\r\n"
    b"        dkim=pass header.d=paypal.test\r\n"
    b"X-Garbage: \xff\xfe\x80 8-bit\r\n"
    b"Authentication-Results: other.example.org; dkim=fail\r\n"
    b"AUTHENTICATION-RESULTS : (forged) MX.PIMAIL.TEST ; dmarc=pass\r\n"
    b'authentication-results: "mx.pimail.test"; spf=pass\r\n'
    b"Authentication-Results: mx.pimail.test.evil.test; spf=pass\r\n"
    b"Authentication-Results: (a (nested) comment)\r\n mx.pimail.test; none\r\n"
    b"ARC-Authentication-Results: i=1; mx.pimail.test; spf=pass\r\n"
    b"Subject: folded\r\n"
    b"  subject line\r\n"
    b"\r\n"
    b"Authentication-Results: mx.pimail.test; this is body text\r\n"
)


def test_strip_forged() -> None:
    stripped = authres.strip_forged(FORGED_BLOCK, AUTHSERV)
    assert stripped == (
        b"Received: from a by b; Fri, 27 Nov 2026 12:00:00 +0000\r\n"
        b"X-Garbage: \xff\xfe\x80 8-bit\r\n"
        b"Authentication-Results: other.example.org; dkim=fail\r\n"
        b"Authentication-Results: mx.pimail.test.evil.test; spf=pass\r\n"
        b"ARC-Authentication-Results: i=1; mx.pimail.test; spf=pass\r\n"
        b"Subject: folded\r\n"
        b"  subject line\r\n"
        b"\r\n"
        b"Authentication-Results: mx.pimail.test; this is body text\r\n"
    )
    # Bare LF line ends are kept as they are; nothing of ours: not a byte changes.
    lf = FORGED_BLOCK.replace(b"\r\n", b"\n")
    assert authres.strip_forged(lf, AUTHSERV) == stripped.replace(b"\r\n", b"\n")
    assert authres.strip_forged(FORGED_BLOCK, "elsewhere.test") == FORGED_BLOCK
    assert authres.strip_forged(b"", AUTHSERV) == b""
    no_end = b"Subject: x\r\nAuthentication-Results: mx.pimail.test; spf=pass"
    assert authres.strip_forged(no_end, AUTHSERV) == b"Subject: x\r\n"
    # Our own header, added and then stripped again, leaves the block as it was.
    ours = authres.header(AUTHSERV, SpfResult("pass", DOMAIN, "mailfrom"), [], None)
    assert authres.strip_forged(ours + PLAIN, AUTHSERV) == PLAIN
