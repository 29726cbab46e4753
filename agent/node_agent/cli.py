"""fleettrace-agent: list programs, probe this host, run a trace locally."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import ValidationError

from node_agent import __version__
from node_agent.arguments import (
    add_script_options,
    add_trace_options,
    parse_duration,
    script_params,
)
from node_agent.errors import FleettraceError
from node_agent.programs import catalog, get_program
from node_agent.protocol import (
    Limits,
    MapDecl,
    RunEvent,
    RunState,
    Snapshot,
    StateChange,
    TraceRequest,
)
from node_agent.render import snapshot_text
from node_agent.safe_text import printable_lines

if TYPE_CHECKING:
    from node_agent.headers.kheaders import KheadersSource
    from node_agent.settings import AgentSettings
    from node_agent.zygote import Zygote

log = logging.getLogger("node_agent.cli")

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"bad parameter {text!r} (use name=value)")
    return name.strip(), value


def _map_decl(text: str) -> MapDecl:
    name, _, kind = text.partition(":")
    try:
        return MapDecl.model_validate({"name": name, "kind": kind or "counter"})
    except ValidationError:
        raise argparse.ArgumentTypeError(
            f"bad map {text!r} (use NAME:counter or NAME:log2_hist)"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fleettrace-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fleettrace-agent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    programs = sub.add_parser("programs", help="list the program catalog")
    programs.add_argument("--json", action="store_true")

    probe = sub.add_parser("probe", help="print this host's capabilities as JSON")
    # As the worker's own flags: a program the agent's settings refuse is reported unsupported.
    probe.add_argument("--allow-custom", action="store_true", help="as an agent allowing custom")
    probe.add_argument(
        "--allow-bpftrace", action="store_true", help="as an agent allowing bpftrace"
    )
    _add_headers_options(probe)

    worker = sub.add_parser("worker", help="join the fleet: consume this host's queue")
    worker.add_argument("--host", help="this host's name in the fleet (default: hostname)")
    worker.add_argument("--redis-url", help="the broker (default from settings)")
    worker.add_argument("--cgroup", help="confine every trace to this cgroup v2 path")
    worker.add_argument("--allow-custom", action="store_true", default=None)
    worker.add_argument("--allow-bpftrace", action="store_true", default=None)

    run = sub.add_parser("run", help="run one trace on this host")
    run.add_argument("program")
    add_trace_options(run)
    run.add_argument("--param", type=_param, action="append", default=[], metavar="K=V")
    run.add_argument("--json", action="store_true", help="one JSON event per line")
    run.add_argument("--max-rows", type=int, default=Limits().max_rows)
    run.add_argument("--map-entries", type=int, default=Limits().map_entries)
    run.add_argument("--max-samples", type=int, default=Limits().max_samples)
    run.add_argument(
        "--overhead-budget",
        type=float,
        default=Limits().overhead_pct,
        metavar="PCT",
        help="stop when BPF + agent CPU exceed PCT %% of one CPU (%(default)s)",
    )
    run.add_argument("--grace", type=parse_duration, default=5.0, help="kill after this long")
    run.add_argument("--source", type=Path, help="custom: bcc C file")
    run.add_argument("--map", type=_map_decl, action="append", default=[], metavar="NAME:KIND")
    add_script_options(run)
    run.add_argument("--allow-custom", action="store_true", help="allow the custom program")
    run.add_argument("--allow-bpftrace", action="store_true", help="allow the bpftrace program")
    run.add_argument("--max-duration", type=parse_duration, default=3600.0)
    _add_headers_options(run)
    return parser


def _add_headers_options(parser: argparse.ArgumentParser) -> None:
    """Where the kernel's own headers come from and go (default: the agent's settings)."""
    parser.add_argument("--state-dir", type=Path, help="kheaders are extracted under it")
    parser.add_argument("--kheaders-archive", type=Path, help="the kernel's header archive")


def _settings(overrides: dict[str, Any]) -> AgentSettings:
    """The agent's settings with these flags over them; a bad one is a usage error."""
    from node_agent.settings import AgentSettings

    try:
        return AgentSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None


def _kheaders(args: argparse.Namespace) -> KheadersSource:
    overrides = {"state_dir": args.state_dir, "kheaders_archive": args.kheaders_archive}
    return _settings(overrides).kheaders


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def cmd_programs(args: argparse.Namespace) -> int:
    specs = catalog()
    if args.json:
        _out(json.dumps([s.describe() for s in specs.values()], indent=2))
        return 0
    width = max(len(n) for n in specs)
    for spec in specs.values():
        _out(f"{spec.name:<{width}}  {spec.output:<15} {spec.summary}")
        for p in spec.params:
            bounds = ""
            if p.choices:
                bounds = f" one of {'|'.join(p.choices)}"
            elif p.minimum is not None or p.maximum is not None:
                bounds = f" in [{p.minimum:g}, {p.maximum:g}]" if p.maximum is not None else ""
            _out(f"{'':<{width}}    --param {p.name}=<{p.type}> (default {p.default!r}){bounds}")
    return 0


