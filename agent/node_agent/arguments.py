"""Argument types and options both command lines share (fleettrace and fleettrace-agent)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from node_agent import durations
from node_agent.bpftrace.script import MAX_SCRIPT


def parse_duration(text: str) -> float:
    """'30', '30s', '500ms', '2m', '1h' -> seconds, more than zero."""
    seconds = durations.parse(text)
    if seconds is None:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (use e.g. 30s, 500ms, 2m)")
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive, got {text!r}")
    return seconds


def span(text: str) -> float:
    """'90s', '5m', '1h', '7d', '2w' -> seconds, zero allowed: for retention, grace, `--since`."""
    seconds = durations.parse(text)
    if seconds is None:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (use e.g. 5m, 1h, 7d)")
    return seconds


def add_trace_options(parser: argparse.ArgumentParser) -> None:
    """How long a trace runs and what it watches: the same flags on both command lines."""
    parser.add_argument("--duration", type=parse_duration, required=True, help="e.g. 30s, 2m")
    parser.add_argument("--interval", type=parse_duration, help="a snapshot every interval")
    parser.add_argument("--cgroup", help="trace only this cgroup v2 path")
    parser.add_argument("--pid", type=int, help="trace only this process id")
    parser.add_argument("--comm", help="trace only processes with this name")


def add_script_options(parser: argparse.ArgumentParser) -> None:
    """The bpftrace program's script and key names: the same flags on both command lines."""
    script = parser.add_mutually_exclusive_group()
    script.add_argument("--script", help="bpftrace: the script's text")
    script.add_argument("--file", type=Path, help="bpftrace: a script file ('-': stdin)")
    parser.add_argument("--keys", help="bpftrace: key field names, e.g. 'comm' or '@lat=pid,comm'")


def script_params(args: argparse.Namespace, given: Mapping[str, str]) -> dict[str, str]:
    """--script/--file and --keys as the bpftrace program's params (for it only); ValueError
    with one line for the operator. `given`: the --param pairs, which may hold the script."""
    flags = args.script is not None or args.file is not None or args.keys is not None
    if args.program != "bpftrace":
        if flags:
            raise ValueError("--script, --file and --keys are for the bpftrace program")
        return {}
    params: dict[str, str] = {}
    if args.file is not None:
        params["script"] = _read_script(args.file)
    elif args.script is not None:
        params["script"] = args.script
    elif "script" not in given:
        raise ValueError("bpftrace needs --script TEXT or --file F")
    if "script" in params and "script" in given:
        raise ValueError("give the script once: --script/--file or --param script=")
    if len(params.get("script", "")) > MAX_SCRIPT:
        size = len(params["script"])
        raise ValueError(f"the script has {size:,} characters, above the limit of {MAX_SCRIPT:,}")
    if args.keys is not None:
        params["keys"] = args.keys
    return params


def _read_script(path: Path) -> str:
    """At most one character past the limit is read: `--file /dev/zero` ends too."""
    limit = 4 * MAX_SCRIPT + 4  # UTF-8 takes up to 4 bytes a character
    try:
        if str(path) == "-":
            data = sys.stdin.buffer.read(limit)
        else:
            with path.open("rb") as f:
                data = f.read(limit)
    except OSError as exc:
        raise ValueError(f"--file: cannot read {path}: {exc.strerror or exc}") from None
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        if len(data) == limit and exc.start >= limit - 4:  # cut inside the last character
            return data[: exc.start].decode()
        raise ValueError(f"--file: {path} is not UTF-8 text (byte {exc.start})") from None
