"""The QEMU end-to-end tests' figures, printed at the end of the run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

FIGURES: dict[str, object] = {}
REPO = Path(__file__).resolve().parents[2]


OUT = REPO / "test-output" / "qemu" / "figures.json"
LOADED = time.time()  # this run's collection: an older figures.json is not this run's


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Under pytest-xdist the QEMU tests run in a worker: its figures reach the
    # controller's summary through the file.
    if FIGURES:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(FIGURES, indent=2) + "\n")


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    fresh = OUT.exists() and OUT.stat().st_mtime >= LOADED
    figures = FIGURES or (json.loads(OUT.read_text()) if fresh else {})
    if not figures:
        return
    terminalreporter.section("pimail image figures (QEMU, 512 MB guest)")
    for key, value in figures.items():
        terminalreporter.write_line(f"{key:32} {value}")


@pytest.fixture(scope="session")
def figures() -> dict[str, object]:
    return FIGURES
