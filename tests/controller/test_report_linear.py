"""A linear histogram (bpftrace's lhist) through the real stack: snapshots on the Redis stream,
a real Ingest storing and digesting them, then the report (outliers, heatmap, exports), the
side-by-side job view and a schedule's trend over the API, with hand-worked numbers."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from fastapi.testclient import TestClient

from controller.cli.sidebyside import render_results
from controller.jobs.models import JobResults
from controller.kinds import VIEWS
from node_agent.kinds import KINDS, LinearHistogram, Result
from node_agent.protocol import Snapshot
from tests.controller.conftest import Feeder, Tokens
from tests.controller.support import register_host, state, submit

# Five hosts alike (half their values in [0, 10), half in [10, 20)), one all at or above max.
ALIKE = [(1, 50), (2, 50)]
ODD = [(4, 100)]


def lat(buckets: list[tuple[int, int]]) -> LinearHistogram:
    return LinearHistogram(name="lat", unit="packets", min=0, max=30, step=10, buckets=buckets)


def feed_finals(
    feeder: Feeder, job: dict[str, object], results_of: Callable[[str], list[Result]]
) -> None:
    """Each run of the job running, one final snapshot of results_of(its host), succeeded."""
    runs = job["runs"]
    assert isinstance(runs, list)
    for run in runs:
        final = Snapshot(
            run_id=run["id"],
            seq=0,
            interval_start=10.0,
            interval_end=12.0,
            final=True,
            results=results_of(run["host"]),
        )
        feeder(
            run["host"],
            state(run["id"], "running"),
            final,
            state(run["id"], "succeeded"),
            job_id=str(job["id"]),
        )


def _feed(feeder: Feeder, job: dict[str, object], odd: str) -> None:
    feed_finals(feeder, job, lambda host: [lat(ODD if host == odd else ALIKE)])


def new_hosts(client: TestClient, tokens: Tokens, prefix: str, count: int) -> list[str]:
    names = [f"{prefix}{uuid.uuid4().hex[:6]}-{i}" for i in range(count)]
    for name in names:
        register_host(client, tokens.headers("admin"), name)
    return names


def _hosts(client: TestClient, tokens: Tokens) -> list[str]:
    return new_hosts(client, tokens, "lin", 6)


def test_every_kind_has_a_controller_view() -> None:
    assert sorted(VIEWS) == sorted(KINDS)


def test_report_ranks_heatmaps_and_exports_a_linear_histogram(
    client: TestClient, tokens: Tokens, feeder: Feeder
) -> None:
    names = _hosts(client, tokens)
    odd = names[5]
    job = submit(client, tokens.headers("operator"), targets={"hosts": names}, program="runqlat")
    _feed(feeder, job, odd)
    viewer = tokens.headers("viewer")
    answer = client.get(f"/v1/jobs/{job['id']}/report", headers=viewer)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    stats = {h["host"]: h["histograms"][0] for h in report["hosts"]}
    # 100 values: rank 50 in [0, 10) -> 9; ranks 90, 99 and the top in [10, 20) -> 19.
    assert [stats[names[0]][p] for p in ("count", "p50", "p90", "p99", "max")] == [
        100,
        9,
        19,
        19,
        19,
    ]
    # All in the overflow slot: reported as max (30), the last finite bound.
    assert [stats[odd][p] for p in ("p50", "p90", "p99", "max")] == [30, 30, 30, 30]
    assert stats[odd]["rate_per_s"] == 50.0
    # The fleet: 250 in [0, 10), 250 in [10, 20), 100 overflow; rank 300 -> 19, rank 540 -> 30.
    fleet = report["fleet"]["histograms"][0]
    assert [fleet[p] for p in ("count", "p50", "p90", "p99", "max")] == [600, 19, 30, 30, 30]
    assert report["outliers"] and report["outliers"][0]["host"] == odd
    assert {o["host"] for o in report["outliers"]} == {odd}
    assert any(o["metric"] == "hist:lat:distribution" for o in report["outliers"])

    html = client.get(f"/v1/jobs/{job['id']}/report?format=html", headers=viewer).text
    assert "heatmap of lat" in html and "≥30 packets" in html and "≤19 packets" in html
    om = client.get(f"/v1/jobs/{job['id']}/report?format=openmetrics", headers=viewer).text
    lines = om.splitlines()
    assert "# HELP fleettrace_lat lat in packets; linear(0, 30, 10) buckets, " in om
    odd_lines = [line for line in lines if f'host="{odd}"' in line]
    assert odd_lines == [
        f'fleettrace_lat_bucket{{host="{odd}",le="9.0"}} 0',
        f'fleettrace_lat_bucket{{host="{odd}",le="19.0"}} 0',
        f'fleettrace_lat_bucket{{host="{odd}",le="+Inf"}} 100',
        f'fleettrace_lat_count{{host="{odd}"}} 100',
    ]

    results = client.get(f"/v1/jobs/{job['id']}/results", headers=viewer)
    assert results.status_code == 200, results.text
    view = [line.text for line in render_results(JobResults.model_validate(results.json()))]
    title = next(i for i, text in enumerate(view) if text.startswith("lat:"))
    assert view[title] == "lat: linear(0, 30, 10) histogram of packets"
    fleet_row = next(text for text in view[title:] if text.split()[:1] == ["(all)"])
    assert fleet_row.split() == ["(all)", "600", "19", "30", "30", ">=30"]
    assert any("[30, ...) : 100" in text for text in view[title:])


def test_trend_of_a_linear_histogram_percentile(
    client: TestClient, tokens: Tokens, feeder: Feeder
) -> None:
    names = _hosts(client, tokens)
    odd = names[5]
    template = {"program": "runqlat", "duration_s": 2, "targets": {"hosts": names}}
    body = {"name": f"lin-{uuid.uuid4().hex[:6]}", "interval_s": 3600, "template": template}
    headers = tokens.headers("operator")
    created = client.post("/v1/schedules", json=body, headers=headers)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    fired = client.post(f"/v1/schedules/{sid}/run", headers=headers)
    assert fired.status_code == 200, fired.text
    job_id = fired.json()["recent"][0]["job_id"]
    job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
    _feed(feeder, job, odd)
    for metric, alike, other, unit in (
        ("p90:lat", 19.0, 30.0, "packets"),
        ("p50:lat", 9.0, 30.0, "packets"),
        ("count:lat", 100.0, 100.0, "events"),
    ):
        answer = client.get(
            f"/v1/schedules/{sid}/trend", params={"metric": metric}, headers=headers
        )
        assert answer.status_code == 200, answer.text
        trend = answer.json()
        values = {s["host"]: [p["value"] for p in s["points"]] for s in trend["series"]}
        assert values == {n: [other if n == odd else alike] for n in names}
        assert trend["unit"] == unit
