"""The side-by-side view of job results, and histogram percentiles, against hand-worked values."""

from __future__ import annotations

import io
from datetime import datetime, timezone
from textwrap import dedent

import pytest

from controller.cli.sidebyside import aligned_histogram, render_results, short_stack
from controller.cli.text import Line, emit, side_by_side
from controller.jobs.merge import merge_results
from controller.jobs.models import HostResult, JobResults, JobState, RunPublic
from node_agent.kinds.histogram import summarize
from node_agent.kinds.log2_histogram import LOG2
from node_agent.protocol import (
    CounterTable,
    EventSamples,
    FoldedStacks,
    KeyField,
    Log2Histogram,
    Result,
    RunState,
    SnapshotStats,
    StackCount,
)
from node_agent.render import histogram_lines
from tests.helpers import percentile

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)


# -- percentiles ----------------------------------------------------------------------------------

# 100 samples: 5 in slot 1 [0, 1], 10 in slot 3 [4, 7], 85 in slot 5 [16, 31]; an empty slot 4.
SPREAD = [(5, 85), (1, 5), (3, 10), (4, 0)]


@pytest.mark.parametrize(
    ("p", "bound"),
    [(1, 1), (5, 1), (5.5, 7), (10, 7), (15, 7), (16, 31), (50, 31), (99, 31), (100, 31)],
)
def test_percentile_is_the_upper_bound_of_the_bucket_reaching_the_rank(
    p: float, bound: int
) -> None:
    assert percentile(SPREAD, p) == bound


def test_percentile_edges() -> None:
    assert percentile([], 50) is None
    assert percentile([(4, 0)], 50) is None
    assert percentile([(0, 3)], 50) == 0  # slot 0 holds only 0
    # 99.9% of 1000 is rank 999 exactly: in slot 2 [2, 3], not in the one outlier's slot 9.
    assert percentile([(2, 999), (9, 1)], 99.9) == 3
    assert percentile([(2, 999), (9, 1)], 100) == 511
    for bad in (0, -1, 100.5):
        with pytest.raises(ValueError):
            percentile(SPREAD, bad)


def test_summary() -> None:
    summary = summarize(SPREAD, LOG2)
    assert summary.count == 100
    assert summary.percentiles == {50.0: 31, 90.0: 31, 99.0: 31}
    assert summary.max_slot == 5
    assert summary.max_bounds == (16, 31)
    empty = summarize([], LOG2)
    assert (empty.count, empty.max_slot, empty.max_bounds) == (0, None, None)


# -- fixtures for the view -------------------------------------------------------------------------


def table(rows: list[tuple[str, int]], name: str = "syscalls") -> CounterTable:
    return CounterTable(
        name=name,
        key_fields=[KeyField(name="syscall")],
        rows=[([k], [v]) for k, v in rows],
        total_rows=len(rows),
    )


def hist(buckets: list[tuple[int, int]], **labels: str | int) -> Log2Histogram:
    return Log2Histogram(name="runqlat", unit="usecs", labels=labels, buckets=buckets)


def job(
    per_host: dict[str, list[Result]],
    *,
    states: dict[str, RunState] | None = None,
    reasons: dict[str, str] | None = None,
    stats: dict[str, SnapshotStats] | None = None,
) -> tuple[JobResults, list[RunPublic]]:
    states = states or {}
    hosts = [
        HostResult(
            host=name,
            run_id=f"run-{name}",
            state=states.get(name, RunState.succeeded),
            seq=1 if results else None,
            final=bool(results),
            interval_start=100.0 if results else None,
            interval_end=102.5 if results else None,
            results=results,
            stats=(stats or {}).get(name, SnapshotStats()) if results else None,
        )
        for name, results in per_host.items()
    ]
    merged = merge_results([(h.host, h.results) for h in hosts if h.results])
    ok = all(h.state is RunState.succeeded for h in hosts)
    results = JobResults(
        job_id="j-1",
        program="demo",
        state=JobState.succeeded if ok else JobState.partial,
        hosts=hosts,
        merged=merged,
    )
    runs = [
        RunPublic(
            id=h.run_id,
            host=h.host,
            state=h.state,
            reason=(reasons or {}).get(h.host),
            error=None,
            created_at=T0,
            started_at=None,
            finished_at=None,
            snapshots=2 if h.results else 0,
        )
        for h in hosts
    ]
    return results, runs


def text(results: JobResults, runs: list[RunPublic], **kw: int) -> list[str]:
    return [line.text for line in render_results(results, runs=runs, **kw)]


# -- the view ----------------------------------------------------------------------------------


