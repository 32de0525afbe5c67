"""Issue 16 on the host: certificates and the clock, the boot partition's
Wi-Fi settings (pimail.bootconf), and the setup wizard without the boot
partition. The image side is tests/qemu/test_firstboot.py."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from cryptography import x509

from conftest import PimailServer
from pimail import bootconf, clock
from pimail.tls import ca
from pimail.web import wizard

HOST = "mx.test"
DAY = dt.timedelta(days=1)
BUILD_DATE = dt.datetime(2026, 10, 1, 12, 0, tzinfo=dt.UTC)  # a clock a Pi starts with
REAL = dt.datetime(2026, 12, 7, 21, 0, tzinfo=dt.UTC)


def leaf(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def ca_cert(data: Path) -> x509.Certificate:
    return leaf(ca.ca_dir(data) / ca.CA_CERT)


# -- certificates: a day before issue, and made again once the clock is right ----------------


def test_every_certificate_starts_a_day_before_issue(tmp_path: Path) -> None:
    result = ca.ensure_certificates(tmp_path, HOST, ["example.org"], now=REAL)
    assert leaf(result.certfile).not_valid_before_utc == REAL - DAY
    assert ca_cert(tmp_path).not_valid_before_utc == REAL - DAY
    from pimail.tls import acme_client

    pem = acme_client.alpn_certificate("mx.test", "token.key")
    begin = pem.index(b"-----BEGIN CERTIFICATE-----")
    alpn = x509.load_pem_x509_certificate(pem[begin:])
    age = dt.datetime.now(dt.UTC) - alpn.not_valid_before_utc
    assert DAY - dt.timedelta(minutes=5) < age <= DAY + dt.timedelta(minutes=5)


def test_made_before_the_clock_was_set_then_reissued_once_it_is(tmp_path: Path) -> None:
    first = ca.ensure_certificates(tmp_path, HOST, now=BUILD_DATE, clock_synced=False)
    assert first.issued and ca.unsynced(tmp_path) == ["ca", "internal"]
    ca_key = (ca.ca_dir(tmp_path) / ca.CA_KEY).read_bytes()
    # Still not synchronized (later at the same boot): nothing changes.
    later = BUILD_DATE + dt.timedelta(minutes=5)
    again = ca.ensure_certificates(tmp_path, HOST, now=later, clock_synced=False)
    assert not again.issued and again.info.serial_hex == first.info.serial_hex
    # Network time came: both are made again from the real time; the CA keeps its key.
    synced = ca.ensure_certificates(tmp_path, HOST, now=REAL, clock_synced=True)
    assert synced.issued and synced.reason == "made before the clock was set"
    assert synced.info.not_before == REAL - DAY
    assert ca_cert(tmp_path).not_valid_before_utc == REAL - DAY
    assert (ca.ca_dir(tmp_path) / ca.CA_KEY).read_bytes() == ca_key
    assert ca.unsynced(tmp_path) == []
    # And then left alone.
    assert not ca.ensure_certificates(tmp_path, HOST, now=REAL, clock_synced=True).issued


def test_a_clock_that_was_ahead_reissues_when_it_goes_back(tmp_path: Path) -> None:
    future = REAL + dt.timedelta(days=4000)
    ahead = ca.ensure_certificates(tmp_path, HOST, now=future, clock_synced=None)
    assert ca.unsynced(tmp_path) == []  # cannot tell: not marked
    back = ca.ensure_certificates(tmp_path, HOST, now=REAL, clock_synced=None)
    assert back.issued and back.reason == "not yet valid"
    assert back.info.serial_hex != ahead.info.serial_hex
    assert back.info.not_before == REAL - DAY and ca_cert(tmp_path).not_valid_before_utc <= REAL


def test_ensure_child_reports_the_clock(tmp_path: Path) -> None:
    request = {"data_dir": str(tmp_path), "hostname": HOST, "time_wait": 0}
    out = subprocess.run(
        [sys.executable, "-m", "pimail.tls.ensure", json.dumps(request)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["issued"] and result["clock_synced"] in (True, False, None)
    assert ("internal" in ca.unsynced(tmp_path)) is (result["clock_synced"] is False)


def test_the_clock_rules(tmp_path: Path) -> None:
    assert clock.synchronized() in (True, False, None)
    epoch = tmp_path / "clock-epoch"
    assert not clock.set_from_epoch(epoch)  # no epoch file: not an image
    epoch.touch()
    os.utime(epoch, (time.time() - clock.uptime(), time.time() - clock.uptime()))
    assert clock.set_from_epoch(epoch)  # the clock is the epoch plus the time since boot
    past = time.time() - clock.uptime() - 3 * 86400
    os.utime(epoch, (past, past))
    assert not clock.set_from_epoch(epoch)  # something better set it
    assert clock.wait_for_sync(0, epoch) in ("synchronized", "trusted", "unknown")


def test_the_served_certificate_starts_a_day_before(make_server) -> None:  # type: ignore[no-untyped-def]
    server: PimailServer = make_server()
    server.start()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", server.imaps_port), timeout=30) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    age = dt.datetime.now(dt.UTC) - x509.load_der_x509_certificate(der).not_valid_before_utc
    assert DAY <= age < DAY + dt.timedelta(minutes=10)


# -- Wi-Fi from the boot partition -------------------------------------------------------------


def test_wpa_psk_is_the_802_11i_pbkdf2() -> None:
    # IEEE 802.11i-2004 H.4.2 test vectors.
    assert (
        bootconf.wpa_psk("IEEE", "password")
        == "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
    )
    assert (
        bootconf.wpa_psk("ThisIsASSID", "ThisIsAPassword")
        == "0dc0d6eb90555ed6419756b9a15ec3e3209b63df707dd508d14581f8982721af"
    )
    key = "AB" * 32
    assert bootconf.wpa_psk("x", key) == key.lower()
    for bad in ("short", "x" * 64, "tab\there1", "é" * 9):
        with pytest.raises(bootconf.BootConfError) as e:
            bootconf.wpa_psk("net", bad)
        assert bad not in str(e.value)


def boot_and_data(tmp_path: Path) -> tuple[Path, Path]:
    boot, data = tmp_path / "boot", tmp_path / "data"
    boot.mkdir()
    data.mkdir()
    return boot, data


PSK = "correct horse battery"
TOML = f"""# my settings
[setup]
domain = "example.org"  # a comment stays

