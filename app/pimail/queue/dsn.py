"""Delivery status notifications: the bounce and delay reports pimail sends (RFC 3464).

Pure functions, no I/O. The queue calls `build_dsn()` when it gives up on
recipients (Action failed), when they have waited a long time (Action
delayed), or when success was asked for (RFC 3461 NOTIFY=SUCCESS), and enqueues
the bytes with a null reverse-path (RFC 5321 4.5.5) to the original sender,
but only if `should_bounce()` allows: never a report about a report.

The report is a multipart/report (RFC 6522) of three parts, in this order:

1. text/plain: what happened, in words a non-technical reader can follow:
   which addresses, why (the remote reply), and for delays until when we try.
2. message/delivery-status (RFC 3464 2.2, 2.3): the same as fields for
   programs: per-message fields, then one block per recipient.
3. text/rfc822-headers (RFC 6522 4): the header section of the original,
   never its body (privacy, size), at most 64 KiB. Left out if there is none.

Everything coming from outside (remote replies above all, but also addresses
and original headers) is treated as hostile: field values are one line of
printable characters, capped, folded at white space, so no line of the result
exceeds 998 octets (RFC 5322 2.1.1) and every line ends in CRLF.

Character sets. When the original sender or a recipient address is not ASCII
(SMTPUTF8, RFC 6531), parts 2 and 3 are message/global-delivery-status and
message/global-headers (RFC 6533) and carry UTF-8 as 8bit; the result then
needs SMTPUTF8 from the next hop anyway. Otherwise the report is 7-bit, with
one exception: original headers with 8-bit octets (a raw UTF-8 Subject from a
careless client) are carried unchanged under text/rfc822-headers with
Content-Transfer-Encoding 8bit, as Postfix and others do. They are the
sender's own octets going back to the sender; re-encoding cannot repair what
was never valid, and dropping them would hide what was sent. Such a report
needs BODY=8BITMIME when relayed (any octet > 127 in the result says so).
"""

from __future__ import annotations

import datetime
import email.parser
import email.policy
import email.quoprimime
import email.utils
import re
import secrets
import textwrap
import time
import unicodedata
from dataclasses import dataclass

# RFC 3464 2.3.3: the Action field.
ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")
_SUCCESS_ACTIONS = ("delivered", "relayed", "expanded")

# pimail's own conditions as enhanced status codes (RFC 3463 3, IANA registry of RFC 5248).
# RFC 3463 3.2 X.1.2 "bad destination system address": the domain does not
# exist (NXDOMAIN), or has neither MX nor address records (RFC 5321 5.1).
NO_SUCH_DOMAIN = "5.1.2"
# RFC 7505: a null MX ("MX 0 .") says the domain accepts no mail; 556 5.1.10.
NULL_MX = "5.1.10"
# RFC 3463 3.5 X.4.1 "no answer from host": connection refused or timed out.
CONNECTION_FAILED = "4.4.1"
# RFC 3463 3.5 X.4.3 "directory server failure": DNS SERVFAIL or timeout.
DNS_FAILURE = "4.4.3"
# RFC 3463 3.5 X.4.7 "delivery time expired": see `expired_status()`.
DELIVERY_EXPIRED = "4.4.7"
# MTA-STS (RFC 8461 5): with an "enforce" policy an MX that does not offer
# STARTTLS, or whose certificate does not validate for its name, must not get
# the message, and delivery must not fail permanently before the policy is
# fetched again: so class 4. RFC 8461 names no code; these are the RFC 3463 3.8
# ones Postfix uses for the same conditions:
# X.7.4 "security features not supported": STARTTLS required but not offered.
TLS_NOT_OFFERED = "4.7.4"
# X.7.5 "cryptographic failure": TLS handshake or certificate validation failed.
TLS_NOT_TRUSTED = "4.7.5"
# RFC 3463 3.6 X.5.0: a reply that makes no sense as a final reply.
PROTOCOL_ERROR = "5.5.0"

