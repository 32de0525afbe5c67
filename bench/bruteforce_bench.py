"""Brute-force benchmark: honest logins while one address guesses passwords.
Prints figures; never passes or fails.

A fresh pimail (.venv/bin/pimail, a new data directory, the default [auth]
limits unless given) with two accounts. Three phases of --seconds each, in
one run:

1. quiet: honest clients log in over IMAPS (connect, TLS, LOGIN, LOGOUT), in a
   loop, --honest at a time: bob from 127.0.0.2 (an address he never used) and
   alice from 127.0.0.3 (where she logged in once before the run);
2. attack: the same honest clients, while 127.0.0.1 guesses alice's password
   with --attackers IMAPS connections and as many web clients (POST /login with
   the CSRF double submit), each sending its next guess as soon as the last
   one is answered;
3. after: quiet again (the same as 1 but for what the attack left behind; the
   spread between 1 and 3 is the machine's noise).

For each phase: honest logins per second (and any that failed), and for the
attacker the attempts sent, how many passwords the server actually checked and
how many it refused unchecked (from its log: one line per decision). Loopback
only; every loop stops at the phase's end.

Usage:  .venv/bin/python bench/bruteforce_bench.py [--seconds 20] [--honest 4]
            [--attackers 25] [--failure-delay 1.0] [--max-failures 10] [--no-throttle] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
PIMAIL = REPO / ".venv" / "bin" / "pimail"
DOMAIN = "bench.test"
PASSWORD = "secret-pw-bench"
ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
ATTACKER, BOB_IP, ALICE_HOME = "127.0.0.1", "127.0.0.2", "127.0.0.3"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, workdir: Path, auth: dict[str, object]) -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        self.config = workdir / "pimail.toml"
        self.log = workdir / "serve.log"
        self.auth = auth
        self.imaps_port = free_port()
        self.https_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *words: str, stdin: bytes | None = None) -> str:
        done = subprocess.run(
            [str(PIMAIL), "--config", str(self.config), *words],
            input=stdin, capture_output=True, timeout=300,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"pimail {' '.join(words)}: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode()

    def _write(self, sections: dict[str, dict[str, object]]) -> None:
        lines = [f"data_dir = {json.dumps(str(self.data))}", 'hostname = "mail.bench.test"']
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
        self.config.write_text("\n".join(lines) + "\n")

    def prepare(self) -> None:
        self.data.mkdir(parents=True)
        sections: dict[str, dict[str, object]] = {
            "imap": {"listen_tls": [f"127.0.0.1:{self.imaps_port}"],
                     "max_connections_per_ip": 500},
            "web": {"listen_https": [f"127.0.0.1:{self.https_port}"]},
            "auth": self.auth,
        }  # fmt: skip
        self._write(sections)
        for line in self.cli("config", "show").splitlines():  # every other listener: free ports
            key = line.split(" = ", 1)[0]
            section, _, name = key.partition(".")
            if "listen" in name and name not in sections.get(section, {}):
                sections.setdefault(section, {})[name] = [f"127.0.0.1:{free_port()}"]
        self._write(sections)
        self.cli("domain", "add", DOMAIN)
        for address in (ALICE, BOB):
            self.cli("user", "add", address, stdin=f"{PASSWORD}\n".encode())

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            [str(PIMAIL), "--config", str(self.config), "serve"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while "pimail ready" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pimail did not start; see {self.log}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def decisions(self, ip: str, address: str) -> dict[str, int]:
        pattern = re.compile(
            rf"login service=\S+ user={re.escape(address)} ip={re.escape(ip)} decision=(\w+)"
        )
        found = {"ok": 0, "fail": 0, "refused": 0}
        for m in pattern.finditer(self.log.read_text(errors="replace")):
            found[m.group(1)] += 1
        return found

    def tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.data / "tls" / "ca" / "ca.pem"))
        context.check_hostname = False  # the certificate names mail.bench.test; we dial 127.0.0.1
        return context


# -- clients --------------------------------------------------------------------------------


async def imap_login(server: Server, address: str, password: str, source: str) -> bool:
    """One honest session: connect, TLS, LOGIN, LOGOUT. True if logged in."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.imaps_port, ssl=server.tls(), local_addr=(source, 0)
    )
    try:
        await reader.readline()
        writer.write(f'a LOGIN "{address}" "{password}"\r\nb LOGOUT\r\n'.encode())
        while not (line := await reader.readline()).startswith(b"a ") and line:
            pass
        return line.startswith(b"a OK")
    finally:
        writer.close()


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)


async def honest(server: Server, address: str, source: str, until: float, tally: Tally) -> None:
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            ok = await imap_login(server, address, PASSWORD, source)
        except OSError:
            ok = False
        tally.latencies.append(time.monotonic() - started)
        if ok:
            tally.ok += 1
        else:
            tally.failed += 1


