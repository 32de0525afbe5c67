"""Static rule scores: the header block, the MIME shape, the text, and the authentication outcomes.

`score(message, auth, texts, own_domains)` answers `{symbol: points}` for
every rule that fired, in the manner of SpamAssassin's tests: each rule is a
named symbol ("MISSING_DATE") with a weight; the pipeline (filter/pipeline.py)
adds them to the other checks' points. Sans-I/O: bytes and results in, a dict
out. The rules over links and HTML are in body_rules.py; `texts` are the text
parts that limits.py's one walk decoded (malware.TextPart).

The weights are starting points, picked so that one weak sign alone stays
well under the default junk score (5.0) while several together, or one strong
sign (an SPF fail), reach it. bench/rule_stats.py prints how often each fires
on the SpamAssassin corpus' ham and spam; they were tuned on spam-1 and
easy-ham-1 only (figures in the commit that set them).

    GTUBE              +1000 the GTUBE test string: refused (see `gtube`)
    MISSING_DATE       +1.0  RFC 5322 3.6: Date is required; bulk tools forget it
    INVALID_DATE       +1.5  a Date that RFC 5322 3.3 (and its obsolete 4.3) cannot read
    DATE_IN_FUTURE     +1.5  Date over 12 h after the newest Received (SpamAssassin
                             DATE_IN_FUTURE_12_24)
    DATE_IN_PAST       +1.5  Date over a year before it (SpamAssassin's DATE_IN_PAST_96_XX
                             at 96 h fires on 2.3 % of easy-ham-1, against 6.4 % of spam-1;
                             at a year: 0 % against 3.2 %)
    MISSING_MESSAGE_ID +1.0  RFC 5322 3.6.4: SHOULD be present; every real MUA adds it
    INVALID_MSGID      +1.0  RFC 5322 3.6.4: msg-id is "<" id-left "@" id-right ">"
    MISSING_FROM       +1.5  RFC 5322 3.6: From is required
    MULTIPLE_FROM      +2.0  RFC 5322 3.6: From occurs once (and which one would a reader trust?)
    INVALID_FROM       +1.5  a From without one readable addr-spec (RFC 5322 3.4.1)
    FROM_NAME_OWN_DOMAIN +2.5 the From display name holds an address at one of our
                             domains while the address itself is foreign
    FROM_NAME_MIXED_SCRIPT +2.0 a display-name word mixing Latin with Cyrillic or
                             Greek letters (homoglyphs: "Pаypal")
    SUBJECT_EXCESS_BASE64 +0.5 a Subject base64-encoded though it is plain ASCII
    FROM_EXCESS_BASE64 +0.5  the same for the From display name
    ENCODED_WORD_BAD_CHARSET +1.0 an encoded-word whose text is not in its stated charset
    HTML_ONLY          +0.2  text/html without a text/plain alternative (see below)
    EXECUTABLE_ATTACH  +4.0  an attachment named as a program (malware.py's list;
                             with the malware screen on, refused before this)
    SPF_FAIL           +3.0  RFC 7208 2.6.4: the domain says this host may not send for it
    SPF_SOFTFAIL       +1.0  RFC 7208 2.6.5: "probably not authorized"
    DKIM_FAIL          +1.0  a signature failed and none passed (lists break signatures)
    DMARC_POLICY_REJECT     +2.0  DMARC failed under p=reject (not refused: dmarc_reject off)
    DMARC_POLICY_QUARANTINE +1.5  DMARC failed under p=quarantine (Junk regardless)
    DMARC_POLICY_NONE  +0.5  DMARC failed under p=none (rspamd: DMARC_POLICY_SOFTFAIL)
    NEW_DOMAIN_NOAUTH  +1.0  a sender domain never seen authenticated, and neither
                             SPF nor DKIM passes for it now (`SeenDomains`)
    RCVD_IN_DNSBL      +3.0  per point of dnsbl.score() over the blocklist zones
    RCVD_IN_DNSWL      -3.0  per point of weight over the allowlist zones
    URIBL_LISTED       +2.5  per point of weight: a link's domain on a domain list
    RHSBL_SENDER       +2.0  per point of weight: the sender's domain on a domain list
    BULK_SENDER_CONSISTENT -1.5 a bulk sender that names itself one way throughout
                             (`bulk_rules`, below)
    URI_*, HTML_*            body_rules.py

HTML_ONLY was +1.0 (tuned on spam-1/easy-ham-1, where it fires on 42 % of
spam and no ham). It is +0.2 (rspamd's MIME_HTML_ONLY) for the reason the
starter model leaves out the tokens that only say "this is HTML"
(starter.py): easy-ham-1 is mailing-list mail of 2002, 0.8 % HTML, so the
corpus teaches "HTML is spam", which is false of today's mail (newsletters,
receipts, mail from phones). What HTML hides or forges keeps its points.

BULK_SENDER_CONSISTENT (issue 15) is the one rule that speaks for a message:
a legitimate newsletter says who it is the same way everywhere, a spammer
seldom bothers. It fires when all of these hold:
- a well-formed List-Unsubscribe (RFC 2369 3.2: one or more angle-bracketed
  mailto:, http: or https: URIs, comma-separated);
- one From address; its organizational domain F (RFC 7489 3.2);
- the Message-ID's domain (RFC 5322 3.6.4 id-right) is F or one of the
  List-Unsubscribe URIs' domains (the sender's mailing service);
- if the message has links, the most frequent link domain is one of them;
- F is tied to the rest: it is the Message-ID's domain, an unsubscribe
  domain, or a link domain;
- no rule that detects a trick or a forgery fired (`TRICKS`), and sender
  authentication failed nowhere (SPF fail, DKIM fail, DMARC fail, a listed
  sender or link): all of that is cheap to forge, so it may only confirm a
  message nothing speaks against.
On spam-1/easy-ham-1 it fires on 0 of 500 spam and 577 of 2,500 ham
(bench/rule_stats.py). It is worth -1.5, no more than one trick rule's
points: any trick disqualifies it, and two ordinary signs outweigh it.

The MIME shape is read by a light scan, not a full parse: every
`Content-Type`/`Content-Disposition` field at the start of a line anywhere in
the message (limits.py has already bounded the number of parts and the size
of header blocks before this runs). A body line that merely looks like such a
field can only add points, never hide an attachment; for a score that is the
right side to err on.

GTUBE ("Generic Test for Unsolicited Bulk Email", SpamAssassin's test string)
is refused, not filed: SpamAssassin gives it 1000 points, over any refusal
threshold, and rspamd answers "reject"; pimail refuses at its reject score,
so GTUBE is refused with the 550 5.7.1 of a spam refusal, for every
recipient, whatever rspamd's mode and the sender lists say. A tester sees
the verdict at once, and nothing is stored.
"""