def test_counters_one_column_per_host_and_a_total_with_a_host_that_never_ran() -> None:
    results, runs = job(
        {
            "web-1": [table([("read", 1200), ("write", 300), ("futex", 40)])],
            "web-2": [table([("read", 800), ("openat", 90)])],
            "db-1": [],
        },
        states={"db-1": RunState.expired},
        reasons={"db-1": "host away"},
    )
    assert text(results, runs) == [
        "job j-1  demo  partial  (2 of 3 hosts succeeded)",
        "HOST   STATE      SNAPSHOTS  NOTE",
        "web-1  succeeded   2, final",
        "web-2  succeeded   2, final",
        "db-1   expired            0  host away",
        "",
        "syscalls: count per host, top 4 of 4 by total",
        "SYSCALL  web-1  web-2  TOTAL",
        "read      1200    800   2000",
        "write      300      0    300",
        "openat       0     90     90",
        "futex       40      0     40",
        "no data from: db-1 expired",
    ]


def test_counters_keep_the_top_rows_and_extra_value_fields_as_totals() -> None:
    opens = CounterTable(
        name="opens",
        key_fields=[KeyField(name="pid", type="int"), KeyField(name="path", type="path")],
        value_fields=["count", "errors"],
        rows=[([7, "/etc/passwd"], [5, 1]), ([7, "/" + "d" * 60 + "/tail.conf"], [2, 2])],
        total_rows=2,
    )
    other = opens.model_copy(update={"rows": [([7, "/etc/passwd"], [4, 0])], "total_rows": 1})
    results, runs = job({"a": [opens], "b": [other]})
    lines = text(results, runs, top=1)
    assert lines[5:] == [
        "opens: count per host, top 1 of 2 by total",
        "PID  PATH         a  b  TOTAL  TOTAL ERRORS",
        "  7  /etc/passwd  5  4      9             1",
        "... 1 more rows (--top)",
    ]
    wide = text(results, runs, top=5)
    # A long path keeps its end, where the file name is.
    assert wide[8].split()[1] == "..." + ("d" * 60 + "/tail.conf")[-45:]


def test_a_host_whose_run_did_not_succeed_is_marked_where_its_data_shows() -> None:
    results, runs = job(
        {"a": [table([("read", 3)])], "b": [table([("read", 1)])]},
        states={"b": RunState.cancelled},
        reasons={"b": "cancelled by request"},
    )
    lines = text(results, runs)
    assert lines[3] == "b*    cancelled   2, final  cancelled by request"
    assert lines[4] == "* run did not succeed: its columns hold what it sent"
    assert lines[7:9] == ["SYSCALL  a  b*  TOTAL", "read     3   1      4"]
    styles = {line.text: line.style for line in render_results(results, runs=runs)}
    assert styles[lines[3]] == "bad"


def test_histograms_summary_rows_per_host_and_fleet() -> None:
    # a: 252 samples; ranks 126, 227, 250 all land in slots 4 or 5; max slot 7 [64, 127].
    a = hist([(3, 10), (4, 200), (5, 40), (7, 2)])
    # b: 454 samples, 400 of them in slot 6 [32, 63]; max slot 10 [512, 1023].
    b = hist([(2, 1), (4, 50), (6, 400), (10, 3)])
    results, runs = job({"a": [a], "b": [b]})
    lines = text(results, runs, width=80)
    start = lines.index("runqlat: log2 histogram of usecs")
    summary = dedent("""\
        percentiles are the upper bound of their bucket; MAX is the highest bucket
        HOST   COUNT  P50  P90  P99       MAX
        a        252   15   31   31    64-127
        b        454   63   63   63  512-1023
        (all)    706   63   63   63  512-1023
        """)
    assert lines[start + 1 : start + 6] == summary.splitlines()
    # Below it, each host's bcc-style histogram over the same slots, stacked at 80 columns.
    assert lines[start + 7] == "a"
    a_block = lines[start + 8 : start + 8 + 10]
    assert a_block == aligned_histogram(a, "usecs", 2, 10)
    assert lines[start + 18 : start + 20] == ["", "b"]
    assert lines[start + 20 : start + 30] == histogram_lines(b)


def test_labelled_histograms_group_rows_by_label_set() -> None:
    results, runs = job(
        {
            "a": [hist([(4, 10)], syscall="read"), hist([(2, 4)], syscall="write")],
            "b": [hist([(4, 30)], syscall="read")],
        }
    )
    lines = text(results, runs, width=200)
    start = lines.index("runqlat: log2 histogram of usecs, top 2 of 2 label sets")
    expected = dedent("""\
        SYSCALL  HOST   COUNT  P50  P90  P99   MAX
        read     a         10   15   15   15  8-15
                 b         30   15   15   15  8-15
                 (all)     40   15   15   15  8-15
        write    a          4    3    3    3   2-3
                 b          0    -    -    -     -
                 (all)      4    3    3    3   2-3
        """)
    assert lines[start + 2 : start + 9] == expected.splitlines()
    # At 200 columns the two hosts' histograms stand side by side.
    assert " ".join(lines[start + 10].split()) == "a (syscall = read) b (syscall = read)"


