"""The device's resolver and ClamAV decisions, on the host (issue 15 items 4, 5).

The image runs them for real in tests/qemu/test_dnslists.py (unbound, the DNS
lists through it, ClamAV off on 512 MB). Here: the memory rule for ClamAV over
the boards pimail runs on, the state file the boot unit writes and the device
profile reads (through the real `python3 -m pimail.filter.clamav_fit`), the
device and development profiles, and the unbound lines made from
dns.stub_zones, including the entries that must never reach unbound.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pimail import config
from pimail.dns import unbound
from pimail.filter import clamav_fit

APP = Path(__file__).resolve().parents[2] / "app"


def meminfo(kib: int) -> str:
    return f"MemTotal:       {kib} kB\nMemFree:          123456 kB\nMemAvailable:   99 kB\n"


# MemTotal as the boards report it (the firmware and GPU keep some of the RAM).
BOARDS = [
    ("Pi Zero 2 W, 512 MB", 443_000, False),
    ("Pi 3 B, 1 GB", 910_000, False),
    ("Pi 4 B, 2 GB", 1_893_000, False),
    ("just under the line", clamav_fit.MIN_MEMORY_KIB - 1, False),
    ("exactly the line", clamav_fit.MIN_MEMORY_KIB, True),
    ("Pi 4 B / CM4, 4 GB", 3_884_000, True),
    ("Pi 4 B, 8 GB", 7_999_000, True),
]


@pytest.mark.parametrize(("board", "kib", "on"), BOARDS, ids=[b[0] for b in BOARDS])
def test_clamav_runs_only_with_the_memory(board: str, kib: int, on: bool) -> None:
    decision = clamav_fit.decide(meminfo(kib))
    assert decision.on is on
    assert decision.reason.startswith("on (memory: " if on else "off (memory: ")
    assert f"{kib // 1024} MiB" in decision.reason and "ClamAV needs 3584 MiB" in decision.reason


@pytest.mark.parametrize(
    "text", ["", "MemFree: 9999999 kB\n", "MemTotal: lots kB\n", "MemTotal:\n", "\x00\xff garbage"]
)
def test_unreadable_meminfo_means_off(text: str) -> None:
    decision = clamav_fit.decide(text)
    assert not decision.on and decision.reason.startswith("off (memory unknown")


def run_decision(tmp_path: Path, kib: int) -> Path:
    """The boot unit's command, as a real process."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    info = tmp_path / "meminfo"
    info.write_text(meminfo(kib))
    state = tmp_path / "state"
    out = subprocess.run(
        [sys.executable, "-m", "pimail.filter.clamav_fit", "--meminfo", str(info),
         "--state-dir", str(state)],
        cwd=APP, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert out.stdout.startswith("pimail-clamav: ClamAV ")
    return state


def test_state_file_decides_the_device_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = run_decision(tmp_path / "big", 3_884_000)
    assert (big / "on").exists()
    monkeypatch.setattr(clamav_fit, "STATE_DIR", big)
    device = config.device_defaults()
    assert device.filter.clamd == "unix:/run/clamav/clamd.ctl"
    # Mail is not held while clamd loads or freshclam has no database yet.
    assert device.filter.clamd_unreachable == "accept"

    small = run_decision(tmp_path / "small", 443_000)
    assert not (small / "on").exists()
    monkeypatch.setattr(clamav_fit, "STATE_DIR", small)
    assert config.device_defaults().filter.clamd == ""
    assert clamav_fit.read_state().reason.startswith("off (memory: 432 MiB")

    # The same directory decided again on a smaller board: "on" goes away.
    again = run_decision(tmp_path / "big", 443_000)
    assert again == big and not (big / "on").exists()
    monkeypatch.setattr(clamav_fit, "STATE_DIR", big)
    assert not clamav_fit.read_state().on


def test_no_decision_is_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clamav_fit, "STATE_DIR", tmp_path / "nothing")
    assert clamav_fit.read_state() == clamav_fit.Decision(
        False, "off (no decision: not the device image)"
    )
    assert config.device_defaults().filter.clamd == ""
    # A stray "on" without an "on" reason is not trusted.
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "on").write_text("")
    (tmp_path / "odd" / "state").write_text("off (memory: 1 MiB)\n")
    monkeypatch.setattr(clamav_fit, "STATE_DIR", tmp_path / "odd")
    assert not clamav_fit.read_state().on