DIAGNOSTIC_MAX = 900  # octets of remote reply text kept, well under 998 per line
HEADERS_MAX = 64 * 1024  # octets of the original header section returned
ADDRESS_MAX = 512  # octets; RFC 5321 4.5.3.1.3 allows a path of 256
LINE_MAX = 998  # octets per line without CRLF, RFC 5322 2.1.1
_FOLD_AT = 78  # RFC 5322 2.1.1: lines SHOULD be no longer than 78 characters
_TEXT_WIDTH = 72

# RFC 3463 2: class "." subject "." detail, no leading zeros, 1 to 3 digits.
_ENHANCED = re.compile(r"([245])\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})(?=[ \t]|$)")
_STATUS = re.compile(r"[245]\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})")
# One line of an SMTP reply (RFC 5321 4.2): code, "-" or " ", optionally an
# enhanced code (RFC 2034 4).
_REPLY_LINE = re.compile(
    r"(?P<code>[2-5][0-9][0-9])(?:[ -]|$)(?:(?P<enhanced>[245]\.[0-9]{1,3}\.[0-9]{1,3})(?: |$))?"
)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LINE_BREAK_BYTES = re.compile(rb"\r\n|\r|\n")
_TYPED_ADDRESS = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)[ \t]*;[ \t]*(.*)", re.DOTALL)
_MSG_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]{1,900}>")
# Control, format (bidi overrides), surrogate, private, unassigned, line and
# paragraph separators: nothing a reader should see or a parser split on.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


@dataclass
class RecipientStatus:
    recipient: str  # the address we tried (Final-Recipient: rfc822;...)
    action: str  # 'failed' | 'delayed' | 'delivered' | 'relayed' | 'expanded'
    status: str  # enhanced status code, e.g. '5.1.1', '4.4.1'
    original_recipient: str | None = None  # ORCPT if known (Original-Recipient)
    remote_mta: str | None = None  # host name of the MX that answered (Remote-MTA: dns;...)
    diagnostic: str | None = None  # the remote reply text (Diagnostic-Code: smtp;...)
    last_attempt: float | None = None  # epoch seconds
    will_retry_until: float | None = None  # for 'delayed'


# -- Status codes -----------------------------------------------------------


def status_from_reply(code: int, text: str) -> str:
    """The enhanced status code for an SMTP reply.

    `text` is the reply text, with or without the reply code in front
    ("550 5.1.1 no such user" or "5.1.1 no such user"); only its first line counts.
    """
    klass = code // 100
    if klass not in (2, 4, 5):
        # RFC 5321 4.2.1: codes outside 2xx-5xx are to be treated as fatal;
        # an intermediate 3xx where a final reply was due is no better.
        return PROTOCOL_ERROR
    first = _LINE_BREAK.split(text, maxsplit=1)[0].lstrip()
    reply = _REPLY_LINE.match(first)
    if reply is not None and reply.group("code") == str(code):
        first = first[reply.end("code") :].lstrip(" -")
    enhanced = _ENHANCED.match(first)
    # RFC 3463 2: the class must agree with the reply code; when it does not,
    # the reply code wins and the detail is unknown.
    if enhanced is not None and enhanced.group(1) == str(klass):
        return enhanced.group(0)
    return f"{klass}.0.0"


def expired_status(last_status: str | None) -> str:
    """The Status for a recipient given up on after the queue lifetime (Action failed).

    RFC 3463 3.5 has X.4.7 "delivery time expired", but "if possible, the code
    for the actual problem found when delivery was attempted should be returned
    rather than this code". And class 4 with Action failed is exactly what RFC
    3463 2 describes: "persistence of some temporary condition has caused
    abandonment [...] sending in the future may be successful". So: the last
    attempt's 4.x.x status if there is one, else 4.4.7. Never 5.4.7: class 5
    would claim the condition is permanent, which nobody found out.
    """
    if last_status is not None and _STATUS.fullmatch(last_status) and last_status[0] == "4":
        return last_status
    return DELIVERY_EXPIRED


