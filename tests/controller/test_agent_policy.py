"""A cgroup scope that climbs out: 422 at the API, and refused by a confined agent itself when
a request gets past the API; a good scope still traces exactly its group."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from node_agent.protocol import (
    CounterTable,
    ErrorCode,
    Refusal,
    RefusalReason,
    RunEvent,
    RunState,
    Scope,
    StateChange,
    TraceRequest,
)
from node_agent.settings import AgentSettings
from node_agent.worker import Agent
from tests.controller.conftest import RecordingDispatcher, Tokens
from tests.controller.support import field_paths, register_host
from tests.helpers import row_value, snapshots_of

HOST = "policy-host"
N, M = 2000, 3000  # getppid calls inside the base's sub-group, and in the base itself

HOSTILE_CGROUPS: list[tuple[str, str]] = [
    ("two levels up", "../.."),
    ("up from inside", "app/../../.."),
    ("absolute climb", "/../../etc"),
    ("NUL", "app\x00"),
    ("newline", "app\nother"),
    ("escape character", "app\x1b"),
    ("empty", ""),
    ("blank", "   "),
]


@pytest.fixture(scope="module")
def host(client: TestClient, tokens: Tokens) -> str:
    register_host(client, tokens.headers("admin"), HOST, role="policy")
    return HOST


@pytest.mark.parametrize(
    "cgroup", [c[1] for c in HOSTILE_CGROUPS], ids=[c[0] for c in HOSTILE_CGROUPS]
)
def test_the_api_refuses_a_cgroup_that_climbs_out_naming_scope_cgroup(
    client: TestClient, tokens: Tokens, host: str, dispatcher: RecordingDispatcher, cgroup: str
) -> None:
    sent = len(dispatcher.sent)
    body = {"program": "syscalls", "duration_s": 2, "targets": {"hosts": [host]}}
    answer = client.post(
        "/v1/jobs", json={**body, "scope": {"cgroup": cgroup}}, headers=tokens.headers("admin")
    )
    assert answer.status_code == 422, answer.text
    assert "scope.cgroup" in field_paths(answer), answer.text
    assert len(dispatcher.sent) == sent


@pytest.mark.parametrize(
    "cgroup", [c[1] for c in HOSTILE_CGROUPS], ids=[c[0] for c in HOSTILE_CGROUPS]
)
def test_a_schedule_template_with_such_a_cgroup_is_refused(
    client: TestClient, tokens: Tokens, host: str, cgroup: str
) -> None:
    template = {
        "program": "syscalls",
        "duration_s": 2,
        "targets": {"selector": {"role": "policy"}},
        "scope": {"cgroup": cgroup},
    }
    schedule = {"name": "climbing", "interval_s": 60, "template": template}
    answer = client.post("/v1/schedules", json=schedule, headers=tokens.headers("operator"))
    assert answer.status_code == 422, answer.text
    assert "template.scope.cgroup" in field_paths(answer), answer.text


@pytest.mark.parametrize(
    "include",
    ['#include "/etc/shadow"', "#include </etc/shadow>", '#include "../../../etc/passwd"'],
)
def test_the_api_refuses_a_custom_source_including_other_files(
    client: TestClient, tokens: Tokens, host: str, dispatcher: RecordingDispatcher, include: str
) -> None:
    sent = len(dispatcher.sent)
    body = {
        "program": "custom",
        "duration_s": 2,
        "targets": {"hosts": [host]},
        "source": f"{include}\nint x;\n",
        "maps": [{"name": "x", "kind": "counter"}],
    }
    answer = client.post("/v1/jobs", json=body, headers=tokens.headers("admin"))
    assert answer.status_code == 422, answer.text
    assert "source" in field_paths(answer), answer.text
    assert len(dispatcher.sent) == sent


class Recorded:
    """A real agent confined to a base cgroup; what it publishes is also kept here."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.events: list[Any] = []
        publish = agent.publisher.publish

        def recording(event: Any, job_id: str | None = None) -> None:
            publish(event, job_id=job_id)
            self.events.append(event)

        agent.publisher.publish = recording  # type: ignore[method-assign]

    def run(self, request: TraceRequest) -> tuple[StateChange, list[RunEvent]]:
        final = self.agent.run(request)
        return final, [e for e in self.events if getattr(e, "run_id", None) == request.run_id]


