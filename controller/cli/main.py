"""The fleettrace command line: one parser, server commands and client commands."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

from controller.cli import audit, client, keys, report, schedules, server
from controller.cli.errors import CliError
from node_agent.safe_text import printable


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fleettrace", description="Run eBPF traces across a fleet of hosts.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    server.add_commands(sub)
    keys.add_commands(sub)
    client.add_commands(sub)
    report.add_commands(sub)
    schedules.add_commands(sub)
    audit.add_commands(sub)
    _dev_commands(sub)
    return parser


def _dev_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """`fleettrace dev ...` from a checkout: the local test fleet is not in the shipped package."""
    try:
        from devstack import cli as devstack_cli
    except ImportError:
        dev = sub.add_parser("dev", help="a local fleet (needs a fleettrace checkout)")
        dev.add_argument("rest", nargs=argparse.REMAINDER)
        dev.set_defaults(func=_no_devstack)
        return
    devstack_cli.add_commands(sub)


def _no_devstack(args: argparse.Namespace) -> int:
    raise CliError(
        "`fleettrace dev` is a checkout's tool and is not installed here: "
        "from a fleettrace checkout, run `bash scripts/setup.sh`"
    )


def _client_command(args: argparse.Namespace) -> bool:
    return getattr(args, "ingest_command", None) is not None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.INFO
            if args.verbose
            or (args.command in ("serve", "ingest", "worker") and not _client_command(args))
            else logging.WARNING,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )
        code: int = args.func(args)
        return code
    except CliError as exc:
        sys.stderr.write(f"fleettrace: error: {printable(str(exc))}\n")
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