def should_bounce(sender: str) -> bool:
    """Whether a report may be sent to `sender` (the original MAIL FROM).

    Not to the null reverse-path ('' or '<>'): RFC 5321 6.1 and 4.5.5 send
    notifications with a null reverse-path precisely so that nobody replies to
    them ("SHOULD NOT reply to messages with a null reverse-path"): never a
    report about a report. Not to MAILER-DAEMON@... either: that is how reports
    from systems that get the envelope wrong still look, and answering them is
    how mail loops start.
    """
    address = sender.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    if not address:
        return False
    local = address.rpartition("@")[0] if "@" in address else address
    return local.strip('"').lower() != "mailer-daemon"


# -- Sanitising what came from outside --------------------------------------


def _one_line(text: str) -> str:
    """`text` as one line of printable characters with single spaces."""
    chars = [
        " " if ch.isspace() or unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in text
    ]
    return " ".join("".join(chars).split())


def _cap(text: str, limit: int) -> str:
    """`text` cut to at most `limit` octets of UTF-8, on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    marker = " [...]"
    cut = data[: limit - len(marker)].decode("utf-8", "ignore")
    return cut.rstrip() + marker


def _ascii(text: str) -> str:
    return "".join(ch if ord(ch) < 128 else "?" for ch in text)


def clean_diagnostic(text: str) -> str:
    """A remote reply as one safe line: for Diagnostic-Code and for people.

    A multi-line reply ("550-5.1.1 a", "550 5.1.1 b") becomes "550 5.1.1 a b":
    the repeated code and enhanced code are dropped from continuation lines
    (RFC 5321 4.2.1, RFC 2034 4). Control characters go, white space collapses,
    and the result is capped at `DIAGNOSTIC_MAX` octets.
    """
    lines = [line for line in _LINE_BREAK.split(text[: 8 * DIAGNOSTIC_MAX]) if line.strip()]
    if not lines:
        return ""
    head = _REPLY_LINE.match(lines[0])
    if head is not None:
        code, enhanced = head.group("code"), head.group("enhanced")
        prefix = f"{code} {enhanced} " if enhanced else f"{code} "
        joined = [prefix + lines[0][head.end() :]]
        for line in lines[1:]:
            more = _REPLY_LINE.match(line)
            if more and more.group("code") == code and more.group("enhanced") in (None, enhanced):
                line = line[more.end() :]
            joined.append(line)
        lines = joined
    return _cap(_one_line(" ".join(lines)), DIAGNOSTIC_MAX)


def _address(address: str) -> str:
    address = _one_line(address)
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    return _cap(address, ADDRESS_MAX)


def _host(name: str) -> str:
    """A host name for a "dns;" field: ASCII (A-labels), no spaces."""
    name = _one_line(name).replace(" ", "").rstrip(".")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            name = _ascii(name)
    return _cap(name, 255)


def original_header_section(data: bytes) -> bytes:
    """The header section of an original message, fit to return in part 3.

    Up to the first blank line (or all of `data` if it is only a truncated
    header block), at most `HEADERS_MAX` octets of whole lines. Normalised to
    what 8bit data may be (RFC 2045 2.8): CRLF line ends, no NUL, no line over
    998 octets (longer ones are cut).
    """
    out: list[bytes] = []
    size = 0
    for line in _LINE_BREAK_BYTES.split(data[: 2 * HEADERS_MAX]):
        if not line:
            break
        line = line.replace(b"\x00", b"")[:LINE_MAX]
        if size + len(line) + 2 > HEADERS_MAX:
            break
        out.append(line + b"\r\n")
        size += len(line) + 2
    return b"".join(out)


def _original_fields(header_section: bytes) -> tuple[str | None, str | None]:
    """Subject and Message-ID of the original, if they can be read safely."""
    try:
        parsed = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(
            header_section
        )
        subject = parsed.get("subject")
        message_id = parsed.get("message-id")
    except Exception:  # hostile headers: what cannot be read is left out
        return None, None
    subject_text = _cap(_one_line(str(subject)), 200) if subject is not None else None
    msg_id = _MSG_ID.fullmatch(str(message_id).strip()) if message_id is not None else None
    return subject_text or None, msg_id.group(0) if msg_id else None


# -- Formatting -------------------------------------------------------------


def _date(timestamp: float) -> str:
    """An RFC 5322 3.3 date-time in UTC ("+0000", not the obsolete "GMT")."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return email.utils.format_datetime(moment)


