"""Whether ClamAV fits on this board: the decision made once at boot.

clamd holds its whole signature database in memory: over 1 GiB resident with
the official databases (main, daily, bytecode), more while it reloads them
after an update (clamd.conf's ConcurrentDatabaseReload). A board with less
than MIN_MEMORY_KIB of RAM (every Pi but a 4 GB or 8 GB Pi 4, Pi 400 or CM4)
would swap or have pimail killed, so there ClamAV stays off and pimail relies
on its built-in malware screen (filter/malware.py).

On the device `pimail-clamav.service` runs `python3 -m pimail.filter.clamav_fit`
as root before clamd, freshclam and pimail: it writes the decision and its
reason to STATE_DIR/state and, when ClamAV fits, the file STATE_DIR/on, which
the units clamav-daemon and clamav-freshclam are conditioned on
(overlay/etc/systemd/system/clamav-*.service.d/pimail.conf). The device
profile (config.device_defaults) points filter.clamd at CLAMD_ADDRESS when
it is on; the admin spam page shows the reason.

Stdlib only, no I/O but in `read_state`, `write_state` and `main`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# ~3.5 GiB: a 4 GB Pi 4/CM4 reports about 3.7-3.8 GiB of MemTotal (the firmware and
# the GPU keep some); a 2 GB board about 1.8 GiB, too little for clamd's > 1 GiB.
MIN_MEMORY_KIB = 3584 * 1024
STATE_DIR = Path("/run/pimail-clamav")
CLAMD_ADDRESS = "unix:/run/clamav/clamd.ctl"  # Debian's clamd.conf LocalSocket


@dataclass(frozen=True)
class Decision:
    on: bool
    reason: str  # one line for people: "off (memory: 512 MiB, ClamAV needs 3584 MiB)"


def mem_total_kib(meminfo: str) -> int | None:
    """MemTotal from the text of /proc/meminfo ("MemTotal:  3884096 kB"), in KiB."""
    for line in meminfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "MemTotal":
            fields = value.split()
            if fields and fields[0].isdigit():
                return int(fields[0])
    return None


def decide(meminfo: str, minimum_kib: int = MIN_MEMORY_KIB) -> Decision:
    total = mem_total_kib(meminfo)
    need = f"ClamAV needs {minimum_kib // 1024} MiB"
    if total is None:
        return Decision(False, f"off (memory unknown, {need})")
    if total < minimum_kib:
        return Decision(False, f"off (memory: {total // 1024} MiB, {need})")
    return Decision(True, f"on (memory: {total // 1024} MiB, {need})")


def write_state(decision: Decision, state_dir: Path | None = None) -> None:
    state_dir = state_dir or STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "state").write_text(decision.reason + "\n")
    on = state_dir / "on"
    if decision.on:
        on.write_text("")
    else:
        on.unlink(missing_ok=True)


def read_state(state_dir: Path | None = None) -> Decision:
    """The decision of this boot; off ("not decided") where none was made (not
    the device, or pimail-clamav.service has not run)."""
    state_dir = state_dir or STATE_DIR
    try:
        reason = (state_dir / "state").read_text().strip()
    except OSError:
        return Decision(False, "off (no decision: not the device image)")
    return Decision((state_dir / "on").exists() and reason.startswith("on"), reason[:200])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Decide whether ClamAV runs on this board.")
    p.add_argument("--meminfo", type=Path, default=Path("/proc/meminfo"))
    p.add_argument("--state-dir", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        meminfo = args.meminfo.read_text()
    except OSError:
        meminfo = ""
    decision = decide(meminfo)
    write_state(decision, args.state_dir)
    print(f"pimail-clamav: ClamAV {decision.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