@pytest.fixture
def base(make_cgroup: Callable[[str], Path]) -> Iterator[Path]:
    group = make_cgroup("policy-base")
    (group / "app").mkdir()
    yield group
    app = group / "app"
    for pid in (app / "cgroup.procs").read_text().split():
        (group.parent / "cgroup.procs").write_text(pid)
    app.rmdir()


@pytest.fixture
def confined(redis_url: str, base: Path) -> Iterator[Recorded]:
    settings = AgentSettings(host=HOST, redis_url=redis_url, cgroup=base.name)
    agent = Agent(settings)
    yield Recorded(agent)
    agent.stop()
    agent.redis.close()


HOSTILE_AT_THE_AGENT: list[tuple[str, str]] = [
    *HOSTILE_CGROUPS,
    ("the hierarchy's root", "/"),
    ("another group, absolute", "/init.scope"),
]


@pytest.mark.bcc
@pytest.mark.parametrize(
    "cgroup", [c[1] for c in HOSTILE_AT_THE_AGENT], ids=[c[0] for c in HOSTILE_AT_THE_AGENT]
)
def test_a_confined_agent_refuses_a_cgroup_outside_its_base_sent_past_the_api(
    confined: Recorded, cgroup: str
) -> None:
    run_id = f"policy-{abs(hash(cgroup))}"
    request = TraceRequest(
        run_id=run_id, program="syscalls", duration_s=2, scope=Scope(cgroup=cgroup)
    )
    final, events = confined.run(request)
    assert final.state is RunState.failed, final
    assert final.error is not None and final.error.code is ErrorCode.policy, final.error
    assert final.error.message.startswith("scope.cgroup: "), final.error.message
    assert not snapshots_of(events)
    # Reported, not only returned: the run's final state, then a refusal for the audit log.
    assert events[-2] == final
    refusal = events[-1]
    assert isinstance(refusal, Refusal) and refusal.reason is RefusalReason.policy, refusal
    assert refusal.detail == final.error.message


def _getppid_in(group: Path, calls: int) -> subprocess.Popen[str]:
    script = f"import os, sys\nsys.stdin.readline()\nfor _ in range({calls}): os.getppid()\n"
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, text=True)
    (group / "cgroup.procs").write_text(str(proc.pid))
    return proc


@pytest.mark.bcc
def test_a_confined_agent_traces_exactly_the_group_it_is_given(
    confined: Recorded, base: Path
) -> None:
    in_app, in_base = _getppid_in(base / "app", N), _getppid_in(base, M)
    outside = subprocess.Popen(
        [sys.executable, "-c", "import os, sys\nsys.stdin.readline()\nos.getppid()\n"],
        stdin=subprocess.PIPE,
        text=True,
    )
    procs = (in_app, in_base, outside)

    def release_when_running() -> None:
        events = confined.events
        while not any(getattr(e, "state", None) is RunState.running for e in events):
            if any(isinstance(e, StateChange) and e.state.final for e in events):
                return
            time.sleep(0.05)
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()

    releaser = threading.Thread(target=release_when_running, daemon=True)
    releaser.start()
    request = TraceRequest(
        run_id="policy-app", program="syscalls", duration_s=3, scope=Scope(cgroup="app")
    )
    final, events = confined.run(request)
    releaser.join(timeout=5)
    for proc in procs:
        proc.wait(timeout=30)
    assert final.state is RunState.succeeded, final
    snapshots = snapshots_of(events)
    table = next(r for r in snapshots[-1].results if isinstance(r, CounterTable))
    assert row_value(table, syscall="getppid", pid=in_app.pid) == N
    pids = {keys[1] for keys, _ in table.rows}
    assert in_base.pid not in pids and outside.pid not in pids
