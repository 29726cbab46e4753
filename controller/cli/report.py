"""`fleettrace report JOB [--format json|md|csv|html|...] [-o FILE]`: hosts against the fleet."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from controller.cli.common import add_api_options, api
from controller.cli.errors import CliError
from node_agent.safe_text import printable_lines

FORMATS = ("json", "md", "csv", "html", "openmetrics", "folded", "speedscope")


def add_commands(sub: Any) -> None:
    report = sub.add_parser("report", help="a job's report: outliers, per-host numbers, the fleet")
    report.add_argument("job", help="job id")
    report.add_argument("--format", choices=FORMATS, default="md", help="default: md")
    report.add_argument("--top", type=int, default=10, help="top keys per counter table")
    report.add_argument(
        "--host", help="folded: this host's stacks; html: the differential flame graph's host"
    )
    report.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    add_api_options(report)
    report.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with api(args) as client:
        path = f"/v1/jobs/{args.job}/report"
        params = {"format": args.format, "top": args.top}
        if args.host:
            params["host"] = args.host
        try:
            response = client.http.get(path, params=params, headers=client.headers)
        except httpx.TransportError as exc:
            raise client.unreachable(exc) from None
        if response.status_code >= 400:
            raise client.refused(response)
    text = response.text
    if args.format == "json":
        text = json.dumps(response.json(), indent=2) + "\n"
    if args.output is None:
        # The exports escape in their own formats; this is the terminal's own guard.
        sys.stdout.write(printable_lines(text))
        return 0
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {args.output}: {exc.strerror}", code=1) from None
    return 0
