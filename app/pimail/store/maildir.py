"""Maildir on disk: names, flags, folders, and the per-folder state file.

Layout under the data directory (Maildir++ as Dovecot and Courier use it):

    mail/<domain>/<localpart>/            the account's INBOX: cur/ new/ tmp/
    mail/<domain>/<localpart>/.Sent/      folder "Sent"
    mail/<domain>/<localpart>/.A.B/       folder "A/B"
    .../pimail-uidvalidity                per folder: "<uidvalidity> <uidnext> <highestmodseq>"

Message file names carry what the index must be able to rebuild:

    <secs>.M<usecs>P<pid>Q<seq>.<host>,S=<size>,U=<uid>:2,<flags>

The UID is in the name (Dovecot keeps it in dovecot-uidlist instead); flags use
the Maildir letters (D draft, F flagged, P passed, R replied, S seen, T trashed).
The state file keeps UIDVALIDITY, and a lower bound for UIDNEXT and
HIGHESTMODSEQ: UIDs and mod-sequences must never go backwards (RFC 9051 2.3.1.1,
RFC 7162 3.1), even after the highest UID is expunged and the index is lost.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

STATE_FILE = "pimail-uidvalidity"
SUBDIRS = ("cur", "new", "tmp")

# RFC 9051 2.3.2 system flags <-> Maildir info letters (in ASCII order, as the spec asks).
FLAG_LETTERS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "$Forwarded": "P",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
LETTER_FLAGS = {v: k for k, v in FLAG_LETTERS.items()}

_NAME_FIELDS = re.compile(r",([A-Z])=([^,:]*)")
_seq = itertools.count()
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


@dataclass(frozen=True)
class FileName:
    """A parsed Maildir file name."""

    base: str  # unique part, with ,S= and ,U= fields
    uid: int | None
    size: int | None
    letters: str  # Maildir flag letters after ":2,"

    @property
    def flags(self) -> list[str]:
        return [LETTER_FLAGS[c] for c in self.letters if c in LETTER_FLAGS]

    def with_letters(self, letters: str) -> str:
        return f"{self.base}:2,{''.join(sorted(set(letters)))}"


def parse_name(name: str) -> FileName:
    base, sep, info = name.partition(":2,")
    fields = dict(_NAME_FIELDS.findall(base))
    uid = fields.get("U")
    size = fields.get("S")
    return FileName(
        base=base,
        uid=int(uid) if uid and uid.isdigit() else None,
        size=int(size) if size and size.isdigit() else None,
        letters=info if sep else "",
    )


def unique_base() -> str:
    now = time.time()
    secs = int(now)
    usecs = int((now - secs) * 1_000_000)
    return f"{secs}.M{usecs}P{os.getpid()}Q{next(_seq)}.{_HOST}"


def new_name(base: str, size: int, uid: int) -> str:
    return f"{base},S={size},U={uid}"


def letters_for(flags: list[str] | set[str]) -> str:
    return "".join(sorted(FLAG_LETTERS[f] for f in flags if f in FLAG_LETTERS))


# -- folder names ---------------------------------------------------------

_ESCAPE = re.compile(r"[~./%*\x00-\x1f\x7f]")


def folder_dirname(name: str) -> str:
    """IMAP folder name ('/' separated) -> Maildir++ directory name ('' for INBOX).

    Characters that mean something on disk or to Maildir++ ('.', '/', '~') and
    control characters are escaped as ~XX, so a name can never leave the
    account's directory."""
    if name.upper() == "INBOX":
        return ""
    parts = name.split("/")
    if any(part == "" for part in parts):
        raise ValueError(f"bad folder name {name!r}")
    return "." + ".".join(_ESCAPE.sub(lambda m: f"~{ord(m.group()):02X}", p) for p in parts)


def folder_name(dirname: str) -> str | None:
    """The reverse of folder_dirname; None for directories that are not folders."""
    if not dirname.startswith(".") or dirname in (".", ".."):
        return None
    parts = dirname[1:].split(".")
    try:
        return "/".join(
            re.sub(r"~([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), p) for p in parts
        )
    except ValueError:
        return None


# -- state file and durability --------------------------------------------


@dataclass
class FolderState:
    uidvalidity: int
    uidnext: int
    highestmodseq: int


def read_state(folder: Path) -> FolderState | None:
    try:
        text = (folder / STATE_FILE).read_text()
        uidvalidity, uidnext, highestmodseq = (int(x) for x in text.split()[:3])
    except (OSError, ValueError):
        return None
    return FolderState(uidvalidity, uidnext, highestmodseq)


def write_state(folder: Path, state: FolderState) -> None:
    """Atomically replace the state file, durably."""
    tmp = folder / "tmp" / f"{STATE_FILE}.{os.getpid()}"
    data = f"{state.uidvalidity} {state.uidnext} {state.highestmodseq}\n".encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, folder / STATE_FILE)
    fsync_dir(folder)


def write_new(path: Path, data: bytes) -> None:
    """Create `path` (0600; it must not exist), write `data`, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` as `target`; copy (and fsync) across filesystems."""
    try:
        os.link(source, target)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        with open(source, "rb") as src, open(target, "xb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())


def unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_folder(folder: Path) -> bool:
    """Create cur/new/tmp under `folder`; True if anything was created."""
    created = False
    for sub in SUBDIRS:
        try:
            (folder / sub).mkdir(mode=0o700, parents=True)
            created = True
        except FileExistsError:
            pass
    if created:
        fsync_dir(folder)
        fsync_dir(folder.parent)
    return created


# -- keywords ---------------------------------------------------------------

KEYWORDS_FILE = "pimail-keywords"
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def read_keywords(folder: Path) -> list[str]:
    """The folder's keyword table: keyword i is Maildir letter KEYWORD_LETTERS[i]
    (the scheme of Dovecot's dovecot-keywords, one "i name" per line)."""
    try:
        lines = (folder / KEYWORDS_FILE).read_text().splitlines()
    except OSError:
        return []
    table: dict[int, str] = {}
    for line in lines:
        index, _, name = line.partition(" ")
        if index.isdigit() and name and int(index) < len(KEYWORD_LETTERS):
            table[int(index)] = name
    return [table.get(i, "") for i in range(max(table) + 1)] if table else []


def write_keywords(folder: Path, keywords: list[str]) -> None:
    tmp = folder / "tmp" / f"{KEYWORDS_FILE}.{os.getpid()}"
    tmp.write_text("".join(f"{i} {k}\n" for i, k in enumerate(keywords) if k))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, folder / KEYWORDS_FILE)


def flags_of(letters: str, keywords: list[str]) -> list[str]:
    """Maildir info letters -> IMAP flags and keywords."""
    out = [LETTER_FLAGS[c] for c in letters if c in LETTER_FLAGS]
    for c in letters:
        i = KEYWORD_LETTERS.find(c)
        if 0 <= i < len(keywords) and keywords[i]:
            out.append(keywords[i])
    return out
