"""The learning spam filter: a Bayesian classifier per account (issue 7).

Each account has its own model, learnt from its user's decisions: a message
moved into Junk is trained as spam, one moved out of Junk as ham (IMAP
MOVE/COPY/STORE, the webmail, `pimail spam train`). `score()` gives the
probability that a new message is spam, for the filter pipeline to combine
with its rule scores.

The method is Gary Robinson's, as SpamBayes uses it ("A Statistical Approach
to the Spam Problem", Linux Journal, 2003; SpamBayes classifier.py):

- each token w of a message (`pimail.filter.tokens`, each once per message)
  gets p(w) = (s/S) / (s/S + h/H) from the number of spam (s) and ham (h)
  messages trained with it out of S spam and H ham, then Robinson's
  correction for rare tokens f(w) = (a*x + n*p(w)) / (a + n), n = s + h,
  strength a = 0.45, prior x = 0.5;
- the clues are the tokens with |f(w) - 0.5| >= 0.1 seen in at least
  MIN_EVIDENCE (2) trained messages, at most the 150 strongest;
- Fisher's chi-square combining: S' = 1 - C(-2 sum ln(1 - f), 2n),
  H' = 1 - C(-2 sum ln f, 2n), probability = (1 + S' - H') / 2, where C is
  the chi-square survival function with 2n degrees of freedom. Near 1 is
  spam, near 0 ham; near 0.5 means unsure, either because the clues are few
  or because they pull both ways.

Which model scores (issue 15): a site-wide starter model (starter.py),
built from a public corpus, scores for every account until the account's
own model has `starter_until` spam and as many ham (200 by default,
filter.starter_until); then both, the account's weighing `account_weight`
times the starter's (2 by default). SpamAssassin and rspamd keep per-user
and global models; here each model first gives its own estimate of a
token, f0(w) (the starter's) and f1(w) (the account's), each with
Robinson's correction for its own n, and each only when that model has
seen the token in at least MIN_EVIDENCE messages; the token's f(w) is
their weighted mean (a linear opinion pool):

  f(w) = (f0 + w*f1) / (1 + w)   when both models have the evidence,
  f(w) = f0 or f1                when only one has, no clue when neither.

Each model's evidence is weighed by the correction of that model's own
counts, not by the sum of both: the counts are not pooled, because an
account's training is often the very mail the starter's corpus is like
(the bench's trained account learnt the starter's own corpus), and summing
them made a token seen once in each model count as seen in two messages,
and every rare token look twice as sure as it is. On spam-1/easy-ham-1
(bench/bayes_eval.py and bayes_study.py, an account trained on the train
part beside the starter of the same part; threshold 0.95, no ham caught
either way) the pool catches 95.3 % of the hash split's test spam (93.3 %
with pooled counts) and 90.0 % of the time split's (86.7 %).

Without a starter model, an account's own model scores alone once it has
MIN_TRAINED of each; before that, nothing does: probability 0.5, `trained`
False. Training (Junk moves, `pimail spam train`) only ever changes the
account's own model; the starter is read-only.

Storage: `<data_dir>/bayes.db`, a SQLite file of its own (WAL; the writes
are frequent and small and have nothing to do with pimail.db or index.db):

  tokens(account_id, token, spam, ham, seen)  token: a 64-bit hash of the
      token text (the first 8 octets of BLAKE2b, signed), not the text, to
      keep it small; spam/ham: how many trained messages of each class have
      it; seen: when a message with it was last trained (Unix seconds, for
      expiry below).
      A row whose counts are both 0 is deleted.
  totals(account_id, spam, ham)         messages trained per class
  trained(account_id, digest, spam)     which messages are trained, and as
      what (digest: 64 bits of the SHA-256 of the message octets). Training
      the same message twice changes nothing; training it as the other class
      moves it over; untraining a message that is not trained does nothing.
      So the counts stay exact however often a user moves a message in and
      out of Junk, and never go below zero.

  meta(key, value)                      tokenizer: the TOKENIZER_VERSION
      the counts were made with.

Expiry (issue 15; SpamAssassin's bayes_expiry_max_db_size, rspamd's
expiry): an account's token rows are capped at `max_tokens`
(filter.bayes_max_tokens, 300,000; 0: no cap). SpamAssassin's default is
150,000 for a word tokenizer; tokenizer 2 (word pairs, header, URL and MIME
tokens) stores 276,289 rows for all 3,000 messages of spam-1 and easy-ham-1
(5.7 MiB on disk), so 300,000 holds a well-trained account whole, about 6.5
MB per account.
Each token row records when a message trained with it was last learnt
(`seen`, Unix seconds). When training takes an account past the cap, a
background thread (never the event loop, never the store's writer) deletes
rows down to EXPIRE_TO of the cap: the rare ones first (seen in fewer than
RARE_COUNT trained messages: they are most of a vocabulary and the weakest
evidence, below MIN_EVIDENCE even no clue at all), the least recently seen
first among them, then, only if that is not enough, the least recently seen
of the rest. The totals and `trained` stay as they are (as SpamAssassin's
nspam/nham do): they count messages, not tokens, so every remaining token's
ratios s/S and h/H keep their meaning; an expired token is one never seen.
Untraining a message whose tokens were expired decrements what is left and
never goes below zero (the clamps in `_apply`).

Losing the file loses the training, nothing else. The tokenizer must stay
the same for the life of a database: untraining re-tokenizes the message, and
counts of other tokens mean nothing. So a database made with another
tokenizer version is emptied when opened (logged at warning level): the
users' training starts again, the starter model scores meanwhile.

Thread safety: one `Bayes` may be used from several threads (the server's
worker pool); its methods take a lock. Tokenizing runs outside it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pimail import db
from pimail.filter.tokens import TOKENIZER_VERSION, tokenize

if TYPE_CHECKING:
    from pimail.config import Settings
    from pimail.filter.starter import StarterModel

log = logging.getLogger(__name__)

MIN_TRAINED = 50  # spam and ham each before an account's model is used, without a starter
STARTER_UNTIL = 200  # with a starter: spam and ham each before the account's joins it
ACCOUNT_WEIGHT = 2.0  # the account's model against the starter's, once it joins
# Robinson's constants, SpamBayes' defaults. Issue 15's study (bench/README.md,
# "Spam filter"): a = 1.0 with 300 clues caught more spam on both splits of
# spam-1/easy-ham-1 (time split 87.3 -> 94.0 %, no ham caught) and of
# held-out spam-2 (76.3 -> 87.8 %), but sent 33 % of hard-ham-1's legitimate
# newsletters to Junk (12.4 % with these): the tuning corpus has no such ham
# to show that cost, so these stay.
UNKNOWN_WORD_STRENGTH = 0.45  # a: how much the prior x weighs against the counts
UNKNOWN_WORD_PROB = 0.5  # x: the probability of a token never seen
MINIMUM_PROB_STRENGTH = 0.1  # |f(w) - 0.5| below this: not a clue
# Tokens seen in fewer trained messages are no clue (issue 15): one message is
# no evidence, and such tokens are most of a vocabulary; on spam-1/easy-ham-1
# (bench/bayes_eval.py) leaving them out catches more spam, no more ham.
MIN_EVIDENCE = 2
MAX_DISCRIMINATORS = 150  # clues used, the strongest first
# Suggested cut-offs (SpamBayes' defaults): at or above SPAM_CUTOFF spam, below
# HAM_CUTOFF ham, between them unsure. The pipeline's configuration decides.
SPAM_CUTOFF = 0.90
HAM_CUTOFF = 0.20
CLUES_REPORTED = 10  # strongest spam and ham clues returned by score()
_CHUNK = 500  # host parameters per IN (...) query
MAX_TOKENS = 300_000  # token rows per account (SpamAssassin's bayes_expiry_max_db_size)
EXPIRE_TO = 0.75  # expiry leaves this share of the cap (SpamAssassin's goal, 75 %)
RARE_COUNT = 3  # tokens in fewer trained messages than this are expired first

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE tokens (
        account_id INTEGER NOT NULL,        -- accounts.id in pimail.db
        token INTEGER NOT NULL,             -- 64-bit hash of the token text
        spam INTEGER NOT NULL DEFAULT 0,    -- spam messages trained with it
        ham INTEGER NOT NULL DEFAULT 0,     -- ham messages trained with it
        PRIMARY KEY (account_id, token)
    ) WITHOUT ROWID;
    CREATE TABLE totals (
        account_id INTEGER PRIMARY KEY,
        spam INTEGER NOT NULL DEFAULT 0,    -- spam messages trained
        ham INTEGER NOT NULL DEFAULT 0      -- ham messages trained
    );
    CREATE TABLE trained (
        account_id INTEGER NOT NULL,
        digest INTEGER NOT NULL,            -- 64 bits of SHA-256 of the message
        spam INTEGER NOT NULL,              -- 1: trained as spam, 0: as ham
        PRIMARY KEY (account_id, digest)
    ) WITHOUT ROWID
    """,
    # 2: the tokenizer version of the counts (issue 15)
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
    """,
    # 3: when each token was last trained, for expiry (issue 15). Rows of
    # before get 0: the oldest, expired first among equals.
    """
    ALTER TABLE tokens ADD COLUMN seen INTEGER NOT NULL DEFAULT 0
    """,
]


@dataclass(frozen=True, slots=True)
class Clue:
    """A token of a scored message and its spam probability f(w)."""

    token: str
    probability: float


@dataclass(frozen=True, slots=True)
class BayesScore:
    """What the model says of a message.

    probability: 0 (ham) .. 1 (spam), 0.5 when untrained or without clues.
    trained: a model scored (source says which).
    spam_tokens / ham_tokens: the strongest clues each way (at most
    CLUES_REPORTED), strongest first. They are words of the message: log
    them at debug level only.
    """

    probability: float
    spam_tokens: list[Clue]
    ham_tokens: list[Clue]
    trained: bool
    source: str = ""  # "starter", "account", "both"; "" when nothing scored


@dataclass(frozen=True, slots=True)
class BayesStats:
    """The size of an account's model."""

    account_id: int
    spam: int  # spam messages trained
    ham: int  # ham messages trained
    tokens: int  # distinct tokens stored
    trained: bool  # enough of both for the account's own model to score
    needed: int = MIN_TRAINED  # spam and ham each its own model needs to score
    starter: bool = False  # a starter model scores for it meanwhile (and then beside it)


