"""The DNS check: is what pimail asks to publish really published?

For one domain, every record of `dns.records.records()` (what `pimail dns`
prints) is looked up live through pimail's own Resolver (the `dns` settings:
the servers the queue asks), all lookups at once under one deadline, and
compared with what was found. Each record gets one status:

- ok: published as suggested (or an equivalent: A records with the host's
  addresses where a CNAME is suggested);
- missing: no such record, or no such name;
- different: something else is published there; the page shows what, and why
  it matters;
- error: the lookup failed for now (timeout, SERVFAIL): look again later;
- optional: not needed (an AAAA record for the host when it has no IPv6).

The host's address cannot be suggested (pimail sits behind NAT and does not
know its public address): the check shows what the name resolves to beside
this box's own addresses, and says so when the published one is not public.

The `compare_*` functions are pure (what was found in, a verdict out); only
`check_domain` and `check_host` do I/O.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from ..dns import records as dns_records
from ..dns.records import Record
from ..dns.resolver import DnsError, MxRecord, Resolver
from ..queue.dkim import DkimKey

log = logging.getLogger(__name__)

OK, MISSING, DIFFERENT, ERROR, OPTIONAL = "ok", "missing", "different", "error", "optional"
STATUSES = (OK, MISSING, DIFFERENT, ERROR, OPTIONAL)
CHECK_TIMEOUT = 8.0  # seconds for the whole check, all lookups together


@dataclass(frozen=True)
class Check:
    """One suggested record and what the DNS says at its name."""

    record: Record
    status: str
    found: tuple[str, ...] = ()
    note: str = ""


def resolver_for(settings: Settings, timeout: float = CHECK_TIMEOUT) -> Resolver:
    """A fresh resolver (an empty cache: a record just published shows at once)."""
    return Resolver(settings.dns.nameservers, min(settings.dns.timeout, timeout))


# -- checking a domain -----------------------------------------------------------------


async def check_domain(
    settings: Settings,
    domain: str,
    keys: Sequence[DkimKey],
    resolver: Resolver | None = None,
    timeout: float = CHECK_TIMEOUT,
) -> list[Check]:
    """Every record pimail suggests for `domain`, looked up and compared, in
    the order of `records.records()`, plus the host's AAAA (optional)."""
    resolver = resolver or resolver_for(settings, timeout)
    host = settings.hostname.rstrip(".").lower()
    wanted = dns_records.records(settings, domain, keys)
    address_record = next((r for r in wanted if r.type == "A" and r.value.startswith("<")), None)
    if address_record is not None:
        index = wanted.index(address_record) + 1
        wanted.insert(
            index,
            Record(host, "AAAA", "<public IPv6 of this box, if it has one>",
                   address_record.purpose),
        )  # fmt: skip
    own = outgoing_addresses()
    tasks = [asyncio.ensure_future(_check_one(resolver, record, host, own)) for record in wanted]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    out = []
    for record, task in zip(wanted, tasks, strict=True):
        if task not in done or task.cancelled():
            out.append(Check(record, ERROR, note=f"no answer within {timeout:g} seconds"))
        elif task.exception() is not None:
            log.error("dns check failed name=%s type=%s", record.name, record.type,
                      exc_info=task.exception())  # fmt: skip
            out.append(Check(record, ERROR, note="the check itself failed (see the log)"))
        else:
            out.append(task.result())
    return out


