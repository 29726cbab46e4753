"""What the client commands share: the API client from flags or env, argument types, targets,
paging, and the answer as JSON or as lines for a person."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.cli.errors import CliError
from controller.cli.text import Line, emit, plural
from node_agent.arguments import script_params
from node_agent.safe_text import printable_lines

if TYPE_CHECKING:
    from controller.cli.http import ApiClient

DEFAULT_URL = "http://127.0.0.1:8700"
_YES = ("1", "true", "yes", "on")
PAGE_MAX = 1000


def add_api_options(parser: argparse.ArgumentParser) -> None:
    """How to reach the controller: its URL, the token, the CA, and the plain-HTTP opt-in."""
    parser.add_argument(
        "--url", help=f"the controller's API (env FLEETTRACE_URL, default {DEFAULT_URL})"
    )
    parser.add_argument("--token", help="API token (env FLEETTRACE_TOKEN)")
    parser.add_argument(
        "--ca",
        type=Path,
        metavar="FILE",
        help="CA certificate(s) that signed the controller's HTTPS certificate (env FLEETTRACE_CA)",
    )
    parser.add_argument(
        "--insecure-http",
        action="store_true",
        help="send the token over plain http:// to a non-loopback address"
        " (env FLEETTRACE_INSECURE_HTTP=1)",
    )


def command(
    sub: Any, name: str, func: Callable[[argparse.Namespace], int], **options: Any
) -> argparse.ArgumentParser:
    """A subcommand that runs `func(args)`; `options` go to add_parser (help, parents, ...)."""
    parser: argparse.ArgumentParser = sub.add_parser(name, **options)
    parser.set_defaults(func=func)
    return parser


def with_example(sub: Any, name: str, epilog: str, *, help: str) -> argparse.ArgumentParser:
    """A command whose --help ends with `epilog` (an example of what it prints) as written."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return parser


def pair(text: str) -> tuple[str, str]:
    """'k=v' -> (k, v), for --param, --label and --selector."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"bad {text!r} (use key=value)")
    return key.strip(), value


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def template_params(args: argparse.Namespace) -> dict[str, str]:
    """--param pairs and the bpftrace flags (--script/--file, --keys) as a template's params;
    values stay strings: the program's spec coerces and bounds-checks them."""
    params = dict(args.param)
    try:
        return params | script_params(args, params)
    except ValueError as exc:
        raise CliError(str(exc)) from None


SCRIPT_LINES = 40  # of a bpftrace script shown by `jobs show` / `schedules show`


def script_lines(params: dict[str, Any], indent: int) -> tuple[dict[str, Any], list[Line]]:
    """A template's params without its script, and the script as lines under a `script:`
    label (the first SCRIPT_LINES of them): a script is text of many lines, not a value."""
    script = params.get("script")
    if not isinstance(script, str):
        return params, []
    rest = {k: v for k, v in params.items() if k != "script"}
    lines = script.splitlines() or [""]
    shown = [Line(f"{'script:':<{indent}}{lines[0]}")]
    shown += [Line(" " * indent + line) for line in lines[1:SCRIPT_LINES]]
    if len(lines) > SCRIPT_LINES:
        shown.append(Line(" " * indent + f"... {len(lines) - SCRIPT_LINES} more lines", "dim"))
    return rest, shown


def kv(items: dict[str, Any]) -> str:
    # JSON spelling (true, not True), as the operator would type it in --param.
    return " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in items.items())


def _page_size(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= PAGE_MAX:
        raise argparse.ArgumentTypeError(f"expected 1..{PAGE_MAX}, got {text!r}")
    return int(text)


def add_paging(parser: argparse.ArgumentParser, what: str) -> None:
    """--limit and --offset over a list the API gives newest first."""
    parser.add_argument(
        "--limit", type=_page_size, default=50, help=f"{what} (1..{PAGE_MAX}, default 50)"
    )
    parser.add_argument("--offset", type=int, default=0, help=f"skip this many newest {what}")


def page_footer(shown: int, total: int, word: str) -> Line:
    """'3 records', or '50 records of 120 (--offset, --limit for more)'."""
    text = plural(shown, word)
    if total > shown:
        text += f" of {total} (--offset, --limit for more)"
    return Line(text, "dim")


def api(args: argparse.Namespace) -> ApiClient:
    from controller.cli.http import ApiClient

    url = args.url or os.environ.get("FLEETTRACE_URL") or DEFAULT_URL
    token = args.token or os.environ.get("FLEETTRACE_TOKEN") or None
    ca = getattr(args, "ca", None) or os.environ.get("FLEETTRACE_CA") or None
    insecure = getattr(args, "insecure_http", False) or (
        os.environ.get("FLEETTRACE_INSECURE_HTTP", "").strip().lower() in _YES
    )
    http = getattr(args, "http", None)  # tests inject an httpx client here
    return ApiClient(url, token, http=http, ca=ca, insecure_http=insecure)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def reply(args: argparse.Namespace, data: Any, lines: Callable[[], Sequence[Line]]) -> int:
    """--json: the API's answer as it came; otherwise `lines()`, for a person. Exit code 0."""
    if args.json:
        print_json(data)
    else:
        emit(lines())
    return 0


def write_output(path: Path | None, text: str) -> None:
    """To the file `-o` names, or to the terminal with its control characters made visible."""
    if path is None:
        sys.stdout.write(printable_lines(text))
        return
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}", code=1) from None
