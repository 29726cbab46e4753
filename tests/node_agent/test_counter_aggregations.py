"""Counter tables whose value fields are not all sums (bpftrace's min/max/avg/stats): merge
over hosts and delta between snapshots honour each field's aggregation; a table without
aggregations (every result before them) still means sums."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from node_agent.kinds import CounterTable, KeyField
from node_agent.kinds.counter_table import Aggregation, delta, merge_tables

Rows = list[tuple[list[str | int], list[int]]]


def table(rows: Rows, fields: list[str], aggregations: list[Aggregation] | None) -> CounterTable:
    return CounterTable(
        name="@x",
        key_fields=[KeyField(name="comm")],
        value_fields=fields,
        aggregations=aggregations,
        rows=rows,
        total_rows=len(rows),
    )


MERGES: dict[str, tuple[list[str], list[Aggregation] | None, list[Rows], Rows]] = {
    "sums (no aggregations)": (
        ["count"],
        None,
        [[(["a"], [3]), (["b"], [1])], [(["a"], [4])]],
        [(["a"], [7]), (["b"], [1])],
    ),
    "min": (["min"], ["min"], [[(["a"], [-3])], [(["a"], [5])]], [(["a"], [-3])]),
    "max": (["max"], ["max"], [[(["a"], [-3])], [(["a"], [5])]], [(["a"], [5])]),
    "avg: the hosts' mean, truncated like bpftrace": (
        ["avg"],
        ["mean"],
        [[(["a"], [10])], [(["a"], [-15])], [(["a"], [0])]],
        [(["a"], [-1])],  # -5 / 3 truncates toward zero
    ),
    "stats: average is total / count over hosts": (
        ["count", "average", "total"],
        ["sum", "mean", "sum"],
        [[(["a"], [1, 100, 100])], [(["a"], [3, 10, 30])]],
        [(["a"], [4, 32, 130])],  # not (100 + 10) / 2
    ),
}


@pytest.mark.parametrize("fields, how, hosts, want", MERGES.values(), ids=MERGES.keys())
def test_merge_honours_each_fields_aggregation(
    fields: list[str], how: list[Aggregation] | None, hosts: list[Rows], want: Rows
) -> None:
    merged = merge_tables([table(rows, fields, how) for rows in hosts])
    assert merged.rows == want
    assert merged.aggregations == how


def test_delta_differences_sums_and_passes_the_others() -> None:
    fields = ["count", "average", "total"]
    how: list[Aggregation] = ["sum", "mean", "sum"]
    before = table([(["a"], [2, 10, 20]), (["b"], [1, 5, 5])], fields, how)
    after = table([(["a"], [4, 25, 100]), (["b"], [1, 5, 5])], fields, how)
    # a: 2 more values totalling 80 in the interval: their mean is 40; b did nothing
    assert delta(after, before).rows == [(["a"], [2, 40, 80])]
    lows = table([(["a"], [-7])], ["min"], ["min"])
    assert delta(lows, table([(["a"], [-3])], ["min"], ["min"])).rows == [(["a"], [-7])]


def test_sum_tables_delta_as_before() -> None:
    before = table([(["a"], [5])], ["count"], None)
    after = table([(["a"], [9]), (["b"], [2])], ["count"], None)
    assert delta(after, before).rows == [(["a"], [4]), (["b"], [2])]


def test_one_aggregation_per_value_field() -> None:
    with pytest.raises(ValidationError, match="2 aggregations for 1 value fields"):
        table([], ["min"], ["min", "max"])


def test_a_result_from_before_aggregations_reads_as_sums() -> None:
    old = {"kind": "counter_table", "name": "t", "key_fields": [], "rows": [[[], [3]]]}
    parsed = CounterTable.model_validate(old)
    assert parsed.aggregations is None and parsed.aggregation(0) == "sum"
    assert merge_tables([parsed, parsed]).rows == [([], [6])]


def test_negative_values_only_where_the_table_says_what_they_are() -> None:
    with pytest.raises(ValidationError, match="negative value in a table of counts"):
        table([(["a"], [-1])], ["count"], None)
    signed = table([(["a"], [-6])], ["sum"], ["sum"])
    # a sum() of negative values falls: its delta is not clamped the way a count's is
    assert delta(signed, table([(["a"], [-2])], ["sum"], ["sum"])).rows == [(["a"], [-4])]


def test_signed_sums_merge_and_difference_within_their_bounds() -> None:
    low = table([(["a"], [-(2**63)])], ["sum"], ["sum"])
    assert merge_tables([low, low]).rows == [(["a"], [-(2**63)])]
    high = table([(["a"], [2**64 - 1])], ["sum"], ["sum"])
    assert merge_tables([high, high]).rows == [(["a"], [2**64 - 1])]
    # from the floor to the top: a difference past the top is held there, not refused
    assert delta(high, low).rows == [(["a"], [2**64 - 1])]
    assert delta(low, high).rows == [(["a"], [-(2**63)])]


def test_a_sum_that_falls_from_positive_has_a_negative_delta() -> None:
    before = table([(["a"], [5])], ["sum"], ["sum"])
    assert delta(table([(["a"], [3])], ["sum"], ["sum"]), before).rows == [(["a"], [-2])]
    # a count() (or stats()'s count) never runs backwards: a cleared map is clamped to 0
    counts = table([(["a"], [5])], ["count"], ["sum"])
    assert delta(table([(["a"], [3]), (["b"], [1])], ["count"], ["sum"]), counts).rows == [
        (["b"], [1])
    ]
