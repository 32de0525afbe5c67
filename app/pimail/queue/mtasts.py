"""MTA-STS (RFC 8461): which MX hosts of a domain we may deliver to, and whether
TLS with a verified certificate is required.

A domain announces a policy with a TXT record at `_mta-sts.<domain>`
(`v=STSv1; id=...`) and serves it at
`https://mta-sts.<domain>/.well-known/mta-sts.txt`. `MtaSts.policy(domain)`
looks the record up, fetches the policy when its id is new, and keeps it for
its `max_age`. The cache is the protection (RFC 8461 10.2): an attacker who
later strips the TXT record or blocks the HTTPS fetch cannot remove a policy
we already hold, so a missing record, a temporary DNS failure or a failed
fetch all fall back to the cached policy while it is unexpired.

How the queue uses it, per recipient domain, before connecting:

    policy = await mtasts.policy(domain)
    hosts = [mx for mx in mx_hosts if mx_allowed(policy, mx)]   # RFC 8461 4.1, 5.1
    ... for each host: if requires_tls(policy): STARTTLS is required and the
        certificate must verify against the trust store for the MX host name
        (RFC 8461 4.2; `cafile` adds test CAs), else the attempt fails.

In `enforce` mode MX hosts that match no `mx` pattern are skipped, and a host
without TLS or with a certificate not valid for its name is not used; when no
host is left the delivery is deferred as a temporary failure, 4.7.5 (RFC 8461
5.1, RFC 3463). In `testing` mode the same failures are only logged and
delivery proceeds as without a policy; `none` means no policy.

What it touches: DNS through `dns.resolver.Resolver`, one outbound HTTPS
connection per fetch, and, when given a connection, one table in pimail.db
that it creates itself if missing:

    mta_sts (domain TEXT PRIMARY KEY,   -- lower case, no trailing dot
             id TEXT,                   -- the TXT record's id the policy came with
             mode TEXT,                 -- 'enforce' | 'testing' | 'none'
             mx TEXT,                   -- JSON list of patterns
             max_age INTEGER,           -- seconds
             fetched REAL)              -- Unix time of the fetch
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import ssl
import time
from dataclasses import dataclass, field

from pimail.dns.resolver import DnsError, Resolver

log = logging.getLogger(__name__)

WELL_KNOWN = "/.well-known/mta-sts.txt"
MAX_POLICY_SIZE = 64 * 1024  # RFC 8461 3.3: senders may limit the policy size; 64 KiB
MAX_HEAD_SIZE = 8 * 1024  # the HTTP status line and headers
MAX_AGE_LIMIT = 31557600  # RFC 8461 3.2: at most one year
MODES = ("enforce", "testing", "none")

_TXT_PREFIX = re.compile(r"v=STSv1[ \t]*;")
_TXT_DELIM = re.compile(r"[ \t]*;[ \t]*")
_TXT_FIELD = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,31})=([\x21-\x3a\x3c\x3e-\x7e]+)")
_TXT_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_POLICY_FIELD = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,31}):[ \t]*(\S(?:.*\S)?)[ \t]*")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_MX_PATTERN = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*\.?", re.IGNORECASE)
_HTTP_STATUS = re.compile(r"HTTP/1\.[01] ([0-9]{3})(?: [^\r\n]*)?")
_HTTP_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class PolicyError(Exception):
    """A policy, or the HTTPS response carrying it, is not acceptable; the
    message says what was wrong. The domain is then treated as having no
    (new) policy."""


@dataclass
class Policy:
    id: str  # from the TXT record ("" until fetched)
    mode: str  # 'enforce' | 'testing' | 'none'
    mx: list[str] = field(default_factory=list)  # 'mail.example.com', '*.example.net'
    max_age: int = 0  # seconds
    fetched: float = 0.0  # Unix time

    def matches(self, host: str) -> bool:
        """Whether the MX host name `host` is allowed by one of the mx patterns."""
        host = host.rstrip(".").lower()
        for pattern in self.mx:
            pattern = pattern.rstrip(".").lower()
            if pattern.startswith("*."):
                # RFC 8461 4.1: "*." stands for exactly one leftmost label.
                label, dot, parent = host.partition(".")
                if label and dot and parent == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False

    def expired(self, now: float) -> bool:
        # RFC 8461 5: a policy is valid for max_age seconds after it was fetched.
        return now >= self.fetched + self.max_age


def parse_txt(records: list[str]) -> str | None:
    """The id of the one MTA-STS TXT record among `records`, or None when there
    is none, more than one, or it is malformed (then: no policy announced)."""
    # RFC 8461 3.1: records not starting with "v=STSv1;" are discarded; if not
    # exactly one remains, the domain has no available policy.
    sts = [record for record in records if _TXT_PREFIX.match(record)]
    if len(sts) != 1:
        return None
    fields = _TXT_DELIM.split(sts[0].rstrip(" \t"))[1:]
    if fields and fields[-1] == "":  # a trailing ";" is allowed
        fields.pop()
    policy_id = None
    for item in fields:
        m = _TXT_FIELD.fullmatch(item)
        if m is None:
            return None
        if m[1] == "id":
            # RFC 8461 3.1: id is 1 to 32 letters and digits.
            if not _TXT_ID.fullmatch(m[2]):
                return None
            policy_id = policy_id or m[2]
        # RFC 8461 3.1: other (extension) fields are ignored.
    return policy_id


def parse_policy(text: str) -> Policy:
    """The policy file's content (RFC 8461 3.2) as a Policy without id and
    fetch time; PolicyError says what is wrong."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_SIZE:
        raise PolicyError("policy larger than 64 KiB")
    values: dict[str, str] = {}
    mx: list[str] = []
    # RFC 8461 3.2: "key: value" lines ended by CRLF or LF; the last may be unended.
    for line in text.removesuffix("\n").split("\n"):
        line = line.removesuffix("\r")
        m = _POLICY_FIELD.fullmatch(line)
        if m is None:
            raise PolicyError(f"malformed policy line {line[:80]!r}")
        key, value = m[1], m[2]
        if key == "mx":
            if not _MX_PATTERN.fullmatch(value):
                raise PolicyError(f"bad mx pattern {value[:80]!r}")
            mx.append(value.rstrip(".").lower())
        else:
            # RFC 8461 3.2: of a repeated field only the first counts; unknown
            # fields are ignored.
            values.setdefault(key, value)
    if values.get("version") != "STSv1":
        raise PolicyError(f"version is {values.get('version')!r}, not 'STSv1'")
    mode = values.get("mode")
    if mode not in MODES:
        raise PolicyError(f"mode is {mode!r}, not one of {', '.join(MODES)}")
    # RFC 8461 3.2: max_age is 1 to 10 digits, at most 31557600.
    max_age = values.get("max_age", "")
    if not (max_age.isascii() and max_age.isdigit() and len(max_age) <= 10):
        raise PolicyError(f"max_age {max_age!r} is not a number of seconds")
    if int(max_age) > MAX_AGE_LIMIT:
        raise PolicyError(f"max_age {max_age} is over {MAX_AGE_LIMIT}")
    if not mx and mode != "none":
        raise PolicyError(f"mode {mode} without mx")
    return Policy(id="", mode=mode, mx=mx, max_age=int(max_age), fetched=0.0)


