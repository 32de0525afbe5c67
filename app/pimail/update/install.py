"""`pimail update FILE|URL`: fetch, check, install into the inactive slot.

A URL must be HTTPS (the bundle is signed, but a plain-HTTP fetch would let a
network peer feed the box a gigabyte of junk or an old signed bundle). It is
streamed to the data spool (`<data>/spool/update/`), never held in RAM: the
box may have 512 MB and a bundle is ~150 MB. The checks (bundle.verify) run
before `rauc install`, which writes the inactive root slot and makes it the
one U-Boot boots next; its first boot is a trial (pimail-update-confirm).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import bundle

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total; total 0: unknown)
CHUNK = 256 * 1024
# No bundle is this big (the root slot is 320 MiB): a URL that sends more is refused.
MAX_BUNDLE_BYTES = 400 * 1024 * 1024


def spool_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "spool" / "update"


def fetch(
    url: str,
    data_dir: Path,
    progress: Progress | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download `url` into the spool; the file's path. HTTPS only."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise bundle.Refused(f"only https:// URLs are fetched, not {url!r}")
    spool = spool_dir(data_dir)
    spool.mkdir(parents=True, exist_ok=True)
    target = spool / "download.raucb"
    partial = spool / "download.raucb.part"
    request = urllib.request.Request(url, headers={"User-Agent": "pimail-update"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            total = int(response.headers.get("Content-Length") or 0)
            if total > MAX_BUNDLE_BYTES:
                raise bundle.Refused(f"{url} is {total} bytes: too big for a bundle")
            done = 0
            with open(partial, "wb") as out:
                while chunk := response.read(CHUNK):
                    done += len(chunk)
                    if done > MAX_BUNDLE_BYTES:
                        raise bundle.Refused(f"{url} sends more than {MAX_BUNDLE_BYTES} bytes")
                    out.write(chunk)
                    if progress:
                        progress("download", done, total)
                out.flush()
                os.fsync(out.fileno())
            if total and done != total:
                raise bundle.Refused(f"the download stopped after {done} of {total} bytes")
    except bundle.Refused:
        partial.unlink(missing_ok=True)
        raise
    except (OSError, ValueError) as e:  # URLError, HTTPError, TLS errors are OSErrors
        partial.unlink(missing_ok=True)
        raise bundle.Refused(f"cannot fetch {url}: {e}") from e
    os.replace(partial, target)
    log.info("update fetched url=%s bytes=%d", url, done)
    return target


@dataclass(frozen=True)
class Slot:
    name: str  # A or B
    state: str  # booted, inactive
    device: str
    version: str  # the bundle's version as RAUC recorded it; "" unknown
    boot_status: str  # good, bad, ""
    primary: bool  # the slot U-Boot boots next


def slots(rauc: str = bundle.RAUC) -> list[Slot]:
    """`rauc status --detailed`: both root slots."""
    done = subprocess.run(
        [rauc, "status", "--detailed", "--output-format=json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise bundle.Refused(f"rauc status failed: {bundle.rauc_reason(done.stderr)}")
    return parse_status(json.loads(done.stdout))


def parse_status(status: dict) -> list[Slot]:
    """RAUC's JSON status ({"booted": "A", "boot_primary": "rootfs.1", "slots":
    [{"rootfs.0": {...}}, ...]}) as Slots."""
    primary = status.get("boot_primary") or ""
    out: list[Slot] = []
    for entry in status.get("slots") or []:
        for key, slot in entry.items():
            if slot.get("class") != "rootfs":
                continue
            bundle_info = (slot.get("slot_status") or {}).get("bundle") or {}
            out.append(
                Slot(
                    name=str(slot.get("bootname") or key),
                    state=str(slot.get("state") or ""),
                    device=str(slot.get("device") or ""),
                    version=str(bundle_info.get("version") or ""),
                    boot_status=str(slot.get("boot_status") or ""),
                    primary=key == primary,
                )
            )
    return sorted(out, key=lambda s: s.name)


def install(
    path: Path,
    release: bundle.Release,
    keyring: Path = bundle.KEYRING,
    rauc: str = bundle.RAUC,
    progress: Progress | None = None,
) -> bundle.BundleInfo:
    """Check `path`, then `rauc install` it into the inactive slot."""
    info = bundle.verify(path, release, keyring, rauc)
    if progress:
        progress("install", 0, 100)
    proc = subprocess.Popen(
        [rauc, "install", "--progress", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    last = ""
    for line in proc.stdout:
        line = line.strip()
        if line:
            last = line
        # rauc install --progress prints "  15% Installing" style lines.
        head = line.split("%", 1)[0].strip()
        if progress and head.isdigit():
            progress("install", int(head), 100)
    if proc.wait() != 0:
        raise bundle.Refused(f"rauc install failed: {last}")
    log.info("update installed version=%s", info.version)
    if progress:
        progress("install", 100, 100)
    return info


def rollback(rauc: str = bundle.RAUC) -> str:
    """Make the other slot the one U-Boot boots next (`rauc status mark-active
    other`); takes effect at the next reboot."""
    done = subprocess.run(
        [rauc, "status", "mark-active", "other"], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise bundle.Refused(f"cannot roll back: {bundle.rauc_reason(done.stderr)}")
    return done.stdout.strip()