def _human_date(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return f"{moment.day} {_MONTHS[moment.month - 1]} {moment.year}, {moment:%H:%M} UTC"


def _duration(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    if minutes < 120:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    hours = round(minutes / 60)
    if hours < 48:
        return f"{hours} hours"
    return f"{round(hours / 24)} days"


def _fold(name: str, value: str) -> list[str]:
    """A header field as lines, folded at spaces (RFC 5322 2.2.3).

    A fold turns one of the single spaces of `value` into CRLF + that space, so
    unfolding gives back `name: value` exactly. Values are capped beforehand:
    a line with no space to fold at still stays under 998 octets.
    """
    words = value.split(" ")
    lines: list[str] = []
    current = f"{name}: {words[0]}"
    for word in words[1:]:
        if word and len(f"{current} {word}".encode()) > _FOLD_AT:
            lines.append(current)
            current = f" {word}"
        else:
            current = f"{current} {word}"
    lines.append(current)
    return lines


def _typed_address(address: str, utf8: bool) -> str:
    """An address with its RFC 3464 2.1.2 type: rfc822, or utf-8 (RFC 6533 3)."""
    address = _address(address)
    if utf8 and not address.isascii():
        return f"utf-8; {address}"
    return f"rfc822; {address}"


def _original_recipient(orcpt: str, utf8: bool) -> str:
    """RFC 3464 2.3.1: the ORCPT as given, type included (RFC 3461 4.2)."""
    typed = _TYPED_ADDRESS.fullmatch(orcpt.strip())
    if typed is None:
        return _typed_address(orcpt, utf8)
    address = _address(typed.group(2))
    if not utf8:
        address = _ascii(address)
    return f"{typed.group(1).lower()}; {address}"


# -- Part 2: message/delivery-status ------------------------------------------


def _recipient_fields(r: RecipientStatus, utf8: bool) -> list[str]:
    """RFC 3464 2.3: one per-recipient block, fields in the order of its ABNF."""
    lines: list[str] = []
    if r.original_recipient:
        orcpt = _original_recipient(r.original_recipient, utf8)
        lines += _fold("Original-Recipient", orcpt)  # 2.3.1
    lines += _fold("Final-Recipient", _typed_address(r.recipient, utf8))  # 2.3.2
    lines.append(f"Action: {r.action}")  # 2.3.3
    lines.append(f"Status: {r.status}")  # 2.3.4
    if r.remote_mta:
        lines += _fold("Remote-MTA", f"dns; {_host(r.remote_mta)}")  # 2.3.5
    if r.diagnostic:
        diagnostic = clean_diagnostic(r.diagnostic)
        if not utf8:
            diagnostic = _ascii(diagnostic)  # RFC 3464 2.3.6: *text, US-ASCII
        if diagnostic:
            lines += _fold("Diagnostic-Code", f"smtp; {diagnostic}")  # 2.3.6
    if r.last_attempt is not None:
        lines.append(f"Last-Attempt-Date: {_date(r.last_attempt)}")  # 2.3.7
    if r.action == "delayed" and r.will_retry_until is not None:
        lines.append(f"Will-Retry-Until: {_date(r.will_retry_until)}")  # 2.3.9
    return lines


def _delivery_status(
    reporting_mta: str,
    envelope_id: str | None,
    arrival: float,
    recipients: list[RecipientStatus],
    utf8: bool,
) -> str:
    # RFC 3464 2.2: per-message fields, then a blank line before each recipient block.
    lines: list[str] = []
    if envelope_id:
        # RFC 3464 2.2.1, RFC 3461 4.4: ENVID is printable ASCII, at most 100 characters.
        envid = _cap(_ascii(_one_line(envelope_id)).replace(" ", ""), 100)
        lines += _fold("Original-Envelope-Id", envid)
    lines.append(f"Reporting-MTA: dns; {_host(reporting_mta)}")  # 2.2.2
    lines.append(f"Arrival-Date: {_date(arrival)}")  # 2.2.5
    for r in recipients:
        lines.append("")
        lines += _recipient_fields(r, utf8)
    return "\r\n".join(lines) + "\r\n"


# -- Part 1: the human explanation --------------------------------------------

# Plain words for the common statuses, by "subject.detail" (RFC 3463 3).
_EXPLANATIONS = {
    "1.1": "This address does not exist. Please check it for typing mistakes.",
    "1.2": "The domain (the part after the @) does not exist or cannot receive email. "
    "Please check it for typing mistakes.",
    "1.3": "The address is not written correctly.",
    "1.10": "This domain does not accept email at all.",
    "2.1": "The mailbox is switched off and is not accepting messages.",
    "2.2": "The recipient's mailbox is full.",
    "2.3": "The message is larger than the recipient's mail system accepts.",
    "3.4": "The message is larger than the recipient's mail system accepts.",
    "4.1": "The recipient's mail server could not be reached.",
    "4.2": "The connection to the recipient's mail server kept breaking off.",
    "4.3": "The recipient's domain could not be looked up for the moment.",
    "4.4": "No way to reach the recipient's mail server could be found.",
    "4.7": "It could not be delivered in time.",
    "7.1": "The recipient's mail server refused the message (a policy or spam filter).",
    "7.4": "The recipient's domain requires a secure connection, and its mail server "
    "did not offer one.",
    "7.5": "The secure connection to the recipient's mail server could not be verified.",
}


def _explanation(status: str) -> str:
    klass, _, rest = status.partition(".")
    if rest in _EXPLANATIONS:
        return _EXPLANATIONS[rest]
    if klass == "5":
        return "The recipient's mail system refused the message."
    if klass == "4":
        return "A temporary problem stands in the way of delivery."
    return ""


def _wrap(text: str, indent: int = 0) -> str:
    pad = " " * indent
    return textwrap.fill(
        text,
        width=_TEXT_WIDTH,
        initial_indent=pad,
        subsequent_indent=pad,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _recipient_text(r: RecipientStatus, arrival: float, now: float) -> str:
    lines = [f"  {_address(r.recipient)}"]
    if r.action in ("failed", "delayed"):
        lines.append(_wrap(_explanation(r.status), 4))
    if r.action == "failed" and r.status.startswith("4."):
        tried = (r.last_attempt or now) - arrival
        lines.append(_wrap(f"We kept trying for {_duration(tried)} and have now given up.", 4))
    if r.diagnostic and (diagnostic := clean_diagnostic(r.diagnostic)):
        server = f" ({_host(r.remote_mta)})" if r.remote_mta else ""
        lines.append(_wrap(f"Their mail server{server} replied:", 4))
        lines.append(_wrap(diagnostic, 6))
    if r.action == "delayed" and r.will_retry_until is not None:
        until = _human_date(r.will_retry_until)
        lines.append(_wrap(f"We will keep trying until {until}.", 4))
    return "\n".join(line for line in lines if line)


def _human_text(
    reporting_mta: str,
    recipients: list[RecipientStatus],
    arrival: float,
    now: float,
    postmaster: str | None,
    subject: str | None,
) -> str:
    failed = [r for r in recipients if r.action == "failed"]
    delayed = [r for r in recipients if r.action == "delayed"]
    succeeded = [r for r in recipients if r.action in _SUCCESS_ACTIONS]
    about = f' with the subject "{subject}"' if subject else ""
    message = f"Your message{about}, sent on {_human_date(arrival)},"
    paragraphs = [f"This is the mail system at {_host(reporting_mta)}."]
    if failed:
        paragraphs.append(_wrap(f"{message} could not be delivered to:"))
        paragraphs += [_recipient_text(r, arrival, now) for r in failed]
        message = "It"
    if delayed:
        paragraphs.append(_wrap(f"{message} has not been delivered yet to:"))
        paragraphs += [_recipient_text(r, arrival, now) for r in delayed]
        paragraphs.append(
            _wrap(
                "There is nothing you need to do: we keep trying, and will tell you if we "
                "have to give up. Please do not send the message again."
            )
        )
        message = "It"
    if succeeded:
        paragraphs.append(_wrap(f"{message} was delivered to:"))
        for r in succeeded:
            note = {
                "relayed": "    (handed on to a mail system that does not confirm delivery)",
                "expanded": "    (a list or forwarding address: passed on to its members)",
            }.get(r.action)
            paragraphs.append(f"  {_address(r.recipient)}" + (f"\n{note}" if note else ""))
    if postmaster:
        help_text = f"If you need help, write to {_address(postmaster)} and include this notice."
        paragraphs.append(_wrap(help_text))
    paragraphs.append(
        _wrap(
            "The technical report and the headers of your message (not its text) "
            "follow, for your mail administrator."
        )
    )
    return "\n\n".join(paragraphs) + "\n"


# -- The whole report ---------------------------------------------------------


def _subject(recipients: list[RecipientStatus]) -> str:
    actions = {r.action for r in recipients}
    if "failed" in actions:  # a failure matters more than a delay
        return "Undelivered Mail Returned to Sender"
    if "delayed" in actions:
        return "Delayed Mail (still being retried)"
    return "Successful Mail Delivery Report"


def _check(r: RecipientStatus) -> None:
    if r.action not in ACTIONS:
        raise ValueError(f"unknown DSN action {r.action!r}")
    if not _STATUS.fullmatch(r.status):
        raise ValueError(f"not an enhanced status code: {r.status!r}")
    # RFC 3464 2.3.3, RFC 3463 2: a delay is transient, a success class 2; a
    # failure is class 5, or class 4 when we gave up on a transient condition.
    wanted = {"failed": "45", "delayed": "4"}.get(r.action, "2")
    if r.status[0] not in wanted:
        raise ValueError(f"status {r.status} does not fit action {r.action}")


def _part(headers: list[str], body: bytes) -> bytes:
    return ("\r\n".join(headers) + "\r\n\r\n").encode("utf-8") + body


def _text_part(text: str, utf8: bool) -> bytes:
    text = text.replace("\n", "\r\n")
    description = "Content-Description: Notification"
    if text.isascii():
        headers = ["Content-Type: text/plain; charset=us-ascii", "Content-Transfer-Encoding: 7bit"]
        return _part([description, *headers], text.encode("ascii"))
    if utf8:  # the report needs SMTPUTF8 anyway; 8bit reads better in the raw
        headers = ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
        return _part([description, *headers], text.encode("utf-8"))
    # RFC 2045 6.7: quoted-printable keeps the report 7-bit.
    encoded = email.quoprimime.body_encode(text.encode("utf-8").decode("latin-1"), eol="\r\n")
    headers = [
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: quoted-printable",
    ]
    return _part([description, *headers], encoded.encode("ascii"))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _headers_part(header_section: bytes, utf8: bool) -> bytes:
    encoding = "7bit" if header_section.isascii() else "8bit"
    if utf8:
        content_type = "message/global-headers"  # RFC 6533 4
    else:
        content_type = "text/rfc822-headers"  # RFC 6522 4
        if encoding == "8bit" and _is_utf8(header_section):  # see the module docstring
            content_type += "; charset=utf-8"  # else unknown octets: no charset to name
    headers = [
        "Content-Description: Undelivered message headers",
        f"Content-Type: {content_type}",
        f"Content-Transfer-Encoding: {encoding}",
    ]
    return _part(headers, header_section)


def build_dsn(
    *,
    reporting_mta: str,
    original_sender: str,
    original_headers: bytes,
    recipients: list[RecipientStatus],
    arrival: float,
    envelope_id: str | None = None,
    postmaster: str | None = None,
    now: float | None = None,
    message_id_domain: str | None = None,
) -> bytes:
    """A complete DSN message (RFC 3464) to `original_sender`, CRLF line ends.

    `postmaster`, if given, is named in the text as the person to ask and set
    as Reply-To: the report comes From MAILER-DAEMON, but a reply should reach
    a person (RFC 3464 2). Raises ValueError for a sender that gets no reports
    (`should_bounce`), no recipients, or an action/status that is not valid.
    """
    if not should_bounce(original_sender):
        raise ValueError("no report to the null sender or a mailer-daemon (RFC 5321 6.1)")
    if not recipients:
        raise ValueError("a DSN reports on at least one recipient (RFC 3464 2.1)")
    for r in recipients:
        _check(r)
    now = time.time() if now is None else now
    sender = _address(original_sender)
    addresses = [sender] + [r.recipient for r in recipients]
    addresses += [r.original_recipient for r in recipients if r.original_recipient]
    utf8 = not all(address.isascii() for address in addresses)  # RFC 6533 when needed

    header_section = original_header_section(original_headers)
    subject, original_id = _original_fields(header_section)
    status_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    status = _delivery_status(reporting_mta, envelope_id, arrival, recipients, utf8)
    parts = [
        _text_part(_human_text(reporting_mta, recipients, arrival, now, postmaster, subject), utf8),
        _part(
            [
                "Content-Description: Delivery report",
                f"Content-Type: {status_type}",  # RFC 3464 2.1, RFC 6533 4
                f"Content-Transfer-Encoding: {'7bit' if status.isascii() else '8bit'}",
            ],
            status.encode("utf-8"),
        ),
    ]
    if header_section:
        parts.append(_headers_part(header_section, utf8))

    boundary = _boundary(parts)
    host = _host(reporting_mta)
    id_domain = _host(message_id_domain or reporting_mta)
    headers = [f"From: Mail Delivery System <MAILER-DAEMON@{host}>", f"To: <{sender}>"]
    if postmaster:
        headers.append(f"Reply-To: <{_address(postmaster)}>")
    headers += [
        f"Subject: {_subject(recipients)}",
        f"Date: {_date(now)}",
        f"Message-ID: <{secrets.token_hex(12)}.{int(now)}@{id_domain}>",
    ]
    if original_id:  # threads the report with the message it is about
        headers += _fold("In-Reply-To", original_id) + _fold("References", original_id)
    headers += [
        "Auto-Submitted: auto-replied",  # RFC 3834 5
        "MIME-Version: 1.0",
        # RFC 6522 3: multipart/report with report-type=delivery-status (RFC 3464 2.1).
        "Content-Type: multipart/report; report-type=delivery-status;",
        f' boundary="{boundary}"',
    ]
    out = [("\r\n".join(headers) + "\r\n\r\n").encode("utf-8")]
    out.append(b"This is a MIME-encapsulated delivery status notification.\r\n")
    for part in parts:
        out.append(f"\r\n--{boundary}\r\n".encode("ascii") + part)
    out.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    return b"".join(out)


def _boundary(parts: list[bytes]) -> str:
    """A boundary that occurs in no part (RFC 2046 5.1.1)."""
    while True:
        boundary = f"pimail-dsn-{secrets.token_hex(16)}"
        if not any(boundary.encode("ascii") in part for part in parts):
            return boundary