def open_models(settings: Settings) -> Bayes:
    """The account models in <data_dir>/bayes.db with the configured starter
    model (filter.starter_model, when there is one fit to use)."""
    from pimail.filter import starter

    return Bayes(
        settings.data_dir / "bayes.db",
        starter.open_optional(settings.starter_model_path),
        starter_until=settings.filter.starter_until,
        account_weight=settings.filter.bayes_account_weight,
        max_tokens=settings.filter.bayes_max_tokens,
    )


class JunkTrainer:
    """Listens to the store's Junk verdicts (Store.on_junk_verdict): a message
    moved into Junk is trained as spam for its account, one moved out of it as
    ham. Runs on the store's writer thread; the files are read there."""

    def __init__(self, model: Bayes) -> None:
        self.model = model

    def __call__(self, account_id: int, files: list[Path], spam: bool) -> None:
        messages = []
        for path in files:
            try:
                messages.append(path.read_bytes())
            except FileNotFoundError:
                continue  # expunged meanwhile
        self.model.train_many(account_id, messages, spam)
        log.info("learned account=%d messages=%d spam=%s", account_id, len(messages), spam)


def token_hash(token: str) -> int:
    """The 64-bit signed integer stored for a token."""
    digest = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def message_digest(message: bytes) -> int:
    """The 64-bit signed integer that identifies a trained message."""
    return int.from_bytes(hashlib.sha256(message).digest()[:8], "big", signed=True)


