"""Webmail benchmark: server time of the message list and of opening a big message,
and pimail's memory with webmail sessions. Prints figures; never passes or fails.

A fresh pimail (.venv/bin/pimail, a new data directory) gets one account whose
INBOX holds the corpus of bench/corpus.py (default 10,000 messages), written as
Maildir files with their UIDs before `pimail serve` starts and indexes them, plus
a few 2 MB messages (a long text, an HTML alternative, a 1.4 MB attachment). Then,
over HTTPS on loopback with a logged-in session (urllib, keep-alive off: every
request pays its TLS handshake, as the figures say), it measures:

- the message list, first page and page 50 (50 per page, newest first), and the
  first page sorted by sender and by subject, and a body search for the corpus's
  rare word: the median (p50) and p90 of --requests requests each;
- opening a 2 MB message: the reading page the first time (the message parsed
  from its file; one sample per big message, p50 over them) and again (parsed
  copy kept: p50 of --requests), and its HTML frame;
- VmRSS of the pimail process (/proc/<pid>/status): idle (index built, analysis
  done, no web request yet), then after 20 webmail sessions (each logs in, lists
  two pages and opens three messages), and after they have all gone quiet.

Timing is the client's: request sent to response read, which over loopback is
the server's time plus a little client work. The handshake is included in every
figure (urllib opens a connection per request); its cost alone is printed as
"GET /static/style.css" for comparison.

Usage:  .venv/bin/python bench/web_bench.py [--count 10000] [--requests 30] [--keep]
"""

from __future__ import annotations

import argparse
import base64
import http.cookiejar
import json
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import corpus

log = logging.getLogger("bench.web_bench")
REPO = Path(__file__).resolve().parents[1]
PIMAIL = REPO / ".venv" / "bin" / "pimail"
DOMAIN = "bench.test"
USER = corpus.USER_ADDRESS
PASSWORD = "secret-pw"
BIG_MESSAGES = 5
SESSIONS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml(data: Path, sections: dict[str, dict[str, object]]) -> str:
    lines = [f"data_dir = {json.dumps(str(data))}", 'hostname = "mail.bench.test"']
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def big_message(n: int) -> bytes:
    """About 2 MB: text/plain and text/html alternatives, and a 1.4 MB attachment."""
    paragraph = f"Paragraph of the big message number {n}, long enough to wrap twice. " * 12
    text = "\r\n\r\n".join(paragraph for _ in range(250))
    html = "".join(f"<p>{paragraph}</p>\r\n" for _ in range(250))
    blob = os.urandom(1_400_000)
    encoded = base64.encodebytes(blob).decode().replace("\n", "\r\n")
    return (
        f"From: Big Sender <big{n}@remote.test>\r\nTo: {USER}\r\nSubject: Big message {n}\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
        f"Message-ID: <big{n}@remote.test>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="MIX"\r\n\r\n'
        '--MIX\r\nContent-Type: multipart/alternative; boundary="ALT"\r\n\r\n'
        f"--ALT\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
        f"--ALT\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n--ALT--\r\n"
        '--MIX\r\nContent-Type: application/octet-stream; name="data.bin"\r\n'
        'Content-Disposition: attachment; filename="data.bin"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{encoded}--MIX--\r\n"
    ).encode()


class Server:
    def __init__(self, workdir: Path, count: int) -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        self.config = workdir / "pimail.toml"
        self.count = count
        self.proc: subprocess.Popen[bytes] | None = None
        self.https_port = free_port()

    def cli(self, *words: str, stdin: bytes | None = None) -> str:
        done = subprocess.run(
            [str(PIMAIL), "--config", str(self.config), *words],
            input=stdin, capture_output=True, timeout=600,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"pimail {' '.join(words)}: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode()

    def prepare(self) -> None:
        self.data.mkdir(parents=True)
        sections: dict[str, dict[str, object]] = {
            "web": {"listen_https": [f"127.0.0.1:{self.https_port}"]}
        }
        self.config.write_text(toml(self.data, sections))
        for line in self.cli("config", "show").splitlines():  # every other listener: free ports
            key = line.split(" = ", 1)[0]
            section, _, name = key.partition(".")
            if "listen" in name and name not in sections.get(section, {}):
                sections.setdefault(section, {})[name] = [f"127.0.0.1:{free_port()}"]
        sections.setdefault("auth", {})["failure_delay"] = 0.01
        self.config.write_text(toml(self.data, sections))
        self.cli("domain", "add", DOMAIN)
        self.cli("user", "add", USER, stdin=f"{PASSWORD}\n".encode())
        maildir = self.data / "mail" / DOMAIN / USER.split("@")[0]
        started = time.perf_counter()
        corpus.write_maildir(maildir, corpus.generate(self.count), uid_names=True)
        for n in range(BIG_MESSAGES):
            data = big_message(n)
            uid = self.count + 1 + n
            name = f"{int(time.time())}.M{n}P1Q{n}.bench,S={len(data)},U={uid}:2,"
            (maildir / "cur" / name).write_bytes(data)
        log.info("maildir written seconds=%.1f", time.perf_counter() - started)

    def start(self) -> None:
        out = open(self.workdir / "serve.log", "ab")  # noqa: SIM115 (the child keeps it)
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(PIMAIL), "--config", str(self.config), "serve"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 600
        while "pimail ready" not in (self.workdir / "serve.log").read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("pimail did not start; see " + str(self.workdir / "serve.log"))
            time.sleep(0.2)
        log.info("pimail ready pid=%d seconds=%.1f", self.proc.pid, time.perf_counter() - started)

    def wait_analysed(self) -> None:
        """The background analysis (MIME caches, search text) done: a quiet server."""
        started = time.perf_counter()
        con = sqlite3.connect(f"file:{self.data / 'index.db'}?mode=ro", uri=True)
        while True:
            left = con.execute("SELECT COUNT(*) FROM messages WHERE analysed = 0").fetchone()[0]
            if left == 0:
                break
            time.sleep(0.5)
        con.close()
        log.info("analysis done seconds=%.1f", time.perf_counter() - started)

    def rss_kib(self) -> int:
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Session:
    """A logged-in browser: urllib with a cookie jar."""

    def __init__(self, base: str, ca: Path) -> None:
        self.base = base
        context = ssl.create_default_context(cafile=str(ca))
        context.check_hostname = False  # the certificate names mail.bench.test, we dial 127.0.0.1
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
            urllib.request.HTTPSHandler(context=context),
        )

    def get(self, path: str) -> tuple[float, bytes]:
        started = time.perf_counter()
        with self.opener.open(self.base + path, timeout=120) as response:
            body = response.read()
        return time.perf_counter() - started, body

    def login(self) -> None:
        _, page = self.get("/login")
        token = re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()  # type: ignore[union-attr]
        form = urllib.parse.urlencode(
            {"csrf": token, "username": USER, "password": PASSWORD, "next": "/mail"}
        ).encode()
        with self.opener.open(self.base + "/login", data=form, timeout=60) as response:
            response.read()


