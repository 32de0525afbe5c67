"""Inbound MX policy: the aiosmtpd handler hooks for port 25.

Who may receive (RCPT TO resolves through the directory: accounts, aliases,
catch-all, plus-addressing; a full mailbox is refused with 452 4.2.2, see
store/quota.py), what a message gets on arrival (Return-Path and Received,
RFC 5321 4.4), and delivery into the store before 250.

No open relay: a recipient outside our domains is refused here, always. The
routing tricks of old (`user%host@us`, `host!user@us`, `"user@host"@us`) are
refused too; source routes (`@us:user@host`) are stripped by the parser, as RFC
5321 4.1.1.3 asks, and what remains is then a foreign address.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import secrets
from typing import Any

from ..auth.accounts import Account, Directory, Resolution
from ..config import Settings
from ..store import headers
from ..store.quota import declared_size
from ..store.spool import Incoming
from ..store.store import Store

log = logging.getLogger(__name__)

_ROUTING = re.compile(r"[%!@]")
_UNSAFE_HELO = re.compile(r"[^\x21-\x7e]")
MAX_ADDRESS = 320


# RFC 5321 4.2.5 (452), RFC 3463 3.4 (X.3.1): the disk failed while the
# message was stored; the state looked at since says it is fine again.
STORAGE_FAILED = "452 4.3.1 Insufficient system storage, try again later"
# The spool file could not be read back (it went with the data disk, or a bug).
UNREADABLE = "451 4.3.0 Could not read the message, try again"

# RFC 5321 6.3: a message that has passed this many hosts is looping.
MAX_HOPS = 50


class InboundHandler:
    def __init__(
        self,
        settings: Settings,
        directory: Directory,
        store: Store,
        queue: Any = None,
        pipeline: Any = None,
    ) -> None:
        self.settings = settings
        self.directory = directory
        self.store = store
        self.queue = queue  # forwards aliases to other domains; None: nobody outside
        self.pipeline = pipeline  # filter/pipeline.py; None: no content filtering
        self.greylist: Any = None  # filter/greylist.py, opened at the first use
        self.vacation: Any = None  # smtp/vacation.py, made at the first delivery
        self.delivered = 0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        lines = [r[4:] for r in responses if r[4:] != "HELP"]
        lines += ["PIPELINING", "ENHANCEDSTATUSCODES"]
        return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        # The null reverse-path of bounces (RFC 5321 4.5.5) stays "<>" in
        # envelope.mail_from: aiosmtpd takes an empty one for "no MAIL yet".
        if address != "<>" and (len(address) > MAX_ADDRESS or "@" not in address):
            return "553 5.1.7 Sender address malformed"
        refusal = await self.storage_refusal()
        if refusal is not None:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.accounts = {}
        envelope.forwards = []
        # RFC 1870: the announced size, checked against each recipient's quota.
        envelope.declared_size = declared_size(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self.settings.smtp.max_recipients:
            return "452 4.5.3 Too many recipients"
        if len(address) > MAX_ADDRESS:
            return "553 5.1.3 Recipient address too long"
        refusal = await self.storage_refusal()
        if refusal is not None:
            return refusal
        localpart = address.rpartition("@")[0]
        if _ROUTING.search(localpart.replace('"', "")):
            log.warning("routing trick refused peer=%r rcpt=%r", session.peer, address)
            return f"550 5.7.1 <{address}>: address routing (%, !, @ in local part) refused"
        forwards: list[str] | None = [] if self.queue is not None else None
        resolution, accounts = self.directory.resolve(address, forwards)
        if resolution is Resolution.RELAY_DENIED:
            log.info("relay denied peer=%r rcpt=%r", session.peer, address)
            return f"554 5.7.1 <{address}>: Relay access denied"
        if resolution is Resolution.UNKNOWN_USER:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if not forwards:  # with a copy going elsewhere, someone has room
            refusal = await self.store.quota.rcpt_refusal(
                address, accounts, getattr(envelope, "declared_size", 0)
            )
            if refusal is not None:
                return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        for account in accounts:
            envelope.accounts[account.id] = account
        refusal = await self._greylist(session, envelope, address)
        if refusal is not None:
            envelope.rcpt_tos.pop()
            return refusal
        for target in forwards or ():
            if target not in envelope.forwards:
                envelope.forwards.append(target)
        return "250 2.1.5 Ok"

    async def storage_refusal(self) -> str | None:
        """452 4.3.1 while the data disk is gone, read-only or full
        (store/health.py): at MAIL and RCPT, so nothing is acknowledged that
        cannot be stored, and the sender keeps the message and retries."""
        guard = self.store.guard
        if guard is None:
            return None
        health = await guard.current()
        return None if health.ok else health.smtp_reply

    async def failure_reply(self, error: Exception, fallback: str) -> str:
        """The reply for a delivery or queueing that failed: 452 4.3.1 when the
        disk was the cause (it failed during the transfer), else `fallback`."""
        guard = self.store.guard
        if guard is not None and await guard.judge(error):
            return guard.health.smtp_reply if not guard.health.ok else STORAGE_FAILED
        return fallback

    def _envelope(self, session: Any, envelope: Any) -> Any:
        from ..filter.pipeline import Envelope

        return Envelope(
            ip=session.peer[0] if session.peer else "",
            helo=session.host_name or "",
            mail_from=reverse_path(envelope),
            rcpt_to=list(envelope.rcpt_tos),
            authenticated=bool(session.authenticated),
            queue_id=getattr(envelope, "queue_id", ""),
        )

    async def _greylist(self, session: Any, envelope: Any, recipient: str) -> str | None:
        """RFC 6647 greylisting of a local recipient, for clients outside the
        trusted networks; authenticated clients never (filter/greylist.py)."""
        if self.pipeline is None or not self.settings.filter.greylist:
            return None
        if self.pipeline.skips_authentication(self._envelope(session, envelope)):
            return None
        if self.greylist is None:
            from ..filter.greylist import Greylist

            self.greylist = Greylist(
                self.settings.data_dir / "greylist.db", delay=self.settings.filter.greylist_delay
            )
        decision = await asyncio.to_thread(
            self.greylist.check, session.peer[0], reverse_path(envelope), recipient
        )
        if decision.action == "pass":
            return None
        log.info("greylisted peer=%s from=<%s> rcpt=<%s>",
                 session.peer[0], reverse_path(envelope), recipient)  # fmt: skip
        return decision.smtp_reply

    async def handle_DATA_START(
        self, server: Any, session: Any, envelope: Any, message: Incoming
    ) -> str | None:
        envelope.queue_id = secrets.token_hex(6).upper()
        trace = self._trace_headers(server, session, envelope)
        envelope.trace_length = len(trace)
        message.write(trace)
        return None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message: Incoming = envelope.incoming
        accounts: list[Account] = list(envelope.accounts.values())
        hops = sum(1 for name, _ in headers.fields(bytes(message.head)) if name == b"received")
        if hops > MAX_HOPS:
            return "554 5.4.6 Too many hops: a mail loop"
        junk: set[int] = set()
        # Authenticated mail was screened by the Submitter before it got here.
        if self.pipeline is not None and not session.authenticated:
            try:
                refusal = await self._filter(server, session, envelope, accounts, junk)
            except OSError as e:  # the spool file went with the data disk
                log.warning("filtering failed id=%s error=%r", envelope.queue_id, str(e))
                return await self.failure_reply(e, UNREADABLE)
            if refusal is not None:
                return refusal
        if envelope.forwards:
            # Aliases pointing to other domains: queued with the original sender,
            # so a failure there goes back to who wrote (no SRS).
            try:
                queued = await self.queue.enqueue(
                    message, reverse_path(envelope), envelope.forwards
                )
            except Exception as e:
                log.warning("forwarding failed id=%s error=%r", envelope.queue_id, str(e))
                return await self.failure_reply(
                    e, "451 4.3.0 Could not forward the message, try again later"
                )
            log.info("forwarded id=%s queue_id=%s targets=%d",
                     envelope.queue_id, queued, len(envelope.forwards))  # fmt: skip
            if not accounts:
                message.discard()
                return f"250 2.0.0 Ok: queued as {queued}"
        try:
            placements = await self.store.deliver(message, accounts, junk)
        except Exception as e:
            reply = await self.failure_reply(e, "451 4.3.0 Local delivery failed, try again later")
            if reply.startswith("452"):
                log.warning("delivery refused id=%s error=%r", envelope.queue_id, str(e))
            else:
                log.exception("delivery failed id=%s", envelope.queue_id)
            return reply
        self.delivered += 1
        log.info(
            "delivered id=%s from=<%s> rcpts=%d mailboxes=%d size=%d",
            envelope.queue_id,
            reverse_path(envelope),
            len(envelope.rcpt_tos),
            len(placements),
            message.size,
        )
        if self.vacation is None:
            from .vacation import Responder

            self.vacation = Responder(self.settings, self.store, self.queue)
        # Auto-replies (RFC 3834): decided now, sent later; never raises.
        self.vacation.after_delivery(reverse_path(envelope), bytes(message.head), accounts,
                                     placements)  # fmt: skip
        return f"250 2.0.0 Ok: delivered as {envelope.queue_id}"

    async def _filter(
        self, server: Any, session: Any, envelope: Any, accounts: list[Account], junk: set[int]
    ) -> str | None:
        """The content filter (filter/pipeline.py), before the answer to DATA so
        that spam and viruses are refused, not bounced later. Mail from the LAN
        and loopback (`filter.skip_networks`) is trusted: only screened (malware,
        MIME limits, clamd, GTUBE), never scored or marked.
        Returns the refusal, or None and fills `junk` with the accounts whose
        copy goes to Junk."""
        from ..filter.authres import strip_forged

        message: Incoming = envelope.incoming
        filtered = self._envelope(session, envelope)
        if self.pipeline.skips_authentication(filtered):
            return await self.screen(session, envelope)
        content = await asyncio.to_thread(message.content)  # may read a spool file
        verdict = await self.pipeline.check(filtered, content, [a.id for a in accounts])
        del content
        log.info(
            "filtered id=%s action=%s score=%.1f junk=%d symbols=%s",
            envelope.queue_id, verdict.action, verdict.score, len(verdict.junk_accounts),
            ",".join(sorted(verdict.symbols)),
        )  # fmt: skip
        if verdict.action != "accept":
            return verdict.reply or "451 4.7.1 Try again later"
        # One rewrite of the header block: Authentication-Results claiming to be
        # ours came from outside and go (RFC 8601 5); ours and X-Spam-* go in
        # after our trace fields. A block too large to see whole is not stripped.
        head = bytes(message.head)
        end = headers.header_end(head)
        block = head[:end]
        if block.endswith((b"\r\n\r\n", b"\n\n")):
            block = strip_forged(block, verdict.strip_authserv_id)
        at = envelope.trace_length
        await asyncio.to_thread(message.splice, 0, end, block[:at] + verdict.headers + block[at:])
        junk.update(verdict.junk_accounts)
        sender_domain = filtered.mail_from.rpartition("@")[2].lower()
        author = verdict.authenticated_domain
        if (
            author
            and self.greylist is not None
            and sender_domain
            and (
                sender_domain == author
                or sender_domain.endswith("." + author)
                or author.endswith("." + sender_domain)
            )
        ):
            # DMARC passed for a sender in the author's domain: its next mail from
            # this network is not greylisted (RFC 6647 4.2: well-behaved senders).
            await asyncio.to_thread(self.greylist.record_authenticated, sender_domain, filtered.ip)
        return None

    async def screen(self, session: Any, envelope: Any) -> str | None:
        """The refusal for trusted or authenticated mail that carries malware
        (or breaks the MIME limits, or is GTUBE), else None; no headers added."""
        if self.pipeline is None:
            return None
        message: Incoming = envelope.incoming
        content = await asyncio.to_thread(message.content)  # may read a spool file
        verdict = await self.pipeline.screen(self._envelope(session, envelope), content)
        del content
        if verdict.action == "accept":
            return None
        log.info("screened id=%s action=%s symbols=%s", envelope.queue_id, verdict.action,
                 ",".join(sorted(verdict.symbols)))  # fmt: skip
        return verdict.reply or "451 4.7.1 Try again later"

    def _trace_headers(self, server: Any, session: Any, envelope: Any) -> bytes:
        """Return-Path and Received (RFC 5321 4.4), in that order, at the top."""
        peer = session.peer[0] if session.peer else "unknown"
        helo = _UNSAFE_HELO.sub("?", session.host_name or "")[:255]
        protocol = "UTF8SMTP" if envelope.smtp_utf8 else "ESMTP"
        if not session.extended_smtp:
            protocol = "SMTP"
        transport = getattr(server, "transport", None)
        if session.ssl or (transport is not None and transport.get_extra_info("ssl_object")):
            protocol += "S"  # STARTTLS, or implicit TLS (RFC 8314)
        if session.authenticated:
            protocol += "A"
        received = (
            f"Received: from {helo} ([{peer}])\r\n"
            f"\tby {self.settings.hostname} (pimail) with {protocol} id {envelope.queue_id}"
        )
        if len(envelope.rcpt_tos) == 1:
            received += f"\r\n\tfor <{envelope.rcpt_tos[0]}>"
        received += f"; {email.utils.formatdate(localtime=True)}\r\n"
        trace = f"Return-Path: <{reverse_path(envelope)}>\r\n{received}"
        return trace.encode("utf-8", "surrogateescape")


def reverse_path(envelope: Any) -> str:
    """The envelope sender, '' for the null reverse-path."""
    return "" if envelope.mail_from == "<>" else envelope.mail_from
