"""Report API over snapshots fed through the real Redis stream and Ingest: JSON, Markdown, CSV."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, select, update
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from controller.api.deps import get_session
from controller.cli.errors import CliError
from controller.cli.main import build_parser
from controller.jobs.models import SnapshotRow
from controller.reports import store
from controller.reports.digest import digest
from controller.reports.routes import ReportFormat
from controller.reports.store import RunDigestRow
from node_agent.protocol import Log2Histogram, Result, Snapshot, SnapshotStats
from tests.controller.conftest import Feeder, Tokens
from tests.controller.support import counters, register_host, snapshot, state, submit


@pytest.fixture(scope="module")
def database_url(db_url: str) -> str:
    """Both backends: digests are binary columns, written with a conditional UPDATE."""
    return db_url


def _snap(run_id: str, seq: int, start: float, end: float, results: list[Result]) -> Snapshot:
    return Snapshot(
        run_id=run_id,
        seq=seq,
        interval_start=start,
        interval_end=end,
        final=True,
        results=results,
    )


def _fleet_job(
    client: TestClient, tokens: Tokens, feeder: Feeder, hot: int
) -> tuple[str, list[str]]:
    """Five hosts: four alike, web-4 with slow run-queue waits and `hot` opens of /tmp/hot."""
    job, names = _fleet_submitted(client, tokens)
    _fleet_fed(feeder, job, names, hot)
    return job["id"], names


def _fleet_submitted(client: TestClient, tokens: Tokens) -> tuple[dict[str, Any], list[str]]:
    """_fleet_job's job, submitted: its six hosts have not answered yet."""
    names = [f"web{uuid.uuid4().hex[:6]}-{i}" for i in range(6)]
    for name in names:
        register_host(client, tokens.headers("admin"), name)
    job = submit(
        client,
        tokens.headers("operator"),
        targets={"hosts": names},
        program="runqlat",
        duration_s=2,
    )
    return job, names


def _fleet_fed(feeder: Feeder, job: dict[str, Any], names: list[str], hot: int) -> None:
    """What _fleet_job's hosts send: web-5 fails, the others succeed with two snapshots."""
    runs = {r["host"]: r["id"] for r in job["runs"]}
    for i, name in enumerate(names[:5]):
        slot = 12 if i == 4 else 8
        opens = {"/etc/hosts": 20} | ({"/tmp/hot": hot} if i == 4 else {})
        results: list[Result] = [
            Log2Histogram(name="runqlat", unit="usec", buckets=[(slot, 100)]),
            counters("opens", opens),
        ]
        run = runs[name]
        # Two cumulative snapshots: the span is 10.0 (first start) to 12.0 (last end).
        feeder(
            name,
            state(run, "running"),
            _snap(run, 0, 10.0, 11.0, []),
            _snap(run, 1, 11.0, 12.0, results),
            state(run, "succeeded"),
            job_id=job["id"],
        )
    feeder(
        names[5], state(runs[names[5]], "failed", "compile error: no such map"), job_id=job["id"]
    )


def test_report_json_names_the_odd_host_and_the_missing_one(
    client: TestClient, tokens: Tokens, feeder: Feeder
) -> None:
    job_id, names = _fleet_job(client, tokens, feeder, hot=5000)
    answer = client.get(f"/v1/jobs/{job_id}/report", headers=tokens.headers("viewer"))
    assert answer.status_code == 200, answer.text
    report = answer.json()
    odd = names[4]
    assert {o["host"] for o in report["outliers"]} == {odd}
    sentences = [o["sentence"] for o in report["outliers"]]
    assert f"{odd}: p50 runqlat 16.1x the fleet median (4.1 ms vs 255 us)" in sentences
    assert f"{odd}: opens key=/tmp/hot 2,500/s where the fleet median is 0" in sentences
    host = next(h for h in report["hosts"] if h["host"] == odd)
    assert host["span_s"] == 2.0
    assert host["histograms"][0]["rate_per_s"] == 50.0
    assert host["tables"][0]["totals"] == [5020]
    assert report["missing"] == [
        {
            "host": names[5],
            "state": "failed",
            "reason": "compile error: no such map",
            "has_data": False,
        }
    ]
    assert [(k["host"], k["key"]) for k in report["one_host_keys"]] == [(odd, {"key": "/tmp/hot"})]
    assert "upper bound" in report["percentile_method"]


