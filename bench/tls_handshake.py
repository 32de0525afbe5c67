"""TLS handshake cost per connection on pimail's SMTP (STARTTLS) and IMAP (993).

Starts a fresh pimail, then for each port makes `--count` connections with a
full handshake and `--count` resuming the first session (TLS 1.3 tickets),
and prints the client-side time per connection and the server's CPU time per
connection (from /proc/PID/stat), for TLS 1.3 and TLS 1.2.

    .venv/bin/python bench/tls_handshake.py [--count 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIMAIL = [sys.executable, "-m", "pimail.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def smtp_starttls(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(b"EHLO bench.test\r\n")
    while f.readline()[3:4] == b"-":
        pass
    sock.sendall(b"STARTTLS\r\n")
    f.readline()
    return ctx.wrap_socket(sock, server_hostname="localhost", session=session)


def imaps(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = ctx.wrap_socket(sock, server_hostname="localhost", session=session)
    tls.recv(4096)  # the greeting: TLS 1.3 tickets arrive with the first data
    return tls


def measure(connect, port: int, ctx: ssl.SSLContext, pid: int, count: int, resume: bool
            ) -> tuple[float, float, int]:  # fmt: skip
    """(median ms per connection, server CPU ms per connection, resumed count)."""
    first = connect(port, ctx, None)
    if isinstance(first, ssl.SSLSocket) and connect is smtp_starttls:
        first.sendall(b"NOOP\r\n")
        first.recv(100)
    session = first.session
    first.close()
    times, resumed = [], 0
    cpu0 = cpu_seconds(pid)
    for _ in range(count):
        t = time.perf_counter()
        s = connect(port, ctx, session if resume else None)
        times.append(time.perf_counter() - t)
        resumed += s.session_reused
        if resume and connect is smtp_starttls:
            s.sendall(b"NOOP\r\n")
            s.recv(100)
        s.close()
    cpu = cpu_seconds(pid) - cpu0
    return statistics.median(times) * 1000, cpu / count * 1000, resumed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pimail-tls-bench-"))
    smtp, imap_tls = free_port(), free_port()
    config = work / "pimail.toml"
    config.write_text(
        f'data_dir = "{work / "data"}"\n[smtp]\nlisten = ["127.0.0.1:{smtp}"]\n'
        f'max_connections_per_ip = 10000\n[imap]\nlisten = ["127.0.0.1:{free_port()}"]\n'
        f'listen_tls = ["127.0.0.1:{imap_tls}"]\nmax_connections_per_ip = 10000\n'
        f"[pop3]\nlisten = []\nlisten_tls = []\n[web]\nlisten_http = []\nlisten_https = []\n"
    )
    run = [*PIMAIL, "--config", str(config)]
    subprocess.run([*run, "domain", "add", "bench.test"], check=True, capture_output=True)
    server = subprocess.Popen([*run, "serve"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", imap_tls), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        ca = work / "data" / "tls" / "ca" / "ca.pem"
        print(f"TLS handshakes, {args.count} connections each, client on the same 2 cores")
        print(f"{'port':<16}{'TLS':<9}{'handshake':<11}{'ms/conn':>9}{'server CPU ms':>15}"
              f"{'resumed':>9}")  # fmt: skip
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            ctx = ssl.create_default_context(cafile=ca)
            ctx.minimum_version = ctx.maximum_version = version
            for label, connect, port in (("SMTP STARTTLS", smtp_starttls, smtp),
                                         ("IMAP 993", imaps, imap_tls)):  # fmt: skip
                for resume in (False, True):
                    ms, cpu, resumed = measure(connect, port, ctx, server.pid, args.count, resume)
                    kind = "resumed" if resume else "full"
                    name = version.name.replace("TLSv", "")
                    print(f"{label:<16}{name:<9}{kind:<11}{ms:>9.2f}{cpu:>15.2f}"
                          f"{resumed:>9}")  # fmt: skip
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
