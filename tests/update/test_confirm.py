"""The mail check after a boot (pimail-update-confirm): SMTP accepts the first
account as a recipient and IMAP greets; a server that is down fails it."""

from __future__ import annotations

import pytest

from conftest import PimailServer
from pimail import config
from pimail.update import confirm


def test_check_passes_on_a_running_server_and_fails_on_a_stopped_one(make_server) -> None:
    server: PimailServer = make_server()
    server.cli("domain", "add", "example.org")
    server.add_user("alice@example.org")
    server.start()
    settings = config.load(str(server.config), None)
    confirm.check(settings)
    assert confirm.main(["--config", str(server.config)]) == 0
    server.stop()
    with pytest.raises(RuntimeError, match=r"SMTP on 127\.0\.0\.1"):
        confirm.check(settings, timeout=5)
