"""Client commands: talk to the controller's REST API."""

from __future__ import annotations

from typing import Any


def add_commands(sub: Any) -> None:
    """Registers hosts and jobs commands."""
