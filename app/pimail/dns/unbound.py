"""The device's unbound: the part of its configuration that comes from pimail's settings.

The image runs unbound as pimail's recursive resolver (overlay/etc/unbound/
unbound.conf.d/pimail.conf: loopback only, port 5335, DNSSEC-validating). What
a user may add is `dns.stub_zones`: zones unbound asks of a given server rather
than recursing from the root (a LAN's DNS server for its own names, a DNS list
served on the LAN). Before unbound starts, `pimail-unbound-setup` runs

    python3 -m pimail.dns.unbound --config /etc/pimail/pimail.toml

as the pimail user and writes what it prints to /run/pimail-unbound/stubs.conf,
which unbound includes. Each entry becomes (unbound.conf(5)):

    server:
        domain-insecure: "lan.test"     the zone is not signed from the root:
                                        validating it would make every answer bogus
        local-zone: "lan.test." transparent
                                        unbound answers .test, .invalid, home.arpa and
                                        the RFC 1918 reverse zones itself by default
    stub-zone:
        name: "lan.test"
        stub-addr: 192.168.1.5@53
        stub-tcp-upstream: yes          only for "zone=tcp:host:port"

Entries are checked strictly (a zone name, an IP address, a port): the text is
unbound configuration, and a bad entry is left out with a comment and a
warning rather than keeping unbound (and with it all of pimail's DNS) from
starting.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_ZONE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


@dataclass(frozen=True)
class StubZone:
    name: str  # lower case, no trailing dot
    address: str  # an IP address
    port: int
    tcp: bool


def parse_stub(entry: str) -> StubZone:
    """'zone=host[:port]' or 'zone=tcp:host[:port]'; IPv6 as '[::1]:53'. ValueError if bad."""
    name, equals, server = entry.strip().partition("=")
    name = name.strip().lower().rstrip(".")
    if not equals or not _ZONE.match(name):
        raise ValueError(f"stub zone {entry!r}: expected zone=host[:port]")
    server = server.strip()
    tcp = server.lower().startswith("tcp:")
    if tcp:
        server = server[4:]
    port = 53
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"stub zone {entry!r}: bad port")
            port = int(rest[1:])
    elif server.count(":") == 1:
        host, _, port_text = server.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"stub zone {entry!r}: bad port")
        port = int(port_text)
    else:
        host = server
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"stub zone {entry!r}: the server must be an IP address") from None
    if not 0 < port < 65536:
        raise ValueError(f"stub zone {entry!r}: bad port")
    return StubZone(name, str(address), port, tcp)


def stubs_conf(entries: list[str]) -> str:
    """unbound.conf text for `dns.stub_zones` (see the module docstring)."""
    lines = ["# Written by pimail at unbound's start from dns.stub_zones; do not edit."]
    stubs: list[StubZone] = []
    for entry in entries:
        try:
            stubs.append(parse_stub(entry))
        except ValueError as e:
            log.warning("unbound stub zone left out error=%r", str(e))
            lines.append(f"# left out: {str(e).encode('ascii', 'replace').decode()!r}")
    if not stubs:
        return "\n".join(lines) + "\n"
    lines.append("server:")
    # unbound does not ask servers on loopback unless told (do-not-query-localhost).
    if any(ipaddress.ip_address(s.address).is_loopback for s in stubs):
        lines.append("    do-not-query-localhost: no")
    for stub in stubs:
        lines.append(f'    domain-insecure: "{stub.name}"')
        lines.append(f'    local-zone: "{stub.name}." transparent')
    for stub in stubs:
        lines += ["stub-zone:", f'    name: "{stub.name}"']
        lines.append(f"    stub-addr: {stub.address}@{stub.port}")
        if stub.tcp:
            lines.append("    stub-tcp-upstream: yes")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from .. import config

    p = argparse.ArgumentParser(description="unbound.conf lines for pimail's dns.stub_zones")
    p.add_argument("--config", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    try:
        settings = config.load(args.config)
    except config.ConfigError as e:
        log.warning("unbound stub zones: settings unreadable error=%r", str(e))
        sys.stdout.write(stubs_conf([]))
        return 0
    sys.stdout.write(stubs_conf(settings.dns.stub_zones))
    return 0


if __name__ == "__main__":
    sys.exit(main())
