"""Account ids are never used twice (db.MAIN_MIGRATIONS 6): the mail index and
the Bayes database are keyed by account id, so a new account must not inherit
a removed account's folders, message headers or spam training."""

from __future__ import annotations

from pathlib import Path

from pimail import db
from pimail.auth.accounts import Directory


def test_a_removed_accounts_id_is_not_given_again(tmp_path: Path) -> None:
    directory = Directory(db.open_main(tmp_path / "pimail.db"))
    directory.add_domain("example.org")
    alice = directory.add_account("alice@example.org", "x")
    bob = directory.add_account("bob@example.org", "x")
    directory.remove_account("bob@example.org")  # the highest id: SQLite would reuse it
    carol = directory.add_account("carol@example.org", "x")
    assert alice.id < bob.id < carol.id
    assert directory.account("carol@example.org").id == carol.id  # type: ignore[union-attr]
    directory.con.close()
    # Another connection (the CLI beside the server) continues the sequence.
    again = Directory(db.open_main(tmp_path / "pimail.db"))
    again.remove_account("carol@example.org")
    dave = again.add_account("dave@example.org", "x")
    assert dave.id > carol.id
    # A second add of the same address is still refused, and takes no id.
    try:
        again.add_account("dave@example.org", "x")
    except Exception as e:  # DirectoryError
        assert "exists already" in str(e)
    erin = again.add_account("erin@example.org", "x")
    assert erin.id == dave.id + 1


def test_the_migration_starts_after_existing_ids(tmp_path: Path) -> None:
    path = tmp_path / "pimail.db"
    con = db.connect(path, db.MAIN_MIGRATIONS[:5])  # a database from before migration 6
    directory = Directory(con)
    directory.con.execute("INSERT INTO domains (id, name, created) VALUES (1, 'example.org', 0)")
    directory.con.execute(
        "INSERT INTO accounts (id, domain_id, localpart, password_hash, created)"
        " VALUES (7, 1, 'old', 'x', 0)"
    )
    con.close()
    upgraded = Directory(db.open_main(path))
    upgraded.remove_account("old@example.org")
    assert upgraded.add_account("new@example.org", "x").id == 8