def test_report_reads_digests_and_digests_newer_snapshots(
    client: TestClient, tokens: Tokens, feeder: Feeder, sessions: sessionmaker[Session]
) -> None:
    names = [f"dig{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    for name in names:
        register_host(client, tokens.headers("admin"), name)
    job = submit(client, tokens.headers("operator"), targets={"hosts": names}, program="runqlat")
    runs = {r["host"]: r["id"] for r in job["runs"]}

    def report() -> dict[str, Any]:
        answer = client.get(f"/v1/jobs/{job['id']}/report", headers=tokens.headers("viewer"))
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def digest_seqs() -> dict[str, int]:
        with sessions() as session:
            rows = session.execute(
                select(RunDigestRow.run_id, RunDigestRow.seq).where(
                    RunDigestRow.job_id == job["id"]
                )
            )
            return {run_id: seq for run_id, seq in rows}

    # A live job: no final snapshot yet, so no digest until a report asks for one.
    for name in names:
        feeder(name, state(runs[name], "running"), job_id=job["id"])
        feeder(name, snapshot(runs[name], 0, [counters("opens", {"/etc/hosts": 5})]))
    assert digest_seqs() == {}
    assert report()["fleet"]["tables"][0]["totals"] == [15]
    assert digest_seqs() == {runs[n]: 0 for n in names}
    # The final snapshots: the ingest digests them as it stores them.
    for i, name in enumerate(names):
        rows = {"/etc/hosts": 7} | ({"/only/here": 3} if i == 2 else {})
        feeder(
            name,
            snapshot(runs[name], 1, [counters("opens", rows)], final=True),
            state(runs[name], "succeeded"),
            job_id=job["id"],
        )
    assert digest_seqs() == {runs[n]: 1 for n in names}
    # With the raw rows gone, the report still has every number: it reads the digests.
    with sessions() as session:
        session.execute(
            update(SnapshotRow).where(SnapshotRow.job_id == job["id"]).values(results=[])
        )
        session.commit()
    body = report()
    fleet = body["fleet"]["tables"][0]
    assert (fleet["totals"], fleet["rows"]) == ([24], 2)
    assert fleet["top"] == [
        {"key": ["/etc/hosts"], "values": [21]},
        {"key": ["/only/here"], "values": [3]},
    ]
    assert [(k["host"], k["key"]) for k in body["one_host_keys"]] == [
        (names[2], {"key": "/only/here"})
    ]
    assert digest_seqs() == {runs[n]: 1 for n in names}


def test_a_report_never_puts_back_an_older_digest(
    client: TestClient, tokens: Tokens, sessions: sessionmaker[Session]
) -> None:
    name = f"old{uuid.uuid4().hex[:6]}"
    register_host(client, tokens.headers("admin"), name)
    job = submit(client, tokens.headers("operator"), targets={"hosts": [name]}, program="runqlat")
    run_id = job["runs"][0]["id"]
    with sessions() as session:
        # The ingest stored the final digest (seq 5) while a report was digesting seq 3.
        store.put(
            session, run_id=run_id, job_id=job["id"], seq=5, results=[counters("t", {"a": 9})]
        )
        session.commit()
        store.keep(session, job["id"], {run_id: digest(3, [counters("t", {"a": 1})])})
        session.commit()
    with sessions() as session:
        row = session.get(RunDigestRow, run_id)
        assert row is not None and (row.seq, row.body["tables"][0]["totals"]) == (5, [9])
        store.keep(session, job["id"], {run_id: digest(6, [counters("t", {"a": 11})])})
    with sessions() as session:
        row = session.get(RunDigestRow, run_id)
        assert row is not None and (row.seq, row.body["tables"][0]["totals"]) == (6, [11])


def test_report_markdown_and_csv(client: TestClient, tokens: Tokens, feeder: Feeder) -> None:
    job_id, names = _fleet_job(client, tokens, feeder, hot=5000)
    md = client.get(f"/v1/jobs/{job_id}/report?format=md", headers=tokens.headers("viewer"))
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    text = md.text
    assert text.index("## Outliers") < text.index("## runqlat (usec)")
    assert f"- {names[5]}: failed (compile error: no such map), no data" in text
    assert f"| {names[4]} | 100 | 50.0/s | 4.1 ms | 4.1 ms | 4.1 ms | 4.1 ms |" in text
    got = client.get(f"/v1/jobs/{job_id}/report?format=csv", headers=tokens.headers("viewer"))
    assert got.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(got.text)))
    p99 = [r for r in rows if r["section"] == "metric" and r["metric"] == "hist:runqlat:p99"]
    assert {r["host"]: float(r["value"]) for r in p99}[names[4]] == 4095.0
    assert {float(r["fleet_median"]) for r in p99} == {255.0}
    assert [r["host"] for r in rows if r["section"] == "missing"] == [names[5]]


