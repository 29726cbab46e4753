"""Argument types and options both command lines share (fleettrace and fleettrace-agent)."""

from __future__ import annotations

import argparse

from node_agent import durations


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
