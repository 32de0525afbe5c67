"""Issue 16 in the image: the boot partition late or absent, time before
trust, Wi-Fi. Two boots:

- late: the SD card without its boot partition; the boot partition, a disk
  of its own (same PARTUUID), is plugged in (USB, QMP) 30 s after systemd
  starts waiting for it (the old fstab gave up after 15 s; now 120 s). Its pimail.toml
  carries [setup] with a setup token, [wifi] and [time] ntp = 10.0.2.2. The
  guest's clock starts in 2001 (-rtc base=): systemd moves it up to the image's
  build date; pimail waits for network time before its first CA (60 s) while
  our SNTP server (127.0.0.1:123 here, 10.0.2.2 there) stays silent, makes the
  certificates with the wrong clock, and makes them again once the server
  answers. wlan0 is mac80211_hwsim's radio: wpa_supplicant@wlan0 runs on the
  stored network (there is no access point to join).
- absent: no boot partition at all; the wizard must not open to the network
  (QEMU's user network brings the host's requests from 10.0.2.2: the LAN).
"""

from __future__ import annotations

import datetime as dt
import imaplib
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509

from .test_appliance import ADMIN, DOMAIN, IMAGE, PASSWORD, REPO, pimailvm, tls

TOKEN = "qemu-setup-token-5"
PSK = "qemu wifi passphrase 77"
SSID = "pimail-test"
NTP_PORT = 123
NTP_EPOCH = 2208988800  # RFC 5905 6: seconds from 1900 to 1970
WIFI_TOML = f"""
[wifi]
ssid = "{SSID}"
psk = "{PSK}"
country = "DE"

[time]
ntp = ["10.0.2.2"]
"""


class SntpServer:
    """RFC 4330 (SNTPv4) server mode, stratum 1, on 127.0.0.1:123 of the guest's
    network namespace (pimailvm.Netns); silent until answering is set. QEMU's
    user network takes the guest's 10.0.2.2 there."""

    def __init__(self, netns: pimailvm.Netns) -> None:
        self.sock = netns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", NTP_PORT))
        self.sock.settimeout(0.5)
        self.answering = threading.Event()
        self.requests = 0
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @staticmethod
    def _timestamp(t: float) -> bytes:
        seconds = int(t)
        return struct.pack("!II", seconds + NTP_EPOCH, int((t - seconds) * 2**32))

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) < 48:
                continue
            self.requests += 1
            if not self.answering.is_set():
                continue
            received = time.time()
            version = (data[0] >> 3) & 7
            # RFC 4330 5: LI 0, the client's version, mode 4 (server); stratum 1;
            # the client's poll; precision 2^-20; no root delay or dispersion;
            # reference id "GPS"; originate = the client's transmit timestamp.
            header = struct.pack("!BBbb", (version << 3) | 4, 1, data[2], -20)
            reply = (
                header + struct.pack("!II", 0, 0) + b"GPS\0" + self._timestamp(received - 1)
                + data[40:48] + self._timestamp(received) + self._timestamp(time.time())
            )  # fmt: skip
            self.sock.sendto(reply, peer)
            self.answered += 1

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(5)


def plain(console: str) -> str:
    """The console without its colours (ANSI SGR sequences)."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", console)


def served_certificate(vm: pimailvm.Machine, timeout: float = 300) -> x509.Certificate:
    """The HTTPS listener's certificate. The web listeners open last, after
    the SMTP banner: until then QEMU's forwarded port accepts and closes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with (
                socket.create_connection((vm.host, vm.ports["https"]), timeout=30) as raw,
                tls().wrap_socket(raw) as conn,
            ):
                der = conn.getpeercert(binary_form=True)
            assert der is not None
            return x509.load_der_x509_certificate(der)
        except OSError:  # ssl.SSLError is one
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def https_get(vm: pimailvm.Machine, path: str, wait: float = 300.0) -> tuple[int, str]:
    """GET over HTTPS; while the web listener is not up yet (it starts after SMTP's
    banner, IMAP and POP3), QEMU's forward resets the connection: asked again."""
    url = f"https://{vm.host}:{vm.ports['https']}{path}"
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(url, context=tls(), timeout=60) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (urllib.error.URLError, ConnectionError) as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} never answered: {e}") from e
            time.sleep(2)


def contains(path: Path, needle: bytes) -> bool:
    """Whether a (large, sparse) file holds these octets anywhere."""
    overlap = len(needle)
    tail = b""
    with open(path, "rb") as f:
        while chunk := f.read(16 * 1024 * 1024):
            if needle in tail + chunk:
                return True
            tail = chunk[-overlap:]
    return False


