"""The boot path's cuts (issue 16 item 6) keep the behaviour.

One machine, three boots of the same SD card and data disk:
1. the first boot applies pimail.toml (pimail-firstboot.service, now without
   default dependencies: beside sysinit, still before pimail);
2. a reboot with the file unchanged does not apply it again (no Python start
   on the way to the banner), and pimail serves with what was stored;
3. after the file changed on the boot partition, the next boot applies it.
Each boot also prints systemd-analyze's critical chain to pimail.service (the
self-test's PIMAIL-ANALYZE lines, once the boot is over): unbound is not on it.
"""

from __future__ import annotations

import shutil
import smtplib

from .test_appliance import ADMIN, DOMAIN, IMAGE, PASSWORD, REPO, pimailvm

WORKDIR = REPO / "test-output" / "qemu-boottime"
ANALYZE = "PIMAIL-ANALYZE "


def smtp_greeting(m: pimailvm.Machine) -> str:
    s = smtplib.SMTP(timeout=60)
    try:
        code, text = s.connect(m.host, m.ports["smtp"])
        assert code == 220
        s.quit()
    finally:
        s.close()
    return text.decode()


def analyze_lines(m: pimailvm.Machine) -> list[str]:
    m.wait_console(ANALYZE + "done=1", timeout=600)
    text = m.console.read_text(errors="replace")
    return [
        line[line.find(ANALYZE) + len(ANALYZE) :] for line in text.splitlines() if ANALYZE in line
    ]


def test_boot_file_applied_once_and_again_when_changed(figures: dict) -> None:
    shutil.rmtree(WORKDIR, ignore_errors=True)
    m = pimailvm.Machine(workdir=WORKDIR, image=IMAGE, memory_mb=512)
    setup = pimailvm.setup_toml(DOMAIN, ADMIN, pimailvm.password_hash(PASSWORD))
    m.prepare({"pimail.toml": setup, "pimail-selftest": b"on\n"})
    journals, greetings, chains = [], [], []
    try:
        for boot in range(3):
            if boot == 2:  # the user edits the file on the card (another host name)
                changed = setup.replace(f"mail.{DOMAIN}".encode(), f"mx.{DOMAIN}".encode())
                assert changed != setup
                pimailvm.boot_write(m.sd, "pimail.toml", changed)
            m.start()
            figures[f"boottime_boot{boot + 1}_smtp_banner_s"] = round(m.wait_banner(900), 1)
            greetings.append(smtp_greeting(m))
            report = m.selftest()
            assert report["pimail_active"] == "active"
            assert "pimail-firstboot" not in report["failed_units"]
            chains.append(analyze_lines(m))
            m.powerdown()
            journals.append(pimailvm.data_disk_read(m.data, "selftest-journal.txt"))
    finally:
        m.kill()

    # 1: applied (the account and the host name are reported by `setup apply`).
    assert f"added account {ADMIN} (admin)" in journals[0]
    assert f"hostname = mail.{DOMAIN}" in journals[0]
    assert greetings[0].startswith(f"mail.{DOMAIN}")
    # 2: the same file is not applied again; what it stored is still served.
    assert "hostname = " not in journals[1]
    assert "added account" not in journals[1]
    assert greetings[1].startswith(f"mail.{DOMAIN}")
    # 3: the changed file is applied at the next boot, before pimail starts.
    assert f"hostname = mx.{DOMAIN}" in journals[2]
    assert "added account" not in journals[2]  # the account exists: left as it is
    assert greetings[2].startswith(f"mx.{DOMAIN}")

    for lines in chains:
        # `systemd-analyze critical-chain pimail.service`: pimail, then (each
        # "└─" deeper) the units it waited for; unbound starts beside it.
        top = next(i for i, x in enumerate(lines) if x.startswith("pimail.service"))
        chain = [lines[top]]
        for line in lines[top + 1 :]:
            if "└─" not in line:
                break
            chain.append(line)
        assert len(chain) > 1, lines
        assert not any("unbound.service" in x for x in chain), chain
