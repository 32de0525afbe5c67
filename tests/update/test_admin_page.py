"""/admin/update: upload a bundle (streamed to the data spool), see it checked
and installed or refused with the reason; both slots' versions; roll back."""

from __future__ import annotations

import json
import secrets
import uuid
from pathlib import Path

from conftest import PimailServer
from web.browser import Browser, wait_for

from .conftest import COMPATIBLE, RUNNING, Keys, _Files, make_bundle
from .test_manifest import content as manifest_content
from .test_manifest import sign

ADMIN = "admin@example.org"
PASSWORD = "admin-password-1"
NEWER = "0.1.0+20261208020000"
STATUS = {
    "booted": "A",
    "boot_primary": "rootfs.0",
    "slots": [
        {"rootfs.0": {"class": "rootfs", "device": "/dev/vda2", "state": "booted",
                      "bootname": "A", "boot_status": "good",
                      "slot_status": {"bundle": {"version": RUNNING}}}},
        {"rootfs.1": {"class": "rootfs", "device": "/dev/vda3", "state": "inactive",
                      "bootname": "B", "boot_status": "good", "slot_status": {}}},
    ],
}  # fmt: skip


def multipart(csrf: str, name: str, content: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="csrf"\r\n\r\n{csrf}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="bundle"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def site(
    make_server, tmp_path: Path, keys: dict[str, Keys], manifest_url: str = ""
) -> tuple[PimailServer, Path]:
    system = tmp_path / "system"
    system.mkdir()
    (system / "release").write_text(f"version={RUNNING}\ncompatible={COMPATIBLE}\n")
    (system / "status.json").write_text(json.dumps(STATUS))
    log = system / "rauc.log"
    rauc = system / "rauc"
    rauc.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        'case "$1" in\n'
        f'  status) [ "$2" = mark-active ] && exit 0; cat {system}/status.json; exit 0 ;;\n'
        '  install) echo " 50% Installing"; echo "100% Installing done."; exit 0 ;;\n'
        "esac\n"
        'exec rauc "$@"\n'
    )
    rauc.chmod(0o755)
    server: PimailServer = make_server(
        sections={"update": {"keyring": str(keys["build"].cert), "rauc": str(rauc),
                             "release_file": str(system / "release"),
                             "manifest_url": manifest_url}}
    )  # fmt: skip
    server.cli("domain", "add", "example.org")
    server.cli("user", "add", ADMIN, "--admin", input=PASSWORD + "\n")
    server.start()
    return server, log


def installs(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if line.startswith("install")]


