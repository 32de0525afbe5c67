"""Host names as certificates carry them (no `cryptography` here: the web and
the autoconfiguration documents need this without loading 10 MiB of it)."""

from __future__ import annotations

import contextlib
import ipaddress
import re

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
