"""The boot partition's system settings: Wi-Fi and network time (issue 16).

`python3 -m pimail.bootconf --boot /boot/firmware --data /data`, as root, from
pimail-bootconf.service at every boot (the [setup] table is `pimail setup
apply`'s, run as pimail). What it reads, on the card's FAT boot partition
(a user writes it from any computer):

    pimail.toml
        [wifi]
        ssid = "home"
        psk = "the passphrase"      # 8-63 characters, or 64 hex digits (the key)
        country = "DE"              # ISO 3166-1 alpha-2: the radio rules
        hidden = false              # optional: the network does not announce itself
        [time]
        ntp = ["ntp.example.net"]   # optional: NTP servers (systemd-timesyncd NTP=)

    wpa_supplicant.conf             # the Raspberry Pi Imager's older convention:
                                    # country= and the first network={ ssid psk }

What it writes: <data>/network/wpa_supplicant-wlan0.conf (mode 0600, in a
0700 directory) with the PSK only as its PBKDF2 hash (IEEE 802.11i-2004
H.4, what wpa_passphrase prints), read by wpa_supplicant@wlan0 (a drop-in
points it there) when wlan0 appears; systemd-networkd runs DHCP on it. Then
the passphrase leaves the boot partition: pimail.toml is rewritten without
the psk line, and wpa_supplicant.conf is removed, each first overwritten in
place so its old clusters do not keep it. The PSK is never printed or logged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .store.maildir import fsync_dir as _fsync_dir

log = logging.getLogger(__name__)

TOML_NAME = "pimail.toml"
IMAGER_NAME = "wpa_supplicant.conf"
NETWORK_DIR = "network"  # under the data directory
WPA_CONF = "wpa_supplicant-wlan0.conf"
WIFI_STATE = "wifi.json"  # ssid and country of what is stored, never the key
TIMESYNCD_DROPIN = Path("/run/systemd/timesyncd.conf.d/50-pimail-boot.conf")
PSK_REMOVED = "# psk: stored on the data disk (hashed) and removed from here by pimail"
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")
_NTP_NAME = re.compile(r"^[A-Za-z0-9.:_\[\]-]{1,253}$")


class BootConfError(ValueError):
    """What is wrong with the boot partition's settings (never quotes a key)."""


@dataclass(frozen=True)
class Wifi:
    ssid: str
    key: str  # 64 hex digits (the PSK), or "" for an open network
    country: str = ""
    hidden: bool = False

    def __repr__(self) -> str:  # never the key
        return f"Wifi(ssid={self.ssid!r}, country={self.country!r}, hidden={self.hidden})"


def wpa_psk(ssid: str, passphrase: str) -> str:
    """IEEE 802.11i-2004 H.4: PSK = PBKDF2-HMAC-SHA1(passphrase, SSID, 4096, 256 bits),
    as wpa_passphrase computes it; 64 hex digits pass through as the key itself."""
    if _HEX_KEY.match(passphrase):
        return passphrase.lower()
    # H.4.1: the pass-phrase is 8 to 63 printable ASCII characters.
    if not 8 <= len(passphrase) <= 63 or not all(32 <= ord(c) <= 126 for c in passphrase):
        raise BootConfError("the Wi-Fi psk must be 8 to 63 printable ASCII characters")
    ssid_octets = ssid.encode("utf-8")
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode("ascii"), ssid_octets, 4096, 32).hex()


def _country(value: Any) -> str:
    country = str(value or "").strip().upper()
    if country and not _COUNTRY.match(country):
        raise BootConfError(f"[wifi] country must be two letters (ISO 3166-1), not {country!r}")
    return country


def _ssid(value: Any) -> str:
    ssid = value if isinstance(value, str) else ""
    # IEEE 802.11-2020 9.4.2.2: an SSID is 0 to 32 octets.
    if not ssid or len(ssid.encode("utf-8")) > 32:
        raise BootConfError("[wifi] ssid must be 1 to 32 octets")
    return ssid


