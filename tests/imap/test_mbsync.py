"""A real sync tool: mbsync (isync) pulls 500 messages, changes and deletes some
locally, pushes back, and the server ends up in the same state."""

from __future__ import annotations

import imaplib
import re
import smtplib
import subprocess
from pathlib import Path

from conftest import PASSWORD

from .conftest import Mailbox

COUNT = 500


def mbsync(config: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["mbsync", "-c", str(config), "-a"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def local_files(inbox: Path) -> list[Path]:
    return sorted(p for sub in ("cur", "new") for p in (inbox / sub).iterdir())


def test_mbsync_both_ways(mailbox: Mailbox, tmp_path: Path) -> None:
    with smtplib.SMTP("127.0.0.1", mailbox.server.smtp_port) as s:
        for i in range(COUNT):
            s.sendmail(
                "ann@remote.test",
                [mailbox.address],
                f"Subject: sync {i}\r\nMessage-ID: <sync{i}@remote.test>\r\n\r\nbody {i}\r\n",
            )
    local = tmp_path / "local"
    local.mkdir()
    ca = mailbox.server.data_dir / "tls" / "ca" / "ca.pem"
    config = tmp_path / "mbsyncrc"
    config.write_text(
        f"""IMAPAccount pimail
Host localhost
Port {mailbox.server.imaps_port}
User {mailbox.address}
Pass {PASSWORD}
SSLType IMAPS
CertificateFile {ca}

IMAPStore remote
Account pimail

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns INBOX Archive
Create Both
Expunge Both
SyncState *
"""
    )
    mbsync(config)
    inbox = local / "INBOX"
    files = local_files(inbox)
    assert len(files) == COUNT

    # Locally: flag 20 as seen and flagged, delete 30, and write one new message.
    def subject_of(path: Path) -> str:
        return re.search(rb"Subject: (sync \d+)", path.read_bytes()).group(1).decode()

    by_subject = {subject_of(p): p for p in files}
    for i in range(20):
        p = by_subject[f"sync {i}"]
        base, _, _ = p.name.partition(":2,")
        p.rename(inbox / "cur" / f"{base}:2,FS")
    for i in range(100, 130):
        by_subject[f"sync {i}"].unlink()
    (inbox / "new" / "1790000000.local.1.host").write_bytes(
        b"Subject: written locally\r\nMessage-ID: <local@test>\r\n\r\nhello\r\n"
    )
    mbsync(config)

    # The server agrees.
    m = imaplib.IMAP4_SSL(
        "localhost", mailbox.server.imaps_port, ssl_context=mailbox.server.client_tls()
    )
    m.login(mailbox.address, PASSWORD)
    m.select("INBOX")
    _, data = m.search(None, "ALL")
    assert len(data[0].split()) == COUNT - 30 + 1
    _, data = m.search(None, "FLAGGED", "SEEN")
    assert len(data[0].split()) == 20
    _, data = m.search(None, "SUBJECT", '"written locally"')
    assert len(data[0].split()) == 1
    for i in (100, 115, 129):
        _, data = m.search(None, "HEADER", "Message-ID", f"<sync{i}@remote.test>")
        assert data == [b""], i
    # A change on the server comes back down on the next sync.
    m.store("1:5", "+FLAGS", "(\\Answered)")
    m.logout()
    mbsync(config)
    answered = [p for p in local_files(inbox) if "R" in p.name.partition(":2,")[2]]
    assert len(answered) == 5
    # And the server's Maildir matches its index.
    rows = mailbox.server.index_rows(mailbox.address)
    assert sorted(r["filename"] for r in rows) == sorted(
        p.name for p in mailbox.server.messages(mailbox.address)
    )