def test_device_asks_its_unbound_and_turns_the_lists_on() -> None:
    device = config.device_defaults()
    assert device.dns.nameservers == ["127.0.0.1:5335", "[::1]:5335"]
    assert device.filter.dnsbl_resolver == ""  # the lists ask the same resolver
    assert device.filter.dnsbl_zones == list(config.DEVICE_DNSBL_ZONES)
    assert device.filter.dnsbl_domain_zones == list(config.DEVICE_DNSBL_DOMAIN_ZONES)
    assert device.filter.dnsbl_skip_private is True
    # Development keeps the system's resolver and asks no list.
    dev = config.Settings()
    assert dev.dns.nameservers == [] and dev.dns.stub_zones == []
    assert dev.filter.dnsbl_zones == [] and dev.filter.dnsbl_domain_zones == []


# -- unbound's stub zones (dns.stub_zones) -------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "stub"),
    [
        ("lan.example=192.168.1.5", unbound.StubZone("lan.example", "192.168.1.5", 53, False)),
        ("Lan.Example.=192.168.1.5:5300",
         unbound.StubZone("lan.example", "192.168.1.5", 5300, False)),
        ("test=tcp:10.0.2.100:53", unbound.StubZone("test", "10.0.2.100", 53, True)),
        ("168.192.in-addr.arpa=[fd00::53]",
         unbound.StubZone("168.192.in-addr.arpa", "fd00::53", 53, False)),
        ("bl.lan = TCP:[::1]:5353", unbound.StubZone("bl.lan", "::1", 5353, True)),
    ],
)  # fmt: skip
def test_stub_zone_entries(entry: str, stub: unbound.StubZone) -> None:
    assert unbound.parse_stub(entry) == stub


BAD_STUBS = [
    "",
    "lan.example",  # no server
    "lan.example=",
    "=192.168.1.5",
    "lan.example=dns.lan.example",  # a name: unbound's stub-addr takes addresses
    "lan.example=192.168.1.5:0",
    "lan.example=192.168.1.5:65536",
    "lan.example=192.168.1.5:53x",
    "lan.example=[::1]53",
    'lan"example=192.168.1.5',  # quotes would end unbound's string
    "lan.example=192.168.1.5\ninclude: /etc/shadow",
    "lan.example\nserver:=192.168.1.5",
    "lan example=192.168.1.5",
    "a..b=192.168.1.5",
]


@pytest.mark.parametrize("entry", BAD_STUBS)
def test_bad_stub_zones_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        unbound.parse_stub(entry)


def test_unbound_lines_leave_bad_entries_out_as_comments() -> None:
    text = unbound.stubs_conf(["test=tcp:10.0.2.100:53", *BAD_STUBS, "lan.example=127.0.0.1:5300"])
    lines = text.splitlines()
    # Every bad entry is one comment line: no newline, quote or clause of it got through.
    assert sum(line.startswith("# left out: ") for line in lines) == len(BAD_STUBS)
    assert not any("shadow" in line and not line.startswith("#") for line in lines)
    body = [line for line in lines if not line.startswith("#")]
    assert body == [
        "server:",
        "    do-not-query-localhost: no",  # a stub on loopback
        '    domain-insecure: "test"',
        '    local-zone: "test." transparent',
        '    domain-insecure: "lan.example"',
        '    local-zone: "lan.example." transparent',
        "stub-zone:",
        '    name: "test"',
        "    stub-addr: 10.0.2.100@53",
        "    stub-tcp-upstream: yes",
        "stub-zone:",
        '    name: "lan.example"',
        "    stub-addr: 127.0.0.1@5300",
    ]
    # Nothing at all: a comment, which unbound's include takes as it is.
    assert unbound.stubs_conf([]).startswith("# Written by pimail")
    assert "server:" not in unbound.stubs_conf([])


def test_unbound_lines_from_the_settings_file(tmp_path: Path) -> None:
    """What pimail-unbound-setup runs, as a real process over a settings file."""
    toml = tmp_path / "pimail.toml"
    toml.write_text(
        f'data_dir = "{tmp_path}"\n[dns]\nstub_zones = ["lan.example=192.168.1.5", "bad"]\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "pimail.dns.unbound", "--config", str(toml)],
        cwd=APP, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert "stub-addr: 192.168.1.5@53" in out.stdout
    assert "# left out: " in out.stdout and "bad" in out.stderr
    # Unreadable settings: unbound still gets a file it can include.
    toml.write_text("[dns\n")
    out = subprocess.run(
        [sys.executable, "-m", "pimail.dns.unbound", "--config", str(toml)],
        cwd=APP, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert out.stdout.startswith("# Written by pimail") and "stub-zone" not in out.stdout
