"""Each account's allow and block lists of senders (pimail.filter.senders): the
entries, the matching, the pipeline's use of them with real SPF/DKIM/DMARC
answers from a DNS server on loopback, the CLI, and a running server."""

from __future__ import annotations

import asyncio
import smtplib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PimailServer
from dnsserver import DnsServer
from pimail import db
from pimail.auth.accounts import Directory
from pimail.auth.passwords import hash_password
from pimail.config import FilterSettings, Settings
from pimail.dns.records import dkim_txt, quote_txt
from pimail.dns.resolver import Resolver
from pimail.filter.pipeline import Envelope, Pipeline, Verdict
from pimail.filter.senders import (
    ALLOW,
    BLOCK,
    MAX_ENTRIES,
    ListError,
    Sender,
    SenderLists,
    normalize_entry,
)
from pimail.queue import dkim as signer

from .test_inbound_filter import filtered  # noqa: F401 (a running pimail that filters loopback)

OUTSIDE = "192.0.2.10"  # inside example.test's SPF record
ELSEWHERE = "198.51.100.7"  # outside it


@pytest.fixture
def lists(tmp_path: Path) -> Iterator[tuple[SenderLists, int, int]]:
    con = db.open_main(tmp_path / "pimail.db")
    directory = Directory(con)
    directory.add_domain("example.org")
    bob = directory.add_account("bob@example.org", hash_password("pw-bob-1234"))
    carol = directory.add_account("carol@example.org", hash_password("pw-carol-1234"))
    yield SenderLists(con), bob.id, carol.id
    con.close()


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        ("Friend@Example.TEST", "friend@example.test"),
        ("  friend@example.test ", "friend@example.test"),
        ("example.test", "example.test"),
        ("@Example.Test", "example.test"),
        ("*.example.test", "example.test"),
        ("news.example.test.", "news.example.test"),
        ("jörg@bücher.example", "jörg@xn--bcher-kva.example"),
    ],
)
def test_entries_are_normalised(text: str, entry: str) -> None:
    assert normalize_entry(text) == entry


@pytest.mark.parametrize(
    "text",
    ["", "   ", "example", "a b@example.test", "<x@example.test>", "x@", "x@@example.test",
     "x@-bad-.test", "a" * 65 + "@example.test", ".x@example.test", "x@example.test;y",
     "x@exa\x00mple.test", "@", "*.", "x" * 400],
)  # fmt: skip
def test_malformed_entries_are_refused(text: str) -> None:
    with pytest.raises(ListError):
        normalize_entry(text)


def test_the_most_specific_entry_decides(lists: tuple[SenderLists, int, int]) -> None:
    senders, bob, carol = lists
    senders.set(bob, BLOCK, ["example.test"])
    senders.set(bob, ALLOW, ["boss@example.test", "good.example.test"])

    def decide(address: str, proven: bool = True) -> str | None:
        return senders.decide([bob], [Sender(address, proven)]).get(bob)

    assert decide("spam@example.test") == BLOCK
    assert decide("Spam@MAIL.Example.Test") == BLOCK  # subdomains too, any case
    assert decide("boss@example.test") == ALLOW
    assert decide("anyone@good.example.test") == ALLOW
    assert decide("anyone@deep.good.example.test") == ALLOW
    assert decide("boss@example.test", proven=False) is None  # allow needs proof
    assert decide("someone@example.org") is None
    assert decide("someone@notexample.test") is None  # a suffix is not a parent domain
    assert decide("not an address") is None
    assert senders.decide([carol], [Sender("spam@example.test", True)]) == {}  # bob's lists


def test_a_block_on_either_address_wins(lists: tuple[SenderLists, int, int]) -> None:
    senders, bob, carol = lists
    senders.set(bob, ALLOW, ["friend@example.test"])
    senders.set(bob, BLOCK, ["bulk.example"])
    senders.set(carol, ALLOW, ["friend@example.test"])
    both = [Sender("bounce@bulk.example", False), Sender("friend@example.test", True)]
    assert senders.decide([bob, carol], both) == {bob: BLOCK, carol: ALLOW}


def test_set_moves_entries_between_lists_and_remove_counts(
    lists: tuple[SenderLists, int, int],
) -> None:
    senders, bob, _ = lists
    assert senders.set(bob, ALLOW, ["A@Example.test", "a@example.test"]) == ["a@example.test"]
    senders.set(bob, BLOCK, ["a@example.test", "example.net"])
    assert senders.entries(bob) == [(BLOCK, "a@example.test"), (BLOCK, "example.net")]
    assert senders.remove(bob, ["example.net", "other.test"]) == 1
    assert senders.entries(bob) == [(BLOCK, "a@example.test")]
    with pytest.raises(ListError):
        senders.set(bob, "maybe", ["x@example.test"])
    with pytest.raises(ListError):  # one bad entry: nothing stored
        senders.set(bob, ALLOW, ["ok@example.test", "not valid"])
    assert senders.entries(bob) == [(BLOCK, "a@example.test")]


