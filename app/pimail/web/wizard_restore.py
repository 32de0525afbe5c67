"""The setup wizard's other way: restore this fresh box from a backup.

    POST /setup/restore   repository, password (S3 keys), the setup token if any:
                          starts the restore and answers with a page that follows it
    GET  /setup/restore   how the restore goes (the page reloads itself)

The same guards as the wizard (web/wizard.py): only while setup is not done,
only from the LAN, the setup token when there is one (counted by the login
throttle), the CSRF token on the form. The restore (backup/job.py) runs on a
worker thread while the server goes on; it refuses a data directory with mail
or accounts. When it is done the server stops with RESTART_EXIT: systemd
(pimail.service, Restart=on-failure) starts it again on the restored data; run
by hand, start it again yourself. The password goes to <data>/backup/password
(0600) and nowhere else: not in the page, not in the log.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web as aioweb

from ..backup import job, restic

if TYPE_CHECKING:
    from .wizard import Wizard

log = logging.getLogger(__name__)

RESTART_EXIT = 75  # EX_TEMPFAIL: not a clean stop, so systemd starts pimail again
RESTART_DELAY = 2.0  # seconds for the "done" page to be fetched before the stop


@dataclass
class Progress:
    state: str = "idle"  # idle, running, failed, done
    error: str = ""
    snapshot: str = ""


class RestorePage:
    def __init__(self, wizard: Wizard) -> None:
        self.wizard = wizard
        self.web = wizard.web
        self.settings = wizard.settings
        self.progress = Progress()
        self._task: asyncio.Task[None] | None = None

    def register(self) -> None:
        page = self.web.page
        open_ = self.wizard._open
        page("POST", "/setup/restore", open_(self.start, state=False), login=False)
        page("GET", "/setup/restore", open_(self.show, state=False), login=False)

    async def show(self, request: aioweb.Request, status: int = 200) -> aioweb.Response:
        return self.web.render(
            request, "wizard/restore.html", status=status, progress=self.progress,
            errors=[self.progress.error] if self.progress.state == "failed" else [],
            steps=(), titles={}, current="", wizard=None,
        )  # fmt: skip

    async def start(self, request: aioweb.Request) -> aioweb.StreamResponse:
        form = {k: str(v)[:4096] for k, v in (await request.post()).items()}
        refused = await self.wizard.token_refused(request, form)
        if refused is not None:
            return refused
        if self.progress.state in ("running", "done"):
            return await self.show(request, 409)
        repository = form.get("repository", "").strip()
        password = form.get("password", "")
        if not repository or not password:
            self.progress = Progress("failed", "Give the backup's place and its password.")
            return await self.show(request, 400)
        try:  # a LAN visitor's text, before restic or ssh see it
            restic.check_repository(repository)
        except restic.BackupError as e:
            self.progress = Progress("failed", f"The restore did not work: {e}.")
            return await self.show(request, 400)
        if repository.startswith("s3:"):
            self.settings.backup.s3_access_key_id = form.get("s3_access_key_id", "").strip()
            self.settings.backup.s3_secret_access_key = form.get("s3_secret_access_key", "")
        self.progress = Progress("running")
        self._task = asyncio.get_running_loop().create_task(self._restore(repository, password))
        log.info("setup wizard restore started ip=%s", request.remote)
        return await self.show(request)

    async def _restore(self, repository: str, password: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            snapshot = await loop.run_in_executor(
                None, job.restore, self.settings, repository, password
            )
        except (restic.BackupError, OSError) as e:
            self.progress = Progress("failed", f"The restore did not work: {e}.")
            log.warning("setup wizard restore failed error=%s", e)
            return
        self.progress = Progress("done", snapshot=snapshot)
        log.info("setup wizard restore done snapshot=%s: restarting", snapshot)
        await asyncio.sleep(RESTART_DELAY)
        server = self.web.server
        server.exit_code = RESTART_EXIT
        server.stopping.set()


def register(wizard: Wizard) -> None:
    RestorePage(wizard).register()
