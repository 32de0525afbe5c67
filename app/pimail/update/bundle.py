"""Update bundles: RAUC's signed bundle files, and pimail's checks on them.

A bundle (RAUC's verity format) is refused before anything is written when
its signature does not verify against the image's keyring (another key; a
truncated file, whose end, the signature, is gone), when its payload does not
match the dm-verity root hash the signature covers (damaged or altered), when
it is for another board (`compatible`), or when its version is not newer than
the running system's. RAUC checks the first two again inside `rauc install`; the
version is pimail's rule (RAUC installs any version).
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

RELEASE_FILE = Path("/etc/pimail-release")
KEYRING = Path("/etc/rauc/keyring.pem")
RAUC = "rauc"


class Refused(Exception):
    """A bundle that must not be installed; str() is the reason for the user."""


@dataclass(frozen=True, order=True)
class Version:
    """A release: pimail's version and the build time, "0.1.0+20261208014500".
    Compared number by number ("0.10" > "0.9"); text parts compare as text
    after numbers."""

    parts: tuple[tuple[int, int | str], ...]
    text: str = field(default="", compare=False)

    @classmethod
    def parse(cls, text: str) -> Version:
        text = text.strip()
        if not text:
            raise ValueError("an empty version")
        parts: list[tuple[int, int | str]] = []
        for piece in re.split(r"[.+\-~_]", text):
            if piece.isdigit():
                parts.append((1, int(piece)))
            elif piece:
                parts.append((0, piece))
        return cls(tuple(parts), text)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Release:
    """The running system: /etc/pimail-release, written by image/build.sh."""

    version: str
    compatible: str

    @classmethod
    def read(cls, path: Path = RELEASE_FILE) -> Release:
        fields: dict[str, str] = {}
        try:
            text = path.read_text()
        except OSError as e:
            raise Refused(f"cannot tell the running system's version ({path}: {e.strerror})") from e
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                fields[key.strip()] = value.strip()
        if not fields.get("version") or not fields.get("compatible"):
            raise Refused(f"{path} names no version or compatible")
        return cls(fields["version"], fields["compatible"])


@dataclass(frozen=True)
class BundleInfo:
    compatible: str
    version: str
    signer: str = ""


# `rauc info`'s readable output (the JSON one leaves out the verity fields).
_INFO_LINE = re.compile(
    r"^\s*(Compatible|Version|Bundle Format|Verity Salt|Verity Hash|Verity Size):\s*'?([^']*)'?\s*$"
)
VERITY_BLOCK = 4096


def inspect(path: Path, keyring: Path = KEYRING, rauc: str = RAUC) -> BundleInfo:
    """`rauc info`: the bundle's manifest, after its signature verified
    against `keyring`; then the payload against the signed dm-verity root
    hash. Refused with the reason otherwise."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise Refused(f"cannot read {path}: {e.strerror}") from e
    if size == 0:
        raise Refused(f"{path} is empty")
    try:
        done = subprocess.run(
            [rauc, "info", f"--keyring={keyring}", str(path)],
            capture_output=True,
            text=True,
            timeout=600,
        )
    except FileNotFoundError as e:
        raise Refused("RAUC is not installed on this system") from e
    except subprocess.TimeoutExpired as e:
        raise Refused("rauc info took too long") from e
    if done.returncode != 0:
        raise Refused(rauc_reason(done.stderr))
    fields: dict[str, str] = {}
    for line in done.stdout.splitlines():
        if match := _INFO_LINE.match(line):
            fields.setdefault(match.group(1), match.group(2).strip())
    signer = ""
    for line in done.stderr.splitlines():
        if "Verified" in line and "signature by" in line:
            signer = line.split("signature by", 1)[1].strip().strip("'")
    if fields.get("Bundle Format") != "verity":
        # A plain bundle's manifest needs unsquashfs, which the image does not have,
        # and its payload is not checked block by block as it is written.
        raise Refused(f"not a verity bundle (format {fields.get('Bundle Format') or 'unknown'})")
    try:
        salt = bytes.fromhex(fields["Verity Salt"])
        expected = fields["Verity Hash"].lower()
        tree = int(fields["Verity Size"])
    except (KeyError, ValueError) as e:
        raise Refused("rauc info names no verity salt, hash and size") from e
    if verity_root(path, salt, tree) != expected:
        raise Refused("the bundle's payload does not match its signature (damaged or altered)")
    return BundleInfo(fields.get("Compatible", ""), fields.get("Version", ""), signer)


