"""A real corpus through every path of a real server (issue 14).

All 6,046 messages of the SpamAssassin public corpus (tests/filter/corpus.py)
and a hostile MIME set made in code (hostile.py) go in over SMTP, four
connections in parallel; the hostile set also goes in over IMAP APPEND, which
takes octets SMTP must refuse (bare CR or LF). Then every message is read
back over every path: IMAP FETCH of every item and every part, IMAP SEARCH,
POP3 RETR/TOP/LIST/UIDL, the webmail's message page and all its links (300
corpus messages, the whole hostile set). Each test collects every problem it
sees and fails with the list (first 30 shown), named by corpus file.

Nothing may answer NO [SERVERBUG], BAD to a well-formed command, or HTTP 5xx;
no traceback or ERROR line may appear in the server's log; BODY[] is the
Maildir file's octets; RFC822.SIZE its length; the index matches the Maildir.
"""

from __future__ import annotations

import collections
import random
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from conftest import PimailServer
from imap.imap_raw import RawIMAP
from pimail.store import maildir

from . import hostile
from .deliver import (
    Outcome,
    corpus,
    imap_append,
    login,
    maildir_files,
    smtp_deliver,
    stored_name,
)
from .readers import pop3_read_all, search_all, web_read_all
from .walk import Walk, walk_mailbox

CORPUS = "corpus@example.org"
HOSTILE = "hostile@example.org"
HOSTILE_FOLDER = "Hostile"  # the hostile set again, through APPEND
WEB_SAMPLE = 300  # corpus messages opened in the webmail (all of the hostile set)
SHOWN = 30


def fail_with(problems: list[str], what: str) -> None:
    """Fail with a summary: how many problems of each kind, then the first 30."""
    if problems:
        kinds = collections.Counter(_kind(p) for p in problems)
        summary = "\n  ".join(f"{n:5d} x {kind}" for kind, n in kinds.most_common(15))
        shown = "\n  ".join(problems[:SHOWN])
        pytest.fail(
            f"{len(problems)} problems {what}; by kind:\n  {summary}\n"
            f"the first {SHOWN}:\n  {shown}",
            pytrace=False,
        )


def _kind(problem: str) -> str:
    """A problem without its message name, numbers and quoted details."""
    text = problem.split(": ", 1)[-1] if "uid=" in problem.split(": ", 1)[0] else problem
    text = re.sub(r"\d+", "N", text)
    text = re.sub(r"(TEXT|SUBJECT|FROM) ('[^']*'|\"[^\"]*\")", r"\1 ...", text)
    text = re.sub(r"found \[[^\]]*\]", "found [...]", text)
    text = re.sub(r": got .*", ": got ...", text)
    return text[:110]


@dataclass
class Loaded:
    server: PimailServer
    smtp: dict[str, Outcome]
    append: Outcome
    seconds: dict[str, float] = field(default_factory=dict)
    walks: dict[str, Walk] = field(default_factory=dict)
    log_offset: int = 0

    def log_problems(self) -> list[str]:
        """ERROR lines of the server's log, each with the exception that ended
        its traceback (the first unindented line after it)."""
        lines = self.server.log.read_text(errors="replace").splitlines()
        out = []
        for i, line in enumerate(lines):
            if " ERROR " not in line:
                continue
            tail = ""
            if i + 1 < len(lines) and lines[i + 1].startswith("Traceback"):
                tail = next((x for x in lines[i + 2 : i + 200] if x and not x[0].isspace()), "")
            out.append(f"{line[24:200]} | {tail[:200]}")
        return out


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    server = PimailServer(
        tmp_path_factory.mktemp("corpus") / "data",
        {"imap": {"allow_plaintext_auth": True}, "pop3": {"allow_plaintext_auth": True}},
    )
    server.cli("domain", "add", "example.org")
    server.add_user(CORPUS)
    server.add_user(HOSTILE)
    server.start()
    try:
        started = time.monotonic()
        smtp = {
            CORPUS: smtp_deliver(server, CORPUS, corpus()),
            HOSTILE: smtp_deliver(server, HOSTILE, hostile.messages()),
        }
        append = imap_append(server, HOSTILE, HOSTILE_FOLDER, hostile.messages())
        loaded = Loaded(server, smtp, append)
        loaded.seconds["deliver"] = time.monotonic() - started
        yield loaded
    finally:
        server.stop()
    print(f"\ncorpus timings (s): {loaded.seconds}")


