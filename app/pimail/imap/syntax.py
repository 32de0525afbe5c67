"""The grammar of each IMAP command (RFC 9051 6 and 9), without I/O.

`parse_command` turns one framed command (its lines and literal data, cut out
of the stream by `parser.Parser`) into one of the records of `events.py`, or
raises `ParseError` saying what is malformed. IMAP4rev1 (RFC 3501) clients are
served by the same grammar: it accepts what rev1 sends that rev2 dropped
(CHECK, LSUB, RECENT/NEW/OLD search keys, RFC822.* fetch items, mUTF-7 names).
Extensions understood: LITERAL+ (framing), SASL-IR, ENABLE, CONDSTORE/QRESYNC,
LIST-EXTENDED, LIST-STATUS, SPECIAL-USE, ESEARCH, SEARCHRES, BINARY, MOVE,
UIDPLUS, UNSELECT, ID, QUOTA (RFC 9208), WITHIN.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable

from pimail.imap.events import (
    Append,
    Authenticate,
    Capability,
    Check,
    Close,
    Command,
    Copy,
    Create,
    Delete,
    Enable,
    Expunge,
    Fetch,
    FetchAttribute,
    GetQuota,
    GetQuotaRoot,
    Id,
    Idle,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    QResync,
    Rename,
    Search,
    Select,
    SetQuota,
    StartTLS,
    Status,
    Store,
    StoreAction,
    Subscribe,
    Unselect,
    Unsubscribe,
)
from pimail.imap.grammar import (
    ATOM_RE,
    DIGITS,
    INT63_MAX,
    TAG_RE,
    ParseError,
    Reader,
    SequenceSet,
)
from pimail.imap.searchkey import search_program
from pimail.mime.section import Partial, Section


def command_head(line: bytes) -> tuple[str | None, str, str]:
    """(tag, command name, UID sub-command) from a command's first line.

    The tag is None when unreadable; names are upper-cased and "" when absent.
    """
    m = TAG_RE.match(line)
    if not m or (m.end() < len(line) and line[m.end()] != 0x20):
        return None, "", ""
    words = []
    pos = m.end()
    while len(words) < 2 and pos < len(line) and line[pos] == 0x20:
        w = ATOM_RE.match(line, pos + 1)
        if not w:
            break
        words.append(w.group().decode("ascii").upper())
        pos = w.end()
    words += ["", ""]
    return m.group().decode("ascii"), words[0], words[1] if words[0] == "UID" else ""


def parse_command(
    segments: list[bytes],
    literals: list[tuple[bytes, bool]],
    *,
    utf8: bool = False,
    max_depth: int = 32,
    max_ranges: int = 10_000,
) -> Command:
    """One framed command to its record; raises ParseError (tag filled in when known)."""
    r = Reader(segments, literals, utf8=utf8, max_depth=max_depth, max_ranges=max_ranges)
    m = TAG_RE.match(r.line)
    if not m or (m.end() < len(r.line) and r.line[m.end()] != 0x20):
        raise ParseError(None, "Invalid tag")
    tag = m.group().decode("ascii")
    r.pos = m.end()
    try:
        if r.at_end():
            raise ParseError(tag, "Missing command")
        r.sp()
        name = r.keyword()
        if name == "UID":
            r.sp()
            sub = r.keyword()
            if sub not in UID_COMMANDS:
                raise ParseError(tag, "Unknown UID command")
            return UID_COMMANDS[sub](r, tag, True)
        if name not in COMMANDS:
            raise ParseError(tag, "Unknown command")
        return COMMANDS[name](r, tag, False)
    except ParseError as exc:
        exc.tag = tag
        raise


Parse = Callable[[Reader, str, bool], Command]


def _no_args(cls: type[Command]) -> Parse:
    def parse(r: Reader, tag: str, uid: bool) -> Command:
        r.end()
        return cls(tag)

    return parse


def _one_mailbox(cls: type[Command]) -> Parse:
    def parse(r: Reader, tag: str, uid: bool) -> Command:
        r.sp()
        mailbox = r.mailbox()
        r.end()
        return cls(tag, mailbox)  # type: ignore[call-arg]

    return parse


def _login(r: Reader, tag: str, uid: bool) -> Command:
    # RFC 9051 6.2.3: LOGIN userid password, both astrings.
    r.sp()
    user = r.astring_text("User name")
    r.sp()
    password = r.astring_text("Password")
    r.end()
    return Login(tag, user, password)


_BASE64 = re.compile(rb"[A-Za-z0-9+/]*=*")


def _authenticate(r: Reader, tag: str, uid: bool) -> Command:
    # RFC 9051 6.2.2: AUTHENTICATE auth-type [SP (base64 / "=")]; "=" is an
    # empty initial response (RFC 4959 3).
    r.sp()
    mechanism = r.keyword()
    response = None
    if not r.at_end():
        r.sp()
        token = r.match(_BASE64, "initial response")
        r.end()
        response = b"" if token == b"=" else decode_base64(token)
        if not token or response is None:
            raise ParseError(tag, "Invalid base64 in initial response")
    r.end()
    return Authenticate(tag, mechanism, response)


def decode_base64(data: bytes) -> bytes | None:
    """Strict base64 (RFC 4648) as SASL uses it; None if malformed."""
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def _enable(r: Reader, tag: str, uid: bool) -> Command:
    # RFC 9051 6.3.1 / RFC 5161: ENABLE 1*(SP capability).
    capabilities = []
    while not r.at_end() or not capabilities:
        r.sp()
        capabilities.append(r.keyword())
    return Enable(tag, tuple(capabilities))


def _id(r: Reader, tag: str, uid: bool) -> Command:
    # RFC 2971 4: "ID" SP id-params-list; id-params-list = "(" *(string SP nstring) ")" / nil.
    r.sp()
    if r.at(b"NIL"):
        r.pos += 3
        r.end()
        return Id(tag, None)

    def pair() -> tuple[str, str | None]:
        key = r.string().decode("utf-8", "replace")
        r.sp()
        value = r.nstring()
        return key, None if value is None else value.decode("utf-8", "replace")

    pairs = r.paren_list(pair)
    r.end()
    return Id(tag, tuple(pairs))


def _select(r: Reader, tag: str, uid: bool, readonly: bool = False) -> Command:
    # RFC 9051 6.3.2: SELECT mailbox; RFC 4466: select-params = SP "(" select-param
    # *(SP select-param) ")"; RFC 7162 3.1.2 CONDSTORE, 3.2.5 QRESYNC.
    r.sp()
    mailbox = r.mailbox()
    condstore = False
    qresync = None
    if not r.at_end():
        r.sp()

        def param() -> None:
            nonlocal condstore, qresync
            if _option(r, ("CONDSTORE", "QRESYNC"), "SELECT parameter") == "CONDSTORE":
                condstore = True
            else:
                r.sp()
                qresync = _qresync(r)

        r.paren_list(param, empty=False)
    r.end()
    return Select(tag, mailbox, readonly, condstore, qresync)


def _examine(r: Reader, tag: str, uid: bool) -> Command:
    return _select(r, tag, uid, readonly=True)


def _qresync(r: Reader) -> QResync:
    # RFC 7162 3.2.5: "(" uidvalidity SP mod-sequence-value [SP known-uids]
    # [SP seq-match-data] ")"; seq-match-data = "(" known-sequence-set SP known-uid-set ")".
    r.open()
    uidvalidity = r.nz_number("UIDVALIDITY")
    r.sp()
    modseq = r.number64("mod-sequence")
    known_uids = seq_match = None
    if r.more():
        if r.peek() != 0x28:
            known_uids = _known_set(r)
            if r.more():
                seq_match = _seq_match(r)
        else:
            seq_match = _seq_match(r)
    r.close()
    return QResync(uidvalidity, modseq, known_uids, seq_match)


def _seq_match(r: Reader) -> tuple[SequenceSet, SequenceSet]:
    r.open()
    numbers = _known_set(r)
    r.sp()
    uids = _known_set(r)
    r.close()
    return numbers, uids


def _known_set(r: Reader) -> SequenceSet:
    # RFC 7162 3.2.5: known-uids and seq-match-data never contain "*" (nor "$").
    start = r.pos
    s = r.sequence_set()
    if s.saved or any(x.first is None or x.last is None for x in s.ranges):
        r.pos = start
        r.fail("'*' and '$' are not allowed in QRESYNC sets")
    return s


# RFC 6154 2: the special-use attributes, matched case-insensitively (and
# RFC 8457 \Important).
SPECIAL_USE = {
    a.upper(): a
    for a in (
        "\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash",
        "\\Important",
    )
}  # fmt: skip


def _create(r: Reader, tag: str, uid: bool) -> Command:
    # RFC 9051 6.3.4; RFC 6154 3: create-param =/ "USE" SP "(" [use-attr *(SP use-attr)] ")".
    r.sp()
    mailbox = r.mailbox()
    use: list[str] = []

    def param() -> None:
        start = r.pos
        if r.keyword() != "USE":
            r.pos = start
            r.fail("Unknown CREATE parameter")
        r.sp()
        use.extend(r.paren_list(lambda: _use_attr(r)))

    if not r.at_end():
        r.sp()
        r.paren_list(param, empty=False)
    r.end()
    return Create(tag, mailbox, tuple(use))


def _use_attr(r: Reader) -> str:
    if r.peek() != 0x5C:
        r.fail("Expected special-use attribute")
    r.pos += 1
    name = "\\" + r.atom().decode("ascii")
    return SPECIAL_USE.get(name.upper(), name)


def _rename(r: Reader, tag: str, uid: bool) -> Command:
    r.sp()
    old = r.mailbox()
    r.sp()
    new = r.mailbox()
    r.end()
    return Rename(tag, old, new)


# RFC 5258 3.1 and RFC 6154: the selection options we know; RFC 5258 3
# says an unknown one is a BAD.
_LIST_SELECT = {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}
_LIST_RETURN = {"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"}


def _list(r: Reader, tag: str, uid: bool) -> Command:
    # RFC 5258 6: list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat
    # [SP list-return-opts]; mbox-or-pat = list-mailbox / patterns.
    r.sp()
    selection: set[str] = set()
    if r.peek() == 0x28:
        selection = _options(r, _LIST_SELECT, "LIST selection option")
        # RFC 5258 3.1: RECURSIVEMATCH needs another option that selects.
        if "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}:
            r.fail("RECURSIVEMATCH needs SUBSCRIBED or SPECIAL-USE")
        r.sp()
    reference = r.mailbox(inbox=False)
    r.sp()
    single = r.peek() != 0x28
    patterns = [r.list_mailbox()] if single else r.paren_list(r.list_mailbox, empty=False)
    status_items: tuple[str, ...] = ()

    def return_option() -> str:
        nonlocal status_items
        option = _option(r, _LIST_RETURN, "LIST return option")
        if option == "STATUS":  # RFC 5819 2: "STATUS" SP "(" status-att *(SP status-att) ")"
            r.sp()
            status_items = _status_items(r)
        return option

    returns: list[str] = []
    if not r.at_end():
        r.sp()
        r.expect(b"RETURN", "RETURN")
        r.sp()
        returns = r.paren_list(return_option)
    r.end()
    return List(
        tag, reference, tuple(patterns), frozenset(selection), frozenset(returns), status_items
    )


def _option(r: Reader, known: set[str] | tuple[str, ...], what: str) -> str:
    start = r.pos
    option = r.keyword()
    if option not in known:
        r.pos = start
        r.fail(f"Unknown {what}")
    return option


def _options(r: Reader, known: set[str], what: str) -> set[str]:
    """ "(" [option *(SP option)] ")" of known upper-case atoms."""
    return set(r.paren_list(lambda: _option(r, known, what)))


def _lsub(r: Reader, tag: str, uid: bool) -> Command:
    r.sp()
    reference = r.mailbox(inbox=False)
    r.sp()
    pattern = r.list_mailbox()
    r.end()
    return Lsub(tag, reference, pattern)


# RFC 9051 6.3.11 (RECENT from RFC 3501, HIGHESTMODSEQ from RFC 7162 3.1.2.1,
# DELETED-STORAGE from RFC 9208 4.1.4).
STATUS_ITEMS = (
    "MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "RECENT",
    "HIGHESTMODSEQ", "DELETED-STORAGE",
)  # fmt: skip


def _status_items(r: Reader) -> tuple[str, ...]:
    # RFC 9051 9: "(" status-att *(SP status-att) ")".
    return tuple(r.paren_list(lambda: _option(r, STATUS_ITEMS, "STATUS item"), empty=False))


def _status(r: Reader, tag: str, uid: bool) -> Command:
    r.sp()
    mailbox = r.mailbox()
    r.sp()
    items = _status_items(r)
    r.end()
    return Status(tag, mailbox, items)


def _append(r: Reader, tag: str, uid: bool) -> Command:
    # RFC 9051 6.3.12: APPEND mailbox [SP flag-list] [SP date-time] SP literal;
    # RFC 3516: the message may be a literal8 ~{n}.
    r.sp()
    mailbox = r.mailbox()
    r.sp()
    flags: tuple[str, ...] = ()
    when = None
    if r.peek() == 0x28:
        flags = r.flag_list()
        r.sp()
    if r.peek() == 0x22:
        when = r.date_time()
        r.sp()
    if r.peek() != 0x7B and not r.at(b"~{"):
        r.fail("Expected message literal")
    message, binary = r.literal(binary=True)
    if not r.at_end():
        r.fail("Unexpected data after message (MULTIAPPEND is not supported)")
    return Append(tag, mailbox, message, flags, when, binary)


def _getquota(r: Reader, tag: str, uid: bool) -> Command:
    # RFC 9208: GETQUOTA quota-root (an astring, not a mailbox name).
    r.sp()
    root = r.astring_text("Quota root")
    r.end()
    return GetQuota(tag, root)


def _expunge(r: Reader, tag: str, uid: bool) -> Command:
    # RFC 9051 6.4.9 / RFC 4315 2.1: UID EXPUNGE sequence-set.
    uid_set = None
    if uid:
        r.sp()
        uid_set = r.sequence_set()
    r.end()
    return Expunge(tag, uid_set)


# RFC 9051 6.4.4: US-ASCII and UTF-8 must be supported; we take a few more.
# The wire name maps to the Python codec (US-ASCII read as UTF-8, its superset).
SEARCH_CHARSETS = {
    "UTF-8": "utf-8",
    "US-ASCII": "utf-8",
    **{f"ISO-8859-{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16)},
    **{f"WINDOWS-{n}": f"cp{n}" for n in range(1250, 1259)},
    "KOI8-R": "koi8-r",
    "KOI8-U": "koi8-u",
}
_SEARCH_RETURN = {"MIN", "MAX", "COUNT", "ALL", "SAVE"}


def _search(r: Reader, tag: str, uid: bool) -> Command:
    # RFC 9051 6.4.4 / 9: search = "SEARCH" [search-return-opts] SP search-program;
    # search-program = ["CHARSET" SP charset SP] search-key *(SP search-key).
    r.sp()
    returns = None
    if r.peek_keyword() == "RETURN":
        r.keyword()
        r.sp()
        returns = frozenset(_options(r, _SEARCH_RETURN, "SEARCH return option"))
        r.sp()
    charset = None
    if r.peek_keyword() == "CHARSET":
        r.keyword()
        r.sp()
        raw = r.astring()
        charset = raw.decode("ascii", "replace").upper()
        if charset not in SEARCH_CHARSETS:
            names = " ".join(SEARCH_CHARSETS)
            raise ParseError(tag, "Unsupported charset", code=f"BADCHARSET ({names})", status="NO")
        r.sp()
    codec = SEARCH_CHARSETS[charset or "UTF-8"]

    def decode(data: bytes) -> str:
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            r.fail(f"Search string is not valid {charset or 'UTF-8'}")

    criteria = search_program(r, decode)
    return Search(tag, criteria, uid, charset, returns)


# RFC 9051 6.4.5: the FETCH macros.
FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SIMPLE_ATTRIBUTES = {
    "ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "BODYSTRUCTURE", "UID",
    "RFC822", "RFC822.HEADER", "RFC822.TEXT", "MODSEQ",
}  # fmt: skip
_FETCH_NAME = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_TEXT = re.compile(rb"[A-Za-z.]+")


def _fetch(r: Reader, tag: str, uid: bool) -> Command:
    # RFC 9051 9: fetch = "FETCH" SP sequence-set SP ("ALL" / "FULL" / "FAST" /
    # fetch-att / "(" fetch-att *(SP fetch-att) ")") [fetch-modifiers].
    r.sp()
    sequence_set = r.sequence_set()
    r.sp()
    if r.peek() == 0x28:
        attributes = r.paren_list(lambda: _fetch_attribute(r), empty=False)
    elif r.peek_keyword() in FETCH_MACROS:
        attributes = [FetchAttribute(n) for n in FETCH_MACROS[r.keyword()]]
    else:
        attributes = [_fetch_attribute(r)]
    changedsince = None
    vanished = False
    if not r.at_end():
        # RFC 7162 3.1.4: CHANGEDSINCE mod-sequence-value; 3.2.6: VANISHED.
        r.sp()
        for modifier in r.paren_list(lambda: _fetch_modifier(r), empty=False):
            if modifier == "VANISHED":
                vanished = True
            else:
                changedsince = modifier
        r.end()
        # RFC 7162 3.2.6: VANISHED only with UID FETCH and CHANGEDSINCE.
        if vanished and (not uid or changedsince is None):
            r.fail("VANISHED needs UID FETCH with CHANGEDSINCE")
    return Fetch(tag, sequence_set, tuple(attributes), uid, changedsince, vanished)


def _fetch_modifier(r: Reader) -> int | str:
    modifier = _option(r, ("CHANGEDSINCE", "VANISHED"), "FETCH modifier")
    if modifier == "VANISHED":
        return modifier
    r.sp()
    return r.number64("mod-sequence")


def _fetch_attribute(r: Reader) -> FetchAttribute:
    start = r.pos
    name = r.word(_FETCH_NAME, "FETCH attribute")
    if name in _SIMPLE_ATTRIBUTES or (name == "BODY" and r.peek() != 0x5B):
        return FetchAttribute(name)
    if name in ("BODY", "BODY.PEEK"):
        # RFC 9051 9: "BODY" ["PEEK"] section [partial].
        section = _section(r)
        return FetchAttribute("BODY", section, _partial(r), peek=name == "BODY.PEEK")
    if name in ("BINARY", "BINARY.PEEK"):
        # RFC 9051 9 / RFC 3516: "BINARY" [".PEEK"] section-binary [partial].
        section = _binary_section(r)
        return FetchAttribute("BINARY", section, _partial(r), peek=name == "BINARY.PEEK")
    if name == "BINARY.SIZE":
        return FetchAttribute("BINARY.SIZE", _binary_section(r))
    r.pos = start
    r.fail("Unknown FETCH attribute")


def _section(r: Reader) -> Section:
    # RFC 9051 9: section = "[" [section-spec] "]"; section-spec = section-msgtext /
    # (section-part ["." section-text]); section-part = nz-number *("." nz-number).
    r.expect(b"[", "'['")
    part: list[int] = []
    text = None
    fields: tuple[str, ...] = ()
    if r.peek() != 0x5D:
        while r.peek() in DIGITS:
            part.append(r.nz_number("section part"))
            if r.peek() != 0x2E:
                break
            r.pos += 1
            if r.peek() not in DIGITS:
                text, fields = _section_text(r, mime=True)
                break
        if not part:
            text, fields = _section_text(r, mime=False)
    r.expect(b"]", "']'")
    return Section(tuple(part), text, fields)


def _section_text(r: Reader, mime: bool) -> tuple[str, tuple[str, ...]]:
    # section-msgtext = "HEADER" / "HEADER.FIELDS" [".NOT"] SP header-list / "TEXT";
    # section-text = section-msgtext / "MIME" (MIME only after a part number).
    start = r.pos
    text = r.word(_SECTION_TEXT, "section text")
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        # header-list = "(" header-fld-name *(SP header-fld-name) ")".
        r.sp()
        return text, tuple(r.paren_list(lambda: _header_field(r), empty=False))
    if text in ("HEADER", "TEXT") or (mime and text == "MIME"):
        return text, ()
    r.pos = start
    r.fail("Invalid section text")


def _header_field(r: Reader) -> str:
    name = r.astring()
    # RFC 5322 2.2: field names are printable ASCII without ":".
    if not name or any(b < 0x21 or b > 0x7E or b == 0x3A for b in name):
        r.fail("Invalid header field name")
    return name.decode("ascii").upper()


def _binary_section(r: Reader) -> Section:
    # RFC 9051 9: section-binary = "[" [section-part] "]".
    r.expect(b"[", "'['")
    part: list[int] = []
    if r.peek() != 0x5D:
        part.append(r.nz_number("section part"))
        while r.peek() == 0x2E:
            r.pos += 1
            part.append(r.nz_number("section part"))
    r.expect(b"]", "']'")
    return Section(tuple(part))


def _partial(r: Reader) -> Partial | None:
    # RFC 9051 9: partial = "<" number64 "." nz-number64 ">".
    if r.peek() != 0x3C:
        return None
    r.pos += 1
    origin = r.number64("partial origin")
    r.expect(b".", "'.'")
    count = r.number("partial length", 1, INT63_MAX)
    r.expect(b">", "'>'")
    return Partial(origin, count)


_STORE_ITEM = re.compile(rb"[+-]?[A-Za-z.]+")
_STORE_ACTIONS: dict[str, StoreAction] = {"+": "add", "-": "remove", "": "replace"}


def _setquota(r: Reader, tag: str, uid: bool) -> Command:
    # RFC 9208 4.1.3: SETQUOTA quota-root SP "(" [setquota-resource
    # *(SP setquota-resource)] ")", setquota-resource = resource-name SP number64.
    r.sp()
    root = r.astring_text("Quota root")
    r.sp()

    def resource() -> tuple[str, int]:
        name = r.keyword()
        r.sp()
        return name, r.number64("Resource limit")

    limits = tuple(r.paren_list(resource))
    r.end()
    return SetQuota(tag, root, limits)


def _store(r: Reader, tag: str, uid: bool) -> Command:
    # RFC 9051 9: store = "STORE" SP sequence-set SP store-att-flags, with RFC 7162
    # 3.1.3: [SP "(" "UNCHANGEDSINCE" SP mod-sequence-valzer ")"] before the item;
    # store-att-flags = (["+" / "-"] "FLAGS" [".SILENT"]) SP (flag-list / (flag *(SP flag))).
    r.sp()
    sequence_set = r.sequence_set()
    r.sp()
    unchangedsince = None
    if r.peek() == 0x28:

        def modifier() -> int:
            _option(r, ("UNCHANGEDSINCE",), "STORE modifier")
            r.sp()
            return r.number64("mod-sequence")

        unchangedsince = r.paren_list(modifier, empty=False)[-1]
        r.sp()
    start = r.pos
    item = r.word(_STORE_ITEM, "STORE data item")
    sign = item[0] if item[0] in "+-" else ""
    if item[len(sign) :] not in ("FLAGS", "FLAGS.SILENT"):
        r.pos = start
        r.fail("Expected [+|-]FLAGS[.SILENT]")
    r.sp()
    if r.peek() == 0x28:
        flags = r.flag_list()
    else:
        flags_list = [r.flag()]
        while not r.at_end():
            r.sp()
            flags_list.append(r.flag())
        flags = tuple(flags_list)
    r.end()
    return Store(
        tag,
        sequence_set,
        _STORE_ACTIONS[sign],
        flags,
        item.endswith(".SILENT"),
        uid,
        unchangedsince,
    )


def _copy_or_move(cls: type[Copy] | type[Move]) -> Parse:
    def parse(r: Reader, tag: str, uid: bool) -> Command:
        # RFC 9051 6.4.7 COPY / 6.4.8 MOVE: sequence-set SP mailbox.
        r.sp()
        sequence_set = r.sequence_set()
        r.sp()
        mailbox = r.mailbox()
        r.end()
        return cls(tag, sequence_set, mailbox, uid)

    return parse


COMMANDS: dict[str, Parse] = {
    "CAPABILITY": _no_args(Capability),
    "NOOP": _no_args(Noop),
    "LOGOUT": _no_args(Logout),
    "STARTTLS": _no_args(StartTLS),
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "ID": _id,
    "ENABLE": _enable,
    "SELECT": _select,
    "EXAMINE": _examine,
    "CREATE": _create,
    "DELETE": _one_mailbox(Delete),
    "RENAME": _rename,
    "SUBSCRIBE": _one_mailbox(Subscribe),
    "UNSUBSCRIBE": _one_mailbox(Unsubscribe),
    "LIST": _list,
    "LSUB": _lsub,
    "NAMESPACE": _no_args(Namespace),
    "STATUS": _status,
    "APPEND": _append,
    "IDLE": _no_args(Idle),
    "GETQUOTA": _getquota,
    "GETQUOTAROOT": _one_mailbox(GetQuotaRoot),
    "SETQUOTA": _setquota,
    "CHECK": _no_args(Check),
    "CLOSE": _no_args(Close),
    "UNSELECT": _no_args(Unselect),
    "EXPUNGE": _expunge,
    "SEARCH": _search,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy_or_move(Copy),
    "MOVE": _copy_or_move(Move),
}
# RFC 9051 6.4.9: UID COPY/MOVE/FETCH/SEARCH/STORE/EXPUNGE.
UID_COMMANDS: dict[str, Parse] = {
    name: COMMANDS[name] for name in ("COPY", "MOVE", "FETCH", "SEARCH", "STORE", "EXPUNGE")
}
