"""Outbound queue benchmark: pimail beside Postfix 3.7 + OpenDKIM, in one invocation.

Both stacks take mail on a submission port, queue it durably, sign it (DKIM) and
deliver it over SMTP to the same receiving MTA on loopback: a small asyncio sink,
in a process of its own, that accepts everything on 127.0.0.11..18 (one address per
destination domain d1..d8.bench.test, one port) and records, for every message, its
arrival time and its X-Bench-Id header. pimail finds the sink through MX and A
records served by a DNS server in this process (tests/dnsserver.py); Postfix
through transport_maps (no DNS). The sink offers PIPELINING, no STARTTLS: both
stacks deliver in the clear.

Figures (see bench/README.md), for each stack, measured side by side in one run:

- throughput: --messages (2,000) x --size (20 KB), round-robin over the 8 domains,
  submitted over --concurrency (8) connections (STARTTLS; AUTH PLAIN for pimail;
  commands pipelined); delivery rate at the sink (first to last arrival), the
  end-to-end rate (first submission to last arrival) and the submission rate;
  median of --runs (3) runs, the stacks taking turns;
- drain: the same messages queued while the sink is down (connections refused, so
  everything is deferred), then the sink is up and the queue released (`pimail
  queue retry`; `postqueue -f`); messages/s from the first to the last arrival;
- latency: --latency-messages (200) submitted one at a time at --latency-rate
  (20/s) over one connection; time from the submission's 250 to arrival at the
  sink, p50/p99;
- queue memory: a fresh pimail / a restarted Postfix, --memory-messages (10,000) x
  2 KB queued while the sink is down; RSS/PSS before and with them all deferred,
  the queue's size on disk.

Postfix is the instance of bench/classic/outbound_setup.sh (its own configuration
and queue; this script configures it with the ports it picks, restarts and stops
it). pimail is .venv/bin/pimail with fresh data directories under --root.

Usage (root, from the repository; the venv has dnspython for the DNS server):
  bench/classic/outbound_setup.sh install      # once: postfix, opendkim (apt)
  .venv/bin/python bench/outbound.py           # or: ./build.sh bench queue
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import queue
import random
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

from load import SMTPClient, SMTPProtocolError, dot_stuff, make_body_lines, percentile
from smtp_accept import Memory, memory_of, process_tree, wait_for_banner

log = logging.getLogger("bench.outbound")

REPO = Path(__file__).resolve().parents[1]
SETUP_SH = REPO / "bench" / "classic" / "outbound_setup.sh"
DOMAINS = [f"d{n}.bench.test" for n in range(1, 9)]
SINK_HOSTS = [f"127.0.0.1{n}" for n in range(1, 9)]
SENDER_DOMAIN = "sender.test"
USER = f"user@{SENDER_DOMAIN}"
PASSWORD = "secret-pw"
HOSTNAME = "bench-sender.test"

POSTFIX_CONFIG = Path("/etc/postfix-bench-outbound")
POSTFIX_QUEUE = Path("/var/spool/postfix-bench-outbound")
POSTFIX_LOG = Path("/var/log/postfix-bench-outbound.log")
OPENDKIM_PID = Path("/run/opendkim-bench-outbound/opendkim.pid")
POSTFIX_EXE_DIRS = ("/usr/lib/postfix/",)
POSTFIX_EXE_FILES = ("/usr/sbin/postfix", "/usr/sbin/opendkim")
POSTFIX_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

BENCH_ID_RE = re.compile(rb"^X-Bench-Id:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
DKIM_RE = re.compile(rb"^DKIM-Signature:", re.IGNORECASE | re.MULTILINE)
STARTUP_TIMEOUT = 30.0


# --- the receiving MTA (runs in a child process: `outbound.py --sink-child`) ------------


class _SinkSession(asyncio.Protocol):
    """One SMTP session: accepts every command and message, pipelining allowed."""

    def __init__(self, sink: _SinkServer) -> None:
        self.sink = sink
        self.buf = bytearray()
        self.in_data = False
        self.scanned = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.sink.sessions.add(self)
        self.sink.emit(f"C {time.monotonic():.6f}\n")
        transport.write(b"220 sink.bench.test ESMTP\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink.sessions.discard(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        while self.buf:
            if self.in_data:
                if self.buf.startswith(b".\r\n"):  # an empty message
                    end, skip = -2, 3
                else:
                    end = self.buf.find(b"\r\n.\r\n", max(self.scanned - 4, 0))
                    skip = 5
                if end == -1:
                    self.scanned = len(self.buf)
                    return
                message = bytes(self.buf[: end + 2])
                del self.buf[: end + skip]
                self.in_data = False
                self.scanned = 0
                self.sink.record(message)
                self.transport.write(b"250 2.0.0 Ok\r\n")
                continue
            end = self.buf.find(b"\r\n")
            if end == -1:
                if len(self.buf) > 4096:
                    self.transport.abort()
                return
            line = bytes(self.buf[:end])
            del self.buf[: end + 2]
            self.command(line)

    def command(self, line: bytes) -> None:
        assert self.transport is not None
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.transport.write(
                b"250-sink.bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                b"250-SIZE 104857600\r\n250 ENHANCEDSTATUSCODES\r\n"
            )
        elif verb in (b"HELO", b"RSET", b"NOOP"):
            self.transport.write(b"250 2.0.0 Ok\r\n")
        elif verb == b"MAIL":
            self.transport.write(b"250 2.1.0 Ok\r\n")
        elif verb == b"RCPT":
            self.transport.write(b"250 2.1.5 Ok\r\n")
        elif verb == b"DATA":
            self.in_data = True
            self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        elif verb == b"QUIT":
            self.transport.write(b"221 2.0.0 Bye\r\n")
            self.transport.close()
        else:
            self.transport.write(b"502 5.5.2 Command not implemented\r\n")


class _SinkServer:
    """Listens on `hosts`:`port` while open; reports on stdout, one line each:
    `C <monotonic>` a connection, `M <token> <monotonic> <DKIM signatures>` a
    message, `OPEN`/`CLOSED` acknowledging the commands `open`/`close` on stdin."""

    def __init__(self, port: int, hosts: list[str]) -> None:
        self.port = port
        self.hosts = hosts
        self.servers: list[asyncio.Server] = []
        self.sessions: set[_SinkSession] = set()
        self.pending: list[str] = []
        self.flush_scheduled = False

    def emit(self, line: str) -> None:
        self.pending.append(line)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_later(0.01, self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        sys.stdout.write("".join(self.pending))
        sys.stdout.flush()
        self.pending.clear()

    def record(self, message: bytes) -> None:
        now = time.monotonic()
        head_end = message.find(b"\r\n\r\n", 0, 256 * 1024)
        head = message[: head_end if head_end >= 0 else 256 * 1024]
        match = BENCH_ID_RE.search(head)
        token = match.group(1).decode("ascii", "replace") if match else "-"
        self.emit(f"M {token} {now:.6f} {len(DKIM_RE.findall(head))}\n")

    async def open(self) -> None:
        if self.servers:
            return
        loop = asyncio.get_running_loop()
        for host in self.hosts:
            self.servers.append(
                await loop.create_server(
                    lambda: _SinkSession(self), host, self.port, reuse_address=True, backlog=512
                )
            )

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.abort()
        for server in self.servers:
            await server.wait_closed()
        self.servers = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            word = line.decode().strip()
            if word == "open":
                await self.open()
                self.emit("OPEN\n")
            elif word == "close":
                await self.close()
                self.emit("CLOSED\n")
            elif word == "exit":
                break
        await self.close()
        self.flush()


def sink_child(port: int, hosts: list[str]) -> int:
    asyncio.run(_SinkServer(port, hosts).run())
    return 0


@dataclass
class Arrival:
    at: float  # time.monotonic() in the sink (CLOCK_MONOTONIC is system-wide)
    dkim: int


class Sink:
    """The parent's handle on the sink process."""

    def __init__(self, port: int, hosts: list[str]) -> None:
        self.port = port
        self.arrivals: dict[str, Arrival] = {}
        self.duplicates = 0
        self.unknown = 0
        self.connections: list[float] = []
        self._cond = threading.Lock()
        self._acks: queue.Queue[str] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--sink-child", str(port), *hosts],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True, name="sink-reader")
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            parts = raw.decode("ascii", "replace").split()
            if not parts:
                continue
            with self._cond:
                if parts[0] == "M" and len(parts) == 4:
                    token, at, dkim = parts[1], float(parts[2]), int(parts[3])
                    if token == "-":
                        self.unknown += 1
                    elif token in self.arrivals:
                        self.duplicates += 1
                    else:
                        self.arrivals[token] = Arrival(at, dkim)
                elif parts[0] == "C":
                    self.connections.append(float(parts[1]))
                else:
                    self._acks.put(parts[0])
        self._acks.put("EOF")

    def _command(self, word: str, ack: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word.encode() + b"\n")
        self.proc.stdin.flush()
        got = self._acks.get(timeout=30)
        if got != ack:
            raise RuntimeError(f"sink answered {got!r} to {word!r}")

    def open(self) -> None:
        self._command("open", "OPEN")

    def close(self) -> None:
        """Stop listening: connections to the sink are refused until open()."""
        self._command("close", "CLOSED")

    def wait(self, tokens: Iterable[str], timeout: float) -> dict[str, Arrival]:
        """The arrivals of `tokens`, once all have arrived or after `timeout` s.
        Polls: arrival times are the sink's, so the poll interval costs no accuracy."""
        wanted = list(tokens)
        missing = set(wanted)
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                missing = {t for t in missing if t not in self.arrivals}
                if not missing or time.monotonic() > deadline:
                    return {t: self.arrivals[t] for t in wanted if t in self.arrivals}
            time.sleep(0.05)

    def connections_between(self, start: float, end: float) -> int:
        with self._cond:
            return sum(1 for t in self.connections if start <= t <= end)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"exit\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- the messages and the submission client -------------------------------------------


