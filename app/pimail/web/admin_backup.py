"""/admin/backup: the last backup's result, the settings, "back up now".

    GET  /admin/backup            the last result (backup/status.json), the settings
    POST /admin/backup/settings   repository, password, schedule, history, S3 keys
    POST /admin/backup/init       create the repository (restic init)
    POST /admin/backup/now        start a backup (it runs on; the page shows it running)

Settings go to pimail.db through admin_ops.store_setting, as `pimail config
set` does, and take effect at once for the nightly run. The password and the
S3 secret are never shown back: an empty field keeps what is stored. Every
form carries the CSRF token (web/server.py checks it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web as aioweb

from .. import admin_ops, db
from ..backup import job, restic

if TYPE_CHECKING:
    from .admin import Admin

log = logging.getLogger(__name__)

FIELDS = {  # form field -> (setting, type)
    "repository": ("backup.repository", str),
    "hour": ("backup.hour", int),
    "keep_daily": ("backup.keep_daily", int),
    "keep_weekly": ("backup.keep_weekly", int),
    "s3_access_key_id": ("backup.s3_access_key_id", str),
}


class BackupPage:
    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.settings = admin.settings
        self.server = admin.server
        self._task: asyncio.Task[Any] | None = None

    def register(self) -> None:
        web = self.admin.web
        web.page("GET", "/admin/backup", self.show, admin=True)
        web.page("POST", "/admin/backup/settings", self.save, admin=True)
        web.page("POST", "/admin/backup/init", self.init, admin=True)
        web.page("POST", "/admin/backup/now", self.now, admin=True)

    @property
    def running(self) -> bool:
        backups = getattr(self.server, "backups", None)
        return bool(backups is not None and backups.running)

    async def show(
        self, request: aioweb.Request, status: int = 200, notice: str = "", error: str = ""
    ) -> aioweb.Response:
        loop = asyncio.get_running_loop()
        last = await loop.run_in_executor(None, job.read_status, self.settings.data_dir)
        b = self.settings.backup
        ssh_key = ""
        if b.repository.startswith("sftp:"):
            try:
                ssh_key = await loop.run_in_executor(
                    None, restic.ssh_public_key, self.settings.data_dir
                )
            except (restic.BackupError, OSError) as e:
                error = error or str(e)
        return self.admin.render(
            request, "backup.html", status=status, notice=notice, error=error, last=last,
            backup=b, running=self.running, ssh_key=ssh_key,
            has_password=restic.password_file(self.settings.data_dir).exists(),
            when=_when,
        )  # fmt: skip

    async def save(self, request: aioweb.Request) -> aioweb.Response:
        form = await self.admin._form(request)
        values: dict[str, Any] = {}
        try:
            for name, (key, kind) in FIELDS.items():
                raw = form.get(name, "").strip()
                values[key] = kind(raw) if raw or kind is str else None
            values["backup.nightly"] = form.get("nightly") == "on"
            if form.get("s3_secret_access_key"):
                values["backup.s3_secret_access_key"] = form["s3_secret_access_key"]
            if not 0 <= (values["backup.hour"] or 0) <= 23:
                raise ValueError("the hour is 0 to 23")
            if (values["backup.keep_daily"] or 0) < 1 or (values["backup.keep_weekly"] or 0) < 0:
                raise ValueError("keep at least one daily snapshot")
        except ValueError as e:
            return await self.show(request, 400, error=f"Not saved: {e}.")
        values = {k: v for k, v in values.items() if v is not None}

        def store() -> None:
            con = db.open_main(self.settings.db_path)
            try:
                for key, value in values.items():
                    admin_ops.store_setting(con, key, value)
            finally:
                con.close()
            if form.get("password"):
                restic.write_password(self.settings.data_dir, form["password"])

        try:
            await asyncio.get_running_loop().run_in_executor(None, store)
        except (ValueError, restic.BackupError) as e:
            return await self.show(request, 400, error=f"Not saved: {e}.")
        for key, value in values.items():  # the nightly run reads these: at once
            setattr(self.settings.backup, key.split(".", 1)[1], value)
        log.info("admin backup settings saved by=%s", request["account"].address)
        return await self.show(request, notice="Saved.")

    async def init(self, request: aioweb.Request) -> aioweb.Response:
        loop = asyncio.get_running_loop()
        try:
            where = await loop.run_in_executor(None, job.init, self.settings, None)
        except restic.BackupError as e:
            return await self.show(request, 400, error=str(e))
        return await self.show(request, notice=f"Repository created: {where}.")

    async def now(self, request: aioweb.Request) -> aioweb.Response:
        backups = getattr(self.server, "backups", None)
        if backups is None or self.running:
            return await self.show(request, 409, error="A backup is running already.")
        if not self.settings.backup.repository:
            return await self.show(request, 400, error="Set a repository first.")
        self._task = asyncio.get_running_loop().create_task(backups.run_once())
        await asyncio.sleep(0)  # let it mark itself running
        log.info("admin backup started by=%s", request["account"].address)
        return await self.show(request, notice="Backup started: reload this page to follow it.")


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "never"


def register(admin: Admin) -> None:
    BackupPage(admin).register()
