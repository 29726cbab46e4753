"""A bpftrace script as the agent sees it before running it: what it may do (policy)."""

from __future__ import annotations

from node_agent.errors import PolicyViolation

MAX_SCRIPT = 65_536  # characters


def check_script(script: str) -> None:
    """Refuse a script that must not run, naming why; PolicyViolation."""
    if not script.strip():
        raise PolicyViolation("the script is empty")
