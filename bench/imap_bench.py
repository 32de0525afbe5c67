"""IMAP/POP3 benchmark: pimail beside Dovecot 2.3 (Debian bookworm), in one invocation.

Each server's INBOX holds the same corpus (bench/corpus.py, default 10,000 messages,
about 67 MB), and this script measures, over loopback, with a small raw-socket client
(not imaplib, whose per-line Python work would dominate the figures):

- first sync: `UID FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE)`, the whole
  response read; cold (Dovecot: its index and cache files deleted; pimail started by
  this script: index rebuilt by `pimail reindex`, fresh process) and warm; the SELECT
  before it is timed apart;
- `UID SEARCH TEXT <rare word>`, and whether the count is the corpus's known answer;
- `UID STORE 1:1000 +FLAGS.SILENT (\\Flagged)` (the flag is removed, untimed, first);
- flag resync after reconnect: connect, LOGIN, SELECT INBOX, `UID FETCH 1:* (FLAGS)`,
  all timed; and with CONDSTORE (if offered): SELECT INBOX (CONDSTORE) and
  `UID FETCH 1:* (FLAGS) (CHANGEDSINCE m)`, m = HIGHESTMODSEQ before the STORE;
- POP3: RETR of messages 1..1000 over one connection (after USER/PASS and STAT);
- memory per idle IMAP connection: 200 connections, each LOGIN + SELECT INBOX + IDLE.
  Dovecot: sum of PSS (and of private memory) of the new `imap` processes of the
  benchmark instance, / 200. pimail (or any server given by pid): growth of the
  process's PSS and RSS from before to after, / 200.

Timed figures are medians of --runs runs (cold: Dovecot every run; pimail when this
script started it, every run, at the cost of a restart and reindex; a server given
by address: the first measurement only). Nothing passes or fails on time.

Dovecot is the instance of bench/classic/imap_setup.sh (run it once, as root); its
Maildir is written directly. pimail is started from .venv/bin/pimail with a fresh data
directory (`start_pimail`), its Maildir written directly and indexed with
`pimail reindex`; or a running server is given with --pimail HOST:PORT --pimail-pid PID,
loaded over IMAP APPEND (--pimail-load append) or already loaded (none).

Usage (root, from the repository):
  bench/classic/imap_setup.sh                      # once: install + configure + start
  .venv/bin/python bench/imap_bench.py             # Dovecot and a fresh pimail
  .venv/bin/python bench/imap_bench.py --dovecot   # Dovecot only
  .venv/bin/python bench/imap_bench.py --pimail 127.0.0.1:2143 --pimail-pid 1234 \\
      --pimail-pop3-port 2110 --pimail-load append
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import corpus

log = logging.getLogger("bench.imap_bench")

REPO = Path(__file__).resolve().parents[1]
IMAP_SETUP = REPO / "bench" / "classic" / "imap_setup.sh"
SETUP_SETTINGS = Path("/etc/pimail-bench-imap/settings")  # written by imap_setup.sh
DOVECOT_BASE_DIR = Path("/run/dovecot-imapbench")
DOVECOT_IMAP_EXE = "/usr/lib/dovecot/imap"
DOVECOT_MAIL_USER = "benchmail"
DOVECOT_GREETING = b"imap-bench"  # login_greeting of imap_setup.sh's instance
DOMAIN = "bench.test"
USER = corpus.USER_ADDRESS
PASSWORD = "secret-pw"
FIRST_SYNC_ITEMS = "(UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE)"
RECV_SIZE = 256 * 1024
MAX_LINE = 1024 * 1024  # a response line (without literals) longer than this is an error
STARTUP_TIMEOUT = 120.0
IDLE_WAIT = 60.0  # seconds to let a server go quiet before the warm figures

_LITERAL = re.compile(rb"\{(\d+)\+?\}$")


class ProtocolError(Exception):
    """The server answered something this client does not expect."""


# --- a minimal IMAP client -----------------------------------------------------------


@dataclass
class Response:
    status: str  # OK, NO or BAD
    text: str
    untagged: list[bytes]  # kept only when asked for
    untagged_count: int
    octets: int


class ImapClient:
    """A blocking IMAP client over a raw socket that reads responses (with literals)
    with a few bytes.find calls each, so that its own cost stays small."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0  # where the next response starts in buf
        self.offset = 0  # octets of the stream dropped from the front of buf
        self.tags = 0
        self.capabilities: set[str] = set()
        self.greeting = self._read_response(keep=True)
        if not self.greeting.startswith(b"* OK"):
            raise ProtocolError(f"greeting: {self.greeting[:200]!r}")

    def close(self) -> None:
        self.sock.close()

    @property
    def stream_position(self) -> int:
        return self.offset + self.pos

    def _fill(self) -> None:
        data = self.sock.recv(RECV_SIZE)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def _read_response(self, keep: bool) -> bytes:
        """One whole response, literals included. Returns it all with keep, else its
        first 256 octets (enough to tell a tagged response or a continuation)."""
        if self.pos > 4 * RECV_SIZE:  # only between responses: positions stay valid
            del self.buf[: self.pos]
            self.offset += self.pos
            self.pos = 0
        start = scan = self.pos
        while True:
            end = self.buf.find(b"\r\n", scan)
            while end < 0:
                if len(self.buf) - scan > MAX_LINE:
                    raise ProtocolError("response line too long")
                self._fill()
                end = self.buf.find(b"\r\n", scan)
            literal = _LITERAL.search(self.buf, max(scan, end - 12), end)
            if literal is None:
                self.pos = end + 2
                return bytes(self.buf[start : end if keep else min(end, start + 256)])
            scan = end + 2 + int(literal.group(1))
            while len(self.buf) < scan:
                self._fill()

    def command(self, text: str, *, keep: bool = False) -> Response:
        """Send one command, read up to its tagged response."""
        self.tags += 1
        tag = f"A{self.tags:04d}"
        self.sock.sendall(f"{tag} {text}\r\n".encode())
        return self._until_tagged(tag.encode(), keep)

    def _until_tagged(self, tag: bytes, keep: bool) -> Response:
        """Untagged responses (kept with keep, else only counted) up to the tagged one."""
        untagged: list[bytes] = []
        first = self.stream_position
        prefix = tag + b" "
        for count in range(10_000_000):  # a bound, far above any mailbox here
            line = self._read_response(keep=keep)
            if line.startswith(prefix):
                status, _, text = line[len(prefix) :].decode(errors="replace").partition(" ")
                octets = self.stream_position - first
                return Response(status.upper(), text, untagged, count, octets)
            if line.startswith(b"+"):
                raise ProtocolError(f"unexpected continuation: {line[:200]!r}")
            if keep:
                untagged.append(line)
        raise ProtocolError("no tagged response after 10,000,000 untagged ones")

    def ok(self, text: str, *, keep: bool = False) -> Response:
        response = self.command(text, keep=keep)
        if response.status != "OK":
            verb = text.split(" ")[0] if not text.startswith("LOGIN") else "LOGIN"
            raise ProtocolError(f"{verb}: {response.status} {response.text}")
        return response

    def login(self, user: str, password: str) -> None:
        self.ok(f"LOGIN {_quote(user)} {_quote(password)}")
        caps = self.ok("CAPABILITY", keep=True)
        for line in caps.untagged:
            if line.upper().startswith(b"* CAPABILITY "):
                self.capabilities = set(line[13:].decode().upper().split())

    def select(self, mailbox: str = "INBOX", condstore: bool = False) -> dict[str, int]:
        """SELECT; returns EXISTS, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ where sent."""
        suffix = " (CONDSTORE)" if condstore else ""
        response = self.ok(f"SELECT {_quote(mailbox)}{suffix}", keep=True)
        info: dict[str, int] = {}
        for line in [*response.untagged, response.text.encode()]:
            if m := re.match(rb"\* (\d+) EXISTS", line):
                info["EXISTS"] = int(m.group(1))
            for key in (b"UIDVALIDITY", b"UIDNEXT", b"HIGHESTMODSEQ"):
                if m := re.search(rb"\[" + key + rb" (\d+)\]", line):
                    info[key.decode()] = int(m.group(1))
        return info

    def append(self, mailbox: str, message: corpus.CorpusMessage) -> None:
        """APPEND with flags and INTERNALDATE; LITERAL+ when offered (RFC 7888)."""
        self.tags += 1
        tag = f"A{self.tags:04d}"
        date = message.date.strftime("%d-%b-%Y %H:%M:%S +0000")
        plus = "+" if "LITERAL+" in self.capabilities else ""
        head = (
            f"{tag} APPEND {_quote(mailbox)} ({' '.join(message.flags)}) "
            f'"{date}" {{{len(message.data)}{plus}}}\r\n'
        )
        self.sock.sendall(head.encode())
        if not plus:
            line = self._read_response(keep=True)
            if not line.startswith(b"+"):
                raise ProtocolError(f"APPEND: no continuation: {line[:200]!r}")
        self.sock.sendall(message.data + b"\r\n")
        response = self._until_tagged(tag.encode(), keep=False)
        if response.status != "OK":
            raise ProtocolError(f"APPEND: {response.status} {response.text}")

    def start_idle(self) -> None:
        self.tags += 1
        self.sock.sendall(f"A{self.tags:04d} IDLE\r\n".encode())
        for _ in range(100):
            line = self._read_response(keep=True)
            if line.startswith(b"+"):
                return
            if not line.startswith(b"*"):
                raise ProtocolError(f"IDLE: {line[:200]!r}")
        raise ProtocolError("IDLE: no continuation after 100 responses")

    def end_idle_and_logout(self) -> None:
        """Polite and quick: DONE and LOGOUT without waiting for the answers."""
        with suppress(OSError):
            self.sock.sendall(b"DONE\r\nZ LOGOUT\r\n")
        self.close()


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextmanager
def imap_session(server: Server, *, select: bool = True) -> Iterator[ImapClient]:
    client = ImapClient(server.host, server.imap_port, server.timeout)
    try:
        client.login(server.user, server.password)
        if select:
            client.select()
        yield client
        with suppress(OSError, ProtocolError):
            client.command("LOGOUT")
    finally:
        client.close()


