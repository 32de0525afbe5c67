"""The setup wizard: a fresh box, set up from a browser in the local network.

Until setup is done, https://<box>/ (pimail.local, through Avahi) leads here.
The steps collect what the box needs, then one "Apply" does it all:

    /setup               welcome; the setup token, when there is one
    /setup/names         host name and mail domain
    /setup/admin         the administrator's account (an address in the domain)
    /setup/mailbox       the first mailbox (or the administrator's own)
    /setup/certificates  Let's Encrypt (with a check of the name) or the internal CA
    /setup/outbound      direct delivery or a smarthost
    /setup/review        what will be done; POST /setup/apply does it
    /setup/ca.pem        the internal CA certificate, to trust on this device
    /setup/restore       or: restore this box from a backup (web/wizard_restore.py)

Applying does what `pimail setup apply` does (admin_ops.apply_setup: domain,
DKIM keys, host name, administrator), adds the mailbox and a postmaster alias,
stores the certificate and outbound choices as database settings (as `pimail
config set` does: they take effect at the next start), and marks setup done.
From then on every /setup route answers 404 and / is the normal home page;
the administrator logs in and lands on /admin/welcome (the DNS records).

Who may use it:
- only clients with loopback, private or link-local source addresses (the
  LAN): the box may already be reachable from the internet (403 otherwise);
- when a setup token file exists (<data>/setup-token, written by `pimail
  setup apply`, or BOOT_TOKEN_NAME on the boot partition), only who types it;
  its failures count in the login throttle (auth/throttle.py), per client
  address and against the token as if it were an account;
- on the appliance (settings.boot_dir set), only while the boot partition is
  mounted: without it neither pimail.toml's setup_token nor the token file
  could have been read, and the wizard would open unprotected to the LAN
  (issue 16). Then it answers loopback only, and the LAN a page saying why.

State: what the steps collected lives in memory, per browser (a cookie), until
applied; a restart of the server starts the wizard over. Passwords are kept
only as scrypt hashes; the smarthost password as typed (it is stored so in
the settings anyway). "Setup done" is the file <data>/setup-done (DONE_FILE):
the settings table cannot hold it, since config.load takes every row there
for a setting and refuses unknown ones. A box set up from the command line
(accounts exist, no setup token) counts as done.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hmac
import ipaddress
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web as aioweb

from .. import admin_ops, config, db
from ..auth.accounts import Directory, DirectoryError, normalize_domain, split_address
from ..auth.login import Outcome
from ..auth.passwords import hash_password
from ..filter import clamav_fit
from . import dnscheck

if TYPE_CHECKING:
    from .server import Web

log = logging.getLogger(__name__)

BOOT_TOKEN_NAME = "pimail-setup-token"  # on the boot partition
BOOT_TOKEN_FILE = Path("/boot/firmware") / BOOT_TOKEN_NAME  # where boot_dir is not set
DATA_TOKEN_FILE = "setup-token"  # under the data directory (`pimail setup apply`)
TOKEN_ACCOUNT = "(setup token)"  # what the login throttle counts token guesses against
DONE_FILE = "setup-done"  # under the data directory
MIN_PASSWORD = 10
COOKIE = "pimail_setup"
MAX_WIZARDS = 16  # browsers in the middle of the wizard at once (memory bound)
WIZARD_IDLE = 3600.0  # seconds before an abandoned wizard is forgotten
# The local network: loopback, private (RFC 1918, RFC 4193 ULA), link-local.
LAN_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
        "::1/128", "fc00::/7", "fe80::/10",
    )
)  # fmt: skip

STEPS = ("names", "admin", "mailbox", "certificates", "outbound", "review")
STEP_TITLES = {
    "names": "Names",
    "admin": "Administrator",
    "mailbox": "First mailbox",
    "certificates": "Certificates",
    "outbound": "Outgoing mail",
    "review": "Apply",
}


# -- who may, and whether it is still needed -----------------------------------------------


def is_lan(remote: str | None) -> bool:
    """Whether a client address is in the local network (loopback, private,
    link-local); an IPv4-mapped IPv6 address counts as its IPv4 address."""
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        else:
            address = ipaddress.IPv6Address(address.compressed.split("%")[0])
    return any(address in network for network in LAN_NETWORKS)


def is_loopback(remote: str | None) -> bool:
    try:
        address = ipaddress.ip_address((remote or "").split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def boot_token_file(boot_dir: str = "") -> Path:
    return Path(boot_dir) / BOOT_TOKEN_NAME if boot_dir else BOOT_TOKEN_FILE


def boot_partition_missing(boot_dir: str) -> bool:
    """On the appliance: whether the boot partition is not mounted (absent, or
    not there yet: fstab waits 120 s for a slow card)."""
    return bool(boot_dir) and not os.path.ismount(boot_dir)


def token_files(data_dir: Path, boot_dir: str = "") -> list[Path]:
    return [Path(data_dir) / DATA_TOKEN_FILE, boot_token_file(boot_dir)]


def setup_tokens(data_dir: Path, boot_dir: str = "") -> list[str]:
    """The setup tokens in force (any of them opens the wizard); [] for none."""
    tokens = []
    for path in token_files(data_dir, boot_dir):
        try:
            token = path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            continue
        if token:
            tokens.append(token)
    return tokens


def token_matches(given: str, tokens: list[str]) -> bool:
    """Constant-time comparison with every token (no early exit)."""
    given_octets = given.strip().encode("utf-8")
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(given_octets, token.encode("utf-8"))
    return matched


def setup_done(settings: config.Settings, directory: Directory) -> bool:
    if (settings.data_dir / DONE_FILE).exists():
        return True
    if setup_tokens(settings.data_dir, settings.boot_dir):
        return False  # prepared headlessly: the wizard finishes the job
    return directory.con.execute("SELECT 1 FROM accounts LIMIT 1").fetchone() is not None


def mark_done(settings: config.Settings, admin: str) -> None:
    path = settings.data_dir / DONE_FILE
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"done": int(time.time()), "admin": admin}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(settings.data_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# -- what the steps collect ----------------------------------------------------------------


@dataclass
class WizardState:
    seen: float = field(default_factory=time.monotonic)
    done: set[str] = field(default_factory=set)  # steps completed
    hostname: str = ""
    domain: str = ""
    admin: str = ""
    admin_hash: str = field(default="", repr=False)
    mailbox: str = ""  # "": the administrator's account is the first mailbox
    mailbox_hash: str = field(default="", repr=False)
    certificates: str = "internal"  # or "acme"
    acme_email: str = ""
    outbound: str = "direct"  # or "relay"
    relay_host: str = ""
    relay_port: int = 587
    relay_security: str = "starttls"
    relay_username: str = ""
    relay_password: str = field(default="", repr=False)


class StepError(ValueError):
    """What is wrong with a step's form, for the user."""