class Messages:
    """20 KB (or `size`) messages from USER, each with a unique X-Bench-Id."""

    def __init__(self, size: int, variants: int = 16, seed: int = 6409) -> None:
        rng = random.Random(seed)
        body_size = max(size - 420, 64)
        self.bodies = [dot_stuff(make_body_lines(rng, body_size)) for _ in range(variants)]

    @staticmethod
    def recipient(number: int) -> str:
        return f"rcpt{number % 97}@{DOMAINS[number % len(DOMAINS)]}"

    def payload(self, token: str, number: int) -> bytes:
        head = (
            f"From: Bench Sender <{USER}>\r\n"
            f"To: <{self.recipient(number)}>\r\n"
            f"Subject: Outbound benchmark {token}\r\n"
            f"Date: {formatdate()}\r\n"
            f"Message-ID: <{token}@{SENDER_DOMAIN}>\r\n"
            f"X-Bench-Id: {token}\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "Content-Transfer-Encoding: 7bit\r\n"
            "\r\n"
        ).encode("ascii")
        return head + self.bodies[number % len(self.bodies)] + b".\r\n"


def _client_tls() -> ssl.SSLContext:
    # Both servers have self-signed certificates; the benchmark does not verify them.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class SubmitClient(SMTPClient):
    """load.py's client with STARTTLS, AUTH PLAIN and pipelined MAIL/RCPT/DATA."""

    @classmethod
    async def open(
        cls, port: int, *, auth: tuple[str, str] | None, timeout: float = 60.0
    ) -> SubmitClient:
        client = await cls.connect("127.0.0.1", port, helo_name="client.bench.test",
                                   timeout=timeout)  # fmt: skip
        assert isinstance(client, SubmitClient)
        try:
            code, text = await client.command("STARTTLS")
            if code != 220:
                raise SMTPProtocolError(f"STARTTLS refused: {code} {text!r}")
            await client._writer.start_tls(_client_tls())
            code, text = await client.command("EHLO client.bench.test")
            if code != 250:
                raise SMTPProtocolError(f"EHLO after STARTTLS refused: {code} {text!r}")
            if auth is not None:
                secret = base64.b64encode(f"\0{auth[0]}\0{auth[1]}".encode()).decode()
                code, text = await client.command(f"AUTH PLAIN {secret}")
                if code != 235:
                    raise SMTPProtocolError(f"AUTH refused: {code} {text!r}")
        except BaseException:
            client.close()
            raise
        return client

    async def send_pipelined(self, mail_from: str, rcpt_to: str, payload: bytes) -> int:
        """MAIL, RCPT and DATA in one write (RFC 2920), then the data; returns the
        code that ended the transaction (250 on success)."""
        self._writer.write(f"MAIL FROM:<{mail_from}>\r\nRCPT TO:<{rcpt_to}>\r\nDATA\r\n".encode())
        mail, _ = await self.reply()
        rcpt, _ = await self.reply()
        data, _ = await self.reply()
        if data != 354:
            await self.command("RSET")
            return next(c for c in (mail, rcpt, data) if c not in (250, 251))
        self._writer.write(payload)
        await self._writer.drain()
        code, _ = await self.reply()
        if mail != 250 or rcpt not in (250, 251):
            return mail if mail != 250 else rcpt
        return code


