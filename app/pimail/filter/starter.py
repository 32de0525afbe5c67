"""The site-wide starter model of the spam filter: what every account uses on its first day.

A new account has trained nothing, so its own Bayes model (bayes.py) says
nothing; SpamAssassin and rspamd answer that with a global model beside the
per-user one. pimail's is built once, when the SD-card image is built (or, in
development, by `./build.sh run`), from a labelled corpus: `pimail spam
build-starter` (cli.py) trains it from the Apache SpamAssassin corpus's
spam-1 and easy-ham-1 (`pimail.filter.sa_corpus`), and the server reads it
from `filter.starter_model` (config.py), never writing it: on the device it
lies on the read-only root, /usr/share/pimail/starter-bayes.db.

File: a SQLite database, written once, then opened read-only (immutable):

  meta(key, value)             tokenizer: TOKENIZER_VERSION it was built with;
                               spam, ham: messages trained; min_count; source
  tokens(token, spam, ham)     token: 64-bit hash as in bayes.py; spam/ham:
                               messages of each class that have it

Tokens that only say a message is HTML (its tags, presentational attributes,
link and image counts, text/html and multipart/alternative parts; see
`format_token`) are left out too: easy-ham-1 is mailing-list mail of 2002, of
which 0.8 % has HTML, against 52 % of spam-1, so the corpus teaches "HTML is
spam", which is false of today's mail (most newsletters, receipts and mail
from phones are HTML) and would put a new account's legitimate HTML mail in
Junk. What HTML hides or forges (hidden text, a link whose text names another
site, URLs) and the words it shows are kept. An account's own model learns
format tokens from its own mail, as it should.

Tokens seen in fewer than `min_count` messages (2 by default) are left out:
a token seen once is a weak clue (Robinson's f(w) stays within 0.35 of 0.5
from one message) and such tokens are most of the vocabulary, so the file
is about a third the size. A model built with another tokenizer version is
of no use (its hashes are of other tokens): `StarterModel.open` refuses it,
and the server goes on without one (logged).

How it is combined with an account's own model: bayes.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pimail.filter.bayes import chunks, token_hash
from pimail.filter.tokens import TOKENIZER_VERSION, tokenize

log = logging.getLogger(__name__)

MIN_COUNT = 2  # messages a token must be in to be kept

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tokens (
    token INTEGER PRIMARY KEY,      -- 64-bit hash of the token text (bayes.token_hash)
    spam INTEGER NOT NULL,          -- spam messages with it
    ham INTEGER NOT NULL            -- ham messages with it
) WITHOUT ROWID
"""


class StarterError(RuntimeError):
    """The file is missing, unreadable, or built for another tokenizer."""


@dataclass(frozen=True, slots=True)
class StarterInfo:
    path: Path
    spam: int
    ham: int
    tokens: int
    bytes: int
    source: str


class StarterModel:
    """A starter model opened read-only; thread-safe (one lock)."""

    def __init__(self, path: Path, con: sqlite3.Connection, spam: int, ham: int) -> None:
        self.path = path
        self._con = con
        self.spam_total = spam
        self.ham_total = ham
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> StarterModel:
        if not path.is_file():
            raise StarterError(f"{path}: no such file")
        try:
            # immutable: no locks, no WAL, no journal; the file never changes
            # while open (a rebuild writes a new file and renames it over).
            uri = path.resolve().as_uri() + "?mode=ro&immutable=1"  # "?", "#", "%" escaped
            con = sqlite3.connect(uri, uri=True, check_same_thread=False)
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as exc:
            raise StarterError(f"{path}: {exc}") from exc
        if meta.get("tokenizer") != str(TOKENIZER_VERSION):
            con.close()
            raise StarterError(
                f"{path}: built with tokenizer {meta.get('tokenizer')}, "
                f"this pimail has {TOKENIZER_VERSION}: rebuild it"
            )
        return cls(path, con, int(meta.get("spam", 0)), int(meta.get("ham", 0)))

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def counts(self, hashes: list[int]) -> dict[int, tuple[int, int]]:
        """(spam, ham) of each of the hashed tokens the model has."""
        found: dict[int, tuple[int, int]] = {}
        with self._lock:
            for chunk in chunks(hashes):
                marks = ",".join("?" * len(chunk))
                query = f"SELECT token, spam, ham FROM tokens WHERE token IN ({marks})"
                rows = self._con.execute(query, chunk)
                found.update((token, (spam, ham)) for token, spam, ham in rows)
        return found

    def info(self) -> StarterInfo:
        with self._lock:
            (tokens,) = self._con.execute("SELECT count(*) FROM tokens").fetchone()
            meta = dict(self._con.execute("SELECT key, value FROM meta").fetchall())
        return StarterInfo(
            self.path, self.spam_total, self.ham_total, tokens,
            self.path.stat().st_size, meta.get("source", ""),
        )  # fmt: skip


