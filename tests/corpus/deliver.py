"""Putting a corpus into a running pimail: over SMTP (a few connections in
parallel, as several MXs would) and over IMAP APPEND (one pipelined session).

Each message goes in with its name in the envelope sender
(`<name>@corpus.test`), so the stored `Return-Path:` tells which corpus file
a stored message is, without touching the message itself.
"""

from __future__ import annotations

import re
import smtplib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from conftest import PASSWORD, PimailServer
from filter.corpus import GROUPS, corpus_dir, messages
from imap.imap_raw import RawIMAP
from pimail.store import maildir

SENDER_DOMAIN = "corpus.test"


def corpus() -> list[tuple[str, bytes]]:
    """All 6,046 SpamAssassin messages as (group.number.md5, octets with CRLF)."""
    out = []
    for group in GROUPS:
        names = sorted((corpus_dir() / group).iterdir())
        for path, data in zip(names, messages(group), strict=True):
            out.append((f"{group}.{path.name.removesuffix('.txt')}", crlf(data)))
    return out


def crlf(data: bytes) -> bytes:
    """LF line ends (as the package has them) to CRLF, as on the wire."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@dataclass
class Outcome:
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)  # clean 5xx
    problems: list[str] = field(default_factory=list)  # anything else: 4xx, a drop, ...
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(n):
        yield items[i::n]


def smtp_deliver(
    server: PimailServer, rcpt: str, items: list[tuple[str, bytes]], connections: int = 4
) -> Outcome:
    """Send every message on `connections` parallel SMTP sessions, each reused
    for many messages. A refusal must be a 5xx reply; it is recorded by name."""
    outcome = Outcome()

    def run(share: list[tuple[str, bytes]]) -> None:
        client: smtplib.SMTP | None = None
        for name, data in share:
            sender = f"{name}@{SENDER_DOMAIN}"
            try:
                if client is None:
                    client = smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=120)
                    client.ehlo("corpus.test")
                client.sendmail(sender, [rcpt], data)
            except (smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as e:
                _refused(outcome, name, e.smtp_code, e.smtp_error)
                continue
            except smtplib.SMTPRecipientsRefused as e:
                code, text = next(iter(e.recipients.values()))
                _refused(outcome, name, code, text)
                continue
            except (smtplib.SMTPException, OSError) as e:
                with outcome.lock:
                    outcome.problems.append(f"{name}: SMTP {type(e).__name__}: {e}")
                client = None  # a dropped session: a new one for the next message
                continue
            with outcome.lock:
                outcome.accepted.append(name)
        if client is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                pass

    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(run, _chunks(items, connections)))
    return outcome


def _refused(outcome: Outcome, name: str, code: int, text: bytes | str) -> None:
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    with outcome.lock:
        if 500 <= code < 600:
            outcome.refused[name] = (code, message)
        else:
            outcome.problems.append(f"{name}: SMTP refused with {code} {message} (not 5xx)")


def imap_append(
    server: PimailServer, address: str, folder: str, items: list[tuple[str, bytes]]
) -> Outcome:
    """APPEND each message to `folder` (created first) with LITERAL+ (RFC 7888),
    pipelined: the octets go exactly as given, bare CR and LF included."""
    outcome = Outcome()
    client = login(server, address)
    try:
        client.ok(f'CREATE "{folder}"')
        tags = []
        for name, data in items:
            client.n += 1
            tag = b"a%d" % client.n
            tags.append((tag, name))
            client.send(
                # NUL only in a literal8 (RFC 3516 4.3, RFC 9051 4.3)
                tag
                + b' APPEND "%s" %s{%d+}\r\n'
                % (folder.encode(), b"~" if b"\0" in data else b"", len(data))
                + data
                + b"\r\n"
            )
        for tag, name in tags:
            _, tagged = client.until(tag)
            if tagged.startswith(tag + b" OK"):
                outcome.accepted.append(name)
            elif tagged.startswith(tag + b" NO") and b"SERVERBUG" not in tagged:
                outcome.refused[name] = (0, tagged.decode("utf-8", "replace").strip())
            else:
                outcome.problems.append(f"{name}: APPEND answered {tagged!r}")
    finally:
        client.close()
    return outcome


def login(server: PimailServer, address: str) -> RawIMAP:
    """A raw IMAP session, logged in (plaintext on loopback: the corpus server
    allows it, so that megabytes are not encrypted twice on a slow box)."""
    client = RawIMAP(server.imap_port, timeout=300)
    client.ok(f'LOGIN "{address}" "{PASSWORD}"')
    return client


def maildir_files(server: PimailServer, address: str, folder: str = "") -> dict[int, Path]:
    """UID -> file of a Maildir folder (the UID is in the file name, ',U=n')."""
    out = {}
    for path in server.messages(address, folder):
        uid = maildir.parse_name(path.name).uid
        assert uid is not None, path
        out[uid] = path
    return out


def stored_name(data: bytes) -> str:
    """The corpus name a stored message was sent with (its Return-Path)."""
    first = data.split(b"\r\n", 1)[0]
    if first.startswith(b"Return-Path: <") and first.endswith(b"@" + SENDER_DOMAIN.encode() + b">"):
        return first[len(b"Return-Path: <") : -len(SENDER_DOMAIN) - 2].decode()
    word = re.search(rb"hostile\d\d", data[:300_000])  # APPENDed: the word of hostile.py
    return word.group().decode() if word else "?"