@contextmanager
def _stdout_kept() -> Iterator[None]:
    """File descriptor 1 goes to stderr meanwhile: libbcc writes some complaints there ("Unable
    to find kernel headers..." on a host without them), which would corrupt the JSON report
    the worker reads from stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def cmd_probe(args: argparse.Namespace) -> int:
    from node_agent.capabilities import probe

    with _stdout_kept():
        capabilities = probe(
            _kheaders(args), allow_custom=args.allow_custom, allow_bpftrace=args.allow_bpftrace
        )
    _out(capabilities.model_dump_json(indent=2))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from node_agent.zygote import Zygote

    # Before the worker imports Celery, Redis and cryptography (the zygote needs none of
    # them, and would keep stale copies of their pages) and before any thread starts.
    zygote = Zygote.fork()
    try:
        return _worker(args, zygote)
    finally:
        zygote.close()


def _worker(args: argparse.Namespace, zygote: Zygote) -> int:
    from node_agent.worker import serve

    overrides = {
        "host": args.host,
        "redis_url": args.redis_url,
        "cgroup": args.cgroup,
        "allow_custom": args.allow_custom,
        "allow_bpftrace": args.allow_bpftrace,
    }
    settings = _settings(overrides)
    logging.getLogger().setLevel(logging.INFO)
    serve(settings, zygote)
    return 0


def _request(args: argparse.Namespace) -> TraceRequest:
    get_program(args.program)
    fields: dict[str, Any] = {
        "run_id": f"local-{uuid.uuid4().hex[:12]}",
        "program": args.program,
        "params": dict(args.param),
        "scope": {"cgroup": args.cgroup, "pid": args.pid, "comm": args.comm},
        "duration_s": args.duration,
        "interval_s": args.interval,
        "grace_s": args.grace,
        "limits": {
            "max_rows": args.max_rows,
            "map_entries": args.map_entries,
            "max_samples": args.max_samples,
            "overhead_pct": args.overhead_budget,
        },
        "maps": [m.model_dump() for m in args.map],
    }
    try:
        fields["params"].update(script_params(args, dict(args.param)))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.source is not None:
        try:
            fields["source"] = args.source.read_text()
        except OSError as exc:
            raise UsageError(f"--source: cannot read {args.source}: {exc.strerror}") from None
    try:
        return TraceRequest.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        raise UsageError(f"{_flag(where)}: {first['msg']}") from None


def _flag(location: str) -> str:
    names = {"duration_s": "--duration", "interval_s": "--interval", "grace_s": "--grace"}
    if location.startswith(("scope.", "limits.")):
        return "--" + location.split(".", 1)[1].replace("_", "-")
    return names.get(location, location)


def cmd_run(args: argparse.Namespace) -> int:
    from node_agent.runner import TraceRunner
    from node_agent.trace import prepare

    request = _request(args)
    if args.program == "bpftrace" and not args.allow_bpftrace:
        raise UsageError("bpftrace scripts run as root: add --allow-bpftrace to run one")
    try:
        prepare(
            request,
            allow_custom=args.allow_custom,
            allow_bpftrace=args.allow_bpftrace,
            max_duration_s=args.max_duration,
        )
    except FleettraceError as exc:
        usage = ("unknown_program", "bad_parameter", "limit_exceeded", "bad_request", "policy")
        if exc.code.value in usage:
            raise UsageError(exc.message) from None
        raise

    def on_event(event: RunEvent) -> None:
        if args.json:
            _out(event.model_dump_json())
        elif isinstance(event, Snapshot):
            _out(printable_lines(snapshot_text(event)) + "\n")
        elif event.state is RunState.running:
            scope = request.scope.kinds()
            where = f" scoped by {', '.join(sorted(scope))}" if scope else ""
            sys.stderr.write(
                f"Tracing {request.program}{where} for {request.duration_s:g}s..."
                " Ctrl-C to stop early.\n"
            )

    runner = TraceRunner(
        request,
        on_event,
        allow_custom=args.allow_custom,
        allow_bpftrace=args.allow_bpftrace,
        max_duration_s=args.max_duration,
        kheaders=_kheaders(args),
    )
    signal.signal(signal.SIGINT, lambda *_: runner.cancel())
    final = runner.run()
    return _report(final)


def _report(final: StateChange) -> int:
    if final.state in (RunState.succeeded, RunState.cancelled) and final.error is None:
        return 0
    if final.error is not None:
        sys.stderr.write(f"fleettrace-agent: {final.state.value}: {final.error.message}\n")
        if final.error.detail:
            sys.stderr.write(final.error.detail.rstrip() + "\n")
    else:
        sys.stderr.write(f"fleettrace-agent: {final.state.value}\n")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )
        commands = {
            "programs": cmd_programs,
            "probe": cmd_probe,
            "run": cmd_run,
            "worker": cmd_worker,
        }
        return commands[args.command](args)
    except UsageError as exc:
        sys.stderr.write(f"fleettrace-agent: error: {exc}\n")
        return EXIT_USAGE
    except FleettraceError as exc:
        sys.stderr.write(f"fleettrace-agent: error: {exc.message}\n")
        return EXIT_USAGE if exc.code.value == "unknown_program" else 1


if __name__ == "__main__":
    sys.exit(main())
