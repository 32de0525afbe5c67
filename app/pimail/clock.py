"""Whether the wall clock can be trusted yet (a Raspberry Pi has no battery clock).

At boot a Pi's clock starts wherever systemd puts it: the last time
systemd-timesyncd saved (its clock file, kept on /data), or else the image's
build date (/usr/lib/clock-epoch, which systemd moves an earlier clock up to).
Certificates made then carry the wrong dates, so:

- synchronized(): the kernel's view (adjtimex(2): an NTP client such as
  systemd-timesyncd clears STA_UNSYNC once it has set the clock);
- set_from_epoch(): the clock is no later than the build date plus the time
  since boot, i.e. nothing better than the epoch has set it at this boot;
- wait_for_sync(): both of these, bounded, before the first CA is made.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

CLOCK_EPOCH = Path("/usr/lib/clock-epoch")
# adjtimex(2): the clock state returned, and the status bit an NTP client clears.
TIME_ERROR = 5
STA_UNSYNC = 0x0040
MAXERROR_UNSYNC = 16_000_000  # microseconds
# struct timex is 208 bytes on 64-bit Linux (and less on 32-bit); a larger zeroed
# buffer with modes = 0 asks for nothing to change.
_TIMEX_SIZE = 256
# `int status` follows modes, offset, freq, maxerror, esterror: its offset by sizeof(long).
_STATUS_OFFSET = {8: 40, 4: 20}
# Some slack for the time between the kernel's start and systemd's clock setting.
EPOCH_SLACK = 120.0


def synchronized() -> bool | None:
    """True when the kernel's clock is synchronized (an NTP client set it), False
    when not, None when it cannot be told (not Linux, adjtimex refused)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(_TIMEX_SIZE)  # modes = 0: read only
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    long_size = ctypes.sizeof(ctypes.c_long)
    offset = _STATUS_OFFSET.get(long_size)
    if offset is not None:
        status = int.from_bytes(buf.raw[offset : offset + 4], "little", signed=True)
        # maxerror, the third long after modes: systemd's rule (timedatectl's
        # NTPSynchronized) counts 16 s or more as not synchronized.
        at = long_size * 3
        maxerror = int.from_bytes(buf.raw[at : at + long_size], "little", signed=True)
        if status & STA_UNSYNC or maxerror >= MAXERROR_UNSYNC:
            return False
    return state != TIME_ERROR


def uptime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def set_from_epoch(epoch_file: Path = CLOCK_EPOCH, now: float | None = None) -> bool:
    """Whether the wall clock is no later than the image's build date plus the
    time since boot: nothing but systemd's epoch rule has set it at this boot."""
    try:
        epoch = os.stat(epoch_file).st_mtime
    except OSError:
        return False
    now = time.time() if now is None else now
    return now <= epoch + uptime() + EPOCH_SLACK


def wait_for_sync(limit: float, epoch_file: Path = CLOCK_EPOCH) -> str:
    """Before the first CA is made: wait up to `limit` seconds for network time
    when the clock is only the build date. Returns what was found (for the log):
    "synchronized", "trusted" (not synchronized, but later than the epoch),
    "unknown", or "timeout"."""
    state = synchronized()
    if state:
        return "synchronized"
    if state is None:
        return "unknown"
    if limit <= 0 or not set_from_epoch(epoch_file):
        return "trusted"
    log.warning("clock not set yet (build date): waiting for network time seconds=%d", limit)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(1.0)
        if synchronized():
            log.info("clock synchronized")
            return "synchronized"
    log.warning("no network time after seconds=%d: certificates are reissued once it comes", limit)
    return "timeout"
