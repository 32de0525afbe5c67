"""Real clamd and rspamd on loopback for tests: started here, configured here.

Both run as the test user (root in CI) from Debian's packages
(`apt-get install clamav-daemon rspamd`), each in its own temporary directory
with a configuration written by this module; neither touches /etc, /var or the
packaged services (which stay stopped: nothing here uses systemd). Nothing
leaves the machine: clamd needs no network, and rspamd's resolver is pointed at
the tests' own DNS server on loopback (`dnsserver.DnsServer`, NXDOMAIN for
every name), so its DNS rules and its map downloads fail at once, locally.

clamd (1.4, bookworm): `clamd --foreground --config-file=<dir>/clamd.conf`.
ClamAV's signature databases cannot be downloaded here, and clamd does not
need them: one database file of our own is enough for it to start (it says
"Loaded 1 signatures"). The file is an .ndb body signature for the EICAR test
string, so it matches the decoded attachment wherever it sits; clamd reports
it as "Pimail.Test.EICAR.UNOFFICIAL" (clamd appends ".UNOFFICIAL" to the
names of signatures from unsigned databases). It listens on a unix socket and
on 127.0.0.1:<free port>, with a small StreamMaxLength (1 MiB by default) so
that the size limit can be tested cheaply. Ready (PING answers PONG) in
about 0.1 s.

rspamd (3.4, bookworm): `rspamd -f [-i] -u <user> -g <group> -c <dir>/rspamd.conf
--var=LOCAL_CONFDIR=<dir> --var=DBDIR=... --var=RUNDIR=... --var=LOGDIR=...`.
The top-level file includes the packaged rules (`$CONFDIR/common.conf`, i.e.
/etc/rspamd) and defines one "normal" worker (the one that answers /checkv2
and /ping) on 127.0.0.1:<free port> and on a unix socket; no controller, no
proxy, no redis (the modules that need it disable themselves and say so in the
log; Bayes is inactive). Started as root, rspamd refuses to run ("cannot run
rspamd workers as root user") unless told -u/-g or --insecure (-i): the
fixture passes the current user and group, and -i as root. Local overrides
in `<dir>/local.d`: the DNS
server; a five-entry public-suffix list (`url_tld`) instead of the packaged
one, which rspamd compiles at every start (about 9 s on the CI machine; with
the short list the worker answers /ping in 0.8-1.6 s); fuzzy_check,
rspamd_update, rbl and asn off (they only make sense with the internet).
GTUBE is on by default in rspamd: the test string gives action "reject".

If clamd or rspamd is not installed, the fixtures fail (not skip) and say
which package CI must install.

Timing: `percentiles(samples)` and `time_calls(fn, n)` give the p50/p99 of a
check, for the filter time per message with and without the engines.
"""

from __future__ import annotations

import base64
import grp
import os
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Self

from conftest import free_port
from dnsserver import DnsServer

STARTUP_TIMEOUT = 60.0