def test_aligned_histogram_pads_missing_low_slots_and_runs_to_the_common_top() -> None:
    a = hist([(4, 8), (5, 2)])
    lines = aligned_histogram(a, "usecs", 2, 7)
    assert lines[0] == histogram_lines(a)[0]
    assert len(lines) == 1 + 6  # slots 2..7
    own = histogram_lines(a)
    assert lines[3:5] == own[1:3]  # slots 4 and 5 exactly as bcc-style rendering draws them
    assert lines[1].split() == ["2", "->", "3", ":", "0"]
    assert lines[1].index(":") == own[1].index(":")
    assert lines[6].split()[:5] == ["64", "->", "127", ":", "0"]
    assert aligned_histogram(None, "usecs", 2, 7)[1].strip() == "(no samples)"


def test_side_by_side_blocks_fit_the_width() -> None:
    blocks = [["aa", "a"], ["bb", "b", "b"], ["cc"]]
    assert side_by_side(blocks, width=10, gap=2) == ["aa  bb  cc", "a   b", "    b"]
    assert side_by_side(blocks, width=6, gap=2) == ["aa  bb", "a   b", "    b", "", "cc"]
    assert side_by_side(blocks, width=1, gap=2) == ["aa", "a", "", "bb", "b", "b", "", "cc"]


def test_stacks_side_by_side_with_short_frames() -> None:
    def stacks(*items: tuple[list[str], int]) -> FoldedStacks:
        return FoldedStacks(
            name="cpu_profile",
            stacks=[StackCount(frames=f, count=c) for f, c in items],
            total_rows=len(items),
        )

    deep = ["python3", "main", "serve", "handle", "json_dumps", "encode"]
    results, runs = job(
        {
            "a": [stacks((deep, 120), (["python3", "main", "read_[k]"], 10))],
            "b": [stacks((["gzip", "deflate", "longest_match"], 300), (deep, 10))],
        }
    )
    lines = text(results, runs)
    start = lines.index("cpu_profile: top 3 of 3 stacks by total samples")
    assert lines[start + 2 : start + 6] == [
        "  a    b  TOTAL  STACK",
        "  0  300    300  gzip;deflate;longest_match",
        "120   10    130  python3;..;handle;json_dumps;encode",
        " 10    0     10  python3;main;read_[k]",
    ]
    assert short_stack(["x"]) == "x"
    assert short_stack(["p", "a", "b", "c"]) == "p;a;b;c"
    assert short_stack(["p", "a", "b", "c", "d"], leaf=2) == "p;..;c;d"


def test_event_samples_merged_with_a_host_column() -> None:
    def execs(*events: list[str | int | float], seen: int) -> EventSamples:
        return EventSamples(
            name="recent_execs", fields=["pid", "comm"], events=list(events), seen=seen
        )

    results, runs = job(
        {"a": [execs([1, "sh"], [2, "ls"], seen=5)], "b": [execs([3, "gzip"], seen=1)]}
    )
    lines = text(results, runs, top=2)
    start = lines.index("recent_execs: recent events from all hosts, oldest first")
    assert [line.split() for line in lines[start + 1 : start + 5]] == [
        ["HOST", "PID", "COMM"],
        ["a", "2", "ls"],
        ["b", "3", "gzip"],
        ["(2", "most", "recent", "of", "6", "seen,", "0", "dropped)"],
    ]


def test_nothing_yet_and_loss_notes() -> None:
    results, runs = job({"a": [], "b": []}, states={"a": RunState.running, "b": RunState.pending})
    assert text(results, runs)[-2:] == ["", "no results yet"]
    results, runs = job(
        {"a": [table([("read", 1)])]},
        stats={"a": SnapshotStats(events_lost=12, map_full_drops=3, rows_truncated=True)},
    )
    assert text(results, runs)[-1] == (
        "note: a: 12 events lost; 3 drops on full maps; output truncated at max_rows"
    )


def test_what_each_trace_cost_its_host_is_one_line() -> None:
    results, runs = job(
        {"a": [table([("read", 1)])], "b": [table([("read", 2)])]},
        stats={
            "a": SnapshotStats(overhead_pct=2.345, events_per_s=180_000.4),
            "b": SnapshotStats(overhead_pct=0.04, events_per_s=12),
        },
    )
    assert text(results, runs)[-1] == (
        "cost to each host, % of one CPU: a 2.3 % (180,000 events/s), b 0.0 % (12 events/s)"
    )


def test_emit_is_plain_text_off_a_terminal() -> None:
    out = io.StringIO()
    emit([Line("title", "title"), Line("row", "bad")], out)
    assert out.getvalue() == "title\nrow\n"


def test_the_attach_point_of_each_host_is_one_line() -> None:
    results, runs = job(
        {"a": [table([("read", 1)])], "b": [table([("read", 2)])]},
        stats={
            "a": SnapshotStats(attach="tracepoint:sock:inet_sock_set_state"),
            "b": SnapshotStats(attach="kprobe:tcp_v4_connect,tcp_v6_connect"),
        },
    )
    assert text(results, runs)[-1] == (
        "attach point on each host: a tracepoint:sock:inet_sock_set_state,"
        " b kprobe:tcp_v4_connect,tcp_v6_connect"
    )
