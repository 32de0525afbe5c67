"""The admin pages: what `pimail` does on the command line, in the browser.

Every page is for administrators only (`Web.page(admin=True)`: 403 for other
accounts), and every change goes through the functions the CLI uses
(admin_ops), on a worker thread with a pimail.db connection of its own:

    /admin                      overview
    /admin/domains              add (makes DKIM keys), remove
    /admin/accounts             add, remove (mail kept aside), password, quota, admin flag
    /admin/aliases              add, remove; "@domain" is the catch-all
    /admin/queue[/{id}]         the outbound queue: list, show, retry, delete
    /admin/certificates         the live certificates, ACME state, "renew now"
    /admin/certificates/ca.pem  the internal CA certificate
    /admin/storage              the data directory's file system, mail per account
    /admin/log                  the last LOG_LINES log lines of this process
    /admin/spam                 the Bayes filter's figures per account
    /admin/dns[/{domain}]       the DNS records to publish, checked live (web/dnscheck.py)
    /admin/throttle             addresses and accounts the login throttle holds back; lift one
    /admin/backup               the last backup, its settings, "back up now" (admin_backup.py)
    /admin/update               system updates: upload, fetch, roll back (admin_update.py)
    /admin/welcome              after the setup wizard: what to do next

A POST answers with the page it came from, with what was done or what was
wrong (400): no redirect, so a mistake keeps its form filled.

The log page reads a ring buffer (`LogBuffer`) that `register` hangs on the
root logger: the process's lines since the web interface started, nothing
from disk. pimail logs no secrets; the page escapes what it shows anyway.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web as aioweb

from .. import admin_ops, db
from ..auth.accounts import Account, Directory, DirectoryError
from ..auth.passwords import hash_password
from ..config import DEVICE
from . import dnscheck, wizard

if TYPE_CHECKING:
    from .server import Web

log = logging.getLogger(__name__)

T = TypeVar("T")
LOG_LINES = 500
LOG_LINE_MAX = 2000  # characters of one line (a traceback is cut)
MIN_PASSWORD = wizard.MIN_PASSWORD
MIB = 1024 * 1024
QUEUE_PAGE = 200  # messages listed (the oldest first); the count says how many in all
SECTIONS = (
    ("/admin", "Overview"),
    ("/admin/domains", "Domains"),
    ("/admin/accounts", "Accounts"),
    ("/admin/aliases", "Aliases"),
    ("/admin/queue", "Queue"),
    ("/admin/certificates", "Certificates"),
    ("/admin/dns", "DNS"),
    ("/admin/storage", "Storage"),
    ("/admin/spam", "Spam filter"),
    ("/admin/log", "Log"),
    ("/admin/throttle", "Login throttle"),
    ("/admin/backup", "Backups"),
    ("/admin/update", "System update"),
)


# -- the log ring buffer ------------------------------------------------------------------


class LogBuffer(logging.Handler):
    """The last `capacity` formatted log lines, in memory."""

    def __init__(self, capacity: int = LOG_LINES) -> None:
        super().__init__()
        self.lines: collections.deque[tuple[int, str]] = collections.deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append((record.levelno, self.format(record)[:LOG_LINE_MAX]))
        except Exception:
            self.handleError(record)

    def recent(self, min_level: int = logging.NOTSET) -> list[str]:
        """Newest first."""
        self.acquire()  # emit() runs under this lock, from any thread
        try:
            lines = list(self.lines)
        finally:
            self.release()
        return [text for level, text in reversed(lines) if level >= min_level]


def install_log_buffer() -> LogBuffer:
    """The root logger's LogBuffer, added once per process."""
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, LogBuffer):
            return handler
    handler = LogBuffer()
    root.addHandler(handler)
    return handler


# -- the pages ----------------------------------------------------------------------------


