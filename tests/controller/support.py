"""Helpers for controller tests: the harness's polling and process control, answers' field
names, API shortcuts, event factories."""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from controller.hosts.agent_metrics import agent_families
from devstack.harness import clean_env as clean_env
from devstack.harness import free_port as free_port
from devstack.harness import stop_process as stop_process
from devstack.harness import wait_for as wait_for
from node_agent.protocol import (
    CounterTable,
    Feature,
    FoldedStacks,
    HeadersState,
    Heartbeat,
    HostCapabilities,
    KeyField,
    KeyValue,
    ProgramSupport,
    Result,
    RunState,
    Snapshot,
    StackCount,
    StateChange,
    StreamEnvelope,
)

if TYPE_CHECKING:
    from controller.jobs.models import HostResult, Run, SnapshotRow

IN_CI = bool(os.environ.get("CI"))


def missing(what: str) -> None:
    """A service the tests need is absent: CI must have it, a workstation may skip."""
    if IN_CI:
        pytest.fail(f"CI requires {what}")
    pytest.skip(f"needs {what}")


def alive(pid: int) -> bool:
    """Running, or at least not a zombie (an orphan's zombie is gone in all but its number)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def authenticates(url: str) -> bool:
    """Whether Redis lets in whoever holds `url` (an agent's identity, say)."""
    import redis

    from node_agent.wire import client_url

    client = redis.Redis.from_url(client_url(url))
    try:
        return bool(client.ping())
    except redis.AuthenticationError:
        return False
    finally:
        client.close()


def field_paths(answer: Any) -> list[str]:
    """The dotted field paths a 4xx answer's detail names (FastAPI's and ours share a shape)."""
    detail = answer.json().get("detail")
    if not isinstance(detail, list):
        return []
    paths = []
    for item in detail:
        loc = [str(part) for part in item.get("loc", [])]
        if loc and loc[0] == "body":
            loc = loc[1:]
        paths.append(".".join(loc))
    return paths


@contextlib.contextmanager
def timed() -> Iterator[Callable[[], float]]:
    start = time.monotonic()
    yield lambda: time.monotonic() - start


class Workload:
    """A process in a cgroup that waits for a go, then runs `body` (Python; os, sys and time
    imported), under the process name `comm` if given."""

    def __init__(self, group: Path, body: str, comm: bytes | None = None) -> None:
        name = f"open('/proc/self/comm', 'wb').write({comm!r})\n" if comm is not None else ""
        script = f"import os, sys, time\n{name}sys.stdin.readline()\n{body}"
        self.proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
        (group / "cgroup.procs").write_text(str(self.proc.pid))

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.close()

    def wait(self) -> None:
        assert self.proc.wait(timeout=60) == 0


# -- API shortcuts ------------------------------------------------------------------------------


def register_host(
    client: TestClient, headers: dict[str, str], name: str, **labels: str
) -> dict[str, Any]:
    answer = client.post("/v1/hosts", json={"name": name, "labels": labels}, headers=headers)
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


def submit(client: TestClient, headers: dict[str, str], **job: Any) -> dict[str, Any]:
    job.setdefault("program", "syscalls")
    job.setdefault("duration_s", 2)
    answer = client.post("/v1/jobs", json=job, headers=headers)
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


def send_json(
    method: str, url: str, headers: dict[str, str], body: dict[str, Any], *, expect: int
) -> dict[str, Any]:
    """A JSON request to a served controller (real HTTP, not the test client), status checked."""
    answer = httpx.request(method, url, json=body, headers=headers, timeout=30)
    assert answer.status_code == expect, f"{method} {url}: {answer.status_code} {answer.text}"
    result: dict[str, Any] = answer.json()
    return result


def get_job(client: TestClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    answer = client.get(f"/v1/jobs/{job_id}", headers=headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def runs_by_host(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {run["host"]: run for run in job["runs"]}


def wait_job(
    client: TestClient,
    headers: dict[str, str],
    job_id: str,
    done: Callable[[dict[str, Any]], bool],
    timeout: float,
    what: str,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        job = get_job(client, headers, job_id)
        return job if done(job) else None

    try:
        result: dict[str, Any] = wait_for(check, timeout, what)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; job now: {get_job(client, headers, job_id)}") from None
    return result


def job_final(job: dict[str, Any]) -> bool:
    return job["state"] not in ("pending", "running")


def run_cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    http: TestClient,
    token: str,
) -> Callable[..., tuple[int, str, str]]:
    """`fleettrace ARGS...` through the real main() against the app: (code, stdout, stderr)."""
    # The package exports the function `main` under the module's name.
    main_module = importlib.import_module("controller.cli.main")
    monkeypatch.delenv("FLEETTRACE_URL", raising=False)
    monkeypatch.setenv("FLEETTRACE_TOKEN", token)
    real = main_module.build_parser

    def with_test_client() -> Any:
        parser = real()
        parser.set_defaults(http=http)
        return parser

    monkeypatch.setattr(main_module, "build_parser", with_test_client)

    def call(*argv: str) -> tuple[int, str, str]:
        code = main_module.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return call


# -- what the controller stored --------------------------------------------------------------


def host_result(
    host: str,
    results: Sequence[Result] = (),
    *,
    state: RunState = RunState.succeeded,
    run_id: str | None = None,
    interval_end: float = 2.0,
) -> HostResult:
    """A host's row of a job's results: its final snapshot's results, or (for a run that
    ended without one) nothing at all."""
    from controller.jobs.models import HostResult

    stored = state is RunState.succeeded
    return HostResult(
        host=host,
        run_id=run_id or f"run-{host}",
        state=state,
        seq=0 if stored else None,
        final=stored,
        interval_start=0.0 if stored else None,
        interval_end=interval_end if stored else None,
        results=list(results),
        stats=None,
    )


def snapshot_row(
    run: Run,
    seq: int = 0,
    *,
    final: bool = True,
    interval: tuple[float, float] = (0.0, 1.0),
    results: Sequence[Any] = (),
) -> SnapshotRow:
    """A run's snapshot as the ingest stores it (results as JSON), to add to a session."""
    from controller.jobs.models import SnapshotRow

    return SnapshotRow(
        run_id=run.id,
        job_id=run.job_id,
        host_name=run.host_name,
        seq=seq,
        final=final,
        interval_start=interval[0],
        interval_end=interval[1],
        results=list(results),
        stats={},
    )


# A first bootstrap looks (ok), then installs, configures and starts the agent (changed).
FIRST_BOOTSTRAP_STEPS = {
    **dict.fromkeys(("preflight", "packages"), "ok"),
    **dict.fromkeys(("upload", "install", "config", "service"), "changed"),
    "verify": "ok",
}


def step_statuses(run: dict[str, Any]) -> dict[str, str]:
    """A bootstrap run's steps as name -> status, in order."""
    return {step["name"]: step["status"] for step in run["steps"]}


# -- what agents send -------------------------------------------------------------------------


def envelope(
    host: str, event: Snapshot | StateChange | Heartbeat, job_id: str | None = None
) -> str:
    return StreamEnvelope(host=host, job_id=job_id, event=event).model_dump_json()


def state(run_id: str, new: str, reason: str | None = None) -> StateChange:
    return StateChange(run_id=run_id, state=RunState(new), reason=reason)


def snapshot(
    run_id: str, seq: int, results: Sequence[Result] = (), *, final: bool = False
) -> Snapshot:
    return Snapshot(
        run_id=run_id,
        seq=seq,
        interval_start=0.0,
        interval_end=float(seq + 1),
        final=final,
        results=list(results),
    )


def counters(name: str, rows: dict[str, int]) -> CounterTable:
    """A one-key counter table, largest first, as agents send it."""
    ordered: list[tuple[list[KeyValue], list[int]]] = [
        ([k], [v]) for k, v in sorted(rows.items(), key=lambda kv: -kv[1])
    ]
    return CounterTable(
        name=name, key_fields=[KeyField(name="key")], rows=ordered, total_rows=len(rows)
    )


def stacks(rows: dict[str, int], name: str = "cpu") -> FoldedStacks:
    """Folded stacks from "a;b;c" lines and their counts, as agents send them."""
    return FoldedStacks(
        name=name,
        stacks=[StackCount(frames=k.split(";"), count=v) for k, v in rows.items()],
    )


def capabilities(*, without: Sequence[Feature] = (), programs: bool = True) -> HostCapabilities:
    """A host's capabilities as an agent would report them, lacking some features."""
    from node_agent.programs import catalog

    features = {f: f not in without for f in Feature}
    support = []
    if programs:
        for spec in catalog().values():
            lacking = sorted(f.value for f in spec.features if not features[f])
            reason = f"needs {', '.join(lacking)}, which this host lacks" if lacking else None
            support.append(ProgramSupport(program=spec.name, supported=not lacking, reason=reason))
    return HostCapabilities(
        kernel_release="6.1.0-test",
        arch="x86_64",
        bcc_version="0.26.0",
        headers=HeadersState.exact,
        features=features,
        programs=support,
    )


def heartbeat(host: str, caps: HostCapabilities | None) -> Heartbeat:
    return Heartbeat(host=host, agent_version="0.1.0", capabilities=caps)


def agent_exposition(sessions: sessionmaker[Session]) -> str:
    """agent_families() as a scrape gets them: a registry's text exposition."""

    class Agents:
        def collect(self) -> Iterator[Metric]:
            with sessions() as session:
                yield from agent_families(session)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Agents())  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def agent_samples(sessions: sessionmaker[Session]) -> dict[tuple[str, str], float]:
    """agent_exposition() parsed back by prometheus_client's text parser:
    {(sample name, host): value}."""
    return {
        (sample.name, sample.labels["host"]): sample.value
        for family in text_string_to_metric_families(agent_exposition(sessions))
        for sample in family.samples
    }
