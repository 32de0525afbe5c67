"""A raw asyncio IMAP client that checks every untagged response against a model of
the protocol, and a random multi-session load built on it.

Used by tests/imap/test_stress.py (against pimail, then compared with the Maildirs
and the index) and by bench/imap_stress.py (pimail beside Dovecot). Each response is
checked as it arrives (RFC 9051 / RFC 3501 / RFC 7162):

- EXISTS never below what the session knows (its count minus the expunges it was told);
- EXPUNGE names a message the session knows, and never during FETCH, STORE or SEARCH
  (RFC 9051 7.4.1);
- a FETCH names a known message; UIDs strictly increase with message numbers and never
  change for a message number; MODSEQ per message never goes down, and comes with FLAGS
  once CONDSTORE is enabled (RFC 7162 3.1);
- no keyword in a FETCH before a FLAGS response that lists it (RFC 9051 7.3.5);
- UIDVALIDITY is the same for every session on a mailbox; UIDNEXT at SELECT is above
  every UID the server had handed out before the SELECT was sent;
- \\Recent: on at most one read-write session per message (RFC 3501 2.3.2), and fixed
  for a message while the mailbox stays selected.

The load is seeded: each session draws its commands from random.Random(seed, id); the
interleaving of sessions is the scheduler's, so a seed replays the same commands, not
always the same race.
"""

from __future__ import annotations

import asyncio
import random
import re
import ssl
import time
from dataclasses import dataclass, field

KEYWORDS = [f"$K{i}" for i in range(8)]
SYSTEM = ["\\Seen", "\\Flagged", "\\Answered", "\\Draft", "\\Deleted"]
FOLDERS = ["INBOX", "Archive", "Work"]
_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")


class ModelError(AssertionError):
    pass


# -- response parsing --------------------------------------------------------------


def parse_value(buf: bytes, i: int) -> tuple[object, int]:
    """One value of a response at buf[i:]: a list, a string (quoted or literal), or
    an atom (with [...] kept inside, as in BODY[HEADER.FIELDS (A)])."""
    while buf[i : i + 1] == b" ":
        i += 1
    c = buf[i : i + 1]
    if c == b"(":
        out: list[object] = []
        i += 1
        while True:
            while buf[i : i + 1] == b" ":
                i += 1
            if buf[i : i + 1] == b")":
                return out, i + 1
            value, i = parse_value(buf, i)
            out.append(value)
    if c == b'"':
        j, text = i + 1, bytearray()
        while buf[j : j + 1] != b'"':
            if buf[j : j + 1] == b"\\":
                j += 1
            text += buf[j : j + 1]
            j += 1
        return bytes(text), j + 1
    if c in (b"{", b"~"):
        j = buf.index(b"}", i)
        n = int(buf[i + (2 if c == b"~" else 1) : j])
        start = j + 3
        return buf[start : start + n], start + n
    j, depth = i, 0
    while j < len(buf):
        ch = buf[j : j + 1]
        if ch == b"[":
            depth += 1
        elif ch == b"]":
            depth -= 1
        elif depth == 0 and ch in (b" ", b"(", b")", b"\r"):
            break
        j += 1
    return buf[i:j], j


def fetch_items(line: bytes) -> dict[str, object]:
    start = line.index(b"FETCH (") + 6
    items, _ = parse_value(line, start)
    assert isinstance(items, list)
    out = {}
    for k in range(0, len(items) - 1, 2):
        name = items[k]
        out[name.decode().upper() if isinstance(name, bytes) else str(name)] = items[k + 1]
    return out


# -- the model ---------------------------------------------------------------------


