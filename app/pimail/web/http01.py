"""Plain HTTP on port 80: ACME HTTP-01 challenges, and a redirect to HTTPS.

RFC 8555 8.3: the CA fetches http://<name>/.well-known/acme-challenge/<token>
and expects the key authorization. The ACME client (tls/acme_client.py, a
child process) writes one file per token under `<data>/tls/acme-challenge/`;
this serves them. Everything else is redirected to HTTPS (RFC 8314 spirit:
nothing of the mail service over plain HTTP). Until the web issue brings
aiohttp, this is a deliberately tiny HTTP/1.1 responder with hard limits:
one request per connection, 8 KiB of request head, 10 seconds.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)
MAX_HEAD = 8 * 1024
TIMEOUT = 10.0
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # base64url, RFC 8555 8.1
_PREFIX = "/.well-known/acme-challenge/"


def respond(head: bytes, challenges: Path) -> bytes:
    """The whole response for a request head (sans I/O)."""
    try:
        request_line = head.split(b"\r\n", 1)[0].decode("ascii")
        method, target, version = request_line.split(" ")
    except (UnicodeDecodeError, ValueError):
        return _response(400, "Bad Request", b"bad request\n")
    if not version.startswith("HTTP/1."):
        return _response(505, "HTTP Version Not Supported", b"")
    if method not in ("GET", "HEAD"):
        return _response(405, "Method Not Allowed", b"", {"Allow": "GET, HEAD"})
    if target.startswith(_PREFIX):
        token = target[len(_PREFIX) :]
        if _TOKEN.match(token):
            try:
                body = (challenges / token).read_bytes()
            except OSError:
                body = None
            if body is not None:
                body = body if method == "GET" else b""
                return _response(200, "OK", body, {"Content-Type": "application/octet-stream"})
        return _response(404, "Not Found", b"no such challenge\n")
    host = ""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"host":
            host = value.strip().decode("ascii", "replace").split(":")[0]
    if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", host or ""):
        return _response(404, "Not Found", b"")
    return _response(301, "Moved Permanently", b"", {"Location": f"https://{host}/"})


def _response(code: int, reason: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {code} {reason}", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def handle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, challenges: Path
) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        writer.write(respond(head, challenges))
        await asyncio.wait_for(writer.drain(), TIMEOUT)
    except asyncio.LimitOverrunError:
        writer.write(_response(431, "Request Header Fields Too Large", b""))
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


MTA_STS_PATH = "/.well-known/mta-sts.txt"


def respond_https(head: bytes, mta_sts_policy: Callable[[str], str | None]) -> bytes:
    """Port 443's answer (sans I/O): the MTA-STS policy (RFC 8461 3.3) at
    https://mta-sts.<domain>/.well-known/mta-sts.txt, else a short notice."""
    lines = head.split(b"\r\n")
    try:
        method, target, _version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        return _response(400, "Bad Request", b"bad request\n")
    host = ""
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"host":
            host = value.strip().decode("ascii", "replace").split(":")[0].lower().rstrip(".")
    if method in ("GET", "HEAD") and target == MTA_STS_PATH and host.startswith("mta-sts."):
        policy = mta_sts_policy(host[len("mta-sts.") :])
        if policy is not None:
            body = policy.encode() if method == "GET" else b""
            return _response(200, "OK", body, {"Content-Type": "text/plain; charset=utf-8"})
        return _response(404, "Not Found", b"")
    return _response(503, "Service Unavailable", b"The web interface is not there yet.\n")


async def handle_https(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    context: Callable[[], ssl.SSLContext],
    mta_sts_policy: Callable[[str], str | None] = lambda domain: None,
) -> None:
    """Port 443 until the web interface arrives: TLS-ALPN-01 validations
    (RFC 8737: the handshake is all the validator wants), MTA-STS policies,
    and a short notice."""
    try:
        await writer.start_tls(context(), ssl_handshake_timeout=TIMEOUT)
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "acme-tls/1":
            return
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        writer.write(respond_https(head, mta_sts_policy))
        await asyncio.wait_for(writer.drain(), TIMEOUT)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError,
            ssl.SSLError, OSError):  # fmt: skip
        pass
    finally:
        writer.close()
