"""Greylisting (filter/greylist.py) on a real SQLite file: the first attempt is
deferred with 451, a retry after the delay passes, known senders pass at once,
and a flood cannot grow the table without bound."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pimail.filter import greylist as gl
from pimail.filter.greylist import GreyDecision, Greylist, normalise_sender

IP = "11.22.33.44"
SENDER = "alice@example.org"
RCPT = "bob@pimail.test"
T0 = 1_750_000_000.0
DELAY = 300.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "greylist.db"


@pytest.fixture
def grey(path: Path) -> Iterator[Greylist]:
    with Greylist(path, delay=DELAY) as g:
        yield g


def confirm(g: Greylist, ip: str = IP, sender: str = SENDER, rcpt: str = RCPT) -> float:
    """Defer, then retry after the delay: the triplet is confirmed. The time after."""
    assert g.check(ip, sender, rcpt, now=T0).action == "defer"
    assert g.check(ip, sender, rcpt, now=T0 + DELAY).reason == gl.RETRIED
    return T0 + DELAY


# -- the triplet's life ----------------------------------------------------------


def test_first_attempt_deferred_with_451(grey: Greylist) -> None:
    decision = grey.check(IP, SENDER, RCPT, now=T0)
    assert decision == GreyDecision("defer", gl.FIRST_ATTEMPT, DELAY)
    assert decision.smtp_reply == "451 4.7.1 Greylisted, please try again in 300 seconds"


def test_retry_too_early_deferred_with_time_left(grey: Greylist) -> None:
    grey.check(IP, SENDER, RCPT, now=T0)
    decision = grey.check(IP, SENDER, RCPT, now=T0 + 120)
    assert (decision.action, decision.reason) == ("defer", gl.TOO_EARLY)
    assert decision.retry_after == pytest.approx(180)
    assert decision.smtp_reply.endswith("try again in 180 seconds")
    # Hammering does not move the first attempt's time.
    assert grey.check(IP, SENDER, RCPT, now=T0 + 299.5).smtp_reply.endswith("in 1 seconds")
    assert grey.check(IP, SENDER, RCPT, now=T0 + 300).action == "pass"


def test_retry_after_delay_passes_then_at_once(grey: Greylist) -> None:
    grey.check(IP, SENDER, RCPT, now=T0)
    assert grey.check(IP, SENDER, RCPT, now=T0 + 900) == GreyDecision("pass", gl.RETRIED)
    # From now on the same triplet passes at once, days later too.
    assert grey.check(IP, SENDER, RCPT, now=T0 + 901) == GreyDecision("pass", gl.PASSED_BEFORE)
    assert grey.check(IP, SENDER, RCPT, now=T0 + 20 * 86400).action == "pass"
    # Another triplet still waits: sender and recipient are both part of the key.
    assert grey.check(IP, "carol@example.org", RCPT, now=T0 + 902).action == "defer"
    assert grey.check(IP, SENDER, "dave@pimail.test", now=T0 + 903).action == "defer"


def test_real_short_delay(path: Path) -> None:
    with Greylist(path, delay=1.0) as g:
        assert g.check(IP, SENDER, RCPT).action == "defer"
        assert g.check(IP, SENDER, RCPT).reason == gl.TOO_EARLY
        time.sleep(1.05)
        assert g.check(IP, SENDER, RCPT) == GreyDecision("pass", gl.RETRIED)
        assert g.check(IP, SENDER, RCPT) == GreyDecision("pass", gl.PASSED_BEFORE)


def test_same_network_passes(grey: Greylist) -> None:
    # Big senders retry from another host of their pool: the /24 is the key.
    now = confirm(grey, ip="11.22.33.44")
    assert grey.check("11.22.33.201", SENDER, RCPT, now=now + 1).action == "pass"
    assert grey.check("::ffff:11.22.33.7", SENDER, RCPT, now=now + 2).action == "pass"
    assert grey.check("11.22.34.44", SENDER, RCPT, now=now + 3).action == "defer"


def test_same_ipv6_network_passes(grey: Greylist) -> None:
    now = confirm(grey, ip="2a01:4f8:1c1c:e1a5::2")
    assert grey.check("2a01:4f8:1c1c:e1a5:ffff::99", SENDER, RCPT, now=now + 1).action == "pass"
    assert grey.check("2a01:4f8:1c1c:e1a6::2", SENDER, RCPT, now=now + 2).action == "defer"
    assert grey.network("2a01:4f8:1c1c:e1a5::2") == "2a01:4f8:1c1c:e1a5::/64"
    assert grey.network("11.22.33.44") == "11.22.33.0/24"


def test_null_sender_greylisted(grey: Greylist) -> None:
    # Bounces are retried by real MTAs like any mail.
    assert grey.check(IP, "", RCPT, now=T0).action == "defer"
    assert grey.check(IP, "", RCPT, now=T0 + DELAY).action == "pass"
    assert grey.check(IP, "<>", RCPT, now=T0 + DELAY + 1).reason == gl.PASSED_BEFORE


def test_case_and_variable_parts_of_the_sender(grey: Greylist) -> None:
    # A retry of the same message may carry a new BATV tag or SRS time stamp.
    grey.check(IP, "prvs=1234abcdef=Alice@Example.ORG", "Bob@PiMail.test", now=T0)
    decision = grey.check(IP, "prvs=5678fedcba=alice@example.org", "bob@pimail.test", now=T0 + 400)
    assert decision.reason == gl.RETRIED


@pytest.mark.parametrize(
    ("sender", "normalised"),
    [
        ("Alice@Example.ORG", "alice@example.org"),
        ("<alice@example.org>", "alice@example.org"),
        ("", ""),
        ("<>", ""),
        ("prvs=1234abcdef=alice@example.org", "alice@example.org"),
        ("msprvs1=17302abcdef=bounces@example.org", "bounces@example.org"),
        ("btv1==1234abcdef==alice@example.org", "alice@example.org"),
        ("alice+newsletter@example.org", "alice@example.org"),
        ("list-bounces+bob=pimail.test@lists.example.org", "list-bounces@lists.example.org"),
        ("bounce-12345-67@mailer.example.com", "bounce-#-#@mailer.example.com"),
        ("user2024@example.org", "user2024@example.org"),
        ("SRS0=HHH1=TT=example.org=alice@forwarder.test", "srs0=example.org=alice@forwarder.test"),
        ("SRS0=other=UU=example.org=alice@forwarder.test", "srs0=example.org=alice@forwarder.test"),
        (
            "SRS1=HHH=first.test==HHH2=TT=example.org=alice@second.test",
            "srs1=first.test==example.org=alice@second.test",
        ),
        ("postmaster", "postmaster"),
    ],
)
def test_normalise_sender(sender: str, normalised: str) -> None:
    assert normalise_sender(sender) == normalised


# -- what passes at once ---------------------------------------------------------


def test_known_sender_domain_passes_at_once(grey: Greylist) -> None:
    # Mail from example.org passed SPF/DKIM aligned, from this network.
    grey.record_authenticated("Example.ORG.", IP, now=T0)
    assert grey.known_sender("example.org", now=T0 + 1)
    assert grey.known_sender("example.org", "11.22.33.99", now=T0 + 1)
    decision = grey.check("11.22.33.99", "carol@example.org", "dave@pimail.test", now=T0 + 60)
    assert decision == GreyDecision("pass", gl.KNOWN_SENDER)


def test_known_sender_elsewhere_needs_spf(grey: Greylist) -> None:
    # A bot forging a known domain from its own network is greylisted like any
    # other; a real server of the domain elsewhere passes when SPF passes now.
    grey.record_authenticated("example.org", IP, now=T0)
    assert not grey.known_sender("example.org", "99.1.2.3", now=T0 + 1)
    assert grey.check("99.1.2.3", SENDER, RCPT, now=T0 + 60).action == "defer"
    decision = grey.check("99.1.2.3", SENDER, "eve@pimail.test", now=T0 + 61, spf_pass=True)
    assert decision.reason == gl.KNOWN_SENDER
    # SPF passing for a domain never seen authenticated is not enough.
    assert (
        grey.check("99.1.2.3", "x@other.test", RCPT, now=T0 + 62, spf_pass=True).action == "defer"
    )


def test_known_sender_without_network(grey: Greylist) -> None:
    grey.record_authenticated("example.org", now=T0)
    assert grey.check(IP, SENDER, RCPT, now=T0 + 1).action == "defer"
    assert grey.check(IP, SENDER, RCPT, now=T0 + 2, spf_pass=True).action == "pass"


def test_known_sender_expires(grey: Greylist) -> None:
    grey.record_authenticated("example.org", IP, now=T0)
    later = T0 + grey.pass_ttl + 1
    assert not grey.known_sender("example.org", now=later)
    assert grey.check(IP, SENDER, RCPT, now=later).action == "defer"


def test_allow_listed_networks(path: Path) -> None:
    with Greylist(path, allow=["192.0.2.0/24", " 2001:db8::/32", "10.0.0.1"]) as g:
        assert g.check("192.0.2.77", SENDER, RCPT, now=T0) == GreyDecision("pass", gl.ALLOW_LISTED)
        assert g.check("2001:db8:5::1", SENDER, RCPT, now=T0).action == "pass"
        assert g.check("::ffff:10.0.0.1", SENDER, RCPT, now=T0).action == "pass"
        assert g.check("10.0.0.2", SENDER, RCPT, now=T0).action == "defer"
        # Nothing was stored for the allow-listed clients.
        assert g.counts() == (1, 0)
    with pytest.raises(ValueError):
        Greylist(path, allow=["192.0.2.0/33"])


def test_bad_client_address(grey: Greylist) -> None:
    with pytest.raises(ValueError):
        grey.check("mx.example.org", SENDER, RCPT, now=T0)


# -- expiry and bounds -----------------------------------------------------------


def test_confirmed_triplet_expires_after_pass_ttl(grey: Greylist) -> None:
    now = confirm(grey)
    # Every use keeps it alive ...
    now += grey.pass_ttl - 10
    assert grey.check(IP, SENDER, RCPT, now=now).reason == gl.PASSED_BEFORE
    # ... silence for longer than pass_ttl starts it over.
    now += grey.pass_ttl + 1
    assert grey.check(IP, SENDER, RCPT, now=now) == GreyDecision("defer", gl.FIRST_ATTEMPT, DELAY)
    assert grey.check(IP, SENDER, RCPT, now=now + DELAY).reason == gl.RETRIED


def test_retry_after_window_starts_over(grey: Greylist) -> None:
    grey.check(IP, SENDER, RCPT, now=T0)
    late = T0 + grey.retry_window + 1
    assert grey.check(IP, SENDER, RCPT, now=late) == GreyDecision("defer", gl.FIRST_ATTEMPT, DELAY)
    assert grey.check(IP, SENDER, RCPT, now=late + DELAY).reason == gl.RETRIED


def test_purge(grey: Greylist, path: Path) -> None:
    confirm(grey, sender="kept@example.org")
    grey.check(IP, "waiting@example.org", RCPT, now=T0)
    grey.record_authenticated("example.org", IP, now=T0)
    assert grey.counts() == (2, 1)
    assert grey.purge(now=T0 + 3600) == 0
    # The waiting triplet's window is over; the confirmed one and the known sender stay.
    assert grey.purge(now=T0 + grey.retry_window + 1) == 1
    assert grey.counts() == (1, 1)
    assert grey.purge(now=T0 + DELAY + grey.pass_ttl + 1) == 2
    assert grey.counts() == (0, 0)
    assert rows(path) == 0


def test_flood_is_capped(path: Path) -> None:
    rng = random.Random(7)
    with Greylist(path, delay=DELAY, max_rows=200) as g:
        now = confirm(g, sender="friend@example.org")
        g.check(IP, "patient@example.org", RCPT, now=now)  # a real sender, deferred once
        # A hostile flood: random senders from random addresses, never retrying.
        for i in range(3000):
            ip = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.1"
            sender = f"{rng.getrandbits(64):x}@spam{i}.test"
            assert g.check(ip, sender, RCPT, now=now + 1 + i * 0.01).action == "defer"
            assert g.counts()[0] <= 200
        assert rows(path) == g.counts()[0]
        # The confirmed triplet survived; the oldest waiting one was dropped first.
        assert g.check(IP, "friend@example.org", RCPT, now=now + 100).reason == gl.PASSED_BEFORE
        assert g.check(IP, "patient@example.org", RCPT, now=now + 400).reason == gl.FIRST_ATTEMPT


def test_known_senders_capped(path: Path) -> None:
    with Greylist(path, max_rows=50) as g:
        for i in range(500):
            g.record_authenticated(f"d{i}.test", IP, now=T0 + i)
            assert g.counts()[1] <= 50
        assert g.known_sender("d499.test", now=T0 + 500)
        assert not g.known_sender("d0.test", now=T0 + 500)


def test_persistence_across_reopening(path: Path) -> None:
    with Greylist(path, delay=DELAY) as g:
        now = confirm(g)
        g.check(IP, "later@example.org", RCPT, now=now)
        g.record_authenticated("known.test", IP, now=now)
    with Greylist(path, delay=DELAY) as g:
        assert g.counts() == (2, 1)
        assert g.check(IP, SENDER, RCPT, now=now + 10).reason == gl.PASSED_BEFORE
        assert g.check(IP, "later@example.org", RCPT, now=now + DELAY).reason == gl.RETRIED
        assert g.check(IP, "x@known.test", RCPT, now=now + 20).reason == gl.KNOWN_SENDER


def test_bad_settings(path: Path) -> None:
    with pytest.raises(ValueError):
        Greylist(path, delay=600, retry_window=300)
    with pytest.raises(ValueError):
        Greylist(path, max_rows=0)


def rows(path: Path) -> int:
    """Triplets in the file, read by a connection of its own."""
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT count(*) FROM triplets").fetchone()[0]
    finally:
        con.close()
