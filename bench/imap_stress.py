"""IMAP stress load: pimail beside Dovecot 2.3, the same load in one invocation.

The load is tests/imap/imap_model.py's (the one tests/imap/test_stress.py runs):
N sessions (default 10) of one account on three shared folders (INBOX, Archive,
Work), each drawing random commands for --seconds: APPEND with and without keywords,
FETCH (FLAGS, UID, MODSEQ, ENVELOPE), STORE of flags and keywords (.SILENT and
UNCHANGEDSINCE too), COPY, MOVE, EXPUNGE, UID EXPUNGE, SEARCH, NOOP, IDLE and
reconnects. Every untagged response goes through the protocol model; its findings
are reported for both servers (for Dovecot a sanity check of the model as much as of
Dovecot). Printed per server: logins/s, commands/s, and the model's errors.

Both servers are reached over plaintext IMAP on loopback (imap_setup.sh's Dovecot has
no TLS; the test runs the load over TLS). The folders are emptied first. One account
only, because imap_setup.sh's Dovecot has one user.

Usage (root for the Dovecot side, from the repository):
  bench/classic/imap_setup.sh                     # once: install + configure + start
  .venv/bin/python bench/imap_stress.py           # Dovecot and a fresh pimail
  .venv/bin/python bench/imap_stress.py --no-dovecot --seconds 60 --seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "imap"))

from imap_model import FOLDERS, LoadResult, Session, Shared, compare_views, run_load

import imap_bench

log = logging.getLogger("bench.imap_stress")


async def empty_folders(host: str, port: int, user: str, password: str) -> None:
    s = Session(Shared(), 0, user, password, host, port, None)
    await s.connect()
    for folder in FOLDERS:
        if folder != "INBOX":
            await s.command(f"CREATE {folder}")
        await s.select(folder, False, False)
        if s.view and s.view.uids:
            await s.ok("STORE 1:* +FLAGS.SILENT (\\Deleted)")
            await s.ok("EXPUNGE")
    await s.close()


def load(name: str, port: int, args: argparse.Namespace) -> LoadResult:
    user, password = imap_bench.USER, imap_bench.PASSWORD
    asyncio.run(empty_folders("127.0.0.1", port, user, password))
    result = asyncio.run(
        run_load("127.0.0.1", port, None, [(user, password)], args.seed, args.seconds,
                 args.sessions)
    )  # fmt: skip
    compare_views(result)
    log.info("%s done seconds=%.1f commands=%d", name, result.seconds, result.commands)
    return result


def run_pimail(args: argparse.Namespace) -> LoadResult:
    ports = (imap_bench.free_port(), imap_bench.free_port(), imap_bench.free_port())
    workdir = Path(tempfile.mkdtemp(prefix="pimail-stress-"))
    proc = imap_bench.start_pimail(args.pimail_bin, workdir, ports, 0, args.seed, True)
    try:
        return load("pimail", ports[1], args)
    finally:
        imap_bench.stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def run_dovecot(args: argparse.Namespace) -> LoadResult:
    settings = imap_bench.setup_settings()
    port = int(settings.get("IMAP_PORT", "10143"))
    if not imap_bench.SETUP_SETTINGS.exists():
        raise RuntimeError(f"Dovecot not configured: run {imap_bench.IMAP_SETUP} first")
    subprocess.run(["bash", str(imap_bench.IMAP_SETUP), "start"], check=True, timeout=120)
    return load("dovecot", port, args)


def report(name: str, r: LoadResult | str) -> str:
    if isinstance(r, str):
        return f"{name:8} not measured: {r}"
    return (
        f"{name:8} {r.logins / r.seconds:8.1f} logins/s {r.commands / r.seconds:9.1f} commands/s"
        f"  ({r.commands} commands, {r.logins} logins, {r.checks} responses checked,"
        f" {len(r.errors)} model errors, {r.seconds:.1f} s;"
        f" slowest {r.slowest[0]:.2f} s: {r.slowest[1]})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-dovecot", action="store_true")
    parser.add_argument("--no-pimail", action="store_true")
    parser.add_argument(
        "--pimail-bin", type=Path, default=Path(sys.prefix) / "bin" / "pimail",
        help="the pimail executable (default: this virtualenv's)",
    )  # fmt: skip
    parser.add_argument("--errors", type=int, default=3, help="model errors shown per server")
    parser.add_argument(
        "--rounds", type=int, default=2,
        help="pimail and Dovecot alternately, this many times each (a loaded machine)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    results: list[tuple[str, LoadResult | str]] = []
    for _round in range(args.rounds):
        if not args.no_pimail:
            results.append(("pimail", run_pimail(args)))
        if not args.no_dovecot:
            try:
                if os.geteuid() != 0:
                    raise RuntimeError("the Dovecot side needs root")
                results.append(("dovecot", run_dovecot(args)))
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                results.append(("dovecot", str(e)))
    print(f"IMAP stress: {args.sessions} sessions, {args.seconds:.0f} s, seed {args.seed}")
    for name, r in results:
        print(report(name, r))
        if not isinstance(r, str):
            for error in r.errors[: args.errors]:
                print("    " + error.replace("\n", "\n    ")[:1500])
    return 0


if __name__ == "__main__":
    sys.exit(main())
