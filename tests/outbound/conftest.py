"""Fixtures for the outbound tests (the world they run in: queue_env.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .queue_env import Outbound


@pytest.fixture
def outbound(tmp_path: Path, make_server: Any) -> Iterator[Outbound]:
    env = Outbound(tmp_path, make_server)
    yield env
    env.close()
