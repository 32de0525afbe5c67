"""`pimail update`: the command line of A/B system updates.

pimail update FILE|URL   check a bundle and install it into the inactive slot
pimail update status     the running release and both slots
pimail update check      is there a newer release? (the signed manifest at
                         the setting update.manifest_url; none by default)
pimail update rollback   boot the other slot from the next reboot on
pimail update prepare    (pimail-update-prepare.service, before pimail starts)
                         snapshot or restore the databases (update.snapshot)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .. import config
from . import bundle, install, manifest, snapshot

ACTIONS = ("status", "check", "rollback", "prepare")


def add_parsers(sub: Any) -> None:
    x = sub.add_parser(
        "update",
        help="system update: FILE|URL installs a bundle; status; rollback",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    x.add_argument("target", metavar="FILE|URL|status|check|rollback|prepare")
    # Where the system keeps these (image/build.sh); other paths for tests.
    # Default: the settings' update.keyring, update.release_file, update.rauc.
    x.add_argument("--keyring", type=Path, help=argparse.SUPPRESS)
    x.add_argument("--release", type=Path, help=argparse.SUPPRESS)
    x.add_argument("--rauc", help=argparse.SUPPRESS)
    x.add_argument("--cmdline", type=Path, default=Path("/proc/cmdline"), help=argparse.SUPPRESS)
    x.add_argument("--timeout", type=float, default=60.0, help="seconds a download may stall")
    x.set_defaults(func=cmd_update)


def _progress(stage: str, done: int, total: int) -> None:
    if stage == "download":
        text = f"{done * 100 // total}%" if total else f"{done // 1048576} MiB"
        print(f"\rdownloading {text}   ", end="", file=sys.stderr, flush=True)
    else:
        print(f"\rinstalling {done}%   ", end="", file=sys.stderr, flush=True)


def cmd_update(settings: config.Settings, args: argparse.Namespace) -> int:
    u = settings.update
    args.keyring = args.keyring or Path(u.keyring)
    args.release = args.release or Path(u.release_file)
    args.rauc = args.rauc or u.rauc
    try:
        if args.target == "status":
            return _status(args)
        if args.target == "check":
            return _check(settings, args)
        if args.target == "rollback":
            print(install.rollback(args.rauc) or "the other slot boots next: reboot to use it")
            return 0
        if args.target == "prepare":
            release = bundle.Release.read(args.release)
            done = snapshot.prepare(settings.data_dir, args.cmdline.read_text(), release.version)
            print(f"pimail update prepare: {done}")
            return 0
        release = bundle.Release.read(args.release)
        if "://" in args.target:
            path = install.fetch(args.target, settings.data_dir, _progress, timeout=args.timeout)
            print(file=sys.stderr)
        else:
            path = Path(args.target)
        info = install.install(path, release, args.keyring, args.rauc, _progress)
        print(file=sys.stderr)
        print(f"installed {info.version} into the inactive slot: reboot to start it")
        print("(if it does not pass its check after the reboot, the box returns to this version)")
        return 0
    except bundle.Refused as e:
        print(file=sys.stderr)
        print(f"pimail update: refused: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        print(f"pimail update: {e}", file=sys.stderr)
        return 1


def _check(settings: config.Settings, args: argparse.Namespace) -> int:
    url = settings.update.manifest_url
    if not url:
        print("pimail update: no update.manifest_url is set: nothing to ask", file=sys.stderr)
        return 1
    release = bundle.Release.read(args.release)
    found = manifest.check(url, release, args.keyring, timeout=args.timeout)
    if found.newer:
        print(f"pimail {found.version} is available (running {release.version}):")
        print(f"  pimail update {found.bundle_url}")
    else:
        print(f"up to date: running {release.version}, the newest is {found.version}")
    return 0


def _status(args: argparse.Namespace) -> int:
    release = bundle.Release.read(args.release)
    print(f"running: {release.version} ({release.compatible})")
    for slot in install.slots(args.rauc):
        flags = [slot.state]
        if slot.primary:
            flags.append("boots next")
        if slot.boot_status:
            flags.append(slot.boot_status)
        print(f"slot {slot.name}: {slot.version or 'unknown version'} ({', '.join(flags)})")
    return 0
