"""Counter tables: rows of counts keyed by typed fields, largest first.

A value field is a count or a sum unless the table's `aggregations` says otherwise: a min()
or max() column merges over hosts as the min or max, a mean column (bpftrace's avg(), or
stats()'s average) as the mean, and none of them is differenced between snapshots.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field, model_validator

from node_agent.bounds import (
    MAX_COUNT,
    MAX_FIELDS,
    MAX_ROWS,
    Count,
    KeyValue,
    Name,
    Signed,
    WireModel,
)
from node_agent.kinds.base import Kind, name_only

Aggregation = Literal["sum", "min", "max", "mean"]
Row = tuple[list[KeyValue], list[int]]
MIN_SIGNED = -(2**63)  # Signed's floor: hosts' sums of it must not merge below it


class KeyField(WireModel):
    name: Name
    type: Literal["str", "int", "addr", "port", "path"] = "str"


class CounterTable(WireModel):
    """Rows of counts keyed by typed fields, largest first."""

    kind: Literal["counter_table"] = "counter_table"
    name: Name
    key_fields: list[KeyField] = Field(max_length=MAX_FIELDS)
    value_fields: list[Name] = Field(default_factory=lambda: ["count"], max_length=MAX_FIELDS)
    aggregations: list[Aggregation] | None = Field(
        default=None,
        max_length=MAX_FIELDS,
        description="per value field, how it merges over hosts; null: every field is a sum",
    )
    rows: list[
        tuple[
            Annotated[list[KeyValue], Field(max_length=MAX_FIELDS)],
            Annotated[list[Signed], Field(max_length=MAX_FIELDS)],
        ]
    ] = Field(default_factory=list, max_length=MAX_ROWS)
    total_rows: Count = 0
    truncated: bool = False

    @model_validator(mode="after")
    def _one_aggregation_per_field(self) -> CounterTable:
        if self.aggregations is None:
            # a table of counts (every bcc program's): a negative one is a lie
            if any(v < 0 for _, values in self.rows for v in values):
                raise ValueError("a negative value in a table of counts (no aggregations)")
            return self
        if len(self.aggregations) != len(self.value_fields):
            raise ValueError(
                f"{len(self.aggregations)} aggregations for {len(self.value_fields)} value fields"
            )
        return self

    def aggregation(self, field: int) -> Aggregation:
        return self.aggregations[field] if self.aggregations is not None else "sum"


def merge(items: Sequence[tuple[str, CounterTable]]) -> list[CounterTable]:
    return [merge_tables([t for _, t in items])]


def _divide(total: int, count: int) -> int:
    """total / count truncated toward zero, as bpftrace computes its averages."""
    quotient = abs(total) // count
    return quotient if total >= 0 else -quotient


def _weights(fields: Sequence[str]) -> tuple[int, int] | None:
    """The (count, total) fields a mean field is total / count of (stats()), if any."""
    if "count" in fields and "total" in fields:
        return fields.index("count"), fields.index("total")
    return None


def combine(
    rows: Sequence[Sequence[int]],
    fields: Sequence[str],
    aggregations: Sequence[Aggregation] | None,
) -> list[int]:
    """Several rows' values as one (hosts' rows of one key, or a table's rows): each field as
    its aggregation says; a mean is total / count where the table has both (stats()), else
    the rows' unweighted mean (bpftrace prints avg() without its count)."""

    def how(i: int) -> Aggregation:
        return aggregations[i] if aggregations is not None and i < len(aggregations) else "sum"

    width = max((len(r) for r in rows), default=len(fields))
    columns = [[r[i] for r in rows if i < len(r)] for i in range(width)]
    out = [
        min(c) if how(i) == "min" else max(c) if how(i) == "max" else sum(c) if c else 0
        for i, c in enumerate(columns)
    ]
    weights = _weights(fields)
    for i, column in enumerate(columns):
        if how(i) != "mean" or not column:
            continue
        if weights is not None and max(weights) < width and out[weights[0]] > 0:
            out[i] = _divide(out[weights[1]], out[weights[0]])
        else:
            out[i] = _divide(sum(column), len(column))
    return out


def _bounded(values: list[int]) -> list[int]:
    """Values within Signed's range: a sum over hosts (or a difference) may leave it (a
    report's totals, plain ints, are not bounded)."""
    return [max(MIN_SIGNED, min(v, MAX_COUNT)) for v in values]


def merge_tables(tables: Sequence[CounterTable]) -> CounterTable:
    """Values combined by key as each field's aggregation says, largest first value first."""
    first = tables[0]
    grouped: dict[tuple[KeyValue, ...], list[list[int]]] = {}
    for table in tables:
        for keys, values in table.rows:
            grouped.setdefault(tuple(keys), []).append(values)
    rows = sorted(
        (
            (k, _bounded(combine(vs, first.value_fields, first.aggregations)))
            for k, vs in grouped.items()
        ),
        key=lambda kv: (-kv[1][0] if kv[1] else 0, [str(k) for k in kv[0]]),
    )
    return CounterTable(
        name=first.name,
        key_fields=first.key_fields,
        value_fields=first.value_fields,
        aggregations=first.aggregations,
        rows=[(list(k), v) for k, v in rows],
        total_rows=len(rows),
        truncated=any(t.truncated for t in tables),
    )


def _row_key(keys: list[KeyValue]) -> str:
    return json.dumps(keys, default=str)


def _is_count(table: CounterTable, field: int) -> bool:
    """A field that only grows: every field of a table without aggregations, a "count" one."""
    return table.aggregations is None or table.value_fields[field] == "count"


def delta(current: CounterTable, previous: CounterTable | None) -> CounterTable:
    """Sum fields are differenced; negative differences of counts are clamped to 0 (a count
    cleared by the script has not run backwards), those of a signed sum() are kept. A key cut
    by max_rows in the earlier snapshot reappears with its full count, which we cannot tell
    apart (table.truncated says so). min/max fields pass through (the extreme so far), a
    mean field becomes the interval's mean where the table has count and total fields.
    A row stays when one of its sum fields moved (every row when there are none)."""
    rows_before = {_row_key(list(k)): v for k, v in previous.rows} if previous else {}
    sums = [i for i in range(len(current.value_fields)) if current.aggregation(i) == "sum"]
    weights = _weights(current.value_fields)
    rows: list[Row] = []
    for keys, values in current.rows:
        prior = rows_before.get(_row_key(list(keys)), [0] * len(values))
        diff = list(values)
        for i in sums:
            if i < len(prior):
                moved = values[i] - prior[i]
                # clamped for counts only: a sum() may fall
                diff[i] = max(0, moved) if _is_count(current, i) else moved
        if weights is not None and diff[weights[0]] > 0:
            interval_mean = _divide(diff[weights[1]], diff[weights[0]])
            diff = [
                interval_mean if current.aggregation(i) == "mean" else v for i, v in enumerate(diff)
            ]
        diff = _bounded(diff)
        if not sums or any(diff[i] for i in sums):
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
