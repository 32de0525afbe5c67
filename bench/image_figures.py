"""Figures of the SD image: sizes, and boots under QEMU (512 MB, virt).

Prints: image size (uncompressed and xz), the root squashfs's size, seconds
from QEMU's start to the SMTP banner, MemAvailable in the guest with pimail
running, pimail's RSS in the guest, and where the boot's time went (the
slowest units, and when pimail's own units started and became active), all
from pimail-selftest.service. With --ref COMMIT the image of that commit is
built too (from `git archive`, in a directory of its own; root) and the two
are booted in turn, one column each, in one run: a loaded machine slows both
alike. Never passes or fails on time. Usage:
    python3 bench/image_figures.py [--image out/pimail-arm64.img] [--no-boot]
    python3 bench/image_figures.py --ref main [--boots 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "qemu"))
import pimailvm  # noqa: E402

REF_DIR = Path("/var/cache/pimail-image/ref")


def mb(n: float) -> str:
    return f"{n / 1048576:.1f} MiB"


def build_ref(commit: str) -> Path:
    """The image of `commit`, built from its tree (git archive: no worktree,
    no checkout). The image cache makes a second run cheap."""
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{commit}^{{commit}}"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    tree = REF_DIR / sha[:12]
    image = tree / "out" / "pimail-arm64.img"
    if not image.exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.Popen(["git", "-C", str(REPO), "archive", sha], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)
        archive.wait()
        # Older trees build in the cache's one shared work directory, which a
        # build from another checkout deletes: give this one its own.
        build_sh = tree / "image" / "build.sh"
        own = f'WORK="$CACHE/work-ref-{sha[:12]}"'
        build_sh.write_text(build_sh.read_text().replace('WORK="$CACHE/work"', own))
        print(f"==> building the image of {commit} ({sha[:12]}) in {tree}", flush=True)
        subprocess.run(["bash", str(build_sh)], check=True)
    return image


def boot(image: Path) -> dict[str, str]:
    """One first boot (fresh data disk, a pimail.toml as a user would write
    it): the banner's time, the self-test's report, the power-down's time."""
    with tempfile.TemporaryDirectory(prefix="pimail-figures-") as work:
        m = pimailvm.Machine(workdir=Path(work), image=image, memory_mb=512)
        setup = pimailvm.setup_toml(
            "example.org", "admin@example.org", pimailvm.password_hash("figures-password")
        )
        m.prepare({"pimail.toml": setup, "pimail-selftest": b"on\n"})
        m.start()
        try:
            banner = m.wait_banner(timeout=900)
            report = m.selftest()
            report["banner_s"] = f"{banner:.1f}"
            if report.get("analyze") == "console":  # systemd-analyze, once the boot is over
                report["analyze"] = analyze_lines(m)
            report["powerdown_s"] = f"{m.powerdown():.1f}"
        finally:
            m.kill()
    return report


ANALYZE_PREFIX = "PIMAIL-ANALYZE "


def analyze_lines(m: pimailvm.Machine, timeout: float = 300.0) -> str:
    """systemd-analyze's time, critical chain to pimail.service and blame, as
    the image's self-test prints them once the boot has finished ("" if they
    do not come)."""
    try:
        m.wait_console(ANALYZE_PREFIX + "done=1", timeout)
    except TimeoutError:
        return ""
    lines = []
    for raw in m.console.read_text(errors="replace").splitlines():
        at = raw.find(ANALYZE_PREFIX)
        if at >= 0 and not raw[at:].startswith(ANALYZE_PREFIX + "done="):
            lines.append(raw[at + len(ANALYZE_PREFIX) :].rstrip())
    return "\n".join(lines)


def sizes(img: Path) -> list[tuple[str, str]]:
    xz = img.with_name(img.name + ".xz")
    root = pimailvm.partitions(img)[1]
    rows = [("image, uncompressed", mb(img.stat().st_size))]
    rows.append(("image, xz", mb(xz.stat().st_size) if xz.exists() else "-"))
    rows.append(("root partition (squashfs)", mb(root["size"] * 512)))
    return rows


def figures(reports: list[dict[str, str]]) -> list[tuple[str, str]]:
    def each(key: str, scale: float = 1.0, unit: str = "") -> str:
        values = [float(r[key]) / scale for r in reports if r.get(key)]
        if not values:
            return "-"
        shown = " ".join(f"{v:.1f}" for v in values)
        return (
            f"{statistics.median(values):.1f}{unit} ({shown})"
            if len(values) > 1
            else (f"{values[0]:.1f}{unit}")
        )

    return [
        ("QEMU start -> SMTP banner", each("banner_s", unit=" s")),
        ("guest MemTotal", each("mem_total_kb", 1024, " MiB")),
        ("guest MemAvailable", each("mem_available_kb", 1024, " MiB")),
        ("pimail RSS in the guest", each("pimail_rss_kb", 1024, " MiB")),
        ("clean power-down", each("powerdown_s", unit=" s")),
    ]


def table(title: str, columns: list[str], rows: list[tuple[str, list[str]]]) -> None:
    print(f"\n{title}")
    widths = [max(len(c), *(len(r[1][i]) for r in rows)) for i, c in enumerate(columns)]
    print(f"  {'':32}" + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for name, values in rows:
        cells = "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True))
        print(f"  {name:32}{cells}")


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--image", type=Path, default=pimailvm.DEFAULT_IMAGE)
    p.add_argument("--ref", metavar="COMMIT", help="also build and boot this commit's image")
    p.add_argument("--boots", type=int, default=1, help="first boots of each image (default 1)")
    p.add_argument("--no-boot", action="store_true", help="sizes only")
    args = p.parse_args()

    images = {"this tree": args.image}
    if args.ref:
        images = {f"ref {args.ref}": build_ref(args.ref), **images}
    columns = list(images)
    size_rows = [sizes(img) for img in images.values()]
    table(
        "SD image",
        columns,
        [(name, [rows[i][1] for rows in size_rows]) for i, (name, _) in enumerate(size_rows[0])],
    )
    if args.no_boot:
        return 0

    reports: dict[str, list[dict[str, str]]] = {c: [] for c in columns}
    for n in range(args.boots):
        for column, img in images.items():  # in turn: load hits both alike
            print(f"==> boot {n + 1}/{args.boots}: {column} ({img})", flush=True)
            reports[column].append(boot(img))
    rows = [figures(reports[c]) for c in columns]
    table(
        "First boot under QEMU virt (TCG, -smp 2, cortex-a72, 512 MB), median (each boot)",
        columns,
        [(name, [r[i][1] for r in rows]) for i, (name, _) in enumerate(rows[0])],
    )
    print("\nWhere the time went (guest seconds; the last boot of each):")
    for column in columns:
        last = reports[column][-1]
        print(f"  {column}:")
        for unit in ("pimail-data.service", "pimail-firstboot.service", "pimail.service"):
            print(f"    {unit:28} {last.get('t_' + unit, '- (not in this image)')}")
        print(f"    slowest units: {last.get('boot_units', '- (not in this image)')}")
        if last.get("analyze"):
            print("    systemd-analyze (time, critical-chain pimail.service, blame):")
            for line in last["analyze"].splitlines():
                print(f"      {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
