"""Host names as certificates carry them (no `cryptography` here: the web and
the autoconfiguration documents need this without loading 10 MiB of it)."""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterable

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalize_name(name: str) -> str:
    """A DNS name in lowercase A-labels without the trailing dot, or an IP literal.

    Raises ValueError for anything that cannot go into a certificate.
    """
    text = name.strip()
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(text.strip("[]")))
    text = text.rstrip(".").lower()
    if not text.isascii():
        text = text.encode("idna").decode("ascii")  # RFC 5280 7.2: IDNs as A-labels
    labels = text.split(".")
    # RFC 6125 6.4.3: a wildcard only as the whole left-most label.
    if labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    if len(text) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"not a host name: {name!r}")
    return text


def server_names(
    hostname: str, domains: Iterable[str] = (), extra_names: Iterable[str] = ()
) -> list[str]:
    """The subjectAltNames of the internal server certificate, in a stable order.

    The host name, then for each mail domain the names clients look up
    (mail.<domain>; autoconfig.<domain> for Thunderbird's autoconfiguration;
    mta-sts.<domain>, RFC 8461 3.3), then pimail.local (mDNS, RFC 6762), then
    extra names. IP address literals among the extra names become iPAddress
    entries (RFC 5280 4.2.1.6; RFC 6125 forbids matching them as DNS names).
    """
    candidates = [hostname]
    for domain in domains:
        candidates += [f"mail.{domain}", f"autoconfig.{domain}", f"mta-sts.{domain}"]
    candidates.append("pimail.local")
    candidates += list(extra_names)
    names: list[str] = []
    for candidate in candidates:
        name = normalize_name(candidate)
        if name not in names:
            names.append(name)
    return names