def verity_root(path: Path, salt: bytes, tree_size: int) -> str:
    """The dm-verity root hash (format 1, SHA-256, 4 KiB blocks, salt first)
    of a verity bundle's payload, "" when the hash tree stored in the bundle
    is not the one its payload gives. RAUC's layout: the squashfs, the hash
    tree (its top level first, as veritysetup writes it), the signature and
    its 8-byte big-endian size. RAUC signs the root hash; dm-verity checks the
    same tree as the bundle is installed: this is that check done first, so a
    damaged bundle is refused before a block of the slot is written."""
    with open(path, "rb") as f:
        end = f.seek(0, 2)
        if end < 8:
            return ""
        f.seek(end - 8)
        signature = int.from_bytes(f.read(8), "big")
        data_size = end - 8 - signature - tree_size
        if data_size <= 0 or data_size % VERITY_BLOCK or tree_size <= 0:
            return ""
        f.seek(0)
        level = bytearray()
        for _ in range(data_size // VERITY_BLOCK):
            level += hashlib.sha256(salt + f.read(VERITY_BLOCK)).digest()
        levels: list[bytes] = []
        while True:
            if len(level) % VERITY_BLOCK:
                level += bytes(VERITY_BLOCK - len(level) % VERITY_BLOCK)
            levels.append(bytes(level))
            if len(level) == VERITY_BLOCK:
                break
            level = bytearray(
                b"".join(
                    hashlib.sha256(salt + level[i : i + VERITY_BLOCK]).digest()
                    for i in range(0, len(level), VERITY_BLOCK)
                )
            )
        if f.read(tree_size) != b"".join(reversed(levels)):
            return ""
    return hashlib.sha256(salt + levels[-1]).hexdigest()


def rauc_reason(stderr: str) -> str:
    """RAUC's error, said for a user: the line that is not a progress message."""
    lines = [
        line.strip()
        for line in stderr.splitlines()
        if line.strip() and "rauc-Message" not in line and "rauc-Warning" not in line
    ]
    detail = lines[-1] if lines else "rauc info failed"
    low = detail.lower()
    if "signature size" in low or "exceeds bundle size" in low or "too small" in low:
        return f"the bundle is truncated or not a bundle ({detail})"
    if "signature" in low or "verify" in low or "certificate" in low:
        return f"the bundle's signature does not verify against this system's key ({detail})"
    return f"not a valid bundle ({detail})"


def check(info: BundleInfo, release: Release, allow_same: bool = False) -> None:
    """pimail's rules for a bundle whose signature verified."""
    if info.compatible != release.compatible:
        raise Refused(
            f"the bundle is for {info.compatible or 'no board'!r}, this system is "
            f"{release.compatible!r}"
        )
    try:
        new, now = Version.parse(info.version), Version.parse(release.version)
    except ValueError as e:
        raise Refused(f"the bundle has no version ({e})") from e
    if new < now or (new == now and not allow_same):
        raise Refused(
            f"the bundle's version {new} is not newer than the running {now} "
            "(to go back, use roll back: the other slot keeps the previous version)"
        )


def verify(
    path: Path,
    release: Release,
    keyring: Path = KEYRING,
    rauc: str = RAUC,
) -> BundleInfo:
    """Every check, in order; the bundle's manifest when all pass."""
    info = inspect(path, keyring, rauc)
    check(info, release)
    log.info("update bundle=%s version=%s signer=%r checked", path, info.version, info.signer)
    return info
