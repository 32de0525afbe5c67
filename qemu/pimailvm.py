"""Boot the pimail SD image under qemu-system-aarch64, for trying pimail
without a Pi (`./build.sh qemu`) and for the end-to-end tests (tests/qemu/).

Two boards:
  virt      (default) the kernel and initrd passed directly (slot A's, from
            the boot partition's /slot-a), virtio disks and network: quick, and
            any memory size (512 MB: a Pi Zero 2 W). With bootloader="uboot" the
            image's real boot path instead: U-Boot (Debian's qemu_arm64, as
            -bios) runs the boot partition's boot.scr, which picks slot A or B
            (A/B updates) and sets the kernel command line; a watchdog
            (i6300esb) resets the machine when the guest stops feeding it
  raspi3b   the Pi's own boot path as far as QEMU has one: QEMU's raspi3b has
            no GPU firmware, so what the firmware would do is done here from
            the boot partition (config.txt's kernel= and initramfs, the
            board's device tree bcm2837-rpi-3-b.dtb, cmdline.txt as it is);
            the image is the SD card (a copy grown to a power of two, which
            QEMU's SD card needs), its partition 3 is /data, and the network
            is a USB Ethernet adapter behind a USB hub (as the Pi 3 B's own
            Ethernet sits behind its LAN9514 hub; QEMU's dwc2 does not
            enumerate a device on its root port under the mainline driver)

What a machine is made of, all under one work directory:
  sd.img        a sparse copy of out/pimail-arm64.img; files put on its boot
                partition (pimail.toml, pimail-selftest) with mtools, no mounts
  data.img      a separate disk with an ext4 filesystem labelled PIMAIL-DATA:
                the guest mounts it on /data (as it would a USB disk on a Pi)
  vmlinuz, initrd.img   taken from the image's boot partition (not with U-Boot)
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
ROOT_PARTUUID = "706d6169-02"  # slot A
UBOOT_QEMU = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
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


def split_boot_partition(sd: Path, boot_disk: Path | None = None) -> None:
    """Take the boot partition out of an SD image's partition table (the disk
    has no PARTUUID 706d6169-01 then: a card whose boot partition is lost);
    with `boot_disk`, first copy it there as a disk of its own (same disk id:
    hot-added later, it is the boot partition arriving late)."""
    if boot_disk is not None:
        first = partitions(sd)[0]
        end = (first["start"] + first["size"]) * 512
        subprocess.run(["cp", "--sparse=always", str(sd), str(boot_disk)], check=True)
        # sfdisk keeps the other entries' numbers: p1 stays p1 (PARTUUID ...-01).
        subprocess.run(
            [
                "sfdisk",
                "-q",
                "--delete",
                str(boot_disk),
                *[str(p) for p in range(2, 1 + len(partitions(sd)))],
            ],
            check=True,
        )
        os.truncate(boot_disk, end)
    subprocess.run(["sfdisk", "-q", "--delete", str(sd), "1"], check=True)


RASPI3B_DTB = "bcm2837-rpi-3-b.dtb"


def raspi_boot_files(config_txt: str) -> tuple[str, str]:
    """The kernel and initramfs a Pi 3's firmware loads, from config.txt's
    `kernel=` and `initramfs NAME followkernel` lines in the sections that
    apply to a Pi 3 ([all] and [pi3]; the file starts in [all])."""
    kernel = initrd = ""
    section = "all"
    for raw in config_txt.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
            continue
        if section not in ("all", "pi3") or not line:
            continue
        if line.startswith("kernel="):
            kernel = line.partition("=")[2].strip()
        elif line.startswith("initramfs "):
            initrd = line.split()[1]
    if kernel == "u-boot.bin":
        return kernel, ""  # U-Boot loads the initrd (boot.scr)
    if not kernel or not initrd:
        raise ValueError("config.txt names no kernel= or initramfs")
    return kernel, initrd


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
class Netns:
    """A network namespace for a QEMU whose guest may reach "the host": its own
    loopback and one end of a veth pair (10.213.N.2/30; the other end, .1, in
    the tests' namespace), no other interface and no route anywhere else. What
    the guest sends to 10.0.2.2 lands on this namespace's 127.0.0.1; anything
    else it tries (an NTP pool, the root DNS servers) finds no route."""

    name: str
    inner: str
    outer: str

    @classmethod
    def create(cls) -> Netns:
        n = os.getpid() % 250 + 1
        name, outer_if, inner_if = f"pimailvm{n}", f"pvm{n}h", f"pvm{n}n"
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        subprocess.run(["ip", "link", "delete", outer_if], capture_output=True)
        ns = cls(name, f"10.213.{n}.2", f"10.213.{n}.1")
        for cmd in (
            ["ip", "netns", "add", name],
            ["ip", "-n", name, "link", "set", "lo", "up"],
            ["ip", "link", "add", outer_if, "type", "veth", "peer", "name", inner_if,
             "netns", name],
            ["ip", "addr", "add", f"{ns.outer}/30", "dev", outer_if],
            ["ip", "link", "set", outer_if, "up"],
            ["ip", "-n", name, "addr", "add", f"{ns.inner}/30", "dev", inner_if],
            ["ip", "-n", name, "link", "set", inner_if, "up"],
        ):  # fmt: skip
            subprocess.run(cmd, check=True, capture_output=True)
        return ns

    def socket(self, family: int, kind: int) -> socket.socket:
        """A socket made inside the namespace (setns(2) in a thread of its own: a
        socket keeps the namespace it was made in)."""
        import ctypes
        import threading

        made: list[socket.socket | BaseException] = []

        def run() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(f"/run/netns/{self.name}") as f:
                    if libc.setns(f.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
                        raise OSError(ctypes.get_errno(), "setns")
                made.append(socket.socket(family, kind))
            except BaseException as e:  # handed to the caller
                made.append(e)

        t = threading.Thread(target=run)
        t.start()
        t.join()
        if isinstance(made[0], BaseException):
            raise made[0]
        return made[0]

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)


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
    # False: the guest may reach the host (10.0.2.2 is the host's 127.0.0.1), e.g. an NTP
    # server. Then QEMU runs in a network namespace of its own (Netns): the guest reaches
    # that namespace's loopback and nothing else, never the internet; the tests reach
    # the forwarded ports at `host`, the namespace's end of a veth pair.
    restrict: bool = True
    netns: Netns | None = None
    # The guest's clock at power-on (QEMU -rtc base=), e.g. "2001-01-01"; None: the host's.
    rtc_base: str | None = None
    # More kernel command line (e.g. "pimail.selftest", "pimail.overlay=0"), for the next start.
    extra_append: str = ""
    # TCP services of the host the guest may reach despite restrict=on, as
    # (guest address, guest port, host port on 127.0.0.1): QEMU's guestfwd, one
    # socat per connection (a chardev would carry one connection for the whole run).
    guest_forwards: list[tuple[str, int, int]] = field(default_factory=list)
    # A USB (xHCI) controller, to hot-add disks to (hotplug_usb_disk).
    usb: bool = False
    # How the data disk is attached: "virtio" (virtio-blk-pci), or "usb": a USB
    # stick on the xHCI controller, as on a Pi, that can be pulled out and put
    # back (unplug_data_disk, plug_data_disk: QMP device_del/device_add of the
    # device "datadisk"; its backing node "data" stays, so the same file returns).
    data_bus: str = "virtio"
    # More disks present from power-on, as USB sticks: name -> raw image (QMP
    # node `name`, device `name`-dev, as hotplug_usb_disk names them).
    usb_disks: dict[str, Path] = field(default_factory=dict)
    # Seconds from QEMU's start to the SMTP banner, one per wait_banner().
    banners: list[float] = field(default_factory=list)
    # "virt" or "raspi3b" (see the module's docstring).
    board: str = "virt"
    # raspi3b: what the GPU firmware would have read from the boot partition.
    cmdline: str = ""
    # virt: "kernel" (QEMU loads slot A's kernel and initrd, -append) or "uboot"
    # (the image's U-Boot path; extra_append is not possible then).
    bootloader: str = "kernel"

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
        if self.board == "raspi3b":
            self._prepare_raspi()
        elif self.bootloader == "kernel":
            boot_copy_out(self.sd, "slot-a/vmlinuz", self.workdir / "vmlinuz")
            boot_copy_out(self.sd, "slot-a/initrd.img", self.workdir / "initrd.img")
        if self.data_disk and (fresh_data or not self.data.exists()):
            make_data_disk(self.data)
        if not self.ports:
            self.ports = dict(zip(GUEST_PORTS, free_ports(len(GUEST_PORTS)), strict=True))

    def _prepare_raspi(self) -> None:
        """Do what the Pi's GPU firmware does before the kernel runs: read
        config.txt for the kernel and initramfs, take the board's device tree
        and cmdline.txt from the boot partition. The SD card becomes a power
        of two in size (QEMU's SD card model needs one); the data partition
        grows into the rest at first boot, as on a real card."""
        self.data_disk = False
        size = self.sd.stat().st_size
        card = 1 << (size - 1).bit_length()
        subprocess.run(["truncate", "-s", str(card), str(self.sd)], check=True)
        kernel, initrd = raspi_boot_files(boot_read(self.sd, "config.txt").decode())
        if kernel == "u-boot.bin":
            # The firmware starts U-Boot, whose boot.scr loads slot A's kernel and
            # initrd on a card fresh from the image: QEMU's raspi3b starts those
            # (with cmdline.txt, slot A's command line) directly.
            kernel, initrd = "slot-a/vmlinuz", "slot-a/initrd.img"
        boot_copy_out(self.sd, kernel, self.workdir / "vmlinuz")
        boot_copy_out(self.sd, initrd, self.workdir / "initrd.img")
        boot_copy_out(self.sd, RASPI3B_DTB, self.workdir / "board.dtb")
        self.cmdline = boot_read(self.sd, "cmdline.txt").decode().strip()

    def command(self) -> list[str]:
        fwd = ",".join(
            f"hostfwd=tcp:{self.host if self.netns else '127.0.0.1'}:{self.ports[name]}-:{guest}"
            for name, guest in GUEST_PORTS.items()
        )
        fwd += "".join(
            f",guestfwd=tcp:{address}:{port}-cmd:socat STDIO TCP:127.0.0.1:{host_port}"
            for address, port, host_port in self.guest_forwards
        )
        if self.board == "raspi3b":
            return self._raspi_command(fwd)
        if self.bootloader == "uboot":
            if self.extra_append:
                raise ValueError("extra_append needs bootloader='kernel' (boot.scr sets it)")
            boot = [
                "-bios", str(UBOOT_QEMU),
                # systemd feeds it (RuntimeWatchdogSec); a hung guest is reset,
                # and U-Boot's boot counter sees one more try.
                "-device", "i6300esb", "-action", "watchdog=reset",
            ]  # fmt: skip
        else:
            boot = [
                "-kernel", str(self.workdir / "vmlinuz"),
                "-initrd", str(self.workdir / "initrd.img"),
                "-append", self._append(),
            ]  # fmt: skip
        restrict = "on" if self.restrict else "off"
        return [
            "qemu-system-aarch64",
            "-M", "virt",
            "-cpu", "cortex-a72",
            "-smp", str(self.cpus),
            "-m", str(self.memory_mb),
            *boot,
            "-drive", f"file={self.sd},format=raw,if=none,id=sd",
            "-device", "virtio-blk-pci,drive=sd",
            *(self._data_disk_args() if self.data_disk and self.data_bus != "usb" else []),
            "-netdev", f"user,id=n0,restrict={restrict},{fwd}",
            "-device", "virtio-net-pci,netdev=n0,romfile=",
            "-device", "virtio-rng-pci",
            *(["-rtc", f"base={self.rtc_base}"] if self.rtc_base else []),
            *(["-device", "qemu-xhci,id=xhci"] if self._has_usb else []),
            *(self._data_disk_args() if self.data_disk and self.data_bus == "usb" else []),
            *self._usb_disk_args(),
            "-display", "none",
            "-monitor", "none",
            "-serial", f"file:{self.console}",
            "-qmp", f"unix:{self.workdir / 'qmp.sock'},server=on,wait=off",
        ]  # fmt: skip

    @property
    def _has_usb(self) -> bool:
        return self.usb or bool(self.usb_disks) or (self.data_disk and self.data_bus == "usb")

    def _data_disk_args(self) -> list[str]:
        if self.data_bus == "usb":
            # -blockdev, not -drive: a -drive's backend goes with its device at
            # device_del, a -blockdev node stays for the device_add that follows.
            node = f"driver=raw,node-name=data,file.driver=file,file.filename={self.data}"
            return [
                "-blockdev", node,
                "-device", "usb-storage,bus=xhci.0,drive=data,id=datadisk",
            ]  # fmt: skip
        return [
            "-drive", f"file={self.data},format=raw,if=none,id=data",
            "-device", "virtio-blk-pci,drive=data,id=datadisk",
        ]  # fmt: skip

    def _usb_disk_args(self) -> list[str]:
        args: list[str] = []
        for name, path in self.usb_disks.items():
            args += [
                "-blockdev", f"driver=raw,node-name={name},file.driver=file,file.filename={path}",
                "-device", f"usb-storage,bus=xhci.0,drive={name},id={name}-dev",
            ]  # fmt: skip
        return args

    def _append(self) -> str:
        """The kernel command line without U-Boot: slot A's, as boot.scr sets it."""
        return (
            f"root=PARTUUID={ROOT_PARTUUID} rootfstype=squashfs ro rootwait "
            f"console=ttyAMA0 net.ifnames=0 {self.extra_append}"
        ).strip()

    def _raspi_command(self, fwd: str) -> list[str]:
        # raspi3b: 1 GB and 4 Cortex-A53 cores, fixed by the board. The first
        # -serial is the PL011 (Bluetooth's UART on a Pi 3), the second the mini
        # UART, ttyS1: the console cmdline.txt names (enable_uart=1).
        return [
            "qemu-system-aarch64",
            "-M", "raspi3b",
            "-kernel", str(self.workdir / "vmlinuz"),
            "-initrd", str(self.workdir / "initrd.img"),
            "-dtb", str(self.workdir / "board.dtb"),
            "-append", self.cmdline,
            "-drive", f"file={self.sd},format=raw,if=sd",
            "-netdev", f"user,id=n0,restrict=on,{fwd}",
            "-device", "usb-hub,port=1",
            "-device", "usb-net,netdev=n0,port=1.1,id=usbnet",
            "-display", "none",
            "-monitor", "none",
            "-serial", "null",
            "-serial", f"file:{self.console}",
            "-qmp", f"unix:{self.workdir / 'qmp.sock'},server=on,wait=off",
        ]  # fmt: skip

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.boots += 1
        (self.workdir / "qmp.sock").unlink(missing_ok=True)
        if not self.restrict and self.netns is None:
            self.netns = Netns.create()
        prefix = ["ip", "netns", "exec", self.netns.name] if self.netns else []
        self.started_at = time.monotonic()
        with open(self.workdir / f"qemu-{self.boots}.log", "wb") as log:
            self.proc = subprocess.Popen(
                prefix + self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def host(self) -> str:
        """Where the tests reach the forwarded ports."""
        return self.netns.inner if self.netns else "127.0.0.1"

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
        self.banners.append(banner)
        return banner

    def _wait_greeting(self, port: str, greeting: bytes, deadline: float, bye: bytes) -> float:
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"QEMU exited; see {self.console}")
            try:
                with socket.create_connection((self.host, self.ports[port]), timeout=5) as s:
                    s.settimeout(10)
                    line = s.recv(512)
                    if line.startswith(greeting):
                        s.sendall(bye)
                        return time.monotonic() - self.started_at
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"no {port} greeting in time; see {self.console}")

    def qmp(self, command: str, arguments: dict | None = None) -> dict:
        """One QMP command; its reply ({"return": ...} or {"error": ...})."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.workdir / "qmp.sock"))
            f = s.makefile("rwb")
            f.readline()  # greeting
            for cmd, args in (("qmp_capabilities", None), (command, arguments)):
                message: dict = {"execute": cmd}
                if args is not None:
                    message["arguments"] = args
                f.write(json.dumps(message).encode() + b"\r\n")
                f.flush()
                while True:  # skip events until the reply
                    reply = json.loads(f.readline())
                    if "return" in reply or "error" in reply:
                        break
            return reply

    def replug_usb_net(self) -> None:
        """raspi3b: pull the USB Ethernet adapter out of the hub and plug it in
        again (QEMU's dwc2 under a loaded host sometimes leaves it unenumerated:
        "dwc2 ... Not connected"); a user would do the same with a cable."""
        reply = self.qmp("device_del", {"id": "usbnet"})
        if "error" in reply:
            raise RuntimeError(f"QMP device_del: {reply['error']}")
        time.sleep(5)
        arguments = {"driver": "usb-net", "netdev": "n0", "port": "1.1", "id": "usbnet"}
        for _ in range(10):  # device_del completes when the guest lets go
            reply = self.qmp("device_add", arguments)
            if "error" not in reply:
                return
            time.sleep(3)
        raise RuntimeError(f"QMP device_add: {reply['error']}")

    def hotplug_usb_disk(self, path: Path, name: str) -> None:
        """Plug a raw disk image in as a USB stick (needs usb=True)."""
        for command, arguments in (
            ("blockdev-add", {"driver": "raw", "node-name": name,
                              "file": {"driver": "file", "filename": str(path)}}),
            ("device_add", {"driver": "usb-storage", "bus": "xhci.0", "drive": name,
                            "id": f"{name}-dev"}),
        ):  # fmt: skip
            reply = self.qmp(command, arguments)
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error']}")

    def _peripherals(self) -> set[str]:
        reply = self.qmp("qom-list", {"path": "/machine/peripheral"})
        return {p["name"] for p in reply.get("return", [])}

    def unplug_data_disk(self, timeout: float = 60.0) -> None:
        """Pull the USB data disk out (data_bus="usb"): QMP device_del, then
        wait until QEMU has let the device go (USB needs no guest's consent)."""
        reply = self.qmp("device_del", {"id": "datadisk"})
        if "error" in reply:
            raise RuntimeError(f"QMP device_del: {reply['error']}")
        deadline = time.monotonic() + timeout
        while "datadisk" in self._peripherals():
            if time.monotonic() > deadline:
                raise TimeoutError("the data disk's device_del did not complete")
            time.sleep(0.5)

    def plug_data_disk(self) -> None:
        """Put the USB data disk back (the same backing file, node "data")."""
        arguments = {"driver": "usb-storage", "bus": "xhci.0", "drive": "data", "id": "datadisk"}
        reply = self.qmp("device_add", arguments)
        if "error" in reply:
            raise RuntimeError(f"QMP device_add: {reply['error']}")

    def wait_console(self, text: str, timeout: float = 600.0) -> float:
        """Seconds from QEMU's start until `text` is on this boot's console."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.console.exists() and text in self.console.read_text(errors="replace"):
                return time.monotonic() - self.started_at
            if not self.running():
                raise RuntimeError(f"QEMU exited; see {self.console}")
            time.sleep(1)
        raise TimeoutError(f"{text!r} not on the console in time; see {self.console}")

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

    def close(self) -> None:
        """Kill QEMU and remove its network namespace, if it has one."""
        self.kill()
        if self.netns is not None:
            self.netns.delete()
            self.netns = None

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
    p.add_argument(
        "--board", choices=("virt", "raspi3b"), default="virt",
        help="virt (default), or raspi3b: the Pi's own boot path, 1 GB, SD card only (slow)",
    )  # fmt: skip
    p.add_argument(
        "--selftest", action="store_true",
        help="run the self-test at boot and print its report (memory, services, boot time)",
    )  # fmt: skip
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    p.add_argument("--workdir", type=Path, default=REPO / "var" / "qemu")
    p.add_argument("--fresh", action="store_true", help="a new, empty data disk")
    p.add_argument("--setup", type=Path, help="a pimail.toml to put on the boot partition")
    p.add_argument("--memory", type=int, default=512, help="MB (default 512, a Pi Zero 2 W)")
    args = p.parse_args(argv)

    m = Machine(workdir=args.workdir, image=args.image, memory_mb=args.memory, board=args.board)
    files: dict[str, bytes] = {}
    if args.selftest:
        files["pimail-selftest"] = b"on\n"
    password = None
    if args.setup:
        files["pimail.toml"] = args.setup.read_bytes()
    else:
        if args.fresh or args.board == "raspi3b" or not m.data.exists():
            password = os.urandom(9).hex()
            files["pimail.toml"] = setup_toml(
                "example.org", "admin@example.org", password_hash(password)
            )
        # The browser reaches HTTPS on the forwarded port: the HTTP redirect must
        # name it (web.public_https_port; applied at every boot, before pimail).
        m.ports = dict(zip(GUEST_PORTS, free_ports(len(GUEST_PORTS)), strict=True))
        settings = f"[setup.settings.web]\npublic_https_port = {m.ports['https']}\n"
        files["pimail.toml"] = files.get("pimail.toml", b"[setup]\n") + settings.encode()
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
    if m.data_disk:
        print(f"  data disk    {m.data} (kept; --fresh for a new one)")
    else:
        print(f"  data         the SD card's partition 3 ({m.sd}, a fresh copy each run)")
    try:
        print(f"SMTP banner after {m.wait_banner():.1f} s. Ctrl-C powers the machine down.")
        if args.selftest:
            print("self-test report (pimail-selftest.service):")
            for key, value in m.selftest().items():
                print(f"  {key:28} {value}")
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
