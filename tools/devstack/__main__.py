"""`python -m devstack up|down|status|demo`: the same as `fleettrace dev ...`."""

from __future__ import annotations

import argparse
import sys

from devstack.cli import add_commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["dev", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
