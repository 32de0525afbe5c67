"""The spam filter end to end over SMTP on held-out mail: a new account
(starter model + rules) and a trained one (issue 15).

Prints figures, never passes or fails. A real pimail server (the tests'
PimailServer, tests/conftest.py) with loopback taken out of the trusted
networks (`filter.skip_networks = []`, so mail from 127.0.0.1 is filtered as
mail from the internet is), greylisting off, no rspamd, no clamd, and DNS
answered by a server on loopback with no records (tests/dnsserver.py: SPF
none, DMARC none, no DNS lists). The rules are those of this branch
(filter/rules.py).

Data: the Apache SpamAssassin corpus (pimail.filter.sa_corpus). The starter
model is built from all of spam-1 and easy-ham-1 (`pimail spam
build-starter`); the held-out groups spam-2, easy-ham-2 and hard-ham-1 are
sent, each to an account of its own, over SMTP:

  new      accounts that trained nothing: the starter model scores
  trained  accounts first trained (`pimail spam train`) on all of spam-1 and
           easy-ham-1: their own model and the starter's

A message is caught when it lands in Junk or is refused (550). Then the
cost: the same 300 messages (spam-2 and easy-ham-2, alternating) sent to
a server with the starter model and to one without it (`starter_model =
"off"`; an untrained account there has no Bayes at all), measuring the
SMTP round trip of each message (DATA to 250, p50/p99), the server's CPU
seconds per message, and its resident memory after them.

Run:  .venv/bin/python bench/spam_e2e.py [--limit N]
"""

from __future__ import annotations

import argparse
import re
import smtplib
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for folder in (REPO / "tests",):
    sys.path.insert(0, str(folder))

from conftest import PimailServer  # noqa: E402
from dnsserver import DnsServer  # noqa: E402
from pimail.filter import sa_corpus, starter  # noqa: E402

GROUPS = (("spam-2", True), ("easy-ham-2", False), ("hard-ham-1", False))
COST_MESSAGES = 300


def crlf(message: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", message)


def send_all(server: PimailServer, rcpt: str, messages: list[bytes]) -> tuple[int, list[float]]:
    """Send each message to rcpt; (how many were refused, seconds of each)."""
    refused = 0
    seconds: list[float] = []
    smtp = smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=120)
    smtp.ehlo("sender.corpus.test")
    for message in messages:
        started = time.perf_counter()
        try:
            smtp.sendmail("bench@sender.corpus.test", [rcpt], crlf(message))
        except smtplib.SMTPDataError as exc:
            refused += exc.smtp_code >= 500
        except smtplib.SMTPServerDisconnected:
            smtp = smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=120)
            smtp.ehlo("sender.corpus.test")
            continue
        seconds.append(time.perf_counter() - started)
    smtp.quit()
    return refused, seconds


def proc_figures(pid: int) -> tuple[float, int]:
    """(CPU seconds, VmRSS KiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return ticks / 100.0, rss


def make(workdir: Path, name: str, dns: DnsServer, starter_model: str) -> PimailServer:
    server = PimailServer(workdir / name, {
        "dns": {"nameservers": [dns.address], "timeout": 3.0},
        "filter": {"skip_networks": [], "greylist": False, "starter_model": starter_model},
    })  # fmt: skip
    server.cli("domain", "add", "example.org")
    return server


def accuracy(workdir: Path, dns: DnsServer, model: Path, limit: int | None) -> None:
    server = make(workdir, "accuracy", dns, str(model))
    root = sa_corpus.corpus_dir()
    for kind in ("new", "trained"):
        for group, _ in GROUPS:
            server.add_user(f"{kind}-{group}@example.org")
            if kind == "trained":
                server.cli("spam", "train", f"{kind}-{group}@example.org", "--spam",
                           str(root / "spam-1"))  # fmt: skip
                server.cli("spam", "train", f"{kind}-{group}@example.org", "--ham",
                           str(root / "easy-ham-1"))  # fmt: skip
    server.start()
    try:
        print(f"{'account':<9}{'group':<13}{'n':>6}{'to Junk':>9}{'refused':>9}{'caught':>9}")
        for kind in ("new", "trained"):
            for group, _ in GROUPS:
                rcpt = f"{kind}-{group}@example.org"
                messages = sa_corpus.messages(group)[:limit]
                refused, _ = send_all(server, rcpt, messages)
                junk = len(server.messages(rcpt, ".Junk"))
                share = (junk + refused) / len(messages)
                print(f"{kind:<9}{group:<13}{len(messages):>6}{junk:>9}{refused:>9}{share:>9.1%}")
                sys.stdout.flush()
    finally:
        server.stop()
    print("caught: in Junk or refused; for spam-2 the spam caught, for the ham groups "
          "the ham sent to Junk (false positives)\n")  # fmt: skip


def cost(workdir: Path, dns: DnsServer, model: Path) -> None:
    spam = sa_corpus.messages("spam-2")
    ham = sa_corpus.messages("easy-ham-2")
    messages = [m for pair in zip(spam, ham, strict=False) for m in pair][:COST_MESSAGES]
    print(f"Cost: {len(messages)} messages (spam-2 and easy-ham-2), a new account\n")
    print(f"{'server':<22}{'p50 ms':>8}{'p99 ms':>8}{'CPU ms/msg':>12}{'RSS MiB':>9}")
    for label, setting in (("without starter model", "off"), ("with starter model", str(model))):
        server = make(workdir, "cost-" + label.split()[0], dns, setting)
        server.add_user("user@example.org")
        server.start()
        try:
            send_all(server, "user@example.org", messages[:20])  # warm up: imports, caches
            cpu_before, _ = proc_figures(server.pid)
            _, seconds = send_all(server, "user@example.org", messages)
            cpu_after, rss = proc_figures(server.pid)
        finally:
            server.stop()
        seconds.sort()
        p50 = statistics.median(seconds) * 1000
        p99 = seconds[min(len(seconds) - 1, int(len(seconds) * 0.99))] * 1000
        cpu = (cpu_after - cpu_before) / len(messages) * 1000
        print(f"{label:<22}{p50:>8.1f}{p99:>8.1f}{cpu:>12.1f}{rss / 1024:>9.1f}")
    print("p50/p99: DATA sent to 250 received, as the client sees it; CPU: the server "
          "process's user+system time; RSS: the server's after the messages\n")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="messages per group (default: all)")
    parser.add_argument("--skip-cost", action="store_true")
    args = parser.parse_args()
    root = sa_corpus.corpus_dir()
    print(f"Corpus: {sa_corpus.PACKAGE}@{sa_corpus.PACKAGE_VERSION} in {root}\n")
    dns = DnsServer().start()
    with tempfile.TemporaryDirectory(prefix="spam-e2e-") as tmp:
        workdir = Path(tmp)
        model = workdir / "starter-bayes.db"
        started = time.perf_counter()
        spam, ham = sa_corpus.messages("spam-1"), sa_corpus.messages("easy-ham-1")
        info = starter.build(spam, ham, model, source="spam-1, easy-ham-1")
        print(f"Starter model: {info.spam} spam + {info.ham} ham, {info.tokens:,} tokens, "
              f"{info.bytes / 2**20:.1f} MiB on disk, built in "
              f"{time.perf_counter() - started:.0f} s\n")  # fmt: skip
        try:
            accuracy(workdir, dns, model, args.limit)
            if not args.skip_cost:
                cost(workdir, dns, model)
        finally:
            dns.stop()


if __name__ == "__main__":
    main()
