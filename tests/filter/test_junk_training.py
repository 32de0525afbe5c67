"""The spam filter learns from what users do in their mail client: moving a
message into Junk (IMAP MOVE or COPY) or marking it $Junk trains it as spam;
moving it out, or $NotJunk, as ham (issue 7). Real IMAP over TLS."""

from __future__ import annotations

import imaplib
import smtplib
import sqlite3
from typing import Any

from conftest import PASSWORD, PimailServer

SPAM = (
    b"From: winner@lottery.test\r\nTo: alice@example.org\r\nSubject: You have WON\r\n"
    b"\r\nClaim your prize money now, click the link, free casino bonus!\r\n"
)


def totals(server: PimailServer, account: str) -> tuple[int, int]:
    main = sqlite3.connect(server.data_dir / "pimail.db")
    local, domain = account.split("@")
    [(account_id,)] = main.execute(
        "SELECT a.id FROM accounts a JOIN domains d ON d.id = a.domain_id"
        " WHERE a.localpart = ? AND d.name = ?", (local, domain),
    ).fetchall()  # fmt: skip
    main.close()
    con = sqlite3.connect(server.data_dir / "bayes.db")
    row = con.execute("SELECT spam, ham FROM totals WHERE account_id = ?", (account_id,)).fetchone()
    tokens = con.execute("SELECT COUNT(*) FROM tokens WHERE account_id = ?", (account_id,))
    count = tokens.fetchone()[0]
    con.close()
    assert (row is None) == (count == 0)
    return (row[0], row[1]) if row else (0, 0)


def test_moving_into_and_out_of_junk_trains_the_filter(make_server: Any) -> None:
    server: PimailServer = make_server()
    server.cli("domain", "add", "example.org")
    server.add_user("alice@example.org")
    server.add_user("bob@example.org")
    server.start()
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as s:
        s.sendmail("winner@lottery.test", ["alice@example.org"], SPAM)
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=server.client_tls())
    imap.login("alice@example.org", PASSWORD)
    imap.select("INBOX")
    assert imap.uid("MOVE", "1", "Junk")[0] == "OK"
    assert totals(server, "alice@example.org") == (1, 0)
    assert totals(server, "bob@example.org") == (0, 0)  # per account
    imap.select("Junk")
    assert imap.uid("MOVE", "1", "INBOX")[0] == "OK"  # "not junk" after all
    assert totals(server, "alice@example.org") == (0, 1)
    imap.select("INBOX")
    assert imap.uid("STORE", "2", "+FLAGS", "($Junk)")[0] == "OK"  # Thunderbird's way
    assert totals(server, "alice@example.org") == (1, 0)
    assert imap.uid("COPY", "2", "Trash")[0] == "OK"  # Trash teaches nothing
    assert totals(server, "alice@example.org") == (1, 0)
    imap.logout()


def test_spam_train_and_stats_from_the_command_line(make_server: Any, tmp_path: Any) -> None:
    server: PimailServer = make_server()
    server.cli("domain", "add", "example.org")
    server.add_user("alice@example.org")
    folder = tmp_path / "spam-folder" / "cur"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"m{i}").write_bytes(SPAM.replace(b"WON", b"WON %d" % i))
    one = tmp_path / "ham.eml"
    one.write_bytes(b"From: mum@family.test\r\nSubject: Sunday lunch\r\n\r\nSee you at one.\r\n")
    out = server.cli("spam", "train", "alice@example.org", "--spam", str(folder.parent)).stdout
    assert "trained 3 messages as spam" in out
    server.cli("spam", "train", "alice@example.org", "--ham", str(one))
    assert totals(server, "alice@example.org") == (3, 1)
    assert "3 spam, 1 ham" in server.cli("spam", "stats", "alice@example.org").stdout
    refused = server.cli("spam", "train", "nobody@example.org", "--ham", str(one), check=False)
    assert refused.returncode == 1 and "no account" in refused.stderr