class Admin:
    def __init__(self, web: Web) -> None:
        self.web = web
        self.server = web.server
        self.settings = web.settings
        self.directory = web.directory
        self.log_buffer = install_log_buffer()
        self._renewal: asyncio.Task[None] | None = None
        self.renewal_result: dict[str, Any] | None = None

    def register(self) -> None:
        routes: list[tuple[str, str, Callable[..., Any]]] = [
            ("GET", "/admin", self.overview),
            ("GET", "/admin/welcome", self.welcome),
            ("GET", "/admin/domains", self.domains),
            ("POST", "/admin/domains/add", self.domain_add),
            ("POST", "/admin/domains/remove", self.domain_remove),
            ("GET", "/admin/accounts", self.accounts),
            ("POST", "/admin/accounts/add", self.account_add),
            ("POST", "/admin/accounts/remove", self.account_remove),
            ("POST", "/admin/accounts/password", self.account_password),
            ("POST", "/admin/accounts/quota", self.account_quota),
            ("POST", "/admin/accounts/admin", self.account_admin),
            ("GET", "/admin/aliases", self.aliases),
            ("POST", "/admin/aliases/add", self.alias_add),
            ("POST", "/admin/aliases/remove", self.alias_remove),
            ("GET", "/admin/queue", self.queue),
            ("POST", "/admin/queue/retry", self.queue_retry),
            ("POST", "/admin/queue/delete", self.queue_delete),
            ("GET", "/admin/queue/{id}", self.queue_message),
            ("GET", "/admin/certificates", self.certificates),
            ("POST", "/admin/certificates/renew", self.certificate_renew),
            ("GET", "/admin/certificates/ca.pem", self.ca_certificate),
            ("GET", "/admin/storage", self.storage),
            ("GET", "/admin/log", self.log_page),
            ("GET", "/admin/spam", self.spam),
            ("GET", "/admin/dns", self.dns),
            ("GET", "/admin/dns/{domain}", self.dns_domain),
            ("GET", "/admin/throttle", self.throttle),
            ("POST", "/admin/throttle/lift", self.throttle_lift),
        ]
        for method, path, handler in routes:
            self.web.page(method, path, handler, admin=True)
        from . import admin_backup, admin_update

        admin_backup.register(self)
        admin_update.register(self)

    def render(
        self, request: aioweb.Request, template: str, status: int = 200, **context: Any
    ) -> aioweb.Response:
        context.setdefault("notice", "")
        context.setdefault("error", "")
        section = max(
            (p for p, _ in SECTIONS if request.path == p or request.path.startswith(p + "/")),
            key=len,
            default="",
        )
        return self.web.render(
            request, f"admin/{template}", status=status, sections=SECTIONS, section=section,
            restart=self._restart_pending(), **context,
        )  # fmt: skip

    def _restart_pending(self) -> list[str]:
        """Settings stored in the database since this process started (by the
        wizard or `pimail config set`): they take effect at the next start."""
        from ..config import as_flat_dict, stored_overrides

        running = as_flat_dict(self.settings, reveal=True)
        stored = stored_overrides(self.settings.db_path)
        return sorted(k for k, v in stored.items() if k in running and running[k] != v)

    def _next_start_settings(self) -> Any:
        """The settings as the next start will have them, as far as the DNS
        records depend on them (the host name; ACME for the MTA-STS mode)."""
        import copy

        from ..config import stored_overrides

        stored = stored_overrides(self.settings.db_path)
        settings = copy.deepcopy(self.settings)
        if isinstance(stored.get("hostname"), str):
            settings.hostname = stored["hostname"]
        if isinstance(stored.get("tls.acme"), bool):
            settings.tls.acme = stored["tls.acme"]
        return settings

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(Directory, *args) on a worker thread, with its own connection."""

        def run() -> T:
            con = db.open_main(self.settings.db_path)
            try:
                return fn(Directory(con), *args)
            finally:
                con.close()

        return await asyncio.get_running_loop().run_in_executor(None, run)

    async def _form(self, request: aioweb.Request) -> dict[str, str]:
        return {k: str(v)[:4096] for k, v in (await request.post()).items()}

    # -- overview ------------------------------------------------------------------------

    async def overview(self, request: aioweb.Request) -> aioweb.Response:
        queue = self.server.queue
        counts = await queue.run(queue.store.counts)
        loop = asyncio.get_running_loop()
        certificates = await loop.run_in_executor(
            None, admin_ops.certificate_status, self.settings.data_dir
        )
        space = await loop.run_in_executor(None, admin_ops.filesystem, self.settings.data_dir)
        return self.render(
            request, "index.html", domains=self.directory.domains(),
            accounts=self.directory.accounts(), queue_counts=counts,
            certificates=certificates, space=space, mib=MIB, health=self._storage_health(),
        )  # fmt: skip

    async def welcome(self, request: aioweb.Request) -> aioweb.Response:
        domains = self.directory.domains()
        domain = request.query.get("domain", domains[0] if domains else "")
        checks: list[dnscheck.Check] = []
        if domain in domains:
            checks = await self._dns_checks(domain)
        return self.render(
            request, "welcome.html", domain=domain, checks=checks,
            summary=dnscheck.summary(checks), stored=self._stored_settings(),
            next_hostname=self._next_start_settings().hostname,
        )  # fmt: skip

    def _stored_settings(self) -> dict[str, Any]:
        """The settings saved in the database (the wizard's), secrets masked."""
        from ..config import SECRET_KEYS, stored_overrides

        stored = stored_overrides(self.settings.db_path)
        return {k: ("********" if k in SECRET_KEYS else json.dumps(v)) for k, v in stored.items()}

    # -- domains --------------------------------------------------------------------------

    async def domains(
        self, request: aioweb.Request, status: int = 200, notice: str = "", error: str = ""
    ) -> aioweb.Response:
        from ..queue import dkim

        accounts = collections.Counter(a.domain for a in self.directory.accounts())
        rows = [
            (name, accounts[name], dkim.keys(self.directory.con, name))
            for name in self.directory.domains()
        ]
        return self.render(
            request, "domains.html", status=status, notice=notice, error=error, rows=rows
        )

    async def domain_add(self, request: aioweb.Request) -> aioweb.Response:
        form = await self._form(request)
        try:
            name, keys = await self._db(admin_ops.add_domain, form.get("name", ""))
        except (DirectoryError, ValueError) as e:
            return await self.domains(request, 400, error=str(e))
        log.info("admin domain added domain=%s by=%s", name, request["account"].address)
        selectors = ", ".join(k.selector for k in keys)
        return await self.domains(
            request,
            notice=f"Added {name}, with DKIM keys {selectors}. Publish its DNS records (DNS page);"
            " its certificate names it after the next start.",
        )

    async def domain_remove(self, request: aioweb.Request) -> aioweb.Response:
        form = await self._form(request)
        name = form.get("name", "")
        if form.get("confirm") != "yes":
            return await self.domains(request, 400, error="Tick the box to confirm the removal.")
        try:
            await self._db(lambda d: d.remove_domain(name))
        except (DirectoryError, ValueError) as e:
            return await self.domains(request, 400, error=str(e))
        log.info("admin domain removed domain=%s by=%s", name, request["account"].address)
        return await self.domains(request, notice=f"Removed {name} and its DKIM keys.")

    # -- accounts -------------------------------------------------------------------------

    async def accounts(
        self, request: aioweb.Request, status: int = 200, notice: str = "", error: str = ""
    ) -> aioweb.Response:
        return self.render(
            request, "accounts.html", status=status, notice=notice, error=error,
            accounts=self.directory.accounts(), domains=self.directory.domains(),
            min_password=MIN_PASSWORD, mib=MIB,
        )  # fmt: skip

    async def _hash_new_password(self, form: dict[str, str]) -> str:
        password = form.get("password", "")
        admin_ops.check_password(password, MIN_PASSWORD)
        if password != form.get("password_again", password):
            raise ValueError("the two passwords differ")
        return await asyncio.get_running_loop().run_in_executor(None, hash_password, password)

    async def account_add(self, request: aioweb.Request) -> aioweb.Response:
        form = await self._form(request)
        is_admin = form.get("is_admin") == "yes"
        try:
            address = admin_ops.check_new_account(self.directory, form.get("address", ""))
            hashed = await self._hash_new_password(form)
            account = await self._db(lambda d: d.add_account(address, hashed, is_admin))
        except (DirectoryError, ValueError) as e:
            return await self.accounts(request, 400, error=str(e))
        log.info("admin account added account=%s admin=%s by=%s", account.address, is_admin,
                 request["account"].address)  # fmt: skip
        return await self.accounts(request, notice=f"Added {account.address}.")

    def _other_account(self, request: aioweb.Request, address: str) -> Account:
        """An existing account other than the administrator's own (no lock-out)."""
        account = self.directory.account(address)
        if account is None:
            raise DirectoryError(f"no account {address}")
        if account.id == request["account"].id:
            raise DirectoryError("not your own account: ask another administrator")
        return account

    async def account_remove(self, request: aioweb.Request) -> aioweb.Response:
        form = await self._form(request)
        try:
            if form.get("confirm") != "yes":
                raise ValueError("tick the box to confirm the removal")
            account = self._other_account(request, form.get("address", ""))
            _, kept = await self._db(
                lambda d: admin_ops.remove_account(self.settings, d, account.address)
            )
        except (DirectoryError, ValueError) as e:
            return await self.accounts(request, 400, error=str(e))
        log.info("admin account removed account=%s by=%s", account.address,
                 request["account"].address)  # fmt: skip
        where = f"; its mail is kept in {kept}" if kept else ""
        return await self.accounts(request, notice=f"Removed {account.address}{where}.")

    async def account_password(self, request: aioweb.Request) -> aioweb.Response:
        form = await self._form(request)
        account = self.directory.account(form.get("address", ""))
        try:
            if account is None:
                raise DirectoryError(f"no account {form.get('address', '')}")
            if account.id == request["account"].id:
                # Someone at an unlocked screen must not take over the admin account:
                # the own password changes under Settings, which asks for the current one.
                raise ValueError(
                    "change your own password under Settings (it asks for the current one)"
                )
            hashed = await self._hash_new_password(form)
            await self._db(lambda d: d.set_password(account.address, hashed))
        except (DirectoryError, ValueError) as e:
            return await self.accounts(request, 400, error=str(e))
        from .server import SESSION_COOKIE

        # Logged out everywhere (but in this browser, if it is the admin's own).
        self.web.sessions.end_all(account.id, keep=request.cookies.get(SESSION_COOKIE))
        log.info("admin password set account=%s by=%s", account.address,
                 request["account"].address)  # fmt: skip
        return await self.accounts(request, notice=f"New password set for {account.address}.")

    async def account_quota(self, request: aioweb.Request) -> aioweb.Response:
        form = await self._form(request)
        try:
            try:
                megabytes = int(form.get("quota_mb", "").strip() or 0)
            except ValueError:
                raise ValueError("the quota is a whole number of MiB (0: none)") from None
            address = form.get("address", "")
            account = await self._db(admin_ops.set_quota, address, megabytes * MIB)
        except (DirectoryError, ValueError) as e:
            return await self.accounts(request, 400, error=str(e))
        shown = f"{megabytes} MiB" if megabytes else "none"
        return await self.accounts(request, notice=f"Quota of {account.address}: {shown}.")

    async def account_admin(self, request: aioweb.Request) -> aioweb.Response:
        form = await self._form(request)
        make_admin = form.get("is_admin") == "yes"
        try:
            account = self._other_account(request, form.get("address", ""))
            await self._db(admin_ops.set_admin, account.address, make_admin)
        except (DirectoryError, ValueError) as e:
            return await self.accounts(request, 400, error=str(e))
        log.info("admin flag set account=%s admin=%s by=%s", account.address, make_admin,
                 request["account"].address)  # fmt: skip
        what = "is now an administrator" if make_admin else "is no longer an administrator"
        return await self.accounts(request, notice=f"{account.address} {what}.")

    # -- aliases --------------------------------------------------------------------------

    async def aliases(
        self, request: aioweb.Request, status: int = 200, notice: str = "", error: str = ""
    ) -> aioweb.Response:
        return self.render(
            request, "aliases.html", status=status, notice=notice, error=error,
            aliases=self.directory.aliases(), domains=self.directory.domains(),
        )  # fmt: skip

    async def alias_add(self, request: aioweb.Request) -> aioweb.Response:
        form = await self._form(request)
        source = form.get("source", "").strip()
        targets = form.get("targets", "").replace(",", " ").split()
        try:
            await self._db(lambda d: d.add_alias(source, targets))
        except (DirectoryError, ValueError) as e:
            return await self.aliases(request, 400, error=str(e))
        log.info("admin alias added source=%s targets=%s by=%s", source, ",".join(targets),
                 request["account"].address)  # fmt: skip
        return await self.aliases(request, notice=f"{source} -> {', '.join(targets)}")

    async def alias_remove(self, request: aioweb.Request) -> aioweb.Response:
        form = await self._form(request)
        source = form.get("source", "")
        targets = form.get("targets", "").replace(",", " ").split()
        try:
            await self._db(lambda d: d.remove_alias(source, targets or None))
        except (DirectoryError, ValueError) as e:
            return await self.aliases(request, 400, error=str(e))
        log.info("admin alias removed source=%s by=%s", source, request["account"].address)
        return await self.aliases(request, notice=f"Removed the alias {source}.")

    # -- the queue ------------------------------------------------------------------------

    async def queue(
        self, request: aioweb.Request, status: int = 200, notice: str = "", error: str = ""
    ) -> aioweb.Response:
        queue = self.server.queue
        messages, total = await queue.run(admin_ops.queue_page, queue.store, QUEUE_PAGE)
        return self.render(
            request, "queue.html", status=status, notice=notice, error=error, messages=messages,
            total=total, when=_when, age=_age,
        )  # fmt: skip

    async def queue_message(self, request: aioweb.Request) -> aioweb.Response:
        queue = self.server.queue
        detail = await queue.run(admin_ops.queue_detail, queue.store, request.match_info["id"])
        if detail is None:
            raise aioweb.HTTPNotFound(text="No such message in the queue.")
        return self.render(request, "queue_message.html", detail=detail, when=_when)

    async def queue_retry(self, request: aioweb.Request) -> aioweb.Response:
        form = await self._form(request)
        queue = self.server.queue
        message_id = form.get("id") or None
        count = await queue.run(queue.store.retry, message_id)
        queue.wake()
        log.info("admin queue retry id=%s recipients=%d by=%s", message_id or "all", count,
                 request["account"].address)  # fmt: skip
        return await self.queue(request, notice=f"{count} recipient(s) due now.")

    async def queue_delete(self, request: aioweb.Request) -> aioweb.Response:
        form = await self._form(request)
        queue = self.server.queue
        message_id = form.get("id", "")
        if not await queue.run(queue.store.delete, message_id):
            return await self.queue(request, 400, error=f"No message {message_id} in the queue.")
        log.info("admin queue delete id=%s by=%s", message_id, request["account"].address)
        return await self.queue(request, notice=f"Deleted {message_id} (no bounce was sent).")

    # -- certificates -----------------------------------------------------------------------

    async def certificates(
        self, request: aioweb.Request, status: int = 200, notice: str = "", error: str = ""
    ) -> aioweb.Response:
        data_dir = self.settings.data_dir
        loop = asyncio.get_running_loop()
        live = await loop.run_in_executor(None, admin_ops.certificate_status, data_dir)
        tls = self.settings.tls
        return self.render(
            request, "certificates.html", status=status, notice=notice, error=error,
            certificates=live, acme=tls.acme, acme_directory=tls.acme_directory,
            acme_names=tls.acme_names or [self.settings.hostname],
            acme_state=admin_ops.acme_state(data_dir) if tls.acme else {},
            renewing=self._renewal is not None and not self._renewal.done(),
            renewal_result=self.renewal_result,
            ca_available=admin_ops.ca_certificate_path(data_dir).exists(),
        )  # fmt: skip

    async def certificate_renew(self, request: aioweb.Request) -> aioweb.Response:
        if not self.settings.tls.acme:
            return await self.certificates(
                request, 409, error="ACME is off: choose Let's Encrypt (tls.acme) and restart."
            )
        if self._renewal is not None and not self._renewal.done():
            return await self.certificates(request, notice="A renewal is running already.")
        self.renewal_result = None
        self._renewal = asyncio.get_running_loop().create_task(self._renew())
        log.info("admin acme renewal started by=%s", request["account"].address)
        return await self.certificates(
            request, notice="Renewal started: reload this page in a minute for the result."
        )

    async def _renew(self) -> None:
        """The ACME client as the server's renewal loop runs it, forced, once."""
        self.renewal_result = await self.server.run_acme(force=True)

    async def ca_certificate(self, request: aioweb.Request) -> aioweb.Response:
        return wizard.ca_download(self.settings.data_dir)

    # -- storage, log, spam -------------------------------------------------------------------

    def _storage_health(self) -> dict[str, Any] | None:
        """Whether pimail may write to the data disk now (store/health.py)."""
        guard = self.server.store.guard
        if guard is None:
            return None
        health = guard.health
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(guard.since))
        return {"ok": health.ok, "text": health.describe(), "since": since}

    async def storage(self, request: aioweb.Request) -> aioweb.Response:
        loop = asyncio.get_running_loop()
        space = await loop.run_in_executor(None, admin_ops.filesystem, self.settings.data_dir)
        queue = self.server.queue
        try:
            usage = await self.server.imap_reader.run(admin_ops.mail_usage)
            queued = await queue.run(admin_ops.queue_usage, queue.store.con)
        except (sqlite3.Error, OSError) as e:  # the data disk is gone: say so, not 500
            log.warning("storage figures unreadable error=%r", str(e))
            usage, queued = {}, (0, 0)
        rows = [(a, *usage.get(a.id, (0, 0))) for a in self.directory.accounts()]
        return self.render(
            request, "storage.html", space=space, rows=rows, queued=queued, mib=MIB,
            data_dir=self.settings.data_dir, health=self._storage_health(),
        )  # fmt: skip

    async def log_page(self, request: aioweb.Request) -> aioweb.Response:
        level_name = request.query.get("level", "INFO").upper()
        level = logging.getLevelName(level_name)
        if not isinstance(level, int):
            level_name, level = "INFO", logging.INFO
        return self.render(
            request, "log.html", lines=self.log_buffer.recent(level), level=level_name,
            levels=("DEBUG", "INFO", "WARNING", "ERROR"), capacity=LOG_LINES,
        )  # fmt: skip

    async def spam(self, request: aioweb.Request) -> aioweb.Response:
        import time

        from ..filter import clamav_fit, clamd, dnsbl

        accounts = self.directory.accounts()
        stats = await asyncio.get_running_loop().run_in_executor(
            None, admin_ops.spam_stats, self.settings, [a.id for a in accounts]
        )
        filters = self.settings.filter
        # clamd: configured, and answering PING now (filter/clamd.py); a short wait at most.
        clamd_up = bool(filters.clamd) and await clamd.ping(filters.clamd, timeout=2.0)
        return self.render(
            request, "spam.html", rows=list(zip(accounts, stats, strict=True)),
            enabled=filters.enabled and filters.bayes, filters=filters, clamd_up=clamd_up,
            clamav=clamav_fit.read_state() if self.settings.profile == DEVICE else None,
            dns_problems=[
                (p, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(p.when)))
                for p in dnsbl.problems()
            ],
            resolver=filters.dnsbl_resolver
            or ", ".join(self.settings.dns.nameservers) or "the system's (/etc/resolv.conf)",
        )  # fmt: skip

    # -- DNS ------------------------------------------------------------------------------------

    async def dns(self, request: aioweb.Request) -> aioweb.Response:
        return self.render(request, "dns.html", domains=self.directory.domains(), domain="",
                           checks=[], summary={}, zone=[], policy="")  # fmt: skip

    async def dns_domain(self, request: aioweb.Request) -> aioweb.Response:
        from ..dns import records

        domain = request.match_info["domain"].lower()
        if domain not in self.directory.domains():
            raise aioweb.HTTPNotFound(text="Not a local domain.")
        settings = self._next_start_settings()
        checks = await self._dns_checks(domain)
        wanted = admin_ops.dns_records(settings, self.directory, domain)
        return self.render(
            request, "dns.html", domains=self.directory.domains(), domain=domain, checks=checks,
            summary=dnscheck.summary(checks), zone=records.zone_lines(wanted),
            policy=records.mta_sts_policy(settings, domain).replace("\r\n", "\n"),
        )  # fmt: skip

    async def _dns_checks(self, domain: str) -> list[dnscheck.Check]:
        """The records for `domain` as the settings of the next start want them."""
        from ..queue import dkim

        keys = dkim.keys(self.directory.con, domain)
        return await dnscheck.check_domain(self._next_start_settings(), domain, keys)

    # -- the login throttle (auth/throttle.py) -----------------------------------------------

    async def throttle(
        self, request: aioweb.Request, status: int = 200, notice: str = "", error: str = ""
    ) -> aioweb.Response:
        authenticator = self.server.authenticator
        now = authenticator.clock()
        return self.render(
            request, "throttle.html", status=status, notice=notice, error=error,
            entries=authenticator.throttle.throttled(now), now=now,
            limits=authenticator.throttle.limits,
        )  # fmt: skip

    async def throttle_lift(self, request: aioweb.Request) -> aioweb.Response:
        form = await self._form(request)
        kind, key = form.get("kind", ""), form.get("key", "")
        if not self.server.authenticator.throttle.lift(kind, key):
            return await self.throttle(request, 400, error=f"{key} is not held back (any more).")
        log.info("admin throttle lifted kind=%s key=%s by=%s", kind, key.replace(" ", "/"),
                 request["account"].address)  # fmt: skip
        return await self.throttle(request, notice=f"Lifted: {key}.")


def _when(epoch: float | None) -> str:
    import time

    if not epoch:
        return "now"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _age(epoch: float) -> str:
    import time

    minutes = max(0.0, time.time() - epoch) / 60
    if minutes < 120:
        return f"{minutes:.0f} min"
    return f"{minutes / 60:.1f} h"


def register(web: Web) -> None:
    """Add this module's pages to the HTTPS application."""
    Admin(web).register()
