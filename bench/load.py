"""Asyncio SMTP load generator for pimail's benchmarks: a library and a CLI.

It sends a bounded number of messages over a few long-lived SMTP connections and
measures what the server under test does with them:

- messages/s: accepted messages divided by the time from the first MAIL FROM sent to
  the last final reply received (connection set-up and EHLO are not counted);
- latency per message: from writing MAIL FROM to reading the final 250 after the data;
  p50 and p99 over the accepted messages;
- non-250 replies: transactions that a reply ended (MAIL, RCPT or the final reply not
  250, DATA not 354); connection errors and timeouts are counted apart.

The client is a small hand-written SMTP client over asyncio.open_connection (EHLO, MAIL,
RCPT, DATA, RSET, QUIT, dot-stuffing, no PIPELINING) so that it costs little CPU: it
shares the machine with the server it measures. Message bodies are built once per run
(a few variants of realistic text, lines of at most 78 characters, dot-stuffed in
advance); each message gets its own headers with a unique Message-ID and a unique token
in the Subject, so a caller can check which messages were delivered.

CLI: python bench/load.py HOST PORT [--messages N] [--size BYTES] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import random
import secrets
import sys
import textwrap
import time
from dataclasses import dataclass, field
from email.utils import formatdate

log = logging.getLogger("bench.load")

CRLF = b"\r\n"
MAX_REPLY_LINES = 100

_WORD_TEXT = (
    "the of and to in a is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if "
    "so no will more can about out up them some could into time only other new then these "
    "two may first any like now my such over our even most after also made many did before "
    "must through back where much your way well down should because each just those people "
    "how too little state good very make world still own see men work long get here between "
    "both life being under never day same another know while last might us great old year "
    "off come since against go came right used take three meeting invoice schedule report "
    "server mailbox delivery queue message folder attachment review budget quarter project "
    "tomorrow morning afternoon please thanks regards team update question answer draft"
)
WORDS = tuple(_WORD_TEXT.split())

SIGNATURE = ("-- ", "Load Generator", "Benchmark Department, bench.test")


class SMTPProtocolError(Exception):
    """The server's reply could not be parsed, or the connection closed mid-reply."""


@dataclass(frozen=True)
class LoadConfig:
    """What to send, where, and how many at once."""

    host: str = "127.0.0.1"
    port: int = 25
    messages: int = 2000
    size: int = 20 * 1024
    concurrency: int = 8
    mail_from: str = "load@load.test"
    rcpt_to: str = "user@bench.test"
    reply_timeout: float = 60.0
    run_timeout: float = 900.0
    helo_name: str = "load.test"