async def imap_attacker(server: Server, until: float, sent: list[int]) -> None:
    """Guess after guess on one connection (a new one if the server closes it)."""
    n = 0
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.imaps_port, ssl=server.tls(), local_addr=(ATTACKER, 0)
            )
        except OSError:
            await asyncio.sleep(0.1)
            continue
        try:
            await reader.readline()
            while time.monotonic() < until:
                n += 1
                writer.write(f'g{n} LOGIN "{ALICE}" "guess-{id(writer)}-{n}"\r\n'.encode())
                sent[0] += 1
                while not (line := await reader.readline()).startswith(f"g{n} ".encode()):
                    if not line:
                        raise ConnectionError
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def web_attacker(server: Server, until: float, sent: list[int]) -> None:
    base = f"https://127.0.0.1:{server.https_port}"
    connector = aiohttp.TCPConnector(ssl=server.tls(), local_addr=(ATTACKER, 0))
    timeout = aiohttp.ClientTimeout(total=120)
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=jar, timeout=timeout) as http:
        async with http.get(base + "/login") as response:
            found = _CSRF.search(await response.text())
        csrf = found.group(1) if found else ""
        n = 0
        while time.monotonic() < until:
            n += 1
            data = {"csrf": csrf, "username": ALICE, "password": f"guess-{id(http)}-{n}"}
            sent[0] += 1
            try:
                async with http.post(base + "/login", data=data, allow_redirects=False) as r:
                    await r.read()
            except (aiohttp.ClientError, OSError):
                await asyncio.sleep(0.1)


# -- the phases -------------------------------------------------------------------------------


async def phase(server: Server, seconds: float, honest_clients: int, attackers: int) -> dict:
    before = server.decisions(ATTACKER, ALICE)
    until = time.monotonic() + seconds
    bob, alice = Tally(), Tally()
    imap_sent, web_sent = [0], [0]
    tasks = [honest(server, BOB, BOB_IP, until, bob) for _ in range(honest_clients)]
    tasks += [honest(server, ALICE, ALICE_HOME, until, alice) for _ in range(honest_clients)]
    tasks += [imap_attacker(server, until, imap_sent) for _ in range(attackers)]
    tasks += [web_attacker(server, until, web_sent) for _ in range(attackers)]
    started = time.monotonic()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.5)  # the last log lines
    after = server.decisions(ATTACKER, ALICE)
    return {
        "seconds": elapsed,
        "bob": bob,
        "alice": alice,
        "sent": imap_sent[0] + web_sent[0],
        "imap_sent": imap_sent[0],
        "web_sent": web_sent[0],
        "checked": after["fail"] + after["ok"] - before["fail"] - before["ok"],
        "refused": after["refused"] - before["refused"],
    }


def p50(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] * 1000 if values else 0.0


def report(name: str, r: dict) -> None:
    s = r["seconds"]
    for who, label in (("bob", f"bob from {BOB_IP} (new address)"),
                       ("alice", f"alice from {ALICE_HOME} (known address)")):  # fmt: skip
        t: Tally = r[who]
        print(f"  {name:7} honest {label}: {t.ok / s:6.1f} logins/s, {t.failed} failed, "
              f"p50 {p50(t.latencies):.0f} ms")  # fmt: skip
    if r["sent"]:
        print(f"  {name:7} attacker {ATTACKER} on alice: {r['sent']} attempts sent "
              f"({r['imap_sent']} IMAP, {r['web_sent']} web) in {s:.0f} s, "
              f"{r['checked']} checked, {r['refused']} refused unchecked")  # fmt: skip


async def run(args: argparse.Namespace, server: Server) -> None:
    assert await imap_login(server, ALICE, PASSWORD, ALICE_HOME)  # alice's known address
    quiet = await phase(server, args.seconds, args.honest, 0)
    attack = await phase(server, args.seconds, args.honest, args.attackers)
    after = await phase(server, args.seconds, args.honest, 0)  # the machine's noise, again quiet
    print(
        f"pimail login throttle, [auth] {json.dumps(server.auth)}, {args.honest} honest "
        f"clients per account, {args.attackers} IMAP + {args.attackers} web attackers"
    )
    report("quiet", quiet)
    report("attack", attack)
    report("after", after)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--honest", type=int, default=4)
    parser.add_argument("--attackers", type=int, default=25)
    parser.add_argument("--failure-delay", type=float, default=1.0)
    parser.add_argument("--max-failures", type=int, default=10, help="auth.max_failures")
    parser.add_argument(
        "--no-throttle", action="store_true",
        help="limits so high that every guess is checked: what the attack costs without it",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pimail-bruteforce-"))
    auth: dict[str, object] = {
        "failure_delay": args.failure_delay,
        "max_failures": args.max_failures,
    }
    if args.no_throttle:
        auth.update(max_failures=10**9, max_failures_per_account=10**9,
                    max_failures_known_address=10**9)  # fmt: skip
    server = Server(workdir, auth)
    try:
        server.prepare()
        server.start()
        asyncio.run(run(args, server))
    finally:
        server.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
