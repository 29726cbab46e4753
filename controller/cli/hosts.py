"""`fleettrace hosts list|show|add|credential|bootstrap|uninstall`."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from typing import Any

from controller.cli.common import api, command, pair, print_json, reply
from controller.cli.errors import CliError
from controller.cli.text import Line, Style, emit, plural, since, table_lines, when
from controller.hosts import agent_view
from controller.hosts.models import HostPublic


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    hosts = sub.add_parser("hosts", help="list, show and register hosts")
    hsub = hosts.add_subparsers(dest="hosts_command", required=True)

    listing = command(hsub, "list", cmd_list, parents=[common], help="hosts with state and labels")
    listing.add_argument(
        "--selector", type=pair, action="append", default=[], metavar="K=V", help="label filter"
    )

    show = command(hsub, "show", cmd_show, parents=[common], help="one host and its capabilities")
    show.add_argument("name")

    add = command(hsub, "add", cmd_add, parents=[common], help="register a host (admin)")
    add.add_argument("name")
    add.add_argument("--address", help="how to reach it (for SSH bootstrap)")
    add.add_argument("--ssh-user", default="root", help="SSH user (non-root: passwordless sudo)")
    add.add_argument("--port", type=int, default=22, help="SSH port")
    add.add_argument("--label", type=pair, action="append", default=[], metavar="K=V")
    add.add_argument("--fingerprint", help="pin the SSH host key (SHA256:... from ssh-keygen -lf)")
    add.add_argument(
        "--trust-on-first-use",
        action="store_true",
        help="pin whatever host key the first bootstrap sees",
    )
    add.add_argument("--cgroup", help="cgroup v2 path the agent confines every trace to")

    credential = command(
        hsub,
        "credential",
        cmd_credential,
        parents=[common],
        help="issue a host a new Redis identity and print its join command (admin)",
        description="The host's old identity stops working at once; the new one is shown once.",
    )
    credential.add_argument("name")

    boot = command(
        hsub,
        "bootstrap",
        cmd_bootstrap,
        parents=[common],
        help="install and start the agent over SSH (admin)",
        epilog="--json prints the runs as they end (with --no-wait: as they were queued).",
    )
    boot.add_argument("names", nargs="*", metavar="NAME")
    boot.add_argument(
        "--selector", type=pair, action="append", default=[], metavar="K=V", help="label filter"
    )
    boot.add_argument("--parallel", type=int, default=4, help="hosts at once (default 4)")
    boot.add_argument("--max-failures", type=int, help="start no more after this many failed")
    boot.add_argument("--trust-on-first-use", action="store_true", help="pin unknown host keys")
    boot.add_argument("--cgroup", help="cgroup v2 path for the agents ({host} = host name)")
    boot.add_argument("--heartbeat", type=float, metavar="S", help="agent heartbeat interval")
    # A slow host (an emulated VM, a small board) compiles for minutes.
    boot.add_argument(
        "--probe-timeout", type=float, metavar="S", help="the agent's capability probe's bound"
    )
    boot.add_argument(
        "--compile-timeout", type=float, metavar="S", help="a trace's compile-and-attach bound"
    )
    boot.add_argument(
        "--max-overhead",
        type=float,
        metavar="PCT",
        help="the most a job may set limits.overhead_pct to (400 lets it lift the guard)",
    )
    boot.add_argument(
        "--with-bpftrace",
        action="store_true",
        help="install the distro's bpftrace and let the agent run bpftrace scripts",
    )
    boot.add_argument("--no-wait", action="store_true", help="start and return")

    uninstall = command(
        hsub,
        "uninstall",
        cmd_uninstall,
        parents=[common],
        help="stop the agent and remove it from a host (admin)",
    )
    uninstall.add_argument("name")
    uninstall.add_argument("--no-wait", action="store_true", help="start and return")


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def cmd_list(args: argparse.Namespace) -> int:
    params = [("selector", f"{k}={v}") for k, v in args.selector]
    with api(args) as client:
        data = client.get("/v1/hosts", params=params)
    return reply(args, data, lambda: hosts_lines(data["data"], selected=bool(args.selector)))


def hosts_lines(items: list[dict[str, Any]], *, selected: bool) -> list[Line]:
    hosts = [HostPublic.model_validate(h) for h in items]
    if not hosts:
        return [Line("no hosts" + (" match the selector" if selected else ""), "dim")]
    rows = [
        [
            h.name,
            h.state,
            _labels(h.labels),
            h.agent_version or "-",
            str((h.capabilities or {}).get("kernel_release") or "-"),
            str((h.capabilities or {}).get("headers") or "-"),
            since(h.last_heartbeat),
        ]
        for h in hosts
    ]
    header = ["NAME", "STATE", "LABELS", "AGENT", "KERNEL", "HEADERS", "HEARTBEAT"]
    styles: dict[str, Style] = {"offline": "bad", "never_seen": "dim"}
    lines = table_lines(header, rows, styles=[styles.get(h.state, "") for h in hosts])
    return [*lines, Line(plural(len(hosts), "host"), "dim")]


def cmd_show(args: argparse.Namespace) -> int:
    with api(args) as client:
        data = client.get(f"/v1/hosts/{args.name}")
    return reply(args, data, lambda: host_lines(HostPublic.model_validate(data)))


def host_lines(host: HostPublic) -> list[Line]:
    fields = [
        ("name", host.name),
        ("state", f"{host.state} (last heartbeat {since(host.last_heartbeat)})"),
        ("address", host.address or "-"),
        ("ssh", f"{host.ssh_user}@{host.address or '-'}:{host.ssh_port}"),
        ("host key", _host_key(host)),
        ("labels", _labels(host.labels)),
        ("agent", host.agent_version or "-"),
        *agent_view.facts(host.agent_stats, now=datetime.now(timezone.utc), moment=_moment),
        ("registered", when(host.created_at)),
    ]
    caps = host.capabilities
    if caps:
        fields += _capabilities(caps)
    else:
        fields.append(("capabilities", "not reported yet (no heartbeat with a probe)"))
    width = max(len(k) for k, _ in fields) + 2
    return [Line(f"{k + ':':<{width}}{v}", "title" if k == "name" else "") for k, v in fields]


def _moment(at: datetime) -> str:
    return f"{when(at)}, {since(at)}"


def _host_key(host: HostPublic) -> str:
    if host.host_key_rejected is not None:
        rejected = host.host_key_rejected
        return (
            f"REJECTED {rejected.fingerprint} at {when(rejected.at)}"
            f" (pinned: {host.host_key_fingerprint or 'none'})"
        )
    if host.host_key_fingerprint:
        return f"pinned {host.host_key_fingerprint}"
    return "trust on first use" if host.trust_on_first_use else "from known_hosts"


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
        ("bpftrace", str(caps.get("bpftrace_version") or "-")),
        ("headers", headers),
        ("lockdown", str(caps.get("lockdown") or "-")),
        ("features", ", ".join(features) or "-"),
        ("programs", ", ".join(runs) or "-"),
    ]
    if cannot:
        out.append(("unsupported", "; ".join(cannot)))
    return out


def cmd_add(args: argparse.Namespace) -> int:
    body = {
        "name": args.name,
        "address": args.address,
        "labels": dict(args.label),
        "ssh_user": args.ssh_user,
        "ssh_port": args.port,
        "host_key_fingerprint": args.fingerprint,
        "trust_on_first_use": args.trust_on_first_use,
        "cgroup": args.cgroup,
    }
    with api(args) as client:
        data = client.post("/v1/hosts", body)
    return reply(args, data, lambda: _added_lines(data))


def _added_lines(host: dict[str, Any]) -> list[Line]:
    lines = [Line(f"added host {host['name']} ({_labels(host['labels'])})")]
    if host.get("join"):
        lines += _join_lines(host["name"], host["join"])
    return [*lines, Line("it shows online once its agent sends a heartbeat", "dim")]


def cmd_credential(args: argparse.Namespace) -> int:
    with api(args) as client:
        data = client.post(f"/v1/hosts/{args.name}/credential", {})
    return reply(args, data, lambda: _join_lines(args.name, data))


def _join_lines(name: str, join: dict[str, str]) -> list[Line]:
    """The join command: its secret is shown this once (`hosts credential` issues another)."""
    return [
        Line(f"to join, run this on {name} (its Redis secret is shown only now):", "dim"),
        Line(f"  {join['command']}"),
    ]


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.trust_on_first_use:
        options["trust_on_first_use"] = True
    if args.cgroup:
        options["cgroup"] = args.cgroup
    for flag, option in (
        ("heartbeat", "heartbeat_s"),
        ("probe_timeout", "probe_timeout_s"),
        ("compile_timeout", "compile_timeout_s"),
        ("max_overhead", "max_overhead_pct"),
    ):
        if getattr(args, flag) is not None:
            options[option] = getattr(args, flag)
    if args.with_bpftrace:
        options["with_bpftrace"] = True
    return options


def cmd_bootstrap(args: argparse.Namespace) -> int:
    if bool(args.names) == bool(args.selector):
        raise CliError("give host names or --selector (one of them)")
    with api(args) as client:
        if len(args.names) == 1 and args.max_failures is None:
            run = client.post(f"/v1/hosts/{args.names[0]}/bootstrap", _options(args))
            runs = {run["host"]: run}
        else:
            body: dict[str, Any] = {
                "parallel": args.parallel,
                "max_failures": args.max_failures,
                "options": _options(args),
            }
            if args.names:
                body["hosts"] = args.names
            else:
                body["selector"] = dict(args.selector)
            batch = client.post("/v1/hosts/bootstrap", body)
            runs = {run["host"]: run for run in batch["runs"]}
        return _follow(client, runs, args)


def cmd_uninstall(args: argparse.Namespace) -> int:
    with api(args) as client:
        run = client.post(f"/v1/hosts/{args.name}/uninstall")
        return _follow(client, {run["host"]: run}, args)


def _follow(client: Any, runs: dict[str, dict[str, Any]], args: argparse.Namespace) -> int:
    from controller.cli.bootstrap import watch

    if args.no_wait:
        queued = [Line(f"{host}: {run['kind']} {run['id']} queued") for host, run in runs.items()]
        return reply(args, list(runs.values()), lambda: queued)
    done = watch(client, runs, live=False if args.json else None)
    states = [run["state"] for run in done.runs.values()]
    if args.json:
        print_json(list(done.runs.values()))
    else:
        counts = {s: states.count(s) for s in sorted(set(states))}
        emit([Line(", ".join(f"{n} {s}" for s, n in counts.items()), "dim")])
    return 0 if all(s == "succeeded" for s in states) else 1
