"""Is there a newer system? A small signed manifest at `update.manifest_url`.

`./build.sh image` writes `out/pimail-<board>.manifest` beside the bundle: a CMS
SignedData message (RFC 5652, PEM), signed with the same build key as the bundles,
whose content is JSON:

    {"compatible": "pimail-arm64", "version": "0.1.0+20261208024829",
     "bundle": "pimail-arm64-0.1.0+20261208024829.raucb", "size": 158173349}

`bundle` is a URL, or a name relative to the manifest's own URL (publish both files
in one directory). The box reads the manifest over HTTPS only, at most
MAX_MANIFEST_BYTES, and believes nothing in it until `openssl cms -verify` has
checked the signature against the image's keyring (RAUC's own keyring: the key
that signs bundles signs manifests): a network peer or a hacked download server
can neither make the box fetch another file nor hide a newer release behind an
older one without the build key. The bundle it names is checked again in full
(bundle.verify) before anything is written, so the manifest only decides what to
offer. Nothing is fetched unless the admin asks (`pimail update check`, the
admin page's "Check for an update"); the setting is empty by default.
"""

from __future__ import annotations

import json
import logging
import ssl
import subprocess
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .bundle import KEYRING, Refused, Release, Version

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 64 * 1024
OPENSSL = "openssl"


@dataclass(frozen=True)
class Offer:
    """What the manifest offers, against the running release."""

    version: str
    bundle_url: str
    size: int
    newer: bool


def fetch(url: str, context: ssl.SSLContext | None = None, timeout: float = 30.0) -> bytes:
    """The manifest's bytes, from an https:// URL, at most MAX_MANIFEST_BYTES."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise Refused(f"the update manifest is read over https:// only, not {url!r}")
    request = urllib.request.Request(url, headers={"User-Agent": "pimail-update"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            data = response.read(MAX_MANIFEST_BYTES + 1)
    except (OSError, ValueError) as e:  # URLError, HTTPError, TLS errors are OSErrors
        raise Refused(f"cannot read the update manifest {url}: {e}") from e
    if len(data) > MAX_MANIFEST_BYTES:
        raise Refused(f"{url} is over {MAX_MANIFEST_BYTES} bytes: not an update manifest")
    return data


def verify(data: bytes, keyring: Path = KEYRING, openssl: str = OPENSSL) -> dict:
    """The manifest's JSON content once its signature checks out against `keyring`."""
    if b"-----BEGIN CMS-----" not in data and b"-----BEGIN PKCS7-----" not in data:
        raise Refused("the update manifest is not a signed (CMS) message")
    done = subprocess.run(
        [openssl, "cms", "-verify", "-inform", "PEM", "-CAfile", str(keyring), "-purpose", "any"],
        input=data,
        capture_output=True,
        timeout=60,
    )
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        log.warning("update manifest signature refused: %s", " | ".join(reason[-2:]))
        raise Refused("the update manifest's signature does not verify with this box's key")
    try:
        content = json.loads(done.stdout)
    except ValueError as e:
        raise Refused("the update manifest's content is not JSON") from e
    if not isinstance(content, dict):
        raise Refused("the update manifest's content is not a JSON object")
    return content


def offer(content: dict, manifest_url: str, release: Release) -> Offer:
    """What a verified manifest offers this box; Refused when it is for another board
    or says nothing usable."""
    compatible, version, name = (content.get(k) for k in ("compatible", "version", "bundle"))
    size = content.get("size", 0)
    if not all(isinstance(v, str) and v for v in (compatible, version, name)):
        raise Refused("the update manifest names no compatible, version or bundle")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise Refused("the update manifest's size is not a number of bytes")
    if compatible != release.compatible:
        raise Refused(f"the update manifest is for {compatible}, this box is {release.compatible}")
    try:
        newest, running = Version.parse(version), Version.parse(release.version)
    except ValueError as e:
        raise Refused(f"the update manifest's version {version!r} is not one") from e
    bundle_url = urllib.parse.urljoin(manifest_url, name)
    if urllib.parse.urlsplit(bundle_url).scheme != "https":
        raise Refused(f"the update manifest's bundle is not an https:// URL: {bundle_url!r}")
    return Offer(version, bundle_url, size, newest > running)


def check(
    url: str,
    release: Release,
    keyring: Path = KEYRING,
    context: ssl.SSLContext | None = None,
    timeout: float = 30.0,
    openssl: str = OPENSSL,
) -> Offer:
    """Read, verify and judge the manifest at `url`."""
    found = offer(verify(fetch(url, context, timeout), keyring, openssl), url, release)
    log.info("update check url=%s newest=%s newer=%s", url, found.version, found.newer)
    return found
