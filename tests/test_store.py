"""The store in-process, on real files: UIDs, group commit, reconciliation."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from pimail import config
from pimail.auth.accounts import Directory
from pimail.auth.passwords import hash_password, verify_password
from pimail.db import open_main
from pimail.store import maildir
from pimail.store.spool import Incoming
from pimail.store.store import Store


@pytest.fixture
def env(tmp_path: Path):
    settings = config.load(None, tmp_path / "data")
    directory = Directory(open_main(settings.db_path))
    directory.add_domain("example.org")
    alice = directory.add_account("alice@example.org", "x")
    bob = directory.add_account("bob@example.org", "x")
    store = Store(settings, Directory(open_main(settings.db_path)))
    store.open()
    yield settings, store, alice, bob
    store.close()


def incoming(store: Store, text: str) -> Incoming:
    message = Incoming(store.incoming_dir)
    message.write(text.encode())
    return message


def rows(settings: config.Settings, account_id: int, folder: str = "INBOX") -> list[tuple]:
    import sqlite3

    con = sqlite3.connect(settings.index_path)
    out = con.execute(
        "SELECT m.uid, m.subdir, m.filename, m.flags FROM messages m"
        " JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.account_id = ? AND b.name = ?"
        " ORDER BY m.uid",
        (account_id, folder),
    ).fetchall()
    con.close()
    return out


def test_concurrent_deliveries_get_distinct_uids_in_few_commits(env) -> None:
    settings, store, alice, bob = env

    async def go() -> list:
        return await asyncio.gather(
            *(
                store.deliver(incoming(store, f"Subject: {i}\r\n\r\nbody\r\n"), [alice, bob])
                for i in range(200)
            )
        )

    placements = asyncio.run(go())
    alice_uids = sorted(p.uid for group in placements for p in group if p.account_id == alice.id)
    assert alice_uids == list(range(1, 201))
    assert len(rows(settings, bob.id)) == 200
    # Group commit: 200 concurrent deliveries shared far fewer fsync rounds.
    assert store.batches < 20
    assert not os.listdir(store.incoming_dir)


def test_files_dropped_in_by_other_tools_get_uids(env, tmp_path: Path) -> None:
    settings, store, alice, _ = env
    asyncio.run(store.deliver(incoming(store, "Subject: one\r\n\r\n"), [alice]))
    inbox = settings.mail_dir / "example.org" / "alice"
    (inbox / "cur" / "1700000000.foreign.host:2,S").write_bytes(b"Subject: copied\r\n\r\nx\r\n")
    (inbox / "new" / "1700000001.other.host").write_bytes(b"Subject: other\r\n\r\nx\r\n")
    report = store.reconcile()
    assert report.renamed == 2
    got = rows(settings, alice.id)
    assert [r[0] for r in got] == [1, 2, 3]
    copied = next(r for r in got if "foreign" in r[2])
    assert copied[3] == "\\Seen" and ",U=" in copied[2]


def test_uidnext_survives_expunge_and_lost_index(env) -> None:
    settings, store, alice, _ = env

    async def deliver3() -> None:
        for i in range(3):
            await store.deliver(incoming(store, f"Subject: {i}\r\n\r\n"), [alice])

    asyncio.run(deliver3())
    mailbox_id = store._mailboxes[(alice.id, "INBOX")].id
    assert store.expunge(mailbox_id, [2, 3]) == [2, 3]
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{settings.index_path}{suffix}").unlink(missing_ok=True)
    store2 = Store(settings, Directory(open_main(settings.db_path)))
    store2.open()
    try:
        placements = asyncio.run(store2.deliver(incoming(store2, "Subject: new\r\n\r\n"), [alice]))
        # UIDs 2 and 3 were handed out once: never again (RFC 9051 2.3.1.1).
        assert placements[0].uid == 4
    finally:
        store2.close()


def test_folder_names_cannot_escape() -> None:
    for name in ["../../etc", "a/../b", "Sent/..", ".hidden", "x\x00y", "a%b*c", "~2E"]:
        try:
            dirname = maildir.folder_dirname(name)
        except ValueError:
            continue
        # One directory entry, not "." or "..": it stays inside the account.
        assert "/" not in dirname and dirname not in (".", "..")
        assert ".." not in dirname.split(".")[1:]
        root = Path("/data/mail/example.org/alice")
        assert (root / dirname).resolve().parent == root
        assert maildir.folder_name(dirname) == name
    assert maildir.folder_dirname("INBOX") == ""
    assert maildir.folder_dirname("Work/Projects") == ".Work.Projects"


def test_maildir_names_round_trip() -> None:
    name = maildir.new_name("1795808158.M1P2Q3.host", 1234, 42) + ":2,FS"
    parsed = maildir.parse_name(name)
    assert (parsed.uid, parsed.size, set(parsed.flags)) == (42, 1234, {"\\Flagged", "\\Seen"})
    assert parsed.with_letters("SR").endswith(",U=42:2,RS")


def test_password_hashes() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("$scrypt$ln=14,r=8,p=1$")
    assert verify_password("correct horse", stored)
    assert not verify_password("wrong horse", stored)
    assert hash_password("correct horse") != stored  # salted
    for bad in ("", "$scrypt$", "$scrypt$ln=99,r=8,p=1$aa$bb", "$md5$x$y$z"):
        assert not verify_password("x", bad)


def test_folder_ops_flags_keywords_copy_move_append(env) -> None:
    import sqlite3

    settings, store, alice, _ = env

    async def go() -> None:
        for i in range(3):
            await store.deliver(
                incoming(store, f"Subject: m{i}\r\nFrom: x@y.test\r\n\r\nneedle{i} text\r\n"),
                [alice],
            )

    asyncio.run(go())
    inbox = store.open_mailbox(alice, "inbox")
    assert store.claim_new(inbox.id) == [1, 2, 3]
    work = store.create_mailbox(alice, "Work/Projects")
    assert store.open_mailbox(alice, "Work").name == "Work"  # the parent came too
    changes, failed = store.store_flags(inbox.id, [1, 2], "+", ["\\Seen", "$Important"])
    assert [c.uid for c in changes] == [1, 2] and not failed
    modseq = changes[0].modseq
    # CONDSTORE: a change against a stale modseq fails for that message.
    _, failed = store.store_flags(inbox.id, [1, 3], "-", ["\\Seen"], unchangedsince=modseq - 1)
    assert failed == [1]
    name = rows(settings, alice.id)[0][2]
    assert name.endswith(":2,Sa")  # \Seen and the first keyword's letter
    assert (inbox.path / maildir.KEYWORDS_FILE).read_text() == "0 $Important\n"
    _uidvalidity, pairs = store.copy(inbox.id, [1, 2], work)
    assert pairs == [(1, 1), (2, 2)]
    assert [r[3] for r in rows(settings, alice.id, "Work/Projects")] == [
        "\\Seen $Important",
        "\\Seen $Important",
    ]
    _, moved = store.move(inbox.id, [3], work)
    assert moved == [(3, 3)]
    assert [r[0] for r in rows(settings, alice.id)] == [1, 2]
    _uv, uid = store.append(work, b"Subject: appended\r\n\r\nhello\r\n", ["\\Draft"], 1.7e9)
    assert uid == 4
    store.rename_mailbox(alice, "Work", "Jobs")
    assert [r[0] for r in rows(settings, alice.id, "Jobs/Projects")] == [1, 2, 3, 4]
    store.analyse_pending(1000)  # what the background analyser has not done yet
    con = sqlite3.connect(settings.index_path)
    assert con.execute("SELECT count(*) FROM messages WHERE analysed = 0").fetchone() == (0,)
    hits = con.execute(
        "SELECT m.uid FROM message_text t JOIN messages m ON m.id = t.rowid"
        " WHERE instr(t.body, 'needle1') ORDER BY m.uid"
    ).fetchall()
    assert hits == [(2,), (2,)]  # in INBOX and its copy in Jobs/Projects
    envelope = con.execute(
        "SELECT c.envelope FROM messages m JOIN message_cache c ON c.message_id = m.id"
        " WHERE m.uid = 4"
    ).fetchone()[0]
    assert b'"appended"' in envelope
    con.close()
    store.delete_mailbox(alice, "Jobs/Projects")
    assert not (settings.mail_dir / "example.org" / "alice" / ".Jobs.Projects").exists()
    # A rebuild keeps keywords that have a letter.
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{settings.index_path}{suffix}").unlink(missing_ok=True)
    again = Store(settings, Directory(open_main(settings.db_path)))
    again.open()
    assert rows(settings, alice.id)[0][3] == "\\Seen $Important"
    again.close()


def test_a_delivery_can_go_to_junk_for_some_accounts(env) -> None:
    settings, store, alice, bob = env
    placements = asyncio.run(
        store.deliver(incoming(store, "Subject: maybe spam\r\n\r\nx\r\n"), [alice, bob], {bob.id})
    )
    assert sorted((p.account_id, p.folder) for p in placements) == sorted(
        [(alice.id, "INBOX"), (bob.id, "Junk")]
    )
    assert len(rows(settings, alice.id)) == 1 and rows(settings, alice.id, "Junk") == []
    assert rows(settings, bob.id) == [] and len(rows(settings, bob.id, "Junk")) == 1
    junk = settings.mail_dir / "example.org" / "bob" / ".Junk" / "new"
    assert len(list(junk.iterdir())) == 1


@pytest.mark.parametrize("spill", [1 << 20, 10])
def test_splice_in_memory_and_spilled(tmp_path: Path, spill: int) -> None:
    message = Incoming(tmp_path, spill_threshold=spill)
    message.write(b"Trace: 1\r\nX-Old: forged\r\nSubject: s\r\n\r\nbody\r\n")
    message.splice(10, len(b"X-Old: forged\r\n"), b"X-New: ours\r\nX-Two: 2\r\n")
    message.insert(0, b"Top: 0\r\n")
    expected = b"Top: 0\r\nTrace: 1\r\nX-New: ours\r\nX-Two: 2\r\nSubject: s\r\n\r\nbody\r\n"
    assert message.content() == expected and message.size == len(expected)
    assert bytes(message.head) == expected[: expected.index(b"\r\n\r\n") + 4]  # headers only
    message.discard()


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 4096])
def test_the_head_keeps_the_header_block_and_no_body(tmp_path: Path, chunk: int) -> None:
    """A message in DATA holds its header block in memory for parsing, never a
    copy of its body (an unfinished 300 KiB DATA held 270 KiB per connection):
    written in pieces of any size, the blank line split between two of them."""
    from pimail.store.headers import MAX_HEADER, header_end

    for raw in (
        b"Received: x\r\nSubject: s\r\n\r\n" + b"b" * 300_000,
        b"Subject: lf\n\nbody\n\n" + b"c" * 1000,
        b"X-Big: " + b"y" * (MAX_HEADER + 10),  # no blank line: MAX_HEADER octets
    ):
        message = Incoming(tmp_path, spill_threshold=64 * 1024)
        split = min(len(raw), 50_000)
        for i in range(0, split, chunk):
            message.write(raw[i : min(i + chunk, split)])
        message.write(raw[split:])
        assert bytes(message.head) == raw[: header_end(raw)]
        assert message.content() == raw
        message.discard()


def test_an_append_that_fails_in_the_index_leaves_no_file(env, monkeypatch) -> None:
    """APPEND answered NO must leave nothing behind (RFC 9051 6.3.12: the
    message is appended or not at all): the Maildir is the truth, and a file
    outside the index would come back at the next reindex."""
    from pimail.store import ops

    settings, store, alice, _ = env

    def broken(self, message_id: int, data: bytes) -> None:
        raise RuntimeError("injected")

    async def go() -> None:
        mbox = await store.run(store.open_mailbox, alice, "INBOX")
        with pytest.raises(RuntimeError):
            await store.run(store.append, mbox.id, b"Subject: lost\r\n\r\nx\r\n", [], None, 0)
        monkeypatch.undo()
        _, uid = await store.run(store.append, mbox.id, b"Subject: kept\r\n\r\ny\r\n", [], None, 0)
        assert [r[0] for r in rows(settings, alice.id)] == [uid]

    monkeypatch.setattr(ops.MailboxOps, "_store_analysis", broken)
    asyncio.run(go())
    files = [
        p.name
        for sub in ("cur", "new", "tmp")
        for p in (store.mail_dir / "example.org" / "alice" / sub).iterdir()
    ]
    assert (
        len(files) == 1
        and b"kept"
        in next((store.mail_dir / "example.org" / "alice" / "cur").iterdir()).read_bytes()
    )
