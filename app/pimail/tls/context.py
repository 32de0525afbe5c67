"""TLS contexts: pimail's policy, SNI among certificates, reload without restart.

`make_server_context` builds one `ssl.SSLContext` with pimail's policy for one
certificate pair. `CertificateStore` holds such a context per certificate name
(`<data>/tls/live/<name>`, see `tls/ca.py`) and hands listeners a *front*
context that has no certificate of its own: its SNI callback picks the per-name
context for the server name the client asked for (RFC 6066 3) and switches the
connection to it. Because a listener only ever holds the front context,
replacing a per-name context (after `reload()` found new files) changes what new
connections get, while connections already open keep the context they started
with.

Session tickets and their rotation. OpenSSL encrypts tickets with keys that
belong to the context a connection was *created* with (the front context: after
an SNI switch OpenSSL keeps using the original `session_ctx` for tickets and the
session cache), and Python's ssl cannot set or rotate those keys. The only way
to rotate them is to use a new front context. So there are two fronts:

- `store.context` never changes, for servers that take a context once at
  creation (`asyncio.start_server(ssl=...)`, aiohttp). Since its ticket keys
  could never be rotated, it sends no stateless tickets (OP_NO_TICKET):
  resumption goes through OpenSSL's in-memory session cache instead (TLS 1.2
  session IDs, RFC 5246 7.4.1.2; TLS 1.3 stateful tickets, RFC 8446 4.6.1),
  whose entries expire after two hours, and which needs a clean close_notify
  shutdown (asyncio does one).
- `store.handshake_context()` returns a front created at most
  `ticket_key_lifetime` (12 h) ago, with stateless tickets. Everything that takes
  a context per connection should use it: STARTTLS (`StreamWriter.start_tls`,
  `loop.start_tls`) and implicit-TLS ports that accept plain TCP and then call
  `start_tls` right away. A ticket from a retired front no longer decrypts, so
  the client simply does a full handshake; the old front is freed when its last
  connection closes.

This module reads certificate files; it never writes to disk.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# No cryptography here: this module lives in the long-running server, where
# that library would cost ~8 MB of RSS. Certificates are made by tls/ca.py in
# a short-lived process (tls/ensure.py); here the ssl module reads them.
INTERNAL = "internal"
FULLCHAIN = "fullchain.pem"
PRIVKEY = "privkey.pem"

log = logging.getLogger(__name__)

# TLS 1.2 suites (RFC 5246): ECDHE only (forward secrecy), AEAD only (AES-GCM,
# RFC 5289; ChaCha20-Poly1305, RFC 7905); ECDSA keys (ours) first, RSA for
# certificates an ACME CA may issue with RSA keys. No CBC, no static RSA, no DHE.
# TLS 1.3 suites (RFC 8446 B.4) are all AEAD with (EC)DHE and stay OpenSSL's
# defaults: Python cannot set them.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
# OpenSSL's SSL_OP_PRIORITIZE_CHACHA (ssl.h), which Python does not name: with
# server preference, still pick ChaCha20 when the client lists it first (a
# client without AES instructions). Raspberry Pis before the Pi 5 have none
# either, so ChaCha20 is cheaper on our side too.
OP_PRIORITIZE_CHACHA = 0x00200000
TICKET_KEY_LIFETIME = 12 * 3600.0
CHECK_INTERVAL = 5.0


def _apply_server_policy(context: ssl.SSLContext, *, tickets: bool) -> None:
    # RFC 8996: TLS 1.0 and 1.1 are deprecated. RFC 8446 / RFC 5246 only.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= (
        ssl.OP_NO_COMPRESSION  # CRIME (RFC 7457 2.6)
        | ssl.OP_NO_RENEGOTIATION  # RFC 7457 2.10; TLS 1.3 has none at all
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | OP_PRIORITIZE_CHACHA
    )
    if tickets:
        context.options &= ~ssl.OP_NO_TICKET
    else:
        context.options |= ssl.OP_NO_TICKET


def make_server_context(certfile: Path | str, keyfile: Path | str) -> ssl.SSLContext:
    """A server context with pimail's policy, for one certificate pair.

    Raises ssl.SSLError or OSError when the files are missing, malformed or do
    not belong together.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_server_policy(context, tickets=True)
    context.load_cert_chain(certfile, keyfile)
    return context


