"""Memory an unauthenticated client can make pimail hold, per connection (issue 13).

For each kind of connection below, starts a fresh pimail (so memory freed by
an earlier round cannot hide this one's), opens `--connections` connections
that never log in and each send the worst input allowed before login, stopping
just short of a limit so the server must keep it; then reads the server's RSS
and PSS from /proc/PID/smaps_rollup before and after and prints the growth
per connection, and that figure times the connection limit configured for
the service (pimail's defaults), the worst case for the whole listener.

Kinds (the limits they push against, all before authentication):
  imap-line       a 4095-octet command line without its end (PRELOGIN line 4 KiB)
  imap-literal    LOGIN with a 4 KiB line and a 2 KiB literal, one octet short
  imap-auth       AUTHENTICATE PLAIN, then a 4095-octet response line unfinished
  imap-noread     64 KiB of pipelined CAPABILITY, answers never read
  imaps-line      imap-line over implicit TLS (993): adds the TLS state
  pop3s-line      a 511-octet line over 995 (POP3 lines are 512 octets)
  pop3s-auth      AUTH PLAIN, then a 2047-octet response line unfinished
  pop3-noread     64 KiB of pipelined CAPA, answers never read
  smtp-line       a 1000-octet command line unfinished on the MX port
  smtps-auth      EHLO, AUTH LOGIN, a 1000-octet response unfinished on 465
  smtp-data       the MX port takes DATA from anyone: 300 KiB of a message, unfinished

    .venv/bin/python bench/preauth_memory.py [--connections 200] [--kinds imap-line,...]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from imap_memory import free_port, memory_kib  # bench/ is sys.path[0]
from pimail.config import Settings

PIMAIL = [sys.executable, "-m", "pimail.cli"]
Opener = Callable[[dict[str, int], ssl.SSLContext], socket.socket]


def connect(port: int, tls: ssl.SSLContext | None = None) -> tuple[socket.socket, object]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="localhost")
    f = sock.makefile("rb")
    f.readline()  # the greeting
    return sock, f


def expect(f: object, prefix: bytes) -> None:
    while True:
        line = f.readline()  # type: ignore[attr-defined]
        if not line:
            raise SystemExit(f"closed while waiting for {prefix!r}")
        if line.startswith(prefix):
            return


def imap_line(ports: dict[str, int], tls: ssl.SSLContext) -> socket.socket:
    sock, _ = connect(ports["imap"])
    sock.sendall(b"a LOGIN " + b"x" * 4087)
    return sock


def imaps_line(ports: dict[str, int], tls: ssl.SSLContext) -> socket.socket:
    sock, _ = connect(ports["imaps"], tls)
    sock.sendall(b"a LOGIN " + b"x" * 4087)
    return sock


def imap_literal(ports: dict[str, int], tls: ssl.SSLContext) -> socket.socket:
    sock, f = connect(ports["imap"])
    sock.sendall(b"a LOGIN " + b"u" * 4080 + b" {2048}\r\n")
    expect(f, b"+")
    sock.sendall(b"p" * 2047)
    return sock


def imap_auth(ports: dict[str, int], tls: ssl.SSLContext) -> socket.socket:
    sock, f = connect(ports["imaps"], tls)
    sock.sendall(b"a AUTHENTICATE PLAIN\r\n")
    expect(f, b"+")
    sock.sendall(b"A" * 4095)
    return sock


def noread(port: int, command: bytes) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(0.5)
    data = command * (65536 // len(command))
    try:
        sock.sendall(data)
    except TimeoutError:
        pass  # the server stopped reading: what it holds is what we measure
    return sock


def imap_noread(ports: dict[str, int], tls: ssl.SSLContext) -> socket.socket:
    return noread(ports["imap"], b"a CAPABILITY\r\n")


def pop3_noread(ports: dict[str, int], tls: ssl.SSLContext) -> socket.socket:
    return noread(ports["pop3"], b"CAPA\r\n")


def pop3s_line(ports: dict[str, int], tls: ssl.SSLContext) -> socket.socket:
    sock, _ = connect(ports["pop3s"], tls)
    sock.sendall(b"USER " + b"x" * 506)
    return sock


def pop3s_auth(ports: dict[str, int], tls: ssl.SSLContext) -> socket.socket:
    sock, f = connect(ports["pop3s"], tls)
    sock.sendall(b"AUTH PLAIN\r\n")
    expect(f, b"+")
    sock.sendall(b"A" * 2047)
    return sock


def smtp_line(ports: dict[str, int], tls: ssl.SSLContext) -> socket.socket:
    sock, _ = connect(ports["smtp"])
    sock.sendall(b"EHLO " + b"x" * 995)
    return sock


def smtps_auth(ports: dict[str, int], tls: ssl.SSLContext) -> socket.socket:
    sock, f = connect(ports["smtps"], tls)
    sock.sendall(b"EHLO bench.test\r\n")
    expect(f, b"250 ")
    sock.sendall(b"AUTH LOGIN\r\n")
    expect(f, b"334")
    sock.sendall(b"A" * 1000)
    return sock


def smtp_data(ports: dict[str, int], tls: ssl.SSLContext) -> socket.socket:
    sock, f = connect(ports["smtp"])
    sock.sendall(b"EHLO bench.test\r\n")
    expect(f, b"250 ")
    sock.sendall(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<user@bench.test>\r\nDATA\r\n")
    expect(f, b"354")
    sock.sendall(b"Subject: x\r\n\r\n" + b"a line of a message body.\r\n" * 12000)
    return sock


KINDS: dict[str, tuple[Opener, str]] = {
    "imap-line": (imap_line, "imap"),
    "imap-literal": (imap_literal, "imap"),
    "imap-auth": (imap_auth, "imap"),
    "imap-noread": (imap_noread, "imap"),
    "imaps-line": (imaps_line, "imap"),
    "pop3s-line": (pop3s_line, "pop3"),
    "pop3s-auth": (pop3s_auth, "pop3"),
    "pop3-noread": (pop3_noread, "pop3"),
    "smtp-line": (smtp_line, "smtp"),
    "smtps-auth": (smtps_auth, "smtp"),
    "smtp-data": (smtp_data, "smtp"),
}


def start(work: Path, ports: dict[str, int], count: int) -> subprocess.Popen[bytes]:
    per_ip = count + 10
    config = work / "pimail.toml"
    config.write_text(
        f'data_dir = "{work / "data"}"\n'
        f'[smtp]\nlisten = ["127.0.0.1:{ports["smtp"]}"]\nmax_connections_per_ip = {per_ip}\n'
        f'[submission]\nlisten_starttls = ["127.0.0.1:{ports["submission"]}"]\n'
        f'listen_tls = ["127.0.0.1:{ports["smtps"]}"]\n'
        f'[imap]\nlisten = ["127.0.0.1:{ports["imap"]}"]\n'
        f'listen_tls = ["127.0.0.1:{ports["imaps"]}"]\nmax_connections_per_ip = {per_ip}\n'
        f'[pop3]\nlisten = ["127.0.0.1:{ports["pop3"]}"]\n'
        f'listen_tls = ["127.0.0.1:{ports["pop3s"]}"]\nmax_connections_per_ip = {per_ip}\n'
        f'[web]\nlisten_http = ["127.0.0.1:{ports["http"]}"]\n'
        f'listen_https = ["127.0.0.1:{ports["https"]}"]\n'
    )
    cli = [*PIMAIL, "--config", str(config)]
    subprocess.run([*cli, "domain", "add", "bench.test"], check=True, capture_output=True)
    subprocess.run([*cli, "user", "add", "user@bench.test"], input="secret-pw-123\n", text=True,
                   check=True, capture_output=True)  # fmt: skip
    run = [*cli, "serve"]
    server = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", ports["https"]), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("pimail did not start")


def measure(kind: str, count: int) -> tuple[float, float]:
    opener, _service = KINDS[kind]
    work = Path(tempfile.mkdtemp(prefix="pimail-preauth-"))
    names = ("smtp", "submission", "smtps", "imap", "imaps", "pop3", "pop3s", "http", "https")
    ports = {name: free_port() for name in names}
    server = start(work, ports, count)
    try:
        tls = ssl.create_default_context(cafile=work / "data" / "tls" / "ca" / "ca.pem")
        time.sleep(1.0)
        before = memory_kib(server.pid)
        socks = [opener(ports, tls) for _ in range(count)]
        time.sleep(1.5)  # let the server read and hold what was sent
        after = memory_kib(server.pid)
        for s in socks:
            s.close()
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    return (after[0] - before[0]) / count, (after[1] - before[1]) / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--kinds", default=",".join(KINDS))
    args = ap.parse_args()
    defaults = Settings()
    limits = {
        "imap": defaults.imap.max_connections,
        "pop3": defaults.pop3.max_connections,
        "smtp": defaults.smtp.max_connections,
    }
    print(f"{args.connections} unauthenticated connections of each kind; growth of pimail's")
    print("RSS/PSS per connection, and RSS x the service's max_connections (default):")
    for kind in args.kinds.split(","):
        rss, pss = measure(kind, args.connections)
        service = KINDS[kind][1]
        total = rss * limits[service] / 1024
        print(f"  {kind:13} RSS {rss:6.1f} KiB  PSS {pss:6.1f} KiB   "
              f"x {limits[service]:5} = {total:6.1f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
