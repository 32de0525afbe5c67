"""Token expiry of the per-account Bayes models (issue 15; pimail.filter.bayes,
"Expiry"): past filter.bayes_max_tokens rows an account's model is cut to 75 %
of the cap, the rare least recently trained tokens first, on a thread of its
own; the message totals stay, untraining stays exact and never negative, and
the model still classifies. On a real SQLite file, with the train parts of the
SpamAssassin corpus's spam-1 and easy-ham-1 (the held-out groups are not used),
and once through a real server: messages moved into Junk over IMAP."""

from __future__ import annotations

import imaplib
import logging
import smtplib
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from pimail import db
from pimail.filter import bayes as bayes_module
from pimail.filter.bayes import EXPIRE_TO, MIGRATIONS, RARE_COUNT, SPAM_CUTOFF, Bayes

try:  # tests/filter as a package, or on sys.path (pytest's rootdir-less import)
    from . import corpus
except ImportError:
    import corpus  # type: ignore[no-redef]

from conftest import PASSWORD, PimailServer

WAIT_SECONDS = 60.0  # generous bound for the expiry thread on a shared machine


def stored(path: Path, account_id: int) -> dict[int, tuple[int, int, int]]:
    """token -> (spam, ham, seen) of an account, read with a connection of our own."""
    con = sqlite3.connect(path)
    try:
        found = con.execute(
            "SELECT token, spam, ham, seen FROM tokens WHERE account_id = ?", (account_id,)
        )
        return {token: (spam, ham, seen) for token, spam, ham, seen in found}
    finally:
        con.close()


@pytest.fixture(scope="module")
def train_parts() -> tuple[list[bytes], list[bytes]]:
    """The train parts of spam-1 and easy-ham-1."""
    return corpus.split("spam-1")[0], corpus.split("easy-ham-1")[0]


def test_a_model_past_the_cap_shrinks_below_it_and_still_classifies(
    tmp_path: Path, train_parts: tuple[list[bytes], list[bytes]]
) -> None:
    spam, ham = train_parts
    cap = 60_000  # the train parts make about 200,000 rows (276,289 for all 3,000)
    with Bayes(tmp_path / "bayes.db", max_tokens=cap) as model:
        model.train_many(1, spam, spam=True)
        model.train_many(1, ham, spam=False)
        model.wait_expiry(WAIT_SECONDS)
        stats = model.stats(1)
        assert 0 < stats.tokens <= cap * EXPIRE_TO
        assert (stats.spam, stats.ham) == (len(spam), len(ham))  # messages, not tokens
        assert model.stats(2).tokens == 0
        # What it learnt still classifies: the test parts, as test_bayes's
        # corpus test, with the same bounds.
        spam_test, ham_test = corpus.split("spam-1")[1], corpus.split("easy-ham-1")[1]
        spam_scores = [model.score(1, m).probability for m in spam_test]
        ham_scores = [model.score(1, m).probability for m in ham_test]
    assert sum(p > SPAM_CUTOFF for p in spam_scores) / len(spam_scores) > 0.9
    assert sum(p >= SPAM_CUTOFF for p in ham_scores) / len(ham_scores) < 0.01
    assert sum(p < 0.1 for p in ham_scores) / len(ham_scores) > 0.97


def test_the_rare_least_recently_trained_go_first(
    tmp_path: Path, train_parts: tuple[list[bytes], list[bytes]]
) -> None:
    spam, ham = train_parts
    with Bayes(tmp_path / "bayes.db", max_tokens=0) as model:
        model.clock = lambda: 1_000.0  # an old batch ...
        model.train_many(1, ham[:300], spam=False)
        model.clock = lambda: 2_000.0  # ... then a newer one
        model.train_many(1, spam[:100], spam=True)
        before = stored(model.path, 1)
        rare = {t for t, (s, h, _) in before.items() if s + h < RARE_COUNT}
        common = set(before) - rare
        old_rare = {t for t in rare if before[t][2] == 1_000}
        assert len(old_rare) > len(before) // 10 and common
        # A cap that the old rare tokens alone are enough to meet.
        model.max_tokens = len(before) - len(old_rare) // 4
        expired = model.expire(1)
        assert expired == len(before) - int(model.max_tokens * EXPIRE_TO)
        after = stored(model.path, 1)
    gone = set(before) - set(after)
    assert len(gone) == expired and set(after) <= set(before)
    assert gone <= old_rare  # only rare ones, only from the older batch
    assert common <= set(after)
    assert all(after[t] == before[t] for t in after)  # the rest are untouched


def test_expiry_falls_back_to_the_least_recently_trained_common_tokens(
    tmp_path: Path, train_parts: tuple[list[bytes], list[bytes]]
) -> None:
    spam, ham = train_parts
    with Bayes(tmp_path / "bayes.db", max_tokens=0) as model:
        model.clock = lambda: 1_000.0
        model.train_many(1, ham[:200], spam=False)
        model.clock = lambda: 2_000.0
        model.train_many(1, spam[:100], spam=True)
        before = stored(model.path, 1)
        rare = {t for t, (s, h, _) in before.items() if s + h < RARE_COUNT}
        model.max_tokens = (len(before) - len(rare)) // 2  # the rare ones are not enough
        model.expire(1)
        after = stored(model.path, 1)
    assert not rare & set(after)
    assert len(after) == int(model.max_tokens * EXPIRE_TO)
    newest_gone = max(before[t][2] for t in set(before) - set(after))
    oldest_kept = min(seen for _, _, seen in after.values())
    assert newest_gone <= oldest_kept


