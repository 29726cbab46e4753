"""Counter tables of bpftrace's min/max/avg/stats on the controller: the side-by-side view,
the trend metrics, the report's host and fleet tables and the stored digest say the min, max
or mean, never a sum or a per-second rate of one. No database, Redis or root."""

from __future__ import annotations

from collections.abc import Sequence

from controller.jobs.models import JobResults, JobState
from controller.kinds import view_of
from controller.kinds.base import Column
from controller.reports import digest as dg
from controller.reports.models import TableStats
from controller.reports.service import build_report
from node_agent.kinds import CounterTable, KeyField, Result
from node_agent.kinds.counter_table import Aggregation, merge_tables
from tests.controller.support import host_result

SPAN = 2.0


def table(
    name: str,
    rows: list[tuple[list[str | int], list[int]]],
    fields: Sequence[str],
    how: list[Aggregation],
) -> CounterTable:
    return CounterTable(
        name=name,
        key_fields=[KeyField(name="comm")],
        value_fields=list(fields),
        aggregations=how,
        rows=rows,
        total_rows=len(rows),
    )


def lows(host_min: int) -> CounterTable:
    return table("@mn", [(["bash"], [host_min]), (["sh"], [host_min + 10])], ["min"], ["min"])


def stats(count: int, total: int) -> CounterTable:
    how: list[Aggregation] = ["sum", "mean", "sum"]
    return table(
        "@st", [(["bash"], [count, total // count, total])], ["count", "average", "total"], how
    )


PER_HOST: dict[str, list[Result]] = {
    "h1": [lows(-4), stats(1, 100)],
    "h2": [lows(7), stats(3, 30)],
    "h3": [lows(2), stats(4, 8)],
}


def report_tables() -> tuple[dict[str, TableStats], dict[str, dict[str, TableStats]]]:
    hosts = [host_result(h, r, interval_end=SPAN) for h, r in PER_HOST.items()]
    results = JobResults(
        job_id="j", program="bpftrace", state=JobState.succeeded, hosts=hosts, merged=[]
    )
    spans = {f"run-{h}": SPAN for h in PER_HOST}
    report = build_report(results, spans=spans, reasons={})
    fleet = {t.name: t for t in report.fleet.tables}
    per_host = {h.host: {t.name: t for t in h.tables} for h in report.hosts}
    return fleet, per_host


def test_fleet_tables_take_the_min_and_the_weighted_mean() -> None:
    fleet, _ = report_tables()
    mins = fleet["@mn"]
    assert mins.totals == [-4]
    assert {tuple(t.key): t.values for t in mins.top} == {("bash",): [-4], ("sh",): [6]}
    st = fleet["@st"]
    # 8 values totalling 138: the fleet's average is 138 // 8, not a sum of averages
    assert st.totals == [8, 17, 138]
    assert st.top[0].values == [8, 17, 138]


def test_host_tables_give_no_rate_of_a_min_or_a_mean() -> None:
    _, per_host = report_tables()
    h1 = per_host["h1"]
    assert h1["@mn"].totals == [-4]
    assert h1["@mn"].rates_per_s == [None]
    assert h1["@st"].rates_per_s == [1 / SPAN, None, 100 / SPAN]


def test_trend_metrics_of_a_min_table() -> None:
    view = view_of(lows(3))
    assert view.metric("total", None, [lows(3)], SPAN) == (3.0, "min")
    assert view.metric("key", "sh", [lows(3)], SPAN) == (13.0, "min")
    assert view.metric("rate", None, [lows(3)], SPAN) is None
    counts = table("@c", [(["a"], [4]), (["b"], [6])], ["count"], ["sum"])
    assert view.metric("rate", None, [counts], SPAN) == (5.0, "count/s")


def test_the_side_by_side_view_names_the_fleet_min() -> None:
    merged = merge_tables([lows(-4), lows(7)])
    columns = [
        Column(host=h, header=h.upper(), results=[lows(m)]) for h, m in (("h1", -4), ("h2", 7))
    ]
    lines = [line.text for line in view_of(merged).section([merged], columns, 10, 120)]
    assert "by fleet min" in lines[0]
    assert "FLEET MIN" in lines[1] and "TOTAL" not in lines[1]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:4]}
    assert rows == {"sh": ["6", "17", "6"], "bash": ["-4", "7", "-4"]}
    # a host without a key has no min of it (a count would be 0)
    partial = [Column(host="h3", header="H3", results=[table("@mn", [], ["min"], ["min"])])]
    lines = [line.text for line in view_of(merged).section([merged], partial, 10, 120)]
    assert lines[2].split()[1] == "-"


def test_the_stored_digest_keeps_the_aggregations() -> None:
    run, _ = dg.digest(0, [lows(1), stats(2, 10)])
    body, blob = dg.encode(run)
    back = dg.decode(body, blob)
    assert [t.aggregations for t in back.tables] == [["min"], ["sum", "mean", "sum"]]
    old = {
        **body,
        "tables": [{k: v for k, v in t.items() if k != "aggregations"} for t in body["tables"]],
    }
    assert [t.aggregations for t in dg.decode(old, blob).tables] == [None, None]
