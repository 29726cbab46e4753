"""Result kinds: the linear histogram's math with exact answers, and the registry's contract."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from controller.jobs.merge import merge_results
from controller.schedules.continuous import delta
from node_agent.kinds import KINDS, LinearHistogram, Log2Histogram, Result
from node_agent.kinds.histogram import IncompatibleHistograms, combine, summarize
from node_agent.kinds.linear_histogram import MAX_LINEAR_BUCKETS, LinearScale
from node_agent.protocol import Snapshot, StreamEnvelope
from node_agent.render import result_lines
from tests.helpers import percentile


def lhist(buckets: list[tuple[int, int]], **bounds: Any) -> LinearHistogram:
    given = {"min": 0, "max": 30, "step": 10} | bounds
    return LinearHistogram(name="lat", unit="ms", buckets=buckets, **given)


def test_slots_follow_bpftrace_lhist() -> None:
    scale = LinearScale(0, 100, 10)
    assert scale.buckets == 10
    assert scale.bounds(0) == (None, -1)  # below min
    assert scale.bounds(1) == (0, 9)
    assert scale.bounds(10) == (90, 99)
    assert scale.bounds(11) == (100, None)  # at or above max
    assert [scale.upper(s) for s in (0, 1, 10, 11)] == [-1, 9, 99, 100]
    negative = LinearScale(-20, 20, 20)
    assert [negative.bounds(s) for s in range(4)] == [(None, -21), (-20, -1), (0, 19), (20, None)]


def test_percentiles_are_bucket_upper_bounds_and_max_for_overflow() -> None:
    hist = lhist([(0, 1), (1, 5), (3, 2), (11, 2)], max=100)
    scale = hist.scale
    # 10 values: rank 1 is below min, ranks 2-6 in [0, 10), 7-8 in [20, 30), 9-10 overflow.
    assert percentile(hist.buckets, 10, scale) == -1
    assert percentile(hist.buckets, 50, scale) == 9
    assert percentile(hist.buckets, 80, scale) == 29
    assert percentile(hist.buckets, 90, scale) == 100
    summary = summarize(hist.buckets, scale, (50.0, 99.0))
    assert (summary.count, summary.percentiles, summary.max_slot) == (10, {50.0: 9, 99.0: 100}, 11)
    assert percentile([], 50, scale) is None


def test_text_is_bcc_style_with_bpftrace_intervals() -> None:
    assert result_lines(lhist([(0, 1), (1, 4), (4, 2)])) == [
        "lat:",
        "     ms                  : count     distribution",
        "                (..., 0) : 1        |**********                              |",
        "                 [0, 10) : 4        |****************************************|",
        "                [10, 20) : 0        |                                        |",
        "                [20, 30) : 0        |                                        |",
        "               [30, ...) : 2        |********************                    |",
    ]
    one = LinearHistogram(
        name="lat", unit="ms", labels={"disk": "sda"}, min=-20, max=20, step=20, buckets=[(2, 3)]
    )
    assert result_lines(one) == [
        "lat (disk = sda):",
        "     ms                  : count     distribution",
        "                 [0, 20) : 3        |****************************************|",
    ]
    assert result_lines(lhist([]))[1:] == [
        "     ms                  : count     distribution",
        "     (no samples)",
    ]


def test_merge_sums_one_series_and_keeps_other_bounds_apart() -> None:
    a, b = lhist([(1, 4), (4, 2)]), lhist([(1, 1), (2, 7)])
    wide = lhist([(1, 9)], max=60)
    merged = merge_results([("h1", [a]), ("h2", [b]), ("h3", [wide])])
    assert [(h.kind, h.scale, h.buckets) for h in merged] == [
        ("linear_histogram", LinearScale(0, 30, 10), [(1, 5), (2, 7), (4, 2)]),
        ("linear_histogram", LinearScale(0, 60, 10), [(1, 9)]),
    ]


def test_adding_histograms_of_other_bounds_is_refused() -> None:
    with pytest.raises(IncompatibleHistograms, match=r"linear\(0, 60, 10\).*linear\(0, 30, 10\)"):
        combine([lhist([(1, 1)]), lhist([(1, 1)], max=60)])
    log2 = Log2Histogram(name="lat", unit="ms", buckets=[(1, 1)])
    with pytest.raises(IncompatibleHistograms, match="log2"):
        combine([lhist([(1, 1)]), log2])  # type: ignore[list-item]


def test_delta_between_cumulative_snapshots() -> None:
    before, now = lhist([(1, 3)]), lhist([(1, 4), (4, 2)])
    assert delta([now], [before]) == [lhist([(1, 1), (4, 2)])]
    other_bounds = lhist([(1, 3)], max=60)  # another series: nothing to subtract
    assert delta([now], [other_bounds]) == [now]


@pytest.mark.parametrize(
    ("bounds", "buckets", "error"),
    [
        ({"min": 10, "max": 10}, [], "min .10. must be below max .10."),
        ({"min": 0, "max": 25}, [], "must be a multiple of step"),
        ({"step": 0}, [], "greater than or equal to 1"),
        ({"max": (MAX_LINEAR_BUCKETS + 1) * 10}, [], "1001 buckets between min and max"),
        ({}, [(5, 1)], "beyond the overflow slot 4"),
        ({}, [(1, 1), (1, 2)], "bucket slots repeat"),
        ({}, [(1, -1)], "greater than or equal to 0"),
        ({}, [(-1, 1)], "greater than or equal to 0"),
        ({"min": -(2**63) - 1}, [], "greater than or equal to"),
        ({}, [(MAX_LINEAR_BUCKETS + 2, 1)], "less than or equal to 1001"),
    ],
    ids=[
        "empty-range",
        "ragged-step",
        "zero-step",
        "too-many-buckets",
        "slot-past-overflow",
        "repeated-slot",
        "negative-count",
        "negative-slot",
        "min-below-int64",
        "slot-past-bound",
    ],
)
def test_hostile_linear_histograms_are_refused(
    bounds: dict[str, int], buckets: list[tuple[int, int]], error: str
) -> None:
    with pytest.raises(ValidationError, match=error):
        lhist(buckets, **bounds)


def test_a_snapshot_carries_a_linear_histogram_over_the_wire() -> None:
    snap = Snapshot(run_id="r1", seq=0, interval_start=1.0, interval_end=2.0, results=[lhist([])])
    envelope = StreamEnvelope(host="web-1", event=snap)
    back = StreamEnvelope.model_validate_json(envelope.model_dump_json())
    assert back == envelope
    assert isinstance(back.event, Snapshot) and back.event.results[0].kind == "linear_histogram"


def test_every_result_model_has_one_kind() -> None:
    models = TypeAdapter(Result).json_schema()["discriminator"]["mapping"]
    assert sorted(models) == sorted(KINDS)
    assert all(kind.model.model_fields["kind"].default == key for key, kind in KINDS.items())


def test_the_agent_side_of_the_kinds_needs_no_controller() -> None:
    """The agent will ship without controller code: models, merge, delta and text stand alone."""
    code = (
        "import sys, node_agent.kinds, node_agent.protocol, node_agent.render\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'controller'))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"
