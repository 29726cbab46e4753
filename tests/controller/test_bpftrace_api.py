"""bpftrace at the API: admin-only (403 naming `program`), its script checked like the agents
check it (422 naming `params.script`), schedules of it made, changed and run by admins only,
and a trend of `count:@` over its counter table."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.jobs.models import Run
from node_agent.bpftrace.script import MAX_SCRIPT, check_script
from node_agent.errors import PolicyViolation
from node_agent.kinds.counter_table import CounterTable, KeyField
from node_agent.programs import get_program
from node_agent.protocol import Feature
from tests.controller.conftest import Feeder, RecordingDispatcher, Tokens
from tests.controller.support import (
    capabilities,
    field_paths,
    heartbeat,
    register_host,
    snapshot_row,
)

SCRIPT = "tracepoint:syscalls:sys_enter_openat { @[comm] = count(); }"


@pytest.fixture(scope="module")
def label(client: TestClient, tokens: Tokens) -> str:
    """Two hosts under a label of this module's own."""
    value = f"bpft-{uuid.uuid4().hex[:6]}"
    for suffix in ("a", "b"):
        register_host(client, tokens.headers("admin"), f"{value}-{suffix}", role=value)
    return value


def _job(label: str, **params: Any) -> dict[str, Any]:
    return {
        "program": "bpftrace",
        "params": params,
        "duration_s": 2,
        "targets": {"selector": {"role": label}},
    }


def _refusal(script: str) -> str:
    """What the agents' own check says of a script (the API must say the same)."""
    with pytest.raises(PolicyViolation) as refused:
        check_script(script)
    return refused.value.message


def test_the_catalog_describes_bpftrace_as_admin_only(client: TestClient, tokens: Tokens) -> None:
    answer = client.get("/v1/programs", headers=tokens.headers("viewer"))
    assert answer.status_code == 200, answer.text
    programs = answer.json()
    (described,) = [p for p in programs if p["name"] == "bpftrace"]
    assert described["engine"] == "bpftrace" and described["admin_only"] is True
    script = next(p for p in described["params"] if p["name"] == "script")
    assert script["max_length"] == MAX_SCRIPT


def test_an_operator_may_not_run_bpftrace(client: TestClient, tokens: Tokens, label: str) -> None:
    answer = client.post(
        "/v1/jobs", json=_job(label, script=SCRIPT), headers=tokens.headers("operator")
    )
    assert answer.status_code == 403, answer.text
    assert field_paths(answer) == ["program"]
    assert "bpftrace program needs the admin role" in answer.text


def test_an_admin_runs_it_on_every_matching_host(
    client: TestClient, tokens: Tokens, label: str, dispatcher: RecordingDispatcher
) -> None:
    sent = len(dispatcher.sent)
    answer = client.post(
        "/v1/jobs", json=_job(label, script=SCRIPT, keys="comm"), headers=tokens.headers("admin")
    )
    assert answer.status_code == 201, answer.text
    job = answer.json()
    assert job["params"] == {"script": SCRIPT, "keys": "comm"}
    requests = [r for _, r in dispatcher.sent[sent:]]
    assert sorted(h for h, _ in dispatcher.sent[sent:]) == [f"{label}-a", f"{label}-b"]
    assert {r.program for r in requests} == {"bpftrace"}
    assert {r.params["script"] for r in requests} == {SCRIPT}


@pytest.mark.parametrize(
    ("params", "field", "needle"),
    [
        ({}, "params.script", _refusal("")),  # no script: the default, empty
        ({"script": "   \n\t"}, "params.script", _refusal("   \n\t")),
        ({"script": "x" * (MAX_SCRIPT + 1)}, "params.script", str(MAX_SCRIPT)),
        ({"script": SCRIPT, "keys": "k" * 2000}, "params.keys", "1024"),
        ({"script": SCRIPT, "nope": "1"}, "params.nope", "unknown parameter"),
    ],
    ids=["missing", "blank", "too long", "keys too long", "unknown param"],
)
def test_a_bad_script_is_refused_naming_the_field(
    client: TestClient, tokens: Tokens, label: str, params: dict[str, Any], field: str, needle: str
) -> None:
    answer = client.post("/v1/jobs", json=_job(label, **params), headers=tokens.headers("admin"))
    assert answer.status_code == 422, answer.text
    assert field_paths(answer) == [field], answer.text
    assert needle in answer.json()["detail"][0]["msg"], answer.text