def data_mtime(data_img: Path, name: str) -> int:
    out = subprocess.run(
        ["debugfs", "-R", f"stat {name}", str(data_img)], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        if line.strip().startswith("mtime:"):
            return int(line.split()[1].split(":")[0], 16)
    raise AssertionError(f"no {name} on the data disk: {out}")


def test_boot_partition_late_time_from_ntp_and_wifi(figures: dict[str, object]) -> None:
    workdir = REPO / "test-output" / "qemu-firstboot-late"
    shutil.rmtree(workdir, ignore_errors=True)
    m = pimailvm.Machine(
        workdir=workdir, image=IMAGE, memory_mb=512, restrict=False, rtc_base="2001-01-01",
        usb=True, extra_append="modules-load=mac80211_hwsim mac80211_hwsim.radios=1",
    )  # fmt: skip
    setup = pimailvm.setup_toml(DOMAIN, ADMIN, pimailvm.password_hash(PASSWORD), token=TOKEN)
    m.prepare({"pimail.toml": setup + WIFI_TOML.encode(), "pimail-selftest": b"on\n"})
    boot_disk = workdir / "boot.img"
    pimailvm.split_boot_partition(m.sd, boot_disk)
    # The guest may reach "the host" (our SNTP server): in a namespace of its own.
    m.netns = pimailvm.Netns.create()
    ntp = SntpServer(m.netns)
    m.start()
    try:
        # systemd's greeting: its first transaction, with the wait for the
        # boot partition, starts now.
        welcome = m.wait_console("Welcome to", timeout=900)
        time.sleep(30)
        m.hotplug_usb_disk(boot_disk, "bootcard")
        plugged = time.monotonic() - m.started_at
        banner = m.wait_banner(timeout=900)
        figures["late_boot_partition_plugged_s"] = round(plugged, 1)
        figures["late_boot_banner_s"] = round(banner, 1)
        console = plain(m.console.read_text(errors="replace"))
        assert "Mounted boot-firmware.mount" in console
        assert not re.search(r"Dependency failed for boot.{0,3}rmware", console)
        assert plugged > welcome + 15  # later than the old 15 s device timeout

        first = served_certificate(m)
        ntp.answering.set()
        # pimail.toml was applied although the partition came late: the account
        # exists, and the wizard asks for the token (from the LAN: 10.0.2.2).
        with imaplib.IMAP4_SSL(m.host, m.ports["imaps"], ssl_context=tls(), timeout=60) as imap:
            imap.login(ADMIN, PASSWORD)
            imap.logout()
        status, page = https_get(m, "/setup")
        assert status == 200 and 'name="token"' in page, page[:500]

        # Network time came: the certificates made before it are made again.
        deadline = time.monotonic() + 300
        cert = served_certificate(m)
        while cert.serial_number == first.serial_number and time.monotonic() < deadline:
            time.sleep(5)
            cert = served_certificate(m)
        assert cert.serial_number != first.serial_number, "not reissued after the clock was set"
        expected = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        assert abs(cert.not_valid_before_utc - expected) < dt.timedelta(minutes=10)
        assert ntp.answered > 0

        report = m.selftest()
        assert report["boot_partition"] == "mounted"
        assert "timesync" in report["clock_file_mount"], report["clock_file_mount"]
        assert report["wifi_conf"] == "600,root"
        assert report["wifi_supplicant"] == "active"
        assert report["wifi_state"], report  # scanning: there is no access point
        assert "pimail" not in report["failed_units"], report["failed_units"]
        m.powerdown()
    finally:
        ntp.close()
        m.close()

    # The last known time is on /data (timesyncd's clock file), and recent.
    assert abs(data_mtime(m.data, "/timesync/clock") - time.time()) < 900
    # The passphrase: hashed on /data, gone from the card, never in the journal or on the console.
    conf = pimailvm.data_disk_read(m.data, "/network/wpa_supplicant-wlan0.conf")
    assert f"ssid={SSID.encode().hex()}" in conf and "country=DE" in conf and PSK not in conf
    journal = pimailvm.data_disk_read(m.data, "/selftest-journal.txt")
    assert "pimail-bootconf: wifi" in journal and "psk removed" in journal
    toml = pimailvm.boot_read(boot_disk, "pimail.toml").decode()
    assert PSK not in toml and "psk: stored on the data disk" in toml and TOKEN in toml
    for path in (boot_disk, m.data, m.console):
        assert not contains(path, PSK.encode()), f"the passphrase is in {path}"


def test_boot_partition_absent_keeps_the_wizard_off_the_network() -> None:
    workdir = REPO / "test-output" / "qemu-firstboot-absent"
    shutil.rmtree(workdir, ignore_errors=True)
    m = pimailvm.Machine(
        workdir=workdir, image=IMAGE, memory_mb=512, extra_append="pimail.selftest"
    )
    m.prepare({})
    pimailvm.split_boot_partition(m.sd)
    m.start()
    try:
        m.wait_banner(timeout=900)  # after fstab's 120 s for the partition
        status, page = https_get(m, "/setup")
        assert status == 503 and "boot partition is missing" in page, (status, page[:500])
        status, page = https_get(m, "/")  # the home page leads there too
        assert status == 503 and "boot partition is missing" in page
        status, page = https_get(m, "/setup/names")
        assert status == 503
        report = m.selftest()
        assert report["boot_partition"] == "missing"
        assert report["pimail_active"] == "active"
        console = plain(m.console.read_text(errors="replace"))
        assert "pimail: the boot partition (PIMAIL-BOOT" in console
        m.powerdown()
    finally:
        m.kill()
    journal = pimailvm.data_disk_read(m.data, "/selftest-journal.txt")
    assert "boot partition not mounted" in journal and "answers loopback only" in journal
