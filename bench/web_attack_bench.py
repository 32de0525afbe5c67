"""The web under attack before login (issue 13): what the server holds, and
whether an honest visitor is still served. Prints figures; never passes or fails.

Against a fresh pimail with its default web settings (only the ports and the
data directory set), over HTTPS on loopback, one attack after the other:

1. big bodies: --bodies (8) concurrent POST /login of --size (39 MB) each, sent
   as fast as loopback takes them, with a valid pre-login CSRF cookie and token
   first in the body (what the attacker of issue 13 sent);
2. held bodies: --held (100) connections that each send a POST /login head
   and 15 KiB of a 16 KiB body, then nothing: the memory one unauthenticated
   connection can make the server hold, per connection;
3. slow bodies: --addresses (4) source addresses (127.0.0.2...) × --per-address
   (128) connections opened at once (32 threads), each POST /login with
   Content-Length: 100000 (as in issue 13), then again with 10000 (within the
   pre-login budget), trickling a byte every --every (5) s for --seconds (40);
   an honest GET /login from 127.0.0.100 every 5 s.

For each: VmRSS before, VmHWM during (reset through /proc/<pid>/clear_refs
before the attack), VmRSS 10 s after it ended, whether the honest requests
were answered, and for the slow bodies how many connections the server took
and how many it had closed by the end.

With --ref REV, the same attacks run first against a `git worktree` of REV
(PYTHONPATH=<worktree>/app), then against this tree, in one run.

Usage:  .venv/bin/python bench/web_attack_bench.py [--ref 8928e7e] [--size 39000000]
        [--bodies 8] [--held 100] [--addresses 4] [--per-address 128] [--seconds 40]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import PASSWORD, PimailServer  # noqa: E402

DOMAIN = "bench.test"
USER = f"user@{DOMAIN}"
MIB = 1024 * 1024
GET_LOGIN = b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def memory(pid: int) -> dict[str, float]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: int(v) / 1024 for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M)}


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def tls_connect(site: PimailServer, source: str = "127.0.0.1") -> ssl.SSLSocket:
    raw = socket.socket()
    raw.settimeout(30)
    raw.bind((source, 0))
    raw.connect(("127.0.0.1", site.https_port))
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def prelogin(site: PimailServer) -> tuple[str, str]:
    """The login page's CSRF token and cookie."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with urllib.request.urlopen(
        f"https://127.0.0.1:{site.https_port}/login", context=ctx, timeout=30
    ) as r:
        token = re.search(r'name="csrf" value="([^"]+)"', r.read().decode()).group(1)
        cookie = r.headers["Set-Cookie"].split(";")[0]
    return token, cookie


def head(length: int, cookie: str) -> bytes:
    return (
        f"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def status(sock: ssl.SSLSocket) -> int:
    try:
        line = sock.recv(200).split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) > 1 else 0
    except (OSError, ValueError):
        return 0


class Honest(threading.Thread):
    """GET /login from its own address every `every` seconds, until stopped."""

    def __init__(self, site: PimailServer, every: float, source: str = "127.0.0.100") -> None:
        super().__init__(daemon=True)
        self.site, self.every, self.source = site, every, source
        self.results: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                with tls_connect(self.site, self.source) as sock:
                    sock.sendall(
                        b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                    )
                    code = status(sock)
                took = time.monotonic() - started
                self.results.append(f"{code}" if code else "closed")
                if code:
                    self.results[-1] += f"({took * 1000:.0f} ms)"
            except OSError as e:
                self.results.append(type(e).__name__)
            self.stop.wait(self.every)

    def summary(self) -> str:
        served = sum(r.startswith("200") for r in self.results)
        return f"{served}/{len(self.results)} served: {' '.join(self.results)}"


@contextlib.contextmanager
def measured(site: PimailServer, name: str, honest_every: float = 2.0) -> Iterator[dict]:
    before = memory(site.pid)
    reset_peak(site.pid)
    honest = Honest(site, honest_every)
    honest.start()
    figures: dict = {}
    yield figures
    peak = memory(site.pid)["VmHWM"]
    honest.stop.set()
    honest.join(30)
    time.sleep(10)
    after = memory(site.pid)
    alive = site.proc is not None and site.proc.poll() is None
    print(f"  {name}: RSS before {before['VmRSS']:.1f} MiB, peak (VmHWM) {peak:.1f} MiB"
          f" (+{peak - before['VmRSS']:.1f}), 10 s after {after['VmRSS']:.1f} MiB;"
          f" server {'alive' if alive else 'DEAD'}")  # fmt: skip
    for key, value in figures.items():
        print(f"    {key}: {value}")
    print(f"    honest GET /login from 127.0.0.100: {honest.summary()}")


