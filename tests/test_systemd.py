"""sd_notify: READY=1 once serving, WATCHDOG=1 while healthy (as systemd sees it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import PimailServer, wait_for_port


def test_ready_and_watchdog(make_server, tmp_path: Path) -> None:
    server: PimailServer = make_server()
    server.cli("domain", "add", "example.org")
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(10)
    env = dict(os.environ, NOTIFY_SOCKET=address, WATCHDOG_USEC="400000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pimail.cli", "--config", str(server.config), "serve"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        messages = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and sum("WATCHDOG=1" in m for m in messages) < 2:
            messages.append(sock.recv(4096).decode())
        assert messages[0].startswith("READY=1")
        assert sum("WATCHDOG=1" in m for m in messages) >= 2
        wait_for_port(server.smtp_port)  # ready meant listening
    finally:
        proc.terminate()
        proc.wait(15)
        sock.close()
    assert proc.returncode == 0