def folder_dir(folder: str) -> str:
    return "" if folder == "INBOX" else maildir.folder_dirname(folder)


MAILBOXES = [(CORPUS, "INBOX"), (HOSTILE, "INBOX"), (HOSTILE, HOSTILE_FOLDER)]


def walked(loaded: Loaded, address: str, folder: str) -> Walk:
    """The IMAP walk of one mailbox, done once and shared by the tests."""
    key = f"{address}/{folder}"
    if key not in loaded.walks:
        started = time.monotonic()

        def connect() -> RawIMAP:
            client = login(loaded.server, address)
            client.ok(f'EXAMINE "{folder}"')
            return client

        files = maildir_files(loaded.server, address, folder_dir(folder))
        loaded.walks[key] = walk_mailbox(connect, files, key)
        loaded.seconds[f"imap fetch {key}"] = time.monotonic() - started
    return loaded.walks[key]


def test_smtp_takes_the_corpus_or_refuses_cleanly(loaded: Loaded) -> None:
    """Every message is taken (250) or refused with a 5xx reply, never dropped
    or answered 4xx; the refusals are printed (they are part of the report)."""
    problems = []
    for address, outcome in loaded.smtp.items():
        problems += outcome.problems
        for name, (code, text) in sorted(outcome.refused.items()):
            print(f"SMTP refused {name}: {code} {text}")
        stored = {stored_name(p.read_bytes()) for p in loaded.server.messages(address)}
        lost = sorted(set(outcome.accepted) - stored)
        problems += [f"{name}: accepted with 250 but not in the Maildir" for name in lost]
    corpus_outcome = loaded.smtp[CORPUS]
    assert (
        len(corpus_outcome.accepted) + len(corpus_outcome.refused) + len(corpus_outcome.problems)
        == 6046
    )
    # Only the hostile messages with bare CR or LF may be refused (RFC 5321 2.3.8),
    # and the MIME and header bombs, by the filter's limits (552 5.3.4; trusted
    # senders too). They still go in by APPEND and are read back below.
    bombs = ("10000-parts", "nesting-200", "-deep", "10000-header-fields", "overlong-header")
    for name, (code, text) in loaded.smtp[HOSTILE].refused.items():
        bare = any(tag in name for tag in ("cr-only", "lf-only", "mixed-line-ends"))
        bomb = any(tag in name for tag in bombs) and (code, str(text)[:5]) == (552, "5.3.4")
        if not (bare or bomb):
            problems.append(f"{name}: refused though it is valid SMTP data")
    fail_with(problems, "delivering over SMTP")


def test_append_takes_the_hostile_set(loaded: Loaded) -> None:
    """APPEND stores any octets (RFC 9051 6.3.12): every hostile message, bare
    CR/LF too, and nothing it answered NO for is left in the Maildir."""
    outcome = loaded.append
    problems = list(outcome.problems)
    problems += [f"{name}: APPEND refused: {text}" for name, (_, text) in outcome.refused.items()]
    files = loaded.server.messages(HOSTILE, folder_dir(HOSTILE_FOLDER))
    if len(files) != len(outcome.accepted):
        problems.append(f"{len(outcome.accepted)} APPENDs answered OK but the Maildir folder"
                        f" has {len(files)} files")  # fmt: skip
    fail_with(problems, "APPENDing the hostile set")