def big_bodies(site: PimailServer, count: int, size: int) -> None:
    token, cookie = prelogin(site)
    first = f"csrf={token}&username={USER}&password=".encode()
    results: list[int] = []

    def send() -> None:
        block = b"x" * MIB
        try:
            with tls_connect(site) as sock:
                try:
                    sock.sendall(head(size, cookie) + first)
                    sent = len(first)
                    while sent < size:
                        piece = block[: min(MIB, size - sent)]
                        sock.sendall(piece)
                        sent += len(piece)
                except OSError:
                    pass
                results.append(status(sock))
        except OSError:
            results.append(0)

    with measured(site, f"{count} x {size / 1e6:.0f} MB POST /login at once") as figures:
        started = time.monotonic()
        threads = [threading.Thread(target=send) for _ in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        figures["answers"] = " ".join(str(r or "closed") for r in results)
        figures["seconds"] = f"{time.monotonic() - started:.1f}"


def held_bodies(site: PimailServer, count: int) -> None:
    token, cookie = prelogin(site)
    length = 16 * 1024 - 1  # within the pre-login budget: read, not refused
    body = (f"csrf={token}&username={USER}&password=").encode().ljust(15 * 1024, b"p")
    socks = []
    base = memory(site.pid)["VmRSS"]
    with measured(site, f"{count} connections holding 15 KiB of a 16 KiB body") as figures:
        for n in range(count):
            try:
                sock = tls_connect(site, f"127.0.1.{n % 200 + 1}")
                sock.sendall(head(length, cookie) + body)
                socks.append(sock)
            except OSError:
                pass
        time.sleep(1)
        now = memory(site.pid)
        figures["connections held"] = len(socks)
        figures["RSS while held"] = f"{now['VmRSS']:.1f} MiB"
        figures["per connection"] = f"{(now['VmHWM'] - base) * 1024 / max(1, len(socks)):.0f} KiB"
        for sock in socks:
            sock.close()
    return None


def slow_bodies(
    site: PimailServer, addresses: int, per_address: int, every: float, seconds: float,
    length: int,
) -> None:  # fmt: skip
    token, cookie = prelogin(site)
    name = (f"{addresses} addresses x {per_address} connections trickling a POST /login body"
            f" of {length} octets (1 byte / {every:g} s, {seconds:g} s)")  # fmt: skip
    with measured(site, name, honest_every=5.0) as figures:

        def open_one(source: str) -> ssl.SSLSocket | None:
            try:
                sock = tls_connect(site, source)
                sock.sendall(head(length, cookie) + f"csrf={token}".encode())
                return sock
            except OSError:
                return None

        sources = [f"127.0.0.{a + 2}" for a in range(addresses) for _ in range(per_address)]
        started = time.monotonic()
        with ThreadPoolExecutor(32) as pool:  # the flood comes at once, not one by one
            made = list(pool.map(open_one, sources))
        socks = [s for s in made if s is not None]
        figures["connections made / refused at once"] = (
            f"{len(socks)} / {len(made) - len(socks)} (in {time.monotonic() - started:.1f} s)"
        )
        open_ = list(socks)
        deadline = time.monotonic() + seconds
        closed_at: list[float] = []
        while time.monotonic() < deadline and open_:
            for sock in list(open_):
                try:
                    sock.settimeout(0.001)
                    sock.sendall(b"a")
                    try:
                        sock.recv(100)  # an answer or the end: the server is done with it
                        raise ConnectionResetError
                    except TimeoutError:
                        pass
                except (OSError, ssl.SSLError):
                    open_.remove(sock)
                    closed_at.append(time.monotonic() - started)
            time.sleep(every)
        figures["closed by the server by the end"] = f"{len(closed_at)} of {len(socks)}" + (
            f" (the last {max(closed_at):.0f} s after the flood began)" if closed_at else ""
        )
        for sock in socks:
            sock.close()


def run(tree: Path, args: argparse.Namespace, label: str) -> None:
    os.environ["PYTHONPATH"] = str(tree / "app")
    work = Path(tempfile.mkdtemp(prefix="pimail-attack-"))
    site = PimailServer(work / "data", {"auth": {"failure_delay": 0.05}})
    try:
        site.cli("domain", "add", DOMAIN)
        site.cli("user", "add", USER, input=PASSWORD + "\n")
        site.start()
        rev = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
                             capture_output=True, text=True).stdout.strip()[:70]  # fmt: skip
        print(f"\n{label}: {rev}")
        print(f"  idle RSS {memory(site.pid)['VmRSS']:.1f} MiB")
        big_bodies(site, args.bodies, args.size)
        held_bodies(site, args.held)
        for length in (100_000, 10_000):  # over the pre-login budget, and within it
            slow_bodies(site, args.addresses, args.per_address, args.every, args.seconds, length)
    finally:
        site.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ref", help="also measure this git revision (first), e.g. 8928e7e")
    parser.add_argument("--size", type=int, default=39_000_000)
    parser.add_argument("--bodies", type=int, default=8)
    parser.add_argument("--held", type=int, default=100)
    parser.add_argument("--addresses", type=int, default=4)
    parser.add_argument("--per-address", type=int, default=128)
    parser.add_argument("--every", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args()
    trees: list[tuple[Path, str]] = []
    worktree = None
    if args.ref:
        worktree = Path(tempfile.mkdtemp(prefix="pimail-ref-")) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree),
                        args.ref], check=True, capture_output=True)  # fmt: skip
        trees.append((worktree, f"before ({args.ref})"))
    trees.append((REPO, "this tree"))
    try:
        for tree, label in trees:
            run(tree, args, label)
    finally:
        if worktree is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(worktree)], capture_output=True)  # fmt: skip
            shutil.rmtree(worktree.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
