"""The web interface: aiohttp + Jinja2, server-rendered, on HTTP and HTTPS.

HTTP (`web.listen_http`, port 80 on the device) answers only:
- ACME HTTP-01 challenges (RFC 8555 8.3) from `<data>/tls/acme-challenge/`;
- Thunderbird's autoconfig, which clients fetch over plain HTTP as well;
- everything else: a redirect to the same path over HTTPS.

HTTPS (`web.listen_https`, 443) uses the server's certificates, chosen by SNI
(ACME where issued, the internal CA's otherwise), reloaded on renewal:
- `mta-sts.<domain>/.well-known/mta-sts.txt`: our MTA-STS policy (RFC 8461 3.3);
- client autoconfiguration (web/autoconfig.py): Thunderbird's XML, Outlook's
  Autodiscover, Apple's profile (from the webmail settings);
- login and logout here; the webmail, admin and setup wizard pages register
  their routes through `Web.page` (web/mail.py, web/admin.py, web/wizard.py).

Rules every page gets from the middleware below:
- Headers: a Content-Security-Policy without inline script or style, nosniff,
  no Referer, no framing by other sites, HSTS (RFC 6797) over HTTPS.
- The session cookie is Secure, HttpOnly, SameSite=Strict (web/sessions.py).
- CSRF: every POST must carry a form field `csrf` equal to the session's token
  or, before login, to the `pimail_csrf` cookie (double submit), and an
  Origin header, when the browser sends one, naming this very host. In a
  multipart form it must be the first part, checked before the rest is read.
- Logins go through the one Authenticator and its login throttle
  (auth/throttle.py), the one IMAP, POP3 and SMTP AUTH use: per address and
  per account, with an allowance for addresses known for the account.
- Request bodies are read by web/body.py within a budget chosen from the
  session cookie before a byte of the body is read: a few KiB before login,
  1 MiB of form when logged in, MAX_BODY streamed to the spool for uploads.
- Every response of the applications carries the headers above, errors and
  500s included; `Server:` names no version. An unexpected exception is
  logged once and answered 500.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib
import logging
import re
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from aiohttp import web
from aiohttp import web_response as _aiohttp_response

from ..tls.names import server_names
from . import autoconfig, body
from .sessions import Session, SessionStore

if TYPE_CHECKING:
    from ..app import Server

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
MAX_BODY = 40 * 1024 * 1024  # an upload of attachments; base64 makes 25 MB of files ~34 MB
# Routes that take files (logged in only); every other body is a small form.
UPLOAD_PATHS = frozenset({"/mail/compose", "/admin/update/upload"})
# Uploads that may be larger than MAX_BODY: a system update bundle (~150 MB).
UPLOAD_LIMITS = {"/admin/update/upload": 400 * 1024 * 1024}
AUTODISCOVER_PATHS = frozenset({autoconfig.AUTODISCOVER_PATH, "/Autodiscover/Autodiscover.xml"})
SERVER_NAME = "pimail"  # the Server header: no version to look up exploits for
# aiohttp's own answers (a malformed request line, say) name it and its version.
_aiohttp_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]
SESSION_COOKIE = "pimail_session"
CSRF_COOKIE = "pimail_csrf"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # base64url, RFC 8555 8.1
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; frame-src 'self'; form-action 'self'; "
    "frame-ancestors 'self'; base-uri 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Each has `register(web: Web)`, which adds its pages with `Web.page`.
PAGE_MODULES = ("mail", "settings", "admin", "wizard")


class Web:
    """What the pages share: the server's parts, templates, sessions."""

    def __init__(self, server: Server) -> None:
        from .. import db

        self.server = server
        self.settings = server.settings
        self.directory = server.directory
        self.authenticator = server.authenticator
        self.sessions = SessionStore(db.open_main(server.settings.db_path))
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        # The budgets of web/body.py apply; aiohttp's own cap is a backstop.
        self.https = web.Application(
            client_max_size=MAX_BODY, middlewares=[self._security, self._csrf]
        )
        self.http = web.Application(client_max_size=64 * 1024, middlewares=[self._security])
        for application in (self.https, self.http):
            application.on_response_prepare.append(self._headers)
        self.uploads = asyncio.Semaphore(self.settings.web.max_uploads)
        self._routes()
        for module in PAGE_MODULES:
            importlib.import_module(f".{module}", __package__).register(self)

    # -- pages ------------------------------------------------------------------------

    def render(
        self, request: web.Request, template: str, status: int = 200, **context: Any
    ) -> web.Response:
        session: Session | None = request.get("session")
        account = request.get("account")
        body = self.templates.get_template(template).render(
            csrf=session.csrf if session is not None else self._pre_csrf(request),
            account=account,
            hostname=self.settings.hostname,
            **context,
        )
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    def page(
        self, method: str, path: str, handler: Handler, *, login: bool = True, admin: bool = False
    ) -> None:
        """Route an HTTPS page; `login` (default) sends visitors to the login
        page, `admin` answers 403 to accounts that are not administrators."""
        if login or admin:
            handler = _guarded(handler, admin)
        self.https.router.add_route(method, path, handler, expect_handler=self._expect)

    def _routes(self) -> None:
        self.http.router.add_get("/.well-known/acme-challenge/{token}", self.acme_challenge)
        self.http.router.add_get(autoconfig.THUNDERBIRD_WELL_KNOWN_PATH, self.thunderbird)
        self.http.router.add_get(autoconfig.THUNDERBIRD_PATH, self.thunderbird)
        self.http.router.add_route("*", "/{tail:.*}", self.to_https)

        r = self.https.router
        r.add_get("/.well-known/mta-sts.txt", self.mta_sts)
        r.add_get(autoconfig.THUNDERBIRD_WELL_KNOWN_PATH, self.thunderbird)
        r.add_get(autoconfig.THUNDERBIRD_PATH, self.thunderbird)
        for path in (autoconfig.AUTODISCOVER_PATH, "/Autodiscover/Autodiscover.xml"):
            r.add_post(path, self.autodiscover, expect_handler=self._expect)
        r.add_static("/static/", HERE / "static", append_version=True)
        self.page("GET", "/login", self.login_form, login=False)
        self.page("POST", "/login", self.login, login=False)
        self.page("POST", "/logout", self.logout, login=False)
        self.page("GET", "/", self.home)

    # -- middleware -------------------------------------------------------------------

    @web.middleware
    async def _security(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        known = self._session_of(request)
        if known is not None:
            request["session"], request["account"] = known
        try:
            response = await handler(request)
        except web.HTTPException as e:
            response = e
        except Exception:  # logged once, answered 500 with the headers of every page
            log.exception("web request failed method=%s path=%s", request.method, request.path)
            return web.Response(status=500, text="Something went wrong on the server.")
        if request.secure and CSRF_COOKIE not in request.cookies and "pre_csrf" in request:
            _cookie(response, CSRF_COOKIE, request["pre_csrf"], max_age=None)
        if isinstance(response, web.HTTPException) and response.status >= 400:
            raise response
        return response

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every response of both applications, errors included (on_response_prepare)."""
        headers = response.headers
        headers["Server"] = SERVER_NAME
        headers.setdefault("Content-Security-Policy", CSP)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        # Not "no-referrer": with it, Chromium sends "Origin: null" on our own form
        # posts, and the Origin check below could not tell them from cross-site ones.
        headers.setdefault("Referrer-Policy", "same-origin")
        headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        if request.secure:
            headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        if "text/html" in headers.get("Content-Type", ""):
            headers.setdefault("Cache-Control", "no-store")

    @web.middleware
    async def _csrf(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return await handler(request)
        budget = self._budget(request)
        try:
            if request.path in AUTODISCOVER_PATHS:  # XML, no form and no token
                limited = dataclasses.replace(budget, limit=autoconfig.MAX_AUTODISCOVER_REQUEST)
                if (request.content_length or 0) > limited.limit:
                    raise body.too_large(limited.limit)
                work = body.read_raw(request.content, limited.limit)
                request["body"] = await body.within(request, limited, work)
                return await handler(request)
            origin = request.headers.get("Origin")
            if origin is not None and origin != f"{request.scheme}://{request.host}":
                log.warning(
                    "cross-site request refused path=%s origin=%r", request.path, origin[:100]
                )
                raise web.HTTPForbidden(text="Cross-site request refused.")
            if not budget.stream:
                return await self._with_form(request, handler, budget)
            if request.content_length is not None and request.content_length > budget.limit:
                raise body.too_large(budget.limit)
            try:  # a few large bodies at once; the others wait a little, then 503
                await asyncio.wait_for(self.uploads.acquire(), self.settings.web.upload_wait)
            except TimeoutError:
                log.info("web upload refused ip=%s reason=busy", request.remote)
                response = web.Response(status=503, text="Too many uploads at once; try again.")
                response.headers["Retry-After"] = "10"
                raise body.Refused(response) from None
            try:
                return await self._with_form(request, handler, budget)
            finally:
                self.uploads.release()
        except body.Refused as refused:
            return await body.answer_and_close(request, refused.response)

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue` (RFC 9110 10.1.1), before any middleware: a body
        over this request's budget is refused with 413 instead of invited with 100,
        so that a client that waits is told before it sends a byte of it."""
        if request.version < (1, 1):
            return None  # an HTTP/1.0 client never waits for 100 (RFC 9110 10.1.1)
        if request.headers.get("Expect", "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text="Unknown expectation.")
        limit = self._budget(request, logged_in=self._session_of(request) is not None).limit
        if request.path in AUTODISCOVER_PATHS:
            limit = autoconfig.MAX_AUTODISCOVER_REQUEST
        if request.content_length is not None and request.content_length > limit:
            response = body.too_large(limit).response
            response.force_close()
            return response
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's own: the response has not begun
        return None

    def _session_of(self, request: web.Request) -> tuple[Session, Any] | None:
        """The session of the request's cookie and its account, if both exist."""
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return None
        account = self.directory.account_by_id(session.account_id)
        return None if account is None else (session, account)

    def _budget(self, request: web.Request, logged_in: bool | None = None) -> body.Budget:
        """What this request's body may cost, known from the cookie alone."""
        w = self.settings.web
        rate, grace = w.body_min_rate, w.body_grace
        if logged_in is None:
            logged_in = request.get("session") is not None
        if not logged_in:
            return body.Budget(w.max_body_anonymous, w.anonymous_body_timeout, rate, grace, False)
        length = request.content_length
        if request.path in UPLOAD_PATHS and (length is None or length > w.max_body_form):
            return body.Budget(UPLOAD_LIMITS.get(request.path, MAX_BODY), None, rate, grace, True)
        return body.Budget(w.max_body_form, None, rate, grace, False)

    async def _with_form(
        self, request: web.Request, handler: Handler, budget: body.Budget
    ) -> web.StreamResponse:
        session: Session | None = request.get("session")
        expected = session.csrf if session is not None else request.cookies.get(CSRF_COOKIE)
        try:
            form = await body.read_form(request, budget, expected, self.settings.spool_dir / "web")
        except body.Refused as refused:
            if refused.response.status == 403:
                log.warning("request without a valid CSRF token refused path=%s", request.path)
            raise
        try:
            request._post = form  # what request.post() answers to every handler
            return await handler(request)
        finally:
            body.close_spooled(request)

    def _pre_csrf(self, request: web.Request) -> str:
        """The double-submit token of a visitor who is not logged in."""
        token = request.cookies.get(CSRF_COOKIE) or request.get("pre_csrf")
        if not token or not _TOKEN.match(token):
            token = request["pre_csrf"] = secrets.token_urlsafe(32)
        return token

    # -- plain HTTP --------------------------------------------------------------------

    async def acme_challenge(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if _TOKEN.match(token):
            path = self.settings.data_dir / "tls" / "acme-challenge" / token
            try:
                body = path.read_bytes()
            except OSError:
                pass
            else:
                return web.Response(body=body, content_type="application/octet-stream")
        raise web.HTTPNotFound(text="no such challenge")

    async def to_https(self, request: web.Request) -> web.Response:
        """The same path over HTTPS, on one of our names: the request's host if it
        is one (a certificate name, or the address the client reached), else
        the configured host name; never a name the client made up."""
        host = self._our_host(request) or self.settings.hostname
        port = self.settings.web.public_https_port or _https_port(self.settings.web.listen_https)
        netloc = host if port in (None, 443) else f"{host}:{port}"
        target = urllib.parse.urlunsplit(("https", netloc, request.path, request.query_string, ""))
        raise web.HTTPMovedPermanently(target)

    def _our_host(self, request: web.Request) -> str | None:
        given = (request.host or "").strip().lower()
        if given.startswith("["):  # RFC 3986 3.2.2: an IPv6 literal in brackets
            name = given[1:].partition("]")[0]
        else:
            name = given.rpartition(":")[0] if given.count(":") == 1 else given
        name = name.rstrip(".")
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        reached = str(sockname[0]).lower() if sockname else None
        ours = server_names(
            self.settings.hostname, self.directory.domains(), self.settings.tls.extra_names
        )
        if name and (name in ours or name == reached):
            return f"[{name}]" if ":" in name else name
        return None

    # -- policies and autoconfiguration ------------------------------------------------

    async def mta_sts(self, request: web.Request) -> web.Response:
        host = (request.host or "").split(":")[0].lower().rstrip(".")
        if host.startswith("mta-sts."):
            policy = self.server._mta_sts_policy(host[len("mta-sts.") :])
            if policy is not None:
                return web.Response(text=policy, content_type="text/plain", charset="utf-8")
        raise web.HTTPNotFound()

    def _endpoints(self) -> autoconfig.ServiceEndpoints:
        return autoconfig.endpoints(self.settings)

    async def thunderbird(self, request: web.Request) -> web.Response:
        """Mozilla's autoconfig: the domain from ?emailaddress=, else from the
        host name autoconfig.<domain>; only for our own domains."""
        address = request.query.get("emailaddress", "")
        domain = address.rpartition("@")[2] if "@" in address else ""
        if not domain:
            host = (request.host or "").split(":")[0].lower()
            domain = host.removeprefix("autoconfig.")
        try:
            domain = autoconfig.normalize_domain(domain)
        except ValueError:
            raise web.HTTPNotFound() from None
        if not self.directory.is_local_domain(domain):
            raise web.HTTPNotFound()
        body = autoconfig.thunderbird_config(self._endpoints(), domain)
        return web.Response(body=body, content_type="application/xml", charset="utf-8")

    async def autodiscover(self, request: web.Request) -> web.Response:
        address = autoconfig.parse_autodiscover_request(request.get("body", b""))
        domain = address.rpartition("@")[2] if address else ""
        if address is None or not self.directory.is_local_domain(domain):
            reply = autoconfig.autodiscover_error()
        else:
            reply = autoconfig.autodiscover_response(self._endpoints(), address)
        return web.Response(body=reply, content_type="application/xml", charset="utf-8")

    # -- login ---------------------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.Response:
        if "account" in request:
            raise web.HTTPSeeOther("/")
        return self.render(request, "login.html", error=None, username="", next=_next(request))

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        username = str(form.get("username", ""))[:320].strip()
        password = str(form.get("password", ""))[:1024]
        ip = request.remote or "unknown"
        account = await self.authenticator.login(username, password, ip, "web")
        if account is None:
            return self.render(
                request,
                "login.html",
                status=401,
                error="Wrong address or password (or too many attempts: wait a few minutes).",
                username=username,
                next=_next(request, form.get("next")),
            )
        self.sessions.end(request.cookies.get(SESSION_COOKIE))  # no session fixation
        token, _ = self.sessions.create(account.id)
        response = web.HTTPSeeOther(_next(request, form.get("next")))
        _cookie(response, SESSION_COOKIE, token, max_age=None)
        raise response

    async def home(self, request: web.Request) -> web.Response:
        return self.render(request, "home.html")

    async def logout(self, request: web.Request) -> web.Response:
        self.sessions.end(request.cookies.get(SESSION_COOKIE))
        response = web.HTTPSeeOther("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response


def _cookie(response: web.StreamResponse, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name, value, path="/", secure=True, httponly=True, samesite="Strict", max_age=max_age
    )


# A path and query of this site: RFC 3986 3.3/3.4 characters only, so no tab,
# CR, LF or backslash that a browser would drop or read as "/" (WHATWG URL:
# "/\t/evil" and "/\\evil" both become "//evil", another host), and no "//" start.
_LOCAL_TARGET = re.compile(r"/(?![/\\])[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]{0,1999}")


def _next(request: web.Request, value: object = None) -> str:
    """Where to go after login: a local path only (no open redirect)."""
    target = value if isinstance(value, str) else request.query.get("next", "/")
    return target if _LOCAL_TARGET.fullmatch(target) else "/"


def _guarded(handler: Handler, admin: bool) -> Handler:
    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        account = request.get("account")
        if account is None:
            if request.method == "GET":
                query = urllib.parse.urlencode({"next": request.path_qs})
                raise web.HTTPSeeOther(f"/login?{query}")
            raise web.HTTPForbidden(text="Log in first.")
        if admin and not account.is_admin:
            raise web.HTTPForbidden(text="For administrators only.")
        return await handler(request)

    return guarded


def _https_port(listen: list[str]) -> int | None:
    from ..config import parse_listen

    for address in listen:
        try:
            return parse_listen(address)[1]
        except ValueError:
            continue
    return None
