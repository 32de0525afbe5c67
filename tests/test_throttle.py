"""The login throttle (pimail.auth.throttle) without I/O: a clock passed in,
no sleeps. The same throttle over real sockets: tests/test_throttle_sockets.py."""

from __future__ import annotations

import asyncio

import pytest

from pimail.auth.login import Authenticator, Outcome
from pimail.auth.throttle import (
    Decision,
    LoginThrottle,
    ThrottleLimits,
    account_key,
    address_key,
)

ALICE, BOB = "alice@example.org", "bob@example.org"
X, Y = "192.0.2.1", "198.51.100.7"


def throttle(**kw: float) -> LoginThrottle:
    limits = {"per_address": 4, "per_account": 6, "known_limit": 8, "window": 600.0,
              "base_delay": 1.0, "max_delay": 8.0, "max_tracked": 100, **kw}  # fmt: skip
    return LoginThrottle(ThrottleLimits(**limits))  # type: ignore[arg-type]


def fail(t: LoginThrottle, ip: str, user: str, now: float = 0.0) -> Decision:
    attempt = t.begin(ip, user, now)
    attempt.failed(now)
    return attempt.verdict.decision


def succeed(t: LoginThrottle, ip: str, user: str, now: float = 0.0) -> Decision:
    attempt = t.begin(ip, user, now)
    attempt.succeeded(now)
    return attempt.verdict.decision


def test_keys() -> None:
    assert address_key("192.0.2.1") == "192.0.2.1"
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"  # IPv4-mapped IPv6 is IPv4
    assert address_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2:ffff:1:2:3") == "2001:db8:1:2::/64"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("unknown") == "unknown"
    assert account_key(" Alice@EXAMPLE.org ") == ALICE
    assert account_key("alice@bücher.example") == "alice@xn--bcher-kva.example"
    assert account_key("NoDomain") == "nodomain"  # not an address: still a key
    assert len(account_key("a" * 5000)) <= 320


def test_per_address_delays_then_refuses() -> None:
    t = throttle()
    decisions = [fail(t, X, f"user{i}@example.org") for i in range(6)]
    # Half the limit (2) checked at once, then delayed, then refused at the limit (4).
    assert decisions == [Decision.CHECK, Decision.CHECK, Decision.DELAY, Decision.DELAY,
                         Decision.REFUSE, Decision.REFUSE]  # fmt: skip
    delays = []
    t2 = throttle(per_address=10, per_account=100)
    for i in range(10):
        a = t2.begin(X, f"u{i}@example.org", 0.0)
        delays.append(a.verdict.delay)
        a.failed(0.0)
    assert delays == [0, 0, 0, 0, 0, 1, 2, 4, 8, 8]  # doubling, capped at max_delay
    assert t2.begin(X, ALICE, 0.0).refused
    # Another address is not affected; the window lets the first one go again.
    assert t.begin(Y, ALICE, 0.0).verdict.decision is Decision.CHECK
    assert t.begin(X, ALICE, 601.0).verdict.decision is Decision.CHECK


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() -> None:
    t = throttle()
    for i in range(4):
        fail(t, f"2001:db8:0:1::{i + 1:x}", f"u{i}@example.org")
    assert t.begin("2001:db8:0:1:ffff::9", "new@example.org", 0.0).refused  # same /64
    assert not t.begin("2001:db8:0:2::1", "new@example.org", 0.0).refused  # another /64
    for i in range(4):
        fail(t, "::ffff:192.0.2.55", f"v{i}@example.org")
    assert t.begin("192.0.2.55", "new2@example.org", 0.0).refused


def test_per_account_from_many_addresses() -> None:
    t = throttle()
    for i in range(6):  # six addresses, one guess each: the account's limit
        assert fail(t, f"203.0.113.{i}", ALICE) is not Decision.REFUSE
    assert t.begin("203.0.113.200", ALICE, 0.0).refused  # a seventh address
    assert t.begin("203.0.113.200", "Alice@Example.ORG", 0.0).refused  # the same account
    assert not t.begin("203.0.113.200", BOB, 0.0).refused  # another account


def test_one_refused_address_does_not_fill_the_account() -> None:
    t = throttle()  # per address 4, per account 6
    for _ in range(50):
        fail(t, X, ALICE)
    bucket = t.accounts.get(ALICE)
    assert bucket is not None and len(bucket.failures) == 4  # only the guesses X was allowed
    assert not t.begin(Y, ALICE, 0.0).refused  # alice elsewhere: delayed at most
    for i in range(2):  # a second address: the account's limit reached
        fail(t, f"203.0.113.{i}", ALICE)
    assert t.begin(Y, ALICE, 0.0).refused