def test_lists_are_bounded_and_go_with_the_account(
    lists: tuple[SenderLists, int, int], tmp_path: Path
) -> None:
    senders, bob, _ = lists
    senders.set(bob, BLOCK, [f"s{i}@example.test" for i in range(MAX_ENTRIES - 1)])
    with pytest.raises(ListError):
        senders.set(bob, BLOCK, ["x@example.test", "y@example.test"])
    Directory(senders.con).remove_account("bob@example.org")
    assert senders.entries(bob) == []  # ON DELETE CASCADE


# -- in the pipeline, with real DNS answers -----------------------------------

HIGH = (  # no Date, no Message-ID, HTML only, an .exe: 7 points of rules
    "From: {sender}\r\nTo: bob@example.org\r\nSubject: invoice\r\n"
    "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    "--b\r\nContent-Type: text/html\r\n\r\n<p>see attached</p>\r\n"
    '--b\r\nContent-Type: application/octet-stream; name="invoice.exe"\r\n'
    "Content-Transfer-Encoding: base64\r\n\r\nTVo=\r\n--b--\r\n"
)
# 5.7 points (6.5 until HTML_ONLY went from 1.0 to 0.2) without an attachment, which the
# malware screen would refuse over SMTP:
# no Date, no Message-ID, HTML only, a link to an address, hidden and invisible text.
HIGH_TEXT = (
    "From: {sender}\r\nTo: bob@example.org\r\nSubject: invoice\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n"
    '<p>see <a href="http://192.0.2.1/x">here</a></p>'
    '<div style="display:none">hidden words, hidden words</div>'
    '<font color="#ffffff">white text on a white page</font>\r\n'
)
LOW = (
    "From: {sender}\r\nTo: bob@example.org\r\nSubject: lunch\r\n"
    "Date: Fri, 27 Nov 2026 12:00:00 +0000\r\nMessage-ID: <lunch@example.test>\r\n\r\nNoon?\r\n"
)


@pytest.fixture
def pipeline(
    zone: DnsServer, resolver: Resolver, lists: tuple[SenderLists, int, int]
) -> tuple[Pipeline, SenderLists, int, int]:
    zone.set("example.test", "TXT", quote_txt("v=spf1 ip4:192.0.2.0/24 -all"))
    zone.set("signed.test", "TXT", quote_txt("v=spf1 -all"))
    senders, bob, carol = lists
    # HIGH's .exe scores here (rules.py); the malware screen (test_malware.py) would refuse it.
    filters = FilterSettings(reject_score=6.0, malware=False)
    settings = Settings(hostname="mx.pimail.test", filter=filters)
    return Pipeline(settings, resolver, None, senders), senders, bob, carol


def run(
    pipeline: Pipeline, body: str, sender: str, ip: str, accounts: list[int], mail_from: str = ""
) -> Verdict:
    env = Envelope(ip, "mx.example.test", mail_from or sender, ["bob@example.org"])
    return asyncio.run(pipeline.check(env, body.format(sender=sender).encode(), accounts))


def test_allow_saves_a_proven_sender_from_junk_and_refusal(pipeline: Any) -> None:
    pipe, senders, bob, carol = pipeline
    verdict = run(pipe, HIGH, "friend@example.test", OUTSIDE, [bob])
    assert verdict.action == "reject"  # 7 points, reject at 6
    senders.set(bob, ALLOW, ["friend@example.test"])
    verdict = run(pipe, HIGH, "friend@example.test", OUTSIDE, [bob])  # SPF passes
    assert verdict.action == "accept" and verdict.junk_accounts == set()
    assert verdict.symbols["USER_ALLOW"] == 0.0 and verdict.score >= 6.0
    assert b"USER_ALLOW" in verdict.headers
    # Two recipients: carol has no list, so hers goes to Junk; nobody is refused.
    verdict = run(pipe, HIGH, "friend@example.test", OUTSIDE, [bob, carol])
    assert verdict.action == "accept" and verdict.junk_accounts == {carol}
    assert "senders" in verdict.timings


