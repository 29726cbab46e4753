"""What the client commands share: the API client from flags or env, k=v pairs, JSON output."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.cli.http import ApiClient

DEFAULT_URL = "http://127.0.0.1:8700"


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
    http = getattr(args, "http", None)  # tests inject an httpx client here
    return ApiClient(url, token, http=http)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
