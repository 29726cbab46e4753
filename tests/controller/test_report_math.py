"""Report math against hand-computed numbers: percentiles, merge, MAD, JS divergence, keys."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller.jobs.merge import merge_results
from controller.jobs.models import JobResults, JobState
from controller.reports.analysis import Z_THRESHOLD, human, js_divergence, modified_z, tie_aware_z
from controller.reports.digest import (
    decode,
    decode_detail,
    digest,
    encode,
    encode_detail,
    histogram,
)
from controller.reports.fleet import js_rows
from controller.reports.models import OneHostKey
from controller.reports.service import build_report, compare, histogram_stats
from node_agent.protocol import CounterTable, KeyField, KeyValue, Log2Histogram, Result, RunState
from tests.controller.support import host_result


def _hist(buckets: list[tuple[int, int]], name: str = "runqlat") -> Log2Histogram:
    return Log2Histogram(name=name, unit="usec", buckets=buckets)


def _opens(rows: list[tuple[int, str, int]]) -> CounterTable:
    data: list[tuple[list[KeyValue], list[int]]] = [
        ([pid, "cat", path], [n]) for pid, path, n in [(r[0], r[1], r[2]) for r in rows]
    ]
    return CounterTable(
        name="opens",
        key_fields=[KeyField(name="pid", type="int"), KeyField(name="comm"), KeyField(name="path")],
        rows=data,
        total_rows=len(data),
    )


def _results(
    per_host: dict[str, list[Result]], failed: dict[str, RunState] | None = None
) -> JobResults:
    hosts = [host_result(h, r) for h, r in per_host.items()]
    hosts += [host_result(h, state=s) for h, s in (failed or {}).items()]
    merged = merge_results([(h.host, h.results) for h in hosts if h.results])
    return JobResults(
        job_id="j1", program="runqlat", state=JobState.partial, hosts=hosts, merged=merged
    )


def test_percentiles_are_bucket_upper_bounds_at_the_rank() -> None:
    # n=10: rank 5 falls in slot 3 [4,7], rank 9 in slot 5 [16,31], rank ceil(9.9)=10 in slot 10.
    stats = histogram_stats(histogram(_hist([(3, 5), (5, 4), (10, 1)])), span=2.0)
    assert (stats.count, stats.p50, stats.p90, stats.p99, stats.max) == (10, 7, 31, 1023, 1023)
    assert stats.rate_per_s == 5.0
    empty = histogram_stats(histogram(_hist([])), span=None)
    assert (empty.p50, empty.max, empty.rate_per_s) == (None, None, None)


def test_merge_sums_buckets_and_counters() -> None:
    merged = merge_results(
        [
            ("a", [_hist([(3, 5)]), _opens([(1, "/x", 2)])]),
            ("b", [_hist([(3, 1), (4, 2)]), _opens([(1, "/x", 3), (2, "/y", 1)])]),
        ]
    )
    hist = next(r for r in merged if isinstance(r, Log2Histogram))
    table = next(r for r in merged if isinstance(r, CounterTable))
    assert hist.buckets == [(3, 6), (4, 2)]
    assert table.rows == [([1, "cat", "/x"], [5]), ([2, "cat", "/y"], [1])]


def test_modified_z_scores() -> None:
    # median 12, |dev| = 2,1,0,1,88 -> MAD 1; z = 0.6745 * dev.
    z = modified_z([10, 11, 12, 13, 100])
    assert z[4] == pytest.approx(0.6745 * 88)
    assert z[0] == pytest.approx(-0.6745 * 2)


def test_modified_z_when_mad_is_zero_uses_the_mean_absolute_deviation() -> None:
    # median 10, MAD 0, mean |dev| = 40/5 = 8: z = 40 / (1.253314 * 8) = 3.989.
    z = modified_z([10, 10, 10, 10, 50])
    assert z[4] == pytest.approx(40 / (1.253314 * 8))
    assert z[:4] == [0.0] * 4
    assert modified_z([7, 7, 7]) == [0.0] * 3
    assert modified_z([1, 1000]) == [0.0, 0.0]  # two hosts: no robust centre


def test_js_divergence() -> None:
    assert js_divergence([(3, 4)], [(3, 100)]) == 0.0
    assert js_divergence([(1, 1)], [(2, 9)]) == pytest.approx(1.0)
    # p=(1,0), q=(.5,.5), m=(.75,.25): (log2(4/3) + .5*log2(2/3) + .5*1) / 2
    expected = (math.log2(4 / 3) + 0.5 * math.log2(2 / 3) + 0.5) / 2
    assert js_divergence([(1, 2)], [(1, 1), (2, 1)]) == pytest.approx(expected)
    assert expected == pytest.approx(0.311278, abs=1e-6)
    assert js_divergence([], [(1, 1)]) == 0.0


def test_js_divergence_of_many_rows_matches_the_reference() -> None:
    rows = [[(1, 2)], [(1, 1), (2, 1)], [(3, 4)], [], [(0, 5), (63, 1)]]
    fleet = [(1, 1), (2, 1), (3, 4), (0, 1)]
    matrix = np.zeros((len(rows), 64), dtype=np.int64)
    for i, row in enumerate(rows):
        for slot, count in row:
            matrix[i, slot] = count
    dense = np.zeros(64, dtype=np.int64)
    for slot, count in fleet:
        dense[slot] = count
    got = js_rows(matrix, dense)
    assert list(got) == pytest.approx([js_divergence(r, fleet) for r in rows])
    assert got[3] == 0.0  # an empty host


def test_a_digest_survives_storage() -> None:
    table = _opens([(1, "/etc/a", 3), (2, "/etc/a", 2), (3, "/etc/b", 7)])
    run, details = digest(4, [_hist([(3, 5), (9, 1)]), table])
    body, blob = encode(run)
    back = decode(body, blob)
    assert (back.seq, back.results) == (4, 2)
    assert back.histograms[0].buckets() == [(3, 5), (9, 1)]
    assert back.histograms[0].p99 == 511
    t = back.tables[0]
    assert (t.totals, t.rows, t.comparable) == ([12], 3, ["comm", "path"])
    # Projected over comm and path: /etc/a 3+2, /etc/b 7; sorted by hash, named by the detail.
    keys = decode_detail(encode_detail(details))[0]
    named = {tuple(keys.key(i)): int(t.values[i, 0]) for i in range(len(t.hashes))}
    assert named == {("cat", "/etc/a"): 5, ("cat", "/etc/b"): 7}
    assert list(t.hashes) == sorted(t.hashes)


def _one_host_keys(tables: dict[str, CounterTable]) -> list[OneHostKey]:
    report = build_report(_results({h: [t] for h, t in tables.items()}), spans={}, reasons={})
    return report.one_host_keys


def test_keys_on_one_host_ignore_pids() -> None:
    found = _one_host_keys(
        {
            "a": _opens([(1, "/etc/a", 3), (2, "/etc/a", 2)]),
            "b": _opens([(9, "/etc/a", 4), (9, "/only/b", 7), (8, "/only/b", 1)]),
        }
    )
    assert [(k.host, k.key, k.values) for k in found] == [
        ("b", {"comm": "cat", "path": "/only/b"}, [8])
    ]
    assert _one_host_keys({"a": _opens([(1, "/z", 1)])}) == []


def test_human_units() -> None:
    assert human(4095, "usec") == "4.1 ms"
    assert human(255, "usec") == "255 us"
    assert human(3, "nsec") == "3 ns"
    assert human(2500, "msec") == "2.5 s"
    assert human(12, "bytes") == "12 bytes"


def test_report_ranks_the_slow_host_first_and_lists_missing_hosts() -> None:
    per_host: dict[str, list[Result]] = {f"h{i}": [_hist([(8, 100)])] for i in range(4)}
    per_host["h4"] = [_hist([(12, 100)])]
    results = _results(per_host, failed={"h5": RunState.unsupported})
    report = build_report(
        results,
        spans={f"run-h{i}": 2.0 for i in range(5)},
        reasons={"run-h5": "missing tracepoint sched:sched_wakeup"},
    )
    assert {o.host for o in report.outliers} == {"h4"}
    first = report.outliers[0]
    # fleet q=(.8,.2) over slots 8,12; h4 p=(0,1); m=(.4,.6).
    jsd = (math.log2(1 / 0.6) + 0.8 * 1 + 0.2 * math.log2(0.2 / 0.6)) / 2
    assert (first.kind, first.score) == ("distance", pytest.approx(jsd))
    sentences = [o.sentence for o in report.outliers]
    assert "h4: p50 runqlat 16.1x the fleet median (4.1 ms vs 255 us)" in sentences
    assert report.fleet.histograms[0].p50 == 255
    assert report.hosts[4].deviation["hist:runqlat:p99"] == pytest.approx(4095 / 255)
    assert [(m.host, m.state, m.reason, m.has_data) for m in report.missing] == [
        ("h5", RunState.unsupported, "missing tracepoint sched:sched_wakeup", False)
    ]
    assert report.hosts[0].metrics[-1].id == "hist:runqlat:rate"
    assert report.hosts[0].metrics[-1].value == 50.0


def test_a_busy_key_on_one_host_is_the_top_outlier_and_compare_gives_deltas() -> None:
    quiet = [(10, "/etc/hosts", 20), (11, "/etc/passwd", 10)]
    per_host: dict[str, list[Result]] = {f"h{i}": [_opens(quiet)] for i in range(4)}
    per_host["h4"] = [_opens([*quiet, (12, "/tmp/hot", 5000)])]
    report = build_report(
        _results(per_host), spans={f"run-h{i}": 2.0 for i in range(5)}, reasons={}
    )
    first = report.outliers[0]
    assert (first.host, first.metric) == ("h4", "key:opens:comm=cat path=/tmp/hot")
    assert first.sentence == "h4: opens comm=cat path=/tmp/hot 2,500/s where the fleet median is 0"
    assert {(o.host, o.metric) for o in report.outliers[1:]} == {("h4", "table:opens:count")}
    assert [(k.host, k.key["path"]) for k in report.one_host_keys] == [("h4", "/tmp/hot")]
    other = build_report(_results({"h0": [_opens(quiet[:1])]}), spans={"run-h0": 4.0}, reasons={})
    diff = compare(report, other)
    h0 = next(h for h in diff.hosts if h.host == "h0")
    total = next(m for m in h0.metrics if m.id == "table:opens:count")
    assert (total.base, total.other, total.delta, total.ratio) == (15.0, 5.0, -10.0, 1 / 3)
    assert [(h.host, h.in_base, h.in_other) for h in diff.hosts][-1] == ("h4", True, False)


def test_a_lone_odd_host_among_agreeing_ones_scores_by_how_far_off_it_is() -> None:
    """MAD is 0 when most hosts agree: the demo's runqlat p50 of 15, 15 and 4095 us (log2
    buckets tie often) must make the third an outlier, and 15, 15, 16 must not; the
    mean-absolute-deviation fallback scored both 3/1.2533 = 2.39, never an outlier."""
    assert modified_z([15, 15, 4095])[2] == pytest.approx(3 / 1.253314)
    high = tie_aware_z([15, 15, 4095])
    assert high[2] == pytest.approx(Z_THRESHOLD * 8) and high[:2] == [0.0, 0.0]
    assert abs(tie_aware_z([15, 15, 16])[2]) < Z_THRESHOLD
    # Five agreeing hosts and one a hair off: not an outlier (the fallback gave it 3.99 > 3.5).
    assert abs(tie_aware_z([10, 10, 10, 10, 11])[4]) < Z_THRESHOLD
    assert tie_aware_z([10, 10, 10, 10, 50])[4] > Z_THRESHOLD
    # Below the agreed value, and a fleet agreeing on zero.
    assert tie_aware_z([100, 100, 3])[2] < -Z_THRESHOLD
    assert tie_aware_z([0, 0, 5])[2] > Z_THRESHOLD
    assert abs(tie_aware_z([0, 0, 1])[2]) <= Z_THRESHOLD
    # Spread hosts keep the modified z-scores; fewer than 3 hosts score nothing.
    assert tie_aware_z([10, 11, 12, 13, 100]) == modified_z([10, 11, 12, 13, 100])
    assert tie_aware_z([1, 1000]) == [0.0, 0.0]
