"""Update bundles for the tests: RAUC's own `rauc bundle`, signed with keys
made here (the build's key and a stranger's), and `pimail update` run as a
user runs it, with a `rauc` that records `install` instead of writing a slot
(`info`, the part that checks, is the real RAUC)."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from testca import TestCA

REPO = Path(__file__).resolve().parents[2]
COMPATIBLE = "pimail-arm64"
RUNNING = "0.1.0+20261208010000"


@dataclass
class Keys:
    cert: Path
    key: Path


def make_keys(directory: Path, name: str) -> Keys:
    directory.mkdir(parents=True, exist_ok=True)
    keys = Keys(directory / f"{name}.pem", directory / f"{name}.key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "30",
         "-subj", f"/O=pimail test/CN={name}", "-keyout", str(keys.key), "-out", str(keys.cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return keys


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Keys]:
    d = tmp_path_factory.mktemp("keys")
    return {"build": make_keys(d, "build"), "stranger": make_keys(d, "stranger")}


def make_bundle(
    path: Path,
    keys: Keys,
    version: str,
    compatible: str = COMPATIBLE,
    size: int = 200_000,
    bundle_format: str = "verity",
) -> Path:
    content = path.with_suffix(".content")
    (content / "boot").mkdir(parents=True)
    (content / "root.sqfs").write_bytes(os.urandom(size))
    (content / "boot" / "vmlinuz").write_bytes(b"kernel")
    (content / "boot" / "initrd.img").write_bytes(b"initrd")
    (content / "manifest.raucm").write_text(
        f"[update]\ncompatible={compatible}\nversion={version}\n\n"
        f"[bundle]\nformat={bundle_format}\n\n[image.rootfs]\nfilename=root.sqfs\n"
    )
    subprocess.run(
        ["rauc", "bundle", f"--cert={keys.cert}", f"--key={keys.key}", str(content), str(path)],
        check=True,
        capture_output=True,
    )
    return path


@dataclass
class System:
    """What `pimail update` sees of the box: the release file, the keyring, a
    data directory, and a `rauc` whose installs land in `installs`."""

    root: Path
    keyring: Path
    release: Path
    data: Path
    rauc: Path
    installs: Path

    def update(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pimail.cli", "--data", str(self.data), "update", *args,
             f"--keyring={self.keyring}", f"--release={self.release}", f"--rauc={self.rauc}"],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, **(env or {})}, cwd=REPO / "app",
        )  # fmt: skip

    def installed(self) -> list[str]:
        return self.installs.read_text().splitlines() if self.installs.exists() else []


@pytest.fixture
def system(tmp_path: Path, keys: dict[str, Keys]) -> System:
    root = tmp_path / "system"
    root.mkdir()
    release = root / "pimail-release"
    release.write_text(f"version={RUNNING}\ncompatible={COMPATIBLE}\n")
    installs = root / "installs"
    rauc = root / "rauc"
    # install: note the bundle and its bytes' size (what RAUC would write), like
    # RAUC print progress; everything else: the real rauc.
    rauc.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = install ]; then\n'
        '    shift; [ "$1" = --progress ] && shift\n'
        f'    echo "$1 $(stat -c %s "$1")" >> {installs}\n'
        '    echo "  0% Installing"; echo "100% Installing done."; exit 0\n'
        "fi\n"
        'exec rauc "$@"\n'
    )
    rauc.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    return System(root, keys["build"].cert, release, data, rauc, installs)


# -- an HTTPS file server (bundles, manifests) ---------------------------------------


class _Files(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    lie_length: ClassVar[dict[str, int]] = {}

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(self.lie_length.get(self.path, len(body))))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https(tmp_path: Path) -> Iterator[tuple[str, Path, type[_Files]]]:
    ca = TestCA(tmp_path / "ca")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    server.socket = ca.server_context("127.0.0.1").wrap_socket(server.socket, server_side=True)
    handler = type("Files", (_Files,), {"files": {}, "lie_length": {}})
    server.RequestHandlerClass = handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", ca.ca_file, handler
    finally:
        server.shutdown()
        server.server_close()