Handler = Callable[[aioweb.Request], Awaitable[aioweb.StreamResponse]]


class Wizard:
    def __init__(self, web: Web) -> None:
        self.web = web
        self.settings = web.settings
        self.directory = web.directory
        self._done = False
        self._states: collections.OrderedDict[str, WizardState] = collections.OrderedDict()
        self._applying = asyncio.Lock()

    def register(self) -> None:
        page = self.web.page
        page("GET", "/setup", self._open(self.welcome, state=False), login=False)
        page("POST", "/setup", self._open(self.start, state=False), login=False)
        page("GET", "/setup/ca.pem", self._open(self.ca_certificate, state=False), login=False)
        for step in STEPS:
            page("GET", f"/setup/{step}", self._open(self.show_step), login=False)
            if step != "review":
                page("POST", f"/setup/{step}", self._open(self.post_step), login=False)
        page("POST", "/setup/apply", self._open(self.apply), login=False)
        self.web.https.middlewares.append(self._home_to_wizard)
        from . import wizard_restore

        wizard_restore.register(self)  # the first page's other way: restore a backup
        if boot_partition_missing(self.settings.boot_dir) and not self.done():
            log.warning(
                "boot partition not mounted path=%s: the setup wizard answers loopback only",
                self.settings.boot_dir,
            )

    # -- guards ------------------------------------------------------------------------

    def done(self) -> bool:
        if not self._done:
            self._done = setup_done(self.settings, self.directory)
        return self._done

    @aioweb.middleware
    async def _home_to_wizard(self, request: aioweb.Request, handler: Handler) -> Any:
        home = request.path == "/" and request.method == "GET"
        if home and is_lan(request.remote) and not self.done():
            raise aioweb.HTTPSeeOther("/setup")
        return await handler(request)

    def _open(self, handler: Handler, state: bool = True) -> Handler:
        """Only while setup is not done (404), only from the LAN (403), and for
        step pages only with a started wizard (else back to the welcome page)."""

        async def guarded(request: aioweb.Request) -> aioweb.StreamResponse:
            if self.done():
                raise aioweb.HTTPNotFound()
            if not is_lan(request.remote):
                log.warning("setup wizard refused: not a LAN address ip=%s", request.remote)
                raise aioweb.HTTPForbidden(
                    text="The setup wizard answers only in the local network."
                )
            boot_dir = self.settings.boot_dir
            if boot_partition_missing(boot_dir) and not is_loopback(request.remote):
                log.warning(
                    "setup wizard refused: boot partition not mounted path=%s ip=%s",
                    boot_dir, request.remote,
                )  # fmt: skip
                return self.web.render(
                    request, "wizard/no_boot.html", status=503, boot_dir=boot_dir,
                    steps=(), titles={}, current="", wizard=None, errors=[],
                )  # fmt: skip
            if state and self._state(request) is None:
                raise aioweb.HTTPSeeOther("/setup")
            return await handler(request)

        return guarded

    def _state(self, request: aioweb.Request) -> WizardState | None:
        self._expire()
        token = request.cookies.get(COOKIE, "")
        wizard = self._states.get(token)
        if wizard is not None:
            wizard.seen = time.monotonic()
            self._states.move_to_end(token)
        return wizard

    def _expire(self) -> None:
        cutoff = time.monotonic() - WIZARD_IDLE
        for token in [t for t, s in self._states.items() if s.seen < cutoff]:
            del self._states[token]

    # -- welcome, token, CA ---------------------------------------------------------------

    async def welcome(self, request: aioweb.Request) -> aioweb.Response:
        return self._welcome(request)

    def _welcome(self, request: aioweb.Request, error: str = "", status: int = 200) -> Any:
        return self.web.render(
            request, "wizard/welcome.html", status=status, errors=[error] if error else [],
            token_needed=bool(setup_tokens(self.settings.data_dir, self.settings.boot_dir)),
            boot_token_file=str(boot_token_file(self.settings.boot_dir)),
            boot_missing=boot_partition_missing(self.settings.boot_dir),
            started=self._state(request) is not None,
            ca_available=admin_ops.ca_certificate_path(self.settings.data_dir).exists(),
            steps=STEPS, titles=STEP_TITLES, current="", wizard=None,
        )  # fmt: skip

    async def token_refused(self, request: aioweb.Request, form: Any) -> Any:
        """None when no setup token is needed or the form has it; else the
        welcome page with the error (403)."""
        tokens = setup_tokens(self.settings.data_dir, self.settings.boot_dir)
        if not tokens:
            return None
        given = str(form.get("token", ""))[:1024]
        ip = request.remote or "unknown"

        async def check() -> bool:
            return token_matches(given, tokens)

        # The login throttle, with the token as the account it guards.
        outcome = await self.web.authenticator.guard(ip, TOKEN_ACCOUNT, "setup", check)
        if outcome is Outcome.OK:
            return None
        log.warning("setup token refused ip=%s", ip)
        return self._welcome(
            request,
            "That is not the setup token (or too many attempts: wait a few minutes).",
            403,
        )

    async def start(self, request: aioweb.Request) -> aioweb.StreamResponse:
        form = await request.post()
        ip = request.remote or "unknown"
        refused = await self.token_refused(request, form)
        if refused is not None:
            return refused  # type: ignore[no-any-return]
        token = secrets.token_urlsafe(32)
        while len(self._states) >= MAX_WIZARDS:
            self._states.popitem(last=False)
        self._states[token] = self._initial_state()
        log.info("setup wizard started ip=%s", ip)
        response = aioweb.HTTPSeeOther("/setup/names")
        response.set_cookie(
            COOKIE, token, path="/setup", secure=True, httponly=True, samesite="Strict"
        )
        raise response

    def _initial_state(self) -> WizardState:
        """Prefilled from what exists (a headless `pimail setup apply`)."""
        wizard = WizardState()
        domains = self.directory.domains()
        if domains:
            wizard.domain = domains[0]
        hostname = self.settings.hostname.rstrip(".").lower()
        if wizard.domain and hostname != wizard.domain:
            ours = hostname.endswith(f".{wizard.domain}")
            wizard.hostname = hostname if ours else f"mail.{wizard.domain}"
        elif "." in hostname and not hostname.endswith((".local", ".localdomain")):
            wizard.hostname = hostname
        relay = self.settings.outbound
        if relay.relay_host:
            wizard.outbound, wizard.relay_host = "relay", relay.relay_host
            wizard.relay_port, wizard.relay_security = relay.relay_port, relay.relay_security
            wizard.relay_username = relay.relay_username
        if self.settings.tls.acme:
            wizard.certificates, wizard.acme_email = "acme", self.settings.tls.acme_email
        return wizard

    async def ca_certificate(self, request: aioweb.Request) -> aioweb.Response:
        return ca_download(self.settings.data_dir)

    # -- the steps --------------------------------------------------------------------------

    def _step_of(self, request: aioweb.Request) -> str:
        return request.path.rsplit("/", 1)[1]

    def _first_missing(self, wizard: WizardState, step: str) -> str | None:
        """The first earlier step not done yet, if any."""
        for earlier in STEPS[: STEPS.index(step)]:
            if earlier not in wizard.done:
                return earlier
        return None

    def _at_step(self, request: aioweb.Request) -> tuple[WizardState, str]:
        """This browser's wizard and the step asked for; back to the first
        earlier step not done yet, if any."""
        wizard = self._state(request)
        assert wizard is not None
        step = self._step_of(request)
        missing = self._first_missing(wizard, step)
        if missing is not None:
            raise aioweb.HTTPSeeOther(f"/setup/{missing}")
        return wizard, step

    async def show_step(self, request: aioweb.Request) -> aioweb.Response:
        wizard, step = self._at_step(request)
        return self._render_step(request, wizard, step)

    def _render_step(
        self, request: aioweb.Request, wizard: WizardState, step: str, status: int = 200,
        errors: list[str] | None = None, form: dict[str, str] | None = None,
        host_check: dnscheck.HostCheck | None = None,
    ) -> aioweb.Response:  # fmt: skip
        hidden = ("done", "seen", "admin_hash", "mailbox_hash", "relay_password")
        values = {k: str(v) for k, v in dataclasses.asdict(wizard).items() if k not in hidden}
        values.update(form or {})
        return self.web.render(
            request, f"wizard/{step}.html", status=status, errors=errors or [], values=values,
            wizard=wizard, steps=STEPS, titles=STEP_TITLES, current=step, host_check=host_check,
            min_password=MIN_PASSWORD, relay_password_set=bool(wizard.relay_password),
            acme_directory=self.settings.tls.acme_directory,
            clamav=clamav_fit.read_state() if self.settings.profile == config.DEVICE else None,
        )  # fmt: skip

    async def post_step(self, request: aioweb.Request) -> aioweb.StreamResponse:
        wizard, step = self._at_step(request)
        form = {k: str(v)[:1024] for k, v in (await request.post()).items() if k != "csrf"}
        if step == "certificates" and form.get("action") == "check":
            return await self._check_name(request, wizard, form)
        try:
            await getattr(self, f"_take_{step}")(wizard, form)
        except (StepError, DirectoryError, config.ConfigError) as e:
            shown = {k: v for k, v in form.items() if "password" not in k}
            return self._render_step(request, wizard, step, 400, [str(e)], shown)
        wizard.done.add(step)
        raise aioweb.HTTPSeeOther(f"/setup/{STEPS[STEPS.index(step) + 1]}")

    async def _take_names(self, wizard: WizardState, form: dict[str, str]) -> None:
        errors = []
        try:
            domain = normalize_domain(form.get("domain", ""))
        except DirectoryError:
            errors.append("The mail domain is not a domain name (like example.org).")
            domain = ""
        try:
            hostname = normalize_domain(form.get("hostname", ""))
            config.validate_override("hostname", hostname)
        except (DirectoryError, config.ConfigError):
            errors.append("The host name is not a full name (like mail.example.org).")
            hostname = ""
        if errors:
            raise StepError(" ".join(errors))
        if domain != wizard.domain:  # the addresses chosen were in the old domain
            wizard.done -= {"admin", "mailbox"}
            wizard.admin = wizard.mailbox = ""
        wizard.domain, wizard.hostname = domain, hostname

    def _address_in_domain(self, wizard: WizardState, address: str) -> str:
        from ..auth.accounts import _ACCOUNT_LOCALPART

        try:
            localpart, domain = split_address(address.strip())
        except DirectoryError:
            raise StepError(f"{address!r} is not an email address.") from None
        if domain != wizard.domain:
            raise StepError(f"The address must be in {wizard.domain}.")
        if not _ACCOUNT_LOCALPART.match(localpart):
            raise StepError("Use letters, digits, '.', '-' and '_' before the @ (no '+').")
        return f"{localpart}@{domain}"

    async def _new_password_hash(self, form: dict[str, str], prefix: str = "") -> str:
        password = form.get(f"{prefix}password", "")
        if len(password) < MIN_PASSWORD:
            raise StepError(f"The password needs at least {MIN_PASSWORD} characters.")
        if password != form.get(f"{prefix}password_again", ""):
            raise StepError("The two passwords differ.")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, hash_password, password)

    async def _take_admin(self, wizard: WizardState, form: dict[str, str]) -> None:
        address = self._address_in_domain(wizard, form.get("address", ""))
        wizard.admin_hash = await self._new_password_hash(form)
        if address != wizard.admin:
            wizard.done.discard("mailbox")
        wizard.admin = address

    async def _take_mailbox(self, wizard: WizardState, form: dict[str, str]) -> None:
        if form.get("choice", "admin") == "admin":
            wizard.mailbox, wizard.mailbox_hash = "", ""
            return
        address = self._address_in_domain(wizard, form.get("address", ""))
        if address == wizard.admin:
            wizard.mailbox, wizard.mailbox_hash = "", ""
            return
        if self.directory.account(address) is not None:
            raise StepError(f"{address} exists already.")
        wizard.mailbox_hash = await self._new_password_hash(form)
        wizard.mailbox = address

    async def _take_certificates(self, wizard: WizardState, form: dict[str, str]) -> None:
        choice = form.get("choice", "")
        if choice not in ("acme", "internal"):
            raise StepError("Choose Let's Encrypt or the box's own certificates.")
        email = form.get("acme_email", "").strip()
        if choice == "acme":
            if wizard.hostname.endswith(".local"):
                raise StepError("Let's Encrypt cannot certify a .local name: go back and "
                                "give the box a public host name.")  # fmt: skip
            if email and ("@" not in email or any(c.isspace() for c in email)):
                raise StepError("The contact address for Let's Encrypt is not an address.")
        wizard.certificates, wizard.acme_email = choice, email if choice == "acme" else ""

    async def _check_name(
        self, request: aioweb.Request, wizard: WizardState, form: dict[str, str]
    ) -> aioweb.Response:
        resolver = dnscheck.resolver_for(self.settings)
        result = await dnscheck.check_host(resolver, wizard.hostname)
        if result.public:  # then port 80 there, as Let's Encrypt will try it
            challenges = self.settings.data_dir / "tls" / "acme-challenge"
            ok, detail = await dnscheck.probe_http(wizard.hostname, result.public, challenges)
            result = dataclasses.replace(result, http_ok=ok, http_detail=detail)
        return self._render_step(request, wizard, "certificates", form=form, host_check=result)

    async def _take_outbound(self, wizard: WizardState, form: dict[str, str]) -> None:
        if form.get("choice", "direct") == "direct":
            wizard.outbound = "direct"
            return
        host = form.get("relay_host", "").strip().lower().rstrip(".")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            try:
                host = normalize_domain(host)
            except DirectoryError:
                raise StepError("The smarthost is not a host name (smtp.example.net).") from None
        try:
            port = int(form.get("relay_port", "") or 0)
        except ValueError:
            port = 0
        if not 0 < port < 65536:
            raise StepError("The port is a number from 1 to 65535 (usually 587 or 465).")
        security = form.get("relay_security", "")
        if security not in ("starttls", "tls"):
            raise StepError("Choose STARTTLS (port 587) or TLS (port 465).")
        username = form.get("relay_username", "").strip()
        password = form.get("relay_password", "")
        if username and not password and not wizard.relay_password:
            raise StepError("The smarthost needs the password that goes with the user name.")
        wizard.outbound, wizard.relay_host, wizard.relay_port = "relay", host, port
        wizard.relay_security, wizard.relay_username = security, username
        if password or not username:
            wizard.relay_password = password

    # -- applying ---------------------------------------------------------------------------

    async def apply(self, request: aioweb.Request) -> aioweb.StreamResponse:
        wizard = self._state(request)
        assert wizard is not None
        missing = self._first_missing(wizard, "review")
        if missing is not None:
            raise aioweb.HTTPSeeOther(f"/setup/{missing}")
        async with self._applying:
            if self.done():
                raise aioweb.HTTPNotFound()
            loop = asyncio.get_running_loop()
            try:
                changes = await loop.run_in_executor(None, self._apply, wizard)
            except (DirectoryError, ValueError) as e:
                log.warning("setup failed error=%s", e)
                return self._render_step(request, wizard, "review", 409, [str(e)])
            self._done = True
            self._states.clear()
        log.info("setup done admin=%s domain=%s changes=%s", wizard.admin, wizard.domain,
                 "; ".join(changes))  # fmt: skip
        response = aioweb.HTTPSeeOther("/login?next=/admin/welcome")
        response.del_cookie(COOKIE, path="/setup")
        raise response

    def _apply(self, wizard: WizardState) -> list[str]:
        """Everything, on a worker thread with a connection of its own."""
        con = db.open_main(self.settings.db_path)
        try:
            directory = Directory(con)
            existing = directory.account(wizard.admin)
            changes = admin_ops.apply_setup(
                self.settings, directory,
                {"domain": wizard.domain, "hostname": wizard.hostname, "admin": wizard.admin,
                 "password_hash": wizard.admin_hash},
            )  # fmt: skip
            if existing is not None:  # made headlessly: the wizard's password wins
                directory.set_password(wizard.admin, wizard.admin_hash)
                admin_ops.set_admin(directory, wizard.admin, True)
                changes.append(f"password and admin flag set for {wizard.admin}")
            if wizard.mailbox:
                directory.add_account(wizard.mailbox, wizard.mailbox_hash)
                changes.append(f"added account {wizard.mailbox}")
            if line := admin_ops.ensure_postmaster(directory, wizard.domain, wizard.admin):
                changes.append(line)
            changes += self._store_settings(con, wizard)
            mark_done(self.settings, wizard.admin)
            return changes
        finally:
            con.close()

    def _store_settings(self, con: Any, wizard: WizardState) -> list[str]:
        """The certificate and outbound choices, as `pimail config set` stores them."""
        acme = wizard.certificates == "acme"
        admin_ops.store_setting(con, "tls.acme", acme)
        if acme:
            admin_ops.store_setting(con, "tls.acme_email", wizard.acme_email)
        relay = wizard.outbound == "relay"
        admin_ops.store_setting(con, "outbound.relay_host", wizard.relay_host if relay else "")
        if relay:
            admin_ops.store_setting(con, "outbound.relay_port", wizard.relay_port)
            admin_ops.store_setting(con, "outbound.relay_security", wizard.relay_security)
            admin_ops.store_setting(con, "outbound.relay_username", wizard.relay_username)
            admin_ops.store_setting(con, "outbound.relay_password", wizard.relay_password)
        else:
            for key in ("relay_username", "relay_password"):
                admin_ops.unset_setting(con, f"outbound.{key}")
        return [f"tls.acme = {json.dumps(acme)}",
                f"outbound: {'smarthost ' + wizard.relay_host if relay else 'direct'}"]  # fmt: skip


def ca_download(data_dir: Path) -> aioweb.Response:
    """The internal CA certificate, for a browser or phone to install."""
    try:
        pem = admin_ops.ca_certificate_path(data_dir).read_bytes()
    except OSError:
        raise aioweb.HTTPNotFound(text="No internal CA yet.") from None
    return aioweb.Response(
        body=pem,
        content_type="application/x-x509-ca-cert",
        headers={"Content-Disposition": 'attachment; filename="pimail-ca.crt"'},
    )


def register(web: Web) -> None:
    """Add this module's pages to the HTTPS application."""
    Wizard(web).register()
