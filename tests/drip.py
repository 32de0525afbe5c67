"""A slowloris client for the pre-login deadline tests (IMAP, POP3)."""

from __future__ import annotations

import socket
import time


def drip_until_closed(sock: socket.socket, drip: bytes, seconds: float) -> bool:
    """Send `drip` every 0.5 s, reading whatever comes back, until the server
    closes the connection (True) or `seconds` pass (False). With a timer per
    read the server would wait forever; a deadline for the whole state closes it."""
    sock.settimeout(0.5)
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            sock.sendall(drip)
            while sock.recv(4096):
                pass
            return True
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return True
    return False
