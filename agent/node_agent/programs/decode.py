"""Helpers that turn raw map entries into the protocol's result types."""

from __future__ import annotations

import ipaddress
import socket
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import Any

from node_agent.programs.spec import DecodeContext, Decoder
from node_agent.protocol import CounterTable, KeyField, KeyValue, Log2Histogram, Result

Row = tuple[list[KeyValue], list[int]]
Labels = Callable[[Any], dict[str, KeyValue]]

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6


def text(raw: Any) -> str:
    """A C char array (bytes or ctypes array) as text, up to the first NUL."""
    data = bytes(raw)
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


def addr(family: int, raw: Any) -> str:
    data = bytes(raw)
    if family == AF_INET:
        return str(ipaddress.IPv4Address(data[:4]))
    return str(ipaddress.IPv6Address(data[:16]))


@cache
def syscall_name(nr: int) -> str:
    try:
        from bcc.syscall import syscall_name as bcc_name

        name: bytes = bcc_name(nr)
        return name.decode()
    except Exception:
        return f"syscall_{nr}"


def counter_table(
    name: str,
    key_fields: Sequence[KeyField],
    rows: Iterable[tuple[list[KeyValue], list[int]]],
    *,
    max_rows: int,
    value_fields: Sequence[str] = ("count",),
) -> CounterTable:
    """Merge equal keys, sort by the first value (largest first), keep the top max_rows."""
    merged: dict[tuple[KeyValue, ...], list[int]] = {}
    for key, values in rows:
        have = merged.get(tuple(key))
        if have is None:
            merged[tuple(key)] = list(values)
        else:
            for i, v in enumerate(values):
                have[i] += v
    ordered = sorted(merged.items(), key=lambda kv: (-kv[1][0], [str(k) for k in kv[0]]))
    return CounterTable(
        name=name,
        key_fields=list(key_fields),
        value_fields=list(value_fields),
        rows=[(list(k), v) for k, v in ordered[:max_rows]],
        total_rows=len(ordered),
        truncated=len(ordered) > max_rows,
    )


def log2_histograms(
    name: str,
    unit: str,
    entries: Iterable[tuple[Any, int]],
    labels_of: Callable[[Any], dict[str, KeyValue]],
    slot_of: Callable[[Any], int] = lambda key: int(key.slot),
    *,
    max_histograms: int,
) -> list[Log2Histogram]:
    """Group (key, count) entries into one histogram per label set, busiest first."""
    groups: dict[tuple[tuple[str, KeyValue], ...], dict[int, int]] = defaultdict(dict)
    for key, count in entries:
        if count <= 0:
            continue
        labels = tuple(sorted(labels_of(key).items()))
        slot = slot_of(key)
        groups[labels][slot] = groups[labels].get(slot, 0) + int(count)
    hists = [
        Log2Histogram(name=name, unit=unit, labels=dict(labels), buckets=sorted(buckets.items()))
        for labels, buckets in groups.items()
    ]
    hists.sort(key=lambda h: (-h.total, sorted(str(v) for v in h.labels.values())))
    return hists[:max_histograms]


def histogram_map(
    map_name: str, labels: Callable[[DecodeContext], Labels], *, result: str | None = None
) -> Decoder:
    """A decoder reading a log2 histogram map (key.slot plus label fields) in the unit the
    `unit` param names; `labels` gives, for a trace's params, a map key's labels."""

    def decode(ctx: DecodeContext) -> list[Result]:
        return list(
            log2_histograms(
                result or map_name,
                str(ctx.params["unit"]),
                ctx.program.items(map_name),
                labels(ctx),
                max_histograms=ctx.limits.max_rows,
            )
        )

    return decode


def table_map(
    map_name: str,
    fields: Callable[[DecodeContext], Sequence[KeyField]],
    row: Callable[[DecodeContext], Callable[[Any, Any], Row | None]],
    *,
    result: str | None = None,
    value_fields: Sequence[str] = ("count",),
) -> Decoder:
    """A decoder reading a map into a counter table: `fields` and `row` say, for a trace's
    params, the table's key fields and a (key, value) entry's row (None: no row)."""

    def decode(ctx: DecodeContext) -> list[Result]:
        to_row = row(ctx)
        found = (to_row(key, val) for key, val in ctx.program.items(map_name))
        rows = (row for row in found if row is not None)
        table = counter_table(
            result or map_name,
            fields(ctx),
            rows,
            max_rows=ctx.limits.max_rows,
            value_fields=value_fields,
        )
        return [table]

    return decode


def value(raw: Any) -> int:
    """A map value as an int, whether bcc gave a ctypes scalar or an int."""
    return int(getattr(raw, "value", raw))


def latency_map(
    map_name: str,
    *,
    table: str,
    fields: Sequence[KeyField],
    keys: Callable[[Any], list[KeyValue]],
    histogram: str,
    labels: Labels,
) -> Decoder:
    """A decoder for a latency map (key: labels + log2 slot of microseconds; value:
    ft_latency_t): a counter table of calls and total_us per label set, and one log2
    histogram (usec) per label set."""

    def decode(ctx: DecodeContext) -> list[Result]:
        entries = list(ctx.program.items(map_name))
        rows = ((keys(k), [int(v.count), int(v.total_us)]) for k, v in entries)
        limit = ctx.limits.max_rows
        summed = counter_table(
            table, fields, rows, max_rows=limit, value_fields=("count", "total_us")
        )
        counts = ((k, int(v.count)) for k, v in entries)
        return [summed, *log2_histograms(histogram, "usec", counts, labels, max_histograms=limit)]

    return decode
