"""A deterministic corpus of realistic RFC 5322 messages for the IMAP/POP3 benchmarks.

`generate(count, seed)` yields the same messages, byte for byte, for the same count and
seed, on any machine and Python 3.11+ (`random.Random` seeded with a string is stable).
Every message is built from its own generator, seeded with (seed, index), so message i
does not depend on the ones before it; threads refer to earlier messages by index.

What the mix looks like (fractions are of all messages, roughly):

- text/plain (~59%): us-ascii 7bit, or UTF-8 as quoted-printable, 8bit or base64;
- multipart/alternative (~33%): text/plain + text/html (quoted-printable);
- multipart/mixed with one or two base64 attachments (~4%): "PDFs" and "images" of
  random bytes behind a real magic number, 5-200 KB (log-uniform), some with RFC 2231
  or RFC 2047 file names;
- forwards (~4%): multipart/mixed with a note and a message/rfc822 part, a tenth of them
  a forward of a forward (message/rfc822 inside message/rfc822);
- about a third are replies: In-Reply-To and References (up to 10 ancestors), "Re:";
- headers: a Received chain of 2-5 hops, Return-Path, From with plain, quoted and
  RFC 2047 (Q and B, UTF-8 and ISO-8859-1) display names, To/Cc lists, some
  DKIM-Signature, List-Id, User-Agent/X-Mailer; Dates spread over 2023-2024 in
  several time zones, increasing with the index.

Lines end in CRLF; no line is longer than 998 octets. The rare word RARE_WORD is in the
body text of exactly the messages `rare_word_indices(count)` (index % RARE_EVERY ==
RARE_OFFSET), nowhere else (not in headers, not in forwarded parts), so
`UID SEARCH TEXT <RARE_WORD>` must find `rare_word_count(count)` messages.

`write_maildir()` puts messages into a Maildir's cur/ with their flags (file mtime =
INTERNALDATE = the Date); `message_bytes()` yields the bytes alone, for SMTP or APPEND.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
import os
import random
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

log = logging.getLogger("bench.corpus")

DEFAULT_SEED = 20240611
DEFAULT_COUNT = 10_000
RARE_WORD = "quillwort"
RARE_EVERY = 97
RARE_OFFSET = 13
USER_ADDRESS = "user@bench.test"

START = datetime(2023, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=730)

# Fractions of all messages (see the module docstring).
P_FORWARD = 0.04
P_ATTACHMENT = 0.04
P_ALTERNATIVE = 0.33
P_REPLY = 0.35
P_LIST = 0.15
P_UTF8 = 0.18
MIN_ATTACHMENT = 5 * 1024
MAX_ATTACHMENT = 200 * 1024

_WORDS = (
    "the of and to in a is that for it as was with be by on not this are or from at which "
    "but have an they you were we their has would when if so no will more can about out up "
    "them some could into time only other new then these two may first any like now such "
    "over our even most after also made many did before must through back where much your "
    "way well down should because each just those people how too little state good very "
    "make world still own see work long get here between both life being under never day "
    "same another know while last might great old year off come since against go came right "
    "used take three meeting invoice schedule report server mailbox delivery queue message "
    "folder attachment review budget quarter project tomorrow morning afternoon please "
    "thanks regards team update question answer draft contract customer release version "
    "deadline minutes agenda office travel hotel flight ticket payment order shipment "
    "warehouse garden weekend holiday birthday dinner lunch coffee train station library "
    "museum concert football weather rain sunshine mountain river harbour village kitchen "
    "printer laptop network password backup storage cluster database migration feature "
    "bug patch test staging production monitoring alert incident customer support invoice "
    "receipt refund discount offer proposal estimate design mockup photo video slides "
    "spreadsheet document signature approval feedback comment summary overview roadmap "
    "priority risk issue ticket milestone sprint planning retrospective interview candidate "
    "salary contract lease apartment repair plumber electrician neighbour parcel postcode"
)
WORDS = tuple(_WORDS.split())
UTF8_WORDS = (
    "café",
    "naïve",
    "Grüße",
    "déjà",
    "über",
    "façade",
    "Straße",
    "Ærø",
    "smörgåsbord",
    "crème",
    "jalapeño",
    "São",
    "Łódź",
    "Zürich",
    "résumé",
    "piñata",
)
assert all(RARE_WORD not in w.lower() for w in WORDS + UTF8_WORDS)

_FIRST_NAMES = (
    "Anna Ben Clara David Emma Felix Grace Henry Isla Jack Kira Liam Maya Noah Olivia Paul "
    "Quinn Rosa Sam Tara Uma Victor Wendy Xavier Yara Zoe Alice Bob Carol Dan Erin Frank"
)
FIRST_NAMES = tuple(_FIRST_NAMES.split())
_LAST_NAMES = (
    "Smith Jones Taylor Brown Wilson Evans Thomas Johnson Roberts Walker Wright Robinson "
    "Thompson White Hughes Edwards Green Hall Wood Harris Martin Jackson Clarke Lewis"
)
LAST_NAMES = tuple(_LAST_NAMES.split())
# (display name, charset): names outside ASCII get RFC 2047 encoded words.
INTL_NAMES = (
    ("José Müller", "utf-8"),
    ("Søren Kierkegård", "utf-8"),
    ("Zoë Çelik", "utf-8"),
    ("François Lefèvre", "iso-8859-1"),
    ("Jürgen Weiß", "iso-8859-1"),
    ("Łukasz Wróbel", "utf-8"),
    ("Дмитрий Иванов", "utf-8"),
    ("王小明", "utf-8"),
    ("佐藤 花子", "utf-8"),
    ("Αλέξανδρος Παπαδόπουλος", "utf-8"),
)
DOMAINS = (
    "example.com",
    "example.org",
    "example.net",
    "mail.example.com",
    "corp.example",
    "shop.example",
    "university.example",
    "post.example.org",
)
LISTS = ("dev", "announce", "users", "ops", "general")
TIMEZONES = tuple(
    timezone(timedelta(minutes=m)) for m in (0, 60, 120, -300, -240, -420, 330, 540, 600)
)
AGENTS = (
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.6.0",
    "X-Mailer: Microsoft Outlook 16.0",
    "User-Agent: Mutt/2.2.9 (2022-11-12)",
    "X-Mailer: Apple Mail (2.3731.700.6)",
    "User-Agent: Roundcube Webmail/1.6.5",
)
TOPICS = (
    "Quarterly budget review",
    "Meeting notes from {day}",
    "Invoice {n} for {month}",
    "Your order {n} has shipped",
    "Re-planning the migration",
    "Lunch on {day}?",
    "Draft contract for review",
    "Weekly status update",
    "Server maintenance window on {day}",
    "Photos from the weekend",
    "Question about the {month} report",
    "Travel plans for {month}",
    "Build {n} failed on staging",
    "Holiday schedule",
    "Feedback on the new design",
    "Réunion d'équipe {day}",
    "Grüße aus Zürich",
    "Важное обновление",
    "会議の議事録",
)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
MONTHS = ("January", "March", "May", "July", "September", "November")
# (MIME type, file name pattern, magic number): random bytes behind a real header.
ATTACHMENTS = (
    ("application/pdf", "report-{n}.pdf", b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n"),
    ("application/pdf", "Übersicht {n}.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"),
    ("image/jpeg", "IMG_{n}.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01"),
    ("image/png", "screenshot-{n}.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
    ("image/jpeg", "photo café {n}.jpg", b"\xff\xd8\xff\xe1\x00\x18Exif\x00\x00"),
)

# Maildir info letters of the flags the corpus uses (RFC 9051 2.3.2, Maildir spec).
FLAG_LETTERS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "$Forwarded": "P",
    "\\Answered": "R",
    "\\Seen": "S",
}


@dataclass(frozen=True)
class CorpusMessage:
    """One generated message: its bytes (CRLF) and what a mail store keeps beside them."""

    index: int
    data: bytes
    flags: tuple[str, ...]  # IMAP system flags, e.g. ("\\Seen",)
    date: datetime  # the Date header's instant; also INTERNALDATE
    message_id: str
    has_rare_word: bool

    @property
    def maildir_letters(self) -> str:
        return "".join(sorted(FLAG_LETTERS[f] for f in self.flags))


def rare_word_indices(count: int) -> range:
    """Indices of the messages whose body contains RARE_WORD."""
    return range(RARE_OFFSET, count, RARE_EVERY)


def rare_word_count(count: int) -> int:
    return len(rare_word_indices(count))


def generate(count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> Iterator[CorpusMessage]:
    """Messages 0..count-1, in order (Dates increase with the index)."""
    for index in range(count):
        yield build_message(index, count, seed)


def message_bytes(count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> Iterator[bytes]:
    """The raw messages (CRLF), for SMTP DATA (dot-stuff them) or IMAP APPEND."""
    for message in generate(count, seed):
        yield message.data


def build_message(index: int, count: int, seed: int = DEFAULT_SEED) -> CorpusMessage:
    if not 0 <= index < count:
        raise ValueError(f"index {index} outside 0..{count - 1}")
    return _Builder(index, count, seed).build()


# --- Maildir --------------------------------------------------------------------------


def maildir_name(message: CorpusMessage, *, uid: int | None = None) -> str:
    """A Maildir file name that starts with the time of arrival (which orders the UIDs
    Dovecot gives new files). Without uid, in the style of Dovecot's deliveries: S= and
    W= sizes (W= is the size with CRLF line ends, which for these files is the size).
    With uid, in pimail's style: S= and U= (the UID)."""
    micros = int(message.date.timestamp() * 1_000_000)
    secs, usecs = divmod(micros, 1_000_000)
    size = len(message.data)
    base = f"{secs}.M{usecs}P1Q{message.index}.bench"
    fields = f",S={size},W={size}" if uid is None else f",S={size},U={uid}"
    return f"{base}{fields}:2,{message.maildir_letters}"


