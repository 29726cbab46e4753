"""Counter tables on the controller: a table with a column per host, digests of projected
keys for reports, and the total/rate/key trend metrics."""

from __future__ import annotations

from collections.abc import Sequence

from controller.cli.text import Line, clip, table_lines
from controller.kinds.base import Answer, Column, View
from controller.reports import digest as dg
from node_agent.kinds import CounterTable
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
    header += ["TOTAL", *(f"TOTAL {v.upper()}" for v in merged.value_fields[1:])]
    right = [f.type in ("int", "port") for f in merged.key_fields]
    right += [True] * (len(header) - len(right))
    rows: list[list[str]] = []
    for keys, values in shown:
        cells = [_key_cell(k, f.type) for k, f in zip(keys, merged.key_fields, strict=False)]
        for column in columns:
            host_rows = per_host.get(column.host)
            if host_rows is None:
                cells.append("-")
            else:
                cells.append(str(host_rows.get(tuple(keys), [0])[0]))
        cells += [str(v) for v in values]
        rows.append(cells)
    title = f"{merged.name}: {value} per host, top {len(shown)} of {merged.total_rows} by total"
    lines = [Line(title, "title"), *table_lines(header, rows, right)]
    if merged.total_rows > len(shown):
        lines.append(Line(f"... {merged.total_rows - len(shown)} more rows (--top)", "dim"))
    if merged.truncated:
        lines.append(Line("note: some hosts truncated this table: totals are lower bounds", "note"))
    return lines


def digest(table: CounterTable, run: dg.RunDigest, details: list[dg.TableDetail]) -> None:
    summary, detail = dg.table(table)
    run.tables.append(summary)
    details.append(detail)


def metric(kind: str, key: str | None, tables: Sequence[CounterTable], span_s: float) -> Answer:
    """total/rate: the first value column summed (rate per second of the span); key: one
    key's count, a multi-field key being its values joined by ","."""
    if kind not in ("total", "rate", "key"):
        return None
    table = tables[0]
    if kind == "key":
        total = sum(
            values[0] for keys, values in table.rows if ",".join(str(k) for k in keys) == key
        )
        return float(total), table.value_fields[0]
    total = sum(values[0] for _, values in table.rows if values)
    if kind == "rate":
        return (total / span_s if span_s > 0 else None), f"{table.value_fields[0]}/s"
    return float(total), table.value_fields[0]


VIEW = View(section=section, digest=digest, metric=metric)
