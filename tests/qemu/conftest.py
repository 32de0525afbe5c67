"""The QEMU end-to-end tests' figures, printed at the end of the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIGURES: dict[str, object] = {}
REPO = Path(__file__).resolve().parents[2]


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not FIGURES:
        return
    terminalreporter.section("pimail image figures (QEMU, 512 MB guest)")
    for key, value in FIGURES.items():
        terminalreporter.write_line(f"{key:32} {value}")
    out = REPO / "test-output" / "qemu"
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures.json").write_text(json.dumps(FIGURES, indent=2) + "\n")


@pytest.fixture(scope="session")
def figures() -> dict[str, object]:
    return FIGURES
