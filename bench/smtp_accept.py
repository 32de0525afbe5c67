"""SMTP accept benchmark: pimail beside Postfix 3.7 + Dovecot 2.3, in one invocation.

For each stack it measures, on this machine, over loopback (see bench/README.md):

- accept rate: M messages (default 2,000 x 20 KB) over 8 connections, with
  bench/load.py; messages/s and per-message p50/p99 latency; median of R runs;
- end-to-end rate: messages / (time from the first MAIL FROM until every accepted
  message is a file in the Maildir's new/ or cur/), checked by Message-ID. For pimail,
  which answers 250 only once the file is in new/, it is the accept rate, and the
  files are counted right after the run;
- one-message latency: one message at a time, from MAIL FROM until it is visible:
  classic, found by IMAP (SELECT + UID SEARCH HEADER Message-ID, polled);
  pimail, its file in new/ (pimail has no IMAP yet); median of 20;
- idle memory: VmRSS (and PSS) summed over the stack's processes, after start-up and
  again after the load.

The classic stack must have been set up with bench/classic/setup.sh (root, apt); this
script restarts it to measure it idle from a clean start. pimail is started from
.venv/bin/pimail with a fresh data directory for every run.

Usage: python3 bench/smtp_accept.py [--skip-classic] [--skip-pimail] [--messages N] [--runs R]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import imaplib
import json
import logging
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from load import LoadConfig, LoadResult, MessageFactory, SMTPClient, run_load

log = logging.getLogger("bench.smtp_accept")

REPO = Path(__file__).resolve().parents[1]
SETUP_SH = REPO / "bench" / "classic" / "setup.sh"
DOMAIN = "bench.test"
USER = f"user@{DOMAIN}"
PASSWORD = "secret-pw"
MAIL_FROM = "load@load.test"

CLASSIC_SMTP_PORT = 10025
CLASSIC_IMAP_PORT = 10143
CLASSIC_MARKER = "pimail SMTP accept benchmark"  # in bench/classic/main.cf
# What counts as "the classic stack" in the memory figures: the process trees of the
# Postfix master and the Dovecot master of this instance (found by their pid files;
# every other Postfix/Dovecot process is their child), keeping only processes whose
# /proc/PID/exe lies under one of these directories or is one of these files. Another
# Dovecot or Postfix instance on the machine (another benchmark's) is not counted.
CLASSIC_MASTER_PID_FILES = (
    Path("/var/spool/postfix/pid/master.pid"),
    Path("/run/dovecot/master.pid"),
)
CLASSIC_EXE_DIRS = ("/usr/lib/postfix/", "/usr/lib/dovecot/")
CLASSIC_EXE_FILES = ("/usr/sbin/postfix", "/usr/sbin/dovecot")

MESSAGE_ID_RE = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)
HEADER_READ = 32 * 1024
LATENCY_POLL = 0.002
LATENCY_TIMEOUT = 30.0
DELIVERY_TIMEOUT = 600.0
STARTUP_TIMEOUT = 30.0


# --- memory -----------------------------------------------------------------


@dataclass
class Memory:
    """Summed over a set of processes, in KiB."""

    processes: int = 0
    rss_kib: int = 0
    pss_kib: int = 0
    names: Counter[str] = field(default_factory=Counter)

    def __str__(self) -> str:
        names = " ".join(f"{n}x{c}" if c > 1 else n for n, c in sorted(self.names.items()))
        return (
            f"processes={self.processes} rss_kib={self.rss_kib} pss_kib={self.pss_kib} "
            f"names={names}"
        )


def _proc_field_kib(path: str, key: str) -> int:
    """Value of 'Key:   123 kB' in a /proc file, or 0 if absent/unreadable."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _proc_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def memory_of(pids: list[int]) -> Memory:
    mem = Memory()
    for pid in pids:
        rss = _proc_field_kib(f"/proc/{pid}/status", "VmRSS")
        if rss == 0:  # gone, or a kernel thread
            continue
        mem.processes += 1
        mem.rss_kib += rss
        mem.pss_kib += _proc_field_kib(f"/proc/{pid}/smaps_rollup", "Pss")
        mem.names[_proc_name(pid)] += 1
    return mem


