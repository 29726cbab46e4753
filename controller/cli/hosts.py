"""`fleettrace hosts list|show|add`."""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli.common import api, pair, print_json
from controller.cli.text import Line, Style, emit, plural, since, table_lines, when
from controller.hosts.models import HostPublic


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    hosts = sub.add_parser("hosts", help="list, show and register hosts")
    hsub = hosts.add_subparsers(dest="hosts_command", required=True)

    listing = hsub.add_parser("list", parents=[common], help="hosts with state and labels")
    listing.add_argument(
        "--selector", type=pair, action="append", default=[], metavar="K=V", help="label filter"
    )
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_list)

    show = hsub.add_parser("show", parents=[common], help="one host and its capabilities")
    show.add_argument("name")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)

    add = hsub.add_parser("add", parents=[common], help="register a host (admin)")
    add.add_argument("name")
    add.add_argument("--address", help="how to reach it (for SSH bootstrap)")
    add.add_argument("--label", type=pair, action="append", default=[], metavar="K=V")
    add.add_argument("--json", action="store_true")
    add.set_defaults(func=cmd_add)


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def cmd_list(args: argparse.Namespace) -> int:
    params = [("selector", f"{k}={v}") for k, v in args.selector]
    with api(args) as client:
        data = client.get("/v1/hosts", params=params)
    if args.json:
        print_json(data)
        return 0
    hosts = [HostPublic.model_validate(h) for h in data["data"]]
    if not hosts:
        emit([Line("no hosts" + (" match the selector" if args.selector else ""), "dim")])
        return 0
    rows = [
        [
            h.name,
            h.state,
            _labels(h.labels),
            h.agent_version or "-",
            str((h.capabilities or {}).get("kernel_release") or "-"),
            since(h.last_heartbeat),
        ]
        for h in hosts
    ]
    header = ["NAME", "STATE", "LABELS", "AGENT", "KERNEL", "HEARTBEAT"]
    lines = table_lines(header, rows)
    styles: dict[str, Style] = {"offline": "bad", "never_seen": "dim"}
    for i, host in enumerate(hosts, start=1):
        lines[i] = Line(lines[i].text, styles.get(host.state, ""))
    emit([*lines, Line(plural(len(hosts), "host"), "dim")])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with api(args) as client:
        data = client.get(f"/v1/hosts/{args.name}")
    if args.json:
        print_json(data)
        return 0
    emit(host_lines(HostPublic.model_validate(data)))
    return 0


def host_lines(host: HostPublic) -> list[Line]:
    fields = [
        ("name", host.name),
        ("state", f"{host.state} (last heartbeat {since(host.last_heartbeat)})"),
        ("address", host.address or "-"),
        ("labels", _labels(host.labels)),
        ("agent", host.agent_version or "-"),
        ("registered", when(host.created_at)),
    ]
    caps = host.capabilities
    if caps:
        fields += _capabilities(caps)
    else:
        fields.append(("capabilities", "not reported yet (no heartbeat with a probe)"))
    width = max(len(k) for k, _ in fields) + 2
    return [Line(f"{k + ':':<{width}}{v}", "title" if k == "name" else "") for k, v in fields]


def _capabilities(caps: dict[str, Any]) -> list[tuple[str, str]]:
    headers = str(caps.get("headers", "?"))
    if caps.get("headers_detail"):
        headers += f" ({caps['headers_detail']})"
    errors = caps.get("feature_errors") or {}
    features = [
        name if ok else f"no {name}" + (f" ({errors[name]})" if name in errors else "")
        for name, ok in sorted((caps.get("features") or {}).items())
    ]
    programs = caps.get("programs") or []
    runs = [p["program"] for p in programs if p.get("supported")]
    cannot = [
        f"{p['program']} ({p.get('reason') or 'unsupported'})"
        for p in programs
        if not p.get("supported")
    ]
    out = [
        ("kernel", f"{caps.get('kernel_release', '?')} {caps.get('arch', '')}".strip()),
        ("bcc", str(caps.get("bcc_version") or "-")),
        ("headers", headers),
        ("lockdown", str(caps.get("lockdown") or "-")),
        ("features", ", ".join(features) or "-"),
        ("programs", ", ".join(runs) or "-"),
    ]
    if cannot:
        out.append(("unsupported", "; ".join(cannot)))
    return out


def cmd_add(args: argparse.Namespace) -> int:
    body = {"name": args.name, "address": args.address, "labels": dict(args.label)}
    with api(args) as client:
        data = client.post("/v1/hosts", body)
    if args.json:
        print_json(data)
        return 0
    emit(
        [
            Line(f"added host {data['name']} ({_labels(data['labels'])})"),
            Line("it shows online once its agent sends a heartbeat", "dim"),
        ]
    )
    return 0
