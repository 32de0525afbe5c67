"""The other ways a stored message is read: IMAP SEARCH, POP3, the webmail.
Each returns the problems it saw, named by message, never stopping early."""

from __future__ import annotations

import email.header
import email.utils
import hashlib
import re
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email import policy
from email.parser import BytesParser
from pathlib import Path

from conftest import PASSWORD, PimailServer
from imap.imap_raw import RawIMAP
from pimail.mime.structure import MAX_DEPTH
from web.browser import Browser

from .deliver import stored_name
from .imapwire import Answer, Pipeline, parse
from .walk import Walk, status_problem

_WORD = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{5,20}(?![A-Za-z0-9])")
MAX_SERVERBUGS = 300
_HEADERS_ONLY = BytesParser(policy=policy.compat32)


# -- IMAP SEARCH ------------------------------------------------------------------------


def search_terms(data: bytes) -> list[tuple[str, str]]:
    """(search key, ASCII word) pairs a message must be found by: a word of its
    decoded Subject for SUBJECT and TEXT, its From address for FROM, a word of
    its first text/plain part for TEXT (RFC 9051 6.4.4: substring matches,
    case-insensitive)."""
    terms: list[tuple[str, str]] = []
    head = _HEADERS_ONLY.parsebytes(data, headersonly=True)
    subject = decoded(head.get("subject"))
    words = _WORD.findall(subject)
    if words:
        word = max(words, key=len)
        terms += [("SUBJECT", word), ("TEXT", word)]
    address = email.utils.parseaddr(decoded(head.get("from")))[1]
    if re.fullmatch(r"[A-Za-z0-9._+-]+@[A-Za-z0-9.-]+", address):
        terms.append(("FROM", address))
    body_word = _body_word(data)
    if body_word:
        terms.append(("TEXT", body_word))
    return terms


def decoded(value: object) -> str:
    """A header value with RFC 2047 words decoded, as a reader sees it."""
    if value is None:
        return ""
    text = str(value)
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except Exception:
        # An encoded word in an unknown charset: RFC 2047 6.2 lets a reader show
        # it as written or make a best effort; only the words outside count.
        return re.sub(r"=\?[^?\s]*\?[bBqQ]\?[^?\s]*\?=", " ", text)


