"""Hosts' signed sums at the edge of their range (bpftrace sum() of -2**63 on two hosts) through
the real stack: snapshots on the Redis stream, a real Ingest storing them, then the job's
results and report over the API answer 200 with the sum held at -2**63, never a 500."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from node_agent.kinds import CounterTable, KeyField
from node_agent.kinds.counter_table import MIN_SIGNED
from node_agent.protocol import Snapshot
from tests.controller.conftest import Feeder, Tokens
from tests.controller.support import register_host, state, submit


def lowest_sum() -> CounterTable:
    return CounterTable(
        name="@s",
        key_fields=[KeyField(name="comm")],
        value_fields=["sum"],
        aggregations=["sum"],
        rows=[(["bash"], [MIN_SIGNED])],
        total_rows=1,
    )


def test_two_hosts_lowest_sums_merge_and_report(
    client: TestClient, tokens: Tokens, feeder: Feeder
) -> None:
    names = [f"ext{uuid.uuid4().hex[:6]}-{i}" for i in range(2)]
    for name in names:
        register_host(client, tokens.headers("admin"), name)
    job = submit(client, tokens.headers("operator"), targets={"hosts": names}, program="runqlat")
    runs = job["runs"]
    assert isinstance(runs, list)
    for run in runs:
        final = Snapshot(
            run_id=run["id"],
            seq=0,
            interval_start=10.0,
            interval_end=12.0,
            final=True,
            results=[lowest_sum()],
        )
        feeder(
            run["host"],
            state(run["id"], "running"),
            final,
            state(run["id"], "succeeded"),
            job_id=str(job["id"]),
        )
    viewer = tokens.headers("viewer")
    answer = client.get(f"/v1/jobs/{job['id']}/results", headers=viewer)
    assert answer.status_code == 200, answer.text
    (merged,) = answer.json()["merged"]
    assert merged["rows"] == [[["bash"], [MIN_SIGNED]]]  # -2**64 is held at the floor
    report = client.get(f"/v1/jobs/{job['id']}/report", headers=viewer)
    assert report.status_code == 200, report.text
