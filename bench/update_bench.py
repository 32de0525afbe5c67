"""Figures of system updates (issue 17): the bundle, its checks, and the
QEMU figures tests/qemu/test_update.py recorded.

Prints: the bundle's size (out/pimail-arm64.raucb, `./build.sh image`), the
time pimail's checks take on it here (`rauc info` + the dm-verity root hash:
what the box does before `rauc install`; a Pi is slower), and, if
test_update.py ran, from test-output/qemu/figures.json: the upload + install
time into the inactive slot and the mail downtime (last SMTP answer before the
restart to the first banner after) measured in QEMU. Never passes or fails on
time. Usage:
    python3 bench/update_bench.py [--bundle out/pimail-arm64.raucb] [--keyring CERT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "app"))
from pimail.update import bundle  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=REPO / "out" / "pimail-arm64.raucb")
    p.add_argument("--keyring", type=Path, default=Path("/var/lib/pimail-build/keys/cert.pem"))
    args = p.parse_args()
    rows: list[tuple[str, str]] = []
    size = args.bundle.stat().st_size
    rows.append(("bundle size", f"{size / 1048576:.1f} MiB ({size} bytes)"))
    start = time.monotonic()
    info = bundle.inspect(args.bundle, args.keyring)
    rows.append(("checks (rauc info + verity), host", f"{time.monotonic() - start:.1f} s"))
    rows.append(("bundle version", info.version))
    figures = REPO / "test-output" / "qemu" / "figures.json"
    found = json.loads(figures.read_text()) if figures.exists() else {}
    for key, label in (
        ("update_upload_and_install_s", "upload + install into B, QEMU (s)"),
        ("update_mail_downtime_s", "mail downtime across the restart, QEMU (s)"),
    ):
        rows.append((label, str(found.get(key, "- (run tests/qemu/test_update.py)"))))
    for label, value in rows:
        print(f"{label:44} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
