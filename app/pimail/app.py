"""`pimail serve`: one process, one event loop, every listener.

Startup order: take the data directory's lock (one server per data
directory), open the databases, bring the index in line with the Maildirs,
then listen. SIGTERM/SIGINT stop listening, let deliveries in flight finish,
and persist the UID bounds before exit.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from . import db, systemd
from .auth import known
from .auth.accounts import Directory
from .auth.login import Authenticator
from .auth.throttle import LoginThrottle, throttle_limits
from .config import Settings, parse_listen
from .net import ConnectionLimiter
from .queue.runner import Queue
from .smtp.inbound import InboundHandler
from .smtp.server import create_session
from .smtp.submission import SubmissionHandler
from .store.reader import IndexReader
from .store.store import Store
from .tls.context import CertificateStore, make_server_context

# The stream buffer of an IMAP or POP3 connection: asyncio stops reading the
# socket once 2 x this is waiting (the server reads 64 KiB at a time after
# login anyway). 8 KiB: a client that pipelines and does not read what comes
# back holds 16 KiB here, not 128 KiB (issue 13, bench/preauth_memory.py).
STREAM_LIMIT = 8 * 1024
# How often to look whether the clock is synchronized while certificates made
# before it are in use (clock.py), and the pause after a failed reissue.
CLOCK_POLL = 15.0
CLOCK_RETRY = 300.0

log = logging.getLogger("pimail")


def tls_live_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "tls" / "live"


class AlreadyRunning(Exception):
    pass


def lock_data_dir(settings: Settings) -> IO[str]:
    """An exclusive lock on <data>/pimail.lock, held for the process's life."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(settings.data_dir / "pimail.lock", "a+")  # noqa: SIM115 (held open)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        handle.close()
        raise AlreadyRunning(f"a pimail server is running on {settings.data_dir}") from e
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


