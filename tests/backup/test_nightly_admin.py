"""The scheduled backup, the mail to the postmaster when it keeps failing, and
the admin page (settings, create, back up now), over real sockets."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from conftest import PimailServer
from web.browser import Browser, wait_for

from .conftest import REPO_PASSWORD, USERS, deliver

ADMIN_PASSWORD = "admin-password-1"


def _status(server: PimailServer) -> dict:
    try:
        return json.loads((server.data_dir / "backup" / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def test_failing_nights_mail_the_postmaster_once_and_admin_page(
    make_server: object, repo: Path
) -> None:
    missing = repo.with_name("not-mounted")
    server = make_server(sections={"backup": {"repository": str(missing), "every": 0.5}})  # type: ignore[operator]
    server.cli("domain", "add", "example.org")
    server.cli("user", "add", USERS[0], "--admin", input=ADMIN_PASSWORD + "\n")
    server.cli("alias", "add", "postmaster@example.org", USERS[0])
    (server.data_dir / "backup").mkdir(parents=True)
    (server.data_dir / "backup" / "password").write_text(REPO_PASSWORD + "\n")
    server.start()
    # Two failed runs in a row: one notice; more failures (up to a week's) add none.
    wait_for(lambda: _status(server).get("failures_in_a_row", 0) >= 4, timeout=120)
    notices = _notices_for_admin(server)
    assert len(notices) == 1, notices
    text = notices[0].decode()
    assert f"no backup repository at {missing}" in text
    assert "Auto-Submitted: auto-generated" in text

    b = Browser(f"https://127.0.0.1:{server.https_port}", server.client_tls())
    assert b.login(USERS[0], ADMIN_PASSWORD).status == 200
    page = b.get("/admin/backup")
    assert page.status == 200 and "failed" in page.text and "not-mounted" in page.text
    # Every form needs the CSRF token.
    assert b.post("/admin/backup/settings", {"repository": str(repo)}).status == 403
    csrf = page.csrf
    form = {"csrf": csrf, "repository": str(repo), "password": "a new password", "nightly": "on",
            "hour": "4", "keep_daily": "3", "keep_weekly": "2", "s3_access_key_id": ""}  # fmt: skip
    assert b.post("/admin/backup/settings", {**form, "hour": "25"}).status == 400
    saved = b.post("/admin/backup/settings", form)
    assert saved.status == 200 and "Saved." in saved.text
    password = server.data_dir / "backup" / "password"
    assert password.read_text() == "a new password\n" and password.stat().st_mode & 0o777 == 0o600
    assert "a new password" not in saved.text
    assert b.post("/admin/backup/init", {"csrf": csrf}).status == 200
    assert (repo / "config").exists()
    b.post("/admin/backup/now", {"csrf": csrf})
    wait_for(lambda: _status(server).get("ok"), timeout=120)
    assert "worked" in wait_for(lambda: _worked(b), timeout=30)
    stored = server.cli("config", "show").stdout
    assert f'backup.repository = "{repo}"' in stored and "backup.hour = 4" in stored
    server.stop()
    log = server.log.read_text()
    assert REPO_PASSWORD not in log and "a new password" not in log


def _notices_for_admin(server: PimailServer) -> list[bytes]:
    from imaplib import IMAP4_SSL

    m = IMAP4_SSL("localhost", server.imaps_port, ssl_context=server.client_tls())
    m.login(USERS[0], ADMIN_PASSWORD)
    try:
        m.select("INBOX", readonly=True)
        _typ, data = m.search(None, "SUBJECT", '"Backups of mx.test are failing"')
        found = []
        for number in data[0].split():
            _typ, fetched = m.fetch(number, "(BODY.PEEK[])")
            found.append(fetched[0][1])
        return found
    finally:
        m.logout()


def _worked(b: Browser) -> str | None:
    text = b.get("/admin/backup").text
    return text if "<strong>worked</strong>" in text else None


def _restic_children(pid: int) -> list[int]:
    """restic processes whose parent chain reaches `pid` (nice/ionice exec into it)."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if (p / "comm").read_text().strip() != "restic":
                continue
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(p.name))
    return found


def test_stopping_the_server_ends_a_backup_in_flight(make_server: object, repo: Path) -> None:
    server = make_server(sections={"backup": {"every": 0.2}})  # type: ignore[operator]
    server.cli("domain", "add", "example.org")
    server.add_user(USERS[0])
    server.start()
    for i in range(200):
        deliver(server, USERS[0], f"stop {i}", body_lines=500)
    server.stop()
    server.cli("backup", "init", "--repository", str(repo), input=REPO_PASSWORD + "\n")
    server.start()  # the first backup starts at once, with 5 MB to read
    caught = wait_for(lambda: _restic_children(server.pid), timeout=120)
    server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    assert server.proc.wait(60) == 0  # type: ignore[union-attr]
    assert not [pid for pid in caught if Path(f"/proc/{pid}").exists()]
    status = _status(server)
    assert not status["ok"] and status["error"] == "interrupted: pimail is stopping", status
    # restic left the repository as it was (its lock removed), and the next run works.
    server.cli("backup", "check")
    server.cli("backup", "now")