# The EICAR test file (eicar.org), in two pieces so that this source file is
# not itself flagged by a scanner.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_SIGNATURE = "Pimail.Test.EICAR"
EICAR_FOUND = EICAR_SIGNATURE + ".UNOFFICIAL"  # as clamd reports it
# rspamd's GTUBE (rspamd.com/doc/gtube_patterns.html): action "reject".
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*" + "GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def _binary(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not found:
        raise RuntimeError(f"{name} is not installed: apt-get install {package}")
    return found


def _socket_dir(base: Path) -> Path:
    """`base`, unless a socket path under it would pass the 108-byte limit of sun_path."""
    if len(str(base)) < 80:
        return base
    return Path(tempfile.mkdtemp(prefix="pimail-sock-"))


class _Engine:
    """A daemon started by the tests in its own process group, stopped by its id."""

    name = "engine"
    proc: subprocess.Popen[bytes] | None = None
    startup_seconds = 0.0

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.output = base / "output.log"

    def _spawn(self, argv: list[str], ready: Callable[[], bool]) -> None:
        started = time.monotonic()
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = started + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log()}")
            if ready():
                self.startup_seconds = time.monotonic() - started
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not ready in {STARTUP_TIMEOUT:g}s:\n{self.log()}")

    def log(self, lines: int = 40) -> str:
        texts = []
        for path in (self.output, self.base / f"{self.name}.log"):
            if path.exists():
                texts += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(texts)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own group: its workers too
            self.proc.wait(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ClamdServer(_Engine):
    """clamd with a one-signature database (EICAR), on a unix socket and loopback TCP."""

    name = "clamd"

    def __init__(self, base: Path, stream_max_length: int = 1024 * 1024) -> None:
        super().__init__(base)
        self.stream_max_length = stream_max_length
        self.socket_path = _socket_dir(base) / "clamd.sock"
        self.port = free_port()

    @property
    def unix_address(self) -> str:
        return f"unix:{self.socket_path}"

    @property
    def tcp_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ClamdServer:
        clamd = _binary("clamd", "clamav-daemon")
        database = self.base / "db"
        database.mkdir(exist_ok=True)
        (self.base / "tmp").mkdir(exist_ok=True)
        # .ndb: Name:TargetType:Offset:HexSignature (ClamAV's "body-based signatures";
        # target 0 = any file, offset * = anywhere).
        (database / "pimail-test.ndb").write_text(f"{EICAR_SIGNATURE}:0:*:{EICAR.hex()}\n")
        config = self.base / "clamd.conf"
        config.write_text(
            "\n".join(
                [
                    "Foreground yes",
                    f"LogFile {self.base}/clamd.log",
                    "LogTime yes",
                    f"PidFile {self.base}/clamd.pid",
                    f"DatabaseDirectory {database}",
                    f"TemporaryDirectory {self.base}/tmp",
                    f"LocalSocket {self.socket_path}",
                    f"TCPSocket {self.port}",
                    "TCPAddr 127.0.0.1",
                    f"StreamMaxLength {self.stream_max_length}",
                    "MaxThreads 4",
                    "SelfCheck 3600",
                ]
            )
            + "\n"
        )
        self._spawn([clamd, "--foreground", f"--config-file={config}"], self._pong)
        return self

    def _pong(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.socket_path))
                s.sendall(b"zPING\0")
                return s.recv(16) == b"PONG\0"
        except OSError:
            return False


