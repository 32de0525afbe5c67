"""The inbound filter pipeline (filter/pipeline.py) and its static rules (filter/rules.py).

Real parts only, as in test_auth.py: a DNS server on loopback answers pimail's
Resolver, messages are DKIM-signed by pimail's own signer (queue/dkim.py), the
Bayes model is a real SQLite file, and the virus scan is a real clamd
(tests/filter/engines.py). The pipeline is called directly: no SMTP socket.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnsserver import DnsServer
from pimail import db
from pimail.auth.accounts import Directory
from pimail.config import FilterSettings, Settings
from pimail.dns.records import dkim_txt, quote_txt
from pimail.dns.resolver import Resolver
from pimail.filter import rules
from pimail.filter.bayes import Bayes
from pimail.filter.pipeline import Envelope, Pipeline, Verdict, bayes_points, bayes_symbol
from pimail.queue import dkim as signer

from .engines import EICAR, EICAR_FOUND, ClamdServer, with_attachment

DOMAIN = "example.test"
HOSTNAME = "mx.pimail.test"
OUTSIDE = "192.0.2.10"  # RFC 5737 documentation range: "outside" for the pipeline
PLAIN = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: Lunch\r\n"
    b"Date: Fri, 27 Nov 2026 12:00:00 +0000\r\n"
    b"Message-ID: <lunch-1@example.test>\r\n"
    b"\r\n"
    b"Shall we meet at noon?\r\n"
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> list[signer.DkimKey]:
    con: sqlite3.Connection = db.open_main(Path(tmp_path_factory.mktemp("dkim")) / "pimail.db")
    Directory(con).add_domain(DOMAIN)
    return signer.generate_keys(con, DOMAIN)


def txt(zone: DnsServer, name: str, value: str) -> None:
    zone.set(name, "TXT", quote_txt(value))


def publish(zone: DnsServer, keys: list[signer.DkimKey], dmarc_policy: str = "reject") -> None:
    for key in keys:
        txt(zone, f"{key.selector}._domainkey.{DOMAIN}", dkim_txt(key))
    txt(zone, DOMAIN, "v=spf1 ip4:192.0.2.0/24 -all")
    txt(zone, f"_dmarc.{DOMAIN}", f"v=DMARC1; p={dmarc_policy}")


def settings(**filter_values: object) -> Settings:
    return Settings(hostname=HOSTNAME, filter=FilterSettings(**filter_values))  # type: ignore[arg-type]


def envelope(ip: str = OUTSIDE, mail_from: str = "alice@example.test", **kw: object) -> Envelope:
    return Envelope(ip, "mx.example.test", mail_from, ["bob@example.org"], **kw)  # type: ignore[arg-type]


def check(
    pipeline: Pipeline,
    message: bytes,
    env: Envelope | None = None,
    accounts: list[int] | None = None,
) -> Verdict:
    return asyncio.run(
        pipeline.check(env or envelope(), message, [1] if accounts is None else accounts)
    )


def test_signed_aligned_message_is_accepted(
    zone: DnsServer, resolver: Resolver, keys: list[signer.DkimKey]
) -> None:
    publish(zone, keys)
    message = signer.sign(PLAIN, DOMAIN, keys) + PLAIN
    verdict = check(Pipeline(settings(), resolver, None), message)
    assert (verdict.action, verdict.reply, verdict.junk_accounts) == ("accept", None, set())
    assert verdict.score == 0.0 and verdict.symbols == {}
    assert verdict.headers.startswith(b"Authentication-Results: mx.pimail.test;\r\n")
    for result in (b"spf=pass", b"dkim=pass header.d=example.test", b"dmarc=pass", b"arc=none"):
        assert result in verdict.headers
    assert b"X-Spam-Status: No, score=0.0 required=5.0 tests=none\r\n" in verdict.headers
    assert verdict.headers.endswith(b"X-Spam-Score: 0.0\r\n")
    assert verdict.strip_authserv_id == HOSTNAME
    assert verdict.account_headers == {1: verdict.headers}
    assert {"limits", "spf", "dkim", "arc", "dmarc", "rules"} <= set(verdict.timings)


def test_authserv_id_setting(zone: DnsServer, resolver: Resolver) -> None:
    verdict = check(Pipeline(settings(authserv_id="auth.pimail.test"), resolver, None), PLAIN)
    assert verdict.headers.startswith(b"Authentication-Results: auth.pimail.test;")
    assert verdict.strip_authserv_id == "auth.pimail.test"


def test_spf_fail_and_dmarc_reject_is_refused(
    zone: DnsServer, resolver: Resolver, keys: list[signer.DkimKey]
) -> None:
    publish(zone, keys)
    # Unsigned, from an address outside the SPF record: nothing aligned passes.
    verdict = check(Pipeline(settings(), resolver, None), PLAIN, envelope("198.51.100.7"))
    assert verdict.action == "reject"
    assert verdict.reply == "550 5.7.1 Rejected by DMARC policy of example.test"
    assert verdict.symbols["SPF_FAIL"] == 3.0 and "DMARC_FAIL" not in verdict.symbols
    assert b"dmarc=fail (p=reject applied=reject)" in verdict.headers
    # Not honoured (dmarc_reject off): accepted, with the points, into Junk.
    verdict = check(
        Pipeline(settings(dmarc_reject=False), resolver, None), PLAIN, envelope("198.51.100.7")
    )
    assert verdict.action == "accept" and verdict.junk_accounts == {1}
    assert verdict.symbols == {
        "SPF_FAIL": 3.0,
        "DMARC_POLICY_REJECT": 2.0,
        "NEW_DOMAIN_NOAUTH": 1.0,
    }
    assert verdict.score == 6.0
    assert (
        b"X-Spam-Status: Yes, score=6.0 required=5.0 tests=DMARC_POLICY_REJECT,\r\n"
        b"\tNEW_DOMAIN_NOAUTH,SPF_FAIL" in verdict.headers
    )


def test_dmarc_quarantine_goes_to_junk(
    zone: DnsServer, resolver: Resolver, keys: list[signer.DkimKey]
) -> None:
    publish(zone, keys, dmarc_policy="quarantine")
    txt(zone, DOMAIN, "v=spf1 ip4:192.0.2.0/24 ?all")  # neutral: no SPF points
    verdict = check(
        Pipeline(settings(), resolver, None), PLAIN, envelope("198.51.100.7"), accounts=[1, 2]
    )
    assert verdict.action == "accept"
    assert verdict.junk_accounts == {1, 2}
    assert verdict.symbols == {"DMARC_POLICY_QUARANTINE": 1.5, "NEW_DOMAIN_NOAUTH": 1.0}
    assert verdict.score == 2.5


def test_lan_and_authenticated_clients_skip_sender_authentication(
    zone: DnsServer, resolver: Resolver, keys: list[signer.DkimKey]
) -> None:
    publish(zone, keys)
    pipeline = Pipeline(settings(), resolver, None)
    for env in (
        envelope("192.168.1.20"),
        envelope("::ffff:10.0.0.3"),
        envelope("127.0.0.1"),
        envelope("198.51.100.7", authenticated=True),
    ):
        verdict = check(pipeline, PLAIN, env)
        assert verdict.action == "accept", env
        assert verdict.headers.startswith(b"Authentication-Results: mx.pimail.test;\r\n\tnone\r\n")
        assert "spf" not in verdict.timings
    assert zone.queries == []  # not one DNS query


def test_mime_bomb_is_refused_by_limits(resolver: Resolver) -> None:
    part = b"--b1\r\nContent-Type: text/plain\r\n\r\nx\r\n"
    bomb = (
        b"From: a@example.test\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
        + part * 10_000
        + b"--b1--\r\n"
    )
    verdict = check(Pipeline(settings(), resolver, None), bomb, envelope("10.0.0.1"))
    assert verdict.action == "reject"
    assert verdict.reply is not None and verdict.reply.startswith("552 5.3.4 ")


def test_rules_executable_and_missing_fields(resolver: Resolver) -> None:
    message = (
        with_attachment("invoice.pdf.exe", b"MZ not really")
        .replace(b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n", b"")
        .replace(b"Message-ID: <file-1@example.org>\r\n", b"")
    )
    # The built-in malware screen refuses the executable before any rule scores it.
    screened = check(Pipeline(settings(), resolver, None), message, envelope("10.0.0.1"))
    assert screened.action == "reject" and screened.reply is not None
    assert screened.reply.startswith("554 5.7.1 Message refused: an executable")
    # Without it, the rules score it.
    verdict = check(
        Pipeline(settings(malware=False), resolver, None), message, envelope("10.0.0.1")
    )
    assert verdict.action == "accept" and verdict.junk_accounts == {1}
    assert verdict.symbols == {
        "EXECUTABLE_ATTACH": 4.0,
        "MISSING_DATE": 1.0,
        "MISSING_MESSAGE_ID": 1.0,
    }
    assert verdict.score == 6.0
    assert b"X-Spam-Status: Yes, score=6.0 required=5.0 " in verdict.headers
    # The reject score: the same message is refused when it is set low enough.
    low = check(
        Pipeline(settings(reject_score=6.0, malware=False), resolver, None),
        message,
        envelope("10.0.0.1"),
    )
    assert (low.action, low.reply) == ("reject", "550 5.7.1 Message looks like spam")


def test_rules_names_and_shapes() -> None:
    def names(content_type: bytes) -> set[str]:
        message = (
            b"From: a@example.test\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\n"
            b"Message-ID: <a@b>\r\nContent-Type: " + content_type + b"\r\n\r\nx"
        )
        return set(rules.score(message))

    assert names(b'application/octet-stream; name="a.SCR"') == {"EXECUTABLE_ATTACH"}
    assert names(b"application/x-msdownload;\r\n\tname*=utf-8''setup%20.lnk") == {
        "EXECUTABLE_ATTACH"
    }
    assert names(b'application/octet-stream; name="=?utf-8?b?cGF5LmpzIA==?="') == {
        "EXECUTABLE_ATTACH"
    }  # "pay.js " in an RFC 2047 word
    assert names(b'application/pdf; name="report.pdf"') == set()
    assert names(b"text/html; charset=utf-8") == {"HTML_ONLY"}
    assert names(b"text/plain") == set()
    auth = rules.AuthOutcome(spf="softfail", dkim=["fail"], dmarc="fail", dnsbl=2, dnswl=1)
    assert rules.auth_rules(auth) == {
        "SPF_SOFTFAIL": 1.0,
        "DKIM_FAIL": 1.0,
        "DMARC_POLICY_NONE": 0.5,
        "RCVD_IN_DNSBL": 6.0,
        "RCVD_IN_DNSWL": -3.0,
    }
    assert rules.auth_rules(rules.AuthOutcome(dkim=["fail", "pass"])) == {}


def test_dnsbl_listing_adds_points(zone: DnsServer, resolver: Resolver) -> None:
    # A global address: dnsbl.py never asks about documentation ranges like OUTSIDE.
    zone.set("44.33.22.11.bl.test", "A", "127.0.0.2")
    zone.set("44.33.22.11.wl.test", "A", "127.0.10.1")
    pipeline = Pipeline(
        settings(dnsbl_zones=["bl.test*2"], dnswl_zones=["wl.test"]), resolver, None
    )
    verdict = check(pipeline, PLAIN, envelope("11.22.33.44"))
    assert verdict.symbols == {
        "RCVD_IN_DNSBL": 6.0,
        "RCVD_IN_DNSWL": -3.0,
        "NEW_DOMAIN_NOAUTH": 1.0,
    }
    assert verdict.score == 4.0 and verdict.junk_accounts == set()


def test_bayes_per_account(tmp_path: Path, resolver: Resolver) -> None:
    def mail(words: str, n: int) -> bytes:
        return f"Subject: {words} {n}\r\n\r\n{words} number{n}\r\n".encode()

    spam_words = "cheap pills casino jackpot winner"
    ham_words = "meeting agenda minutes project review"
    with Bayes(tmp_path / "bayes.db") as bayes:
        bayes.train_many(1, [mail(spam_words, n) for n in range(60)], spam=True)
        bayes.train_many(1, [mail(ham_words, n) for n in range(60)], spam=False)
        pipeline = Pipeline(settings(), resolver, bayes)
        message = PLAIN.replace(b"Shall we meet at noon?", spam_words.encode())
        verdict = check(pipeline, message, envelope("10.0.0.1"), accounts=[1, 2])
    assert verdict.account_scores == {1: 6.0, 2: 0.0}  # p near 1: the most Bayes gives
    assert verdict.junk_accounts == {1}
    assert verdict.symbols == {}  # shared: account 2 has no model
    assert b"tests=BAYES_SPAM" in verdict.account_headers[1]
    assert b"tests=none" in verdict.account_headers[2]


def test_bayes_points_are_continuous_in_the_probability() -> None:
    """Issue 15: one symbol whose points follow the probability smoothly, from
    -3 to +6, reaching 5.0 at filter.bayes_threshold, instead of four buckets."""
    assert bayes_symbol(0.5) == {}
    assert bayes_symbol(0.99, 0.99) == {"BAYES_SPAM": 5.0}
    assert bayes_symbol(0.95, 0.95) == {"BAYES_SPAM": 5.0}
    assert bayes_symbol(0.9, 0.99) == {"BAYES_SPAM": 2.39}
    assert bayes_symbol(0.1, 0.99) == {"BAYES_HAM": -2.39}
    assert bayes_symbol(1.0) == {"BAYES_SPAM": 6.0} and bayes_symbol(0.0) == {"BAYES_HAM": -3.0}
    points = [bayes_points(p / 1000) for p in range(1, 1000)]
    middle = points[9:990]  # 0.01 .. 0.99
    assert points == sorted(points)  # monotone
    steps = [b - a for a, b in itertools.pairwise(middle)]
    assert max(steps) < 0.2  # no jump: a little more spam-like is a little more points


def test_failing_stage_is_a_symbol_not_a_crash(tmp_path: Path, resolver: Resolver) -> None:
    bayes = Bayes(tmp_path / "bayes.db")
    bayes.close()  # score() now raises, as a broken database file would
    verdict = check(Pipeline(settings(), resolver, bayes), PLAIN, envelope("10.0.0.1"))
    assert verdict.action == "accept"
    assert verdict.symbols == {"BAYES_ERROR": 0.0}


def test_disabled_filter_accepts_without_headers(resolver: Resolver) -> None:
    verdict = check(Pipeline(settings(enabled=False), resolver, None), PLAIN)
    assert (verdict.action, verdict.headers, verdict.symbols) == ("accept", b"", {})


# -- clamd ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def clamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    with ClamdServer(tmp_path_factory.mktemp("clamd")).start() as server:
        yield server


def test_clamd_infected_clean_and_unreachable(
    clamd_server: ClamdServer, resolver: Resolver
) -> None:
    lan = envelope("10.0.0.1")
    # clamd alone (the built-in screen would name EICAR first: test_malware.py).
    pipeline = Pipeline(settings(clamd=clamd_server.tcp_address, malware=False), resolver, None)
    verdict = check(pipeline, with_attachment("readme.txt", EICAR), lan)
    assert (verdict.action, verdict.reply) == ("reject", f"554 5.7.1 Virus found: {EICAR_FOUND}")
    assert check(pipeline, PLAIN, lan).action == "accept"
    gone = "unix:/nonexistent/pimail-test-clamd.sock"
    verdict = check(Pipeline(settings(clamd=gone), resolver, None), PLAIN, lan)
    assert verdict.action == "tempfail" and verdict.reply is not None
    assert verdict.reply.startswith("451 4.7.0 ")
    verdict = check(
        Pipeline(settings(clamd=gone, clamd_unreachable="accept"), resolver, None), PLAIN, lan
    )
    assert verdict.action == "accept" and verdict.symbols == {"CLAMD_ERROR": 0.0}


def test_rspamd_unreachable_leaves_our_score(resolver: Resolver) -> None:
    for mode in ("add", "replace"):
        pipeline = Pipeline(
            settings(rspamd="unix:/nonexistent/pimail-test-rspamd.sock", rspamd_mode=mode),
            resolver,
            None,
        )
        verdict = check(pipeline, PLAIN.replace(b"Date: ", b"X-Date: "), envelope("10.0.0.1"))
        assert verdict.action == "accept"
        assert verdict.symbols == {"MISSING_DATE": 1.0, "RSPAMD_ERROR": 0.0}
        assert verdict.score == 1.0