def write_maildir(
    maildir: Path,
    messages: Iterable[CorpusMessage],
    *,
    uid: int | None = None,
    gid: int | None = None,
    uid_names: bool = False,
) -> tuple[int, int]:
    """Write messages into maildir/cur/ (creating cur/ new/ tmp/), each with its flags
    and mtime = its Date. With uid/gid, chown what is written. With uid_names, name
    message i with UID i+1 (pimail's ,U= field). Directories are created as needed (and
    chowned too). Returns (messages, octets) written.
    No fsync: a benchmark corpus can be regenerated."""
    wanted = [maildir, *(maildir / sub for sub in ("cur", "new", "tmp"))]
    created = [p for p in [*reversed(maildir.parents), *wanted] if not p.exists()]
    for path in wanted:
        path.mkdir(parents=True, exist_ok=True)
    files = octets = 0
    for message in messages:
        name = maildir_name(message, uid=message.index + 1 if uid_names else None)
        path = maildir / "cur" / name
        path.write_bytes(message.data)
        stamp = int(message.date.timestamp() * 1_000_000_000)
        os.utime(path, ns=(stamp, stamp))
        if uid is not None or gid is not None:
            os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
        files += 1
        octets += len(message.data)
    if uid is not None or gid is not None:
        for path in created:
            os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
    log.info("maildir written path=%s messages=%d octets=%d", maildir, files, octets)
    return files, octets


