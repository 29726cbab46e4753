"""Client commands: talk to the controller's REST API (hosts, jobs)."""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli import hosts, jobs
from controller.cli.common import add_api_options


def add_commands(sub: Any) -> None:
    """Registers hosts and jobs commands."""
    common = argparse.ArgumentParser(add_help=False)
    add_api_options(common)
    common.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    hosts.add_commands(sub, common)
    jobs.add_commands(sub, common)
