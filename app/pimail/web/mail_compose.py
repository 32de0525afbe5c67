"""Writing mail in the webmail: what the compose form starts with (new,
reply, reply to all, forward, a draft reopened) and the RFC 5322 message it
turns into. Pure functions; sending and saving are web/mail.py's (through
smtp/submission.py's Submitter, the path SMTP submission takes).

Replies follow RFC 5322 3.6.4 (In-Reply-To: the parent's Message-ID;
References: the parent's References, else its In-Reply-To, then its
Message-ID) and 3.6.2/3.6.3 (Reply-To wins over From). The message is built
with the stdlib `email` package (policy SMTP: CRLF), text as UTF-8 in
quoted-printable when it is not plain ASCII, attachments in base64.
"""

from __future__ import annotations

import base64
import email.policy
import email.utils
import io
import re
import secrets
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage, Message
from typing import IO

from . import mail_message as mm

MAX_REFERENCES = 20  # ids kept in References (the first and the latest ones)
QUOTE_LIMIT = 200_000  # characters of the original quoted in a reply


class ComposeError(Exception):
    """Something in the form that cannot be sent as it is; the text says what."""


@dataclass
class Kept:
    """An attachment carried over from a stored message (forward, draft)."""

    ref: str  # "folder:uid:part"
    filename: str
    content_type: str
    size: int


@dataclass
class Draft:
    """What the compose form holds."""

    to: str = ""
    cc: str = ""
    bcc: str = ""
    subject: str = ""
    body: str = ""
    in_reply_to: str = ""
    references: str = ""
    kept: list[Kept] = field(default_factory=list)
    attach_message: str = ""  # "folder:uid": the original, forwarded as an attachment
    attach_name: str = ""
    replied: str = ""  # "folder:uid:flag": flag the original once sent (\\Answered, $Forwarded)
    draft: str = ""  # "folder:uid": the draft this replaces when saved or sent


@dataclass
class Upload:
    """A file to attach: its octets, or a file to read them from (an upload,
    spooled to disk by web/body.py), which build() encodes a slice at a time."""

    filename: str
    content_type: str
    data: bytes = b""
    file: IO[bytes] | None = None


def _format(pairs: list[tuple[str, str]]) -> str:
    return ", ".join(email.utils.formataddr(p) if p[0] else p[1] for p in pairs)


def _prefixed(subject: str, prefix: str) -> str:
    if re.match(rf"^\s*{prefix}\s*:", subject, re.IGNORECASE):
        return subject
    return f"{prefix}: {subject}".strip()


def _quote(text: str) -> str:
    text = text[:QUOTE_LIMIT]
    return "\n".join(">" + (" " + line if line and not line.startswith(">") else line)
                     for line in text.split("\n"))  # fmt: skip


def references(message: Message) -> str:
    """RFC 5322 3.6.4: the parent's References (or In-Reply-To) and its Message-ID."""
    ids = mm.raw_ids(message, "references").split() or mm.raw_ids(message, "in-reply-to").split()
    own = mm.raw_ids(message, "message-id").split()
    ids = [*ids, *own[:1]]
    if len(ids) > MAX_REFERENCES:  # keep the thread's root and the latest
        ids = ids[:1] + ids[-(MAX_REFERENCES - 1) :]
    return " ".join(dict.fromkeys(ids))


def reply(reading: mm.Reading, ref: str, mine: set[str], to_all: bool) -> Draft:
    """A reply (to all: every To and Cc but our own addresses)."""
    msg = reading.message
    to = mm.addresses(msg, "reply-to") or mm.addresses(msg, "from")
    cc: list[tuple[str, str]] = []
    if to_all:
        seen = {a.lower() for _, a in to} | mine
        for pair in mm.addresses(msg, "to", "cc"):
            if pair[1].lower() not in seen:
                seen.add(pair[1].lower())
                cc.append(pair)
        if all(a.lower() in mine for _, a in to) and cc:  # replying to our own message
            to, cc = cc[:1], cc[1:]
    who = reading.headers["from"] or "someone"
    when = reading.headers["date"]
    intro = f"On {when}, {who} wrote:" if when else f"{who} wrote:"
    return Draft(
        to=_format(to),
        cc=_format(cc),
        subject=_prefixed(reading.headers["subject"], "Re"),
        body=f"\n\n{intro}\n{_quote(mm.plain_body(reading).rstrip())}\n",
        in_reply_to=" ".join(mm.raw_ids(msg, "message-id").split()[:1]),
        references=references(msg),
        replied=f"{ref}:\\Answered",
    )


def forward(reading: mm.Reading, ref: str, attached: bool) -> Draft:
    """A forward: the original inline (its text and its attachments), or the
    whole original attached as message/rfc822."""
    draft = Draft(subject=_prefixed(reading.headers["subject"], "Fwd"), replied=f"{ref}:$Forwarded")
    if attached:
        draft.attach_message = ref
        draft.attach_name = mm.safe_filename(reading.headers["subject"][:80] + ".eml",
                                             "message/rfc822", 0)  # fmt: skip
        return draft
    lines = ["", "", "---------- Forwarded message ----------"]
    for name in ("from", "date", "subject", "to", "cc"):
        if reading.headers.get(name):
            lines.append(f"{name.title()}: {reading.headers[name]}")
    draft.body = "\n".join(lines) + "\n\n" + mm.plain_body(reading)[:QUOTE_LIMIT] + "\n"
    draft.kept = _kept(reading, ref)
    return draft


