"""`fleettrace dev up|down|status|demo`: a local fleet on this machine, for trying and testing."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from devstack.config import DEFAULT_STATE_DIR, DevstackError, StackConfig, demo_hosts
from node_agent.arguments import parse_duration


def add_commands(sub: Any) -> None:
    dev = sub.add_parser(
        "dev", help="a local fleet on this machine: Redis, the controller, hosts in namespaces"
    )
    dsub = dev.add_subparsers(dest="dev_command", required=True)

    up = dsub.add_parser("up", help="start Redis, the controller and N local hosts")
    _stack_args(up)
    _up_args(up)
    up.set_defaults(func=cmd_up)

    down = dsub.add_parser("down", help="stop and remove everything `up` made, even after a crash")
    _state_dir_arg(down)
    down.add_argument("--purge", action="store_true", help="remove the logs too")
    down.set_defaults(func=cmd_down)

    status = dsub.add_parser("status", help="what is running, per host")
    _state_dir_arg(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    demo = dsub.add_parser("demo", help="up, trace every host, print the results side by side")
    _stack_args(demo)
    demo.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    demo.add_argument("--duration", type=parse_duration, default=5.0, help="per trace (5s)")
    demo.add_argument(
        "--report-dir",
        type=Path,
        default=Path("demo-reports"),
        help="where each job's HTML report is saved (./demo-reports)",
    )
    demo.set_defaults(func=cmd_demo)


def _state_dir_arg(parser: argparse.ArgumentParser) -> None:
    default = Path(os.environ.get("FLEETTRACE_DEV_STATE", DEFAULT_STATE_DIR))
    parser.add_argument(
        "--state-dir", type=Path, default=default, help=f"where the stack lives ({default})"
    )


def _stack_args(parser: argparse.ArgumentParser) -> None:
    _state_dir_arg(parser)
    parser.add_argument("--hosts", type=int, default=3, help="how many local hosts (3)")
    parser.add_argument("--port", type=int, default=8700, help="the API's port on 127.0.0.1")
    parser.add_argument(
        "--allow-bpftrace",
        action="store_true",
        help="the hosts' agents run bpftrace scripts (the admin-only bpftrace program)",
    )


def _up_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ssh",
        action="store_true",
        help="run sshd in every host (a stack key pair, known_hosts, a sudo user `ftdeploy`)",
    )
    parser.add_argument(
        "--no-agent",
        dest="agents",
        action="store_false",
        help="start the hosts bare, without agents: for `fleettrace hosts bootstrap` (with --ssh)",
    )
    parser.add_argument(
        "--kernel",
        dest="kernels",
        action="append",
        default=[],
        metavar="VERSION[:HEADERS]",
        help="one more host: a VM booting Debian's VERSION kernel (6.1, 6.12), fetched with apt "
        "and cached; HEADERS is exact (default), approximate or none. Repeatable",
    )


def _config(args: argparse.Namespace) -> StackConfig:
    from devstack.vm import parse_kernels

    return StackConfig(
        state_dir=args.state_dir,
        hosts=(*demo_hosts(args.hosts), *parse_kernels(getattr(args, "kernels", []))),
        port=args.port,
        allow_bpftrace=args.allow_bpftrace,
    )


def _say(text: str) -> None:
    sys.stderr.write(f"dev: {text}\n")
    sys.stderr.flush()


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _guarded(run: Any) -> int:
    """DevstackError is one line for the operator; SIGTERM unwinds like Ctrl-C, tearing down."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code: int = run()
        return code
    except DevstackError as exc:
        sys.stderr.write(f"fleettrace dev: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("fleettrace dev: interrupted\n")
        return 130


def cmd_up(args: argparse.Namespace) -> int:
    from devstack.sshd import Sshd
    from devstack.stack import Stack

    def run() -> int:
        config = _config(args)
        services = [Sshd()] if args.ssh else []
        Stack(config, services=services, agents=args.agents, progress=_say).up()
        _say(f"for the client commands: . {config.env_file}")
        _say(f"the web console: {config.api_url}/ (sign in with FLEETTRACE_TOKEN from that file)")
        return 0

    return _guarded(run)


def cmd_down(args: argparse.Namespace) -> int:
    from devstack.teardown import down

    def run() -> int:
        if not down(args.state_dir, purge=args.purge, progress=_say):
            _say(f"no stack in {args.state_dir}")
        return 0

    return _guarded(run)


def cmd_demo(args: argparse.Namespace) -> int:
    from devstack.demo import run_demo

    return _guarded(
        lambda: run_demo(
            _config(args),
            keep=args.keep,
            duration_s=args.duration,
            report_dir=args.report_dir,
            out=_out,
            progress=_say,
        )
    )


def cmd_status(args: argparse.Namespace) -> int:
    from devstack.teardown import status

    def run() -> int:
        report = status(args.state_dir)
        if report is None:
            _say(f"no stack in {args.state_dir}")
            return 1
        if args.json:
            _out(json.dumps(report, indent=2))
            return 0
        controller = report["controller"]
        health = "healthy" if controller["healthy"] else "NOT answering"
        redis = "running" if report["redis"]["running"] else "NOT running"
        _out(f"controller {report['api_url']} {health}; redis {redis}")
        _out(f"client env: . {report['env_file']}")
        _out(
            f"{'HOST':<10} {'STATE':<11} {'ADDRESS':<13} {'NETNS/VM':<16} {'WORKLOAD':<13} "
            "PROCS AGENT"
        )
        for h in report["hosts"]:
            agent = "running" if h["agent_running"] else "stopped"
            where = h["netns"] or "-"
            if h.get("vm") is not None:
                vm = h["vm"]
                where = f"vm {vm['kernel']} pid {vm['qemu_pid']}" if vm["qemu_pid"] else "vm DOWN"
            _out(
                f"{h['name']:<10} {h['state']:<11} {h['address']:<13} {where:<16} "
                f"{h['workload']:<13} {h['workload_processes']:>5} {agent}"
            )
        return 0

    return _guarded(run)