def test_a_forged_allowed_sender_gets_nothing(pipeline: Any) -> None:
    pipe, senders, bob, _ = pipeline
    senders.set(bob, ALLOW, ["example.test"])
    # From an address outside example.test's SPF record: SPF fails, no DKIM.
    verdict = run(pipe, HIGH, "friend@example.test", ELSEWHERE, [bob])
    assert verdict.action == "reject" and "USER_ALLOW" not in verdict.symbols
    # A From: claiming the allowed domain over a MAIL FROM that passes elsewhere.
    other = run(pipe, LOW, "friend@example.test", ELSEWHERE, [bob], mail_from="x@unlisted.test")
    assert "USER_ALLOW" not in other.symbols


def test_allow_by_dkim_alignment(pipeline: Any, zone: DnsServer, tmp_path: Path) -> None:
    pipe, senders, bob, _ = pipeline
    con: sqlite3.Connection = db.open_main(tmp_path / "keys.db")
    Directory(con).add_domain("signed.test")
    keys = signer.generate_keys(con, "signed.test")
    for key in keys:
        zone.set(f"{key.selector}._domainkey.signed.test", "TXT", quote_txt(dkim_txt(key)))
    senders.set(bob, ALLOW, ["news@signed.test"])
    body = HIGH.format(sender="news@signed.test").encode()
    signed = signer.sign(body, "signed.test", keys) + body
    env = Envelope(ELSEWHERE, "mx.example.test", "bounce@lists.example", ["bob@example.org"])
    verdict = asyncio.run(pipe.check(env, signed, [bob]))  # SPF for the bounce domain: none
    assert b"dkim=pass" in verdict.headers
    assert verdict.action == "accept" and "USER_ALLOW" in verdict.symbols
    unsigned = asyncio.run(pipe.check(env, body, [bob]))
    assert unsigned.action == "reject"


def test_block_sends_to_junk_whatever_the_score(pipeline: Any) -> None:
    pipe, senders, bob, carol = pipeline
    senders.set(bob, BLOCK, ["example.test"])
    verdict = run(pipe, LOW, "ads@example.test", OUTSIDE, [bob, carol])
    assert verdict.action == "accept" and verdict.junk_accounts == {bob}
    alone = run(pipe, LOW, "ads@example.test", OUTSIDE, [bob])
    assert alone.score < 1.0 and alone.junk_accounts == {bob}
    assert alone.symbols["USER_BLOCK"] == 0.0 and b"USER_BLOCK" in alone.headers
    # A forged blocked address blocks as well: nobody gains by forging it.
    forged = run(pipe, LOW, "ads@example.test", ELSEWHERE, [bob])
    assert forged.junk_accounts == {bob}


# -- the CLI and a running server ---------------------------------------------


def send(server: PimailServer, sender: str, body: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        s.sendmail(sender, ["alice@example.org"], body.format(sender=sender).encode())


def test_lists_from_the_cli_apply_to_the_next_message(filtered: Any) -> None:  # noqa: F811
    server, zone = filtered
    zone.add("friends.test", "TXT", '"v=spf1 ip4:127.0.0.1 -all"')
    zone.add("pushy.test", "TXT", '"v=spf1 ip4:127.0.0.1 -all"')
    out = server.cli("spam", "block", "alice@example.org", "@Pushy.test")
    assert out.stdout.strip() == "block pushy.test"
    server.cli("spam", "allow", "alice@example.org", "friend@friends.test")
    listing = server.cli("spam", "lists", "alice@example.org").stdout
    assert listing.splitlines() == ["allow friend@friends.test", "block pushy.test"]
    send(server, "sales@pushy.test", LOW)  # would be clean: blocked, to Junk
    send(server, "friend@friends.test", HIGH_TEXT)  # 5.7 points: allowed, to the inbox
    [inbox] = server.messages("alice@example.org")
    [junk] = server.messages("alice@example.org", ".Junk")
    assert b"friend@friends.test" in inbox.read_bytes() and b"USER_ALLOW" in inbox.read_bytes()
    assert b"X-Spam-Score: 5.7" in inbox.read_bytes()
    assert b"sales@pushy.test" in junk.read_bytes() and b"USER_BLOCK" in junk.read_bytes()
    server.cli("spam", "unlist", "alice@example.org", "pushy.test")
    send(server, "sales@pushy.test", LOW)
    assert len(server.messages("alice@example.org")) == 2


def test_cli_refuses_bad_entries_and_unknown_accounts(filtered: Any) -> None:  # noqa: F811
    server, _ = filtered
    bad = server.cli("spam", "block", "alice@example.org", "not an entry", check=False)
    assert bad.returncode == 1 and "not an address or domain" in bad.stderr
    nobody = server.cli("spam", "allow", "nobody@example.org", "x@example.test", check=False)
    assert nobody.returncode == 1 and "no account" in nobody.stderr
    missing = server.cli("spam", "unlist", "alice@example.org", "x.test", check=False)
    assert missing.returncode == 1 and "removed 0 of 1" in missing.stdout
