"""Which hosts a job or a schedule runs on: the flags, the API's `targets`, and how it reads."""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli.common import kv, pair


def host_names(text: str) -> list[str]:
    """'a,b,c' -> ['a', 'b', 'c'], for --hosts."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no host names in {text!r} (use a,b,c)")
    return names


def add_options(parser: argparse.ArgumentParser) -> None:
    """Named hosts, those with labels, or all: exactly one of them."""
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--hosts", type=host_names, metavar="A,B", help="these hosts")
    target.add_argument(
        "--selector", type=pair, action="append", metavar="K=V", help="hosts with these labels"
    )
    target.add_argument("--all", action="store_true", help="every registered host")


def body(args: argparse.Namespace) -> dict[str, Any]:
    """The API's `targets` from the options `add_options` added."""
    if args.hosts is not None:
        return {"hosts": args.hosts}
    if args.selector:
        return {"selector": dict(args.selector)}
    return {"all": True}


def text(targets: dict[str, Any]) -> str:
    if "hosts" in targets:
        return "hosts " + ",".join(targets["hosts"])
    if "selector" in targets:
        return "selector " + kv(targets["selector"])
    return "all hosts"
