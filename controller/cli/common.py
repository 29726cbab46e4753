"""What the client commands share: the API client from flags or env, k=v pairs, JSON output."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.cli.http import ApiClient

DEFAULT_URL = "http://127.0.0.1:8700"
_YES = ("1", "true", "yes", "on")


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


def pair(text: str) -> tuple[str, str]:
    """'k=v' -> (k, v), for --param, --label and --selector."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"bad {text!r} (use key=value)")
    return key.strip(), value


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