from __future__ import annotations

import binascii
import email.header
import email.utils
import re
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..store.headers import fields
from . import body_rules, malware
from .dmarc import organizational_domain
from .malware import TextPart

GTUBE_SCORE = 1000.0
MISSING_DATE = 1.0
INVALID_DATE = 1.5
DATE_IN_FUTURE = 1.5
DATE_IN_PAST = 1.5
MISSING_MESSAGE_ID = 1.0
INVALID_MSGID = 1.0
MISSING_FROM = 1.5
MULTIPLE_FROM = 2.0
INVALID_FROM = 1.5
FROM_NAME_OWN_DOMAIN = 2.5
FROM_NAME_MIXED_SCRIPT = 2.0
SUBJECT_EXCESS_BASE64 = 0.5
FROM_EXCESS_BASE64 = 0.5
ENCODED_WORD_BAD_CHARSET = 1.0
HTML_ONLY = 0.2  # was 1.0: see the module docstring
EXECUTABLE_ATTACH = 4.0
SPF_FAIL = 3.0
SPF_SOFTFAIL = 1.0
DKIM_FAIL = 1.0
DMARC_POLICY = {"reject": 2.0, "quarantine": 1.5}
DMARC_POLICY_NONE = 0.5
NEW_DOMAIN_NOAUTH = 1.0
DNSBL_WEIGHT = 3.0
DNSWL_WEIGHT = -3.0
URIBL_WEIGHT = 2.5
RHSBL_WEIGHT = 2.0
BULK_SENDER_CONSISTENT = -1.5
# Symbols that disqualify BULK_SENDER_CONSISTENT: tricks, forgeries, failed
# authentication, listings (the module docstring).
TRICKS = frozenset(
    (
        "MISSING_DATE", "INVALID_DATE", "DATE_IN_FUTURE", "DATE_IN_PAST",
        "MISSING_MESSAGE_ID", "INVALID_MSGID", "MISSING_FROM", "MULTIPLE_FROM",
        "INVALID_FROM", "FROM_NAME_OWN_DOMAIN", "FROM_NAME_MIXED_SCRIPT",
        "ENCODED_WORD_BAD_CHARSET", "EXECUTABLE_ATTACH", "SPF_FAIL", "SPF_SOFTFAIL",
        "DKIM_FAIL", "DMARC_POLICY_REJECT", "DMARC_POLICY_QUARANTINE", "DMARC_POLICY_NONE",
        "RCVD_IN_DNSBL", "URIBL_LISTED", "RHSBL_SENDER", "URI_IP", "URI_USERINFO",
        "URI_PUNYCODE_OWN", "URI_HOMOGRAPH", "HTML_HIDDEN_TEXT", "HTML_TINY_FONT",
    )
)  # fmt: skip

