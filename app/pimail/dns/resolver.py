"""The resolver every part of pimail asks: MX, addresses, TXT.

A thin wrapper around dnspython's asyncio resolver that turns its exceptions
into what a mail server needs to know: does the name not exist (a permanent
answer: bounce), is there no such record (fall back, RFC 5321 5.1), or did
DNS fail for now (a temporary answer: retry later).

Which servers it asks is a setting (`dns.nameservers`, "host:port"); empty
means the system's /etc/resolv.conf. Tests point it at a DNS server on
loopback, never at the internet.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

log = logging.getLogger(__name__)


class DnsError(Exception):
    """A lookup failed. `temporary` says whether asking again later may help."""

    def __init__(self, message: str, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary


@dataclass(frozen=True)
class MxRecord:
    preference: int
    host: str  # no trailing dot, lower case; "" for the null MX "."


class Resolver:
    def __init__(self, nameservers: list[str] | None = None, timeout: float = 10.0) -> None:
        if nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = []
            ports = set()
            for spec in nameservers:
                host, port = _split_server(spec)
                self._resolver.nameservers.append(host)
                ports.add(port)
            if len(ports) > 1:
                raise ValueError("all DNS servers must listen on the same port")
            self._resolver.port = ports.pop()
        else:
            self._resolver = dns.asyncresolver.Resolver()
        self._resolver.lifetime = timeout
        self._resolver.timeout = min(timeout, 3.0)
        # Answers are kept for their TTL: a burst to one domain asks once.
        self._resolver.cache = dns.resolver.LRUCache(4096)

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        """The answer, or None when the name exists without such records."""
        try:
            return await self._resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN as e:
            raise DnsError(f"{name}: no such domain", temporary=False) from e
        except dns.resolver.NoAnswer:
            return None
        except dns.name.NameTooLong as e:
            raise DnsError(f"{name}: name too long", temporary=False) from e
        except dns.resolver.NoNameservers as e:  # SERVFAIL, REFUSED from every server
            raise DnsError(f"{name} {rdtype}: DNS servers failed", temporary=True) from e
        except dns.exception.Timeout as e:
            raise DnsError(f"{name} {rdtype}: DNS timeout", temporary=True) from e
        except dns.exception.DNSException as e:
            raise DnsError(f"{name} {rdtype}: {e}", temporary=True) from e

    async def mx(self, domain: str) -> list[MxRecord]:
        """MX records, lowest preference first; [] when the domain has none
        (then RFC 5321 5.1 says: the domain itself is the host). The null MX
        (RFC 7505) comes back as one record with host ""."""
        answer = await self._query(domain, "MX")
        if answer is None:
            return []
        records = [
            MxRecord(
                r.preference,
                "" if r.exchange == dns.name.root else r.exchange.to_text(True).lower(),
            )
            for r in answer
        ]
        # RFC 5321 5.1: equal preferences in random order spreads the load;
        # sorted() keeps dnspython's (already shuffled) order among equals.
        return sorted(records, key=lambda r: r.preference)

    async def addresses(self, host: str) -> list[str]:
        """IPv6 and IPv4 addresses of `host` (IPv6 first, RFC 6724's usual choice);
        [] when it has none. A literal address is returned as it is."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        found: list[str] = []
        errors: list[DnsError] = []
        for rdtype in ("AAAA", "A"):
            try:
                answer = await self._query(host, rdtype)
            except DnsError as e:
                if not e.temporary:
                    raise
                errors.append(e)
                continue
            if answer is not None:
                found += [r.address for r in answer]
        if not found and errors:
            raise errors[0]
        return found

    async def records(self, name: str, rdtype: str) -> list[str]:
        """The records of one type at `name` in presentation form ("10 mx.example.org."
        for MX); [] when there are none or no such name. Temporary failures raise."""
        answer = await self._answer(name, rdtype)
        return [r.to_text() for r in answer if r.rdtype == dns.rdatatype.from_text(rdtype)]

    async def _answer(self, name: str, rdtype: str) -> Any:
        """The answer's records, or () when there are none or no such name."""
        try:
            answer = await self._query(name, rdtype)
        except DnsError as e:
            if e.temporary:
                raise
            return ()
        return () if answer is None else answer

    async def txt(self, name: str) -> list[str]:
        """Each TXT record's strings joined (RFC 7208 3.3); [] when none or no such name."""
        answer = await self._answer(name, "TXT")
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]

    async def a_records(self, name: str) -> list[str]:
        """IPv4 addresses of `name`; [] when it has none or does not exist (for a
        DNSBL that is "not listed", RFC 5782 2.1). Temporary failures raise."""
        try:
            answer = await self._query(name, "A")
        except DnsError as e:
            if e.temporary:
                raise
            return []
        return [] if answer is None else [r.address for r in answer]


def _split_server(spec: str) -> tuple[str, int]:
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if spec.count(":") == 1:
        host, port = spec.split(":")
        return host, int(port)
    return spec, 53
