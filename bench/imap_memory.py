"""Memory of idle IMAP connections in a fresh pimail process, without and with TLS.

Starts pimail on a new data directory, delivers `--messages` messages to one
INBOX, then opens `--connections` connections that each LOGIN, SELECT INBOX
and IDLE, first in the clear (plaintext login allowed for this measurement
only) and then over implicit TLS. Prints the growth of the server's RSS and
PSS per connection for each, and so what the TLS state adds. A fresh process
is used so that memory freed by earlier work cannot hide the connections'.

    .venv/bin/python bench/imap_memory.py [--connections 200] [--messages 2000]
"""

from __future__ import annotations

import argparse
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIMAIL = [sys.executable, "-m", "pimail.cli"]
PASSWORD = "secret-pw-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def wait_port(port: int) -> None:
    for _ in range(1200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def open_idle(port: int, tls: ssl.SSLContext | None) -> tuple[socket.socket, object]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="localhost")
    f = sock.makefile("rb")
    f.readline()
    for tag, command in ((b"a", b'LOGIN "user@bench.test" "' + PASSWORD.encode() + b'"'),
                         (b"b", b"SELECT INBOX")):  # fmt: skip
        sock.sendall(tag + b" " + command + b"\r\n")
        while not f.readline().startswith(tag + b" "):
            pass
    sock.sendall(b"c IDLE\r\n")
    assert f.readline().startswith(b"+")
    return sock, f


def measure(pid: int, port: int, tls: ssl.SSLContext | None, count: int) -> tuple[float, float]:
    time.sleep(1.0)
    rss0, pss0 = memory_kib(pid)
    socks = [open_idle(port, tls) for _ in range(count)]
    time.sleep(1.0)
    rss1, pss1 = memory_kib(pid)
    for s, _f in socks:
        s.close()
    return (rss1 - rss0) / count, (pss1 - pss0) / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--messages", type=int, default=2000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pimail-imap-memory-"))
    smtp, imap, imaps = free_port(), free_port(), free_port()
    config = work / "pimail.toml"
    config.write_text(
        f'data_dir = "{work / "data"}"\n[smtp]\nlisten = ["127.0.0.1:{smtp}"]\n'
        f'[imap]\nlisten = ["127.0.0.1:{imap}"]\nlisten_tls = ["127.0.0.1:{imaps}"]\n'
        "allow_plaintext_auth = true\nmax_connections_per_ip = 10000\n"
        f'[pop3]\nlisten = ["127.0.0.1:{free_port()}"]\nlisten_tls = []\n'
        "[auth]\nfailure_delay = 0.01\n"
    )
    run = [*PIMAIL, "--config", str(config)]
    subprocess.run([*run, "domain", "add", "bench.test"], check=True, capture_output=True)
    subprocess.run([*run, "user", "add", "user@bench.test"], input=PASSWORD + "\n", text=True,
                   check=True, capture_output=True)  # fmt: skip
    server = subprocess.Popen([*run, "serve"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(imap)
        with smtplib.SMTP("127.0.0.1", smtp) as s:
            body = b"Subject: m\r\n\r\n" + b"some text of a message\r\n" * 40
            for _ in range(args.messages):
                s.sendmail("a@remote.test", ["user@bench.test"], body)
        tls = ssl.create_default_context(cafile=work / "data" / "tls" / "ca" / "ca.pem")
        idle_rss, idle_pss = memory_kib(server.pid)
        plain = measure(server.pid, imap, None, args.connections)
        # A second server for TLS: in the same process the second round would
        # reuse what the first one freed, and look cheaper than it is.
        server.terminate()
        server.wait(30)
        server = subprocess.Popen(
            [*run, "serve"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(imaps)
        secure = measure(server.pid, imaps, tls, args.connections)
        print(f"pimail idle: RSS {idle_rss / 1024:.1f} MiB, PSS {idle_pss / 1024:.1f} MiB "
              f"({args.messages} messages in INBOX)")  # fmt: skip
        print(f"{args.connections} idle IMAP connections (LOGIN, SELECT, IDLE), per connection:")
        print(f"  plaintext      RSS {plain[0]:6.1f} KiB   PSS {plain[1]:6.1f} KiB")
        print(f"  implicit TLS   RSS {secure[0]:6.1f} KiB   PSS {secure[1]:6.1f} KiB")
        print(f"  TLS adds       RSS {secure[0] - plain[0]:6.1f} KiB   "
              f"PSS {secure[1] - plain[1]:6.1f} KiB")  # fmt: skip
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
