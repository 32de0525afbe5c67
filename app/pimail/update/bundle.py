"""Update bundles: RAUC's signed bundle files, and pimail's checks on them.

A bundle is refused before anything is written when its signature does not
verify against the image's keyring (another key, or a truncated file: RAUC's
plain format is signed over the whole file, the signature at its end), when it
is for another board (`compatible`), or when its version is not newer than the
running system's. RAUC checks the first two again inside `rauc install`; the
version is pimail's rule (RAUC installs any version).
"""

from __future__ import annotations

import json
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


def inspect(path: Path, keyring: Path = KEYRING, rauc: str = RAUC) -> BundleInfo:
    """`rauc info`: the bundle's manifest, after its signature verified
    against `keyring`. Refused with RAUC's own reason otherwise."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise Refused(f"cannot read {path}: {e.strerror}") from e
    if size == 0:
        raise Refused(f"{path} is empty")
    try:
        done = subprocess.run(
            [rauc, "info", f"--keyring={keyring}", "--output-format=json", str(path)],
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
    try:
        manifest = json.loads(done.stdout)
    except json.JSONDecodeError as e:
        raise Refused("rauc info printed no manifest") from e
    signer = ""
    for line in done.stderr.splitlines():
        if "Verified" in line and "signature by" in line:
            signer = line.split("signature by", 1)[1].strip().strip("'")
    return BundleInfo(
        compatible=str(manifest.get("compatible") or ""),
        version=str(manifest.get("version") or ""),
        signer=signer,
    )


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
