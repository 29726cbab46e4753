"""Human output: bcc-style histogram bounds and bars, aligned tables."""

from __future__ import annotations

from node_agent.kinds.log2_histogram import slot_bounds
from node_agent.protocol import CounterTable, KeyField, Log2Histogram
from node_agent.render import histogram_lines, table_lines


def test_slot_bounds_match_bcc_print_log2_hist() -> None:
    assert slot_bounds(1) == (0, 1)
    assert slot_bounds(2) == (2, 3)
    assert slot_bounds(3) == (4, 7)
    assert slot_bounds(11) == (1024, 2047)


def test_histogram_has_one_line_per_slot_and_a_full_bar_at_the_peak() -> None:
    hist = Log2Histogram(name="lat", unit="usecs", buckets=[(2, 10), (4, 40)])
    lines = histogram_lines(hist)
    assert "usecs" in lines[0]
    assert len(lines) == 1 + 3  # slots 2, 3, 4
    assert lines[-1].startswith("         8 -> 15")
    assert "|" + "*" * 40 + "|" in lines[-1]
    assert "|" + "*" * 10 + " " * 30 + "|" in lines[1]


def test_table_aligns_and_reports_truncation() -> None:
    table = CounterTable(
        name="t",
        key_fields=[KeyField(name="syscall"), KeyField(name="pid", type="int")],
        rows=[(["read", 1], [100]), (["getppid", 22], [5])],
        total_rows=5,
        truncated=True,
    )
    lines = table_lines(table)
    assert lines[0].split() == ["SYSCALL", "PID", "COUNT"]
    assert lines[1].split() == ["read", "1", "100"]
    assert lines[-1] == "... 3 more rows not shown"
