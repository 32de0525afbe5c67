"""Shared test fixtures: a real `pimail serve` in a subprocess, on loopback.

`PimailServer` owns a fresh data directory and free ports, runs the CLI as a
user would, and starts/stops/kills the server process.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnsserver import DnsServer
from pimail.dns.resolver import Resolver

ROOT = Path(__file__).resolve().parent.parent
PIMAIL = [sys.executable, "-m", "pimail.cli"]
PASSWORD = "secret-password"


_handed_out: set[int] = set()


def free_port() -> int:
    """A free loopback port, below Linux's ephemeral range (32768-60999): a port
    the kernel picked for us could be given to some client socket before the
    server binds it. Random per process, never the same twice in a process."""
    import random

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


def wait_for_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(100).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing answered on port {port}")


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


class PimailServer:
    def __init__(
        self, data_dir: Path, sections: dict | None = None, also_listen: list[str] | None = None,
        hostname: str = "mx.test", **smtp: object,
    ) -> None:  # fmt: skip
        self.data_dir = data_dir
        self.hostname = hostname
        self._also_listen = also_listen or []
        self.config = data_dir.parent / f"{data_dir.name}.toml"
        self._sections = sections or {}
        self._smtp = smtp
        self._write_config()

    def _write_config(self) -> None:
        """Pick ports and write the TOML (again if a port was taken meanwhile)."""
        data_dir = self.data_dir
        self.smtp_port = free_port()
        self.imap_port = free_port()
        self.imaps_port = free_port()
        self.pop3_port = free_port()
        self.pop3s_port = free_port()
        self.http_port = free_port()
        self.https_port = free_port()
        self.submission_port = free_port()
        self.submissions_port = free_port()
        tables: dict[str, dict] = {
            "smtp": {"listen": [f"127.0.0.1:{self.smtp_port}", *self._also_listen], **self._smtp},
            "imap": {
                "listen": [f"127.0.0.1:{self.imap_port}"],
                "listen_tls": [f"127.0.0.1:{self.imaps_port}"],
            },
            "pop3": {
                "listen": [f"127.0.0.1:{self.pop3_port}"],
                "listen_tls": [f"127.0.0.1:{self.pop3s_port}"],
            },
            "web": {
                "listen_http": [f"127.0.0.1:{self.http_port}"],
                "listen_https": [f"127.0.0.1:{self.https_port}"],
            },
            "submission": {
                "listen_starttls": [f"127.0.0.1:{self.submission_port}"],
                "listen_tls": [f"127.0.0.1:{self.submissions_port}"],
            },
            "auth": {"failure_delay": 0.2},
        }
        for name, values in self._sections.items():
            tables.setdefault(name, {}).update(values)
        lines = [f'data_dir = "{data_dir}"', f'hostname = "{self.hostname}"']
        for name, values in tables.items():
            lines.append(f"[{name}]")
            lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{data_dir.name}.log"

    # -- the CLI, as a user runs it ------------------------------------------

    def cli(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*PIMAIL, "--config", str(self.config), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"pimail {' '.join(args)} failed: {result.stderr}")
        return result

    def add_user(self, address: str, password: str = PASSWORD) -> None:
        self.cli("user", "add", address, input=password + "\n")

    # -- the server process ----------------------------------------------------

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        readies = self._readies()
        log = open(self.log, "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            [*PIMAIL, "--config", str(self.config), "serve"], stdout=log, stderr=log
        )
        try:
            wait_for_port(self.smtp_port)
        except TimeoutError as e:
            self.proc.kill()
            self.proc.wait()
            text = self.log.read_text()
            if "address already in use" in text[-3000:] and not getattr(self, "_retried", False):
                # Another process took one of our ports between picking and binding.
                self._retried = True
                self.log.write_text("")
                self._write_config()
                self.start()
                return
            raise AssertionError("server did not start:\n" + text[-3000:]) from e
        # The web listeners come last (aiohttp takes a moment to import).
        deadline = time.monotonic() + 60
        while self._readies() == readies and self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError("server not ready:\n" + self.log.read_text()[-3000:])
            time.sleep(0.05)

    def _readies(self) -> int:
        try:
            return self.log.read_text(errors="replace").count(" pimail ready data_dir=")
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client_tls(self) -> ssl.SSLContext:
        """A client context that trusts this server's internal CA, like a user
        who installed it (`pimail cert ca`)."""
        ctx = ssl.create_default_context(cafile=self.data_dir / "tls" / "ca" / "ca.pem")
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    # -- looking at what is stored ---------------------------------------------

    def maildir(self, address: str, folder: str = "") -> Path:
        local, domain = address.split("@")
        path = self.data_dir / "mail" / domain / local
        return path / folder if folder else path

    def messages(self, address: str, folder: str = "") -> list[Path]:
        base = self.maildir(address, folder)
        return sorted(
            p for sub in ("new", "cur") if (base / sub).is_dir() for p in (base / sub).iterdir()
        )

    def account_id(self, address: str) -> int:
        main = sqlite3.connect(self.data_dir / "pimail.db")
        local, domain = address.split("@")
        [(account_id,)] = main.execute(
            "SELECT a.id FROM accounts a JOIN domains d ON d.id = a.domain_id"
            " WHERE a.localpart = ? AND d.name = ?",
            (local, domain),
        ).fetchall()
        main.close()
        return int(account_id)

    def index_rows(self, address: str, folder: str = "INBOX") -> list[sqlite3.Row]:
        row = (self.account_id(address),)
        con = sqlite3.connect(self.data_dir / "index.db")
        con.row_factory = sqlite3.Row
        rows = con.execute(
            "SELECT m.*, b.uidvalidity FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id"
            " WHERE b.account_id = ? AND b.name = ? ORDER BY m.uid",
            (row[0], folder),
        ).fetchall()
        con.close()
        return rows


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[object]:
    servers: list[PimailServer] = []

    def make(
        name: str = "data", sections: dict | None = None, also_listen: list[str] | None = None,
        hostname: str = "mx.test", **smtp: object,
    ) -> PimailServer:  # fmt: skip
        server = PimailServer(tmp_path / name, sections, also_listen, hostname, **smtp)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server: object) -> Iterator[PimailServer]:
    """A running server with domain example.org, users alice and bob."""
    s = make_server()  # type: ignore[operator]
    s.cli("domain", "add", "example.org")
    s.add_user("alice@example.org")
    s.add_user("bob@example.org")
    s.start()
    yield s
    s.stop()


os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")


# -- DNS on loopback, for modules that ask it many questions ----------------------


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    """One DNS server per test module (stopping one takes up to a second)."""
    server = DnsServer().start()
    yield server
    server.stop()


@pytest.fixture
def zone(dns_server: DnsServer) -> DnsServer:
    """The module's DNS server, emptied for this test."""
    dns_server.reset()
    return dns_server


@pytest.fixture
def resolver(zone: DnsServer) -> Resolver:
    """pimail's resolver pointed at `zone`; a new one per test: an empty cache."""
    return Resolver([zone.address], timeout=2.0)

