"""Counter tables on the controller: a table with a column per host, digests of projected
keys for reports, and the total/rate/key trend metrics."""

from __future__ import annotations

from collections.abc import Sequence

from controller.cli.text import Line, clip, table_lines
from controller.kinds.base import Answer, Column, View
from controller.reports import digest as dg
from node_agent.kinds import CounterTable
from node_agent.kinds.counter_table import combine
from node_agent.protocol import KeyValue
from node_agent.safe_text import printable

KEY_WIDTH = 48


def _key_cell(value: KeyValue, kind: str) -> str:
    # Escaped before the cut, so the width is what the terminal shows; a path or address
    # says the most at its end.
    text = printable(str(value))
    if kind in ("path", "addr"):
        return clip(text, KEY_WIDTH, keep="end")
    return clip(text, KEY_WIDTH)


def section(
    group: Sequence[CounterTable], columns: Sequence[Column], top: int, width: int
) -> list[Line]:
    merged = group[0]
    value = merged.value_fields[0]
    shown = merged.rows[:top]
    tables = {c.host: c.find(merged) for c in columns}
    per_host = {host: {tuple(k): v for k, v in t.rows} for host, t in tables.items() if t}
    header = [f.name.upper() for f in merged.key_fields] + [c.header for c in columns]
    header += [_fleet_header(merged, i) for i in range(len(merged.value_fields))]
    right = [f.type in ("int", "port") for f in merged.key_fields]
    right += [True] * (len(header) - len(right))
    rows: list[list[str]] = []
    for keys, values in shown:
        cells = [_key_cell(k, f.type) for k, f in zip(keys, merged.key_fields, strict=False)]
        for column in columns:
            host_rows = per_host.get(column.host)
            found = host_rows.get(tuple(keys)) if host_rows is not None else None
            if found:
                cells.append(str(found[0]))
            else:  # a host without the key counted 0 of it, but has no min, max or mean
                counted = host_rows is not None and merged.aggregation(0) == "sum"
                cells.append("0" if counted else "-")
        cells += [str(v) for v in values]
        rows.append(cells)
    by = "total" if merged.aggregation(0) == "sum" else f"fleet {merged.aggregation(0)}"
    title = f"{merged.name}: {value} per host, top {len(shown)} of {merged.total_rows} by {by}"
    lines = [Line(title, "title"), *table_lines(header, rows, right)]
    if merged.total_rows > len(shown):
        lines.append(Line(f"... {merged.total_rows - len(shown)} more rows (--top)", "dim"))
    if merged.truncated:
        lines.append(Line("note: some hosts truncated this table: totals are lower bounds", "note"))
    return lines


def _fleet_header(table: CounterTable, field: int) -> str:
    """TOTAL for a sum; the fleet's MIN, MAX or MEAN for the others (bpftrace's min/max/avg)."""
    how = table.aggregation(field)
    head = "TOTAL" if how == "sum" else f"FLEET {how.upper()}"
    return head if field == 0 else f"{head} {table.value_fields[field].upper()}"


def digest(table: CounterTable, run: dg.RunDigest, details: list[dg.TableDetail]) -> None:
    summary, detail = dg.table(table)
    run.tables.append(summary)
    details.append(detail)


def metric(kind: str, key: str | None, tables: Sequence[CounterTable], span_s: float) -> Answer:
    """total/rate: the first value column over the rows (summed, or its min, max or mean as
    the field says; no rate of those); key: one key's value, a multi-field key being its
    values joined by ","."""
    if kind not in ("total", "rate", "key"):
        return None
    table = tables[0]
    unit = table.value_fields[0] if table.value_fields else None
    rows = [values for keys, values in table.rows if values]
    if kind == "key":
        rows = [v for k, v in table.rows if v and ",".join(str(x) for x in k) == key]
    if not rows:
        return (0.0 if table.aggregation(0) == "sum" else None), unit
    value = float(combine(rows, table.value_fields, table.aggregations)[0])
    if kind == "rate":
        if table.aggregation(0) != "sum":
            return None
        return (value / span_s if span_s > 0 else None), f"{unit}/s"
    return value, unit


VIEW = View(section=section, digest=digest, metric=metric)
