"""`fleettrace audit`: who did what, newest first (admin)."""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from controller.cli.common import add_api_options, add_paging, api, page_footer, reply, with_example
from controller.cli.text import Line, Style, clip, table_lines, when
from node_agent.arguments import span

if TYPE_CHECKING:
    from controller.audit.models import AuditRecordPublic

EPILOG = (
    "example:\n"
    "  $ fleettrace audit --since 1h\n"
    "  TIME                 ACTOR  ROLE      ACTION                STATUS  OBJECTS             "
    "  CLIENT    WHY\n"
    "  2026-11-30 06:02:11  ci     operator  create_job            201     job=5f0c hosts=web-1"
    "  10.0.0.4\n"
    "  2026-11-30 06:01:40  web-2  agent     agent.refused.replay"
    "  -       host=web-2 run=8d1e   -         run 8d1e seen before\n"
    "  2026-11-30 05:59:03  ci     viewer    delete_host           403     host=web-1          "
    "  10.0.0.9  this needs the admin role\n"
    "  3 records\n"
)
# Control characters (terminal escapes) in recorded text are shown, never obeyed.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def when_arg(text: str) -> str:
    """'1h', '7d' (that long ago) or an ISO 8601 time -> an ISO time for the API."""
    try:
        ago = span(text)
    except argparse.ArgumentTypeError:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad time {text!r} (use e.g. 1h, 7d or 2026-11-30T06:00:00Z)"
            ) from None
        return moment.isoformat()
    return (datetime.now(timezone.utc) - timedelta(seconds=ago)).isoformat()


def add_commands(sub: Any) -> None:
    audit = with_example(
        sub, "audit", EPILOG, help="the audit log: API calls and agents' refusals (admin)"
    )
    add_api_options(audit)
    audit.add_argument("--actor", help="a token's name or a host's (for agents)")
    audit.add_argument("--action", help="an operation id, e.g. create_job; agent.refused.* works")
    audit.add_argument("--host", help="records about this host")
    audit.add_argument("--since", type=when_arg, metavar="TIME", help="1h, 7d or an ISO time")
    audit.add_argument("--until", type=when_arg, metavar="TIME", help="1h, 7d or an ISO time")
    add_paging(audit, "records")
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    params = {
        name: getattr(args, name)
        for name in ("actor", "action", "host", "since", "until", "limit", "offset")
        if getattr(args, name) is not None
    }
    with api(args) as client:
        data = client.get("/v1/audit", params=params)
    return reply(args, data, lambda: audit_lines(data, filtered=len(params) > 2))


def audit_lines(data: dict[str, Any], *, filtered: bool) -> list[Line]:
    from controller.audit.models import AuditRecordPublic

    records = [AuditRecordPublic.model_validate(r) for r in data["data"]]
    if not records:
        return [Line("no audit records" + (" match" if filtered else ""), "dim")]
    lines = table_lines(
        ["TIME", "ACTOR", "ROLE", "ACTION", "STATUS", "OBJECTS", "CLIENT", "WHY"],
        [_row(r) for r in records],
        styles=[_style(r) for r in records],
    )
    return [*lines, page_footer(len(records), data["count"], "record")]


def _row(record: AuditRecordPublic) -> list[str]:
    objects = " ".join(f"{k}={_value(v)}" for k, v in record.objects.items())
    return [
        when(record.at),
        _safe(record.actor or "-", 24),
        record.role or "-",
        _safe(record.action, 40),
        "-" if record.status is None else str(record.status),
        _safe(objects, 60),
        _safe(record.client or "-", 40),
        _safe(str(record.summary.get("error") or record.summary.get("detail") or ""), 60),
    ]


def _value(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


def _safe(text: str, width: int) -> str:
    return clip(_CONTROL.sub("?", text), width)


def _style(record: AuditRecordPublic) -> Style:
    refused = record.source == "agent" or (record.status or 0) >= 400
    return "bad" if refused else ""