def make_client_context(
    *, cafile: Path | str | None = None, cadata: str | None = None, verify: bool = True
) -> ssl.SSLContext:
    """A client context for pimail's own outbound connections: TLS 1.2 or later.

    Verifies the peer's chain and host name by default, against the system's
    trust anchors, or only against `cafile`/`cadata` when given (e.g. the
    internal CA). `verify=False` is for opportunistic encryption (RFC 7435;
    SMTP between MXs, RFC 3207 4.1), where an unverified session still beats
    plain text. Ciphers stay OpenSSL's defaults, so that old peers get TLS
    rather than none.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile, cadata=cadata)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# -- the store ---------------------------------------------------------------------

# (device, inode, mtime_ns, size) of a file
_FileStamp = tuple[int, int, int, int]


@dataclass(frozen=True)
class _Loaded:
    name: str
    directory: str  # the resolved version directory
    stamps: tuple[_FileStamp, _FileStamp]  # fullchain, privkey
    context: ssl.SSLContext
    certfile: Path
    exact: frozenset[str]  # DNS names
    wildcard_parents: frozenset[str]  # "example.org" for "*.example.org"


class CertificateStore:
    """The current server contexts, one per certificate name, chosen by SNI.

    `names` are the directories under `live_dir`, in order of preference: for
    a server name several certificates cover, the first wins; a client that
    sends no SNI, or a name none covers, gets the first one loaded. A name whose
    files do not exist yet is skipped until a reload finds them.

    `reload()` compares each pair's resolved directory, inode, mtime and size
    with what is loaded and loads only what changed; a pair that fails to load
    leaves the previous one in service. With `check_interval` set, the SNI
    callback itself runs `reload()` at most that often, so a new certificate is
    served within that many seconds without anybody calling anything.
    """

    def __init__(
        self,
        live_dir: Path,
        names: Sequence[str] = (INTERNAL,),
        *,
        check_interval: float | None = CHECK_INTERVAL,
        ticket_key_lifetime: float = TICKET_KEY_LIFETIME,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not names:
            raise ValueError("CertificateStore needs at least one certificate name")
        self._live_dir = Path(live_dir)
        self._names = tuple(names)
        self._check_interval = check_interval
        self._ticket_key_lifetime = ticket_key_lifetime
        self._clock = clock
        self._lock = threading.Lock()
        self._loaded: dict[str, _Loaded] = {}  # replaced whole, never mutated
        self._overrides: dict[str, ssl.SSLContext] = {}
        self._last_check = clock()
        self._stable = self._make_front(tickets=False)
        self._rotating = self._make_front(tickets=True)
        self._rotating_born = clock()
        self.reload()

    # -- the contexts listeners use -----------------------------------------------

    @property
    def context(self) -> ssl.SSLContext:
        """The front context that never changes (no stateless session tickets)."""
        return self._stable

    def handshake_context(self) -> ssl.SSLContext:
        """The front context for a handshake starting now (tickets, rotated keys)."""
        if self._clock() - self._rotating_born >= self._ticket_key_lifetime:
            self.rotate_ticket_keys()
        return self._rotating

    def rotate_ticket_keys(self) -> None:
        """Retire the current rotating front: new ticket keys from now on."""
        self._rotating = self._make_front(tickets=True)
        self._rotating_born = self._clock()
        log.info("TLS session ticket keys rotated")

    def _make_front(self, *, tickets: bool) -> ssl.SSLContext:
        front = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _apply_server_policy(front, tickets=tickets)
        front.sni_callback = self._sni_callback
        return front

    # -- choosing by SNI -------------------------------------------------------------

    def context_for(self, server_name: str | None) -> ssl.SSLContext | None:
        """The context for a client that asked for `server_name` (None: no SNI)."""
        loaded = [self._loaded[n] for n in self._names if n in self._loaded]
        if server_name:
            # RFC 6066 3: HostName is ASCII (A-labels) and case-insensitive.
            name = server_name.rstrip(".").lower()
            override = self._overrides.get(name)
            if override is not None:
                return override
            for entry in loaded:
                if name in entry.exact:
                    return entry.context
            # RFC 6125 6.4.3: "*" stands for exactly one left-most label.
            parent = name.partition(".")[2]
            for entry in loaded:
                if parent in entry.wildcard_parents:
                    return entry.context
        return loaded[0].context if loaded else None

    def set_override(self, server_name: str, context: ssl.SSLContext | None) -> None:
        """Serve `context` to clients asking for `server_name` (None: stop).

        For short-lived special certificates, e.g. the TLS-ALPN-01 validation
        certificate (RFC 8737 3), which must be set up with ALPN "acme-tls/1".
        """
        name = server_name.rstrip(".").lower()
        overrides = dict(self._overrides)
        if context is None:
            overrides.pop(name, None)
        else:
            overrides[name] = context
        self._overrides = overrides

    def _sni_callback(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> int | None:
        # OpenSSL calls this for every ClientHello, with or without SNI.
        self._maybe_reload()
        context = self.context_for(server_name)
        if context is None:
            log.error("TLS handshake without any certificate loaded dir=%s", self._live_dir)
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        ssl_object.context = context
        return None

    # -- what is loaded --------------------------------------------------------------

    def info(self, name: str) -> Any:
        """The loaded certificate's details (a tls.ca.CertInfo; imports cryptography)."""
        from . import ca

        entry = self._loaded.get(name)
        return ca.read_certificate(entry.certfile) if entry else None

    @property
    def loaded_names(self) -> list[str]:
        return [n for n in self._names if n in self._loaded]

    # -- reload -----------------------------------------------------------------------

    def reload(self) -> list[str]:
        """Load what changed on disk; return the names now serving a new pair."""
        with self._lock:
            return self._reload_locked()

    def _maybe_reload(self) -> None:
        if self._check_interval is None:
            return
        if self._clock() - self._last_check < self._check_interval:
            return
        if not self._lock.acquire(blocking=False):
            return  # someone else is reloading right now
        try:
            self._reload_locked()
        except Exception:  # a handshake must never die of a reload
            log.exception("certificate reload failed dir=%s", self._live_dir)
        finally:
            self._lock.release()

    def _reload_locked(self) -> list[str]:
        self._last_check = self._clock()
        loaded = dict(self._loaded)
        changed: list[str] = []
        for name in self._names:
            entry = self._load(name, loaded.get(name))
            if entry is not None and entry is not loaded.get(name):
                loaded[name] = entry
                changed.append(name)
        if changed:
            self._loaded = loaded
        return changed

    def _load(self, name: str, current: _Loaded | None) -> _Loaded | None:
        """The pair for `name`: `current` if unchanged, a new one, or None/`current`
        when there is nothing (new) that loads."""
        try:
            directory_path = Path(self._live_dir / name).resolve(strict=True)
            certfile, keyfile = directory_path / FULLCHAIN, directory_path / PRIVKEY
            stamps = (_stamp(certfile), _stamp(keyfile))
        except FileNotFoundError:
            if current is None:
                log.debug("no certificate yet name=%s", name)
            else:
                log.warning("certificate files gone, keeping the loaded ones name=%s", name)
            return current
        directory = str(certfile.parent)
        if current is not None and (current.directory, current.stamps) == (directory, stamps):
            return current
        try:
            context = make_server_context(certfile, keyfile)
            decoded = ssl._ssl._test_decode_cert(str(certfile))  # type: ignore[attr-defined]
        except (OSError, ValueError, ssl.SSLError) as e:
            # Not recorded as seen: the next reload tries again (maybe a writer
            # that does not rename had not finished).
            log.warning("certificate not loaded name=%s dir=%s error=%s", name, directory, e)
            return current
        dns_names = [v for k, v in decoded.get("subjectAltName", ()) if k == "DNS"]
        log.info(
            "certificate loaded name=%s serial=%s not_after=%s",
            name,
            decoded.get("serialNumber", "?").lower().lstrip("0"),
            decoded.get("notAfter"),
        )
        return _Loaded(
            name=name,
            directory=directory,
            stamps=stamps,
            context=context,
            certfile=certfile,
            exact=frozenset(n.lower() for n in dns_names if not n.startswith("*.")),
            wildcard_parents=frozenset(n[2:].lower() for n in dns_names if n.startswith("*.")),
        )


def _stamp(path: Path) -> _FileStamp:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