[wifi]
ssid = "Home \\"5G\\""
psk = "{PSK}"
country = "de"

[time]
ntp = ["10.0.2.2"]
"""


def run_bootconf(boot: Path, data: Path, dropin: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pimail.bootconf", "--boot", str(boot), "--data", str(data),
         "--no-remount", "--timesyncd-dropin", str(dropin)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_wifi_from_pimail_toml_stored_hashed_and_the_psk_leaves_the_card(tmp_path: Path) -> None:
    boot, data = boot_and_data(tmp_path)
    dropin = tmp_path / "run" / "timesyncd.conf"
    (boot / "pimail.toml").write_text(TOML)
    done = run_bootconf(boot, data, dropin)
    assert done.returncode == 0, done.stderr
    assert PSK not in done.stdout + done.stderr
    assert "ssid='Home \"5G\"'" in done.stdout and "country=DE" in done.stdout
    conf = data / "network" / "wpa_supplicant-wlan0.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert stat.S_IMODE(conf.parent.stat().st_mode) == 0o700
    text = conf.read_text()
    assert PSK not in text
    ssid = 'Home "5G"'
    assert "psk=" + bootconf.wpa_psk(ssid, PSK) in text
    assert "ssid=" + ssid.encode().hex() in text and "country=DE" in text
    # The boot partition: the same settings, no psk (parsed), a note where it was.
    after = (boot / "pimail.toml").read_text()
    assert PSK not in after and bootconf.PSK_REMOVED in after and "# a comment stays" in after
    document = tomllib.loads(after)
    assert document["wifi"] == {"ssid": 'Home "5G"', "country": "de"}
    assert document["setup"] == {"domain": "example.org"} and document["time"]["ntp"] == [
        "10.0.2.2"
    ]
    assert dropin.read_text().endswith("[Time]\nNTP=10.0.2.2\n")
    # The next boot: the psk is gone from the card, the stored network stays.
    stored = conf.read_bytes()
    again = run_bootconf(boot, data, dropin)
    assert again.returncode == 0, again.stderr
    assert "wifi" not in again.stdout and conf.read_bytes() == stored
    # The setup table is still applied by `pimail setup apply` (it ignores [wifi]).


def test_the_raspberry_pi_imagers_wpa_supplicant_conf(tmp_path: Path) -> None:
    boot, data = boot_and_data(tmp_path)
    (boot / "wpa_supplicant.conf").write_text(
        "ctrl_interface=DIR=/var/run/wpa_supplicant GROUP=netdev\nupdate_config=1\ncountry=GB\n"
        f'\nnetwork={{\n\tssid="cafe"\n\tpsk="{PSK}"\n\tscan_ssid=1\n}}\n'
    )
    done = run_bootconf(boot, data, tmp_path / "dropin")
    assert done.returncode == 0, done.stderr
    assert not (boot / "wpa_supplicant.conf").exists()
    text = (data / "network" / "wpa_supplicant-wlan0.conf").read_text()
    assert "psk=" + bootconf.wpa_psk("cafe", PSK) in text and "scan_ssid=1" in text
    assert "country=GB" in text and PSK not in done.stdout + done.stderr
    assert not (tmp_path / "dropin").exists()  # no [time]: timesyncd keeps its servers


def test_the_scrub_overwrites_the_old_text_in_place(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("secret text here\n")
    inode = path.stat().st_ino
    bootconf.scrub(path, b"new\n")
    assert path.read_bytes() == b"new\n" and path.stat().st_ino == inode


@pytest.mark.parametrize(
    "table, error",
    [
        ({"ssid": "", "psk": PSK}, "ssid"),
        ({"ssid": "x" * 33, "psk": PSK}, "ssid"),
        ({"ssid": "net", "psk": "short"}, "8 to 63"),
        ({"ssid": "net", "psk": PSK, "country": "Germany"}, "two letters"),
        ({"ssid": "net", "psk": 12345678}, "string"),
    ],
)
def test_bad_wifi_tables_are_refused_without_the_key(table: dict, error: str) -> None:
    with pytest.raises(bootconf.BootConfError) as e:
        bootconf.wifi_from_table(table)
    assert error in str(e.value)
    assert PSK not in str(e.value) and "short" not in str(e.value)


def test_an_inline_table_psk_is_refused_not_half_removed() -> None:
    text = f'wifi = {{ ssid = "net", psk = "{PSK}" }}\n'
    with pytest.raises(bootconf.BootConfError) as e:
        bootconf.toml_without_psk(text)
    assert PSK not in str(e.value)


def test_an_open_network_and_a_repr_without_the_key() -> None:
    wifi = bootconf.wifi_from_table({"ssid": "library"})
    assert wifi is not None and wifi.key == ""
    assert "key_mgmt=NONE" in bootconf.render_wpa_conf(wifi)
    secured = bootconf.wifi_from_table({"ssid": "home", "psk": PSK})
    assert secured is not None and secured.key not in repr(secured)


def test_setup_apply_takes_a_file_with_only_wifi(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server: PimailServer = make_server()
    only = tmp_path / "pimail.toml"
    only.write_text('[wifi]\nssid = "home"\n')
    done = server.cli("setup", "apply", str(only))
    assert "nothing to apply" in done.stdout
    empty = tmp_path / "empty.toml"
    empty.write_text("# nothing\n")
    assert server.cli("setup", "apply", str(empty), check=False).returncode == 1


# -- the setup wizard without the boot partition -----------------------------------------------


@pytest.mark.parametrize(
    "address, loopback",
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("::ffff:127.0.0.1", True),
     ("10.0.2.2", False), ("192.168.1.2", False), ("fe80::1%eth0", False), ("", False),
     (None, False), ("bogus", False)],
)  # fmt: skip
def test_loopback(address: str | None, loopback: bool) -> None:
    assert wizard.is_loopback(address) is loopback


def test_boot_partition_missing() -> None:
    assert not wizard.boot_partition_missing("")  # not an appliance
    assert not wizard.boot_partition_missing("/")  # a mount point
    assert wizard.boot_partition_missing("/nonexistent-boot")
    assert wizard.boot_token_file("/b") == Path("/b/pimail-setup-token")


def with_boot_dir(server: PimailServer, boot_dir: str) -> None:
    lines = server.config.read_text().splitlines()
    server.config.write_text("\n".join([f'boot_dir = "{boot_dir}"', *lines]) + "\n")


def test_wizard_says_why_when_the_boot_partition_is_not_mounted(
    make_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from web.test_wizard import browser

    unmounted = tmp_path / "boot-firmware"
    unmounted.mkdir()
    server: PimailServer = make_server()
    with_boot_dir(server, str(unmounted))
    server.start()
    assert "boot partition not mounted" in server.log.read_text()
    page = browser(server).get("/setup")
    # Loopback may go on (the box itself); the page says the network may not.
    assert page.status == 200
    assert "boot partition is not mounted" in page.text and "loopback" in page.text
    server.stop()
    mounted: PimailServer = make_server(name="mounted")
    with_boot_dir(mounted, "/")
    mounted.start()
    page = browser(mounted).get("/setup")
    assert page.status == 200 and "boot partition is not mounted" not in page.text
    assert "boot partition not mounted" not in mounted.log.read_text()
