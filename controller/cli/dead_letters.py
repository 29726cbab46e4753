"""`fleettrace ingest dead-letters`: stream entries ingest could not store, newest first."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from controller.cli.common import add_api_options, api, print_json
from controller.cli.text import Line, clip, emit, plural, table_lines, when
from node_agent.safe_text import printable

EPILOG = (
    "example:\n"
    "  $ fleettrace ingest dead-letters --host web-2\n"
    "  TIME                 HOST   ENTRY            SIZE  REASON\n"
    "  2026-11-30 08:41:02  web-2  1764492062000-0   211  unreadable: event: Field required\n"
    "  1 dead letter\n"
    "The entries around a dead letter were stored; --json shows each one's data.\n"
)


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"expected 1..1000, got {text!r}")
    return int(text)


def add_command(ingest_sub: Any) -> None:
    letters = ingest_sub.add_parser(
        "dead-letters",
        help="entries ingest could not store, with the reason (admin)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_api_options(letters)
    letters.add_argument("--host", help="only entries from this host's stream")
    letters.add_argument("--limit", type=_count, default=50, help="entries (1..1000, default 50)")
    letters.add_argument("--offset", type=int, default=0, help="skip this many newest entries")
    letters.add_argument("--json", action="store_true", help="with each entry's data")
    letters.set_defaults(func=cmd_dead_letters)


def cmd_dead_letters(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit, "offset": args.offset}
    if args.host:
        params["host"] = args.host
    with api(args) as client:
        data = client.get("/v1/ingest/dead-letters", params=params)
    if args.json:
        print_json(data)
        return 0
    rows = data["data"]
    if not rows:
        emit([Line("no dead letters", "dim")])
        return 0
    lines = table_lines(
        ["TIME", "HOST", "ENTRY", "SIZE", "REASON"],
        [
            [
                when(_time(r["at"])),
                clip(printable(r["host"]), 24),
                clip(printable(r["entry_id"]), 24),
                str(r["size"]),
                clip(printable(r["reason"]), 100),
            ]
            for r in rows
        ],
    )
    total = plural(len(rows), "dead letter")
    if data["count"] > len(rows):
        total += f" of {data['count']} (--offset, --limit for more)"
    emit([*lines, Line(total, "dim")])
    return 0


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