def reopen(reading: mm.Reading, ref: str) -> Draft:
    """A saved draft, back in the form."""
    msg = reading.message
    return Draft(
        to=_format(mm.addresses(msg, "to")),
        cc=_format(mm.addresses(msg, "cc")),
        bcc=_format(mm.addresses(msg, "bcc")),
        subject=reading.headers["subject"],
        body=mm.plain_body(reading),
        in_reply_to=" ".join(mm.raw_ids(msg, "in-reply-to").split()[:1]),
        references=mm.raw_ids(msg, "references"),
        kept=_kept(reading, ref),
        draft=ref,
    )


def _kept(reading: mm.Reading, ref: str) -> list[Kept]:
    return [Kept(f"{ref}:{a.index}", a.filename, a.content_type, a.size)
            for a in reading.attachments]  # fmt: skip


# -- the message ------------------------------------------------------------------------


def parse_addresses(text: str, field_name: str) -> list[Address]:
    """The addresses of a To/Cc/Bcc field as typed ("Name <a@b>, c@d")."""
    text = text.replace("\r", " ").replace("\n", " ").strip()
    if not text:
        return []
    if len(text) > 10_000:
        raise ComposeError(f"The {field_name} field is too long.")
    out = []
    for display, address in email.utils.getaddresses([text]):
        if not address and not display:
            continue
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain or "." not in domain.strip(".") or " " in address:
            raise ComposeError(f"{field_name}: {address or display!r} is not an email address.")
        try:
            out.append(Address(display_name=display, username=local, domain=domain))
        except (ValueError, IndexError, TypeError) as e:
            raise ComposeError(f"{field_name}: {address!r} is not an email address.") from e
    return out


def _ids(text: str) -> str:
    return " ".join(re.findall(r"<[^<>\s]{1,250}>", text)[-MAX_REFERENCES:])


def build(
    sender: str,
    draft: Draft,
    uploads: list[Upload],
    forwarded: Message | None,
    *,
    message_id: str,
) -> bytes:
    """The message, CRLF, as it is stored in Sent or Drafts: with its Bcc field
    (without_bcc() takes it out of the copy that is sent)."""
    msg = EmailMessage(policy=email.policy.SMTP)
    try:
        msg["From"] = sender
        for name, value in (("To", draft.to), ("Cc", draft.cc), ("Bcc", draft.bcc)):
            found = parse_addresses(value, name)
            if found:
                msg[name] = found
        msg["Subject"] = draft.subject.replace("\r", " ").replace("\n", " ")[:1000]
        msg["Date"] = email.utils.formatdate(localtime=True)
        msg["Message-ID"] = message_id
        if _ids(draft.in_reply_to):
            msg["In-Reply-To"] = _ids(draft.in_reply_to).split()[-1]
        if _ids(draft.references):
            msg["References"] = _ids(draft.references)
    except ComposeError:
        raise
    except Exception as e:  # the header registry refuses what it cannot encode
        raise ComposeError(f"A header could not be written: {e}") from e
    body = draft.body.replace("\r\n", "\n")
    ascii_only = body.isascii() and all(len(line) <= 900 for line in body.split("\n"))
    msg.set_content(body, cte="7bit" if ascii_only else "quoted-printable")
    if forwarded is not None:
        msg.add_attachment(forwarded, filename=draft.attach_name or "forwarded.eml")
    streamed: list[tuple[bytes, IO[bytes]]] = []
    for upload in uploads:
        maintype, _, subtype = upload.content_type.partition("/")
        if maintype == "multipart" or not subtype or maintype == "message":
            maintype, subtype = "application", "octet-stream"
        data = upload.data
        if upload.file is not None:  # a stand-in, replaced by the file's base64 below
            data = secrets.token_bytes(30)
            streamed.append((base64.b64encode(data), upload.file))
        msg.add_attachment(data, maintype=maintype, subtype=subtype,
                           filename=upload.filename)  # fmt: skip
    try:
        skeleton = msg.as_bytes()
    except Exception as e:
        raise ComposeError(f"The message could not be written: {e}") from e
    return _fill_in(skeleton, streamed) if streamed else skeleton


B64_SLICE = 57 * 1024  # octets read at a time: 1024 base64 lines of 76 characters


def _fill_in(skeleton: bytes, streamed: list[tuple[bytes, IO[bytes]]]) -> bytes:
    """The message with each stand-in (a 40-character base64 line) replaced by
    its file in base64, in lines of 76 (RFC 2045 6.8), read a slice at a time:
    the message is in memory once, not the file, its base64 and the message."""
    out = io.BytesIO()
    position = 0
    for stand_in, file in streamed:
        at = skeleton.index(stand_in, position)
        out.write(skeleton[position:at])
        file.seek(0)
        first = True
        while piece := file.read(B64_SLICE):
            if not first:
                out.write(b"\r\n")
            out.write(base64.encodebytes(piece).rstrip(b"\n").replace(b"\n", b"\r\n"))
            first = False
        position = at + len(stand_in)
    out.write(skeleton[position:])
    return out.getvalue()


def without_bcc(data: bytes) -> bytes:
    """The message without its Bcc field (RFC 5322 3.6.3: the copies sent
    must not show the blind recipients)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data
    lines = data[: end + 2].split(b"\r\n")
    kept, skipping = [], False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.lower().startswith(b"bcc:")
        if not skipping:
            kept.append(line)
    return b"\r\n".join(kept) + data[end + 2 :]