def _all_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def classic_pids() -> list[int]:
    """Processes of this Postfix + Dovecot instance (see CLASSIC_MASTER_PID_FILES)."""
    pids = []
    for pid_file in CLASSIC_MASTER_PID_FILES:
        try:
            master = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            log.warning("no master pid in %s", pid_file)
            continue
        for pid in process_tree(master):
            try:
                exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
            except OSError:
                continue
            if exe.startswith(CLASSIC_EXE_DIRS) or exe in CLASSIC_EXE_FILES:
                pids.append(pid)
    return pids


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


# --- Maildir ----------------------------------------------------------------


def maildir_keys(maildir: Path) -> set[str]:
    """Unique names of the messages in new/ and cur/ (the part before ':', which stays
    the same when a message moves from new/ to cur/)."""
    keys = set()
    for sub in ("new", "cur"):
        with contextlib.suppress(FileNotFoundError), os.scandir(maildir / sub) as it:
            for entry in it:
                keys.add(entry.name.split(":", 1)[0])
    return keys


def maildir_message_ids(maildir: Path, keys: set[str]) -> set[str]:
    """Message-IDs of the Maildir messages whose key is in `keys`."""
    ids = set()
    for sub in ("new", "cur"):
        with contextlib.suppress(FileNotFoundError), os.scandir(maildir / sub) as it:
            for entry in it:
                if entry.name.split(":", 1)[0] not in keys:
                    continue
                try:
                    with open(entry.path, "rb") as f:
                        head = f.read(HEADER_READ)
                except FileNotFoundError:  # moved from new/ to cur/ meanwhile
                    continue
                head = head.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
                if match := MESSAGE_ID_RE.search(head):
                    ids.add(match.group(1).decode("ascii", "replace"))
    return ids


def wait_for_messages(
    maildir: Path, before: set[str], count: int, timeout: float, interval: float = 0.02
) -> tuple[float | None, set[str]]:
    """Polls until `count` messages not in `before` are in the Maildir; returns the
    time.monotonic() when they were seen (None on timeout) and their keys."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        new = maildir_keys(maildir) - before
        if len(new) >= count:
            return now, new
        if now > deadline:
            return None, new
        time.sleep(interval)


def verify_delivery(maildir: Path, keys: set[str], result: LoadResult) -> int:
    """Number of accepted messages whose Message-ID is not among `keys`' files."""
    found = maildir_message_ids(maildir, keys)
    missing = set(result.message_ids) - found
    if missing:
        log.error("missing=%d example=%s", len(missing), next(iter(missing)))
    return len(missing)


# --- one-message latency ------------------------------------------------------


async def one_message_latencies(
    port: int, samples: int, size: int, is_visible: Callable[[str], bool]
) -> list[float]:
    """Sends `samples` messages one at a time over one connection; for each, the time
    from MAIL FROM until is_visible(message_id) is true. is_visible blocks, which is
    fine: nothing else runs on this event loop meanwhile."""
    factory = MessageFactory(size, MAIL_FROM, USER)
    client = await SMTPClient.connect("127.0.0.1", port)
    latencies = []
    try:
        for number in range(samples):
            message_id, payload = factory.build(number)
            begun = time.monotonic()
            code = await client.send_message(MAIL_FROM, USER, payload)
            if code != 250:
                log.error("latency sample refused code=%d", code)
                continue
            while not is_visible(message_id):
                if time.monotonic() - begun > LATENCY_TIMEOUT:
                    log.error("latency sample not visible message_id=%s", message_id)
                    break
                await asyncio.sleep(LATENCY_POLL)
            else:
                latencies.append(time.monotonic() - begun)
            await asyncio.sleep(0.2)
    finally:
        await client.quit()
    if latencies:
        log.info(
            "one-message latency samples=%d/%d min_ms=%.1f median_ms=%.1f max_ms=%.1f",
            len(latencies),
            samples,
            min(latencies) * 1000,
            statistics.median(latencies) * 1000,
            max(latencies) * 1000,
        )
    return latencies


