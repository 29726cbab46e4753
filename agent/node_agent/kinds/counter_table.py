"""Counter tables: rows of counts keyed by typed fields, largest first."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field

from node_agent.bounds import MAX_FIELDS, MAX_ROWS, Count, KeyValue, Name, WireModel
from node_agent.kinds.base import Kind, name_only


class KeyField(WireModel):
    name: Name
    type: Literal["str", "int", "addr", "port", "path"] = "str"


class CounterTable(WireModel):
    """Rows of counts keyed by typed fields, largest first."""

    kind: Literal["counter_table"] = "counter_table"
    name: Name
    key_fields: list[KeyField] = Field(max_length=MAX_FIELDS)
    value_fields: list[Name] = Field(default_factory=lambda: ["count"], max_length=MAX_FIELDS)
    rows: list[
        tuple[
            Annotated[list[KeyValue], Field(max_length=MAX_FIELDS)],
            Annotated[list[Count], Field(max_length=MAX_FIELDS)],
        ]
    ] = Field(default_factory=list, max_length=MAX_ROWS)
    total_rows: Count = 0
    truncated: bool = False


def merge(items: Sequence[tuple[str, CounterTable]]) -> list[CounterTable]:
    return [merge_tables([t for _, t in items])]


def merge_tables(tables: Sequence[CounterTable]) -> CounterTable:
    """Counts summed by key, largest first value first."""
    first = tables[0]
    sums: dict[tuple[KeyValue, ...], list[int]] = {}
    for table in tables:
        for keys, values in table.rows:
            have = sums.setdefault(tuple(keys), [0] * len(values))
            for i, v in enumerate(values):
                have[i] += v
    rows = sorted(sums.items(), key=lambda kv: (-kv[1][0], [str(k) for k in kv[0]]))
    return CounterTable(
        name=first.name,
        key_fields=first.key_fields,
        value_fields=first.value_fields,
        rows=[(list(k), v) for k, v in rows],
        total_rows=len(rows),
        truncated=any(t.truncated for t in tables),
    )


def _row_key(keys: list[KeyValue]) -> str:
    return json.dumps(keys, default=str)


def delta(current: CounterTable, previous: CounterTable | None) -> CounterTable:
    """Negative differences are clamped to 0: a key cut by max_rows in the earlier snapshot
    reappears with its full count, which we cannot tell apart (table.truncated says so)."""
    rows_before = {_row_key(list(k)): v for k, v in previous.rows} if previous else {}
    rows = []
    for keys, values in current.rows:
        prior = rows_before.get(_row_key(list(keys)), [0] * len(values))
        diff = [max(0, v - p) for v, p in zip(values, prior, strict=False)]
        if any(diff):
            rows.append((keys, diff))
    rows.sort(key=lambda row: -row[1][0] if row[1] else 0)
    return current.model_copy(update={"rows": rows, "total_rows": len(rows)})


def table_lines(table: CounterTable, limit: int | None = None) -> list[str]:
    header = [f.name.upper() for f in table.key_fields] + [v.upper() for v in table.value_fields]
    rows = [[str(k) for k in keys] + [str(v) for v in values] for keys, values in table.rows]
    if limit is not None:
        rows = rows[:limit]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    numeric = [f.type in ("int", "port") for f in table.key_fields] + [True] * len(
        table.value_fields
    )

    def fmt(cells: list[str]) -> str:
        out = [
            c.rjust(widths[i]) if numeric[i] else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  ".join(out).rstrip()

    lines = [fmt(header)] + [fmt(r) for r in rows]
    if table.truncated or (limit is not None and len(table.rows) > limit):
        shown = min(len(table.rows), limit or len(table.rows))
        lines.append(f"... {table.total_rows - shown} more rows not shown")
    return lines


KIND = Kind(
    model=CounterTable,
    merge=merge,
    delta=delta,
    text=table_lines,
    title=lambda t: t.name,
    series=name_only,
)
