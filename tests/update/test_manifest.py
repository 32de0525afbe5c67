"""`pimail update check` and the admin page's "Check for an update": the signed
manifest at update.manifest_url (app/pimail/update/manifest.py), read over real
HTTPS and checked with the real openssl against keys made here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pimail.update import bundle, manifest

from .conftest import COMPATIBLE, RUNNING, Keys, System, _Files
from .test_bundle import NEWER

OLDER = "0.1.0+20261201000000"


def sign(content: bytes, keys: Keys) -> bytes:
    """A manifest as image/build.sh signs one (openssl cms -sign, PEM)."""
    return subprocess.run(
        ["openssl", "cms", "-sign", "-binary", "-nodetach", "-md", "sha256",
         "-signer", str(keys.cert), "-inkey", str(keys.key), "-outform", "PEM"],
        input=content, capture_output=True, check=True,
    ).stdout  # fmt: skip


def content(version: str = NEWER, **fields: object) -> bytes:
    body = {
        "compatible": COMPATIBLE,
        "version": version,
        "bundle": f"pimail-arm64-{version}.raucb",
        "size": 158_000_000,
        **fields,
    }
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def check(system: System, url: str, ca_file: Path | None = None) -> subprocess.CompletedProcess:
    """`pimail update check` with update.manifest_url set to `url` (as an admin sets it)."""
    setting = subprocess.run(
        [sys.executable, "-m", "pimail.cli", "--data", str(system.data),
         "config", "set", "update.manifest_url", json.dumps(url)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert setting.returncode == 0, setting.stderr
    return system.update("check", env={"SSL_CERT_FILE": str(ca_file)} if ca_file else None)


def test_a_newer_release_is_offered_with_its_bundle_url(
    system: System, keys: dict[str, Keys], https: tuple[str, Path, type[_Files]]
) -> None:
    base, ca_file, handler = https
    handler.files["/releases/pimail-arm64.manifest"] = sign(content(), keys["build"])
    done = check(system, f"{base}/releases/pimail-arm64.manifest", ca_file)
    assert done.returncode == 0, done.stderr
    assert f"pimail {NEWER} is available (running {RUNNING})" in done.stdout
    # The bundle's name is taken relative to the manifest's own URL.
    assert f"pimail update {base}/releases/pimail-arm64-{NEWER}.raucb" in done.stdout
    # The same or an older release: up to date, nothing offered.
    for version in (RUNNING, OLDER):
        handler.files["/releases/pimail-arm64.manifest"] = sign(content(version), keys["build"])
        done = check(system, f"{base}/releases/pimail-arm64.manifest", ca_file)
        assert done.returncode == 0, done.stderr
        assert f"up to date: running {RUNNING}, the newest is {version}" in done.stdout
    assert system.installed() == []


def test_no_manifest_url_asks_no_one(system: System) -> None:
    done = system.update("check")
    assert done.returncode == 1 and "no update.manifest_url is set" in done.stderr


def test_bad_manifests_are_refused(
    system: System, keys: dict[str, Keys], https: tuple[str, Path, type[_Files]]
) -> None:
    base, ca_file, handler = https
    build = keys["build"]
    cases = {
        "stranger": (sign(content(), keys["stranger"]), "signature does not verify"),
        "unsigned": (content(), "not a signed (CMS) message"),
        "board": (sign(content(compatible="pimail-riscv"), build), "is for pimail-riscv"),
        "plain-http": (
            sign(content(bundle="http://evil.test/x.raucb"), build),
            "not an https:// URL",
        ),
        "no-version": (sign(content(version=None), build), "names no compatible, version"),
        "bad-size": (sign(content(size="big"), build), "size is not a number"),
        "not-json": (sign(b"version=9\n", build), "not JSON"),
        "list": (sign(b"[1, 2]", build), "not a JSON object"),
        "huge": (b"-----BEGIN CMS-----\n" + b"A" * (70 * 1024), "not an update manifest"),
    }
    for name, (body, why) in cases.items():
        handler.files[f"/{name}"] = body
        done = check(system, f"{base}/{name}", ca_file)
        assert done.returncode == 1 and "refused" in done.stderr, (name, done.stderr)
        assert why in done.stderr, (name, done.stderr)
    # Over plain HTTP, or missing: refused the same way.
    for url, why in (
        (f"http://127.0.0.1:{base.rsplit(':', 1)[1]}/x", "https:// only"),
        (f"{base}/missing", "404"),
    ):
        done = check(system, url, ca_file)
        assert done.returncode == 1 and why in done.stderr, (url, done.stderr)
    assert system.installed() == []


def test_offer_rules() -> None:
    release = bundle.Release(RUNNING, COMPATIBLE)
    url = "https://updates.example/pimail/stable.manifest"
    found = manifest.offer(json.loads(content()), url, release)
    assert found == manifest.Offer(
        NEWER, f"https://updates.example/pimail/pimail-arm64-{NEWER}.raucb", 158_000_000, True
    )
    absolute = json.loads(content(bundle="https://cdn.example/b.raucb"))
    assert manifest.offer(absolute, url, release).bundle_url == "https://cdn.example/b.raucb"
    # "0.10" is newer than "0.9" (numbers, not text).
    nine = bundle.Release("0.9.0", COMPATIBLE)
    assert manifest.offer(json.loads(content("0.10.0")), url, nine).newer
