"""The fleettrace command line: one parser, server commands and client commands."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

from controller.cli import audit, client, keys, report, schedules, server
from controller.cli.errors import CliError
from controller.devstack import cli as devstack_cli
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
    devstack_cli.add_commands(sub)
    return parser


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