def mx_allowed(policy: Policy | None, host: str) -> bool:
    """Whether delivery may go to MX `host`: always without a policy or in
    testing/none mode (the queue logs a mismatch in testing), else only when
    it matches (RFC 8461 5.1)."""
    return policy is None or policy.mode != "enforce" or policy.matches(host)


def requires_tls(policy: Policy | None) -> bool:
    """Whether the MX connection must use TLS with a certificate valid for the
    MX host name (RFC 8461 4.2)."""
    return policy is not None and policy.mode == "enforce"


def parse_response_head(head: bytes) -> tuple[int, dict[str, str]]:
    """The status code and headers (names in lower case) of an HTTP/1.x
    response head ending in CRLF CRLF."""
    lines = head.decode("latin-1").removesuffix("\r\n\r\n").split("\r\n")
    m = _HTTP_STATUS.fullmatch(lines[0])
    if m is None:
        raise PolicyError(f"malformed HTTP status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _HTTP_TOKEN.fullmatch(name):  # also refuses obs-fold
            raise PolicyError(f"malformed HTTP header line {line[:80]!r}")
        name, value = name.lower(), value.strip(" \t")
        if headers.get(name, value) != value and name in ("content-length", "content-type"):
            raise PolicyError(f"conflicting {name} headers")
        headers.setdefault(name, value)
    return int(m[1]), headers


def check_response(status: int, headers: dict[str, str]) -> int | None:
    """Refuse what is not a plain 200 text/plain response; the Content-Length
    if there is one."""
    # RFC 8461 3.3: redirects MUST NOT be followed, so a 3xx is a failure too.
    if status != 200:
        raise PolicyError(f"HTTP status {status}")
    # An HTTP/1.0 request gets no chunked answer (RFC 9112 6.1); refuse one anyway.
    if "transfer-encoding" in headers:
        raise PolicyError(f"transfer-encoding {headers['transfer-encoding']!r} refused")
    # RFC 8461 3.2: the media type is text/plain (parameters such as charset allowed).
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "text/plain":
        raise PolicyError(f"content type {media_type!r}, not text/plain")
    length = headers.get("content-length")
    if length is None:
        return None
    if not (length.isascii() and length.isdigit()):
        raise PolicyError(f"bad content-length {length[:20]!r}")
    if int(length) > MAX_POLICY_SIZE:
        raise PolicyError("policy larger than 64 KiB")
    return int(length)


class MtaSts:
    """Policies of recipient domains, fetched when announced and cached (in
    memory and, with `con`, in SQLite) for their max_age."""

    def __init__(
        self,
        resolver: Resolver,
        con: sqlite3.Connection | None,
        *,
        port: int = 443,
        cafile: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.resolver = resolver
        self.con = con
        self.port = port
        self.timeout = timeout
        # RFC 8461 3.3: the policy host's certificate must be valid for
        # mta-sts.<domain>, chained to a trusted root; cafile adds to the system store.
        self._context = ssl.create_default_context()
        if cafile is not None:
            self._context.load_verify_locations(cafile)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._memory: dict[str, Policy] = {}
        self._inflight: dict[str, asyncio.Task[Policy | None]] = {}
        if con is not None:
            con.execute(
                "CREATE TABLE IF NOT EXISTS mta_sts (domain TEXT PRIMARY KEY, id TEXT,"
                " mode TEXT, mx TEXT, max_age INTEGER, fetched REAL)"
            )

    async def policy(self, domain: str) -> Policy | None:
        """The policy to apply to delivery to `domain` now, or None (RFC 8461 5)."""
        try:
            domain = _normalize(domain)
        except UnicodeError:
            log.info("mta-sts skipped: bad domain name domain=%r", domain)
            return None
        cached = self._cached(domain)
        try:
            records = await self.resolver.txt(f"_mta-sts.{domain}")
        except DnsError as e:
            # A DNS failure must not make us forget a policy we hold.
            log.info("mta-sts txt lookup failed domain=%s error=%r cached=%s",
                     domain, str(e), cached is not None)  # fmt: skip
            return cached
        policy_id = parse_txt(records)
        if policy_id is None:
            # RFC 8461 5.1: without a (valid) record a cached policy still applies.
            return cached
        if cached is not None and cached.id == policy_id:
            return cached
        fetched = await self._fetch_once(domain, policy_id)
        # RFC 8461 5.1: if the fetch fails, a cached unexpired policy is used.
        return fetched if fetched is not None else self._cached(domain)

    # -- fetching ----------------------------------------------------------------

    async def _fetch_once(self, domain: str, policy_id: str) -> Policy | None:
        """One fetch per domain at a time; concurrent callers share its result."""
        task = self._inflight.get(domain)
        if task is None:
            task = asyncio.ensure_future(self._fetch(domain, policy_id))
            self._inflight[domain] = task
            task.add_done_callback(lambda _: self._inflight.pop(domain, None))
        # shield: a cancelled caller must not cancel the others' fetch.
        return await asyncio.shield(task)

    async def _fetch(self, domain: str, policy_id: str) -> Policy | None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                text = await self._get(f"mta-sts.{domain}")
            policy = parse_policy(text)
        except (PolicyError, DnsError, OSError, EOFError, asyncio.LimitOverrunError) as e:
            # OSError covers TLS and certificate errors and TimeoutError;
            # EOFError a response cut short.
            log.warning("mta-sts policy fetch failed domain=%s id=%s error=%r",
                        domain, policy_id, str(e) or type(e).__name__)  # fmt: skip
            return None
        policy.id, policy.fetched = policy_id, time.time()
        log.info("mta-sts policy fetched domain=%s id=%s mode=%s max_age=%d ms=%d",
                 domain, policy_id, policy.mode, policy.max_age,
                 (time.monotonic() - started) * 1000)  # fmt: skip
        self._store(domain, policy)
        return policy

    async def _get(self, host: str) -> str:
        """GET https://<host>/.well-known/mta-sts.txt, the body as text."""
        addresses = await self.resolver.addresses(host)
        if not addresses:
            raise PolicyError(f"{host} has no address")
        reader, writer = await self._connect(host, addresses)
        try:
            # HTTP/1.0: no chunked encoding, no keep-alive.
            request = f"GET {WELL_KNOWN} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            writer.write(request.encode("ascii"))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")  # at most MAX_HEAD_SIZE
            status, headers = parse_response_head(head)
            length = check_response(status, headers)
            if length is not None:
                body = await reader.readexactly(length)
            else:
                body = await _read_to_eof(reader, MAX_POLICY_SIZE)
        finally:
            writer.transport.abort()  # the response is read (or refused): no need for more
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PolicyError("policy is not UTF-8") from e

    async def _connect(
        self, host: str, addresses: list[str]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        error: OSError | None = None
        for address in addresses:
            try:
                return await asyncio.open_connection(
                    address, self.port, ssl=self._context, server_hostname=host,
                    limit=MAX_HEAD_SIZE, ssl_handshake_timeout=self.timeout,
                )  # fmt: skip
            except OSError as e:
                error = e
        assert error is not None
        raise error

    # -- the cache ---------------------------------------------------------------

    def _cached(self, domain: str) -> Policy | None:
        policy = self._memory.get(domain)
        if policy is None and self.con is not None:
            row = self.con.execute(
                "SELECT id, mode, mx, max_age, fetched FROM mta_sts WHERE domain = ?", (domain,)
            ).fetchone()
            if row is not None:
                policy = Policy(row[0], row[1], json.loads(row[2]), row[3], row[4])
                self._memory[domain] = policy
        if policy is not None and policy.expired(time.time()):
            # RFC 8461 5: a policy older than its max_age is discarded.
            self._forget(domain)
            return None
        return policy

    def _store(self, domain: str, policy: Policy) -> None:
        self._memory[domain] = policy
        if self.con is None:
            return
        try:
            self.con.execute(
                "INSERT OR REPLACE INTO mta_sts (domain, id, mode, mx, max_age, fetched)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (domain, policy.id, policy.mode, json.dumps(policy.mx), policy.max_age,
                 policy.fetched),
            )  # fmt: skip
        except sqlite3.Error as e:  # the policy still holds in memory
            log.warning("mta-sts cache write failed domain=%s error=%r", domain, str(e))

    def _forget(self, domain: str) -> None:
        self._memory.pop(domain, None)
        if self.con is not None:
            try:
                self.con.execute("DELETE FROM mta_sts WHERE domain = ?", (domain,))
            except sqlite3.Error as e:
                log.warning("mta-sts cache delete failed domain=%s error=%r", domain, str(e))


async def _read_to_eof(reader: asyncio.StreamReader, limit: int) -> bytes:
    body = bytearray()
    while chunk := await reader.read(65536):
        body += chunk
        if len(body) > limit:
            raise PolicyError("policy larger than 64 KiB")
    return bytes(body)


def _normalize(domain: str) -> str:
    domain = domain.rstrip(".").lower()
    if not domain.isascii():
        domain = domain.encode("idna").decode("ascii")  # DNS and TLS use the A-label
    return domain