def _body_word(data: bytes) -> str | None:
    try:
        message = BytesParser(policy=policy.default).parsebytes(data)
        part = message.get_body(preferencelist=("plain",))
        if part is None or part.get_content_type() != "text/plain":
            return None
        if _depth(message) > MAX_DEPTH:
            return None  # past the parser's documented nesting limit: an opaque part
        text = part.get_content()
    except Exception:
        return None
    words = _WORD.findall(text)
    return words[len(words) // 2] if words else None


def _depth(message: object, level: int = 0) -> int:
    """How deep multiparts and message/rfc822 parts nest in `message`."""
    if level > MAX_DEPTH or not message.is_multipart():  # type: ignore[attr-defined]
        return level
    return max((_depth(p, level + 1) for p in message.get_payload()), default=level)  # type: ignore[attr-defined]


def search_all(connect: Callable[[], RawIMAP], walk: Walk, label: str) -> tuple[list[str], int]:
    """`UID SEARCH UID u <key> "word"` for every term of every message: the answer
    must be exactly u. Returns (problems, number of searches)."""
    commands, owners = [], []
    for uid, message in sorted(walk.messages.items()):
        for key, word in search_terms(message.body):
            commands.append(f'UID SEARCH UID {uid} {key} "{word}"'.encode())
            owners.append((message.name, key, word, uid))
    problems: list[str] = []
    serverbugs = 0
    pipe = Pipeline(connect(), window=100, reconnect=connect)
    for start in range(0, len(commands), 500):
        if serverbugs >= MAX_SERVERBUGS:  # a search that fails for all: no point in 20,000
            problems.append(f"{label}: stopped after {serverbugs} failed searches, "
                            f"{len(commands) - start} not sent")  # fmt: skip
            break
        chunk = commands[start : start + 500]
        for answer, owner in zip(pipe.run(chunk), owners[start : start + 500], strict=True):
            serverbugs += _check_search(answer, owner, problems)
    pipe.client.close()
    return problems, len(commands)


def _check_search(answer: Answer, owner: tuple[str, str, str, int], problems: list[str]) -> int:
    name, key, word, uid = owner
    if problem := status_problem(answer):
        problems.append(f"{name}: {problem}")
        return 1
    found = [int(x) for line in answer.untagged if line.startswith(b"* SEARCH")
                 for x in parse(line)[2:]]  # fmt: skip
    if answer.status != b"OK" or found != [uid]:
        problems.append(f"{name}: UID SEARCH {key} {word!r} found {found}, not [{uid}]"
                        f" ({answer.tagged.strip()[:60]!r})")  # fmt: skip
    return 0


# -- POP3 -------------------------------------------------------------------------------


class Pop3:
    """A raw POP3 client that pipelines (RFC 2449 6.6 PIPELINING)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()

    def line(self) -> bytes:
        line = self.file.readline()
        if not line:
            raise ConnectionError("closed by the POP3 server")
        return line

    def multiline(self) -> bytes:
        """The lines after +OK up to '.', dot-unstuffed (RFC 1939 3)."""
        out = []
        while True:
            line = self.line()
            if line == b".\r\n":
                return b"".join(out)
            out.append(line[1:] if line.startswith(b".") else line)

    def send(self, *commands: bytes) -> None:
        self.sock.sendall(b"".join(c + b"\r\n" for c in commands))

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def pop3_read_all(server: PimailServer, address: str, files: dict[int, Path]) -> list[str]:
    """STAT, LIST, UIDL, then RETR and TOP of every message: RETR must be the
    stored octets, LIST's size their length, TOP the header and n lines."""
    problems: list[str] = []
    stored = {hashlib.sha256(p.read_bytes()).digest(): p for p in files.values()}
    pop = Pop3(server.pop3_port)
    try:
        pop.send(b"USER " + address.encode(), b"PASS " + PASSWORD.encode(), b"STAT")
        for what in (b"USER", b"PASS", b"STAT"):
            reply = pop.line()
            if not reply.startswith(b"+OK"):
                return [f"POP3 {what.decode()}: {reply!r}"]
        count, octets = map(int, reply.split()[1:3])
        if count != len(files):
            problems.append(f"POP3 STAT says {count} messages, the Maildir has {len(files)}")
        if octets != sum(p.stat().st_size for p in files.values()):
            problems.append(f"POP3 STAT says {octets} octets, not the Maildir's total")
        pop.send(b"LIST", b"UIDL")
        sizes = _listing(pop, problems, b"LIST")
        uidls = _listing(pop, problems, b"UIDL")
        if len(set(uidls.values())) != len(uidls):
            problems.append("POP3 UIDL: unique-ids are not unique")
        for start in range(1, count + 1, 100):
            numbers = range(start, min(start + 100, count + 1))
            pop.send(*(b"RETR %d\r\nTOP %d 3" % (n, n) for n in numbers))
            for n in numbers:
                problems += _retr_top(pop, n, sizes.get(n), stored)
        pop.send(b"QUIT")
        pop.line()
    finally:
        pop.close()
    return problems


def _listing(pop: Pop3, problems: list[str], what: bytes) -> dict[int, str]:
    reply = pop.line()
    if not reply.startswith(b"+OK"):
        problems.append(f"POP3 {what.decode()}: {reply!r}")
        return {}
    out = {}
    for line in pop.multiline().splitlines():
        number, value = line.split(b" ", 1)
        out[int(number)] = value.decode()
    return out


def _retr_top(pop: Pop3, n: int, size: str | None, stored: dict[bytes, Path]) -> list[str]:
    problems = []
    reply = pop.line()
    if not reply.startswith(b"+OK"):
        pop.line()  # the TOP's answer, an -ERR too
        return [f"POP3 RETR {n}: {reply!r}"]
    data = pop.multiline()
    path = stored.get(hashlib.sha256(data).digest())
    name = stored_name(data)
    if path is None:
        problems.append(f"POP3 RETR {n} ({name}): {len(data)} octets that are no stored file")
    if size is None or int(size) != len(data):
        problems.append(f"POP3 {name}: LIST says {size} octets, RETR gave {len(data)}")
    reply = pop.line()
    if not reply.startswith(b"+OK"):
        return [*problems, f"POP3 TOP {n} 3 ({name}): {reply!r}"]
    top = pop.multiline()
    end = data.find(b"\r\n\r\n")
    head, body = (data[: end + 4], data[end + 4 :]) if end >= 0 else (data, b"")
    want = head + b"".join(body.splitlines(keepends=True)[:3])
    if end >= 0 and top != want:
        problems.append(f"POP3 TOP {n} 3 ({name}): {len(top)} octets, not the header and"
                        f" 3 lines ({len(want)})")  # fmt: skip
    return problems


# -- the webmail ------------------------------------------------------------------------

_LINK = re.compile(r'(?:href|src)="(/mail/\d+/\d+/(?:frame|part|inline|raw)[^"]*)"')


def web_read_all(
    server: PimailServer,
    address: str,
    folder_id: int,
    walk: Walk,
    uids: list[int],
    threads: int = 3,
) -> list[str]:
    """Log in over HTTPS and open each message page, then every frame, part and
    inline link the page has (and the raw download): never a 5xx; the links a
    page shows answer 200."""

    def run(share: list[int]) -> list[str]:
        browser = Browser(f"https://127.0.0.1:{server.https_port}", server.client_tls())
        if browser.login(address, PASSWORD).status != 200:
            return ["webmail: login failed"]
        problems = []
        for uid in share:
            name = walk.messages[uid].name if uid in walk.messages else f"uid={uid}"
            base = f"/mail/{folder_id}/{uid}"
            page = browser.get(base)
            if page.status != 200:
                problems.append(f"web {name}: GET {base} -> {page.status}")
                continue
            links = {link.replace("&amp;", "&") for link in _LINK.findall(page.text)}
            for link in sorted(links | {base + "/raw"}):
                got = browser.get(link)
                if got.status != 200:
                    problems.append(f"web {name}: GET {link} -> {got.status}")
        return problems

    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(run, [uids[i::threads] for i in range(threads)])
    return [p for result in results for p in result]