FUTURE_SECONDS = 12 * 3600
PAST_SECONDS = 365 * 86400

# The GTUBE string, in two halves so that this file is not itself a test message.
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*" + b"GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

# A Content-Type or Content-Disposition field with its continuation lines (RFC 5322 2.2.3).
_MIME_FIELD = re.compile(
    rb"^content-(type|disposition)[ \t]*:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)",
    re.IGNORECASE | re.MULTILINE,
)
_FOLD = re.compile(r"\r?\n[ \t]")
_TYPE = re.compile(r"^\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+)")
# name=, filename=, and RFC 2231's name*=, filename*=, filename*0*= ... (section 3 and 4).
_NAME_PARAM = re.compile(
    r';\s*(?:file)?name(?:\*\d*)?\*?\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)', re.IGNORECASE
)
# RFC 5322 3.6.4 msg-id, with dot-atom-text or no-fold-literal on either side (loosely).
_MSGID = re.compile(r"^\s*<[^<>@\s]+@[^<>@\s]+>\s*$")
# RFC 2047 2: =?charset?encoding?encoded-text?= (charset may carry *language, RFC 2231 5).
_ENCODED_WORD = re.compile(r"=\?([^?*\s]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")
_ANGLE_ADDR = re.compile(r"<[^<>]*>\s*$")
_RECEIVED_DATE = re.compile(rb";\s*([^;]+)$")
_ADDRESS_IN_TEXT = re.compile(r"[\w.+-]+@([a-z0-9.-]+\.[a-z]{2,})", re.IGNORECASE)
_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK")
# RFC 2369 3.2: List-Unsubscribe is a comma-separated list of <URI>s (folding allowed).
_LIST_URIS = re.compile(r"^\s*<[^<>\s]+>(?:\s*,\s*<[^<>\s]+>)*\s*$")
_LIST_URI = re.compile(r"<([^<>\s]+)>")


@dataclass
class AuthOutcome:
    """What sender authentication found, as far as the rules score it."""

    spf: str | None = None  # spf.RESULTS, None when not checked
    dkim: Sequence[str] = ()  # each signature's result
    dmarc: str | None = None  # dmarc result, None when not checked
    dmarc_refused: bool = False  # the message is refused for DMARC: no points then
    dmarc_policy: str | None = None  # the policy applied: "none", "quarantine", "reject"
    dnsbl: int = 0  # dnsbl.score() over the blocklist zones
    dnswl: int = 0  # the sum of |weight| over the allowlist zones that listed the client
    uribl: int = 0  # dnsbl.score() of the link domains over the domain lists
    rhsbl: int = 0  # dnsbl.score() of the sender domains over the domain lists
    new_domain: bool = False  # SeenDomains: never seen authenticated, not authenticated now


@dataclass
class MimeShape:
    """The content types and attachment names seen in a message."""

    types: list[str] = field(default_factory=list)  # lower case, e.g. "text/plain"
    names: list[str] = field(default_factory=list)  # file names, decoded when encoded


def mime_shape(message: bytes) -> MimeShape:
    """Content types and names of every entity (the light scan of the module docstring)."""
    shape = MimeShape()
    for match in _MIME_FIELD.finditer(message):
        value = _FOLD.sub(" ", match.group(2).decode("latin-1"))
        if match.group(1).lower() == b"type":
            kind = _TYPE.match(value)
            if kind:
                shape.types.append(kind.group(1).lower())
        for raw in _NAME_PARAM.findall(value):
            shape.names.append(_decode_name(raw))
    return shape


def _decode_name(raw: str) -> str:
    name = raw[1:-1].replace('\\"', '"') if raw.startswith('"') else raw
    if "''" in name:  # RFC 2231 4: charset'language'percent-encoded
        name = name.rsplit("'", 1)[1]
    return malware.decode_name(name).lower()


def gtube(message: bytes, texts: Sequence[TextPart] = ()) -> bool:
    """The GTUBE string anywhere in the message, or in a decoded text part
    (base64 or quoted-printable hide it from the raw bytes)."""
    if GTUBE in message:
        return True
    marker = GTUBE.decode("ascii")
    return any(marker in part.text for part in texts)


def header_rules(
    message: bytes, own_domains: Iterable[str] = (), now: float | None = None
) -> dict[str, float]:
    """The rules over the header block and the MIME shape."""
    symbols: dict[str, float] = {}
    header = fields(message)
    values: dict[bytes, list[bytes]] = {}
    for name, value in header:
        values.setdefault(name, []).append(value)
    symbols.update(_date_rules(values, now))
    if b"message-id" not in values:
        symbols["MISSING_MESSAGE_ID"] = MISSING_MESSAGE_ID
    elif not _MSGID.match(values[b"message-id"][0].decode("latin-1")):
        symbols["INVALID_MSGID"] = INVALID_MSGID
    symbols.update(_from_rules(values.get(b"from", []), own_domains))
    for subject in values.get(b"subject", [])[:1]:
        symbols.update(_encoded_word_rules(subject, "SUBJECT_EXCESS_BASE64"))
    shape = mime_shape(message)
    if "text/html" in shape.types and "text/plain" not in shape.types:
        symbols["HTML_ONLY"] = HTML_ONLY
    if any(malware.name_finding(name) for name in shape.names):
        symbols["EXECUTABLE_ATTACH"] = EXECUTABLE_ATTACH
    return symbols


def _date_rules(values: dict[bytes, list[bytes]], now: float | None) -> dict[str, float]:
    dates = values.get(b"date")
    if not dates:
        return {"MISSING_DATE": MISSING_DATE}
    try:  # RFC 5322 3.3, and the obsolete forms of 4.3 that readers accept
        sent = email.utils.parsedate_to_datetime(dates[0].decode("latin-1")).timestamp()
    except (ValueError, TypeError, IndexError, OverflowError):
        return {"INVALID_DATE": INVALID_DATE}
    # RFC 5321 4.4: the newest Received (ours, in the pipeline) says when it arrived.
    received = _received_time(values.get(b"received", [])) or now
    if received is None:
        return {}
    if sent - received > FUTURE_SECONDS:
        return {"DATE_IN_FUTURE": DATE_IN_FUTURE}
    if received - sent > PAST_SECONDS:
        return {"DATE_IN_PAST": DATE_IN_PAST}
    return {}


def _received_time(received: list[bytes]) -> float | None:
    """The date of the newest Received field (RFC 5321 4.4: after its last ";")."""
    for value in received[:1]:
        match = _RECEIVED_DATE.search(value)
        if match:
            try:
                return email.utils.parsedate_to_datetime(
                    match.group(1).decode("latin-1")
                ).timestamp()
            except (ValueError, TypeError, IndexError, OverflowError):
                return None
    return None


def _from_rules(froms: list[bytes], own_domains: Iterable[str]) -> dict[str, float]:
    if not froms:
        return {"MISSING_FROM": MISSING_FROM}
    symbols: dict[str, float] = {}
    if len(froms) > 1:
        symbols["MULTIPLE_FROM"] = MULTIPLE_FROM
    raw = froms[0].decode("utf-8", "replace")
    parsed = email.utils.getaddresses([raw])
    addresses = [(n, a) for n, a in parsed if "@" in a and "." in a.rpartition("@")[2]]
    if not addresses:
        symbols["INVALID_FROM"] = INVALID_FROM
        return symbols
    symbols.update(_encoded_word_rules(froms[0], "FROM_EXCESS_BASE64"))
    display, address = addresses[0]
    name = _decode_words(display)
    domain = address.rpartition("@")[2].lower().rstrip(".")
    own = {d.lower().rstrip(".") for d in own_domains}
    shown = {m.lower().rstrip(".") for m in _ADDRESS_IN_TEXT.findall(name)}
    if shown & own and domain not in own:
        symbols["FROM_NAME_OWN_DOMAIN"] = FROM_NAME_OWN_DOMAIN
    if any(_mixed_script(word) for word in name.split()):
        symbols["FROM_NAME_MIXED_SCRIPT"] = FROM_NAME_MIXED_SCRIPT
    return symbols


def _decode_words(text: str) -> str:
    try:
        parts = email.header.decode_header(text)
    except (ValueError, LookupError, binascii.Error):
        return text
    out = []
    for part, charset in parts:
        if isinstance(part, bytes):
            try:
                out.append(part.decode(charset or "latin-1"))
            except (LookupError, UnicodeDecodeError):
                out.append(part.decode("latin-1"))
        else:
            out.append(part)
    return "".join(out)


def _mixed_script(word: str) -> bool:
    """A word with letters of more than one of Latin, Cyrillic, Greek."""
    seen = set()
    for char in word:
        if char.isalpha():
            script = unicodedata.name(char, "").split(" ", 1)[0]
            if script in _SCRIPTS:
                seen.add(script)
    return len(seen) > 1


def _encoded_word_rules(value: bytes, excess_symbol: str) -> dict[str, float]:
    """RFC 2047 encoded-words: base64 for plain ASCII text; text not in its charset."""
    symbols: dict[str, float] = {}
    text = value.decode("latin-1")
    words = list(_ENCODED_WORD.finditer(text))
    if not words:
        return symbols
    ascii_b64 = True
    for word in words:
        charset, encoding, encoded = word.group(1), word.group(2).upper(), word.group(3)
        try:
            if encoding == "B":
                raw = binascii.a2b_base64(encoded + "=" * (-len(encoded) % 4))
            else:  # RFC 2047 4.2: "_" is a space
                raw = binascii.a2b_qp(encoded.replace("_", " ").encode("ascii", "replace"))
            decoded = raw.decode(charset)
        except (binascii.Error, LookupError, UnicodeDecodeError, ValueError):
            symbols["ENCODED_WORD_BAD_CHARSET"] = ENCODED_WORD_BAD_CHARSET
            ascii_b64 = False
            continue
        if encoding != "B" or not decoded.isascii() or "=?" in decoded:
            ascii_b64 = False
    # The whole value (for From: the display name, before its <addr-spec>) one or
    # more base64 words of plain ASCII: nothing needed encoding.
    outside = _ENCODED_WORD.sub("", _ANGLE_ADDR.sub("", text)).strip(' \t"')
    if ascii_b64 and not outside:
        symbols[excess_symbol] = (
            FROM_EXCESS_BASE64 if excess_symbol == "FROM_EXCESS_BASE64" else SUBJECT_EXCESS_BASE64
        )
    return symbols


def text_rules(texts: Sequence[TextPart], own_domains: Iterable[str] = ()) -> dict[str, float]:
    """The rules over the text parts (body_rules.py)."""
    symbols = body_rules.uri_rules(body_rules.uris(texts), own_domains)
    symbols.update(body_rules.html_rules(texts))
    return symbols


def bulk_rules(message: bytes, texts: Sequence[TextPart], fired: Iterable[str]) -> dict[str, float]:
    """BULK_SENDER_CONSISTENT (module docstring); `fired`: the symbols of the
    other rules and of sender authentication so far."""
    if TRICKS.intersection(fired):
        return {}
    values: dict[bytes, list[str]] = {}
    for name, value in fields(message):
        values.setdefault(name, []).append(_FOLD.sub(" ", value.decode("latin-1")))
    unsubscribe = values.get(b"list-unsubscribe", [])
    ids = values.get(b"message-id", [])
    if len(unsubscribe) != 1 or len(ids) != 1 or not _LIST_URIS.match(unsubscribe[0]):
        return {}
    services: set[str] = set()
    for uri in _LIST_URI.findall(unsubscribe[0]):
        domain = _uri_domain(uri)
        if domain is None:
            return {}  # RFC 2369 3.2 allows other schemes; we vouch only for these
        services.add(domain)
    froms = values.get(b"from", [])
    author = _address_domain(froms[0]) if len(froms) == 1 else None
    msgid = _address_domain(ids[0])
    if author is None or msgid is None:
        return {}
    known = services | {author}
    links = body_rules.uris(texts)
    main = body_rules.main_link_domain(links)
    if msgid not in known or (main is not None and main not in known):
        return {}
    tied = author in services or msgid == author
    if not tied and author not in body_rules.link_domains(links, body_rules.MAX_LINKS):
        return {}
    return {"BULK_SENDER_CONSISTENT": BULK_SENDER_CONSISTENT}


def _address_domain(value: str) -> str | None:
    """The organizational domain of the one address in a From or Message-ID value."""
    found = _ADDRESS_IN_TEXT.findall(value)
    if len(found) != 1:
        return None
    return organizational_domain(found[0].lower().rstrip("."))


def _uri_domain(uri: str) -> str | None:
    """The organizational domain of a mailto:, http: or https: URI; None for others."""
    lowered = uri.lower()
    if lowered.startswith("mailto:"):
        return _address_domain(uri[7:].split("?", 1)[0])
    if lowered.startswith(("http://", "https://")):
        try:
            host = (urlsplit(uri).hostname or "").rstrip(".")
        except ValueError:
            return None
        return organizational_domain(host) if "." in host else None
    return None


def auth_rules(auth: AuthOutcome) -> dict[str, float]:
    """The rules over the sender authentication results and the DNS lists."""
    symbols: dict[str, float] = {}
    if auth.spf == "fail":
        symbols["SPF_FAIL"] = SPF_FAIL
    elif auth.spf == "softfail":
        symbols["SPF_SOFTFAIL"] = SPF_SOFTFAIL
    if "fail" in auth.dkim and "pass" not in auth.dkim:
        symbols["DKIM_FAIL"] = DKIM_FAIL
    if auth.dmarc == "fail" and not auth.dmarc_refused:
        policy = auth.dmarc_policy or "none"
        if policy in DMARC_POLICY:
            symbols[f"DMARC_POLICY_{policy.upper()}"] = DMARC_POLICY[policy]
        else:
            symbols["DMARC_POLICY_NONE"] = DMARC_POLICY_NONE
    if auth.new_domain:
        symbols["NEW_DOMAIN_NOAUTH"] = NEW_DOMAIN_NOAUTH
    if auth.dnsbl:
        symbols["RCVD_IN_DNSBL"] = DNSBL_WEIGHT * auth.dnsbl
    if auth.dnswl:
        symbols["RCVD_IN_DNSWL"] = DNSWL_WEIGHT * auth.dnswl
    if auth.uribl:
        symbols["URIBL_LISTED"] = URIBL_WEIGHT * auth.uribl
    if auth.rhsbl:
        symbols["RHSBL_SENDER"] = RHSBL_WEIGHT * auth.rhsbl
    return symbols


def score(
    message: bytes,
    auth: AuthOutcome | None = None,
    texts: Sequence[TextPart] = (),
    own_domains: Iterable[str] = (),
) -> dict[str, float]:
    """Every rule that fired on `message` and `auth`, {symbol: points}."""
    own = list(own_domains)
    symbols = header_rules(message, own)
    symbols.update(text_rules(texts, own))
    if auth is not None:
        symbols.update(auth_rules(auth))
    symbols.update(bulk_rules(message, texts, symbols))
    if gtube(message, texts):
        symbols["GTUBE"] = GTUBE_SCORE
    return symbols


class SeenDomains:
    """Sender domains seen authenticated (SPF or DKIM pass), the newest
    `capacity` of them, for `max_age` seconds; in memory (a restart forgets,
    and the first message of each domain after it may get NEW_DOMAIN_NOAUTH's
    single point). Thread-safe enough for one event loop."""

    def __init__(self, capacity: int = 10_000, max_age: float = 90 * 86400) -> None:
        self.capacity = capacity
        self.max_age = max_age
        self._seen: OrderedDict[str, float] = OrderedDict()

    def add(self, domain: str, now: float | None = None) -> None:
        domain = domain.lower().rstrip(".")
        if not domain:
            return
        self._seen[domain] = now if now is not None else time.monotonic()
        self._seen.move_to_end(domain)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)

    def __contains__(self, domain: str) -> bool:
        seen = self._seen.get(domain.lower().rstrip("."))
        return seen is not None and time.monotonic() - seen < self.max_age