class Server:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lock = lock_data_dir(settings)
        self.directory = Directory(db.open_main(settings.db_path))
        # The store's writer thread gets a connection of its own.
        self.store = Store(settings, Directory(db.open_main(settings.db_path)))
        self.listeners: list[asyncio.base_events.Server] = []
        self.stopping = asyncio.Event()
        limits = throttle_limits(settings.auth)
        self.authenticator = Authenticator(
            self.directory,
            LoginThrottle(limits),
            settings.auth.failure_delay,
            known=known.KnownAddresses(
                settings.data_dir / known.FILENAME, limits.known_ttl, limits.max_tracked
            ),
        )
        self.queue = Queue(settings, Directory(db.open_main(settings.db_path)), self.store)
        self.certs: CertificateStore | None = None
        self._acme_task: asyncio.Task[None] | None = None
        self._alpn_task: asyncio.Task[None] | None = None
        self._clock_task: asyncio.Task[None] | None = None
        self._web_runners: list[Any] = []  # aiohttp AppRunners
        self.web: Any = None
        self._bayes: Any = None  # filter/bayes.py's models: _spam_model()
        self.backups: Any = None  # backup/schedule.py's Nightly
        self.exit_code = 0  # the wizard's restore asks for a restart (non-zero)

    async def start(self) -> None:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        # The certificate child (a fresh interpreter that imports cryptography:
        # the longest step of a start on a Pi, issue 16) runs while the index
        # is brought in line with the Maildirs; both finish before any listener.
        domains = self.directory.domains()
        certificates = loop.run_in_executor(None, self._ensure_certificates, domains)
        report = await loop.run_in_executor(None, self.store.open)
        log.info(
            "index ready rebuilt=%s mailboxes=%d added=%d removed=%d updated=%d seconds=%.2f",
            report.rebuilt,
            report.mailboxes,
            report.added,
            report.removed,
            report.updated,
            time.monotonic() - started,
        )
        await certificates
        if self.settings.filter.bayes:
            self._spam_model()  # Junk moves train it even with the filter off
        if self.store.guard is not None:
            self.store.guard.start()  # store/health.py: polls the data disk
        await self.queue.start()
        await self._start_smtp()
        self.store.start_analyser()
        await self._start_imap()
        await self._start_pop3()
        await self._start_http()
        self._clock_task = loop.create_task(self._reissue_when_clock_set())
        self._start_backups()

    def _start_backups(self) -> None:
        """The nightly backup (backup/schedule.py), when a repository is set."""
        from .backup.schedule import Nightly, postmaster_of

        self.backups = Nightly(
            self.settings, self.queue.deliver_notice, lambda: postmaster_of(self.directory)
        )
        self.backups.start()

    async def _reissue_when_clock_set(self) -> None:
        """Certificates made before the clock was synchronized (a Pi's first
        boot: tls/ca.py marks them) are made again as soon as it is (clock.py)."""
        from . import clock
        from .tls.ca import unsynced

        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, unsynced, self.settings.data_dir):
            if clock.synchronized():
                log.info("clock synchronized: reissuing certificates made before")
                domains = self.directory.domains()
                try:
                    await loop.run_in_executor(None, self._ensure_certificates, domains)
                    if self.certs is not None:
                        self.certs.reload()
                except Exception:  # logged, tried again: never a silent end of the task
                    log.exception("certificate reissue failed")
                if unsynced(self.settings.data_dir):
                    await asyncio.sleep(CLOCK_RETRY)  # the child failed: not in a busy loop
            await asyncio.sleep(CLOCK_POLL)

    def _ensure_certificates(self, domains: list[str]) -> None:
        """The internal CA and a server certificate for our names, made in a
        child process (tls/ensure.py) so `cryptography` stays out of this one."""
        s = self.settings
        request = {
            "data_dir": str(s.data_dir),
            "hostname": s.hostname,
            "domains": domains,
            "extra_names": s.tls.extra_names,
            "time_wait": s.tls.time_wait,
        }
        done = subprocess.run(
            [sys.executable, "-m", "pimail.tls.ensure", json.dumps(request)],
            capture_output=True, text=True, timeout=120 + s.tls.time_wait,
        )  # fmt: skip
        if done.returncode != 0:
            log.error("certificate setup failed: %s", done.stderr.strip()[-2000:])
        else:
            result = json.loads(done.stdout.strip().splitlines()[-1])
            log.info(
                "certificate name=%s serial=%s not_after=%s issued=%s reason=%s clock_synced=%s",
                result["name"], result["serial"], result["not_after"], result["issued"],
                result["reason"], result.get("clock_synced"),
            )  # fmt: skip
        # An ACME certificate wins for the names it covers; the internal one
        # serves everything else (and all names until ACME has succeeded).
        self.certs = CertificateStore(tls_live_dir(s.data_dir), names=("acme", "internal"))

    def acme_request(self, force: bool = False) -> dict[str, object]:
        t = self.settings.tls
        return {
            "data_dir": str(self.settings.data_dir),
            "directory_url": t.acme_directory,
            "email": t.acme_email,
            "names": t.acme_names or [self.settings.hostname],
            "ca_bundle": t.acme_ca_bundle,
            "force": force,
            "challenge": t.acme_challenge,
        }

    async def run_acme(self, force: bool = False) -> dict[str, Any]:
        """One run of the ACME client (a child process, which decides whether
        renewal is due and backs off by itself); reloads what it issued.
        Returns its result, or {"status": "failed", "error": ...}."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pimail.tls.acme_client", json.dumps(self.acme_request(force)),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        lines = out.decode().strip().splitlines()
        if proc.returncode != 0 or not lines:
            log.error("acme client failed: %s", err.decode().strip()[-1000:])
            return {"status": "failed", "error": err.decode().strip()[-500:]}
        result: dict[str, Any] = json.loads(lines[-1])
        log.info("acme %s", " ".join(f"{k}={v}" for k, v in result.items()))
        if result.get("status") == "issued" and self.certs is not None:
            self.certs.reload()
        return result

    async def _acme_loop(self) -> None:
        """Check renewal now and then."""
        while True:
            await self.run_acme()
            await asyncio.sleep(self.settings.tls.acme_check_interval)

    async def _start_http(self) -> None:
        """The web interface (web/server.py): HTTP for ACME and the redirect,
        HTTPS for everything else, with the certificates chosen by SNI."""
        from aiohttp import web as aioweb

        from .web.server import Web

        self.web = Web(self)
        loop = asyncio.get_running_loop()
        certs = self.certs
        w = self.settings.web
        limiter = ConnectionLimiter(w.max_connections_per_ip, w.max_connections)
        sites = (
            ("http", self.web.http, self.settings.web.listen_http, None),
            ("https", self.web.https, self.settings.web.listen_https,
             certs.context if certs is not None else None),
        )  # fmt: skip
        for name, application, addresses, context in sites:
            if not addresses or (name == "https" and context is None):
                continue
            runner = aioweb.AppRunner(
                application, access_log=None, handle_signals=False,
                keepalive_timeout=w.request_timeout,
            )  # fmt: skip
            await runner.setup()
            self._web_runners.append(runner)
            factory = _limited(runner.server, limiter)
            for address in addresses:
                host, port = parse_listen(address)
                creating = loop.create_server(
                    factory, host, port, reuse_address=True, ssl=context,
                    ssl_handshake_timeout=10 if context is not None else None,
                )  # fmt: skip
                await self._bind(name, address, creating)
        if self.settings.tls.acme:
            loop = asyncio.get_running_loop()
            self._acme_task = loop.create_task(self._acme_loop())
            self._alpn_task = loop.create_task(self._watch_alpn_certificates())

    def _spam_model(self) -> Any:
        """The Bayes models (bayes.db and the starter), opened once: the inbound
        filter scores with them, and the store's Junk verdicts (IMAP and webmail
        moves into and out of Junk) train them."""
        if self._bayes is None:
            from .filter.bayes import JunkTrainer, open_models

            self._bayes = open_models(self.settings)
            self.store.on_junk_verdict = JunkTrainer(self._bayes)
        return self._bayes

    def _pipeline(self) -> Any:
        """The inbound content filter, when enabled (`filter.enabled`)."""
        if not self.settings.filter.enabled:
            return None
        from .filter.pipeline import Pipeline
        from .filter.senders import SenderLists

        bayes = self._spam_model() if self.settings.filter.bayes else None
        # The directory's connection: both are used on the event loop only.
        senders = SenderLists(self.directory.con)
        return Pipeline(self.settings, self.queue.resolver, bayes, senders)

    def _mta_sts_policy(self, domain: str) -> str | None:
        """Our own MTA-STS policy for a local domain (what `pimail dns` announces)."""
        from .dns.records import mta_sts_policy

        if not self.directory.is_local_domain(domain):
            return None
        return mta_sts_policy(self.settings, domain)

    async def _watch_alpn_certificates(self) -> None:
        """Serve TLS-ALPN-01 validation certificates (RFC 8737) while the ACME
        client has them on disk: to "acme-tls/1" clients asking for that name."""
        directory = self.settings.data_dir / "tls" / "acme-alpn"
        served: dict[str, float] = {}
        while True:
            await asyncio.sleep(0.5)
            if self.certs is None:
                continue
            try:
                present = {p.stem: p.stat().st_mtime for p in directory.glob("*.pem")}
            except OSError:
                present = {}
            for name, mtime in present.items():
                if served.get(name) != mtime:
                    path = directory / f"{name}.pem"
                    try:
                        ctx = make_server_context(path, path)
                        ctx.set_alpn_protocols(["acme-tls/1"])
                    except (OSError, ssl.SSLError) as e:
                        log.warning("tls-alpn-01 certificate unusable name=%s error=%s", name, e)
                        continue
                    self.certs.set_override(name, ctx)
                    served[name] = mtime
                    log.info("tls-alpn-01 certificate served name=%s", name)
            for name in list(served):
                if name not in present:
                    self.certs.set_override(name, None)
                    del served[name]

    async def _start_smtp(self) -> None:
        s = self.settings.smtp
        handler = InboundHandler(
            self.settings, self.directory, self.store, self.queue, self._pipeline()
        )
        limiter = ConnectionLimiter(s.max_connections_per_ip, s.max_connections)
        incoming = self.settings.spool_dir / "incoming"

        certs = self.certs

        def factory() -> asyncio.Protocol:
            return create_session(
                handler,
                limiter,
                incoming,
                self.settings.hostname,
                s.max_message_size,
                s.timeout,
                s.min_data_rate,
                s.max_command_line,
                # Every connection gets the context current now (ticket keys rotate).
                tls_context=certs.handshake_context() if certs is not None else None,
            )

        for address in s.listen:
            await self._listen("smtp", factory, address)
        await self._start_submission(incoming)

    async def _start_submission(self, incoming: Path) -> None:
        """587 with STARTTLS and 465 with implicit TLS (RFC 8314), AUTH required."""
        s = self.settings.smtp
        handler = SubmissionHandler(
            self.settings, self.directory, self.store, self.authenticator, self.queue
        )
        limiter = ConnectionLimiter(s.max_connections_per_ip, s.max_connections)
        certs = self.certs
        if certs is None:
            return

        def factory(implicit: bool) -> asyncio.Protocol:
            return create_session(
                handler, limiter, incoming, self.settings.hostname, s.max_message_size,
                s.timeout, s.min_data_rate, s.max_command_line,
                tls_context=certs.handshake_context(), implicit_tls=implicit,
                require_starttls=not implicit, auth_required=True,
            )  # fmt: skip

        for address in self.settings.submission.listen_starttls:
            await self._listen("submission", lambda: factory(False), address)
        for address in self.settings.submission.listen_tls:
            # TLS is started by the session (smtp/server.py), like STARTTLS.
            await self._listen("submissions", lambda: factory(True), address)

    async def _start_imap(self) -> None:
        # Imported here, not at the top: IMAP's modules load after the SMTP
        # listener is up, not on the way to its banner (issue 16 item 6).
        from .imap.context import ImapContext
        from .imap.server import ImapServer
        from .imap.views import MailboxViews

        reader = IndexReader(self.settings.index_path)
        views = MailboxViews(reader)
        views.loop = asyncio.get_running_loop()
        self.store.notify = views.notify_threadsafe
        ctx = ImapContext(
            self.settings, self.store, self.directory, self.authenticator, reader, views,
            self.certs,
        )  # fmt: skip
        imap = ImapServer(ctx)
        self.imap_reader = reader
        for address in self.settings.imap.listen:
            await self._listen_streams("imap", imap.handle, address, implicit_tls=False)
        if self.certs is not None:
            for address in self.settings.imap.listen_tls:
                await self._listen_streams("imaps", imap.handle, address, implicit_tls=True)

    async def _start_pop3(self) -> None:
        from .pop3.server import Pop3Server  # after SMTP's banner, as IMAP's above

        certs = self.certs
        pop3 = Pop3Server(
            self.settings, self.store, self.authenticator, self.imap_reader,
            certs.handshake_context if certs is not None else None,
        )  # fmt: skip
        for address in self.settings.pop3.listen:
            await self._listen_streams("pop3", pop3.handle, address, implicit_tls=False)
        if certs is not None:
            for address in self.settings.pop3.listen_tls:
                await self._listen_streams("pop3s", pop3.handle, address, implicit_tls=True)

    async def _listen_streams(
        self, name: str, handle: Any, address: str, implicit_tls: bool
    ) -> None:
        """A stream listener. Implicit TLS starts on each accepted connection (not
        in the listener) so that every handshake gets the current context."""
        host, port = parse_listen(address)

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await handle(reader, writer, implicit_tls)

        await self._bind(
            name,
            address,
            asyncio.start_server(on_client, host, port, reuse_address=True, limit=STREAM_LIMIT),
        )

    async def _listen(
        self, name: str, factory: object, address: str, tls: ssl.SSLContext | None = None
    ) -> None:
        host, port = parse_listen(address)
        loop = asyncio.get_running_loop()
        creating = loop.create_server(factory, host, port, reuse_address=True, ssl=tls)  # type: ignore[arg-type]
        await self._bind(name, address, creating)

    async def _bind(self, name: str, address: str, creating: Any) -> None:
        """Listen; an IPv6 wildcard on a host without IPv6 is skipped, not fatal."""
        try:
            server = await creating
        except OSError as e:
            if address.startswith("[") and e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                log.warning("not listening service=%s address=%s error=%s", name, address, e)
                return
            raise
        self.listeners.append(server)
        log.info("listening service=%s address=%s", name, address)

    async def stop(self) -> None:
        if self.backups is not None:
            self.backups.stop()
        for task in (self._acme_task, self._alpn_task, self._clock_task):
            if task is not None:
                task.cancel()
        for server in self.listeners:
            server.close()
        for runner in self._web_runners:
            await runner.cleanup()
        if self.store.guard is not None:
            self.store.guard.stop()
        await self.queue.stop()
        await self.store.aclose()
        if self._bayes is not None:
            self._bayes.close()
        self.directory.con.close()
        self.lock.close()
        log.info("stopped")


class _Limited(asyncio.Protocol):
    """aiohttp's protocol behind a count of connections per client address: one
    over the limits is closed as soon as it is made (its requests never run).
    A wrapper, since aiohttp's RequestHandler has __slots__."""

    def __init__(self, inner: asyncio.Protocol, limiter: ConnectionLimiter) -> None:
        self.inner = inner
        self.limiter = limiter
        self.ip: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername") or ("?", 0)
        ip = str(peer[0])
        refused = self.limiter.acquire(ip)
        self.inner.connection_made(transport)
        if refused is None:
            self.ip = ip
        else:
            log.warning("web connection refused ip=%s reason=%s", ip, refused[4:])
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ip is not None:
            self.limiter.release(self.ip)
            self.ip = None
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def _limited(factory: Callable[[], Any], limiter: ConnectionLimiter) -> Callable[[], Any]:
    return lambda: _Limited(factory(), limiter)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # aiosmtpd logs every command line at INFO (addresses, AUTH data): keep it quiet.
    aiosmtpd_log = logging.getLogger("mail.log")
    aiosmtpd_log.setLevel(logging.WARNING)
    # aiosmtpd 1.4 warns about its own use of a deprecated field at every AUTH.
    aiosmtpd_log.addFilter(lambda record: "login_data is deprecated" not in record.getMessage())


