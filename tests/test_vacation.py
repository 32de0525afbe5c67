"""smtp/vacation.py: when an auto-reply goes out (RFC 3834 2, RFC 5230 4), what
it looks like (RFC 3834 3 and 5, RFC 5230 5), and the responder's bookkeeping
against a real pimail.db. The store and the queue are stand-ins here that
record what they are given; tests/web/test_settings.py follows replies through
a running server."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pimail import db
from pimail.auth.accounts import Account, Directory
from pimail.config import Settings
from pimail.smtp import vacation
from pimail.smtp.vacation import Vacation, VacationError, build_reply, skip_reason
from pimail.store import headers

NOW = dt.datetime(2026, 7, 15, 12, 0).timestamp()
DAY = 86400
ON = Vacation(enabled=True, body="I am away.", days=7)
ME = "carol@example.org"


def fields(text: str) -> list[tuple[bytes, bytes]]:
    return headers.fields(text.replace("\n", "\r\n").encode() + b"\r\n")


PLAIN = "From: Ann <ann@remote.test>\nTo: Carol <carol@example.org>\nSubject: Budget\n"


def own(address: str) -> bool:
    return address.lower() in (ME, "carol+work@example.org", "sales@example.org")


# Each row: what differs from a plain message to carol, and the reason (None: reply).
TABLE: list[tuple[str, dict[str, Any], str | None]] = [
    ("plain message", {}, None),
    ("switched off", {"vacation": Vacation(enabled=False, body="x")}, "off"),
    ("null sender", {"sender": ""}, "null sender"),
    ("MAILER-DAEMON", {"sender": "MAILER-DAEMON@remote.test"}, "automated sender"),
    ("owner- address", {"sender": "owner-dev@lists.test"}, "automated sender"),
    ("-request address", {"sender": "dev-request@lists.test"}, "automated sender"),
    ("noreply", {"sender": "no-reply@shop.test"}, "automated sender"),
    ("own address", {"sender": "carol+work@example.org"}, "own address"),
    ("Auto-Submitted: auto-replied", {"extra": "Auto-Submitted: auto-replied\n"},
     "auto-submitted"),
    ("Auto-Submitted: auto-generated", {"extra": "Auto-Submitted: Auto-Generated; x=y\n"},
     "auto-submitted"),
    ("Auto-Submitted: no", {"extra": "Auto-Submitted: no\n"}, None),
    ("List-Id", {"extra": "List-Id: <dev.lists.test>\n"}, "mailing list"),
    ("List-Unsubscribe", {"extra": "List-Unsubscribe: <mailto:u@lists.test>\n"},
     "mailing list"),
    ("List-Post", {"extra": "List-Post: <mailto:dev@lists.test>\n"}, "mailing list"),
    ("Precedence: bulk", {"extra": "Precedence: bulk\n"}, "bulk"),
    ("Precedence: junk", {"extra": "Precedence: JUNK\n"}, "bulk"),
    ("Precedence: list", {"extra": "Precedence: list\n"}, "bulk"),
    ("Precedence: first-class", {"extra": "Precedence: first-class\n"}, None),
    ("X-Auto-Response-Suppress", {"extra": "X-Auto-Response-Suppress: OOF, DR\n"},
     "auto-response suppressed"),
    ("went to Junk", {"junk": True}, "junk"),
    ("not addressed directly",
     {"message": "From: ann@remote.test\nTo: team@remote.test\nSubject: x\n"},
     "not addressed directly"),
    ("addressed in Cc",
     {"message": "From: a@remote.test\nTo: x@remote.test\nCc: CAROL@example.org\n"}, None),
    ("addressed through an alias", {"message": "From: a@remote.test\nTo: sales@example.org\n"},
     None),
    ("addressed with a +tag", {"message": "From: a@remote.test\nTo: carol+work@example.org\n"},
     None),
    ("Resent-To",
     {"message": "From: a@remote.test\nTo: x@remote.test\nResent-To: carol@example.org\n"},
     None),
    ("not checked when so configured",
     {"message": "From: a@remote.test\nTo: x@remote.test\n", "require_addressed": False}, None),
    ("second message within the period", {"last_reply": NOW - 6 * DAY}, "replied recently"),
    ("after the period", {"last_reply": NOW - 7 * DAY - 1}, None),
    ("one-day period, two days later",
     {"vacation": Vacation(enabled=True, body="x", days=1), "last_reply": NOW - 2 * DAY}, None),
    ("before the first day",
     {"vacation": Vacation(enabled=True, body="x", start=dt.date(2026, 7, 16))}, "not started"),
    ("on the first day",
     {"vacation": Vacation(enabled=True, body="x", start=dt.date(2026, 7, 15))}, None),
    ("on the last day",
     {"vacation": Vacation(enabled=True, body="x", end=dt.date(2026, 7, 15))}, None),
    ("after the last day",
     {"vacation": Vacation(enabled=True, body="x", end=dt.date(2026, 7, 14))}, "ended"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "changes", "reason"), TABLE, ids=[row[0] for row in TABLE])
def test_decision_table(case: str, changes: dict[str, Any], reason: str | None) -> None:
    message = changes.get("message", PLAIN) + changes.get("extra", "")
    got = skip_reason(
        changes.get("vacation", ON),
        sender=changes.get("sender", "ann@remote.test"),
        fields=fields(message),
        is_own=own,
        junk=changes.get("junk", False),
        last_reply=changes.get("last_reply"),
        now=NOW,
        require_addressed=changes.get("require_addressed", True),
    )
    assert got == reason, case


def parsed(reply: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(reply, policy=email.policy.default)  # type: ignore[return-value]


def test_the_reply_follows_rfc_3834() -> None:
    original = fields(
        "From: Ann <ann@remote.test>\nTo: carol@example.org\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n"
        "Message-ID: <m2@remote.test>\nReferences: <m0@remote.test> <m1@remote.test>\n"
        "In-Reply-To: <m1@remote.test>\n"
    )
    raw = build_reply(ON, account_address=ME, sender="ann@remote.test", fields=original, now=NOW)
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    reply = parsed(raw)
    assert reply["From"] == ME and reply["To"] == "ann@remote.test"
    assert reply["Subject"] == "Auto: Grüße"  # RFC 3834 3.1.5: "Auto: " and the original's
    assert reply["Auto-Submitted"] == "auto-replied"  # RFC 3834 5
    assert reply["In-Reply-To"] == "<m2@remote.test>"
    assert reply["References"] == "<m0@remote.test> <m1@remote.test> <m2@remote.test>"
    assert reply["Message-ID"].endswith("@example.org>") and reply["Date"]
    assert reply.get_content().strip() == "I am away."


def test_the_configured_subject_and_a_message_without_message_id() -> None:
    settings = Vacation(enabled=True, subject="Away until August", body="Back soon: «bientôt».")
    reply = parsed(build_reply(settings, account_address=ME, sender="a@remote.test",
                               fields=fields("Subject: hi\n"), now=NOW))  # fmt: skip
    assert reply["Subject"] == "Away until August"
    assert reply["In-Reply-To"] is None and reply["References"] is None
    assert reply.get_content().strip() == "Back soon: «bientôt»."
    assert reply["Content-Transfer-Encoding"] == "quoted-printable"  # 7-bit safe on any path


def test_form_parsing() -> None:
    good = vacation.parse(True, " Away\r\nnow ", "Text\r\n", "2026-07-01", "2026-07-31", "")
    assert good == Vacation(True, "Away  now", "Text", dt.date(2026, 7, 1), dt.date(2026, 7, 31), 7)
    assert vacation.parse(False, "", "", "", "", "3") == Vacation(days=3)
    for args, words in (
        ((True, "", "  ", "", "", "7"), "text"),
        ((True, "x", "y", "2026-07-31", "2026-07-01", "7"), "before"),
        ((True, "x", "y", "31/07/2026", "", "7"), "YYYY-MM-DD"),
        ((True, "x", "y", "", "", "0"), "1 to 365"),
        ((True, "x", "y", "", "", "seven"), "whole number"),
        ((True, "x" * 201, "y", "", "", "7"), "at most 200"),
        ((True, "x", "y" * 10_001, "", "", "7"), "at most 10000"),
    ):
        with pytest.raises(VacationError, match=words):
            vacation.parse(*args)  # type: ignore[arg-type]


# -- the responder, against a real pimail.db -------------------------------------------------


@dataclass
class Placed:
    account_id: int
    folder: str = "INBOX"


class FakeStore:
    def __init__(self) -> None:
        self.delivered: list[tuple[bytes, list[int]]] = []

    async def deliver(self, message: Any, accounts: list[Account], junk: Any = ()) -> list[Any]:
        self.delivered.append((message.content(), [a.id for a in accounts]))
        message.discard()
        return []


class FakeQueue:
    def __init__(self, fail: bool = False) -> None:
        self.queued: list[tuple[bytes, str, list[str], str]] = []
        self.fail = fail

    async def enqueue(
        self, message: Any, sender: str, recipients: list[str], account: str = ""
    ) -> str:
        if self.fail:
            raise OSError("disk full")
        self.queued.append((message.content(), sender, recipients, account))
        return "Q1"


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    settings = Settings(data_dir=tmp_path, hostname="mx.test")
    con = db.open_main(settings.db_path)
    directory = Directory(con)
    directory.add_domain("example.org")
    carol = directory.add_account(ME, "x")
    dave = directory.add_account("dave@example.org", "x")
    directory.add_alias("sales@example.org", [ME])
    return {"settings": settings, "con": con, "carol": carol, "dave": dave}


def deliver(responder: vacation.Responder, sender: str, text: str, accounts: list[Account],
            junk: bool = False) -> None:  # fmt: skip
    async def run() -> None:
        head = text.replace("\n", "\r\n").encode() + b"\r\n"
        placements = [Placed(a.id, "Junk" if junk else "INBOX") for a in accounts]
        responder.after_delivery(sender, head, accounts, placements)
        while responder._tasks:
            await asyncio.gather(*responder._tasks)

    asyncio.run(run())


def test_responder_once_per_sender_local_and_foreign(world: dict[str, Any]) -> None:
    con: sqlite3.Connection = world["con"]
    carol, dave = world["carol"], world["dave"]
    vacation.save(con, carol.id, ON)
    store, queue = FakeStore(), FakeQueue()
    responder = vacation.Responder(world["settings"], store, queue)
    message = "From: ann@remote.test\nTo: sales@example.org\nSubject: hi\nMessage-ID: <a@b>\n"
    deliver(responder, "Ann@Remote.test", message, [carol, dave])
    [(raw, sender, recipients, account)] = queue.queued
    assert (sender, recipients, account) == ("", ["Ann@Remote.test"], ME)  # null MAIL FROM
    assert b"\r\nAuto-Submitted: auto-replied\r\n" in raw and not store.delivered
    deliver(responder, "ann@remote.test", message, [carol])  # the same sender, any case
    assert len(queue.queued) == 1
    rows = con.execute("SELECT account_id, sender FROM vacation_replies").fetchall()
    assert [tuple(r) for r in rows] == [(carol.id, "ann@remote.test")]
    # A local sender gets the reply in the mailbox, with the null Return-Path.
    deliver(responder, "dave@example.org", "From: dave@example.org\nTo: carol@example.org\n",
            [carol])  # fmt: skip
    [(raw, accounts)] = store.delivered
    assert accounts == [dave.id] and raw.startswith(b"Return-Path: <>\r\n")
    # Junk and switched-off accounts get nothing.
    deliver(responder, "eve@remote.test", "To: carol@example.org\n", [carol], junk=True)
    vacation.save(con, dave.id, Vacation(enabled=False, body="x"))
    deliver(responder, "fred@remote.test", "To: dave@example.org\n", [dave])
    assert len(queue.queued) == 1 and len(store.delivered) == 1 and responder.sent == 2


def test_a_new_text_forgets_who_was_answered(world: dict[str, Any]) -> None:
    con, carol = world["con"], world["carol"]
    vacation.save(con, carol.id, ON)
    queue = FakeQueue()
    responder = vacation.Responder(world["settings"], FakeStore(), queue)
    deliver(responder, "ann@remote.test", "To: carol@example.org\n", [carol])
    vacation.save(con, carol.id, ON)  # saved again unchanged: still answered
    deliver(responder, "ann@remote.test", "To: carol@example.org\n", [carol])
    assert len(queue.queued) == 1
    vacation.save(con, carol.id, Vacation(enabled=True, body="Back on Monday."))
    deliver(responder, "ann@remote.test", "To: carol@example.org\n", [carol])
    assert len(queue.queued) == 2 and b"Back on Monday." in queue.queued[1][0]


def test_old_log_rows_are_pruned(world: dict[str, Any]) -> None:
    con, carol = world["con"], world["carol"]
    vacation.save(con, carol.id, ON)
    con.execute("INSERT INTO vacation_replies VALUES (?, 'old@remote.test', 1000)", (carol.id,))
    responder = vacation.Responder(world["settings"], FakeStore(), FakeQueue())
    deliver(responder, "ann@remote.test", "To: carol@example.org\n", [carol])
    senders = {r[0] for r in con.execute("SELECT sender FROM vacation_replies")}
    assert senders == {"ann@remote.test"}


def test_a_failed_send_is_logged_and_not_counted(
    world: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    con, carol = world["con"], world["carol"]
    vacation.save(con, carol.id, ON)
    responder = vacation.Responder(world["settings"], FakeStore(), FakeQueue(fail=True))
    deliver(responder, "ann@remote.test", "To: carol@example.org\n", [carol])  # no exception
    assert "vacation reply failed" in caplog.text
    assert con.execute("SELECT count(*) FROM vacation_replies").fetchone()[0] == 0


def test_after_delivery_never_raises(
    world: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    responder = vacation.Responder(world["settings"], None, None)
    responder.after_delivery("ann@remote.test", b"To: x\r\n\r\n", [world["carol"]], [object()])
    (tmp_path / "a-file").write_text("")
    world["settings"].data_dir = tmp_path / "a-file" / "data"  # the database cannot open
    fresh = vacation.Responder(world["settings"], None, None)
    fresh.after_delivery("ann@remote.test", b"To: x\r\n\r\n", [world["carol"]], [])
    assert "vacation failed" in caplog.text
