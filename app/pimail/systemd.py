"""Talking to systemd: readiness and the watchdog (sd_notify(3), without libsystemd).

When systemd starts pimail with `Type=notify` and `WatchdogSec=`, it passes
NOTIFY_SOCKET and WATCHDOG_USEC. pimail says READY=1 once it listens, and then
WATCHDOG=1 at half the interval, but only while the event loop runs and the
store's writer thread answers: a server whose disk hangs in fsync stops
feeding the watchdog, and systemd restarts it. Outside systemd all of this
does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send one sd_notify message; False if not under systemd (or it failed)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(message.encode())
        return True
    except OSError as e:
        log.warning("sd_notify failed error=%s", e)
        return False


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000 / 2


async def feed_watchdog(healthy: Callable[[], Awaitable[None]], interval: float) -> None:
    """Ping the watchdog while `healthy()` completes within the interval."""
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.wait_for(healthy(), timeout=interval)
        except (TimeoutError, Exception):
            log.error("health check failed: not feeding the watchdog")
            continue
        notify("WATCHDOG=1")
