"""Raw HTTP/1.1 over TLS for the hardening tests: what a browser would never
send (bodies that trickle, lie about their length, or never end), from a
chosen loopback source address, and the server's memory from /proc."""

from __future__ import annotations

import re
import socket
import ssl
from pathlib import Path

from conftest import PimailServer

from .browser import Browser


def connect(site: PimailServer, source: str = "127.0.0.1", timeout: float = 30) -> ssl.SSLSocket:
    """A TLS connection to the HTTPS port from `source` (any 127.0.0.0/8 address)."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.settimeout(timeout)
    raw.bind((source, 0))
    raw.connect(("127.0.0.1", site.https_port))
    return site.client_tls().wrap_socket(raw, server_hostname="127.0.0.1")


def post_head(
    path: str,
    length: int | None,
    content_type: str = "application/x-www-form-urlencoded",
    cookies: dict[str, str] | None = None,
) -> bytes:
    """A POST's head; `length` None: a chunked body (RFC 9112 7.1)."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}"]
    lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    if cookies:
        lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in cookies.items()))
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def read_response(sock: ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and what came of the body; (0, {}, b"")
    when the server closed without an answer."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            got = sock.recv(65536)
            if not got:
                return 0, {}, b""
            data += got
    except (ConnectionError, ssl.SSLError):
        return 0, {}, b""
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def closed(sock: ssl.SSLSocket) -> bool:
    """True once the server has closed the connection (read to EOF)."""
    try:
        while sock.recv(65536):
            pass
    except (ConnectionError, ssl.SSLError):
        pass
    return True


def cookies_of(b: Browser) -> dict[str, str]:
    return {c.name: c.value or "" for c in b.jar}


def status_of(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: int(v) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M)}


def reset_peak(pid: int) -> None:
    """Start VmHWM again from the current RSS (proc(5): clear_refs, value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
