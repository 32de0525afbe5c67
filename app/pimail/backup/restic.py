"""Running restic: the repository, its password and credentials, errors in words.

restic does the format, the encryption, deduplication and increments; this
module only starts it. Secrets never go on its command line (which `ps` shows
to every user): the password is a file named by RESTIC_PASSWORD_FILE, the S3
keys are in the environment. restic runs at the lowest CPU and I/O priority
(nice 19, ionice idle) with a soft heap limit (GOMEMLIMIT, Go 1.19+) and small
packs, so a 512 MB board keeps serving mail while it works.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Settings

log = logging.getLogger(__name__)

RESTIC = "restic"
# restic's own exit codes (restic 0.14: 1 fatal, 3 some files unreadable).
EXIT_INCOMPLETE = 3


class BackupError(Exception):
    """A backup, check or restore that failed, with what the user can do about it."""


def backup_dir(data_dir: Path) -> Path:
    """<data>/backup: the password, the SSH key, restic's cache, the last result."""
    return Path(data_dir) / "backup"


def password_file(data_dir: Path) -> Path:
    return backup_dir(data_dir) / "password"


def write_password(data_dir: Path, password: str) -> Path:
    """Store the repository password, readable by its owner only (0600)."""
    if not password or "\n" in password:
        raise BackupError("the backup password must be one non-empty line")
    path = password_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(password + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Target:
    """Where a repository is and how to reach it."""

    repository: str
    data_dir: Path
    password_file: Path
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    memory_limit: int = 160  # MiB
    pack_size: int = 4  # MiB

    @classmethod
    def from_settings(cls, settings: Settings, repository: str | None = None) -> Target:
        b = settings.backup
        repo = (repository if repository is not None else b.repository).strip()
        if not repo:
            raise BackupError(
                "no backup repository: set backup.repository (a path, sftp:... or s3:...)"
            )
        check_repository(repo)
        return cls(
            repository=repo,
            data_dir=Path(settings.data_dir),
            password_file=password_file(settings.data_dir),
            s3_access_key_id=b.s3_access_key_id,
            s3_secret_access_key=b.s3_secret_access_key,
            memory_limit=b.memory_limit,
            pack_size=b.pack_size,
        )

    @property
    def kind(self) -> str:
        if self.repository.startswith("sftp:"):
            return "sftp"
        if self.repository.startswith("s3:"):
            return "s3"
        return "local"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "AWS_"))}
        env.update(
            RESTIC_REPOSITORY=self.repository,
            RESTIC_PASSWORD_FILE=str(self.password_file),
            RESTIC_CACHE_DIR=str(backup_dir(self.data_dir) / "cache"),
            RESTIC_PACK_SIZE=str(self.pack_size),
            GOMEMLIMIT=f"{self.memory_limit}MiB",
            GOGC="50",
            RESTIC_PROGRESS_FPS="0.1",
        )
        if self.kind == "s3":
            env["AWS_ACCESS_KEY_ID"] = self.s3_access_key_id
            env["AWS_SECRET_ACCESS_KEY"] = self.s3_secret_access_key
        return env

    def options(self) -> list[str]:
        """restic options for the repository kind (no secrets among them)."""
        if self.kind != "sftp":
            return []
        return ["-o", f"sftp.command={' '.join(self.ssh_command())}"]

    def ssh_command(self) -> list[str]:
        """ssh for restic's SFTP backend: our own key and known_hosts in
        <data>/backup/ssh, the host key learnt at first use, never a prompt."""
        user_host, port = _sftp_host(self.repository)
        ssh_dir = backup_dir(self.data_dir) / "ssh"
        command = [
            "ssh", "-i", str(ssh_dir / "id_ed25519"),
            "-o", f"UserKnownHostsFile={ssh_dir / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "ServerAliveInterval=30",
        ]  # fmt: skip
        if port:
            command += ["-p", str(port)]
        return [*command, user_host, "-s", "sftp"]