@dataclass
class LoadResult:
    """What a run measured; times are time.monotonic() seconds."""

    attempted: int = 0
    accepted: int = 0
    non_250: int = 0
    errors: int = 0
    timed_out: bool = False
    started: float = math.inf
    finished: float = 0.0
    latencies: list[float] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)
    client_cpu: float = 0.0

    @property
    def elapsed(self) -> float:
        """Seconds from the first MAIL FROM to the last final reply."""
        return max(self.finished - self.started, 0.0) if self.attempted else 0.0

    @property
    def rate(self) -> float:
        """Accepted messages per second."""
        return self.accepted / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)

    def summary(self) -> dict[str, float | int | bool]:
        return {
            "attempted": self.attempted,
            "accepted": self.accepted,
            "non_250": self.non_250,
            "errors": self.errors,
            "timed_out": self.timed_out,
            "elapsed_s": round(self.elapsed, 3),
            "messages_per_s": round(self.rate, 1),
            "p50_ms": round(self.p50 * 1000, 2),
            "p99_ms": round(self.p99 * 1000, 2),
            "client_cpu_s": round(self.client_cpu, 3),
        }


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(math.ceil(pct / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def dot_stuff(lines: list[str]) -> bytes:
    """RFC 5321 4.5.2: a line that starts with '.' gets one more '.'; lines end in CRLF."""
    return b"".join(
        (b"." if line.startswith(".") else b"") + line.encode("ascii") + CRLF for line in lines
    )


def make_body_lines(rng: random.Random, size: int) -> list[str]:
    """Plain-text paragraphs, wrapped at 72 columns, of about `size` bytes in all."""
    lines: list[str] = ["Hello,", ""]
    total = 0
    while total < size:
        sentences = []
        for _ in range(rng.randint(2, 6)):
            words = rng.choices(WORDS, k=rng.randint(6, 18))
            sentences.append(" ".join(words).capitalize() + rng.choice(".....?!"))
        paragraph = textwrap.wrap(" ".join(sentences), width=72)
        if rng.random() < 0.15:
            paragraph = ["> " + line for line in textwrap.wrap(" ".join(sentences), width=70)]
        elif rng.random() < 0.1:
            paragraph.append("...")  # a line that needs dot-stuffing
        lines.extend([*paragraph, ""])
        total += sum(len(line) + 2 for line in paragraph) + 2
    lines.extend(SIGNATURE)
    return lines


class MessageFactory:
    """Builds DATA payloads: unique headers in front of one of a few prepared bodies."""

    def __init__(
        self,
        size: int,
        mail_from: str,
        rcpt_to: str,
        *,
        variants: int = 16,
        seed: int = 5321,
    ) -> None:
        rng = random.Random(seed)
        header_estimate = 400
        body_size = max(size - header_estimate, 64)
        self._bodies = [dot_stuff(make_body_lines(rng, body_size)) for _ in range(variants)]
        self._mail_from = mail_from
        self._rcpt_to = rcpt_to
        self._run_token = secrets.token_hex(5)

    def build(self, seq: int) -> tuple[str, bytes]:
        """Returns (Message-ID, payload ending in CRLF.CRLF) for message number `seq`."""
        token = f"{self._run_token}-{seq:06d}"
        message_id = f"<{token}@load.test>"
        headers = (
            f"From: Load Generator <{self._mail_from}>\r\n"
            f"To: <{self._rcpt_to}>\r\n"
            f"Subject: Benchmark message {token}\r\n"
            f"Date: {formatdate()}\r\n"
            f"Message-ID: {message_id}\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "Content-Transfer-Encoding: 7bit\r\n"
            "\r\n"
        ).encode("ascii")
        body = self._bodies[seq % len(self._bodies)]
        return message_id, headers + body + b".\r\n"


class SMTPClient:
    """One SMTP connection: just enough of RFC 5321 to send messages, one at a time."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout = timeout

    @classmethod
    async def connect(
        cls, host: str, port: int, *, helo_name: str = "load.test", timeout: float = 60.0
    ) -> SMTPClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        client = cls(reader, writer, timeout)
        try:
            code, text = await client.reply()
            if code != 220:
                raise SMTPProtocolError(f"banner {code} {text!r}")
            code, text = await client.command(f"EHLO {helo_name}")
            if code != 250:
                code, text = await client.command(f"HELO {helo_name}")
            if code != 250:
                raise SMTPProtocolError(f"EHLO/HELO refused: {code} {text!r}")
        except BaseException:
            client.close()
            raise
        return client

    async def reply(self) -> tuple[int, bytes]:
        """Reads one (possibly multi-line) reply; returns its code and last line's text."""
        # asyncio.timeout, not wait_for: wait_for costs a Task per call.
        async with asyncio.timeout(self._timeout):
            for _ in range(MAX_REPLY_LINES):
                line = await self._reader.readline()
                if not line.endswith(b"\n"):
                    raise SMTPProtocolError("connection closed while waiting for a reply")
                if len(line) < 4 or not line[:3].isdigit():
                    raise SMTPProtocolError(f"malformed reply line {line[:80]!r}")
                if line[3:4] != b"-":
                    return int(line[:3]), line[4:].rstrip()
        raise SMTPProtocolError(f"reply longer than {MAX_REPLY_LINES} lines")

    async def command(self, line: str) -> tuple[int, bytes]:
        self._writer.write(line.encode("ascii") + CRLF)
        return await self.reply()

    async def send_message(self, mail_from: str, rcpt_to: str, payload: bytes) -> int:
        """One transaction; returns the reply code that ended it (250 on success).

        `payload` is the dot-stuffed message ending in CRLF.CRLF. After a refusal the
        transaction is reset with RSET so that the connection can carry the next one.
        """
        code, _ = await self.command(f"MAIL FROM:<{mail_from}>")
        if code != 250:
            await self.command("RSET")
            return code
        code, _ = await self.command(f"RCPT TO:<{rcpt_to}>")
        if code not in (250, 251):
            await self.command("RSET")
            return code
        code, _ = await self.command("DATA")
        if code != 354:
            await self.command("RSET")
            return code
        self._writer.write(payload)
        await self._writer.drain()
        code, _ = await self.reply()
        return code

    async def quit(self) -> None:
        try:
            await self.command("QUIT")
        except (OSError, TimeoutError, SMTPProtocolError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        self._writer.close()


class _Sequence:
    """Hands out message numbers 0..count-1 to the workers (one event loop, no lock)."""

    def __init__(self, count: int) -> None:
        self._next = 0
        self._count = count

    def take(self) -> int | None:
        if self._next >= self._count:
            return None
        self._next += 1
        return self._next - 1


async def _worker(
    cfg: LoadConfig, factory: MessageFactory, seq: _Sequence, result: LoadResult
) -> None:
    client: SMTPClient | None = None
    connect_failures = 0
    try:
        while (number := seq.take()) is not None:
            if client is None:
                try:
                    client = await SMTPClient.connect(
                        cfg.host, cfg.port, helo_name=cfg.helo_name, timeout=cfg.reply_timeout
                    )
                    connect_failures = 0
                except (OSError, TimeoutError, SMTPProtocolError) as exc:
                    result.errors += 1
                    connect_failures += 1
                    log.warning("connect failed host=%s port=%s error=%r", cfg.host, cfg.port, exc)
                    if connect_failures >= 3:
                        return
                    await asyncio.sleep(0.5)
                    continue
            message_id, payload = factory.build(number)
            result.attempted += 1
            begun = time.monotonic()
            result.started = min(result.started, begun)
            try:
                code = await client.send_message(cfg.mail_from, cfg.rcpt_to, payload)
            except (OSError, TimeoutError, SMTPProtocolError) as exc:
                result.errors += 1
                log.warning("transaction failed message_id=%s error=%r", message_id, exc)
                client.close()
                client = None
                continue
            ended = time.monotonic()
            result.finished = max(result.finished, ended)
            if code == 250:
                result.accepted += 1
                result.latencies.append(ended - begun)
                result.message_ids.append(message_id)
            else:
                result.non_250 += 1
                log.debug("refused message_id=%s code=%d", message_id, code)
    except BaseException:
        if client is not None:
            client.close()
        raise
    if client is not None:
        await client.quit()


async def run_load(cfg: LoadConfig, factory: MessageFactory | None = None) -> LoadResult:
    """Sends cfg.messages messages over cfg.concurrency connections; never raises on
    server errors (they are counted), and stops after cfg.run_timeout seconds."""
    if factory is None:
        factory = MessageFactory(cfg.size, cfg.mail_from, cfg.rcpt_to)
    result = LoadResult()
    seq = _Sequence(cfg.messages)
    cpu_before = time.process_time()
    workers = [
        asyncio.create_task(_worker(cfg, factory, seq, result)) for _ in range(cfg.concurrency)
    ]
    try:
        async with asyncio.timeout(cfg.run_timeout):
            await asyncio.gather(*workers)
    except TimeoutError:
        result.timed_out = True
        log.error("run stopped after run_timeout=%ss", cfg.run_timeout)
    result.client_cpu = time.process_time() - cpu_before
    return result


def parse_size(text: str) -> int:
    """'20480', '20k' or '1m' -> bytes."""
    units = {"k": 1024, "m": 1024 * 1024}
    text = text.strip().lower()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("-n", "--messages", type=int, default=LoadConfig.messages)
    parser.add_argument(
        "-s", "--size", type=parse_size, default=LoadConfig.size, help="bytes, or 20k"
    )
    parser.add_argument("-c", "--concurrency", type=int, default=LoadConfig.concurrency)
    parser.add_argument("--from", dest="mail_from", default=LoadConfig.mail_from)
    parser.add_argument("--to", dest="rcpt_to", default=LoadConfig.rcpt_to)
    parser.add_argument("--timeout", type=float, default=LoadConfig.run_timeout)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if args.messages < 1 or args.concurrency < 1:
        parser.error("--messages and --concurrency must be at least 1")
    cfg = LoadConfig(
        host=args.host,
        port=args.port,
        messages=args.messages,
        size=args.size,
        concurrency=args.concurrency,
        mail_from=args.mail_from,
        rcpt_to=args.rcpt_to,
        run_timeout=args.timeout,
    )
    result = asyncio.run(run_load(cfg))
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{result.accepted}/{cfg.messages} accepted in {result.elapsed:.2f} s: "
            f"{result.rate:.1f} msg/s, p50 {result.p50 * 1000:.1f} ms, "
            f"p99 {result.p99 * 1000:.1f} ms, non-250 {result.non_250}, "
            f"errors {result.errors}, client CPU {result.client_cpu:.2f} s"
        )
    return 0 if result.accepted == cfg.messages else 1


if __name__ == "__main__":
    sys.exit(main())