# --- building one message ----------------------------------------------------------------


def _stable_hex(*parts: object, length: int = 16) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:length]


def message_id(index: int, seed: int = DEFAULT_SEED) -> str:
    """The Message-ID of message `index` (a pure function, so replies can cite it)."""
    rnd = random.Random(f"pimail-corpus/{seed}/id/{index}")
    return f"<{_stable_hex(seed, index)}.{index}@{rnd.choice(DOMAINS)}>"


def _parent(index: int, seed: int) -> int | None:
    """The message that message `index` replies to, if it is a reply."""
    if index == 0:
        return None
    rnd = random.Random(f"pimail-corpus/{seed}/parent/{index}")
    if rnd.random() >= P_REPLY:
        return None
    return max(0, index - 1 - int(rnd.expovariate(1 / 20)))


def _topic(index: int, seed: int) -> str:
    rnd = random.Random(f"pimail-corpus/{seed}/topic/{index}")
    return rnd.choice(TOPICS).format(
        day=rnd.choice(DAYS), month=rnd.choice(MONTHS), n=rnd.randrange(1000, 99999)
    )


def _thread(index: int, seed: int) -> tuple[list[int], str]:
    """(ancestors oldest first, at most 10; the thread's topic)."""
    ancestors: list[int] = []
    current = index
    while (parent := _parent(current, seed)) is not None and len(ancestors) < 50:
        ancestors.append(parent)
        current = parent
    return ancestors[::-1][-10:], _topic(current, seed)


