"""What a user is told when a backup or a restore cannot work, and that the
incremental run writes little."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from conftest import PimailServer

from .conftest import REPO_PASSWORD, USERS, deliver


def _box(make_server: object, name: str = "data") -> PimailServer:
    server = make_server(name)  # type: ignore[operator]
    server.cli("domain", "add", "example.org")
    for user in USERS:
        server.add_user(user)
    return server


def _status(server: PimailServer) -> dict:
    return json.loads((server.data_dir / "backup" / "status.json").read_text())


def test_errors_are_clear(make_server: object, repo: Path) -> None:
    box = _box(make_server)
    # No repository configured.
    done = box.cli("backup", "now", check=False)
    assert done.returncode == 1 and "no backup repository: set backup.repository" in done.stderr
    assert _status(box)["failures_in_a_row"] == 1
    # A repository that is not there (the USB disk not mounted): every command says so.
    box.cli("config", "set", "backup.repository", str(repo))
    (box.data_dir / "backup").mkdir(exist_ok=True)
    box.cli("backup", "init", input=REPO_PASSWORD + "\n", check=False)  # makes it...
    os.rename(repo, repo.with_name("elsewhere"))  # ...and the disk goes away
    for args in (("backup", "now"), ("backup", "list"), ("backup", "check")):
        done = box.cli(*args, check=False)
        assert done.returncode == 1, args
        assert f"no backup repository at {repo}" in done.stderr, (args, done.stderr)
    assert _status(box)["failures_in_a_row"] == 2
    assert not (box.data_dir / "backup" / "stage").exists()  # cleaned up
    os.rename(repo.with_name("elsewhere"), repo)
    # init on a repository that exists.
    done = box.cli("backup", "init", check=False)
    assert done.returncode == 1 and "already a restic repository" in done.stderr
    # A wrong password, for a backup and for a restore.
    (box.data_dir / "backup" / "password").write_text("not the password\n")
    done = box.cli("backup", "now", check=False)
    assert done.returncode == 1 and "wrong password for the backup repository" in done.stderr
    assert _status(box)["failures_in_a_row"] == 3
    fresh = make_server("fresh")  # type: ignore[operator]
    done = fresh.cli("restore", str(repo), input="guess\n", check=False)
    assert done.returncode == 1 and "wrong password" in done.stderr
    assert not (fresh.data_dir / "pimail.db").exists()
    done = fresh.cli("restore", str(repo.with_name("nothing")), input="x\n", check=False)
    assert done.returncode == 1 and "no backup repository at" in done.stderr
    # Secrets stay out of the output.
    assert REPO_PASSWORD not in done.stdout + done.stderr
    # A snapshot id that is not one (restic would take "--target=/" as an option).
    done = fresh.cli("restore", str(repo), "--snapshot=--help", input="x\n", check=False)
    assert done.returncode == 1 and "not a snapshot id" in done.stderr


def test_restore_refuses_a_box_in_use(make_server: object, repo: Path) -> None:
    box = _box(make_server)
    box.cli("backup", "init", "--repository", str(repo), input=REPO_PASSWORD + "\n")
    box.cli("backup", "now")
    # A data directory with accounts is never overwritten.
    done = box.cli("restore", str(repo), input=REPO_PASSWORD + "\n", check=False)
    assert done.returncode == 1 and "already holds mail or accounts" in done.stderr
    # One backup at a time: the others are told, and the staging tree is not touched.
    with open(box.data_dir / "backup" / "lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        (box.data_dir / "backup" / "stage").mkdir()
        done = box.cli("backup", "now", check=False)
        assert done.returncode == 1 and "a backup is running already" in done.stderr
        assert (box.data_dir / "backup" / "stage").is_dir()
    # Nor one a running server uses.
    other = make_server("other")  # type: ignore[operator]
    other.start()
    done = other.cli("restore", str(repo), input=REPO_PASSWORD + "\n", check=False)
    assert done.returncode == 1 and "a pimail server is running" in done.stderr
    other.stop()


def test_incremental_backup_writes_little(make_server: object, repo: Path) -> None:
    box = _box(make_server)
    box.start()
    for i in range(150):
        deliver(box, USERS[i % 2], f"bulk {i}", body_lines=300)  # ~15 KB each
    box.cli("backup", "init", "--repository", str(repo), input=REPO_PASSWORD + "\n")
    box.cli("backup", "now")
    first = _status(box)
    deliver(box, USERS[0], "one more", body_lines=300)
    box.cli("backup", "now")
    second = _status(box)
    assert first["files_new"] > 150 and second["files_new"] <= 5, (first, second)
    assert second["files_unmodified"] >= 150
    # restic compresses: 150 similar messages are far smaller than 2 MB in the repository.
    assert second["bytes_added"] < first["bytes_added"] / 4, (first, second)


# Repositories a user (or, on a fresh box, a LAN visitor through the setup
# wizard's restore page) might give that must never reach restic or ssh: an ssh
# option as the SFTP host runs a command (ProxyCommand), restic's other backends
# start programs or reach services pimail does not offer.
HOSTILE = [
    "sftp:-oProxyCommand=touch${IFS}pwned:/repo",
    "sftp://-oProxyCommand=touch${IFS}pwned/repo",
    "sftp:u@-oProxyCommand=touch${IFS}pwned:/repo",
    "sftp:host;touch${IFS}pwned:/repo",
    "sftp://host:99999/repo",
    "rclone:remote:repo",
    "rest:http://127.0.0.1:1/",
    "relative/repo",
    "/repo\nsecond line",
    "s3:ftp://host/bucket",
    "/" + "x" * 2000,
]


@pytest.mark.parametrize("repository", HOSTILE)
def test_hostile_repositories_are_refused_before_restic_runs(
    make_server: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repository: str
) -> None:
    monkeypatch.chdir(tmp_path)  # where a ProxyCommand's `touch pwned` would land
    box = _box(make_server)
    done = box.cli(
        "backup", "init", "--repository", repository, input=REPO_PASSWORD + "\n", check=False
    )
    assert done.returncode == 1, done.stderr
    assert "not a" in done.stderr or "control characters" in done.stderr, done.stderr
    assert not (tmp_path / "pwned").exists()
