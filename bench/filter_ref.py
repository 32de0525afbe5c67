"""`filter_bench.py --ref REV`: the content filter of another commit beside this tree's, in one run.

Prints figures, never passes or fails. Issue 15 asks what the starter model,
the new tokenizer and the rules cost: time per message (p50/p99), CPU, and
the resident memory they add, beside the filter as it was. A process cannot
import two versions of pimail, so each tree is measured by a child process
of its own (PYTHONPATH=<tree>/app; REV is checked out in a temporary `git
worktree`, as bench/web_attack_bench.py --ref does), run by this file:

- once per tree, `train`: the tree's own code trains the account model
  (account 1: the train parts of spam-1 and easy-ham-1, as filter_bench.py's
  model) and, when the tree has one (pimail.filter.starter), builds the
  starter model of the same train parts. Each tree tokenizes with its own
  tokenizer, so the files are its own.
- then, `--rounds` times, the trees in turn (the order alternating from one
  round to the next, so the machine's noise falls on both alike),
  `measure`: a new process imports the tree's filter, opens its models,
  and checks every message (the test parts, DKIM-signed half of them, from
  192.0.2.x, DNS from the one local server of the parent, a new Resolver per
  check) for two accounts in turn: "trained" (its own model; in a tree with
  a starter model, the starter is open beside it, as in the server) and
  "new" (trained nothing: the starter model scores, or, in a tree without
  one, no Bayes at all). Warm-up: 20 checks per account, not counted.

Memory (VmRSS of the measuring process, KiB from /proc/self/status): "filter
code" is what importing pimail.filter.pipeline adds (the rules, the
tokenizer, the Public Suffix List...), "models and checks" what opening the
models and checking the messages adds after that (SQLite's page caches of
the model files, Python's caches); their sum is what the filter adds to a
server. Everything tree-independent (the messages, the DKIM keys, the DNS
server) is made once by the parent with this tree's helpers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ACCOUNTS = {"trained": 1, "new": 2}
WARMUP = 20


def rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def percentile(samples: list[float], q: int) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, len(ordered) * q // 100)]


# -- in the child processes (the tree's pimail on sys.path) --------------------------


def child_train(work: Path) -> dict[str, Any]:
    from pimail.filter.bayes import Bayes

    train = json.loads((work / "train.json").read_text())
    spam = [bytes.fromhex(m) for m in train["spam"]]
    ham = [bytes.fromhex(m) for m in train["ham"]]
    out = work / os.environ["PIMAIL_BENCH_TREE"]
    out.mkdir(exist_ok=True)
    with Bayes(out / "bayes.db") as bayes:
        bayes.train_many(ACCOUNTS["trained"], spam, True)
        bayes.train_many(ACCOUNTS["trained"], ham, False)
    try:
        from pimail.filter import starter
    except ImportError:
        return {"starter": False}
    starter.build(spam, ham, out / "starter.db")
    return {"starter": True}


def child_measure(work: Path) -> dict[str, Any]:
    messages = json.loads((work / "messages.json").read_text())
    for message in messages:
        message["data"] = bytes.fromhex(message["data"])
    dns_address = (work / "dns").read_text()
    rss_start, _ = rss_kib()
    from pimail.config import FilterSettings, Settings
    from pimail.dns.resolver import Resolver
    from pimail.filter.bayes import Bayes
    from pimail.filter.pipeline import Envelope, Pipeline

    rss_imported, _ = rss_kib()
    out = work / os.environ["PIMAIL_BENCH_TREE"]
    if (out / "starter.db").exists():
        from pimail.filter import starter

        bayes = Bayes(out / "bayes.db", starter.StarterModel.open(out / "starter.db"))
    else:
        bayes = Bayes(out / "bayes.db")
    settings = Settings(hostname="mx.pimail.test", filter=FilterSettings())
    figures: dict[str, dict[str, Any]] = {
        name: {"wall": [], "cpu": [], "bayes": [], "rules": [], "junk": {"ham": 0, "spam": 0}}
        for name in ACCOUNTS
    }

    async def checks() -> None:
        for index, message in enumerate(messages[:WARMUP] + messages):
            envelope = Envelope(**message["envelope"])
            for name, account in ACCOUNTS.items():
                pipeline = Pipeline(settings, Resolver([dns_address], timeout=5.0), bayes)
                cpu = time.process_time()
                started = time.perf_counter()
                verdict = await pipeline.check(envelope, message["data"], [account])
                wall = time.perf_counter() - started
                cpu = time.process_time() - cpu
                if index < WARMUP:
                    continue
                fig = figures[name]
                fig["wall"].append(wall)
                fig["cpu"].append(cpu)
                for stage in ("bayes", "rules"):
                    fig[stage].append(verdict.timings.get(stage, 0.0))
                caught = verdict.action == "reject" or bool(verdict.junk_accounts)
                fig["junk"][message["kind"]] += caught

    asyncio.run(checks())
    rss_end, hwm = rss_kib()
    bayes.close()
    return {
        "figures": figures,
        "rss_code_kib": rss_imported - rss_start,
        "rss_models_kib": rss_end - rss_imported,
        "hwm_kib": hwm,
    }


# -- in the parent -----------------------------------------------------------------


def run(ref: str, count: int, rounds: int) -> int:
    """Measure REV and this tree (filter_bench.py --ref); print the table."""
    sys.path[:0] = [str(Path(__file__).parent)]
    import filter_bench

    filter_bench.use_test_helpers()
    work = Path(tempfile.mkdtemp(prefix="filter-ref-"))
    worktree = work / "ref-tree"
    dns = None
    try:
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), ref],
                       check=True, capture_output=True)  # fmt: skip
        keys = filter_bench.dkim_keys(work)
        messages, train = filter_bench.prepare(count, keys)
        (work / "train.json").write_text(
            json.dumps({k: [m.hex() for m in v] for k, v in train.items()})
        )
        (work / "messages.json").write_text(json.dumps([
            {"kind": m.kind, "data": m.data.hex(), "envelope": {
                "ip": m.envelope.ip, "helo": m.envelope.helo, "mail_from": m.envelope.mail_from,
                "rcpt_to": m.envelope.rcpt_to, "queue_id": m.envelope.queue_id}}
            for m in messages
        ]))  # fmt: skip
        dns = filter_bench.Child(filter_bench._serve_dns, filter_bench.dns_records(keys))
        (work / "dns").write_text(dns.info["address"])
        trees = {f"before ({ref})": worktree, "this tree": REPO}
        trained = {label: _child(tree, label, work, "train") for label, tree in trees.items()}
        results: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
        for index in range(rounds):
            order = list(trees) if index % 2 == 0 else list(reversed(trees))
            for label in order:
                results[label].append(_child(trees[label], label, work, "measure"))
        print(render(results, trained, len(messages), rounds))
        return 0
    finally:
        if dns is not None:
            dns.stop()
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)


def _child(tree: Path, label: str, work: Path, mode: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree / "app"), "PIMAIL_BENCH_TREE": label.split()[0]}
    done = subprocess.run(
        [sys.executable, __file__, mode, str(work)],
        env=env, capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{label} {mode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def render(
    results: dict[str, list[dict[str, Any]]], trained: dict[str, Any], count: int, rounds: int
) -> str:
    labels = list(results)
    columns = [(label, name) for label in labels for name in ACCOUNTS]
    lines = [
        f"The content filter before and after, {count} messages (half easy-ham-1, half spam-1,",
        f"test parts) x {rounds} rounds per tree, each round a new process, trees alternating;",
        "accounts: trained = its own model of the train parts (with the starter beside it where",
        "there is one), new = trained nothing (the starter scores; before: no Bayes at all)",
        "",
        f"{'':<26}" + "".join(f"{label[:18]:>19}" for label in labels for _ in ACCOUNTS),
        f"{'':<26}" + "".join(f"{name:>19}" for _, name in columns),
    ]

    def merged(label: str, name: str, key: str) -> list[float]:
        return [x for r in results[label] for x in r["figures"][name][key]]

    def row(title: str, cell: Any) -> None:
        lines.append(
            f"{title:<26}" + "".join(f"{cell(label, name):>19}" for label, name in columns)
        )

    row("check() p50, ms", lambda t, n: f"{percentile(merged(t, n, 'wall'), 50) * 1000:.2f}")
    row("check() p99, ms", lambda t, n: f"{percentile(merged(t, n, 'wall'), 99) * 1000:.2f}")
    row(
        "CPU per check, ms (mean)",
        lambda t, n: f"{statistics.mean(merged(t, n, 'cpu')) * 1000:.2f}",
    )
    for stage in ("bayes", "rules"):
        row(f"  {stage} stage p50 / p99", lambda t, n, s=stage: (
            f"{percentile(merged(t, n, s), 50) * 1000:.2f} / "
            f"{percentile(merged(t, n, s), 99) * 1000:.2f}"))  # fmt: skip
    row("spam to Junk (1st round)", lambda t, n: str(results[t][0]["figures"][n]["junk"]["spam"]))
    row("ham to Junk (1st round)", lambda t, n: str(results[t][0]["figures"][n]["junk"]["ham"]))
    lines.append("")
    lines.append(f"{'resident memory, MiB':<26}" + "".join(f"{label[:18]:>19}" for label in labels))
    for key, title in (("rss_code_kib", "filter code imported"),
                       ("rss_models_kib", "models and checks")):  # fmt: skip
        cells = []
        for label in labels:
            values = [r[key] / 1024 for r in results[label]]
            cells.append(f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})")
        lines.append(f"{'  ' + title:<26}" + "".join(f"{c:>19}" for c in cells))
    cells = [f"{statistics.median(r['hwm_kib'] / 1024 for r in results[t]):.1f}" for t in labels]
    lines.append(f"{'  peak of the process':<26}" + "".join(f"{c:>19}" for c in cells))
    lines.append("(median of the rounds, min-max in brackets; the peak includes Python and the")
    lines.append(" messages held in memory)")
    for label in labels:
        lines.append(f"{label}: starter model {'yes' if trained[label]['starter'] else 'none'}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("train", "measure"))
    parser.add_argument("work", type=Path)
    args = parser.parse_args()
    result = child_train(args.work) if args.mode == "train" else child_measure(args.work)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
