"""Backup figures (issue 17): first and incremental backup of N messages (time,
bytes written), restore time, peak RSS of pimail and of restic while it runs.

Starts a real server (tests/conftest.py's PimailServer) on loopback, delivers
N messages over SMTP (sizes 2-12 KB, two accounts), sets flags on a tenth over
IMAP, then:

1. `pimail backup now` into a fresh local repository (the first backup);
2. delivers 1% more messages and flags another 1%, and backs up again (incremental);
3. `pimail restore` into an empty data directory.

While each backup runs it samples, every 50 ms, the resident memory of the
server, of the `pimail backup` process (staging: SQLite copies, hard links) and
of restic (VmHWM, its own peak). "Written" is the size of the files a run added
to the repository (prune's repacks included), beside restic's own "data added"
(new chunks before compression). Prints figures; never passes or
fails.

    .venv/bin/python bench/backup_bench.py [--messages 10000] [--keep]
"""

from __future__ import annotations

import argparse
import imaplib
import random
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import PASSWORD, PIMAIL, PimailServer

USERS = ("alice@example.org", "bob@example.org")
REPO_PASSWORD = "bench repository password"


def deliver(server: PimailServer, count: int, start: int, threads: int = 4) -> float:
    def worker(k: int) -> None:
        rng = random.Random(k + start)
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=120) as s:
            for i in range(start + k, start + count, threads):
                words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(300, 1800)))
                body = "\r\n".join(words[j : j + 72] for j in range(0, len(words), 72))
                message = (
                    f"From: Sender {i % 97} <s{i % 97}@remote.test>\r\nTo: {USERS[i % 2]}\r\n"
                    f"Subject: bench message {i}\r\nMessage-ID: <b{i}@remote.test>\r\n\r\n"
                    f"{body}\r\n"
                )
                s.sendmail(f"s{i % 97}@remote.test", [USERS[i % 2]], message.encode())

    started = time.monotonic()
    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return time.monotonic() - started


WORDS = [
    "the", "mail", "server", "backup", "restore", "snapshot", "message", "folder", "index",
    "flags", "seen", "answered", "raspberry", "pi", "card", "disk", "repository", "password",
    "encrypted", "deduplicated", "night", "meeting", "tomorrow", "report", "attached",
    "please", "find", "regards", "thanks", "hello", "world", "invoice",
]  # fmt: skip


def flag(server: PimailServer, every: int, offset: int) -> None:
    m = imaplib.IMAP4_SSL("localhost", server.imaps_port, ssl_context=server.client_tls())
    m.login(USERS[0], PASSWORD)
    m.select("INBOX")
    _typ, data = m.uid("SEARCH", "ALL")
    uids = data[0].split()[offset::every]
    for i in range(0, len(uids), 200):
        m.uid("STORE", b",".join(uids[i : i + 200]).decode(), "+FLAGS", r"(\Seen)")
    m.logout()


def status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def restic_pids() -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "comm").read_text().strip() == "restic":
                    pids.append(int(p.name))
            except OSError:
                continue
    return pids


def measured(server: PimailServer, args: list[str], stdin: str = "") -> dict[str, float]:
    """Run `pimail <args>`, sampling memory; return seconds and peaks (MiB)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [*PIMAIL, "--config", str(server.config), *args], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    peaks = {"server": 0, "job": 0, "restic": 0}
    while proc.poll() is None:
        if server.proc is not None and server.proc.poll() is None:
            peaks["server"] = max(peaks["server"], status_kib(server.pid, "VmRSS"))
        peaks["job"] = max(peaks["job"], status_kib(proc.pid, "VmHWM"))
        for pid in restic_pids():
            peaks["restic"] = max(peaks["restic"], status_kib(pid, "VmHWM"))
        time.sleep(0.05)
    seconds = time.monotonic() - started
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    if proc.returncode != 0:
        raise SystemExit(f"pimail {' '.join(args)} failed: {err}")
    return {"seconds": seconds, **{k: v / 1024 for k, v in peaks.items()}, "out": out}  # type: ignore[dict-item]


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def files(path: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in path.rglob("*") if p.is_file()}


def written(before: dict[str, int], after: dict[str, int]) -> int:
    """Octets of the files a run added to the repository (packs, indexes, snapshot;
    prune's repacked packs too): what it wrote, whatever it deleted."""
    return sum(size for name, size in after.items() if name not in before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pimail-backup-bench-"))
    server = PimailServer(base / "data", {"filter": {"greylist": False}})
    server.cli("domain", "add", "example.org")
    for user in USERS:
        server.add_user(user)
    server.start()
    try:
        took = deliver(server, args.messages, 0)
        print(f"delivered {args.messages} messages in {took:.1f} s")
        flag(server, 10, 0)
        mail_bytes = du(server.data_dir / "mail")
        repo = base / "repo"
        server.cli("backup", "init", "--repository", str(repo), input=REPO_PASSWORD + "\n")
        empty = files(repo)
        first = measured(server, ["backup", "now"])
        after_first = files(repo)
        extra = max(1, args.messages // 100)
        deliver(server, extra, args.messages)
        flag(server, 100, 5)
        second = measured(server, ["backup", "now"])
        after_second = files(repo)
        server.stop()
        fresh = PimailServer(base / "restored")
        restored = measured(fresh, ["restore", str(repo)], REPO_PASSWORD + "\n")
        restored_bytes = du(fresh.data_dir / "mail")
    finally:
        server.stop()
    mib = 1024 * 1024
    grown_first = written(empty, after_first) / mib
    grown_second = written(after_first, after_second) / mib
    size = sum(after_second.values()) / mib
    print(f"mail: {args.messages} messages, {mail_bytes / mib:.1f} MiB in the Maildirs")
    print(f"first backup:       {first['seconds']:6.1f} s, {grown_first:.1f} MiB written")
    print(f"  ({first['out'].strip()})")
    print(f"incremental backup: {second['seconds']:6.1f} s, {grown_second:.2f} MiB written"
          f" ({extra} new messages, {args.messages // 200} flag changes)")  # fmt: skip
    print(f"  ({second['out'].strip()})")
    print(f"repository: {size:.1f} MiB after both")
    print(f"restore:            {restored['seconds']:6.1f} s"
          f" ({restored_bytes / mib:.1f} MiB of mail back)")  # fmt: skip
    for name, r in (("first", first), ("incremental", second)):
        print(f"peak RSS during the {name} backup: server {r['server']:.0f} MiB, pimail backup"
              f" process {r['job']:.0f} MiB, restic {r['restic']:.0f} MiB")  # fmt: skip
    print(f"peak RSS during the restore: pimail restore {restored['job']:.0f} MiB, "
          f"restic {restored['restic']:.0f} MiB")  # fmt: skip
    if not args.keep:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"kept {base}")


if __name__ == "__main__":
    main()
