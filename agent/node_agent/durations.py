"""One grammar for lengths of time a person types: '30', '500ms', '30s', '2m', '1h', '7d', '2w'."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


def parse(text: str) -> float | None:
    """Seconds (a bare number is seconds), or None when `text` is not a duration."""
    match = _DURATION.match(text)
    if not match:
        return None
    return float(match.group(1)) * _UNITS[match.group(2)]
