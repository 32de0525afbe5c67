"""`pimail update FILE|URL`: a bundle is checked before anything is written
(signature, board, version, whole file), with a clear message; a good one
reaches `rauc install`."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from .conftest import COMPATIBLE, RUNNING, Keys, System, _Files, make_bundle

NEWER = "0.1.0+20261208020000"


def test_good_bundle_is_installed(system: System, keys: dict[str, Keys], tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "new.raucb", keys["build"], NEWER)
    done = system.update(str(bundle))
    assert done.returncode == 0, done.stderr
    assert f"installed {NEWER} into the inactive slot" in done.stdout
    assert "installing 100%" in done.stderr
    assert system.installed() == [f"{bundle} {bundle.stat().st_size}"]


@pytest.mark.parametrize(
    ("version", "why"),
    [
        ("0.1.0+20261208000000", "not newer than the running"),  # an older build
        ("0.0.9+20270101000000", "not newer than the running"),  # an older release, later build
        (RUNNING, "not newer than the running"),  # the same: nothing to do
    ],
)
def test_lower_or_same_version_is_refused(
    system: System, keys: dict[str, Keys], tmp_path: Path, version: str, why: str
) -> None:
    bundle = make_bundle(tmp_path / "old.raucb", keys["build"], version)
    done = system.update(str(bundle))
    assert done.returncode == 1
    assert "refused" in done.stderr and why in done.stderr and version in done.stderr
    assert system.installed() == []


def test_version_numbers_compare_as_numbers(
    system: System, keys: dict[str, Keys], tmp_path: Path
) -> None:
    # 0.10 is newer than 0.9 (text order would say otherwise).
    system.release.write_text(f"version=0.9.0+20261208010000\ncompatible={COMPATIBLE}\n")
    bundle = make_bundle(tmp_path / "b.raucb", keys["build"], "0.10.0+20261201000000")
    assert system.update(str(bundle)).returncode == 0
    assert len(system.installed()) == 1


def test_bad_signature_is_refused(system: System, keys: dict[str, Keys], tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "stranger.raucb", keys["stranger"], NEWER)
    done = system.update(str(bundle))
    assert done.returncode == 1
    assert "signature does not verify against this system's key" in done.stderr
    assert system.installed() == []


@pytest.mark.parametrize("where", ["first", "middle", "last-payload", "tree", "signature"])
def test_damaged_bundle_is_refused(
    system: System, keys: dict[str, Keys], tmp_path: Path, where: str
) -> None:
    # One byte changed after signing: in the payload (the root image), in the
    # dm-verity hash tree after it, or in the signature. 3 MB: a two-level tree.
    bundle = make_bundle(tmp_path / "t.raucb", keys["build"], NEWER, size=3_000_000)
    data = bytearray(bundle.read_bytes())
    signature = int.from_bytes(data[-8:], "big")
    tree_end = len(data) - 8 - signature
    payload_end = tree_end - 7 * 4096
    at = {"first": 0, "middle": payload_end // 2, "last-payload": payload_end - 1,
          "tree": payload_end + 5, "signature": tree_end + signature // 2}[where]  # fmt: skip
    data[at] ^= 0xFF
    bundle.write_bytes(bytes(data))
    done = system.update(str(bundle))
    assert done.returncode == 1 and "refused" in done.stderr, done.stderr
    assert "does not match its signature" in done.stderr or "signature" in done.stderr
    assert system.installed() == []


def test_plain_bundle_is_refused(system: System, keys: dict[str, Keys], tmp_path: Path) -> None:
    # Signed by the right key, but in RAUC's plain format (the device cannot
    # read its manifest, and its payload is not checked block by block).
    bundle = make_bundle(tmp_path / "plain.raucb", keys["build"], NEWER, bundle_format="plain")
    done = system.update(str(bundle))
    assert done.returncode == 1 and "not a verity bundle (format plain)" in done.stderr
    assert system.installed() == []


def test_wrong_board_is_refused(system: System, keys: dict[str, Keys], tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "x86.raucb", keys["build"], NEWER, compatible="pimail-amd64")
    done = system.update(str(bundle))
    assert done.returncode == 1
    assert "the bundle is for 'pimail-amd64', this system is 'pimail-arm64'" in done.stderr
    assert system.installed() == []


@pytest.mark.parametrize("keep", ["half", "minus-one", "ten", "empty"])
def test_truncated_bundle_is_refused(
    system: System, keys: dict[str, Keys], tmp_path: Path, keep: str
) -> None:
    bundle = make_bundle(tmp_path / "whole.raucb", keys["build"], NEWER)
    data = bundle.read_bytes()
    cut = {"half": len(data) // 2, "minus-one": len(data) - 1, "ten": 10, "empty": 0}[keep]
    short = tmp_path / "short.raucb"
    short.write_bytes(data[:cut])
    done = system.update(str(short))
    assert done.returncode == 1 and "refused" in done.stderr
    assert "truncated" in done.stderr or "empty" in done.stderr or "signature" in done.stderr
    assert system.installed() == []


def test_not_a_bundle_is_refused(system: System, tmp_path: Path) -> None:
    for name, content in (("random.raucb", os.urandom(300_000)), ("text.raucb", b"hello\n" * 9)):
        path = tmp_path / name
        path.write_bytes(content)
        done = system.update(str(path))
        assert done.returncode == 1 and "refused" in done.stderr, done.stderr
    missing = system.update(str(tmp_path / "nowhere.raucb"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    assert system.installed() == []


def test_no_release_file_is_refused(system: System, keys: dict[str, Keys], tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "new.raucb", keys["build"], NEWER)
    system.release.unlink()
    done = system.update(str(bundle))
    assert done.returncode == 1 and "cannot tell the running system's version" in done.stderr
    assert system.installed() == []


# -- from a URL ---------------------------------------------------------------


def test_url_is_downloaded_to_the_spool_and_installed(
    system: System, keys: dict[str, Keys], tmp_path: Path, https: tuple[str, Path, type[_Files]]
) -> None:
    base, ca_file, handler = https
    bundle = make_bundle(tmp_path / "new.raucb", keys["build"], NEWER)
    handler.files["/pimail.raucb"] = bundle.read_bytes()
    done = system.update(f"{base}/pimail.raucb", env={"SSL_CERT_FILE": str(ca_file)})
    assert done.returncode == 0, done.stderr
    spooled = system.data / "spool" / "update" / "download.raucb"
    assert spooled.read_bytes() == bundle.read_bytes()
    assert system.installed() == [f"{spooled} {bundle.stat().st_size}"]


def test_url_failures_are_refused_and_leave_nothing(
    system: System, keys: dict[str, Keys], tmp_path: Path, https: tuple[str, Path, type[_Files]]
) -> None:
    base, ca_file, handler = https
    env = {"SSL_CERT_FILE": str(ca_file)}
    good = make_bundle(tmp_path / "new.raucb", keys["build"], NEWER).read_bytes()
    handler.files["/short.raucb"] = good[: len(good) // 2]
    handler.lie_length["/short.raucb"] = len(good)  # the connection ends early
    handler.files["/stranger.raucb"] = make_bundle(
        tmp_path / "s.raucb", keys["stranger"], NEWER
    ).read_bytes()
    cases = {
        f"{base}/short.raucb": "",
        f"{base}/missing.raucb": "404",
        f"{base}/stranger.raucb": "signature does not verify",
        f"http://127.0.0.1:{base.rsplit(':', 1)[1]}/new.raucb": "only https:// URLs",
        "ftp://example.org/x.raucb": "only https:// URLs",
    }
    for url, why in cases.items():
        done = system.update(url, env=env)
        assert done.returncode == 1 and "refused" in done.stderr, (url, done.stderr)
        assert why in done.stderr, (url, done.stderr)
        assert not (system.data / "spool" / "update" / "download.raucb.part").exists()
    # A server whose certificate the box does not trust.
    done = system.update(f"{base}/stranger.raucb")
    assert done.returncode == 1 and "cannot fetch" in done.stderr
    assert system.installed() == []


def test_url_that_never_answers_is_refused_in_bounded_time(
    system: System, keys: dict[str, Keys]
) -> None:
    # A listener that accepts and says nothing (a TLS handshake that never comes).
    with socket.socket() as quiet:
        quiet.bind(("127.0.0.1", 0))
        quiet.listen(1)
        port = quiet.getsockname()[1]
        done = system.update(f"https://127.0.0.1:{port}/x.raucb", "--timeout=3")
    assert done.returncode == 1 and "cannot fetch" in done.stderr
    assert system.installed() == []