@dataclass
class Submitted:
    """What a submission run did; times are time.monotonic()."""

    accepted: dict[str, float] = field(default_factory=dict)  # token -> time of the 250
    codes: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    started: float = float("inf")
    finished: float = 0.0

    @property
    def rate(self) -> float:
        elapsed = self.finished - self.started
        return len(self.accepted) / elapsed if elapsed > 0 else 0.0

    @property
    def refused(self) -> int:
        return sum(n for code, n in self.codes.items() if code != 250)


async def log_in_and_out(port: int, auth: tuple[str, str] | None, connections: int) -> None:
    """Opens `connections` submission sessions (STARTTLS, AUTH), sends nothing, quits:
    what a server allocates for its clients is then in the baseline."""
    clients = await asyncio.gather(
        *(SubmitClient.open(port, auth=auth) for _ in range(connections))
    )
    await asyncio.gather(*(c.quit() for c in clients))


async def submit(
    port: int,
    auth: tuple[str, str] | None,
    messages: Messages,
    tokens: list[str],
    *,
    concurrency: int,
    interval: float = 0.0,
    timeout: float = 600.0,
) -> Submitted:
    """Submits one message per token (message number i goes to recipient(i)) over
    `concurrency` connections; with `interval`, one at a time on that schedule."""
    result = Submitted()
    numbers = iter(range(len(tokens)))
    begun = time.monotonic()

    async def worker() -> None:
        client: SubmitClient | None = None
        failures = 0
        try:
            for number in numbers:
                if interval:
                    await asyncio.sleep(max(0.0, begun + number * interval - time.monotonic()))
                token = tokens[number]
                while client is None:
                    try:
                        client = await SubmitClient.open(port, auth=auth)
                    except (OSError, TimeoutError, SMTPProtocolError) as e:
                        result.errors += 1
                        failures += 1
                        log.warning("submission connect failed port=%d error=%r", port, e)
                        if failures >= 5:
                            return
                        await asyncio.sleep(0.5)
                payload = messages.payload(token, number)
                started = time.monotonic()
                result.started = min(result.started, started)
                try:
                    code = await client.send_pipelined(USER, messages.recipient(number), payload)
                except (OSError, TimeoutError, SMTPProtocolError) as e:
                    result.errors += 1
                    log.warning("submission failed token=%s error=%r", token, e)
                    client.close()
                    client = None
                    continue
                now = time.monotonic()
                result.finished = max(result.finished, now)
                result.codes[code] += 1
                if code == 250:
                    result.accepted[token] = now
                else:
                    log.debug("submission refused token=%s code=%d", token, code)
        finally:
            if client is not None:
                await client.quit()

    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(worker() for _ in range(concurrency)))
    except TimeoutError:
        log.error("submission stopped after %ss", timeout)
    if result.refused:
        log.warning("submission replies %s", dict(result.codes))
    return result


# --- helpers ------------------------------------------------------------------------


_handed_out: set[int] = set()


