"""store/health.py's DataGuard on a plain directory (development: no mount,
the marker alone), without a server: the states and their announcements."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest

from pimail.store.health import MARKER, DataGuard, Health, StorageUnavailable


def test_first_start_writes_the_marker_and_a_restart_keeps_it(tmp_path: Path) -> None:
    data = tmp_path / "var"
    first = DataGuard(data, reserve_percent=0, reserve_mib=0)
    assert first.claim().ok
    marker = (data / MARKER).read_text().strip()
    assert len(marker) == 32
    assert first.device is None  # ./var: not a mount point, the marker alone
    again = DataGuard(data, reserve_percent=0, reserve_mib=0)
    assert again.claim().ok
    assert again.marker_id == marker


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: (d / MARKER).unlink(), "missing"),  # the disk went: an empty directory
        (lambda d: (d / MARKER).write_text("another\n"), "missing"),  # another disk
        (lambda d: (d / MARKER).unlink() or d.rmdir(), "missing"),  # not even the directory
    ],
)
def test_a_directory_that_is_not_ours_any_more_is_refused(
    tmp_path: Path, change: object, reason: str
) -> None:
    data = tmp_path / "var"
    guard = DataGuard(data, reserve_percent=0, reserve_mib=0)
    guard.claim()
    change(data)  # type: ignore[operator]
    health = guard.check()
    assert health.reason == reason
    assert health.imap_code == "UNAVAILABLE"
    with pytest.raises(StorageUnavailable) as caught:
        guard.require()
    assert caught.value.errno == errno.ENODEV
    assert caught.value.health.smtp_reply.startswith("452 4.3.1 ")


def test_the_reserve_makes_a_disk_full(tmp_path: Path) -> None:
    guard = DataGuard(tmp_path / "var", reserve_percent=100, reserve_mib=0)
    health = guard.claim()
    assert health.reason == "full"
    assert health.imap_code == "LIMIT"
    assert "reserve" in health.detail
    guard.reserve_percent = 0
    assert guard.check().ok


def test_a_failed_write_keeps_it_refused_until_a_write_succeeds(tmp_path: Path) -> None:
    """ext4's emergency read-only shows no ST_RDONLY: a write that failed with
    EROFS keeps the disk refused, each look trying a write, until one works."""
    data = tmp_path / "var"
    guard = DataGuard(data, reserve_percent=0, reserve_mib=0)
    guard.claim()
    blocker = data / f"{MARKER}.tmp"
    blocker.mkdir()  # the probing write cannot happen (even as root)
    assert guard.is_storage_error(OSError(errno.EROFS, "Read-only file system"))
    assert guard.health.reason == "read-only"
    assert guard.check().reason == "read-only"  # still: the probe failed again
    blocker.rmdir()
    assert guard.check().ok  # the probing write worked
    assert guard.check().ok
    # An error of pimail's own (not the disk's) changes nothing.
    assert not guard.is_storage_error(ValueError("bug"))
    assert not guard.is_storage_error(OSError(errno.ENOENT, "gone"))  # the disk is fine


def test_each_change_is_logged_and_announced_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "var"
    guard = DataGuard(data, reserve_percent=0, reserve_mib=0)
    heard: list[Health] = []
    guard.on_change.append(heard.append)
    guard.claim()
    caplog.set_level(logging.INFO, logger="pimail.store.health")
    (data / MARKER).rename(data / "aside")
    for _ in range(5):
        guard.check()
    (data / "aside").rename(data / MARKER)
    for _ in range(5):
        guard.check()
    assert [h.reason for h in heard] == ["missing", ""]
    text = caplog.text
    assert text.count("storage unavailable") == 1
    assert text.count("storage available again") == 1
