"""How long an account's usage (store/quota.py) takes to read, with and without
the covering index of db.INDEX_MIGRATIONS 4, at a few mailbox sizes.

Builds a throwaway index.db (5 accounts x 6 folders, messages spread at random,
header columns filled as delivery fills them), then times `quota.usage()` on a
read-only connection with the page cache the readers use (1 MiB). Prints
figures; never passes or fails.

    .venv/bin/python bench/quota_usage.py [--messages 10000 50000] [--runs 200]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from pimail import db
from pimail.store import quota

ACCOUNTS = 5
FOLDERS = ("INBOX", "Sent", "Drafts", "Junk", "Trash", "Archive")


def build(path: Path, per_account: int) -> None:
    con = db.open_index(path)
    rng = random.Random(1)
    with db.transaction(con):
        for account in range(1, ACCOUNTS + 1):
            for name in FOLDERS:
                con.execute(
                    "INSERT INTO mailboxes (account_id, name, uidvalidity, uidnext, highestmodseq)"
                    " VALUES (?, ?, 1, 1, 1)",
                    (account, name),
                )
        boxes = [r[0] for r in con.execute("SELECT id FROM mailboxes")]
        for n in range(per_account * ACCOUNTS):
            size = rng.randint(2_000, 200_000)
            con.execute(
                "INSERT INTO messages (mailbox_id, uid, subdir, filename, flags, modseq,"
                " internaldate, size, hdr_date, hdr_from, hdr_to, hdr_subject, hdr_message_id)"
                " VALUES (?, ?, 'cur', ?, '\\Seen', ?, ?, ?, ?, ?, ?, ?, ?)",
                (rng.choice(boxes), n, f"{1_700_000_000 + n}.M{n}P1.host,S={size},U={n}:2,S",
                 n, 1_700_000_000 + n, size, "Mon, 1 Jan 2024 10:00:00 +0000",
                 "Someone Example <someone@example.com>", "alice@example.org",
                 "A subject line of a typical length, give or take", f"<{n}@example.com>"),
            )  # fmt: skip
    con.close()


def timed(path: Path, runs: int) -> float:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    con.execute("PRAGMA cache_size=-1024")
    quota.usage(con, 1)  # warm the OS page cache, as a running server has it
    started = time.perf_counter()
    for _ in range(runs):
        quota.usage(con, 1)
    con.close()
    return (time.perf_counter() - started) / runs * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, nargs="+", default=[10_000, 50_000],
                   help="messages per account")  # fmt: skip
    p.add_argument("--runs", type=int, default=200)
    args = p.parse_args()
    print(f"{'messages/account':>17} {'no index (ms)':>14} {'covering index (ms)':>20}")
    for per_account in args.messages:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "index.db"
            build(path, per_account)  # with the index: the migrations made it
            with_index = timed(path, args.runs)
            con = sqlite3.connect(path)
            con.execute("DROP INDEX messages_modseq")  # the old one, without size
            con.execute("CREATE INDEX messages_modseq ON messages(mailbox_id, modseq)")
            con.close()
            without = timed(path, args.runs)
        print(f"{per_account:>17} {without:>14.2f} {with_index:>20.2f}")


if __name__ == "__main__":
    main()