def token_probability(spam: int, ham: int, spam_total: int, ham_total: int) -> float:
    """Robinson's f(w) for a token seen in `spam` of spam_total spam and `ham`
    of ham_total ham messages (module docstring)."""
    n = spam + ham
    if n == 0 or spam_total == 0 or ham_total == 0:
        return UNKNOWN_WORD_PROB
    spam_ratio = min(spam / spam_total, 1.0)
    ham_ratio = min(ham / ham_total, 1.0)
    p = spam_ratio / (spam_ratio + ham_ratio)
    return (UNKNOWN_WORD_STRENGTH * UNKNOWN_WORD_PROB + n * p) / (UNKNOWN_WORD_STRENGTH + n)


def model_probability(counts: tuple[int, int], totals: tuple[int, int]) -> float | None:
    """One model's f(w) of a token it saw in counts = (spam, ham) of totals
    trained messages; None when it saw it in fewer than MIN_EVIDENCE."""
    if sum(counts) < MIN_EVIDENCE:
        return None
    return token_probability(*counts, *totals)


def mixed_probability(starter: float | None, own: float | None, weight: float) -> float | None:
    """f(w) of a token from the starter's and the account's own f(w), the
    account's weighing `weight` times the starter's; None (no clue) when
    neither model has the evidence (module docstring)."""
    if starter is None or own is None:
        return own if starter is None else starter
    return (starter + weight * own) / (1.0 + weight)


