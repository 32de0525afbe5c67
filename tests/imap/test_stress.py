"""Model-checked IMAP stress: sessions on shared mailboxes over TLS, every response
checked as it arrives (tests/imap/imap_model.py), and at the end every session's view
equal to the Maildirs on disk and to the index.

PIMAIL_STRESS_SECONDS (default 30) sets the time, PIMAIL_STRESS_SEED the seed (a
random one otherwise; a failure prints it), PIMAIL_STRESS_SESSIONS the sessions (10).
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

from conftest import PASSWORD, PimailServer
from pimail.store import maildir

from .conftest import Mailbox
from .imap_model import FOLDERS, LoadResult, Session, compare_views, run_load


def disk_state(folder: Path) -> dict[int, set[str]]:
    """UID -> flags, read from the Maildir's file names and keyword table."""
    keywords = maildir.read_keywords(folder)
    out = {}
    for sub in ("new", "cur"):
        for path in (folder / sub).iterdir():
            name = maildir.parse_name(path.name)
            assert name.uid is not None, path
            assert name.uid not in out, f"UID {name.uid} twice in {folder}"
            out[name.uid] = set(maildir.flags_of(name.letters, keywords))
    return out


def index_state(server: PimailServer, address: str, folder: str) -> dict[int, set[str]]:
    return {r["uid"]: set(r["flags"].split()) for r in server.index_rows(address, folder)}


def check_against_disk(server: PimailServer, result: LoadResult, accounts: list[str]) -> None:
    compare_views(result)
    views: dict[tuple[str, str], Session] = {}
    for s in result.sessions:
        if s.view is not None and s.writer is not None:
            views.setdefault((s.account, s.view.mailbox), s)
    for address in accounts:
        for folder in FOLDERS:
            path = server.maildir(address, "" if folder == "INBOX" else "." + folder)
            on_disk, indexed = disk_state(path), index_state(server, address, folder)
            if on_disk != indexed:
                result.errors.append(f"{address} {folder}: Maildir {on_disk} != index {indexed}")
            s = views.get((address, folder))
            if s is None or s.view is None:
                continue
            seen = {u: s.view.flags.get(u) for u in s.view.uids}
            if seen != on_disk:
                s.fail(f"view {seen} != Maildir {on_disk}")


def test_stress_model_checked(imap_server: PimailServer) -> None:
    seconds = float(os.environ.get("PIMAIL_STRESS_SECONDS", "30"))
    sessions = int(os.environ.get("PIMAIL_STRESS_SESSIONS", "10"))
    seed = int(os.environ.get("PIMAIL_STRESS_SEED", random.randrange(1 << 30)))
    accounts = [Mailbox(imap_server).address for _ in range(2)]
    tls = imap_server.client_tls()
    result = asyncio.run(
        asyncio.wait_for(
            run_load("127.0.0.1", imap_server.imaps_port, tls,
                     [(a, PASSWORD) for a in accounts], seed, seconds, sessions),
            timeout=seconds + 120,
        )
    )  # fmt: skip
    check_against_disk(imap_server, result, accounts)
    summary = (
        f"seed={seed} (replay: PIMAIL_STRESS_SEED={seed}) seconds={result.seconds:.1f}"
        f" logins={result.logins} commands={result.commands} checks={result.checks}"
    )
    print(summary)
    assert result.commands > 100, summary
    assert not result.errors, summary + "\n" + "\n".join(result.errors[:10])
