"""The mail pages (to come)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .server import Web


def register(web: Web) -> None:
    """Add this module's pages to the HTTPS application."""