def open_optional(path: str | os.PathLike[str] | None) -> StarterModel | None:
    """The starter model at `path`, or None (logged) when there is none fit to use."""
    if not path:
        return None
    try:
        model = StarterModel.open(Path(path))
    except StarterError as exc:
        log.warning("bayes starter model not used reason=%r", str(exc))
        return None
    log.info("bayes starter model path=%s spam=%d ham=%d", path, model.spam_total, model.ham_total)
    return model


# Token families that only tell that a message is HTML (module docstring).
FORMAT_PREFIXES = (
    "html:tag:", "html:attr:", "html:img:", "html:a:", "html:text-ratio:",
    "html:color=", "html:size=", "html:face=", "html:bgcolor=",
)  # fmt: skip
FORMAT_TOKENS = frozenset(
    ("mime:text/html", "mime:multipart/alternative", "mime:multipart/related")
)


def format_token(token: str) -> bool:
    """Whether a token only tells that the message is HTML (left out of a starter model)."""
    if token.startswith(FORMAT_PREFIXES) or token in FORMAT_TOKENS:
        return True
    return token.startswith("mime:shape:") and "text/html" in token


def build(
    spam: Iterable[bytes],
    ham: Iterable[bytes],
    out: Path,
    *,
    min_count: int = MIN_COUNT,
    source: str = "",
) -> StarterInfo:
    """Train a starter model from labelled messages and write it to `out`
    (atomically: a temporary file beside it, renamed over)."""
    counts: dict[int, list[int]] = {}
    totals = [0, 0]
    for index, messages in ((0, spam), (1, ham)):
        for message in messages:
            totals[index] += 1
            for token in tokenize(message):
                if format_token(token):
                    continue
                entry = counts.get(hashed := token_hash(token))
                if entry is None:
                    entry = counts[hashed] = [0, 0]
                entry[index] += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    con = sqlite3.connect(temporary)
    try:
        con.executescript(SCHEMA)
        con.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [
                ("tokenizer", str(TOKENIZER_VERSION)),
                ("spam", str(totals[0])),
                ("ham", str(totals[1])),
                ("min_count", str(min_count)),
                ("source", source),
            ],
        )
        con.executemany(
            "INSERT INTO tokens (token, spam, ham) VALUES (?, ?, ?)",
            sorted((token, s, h) for token, (s, h) in counts.items() if s + h >= min_count),
        )
        con.commit()
        con.execute("VACUUM")
    finally:
        con.close()
    os.replace(temporary, out)
    model = StarterModel.open(out)
    try:
        info = model.info()
    finally:
        model.close()
    log.info(
        "bayes starter model built path=%s spam=%d ham=%d tokens=%d bytes=%d",
        out, info.spam, info.ham, info.tokens, info.bytes,
    )  # fmt: skip
    return info


def build_from_corpus(root: Path | None, out: Path) -> StarterInfo:
    """The starter model of spam-1 and easy-ham-1 of the SpamAssassin corpus
    in `root` (its layout: one folder per group, a message per file), or of
    the corpus fetched into the cache (sa_corpus) when root is None: the
    groups that the held-out evaluation never uses. Raises StarterError
    when the corpus cannot be had or read."""
    from pimail.filter import sa_corpus

    try:
        folder = root if root is not None else sa_corpus.corpus_dir()
        spam = sa_corpus.read_group(folder, "spam-1")
        ham = sa_corpus.read_group(folder, "easy-ham-1")
    except (OSError, sa_corpus.CorpusError) as exc:
        raise StarterError(f"the corpus: {exc}") from exc
    if not spam or not ham:
        raise StarterError(f"{folder}: spam-1/ and easy-ham-1/ must hold messages")
    source = f"{sa_corpus.PACKAGE}@{sa_corpus.PACKAGE_VERSION}" if root is None else str(root)
    return build(spam, ham, out, source=f"{source} spam-1, easy-ham-1")


def main(argv: list[str] | None = None) -> int:
    """`python3 -m pimail.filter.starter --out FILE [--corpus DIR]`: the image
    build's way (image/build.sh), with the standard library alone on the path."""
    parser = argparse.ArgumentParser(description=build_from_corpus.__doc__)
    parser.add_argument("--corpus", type=Path, help="default: fetched with npm into the cache")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        info = build_from_corpus(args.corpus, args.out)
    except StarterError as exc:
        print(f"pimail: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: {info.spam} spam, {info.ham} ham, {info.tokens} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