@dataclass
class Shared:
    """What all sessions of one run know together."""

    uidvalidity: dict[tuple[str, str], int] = field(default_factory=dict)
    handed_out: dict[tuple[str, str], int] = field(default_factory=dict)  # highest UID seen
    recent_owner: dict[tuple[str, str, int, int], int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    commands: int = 0
    logins: int = 0
    checks: int = 0
    slowest: tuple[float, str] = (0.0, "")  # seconds, command


@dataclass
class View:
    """One session's knowledge of its selected mailbox."""

    mailbox: str
    readonly: bool
    uids: list[int | None] = field(default_factory=list)
    flags: dict[int, set[str]] = field(default_factory=dict)
    modseq: dict[int, int] = field(default_factory=dict)
    recent: dict[int, bool] = field(default_factory=dict)
    keywords: set[str] | None = None  # lower case, from the last FLAGS
    uidvalidity: int | None = None
    uidnext: int | None = None


class Session:
    def __init__(
        self,
        shared: Shared,
        sid: int,
        account: str,
        password: str,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.shared, self.sid, self.account, self.password = shared, sid, account, password
        self.host, self.port, self.tls = host, port, tls
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.view: View | None = None
        self.condstore = False
        self.running = ""  # the command in progress, e.g. "FETCH", "UID FETCH"
        self.n = 0
        self.transcript: list[bytes] = []
        self.connection = 0  # counts reconnects: \Recent belongs to one connection
        self.tracked: dict[int, set[str]] = {}  # flags known after the final NOOP
        self.rev2 = False  # IMAP4rev2 enabled: no \Recent at all (RFC 9051 E.1)
        self.highest: dict[str, int] = {}  # mailbox -> highest MODSEQ this session saw

    # -- I/O ------------------------------------------------------------------------

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.tls, server_hostname="localhost" if self.tls else None,
            limit=4 * 1024 * 1024,
        )  # fmt: skip
        await self.line()  # greeting
        self.connection += 1
        self.view, self.condstore, self.rev2 = None, False, False
        await self.ok(f'LOGIN "{self.account}" "{self.password}"')
        self.shared.logins += 1

    async def close(self) -> None:
        if self.writer is not None:
            try:
                await self.command("LOGOUT")
            except (OSError, ConnectionError, asyncio.IncompleteReadError, ModelError):
                pass
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (OSError, ConnectionError, ssl.SSLError):
                pass
            self.writer = None

    async def line(self) -> bytes:
        assert self.reader is not None
        out = b""
        while True:
            part = await self.reader.readline()
            if not part:
                raise ConnectionError("closed by server")
            out += part
            m = _LITERAL.search(part)
            if not m:
                break
            out += await self.reader.readexactly(int(m.group(1)))
        self.transcript = [*self.transcript[-40:], out[:300]]
        return out

    async def command(self, text: str, literal: bytes | None = None) -> tuple[str, bytes]:
        """Send one command; check each untagged response; return (status, tagged)."""
        assert self.writer is not None
        self.n += 1
        tag = f"s{self.sid}.{self.n}".encode()
        words = text.split()
        self.running = " ".join(words[:2]).upper() if words[0].upper() == "UID" else words[0]
        self.running = self.running.upper()
        data = tag + b" " + text.encode()
        if literal is not None:
            data += b" {%d+}\r\n" % len(literal) + literal
        self.writer.write(data + b"\r\n")
        self.transcript.append(b"C: " + data[:200])
        self.shared.commands += 1
        started = time.monotonic()
        while True:
            line = await self.line()
            if line.startswith(tag + b" "):
                self.running = ""
                took = time.monotonic() - started
                if took > self.shared.slowest[0]:
                    self.shared.slowest = (took, text[:80])
                status = line.split()[1].decode().upper()
                return status, line
            self.untagged(line)

    async def ok(self, text: str, literal: bytes | None = None) -> bytes:
        status, tagged = await self.command(text, literal)
        # RFC 9051 7.1: NO [EXPUNGEISSUED] when some of the messages named were
        # expunged by another session (Dovecot answers so; pimail skips them).
        if status != "OK" and not (status == "NO" and b"[EXPUNGEISSUED]" in tagged):
            self.fail(f"{text!r} -> {tagged!r}")
        return tagged

    def fail(self, what: str) -> None:
        mailbox = self.view.mailbox if self.view else None
        detail = b"\n    ".join(self.transcript[-12:]).decode(errors="replace")
        self.shared.errors.append(
            f"session {self.sid} ({self.account} {mailbox}): {what}\n    {detail}"
        )

    # -- checks ----------------------------------------------------------------------

    def untagged(self, line: bytes) -> None:
        self.shared.checks += 1
        v = self.view
        m = re.match(rb"\* (\d+) (EXISTS|EXPUNGE|RECENT|FETCH)\b", line)
        if m and v is not None:
            n, kind = int(m.group(1)), m.group(2)
            if kind == b"EXISTS":
                if n < len(v.uids):
                    self.fail(f"EXISTS {n} below the {len(v.uids)} messages known")
                v.uids.extend([None] * (n - len(v.uids)))
            elif kind == b"EXPUNGE":
                if self.running in ("FETCH", "STORE", "SEARCH"):
                    self.fail(f"EXPUNGE during {self.running} (RFC 9051 7.4.1)")
                if not 1 <= n <= len(v.uids):
                    self.fail(f"EXPUNGE {n} of {len(v.uids)}")
                    return
                uid = v.uids.pop(n - 1)
                if uid is not None:
                    v.flags.pop(uid, None)
            elif kind == b"RECENT":
                if self.rev2:
                    self.fail("RECENT response to an IMAP4rev2 session")
                if n > len(v.uids):
                    self.fail(f"RECENT {n} above EXISTS {len(v.uids)}")
            else:
                self.check_fetch(v, n, line)
            return
        if line.startswith(b"* FLAGS (") and v is not None:
            flags, _ = parse_value(line, 8)
            assert isinstance(flags, list)
            v.keywords = {f.decode().lower() for f in flags if not f.startswith(b"\\")}
            return
        m = re.match(rb"\* OK \[(UIDVALIDITY|UIDNEXT|HIGHESTMODSEQ) (\d+)\]", line)
        if m and v is not None:
            value = int(m.group(2))
            key = (self.account, v.mailbox)
            if m.group(1) == b"UIDVALIDITY":
                v.uidvalidity = value
                known = self.shared.uidvalidity.setdefault(key, value)
                if known != value:
                    self.fail(f"UIDVALIDITY {value}, another session had {known}")
            elif m.group(1) == b"UIDNEXT":
                v.uidnext = value
            elif value < self.highest.get(v.mailbox, 0):  # RFC 7162 3.1.2.1
                self.fail(f"HIGHESTMODSEQ {value} below MODSEQ {self.highest[v.mailbox]} seen")
            return
        if line.startswith(b"* ENABLED") and b" IMAP4REV2" in line.upper():
            self.rev2 = True
            return
        if line.startswith(b"* SEARCH") and v is not None:
            found = [int(x) for x in re.findall(rb" (\d+)", line.split(b"(")[0])]
            if "UID" not in self.running and any(not 1 <= n <= len(v.uids) for n in found):
                self.fail(f"SEARCH found message numbers beyond {len(v.uids)}: {found}")
            return
        if line.startswith(b"* BYE") and self.running != "LOGOUT":
            self.fail(f"unexpected {line!r}")

    def check_fetch(self, v: View, n: int, line: bytes) -> None:
        if not 1 <= n <= len(v.uids):
            self.fail(f"FETCH for message {n} of {len(v.uids)}")
            return
        try:
            items = fetch_items(line)
        except (ValueError, IndexError, AssertionError):
            self.fail(f"unparsable FETCH {line[:200]!r}")
            return
        uid = v.uids[n - 1]
        if "UID" in items:
            got = int(items["UID"])  # type: ignore[call-overload]
            if uid is not None and got != uid:
                self.fail(f"message {n} was UID {uid}, now {got}")
            lower = next((u for u in reversed(v.uids[: n - 1]) if u is not None), 0)
            higher = next((u for u in v.uids[n:] if u is not None), None)
            if got <= lower or (higher is not None and got >= higher):
                self.fail(f"UID {got} at {n} out of order ({lower} .. {higher})")
            v.uids[n - 1] = uid = got
            key = (self.account, v.mailbox)
            self.shared.handed_out[key] = max(self.shared.handed_out.get(key, 0), got)
        if "FLAGS" in items:
            flags = {f.decode() for f in items["FLAGS"]}  # type: ignore[union-attr]
            for f in flags:
                if not f.startswith("\\") and (v.keywords is None or f.lower() not in v.keywords):
                    self.fail(f"keyword {f} in FETCH before a FLAGS response listing it")
            # RFC 7162 3.1: all but the answers to a FETCH that did not ask for it.
            if self.condstore and "MODSEQ" not in items and "FETCH" not in self.running:
                self.fail("FETCH with FLAGS but no MODSEQ after CONDSTORE was enabled")
            if self.rev2 and "\\Recent" in flags:
                self.fail("\\Recent shown to an IMAP4rev2 session")
            if uid is not None:
                self.check_recent(v, uid, "\\Recent" in flags)
                v.flags[uid] = {f for f in flags if f != "\\Recent"}
        if "MODSEQ" in items and uid is not None:
            modseq = int(items["MODSEQ"][0])  # type: ignore[index]
            if modseq < v.modseq.get(uid, 0):
                self.fail(f"MODSEQ of UID {uid} went down: {v.modseq[uid]} -> {modseq}")
            v.modseq[uid] = modseq
            self.highest[v.mailbox] = max(self.highest.get(v.mailbox, 0), modseq)

    def check_recent(self, v: View, uid: int, recent: bool) -> None:
        was = v.recent.setdefault(uid, recent)
        if was != recent:
            self.fail(f"\\Recent of UID {uid} changed within one selection")
        if recent and not v.readonly and v.uidvalidity is not None:
            key = (self.account, v.mailbox, v.uidvalidity, uid)
            owner = self.shared.recent_owner.setdefault(key, self.sid * 1000 + self.connection)
            if owner != self.sid * 1000 + self.connection:
                self.fail(f"UID {uid} \\Recent in two sessions ({owner} and this)")

    # -- commands the load uses ----------------------------------------------------------

    def apply_store(
        self, chosen: str, by_uid: bool, action: str, flags: set[str], tagged: bytes
    ) -> None:
        v = self.view
        assert v is not None
        if b"[MODIFIED " in tagged:
            return  # some were not changed: the server's FETCHes will tell
        ranges = []
        for r in chosen.split(","):
            lo, _, hi = r.partition(":")
            ranges.append((int(lo), (1 << 32) if hi == "*" else int(hi or lo)))
        for n, uid in enumerate(v.uids, 1):
            if uid is None or uid not in v.flags:
                continue
            key = uid if by_uid else n
            if not any(lo <= key <= hi for lo, hi in ranges):
                continue
            if action == "+":
                v.flags[uid] |= flags
            elif action == "-":
                v.flags[uid] -= flags
            else:
                v.flags[uid] = set(flags)

    def note_uids(self, mailbox: str, tagged: bytes) -> None:
        """APPENDUID / COPYUID (RFC 4315): UIDs handed out in `mailbox`."""
        m = re.search(rb"\[(?:APPENDUID \d+ |COPYUID \d+ \S+ )([\d:,]+)\]", tagged)
        if m:
            top = max(int(x) for x in re.split(rb"[:,]", m.group(1)))
            key = (self.account, mailbox)
            self.shared.handed_out[key] = max(self.shared.handed_out.get(key, 0), top)

    async def select(self, mailbox: str, readonly: bool, condstore: bool) -> None:
        before = self.shared.handed_out.get((self.account, mailbox), 0)
        self.view = View(mailbox, readonly)
        verb = "EXAMINE" if readonly else "SELECT"
        await self.ok(f"{verb} {mailbox}" + (" (CONDSTORE)" if condstore else ""))
        if condstore:
            self.condstore = True
        v = self.view
        if v.uidnext is not None and v.uidnext <= before:
            self.fail(f"UIDNEXT {v.uidnext} not above UID {before} handed out before")


def message(rng: random.Random, sid: int) -> bytes:
    word = rng.choice(["alpha", "bravo", "charlie", "delta"])
    return (
        f"From: s{sid}@load.test\r\nTo: you@load.test\r\nSubject: {word} {rng.random()}\r\n"
        f"Message-ID: <{rng.random()}@load.test>\r\n\r\nBody {word}.\r\n"
    ).encode()


def random_set(rng: random.Random, v: View) -> str:
    count = len(v.uids)
    a = rng.randint(1, count)
    b = rng.randint(a, min(count, a + 5))
    return f"{a}:{b}" if a != b else str(a)


def random_uid_set(rng: random.Random, v: View) -> str:
    known = [u for u in v.uids if u is not None]
    if not known or rng.random() < 0.2:
        return "1:*"
    return ",".join(str(u) for u in sorted(set(rng.sample(known, min(3, len(known))))))


async def step(s: Session, rng: random.Random, folders: list[str]) -> None:
    """One random action of session `s`."""
    v = s.view
    r = rng.random()
    if v is None or r < 0.05:
        readonly = rng.random() < 0.2
        await s.select(rng.choice(folders), readonly, condstore=rng.random() < 0.3)
        return
    if r < 0.17:
        flags = rng.sample(KEYWORDS, rng.randint(0, 2)) + rng.sample(SYSTEM[:4], rng.randint(0, 1))
        fl = f" ({' '.join(flags)})" if flags or rng.random() < 0.5 else ""
        folder = rng.choice(folders)
        s.note_uids(folder, await s.ok(f"APPEND {folder}{fl}", message(rng, s.sid)))
        return
    if r < 0.22:
        await s.ok("NOOP")
        return
    if r < 0.25:
        await idle(s, rng)
        return
    if r < 0.26:
        await s.close()
        await s.connect()
        if rng.random() < 0.3:
            await s.ok("ENABLE CONDSTORE")
            s.condstore = True
        if rng.random() < 0.2:
            await s.ok("ENABLE IMAP4rev2")  # where the server has it (Dovecot 2.3: not)
        return
    if not v.uids:
        await s.ok("NOOP")
        return
    if r < 0.45:
        items = rng.choice(["(UID FLAGS)", "(FLAGS)", "(UID FLAGS MODSEQ)", "(UID ENVELOPE)",
                            "(UID FLAGS ENVELOPE)", "(FLAGS MODSEQ)"])  # fmt: skip
        if "MODSEQ" in items:
            s.condstore = True
        if rng.random() < 0.5:
            await s.ok(f"UID FETCH {random_uid_set(rng, v)} {items}")
        else:
            await s.ok(f"FETCH {random_set(rng, v)} {items}")
        return
    if r < 0.65 and not v.readonly:
        action = rng.choice(["+", "-", ""])
        flags = rng.sample(KEYWORDS + SYSTEM[:4], rng.randint(1, 3))
        if rng.random() < 0.15:
            flags.append("\\Deleted")
        silent = ".SILENT" if rng.random() < 0.4 else ""
        modifier = ""
        if rng.random() < 0.2 and v.modseq:
            modifier = f" (UNCHANGEDSINCE {rng.choice(list(v.modseq.values()))})"
            s.condstore = True
        by_uid = rng.random() < 0.5
        chosen = random_uid_set(rng, v) if by_uid else random_set(rng, v)
        target = f"{'UID ' if by_uid else ''}STORE {chosen}"
        tagged = await s.ok(f"{target}{modifier} {action}FLAGS{silent} ({' '.join(flags)})")
        if silent:  # the client applies its own change, as a real one does
            s.apply_store(chosen, by_uid, action, set(flags), tagged)
        return
    if r < 0.75:
        verb = "MOVE" if rng.random() < 0.4 and not v.readonly else "COPY"
        dest = rng.choice([f for f in folders if f != v.mailbox])
        if rng.random() < 0.5:
            tagged = await s.ok(f"UID {verb} {random_uid_set(rng, v)} {dest}")
        else:
            tagged = await s.ok(f"{verb} {random_set(rng, v)} {dest}")
        s.note_uids(dest, tagged)
        return
    if r < 0.82 and not v.readonly:
        if rng.random() < 0.5:
            await s.ok("EXPUNGE")
        else:
            await s.ok(f"UID EXPUNGE {random_uid_set(rng, v)}")
        return
    key = rng.choice(["ALL", "UNSEEN", f"KEYWORD {rng.choice(KEYWORDS)}", "RECENT", "NEW",
                      "DELETED", "MODSEQ 1", "OLD"])  # fmt: skip
    if key.startswith("MODSEQ"):
        s.condstore = True
    uid = rng.random() < 0.5
    status, tagged = await s.command(f"{'UID ' if uid else ''}SEARCH {key}")
    if status != "OK":
        s.fail(f"SEARCH {key} -> {tagged!r}")


async def idle(s: Session, rng: random.Random) -> None:
    assert s.writer is not None
    s.n += 1
    tag = f"s{s.sid}.{s.n}".encode()
    s.running = "IDLE"
    s.writer.write(tag + b" IDLE\r\n")
    s.shared.commands += 1
    line = await s.line()
    while not line.startswith(b"+"):
        s.untagged(line)
        line = await s.line()
    # What arrives meanwhile waits in the socket and is checked below, in order.
    await asyncio.sleep(rng.uniform(0.05, 0.3))
    s.writer.write(b"DONE\r\n")
    while True:
        line = await s.line()
        if line.startswith(tag + b" "):
            break
        s.untagged(line)
    s.running = ""


@dataclass
class LoadResult:
    seconds: float
    logins: int
    commands: int
    checks: int
    slowest: tuple[float, str]
    errors: list[str]
    sessions: list[Session]


async def run_load(
    host: str,
    port: int,
    tls: ssl.SSLContext | None,
    accounts: list[tuple[str, str]],
    seed: int,
    seconds: float,
    sessions: int = 10,
    folders: list[str] = FOLDERS,
) -> LoadResult:
    """`sessions` sessions spread over `accounts`, random commands for `seconds`, then
    a final NOOP and UID FETCH 1:* (UID FLAGS) in each (their views are then current)."""
    shared = Shared()
    # The folders exist first (an ALREADYEXISTS NO is fine).
    for account, password in accounts:
        s = Session(shared, 0, account, password, host, port, tls)
        await s.connect()
        for folder in folders:
            if folder != "INBOX":
                await s.command(f"CREATE {folder}")
        await s.close()
    all_sessions = [
        Session(shared, i + 1, *accounts[i % len(accounts)], host, port, tls)
        for i in range(sessions)
    ]
    started = time.monotonic()
    deadline = started + seconds

    async def worker(s: Session) -> None:
        rng = random.Random(f"{seed}/{s.sid}")
        await s.connect()
        while time.monotonic() < deadline:
            await step(s, rng, folders)

    results = await asyncio.gather(*(worker(s) for s in all_sessions), return_exceptions=True)
    elapsed = time.monotonic() - started
    for s, result in zip(all_sessions, results, strict=True):
        if isinstance(result, BaseException):
            s.fail(f"{type(result).__name__}: {result}")
            s.writer = None
    for s in all_sessions:
        if s.view is not None and s.writer is not None:
            try:
                await s.ok("NOOP")
                # What the session tracked, before a full FETCH refreshes it.
                s.tracked = {u: s.view.flags[u] for u in s.view.uids if u in s.view.flags}
                if s.view.uids:
                    await s.ok("UID FETCH 1:* (UID FLAGS)")
            except (OSError, ConnectionError, asyncio.IncompleteReadError) as e:
                s.fail(f"final sync: {type(e).__name__}: {e}")
                s.writer = None
    return LoadResult(elapsed, shared.logins, shared.commands, shared.checks, shared.slowest,
                      shared.errors, all_sessions)  # fmt: skip


def compare_views(result: LoadResult) -> None:
    """Sessions on the same mailbox, all current, must agree on UIDs and flags."""
    by_box: dict[tuple[str, str], Session] = {}
    for s in result.sessions:
        v = s.view
        if v is None or s.writer is None:
            continue
        first = by_box.setdefault((s.account, v.mailbox), s)
        w = first.view
        assert w is not None
        if v.uids != w.uids or {u: v.flags.get(u) for u in v.uids} != {
            u: w.flags.get(u) for u in w.uids
        }:
            s.fail(f"view differs from session {first.sid}'s on the same mailbox")
