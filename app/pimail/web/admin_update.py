"""/admin/update: system updates (issue 17; app/pimail/update).

    GET  /admin/update            both slots' versions, the running one, the last try
    GET  /admin/update/progress   the running job as JSON (stage, done, total, error)
    POST /admin/update/upload     a bundle (multipart, streamed to the data spool)
    POST /admin/update/url        fetch a bundle from an HTTPS URL, then install
    POST /admin/update/rollback   boot the other slot from the next restart on
    POST /admin/update/check      read the signed manifest at update.manifest_url:
                                  is there a newer release? (offers its bundle's URL)

One job at a time, run in a thread (download, `rauc info` checks, `rauc install`):
the page shows its progress and reloads itself while it runs. A refused bundle
(signature, board, version, truncated) is refused before anything is written.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web as aioweb

from ..update import bundle, install, manifest

if TYPE_CHECKING:
    from .admin import Admin

log = logging.getLogger(__name__)


@dataclass
class Job:
    stage: str = "idle"  # idle, download, check, install, done, failed
    done: int = 0
    total: int = 0
    version: str = ""
    error: str = ""

    @property
    def running(self) -> bool:
        return self.stage in ("download", "check", "install")


class UpdatePage:
    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.settings = admin.settings
        u = self.settings.update
        self.keyring, self.release_file, self.rauc = Path(u.keyring), Path(u.release_file), u.rauc
        self.job = Job()
        self._lock = threading.Lock()

    def register(self) -> None:
        web = self.admin.web
        web.page("GET", "/admin/update", self.show, admin=True)
        web.page("GET", "/admin/update/progress", self.progress, admin=True)
        web.page("POST", "/admin/update/upload", self.upload, admin=True)
        web.page("POST", "/admin/update/url", self.url, admin=True)
        web.page("POST", "/admin/update/rollback", self.rollback, admin=True)
        web.page("POST", "/admin/update/check", self.check, admin=True)

    async def show(
        self,
        request: aioweb.Request,
        status: int = 200,
        notice: str = "",
        error: str = "",
        offer: manifest.Offer | None = None,
    ) -> aioweb.Response:
        loop = asyncio.get_running_loop()

        def state() -> tuple[str, list[install.Slot], str, str]:
            try:
                running = bundle.Release.read(self.release_file).version
            except bundle.Refused as e:
                running = f"unknown ({e})"
            try:
                slots = install.slots(self.rauc)
                slots_error = ""
            except (bundle.Refused, OSError, ValueError) as e:
                slots, slots_error = [], str(e)
            failed = self.settings.data_dir / "update" / "failed"
            try:
                last_failure = failed.read_text().strip()
            except OSError:
                last_failure = ""
            return running, slots, slots_error, last_failure

        running, slots, slots_error, last_failure = await loop.run_in_executor(None, state)
        return self.admin.render(
            request, "update.html", status=status, notice=notice, error=error, job=self.job,
            running=running, slots=slots, slots_error=slots_error, last_failure=last_failure,
            offer=offer, manifest_url=self.settings.update.manifest_url,
        )  # fmt: skip

    async def progress(self, request: aioweb.Request) -> aioweb.Response:
        return aioweb.json_response({**asdict(self.job), "running": self.job.running})

    def _start(self, name: str, fetch_url: str = "", upload: Path | None = None) -> bool:
        with self._lock:
            if self.job.running:
                return False
            self.job = Job(stage="download" if fetch_url else "check")
        thread = threading.Thread(
            target=self._run, args=(fetch_url, upload), name=f"update-{name}", daemon=True
        )
        thread.start()
        return True

    def _progress(self, stage: str, done: int, total: int) -> None:
        self.job.stage, self.job.done, self.job.total = stage, done, total

    def _run(self, fetch_url: str, upload: Path | None) -> None:
        job = self.job
        try:
            release = bundle.Release.read(self.release_file)
            if fetch_url:
                path = install.fetch(fetch_url, self.settings.data_dir, self._progress)
            else:
                assert upload is not None
                path = upload
            job.stage = "check"
            info = install.install(path, release, self.keyring, self.rauc, self._progress)
            job.version, job.stage = info.version, "done"
            log.info("admin update installed version=%s", info.version)
        except (bundle.Refused, OSError) as e:
            job.stage, job.error = "failed", str(e)
            log.warning("admin update refused error=%s", e)

    async def upload(self, request: aioweb.Request) -> aioweb.Response:
        form = await request.post()
        field = form.get("bundle")
        if not isinstance(field, aioweb.FileField):
            return await self.show(request, 400, error="Choose a bundle file (.raucb) to upload.")
        if self.job.running:
            return await self.show(request, 409, error="An update is running already.")
        target = install.spool_dir(self.settings.data_dir) / "upload.raucb"

        def keep() -> None:
            # The spooled upload is an unlinked file, closed after this request.
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                shutil.copyfileobj(field.file, out, 1024 * 1024)

        try:
            await asyncio.get_running_loop().run_in_executor(None, keep)
        except OSError as e:
            return await self.show(request, 503, error=f"Cannot keep the upload: {e.strerror}.")
        self._start("upload", upload=target)
        log.info("admin update upload by=%s", request["account"].address)
        return await self.show(request, notice="Uploaded: checking and installing.")

    async def url(self, request: aioweb.Request) -> aioweb.Response:
        form = await self.admin._form(request)
        address = form.get("url", "").strip()
        if not address.startswith("https://"):
            return await self.show(request, 400, error="Only https:// URLs are fetched.")
        if not self._start("url", fetch_url=address):
            return await self.show(request, 409, error="An update is running already.")
        log.info("admin update url=%s by=%s", address[:200], request["account"].address)
        return await self.show(request, notice="Fetching the bundle.")

    async def check(self, request: aioweb.Request) -> aioweb.Response:
        url = self.settings.update.manifest_url
        if not url:
            return await self.show(request, 400, error="No update manifest URL is set.")

        def ask() -> manifest.Offer:
            release = bundle.Release.read(self.release_file)
            return manifest.check(url, release, self.keyring)

        try:
            found = await asyncio.get_running_loop().run_in_executor(None, ask)
        except bundle.Refused as e:
            return await self.show(request, 502, error=str(e))
        if not found.newer:
            return await self.show(request, notice=f"Up to date: the newest is {found.version}.")
        return await self.show(request, notice=f"pimail {found.version} is available.", offer=found)

    async def rollback(self, request: aioweb.Request) -> aioweb.Response:
        if self.job.running:
            return await self.show(request, 409, error="An update is running.")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, install.rollback, self.rauc)
        except (bundle.Refused, OSError) as e:
            return await self.show(request, 500, error=str(e))
        log.info("admin update rollback by=%s", request["account"].address)
        return await self.show(
            request, notice="The other slot starts at the next restart of the box."
        )


def register(admin: Admin) -> None:
    UpdatePage(admin).register()
