"""Hosts' signed sums at the edge of their range (bpftrace sum() of -2**63 on two hosts) through
the real stack: snapshots on the Redis stream, a real Ingest storing them, then the job's
results and report over the API answer 200 with the sum held at -2**63, never a 500."""

from __future__ import annotations

from fastapi.testclient import TestClient

from node_agent.kinds import CounterTable, KeyField
from node_agent.kinds.counter_table import MIN_SIGNED
from tests.controller.conftest import Feeder, Tokens
from tests.controller.support import submit
from tests.controller.test_report_linear import feed_finals, new_hosts


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
    names = new_hosts(client, tokens, "ext", 2)
    job = submit(client, tokens.headers("operator"), targets={"hosts": names}, program="runqlat")
    feed_finals(feeder, job, lambda _: [lowest_sum()])
    viewer = tokens.headers("viewer")
    answer = client.get(f"/v1/jobs/{job['id']}/results", headers=viewer)
    assert answer.status_code == 200, answer.text
    (merged,) = answer.json()["merged"]
    assert merged["rows"] == [[["bash"], [MIN_SIGNED]]]  # -2**64 is held at the floor
    report = client.get(f"/v1/jobs/{job['id']}/report", headers=viewer)
    assert report.status_code == 200, report.text