def test_upload_check_install_and_roll_back(make_server, tmp_path: Path, keys) -> None:
    server, log = site(make_server, tmp_path, keys)
    b = Browser(f"https://127.0.0.1:{server.https_port}", server.client_tls())
    assert b.login(ADMIN, PASSWORD).status == 200
    page = b.get("/admin/update")
    assert page.status == 200
    assert RUNNING in page.text and "<td>B</td><td>unknown</td>" in page.text
    assert "No update manifest is set" in page.text  # the default: the box asks no one
    csrf = page.csrf
    assert b.post("/admin/update/check", {"csrf": csrf}).status == 400

    # Refused, each with its reason, and nothing installed.
    stranger = make_bundle(tmp_path / "s.raucb", keys["stranger"], NEWER).read_bytes()
    good = make_bundle(tmp_path / "g.raucb", keys["build"], NEWER, size=2_000_000).read_bytes()
    cases = {
        "stranger.raucb": (stranger, "signature does not verify"),
        "old.raucb": (
            make_bundle(tmp_path / "o.raucb", keys["build"], "0.0.1").read_bytes(),
            "not newer than the running",
        ),
        "board.raucb": (
            make_bundle(tmp_path / "b.raucb", keys["build"], NEWER, "pimail-x").read_bytes(),
            "the bundle is for",
        ),
        "short.raucb": (good[: len(good) // 3], "truncated"),
        "junk.raucb": (secrets.token_bytes(5000), "not a bundle"),
    }
    for name, (content, why) in cases.items():
        body, headers = multipart(csrf, name, content)
        assert b.post("/admin/update/upload", body, headers=headers).status == 200
        job = wait_for(lambda: _finished(b), timeout=60)
        assert job["stage"] == "failed", (name, job)
        assert why in job["error"], (name, job)
        assert "Refused" in b.get("/admin/update").text
    assert installs(log) == []

    # Without the CSRF token: 403, nothing kept.
    body, headers = multipart("wrong", "g.raucb", good)
    assert b.post("/admin/update/upload", body, headers=headers).status == 403

    # A good one: checked and installed from the spooled copy, byte for byte.
    body, headers = multipart(csrf, "good.raucb", good)
    assert b.post("/admin/update/upload", body, headers=headers).status == 200
    job = wait_for(lambda: _finished(b), timeout=60)
    assert job["stage"] == "done" and job["version"] == NEWER, job
    spooled = server.data_dir / "spool" / "update" / "upload.raucb"
    assert spooled.read_bytes() == good
    assert installs(log) == [f"install --progress {spooled}"]
    assert f"Installed {NEWER}" in b.get("/admin/update").text

    # Only https:// URLs.
    assert b.post("/admin/update/url", {"csrf": csrf, "url": "http://x/y"}).status == 400
    # Roll back: the other slot active.
    assert b.post("/admin/update/rollback", {"csrf": csrf}).status == 200
    assert "status mark-active other" in log.read_text().splitlines()


def test_not_for_users_who_are_not_admins(make_server, tmp_path: Path, keys) -> None:
    server, log = site(make_server, tmp_path, keys)
    server.add_user("bob@example.org")
    b = Browser(f"https://127.0.0.1:{server.https_port}", server.client_tls())
    from conftest import PASSWORD as USER_PASSWORD

    assert b.login("bob@example.org", USER_PASSWORD).status == 200
    assert b.get("/admin/update").status == 403
    body, headers = multipart(b.get("/").csrf, "x.raucb", b"x")
    assert b.post("/admin/update/upload", body, headers=headers).status == 403
    assert installs(log) == []


def _finished(b: Browser) -> dict | None:
    job = json.loads(b.get("/admin/update/progress").body)
    return None if job["running"] or job["stage"] == "idle" else job


def test_check_for_an_update_offers_the_newer_bundle(
    make_server, tmp_path: Path, keys, https: tuple[str, Path, type[_Files]], monkeypatch
) -> None:
    base, ca_file, handler = https
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # the server trusts the test's HTTPS
    handler.files["/stable.manifest"] = sign(manifest_content(NEWER), keys["build"])
    server, log = site(make_server, tmp_path, keys, manifest_url=f"{base}/stable.manifest")
    b = Browser(f"https://127.0.0.1:{server.https_port}", server.client_tls())
    assert b.login(ADMIN, PASSWORD).status == 200
    page = b.get("/admin/update")
    assert "Check for an update" in page.text and 'id="offer"' not in page.text
    assert b.post("/admin/update/check", {"csrf": "wrong"}).status == 403
    offered = b.post("/admin/update/check", {"csrf": page.csrf})
    assert offered.status == 200 and f"pimail {NEWER} is available" in offered.text
    assert f'value="{base}/pimail-arm64-{NEWER}.raucb"' in offered.text  # the fetch form
    handler.files["/stable.manifest"] = sign(manifest_content(RUNNING), keys["build"])
    same = b.post("/admin/update/check", {"csrf": page.csrf})
    assert f"Up to date: the newest is {RUNNING}" in same.text and 'id="offer"' not in same.text
    handler.files["/stable.manifest"] = sign(manifest_content(NEWER), keys["stranger"])
    forged = b.post("/admin/update/check", {"csrf": page.csrf})
    assert forged.status == 502 and "signature does not verify" in forged.text
    assert installs(log) == []
