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


def text(seconds: float) -> str:
    """Seconds back in the grammar, in its largest whole unit: 0.5 -> '500ms', 120 -> '2m'."""
    if seconds < 1 and float(seconds * 1000).is_integer():
        return f"{seconds * 1000:.0f}ms"
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and float(seconds / size).is_integer():
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:g}s"
