"""Inbound SMTP delivers into the right Maildir, with the right UID, in the index."""

from __future__ import annotations

import os
import smtplib
import subprocess

import pytest

from conftest import PimailServer


def send(
    server: PimailServer, rcpts: list[str], body: bytes, sender: str = "a@remote.test", **kw: object
) -> dict:
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as s:
        return s.sendmail(sender, rcpts, body, **kw)  # type: ignore[arg-type]


def message(subject: str, body: str = "Hello.\r\n") -> bytes:
    return (
        f"From: Ann <a@remote.test>\r\nTo: alice@example.org\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@remote.test>\r\nDate: Fri, 27 Nov 2026 10:00:00 +0000\r\n\r\n"
        f"{body}"
    ).encode()


def test_ehlo_advertises_extensions(server: PimailServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        for ext in ("size", "8bitmime", "smtputf8", "pipelining", "enhancedstatuscodes"):
            assert s.has_extn(ext), ext
        assert s.esmtp_features["size"] == str(50 * 1024 * 1024)
        code, reply = s.noop()
        assert (code, reply[:5]) == (250, b"2.0.0")


def test_delivery_lands_in_maildir_and_index(server: PimailServer) -> None:
    send(server, ["alice@example.org"], message("first", "Line one\r\n.leading dot\r\n"))
    send(server, ["Alice@Example.ORG"], message("second"))
    files = server.messages("alice@example.org")
    assert [f.parent.name for f in files] == ["new", "new"]
    uids = sorted(int(f.name.split(",U=")[1]) for f in files)
    assert uids == [1, 2]
    rows = server.index_rows("alice@example.org")
    assert [(r["uid"], r["hdr_subject"]) for r in rows] == [(1, "first"), (2, "second")]
    assert {r["filename"] for r in rows} == {f.name for f in files}
    first = next(f for f in files if f.name.endswith(",U=1")).read_bytes()
    # Trace headers on top (RFC 5321 4.4), the body intact, the stuffed dot removed.
    assert first.startswith(b"Return-Path: <a@remote.test>\r\nReceived: from ")
    assert b"by mx.test (pimail) with ESMTP id " in first
    assert b"for <alice@example.org>;" in first
    assert first.endswith(b"\r\n\r\nLine one\r\n.leading dot\r\n")
    assert rows[0]["size"] == len(first)
    assert not server.messages("bob@example.org")


def test_several_recipients_one_file_each(server: PimailServer) -> None:
    send(server, ["alice@example.org", "bob@example.org", "alice+x@example.org"], message("shared"))
    alice, bob = server.messages("alice@example.org"), server.messages("bob@example.org")
    assert len(alice) == 1 and len(bob) == 1  # alice once, though named twice
    assert os.stat(alice[0]).st_ino == os.stat(bob[0]).st_ino  # a hard link, one copy on disk
    assert b"\tfor <" not in alice[0].read_bytes()  # 'for' only with a single recipient


def test_aliases_catch_all_and_plus_addressing(server: PimailServer) -> None:
    server.cli("alias", "add", "team@example.org", "alice@example.org", "bob@example.org")
    server.cli("alias", "add", "postmaster@example.org", "alice@example.org")
    send(server, ["team@example.org"], message("to-team"))
    send(server, ["postmaster@example.org"], message("to-postmaster"))
    send(server, ["bob+lists@example.org"], message("plus"))
    subjects = {r["hdr_subject"] for r in server.index_rows("alice@example.org")}
    assert subjects == {"to-team", "to-postmaster"}
    subjects = {r["hdr_subject"] for r in server.index_rows("bob@example.org")}
    assert subjects == {"to-team", "plus"}
    # No catch-all yet: an unknown user is refused with 550 5.1.1.
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(server, ["nobody@example.org"], message("lost"))
    code, text = refused.value.recipients["nobody@example.org"]
    assert code == 550 and text.startswith(b"5.1.1")
    server.cli("alias", "add", "@example.org", "bob@example.org")
    send(server, ["nobody@example.org"], message("caught"))
    assert "caught" in {r["hdr_subject"] for r in server.index_rows("bob@example.org")}


def test_user_added_while_running_receives_at_once(server: PimailServer) -> None:
    server.add_user("carol@example.org")
    send(server, ["carol@example.org"], message("welcome"))
    assert [r["hdr_subject"] for r in server.index_rows("carol@example.org")] == ["welcome"]
    # Standard folders exist with the account.
    for folder in (".Drafts", ".Sent", ".Junk", ".Trash", ".Archive"):
        assert (server.maildir("carol@example.org") / folder / "cur").is_dir()


def test_smtputf8_and_8bit(server: PimailServer) -> None:
    server.add_user("jörg@example.org")
    body = "From: jürgen@remote.test\r\nSubject: Grüße\r\n\r\nÄpfel und Öl\r\n".encode()
    send(
        server,
        ["jörg@example.org"],
        body,
        sender="jürgen@remote.test",
        mail_options=["SMTPUTF8", "BODY=8BITMIME"],
    )
    [row] = server.index_rows("jörg@example.org")
    assert row["hdr_subject"] == "Grüße"
    data = server.messages("jörg@example.org")[0].read_bytes()
    assert "Äpfel und Öl".encode() in data and b"with UTF8SMTP id" in data


def test_null_sender_accepted(server: PimailServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as s:
        s.ehlo("bounce.test")
        assert s.docmd("MAIL FROM:<>")[0] == 250
        assert s.docmd("RCPT TO:<alice@example.org>")[0] == 250
        code, _ = s.data(message("bounce"))
        assert code == 250
    assert server.messages("alice@example.org")[0].read_bytes().startswith(b"Return-Path: <>")


def test_pipelined_transaction(server: PimailServer) -> None:
    """RFC 2920: a client may send MAIL, RCPT, RCPT, DATA in one go."""
    import socket

    with socket.create_connection(("127.0.0.1", server.smtp_port)) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO c.test\r\n")
        while f.readline()[3:4] == b"-":
            pass
        s.sendall(
            b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.org>\r\n"
            b"RCPT TO:<nobody@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
        )
        replies = [f.readline()[:9] for _ in range(5)]
        assert replies == [b"250 2.1.0", b"250 2.1.5", b"550 5.1.1", b"250 2.1.5", b"354 End d"]
        s.sendall(message("pipelined") + b".\r\nQUIT\r\n")
        assert f.readline().startswith(b"250 2.0.0")
        assert f.readline().startswith(b"221 2.0.0")
    assert len(server.messages("bob@example.org")) == 1


def test_swaks_delivers(server: PimailServer) -> None:
    result = subprocess.run(
        [
            "swaks",
            "--server",
            "127.0.0.1",
            "--port",
            str(server.smtp_port),
            "--from",
            "sender@remote.test",
            "--to",
            "alice@example.org",
            "--header",
            "Subject: from swaks",
            "--body",
            "sent by swaks",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  250 2.0.0 Ok: delivered as" in result.stdout
    [row] = server.index_rows("alice@example.org")
    assert row["hdr_subject"] == "from swaks"
