"""Without a PIMAIL-DATA disk the SD card's own data partition serves /data,
grown at first boot to fill the card (here: an image made 512 MiB larger)."""

from __future__ import annotations

import shutil
import smtplib

from .test_appliance import ADMIN, DOMAIN, IMAGE, PASSWORD, REPO, pimailvm

GROW_MB = 512
ORIGINAL_DATA_BYTES = 128 * 1024 * 1024


def test_sd_card_data_partition_grows_and_serves_mail() -> None:
    workdir = REPO / "test-output" / "qemu-sd"
    shutil.rmtree(workdir, ignore_errors=True)
    m = pimailvm.Machine(
        workdir=workdir, image=IMAGE, memory_mb=512, data_disk=False, grow_sd_mb=GROW_MB
    )
    setup = pimailvm.setup_toml(DOMAIN, ADMIN, pimailvm.password_hash(PASSWORD))
    m.prepare({"pimail.toml": setup, "pimail-selftest": b"on\n"})
    m.start()
    try:
        m.wait_banner(timeout=900)
        with smtplib.SMTP("127.0.0.1", m.ports["smtp"], timeout=60) as s:
            s.sendmail("a@remote.test", [ADMIN], b"Subject: on the SD card\r\n\r\nhello\r\n")
        report = m.selftest()
        fstype, source, _options = report["data_fstype"].split(",", 2)
        # The SD card is the only disk (vda); its partition 4 (label PIMAIL-SD,
        # after the A/B root slots 2 and 3) holds /data.
        assert (fstype, source) == ("ext4", "/dev/vda4")
        assert report["data_owner"] == "pimail"
        # The partition and its filesystem grew into the added space.
        assert int(report["data_bytes"]) > ORIGINAL_DATA_BYTES + GROW_MB * 1024 * 1024 // 2
    finally:
        m.kill()