def wifi_from_table(table: dict[str, Any], stored: dict[str, Any] | None = None) -> Wifi | None:
    """A [wifi] table; None when it has no psk and names the network already
    stored (the psk was taken out at an earlier boot): nothing to change.
    Without a psk (and none stored for this SSID) the network is open."""
    ssid = _ssid(table.get("ssid"))
    country = _country(table.get("country"))
    hidden = bool(table.get("hidden", False))
    if "psk" not in table:
        if stored and stored.get("ssid") == ssid:
            same = stored.get("country", "") == country and stored.get("hidden") == hidden
            if same or not stored.get("secured"):
                return None if same else Wifi(ssid, "", country, hidden)
            raise BootConfError(
                "[wifi] country or hidden changed without a psk: add the psk again to change them"
            )
        return Wifi(ssid, "", country, hidden)
    psk = table["psk"]
    if not isinstance(psk, str):
        raise BootConfError("[wifi] psk must be a string")
    return Wifi(ssid, wpa_psk(ssid, psk), country, hidden)


def _unquote(value: str) -> tuple[str, bool]:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1], True
    return value, False


def wifi_from_imager(text: str) -> Wifi | None:
    """The first network of a wpa_supplicant.conf (the Raspberry Pi Imager's
    older convention): country=, network={ ssid="..." psk="..." or psk=<hex> }."""
    country = ""
    network: dict[str, tuple[str, bool]] | None = None
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not inside and line.startswith("country="):
            country = _country(line.partition("=")[2].strip().strip('"'))
        elif not inside and re.match(r"^network\s*=\s*\{$", line):
            inside, network = True, {}
        elif inside and line == "}":
            break
        elif inside and network is not None and "=" in line:
            key, _, value = line.partition("=")
            network[key.strip()] = _unquote(value)
    if not network or "ssid" not in network:
        return None
    ssid_value, quoted = network["ssid"]
    ssid = ssid_value if quoted else bytes.fromhex(ssid_value).decode("utf-8", "replace")
    _ssid(ssid)
    hidden = network.get("scan_ssid", ("0", False))[0] == "1"
    if "psk" not in network:
        return Wifi(ssid, "", country, hidden)
    psk, quoted = network["psk"]
    if not quoted and not _HEX_KEY.match(psk):
        raise BootConfError(f'{IMAGER_NAME}: psk is neither "a passphrase" nor 64 hex digits')
    return Wifi(ssid, wpa_psk(ssid, psk), country, hidden)


def render_wpa_conf(wifi: Wifi) -> str:
    """wpa_supplicant.conf(5) for one network; the SSID in hex (any octets, no quoting)."""
    lines = [
        "# Written by pimail (pimail-bootconf.service) from the boot partition.",
        "ctrl_interface=DIR=/run/wpa_supplicant GROUP=netdev",
        "update_config=0",
    ]
    if wifi.country:
        lines.append(f"country={wifi.country}")
    lines += ["network={", f"\tssid={wifi.ssid.encode('utf-8').hex()}"]
    if wifi.key:
        # WPA2-Personal, and WPA3 networks in transition mode; SAE alone needs
        # the passphrase itself, which is not kept.
        lines += [f"\tpsk={wifi.key}", "\tkey_mgmt=WPA-PSK WPA-PSK-SHA256", "\tieee80211w=1"]
    else:
        lines.append("\tkey_mgmt=NONE")
    if wifi.hidden:
        lines.append("\tscan_ssid=1")
    lines.append("}")
    return "\n".join(lines) + "\n"


