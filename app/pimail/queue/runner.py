"""The queue manager: picks what is due, delivers it, records what happened.

Postfix's qmgr and smtp in one asyncio task family:

- A scheduler wakes when mail is queued, when the next retry is due, and
  every `poll_interval` (to see `pimail queue retry` from the CLI). It loads
  due recipients in batches (never the whole queue: 10,000 deferred messages
  cost rows on disk, not memory), groups them by message and destination, and
  hands them to the destination.
- A destination is a recipient domain, or the smarthost when one is set. It
  has at most `max_per_destination` connections (and all destinations
  together `max_connections`); each connection carries up to
  `messages_per_connection` messages before it is closed.
- Routing (RFC 5321 5.1): MX hosts in preference order, the domain itself when
  it has no MX, nothing for a null MX (RFC 7505). MTA-STS (RFC 8461) can
  narrow the hosts and demand verified TLS.
- Outcomes: 2xx delivered, 5xx bounced, 4xx or a broken route deferred with
  exponential backoff, bounced once older than `lifetime`; a delay notice goes
  to the sender once after `delay_notice`. Bounces are RFC 3464 DSNs, to the
  sender's mailbox when the sender is local, else queued with a null sender;
  never to a null sender.
- DKIM: a message is signed once, at its first attempt, for the local domain
  of its From: (or the sender's), and the signature is kept with it.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .. import db
from ..auth.accounts import Directory
from ..config import Settings
from ..dns.resolver import DnsError, Resolver
from ..store import headers
from ..store.health import DataGuard, Health
from ..store.spool import Incoming
from . import dkim, dsn, mtasts
from .client import Connection, ConnectionFailed, Reply, Tls, Transaction
from .store import QUEUE_MIGRATIONS, QueuedMessage, QueueStore, Recipient

log = logging.getLogger(__name__)

T = TypeVar("T")
BATCH = 500
# Recipients handed to destinations and not finished yet. Finished ones make
# room; the scheduler refills when fewer than half are left, so that each
# refill (a query that skips what is in flight) serves many deliveries.
MAX_IN_MEMORY = 1000
HEADER_CAP = 64 * 1024
CONNECTION_IDLE = 2.0  # seconds a connection waits for another message
RELAY = "[relay]"


@dataclass
class Job:
    message_id: str
    destination: str
    recipients: list[Recipient]


@dataclass
class Destination:
    key: str
    jobs: collections.deque[Job] = field(default_factory=collections.deque)
    workers: int = 0
    # Set when jobs are added: an idle connection waiting for more takes them.
    more: asyncio.Event = field(default_factory=asyncio.Event)


class RouteError(Exception):
    """The destination cannot be reached now (temporary) or ever (permanent)."""

    def __init__(self, message: str, status: str, temporary: bool, remote: str | None = None):
        super().__init__(message)
        self.status = status
        self.temporary = temporary
        self.remote = remote


@dataclass
class Outcome:
    recipient: Recipient
    reply: Reply | None  # None: no SMTP reply (route or connection failure)
    status: str
    temporary: bool
    remote: str | None
    diagnostic: str


class Queue:
    def __init__(self, settings: Settings, directory: Directory, local_store: Any) -> None:
        self.settings = settings
        self.directory = directory
        self.local_store = local_store
        self.store = QueueStore(settings.queue_dir)
        self.keys_con = db.open_main(settings.db_path)
        self.resolver = Resolver(settings.dns.nameservers, settings.dns.timeout)
        out = settings.outbound
        # MTA-STS caches policies in queue.db through a connection of its own:
        # it runs on the event loop, the store's connection on the writer thread.
        self._mta_sts_con = db.connect(settings.queue_dir / "queue.db", QUEUE_MIGRATIONS)
        self.mta_sts = mtasts.MtaSts(
            self.resolver,
            self._mta_sts_con,
            port=out.mta_sts_port,
            cafile=out.ca_file or None,
            timeout=min(out.connect_timeout, 30.0),
        )
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="queue-writer")
        self._destinations: dict[str, Destination] = {}
        self._in_flight: set[int] = set()
        self._connections = 0
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._workers: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.bounced = 0
        self.deferred = 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    @property
    def _guard(self) -> DataGuard | None:
        """The data directory's health (store/health.py), the store's."""
        return getattr(self.local_store, "guard", None)

    def _storage_changed(self, health: Health) -> None:
        # Called on any thread: wake the scheduler on the loop.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.wake)

    # -- life cycle ---------------------------------------------------------------

    async def start(self) -> None:
        files, dropped = await self.run(self.store.recover)
        counts = await self.run(self.store.counts)
        log.info(
            "queue ready queued=%d deferred=%d orphan_files=%d dropped=%d",
            counts.get("queued", 0), counts.get("deferred", 0), files, dropped,
        )  # fmt: skip
        self._wakeup = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self._guard is not None:
            self._guard.on_change.append(self._storage_changed)
        self._task = self._loop.create_task(self._schedule(), name="queue")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._workers) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.run(self.store.close)
        self._mta_sts_con.close()
        self.keys_con.close()
        self._writer.shutdown(wait=True)

    def wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    # -- in -------------------------------------------------------------------------

    async def enqueue(
        self, message: Incoming, sender: str, recipients: list[str], account: str = ""
    ) -> str:
        """Durable before it returns: the caller may answer 250. Refused
        (StorageUnavailable) while the data disk is gone, read-only or full."""
        guard = self._guard
        if guard is not None:
            await asyncio.to_thread(guard.require)
        message_id = await self.run(
            lambda: self.store.enqueue(message, sender, recipients, account=account)
        )
        log.info(
            "queued id=%s from=<%s> rcpts=%d size=%d account=%s",
            message_id, sender, len(recipients), message.size, account,
        )  # fmt: skip
        self.wake()
        return message_id

    # -- scheduling -------------------------------------------------------------------

    async def _schedule(self) -> None:
        """Dispatch what is due; then sleep until the next retry is due, new
        mail comes (`wake`), a job ends, or `poll_interval` passes. Never spins:
        recipients due but in flight are waited for, not polled."""
        assert self._wakeup is not None
        poll = self.settings.outbound.poll_interval
        while True:
            self._wakeup.clear()  # before looking: a wake() from now on counts
            guard = self._guard
            if guard is not None and not guard.health.ok:
                # Paused while the data disk is unavailable: no attempt (its
                # result could not be recorded), no bounce, no retry counted.
                # The guard's poll wakes us when it is back.
                await self._wakeup.wait()
                continue
            try:
                dispatched, full = await self._dispatch()
                next_due = await self.run(self.store.next_due)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("queue scheduling failed")
                dispatched, full, next_due = 0, False, None
            if dispatched and full:
                continue  # a whole batch: there may be more due now
            delay = poll
            if next_due is not None and next_due > time.time():
                delay = min(poll, next_due - time.time())
            try:
                await asyncio.wait_for(self._wakeup.wait(), max(delay, 0.01))
            except TimeoutError:
                pass

    async def _dispatch(self) -> tuple[int, bool]:
        """Hand due recipients to their destinations. Returns (how many, whether
        that was a full batch)."""
        room = MAX_IN_MEMORY - len(self._in_flight)
        if room <= 0:
            return 0, False
        limit = min(BATCH, room)
        due = await self.run(self.store.due, time.time(), limit, set(self._in_flight))
        jobs: dict[tuple[str, str], Job] = {}
        for message_id, recipient in due:
            key = self._destination_key(recipient.domain)
            job = jobs.setdefault((message_id, key), Job(message_id, key, []))
            job.recipients.append(recipient)
            self._in_flight.add(recipient.id)
        for job in jobs.values():
            destination = self._destinations.setdefault(
                job.destination, Destination(job.destination)
            )
            destination.jobs.append(job)
            destination.more.set()
        self._start_workers()
        return len(due), len(due) == limit

    def _destination_key(self, domain: str) -> str:
        return RELAY if self.settings.outbound.relay_host else domain

    def _start_workers(self) -> None:
        out = self.settings.outbound
        for destination in list(self._destinations.values()):
            while (
                destination.jobs
                and destination.workers < min(out.max_per_destination, len(destination.jobs))
                and self._connections < out.max_connections
            ):
                destination.workers += 1
                self._connections += 1
                task = asyncio.get_running_loop().create_task(self._work(destination))
                self._workers.add(task)
                task.add_done_callback(self._workers.discard)
            if not destination.jobs and destination.workers == 0:
                del self._destinations[destination.key]

    # -- one destination ------------------------------------------------------------------

    async def _work(self, destination: Destination) -> None:
        out = self.settings.outbound
        connection: Connection | None = None
        try:
            while True:
                if not destination.jobs:
                    # Like Postfix's connection cache: a message that follows
                    # within CONNECTION_IDLE seconds goes over this connection.
                    if connection is None or not connection.usable:
                        break
                    destination.more.clear()
                    try:
                        await asyncio.wait_for(destination.more.wait(), CONNECTION_IDLE)
                    except TimeoutError:
                        break
                    continue
                job = destination.jobs.popleft()
                if connection is not None and (
                    not connection.usable or connection.sent >= out.messages_per_connection
                ):
                    await connection.close()
                    connection = None
                if connection is None:
                    try:
                        connection = await self._open(destination.key)
                    except RouteError as e:
                        # The route is down for every job waiting for it.
                        waiting = [job, *destination.jobs]
                        destination.jobs.clear()
                        for waiting_job in waiting:
                            await self._route_failed(waiting_job, e)
                        break
                await self._attempt(connection, job)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("queue worker failed destination=%s", destination.key)
        finally:
            if connection is not None:
                await connection.close()
            destination.workers -= 1
            self._connections -= 1
            if destination.jobs:
                self._start_workers()
            elif destination.workers == 0:
                self._destinations.pop(destination.key, None)

    async def _open(self, destination: str) -> Connection:
        out = self.settings.outbound
        if destination == RELAY:
            return await self._open_relay()
        hosts = await self._route(destination)
        policy = await self.mta_sts.policy(destination) if out.mta_sts else None
        enforce = mtasts.requires_tls(policy)
        if enforce:
            allowed = [h for h in hosts if mtasts.mx_allowed(policy, h)]
            if not allowed:
                raise RouteError(
                    f"{destination}: no MX host matches its MTA-STS policy", "4.7.5", True
                )
            hosts = allowed
        last = RouteError(f"{destination}: no host could be reached", "4.4.1", True)
        for host in hosts:
            try:
                addresses = await self.resolver.addresses(host)
            except DnsError as e:
                last = RouteError(str(e), "4.4.3", True)
                continue
            for address in addresses:
                tls = Tls.VERIFY if enforce else Tls.OPPORTUNISTIC
                try:
                    return await self._connect(host, address, out.port, tls)
                except ConnectionFailed as e:
                    last = RouteError(str(e), e.status, True, host)
                    if e.tls_failed and not enforce:
                        try:
                            return await self._connect(host, address, out.port, Tls.NONE)
                        except ConnectionFailed as plain:
                            last = RouteError(str(plain), plain.status, True, host)
                    log.info("connect failed destination=%s error=%s", destination, e)
        raise last

    async def _connect(self, host: str, address: str, port: int, tls: Tls) -> Connection:
        out = self.settings.outbound
        connection = await Connection.open(
            host, address, port,
            local_hostname=self.settings.hostname, tls=tls, cafile=out.ca_file,
            connect_timeout=out.connect_timeout, command_timeout=out.command_timeout,
        )  # fmt: skip
        log.info("connected host=%s address=%s tls=%s", host, address, connection.tls)
        return connection

    async def _open_relay(self) -> Connection:
        out = self.settings.outbound
        try:
            addresses = await self.resolver.addresses(out.relay_host)
        except DnsError as e:
            raise RouteError(str(e), "4.4.3", True) from e
        if not addresses:
            raise RouteError(f"relay {out.relay_host}: no address", "4.4.3", True)
        tls = Tls.IMPLICIT if out.relay_security == "tls" else Tls.VERIFY
        last = RouteError(f"relay {out.relay_host}: unreachable", "4.4.1", True)
        for address in addresses:
            try:
                return await Connection.open(
                    out.relay_host, address, out.relay_port,
                    local_hostname=self.settings.hostname, tls=tls, cafile=out.ca_file,
                    connect_timeout=out.connect_timeout, command_timeout=out.command_timeout,
                    username=out.relay_username, password=out.relay_password,
                )  # fmt: skip
            except ConnectionFailed as e:
                last = RouteError(str(e), e.status, True, out.relay_host)
        raise last

    async def _route(self, domain: str) -> list[str]:
        """The hosts to try for `domain`, best first (RFC 5321 5.1)."""
        try:
            records = await self.resolver.mx(domain)
        except DnsError as e:
            if e.temporary:
                raise RouteError(str(e), "4.4.3", True) from e
            raise RouteError(f"{domain}: domain does not exist", "5.1.2", False) from e
        if len(records) == 1 and records[0].host == "":
            # RFC 7505 3: the domain accepts no mail.
            raise RouteError(f"{domain}: the domain accepts no mail (null MX)", "5.1.10", False)
        if not records:
            return [domain]  # RFC 5321 5.1: the implicit MX
        me = self.settings.hostname.lower()
        hosts = [r.host for r in records if r.host]
        if me in hosts:
            # RFC 5321 5.1: we are an MX for it; only better-preferred hosts
            # may be tried, else the mail would loop back to us.
            ours = min(r.preference for r in records if r.host == me)
            hosts = [r.host for r in records if r.host and r.preference < ours]
            if not hosts:
                raise RouteError(f"{domain}: mail for it loops back to myself", "5.4.6", False)
        return hosts

    # -- one message ---------------------------------------------------------------------------

    async def _attempt(self, connection: Connection, job: Job) -> None:
        message = await self.run(self.store.message, job.message_id)
        if message is None:  # deleted meanwhile (`pimail queue delete`)
            self._release(job)
            return
        live = {r.id for r in message.recipients}
        job.recipients = [r for r in job.recipients if r.id in live]
        if not job.recipients:
            self._release(job)
            return
        data = await self.run(self._load, message)
        addresses = [r.address for r in job.recipients]
        try:
            transaction = await connection.send(message.sender, addresses, data)
        except ConnectionFailed as e:
            # Broken mid-transaction: nothing counts as delivered (RFC 5321 6.1
            # allows the duplicate this may cause).
            await self._route_failed(job, RouteError(str(e), e.status, True, connection.host))
            return
        outcomes = [self._outcome(r, transaction, connection.host) for r in job.recipients]
        await self._record(message, job, outcomes)

    def _outcome(self, recipient: Recipient, transaction: Transaction, remote: str) -> Outcome:
        reply = transaction.outcome(recipient.address)
        status = dsn.status_from_reply(reply.code, reply.text)
        return Outcome(recipient, reply, status, reply.temporary, remote, str(reply))

    async def _route_failed(self, job: Job, error: RouteError) -> None:
        message = await self.run(self.store.message, job.message_id)
        if message is None:
            self._release(job)
            return
        outcomes = [
            Outcome(r, None, error.status, error.temporary, error.remote, str(error))
            for r in job.recipients
        ]
        await self._record(message, job, outcomes)

    def _load(self, message: QueuedMessage) -> bytes:
        """The message as it leaves: DKIM signature(s) first (made once)."""
        with open(self.store.path(message.id), "rb") as f:
            body = f.read()
        if body.startswith(b"Return-Path:"):
            # RFC 5321 4.4: Return-Path is for the final delivery, not the way there.
            body = body[body.index(b"\n") + 1 :]
        if message.dkim is None:
            message.dkim = self._sign(body)
            self.store.set_dkim(message.id, message.dkim)
        return message.dkim.encode("ascii") + body

    def _sign(self, body: bytes) -> str:
        domain = self._signing_domain(body)
        if domain is None:
            return ""
        keys = dkim.signing_keys(self.keys_con, domain)
        if not keys:
            return ""
        try:
            return dkim.sign(body, domain, keys).decode("ascii")
        except Exception:
            log.exception("DKIM signing failed domain=%s", domain)
            return ""

    def _signing_domain(self, body: bytes) -> str | None:
        """The local domain that From: is in or under (DMARC alignment)."""
        local = {row[0] for row in self.keys_con.execute("SELECT name FROM domains")}
        for name, value in headers.fields(body[:HEADER_CAP]):
            if name != b"from":
                continue
            for _display, address in email.utils.getaddresses([value.decode("utf-8", "replace")]):
                domain = address.rpartition("@")[2].lower()
                while domain:
                    if domain in local:
                        return domain
                    domain = domain.partition(".")[2]
        return None

    def _release(self, job: Job) -> None:
        for r in job.recipients:
            self._in_flight.discard(r.id)
        if len(self._in_flight) < MAX_IN_MEMORY // 2:
            self.wake()  # room for more, and what was in flight may be due again

    async def _record(self, message: QueuedMessage, job: Job, outcomes: list[Outcome]) -> None:
        now = time.time()
        out = self.settings.outbound
        done: list[int] = []
        deferred: dict[int, tuple[float, str]] = {}
        failed: list[Outcome] = []
        delayed: list[Outcome] = []
        expired = now - message.created >= out.lifetime
        for o in outcomes:
            r = o.recipient
            if o.reply is not None and o.reply.ok:
                done.append(r.id)
                self.delivered += 1
                log.info(
                    "delivered id=%s to=<%s> relay=%s reply=%r",
                    message.id, r.address, o.remote, o.diagnostic[:200],
                )  # fmt: skip
            elif o.temporary and not expired:
                backoff = min(out.retry_max, out.retry_min * 2 ** min(r.attempts, 30))
                deferred[r.id] = (now + backoff * random.uniform(0.9, 1.1), o.diagnostic)
                delayed.append(o)
                self.deferred += 1
                log.info(
                    "deferred id=%s to=<%s> attempts=%d error=%r",
                    message.id, r.address, r.attempts + 1, o.diagnostic[:200],
                )  # fmt: skip
            else:
                if o.temporary:  # gave up after `lifetime` (RFC 3463 3.5: say why)
                    o.status = dsn.expired_status(o.status)
                    o.diagnostic = f"gave up after {out.lifetime / 86400:g} days: {o.diagnostic}"
                done.append(r.id)
                failed.append(o)
                self.bounced += 1
                log.info(
                    "bounced id=%s to=<%s> status=%s error=%r",
                    message.id, r.address, o.status, o.diagnostic[:200],
                )  # fmt: skip
        await self.run(self.store.finish, message.id, done, deferred)
        self._release(job)
        if failed:
            await self._notify(message, failed, "failed")
        if delayed and not message.delay_notified and now - message.created >= out.delay_notice:
            await self.run(self.store.set_delay_notified, message.id)
            await self._notify(message, delayed, "delayed")

    # -- notifications (DSN) --------------------------------------------------------------------

    async def _notify(self, message: QueuedMessage, outcomes: list[Outcome], action: str) -> None:
        if message.kind == "dsn" or not dsn.should_bounce(message.sender):
            log.info("no notice id=%s sender=<%s> action=%s", message.id, message.sender, action)
            return
        try:
            original = await self.run(self._original_headers, message.id)
            until = message.created + self.settings.outbound.lifetime
            report = dsn.build_dsn(
                reporting_mta=self.settings.hostname,
                original_sender=message.sender,
                original_headers=original,
                recipients=[
                    dsn.RecipientStatus(
                        recipient=o.recipient.address,
                        action=action,
                        status=o.status,
                        remote_mta=o.remote,
                        diagnostic=o.diagnostic,
                        last_attempt=time.time(),
                        will_retry_until=until if action == "delayed" else None,
                    )
                    for o in outcomes
                ],
                arrival=message.created,
                envelope_id=message.envid,
            )
            await self.deliver_notice(report, message.sender)
        except Exception:
            log.exception("could not send a notice id=%s", message.id)

    def _original_headers(self, message_id: str) -> bytes:
        try:
            with open(self.store.path(message_id), "rb") as f:
                return f.read(HEADER_CAP)
        except FileNotFoundError:
            return b""

    async def deliver_notice(self, report: bytes, recipient: str) -> None:
        """A DSN (or other notice from the system) to `recipient`: straight into
        the mailbox when local, else through the queue with a null sender."""
        owners = self.directory.owners(recipient)
        if owners:
            incoming = Incoming(self.settings.spool_dir / "incoming")
            incoming.write(b"Return-Path: <>\r\n")
            incoming.write(report)
            await self.local_store.deliver(incoming, owners)
            log.info("notice delivered to=<%s> size=%d", recipient, incoming.size)
            return
        message_id = await self.run(
            lambda: self.store.enqueue_bytes(report, "", [recipient], kind="dsn")
        )
        log.info("notice queued id=%s to=<%s>", message_id, recipient)
        self.wake()