def test_compare_two_jobs_host_by_host(client: TestClient, tokens: Tokens, feeder: Feeder) -> None:
    base, _ = _fleet_job(client, tokens, feeder, hot=5000)
    other, names = _fleet_job(client, tokens, feeder, hot=1000)
    viewer = tokens.headers("viewer")
    answer = client.get(f"/v1/reports/compare?base={base}&other={other}", headers=viewer)
    assert answer.status_code == 200, answer.text
    # Different host names per job here: each host appears on one side only.
    hosts = {h["host"]: (h["in_base"], h["in_other"]) for h in answer.json()["hosts"]}
    assert hosts[names[4]] == (False, True)
    same = client.get(f"/v1/reports/compare?base={base}&other={base}", headers=viewer).json()
    deltas = [m["delta"] for h in same["hosts"] for m in h["metrics"]]
    assert deltas and set(deltas) == {0.0}
    missing = client.get(f"/v1/reports/compare?base={base}&other=nope", headers=viewer)
    assert missing.status_code == 404
    assert client.get("/v1/jobs/nope/report", headers=viewer).status_code == 404


def test_cli_report_writes_each_format(
    client: TestClient,
    tokens: Tokens,
    feeder: Feeder,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job_id, names = _fleet_job(client, tokens, feeder, hot=5000)

    def report(*argv: str) -> int:
        args = build_parser().parse_args(
            ["report", job_id, "--token", tokens.token("viewer"), *argv]
        )
        args.http = client  # the real app in-process
        code: int = args.func(args)
        return code

    assert report("--format", "md") == 0
    assert capsys.readouterr().out.startswith(f"# Report: job {job_id} (runqlat, ")
    assert report("--format", "csv", "-o", str(tmp_path / "r.csv")) == 0
    assert (tmp_path / "r.csv").read_text().startswith("section,host,metric")
    assert report("--format", "json", "-o", str(tmp_path / "r.json")) == 0
    assert json.loads((tmp_path / "r.json").read_text())["outliers"][0]["host"] == names[4]
    with pytest.raises(CliError, match="no job nope"):
        args = build_parser().parse_args(["report", "nope", "--token", tokens.token("viewer")])
        args.http = client
        args.func(args)


def test_a_report_says_what_the_trace_cost_each_host(
    client: TestClient, tokens: Tokens, feeder: Feeder
) -> None:
    names = [f"cost{uuid.uuid4().hex[:6]}-{i}" for i in range(2)]
    for name in names:
        register_host(client, tokens.headers("admin"), name)
    job = submit(client, tokens.headers("operator"), targets={"hosts": names}, duration_s=2)
    runs = {r["host"]: r["id"] for r in job["runs"]}
    measured = SnapshotStats(
        bpf_run_time_s=0.0125,
        bpf_runs=250_000,
        events_per_s=125_000.0,
        overhead_pct=1.25,
        agent_cpu_s=0.5,
        events_lost=3,
        attach="kprobe:vfs_read,vfs_write",
    )
    for name, stats in zip(names, [measured, SnapshotStats()], strict=True):
        run = runs[name]
        final = _snap(run, 0, 10.0, 12.0, [counters("syscalls", {"read": 7})])
        feeder(
            name,
            state(run, "running"),
            final.model_copy(update={"stats": stats}),
            state(run, "succeeded"),
            job_id=job["id"],
        )
    viewer = tokens.headers("viewer")
    report = client.get(f"/v1/jobs/{job['id']}/report", headers=viewer).json()
    cost = {h["host"]: h["cost"] for h in report["hosts"]}
    assert cost[names[0]] == {
        "overhead_pct": 1.25,
        "events_per_s": 125_000.0,
        "bpf_run_time_s": 0.0125,
        "bpf_runs": 250_000,
        "agent_cpu_s": 0.5,
        "events_lost": 3,
        "attach": "kprobe:vfs_read,vfs_write",
    }
    assert cost[names[1]]["overhead_pct"] is None  # an agent that did not measure
    md = client.get(f"/v1/jobs/{job['id']}/report?format=md", headers=viewer).text
    assert "## What the trace cost each host" in md
    row = (
        f"| {names[0]} | 1.25 % | 125,000 | 0.013 s (250,000 runs) | 0.50 s | 3"
        r" | kprobe:vfs\_read,vfs\_write |"  # Markdown-escaped
    )
    assert row in md
    assert f"| {names[1]} |" not in md.split("## What the trace cost each host")[1]
    html = client.get(f"/v1/jobs/{job['id']}/report?format=html", headers=viewer).text
    assert "What the trace cost each host" in html and "1.25 %" in html
    assert "kprobe:vfs_read,vfs_write" in html


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL the engine sends while the block runs."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


def writes(seen: list[str]) -> list[str]:
    return [s for s in seen if s.split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE")]


def _just_used(client: TestClient, tokens: Tokens, url: str) -> dict[str, str]:
    """A new viewer token, used once now: its use is not noted again for a minute."""
    headers = {"Authorization": f"Bearer {tokens.make('viewer')}"}
    assert client.get(url, headers=headers).status_code == 200
    return headers


def test_a_report_in_every_format_writes_nothing(
    app: FastAPI, client: TestClient, tokens: Tokens, feeder: Feeder
) -> None:
    """The ingest stored every digest and the token's use was noted less than a minute ago:
    the reports and a comparison send the database not one INSERT, UPDATE or DELETE."""
    job_id, _ = _fleet_job(client, tokens, feeder, hot=5000)
    viewer = _just_used(client, tokens, f"/v1/jobs/{job_id}")
    with statements(app.state.engine) as seen:
        for format in ReportFormat:
            answer = client.get(f"/v1/jobs/{job_id}/report?format={format.value}", headers=viewer)
            assert answer.status_code == 200, (format, answer.text)
        compare = client.get(f"/v1/reports/compare?base={job_id}&other={job_id}", headers=viewer)
        assert compare.status_code == 200, compare.text
    assert any(s.lstrip().upper().startswith("SELECT") for s in seen)
    assert writes(seen) == []


def _refuse(*_: Any) -> None:
    raise AssertionError("a GET wrote through the request's session")


def _refuse_writes(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        _refuse()


def test_a_report_digests_a_live_job_in_memory_and_stores_it_after_answering(
    app: FastAPI,
    client: TestClient,
    tokens: Tokens,
    feeder: Feeder,
    sessions: sessionmaker[Session],
) -> None:
    """No digest stored yet: the report makes them in memory, its session neither flushes
    nor writes (authentication ends its read-only transaction with a commit, which writes
    nothing), and a background task stores them once the answer is sent."""
    names = [f"live{uuid.uuid4().hex[:6]}-{i}" for i in range(2)]
    for name in names:
        register_host(client, tokens.headers("admin"), name)
    job = submit(client, tokens.headers("operator"), targets={"hosts": names}, program="runqlat")
    runs = {r["host"]: r["id"] for r in job["runs"]}
    for name in names:
        feeder(name, state(runs[name], "running"), job_id=job["id"])
        feeder(name, snapshot(runs[name], 0, [counters("opens", {"/etc/hosts": 5})]))
    viewer = _just_used(client, tokens, f"/v1/jobs/{job['id']}")

    def read_only() -> Iterator[Session]:
        with app.state.sessions() as session:
            event.listen(session, "before_flush", _refuse)
            event.listen(session, "do_orm_execute", _refuse_writes)
            yield session

    app.dependency_overrides[get_session] = read_only
    try:
        for format in ("json", "openmetrics"):
            answer = client.get(f"/v1/jobs/{job['id']}/report?format={format}", headers=viewer)
            assert answer.status_code == 200, answer.text
    finally:
        del app.dependency_overrides[get_session]
    with sessions() as session:
        rows = session.execute(
            select(RunDigestRow.run_id, RunDigestRow.seq).where(RunDigestRow.job_id == job["id"])
        )
        assert {run_id: seq for run_id, seq in rows} == {runs[n]: 0 for n in names}