def test_untraining_after_expiry_stays_exact(
    tmp_path: Path, train_parts: tuple[list[bytes], list[bytes]]
) -> None:
    """Counts of expired tokens are gone: untraining their messages decrements
    what is left, never below zero, and untraining everything leaves nothing."""
    spam, ham = train_parts
    with Bayes(tmp_path / "bayes.db", max_tokens=2_000) as model:
        model.train_many(1, spam[:80], spam=True)
        model.train_many(1, ham[:80], spam=False)
        model.wait_expiry(WAIT_SECONDS)
        assert model.stats(1).tokens <= 2_000
        assert model.train_many(1, ham[:10], spam=True) == 10  # moved over: ham -> spam
        model.wait_expiry(WAIT_SECONDS)
        assert all(s >= 0 and h >= 0 for s, h, _ in stored(model.path, 1).values())
        assert model.untrain_many(1, spam[:80] + ham[:10], spam=True) == 90
        assert model.untrain_many(1, ham[10:80], spam=False) == 70
        stats = model.stats(1)
    assert (stats.spam, stats.ham, stats.tokens) == (0, 0, 0)
    assert stored(tmp_path / "bayes.db", 1) == {}


def test_expiry_runs_on_its_own_thread_after_training(
    tmp_path: Path, train_parts: tuple[list[bytes], list[bytes]], caplog: Any
) -> None:
    spam, _ = train_parts
    caplog.set_level(logging.INFO, logger=bayes_module.__name__)
    with Bayes(tmp_path / "bayes.db", max_tokens=1_000) as model:
        model.train_many(1, spam[:50], spam=True)
        model.wait_expiry(WAIT_SECONDS)
        assert model.stats(1).tokens <= 1_000 * EXPIRE_TO
    expired = [r for r in caplog.records if r.getMessage().startswith("bayes expired")]
    assert expired and {r.threadName for r in expired} == {"bayes-expiry"}
    assert "account=1 " in expired[0].getMessage()


def test_no_cap_keeps_everything(
    tmp_path: Path, train_parts: tuple[list[bytes], list[bytes]]
) -> None:
    spam, _ = train_parts
    with Bayes(tmp_path / "bayes.db", max_tokens=0) as model:
        model.train_many(1, spam[:50], spam=True)
        tokens = model.stats(1).tokens
        assert model.expire(1) == 0
        assert model.stats(1).tokens == tokens > 1_000


def test_a_database_of_before_gets_the_seen_column(tmp_path: Path) -> None:
    """Schema 2 (no `seen`): opened, its rows are kept and count as the oldest."""
    path = tmp_path / "bayes.db"
    con = db.connect(path, MIGRATIONS[:2])
    con.execute("INSERT INTO meta (key, value) VALUES ('tokenizer', ?)",
                (str(bayes_module.TOKENIZER_VERSION),))  # fmt: skip
    con.execute("INSERT INTO tokens (account_id, token, spam, ham) VALUES (1, 42, 3, 1)")
    con.execute("INSERT INTO totals (account_id, spam, ham) VALUES (1, 3, 1)")
    con.close()
    with Bayes(path) as model:
        assert model.stats(1).tokens == 1
    assert stored(path, 1) == {42: (3, 1, 0)}


SPAM = (
    "From: winner@lottery.test\r\nTo: alice@example.org\r\nSubject: You have WON {n}\r\n"
    "Message-ID: <{n}@lottery.test>\r\n\r\n{words}\r\n"
)


def test_junk_moves_over_imap_expire_a_capped_model(make_server: Any) -> None:
    """The server's path: IMAP MOVE into Junk trains on the store's writer
    thread, and past filter.bayes_max_tokens the model is cut back."""
    cap = 300
    server: PimailServer = make_server(sections={"filter": {"bayes_max_tokens": cap}})
    server.cli("domain", "add", "example.org")
    server.add_user("alice@example.org")
    server.start()
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as s:
        for n in range(12):  # each message distinct words: about 60 tokens of its own
            words = " ".join(f"offer{n}x{i} prize{n}y{i}" for i in range(15))
            s.sendmail("winner@lottery.test", ["alice@example.org"],
                       SPAM.format(n=n, words=words).encode())  # fmt: skip
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=server.client_tls())
    imap.login("alice@example.org", PASSWORD)
    imap.select("INBOX")
    assert imap.uid("MOVE", "1:*", "Junk")[0] == "OK"
    imap.logout()
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        con = sqlite3.connect(server.data_dir / "bayes.db")
        (spam,) = con.execute("SELECT spam FROM totals").fetchone() or (0,)
        (tokens,) = con.execute("SELECT count(*) FROM tokens").fetchone()
        con.close()
        if spam == 12 and tokens <= cap:
            break
        assert time.monotonic() < deadline, (spam, tokens)
        time.sleep(0.1)
    assert tokens > 0  # cut back, not emptied
    assert "bayes expired account=" in server.log.read_text()
