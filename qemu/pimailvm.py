"""Boot the pimail SD image under qemu-system-aarch64 (-M virt), for trying
pimail without a Pi (`./build.sh qemu`) and for the end-to-end tests
(tests/qemu/).

What a machine is made of, all under one work directory:
  sd.img        a sparse copy of out/pimail-arm64.img; files put on its boot
                partition (pimail.toml, pimail-selftest) with mtools, no mounts
  data.img      a separate disk with an ext4 filesystem labelled PIMAIL-DATA:
                the guest mounts it on /data (as it would a USB disk on a Pi)
  vmlinuz, initrd.img   taken from the image's boot partition
  console-N.log the serial console of the N-th boot
  qmp.sock      QMP, for a clean power-down (system_powerdown)
Networking is QEMU user networking with restrict=on (the guest reaches
nothing); the mail ports are forwarded to free high ports on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = REPO / "out" / "pimail-arm64.img"
ROOT_PARTUUID = "706d6169-02"
# Guest ports forwarded to 127.0.0.1 (name -> guest port).
GUEST_PORTS = {
    "smtp": 25,
    "submission": 587,
    "submissions": 465,
    "imap": 143,
    "imaps": 993,
    "pop3": 110,
    "pop3s": 995,
    "http": 80,
    "https": 443,
}
SELFTEST_PREFIX = "PIMAIL-SELFTEST "


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def partitions(image: Path) -> list[dict]:
    """The image's MBR partitions (sfdisk's JSON: start and size in sectors)."""
    out = subprocess.run(["sfdisk", "-J", str(image)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["partitiontable"]["partitions"]


def boot_offset(image: Path) -> int:
    return partitions(image)[0]["start"] * 512


def mtools_env() -> dict[str, str]:
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def boot_read(image: Path, name: str) -> bytes:
    return subprocess.run(
        ["mtype", "-i", f"{image}@@{boot_offset(image)}", f"::{name}"],
        check=True,
        capture_output=True,
        env=mtools_env(),
    ).stdout


def boot_copy_out(image: Path, name: str, dest: Path) -> None:
    subprocess.run(
        ["mcopy", "-o", "-n", "-i", f"{image}@@{boot_offset(image)}", f"::{name}", str(dest)],
        check=True,
        env=mtools_env(),
    )


def boot_write(image: Path, name: str, content: bytes) -> None:
    with tempfile.NamedTemporaryFile() as f:
        f.write(content)
        f.flush()
        subprocess.run(
            ["mcopy", "-o", "-i", f"{image}@@{boot_offset(image)}", f.name, f"::{name}"],
            check=True,
            env=mtools_env(),
        )


def make_data_disk(path: Path, size_mb: int = 1024) -> None:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "PIMAIL-DATA", str(path)], check=True)


def data_disk_read(path: Path, name: str) -> str:
    """A file from the (unmounted) data disk, read with debugfs: no mounts."""
    out = subprocess.run(
        ["debugfs", "-R", f"cat {name}", str(path)], capture_output=True, text=True, check=True
    )
    return out.stdout


def setup_toml(domain: str, admin: str, password_hash: str, token: str | None = None) -> bytes:
    lines = [
        "[setup]",
        f'domain = "{domain}"',
        f'hostname = "mail.{domain}"',
        f'admin = "{admin}"',
        f"password_hash = '{password_hash}'",
    ]
    if token:
        lines.append(f'setup_token = "{token}"')
    return ("\n".join(lines) + "\n").encode()


def password_hash(password: str, python: str = sys.executable) -> str:
    """`pimail user hash` on the host (the hash is portable)."""
    out = subprocess.run(
        [python, "-m", "pimail.cli", "user", "hash"],
        input=password + "\n",
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO / "app",
    )
    return out.stdout.strip()


@dataclass
class Machine:
    workdir: Path
    image: Path = DEFAULT_IMAGE
    memory_mb: int = 512
    cpus: int = 2
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    boots: int = 0
    started_at: float = 0.0
    # False: no separate PIMAIL-DATA disk, the SD card's own data partition serves.
    data_disk: bool = True
    # Make the SD card this much larger than the image (its data partition grows).
    grow_sd_mb: int = 0
    # TCP services of the host the guest may reach despite restrict=on, as
    # (guest address, guest port, host port on 127.0.0.1): QEMU's guestfwd.
    guest_forwards: list[tuple[str, int, int]] = field(default_factory=list)
    # More kernel command line (e.g. "pimail.overlay=0"), for the next start.
    extra_append: str = ""

    @property
    def sd(self) -> Path:
        return self.workdir / "sd.img"

    @property
    def data(self) -> Path:
        return self.workdir / "data.img"

    @property
    def console(self) -> Path:
        return self.workdir / f"console-{self.boots}.log"

    def prepare(self, boot_files: dict[str, bytes] | None = None, fresh_data: bool = True) -> None:
        """Copy the image, put files on its boot partition, make the data disk."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "--sparse=always", str(self.image), str(self.sd)], check=True)
        if self.grow_sd_mb:
            subprocess.run(["truncate", "-s", f"+{self.grow_sd_mb}M", str(self.sd)], check=True)
        for name, content in (boot_files or {}).items():
            boot_write(self.sd, name, content)
        kver = boot_read(self.sd, "pimail-kernel-version.txt").decode().strip()
        boot_copy_out(self.sd, f"vmlinuz-{kver}", self.workdir / "vmlinuz")
        boot_copy_out(self.sd, f"initrd.img-{kver}", self.workdir / "initrd.img")
        if self.data_disk and (fresh_data or not self.data.exists()):
            make_data_disk(self.data)
        if not self.ports:
            self.ports = dict(zip(GUEST_PORTS, free_ports(len(GUEST_PORTS)), strict=True))

    def command(self) -> list[str]:
        fwd = ",".join(
            f"hostfwd=tcp:127.0.0.1:{self.ports[name]}-:{guest}"
            for name, guest in GUEST_PORTS.items()
        )
        fwd += "".join(
            f",guestfwd=tcp:{address}:{port}-tcp:127.0.0.1:{host_port}"
            for address, port, host_port in self.guest_forwards
        )
        append = (
            f"root=PARTUUID={ROOT_PARTUUID} rootfstype=squashfs ro rootwait "
            "console=ttyAMA0 net.ifnames=0"
        )
        if self.extra_append:
            append += " " + self.extra_append
        return [
            "qemu-system-aarch64",
            "-M", "virt",
            "-cpu", "cortex-a72",
            "-smp", str(self.cpus),
            "-m", str(self.memory_mb),
            "-kernel", str(self.workdir / "vmlinuz"),
            "-initrd", str(self.workdir / "initrd.img"),
            "-append", append,
            "-drive", f"file={self.sd},format=raw,if=none,id=sd",
            "-device", "virtio-blk-pci,drive=sd",
            *(["-drive", f"file={self.data},format=raw,if=none,id=data",
               "-device", "virtio-blk-pci,drive=data"] if self.data_disk else []),
            "-netdev", f"user,id=n0,restrict=on,{fwd}",
            "-device", "virtio-net-pci,netdev=n0,romfile=",
            "-device", "virtio-rng-pci",
            "-display", "none",
            "-monitor", "none",
            "-serial", f"file:{self.console}",
            "-qmp", f"unix:{self.workdir / 'qmp.sock'},server=on,wait=off",
        ]  # fmt: skip

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.boots += 1
        (self.workdir / "qmp.sock").unlink(missing_ok=True)
        self.started_at = time.monotonic()
        with open(self.workdir / f"qemu-{self.boots}.log", "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_banner(self, timeout: float = 600.0) -> float:
        """Seconds from QEMU's start to the SMTP banner on the forwarded port.
        (QEMU accepts on the host port before the guest listens: a connection
        that closes without a 220 means "not yet".) Returns once IMAP greets
        too: pimail opens its listeners one after the other, SMTP first, and on
        an emulated CPU a client can come between the two."""
        deadline = time.monotonic() + timeout
        banner = self._wait_greeting("smtp", b"220", deadline, b"QUIT\r\n")
        self._wait_greeting("imap", b"* OK", deadline, b"a LOGOUT\r\n")
        return banner

    def _wait_greeting(self, port: str, greeting: bytes, deadline: float, bye: bytes) -> float:
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"QEMU exited; see {self.console}")
            try:
                with socket.create_connection(("127.0.0.1", self.ports[port]), timeout=5) as s:
                    s.settimeout(10)
                    line = s.recv(512)
                    if line.startswith(greeting):
                        s.sendall(bye)
                        return time.monotonic() - self.started_at
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"no {port} greeting in time; see {self.console}")

    def qmp(self, command: str) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.workdir / "qmp.sock"))
            f = s.makefile("rwb")
            f.readline()  # greeting
            for cmd in ("qmp_capabilities", command):
                f.write(json.dumps({"execute": cmd}).encode() + b"\r\n")
                f.flush()
                while True:  # skip events until the reply
                    reply = json.loads(f.readline())
                    if "return" in reply or "error" in reply:
                        break

    def powerdown(self, timeout: float = 180.0) -> float:
        """A clean shutdown (the power button); returns the seconds it took."""
        start = time.monotonic()
        self.qmp("system_powerdown")
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired as e:
            self.kill()
            raise TimeoutError(f"no clean shutdown within {timeout} s; see {self.console}") from e
        return time.monotonic() - start

    def kill(self) -> None:
        """A power cut: SIGKILL to QEMU."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def selftest(self, timeout: float = 300.0) -> dict[str, str]:
        """The self-test report of this boot (pimail-selftest.service, printed
        on the console)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.console.read_text(errors="replace") if self.console.exists() else ""
            if SELFTEST_PREFIX + "done=1" in text:
                report = {}
                for line in text.splitlines():
                    i = line.find(SELFTEST_PREFIX)
                    if i >= 0 and "=" in line:
                        key, _, value = line[i + len(SELFTEST_PREFIX) :].partition("=")
                        report[key.strip()] = value.strip()
                return report
            if not self.running():
                break
            time.sleep(2)
        raise TimeoutError(f"no self-test report; see {self.console}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Boot the pimail image under QEMU (512 MB, virt).")
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    p.add_argument("--workdir", type=Path, default=REPO / "var" / "qemu")
    p.add_argument("--fresh", action="store_true", help="a new, empty data disk")
    p.add_argument("--setup", type=Path, help="a pimail.toml to put on the boot partition")
    p.add_argument("--memory", type=int, default=512, help="MB (default 512, a Pi Zero 2 W)")
    args = p.parse_args(argv)

    m = Machine(workdir=args.workdir, image=args.image, memory_mb=args.memory)
    files: dict[str, bytes] = {}
    password = None
    if args.setup:
        files["pimail.toml"] = args.setup.read_bytes()
    elif args.fresh or not m.data.exists():
        password = os.urandom(9).hex()
        files["pimail.toml"] = setup_toml(
            "example.org", "admin@example.org", password_hash(password)
        )
    m.prepare(files, fresh_data=args.fresh)
    # Ctrl-C and SIGTERM both power the machine down cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    m.start()
    print(f"QEMU started (pid {m.proc.pid}); serial console: {m.console}")
    for name, port in m.ports.items():
        print(f"  {name:12} guest {GUEST_PORTS[name]:>3} -> 127.0.0.1:{port}")
    if password:
        print(f"  account      admin@example.org, password {password}")
    print(f"  data disk    {m.data} (kept; --fresh for a new one)")
    try:
        print(f"SMTP banner after {m.wait_banner():.1f} s. Ctrl-C powers the machine down.")
        m.proc.wait()
    except KeyboardInterrupt:
        print("powering down...")
        try:
            m.powerdown()
        except (OSError, TimeoutError):
            m.kill()
    finally:
        m.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