def free_port() -> int:
    """A free loopback port below Linux's ephemeral range (as tests/conftest.py)."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 32000)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port")


def free_port_on(hosts: list[str]) -> int:
    """A port free on all of `hosts` (the sink listens on each)."""
    for _ in range(100):
        port = free_port()
        try:
            for host in hosts:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on all sink addresses")


@dataclass
class DiskUse:
    files: int = 0
    apparent: int = 0
    allocated: int = 0

    def add(self, other: DiskUse) -> DiskUse:
        return DiskUse(
            self.files + other.files,
            self.apparent + other.apparent,
            self.allocated + other.allocated,
        )


def disk_use(*paths: Path) -> DiskUse:
    """Files, bytes and allocated bytes (st_blocks) under `paths`, each inode once."""
    use = DiskUse()
    seen: set[tuple[int, int]] = set()
    todo = [p for p in paths if p.exists()]
    while todo:
        path = todo.pop()
        if path.is_file():
            entries = [path]
        else:
            entries = []
            with os.scandir(path) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        entries.append(Path(entry.path))
        for file in entries:
            try:
                st = file.stat()
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            use.files += 1
            use.apparent += st.st_size
            use.allocated += st.st_blocks * 512
    return use


def _proc_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of `pids` and of their reaped children (Postfix's master
    reaps every daemon it forked, so what exited in between still counts)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / _CLOCK_TICKS


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            log.error("timed out after %.0fs waiting for %s", timeout, what)
            return False
        time.sleep(0.1)
    return True


class LogWatch:
    """Lines of a log file written since `mark()` that match `pattern`."""

    def __init__(self, path: Path, pattern: str) -> None:
        self.path = path
        self.pattern = re.compile(pattern)
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def problems(self) -> list[str]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode("utf-8", "replace")
        lines, traceback = [], False
        for line in text.splitlines():
            if line.startswith("Traceback "):
                traceback = True
            if traceback or self.pattern.search(line):
                lines.append(line)
            if traceback and line and not line.startswith((" ", "Traceback")):
                traceback = False
        return lines


# --- the two stacks -----------------------------------------------------------------


class Stack:
    name = ""
    auth: tuple[str, str] | None = None
    submit_port = 0
    dkim_note = ""

    def queue_counts(self) -> dict[str, int]:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def queue_disk(self) -> dict[str, DiskUse]:
        raise NotImplementedError

    def problems(self) -> list[str]:
        raise NotImplementedError

    def queued(self) -> int:
        return sum(self.queue_counts().values())

    def cpu(self) -> float:
        return cpu_seconds(self.pids())


class PimailStack(Stack):
    """One `pimail serve` with a fresh data directory: submission on a free port,
    delivering to `sink_port` of the hosts its DNS server (`dns`) names."""

    dkim_note = "RSA-2048 + Ed25519, signed by the queue"

    def __init__(self, workdir: Path, pimail: Path, dns: str, sink_port: int) -> None:
        self.name = "pimail"
        self.workdir = workdir
        self.pimail = pimail
        self.data_dir = workdir / "data"
        self.config = workdir / "pimail.toml"
        self.log_file = workdir / "serve.log"
        self.dns = dns
        self.sink_port = sink_port
        self.submit_port = free_port()
        self.smtp_port = free_port()
        self.auth = (USER, PASSWORD)
        self.proc: subprocess.Popen[bytes] | None = None
        self.watch = LogWatch(self.log_file, r"\b(WARNING|ERROR|CRITICAL)\b")

    def _cli(self, *words: str, stdin: bytes | None = None) -> str:
        command = [str(self.pimail), "--config", str(self.config), *words]
        done = subprocess.run(command, input=stdin, capture_output=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode(errors="replace")

    def start(self) -> None:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.data_dir.mkdir(parents=True)
        # A JSON string is a valid TOML basic string.
        q = json.dumps
        self.config.write_text(
            f"data_dir = {q(str(self.data_dir))}\nhostname = {q(HOSTNAME)}\n"
            f"[smtp]\nlisten = [{q(f'127.0.0.1:{self.smtp_port}')}]\n"
            f"[submission]\nlisten_starttls = [{q(f'127.0.0.1:{self.submit_port}')}]\n"
            # The hourly sending limit (300) would stop the benchmark at once.
            "listen_tls = []\nmax_messages_per_hour = 100000000\n"
            "[imap]\nlisten = []\nlisten_tls = []\n[pop3]\nlisten = []\nlisten_tls = []\n"
            "[web]\nlisten_http = []\nlisten_https = []\n"
            f"[dns]\nnameservers = [{q(self.dns)}]\ntimeout = 5.0\n"
            # retry_min: deferred mail stays deferred until `pimail queue retry`;
            # poll_interval: the queue sees that retry within half a second.
            f"[outbound]\nport = {self.sink_port}\nretry_min = 3600.0\nretry_max = 14400.0\n"
            "poll_interval = 0.5\n"
        )
        self._cli("domain", "add", SENDER_DOMAIN)
        self._cli("user", "add", USER, stdin=f"{PASSWORD}\n".encode())
        self.watch.mark()
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                [str(self.pimail), "--config", str(self.config), "serve"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip
        try:
            wait_for_banner(self.submit_port, self.proc, STARTUP_TIMEOUT)
        except RuntimeError:
            self.stop()
            tail = self.log_file.read_text(errors="replace")[-2000:]
            log.error("pimail did not start; end of %s:\n%s", self.log_file, tail)
            raise
        log.info("pimail pid=%d submission=%d data_dir=%s", self.proc.pid, self.submit_port,
                 self.data_dir)  # fmt: skip

    def queue_counts(self) -> dict[str, int]:
        path = self.data_dir / "queue" / "queue.db"
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            rows = con.execute("SELECT state, COUNT(*) FROM recipients GROUP BY state")
            return {state: n for state, n in rows}
        finally:
            con.close()

    def release(self) -> None:
        self._cli("queue", "retry")

    def pids(self) -> list[int]:
        assert self.proc is not None
        return process_tree(self.proc.pid)

    def peak_rss_kib(self) -> int:
        assert self.proc is not None
        return _proc_kib(self.proc.pid, "VmHWM")

    def queue_disk(self) -> dict[str, DiskUse]:
        q = self.data_dir / "queue"
        return {
            "database": disk_use(*(q / f"queue.db{s}" for s in ("", "-wal", "-shm"))),
            "message files": disk_use(q / "messages"),
        }

    def problems(self) -> list[str]:
        return self.watch.problems()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log.warning("pimail pid=%d ignored SIGTERM; killing it", self.proc.pid)
            self.proc.kill()
            self.proc.wait(timeout=15)


class PostfixStack(Stack):
    """The instance of bench/classic/outbound_setup.sh (Postfix + OpenDKIM)."""

    dkim_note = "RSA-2048, OpenDKIM milter before the 250"

    def __init__(self, sink_port: int, dkim: bool = True) -> None:
        self.name = "postfix"
        self.dkim = dkim
        if not dkim:
            self.dkim_note = "none (--classic-no-dkim)"
        self.sink_port = sink_port
        self.submit_port = free_port()
        self.watch = LogWatch(POSTFIX_LOG, r"(warning|error|fatal|panic):")

    @staticmethod
    def check() -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the Postfix side needs root (pass --skip-classic to skip it)")
        missing = [c for c in ("postconf", "opendkim", "opendkim-genkey") if not shutil.which(c)]
        if missing:
            raise RuntimeError(
                f"{', '.join(missing)} not installed: run 'sudo {SETUP_SH} install' first "
                "(or pass --skip-classic)"
            )

    def _setup(self, *words: str) -> None:
        subprocess.run(["bash", str(SETUP_SH), *words], check=True, timeout=180)

    def start(self) -> None:
        self.check()
        self._setup(
            "--smtpd-port", str(self.submit_port), "--sink-port", str(self.sink_port),
            *([] if self.dkim else ["--no-dkim"]), "configure",
        )  # fmt: skip
        self._setup("stop")
        self.purge()
        self.watch.mark()
        self._setup("start")

    def restart(self) -> None:
        self._setup("stop")
        self._setup("start")

    def purge(self) -> None:
        # postsuper -d ALL works with the instance stopped too.
        subprocess.run(["postsuper", "-c", str(POSTFIX_CONFIG), "-d", "ALL"],
                       check=True, timeout=300, capture_output=True)  # fmt: skip

    def stop(self) -> None:
        self._setup("stop")

    def queue_counts(self) -> dict[str, int]:
        counts = {}
        for name in POSTFIX_QUEUES:
            n = 0
            for _dirpath, _dirs, files in os.walk(POSTFIX_QUEUE / name):
                n += len(files)
            counts[name] = n
        return counts

    def release(self) -> None:
        subprocess.run(["postqueue", "-c", str(POSTFIX_CONFIG), "-f"], check=True, timeout=60)

    def pids(self) -> list[int]:
        pids = []
        pid_files = [POSTFIX_QUEUE / "pid" / "master.pid", *([OPENDKIM_PID] if self.dkim else [])]
        for pid_file in pid_files:
            try:
                root = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                log.warning("no pid in %s", pid_file)
                continue
            for pid in process_tree(root):
                try:
                    exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
                except OSError:
                    continue
                if exe.startswith(POSTFIX_EXE_DIRS) or exe in POSTFIX_EXE_FILES:
                    pids.append(pid)
        return pids

    def queue_disk(self) -> dict[str, DiskUse]:
        q = POSTFIX_QUEUE
        return {
            "queue files": disk_use(*(q / name for name in POSTFIX_QUEUES)),
            "defer logs": disk_use(q / "defer"),
        }

    def problems(self) -> list[str]:
        return self.watch.problems()


# --- the measurements ---------------------------------------------------------------


@dataclass
class RunFigures:
    """One throughput or drain run of one stack."""

    messages: int = 0
    accepted: int = 0
    arrived: int = 0
    refused: int = 0
    errors: int = 0
    submit_rate: float = 0.0
    sink_rate: float = 0.0  # first to last arrival
    e2e_rate: float = 0.0  # first submission (or the release) to last arrival
    connections: int = 0
    dkim: list[int] = field(default_factory=list)
    queue_seconds: float = 0.0  # drain: submitting until all were deferred
    cpu_ms: float = 0.0  # the stack's CPU per message: throughput all of it, drain sending
    queue_cpu_ms: float = 0.0  # drain: the stack's CPU per message, submitting + deferring

    def summary(self) -> dict[str, Any]:
        return {
            "messages": self.messages, "accepted": self.accepted, "arrived": self.arrived,
            "refused": self.refused, "errors": self.errors,
            "submit_rate": round(self.submit_rate, 1), "sink_rate": round(self.sink_rate, 1),
            "e2e_rate": round(self.e2e_rate, 1), "connections": self.connections,
            "queue_seconds": round(self.queue_seconds, 2), "cpu_ms": round(self.cpu_ms, 2),
            "queue_cpu_ms": round(self.queue_cpu_ms, 2),
        }  # fmt: skip


@dataclass
class MemoryFigures:
    start: Memory = field(default_factory=Memory)  # idle after start
    before: Memory = field(default_factory=Memory)  # idle after --concurrency logins
    deferred: Memory = field(default_factory=Memory)
    count: int = 0
    queue_rate: float = 0.0
    queue_cpu_ms: float = 0.0
    disk: dict[str, DiskUse] = field(default_factory=dict)
    peak_rss_kib: int = 0


@dataclass
class StackReport:
    name: str
    dkim_note: str = ""
    throughput: list[RunFigures] = field(default_factory=list)
    drain: list[RunFigures] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    latency_lost: int = 0
    memory: MemoryFigures | None = None
    problems: list[str] = field(default_factory=list)

    @staticmethod
    def _median(runs: list[RunFigures], value: Callable[[RunFigures], float]) -> float | None:
        return statistics.median(value(r) for r in runs) if runs else None

    def figures(self) -> dict[str, float]:
        f: dict[str, float | None] = {
            "sink_rate": self._median(self.throughput, lambda r: r.sink_rate),
            "e2e_rate": self._median(self.throughput, lambda r: r.e2e_rate),
            "submit_rate": self._median(self.throughput, lambda r: r.submit_rate),
            "connections": self._median(self.throughput, lambda r: r.connections),
            "drain_rate": self._median(self.drain, lambda r: r.sink_rate),
            "drain_from_release": self._median(self.drain, lambda r: r.e2e_rate),
            "cpu_ms": self._median(self.throughput, lambda r: r.cpu_ms),
            "drain_cpu_ms": self._median(self.drain, lambda r: r.cpu_ms),
            "queue_cpu_ms": self._median(self.drain, lambda r: r.queue_cpu_ms),
        }
        if self.latencies:
            f["latency_p50_ms"] = percentile(self.latencies, 50) * 1000
            f["latency_p99_ms"] = percentile(self.latencies, 99) * 1000
            f["latency_max_ms"] = max(self.latencies) * 1000
        if self.memory is not None:
            m = self.memory
            f["rss_start_mib"] = m.start.rss_kib / 1024
            f["rss_before_mib"] = m.before.rss_kib / 1024
            f["rss_deferred_mib"] = m.deferred.rss_kib / 1024
            f["pss_start_mib"] = m.start.pss_kib / 1024
            f["pss_before_mib"] = m.before.pss_kib / 1024
            f["pss_deferred_mib"] = m.deferred.pss_kib / 1024
            f["processes_deferred"] = m.deferred.processes
            f["memory_deferred_count"] = m.count
            f["memory_queue_rate"] = m.queue_rate
            f["memory_queue_cpu_ms"] = m.queue_cpu_ms
            total = DiskUse()
            for use in m.disk.values():
                total = total.add(use)
            f["disk_mib"] = total.allocated / 1048576
            f["disk_apparent_mib"] = total.apparent / 1048576
            f["disk_files"] = total.files
        runs = self.throughput + self.drain
        if runs:
            f["refused"] = sum(r.refused for r in runs)
            f["errors"] = sum(r.errors for r in runs)
            f["lost"] = sum(r.accepted - r.arrived for r in runs) + self.latency_lost
            dkim = [d for r in runs for d in r.dkim]
            f["dkim_per_message"] = min(dkim) if dkim else 0
        return {k: v for k, v in f.items() if v is not None}


def _tokens(run_id: str, phase: str, stack: str, run: int, count: int) -> list[str]:
    return [f"{run_id}-{phase}-{stack}-{run}-{i:06d}" for i in range(count)]


def measure_throughput(
    stack: Stack, sink: Sink, messages: Messages, args: argparse.Namespace, run: int
) -> RunFigures:
    tokens = _tokens(args.run_id, "tp", stack.name, run, args.messages)
    begun = time.monotonic()
    cpu = stack.cpu()
    sent = asyncio.run(
        submit(stack.submit_port, stack.auth, messages, tokens, concurrency=args.concurrency)
    )
    arrivals = sink.wait(sent.accepted, args.timeout)
    fig = _run_figures(sent, arrivals, len(tokens))
    if arrivals:
        last = max(a.at for a in arrivals.values())
        fig.e2e_rate = len(arrivals) / (last - sent.started)
        fig.connections = sink.connections_between(begun, last)
    wait_until(lambda: stack.queued() == 0, 120, f"{stack.name}'s queue to empty")
    fig.cpu_ms = (stack.cpu() - cpu) / max(len(arrivals), 1) * 1000
    _log_run("throughput", stack, run, fig)
    return fig


def measure_drain(
    stack: Stack, sink: Sink, messages: Messages, args: argparse.Namespace, run: int
) -> RunFigures:
    tokens = _tokens(args.run_id, "drain", stack.name, run, args.messages)
    sink.close()
    cpu = stack.cpu()
    try:
        sent = asyncio.run(
            submit(stack.submit_port, stack.auth, messages, tokens, concurrency=args.concurrency)
        )
        ok = wait_until(
            lambda: stack.queue_counts().get("deferred", 0) >= len(sent.accepted)
            and stack.queued() == stack.queue_counts().get("deferred", 0),
            args.timeout, f"{len(sent.accepted)} deferred messages in {stack.name}",
        )  # fmt: skip
        queued_at = time.monotonic()
        queue_cpu = stack.cpu() - cpu
    finally:
        sink.open()
    if not ok:
        log.error("%s queue: %s", stack.name, stack.queue_counts())
    released = time.monotonic()
    cpu = stack.cpu()
    stack.release()
    arrivals = sink.wait(sent.accepted, args.timeout)
    fig = _run_figures(sent, arrivals, len(tokens))
    fig.queue_seconds = queued_at - sent.started
    if arrivals:
        last = max(a.at for a in arrivals.values())
        fig.e2e_rate = len(arrivals) / (last - released)
        fig.connections = sink.connections_between(released, last)
    wait_until(lambda: stack.queued() == 0, 120, f"{stack.name}'s queue to empty")
    fig.cpu_ms = (stack.cpu() - cpu) / max(len(arrivals), 1) * 1000
    fig.queue_cpu_ms = queue_cpu / max(len(sent.accepted), 1) * 1000
    _log_run("drain", stack, run, fig)
    return fig


def _run_figures(sent: Submitted, arrivals: dict[str, Arrival], messages: int) -> RunFigures:
    fig = RunFigures(
        messages=messages, accepted=len(sent.accepted), arrived=len(arrivals),
        refused=sent.refused, errors=sent.errors, submit_rate=sent.rate,
        dkim=sorted({a.dkim for a in arrivals.values()}),
    )  # fmt: skip
    if len(arrivals) < len(sent.accepted):
        missing = [t for t in sent.accepted if t not in arrivals]
        log.error("%d accepted messages did not arrive, e.g. %s", len(missing), missing[:3])
    if len(arrivals) > 1:
        times = [a.at for a in arrivals.values()]
        fig.sink_rate = len(arrivals) / (max(times) - min(times))
    return fig


def _log_run(what: str, stack: Stack, run: int, fig: RunFigures) -> None:
    log.info(
        "%s stack=%s run=%d accepted=%d/%d arrived=%d submit_rate=%.1f sink_rate=%.1f "
        "e2e_rate=%.1f connections=%d dkim=%s queue_s=%.1f cpu_ms=%.2f queue_cpu_ms=%.2f",
        what, stack.name, run, fig.accepted, fig.messages, fig.arrived, fig.submit_rate,
        fig.sink_rate, fig.e2e_rate, fig.connections, fig.dkim, fig.queue_seconds,
        fig.cpu_ms, fig.queue_cpu_ms,
    )  # fmt: skip


def measure_latency(
    stack: Stack, sink: Sink, messages: Messages, args: argparse.Namespace
) -> tuple[list[float], int]:
    tokens = _tokens(args.run_id, "lat", stack.name, 0, args.latency_messages)
    sent = asyncio.run(
        submit(stack.submit_port, stack.auth, messages, tokens, concurrency=1,
               interval=1.0 / args.latency_rate)
    )  # fmt: skip
    arrivals = sink.wait(sent.accepted, 60)
    latencies = [arrivals[t].at - at for t, at in sent.accepted.items() if t in arrivals]
    lost = len(sent.accepted) - len(arrivals)
    if latencies:
        log.info(
            "latency stack=%s samples=%d/%d p50_ms=%.1f p99_ms=%.1f max_ms=%.1f lost=%d",
            stack.name, len(latencies), len(tokens), percentile(latencies, 50) * 1000,
            percentile(latencies, 99) * 1000, max(latencies) * 1000, lost,
        )  # fmt: skip
    wait_until(lambda: stack.queued() == 0, 120, f"{stack.name}'s queue to empty")
    return latencies, lost


def measure_memory(stack: Stack, sink: Sink, args: argparse.Namespace) -> MemoryFigures:
    """`stack` freshly started; `--memory-messages` queued while the sink is down."""
    fig = MemoryFigures()
    time.sleep(args.settle)
    fig.start = memory_of(stack.pids())
    log.info("memory stack=%s after start: %s", stack.name, fig.start)
    # pimail verifies passwords with scrypt (tens of MiB, freed but not all returned
    # to the system); Postfix forks smtpd/cleanup processes that linger. Neither is
    # the queue's doing, so both are in the baseline.
    asyncio.run(log_in_and_out(stack.submit_port, stack.auth, args.concurrency))
    time.sleep(args.settle)
    fig.before = memory_of(stack.pids())
    log.info("memory stack=%s before queueing: %s", stack.name, fig.before)
    messages = Messages(args.memory_size)
    tokens = _tokens(args.run_id, "mem", stack.name, 0, args.memory_messages)
    sink.close()
    try:
        cpu = stack.cpu()
        sent = asyncio.run(
            submit(stack.submit_port, stack.auth, messages, tokens, concurrency=args.concurrency)
        )
        wait_until(
            lambda: stack.queue_counts().get("deferred", 0) >= len(sent.accepted),
            args.timeout, f"{len(sent.accepted)} deferred in {stack.name}",
        )  # fmt: skip
        fig.queue_cpu_ms = (stack.cpu() - cpu) / max(len(sent.accepted), 1) * 1000
        fig.queue_rate = sent.rate
        counts = stack.queue_counts()
        fig.count = counts.get("deferred", 0)
        log.info("memory stack=%s queued=%d rate=%.1f counts=%s", stack.name,
                 len(sent.accepted), sent.rate, counts)  # fmt: skip
        time.sleep(args.settle)
        fig.deferred = memory_of(stack.pids())
        fig.disk = stack.queue_disk()
        if isinstance(stack, PimailStack):
            fig.peak_rss_kib = stack.peak_rss_kib()
        log.info("memory stack=%s deferred: %s disk=%s", stack.name, fig.deferred, fig.disk)
    finally:
        sink.open()
    return fig


# --- the benchmark ------------------------------------------------------------------


def run_benchmark(args: argparse.Namespace) -> dict[str, StackReport]:
    from dnsserver import DnsServer  # tests/dnsserver.py (needs dnspython: the venv)

    reports: dict[str, StackReport] = {}
    zone = DnsServer().start()
    for n, domain in enumerate(DOMAINS, 1):
        zone.add(domain, "MX", f"10 mx{n}.bench.test.")
        zone.set(f"mx{n}.bench.test", "A", SINK_HOSTS[n - 1])
    sink_port = free_port_on(SINK_HOSTS)
    sink = Sink(sink_port, SINK_HOSTS)
    stacks: list[Stack] = []
    pimail: PimailStack | None = None
    postfix: PostfixStack | None = None
    try:
        sink.open()
        log.info("sink on %s port %d, DNS on %s", ",".join(SINK_HOSTS), sink_port, zone.address)
        if not args.skip_classic:
            postfix = PostfixStack(sink_port, dkim=not args.classic_no_dkim)
            postfix.start()
            stacks.append(postfix)
        if not args.skip_pimail:
            pimail = PimailStack(args.root / "pimail-main", args.pimail, zone.address, sink_port)
            pimail.start()
            stacks.append(pimail)
        for stack in stacks:
            reports[stack.name] = StackReport(stack.name, stack.dkim_note)
        messages = Messages(args.size)

        for run in range(1, args.runs + 1):
            order = stacks if run % 2 else stacks[::-1]  # take turns going first
            for stack in order:
                reports[stack.name].throughput.append(
                    measure_throughput(stack, sink, messages, args, run)
                )
            for stack in order:
                reports[stack.name].drain.append(measure_drain(stack, sink, messages, args, run))
        for stack in stacks:
            report = reports[stack.name]
            report.latencies, report.latency_lost = measure_latency(stack, sink, messages, args)

        # Memory: a fresh pimail, a restarted Postfix.
        if pimail is not None:
            pimail.stop()
            reports["pimail"].problems += pimail.problems()
            fresh = PimailStack(args.root / "pimail-memory", args.pimail, zone.address, sink_port)
            fresh.start()
            try:
                reports["pimail"].memory = measure_memory(fresh, sink, args)
            finally:
                fresh.stop()
                reports["pimail"].problems += fresh.problems()
            if not args.keep:
                for stack_dir in ("pimail-main", "pimail-memory"):
                    shutil.rmtree(args.root / stack_dir, ignore_errors=True)
            pimail = None
        if postfix is not None:
            postfix.stop()
            postfix.purge()
            postfix.restart()
            reports["postfix"].memory = measure_memory(postfix, sink, args)
            postfix.purge()
    finally:
        if pimail is not None:
            pimail.stop()
            reports.get("pimail", StackReport("pimail")).problems.extend(pimail.problems())
        if postfix is not None:
            try:
                postfix.stop()
                postfix.purge()
            except (OSError, subprocess.SubprocessError):
                log.exception("could not stop the Postfix instance")
            if "postfix" in reports:
                reports["postfix"].problems += postfix.problems()
        sink.stop()
        zone.stop()
        log.info("sink: %d duplicate arrivals, %d without X-Bench-Id", sink.duplicates,
                 sink.unknown)  # fmt: skip
    return reports


# --- output -------------------------------------------------------------------------

ROWS = (
    ("sink_rate", "delivery rate at the sink, msg/s", "{:.1f}"),
    ("e2e_rate", "end-to-end rate, msg/s", "{:.1f}"),
    ("submit_rate", "submission rate, msg/s", "{:.1f}"),
    ("connections", "connections to the sink per run", "{:.0f}"),
    ("drain_rate", "drain rate, msg/s", "{:.1f}"),
    ("drain_from_release", "drain rate from the release, msg/s", "{:.1f}"),
    ("cpu_ms", "server CPU per message, ms", "{:.2f}"),
    ("queue_cpu_ms", "  queueing alone (sink down), ms", "{:.2f}"),
    ("drain_cpu_ms", "  sending alone (drain), ms", "{:.2f}"),
    ("latency_p50_ms", "latency 250 -> sink p50, ms", "{:.1f}"),
    ("latency_p99_ms", "latency 250 -> sink p99, ms", "{:.1f}"),
    ("latency_max_ms", "latency 250 -> sink max, ms", "{:.1f}"),
    ("rss_start_mib", "RSS idle after start, MiB", "{:.1f}"),
    ("rss_before_mib", "RSS idle after logins, MiB", "{:.1f}"),
    ("rss_deferred_mib", "RSS with the deferred queue, MiB", "{:.1f}"),
    ("pss_start_mib", "PSS idle after start, MiB", "{:.1f}"),
    ("pss_before_mib", "PSS idle after logins, MiB", "{:.1f}"),
    ("pss_deferred_mib", "PSS with the deferred queue, MiB", "{:.1f}"),
    ("processes_deferred", "processes with the deferred queue", "{:.0f}"),
    ("memory_deferred_count", "messages deferred", "{:.0f}"),
    ("disk_mib", "queue on disk (allocated), MiB", "{:.1f}"),
    ("disk_apparent_mib", "queue on disk (file sizes), MiB", "{:.1f}"),
    ("disk_files", "queue files", "{:.0f}"),
    ("memory_queue_rate", "submission rate, sink down, msg/s", "{:.1f}"),
    ("memory_queue_cpu_ms", "server CPU per message, sink down, ms", "{:.2f}"),
    ("dkim_per_message", "DKIM signatures per message (min)", "{:.0f}"),
    ("refused", "non-250 submission replies", "{:.0f}"),
    ("errors", "submission connection errors", "{:.0f}"),
    ("lost", "accepted but never arrived", "{:.0f}"),
)


def render_table(args: argparse.Namespace, reports: dict[str, StackReport]) -> str:
    c = reports["postfix"].figures() if "postfix" in reports else {}
    p = reports["pimail"].figures() if "pimail" in reports else {}
    lines = [
        f"Outbound queue benchmark: {args.messages} x {args.size // 1024} KB to "
        f"{len(DOMAINS)} domains over {args.concurrency} submission connections, "
        f"median of {args.runs} run(s); latency: {args.latency_messages} messages at "
        f"{args.latency_rate:g}/s; memory: {args.memory_messages} x "
        f"{args.memory_size // 1024} KB deferred",
        "",
        f"{'':40} {'postfix':>10} {'pimail':>10} {'pimail/postfix':>15}",
    ]
    for key, label, fmt in ROWS:
        cv = fmt.format(c[key]) if key in c else "-"
        pv = fmt.format(p[key]) if key in p else "-"
        ratio = f"{p[key] / c[key]:.2f}" if key in c and key in p and c[key] else "-"
        lines.append(f"{label:40} {cv:>10} {pv:>10} {ratio:>15}")
    lines += [
        "",
        "delivery rate: first to last arrival at the sink; end-to-end: first submission to "
        "last arrival;",
        "drain: queued while the sink refused connections, then released (pimail queue "
        "retry; postqueue -f).",
        "Sink: 8 addresses (127.0.0.11-18), PIPELINING, no STARTTLS: both deliver in the "
        "clear. Submission: STARTTLS",
        "to both, pipelined; AUTH PLAIN to pimail only (Postfix relays for 127.0.0.0/8). "
        "Postfix: transport_maps to",
        "[127.0.0.1N]:port (no DNS); pimail: MX + A (+ MTA-STS TXT) lookups from the "
        "benchmark's DNS server.",
    ]
    for report in reports.values():
        lines.append(f"{report.name} DKIM: {report.dkim_note}")
    for report in reports.values():
        m = report.memory
        if m is None:
            continue
        disk = ", ".join(
            f"{name} {use.files} files {use.allocated / 1048576:.1f} MiB"
            for name, use in m.disk.items()
        )
        lines.append(f"{report.name} with {m.count} deferred: {m.deferred}; {disk}")
        if m.peak_rss_kib:
            lines.append(f"{report.name} peak RSS (VmHWM) while queueing: "
                         f"{m.peak_rss_kib / 1024:.1f} MiB")  # fmt: skip
    for report in reports.values():
        if not report.problems:
            lines.append(f"{report.name}: no warnings or errors in its log")
            continue
        groups = Counter(_without_time(line) for line in report.problems)
        lines.append(
            f"{report.name}: {len(report.problems)} warning/error log lines "
            f"({len(groups)} distinct, with counts):"
        )
        for text, count in groups.most_common(20):
            lines.append(f"  {count:6d} x {text[:300]}")
    return "\n".join(lines)


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ |\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ )")
_LOG_IDS = re.compile(r"\b(id=\S+|[0-9A-F]{10,}|\d+(\.\d+)?)\b")


def _without_time(line: str) -> str:
    """A log line without its time stamp, numbers and queue ids (to group alike lines)."""
    return _LOG_IDS.sub("#", _LOG_TIME.sub("", line))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-classic", action="store_true", help="no Postfix")
    parser.add_argument("--skip-pimail", action="store_true")
    parser.add_argument(
        "--classic-no-dkim", action="store_true", help="Postfix without the OpenDKIM milter"
    )
    parser.add_argument("--messages", type=int, default=2000, help="per throughput/drain run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=20 * 1024, help="bytes per message")
    parser.add_argument("--concurrency", type=int, default=8, help="submission connections")
    parser.add_argument("--latency-messages", type=int, default=200)
    parser.add_argument("--latency-rate", type=float, default=20.0, help="messages/s")
    parser.add_argument("--memory-messages", type=int, default=10000)
    parser.add_argument("--memory-size", type=int, default=2048, help="bytes per message")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="idle seconds before a memory reading"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per wait")
    parser.add_argument(
        "--root", type=Path, default=Path("/var/tmp/pimail-bench-outbound"),
        help="pimail's data directories go here",
    )  # fmt: skip
    parser.add_argument("--pimail", type=Path, default=REPO / ".venv" / "bin" / "pimail")
    parser.add_argument("--keep", action="store_true", help="keep pimail's data directories")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if min(args.messages, args.runs, args.latency_messages, args.memory_messages) < 1:
        parser.error("counts must be at least 1")
    if args.skip_classic and args.skip_pimail:
        parser.error("nothing to measure")
    args.run_id = secrets.token_hex(3)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--sink-child"]:
        return sink_child(int(argv[1]), argv[2:])
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    sys.path.insert(0, str(REPO / "tests"))
    args.root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        reports = run_benchmark(args)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        log.exception("benchmark failed: %s", e)
        return 1
    print(render_table(args, reports))
    log.info("took %.0f s", time.monotonic() - started)
    if args.json:
        out = {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            **{
                name: {
                    **r.figures(),
                    "throughput_runs": [x.summary() for x in r.throughput],
                    "drain_runs": [x.summary() for x in r.drain],
                    "latencies_ms": [round(x * 1000, 2) for x in r.latencies],
                    "problems": r.problems,
                }
                for name, r in reports.items()
            },
        }
        args.json.write_text(json.dumps(out, indent=1))
    lost = any(r.figures().get("lost", 0) or r.figures().get("refused", 0)
               for r in reports.values())  # fmt: skip
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
