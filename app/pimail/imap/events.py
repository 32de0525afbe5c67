"""The events the IMAP parser hands to the server: commands as records, and framing.

Every client command becomes one frozen dataclass whose first field is its tag
(RFC 9051 6 and 9 give the grammar; `syntax.py` reads it). Besides commands,
the parser returns `NeedContinuation` (send "+ " for a synchronising literal),
`IdleDone` (the DONE ending IDLE) and the SASL exchange lines of AUTHENTICATE.
Passwords, SASL data and message bodies stay out of the reprs, so logging an
event never logs a secret or a message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from pimail.imap.grammar import SequenceSet
from pimail.imap.searchkey import SearchKey
from pimail.mime.section import Partial, Section


class Event:
    """Something the parser hands to the server (a command or a framing event)."""

    __slots__ = ()


@dataclass(frozen=True)
class Command(Event):
    tag: str


# -- any state (RFC 9051 6.1) and not authenticated (6.2) ------------------------


@dataclass(frozen=True)
class Capability(Command):
    pass


@dataclass(frozen=True)
class Noop(Command):
    pass


@dataclass(frozen=True)
class Logout(Command):
    pass


@dataclass(frozen=True)
class StartTLS(Command):
    pass


@dataclass(frozen=True)
class Login(Command):
    user: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Authenticate(Command):
    """AUTHENTICATE mechanism [initial-response] (RFC 9051 6.2.2, RFC 4959 SASL-IR).

    initial_response is None when absent, b"" for "=" (an empty response).
    """

    mechanism: str
    initial_response: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Id(Command):
    """ID NIL / ID (key value ...) (RFC 2971); parameters None for NIL."""

    parameters: tuple[tuple[str, str | None], ...] | None


# -- authenticated state (RFC 9051 6.3) --------------------------------------------


@dataclass(frozen=True)
class Enable(Command):
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class QResync:
    """The QRESYNC select parameter (RFC 7162 3.2.5).

    seq_match is (known sequence numbers, their UIDs) of seq-match-data.
    """

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True)
class Select(Command):
    """SELECT, or EXAMINE when readonly (RFC 9051 6.3.2, 6.3.3; RFC 7162 3.1.2, 3.2.5)."""

    mailbox: str
    readonly: bool = False
    condstore: bool = False
    qresync: QResync | None = None


@dataclass(frozen=True)
class Create(Command):
    """CREATE mailbox [(USE (attrs))] (RFC 9051 6.3.4, RFC 6154 3)."""

    mailbox: str
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True)
class Delete(Command):
    mailbox: str


@dataclass(frozen=True)
class Rename(Command):
    mailbox: str
    new_name: str


@dataclass(frozen=True)
class Subscribe(Command):
    mailbox: str


@dataclass(frozen=True)
class Unsubscribe(Command):
    mailbox: str


@dataclass(frozen=True)
class List(Command):
    """LIST, basic or extended (RFC 9051 6.3.9, RFC 5258, RFC 5819, RFC 6154).

    selection and return_options hold upper-case option names; status_items
    are the items of RETURN (STATUS (...)), with "STATUS" in return_options.
    """

    reference: str
    patterns: tuple[str, ...]
    selection: frozenset[str] = frozenset()
    return_options: frozenset[str] = frozenset()
    status_items: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lsub(Command):
    reference: str
    pattern: str


@dataclass(frozen=True)
class Namespace(Command):
    pass


@dataclass(frozen=True)
class Status(Command):
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class Append(Command):
    """APPEND mailbox [flags] [date-time] literal (RFC 9051 6.3.12; binary: RFC 3516 literal8)."""

    mailbox: str
    message: bytes = field(repr=False)
    flags: tuple[str, ...] = ()
    internal_date: datetime | None = None
    binary: bool = False


@dataclass(frozen=True)
class Idle(Command):
    pass


@dataclass(frozen=True)
class GetQuota(Command):
    root: str


@dataclass(frozen=True)
class GetQuotaRoot(Command):
    mailbox: str


@dataclass(frozen=True)
class SetQuota(Command):
    root: str
    limits: tuple[tuple[str, int], ...]  # (resource name, upper case; limit)


# -- selected state (RFC 9051 6.4) -----------------------------------------------


@dataclass(frozen=True)
class Check(Command):
    """CHECK (RFC 3501 6.4.1; gone from rev2, where it is a NOOP)."""


@dataclass(frozen=True)
class Close(Command):
    pass


@dataclass(frozen=True)
class Unselect(Command):
    pass


@dataclass(frozen=True)
class Expunge(Command):
    """EXPUNGE, or UID EXPUNGE uid_set (RFC 9051 6.4.3, 6.4.9; RFC 4315)."""

    uid_set: SequenceSet | None = None


@dataclass(frozen=True)
class Search(Command):
    """[UID] SEARCH [RETURN (...)] [CHARSET c] keys (RFC 9051 6.4.4).

    return_options is None without RETURN (an IMAP4rev1 client gets a SEARCH
    response); an empty set for RETURN () means ALL (RFC 4731 3.1).
    """

    criteria: SearchKey
    uid: bool = False
    charset: str | None = None
    return_options: frozenset[str] | None = None


@dataclass(frozen=True)
class FetchAttribute:
    """One FETCH data item (RFC 9051 6.4.5).

    name is FLAGS, INTERNALDATE, RFC822.SIZE, RFC822, RFC822.HEADER,
    RFC822.TEXT, ENVELOPE, BODY, BODYSTRUCTURE, UID, MODSEQ, BINARY or
    BINARY.SIZE. BODY with a section is BODY[section]; without, the
    non-extensible body structure. peek is set by BODY.PEEK / BINARY.PEEK.
    """

    name: str
    section: Section | None = None
    partial: Partial | None = None
    peek: bool = False

    def response_name(self) -> str:
        """The item's name in the FETCH response, e.g. BODY[1.HEADER]<0> (RFC 9051 7.5.2)."""
        if self.section is None:
            return self.name
        text = format_section(self.section)
        origin = f"<{self.partial.origin}>" if self.partial else ""
        return f"{self.name}[{text}]{origin}"