@pytest.mark.parametrize(("address", "folder"), MAILBOXES)
def test_index_matches_the_maildir(loaded: Loaded, address: str, folder: str) -> None:
    """Maildir is the truth: the index has one row per file, with its UID and
    file name and size, and IMAP's EXISTS/UIDNEXT agree."""
    server = loaded.server
    files = maildir_files(server, address, folder_dir(folder))
    rows = server.index_rows(address, folder)
    problems = []
    by_uid = {int(r["uid"]): r for r in rows}
    if len(rows) != len(by_uid):
        problems.append("the index has duplicate UIDs")
    for uid in sorted(set(files) - set(by_uid)):
        problems.append(f"{stored_name(files[uid].read_bytes())} uid={uid}: file not in the index")
    for uid in sorted(set(by_uid) - set(files)):
        problems.append(f"uid={uid}: index row without a file ({by_uid[uid]['filename']})")
    for uid in sorted(set(files) & set(by_uid)):
        row, path = by_uid[uid], files[uid]
        if row["filename"] != path.name or row["size"] != path.stat().st_size:
            problems.append(f"{stored_name(path.read_bytes())} uid={uid}: index says"
                            f" {row['filename']} {row['size']}, file {path.name} "
                            f"{path.stat().st_size}")  # fmt: skip
    client = login(server, address)
    try:
        untagged = client.ok(f'STATUS "{folder}" (MESSAGES UIDNEXT)')
    finally:
        client.close()
    status = b" ".join(untagged)
    if b"MESSAGES %d " % len(files) not in status:
        problems.append(f"STATUS {status!r}: not {len(files)} messages")
    if files and b"UIDNEXT %d" % (max(files) + 1) not in status and b"UIDNEXT" in status:
        uidnext = int(status.split(b"UIDNEXT ")[1].split(b")")[0])
        if uidnext <= max(files):
            problems.append(f"STATUS UIDNEXT {uidnext} <= the largest UID {max(files)}")
    fail_with(problems, f"between the index and the Maildir of {address}/{folder}")


@pytest.mark.parametrize(("address", "folder"), MAILBOXES)
def test_imap_fetches_every_item_and_part(loaded: Loaded, address: str, folder: str) -> None:
    """FETCH ENVELOPE, BODYSTRUCTURE, RFC822.SIZE, INTERNALDATE, HEADER.FIELDS,
    BODY[] (the stored octets), BODY[n.MIME] and BODY[n] of every part,
    BINARY[n] of every leaf (our own decoding where unambiguous)."""
    walk = walked(loaded, address, folder)
    print(f"{address}/{folder}: {len(walk.messages)} messages, {walk.counts}")
    fail_with(walk.problems, f"fetching {address}/{folder}")


@pytest.mark.parametrize(("address", "folder"), MAILBOXES)
def test_imap_search_finds_every_message(loaded: Loaded, address: str, folder: str) -> None:
    """SEARCH SUBJECT/FROM/TEXT with words of each message find it."""
    walk = walked(loaded, address, folder)
    started = time.monotonic()

    def connect() -> RawIMAP:
        client = login(loaded.server, address)
        client.ok(f'EXAMINE "{folder}"')
        return client

    problems, searches = search_all(connect, walk, f"{address}/{folder}")
    loaded.seconds[f"imap search {address}/{folder}"] = time.monotonic() - started
    print(f"{searches} searches")
    fail_with(problems, f"searching {address}/{folder}")


@pytest.mark.parametrize("address", [CORPUS, HOSTILE])
def test_pop3_reads_every_message(loaded: Loaded, address: str) -> None:
    started = time.monotonic()
    problems = pop3_read_all(loaded.server, address, maildir_files(loaded.server, address))
    loaded.seconds[f"pop3 {address}"] = time.monotonic() - started
    fail_with(problems, f"reading {address} over POP3")


@pytest.mark.parametrize(("address", "folder"), MAILBOXES)
def test_webmail_opens_every_message(loaded: Loaded, address: str, folder: str) -> None:
    """The message page, its body frames, attachments, inline images and the raw
    download: 200 for every link a page shows, never 5xx."""
    walk = walked(loaded, address, folder)
    uids = sorted(walk.messages)
    if address == CORPUS:
        uids = sorted(random.Random(14).sample(uids, min(WEB_SAMPLE, len(uids))))
    con = sqlite3.connect(loaded.server.data_dir / "index.db")
    [(folder_id,)] = con.execute(
        "SELECT id FROM mailboxes WHERE account_id = ? AND name = ?",
        (loaded.server.account_id(address), folder),
    ).fetchall()
    con.close()
    started = time.monotonic()
    problems = web_read_all(loaded.server, address, folder_id, walk, uids)
    loaded.seconds[f"web {address}/{folder}"] = time.monotonic() - started
    fail_with(problems, f"opening {address}/{folder} in the webmail")


def test_no_error_in_the_server_log(loaded: Loaded) -> None:
    """Last: after all of the above, the log has no ERROR line and no traceback."""
    for address, folder in MAILBOXES:
        walked(loaded, address, folder)
    fail_with(loaded.log_problems(), "in the server's log (ERROR lines, tracebacks)")