def summary(checks: Sequence[Check]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for check in checks:
        counts[check.status] += 1
    return counts


async def _check_one(resolver: Resolver, record: Record, host: str, own: list[str]) -> Check:
    lookups: dict[str, Callable[[], Awaitable[Check]]] = {
        "MX": lambda: _check_mx(resolver, record),
        "TXT": lambda: _check_txt(resolver, record),
        "CNAME": lambda: _check_cname(resolver, record, host),
        "SRV": lambda: _check_srv(resolver, record),
        "A": lambda: _check_address(resolver, record, own),
        "AAAA": lambda: _check_address(resolver, record, own),
    }
    lookup = lookups.get(record.type)
    if lookup is None:
        return Check(record, ERROR, note=f"pimail does not check {record.type} records")
    try:
        return await lookup()
    except DnsError as e:
        if e.temporary:
            return Check(record, ERROR, note=str(e))
        return Check(record, MISSING, note=f"{record.name} does not exist")


async def _check_mx(resolver: Resolver, record: Record) -> Check:
    return compare_mx(record, await resolver.mx(record.name))


async def _check_txt(resolver: Resolver, record: Record) -> Check:
    return compare_txt(record, await resolver.txt(record.name))


async def _check_srv(resolver: Resolver, record: Record) -> Check:
    return compare_srv(record, await resolver.records(record.name, "SRV"))


async def _check_cname(resolver: Resolver, record: Record, host: str) -> Check:
    targets = await resolver.records(record.name, "CNAME")
    if targets:
        return compare_cname(record, targets)
    # No CNAME: A/AAAA records with the host's addresses do the same job.
    found, wanted = await asyncio.gather(
        _addresses(resolver, record.name), _addresses(resolver, host)
    )
    return compare_addresses_for_cname(record, found, wanted)


async def _addresses(resolver: Resolver, name: str) -> list[str]:
    v6, v4 = await asyncio.gather(resolver.records(name, "AAAA"), resolver.records(name, "A"))
    return v4 + v6


async def _check_address(resolver: Resolver, record: Record, own: list[str]) -> Check:
    return compare_address(record, await resolver.records(record.name, record.type), own)


# -- comparing (pure) --------------------------------------------------------------------


def compare_mx(record: Record, found: Sequence[MxRecord]) -> Check:
    shown = tuple(f"{m.preference} {m.host or '.'}" for m in found)
    host = record.value.split()[-1].rstrip(".").lower()
    if not found:
        return Check(record, MISSING, shown, "mail for the domain has nowhere to go")
    if any(m.host == "" for m in found):
        return Check(record, DIFFERENT, shown, "a null MX (RFC 7505): the domain takes no mail")
    best = min(m.preference for m in found)
    ours = [m for m in found if m.host == host]
    if not ours:
        return Check(record, DIFFERENT, shown, f"mail goes to other hosts, not to {host}")
    if ours[0].preference > best:
        others = ", ".join(m.host for m in found if m.preference < ours[0].preference)
        return Check(record, DIFFERENT, shown, f"{others} comes first: mail goes there")
    return Check(record, OK, shown)


def tags(value: str) -> dict[str, str]:
    """A tag=value list (DKIM RFC 6376 3.2, DMARC, MTA-STS, TLSRPT): keys in lower
    case, values trimmed; whitespace removed from p= (a key split over strings)."""
    out = {}
    for part in value.split(";"):
        key, sep, tag_value = part.partition("=")
        if not sep:
            continue
        key = key.strip().lower()
        tag_value = tag_value.strip()
        if key == "p":
            tag_value = "".join(tag_value.split())
        out[key] = tag_value
    return out


def compare_txt(record: Record, found: Sequence[str]) -> Check:
    expected = record.value
    shown = tuple(found)
    version = expected.split(";")[0].split()[0].lower()  # "v=spf1", "v=dmarc1", ...
    if version == "v=dkim1":
        candidates = [t for t in found if "p" in tags(t)]
    else:
        candidates = [t for t in found if t.lower().split(";")[0].split()[:1] == [version]]
    if not candidates:
        note = "other TXT records are there, not this one" if found else ""
        return Check(record, MISSING, shown, note)
    if len(candidates) > 1 and version in ("v=spf1", "v=dmarc1", "v=stsv1", "v=tlsrptv1"):
        return Check(record, DIFFERENT, shown, "more than one such record: receivers "
                     "then ignore them all (RFC 7208 4.5, RFC 7489 6.6.3)")  # fmt: skip
    if version == "v=spf1":
        same = candidates[0].lower().split() == expected.lower().split()
        note = "" if same else "another SPF policy: check it allows this host to send"
    elif version == "v=dkim1":
        want = tags(expected)
        same = any(tags(t).get("p") == want["p"] and
                   tags(t).get("k", "rsa").lower() == want["k"] for t in candidates)  # fmt: skip
        note = "" if same else "another key: mail signed now fails DKIM"
    else:
        want = {k: v.lower() for k, v in tags(expected).items()}
        same = {k: v.lower() for k, v in tags(candidates[0]).items()} == want
        note = "" if same else _tag_note(version)
    return Check(record, OK if same else DIFFERENT, shown, note)


def _tag_note(version: str) -> str:
    if version == "v=stsv1":
        return "another policy id: senders keep using the policy they cached"
    if version == "v=dmarc1":
        return "another DMARC policy: fine if you chose it on purpose"
    return "other values than suggested"


def _norm_name(name: str) -> str:
    return name.rstrip(".").lower()


def compare_cname(record: Record, targets: Sequence[str]) -> Check:
    shown = tuple(targets)
    if any(_norm_name(t) == _norm_name(record.value) for t in targets):
        return Check(record, OK, shown)
    return Check(record, DIFFERENT, shown, f"points elsewhere, not to {record.value}")


def compare_addresses_for_cname(
    record: Record, found: Sequence[str], host_addresses: Sequence[str]
) -> Check:
    shown = tuple(found)
    if not found:
        return Check(record, MISSING, shown)
    if host_addresses and set(found) == set(host_addresses):
        return Check(record, OK, shown, "addresses rather than a CNAME: the host's own, fine")
    return Check(record, DIFFERENT, shown, "addresses other than the host's")


def compare_srv(record: Record, found: Sequence[str]) -> Check:
    def norm(value: str) -> list[str]:
        parts = value.split()
        return [*parts[:3], _norm_name(parts[3])] if len(parts) == 4 else parts

    shown = tuple(found)
    if not found:
        return Check(record, MISSING, shown)
    if any(norm(f) == norm(record.value) for f in found):
        return Check(record, OK, shown)
    if any(norm(f)[3:] == [""] for f in found):  # target "."
        return Check(record, DIFFERENT, shown, "says the service is not offered (RFC 6186)")
    return Check(record, DIFFERENT, shown, "another port, priority or host")


def compare_address(record: Record, found: Sequence[str], own: Sequence[str]) -> Check:
    shown = tuple(found)
    mine = f"this box: {', '.join(own)}" if own else "this box's addresses are unknown"
    if not found:
        if record.type == "AAAA":
            return Check(record, OPTIONAL, shown, f"only with a public IPv6 ({mine})")
        return Check(record, MISSING, shown, f"the host name has no address ({mine})")
    public = [a for a in found if _is_global(a)]
    if not public:
        return Check(record, DIFFERENT, shown,
                     f"not a public address: the internet cannot reach it ({mine})")  # fmt: skip
    if any(a in own for a in public):
        return Check(record, OK, shown, "this box's own address")
    return Check(record, OK, shown, f"should be your router's public address, forwarding "
                 f"to this box ({mine})")  # fmt: skip


def _is_global(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_global
    except ValueError:
        return False


# -- the host name alone (the wizard's certificate step) -----------------------------------


@dataclass(frozen=True)
class HostCheck:
    host: str
    addresses: tuple[str, ...]
    public: tuple[str, ...]
    own: tuple[str, ...]
    error: str = ""
    # Port 80 at the public address answered with our own challenge file: True;
    # no answer, or another one: False; not tried (no public address): None.
    http_ok: bool | None = None
    http_detail: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.public) and not self.error


async def check_host(resolver: Resolver, host: str, timeout: float = CHECK_TIMEOUT) -> HostCheck:
    """What `host` resolves to, and whether that can be this box from the internet
    (what Let's Encrypt's HTTP-01 validation needs)."""
    own = tuple(outgoing_addresses())
    try:
        found = await asyncio.wait_for(_addresses(resolver, host), timeout)
    except DnsError as e:
        return HostCheck(host, (), (), own, str(e))
    except TimeoutError:
        return HostCheck(host, (), (), own, f"no answer within {timeout:g} seconds")
    if not found:
        return HostCheck(host, (), (), own, f"{host} has no address in the DNS")
    public = tuple(a for a in found if _is_global(a))
    error = "" if public else "only private addresses: the internet cannot reach them"
    return HostCheck(host, tuple(found), public, own, error)


async def probe_http(
    host: str, addresses: Sequence[str], challenges: Path, port: int = 80, timeout: float = 5.0
) -> tuple[bool, str]:
    """Whether http://<host>/ at `addresses` reaches this box, as Let's Encrypt's
    HTTP-01 validation will (RFC 8555 8.3): a random file is put where the
    challenges are served, fetched through each address, and compared.

    From inside the network this goes out to the router and back in ("NAT
    loopback"), which some routers do not do: a failure is then not proof,
    and the page says so."""
    token = secrets.token_urlsafe(24)
    expected = f"pimail-probe-{token}".encode()
    challenges.mkdir(parents=True, exist_ok=True)
    path = challenges / token
    path.write_bytes(expected)
    try:
        details = []
        for address in addresses:
            try:
                body = await asyncio.wait_for(_http_get(address, port, host, token), timeout)
            except (OSError, TimeoutError, ValueError) as e:
                details.append(f"{address}: {e.__class__.__name__} {e}".strip())
                continue
            if body == expected:
                return True, f"{address} port {port} answered with this box's file"
            details.append(f"{address}: another server answered")
        return False, "; ".join(details) or "no address to try"
    finally:
        path.unlink(missing_ok=True)


async def _http_get(address: str, port: int, host: str, token: str) -> bytes:
    """The body of one plain HTTP/1.1 GET of a challenge path (at most 4 KiB)."""
    reader, writer = await asyncio.open_connection(address, port)
    try:
        writer.write(
            f"GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: {host}\r\n"
            "Connection: close\r\n\r\n".encode("ascii")
        )
        await writer.drain()
        reply = await reader.read(8192)
        while len(reply) < 8192 and (chunk := await reader.read(8192 - len(reply))):
            reply += chunk
    finally:
        writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or head[9:12] != b"200":
        raise ValueError(head.split(b"\r\n", 1)[0].decode("ascii", "replace")[:80])
    return body[:4096]


def outgoing_addresses() -> list[str]:
    """The addresses this box sends from (to the internet, IPv4 and IPv6): the
    kernel's choice of source for a route out. A UDP connect sends nothing."""
    found = []
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                found.append(s.getsockname()[0])
        except OSError:
            continue
    return found
