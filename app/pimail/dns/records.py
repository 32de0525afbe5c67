"""The DNS records an administrator publishes for a mail domain, and the MTA-STS policy.

pimail does not run the domain's DNS: it says what to put there (`pimail dns
DOMAIN`). For domain D served by this host H (the `hostname` setting):

- MX, SPF: where mail for D goes and who may send it;
- DKIM: one TXT per key not yet removed (queue/dkim.py);
- DMARC, MTA-STS, TLS reporting: what receivers should do with failures;
- SRV (RFC 6186, RFC 8314) and autoconfig/autodiscover: mail clients find H;
- an address for H, which pimail cannot know (behind NAT): a placeholder.

Ports are the standard public ones, whatever the listeners inside the box
use (a router may forward 465 to 2465). Pure functions: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..config import Settings
from ..queue.dkim import PENDING, RETIRED, DkimKey

TTL = 3600
# RFC 8461 3.2: max_age in seconds. A week: long enough to protect, short
# enough to recover from a mistake.
MTA_STS_MAX_AGE = 604800
# RFC 1035 3.3.14: a TXT record is a sequence of <character-string>s, each
# one length octet and at most 255 octets of data.
TXT_CHUNK = 255


@dataclass(frozen=True)
class Record:
    name: str  # owner name, absolute, without the trailing dot
    type: str  # "MX", "TXT", "CNAME", "SRV", "A", "AAAA"
    value: str  # presentation form, TXT unquoted and unsplit
    purpose: str  # what it is for, one line; records of one purpose are listed together


def records(settings: Settings, domain: str, keys: Sequence[DkimKey]) -> list[Record]:
    """Everything to publish for `domain` (an IDNA A-label) with its DKIM `keys`."""
    d = domain.rstrip(".").lower()
    h = settings.hostname.rstrip(".").lower()
    target = f"{h}."
    postmaster = f"mailto:postmaster@{d}"
    out = [
        Record(d, "MX", f"10 {target}", "MX: the host that receives mail for the domain"),
        # RFC 7208: the domain's mail comes only from its MX host, nothing else passes.
        Record(d, "TXT", "v=spf1 mx -all", "SPF (RFC 7208): only the MX host sends mail"),
    ]
    if h != d:
        # RFC 7208 2.3: an SPF record for the HELO name, checked for bounces
        # (empty MAIL FROM). At H: in H's zone if that is another one.
        out.append(
            Record(h, "TXT", "v=spf1 a -all", "SPF for the host's own name (HELO, RFC 7208 2.3)")
        )
    out += dkim_records(d, keys)
    mta_sts = (
        "MTA-STS (RFC 8461): senders must use TLS; the policy is at"
        f" https://mta-sts.{d}/.well-known/mta-sts.txt"
    )
    out += [
        # RFC 7489 6.3: quarantine rather than reject while a domain is new.
        # Strict alignment (adkim=s, aspf=s): pimail signs with d= exactly the
        # From domain, and DKIM alignment alone is enough to pass (RFC 7489 4.2).
        # Aggregate reports (rua) go to postmaster.
        Record(
            f"_dmarc.{d}",
            "TXT",
            f"v=DMARC1; p=quarantine; adkim=s; aspf=s; rua={postmaster}",
            "DMARC (RFC 7489): quarantine what fails, reports to postmaster (an account or alias)",
        ),
        Record(f"_mta-sts.{d}", "TXT", f"v=STSv1; id={mta_sts_id(settings, d)}", mta_sts),
        Record(f"mta-sts.{d}", "CNAME", target, mta_sts),
        Record(
            f"_smtp._tls.{d}",
            "TXT",
            f"v=TLSRPTv1; rua={postmaster}",
            "TLS reporting (RFC 8460): senders report TLS failures to postmaster",
        ),
    ]
    out += _client_records(d, target)
    out += [
        Record(
            h,
            "A",
            "<public IPv4 of this box>",
            "the host's address: pimail cannot know it (NAT): fill in the public IPv4,"
            " add AAAA only with a public IPv6, and ask the ISP for reverse DNS (PTR) naming"
            f" {h}",
        ),
    ]
    return out


def dkim_records(domain: str, keys: Iterable[DkimKey]) -> list[Record]:
    """One TXT per key at <selector>._domainkey.<domain> (RFC 6376 3.6.2.1)."""
    out = []
    for key in keys:
        if key.state == PENDING:
            purpose = (
                f"DKIM, next keys: publish now, then (a TTL later) pimail dkim activate {domain}"
            )
        elif key.state == RETIRED:
            purpose = (
                "DKIM, retired keys: remove after a week (mail in flight still verifies),"
                f" then pimail dkim remove-retired {domain}"
            )
        else:
            purpose = "DKIM (RFC 6376, RFC 8463): the keys that sign outgoing mail"
        out.append(Record(f"{key.selector}._domainkey.{domain}", "TXT", dkim_txt(key), purpose))
    return out


def dkim_txt(key: DkimKey) -> str:
    """The DKIM key record (RFC 6376 3.6.1): v=DKIM1, k=rsa or k=ed25519, p=."""
    return f"v=DKIM1; k={key.key_type}; p={key.public_key}"


def _client_records(domain: str, target: str) -> list[Record]:
    # RFC 8314 5.1 and RFC 6186 3.4: a lower priority value is preferred, also
    # across services: implicit TLS first, then STARTTLS, IMAP before POP3.
    srv = "client discovery (SRV, RFC 6186 and RFC 8314)"
    auto = "client autoconfiguration (Thunderbird autoconfig, Outlook autodiscover)"
    return [
        Record(f"_submissions._tcp.{domain}", "SRV", f"0 1 465 {target}", srv),
        Record(f"_submission._tcp.{domain}", "SRV", f"10 1 587 {target}", srv),
        Record(f"_imaps._tcp.{domain}", "SRV", f"0 1 993 {target}", srv),
        Record(f"_imap._tcp.{domain}", "SRV", f"10 1 143 {target}", srv),
        Record(f"_pop3s._tcp.{domain}", "SRV", f"20 1 995 {target}", srv),
        Record(f"autoconfig.{domain}", "CNAME", target, auto),
        Record(f"autodiscover.{domain}", "CNAME", target, auto),
    ]


# -- MTA-STS ----------------------------------------------------------------


def mta_sts_policy(settings: Settings, domain: str) -> str:
    """The policy served at https://mta-sts.<domain>/.well-known/mta-sts.txt
    (RFC 8461 3.2), CRLF line ends.

    `enforce` only with a publicly trusted certificate (ACME): with the
    internal CA, senders could not validate H and would refuse to deliver.
    `testing` makes them deliver anyway and report (RFC 8460)."""
    mode = "enforce" if settings.tls.acme else "testing"
    lines = [
        "version: STSv1",
        f"mode: {mode}",
        f"mx: {settings.hostname.rstrip('.').lower()}",
        f"max_age: {MTA_STS_MAX_AGE}",
    ]
    return "".join(line + "\r\n" for line in lines)


def mta_sts_id(settings: Settings, domain: str) -> str:
    """RFC 8461 3.1: the id changes whenever the policy does (1-32 alphanumerics).
    Derived from the policy text itself: stable across runs, and new exactly
    when the mode, host name or max_age changes."""
    return hashlib.sha256(mta_sts_policy(settings, domain).encode("ascii")).hexdigest()[:20]


# -- zone files -------------------------------------------------------------


def txt_chunks(value: str) -> list[str]:
    """Split a TXT value into <character-string>s of at most 255 octets (RFC 1035
    3.3.14); a DNS server concatenates them back (RFC 6376 3.6.2.2 for DKIM)."""
    data = value.encode("utf-8")
    if not data:
        return [""]
    chunks = []
    while data:
        piece = data[:TXT_CHUNK]
        # Never cut inside a UTF-8 sequence (DKIM records are ASCII: no effect there).
        while piece and len(piece) < len(data):
            try:
                piece.decode("utf-8")
                break
            except UnicodeDecodeError:
                piece = piece[:-1]
        chunks.append(piece.decode("utf-8"))
        data = data[len(piece) :]
    return chunks


def quote_txt(value: str) -> str:
    """The TXT value as zone-file text: quoted <=255-octet chunks, separated by spaces."""
    return " ".join(
        '"' + chunk.replace("\\", "\\\\").replace('"', '\\"') + '"' for chunk in txt_chunks(value)
    )


def zone_lines(records: Iterable[Record], ttl: int = TTL) -> list[str]:
    """BIND zone-file lines, with a `; purpose` comment before each group of
    records of one purpose. Names are absolute (trailing dot)."""
    out: list[str] = []
    purpose = None
    for record in records:
        if record.purpose != purpose:
            if out:
                out.append("")
            out.append(f"; {record.purpose}")
            purpose = record.purpose
        value = quote_txt(record.value) if record.type == "TXT" else record.value
        out.append(f"{record.name}.\t{ttl}\tIN\t{record.type}\t{value}")
    return out
