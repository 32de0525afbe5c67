"""SQLite databases and their versioned migrations.

Two files under the data directory:

- `pimail.db`: primary data (domains, accounts, aliases, settings). Back it up.
- `index.db`: the mail index (mailboxes, messages). Derived from the Maildirs:
  delete it and the server rebuilds it with the same UIDs, UIDVALIDITY and flags.

Each database records its schema version in `PRAGMA user_version`; a migration
is SQL statements (separated by ";", so no ";" in comments)
applied in one transaction, in order. Both run in
WAL mode so that readers (the CLI, IMAP sessions) never wait for the writer.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

MAIN_MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE domains (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,          -- lower case, IDNA A-label
        created INTEGER NOT NULL
    );
    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
        localpart TEXT NOT NULL,            -- lower case
        password_hash TEXT NOT NULL,
        is_admin INTEGER NOT NULL DEFAULT 0,
        quota_bytes INTEGER NOT NULL DEFAULT 0,   -- 0: no quota
        created INTEGER NOT NULL,
        UNIQUE (domain_id, localpart)
    );
    CREATE TABLE aliases (
        id INTEGER PRIMARY KEY,
        domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
        localpart TEXT NOT NULL,            -- '' for the catch-all @domain
        target TEXT NOT NULL,               -- a full address
        UNIQUE (domain_id, localpart, target)
    );
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL                 -- JSON
    );
    """,
    # 2: DKIM keys (queue/dkim.py), two per generation: RSA and Ed25519
    """
    CREATE TABLE dkim_keys (
        id INTEGER PRIMARY KEY,
        domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
        selector TEXT NOT NULL,
        algorithm TEXT NOT NULL,            -- 'rsa-sha256' or 'ed25519-sha256'
        private_key TEXT NOT NULL,          -- RSA: PKCS#1 PEM, Ed25519: base64 of the 32-octet seed
        public_key TEXT NOT NULL,           -- the p= value (base64)
        state TEXT NOT NULL,                -- 'pending', 'active' or 'retired'
        created INTEGER NOT NULL,
        UNIQUE (domain_id, selector)
    )
    """,
    # 3: each account's allow and block lists of senders (filter/senders.py)
    """
    CREATE TABLE sender_lists (
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        entry TEXT NOT NULL,                -- 'local@domain' or 'domain' (covers subdomains)
        kind TEXT NOT NULL CHECK (kind IN ('allow', 'block')),
        created INTEGER NOT NULL,
        PRIMARY KEY (account_id, entry)
    ) WITHOUT ROWID
    """,
    # 4: web sessions (web/sessions.py): only the SHA-256 of each cookie's token
    """
    CREATE TABLE web_sessions (
        token_hash TEXT PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        created INTEGER NOT NULL,
        seen INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    # 5: each account's vacation auto-reply (smtp/vacation.py) and whom it answered
    """
    CREATE TABLE vacations (
        account_id INTEGER PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
        enabled INTEGER NOT NULL DEFAULT 0,
        subject TEXT NOT NULL DEFAULT '',   -- empty: 'Auto: ' and the original subject
        body TEXT NOT NULL DEFAULT '',
        start_date TEXT,                    -- 'YYYY-MM-DD' in server local time, inclusive
        end_date TEXT,                      -- inclusive, NULL: until switched off
        days INTEGER NOT NULL DEFAULT 7,    -- one reply per sender in this many days
        updated INTEGER NOT NULL
    );
    CREATE TABLE vacation_replies (
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        sender TEXT NOT NULL,               -- the envelope sender answered, lower case
        sent INTEGER NOT NULL,              -- unix time of the last reply
        PRIMARY KEY (account_id, sender)
    ) WITHOUT ROWID;
    CREATE INDEX vacation_replies_sent ON vacation_replies(sent)
    """,
    # 6: account ids are never used twice. The mail index (index.db) and the
    # Bayes database are keyed by account id: a new account must not inherit
    # a removed one's rows (auth/accounts.py add_account).
    """
    CREATE TABLE id_sequence (
        name TEXT PRIMARY KEY,
        last INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO id_sequence (name, last) SELECT 'accounts', coalesce(max(id), 0) FROM accounts
    """,
]

INDEX_MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE mailboxes (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL,        -- accounts.id in pimail.db
        name TEXT NOT NULL,                 -- IMAP name, '/' as separator, 'INBOX'
        uidvalidity INTEGER NOT NULL,
        uidnext INTEGER NOT NULL,
        highestmodseq INTEGER NOT NULL,
        special_use TEXT,                   -- RFC 6154: '\\Sent', ...
        subscribed INTEGER NOT NULL DEFAULT 1,
        UNIQUE (account_id, name)
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
        uid INTEGER NOT NULL,
        subdir TEXT NOT NULL,               -- 'new' or 'cur'
        filename TEXT NOT NULL,             -- current name, flags suffix included
        flags TEXT NOT NULL DEFAULT '',     -- space-separated IMAP flags
        modseq INTEGER NOT NULL,
        internaldate INTEGER NOT NULL,      -- unix time of receipt
        size INTEGER NOT NULL,              -- octets as stored (CRLF)
        hdr_date TEXT,
        hdr_from TEXT,
        hdr_to TEXT,
        hdr_cc TEXT,
        hdr_subject TEXT,
        hdr_message_id TEXT,
        hdr_in_reply_to TEXT,
        UNIQUE (mailbox_id, uid)
    );
    CREATE INDEX messages_message_id ON messages(hdr_message_id);
    """,
    # 2: what IMAP and search need: cached MIME analysis, change tracking,
    # subscriptions, and full-text search (rowid = messages.id).
    """
    ALTER TABLE messages ADD COLUMN structure TEXT;      -- MIME structure (JSON), NULL: to do
    ALTER TABLE messages ADD COLUMN envelope BLOB;       -- ENVELOPE, wire octets
    ALTER TABLE messages ADD COLUMN bodystructure BLOB;  -- BODYSTRUCTURE, wire octets
    CREATE INDEX messages_modseq ON messages(mailbox_id, modseq);
    CREATE INDEX messages_unanalysed ON messages(id) WHERE structure IS NULL;
    CREATE TABLE expunged (
        mailbox_id INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        modseq INTEGER NOT NULL,
        PRIMARY KEY (mailbox_id, uid)
    ) WITHOUT ROWID;
    CREATE TABLE subscriptions (
        account_id INTEGER NOT NULL,
        name TEXT NOT NULL,
        PRIMARY KEY (account_id, name)
    ) WITHOUT ROWID;
    CREATE VIRTUAL TABLE message_text USING fts5(
        headers, body, tokenize = 'unicode61 remove_diacritics 2'
    )
    """,
    # 3: the MIME caches move to a table of their own. SQLite rewrites a whole
    # row on UPDATE: with kilobytes of cache in it, every flag change paid for them.
    """
    CREATE TABLE message_cache (
        message_id INTEGER PRIMARY KEY,     -- messages.id
        structure TEXT NOT NULL,            -- MIME structure (JSON), '' if it failed
        envelope BLOB,                      -- ENVELOPE, wire octets
        bodystructure BLOB                  -- BODYSTRUCTURE, wire octets
    );
    INSERT INTO message_cache SELECT id, structure, envelope, bodystructure
        FROM messages WHERE structure IS NOT NULL;
    DROP INDEX messages_unanalysed;
    ALTER TABLE messages DROP COLUMN structure;
    ALTER TABLE messages DROP COLUMN envelope;
    ALTER TABLE messages DROP COLUMN bodystructure;
    ALTER TABLE messages ADD COLUMN analysed INTEGER NOT NULL DEFAULT 0;
    UPDATE messages SET analysed = 1 WHERE id IN (SELECT message_id FROM message_cache);
    CREATE INDEX messages_unanalysed ON messages(id) WHERE analysed = 0
    """,
    # 4: an account's usage (store/quota.py) is a SUM over its messages' sizes.
    # The size joins the (mailbox_id, modseq) index, which then covers that SUM:
    # 0.5 ms instead of 19 ms at 10,000 messages. Not an index of its own on
    # (mailbox_id, size): SQLite would pick it for every per-folder query too,
    # and fetching rows in size order (scattered) made the webmail's list 3x slower.
    """
    DROP INDEX messages_modseq;
    CREATE INDEX messages_modseq ON messages(mailbox_id, modseq, size)
    """,
    # 5: the text index finds substrings (RFC 9051 6.4.4), store/textindex.py:
    # FTS5 trigrams over folded text, every header field, any charset. Every
    # message is analysed again (analysed: 0 to do, 1 done, 2 failed and not
    # retried), in the background as after a rebuild.
    """
    DROP TABLE message_text;
    CREATE VIRTUAL TABLE message_text USING fts5(
        headers, body, tokenize = 'trigram case_sensitive 1', detail = none
    );
    UPDATE messages SET analysed = 0
    """,
]