def chi2_survival(x2: float, degrees: int) -> float:
    """P(chi-square with an even number of degrees of freedom >= x2):
    exp(-m) * sum of m^i / i! for i < degrees / 2, m = x2 / 2 (SpamBayes chi2Q)."""
    m = x2 / 2.0
    total = term = math.exp(-m)
    for i in range(1, degrees // 2):
        term *= m / i
        total += term
    return min(total, 1.0)


def combine(probabilities: list[float]) -> float:
    """Fisher/Robinson chi-square combining of the clues' f(w) (module docstring)."""
    if not probabilities:
        return 0.5
    ln_spam = sum(math.log(1.0 - p) for p in probabilities)
    ln_ham = sum(math.log(p) for p in probabilities)
    degrees = 2 * len(probabilities)
    spam = 1.0 - chi2_survival(-2.0 * ln_spam, degrees)
    ham = 1.0 - chi2_survival(-2.0 * ln_ham, degrees)
    return (spam - ham + 1.0) / 2.0


class Bayes:
    """The per-account models in one SQLite file (module docstring)."""

    def __init__(
        self,
        path: Path,
        starter: StarterModel | None = None,
        *,
        starter_until: int = STARTER_UNTIL,
        account_weight: float = ACCOUNT_WEIGHT,
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        self.path = path
        self.starter = starter
        self.starter_until = starter_until
        self.account_weight = account_weight
        self.max_tokens = max(max_tokens, 0)
        self.clock = time.time  # `seen` of trained tokens (tests set it)
        self._con = db.connect(path, MIGRATIONS)
        self._lock = threading.Lock()
        # Expiry: an upper bound on each account's token rows, from a count
        # plus the rows training may have added since (no count per training),
        # and the accounts waiting for the expiry thread.
        self._sizes: dict[int, int] = {}
        self._due: set[int] = set()
        self._expiring = False  # the expiry thread runs (set and cleared under _lock)
        self._expiry: threading.Thread | None = None
        self._check_tokenizer()

    def _check_tokenizer(self) -> None:
        """Empty a database whose counts come from another tokenizer (module docstring)."""
        with self._lock, db.transaction(self._con) as con:
            row = con.execute("SELECT value FROM meta WHERE key = 'tokenizer'").fetchone()
            version = row[0] if row else None
            if version == str(TOKENIZER_VERSION):
                return
            (accounts,) = con.execute("SELECT count(*) FROM totals").fetchone()
            if accounts:
                for table in ("tokens", "totals", "trained"):
                    con.execute(f"DELETE FROM {table}")
                log.warning(
                    "bayes models reset path=%s accounts=%d reason=tokenizer %s is now %d",
                    self.path, accounts, version or "1", TOKENIZER_VERSION,
                )  # fmt: skip
            con.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('tokenizer', ?)",
                (str(TOKENIZER_VERSION),),
            )

    def own_min(self) -> int:
        """Spam and ham each an account must train before its own model scores."""
        return self.starter_until if self.starter is not None else MIN_TRAINED

    def __enter__(self) -> Bayes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the account models and the starter model it was given, after
        an expiry under way has finished."""
        self.wait_expiry()
        with self._lock:
            self._con.close()
        if self.starter is not None:
            self.starter.close()

    # --- training -----------------------------------------------------------

    def train(self, account_id: int, message: bytes, spam: bool) -> None:
        """Learn a message as spam (or ham); see train_many."""
        self.train_many(account_id, [message], spam)

    def untrain(self, account_id: int, message: bytes, spam: bool) -> None:
        """Forget a message trained as spam (or ham): the exact inverse of
        train(). A message not trained as that class changes nothing."""
        self.untrain_many(account_id, [message], spam)

    def train_many(self, account_id: int, messages: Iterable[bytes], spam: bool) -> int:
        """Learn messages as spam (or ham) in one transaction. A message
        already trained as that class is skipped; one trained as the other
        class moves over. Returns how many messages changed class or were new."""
        return self._change(account_id, messages, spam, untrain=False)

    def untrain_many(self, account_id: int, messages: Iterable[bytes], spam: bool) -> int:
        """Forget messages trained as spam (or ham) in one transaction.
        Returns how many were trained so and are forgotten now."""
        return self._change(account_id, messages, spam, untrain=True)

    def forget(self, account_id: int) -> None:
        """Delete an account's model (the account is deleted)."""
        with self._lock, db.transaction(self._con) as con:
            for table in ("tokens", "totals", "trained"):
                con.execute(f"DELETE FROM {table} WHERE account_id = ?", (account_id,))
            self._sizes.pop(account_id, None)
        log.info("bayes forgotten account=%d", account_id)

    def _change(self, account_id: int, messages: Iterable[bytes], spam: bool, untrain: bool) -> int:
        spam = bool(spam)
        prepared: dict[int, bytes] = {}
        for message in messages:
            prepared.setdefault(message_digest(message), message)
        tokens = {digest: _hashes(message) for digest, message in prepared.items()}
        # delta[token] = [spam change, ham change]
        delta: dict[int, list[int]] = {}
        totals = [0, 0]
        records: list[tuple[int, int, int]] = []  # (account, digest, class) to record
        removed: list[tuple[int, int]] = []  # (account, digest) to drop from `trained`
        target = 0 if spam else 1  # index into [spam, ham]
        with self._lock, db.transaction(self._con) as con:
            known = self._trained_as(account_id, list(prepared))
            for digest, hashes in tokens.items():
                was = known.get(digest)  # True: spam, False: ham, None: not trained
                if untrain:
                    if was is not spam:
                        continue
                    _add(delta, totals, hashes, target, -1)
                    removed.append((account_id, digest))
                    continue
                if was is spam:
                    continue
                if was is not None:  # trained as the other class: move it over
                    _add(delta, totals, hashes, 1 - target, -1)
                _add(delta, totals, hashes, target, +1)
                records.append((account_id, digest, int(spam)))
            self._apply(con, account_id, delta, totals, int(self.clock()))
            con.executemany(
                "INSERT OR REPLACE INTO trained (account_id, digest, spam) VALUES (?, ?, ?)",
                records,
            )
            con.executemany("DELETE FROM trained WHERE account_id = ? AND digest = ?", removed)
            if account_id in self._sizes:
                self._sizes[account_id] += sum(1 for ds, dh in delta.values() if ds > 0 or dh > 0)
        changed = len(removed) if untrain else len(records)
        log.info(
            "bayes %s account=%d class=%s messages=%d changed=%d tokens=%d",
            "untrain" if untrain else "train",
            account_id,
            "spam" if spam else "ham",
            len(prepared),
            changed,
            len(delta),
        )
        if changed and not untrain:
            self._expire_if_due(account_id)
        return changed

    # --- expiry (module docstring) ---------------------------------------------

    def _expire_if_due(self, account_id: int) -> None:
        """After training: when the account may be past the cap, count its
        rows, and if it is, hand it to the expiry thread."""
        if not self.max_tokens:
            return
        with self._lock:
            if self._sizes.get(account_id, self.max_tokens + 1) <= self.max_tokens:
                return
            size = self._sizes[account_id] = self._token_count(account_id)
            if size <= self.max_tokens:
                return
            self._due.add(account_id)
            if self._expiring:
                return  # it takes this account too before it ends
            self._expiring = True
            self._expiry = threading.Thread(
                target=self._expire_due, name="bayes-expiry", daemon=True
            )
            self._expiry.start()

    def _expire_due(self) -> None:
        while True:
            with self._lock:
                if not self._due:
                    self._expiring = False
                    return
                account_id = self._due.pop()
            try:
                self.expire(account_id)
            except sqlite3.Error:
                log.exception("bayes expiry failed account=%d", account_id)

    def wait_expiry(self, timeout: float | None = None) -> None:
        """Wait for the expiry thread, when one runs (close(); tests)."""
        thread = self._expiry
        if thread is not None:
            thread.join(timeout)

    def expire(self, account_id: int) -> int:
        """Delete an account's token rows past the cap down to EXPIRE_TO of it
        (module docstring); returns how many were deleted."""
        if not self.max_tokens:
            return 0
        with self._lock, db.transaction(self._con) as con:
            size = self._token_count(account_id)
            excess = size - int(self.max_tokens * EXPIRE_TO) if size > self.max_tokens else 0
            if excess > 0:
                con.execute(
                    "DELETE FROM tokens WHERE account_id = ? AND token IN ("
                    "SELECT token FROM tokens WHERE account_id = ? "
                    "ORDER BY spam + ham >= ?, seen, spam + ham LIMIT ?)",
                    (account_id, account_id, RARE_COUNT, excess),
                )
            self._sizes[account_id] = size - max(excess, 0)
        if excess > 0:
            log.info(
                "bayes expired account=%d tokens=%d left=%d cap=%d",
                account_id, excess, size - excess, self.max_tokens,
            )  # fmt: skip
        return max(excess, 0)

    def _token_count(self, account_id: int) -> int:
        (count,) = self._con.execute(
            "SELECT count(*) FROM tokens WHERE account_id = ?", (account_id,)
        ).fetchone()
        return int(count)

    def _trained_as(self, account_id: int, digests: list[int]) -> dict[int, bool]:
        known: dict[int, bool] = {}
        for chunk in chunks(digests):
            rows = self._con.execute(
                "SELECT digest, spam FROM trained WHERE account_id = ? AND digest IN "
                f"({','.join('?' * len(chunk))})",
                (account_id, *chunk),
            )
            known.update((digest, bool(is_spam)) for digest, is_spam in rows)
        return known

    @staticmethod
    def _apply(
        con: sqlite3.Connection,
        account_id: int,
        delta: dict[int, list[int]],
        totals: list[int],
        now: int,
    ) -> None:
        """Add the count changes: increments by UPSERT (stamping `seen`),
        decrements clamped at 0, then rows left at 0/0 deleted."""
        increments = [
            (account_id, token, max(ds, 0), max(dh, 0), now)
            for token, (ds, dh) in delta.items()
            if ds > 0 or dh > 0
        ]
        decrements = [
            (max(-ds, 0), max(-dh, 0), account_id, token)
            for token, (ds, dh) in delta.items()
            if ds < 0 or dh < 0
        ]
        con.executemany(
            "INSERT INTO tokens (account_id, token, spam, ham, seen) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (account_id, token) DO UPDATE "
            "SET spam = spam + excluded.spam, ham = ham + excluded.ham, seen = excluded.seen",
            increments,
        )
        con.executemany(
            "UPDATE tokens SET spam = max(spam - ?, 0), ham = max(ham - ?, 0) "
            "WHERE account_id = ? AND token = ?",
            decrements,
        )
        con.executemany(
            "DELETE FROM tokens WHERE account_id = ? AND token = ? AND spam = 0 AND ham = 0",
            [(account_id, token) for _, _, account_id, token in decrements],
        )
        con.execute(
            "INSERT INTO totals (account_id, spam, ham) VALUES (?, max(?, 0), max(?, 0)) "
            "ON CONFLICT (account_id) DO UPDATE "
            "SET spam = max(spam + ?, 0), ham = max(ham + ?, 0)",
            (account_id, totals[0], totals[1], totals[0], totals[1]),
        )

    # --- scoring --------------------------------------------------------------

    def score(self, account_id: int, message: bytes) -> BayesScore:
        """The spam probability of a message under the models that apply to
        the account: the starter's, its own, or both (module docstring)."""
        by_hash = {token_hash(token): token for token in tokenize(message)}
        hashes = list(by_hash)
        with self._lock:
            own_totals = self._totals(account_id)
            own = min(own_totals) >= self.own_min()
            own_counts = self._counts(account_id, hashes) if own else {}
        starter = self.starter
        if starter is not None and min(starter.spam_total, starter.ham_total) == 0:
            starter = None
        if starter is None and not own:
            return BayesScore(0.5, [], [], trained=False)
        starter_counts = starter.counts(hashes) if starter is not None else {}
        clues: list[tuple[float, str, float]] = []
        starter_totals = (starter.spam_total, starter.ham_total) if starter is not None else (0, 0)
        for hashed in starter_counts.keys() | own_counts.keys():
            f = mixed_probability(
                model_probability(starter_counts.get(hashed, (0, 0)), starter_totals),
                model_probability(own_counts.get(hashed, (0, 0)), own_totals),
                self.account_weight,
            )
            if f is not None and abs(f - 0.5) >= MINIMUM_PROB_STRENGTH:
                clues.append((abs(f - 0.5), by_hash[hashed], f))
        clues.sort(reverse=True)
        clues = clues[:MAX_DISCRIMINATORS]
        probability = combine([f for _, _, f in clues])
        spam_clues = [Clue(token, f) for _, token, f in clues if f > 0.5][:CLUES_REPORTED]
        ham_clues = [Clue(token, f) for _, token, f in clues if f < 0.5][:CLUES_REPORTED]
        source = "both" if own and starter is not None else "account" if own else "starter"
        return BayesScore(probability, spam_clues, ham_clues, trained=True, source=source)

    def _totals(self, account_id: int) -> tuple[int, int]:
        row = self._con.execute(
            "SELECT spam, ham FROM totals WHERE account_id = ?", (account_id,)
        ).fetchone()
        return (row[0], row[1]) if row else (0, 0)

    def _counts(self, account_id: int, hashes: list[int]) -> dict[int, tuple[int, int]]:
        """(spam, ham) of each stored token among hashes; unknown ones left out
        (f = 0.5, never a clue)."""
        counts: dict[int, tuple[int, int]] = {}
        for chunk in chunks(hashes):
            rows = self._con.execute(
                "SELECT token, spam, ham FROM tokens WHERE account_id = ? AND token IN "
                f"({','.join('?' * len(chunk))})",
                (account_id, *chunk),
            )
            counts.update((token, (spam, ham)) for token, spam, ham in rows)
        return counts

    # --- figures --------------------------------------------------------------

    def stats(self, account_id: int) -> BayesStats:
        with self._lock:
            spam, ham = self._totals(account_id)
            (tokens,) = self._con.execute(
                "SELECT count(*) FROM tokens WHERE account_id = ?", (account_id,)
            ).fetchone()
        needed = self.own_min()
        trained = min(spam, ham) >= needed
        return BayesStats(
            account_id, spam, ham, tokens, trained, needed, starter=self.starter is not None
        )


def _hashes(message: bytes) -> list[int]:
    return list({token_hash(token) for token in tokenize(message)})


def _add(
    delta: dict[int, list[int]], totals: list[int], hashes: list[int], index: int, step: int
) -> None:
    totals[index] += step
    for hashed in hashes:
        entry = delta.get(hashed)
        if entry is None:
            entry = delta[hashed] = [0, 0]
        entry[index] += step


def chunks(items: list[int]) -> Iterable[list[int]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