def test_unknown_user_names_count_as_accounts() -> None:
    t = throttle()
    for i in range(6):
        fail(t, f"203.0.113.{i}", "nobody@example.org")
    assert t.begin("203.0.113.99", "nobody@example.org", 0.0).refused


def test_success_clears_only_its_own_pair() -> None:
    """Nine wrong for alice, one right for bob, repeat: bob's success forgives nothing."""
    t = throttle(per_address=4, per_account=100)
    checked = 0
    for _ in range(5):
        for _ in range(3):
            attempt = t.begin(X, ALICE, 0.0)
            if not attempt.refused:
                checked += 1
                attempt.failed(0.0)
        succeed(t, X, BOB)
    assert checked == 4  # the address's limit, not 15
    assert t.begin(X, ALICE, 0.0).refused  # and then the right password is refused too
    # bob's own typos from X are forgiven by his success.
    t = throttle()
    fail(t, X, BOB)
    fail(t, X, BOB)
    succeed(t, X, BOB)
    assert t.addresses.get(X) is None and t.accounts.get(BOB) is None


def test_in_flight_attempts_count_before_the_check() -> None:
    t = throttle(per_address=5, per_account=100)
    attempts = [t.begin(X, ALICE, 0.0) for _ in range(100)]  # all at once
    assert sum(not a.refused for a in attempts) == 5
    for a in attempts:
        a.failed(0.0)
    assert t.begin(X, ALICE, 0.0).refused
    # A success releases its place.
    t = throttle(per_address=2, per_account=100)
    first = t.begin(X, BOB, 0.0)
    second = t.begin(X, ALICE, 0.0)
    assert t.begin(X, "carol@example.org", 0.0).refused  # both places taken
    first.succeeded(0.0)
    second.succeeded(0.0)
    assert not t.begin(X, "carol@example.org", 0.0).refused


def test_a_known_address_keeps_its_own_allowance() -> None:
    t = throttle()
    home = "198.51.100.20"
    succeed(t, home, ALICE)
    for i in range(20):  # an attacker hammers alice from many addresses
        fail(t, f"203.0.113.{i}", ALICE)
    assert t.begin("203.0.113.250", ALICE, 0.0).refused  # unknown addresses: refused
    attempt = t.begin(home, ALICE, 1.0)  # alice at home: checked
    assert not attempt.refused and attempt.verdict.known
    attempt.succeeded(1.0)
    # Her own typos at home have the higher limit (8), then she is refused too.
    decisions = [fail(t, home, ALICE, 2.0) for _ in range(9)]
    assert decisions.count(Decision.REFUSE) == 1 and decisions[-1] is Decision.REFUSE
    # Known means within known_ttl.
    t = throttle(known_ttl=100.0)
    succeed(t, home, ALICE)
    assert t.begin(home, ALICE, 50.0).verdict.known
    assert not t.begin(home, ALICE, 150.0).verdict.known


def test_an_attacker_behind_bobs_address_cannot_lock_bob_out() -> None:
    t = throttle()
    nat = "100.64.0.1"  # a CGNAT address: bob and the attacker share it
    succeed(t, nat, BOB)
    for i in range(30):
        fail(t, nat, f"victim{i}@example.org")
    assert t.begin(nat, "carol@example.org", 0.0).refused  # the address is throttled
    assert not t.begin(nat, BOB, 0.0).refused  # but bob, known there, is not
    # And an attacker elsewhere hammering bob does not lock bob out at Y.
    t = throttle()
    succeed(t, Y, BOB)
    for _ in range(30):
        fail(t, X, BOB)
    assert t.begin(X, BOB, 0.0).refused
    assert not t.begin(Y, BOB, 0.0).refused


def test_memory_is_bounded_under_a_distributed_attack() -> None:
    t = throttle(max_tracked=50)
    for i in range(5000):
        ip = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        fail(t, ip, f"user{i}@example.org")
        succeed(t, ip, f"ok{i}@example.org")
    assert len(t.addresses.buckets) <= 50
    assert len(t.accounts.buckets) <= 50
    assert len(t.pairs.buckets) <= 50
    assert len(t.known) <= 50
    # Per key, no more failures than the biggest limit.
    for _ in range(1000):
        t.begin(X, ALICE, 0.0).failed(0.0)
    bucket = t.addresses.get(X)
    assert bucket is not None and len(bucket.failures) <= 8


