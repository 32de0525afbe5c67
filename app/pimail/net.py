"""What every stream service does with a new connection, in one place.

Count it against the per-address and total limits, start TLS on the accept
for implicit-TLS ports (RFC 8314: 993, 995, 465; the handshake on the
accepted connection, so it gets the context current now), run the protocol,
and always release and close, whatever the client did.

Closing is at once, TLS or not (`close_now`): asyncio's TLS layer would wait
up to 30 s for the client's close_notify before closing the TCP connection,
so a client that waits for the end of the connection after LOGOUT or QUIT
would wait that long.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)
TLS_TIMEOUT = 30.0
# Before authentication: responses queued for a client that does not read are
# held to this many octets (the transport's high-water mark; drain() waits).
PRELOGIN_WRITE_BUFFER = 4096


def limit_writes(writer: asyncio.StreamWriter, prelogin: bool) -> None:
    """The write buffer's high-water mark: small before login, asyncio's
    default (64 KiB) after. Call again after a STARTTLS (a new transport)."""
    if prelogin:
        writer.transport.set_write_buffer_limits(high=PRELOGIN_WRITE_BUFFER)
    else:
        writer.transport.set_write_buffer_limits()


def close_now(transport: asyncio.BaseTransport) -> None:
    """Close `transport` now; under TLS, send what is queued and close_notify,
    then close the TCP connection without waiting for the peer's close_notify
    (RFC 8446 6.1: the initiator of a close need not wait for the answering
    close_notify). asyncio has no public way to say so for one connection in
    Python 3.11, so the TCP transport under the TLS one is closed directly: it
    still sends what it holds (close_notify included) before its FIN."""
    tls = getattr(transport, "_ssl_protocol", None)  # cleared by a second close()
    transport.close()  # TLS: flushes the application data and queues close_notify
    tcp = getattr(tls, "_transport", None)
    if isinstance(tcp, asyncio.BaseTransport) and not tcp.is_closing():
        tcp.close()


async def start_tls(
    writer: asyncio.StreamWriter, context: ssl.SSLContext, service: str, ip: str
) -> bool:
    """The TLS handshake on an accepted connection (implicit TLS, STARTTLS,
    STLS); False, and one INFO line, when it fails: the caller closes."""
    try:
        await writer.start_tls(context, ssl_handshake_timeout=TLS_TIMEOUT)
    except (ConnectionError, ssl.SSLError, TimeoutError) as e:
        handshake_failed(service, ip, e)
        return False
    return True


def handshake_failed(service: str, ip: str, error: BaseException) -> None:
    """One INFO line for a TLS handshake that failed: scanners and clients
    with old protocol versions do this all day, nothing is wrong here."""
    reason = getattr(error, "reason", None) or type(error).__name__
    log.info("tls handshake failed service=%s ip=%s reason=%s", service, ip, reason)


class ConnectionLimiter:
    """Counts open connections, in total and per client address."""

    def __init__(self, per_ip: int, total: int) -> None:
        self.per_ip = per_ip
        self.total = total
        self.open: collections.Counter[str] = collections.Counter()

    def acquire(self, ip: str) -> str | None:
        """None if the connection may proceed, else the reason to refuse it."""
        if sum(self.open.values()) >= self.total:
            return "421 4.3.2 Too many connections, try again later"
        if self.open[ip] >= self.per_ip:
            return "421 4.7.0 Too many connections from your address, try again later"
        self.open[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.open[ip] -= 1
        if self.open[ip] <= 0:
            del self.open[ip]


async def serve_connection(
    service: str,
    limiter: ConnectionLimiter,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    implicit_tls: Callable[[], ssl.SSLContext] | None,
    refusal: bytes,
    run: Callable[[str], Awaitable[None]],
) -> None:
    """Limit, TLS if implicit, `run(client_ip)`, then release and close."""
    peer = writer.get_extra_info("peername") or ("?", 0)
    ip = str(peer[0])
    if limiter.acquire(ip) is not None:
        writer.write(refusal)
        writer.close()
        return
    try:
        plain = writer.get_extra_info("ssl_object") is None
        if (
            implicit_tls is not None
            and plain
            and not await start_tls(writer, implicit_tls(), service, ip)
        ):
            return
        await run(ip)
    except (ConnectionError, ssl.SSLError, TimeoutError) as e:
        log.debug("%s connection ended ip=%s error=%r", service, ip, e)
    except Exception:
        log.exception("%s connection failed ip=%s", service, ip)
    finally:
        limiter.release(ip)
        close_now(writer.transport)