# --- POP3 -------------------------------------------------------------------------------


def pop3_retr(
    host: str, port: int, user: str, password: str, count: int, timeout: float
) -> tuple[float, int, int]:
    """USER/PASS/STAT, then RETR 1..count timed. Returns (seconds, octets, messages)."""
    with closing(socket.create_connection((host, port), timeout=timeout)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()

        def status() -> bytes:
            while (end := buf.find(b"\r\n")) < 0:
                if len(buf) > MAX_LINE or not (data := sock.recv(RECV_SIZE)):
                    raise ProtocolError("POP3: no status line")
                buf.extend(data)
            line = bytes(buf[:end])
            del buf[: end + 2]
            if not line.startswith(b"+OK"):
                raise ProtocolError(f"POP3: {line[:200]!r}")
            return line

        def send(line: str) -> bytes:
            sock.sendall(line.encode() + b"\r\n")
            return status()

        status()
        send(f"USER {user}")
        send(f"PASS {password}")
        stat = send("STAT").split()
        available = int(stat[1])
        if available < count:
            log.warning("pop3 maildrop has %d messages, fewer than %d", available, count)
            count = available
        octets = 0
        started = time.perf_counter()
        for number in range(1, count + 1):
            send(f"RETR {number}")
            # The body ends with CRLF "." CRLF; an empty one is "." CRLF at once.
            scan = 0
            buf[0:0] = b"\r\n"
            while (end := buf.find(b"\r\n.\r\n", scan)) < 0:
                scan = max(0, len(buf) - 4)
                if not (data := sock.recv(RECV_SIZE)):
                    raise ConnectionError("POP3: server closed the connection")
                buf.extend(data)
            octets += end
            del buf[: end + 5]
        seconds = time.perf_counter() - started
        with suppress(OSError, ProtocolError):
            send("QUIT")
        return seconds, octets, count


# --- memory -----------------------------------------------------------------------------


def proc_kib(pid: int, path: str, keys: tuple[str, ...]) -> dict[str, int]:
    """'Key:  123 kB' fields of /proc/PID/<path> (smaps_rollup, status); {} if gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in keys:
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return out


def process_memory(pid: int) -> dict[str, int]:
    """Rss, Pss and private (clean + dirty) memory of one process, KiB."""
    m = proc_kib(pid, "smaps_rollup", ("Rss", "Pss", "Private_Clean", "Private_Dirty"))
    if not m:
        return {}
    return {
        "rss": m.get("Rss", 0),
        "pss": m.get("Pss", 0),
        "private": m.get("Private_Clean", 0) + m.get("Private_Dirty", 0),
    }


def children_with_exe(parent: int, exe: str) -> set[int]:
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent and os.readlink(f"/proc/{entry}/exe") == exe:
                found.add(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(pid: int, limit: float = IDLE_WAIT) -> None:
    """Wait (at most `limit` s) until a process uses less than 5% CPU over 1 s, so that
    background work (pimail's MIME analysis after a reindex) does not blur the figures."""
    deadline = time.monotonic() + limit
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = cpu_seconds(pid)
        if now - last < 0.05:
            return
        last = now
    log.warning("pid=%d still busy after %.0f s; measuring anyway", pid, limit)


# --- the servers ------------------------------------------------------------------------


@dataclass
class Server:
    """Where a server listens and how to make it cold and weigh its connections."""

    name: str
    host: str
    imap_port: int
    pop3_port: int | None
    user: str = USER
    password: str = PASSWORD
    timeout: float = 300.0
    cold: str = "the first measurement after the corpus was loaded"

    def make_cold(self) -> bool:
        """Drop what the server keeps about the mailbox; False if it cannot."""
        return False

    def quiet(self) -> None:
        """Return once background work is done (best effort)."""

    def fresh_for_memory(self) -> None:
        """Start over, if possible, so that heap left by the earlier steps (a 7 MB FETCH
        response, say) does not absorb the connections' memory."""

    def memory_before(self) -> object:
        return None

    def memory_per_connection(self, before: object, connections: int) -> dict[str, float]:
        return {}


@dataclass
class DovecotServer(Server):
    """The bench/classic/imap_setup.sh instance; its Maildir is written directly."""

    root: Path = Path("/var/tmp/pimail-bench-imap")
    cold: str = "dovecot.index* and dovecot.list.index* deleted before each run"

    @property
    def maildir(self) -> Path:
        return self.root / "mail" / DOMAIN / "user"

    @staticmethod
    def master_pid() -> int | None:
        try:
            pid = int((DOVECOT_BASE_DIR / "master.pid").read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def load(self, count: int, seed: int) -> None:
        owner = pwd.getpwnam(DOVECOT_MAIL_USER)
        if self.maildir.exists():
            shutil.rmtree(self.maildir)
        started = time.perf_counter()
        corpus.write_maildir(
            self.maildir, corpus.generate(count, seed), uid=owner.pw_uid, gid=owner.pw_gid
        )
        log.info("dovecot corpus written seconds=%.1f", time.perf_counter() - started)

    def make_cold(self) -> bool:
        # Index, transaction log and cache; dovecot-uidlist (the UIDs) stays.
        for path in self.maildir.glob("dovecot.index*"):
            path.unlink()
        for path in self.maildir.glob("dovecot.list.index*"):
            path.unlink()
        return True

    def imap_processes(self) -> set[int]:
        master = self.master_pid()
        return children_with_exe(master, DOVECOT_IMAP_EXE) if master else set()

    def memory_before(self) -> object:
        return self.imap_processes()

    def memory_per_connection(self, before: object, connections: int) -> dict[str, float]:
        assert isinstance(before, set)
        pids = self.imap_processes() - before
        sums = {"pss": 0, "private": 0, "rss": 0}
        for pid in pids:
            for key, value in process_memory(pid).items():
                sums[key] += value
        log.info("dovecot imap processes=%d sums_kib=%s", len(pids), sums)
        if len(pids) != connections:
            log.warning("expected %d new imap processes, found %d", connections, len(pids))
        return {
            "pss": sums["pss"] / connections,
            "private_or_rss": sums["private"] / connections,
            "processes": len(pids),
        }


@dataclass
class PidServer(Server):
    """A single-process server (pimail) weighed by the growth of one pid's memory."""

    pid: int = 0
    # Restarts it with its index rebuilt and returns the new pid (when this script owns it).
    restart: Callable[[], int] | None = None
    cold_pending: bool = True  # nothing has been read since the corpus was loaded

    def make_cold(self) -> bool:
        if self.restart is not None:
            self.cold = "a new process after `pimail reindex`, each run"
        if self.cold_pending:
            self.cold_pending = False
            return True
        if self.restart is not None:
            self.pid = self.restart()
            return True
        return False

    def quiet(self) -> None:
        wait_until_quiet(self.pid)

    def fresh_for_memory(self) -> None:
        if self.restart is not None:
            self.pid = self.restart()
            self.quiet()

    def memory_before(self) -> object:
        time.sleep(1.0)
        return process_memory(self.pid)

    def memory_per_connection(self, before: object, connections: int) -> dict[str, float]:
        assert isinstance(before, dict)
        time.sleep(1.0)
        after = process_memory(self.pid)
        log.info("pid=%d memory_kib before=%s after=%s", self.pid, before, after)
        if not before or not after:
            return {}
        return {
            "pss": (after["pss"] - before["pss"]) / connections,
            "private_or_rss": (after["rss"] - before["rss"]) / connections,
            "processes": 1,
        }


# --- pimail, started by this script ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_greeting(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pimail exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                if s.recv(512).startswith(b"* OK"):
                    s.sendall(b"A LOGOUT\r\n")
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no IMAP greeting on 127.0.0.1:{port} after {timeout:.0f} s")


# Settings pimail gets when its version has them: the same footing as the Dovecot of
# imap_setup.sh (plaintext LOGIN on loopback, room for 200 connections from one IP).
PIMAIL_EXTRAS = {
    "imap.allow_plaintext_auth": True,
    "imap.max_connections_per_ip": 1000,
    "pop3.allow_plaintext_auth": True,
    "pop3.max_connections_per_ip": 1000,
}


def pimail_toml(data: Path, sections: dict[str, dict[str, object]]) -> str:
    lines = [f"data_dir = {json.dumps(str(data))}"]
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def start_pimail(
    pimail: Path, workdir: Path, ports: tuple[int, int, int], count: int, seed: int, fresh: bool
) -> subprocess.Popen[bytes]:
    """Everything pimail-specific: with fresh, a new data directory, config, domain,
    user and the corpus as Maildir files (named with their UIDs so that UID n is corpus
    message n-1, as in Dovecot); then `pimail reindex` and `pimail serve`."""
    config, data = workdir / "pimail.toml", workdir / "data"

    def cli(*words: str, stdin: bytes | None = None) -> str:
        command = [str(pimail), "--config", str(config), *words]
        done = subprocess.run(command, input=stdin, capture_output=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(command)}: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode()

    if fresh:
        shutil.rmtree(workdir, ignore_errors=True)
        data.mkdir(parents=True)
        smtp, imap, pop3 = (f"127.0.0.1:{port}" for port in ports)
        sections: dict[str, dict[str, object]] = {
            "smtp": {"listen": [smtp]},
            "imap": {"listen": [imap]},
            "pop3": {"listen": [pop3]},
        }
        config.write_text(pimail_toml(data, sections))
        # Every other listener on a free port (defaults could collide with other runs),
        # and the extras this version of pimail knows.
        for line in cli("config", "show").splitlines():
            key = line.split(" = ", 1)[0]
            section, _, name = key.partition(".")
            if "listen" in name and name not in sections.get(section, {}):
                sections.setdefault(section, {})[name] = [f"127.0.0.1:{free_port()}"]
            if key in PIMAIL_EXTRAS:
                sections.setdefault(section, {})[name] = PIMAIL_EXTRAS[key]
        config.write_text(pimail_toml(data, sections))
        log.info("pimail config %s", sections)
        cli("domain", "add", DOMAIN)
        cli("user", "add", USER, stdin=f"{PASSWORD}\n".encode())
        if count:
            messages = corpus.generate(count, seed)
            corpus.write_maildir(data / "mail" / DOMAIN / "user", messages, uid_names=True)
    started = time.perf_counter()
    cli("reindex")
    log.info("pimail reindex seconds=%.1f", time.perf_counter() - started)
    with open(workdir / "serve.log", "ab") as out:
        proc = subprocess.Popen(
            [str(pimail), "--config", str(config), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        wait_for_greeting(ports[1], proc, STARTUP_TIMEOUT)
    except RuntimeError:
        stop_process(proc)
        tail = (workdir / "serve.log").read_text(errors="replace")[-2000:]
        log.error("pimail did not start; end of %s:\n%s", workdir / "serve.log", tail)
        raise
    log.info("pimail pid=%d imap=%d pop3=%d data=%s", proc.pid, ports[1], ports[2], data)
    return proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        log.warning("pid=%d ignored SIGTERM; killing it", proc.pid)
        proc.kill()
        proc.wait(timeout=30)


# --- the measurements -------------------------------------------------------------------


@dataclass
class Results:
    name: str
    figures: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cold: str = ""  # what "cold" meant for this server

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)
        self.figures[key] = statistics.median(self.samples[key])


def timed_first_sync(server: Server, count: int) -> tuple[float, float, int]:
    """(SELECT seconds, FETCH seconds, FETCH octets) on a new connection."""
    with imap_session(server, select=False) as client:
        started = time.perf_counter()
        info = client.select()
        selected = time.perf_counter()
        response = client.ok(f"UID FETCH 1:* {FIRST_SYNC_ITEMS}")
        fetched = time.perf_counter()
    if info.get("EXISTS") != count or response.untagged_count != count:
        log.warning(
            "first sync: EXISTS=%s FETCH responses=%d, expected %d",
            info.get("EXISTS"),
            response.untagged_count,
            count,
        )
    return selected - started, fetched - selected, response.octets


def check_mailbox(server: Server, count: int, seed: int) -> bool:
    """EXISTS is the corpus size and UIDs 1, n/2, n are the corpus's messages in order."""
    with imap_session(server, select=False) as client:
        info = client.select()
        log.info("%s INBOX %s capabilities=%s", server.name, info, sorted(client.capabilities))
        if info.get("EXISTS") != count:
            log.error("%s: INBOX holds %s messages, not %d", server.name, info.get("EXISTS"), count)
            return False
        for uid in sorted({1, count // 2 + 1, count}):
            got = client.ok(f"UID FETCH {uid} (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])", keep=True)
            expected = corpus.message_id(uid - 1, seed).encode()
            if not any(expected in line for line in got.untagged):
                log.warning("%s: UID %d is not corpus message %d", server.name, uid, uid - 1)
    return True


def bench_first_sync(server: Server, results: Results, count: int, runs: int) -> None:
    for _ in range(runs):
        if not server.make_cold():
            break
        select_s, fetch_s, octets = timed_first_sync(server, count)
        results.add("sync_cold", fetch_s)
        results.add("select_cold", select_s)
        log.info("%s cold select=%.3f fetch=%.3f octets=%d", server.name, select_s, fetch_s, octets)
    server.quiet()
    for _ in range(runs):
        select_s, fetch_s, octets = timed_first_sync(server, count)
        results.add("sync_warm", fetch_s)
        results.add("select_warm", select_s)
        results.figures["sync_octets"] = octets
        log.info("%s warm select=%.3f fetch=%.3f octets=%d", server.name, select_s, fetch_s, octets)


def bench_search(server: Server, results: Results, count: int, runs: int) -> None:
    expected = corpus.rare_word_count(count)
    for _ in range(runs):
        with imap_session(server) as client:
            started = time.perf_counter()
            response = client.ok(f"UID SEARCH TEXT {corpus.RARE_WORD}", keep=True)
            seconds = time.perf_counter() - started
        found = sum(
            len(line.split()) - 2 for line in response.untagged if line.startswith(b"* SEARCH")
        )
        results.add("search_text", seconds)
        results.figures["search_found"] = found
        log.info(
            "%s search seconds=%.3f found=%d expected=%d", server.name, seconds, found, expected
        )
    if results.figures["search_found"] != expected:
        results.notes.append(f"SEARCH TEXT found {found}, the corpus has {expected}")


def bench_store_and_resync(
    server: Server, results: Results, count: int, runs: int, store_count: int
) -> None:
    modseq: int | None = None
    for _ in range(runs):
        with imap_session(server, select=False) as client:
            condstore = "CONDSTORE" in client.capabilities or "QRESYNC" in client.capabilities
            client.select()
            client.ok(f"UID STORE 1:{store_count} -FLAGS.SILENT (\\Flagged)")  # untimed reset
            if condstore:
                # RFC 3501 6.3.10: no STATUS on the selected mailbox, so leave it first.
                client.ok("UNSELECT" if "UNSELECT" in client.capabilities else "CLOSE")
                status = client.ok("STATUS INBOX (HIGHESTMODSEQ)", keep=True)
                m = re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join(status.untagged))
                modseq = int(m.group(1)) if m else None
                client.select()
            started = time.perf_counter()
            client.ok(f"UID STORE 1:{store_count} +FLAGS.SILENT (\\Flagged)")
            results.add("store", time.perf_counter() - started)
    log.info("%s store samples=%s", server.name, results.samples["store"])

    for _ in range(runs):
        started = time.perf_counter()
        with imap_session(server) as client:
            response = client.ok("UID FETCH 1:* (FLAGS)")
            results.add("resync", time.perf_counter() - started)
        if response.untagged_count != count:
            log.warning("resync: %d FETCH responses, expected %d", response.untagged_count, count)
    log.info("%s resync samples=%s", server.name, results.samples["resync"])

    if modseq is None:
        results.notes.append("no CONDSTORE: CHANGEDSINCE resync not measured")
        return
    for _ in range(runs):
        started = time.perf_counter()
        with imap_session(server, select=False) as client:
            client.select(condstore=True)
            response = client.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq})")
            results.add("resync_changedsince", time.perf_counter() - started)
        results.figures["changedsince_found"] = response.untagged_count
    log.info(
        "%s changedsince samples=%s found=%d",
        server.name,
        results.samples["resync_changedsince"],
        response.untagged_count,
    )


def bench_pop3(server: Server, results: Results, runs: int, retr_count: int) -> None:
    if server.pop3_port is None:
        results.notes.append("no POP3 port: POP3 not measured")
        return
    for _ in range(runs):
        seconds, octets, done = pop3_retr(
            server.host, server.pop3_port, server.user, server.password, retr_count, server.timeout
        )
        results.add("pop3_retr", seconds)
        results.figures["pop3_octets"] = octets
        log.info("%s pop3 retr=%d seconds=%.3f octets=%d", server.name, done, seconds, octets)


def bench_idle_memory(server: Server, results: Results, connections: int) -> None:
    server.fresh_for_memory()
    # Dovecot rescans a Maildir whose directory changed within the last second or two
    # (its mtime is not yet trustworthy), on every SELECT: let the earlier steps' flag
    # changes age, then let one session do the one-time work (sync, opening the index).
    time.sleep(3.0)
    with imap_session(server):
        pass
    before = server.memory_before()
    clients: list[ImapClient] = []
    try:
        for _ in range(connections):
            client = ImapClient(server.host, server.imap_port, server.timeout)
            clients.append(client)
            client.login(server.user, server.password)
            client.select()
            client.start_idle()
        time.sleep(2.0)  # let every process settle
        per_connection = server.memory_per_connection(before, connections)
    finally:
        for client in clients:
            client.end_idle_and_logout()
    if per_connection:
        results.figures["idle_pss_kib"] = per_connection["pss"]
        results.figures["idle_private_kib"] = per_connection["private_or_rss"]
    log.info("%s idle memory per connection (KiB): %s", server.name, per_connection)


def append_corpus(server: Server, count: int, seed: int) -> float:
    """APPEND the corpus into an empty INBOX; returns the seconds it took."""
    with imap_session(server, select=False) as client:
        exists = client.select().get("EXISTS", 0)
        if exists:
            raise RuntimeError(f"{server.name}: INBOX holds {exists} messages; APPEND needs none")
        started = time.perf_counter()
        for message in corpus.generate(count, seed):
            client.append("INBOX", message)
        seconds = time.perf_counter() - started
    log.info("%s appended=%d seconds=%.1f", server.name, count, seconds)
    return seconds


def run_suite(
    server: Server, args: argparse.Namespace, append_seconds: float | None = None
) -> Results:
    results = Results(server.name)
    if append_seconds is not None:
        results.figures["append"] = append_seconds
    if not check_mailbox(server, args.count, args.seed):
        results.notes.append("INBOX does not hold the corpus")
        return results
    steps: list[tuple[str, Callable[[], None]]] = [
        ("first sync", lambda: bench_first_sync(server, results, args.count, args.runs)),
        ("search", lambda: bench_search(server, results, args.count, args.runs)),
        (
            "store/resync",
            lambda: bench_store_and_resync(server, results, args.count, args.runs, args.store),
        ),
        ("pop3", lambda: bench_pop3(server, results, args.runs, args.retr)),
        ("idle memory", lambda: bench_idle_memory(server, results, args.connections)),
    ]
    for label, step in steps:
        try:
            step()
        except (OSError, ProtocolError) as e:
            log.error("%s: %s: %s", server.name, label, e)
            results.notes.append(f"{label}: error: {e}")
    results.cold = server.cold
    return results


# --- driving both servers ---------------------------------------------------------------


def setup_settings() -> dict[str, str]:
    """ROOT and ports of the last `imap_setup.sh configure`, if it ran."""
    try:
        words = shlex.split(SETUP_SETTINGS.read_text(), comments=True)
    except OSError:
        return {}
    return dict(w.split("=", 1) for w in words if "=" in w)


def run_dovecot(args: argparse.Namespace) -> Results:
    server = DovecotServer(
        "dovecot",
        "127.0.0.1",
        args.dovecot_imap_port,
        args.dovecot_pop3_port,
        timeout=args.timeout,
        root=args.dovecot_root,
    )
    if os.geteuid() != 0:
        raise RuntimeError("the Dovecot side needs root (it writes benchmail's Maildir)")
    started_here = False
    if server.master_pid() is None:
        log.info("starting the benchmark's Dovecot with %s", IMAP_SETUP)
        subprocess.run(["bash", str(IMAP_SETUP), "start"], check=True, timeout=120)
        started_here = True
    try:
        with closing(ImapClient(server.host, server.imap_port, server.timeout)) as probe:
            if DOVECOT_GREETING not in probe.greeting:
                raise RuntimeError(
                    f"127.0.0.1:{server.imap_port} is not imap_setup.sh's Dovecot "
                    f"(greeting {probe.greeting[:80]!r}): is another one on that port?"
                )
        server.load(args.count, args.seed)
        return run_suite(server, args)
    finally:
        if started_here and not args.keep_running:
            subprocess.run(["bash", str(IMAP_SETUP), "stop"], check=False, timeout=120)


def run_pimail_started(args: argparse.Namespace) -> Results:
    """pimail from --pimail-bin in a fresh data directory, corpus loaded by the Maildir
    route (or by APPEND with --pimail-load append)."""
    ports = (free_port(), free_port(), free_port())
    via_maildir = args.pimail_load != "append"
    count = args.count if via_maildir else 0
    proc = start_pimail(args.pimail_bin, args.pimail_workdir, ports, count, args.seed, True)
    holder = {"proc": proc}

    def restart() -> int:
        stop_process(holder["proc"])
        holder["proc"] = start_pimail(
            args.pimail_bin, args.pimail_workdir, ports, args.count, args.seed, False
        )
        return holder["proc"].pid

    server = PidServer(
        "pimail", "127.0.0.1", ports[1], ports[2], timeout=args.timeout, pid=proc.pid
    )
    try:
        appended = None if via_maildir else append_corpus(server, args.count, args.seed)
        server.restart = restart
        return run_suite(server, args, appended)
    finally:
        stop_process(holder["proc"])
        log.info("pimail stopped; its data directory stays in %s", args.pimail_workdir)


def run_pimail_attached(args: argparse.Namespace) -> Results:
    host, _, port = args.pimail.rpartition(":")
    server = PidServer(
        "pimail",
        host.strip("[]") or "127.0.0.1",
        int(port),
        args.pimail_pop3_port,
        timeout=args.timeout,
        pid=args.pimail_pid,
    )
    appended = None
    if args.pimail_load == "append":
        appended = append_corpus(server, args.count, args.seed)
    server.quiet()
    return run_suite(server, args, appended)


# --- output -----------------------------------------------------------------------------

# (key in Results.figures, label, unit): "ms" rows hold seconds, shown in milliseconds.
ROWS = (
    ("append", "APPEND the corpus (loading), s", "s"),
    ("select_cold", "SELECT INBOX, cold, ms", "ms"),
    ("sync_cold", "first sync UID FETCH 1:*, cold, ms", "ms"),
    ("select_warm", "SELECT INBOX, warm, ms", "ms"),
    ("sync_warm", "first sync UID FETCH 1:*, warm, ms", "ms"),
    ("sync_octets", "  response, octets", "n"),
    ("search_text", "UID SEARCH TEXT <rare word>, ms", "ms"),
    ("search_found", "  messages found", "n"),
    ("store", "UID STORE 1:N +FLAGS.SILENT (\\Flagged), ms", "ms"),
    ("resync", "reconnect+LOGIN+SELECT+FETCH 1:* (FLAGS), ms", "ms"),
    ("resync_changedsince", "  the same with CONDSTORE CHANGEDSINCE, ms", "ms"),
    ("changedsince_found", "  messages changed since", "n"),
    ("pop3_retr", "POP3 RETR 1..N on one connection, ms", "ms"),
    ("pop3_octets", "  octets retrieved", "n"),
    ("idle_pss_kib", "idle IMAP connection, PSS, KiB", "n"),
    ("idle_private_kib", "  private (Dovecot) / RSS growth (pimail), KiB", "n"),
)


def _cell(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "ms":
        return f"{value * 1000:.1f}"
    if unit == "s":
        return f"{value:.1f}"
    return f"{value:.0f}"


def render_table(results: list[Results], args: argparse.Namespace) -> str:
    by_name = {r.name: r for r in results}
    names = [n for n in ("dovecot", "pimail") if n in by_name]
    width = max(len(label) for _, label, _ in ROWS) + 2
    header = f"{'figure':<{width}}" + "".join(f"{n:>12}" for n in names)
    if len(names) == 2:
        header += f"{'pimail/dovecot':>16}"
    lines = [
        f"IMAP/POP3 benchmark: {args.count} messages (seed {args.seed}), STORE N={args.store}, "
        f"RETR N={args.retr}, {args.connections} idle connections, median of {args.runs} runs",
        header,
        "-" * len(header),
    ]
    for key, label, unit in ROWS:
        values = [by_name[n].figures.get(key) for n in names]
        if all(v is None for v in values):
            continue
        cells = "".join(f"{_cell(v, unit):>12}" for v in values)
        if len(names) == 2:
            dovecot, pimail = values
            ratio = f"{pimail / dovecot:.2f}" if dovecot and pimail is not None else "n/a"
            cells += f"{ratio:>16}"
        lines.append(f"{label:<{width}}{cells}")
    lines.append(f"expected TEXT search answer: {corpus.rare_word_count(args.count)}")
    for r in results:
        lines.extend(f"{r.name}: {note}" for note in r.notes)
        if r.cold:
            lines.append(f"{r.name}: cold = {r.cold}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    settings = setup_settings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dovecot", action="store_true", help="measure Dovecot (imap_setup.sh)")
    p.add_argument(
        "--dovecot-root",
        type=Path,
        default=Path(settings.get("ROOT", "/var/tmp/pimail-bench-imap")),
    )
    p.add_argument("--dovecot-imap-port", type=int, default=int(settings.get("IMAP_PORT", 10143)))
    p.add_argument("--dovecot-pop3-port", type=int, default=int(settings.get("POP3_PORT", 10110)))
    p.add_argument(
        "--pimail-start", action="store_true", help="start a fresh pimail and measure it"
    )
    p.add_argument(
        "--pimail", metavar="HOST:PORT", help="measure a running pimail (any IMAP server)"
    )
    p.add_argument("--pimail-pid", type=int, help="its process id (for memory)")
    p.add_argument("--pimail-pop3-port", type=int, help="its POP3 port (with --pimail)")
    p.add_argument(
        "--pimail-load",
        choices=("maildir", "append", "none"),
        help="how pimail gets the corpus: maildir (default with --pimail-start), "
        "append (IMAP APPEND into an empty INBOX), none (default with --pimail: loaded)",
    )
    p.add_argument("--pimail-bin", type=Path, default=REPO / ".venv" / "bin" / "pimail")
    p.add_argument("--pimail-workdir", type=Path, default=Path("/var/tmp/pimail-bench-imap-pimail"))
    p.add_argument("--count", type=int, default=corpus.DEFAULT_COUNT, help="corpus messages")
    p.add_argument("--seed", type=int, default=corpus.DEFAULT_SEED)
    p.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    p.add_argument("--store", type=int, default=1000, help="N of UID STORE 1:N")
    p.add_argument("--retr", type=int, default=1000, help="N of POP3 RETR 1..N")
    p.add_argument("--connections", type=int, default=200, help="idle IMAP connections")
    p.add_argument("--timeout", type=float, default=300.0, help="socket timeout, s")
    p.add_argument("--keep-running", action="store_true", help="leave Dovecot running")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.pimail and args.pimail_pid is None:
        p.error("--pimail needs --pimail-pid")
    if args.pimail and args.pimail_start:
        p.error("--pimail and --pimail-start exclude each other")
    if not (args.dovecot or args.pimail or args.pimail_start):
        args.dovecot = args.pimail_start = True
    if args.pimail_load is None:
        args.pimail_load = "none" if args.pimail else "maildir"
    if args.pimail and args.pimail_load == "maildir":
        p.error("the Maildir route needs --pimail-start (reindex runs with pimail stopped)")
    if args.pimail_start and args.pimail_load == "none":
        p.error("--pimail-start loads the corpus: --pimail-load maildir or append")
    if not 1 <= args.store <= args.count or not 1 <= args.retr <= args.count:
        p.error("--store and --retr must be between 1 and --count")
    if not 1 <= args.runs <= 20 or not 1 <= args.connections <= 1000:
        p.error("--runs must be 1..20 and --connections 1..1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    results: list[Results] = []
    runners = []
    if args.dovecot:
        runners.append(("dovecot", run_dovecot))
    if args.pimail_start:
        runners.append(("pimail", run_pimail_started))
    elif args.pimail:
        runners.append(("pimail", run_pimail_attached))
    for name, runner in runners:
        try:
            results.append(runner(args))
        except (OSError, RuntimeError, ProtocolError, subprocess.SubprocessError) as e:
            log.error("%s: not measured: %s", name, e)
            results.append(Results(name, notes=[f"not measured: {e}"]))
    print(render_table(results, args))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0 if all(r.figures for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