def figures(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    p50 = statistics.median(ordered)
    return f"p50 {p50 * 1000:8.1f} ms   p90 {p90 * 1000:8.1f} ms   n={len(ordered)}"


def timed(session: Session, path: str, runs: int) -> list[float]:
    session.get(path)  # one to warm what is cached (page cache, SQLite pages)
    return [session.get(path)[0] for _ in range(runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=corpus.DEFAULT_COUNT)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not PIMAIL.exists():
        sys.exit(f"{PIMAIL} missing: run ./build.sh test (or run) first")

    workdir = Path(tempfile.mkdtemp(prefix="pimail-web-bench-"))
    server = Server(workdir, args.count)
    try:
        server.prepare()
        server.start()
        server.wait_analysed()
        time.sleep(2)
        idle = server.rss_kib()
        base = f"https://127.0.0.1:{server.https_port}"
        ca = server.data / "tls" / "ca" / "ca.pem"
        s = Session(base, ca)
        s.login()
        _, page = s.get("/mail")
        inbox = re.search(rb'<a href="/mail/(\d+)" class="current"', page).group(1).decode()  # type: ignore[union-attr]
        results: list[tuple[str, str]] = []

        def record(name: str, samples: list[float]) -> None:
            results.append((name, figures(samples)))
            log.info("%s: %s", name, results[-1][1])

        record("GET /static/style.css (TLS handshake + tiny file)",
               timed(s, "/static/style.css", args.requests))  # fmt: skip
        record(f"message list, page 1 of {args.count + BIG_MESSAGES} (by date)",
               timed(s, f"/mail/{inbox}", args.requests))  # fmt: skip
        record("message list, page 50 (by date)", timed(s, f"/mail/{inbox}?page=50", args.requests))
        record("message list, page 1 by sender",
               timed(s, f"/mail/{inbox}?sort=from&order=asc", args.requests))  # fmt: skip
        record("message list, page 1 by subject",
               timed(s, f"/mail/{inbox}?sort=subject&order=asc", args.requests))  # fmt: skip
        record(f"search '{corpus.RARE_WORD}' (body, FTS)",
               timed(s, f"/mail/{inbox}?q={corpus.RARE_WORD}", args.requests))  # fmt: skip

        big = [f"/mail/{inbox}/{args.count + 1 + n}" for n in range(BIG_MESSAGES)]
        record("open a 2 MB message, first time (read + parse)", [s.get(p)[0] for p in big])
        record("open a 2 MB message again (parsed copy kept)", timed(s, big[0], args.requests))
        _, page = s.get(big[0])
        frame = re.search(rb'<iframe[^>]*src="([^"]+)"', page).group(1).decode()  # type: ignore[union-attr]
        record("its HTML frame (200 KB of HTML, cleaned once)", timed(s, frame, args.requests))

        # 20 webmail sessions: log in, two list pages, three messages each.
        for i in range(SESSIONS):
            other = Session(base, ca)
            other.login()
            other.get(f"/mail/{inbox}")
            other.get(f"/mail/{inbox}?page={2 + i}")
            for uid in (1 + i * 97, 2 + i * 97, 3 + i * 97):
                other.get(f"/mail/{inbox}/{uid}")
        after = server.rss_kib()
        time.sleep(5)
        settled = server.rss_kib()

        print()
        print(f"pimail webmail, {args.count} corpus messages + {BIG_MESSAGES} of 2 MB in one "
              f"INBOX; HTTPS over loopback, one TLS connection per request")  # fmt: skip
        width = max(len(name) for name, _ in results)
        for name, text in results:
            print(f"  {name:<{width}}  {text}")
        print(f"  VmRSS idle (index built, no web request yet)      {idle / 1024:7.1f} MiB")
        print(f"  VmRSS after {SESSIONS} webmail sessions                  {after / 1024:7.1f} MiB"
              f"  (+{(after - idle) / 1024:.1f} MiB)")  # fmt: skip
        print(f"  VmRSS 5 s later                                   {settled / 1024:7.1f} MiB")
    finally:
        server.stop()
        if args.keep:
            print(f"data kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