def _encoded_word(text: str, charset: str, encoding: str) -> str:
    raw = text.encode(charset)
    if encoding == "B":
        return f"=?{charset.upper()}?B?{base64.b64encode(raw).decode()}?="
    out = []
    for byte in raw:
        char = chr(byte)
        if char == " ":
            out.append("_")
        elif char.isascii() and char.isalnum():
            out.append(char)
        else:
            out.append(f"={byte:02X}")
    return f"=?{charset.upper()}?Q?{''.join(out)}?="


def encode_words(text: str, charset: str, encoding: str) -> str:
    """RFC 2047 encoded-words for text, each at most 75 characters (RFC 2047 2), split
    between characters and folded onto lines of their own (the folding white space
    between two encoded-words is not part of the text, RFC 2047 6.2)."""
    words: list[str] = []
    chunk = ""
    for char in text:
        if chunk and len(_encoded_word(chunk + char, charset, encoding)) > 75:
            words.append(_encoded_word(chunk, charset, encoding))
            chunk = ""
        chunk += char
    words.append(_encoded_word(chunk, charset, encoding))
    return "\n ".join(words)


def fold(name: str, value: str, width: int = 78) -> str:
    """A header field folded at spaces (RFC 5322 2.2.3), LF line ends."""
    line = f"{name}: "
    lines: list[str] = []
    for word in value.split(" "):
        if len(line) + len(word) > width and line.strip():
            lines.append(line.rstrip(" "))
            line = " "
        line += word + " "
    lines.append(line.rstrip(" "))
    return "\n".join(lines)


def _qp(text: str) -> str:
    return binascii.b2a_qp(text.encode("utf-8")).decode("ascii")


