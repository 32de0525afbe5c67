"""What holds the Bayes filter back on new spam: its settings one at a time, on spam-1/easy-ham-1.

Prints figures, never passes or fails (issue 15's study; bench/README.md,
"Spam filter"). For each variant of the classifier's settings, a starter model
is built from the train parts of a split of spam-1 and easy-ham-1
(sa_corpus.split: by hash, or by time: the older 70 % trained, the newer 30 %
tested, a proxy for mail that drifts) and a new account's test-part mail is
scored as bench/bayes_eval.py scores it (Bayes points plus the static rules);
"account+starter" also trains the account's own model on the same train
parts, as bench/spam_e2e.py's trained account is. Per threshold: spam caught,
ham caught, the highest ham score; and how many spam messages stay unsure
(0.2 < p < 0.95). The variants set module constants of pimail.filter.bayes
and starter.build's arguments in this process only.

Run:  .venv/bin/python bench/bayes_study.py [--split time|hash]   # about 3 min per split
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bayes_eval import static_points
from pimail.filter import bayes, starter
from pimail.filter import sa_corpus as corpus
from pimail.filter.pipeline import bayes_points

DEFAULTS = {
    "strength": bayes.UNKNOWN_WORD_STRENGTH,
    "min_evidence": bayes.MIN_EVIDENCE,
    "clues": bayes.MAX_DISCRIMINATORS,
}
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("defaults", {}),
    ("account+starter", {"account": True}),
    ("min_evidence=1, min_count=1", {"min_evidence": 1, "min_count": 1}),
    ("min_evidence=3", {"min_evidence": 3}),
    ("strength=1.0", {"strength": 1.0}),
    ("clues=50", {"clues": 50}),
    ("clues=300", {"clues": 300}),
    ("HTML format tokens kept", {"format_tokens": True}),
    ("strength=1.0, clues=300", {"strength": 1.0, "clues": 300}),
    ("strength=1.0, clues=300, account", {"strength": 1.0, "clues": 300, "account": True}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("hash", "time"), default="time")
    args = parser.parse_args()
    spam_train, spam_test = corpus.split("spam-1", args.split)
    ham_train, ham_test = corpus.split("easy-ham-1", args.split)
    spam_points = [static_points(m) for m in spam_test]
    ham_points = [static_points(m) for m in ham_test]
    print(f"split by {args.split}: {len(spam_train)} + {len(ham_train)} trained, "
          f"{len(spam_test)} spam + {len(ham_test)} ham tested\n")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="bayes-study-"))
    keep = starter.format_token
    for index, (label, variant) in enumerate(VARIANTS):
        settings = {**DEFAULTS, **variant}
        bayes.UNKNOWN_WORD_STRENGTH = settings["strength"]
        bayes.MIN_EVIDENCE = settings["min_evidence"]
        bayes.MAX_DISCRIMINATORS = settings["clues"]
        if variant.get("format_tokens"):
            starter.format_token = lambda token: False
        path = work / f"starter-{index}.db"
        min_count = variant.get("min_count", starter.MIN_COUNT)
        starter.build(spam_train, ham_train, path, min_count=min_count)
        starter.format_token = keep
        with bayes.Bayes(work / f"account-{index}.db", starter.StarterModel.open(path)) as model:
            account = 1
            if variant.get("account"):
                model.train_many(2, spam_train, True)
                model.train_many(2, ham_train, False)
                account = 2
            spam = [model.score(account, m).probability for m in spam_test]
            ham = [model.score(account, m).probability for m in ham_test]
        cells = []
        for threshold in (0.9, 0.95, 0.98):
            spam_scores = [
                bayes_points(p, threshold) + r for p, r in zip(spam, spam_points, strict=True)
            ]
            ham_scores = [
                bayes_points(p, threshold) + r for p, r in zip(ham, ham_points, strict=True)
            ]
            caught = sum(s >= 5.0 for s in spam_scores) / len(spam_scores)
            wrong = sum(s >= 5.0 for s in ham_scores)
            cells.append(f"t={threshold}: {caught:5.1%} {wrong} {max(ham_scores):5.2f}")
        unsure = sum(0.2 < p < 0.95 for p in spam)
        print(f"{label:<34}" + " | ".join(cells) + f" | unsure {unsure}", flush=True)
    print("\nper threshold t: spam caught, ham caught (messages), top ham score")
    for key, value in DEFAULTS.items():
        setattr(bayes, {"strength": "UNKNOWN_WORD_STRENGTH", "min_evidence": "MIN_EVIDENCE",
                        "clues": "MAX_DISCRIMINATORS"}[key], value)  # fmt: skip


if __name__ == "__main__":
    main()
