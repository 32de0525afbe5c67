"""The settings page every account has: /settings.

- Password: the current one and the new one twice (at least MIN_PASSWORD
  characters). A wrong current password counts in the login throttle that
  logins of every protocol share (auth/throttle.py), per address and account.
  After a change, every other web session of the account ends.
- Devices: the manual settings (host, ports, TLS) of IMAP, POP3 and
  submission, an Apple profile (web/autoconfig.py), and, while the server's
  certificate comes from the internal CA (no ACME certificate loaded), that
  CA to download and inside the profile.
- The account's allow and block lists of senders (filter/senders.py).
- The vacation auto-reply (smtp/vacation.py).

Every handler acts on `request["account"]`, the session's account, and on
nothing else: no route has an account in its path, no form names one.
Successful POSTs redirect (303) back to /settings with `?done=` naming a
fixed notice; refused ones render the page again with the error beside its
form and status 400 (403 for a wrong current password).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web as aioweb

from ..auth.accounts import Account
from ..auth.login import Outcome
from ..auth.passwords import hash_password, verify_password
from ..filter.senders import ALLOW, BLOCK, ListError, SenderLists
from ..smtp import vacation
from . import autoconfig
from .server import SESSION_COOKIE

if TYPE_CHECKING:
    from .server import Web

log = logging.getLogger(__name__)

MIN_PASSWORD = 10
MAX_PASSWORD = 1024  # the login form reads no more than this
PROFILE_NAME = "pimail.mobileconfig"
NOTICES = {
    "password": "Password changed. Your other sessions have been logged out.",
    "senders": "Sender lists saved.",
    "vacation": "Auto-reply saved.",
}
_ENTRY_SEPARATORS = re.compile(r"[\s,;]+")


def internal_ca_in_use(certs: Any) -> bool:
    """Whether clients see a certificate of pimail's own CA: one is loaded and
    no ACME one (tls/context.py serves ACME's first where it has one)."""
    if certs is None:
        return False
    names = certs.loaded_names
    return "internal" in names and "acme" not in names


def manual_settings(services: autoconfig.ServiceEndpoints) -> list[dict[str, Any]]:
    """Rows for the page: what to type into a mail client by hand."""
    labels = {autoconfig.SSL: "SSL/TLS", autoconfig.STARTTLS: "STARTTLS"}
    rows = []
    for name, found in (
        ("IMAP (incoming)", services.imap),
        ("SMTP (outgoing)", services.submission),
        ("POP3 (incoming)", services.pop3),
    ):
        for endpoint in found:
            rows.append({"service": name, "host": services.host, "port": endpoint.port,
                         "security": labels[endpoint.security]})  # fmt: skip
    return rows


def _text(form: Any, name: str, limit: int = 100_000) -> str:
    value = form.get(name, "")
    return value[:limit] if isinstance(value, str) else ""


class SettingsPages:
    def __init__(self, web: Web) -> None:
        self.web = web
        # The directory's connection, on the event loop like the filter's lists.
        self.lists = SenderLists(web.directory.con)

    # -- the page -----------------------------------------------------------------

    def _page(self, request: aioweb.Request, status: int = 200, **changes: Any) -> aioweb.Response:
        account: Account = request["account"]
        con = self.web.directory.con
        try:
            rows = manual_settings(autoconfig.endpoints(self.web.settings))
        except ValueError:
            rows = []
        settings = vacation.load(con, account.id)
        context: dict[str, Any] = {
            "notice": NOTICES.get(request.query.get("done", "")),
            "min_password": MIN_PASSWORD,
            "password_error": None,
            "manual": rows,
            "internal_ca": internal_ca_in_use(self.web.server.certs),
            "profile_url": f"/settings/{PROFILE_NAME}",
            "entries": self.lists.entries(account.id),
            "senders_error": None,
            "sender_entry": "",
            "vacation_error": None,
            "vacation": settings,
            "vacation_active": settings.active(dt.date.today()),
            "vacation_form": _vacation_form(settings),
            "max_subject": vacation.MAX_SUBJECT,
            "min_days": vacation.MIN_DAYS,
            "max_days": vacation.MAX_DAYS,
        }
        context.update(changes)
        return self.web.render(request, "settings/index.html", status=status, **context)

    async def show(self, request: aioweb.Request) -> aioweb.Response:
        return self._page(request)

    # -- password -----------------------------------------------------------------

    async def password(self, request: aioweb.Request) -> aioweb.Response:
        account: Account = request["account"]
        form = await request.post()
        current = _text(form, "current", MAX_PASSWORD + 1)
        new = _text(form, "new", MAX_PASSWORD + 1)
        repeat = _text(form, "repeat", MAX_PASSWORD + 1)
        problem = None
        if len(new) < MIN_PASSWORD:
            problem = f"The new password needs at least {MIN_PASSWORD} characters."
        elif len(new) > MAX_PASSWORD:
            problem = f"The new password may have at most {MAX_PASSWORD} characters."
        elif new != repeat:
            problem = "The new password and its repetition differ."
        if problem is not None:
            return self._page(request, 400, password_error=problem)
        authenticator = self.web.authenticator
        ip = request.remote or "unknown"
        loop = asyncio.get_running_loop()
        stored = self.web.directory.password_hash(account.id)

        async def check() -> bool:
            return stored is not None and await loop.run_in_executor(
                None, verify_password, current, stored
            )

        # The throttle every login shares (a stolen session must not guess on).
        outcome = await authenticator.guard(ip, account.address, "web-settings", check)
        if outcome is not Outcome.OK:
            log.warning("password change refused account=%s ip=%s", account.address, ip)
            return self._page(
                request, 403,
                password_error="The current password is wrong (or there were too many"
                " attempts: wait a few minutes).",
            )  # fmt: skip
        hashed = await loop.run_in_executor(None, hash_password, new)
        self.web.directory.set_password(account.address, hashed)
        self.web.sessions.end_all(account.id, keep=request.cookies.get(SESSION_COOKIE))
        log.info("password changed account=%s ip=%s", account.address, ip)
        raise aioweb.HTTPSeeOther("/settings?done=password#password")

    # -- devices ------------------------------------------------------------------

    async def _ca_pem(self) -> str | None:
        """The internal CA's certificate, while it is the one in use."""
        if not internal_ca_in_use(self.web.server.certs):
            return None
        from ..tls import ca

        try:
            return await asyncio.to_thread(ca.ca_pem, self.web.settings.data_dir)
        except (OSError, ca.CertificateError):
            log.warning("internal CA certificate unreadable")
            return None

    async def profile(self, request: aioweb.Request) -> aioweb.Response:
        account: Account = request["account"]
        try:
            body = autoconfig.mobileconfig(
                autoconfig.endpoints(self.web.settings),
                account.address,
                ca_certificate=await self._ca_pem(),
            )
        except ValueError as e:
            log.warning("no profile account=%s error=%s", account.address, e)
            raise aioweb.HTTPNotFound(text="No profile: this server has no IMAP/POP3 or "
                                      "submission listener to configure.") from None  # fmt: skip
        return aioweb.Response(
            body=body,
            content_type=autoconfig.MOBILECONFIG_CONTENT_TYPE,
            headers={
                "Content-Disposition": f'attachment; filename="{PROFILE_NAME}"',
                "Cache-Control": "no-store",
            },
        )

    async def ca_certificate(self, request: aioweb.Request) -> aioweb.Response:
        pem = await self._ca_pem()
        if pem is None:
            raise aioweb.HTTPNotFound(text="This server's certificate is not from its own CA.")
        return aioweb.Response(
            text=pem,
            content_type="application/x-x509-ca-cert",
            headers={"Content-Disposition": 'attachment; filename="pimail-ca.pem"'},
        )

    # -- sender lists ---------------------------------------------------------------

    async def senders_add(self, request: aioweb.Request) -> aioweb.Response:
        account: Account = request["account"]
        form = await request.post()
        kind = _text(form, "kind", 10)
        text = _text(form, "entry", 10_000)
        entries = [e for e in _ENTRY_SEPARATORS.split(text) if e]
        try:
            if kind not in (ALLOW, BLOCK):
                raise ListError("Choose allow or block.")
            if not entries:
                raise ListError("Enter an address or a domain.")
            added = self.lists.set(account.id, kind, entries)
        except ListError as e:
            return self._page(request, 400, senders_error=str(e), sender_entry=text[:500])
        log.info("sender list account=%s %s+=%d", account.address, kind, len(added))
        raise aioweb.HTTPSeeOther("/settings?done=senders#senders")

    async def senders_remove(self, request: aioweb.Request) -> aioweb.Response:
        account: Account = request["account"]
        form = await request.post()
        try:
            removed = self.lists.remove(account.id, [_text(form, "entry", 400)])
        except ListError as e:
            return self._page(request, 400, senders_error=str(e))
        log.info("sender list account=%s removed=%d", account.address, removed)
        raise aioweb.HTTPSeeOther("/settings?done=senders#senders")

    # -- vacation -----------------------------------------------------------------------

    async def vacation(self, request: aioweb.Request) -> aioweb.Response:
        account: Account = request["account"]
        form = await request.post()
        fields = {
            "enabled": bool(_text(form, "enabled", 10)),
            "subject": _text(form, "subject", 2 * vacation.MAX_SUBJECT),
            "body": _text(form, "body", 2 * vacation.MAX_BODY),
            "start": _text(form, "start", 20),
            "end": _text(form, "end", 20),
            "days": _text(form, "days", 10),
        }
        try:
            settings = vacation.parse(**fields)
        except vacation.VacationError as e:
            return self._page(request, 400, vacation_error=str(e), vacation_form=fields)
        vacation.save(self.web.directory.con, account.id, settings)
        log.info("vacation saved account=%s enabled=%s", account.address, settings.enabled)
        raise aioweb.HTTPSeeOther("/settings?done=vacation#vacation")


def _vacation_form(settings: vacation.Vacation) -> dict[str, Any]:
    return {
        "enabled": settings.enabled,
        "subject": settings.subject,
        "body": settings.body,
        "start": settings.start.isoformat() if settings.start else "",
        "end": settings.end.isoformat() if settings.end else "",
        "days": str(settings.days),
    }


def register(web: Web) -> None:
    """Add this module's pages to the HTTPS application."""
    pages = SettingsPages(web)
    web.page("GET", "/settings", pages.show)
    web.page("POST", "/settings/password", pages.password)
    web.page("GET", f"/settings/{PROFILE_NAME}", pages.profile)
    web.page("GET", "/settings/ca.pem", pages.ca_certificate)
    web.page("POST", "/settings/senders/add", pages.senders_add)
    web.page("POST", "/settings/senders/remove", pages.senders_remove)
    web.page("POST", "/settings/vacation", pages.vacation)