class ImapProbe:
    """Is a Message-ID in INBOX yet? One IMAP login, a SELECT and a UID SEARCH per poll."""

    def __init__(self, port: int) -> None:
        self.imap = imaplib.IMAP4("127.0.0.1", port)
        self.imap.login(USER, PASSWORD)

    def __call__(self, message_id: str) -> bool:
        self.imap.select("INBOX")
        typ, data = self.imap.uid("SEARCH", "HEADER", "Message-ID", f'"{message_id}"')
        return typ == "OK" and bool(data and data[0] and data[0].split())

    def close(self) -> None:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            self.imap.logout()


class MaildirProbe:
    """Is a Message-ID in new/ or cur/ yet? Reads only files it has not seen."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir
        self.seen: set[str] = set()
        self.ids: set[str] = set()

    def __call__(self, message_id: str) -> bool:
        keys = maildir_keys(self.maildir) - self.seen
        self.ids |= maildir_message_ids(self.maildir, keys)
        self.seen |= keys
        return message_id in self.ids


# --- results ----------------------------------------------------------------


@dataclass
class StackReport:
    name: str
    runs: list[LoadResult] = field(default_factory=list)
    e2e_rates: list[float] = field(default_factory=list)
    missing: int = 0
    latencies: list[float] = field(default_factory=list)
    memory_start: Memory = field(default_factory=Memory)
    memory_load: Memory = field(default_factory=Memory)

    def median(self, value: Callable[[LoadResult], float]) -> float:
        return statistics.median(value(r) for r in self.runs) if self.runs else 0.0

    def figures(self) -> dict[str, float]:
        messages = sum(r.attempted for r in self.runs) or 1
        return {
            "accept_rate": self.median(lambda r: r.rate),
            "accept_p50_ms": self.median(lambda r: r.p50) * 1000,
            "accept_p99_ms": self.median(lambda r: r.p99) * 1000,
            "e2e_rate": statistics.median(self.e2e_rates) if self.e2e_rates else 0.0,
            "one_message_ms": statistics.median(self.latencies) * 1000 if self.latencies else 0,
            "rss_start_mib": self.memory_start.rss_kib / 1024,
            "rss_load_mib": self.memory_load.rss_kib / 1024,
            "pss_start_mib": self.memory_start.pss_kib / 1024,
            "pss_load_mib": self.memory_load.pss_kib / 1024,
            "processes_start": self.memory_start.processes,
            "processes_load": self.memory_load.processes,
            "non_250": sum(r.non_250 for r in self.runs),
            "errors": sum(r.errors for r in self.runs),
            "missing": self.missing,
            "client_cpu_us_per_msg": sum(r.client_cpu for r in self.runs) / messages * 1e6,
        }


def log_run(name: str, number: int, result: LoadResult, e2e_rate: float | None) -> None:
    log.info(
        "run stack=%s run=%d accepted=%d/%d rate=%.1f p50_ms=%.1f p99_ms=%.1f non_250=%d "
        "errors=%d e2e_rate=%s client_cpu_s=%.2f",
        name,
        number,
        result.accepted,
        result.attempted,
        result.rate,
        result.p50 * 1000,
        result.p99 * 1000,
        result.non_250,
        result.errors,
        f"{e2e_rate:.1f}" if e2e_rate is not None else "-",
        result.client_cpu,
    )


# --- the classic stack ------------------------------------------------------------


class ClassicStack:
    def __init__(self, root: Path) -> None:
        self.maildir = root / "mail" / DOMAIN / "user"

    @staticmethod
    def check_configured() -> None:
        try:
            configured = CLASSIC_MARKER in Path("/etc/postfix/main.cf").read_text()
        except OSError:
            configured = False
        if not configured or not shutil.which("doveadm"):
            raise RuntimeError(
                f"the classic stack is not set up: run 'sudo {SETUP_SH}' first "
                "(or pass --skip-classic)"
            )
        if os.geteuid() != 0:
            raise RuntimeError("the classic side needs root (restart, doveadm, /proc/PID/exe)")

    @staticmethod
    def restart() -> None:
        log.info("restarting postfix and dovecot")
        subprocess.run(["bash", str(SETUP_SH), "restart"], check=True, timeout=120)

    @staticmethod
    def expunge() -> None:
        subprocess.run(
            ["doveadm", "expunge", "-u", USER, "mailbox", "INBOX", "all"], check=True, timeout=120
        )

    @staticmethod
    def wait_queue_empty(timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["postqueue", "-j"], capture_output=True, text=True, timeout=30
            ).stdout
            if not out.strip():
                return
            time.sleep(0.2)
        log.warning("postfix queue not empty after %ss", timeout)


def bench_classic(args: argparse.Namespace) -> StackReport:
    stack = ClassicStack(args.classic_root)
    stack.check_configured()
    report = StackReport("classic")
    stack.restart()
    time.sleep(args.settle)
    report.memory_start = memory_of(classic_pids())
    log.info("idle after start: %s", report.memory_start)

    stack.expunge()
    probe = ImapProbe(CLASSIC_IMAP_PORT)
    try:
        report.latencies = asyncio.run(
            one_message_latencies(CLASSIC_SMTP_PORT, args.latency_samples, args.size, probe)
        )
    finally:
        probe.close()
    stack.wait_queue_empty()
    stack.expunge()

    for number in range(1, args.runs + 1):
        os.sync()
        before = maildir_keys(stack.maildir)
        result = asyncio.run(run_load(load_config(args, CLASSIC_SMTP_PORT)))
        delivered_at, keys = wait_for_messages(
            stack.maildir, before, result.accepted, DELIVERY_TIMEOUT
        )
        e2e_rate = None
        if delivered_at is None:
            log.error("run=%d only %d of %d delivered", number, len(keys), result.accepted)
        else:
            e2e_rate = result.accepted / (delivered_at - result.started)
            report.e2e_rates.append(e2e_rate)
        report.missing += verify_delivery(stack.maildir, keys, result)
        report.runs.append(result)
        log_run("classic", number, result, e2e_rate)
        stack.wait_queue_empty()
        stack.expunge()

    time.sleep(args.settle)
    report.memory_load = memory_of(classic_pids())
    log.info("idle after load: %s", report.memory_load)
    return report


# --- pimail -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_banner(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no 220 banner on port {port} after {timeout}s")


class PimailServer:
    """One `pimail serve` with a fresh data directory under `workdir` (or, with
    standin=True, aiosmtpd's Maildir handler in its place, to test this harness)."""

    def __init__(self, workdir: Path, pimail: Path, *, standin: bool = False) -> None:
        self.workdir = workdir
        self.pimail = pimail
        self.standin = standin
        self.port = free_port()
        self.data_dir = workdir / "data"
        self.config = workdir / "pimail.toml"
        self.maildir = self.data_dir / "mail" / DOMAIN / "user"
        self.proc: subprocess.Popen[bytes] | None = None

    def _cli(self, *words: str, stdin: bytes | None = None) -> None:
        command = [str(self.pimail), "--config", str(self.config), *words]
        done = subprocess.run(command, input=stdin, capture_output=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {done.stderr.decode(errors='replace')}")

    def start(self) -> None:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.data_dir.mkdir(parents=True)
        # A JSON string is a valid TOML basic string.
        self.config.write_text(
            f"data_dir = {json.dumps(str(self.data_dir))}\n"
            f'[smtp]\nlisten = ["127.0.0.1:{self.port}"]\n'
            # Only SMTP is measured: the other services stay off, so nothing
            # collides with a pimail already running on the default ports.
            "[imap]\nlisten = []\nlisten_tls = []\n[pop3]\nlisten = []\nlisten_tls = []\n"
            "[web]\nlisten_http = []\nlisten_https = []\n"
        )
        if self.standin:
            self.maildir.parent.mkdir(parents=True)  # aiosmtpd makes only the leaf
            command = [
                str(self.pimail.parent / "python"),
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                f"127.0.0.1:{self.port}",
                "-c",
                "aiosmtpd.handlers.Mailbox",
                str(self.maildir),
            ]
        else:
            self._cli("domain", "add", DOMAIN)
            self._cli("user", "add", USER, stdin=f"{PASSWORD}\n".encode())
            command = [str(self.pimail), "--config", str(self.config), "serve"]
        with open(self.workdir / "serve.log", "wb") as out:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        try:
            wait_for_banner(self.port, self.proc, STARTUP_TIMEOUT)
        except RuntimeError:
            self.stop()
            tail = (self.workdir / "serve.log").read_text(errors="replace")[-2000:]
            log.error("pimail did not start; end of %s:\n%s", self.workdir / "serve.log", tail)
            raise
        log.info("pimail pid=%d port=%d data_dir=%s", self.proc.pid, self.port, self.data_dir)

    def memory(self) -> Memory:
        assert self.proc is not None
        return memory_of(process_tree(self.proc.pid))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            log.warning("pimail pid=%d ignored SIGTERM; killing it", self.proc.pid)
            self.proc.kill()
            self.proc.wait(timeout=15)


def bench_pimail(args: argparse.Namespace) -> StackReport:
    name = "pimail (stand-in)" if args.pimail_standin else "pimail"
    report = StackReport(name)
    for number in range(1, args.runs + 1):
        server = PimailServer(
            args.pimail_root / f"run-{number}", args.pimail, standin=args.pimail_standin
        )
        server.start()
        try:
            if number == 1:
                time.sleep(args.settle)
                report.memory_start = server.memory()
                log.info("idle after start: %s", report.memory_start)
                report.latencies = asyncio.run(
                    one_message_latencies(
                        server.port, args.latency_samples, args.size, MaildirProbe(server.maildir)
                    )
                )
            os.sync()
            before = maildir_keys(server.maildir)
            result = asyncio.run(run_load(load_config(args, server.port)))
            # 250 means the file is in new/ already: count at once, do not wait.
            keys = maildir_keys(server.maildir) - before
            if len(keys) < result.accepted:
                log.error(
                    "run=%d only %d of %d files present after 250",
                    number,
                    len(keys),
                    result.accepted,
                )
            report.e2e_rates.append(result.rate)
            report.missing += verify_delivery(server.maildir, keys, result)
            report.runs.append(result)
            log_run(name, number, result, result.rate)
            if number == args.runs:
                time.sleep(args.settle)
                report.memory_load = server.memory()
                log.info("idle after load: %s", report.memory_load)
        finally:
            server.stop()
        if not args.keep:
            shutil.rmtree(server.workdir, ignore_errors=True)
    return report


# --- output -------------------------------------------------------------------

ROWS = (
    ("accept_rate", "accept rate, msg/s (median of runs)", "{:.1f}"),
    ("accept_p50_ms", "accept latency p50, ms", "{:.1f}"),
    ("accept_p99_ms", "accept latency p99, ms", "{:.1f}"),
    ("e2e_rate", "end-to-end rate, msg/s (median)", "{:.1f}"),
    ("one_message_ms", "one-message latency, ms (median)", "{:.1f}"),
    ("rss_start_mib", "idle RSS after start, MiB", "{:.1f}"),
    ("rss_load_mib", "idle RSS after load, MiB", "{:.1f}"),
    ("pss_start_mib", "idle PSS after start, MiB", "{:.1f}"),
    ("pss_load_mib", "idle PSS after load, MiB", "{:.1f}"),
    ("processes_start", "processes after start", "{:.0f}"),
    ("processes_load", "processes after load", "{:.0f}"),
    ("non_250", "non-250 replies (all runs)", "{:.0f}"),
    ("errors", "connection errors (all runs)", "{:.0f}"),
    ("missing", "accepted but not in Maildir", "{:.0f}"),
    ("client_cpu_us_per_msg", "load client CPU, us/msg", "{:.0f}"),
)


def render_table(
    args: argparse.Namespace, classic: StackReport | None, pimail: StackReport | None
) -> str:
    c = classic.figures() if classic else {}
    p = pimail.figures() if pimail else {}
    head = (
        f"SMTP accept benchmark: {args.messages} x {args.size // 1024} KB, "
        f"{args.concurrency} connections, {args.runs} run(s); "
        f"one-message latency over {args.latency_samples} samples"
    )
    pimail_name = pimail.name if pimail else "pimail"
    lines = [head, "", f"{'':38} {'classic':>10} {pimail_name:>18} {'pimail/classic':>15}"]
    for key, label, fmt in ROWS:
        cv = fmt.format(c[key]) if key in c else "-"
        pv = fmt.format(p[key]) if key in p else "-"
        ratio = f"{p[key] / c[key]:.2f}" if key in c and key in p and c[key] else "-"
        lines.append(f"{label:38} {cv:>10} {pv:>18} {ratio:>15}")
    lines += [
        "",
        "classic end-to-end: first MAIL FROM until all files are in Dovecot's Maildir; "
        "one-message: until IMAP finds it.",
        "pimail end-to-end = accept rate (250 only after the Maildir file is written); "
        "one-message: until the file is in new/.",
    ]
    for report in (classic, pimail):
        if report and report.memory_load.processes:
            lines.append(f"{report.name} after load: {report.memory_load}")
    return "\n".join(lines)


def run_bench(
    bench: Callable[[argparse.Namespace], StackReport], args: argparse.Namespace
) -> StackReport | None:
    """Runs one side; a side that fails is logged and left out of the table."""
    try:
        return bench(args)
    except RuntimeError as e:
        log.error("%s failed: %s", bench.__name__, e)
    except (OSError, subprocess.SubprocessError, imaplib.IMAP4.error):
        log.exception("%s failed", bench.__name__)
    return None


def load_config(args: argparse.Namespace, port: int) -> LoadConfig:
    return LoadConfig(
        host="127.0.0.1",
        port=port,
        messages=args.messages,
        size=args.size,
        concurrency=args.concurrency,
        mail_from=MAIL_FROM,
        rcpt_to=USER,
        run_timeout=args.run_timeout,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-classic", action="store_true")
    parser.add_argument("--skip-pimail", action="store_true")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=20 * 1024, help="bytes per message")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-samples", type=int, default=20)
    parser.add_argument(
        "--settle", type=float, default=5.0, help="idle seconds before measuring memory"
    )
    parser.add_argument("--run-timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument(
        "--classic-root",
        type=Path,
        default=Path("/var/tmp/pimail-bench-classic"),
        help="setup.sh's --root (its Maildirs are under ROOT/mail)",
    )
    parser.add_argument(
        "--pimail-root",
        type=Path,
        default=Path("/var/tmp/pimail-bench-pimail"),
        help="where pimail's fresh data directories go (keep it on the classic's disk)",
    )
    parser.add_argument("--pimail", type=Path, default=REPO / ".venv" / "bin" / "pimail")
    parser.add_argument(
        "--pimail-standin",
        action="store_true",
        help="test the harness with aiosmtpd's Maildir handler instead of pimail",
    )
    parser.add_argument("--keep", action="store_true", help="keep pimail's data directories")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.runs < 1 or args.latency_samples < 1:
        parser.error("--messages, --runs and --latency-samples must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if not args.skip_classic and not args.skip_pimail:
        args.pimail_root.mkdir(parents=True, exist_ok=True)
        args.classic_root.mkdir(parents=True, exist_ok=True)
        if os.stat(args.pimail_root).st_dev != os.stat(args.classic_root).st_dev:
            log.warning("pimail and classic Maildirs are on different filesystems")
    classic = None if args.skip_classic else run_bench(bench_classic, args)
    pimail = None if args.skip_pimail else run_bench(bench_pimail, args)
    print(render_table(args, classic, pimail))
    if args.json:
        reports = {
            r.name: {**r.figures(), "runs": [x.summary() for x in r.runs]}
            for r in (classic, pimail)
            if r
        }
        args.json.write_text(json.dumps({"settings": vars(args), **reports}, default=str))
    sides = [(args.skip_classic, classic), (args.skip_pimail, pimail)]
    failed = [
        report
        for skipped, report in sides
        if not skipped and (report is None or report.missing or report.figures()["non_250"])
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