def test_the_policy_message_is_the_agents(client: TestClient, tokens: Tokens, label: str) -> None:
    """Every script the agents' check refuses is refused at the API with the same words."""
    for script in ("", 'tracepoint:syscalls:sys_enter_getppid { system("id"); }'):
        message = _refusal(script)  # fails here if the agents stopped refusing it
        answer = client.post(
            "/v1/jobs", json=_job(label, script=script), headers=tokens.headers("admin")
        )
        assert answer.status_code == 422, answer.text
        assert field_paths(answer) == ["params.script"]
        assert message in answer.json()["detail"][0]["msg"]


# -- schedules ------------------------------------------------------------------------------


def _schedule(label: str, **template: Any) -> dict[str, Any]:
    return {
        "name": f"bpft-{uuid.uuid4().hex[:8]}",
        "interval_s": 3600,
        "template": {**_job(label, script=SCRIPT), **template},
    }


def test_schedules_of_bpftrace_are_made_by_admins_only(
    client: TestClient, tokens: Tokens, label: str
) -> None:
    operator, admin = tokens.headers("operator"), tokens.headers("admin")
    answer = client.post("/v1/schedules", json=_schedule(label), headers=operator)
    assert answer.status_code == 403, answer.text
    assert field_paths(answer) == ["template.program"]
    answer = client.post("/v1/schedules", json=_schedule(label), headers=admin)
    assert answer.status_code == 201, answer.text
    assert answer.json()["template"]["params"]["script"] == SCRIPT
    # Its script is checked as a job's is, under template.
    bad = _schedule(label, params={"script": " "})
    answer = client.post("/v1/schedules", json=bad, headers=admin)
    assert answer.status_code == 422 and field_paths(answer) == ["template.params.script"]
    assert _refusal(" ") in answer.json()["detail"][0]["msg"]


def test_custom_bcc_is_still_not_scheduled_saying_why(
    client: TestClient, tokens: Tokens, label: str
) -> None:
    custom = _schedule(
        label,
        program="custom",
        params={},
        source="int x;",
        maps=[{"name": "m", "kind": "counter"}],
    )
    answer = client.post("/v1/schedules", json=custom, headers=tokens.headers("admin"))
    assert answer.status_code == 422, answer.text
    assert field_paths(answer) == ["template.program"]
    assert "not custom bcc C" in answer.text


def test_an_operator_may_not_change_or_run_an_admins_bpftrace_schedule(
    client: TestClient, tokens: Tokens, label: str, dispatcher: RecordingDispatcher
) -> None:
    operator, admin = tokens.headers("operator"), tokens.headers("admin")
    created = client.post("/v1/schedules", json=_schedule(label), headers=admin).json()
    url = f"/v1/schedules/{created['id']}"
    other = {"script": "tracepoint:syscalls:sys_enter_getppid { @ = count(); }"}
    for method, path, body in [
        ("PATCH", url, {"template": _job(label, **other)}),
        ("PATCH", url, {"interval_s": 60}),
        ("POST", f"{url}/run", None),
    ]:
        sent = len(dispatcher.sent)
        answer = client.request(method, path, json=body, headers=operator)
        assert answer.status_code == 403, (method, path, answer.text)
        assert "needs the admin role" in answer.text
        assert len(dispatcher.sent) == sent
    # An operator cannot turn a catalog schedule into a bpftrace one either.
    catalog = _schedule(label, program="syscalls", params={})
    mine = client.post("/v1/schedules", json=catalog, headers=operator).json()
    answer = client.patch(
        f"/v1/schedules/{mine['id']}",
        json={"template": _job(label, **other)},
        headers=operator,
    )
    assert answer.status_code == 403 and field_paths(answer) == ["template.program"]
    # The admin can, and a run fires a real bpftrace job to both hosts.
    answer = client.patch(url, json={"template": _job(label, **other)}, headers=admin)
    assert answer.status_code == 200, answer.text
    sent = len(dispatcher.sent)
    fired = client.post(f"{url}/run", headers=admin)
    assert fired.status_code == 200, fired.text
    assert fired.json()["recent"][0]["outcome"] == "fired", fired.text
    requests = [r for _, r in dispatcher.sent[sent:]]
    assert len(requests) == 2 and {r.params["script"] for r in requests} == {other["script"]}
    assert client.get(url, headers=operator).status_code == 200  # still theirs to see


