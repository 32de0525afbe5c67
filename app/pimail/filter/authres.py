"""The Authentication-Results header field (RFC 8601): writing ours, removing forgeries.

`header(...)` turns the SPF, DKIM, DMARC and ARC results into one field, one
result per folded line. Every value that came from outside (domains,
selectors, reasons) is reduced to printable ASCII and written as a token when
it is one, else as a quoted-string, so no CR, LF, ';', '(' or '"' from a
sender can end a result early, open a comment or start a new header field.

`strip_forged(header_block, authserv_id)` removes every Authentication-Results
field that claims to come from us (RFC 8601 5), with its continuation lines,
and keeps every other byte as it was. Both are pure functions: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .dkim_verify import DkimResult
from .dmarc import DmarcResult
from .spf import SpfResult, printable

MAX_VALUE = 255  # values are cut to this: quoted, at most ~520 octets, a line stays below 998
FOLD_AT = 76  # fold before a part that would make the line longer
# RFC 2045 5.1 token: printable ASCII except SPACE, CTLs and tspecials.
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
# RFC 8601 2.2 pvalue: also a bare [local-part "@"] domain-name.
_ADDRESS = re.compile(r"(?:[!#$%&'*+\-.0-9A-Z^_`a-z{|}~/=?]+@)?[A-Za-z0-9_.-]+")


def header(
    authserv_id: str,
    spf: SpfResult | None,
    dkim_results: Sequence[DkimResult],
    dmarc: DmarcResult | None,
    arc: str | None = None,
) -> bytes:
    """One Authentication-Results field, CRLF-terminated (RFC 8601 2.2)."""
    if not _TOKEN.fullmatch(authserv_id):
        raise ValueError(f"authserv-id must be a token (a host name): {authserv_id!r}")
    results: list[list[str]] = []
    if spf is not None:
        ptype = "smtp.helo" if spf.scope == "helo" else "smtp.mailfrom"  # RFC 8601 2.7.2
        results.append([f"spf={_result(spf.result)}", f"{ptype}={_pvalue(spf.domain)}"])
    for r in dkim_results:
        parts = [f"dkim={_result(r.result)}"]  # RFC 8601 2.7.1
        if r.reason and r.result != "pass":
            parts.append(f"reason={_quoted(r.reason)}")
        if r.domain:
            parts.append(f"header.d={_pvalue(r.domain)}")
        if r.selector:
            parts.append(f"header.s={_pvalue(r.selector)}")
        if r.algorithm:
            parts.append(f"header.a={_pvalue(r.algorithm)}")
        results.append(parts)
    if dmarc is not None:
        # RFC 7489 11.2: method dmarc, ptype header.from; the policy in a comment
        # (only words from our own fixed lists go inside it).
        parts = [f"dmarc={_result(dmarc.result)}"]
        if dmarc.result == "fail":
            parts.append(f"(p={_word(dmarc.published)} applied={_word(dmarc.policy)})")
        if dmarc.domain:
            parts.append(f"header.from={_pvalue(dmarc.domain)}")
        results.append(parts)
    if arc is not None:
        results.append([f"arc={_result(arc)}"])  # RFC 8617 7.2
    if not results:
        results.append(["none"])  # RFC 8601 2.2 no-result
    lines = [f"Authentication-Results: {authserv_id}"]
    for parts in results:
        # RFC 8601 2.2: CFWS may stand between the parts of a resinfo: fold there.
        lines[-1] += ";"
        lines.append(parts[0])
        for part in parts[1:]:
            if len(lines[-1]) + 1 + len(part) > FOLD_AT:
                lines.append("\t" + part)
            else:
                lines[-1] += " " + part
    return "\r\n\t".join(lines).encode("ascii") + b"\r\n"


def _result(value: str) -> str:
    value = value.lower()
    return value if re.fullmatch(r"[a-z]{1,20}", value) else "permerror"


def _word(value: str) -> str:
    return value if value in ("none", "quarantine", "reject") else "none"


def _pvalue(value: str) -> str:
    """A property value: bare when it is a token or an address, else quoted."""
    value = printable(value)[:MAX_VALUE]
    if _TOKEN.fullmatch(value) or _ADDRESS.fullmatch(value):
        return value
    return _quoted(value)


def _quoted(value: str) -> str:
    """RFC 5322 3.2.4 quoted-string, of printable ASCII only."""
    value = printable(value)[:MAX_VALUE]
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- removing forged fields ---------------------------------------------------

_LINE = re.compile(rb"[^\n]*\n|[^\n]+")  # lines with their own endings, CRLF or LF
_FIELD_NAME = re.compile(rb"authentication-results[ \t]*:", re.IGNORECASE)


def strip_forged(header_block: bytes, authserv_id: str) -> bytes:
    """`header_block` without the Authentication-Results fields whose authserv-id
    is `authserv_id` (compared case-insensitively), continuation lines included.
    Everything else, down to line endings and a body after the blank line, is
    kept byte for byte. RFC 8601 5: such fields arriving from outside are forged."""
    ours = authserv_id.lower()
    out: list[bytes] = []
    field: list[bytes] = []

    def flush() -> None:
        if field and not _is_ours(b"".join(field), ours):
            out.extend(field)
        field.clear()

    lines = iter(_LINE.findall(header_block))
    for line in lines:
        if line in (b"\r\n", b"\n"):  # the end of the header: the rest is body
            flush()
            out.append(line)
            out.extend(lines)
            break
        if line[:1] in (b" ", b"\t") and field:
            field.append(line)  # a continuation of the field being read
            continue
        flush()
        if _FIELD_NAME.match(line):
            field.append(line)
        else:
            out.append(line)
    flush()
    return b"".join(out)


def _is_ours(field: bytes, ours: str) -> bool:
    """Whether this Authentication-Results field names `ours` as its authserv-id."""
    value = field.split(b":", 1)[1]
    value = re.sub(rb"\r?\n", b"", value).decode("latin-1")
    return (_authserv_id(value) or "").lower() == ours


def _authserv_id(value: str) -> str | None:
    """RFC 8601 2.2: [CFWS] authserv-id, where authserv-id = value (token or quoted-string)."""
    i = _skip_cfws(value, 0)
    if i < len(value) and value[i] == '"':
        out: list[str] = []
        i += 1
        while i < len(value) and value[i] != '"':
            if value[i] == "\\":
                i += 1
            if i < len(value):
                out.append(value[i])
            i += 1
        return "".join(out).strip()
    m = _TOKEN.match(value, i)
    return m[0] if m else None


def _skip_cfws(value: str, i: int) -> int:
    """Past white space and (nested, RFC 5322 3.2.2) comments."""
    depth = 0
    while i < len(value):
        c = value[i]
        if c == "\\" and depth:
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif not depth and c not in " \t":
            break
        i += 1
    return i
