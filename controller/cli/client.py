"""Client commands: talk to the controller's REST API (hosts, jobs)."""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli import hosts, jobs
from controller.cli.common import DEFAULT_URL


def add_commands(sub: Any) -> None:
    """Registers hosts and jobs commands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", help=f"the controller's API (env FLEETTRACE_URL, default {DEFAULT_URL})"
    )
    common.add_argument("--token", help="API token (env FLEETTRACE_TOKEN)")
    hosts.add_commands(sub, common)
    jobs.add_commands(sub, common)
