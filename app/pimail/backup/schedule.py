"""The nightly backup, run by the server's own scheduler, and the mail when it fails.

Why the server and not a systemd timer: the backup needs the server's settings
and data directory lock-free reads only, and the server is what can tell the
admin page how the last run went and mail the postmaster; a timer would start
a second Python (tens of MB on a 512 MB board) and need its own way to mail.
The work itself runs on a worker thread (SQLite copies, hard links) and in
restic's own process at low priority, so the event loop keeps serving mail.

When a scheduled backup fails two nights running (job.Status.failures_in_a_row
reaches 2), the postmaster of the first local domain gets a notice; again
after every further week of failures, not every night.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..config import Settings
from . import job, restic

log = logging.getLogger(__name__)

MAIL_AFTER = 2  # failed scheduled runs in a row
MAIL_AGAIN = 7  # ...and then every this many more
MAX_SLEEP = 300.0  # wake now and then: the clock may have been set meanwhile


def seconds_until(hour: int, now: datetime.datetime) -> float:
    """Seconds from `now` (local time) until the next `hour`:00."""
    target = now.replace(hour=hour % 24, minute=0, second=0, microsecond=0)
    if target <= now:
        target += datetime.timedelta(days=1)
    return (target - now).total_seconds()


def wants_mail(status: job.Status) -> bool:
    n = status.failures_in_a_row
    return not status.ok and n >= MAIL_AFTER and (n - MAIL_AFTER) % MAIL_AGAIN == 0


def notice(settings: Settings, status: job.Status, postmaster: str) -> bytes:
    """The failure notice, a small RFC 5322 message from the system."""
    host = settings.hostname
    last_ok = (
        time.strftime("%Y-%m-%d %H:%M", time.localtime(status.last_ok))
        if status.last_ok
        else "never"
    )
    lines = [
        f"From: pimail on {host} <postmaster@{host}>",
        f"To: {postmaster}",
        f"Subject: Backups of {host} are failing ({status.failures_in_a_row} runs in a row)",
        f"Date: {email.utils.formatdate(localtime=True)}",
        f"Message-ID: {email.utils.make_msgid('backup', domain=host)}",
        "Auto-Submitted: auto-generated",  # RFC 3834 5: no vacation replies to this
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"The nightly backup of {host} failed {status.failures_in_a_row} times in a row.",
        "",
        f"The last error: {status.error}",
        f"The last backup that worked: {last_ok}",
        f"Repository: {settings.backup.repository}",
        "",
        "See the admin pages (Backups) or run `pimail backup now` on the box.",
        "",
    ]
    return "\r\n".join(lines).encode("utf-8")


class Nightly:
    """The scheduler's loop: sleep until the hour, back up, tell the postmaster."""

    def __init__(
        self,
        settings: Settings,
        send_notice: Callable[[bytes, str], Awaitable[None]],
        postmaster: Callable[[], str | None],
    ) -> None:
        self.settings = settings
        self.send_notice = send_notice
        self.postmaster = postmaster
        self.running = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.settings.backup.nightly:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="backup")

    def stop(self) -> None:
        """The server stops: no more runs, and a run in flight ends now (its
        worker thread would otherwise hold the exit until restic is done)."""
        if self._task is not None:
            self._task.cancel()
        restic.stop_all()

    async def _loop(self) -> None:
        b = self.settings.backup
        while True:
            if b.every > 0:
                await asyncio.sleep(b.every)
            else:
                await self._sleep_until()
            if b.repository:
                await self.run_once(scheduled=True)

    async def _sleep_until(self) -> None:
        """Until backup.hour (read each time: the admin page may change it)."""
        while True:
            left = seconds_until(self.settings.backup.hour, datetime.datetime.now())
            if left <= MAX_SLEEP:
                await asyncio.sleep(left)
                return
            await asyncio.sleep(MAX_SLEEP)

    async def run_once(self, scheduled: bool = False) -> job.Status | None:
        """One backup on a worker thread; None when one is running already."""
        if self.running:
            return None
        self.running = True
        try:
            loop = asyncio.get_running_loop()
            status = await loop.run_in_executor(None, job.backup_now, self.settings, scheduled)
        finally:
            self.running = False
        if scheduled and wants_mail(status):
            await self._mail(status)
        return status

    async def _mail(self, status: job.Status) -> None:
        to = self.postmaster()
        if not to:
            log.warning("backup failing and no postmaster to tell")
            return
        try:
            await self.send_notice(notice(self.settings, status, to), to)
        except Exception as e:  # a notice that fails must not stop the loop
            log.error("backup failure notice not sent to=<%s> error=%s", to, e)
        else:
            log.info("backup failure notice sent to=<%s> failures=%d", to, status.failures_in_a_row)


def postmaster_of(directory: Any) -> str | None:
    """postmaster@ the first local domain (RFC 5321 4.5.1: it must exist)."""
    domains = directory.domains()
    return f"postmaster@{domains[0]}" if domains else None
