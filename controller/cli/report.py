"""`fleettrace report JOB [--format json|md|csv|html|...] [-o FILE]`: hosts against the fleet."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from controller.cli.common import add_api_options, api, write_output

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
    params = {"format": args.format, "top": args.top}
    if args.host:
        params["host"] = args.host
    with api(args) as client:
        text = client.text(f"/v1/jobs/{args.job}/report", params)
    if args.format == "json":
        text = json.dumps(json.loads(text), indent=2) + "\n"
    # The exports escape in their own formats; write_output is the terminal's own guard.
    write_output(args.output, text)
    return 0
