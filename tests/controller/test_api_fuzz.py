"""Schema-driven fuzzing of every API operation (schemathesis): no 5xx, every status and body
as the OpenAPI document says.

The real app on a real SQLite file and Redis, with an admin token; positive and negative
cases, a fixed number per operation, derandomized so a failure replays. The operations that
run SSH against hosts (bootstrap, uninstall) are left out.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.orm import Session, sessionmaker

from controller.ingest.consumer import Ingest
from controller.settings import Settings
from node_agent.protocol import RunState, StateChange, StreamEnvelope
from tests.controller.conftest import Tokens
from tests.controller.support import register_host, snapshot, submit
from tests.controller.test_hostile_output import results_for

HOST = "fuzz-host"
SSH_OPERATIONS = ["bootstrap_hosts", "bootstrap_host", "uninstall_host"]
EXAMPLES = 30  # per operation and mode: ~1,500 cases, a few minutes on a 2-CPU VM
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
calls: Counter[str] = Counter()
statuses: Counter[int] = Counter()


@pytest.fixture(scope="module")
def admin(client: TestClient, tokens: Tokens) -> dict[str, str]:
    return tokens.headers("admin")


@pytest.fixture(scope="module")
def known(
    client: TestClient,
    admin: dict[str, str],
    settings: Settings,
    sessions: sessionmaker[Session],
) -> dict[str, Any]:
    """Ids that exist, with data behind them (a finished job with results of every kind whose
    names are hostile, a schedule), so that cases reach past the 404."""
    register_host(client, admin, HOST, role="web")
    job = submit(client, admin, program="opens", duration_s=1, targets={"hosts": [HOST]})
    run_id = job["runs"][0]["id"]
    events = [
        StateChange(run_id=run_id, state=RunState.running),
        snapshot(run_id, 0, results_for("\x1b]0;x\x07<b>|=1;a b\n"), final=True),
        StateChange(run_id=run_id, state=RunState.succeeded),
    ]
    ingest = Ingest(settings, sessions, None)  # type: ignore[arg-type]
    with sessions() as session:
        envelopes = [StreamEnvelope(host=HOST, job_id=job["id"], event=e) for e in events]
        ingest.apply(session, envelopes)
        session.commit()
    template = {"program": "syscalls", "duration_s": 1, "targets": {"hosts": [HOST]}}
    answer = client.post(
        "/v1/schedules",
        json={"name": "fuzz", "interval_s": 3600, "template": template},
        headers=admin,
    )
    assert answer.status_code == 201, answer.text
    return {"job_id": job["id"], "schedule_id": answer.json()["id"], "name": HOST}


def _cases() -> list[tuple[str, GenerationMode]]:
    """(operation, mode) from the committed document (test_openapi keeps it equal to what the
    app serves); negative cases only where there is an input to break."""
    document = json.loads((Path(__file__).parents[2] / "openapi" / "openapi.json").read_text())
    cases = []
    for methods in document["paths"].values():
        for operation in methods.values():
            if operation["operationId"] in SSH_OPERATIONS:
                continue
            cases.append((operation["operationId"], GenerationMode.POSITIVE))
            if operation.get("parameters") or operation.get("requestBody"):
                cases.append((operation["operationId"], GenerationMode.NEGATIVE))
    return cases


@pytest.fixture(scope="module")
def api_schema(app: FastAPI) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize(
    ("operation_id", "mode"), _cases(), ids=[f"{o}-{m.value}" for o, m in _cases()]
)
def test_no_operation_answers_5xx_or_off_its_schema(
    api_schema: Any,
    admin: dict[str, str],
    known: dict[str, Any],
    operation_id: str,
    mode: GenerationMode,
) -> None:
    operation = api_schema.find_operation_by_id(operation_id)

    @given(case=operation.as_strategy(generation_mode=mode), reach=st.booleans())
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: schemathesis.Case, reach: bool) -> None:
        # Half the cases aim at ids that exist (never to delete them: the seed stays for all).
        if reach and case.path_parameters and case.method != "DELETE":
            case.path_parameters = {k: known.get(k, v) for k, v in case.path_parameters.items()}
        if operation_id == "revoke_token":
            case.path_parameters = {"token_id": 1_000_000}  # not the token the fuzzer holds
        # The token is not what is fuzzed (test_roles covers it): every case goes in as admin.
        case.headers = {**(case.headers or {}), **admin}
        response = case.call_and_validate(checks=CHECKS)
        calls[operation.label] += 1
        statuses[response.status_code] += 1

    fuzz()


def test_the_fuzz_reached_every_operation(app: FastAPI) -> None:
    documented = {
        f"{method.upper()} {path}"
        for path, methods in app.openapi()["paths"].items()
        for method, operation in methods.items()
        if operation["operationId"] not in SSH_OPERATIONS
    }
    assert set(calls) == documented, documented ^ set(calls)
    print(  # the size of the run, for the log
        f"\nfuzz: {sum(calls.values())} cases over {len(calls)} operations; "
        f"statuses {dict(sorted(statuses.items()))}"
    )
