"""Backup test helpers: fill a real server over SMTP and IMAP, read it back over IMAP.

Every test here runs the real restic binary against a repository on a local
path, or on a real sshd / an S3 server on loopback (test_remote.py).
"""

from __future__ import annotations

import imaplib
import re
import shutil
import smtplib
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import PASSWORD, PimailServer

REPO_PASSWORD = "correct horse battery staple"
USERS = ("alice@example.org", "bob@example.org")

if shutil.which("restic") is None:  # build.sh cmd_test installs it
    raise RuntimeError("restic is not installed (apt-get install restic)")


def deliver(server: PimailServer, rcpt: str, subject: str, body_lines: int = 20) -> None:
    body = "".join(f"line {i} of {subject}: some words to fill it\r\n" for i in range(body_lines))
    message = (
        f"From: Ann <ann@remote.test>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\r\n\r\n{body}"
    )
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        s.sendmail("ann@remote.test", [rcpt], message.encode())


def login(server: PimailServer, address: str, password: str = PASSWORD) -> imaplib.IMAP4:
    m = imaplib.IMAP4_SSL("localhost", server.imaps_port, ssl_context=server.client_tls())
    m.login(address, password)
    return m


@dataclass
class Folder:
    uidvalidity: int
    highestmodseq: int
    messages: dict[int, tuple[str, int, bytes]]  # uid -> (flags, modseq, body)


_FETCH = re.compile(rb"UID (\d+)|MODSEQ \((\d+)\)|FLAGS \(([^)]*)\)")


def folder_state(m: imaplib.IMAP4, name: str) -> Folder:
    """What a client caches of a folder: UIDVALIDITY, and per UID flags, MODSEQ, body."""
    typ, _ = m.select(name, readonly=True)
    assert typ == "OK", name
    uidvalidity = int(m.untagged_responses["UIDVALIDITY"][0])
    highest = int(m.untagged_responses.get("HIGHESTMODSEQ", [b"0"])[0])
    typ, data = m.uid("FETCH", "1:*", "(UID FLAGS MODSEQ BODY.PEEK[])")
    assert typ == "OK"
    messages: dict[int, tuple[str, int, bytes]] = {}
    for item in data:
        if not isinstance(item, tuple):
            continue
        uid = modseq = 0
        flags = ""
        for u, ms, fl in _FETCH.findall(item[0]):
            uid = int(u) if u else uid
            modseq = int(ms) if ms else modseq
            flags = fl.decode() if fl or b"FLAGS ()" in item[0] else flags
        # \Recent belongs to a session, not to the message (RFC 3501 2.3.2; gone in 9051).
        kept = sorted(f for f in flags.split() if f != "\\Recent")
        messages[uid] = (" ".join(kept), modseq, item[1])
    return Folder(uidvalidity, highest, messages)


def mailbox_state(server: PimailServer, address: str) -> dict[str, Folder]:
    m = login(server, address)
    try:
        m.enable("CONDSTORE")
        typ, listed = m.list()
        assert typ == "OK"
        names = [line.decode().rsplit(' "/" ', 1)[-1].strip('"') for line in listed]
        return {name: folder_state(m, name) for name in sorted(names)}
    finally:
        m.logout()


def restic_env(repo: Path, password_file: Path) -> dict[str, str]:
    import os

    return {
        **os.environ,
        "RESTIC_REPOSITORY": str(repo),
        "RESTIC_PASSWORD_FILE": str(password_file),
    }


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Where the "second USB disk" is mounted."""
    path = tmp_path / "usb" / "pimail-backup"
    path.parent.mkdir()
    return path
