"""`fleettrace ingest dead-letters`: stream entries ingest could not store, newest first."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from controller.cli.common import add_api_options, add_paging, api, page_footer, reply, with_example
from controller.cli.text import Line, clip, table_lines, when
from node_agent.safe_text import printable

EPILOG = (
    "example:\n"
    "  $ fleettrace ingest dead-letters --host web-2\n"
    "  TIME                 HOST   ENTRY            SIZE  REASON\n"
    "  2026-11-30 08:41:02  web-2  1764492062000-0   211  unreadable: event: Field required\n"
    "  1 dead letter\n"
    "The entries around a dead letter were stored; --json shows each one's data.\n"
)


def add_command(ingest_sub: Any) -> None:
    letters = with_example(
        ingest_sub,
        "dead-letters",
        EPILOG,
        help="entries ingest could not store, with the reason (admin)",
    )
    add_api_options(letters)
    letters.add_argument("--host", help="only entries from this host's stream")
    add_paging(letters, "entries")
    letters.add_argument("--json", action="store_true", help="with each entry's data")
    letters.set_defaults(func=cmd_dead_letters)


def cmd_dead_letters(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit, "offset": args.offset}
    if args.host:
        params["host"] = args.host
    with api(args) as client:
        data = client.get("/v1/ingest/dead-letters", params=params)
    return reply(args, data, lambda: dead_letter_lines(data))


def dead_letter_lines(data: dict[str, Any]) -> list[Line]:
    rows = data["data"]
    if not rows:
        return [Line("no dead letters", "dim")]
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
    return [*lines, page_footer(len(rows), data["count"], "dead letter")]


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