def test_an_operator_may_neither_pause_nor_resume_an_admins_bpftrace_schedule(
    client: TestClient, tokens: Tokens, label: str
) -> None:
    """Resumed by an operator, it would fire as an admin: pause, resume and delete are the
    admin's alone, as changing and running it are."""
    operator, admin = tokens.headers("operator"), tokens.headers("admin")
    created = client.post("/v1/schedules", json=_schedule(label), headers=admin).json()
    url = f"/v1/schedules/{created['id']}"

    def refused(action: str, enabled: bool) -> None:
        method = "DELETE" if action == "delete" else "POST"
        path = url if action == "delete" else f"{url}/{action}"
        answer = client.request(method, path, headers=operator)
        assert answer.status_code == 403, (action, answer.text)
        assert field_paths(answer) == ["template.program"] and "admin role" in answer.text
        assert client.get(url, headers=operator).json()["enabled"] is enabled, action

    refused("pause", True)
    refused("delete", True)
    assert client.post(f"{url}/pause", headers=admin).json()["enabled"] is False
    refused("resume", False)
    refused("delete", False)
    resumed = client.post(f"{url}/resume", headers=admin).json()
    assert resumed["enabled"] is True and resumed["next_fire_at"] is not None
    assert client.delete(url, headers=admin).status_code == 204


def test_trend_of_count_at_is_each_hosts_total(
    client: TestClient, tokens: Tokens, label: str, sessions: sessionmaker[Session]
) -> None:
    """`count:@` over a bpftrace `@[comm] = count()` job: the table's total per host."""
    admin = tokens.headers("admin")
    created = client.post("/v1/schedules", json=_schedule(label), headers=admin).json()
    url = f"/v1/schedules/{created['id']}"
    per_host = {
        f"{label}-a": [{"nginx": 7, "bash": 3}, {"nginx": 70}],
        f"{label}-b": [{}, {"x": 1}],
    }
    for fire in range(2):
        job_id = client.post(f"{url}/run", headers=admin).json()["recent"][0]["job_id"]
        with sessions() as session:
            for run in session.scalars(select(Run).where(Run.job_id == job_id)):
                counts = per_host[run.host_name][fire]
                table = CounterTable(
                    name="@",
                    key_fields=[KeyField(name="comm")],
                    rows=[([k], [v]) for k, v in counts.items()],
                    total_rows=len(counts),
                )
                session.add(snapshot_row(run, results=[table.model_dump(mode="json")]))
            session.commit()
    answer = client.get(f"{url}/trend", params={"metric": "count:@"}, headers=admin)
    assert answer.status_code == 200, answer.text
    trend = answer.json()
    series = {s["host"]: [p["value"] for p in s["points"]] for s in trend["series"]}
    assert series == {f"{label}-a": [10, 70], f"{label}-b": [0, 1]}
    assert trend["unit"] == "count"
    assert get_program("bpftrace").admin_only


def test_a_host_whose_stored_capabilities_lack_bpftrace_gets_unsupported_with_why(
    client: TestClient, tokens: Tokens, feeder: Feeder, dispatcher: RecordingDispatcher
) -> None:
    """Dispatch reads what each host reported: an agent that lists the program gives its own
    reason; one older than the program (no line for it) is judged by its features, with the
    feature's error."""
    listed, older = f"bpft-listed-{uuid.uuid4().hex[:6]}", f"bpft-older-{uuid.uuid4().hex[:6]}"
    why = "no bpftrace on PATH (apt-get install bpftrace)"
    for name in (listed, older):
        register_host(client, tokens.headers("admin"), name)
    caps = capabilities(without=[Feature.bpftrace]).model_copy(
        update={"feature_errors": {Feature.bpftrace: why}}
    )
    feeder(listed, heartbeat(listed, caps))
    bare = caps.model_copy(
        update={"programs": [p for p in caps.programs if p.program != "bpftrace"]}
    )
    feeder(older, heartbeat(older, bare))
    sent = len(dispatcher.sent)
    body = {**_job("x", script=SCRIPT), "targets": {"hosts": [listed, older]}}
    answer = client.post("/v1/jobs", json=body, headers=tokens.headers("admin"))
    assert answer.status_code == 201, answer.text
    runs = {r["host"]: r for r in answer.json()["runs"]}
    assert {r["state"] for r in runs.values()} == {"unsupported"}
    assert runs[listed]["reason"] == "needs bpftrace, which this host lacks"
    assert runs[older]["reason"] == f"needs bpftrace, which this host lacks (bpftrace: {why})"
    assert len(dispatcher.sent) == sent
    assert answer.json()["state"] == "failed"
