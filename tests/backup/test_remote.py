"""Remote repositories: SFTP against our own sshd on loopback (Debian's
openssh-server, a temporary host key, an authorized key, no system
configuration touched) and S3 against moto's server on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PimailServer, free_port

from .conftest import REPO_PASSWORD, USERS, deliver, mailbox_state

SSHD = "/usr/sbin/sshd"


def _wait_listening(port: int, greeting: bytes = b"", timeout: float = 30.0) -> None:
    """Until something on the port accepts (and, if given, greets with `greeting`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(5)
                if not greeting or s.recv(100).startswith(greeting):
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on port {port}")


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An sshd on a free loopback port; yields (port, authorized_keys)."""
    if not Path(SSHD).exists():  # build.sh cmd_test installs it
        raise RuntimeError("openssh-server is not installed")
    d = tmp_path / "sshd"
    d.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host")],
                   check=True, timeout=60)  # fmt: skip
    keys = d / "authorized_keys"
    keys.touch()
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\n"
        f"AuthorizedKeysFile {keys}\nPidFile none\nUsePAM no\nStrictModes no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                            stderr=open(d / "log", "wb"))  # fmt: skip  # noqa: SIM115
    try:
        _wait_listening(port, b"SSH-")
        yield port, keys
    finally:
        proc.terminate()
        proc.wait(10)


def _box(make_server: object, name: str) -> PimailServer:
    server = make_server(name)  # type: ignore[operator]
    server.cli("domain", "add", "example.org")
    for user in USERS:
        server.add_user(user)
    return server


def _round_trip(make_server: object, repository: str, setup: dict, restore_args: list[str],
                restore_input: str) -> None:  # fmt: skip
    old = _box(make_server, "old")
    for key, value in setup.items():
        old.cli("config", "set", key, "-", input=value + "\n")
    old.start()
    for i in range(6):
        deliver(old, USERS[i % 2], f"remote {i}")
    old.cli("backup", "init", "--repository", repository, input=REPO_PASSWORD + "\n")
    old.cli("backup", "now")
    assert old.cli("backup", "check").stdout.strip() == "no errors were found"
    assert "-- 1 snapshots" in old.cli("backup", "list").stdout
    expected = mailbox_state(old, USERS[0])
    old.stop()
    new = make_server("new")  # type: ignore[operator]
    new.cli("restore", repository, *restore_args, input=restore_input)
    new.start()
    got = mailbox_state(new, USERS[0])
    assert {k: (v.uidvalidity, v.messages) for k, v in got.items()} == {
        k: (v.uidvalidity, v.messages) for k, v in expected.items()
    }


def test_sftp(make_server: object, sshd: tuple[int, Path], tmp_path: Path) -> None:
    port, authorized = sshd
    user = (
        os.environ.get("USER")
        or subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    )
    repository = f"sftp://{user}@127.0.0.1:{port}/{tmp_path}/sftp-repo"

    def authorize(server: PimailServer) -> None:
        key = server.cli("backup", "ssh-key").stdout.strip()
        assert key.startswith("ssh-ed25519 ")
        with open(authorized, "a") as f:
            f.write(key + "\n")

    # A key the server does not know: a clear error.
    stranger = _box(make_server, "stranger")
    stranger.cli("backup", "ssh-key")
    done = stranger.cli("backup", "init", "--repository", repository,
                        input=REPO_PASSWORD + "\n", check=False)  # fmt: skip
    # restic relays ssh's "Permission denied (publickey)" only when it read it in time.
    assert done.returncode == 1 and "the SFTP server refused" in done.stderr, done.stderr

    def make(name: str) -> PimailServer:  # every box's key is authorized
        server = make_server(name)  # type: ignore[operator]
        authorize(server)
        return server

    _round_trip(make, repository, {}, [], REPO_PASSWORD + "\n")
    assert (tmp_path / "sftp-repo" / "config").exists()


def test_s3(make_server: object, tmp_path: Path) -> None:
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    assert moto, "moto[server] is in the test extras"
    port = free_port()
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_listening(port)
        repository = f"s3:http://127.0.0.1:{port}/pimail-backups/box"
        setup = {"backup.s3_access_key_id": "AKIDTEST", "backup.s3_secret_access_key": "s3cret"}
        _round_trip(make_server, repository, setup,
                    ["--s3-access-key-id", "AKIDTEST"], f"{REPO_PASSWORD}\ns3cret\n")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(10)