class RspamdServer(_Engine):
    """rspamd's normal worker on loopback, the packaged rules, no redis, local DNS."""

    name = "rspamd"

    def __init__(self, base: Path, local_d: Mapping[str, str] | None = None) -> None:
        super().__init__(base)
        self.port = free_port()
        self.socket_path = _socket_dir(base) / "rspamd.sock"
        self.dns: DnsServer | None = None
        # Extra files for <base>/local.d ({"multimap.conf": "..."}); one named like
        # a file of this module's ("options.inc") is appended to it. In them,
        # "$LOCAL_CONFDIR/local.d/<name>" is the path of another such file (a map).
        self.local_d = dict(local_d or {})

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def unix_address(self) -> str:
        return f"unix:{self.socket_path}"

    def start(self) -> RspamdServer:
        rspamd = _binary("rspamd", "rspamd")
        self.dns = DnsServer().start()
        local = self.base / "local.d"
        local.mkdir(exist_ok=True)
        (self.base / "db").mkdir(exist_ok=True)
        (self.base / "tld.dat").write_text("com\norg\nnet\ntest\nexample\n")
        (local / "options.inc").write_text(
            f'dns {{ nameserver = ["{self.dns.address}"]; timeout = 1s; retransmits = 2; }}\n'
            f'url_tld = "{self.base}/tld.dat";\n'
        )
        ours = {"options.inc"}
        for module in ("fuzzy_check", "rspamd_update", "rbl", "asn"):
            (local / f"{module}.conf").write_text("enabled = false;\n")
            ours.add(f"{module}.conf")
        for name, text in self.local_d.items():
            with open(local / name, "a" if name in ours else "w") as f:
                f.write(text)
        config = self.base / "rspamd.conf"
        config.write_text(
            '.include "$CONFDIR/common.conf"\n'
            "options {\n"
            '    pidfile = "$RUNDIR/rspamd.pid";\n'
            '    .include "$CONFDIR/options.inc"\n'
            "    .include(try=true; priority=1,duplicate=merge)"
            ' "$LOCAL_CONFDIR/local.d/options.inc"\n'
            "}\n"
            'logging { type = "file"; filename = "$LOGDIR/rspamd.log"; level = "info"; }\n'
            'worker "normal" {\n'
            f'    bind_socket = "127.0.0.1:{self.port}";\n'
            f'    bind_socket = "{self.socket_path} mode=0600";\n'
            "    mime = true;\n"
            "    count = 1;\n"
            "}\n"
        )
        argv = [rspamd, "-f", "-c", str(config)]
        if os.getuid() == 0:
            argv.append("-i")  # workers as root (CI): rspamd wants this said explicitly
        argv += ["-u", pwd.getpwuid(os.getuid()).pw_name, "-g", grp.getgrgid(os.getgid()).gr_name]
        argv += [
            f"--var={name}={value}"
            for name, value in (
                ("LOCAL_CONFDIR", self.base),
                ("DBDIR", self.base / "db"),
                ("RUNDIR", self.base),
                ("LOGDIR", self.base),
            )
        ]
        self._spawn(argv, self._pong)
        return self

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
                reply = b""
                while chunk := s.recv(4096):
                    reply += chunk
                return reply.startswith(b"HTTP/1.1 200") and reply.rstrip().endswith(b"pong")
        except OSError:
            return False

    def stop(self) -> None:
        super().stop()
        if self.dns is not None:
            self.dns.stop()
            self.dns = None


# -- messages ------------------------------------------------------------------


def message(
    body: str = "Hello Bob,\r\n\r\nlunch on Friday?\r\n\r\nAlice\r\n",
    subject: str = "Lunch",
    extra_headers: str = "",
) -> bytes:
    """A plain text message, CRLF line ends."""
    return (
        "From: Alice <alice@example.org>\r\n"
        "To: Bob <bob@example.net>\r\n"
        f"Subject: {subject}\r\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
        "Message-ID: <lunch-1@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        f"{extra_headers}"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{body}"
    ).encode()


def with_attachment(filename: str, content: bytes, text: str = "See attached.\r\n") -> bytes:
    """A multipart/mixed message: a text part and `content` as a base64 attachment."""
    encoded = base64.encodebytes(content).decode().replace("\n", "\r\n")
    return (
        "From: Alice <alice@example.org>\r\n"
        "To: Bob <bob@example.net>\r\n"
        "Subject: The file\r\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
        "Message-ID: <file-1@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="=-=pimail-b1=-="\r\n'
        "\r\n"
        "--=-=pimail-b1=-=\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{text}"
        "--=-=pimail-b1=-=\r\n"
        f'Content-Type: application/octet-stream; name="{filename}"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{filename}"\r\n'
        "\r\n"
        f"{encoded}"
        "--=-=pimail-b1=-=--\r\n"
    ).encode()


# -- timing --------------------------------------------------------------------


def percentiles(samples: Sequence[float], points: Sequence[int] = (50, 99)) -> dict[int, float]:
    """{50: p50, 99: p99} of `samples` (seconds), by the inclusive method."""
    if len(samples) < 2:
        return {p: (samples[0] if samples else 0.0) for p in points}
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {p: cuts[p - 1] for p in points}


async def time_calls(call: Callable[[], Awaitable[object]], n: int) -> list[float]:
    """Run `call()` n times, one after another; the duration of each, in seconds.

    For the filter time per message:
        samples = await time_calls(lambda: pipeline.check(msg), 200)
        print(percentiles(samples))   # with, then without clamd/rspamd configured
    """
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples
