"""Static rule scores: the header block, the MIME shape, and the authentication outcomes.

`score(message, auth)` answers `{symbol: points}` for every rule that fired,
in the manner of SpamAssassin's tests: each rule is a named symbol
("MISSING_DATE") with a weight; the pipeline (filter/pipeline.py) adds them to
the other checks' points. Sans-I/O: bytes and results in, a dict out.

The weights below are starting points, picked so that one weak sign alone stays
well under the default junk score (5.0) while several together, or one strong
sign (an executable attachment, an SPF fail), reach it:

    MISSING_DATE       +1.0  RFC 5322 3.6: Date is required; bulk tools forget it
    MISSING_MESSAGE_ID +1.0  RFC 5322 3.6.4: SHOULD be present; every real MUA adds it
    HTML_ONLY          +1.0  text/html without a text/plain alternative
    EXECUTABLE_ATTACH  +4.0  an attachment named .exe .scr .js .vbs .bat .cmd .com .pif .jar .lnk
    SPF_FAIL           +3.0  RFC 7208 2.6.4: the domain says this host may not send for it
    SPF_SOFTFAIL       +1.0  RFC 7208 2.6.5: "probably not authorized"
    DKIM_FAIL          +1.0  a signature failed and none passed (lists break signatures)
    DMARC_FAIL         +3.0  DMARC failed and the message was not refused for it
    RCVD_IN_DNSBL      +3.0  per point of dnsbl.score() over the blocklist zones
    RCVD_IN_DNSWL      -3.0  per point of weight over the allowlist zones

The MIME shape is read by a light scan, not a full parse: every
`Content-Type`/`Content-Disposition` field at the start of a line anywhere in
the message (limits.py has already bounded the number of parts and the size
of header blocks before this runs). A body line that merely looks like such a
field can only add points, never hide an attachment; for a score that is the
right side to err on.
"""

from __future__ import annotations

import email.header
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..store.headers import fields

MISSING_DATE = 1.0
MISSING_MESSAGE_ID = 1.0
HTML_ONLY = 1.0
EXECUTABLE_ATTACH = 4.0
SPF_FAIL = 3.0
SPF_SOFTFAIL = 1.0
DKIM_FAIL = 1.0
DMARC_FAIL = 3.0
DNSBL_WEIGHT = 3.0
DNSWL_WEIGHT = -3.0

EXECUTABLE_SUFFIXES = (
    ".exe", ".scr", ".js", ".vbs", ".bat", ".cmd", ".com", ".pif", ".jar", ".lnk",
)  # fmt: skip

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


@dataclass
class AuthOutcome:
    """What sender authentication found, as far as the rules score it."""

    spf: str | None = None  # spf.RESULTS, None when not checked
    dkim: Sequence[str] = ()  # each signature's result
    dmarc: str | None = None  # dmarc result, None when not checked
    dmarc_refused: bool = False  # the message is refused for DMARC: no points then
    dnsbl: int = 0  # dnsbl.score() over the blocklist zones
    dnswl: int = 0  # the sum of |weight| over the allowlist zones that listed the client


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
    if "=?" in name:  # RFC 2047 encoded-words, as many mailers (wrongly) use in name=
        try:
            parts = email.header.decode_header(name)
            name = "".join(
                p.decode(c or "latin-1", "replace") if isinstance(p, bytes) else p for p, c in parts
            )
        except (ValueError, LookupError):
            pass
    return name.strip().lower()


def header_rules(message: bytes) -> dict[str, float]:
    """The rules over the header block and the MIME shape."""
    symbols: dict[str, float] = {}
    names = {name for name, _ in fields(message)}
    if b"date" not in names:
        symbols["MISSING_DATE"] = MISSING_DATE
    if b"message-id" not in names:
        symbols["MISSING_MESSAGE_ID"] = MISSING_MESSAGE_ID
    shape = mime_shape(message)
    if "text/html" in shape.types and "text/plain" not in shape.types:
        symbols["HTML_ONLY"] = HTML_ONLY
    if any(name.rstrip(". ").endswith(EXECUTABLE_SUFFIXES) for name in shape.names):
        symbols["EXECUTABLE_ATTACH"] = EXECUTABLE_ATTACH
    return symbols


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
        symbols["DMARC_FAIL"] = DMARC_FAIL
    if auth.dnsbl:
        symbols["RCVD_IN_DNSBL"] = DNSBL_WEIGHT * auth.dnsbl
    if auth.dnswl:
        symbols["RCVD_IN_DNSWL"] = DNSWL_WEIGHT * auth.dnswl
    return symbols


def score(message: bytes, auth: AuthOutcome | None = None) -> dict[str, float]:
    """Every rule that fired on `message` and `auth`, {symbol: points}."""
    symbols = header_rules(message)
    if auth is not None:
        symbols.update(auth_rules(auth))
    return symbols