def test_admin_list_and_lift() -> None:
    t = throttle()
    for i in range(4):
        fail(t, X, f"u{i}@example.org")
    for i in range(6):
        fail(t, f"203.0.113.{i}", ALICE)
    found = {(e.kind, e.key): e for e in t.throttled(0.0)}
    assert found[("address", X)].refused and found[("account", ALICE)].refused
    assert ("address", "203.0.113.1") not in found  # one failure: not throttled
    assert t.lift("address", X) and t.lift("account", ALICE)
    assert not t.lift("address", X)
    assert not t.begin(X, ALICE, 0.0).refused


class _Directory:
    """Stands in for auth.accounts.Directory: the Authenticator only asks these two."""

    def __init__(self) -> None:
        from pimail.auth.passwords import hash_password

        self.hash = hash_password("right")

    def account(self, address: str) -> object | None:
        from pimail.auth.accounts import Account

        return Account(1, ALICE, 1, False, None) if account_key(address) == ALICE else None

    def password_hash(self, account_id: int) -> str | None:
        return self.hash


def test_authenticator_reserves_before_checking_concurrent_attempts() -> None:
    now = [0.0]
    limits = ThrottleLimits(per_address=5, per_account=100, base_delay=0.0, max_delay=0.0)
    auth = Authenticator(_Directory(), LoginThrottle(limits), 0.0, clock=lambda: now[0])  # type: ignore[arg-type]

    async def run() -> list[Outcome]:
        results = await asyncio.gather(
            *(auth.authenticate(ALICE, "wrong", X, "test") for _ in range(50))
        )
        return [r.outcome for r in results]

    outcomes = asyncio.run(run())
    assert outcomes.count(Outcome.FAILED) == 5 and outcomes.count(Outcome.REFUSED) == 45
    assert auth.checks == 5
    right = asyncio.run(auth.authenticate(ALICE, "right", X, "test"))
    assert right.refused and right.account is None  # refused unchecked
    now[0] = 601.0
    assert asyncio.run(auth.authenticate(ALICE, "right", X, "test")).account is not None


def test_the_log_line_has_the_decision_and_never_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    auth = Authenticator(_Directory(), LoginThrottle(), 0.0)  # type: ignore[arg-type]
    with caplog.at_level("INFO", logger="pimail.auth.login"):
        asyncio.run(auth.authenticate("alice@example.org decision=ok", "hunter2-x", X, "imap"))
        asyncio.run(auth.authenticate(ALICE, "right", X, "imap"))
    text = caplog.text
    assert "hunter2-x" not in text
    assert f"login service=imap user=alice@example.org?decision?ok ip={X} decision=fail" in text
    assert f"login service=imap user={ALICE} ip={X} decision=ok known=no" in text


def test_known_addresses_survive_a_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pimail.auth.known import KnownAddresses

    store = KnownAddresses(tmp_path / "logins.db", ttl=30 * 86400.0, limit=100)
    limits = ThrottleLimits(per_address=2, per_account=2, base_delay=0.0, max_delay=0.0)
    first = Authenticator(_Directory(), LoginThrottle(limits), 0.0, known=store)  # type: ignore[arg-type]
    assert asyncio.run(first.authenticate(ALICE, "right", "2001:db8:5::1", "imap")).account
    assert store.load()[0][:2] == (ALICE, "2001:db8:5::/64")
    # "Restarted": a new throttle, the known address loaded, the failures not.
    second = Authenticator(_Directory(), LoginThrottle(limits), 0.0, known=store)  # type: ignore[arg-type]
    for _ in range(5):
        asyncio.run(second.authenticate(ALICE, "wrong", X, "imap"))
    assert asyncio.run(second.authenticate(ALICE, "right", Y, "imap")).refused
    home = asyncio.run(second.authenticate(ALICE, "right", "2001:db8:5::77", "imap"))
    assert home.account is not None
    # Past the lifetime a row is neither loaded nor kept.
    short = KnownAddresses(tmp_path / "logins.db", ttl=0.0, limit=100)
    assert short.load() == []
    # An unreadable file loads as nothing, and saving into it does not raise.
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"not a database" * 100)
    assert KnownAddresses(broken, 86400.0, 10).load() == []
    KnownAddresses(broken, 86400.0, 10).save(ALICE, X, 0.0)