def format_section(section: Section) -> str:
    parts = [".".join(str(p) for p in section.part)] if section.part else []
    if section.text:
        text = section.text
        if section.fields:
            text += " (" + " ".join(section.fields) + ")"
        parts.append(text)
    return ".".join(parts)


@dataclass(frozen=True)
class Fetch(Command):
    """[UID] FETCH set items [(CHANGEDSINCE n [VANISHED])] (RFC 9051 6.4.5, RFC 7162).

    Macros (ALL, FAST, FULL) arrive expanded into their attributes.
    """

    sequence_set: SequenceSet
    attributes: tuple[FetchAttribute, ...]
    uid: bool = False
    changedsince: int | None = None
    vanished: bool = False


StoreAction = Literal["add", "remove", "replace"]


@dataclass(frozen=True)
class Store(Command):
    """[UID] STORE set [(UNCHANGEDSINCE n)] [+|-]FLAGS[.SILENT] flags (RFC 9051 6.4.6)."""

    sequence_set: SequenceSet
    action: StoreAction
    flags: tuple[str, ...]
    silent: bool = False
    uid: bool = False
    unchangedsince: int | None = None


@dataclass(frozen=True)
class Copy(Command):
    sequence_set: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True)
class Move(Command):
    sequence_set: SequenceSet
    mailbox: str
    uid: bool = False


# -- framing events ----------------------------------------------------------------


@dataclass(frozen=True)
class NeedContinuation(Event):
    """A synchronising literal {size} within limits: send "+ ..." and read on.

    command is the command's upper-case name (with "UID " when prefixed), so
    the server can refuse an APPEND before its data (see Parser.reject_literal).
    """

    tag: str
    size: int
    command: str
    binary: bool = False


@dataclass(frozen=True)
class IdleDone(Event):
    """The DONE line that ends IDLE (RFC 9051 6.3.13)."""

    tag: str


@dataclass(frozen=True)
class AuthenticateResponse(Event):
    """A client's base64 line in an AUTHENTICATE exchange, decoded (RFC 9051 6.2.2)."""

    tag: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class AuthenticateCancel(Event):
    """The "*" line that cancels AUTHENTICATE; answer tag BAD (RFC 9051 6.2.2)."""

    tag: str