# What a repository may name, checked before restic or ssh see it: it comes from
# the admin page, the CLI, and on a fresh box from the setup wizard's restore page
# (a LAN visitor's form). A host such as "-oProxyCommand=..." would be an option
# to ssh (a command run as pimail), and restic's other backends (rclone:, rest:,
# ...) start programs or reach services pimail does not offer.
_USER_HOST = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9._-]{0,63}@)?[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def check_repository(repository: str) -> None:
    """BackupError unless `repository` is an absolute path, an SFTP location
    with a plain user and host, or an S3 URL; no control characters anywhere."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in repository) or len(repository) > 1024:
        raise BackupError("the repository holds control characters or is too long")
    if repository.startswith("sftp:"):
        _sftp_host(repository)
    elif repository.startswith("s3:"):
        if not repository.startswith(("s3:https://", "s3:http://")) or " " in repository:
            raise BackupError(f"not an S3 repository: {repository!r} (s3:https://host/bucket)")
    elif _SCHEME.match(repository) or not repository.startswith("/"):
        raise BackupError(
            f"not a repository pimail uses: {repository!r} (an absolute path such as a USB "
            "disk's, sftp:user@host:/path or s3:https://host/bucket)"
        )


_SFTP_URL = re.compile(r"^sftp://(?P<host>[^/:]+(?:@[^/:]+)?)(?::(?P<port>\d+))?/")
_SFTP_SHORT = re.compile(r"^sftp:(?P<host>[^/:]+(?:@[^/:]+)?):")


def _sftp_host(repository: str) -> tuple[str, int | None]:
    """'sftp:user@host:/p' -> ('user@host', None); 'sftp://user@host:2222//p' -> (.., 2222)."""
    m = _SFTP_URL.match(repository) or _SFTP_SHORT.match(repository)
    if not m:
        raise BackupError(f"not an SFTP repository: {repository!r} (sftp:user@host:/path)")
    if not _USER_HOST.match(m.group("host")):
        raise BackupError(
            f"not an SFTP user and host: {m.group('host')!r} (letters, digits, '.', '-', '_'; "
            "no leading '-')"
        )
    port = m.groupdict().get("port")
    if port and not 0 < int(port) < 65536:
        raise BackupError(f"not a port: {port}")
    return m.group("host"), int(port) if port else None


def ssh_public_key(data_dir: Path) -> str:
    """The public half of the key restic's SFTP uses (made at first use)."""
    ssh_dir = backup_dir(data_dir) / "ssh"
    key = ssh_dir / "id_ed25519"
    if not key.exists():
        if shutil.which("ssh-keygen") is None:
            raise BackupError("ssh-keygen is not installed: SFTP backups need openssh-client")
        ssh_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pimail-backup", "-f", str(key)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    return key.with_suffix(".pub").read_text().strip()


# restic processes running now, so that a stopping server can end them (stop_all).
_running: set[subprocess.Popen[str]] = set()
_running_lock = threading.Lock()
_stopping = threading.Event()


def stop_all() -> None:
    """The server stops: end the restic runs in flight (SIGTERM: restic removes
    its lock and leaves the repository as it was), and start no more."""
    _stopping.set()
    with _running_lock:
        for proc in _running:
            proc.terminate()


def _low_priority() -> list[str]:
    prefix = []
    if shutil.which("nice"):
        prefix += ["nice", "-n", "19"]
    if shutil.which("ionice"):
        prefix += ["ionice", "-c", "3"]
    return prefix


@dataclass
class Run:
    """One restic run: exit code, stdout (JSON lines with --json), stderr."""

    returncode: int
    stdout: str
    stderr: str
    peak_rss_kib: int = 0

    def json_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stdout.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out


def run(
    target: Target, args: Sequence[str], timeout: float | None = None, cwd: Path | None = None
) -> Run:
    """Run `restic <args>` against the target at low priority; raise BackupError
    with a clear message when restic cannot reach or open the repository."""
    if shutil.which(RESTIC) is None:
        raise BackupError("restic is not installed")
    if not target.password_file.exists():
        raise BackupError(
            f"no backup password: {target.password_file} is missing (pimail backup init)"
        )
    argv = [*_low_priority(), RESTIC, *target.options(), *args]
    log.info("restic command=%s repository_kind=%s", args[0], target.kind)
    with _running_lock:
        if _stopping.is_set():
            raise BackupError("interrupted: pimail is stopping")
        proc = subprocess.Popen(
            argv, env=target.environment(), cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        _running.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as e:
        proc.kill()
        proc.communicate()
        raise BackupError(f"restic {args[0]} took longer than {timeout:.0f} s") from e
    finally:
        with _running_lock:
            _running.discard(proc)
    if _stopping.is_set() and proc.returncode != 0:
        raise BackupError("interrupted: pimail is stopping")
    result = Run(proc.returncode, out, err, _children_peak_rss())
    if result.returncode not in (0, EXIT_INCOMPLETE):
        raise BackupError(explain(result.stderr, target))
    return result


def _children_peak_rss() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def explain(stderr: str, target: Target) -> str:
    """restic's error output, turned into one sentence a user can act on."""
    text = stderr.strip()
    low = text.lower()
    where = target.repository
    if "wrong password" in low or "no key found" in low:
        return f"wrong password for the backup repository {where}"
    if "repository is already locked" in low:
        return f"the repository {where} is locked by another restic (restic unlock, if none runs)"
    if "config file already exists" in low:
        return f"{where} is already a restic repository (use it, or choose another place)"
    if (
        "repository does not exist" in low
        or "unable to open config file" in low
        or "is there a repository at the following location" in low
    ):
        return f"no backup repository at {where} (pimail backup init creates one)"
    if "permission denied (publickey" in low or "host key verification failed" in low:
        return "the SFTP server refused our key: add `pimail backup ssh-key` to its authorized_keys"
    if "unable to start the sftp session" in low:
        # ssh ended before the SFTP session began; restic relays ssh's own reason
        # ("Permission denied (publickey)") only when it read it before ssh exited.
        return (
            "the SFTP server refused the session: is `pimail backup ssh-key` in its "
            f"authorized_keys, and are the user and host right? ({_last_line(text)})"
        )
    if "connection refused" in low or "no route to host" in low or "no such host" in low:
        return f"cannot reach the backup repository {where}: {_last_line(text)}"
    return f"restic failed: {_last_line(text) or 'no message'}"


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