def _b64(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii").rstrip("\n")


@dataclass
class _Part:
    """A MIME entity while it is built: header lines and body, LF line ends."""

    headers: list[str]
    body: str

    def render(self) -> str:
        return "\n".join(self.headers) + "\n\n" + self.body


class _Builder:
    """Builds message `index` from its own random generator."""

    def __init__(self, index: int, count: int, seed: int) -> None:
        self.index = index
        self.count = count
        self.seed = seed
        self.rnd = random.Random(f"pimail-corpus/{seed}/message/{index}")

    # -- pieces -----------------------------------------------------------------------

    def date(self) -> datetime:
        slot = SPAN / self.count
        instant = START + slot * self.index + slot * (0.1 + 0.8 * self.rnd.random())
        return instant.replace(microsecond=instant.microsecond // 1000 * 1000)

    def address(self) -> tuple[str, str]:
        """(header form, bare address) of someone."""
        rnd = self.rnd
        first, last = rnd.choice(FIRST_NAMES), rnd.choice(LAST_NAMES)
        addr = f"{first.lower()}.{last.lower()}@{rnd.choice(DOMAINS)}"
        style = rnd.random()
        if style < 0.15:
            return addr, addr
        if style < 0.25:
            return f'"{last}, {first}" <{addr}>', addr
        if style < 0.45:
            name, charset = rnd.choice(INTL_NAMES)
            encoding = "Q" if charset == "iso-8859-1" or rnd.random() < 0.5 else "B"
            return f"{encode_words(name, charset, encoding)} <{addr}>", addr
        return f"{first} {last} <{addr}>", addr

    def sentence(self, utf8: bool) -> str:
        rnd = self.rnd
        words = [rnd.choice(WORDS) for _ in range(rnd.randint(6, 18))]
        if utf8 and rnd.random() < 0.5:
            words[rnd.randrange(len(words))] = rnd.choice(UTF8_WORDS)
        words[0] = words[0].capitalize()
        return " ".join(words) + rnd.choice(".....?!")

    def paragraphs(self, utf8: bool, rare: bool, count: int | None = None) -> list[str]:
        rnd = self.rnd
        n = count if count is not None else rnd.choice((1, 1, 2, 2, 3, 3, 4, 5, 6))
        paras = [" ".join(self.sentence(utf8) for _ in range(rnd.randint(2, 7))) for _ in range(n)]
        if rare:
            i = rnd.randrange(len(paras))
            words = paras[i].split(" ")
            words.insert(rnd.randrange(1, len(words) + 1), RARE_WORD)
            paras[i] = " ".join(words)
        return paras

    @staticmethod
    def wrap(paragraph: str, width: int = 72) -> str:
        lines: list[str] = []
        line = ""
        for word in paragraph.split(" "):
            if line and len(line) + 1 + len(word) > width:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
        return "\n".join(lines)

    def signature(self, name: str) -> str:
        return f"-- \n{name}\n{self.rnd.choice(('Sales', 'Engineering', 'Support', 'Finance'))}"

    # -- MIME parts --------------------------------------------------------------------

    def text_part(self, paras: list[str], utf8: bool, quote: str = "") -> _Part:
        text = "\n\n".join(self.wrap(p) for p in paras) + "\n"
        if quote:
            text += "\n" + quote
        if not utf8:
            return _Part(
                ['Content-Type: text/plain; charset="us-ascii"', "Content-Transfer-Encoding: 7bit"],
                text,
            )
        choice = self.rnd.random()
        header = "Content-Type: text/plain; charset=utf-8"
        if choice < 0.6:
            return _Part([header, "Content-Transfer-Encoding: quoted-printable"], _qp(text))
        if choice < 0.9:
            return _Part([header + "; format=flowed", "Content-Transfer-Encoding: 8bit"], text)
        return _Part([header, "Content-Transfer-Encoding: base64"], _b64(text.encode()))

    def html_part(self, paras: list[str]) -> _Part:
        body = "".join(f"<p>{p}</p>\n" for p in paras)
        html = (
            '<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8">'
            f'</head>\n<body style="font-family: Arial, sans-serif;">\n{body}</body></html>\n'
        )
        return _Part(
            [
                "Content-Type: text/html; charset=utf-8",
                "Content-Transfer-Encoding: quoted-printable",
            ],
            _qp(html),
        )

    def multipart(self, subtype: str, parts: list[_Part]) -> _Part:
        boundary = f"----=_Part_{self.index}_{self.rnd.getrandbits(48):012x}"
        body = "This is a multi-part message in MIME format.\n"
        for part in parts:
            body += f"\n--{boundary}\n{part.render()}"
            if not body.endswith("\n"):
                body += "\n"
        body += f"\n--{boundary}--\n"
        return _Part([f'Content-Type: multipart/{subtype};\n boundary="{boundary}"'], body)

    def attachment(self) -> _Part:
        rnd = self.rnd
        mime, pattern, magic = rnd.choice(ATTACHMENTS)
        filename = pattern.format(n=rnd.randrange(1000, 9999))
        size = int(math.exp(rnd.uniform(math.log(MIN_ATTACHMENT), math.log(MAX_ATTACHMENT))))
        data = magic + rnd.randbytes(max(0, size - len(magic)))
        if filename.isascii():
            ctype = f'Content-Type: {mime}; name="{filename}"'
            disp = f'Content-Disposition: attachment; filename="{filename}"; size={len(data)}'
        else:
            # Outlook style: RFC 2047 in name=, RFC 2231 in filename* (both seen in the wild).
            ctype = f'Content-Type: {mime};\n name="{encode_words(filename, "utf-8", "B")}"'
            quoted = urllib.parse.quote(filename, safe="")
            disp = f"Content-Disposition: attachment;\n filename*=utf-8''{quoted}"
        return _Part([ctype, "Content-Transfer-Encoding: base64", disp], _b64(data))

    def body(self, utf8: bool, rare: bool, quote: str, sender_name: str) -> _Part:
        """The main content: plain text, alternative, or mixed with attachments."""
        rnd = self.rnd
        paras = self.paragraphs(utf8, rare)
        paras_with_sig = [*paras, self.signature(sender_name)]
        kind = rnd.random()
        if kind < P_ATTACHMENT / (1 - P_FORWARD):
            inner = self.text_part(paras_with_sig, utf8, quote)
            if rnd.random() < 0.5:
                inner = self.multipart("alternative", [inner, self.html_part(paras)])
            attachments = [self.attachment() for _ in range(rnd.choice((1, 1, 1, 2)))]
            return self.multipart("mixed", [inner, *attachments])
        if kind < (P_ATTACHMENT + P_ALTERNATIVE) / (1 - P_FORWARD):
            text = self.text_part(paras_with_sig, utf8, quote)
            return self.multipart("alternative", [text, self.html_part(paras)])
        return self.text_part(paras_with_sig, utf8, quote)

    # -- headers -----------------------------------------------------------------------

    def received_chain(self, date: datetime, sender_domain: str) -> list[str]:
        rnd = self.rnd
        hops = rnd.randint(2, 5)
        lines: list[str] = []
        when = date + timedelta(seconds=rnd.randint(2, 90))
        for hop in range(hops):
            if rnd.random() < 0.2:
                ip = f"2001:db8:{rnd.randrange(1, 0xFFFF):x}::{rnd.randrange(1, 0xFFFF):x}"
                ip = f"IPv6:{ip}"
            else:
                net = rnd.choice(("192.0.2", "198.51.100", "203.0.113"))
                ip = f"{net}.{rnd.randrange(1, 255)}"
            if hop == 0:
                by, helo = "mx.bench.test (Postfix)", f"mail-out{rnd.randint(1, 9)}.{sender_domain}"
            else:
                by = f"relay{hop}.{sender_domain} (Postfix)"
                helo = f"smtp{hop}.{sender_domain}"
            queue_id = "".join(rnd.choice("BCDFGHJKLMNPQRSTVWXYZ0123456789") for _ in range(12))
            with_ = rnd.choice(("ESMTPS", "ESMTPSA", "ESMTP", "LMTP"))
            stamp = format_datetime(when.astimezone(UTC)).replace("-0000", "+0000")
            lines.append(
                f"Received: from {helo} ({helo} [{ip}])\n\tby {by} with {with_} id {queue_id}"
                f"\n\tfor <{USER_ADDRESS}>; {stamp}"
            )
            when -= timedelta(seconds=rnd.randint(0, 30))
        return lines

    def dkim(self, domain: str, date: datetime) -> str:
        rnd = self.rnd
        bh = base64.b64encode(rnd.randbytes(32)).decode()
        b = base64.b64encode(rnd.randbytes(256)).decode()
        b_lines = "\n\t ".join(b[i : i + 64] for i in range(0, len(b), 64))
        return (
            f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain};\n"
            f"\ts=sel{date.year}; t={int(date.timestamp())};\n"
            "\th=from:to:cc:subject:date:message-id:mime-version:content-type;\n"
            f"\tbh={bh};\n\tb={b_lines}"
        )

    def subject_header(self, subject: str) -> str:
        if subject.isascii():
            return fold("Subject", subject)
        return "Subject: " + encode_words(subject, "utf-8", self.rnd.choice("QB"))

    def recipients(self) -> tuple[list[str], list[str]]:
        rnd = self.rnd
        to = [USER_ADDRESS if rnd.random() < 0.5 else f"Bench User <{USER_ADDRESS}>"]
        to += [self.address()[0] for _ in range(rnd.choice((0, 0, 0, 1, 2, 3)))]
        rnd.shuffle(to)
        cc = [self.address()[0] for _ in range(rnd.choice((0, 0, 0, 1, 2, 4)))]
        return to, cc

    # -- whole messages ----------------------------------------------------------------

    def inner_message(self, date: datetime, depth: int) -> str:
        """A forwarded message (never holds RARE_WORD), maybe itself a forward."""
        rnd = self.rnd
        sender, _ = self.address()
        to, _ = self.address()
        subject = _topic(rnd.randrange(self.count), self.seed)
        utf8 = rnd.random() < P_UTF8
        if depth < 2 and rnd.random() < 0.1:
            content = self.forward_body(date - timedelta(days=rnd.randint(1, 30)), depth + 1)
        else:
            paras = self.paragraphs(utf8, rare=False)
            content = self.text_part(paras, utf8)
            if rnd.random() < 0.4:
                content = self.multipart("alternative", [content, self.html_part(paras)])
        headers = [
            f"From: {sender}",
            f"To: {to}",
            self.subject_header(subject),
            f"Date: {format_datetime(date.astimezone(rnd.choice(TIMEZONES)))}",
            f"Message-ID: <{rnd.getrandbits(64):016x}@{rnd.choice(DOMAINS)}>",
            "MIME-Version: 1.0",
            *content.headers,
        ]
        return _Part(headers, content.body).render()

    def forward_body(self, date: datetime, depth: int, rare: bool = False) -> _Part:
        rnd = self.rnd
        utf8 = rnd.random() < P_UTF8
        note = self.text_part(self.paragraphs(utf8, rare, count=1), utf8)
        inner_date = date - timedelta(hours=rnd.randint(1, 24 * 60))
        forwarded = _Part(
            ["Content-Type: message/rfc822", "Content-Disposition: inline"],
            self.inner_message(inner_date, depth),
        )
        return self.multipart("mixed", [note, forwarded])

    def build(self) -> CorpusMessage:
        rnd = self.rnd
        date = self.date()
        sender, sender_addr = self.address()
        sender_name = sender.split(" <")[0].strip('"') if " <" in sender else sender_addr
        sender_domain = sender_addr.split("@")[1]
        rare = self.index % RARE_EVERY == RARE_OFFSET
        utf8 = rnd.random() < P_UTF8
        ancestors, topic = _thread(self.index, self.seed)

        if rnd.random() < P_FORWARD:
            subject = f"Fwd: {_topic(rnd.randrange(self.count), self.seed)}"
            content = self.forward_body(date, depth=1, rare=rare)
        else:
            quote = ""
            if ancestors:
                quote = "\n".join(
                    "> " + line for line in self.wrap(self.sentence(utf8), 70).split("\n")
                )
                quote = f"On an earlier day, someone wrote:\n{quote}\n"
            subject = (rnd.choice(("Re: ", "RE: ", "Re: ", "AW: ")) if ancestors else "") + topic
            content = self.body(utf8, rare, quote, sender_name)

        headers = [f"Return-Path: <{sender_addr}>"]
        headers += self.received_chain(date, sender_domain)
        if rnd.random() < 0.4:
            headers.append(self.dkim(sender_domain, date))
        to, cc = self.recipients()
        is_list = rnd.random() < P_LIST
        if is_list:
            name = rnd.choice(LISTS)
            to = [f"{name}@lists.example.org"]
        headers += [
            f"Date: {format_datetime(date.astimezone(rnd.choice(TIMEZONES)))}",
            f"From: {sender}",
            fold("To", ", ".join(to)),
        ]
        if cc:
            headers.append(fold("Cc", ", ".join(cc)))
        headers += [
            self.subject_header(subject),
            f"Message-ID: {message_id(self.index, self.seed)}",
        ]
        if ancestors:
            ids = [message_id(a, self.seed) for a in ancestors]
            headers += [f"In-Reply-To: {ids[-1]}", fold("References", " ".join(ids))]
        if is_list:
            headers += [
                f"List-Id: <{name}.lists.example.org>",
                f"List-Unsubscribe: <mailto:{name}-leave@lists.example.org>",
                "Precedence: list",
            ]
        headers.append(rnd.choice(AGENTS))
        headers += ["MIME-Version: 1.0", *content.headers]
        text = _Part(headers, content.body).render()
        if not text.endswith("\n"):
            text += "\n"
        data = text.replace("\n", "\r\n").encode("utf-8")
        return CorpusMessage(
            index=self.index,
            data=data,
            flags=self.flags(),
            date=date,
            message_id=message_id(self.index, self.seed),
            has_rare_word=rare,
        )

    def flags(self) -> tuple[str, ...]:
        """Older mail is mostly read; some answered, flagged, forwarded."""
        rnd = self.rnd
        age = 1 - self.index / self.count  # 1 = oldest
        flags: list[str] = []
        if rnd.random() < 0.55 + 0.43 * age:
            flags.append("\\Seen")
            if rnd.random() < 0.1:
                flags.append("\\Answered")
            if rnd.random() < 0.02:
                flags.append("$Forwarded")
        if rnd.random() < 0.03:
            flags.append("\\Flagged")
        return tuple(flags)


def main() -> None:
    """python bench/corpus.py [COUNT [SEED]]: a summary of the corpus (sizes, kinds)."""
    import sys

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    count = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_COUNT
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_SEED
    sizes: list[int] = []
    kinds = {"multipart/alternative": 0, "multipart/mixed": 0, "message/rfc822": 0}
    digest = hashlib.sha256()
    for m in generate(count, seed):
        sizes.append(len(m.data))
        digest.update(m.data)
        for kind in kinds:
            kinds[kind] += kind.encode() in m.data
    sizes.sort()
    log.info(
        "messages=%d octets=%d median=%d max=%d rare=%d kinds=%s sha256=%s",
        count,
        sum(sizes),
        sizes[len(sizes) // 2],
        sizes[-1],
        rare_word_count(count),
        kinds,
        digest.hexdigest()[:16],
    )


if __name__ == "__main__":
    main()
