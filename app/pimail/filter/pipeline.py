"""The inbound filter pipeline: every check on one received message, in order, to one verdict.

`Pipeline(settings, resolver, bayes).check(envelope, message, account_ids)`
runs, after DATA and before the reply to it:

1. MIME/archive limits (limits.py, in a thread): refused -> its own SMTP status
   (552 5.3.4, 554 5.6.0, 451 4.3.0). On the same walk, unless `filter.malware`
   is off, the built-in malware screen (malware.py): EICAR, executables,
   macros, HTML smuggling, encrypted archives -> 554 5.7.1, naming what was
   found; a 7z/RAR archive it cannot list, without clamd -> ARCHIVE_UNSCANNED.
2. clamd, if `filter.clamd` is set: infected -> 554 5.7.1 (as the built-in
   screen: one code for content refused by the filter); unreachable ->
   451 4.7.0 or, with `clamd_unreachable = "accept"`, the symbol CLAMD_ERROR;
   too large for clamd -> the symbol CLAMD_SKIPPED.
3. Sender authentication, unless the client is in `skip_networks` (the LAN,
   the box itself) or authenticated (SMTP AUTH): SPF, DKIM and ARC at once,
   then DMARC over their results. DMARC p=reject with `dmarc_reject` ->
   550 5.7.1 (RFC 7489 6.3, 10.3); p=quarantine (or p=reject while
   `dmarc_reject` is off) -> every recipient's copy goes to Junk.
   When nothing was checked, the Authentication-Results field says so with
   RFC 8601 2.2's `none` ("no message authentication was performed"): the
   field is still added, so that a reader (and a forged field that the
   caller strips) never leaves doubt about what this server did.
4. DNSBL/DNSWL over the client address (dnsbl.py), with 3 as well, and the
   domain lists (`dnsbl_domain_zones`) over the links' registrable domains and
   the sender's domains (MAIL FROM, From), at most `dnsbl_max_domains` links;
   through `filter.dnsbl_resolver` when set. NEW_DOMAIN_NOAUTH from the
   domains seen authenticated (rules.SeenDomains, in memory).
5. The static rules (rules.py, body_rules.py). GTUBE -> 550 5.7.1, always.
6. rspamd, if `filter.rspamd` is set. "add": its score is one more symbol,
   RSPAMD. "replace": its score is the score, its action the action
   (reject -> 550 5.7.1; soft reject, greylist -> 451 4.7.1; add header,
   rewrite subject, quarantine, discard -> Junk: pimail never drops mail it
   acknowledged); our own symbols are still reported.
   rspamd failing -> the symbol RSPAMD_ERROR and our own score alone.
7. The account's own allow and block lists (senders.py): a blocked sender's
   copy goes to Junk (USER_BLOCK); an allowed sender, authenticated by
   SPF, DKIM or DMARC, is never put in Junk or refused for its score
   (USER_ALLOW). Both symbols are worth 0.0: they decide, they do not score.
8. Bayes per recipient account (bayes.py: the site's starter model until the
   account has trained its own, then both), one symbol of continuous points,
   linear in the log-odds of the spam probability p (issue 15):

       points = 5.0 * logit(p) / logit(t), within [-3.0, +6.0]

   t = `bayes_threshold` (0.95, chosen on spam-1/easy-ham-1 alone by
   bench/bayes_eval.py): at p = t Bayes alone reaches the default junk
   score; p = 0.5 gives 0, p = 0.7 about +1.4, p = 0.9 about +3.7, p = 0.1
   about -3.7, held at -3.0.
   Positive points are the symbol BAYES_SPAM, negative BAYES_HAM; below
   0.05 either way, no symbol. Without any model to score, no symbol.

Scores: the shared score is the sum of every symbol from steps 2-6; an
account's score adds its Bayes symbol. An account whose score reaches
`junk_score` gets its copy in Junk. The message is refused (550 5.7.1) when
every recipient account's score reaches `reject_score` (one user's training
never refuses mail for another); with one account, that is simply its score.
`Verdict.score` and `Verdict.symbols` are that one account's when there is
exactly one, else the shared ones; `Verdict.account_headers` has the header
fields for each account's copy. The stored message is one file linked into
every recipient's Maildir, so it carries `Verdict.headers`: for several
accounts, the shared score; each account's own score decides its Junk.

Every stage is guarded: an exception inside one is logged (with the queue id,
never the message) and becomes the symbol `<STAGE>_ERROR` worth 0.0; the
pipeline itself never raises. `Verdict.timings` has each stage's seconds.

What it touches: DNS through the Resolver, clamd and rspamd sockets, the Bayes
database and the sender lists in pimail.db (read only). It writes nothing and
keeps no state between messages.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ..config import Settings
from ..dns.resolver import Resolver
from ..store.headers import header_end
from . import authres, body_rules, clamd, dkim_verify, dmarc, dnsbl, malware, rspamd, rules, spf
from .bayes import Bayes
from .dkim_verify import DkimResult
from .dmarc import DmarcResult
from .senders import ALLOW, BLOCK, Sender, SenderLists
from .spf import SpfResult

log = logging.getLogger(__name__)

T = TypeVar("T")

ACCEPT, REJECT, TEMPFAIL = "accept", "reject", "tempfail"
# The Bayes points (module docstring, step 8).
BAYES_AT_THRESHOLD = 5.0  # points at p = bayes_threshold
BAYES_MAX, BAYES_MIN = 6.0, -3.0
RSPAMD_JUNK_ACTIONS = ("add header", "rewrite subject", "quarantine", "discard")
RSPAMD_TEMPFAIL_ACTIONS = ("soft reject", "greylist")


@dataclass
class Envelope:
    """The SMTP transaction of one message (RFC 5321 2.3.1)."""

    ip: str
    helo: str
    mail_from: str
    rcpt_to: list[str]
    authenticated: bool = False  # SMTP AUTH succeeded
    queue_id: str = ""


@dataclass
class Verdict:
    action: str  # ACCEPT | REJECT | TEMPFAIL
    reply: str | None  # the SMTP reply for reject/tempfail ("550 5.7.1 ...")
    score: float
    symbols: dict[str, float]
    junk_accounts: set[int]  # accounts whose copy goes to Junk
    headers: bytes  # Authentication-Results, X-Spam-Status, X-Spam-Score (CRLF each)
    strip_authserv_id: str  # forged A-R fields with this id go (authres.strip_forged)
    account_headers: dict[int, bytes] = field(default_factory=dict)  # per account's copy
    account_scores: dict[int, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    # The author domain when DMARC passed (SPF or DKIM aligned): greylisting
    # lets its next mail from the same network through at once.
    authenticated_domain: str | None = None


@dataclass
class _Auth:
    spf: SpfResult | None = None
    dkim: list[DkimResult] = field(default_factory=list)
    arc: str | None = None
    dmarc: DmarcResult | None = None


@dataclass
class _Lists:
    """What the DNS lists said (dnsbl.score() of each kind of lookup)."""

    blocked: int = 0  # the client address on the blocklists
    allowed: int = 0  # ... and on the allowlists (the sum of |weight|)
    uribl: int = 0  # the links' domains on the domain lists
    rhsbl: int = 0  # the sender's domains on the domain lists


@dataclass
class _Run:
    """The state of one check() as it goes through the stages."""

    envelope: Envelope
    symbols: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    auth: _Auth = field(default_factory=_Auth)
    checked_auth: bool = False
    junk_all: bool = False
    rspamd_result: rspamd.RspamdResult | None = None
    lists: dict[int, str] = field(default_factory=dict)  # account -> ALLOW | BLOCK
    texts: tuple[malware.TextPart, ...] = ()  # the text parts, for the rules

    async def stage(self, name: str, call: Callable[[], Awaitable[T]], default: T) -> T:
        """Run one stage, timed; an exception is logged and becomes <NAME>_ERROR."""
        started = time.monotonic()
        try:
            return await call()
        except Exception:
            log.exception("filter stage failed stage=%s queue_id=%s", name, self.envelope.queue_id)
            self.symbols[f"{name.upper()}_ERROR"] = 0.0
            return default
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.monotonic() - started


class _Refusal(Exception):
    def __init__(self, action: str, reply: str) -> None:
        super().__init__(reply)
        self.action = action
        self.reply = reply


class Pipeline:
    """The checks of the module docstring, configured by `settings.filter`."""

    def __init__(
        self,
        settings: Settings,
        resolver: Resolver,
        bayes: Bayes | None,
        senders: SenderLists | None = None,
    ) -> None:
        self.settings = settings
        self.filter = settings.filter
        self.resolver = resolver
        self.bayes = bayes
        self.senders = senders
        self.authserv_id = self.filter.authserv_id or settings.hostname
        self._skip = _networks(self.filter.skip_networks)
        # DNS lists through their own resolver when set (a local recursive one:
        # the public lists refuse queries from the big public resolvers).
        self.dnsbl_resolver = (
            Resolver([self.filter.dnsbl_resolver], settings.dns.timeout)
            if self.filter.dnsbl_resolver
            else resolver
        )
        self.seen = rules.SeenDomains()

    async def check(self, envelope: Envelope, message: bytes, account_ids: list[int]) -> Verdict:
        """The verdict on `message`; never raises."""
        run = _Run(envelope)
        accounts = list(dict.fromkeys(account_ids))
        if not self.filter.enabled:
            return self._verdict(run, {a: {} for a in accounts}, ACCEPT, None)
        try:
            await self._limits(run, message)
            await self._clamd(run, message)
            await self._authenticate(run, message)
            await self._rules(run, message)
            await self._rspamd(run, message)
        except _Refusal as refusal:
            return self._verdict(run, {}, refusal.action, refusal.reply)
        await self._sender_lists(run, message, accounts)
        bayes = {a: await self._bayes(run, a, message) for a in accounts}
        return self._decide(run, bayes)

    async def screen(self, envelope: Envelope, message: bytes) -> Verdict:
        """The part of check() that is about the message, not its sender: the
        MIME limits, the malware screen, clamd and GTUBE. Mail the filter
        otherwise trusts (the LAN, loopback, SMTP AUTH) goes through this, so a
        compromised machine at home, or a stolen password, sends no virus to a
        mailbox here or on to the internet; never raises."""
        run = _Run(envelope)
        if not self.filter.enabled:
            return self._verdict(run, {}, ACCEPT, None)
        try:
            await self._limits(run, message)
            await self._clamd(run, message)
            self._gtube(run, message)
        except _Refusal as refusal:
            return self._verdict(run, {}, refusal.action, refusal.reply)
        return self._verdict(run, {}, ACCEPT, None)

    # -- stages ------------------------------------------------------------------

    async def _limits(self, run: _Run, message: bytes) -> None:
        # One walk: the limits, the built-in malware screen, the text parts for the rules.
        screened = await run.stage(
            "limits",
            lambda: asyncio.to_thread(malware.screen, message, self.filter.malware),
            None,
        )
        result = screened.limits if screened is not None else None
        if screened is not None:
            run.texts = screened.texts
        if result is not None and not result.ok:
            code, status = result.smtp_status
            action = TEMPFAIL if code < 500 else REJECT
            raise _Refusal(action, f"{code} {status} {result.reason}")
        if screened is None:
            return
        if screened.finding is not None:
            log.info("malware refused queue_id=%s kind=%s", run.envelope.queue_id,
                     screened.finding.kind)  # fmt: skip
            raise _Refusal(REJECT, screened.finding.reply)
        if screened.unscanned_archives and not self.filter.clamd:
            run.symbols["ARCHIVE_UNSCANNED"] = malware.UNSCANNED_ARCHIVE_SCORE

    async def _clamd(self, run: _Run, message: bytes) -> None:
        if not self.filter.clamd:
            return
        error = clamd.ScanResult("error", detail="internal error")
        result = await run.stage("clamd", lambda: clamd.scan(self.filter.clamd, message), error)
        if result.status == "infected":
            # RFC 3463 3.8: X.7.1 "message refused" by per-host filtering.
            raise _Refusal(REJECT, f"554 5.7.1 Virus found: {result.signature}")
        if result.status == "skipped":
            run.symbols["CLAMD_SKIPPED"] = 0.0
        elif result.status == "error":
            log.warning("clamd failed queue_id=%s detail=%s", run.envelope.queue_id, result.detail)
            if self.filter.clamd_unreachable != "accept":
                raise _Refusal(TEMPFAIL, "451 4.7.0 Virus scan unavailable, try again later")
            run.symbols["CLAMD_ERROR"] = 0.0

    def skips_authentication(self, envelope: Envelope) -> bool:
        """LAN, loopback, or SMTP AUTH: no sender authentication, no DNS lists."""
        if envelope.authenticated:
            return True
        try:
            ip = ipaddress.ip_address(envelope.ip)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._skip)

    async def _authenticate(self, run: _Run, message: bytes) -> None:
        if self.skips_authentication(run.envelope):
            return
        run.checked_auth = True
        env, auth = run.envelope, run.auth

        def check_spf() -> Awaitable[SpfResult]:
            return spf.check(self.resolver, env.ip, env.mail_from, env.helo)

        auth.spf, auth.dkim, auth.arc, lists = await asyncio.gather(
            run.stage("spf", check_spf, None),
            run.stage("dkim", lambda: dkim_verify.verify(message, self.resolver), []),
            run.stage("arc", lambda: dkim_verify.verify_arc(message, self.resolver), None),
            self._dns_lists(run, message),
        )
        block = message[: header_end(message)]
        auth.dmarc = await run.stage(
            "dmarc", lambda: dmarc.evaluate_message(self.resolver, block, auth.spf, auth.dkim), None
        )
        refused = False
        if auth.dmarc is not None and auth.dmarc.result == "fail":
            if auth.dmarc.policy == "reject" and self.filter.dmarc_reject:
                refused = True  # RFC 7489 6.3 p=reject; reply per RFC 7372 3.2's 5.7.1
            elif auth.dmarc.policy in ("reject", "quarantine"):
                run.junk_all = True  # RFC 7489 6.3 p=quarantine: "place into spam folder"
        run.symbols.update(
            rules.auth_rules(
                rules.AuthOutcome(
                    spf=auth.spf.result if auth.spf else None,
                    dkim=[r.result for r in auth.dkim],
                    dmarc=auth.dmarc.result if auth.dmarc else None,
                    dmarc_refused=refused,
                    dmarc_policy=auth.dmarc.policy if auth.dmarc else None,
                    dnsbl=lists.blocked,
                    dnswl=lists.allowed,
                    uribl=lists.uribl,
                    rhsbl=lists.rhsbl,
                    new_domain=self._new_domain(run, block),
                )
            )
        )
        if refused and auth.dmarc is not None:
            domain = spf.printable(auth.dmarc.domain)[:255]
            raise _Refusal(REJECT, f"550 5.7.1 Rejected by DMARC policy of {domain}")

    async def _dns_lists(self, run: _Run, message: bytes) -> _Lists:
        """The client address on the IP lists (blocklists, allowlists); the
        links' domains and the sender's domains on the domain lists."""
        resolver, timeout = self.dnsbl_resolver, self.filter.dnsbl_timeout

        async def ask(zones: list[str]) -> list[dnsbl.Listing]:
            if not zones:
                return []
            return await dnsbl.lookup(
                resolver, run.envelope.ip, zones, timeout=timeout,
                skip_private=self.filter.dnsbl_skip_private,
            )  # fmt: skip

        async def ask_domains(domains: list[str]) -> list[dnsbl.Listing]:
            zones = self.filter.dnsbl_domain_zones
            if not zones or not domains:
                return []
            return await dnsbl.lookup_domains(resolver, domains, zones, timeout=timeout)

        limit = self.filter.dnsbl_max_domains
        links = body_rules.link_domains(body_rules.uris(run.texts), limit)
        senders = _sender_domains(run.envelope, message)
        blocked, allowed, uribl, rhsbl = await asyncio.gather(
            run.stage("dnsbl", lambda: ask(self.filter.dnsbl_zones), []),
            run.stage("dnswl", lambda: ask(self.filter.dnswl_zones), []),
            run.stage("uribl", lambda: ask_domains(links), []),
            run.stage("rhsbl", lambda: ask_domains([d for d in senders if d not in links]), []),
        )
        return _Lists(
            dnsbl.score(blocked),
            sum(abs(listing.weight) for listing in allowed),
            dnsbl.score(uribl),
            dnsbl.score(rhsbl),
        )

    def _new_domain(self, run: _Run, block: bytes) -> bool:
        """NEW_DOMAIN_NOAUTH (rules.py): the sender's domain was never seen
        authenticated, and is not now. Domains authenticated now are remembered."""
        auth, proven = run.auth, set()
        if auth.spf is not None and auth.spf.result == "pass" and auth.spf.scope == "mailfrom":
            proven.add(dmarc.organizational_domain(auth.spf.domain))
        proven.update(
            dmarc.organizational_domain(r.domain) for r in auth.dkim if r.result == "pass"
        )
        for domain in proven:
            self.seen.add(domain)
        authors = [a.rpartition("@")[2].lower().rstrip(".") for a in dmarc.from_addresses(block)]
        claimed = {dmarc.organizational_domain(d) for d in authors if d}
        if run.envelope.mail_from:
            claimed.add(dmarc.organizational_domain(run.envelope.mail_from.rpartition("@")[2]))
        return bool(claimed) and not proven and not any(d in self.seen for d in claimed)

    async def _rules(self, run: _Run, message: bytes) -> None:
        own = sorted({r.rpartition("@")[2].lower() for r in run.envelope.rcpt_to})

        async def static_rules() -> dict[str, float]:
            symbols = rules.header_rules(message, own, now=time.time())
            symbols.update(rules.text_rules(run.texts, own))
            # After authentication: its failures disqualify BULK_SENDER_CONSISTENT.
            symbols.update(rules.bulk_rules(message, run.texts, {**run.symbols, **symbols}))
            return symbols

        run.symbols.update(await run.stage("rules", static_rules, {}))
        self._gtube(run, message)

    def _gtube(self, run: _Run, message: bytes) -> None:
        if rules.gtube(message, run.texts):
            # rules.py: GTUBE is refused, whatever rspamd's mode and the sender lists say.
            run.symbols["GTUBE"] = rules.GTUBE_SCORE
            raise _Refusal(REJECT, "550 5.7.1 Message looks like spam (GTUBE test message)")

    async def _rspamd(self, run: _Run, message: bytes) -> None:
        if not self.filter.rspamd:
            return
        env = run.envelope

        def ask() -> Awaitable[rspamd.RspamdResult]:
            return rspamd.check(
                self.filter.rspamd,
                message,
                ip=env.ip or None,
                helo=env.helo or None,
                mail_from=env.mail_from,
                rcpt_to=env.rcpt_to,
                queue_id=env.queue_id or None,
                mta_name=self.settings.hostname,
            )

        result = await run.stage("rspamd", ask, None)
        if result is None:
            return
        if result.error is not None:
            log.warning("rspamd failed queue_id=%s error=%s", env.queue_id, result.error)
            run.symbols["RSPAMD_ERROR"] = 0.0
            return
        run.rspamd_result = result
        if self.filter.rspamd_mode == "replace":
            if result.action == "reject":
                raise _Refusal(REJECT, "550 5.7.1 Message looks like spam")
            if result.action in RSPAMD_TEMPFAIL_ACTIONS:
                raise _Refusal(TEMPFAIL, "451 4.7.1 Try again later")
            if result.action in RSPAMD_JUNK_ACTIONS:
                run.junk_all = True
        run.symbols["RSPAMD"] = round(result.score, 2)

    async def _sender_lists(self, run: _Run, message: bytes, accounts: list[int]) -> None:
        lists = self.senders
        if lists is None or not accounts:
            return

        async def decide() -> dict[int, str]:
            return lists.decide(accounts, self._senders(run, message))

        run.lists = await run.stage("senders", decide, {})

    def _senders(self, run: _Run, message: bytes) -> list[Sender]:
        """MAIL FROM and the From: addresses, each with whether it is proven
        (senders.py): SPF for MAIL FROM; DMARC, or an aligned DKIM pass, for From:."""
        auth, trusted = run.auth, not run.checked_auth  # trusted: LAN or SMTP AUTH
        found: list[Sender] = []
        if run.envelope.mail_from:
            spf_pass = (
                auth.spf is not None and auth.spf.result == "pass" and auth.spf.scope == "mailfrom"
            )
            found.append(Sender(run.envelope.mail_from, trusted or spf_pass))
        for address in dmarc.from_addresses(message[: header_end(message)]):
            domain = address.rpartition("@")[2].lower().rstrip(".")
            proven = trusted or (
                auth.dmarc is not None and auth.dmarc.result == "pass"
                and auth.dmarc.domain == domain
            ) or any(
                r.result == "pass" and dmarc.aligned(r.domain, domain, "r") for r in auth.dkim
            )  # fmt: skip
            found.append(Sender(address, proven))
        return found

    async def _bayes(self, run: _Run, account_id: int, message: bytes) -> dict[str, float]:
        bayes = self.bayes
        if bayes is None or not self.filter.bayes:
            return {}
        result = await run.stage(
            "bayes", lambda: asyncio.to_thread(bayes.score, account_id, message), None
        )
        if result is None or not result.trained:
            return {}
        return bayes_symbol(result.probability, self.filter.bayes_threshold)

    # -- the verdict -------------------------------------------------------------

    def _shared_score(self, run: _Run) -> float:
        if self.filter.rspamd_mode == "replace" and run.rspamd_result is not None:
            return run.rspamd_result.score  # the other symbols are reported, not counted
        return sum(run.symbols.values())

    def _decide(self, run: _Run, bayes: dict[int, dict[str, float]]) -> Verdict:
        shared = self._shared_score(run)
        scores = {a: shared + sum(b.values()) for a, b in bayes.items()}
        deciding = list(scores.values()) or [shared]
        if ALLOW in run.lists.values():
            deciding = []  # one account wants it: the others' copies go to Junk instead
        # In "replace" mode rspamd's action has decided on refusal already.
        replaced = self.filter.rspamd_mode == "replace" and run.rspamd_result is not None
        if not replaced and deciding and min(deciding) >= self.filter.reject_score:
            return self._verdict(run, bayes, REJECT, "550 5.7.1 Message looks like spam")
        return self._verdict(run, bayes, ACCEPT, None)

    def _verdict(
        self,
        run: _Run,
        bayes: dict[int, dict[str, float]],
        action: str,
        reply: str | None,
    ) -> Verdict:
        auth_results = self._auth_results(run)
        shared = self._shared_score(run)
        account_symbols = {a: {**run.symbols, **b} for a, b in bayes.items()}
        for account, kind in run.lists.items():
            if account in account_symbols:
                account_symbols[account]["USER_ALLOW" if kind == ALLOW else "USER_BLOCK"] = 0.0
        account_scores = {a: shared + sum(b.values()) for a, b in bayes.items()}
        junk = {
            a
            for a, s in account_scores.items()
            if run.lists.get(a) == BLOCK
            or (run.lists.get(a) != ALLOW and (run.junk_all or s >= self.filter.junk_score))
        }
        account_headers = {
            a: auth_results + self._spam_fields(account_scores[a], account_symbols[a], a in junk)
            for a in bayes
        }
        if len(bayes) == 1:
            (only,) = bayes
            score, symbols = account_scores[only], account_symbols[only]
            shared_junk = only in junk
        else:
            score, symbols = shared, dict(run.symbols)
            shared_junk = run.junk_all or score >= self.filter.junk_score
        if not self.filter.enabled:
            headers = b""
            account_headers = {a: b"" for a in bayes}
        else:
            headers = auth_results + self._spam_fields(score, symbols, shared_junk)
        if action != ACCEPT:
            log.info(
                "filter refused queue_id=%s reply=%r score=%.1f",
                run.envelope.queue_id,
                reply,
                score,
            )
        return Verdict(
            action=action,
            reply=reply,
            score=round(score, 2),
            symbols=symbols,
            junk_accounts=junk if action == ACCEPT else set(),
            headers=headers,
            strip_authserv_id=self.authserv_id,
            account_headers=account_headers,
            account_scores={a: round(s, 2) for a, s in account_scores.items()},
            timings=run.timings,
            authenticated_domain=(
                run.auth.dmarc.domain
                if run.auth.dmarc is not None and run.auth.dmarc.result == "pass"
                else None
            ),
        )

    def _auth_results(self, run: _Run) -> bytes:
        auth = run.auth
        try:
            if not run.checked_auth:
                return authres.header(self.authserv_id, None, [], None)  # RFC 8601 2.2: none
            return authres.header(self.authserv_id, auth.spf, auth.dkim, auth.dmarc, auth.arc)
        except ValueError:  # a host name that is not a token: a configuration error
            log.exception("cannot write Authentication-Results authserv_id=%r", self.authserv_id)
            return b""

    def _spam_fields(self, score: float, symbols: dict[str, float], junk: bool) -> bytes:
        """X-Spam-Status and X-Spam-Score (SpamAssassin's form; the tokenizer skips
        X-Spam-*). "Yes" when the copy goes to Junk, for whatever reason."""
        flag = "Yes" if junk else "No"
        line = f"X-Spam-Status: {flag}, score={score:.1f} required={self.filter.junk_score:.1f}"
        names = sorted(symbols)
        line += " tests=" + (names[0] if names else "none")
        for name in names[1:]:
            # Fold between the tests (RFC 5322 2.2.3) to keep lines short.
            short = len(line.rsplit("\n", 1)[-1]) + len(name) < 76
            line += ("," if short else ",\r\n\t") + name
        return f"{line}\r\nX-Spam-Score: {score:.1f}\r\n".encode("ascii")


def bayes_points(probability: float, threshold: float = 0.95) -> float:
    """The Bayes points for a spam probability (module docstring, step 8)."""
    threshold = min(max(threshold, 0.51), 1.0 - 1e-9)
    p = min(max(probability, 1e-12), 1.0 - 1e-12)
    points = BAYES_AT_THRESHOLD * _logit(p) / _logit(threshold)
    return min(max(points, BAYES_MIN), BAYES_MAX)


def bayes_symbol(probability: float, threshold: float = 0.95) -> dict[str, float]:
    """{BAYES_SPAM: points} or {BAYES_HAM: points}; {} near 0 points."""
    points = round(bayes_points(probability, threshold), 2)
    if points >= 0.05:
        return {"BAYES_SPAM": points}
    if points <= -0.05:
        return {"BAYES_HAM": points}
    return {}


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _networks(specs: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for spec in specs:
        try:
            networks.append(ipaddress.ip_network(spec, strict=False))
        except ValueError:
            log.warning("filter skip_networks entry ignored value=%r", spec)
    return networks


def _sender_domains(envelope: Envelope, message: bytes) -> list[str]:
    """The MAIL FROM domain and the From domains, lower case, each once."""
    found = [envelope.mail_from.rpartition("@")[2]] if "@" in envelope.mail_from else []
    found += [a.rpartition("@")[2] for a in dmarc.from_addresses(message[: header_end(message)])]
    return list(dict.fromkeys(d.lower().rstrip(".") for d in found if d))