def tune_memory() -> None:
    """Keep an idle connection cheap on a small board (bench/imap_memory.py).

    - glibc moves its mmap threshold up to the largest block freed. scrypt frees
      16 MiB at every login, and from then on every mid-sized buffer comes from
      the heap and fragments it: ~85 KiB of RSS per idle connection. A fixed
      threshold of 1 MiB (mallopt M_MMAP_THRESHOLD) stops that; 128 KiB also
      would, but then every large FETCH response costs fresh pages (30% slower).
    - asyncio reads with recv(256 KiB): above that threshold, each read would be
      an mmap and munmap. 64 KiB reads stay on the heap (a TCP read rarely brings
      more) and keep the throughput.
    - asyncio's TLS layer gives every connection a 256 KiB receive buffer; a TLS
      record is at most 16 KiB plus a header, so 18 KiB loses nothing.
    """
    import asyncio.selector_events
    import asyncio.sslproto
    import ctypes
    import ctypes.util

    asyncio.selector_events._SelectorTransport.max_size = 64 * 1024  # type: ignore[attr-defined]
    asyncio.sslproto.SSLProtocol.max_size = 18 * 1024
    libc_name = ctypes.util.find_library("c")
    if libc_name and "libc" in libc_name:
        try:
            m_mmap_threshold = -3
            ctypes.CDLL(libc_name).mallopt(m_mmap_threshold, 1024 * 1024)
        except (OSError, AttributeError):
            log.debug("mallopt not available")


async def serve(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT (or a restart is asked for); the exit code."""
    tune_memory()
    server = Server(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stopping.set)
    await server.start()
    log.info("ready data_dir=%s pid=%d", Path(settings.data_dir).resolve(), os.getpid())
    systemd.notify("READY=1\nSTATUS=serving")
    interval = systemd.watchdog_interval()
    watchdog = None
    if interval:

        async def healthy() -> None:
            await server.store.run(lambda: None)  # the writer thread answers

        watchdog = loop.create_task(systemd.feed_watchdog(healthy, interval))
    await server.stopping.wait()
    systemd.notify("STOPPING=1")
    if watchdog is not None:
        watchdog.cancel()
    await server.stop()
    return server.exit_code
