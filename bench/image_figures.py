"""Figures of the SD image: sizes, and one boot under QEMU (512 MB, virt).

Prints: image size (uncompressed and xz), the root squashfs's size, seconds
from QEMU's start to the SMTP banner, MemAvailable in the guest with pimail
running, and pimail's RSS in the guest (from pimail-selftest.service).
Never passes or fails on time. Usage:
    python3 bench/image_figures.py [--image out/pimail-arm64.img] [--no-boot]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "qemu"))
import pimailvm  # noqa: E402


def mb(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", type=Path, default=pimailvm.DEFAULT_IMAGE)
    p.add_argument("--no-boot", action="store_true", help="sizes only")
    args = p.parse_args()

    img = args.image
    xz = img.with_name(img.name + ".xz")
    root = pimailvm.partitions(img)[1]
    print(f"image, uncompressed          {mb(img.stat().st_size)}")
    if xz.exists():
        print(f"image, xz                    {mb(xz.stat().st_size)}")
    print(f"root partition (squashfs)    {mb(root['size'] * 512)}")
    if args.no_boot:
        return 0

    with tempfile.TemporaryDirectory(prefix="pimail-figures-") as work:
        m = pimailvm.Machine(workdir=Path(work), image=img, memory_mb=512)
        m.prepare({"pimail-selftest": b"on\n"})
        m.start()
        try:
            banner = m.wait_banner(timeout=900)
            report = m.selftest()
            print(f"QEMU start -> SMTP banner    {banner:.1f} s (TCG, -smp 2, cortex-a72)")
            print(f"squashfs, bytes              {mb(int(report['root_fs_bytes']))}")
            print(f"guest MemTotal               {int(report['mem_total_kb']) // 1024} MiB")
            print(f"guest MemAvailable           {int(report['mem_available_kb']) // 1024} MiB")
            print(f"pimail RSS in the guest      {int(report['pimail_rss_kb']) // 1024} MiB")
            print(f"clean power-down             {m.powerdown():.1f} s")
        finally:
            m.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