def toml_without_psk(text: str) -> str:
    """pimail.toml with the [wifi] table's psk line replaced by a note, all else
    as it was; checked by parsing both (BootConfError if that cannot be done)."""
    out, table, removed = [], "", False
    for line in text.splitlines(keepends=True):
        header = re.match(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$", line)
        if header:
            table = header.group(1)
        elif table == "wifi" and re.match(r"^\s*psk\s*=", line):
            out.append(PSK_REMOVED + "\n")
            removed = True
            continue
        out.append(line)
    new = "".join(out)
    try:
        before, after = tomllib.loads(text), tomllib.loads(new)
    except tomllib.TOMLDecodeError as e:
        raise BootConfError(f"{TOML_NAME} cannot be rewritten without the psk: {e}") from None
    wifi_before = dict(before.get("wifi", {}))
    wifi_before.pop("psk", None)
    if (
        not removed
        or after.get("wifi") != wifi_before
        or {**after, "wifi": None}
        != {
            **before,
            "wifi": None,
        }
    ):
        raise BootConfError(f"{TOML_NAME}: the psk is not on a line of its own in [wifi]")
    return new


def ntp_servers(document: dict[str, Any]) -> list[str]:
    table = document.get("time", {})
    servers = table.get("ntp", []) if isinstance(table, dict) else []
    if isinstance(servers, str):
        servers = servers.split()
    if not isinstance(servers, list) or not all(
        isinstance(s, str) and _NTP_NAME.match(s) for s in servers
    ):
        raise BootConfError("[time] ntp must be a list of host names or addresses")
    return list(servers)


# -- files -------------------------------------------------------------------------------------


def write_private(path: Path, text: str) -> None:
    """Atomically, mode 0600, in a 0700 directory, synced."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def scrub(path: Path, replacement: bytes | None) -> None:
    """Overwrite a file in place with zeros (FAT rewrites the same clusters, so
    the old text is not left in free space), then give it `replacement`, or
    remove it (None)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.write(b"\0" * size)
        f.flush()
        os.fsync(f.fileno())
        if replacement is not None:
            f.seek(0)
            f.write(replacement)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
    if replacement is None:
        path.unlink()
    _fsync_dir(path.parent)


def _remount(boot: Path, mode: str) -> None:
    if os.path.ismount(boot):
        subprocess.run(["mount", "-o", f"remount,{mode}", str(boot)], check=True)


# -- the whole ------------------------------------------------------------------------------------


def apply(
    boot: Path, data: Path, remount: bool = True, dropin: Path = TIMESYNCD_DROPIN
) -> list[str]:
    """Take the boot partition's Wi-Fi and time settings; one line per thing
    done (none names the key)."""
    done: list[str] = []
    toml_path, imager_path = boot / TOML_NAME, boot / IMAGER_NAME
    network = data / NETWORK_DIR
    try:
        stored = json.loads((network / WIFI_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = None
    document: dict[str, Any] = {}
    text = ""
    if toml_path.exists():
        text = toml_path.read_text(encoding="utf-8")
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise BootConfError(f"{toml_path}: {e}") from None
    wifi: Wifi | None = None
    source = ""
    if imager_path.exists():
        wifi, source = (
            wifi_from_imager(imager_path.read_text(encoding="utf-8", errors="replace")),
            IMAGER_NAME,
        )
    table = document.get("wifi")
    if isinstance(table, dict) and table:
        wifi, source = wifi_from_table(table, stored), TOML_NAME  # pimail.toml wins
    if wifi is not None:
        write_private(network / WPA_CONF, render_wpa_conf(wifi))
        state = {
            "ssid": wifi.ssid,
            "country": wifi.country,
            "hidden": wifi.hidden,
            "secured": bool(wifi.key),
        }
        write_private(network / WIFI_STATE, json.dumps(state) + "\n")
        done.append(
            f"wifi ssid={wifi.ssid!r} country={wifi.country or '-'} "
            f"security={'wpa-psk' if wifi.key else 'open'} from={source} "
            f"stored={network / WPA_CONF}"
        )
    secret_in_toml = isinstance(table, dict) and "psk" in table
    if secret_in_toml or imager_path.exists():
        if remount:
            _remount(boot, "rw")
        try:
            if secret_in_toml:
                scrub(toml_path, toml_without_psk(text).encode("utf-8"))
                done.append(f"psk removed from {toml_path}")
            if imager_path.exists():
                scrub(imager_path, None)
                done.append(f"{imager_path} removed")
        finally:
            if remount:
                _remount(boot, "ro")
    servers = ntp_servers(document)
    if servers:
        dropin.parent.mkdir(parents=True, exist_ok=True)
        dropin.write_text(
            "# pimail.toml [time] on the boot partition\n[Time]\nNTP=" + " ".join(servers) + "\n"
        )
        done.append(f"ntp servers={','.join(servers)}")
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python3 -m pimail.bootconf", description=__doc__.splitlines()[0]
    )
    p.add_argument("--boot", type=Path, default=Path("/boot/firmware"))
    p.add_argument("--data", type=Path, default=Path("/data"))
    p.add_argument(
        "--no-remount", action="store_true", help="the boot partition is writable as it is"
    )
    p.add_argument("--timesyncd-dropin", type=Path, default=TIMESYNCD_DROPIN)
    args = p.parse_args(argv)
    try:
        lines = apply(args.boot, args.data, not args.no_remount, args.timesyncd_dropin)
    except BootConfError as e:
        print(f"pimail-bootconf: {e}", file=sys.stderr)
        return 1
    for line in lines:
        print(f"pimail-bootconf: {line}")
    if args.timesyncd_dropin == TIMESYNCD_DROPIN and any(line.startswith("ntp ") for line in lines):
        subprocess.run(
            ["systemctl", "--no-block", "try-restart", "systemd-timesyncd.service"], check=False
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
