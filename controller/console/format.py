"""Numbers and times as the console shows them: with units, aligned, in UTC."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any


def ago(when: datetime | None, now: datetime | None = None) -> str:
    """'12 s ago', '3 min ago', '2 h ago', '4 d ago'; '—' for never."""
    if when is None:
        return "—"
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    seconds = ((now or datetime.now(timezone.utc)) - when).total_seconds()
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def utc(when: datetime | None) -> str:
    if when is None:
        return "—"
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def seconds(value: float | None) -> str:
    """A duration in the unit that reads best: 850 ms, 12.5 s, 3 min 20 s, 2 h 5 min."""
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.3g} s"
    if value < 3600:
        minutes, rest = divmod(round(value), 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, rest = divmod(round(value) // 60, 60)
    return f"{hours} h {rest} min" if rest else f"{hours} h"


def count(value: float | None) -> str:
    """1,234,567; 12.5 k / M / G above a million, for cells that must stay narrow."""
    if value is None:
        return "—"
    if abs(value) >= 1e9:
        return f"{value / 1e9:.3g} G"
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g} M"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


FILTERS: dict[str, Callable[..., Any]] = {
    "ago": ago,
    "utc": utc,
    "seconds": seconds,
    "count": count,
}
