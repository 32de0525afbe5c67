"""250 means on disk: SIGKILL the server under load, again and again, and lose nothing.

Then delete the index and check that the rebuild gives back the same UIDs,
UIDVALIDITY and flags.
"""

from __future__ import annotations

import random
import re
import smtplib
import threading
import time
from collections import Counter
from pathlib import Path

from conftest import PimailServer
from pimail import config
from pimail.auth.accounts import Directory
from pimail.db import open_main
from pimail.store.store import Store

SENDERS = 8
ROUNDS = 5
_MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)


def sender_thread(
    port: int,
    round_no: int,
    n: int,
    acked: list[tuple[str, tuple[str, ...]]],
    stop: threading.Event,
) -> None:
    """Send messages one after another until the server dies; record every 250."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            i = 0
            while not stop.is_set():
                msgid = f"r{round_no}-s{n}-m{i}@crash.test"
                rcpts = (
                    ("alice@example.org", "bob@example.org")
                    if i % 3 == 0
                    else ("alice@example.org",)
                )
                body = (
                    f"Message-ID: <{msgid}>\r\nSubject: crash {i}\r\n\r\n".encode()
                    + b"x" * 2000
                    + b"\r\n"
                )
                s.sendmail("load@remote.test", list(rcpts), body)
                acked.append((msgid, rcpts))  # only reached after the 250
                i += 1
    except (smtplib.SMTPException, OSError):
        return  # the server was killed under us


def message_ids(files: list[Path]) -> Counter[str]:
    ids: Counter[str] = Counter()
    for f in files:
        m = _MESSAGE_ID.search(f.read_bytes()[:4096])
        if m:
            ids[m.group(1).decode()] += 1
    return ids


def index_state(server: PimailServer, address: str) -> list[tuple[int, str, int, int]]:
    return [
        (r["uid"], r["flags"], r["uidvalidity"], r["internaldate"])
        for r in server.index_rows(address)
    ]


def check_consistent(server: PimailServer, address: str) -> None:
    files = server.messages(address)
    rows = server.index_rows(address)
    assert sorted(f.name for f in files) == sorted(r["filename"] for r in rows)
    uids = [r["uid"] for r in rows]
    assert len(uids) == len(set(uids))
    assert all(f"U={r['uid']}" in r["filename"] for r in rows)


def test_sigkill_under_load_loses_nothing(make_server) -> None:
    server: PimailServer = make_server()
    server.cli("domain", "add", "example.org")
    server.add_user("alice@example.org")
    server.add_user("bob@example.org")
    acked: list[tuple[str, tuple[str, ...]]] = []
    rng = random.Random(2026)
    for round_no in range(ROUNDS):
        server.start()
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=sender_thread, args=(server.smtp_port, round_no, n, acked, stop)
            )
            for n in range(SENDERS)
        ]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.4, 1.6))
        server.kill()  # SIGKILL, mid-transaction for most senders
        stop.set()
        for t in threads:
            t.join(15)
    assert len(acked) > 100, "the load did not get going"
    server.start()  # restart: reconcile the index with what is on disk
    alice = message_ids(server.messages("alice@example.org"))
    bob = message_ids(server.messages("bob@example.org"))
    for msgid, rcpts in acked:
        assert alice[msgid] == 1, msgid
        if "bob@example.org" in rcpts:
            assert bob[msgid] == 1, msgid
    assert max(alice.values()) == 1 and max(bob.values()) == 1  # nothing twice
    for address in ("alice@example.org", "bob@example.org"):
        check_consistent(server, address)
    assert not any((server.data_dir / "spool" / "incoming").iterdir())
    server.stop()


def alice_with_mail(make_server, count: int) -> PimailServer:
    """A running server whose alice@example.org has `count` messages."""
    server: PimailServer = make_server()
    server.cli("domain", "add", "example.org")
    server.add_user("alice@example.org")
    server.start()
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as s:
        for i in range(count):
            s.sendmail("a@remote.test", ["alice@example.org"], f"Subject: m{i}\r\n\r\nx\r\n")
    return server


def test_rebuilt_index_keeps_uids_uidvalidity_and_flags(make_server) -> None:
    server = alice_with_mail(make_server, 12)
    server.stop()
    # Flag some messages through the store, as IMAP will.
    settings = config.load(server.config)
    store = Store(settings, Directory(open_main(settings.db_path)))
    store.open()
    rows = server.index_rows("alice@example.org")
    mailbox_id = rows[0]["mailbox_id"]
    store.set_flags(mailbox_id, 2, ["\\Seen"])
    store.set_flags(mailbox_id, 5, ["\\Seen", "\\Flagged", "\\Answered"])
    store.set_flags(mailbox_id, 7, ["\\Deleted", "\\Draft"])
    store.close()
    before = index_state(server, "alice@example.org")
    assert before[1][1] == "\\Seen" and before[4][1] == "\\Seen \\Flagged \\Answered"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{settings.index_path}{suffix}").unlink(missing_ok=True)
    server.start()
    after = index_state(server, "alice@example.org")

    def normal(state: list[tuple[int, str, int, int]]) -> list[tuple[int, set[str], int, int]]:
        return [(uid, set(flags.split()), v, d) for uid, flags, v, d in state]

    assert normal(after) == normal(before)
    check_consistent(server, "alice@example.org")
    # New mail after the rebuild continues the UID sequence.
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as s:
        s.sendmail("a@remote.test", ["alice@example.org"], "Subject: after\r\n\r\nx\r\n")
    assert server.index_rows("alice@example.org")[-1]["uid"] == 13
    server.stop()


def test_corrupt_index_is_rebuilt(make_server) -> None:
    server = alice_with_mail(make_server, 3)
    before = index_state(server, "alice@example.org")
    server.stop()
    index = server.data_dir / "index.db"
    index.write_bytes(b"this is not a database" * 100)
    server.start()
    assert index_state(server, "alice@example.org") == before
    assert list(server.data_dir.glob("index.db.corrupt-*"))
    server.stop()


def test_reindex_command(make_server) -> None:
    server = alice_with_mail(make_server, 1)
    refused = server.cli("reindex", check=False)
    assert refused.returncode == 1 and "is running" in refused.stderr
    before = index_state(server, "alice@example.org")
    server.stop()
    done = server.cli("reindex")
    assert "1 messages" in done.stdout
    assert index_state(server, "alice@example.org") == before
