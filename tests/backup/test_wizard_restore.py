"""The setup wizard's first page restores a fresh box from a backup, over HTTPS
from the LAN; the server restarts on the restored data (as systemd would start
it again) and IMAP clients find their mail as it was."""

from __future__ import annotations

from pathlib import Path

from conftest import PimailServer
from web.browser import Browser, wait_for

from .conftest import REPO_PASSWORD, USERS, deliver, login, mailbox_state

RESTART_EXIT = 75


def test_wizard_restores_a_fresh_box(make_server: object, repo: Path) -> None:
    old = make_server("old")  # type: ignore[operator]
    old.cli("domain", "add", "example.org")
    for user in USERS:
        old.add_user(user)
    old.start()
    for i in range(8):
        deliver(old, USERS[i % 2], f"wizard {i}")
    m = login(old, USERS[0])
    m.select("INBOX")
    m.uid("STORE", "2", "+FLAGS", r"(\Seen \Flagged)")
    m.logout()
    old.cli("backup", "init", "--repository", str(repo), input=REPO_PASSWORD + "\n")
    old.cli("backup", "now")
    expected = mailbox_state(old, USERS[0])
    old.stop()

    fresh: PimailServer = make_server("fresh")  # type: ignore[operator]
    fresh.start()
    b = Browser(f"https://127.0.0.1:{fresh.https_port}", fresh.client_tls())
    welcome = b.get("/setup")
    assert welcome.status == 200 and 'action="/setup/restore"' in welcome.text
    form = {"csrf": welcome.csrf, "repository": str(repo), "password": REPO_PASSWORD}
    # Without the CSRF token: refused. A wrong password: said so, nothing changes.
    assert b.post("/setup/restore", {**form, "csrf": "x"}).status == 403
    # A repository that would give ssh an option (ProxyCommand: a command run as
    # pimail) or start another restic backend: refused at once, nothing run.
    for hostile in ("sftp:-oProxyCommand=touch${IFS}pwned:/r", "rclone:remote:r", "relative"):
        refused = b.post("/setup/restore", {**form, "repository": hostile})
        assert refused.status == 400 and "not a" in refused.text, refused.text[:300]
    b.post("/setup/restore", {**form, "password": "wrong guess"})
    failed = wait_for(lambda: _state(b, "wrong password"), timeout=60)
    assert "The restore did not work" in failed
    assert fresh.proc is not None and fresh.proc.poll() is None  # still serving
    marker = (fresh.data_dir / ".pimail-data").read_text()  # store/health.py's: this disk's
    started = b.post("/setup/restore", form)
    assert started.status == 200 and "Restoring" in started.text
    assert REPO_PASSWORD not in started.text
    assert fresh.proc.wait(120) == RESTART_EXIT  # stops by itself, for systemd to restart
    # The disk's marker is the fresh box's own (never restored): the data guard
    # did not take the restored tree for "another disk".
    assert (fresh.data_dir / ".pimail-data").read_text() == marker
    assert "storage unavailable" not in fresh.log.read_text()
    assert REPO_PASSWORD not in fresh.log.read_text()
    fresh.start()
    got = mailbox_state(fresh, USERS[0])
    assert {k: (v.uidvalidity, v.messages) for k, v in got.items()} == {
        k: (v.uidvalidity, v.messages) for k, v in expected.items()
    }
    # The certificates are the old box's (its CA, which the devices trust already).
    assert (fresh.data_dir / "tls" / "ca" / "ca.pem").read_bytes() == (
        old.data_dir / "tls" / "ca" / "ca.pem"
    ).read_bytes()
    # Set up now: the wizard is gone.
    b = Browser(f"https://127.0.0.1:{fresh.https_port}", fresh.client_tls())
    assert b.get("/setup").status == 404


def _state(b: Browser, wanted: str) -> str | None:
    text = b.get("/setup/restore").text
    return text if wanted in text else None