def connect(path: Path, migrations: list[str]) -> sqlite3.Connection:
    """Open (creating if needed) and migrate a database."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL: a commit is atomic and survives a process crash; after a
    # power cut the last commits may be lost. For the index that is fine (the
    # Maildir is the truth and startup reconciles); the main database holds
    # rare admin writes, which use FULL (see `durable`).
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("PRAGMA foreign_keys=ON")
    _migrate(con, migrations)
    return con


def _migrate(con: sqlite3.Connection, migrations: list[str]) -> None:
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if version > len(migrations):
        raise RuntimeError(f"database schema {version} is newer than this pimail")
    for number in range(version, len(migrations)):
        con.execute("BEGIN IMMEDIATE")
        try:
            # Re-read inside the write lock: another process may have migrated.
            if con.execute("PRAGMA user_version").fetchone()[0] > number:
                con.execute("ROLLBACK")
                continue
            for statement in migrations[number].split(";"):
                if statement.strip():
                    con.execute(statement)
            con.execute(f"PRAGMA user_version={number + 1}")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


@contextlib.contextmanager
def transaction(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error). Connections here run in
    autocommit mode (isolation_level=None), where `with con:` alone would let
    every statement commit on its own."""
    if con.in_transaction:  # nested: the outer transaction decides
        yield con
        return
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def open_main(path: Path) -> sqlite3.Connection:
    con = connect(path, MAIN_MIGRATIONS)
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA cache_size=-256")  # a few small tables
    return con


def open_index(path: Path) -> sqlite3.Connection:
    return connect(path, INDEX_MIGRATIONS)
